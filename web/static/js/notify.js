// Toasts for messages that belong to no particular control (a server error without a
// request, a copied link) and the page-wide banner (the server is shutting down).

import { el } from './util.js';

const TOAST_MS = 6000;

function region() {
  return document.getElementById('toasts');
}

/** Shows a short message; errors stay until dismissed or for twice as long. */
export function toast(message, { kind = 'info', title = null } = {}) {
  const close = el('button', { className: 'icon-button', type: 'button', attrs: { 'aria-label': 'Dismiss' } }, '×');
  const node = el(
    'div',
    { className: `toast toast-${kind}`, attrs: { role: kind === 'error' ? 'alert' : 'status' } },
    el('div', { className: 'toast-body' }, title ? el('strong', {}, title) : null, el('span', {}, message)),
    close,
  );
  const remove = () => node.remove();
  close.addEventListener('click', remove);
  region().append(node);
  setTimeout(remove, kind === 'error' ? TOAST_MS * 2 : TOAST_MS);
  return node;
}

/** Shows (or with null, hides) the banner at the top of the page. */
export function banner(message, kind = 'warning') {
  const node = document.getElementById('banner');
  if (!message) {
    node.hidden = true;
    node.replaceChildren();
    return;
  }
  node.className = `banner banner-${kind}`;
  node.replaceChildren(el('span', {}, message));
  const close = el('button', { className: 'icon-button', type: 'button', attrs: { 'aria-label': 'Dismiss notice' } }, '×');
  close.addEventListener('click', () => banner(null));
  node.append(close);
  node.hidden = false;
}

// Tabs following the ARIA tabs pattern: a tablist whose tabs move with the arrow keys, Home
// and End (selection follows focus), each controlling one panel. `Tabs` holds the result tabs
// (added and closed at run time; Delete closes the focused one); `staticTabs` wires a fixed
// set written in the page (the Analyze / Generate switch).

import { el, uid } from './util.js';

function arrowTarget(e, tabs, current) {
  const i = tabs.indexOf(current);
  if (i < 0) return null;
  switch (e.key) {
    case 'ArrowRight':
    case 'ArrowDown':
      return tabs[(i + 1) % tabs.length];
    case 'ArrowLeft':
    case 'ArrowUp':
      return tabs[(i - 1 + tabs.length) % tabs.length];
    case 'Home':
      return tabs[0];
    case 'End':
      return tabs[tabs.length - 1];
    default:
      return null;
  }
}

/** Wires tabs already in the page: `[role=tab]` children of `list` with `aria-controls`. */
export function staticTabs(list, onSelect = () => {}) {
  const tabs = [...list.querySelectorAll('[role="tab"]')];
  const select = (tab, focus) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute('aria-selected', String(on));
      t.tabIndex = on ? 0 : -1;
      document.getElementById(t.getAttribute('aria-controls')).hidden = !on;
    }
    if (focus) tab.focus();
    onSelect(tab.dataset.name);
  };
  list.addEventListener('click', (e) => {
    const tab = e.target.closest('[role="tab"]');
    if (tab) select(tab, false);
  });
  list.addEventListener('keydown', (e) => {
    const next = arrowTarget(e, tabs, e.target.closest('[role="tab"]'));
    if (next) {
      e.preventDefault();
      select(next, true);
    }
  });
  return {
    select: (name) => select(tabs.find((t) => t.dataset.name === name), false),
  };
}

/**
 * The result tabs. Each entry has `title`, `panel` (a node), an optional `status` string
 * shown as a dot, and `onClose()`.
 */
export class Tabs {
  constructor(list, panels, empty) {
    this.list = list;
    this.panels = panels;
    this.empty = empty;
    this.entries = [];
    this.selected = null;
    list.addEventListener('keydown', (e) => {
      const tab = e.target.closest('[role="tab"]');
      if (!tab) return;
      if (e.key === 'Delete') {
        e.preventDefault();
        this.close(this.entries.find((x) => x.tab === tab));
        return;
      }
      const next = arrowTarget(e, this.entries.map((x) => x.tab), tab);
      if (next) {
        e.preventDefault();
        this.select(this.entries.find((x) => x.tab === next), true);
      }
    });
  }

  add(entry, { select = true } = {}) {
    const id = uid('tab');
    const dot = el('span', { className: 'tab-dot', attrs: { 'aria-hidden': 'true' } });
    const label = el('span', { className: 'tab-label' });
    const tab = el('button', {
      type: 'button',
      className: 'tab',
      id,
      attrs: { role: 'tab', 'aria-selected': 'false', 'aria-controls': `${id}-panel`, tabindex: '-1' },
    }, dot, label);
    const close = el('button', { type: 'button', className: 'tab-close', attrs: { tabindex: '-1', 'aria-label': 'Close tab' } }, '×');
    const wrap = el('span', { className: 'tab-wrap', attrs: { role: 'presentation' } }, tab, close);
    const panel = el('section', { className: 'tab-panel', id: `${id}-panel`, hidden: true, attrs: { role: 'tabpanel', 'aria-labelledby': id, tabindex: '0' } }, entry.panel);
    Object.assign(entry, { id, tab, dot, label, close, wrap, panelNode: panel });
    tab.addEventListener('click', () => this.select(entry, false));
    close.addEventListener('click', () => this.close(entry));
    this.entries.push(entry);
    this.list.append(wrap);
    this.panels.append(panel);
    this.update(entry);
    this.empty.hidden = true;
    if (select || !this.selected) this.select(entry, false);
    return entry;
  }

  /** Shows the entry's title and status on its tab. */
  update(entry) {
    entry.label.textContent = entry.title;
    entry.dot.dataset.status = entry.status ?? '';
    entry.tab.title = entry.status ? `${entry.title} (${entry.status})` : entry.title;
    entry.close.setAttribute('aria-label', `Close ${entry.title}`);
  }

  select(entry, focus) {
    if (!entry) return;
    for (const x of this.entries) {
      const on = x === entry;
      x.tab.setAttribute('aria-selected', String(on));
      x.tab.tabIndex = on ? 0 : -1;
      x.panelNode.hidden = !on;
    }
    this.selected = entry;
    // Keep the chosen tab visible in a strip that scrolls sideways.
    const strip = this.list;
    const left = entry.wrap.offsetLeft - strip.offsetLeft;
    if (left < strip.scrollLeft) strip.scrollLeft = left;
    else if (left + entry.wrap.offsetWidth > strip.scrollLeft + strip.clientWidth) strip.scrollLeft = left + entry.wrap.offsetWidth - strip.clientWidth;
    if (focus) entry.tab.focus();
    entry.onShow?.();
  }

  close(entry) {
    if (!entry) return;
    const i = this.entries.indexOf(entry);
    if (i < 0) return;
    const hadFocus = entry.wrap.contains(document.activeElement) || entry.panelNode.contains(document.activeElement);
    entry.onClose?.();
    this.entries.splice(i, 1);
    entry.wrap.remove();
    entry.panelNode.remove();
    if (this.selected === entry) {
      this.selected = null;
      const next = this.entries[Math.min(i, this.entries.length - 1)];
      if (next) this.select(next, hadFocus);
    }
    this.empty.hidden = this.entries.length > 0;
  }
}

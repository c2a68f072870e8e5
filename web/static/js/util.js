// Small helpers shared by every view: building DOM nodes without HTML strings, formatting
// numbers, bytes and durations, showing token whitespace, downloads and the clipboard.

/**
 * Creates an element. `props` sets properties (`className`, `hidden`, `onclick`...) except
 * `attrs` (attributes), `dataset` and `style` (objects). Children are nodes or strings; strings
 * become text nodes, so that nothing from the server or the user is ever parsed as HTML.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === 'attrs') {
      for (const [name, v] of Object.entries(value)) {
        if (v !== undefined && v !== null && v !== false) node.setAttribute(name, v === true ? '' : String(v));
      }
    } else if (key === 'dataset') {
      Object.assign(node.dataset, value);
    } else if (key === 'style') {
      Object.assign(node.style, value);
    } else {
      node[key] = value;
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces all children of `node`. */
export function setChildren(node, ...children) {
  node.replaceChildren();
  append(node, children);
}

/** Token text with whitespace made visible: space ␣, newline ↵, tab →. */
export function visibleToken(text) {
  if (text === '') return '∅';
  return String(text).replace(/ /g, '␣').replace(/\n/g, '↵').replace(/\t/g, '→').replace(/\r/g, '␍');
}

export function formatBytes(n) {
  if (!Number.isFinite(n)) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

/** A duration in milliseconds as people read it: 850 ms, 1.2 s, 3 min 20 s. */
export function formatMs(ms) {
  if (!Number.isFinite(ms)) return '?';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - m * 60)} s`;
}

export function formatPercent(p, digits = 1) {
  if (!Number.isFinite(p)) return '?';
  const v = p * 100;
  if (v > 0 && v < 0.1) return '<0.1%';
  return `${v.toFixed(digits)}%`;
}

/** A number for tables: up to `digits` decimals, no trailing zeros, exponent for tiny values. */
export function formatNumber(v, digits = 4) {
  if (v === null || v === undefined) return '';
  if (typeof v !== 'number') return String(v);
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) return String(v);
  if (v !== 0 && Math.abs(v) < 10 ** -digits) return v.toExponential(2);
  return String(Number(v.toFixed(digits)));
}

export function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}

let counter = 0;
/** A short id unique within this page, for element ids and client tags. */
export function uid(prefix = 'id') {
  counter += 1;
  return `${prefix}-${Date.now().toString(36)}-${counter}`;
}

/**
 * Runs `fn` at most once per `delay` ms: the first call schedules it, later calls before it
 * runs are folded in. Used to coalesce bursts of server notices into one request.
 */
export function coalesce(fn, delay) {
  let timer = null;
  return () => {
    if (timer !== null) return;
    timer = setTimeout(() => {
      timer = null;
      fn();
    }, delay);
  };
}

/** Saves a Blob as a file through a temporary link. */
export function download(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = el('a', { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** Copies text; falls back to a hidden text area where the Clipboard API is not allowed. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = el('textarea', { value: text, attrs: { 'aria-hidden': 'true' } });
    area.style.position = 'fixed';
    area.style.opacity = '0';
    document.body.append(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand('copy');
    } catch {
      ok = false;
    }
    area.remove();
    return ok;
  }
}

/** A file-name-safe timestamp: 2026-11-26T21-04-17. */
export function stamp(date = new Date()) {
  return date.toISOString().slice(0, 19).replace(/:/g, '-');
}

/** The p-th quantile (0..1) of numbers, by linear interpolation. */
export function quantile(values, p) {
  const v = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (v.length === 0) return 0;
  const pos = (v.length - 1) * p;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

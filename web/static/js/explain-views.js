// Views of explanation-style rows (one row per token with an explanation in words), as the
// original site's talkative results and its export files have them: a table with column
// toggles and click-to-copy, a transposed view (one narrow column per token, the words
// stacked), and a full-text view whose tooltips colour each word by its salience. Used for
// imported files and for talkative-lens results in analysis tabs, where rows arrive chunk by
// chunk (`setRows`).

import { salienceColor, css, needsLightText } from './colors.js';
import { el, setChildren, visibleToken, formatNumber, quantile, copyText, clamp, uid } from './util.js';
import { toast } from './notify.js';

const PREFERRED = ['position', 'token', 'explanation', 'relative_rmse', 'mse', 'kl_divergence'];
const LAST = ['token_salience', 'explanation_structured'];
const DEFAULT_VISIBLE = new Set(PREFERRED);

/** Column order: the original's preferred columns, then the others, then the long arrays. */
export function columnOrder(rows) {
  const seen = new Set();
  for (const r of rows) for (const k of Object.keys(r)) seen.add(k);
  const first = PREFERRED.filter((k) => seen.has(k));
  const last = LAST.filter((k) => seen.has(k));
  const middle = [...seen].filter((k) => !PREFERRED.includes(k) && !LAST.includes(k));
  return [...first, ...middle, ...last];
}

function cellText(key, v) {
  if (v === null || v === undefined) return '';
  if (key === 'token') return visibleToken(String(v));
  if (typeof v === 'number') return key.includes('salience') ? String(Number(v.toPrecision(3))) : formatNumber(v, 6);
  if (Array.isArray(v)) return v.map((x) => (typeof x === 'number' ? String(Number(x.toPrecision(3))) : String(x))).join(' ');
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

/**
 * A word as shown: a word of whitespace only (a newline token, say) shows its whitespace as
 * ␣ ↵ →; inside other words newlines and tabs are made visible and spaces kept.
 */
export function shownWord(w) {
  if (w.trim() === '') return visibleToken(w);
  return w.replace(/\n/g, '↵').replace(/\t/g, '→').replace(/\r/g, '␍');
}

/** The explanation's words with their salience, when both are there and line up. */
function words(row) {
  const ws = Array.isArray(row.explanation_structured) ? row.explanation_structured.map(String) : null;
  const sal = Array.isArray(row.token_salience) ? row.token_salience.map(Number) : null;
  if (!ws) return { words: String(row.explanation ?? '').split(/\s+/).filter(Boolean), salience: null };
  // The original adds the bracketed current token after the explanation's words; it has no
  // salience of its own, so missing values stay neutral.
  if (!sal || sal.length === 0 || sal.length > ws.length) return { words: ws, salience: null };
  return { words: ws, salience: ws.map((_, i) => (i < sal.length ? sal[i] : NaN)) };
}

function tooltipNode() {
  return document.getElementById('tooltip');
}

/**
 * Roving focus over `cells()` (an array of rows, each an array of elements): arrows move,
 * Home/End go to the row's ends; `onEnter(el)` runs on Enter or Space.
 */
function roving(container, cells, onEnter) {
  let at = [0, 0];
  const set = (r, c, focus) => {
    const grid = cells();
    if (grid.length === 0) return;
    r = clamp(r, 0, grid.length - 1);
    c = clamp(c, 0, grid[r].length - 1);
    const old = grid[at[0]]?.[at[1]];
    if (old) old.tabIndex = -1;
    at = [r, c];
    grid[r][c].tabIndex = 0;
    if (focus) grid[r][c].focus();
  };
  container.addEventListener('keydown', (e) => {
    const grid = cells();
    const target = e.target;
    let r = -1;
    let c = -1;
    grid.forEach((row, i) => {
      const j = row.indexOf(target);
      if (j >= 0) [r, c] = [i, j];
    });
    if (r < 0) return;
    const moves = { ArrowUp: [r - 1, c], ArrowDown: [r + 1, c], ArrowLeft: [r, c - 1], ArrowRight: [r, c + 1], Home: [r, 0], End: [r, grid[r].length - 1] };
    if (moves[e.key]) {
      e.preventDefault();
      set(...moves[e.key], true);
    } else if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      onEnter(target);
    }
  });
  container.addEventListener('focusin', (e) => {
    const grid = cells();
    grid.forEach((row, i) => {
      const j = row.indexOf(e.target);
      if (j >= 0) set(i, j, false);
    });
  });
  return () => set(0, 0, false);
}

export class ExplanationViews {
  /**
   * `rows` may be empty and grow later through `setRows` (a running talkative lens);
   * `waiting` is the text shown while there are none.
   */
  constructor(rows, { label = 'Explanations', waiting = 'There are no rows.' } = {}) {
    this.label = label;
    this.waiting = waiting;
    this.mode = 'table';
    this.id = uid('explain');
    this.columns = [];
    this.visible = new Set();
    this.hasSalience = null;
    /** The reader's choice of colouring, once made; until then colour when there is salience. */
    this.colourChoice = null;
    this.frame = null;

    this.controlsNode = el('div');
    this.legendNode = el('div');
    this.body = el('div', { className: 'explain-body' });
    this.node = el('div', { className: 'explain-views' }, this.controlsNode, this.legendNode, this.body);
    this.setRows(rows, true);
  }

  /**
   * Shows these rows (all of them, in order). Column toggles keep the reader's choices; new
   * columns start as their defaults. Redraws on the next frame unless `now`.
   */
  setRows(rows, now = false) {
    this.rows = rows;
    const columns = columnOrder(rows);
    const all = rows.flatMap((r) => (Array.isArray(r.token_salience) ? r.token_salience.map(Number) : []));
    const hasSalience = all.length > 0;
    const lo = quantile(all, 0.05);
    const hi = quantile(all, 0.95);
    const newColumns = columns.join('\n') !== this.columns.join('\n');
    if (newColumns) {
      for (const c of columns) if (!this.columns.includes(c) && DEFAULT_VISIBLE.has(c)) this.visible.add(c);
      this.columns = columns;
    }
    const salienceChanged = hasSalience !== this.hasSalience;
    const scaleChanged = lo !== this.lo || hi !== this.hi;
    this.hasSalience = hasSalience;
    this.lo = lo;
    this.hi = hi;
    this.colour = this.colourChoice ?? hasSalience;
    if (newColumns || salienceChanged) {
      const open = this.controlsNode.querySelector('details.column-toggles')?.open ?? false;
      this.controlsNode = swap(this.controlsNode, this.controls());
      this.controlsNode.querySelector('details.column-toggles').open = open;
    }
    if (salienceChanged || scaleChanged) this.legendNode = swap(this.legendNode, this.legend());
    this.controlsNode.hidden = rows.length === 0;
    this.legendNode.hidden = rows.length === 0;
    if (now) this.render();
    else this.schedule();
  }

  schedule() {
    if (this.frame !== null) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      this.render();
    });
  }

  controls() {
    const name = uid('explain-mode');
    const modes = [
      ['table', 'Table'],
      ['transposed', 'Transposed'],
      ['fulltext', 'Full text'],
    ].map(([value, text]) => {
      const input = el('input', { type: 'radio', name, value, checked: value === this.mode });
      input.addEventListener('change', () => {
        this.mode = value;
        this.render();
      });
      return el('label', { className: 'seg' }, input, el('span', {}, text));
    });
    const toggles = this.columns.map((c) => {
      const input = el('input', { type: 'checkbox', checked: this.visible.has(c), value: c });
      input.addEventListener('change', () => {
        if (input.checked) this.visible.add(c);
        else this.visible.delete(c);
        this.render();
      });
      return el('label', { className: 'check' }, input, el('span', {}, c));
    });
    const colour = el('input', { type: 'checkbox', checked: this.colour, disabled: !this.hasSalience });
    colour.addEventListener('change', () => {
      this.colourChoice = colour.checked;
      this.colour = colour.checked;
      this.render();
    });
    return el(
      'div',
      { className: 'view-controls' },
      el('div', { className: 'segmented', attrs: { role: 'radiogroup', 'aria-label': 'Explanation view' } }, modes),
      el('details', { className: 'column-toggles' }, el('summary', {}, 'Columns'), el('div', { className: 'toggle-list' }, toggles)),
      el('label', { className: 'check' }, colour, el('span', {}, 'Colour by salience')),
    );
  }

  legend() {
    if (!this.hasSalience) return el('p', { className: 'muted' }, 'This data has no token salience.');
    const stops = [];
    for (let i = 0; i <= 10; i += 1) {
      const v = i < 5 ? this.lo * (1 - i / 5) : (this.hi * (i - 5)) / 5;
      stops.push(css(salienceColor(v, this.lo, this.hi)));
    }
    return el(
      'div',
      { className: 'legend' },
      el('span', { className: 'legend-title' }, 'Salience of each explanation word (5th–95th percentile scale)'),
      el(
        'span',
        { className: 'legend-scale' },
        el('span', {}, formatNumber(this.lo, 3)),
        el('span', { className: 'legend-bar salience-bar', style: { background: `linear-gradient(to right, ${stops.join(', ')})` } }),
        el('span', {}, formatNumber(this.hi, 3)),
      ),
    );
  }

  /** One explanation word; coloured by its salience when `salience` is given (NaN: neutral). */
  word(w, salience) {
    const rgb = salience === undefined ? null : salienceColor(salience, this.lo, this.hi);
    return el(
      'span',
      {
        className: 'word',
        style: rgb ? { background: css(rgb), color: needsLightText(rgb) ? '#fff' : '#111' } : {},
        title: rgb ? (Number.isFinite(salience) ? `salience ${formatNumber(salience, 4)}` : 'no salience') : undefined,
        dataset: { word: w, ...(rgb ? { salience: String(salience) } : {}) },
      },
      shownWord(w),
    );
  }

  /** The explanation of a row as word spans, each coloured by its salience when asked. */
  explanation(row) {
    const { words: ws, salience } = words(row);
    const coloured = this.colour && salience;
    return el(
      'span',
      { className: 'expl' },
      ws.map((w, i) => [this.word(w, coloured ? salience[i] : undefined), i < ws.length - 1 ? ' ' : null]),
    );
  }

  render() {
    cancelAnimationFrame(this.frame);
    this.frame = null;
    if (this.rows.length === 0) {
      setChildren(this.body, el('p', { className: 'muted explain-wait' }, this.waiting));
      return;
    }
    // A redraw while rows stream in keeps the reader's place: the focused cell and the scroll.
    const active = document.activeElement;
    const key = active && this.body.contains(active) ? active.dataset.key : null;
    const oldScroll = this.body.querySelector('.table-scroll, .transposed-scroll');
    const scroll = oldScroll ? [oldScroll.scrollLeft, oldScroll.scrollTop] : null;
    const view = { table: () => this.table(), transposed: () => this.transposed(), fulltext: () => this.fullText() }[this.mode]();
    setChildren(this.body, view);
    const newScroll = this.body.querySelector('.table-scroll, .transposed-scroll');
    if (scroll && newScroll) [newScroll.scrollLeft, newScroll.scrollTop] = scroll;
    if (key) this.body.querySelector(`[data-key="${CSS.escape(key)}"]`)?.focus({ preventScroll: true });
  }

  table() {
    const cols = this.columns.filter((c) => this.visible.has(c));
    const head = el('tr', {}, cols.map((c) => el('th', { attrs: { scope: 'col' } }, c)));
    const cells = [];
    const body = el(
      'tbody',
      {},
      this.rows.map((row, r) => {
        const tds = cols.map((c) => {
          const content = c === 'explanation' ? this.explanation(row) : cellText(c, row[c]);
          const td = el('td', { className: `col-${c.replace(/[^a-z0-9_-]/gi, '')}`, title: 'Click to copy', dataset: { col: c, key: `${r}:${c}` }, attrs: { tabindex: '-1' } }, content);
          td.dataset.copy = c === 'token' ? String(row[c] ?? '') : cellText(c, row[c]);
          return td;
        });
        cells.push(tds);
        return el('tr', {}, tds);
      }),
    );
    const table = el('table', { className: 'explain-table', attrs: { 'aria-label': `${this.label}: table` } }, el('thead', {}, head), body);
    const copy = async (td) => {
      const ok = await copyText(td.dataset.copy ?? td.textContent);
      toast(ok ? `Copied “${td.dataset.copy.slice(0, 60)}”` : 'Copying is not allowed here', { kind: ok ? 'info' : 'error' });
    };
    table.addEventListener('click', (e) => {
      const td = e.target.closest('td');
      if (td) copy(td);
    });
    const reset = roving(table, () => cells, copy);
    reset();
    return el('div', { className: 'table-scroll' }, table);
  }

  transposed() {
    const cols = this.rows.map((row, i) =>
      el(
        'div',
        { className: 'tcol', attrs: { tabindex: '-1', role: 'listitem' }, dataset: { index: String(i), key: `t${i}` } },
        el('div', { className: 'tcol-token', title: `position ${row.position ?? i}` }, visibleToken(String(row.token ?? ''))),
        el('div', { className: 'tcol-words' }, this.stackedWords(row)),
      ),
    );
    const list = el('div', { className: 'transposed', attrs: { role: 'list', 'aria-label': `${this.label}: transposed` } }, cols);
    const reset = roving(list, () => [cols], () => {});
    reset();
    return el('div', { className: 'transposed-scroll' }, list);
  }

  stackedWords(row) {
    const { words: ws, salience } = words(row);
    const coloured = this.colour && salience;
    return ws.map((w, i) => this.word(w, coloured ? salience[i] : undefined));
  }

  fullText() {
    const boxes = [];
    const parts = [];
    this.rows.forEach((row, i) => {
      const text = String(row.token ?? '');
      const box = el('span', { className: 'tok-box', attrs: { tabindex: '-1', role: 'button', 'aria-describedby': 'tooltip' }, dataset: { index: String(i), key: `b${i}` } }, visibleToken(text));
      boxes.push(box);
      parts.push(box);
      if (text.includes('\n')) parts.push(el('br'));
    });
    const wrap = el('div', { className: 'full-text', attrs: { 'aria-label': `${this.label}: full text` } }, parts);
    const show = (box) => {
      const row = this.rows[Number(box.dataset.index)];
      const tip = tooltipNode();
      const stats = ['mse', 'relative_rmse', 'kl_divergence'].filter((k) => row[k] !== undefined);
      setChildren(
        tip,
        el(
          'div',
          { className: 'tip-body' },
          el('div', { className: 'tip-head' }, `Position ${row.position ?? box.dataset.index} · `, el('code', {}, visibleToken(String(row.token ?? '')))),
          el('p', { className: 'tip-expl' }, this.explanationForTip(row)),
          stats.length ? el('dl', { className: 'tip-stats' }, stats.map((k) => [el('dt', {}, k), el('dd', {}, formatNumber(Number(row[k]), 6))])) : null,
        ),
      );
      tip.dataset.owner = this.id;
      tip.hidden = false;
      const r = box.getBoundingClientRect();
      const w = tip.offsetWidth;
      const h = tip.offsetHeight;
      let y = r.bottom + 6;
      if (y + h > window.innerHeight) y = Math.max(4, r.top - h - 6);
      tip.style.left = `${Math.round(clamp(r.left, 4, Math.max(4, window.innerWidth - w - 4)))}px`;
      tip.style.top = `${Math.round(y)}px`;
    };
    const hide = () => {
      const tip = tooltipNode();
      if (tip.dataset.owner === this.id) tip.hidden = true;
    };
    wrap.addEventListener('mouseover', (e) => {
      const box = e.target.closest('.tok-box');
      if (box) show(box);
    });
    wrap.addEventListener('mouseleave', hide);
    wrap.addEventListener('focusin', (e) => {
      const box = e.target.closest('.tok-box');
      if (box) show(box);
    });
    wrap.addEventListener('focusout', (e) => {
      if (!wrap.contains(e.relatedTarget)) hide();
    });
    const reset = roving(wrap, () => [boxes], (box) => show(box));
    reset();
    return wrap;
  }

  /** The tooltip always colours the words when salience exists: that is what it is for. */
  explanationForTip(row) {
    const colour = this.colour;
    this.colour = true;
    const node = this.explanation(row);
    this.colour = colour;
    return node;
  }
}

/** Puts `next` where `node` is (if it is in a document fragment or tree) and returns it. */
function swap(node, next) {
  if (node.parentNode) node.replaceWith(next);
  return next;
}

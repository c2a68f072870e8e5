// The lens heatmap: layers as rows (the last layer on top) × token positions as columns, each
// cell showing the lens's top-1 token and coloured by a chosen statistic, or by the difference
// between two lenses. Hover or keyboard focus shows the cell's top-k in a tooltip; a click or
// Enter pins it in a panel below. Cells fill in as chunks arrive. The same picture can be drawn
// on a canvas for the PNG export.

import { STATS, diffValue } from './lens-data.js';
import { sequential, diverging, css, needsLightText, onSchemeChange } from './colors.js';
import { el, setChildren, visibleToken, formatPercent, formatNumber, clamp, uid } from './util.js';

/** The one tooltip element of the page, shared by every heatmap. */
function tooltipNode() {
  return document.getElementById('tooltip');
}

function hideTooltip() {
  const tip = tooltipNode();
  tip.hidden = true;
  tip.dataset.owner = '';
}

// A fixed tooltip would float away from its cell when the page scrolls.
window.addEventListener('scroll', hideTooltip, { passive: true });

function placeTooltip(tip, anchor) {
  const r = anchor.getBoundingClientRect();
  tip.style.left = '0px';
  tip.style.top = '0px';
  const w = tip.offsetWidth;
  const h = tip.offsetHeight;
  let x = r.left + r.width / 2 - w / 2;
  let y = r.bottom + 6;
  if (y + h > window.innerHeight - 4) y = r.top - h - 6;
  x = clamp(x, 4, Math.max(4, window.innerWidth - w - 4));
  y = clamp(y, 4, Math.max(4, window.innerHeight - h - 4));
  tip.style.left = `${Math.round(x)}px`;
  tip.style.top = `${Math.round(y)}px`;
}

/**
 * A heatmap over an AnalysisResult. `names(modelId)` gives a model's display name. The view
 * is `{kind: 'lens', lens: i}` or `{kind: 'diff', a: i, b: j}`.
 */
export class Heatmap {
  constructor(result, { names, label }) {
    this.result = result;
    this.names = names;
    this.label = label;
    this.view = { kind: 'lens', lens: 0 };
    this.stat = 'prob';
    this.active = { r: 0, p: 0 };
    this.pinned = null;
    this.shape = '';
    this.tds = [];
    this.shownLayers = [];
    this.frame = null;
    this.id = uid('heatmap');

    this.table = el('table', { className: 'heatmap', attrs: { role: 'grid', 'aria-label': label } });
    this.scroll = el('div', { className: 'heatmap-scroll', attrs: { tabindex: '-1' } }, this.table);
    this.legend = el('div', { className: 'legend', attrs: { 'aria-live': 'off' } });
    this.pinPanel = el('div', { className: 'pin-panel', hidden: true, attrs: { 'aria-live': 'polite' } });
    this.placeholder = el('p', { className: 'muted heatmap-wait' }, 'Cells appear here as the server computes them.');
    this.node = el('div', { className: 'heatmap-view' }, this.legend, this.placeholder, this.scroll, this.pinPanel);
    this.wire();
    onSchemeChange(() => this.refresh(true));
  }

  setView(view) {
    this.view = view;
    this.refresh(true);
  }

  setStat(stat) {
    this.stat = stat;
    this.refresh(true);
  }

  /** Redraws on the next frame; many chunks in one frame cost one redraw. */
  refresh(now = false) {
    if (now) {
      cancelAnimationFrame(this.frame);
      this.frame = null;
      this.draw();
      return;
    }
    if (this.frame !== null) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      this.draw();
    });
  }

  grids() {
    const g = this.result.grids;
    if (this.view.kind === 'diff') return [g[this.view.a], g[this.view.b]].filter(Boolean);
    return [g[this.view.lens] ?? g[0]].filter(Boolean);
  }

  /** The colour domain of the current view, over every cell shown. */
  domain() {
    const grids = this.grids();
    if (this.view.kind === 'diff') {
      const [a, b] = grids;
      let m = 0;
      for (const layer of a.layers) {
        for (let p = 0; p < a.nPositions; p += 1) {
          const ca = a.cell(layer, p);
          const cb = b?.cell(layer, p);
          if (!ca || !cb) continue;
          const d = Math.abs(diffValue(this.stat, ca) - diffValue(this.stat, cb));
          if (Number.isFinite(d) && d > m) m = d;
        }
      }
      return [-(m || 1), m || 1];
    }
    const s = STATS[this.stat];
    let lo = Infinity;
    let hi = -Infinity;
    for (const g of grids) {
      const [l, h] = g.extent(this.stat);
      lo = Math.min(lo, l);
      hi = Math.max(hi, h);
    }
    return s.range(lo, hi);
  }

  /** Background colour and text of one cell in the current view, or null while it is empty. */
  paint(layer, p, domain) {
    const [a, b] = this.grids();
    const ca = a?.cell(layer, p);
    if (!ca) return null;
    if (this.view.kind === 'diff') {
      const cb = b?.cell(layer, p);
      if (!cb) return null;
      const d = diffValue(this.stat, ca) - diffValue(this.stat, cb);
      return {
        rgb: diverging(d / domain[1]),
        text: ca.top[0]?.token ?? '',
        differs: (ca.top[0]?.id ?? -1) !== (cb.top[0]?.id ?? -1),
      };
    }
    const s = STATS[this.stat];
    return { rgb: sequential(s.score(s.value(ca), domain)), text: ca.top[0]?.token ?? '', differs: false };
  }

  draw() {
    const tokens = this.result.tokens;
    const grids = this.grids();
    const layers = grids[0]?.layers ?? [];
    if (!tokens || layers.length === 0) {
      this.placeholder.hidden = false;
      this.scroll.hidden = true;
      this.drawLegend(null);
      return;
    }
    this.placeholder.hidden = true;
    this.scroll.hidden = false;
    const shape = `${tokens.length}|${layers.join(',')}`;
    if (shape !== this.shape) this.build(tokens, layers, shape);
    const domain = this.domain();
    this.shownLayers.forEach((layer, r) => {
      const row = this.tds[r];
      for (let p = 0; p < row.length; p += 1) {
        const td = row[p];
        const paint = this.paint(layer, p, domain);
        if (!paint) {
          if (td.textContent) td.textContent = '';
          td.style.backgroundColor = '';
          td.className = 'empty';
          continue;
        }
        td.textContent = visibleToken(paint.text);
        td.style.backgroundColor = css(paint.rgb);
        td.className = needsLightText(paint.rgb) ? 'light' : '';
        if (paint.differs) td.classList.add('differs');
        if (this.pinned && this.pinned.layer === layer && this.pinned.p === p) td.classList.add('pinned');
      }
    });
    this.drawLegend(domain);
    if (this.pinned) this.showPinned();
  }

  build(tokens, layers, shape) {
    this.shape = shape;
    this.shownLayers = [...layers].reverse();
    const head = el('tr', {}, el('th', { className: 'corner', attrs: { scope: 'col' } }, 'layer'));
    tokens.forEach((t, p) => {
      head.append(el('th', { attrs: { scope: 'col', title: `position ${p} · token id ${t.id}` } }, visibleToken(t.text)));
    });
    const body = el('tbody');
    this.tds = this.shownLayers.map((layer, r) => {
      const tr = el('tr', {}, el('th', { attrs: { scope: 'row' } }, `L${layer}`));
      const row = tokens.map((_, p) => {
        // Every cell can take focus (the arrow keys move it); only one is in the Tab order.
        const td = el('td', { tabIndex: -1, attrs: { role: 'gridcell' }, dataset: { layer: String(layer), pos: String(p), r: String(r) } });
        tr.append(td);
        return td;
      });
      body.append(tr);
      return row;
    });
    setChildren(this.table, el('thead', {}, head), body);
    this.active.r = clamp(this.active.r, 0, this.shownLayers.length - 1);
    this.active.p = clamp(this.active.p, 0, tokens.length - 1);
    this.tds[this.active.r][this.active.p].tabIndex = 0;
  }

  drawLegend(domain) {
    if (!domain) {
      this.legend.replaceChildren();
      return;
    }
    const s = STATS[this.stat];
    const steps = 12;
    const colours = [];
    const diff = this.view.kind === 'diff';
    for (let i = 0; i <= steps; i += 1) {
      const v = domain[0] + ((domain[1] - domain[0]) * i) / steps;
      const rgb = diff ? diverging(v / domain[1]) : sequential(s.score(v, domain));
      colours.push(css(rgb));
    }
    const fmt = (v) => (diff ? formatNumber(v, 3) : s.format(v));
    const [a, b] = this.grids();
    const title = diff
      ? `${s.label}: ${this.names(a.model)} minus ${this.names(b.model)}${this.stat === 'rank' ? ' (log10 of ranks)' : ''}; a dark corner marks cells whose top-1 tokens differ`
      : s.label;
    setChildren(
      this.legend,
      el('span', { className: 'legend-title' }, title),
      el(
        'span',
        { className: 'legend-scale' },
        el('span', { className: 'legend-min' }, fmt(domain[0])),
        el('span', { className: 'legend-bar', style: { background: `linear-gradient(to right, ${colours.join(', ')})` }, attrs: { 'aria-hidden': 'true' } }),
        el('span', { className: 'legend-max' }, fmt(domain[1])),
      ),
    );
  }

  // Interaction ----------------------------------------------------------------------------

  wire() {
    this.table.addEventListener('mouseover', (e) => {
      const td = e.target.closest('td');
      if (td) this.showTooltip(td);
    });
    this.table.addEventListener('mouseleave', () => {
      const focused = document.activeElement;
      if (focused && focused.closest && this.table.contains(focused) && focused.tagName === 'TD') this.showTooltip(focused);
      else hideTooltip();
    });
    this.table.addEventListener('focusin', (e) => {
      const td = e.target.closest('td');
      if (td) {
        this.setActive(Number(td.dataset.r), Number(td.dataset.pos), false);
        this.showTooltip(td);
      }
    });
    this.table.addEventListener('focusout', (e) => {
      if (!this.table.contains(e.relatedTarget)) hideTooltip();
    });
    this.table.addEventListener('click', (e) => {
      const td = e.target.closest('td');
      if (td) this.togglePin(td);
    });
    this.table.addEventListener('keydown', (e) => this.onKey(e));
    this.scroll.addEventListener('scroll', () => {
      if (tooltipNode().dataset.owner === this.id) hideTooltip();
    });
  }

  setActive(r, p, focus) {
    const rows = this.tds.length;
    if (rows === 0) return;
    const cols = this.tds[0].length;
    r = clamp(r, 0, rows - 1);
    p = clamp(p, 0, cols - 1);
    const old = this.tds[this.active.r]?.[this.active.p];
    if (old) old.tabIndex = -1;
    this.active = { r, p };
    const td = this.tds[r][p];
    td.tabIndex = 0;
    if (focus) td.focus();
  }

  onKey(e) {
    const td = e.target.closest('td');
    if (!td) return;
    const { r, p } = this.active;
    const cols = this.tds[0]?.length ?? 0;
    const moves = {
      ArrowUp: [r - 1, p],
      ArrowDown: [r + 1, p],
      ArrowLeft: [r, p - 1],
      ArrowRight: [r, p + 1],
      Home: e.ctrlKey ? [0, 0] : [r, 0],
      End: e.ctrlKey ? [this.tds.length - 1, cols - 1] : [r, cols - 1],
      PageUp: [r - 5, p],
      PageDown: [r + 5, p],
    };
    if (moves[e.key]) {
      e.preventDefault();
      this.setActive(...moves[e.key], true);
    } else if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      this.togglePin(td);
    } else if (e.key === 'Escape') {
      if (this.pinned) this.unpin();
      hideTooltip();
    }
  }

  togglePin(td) {
    const layer = Number(td.dataset.layer);
    const p = Number(td.dataset.pos);
    if (this.pinned && this.pinned.layer === layer && this.pinned.p === p) {
      this.unpin();
      return;
    }
    this.table.querySelector('td.pinned')?.classList.remove('pinned');
    this.table.querySelector('td[aria-selected="true"]')?.removeAttribute('aria-selected');
    this.pinned = { layer, p };
    td.classList.add('pinned');
    td.setAttribute('aria-selected', 'true');
    this.showPinned();
  }

  unpin() {
    this.table.querySelector('td.pinned')?.classList.remove('pinned');
    this.table.querySelector('td[aria-selected="true"]')?.removeAttribute('aria-selected');
    this.pinned = null;
    this.pinPanel.hidden = true;
    this.pinPanel.replaceChildren();
  }

  showPinned() {
    const { layer, p } = this.pinned;
    const details = this.details(layer, p);
    if (!details) return;
    const close = el('button', { type: 'button', className: 'small secondary' }, 'Unpin');
    close.addEventListener('click', () => this.unpin());
    setChildren(this.pinPanel, el('div', { className: 'pin-head' }, el('strong', {}, 'Pinned cell'), close), details);
    this.pinPanel.hidden = false;
  }

  showTooltip(td) {
    const details = this.details(Number(td.dataset.layer), Number(td.dataset.pos));
    const tip = tooltipNode();
    if (!details) {
      hideTooltip();
      return;
    }
    setChildren(tip, details);
    tip.dataset.owner = this.id;
    tip.hidden = false;
    td.setAttribute('aria-describedby', 'tooltip');
    placeTooltip(tip, td);
  }

  /** The content of a tooltip or pinned panel: top-k and statistics of each lens shown. */
  details(layer, p) {
    const tokens = this.result.tokens ?? [];
    const grids = this.grids();
    const cells = grids.map((g) => g.cell(layer, p));
    if (!cells[0]) return null;
    const next = tokens[p + 1];
    const head = el(
      'div',
      { className: 'tip-head' },
      `Layer ${layer} · position ${p} · `,
      el('code', {}, visibleToken(tokens[p]?.text ?? '')),
      next ? el('span', { className: 'muted' }, ` → next `, el('code', {}, visibleToken(next.text))) : null,
    );
    const parts = grids.map((g, i) => {
      const c = cells[i];
      if (!c) return el('p', { className: 'muted' }, `${this.names(g.model)}: not computed yet`);
      const rows = c.top.map((t) =>
        el(
          'tr',
          {},
          el('td', { className: 'tok' }, visibleToken(t.token)),
          el('td', { className: 'pct' }, formatPercent(t.prob)),
          el('td', { className: 'barcell' }, el('span', { className: 'bar', style: { width: `${Math.max(1, t.prob * 100)}%` } })),
        ),
      );
      const stats = [
        ['entropy', formatNumber(c.entropy, 3)],
        ['KL to final', formatNumber(c.kl_to_final, 3)],
        ['final rank', String(c.final_rank)],
        ['next-token CE', c.next_token_ce === null || c.next_token_ce === undefined ? '–' : formatNumber(c.next_token_ce, 3)],
      ];
      return el(
        'div',
        { className: 'tip-lens' },
        el('div', { className: 'tip-lens-name' }, this.names(g.model)),
        el('table', { className: 'topk' }, el('tbody', {}, rows)),
        el('dl', { className: 'tip-stats' }, stats.map(([k, v]) => [el('dt', {}, k), el('dd', {}, v)])),
      );
    });
    return el('div', { className: 'tip-body' }, head, el('div', { className: 'tip-lenses' }, parts));
  }

  // PNG ------------------------------------------------------------------------------------

  /** Draws the current view on a canvas, with its legend, for the PNG export. */
  toCanvas(title) {
    const tokens = this.result.tokens ?? [];
    const layers = [...(this.grids()[0]?.layers ?? [])].reverse();
    const n = tokens.length;
    const cellW = clamp(Math.floor(16000 / Math.max(n, 1)), 4, 64);
    const cellH = 18;
    const left = 52;
    const top = 120;
    const width = left + n * cellW + 16;
    const height = top + layers.length * cellH + 70;
    const canvas = document.createElement('canvas');
    canvas.width = Math.max(width, 480);
    canvas.height = height;
    const ctx = canvas.getContext('2d');
    const style = getComputedStyle(document.documentElement);
    const fg = style.getPropertyValue('--fg').trim() || '#1f2328';
    const bg = style.getPropertyValue('--bg').trim() || '#ffffff';
    ctx.fillStyle = bg;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = fg;
    ctx.font = '600 15px system-ui, sans-serif';
    ctx.fillText(title, 12, 22);
    ctx.font = '11px ui-monospace, monospace';
    ctx.textBaseline = 'middle';
    tokens.forEach((t, p) => {
      ctx.save();
      ctx.translate(left + p * cellW + cellW / 2 + 4, top - 6);
      ctx.rotate(-Math.PI / 2.6);
      ctx.fillText(visibleToken(t.text).slice(0, 14), 0, 0);
      ctx.restore();
    });
    const domain = this.domain();
    layers.forEach((layer, r) => {
      const y = top + r * cellH;
      ctx.fillStyle = fg;
      ctx.textAlign = 'right';
      ctx.fillText(`L${layer}`, left - 6, y + cellH / 2);
      ctx.textAlign = 'left';
      for (let p = 0; p < n; p += 1) {
        const paint = this.paint(layer, p, domain);
        if (!paint) continue;
        const x = left + p * cellW;
        ctx.fillStyle = css(paint.rgb);
        ctx.fillRect(x, y, cellW - 1, cellH - 1);
        if (paint.differs) {
          ctx.fillStyle = fg;
          ctx.beginPath();
          ctx.moveTo(x + cellW - 1 - Math.min(6, cellW / 2), y);
          ctx.lineTo(x + cellW - 1, y);
          ctx.lineTo(x + cellW - 1, y + Math.min(6, cellW / 2));
          ctx.fill();
        }
        if (cellW >= 30) {
          ctx.fillStyle = needsLightText(paint.rgb) ? '#ffffff' : '#111111';
          const chars = Math.floor((cellW - 4) / 6.6);
          ctx.fillText(visibleToken(paint.text).slice(0, chars), x + 2, y + cellH / 2);
        }
      }
    });
    // Legend under the grid.
    const ly = top + layers.length * cellH + 24;
    const s = STATS[this.stat];
    const diff = this.view.kind === 'diff';
    for (let i = 0; i < 200; i += 1) {
      const v = domain[0] + ((domain[1] - domain[0]) * i) / 199;
      ctx.fillStyle = css(diff ? diverging(v / domain[1]) : sequential(s.score(v, domain)));
      ctx.fillRect(left + i, ly, 1, 12);
    }
    ctx.fillStyle = fg;
    const fmt = (v) => (diff ? formatNumber(v, 3) : s.format(v));
    ctx.fillText(`${fmt(domain[0])} … ${fmt(domain[1])}  ${s.label}${diff ? ' (difference)' : ''}`, left + 210, ly + 6);
    return canvas;
  }
}

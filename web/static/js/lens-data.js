// Lens results as the page keeps them: per model of an analysis, a grid of cells (layer ×
// position) for a cell lens (logit, tuned) or explanation rows (one per position) for a
// talkative lens, filled chunk by chunk as `rows` events arrive, or whole from a `completed`
// output or an imported file; and the statistics a heatmap can be coloured by.

import { formatPercent, formatNumber } from './util.js';

/**
 * The statistics of a cell. `score` maps a value into 0..1 where 1 is "the lens is sure"
 * (a high top-1 probability, a low entropy, KL or rank), given the range of the data shown.
 */
export const STATS = {
  prob: {
    label: 'Probability of the top-1',
    short: 'top-1 prob',
    value: (c) => c.top?.[0]?.prob ?? NaN,
    format: (v) => formatPercent(v),
    range: () => [0, 1],
    score: (v) => v,
  },
  entropy: {
    label: 'Entropy (nats)',
    short: 'entropy',
    value: (c) => c.entropy,
    format: (v) => formatNumber(v, 3),
    range: (lo, hi) => [0, Math.max(hi, 1e-6)],
    score: (v, [, hi]) => 1 - v / hi,
  },
  kl: {
    label: 'KL to final (nats)',
    short: 'KL to final',
    value: (c) => c.kl_to_final,
    format: (v) => formatNumber(v, 3),
    range: (lo, hi) => [0, Math.max(hi, 1e-6)],
    // Most cells are near 0 or far away: a log scale shows both ends.
    score: (v, [, hi]) => 1 - Math.log1p(Math.max(v, 0)) / Math.log1p(hi),
  },
  rank: {
    label: 'Rank of the final top-1',
    short: 'final rank',
    value: (c) => c.final_rank,
    format: (v) => String(v),
    range: (lo, hi) => [1, Math.max(hi, 2)],
    score: (v, [, hi]) => 1 - Math.log(Math.max(v, 1)) / Math.log(hi),
  },
};

/**
 * The value the difference view subtracts: the statistic itself, except for the rank, whose
 * logarithm is compared (rank 1 against 2 matters more than 1000 against 1001).
 */
export function diffValue(stat, cell) {
  const v = STATS[stat].value(cell);
  return stat === 'rank' ? Math.log10(Math.max(v, 1)) : v;
}

/**
 * One model's results over one text: cells by layer and position (`kind` 'cells'), or, for a
 * talkative lens (`kind` 'talkative'), explanation rows by position.
 */
export class LensGrid {
  constructor(model, nPositions, kind = 'cells') {
    this.model = model;
    this.nPositions = nPositions;
    this.kind = kind;
    /** position → explanation row (holes until their chunk arrives). */
    this.explanations = [];
    this.explained = 0;
    /** Layer numbers, ascending. */
    this.layers = [];
    /** layer → array of cells by position (holes until their chunk arrives). */
    this.rows = new Map();
    this.filled = 0;
    this.version = 0;
  }

  ensureLayer(layer) {
    if (!this.rows.has(layer)) {
      this.rows.set(layer, new Array(this.nPositions).fill(null));
      this.layers.push(layer);
      this.layers.sort((a, b) => a - b);
    }
    return this.rows.get(layer);
  }

  /** Adds the cells of one `rows` chunk (or a whole layer row at first_position 0). */
  addRows(layerRows, firstPosition) {
    for (const row of layerRows) {
      const cells = this.ensureLayer(row.layer);
      row.positions.forEach((cell, i) => {
        const p = firstPosition + i;
        if (p >= cells.length) cells.length = p + 1;
        if (!cells[p]) this.filled += 1;
        cells[p] = cell;
      });
    }
    this.version += 1;
  }

  /** Adds explanation rows, each at its `position` (or `firstPosition` + its index). */
  addExplanations(rows, firstPosition = 0) {
    this.kind = 'talkative';
    rows.forEach((row, i) => {
      const p = Number.isInteger(row?.position) ? row.position : firstPosition + i;
      if (!this.explanations[p]) this.explained += 1;
      this.explanations[p] = row;
    });
    this.version += 1;
  }

  /** The explanation rows that arrived, in position order. */
  explanationRows() {
    return this.explanations.filter(Boolean);
  }

  cell(layer, position) {
    return this.rows.get(layer)?.[position] ?? null;
  }

  /** Lowest and highest value of a statistic over the filled cells. */
  extent(stat) {
    let lo = Infinity;
    let hi = -Infinity;
    for (const cells of this.rows.values()) {
      for (const c of cells) {
        if (!c) continue;
        const v = STATS[stat].value(c);
        if (!Number.isFinite(v)) continue;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    }
    return Number.isFinite(lo) ? [lo, hi] : [0, 1];
  }

  toAnalysis(tokens) {
    if (this.kind === 'talkative') return { lens: this.model, tokens, layers: [], explanations: this.explanationRows() };
    return {
      lens: this.model,
      tokens,
      layers: this.layers.map((layer) => ({ layer, positions: this.rows.get(layer) })),
    };
  }
}

/**
 * An analysis's results: its tokens and one grid per model, in the request's order.
 * `kindOf(modelId)` gives a model's lens kind where the page knows it ('talkative' makes an
 * explanation grid); the data itself decides otherwise (rows with `explanations`).
 */
export class AnalysisResult {
  constructor(models, kindOf = () => null) {
    this.models = models;
    this.tokens = null;
    this.grids = models.map((m) => new LensGrid(m, 0, kindOf(m) === 'talkative' ? 'talkative' : 'cells'));
  }

  setTokens(tokens) {
    this.tokens = tokens;
    for (const g of this.grids) {
      g.nPositions = tokens.length;
      for (const cells of g.rows.values()) cells.length = Math.max(cells.length, tokens.length);
    }
  }

  /** A `rows` event's chunk: `lens` is the index of the model in the request. */
  addChunk(chunk) {
    const grid = this.grids[chunk.lens];
    if (!grid) return;
    if (Array.isArray(chunk.explanations)) grid.addExplanations(chunk.explanations, chunk.first_position);
    grid.addRows(chunk.layers ?? [], chunk.first_position);
  }

  /** The `analyses` of a completed output (or an export), which hold every cell. */
  setAnalyses(analyses) {
    if (!this.tokens && analyses[0]) this.setTokens(analyses[0].tokens);
    analyses.forEach((a, i) => {
      let grid = this.grids.find((g) => g.model === a.lens) ?? this.grids[i];
      if (!grid) {
        grid = new LensGrid(a.lens, this.tokens.length);
        this.grids.push(grid);
        this.models.push(a.lens);
      }
      grid.model = a.lens;
      grid.nPositions = this.tokens.length;
      if (Array.isArray(a.explanations)) grid.addExplanations(a.explanations, 0);
      grid.addRows(a.layers ?? [], 0);
    });
  }

  hasCells() {
    return this.grids.some((g) => g.filled > 0);
  }

  /** Indices of the grids of cell lenses (those a heatmap and the difference view show). */
  cellLenses() {
    return this.grids.flatMap((g, i) => (g.kind === 'talkative' ? [] : [i]));
  }

  toAnalyses() {
    return this.grids.map((g) => g.toAnalysis(this.tokens ?? []));
  }
}

// One analysis in a result tab: its input and options, the request's progress, the heatmap
// with its lens, difference and statistic selectors, the explanation views of talkative
// lenses, and the tab's actions (cancel, run again, export JSONL or PNG, share link). Filled
// from the request's events, a `completed` output, or an imported file.

import { AnalysisResult, STATS } from './lens-data.js';
import { Heatmap } from './heatmap.js';
import { ExplanationViews } from './explain-views.js';
import { RequestProgress } from './progress.js';
import { el, setChildren, uid, download, copyText, stamp } from './util.js';
import { toast } from './notify.js';

let counter = 0;

/** A short text for a tab title: the first words of the input. */
export function inputTitle(input) {
  const text = input.messages ? input.messages.map((m) => m.content).join(' ') : input.text ?? '';
  const words = text.trim().replace(/\s+/g, ' ');
  return words.length > 24 ? `${words.slice(0, 22)}…` : words || '(empty)';
}

function inputSummary(input) {
  if (input.messages) {
    return el('ol', { className: 'turns-summary' }, input.messages.map((m) => el('li', {}, el('span', { className: 'role' }, m.role), el('span', { className: 'turn-text' }, m.content))));
  }
  return el('pre', { className: 'input-text' }, input.text ?? '');
}

/** The talkative options of a spec, in words, or null when it has none. */
function talkativeSummary(o) {
  if (o.best_of_k === undefined) return null;
  const onOff = (v) => (v === false ? 'off' : 'on');
  return `best of ${o.best_of_k} · temperature ${o.temperature ?? 1}${o.temperature === 0 ? ' (greedy)' : ''} · seed ${o.seed ?? 42} · salience ${onOff(o.salience)} · KL ${onOff(o.kl)}`;
}

/**
 * `spec`: {models, group_id, input: {text, chat} | {messages}, options: {layers, top_k} and,
 * with a talkative lens, {best_of_k, temperature, seed, salience, kl}}.
 * `app` gives names(modelId), kind(modelId), send(message), cancel(requestId), runAgain(spec)
 * and close(tab).
 */
export class AnalysisTab {
  constructor(spec, app, { imported = null } = {}) {
    counter += 1;
    this.kind = 'analysis';
    this.spec = spec;
    this.app = app;
    this.requestId = imported?.request_id ?? null;
    this.clientTag = uid('a');
    this.title = `${inputTitle(spec.input)}`;
    this.number = counter;
    this.result = new AnalysisResult([...spec.models], (id) => app.kind?.(id) ?? null);
    this.progress = new RequestProgress('analysis');
    this.progress.unit = this.progressUnit();
    this.heatmap = new Heatmap(this.result, { names: (id) => app.names(id), label: `Lens heatmap of analysis ${counter}` });
    /** grid index → {views, version}: the explanation views of each talkative lens. */
    this.explain = new Map();
    this.talkativeShown = false;
    this.panel = this.build();
    if (imported) {
      this.originalStatus = imported.status;
      this.progress.status = 'imported';
      this.progress.render();
      this.result.setAnalyses(imported.analyses);
      this.onData();
    }
    this.updateActions();
    this.root.dataset.status = this.status;
  }

  get status() {
    return this.progress.status;
  }

  build() {
    this.cancelButton = el('button', { type: 'button', className: 'danger small' }, 'Cancel');
    this.cancelButton.addEventListener('click', () => this.cancel());
    this.againButton = el('button', { type: 'button', className: 'small' }, 'Run again');
    this.againButton.addEventListener('click', () => this.app.runAgain(this.spec));
    this.jsonButton = el('button', { type: 'button', className: 'small secondary' }, 'Export JSONL');
    this.jsonButton.addEventListener('click', () => this.app.exportTabs([this]));
    this.pngButton = el('button', { type: 'button', className: 'small secondary' }, 'Export PNG');
    this.pngButton.addEventListener('click', () => this.exportPng());
    this.closeButton = el('button', { type: 'button', className: 'small secondary' }, 'Close tab');
    this.closeButton.addEventListener('click', () => this.app.close(this));
    this.share = el('div', { className: 'share', hidden: true });

    const models = this.spec.models.map((m) => this.app.names(m)).join(', ');
    const meta = el(
      'details',
      { className: 'input-summary' },
      el('summary', {}, 'Input and options'),
      inputSummary(this.spec.input),
      el(
        'dl',
        { className: 'meta' },
        el('dt', {}, 'Models'), el('dd', {}, models || '(current model)'),
        this.spec.options.layers !== undefined ? [el('dt', {}, 'Layers'), el('dd', {}, String(this.spec.options.layers))] : null,
        this.spec.options.top_k !== undefined ? [el('dt', {}, 'Top-k'), el('dd', {}, String(this.spec.options.top_k))] : null,
        talkativeSummary(this.spec.options) ? [el('dt', {}, 'Talkative'), el('dd', {}, talkativeSummary(this.spec.options))] : null,
        el('dt', {}, 'Mode'), el('dd', {}, this.spec.input.messages ? 'chat turns' : this.spec.input.chat ? 'chat (one user turn)' : 'plain text'),
        this.requestIdNode = el('dt', { hidden: true }, 'Request'), this.requestIdValue = el('dd', { hidden: true }),
      ),
    );
    this.controls = el('div', { className: 'view-controls' });
    this.explainBox = el('div', { className: 'talkative-views', hidden: true });
    this.root = el(
      'div',
      { className: 'result analysis-result' },
      el(
        'div',
        { className: 'result-head' },
        el('h3', {}, `Analysis ${this.number}`, el('span', { className: 'muted' }, ` · ${models}`)),
        el('div', { className: 'actions' }, this.cancelButton, this.againButton, this.jsonButton, this.pngButton, this.closeButton),
      ),
      this.progress.node,
      this.share,
      meta,
      this.controls,
      this.heatmap.node,
      this.explainBox,
    );
    this.buildControls();
    this.syncExplanations();
    this.applyView();
    return this.root;
  }

  /** What the controls depend on: the models and their kinds. */
  signature() {
    return this.result.grids.map((g) => `${g.model}\t${g.kind}`).join('\n');
  }

  /**
   * Lens selector (several models: cell and talkative lenses alike), difference pickers (two
   * or more cell lenses) and statistic selector (any cell lens). The lens chosen stays chosen
   * when the controls are built again.
   */
  buildControls() {
    const grids = this.result.grids;
    const cells = this.result.cellLenses();
    const previous = this.lensRadios?.querySelector('input:checked')?.value ?? '0';
    this.builtFor = this.signature();
    this.lensRadios = null;
    this.diffPickers = null;
    const name = uid('lens');
    const parts = [];
    if (grids.length > 1) {
      const values = grids.map((_, i) => String(i));
      if (cells.length >= 2) values.push('diff');
      const checked = values.includes(previous) ? previous : '0';
      const options = values.map((value) => {
        const input = el('input', { type: 'radio', name, value, checked: value === checked });
        input.addEventListener('change', () => this.applyView());
        const grid = grids[Number(value)];
        const text = value === 'diff' ? 'Difference' : this.app.names(grid.model);
        return el('label', { className: 'seg', dataset: { kind: value === 'diff' ? 'diff' : grid.kind } }, input, el('span', {}, text));
      });
      this.lensRadios = el('div', { className: 'segmented', attrs: { role: 'radiogroup', 'aria-label': 'Lens shown' } }, options);
      parts.push(this.lensRadios);
      if (cells.length >= 2) {
        const pick = (sel) => el('select', {}, cells.map((i) => el('option', { value: String(i), selected: i === sel }, this.app.names(grids[i].model))));
        this.diffA = pick(cells[0]);
        this.diffB = pick(cells[1]);
        this.diffA.addEventListener('change', () => this.applyView());
        this.diffB.addEventListener('change', () => this.applyView());
        this.diffPickers = el('span', { className: 'diff-pickers', hidden: true }, el('label', {}, 'A ', this.diffA), ' − ', el('label', {}, 'B ', this.diffB));
        parts.push(this.diffPickers);
      }
    }
    this.statLabel = null;
    if (cells.length > 0) {
      this.statSelect = el('select', { attrs: { 'aria-label': 'Colour cells by' } }, Object.entries(STATS).map(([k, s]) => el('option', { value: k, selected: k === this.heatmap.stat }, s.label)));
      this.statSelect.addEventListener('change', () => this.heatmap.setStat(this.statSelect.value));
      this.statLabel = el('label', { className: 'inline' }, 'Colour by ', this.statSelect);
      parts.push(this.statLabel);
    }
    setChildren(this.controls, parts);
    this.controls.hidden = parts.length === 0;
  }

  /** Shows the chosen lens: the heatmap (a cell lens or the difference) or the explanation views. */
  applyView() {
    const grids = this.result.grids;
    const chosen = this.lensRadios?.querySelector('input:checked')?.value ?? '0';
    const talkative = chosen !== 'diff' && grids[Number(chosen)]?.kind === 'talkative' ? Number(chosen) : null;
    if (this.diffPickers) this.diffPickers.hidden = chosen !== 'diff';
    if (chosen === 'diff') {
      this.heatmap.setView({ kind: 'diff', a: Number(this.diffA.value), b: Number(this.diffB.value) });
    } else if (talkative === null) {
      this.heatmap.setView({ kind: 'lens', lens: Number(chosen) });
    } else if (this.heatmap.view.kind === 'lens' && grids[this.heatmap.view.lens]?.kind === 'talkative') {
      // Hidden, but kept on a cell lens so that it never draws a talkative one.
      const first = this.result.cellLenses()[0];
      if (first !== undefined) this.heatmap.setView({ kind: 'lens', lens: first });
    }
    this.talkativeShown = talkative !== null;
    this.heatmap.node.hidden = this.talkativeShown;
    if (this.statLabel) this.statLabel.hidden = this.talkativeShown;
    this.explainBox.hidden = !this.talkativeShown;
    for (const [i, { wrap }] of this.explain) wrap.hidden = i !== talkative;
    this.root.dataset.view = this.talkativeShown ? 'talkative' : chosen === 'diff' ? 'difference' : 'heatmap';
    this.updateActions();
  }

  /** Gives each talkative lens its explanation views and hands them the rows that arrived. */
  syncExplanations() {
    this.result.grids.forEach((g, i) => {
      if (g.kind !== 'talkative') return;
      let entry = this.explain.get(i);
      if (!entry) {
        const views = new ExplanationViews(g.explanationRows(), {
          label: `${this.app.names(g.model)} in analysis ${this.number}`,
          waiting: this.progress.isActive() ? 'Explanations appear here as the server computes them.' : 'No explanations arrived.',
        });
        const wrap = el('div', { className: 'talkative-view', hidden: true, dataset: { lens: g.model } }, views.node);
        entry = { views, wrap, version: g.version };
        this.explain.set(i, entry);
        this.explainBox.append(wrap);
        return;
      }
      if (!this.progress.isActive() && g.explained === 0 && entry.views.waiting !== 'No explanations arrived.') {
        entry.views.waiting = 'No explanations arrived.';
        entry.views.render();
      }
      if (entry.version !== g.version) {
        entry.version = g.version;
        entry.views.setRows(g.explanationRows());
      }
    });
  }

  /** Called by the app with the `accepted` reply. */
  accepted(requestId) {
    this.requestId = requestId;
    this.root.dataset.requestId = requestId;
    this.requestIdNode.hidden = false;
    this.requestIdValue.hidden = false;
    this.requestIdValue.textContent = requestId;
    this.progress.accepted();
    this.changed();
  }

  rejected(error) {
    this.progress.rejected(error.errorType, error.message);
    this.changed();
  }

  interrupted() {
    this.progress.interrupted();
    this.changed();
  }

  /** One event of this tab's request. */
  handle(ev) {
    if (ev.type === 'tokens') {
      this.result.setTokens(ev.tokens);
      this.onData();
    } else if (ev.type === 'rows') {
      this.result.addChunk(ev.chunk);
      this.onData();
    } else if (ev.type === 'completed' && ev.output?.analyses) {
      this.result.setAnalyses(ev.output.analyses);
      this.onData();
    }
    this.progress.apply(ev);
    this.changed();
  }

  onData() {
    this.progress.unit = this.progressUnit();
    if (this.signature() !== this.builtFor) {
      this.buildControls();
      this.syncExplanations();
      this.applyView();
    } else {
      this.syncExplanations();
    }
    this.heatmap.refresh();
  }

  /** The unit of the progress count: the server counts cells and explained positions together. */
  progressUnit() {
    const kinds = new Set(this.result.grids.map((g) => g.kind));
    if (!kinds.has('talkative')) return 'cells';
    return kinds.has('cells') ? 'cells and positions' : 'positions';
  }

  changed() {
    if (!this.progress.isActive()) this.syncExplanations();
    this.root.dataset.status = this.status;
    this.updateActions();
    this.app.changed(this);
  }

  updateActions() {
    const active = this.progress.isActive();
    this.cancelButton.hidden = !active || !this.requestId;
    this.againButton.hidden = active || this.status === 'imported' || this.status === 'completed';
    // The PNG is of the heatmap: not offered while a talkative lens is shown.
    this.pngButton.hidden = this.talkativeShown;
    this.pngButton.disabled = !this.result.hasCells();
    this.jsonButton.disabled = !this.result.tokens;
    const sharable = this.status === 'completed' && this.requestId;
    this.share.hidden = !sharable;
    if (sharable && !this.share.firstChild) {
      const url = new URL(`/share/${encodeURIComponent(this.requestId)}`, window.location.href).href;
      const link = el('a', { href: url, target: '_blank', rel: 'noopener', className: 'share-link' }, url);
      const copy = el('button', { type: 'button', className: 'small secondary' }, 'Copy link');
      copy.addEventListener('click', async () => {
        const ok = await copyText(url);
        toast(ok ? 'Share link copied.' : 'Copying is not allowed here; select the link instead.', { kind: ok ? 'info' : 'error' });
      });
      setChildren(this.share, el('span', { className: 'muted' }, 'Share (read-only): '), link, copy);
    }
  }

  cancel() {
    if (!this.requestId) return;
    this.cancelButton.disabled = true;
    this.cancelButton.textContent = 'Cancelling…';
    this.app.cancel(this.requestId).then(
      () => {},
      (e) => toast(`Cancel: ${e.message}`, { kind: 'error' }),
    ).finally(() => {
      this.cancelButton.disabled = false;
      this.cancelButton.textContent = 'Cancel';
    });
  }

  exportPng() {
    const canvas = this.heatmap.toCanvas(`lensd · ${this.title} · ${this.app.names(this.heatmap.grids()[0]?.model ?? '')}`);
    canvas.toBlob((blob) => {
      if (blob) download(blob, `lensd-heatmap-${this.requestId ?? this.number}-${stamp()}.png`);
      else toast('The heatmap is too large to draw as one picture.', { kind: 'error' });
    }, 'image/png');
  }

  /** This analysis as one line of the lensd export format. */
  toExport() {
    return {
      format: 'lensd.analysis',
      version: 1,
      request_id: this.requestId,
      status: this.status === 'imported' ? this.originalStatus ?? 'completed' : this.status,
      exported_at: new Date().toISOString(),
      models: this.result.models,
      input: this.spec.input,
      options: this.spec.options,
      analyses: this.result.toAnalyses(),
    };
  }
}

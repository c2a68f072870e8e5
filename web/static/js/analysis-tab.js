// One analysis in a result tab: its input and options, the request's progress, the heatmap
// with its lens, difference and statistic selectors, and the tab's actions (cancel, run again,
// export JSONL or PNG, share link). Filled from the request's events, a `completed` output,
// or an imported file.

import { AnalysisResult, STATS } from './lens-data.js';
import { Heatmap } from './heatmap.js';
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

/**
 * `spec`: {models, group_id, input: {text, chat} | {messages}, options: {layers, top_k}}.
 * `app` gives names(modelId), send(message), cancel(requestId), runAgain(spec) and close(tab).
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
    this.result = new AnalysisResult([...spec.models]);
    this.progress = new RequestProgress('analysis');
    this.heatmap = new Heatmap(this.result, { names: (id) => app.names(id), label: `Lens heatmap of analysis ${counter}` });
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
        el('dt', {}, 'Layers'), el('dd', {}, this.spec.options.layers),
        el('dt', {}, 'Top-k'), el('dd', {}, String(this.spec.options.top_k)),
        el('dt', {}, 'Mode'), el('dd', {}, this.spec.input.messages ? 'chat turns' : this.spec.input.chat ? 'chat (one user turn)' : 'plain text'),
        this.requestIdNode = el('dt', { hidden: true }, 'Request'), this.requestIdValue = el('dd', { hidden: true }),
      ),
    );
    this.controls = el('div', { className: 'view-controls' });
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
    );
    this.buildControls();
    return this.root;
  }

  /** Lens selector (several models), difference pickers and statistic selector. */
  buildControls() {
    const n = this.result.grids.length;
    const name = uid('lens');
    const parts = [];
    if (n > 1) {
      const options = this.result.grids.map((g, i) => {
        const input = el('input', { type: 'radio', name, value: String(i), checked: i === 0 });
        input.addEventListener('change', () => this.applyView());
        return el('label', { className: 'seg' }, input, el('span', {}, this.app.names(g.model)));
      });
      const diff = el('input', { type: 'radio', name, value: 'diff' });
      diff.addEventListener('change', () => this.applyView());
      options.push(el('label', { className: 'seg' }, diff, el('span', {}, 'Difference')));
      this.lensRadios = el('div', { className: 'segmented', attrs: { role: 'radiogroup', 'aria-label': 'Lens shown' } }, options);
      const pick = (sel) => el('select', {}, this.result.grids.map((g, i) => el('option', { value: String(i), selected: i === sel }, this.app.names(g.model))));
      this.diffA = pick(0);
      this.diffB = pick(1);
      this.diffA.addEventListener('change', () => this.applyView());
      this.diffB.addEventListener('change', () => this.applyView());
      this.diffPickers = el('span', { className: 'diff-pickers', hidden: true }, el('label', {}, 'A ', this.diffA), ' − ', el('label', {}, 'B ', this.diffB));
      parts.push(this.lensRadios, this.diffPickers);
    }
    this.statSelect = el('select', { attrs: { 'aria-label': 'Colour cells by' } }, Object.entries(STATS).map(([k, s]) => el('option', { value: k }, s.label)));
    this.statSelect.addEventListener('change', () => this.heatmap.setStat(this.statSelect.value));
    parts.push(el('label', { className: 'inline' }, 'Colour by ', this.statSelect));
    setChildren(this.controls, parts);
  }

  applyView() {
    const chosen = this.lensRadios?.querySelector('input:checked')?.value ?? '0';
    if (chosen === 'diff') {
      this.diffPickers.hidden = false;
      this.heatmap.setView({ kind: 'diff', a: Number(this.diffA.value), b: Number(this.diffB.value) });
    } else {
      if (this.diffPickers) this.diffPickers.hidden = true;
      this.heatmap.setView({ kind: 'lens', lens: Number(chosen) });
    }
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
    if (this.result.grids.length !== (this.lensRadios ? this.lensRadios.querySelectorAll('input').length - 1 : 1)) this.buildControls();
    this.heatmap.refresh();
  }

  changed() {
    this.root.dataset.status = this.status;
    this.updateActions();
    this.app.changed(this);
  }

  updateActions() {
    const active = this.progress.isActive();
    this.cancelButton.hidden = !active || !this.requestId;
    this.againButton.hidden = active || this.status === 'imported' || this.status === 'completed';
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

// A result tab of explanation rows imported from a file (the original site's exports, or a
// `lensd.explanations` line): the file's metadata and the table / transposed / full-text
// views. Talkative-lens results of an analysis show in its analysis tab instead.

import { ExplanationViews } from './explain-views.js';
import { el, formatNumber } from './util.js';

let counter = 0;

export class ExplanationTab {
  constructor({ rows, metadata, title, source }, app) {
    counter += 1;
    this.kind = 'explanations';
    this.app = app;
    this.rows = rows;
    this.metadata = metadata ?? {};
    this.source = source;
    this.title = title ?? `${source ?? 'Import'} ${counter}`;
    this.status = 'imported';
    this.views = new ExplanationViews(rows, { label: this.title });
    const json = el('button', { type: 'button', className: 'small secondary' }, 'Export JSONL');
    json.addEventListener('click', () => app.exportTabs([this]));
    const close = el('button', { type: 'button', className: 'small secondary' }, 'Close tab');
    close.addEventListener('click', () => app.close(this));
    const meta = Object.entries(this.metadata);
    this.panel = el(
      'div',
      { className: 'result explanation-result', dataset: { status: 'imported' } },
      el('div', { className: 'result-head' }, el('h3', {}, this.title, el('span', { className: 'muted' }, ` · ${rows.length} tokens`)), el('div', { className: 'actions' }, json, close)),
      meta.length
        ? el(
            'details',
            { className: 'input-summary' },
            el('summary', {}, 'Metadata'),
            el('dl', { className: 'meta' }, meta.map(([k, v]) => [el('dt', {}, k), el('dd', {}, typeof v === 'number' ? formatNumber(v, 6) : typeof v === 'object' ? JSON.stringify(v) : String(v))])),
          )
        : null,
      this.views.node,
    );
  }

  toExport() {
    return {
      format: 'lensd.explanations',
      version: 1,
      title: this.title,
      exported_at: new Date().toISOString(),
      metadata: this.metadata,
      rows: this.rows,
    };
  }
}

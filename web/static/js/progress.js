// A request's life as its tab shows it: queued (with its place), loading weights (bytes),
// running (done/total with an ETA), and how it ended. Shared by analysis and generation tabs;
// the tab feeds it the request's events.

import { el, setChildren, formatBytes, formatMs } from './util.js';

export const ACTIVE = new Set(['sending', 'queued', 'starting', 'loading', 'running']);

export class RequestProgress {
  constructor(kind) {
    this.kind = kind;
    this.status = 'sending';
    this.position = null;
    this.loading = null;
    this.progress = null;
    this.error = null;
    this.cancelled = null;
    this.startedAt = null;
    this.finishedAt = null;
    this.line = el('p', { className: 'status-line', attrs: { role: 'status' } });
    this.bar = el('progress', { className: 'status-bar', hidden: true, max: 1, value: 0 });
    this.errorBox = el('div', { className: 'error-box', hidden: true, attrs: { role: 'alert' } });
    this.node = el('div', { className: 'request-progress' }, this.line, this.bar, this.errorBox);
    /** Every stage the request went through, in order (also on the node, for tests). */
    this.stages = [];
    /** resource → its size, for every load this request waited for. */
    this.loads = new Map();
    this.render();
  }

  isActive() {
    return ACTIVE.has(this.status);
  }

  /** Applies one request event; returns true when it ended the request. */
  apply(ev) {
    switch (ev.type) {
      case 'queued':
      case 'position':
        if (this.status === 'sending' || this.status === 'queued') this.status = 'queued';
        this.position = ev.position;
        break;
      case 'started':
        // The worker took it; weights may still have to load before any row is computed.
        this.status = 'starting';
        this.startedAt = performance.now();
        break;
      case 'loading':
        // Stays "loading" from one resource to the next until the first result arrives.
        this.status = 'loading';
        this.loading = { resource: ev.resource, done: ev.bytes_done, total: ev.bytes_total };
        this.loads.set(ev.resource, ev.bytes_total);
        break;
      case 'tokens':
      case 'rows':
      case 'token':
        this.status = 'running';
        break;
      case 'progress':
        this.status = 'running';
        this.progress = { done: ev.done, total: ev.total, eta: ev.eta_ms };
        break;
      case 'completed':
        this.status = 'completed';
        break;
      case 'error':
        this.status = 'error';
        this.error = { type: ev.error_type, message: ev.message };
        break;
      case 'cancelled':
        this.status = 'cancelled';
        this.cancelled = { partial: ev.partial, reason: ev.reason };
        break;
      default:
        return false;
    }
    const done = !ACTIVE.has(this.status);
    if (done && this.finishedAt === null) this.finishedAt = performance.now();
    this.render();
    return done;
  }

  accepted() {
    if (this.status === 'sending') this.status = 'queued';
    this.render();
  }

  /** The server refused the message itself (no request was created). */
  rejected(errorType, message) {
    this.status = 'rejected';
    this.error = { type: errorType, message };
    this.render();
  }

  interrupted() {
    this.status = 'interrupted';
    this.render();
  }

  render() {
    // An analysis tab sets `unit` when talkative lenses count explained positions too.
    const unit = this.unit ?? (this.kind === 'generation' ? 'tokens' : 'cells');
    let text = '';
    let bar = null;
    switch (this.status) {
      case 'sending':
        text = 'Sending…';
        break;
      case 'queued':
        text = this.position === null ? 'Queued.' : this.position === 0 ? 'Queued: next in line.' : `Queued: ${this.position} ahead in the queue.`;
        break;
      case 'starting':
        text = 'Starting…';
        break;
      case 'loading': {
        const l = this.loading;
        const verb = l.total > 0 && l.done >= l.total ? 'Loaded' : 'Loading';
        text = `${verb} ${l.resource}: ${formatBytes(l.done)} of ${formatBytes(l.total)}`;
        bar = [l.done, l.total];
        break;
      }
      case 'running': {
        const p = this.progress;
        if (p && p.total > 0) {
          text = `Running: ${p.done} of ${p.total} ${unit}${p.eta !== null && p.eta !== undefined ? ` · ETA ${formatMs(p.eta)}` : ''}`;
          bar = [p.done, p.total];
        } else {
          text = 'Running…';
        }
        break;
      }
      case 'completed': {
        const took = this.startedAt !== null && this.finishedAt !== null ? ` in ${formatMs(this.finishedAt - this.startedAt)}` : '';
        text = `Completed${took}.`;
        break;
      }
      case 'error':
        text = 'Failed.';
        break;
      case 'rejected':
        text = 'Not accepted by the server.';
        break;
      case 'cancelled':
        text = `Cancelled${this.cancelled?.partial ? '; the partial results are kept' : ''}.`;
        break;
      case 'interrupted':
        text = 'Interrupted: the connection was lost while this was running, and the server cancels a closed connection\'s work.';
        break;
      case 'imported':
        text = 'Imported from a file.';
        break;
      default:
        text = this.status;
    }
    this.line.textContent = text;
    this.line.dataset.status = this.status;
    if (this.stages[this.stages.length - 1] !== this.status) {
      this.stages.push(this.status);
      this.node.dataset.stages = this.stages.join(' ');
    }
    if (this.loads.size > 0) this.node.dataset.loadedBytes = String([...this.loads.values()].reduce((a, b) => a + b, 0));
    if (bar) {
      this.bar.hidden = false;
      this.bar.max = Math.max(bar[1], 1);
      this.bar.value = bar[0];
    } else {
      this.bar.hidden = true;
    }
    if (this.error) {
      setChildren(this.errorBox, el('strong', {}, this.error.type ?? 'error'), ': ', el('span', { className: 'error-message' }, this.error.message));
      this.errorBox.hidden = false;
    } else {
      this.errorBox.hidden = true;
    }
  }
}

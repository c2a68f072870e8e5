// The model switcher: groups with their models, where each model's weights are (device, host,
// disk), what is loading, what switches fast, how long a model takes to be ready, and the
// admin's preload and unload buttons with their progress. Choosing a model sets this
// connection's current model only.
//
// The list is redrawn in place (cards and rows keyed by id) so that the live refreshes after
// every residency notice keep keyboard focus and open/closed groups.

import { store } from './store.js';
import { el, setChildren, formatBytes, formatMs } from './util.js';

const TIER_ORDER = { device: 0, host: 1, disk: 2 };

/** Where a model's weights are: the slower of its base and its lens. */
export function modelTier(residency) {
  const tiers = [residency.base_tier, residency.lens_tier].filter(Boolean);
  return tiers.reduce((a, b) => (TIER_ORDER[b] > TIER_ORDER[a] ? b : a), 'device');
}

function tierTitle(residency) {
  const base = `base on ${residency.base_tier} (${formatBytes(residency.base_bytes)})`;
  if (!residency.lens_tier) return `${base}; the logit lens has no weights of its own`;
  return `${base}, lens on ${residency.lens_tier} (${formatBytes(residency.lens_bytes)})`;
}

/** "ready" when nothing needs to move, else the server's estimate. */
export function readyText(ms) {
  if (ms === undefined || ms === null) return null;
  return ms === 0 ? 'ready' : `~${formatMs(ms)}`;
}

export class Switcher {
  constructor(root, { conn, onError }) {
    this.root = root;
    this.conn = conn;
    this.onError = onError;
    this.list = root.querySelector('#group-list');
    this.current = root.querySelector('#current-model');
    this.status = root.querySelector('#switch-status');
    this.cards = new Map();
    store.on(['groups', 'currentModel', 'role', 'switchStatus', 'groupsLoaded'], () => this.render());
    this.render();
  }

  async choose(model, group) {
    this.status.textContent = `Switching to ${model.name}…`;
    try {
      await this.conn.send({ type: 'switch_model_grouped', model_id: model.id, group_id: group.group_id });
      this.status.textContent = '';
    } catch (e) {
      this.status.textContent = `Could not switch: ${e.message}`;
      this.render();
    }
  }

  async admin(message, label) {
    try {
      await this.conn.send(message);
    } catch (e) {
      this.onError(`${label}: ${e.message}`, e.errorType);
    }
  }

  render() {
    const groups = store.get('groups');
    const currentId = store.get('currentModel');
    const found = currentId ? store.findModel(currentId) : null;
    if (found) {
      setChildren(this.current, 'Your model: ', el('strong', {}, found.model.name), ` in ${found.group.group_name}`);
    } else {
      this.current.textContent = store.get('groupsLoaded') ? 'No model chosen yet.' : 'Loading the model list…';
    }
    const seen = new Set();
    groups.forEach((g, i) => {
      seen.add(g.group_id);
      let card = this.cards.get(g.group_id);
      if (!card) {
        card = this.buildCard(g, found ? found.group.group_id === g.group_id : i === 0);
        this.cards.set(g.group_id, card);
      }
      this.updateCard(card, g, currentId);
      // Keep the server's order.
      if (this.list.children[i] !== card.node) this.list.insertBefore(card.node, this.list.children[i] ?? null);
    });
    for (const [id, card] of this.cards) {
      if (!seen.has(id)) {
        card.node.remove();
        this.cards.delete(id);
      }
    }
    if (groups.length === 0 && store.get('groupsLoaded')) {
      if (!this.empty) this.empty = el('p', { className: 'muted' }, 'This server offers no models to you. An API key may show more.');
      this.list.append(this.empty);
    } else {
      this.empty?.remove();
    }
  }

  buildCard(group, open) {
    const node = el('details', { className: 'group-card', open, dataset: { group: group.group_id } });
    const name = el('span', { className: 'group-name' });
    const baseBadge = el('span', { className: 'tier-badge' });
    const fast = el('span', { className: 'fast-mark', title: 'Shares the base of your current model: switching needs no base load' }, '⚡ fast switch');
    const summary = el('summary', {}, el('span', { className: 'group-title' }, name, baseBadge, fast));
    const description = el('p', { className: 'group-desc' });
    const meta = el('p', { className: 'group-meta' });
    const progress = el('div', { className: 'group-progress', hidden: true, attrs: { role: 'status' } });
    const preload = el('button', { type: 'button', className: 'small' }, 'Preload');
    const toHost = el('button', { type: 'button', className: 'small secondary' }, 'Unload to host');
    const toDisk = el('button', { type: 'button', className: 'small secondary' }, 'Unload to disk');
    const id = group.group_id;
    preload.addEventListener('click', () => this.admin({ type: 'preload_group', group_id: id }, 'Preload'));
    toHost.addEventListener('click', () => this.admin({ type: 'unload_group', group_id: id, to: 'host' }, 'Unload'));
    toDisk.addEventListener('click', () => this.admin({ type: 'unload_group', group_id: id, to: 'disk' }, 'Unload'));
    const adminRow = el('div', { className: 'group-admin', attrs: { 'aria-label': `Admin actions for ${group.group_name}`, role: 'group' } }, preload, toHost, toDisk);
    const models = el('div', { className: 'model-list', attrs: { role: 'radiogroup', 'aria-label': `Models of ${group.group_name}` } });
    node.append(summary, description, meta, progress, adminRow, models);
    return { node, name, baseBadge, fast, description, meta, progress, adminRow, models, rows: new Map() };
  }

  updateCard(card, g, currentId) {
    card.name.textContent = g.group_name;
    card.baseBadge.textContent = `base: ${g.base_tier}`;
    card.baseBadge.dataset.tier = g.base_tier;
    card.baseBadge.title = `This group's base (${formatBytes(g.base_bytes)}) is on ${g.base_tier}`;
    card.fast.hidden = !g.fast_switch;
    card.description.textContent = g.description || '';
    card.description.hidden = !g.description;
    const eta = g.base_tier === 'device' ? null : readyText(g.estimated_switch_ms);
    card.meta.textContent = [
      `${g.layers} layers`,
      `d_model ${g.d_model}`,
      g.compute_dtype,
      `base ${formatBytes(g.base_bytes)}`,
      eta ? `switch ${eta}` : null,
    ].filter(Boolean).join(' · ');
    card.adminRow.hidden = store.get('role') !== 'admin';
    this.updateProgress(card, store.get('switchStatus')[g.group_id]);

    const seen = new Set();
    g.models.forEach((m, i) => {
      seen.add(m.id);
      let row = card.rows.get(m.id);
      if (!row) {
        row = this.buildRow(m, g);
        card.rows.set(m.id, row);
      }
      this.updateRow(row, m, g, currentId);
      if (card.models.children[i] !== row.node) card.models.insertBefore(row.node, card.models.children[i] ?? null);
    });
    for (const [id, row] of card.rows) {
      if (!seen.has(id)) {
        row.node.remove();
        card.rows.delete(id);
      }
    }
  }

  updateProgress(card, s) {
    if (!s) {
      card.progress.hidden = true;
      return;
    }
    card.progress.hidden = false;
    const parts = [];
    if (s.status === 'loading' && s.bytes_total) {
      const bar = el('progress', { max: s.bytes_total, value: s.bytes_done ?? 0 });
      parts.push(bar, ` loading ${s.resource ?? ''} ${formatBytes(s.bytes_done ?? 0)} / ${formatBytes(s.bytes_total)}`);
    } else if (s.status === 'failed') {
      parts.push(el('span', { className: 'error-text' }, `Failed: ${s.message ?? 'unknown error'}`));
    } else {
      const words = { preloading: 'Preloading…', preloaded: 'Preloaded.', unloaded: 'Unloaded' };
      parts.push(`${words[s.status] ?? s.status}${s.status === 'unloaded' && s.message ? ` (${s.message}).` : ''}`);
    }
    setChildren(card.progress, parts);
  }

  buildRow(model, group) {
    const input = el('input', { type: 'radio', name: 'model', value: model.id });
    const name = el('span', { className: 'model-name' });
    const kind = el('span', { className: 'lens-kind' });
    const layer = el('span', { className: 'model-layer' });
    const desc = el('span', { className: 'model-desc' });
    const tier = el('span', { className: 'tier-badge' });
    const loading = el('span', { className: 'loading-mark', hidden: true }, el('span', { className: 'spinner', attrs: { 'aria-hidden': 'true' } }), 'loading');
    const fast = el('span', { className: 'fast-mark', title: 'Shares the base of your current model' }, '⚡');
    const ready = el('span', { className: 'ready' });
    const node = el(
      'label',
      { className: 'model-row', dataset: { model: model.id } },
      input,
      el('span', { className: 'model-main' }, el('span', { className: 'model-head' }, name, kind, layer), desc),
      el('span', { className: 'model-status' }, tier, loading, fast, ready),
    );
    input.addEventListener('change', () => {
      if (input.checked) {
        const found = store.findModel(model.id);
        if (found) this.choose(found.model, found.group);
      }
    });
    return { node, input, name, kind, layer, desc, tier, loading, fast, ready, group };
  }

  updateRow(row, m, g, currentId) {
    row.name.textContent = m.name;
    row.kind.textContent = m.lens;
    row.layer.textContent = m.layer !== null && m.layer !== undefined ? `L${m.layer}` : '';
    row.layer.hidden = m.layer === null || m.layer === undefined;
    row.desc.textContent = m.description || '';
    row.desc.hidden = !m.description;
    const r = m.residency;
    const tier = modelTier(r);
    row.tier.textContent = tier;
    row.tier.dataset.tier = tier;
    row.tier.title = tierTitle(r);
    row.loading.hidden = !r.loading;
    row.fast.hidden = !g.fast_switch;
    const ready = readyText(r.estimated_ready_ms);
    row.ready.textContent = ready ?? '';
    row.ready.hidden = !ready;
    row.ready.title = ready ? 'Time to bring this model to the device, from the server\'s measured load speeds' : '';
    row.input.checked = m.id === currentId;
    row.node.classList.toggle('current', m.id === currentId);
  }
}

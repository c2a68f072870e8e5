// The analyze form: the text (plain or chat turns), the lenses to read it with (one or several
// models of the current group, which share one base, so one forward pass serves them all),
// top-k and the layers for cell lenses (logit, tuned), and the talkative options (best of K,
// temperature, seed, salience, KL) shown when a talkative lens is ticked. Ctrl/Cmd+Enter
// submits. Errors the server gives for the message itself (no request was made) show under
// the button.

import { store } from './store.js';
import { TextOrChat } from './chat-turns.js';
import { el, setChildren } from './util.js';

/** What a number field holds, for a message: “0”, or why there is nothing to show. */
function given(input) {
  if (input.value.trim() !== '') return `not “${input.value}”`;
  return input.validity?.badInput ? 'and what is there is not a number' : 'and it is empty';
}

export class AnalyzeForm {
  constructor(form, { submit }) {
    this.form = form;
    this.onSubmit = submit;
    this.input = new TextOrChat(form.querySelector('.text-or-chat'), { placeholder: 'Message' });
    this.modelsBox = form.querySelector('#analyze-models');
    this.topK = form.querySelector('#analyze-topk');
    this.layers = form.querySelector('#analyze-layers');
    this.cellNote = form.querySelector('#cell-options-note');
    this.talkativeField = form.querySelector('#talkative-options');
    this.bestOfK = form.querySelector('#analyze-best-of-k');
    this.temperature = form.querySelector('#analyze-temperature');
    this.seed = form.querySelector('#analyze-seed');
    this.salience = form.querySelector('#analyze-salience');
    this.kl = form.querySelector('#analyze-kl');
    this.errorBox = form.querySelector('#analyze-error');
    this.group = null;
    /** model id → lens kind, for the current group. */
    this.kinds = new Map();
    this.modelsBox.addEventListener('change', () => this.updateOptions());
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.submit();
    });
    form.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        this.submit();
      }
    });
    store.on(['groups', 'currentModel'], () => this.renderModels());
    this.renderModels();
  }

  /** Checkboxes of the current group's models; the current model is ticked when the group changes. */
  renderModels() {
    const current = store.get('currentModel');
    const found = current ? store.findModel(current) : null;
    if (!found) {
      setChildren(this.modelsBox, el('span', { className: 'muted' }, 'Choose a model in the list of models first.'));
      this.group = null;
      this.kinds = new Map();
      this.updateOptions();
      return;
    }
    const checked = new Set(this.selected());
    const sameGroup = this.group === found.group.group_id;
    if (!sameGroup) {
      checked.clear();
      checked.add(current);
    }
    this.group = found.group.group_id;
    const boxes = found.group.models.map((m) =>
      el(
        'label',
        { className: 'check model-check' },
        el('input', { type: 'checkbox', value: m.id, checked: checked.has(m.id) }),
        el('span', {}, m.name, el('span', { className: 'lens-kind' }, m.lens)),
      ),
    );
    setChildren(this.modelsBox, el('span', { className: 'muted group-note' }, `Lenses of ${found.group.group_name}:`), boxes);
    this.kinds = new Map(found.group.models.map((m) => [m.id, m.lens]));
    this.updateOptions();
  }

  /** Which kinds of lens are ticked: {talkative, cells}. */
  tickedKinds(models = this.selected()) {
    const talkative = models.some((id) => this.kinds.get(id) === 'talkative');
    const cells = models.some((id) => this.kinds.get(id) !== 'talkative');
    return { talkative, cells };
  }

  /** Talkative options only with a talkative lens; top-k and layers off with only talkative ones. */
  updateOptions() {
    const { talkative, cells } = this.tickedKinds();
    this.talkativeField.hidden = !talkative;
    const noCells = talkative && !cells;
    this.topK.disabled = noCells;
    this.layers.disabled = noCells;
    this.cellNote.hidden = !noCells;
  }

  selected() {
    return [...this.modelsBox.querySelectorAll('input[type="checkbox"]:checked')].map((i) => i.value);
  }

  showError(message, errorType = null, field = null) {
    for (const input of this.form.querySelectorAll('[aria-invalid]')) input.removeAttribute('aria-invalid');
    // The server names an option it refuses (`options.best_of_k`): mark that field too.
    const named = !field && message ? /options\.(\w+)/.exec(message)?.[1] : null;
    const byName = { layers: this.layers, top_k: this.topK, best_of_k: this.bestOfK, temperature: this.temperature, seed: this.seed };
    field = field ?? byName[named] ?? null;
    if (field) field.setAttribute('aria-invalid', 'true');
    if (!message) {
      this.errorBox.hidden = true;
      this.errorBox.replaceChildren();
      return;
    }
    setChildren(this.errorBox, errorType ? el('strong', {}, `${errorType}: `) : null, message);
    this.errorBox.hidden = false;
  }

  /** Validates the form and hands the analysis to the app; returns the spec or null. */
  submit() {
    this.showError(null);
    const input = this.input.value();
    if (!input) {
      this.showError('Write a text to analyse first.');
      this.input.focus();
      return null;
    }
    const models = this.selected();
    if (models.length === 0) {
      this.showError('Tick at least one lens to read the text with.');
      return null;
    }
    const kinds = this.tickedKinds(models);
    const options = {};
    if (kinds.cells) {
      const topK = Number(this.topK.value);
      if (this.topK.value.trim() === '' || !Number.isInteger(topK) || topK < 1 || topK > 100) {
        return this.refuse(this.topK, `Top-k must be a whole number from 1 to 100, ${given(this.topK)}.`);
      }
      options.layers = this.layers.value.trim() || 'all';
      options.top_k = topK;
    }
    if (kinds.talkative) {
      const talkative = this.talkativeOptions();
      if (!talkative) return null;
      Object.assign(options, talkative);
    }
    const spec = { models, group_id: this.group, input, options };
    this.onSubmit(spec);
    return spec;
  }

  /** Shows a refusal under the form, marks and focuses the field; returns null. */
  refuse(field, message) {
    this.showError(message, null, field);
    field.focus();
    return null;
  }

  /** The talkative options, checked as the server checks them; null (and a message) if one is wrong. */
  talkativeOptions() {
    const k = Number(this.bestOfK.value);
    if (this.bestOfK.value.trim() === '' || !Number.isInteger(k) || k < 1 || k > 64) {
      return this.refuse(this.bestOfK, `Best of K must be a whole number from 1 to 64, ${given(this.bestOfK)}.`);
    }
    const t = Number(this.temperature.value);
    if (this.temperature.value.trim() === '' || !Number.isFinite(t) || t < 0 || t > 5) {
      return this.refuse(this.temperature, `Temperature must be a number from 0 to 5 (0 is greedy), ${given(this.temperature)}.`);
    }
    const seed = Number(this.seed.value);
    if (this.seed.value.trim() === '' || !Number.isSafeInteger(seed) || seed < 0) {
      return this.refuse(this.seed, `Seed must be a whole number from 0 to ${Number.MAX_SAFE_INTEGER}, ${given(this.seed)}.`);
    }
    return { best_of_k: k, temperature: t, seed, salience: this.salience.checked, kl: this.kl.checked };
  }

  /** Puts an input into the form (from "Send to analysis"). */
  fill(input) {
    if (input.messages || input.chat) {
      this.input.setMode('chat');
      this.input.setTurns(input.messages ?? [{ role: 'user', content: input.text }]);
    } else {
      this.input.setMode('plain');
      this.input.setText(input.text);
    }
  }
}

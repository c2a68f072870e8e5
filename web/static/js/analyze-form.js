// The analyze form: the text (plain or chat turns), the lenses to read it with (one or several
// models of the current group, which share one base, so one forward pass serves them all),
// top-k and the layers. Ctrl/Cmd+Enter submits. Errors the server gives for the message
// itself (no request was made) show under the button.

import { store } from './store.js';
import { TextOrChat } from './chat-turns.js';
import { el, setChildren } from './util.js';

export class AnalyzeForm {
  constructor(form, { submit }) {
    this.form = form;
    this.onSubmit = submit;
    this.input = new TextOrChat(form.querySelector('.text-or-chat'), { placeholder: 'Message' });
    this.modelsBox = form.querySelector('#analyze-models');
    this.topK = form.querySelector('#analyze-topk');
    this.layers = form.querySelector('#analyze-layers');
    this.errorBox = form.querySelector('#analyze-error');
    this.group = null;
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
  }

  selected() {
    return [...this.modelsBox.querySelectorAll('input[type="checkbox"]:checked')].map((i) => i.value);
  }

  showError(message, errorType = null) {
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
    const topK = Number(this.topK.value);
    if (!Number.isInteger(topK) || topK < 1 || topK > 100) {
      this.showError(`Top-k must be a whole number from 1 to 100, not “${this.topK.value}”.`);
      this.topK.focus();
      return null;
    }
    const layers = this.layers.value.trim() || 'all';
    const spec = { models, group_id: this.group, input, options: { layers, top_k: topK } };
    this.onSubmit(spec);
    return spec;
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

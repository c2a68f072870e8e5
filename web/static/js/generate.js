// Generation: the form (a prompt or chat turns, and the sampling settings) and the result tab
// that streams the reply token by token, with a stop button and "Send to analysis", which puts
// the conversation (the prompt and the reply) into the analyze form and runs it.

import { store } from './store.js';
import { TextOrChat } from './chat-turns.js';
import { RequestProgress } from './progress.js';
import { inputTitle } from './analysis-tab.js';
import { el, setChildren, uid } from './util.js';
import { toast } from './notify.js';

let counter = 0;

function numberField(input, { min, max, integer, optional, name }) {
  const raw = input.value.trim();
  if (raw === '') {
    if (optional) return { value: null };
    return { error: `${name} is required.` };
  }
  const v = Number(raw);
  if (!Number.isFinite(v) || (integer && !Number.isInteger(v)) || v < min || v > max) {
    return { error: `${name} must be ${integer ? 'a whole number' : 'a number'} from ${min} to ${max}, not “${raw}”.` };
  }
  return { value: v };
}

export class GenerateForm {
  constructor(form, { submit }) {
    this.form = form;
    this.onSubmit = submit;
    this.input = new TextOrChat(form.querySelector('.text-or-chat'), { placeholder: 'Message' });
    this.errorBox = form.querySelector('#generate-error');
    this.fields = {
      max_tokens: [form.querySelector('#gen-max-tokens'), { min: 1, max: 512, integer: true, name: 'Max tokens' }],
      temperature: [form.querySelector('#gen-temperature'), { min: 0, max: 5, name: 'Temperature' }],
      top_p: [form.querySelector('#gen-top-p'), { min: 0.001, max: 1, optional: true, name: 'Top-p' }],
      top_k: [form.querySelector('#gen-top-k'), { min: 1, max: 100000, integer: true, optional: true, name: 'Top-k' }],
      seed: [form.querySelector('#gen-seed'), { min: 0, max: Number.MAX_SAFE_INTEGER, integer: true, name: 'Seed' }],
    };
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
  }

  showError(message, errorType = null) {
    if (!message) {
      this.errorBox.hidden = true;
      return;
    }
    setChildren(this.errorBox, errorType ? el('strong', {}, `${errorType}: `) : null, message);
    this.errorBox.hidden = false;
  }

  submit() {
    this.showError(null);
    const input = this.input.value();
    if (!input) {
      this.showError('Write a prompt first.');
      this.input.focus();
      return;
    }
    const model = store.get('currentModel');
    if (!model) {
      this.showError('Choose a model in the list of models first.');
      return;
    }
    const settings = {};
    for (const [key, [node, rule]] of Object.entries(this.fields)) {
      const r = numberField(node, rule);
      if (r.error) {
        this.showError(r.error);
        node.focus();
        return;
      }
      if (r.value !== null) settings[key] = r.value;
    }
    this.onSubmit({ model, input, settings });
  }
}

/** The message for a generation spec. */
export function generateMessage(spec, clientTag) {
  const msg = { type: 'generate', model_id: spec.model, client_tag: clientTag, ...spec.settings };
  if (spec.input.messages) msg.messages = spec.input.messages;
  else {
    msg.prompt = spec.input.text;
    msg.chat = Boolean(spec.input.chat);
  }
  return msg;
}

export class GenerationTab {
  constructor(spec, app) {
    counter += 1;
    this.kind = 'generation';
    this.spec = spec;
    this.app = app;
    this.number = counter;
    this.requestId = null;
    this.clientTag = uid('g');
    this.title = `✎ ${inputTitle(spec.input)}`;
    this.tokens = [];
    this.output = null;
    this.progress = new RequestProgress('generation');
    this.panel = this.build();
    this.updateActions();
    this.root.dataset.status = this.status;
  }

  get status() {
    return this.progress.status;
  }

  build() {
    this.stopButton = el('button', { type: 'button', className: 'danger small' }, 'Stop');
    this.stopButton.addEventListener('click', () => this.stop());
    this.againButton = el('button', { type: 'button', className: 'small' }, 'Run again');
    this.againButton.addEventListener('click', () => this.app.runGenerationAgain(this.spec));
    this.sendButton = el('button', { type: 'button', className: 'small' }, 'Send to analysis');
    this.sendButton.addEventListener('click', () => this.app.sendToAnalysis(this.conversation()));
    this.jsonButton = el('button', { type: 'button', className: 'small secondary' }, 'Export JSONL');
    this.jsonButton.addEventListener('click', () => this.app.exportTabs([this]));
    const close = el('button', { type: 'button', className: 'small secondary' }, 'Close tab');
    close.addEventListener('click', () => this.app.close(this));
    this.reply = el('div', { className: 'gen-reply', attrs: { 'aria-live': 'polite', 'aria-label': 'Generated reply' } });
    const prompt = this.spec.input.messages
      ? el('ol', { className: 'turns-summary' }, this.spec.input.messages.map((m) => el('li', {}, el('span', { className: 'role' }, m.role), el('span', { className: 'turn-text' }, m.content))))
      : el('pre', { className: 'input-text' }, this.spec.input.text);
    const settings = Object.entries(this.spec.settings).map(([k, v]) => `${k} ${v}`).join(' · ');
    this.root = el(
      'div',
      { className: 'result generation-result' },
      el(
        'div',
        { className: 'result-head' },
        el('h3', {}, `Generation ${this.number}`, el('span', { className: 'muted' }, ` · ${this.app.names(this.spec.model)}`)),
        el('div', { className: 'actions' }, this.stopButton, this.againButton, this.sendButton, this.jsonButton, close),
      ),
      this.progress.node,
      el('div', { className: 'gen-prompt' }, el('div', { className: 'label' }, this.spec.input.chat || this.spec.input.messages ? 'Prompt (chat)' : 'Prompt (continued as plain text)'), prompt),
      el('div', { className: 'label' }, 'Reply'),
      this.reply,
      el('p', { className: 'muted small-print' }, settings),
    );
    return this.root;
  }

  /** Shows a generation read from a lensd export file. */
  loadImported(data) {
    this.requestId = data.request_id ?? null;
    this.tokens = Array.isArray(data.tokens) ? data.tokens : [];
    this.output = { text: data.reply, prompt: data.rendered_prompt ?? null, stop: data.stop ?? null };
    setChildren(this.reply, el('span', { className: 'gen-token' }, data.reply));
    this.progress.status = 'imported';
    this.progress.render();
    this.changed();
  }

  accepted(requestId) {
    this.requestId = requestId;
    this.root.dataset.requestId = requestId;
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

  handle(ev) {
    if (ev.type === 'token') {
      this.tokens.push({ id: ev.id, text: ev.text });
      this.reply.append(el('span', { className: 'gen-token', title: `token id ${ev.id}` }, ev.text));
    } else if (ev.type === 'completed' && ev.output) {
      this.output = ev.output;
      // The final text is the authority (tokens may merge into characters differently).
      if (typeof ev.output.text === 'string' && ev.output.text !== this.replyText()) {
        setChildren(this.reply, el('span', { className: 'gen-token' }, ev.output.text));
      }
    }
    this.progress.apply(ev);
    this.changed();
  }

  replyText() {
    return this.output?.text ?? this.tokens.map((t) => t.text).join('');
  }

  /** The prompt and the reply as an analysis input. */
  conversation() {
    const reply = this.replyText();
    const input = this.spec.input;
    if (input.messages || input.chat) {
      const turns = input.messages ?? [{ role: 'user', content: input.text }];
      return { turns: [...turns, { role: 'assistant', content: reply }], plain: `${turns.map((t) => t.content).join('\n\n')}\n\n${reply}` };
    }
    return { turns: null, plain: `${input.text}${reply}` };
  }

  changed() {
    this.root.dataset.status = this.status;
    this.updateActions();
    this.app.changed(this);
  }

  updateActions() {
    const active = this.progress.isActive();
    this.stopButton.hidden = !active || !this.requestId;
    this.againButton.hidden = active || this.status === 'completed' || this.status === 'imported';
    this.sendButton.hidden = active || this.replyText() === '';
  }

  stop() {
    if (!this.requestId) return;
    this.app.cancel(this.requestId).catch((e) => toast(`Stop: ${e.message}`, { kind: 'error' }));
  }

  toExport() {
    return {
      format: 'lensd.generation',
      version: 1,
      request_id: this.requestId,
      status: this.status,
      exported_at: new Date().toISOString(),
      model: this.spec.model,
      input: this.spec.input,
      settings: this.spec.settings,
      reply: this.replyText(),
      tokens: this.tokens,
      rendered_prompt: this.output?.prompt ?? null,
      stop: this.output?.stop ?? null,
    };
  }
}

// The input of a form: plain text, or chat turns (each a role and its content). Used by the
// analyze and the generate forms. A single user turn goes to the server as `text`/`prompt`
// with `chat: true`; several turns as `messages`, where the server offers it.

import { el, uid } from './util.js';

const ROLES = ['system', 'user', 'assistant'];

export class TextOrChat {
  /** `root` holds a mode radio group, a plain text area and a turns container (see index.html). */
  constructor(root, { placeholder }) {
    this.root = root;
    this.textArea = root.querySelector('textarea.plain');
    this.turnsBox = root.querySelector('.turns');
    this.addButton = root.querySelector('.add-turn');
    this.modeInputs = [...root.querySelectorAll('input[type="radio"][name$="-mode"]')];
    this.plainBox = root.querySelector('.plain-box');
    this.chatBox = root.querySelector('.chat-box');
    this.placeholder = placeholder;
    this.turns = [];
    for (const input of this.modeInputs) input.addEventListener('change', () => this.showMode());
    this.addButton.addEventListener('click', () => {
      const last = this.turns[this.turns.length - 1];
      const role = last && last.role.value === 'user' ? 'assistant' : 'user';
      this.addTurn(role, '').content.focus();
    });
    this.addTurn('user', '');
    this.showMode();
  }

  mode() {
    return this.modeInputs.find((i) => i.checked)?.value ?? 'plain';
  }

  setMode(mode) {
    for (const i of this.modeInputs) i.checked = i.value === mode;
    this.showMode();
  }

  showMode() {
    const chat = this.mode() === 'chat';
    this.plainBox.hidden = chat;
    this.chatBox.hidden = !chat;
  }

  addTurn(role, content) {
    const id = uid('turn');
    const roleSelect = el('select', { attrs: { 'aria-label': 'Role' } }, ROLES.map((r) => el('option', { value: r, selected: r === role }, r)));
    const area = el('textarea', { id, rows: 2, value: content, placeholder: this.placeholder, attrs: { 'aria-label': 'Message' } });
    const remove = el('button', { type: 'button', className: 'icon-button', attrs: { 'aria-label': 'Remove this turn' } }, '×');
    const node = el('div', { className: 'turn' }, roleSelect, area, remove);
    const turn = { node, role: roleSelect, content: area };
    remove.addEventListener('click', () => {
      if (this.turns.length === 1) {
        area.value = '';
        return;
      }
      this.turns.splice(this.turns.indexOf(turn), 1);
      node.remove();
      this.turns[this.turns.length - 1]?.content.focus();
    });
    this.turns.push(turn);
    this.turnsBox.append(node);
    return turn;
  }

  setTurns(turns) {
    for (const t of this.turns) t.node.remove();
    this.turns = [];
    for (const t of turns) this.addTurn(t.role, t.content);
    if (this.turns.length === 0) this.addTurn('user', '');
  }

  setText(text) {
    this.textArea.value = text;
  }

  /** The input as the page records it: {text, chat: false} or {messages}. Null when empty. */
  value() {
    if (this.mode() === 'plain') {
      const text = this.textArea.value;
      return text.trim() ? { text, chat: false } : null;
    }
    const messages = this.turns.map((t) => ({ role: t.role.value, content: t.content.value })).filter((m) => m.content.trim());
    if (messages.length === 0) return null;
    if (messages.length === 1 && messages[0].role === 'user') return { text: messages[0].content, chat: true };
    return { messages };
  }

  focus() {
    if (this.mode() === 'plain') this.textArea.focus();
    else this.turns[0]?.content.focus();
  }
}

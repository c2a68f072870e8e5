// The WebSocket to lensd: connects, reconnects with backoff, and matches replies to the
// messages that caused them. The server handles one connection's messages in order and
// answers each with its reply or an `error` frame without a request id, so the oldest message
// still waiting is the one an error or a reply belongs to. Messages that have no reply of
// their own on success (`cancel_request`, `interrupt`) are followed by a `status` message,
// whose `queue_update` answer marks them as handled.

/** What the server answers each message with when it succeeds (`null`: nothing). */
const REPLY = {
  auth: 'connection_established',
  list_model_groups: 'model_groups_list',
  switch_model: 'model_switched',
  switch_model_grouped: 'model_switched',
  preload_group: 'group_switch_status',
  unload_group: 'group_switch_status',
  get_model_info: 'model_info',
  analyze: 'accepted',
  generate: 'accepted',
  status: 'queue_update',
  cancel_request: null,
  interrupt: null,
};

/** `group_switch_status` frames that answer a message; the others come later, from a task. */
const SWITCH_REPLY = { preload_group: 'preloading', unload_group: 'unloaded' };

export class ServerError extends Error {
  constructor(errorType, message) {
    super(message);
    this.errorType = errorType;
  }
}

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 4000;

/**
 * Events (all `CustomEvent`s with `detail`):
 * - `state`: {state, retryAt} where state is connecting, connected, reconnecting or disconnected;
 * - `open`: the first frame (`connection_established`) of a new connection arrived;
 * - `closed`: a connection that was open went away;
 * - `message`: every frame that is not a request event;
 * - `event`: request events (frames with a `request_id`).
 */
export class Connection extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.socket = null;
    this.pending = [];
    this.state = 'connecting';
    this.retryAt = null;
    this.attempt = 0;
    this.timer = null;
    this.wasOpen = false;
    window.addEventListener('online', () => this.reconnectNow());
    window.addEventListener('offline', () => {
      if (this.state !== 'connected') this.setState('disconnected', null);
    });
  }

  start() {
    this.open();
  }

  isOpen() {
    return this.state === 'connected';
  }

  setState(state, retryAt) {
    this.state = state;
    this.retryAt = retryAt;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, retryAt } }));
  }

  open() {
    clearTimeout(this.timer);
    this.timer = null;
    this.setState(this.wasOpen ? 'reconnecting' : 'connecting', null);
    let socket;
    try {
      socket = new WebSocket(this.url);
    } catch {
      this.scheduleRetry();
      return;
    }
    this.socket = socket;
    let established = false;
    socket.addEventListener('message', (e) => {
      let frame;
      try {
        frame = JSON.parse(e.data);
      } catch {
        return;
      }
      if (!established && frame.type === 'connection_established') {
        established = true;
        this.attempt = 0;
        this.wasOpen = true;
        this.setState('connected', null);
        this.dispatchEvent(new CustomEvent('open', { detail: frame }));
      }
      this.receive(frame);
    });
    socket.addEventListener('close', () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.failPending();
      if (established) this.dispatchEvent(new CustomEvent('closed'));
      this.scheduleRetry();
    });
  }

  scheduleRetry() {
    if (navigator.onLine === false) {
      this.setState('disconnected', null);
      return;
    }
    const base = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** this.attempt);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.attempt += 1;
    this.setState(this.wasOpen ? 'reconnecting' : 'disconnected', Date.now() + delay);
    this.timer = setTimeout(() => this.open(), delay);
  }

  /** Tries at once instead of waiting for the next retry. */
  reconnectNow() {
    if (this.state === 'connected' || (this.socket && this.socket.readyState === WebSocket.CONNECTING)) return;
    this.attempt = 0;
    this.open();
  }

  /** Closes the connection and opens a new one at once (a new session on the server). */
  restart() {
    const socket = this.socket;
    this.socket = null;
    this.failPending();
    if (socket) {
      socket.close();
      if (this.state === 'connected') this.dispatchEvent(new CustomEvent('closed'));
    }
    this.attempt = 0;
    this.open();
  }

  failPending() {
    const pending = this.pending;
    this.pending = [];
    for (const p of pending) {
      p.reject(new ServerError('disconnected', 'the connection to the server was lost before it answered'));
    }
  }

  receive(frame) {
    // Request events carry their request's id; so does `accepted`, the reply to a submission.
    if (frame.request_id && frame.type !== 'accepted') {
      this.dispatchEvent(new CustomEvent('event', { detail: frame }));
      return;
    }
    if (frame.type === 'error') {
      const p = this.pending.shift();
      if (p) {
        p.reject(new ServerError(frame.error_type, frame.message));
        return;
      }
    } else {
      this.settle(frame);
    }
    this.dispatchEvent(new CustomEvent('message', { detail: frame }));
  }

  /** Resolves the messages that `frame` answers, oldest first. */
  settle(frame) {
    const i = this.pending.findIndex((p) => p.expect !== null);
    if (i < 0) return;
    const p = this.pending[i];
    if (p.expect !== frame.type || (p.status && p.status !== frame.status)) return;
    // Messages before it that have no reply were handled without an error.
    for (const done of this.pending.splice(0, i + 1)) done.resolve(done === p ? frame : null);
  }

  /**
   * Sends a message; resolves with its reply (or null for messages without one), rejects with
   * a ServerError when the server refuses it or the connection is lost first.
   */
  send(message) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN || this.state !== 'connected') {
      return Promise.reject(new ServerError('disconnected', 'not connected to the server; wait until it reconnects'));
    }
    const expect = REPLY[message.type];
    const promise = new Promise((resolve, reject) => {
      this.pending.push({ expect: expect ?? null, status: SWITCH_REPLY[message.type], resolve, reject });
    });
    this.socket.send(JSON.stringify(message));
    if (expect === null) {
      // A fence: its answer proves the message before it was handled without an error.
      this.pending.push({ expect: 'queue_update', resolve() {}, reject() {} });
      this.socket.send(JSON.stringify({ type: 'status' }));
    }
    return promise;
  }
}

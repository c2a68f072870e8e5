// The page's shared state: what the server told us about this connection and its models.
// One object, changed only through `set`, which tells the views that subscribed to a key.
// Results live in their tabs, not here.

class Store {
  constructor(initial) {
    this.state = { ...initial };
    this.listeners = new Map();
  }

  get(key) {
    return this.state[key];
  }

  /** Applies `patch` and calls the listeners of every key it changed. */
  set(patch) {
    const changed = Object.keys(patch).filter((k) => this.state[k] !== patch[k]);
    Object.assign(this.state, patch);
    const called = new Set();
    for (const key of changed) {
      for (const fn of this.listeners.get(key) ?? []) {
        if (called.has(fn)) continue;
        called.add(fn);
        fn(this.state);
      }
    }
  }

  /** Calls `fn(state)` whenever one of `keys` changes; returns a function that unsubscribes. */
  on(keys, fn) {
    for (const key of keys) {
      if (!this.listeners.has(key)) this.listeners.set(key, new Set());
      this.listeners.get(key).add(fn);
    }
    return () => keys.forEach((k) => this.listeners.get(k)?.delete(fn));
  }

  /** The group and model entries of a model id, from the last list. */
  findModel(id) {
    for (const g of this.state.groups) {
      const m = g.models.find((x) => x.id === id);
      if (m) return { group: g, model: m };
    }
    return null;
  }

  group(id) {
    return this.state.groups.find((g) => g.group_id === id) ?? null;
  }
}

export const store = new Store({
  /** connecting, connected, reconnecting or disconnected. */
  connection: 'connecting',
  retryAt: null,
  session: null,
  role: 'anonymous',
  limits: null,
  /** The groups of the last `model_groups_list`, as the server sent them. */
  groups: [],
  groupsLoaded: false,
  /** This connection's current model, as the server confirmed it. */
  currentModel: null,
  /** Progress of preloads and unloads per group: {status, resource, bytes_done, bytes_total, message}. */
  switchStatus: {},
});

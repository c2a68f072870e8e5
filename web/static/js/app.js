// The page's entry point: opens the connection, keeps the store in step with what the server
// says, routes each request's events to its tab, and wires the forms, the result tabs, import
// and export, the API key and the connection indicator.

import { Connection } from './connection.js';
import { store } from './store.js';
import { Switcher } from './switcher.js';
import { AnalyzeForm } from './analyze-form.js';
import { GenerateForm, GenerationTab, generateMessage } from './generate.js';
import { AnalysisTab } from './analysis-tab.js';
import { ExplanationTab } from './explain-tab.js';
import { Tabs, staticTabs } from './tabs.js';
import { parseImport, toJsonl } from './io.js';
import { toast, banner } from './notify.js';
import { coalesce, download, stamp, el, setChildren } from './util.js';

const KEY_STORAGE = 'lensd.apiKey';
const MODEL_STORAGE = 'lensd.model';

const $ = (id) => document.getElementById(id);
const wsUrl = `${window.location.protocol === 'https:' ? 'wss' : 'ws'}://${window.location.host}/ws`;
const conn = new Connection(wsUrl);

/** request id → the tab showing it. */
const requests = new Map();
/** tab entry → the tab, for "export all". */
const tabOf = new Map();

const tabs = new Tabs($('result-tabs'), $('result-panels'), $('results-empty'));

const refreshGroups = coalesce(() => {
  if (conn.isOpen()) conn.send({ type: 'list_model_groups' }).catch(() => {});
}, 150);

/** What the tabs may ask of the page. */
const app = {
  names(id) {
    return store.findModel(id)?.model.name ?? id;
  },
  /** A model's lens kind (logit, tuned, talkative), where the model list has it. */
  kind(id) {
    return store.findModel(id)?.model.lens ?? null;
  },
  cancel(requestId) {
    return conn.send({ type: 'cancel_request', request_id: requestId });
  },
  runAgain(spec) {
    startAnalysis(spec);
  },
  runGenerationAgain(spec) {
    startGeneration(spec);
  },
  close(tab) {
    tabs.close(tab.entry);
  },
  changed(tab) {
    if (tab.entry) {
      tab.entry.status = tab.status;
      tabs.update(tab.entry);
    }
  },
  exportTabs(list) {
    exportTabs(list);
  },
  sendToAnalysis({ turns, plain }) {
    const input = turns ? { messages: turns } : { text: plain, chat: false };
    analyzeForm.fill(input);
    inputTabs.select('analyze');
    analyzeForm.submit();
  },
};

function addTab(tab, select = true) {
  const entry = {
    title: tab.title,
    status: tab.status,
    panel: tab.panel,
    onClose() {
      if (tab.requestId && tab.progress?.isActive() && conn.isOpen()) app.cancel(tab.requestId).catch(() => {});
      if (tab.requestId) requests.delete(tab.requestId);
      tabOf.delete(entry);
    },
  };
  tab.entry = entry;
  tabOf.set(entry, tab);
  tabs.add(entry, { select });
  return tab;
}

/** Sends a tab's message; the tab shows the reply, or the refusal. */
async function submit(tab, message, form) {
  try {
    const reply = await conn.send(message);
    requests.set(reply.request_id, tab);
    tab.accepted(reply.request_id);
  } catch (e) {
    if (e.errorType === 'disconnected') {
      tab.interrupted();
      return;
    }
    tab.rejected(e);
    form.showError(e.message, e.errorType);
  }
}

/** Brings the results into view when a new result would open out of sight. */
function revealResults() {
  const list = $('result-tabs');
  const r = list.getBoundingClientRect();
  if (r.top > window.innerHeight - 120 || r.bottom < 0) list.scrollIntoView({ block: 'start' });
}

function startAnalysis(spec) {
  const tab = addTab(new AnalysisTab(spec, app));
  revealResults();
  const message = { type: 'analyze', models: spec.models, options: spec.options, client_tag: tab.clientTag };
  if (spec.input.messages) message.messages = spec.input.messages;
  else {
    message.text = spec.input.text;
    if (spec.input.chat) message.chat = true;
  }
  submit(tab, message, analyzeForm);
}

function startGeneration(spec) {
  const tab = addTab(new GenerationTab(spec, app));
  revealResults();
  submit(tab, generateMessage(spec, tab.clientTag), generateForm);
}

function exportTabs(list) {
  const objects = list.map((t) => t.toExport());
  if (objects.length === 0) {
    toast('There is nothing to export yet.');
    return;
  }
  const name = list.length === 1
    ? `lensd-${list[0].kind}-${list[0].requestId ?? list[0].number ?? 'import'}-${stamp()}.jsonl`
    : `lensd-results-${list.length}-${stamp()}.jsonl`;
  download(new Blob([toJsonl(objects)], { type: 'application/x-ndjson' }), name);
}

// Server messages --------------------------------------------------------------------------

conn.addEventListener('message', ({ detail: m }) => {
  switch (m.type) {
    case 'connection_established':
      store.set({ role: m.role, session: m.session, limits: m.limits });
      break;
    case 'model_groups_list':
      store.set({ groups: m.groups, groupsLoaded: true, ...(m.current_model ? { currentModel: m.current_model } : {}) });
      break;
    case 'model_switched':
      store.set({ currentModel: m.model_id });
      localStorage.setItem(MODEL_STORAGE, m.model_id);
      // fast_switch is relative to the current model.
      refreshGroups();
      break;
    case 'group_switch_status': {
      const all = { ...store.get('switchStatus'), [m.group_id]: m };
      store.set({ switchStatus: all });
      refreshGroups();
      break;
    }
    case 'residency_changed':
      refreshGroups();
      break;
    case 'server_shutdown':
      banner(`The server is shutting down: running work may finish within ${m.grace_seconds} s, then it stops. The page reconnects when it is back.`);
      break;
    case 'error':
      // An error that no message of ours is waiting for.
      toast(m.message, { kind: 'error', title: m.error_type });
      break;
    default:
      break;
  }
});

conn.addEventListener('event', ({ detail: ev }) => {
  const tab = requests.get(ev.request_id);
  if (!tab) return;
  tab.handle(ev);
  if (ev.type === 'completed' || ev.type === 'error' || ev.type === 'cancelled') requests.delete(ev.request_id);
});

conn.addEventListener('closed', () => {
  // The server cancels the work of a closed connection.
  for (const tab of requests.values()) tab.interrupted();
  requests.clear();
});

conn.addEventListener('open', () => {
  banner(null);
  bootstrap();
});

/** After each (re)connection: the key, the model list, and this tab's current model again. */
async function bootstrap() {
  const key = localStorage.getItem(KEY_STORAGE);
  if (key) {
    try {
      await conn.send({ type: 'auth', key });
      showKeyStatus(null);
    } catch (e) {
      showKeyStatus(`The saved key was refused: ${e.message}`);
    }
  }
  let list;
  try {
    list = await conn.send({ type: 'list_model_groups' });
  } catch {
    return;
  }
  const all = list.groups.flatMap((g) => g.models.map((m) => ({ m, g })));
  const wanted = store.get('currentModel') ?? localStorage.getItem(MODEL_STORAGE);
  const pick = all.find((x) => x.m.id === wanted) ?? all[0];
  if (!pick) return;
  try {
    await conn.send({ type: 'switch_model_grouped', model_id: pick.m.id, group_id: pick.g.group_id });
  } catch (e) {
    toast(`Could not choose ${pick.m.name}: ${e.message}`, { kind: 'error' });
  }
}

// Connection indicator ---------------------------------------------------------------------

const pill = $('conn-state');
const pillText = $('conn-text');
const retryButton = $('conn-retry');
let countdown = null;

function showConnection() {
  const state = store.get('connection');
  const retryAt = store.get('retryAt');
  pill.dataset.state = state;
  document.body.dataset.connection = state;
  clearInterval(countdown);
  const render = () => {
    const secs = retryAt ? Math.max(0, Math.ceil((retryAt - Date.now()) / 1000)) : null;
    const words = {
      connecting: 'Connecting…',
      connected: 'Connected',
      reconnecting: secs !== null ? `Reconnecting in ${secs} s` : 'Reconnecting…',
      disconnected: secs !== null ? `Disconnected · retrying in ${secs} s` : 'Disconnected',
    };
    pillText.textContent = words[state];
  };
  render();
  if (retryAt) countdown = setInterval(render, 250);
  retryButton.hidden = state === 'connected' || state === 'connecting';
}

conn.addEventListener('state', ({ detail }) => store.set({ connection: detail.state, retryAt: detail.retryAt }));
store.on(['connection', 'retryAt'], showConnection);
retryButton.addEventListener('click', () => conn.reconnectNow());

// API key ----------------------------------------------------------------------------------

const keyForm = $('key-form');
const keyInput = $('api-key');
const roleBadge = $('role');

function showKeyStatus(message) {
  const node = $('key-status');
  node.textContent = message ?? '';
  node.hidden = !message;
}

store.on(['role'], () => {
  const role = store.get('role');
  roleBadge.textContent = role;
  roleBadge.dataset.role = role;
  document.body.dataset.role = role;
});

keyInput.value = localStorage.getItem(KEY_STORAGE) ?? '';
keyForm.addEventListener('submit', async (e) => {
  e.preventDefault();
  const key = keyInput.value.trim();
  if (!key) {
    showKeyStatus('Enter a key first.');
    return;
  }
  try {
    await conn.send({ type: 'auth', key });
    localStorage.setItem(KEY_STORAGE, key);
    showKeyStatus(null);
    toast(`Signed in as ${store.get('role')}.`);
    refreshGroups();
  } catch (err) {
    showKeyStatus(`${err.errorType === 'unauthorized' ? 'Key refused' : 'Could not use the key'}: ${err.message}`);
  }
});
$('key-forget').addEventListener('click', () => {
  localStorage.removeItem(KEY_STORAGE);
  keyInput.value = '';
  showKeyStatus(null);
  if (store.get('role') === 'anonymous') return;
  if (requests.size > 0) {
    toast('The key is forgotten; the server keeps your role until this connection closes. Your running requests are not interrupted.');
    return;
  }
  // A new connection starts anonymous.
  conn.restart();
});

// Forms, tabs, import ----------------------------------------------------------------------

new Switcher($('switcher'), {
  conn,
  onError: (message, type) => toast(message, { kind: 'error', title: type }),
});
const analyzeForm = new AnalyzeForm($('analyze-form'), { submit: startAnalysis });
const generateForm = new GenerateForm($('generate-form'), { submit: startGeneration });
const inputTabs = staticTabs($('input-tabs'));

$('export-all').addEventListener('click', () => exportTabs(tabs.entries.map((e) => tabOf.get(e)).filter(Boolean)));

const importStatus = $('import-status');
$('import-file').addEventListener('change', async (e) => {
  const file = e.target.files?.[0];
  e.target.value = '';
  if (!file) return;
  importStatus.hidden = true;
  let items;
  try {
    items = parseImport(await file.text());
  } catch (err) {
    setChildren(importStatus, el('strong', {}, `Could not import ${file.name}: `), err.message);
    importStatus.hidden = false;
    importStatus.className = 'form-error';
    return;
  }
  let first = true;
  for (const item of items) {
    if (item.kind === 'analysis') {
      const d = item.data;
      const spec = { models: d.models, group_id: null, input: d.input, options: d.options };
      addTab(new AnalysisTab(spec, app, { imported: d }), first);
    } else if (item.kind === 'generation') {
      const d = item.data;
      const tab = new GenerationTab({ model: d.model ?? '', input: d.input, settings: d.settings ?? {} }, app);
      addTab(tab, first);
      tab.loadImported(d);
    } else {
      addTab(new ExplanationTab({ rows: item.rows, metadata: item.metadata, title: item.title, source: file.name }, app), first);
    }
    first = false;
  }
  importStatus.className = 'form-note';
  importStatus.textContent = `Imported ${items.length} ${items.length === 1 ? 'result' : 'results'} from ${file.name}.`;
  importStatus.hidden = false;
});


showConnection();
conn.start();

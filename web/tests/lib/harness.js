// What every browser test needs: a `lensd serve` of its own (fresh data folder, a keys file
// with an admin key, a free port), Debian's Chromium through playwright-core, the server's
// REST API for independent answers, and screenshots in the artifacts folder.

import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, mkdirSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { once } from 'node:events';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, '..', '..', '..');
export const LENSD = process.env.LENSD_BIN ? resolve(process.env.LENSD_BIN) : join(REPO, 'target', 'release', 'lensd');
export const ARTIFACTS = process.env.LENSD_WEB_ARTIFACTS ? resolve(process.env.LENSD_WEB_ARTIFACTS) : join(REPO, 'web', 'tests', 'artifacts');
export const ADMIN_KEY = 'admin-key-0123456789abcdef';
export const MODEL_FILE = join(REPO, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');
export const TUNED_LENS = join(REPO, 'models', 'lenses', 'smollm2-135m-tuned');

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--disable-dev-shm-usage',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

/** A temp folder removed when the process ends. */
export function tempDir(prefix) {
  const dir = mkdtempSync(join(tmpdir(), `lensd-web-${prefix}-`));
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * Starts `lensd serve` from the repository root and resolves once it listens. `addr` defaults
 * to a free port; `data` to a fresh folder. Set LENSD_WEB_DIR to serve the page from a folder
 * (while working on it); the suite proper runs the page built into the binary.
 */
export async function startServer({ config = null, addr = '127.0.0.1:0', data = null, args = [] } = {}) {
  if (!existsSync(LENSD)) throw new Error(`no lensd binary at ${LENSD}: run cargo build --release -p lensd, or set LENSD_BIN`);
  const dir = tempDir('server');
  const keys = join(dir, 'keys.json');
  writeFileSync(keys, JSON.stringify({ keys: [{ key: ADMIN_KEY, role: 'admin', name: 'ops' }] }));
  const dataDir = data ?? join(dir, 'data');
  const argv = ['serve', '--addr', addr, '--data', dataDir, '--keys', keys, '--shutdown-grace', '2', ...args];
  if (config) argv.push('--config', config);
  // Relative to the repository root: scripts/test-web.sh runs node from web/tests.
  if (process.env.LENSD_WEB_DIR) argv.push('--web-dir', resolve(REPO, process.env.LENSD_WEB_DIR));
  const proc = spawn(LENSD, argv, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' } });
  let log = '';
  proc.stderr.on('data', (d) => {
    log = (log + d).slice(-20000);
  });
  const url = await new Promise((ok, fail) => {
    let out = '';
    const onData = (d) => {
      out += d;
      const m = out.match(/lensd listening on (http:\/\/\S+)/);
      if (m) {
        proc.stdout.off('data', onData);
        ok(m[1]);
      }
    };
    proc.stdout.on('data', onData);
    proc.once('exit', (code) => fail(new Error(`lensd exited (${code}) before listening:\n${log}`)));
  });
  const port = Number(new URL(url).port);
  const server = {
    url,
    port,
    proc,
    dataDir,
    log: () => log,
    /** SIGTERM (a graceful shutdown) or SIGKILL; resolves when the process is gone. */
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const gone = once(proc, 'exit');
      proc.kill(signal);
      await gone;
    },
  };
  process.on('exit', () => proc.kill('SIGKILL'));
  return server;
}

export async function launchBrowser() {
  return chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: CHROMIUM_ARGS });
}

/** A page at a viewport size; page errors fail the test that reads `errors`. */
export async function openPage(browser, url, { width = 1280, height = 800, colorScheme = 'light', acceptDownloads = true } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, colorScheme, acceptDownloads });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  await page.goto(url);
  await page.locator('#conn-state[data-state="connected"]').waitFor();
  return { context, page, errors };
}

/** Saves a screenshot of the viewport, after scrolling `target` (a locator) into view. */
export async function screenshot(page, name, target = null, block = 'start') {
  mkdirSync(ARTIFACTS, { recursive: true });
  if (target) await target.evaluate((el, b) => el.scrollIntoView({ block: b }), block);
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`) });
}

/** Waits until the model list shows and this connection has a current model. */
export async function modelsReady(page) {
  await page.locator('.model-row input:checked').waitFor({ state: 'attached' });
}

/** Chooses a model in the switcher and waits until the server confirmed it. */
export async function chooseModel(page, modelId) {
  await page.locator(`.group-card:has(.model-row[data-model="${modelId}"]) > summary`).evaluate((s) => {
    if (!s.parentElement.open) s.click();
  });
  await page.locator(`.model-row[data-model="${modelId}"]`).click();
  await page.locator(`.model-row.current[data-model="${modelId}"]`).waitFor();
}

/** Sets the lenses ticked in the analyze form. */
export async function tickLenses(page, modelIds) {
  for (const box of await page.locator('#analyze-models input[type="checkbox"]').all()) {
    const want = modelIds.includes(await box.getAttribute('value'));
    if ((await box.isChecked()) !== want) await box.setChecked(want);
  }
}

/** The selected result panel's root (an analysis, generation or explanation result). */
export function currentResult(page) {
  return page.locator('#result-panels > .tab-panel:not([hidden]) .result');
}

/** Fetches from the server's REST API with the admin key. */
export async function api(server, path, { method = 'GET', body = undefined } = {}) {
  const res = await fetch(`${server.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_KEY}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = null;
  }
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return json;
}

/**
 * Reads a request's server-sent events until its terminal one and returns that event, so
 * that nothing polls on a timer.
 */
export async function terminalEvent(server, requestId) {
  const res = await fetch(`${server.url}/api/v2/requests/${requestId}/events`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  if (!res.ok) throw new Error(`events of ${requestId}: ${res.status}`);
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of res.body) {
    buffer += decoder.decode(chunk, { stream: true });
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
      if (!data) continue;
      const ev = JSON.parse(data);
      if (ev.type === 'completed' || ev.type === 'error' || ev.type === 'cancelled') return ev;
    }
  }
  throw new Error(`the events of ${requestId} ended without a terminal event`);
}

/** Runs an analysis over REST and returns its completed output. */
export async function analyzeOverRest(server, body) {
  const accepted = await api(server, '/api/v2/analyze', { method: 'POST', body });
  const ev = await terminalEvent(server, accepted.request_id);
  if (ev.type !== 'completed') throw new Error(`the REST analysis ended with ${JSON.stringify(ev)}`);
  const view = await api(server, `/api/v2/requests/${accepted.request_id}`);
  return { requestId: accepted.request_id, output: view.result };
}

/** The page's way of showing whitespace in tokens (see web/static/js/util.js). */
export function visibleToken(text) {
  if (text === '') return '∅';
  return text.replace(/ /g, '␣').replace(/\n/g, '↵').replace(/\t/g, '→').replace(/\r/g, '␍');
}

/**
 * Resolves after the page's next animation frame: views that redraw on the next frame (the
 * heatmap, the explanation views) have drawn what they had when this was called.
 */
export async function nextFrame(page) {
  await page.evaluate(() => new Promise((done) => requestAnimationFrame(() => done())));
}

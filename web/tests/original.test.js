// A page that speaks only the original site's WebSocket dialect (fixtures/original-client.html,
// opened from file:// with ?server=ws://…) against `lensd serve` on the embedded default
// configuration: its first message makes the connection the original's; the grouped switcher
// shows the groups with the session's current model; a switch within a group stays local and
// one between groups waits for model_switch_complete; a talkative analysis comes back as one
// row per token, equal to the server's own record; a generation gives three continuations;
// a refused generation and a refused analysis show their errors on their requests; requests
// queued behind a long one show their positions, a queued one is cancelled and the running one
// interrupted. With LENSD_ORIGINAL_FRONTEND set, the original site's own page as well (below).

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { startServer, launchBrowser, openPage, screenshot, api } from './lib/harness.js';

const FIXTURE = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'original-client.html');
const TALKATIVE = 'smollm2-talkative-untrained';
const DEFAULT_GROUP = 'smollm2-135m';
const OTHER_GROUP = 'smollm2-135m-compare';
const LONG_TEXT =
  'The old lighthouse keeper climbed the narrow stairs every evening, lit the great lamp, and ' +
  'watched the ships pass safely through the dark and stormy waters of the northern bay.';

let server;
let browser;

before(async () => {
  browser = await launchBrowser();
  server = await startServer();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Opens the fixture page against the server and waits for its switcher to be filled. */
async function openClient() {
  const url = pathToFileURL(FIXTURE);
  url.searchParams.set('server', `ws://127.0.0.1:${server.port}`);
  const opened = await openPage(browser, url.href);
  await opened.page.locator('#switcher input[type="radio"]:checked').waitFor({ state: 'attached' });
  return opened;
}

/** Picks a model in the switcher (a click on its label). */
async function pick(page, modelId) {
  await page.locator(`#switcher label.model[data-model="${modelId}"]`).click();
}

/** Fills and submits the analyze form. */
async function analyze(page, { text, bestOfK = 1, batch = 8, kl = true }) {
  await page.locator('#analyze-text').fill(text);
  await page.locator('#analyze-best-of-k').fill(String(bestOfK));
  await page.locator('#analyze-batch').fill(String(batch));
  await page.locator('#analyze-kl').setChecked(kl);
  await page.locator('#analyze-submit').click();
}

/** The page's list item of its `n`th request (0 is the first sent). */
function request(page, n) {
  return page.locator('#requests li.request').nth(n);
}

/** `item` once it is in state `s`. */
function inState(item, s) {
  return item.and(item.page().locator(`[data-state="${s}"]`));
}

/** A model's tag in the switcher ("GPU", "Cached", "Current"). */
function tag(page, modelId, text) {
  return page.locator(`#switcher label.model[data-model="${modelId}"] .tag`, { hasText: new RegExp(`^${text}$`) });
}

/** The tag the server's REST view of a model asks for: "GPU" when its base and lens are on the
 * device, "Cached" when some of it is nearer than the disk, else none. */
function residencyTag(m) {
  const { base_tier: base, lens_tier: lens } = m.residency;
  if (base === 'device' && (lens === null || lens === 'device')) return 'GPU';
  if (base !== 'disk' || (lens !== null && lens !== 'disk')) return 'Cached';
  return null;
}

describe('a page speaking the original dialect', () => {
  test('connects, lists the groups with the current model, switches within and between groups', { timeout: 60_000 }, async () => {
    const { page, context, errors } = await openClient();
    // The default group is preloaded to the device at start; the server tells the page its
    // groups again as the lenses arrive, until every model of the group says "GPU".
    const preloaded = (await api(server, `/api/v2/groups/${DEFAULT_GROUP}`)).models.map((m) => m.id);
    for (const id of preloaded) await tag(page, id, 'GPU').waitFor({ timeout: 60_000 });
    const { groups } = await api(server, '/api/v2/groups');

    // Every group and model, in the server's order; the default group's first model is current.
    const shown = await page.locator('#switcher fieldset.group').evaluateAll((sets) =>
      sets.map((s) => ({ id: s.dataset.group, models: [...s.querySelectorAll('label.model')].map((l) => l.dataset.model) })));
    assert.deepEqual(shown, groups.map((g) => ({ id: g.group_id, models: g.models.map((m) => m.id) })));
    assert.deepEqual(await page.locator('#switcher fieldset[data-current="true"]').evaluateAll((s) => s.map((x) => x.dataset.group)), [DEFAULT_GROUP]);
    const first = preloaded[0];
    assert.equal(await page.locator('#switcher input:checked').getAttribute('value'), first);
    assert.deepEqual(await page.locator('#switcher label.model:has(.tag-current)').evaluateAll((ls) => ls.map((l) => l.dataset.model)), [first]);
    await page.locator(`#model-info[data-model="${first}"]`).waitFor();
    // "GPU" and "Cached" as the server's residency says (tags only appear while the server
    // starts, so one the server has is waited for, one it lacks must be absent).
    for (const g of groups) {
      for (const m of g.models) {
        for (const t of ['GPU', 'Cached']) {
          if (residencyTag(m) === t) await tag(page, m.id, t).waitFor();
          else assert.equal(await tag(page, m.id, t).count(), 0, `${m.id} has no ${t} tag: ${JSON.stringify(m.residency)}`);
        }
      }
    }

    // Within the group: selected here, its info asked for, no switch sent.
    await pick(page, TALKATIVE);
    await page.locator(`#model-info[data-model="${TALKATIVE}"]`).waitFor();
    assert.match(await page.locator('#model-info .info-lens').textContent(), /talkative at layer 15/);
    assert.equal(await page.locator('#switcher input:checked').getAttribute('value'), TALKATIVE);
    assert.equal(await page.locator('#analyze-model').getAttribute('data-model'), TALKATIVE);
    assert.equal(await page.locator('#switch-status').getAttribute('data-state'), 'idle');
    // The server's session did not change: "Current" stays where it was.
    assert.deepEqual(await page.locator('#switcher label.model:has(.tag-current)').evaluateAll((ls) => ls.map((l) => l.dataset.model)), [first]);

    // Between groups: switch_model_grouped, then model_switch_complete and the groups again.
    const other = groups.find((g) => g.group_id === OTHER_GROUP).models[0].id;
    await pick(page, other);
    await page.locator('#switch-status[data-state="completed"]').waitFor();
    assert.equal(await page.locator('#switch-status').getAttribute('data-stages'), 'starting completed');
    await page.locator(`#switcher fieldset[data-group="${OTHER_GROUP}"][data-current="true"]`).waitFor();
    await page.locator(`#switcher label.model[data-model="${other}"] .tag-current`).waitFor();
    assert.deepEqual(await page.locator('#switcher label.model:has(.tag-current)').evaluateAll((ls) => ls.map((l) => l.dataset.model)), [other]);
    assert.equal(await page.locator('#switcher input:checked').getAttribute('value'), other);
    await page.locator(`#model-info[data-model="${other}"]`).waitFor();
    await screenshot(page, 'original-client-switched');
    assert.deepEqual(errors, []);
    await context.close();
  });

  test('a talkative analysis as rows, three continuations, a refused generation', { timeout: 180_000 }, async () => {
    const { page, context, errors } = await openClient();
    await pick(page, TALKATIVE);
    await page.locator(`#model-info[data-model="${TALKATIVE}"]`).waitFor();
    await analyze(page, { text: 'The cat sat on the mat.' });
    const result = page.locator('#results section.result[data-kind="analysis"]');
    await result.waitFor({ timeout: 150_000 });
    assert.equal(await request(page, 0).getAttribute('data-state'), 'completed');

    // One row per token, as the server recorded this very request.
    const id = await result.getAttribute('data-request-id');
    assert.match(id, /^r-/);
    const record = await api(server, `/api/v2/requests/${id}`);
    const [talk] = record.result.analyses;
    assert.equal(talk.lens, TALKATIVE);
    const rows = result.locator('table.rows tbody tr');
    assert.equal(await rows.count(), talk.tokens.length);
    assert.deepEqual(await result.locator('table.rows th').allTextContents(), ['position', 'token', 'explanation', 'mse', 'kl_divergence', 'logit_lens_top']);
    const cells = await rows.evaluateAll((trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
    cells.forEach(([position, token, explanation, mse, kl, top], i) => {
      const e = talk.explanations[i];
      assert.equal(Number(position), i);
      assert.equal(token, talk.tokens[i].text);
      assert.ok(explanation.length > 0, `row ${i} has an explanation`);
      assert.equal(explanation, e.explanation);
      assert.ok(Number.isFinite(Number(mse)) && mse !== '', `row ${i} mse ${mse}`);
      assert.ok(Number(kl) >= 0, `row ${i} KL was asked for: ${kl}`);
      assert.ok(top.length > 0 && top === e.logit_lens_top, `row ${i} logit lens top ${JSON.stringify(top)}`);
    });
    await screenshot(page, 'original-client-analysis', result);

    // Three continuations of the prompt.
    await page.locator('#generate-text').fill('Once upon a time');
    await page.locator('#generate-n').fill('3');
    await page.locator('#generate-tokens').fill('6');
    await page.locator('#generate-submit').click();
    const generation = page.locator('#results section.result[data-kind="generation"]');
    await generation.waitFor({ timeout: 60_000 });
    const completions = await generation.locator('li.completion').allTextContents();
    assert.equal(completions.length, 3);
    for (const c of completions) assert.ok(c.startsWith('Once upon a time') && c.length > 'Once upon a time'.length, JSON.stringify(c));

    // The server refuses more continuations than the original allowed; the page says why.
    await page.locator('#generate-n').fill('21');
    await page.locator('#generate-submit').click();
    const refused = request(page, 2);
    await inState(refused, 'error').waitFor();
    assert.match(await refused.locator('.status').textContent(), /num_completions.*21/);
    assert.equal(await refused.locator('button.cancel').isHidden(), true);
    // An analysis the server refuses: its `error` names this page's request id.
    await analyze(page, { text: 'Too many candidates', bestOfK: 65 });
    const refusedAnalysis = request(page, 3);
    await inState(refusedAnalysis, 'error').waitFor();
    assert.match(await refusedAnalysis.locator('.status').textContent(), /best_of_k.*65/);
    assert.equal(await page.locator('#errors li').count(), 0, 'every error belonged to a request');
    assert.deepEqual(errors, []);
    await context.close();
  });

  test('positions of queued requests, cancel of a queued one, interrupt of the running one', { timeout: 180_000 }, async () => {
    const { page, context, errors } = await openClient();
    await pick(page, TALKATIVE);
    await page.locator(`#model-info[data-model="${TALKATIVE}"]`).waitFor();

    // A long analysis (one position per batch, best of 2) runs; two more wait behind it.
    await analyze(page, { text: LONG_TEXT, bestOfK: 2, batch: 1 });
    const long = request(page, 0);
    await inState(long, 'processing').waitFor({ timeout: 60_000 });
    await analyze(page, { text: 'Hi there' });
    await analyze(page, { text: 'Third one' });
    const second = request(page, 1);
    const third = request(page, 2);
    await third.filter({ hasText: 'Queued (position 2/2)' }).waitFor();
    assert.match(await second.locator('.status').textContent(), /^Queued \(position 1\/[12]\)$/);
    assert.equal(await second.getAttribute('data-state'), 'queued');
    // The periodic queue update: two waiting, one running.
    await page.locator('#queue-pill[data-queued="2"][data-processing="1"]').waitFor({ timeout: 10_000 });
    assert.equal(await page.locator('#queue-pill').textContent(), 'Queue: 2 waiting · 1 running');
    await long.filter({ hasText: /Processing \d+% \(\d+\/\d+/ }).waitFor({ timeout: 60_000 });
    await screenshot(page, 'original-client-queue');

    // Cancel the third while it waits: cancel_request, then request_cancelled.
    const thirdId = await third.getAttribute('data-request-id');
    await third.locator('button.cancel').click();
    await inState(third, 'cancelled').waitFor({ timeout: 30_000 });
    assert.equal(await third.locator('.status').textContent(), 'Cancelled');
    assert.equal(await third.locator('button.cancel').isHidden(), true);
    assert.equal((await api(server, `/api/v2/requests/${thirdId}`)).status.state, 'cancelled');

    // Stop the running one: interrupt, then interrupted; the second goes on and completes.
    const longId = await long.getAttribute('data-request-id');
    await long.locator('button.cancel').click();
    await inState(long, 'interrupted').waitFor({ timeout: 30_000 });
    assert.equal((await api(server, `/api/v2/requests/${longId}`)).status.state, 'cancelled');
    await inState(second, 'completed').waitFor({ timeout: 60_000 });
    const secondId = await second.getAttribute('data-request-id');
    const rows = page.locator(`#results section.result[data-request-id="${secondId}"] table.rows tbody tr`);
    const record = await api(server, `/api/v2/requests/${secondId}`);
    assert.equal(await rows.count(), record.result.analyses[0].tokens.length);
    assert.equal(await page.locator('#results section.result').count(), 1, 'only the second request has a result');
    await page.locator('#queue-pill[data-queued="0"][data-processing="0"]').waitFor({ timeout: 10_000 });
    assert.deepEqual(errors, []);
    await context.close();
  });
});

// The original site's own page, when its files are supplied at test time (never committed):
// LENSD_ORIGINAL_FRONTEND names a folder with its index.html, app.js,
// model-switcher-grouped.js, visualizer-core.js, global-notifications.js and
// visualizer-styles.css (talkative_autoencoder/website/frontend/ of the public repository).
// The page is served from the server's own origin, where the page looks for its backend; its
// outside resources (a CSS framework and fonts from CDNs) are not loaded.
const ORIGINAL = process.env.LENSD_ORIGINAL_FRONTEND;
const ORIGINAL_FILES = ['index.html', 'app.js', 'model-switcher-grouped.js', 'visualizer-core.js',
  'global-notifications.js', 'visualizer-styles.css'];

describe('the original site\'s own page', { skip: ORIGINAL ? false : 'LENSD_ORIGINAL_FRONTEND is not set' }, () => {
  test('lists the groups, analyses a text into rows and generates three continuations', async () => {
    const { readFileSync } = await import('node:fs');
    const origin = `http://127.0.0.1:${server.port}`;
    // Chromium treats a routed page as public and would refuse its loopback WebSocket.
    const own = await browser.browserType().launch({
      executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-features=LocalNetworkAccessChecks,PrivateNetworkAccessChecks'],
    });
    try {
      const page = await own.newPage({ viewport: { width: 1280, height: 900 } });
      await page.route('**/*', (route) => {
        const url = new URL(route.request().url());
        if (url.origin !== origin) return route.abort();
        const name = url.pathname === '/' ? 'index.html' : url.pathname.slice(1);
        if (!ORIGINAL_FILES.includes(name)) return route.continue();
        const type = name.endsWith('.js') ? 'text/javascript' : name.endsWith('.css') ? 'text/css' : 'text/html';
        return route.fulfill({ body: readFileSync(join(ORIGINAL, name)), contentType: type });
      });
      await page.goto(`${origin}/`);
      // Connected, the grouped switcher filled, the default group's first model selected.
      const checked = page.locator('input[type=radio]:checked');
      await checked.waitFor({ state: 'attached', timeout: 60_000 });
      assert.match(await checked.getAttribute('value'), new RegExp(`^${DEFAULT_GROUP}::`));
      await page.locator('#inputText').fill('The cat sat.');
      await page.locator('#analyzeBtn').click();
      const rows = page.locator('table tbody tr');
      await rows.first().waitFor({ timeout: 180_000 });
      assert.ok(await rows.count() > 3);
      await page.locator('#numCompletions').fill('3');
      await page.locator('#generateBtn').click();
      await page.getByText(/Generated 3 continuation/).waitFor({ timeout: 180_000 });
      // The device panel it polls every two seconds has figures, not "undefined".
      const panel = await page.locator('#gpu-stats').innerText();
      assert.doesNotMatch(panel, /undefined|NaN/);
      await page.screenshot({ path: join(process.env.LENSD_WEB_ARTIFACTS ?? join(dirname(fileURLToPath(import.meta.url)), 'artifacts'), 'original-own-page.png') });
    } finally {
      await own.close();
    }
  });
});

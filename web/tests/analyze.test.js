// The page against lensd's embedded default configuration: the heatmap of an analysis (checked
// against the REST API's own answer), tooltips, keyboard and pinning, two lenses and their
// difference, cancelling, generation sent to analysis, the share link, and the phone width.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, openPage, screenshot, modelsReady, chooseModel, tickLenses,
  currentResult, analyzeOverRest, api, visibleToken, nextFrame,
} from './lib/harness.js';

const SENTENCE = 'The Eiffel Tower is in the city of Paris, and the Colosseum is in the city of';
// Long enough to be still running when Cancel is pressed (about 700 tokens × 31 layers).
const LONG_TEXT = Array.from({ length: 40 }, (_, i) => `Paragraph ${i}: the river ran past the old mill, where seven millers counted sacks of grain by lamplight.`).join('\n');

let server;
let browser;

before(async () => {
  // The browser first: if the server cannot start, `after` still closes it.
  browser = await launchBrowser();
  server = await startServer();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function analyze(page, { text, models, layers = 'all', topK = 5 }) {
  await page.locator('#tab-analyze').click();
  await page.locator('input[name="analyze-mode"][value="plain"]').check();
  await tickLenses(page, models);
  await page.locator('#analyze-text').fill(text);
  await page.locator('#analyze-layers').fill(layers);
  await page.locator('#analyze-topk').fill(String(topK));
  const before = await page.locator('#result-tabs [role="tab"]').count();
  await page.locator('#analyze-submit').click();
  await page.locator('#result-tabs [role="tab"]').nth(before).waitFor();
  return currentResult(page);
}

describe('analysis on the embedded default configuration', () => {
  test('the heatmap shows the tuned lens: final top-1 as the REST API says, tooltip, keyboard and pin', { timeout: 120_000 }, async () => {
    const expected = await analyzeOverRest(server, { model_id: 'smollm2-tuned', text: SENTENCE, options: { layers: 'all', top_k: 5 } });
    const a = expected.output.analyses[0];
    const lastPos = a.tokens.length - 1;
    const finalRow = a.layers[a.layers.length - 1];
    const want = finalRow.positions[lastPos].top[0].token;

    const { page, context, errors } = await openPage(browser, server.url);
    await modelsReady(page);
    await screenshot(page, 'desktop-start');
    await chooseModel(page, 'smollm2-tuned');
    const result = await analyze(page, { text: SENTENCE, models: ['smollm2-tuned'] });

    // The final layer's cell at the last position, as soon as its chunk arrived.
    const cell = result.locator(`table.heatmap td[data-layer="${finalRow.layer}"][data-pos="${lastPos}"]`);
    await page.waitForFunction(([sel, text]) => document.querySelector(sel)?.textContent === text,
      [`#result-panels > .tab-panel:not([hidden]) table.heatmap td[data-layer="${finalRow.layer}"][data-pos="${lastPos}"]`, visibleToken(want)]);
    assert.equal(await cell.textContent(), visibleToken(want));
    await result.locator('.status-line[data-status="completed"]').waitFor();

    // Column headers are the input tokens with visible whitespace; the last layer is on top.
    const headers = await result.locator('table.heatmap thead th:not(.corner)').allTextContents();
    assert.deepEqual(headers, a.tokens.map((t) => visibleToken(t.text)));
    const rowLabels = await result.locator('table.heatmap tbody th').allTextContents();
    assert.equal(rowLabels[0], `L${finalRow.layer}`);
    assert.equal(rowLabels.length, a.layers.length);

    // Hover: the tooltip lists the cell's top-k with percentages, as the REST result has them.
    const probe = a.layers.find((l) => l.layer === 20);
    const probeCell = probe.positions[3];
    await result.locator('.view-controls').evaluate((el) => el.scrollIntoView({ block: 'start' }));
    await result.locator('table.heatmap td[data-layer="20"][data-pos="3"]').hover();
    const tip = page.locator('#tooltip');
    await tip.waitFor();
    const tipRows = await tip.locator('table.topk tr').allTextContents();
    assert.equal(tipRows.length, 5);
    probeCell.top.forEach((t, i) => {
      assert.ok(tipRows[i].startsWith(visibleToken(t.token)), `tooltip row ${i} "${tipRows[i]}" starts with ${t.token}`);
      assert.match(tipRows[i], /\d+(\.\d)?%|<0\.1%/);
    });
    assert.match(await tip.textContent(), /Layer 20 · position 3/);
    await screenshot(page, 'desktop-heatmap-tooltip');

    // Keyboard: focus a cell, move with arrows (down is the layer below), Enter pins.
    await result.locator(`table.heatmap td[data-layer="${finalRow.layer}"][data-pos="${lastPos}"]`).focus();
    await page.keyboard.press('ArrowDown');
    await page.keyboard.press('ArrowLeft');
    const focused = await page.evaluate(() => ({ layer: document.activeElement.dataset.layer, pos: document.activeElement.dataset.pos }));
    assert.deepEqual(focused, { layer: String(finalRow.layer - 1), pos: String(lastPos - 1) });
    assert.match(await tip.textContent(), new RegExp(`Layer ${finalRow.layer - 1} · position ${lastPos - 1}`));
    await page.keyboard.press('Enter');
    const pinned = result.locator('.pin-panel');
    await pinned.waitFor();
    assert.match(await pinned.textContent(), new RegExp(`Layer ${finalRow.layer - 1} · position ${lastPos - 1}`));
    const pinnedTop = a.layers.find((l) => l.layer === finalRow.layer - 1).positions[lastPos - 1].top[0].token;
    assert.equal(await pinned.locator('table.topk tr').first().locator('td.tok').textContent(), visibleToken(pinnedTop));
    assert.equal(await result.locator('td.pinned').getAttribute('data-pos'), String(lastPos - 1));
    // The pin stays when the pointer and focus go elsewhere.
    await page.locator('#analyze-text').focus();
    await page.mouse.move(5, 5);
    assert.equal(await pinned.isVisible(), true);
    await screenshot(page, 'desktop-heatmap-pinned', pinned, 'end');

    // Another statistic recolours the cells and relabels the legend.
    const colours = () => result.locator('table.heatmap td').evaluateAll((tds) => tds.map((td) => td.style.backgroundColor));
    const byProb = await colours();
    await result.locator('.view-controls select').selectOption('entropy');
    assert.match(await result.locator('.legend-title').textContent(), /Entropy/);
    const byEntropy = await colours();
    assert.equal(byEntropy.length, byProb.length);
    assert.ok(byEntropy.every((c) => c !== ''), 'every cell is coloured');
    assert.notDeepEqual(byEntropy, byProb);
    assert.deepEqual(errors, []);
    await context.close();
  });

  test('two lenses of one group: a selector and the difference view', { timeout: 90_000 }, async () => {
    const { page, context, errors } = await openPage(browser, server.url);
    await chooseModel(page, 'smollm2-logit');
    const result = await analyze(page, { text: SENTENCE, models: ['smollm2-logit', 'smollm2-tuned'], layers: '10-30' });
    await result.locator('.status-line[data-status="completed"]').waitFor();
    const lensRadios = result.locator('[role="radiogroup"][aria-label="Lens shown"] input');
    assert.equal(await lensRadios.count(), 3);
    const logitTop = await result.locator('td[data-layer="10"][data-pos="5"]').textContent();
    await result.locator('label.seg', { hasText: 'Tuned lens' }).click();
    const tunedTop = await result.locator('td[data-layer="10"][data-pos="5"]').textContent();
    await result.locator('label.seg', { hasText: 'Difference' }).click();
    assert.match(await result.locator('.legend-title').textContent(), /Logit lens minus Tuned lens/);
    // At layer 10 the raw logit lens and the tuned lens rarely agree.
    assert.ok((await result.locator('td.differs').count()) > 0, 'some cells are marked as differing');
    assert.equal(await result.locator('td[data-layer="10"][data-pos="5"]').evaluate((td) => td.classList.contains('differs')), logitTop !== tunedTop);
    await result.locator('.view-controls').evaluate((el) => el.scrollIntoView({ block: 'start' }));
    await result.locator('td.differs').first().hover();
    assert.equal(await page.locator('#tooltip .tip-lens').count(), 2);
    await screenshot(page, 'desktop-heatmap-difference');
    assert.deepEqual(errors, []);
    await context.close();
  });

  test('cancel: the tab shows cancelled once the server confirms, and the server agrees', { timeout: 120_000 }, async () => {
    const { page, context, errors } = await openPage(browser, server.url);
    await chooseModel(page, 'smollm2-tuned');
    const result = await analyze(page, { text: LONG_TEXT, models: ['smollm2-tuned'] });
    await result.locator('.status-bar:not([hidden])').waitFor({ timeout: 60_000 });
    await result.locator('.status-line[data-status="running"]').waitFor();
    assert.match(await result.locator('.status-line').textContent(), /Running: \d+ of \d+ cells/);
    const id = await result.getAttribute('data-request-id');
    assert.match(id, /^r-/);
    await result.getByRole('button', { name: 'Cancel' }).click();
    await result.locator('.status-line[data-status="cancelled"]').waitFor({ timeout: 30_000 });
    assert.match(await result.locator('.status-line').textContent(), /Cancelled/);
    // Rows that arrived before the cancel stay in the heatmap.
    assert.ok((await result.locator('table.heatmap td:not(.empty)').count()) > 0);
    const view = await api(server, `/api/v2/requests/${id}`);
    assert.equal(view.status.state, 'cancelled');
    await screenshot(page, 'desktop-cancelled', result);
    assert.deepEqual(errors, []);
    await context.close();
  });

  test('generate streams tokens, then "Send to analysis" analyses the conversation', { timeout: 120_000 }, async () => {
    const { page, context, errors } = await openPage(browser, server.url);
    await chooseModel(page, 'smollm2-tuned');
    await page.locator('#tab-generate').click();
    await page.locator('input[name="generate-mode"][value="chat"]').check();
    await page.locator('#generate-form .turn textarea').first().fill('What is the capital of France?');
    await page.locator('#gen-max-tokens').fill('12');
    await page.locator('#gen-temperature').fill('0');
    await page.locator('#generate-submit').click();
    const gen = currentResult(page);
    await gen.locator('.gen-token').first().waitFor();
    await gen.locator('.status-line[data-status="completed"]').waitFor();
    const reply = (await gen.locator('.gen-reply').textContent()).trim();
    assert.ok(reply.length > 0, 'a reply was generated');
    await screenshot(page, 'desktop-generation', gen);

    await gen.getByRole('button', { name: 'Send to analysis' }).click();
    const analysis = page.locator('#result-panels > .tab-panel:not([hidden]) .analysis-result');
    await analysis.waitFor();
    await analysis.locator('.status-line[data-status="completed"]').waitFor({ timeout: 60_000 });
    assert.ok((await analysis.locator('table.heatmap td:not(.empty)').count()) > 0);
    // The analysed text holds the prompt and the reply.
    const headers = (await analysis.locator('table.heatmap thead th:not(.corner)').allTextContents()).join('').replace(/␣/g, ' ').replace(/↵/g, '\n');
    assert.ok(headers.includes('capital of France'), headers);
    assert.ok(headers.includes(reply.split(/\s+/)[0]), `${headers} includes ${reply}`);
    await screenshot(page, 'desktop-generation-analysed', analysis);
    assert.deepEqual(errors, []);
    await context.close();
  });

  test('share: the link of a finished analysis opens its read-only page with the tokens', { timeout: 90_000 }, async () => {
    const { page, context, errors } = await openPage(browser, server.url);
    await chooseModel(page, 'smollm2-logit');
    const result = await analyze(page, { text: 'Shared words travel far', models: ['smollm2-logit'], layers: '28-30' });
    await result.locator('.status-line[data-status="completed"]').waitFor();
    await nextFrame(page);
    const tokens = await result.locator('table.heatmap thead th:not(.corner)').allTextContents();
    const link = result.locator('a.share-link');
    const href = await link.getAttribute('href');
    assert.match(href, /\/share\/r-[0-9a-f]+$/);
    const [shared] = await Promise.all([context.waitForEvent('page'), link.click()]);
    await shared.waitForLoadState();
    const body = await shared.locator('body').textContent();
    assert.ok(body.includes('Shared words travel far'));
    const sharedHeaders = await shared.locator('table thead th').allTextContents();
    for (const t of tokens) assert.ok(sharedHeaders.includes(t), `the share page shows the token ${t}`);
    await screenshot(shared, 'desktop-share-page');
    assert.deepEqual(errors, []);
    await context.close();
  });

  test('phone width: no horizontal overflow, the heatmap scrolls in its own box', { timeout: 90_000 }, async () => {
    const { page, context, errors } = await openPage(browser, server.url, { width: 390, height: 844 });
    await modelsReady(page);
    await screenshot(page, 'phone-start');
    await chooseModel(page, 'smollm2-tuned');
    const result = await analyze(page, { text: SENTENCE, models: ['smollm2-tuned'], layers: '20-30' });
    await result.locator('.status-line[data-status="completed"]').waitFor();
    const sizes = await page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, inner: window.innerWidth }));
    assert.ok(sizes.scroll <= sizes.inner, `page scrollWidth ${sizes.scroll} <= ${sizes.inner}`);
    const box = result.locator('.heatmap-scroll');
    const dims = await box.evaluate((el) => ({ sw: el.scrollWidth, cw: el.clientWidth, right: el.getBoundingClientRect().right }));
    assert.ok(dims.sw > dims.cw, 'the heatmap is wider than its box');
    assert.ok(dims.right <= sizes.inner, 'the box fits the screen');
    const scrolled = await box.evaluate((el) => {
      el.scrollLeft = 200;
      return el.scrollLeft;
    });
    assert.ok(scrolled > 0);
    await screenshot(page, 'phone-heatmap', result.locator('.view-controls'));
    assert.deepEqual(errors, []);
    await context.close();
  });
});

// Export and import: a finished analysis exported as lensd JSONL comes back in a fresh page
// with the same tokens and top-1 cells; the PNG export is a PNG; a file in the original site's
// {metadata, data} format shows in the table, transposed and full-text views with salience
// colours; a malformed file is refused with the line that is wrong.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, launchBrowser, openPage, screenshot, chooseModel, tickLenses, currentResult, tempDir, nextFrame } from './lib/harness.js';

let server;
let browser;
const dir = tempDir('io');

before(async () => {
  // The browser first: if the server cannot start, `after` still closes it.
  browser = await launchBrowser();
  server = await startServer();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function importFile(page, path) {
  await page.locator('#import-file').setInputFiles(path);
}

/** A file as the original site exported it: `{metadata, data}` with explanation rows. */
function originalExport() {
  const rows = [
    { position: 0, token: 'The', explanation_structured: ['article', 'start', 'sentence', '[The]'], token_salience: [0.42, -0.18, 0.0], mse: 0.0123, relative_rmse: 0.31, kl_divergence: 0.5 },
    { position: 1, token: ' cat', explanation_structured: ['animal', 'pet', 'feline', '[ cat]'], token_salience: [0.9, 0.05, -0.33], mse: 0.0201, relative_rmse: 0.4, kl_divergence: 0.7 },
    { position: 2, token: ' sat', explanation: 'verb past sitting [ sat]', explanation_structured: ['verb', 'past', 'sitting', '[ sat]'], token_salience: [-0.6, 0.12, 0.25], mse: 0.015, relative_rmse: 0.35, kl_divergence: 0.2 },
    { position: 3, token: '\n', explanation_structured: ['newline', 'break', 'end', '[\n]'], token_salience: [0.01, 0.02, -0.01], mse: 0.03, relative_rmse: 0.5, kl_divergence: 0.9 },
  ];
  return JSON.stringify({ metadata: { model_id: 'gemma2-9b-it-chat-l30', layer: 30, best_of_k: 16 }, data: rows }, null, 2);
}

describe('export and import', () => {
  test('an exported analysis re-imports with the same tokens and top-1; PNG export is a PNG', { timeout: 120_000 }, async () => {
    const first = await openPage(browser, server.url);
    const page = first.page;
    await chooseModel(page, 'smollm2-tuned');
    await tickLenses(page, ['smollm2-logit', 'smollm2-tuned']);
    await page.locator('#analyze-text').fill('Exported lenses come back home');
    await page.locator('#analyze-layers').fill('25-30');
    await page.locator('#analyze-topk').fill('3');
    await page.locator('#analyze-submit').click();
    const result = currentResult(page);
    await result.locator('.status-line[data-status="completed"]').waitFor();
    await nextFrame(page);
    const tokens = await result.locator('table.heatmap thead th:not(.corner)').allTextContents();
    const cells = await result.locator('table.heatmap td').allTextContents();

    const [jsonl] = await Promise.all([page.waitForEvent('download'), result.getByRole('button', { name: 'Export JSONL' }).click()]);
    assert.match(jsonl.suggestedFilename(), /\.jsonl$/);
    const exported = join(dir, 'analysis.jsonl');
    await jsonl.saveAs(exported);
    const lines = readFileSync(exported, 'utf8').trim().split('\n');
    assert.equal(lines.length, 1);
    const line = JSON.parse(lines[0]);
    assert.equal(line.format, 'lensd.analysis');
    assert.equal(line.version, 1);
    assert.match(line.request_id, /^r-/);
    assert.deepEqual(line.models, ['smollm2-logit', 'smollm2-tuned']);
    assert.deepEqual(line.options, { layers: '25-30', top_k: 3 });
    assert.equal(line.analyses.length, 2);
    assert.deepEqual(line.analyses[0].layers.map((l) => l.layer), [25, 26, 27, 28, 29, 30]);
    assert.equal(line.analyses[0].layers[0].positions[0].top.length, 3);

    const [png] = await Promise.all([page.waitForEvent('download'), result.getByRole('button', { name: 'Export PNG' }).click()]);
    assert.match(png.suggestedFilename(), /\.png$/);
    const pngPath = join(dir, 'heatmap.png');
    await png.saveAs(pngPath);
    const bytes = readFileSync(pngPath);
    assert.deepEqual([...bytes.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    assert.ok(bytes.length > 1000);
    await first.context.close();

    // A fresh page (a new browser context: nothing shared) reads the file back.
    const second = await openPage(browser, server.url);
    await importFile(second.page, exported);
    const imported = currentResult(second.page);
    await imported.locator('table.heatmap td').first().waitFor();
    assert.equal(await imported.getAttribute('data-status'), 'imported');
    assert.deepEqual(await imported.locator('table.heatmap thead th:not(.corner)').allTextContents(), tokens);
    assert.deepEqual(await imported.locator('table.heatmap td').allTextContents(), cells);
    assert.equal(await imported.locator('[aria-label="Lens shown"] input').count(), 3);
    assert.match(await second.page.locator('#import-status').textContent(), /Imported 1 result/);
    await screenshot(second.page, 'desktop-imported-analysis', imported);
    assert.deepEqual(first.errors, []);
    assert.deepEqual(second.errors, []);
    await second.context.close();
  });

  test('the original {metadata, data} format shows in the table, transposed and full-text views', { timeout: 60_000 }, async () => {
    const { page, context, errors } = await openPage(browser, server.url);
    const path = join(dir, 'nlae-analyses-1-items.jsonl');
    writeFileSync(path, originalExport());
    await importFile(page, path);
    const result = currentResult(page);
    await result.locator('table.explain-table').waitFor();
    const headers = await result.locator('table.explain-table th').allTextContents();
    assert.deepEqual(headers, ['position', 'token', 'explanation', 'relative_rmse', 'mse', 'kl_divergence']);
    const rows = result.locator('table.explain-table tbody tr');
    assert.equal(await rows.count(), 4);
    // `explanation` rebuilt from `explanation_structured`, words coloured by salience.
    const firstExpl = rows.nth(0).locator('td.col-explanation');
    assert.equal((await firstExpl.textContent()).trim(), 'article start sentence [The]');
    const colour = (loc) => loc.evaluate((w) => getComputedStyle(w).backgroundColor);
    const rgb = (s) => s.match(/\d+/g).map(Number);
    const [pr, pg] = rgb(await colour(firstExpl.locator('.word').nth(0))); // +0.42: red
    assert.ok(pr === 255 && pg < 200, `positive salience is red, got ${pr},${pg}`);
    const [nr, ng] = rgb(await colour(firstExpl.locator('.word').nth(1))); // -0.18: green
    assert.ok(ng > nr, `negative salience is green, got ${nr},${ng}`);
    assert.deepEqual(rgb(await colour(firstExpl.locator('.word').nth(2))), [255, 255, 255]); // 0: white
    assert.match(await result.locator('.legend-title').textContent(), /5th–95th percentile/);
    // Column toggles.
    await result.locator('.column-toggles summary').click();
    await result.locator('.column-toggles input[value="token_salience"]').check();
    assert.ok((await result.locator('table.explain-table th').allTextContents()).includes('token_salience'));
    await result.locator('.column-toggles input[value="mse"]').uncheck();
    assert.ok(!(await result.locator('table.explain-table th').allTextContents()).includes('mse'));
    // Click to copy.
    await context.grantPermissions(['clipboard-read', 'clipboard-write']);
    await rows.nth(1).locator('td.col-explanation').click();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), 'animal pet feline [ cat]');
    await screenshot(page, 'desktop-import-table', result);

    await result.locator('label.seg', { hasText: 'Transposed' }).click();
    const columns = result.locator('.transposed .tcol');
    assert.equal(await columns.count(), 4);
    assert.equal(await columns.nth(1).locator('.tcol-token').textContent(), '␣cat');
    assert.deepEqual(await columns.nth(1).locator('.word').allTextContents(), ['animal', 'pet', 'feline', '[ cat]']);
    await screenshot(page, 'desktop-import-transposed', result);

    await result.locator('label.seg', { hasText: 'Full text' }).click();
    const boxes = result.locator('.full-text .tok-box');
    assert.deepEqual(await boxes.allTextContents(), ['The', '␣cat', '␣sat', '↵']);
    await boxes.nth(2).hover();
    const tip = page.locator('#tooltip');
    await tip.waitFor();
    assert.match(await tip.textContent(), /verb past sitting/);
    const [vr, vg] = rgb(await colour(tip.locator('.word').nth(0))); // -0.6: green
    assert.ok(vg > vr, 'the tooltip colours words by salience');
    await screenshot(page, 'desktop-import-fulltext', result);

    // Keyboard: the token boxes take focus in turn.
    await boxes.nth(0).focus();
    await page.keyboard.press('ArrowRight');
    assert.equal(await page.evaluate(() => document.activeElement.textContent), '␣cat');
    assert.match(await tip.textContent(), /animal pet feline/);
    assert.deepEqual(errors, []);

    // The same views at phone width.
    await page.setViewportSize({ width: 390, height: 844 });
    await result.locator('label.seg', { hasText: 'Table' }).click();
    await screenshot(page, 'phone-import-table', result);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `no horizontal overflow at phone width (${overflow})`);
    await context.close();
  });

  test('the other original layouts import; a malformed file is refused naming its line', { timeout: 60_000 }, async () => {
    const { page, context, errors } = await openPage(browser, server.url);
    // A bare array of rows and a column-oriented object, concatenated.
    const mixed = join(dir, 'mixed.json');
    writeFileSync(mixed, `${JSON.stringify([{ token: 'A', explanation: 'first letter' }])}\n${JSON.stringify({ token: { 0: 'x', 1: 'y' }, explanation: { 0: 'ex', 1: 'why' } })}\n`);
    await importFile(page, mixed);
    await page.locator('#import-status', { hasText: 'Imported 2 results' }).waitFor();
    assert.equal(await page.locator('#result-tabs [role="tab"]').count(), 2);
    const rows = currentResult(page).locator('table.explain-table tbody tr');
    assert.equal(await rows.count(), 1);
    await page.locator('#result-tabs [role="tab"]').nth(1).click();
    assert.deepEqual(await currentResult(page).locator('table.explain-table td.col-explanation').allTextContents(), ['ex', 'why']);

    const bad = join(dir, 'bad.jsonl');
    writeFileSync(bad, `${JSON.stringify([{ token: 'A', explanation: 'ok' }])}\n{"metadata": {}, "data": [1, 2}\n`);
    await importFile(page, bad);
    const status = page.locator('#import-status');
    await status.locator('strong').waitFor();
    assert.match(await status.textContent(), /Could not import bad\.jsonl: line 2: /);
    // Nothing of a refused file is imported.
    assert.equal(await page.locator('#result-tabs [role="tab"]').count(), 2);

    const unknown = join(dir, 'unknown.jsonl');
    writeFileSync(unknown, '{"format": "lensd.analysis", "version": 9}\n');
    await importFile(page, unknown);
    await page.locator('#import-status', { hasText: 'version 9' }).waitFor();
    assert.match(await status.textContent(), /line 1: lensd\.analysis version 9 is not one this page reads/);
    const noRows = join(dir, 'norows.json');
    writeFileSync(noRows, '{"title": "x"}\n');
    await importFile(page, noRows);
    await page.locator('#import-status', { hasText: 'norows.json' }).waitFor();
    assert.match(await status.textContent(), /line 1: not a lensd export line/);
    await screenshot(page, 'desktop-import-error');
    assert.deepEqual(errors, []);
    await context.close();
  });
});

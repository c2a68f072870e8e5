// Talkative lenses in analysis tabs, on the embedded default configuration (its untrained demo
// talkative lens): the form's talkative options and their checks, the explanation rows of a
// logit + talkative analysis equal to the server's own record of the same request, salience
// colours, the lens selector between the explanation views and the heatmap, export and import
// of the tab, and a talkative-only analysis at phone width.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  startServer, launchBrowser, openPage, screenshot, chooseModel, tickLenses, currentResult, api, visibleToken, tempDir,
} from './lib/harness.js';

const TALKATIVE = 'smollm2-talkative-untrained';
const SENTENCE = 'The cat sat on the mat.';

let server;
let browser;
const dir = tempDir('talkative');

before(async () => {
  // The browser first: if the server cannot start, `after` still closes it.
  browser = await launchBrowser();
  server = await startServer();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** Every row's words (as the server wrote them, from `data-word`) in a talkative table. */
function rowWords(table) {
  return table.locator('tbody tr').evaluateAll((trs) =>
    trs.map((tr) => [...tr.querySelectorAll('td.col-explanation .word')].map((w) => w.dataset.word)));
}

const rgb = (s) => s.match(/\d+/g).slice(0, 3).map(Number);

/**
 * Numbers as 32-bit floats, all through a value: the server's record of a request
 * (GET /api/v2/requests/{id}) writes its f32 results widened to f64 digits, while the events
 * the page reads write them in their shortest f32 form.
 */
function f32(v) {
  if (typeof v === 'number') return Math.fround(v);
  if (Array.isArray(v)) return v.map(f32);
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, f32(x)]));
  return v;
}

describe('talkative lenses in analysis tabs', () => {
  test('logit + talkative: options checked, rows as the server recorded them, salience, heatmap, export and import', { timeout: 240_000 }, async () => {
    const { page, context, errors } = await openPage(browser, server.url);
    await chooseModel(page, 'smollm2-logit');
    await page.locator('#tab-analyze').click();
    await page.locator('input[name="analyze-mode"][value="plain"]').check();

    // The talkative options show only while a talkative lens is ticked, with the server's defaults.
    const field = page.locator('#talkative-options');
    await tickLenses(page, ['smollm2-logit']);
    assert.equal(await field.isHidden(), true);
    await tickLenses(page, ['smollm2-logit', TALKATIVE]);
    await field.waitFor();
    assert.equal(await page.locator('#analyze-best-of-k').inputValue(), '8');
    assert.equal(await page.locator('#analyze-temperature').inputValue(), '1');
    assert.equal(await page.locator('#analyze-seed').inputValue(), '42');
    assert.equal(await page.locator('#analyze-salience').isChecked(), true);
    assert.equal(await page.locator('#analyze-kl').isChecked(), true);
    // Top-k and layers stay for the logit lens.
    assert.equal(await page.locator('#analyze-layers').isEnabled(), true);

    await page.locator('#analyze-text').fill(SENTENCE);
    await page.locator('#analyze-layers').fill('20-30');
    await page.locator('#analyze-topk').fill('3');

    // Out-of-range values are refused under the form, naming the field; nothing is sent.
    const formError = page.locator('#analyze-error');
    for (const bad of ['0', '65']) {
      await page.locator('#analyze-best-of-k').fill(bad);
      await page.locator('#analyze-submit').click();
      await page.locator('#analyze-best-of-k[aria-invalid="true"]').waitFor();
      assert.equal(await formError.isVisible(), true);
      assert.match(await formError.textContent(), new RegExp(`^Best of K must be a whole number from 1 to 64, not “${bad}”`));
    }
    await page.locator('#analyze-best-of-k').fill('2');
    await page.locator('#analyze-temperature').fill('6');
    await page.locator('#analyze-submit').click();
    await page.locator('#analyze-temperature[aria-invalid="true"]').waitFor();
    assert.match(await formError.textContent(), /^Temperature must be a number from 0 to 5/);
    assert.equal(await page.locator('#result-tabs [role="tab"]').count(), 0);

    await page.locator('#analyze-temperature').fill('0');
    await page.locator('#analyze-submit').click();
    await page.locator('#result-tabs [role="tab"]').first().waitFor();
    assert.equal(await formError.isHidden(), true);
    assert.equal(await page.locator('#analyze-form [aria-invalid]').count(), 0);
    const result = currentResult(page);
    await result.locator('.status-line[data-status="completed"]').waitFor({ timeout: 180_000 });

    // The server's record of this very request.
    const id = await result.getAttribute('data-request-id');
    assert.match(id, /^r-/);
    const record = await api(server, `/api/v2/requests/${id}`);
    const [logit, talk] = record.result.analyses;
    assert.equal(logit.lens, 'smollm2-logit');
    assert.equal(talk.lens, TALKATIVE);
    const n = talk.tokens.length;
    assert.equal(talk.explanations.length, n);
    assert.ok(talk.explanations.every((e) => e.token_salience.length > 0 && typeof e.kl_divergence === 'number'), 'salience and KL are on by default');

    // The selector offers both lenses; no difference view with one cell lens. The logit
    // lens, first in the request, shows first: the heatmap, with the PNG export.
    const lenses = result.locator('[role="radiogroup"][aria-label="Lens shown"] label.seg');
    assert.deepEqual(await lenses.allTextContents(), ['Logit lens', 'Talkative lens (untrained)']);
    assert.equal(await result.locator('table.heatmap').isVisible(), true);
    assert.equal(await result.locator('.talkative-views').isHidden(), true);
    assert.equal(await result.getByRole('button', { name: 'Export PNG' }).isVisible(), true);

    // The talkative lens: the explanation table, one row per token.
    await lenses.filter({ hasText: 'Talkative' }).click();
    const view = result.locator('.talkative-view:not([hidden])');
    const table = view.locator('table.explain-table');
    await table.waitFor();
    assert.equal(await result.locator('.heatmap-view').isHidden(), true);
    assert.equal(await result.getByRole('button', { name: 'Export PNG' }).isHidden(), true);
    assert.equal(await result.getByLabel('Colour cells by').isHidden(), true);
    assert.equal(await table.locator('tbody tr').count(), n);
    assert.deepEqual(await table.locator('td.col-token').allTextContents(), talk.tokens.map((t) => visibleToken(t.text)));
    assert.deepEqual(await table.locator('th').allTextContents(), ['position', 'token', 'explanation', 'relative_rmse', 'mse', 'kl_divergence']);
    // The words are the server's structured words, one element each (tokens keep their spaces).
    assert.deepEqual(await rowWords(table), talk.explanations.map((e) => e.explanation_structured));

    // Salience colours: each word with a salience carries it; the most positive word is full
    // red, the most negative full green (both lie beyond the 5th–95th percentile scale).
    const words = await table.locator('tbody tr').evaluateAll((trs) =>
      trs.map((tr) => [...tr.querySelectorAll('td.col-explanation .word')].map((w) => ({ s: w.dataset.salience, bg: getComputedStyle(w).backgroundColor }))));
    let max = { v: -Infinity };
    let min = { v: Infinity };
    talk.explanations.forEach((e, r) => {
      e.token_salience.forEach((v, i) => {
        assert.equal(Math.fround(Number(words[r][i].s)), Math.fround(v), `row ${r} word ${i} has its salience`);
        if (v > max.v) max = { v, bg: words[r][i].bg };
        if (v < min.v) min = { v, bg: words[r][i].bg };
      });
    });
    assert.ok(max.v > 0 && min.v < 0, `salience of both signs (${min.v}, ${max.v})`);
    assert.deepEqual(rgb(max.bg), [255, 90, 80]);
    assert.deepEqual(rgb(min.bg), [80, 180, 95]);
    assert.match(await view.locator('.legend-title').textContent(), /Salience/);
    await screenshot(page, 'desktop-talkative-table', result.locator('.view-controls').first());

    // The full text: a box per token, the tooltip gives its explanation.
    await view.locator('label.seg', { hasText: 'Full text' }).click();
    const boxes = view.locator('.full-text .tok-box');
    assert.equal(await boxes.count(), n);
    await boxes.nth(1).hover();
    const tip = page.locator('#tooltip');
    await tip.waitFor();
    assert.deepEqual(await tip.locator('.word').evaluateAll((ws) => ws.map((w) => w.dataset.word)), talk.explanations[1].explanation_structured);
    assert.match(await tip.textContent(), /kl_divergence/);
    await screenshot(page, 'desktop-talkative-fulltext', result.locator('.view-controls').first());
    await page.mouse.move(5, 5);

    // Back to the logit lens: its heatmap, with the server's top-1 tokens.
    await lenses.filter({ hasText: 'Logit' }).click();
    await result.locator('table.heatmap').waitFor();
    assert.equal(await result.locator('.talkative-views').isHidden(), true);
    const last = logit.layers[logit.layers.length - 1];
    assert.equal(await result.locator(`table.heatmap td[data-layer="${last.layer}"][data-pos="${n - 1}"]`).textContent(), visibleToken(last.positions[n - 1].top[0].token));
    assert.equal(await result.locator('table.heatmap tbody th').count(), 11);

    // Export JSONL: the options sent and the explanations as the server has them.
    const [download] = await Promise.all([page.waitForEvent('download'), result.getByRole('button', { name: 'Export JSONL' }).click()]);
    const file = join(dir, 'talkative.jsonl');
    await download.saveAs(file);
    const line = JSON.parse(readFileSync(file, 'utf8').trim());
    assert.deepEqual(line.options, { layers: '20-30', top_k: 3, best_of_k: 2, temperature: 0, seed: 42, salience: true, kl: true });
    assert.deepEqual(line.models, ['smollm2-logit', TALKATIVE]);
    assert.deepEqual(f32(line.analyses[1]), f32(talk));
    assert.deepEqual(errors, []);
    await context.close();

    // A fresh page imports it: the same rows, words and views.
    const second = await openPage(browser, server.url);
    await second.page.locator('#import-file').setInputFiles(file);
    const imported = currentResult(second.page);
    await imported.locator('table.heatmap td').first().waitFor();
    assert.equal(await imported.getAttribute('data-status'), 'imported');
    await imported.locator('[aria-label="Lens shown"] label.seg', { hasText: 'Talkative' }).click();
    const importedTable = imported.locator('.talkative-view:not([hidden]) table.explain-table');
    await importedTable.waitFor();
    assert.equal(await importedTable.locator('tbody tr').count(), n);
    assert.deepEqual(await rowWords(importedTable), talk.explanations.map((e) => e.explanation_structured));
    assert.ok((await importedTable.locator('.word[data-salience]').count()) > 0, 'imported words are coloured');
    await imported.locator('.talkative-view:not([hidden]) label.seg', { hasText: 'Transposed' }).click();
    assert.equal(await imported.locator('.transposed .tcol').count(), n);
    assert.match(await imported.locator('.input-summary').textContent(), /best of 2 · temperature 0/);
    assert.deepEqual(second.errors, []);
    await second.context.close();
  });

  test('phone width: a talkative-only analysis shows its explanation views directly', { timeout: 180_000 }, async () => {
    const { page, context, errors } = await openPage(browser, server.url, { width: 390, height: 844 });
    await chooseModel(page, 'smollm2-logit');
    await page.locator('#tab-analyze').click();
    await tickLenses(page, [TALKATIVE]);
    // Top-k and layers are for cell lenses: off while only a talkative lens is ticked.
    assert.equal(await page.locator('#analyze-layers').isDisabled(), true);
    assert.equal(await page.locator('#analyze-topk').isDisabled(), true);
    await page.locator('#analyze-best-of-k').fill('1');
    await page.locator('#analyze-kl').uncheck();
    await page.locator('#analyze-text').fill('Small screens read words too');
    await page.locator('#analyze-submit').click();
    const result = currentResult(page);
    await result.locator('.status-line[data-status="completed"]').waitFor({ timeout: 120_000 });
    const record = await api(server, `/api/v2/requests/${await result.getAttribute('data-request-id')}`);
    const [talk] = record.result.analyses;
    assert.ok(talk.explanations.every((e) => !('kl_divergence' in e)), 'KL off is sent');

    // No lens selector and no heatmap: the table straight away.
    assert.equal(await result.locator('[aria-label="Lens shown"]').count(), 0);
    assert.equal(await result.locator('.heatmap-view').isHidden(), true);
    const table = result.locator('table.explain-table');
    await table.waitFor();
    assert.equal(await table.locator('tbody tr').count(), talk.tokens.length);
    assert.deepEqual(await rowWords(table), talk.explanations.map((e) => e.explanation_structured));
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `no horizontal overflow at phone width (${overflow})`);
    await screenshot(page, 'phone-talkative', result.locator('.talkative-views'));
    assert.deepEqual(errors, []);
    await context.close();
  });
});

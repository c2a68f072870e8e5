// Errors where they belong, and the connection's life: a request the server fails shows its
// message in its tab; a message the server refuses shows under the form; when the server goes
// away the page says it is reconnecting, marks running work as interrupted, and when a server
// is back on the same port it connects again with every tab still there; a graceful shutdown
// is announced.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, openPage, screenshot, chooseModel, tickLenses, currentResult, nextFrame } from './lib/harness.js';

const LONG_TEXT = Array.from({ length: 40 }, (_, i) => `Line ${i}: lanterns swayed above the quiet harbour while the night ferry waited for its last passengers.`).join('\n');

let browser;
const servers = [];

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  for (const s of servers) await s.stop('SIGKILL');
});

async function submit(page, { text, layers = 'all' }) {
  await page.locator('#analyze-text').fill(text);
  await page.locator('#analyze-layers').fill(layers);
  const n = await page.locator('#result-tabs [role="tab"]').count();
  await page.locator('#analyze-submit').click();
  await page.locator('#result-tabs [role="tab"]').nth(n).waitFor();
  return currentResult(page);
}

describe('errors and reconnection', () => {
  test('errors show in place; after the server restarts on its port the page reconnects and keeps its tabs', { timeout: 150_000 }, async () => {
    const first = await startServer();
    servers.push(first);
    const { page, context, errors } = await openPage(browser, first.url);
    await chooseModel(page, 'smollm2-tuned');
    await tickLenses(page, ['smollm2-tuned']);

    // A request the server accepts and then fails: the message is in its tab.
    const failed = await submit(page, { text: 'Layers that do not exist', layers: '99-200' });
    await failed.locator('.status-line[data-status="error"]').waitFor();
    const box = failed.locator('.error-box');
    assert.match(await box.textContent(), /invalid_request: layer 200 does not exist/);
    await screenshot(page, 'desktop-error-in-tab', failed);

    // A message the server refuses (no request is made): the message is under the form.
    const refused = await submit(page, { text: 'Nonsense layers', layers: 'every other one' });
    await refused.locator('.status-line[data-status="rejected"]').waitFor();
    const formError = page.locator('#analyze-error');
    await formError.waitFor();
    assert.match(await formError.textContent(), /bad_request: .*options\.layers/);
    assert.match(await refused.locator('.error-box').textContent(), /options\.layers/);

    // One finished analysis and one still running when the server dies.
    const done = await submit(page, { text: 'Kept across reconnections', layers: '28-30' });
    await done.locator('.status-line[data-status="completed"]').waitFor();
    await nextFrame(page);
    const doneCells = await done.locator('table.heatmap td').allTextContents();
    const running = await submit(page, { text: LONG_TEXT });
    await running.locator('.status-line[data-status="running"]').waitFor({ timeout: 60_000 });
    const tabsBefore = await page.locator('#result-tabs [role="tab"]').allTextContents();

    await first.stop('SIGKILL');
    await page.locator('#conn-state[data-state="reconnecting"]').waitFor();
    assert.match(await page.locator('#conn-text').textContent(), /Reconnecting/);
    await running.locator('.status-line[data-status="interrupted"]').waitFor();
    assert.match(await running.locator('.status-line').textContent(), /Interrupted/);
    const runAgain = running.getByRole('button', { name: 'Run again' });
    assert.equal(await runAgain.isVisible(), true);
    await screenshot(page, 'desktop-reconnecting', running);

    const second = await startServer({ addr: `127.0.0.1:${first.port}`, data: first.dataDir });
    servers.push(second);
    await page.locator('#conn-state[data-state="connected"]').waitFor({ timeout: 30_000 });
    assert.equal(await page.locator('#conn-text').textContent(), 'Connected');
    // Every tab, input and result is still there.
    assert.deepEqual(await page.locator('#result-tabs [role="tab"]').allTextContents(), tabsBefore);
    assert.equal(await page.locator('#analyze-text').inputValue(), LONG_TEXT);
    await page.locator('#result-tabs [role="tab"]').nth(2).click();
    assert.deepEqual(await currentResult(page).locator('table.heatmap td').allTextContents(), doneCells);
    // The current model was sent again: the switcher shows it and analyses need no re-pick.
    await page.locator('.model-row.current[data-model="smollm2-tuned"]').waitFor();
    await screenshot(page, 'desktop-reconnected');

    // Run the interrupted analysis again on the new server, then cancel it.
    await page.locator('#result-tabs [role="tab"]').nth(3).click();
    await runAgain.click();
    const again = currentResult(page);
    await again.locator('.status-line[data-status="running"]').waitFor({ timeout: 60_000 });
    await again.getByRole('button', { name: 'Cancel' }).click();
    await again.locator('.status-line[data-status="cancelled"]').waitFor();

    // A graceful shutdown is announced before the connection closes.
    await second.stop('SIGTERM');
    await page.locator('#banner', { hasText: 'shutting down' }).waitFor();
    await page.locator('#conn-state[data-state="reconnecting"]').waitFor();
    await screenshot(page, 'desktop-server-shutdown');
    assert.deepEqual(errors.filter((e) => !/WebSocket|ERR_CONNECTION_REFUSED/.test(e)), []);
    await context.close();
  });
});

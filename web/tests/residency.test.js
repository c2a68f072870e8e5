// Residency in the switcher: an admin unloads a group to disk and preloads it again, watching
// its badge; a second, anonymous browser context sees the same changes without reloading, and
// has no admin controls.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, openPage, screenshot, modelsReady, chooseModel, tickLenses, currentResult, ADMIN_KEY, api } from './lib/harness.js';

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

const GROUP = 'smollm2-135m';
const badge = (page, model) => page.locator(`.model-row[data-model="${model}"] .tier-badge`);

describe('model residency', () => {
  test('admin unload to disk and preload; another user sees the badges change live', { timeout: 120_000 }, async () => {
    const admin = await openPage(browser, server.url);
    const other = await openPage(browser, server.url);
    await Promise.all([modelsReady(admin.page), modelsReady(other.page)]);
    // The default group is preloaded in the background at start.
    await badge(admin.page, 'smollm2-tuned').and(admin.page.locator('[data-tier="device"]')).waitFor({ timeout: 60_000 });

    // Anonymous: no admin controls.
    assert.equal(await admin.page.locator('#role').textContent(), 'anonymous');
    assert.equal(await admin.page.locator('.group-admin:visible').count(), 0);

    await admin.page.locator('#api-key').fill(ADMIN_KEY);
    await admin.page.getByRole('button', { name: 'Use key' }).click();
    await admin.page.locator('#role[data-role="admin"]').waitFor();
    const card = admin.page.locator(`.group-card[data-group="${GROUP}"]`);
    await card.locator('.group-admin').waitFor();
    assert.equal(await other.page.locator('.group-admin:visible').count(), 0);
    assert.equal(await other.page.locator('#role').textContent(), 'anonymous');

    await card.getByRole('button', { name: 'Unload to disk' }).click();
    await card.locator('.group-progress', { hasText: 'Unloaded' }).waitFor();
    await badge(admin.page, 'smollm2-tuned').and(admin.page.locator('[data-tier="disk"]')).waitFor();
    assert.equal(await badge(admin.page, 'smollm2-logit').textContent(), 'disk');
    // The server agrees.
    const groups = await api(server, '/api/v2/groups');
    const g = groups.groups.find((x) => x.group_id === GROUP);
    assert.equal(g.base_tier, 'disk');
    const tuned = g.models.find((m) => m.id === 'smollm2-tuned');
    assert.ok(tuned.residency.estimated_ready_ms > 0);
    assert.match(await admin.page.locator('.model-row[data-model="smollm2-tuned"] .ready').textContent(), /^~\d/);
    // The other user's page follows without a reload.
    await badge(other.page, 'smollm2-tuned').and(other.page.locator('[data-tier="disk"]')).waitFor({ timeout: 30_000 });
    await screenshot(admin.page, 'desktop-admin-unloaded', card);

    // An analysis now has to load the base: its tab goes through queued, starting, loading (with the
    // bytes the server reported) and running before it completes.
    await chooseModel(admin.page, 'smollm2-tuned');
    await tickLenses(admin.page, ['smollm2-tuned']);
    await admin.page.locator('#analyze-text').fill('Loaded from disk for this one');
    await admin.page.locator('#analyze-layers').fill('29-30');
    await admin.page.locator('#analyze-submit').click();
    const result = currentResult(admin.page);
    await result.locator('.status-line[data-status="completed"]').waitFor({ timeout: 60_000 });
    const progress = result.locator('.request-progress');
    assert.deepEqual((await progress.getAttribute('data-stages')).split(' '), ['sending', 'queued', 'starting', 'loading', 'running', 'completed']);
    assert.ok(Number(await progress.getAttribute('data-loaded-bytes')) > 100e6, 'the base load reports its bytes');
    await badge(other.page, 'smollm2-tuned').and(other.page.locator('[data-tier="device"]')).waitFor();
    await card.getByRole('button', { name: 'Unload to disk' }).click();
    await badge(other.page, 'smollm2-tuned').and(other.page.locator('[data-tier="disk"]')).waitFor();

    await card.getByRole('button', { name: 'Preload' }).click();
    await card.locator('.group-progress', { hasText: /Preloading|loading|Preloaded/ }).waitFor();
    await card.locator('.group-progress', { hasText: 'Preloaded' }).waitFor({ timeout: 60_000 });
    await badge(admin.page, 'smollm2-tuned').and(admin.page.locator('[data-tier="device"]')).waitFor();
    await badge(other.page, 'smollm2-tuned').and(other.page.locator('[data-tier="device"]')).waitFor({ timeout: 30_000 });
    assert.equal(await other.page.locator('.model-row[data-model="smollm2-tuned"] .ready').textContent().then((t) => t === '' || t === 'ready'), true);
    await screenshot(admin.page, 'desktop-admin-preloaded', card);
    await screenshot(other.page, 'desktop-other-user-preloaded', other.page.locator('#switcher'));

    assert.deepEqual(admin.errors, []);
    assert.deepEqual(other.errors, []);
    await admin.context.close();
    await other.context.close();
  });
});

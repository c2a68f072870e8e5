// The original site's model_groups.json layout (with lensd's `lens` additions): the page lists
// the groups with their descriptions and layers, hides hidden and backend-only models from an
// anonymous user (an admin sees them), and an analysis works.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, launchBrowser, openPage, screenshot, modelsReady, chooseModel, tickLenses, currentResult, tempDir, MODEL_FILE, TUNED_LENS, ADMIN_KEY } from './lib/harness.js';

let server;
let browser;

/** A config in the original's layout, every model saying which lens it is. */
function originalConfig() {
  return {
    model_groups: [
      {
        group_id: 'smollm2-chat',
        group_name: 'SmolLM2 chat lenses',
        base_model_path: MODEL_FILE,
        description: 'Lenses over the demo chat model, in the original layout',
        visible: true,
        backend_only: false,
        models: [
          { id: 'chat-l30-tuned', name: 'Tuned lens L30', description: 'The fitted demo lens', layer: 30, batch_size: 48, auto_batch_size_max: 768, visible: true, backend_only: false, lens: 'tuned', lens_checkpoint_path: TUNED_LENS },
          { id: 'chat-l20-logit', name: 'Logit lens L20', description: 'No weights of its own', layer: 20, batch_size: 64, auto_batch_size_max: 768, visible: true, backend_only: false, lens: 'logit' },
          { id: 'chat-hidden', name: 'Hidden lens', description: 'For admins only', layer: 10, batch_size: 48, auto_batch_size_max: 768, visible: false, backend_only: false, lens: 'logit' },
          { id: 'chat-backend', name: 'Backend-only lens', description: 'Needs a key', layer: 10, batch_size: 48, auto_batch_size_max: 768, visible: true, backend_only: true, lens: 'logit' },
        ],
      },
      {
        group_id: 'smollm2-secret',
        group_name: 'SmolLM2 backend group',
        base_model_path: MODEL_FILE,
        description: 'A group only key holders see',
        backend_only: true,
        models: [
          { id: 'secret-logit', name: 'Secret logit lens', description: '', layer: 30, batch_size: 48, auto_batch_size_max: 512, visible: true, backend_only: false, lens: 'logit' },
        ],
      },
    ],
    settings: { default_group: 'smollm2-chat', max_cpu_models: 2, use_bf16: false },
  };
}

before(async () => {
  const dir = tempDir('config');
  const config = join(dir, 'model_groups.json');
  writeFileSync(config, JSON.stringify(originalConfig(), null, 2));
  // The browser first: if the server cannot start, `after` still closes it.
  browser = await launchBrowser();
  server = await startServer({ config });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

describe("the original's model_groups.json layout", () => {
  test('groups with descriptions and layers; hidden and backend-only models only for key holders; analysis works', { timeout: 120_000 }, async () => {
    const { page, context, errors } = await openPage(browser, server.url);
    await modelsReady(page);
    const cards = page.locator('.group-card');
    assert.equal(await cards.count(), 1, 'the backend-only group is not listed to an anonymous user');
    const card = cards.first();
    assert.equal(await card.locator('.group-name').textContent(), 'SmolLM2 chat lenses');
    assert.equal(await card.locator('.group-desc').textContent(), 'Lenses over the demo chat model, in the original layout');
    assert.match(await card.locator('.group-meta').textContent(), /30 layers · d_model 576/);
    const models = await card.locator('.model-row').evaluateAll((rows) => rows.map((r) => r.dataset.model));
    assert.deepEqual(models, ['chat-l30-tuned', 'chat-l20-logit']);
    assert.equal(await card.locator('.model-row[data-model="chat-l20-logit"] .model-layer').textContent(), 'L20');
    assert.equal(await card.locator('.model-row[data-model="chat-l30-tuned"] .model-desc').textContent(), 'The fitted demo lens');
    await screenshot(page, 'desktop-original-config', page.locator('#switcher'));

    // An analysis with the tuned lens of this configuration.
    await chooseModel(page, 'chat-l30-tuned');
    await tickLenses(page, ['chat-l30-tuned']);
    await page.locator('#analyze-text').fill('Configured the old way, served the new way');
    await page.locator('#analyze-layers').fill('0-30:10');
    await page.locator('#analyze-submit').click();
    const result = currentResult(page);
    await result.locator('.status-line[data-status="completed"]').waitFor();
    // The heatmap redraws on the next animation frame after the last rows.
    await result.locator('table.heatmap tbody th').nth(3).waitFor();
    assert.deepEqual(await result.locator('table.heatmap tbody th').allTextContents(), ['L30', 'L20', 'L10', 'L0']);
    assert.ok((await result.locator('table.heatmap td:not(.empty)').count()) > 0);
    await screenshot(page, 'desktop-original-config-analysis', result);

    // With the admin key the hidden model, the backend-only model and group appear.
    await page.locator('#api-key').fill(ADMIN_KEY);
    await page.getByRole('button', { name: 'Use key' }).click();
    await page.locator('.model-row[data-model="chat-hidden"]').waitFor();
    await page.locator('.model-row[data-model="chat-backend"]').waitFor();
    await page.locator('.group-card[data-group="smollm2-secret"]').waitFor();
    assert.deepEqual(errors, []);
    await context.close();
  });
});

// Chat input: one user turn goes as `text` with `chat: true`; several turns (system, user,
// assistant) go as `messages` and are rendered with the model's chat template; a generation
// sent to analysis becomes user + assistant turns.

import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, launchBrowser, openPage, screenshot, chooseModel, tickLenses, currentResult } from './lib/harness.js';

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

async function setTurns(page, form, turns) {
  await page.locator(`input[name="${form}-mode"][value="chat"]`).check();
  const box = page.locator(`#${form}-form .turns`);
  while ((await box.locator('.turn').count()) < turns.length) await page.locator(`#${form}-form .add-turn`).click();
  while ((await box.locator('.turn').count()) > turns.length) await box.locator('.turn').last().getByRole('button', { name: 'Remove this turn' }).click();
  for (const [i, t] of turns.entries()) {
    await box.locator('.turn').nth(i).locator('select').selectOption(t.role);
    await box.locator('.turn').nth(i).locator('textarea').fill(t.content);
  }
}

const headerText = async (result) => (await result.locator('table.heatmap thead th:not(.corner)').allTextContents()).join('').replace(/␣/g, ' ').replace(/↵/g, '\n');

describe('chat input', () => {
  test('one user turn, several turns as messages, and a generation sent to analysis as turns', { timeout: 120_000 }, async () => {
    const { page, context, errors } = await openPage(browser, server.url);
    await chooseModel(page, 'smollm2-tuned');
    await tickLenses(page, ['smollm2-tuned']);
    await page.locator('#analyze-layers').fill('26-30');

    // One user turn: rendered with the chat template by the server (`chat: true`).
    await setTurns(page, 'analyze', [{ role: 'user', content: 'Name a red fruit.' }]);
    await page.locator('#analyze-submit').click();
    let result = currentResult(page);
    await result.locator('.status-line[data-status="completed"]').waitFor();
    let text = await headerText(result);
    assert.ok(text.includes('<|im_start|>user\nName a red fruit.<|im_end|>'), text);

    // Several turns: sent as `messages`.
    const turns = [
      { role: 'system', content: 'You answer in one word.' },
      { role: 'user', content: 'Name a red fruit.' },
      { role: 'assistant', content: 'Cherry.' },
    ];
    await setTurns(page, 'analyze', turns);
    const tabs = page.locator('#result-tabs [role="tab"]');
    const count = await tabs.count();
    await page.locator('#analyze-submit').click();
    await tabs.nth(count).waitFor();
    result = currentResult(page);
    await result.locator('.status-line[data-status="completed"]').waitFor();
    text = await headerText(result);
    for (const t of turns) assert.ok(text.includes(`<|im_start|>${t.role}\n${t.content}<|im_end|>`), `${t.role} turn in ${text}`);
    await screenshot(page, 'desktop-chat-analysis', result);

    // A generation from chat turns, sent to analysis as user + assistant turns.
    await page.locator('#tab-generate').click();
    await setTurns(page, 'generate', [{ role: 'user', content: 'What colour is the sky?' }]);
    await page.locator('#gen-max-tokens').fill('10');
    await page.locator('#generate-submit').click();
    const gen = currentResult(page);
    await gen.locator('.status-line[data-status="completed"]').waitFor();
    const reply = (await gen.locator('.gen-reply').textContent()).trim();
    await gen.getByRole('button', { name: 'Send to analysis' }).click();
    const analysis = page.locator('#result-panels > .tab-panel:not([hidden]) .analysis-result');
    await analysis.locator('.status-line[data-status="completed"]').waitFor();
    assert.match(await analysis.locator('.input-summary').textContent(), /chat turns/);
    text = await headerText(analysis);
    assert.ok(text.includes('<|im_start|>user\nWhat colour is the sky?<|im_end|>'), text);
    assert.ok(text.includes(`<|im_start|>assistant\n${reply}`), `${reply} as the assistant turn in ${text}`);
    assert.deepEqual(errors, []);
    await context.close();
  });
});

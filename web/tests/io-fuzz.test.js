// Fuzzing of the import parser (web/static/js/io.js) without a browser: seeded mutations of
// every layout the page reads. Each input must either import (every result of a known kind,
// with a line number in the file) or be refused with an ImportError naming a line of the
// file; any other exception is a bug, reported with the input that caused it.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseImport, ImportError, toJsonl, FORMAT_VERSION } from '../static/js/io.js';

const ROUNDS = Number(process.env.IO_FUZZ_ROUNDS ?? 20000);

const SEEDS = [
  JSON.stringify({ metadata: { model_id: 'm', layer: 30 }, data: [{ position: 0, token: 'A', explanation: 'first', mse: 0.5 }] }, null, 2),
  `${JSON.stringify([{ token: 'A', explanation: 'ok' }])}\n${JSON.stringify({ token: { 0: 'x', 1: 'y' }, explanation: { 0: 'ex', 1: 'why' } })}\n`,
  toJsonl([
    { format: 'lensd.generation', version: FORMAT_VERSION, input: { prompt: 'Hi' }, reply: 'Hello' },
    { format: 'lensd.explanations', version: FORMAT_VERSION, title: 't', rows: [{ token: 'a', explanation: 'b' }] },
  ]),
  toJsonl([{ format: 'lensd.analysis', version: FORMAT_VERSION, input: { text: 'x' }, options: { top_k: 1 }, analyses: [] }]),
  '{"a": "\\"}", "b": [1, {"c": "]"}]}\n[1, 2]',
];

const PIECES = ['{', '}', '[', ']', '"', '\\', ',', ':', '\n', '\r\n', ' ', 'null', 'true', '0', '-1e999', '"data"', '"format"', '"lensd.analysis"', '"version"', '1', '\ufeff', '\u2028', '"token"', '"explanation"', '{"0": "x"}', '[]', '{}'];

/** mulberry32: a small seeded generator, so that a failure can be replayed. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function mutate(text, r) {
  const pick = (n) => Math.floor(r() * n);
  let s = text;
  for (let k = 1 + pick(4); k > 0; k -= 1) {
    const at = pick(s.length + 1);
    switch (pick(5)) {
      case 0: s = s.slice(0, at) + s.slice(at + 1 + pick(8)); break; // delete
      case 1: s = s.slice(0, at) + PIECES[pick(PIECES.length)] + s.slice(at); break; // insert
      case 2: s = s.slice(0, at) + String.fromCharCode(pick(0x3000)) + s.slice(at + 1); break; // replace
      case 3: s = s.slice(0, at); break; // cut
      default: s = s + s.slice(pick(s.length)); break; // repeat a tail
    }
  }
  return s;
}

test(`the import parser imports or refuses ${ROUNDS} mutated files, naming a line of the file`, () => {
  const r = rng(1);
  let imported = 0;
  let refused = 0;
  for (let i = 0; i < ROUNDS; i += 1) {
    const text = mutate(SEEDS[i % SEEDS.length], r);
    const lines = text.split('\n').length;
    let results;
    try {
      results = parseImport(text);
    } catch (e) {
      if (!(e instanceof ImportError)) {
        assert.fail(`round ${i}: ${e?.constructor?.name}: ${e?.message}\ninput: ${JSON.stringify(text)}`);
      }
      assert.ok(Number.isInteger(e.line) && e.line >= 1 && e.line <= lines, `round ${i}: line ${e.line} of ${lines}: ${JSON.stringify(text)}`);
      assert.match(e.message, /^line \d+: \S/);
      refused += 1;
      continue;
    }
    assert.ok(Array.isArray(results) && results.length > 0, JSON.stringify(text));
    for (const res of results) {
      assert.ok(['analysis', 'generation', 'explanations'].includes(res.kind), `round ${i}: kind ${res.kind}`);
      assert.ok(Number.isInteger(res.line) && res.line >= 1 && res.line <= lines, `round ${i}: line ${res.line}`);
    }
    imported += 1;
  }
  // The mutations reach both outcomes, or the test says nothing.
  assert.ok(imported > ROUNDS / 100 && refused > ROUNDS / 100, `imported ${imported}, refused ${refused}`);
});

test('a file of separators alone is refused, not imported as nothing (found by the fuzzer)', () => {
  for (const text of [',', ' ,\n, ', '\ufeff,']) {
    assert.throws(() => parseImport(text), (e) => e instanceof ImportError && e.line === 1 && /no JSON object or array/.test(e.message));
  }
});

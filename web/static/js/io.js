// Export and import of results. lensd's own format is JSON Lines, one versioned object per
// line (`lensd.analysis`, `lensd.generation`, `lensd.explanations`, version 1; docs/web.md
// describes it). Import also reads the original site's exports: concatenated or
// newline-separated JSON values, each `{metadata, data}`, a bare array of rows, or
// column-oriented `{column: {index: value}}`. Anything else is refused with the line where it
// went wrong, and nothing of a refused file is imported.

export const FORMAT_VERSION = 1;
const FORMATS = ['lensd.analysis', 'lensd.generation', 'lensd.explanations'];

export class ImportError extends Error {
  constructor(line, message) {
    super(`line ${line}: ${message}`);
    this.line = line;
  }
}

/** One JSON object per line. */
export function toJsonl(objects) {
  return objects.map((o) => JSON.stringify(o)).join('\n') + '\n';
}

function lineAt(text, index, from = { index: 0, line: 1 }) {
  let line = from.line;
  for (let i = from.index; i < index; i += 1) if (text.charCodeAt(i) === 10) line += 1;
  return line;
}

/**
 * Splits text into its top-level JSON values (objects or arrays), each with the line it
 * starts on. Values may follow each other on one line, on separate lines, or span lines.
 */
export function splitValues(text) {
  const values = [];
  const closers = { '{': '}', '[': ']' };
  let i = 0;
  let mark = { index: 0, line: 1 };
  const at = (index) => {
    mark = { index, line: lineAt(text, index, mark) };
    return mark.line;
  };
  while (i < text.length) {
    const c = text[i];
    if (c === ' ' || c === '\n' || c === '\r' || c === '\t' || c === '\ufeff' || c === ',') {
      i += 1;
      continue;
    }
    const startLine = at(i);
    if (!closers[c]) {
      const end = text.indexOf('\n', i);
      const snippet = text.slice(i, end < 0 ? undefined : end).trim().slice(0, 40);
      throw new ImportError(startLine, `unexpected text “${snippet}” outside a JSON object or array`);
    }
    const stack = [closers[c]];
    let j = i + 1;
    let inString = false;
    for (; j < text.length && stack.length > 0; j += 1) {
      const d = text[j];
      if (inString) {
        if (d === '\\') j += 1;
        else if (d === '"') inString = false;
      } else if (d === '"') inString = true;
      else if (d === '{' || d === '[') stack.push(closers[d]);
      else if (d === '}' || d === ']') {
        const want = stack.pop();
        if (d !== want) throw new ImportError(at(j), `“${d}” where “${want}” was expected (the value starts on line ${startLine})`);
      }
    }
    if (stack.length > 0) throw new ImportError(startLine, 'the JSON value that starts here is never closed');
    values.push({ line: startLine, source: text.slice(i, j) });
    i = j;
  }
  return values;
}

/** Parses each value; JSON errors name the value's line. */
function parseValues(text) {
  // A JSON Lines file whose every line stands alone is read line by line, so that an error
  // names its own line even when brackets would balance across lines.
  const lines = text.split('\n');
  const nonEmpty = lines.map((l, i) => ({ l: l.trim(), line: i + 1 })).filter((x) => x.l);
  const firstAlone = nonEmpty.length > 0 && (() => {
    try {
      JSON.parse(nonEmpty[0].l);
      return /^[[{]/.test(nonEmpty[0].l);
    } catch {
      return false;
    }
  })();
  const byValue = () =>
    splitValues(text).map(({ line, source }) => {
      try {
        return { line, value: JSON.parse(source) };
      } catch (e) {
        throw new ImportError(line, `not valid JSON (${e.message})`);
      }
    });
  if (!firstAlone || nonEmpty.length < 2) return byValue();
  try {
    return nonEmpty.map(({ l, line }) => {
      try {
        return { line, value: JSON.parse(l) };
      } catch (e) {
        throw new ImportError(line, `not valid JSON (${e.message}); each line of a JSON Lines file must be one JSON value`);
      }
    });
  } catch (lineError) {
    // Perhaps values spread over several lines after all.
    try {
      return byValue();
    } catch {
      throw lineError;
    }
  }
}

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Rows of the original's column-oriented form `{column: {index: value}}`. */
function fromColumns(obj, line) {
  const byIndex = new Map();
  for (const [col, values] of Object.entries(obj)) {
    if (!isObject(values)) throw new ImportError(line, `column “${col}” is not an object of {index: value}`);
    for (const [k, v] of Object.entries(values)) {
      if (!/^\d+$/.test(k)) throw new ImportError(line, `column “${col}” has the key “${k}”, which is not a row index`);
      const i = Number(k);
      if (!byIndex.has(i)) byIndex.set(i, {});
      byIndex.get(i)[col] = v;
    }
  }
  return [...byIndex.keys()].sort((a, b) => a - b).map((i) => byIndex.get(i));
}

function isColumnar(obj) {
  const values = Object.values(obj);
  return values.length > 0 && values.every((v) => isObject(v) && Object.keys(v).every((k) => /^\d+$/.test(k)));
}

/**
 * Checks explanation rows and rebuilds `explanation` from `explanation_structured`. `where`
 * names the rows in messages; `allowEmpty` accepts none (a talkative lens cancelled early).
 */
export function normaliseRows(rows, line, { where = null, allowEmpty = false } = {}) {
  if (!Array.isArray(rows) || (rows.length === 0 && !allowEmpty)) throw new ImportError(line, 'there are no rows');
  const name = (i) => (where ? `${where}[${i}]` : `row ${i}`);
  return rows.map((row, i) => {
    if (!isObject(row)) throw new ImportError(line, `${name(i)} is not an object`);
    if (!('token' in row) && !('explanation' in row) && !('explanation_structured' in row)) {
      throw new ImportError(line, `${name(i)} has none of the columns token, explanation or explanation_structured`);
    }
    const out = { ...row };
    if ((out.explanation === undefined || out.explanation === null) && Array.isArray(out.explanation_structured)) {
      out.explanation = out.explanation_structured.join(' ');
    }
    if (out.position === undefined) out.position = i;
    return out;
  });
}

const TALKATIVE_OPTIONS = ['best_of_k', 'temperature', 'seed', 'salience', 'kl'];

/** An export's options: layers and top-k (defaults where missing) unless it only has talkative ones. */
function analysisOptions(o) {
  const out = {};
  const talkative = TALKATIVE_OPTIONS.some((k) => k in o);
  if (!talkative || 'layers' in o || 'top_k' in o) {
    out.layers = o.layers ?? 'all';
    out.top_k = o.top_k ?? 5;
  }
  for (const k of TALKATIVE_OPTIONS) if (k in o) out[k] = o[k];
  return out;
}

function checkAnalysis(v, line) {
  if (!Array.isArray(v.analyses) || v.analyses.length === 0) {
    throw new ImportError(line, 'a lensd.analysis line needs `analyses`, a non-empty array of {lens, tokens, layers} (and `explanations` for a talkative lens)');
  }
  v.analyses.forEach((a, i) => {
    if (!isObject(a) || typeof a.lens !== 'string') throw new ImportError(line, `analyses[${i}] has no \`lens\` name`);
    if (!Array.isArray(a.tokens) || a.tokens.some((t) => !isObject(t) || typeof t.text !== 'string')) {
      throw new ImportError(line, `analyses[${i}].tokens must be an array of {id, text}`);
    }
    if (!Array.isArray(a.layers) || a.layers.some((l) => !isObject(l) || !Number.isInteger(l.layer) || !Array.isArray(l.positions))) {
      throw new ImportError(line, `analyses[${i}].layers must be an array of {layer, positions}`);
    }
    // A talkative lens: explanation rows, one per position.
    if ('explanations' in a) {
      if (!Array.isArray(a.explanations)) throw new ImportError(line, `analyses[${i}].explanations must be an array of explanation rows`);
      a.explanations = normaliseRows(a.explanations, line, { where: `analyses[${i}].explanations`, allowEmpty: true });
    }
  });
  if (!isObject(v.input)) throw new ImportError(line, 'a lensd.analysis line needs its `input` ({text} or {messages})');
  return {
    kind: 'analysis',
    line,
    data: {
      request_id: typeof v.request_id === 'string' ? v.request_id : null,
      status: typeof v.status === 'string' ? v.status : 'completed',
      models: Array.isArray(v.models) ? v.models : v.analyses.map((a) => a.lens),
      input: v.input,
      options: analysisOptions(isObject(v.options) ? v.options : {}),
      analyses: v.analyses,
    },
  };
}

function classify({ line, value: v }) {
  if (isObject(v) && typeof v.format === 'string') {
    if (!FORMATS.includes(v.format)) {
      throw new ImportError(line, `unknown format “${v.format}”; this page reads ${FORMATS.join(', ')}`);
    }
    if (v.version !== FORMAT_VERSION) {
      throw new ImportError(line, `${v.format} version ${JSON.stringify(v.version)} is not one this page reads (version ${FORMAT_VERSION})`);
    }
    if (v.format === 'lensd.analysis') return checkAnalysis(v, line);
    if (v.format === 'lensd.generation') {
      if (typeof v.reply !== 'string' || !isObject(v.input)) throw new ImportError(line, 'a lensd.generation line needs `input` and `reply`');
      return { kind: 'generation', line, data: v };
    }
    return { kind: 'explanations', line, title: v.title ?? null, metadata: isObject(v.metadata) ? v.metadata : {}, rows: normaliseRows(v.rows, line) };
  }
  if (isObject(v) && 'data' in v) {
    const data = isObject(v.data) && isColumnar(v.data) ? fromColumns(v.data, line) : v.data;
    if (!Array.isArray(data)) throw new ImportError(line, '`data` must be an array of rows (or {column: {index: value}})');
    return { kind: 'explanations', line, title: null, metadata: isObject(v.metadata) ? v.metadata : {}, rows: normaliseRows(data, line) };
  }
  if (Array.isArray(v)) return { kind: 'explanations', line, title: null, metadata: {}, rows: normaliseRows(v, line) };
  if (isObject(v) && isColumnar(v)) return { kind: 'explanations', line, title: null, metadata: {}, rows: normaliseRows(fromColumns(v, line), line) };
  throw new ImportError(
    line,
    'not a lensd export line (with "format") nor one of the original formats ({metadata, data}, an array of rows, or {column: {index: value}})',
  );
}

/** Parses a whole file; throws an ImportError for the first thing wrong. */
export function parseImport(text) {
  if (!text.trim()) throw new ImportError(1, 'the file is empty');
  const values = parseValues(text);
  if (values.length === 0) throw new ImportError(1, 'the file holds no JSON object or array');
  return values.map(classify);
}

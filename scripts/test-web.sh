#!/usr/bin/env bash
# Runs the web page's real-browser tests (web/tests, docs/web.md): Debian's Chromium driven by
# playwright-core under Node's test runner, each test file against its own `lensd serve` of the
# built binary (LENSD_BIN, default target/release/lensd), with the page built into it.
# Fetches the demo model, fits the demo tuned lens and writes the untrained demo talkative lens
# first when they are missing. Extra arguments go to `node --test` (for example
# --test-name-pattern=cancel). Screenshots land in web/tests/artifacts/ (or
# $LENSD_WEB_ARTIFACTS).
set -euo pipefail
cd "$(dirname "$0")/.."

# Chromium and Node.js come from Debian's packages; as root they are installed when missing.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test-web: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "test-web: ${missing[*]} missing; install with: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

export LENSD_BIN="$(realpath -m "${LENSD_BIN:-target/release/lensd}")"
if [ ! -x "$LENSD_BIN" ]; then
  echo "test-web: no lensd binary at $LENSD_BIN; build it with: cargo build --release -p lensd (or set LENSD_BIN)" >&2
  exit 1
fi

if [ ! -f models/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  scripts/fetch-demo-model.sh
fi
lens=models/lenses/smollm2-135m-tuned
if [ ! -f "$lens/params.safetensors" ]; then
  echo "test-web: fitting the demo tuned lens (about three minutes)" >&2
  scripts/prepare-demo-corpus.sh
  "$LENSD_BIN" fit-lens --corpus data/demo-corpus.txt --out "$lens"
fi
talkative=models/lenses/smollm2-135m-talkative-untrained
if [ ! -f "$talkative/talkative.json" ]; then
  "$LENSD_BIN" init-talkative --out "$talkative" --layer 15
fi

# playwright-core is the only dependency; it brings no browser of its own.
if [ ! -f web/tests/node_modules/.package-lock.json ] ||
  [ web/tests/package-lock.json -nt web/tests/node_modules/.package-lock.json ]; then
  (cd web/tests && npm ci --no-audit --no-fund --loglevel=error)
fi

# One test file at a time: each starts servers and a browser, and the machine has two cores.
concurrency=()
if node --help | grep -q -- '--test-concurrency'; then
  concurrency=(--test-concurrency=1)
fi
cd web/tests
exec node --test "${concurrency[@]}" "$@" \
  io-fuzz.test.js analyze.test.js io.test.js talkative.test.js residency.test.js config.test.js \
  reconnect.test.js chat.test.js original.test.js

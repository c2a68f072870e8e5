#!/usr/bin/env bash
# Runs lensd's whole test suite on a fresh machine: fetches the demo model and assembles the
# demo corpus the tests read (both idempotent), runs every Rust test, then the web page's tests
# in a real browser (scripts/test-web.sh, which installs Chromium as root when it is missing).
# Extra arguments go to `cargo test` (for example a test name filter); LENSD_WEB_TESTS=0 skips
# the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-demo-model.sh
scripts/prepare-demo-corpus.sh
cargo test --release --workspace "$@"
if [ "${LENSD_WEB_TESTS:-1}" != 0 ]; then
  cargo build --release -p lensd
  scripts/test-web.sh
fi

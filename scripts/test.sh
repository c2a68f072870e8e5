#!/usr/bin/env bash
# Runs lensd's whole test suite on a fresh machine: fetches the demo model and assembles the
# demo corpus the tests read (both idempotent), then runs every test. Extra arguments go to
# `cargo test` (for example a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-demo-model.sh
scripts/prepare-demo-corpus.sh
cargo test --release --workspace "$@"

#!/usr/bin/env bash
# Benchmarks lensd against llama.cpp (llama-cpp-python) on the demo model in one run: the same
# GGUF file, token ids and thread count, measured back to back. Prints a markdown table of
# ratios and keeps the raw JSON in bench/results/. Not part of the tests.
#
# The llama.cpp peer lives in tools/.venv; tools/setup-venv.sh builds it (about 15 minutes the
# first time). Set THREADS to change the thread count (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${THREADS:-2}"
scripts/fetch-demo-model.sh >/dev/null
if ! tools/.venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  tools/setup-venv.sh
fi
cargo build --release -p lensd
out=bench/results
mkdir -p "$out"
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
echo "bench: lensd" >&2
CANDLE_NUM_THREADS="$threads" target/release/lensd bench --model "$model" --format json >"$out/lensd.json"
python3 -c 'import json,sys; print(json.dumps({"ids": json.load(open(sys.argv[1]))["ids"]}))' "$out/lensd.json" >"$out/ids.json"
echo "bench: llama.cpp" >&2
tools/.venv/bin/python bench/llamacpp.py --model "$model" --ids "$out/ids.json" --threads "$threads" >"$out/llamacpp.json"
python3 bench/compare.py "$out/lensd.json" "$out/llamacpp.json" | tee "$out/summary.md"

#!/usr/bin/env bash
# What the heap setting of `lensd serve` costs in compute. `lensd serve` has glibc map every
# block of 1 MiB and more on its own (src/runtime.rs, `map_large_blocks`); this times the demo
# model's prefill, decode and all-layer lens analysis (`lensd bench --only PART`, f32) with
# glibc's default settings and with that threshold (set through GLIBC_TUNABLES, which is the
# same setting), alternating ROUNDS times, and prints each part's median seconds per setting
# and their ratio.
#
#   bench/heap.sh            # 3 rounds
#   ROUNDS=5 bench/heap.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
scripts/fetch-demo-model.sh >&2
cargo build --release -p lensd >&2
lensd=target/release/lensd
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
runs=$(mktemp)
trap 'rm -f "$runs"' EXIT
for part in prefill decode analysis; do
  for round in $(seq "$rounds"); do
    for setting in default mapped; do
      tunables=""
      [ "$setting" = mapped ] && tunables="glibc.malloc.mmap_threshold=1048576"
      seconds=$(GLIBC_TUNABLES="$tunables" "$lensd" bench --model "$model" --only "$part" \
        --dtype f32 --reps 5 | python3 -c 'import json, sys; print(json.load(sys.stdin)["median_seconds"])')
      echo "$part $setting $seconds" >>"$runs"
      echo "heap: $part round $round $setting ${seconds} s" >&2
    done
  done
done
python3 - "$runs" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    part, setting, seconds = line.split()
    runs.setdefault(part, {}).setdefault(setting, []).append(float(seconds))
print("| part | glibc default (s) | blocks of 1 MiB mapped (s) | mapped / default |")
print("|---|---:|---:|---:|")
for part, by in runs.items():
    d, m = statistics.median(by["default"]), statistics.median(by["mapped"])
    print(f"| {part} | {d:.4f} | {m:.4f} | {m / d:.3f} |")
PY

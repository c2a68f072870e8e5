#!/usr/bin/env bash
# The first checks of a CUDA build on a GPU (docs/gpu.md): for the tiny model of every family
# (testdata/tiny-*) and, when present, the demo model, the logit lens over every layer and
# position in bf16 on the GPU against f32 on the CPU (tools/compare_analyses.py: the same top-1
# wherever f32's margin is at least 0.5, entropy within 0.15 nats, KL within 0.15 nats + 3 %),
# and greedy generation compared token by token. Writes one JSON line per check to
# $OUT/gpu-check.jsonl and the device's memory before and after to $OUT/nvidia-smi.txt.
#
#   LENSD=path/to/cuda/lensd DEVICE=cuda:0 OUT=out scripts/gpu-check.sh
#
# The CUDA binary also computes on the CPU, so one binary gives both sides. With DEVICE=cpu
# (and a CPU build) the script checks itself on any machine: bf16 on the CPU against f32.
set -euo pipefail
cd "$(dirname "$0")/.."
lensd="${LENSD:-target/cuda/release/lensd}"
device="${DEVICE:-cuda:0}"
out="${OUT:-target/gpu-check}"
[ -x "$lensd" ] || { echo "gpu-check.sh: no lensd binary at $lensd (set LENSD)" >&2; exit 1; }
mkdir -p "$out"
log="$out/gpu-check.jsonl"
: >"$log"
failed=0
smi() { command -v nvidia-smi >/dev/null && nvidia-smi >>"$out/nvidia-smi.txt" 2>&1 || true; }
smi

text="The quick brown fox jumps over the lazy dog. Lenses read what a transformer predicts at every layer."
models=(testdata/tiny-llama testdata/tiny-llama3 testdata/tiny-qwen2 testdata/tiny-qwen3
  testdata/tiny-gemma2 testdata/tiny-gemma3)
[ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ] && models+=(models/SmolLM2-135M-Instruct.Q4_1.gguf)

for m in "${models[@]}"; do
  name="$(basename "$m")"
  "$lensd" analyze --model "$m" --device cpu --dtype f32 --layers all --top-k 5 \
    --text "$text" --format json >"$out/$name.cpu-f32.json"
  start=$(date +%s.%N)
  "$lensd" analyze --model "$m" --device "$device" --dtype bf16 --layers all --top-k 5 \
    --text "$text" --format json >"$out/$name.$device-bf16.json"
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  if verdict=$(python3 tools/compare_analyses.py "$out/$name.cpu-f32.json" "$out/$name.$device-bf16.json"); then
    ok=true
  else
    ok=false
    failed=1
  fi
  echo "{\"check\": \"analysis\", \"model\": \"$name\", \"device\": \"$device\", \"ok\": $ok, \"seconds\": $secs, \"result\": $verdict}" | tee -a "$log"

  "$lensd" generate --model "$m" --device cpu --dtype f32 --prompt "$text" --max-tokens 24 \
    --temperature 0 --format json >"$out/$name.gen-cpu-f32.json"
  "$lensd" generate --model "$m" --device "$device" --dtype bf16 --prompt "$text" --max-tokens 24 \
    --temperature 0 --format json >"$out/$name.gen-$device-bf16.json"
  same=$(python3 - "$out/$name.gen-cpu-f32.json" "$out/$name.gen-$device-bf16.json" <<'EOF'
import json, sys
a, b = (json.load(open(p))["ids"] for p in sys.argv[1:3])
n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
print(json.dumps({"tokens": len(a), "equal_prefix": n}))
EOF
)
  echo "{\"check\": \"greedy\", \"model\": \"$name\", \"device\": \"$device\", \"result\": $same}" | tee -a "$log"
done
smi
if [ "$failed" = 0 ]; then
  echo "gpu-check.sh: every analysis agreed ($log)" >&2
else
  echo "gpu-check.sh: some analyses disagreed; see $log" >&2
fi
exit "$failed"

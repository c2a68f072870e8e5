#!/usr/bin/env bash
# gpt-oss's speed on the CPU: decoding and a full logit-lens analysis of the tiny random
# gpt-oss (testdata/tiny-gptoss) by lensd (experts computed from their MXFP4 blocks, and
# widened to f32) against transformers on PyTorch in the same run, with the share of each
# engine's time spent in the experts. Prints a Markdown table.
#
#   bench/gptoss.sh        # about a minute once tools/.venv-original exists
#
# Needs tools/.venv-original (tools/setup-original-venv.sh: transformers 4.56.2, the first line
# with gpt-oss). Environment: THREADS (default 2), REPS (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${THREADS:-2}"
reps="${REPS:-5}"
py=tools/.venv-original/bin/python
[ -x "$py" ] || { echo "run tools/setup-original-venv.sh first" >&2; exit 1; }
cargo build --release -p lensd >/dev/null 2>&1 || cargo build --release -p lensd
export CANDLE_NUM_THREADS="$threads" RAYON_NUM_THREADS="$threads"
tokens=(--prompt-tokens 64 --decode-tokens 64 --lens-tokens 64)
out=bench/results/gptoss
mkdir -p "$out"
for part in decode analysis; do
  target/release/lensd bench --model testdata/tiny-gptoss/mxfp4 --only "$part" --dtype stored \
    --reps "$reps" "${tokens[@]}" >"$out/lensd-$part-mxfp4.json"
  target/release/lensd bench --model testdata/tiny-gptoss --only "$part" --dtype f32 \
    --reps "$reps" "${tokens[@]}" >"$out/lensd-$part-f32.json"
done
"$py" bench/gptoss.py --reps "$reps" --threads "$threads" "${tokens[@]}" >"$out/transformers.json"
"$py" - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
peer = json.loads((out / "transformers.json").read_text())
print(f"tiny gpt-oss, 64-token prompt, 64 decoded tokens, 64-token analysis; {peer['engine']}\n")
print("| part | lensd MXFP4 | lensd f32 | transformers f32 | lensd MXFP4 / transformers | experts' share (lensd MXFP4, transformers) |")
print("|---|---|---|---|---|---|")
for part in ("decode", "analysis"):
    mx = json.loads((out / f"lensd-{part}-mxfp4.json").read_text())
    f32 = json.loads((out / f"lensd-{part}-f32.json").read_text())
    tf = peer[part]
    speed = tf["median_seconds"] / mx["median_seconds"]
    print(f"| {part} | {mx['median_seconds']*1e3:.1f} ms | {f32['median_seconds']*1e3:.1f} ms | "
          f"{tf['median_seconds']*1e3:.1f} ms | {speed:.2f}x faster | "
          f"{mx['expert_share']:.0%}, {tf['expert_share']:.0%} |")
PY

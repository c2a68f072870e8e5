#!/usr/bin/env bash
# Sets up lensd on its embedded default and runs it: fetches the demo model (SmolLM2-135M) and
# Gemma-3-270M, builds lensd, fits a tuned lens for each (once; a few minutes on two cores),
# writes an untrained talkative lens for each for `lensd serve`, and prints a logit-lens and a
# tuned-lens reading of a sentence by both families. Extra arguments replace the sentence.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-demo-model.sh
scripts/fetch-gemma3.sh
scripts/prepare-demo-corpus.sh
cargo build --release -p lensd
lensd=target/release/lensd
lens=models/lenses/smollm2-135m-tuned
if [ ! -f "$lens/params.safetensors" ]; then
  "$lensd" fit-lens --corpus data/demo-corpus.txt --out "$lens"
fi
# An untrained talkative lens beside the trained one committed in lenses/: it runs the whole
# talkative path in `lensd serve`; its explanations mean nothing.
talkative=models/lenses/smollm2-135m-talkative-untrained
if [ ! -f "$talkative/talkative.json" ]; then
  "$lensd" init-talkative --out "$talkative" --layer 15
fi
# The second family: Gemma-3-270M, the family of the original site's default group.
gemma=models/gemma-3-270m-q4_k_m.gguf
gemma_lens=models/lenses/gemma3-270m-tuned
if [ ! -f "$gemma_lens/params.safetensors" ]; then
  "$lensd" fit-lens --model "$gemma" --corpus data/demo-corpus.txt --out "$gemma_lens" \
    --holdout-tokens 512
fi
gemma_talkative=models/lenses/gemma3-270m-talkative-untrained
if [ ! -f "$gemma_talkative/talkative.json" ]; then
  "$lensd" init-talkative --model "$gemma" --out "$gemma_talkative" --layer 9
fi
text="${*:-The Eiffel Tower is in the city of Paris, and the Colosseum is in the city of}"
"$lensd" analyze --lens logit --lens "$lens" --layers 0-30:3 --text "$text"
"$lensd" analyze --model "$gemma" --lens logit --lens "$gemma_lens" --layers 0-18:3 --text "$text"

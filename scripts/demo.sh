#!/usr/bin/env bash
# Sets up lensd on its embedded default and runs it: fetches the demo model, builds lensd,
# fits the demo tuned lens (once; about three minutes on two cores), writes an untrained
# talkative lens for `lensd serve`, and prints a logit-lens and a tuned-lens reading of a
# sentence. Extra arguments replace the sentence.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-demo-model.sh
scripts/prepare-demo-corpus.sh
cargo build --release -p lensd
lensd=target/release/lensd
lens=models/lenses/smollm2-135m-tuned
if [ ! -f "$lens/params.safetensors" ]; then
  "$lensd" fit-lens --corpus data/demo-corpus.txt --out "$lens"
fi
# An untrained talkative lens (no trained one exists for the demo model): it runs the whole
# talkative path in `lensd serve`; its explanations mean nothing.
talkative=models/lenses/smollm2-135m-talkative-untrained
if [ ! -f "$talkative/talkative.json" ]; then
  "$lensd" init-talkative --out "$talkative" --layer 15
fi
text="${*:-The Eiffel Tower is in the city of Paris, and the Colosseum is in the city of}"
"$lensd" analyze --lens logit --lens "$lens" --layers 0-30:3 --text "$text"

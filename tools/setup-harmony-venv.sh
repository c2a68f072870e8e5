#!/usr/bin/env bash
# Creates tools/.build/harmony/: a Python venv with openai-harmony (the reference renderer of
# gpt-oss's Harmony chat format) and, beside it, the o200k_base vocabulary that the package
# needs, for tools/gen_harmony_golden.py. Safe to run again. Everything it writes lies under
# tools/.build/, which is git-ignored.
#
# Why the vocabulary is fetched this way: openai-harmony loads `o200k_base.tiktoken` at run
# time and downloads it from OpenAI's blob storage when it is not cached, which these machines
# cannot reach. litellm's wheel on PyPI bundles tiktoken's cache files under
# litellm/litellm_core_utils/tokenizers/, each named by the sha1 of its download URL;
# fb374d419588a4632f3f557e76b4b70aebbca790 = sha1("https://openaipublic.blob.core.windows.net/
# encodings/o200k_base.tiktoken"). Only that one file is unzipped from the wheel (litellm is not
# installed), and its sha256 is checked against the one openai-harmony itself expects.
#
# How openai-harmony is pointed at it: with TIKTOKEN_ENCODINGS_BASE set to a folder, the
# package reads `<folder>/o200k_base.tiktoken` and checks its sha256, never touching the
# network (TIKTOKEN_RS_CACHE_DIR, the other variable it reads, would need the file named by
# the URL's sha1 instead). gen_harmony_golden.py sets the variable itself.
set -euo pipefail

tools="$(cd "$(dirname "$0")" && pwd)"
home="$tools/.build/harmony"
venv="$home/venv"
encodings="$home/encodings"
python="${PYTHON:-python3}"

HARMONY="openai-harmony==0.0.8"
PYDANTIC="pydantic==2.14.4"  # openai-harmony's only runtime dependency
LITELLM_VERSION="1.110.2"
VOCAB_IN_WHEEL="litellm/litellm_core_utils/tokenizers/fb374d419588a4632f3f557e76b4b70aebbca790"
VOCAB_SHA256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"

log() { echo "setup-harmony-venv: $*"; }
fail() { echo "setup-harmony-venv: $*" >&2; exit 1; }

mkdir -p "$home" "$encodings"
if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q "$HARMONY" "$PYDANTIC"

vocab="$encodings/o200k_base.tiktoken"
if [ -f "$vocab" ] && echo "$VOCAB_SHA256  $vocab" | sha256sum -c --status; then
  log "vocabulary already in place: $vocab"
else
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  log "downloading litellm==$LITELLM_VERSION (wheel only, not installed) for its o200k_base file"
  "${pip[@]}" download -q --no-deps --only-binary=:all: -d "$tmp" "litellm==$LITELLM_VERSION"
  wheel="$(ls "$tmp"/litellm-*.whl)"
  "$venv/bin/python" - "$wheel" "$VOCAB_IN_WHEEL" "$vocab.part" <<'EOF'
import sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
    f.write(z.read(member))
EOF
  echo "$VOCAB_SHA256  $vocab.part" | sha256sum -c --status \
    || fail "the o200k_base file in litellm==$LITELLM_VERSION has sha256 $(sha256sum "$vocab.part" | cut -d' ' -f1), expected $VOCAB_SHA256"
  mv "$vocab.part" "$vocab"
  log "vocabulary written: $vocab (sha256 $VOCAB_SHA256)"
fi

TIKTOKEN_ENCODINGS_BASE="$encodings" "$venv/bin/python" -c '
from openai_harmony import HarmonyEncodingName, load_harmony_encoding
enc = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
assert enc.encode("<|start|>", allowed_special="all") == [200006]
print("setup-harmony-venv: done: openai-harmony loads", enc.name, "offline")'

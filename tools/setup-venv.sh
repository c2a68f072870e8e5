#!/usr/bin/env bash
# Creates tools/.venv with the Python packages the golden-file generators in tools/ use.
# Safe to run again: installed pins are kept, and the compiled llama-cpp-python wheel is
# cached under tools/.build/ (both paths are git-ignored).
#
# Choices worth knowing:
# * Versions are pinned so that regenerated golden files match the committed ones.
# * torch comes from PyPI, i.e. the CUDA build with its nvidia-* dependencies (several GB).
#   The generators only use it on the CPU.
# * tuned-lens 0.2.0 is installed with --no-deps. Its declared dependencies (datasets, wandb,
#   torchdata, plotly, accelerate, simple-parsing, ...) are only used by its training CLI and
#   plotting code; the modules used here (tuned_lens.nn) import just torch, transformers,
#   huggingface_hub and numpy, which are installed anyway. It works with transformers 5.x.
# * llama-cpp-python is published on PyPI as an sdist only, so it is compiled here (about
#   8-12 minutes on 2 cores). It is built for the local CPU (GGML_NATIVE=ON) but with AMX
#   disabled (-mno-amx-*): on some VMs the CPU reports AMX while the kernel does not allow
#   it, and the first llama_decode then dies with SIGILL. The script checks the built
#   libraries for AMX tile instructions and runs a short decode when the demo model exists.
#   The wheel cache is keyed by the CPU's feature flags, since a native build may not run
#   on another CPU.
set -euo pipefail

tools="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$tools/.." && pwd)"
venv="$tools/.venv"
build="$tools/.build"
python="${PYTHON:-python3}"

LLAMA_CPP_PYTHON_VERSION="0.3.36"
PACKAGES=(
  "numpy==2.4.6"
  "gguf==0.19.0"
  "safetensors==0.8.0"
  "jinja2==3.1.6"
  "torch==2.15.0"
  "transformers==5.24.0"
  "tokenizers==0.23.3"
  "accelerate==1.15.0"  # transformers needs it to load GGUF files (compare_llamacpp_hf.py)
  "peft==0.21.2"  # applies the LoRA donor in talkative_reference.py
  "sentencepiece==0.2.3"  # Gemma tokenizer.model for gen_tiny_families.py (llama.cpp's converter needs it)
  # llama-cpp-python's own runtime dependencies (it is installed with --no-deps below)
  "typing-extensions"
  "diskcache"
)

log() { echo "setup-venv: $*"; }
fail() { echo "setup-venv: $*" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q -U pip wheel

log "installing ${PACKAGES[*]}"
"${pip[@]}" install -q "${PACKAGES[@]}"

log "installing tuned-lens==0.2.0 (--no-deps)"
"${pip[@]}" install -q --no-deps "tuned-lens==0.2.0"

# ---- llama-cpp-python -------------------------------------------------------------------
no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cpu_key="$( (grep -m1 '^flags' /proc/cpuinfo || true) | sha256sum | cut -c1-12)"
wheel_dir="$build/wheels/cpu-$cpu_key"
mkdir -p "$wheel_dir"
wheel="$(ls "$wheel_dir"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$wheel" ]; then
  log "compiling llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (8-12 minutes on 2 cores;" \
      "log in $build/llama-cpp-python-build.log)"
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
  # LLAVA_BUILD=OFF: the multimodal library (a quarter of the build) is never used here.
  export CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'"
  # --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS and could hand back a wheel built
  # with other flags.
  if ! "${pip[@]}" wheel -v --no-cache-dir --no-deps --no-binary llama-cpp-python \
      "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -w "$wheel_dir" \
      >"$build/llama-cpp-python-build.log" 2>&1; then
    tail -n 40 "$build/llama-cpp-python-build.log" >&2
    fail "llama-cpp-python build failed; see $build/llama-cpp-python-build.log"
  fi
  wheel="$(ls "$wheel_dir"/llama_cpp_python-"$LLAMA_CPP_PYTHON_VERSION"-*.whl | head -n1)"
fi
log "installing $(basename "$wheel")"
"${pip[@]}" install -q --no-deps --force-reinstall "$wheel"

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
libdir="$site/llama_cpp/lib"
[ -d "$libdir" ] || fail "no $libdir after installing llama-cpp-python"
if command -v objdump >/dev/null; then
  for so in "$libdir"/*.so*; do
    if objdump -d "$so" | grep -q -m1 'tileloadd\|tdpbssd\|tdpbf16ps\|ldtilecfg'; then
      rm -f "$wheel"
      fail "$so contains AMX instructions; removed the cached wheel, rerun after fixing the flags"
    fi
  done
  log "no AMX instructions in $libdir"
else
  log "objdump not found; skipping the AMX instruction check"
fi

model="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$model" ]; then
  log "smoke test: short decode with $(basename "$model")"
  "$venv/bin/python" - "$model" <<'EOF'
import sys
from llama_cpp import Llama
llm = Llama(sys.argv[1], n_ctx=64, n_threads=2, verbose=False)
ids = llm.tokenize(b"The capital of France is", add_bos=False)
llm.eval(ids)
logits = llm._ctx.get_logits()  # ctypes pointer to the last position's logits
row = [logits[i] for i in range(llm.n_vocab())]
best = max(range(len(row)), key=row.__getitem__)
assert all(abs(x) < 1e4 for x in row), "implausible logits"
print("setup-venv: decode ok,", len(ids), "prompt tokens, next token", repr(llm.detokenize([best])))
EOF
else
  log "demo model not present (scripts/fetch-demo-model.sh); skipping the decode smoke test"
fi

log "done: $("$venv/bin/python" -c 'import llama_cpp, peft, torch, transformers, tuned_lens; print("llama_cpp", llama_cpp.__version__, "torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)')"

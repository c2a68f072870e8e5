#!/usr/bin/env bash
# Builds lensd with candle's CUDA backend, target/cuda/release/lensd (docs/gpu.md), on any Linux
# x86_64 machine: no GPU and no CUDA toolkit needed. NVIDIA's CUDA 13.0 wheels from PyPI provide
# nvcc, the headers and the libraries to link against, in .cuda/ (kept for the next run). The
# CPU build in target/ is left alone.
#
#   scripts/build-cuda.sh           the release binary
#   scripts/build-cuda.sh --check   `cargo check` only: proves the CUDA build compiles, with nvcc
#                                   and the headers but without downloading cuBLAS
#
# Environment:
#   CUDA_COMPUTE_CAP  GPU generation the kernels are compiled for: 90 (default; H100, H200),
#                     80 (A100, A30), 86 (A10, RTX 30xx), 89 (L4, L40S, RTX 40xx), 100 (B200),
#                     120 (RTX 50xx). Build for the GPU that will run it: some of candle's
#                     kernels are machine code for exactly that generation.
#   CUDA_ROOT         an installed CUDA toolkit (for example /usr/local/cuda) to use instead of
#                     the wheels; nothing is downloaded then.
#   CARGO_TARGET_DIR  where cargo builds (default target/cuda).
#   LENSD_CUDA_DIR    where the wheels' toolkit is set up (default .cuda).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "build-cuda.sh: $*" >&2; exit 1; }

check=0
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$arg'; the only option is --check (see --help)" ;;
  esac
done

export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
[[ "$CUDA_COMPUTE_CAP" =~ ^[0-9]{2,3}[af]?$ ]] ||
  die "CUDA_COMPUTE_CAP='$CUDA_COMPUTE_CAP' is not a compute capability; give digits such as 90 (H100), 80 (A100) or 89 (L4)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}"
tk_dir="${LENSD_CUDA_DIR:-.cuda}"
command -v cargo >/dev/null || die "cargo is required (a Rust toolchain, 1.85 or newer)"

# The pins are the CUDA 13.0 of the GPU machines' driver (580). nvvm and crt are pinned with
# nvcc: a newer nvvm emits PTX that the 13.0 ptxas refuses.
header_wheels=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.88 "nvidia-cuda-cccl<13.1")
library_wheels=(nvidia-cuda-nvrtc==13.0.88 "nvidia-cublas<13.2" nvidia-curand)

# Installs the wheels into a virtual environment under $tk_dir and lays out $tk_dir/toolkit as
# a CUDA toolkit: bin, include and nvvm link into the wheels' nvidia/cu13, and lib64 holds the
# unversioned library names the linker looks for (the wheels ship only libX.so.N).
setup_wheel_toolkit() {
  local wheels=("${header_wheels[@]}") stamp="$tk_dir/installed-headers"
  local all=("${header_wheels[@]}" "${library_wheels[@]}")
  if [ "$check" = 0 ] || [ "$(cat "$tk_dir/installed-libraries" 2>/dev/null)" = "${all[*]}" ]; then
    wheels+=("${library_wheels[@]}")
    stamp="$tk_dir/installed-libraries"
  fi
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${wheels[*]}" ]; then
    command -v python3 >/dev/null ||
      die "python3 with pip is required to fetch the CUDA wheels (or set CUDA_ROOT to an installed toolkit)"
    mkdir -p "$tk_dir"
    if [ ! -x "$tk_dir/venv/bin/pip" ]; then
      python3 -m venv "$tk_dir/venv" ||
        die "python3 -m venv failed; install the venv module (Debian: apt-get install python3-venv)"
    fi
    echo "build-cuda.sh: installing ${wheels[*]} into $tk_dir/venv" >&2
    "$tk_dir/venv/bin/pip" install --disable-pip-version-check --no-cache-dir --progress-bar off \
      "${wheels[@]}" || die "pip could not install the CUDA wheels from PyPI (see above)"
    printf '%s\n' "${wheels[*]}" >"$stamp"
  fi
  local site cu
  site="$("$tk_dir/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')"
  cu="$site/nvidia/cu13"
  [ -x "$cu/bin/nvcc" ] || die "no nvcc in $cu/bin after installing the wheels; delete $tk_dir and run again"
  local root="$tk_dir/toolkit"
  mkdir -p "$root/lib64"
  local d
  for d in bin include nvvm; do ln -sfn "$cu/$d" "$root/$d"; done
  local lib base
  for lib in "$cu"/lib/lib*.so.*; do
    [ -e "$lib" ] || continue
    base="$(basename "$lib")"
    ln -sfn "$lib" "$root/lib64/${base%%.so.*}.so"
  done
  cuda_root="$(cd "$root" && pwd)"
}

if [ -n "${CUDA_ROOT:-}" ]; then
  [ -x "$CUDA_ROOT/bin/nvcc" ] || die "CUDA_ROOT='$CUDA_ROOT' has no bin/nvcc; point it at a CUDA toolkit, or unset it to use the wheels"
  cuda_root="$(cd "$CUDA_ROOT" && pwd)"
else
  SECONDS=0
  setup_wheel_toolkit
  echo "build-cuda.sh: toolkit ready in $cuda_root (${SECONDS} s)" >&2
fi

# cudarc reads the CUDA version from `nvcc --version` on PATH and looks for libraries under any
# of these roots (lib64, lib64/stubs); candle-kernels compiles for CUDA_COMPUTE_CAP.
export PATH="$cuda_root/bin:$PATH"
export CUDA_ROOT="$cuda_root" CUDA_HOME="$cuda_root" CUDA_PATH="$cuda_root"
export LIBRARY_PATH="$cuda_root/lib64:$cuda_root/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
nvcc --version | tail -n 2 >&2 || die "$cuda_root/bin/nvcc does not run"
echo "build-cuda.sh: compute capability $CUDA_COMPUTE_CAP, cargo target dir $CARGO_TARGET_DIR" >&2

if [ "$check" = 1 ]; then
  SECONDS=0
  # --release shares candle-kernels' compiled PTX with a later build in the same target dir.
  cargo check --release -p lensd --features cuda
  echo "build-cuda.sh: cargo check --features cuda passed (${SECONDS} s)" >&2
  exit 0
fi

# libcuda.so belongs to the GPU driver, and no wheel has it. Where no toolkit stub or driver
# provides it, link against a stand-in that defines the driver symbols cudarc uses as empty
# functions and carries the driver library's soname, so the binary records libcuda.so.1 and
# the driver's library serves it at run time. It stays in $tk_dir, never beside the binary.
have_libcuda() {
  local d
  for d in lib64 lib64/stubs lib lib/stubs targets/x86_64-linux/lib/stubs; do
    [ -e "$cuda_root/$d/libcuda.so" ] && return 0
  done
  ldconfig -p 2>/dev/null | grep 'libcuda\.so ' >/dev/null
}

SECONDS=0
if ! have_libcuda; then
  command -v nm >/dev/null && command -v cc >/dev/null ||
    die "nm and cc (binutils, gcc) are required to make the libcuda.so stand-in"
  # Everything but the executable first: the rlibs name the driver symbols the binary needs.
  # (lensd's library, not the engine's alone: with the same packages selected, cargo resolves
  # the same features, so the final build reuses candle-kernels' compiled kernels.)
  cargo build --release -p lensd --features cuda --lib
  deps="$CARGO_TARGET_DIR/release/deps"
  stub_dir="$tk_dir/libcuda-stub"
  mkdir -p "$stub_dir"
  symbols="$(for rlib in "$deps"/libcudarc-*.rlib "$deps"/libcandle_*.rlib; do
    if [ -e "$rlib" ]; then nm --undefined-only --format=posix "$rlib" 2>/dev/null || true; fi
  done | awk '$1 ~ /^cu[A-Z]/ { print $1 }' | sort -u)"
  [ -n "$symbols" ] || die "found no cu* driver symbols in $deps/libcudarc-*.rlib; was it built?"
  if [ ! -f "$stub_dir/libcuda.so" ] || [ "$symbols" != "$(cat "$stub_dir/symbols" 2>/dev/null)" ]; then
    printf '%s\n' "$symbols" >"$stub_dir/symbols"
    awk '{ print "void " $1 "(void) {}" }' "$stub_dir/symbols" >"$stub_dir/libcuda.c"
    cc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$stub_dir/libcuda.so" "$stub_dir/libcuda.c"
    echo "build-cuda.sh: libcuda.so stand-in with $(wc -l <"$stub_dir/symbols") symbols in $stub_dir" >&2
  fi
  export LIBRARY_PATH="$(cd "$stub_dir" && pwd):$LIBRARY_PATH"
fi
cargo build --release -p lensd --features cuda
echo "build-cuda.sh: cargo build --features cuda done (${SECONDS} s)" >&2

bin="$CARGO_TARGET_DIR/release/lensd"
[ -x "$bin" ] || die "cargo finished but $bin is missing"
if readelf -d "$bin" | grep -E '\((RPATH|RUNPATH)\)' >/dev/null; then
  die "$bin records a library search path; it must find CUDA's libraries through the system or LD_LIBRARY_PATH"
fi
echo
echo "binary:  $bin ($(du -h "$bin" | cut -f1), $(stat -c %s "$bin") bytes), for compute capability $CUDA_COMPUTE_CAP"
echo "NEEDED (readelf -d):"
readelf -d "$bin" | awk '/\(NEEDED\)/ { gsub(/[][]/, "", $5); print "  " $5 }'
echo "ldd (on this machine; on a GPU machine the driver gives libcuda.so.1):"
ldd "$bin" | sed 's/^\s*/  /' || true
echo "On the GPU machine: $bin serve --device cuda:0, with CUDA 13's cuBLAS (and cuBLASLt),"
echo "cuRAND and runtime on the loader's path (docs/gpu.md, \"Running\")."

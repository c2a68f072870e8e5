#!/usr/bin/env bash
# Fuzzes every input parser lensd owns with libFuzzer (cargo-fuzz), each target for SECONDS
# (default 60), starting from its seeds in fuzz/seeds/<target>/ and the corpus it grew before
# (fuzz/corpus/, git-ignored). Prints the executions per target; a crash stops the run with
# libFuzzer's report and leaves the input in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh                 # every target, 60 s each
#   SECONDS_PER_TARGET=600 fuzz/run.sh model_groups
#
# cargo-fuzz is installed with `cargo install` when missing. It runs on the stable toolchain
# (RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its unstable flags) without a sanitizer: Rust's own
# checks turn memory errors into panics, and libFuzzer reports any panic as a crash.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${SECONDS_PER_TARGET:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build --sanitizer none -O
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "fuzz: $t for $seconds s" >&2
  cargo fuzz run --sanitizer none -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 -max_len=65536 2>&1 |
    grep -E 'stat::number_of_executed_units|stat::new_units_added|ERROR|panicked|SUMMARY|Test unit written' |
    sed "s/^/fuzz: $t: /" >&2
done

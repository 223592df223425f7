#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that see network and store bytes (fuzz/, see
# docs/fuzzing.md), on stable Rust: libFuzzer comes from the libfuzzer-sys crate (compiled with
# the system C++ compiler), SanitizerCoverage from stable codegen flags. Builds every target
# and runs each, one at a time, for FUZZ_SECONDS (default 20) or, when set, FUZZ_RUNS
# executions. Prints one summary line per target; exits non-zero on any crash (a failed
# property is a panic), timeout or out-of-memory, leaving the input in $FUZZ_ARTIFACTS.
#
# Usage: scripts/fuzz.sh [TARGET...]      (default: all targets)
#   FUZZ_SECONDS=20  FUZZ_RUNS=  FUZZ_TARGET_DIR=target/fuzz  FUZZ_ARTIFACTS=target/fuzz-artifacts
#   FUZZ_BUILD_ONLY=1 builds without running; FUZZ_CORPUS_OUT=DIR keeps new inputs in DIR/<target>.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_cmd cmake cmake   # pingora-core -> zlib-ng
need_cmd g++ g++       # libfuzzer-sys compiles libFuzzer's C++ sources

ALL_TARGETS=(strict_envelope sse_messages legacy chunked hop config modern)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${ALL_TARGETS[@]}"); fi

host=$(rustc -vV | sed -n 's/^host: //p')
# The instrumented build has its own target dir: the flags differ from the main crate's build.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target/fuzz}
# What cargo-fuzz passes, minus the nightly-only sanitizer: inline 8-bit edge counters, the PC
# table and compare tracing for libFuzzer, `cfg(fuzzing)`. With an explicit --target these
# flags reach only the target's crates, not build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
unset CARGO_ENCODED_RUSTFLAGS

echo "==> building fuzz targets (instrumented release build in $CARGO_TARGET_DIR)"
build_start=$(date +%s)
(cd fuzz && nice -n "${FUZZ_NICE:-10}" cargo build --release --locked --target "$host" --bins)
echo "==> fuzz build took $(( $(date +%s) - build_start )) s"
[ -n "${FUZZ_BUILD_ONLY:-}" ] && exit 0

bin_dir=$CARGO_TARGET_DIR/$host/release
artifacts=${FUZZ_ARTIFACTS:-$PWD/target/fuzz-artifacts}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$artifacts"

if [ -n "${FUZZ_RUNS:-}" ]; then
  budget=(-runs="$FUZZ_RUNS")
else
  budget=(-max_total_time="${FUZZ_SECONDS:-20}")
fi

final_stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -1; }

passed=0
failed=0
summaries=()
for t in "${targets[@]}"; do
  out_dir=$work/$t
  [ -n "${FUZZ_CORPUS_OUT:-}" ] && out_dir=$FUZZ_CORPUS_OUT/$t
  mkdir -p "$out_dir"
  dict=()
  [ -f "fuzz/dicts/$t.dict" ] && dict=(-dict="fuzz/dicts/$t.dict")
  seeds=()
  for d in "fuzz/corpus/$t" "fuzz/seeds/$t"; do [ -d "$d" ] && seeds+=("$d"); done
  max_len=8192
  [ "$t" = config ] && max_len=2048   # YAML is slow to parse: keep the texts short
  log=$work/$t.log
  echo "==> fuzzing $t"
  start=$(date +%s)
  rc=0
  # one process, one job: new inputs go to the first (scratch) directory, the committed
  # corpora are only read
  nice -n "${FUZZ_NICE:-10}" "$bin_dir/$t" "${budget[@]}" -print_final_stats=1 -timeout=10 \
    -rss_limit_mb=2048 -max_len="$max_len" -artifact_prefix="$artifacts/$t-" "${dict[@]}" \
    "$out_dir" "${seeds[@]}" >"$log" 2>&1 || rc=$?
  secs=$(( $(date +%s) - start ))
  runs=$(final_stat number_of_executed_units "$log")
  speed=$(final_stat average_exec_per_sec "$log")
  cov=$(sed -n 's/^#[0-9]*.*cov: \([0-9]*\).*/\1/p' "$log" | tail -1)
  corpus=$(sed -n 's/^#[0-9]*.*corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' "$log" | tail -1)
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    line="fuzz $t: ok, ${runs:-?} runs in ${secs} s (${speed:-?} exec/s), cov ${cov:-?}, corpus ${corpus:-?}, crashes 0"
  else
    failed=$((failed + 1))
    line="fuzz $t: FAILED (exit $rc) after ${runs:-?} runs in ${secs} s; input in $artifacts/$t-*"
    echo "---- last lines of the $t log ----"
    grep -v '^#[0-9]' "$log" | tail -40
    echo "----"
  fi
  echo "$line"
  summaries+=("$line")
done

echo "==> fuzz summary"
printf '%s\n' "${summaries[@]}"
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

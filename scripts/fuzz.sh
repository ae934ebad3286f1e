#!/usr/bin/env bash
# Fuzzing: builds the libFuzzer targets of fuzz/ with clang 14 (ASan + UBSan, in build/fuzz) and
# runs each for SECONDS seconds on a scratch copy of its committed seed corpus, fuzz/corpus/<target>/
# (which is never modified). Prints one line per target (executions, coverage, time) and exits
# non-zero if any target found a crash, a leak, a timeout, an out-of-memory or a sanitizer report;
# the log and the input that caused it are kept in build/fuzz/run/<target>/.
#
# Usage: scripts/fuzz.sh [--seed N] [SECONDS]
#          SECONDS per target, default 60. --seed N fixes libFuzzer's random seed, so a run that
#          fails can be replayed step for step: the test command runs "--seed 1 60". Without it
#          every run explores anew.
#        scripts/fuzz.sh 1800         the long run: 30 minutes per target, by hand, not in CI
#        scripts/fuzz.sh --seeds      regenerate fuzz/corpus/ with fuzz/make_seeds.cpp, then stop
#
# Needs the Debian packages clang-14 (compiler), libclang-rt-14-dev (the libFuzzer and sanitizer
# runtimes) and llvm-14 (llvm-symbolizer, for readable stack traces); this script installs nothing.
# To replay a saved input: build/fuzz/<target> build/fuzz/run/<target>/artifacts/crash-<sha1>
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${root}"
readonly build_dir="build/fuzz"
readonly run_dir="${build_dir}/run"
readonly targets=(token_fuzz url_fuzz db_fuzz)
readonly jobs=2

seconds=60
seeds_only=0
seed_option=()
while (($# > 0)); do
  arg=$1
  shift
  case "${arg}" in
    --seeds) seeds_only=1 ;;
    --seed)
      if [[ $# -eq 0 || $1 == *[!0-9]* || -z $1 ]]; then
        echo "fuzz.sh: --seed needs a number" >&2
        exit 2
      fi
      seed_option=("-seed=$1")
      shift
      ;;
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
      exit 0
      ;;
    *[!0-9]* | '')
      echo "fuzz.sh: unknown argument ${arg} (see --help)" >&2
      exit 2
      ;;
    *) seconds=${arg} ;;
  esac
done

# ---- toolchain ----------------------------------------------------------------------------------
if ! command -v clang++-14 >/dev/null 2>&1; then
  echo "fuzz.sh: clang++-14 is missing; install clang-14 libclang-rt-14-dev llvm-14" >&2
  exit 1
fi
runtime_dir=$(clang++-14 -print-runtime-dir)
if [[ ! -f "${runtime_dir}/libclang_rt.fuzzer-$(uname -m).a" ]]; then
  echo "fuzz.sh: the libFuzzer runtime is missing from ${runtime_dir}; install libclang-rt-14-dev" >&2
  exit 1
fi
symbolizer=$(command -v llvm-symbolizer-14 || command -v llvm-symbolizer || true)

# ---- build --------------------------------------------------------------------------------------
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
if [[ ! -f "${build_dir}/CMakeCache.txt" ]]; then
  cmake -S fuzz -B "${build_dir}" "${generator[@]}" -DCMAKE_CXX_COMPILER=clang++-14 \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_EXPORT_COMPILE_COMMANDS=ON >/dev/null
fi
build_start=${SECONDS}
cmake --build "${build_dir}" --parallel "${jobs}" >"${build_dir}/build.log" 2>&1 || {
  cat "${build_dir}/build.log"
  echo "fuzz.sh: the build failed" >&2
  exit 1
}
echo "fuzz.sh: built ${targets[*]} in $((SECONDS - build_start))s (${build_dir})"

if ((seeds_only)); then
  exec "${build_dir}/make_seeds" fuzz/corpus
fi

# ---- run ----------------------------------------------------------------------------------------
# Leaks count as failures (detect_leaks), every sanitizer report stops the target (halt_on_error;
# the library is also built with -fno-sanitize-recover=all), and traces are symbolized.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:symbolize=1${symbolizer:+:external_symbolizer_path=${symbolizer}}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:symbolize=1${symbolizer:+:external_symbolizer_path=${symbolizer}}"

# final_stat LOG NAME: the value of libFuzzer's "stat::NAME:" line (printed by -print_final_stats).
final_stat() {
  sed -n "s/^stat::$2: *//p" "$1" | tail -n 1
}

failed=()
for target in "${targets[@]}"; do
  dir="${run_dir}/${target}"
  rm -rf "${dir}"
  mkdir -p "${dir}/corpus" "${dir}/artifacts"
  # The committed corpus is copied: libFuzzer adds every input that finds new coverage to the
  # first corpus directory it is given, and CI must not change the tree.
  cp -R "fuzz/corpus/${target}/." "${dir}/corpus/"
  start=${SECONDS}
  status=0
  "${build_dir}/${target}" "${seed_option[@]}" -max_total_time="${seconds}" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="${dir}/artifacts/" "${dir}/corpus" \
    >"${dir}/fuzz.log" 2>&1 || status=$?
  elapsed=$((SECONDS - start))
  execs=$(final_stat "${dir}/fuzz.log" number_of_executed_units)
  rate=$(final_stat "${dir}/fuzz.log" average_exec_per_sec)
  # The last status line ("#123 DONE cov: 456 ft: 789 corp: 12/3456b ...") has the coverage.
  coverage=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*' "${dir}/fuzz.log" | tail -n 1 || true)
  artifacts=$(find "${dir}/artifacts" -type f | wc -l)
  if ((status != 0 || artifacts > 0)) ||
    grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:' "${dir}/fuzz.log"; then
    failed+=("${target}")
    printf 'FAIL %-10s exit status %d after %ds; %d input(s) saved in %s/artifacts; log %s/fuzz.log:\n' \
      "${target}" "${status}" "${elapsed}" "${artifacts}" "${dir}" "${dir}"
    tail -n 40 "${dir}/fuzz.log"
  else
    printf 'ok   %-10s %9s execs (%s/s)  %s  %ds\n' "${target}" "${execs:-?}" "${rate:-?}" \
      "${coverage:-no coverage line}" "${elapsed}"
  fi
done

if ((${#failed[@]} > 0)); then
  echo "fuzz.sh: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${seconds}s each, no findings"

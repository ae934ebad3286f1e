#!/usr/bin/env bash
# The test command (README, and CI through .ci/run): installs the Debian packages, starts a
# throw-away PostgreSQL cluster, then configures, builds and runs every test in the dev, asan
# (AddressSanitizer + UBSan) and tsan (ThreadSanitizer) presets, then runs the fuzz targets for
# 60 s each with a fixed seed (scripts/fuzz.sh --seed 1 60), the benchmark's smoke run
# (scripts/bench.sh --quick) and validate()'s timing test (bench/validate_timing, 10^6 samples: its
# PASS or FAIL line is a figure to read, not an assertion, as timed assertions fail on noisy
# machines), the packaging checks (scripts/amalgamate.sh --check, scripts/consumer-tests.sh: every
# route of embedding the library built and run, and the tests built and run without PostgreSQL
# and libpq), and finally scripts/lint.sh and
# scripts/thread-safety.sh (Clang's analysis of the
# annotated lock rules). A failed stage does not stop the others (only the rest of its preset is
# skipped); a summary with each stage's result and time comes last, and the exit status is
# non-zero if any stage failed.
#
# Usage: scripts/test.sh [options] [preset...]     presets: dev asan tsan release
#   --quick       the dev preset only: no fuzzing, benchmark or lint (the fast loop while editing)
#   --no-deps     skip scripts/install-deps.sh
#   --no-pg       do not start PostgreSQL (PYLON_TEST_DATABASE_URL stays as it is)
#   --no-lint     skip scripts/lint.sh and scripts/thread-safety.sh
#   --no-fuzz     skip scripts/fuzz.sh
#   --no-bench    skip the benchmark smoke run and the timing test
#   --fail-fast   stop at the first failed stage
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${root}"

presets=()
run_deps=1
run_pg=1
run_lint=1
run_fuzz=1
run_bench=1
fail_fast=0
for arg in "$@"; do
  case "${arg}" in
    --quick)
      presets=(dev)
      run_lint=0
      run_fuzz=0
      run_bench=0
      ;;
    --no-deps) run_deps=0 ;;
    --no-pg) run_pg=0 ;;
    --no-lint) run_lint=0 ;;
    --no-fuzz) run_fuzz=0 ;;
    --no-bench) run_bench=0 ;;
    --fail-fast) fail_fast=1 ;;
    dev | asan | tsan | release) presets+=("${arg}") ;;
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
      exit 0
      ;;
    *)
      echo "test.sh: unknown argument ${arg} (see --help)" >&2
      exit 2
      ;;
  esac
done
if ((${#presets[@]} == 0)); then
  presets=(dev asan tsan)
fi

# ---- stages: run, time and record ---------------------------------------------------------------
stage_names=()
stage_results=()
stage_seconds=()
any_failed=0
started=${SECONDS}

# stage NAME COMMAND...: runs COMMAND as one named stage; returns its status.
stage() {
  local name="$1" start=${SECONDS} status=0
  shift
  printf '\n==> [%s] %s\n' "${name}" "$*"
  "$@" || status=$?
  stage_names+=("${name}")
  stage_seconds+=($((SECONDS - start)))
  if ((status == 0)); then
    stage_results+=(PASS)
  else
    stage_results+=(FAIL)
    any_failed=1
    printf '==> [%s] FAILED (exit status %d)\n' "${name}" "${status}"
  fi
  return "${status}"
}

skip() {
  stage_names+=("$1")
  stage_seconds+=(0)
  stage_results+=(SKIP)
}

summary() {
  local i total=$((SECONDS - started))
  printf '\n==================== scripts/test.sh summary ====================\n'
  for i in "${!stage_names[@]}"; do
    printf '  %-4s  %-22s %4dm%02ds\n' "${stage_results[i]}" "${stage_names[i]}" \
      $((stage_seconds[i] / 60)) $((stage_seconds[i] % 60))
  done
  printf '  total                       %4dm%02ds\n' $((total / 60)) $((total % 60))
  if ((any_failed)); then
    echo "scripts/test.sh: FAILED"
  else
    echo "scripts/test.sh: every stage passed"
  fi
}

stop_early() {
  if ((fail_fast && any_failed)); then
    summary
    exit 1
  fi
}

os_name() {
  sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null || uname -s
}
printf '==> scripts/test.sh: %s, %s cores, kernel %s, CI=%s\n' "$(os_name)" "$(nproc)" "$(uname -r)" \
  "${CI:-}"

# ---- dependencies -------------------------------------------------------------------------------
if ((run_deps)); then
  if ! stage deps bash scripts/install-deps.sh; then
    summary
    exit 1
  fi
fi
printf '==> %s; %s\n' "$(cmake --version | head -n 1)" "$(c++ --version | head -n 1)"

# ---- PostgreSQL ---------------------------------------------------------------------------------
# One throw-away cluster (scripts/pg-cluster.sh: initdb in a temporary directory, 127.0.0.1, a
# free port, a random password) serves every preset: the tests labelled `pg` read its URL from
# PYLON_TEST_DATABASE_URL, and with CI set they fail, never skip, when it is missing. The cluster
# is stopped and deleted when this script exits, however it exits. A URL already in the
# environment is used as is, and --no-pg starts nothing.
# shellcheck disable=SC2317  # called through `stage`
start_postgres() {
  local env
  env=$(bash scripts/pg-cluster.sh start) || return 1
  eval "${env}"
  trap 'bash scripts/pg-cluster.sh stop "${PYLON_PG_DIR}" || true' EXIT
}
if ((run_pg)) && [[ -z "${PYLON_TEST_DATABASE_URL:-}" ]]; then
  stage postgres start_postgres || true
  stop_early
fi

# ---- ThreadSanitizer and address-space randomisation --------------------------------------------
# GCC 12's TSan aborts at start-up ("unexpected memory mapping") on kernels that randomise mmap
# with more than 28 bits (vm.mmap_rnd_bits = 32 on recent distributions' kernels). When a probe
# program shows that, the tsan build and tests run under `setarch -R` (ASLR off for that process
# tree only), rather than changing the machine's sysctl.
tsan_prefix=()
probe_tsan() {
  local dir
  dir=$(mktemp -d)
  printf '%s\n' '#include <thread>' \
    'int main() { int x = 0; std::thread t([&x] { x = 1; }); t.join(); return x - 1; }' \
    >"${dir}/probe.cpp"
  if c++ -fsanitize=thread -pthread "${dir}/probe.cpp" -o "${dir}/probe" 2>/dev/null &&
    ! "${dir}/probe" >/dev/null 2>&1 &&
    setarch "$(uname -m)" -R "${dir}/probe" >/dev/null 2>&1; then
    tsan_prefix=(setarch "$(uname -m)" -R)
    echo "==> tsan: ThreadSanitizer needs ASLR off on this kernel" \
      "(vm.mmap_rnd_bits=$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo '?')): using setarch -R"
  fi
  rm -rf "${dir}"
}

# ---- the presets --------------------------------------------------------------------------------
for preset in "${presets[@]}"; do
  prefix=()
  if [[ "${preset}" == tsan ]]; then
    probe_tsan
    prefix=("${tsan_prefix[@]}")
  fi
  if stage "${preset} configure" cmake --preset "${preset}"; then
    if stage "${preset} build" "${prefix[@]}" cmake --build --preset "${preset}"; then
      stage "${preset} test" "${prefix[@]}" ctest --preset "${preset}" || true
      # A failed fault test may have left the server stopped or frozen: the next stages need it.
      if [[ -n "${PYLON_PG_DIR:-}" ]]; then bash scripts/pg-cluster.sh revive "${PYLON_PG_DIR}" || true; fi
    else
      skip "${preset} test"
    fi
  else
    skip "${preset} build"
    skip "${preset} test"
  fi
  stop_early
done

# ---- packaging: the committed amalgamation is current, and every way of embedding builds ------
stage "amalgamation current" bash scripts/amalgamate.sh --check || true
stop_early
stage consumer bash scripts/consumer-tests.sh || true
stop_early

# ---- fuzzing and the benchmark's smoke run ------------------------------------------------------
if ((run_fuzz)); then
  stage fuzz bash scripts/fuzz.sh --seed 1 60 || true
  stop_early
fi
if ((run_bench)); then
  stage "bench smoke" bash scripts/bench.sh --quick || true
  stop_early
  stage timing bash -c 'cmake --build --preset release --target validate_timing >/dev/null &&
    build/release/bench/validate_timing' || true
  stop_early
fi

# ---- lint ---------------------------------------------------------------------------------------
if ((run_lint)); then
  stage lint bash scripts/lint.sh || true
  stage "thread-safety" bash scripts/thread-safety.sh || true
fi

summary
exit "${any_failed}"

#!/usr/bin/env bash
# Static checks, each failing on any finding:
#   - clang-format: every tracked *.cpp / *.hpp matches .clang-format (nothing is rewritten);
#   - clang-tidy: our .cpp files, with .clang-tidy, on build/dev/compile_commands.json
#     (configured and built first if needed: the migrations fragment is generated), and fuzz/
#     on build/fuzz/compile_commands.json when scripts/fuzz.sh has built it;
#   - cppcheck: the library's .cpp files (top level and internal/), tools/, bench/ and fuzz/;
#   - ShellCheck: every tracked *.sh and .ci/run.
# Runs every check even after one fails, then exits non-zero if any failed.
#
# Usage: scripts/lint.sh [--no-tidy]    (--no-tidy skips clang-tidy, the slow part)
# To fix formatting: clang-format -i $(git ls-files '*.cpp' '*.hpp')
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly build_dir="build/dev"
readonly jobs=2

run_tidy=1
for arg in "$@"; do
  case "${arg}" in
    --no-tidy) run_tidy=0 ;;
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
      exit 0
      ;;
    *)
      echo "lint: unknown argument ${arg} (see --help)" >&2
      exit 2
      ;;
  esac
done

failed=()
note() { printf '\n==> lint: %s\n' "$*"; }
require() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "lint: $1 is not installed; run scripts/install-deps.sh" >&2
    exit 1
  }
}

# Our files: tracked ones plus new ones not yet added (but never ignored ones such as build/).
list_files() {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files --cached --others --exclude-standard -- "$@"
  else
    local pattern args=()
    for pattern in "$@"; do args+=(-o -path "./${pattern}"); done
    find . -path ./build -prune -o -type f \( "${args[@]:1}" \) -print | sed 's|^\./||'
  fi
}

# ---- clang-format -------------------------------------------------------------------------------
require clang-format
mapfile -t cxx_files < <(list_files '*.cpp' '*.hpp' | sort)
note "clang-format $(clang-format --version | grep -o '[0-9][0-9.]*' | head -n 1) on ${#cxx_files[@]} files"
if ((${#cxx_files[@]} > 0)) && ! clang-format --dry-run -Werror "${cxx_files[@]}"; then
  failed+=(clang-format)
  echo "lint: formatting differs; fix with clang-format -i on the files above"
fi

# ---- clang-tidy ---------------------------------------------------------------------------------
if ((run_tidy)); then
  require clang-tidy
  if [[ ! -f "${build_dir}/compile_commands.json" ]]; then
    note "configuring the dev preset for its compile_commands.json"
    cmake --preset dev >/dev/null
  fi
  # A no-op when scripts/test.sh has just built dev. Generated sources must exist before tidy
  # parses the files that include them; a compile error shows up again in clang-tidy's output.
  cmake --build --preset dev >/dev/null 2>&1 || echo "lint: the dev build fails; clang-tidy will show why"

  # Every .cpp of ours that the dev build compiles (bench/ or pg_backend.cpp may be switched off),
  # and the fuzz targets on build/fuzz's database (clang-built; scripts/fuzz.sh makes it).
  tidy_files=()
  declare -A tidy_database=()
  skipped=()
  while IFS= read -r file; do
    if grep -qF "\"file\": \"${PWD}/${file}\"" "${build_dir}/compile_commands.json"; then
      tidy_files+=("${file}")
      tidy_database["${file}"]=${build_dir}
    elif [[ -f build/fuzz/compile_commands.json ]] &&
      grep -qF "\"file\": \"${PWD}/${file}\"" build/fuzz/compile_commands.json; then
      tidy_files+=("${file}")
      tidy_database["${file}"]=build/fuzz
    else
      skipped+=("${file}")
    fi
  done < <(list_files '*.cpp' | sort)
  note "clang-tidy $(clang-tidy --version | grep -o 'version [0-9.]*' | head -n 1) on ${#tidy_files[@]} files, ${jobs} at a time"
  if ((${#skipped[@]} > 0)); then
    echo "lint: not in the dev build, so not checked by clang-tidy: ${skipped[*]}"
  fi

  # Files run ${jobs} at a time, each into its own log, printed whole so outputs do not interleave.
  # -std=c++17 is added because targets that only inherit cxx_std_17 get no -std flag from CMake
  # (GCC 12 defaults to gnu++17) and clang 14 would otherwise parse them as C++14.
  tidy_logs=$(mktemp -d)
  trap 'rm -rf "${tidy_logs}"' EXIT
  tidy_one() {
    local file="$1" log
    log="${tidy_logs}/$(printf '%s' "${file}" | tr '/' '_').log"
    local start=${SECONDS}
    if clang-tidy -p "${tidy_database[${file}]}" --quiet --warnings-as-errors='*' --extra-arg=-std=c++17 \
      "${file}" >"${log}" 2>&1; then
      echo "ok   ${file} ($((SECONDS - start))s)" >>"${log}.status"
    else
      echo "FAIL ${file} ($((SECONDS - start))s)" >>"${log}.status"
    fi
  }
  running=0
  for file in "${tidy_files[@]}"; do
    if ((running >= jobs)); then
      wait -n || true
      running=$((running - 1))
    fi
    tidy_one "${file}" &
    running=$((running + 1))
  done
  wait || true
  tidy_failed=0
  for file in "${tidy_files[@]}"; do
    log="${tidy_logs}/$(printf '%s' "${file}" | tr '/' '_').log"
    status=$(cat "${log}.status" 2>/dev/null || echo "FAIL ${file} (no result)")
    echo "${status}"
    if [[ "${status}" != ok* ]]; then
      tidy_failed=1
      # Drop the "N warnings generated." noise; keep the findings with their notes.
      grep -v '^[0-9]* warnings\{0,1\}\( and [0-9]* errors\{0,1\}\)\{0,1\} generated\.$' "${log}" || true
    fi
  done
  if ((tidy_failed)); then
    failed+=(clang-tidy)
  fi
fi

# ---- cppcheck -----------------------------------------------------------------------------------
require cppcheck
mapfile -t cppcheck_paths < <(list_files '*.cpp' | grep -v / || true)
for directory in internal tools bench fuzz; do
  [[ -d "${directory}" ]] && cppcheck_paths+=("${directory}/")
done
# useStlAlgorithm is off: it asks for std::transform/find_if in place of any loop that fills a
# container or returns early, which rarely reads better; clang-tidy's modernize-loop-convert
# covers the loops worth changing.
includes=(-I .)
# The embedded migrations fragment, when the dev build has generated it.
[[ -d "${build_dir}/generated" ]] && includes+=(-I "${build_dir}/generated")
note "$(cppcheck --version) on ${cppcheck_paths[*]:-nothing}"
if ((${#cppcheck_paths[@]} > 0)) &&
  ! cppcheck --enable=warning,style,performance,portability --error-exitcode=1 --inline-suppr \
    --suppress=missingIncludeSystem --suppress=unmatchedSuppression --suppress=useStlAlgorithm --std=c++17 --language=c++ \
    --quiet --template=gcc -j "${jobs}" "${includes[@]}" "${cppcheck_paths[@]}"; then
  failed+=(cppcheck)
fi

# ---- shellcheck ---------------------------------------------------------------------------------
require shellcheck
mapfile -t shell_files < <(list_files '*.sh' '.ci/run' | sort)
note "shellcheck $(shellcheck --version | sed -n 's/^version: //p') on ${#shell_files[@]} files"
if ((${#shell_files[@]} > 0)) && ! shellcheck --shell=bash "${shell_files[@]}"; then
  failed+=(shellcheck)
fi

echo
if ((${#failed[@]} > 0)); then
  echo "lint: FAILED: ${failed[*]}"
  exit 1
fi
echo "lint: clean"

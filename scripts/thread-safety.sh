#!/usr/bin/env bash
# Clang's thread-safety analysis over the library: every lock rule written with the macros of
# internal/thread_annotations.hpp (GUARDED_BY, REQUIRES, EXCLUDES) is checked, and a rule broken
# is an error. GCC, which builds everything else, has no such analysis. Needs the dev build's
# generated migration fragments (build/dev/generated), so it runs after that build.
#
# Usage: scripts/thread-safety.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

compiler=$(command -v clang++-14 || command -v clang++ || true)
if [[ -z "${compiler}" ]]; then
  echo "thread-safety: clang++ is not installed (scripts/install-deps.sh installs clang)" >&2
  exit 1
fi
if [[ ! -d build/dev/generated ]]; then
  echo "thread-safety: build/dev/generated is missing; build the dev preset first" >&2
  exit 1
fi

flags=(-std=c++17 -fsyntax-only -Wthread-safety -Wthread-safety-beta -Werror=thread-safety
  -Werror=thread-safety-beta -I . -I build/dev/generated -isystem /usr/include/postgresql
  -DPYLON_WITH_POSTGRES)
failed=0
for file in session_store.cpp internal/session_cache.cpp session_backend.cpp pg_backend.cpp \
  errors.cpp fields.cpp token.cpp database_url.cpp; do
  [[ -f "${file}" ]] || continue
  if "${compiler}" "${flags[@]}" "${file}"; then
    echo "ok   ${file}"
  else
    echo "FAIL ${file}"
    failed=1
  fi
done
if ((failed)); then
  echo "thread-safety: FAILED"
  exit 1
fi
echo "thread-safety: every annotated lock rule holds"

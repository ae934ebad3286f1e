#!/usr/bin/env bash
# Consumer tests: tests/consumer/main.cpp (ten lines: log in, restart, validate) built and run
# the ways an application uses pylon-sessions, each in its own build directory under
# build/consumer/ (the library's own builds are never touched):
#   find-package      cmake --install into a scratch prefix, then find_package(pylon_sessions)
#   add-subdirectory  add_subdirectory(pylon-sessions); nothing of ours built or installed
#   fetchcontent      FetchContent from a local archive of this working tree
#   pkg-config        c++ main.cpp $(pkg-config --cflags --libs --static pylon-sessions)
#   amalgamation      c++ -std=c++17 app.cpp pylon_sessions.cpp -lsqlite3 -lcrypto (and with
#                     -DPYLON_WITH_POSTGRES -lpq), from amalgamation/ as committed
#   static            PYLON_FULLY_STATIC=ON: ldd must say "not a dynamic executable"
#   shared            BUILD_SHARED_LIBS=ON: versioned SONAME, no pylon::detail symbol exported,
#                     every exported symbol pylon's, the installed sessionctl runs
#   memory-backend    examples/memory_backend built against the installed copy and run through
#                     the shipped conformance suite (find_package ... COMPONENTS conformance)
#   tests-without-pg  not a consumer: the library's own tests configured with
#                     PYLON_WITH_POSTGRES=OFF and a libpq that does not exist, built and run
#                     (no PostgreSQL test registered, no program linked to libpq)
# Runs every route even after one fails; prints a summary; exits non-zero if any failed.
#
# Usage: scripts/consumer-tests.sh [route...]     (default: every route)
# shellcheck disable=SC2317  # the route_* functions (and what they call) are called by name
set -euo pipefail
shopt -s inherit_errexit

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${root}"
base="${root}/build/consumer"
generator=(-G Ninja)
command -v ninja >/dev/null 2>&1 || generator=()
export CMAKE_BUILD_PARALLEL_LEVEL=2

all_routes=(find-package add-subdirectory fetchcontent pkg-config amalgamation static shared
  memory-backend tests-without-pg)
routes=()
for arg in "$@"; do
  case "${arg}" in
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
      exit 0
      ;;
    *)
      [[ " ${all_routes[*]} " == *" ${arg} "* ]] || {
        echo "consumer-tests: unknown route ${arg} (see --help)" >&2
        exit 2
      }
      routes+=("${arg}")
      ;;
  esac
done
((${#routes[@]} > 0)) || routes=("${all_routes[@]}")

note() { printf '\n==> consumer %s: %s\n' "${route}" "$*"; }
# fail MESSAGE: ends the route (each runs in a subshell of its own).
fail() {
  echo "consumer ${route}: FAILED: $*" >&2
  exit 1
}
# fresh NAME: an empty build directory build/consumer/NAME.
fresh() {
  rm -rf "${base:?}/$1"
  mkdir -p "${base}/$1"
  echo "${base}/$1"
}
# run_consumer BINARY: runs it in a scratch directory (it writes consumer_sessions.db there).
run_consumer() {
  local binary="$1" dir
  dir=$(mktemp -d)
  (cd "${dir}" && "${binary}") || {
    rm -rf "${dir}"
    fail "${binary} did not run"
  }
  rm -rf "${dir}"
}
# consumer_cmake DIR OPTIONS...: configures, builds and runs tests/consumer in DIR.
consumer_cmake() {
  local dir="$1"
  shift
  cmake -S tests/consumer -B "${dir}" "${generator[@]}" "$@" >"${dir}.configure.log" 2>&1 ||
    { cat "${dir}.configure.log"; fail "configuring tests/consumer"; }
  cmake --build "${dir}" >"${dir}.build.log" 2>&1 ||
    { tail -n 40 "${dir}.build.log"; fail "building tests/consumer"; }
  run_consumer "${dir}/consumer"
}

# The installed copy that find-package, pkg-config and memory-backend use: the default static
# library, with the conformance suite, installed by `cmake --install --prefix`.
install_dir="${base}/install-build"
prefix="${base}/prefix"
installed=0
install_once() {
  ((installed)) && return 0
  note "building and installing into ${prefix}"
  rm -rf "${install_dir}" "${prefix}"
  mkdir -p "${base}"  # the logs sit beside the build directory
  cmake -S . -B "${install_dir}" "${generator[@]}" -DPYLON_BUILD_TESTS=OFF -DPYLON_BUILD_BENCH=OFF \
    -DPYLON_BUILD_TOOLS=OFF -DPYLON_BUILD_CONFORMANCE=ON >"${install_dir}.log" 2>&1 ||
    { cat "${install_dir}.log"; fail "configuring the library"; }
  cmake --build "${install_dir}" >>"${install_dir}.log" 2>&1 ||
    { tail -n 40 "${install_dir}.log"; fail "building the library"; }
  cmake --install "${install_dir}" --prefix "${prefix}" >>"${install_dir}.log" 2>&1 ||
    { tail -n 40 "${install_dir}.log"; fail "installing"; }
  for file in include/pylon/session_backend.hpp \
    include/pylon/backend_conformance.hpp; do
    [[ -f "${prefix}/${file}" ]] || fail "the install has no ${file}"
  done
  [[ ! -e "${prefix}/include/session_backend.hpp" ]] || fail "a bare include/session_backend.hpp"
  installed=1
}

route_find_package() {
  install_once
  local dir
  dir=$(fresh find-package)
  consumer_cmake "${dir}" -DPYLON_CONSUME=find_package -DCMAKE_PREFIX_PATH="${prefix}"
}

route_add_subdirectory() {
  local dir stage
  dir=$(fresh add-subdirectory)
  consumer_cmake "${dir}" -DPYLON_CONSUME=add_subdirectory -DPYLON_SOURCE_DIR="${root}"
  # Installing the application installs the application only.
  stage=$(fresh add-subdirectory-prefix)
  cmake --install "${dir}" --prefix "${stage}" >/dev/null
  [[ -x "${stage}/bin/consumer" ]] || fail "the application was not installed"
  if find "${stage}" -path '*pylon*' | grep -q .; then
    find "${stage}" -path '*pylon*' >&2
    fail "installing the application also installed pylon-sessions"
  fi
}

route_fetchcontent() {
  local dir archive
  dir=$(fresh fetchcontent)
  archive="${base}/pylon-sessions-src.tar.gz"
  # The working tree as a release archive would hold it: tracked and new files, nothing ignored.
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files --cached --others --exclude-standard -z |
      while IFS= read -r -d '' file; do [[ -e "${file}" ]] && printf '%s\0' "${file}"; done |
      tar --null -T - --transform 's|^|pylon-sessions/|' -czf "${archive}"
  else
    tar --exclude=./build --transform 's|^\.|pylon-sessions|' -czf "${archive}" .
  fi
  consumer_cmake "${dir}" -DPYLON_CONSUME=FetchContent -DPYLON_SOURCE_URL="${archive}"
}

route_pkg_config() {
  install_once
  local dir flags
  dir=$(fresh pkg-config)
  export PKG_CONFIG_PATH="${prefix}/lib/pkgconfig"
  [[ "$(pkg-config --modversion pylon-sessions)" == "$(sed -n 's/^#define PYLON_SESSIONS_VERSION_STRING "\(.*\)"$/\1/p' session_backend.hpp)" ]] ||
    fail "pkg-config --modversion differs from session_backend.hpp"
  flags=$(pkg-config --cflags --libs --static pylon-sessions)
  echo "pkg-config --cflags --libs --static pylon-sessions: ${flags}"
  # shellcheck disable=SC2086  # the flags are words
  c++ -std=c++17 tests/consumer/main.cpp ${flags} -o "${dir}/consumer" || fail "building with pkg-config"
  run_consumer "${dir}/consumer"
}

route_amalgamation() {
  local dir
  dir=$(fresh amalgamation)
  cp amalgamation/pylon_sessions.hpp amalgamation/pylon_sessions.cpp "${dir}/"
  # app.cpp as the README shows it: the amalgamated header by its own name.
  sed 's|#include <pylon/session_backend.hpp>|#include "pylon_sessions.hpp"|' \
    tests/consumer/main.cpp >"${dir}/app.cpp"
  grep -q '"pylon_sessions.hpp"' "${dir}/app.cpp" || fail "app.cpp does not include pylon_sessions.hpp"
  note "c++ -std=c++17 app.cpp pylon_sessions.cpp -lsqlite3 -lcrypto"
  (cd "${dir}" && c++ -std=c++17 app.cpp pylon_sessions.cpp -lsqlite3 -lcrypto -o consumer) ||
    fail "the amalgamation does not build"
  run_consumer "${dir}/consumer"
  note "c++ -std=c++17 -DPYLON_WITH_POSTGRES app.cpp pylon_sessions.cpp -lsqlite3 -lcrypto -lpq"
  (cd "${dir}" && c++ -std=c++17 -DPYLON_WITH_POSTGRES app.cpp pylon_sessions.cpp -lsqlite3 \
    -lcrypto -lpq -o consumer-pg) || fail "the amalgamation does not build with PostgreSQL"
  run_consumer "${dir}/consumer-pg"
  # The header copied as pylon/session_backend.hpp keeps the include line of every other route.
  mkdir -p "${dir}/include/pylon"
  cp amalgamation/pylon_sessions.hpp "${dir}/include/pylon/session_backend.hpp"
  c++ -std=c++17 -fsyntax-only -I "${dir}/include" tests/consumer/main.cpp ||
    fail "main.cpp does not compile against the amalgamated header as pylon/session_backend.hpp"
}

route_static() {
  local dir ldd_output
  dir=$(fresh static)
  consumer_cmake "${dir}" -DPYLON_CONSUME=add_subdirectory -DPYLON_SOURCE_DIR="${root}" \
    -DPYLON_FULLY_STATIC=ON
  ldd_output=$(ldd "${dir}/consumer" 2>&1 || true)
  echo "ldd consumer: ${ldd_output}"
  [[ "${ldd_output}" == *"not a dynamic executable"* ]] || fail "the binary is dynamic"
}

route_shared() {
  local dir build stage lib soname exported internals foreign
  build=$(fresh shared-build)
  stage=$(fresh shared-prefix)
  note "BUILD_SHARED_LIBS=ON, installed into ${stage}"
  cmake -S . -B "${build}" "${generator[@]}" -DBUILD_SHARED_LIBS=ON -DPYLON_BUILD_TOOLS=ON \
    >"${build}.log" 2>&1 || { cat "${build}.log"; fail "configuring the shared library"; }
  cmake --build "${build}" >>"${build}.log" 2>&1 ||
    { tail -n 40 "${build}.log"; fail "building the shared library"; }
  cmake --install "${build}" --prefix "${stage}" >>"${build}.log" 2>&1 ||
    { tail -n 40 "${build}.log"; fail "installing the shared library"; }
  lib=$(find "${stage}" -name 'libpylon_sessions.so.*.*.*' | head -n 1)
  [[ -n "${lib}" ]] || fail "no versioned libpylon_sessions.so.X.Y.Z installed"
  soname=$(readelf -d "${lib}" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
  echo "$(basename "${lib}"): SONAME ${soname}"
  [[ "${soname}" =~ ^libpylon_sessions\.so\.[0-9]+\.[0-9]+$ ]] || fail "SONAME ${soname} is not libpylon_sessions.so.MAJOR.MINOR"
  exported=$(nm -D --defined-only -C "${lib}" | awk '{ $1 = ""; $2 = ""; sub(/^  /, ""); print }')
  echo "exported symbols: $(wc -l <<<"${exported}")"
  internals=$(grep -E 'pylon::detail|::Impl::' <<<"${exported}" || true)
  if [[ -n "${internals}" ]]; then
    head <<<"${internals}" >&2
    fail "internals (pylon::detail, SessionStore::Impl) are exported"
  fi
  foreign=$(grep -v 'pylon::' <<<"${exported}" || true)
  if [[ -n "${foreign}" ]]; then
    head <<<"${foreign}" >&2
    fail "symbols outside namespace pylon are exported"
  fi
  # The installed sessionctl finds its library through its RPATH, with no LD_LIBRARY_PATH.
  ldd "${stage}/bin/sessionctl" | grep -F "${stage}/" || fail "the installed sessionctl does not use the installed library"
  (cd "$(mktemp -d)" && env -u LD_LIBRARY_PATH "${stage}/bin/sessionctl" --db sqlite://s.db create alice >/dev/null) ||
    fail "the installed sessionctl does not run"
  dir=$(fresh shared)
  consumer_cmake "${dir}" -DPYLON_CONSUME=find_package -DCMAKE_PREFIX_PATH="${stage}"
  ldd "${dir}/consumer" | grep -F "${stage}/" || fail "the consumer is not linked to the shared library"
}

route_memory_backend() {
  install_once
  local dir
  dir=$(fresh memory-backend)
  cmake -S examples/memory_backend -B "${dir}" "${generator[@]}" -DCMAKE_PREFIX_PATH="${prefix}" \
    -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
    >"${dir}.configure.log" 2>&1 || { cat "${dir}.configure.log"; fail "configuring the example"; }
  cmake --build "${dir}" >"${dir}.build.log" 2>&1 || { tail -n 40 "${dir}.build.log"; fail "building the example"; }
  "${dir}/memory_backend_test" --gtest_brief=1 || fail "the conformance suite failed on MemoryBackend"
}

# A machine without libpq builds and runs the tests with -DPYLON_WITH_POSTGRES=OFF. libpq is
# pointed at paths that do not exist, so any find_package(PostgreSQL REQUIRED) left in the build
# fails here. No build type (no -g, no -O): the cheapest compile, as this route is about what is
# built and registered; -Werror still covers the code only a build without PostgreSQL compiles.
# CI and PYLON_TEST_DATABASE_URL stay as they are: such a build must not want PostgreSQL anyway.
route_tests_without_pg() {
  local dir pg_tests linked
  dir=$(fresh tests-without-pg)
  cmake -S . -B "${dir}" "${generator[@]}" -DPYLON_WITH_POSTGRES=OFF -DPYLON_BUILD_TESTS=ON \
    -DPYLON_BUILD_CONFORMANCE=ON -DPYLON_BUILD_TOOLS=OFF -DPYLON_BUILD_BENCH=OFF \
    -DPYLON_WERROR=ON -DCMAKE_BUILD_TYPE= \
    -DPostgreSQL_LIBRARY=/nonexistent/libpq.so -DPostgreSQL_INCLUDE_DIR=/nonexistent/include \
    >"${dir}.configure.log" 2>&1 || { cat "${dir}.configure.log"; fail "configuring the tests without PostgreSQL"; }
  cmake --build "${dir}" >"${dir}.build.log" 2>&1 ||
    { tail -n 40 "${dir}.build.log"; fail "building the tests without PostgreSQL"; }
  linked=$(find "${dir}" -type f -perm -u+x -name 'pylon_*' -exec sh -c 'ldd "$1" | grep -q libpq && echo "$1"' _ {} \;)
  [[ -z "${linked}" ]] || fail "linked to libpq: ${linked}"
  ctest --test-dir "${dir}" -j2 --output-on-failure >"${dir}.ctest.log" 2>&1 ||
    { grep -E 'Failed|\*\*\*|tests passed|Total Test' "${dir}.ctest.log" | tail -n 40; fail "the tests failed without PostgreSQL"; }
  tail -n 3 "${dir}.ctest.log"
  pg_tests=$(ctest --test-dir "${dir}" -N -L pg | sed -n 's/^Total Tests: //p')
  [[ "${pg_tests}" == 0 ]] || fail "${pg_tests} PostgreSQL tests registered in a build without PostgreSQL"
}

rm -rf "${prefix}"
results=()
failed=0
for route in "${routes[@]}"; do
  note "start"
  start=${SECONDS}
  # A subshell per route, outside any `if`, so that set -e holds inside it.
  set +e
  (
    set -e
    "route_${route//-/_}"
  )
  status=$?
  set -e
  if ((status == 0)); then
    results+=("PASS  ${route} ($((SECONDS - start))s)")
  else
    results+=("FAIL  ${route} ($((SECONDS - start))s)")
    failed=1
  fi
  # install_once ran in that subshell: the next routes reuse what it installed.
  if [[ -f "${prefix}/include/pylon/backend_conformance.hpp" ]]; then installed=1; fi
done

printf '\n==================== consumer tests ====================\n'
printf '  %s\n' "${results[@]}"
exit "${failed}"

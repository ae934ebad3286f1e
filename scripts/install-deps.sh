#!/usr/bin/env bash
# Installs the Debian 12 packages that building, testing and linting pylon-sessions need.
#
# Idempotent: when every package is already installed it touches nothing (no apt-get update, no
# network). Runs as root, or through sudo when it is available; otherwise it stops and says what
# to install. Usage: scripts/install-deps.sh
set -euo pipefail

packages=(
  # toolchain and build
  build-essential cmake ninja-build pkg-config git
  # the library's dependencies
  libsqlite3-dev sqlite3 libssl-dev libpq-dev
  # sessionctl (CLI11, nlohmann-json) and the demo web app (cpp-httplib)
  libcli11-dev nlohmann-json3-dev libcpp-httplib-dev
  # the demo's browser test (tests/browser): headless Chromium driven over its DevTools
  # protocol by Debian's Python and its WebSocket client; fonts so that screenshots show text
  chromium python3 python3-websocket fonts-dejavu-core
  # tests: GoogleTest/GoogleMock, a throw-away PostgreSQL server (scripts/pg-cluster.sh),
  # chattr (e2fsprogs) and setpriv (util-linux) for failure injection, strace
  libgtest-dev libgmock-dev googletest postgresql e2fsprogs util-linux strace
  # fuzz/ (scripts/fuzz.sh): clang, the libFuzzer and sanitizer runtimes, llvm-symbolizer
  clang-14 libclang-rt-14-dev llvm-14
  # scripts/lint.sh
  clang-format clang-tidy cppcheck shellcheck
)

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "${package}" 2>/dev/null || true)
  if [[ "${status}" != "installed" ]]; then
    missing+=("${package}")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages are installed"
  exit 0
fi
echo "install-deps: missing: ${missing[*]}"

if ((EUID == 0)); then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  # Without a terminal sudo cannot ask for a password: fail at once instead of hanging.
  if [[ -t 0 ]]; then as_root=(sudo); else as_root=(sudo -n); fi
else
  echo "install-deps: not root and sudo is not installed; as root, run:" >&2
  echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

"${as_root[@]}" apt-get update -q
# Install only what is missing: already-installed packages stay at their current versions.
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install-deps: done"

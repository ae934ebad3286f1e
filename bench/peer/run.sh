#!/usr/bin/env bash
# The peer benchmark (README "Performance", docs/bench-writes.md): pylon_bench's `workload`
# section run against better-sqlite3-session-store, at journal DELETE + synchronous=FULL and at
# WAL + synchronous=NORMAL, printed as the same table. Not part of the test command.
#
# Usage: bench/peer/run.sh [--sessions N] [--runs R] [--dir DIR]
#
# Installs the versions pinned in package-lock.json (npm ci) when node_modules is missing or
# older than the lockfile. better-sqlite3 first tries a prebuilt binary from GitHub and otherwise
# compiles itself with node-gyp (a C++ compiler, make and python3; about 2 minutes on 2 cores).
# node-gyp needs the headers of the running Node.js: when the distribution ships them
# (/usr/include/node, Debian's nodejs and libnode-dev), they are used, so nothing is fetched
# from nodejs.org.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "${here}"

for tool in node npm; do
  if ! command -v "${tool}" >/dev/null; then
    echo "bench/peer/run.sh: ${tool} is missing (Debian: apt-get install nodejs npm)" >&2
    exit 2
  fi
done

if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  node_prefix=$(dirname "$(dirname "$(command -v node)")")
  if [[ -f "${node_prefix}/include/node/node.h" ]]; then
    export npm_config_nodedir="${node_prefix}"
  fi
  npm ci --no-audit --no-fund
fi

node workload.js "$@"

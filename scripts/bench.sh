#!/usr/bin/env bash
# The benchmark command (README "Performance"): builds bench/pylon_bench and bench/propagation in
# the release preset, starts a throw-away PostgreSQL cluster on a loopback port unless
# PYLON_TEST_DATABASE_URL names a server already, runs the benchmark against SQLite files in
# /var/tmp and against that server, then the propagation between two stores on each backend
# (README "Several instances: propagation"), and stops what it started.
#
# Usage: scripts/bench.sh [--quick] [pylon_bench options...]
#        scripts/bench.sh --peer [--sessions N] [--runs R] [--dir DIR]
#   --quick   small sizes and one repetition: the smoke run scripts/test.sh makes so that the
#             benchmark never rots (its figures mean nothing; nothing is asserted about time)
#   --peer    instead, the `workload` section's peer: bench/peer/run.sh, the same workload
#             through better-sqlite3-session-store on Node.js (needs node and npm; installs its
#             pinned packages on first use). Not part of the test command.
# Other options go to pylon_bench as they are (--rows N, --sessions N, --dir DIR,
# --only SECTION).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${root}"

if [[ "${1:-}" == --peer ]]; then
  shift
  exec bash bench/peer/run.sh "$@"
fi

cmake --preset release >/dev/null
cmake --build --preset release --target pylon_bench propagation

started_dir=""
cleanup() {
  if [[ -n "${started_dir}" ]]; then bash scripts/pg-cluster.sh stop "${started_dir}" >/dev/null; fi
}
trap cleanup EXIT
if [[ -z "${PYLON_TEST_DATABASE_URL:-}" ]]; then
  eval "$(bash scripts/pg-cluster.sh start)"
  started_dir=${PYLON_PG_DIR}
fi

build/release/bench/pylon_bench --postgres "${PYLON_TEST_DATABASE_URL}" "$@"
rounds=200
for arg in "$@"; do
  if [[ "${arg}" == --quick ]]; then rounds=10; fi
done
build/release/bench/propagation --rounds "${rounds}"
build/release/bench/propagation --rounds "${rounds}" --postgres "${PYLON_TEST_DATABASE_URL}"

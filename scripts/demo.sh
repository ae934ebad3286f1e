#!/usr/bin/env bash
# The first command of the README: installs what the demo needs (a compiler, CMake, Ninja and
# the -dev packages of the library, sessionctl and the demo; nothing for tests or linting),
# builds the demo web app (examples/demo) and sessionctl in a lean release build (build/demo:
# no tests, no benchmarks, no sanitizers), and starts the demo on the SQLite default: the file
# sessions.db in build/demo-data, kept between runs, so users stay logged in across restarts.
# It prints the URL to open; Ctrl-C stops it.
#
# Usage: scripts/demo.sh [--port N] [--no-deps] [--check]
#   --port N    listen on 127.0.0.1:N (default 8080)
#   --no-deps   do not install packages
#   --check     for CI: start the demo on a free port, request its pages once, stop it, exit 0
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${root}"

port=8080
run_deps=1
check=0
while (($# > 0)); do
  case "$1" in
    --port)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || {
        echo "demo.sh: --port needs a number" >&2
        exit 2
      }
      port=$2
      shift
      ;;
    --no-deps) run_deps=0 ;;
    --check) check=1 ;;
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
      exit 0
      ;;
    *)
      echo "demo.sh: unknown argument $1 (see --help)" >&2
      exit 2
      ;;
  esac
  shift
done

# ---- packages: only what building and running the demo needs ----------------------------------
packages=(
  g++ cmake ninja-build pkg-config
  libsqlite3-dev libssl-dev libpq-dev
  libcpp-httplib-dev libcli11-dev nlohmann-json3-dev
)
if ((run_deps)); then
  missing=()
  for package in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "${package}" 2>/dev/null || true)
    [[ "${status}" == installed ]] || missing+=("${package}")
  done
  if ((${#missing[@]} > 0)); then
    echo "==> installing: ${missing[*]}"
    if ((EUID == 0)); then
      as_root=()
    elif command -v sudo >/dev/null 2>&1; then
      if [[ -t 0 ]]; then as_root=(sudo); else as_root=(sudo -n); fi
    else
      echo "demo.sh: not root and no sudo; as root, run:" >&2
      echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
      exit 1
    fi
    "${as_root[@]}" apt-get update -q
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

# ---- build --------------------------------------------------------------------------------------
build="${root}/build/demo"
echo "==> building the demo and sessionctl in ${build}"
cmake -S "${root}" -B "${build}" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DPYLON_BUILD_TESTS=OFF -DPYLON_BUILD_BENCH=OFF -DPYLON_BUILD_TOOLS=ON \
  -DPYLON_SANITIZE= >/dev/null
cmake --build "${build}" --target pylon_demo sessionctl
demo="${build}/tools/demo/pylon_demo"
sessionctl="${build}/tools/sessionctl"

# ---- run ----------------------------------------------------------------------------------------
# The SQLite default: no DATABASE_URL, so sessions.db in the working directory.
unset DATABASE_URL
data="${root}/build/demo-data"
mkdir -p "${data}"
cd "${data}"

if ((!check)); then
  echo
  echo "==> the demo keeps its sessions in ${data}/sessions.db; inspect them with"
  echo "    ${sessionctl} --db ${data}/sessions.db list"
  echo
  exec "${demo}" --host 127.0.0.1 --port "${port}"
fi

# --check: a free port, one request to each page, then stop.
log=$(mktemp)
"${demo}" --host 127.0.0.1 --port 0 >"${log}" 2>&1 &
pid=$!
trap 'kill "${pid}" 2>/dev/null || true; rm -f "${log}"' EXIT
url=""
for _ in $(seq 100); do
  url=$(grep -o 'http://127\.0\.0\.1:[0-9]*/' "${log}" || true)
  [[ -n "${url}" ]] && break
  kill -0 "${pid}" 2>/dev/null || break
  sleep 0.1
done
cat "${log}"
if [[ -z "${url}" ]]; then
  echo "demo.sh: the demo did not start" >&2
  exit 1
fi
checked_port=${url#http://127.0.0.1:}
checked_port=${checked_port%/}
# get PATH: the status line and body of one HTTP request, through bash's /dev/tcp (no curl).
get() {
  local reply
  exec 3<>"/dev/tcp/127.0.0.1/${checked_port}"
  printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$1" >&3
  reply=$(timeout 10 cat <&3)
  exec 3<&-
  printf '%s' "${reply}"
}
page=$(get /)
if [[ "${page}" != "HTTP/1.1 200"* || "${page}" != *"Log in"* ]]; then
  echo "demo.sh: GET ${url} did not answer with the login page" >&2
  exit 1
fi
echo "==> GET ${url}: 200, the login page"
kill -TERM "${pid}"
wait "${pid}"
trap 'rm -f "${log}"' EXIT
"${sessionctl}" stats
echo "==> demo check passed"

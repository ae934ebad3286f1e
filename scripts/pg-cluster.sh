#!/usr/bin/env bash
# Starts and stops a throw-away PostgreSQL cluster for the tests: a fresh initdb in a temporary
# directory, listening on 127.0.0.1 only, on a free port, with a random password.
#
#   eval "$(scripts/pg-cluster.sh start)"   # exports PYLON_TEST_DATABASE_URL and PYLON_PG_DIR
#   scripts/pg-cluster.sh revive "$PYLON_PG_DIR"   # the server up again, if a test left it down
#   scripts/pg-cluster.sh stop "$PYLON_PG_DIR"
#
# `start` writes only the two export lines to stdout (progress goes to stderr), and also leaves
# the URL in $PYLON_PG_DIR/url. The port, address and socket directory are in the cluster's
# configuration ($PYLON_PG_DIR/data/pylon-cluster.conf), so tests may restart the server with
# `pg_ctl --pgdata="$PYLON_PG_DIR/data" restart` (as the `postgres` user when root; the
# directory of pg_ctl is in $PYLON_PG_DIR/bindir). The server runs as the current user, or, when that is root (CI),
# as the unprivileged `postgres` user, since PostgreSQL refuses to run as root. Durability is
# switched off (fsync=off): the cluster is deleted by `stop`, and the tests do not measure it.
# PG_BINDIR overrides where initdb and pg_ctl are found (default: the newest
# /usr/lib/postgresql/*/bin).
set -euo pipefail

readonly marker=".pylon-pg-cluster"
readonly db_user="pylon"
readonly db_name="pylon_test"

log() { echo "pg-cluster: $*" >&2; }
die() {
  log "$*"
  exit 1
}

find_bindir() {
  if [[ -n "${PG_BINDIR:-}" ]]; then
    echo "${PG_BINDIR}"
    return
  fi
  local dir
  dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null |
    sort -V | tail -n 1)
  [[ -n "${dir}" && -x "${dir}/initdb" ]] ||
    die "no PostgreSQL server binaries under /usr/lib/postgresql (run scripts/install-deps.sh)"
  echo "${dir}"
}

# The command prefix that runs a PostgreSQL binary as the cluster's owner.
run_as=()
owner=""
choose_owner() {
  if ((EUID != 0)); then
    owner=$(id -un)
    return
  fi
  local user
  for user in postgres nobody; do
    if id -u "${user}" >/dev/null 2>&1; then
      owner="${user}"
      run_as=(runuser -u "${user}" --)
      return
    fi
  done
  die "running as root and neither a postgres nor a nobody user exists"
}

# Written into the data directory by write_settings, included from postgresql.conf.
readonly settings_file="pylon-cluster.conf"

# write_settings DIR PORT: the listen address, port and socket directory of the cluster in DIR,
# and its (lack of) durability. fsync=off only matters when the OS crashes, and the cluster is
# thrown away then; commits stay synchronous (never synchronous_commit=off: the tests check that
# an acknowledged write survives a server restart).
write_settings() {
  local dir="$1" port="$2" file="$1/data/${settings_file}"
  printf '%s\n' \
    "# Written by scripts/pg-cluster.sh." \
    "listen_addresses = '127.0.0.1'" \
    "port = ${port}" \
    "unix_socket_directories = '${dir}'" \
    "fsync = off" \
    "full_page_writes = off" >"${file}"
  if ((EUID == 0)); then
    chown "${owner}:" "${file}"
  fi
  chmod 600 "${file}"
}

port_in_use() {
  # bash connects to a TCP port through /dev/tcp: success means something listens there.
  (: >"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  local bindir dir password port attempt
  bindir=$(find_bindir)
  choose_owner

  dir=$(mktemp -d "${TMPDIR:-/tmp}/pylon-pg.XXXXXX")
  touch "${dir}/${marker}"
  # From here on a failure removes the half-made cluster.
  trap 'stop_dir "${dir}" >/dev/null 2>&1 || true' ERR
  password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  (umask 077 && printf '%s\n' "${password}" >"${dir}/pwfile")
  if ((EUID == 0)); then
    chown -R "${owner}:" "${dir}"
  fi
  chmod 700 "${dir}"

  log "initdb in ${dir} as ${owner}"
  # Unix-socket connections (only the owner can reach the 0700 directory) are trusted; TCP ones,
  # which the tests make, must present the password.
  "${run_as[@]}" "${bindir}/initdb" --pgdata="${dir}/data" --username="${db_user}" \
    --pwfile="${dir}/pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >"${dir}/initdb.log" 2>&1 ||
    die "initdb failed; see ${dir}/initdb.log: $(tail -n 5 "${dir}/initdb.log")"
  rm -f "${dir}/pwfile"
  # The cluster's settings live in its configuration (an include file), not in pg_ctl -o
  # options, so that a plain `pg_ctl start` or `pg_ctl restart` (the tests restart the server
  # under a running store) brings it back on the same address, port and socket directory.
  printf '%s\n' "include_if_exists = '${settings_file}'" >>"${dir}/data/postgresql.conf"

  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    # Below the kernel's ephemeral range (ip_local_port_range, 32768 and up by default): a
    # client that keeps reconnecting to a stopped server can otherwise be given the server's own
    # port as its source port, connect to itself (a TCP simultaneous open) and hold the port,
    # so that the server cannot bind it again when it restarts.
    port=$((20000 + RANDOM % 12000))
    if port_in_use "${port}"; then
      continue
    fi
    write_settings "${dir}" "${port}"
    if "${run_as[@]}" "${bindir}/pg_ctl" --pgdata="${dir}/data" --log="${dir}/server.log" \
      --wait --timeout=60 --silent start >&2; then
      break
    fi
    # Another process may have taken the port between the check and the bind: try another.
    if grep -q 'could not bind\|Address already in use' "${dir}/server.log" 2>/dev/null &&
      ((attempt < 10)); then
      log "port ${port} was taken, retrying"
      continue
    fi
    die "the server did not start; ${dir}/server.log ends with: $(tail -n 5 "${dir}/server.log")"
  done
  [[ -f "${dir}/data/postmaster.pid" ]] || die "found no free port after 10 attempts"

  "${run_as[@]}" "${bindir}/createdb" --host="${dir}" --port="${port}" --username="${db_user}" \
    "${db_name}" >&2
  local url="postgresql://${db_user}:${password}@127.0.0.1:${port}/${db_name}"
  printf '%s\n' "${url}" >"${dir}/url"
  chmod 600 "${dir}/url"
  # Where pg_ctl is, for tests that restart the server.
  printf '%s\n' "${bindir}" >"${dir}/bindir"
  trap - ERR
  log "PostgreSQL $("${bindir}/postgres" --version | awk '{print $3}') on 127.0.0.1:${port}"
  printf 'export PYLON_TEST_DATABASE_URL=%q\n' "${url}"
  printf 'export PYLON_PG_DIR=%q\n' "${dir}"
}

stop_dir() {
  local dir="$1" bindir
  # Refuse to delete anything that `start` did not make.
  [[ -d "${dir}" && -f "${dir}/${marker}" ]] || die "${dir} is not a cluster made by this script"
  if [[ -f "${dir}/data/postmaster.pid" ]]; then
    bindir=$(find_bindir)
    choose_owner
    "${run_as[@]}" "${bindir}/pg_ctl" --pgdata="${dir}/data" --mode=fast --wait --silent stop >&2 ||
      log "pg_ctl stop failed; removing ${dir} anyway"
  fi
  rm -rf -- "${dir}"
}

# Brings the server of a cluster made by `start` back after a test that took it away and could
# not give it back (a sanitizer ends the process at its first report, before any clean-up): a
# frozen server is thawed, a stopped one started. Does nothing to a running server.
revive_dir() {
  local dir="$1" bindir pid
  [[ -d "${dir}" && -f "${dir}/${marker}" ]] || die "${dir} is not a cluster made by this script"
  bindir=$(find_bindir)
  choose_owner
  if [[ -f "${dir}/data/postmaster.pid" ]]; then
    pid=$(head -n 1 "${dir}/data/postmaster.pid")
    pkill -CONT -P "${pid}" 2>/dev/null || true
    kill -CONT "${pid}" 2>/dev/null || true
  fi
  if ! "${run_as[@]}" "${bindir}/pg_ctl" --pgdata="${dir}/data" status >/dev/null 2>&1; then
    log "the server of ${dir} was down; starting it again"
    "${run_as[@]}" "${bindir}/pg_ctl" --pgdata="${dir}/data" --log="${dir}/server.log" --wait \
      --silent start >&2
  fi
}

case "${1:-}" in
  start)
    start
    ;;
  revive)
    [[ -n "${2:-}" ]] || die "usage: $0 revive DIR (DIR is \$PYLON_PG_DIR from start)"
    revive_dir "$2"
    ;;
  stop)
    [[ -n "${2:-}" ]] || die "usage: $0 stop DIR (DIR is \$PYLON_PG_DIR from start)"
    stop_dir "$2"
    log "stopped and removed $2"
    ;;
  *)
    echo "usage: $0 start | revive DIR | stop DIR" >&2
    exit 2
    ;;
esac

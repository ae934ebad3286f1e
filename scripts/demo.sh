#!/usr/bin/env bash
# The first command of the README: installs the Debian packages, builds sessionctl (release
# preset), and runs it on the embedded SQLite default (the file sessions.db in the working
# directory, here a fresh temporary directory). Every sessionctl call is a new process, so a
# token that validates after `create` has survived a restart. It shows: create a session for
# alice, validate it, list alice's sessions, stats, revoke-user alice, validate again (exit
# status 1: the session is gone), and the file mode of sessions.db (0600).
#
# Usage: scripts/demo.sh [--no-deps] [--keep]   (--keep leaves the temporary directory in place)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${root}"

run_deps=1
keep=0
for arg in "$@"; do
  case "${arg}" in
    --no-deps) run_deps=0 ;;
    --keep) keep=1 ;;
    -h | --help)
      awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
      exit 0
      ;;
    *)
      echo "demo.sh: unknown argument ${arg} (see --help)" >&2
      exit 2
      ;;
  esac
done

if ((run_deps)); then
  bash scripts/install-deps.sh
fi
echo "==> building sessionctl (release preset)"
# The tests are not configured: the demo needs only the library and sessionctl.
cmake --preset release -DPYLON_BUILD_TESTS=OFF >/dev/null
cmake --build --preset release --target sessionctl
sessionctl="${root}/build/release/tools/sessionctl"
[[ -x "${sessionctl}" ]] || {
  echo "demo.sh: ${sessionctl} was not built" >&2
  exit 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/pylon-demo.XXXXXX")
if ((keep)); then
  trap 'echo "==> kept ${work}"' EXIT
else
  trap 'rm -rf "${work}"' EXIT
fi
cd "${work}"
# The default: no DATABASE_URL and no --db means ./sessions.db.
unset DATABASE_URL

# show ARGS...: prints the command as a user would type it, then runs sessionctl with ARGS.
show() {
  printf '\n$ sessionctl %s\n' "$*"
  "${sessionctl}" "$@"
}

echo
echo "==> sessionctl on the SQLite default, in ${work}"

printf '\n$ sessionctl create alice\n'
created=$("${sessionctl}" create alice)
printf '%s\n' "${created}"
token=$(printf '%s\n' "${created}" | sed -n 1p)
[[ -n "${token}" ]] || {
  echo "demo.sh: create printed no token" >&2
  exit 1
}

echo
echo "# a new process opens sessions.db again: the session survived the restart"
show validate "${token}"
show list alice
show stats
show revoke-user alice

echo
echo "# the same token, after revoke-user: refused, with exit status 1"
printf '\n$ sessionctl validate %s\n' "${token}"
status=0
"${sessionctl}" validate "${token}" || status=$?
echo "(exit status ${status})"
if ((status != 1)); then
  echo "demo.sh: expected exit status 1 for a revoked session, got ${status}" >&2
  exit 1
fi

echo
echo "# the database file is private to its owner"
printf '\n$ stat -c "%%A %%a %%n" sessions.db\n'
stat -c '%A %a %n' sessions.db
mode=$(stat -c '%a' sessions.db)
if [[ "${mode}" != 600 ]]; then
  echo "demo.sh: expected mode 600 for sessions.db, got ${mode}" >&2
  exit 1
fi
echo
echo "==> demo done"

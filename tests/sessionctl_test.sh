#!/usr/bin/env bash
# End-to-end checks of sessionctl: each check runs the real binary in a scratch directory, so
# every invocation is a fresh process and "create, then validate" proves restart persistence.
#
# Usage: tests/sessionctl_test.sh path/to/sessionctl
# Prints one line per check and ends with "N passed, M failed"; exits 1 if any check failed.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 path/to/sessionctl" >&2
  exit 2
fi
SESSIONCTL=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
if [[ ! -x $SESSIONCTL ]]; then
  echo "$0: $1 is not an executable" >&2
  exit 2
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
unset DATABASE_URL

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok    $1"; }
fail() {
  failed=$((failed + 1))
  echo "FAIL  $1"
  [[ -s out ]] && sed 's/^/        stdout: /' out
  [[ -s err ]] && sed 's/^/        stderr: /' err
  return 0
}

# run ARGS...: runs sessionctl with stdout in ./out, stderr in ./err, exit status in $rc.
rc=0
run() {
  set +e
  "$SESSIONCTL" "$@" >out 2>err
  rc=$?
  set -e
}

# check NAME EXPECTED_STATUS: passes when the last run exited with EXPECTED_STATUS.
check() {
  if [[ $rc -eq $2 ]]; then pass "$1"; else fail "$1 (exit $rc, expected $2)"; fi
}

# check_that NAME COMMAND...: passes when COMMAND succeeds. Conditions made of several commands
# go through out_has, since `check_that NAME a && b` would not check `b` at all.
check_that() {
  local name=$1
  shift
  if "$@"; then pass "$name"; else fail "$name"; fi
}

# out_has ERE...: true when every extended regular expression matches a line of ./out.
out_has() {
  local pattern
  for pattern in "$@"; do
    if ! grep -Eq -- "$pattern" out; then return 1; fi
  done
}

# not_in_output STRING...: true when no STRING occurs in ./out or ./err.
not_in_output() {
  local s
  for s in "$@"; do
    if grep -qF -- "$s" out err; then return 1; fi
  done
}

DB=sqlite://test.db

# --- create, then validate in a new process ------------------------------------------------------
run --db "$DB" create alice --device 'Firefox 128' --ip 203.0.113.7 --tenant acme
check "create exits 0" 0
TOKEN=$(head -n 1 out)
ID=$(awk '$1 == "id:" {print $2}' out)
check_that "create prints the token alone on the first line" \
  grep -Eq '^pylon_[0-9a-f]{64}$' <<<"$TOKEN"
check_that "create prints the session id" grep -Eq '^[0-9a-f]{64}$' <<<"$ID"
check_that "create prints the user and expiry" \
  out_has '^user: +alice$' '^expires: +[0-9]{4}-[0-9]{2}-[0-9]{2}T'
check_that "create prints the token exactly once" test "$(grep -c "$TOKEN" out)" -eq 1

run --db "$DB" validate "$TOKEN"
check "validate in a new process finds the session" 0
check_that "validate prints id, user, tenant, device, ip" \
  out_has "^id: +$ID\$" '^user: +alice$' '^tenant: +acme$' '^device: +Firefox 128$' \
  '^ip: +203\.0\.113\.7$'
check_that "validate prints times as ISO-8601 UTC and Unix seconds" \
  out_has '^created: +[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z \([0-9]+\)$' \
  '^last_seen: +[0-9-]+T[0-9:]+Z \([0-9]+\)$' '^expires: +[0-9-]+T[0-9:]+Z \([0-9]+\)'
check_that "validate never prints the token" not_in_output "$TOKEN"

printf '%s\n' "$TOKEN" >token.txt
run --db "$DB" validate - <token.txt
check "validate - reads the token from standard input" 0

# --- copy-to -------------------------------------------------------------------------------------
run --db "$DB" copy-to "sqlite://copy.db"
check "copy-to exits 0" 0
check_that "copy-to reports what it copied" out_has '^copied: +1$'
run --db copy.db validate "$TOKEN"
check "a copied session validates at the destination with the same token" 0
run --db "$DB" copy-to "sqlite://copy.db"
check "copy-to can be re-run" 0

run --db "$DB" validate pylon_not-a-token
check "validate of a garbage token exits 1" 1
run --db "$DB" validate "pylon_$(printf '0%.0s' {1..64})"
check "validate of a well-formed unknown token exits 1" 1

run --db "$DB" create mallory --device $'evil\e[2J\nid: forged'
check_that "text from the database is printed with control characters escaped" \
  out_has '^device: +evil\\x1b\[2J\\nid: forged$'
run --db "$DB" revoke-user mallory

# --- list ---------------------------------------------------------------------------------------
run --db "$DB" create alice
SECOND_TOKEN=$(head -n 1 out)
SECOND_ID=$(awk '$1 == "id:" {print $2}' out)
if command -v sqlite3 >/dev/null; then
  # Backdate the newer session, so that "oldest first" must put it first.
  sqlite3 test.db "UPDATE _pylon_sessions SET created_at = created_at - 60 WHERE id = '$SECOND_ID'"
fi
run --db "$DB" list alice
check "list exits 0" 0
check_that "list shows each session" out_has "^$ID"$'\t' "^$SECOND_ID"$'\t'
check_that "list shows one line per session" test "$(wc -l <out)" -eq 2
check_that "list is sorted oldest first" sort -c -k 2,2 -t $'\t' out
check_that "list never prints a token" not_in_output "$TOKEN" "$SECOND_TOKEN"
run --db "$DB" list nobody
check "list of a user without sessions exits 0" 0
check_that "list of a user without sessions prints nothing" test ! -s out

# --- revoke, revoke-id, revoke-user -------------------------------------------------------------
run --db "$DB" create bob
BOB_TOKEN=$(head -n 1 out)
BOB_ID=$(awk '$1 == "id:" {print $2}' out)
run --db "$DB" revoke "$BOB_TOKEN"
check "revoke exits 0" 0
run --db "$DB" validate "$BOB_TOKEN"
check "validate after revoke exits 1" 1
run --db "$DB" revoke "$BOB_TOKEN"
check "revoke of a revoked token exits 1" 1
run --db "$DB" revoke-id "$BOB_ID"
check "revoke-id of a revoked session exits 1" 1
run --db "$DB" create bob
BOB_ID=$(awk '$1 == "id:" {print $2}' out)
run --db "$DB" revoke-id "$BOB_ID"
check "revoke-id exits 0" 0

run --db "$DB" revoke-user alice
check "revoke-user exits 0" 0
check_that "revoke-user prints how many sessions it revoked" grep -qx 'revoked: 2' out
run --db "$DB" validate "$TOKEN"
check "validate after revoke-user exits 1" 1
run --db "$DB" revoke-user alice
check "revoke-user of a user without sessions exits 0" 0
check_that "revoke-user of a user without sessions prints 0" grep -qx 'revoked: 0' out

# --- purge and stats ----------------------------------------------------------------------------
run --db "$DB" create carol
run --db "$DB" create dave
DAVE_TOKEN=$(head -n 1 out)
if command -v sqlite3 >/dev/null; then
  # Make one session expired without waiting for it.
  sqlite3 test.db "UPDATE _pylon_sessions SET expires_at = 1 WHERE user_id = 'dave'"
  EXPECT_EXPIRED=1
  run --db "$DB" validate "$DAVE_TOKEN"
  check "validate of an expired session exits 1" 1
else
  echo "note  sqlite3 not installed: purge and stats see no expired row"
  EXPECT_EXPIRED=0
fi
run --db "$DB" stats
check "stats exits 0" 0
check_that "stats counts sessions, users and expired rows and names the database" \
  out_has '^sessions: +1$' '^users: +1$' "^expired: +$EXPECT_EXPIRED\$" '^database: .*test\.db'
run --db "$DB" purge
check "purge exits 0" 0
check_that "purge prints how many rows it deleted" grep -qx "purged: $EXPECT_EXPIRED" out
run --db "$DB" stats
check_that "stats after purge counts no expired row" grep -Eq '^expired: +0$' out

# --- usage errors and help ----------------------------------------------------------------------
run --db "$DB" frobnicate
check "an unknown command exits 2" 2
check_that "a usage error points at --help" grep -q -- '--help' err
run --db "$DB" validate
check "a missing argument exits 2" 2
run --db "$DB" list alice bob
check "an extra argument exits 2" 2
run --db "$DB" list alice --colour
check "an unknown option exits 2" 2
run --db "$DB" create ''
check "an empty user exits 2" 2
run
check "no command exits 2" 2
run --db 'sqlite://test.db?no_such_parameter=1' stats
check "a malformed database URL exits 2" 2

run --help
check "--help exits 0" 0
check_that "--help mentions every command and the exit codes" \
  out_has 'create USER' 'validate TOKEN' 'list USER' 'revoke TOKEN' 'revoke-id ID' \
  'revoke-user USER' '^  purge ' '^  stats ' 'DATABASE_URL' 'sqlite://' '^ +3 +storage error'
all_commands_help=0
for command in create validate list revoke revoke-id revoke-user purge stats; do
  run "$command" --help
  if [[ $rc -ne 0 ]] || ! grep -q "^Usage: sessionctl .* $command" out; then
    echo "        $command --help: exit $rc"
    all_commands_help=1
  fi
done
check_that "COMMAND --help exits 0 with that command's usage" test "$all_commands_help" -eq 0

# --- the database: garbage file, DATABASE_URL, default, PostgreSQL ------------------------------
head -c 8192 /dev/urandom >garbage.db
cp garbage.db garbage.orig
run --db garbage.db list alice
check "a garbage database file exits 3" 3
check_that "the message names the garbage file" grep -q 'garbage\.db' err
check_that "the garbage file is left byte for byte as it was" cmp -s garbage.db garbage.orig

DATABASE_URL=sqlite://from-env.db run create erin
check "create with DATABASE_URL exits 0" 0
ERIN_TOKEN=$(head -n 1 out)
check_that "DATABASE_URL names the database file" test -f from-env.db -a ! -e sessions.db
DATABASE_URL=sqlite://from-env.db run validate "$ERIN_TOKEN"
check "validate through DATABASE_URL finds the session" 0
DATABASE_URL=sqlite://from-env.db run --db "$DB" validate "$ERIN_TOKEN"
check "--db takes precedence over DATABASE_URL" 1

run create frank
check "create without --db or DATABASE_URL exits 0" 0
check_that "the default database is sessions.db in the working directory, mode 600" \
  test -f sessions.db -a "$(stat -c %a sessions.db)" = 600
FRANK_TOKEN=$(head -n 1 out)
run validate "$FRANK_TOKEN"
check "validate on the default database finds the session" 0

run --db postgres://u:secret@h/db list alice
check "a postgres:// URL exits 3 in a build without PostgreSQL" 3
check_that "the PostgreSQL error never shows the password" not_in_output secret
check_that "the PostgreSQL error says something" test -s err

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]

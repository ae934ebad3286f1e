#!/usr/bin/env bash
# End-to-end checks of sessionctl: each check runs the real binary in a scratch directory, so
# every invocation is a fresh process and "create, then validate" proves restart persistence.
# With PYLON_TEST_DATABASE_URL set (scripts/pg-cluster.sh), `copy` is also checked into and out
# of a fresh PostgreSQL database.
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
PG_DB=""
cleanup() {
  if [[ -n "$PG_DB" ]]; then
    psql "$PYLON_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $PG_DB" >/dev/null 2>&1 || true
  fi
  chattr -i "$WORK/immutable.db" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"
unset DATABASE_URL

passed=0
failed=0
pass() {
  passed=$((passed + 1))
  echo "ok    $1"
}
fail() {
  failed=$((failed + 1))
  echo "FAIL  $1"
  [[ -s out ]] && sed 's/^/        stdout: /' out | head -20
  [[ -s err ]] && sed 's/^/        stderr: /' err | head -20
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
# run_in INPUT ARGS...: the same, with INPUT on standard input.
run_in() {
  local input=$1
  shift
  set +e
  printf '%s\n' "$input" | "$SESSIONCTL" "$@" >out 2>err
  rc=$?
  set -e
}

# check NAME EXPECTED_STATUS: passes when the last run exited with EXPECTED_STATUS.
check() {
  if [[ $rc -eq $2 ]]; then pass "$1"; else fail "$1 (exit $rc, expected $2)"; fi
}
check_that() {
  local name=$1
  shift
  if "$@"; then pass "$name"; else fail "$name"; fi
}
out_has() {
  local pattern
  for pattern in "$@"; do grep -Eq -- "$pattern" out || return 1; done
}
err_has() {
  local pattern
  for pattern in "$@"; do grep -Eq -- "$pattern" err || return 1; done
}
# json EXPR: evaluates a Python expression on the JSON document in ./out (as `d`).
json() {
  python3 -c "import json, sys; d = json.load(open('out')); sys.exit(0 if ($1) else 1)"
}
no_token_in_output() {
  ! grep -Eq 'pylon_[0-9a-f]{64}' out err
}

# ---- usage, help, version ------------------------------------------------------------------------
run --version
check "--version exits 0" 0
check_that "--version names the tool" out_has '^sessionctl \(pylon-sessions\) [0-9]'
run --help
check_that "--help lists every command" out_has create validate show list revoke revoke-id \
  revoke-user purge stats check migrate export import copy 'Exit status'
for command in create validate show list revoke revoke-id revoke-user purge stats check migrate \
  export import copy; do
  run "$command" --help
  if [[ $rc -eq 0 ]] && out_has 'Usage: sessionctl' 'Exit status'; then
    pass "$command --help"
  else
    fail "$command --help"
  fi
done
run
check "no command: usage error" 2
run frobnicate
check "unknown command: usage error" 2
run list --bogus
check "unknown option: usage error" 2

# ---- inspection never creates a database ---------------------------------------------------------
for command in list stats check "show 0123456789abcdef" "migrate --dry-run" export; do
  # shellcheck disable=SC2086  # the command's words
  run --db typo.db $command
  if [[ $rc -eq 3 && ! -e typo.db ]] && err_has 'no database at typo.db'; then
    pass "$command refuses a missing file and creates none"
  else
    fail "$command refuses a missing file and creates none (exit $rc)"
  fi
done
run_in "pylon_$(printf '%064d' 0)" --db typo.db validate -
check_that "validate refuses a missing file and creates none" test ! -e typo.db

# ---- create, validate, show, list ----------------------------------------------------------------
run create alice --device 'Firefox on Linux' --ip 203.0.113.7 --tenant acme --idp-session-id sid-1
check "create" 0
token=$(sed -n 1p out)
check_that "create prints the token first" grep -Eq '^pylon_[0-9a-f]{64}$' <<<"$token"
check_that "sessions.db is created 0600" test "$(stat -c %a sessions.db)" = 600
run --json create bob
check "create --json" 0
check_that "create --json has the token and the session" json \
  'd["token"].startswith("pylon_") and d["session"]["user_id"] == "bob"'
bob_token=$(python3 -c "import json; print(json.load(open('out'))['token'])")
bob_id=$(python3 -c "import json; print(json.load(open('out'))['session']['id'])")
run create carol --ttl 1 --idle 0
check "create with a 1 s lifetime" 0

run_in "$token" validate -
check "validate - (from stdin) in a new process" 0
check_that "validate shows the session and never the token" \
  out_has '^user: +alice' '^idp_session_id: +sid-1' '^device: +Firefox on Linux'
check_that "validate printed no token" no_token_in_output
run_in "$token" --json validate -
check_that "validate --json" json 'd["valid"] and d["session"]["tenant_id"] == "acme"'
run validate "pylon_$(printf '%064d' 1)"
check "validate of an unknown token: 1" 1
run validate not-a-token
check "validate of a malformed token: 1" 1

run show "${bob_id:0:8}"
check "show by an 8-character prefix" 0
check_that "show names the user" out_has '^user: +bob'
run --json show "$bob_id"
check_that "show --json" json "d['id'] == '$bob_id' and d['user_id'] == 'bob'"
run show "$token"
check "show refuses a token" 2
check_that "show says it was given a token" err_has 'that is a token'
check_that "show printed no token" no_token_in_output
run show ffffffffffffffff
check "show of an unknown id: 1" 1

sleep 1.1 # carol's session expires
run list
check "list" 0
check_that "list has a header and the live sessions" out_has '^ID +USER +TENANT' alice bob
check_that "list hides expired sessions" bash -c '! grep -q carol out'
run list --all
check_that "list --all shows expired sessions" out_has carol 'expired'
run list --user alice
check_that "list --user" out_has alice
check_that "list --user shows no other user" bash -c '! grep -q bob out'
run list --tenant acme
check_that "list --tenant" out_has alice
run --json list --limit 1
check_that "list --json --limit 1 is an array of one" json 'isinstance(d, list) and len(d) == 1'
run --json list --user nobody
check_that "list --json of nothing is []" json 'd == []'

# ---- tokens in the wrong place are never echoed --------------------------------------------------
run "$token"
check "a token as the command: usage error" 2
check_that "...and it is not echoed" no_token_in_output
run list --user alice "$token"
check "a token as an extra argument: usage error" 2
check_that "...and it is not echoed" no_token_in_output
run list --limit "$token"
check_that "a token as an option value is not echoed" no_token_in_output

# ---- stats, check, migrate, export -----------------------------------------------------------
run stats
check "stats" 0
check_that "stats counts live and expired" out_has '^sessions: +2$' '^expired: +1$' '^users: +2$'
run --json stats
check_that "stats --json" json 'd["sessions"] == 2 and d["schema_version"] >= 3'
run check
check "check of a sound database: 0" 0
check_that "check reports integrity, schema, shape and mode" out_has 'integrity' 'schema version' \
  'table shape' 'file mode'
run --json check
check_that "check --json" json 'd["ok"] is True and len(d["checks"]) >= 5'
chmod 644 sessions.db
run check
check "check of a file others may read: 1" 1
check_that "check says why" out_has 'PROBLEM +file mode'
chmod 600 sessions.db
run migrate --dry-run
check "migrate --dry-run" 0
check_that "migrate --dry-run: up to date" out_has 'up to date'
run --json migrate
check_that "migrate --json" json 'd["applied"] == []'
run --db fresh.db migrate
check "migrate refuses a missing file" 3
run --db fresh.db --json migrate --create
check_that "migrate --create applies every migration" json 'len(d["applied"]) >= 3'

run export
check "export" 0
check_that "export writes JSON Lines without tokens" python3 -c "
import json
rows = [json.loads(line) for line in open('out')]
assert len(rows) == 2 and all('data_base64' in r for r in rows)"
check_that "export printed no token" no_token_in_output
cp out export.jsonl

# ---- read-only and immutable files ---------------------------------------------------------------
cp sessions.db readonly.db
chmod 400 readonly.db
run --db readonly.db stats
check "stats on a read-only file" 0
if cp sessions.db immutable.db && chattr +i immutable.db 2>/dev/null; then
  run --db immutable.db list
  check "list on an immutable file" 0
  chattr -i immutable.db
else
  echo "note  chattr +i is not available here; the immutable-file check did not run"
fi

# ---- revoke, revoke-id, revoke-user, purge ------------------------------------------------------
run_in "$bob_token" revoke -
check "revoke -" 0
run_in "$bob_token" validate -
check "the revoked token no longer validates (new process)" 1
run_in "$bob_token" revoke -
check "revoking it again: 1" 1
run --json create dave
dave_id=$(python3 -c "import json; print(json.load(open('out'))['session']['id'])")
run revoke-id "${dave_id:0:10}"
check "revoke-id by prefix" 0
check_that "revoke-id names the whole id" out_has "revoked: $dave_id"
run revoke-id "$dave_id"
check "revoke-id of a gone id: 1" 1
run --json revoke-user alice --tenant other
check_that "revoke-user of another tenant removes nothing" json 'd["count"] == 0'
run --json revoke-user alice
check_that "revoke-user --json" json 'd["count"] == 1'
run_in "$token" validate -
check "alice's token no longer validates" 1
run --json purge
check_that "purge removes the expired session" json 'd["purged"] == 1'

# ---- import, copy ---------------------------------------------------------------------------------
run --db imported.db import export.jsonl
check "import" 0
check_that "import counts the rows" out_has '^imported: +2$'
run_in "$token" --db imported.db validate -
check "an imported session validates with its original token" 0
run --db imported.db import export.jsonl
check_that "import again changes nothing" out_has '^imported: +0$' '^unchanged: +2$'
printf '%s\n' '{"id": "short", "user_id": "x", "created_at": 1, "last_seen_at": 1, "expires_at": 99999999999}' \
  'not json' >bad.jsonl
run --db imported.db import bad.jsonl
check "import of unstorable lines: exit 4, not 2" 4
check_that "the skipped lines are named" err_has 'skipped'

for i in 1 2 3; do "$SESSIONCTL" --db source.db create "user-$i" >"token-$i"; done
run --db source.db copy --to sqlite://dest.db
check "copy into a new SQLite file" 0
check_that "copy reports 3 copied" out_has '^copied: +3$'
run_in "$(sed -n 1p token-1)" --db dest.db validate -
check "a copied session validates at the destination with its token" 0
run_in "$(sed -n 1p token-1)" --db dest.db revoke -
check "revoke at the destination" 0
run --db source.db copy --to sqlite://dest.db
check "copy again" 0
check_that "the re-run restores nothing revoked at the destination" out_has '^copied: +0$' \
  '^not restored: +1 '
run_in "$(sed -n 1p token-1)" --db dest.db validate -
check "the revoked session stays revoked after the re-run" 1
export COPY_TARGET=sqlite://dest2.db
run --db source.db --json copy --to-env COPY_TARGET
check_that "copy --to-env, --json" json 'd["inserted"] == 3 and d["skipped"] == 0'
run_in sqlite://dest3.db --db source.db copy --to -
check "copy --to - (URL from stdin)" 0
run --db source.db copy --to sqlite://source.db
check "copy into itself: usage error" 2
run --db source.db copy
check "copy without a destination: usage error" 2
run --db source.db copy --to-env NOT_SET_ANYWHERE
check "copy --to-env of an unset variable: usage error" 2
# A row the destination cannot store: a device over the 1 KiB limit, written behind the
# library's back.
python3 - <<'EOF'
import hashlib, sqlite3, time
now = int(time.time())
db = sqlite3.connect("source.db")
db.execute("INSERT INTO _pylon_sessions (id, user_id, created_at, expires_at, last_seen_at, "
           "absolute_expires_at, device) VALUES (?, 'big', ?, ?, ?, ?, ?)",
           (hashlib.sha256(b"x").hexdigest(), now, now + 3600, now, now + 86400, "d" * 2000))
db.commit()
EOF
run --db source.db copy --to sqlite://dest4.db
check "copy skips an unstorable row: exit 4, not 2" 4
check_that "the skipped row is reported, the others copied" out_has '^copied: +3$' '^skipped: +1$'
check_that "...with its reason" err_has 'skipped [0-9a-f]{64}: .*device'

if [[ -n "${PYLON_TEST_DATABASE_URL:-}" ]] && command -v psql >/dev/null; then
  PG_DB="sessionctl_test_$$"
  psql "$PYLON_TEST_DATABASE_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
  PG_URL=$(sed -E "s#/[^/?]+(\\?|$)#/$PG_DB\\1#" <<<"$PYLON_TEST_DATABASE_URL")
  export PG_URL
  run --db dest.db copy --to-env PG_URL
  check "copy into PostgreSQL" 0
  run_in "$(sed -n 1p token-2)" --db "$PG_URL" validate -
  check "a copied session validates on PostgreSQL with its token" 0
  run_in "$(sed -n 1p token-2)" --db "$PG_URL" revoke -
  run --db dest.db copy --to-env PG_URL
  check_that "PostgreSQL: the re-run restores nothing revoked there" out_has '^copied: +0$' \
    '^not restored: +1 '
  run --db "$PG_URL" --json stats
  check_that "PostgreSQL: stats --json" json 'd["sessions"] == 1'
  run --db "$PG_URL" check
  check "PostgreSQL: check" 0
  run --db "$PG_URL" list
  check_that "PostgreSQL: list" out_has '^ID +USER'
  check_that "PostgreSQL: no password in any output" bash -c "! grep -qF '$(sed -E 's#.*://[^:]*:([^@]*)@.*#\1#' <<<"$PG_URL")' out err"
  run --json copy --from-env PG_URL --to sqlite://from-pg.db
  check_that "copy from PostgreSQL back into SQLite" json 'd["inserted"] == 1'
else
  echo "note  PYLON_TEST_DATABASE_URL is not set: the PostgreSQL copy checks did not run"
fi

echo
echo "$passed passed, $failed failed"
((failed == 0))

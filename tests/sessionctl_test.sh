#!/usr/bin/env bash
# End-to-end checks of sessionctl: each check runs the real binary in a scratch directory, so
# every invocation is a fresh process and "create, then validate" proves restart persistence.
# With PYLON_TEST_DATABASE_URL set (scripts/pg-cluster.sh), `copy` is also checked into and out
# of a fresh PostgreSQL database, and the administration commands (`list` page by page, `count`,
# `revoke --tenant`) run against PostgreSQL as they do against SQLite.
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
PG_ADMIN_DB=""
cleanup() {
  local db
  for db in "$PG_DB" "$PG_ADMIN_DB"; do
    if [[ -n "$db" ]]; then
      psql "$PYLON_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
    fi
  done
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
check_that "--help lists every command" out_has create validate show list count revoke revoke-id \
  revoke-user purge stats check migrate export import copy 'Exit status'
for command in create validate show list count revoke revoke-id revoke-user purge stats check \
  migrate export import copy; do
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
for command in list "list --all" count stats check "show 0123456789abcdef" "migrate --dry-run" \
  export "revoke --tenant acme"; do
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
  run --db immutable.db list --all
  check "list --all on an immutable file" 0
  check_that "list --all on an immutable file shows its sessions" out_has alice bob
  # `list` asks the library, which opens a database read-write, as an application does.
  run --db immutable.db list
  check "list (through the library) on an immutable file: 3" 3
  check_that "...saying which commands read it read-only" err_has 'read-only' 'list --all'
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

# ---- administration: list page by page, count per tenant, revoke --tenant -----------------------
# A database of 1,250 live sessions in three tenants (acme 700, globex 400, none 150), 220 of them
# anonymous, and 15 expired ones, written behind the library's back with migration 0005's
# columns (anonymous sessions are made by applications, SessionStore::create_anonymous; sessionctl
# makes none). admin-rows.json holds every row, admin-times.sh the times the filters use.
run --db admin.db migrate --create
check "migrate --create for the administration checks" 0
python3 - <<'EOF'
import hashlib, json, sqlite3, time
now = int(time.time())
db = sqlite3.connect("admin.db")
rows = []
def add(i, tenant, k, anonymous, live):
    token = "pylon_" + hashlib.sha256(b"admin-%d" % i).hexdigest()
    created = now - 30000 + i * 10 if live else now - 40000 + i
    user = "" if anonymous else "%s-user-%d" % (tenant or "solo", k % 10)
    row = {
        "id": hashlib.sha256(token.encode()).hexdigest(), "token": token, "user_id": user,
        "tenant_id": tenant, "device": "kiosk" if i % 4 == 0 else "browser-%d" % (i % 3),
        "created_at": created, "last_seen_at": created + i % 50,
        "expires_at": now + 3600 if live else now - 100, "absolute_expires_at": now + 86400,
        "authenticated_at": 0 if anonymous else created,
        "idle_timeout_seconds": 2592000 if i % 7 == 0 else None, "live": live,
    }
    rows.append(row)
    db.execute(
        "INSERT INTO _pylon_sessions (id, user_id, tenant_id, created_at, expires_at, "
        "last_seen_at, absolute_expires_at, device, authenticated_at, idle_timeout_seconds) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (row["id"], user, tenant, created, row["expires_at"], row["last_seen_at"],
         row["absolute_expires_at"], row["device"], row["authenticated_at"],
         row["idle_timeout_seconds"]))
i = 0
for tenant, size, anonymous in (("acme", 700, 150), ("globex", 400, 50), (None, 150, 20)):
    for k in range(size):
        add(i, tenant, k, k < anonymous, True)
        i += 1
for k in range(15):
    add(i, "acme", k, k % 3 == 0, False)
    i += 1
db.commit()
json.dump(rows, open("admin-rows.json", "w"))
iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
minute = lambda t: t - t % 60
with open("admin-times.sh", "w") as f:
    f.write("CREATED_SINCE=%d\nCREATED_BEFORE=%d\n" % (now - 30000 + 300 * 10, now - 30000 + 600 * 10))
    seen_since = minute(now - 30000 + 200 * 10)
    f.write("SEEN_SINCE=%d\nSEEN_SINCE_TEXT='%s'\n" % (
        seen_since, time.strftime("%Y-%m-%d %H:%M", time.gmtime(seen_since))))
    f.write("SEEN_BEFORE=%d\nSEEN_BEFORE_ISO=%s\n" % (now - 30000 + 900 * 10 + 7,
                                                      iso(now - 30000 + 900 * 10 + 7)))
EOF
# shellcheck source=/dev/null  # written just above
source admin-times.sh
cp admin.db admin-pristine.db

# ids_match LABEL PREDICATE: passes when the JSON array in ./out holds, in this order, exactly the
# ids of the live rows of admin-rows.json for which PREDICATE (a Python expression on `r`) holds.
ids_match() {
  check_that "$1" python3 - "$2" <<'EOF'
import json, sys
rows = json.load(open("admin-rows.json"))
want = sorted(r["id"] for r in rows if r["live"] and eval(sys.argv[1], {}, {"r": r}))
got = [s["id"] for s in json.load(open("out"))]
sys.exit(0 if got == want else 1)
EOF
}

# follow_pages DB LIMIT FILTERS...: `--json list --limit LIMIT FILTERS`, then --after each cursor
# printed, until none is; the ids in ./pages-ids (in order), the number of pages in $pages.
pages=0
follow_pages() {
  local db=$1 limit=$2 cursor=""
  shift 2
  pages=0
  : >pages-ids
  while ((pages < 50)); do
    run --db "$db" --json list --limit "$limit" "$@" ${cursor:+--after "$cursor"}
    [[ $rc -eq 0 ]] || return 1
    python3 -c 'import json; [print(s["id"]) for s in json.load(open("out"))]' >>pages-ids
    pages=$((pages + 1))
    cursor=$(sed -nE 's/.* --after ([0-9a-f]{64}) .*/\1/p' err)
    [[ -n $cursor ]] || return 0
  done
  return 1
}
# pages_match PREDICATE: ./pages-ids holds, in order and once each, the live rows PREDICATE keeps.
pages_match() {
  python3 - "$1" <<'EOF'
import json, sys
rows = json.load(open("admin-rows.json"))
want = sorted(r["id"] for r in rows if r["live"] and eval(sys.argv[1], {}, {"r": r}))
got = open("pages-ids").read().split()
sys.exit(0 if got == want and len(set(got)) == len(got) else 1)
EOF
}

# admin_checks LABEL DB: the administration commands on the fixture above, in the database DB
# (the SQLite file itself, or PostgreSQL after a copy of it). Ends by revoking tenant globex.
admin_checks() {
  local label=$1 db=$2
  follow_pages "$db" 500
  check_that "$label: list --limit 500 follows the cursor over 3 pages" test "$pages" -eq 3
  check_that "$label: ...every live session exactly once, by id, none expired" pages_match True
  follow_pages "$db" 64 --tenant acme
  check_that "$label: list --tenant acme pages (11 of 64) to the end" test "$pages" -eq 11
  check_that "$label: ...acme's 700 live sessions once each" pages_match 'r["tenant_id"] == "acme"'
  run --db "$db" --json list
  ids_match "$label: list without --limit lists all 1,250 (pages of 1,000 inside)" True
  check_that "$label: ...with no cursor" bash -c '! grep -q -- --after err'
  run --db "$db" --json list --limit 1250
  check_that "$label: --limit equal to what is left prints no cursor" err_has '^1250 sessions$'
  run --db "$db" --json list --limit 1249
  check_that "$label: --limit one short prints the cursor" err_has '1249 sessions shown' \
    "--after [0-9a-f]{64} "
  run --db "$db" list --tenant globex --limit 3
  check "$label: list as a table" 0
  check_that "$label: ...a header and 3 rows" test "$(wc -l <out)" -eq 4
  check_that "$label: ...the cursor on standard error" err_has 'the next page: --after [0-9a-f]{64}'
  run --db "$db" list --anonymous --tenant globex --limit 1
  check_that "$label: an anonymous session's USER is (anonymous)" out_has '\(anonymous\) +globex'

  run --db "$db" --json list --user acme-user-3
  ids_match "$label: list --user" 'r["user_id"] == "acme-user-3"'
  run --db "$db" --json list --anonymous
  ids_match "$label: list --anonymous (220)" 'r["user_id"] == ""'
  run --db "$db" --json list --anonymous --tenant globex
  ids_match "$label: list --anonymous --tenant globex (50)" \
    'r["user_id"] == "" and r["tenant_id"] == "globex"'
  run --db "$db" --json list --device kiosk --tenant acme
  ids_match "$label: list --device --tenant" 'r["device"] == "kiosk" and r["tenant_id"] == "acme"'
  run --db "$db" --json list --created-since "$CREATED_SINCE" --created-before "$CREATED_BEFORE"
  ids_match "$label: list --created-since/--created-before (Unix seconds)" \
    "$CREATED_SINCE <= r['created_at'] < $CREATED_BEFORE"
  run --db "$db" --json list --last-seen-since "$SEEN_SINCE_TEXT" --last-seen-before "$SEEN_BEFORE_ISO"
  ids_match "$label: list --last-seen-since/--last-seen-before (UTC times)" \
    "$SEEN_SINCE <= r['last_seen_at'] < $SEEN_BEFORE"
  run --db "$db" --json list --tenant nobody
  check_that "$label: list of nothing is []" json 'd == []'
  run --db "$db" --json list --anonymous --tenant acme --limit 1
  check_that "$label: --json of an anonymous session: anonymous, authenticated_at 0" json \
    'd[0]["anonymous"] is True and d[0]["user_id"] == "" and d[0]["authenticated_at"] == 0'
  run --db "$db" --json list --user acme-user-7
  check_that "$label: --json of a user's sessions: authenticated_at, idle_timeout_seconds" python3 -c "
import json
rows = {r['id']: r for r in json.load(open('admin-rows.json'))}
got = json.load(open('out'))
assert got and all(not s['anonymous'] for s in got)
assert all(s['authenticated_at'] == rows[s['id']]['authenticated_at'] for s in got)
assert all(s['idle_timeout_seconds'] == rows[s['id']]['idle_timeout_seconds'] for s in got)
assert {s['idle_timeout_seconds'] for s in got} == {None, 2592000}"

  run --db "$db" --json count
  check "$label: count" 0
  check_that "$label: count per tenant, anonymous included, expired left out" json \
    'd["tenants"] == [{"tenant_id": None, "sessions": 150, "anonymous": 20}, {"tenant_id": "acme", "sessions": 700, "anonymous": 150}, {"tenant_id": "globex", "sessions": 400, "anonymous": 50}] and d["sessions"] == 1250 and d["anonymous"] == 220'
  run --db "$db" count
  check_that "$label: count as a table" out_has '^TENANT +SESSIONS +ANONYMOUS$' '^acme +700 +150$' \
    '^- +150 +20$'
  check_that "$label: ...the total on standard error" err_has '1250 sessions \(220 anonymous\)'
  run --db "$db" --json stats
  check_that "$label: stats counts anonymous sessions apart from users" json \
    'd["sessions"] == 1250 and d["anonymous"] == 220 and d["users"] == 30'

  run --db "$db" --json revoke --tenant globex
  check "$label: revoke --tenant" 0
  check_that "$label: ...revoked all 400 of globex's sessions" json \
    'd["count"] == 400 and d["tenant"] == "globex" and len(d["revoked"]) == 400'
  run --db "$db" --json count
  check_that "$label: ...and left the other tenants" json \
    '[(t["tenant_id"], t["sessions"]) for t in d["tenants"]] == [(None, 150), ("acme", 700)]'
  run_in "$(python3 -c 'import json; print([r["token"] for r in json.load(open("admin-rows.json")) if r["tenant_id"] == "globex"][0])')" \
    --db "$db" validate -
  check "$label: a globex token no longer validates" 1
  run_in "$(python3 -c 'import json; print([r["token"] for r in json.load(open("admin-rows.json")) if r["tenant_id"] == "acme" and r["live"]][0])')" \
    --db "$db" validate -
  check "$label: an acme token still does" 0
  run --db "$db" revoke --tenant globex
  check "$label: revoke --tenant of a tenant with none left: 0" 0
  check_that "$label: ...revoked: 0" out_has '^revoked: 0$'
}

admin_checks SQLite admin.db
run --db admin.db check
check "check: anonymous sessions are rows the library serves" 0
run --db admin.db list --all --anonymous --tenant acme
check_that "list --all --anonymous shows expired anonymous sessions too" out_has 'expired'
run --db admin.db export
check_that "export carries authenticated_at, idle_timeout_seconds and anonymous" python3 -c "
import json
lines = [json.loads(line) for line in open('out')]
assert any(l['anonymous'] and l['authenticated_at'] == 0 and l['user_id'] == '' for l in lines)
assert any(l['idle_timeout_seconds'] == 2592000 for l in lines)"

# Usage errors of the new options, each named; never a token echoed.
run --db admin.db list --after not-a-cursor
check "list --after of a non-cursor: 2" 2
check_that "...says what a cursor is" err_has '--after takes the cursor'
run --db admin.db list --after "$token"
check "list --after of a token: 2" 2
check_that "...and it is not echoed" no_token_in_output
run --db admin.db list --created-since yesterday
check "list --created-since of a non-time: 2" 2
check_that "...naming the option and the forms" err_has "--created-since 'yesterday' is not a time"
run --db admin.db list --last-seen-before 2026-02-30
check "list of an impossible date: 2" 2
run --db admin.db list --user ''
check "list --user '': 2 (--anonymous lists those)" 2
run --db admin.db list --user alice --anonymous
check "list --user with --anonymous: 2" 2
run --db admin.db list --all --device kiosk
check "list --all with a filter of the live listing: 2" 2
run --db admin.db list --limit 0
check "list --limit 0: 2" 2
run --db admin.db revoke
check "revoke with neither TOKEN nor --tenant: 2" 2
run_in "$token" --db admin.db revoke - --tenant acme
check "revoke with both TOKEN and --tenant: 2" 2
run --db admin.db revoke --tenant ''
check "revoke --tenant '': 2" 2
run --db admin.db revoke-user ''
check "revoke-user '': 2 (it would revoke every anonymous session)" 2
run --db admin.db create ''
check "create '': 2" 2

# A database at an older schema version: `list` and `count` (through the library, which would
# migrate it) refuse it and leave it as it is; the read-only commands read it.
cp admin-pristine.db older.db
python3 -c "
import sqlite3
db = sqlite3.connect('older.db')
db.execute('DELETE FROM _pylon_schema_migrations WHERE version = (SELECT max(version) FROM _pylon_schema_migrations)')
db.commit()"
older_version=$(python3 -c "import sqlite3; print(sqlite3.connect('older.db').execute('SELECT max(version) FROM _pylon_schema_migrations').fetchone()[0])")
for command in list count; do
  run --db older.db "$command"
  if [[ $rc -eq 3 ]] && err_has "schema version $older_version" 'sessionctl migrate'; then
    pass "$command refuses an older schema"
  else
    fail "$command refuses an older schema (exit $rc)"
  fi
done
check_that "...and migrated nothing" test "$(python3 -c "import sqlite3; print(sqlite3.connect('older.db').execute('SELECT max(version) FROM _pylon_schema_migrations').fetchone()[0])")" = "$older_version"
run --db older.db --json list --all --limit 5
check_that "list --all reads the older database" json 'len(d) == 5'

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

  # The administration checks on PostgreSQL: the fixture copied there (its live rows).
  PG_ADMIN_DB="sessionctl_admin_$$"
  psql "$PYLON_TEST_DATABASE_URL" -qc "CREATE DATABASE $PG_ADMIN_DB" >/dev/null
  PG_ADMIN_URL=$(sed -E "s#/[^/?]+(\\?|$)#/$PG_ADMIN_DB\\1#" <<<"$PYLON_TEST_DATABASE_URL")
  export PG_ADMIN_URL
  run --db admin-pristine.db --json copy --to-env PG_ADMIN_URL
  check_that "PostgreSQL: the administration fixture copied (live rows)" json 'd["inserted"] == 1250'
  admin_checks PostgreSQL "$PG_ADMIN_URL"
  check_that "PostgreSQL: no password in any output" bash -c "! grep -qF '$(sed -E 's#.*://[^:]*:([^@]*)@.*#\1#' <<<"$PG_ADMIN_URL")' out err"
else
  echo "note  PYLON_TEST_DATABASE_URL is not set: the PostgreSQL copy and administration checks did not run"
fi

echo
echo "$passed passed, $failed failed"
((failed == 0))

// The peer of pylon_bench's `workload` section: the same workload through
// better-sqlite3-session-store (an express-session store on better-sqlite3), printed as the same
// table. bench/peer/run.sh installs the pinned packages and runs this; it is not part of the test
// command.
//
//   node workload.js [--sessions N] [--runs R] [--dir DIR]
//
// Workload: N sessions, 5 per user, each with a device string and 200 bytes of data; create each
// (store.set), validate each (store.get), validate each again as a request past the touch
// interval does in express-session (store.get, then store.touch: this store writes every touch),
// revoke half (store.destroy), then restart (close the database, open it again, construct the
// store, store.all() and parse each row) and count the rows loaded per second. One call at a
// time; median of R runs after a warm-up run, calls per second. Two settings: journal DELETE +
// synchronous FULL, and WAL + synchronous NORMAL.
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const os = require("os");
const path = require("path");
const Database = require("better-sqlite3");
const session = require("express-session");
const SqliteStore = require("better-sqlite3-session-store")(session);

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const at = args.indexOf(name);
  return at >= 0 && at + 1 < args.length ? args[at + 1] : fallback;
};
const sessions = Number(option("--sessions", "10000"));
const runs = Number(option("--runs", "3"));
const dir = option("--dir", "/var/tmp");
const sessionsPerUser = 5;
const device = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const maxAgeMs = 86400 * 1000;

// 200 bytes of JSON-shaped data, as pylon_bench's workload_data('a').
function workloadData() {
  const head = '{"csrf":"8f14e45fceea167a5a36dedd4bea2543","theme":"dark","pad":"';
  return head + "a".repeat(200 - head.length - 2) + '"}';
}

const settings = [
  { name: "journal DELETE + synchronous=FULL", journal: "DELETE", synchronous: "FULL" },
  { name: "WAL + synchronous=NORMAL", journal: "WAL", synchronous: "NORMAL" },
];

function open(file, setting) {
  const db = new Database(file);
  db.pragma(`journal_mode = ${setting.journal}`);
  db.pragma(`synchronous = ${setting.synchronous}`);
  // The store's constructor starts a purge timer (every 15 minutes); the process exits first.
  return { db, store: new SqliteStore({ client: db }) };
}

// Runs call(i) for i in [0, count); calls per second.
function rate(count, call) {
  const start = process.hrtime.bigint();
  for (let i = 0; i < count; ++i) call(i);
  return count / (Number(process.hrtime.bigint() - start) / 1e9);
}

// The store's calls take callbacks but run synchronously (better-sqlite3 is synchronous).
function sync(call) {
  let failure = null;
  let value;
  call((error, result) => {
    failure = error;
    value = result;
  });
  if (failure) throw failure;
  return value;
}

function cookie() {
  return {
    originalMaxAge: maxAgeMs,
    expires: new Date(Date.now() + maxAgeMs).toISOString(),
    secure: false,
    httpOnly: true,
    path: "/",
  };
}

function runOnce(setting) {
  const file = path.join(dir, `pylon-bench-peer-${process.pid}.db`);
  const removeFiles = () => {
    for (const suffix of ["", "-wal", "-shm", "-journal"]) fs.rmSync(file + suffix, { force: true });
  };
  removeFiles();
  let { db, store } = open(file, setting);
  const data = workloadData();
  const sids = new Array(sessions);
  const result = {};
  // express-session's ids: 24 random bytes, base64url (uid-safe).
  result.create = rate(sessions, (i) => {
    const sid = crypto.randomBytes(24).toString("base64url");
    sids[i] = sid;
    const sess = { cookie: cookie(), user: `user-${Math.floor(i / sessionsPerUser)}`, device, data };
    sync((done) => store.set(sid, sess, done));
  });
  result.validate = rate(sessions, (i) => {
    if (!sync((done) => store.get(sids[i], done))) throw new Error("get lost a session");
  });
  result.slide = rate(sessions, (i) => {
    const sess = sync((done) => store.get(sids[i], done));
    if (!sess) throw new Error("get lost a session");
    sess.cookie.expires = new Date(Date.now() + maxAgeMs).toISOString();
    const changed = sync((done) => store.touch(sids[i], sess, done));
    if (changed.changes !== 1) throw new Error("touch wrote nothing");
  });
  result.revoke = rate(sessions / 2, (i) => {
    const changed = sync((done) => store.destroy(sids[2 * i], done));
    if (changed.changes !== 1) throw new Error("destroy found no session");
  });
  db.close();
  const start = process.hrtime.bigint();
  ({ db, store } = open(file, setting));
  const rows = sync((done) => store.all(done));
  let parsed = 0;
  for (const row of rows) parsed += JSON.parse(row.sess).cookie ? 1 : 0;
  result.restart = parsed / (Number(process.hrtime.bigint() - start) / 1e9);
  if (parsed !== sessions - sessions / 2) throw new Error("restart count");
  db.close();
  removeFiles();
  return result;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

const phases = [
  ["create", "create"],
  ["validate", "validate"],
  ["slide (validate past touch_interval)", "slide"],
  ["revoke (half)", "revoke"],
  ["restart, rows/s (reopen, load the rest)", "restart"],
];
const medians = settings.map((setting) => {
  const results = [];
  for (let run = 0; run <= runs; ++run) {
    const result = runOnce(setting);
    if (run > 0) results.push(result); // run 0 warms up
  }
  const out = {};
  for (const [, key] of phases) out[key] = median(results.map((r) => r[key]));
  return out;
});

const pkg = (name) => require(`${name}/package.json`).version;
const sqliteVersion = new Database(":memory:").prepare("SELECT sqlite_version() AS v").get().v;
console.log(
  `peer: better-sqlite3-session-store ${pkg("better-sqlite3-session-store")}, better-sqlite3 ` +
    `${pkg("better-sqlite3")} (SQLite ${sqliteVersion}), express-session ` +
    `${pkg("express-session")}, Node.js ${process.version}; ${os.cpus().length} cores, files in ${dir}`,
);
console.log(
  `\nworkload: ${sessions} sessions, ${sessionsPerUser} per user, a device string and ` +
    `${workloadData().length} B of data; create each, validate each,\nvalidate each past ` +
    `touch_interval (get + touch: each writes), revoke half, reopen and load the rest;\none call ` +
    `at a time; median of ${runs} runs, calls per second`,
);
const withCommas = (value) => Math.round(value).toLocaleString("en-US");
const line = (cells) =>
  `| ${cells[0].padEnd(40)} | ${cells[1].padStart(33)} | ${cells[2].padStart(24)} |`;
console.log(line(["phase", settings[0].name, settings[1].name]));
for (const [label, key] of phases) {
  console.log(line([label, withCommas(medians[0][key]), withCommas(medians[1][key])]));
}
process.exit(0); // the stores' purge timers would keep the process alive

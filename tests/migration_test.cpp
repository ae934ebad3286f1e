// SQLite schema migrations: reopening is idempotent and every migration is recorded once in
// _pylon_schema_migrations(version, name, applied_at); and, for the adoption of a
// _pylon_sessions table written by pylon's runtime (raw tokens as the primary key, with or
// without tenant_id), what only files show: no raw token is left in the .db, -wal or -shm bytes,
// while the store is open or after it closed. The adoption itself (every unexpired session
// validates with its original token, expired ones are dropped) is checked on every backend by
// store_contract_test.cpp.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "session_backend.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::test::is_live;
using pylon::test::pylon_rows;
using pylon::test::PylonRow;

using pylon::test::contains_raw_token;
using pylon::test::RawDb;
using pylon::test::read_database_files;
using pylon::test::SqlRow;
using pylon::test::TempDir;

std::vector<SqlRow> migration_rows(const std::string& path) {
  RawDb raw(path);
  return raw.query(
      "SELECT version, name, applied_at FROM _pylon_schema_migrations ORDER BY version, name");
}

TEST(Migrations, ARecordedRowPerMigrationWithVersionNameAndTime) {
  TempDir dir;
  const std::string path = dir.file("s.db");
  const std::int64_t before = pylon::system_clock_now();
  pylon::open_sqlite_backend(path);
  const std::int64_t after = pylon::system_clock_now();

  const auto rows = migration_rows(path);
  ASSERT_FALSE(rows.empty()) << "at least migration 0001 is recorded";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    ASSERT_EQ(rows[i].size(), 3U);
    EXPECT_EQ(rows[i][0], std::to_string(i + 1)) << "versions start at 1 and have no gaps";
    ASSERT_TRUE(rows[i][1].has_value());
    EXPECT_FALSE(rows[i][1]->empty()) << "every migration has a name";
    ASSERT_TRUE(rows[i][2].has_value());
    const std::int64_t applied_at = std::stoll(*rows[i][2]);
    EXPECT_GE(applied_at, before - 1);
    EXPECT_LE(applied_at, after + 1);
  }
  EXPECT_THAT(*rows[0][1], ::testing::HasSubstr("0001"));
}

// A file of schema version `version`, made by running migrations 1 to `version` as they are in
// migrations/sqlite/ and recording them as the library does. 0001's adoption statement names the
// library's pylon_sha256_hex(), which a plain connection lacks: it reads an empty table here, so
// the token itself stands in for it.
void make_file_at_version(const std::string& path, int version) {
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(PYLON_SQLITE_MIGRATIONS_DIR)) {
    files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  RawDb raw(path);
  raw.exec("PRAGMA journal_mode = WAL");
  raw.exec(
      "CREATE TABLE _pylon_schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
      "applied_at INTEGER NOT NULL)");
  for (int applied = 1; applied <= version; ++applied) {
    const std::filesystem::path& file = files.at(static_cast<std::size_t>(applied - 1));
    std::ifstream in(file);
    std::stringstream sql;
    sql << in.rdbuf();
    std::string text = sql.str();
    const std::string function = "pylon_sha256_hex(token)";
    if (const std::size_t at = text.find(function); at != std::string::npos) {
      text.replace(at, function.size(), "token");
    }
    raw.exec(text);
    raw.run("INSERT INTO _pylon_schema_migrations VALUES (?1, ?2, unixepoch())",
            {std::int64_t{applied}, file.stem().string()});
  }
}

// Migration 0006 rebuilds the change log without AUTOINCREMENT and moves the expiry index to
// expiry_hour. A version-5 file whose log was pruned empty: the newest position handed out stays
// (as an entry of the empty id), so the next write is logged after it and a store that had
// followed the log up to there misses nothing. Every row gets its expiry hour, and the purge that
// now reads it still deletes exactly the expired rows.
TEST(Migrations, SixKeepsTheLogsPositionsAndGivesEveryRowItsExpiryHour) {
  TempDir dir;
  const std::string path = dir.file("v5.db");
  make_file_at_version(path, 5);
  std::int64_t newest = 0;
  {
    RawDb raw(path);
    for (int i = 0; i < 5; ++i) {
      raw.run(
          "INSERT INTO _pylon_sessions (id, user_id, created_at, expires_at, last_seen_at, "
          "absolute_expires_at, authenticated_at) VALUES (?1, 'u', 100, ?2, 100, ?2, 100)",
          {std::string(63, 'a') + std::to_string(i), std::int64_t{7200} * (i + 1)});
    }
    newest = raw.query_int("SELECT max(position) FROM _pylon_change_log");
    ASSERT_EQ(newest, 5);
    raw.exec("UPDATE _pylon_change_log_state SET pruned_through = 5");
    raw.exec("DELETE FROM _pylon_change_log");
  }
  std::unique_ptr<pylon::SessionBackend> backend = pylon::open_sqlite_backend(path);
  RawDb raw(path);
  EXPECT_EQ(raw.query_int("SELECT max(version) FROM _pylon_schema_migrations"), 6);
  EXPECT_EQ(raw.query_int("SELECT count(*) FROM _pylon_sessions WHERE expiry_hour IS NOT "
                          "expires_at / 3600"),
            0);
  EXPECT_EQ(raw.query_int("SELECT count(*) FROM _pylon_change_log WHERE position = ?1 AND id = ''",
                          {newest}),
            1)
      << "the newest position was not kept";
  EXPECT_EQ(raw.query_int("SELECT count(*) FROM sqlite_schema WHERE sql LIKE '%AUTOINCREMENT%'"),
            0);
  backend->save(pylon::test::make_session("bob", 1));
  EXPECT_EQ(raw.query_int("SELECT max(position) FROM _pylon_change_log"), newest + 1);
  // Hand-written writes keep expiry_hour too (the triggers), and the purge finds them by it.
  raw.exec("UPDATE _pylon_sessions SET expires_at = 50 WHERE user_id = 'u' AND expires_at = 14400");
  EXPECT_EQ(raw.query_int("SELECT count(*) FROM _pylon_sessions WHERE expiry_hour IS NOT "
                          "expires_at / 3600"),
            0);
  EXPECT_EQ(backend->remove_expired(7200), 2U) << "the rows expiring at 50 and at 7200";
  EXPECT_EQ(raw.query_int("SELECT count(*) FROM _pylon_sessions WHERE user_id = 'u'"), 3);
}

TEST(Migrations, ReopeningIsIdempotent) {
  TempDir dir;
  const std::string path = dir.file("s.db");
  const pylon::Session session = pylon::test::make_session("alice", 1);
  pylon::open_sqlite_backend(path)->save(session);
  const auto first = migration_rows(path);
  std::string schema_first;
  {
    RawDb raw(path);
    for (const SqlRow& row : raw.query("SELECT type, name, sql FROM sqlite_schema ORDER BY name")) {
      for (const auto& cell : row) schema_first += cell.value_or("NULL") + "|";
    }
  }

  for (int i = 0; i < 3; ++i) pylon::open_sqlite_backend(path);

  EXPECT_EQ(migration_rows(path), first) << "no migration is recorded (or re-run) twice";
  RawDb raw(path);
  EXPECT_EQ(raw.query_int("SELECT count(*) FROM (SELECT version FROM _pylon_schema_migrations "
                          "GROUP BY version HAVING count(*) > 1)"),
            0);
  std::string schema_again;
  for (const SqlRow& row : raw.query("SELECT type, name, sql FROM sqlite_schema ORDER BY name")) {
    for (const auto& cell : row) schema_again += cell.value_or("NULL") + "|";
  }
  EXPECT_EQ(schema_again, schema_first);
  raw.close();
  const auto loaded = pylon::test::find_loaded(*pylon::open_sqlite_backend(path), session.id);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(pylon::test::same_session(session, *loaded));
}

// ------------------------------------------------------------------------------------------------
// pylon adoption
// ------------------------------------------------------------------------------------------------

// Writes `rows` into a _pylon_sessions table exactly as pylon's runtime creates it (the older
// pylon, without tenant_id, when `with_tenant` is false). Also an unrelated application table.
void write_pylon_database(const std::string& path, const std::vector<PylonRow>& rows,
                          bool with_tenant) {
  RawDb raw(path);
  if (with_tenant) {
    raw.exec(
        "CREATE TABLE _pylon_sessions (token TEXT PRIMARY KEY, user_id TEXT NOT NULL, "
        "expires_at INTEGER NOT NULL, created_at INTEGER NOT NULL, device TEXT, tenant_id TEXT)");
  } else {
    raw.exec(
        "CREATE TABLE _pylon_sessions (token TEXT PRIMARY KEY, user_id TEXT NOT NULL, "
        "expires_at INTEGER NOT NULL, created_at INTEGER NOT NULL, device TEXT)");
  }
  raw.exec("CREATE INDEX _pylon_sessions_user_idx ON _pylon_sessions(user_id)");
  raw.exec("CREATE INDEX _pylon_sessions_exp_idx ON _pylon_sessions(expires_at)");
  raw.exec("CREATE TABLE app_notes (id INTEGER PRIMARY KEY, body TEXT)");
  raw.exec("INSERT INTO app_notes (body) VALUES ('kept'), ('also kept')");
  for (const PylonRow& row : rows) {
    const auto text = [](const std::optional<std::string>& value) -> pylon::test::SqlValue {
      if (value) return *value;
      return nullptr;
    };
    if (with_tenant) {
      raw.run(
          "INSERT INTO _pylon_sessions (token, user_id, expires_at, created_at, device, tenant_id) "
          "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
          {row.token, row.user_id, row.expires_at, row.created_at, text(row.device),
           text(row.tenant_id)});
    } else {
      raw.run(
          "INSERT INTO _pylon_sessions (token, user_id, expires_at, created_at, device) "
          "VALUES (?1, ?2, ?3, ?4, ?5)",
          {row.token, row.user_id, row.expires_at, row.created_at, text(row.device)});
    }
  }
}

// The whole adoption scenario, for a table with or without the tenant_id column.
void check_adoption(bool with_tenant) {
  TempDir dir;
  const std::string path = dir.file("pylon.db");
  const std::vector<PylonRow> rows = pylon_rows(with_tenant);
  write_pylon_database(path, rows, with_tenant);
  // The check below can fail: before adoption every token is in the file.
  const std::string original = read_database_files(path);
  for (const PylonRow& row : rows) ASSERT_TRUE(contains_raw_token(original, row.token));

  std::size_t live = 0;
  {
    pylon::SessionStore store = pylon::SessionStore::open(path);
    for (const PylonRow& row : rows) {
      const std::string id = pylon::session_id_for_token(row.token);
      if (!is_live(row)) {
        EXPECT_FALSE(store.validate(row.token).has_value()) << "expired pylon session validated";
        EXPECT_FALSE(store.find(id).has_value());
        continue;
      }
      ++live;
      const auto session = store.validate(row.token);
      ASSERT_TRUE(session.has_value())
          << "unexpired pylon session of " << row.user_id << " (created " << row.created_at
          << ", expires " << row.expires_at << ") does not validate";
      EXPECT_EQ(session->id, id);
      EXPECT_EQ(session->user_id, row.user_id);
      EXPECT_EQ(session->device, row.device);
      EXPECT_EQ(session->tenant_id, row.tenant_id);
      EXPECT_EQ(session->created_at, row.created_at);
      EXPECT_LE(session->expires_at, row.expires_at) << "adoption must not extend a session";
    }
    EXPECT_EQ(store.size(), live);

    // While the store is open: no raw token in any of the files.
    const std::string open_bytes = read_database_files(path);
    for (const PylonRow& row : rows) {
      EXPECT_FALSE(contains_raw_token(open_bytes, row.token))
          << "a raw token of " << row.user_id << " is still in the files while the store is open";
    }
  }

  // After the store is destroyed: no raw token; the rows are keyed by hash; expired rows gone.
  const std::string closed_bytes = read_database_files(path);
  for (const PylonRow& row : rows) {
    EXPECT_FALSE(contains_raw_token(closed_bytes, row.token))
        << "a raw token of " << row.user_id << " is still in the files after the store closed";
  }
  RawDb raw(path);
  EXPECT_EQ(raw.query_int("SELECT count(*) FROM _pylon_sessions"), static_cast<std::int64_t>(live));
  for (const PylonRow& row : rows) {
    EXPECT_EQ(raw.query_int("SELECT count(*) FROM _pylon_sessions WHERE id = ?1",
                            {pylon::session_id_for_token(row.token)}),
              is_live(row) ? 1 : 0);
  }
  EXPECT_EQ(raw.query_int("SELECT count(*) FROM app_notes"), 2) << "other tables are untouched";
  EXPECT_EQ(raw.query_text("PRAGMA integrity_check"), "ok");
  raw.close();

  // A second start changes nothing: every live session still validates.
  pylon::SessionStore again = pylon::SessionStore::open(path);
  EXPECT_EQ(again.size(), live);
  for (const PylonRow& row : rows) {
    EXPECT_EQ(again.validate(row.token).has_value(), is_live(row));
  }
}

TEST(SqlitePylonAdoption, NoRawTokenIsLeftInTheFilesOfATableWithTenantId) { check_adoption(true); }

TEST(SqlitePylonAdoption, NoRawTokenIsLeftInTheFilesOfAnOlderTableWithoutTenantId) {
  check_adoption(false);
}

TEST(SqlitePylonAdoption, AdoptsAnEmptyPylonTable) {
  TempDir dir;
  const std::string path = dir.file("pylon.db");
  write_pylon_database(path, {}, true);
  pylon::SessionStore store = pylon::SessionStore::open(path);
  EXPECT_EQ(store.size(), 0U);
  const pylon::NewSession created = store.create("alice");
  EXPECT_TRUE(store.validate(created.token).has_value());
}

}  // namespace

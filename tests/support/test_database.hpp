// A fresh database for every test, on either backend, so one parameterised suite (TEST_P with
// the parameters "sqlite" and "postgres") proves both backends keep the same contract:
//   sqlite    a new file in a temporary directory;
//   postgres  CREATE DATABASE pylon_t_<random> on the server at PYLON_TEST_DATABASE_URL (a URL
//             to an existing database, with a role that may create databases: see
//             scripts/pg-cluster.sh), dropped WITH (FORCE) when the test ends.
// Plus raw access to what the library stored, and real ways to make its writes fail: another
// connection holding a lock, or a trigger refusing rows.
//
// PYLON_TESTS_WITH_POSTGRES (tests/CMakeLists.txt) is defined when the library has its
// PostgreSQL backend. Without it nothing here needs libpq: there is no PgConn, the suites run
// on "sqlite" alone, and a TestDatabase of kind "postgres" cannot be made.
#ifndef PYLON_TESTS_SUPPORT_TEST_DATABASE_HPP_
#define PYLON_TESTS_SUPPORT_TEST_DATABASE_HPP_

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "session_backend.hpp"
#include "support/test_support.hpp"

#ifdef PYLON_TESTS_WITH_POSTGRES
struct pg_conn;
#endif

namespace pylon::test {

// ------------------------------------------------------------------------------------------------
// Which backends run
// ------------------------------------------------------------------------------------------------

inline constexpr const char* kSqlite = "sqlite";
inline constexpr const char* kPostgres = "postgres";

// PYLON_TEST_DATABASE_URL, when set and non-empty.
std::optional<std::string> test_database_url();
// True when the PostgreSQL tests are registered: the URL is set, or CI is (and then a missing
// URL makes every PostgreSQL test fail with a message saying so, rather than vanish). Always
// false in a build without PostgreSQL, whose PostgreSQL tests are not built at all.
bool postgres_tests_wanted();
// The parameters of the contract suites: "sqlite", and "postgres" when postgres_tests_wanted().
std::vector<std::string> contract_backends();
// {"postgres"} when postgres_tests_wanted(), else nothing (suites of PostgreSQL-only tests).
std::vector<std::string> postgres_backends();
// The name gtest shows for a parameter: the parameter itself.
std::string backend_name(const ::testing::TestParamInfo<std::string>& info);

// `url` (postgres://user:password@host:port/db?query) naming another database, with `query`
// ("options=...") appended to its query string when not empty.
std::string postgres_url_for(const std::string& url, const std::string& database,
                             const std::string& query = {});

#ifdef PYLON_TESTS_WITH_POSTGRES
// ------------------------------------------------------------------------------------------------
// Raw PostgreSQL
// ------------------------------------------------------------------------------------------------

// A plain libpq connection, to prepare databases and read what the library wrote. Parameters
// ($1, $2, ...) and results travel as text; bytea comes back as "\x<hex>". Every failure throws
// std::runtime_error (a test that gets one fails).
class PgConn {
 public:
  explicit PgConn(const std::string& url);
  ~PgConn();
  PgConn(const PgConn&) = delete;
  PgConn& operator=(const PgConn&) = delete;

  void exec(const std::string& sql);
  std::vector<SqlRow> query(const std::string& sql, const std::vector<SqlValue>& params = {});
  std::int64_t query_int(const std::string& sql, const std::vector<SqlValue>& params = {});
  void close();

 private:
  pg_conn* conn_ = nullptr;
};
#endif  // PYLON_TESTS_WITH_POSTGRES

// ------------------------------------------------------------------------------------------------
// One fresh database
// ------------------------------------------------------------------------------------------------

// Something that keeps the library's writes from succeeding until it is destroyed.
class WriteBlock {
 public:
  WriteBlock() = default;
  virtual ~WriteBlock() = default;
  WriteBlock(const WriteBlock&) = delete;
  WriteBlock& operator=(const WriteBlock&) = delete;
  WriteBlock(WriteBlock&&) = delete;
  WriteBlock& operator=(WriteBlock&&) = delete;
};

// The password of a postgres:// URL with one ("user:password@host"); "" without.
std::string password_of(const std::string& url);

class TestDatabase {
 public:
  // `kind` is kSqlite or kPostgres. Throws std::runtime_error, with a message saying what to do,
  // when the database cannot be made (for PostgreSQL: no URL, the server refuses, or this build
  // has no PostgreSQL).
  explicit TestDatabase(std::string kind);
  ~TestDatabase();
  TestDatabase(const TestDatabase&) = delete;
  TestDatabase& operator=(const TestDatabase&) = delete;
  TestDatabase(TestDatabase&&) = delete;
  TestDatabase& operator=(TestDatabase&&) = delete;

  [[nodiscard]] bool is_postgres() const { return kind_ == kPostgres; }
  // The DATABASE_URL of this database.
  [[nodiscard]] std::string url() const;
  // The same database, but a write waits at most ~100 ms for another connection's lock and then
  // fails with kBusy (SQLite busy_timeout=50; PostgreSQL lock_timeout=100).
  [[nodiscard]] std::string impatient_url() const;
  // What every error message about this database names: the file path, or the database name.
  [[nodiscard]] const std::string& name_in_messages() const { return name_; }
  // The SQLite file (empty for PostgreSQL).
  [[nodiscard]] const std::string& sqlite_path() const { return path_; }
  // The database's name on the PostgreSQL server (empty for SQLite).
  [[nodiscard]] const std::string& postgres_database() const { return name_; }
  // A URL to the server's existing database (PostgreSQL only): for a second raw connection
  // that must not count as one to this database.
  [[nodiscard]] const std::string& admin_url() const { return admin_url_; }

  std::unique_ptr<pylon::SessionBackend> open_backend() const;

  // Raw SQL on a connection of its own. Parameters are written ?1, ?2, ... for both backends.
  void exec(const std::string& sql) const;
  [[nodiscard]] std::vector<SqlRow> query(const std::string& sql,
                                          const std::vector<SqlValue>& params = {}) const;
  [[nodiscard]] std::int64_t query_int(const std::string& sql,
                                       const std::vector<SqlValue>& params = {}) const;

  // The server process that serves the library's one connection to this database (PostgreSQL
  // only; 0 if there is none): what a test freezes or ends to fault that connection.
  [[nodiscard]] std::int64_t library_server_pid() const;

  // Rows of _pylon_sessions [WHERE where]; whether the row with this id is stored; one integer
  // column of the row with this id.
  [[nodiscard]] std::int64_t count(const std::string& where = "1 = 1") const;
  [[nodiscard]] bool has(const std::string& id) const;
  [[nodiscard]] std::int64_t column(const std::string& name, const std::string& id) const;
  // Every value of every row of every table of the database, as text, concatenated: where a
  // leaked secret would show.
  [[nodiscard]] std::string all_tables_text() const;

  // Another connection takes the lock every write of the library needs (SQLite: BEGIN
  // EXCLUSIVE; PostgreSQL: LOCK TABLE _pylon_sessions IN ACCESS EXCLUSIVE MODE) and holds it
  // until the returned object is destroyed. Open the library with impatient_url().
  [[nodiscard]] std::unique_ptr<WriteBlock> block_writes() const;
  // Triggers that make every INSERT and UPDATE of _pylon_sessions fail (deletes still work), or
  // with `false`, their removal. The table must exist (open a backend first).
  void refuse_saves(bool refuse) const;

 private:
  std::string convert(const std::string& sql) const;

  std::string kind_;
  std::unique_ptr<TempDir> dir_;
  std::string path_;
  std::string admin_url_;
  std::string name_;
};

// Makes `*database` for a test's SetUp; on failure the message explains what is missing.
::testing::AssertionResult make_test_database(const std::string& kind,
                                              std::unique_ptr<TestDatabase>* database);

}  // namespace pylon::test

#endif  // PYLON_TESTS_SUPPORT_TEST_DATABASE_HPP_

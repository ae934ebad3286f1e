// Implementation of the per-test databases (see test_database.hpp).
#include "support/test_database.hpp"

#ifdef PYLON_TESTS_WITH_POSTGRES
#include <libpq-fe.h>
#endif

#include <cstdlib>
#include <random>
#include <stdexcept>
#include <utility>
#include <variant>

namespace pylon::test {

// ------------------------------------------------------------------------------------------------
// Which backends run
// ------------------------------------------------------------------------------------------------

namespace {

// getenv, read once per call; the tests never set environment variables from threads.
std::optional<std::string> environment(const char* name) {
  const char* value = std::getenv(name);  // NOLINT(concurrency-mt-unsafe): no setenv anywhere
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

}  // namespace

std::optional<std::string> test_database_url() { return environment("PYLON_TEST_DATABASE_URL"); }

bool postgres_tests_wanted() {
#ifdef PYLON_TESTS_WITH_POSTGRES
  return test_database_url().has_value() || environment("CI").has_value();
#else
  return false;  // no PostgreSQL backend in this build: its tests are not built
#endif
}

std::vector<std::string> contract_backends() {
  std::vector<std::string> kinds = {kSqlite};
  if (postgres_tests_wanted()) kinds.emplace_back(kPostgres);
  return kinds;
}

std::vector<std::string> postgres_backends() {
  if (postgres_tests_wanted()) return {kPostgres};
  return {};
}

std::string backend_name(const ::testing::TestParamInfo<std::string>& info) { return info.param; }

std::string postgres_url_for(const std::string& url, const std::string& database,
                             const std::string& query) {
  const std::size_t scheme_end = url.find("://");
  if (scheme_end == std::string::npos) throw std::runtime_error("not a URL: " + url);
  const std::size_t at = url.rfind('@');
  const std::size_t authority = at == std::string::npos ? scheme_end + 3 : at + 1;
  const std::size_t path = url.find('/', authority);
  const std::size_t query_start = url.find('?', authority);
  std::string result = url.substr(0, std::min(path, query_start)) + "/" + database;
  std::string old_query =
      query_start == std::string::npos ? std::string() : url.substr(query_start + 1);
  if (!query.empty()) old_query += (old_query.empty() ? "" : "&") + query;
  if (!old_query.empty()) result += "?" + old_query;
  return result;
}

// ------------------------------------------------------------------------------------------------
// Raw PostgreSQL
// ------------------------------------------------------------------------------------------------

#ifdef PYLON_TESTS_WITH_POSTGRES
namespace {

struct ResultClearer {
  void operator()(PGresult* result) const noexcept { PQclear(result); }
};
using PgResultPtr = std::unique_ptr<PGresult, ResultClearer>;

void check_result(PGconn* conn, const PGresult* result, const std::string& sql) {
  const ExecStatusType status = result != nullptr ? PQresultStatus(result) : PGRES_FATAL_ERROR;
  if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return;
  const char* state = result != nullptr ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
  throw std::runtime_error("raw postgres: \"" + sql + "\" failed: " + PQerrorMessage(conn) +
                           " (SQLSTATE " + (state != nullptr ? state : "none") + ")");
}

}  // namespace

PgConn::PgConn(const std::string& url) : conn_(PQconnectdb(url.c_str())) {
  if (conn_ == nullptr || PQstatus(conn_) != CONNECTION_OK) {
    const std::string message = conn_ != nullptr ? PQerrorMessage(conn_) : "out of memory";
    close();
    throw std::runtime_error("raw postgres: cannot connect to " + pylon::redact_url(url) + ": " +
                             message);
  }
  // Notices ("relation ... does not exist, skipping") are of no interest here.
  PQsetNoticeProcessor(
      conn_, [](void* /*arg*/, const char* /*message*/) {}, nullptr);
}

PgConn::~PgConn() { close(); }

void PgConn::close() {
  if (conn_ != nullptr) {
    PQfinish(conn_);
    conn_ = nullptr;
  }
}

void PgConn::exec(const std::string& sql) {
  const PgResultPtr result(PQexec(conn_, sql.c_str()));
  check_result(conn_, result.get(), sql);
}

std::vector<SqlRow> PgConn::query(const std::string& sql, const std::vector<SqlValue>& params) {
  std::vector<std::string> texts;
  texts.reserve(params.size());
  std::vector<const char*> values;
  for (const SqlValue& param : params) {
    if (std::holds_alternative<std::nullptr_t>(param)) {
      values.push_back(nullptr);
      continue;
    }
    texts.push_back(std::holds_alternative<std::int64_t>(param)
                        ? std::to_string(std::get<std::int64_t>(param))
                        : std::get<std::string>(param));
    values.push_back(texts.back().c_str());
  }
  const PgResultPtr result(PQexecParams(conn_, sql.c_str(), static_cast<int>(values.size()),
                                        nullptr, values.data(), nullptr, nullptr, 0));
  check_result(conn_, result.get(), sql);
  std::vector<SqlRow> rows;
  for (int r = 0; r < PQntuples(result.get()); ++r) {
    SqlRow row;
    for (int c = 0; c < PQnfields(result.get()); ++c) {
      if (PQgetisnull(result.get(), r, c) != 0) {
        row.emplace_back(std::nullopt);
      } else {
        row.emplace_back(std::string(PQgetvalue(result.get(), r, c),
                                     static_cast<std::size_t>(PQgetlength(result.get(), r, c))));
      }
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

std::int64_t PgConn::query_int(const std::string& sql, const std::vector<SqlValue>& params) {
  const std::vector<SqlRow> rows = query(sql, params);
  if (rows.empty() || rows.front().empty() || !rows.front().front()) {
    throw std::runtime_error("raw postgres: no integer from \"" + sql + "\"");
  }
  return std::stoll(*rows.front().front());
}

namespace {
using RawPg = PgConn;
}  // namespace
#else
namespace {
// What TestDatabase uses for PostgreSQL in a build without it, where no TestDatabase is of kind
// "postgres" (the constructor refuses): one code path for both builds, and no libpq.
class RawPg {
 public:
  [[noreturn]] explicit RawPg(const std::string& /*url*/) {
    throw std::logic_error("raw postgres: this build has no PostgreSQL");
  }
  void exec(const std::string& /*sql*/) {}
  std::vector<SqlRow> query(const std::string& /*sql*/, const std::vector<SqlValue>& /*params*/) {
    return {};
  }
  std::int64_t query_int(const std::string& /*sql*/, const std::vector<SqlValue>& /*params*/) {
    return 0;
  }
};
}  // namespace
#endif  // PYLON_TESTS_WITH_POSTGRES

// ------------------------------------------------------------------------------------------------
// One fresh database
// ------------------------------------------------------------------------------------------------

namespace {

// 16 random letters from g to v: never a hex digit, so a database name (which messages show)
// can never share four characters with the cluster's random hex password, which the tests look
// for in every message as a leak.
std::string random_suffix() {
  std::random_device device;
  std::string suffix;
  for (int i = 0; i < 16; ++i) suffix += static_cast<char>('g' + (device() & 0xFU));
  return suffix;
}

class SqliteWriteBlock final : public WriteBlock {
 public:
  explicit SqliteWriteBlock(const std::string& path) : raw_(path) { raw_.exec("BEGIN EXCLUSIVE"); }
  ~SqliteWriteBlock() override {
    try {
      raw_.exec("ROLLBACK");
    } catch (const std::exception& error) {
      ADD_FAILURE() << error.what();
    }
  }
  SqliteWriteBlock(const SqliteWriteBlock&) = delete;
  SqliteWriteBlock& operator=(const SqliteWriteBlock&) = delete;
  SqliteWriteBlock(SqliteWriteBlock&&) = delete;
  SqliteWriteBlock& operator=(SqliteWriteBlock&&) = delete;

 private:
  RawDb raw_;
};

class PostgresWriteBlock final : public WriteBlock {
 public:
  explicit PostgresWriteBlock(const std::string& url) : raw_(url) {
    raw_.exec("BEGIN");
    raw_.exec("LOCK TABLE _pylon_sessions IN ACCESS EXCLUSIVE MODE");
  }
  ~PostgresWriteBlock() override = default;  // closing the connection rolls back
  PostgresWriteBlock(const PostgresWriteBlock&) = delete;
  PostgresWriteBlock& operator=(const PostgresWriteBlock&) = delete;
  PostgresWriteBlock(PostgresWriteBlock&&) = delete;
  PostgresWriteBlock& operator=(PostgresWriteBlock&&) = delete;

 private:
  RawPg raw_;
};

}  // namespace

TestDatabase::TestDatabase(std::string kind) : kind_(std::move(kind)) {
  if (kind_ == kSqlite) {
    dir_ = std::make_unique<TempDir>();
    path_ = dir_->file("sessions.db");
    name_ = path_;
    return;
  }
  if (kind_ != kPostgres) throw std::runtime_error("unknown backend kind " + kind_);
#ifndef PYLON_TESTS_WITH_POSTGRES
  throw std::runtime_error("this build has no PostgreSQL backend (PYLON_WITH_POSTGRES=OFF)");
#endif
  const std::optional<std::string> url = test_database_url();
  if (!url) {
    throw std::runtime_error(
        "PYLON_TEST_DATABASE_URL is not set, and CI is: the PostgreSQL tests must run in CI. "
        "Start a server with `eval \"$(bash scripts/pg-cluster.sh start)\"` (or run "
        "scripts/test.sh, which does), or point PYLON_TEST_DATABASE_URL at a database whose role "
        "may CREATE DATABASE");
  }
  admin_url_ = *url;
  name_ = "pylon_t_" + random_suffix();
  RawPg admin(admin_url_);
  admin.exec("CREATE DATABASE " + name_ + " TEMPLATE template0");
}

TestDatabase::~TestDatabase() {
  if (!is_postgres() || admin_url_.empty()) return;
  try {
    RawPg admin(admin_url_);
    admin.exec("DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
  } catch (const std::exception& error) {
    ADD_FAILURE() << "cannot drop the test database: " << error.what();
  }
}

std::string TestDatabase::url() const {
  return is_postgres() ? postgres_url_for(admin_url_, name_) : sqlite_url(path_);
}

std::string TestDatabase::impatient_url() const {
  return is_postgres() ? postgres_url_for(admin_url_, name_, "options=-c%20lock_timeout%3D100")
                       : sqlite_url(path_, "busy_timeout=50");
}

std::unique_ptr<pylon::SessionBackend> TestDatabase::open_backend() const {
  return pylon::open_backend(url());
}

std::string TestDatabase::convert(const std::string& sql) const {
  if (!is_postgres()) return sql;
  std::string converted = sql;
  for (std::size_t i = 0; i + 1 < converted.size(); ++i) {
    if (converted[i] == '?' && converted[i + 1] >= '1' && converted[i + 1] <= '9') {
      converted[i] = '$';
    }
  }
  return converted;
}

void TestDatabase::exec(const std::string& sql) const {
  if (is_postgres()) {
    RawPg(url()).exec(sql);
  } else {
    RawDb(path_).exec(sql);
  }
}

std::vector<SqlRow> TestDatabase::query(const std::string& sql,
                                        const std::vector<SqlValue>& params) const {
  if (is_postgres()) return RawPg(url()).query(convert(sql), params);
  return RawDb(path_).query(sql, params);
}

std::int64_t TestDatabase::query_int(const std::string& sql,
                                     const std::vector<SqlValue>& params) const {
  if (is_postgres()) return RawPg(url()).query_int(convert(sql), params);
  return RawDb(path_).query_int(sql, params);
}

std::int64_t TestDatabase::library_server_pid() const {
  return query_int(
      "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
      "AND pid <> pg_backend_pid() AND application_name = 'pylon-sessions'");
}

std::string password_of(const std::string& url) {
  const std::size_t start = url.find("://");
  const std::size_t at = url.rfind('@');
  const std::size_t colon = start == std::string::npos ? start : url.find(':', start + 3);
  if (at == std::string::npos || colon == std::string::npos || colon > at) return {};
  return url.substr(colon + 1, at - colon - 1);
}

std::int64_t TestDatabase::count(const std::string& where) const {
  return query_int("SELECT count(*) FROM _pylon_sessions WHERE " + where);
}

bool TestDatabase::has(const std::string& id) const {
  return query_int("SELECT count(*) FROM _pylon_sessions WHERE id = ?1", {id}) == 1;
}

std::int64_t TestDatabase::column(const std::string& name, const std::string& id) const {
  return query_int("SELECT " + name + " FROM _pylon_sessions WHERE id = ?1", {id});
}

std::string TestDatabase::all_tables_text() const {
  const std::string tables_sql =
      is_postgres()
          ? "SELECT quote_ident(table_name) FROM information_schema.tables "
            "WHERE table_schema = current_schema() ORDER BY table_name"
          : "SELECT '\"' || name || '\"' FROM sqlite_schema WHERE type = 'table' ORDER BY name";
  std::string text;
  for (const SqlRow& table : query(tables_sql)) {
    text += "table " + table.at(0).value_or("?") + ":\n";
    for (const SqlRow& row : query("SELECT * FROM " + table.at(0).value_or("?"))) {
      for (const auto& cell : row) text += cell.value_or("NULL") + "|";
      text += "\n";
    }
  }
  return text;
}

std::unique_ptr<WriteBlock> TestDatabase::block_writes() const {
  if (is_postgres()) return std::make_unique<PostgresWriteBlock>(url());
  return std::make_unique<SqliteWriteBlock>(path_);
}

void TestDatabase::refuse_saves(bool refuse) const {
  if (is_postgres()) {
    exec(refuse ? "CREATE FUNCTION pylon_test_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$ BEGIN RAISE EXCEPTION 'refused by the test' USING ERRCODE = 'disk_full'; "
                  "END $$; "
                  "CREATE TRIGGER pylon_test_refuse BEFORE INSERT OR UPDATE ON _pylon_sessions "
                  "FOR EACH ROW EXECUTE FUNCTION pylon_test_refuse()"
                : "DROP TRIGGER pylon_test_refuse ON _pylon_sessions; "
                  "DROP FUNCTION pylon_test_refuse()");
    return;
  }
  exec(refuse ? "CREATE TRIGGER pylon_test_refuse_insert BEFORE INSERT ON _pylon_sessions "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END; "
                "CREATE TRIGGER pylon_test_refuse_update BEFORE UPDATE ON _pylon_sessions "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
              : "DROP TRIGGER pylon_test_refuse_insert; DROP TRIGGER pylon_test_refuse_update");
}

::testing::AssertionResult make_test_database(const std::string& kind,
                                              std::unique_ptr<TestDatabase>* database) {
  try {
    *database = std::make_unique<TestDatabase>(kind);
  } catch (const std::exception& error) {
    return ::testing::AssertionFailure() << "cannot make a fresh " << kind << " database for "
                                         << "this test: " << error.what();
  }
  return ::testing::AssertionSuccess();
}

}  // namespace pylon::test

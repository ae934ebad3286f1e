// What only the PostgreSQL backend does, on a real server (the shared contract is in
// backend_contract_test.cpp and store_contract_test.cpp): a wrong password, a missing database
// or role and a closed port are pylon::Errors naming host, port and database but never the
// password, and only the closed port is one to retry (kConnectionLost; the others are
// kConfiguration); URLs that readers split differently never reach the server; a trigger that
// refuses a row is kInvalidArgument; a table without its primary key, an index, or a NOT NULL
// is kCorruptDatabase and left as it was; several processes migrating one empty database at once
// all come up with one schema; 20,000 rows load; two SessionStores in two processes on one
// database both write, and revoke_user in one removes, in storage, what the other created; a
// change source says "may have changed" at once on its first wait and on another connection's
// write, and on its own backend's write only once its wait's timeout is over.
//
// The second processes are this binary re-executed (/proc/self/exe --pylon-pg-child ...), so
// they are fresh processes rather than forks of the test runner: this file has its own main().
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "session_backend.hpp"
#include "support/process.hpp"
#include "support/test_database.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::ErrorCode;
using pylon::SessionStore;
using pylon::test::password_of;
using pylon::test::TestDatabase;
using ::testing::HasSubstr;

constexpr const char* kChildFlag = "--pylon-pg-child";

// ------------------------------------------------------------------------------------------------
// The child processes
// ------------------------------------------------------------------------------------------------

// `open URL`: waits for EOF on stdin (the start signal), opens the backend, exits 0.
// `create URL USER N`: opens a store, creates N sessions of USER, prints each token, exits 0.
// Any pylon::Error: printed to stderr, exit status 1.
int run_child(const std::vector<std::string>& args) {
  try {
    if (args.size() == 2 && args[0] == "open") {
      std::string ignored;
      std::getline(std::cin, ignored);  // returns at EOF: the parent closed the pipe
      pylon::open_backend(args[1]);
      return 0;
    }
    if (args.size() == 4 && args[0] == "create") {
      SessionStore store = SessionStore::open(args[1]);
      const int count = std::stoi(args[3]);
      for (int i = 0; i < count; ++i) std::cout << store.create(args[2]).token << "\n";
      std::cout.flush();
      return 0;
    }
    std::cerr << "pg child: bad arguments\n";
    return 2;
  } catch (const std::exception& error) {
    std::cerr << "pg child: " << error.what() << "\n";
    return 1;
  }
}

std::vector<std::string> child_command(const std::vector<std::string>& args) {
  std::vector<std::string> command = {"/proc/self/exe", kChildFlag};
  command.insert(command.end(), args.begin(), args.end());
  return command;
}

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (std::size_t at = text.find(from); at != std::string::npos;
       at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
  return text;
}

// The "host:port" part of a postgres:// URL.
std::string host_port_of(const std::string& url) {
  const std::size_t at = url.rfind('@');
  const std::size_t start = at == std::string::npos ? url.find("://") + 3 : at + 1;
  return url.substr(start, url.find('/', start) - start);
}

// A TCP port on 127.0.0.1 on which nothing listens: one the kernel just gave us, closed again.
int closed_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 1;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  // NOLINTBEGIN(cppcoreguidelines-pro-type-reinterpret-cast): the socket API takes sockaddr*
  const bool bound = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
                     ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  // NOLINTEND(cppcoreguidelines-pro-type-reinterpret-cast)
  ::close(fd);
  return bound ? ntohs(address.sin_port) : 1;  // port 1 (tcpmux) is closed anywhere sensible
}

class PgBackend : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &db_)); }

  std::unique_ptr<TestDatabase> db_;
};

INSTANTIATE_TEST_SUITE_P(Server, PgBackend, ::testing::ValuesIn(pylon::test::postgres_backends()),
                         pylon::test::backend_name);
// Without PYLON_TEST_DATABASE_URL and CI, nothing is instantiated, on purpose.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(PgBackend);

// ------------------------------------------------------------------------------------------------
// Connection faults: named, without the password
// ------------------------------------------------------------------------------------------------

// Whether `text` holds four bytes in a row of `secret` (all of it, if it is shorter).
bool holds_fragment_of(const std::string& text, const std::string& secret) {
  const std::size_t width = std::min<std::size_t>(secret.size(), 4);
  for (std::size_t start = 0; width > 0 && start + width <= secret.size(); ++start) {
    if (text.find(secret.substr(start, width)) != std::string::npos) return true;
  }
  return false;
}

// Opening `url` must fail with `code` and a pylon::Error naming host, port and database, and
// neither its what() nor its backend_detail() may hold four bytes in a row of any of `secrets`.
void expect_connection_error(const std::string& url, const std::string& database,
                             const std::vector<std::string>& secrets, ErrorCode code) {
  const auto error = pylon::test::capture_pylon_error([&] { pylon::open_backend(url); });
  ASSERT_TRUE(error.has_value()) << "opening " << pylon::redact_url(url) << " must fail";
  EXPECT_EQ(error->code(), code) << error->what();
  const std::string host_port = host_port_of(url);
  const std::string host = host_port.substr(0, host_port.find(':'));
  const std::string port = host_port.substr(host_port.find(':') + 1);
  EXPECT_THAT(error->what(), HasSubstr(host));
  EXPECT_THAT(error->what(), HasSubstr("port " + port));
  EXPECT_THAT(error->what(), HasSubstr("\"" + database + "\""));
  for (const std::string& secret : secrets) {
    ASSERT_FALSE(secret.empty());
    EXPECT_FALSE(holds_fragment_of(error->what(), secret)) << error->what();
    EXPECT_FALSE(holds_fragment_of(error->backend_detail(), secret)) << error->backend_detail();
  }
}

TEST_P(PgBackend, WrongPasswordIsConfigurationNamedWithoutThePassword) {
  const std::string real = password_of(db_->url());
  ASSERT_FALSE(real.empty()) << "the test server's URL carries a password";
  const std::string wrong = "Wr0ng-" + real.substr(0, 8) + "-Zq9";
  const std::string url = replace_all(db_->url(), ":" + real + "@", ":" + wrong + "@");
  expect_connection_error(url, db_->postgres_database(), {wrong, real}, ErrorCode::kConfiguration);
  const auto error = pylon::test::capture_pylon_error([&] { pylon::open_backend(url); });
  ASSERT_TRUE(error.has_value());
  EXPECT_THAT(error->backend_detail(), HasSubstr("SQLSTATE 28P01"));
  EXPECT_THAT(error->what(), HasSubstr("cannot connect to PostgreSQL"));
  EXPECT_THAT(error->what(), HasSubstr("retrying cannot help"));
}

// Sets an environment variable (or unsets it, for nullptr) until destroyed.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = ::getenv(name)) saved_ = old;
    if (value == nullptr) {
      ::unsetenv(name);
    } else {
      ::setenv(name, value, 1);
    }
  }
  ~ScopedEnv() {
    if (saved_) {
      ::setenv(name_, saved_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> saved_;
};

TEST_P(PgBackend, MissingPasswordIsConfiguration) {
  const std::string real = password_of(db_->url());
  const std::string url = replace_all(db_->url(), ":" + real + "@", "@");
  const ScopedEnv no_password("PGPASSWORD", nullptr);
  const ScopedEnv no_password_file("PGPASSFILE", "/nonexistent/pylon-pgpass");
  expect_connection_error(url, db_->postgres_database(), {real}, ErrorCode::kConfiguration);
}

TEST_P(PgBackend, MissingDatabaseIsConfigurationNamedWithoutThePassword) {
  const std::string missing = db_->postgres_database() + "_missing";
  const std::string url = pylon::test::postgres_url_for(db_->admin_url(), missing);
  expect_connection_error(url, missing, {password_of(url)}, ErrorCode::kConfiguration);
  const auto error = pylon::test::capture_pylon_error([&] { pylon::open_backend(url); });
  ASSERT_TRUE(error.has_value());
  EXPECT_THAT(error->backend_detail(), HasSubstr("SQLSTATE 3D000"));
}

TEST_P(PgBackend, MissingRoleIsConfiguration) {
  const std::string url = db_->url();
  const std::size_t user = url.find("://") + 3;
  std::string other = url.substr(0, user);
  other.append("nobody_pylon_test").append(url.substr(url.find(':', user)));
  expect_connection_error(other, db_->postgres_database(), {password_of(url)},
                          ErrorCode::kConfiguration);
}

TEST_P(PgBackend, ASettingTheServerRefusesIsConfiguration) {
  // A setting name without a dot that the server does not know: refused at connection time.
  const std::string url = pylon::test::postgres_url_for(db_->url(), db_->postgres_database(),
                                                        "options=-c%20pylonnosuchsetting%3Don");
  const auto error = pylon::test::capture_pylon_error([&] { pylon::open_backend(url); });
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), ErrorCode::kConfiguration) << error->what();
  EXPECT_THAT(error->backend_detail(), HasSubstr("SQLSTATE 42704"));
}

TEST_P(PgBackend, ClosedPortIsConnectionLostNamedWithoutThePassword) {
  const std::string host_port = host_port_of(db_->url());
  const std::string url = replace_all(db_->url(), "@" + host_port + "/",
                                      "@127.0.0.1:" + std::to_string(closed_port()) + "/");
  expect_connection_error(url, db_->postgres_database(), {password_of(url)},
                          ErrorCode::kConnectionLost);
}

// ------------------------------------------------------------------------------------------------
// URLs that readers split differently never reach the server
// ------------------------------------------------------------------------------------------------

// The three shapes an outside review found leaking, pointed at the real server with its real
// user: each is refused before libpq sees it, and no fragment of anything a reading takes for
// the password is shown, by open_backend() or open_postgres_backend().
TEST_P(PgBackend, AmbiguousUrlsAreRefusedBeforeTheServerSeesThem) {
  const std::string host_port = host_port_of(db_->url());
  const std::string database = db_->postgres_database();
  struct Case {
    std::string url;
    std::vector<std::string> secrets;
    std::string advice;
  };
  const std::vector<Case> cases = {
      {"postgresql://app:Tr0ub4dor\"&3%horse@" + host_port + "/" + database,
       {"Tr0ub4dor\"&3%horse"},
       "%25"},
      {"postgresql://app:hunter2@work!@" + host_port + "/" + database,
       {"hunter2@work!", "hunter2"},
       "%40"},
      {"postgresql://app:Zm9vYmFy/YmF6cXV4@" + host_port + "/" + database,
       {"Zm9vYmFy/YmF6cXV4", "Zm9vYmFy", "YmF6cXV4"},
       "%2F"},
  };
  for (const auto& one : cases) {
    for (int direct = 0; direct < 2; ++direct) {
      const auto error = pylon::test::capture_pylon_error([&] {
        if (direct != 0) {
          pylon::open_postgres_backend(one.url);
        } else {
          pylon::open_backend(one.url);
        }
      });
      ASSERT_TRUE(error.has_value()) << one.secrets.front();
      EXPECT_EQ(error->code(), ErrorCode::kInvalidArgument) << error->what();
      EXPECT_THAT(error->what(), HasSubstr(one.advice));
      for (const std::string& secret : one.secrets) {
        EXPECT_FALSE(holds_fragment_of(error->what(), secret)) << error->what();
        EXPECT_FALSE(holds_fragment_of(error->backend_detail(), secret));
        EXPECT_FALSE(holds_fragment_of(pylon::redact_url(one.url), secret));
      }
    }
  }
}

// The same passwords, percent-encoded, are read alike by every reader: the server is asked,
// and its refusal (the role "app" has no such password) shows no fragment of them.
TEST_P(PgBackend, PercentEncodedPasswordsReachTheServerAndStayHidden) {
  const std::string host_port = host_port_of(db_->url());
  const std::string database = db_->postgres_database();
  for (const auto& [encoded, plain] : std::vector<std::pair<std::string, std::string>>{
           {"Tr0ub4dor%22%263%25horse", "Tr0ub4dor\"&3%horse"},
           {"hunter2%40work!", "hunter2@work!"},
           {"Zm9vYmFy%2FYmF6cXV4", "Zm9vYmFy/YmF6cXV4"}}) {
    std::string url = "postgresql://app:";
    url.append(encoded).append("@").append(host_port).append("/").append(database);
    const auto error = pylon::test::capture_pylon_error([&] { pylon::open_backend(url); });
    ASSERT_TRUE(error.has_value()) << plain;
    EXPECT_EQ(error->code(), ErrorCode::kConfiguration) << error->what();
    for (const std::string& secret : {encoded, plain}) {
      EXPECT_FALSE(holds_fragment_of(error->what(), secret)) << error->what();
      EXPECT_FALSE(holds_fragment_of(error->backend_detail(), secret));
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Writes a trigger refuses
// ------------------------------------------------------------------------------------------------

TEST_P(PgBackend, ARowATriggerRefusesIsInvalidArgumentAsOnSqlite) {
  auto backend = db_->open_backend();
  const pylon::Session kept = pylon::test::make_session("kept", 1);
  backend->save(kept);
  db_->exec(
      "CREATE FUNCTION pylon_test_raise() RETURNS trigger LANGUAGE plpgsql AS "
      "$$ BEGIN RAISE EXCEPTION 'no sessions for %', NEW.user_id; END $$; "
      "CREATE TRIGGER pylon_test_raise BEFORE INSERT OR UPDATE ON _pylon_sessions "
      "FOR EACH ROW EXECUTE FUNCTION pylon_test_raise()");
  const std::string before = db_->all_tables_text();
  const auto error = pylon::test::capture_pylon_error(
      [&] { backend->save(pylon::test::make_session("refused", 2)); });
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), ErrorCode::kInvalidArgument) << error->what();
  EXPECT_THAT(error->what(), HasSubstr("cannot save a session"));
  EXPECT_THAT(error->backend_detail(), HasSubstr("SQLSTATE P0001"));
  EXPECT_PYLON_ERROR(backend->update_data(kept.id, "x"), ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(
      backend->save_batch({pylon::test::make_session("a", 3), pylon::test::make_session("b", 4)}),
      ErrorCode::kInvalidArgument);
  EXPECT_EQ(db_->all_tables_text(), before);
  EXPECT_TRUE(backend->remove(kept.id)) << "the connection is still usable";
}

TEST_P(PgBackend, ARowAConstraintRefusesIsInvalidArgument) {
  auto backend = db_->open_backend();
  db_->exec(
      "ALTER TABLE _pylon_sessions ADD CONSTRAINT pylon_test_no_eve CHECK (user_id <> 'eve')");
  EXPECT_PYLON_ERROR_WITH(backend->save(pylon::test::make_session("eve", 1)),
                          ErrorCode::kInvalidArgument, "constraint or trigger");
}

// ------------------------------------------------------------------------------------------------
// A table that is not ours
// ------------------------------------------------------------------------------------------------

// The schema as the catalog has it (columns, constraints, indexes) and every row: what a refused
// open must leave as it was.
std::string schema_and_rows(const TestDatabase& db) {
  std::string text = db.all_tables_text();
  for (const pylon::test::SqlRow& row : db.query(
           "SELECT c.relname || ' ' || a.attname || ' ' || format_type(a.atttypid, NULL) || ' ' "
           "|| a.attnotnull::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
           "WHERE c.relname LIKE '\\_pylon%' AND a.attnum > 0 AND NOT a.attisdropped "
           "UNION ALL SELECT indexdef FROM pg_indexes WHERE tablename LIKE '\\_pylon%' "
           "UNION ALL SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint "
           "WHERE conrelid::regclass::text LIKE '\\_pylon%' ORDER BY 1")) {
    text += row.at(0).value_or("NULL") + "\n";
  }
  return text;
}

void expect_edit_refused(const TestDatabase& db, const std::string& edit,
                         const std::string& reason) {
  {
    auto backend = db.open_backend();
    backend->save(pylon::test::make_session("before-the-edit", 1));
  }
  db.exec(edit);
  const std::string before = schema_and_rows(db);
  const auto error = pylon::test::capture_pylon_error([&] { db.open_backend(); });
  ASSERT_TRUE(error.has_value()) << "opened after: " << edit;
  EXPECT_EQ(error->code(), ErrorCode::kCorruptDatabase) << error->what();
  EXPECT_THAT(error->what(), HasSubstr(reason));
  EXPECT_THAT(error->what(), HasSubstr(db.postgres_database()));
  EXPECT_EQ(schema_and_rows(db), before) << "the database was changed by a refused open";
}

TEST_P(PgBackend, ATableWithoutItsPrimaryKeyIsRefusedAndUnchanged) {
  expect_edit_refused(*db_, "ALTER TABLE _pylon_sessions DROP CONSTRAINT _pylon_sessions_pkey",
                      "_pylon_sessions table whose primary key is not (id)");
}

TEST_P(PgBackend, APrimaryKeyOnOtherColumnsIsRefusedAndUnchanged) {
  expect_edit_refused(*db_,
                      "ALTER TABLE _pylon_sessions DROP CONSTRAINT _pylon_sessions_pkey; "
                      "ALTER TABLE _pylon_sessions ADD PRIMARY KEY (id, user_id)",
                      "whose primary key is not (id)");
}

TEST_P(PgBackend, ARotatedIdsTableWithoutItsPrimaryKeyIsRefusedAndUnchanged) {
  expect_edit_refused(*db_,
                      "ALTER TABLE _pylon_rotated_ids DROP CONSTRAINT _pylon_rotated_ids_pkey",
                      "_pylon_rotated_ids table whose primary key is not (id)");
}

TEST_P(PgBackend, ATableWithoutAnIndexItsVersionPromisesIsRefusedAndUnchanged) {
  expect_edit_refused(*db_, "DROP INDEX _pylon_sessions_by_user",
                      "without the index _pylon_sessions_by_user on (user_id)");
}

TEST_P(PgBackend, AnIndexOnAnotherColumnIsRefusedAndUnchanged) {
  expect_edit_refused(*db_,
                      "DROP INDEX _pylon_rotated_ids_by_expiry; CREATE INDEX "
                      "_pylon_rotated_ids_by_expiry ON _pylon_rotated_ids (user_id)",
                      "without the index _pylon_rotated_ids_by_expiry on (expires_at)");
}

TEST_P(PgBackend, AColumnThatMayBeNullIsRefusedAndUnchanged) {
  expect_edit_refused(*db_, "ALTER TABLE _pylon_sessions ALTER COLUMN user_id DROP NOT NULL",
                      "column user_id may be NULL");
}

TEST_P(PgBackend, AnInsertOrderWithoutItsIdentityIsRefusedAndUnchanged) {
  expect_edit_refused(*db_, "ALTER TABLE _pylon_sessions ALTER COLUMN insert_order DROP IDENTITY",
                      "column insert_order is not an identity column");
}

// At version 0, a table of version 1's columns is taken over by migration 1; without its
// primary key it is refused before migration 1 writes anything.
TEST_P(PgBackend, AVersionOneTableWithoutItsPrimaryKeyIsRefusedBeforeMigrating) {
  db_->exec(
      "CREATE TABLE _pylon_sessions (id TEXT NOT NULL, user_id TEXT NOT NULL, tenant_id TEXT, "
      "created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, last_seen_at BIGINT NOT NULL, "
      "absolute_expires_at BIGINT NOT NULL DEFAULT 0, device TEXT, ip TEXT, "
      "data BYTEA NOT NULL DEFAULT ''::bytea)");
  const std::string before = schema_and_rows(*db_);
  const auto error = pylon::test::capture_pylon_error([&] { db_->open_backend(); });
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), ErrorCode::kCorruptDatabase) << error->what();
  EXPECT_THAT(error->what(), HasSubstr("primary key is not (id)"));
  EXPECT_EQ(schema_and_rows(*db_), before);
  EXPECT_EQ(db_->query_int("SELECT count(*) FROM pg_tables WHERE tablename LIKE '\\_pylon%'"), 1)
      << "no migrations table was created";
}

// ------------------------------------------------------------------------------------------------
// Migrations at once
// ------------------------------------------------------------------------------------------------

TEST_P(PgBackend, ProcessesMigratingAnEmptyDatabaseAtOnceAllComeUpWithOneSchema) {
  constexpr int kProcesses = 4;
  std::array<int, 2> start{};
  ASSERT_EQ(::pipe2(start.data(), O_CLOEXEC), 0);  // children get only their dup2 copy
  std::vector<pid_t> children;
  children.reserve(kProcesses);
  for (int i = 0; i < kProcesses; ++i) {
    children.push_back(pylon::test::spawn(child_command({"open", db_->url()}), {}, start[0]));
  }
  ::close(start[0]);
  ::close(start[1]);  // EOF on every child's stdin: all start opening now
  for (const pid_t child : children) {
    EXPECT_EQ(pylon::test::wait_for(child), 0) << "a process failed to open; see its stderr";
  }
  // And threads of this process, on the migrated database, at once.
  std::vector<std::thread> threads;
  std::array<std::string, 4> failures;
  threads.reserve(failures.size());
  for (std::string& failure : failures) {
    threads.emplace_back([this, &failure] {
      try {
        pylon::open_backend(db_->url());
      } catch (const std::exception& error) {
        failure = error.what();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const std::string& failure : failures) EXPECT_EQ(failure, "");

  EXPECT_EQ(db_->query_int("SELECT count(*) FROM _pylon_schema_migrations"),
            db_->query_int("SELECT count(DISTINCT version) FROM _pylon_schema_migrations"))
      << "one row per version";
  EXPECT_EQ(db_->query_int("SELECT min(version) FROM _pylon_schema_migrations"), 1);
  EXPECT_EQ(db_->query_int("SELECT count(*) FROM pg_class WHERE relname = '_pylon_sessions'"), 1);
  EXPECT_EQ(db_->query_int("SELECT count(*) FROM pg_tables WHERE tablename LIKE '_pylon%'"), 5)
      << "_pylon_sessions, _pylon_rotated_ids, _pylon_change_log, _pylon_change_log_state and "
         "_pylon_schema_migrations, nothing left over";
  auto backend = db_->open_backend();
  backend->save(pylon::test::make_session("alice", 1));
  EXPECT_EQ(backend->load_all().size(), 1U);
}

// ------------------------------------------------------------------------------------------------
// Many rows
// ------------------------------------------------------------------------------------------------

TEST_P(PgBackend, TwentyThousandRowsLoad) {
  constexpr int kRows = 20'000;
  db_->open_backend();
  db_->exec(
      "INSERT INTO _pylon_sessions (id, user_id, tenant_id, created_at, expires_at, "
      "last_seen_at, absolute_expires_at, device, ip, data) "
      "SELECT encode(sha256(convert_to('t' || i, 'UTF8')), 'hex'), 'user-' || (i % 100), NULL, "
      "i, 4000000000 + i, i, 4000000001 + i, 'device ' || i, NULL, "
      "decode(lpad(to_hex(i), 8, '0'), 'hex') "
      "FROM generate_series(1, " +
      std::to_string(kRows) + ") AS i");
  auto backend = db_->open_backend();
  const auto sessions = backend->load_all();
  ASSERT_EQ(sessions.size(), static_cast<std::size_t>(kRows));
  std::set<std::string> ids;
  for (const pylon::Session& session : sessions) {
    ids.insert(session.id);
    ASSERT_EQ(session.expires_at, 4'000'000'000 + session.created_at);
    ASSERT_EQ(session.device, "device " + std::to_string(session.created_at));
    ASSERT_EQ(session.data.size(), 4U);
  }
  EXPECT_EQ(ids.size(), static_cast<std::size_t>(kRows));

  pylon::test::ManualClock clock(1'000'000);
  pylon::StoreOptions options;
  options.clock = clock.fn();
  SessionStore store = SessionStore::open(db_->url(), options);
  EXPECT_EQ(store.size(), static_cast<std::size_t>(kRows));
  EXPECT_EQ(store.list_user("user-7").size(), static_cast<std::size_t>(kRows / 100));
}

// ------------------------------------------------------------------------------------------------
// The change log's notifications
// ------------------------------------------------------------------------------------------------

TEST_P(PgBackend, AChangeSourceWakesAtOnceForOthersAndOncePerWaitForItsOwnBackend) {
  using Clock = std::chrono::steady_clock;
  using std::chrono::milliseconds;
  const auto own = db_->open_backend();
  const auto other = db_->open_backend();
  const std::unique_ptr<pylon::ChangeSource> source = own->open_change_source();
  ASSERT_NE(source, nullptr);
  source->position();
  // Its connection is new: whatever was written before it listened may have been missed.
  EXPECT_TRUE(source->wait(milliseconds(10)));
  EXPECT_FALSE(source->wait(milliseconds(50))) << "nothing was written";

  // The backend's own write (its store has it already): "may have changed" once the wait is over.
  own->save(pylon::test::make_session("alice", 1));
  Clock::time_point start = Clock::now();
  EXPECT_TRUE(source->wait(milliseconds(400)));
  EXPECT_GE(Clock::now() - start, milliseconds(350));

  // Another connection's write: at once.
  other->save(pylon::test::make_session("bob", 2));
  start = Clock::now();
  EXPECT_TRUE(source->wait(milliseconds(5000)));
  EXPECT_LT(Clock::now() - start, milliseconds(2500));
  EXPECT_EQ(source->read(0, {}, 10).changes.size(), 2U);
}

// ------------------------------------------------------------------------------------------------
// Two processes on one database
// ------------------------------------------------------------------------------------------------

TEST_P(PgBackend, TwoStoresInTwoProcessesBothWriteAndRevokeUserReachesBoth) {
  pylon::test::TempDir dir;
  const std::string tokens_path = dir.file("tokens");
  constexpr int kChildSessions = 5;
  SessionStore store = SessionStore::open(db_->url());
  const pylon::NewSession mine = store.create("shared-user");
  const pid_t child = pylon::test::spawn(
      child_command({"create", db_->url(), "shared-user", std::to_string(kChildSessions)}),
      tokens_path);
  const pylon::NewSession mine_too = store.create("shared-user");
  ASSERT_EQ(pylon::test::wait_for(child), 0) << "the other process failed; see its stderr";

  std::vector<std::string> theirs;
  std::istringstream lines(pylon::test::read_file_bytes(tokens_path));
  for (std::string line; std::getline(lines, line);) theirs.push_back(line);
  ASSERT_EQ(theirs.size(), static_cast<std::size_t>(kChildSessions));
  EXPECT_EQ(db_->count("user_id = 'shared-user'"), kChildSessions + 2) << "both processes wrote";
  for (const std::string& token : theirs) {
    EXPECT_TRUE(db_->has(pylon::session_id_for_token(token)));
  }

  EXPECT_EQ(store.revoke_user("shared-user"), static_cast<std::size_t>(kChildSessions + 2))
      << "every row storage removed, the other process's included";
  EXPECT_EQ(db_->count("user_id = 'shared-user'"), 0);
  EXPECT_FALSE(store.validate(mine.token).has_value());
  EXPECT_FALSE(store.validate(mine_too.token).has_value());
  SessionStore fresh = SessionStore::open(db_->url());
  for (const std::string& token : theirs) EXPECT_FALSE(fresh.validate(token).has_value());
}

}  // namespace

int main(int argc, char** argv) {
  // NOLINTNEXTLINE(cppcoreguidelines-pro-bounds-pointer-arithmetic): main's argv is a C array
  const std::vector<std::string> args(argv, argv + argc);
  if (args.size() >= 2 && args[1] == kChildFlag) {
    return run_child(std::vector<std::string>(args.begin() + 2, args.end()));
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

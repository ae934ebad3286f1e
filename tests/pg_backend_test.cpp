// What only the PostgreSQL backend does, on a real server (the shared contract is in
// backend_contract_test.cpp and store_contract_test.cpp): a wrong password, a missing database
// and a closed port are pylon::Errors naming host, port and database but never the password;
// several processes migrating one empty database at once all come up with one schema; 20,000
// rows load; two SessionStores in two processes on one database both write, and revoke_user in
// one removes, in storage, what the other created.
//
// The second processes are this binary re-executed (/proc/self/exe --pylon-pg-child ...), so
// they are fresh processes rather than forks of the test runner: this file has its own main().
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <iostream>
#include <memory>
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
using ::testing::Not;

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

// Opening `url` must fail with a pylon::Error naming host, port and database, and neither its
// what() nor its backend_detail() may contain any of `secrets`.
void expect_connection_error(const std::string& url, const std::string& database,
                             const std::vector<std::string>& secrets) {
  const auto error = pylon::test::capture_pylon_error([&] { pylon::open_backend(url); });
  ASSERT_TRUE(error.has_value()) << "opening " << pylon::redact_url(url) << " must fail";
  EXPECT_EQ(error->code(), ErrorCode::kConnectionLost) << error->what();
  const std::string host_port = host_port_of(url);
  const std::string host = host_port.substr(0, host_port.find(':'));
  const std::string port = host_port.substr(host_port.find(':') + 1);
  EXPECT_THAT(error->what(), HasSubstr(host));
  EXPECT_THAT(error->what(), HasSubstr("port " + port));
  EXPECT_THAT(error->what(), HasSubstr("\"" + database + "\""));
  for (const std::string& secret : secrets) {
    ASSERT_FALSE(secret.empty());
    EXPECT_THAT(error->what(), Not(HasSubstr(secret)));
    EXPECT_THAT(error->backend_detail(), Not(HasSubstr(secret)));
  }
}

TEST_P(PgBackend, WrongPasswordIsNamedWithoutThePassword) {
  const std::string real = password_of(db_->url());
  ASSERT_FALSE(real.empty()) << "the test server's URL carries a password";
  const std::string wrong = "Wr0ng-" + real.substr(0, 8) + "-pass";
  const std::string url = replace_all(db_->url(), ":" + real + "@", ":" + wrong + "@");
  expect_connection_error(url, db_->postgres_database(), {wrong, real});
}

TEST_P(PgBackend, MissingDatabaseIsNamedWithoutThePassword) {
  const std::string missing = db_->postgres_database() + "_missing";
  const std::string url = pylon::test::postgres_url_for(db_->admin_url(), missing);
  expect_connection_error(url, missing, {password_of(url)});
}

TEST_P(PgBackend, ClosedPortIsNamedWithoutThePassword) {
  const std::string host_port = host_port_of(db_->url());
  const std::string url = replace_all(db_->url(), "@" + host_port + "/",
                                      "@127.0.0.1:" + std::to_string(closed_port()) + "/");
  expect_connection_error(url, db_->postgres_database(), {password_of(url)});
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
  EXPECT_EQ(db_->query_int("SELECT count(*) FROM pg_tables WHERE tablename LIKE '_pylon%'"), 3)
      << "_pylon_sessions, _pylon_rotated_ids and _pylon_schema_migrations, nothing left over";
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

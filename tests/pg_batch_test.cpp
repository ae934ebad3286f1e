// PostgreSQL's save_batch() and load_each(), on a real server: a batch is one INSERT statement
// (one round trip, one commit) whose rows round-trip byte for byte; ids repeated within a batch
// end as sequential upserts would leave them (the last wins), as on SQLite; a batch larger than
// one statement may carry is split into statements of one transaction, still all or nothing; a
// failed batch stores nothing and is reported with the SQLSTATE's code and without the password;
// a batch whose reply is lost (its server process frozen) fails with kConnectionLost within the
// deadline, is applied whole or not at all, and the backend serves the next call; load_each
// reads rows of every shape into one reused Session without carrying a field over.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>  // NOLINT(modernize-deprecated-headers): kill() is POSIX, not <csignal>

#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "session_backend.hpp"
#include "support/test_database.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::ErrorCode;
using pylon::Session;
using pylon::test::make_session;
using pylon::test::password_of;
using pylon::test::same_session;
using pylon::test::TestDatabase;
using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// load_all() as a map from id.
std::map<std::string, Session> load_by_id(pylon::SessionBackend& backend) {
  std::map<std::string, Session> by_id;
  for (Session& session : backend.load_all()) {
    const std::string id = session.id;
    EXPECT_TRUE(by_id.emplace(id, std::move(session)).second) << "duplicate id " << id;
  }
  return by_id;
}

// Sessions of every shape: all fields set, every optional absent, empty and awkward data,
// non-ASCII text, extreme times.
std::vector<Session> assorted_sessions(int count) {
  std::vector<Session> sessions;
  sessions.reserve(static_cast<std::size_t>(count));
  for (int i = 0; i < count; ++i) {
    Session session = make_session("user-" + std::to_string(i % 7), i);
    switch (i % 4) {
      case 0:
        session.tenant_id.reset();
        session.device.reset();
        session.ip.reset();
        session.data.clear();
        break;
      case 1:
        session.idp_session_id = "sid-" + std::to_string(i);
        session.data = std::string(static_cast<std::size_t>(3000 + i), '\0') + "\xff\xfe";
        break;
      case 2:
        session.user_id = "us\xc3\xa9r-\xe2\x82\xac-" + std::to_string(i);  // UTF-8
        session.device = "";                                                // empty, not absent
        session.created_at = std::numeric_limits<std::int64_t>::min();
        session.expires_at = std::numeric_limits<std::int64_t>::max();
        break;
      default:
        session.tenant_id = std::string(200, 't');
        break;
    }
    sessions.push_back(std::move(session));
  }
  return sessions;
}

class PgBatch : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &db_)); }
  void TearDown() override {
    if (frozen_pid_ > 0) {
      EXPECT_EQ(::kill(frozen_pid_, SIGCONT), 0);
    }
  }

  // Counts the INSERT statements run on _pylon_sessions from now on (statement_count()).
  void count_statements() const {
    db_->exec(
        "CREATE TABLE pylon_test_statements (n INTEGER); "
        "CREATE FUNCTION pylon_test_count() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO pylon_test_statements VALUES (1); RETURN NULL; END $$; "
        "CREATE TRIGGER pylon_test_count AFTER INSERT ON _pylon_sessions "
        "FOR EACH STATEMENT EXECUTE FUNCTION pylon_test_count()");
  }
  [[nodiscard]] std::int64_t statement_count() const {
    return db_->query_int("SELECT count(*) FROM pylon_test_statements");
  }
  // How many transactions wrote the rows of _pylon_sessions.
  [[nodiscard]] std::int64_t writing_transactions() const {
    return db_->query_int("SELECT count(DISTINCT xmin::text) FROM _pylon_sessions");
  }

  std::unique_ptr<TestDatabase> db_;
  int frozen_pid_ = 0;
};

INSTANTIATE_TEST_SUITE_P(Server, PgBatch, ::testing::ValuesIn(pylon::test::postgres_backends()),
                         pylon::test::backend_name);
// Without PYLON_TEST_DATABASE_URL and CI, nothing is instantiated, on purpose.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(PgBatch);

// ------------------------------------------------------------------------------------------------
// One statement, every field
// ------------------------------------------------------------------------------------------------

TEST_P(PgBatch, ABatchIsOneStatementAndEveryFieldRoundTrips) {
  auto backend = db_->open_backend();
  count_statements();
  const std::vector<Session> sessions = assorted_sessions(64);
  backend->save_batch(sessions);
  EXPECT_EQ(statement_count(), 1);
  EXPECT_EQ(writing_transactions(), 1);

  // Read back by a backend of its own, and through load_one.
  auto reader = db_->open_backend();
  const std::map<std::string, Session> stored = load_by_id(*reader);
  ASSERT_EQ(stored.size(), sessions.size());
  for (const Session& session : sessions) {
    ASSERT_EQ(stored.count(session.id), 1U) << session.id;
    EXPECT_TRUE(same_session(session, stored.at(session.id)));
    const std::optional<Session> one = reader->load_one(session.id);
    ASSERT_TRUE(one.has_value());
    EXPECT_TRUE(same_session(session, *one));
  }
}

TEST_P(PgBatch, ABatchOfOneIsThePlainUpsert) {
  auto backend = db_->open_backend();
  count_statements();
  const Session session = make_session("alice", 3);
  backend->save_batch({session});
  EXPECT_EQ(statement_count(), 1);
  const std::optional<Session> stored = backend->load_one(session.id);
  ASSERT_TRUE(stored.has_value());
  EXPECT_TRUE(same_session(session, *stored));
}

TEST_P(PgBatch, ABatchReplacesStoredRowsWhole) {
  auto backend = db_->open_backend();
  Session before = make_session("alice", 1);
  backend->save(before);
  Session after = make_session("bob", 2);
  after.id = before.id;
  after.tenant_id.reset();
  after.idp_session_id.reset();
  const Session other = make_session("carol", 3);
  backend->save_batch({other, after});
  const std::map<std::string, Session> stored = load_by_id(*backend);
  ASSERT_EQ(stored.size(), 2U);
  EXPECT_TRUE(same_session(after, stored.at(after.id)));
  EXPECT_TRUE(same_session(other, stored.at(other.id)));
}

// ------------------------------------------------------------------------------------------------
// Repeated ids: as sequential upserts, as on SQLite
// ------------------------------------------------------------------------------------------------

TEST_P(PgBatch, RepeatedIdsInOneBatchEndAsSequentialUpsertsWouldLastWins) {
  // a1, b, a2, stored, c, a3, stored': the rows must end as a3, b, c and stored'.
  const Session stored_before = make_session("dave", 9);
  std::vector<Session> batch;
  Session a = make_session("alice", 1);
  batch.push_back(a);
  batch.push_back(make_session("bob", 2));
  a.user_id = "alice-second";
  a.data = std::string("\x00second", 7);
  batch.push_back(a);
  Session stored_update = make_session("dave-updated", 10);
  stored_update.id = stored_before.id;
  batch.push_back(make_session("carol", 3));
  batch.push_back(stored_update);
  a.user_id = "alice-last";
  a.device.reset();
  a.expires_at = 42;
  batch.push_back(a);
  stored_update.ip = "198.51.100.1";
  batch.push_back(stored_update);

  auto backend = db_->open_backend();
  backend->save(stored_before);
  count_statements();
  backend->save_batch(batch);
  EXPECT_EQ(statement_count(), 1) << "still one statement with repeated ids";

  std::map<std::string, Session> expected;
  for (const Session& session : batch) expected[session.id] = session;  // sequential upserts
  const std::map<std::string, Session> stored = load_by_id(*backend);
  ASSERT_EQ(stored.size(), expected.size());
  for (const auto& [id, session] : expected) {
    ASSERT_EQ(stored.count(id), 1U);
    EXPECT_TRUE(same_session(session, stored.at(id)));
  }

  // And exactly what the SQLite backend leaves after the same calls.
  TestDatabase sqlite(pylon::test::kSqlite);
  auto reference = sqlite.open_backend();
  reference->save(stored_before);
  reference->save_batch(batch);
  const std::map<std::string, Session> on_sqlite = load_by_id(*reference);
  ASSERT_EQ(on_sqlite.size(), stored.size());
  for (const auto& [id, session] : on_sqlite) {
    ASSERT_EQ(stored.count(id), 1U);
    EXPECT_TRUE(same_session(session, stored.at(id)));
  }
}

// ------------------------------------------------------------------------------------------------
// A batch larger than one statement carries: several statements, one transaction
// ------------------------------------------------------------------------------------------------

// 40 sessions of 1 MiB of data: more than the 32 MiB one statement of save_batch() sends.
std::vector<Session> big_sessions(const std::string& last_user) {
  std::vector<Session> sessions;
  for (int i = 0; i < 40; ++i) {
    Session session = make_session("big", i);
    session.data = std::string(std::size_t{1} << 20U, static_cast<char>('a' + i % 26));
    sessions.push_back(std::move(session));
  }
  sessions.back().user_id = last_user;
  return sessions;
}

TEST_P(PgBatch, ABatchPastOneStatementIsSplitIntoOneTransaction) {
  auto backend = db_->open_backend();
  count_statements();
  const std::vector<Session> sessions = big_sessions("big");
  backend->save_batch(sessions);
  EXPECT_EQ(statement_count(), 2);
  EXPECT_EQ(writing_transactions(), 1);
  EXPECT_EQ(db_->count(), 40);
  for (const Session& session : {sessions.front(), sessions.back()}) {
    const std::optional<Session> stored = backend->load_one(session.id);
    ASSERT_TRUE(stored.has_value());
    EXPECT_TRUE(same_session(session, *stored));
  }
}

TEST_P(PgBatch, ASplitBatchThatFailsInItsLastStatementStoresNothing) {
  auto backend = db_->open_backend();
  db_->exec(
      "ALTER TABLE _pylon_sessions ADD CONSTRAINT pylon_test_no_poison "
      "CHECK (user_id <> 'poison')");
  EXPECT_PYLON_ERROR(backend->save_batch(big_sessions("poison")), ErrorCode::kInvalidArgument);
  EXPECT_EQ(db_->count(), 0) << "the first statement's rows must be rolled back";
  // No transaction was left open: the next call stores, and its row alone.
  const Session next = make_session("after", 1);
  backend->save_batch({next, make_session("after", 2)});
  EXPECT_EQ(db_->count(), 2);
  EXPECT_TRUE(db_->has(next.id));
}

// ------------------------------------------------------------------------------------------------
// Failures: nothing stored, the SQLSTATE's code, no password
// ------------------------------------------------------------------------------------------------

TEST_P(PgBatch, AFailedBatchStoresNothingAndSaysWhyWithoutThePassword) {
  auto backend = db_->open_backend();
  const Session kept = make_session("kept", 1);
  backend->save(kept);
  db_->exec(
      "ALTER TABLE _pylon_sessions ADD CONSTRAINT pylon_test_no_poison "
      "CHECK (user_id <> 'poison')");
  std::vector<Session> batch = assorted_sessions(10);
  batch[7].user_id = "poison";
  const auto error = pylon::test::capture_pylon_error([&] { backend->save_batch(batch); });
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), ErrorCode::kInvalidArgument) << error->what();
  EXPECT_THAT(error->backend_detail(), HasSubstr("SQLSTATE 23514"));
  EXPECT_THAT(error->what(), HasSubstr(db_->postgres_database()));
  const std::string password = password_of(db_->url());
  ASSERT_FALSE(password.empty()) << "the test server's URL carries a password";
  EXPECT_THAT(error->what(), Not(HasSubstr(password)));
  EXPECT_THAT(error->backend_detail(), Not(HasSubstr(password)));
  EXPECT_EQ(db_->count(), 1);
  EXPECT_TRUE(db_->has(kept.id));

  // A trigger that says disk_full (53100): kStorageFull, nothing stored, and the backend works
  // again once it is gone.
  db_->exec("ALTER TABLE _pylon_sessions DROP CONSTRAINT pylon_test_no_poison");
  db_->refuse_saves(true);
  EXPECT_PYLON_ERROR(backend->save_batch(assorted_sessions(5)), ErrorCode::kStorageFull);
  EXPECT_EQ(db_->count(), 1);
  db_->refuse_saves(false);
  backend->save_batch(assorted_sessions(5));
  EXPECT_EQ(db_->count(), 6);
}

TEST_P(PgBatch, ABatchUnderAnotherConnectionsLockFailsAsBusyAndStoresNothing) {
  auto backend = pylon::open_backend(db_->impatient_url());
  const std::vector<Session> batch = assorted_sessions(8);
  {
    const std::unique_ptr<pylon::test::WriteBlock> block = db_->block_writes();
    EXPECT_PYLON_ERROR(backend->save_batch(batch), ErrorCode::kBusy);
  }
  EXPECT_EQ(db_->count(), 0);
  backend->save_batch(batch);  // the lock gone, the same batch goes through
  EXPECT_EQ(db_->count(), 8);
}

// ------------------------------------------------------------------------------------------------
// A lost reply: in doubt, never hanging, whole or nothing
// ------------------------------------------------------------------------------------------------

TEST_P(PgBatch, ABatchWhoseReplyIsLostFailsWithinTheDeadlineAndIsAppliedWholeOrNotAtAll) {
  constexpr milliseconds kDeadline{1000};
  constexpr milliseconds kSlack{1000};
  pylon::PostgresOptions options;
  options.deadline = kDeadline;
  auto backend = pylon::open_postgres_backend(db_->url(), options);
  backend->save(make_session("before", 1));
  const std::int64_t pid = db_->library_server_pid();
  ASSERT_GT(pid, 0);

  // Freeze the backend's server process: the batch reaches its socket, no reply comes.
  ASSERT_EQ(::kill(static_cast<pid_t>(pid), SIGSTOP), 0);
  frozen_pid_ = static_cast<int>(pid);
  const std::vector<Session> batch = assorted_sessions(8);
  const Clock::time_point start = Clock::now();
  EXPECT_PYLON_ERROR(backend->save_batch(batch), ErrorCode::kConnectionLost);
  EXPECT_LE(Clock::now() - start, kDeadline + kSlack);
  ASSERT_EQ(::kill(static_cast<pid_t>(pid), SIGCONT), 0);
  frozen_pid_ = 0;

  // The backend serves calls again (after one deadline of failing at once), on a new connection
  // that first ended the old process: from then on, what is stored stays.
  bool served = false;
  while (!served && Clock::now() - start < 10 * kDeadline) {
    try {
      backend->save(make_session("after", 2));
      served = true;
    } catch (const pylon::Error& error) {
      EXPECT_EQ(error.code(), ErrorCode::kConnectionLost) << error.what();
      std::this_thread::sleep_for(milliseconds(100));
    }
  }
  ASSERT_TRUE(served) << "the backend did not recover after the server process thawed";
  EXPECT_EQ(db_->query_int("SELECT count(*) FROM pg_stat_activity WHERE pid = ?1", {pid}), 0)
      << "the process that held the lost batch must be gone";
  std::int64_t applied = 0;
  for (const Session& session : batch) applied += db_->has(session.id) ? 1 : 0;
  EXPECT_TRUE(applied == 0 || applied == static_cast<std::int64_t>(batch.size()))
      << applied << " of " << batch.size() << " rows of one batch were stored";
}

// ------------------------------------------------------------------------------------------------
// load_each: one Session reused for every row
// ------------------------------------------------------------------------------------------------

TEST_P(PgBatch, LoadEachCarriesNoFieldOverFromOneRowToTheNext) {
  auto backend = db_->open_backend();
  const std::vector<Session> sessions = assorted_sessions(200);
  backend->save_batch(sessions);
  std::map<std::string, Session> expected;
  for (const Session& session : sessions) expected[session.id] = session;

  std::size_t visited = 0;
  db_->open_backend()->load_each([&](const Session& row) {
    ++visited;
    const auto found = expected.find(row.id);
    ASSERT_NE(found, expected.end()) << row.id;
    EXPECT_TRUE(same_session(found->second, row));
  });
  EXPECT_EQ(visited, sessions.size());
}

}  // namespace

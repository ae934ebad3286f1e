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

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
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

// ------------------------------------------------------------------------------------------------
// insert_new with a cap: atomic against a second connection
// ------------------------------------------------------------------------------------------------

constexpr std::size_t kRacers = 2;
constexpr std::array<const char*, 2> kCappedUsers = {"capped-a", "capped-b"};

// The batch of each racer in round `round`: one session of each capped user, in tenant "t",
// racer 0 listing capped-a first and racer 1 capped-b. A round's sessions tie on created_at.
std::array<std::vector<Session>, kRacers> race_batches(int round) {
  std::array<std::vector<Session>, kRacers> batches;
  for (std::size_t racer = 0; racer < kRacers; ++racer) {
    for (std::size_t user = 0; user < kCappedUsers.size(); ++user) {
      Session session = make_session(kCappedUsers.at((user + racer) % kCappedUsers.size()),
                                     round * static_cast<int>(kRacers) + static_cast<int>(racer));
      session.tenant_id = "t";
      session.created_at = 1'700'000'000 + round;
      batches.at(racer).push_back(session);
    }
  }
  return batches;
}

// What one racer's insert_new() returned, or the message of what it threw.
struct RaceOutcome {
  std::vector<pylon::RemovedSession> removed;
  std::string failure;
};

// Runs insert_new(batches[i], cap) on backends[i], each on its own thread, started together as
// near as two threads can be.
std::array<RaceOutcome, kRacers> race(
    const std::array<std::unique_ptr<pylon::SessionBackend>, kRacers>& backends,
    const std::array<std::vector<Session>, kRacers>& batches, std::size_t cap) {
  std::array<RaceOutcome, kRacers> outcomes;
  std::atomic<std::size_t> ready{0};
  std::vector<std::thread> threads;
  for (std::size_t racer = 0; racer < kRacers; ++racer) {
    threads.emplace_back([&, racer] {
      ++ready;
      while (ready.load() < kRacers) std::this_thread::yield();
      try {
        outcomes.at(racer).removed = backends.at(racer)->insert_new(batches.at(racer), cap);
      } catch (const pylon::Error& error) {
        outcomes.at(racer).failure = error.what();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  return outcomes;
}

// Two connections create sessions for the same two users at once, round after round, each
// batch naming the users in the other's order (so a lock taken in batch order could deadlock).
// After every round each user has at most the cap; at the end the newest sessions remain, and
// every session created is either still stored or was returned as evicted, once.
TEST_P(PgBatch, ConcurrentCappedCreatesOnTwoConnectionsNeverLeaveMoreThanTheCap) {
  constexpr std::size_t kCap = 2;
  constexpr int kRounds = 150;
  const std::array<std::unique_ptr<pylon::SessionBackend>, kRacers> backends = {
      db_->open_backend(), db_->open_backend()};
  std::set<std::string> created;
  std::set<std::string> evicted;
  for (int round = 0; round < kRounds; ++round) {
    const std::array<std::vector<Session>, kRacers> batches = race_batches(round);
    for (const auto& batch : batches) {
      for (const Session& session : batch) created.insert(session.id);
    }
    for (const RaceOutcome& outcome : race(backends, batches, kCap)) {
      ASSERT_EQ(outcome.failure, "") << "round " << round;
      for (const pylon::RemovedSession& row : outcome.removed) {
        EXPECT_EQ(created.count(row.id), 1U) << "evicted a session nobody created";
        EXPECT_TRUE(evicted.insert(row.id).second) << "evicted twice: " << row.id;
      }
    }
    for (const std::string user : kCappedUsers) {
      ASSERT_LE(db_->count("user_id = '" + user + "'"), static_cast<std::int64_t>(kCap))
          << user << " has more than the cap after round " << round;
    }
  }
  std::set<std::string> stored;
  for (const Session& session : backends[0]->load_all()) {
    stored.insert(session.id);
    EXPECT_EQ(session.created_at, 1'700'000'000 + kRounds - 1) << "an older session survived";
    EXPECT_EQ(evicted.count(session.id), 0U) << "returned as evicted, yet stored";
  }
  EXPECT_EQ(stored.size(), kCappedUsers.size() * kCap);
  EXPECT_EQ(stored.size() + evicted.size(), created.size());
}

TEST_P(PgBatch, CappedCreatesEvictByCreationThenInsertionOrderWithinTheTenant) {
  auto backend = db_->open_backend();
  // Same created_at for all: insertion order decides. Another tenant's and another user's rows
  // are not counted.
  std::vector<Session> first;
  for (int i = 0; i < 3; ++i) {
    Session session = make_session("alice", i);
    session.created_at = 1'700'000'000;
    session.tenant_id = "t1";
    first.push_back(session);
  }
  Session other_tenant = make_session("alice", 10);
  other_tenant.tenant_id.reset();
  Session other_user = make_session("bob", 11);
  other_user.tenant_id = "t1";
  backend->save_batch({other_tenant, other_user});
  EXPECT_TRUE(backend->insert_new(first, 0).empty()) << "no cap, no eviction";

  Session newest = make_session("alice", 4);
  newest.created_at = 1'700'000'000;
  newest.tenant_id = "t1";
  Session older = make_session("alice", 5);  // created earlier, inserted last
  older.created_at = 1'600'000'000;
  older.tenant_id = "t1";
  const std::vector<pylon::RemovedSession> removed = backend->insert_new({newest, older}, 2);
  const std::vector<pylon::RemovedSession> expected = {
      {first[0].id, "alice"}, {first[1].id, "alice"}, {older.id, "alice"}};
  EXPECT_THAT(removed, ::testing::UnorderedElementsAreArray(expected));
  EXPECT_TRUE(db_->has(first[2].id));
  EXPECT_TRUE(db_->has(newest.id));
  EXPECT_TRUE(db_->has(other_tenant.id));
  EXPECT_TRUE(db_->has(other_user.id));
  EXPECT_EQ(db_->count(), 4);
}

TEST_P(PgBatch, AFailedCappedCreateInsertsNothingAndEvictsNothing) {
  auto backend = db_->open_backend();
  Session kept = make_session("alice", 1);
  kept.tenant_id.reset();
  backend->save(kept);
  db_->exec(
      "ALTER TABLE _pylon_sessions ADD CONSTRAINT pylon_test_no_poison "
      "CHECK (user_id <> 'poison')");
  const std::vector<Session> batch = {make_session("alice", 2), make_session("poison", 3)};
  EXPECT_PYLON_ERROR(backend->insert_new(batch, 1), ErrorCode::kInvalidArgument);
  EXPECT_EQ(db_->count(), 1);
  EXPECT_TRUE(db_->has(kept.id));
  // No transaction was left open, and the locks went with it: the next capped create works.
  Session next = make_session("alice", 4);
  next.tenant_id.reset();
  EXPECT_THAT(backend->insert_new({next}, 1),
              ::testing::ElementsAre(pylon::RemovedSession{kept.id, "alice"}));
  EXPECT_EQ(db_->count(), 1);
}

// ------------------------------------------------------------------------------------------------
// rotate: one statement
// ------------------------------------------------------------------------------------------------

TEST_P(PgBatch, RotateIsOneStatementThatAlsoRecordsTheRotatedId) {
  auto backend = db_->open_backend();
  const Session old = make_session("alice", 1);
  Session uncapped = make_session("bob", 2);
  uncapped.absolute_expires_at = 0;
  backend->save_batch({old, uncapped});
  // Each row written, with the transaction and the statement (the client's query text) that
  // wrote it.
  db_->exec(
      "CREATE TABLE pylon_test_writes (tbl TEXT, op TEXT, xact TEXT, query TEXT); "
      "CREATE FUNCTION pylon_test_write() RETURNS trigger LANGUAGE plpgsql AS "
      "$$ BEGIN INSERT INTO pylon_test_writes VALUES (TG_TABLE_NAME, TG_OP, "
      "txid_current()::text, current_query()); RETURN NULL; END $$; "
      "CREATE TRIGGER pylon_test_write AFTER INSERT OR DELETE ON _pylon_sessions "
      "FOR EACH ROW EXECUTE FUNCTION pylon_test_write(); "
      "CREATE TRIGGER pylon_test_write AFTER INSERT OR DELETE ON _pylon_rotated_ids "
      "FOR EACH ROW EXECUTE FUNCTION pylon_test_write()");
  const std::int64_t old_order =
      db_->query_int("SELECT insert_order FROM _pylon_sessions WHERE id = ?1", {old.id});

  const std::int64_t now = old.created_at + 60;
  const std::string new_id = pylon::session_id_for_token(pylon::generate_token());
  const std::optional<Session> rotated = backend->rotate(old.id, new_id, now);
  ASSERT_TRUE(rotated.has_value());
  Session expected = old;
  expected.id = new_id;
  EXPECT_TRUE(same_session(expected, *rotated));
  const std::optional<Session> stored = backend->load_one(new_id);
  ASSERT_TRUE(stored.has_value());
  EXPECT_TRUE(same_session(expected, *stored));
  EXPECT_FALSE(db_->has(old.id));
  EXPECT_GT(db_->query_int("SELECT insert_order FROM _pylon_sessions WHERE id = ?1", {new_id}),
            old_order)
      << "the copy is the newest row for max_sessions_per_user's order";

  const std::vector<pylon::test::SqlRow> writes =
      db_->query("SELECT tbl, op, xact, query FROM pylon_test_writes ORDER BY tbl, op");
  ASSERT_EQ(writes.size(), 3U);
  EXPECT_EQ(writes[0][0], "_pylon_rotated_ids");
  EXPECT_EQ(writes[0][1], "INSERT");
  EXPECT_EQ(writes[1][0], "_pylon_sessions");
  EXPECT_EQ(writes[1][1], "DELETE");
  EXPECT_EQ(writes[2][0], "_pylon_sessions");
  EXPECT_EQ(writes[2][1], "INSERT");
  for (const pylon::test::SqlRow& write : writes) {
    EXPECT_EQ(write[2], writes[0][2]) << "one transaction";
    EXPECT_EQ(write[3], writes[0][3]) << "one statement";
  }

  std::vector<pylon::RotatedId> records;
  backend->load_rotated_each([&](const pylon::RotatedId& id) { records.push_back(id); });
  const pylon::RotatedId record = {old.id,        new_id, "alice",
                                   old.tenant_id, now,    old.absolute_expires_at};
  EXPECT_THAT(records, ::testing::ElementsAre(record));

  // Without an absolute cap, the record lives until the session's expiry.
  const std::string bob_new = pylon::session_id_for_token(pylon::generate_token());
  ASSERT_TRUE(backend->rotate(uncapped.id, bob_new, now).has_value());
  records.clear();
  backend->load_rotated_each([&](const pylon::RotatedId& id) { records.push_back(id); });
  const pylon::RotatedId bob_record = {uncapped.id,        bob_new, "bob",
                                       uncapped.tenant_id, now,     uncapped.expires_at};
  EXPECT_THAT(records, ::testing::UnorderedElementsAre(record, bob_record));

  // The batch purge takes expired records alone; remove_expired() takes them with the sessions,
  // and counts the sessions only.
  EXPECT_EQ(backend->remove_expired_rotated(uncapped.expires_at, 10), 1U);
  EXPECT_EQ(db_->query_int("SELECT count(*) FROM _pylon_rotated_ids"), 1);
  EXPECT_EQ(backend->remove_expired(uncapped.expires_at), 2U) << "both copies, not the record";
  EXPECT_EQ(db_->query_int("SELECT count(*) FROM _pylon_rotated_ids"), 1);
  EXPECT_EQ(backend->remove_expired(old.absolute_expires_at), 0U);
  EXPECT_EQ(db_->query_int("SELECT count(*) FROM _pylon_rotated_ids"), 0);
}

TEST_P(PgBatch, RotateOfAMissingOrExpiredSessionWritesNothing) {
  auto backend = db_->open_backend();
  const Session session = make_session("alice", 1);
  const Session taken = make_session("bob", 2);
  backend->save_batch({session, taken});
  const std::string before = db_->all_tables_text();
  const std::string new_id = pylon::session_id_for_token(pylon::generate_token());
  EXPECT_FALSE(backend->rotate(new_id, session.id, session.created_at).has_value()) << "missing";
  EXPECT_FALSE(backend->rotate(session.id, new_id, session.expires_at).has_value()) << "expired";
  // The new id taken already: refused, and the whole statement undone.
  EXPECT_PYLON_ERROR(backend->rotate(session.id, taken.id, session.created_at),
                     ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(backend->rotate(session.id, "not-an-id", session.created_at),
                     ErrorCode::kInvalidArgument);
  EXPECT_EQ(db_->all_tables_text(), before);
  EXPECT_TRUE(backend->rotate(session.id, new_id, session.created_at).has_value());
}

// ------------------------------------------------------------------------------------------------
// Migrating to version 3
// ------------------------------------------------------------------------------------------------

// The schema of `version` (1 or 2) as migrations 0001 and 0002 left it, recorded as applied.
std::string schema_at(int version) {
  std::string sql =
      "CREATE TABLE _pylon_sessions (id TEXT NOT NULL PRIMARY KEY CHECK (length(id) = 64), "
      "user_id TEXT NOT NULL, tenant_id TEXT, created_at BIGINT NOT NULL, "
      "expires_at BIGINT NOT NULL, last_seen_at BIGINT NOT NULL, "
      "absolute_expires_at BIGINT NOT NULL DEFAULT 0, device TEXT, ip TEXT, "
      "data BYTEA NOT NULL DEFAULT ''::bytea); "
      "CREATE INDEX _pylon_sessions_by_user ON _pylon_sessions (user_id); "
      "CREATE INDEX _pylon_sessions_by_expiry ON _pylon_sessions (expires_at); "
      "CREATE TABLE _pylon_schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
      "applied_at BIGINT NOT NULL); "
      "INSERT INTO _pylon_schema_migrations VALUES (1, '0001_create_sessions.sql', 1700000000); ";
  if (version >= 2) {
    sql +=
        "ALTER TABLE _pylon_sessions ADD COLUMN idp_session_id TEXT; "
        "CREATE INDEX _pylon_sessions_by_idp_session ON _pylon_sessions (idp_session_id) "
        "WHERE idp_session_id IS NOT NULL; "
        "INSERT INTO _pylon_schema_migrations VALUES (2, '0002_idp_session_id.sql', 1700000000)";
  }
  return sql;
}

// `data` as hex digits, for decode(..., 'hex').
std::string hex_of(const std::string& data) {
  static constexpr std::array<char, 16> kDigits = {'0', '1', '2', '3', '4', '5', '6', '7',
                                                   '8', '9', 'a', 'b', 'c', 'd', 'e', 'f'};
  std::string hex;
  for (const char c : data) {
    const auto byte = static_cast<unsigned char>(c);
    hex += kDigits.at(byte >> 4U);
    hex += kDigits.at(byte & 0xFU);
  }
  return hex;
}

// Writes `session` into a database of schema `version` by hand, as that version's library did.
void insert_at(const TestDatabase& db, int version, const Session& session) {
  std::vector<pylon::test::SqlValue> params = {session.id,
                                               session.user_id,
                                               session.tenant_id.value_or(""),
                                               session.created_at,
                                               session.expires_at,
                                               session.last_seen_at,
                                               session.absolute_expires_at,
                                               session.device.value_or(""),
                                               session.ip.value_or(""),
                                               hex_of(session.data)};
  std::string columns =
      "id, user_id, tenant_id, created_at, expires_at, last_seen_at, "
      "absolute_expires_at, device, ip, data";
  std::string values = "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, decode(?10, 'hex')";
  if (version >= 2) {
    columns += ", idp_session_id";
    values += ", ?11";
    params.emplace_back(session.idp_session_id ? pylon::test::SqlValue(*session.idp_session_id)
                                               : pylon::test::SqlValue(nullptr));
  }
  const auto rows = db.query(
      "INSERT INTO _pylon_sessions (" + columns + ") VALUES (" + values + ") RETURNING 1", params);
  ASSERT_EQ(rows.size(), 1U);
}

TEST_P(PgBatch, VersionOneAndTwoDatabasesMigrateKeepingTheirRowsAndNumberingThem) {
  for (const int version : {1, 2}) {
    SCOPED_TRACE("from version " + std::to_string(version));
    std::unique_ptr<TestDatabase> db;
    ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &db));
    db->exec(schema_at(version));
    std::vector<Session> rows;
    for (int i = 0; i < 5; ++i) {
      Session session = make_session("user-" + std::to_string(i % 2), i);
      session.idp_session_id.reset();
      if (version >= 2 && i % 2 == 0) session.idp_session_id = "sid-" + std::to_string(i);
      insert_at(*db, version, session);
      session.authenticated_at = session.created_at;  // what migration 0005 gives a user's row
      rows.push_back(session);
    }

    auto backend = db->open_backend();
    EXPECT_EQ(db->query_int("SELECT max(version) FROM _pylon_schema_migrations"), 5);
    const std::map<std::string, Session> stored = load_by_id(*backend);
    ASSERT_EQ(stored.size(), rows.size());
    for (const Session& session : rows) {
      ASSERT_EQ(stored.count(session.id), 1U);
      EXPECT_TRUE(same_session(session, stored.at(session.id)));
    }
    EXPECT_EQ(db->query_int("SELECT count(DISTINCT insert_order) FROM _pylon_sessions "
                            "WHERE insert_order IS NOT NULL"),
              5)
        << "every row numbered, each differently";
    EXPECT_EQ(db->query_int("SELECT count(*) FROM _pylon_rotated_ids"), 0);

    // New rows come after the migrated ones, and eviction counts both.
    const std::int64_t last_migrated =
        db->query_int("SELECT max(insert_order) FROM _pylon_sessions");
    Session fresh = make_session("user-0", 0);  // the created_at of rows[0]: inserted later
    fresh.tenant_id = rows[0].tenant_id;
    EXPECT_THAT(backend->insert_new({fresh}, 1),
                ::testing::ElementsAre(pylon::RemovedSession{rows[0].id, "user-0"}));
    EXPECT_GT(db->query_int("SELECT insert_order FROM _pylon_sessions WHERE id = ?1", {fresh.id}),
              last_migrated);
  }
}

TEST_P(PgBatch, AForeignRotatedIdsTableBeforeVersionThreeIsRefusedAndUnchanged) {
  db_->exec(schema_at(2));
  db_->exec("CREATE TABLE _pylon_rotated_ids (id TEXT, note TEXT)");
  db_->exec("INSERT INTO _pylon_rotated_ids VALUES ('a', 'kept')");
  const std::string before = db_->all_tables_text();
  const auto error = pylon::test::capture_pylon_error([&] { db_->open_backend(); });
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), ErrorCode::kCorruptDatabase) << error->what();
  EXPECT_THAT(error->what(), HasSubstr("_pylon_rotated_ids"));
  EXPECT_EQ(db_->all_tables_text(), before);
}

}  // namespace

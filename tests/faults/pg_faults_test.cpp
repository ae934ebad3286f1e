// PostgreSQL faults on a real server, the cluster of PYLON_PG_DIR:
//   - stopped with `pg_ctl stop -m immediate` under 8 writing threads and started again: every
//     call made during the outage fails within libpq's connect_timeout plus one second, every
//     thread is served again within 5 s of the server's return without reopening anything, no
//     acknowledged create is lost, and the cache equals the table afterwards;
//   - frozen with SIGSTOP: every call of 8 threads fails within PostgresOptions::deadline (6 s by
//     default, plus one second of slack for a loaded machine) instead of hanging;
//   - its backend ended by pg_terminate_backend: the next call reconnects and succeeds;
//   - a rotation whose reply is lost (its server process frozen past the deadline, then thawed,
//     so that the statement commits after the caller was told kConnectionLost): the store does
//     not guess; it reads the session back and ends up agreeing with the table.
// The bounds are the library's promised deadlines, not speed claims: what is asserted is that no
// call hangs past them.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>  // NOLINT(modernize-deprecated-headers): kill() is POSIX, not <csignal>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "session_backend.hpp"
#include "support/pg_cluster.hpp"
#include "support/test_database.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::ErrorCode;
using pylon::SessionStore;
using pylon::test::PgCluster;
using pylon::test::TestDatabase;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr int kThreads = 8;
// libpq's connect_timeout as the library sets it when the URL does not (pg_backend.cpp).
constexpr milliseconds kConnectTimeout{5000};
constexpr milliseconds kDefaultDeadline{6000};
constexpr milliseconds kSlack{1000};

milliseconds since(Clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - start);
}

// The ids of `user_id`'s sessions in the table, and in the store's cache.
std::set<std::string> stored_ids(const TestDatabase& db, const std::string& user_id) {
  std::set<std::string> ids;
  for (const pylon::test::SqlRow& row :
       db.query("SELECT id FROM _pylon_sessions WHERE user_id = $1", {user_id})) {
    ids.insert(row.at(0).value_or(""));
  }
  return ids;
}
std::set<std::string> cached_ids(SessionStore& store, const std::string& user_id) {
  std::set<std::string> ids;
  for (const pylon::Session& session : store.list_user(user_id)) ids.insert(session.id);
  return ids;
}

// Polls `done` every 20 ms until it holds; the test's own timeout bounds the wait.
template <typename Condition>
void wait_until(Condition done) {
  while (!done()) std::this_thread::sleep_for(milliseconds(20));
}

// After a fault: no acknowledged create is missing from the table and, once one more write has
// settled every create left in doubt, the cache of each writer's sessions equals the table's.
void expect_nothing_lost(SessionStore& store, const TestDatabase& db,
                         const std::vector<std::string>& acknowledged) {
  std::set<std::string> stored;
  for (const pylon::test::SqlRow& row : db.query("SELECT id FROM _pylon_sessions")) {
    stored.insert(row.at(0).value_or(""));
  }
  std::size_t lost = 0;
  for (const std::string& id : acknowledged) lost += stored.count(id) == 0 ? 1U : 0U;
  EXPECT_EQ(lost, 0U) << "of " << acknowledged.size() << " acknowledged creates";
  // A create whose COMMIT was in flight at the stop is in doubt: it left the cache until the
  // next write read it back. One more write settles every doubt before the comparison.
  (void)store.create("settle");
  for (int t = 0; t < kThreads; ++t) {
    const std::string user = "writer" + std::to_string(t);
    EXPECT_EQ(cached_ids(store, user), stored_ids(db, user)) << user;
  }
}

class PgFaults : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    cluster_ = PgCluster::from_environment();
    ASSERT_TRUE(cluster_.has_value())
        << "PYLON_PG_DIR is not set: this suite stops and freezes the server, so it needs the "
           "cluster of `eval \"$(bash scripts/pg-cluster.sh start)\"` (scripts/test.sh starts one)";
    ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &db_));
    // Recovery after an immediate stop replays the WAL since the last checkpoint.
    db_->exec("CHECKPOINT");
  }
  void TearDown() override {
    // Whatever happened, leave the server running and thawed for the tests after this one.
    if (cluster_ && frozen_) {
      EXPECT_TRUE(cluster_->signal_server(SIGCONT));
    }
    if (frozen_pid_ > 0) {
      EXPECT_EQ(::kill(frozen_pid_, SIGCONT), 0);
    }
    if (cluster_ && server_down_) {
      EXPECT_EQ(cluster_->pg_ctl({"start"}), 0);
    }
  }

  std::optional<PgCluster> cluster_;
  std::unique_ptr<TestDatabase> db_;
  bool server_down_ = false;
  bool frozen_ = false;
  int frozen_pid_ = 0;
};

INSTANTIATE_TEST_SUITE_P(Server, PgFaults, ::testing::ValuesIn(pylon::test::postgres_backends()),
                         pylon::test::backend_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(PgFaults);

TEST_P(PgFaults, AnImmediateStopUnderEightThreadsFailsFastResumesAndLosesNothing) {
  SessionStore store = SessionStore::open(db_->url());
  enum class Phase { kBefore, kDown, kBack };
  std::atomic<Phase> phase{Phase::kBefore};
  std::atomic<bool> stop{false};
  Clock::time_point back_at{};  // written before phase becomes kBack
  std::mutex mutex;
  std::vector<std::string> acknowledged;
  std::vector<milliseconds> failed_while_down;  // how long each call made in the outage took
  std::vector<milliseconds> back_after;         // per thread: first success after the return
  std::atomic<int> calls_before{0};
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string user = "writer" + std::to_string(t);
      bool served_again = false;
      while (!stop.load()) {
        const Phase at_start = phase.load();
        const Clock::time_point start = Clock::now();
        try {
          const pylon::NewSession created = store.create(user);
          const std::lock_guard<std::mutex> lock(mutex);
          acknowledged.push_back(created.session.id);
          if (at_start == Phase::kBack && !served_again) {
            back_after.push_back(std::chrono::duration_cast<milliseconds>(Clock::now() - back_at));
            served_again = true;
          }
        } catch (const pylon::Error& error) {
          const std::lock_guard<std::mutex> lock(mutex);
          if (at_start == Phase::kDown && phase.load() == Phase::kDown) {
            failed_while_down.push_back(since(start));
            EXPECT_EQ(error.code(), ErrorCode::kConnectionLost) << error.what();
          }
        }
        ++calls_before;
      }
    });
  }
  while (calls_before.load() < 100) std::this_thread::yield();

  ASSERT_EQ(cluster_->pg_ctl({"--mode=immediate", "stop"}), 0);
  server_down_ = true;
  phase = Phase::kDown;
  std::this_thread::sleep_for(std::chrono::seconds(2));  // the outage: calls keep failing
  ASSERT_EQ(cluster_->pg_ctl({"start"}), 0);
  server_down_ = false;
  back_at = Clock::now();
  phase = Phase::kBack;
  // Every thread is served again, or this waits for the test's own timeout.
  wait_until([&] {
    const std::lock_guard<std::mutex> lock(mutex);
    return back_after.size() == static_cast<std::size_t>(kThreads);
  });
  stop = true;
  for (std::thread& thread : threads) thread.join();

  ASSERT_FALSE(failed_while_down.empty()) << "no call was made during the outage";
  for (const milliseconds took : failed_while_down) EXPECT_LE(took, kConnectTimeout + kSlack);
  for (const milliseconds took : back_after) {
    EXPECT_LE(took, milliseconds(5000)) << "a thread was served again only after this long";
  }
  expect_nothing_lost(store, *db_, acknowledged);
}

TEST_P(PgFaults, AFrozenServerFailsEveryCallWithinTheDeadlineInsteadOfHanging) {
  SessionStore store = SessionStore::open(db_->url());
  const pylon::NewSession kept = store.create("alice");
  ASSERT_TRUE(cluster_->signal_server(SIGSTOP));
  frozen_ = true;

  std::mutex mutex;
  std::vector<milliseconds> took;
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int call = 0; call < 2; ++call) {
        const Clock::time_point start = Clock::now();
        const auto error = pylon::test::capture_pylon_error([&] {
          if (t % 2 == 0) {
            (void)store.create("frozen");
          } else {
            (void)store.revoke_user("nobody-" + std::to_string(t));
          }
        });
        const std::lock_guard<std::mutex> lock(mutex);
        took.push_back(since(start));
        EXPECT_TRUE(error.has_value()) << "a call succeeded against a frozen server";
        if (error) {
          EXPECT_THAT(error->code(), ::testing::AnyOf(ErrorCode::kConnectionLost, ErrorCode::kBusy))
              << error->what();
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  // Reads never wait for storage.
  EXPECT_TRUE(store.validate(kept.token).has_value());
  ASSERT_TRUE(cluster_->signal_server(SIGCONT));
  frozen_ = false;

  ASSERT_EQ(took.size(), static_cast<std::size_t>(2 * kThreads));
  for (const milliseconds call : took) EXPECT_LE(call, kDefaultDeadline + kSlack);
  // Thawed: within a deadline (calls fail at once for one after a timeout), writes work again.
  const Clock::time_point thawed = Clock::now();
  std::optional<pylon::NewSession> after;
  while (!after && since(thawed) < 4 * kDefaultDeadline) {
    try {
      after = store.create("alice");
    } catch (const pylon::Error&) {
      std::this_thread::sleep_for(milliseconds(100));
    }
  }
  ASSERT_TRUE(after.has_value()) << "the store did not recover after the server thawed";
  EXPECT_TRUE(db_->has(after->session.id));
  EXPECT_EQ(cached_ids(store, "frozen"), stored_ids(*db_, "frozen"));
}

TEST_P(PgFaults, ABackendEndedByPgTerminateBackendIsReplacedByTheNextCall) {
  SessionStore store = SessionStore::open(db_->url());
  const pylon::NewSession first = store.create("alice");
  const std::int64_t ended = db_->query_int(
      "SELECT count(*) FROM (SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
      "WHERE datname = current_database() AND pid <> pg_backend_pid() "
      "AND application_name = 'pylon-sessions') AS terminated");
  // (With a timeout, pg_terminate_backend returns once the process is gone; a call racing the
  // termination itself would fail in doubt, and the one after it reconnect.)
  ASSERT_GE(ended, 1) << "the store's connection was not found in pg_stat_activity";
  // The connection died while idle: the next call notices before sending, and reconnects.
  const pylon::NewSession second = store.create("alice");
  EXPECT_TRUE(store.revoke(first.token));
  EXPECT_FALSE(db_->has(first.session.id));
  EXPECT_TRUE(db_->has(second.session.id));
  EXPECT_EQ(cached_ids(store, "alice"), stored_ids(*db_, "alice"));
}

TEST_P(PgFaults, ARotationWhoseReplyIsLostIsReadBackNotGuessed) {
  pylon::PostgresOptions options;
  options.deadline = milliseconds(1000);
  SessionStore store(pylon::open_postgres_backend(db_->url(), options));
  const pylon::NewSession session = store.create("alice");
  const std::int64_t pid = db_->library_server_pid();
  ASSERT_GT(pid, 0);

  // Freeze the store's server process: the rotation reaches its socket but gets no reply.
  ASSERT_EQ(::kill(static_cast<pid_t>(pid), SIGSTOP), 0);
  frozen_pid_ = static_cast<int>(pid);
  EXPECT_PYLON_ERROR(store.rotate(session.token), ErrorCode::kConnectionLost);
  // Thawed, it runs the statement it had received and commits: the rotation happened, after
  // the caller was told it may not have.
  ASSERT_EQ(::kill(static_cast<pid_t>(pid), SIGCONT), 0);
  frozen_pid_ = 0;
  for (int wait = 0; wait < 100 && db_->has(session.session.id); ++wait) {
    std::this_thread::sleep_for(milliseconds(50));
  }
  ASSERT_FALSE(db_->has(session.session.id)) << "the thawed server did not apply the rotation";

  // Meanwhile the store does not claim the old session: it is in doubt, out of the cache.
  EXPECT_FALSE(store.validate(session.token).has_value());
  // The next write settles the doubt by reading both ids back (once calls are accepted again,
  // one deadline after the timeout).
  std::optional<pylon::NewSession> next;
  const Clock::time_point start = Clock::now();
  while (!next && since(start) < milliseconds(10000)) {
    try {
      next = store.create("bob");
    } catch (const pylon::Error&) {
      std::this_thread::sleep_for(milliseconds(100));
    }
  }
  ASSERT_TRUE(next.has_value());
  EXPECT_FALSE(store.validate(session.token).has_value());
  EXPECT_EQ(cached_ids(store, "alice"), stored_ids(*db_, "alice"))
      << "the cache must hold the rotated session the server committed, and only it";
  EXPECT_EQ(stored_ids(*db_, "alice").size(), 1U);
}

}  // namespace

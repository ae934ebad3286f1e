// The PostgreSQL server stopped (pg_ctl stop -m immediate, a crash as far as clients can tell)
// and started again under a running SessionStore, while a thread keeps creating sessions: calls
// during the outage throw pylon::Error (kConnectionLost), a revoke made then fails closed, later
// calls succeed without reopening anything, and every acknowledged write is in storage.
//
// And the change feed across the same faults: a store whose listening connection is terminated
// (pg_terminate_backend) or whose server restarts listens again and catches up, so nothing
// revoked meanwhile validates once the server is back; while it cannot follow it says so (an
// event, StoreStats::following_changes) and, when told to, refuses every token.
//
// It controls the cluster that scripts/pg-cluster.sh started (PYLON_PG_DIR), so it runs alone
// (RUN_SERIAL): every other PostgreSQL test would see the outage too.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
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
using pylon::SessionEvent;
using pylon::SessionEventType;
using pylon::SessionStore;
using pylon::StoreOptions;
using pylon::test::TestDatabase;

using Cluster = pylon::test::PgCluster;

class PgRestart : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    cluster_ = Cluster::from_environment();
    ASSERT_TRUE(cluster_.has_value())
        << "PYLON_PG_DIR is not set: this test stops and starts the server, so it needs the "
           "cluster of `eval \"$(bash scripts/pg-cluster.sh start)\"` (scripts/test.sh starts one)";
    ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &db_));
  }
  void TearDown() override {
    // Whatever happened, leave the server running for the tests after this one.
    if (cluster_ && server_down_) {
      EXPECT_EQ(cluster_->pg_ctl({"start"}), 0);
    }
  }

  void stop_server() {
    ASSERT_EQ(cluster_->pg_ctl({"--mode=immediate", "stop"}), 0);
    server_down_ = true;
  }
  void start_server() {
    ASSERT_EQ(cluster_->pg_ctl({"start"}), 0);
    server_down_ = false;
  }

  std::optional<Cluster> cluster_;
  std::unique_ptr<TestDatabase> db_;
  bool server_down_ = false;
};

INSTANTIATE_TEST_SUITE_P(Server, PgRestart, ::testing::ValuesIn(pylon::test::postgres_backends()),
                         pylon::test::backend_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(PgRestart);

TEST_P(PgRestart, AStoreOutlivesAServerRestartAndLosesNoAcknowledgedWrite) {
  // Recovery after the immediate stop replays the WAL written since the last checkpoint: every
  // CREATE DATABASE of the tests before this one, unless a checkpoint is made now.
  db_->exec("CHECKPOINT");
  SessionStore store = SessionStore::open(db_->url());
  const pylon::NewSession before = store.create("alice");
  const pylon::NewSession revoked_in_outage = store.create("alice");

  // A writer that keeps going through the outage, recording what was acknowledged.
  std::mutex mutex;
  std::vector<std::string> acknowledged;
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::atomic<int> successes{0};
  std::thread writer([&] {
    while (!stop.load()) {
      try {
        const pylon::NewSession created = store.create("writer");
        const std::lock_guard<std::mutex> lock(mutex);
        acknowledged.push_back(created.session.id);
        ++successes;
      } catch (const pylon::Error&) {
        ++failures;
      }
    }
  });
  while (successes.load() < 20) std::this_thread::yield();

  stop_server();
  // During the outage: writes fail with kConnectionLost; reads are served from the cache.
  EXPECT_PYLON_ERROR(store.create("alice"), ErrorCode::kConnectionLost);
  EXPECT_PYLON_ERROR(store.revoke(revoked_in_outage.token), ErrorCode::kConnectionLost);
  EXPECT_FALSE(store.validate(revoked_in_outage.token).has_value()) << "fails closed";
  EXPECT_TRUE(store.validate(before.token).has_value());
  const int failures_seen = failures.load();
  while (failures.load() < failures_seen + 3) std::this_thread::yield();
  start_server();

  // After it: the next calls reconnect by themselves.
  const int successes_after_start = successes.load();
  while (successes.load() < successes_after_start + 20) std::this_thread::yield();
  stop = true;
  writer.join();
  const pylon::NewSession after = store.create("alice");
  EXPECT_TRUE(store.validate(after.token).has_value());
  EXPECT_EQ(store.revoke_user("nobody"), 0U);

  EXPECT_TRUE(db_->has(before.session.id));
  EXPECT_TRUE(db_->has(after.session.id));
  EXPECT_FALSE(db_->has(revoked_in_outage.session.id))
      << "the revoke that failed in the outage reached storage with a later write";
  std::set<std::string> stored;
  for (const pylon::test::SqlRow& row : db_->query("SELECT id FROM _pylon_sessions")) {
    stored.insert(row.at(0).value_or(""));
  }
  std::size_t lost = 0;
  for (const std::string& id : acknowledged) {
    if (stored.count(id) == 0) ++lost;
  }
  EXPECT_EQ(lost, 0U) << "of " << acknowledged.size() << " acknowledged creates";
  EXPECT_GT(failures.load(), 0);

  SessionStore fresh = SessionStore::open(db_->url());
  EXPECT_TRUE(fresh.validate(before.token).has_value());
  EXPECT_TRUE(fresh.validate(after.token).has_value());
  EXPECT_FALSE(fresh.validate(revoked_in_outage.token).has_value());
}

// Polls `condition` until it holds or `deadline` passes: for what the change feed's thread
// does. Far above the 2 s the README states; reaching it means the change never came.
bool eventually(const std::function<bool()>& condition,
                std::chrono::seconds deadline = std::chrono::seconds(30)) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (std::chrono::steady_clock::now() < until) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return condition();
}

// The events a store sent, by type, from whichever thread sent them.
class EventCounts {
 public:
  void add(const SessionEvent& event) {
    const std::lock_guard<std::mutex> lock(mutex_);
    types_.push_back(event.type);
  }
  std::size_t of(SessionEventType type) {
    const std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<std::size_t>(std::count(types_.begin(), types_.end(), type));
  }

 private:
  std::mutex mutex_;
  std::vector<SessionEventType> types_;
};

// A store that follows in the background and never looks a miss up: what it knows of others'
// writes came through the change feed.
StoreOptions following_options(const std::shared_ptr<EventCounts>& events) {
  StoreOptions options;
  options.miss_lookups_per_second = 0;
  options.on_event = [events](const SessionEvent& event) { events->add(event); };
  return options;
}

TEST_P(PgRestart, AListenerEndedByPgTerminateBackendListensAgainAndCatchesUp) {
  auto events = std::make_shared<EventCounts>();
  SessionStore writer = SessionStore::open(db_->url());
  SessionStore follower = SessionStore::open(db_->url(), following_options(events));
  const pylon::NewSession login = writer.create("alice");
  ASSERT_TRUE(eventually([&] { return follower.validate(login.token).has_value(); }));

  // Every connection of the library to this database: the writer's, the follower's and both
  // stores' listeners.
  const std::int64_t ended = db_->query_int(
      "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
      "WHERE datname = current_database() AND pid <> pg_backend_pid()");
  ASSERT_GE(ended, 2) << "the follower's listener was not among the connections";
  // The writer's own connection was ended too: its first call may fail (kConnectionLost) and the
  // next reconnects.
  ASSERT_TRUE(eventually([&] {
    try {
      writer.revoke(login.token);
      return true;
    } catch (const pylon::Error&) {
      return false;
    }
  }));
  ASSERT_FALSE(db_->has(login.session.id));

  EXPECT_TRUE(eventually([&] { return !follower.validate(login.token).has_value(); }))
      << "the follower still accepts a token revoked after its listener was terminated";
  const pylon::NewSession later = writer.create("bob");
  EXPECT_TRUE(eventually([&] { return follower.validate(later.token).has_value(); }))
      << "the follower does not listen again";
  EXPECT_TRUE(follower.stats().following_changes);
}

TEST_P(PgRestart, AFollowerCatchesUpAfterARestartAndRefusesWhileItCannotFollowIfTold) {
  db_->exec("CHECKPOINT");  // as above: a short recovery
  auto events = std::make_shared<EventCounts>();
  auto closed_events = std::make_shared<EventCounts>();
  SessionStore writer = SessionStore::open(db_->url());
  SessionStore follower = SessionStore::open(db_->url(), following_options(events));
  StoreOptions fail_closed = following_options(closed_events);
  fail_closed.refuse_while_not_following = true;
  SessionStore closed = SessionStore::open(db_->url(), fail_closed);
  const pylon::NewSession kept = writer.create("alice");
  const pylon::NewSession doomed = writer.create("bob");
  ASSERT_TRUE(eventually([&] {
    return follower.validate(doomed.token).has_value() && closed.validate(kept.token).has_value();
  }));

  stop_server();
  EXPECT_TRUE(eventually([&] { return !follower.stats().following_changes; }))
      << "the follower never noticed it cannot follow";
  EXPECT_EQ(events->of(SessionEventType::kChangeFeedLost), 1U);
  EXPECT_GE(follower.stats().change_feed_losses, 1U);
  EXPECT_TRUE(follower.validate(kept.token).has_value()) << "by default the cache is served";
  EXPECT_TRUE(eventually([&] { return !closed.stats().following_changes; }));
  EXPECT_FALSE(closed.validate(kept.token).has_value())
      << "refuse_while_not_following accepted a token while the store could not follow";

  start_server();
  // The revoke is retried until the writer's connection is back.
  EXPECT_TRUE(eventually([&] {
    try {
      return writer.revoke(doomed.token);
    } catch (const pylon::Error&) {
      return false;
    }
  })) << "the writer never reached the restarted server";
  EXPECT_TRUE(eventually([&] { return !follower.validate(doomed.token).has_value(); }))
      << "after the restart the follower still accepts a token revoked since";
  EXPECT_TRUE(eventually([&] { return events->of(SessionEventType::kChangeFeedResumed) == 1; }));
  EXPECT_TRUE(follower.stats().following_changes);
  EXPECT_TRUE(eventually([&] { return closed.validate(kept.token).has_value(); }))
      << "the fail-closed store never served again";
  // The revoke may have come after it resumed: then it arrives as any change does.
  EXPECT_TRUE(eventually([&] { return !closed.validate(doomed.token).has_value(); }));
}

}  // namespace

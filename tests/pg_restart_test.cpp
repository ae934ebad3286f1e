// The PostgreSQL server stopped (pg_ctl stop -m immediate, a crash as far as clients can tell)
// and started again under a running SessionStore, while a thread keeps creating sessions: calls
// during the outage throw pylon::Error (kConnectionLost), a revoke made then fails closed, later
// calls succeed without reopening anything, and every acknowledged write is in storage.
//
// It controls the cluster that scripts/pg-cluster.sh started (PYLON_PG_DIR), so it runs alone
// (RUN_SERIAL): every other PostgreSQL test would see the outage too.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
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

}  // namespace

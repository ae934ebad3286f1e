// Several stores on one database: every cache follows storage. A token the cache does not hold
// is looked up in storage (a point read by primary key), bounded by
// StoreOptions::miss_lookups_per_second, and never brings back a session a failed revoke still
// owes storage; and every store applies what the others write through the database's change log
// (its ChangeFeed): creates, revokes and bulk revokes, rotations, data updates, slides, purges,
// from stores in this process and in other processes. Run on every backend (parameters "sqlite"
// and "postgres", a fresh database per test) with a ManualClock for the sessions' times.
//
// Tests that need a store to see another's write at a known moment give it
// change_check_interval 0 (it reads the log before every lookup); those that check the
// background feed wait for it with a generous deadline, which fails the test only if the change
// never arrives, never because it was slow.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "session_backend.hpp"
#include "support/forwarding_backend.hpp"
#include "support/process.hpp"
#include "support/test_database.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::NewSession;
using pylon::Session;
using pylon::SessionEvent;
using pylon::SessionEventType;
using pylon::SessionStore;
using pylon::StoreOptions;
using pylon::test::ManualClock;
using pylon::test::same_session;
using pylon::test::TestDatabase;

// Set in the environment of the child processes of the multi-process tests: the URL of the
// database they write to, and the seed of their writes.
constexpr const char* kChildUrlVariable = "PYLON_SEVERAL_INSTANCES_CHILD_URL";
constexpr const char* kChildSeedVariable = "PYLON_SEVERAL_INSTANCES_CHILD_SEED";

std::optional<std::string> from_environment(const char* name) {
  const char* value = std::getenv(name);  // NOLINT(concurrency-mt-unsafe): no setenv meanwhile
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

// Polls `condition` until it holds or `deadline` passes: for what a background thread does. The
// deadline is far above the bound the README states; reaching it means the change never came.
bool eventually(const std::function<bool()>& condition,
                std::chrono::seconds deadline = std::chrono::seconds(20)) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (std::chrono::steady_clock::now() < until) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return condition();
}

// Every event a store delivered, from whichever thread delivered it.
class EventLog {
 public:
  void add(const SessionEvent& event) {
    const std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(event);
  }
  std::size_t count(SessionEventType type) {
    const std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<std::size_t>(
        std::count_if(events_.begin(), events_.end(),
                      [type](const SessionEvent& event) { return event.type == type; }));
  }

 private:
  std::mutex mutex_;
  std::vector<SessionEvent> events_;
};

// `writes` writes of a seeded random mix through `store`: creates (the most), revokes, rotations,
// data updates and, now and then, a revoke_user, on `users` users. kBusy (another process held
// the SQLite file longer than busy_timeout) is tolerated; any other error fails the test.
void write_at_random(SessionStore& store, std::uint32_t seed, int writes, std::uint32_t users) {
  std::mt19937 random(seed);
  std::vector<std::string> tokens;
  const auto any_token = [&] { return tokens.at(random() % tokens.size()); };
  for (int i = 0; i < writes; ++i) {
    const std::string user = "user-" + std::to_string(random() % users);
    try {
      const auto pick = random() % 6;
      if (pick <= 1 || tokens.empty()) {
        tokens.push_back(store.create(user).token);
      } else if (pick == 2) {
        store.revoke(any_token());
      } else if (pick == 3) {
        if (auto next = store.rotate(any_token())) tokens.push_back(next->token);
      } else if (pick == 4) {
        store.update_data(any_token(), "n=" + std::to_string(i));
      } else if (random() % 4 == 0) {
        store.revoke_user(user);
      }
    } catch (const pylon::Error& error) {
      ASSERT_EQ(error.code(), pylon::ErrorCode::kBusy) << error.what();
    }
  }
}

class SeveralInstances : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &db_)); }

  [[nodiscard]] StoreOptions options() const {
    StoreOptions options;
    options.clock = clock_.fn();
    return options;
  }
  [[nodiscard]] SessionStore open_store(const StoreOptions& options) const {
    return SessionStore::open(db_->url(), options);
  }
  // Reads the change log before every lookup, and never looks a miss up in storage: what it
  // holds came from its own writes, its load or the log.
  [[nodiscard]] StoreOptions exact_options() const {
    StoreOptions exact = options();
    exact.change_check_interval = std::chrono::milliseconds(0);
    exact.miss_lookups_per_second = 0;
    return exact;
  }
  // A store on a backend that offers no change log (as a custom backend may): it learns of
  // others' writes only by looking misses up.
  [[nodiscard]] SessionStore open_unfollowing_store(const StoreOptions& options) const {
    return SessionStore(std::make_unique<pylon::test::ForwardingBackend>(db_->open_backend()),
                        options);
  }

  // "" when `store`'s cache holds exactly the rows storage holds, field for field; else what
  // differs. `store` must not look misses up (its find() then reads the cache alone).
  [[nodiscard]] std::string cache_differences(SessionStore& store) const {
    std::string differences;
    const std::vector<Session> rows = db_->open_backend()->load_all();
    for (const Session& row : rows) {
      const std::optional<Session> cached = store.find(row.id);
      if (row.expires_at > clock_.now() && (!cached || !pylon::test::same_session(row, *cached))) {
        differences += "\n  " + row.id.substr(0, 8) + (cached ? " differs" : " missing");
      }
    }
    if (store.size() != rows.size()) {
      differences += "\n  the cache holds " + std::to_string(store.size()) + " sessions, storage " +
                     std::to_string(rows.size());
    }
    return differences;
  }

  std::unique_ptr<TestDatabase> db_;
  ManualClock clock_;
};

INSTANTIATE_TEST_SUITE_P(Backends, SeveralInstances,
                         ::testing::ValuesIn(pylon::test::contract_backends()),
                         pylon::test::backend_name);

// A user logs in on A; the next request lands on B, which started before the login.
TEST_P(SeveralInstances, ATokenCreatedByAnotherStoreIsAcceptedAtOnce) {
  SessionStore a = open_store(options());
  SessionStore b = open_unfollowing_store(options());  // the lookup alone, not the change feed
  const NewSession login = a.create("alice");

  const std::optional<Session> on_b = b.validate(login.token);
  ASSERT_TRUE(on_b.has_value()) << "B refused a session storage holds";
  EXPECT_TRUE(same_session(login.session, *on_b));
  EXPECT_EQ(b.stats().miss_lookups, 1U);
  EXPECT_EQ(b.list_user("alice").size(), 1U) << "the session found entered B's cache";
  EXPECT_TRUE(b.validate(login.token).has_value());
  EXPECT_EQ(b.stats().miss_lookups, 1U) << "the second request is a cache hit";

  const NewSession other = a.create("bob");
  const std::optional<Session> found = b.find(other.session.id);
  ASSERT_TRUE(found.has_value()) << "find() looks up an id the cache does not hold too";
  EXPECT_TRUE(same_session(other.session, *found));
}

// A lookup finds the row another store slid, and a row that has expired is not served.
TEST_P(SeveralInstances, ALookupServesOnlyALiveRowAndSlidesItAsValidateDoes) {
  SessionStore a = open_store(options());
  const NewSession stale = a.create("alice");
  const NewSession fresh = a.create("alice");
  clock_.advance(std::int64_t{2} * 3600);  // past the idle timeout of both
  SessionStore b = open_store(options());  // loads both, as expired
  SessionStore c_later = open_store(options());
  EXPECT_FALSE(b.validate(stale.token).has_value());
  EXPECT_EQ(b.stats().miss_lookups, 0U) << "an expired cached session needs no lookup";

  const NewSession late = a.create("carol");
  clock_.advance(61);
  const std::optional<Session> slid = c_later.validate(late.token);
  ASSERT_TRUE(slid.has_value());
  EXPECT_EQ(slid->last_seen_at, clock_.now()) << "a session found by a lookup slides too";
  const std::optional<Session> row = db_->open_backend()->load_one(late.session.id);
  ASSERT_TRUE(row.has_value());
  EXPECT_EQ(row->last_seen_at, clock_.now());
}

// A revoke whose delete failed is owed to storage and denied here; a lookup of the row still in
// storage must not bring it back.
TEST_P(SeveralInstances, ALookupNeverBringsBackASessionAFailedRevokeOwes) {
  SessionStore a = open_store(options());
  const NewSession doomed = a.create("alice");
  SessionStore b = SessionStore::open(db_->impatient_url(), options());
  ASSERT_TRUE(b.validate(doomed.token).has_value());
  {
    const auto block = db_->block_writes();
    EXPECT_THROW(b.revoke(doomed.token), pylon::Error);
  }
  ASSERT_TRUE(db_->has(doomed.session.id)) << "the delete is still owed";
  EXPECT_FALSE(b.validate(doomed.token).has_value());
  EXPECT_FALSE(b.find(doomed.session.id).has_value());
  b.create("bob");  // the next write pays what is owed
  EXPECT_FALSE(db_->has(doomed.session.id));
}

// A flood of random well-formed tokens costs at most the bound's worth of reads.
TEST_P(SeveralInstances, LookupsForMissesAreBoundedAndTheRestCounted) {
  StoreOptions bounded = options();
  bounded.miss_lookups_per_second = 5;
  SessionStore store = open_store(bounded);
  const auto started = std::chrono::steady_clock::now();
  constexpr int kTokens = 2000;
  for (int i = 0; i < kTokens; ++i) EXPECT_FALSE(store.validate(pylon::generate_token()));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const pylon::StoreStats stats = store.stats();
  EXPECT_EQ(stats.miss_lookups + stats.miss_lookups_refused, static_cast<std::uint64_t>(kTokens));
  // A burst of one second's worth, then the rate: however long the loop took.
  const auto bound = static_cast<std::uint64_t>(5 + std::ceil(5 * seconds));
  EXPECT_LE(stats.miss_lookups, bound) << "over " << seconds << " s";
  EXPECT_GE(stats.miss_lookups, 1U);
}

TEST_P(SeveralInstances, WithLookupsOffAMissIsRefusedWithoutReadingStorage) {
  SessionStore a = open_store(options());
  StoreOptions off = options();
  off.miss_lookups_per_second = 0;
  SessionStore b = open_unfollowing_store(off);
  const NewSession login = a.create("alice");
  EXPECT_FALSE(b.validate(login.token).has_value());
  EXPECT_EQ(b.stats().miss_lookups, 0U);
  EXPECT_EQ(b.stats().miss_lookups_refused, 1U);
}

// ------------------------------------------------------------------------------------------------
// The change feed: what one store writes, every other applies
// ------------------------------------------------------------------------------------------------

TEST_P(SeveralInstances, ARevokeOnOneStoreIsRefusedByAnotherAtItsNextLookup) {
  SessionStore a = open_store(options());
  SessionStore b = open_store(exact_options());
  const NewSession login = a.create("alice");
  const NewSession other = a.create("alice");
  const NewSession bob = a.create("bob");
  ASSERT_TRUE(b.validate(login.token).has_value()) << "B applied A's create";
  ASSERT_TRUE(b.validate(bob.token).has_value());
  EXPECT_EQ(b.stats().miss_lookups, 0U) << "B looks misses up not at all here";

  ASSERT_TRUE(a.revoke(login.token));
  EXPECT_FALSE(b.validate(login.token).has_value()) << "B accepted a token A revoked";
  EXPECT_TRUE(b.validate(other.token).has_value());

  EXPECT_EQ(a.revoke_user("alice"), 1U);
  EXPECT_FALSE(b.validate(other.token).has_value()) << "B accepted a session revoke_user ended";
  EXPECT_TRUE(b.validate(bob.token).has_value());
  EXPECT_EQ(cache_differences(b), "");
  EXPECT_TRUE(b.stats().following_changes);
  EXPECT_GT(b.stats().changes_applied, 0U);
}

TEST_P(SeveralInstances, ARotationOnOneStoreIsFollowedByAnotherReplayIncluded) {
  auto b_events = std::make_shared<EventLog>();
  StoreOptions b_options = exact_options();
  b_options.on_event = [b_events](const SessionEvent& event) { b_events->add(event); };
  SessionStore a = open_store(options());
  SessionStore b = open_store(b_options);
  const NewSession login = a.create("alice");
  ASSERT_TRUE(b.validate(login.token).has_value());

  const std::optional<NewSession> rotated = a.rotate(login.token);
  ASSERT_TRUE(rotated.has_value());
  const std::optional<Session> successor = b.validate(rotated->token);
  ASSERT_TRUE(successor.has_value()) << "B refused the token A's rotation handed out";
  EXPECT_EQ(successor->id, rotated->session.id);
  EXPECT_FALSE(b.validate(login.token).has_value()) << "B accepted the token rotated away";
  EXPECT_EQ(b_events->count(SessionEventType::kRotatedTokenReused), 1U)
      << "B did not recognise the replay of a token A rotated away";
  EXPECT_EQ(cache_differences(b), "");
}

TEST_P(SeveralInstances, DataUpdatesSlidesAndPurgesOnOneStoreReachAnother) {
  SessionStore a = open_store(options());
  SessionStore b = open_store(exact_options());
  const NewSession login = a.create("alice");
  const NewSession doomed = a.create("bob");
  ASSERT_TRUE(a.update_data(login.token, "cart=[book]").has_value());
  std::optional<Session> seen = b.find(login.session.id);
  ASSERT_TRUE(seen.has_value());
  EXPECT_EQ(seen->data, "cart=[book]");

  clock_.advance(61);  // past the touch interval: A's next validate writes a slide
  const std::optional<Session> slid = a.validate(login.token);
  ASSERT_TRUE(slid.has_value());
  seen = b.find(login.session.id);
  ASSERT_TRUE(seen.has_value());
  EXPECT_EQ(seen->expires_at, slid->expires_at) << "B kept the expiry from before A's slide";
  EXPECT_EQ(seen->last_seen_at, clock_.now());

  clock_.advance(std::int64_t{2} * 3600);  // both expire; A purges them
  EXPECT_EQ(a.purge_expired(), 2U);
  EXPECT_FALSE(b.find(doomed.session.id).has_value());
  EXPECT_EQ(b.size(), 0U) << "B kept rows A's purge deleted";
}

// A write that rolls back logs nothing: the feed changes no cache for it.
TEST_P(SeveralInstances, ARolledBackWriteChangesNoCache) {
  SessionStore a = open_store(options());
  SessionStore b = open_store(exact_options());
  const NewSession login = a.create("alice");
  ASSERT_TRUE(b.validate(login.token).has_value());
  const std::uint64_t applied = b.stats().changes_applied;
  db_->exec("BEGIN; DELETE FROM _pylon_sessions WHERE id = '" + login.session.id +
            "'; UPDATE _pylon_sessions SET data = 'x'; ROLLBACK");
  EXPECT_TRUE(b.validate(login.token).has_value());
  EXPECT_EQ(b.stats().changes_applied, applied) << "B applied entries of a rolled-back write";
  EXPECT_EQ(cache_differences(b), "");
}

// A store that follows with the default interval, in the background: a revoke elsewhere is
// applied without any call on it.
TEST_P(SeveralInstances, TheBackgroundFeedAppliesRevokesWithoutALookup) {
  SessionStore a = open_store(options());
  StoreOptions background = options();
  background.miss_lookups_per_second = 0;
  SessionStore b = open_store(background);
  const NewSession login = a.create("alice");
  EXPECT_TRUE(eventually([&] { return b.size() == 1; })) << "B never applied A's create";
  ASSERT_TRUE(b.validate(login.token).has_value());
  ASSERT_TRUE(a.revoke(login.token));
  EXPECT_TRUE(eventually([&] { return b.size() == 0; })) << "B never applied A's revoke";
  EXPECT_FALSE(b.validate(login.token).has_value());
}

// A store whose place in the log was pruned reloads every session instead of applying a log with
// a hole in it: the revoke it missed is honoured.
TEST_P(SeveralInstances, AStoreWhosePlaceWasPrunedReloads) {
  SessionStore a = open_store(options());
  SessionStore b = open_store(exact_options());
  const NewSession kept = a.create("alice");
  const NewSession missed = a.create("bob");
  ASSERT_TRUE(b.validate(missed.token).has_value());
  // Pruned as a long outage of B's would leave it: the revoke's entry gone before B read it.
  ASSERT_TRUE(a.revoke(missed.token));
  db_->exec(
      "UPDATE _pylon_change_log_state SET pruned_through = "
      "(SELECT max(position) FROM _pylon_change_log)");
  db_->exec(
      "DELETE FROM _pylon_change_log WHERE position <= "
      "(SELECT pruned_through FROM _pylon_change_log_state)");
  EXPECT_FALSE(b.validate(missed.token).has_value()) << "B applied a log with a hole in it";
  EXPECT_TRUE(b.validate(kept.token).has_value());
  EXPECT_EQ(b.stats().change_feed_reloads, 1U);
  EXPECT_EQ(cache_differences(b), "");
}

// The log does not grow without end: rows older than the retention are pruned by the feeds.
// (SQLite keeps the newest entry, whatever its age: its next position is the largest plus one.)
TEST_P(SeveralInstances, TheFeedPrunesEntriesOlderThanTheRetention) {
  SessionStore a = open_store(options());
  for (int i = 0; i < 3; ++i) a.create("alice");
  ASSERT_GE(db_->query_int("SELECT count(*) FROM _pylon_change_log"), 3);
  // Aged by hand: the shortest retention is a minute, and tests do not sleep that long.
  db_->exec("UPDATE _pylon_change_log SET logged_at = logged_at - 7200");
  StoreOptions pruning = exact_options();
  pruning.change_log_retention = std::chrono::seconds(60);  // the shortest
  SessionStore b = open_store(pruning);
  // A feed prunes first as it starts, then every quarter of the retention.
  b.validate(pylon::generate_token());  // interval 0: each lookup runs the feed
  EXPECT_LE(db_->query_int("SELECT count(*) FROM _pylon_change_log"), 1)
      << "the aged entries were not pruned";
  EXPECT_GT(db_->query_int("SELECT pruned_through FROM _pylon_change_log_state"), 0);
  // Pruned positions are never handed out again: the next write is logged after them, and a
  // store that follows the log sees it.
  const std::int64_t pruned = db_->query_int("SELECT pruned_through FROM _pylon_change_log_state");
  const pylon::NewSession later = a.create("bob");
  EXPECT_GT(db_->query_int("SELECT max(position) FROM _pylon_change_log"), pruned);
  EXPECT_TRUE(b.validate(later.token).has_value());
  EXPECT_EQ(cache_differences(b), "");
}

// No divergence: three stores write in any interleaving (from three threads); once they are
// quiet, every cache equals storage row for row.
TEST_P(SeveralInstances, ThreeStoresWritingAtOnceEndWithCachesEqualToStorage) {
  std::array<std::optional<SessionStore>, 3> stores;
  for (auto& store : stores) store.emplace(open_store(exact_options()));
  std::array<std::thread, 3> writers;
  for (std::size_t w = 0; w < writers.size(); ++w) {
    writers.at(w) = std::thread(
        [&, w] { write_at_random(*stores.at(w), static_cast<std::uint32_t>(w + 1), 60, 4); });
  }
  for (std::thread& writer : writers) writer.join();
  for (std::size_t s = 0; s < stores.size(); ++s) {
    stores.at(s)->validate(pylon::generate_token());  // a lookup: reads the log first
    EXPECT_EQ(cache_differences(*stores.at(s)), "") << "store " << s;
  }
}

// Real processes: two children write (creates, revokes, rotations, data updates, revoke_user)
// while this process's store, following in the background, serves; once they exit, its cache
// equals storage. A session a child created validates here at once (by lookup or by the feed).
TEST_P(SeveralInstances, TwoOtherProcessesWritingAreFollowedHere) {
  if (const std::optional<std::string> url = from_environment(kChildUrlVariable)) {
    const std::uint32_t seed =
        static_cast<std::uint32_t>(std::stoul(from_environment(kChildSeedVariable).value_or("1")));
    SessionStore store = SessionStore::open(*url, options());
    write_at_random(store, seed, 80, 5);
    // The last session, kept: the parent validates it.
    std::cout << "TOKEN " << store.create("last-" + std::to_string(seed)).token << std::endl;
    return;
  }

  StoreOptions here_options = options();
  here_options.miss_lookups_per_second = 0;  // the feed alone
  SessionStore here = open_store(here_options);
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  ASSERT_NE(info, nullptr);
  const std::string filter =
      std::string("--gtest_filter=") + info->test_suite_name() + "." + info->name();
  pylon::test::TempDir logs;
  std::array<pid_t, 2> children{};
  std::array<std::string, 2> log_paths;
  // NOLINTNEXTLINE(concurrency-mt-unsafe): the store's threads do not read the environment
  ASSERT_EQ(::setenv(kChildUrlVariable, db_->url().c_str(), 1), 0);
  for (std::size_t c = 0; c < children.size(); ++c) {
    // NOLINTNEXTLINE(concurrency-mt-unsafe): as above
    ASSERT_EQ(::setenv(kChildSeedVariable, std::to_string(c + 7).c_str(), 1), 0);
    log_paths.at(c) = logs.file("child-" + std::to_string(c) + ".log");
    children.at(c) = pylon::test::spawn({"/proc/self/exe", filter}, log_paths.at(c));
  }
  ::unsetenv(kChildUrlVariable);   // NOLINT(concurrency-mt-unsafe): as above
  ::unsetenv(kChildSeedVariable);  // NOLINT(concurrency-mt-unsafe): as above
  for (std::size_t c = 0; c < children.size(); ++c) {
    ASSERT_EQ(pylon::test::wait_for(children.at(c)), 0)
        << "child " << c << " failed; its output:\n"
        << pylon::test::read_file_bytes(log_paths.at(c));
    const std::string output = pylon::test::read_file_bytes(log_paths.at(c));
    const std::size_t at = output.find("TOKEN ");
    ASSERT_NE(at, std::string::npos) << output;
    const std::string token = output.substr(at + 6, output.find('\n', at) - at - 6);
    EXPECT_TRUE(eventually([&] { return here.validate(token).has_value(); }))
        << "a session child " << c << " created never validated here";
  }
  EXPECT_TRUE(eventually([&] { return cache_differences(here).empty(); }))
      << "this process's cache never caught up:" << cache_differences(here);
}

#ifdef PYLON_SESSIONCTL_PATH
// An operator signs a user out everywhere with sessionctl while the application runs: the
// running store (following in the background, no lookups) stops accepting the user's tokens.
TEST_P(SeveralInstances, SessionctlRevokeUserIsHonouredByARunningStore) {
  StoreOptions following = options();
  following.miss_lookups_per_second = 0;
  SessionStore running = open_store(following);
  const NewSession phone = running.create("alice");
  const NewSession laptop = running.create("alice");
  const NewSession bob = running.create("bob");
  ASSERT_EQ(
      pylon::test::run_quietly({PYLON_SESSIONCTL_PATH, "--db", db_->url(), "revoke-user", "alice"}),
      0);
  EXPECT_TRUE(eventually([&] {
    return !running.validate(phone.token).has_value() &&
           !running.validate(laptop.token).has_value();
  })) << "the running store still accepts a session sessionctl revoked";
  EXPECT_TRUE(running.validate(bob.token).has_value());
}
#endif

}  // namespace

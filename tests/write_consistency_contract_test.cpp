// Every write changes exactly what storage changed, proved on every backend from one
// parameterised suite (parameters "sqlite" and "postgres", a fresh database per test), mostly
// with two SessionStores on one database, since the point is two writers:
//   1. a slide never carries a stale cached row over another store's update_data(), and two
//      stores sliding in either order never move an expiry back;
//   2. rotate() builds the successor from the row storage holds;
//   3. a create committed by another store between a bulk revoke's decision and its DELETE
//      (made deterministic by a backend decorator that runs it from inside remove_matching) is
//      deleted, counted and reported;
//   4. eight threads creating and bulk-revoking on one store leave the cache equal to storage;
//   5. a failed revoke_user's retry repeats the filter, so another store's session goes too;
//   6. the per-user cap is a storage fact: two stores, two threads, two processes, creation
//      order within one second, and a failed create at the cap that evicts nothing;
//   7. rotation survives a restart and reaches other stores (kRotatedTokenReused), is never a
//      session, and its tombstone is purged when the session would have expired;
//   8. rotation_grace with a ManualClock;
//   9. the backend calls themselves: touch, update_data, insert_new, rotate.
// Nothing sleeps for timing and nothing asserts how long anything took.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "session_backend.hpp"
#include "support/forwarding_backend.hpp"
#include "support/process.hpp"
#include "support/test_database.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::CreateOptions;
using pylon::NewSession;
using pylon::RemovedSession;
using pylon::RotatedId;
using pylon::Session;
using pylon::SessionBackend;
using pylon::SessionEvent;
using pylon::SessionEventType;
using pylon::SessionFilter;
using pylon::SessionStore;
using pylon::StoreOptions;
using pylon::test::make_session;
using pylon::test::ManualClock;
using pylon::test::same_session;
using pylon::test::TestDatabase;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;
using ::testing::UnorderedElementsAreArray;

constexpr std::int64_t kStart = 1'700'000'000;
constexpr std::int64_t kHour = 3600;
constexpr const char* kCart = "cart=[book,laptop]";
// Set in the environment of the child processes of CapOfTwoHoldsAcrossTwoProcesses: the URL of
// the database they create sessions in.
constexpr const char* kChildUrlVariable = "PYLON_ONE_TRUTH_CHILD_URL";

std::vector<std::string> ids_of(const std::vector<Session>& sessions) {
  std::vector<std::string> ids;
  ids.reserve(sessions.size());
  for (const Session& session : sessions) ids.push_back(session.id);
  return ids;
}

// The URL a parent process handed this one, when it runs as a child of a two-process test.
std::optional<std::string> child_url() {
  const char* url = std::getenv(kChildUrlVariable);  // NOLINT(concurrency-mt-unsafe): no setenv
  if (url == nullptr || *url == '\0') return std::nullopt;
  return std::string(url);
}

// Every event a store delivered, from whichever thread delivered it.
class EventLog {
 public:
  void add(const SessionEvent& event) {
    const std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(event);
  }
  std::vector<SessionEvent> of(SessionEventType type) {
    const std::lock_guard<std::mutex> lock(mutex_);
    std::vector<SessionEvent> matching;
    for (const SessionEvent& event : events_) {
      if (event.type == type) matching.push_back(event);
    }
    return matching;
  }
  // The session ids of the events of one type.
  std::vector<std::string> ids_of(SessionEventType type) {
    std::vector<std::string> ids;
    for (const SessionEvent& event : of(type)) ids.push_back(event.session_id);
    return ids;
  }
  void clear() {
    const std::lock_guard<std::mutex> lock(mutex_);
    events_.clear();
  }

 private:
  std::mutex mutex_;
  std::vector<SessionEvent> events_;
};

// A backend that forwards every call to a real one, and can run a test's callback at the start
// of the next remove_matching(), before the DELETE: the moment a bulk revoke has been decided
// and storage has not yet been asked. A callback that writes through another store on the same
// database puts a commit exactly between the two.
class HookedBackend final : public pylon::test::ForwardingBackend {
 public:
  explicit HookedBackend(std::unique_ptr<SessionBackend> inner)
      : ForwardingBackend(std::move(inner)) {}

  // Runs `hook` once, in the next remove_matching().
  void before_next_remove_matching(std::function<void()> hook) {
    const std::lock_guard<std::mutex> lock(mutex_);
    hook_ = std::move(hook);
  }
  [[nodiscard]] int hooks_run() const { return hooks_run_.load(); }

  std::vector<RemovedSession> remove_matching(const SessionFilter& filter) override {
    std::function<void()> hook;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      hook = std::exchange(hook_, nullptr);
    }
    if (hook) {
      hook();
      ++hooks_run_;
    }
    return ForwardingBackend::remove_matching(filter);
  }

 private:
  std::mutex mutex_;
  std::function<void()> hook_;  // guarded by mutex_
  std::atomic<int> hooks_run_{0};
};

class OneTruth : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (child_url()) return;  // a child process of a two-process test: the parent made the database
    ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &db_));
  }

  // The default durations (touch_interval 60 s, idle 1 h, absolute 24 h), the manual clock and
  // `log` (events_ unless given).
  [[nodiscard]] StoreOptions options(const std::shared_ptr<EventLog>& log = nullptr) const {
    StoreOptions options;
    options.clock = clock_.fn();
    options.on_event = [sink = log ? log : events_](const SessionEvent& event) {
      sink->add(event);
    };
    return options;
  }
  [[nodiscard]] SessionStore open_store() const { return open_store(options()); }
  [[nodiscard]] SessionStore open_store(const StoreOptions& options) const {
    return SessionStore::open(db_->url(), options);
  }
  // A store whose backend runs hooks (HookedBackend); `*hooked` points at that backend.
  [[nodiscard]] SessionStore open_hooked_store(const StoreOptions& options,
                                               HookedBackend** hooked) const {
    auto backend = std::make_unique<HookedBackend>(db_->open_backend());
    *hooked = backend.get();
    return SessionStore(std::move(backend), options);
  }

  // What storage holds, read through a backend of its own.
  [[nodiscard]] std::optional<Session> stored(const std::string& id) const {
    return db_->open_backend()->load_one(id);
  }
  [[nodiscard]] std::vector<Session> stored_rows() const { return db_->open_backend()->load_all(); }
  [[nodiscard]] std::vector<std::string> stored_ids_of(const std::string& user) const {
    std::vector<std::string> ids;
    for (const Session& row : stored_rows()) {
      if (row.user_id == user) ids.push_back(row.id);
    }
    return ids;
  }
  [[nodiscard]] std::int64_t rotated_rows() const {
    return db_->query_int("SELECT count(*) FROM _pylon_rotated_ids");
  }

  // Makes every DELETE of _pylon_sessions fail (inserts and updates still work), or with `false`
  // removes the trigger that does.
  void refuse_deletes(bool refuse) const {
    if (db_->is_postgres()) {
      db_->exec(refuse ? "CREATE FUNCTION one_truth_refuse_delete() RETURNS trigger "
                         "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'delete refused by the "
                         "test' USING ERRCODE = 'disk_full'; END $$; "
                         "CREATE TRIGGER one_truth_refuse_delete BEFORE DELETE ON _pylon_sessions "
                         "FOR EACH ROW EXECUTE FUNCTION one_truth_refuse_delete()"
                       : "DROP TRIGGER one_truth_refuse_delete ON _pylon_sessions; "
                         "DROP FUNCTION one_truth_refuse_delete()");
      return;
    }
    db_->exec(refuse ? "CREATE TRIGGER one_truth_refuse_delete BEFORE DELETE ON _pylon_sessions "
                       "BEGIN SELECT RAISE(ABORT, 'delete refused by the test'); END"
                     : "DROP TRIGGER one_truth_refuse_delete");
  }

  // The cache of `store` equals storage for `user`: every session list_user() gives is stored,
  // and every stored row of the user is found by find() and listed.
  void expect_cache_equals_storage(SessionStore& store, const std::string& user) const {
    const std::vector<std::string> in_storage = stored_ids_of(user);
    const std::vector<std::string> listed = ids_of(store.list_user(user));
    EXPECT_THAT(listed, UnorderedElementsAreArray(in_storage)) << "cache == storage";
    for (const std::string& id : listed) EXPECT_TRUE(db_->has(id)) << "cached, not stored: " << id;
    for (const std::string& id : in_storage) {
      EXPECT_TRUE(store.find(id).has_value()) << "stored, not found by find(): " << id;
    }
  }

  std::unique_ptr<TestDatabase> db_;
  ManualClock clock_{kStart};
  std::shared_ptr<EventLog> events_ = std::make_shared<EventLog>();
};

INSTANTIATE_TEST_SUITE_P(Backends, OneTruth, ::testing::ValuesIn(pylon::test::contract_backends()),
                         pylon::test::backend_name);

// ------------------------------------------------------------------------------------------------
// 1. No lost update: a slide writes only last_seen_at and expires_at
// ------------------------------------------------------------------------------------------------

TEST_P(OneTruth, ASlideOnAStaleStoreKeepsTheDataAnotherStoreUpdated) {
  SessionStore a = open_store();
  const NewSession login = a.create("alice");
  SessionStore b = open_store();  // caches the session before the update: stale from now on

  const std::optional<Session> updated = a.update_data(login.token, kCart);
  ASSERT_TRUE(updated.has_value());
  EXPECT_EQ(updated->data, kCart);
  clock_.advance(61);  // past touch_interval: B's validate() writes a slide

  const std::optional<Session> seen_by_b = b.validate(login.token);
  ASSERT_TRUE(seen_by_b.has_value());
  EXPECT_EQ(seen_by_b->data, kCart) << "B returned its stale cached data";
  EXPECT_EQ(seen_by_b->last_seen_at, kStart + 61) << "B's validate() did not slide";

  const std::optional<Session> in_storage = stored(login.session.id);
  ASSERT_TRUE(in_storage.has_value());
  EXPECT_EQ(in_storage->data, kCart) << "B's slide wrote its stale data over A's update";
  EXPECT_EQ(in_storage->last_seen_at, kStart + 61);
  EXPECT_EQ(in_storage->expires_at, kStart + 61 + kHour);
  EXPECT_TRUE(same_session(*in_storage, *seen_by_b)) << "B returns the row storage holds";

  const std::optional<Session> seen_by_a = a.find(login.session.id);
  ASSERT_TRUE(seen_by_a.has_value());
  EXPECT_EQ(seen_by_a->data, in_storage->data) << "A's cache disagrees with storage";
  // A's own slide brings back the row storage holds, B's slide included.
  clock_.advance(61);
  const std::optional<Session> slid_by_a = a.validate(login.token);
  ASSERT_TRUE(slid_by_a.has_value());
  const std::optional<Session> after_a = stored(login.session.id);
  ASSERT_TRUE(after_a.has_value());
  EXPECT_EQ(after_a->data, kCart);
  EXPECT_EQ(after_a->last_seen_at, kStart + 122);
  EXPECT_TRUE(same_session(*after_a, *slid_by_a));
  const std::optional<Session> cached_by_a = a.find(login.session.id);
  ASSERT_TRUE(cached_by_a.has_value());
  EXPECT_TRUE(same_session(*after_a, *cached_by_a)) << "A's cache == storage";
}

TEST_P(OneTruth, TwoStoresSlidingInEitherOrderNeverMoveTheExpiryBack) {
  ManualClock later(kStart);
  ManualClock earlier(kStart);
  StoreOptions a_options = options();
  a_options.clock = later.fn();
  StoreOptions b_options = options();
  b_options.clock = earlier.fn();
  SessionStore a = open_store(a_options);
  const NewSession first = a.create("alice");
  const NewSession second = a.create("alice");
  SessionStore b = open_store(b_options);
  later.advance(200);
  earlier.advance(100);  // B's clock lags A's: its slide computes an earlier expiry

  // The later slide first, then the earlier one: storage keeps the later values.
  ASSERT_TRUE(a.validate(first.token).has_value());
  const std::optional<Session> b_first = b.validate(first.token);
  ASSERT_TRUE(b_first.has_value());
  std::optional<Session> row = stored(first.session.id);
  ASSERT_TRUE(row.has_value());
  EXPECT_EQ(row->last_seen_at, kStart + 200) << "B's slide moved last_seen_at back";
  EXPECT_EQ(row->expires_at, kStart + 200 + kHour) << "B's slide moved expires_at back";
  EXPECT_EQ(b_first->expires_at, row->expires_at) << "B returns what storage holds";

  // The earlier slide first, then the later one: storage ends with the later values.
  const std::optional<Session> b_second = b.validate(second.token);
  ASSERT_TRUE(b_second.has_value());
  row = stored(second.session.id);
  ASSERT_TRUE(row.has_value());
  EXPECT_EQ(row->expires_at, kStart + 100 + kHour);
  const std::optional<Session> a_second = a.validate(second.token);
  ASSERT_TRUE(a_second.has_value());
  row = stored(second.session.id);
  ASSERT_TRUE(row.has_value());
  EXPECT_EQ(row->last_seen_at, kStart + 200);
  EXPECT_EQ(row->expires_at, kStart + 200 + kHour);
  EXPECT_EQ(a_second->expires_at, row->expires_at);
}

// ------------------------------------------------------------------------------------------------
// 2. rotate() builds the successor from storage
// ------------------------------------------------------------------------------------------------

TEST_P(OneTruth, RotateOnAStaleStoreCarriesTheDataAnotherStoreUpdated) {
  SessionStore a = open_store();
  CreateOptions where;
  where.device = "Firefox on Linux";
  where.data = "cart=[]";
  const NewSession login = a.create("alice", where);
  SessionStore b = open_store();
  ASSERT_TRUE(a.update_data(login.token, kCart).has_value());

  const std::optional<NewSession> rotated = b.rotate(login.token);
  ASSERT_TRUE(rotated.has_value());
  EXPECT_EQ(rotated->session.data, kCart) << "the successor was built from B's stale cache";
  EXPECT_EQ(rotated->session.device, "Firefox on Linux");
  EXPECT_EQ(rotated->session.created_at, login.session.created_at);
  const std::optional<Session> successor = stored(rotated->session.id);
  ASSERT_TRUE(successor.has_value());
  EXPECT_EQ(successor->data, kCart);
  EXPECT_TRUE(same_session(*successor, rotated->session));
  EXPECT_FALSE(db_->has(login.session.id));
  EXPECT_THAT(stored_ids_of("alice"), ElementsAre(rotated->session.id));
}

// ------------------------------------------------------------------------------------------------
// 3. Ghost sessions, deterministic: a create committed between a bulk revoke's decision and its
//    DELETE
// ------------------------------------------------------------------------------------------------

// Each case: store A (hooked) holds two sessions of alice; in the middle of A's bulk revoke,
// store B commits a third session that the revoke's filter matches. It must be gone from
// storage, counted, and reported as revoked by A.
TEST_P(OneTruth, RevokeOthersDeletesASessionCreatedBetweenItsDecisionAndItsDelete) {
  HookedBackend* hooked = nullptr;
  SessionStore a = open_hooked_store(options(), &hooked);
  SessionStore b = open_store();
  const NewSession kept = a.create("alice");
  const NewSession other = a.create("alice");
  const NewSession bob = a.create("bob");
  std::optional<NewSession> ghost;
  hooked->before_next_remove_matching([&] { ghost = b.create("alice"); });

  const std::size_t revoked = a.revoke_others(kept.token);

  ASSERT_EQ(hooked->hooks_run(), 1);
  ASSERT_TRUE(ghost.has_value());
  EXPECT_EQ(revoked, 2U) << "the count leaves out the session created meanwhile";
  EXPECT_THAT(stored_ids_of("alice"), ElementsAre(kept.session.id));
  EXPECT_FALSE(db_->has(ghost->session.id));
  EXPECT_TRUE(db_->has(bob.session.id));
  EXPECT_FALSE(a.validate(ghost->token).has_value());
  EXPECT_FALSE(a.validate(other.token).has_value());
  EXPECT_TRUE(a.validate(kept.token).has_value());
  EXPECT_THAT(events_->ids_of(SessionEventType::kRevoked),
              UnorderedElementsAre(other.session.id, ghost->session.id));
  expect_cache_equals_storage(a, "alice");
}

TEST_P(OneTruth, RevokeUserDeletesASessionCreatedBetweenItsDecisionAndItsDelete) {
  HookedBackend* hooked = nullptr;
  SessionStore a = open_hooked_store(options(), &hooked);
  SessionStore b = open_store();
  const NewSession first = a.create("alice");
  const NewSession second = a.create("alice");
  const NewSession bob = a.create("bob");
  std::optional<NewSession> ghost;
  hooked->before_next_remove_matching([&] { ghost = b.create("alice"); });

  const std::size_t revoked = a.revoke_user("alice");

  ASSERT_EQ(hooked->hooks_run(), 1);
  ASSERT_TRUE(ghost.has_value());
  EXPECT_EQ(revoked, 3U);
  EXPECT_THAT(stored_ids_of("alice"), IsEmpty());
  EXPECT_TRUE(db_->has(bob.session.id));
  EXPECT_FALSE(a.validate(ghost->token).has_value());
  EXPECT_FALSE(a.validate(first.token).has_value());
  EXPECT_FALSE(a.validate(second.token).has_value());
  EXPECT_THAT(events_->ids_of(SessionEventType::kRevoked),
              UnorderedElementsAre(first.session.id, second.session.id, ghost->session.id));
  expect_cache_equals_storage(a, "alice");
}

TEST_P(OneTruth, TenantRevokeUserOnAScopedStoreDeletesASessionCreatedMeanwhile) {
  StoreOptions scoped = options();
  scoped.tenant_id = "acme";
  HookedBackend* hooked = nullptr;
  SessionStore a = open_hooked_store(scoped, &hooked);
  SessionStore b = open_store(scoped);
  SessionStore elsewhere = open_store();  // unscoped: writes another tenant's session
  CreateOptions other_tenant;
  other_tenant.tenant_id = "globex";
  const NewSession globex = elsewhere.create("alice", other_tenant);
  const NewSession first = a.create("alice");
  const NewSession second = a.create("alice");
  std::optional<NewSession> ghost;
  hooked->before_next_remove_matching([&] { ghost = b.create("alice"); });

  const std::size_t revoked = a.revoke_user("alice", "acme");

  ASSERT_EQ(hooked->hooks_run(), 1);
  ASSERT_TRUE(ghost.has_value());
  EXPECT_EQ(ghost->session.tenant_id, "acme");
  EXPECT_EQ(revoked, 3U);
  EXPECT_THAT(stored_ids_of("alice"), ElementsAre(globex.session.id)) << "other tenant kept";
  EXPECT_FALSE(a.validate(ghost->token).has_value());
  EXPECT_FALSE(a.validate(first.token).has_value());
  EXPECT_FALSE(a.validate(second.token).has_value());
  EXPECT_TRUE(elsewhere.validate(globex.token).has_value());
  EXPECT_THAT(events_->ids_of(SessionEventType::kRevoked),
              UnorderedElementsAre(first.session.id, second.session.id, ghost->session.id));
  EXPECT_THAT(a.list_user("alice"), IsEmpty());
  EXPECT_FALSE(a.find(ghost->session.id).has_value());
}

TEST_P(OneTruth, LogoutBySidDeletesASessionOfThatSidCreatedMeanwhile) {
  HookedBackend* hooked = nullptr;
  SessionStore a = open_hooked_store(options(), &hooked);
  SessionStore b = open_store();
  CreateOptions sid1;
  sid1.idp_session_id = "sid-1";
  CreateOptions sid2;
  sid2.idp_session_id = "sid-2";
  const NewSession of_sid1 = a.create("alice", sid1);
  const NewSession of_sid2 = a.create("alice", sid2);
  std::optional<NewSession> ghost;
  hooked->before_next_remove_matching([&] { ghost = b.create("alice", sid1); });

  const std::size_t revoked = a.logout_by_claims("sid-1", std::nullopt);

  ASSERT_EQ(hooked->hooks_run(), 1);
  ASSERT_TRUE(ghost.has_value());
  EXPECT_EQ(revoked, 2U);
  EXPECT_THAT(stored_ids_of("alice"), ElementsAre(of_sid2.session.id));
  EXPECT_FALSE(a.validate(ghost->token).has_value());
  EXPECT_FALSE(a.validate(of_sid1.token).has_value());
  EXPECT_TRUE(a.validate(of_sid2.token).has_value());
  EXPECT_THAT(events_->ids_of(SessionEventType::kRevoked),
              UnorderedElementsAre(of_sid1.session.id, ghost->session.id));
  expect_cache_equals_storage(a, "alice");
}

// ------------------------------------------------------------------------------------------------
// 4. Eight threads on one store: the cache equals storage afterwards
// ------------------------------------------------------------------------------------------------

// What the threads of the eight-thread test share.
struct RaceLog {
  std::mutex mutex;
  std::vector<NewSession> created;    // guarded by mutex
  std::vector<std::string> failures;  // guarded by mutex
  std::atomic<std::size_t> revoked{0};

  void fail(const std::exception& error) {
    const std::lock_guard<std::mutex> lock(mutex);
    failures.emplace_back(error.what());
  }
  // The token of the newest session created, "" before the first.
  std::string newest_token() {
    const std::lock_guard<std::mutex> lock(mutex);
    return created.empty() ? std::string() : created.back().token;
  }
};

// `rounds` creates for alice, alternating between the identity provider sessions sid-0 and sid-1.
void create_sessions(SessionStore& store, int thread, int rounds, RaceLog& log) {
  for (int i = 0; i < rounds; ++i) {
    try {
      CreateOptions where;
      where.idp_session_id = "sid-" + std::to_string((thread + i) % 2);
      NewSession login = store.create("alice", where);
      const std::lock_guard<std::mutex> lock(log.mutex);
      log.created.push_back(std::move(login));
    } catch (const std::exception& error) {
      log.fail(error);
    }
  }
}

// `rounds` bulk revokes of alice's sessions, cycling through every kind.
void bulk_revoke(SessionStore& store, int thread, int rounds, RaceLog& log) {
  for (int i = 0; i < rounds; ++i) {
    try {
      switch ((thread + i) % 4) {
        case 0: {
          const std::string token = log.newest_token();
          if (!token.empty()) log.revoked += store.revoke_others(token);
          break;
        }
        case 1:
          log.revoked += store.revoke_user("alice");
          break;
        case 2:
          log.revoked += store.revoke_user("alice", "acme");
          break;
        default:
          log.revoked += store.logout_by_claims("sid-0", std::nullopt);
          break;
      }
    } catch (const std::exception& error) {
      log.fail(error);
    }
  }
}

TEST_P(OneTruth, EightThreadsCreatingAndBulkRevokingLeaveTheCacheEqualToStorage) {
  constexpr int kRounds = 20;
  constexpr int kCreators = 4;
  constexpr int kRevokers = 4;
  StoreOptions scoped = options();
  scoped.tenant_id = "acme";
  SessionStore store = open_store(scoped);

  RaceLog log;
  std::vector<std::thread> threads;
  threads.reserve(std::size_t{kCreators} + std::size_t{kRevokers});
  for (int t = 0; t < kCreators; ++t) {
    threads.emplace_back([&store, &log, t] { create_sessions(store, t, kRounds, log); });
  }
  for (int t = 0; t < kRevokers; ++t) {
    threads.emplace_back([&store, &log, t] { bulk_revoke(store, t, kRounds, log); });
  }
  for (std::thread& thread : threads) thread.join();
  const std::vector<NewSession>& created = log.created;
  const std::size_t revoked_total = log.revoked.load();
  const std::vector<std::string>& failures = log.failures;

  EXPECT_THAT(failures, IsEmpty());
  ASSERT_EQ(created.size(), std::size_t{kCreators} * std::size_t{kRounds});
  expect_cache_equals_storage(store, "alice");
  const std::vector<std::string> in_storage = stored_ids_of("alice");
  EXPECT_EQ(store.size(), in_storage.size());
  EXPECT_EQ(store.stats().sessions, in_storage.size());
  // Every delete counted exactly the rows it removed: each create ends either stored or counted
  // once.
  EXPECT_EQ(revoked_total + in_storage.size(), created.size());
  EXPECT_EQ(events_->of(SessionEventType::kRevoked).size(), revoked_total);
  // No ghost: a token validates on the store exactly when storage holds its session.
  for (const NewSession& login : created) {
    EXPECT_EQ(store.validate(login.token).has_value(), db_->has(login.session.id))
        << login.session.id;
  }
}

// ------------------------------------------------------------------------------------------------
// 5. A fail-closed revoke_user retries the filter, not a list of ids
// ------------------------------------------------------------------------------------------------

TEST_P(OneTruth, AFailedRevokeUserRetriesTheWholeUserIncludingAnotherStoresSession) {
  SessionStore a = open_store();
  SessionStore b = open_store();
  const NewSession first = a.create("alice");
  const NewSession second = a.create("alice");
  const NewSession bob = a.create("bob");

  refuse_deletes(true);
  EXPECT_THROW(a.revoke_user("alice"), pylon::Error);
  // Denied in A at once, though storage still holds them.
  EXPECT_EQ(db_->count("user_id = 'alice'"), 2);
  EXPECT_FALSE(a.validate(first.token).has_value());
  EXPECT_FALSE(a.validate(second.token).has_value());
  EXPECT_FALSE(a.find(first.session.id).has_value());
  EXPECT_THAT(a.list_user("alice"), IsEmpty());
  EXPECT_TRUE(a.validate(bob.token).has_value()) << "another user is not denied";
  // Another store creates a session of the user while A's delete is pending.
  const NewSession from_b = b.create("alice");
  EXPECT_TRUE(db_->has(from_b.session.id));
  // A's next write retries first; while storage still refuses, it fails and stores nothing.
  EXPECT_THROW(a.create("carol"), pylon::Error);
  EXPECT_EQ(db_->count("user_id = 'carol'"), 0);
  refuse_deletes(false);

  const NewSession dave = a.create("dave");  // the next write: the retry runs first
  EXPECT_TRUE(db_->has(dave.session.id));
  EXPECT_THAT(stored_ids_of("alice"), IsEmpty())
      << "the retry deleted only the ids A knew, not the whole user";
  EXPECT_FALSE(db_->has(from_b.session.id));
  EXPECT_TRUE(db_->has(bob.session.id));
  EXPECT_FALSE(a.validate(first.token).has_value());
  EXPECT_THAT(a.list_user("alice"), IsEmpty());
  expect_cache_equals_storage(a, "bob");
}

// ------------------------------------------------------------------------------------------------
// 6. The cap is a storage fact
// ------------------------------------------------------------------------------------------------

TEST_P(OneTruth, TwoStoresCreatingConcurrentlyAtACapOfTwoNeverLeaveMoreThanTwo) {
  constexpr int kRounds = 25;
  StoreOptions capped = options();
  capped.max_sessions_per_user = 2;
  SessionStore a = open_store(capped);
  SessionStore b = open_store(capped);

  std::atomic<bool> done{false};
  std::int64_t most_seen = 0;
  std::string monitor_error;
  std::thread monitor([&] {  // reads storage over and over while the creates run
    try {
      while (!done) most_seen = std::max(most_seen, db_->count("user_id = 'alice'"));
    } catch (const std::exception& error) {
      monitor_error = error.what();
    }
  });
  std::vector<std::string> failures;
  std::vector<std::int64_t> counts_after_rounds;
  for (int round = 0; round < kRounds; ++round) {
    std::array<std::string, 2> errors;
    std::array<SessionStore*, 2> stores = {&a, &b};
    std::array<std::thread, 2> threads;
    for (std::size_t s = 0; s < threads.size(); ++s) {
      threads.at(s) = std::thread([&stores, &errors, s] {
        try {
          stores.at(s)->create("alice");
          stores.at(s)->create("alice");
        } catch (const std::exception& error) {
          errors.at(s) = error.what();
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
    for (const std::string& error : errors) {
      if (!error.empty()) failures.push_back(error);
    }
    counts_after_rounds.push_back(db_->count("user_id = 'alice'"));
  }
  done = true;
  monitor.join();

  EXPECT_THAT(failures, IsEmpty());
  EXPECT_EQ(monitor_error, "");
  EXPECT_LE(most_seen, 2) << "storage held more than the cap while the creates ran";
  EXPECT_THAT(counts_after_rounds, ::testing::Each(2)) << "rows of the user after each round";
  EXPECT_EQ(db_->count("user_id = 'alice'"), 2);
}

TEST_P(OneTruth, CreatesWithinOneSecondEvictInCreationOrderAcrossTwoStores) {
  StoreOptions capped = options();
  capped.max_sessions_per_user = 2;
  SessionStore a = open_store(capped);
  SessionStore b = open_store(capped);
  // The clock stays frozen: every session has the same created_at.
  std::vector<NewSession> created;
  for (int i = 0; i < 10; ++i) {
    SessionStore& store = i % 2 == 0 ? a : b;
    created.push_back(store.create("alice"));
    if (i == 0) continue;
    EXPECT_THAT(
        stored_ids_of("alice"),
        UnorderedElementsAre(created.at(created.size() - 2).session.id, created.back().session.id))
        << "after create " << i << ": not the oldest evicted";
  }
  // Each eviction was reported by the create that caused it, naming the evicted session.
  std::vector<std::string> expected_evicted;
  for (std::size_t i = 0; i + 2 < created.size(); ++i) {
    expected_evicted.push_back(created.at(i).session.id);
  }
  EXPECT_THAT(events_->ids_of(SessionEventType::kRevoked),
              UnorderedElementsAreArray(expected_evicted));

  // One store alone, the same.
  SessionStore c = open_store(capped);
  const NewSession c1 = c.create("carol");
  const NewSession c2 = c.create("carol");
  const NewSession c3 = c.create("carol");
  EXPECT_THAT(stored_ids_of("carol"), UnorderedElementsAre(c2.session.id, c3.session.id));
  EXPECT_THAT(ids_of(c.list_user("carol")), UnorderedElementsAre(c2.session.id, c3.session.id));
  const NewSession c4 = c.create("carol");
  EXPECT_THAT(stored_ids_of("carol"), UnorderedElementsAre(c3.session.id, c4.session.id));
  expect_cache_equals_storage(c, "carol");
}

TEST_P(OneTruth, AFailedCreateAtTheCapLeavesStorageExactlyAsItWas) {
  StoreOptions capped = options();
  capped.max_sessions_per_user = 2;
  SessionStore store = open_store(capped);
  const NewSession first = store.create("alice");
  const NewSession second = store.create("alice");
  const NewSession bob = store.create("bob");
  std::vector<Session> before = stored_rows();
  ASSERT_EQ(before.size(), 3U);

  db_->refuse_saves(true);
  EXPECT_THROW(store.create("alice"), pylon::Error);
  std::vector<Session> after = stored_rows();
  db_->refuse_saves(false);

  const auto by_id = [](const Session& x, const Session& y) { return x.id < y.id; };
  std::sort(before.begin(), before.end(), by_id);
  std::sort(after.begin(), after.end(), by_id);
  ASSERT_EQ(after.size(), before.size()) << "the failed create evicted or inserted a row";
  for (std::size_t i = 0; i < before.size(); ++i) {
    EXPECT_TRUE(same_session(before.at(i), after.at(i)));
  }
  EXPECT_THAT(events_->of(SessionEventType::kRevoked), IsEmpty()) << "an eviction was reported";
  EXPECT_THAT(ids_of(store.list_user("alice")),
              UnorderedElementsAre(first.session.id, second.session.id));
  EXPECT_TRUE(store.validate(first.token).has_value());
  EXPECT_TRUE(store.validate(bob.token).has_value());
}

// Two processes (this test program, re-executed with this test as its only filter and the
// database's URL in the environment) create sessions for one user at a cap of 2, started
// together; storage never holds more than 2 rows of the user.
TEST_P(OneTruth, CapOfTwoHoldsAcrossTwoProcesses) {
  constexpr int kCreatesPerProcess = 30;
  StoreOptions capped = options();
  capped.max_sessions_per_user = 2;
  if (const std::optional<std::string> url = child_url()) {
    // The child: open, wait for the parent's start (EOF on stdin), create.
    SessionStore store = SessionStore::open(*url, capped);
    char byte = 0;
    while (::read(STDIN_FILENO, &byte, 1) > 0) {
    }
    for (int i = 0; i < kCreatesPerProcess; ++i) ASSERT_NO_THROW(store.create("alice")) << i;
    return;
  }

  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  ASSERT_NE(info, nullptr);
  const std::string filter =
      std::string("--gtest_filter=") + info->test_suite_name() + "." + info->name();
  db_->open_backend();  // the schema exists before the children start, and the monitor reads it
  pylon::test::TempDir logs;
  std::array<int, 2> gate{};
  ASSERT_EQ(::pipe2(gate.data(), O_CLOEXEC), 0);  // children get only their stdin copy
  std::array<pid_t, 2> children{};
  std::array<std::string, 2> log_paths;
  // NOLINTNEXTLINE(concurrency-mt-unsafe): no other thread runs yet
  ASSERT_EQ(::setenv(kChildUrlVariable, db_->url().c_str(), 1), 0);
  for (std::size_t c = 0; c < children.size(); ++c) {
    log_paths.at(c) = logs.file("child-" + std::to_string(c) + ".log");
    children.at(c) = pylon::test::spawn({"/proc/self/exe", filter}, log_paths.at(c), gate[0], true);
  }
  ::unsetenv(kChildUrlVariable);  // NOLINT(concurrency-mt-unsafe): no other thread runs yet
  ::close(gate[0]);

  std::atomic<bool> done{false};
  std::int64_t most_seen = 0;
  std::string monitor_error;
  std::thread monitor([&] {
    try {
      while (!done) most_seen = std::max(most_seen, db_->count("user_id = 'alice'"));
    } catch (const std::exception& error) {
      monitor_error = error.what();
    }
  });
  ::close(gate[1]);  // EOF on both children's stdin: they start creating now
  for (std::size_t c = 0; c < children.size(); ++c) {
    EXPECT_EQ(pylon::test::wait_for(children.at(c)), 0)
        << "child " << c << " failed; its output:\n"
        << pylon::test::read_file_bytes(log_paths.at(c));
  }
  done = true;
  monitor.join();

  EXPECT_EQ(monitor_error, "");
  EXPECT_LE(most_seen, 2) << "storage held more than the cap while the processes created";
  EXPECT_EQ(db_->count("user_id = 'alice'"), 2);
}

// ------------------------------------------------------------------------------------------------
// 7. Rotation is a storage fact
// ------------------------------------------------------------------------------------------------

TEST_P(OneTruth, AReplayedRotatedTokenIsReportedAfterARestartAndOnAnotherStore) {
  std::optional<NewSession> rotated;
  NewSession login;
  std::shared_ptr<EventLog> b_events = std::make_shared<EventLog>();
  std::optional<SessionStore> b;
  {
    SessionStore a = open_store();
    login = a.create("alice");
    rotated = a.rotate(login.token);
    ASSERT_TRUE(rotated.has_value());
    b.emplace(open_store(options(b_events)));  // opened after the rotation
  }
  events_->clear();
  SessionStore a2 = open_store();  // A after a restart

  EXPECT_FALSE(a2.validate(login.token).has_value());
  std::vector<SessionEvent> reused = events_->of(SessionEventType::kRotatedTokenReused);
  ASSERT_EQ(reused.size(), 1U) << "no reuse event after a restart";
  EXPECT_EQ(reused.at(0).session_id, login.session.id);
  EXPECT_EQ(reused.at(0).replaced_by, rotated->session.id);
  EXPECT_EQ(reused.at(0).user_id, "alice");

  EXPECT_FALSE(b->validate(login.token).has_value());
  reused = b_events->of(SessionEventType::kRotatedTokenReused);
  ASSERT_EQ(reused.size(), 1U) << "no reuse event on a store opened after the rotation";
  EXPECT_EQ(reused.at(0).session_id, login.session.id);
  EXPECT_EQ(reused.at(0).replaced_by, rotated->session.id);

  // Not a session: not listed, not counted, not found.
  EXPECT_TRUE(a2.validate(rotated->token).has_value());
  EXPECT_THAT(ids_of(a2.list_user("alice")), ElementsAre(rotated->session.id));
  EXPECT_EQ(a2.size(), 1U);
  EXPECT_EQ(a2.stats().sessions, 1U);
  EXPECT_EQ(a2.stats().users, 1U);
  EXPECT_FALSE(a2.find(login.session.id).has_value());
  EXPECT_THAT(stored_ids_of("alice"), ElementsAre(rotated->session.id));
  const std::vector<pylon::test::SqlRow> tombstones =
      db_->query("SELECT id, replaced_by FROM _pylon_rotated_ids");
  ASSERT_EQ(tombstones.size(), 1U);
  EXPECT_EQ(tombstones.at(0).at(0), login.session.id);
  EXPECT_EQ(tombstones.at(0).at(1), rotated->session.id);

  // Past the session's hard cap, a purge removes the tombstone with the session.
  clock_.set(login.session.absolute_expires_at + 1);
  a2.purge_expired();
  EXPECT_EQ(rotated_rows(), 0) << "the tombstone outlived the session";
  EXPECT_EQ(db_->count(), 0);
}

TEST_P(OneTruth, ReplayingTheFirstTokenOfAChainNamesTheLastSuccessor) {
  NewSession first;
  std::optional<NewSession> second;
  std::optional<NewSession> third;
  {
    SessionStore a = open_store();
    first = a.create("alice");
    second = a.rotate(first.token);
    ASSERT_TRUE(second.has_value());
    third = a.rotate(second->token);
    ASSERT_TRUE(third.has_value());
    EXPECT_FALSE(a.validate(first.token).has_value());
    const std::vector<SessionEvent> reused = events_->of(SessionEventType::kRotatedTokenReused);
    ASSERT_EQ(reused.size(), 1U);
    EXPECT_EQ(reused.at(0).replaced_by, third->session.id) << "on the rotating store";
  }
  events_->clear();
  SessionStore restarted = open_store();
  EXPECT_FALSE(restarted.validate(first.token).has_value());
  EXPECT_FALSE(restarted.validate(second->token).has_value());
  const std::vector<SessionEvent> reused = events_->of(SessionEventType::kRotatedTokenReused);
  ASSERT_EQ(reused.size(), 2U);
  EXPECT_EQ(reused.at(0).session_id, first.session.id);
  EXPECT_EQ(reused.at(0).replaced_by, third->session.id) << "after a restart";
  EXPECT_EQ(reused.at(1).session_id, second->session.id);
  EXPECT_EQ(reused.at(1).replaced_by, third->session.id);
  EXPECT_TRUE(restarted.validate(third->token).has_value());
  EXPECT_EQ(rotated_rows(), 2);
}

// ------------------------------------------------------------------------------------------------
// 8. The grace window
// ------------------------------------------------------------------------------------------------

TEST_P(OneTruth, WithinTheGraceTheOldTokenIsTheSuccessorAndAfterItsUseIsReported) {
  EXPECT_EQ(StoreOptions{}.rotation_grace.count(), 0) << "the documented default";
  StoreOptions graced = options();
  graced.rotation_grace = std::chrono::seconds(30);
  SessionStore a = open_store(graced);
  const NewSession login = a.create("alice");
  const std::optional<NewSession> rotated = a.rotate(login.token);
  ASSERT_TRUE(rotated.has_value());
  std::shared_ptr<EventLog> b_events = std::make_shared<EventLog>();
  StoreOptions b_options = options(b_events);
  b_options.rotation_grace = std::chrono::seconds(30);
  SessionStore b = open_store(b_options);  // learns the rotation from storage

  std::optional<Session> in_grace = a.validate(login.token);
  ASSERT_TRUE(in_grace.has_value()) << "refused at once despite the grace";
  EXPECT_EQ(in_grace->id, rotated->session.id);
  clock_.advance(29);
  in_grace = a.validate(login.token);
  ASSERT_TRUE(in_grace.has_value()) << "refused 29 s after the rotation";
  EXPECT_EQ(in_grace->id, rotated->session.id);
  EXPECT_EQ(in_grace->user_id, "alice");
  const std::optional<Session> on_b = b.validate(login.token);
  ASSERT_TRUE(on_b.has_value()) << "another store ignores the grace";
  EXPECT_EQ(on_b->id, rotated->session.id);
  EXPECT_THAT(events_->of(SessionEventType::kRotatedTokenReused), IsEmpty());
  EXPECT_THAT(b_events->of(SessionEventType::kRotatedTokenReused), IsEmpty());
  EXPECT_THAT(ids_of(a.list_user("alice")), ElementsAre(rotated->session.id));

  clock_.advance(2);  // 31 s after the rotation
  EXPECT_FALSE(a.validate(login.token).has_value());
  std::vector<SessionEvent> reused = events_->of(SessionEventType::kRotatedTokenReused);
  ASSERT_EQ(reused.size(), 1U);
  EXPECT_EQ(reused.at(0).session_id, login.session.id);
  EXPECT_EQ(reused.at(0).replaced_by, rotated->session.id);
  EXPECT_FALSE(b.validate(login.token).has_value());
  EXPECT_EQ(b_events->of(SessionEventType::kRotatedTokenReused).size(), 1U);
  EXPECT_TRUE(a.validate(rotated->token).has_value());
}

TEST_P(OneTruth, WithoutAGraceTheOldTokenIsRefusedAtOnceAndReported) {
  SessionStore store = open_store();  // rotation_grace 0
  const NewSession login = store.create("alice");
  const std::optional<NewSession> rotated = store.rotate(login.token);
  ASSERT_TRUE(rotated.has_value());

  EXPECT_FALSE(store.validate(login.token).has_value());
  const std::vector<SessionEvent> reused = events_->of(SessionEventType::kRotatedTokenReused);
  ASSERT_EQ(reused.size(), 1U);
  EXPECT_EQ(reused.at(0).session_id, login.session.id);
  EXPECT_EQ(reused.at(0).replaced_by, rotated->session.id);
  EXPECT_TRUE(store.validate(rotated->token).has_value());
}

// ------------------------------------------------------------------------------------------------
// 9. The backend calls
// ------------------------------------------------------------------------------------------------

TEST_P(OneTruth, BackendTouchUpdatesOnlyItsTwoColumnsNeverBackAndNeverInserts) {
  std::unique_ptr<SessionBackend> backend = db_->open_backend();
  const Session missing = make_session("alice", 1);
  EXPECT_FALSE(backend->touch(missing.id, kStart + 100, kStart + 200).has_value());
  EXPECT_EQ(db_->count(), 0) << "touch() inserted a row";

  const Session row = make_session("alice", 2);
  backend->save(row);
  // Earlier values: nothing moves back.
  std::optional<Session> touched = backend->touch(row.id, row.last_seen_at - 5, row.expires_at - 5);
  ASSERT_TRUE(touched.has_value());
  EXPECT_TRUE(same_session(row, *touched));
  // Later values: exactly the two columns move.
  Session expected = row;
  expected.last_seen_at = row.last_seen_at + 100;
  expected.expires_at = row.expires_at + 100;
  touched = backend->touch(row.id, expected.last_seen_at, expected.expires_at);
  ASSERT_TRUE(touched.has_value());
  EXPECT_TRUE(same_session(expected, *touched));
  // Each column to the larger of the two, independently.
  expected.last_seen_at += 50;
  touched = backend->touch(row.id, expected.last_seen_at, expected.expires_at - 1000);
  ASSERT_TRUE(touched.has_value());
  EXPECT_TRUE(same_session(expected, *touched));
  const std::optional<Session> stored_row = backend->load_one(row.id);
  ASSERT_TRUE(stored_row.has_value());
  EXPECT_TRUE(same_session(expected, *stored_row));
  EXPECT_EQ(db_->count(), 1);
}

TEST_P(OneTruth, BackendUpdateDataUpdatesOnlyDataAndNeverInserts) {
  std::unique_ptr<SessionBackend> backend = db_->open_backend();
  const Session missing = make_session("alice", 1);
  EXPECT_FALSE(backend->update_data(missing.id, "x").has_value());
  EXPECT_EQ(db_->count(), 0) << "update_data() inserted a row";

  const Session row = make_session("alice", 2);
  backend->save(row);
  Session expected = row;
  expected.data = std::string("new\0bytes\xff", 10);
  const std::optional<Session> updated = backend->update_data(row.id, expected.data);
  ASSERT_TRUE(updated.has_value());
  EXPECT_TRUE(same_session(expected, *updated));
  const std::optional<Session> stored_row = backend->load_one(row.id);
  ASSERT_TRUE(stored_row.has_value());
  EXPECT_TRUE(same_session(expected, *stored_row));
}

TEST_P(OneTruth, BackendInsertNewEvictsTheOldestOfTheUserInTheTenantAndReturnsThem) {
  std::unique_ptr<SessionBackend> backend = db_->open_backend();
  // Same user, tenant and created_at: insertion order decides.
  Session a1 = make_session("alice", 1);
  Session a2 = make_session("alice", 1);
  Session a3 = make_session("alice", 1);
  EXPECT_THAT(backend->insert_new({a1, a2}, 2), IsEmpty());
  EXPECT_THAT(backend->insert_new({a3}, 2), ElementsAre(RemovedSession{a1.id, "alice"}));
  EXPECT_THAT(stored_ids_of("alice"), UnorderedElementsAre(a2.id, a3.id));
  // Another tenant of the user has a cap of its own.
  const Session other_tenant = make_session("alice", 2);
  EXPECT_THAT(backend->insert_new({other_tenant}, 2), IsEmpty());
  EXPECT_EQ(db_->count("user_id = 'alice'"), 3);
  // Within one batch, the earlier row is the older.
  const Session b1 = make_session("bob", 1);
  const Session b2 = make_session("bob", 1);
  EXPECT_THAT(backend->insert_new({b1, b2}, 1), ElementsAre(RemovedSession{b1.id, "bob"}));
  EXPECT_THAT(stored_ids_of("bob"), ElementsAre(b2.id));
  // created_at comes before insertion order.
  Session c_newer = make_session("carol", 1);
  c_newer.created_at += 100;
  Session c_older = make_session("carol", 1);
  Session c_newest = make_session("carol", 1);
  c_newest.created_at += 200;
  EXPECT_THAT(backend->insert_new({c_newer}, 2), IsEmpty());
  EXPECT_THAT(backend->insert_new({c_older}, 2), IsEmpty());
  EXPECT_THAT(backend->insert_new({c_newest}, 2), ElementsAre(RemovedSession{c_older.id, "carol"}));
  EXPECT_THAT(stored_ids_of("carol"), UnorderedElementsAre(c_newer.id, c_newest.id));
  // No cap: nothing evicted.
  EXPECT_THAT(backend->insert_new({make_session("alice", 1)}, 0), IsEmpty());
  EXPECT_EQ(db_->count("user_id = 'alice'"), 4);
}

TEST_P(OneTruth, BackendRotateCopiesTheStoredRowAndKeepsATombstone) {
  std::unique_ptr<SessionBackend> backend = db_->open_backend();
  const std::string new_id = pylon::session_id_for_token(pylon::generate_token());
  const Session missing = make_session("alice", 1);
  EXPECT_FALSE(backend->rotate(missing.id, new_id, kStart).has_value());
  EXPECT_EQ(db_->count(), 0);
  EXPECT_EQ(rotated_rows(), 0);

  const Session row = make_session("alice", 2);
  backend->save(row);
  const std::int64_t now = row.created_at + 20;
  const std::optional<Session> successor = backend->rotate(row.id, new_id, now);
  ASSERT_TRUE(successor.has_value());
  Session expected = row;
  expected.id = new_id;
  EXPECT_TRUE(same_session(expected, *successor));
  EXPECT_THAT(stored_ids_of("alice"), ElementsAre(new_id));
  std::vector<RotatedId> tombstones;
  backend->load_rotated_each([&](const RotatedId& rotated) { tombstones.push_back(rotated); });
  ASSERT_EQ(tombstones.size(), 1U);
  EXPECT_EQ(tombstones.at(0),
            (RotatedId{row.id, new_id, "alice", row.tenant_id, now, row.absolute_expires_at}));

  // An expired row is not rotated, and stays.
  const Session expired = make_session("bob", 3);
  backend->save(expired);
  const std::string other_id = pylon::session_id_for_token(pylon::generate_token());
  EXPECT_FALSE(backend->rotate(expired.id, other_id, expired.expires_at).has_value());
  EXPECT_TRUE(db_->has(expired.id));
  EXPECT_FALSE(db_->has(other_id));
  EXPECT_EQ(rotated_rows(), 1);

  // remove_expired() deletes the tombstone once the session's hard cap has passed.
  EXPECT_EQ(backend->remove_expired_rotated(row.absolute_expires_at - 1, 10), 0U);
  backend->remove_expired(row.absolute_expires_at);
  EXPECT_EQ(rotated_rows(), 0);
}

}  // namespace

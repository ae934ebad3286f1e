// A session's life beyond create and revoke, run on every backend from one parameterised suite
// (parameters "sqlite" and "postgres", a fresh database per test) with a ManualClock:
//   - its own lifetimes (CreateOptions::absolute_ttl and idle_timeout, "remember me"): a session
//     outliving the store's defaults, across a restart and a rotation, every slide by its own idle
//     timeout; values over StoreOptions::max_absolute_ttl / max_idle_timeout refused with nothing
//     stored, and store maxima below the store's own defaults refused;
//   - anonymous sessions (create_anonymous): they validate, hold data and expire, are in no
//     user's list and under no cap, and no bulk revoke of "the user" reaches them;
//   - attach_user (sign-in on a visitor's session: a new token, the old one refused and reported,
//     the data kept, the cap applied), reauthenticate and authenticated_within (the window's
//     boundary to the second), extend (written at once, never past the hard cap);
//   - the administration calls, which read storage: list_sessions (every filter, the limit and
//     cursor checked, other stores' sessions listed, expired ones not, and 2,000 sessions paged
//     while another store creates and revokes), count_by_tenant and revoke_tenant (storage, the
//     events, a tenant-scoped store);
//   - the events of each new call, with the ids they name.
// Nothing sleeps for an expiry: the clock is moved. Nothing asserts how long anything took.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "session_backend.hpp"
#include "support/test_database.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::CreateOptions;
using pylon::ErrorCode;
using pylon::NewSession;
using pylon::Session;
using pylon::SessionEvent;
using pylon::SessionEventType;
using pylon::SessionPage;
using pylon::SessionQuery;
using pylon::SessionStore;
using pylon::StoreOptions;
using pylon::TenantCount;
using pylon::test::ManualClock;
using pylon::test::TestDatabase;
using ::testing::ElementsAre;
using ::testing::UnorderedElementsAreArray;

constexpr std::int64_t kMinute = 60;
constexpr std::int64_t kHour = 3600;
constexpr std::int64_t kDay = 24 * kHour;

std::vector<std::string> ids_of(const std::vector<Session>& sessions) {
  std::vector<std::string> ids;
  ids.reserve(sessions.size());
  for (const Session& session : sessions) ids.push_back(session.id);
  return ids;
}

std::vector<std::string> sorted(std::vector<std::string> values) {
  std::sort(values.begin(), values.end());
  return values;
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
  void clear() {
    const std::lock_guard<std::mutex> lock(mutex_);
    events_.clear();
  }

 private:
  std::mutex mutex_;
  std::vector<SessionEvent> events_;
};

// The ids of a list of events, sorted.
std::vector<std::string> event_ids(const std::vector<SessionEvent>& events) {
  std::vector<std::string> ids;
  ids.reserve(events.size());
  for (const SessionEvent& event : events) ids.push_back(event.session_id);
  return sorted(std::move(ids));
}

CreateOptions in_tenant(const std::string& tenant) {
  CreateOptions options;
  options.tenant_id = tenant;
  return options;
}

CreateOptions remember_me(std::int64_t absolute_seconds, std::int64_t idle_seconds) {
  CreateOptions options;
  options.absolute_ttl = std::chrono::seconds(absolute_seconds);
  options.idle_timeout = std::chrono::seconds(idle_seconds);
  return options;
}

class LifecycleContract : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &db_)); }

  // Short store defaults (1 h absolute, 15 min idle), so a session of its own lifetimes shows.
  // Reads the change log before every lookup: a store sees another's writes at once.
  [[nodiscard]] StoreOptions options() const {
    StoreOptions options;
    options.absolute_ttl = std::chrono::seconds(kHour);
    options.idle_timeout = std::chrono::seconds(15 * kMinute);
    options.clock = clock_.fn();
    options.change_check_interval = std::chrono::milliseconds(0);
    options.on_event = [log = events_](const SessionEvent& event) { log->add(event); };
    return options;
  }
  [[nodiscard]] StoreOptions scoped(const std::string& tenant) const {
    StoreOptions scoped = options();
    scoped.tenant_id = tenant;
    return scoped;
  }
  [[nodiscard]] SessionStore open_store() const { return open_store(options()); }
  [[nodiscard]] SessionStore open_store(const StoreOptions& options) const {
    return SessionStore::open(db_->url(), options);
  }

  // What storage holds, read through a backend of its own.
  [[nodiscard]] std::optional<Session> stored(const std::string& id) const {
    return db_->open_backend()->load_one(id);
  }
  [[nodiscard]] std::vector<std::string> stored_ids() const {
    return sorted(ids_of(db_->open_backend()->load_all()));
  }

  std::unique_ptr<TestDatabase> db_;
  ManualClock clock_{1'700'000'000};
  std::shared_ptr<EventLog> events_ = std::make_shared<EventLog>();
};

INSTANTIATE_TEST_SUITE_P(Backends, LifecycleContract,
                         ::testing::ValuesIn(pylon::test::contract_backends()),
                         pylon::test::backend_name);

// ------------------------------------------------------------------------------------------------
// 1. A session's own lifetimes
// ------------------------------------------------------------------------------------------------

TEST_P(LifecycleContract, ARememberMeSessionOutlivesTheStoreDefaultsAcrossARestartAndARotation) {
  const std::int64_t start = clock_.now();
  NewSession remembered;
  NewSession ordinary;
  {
    SessionStore store = open_store();
    remembered = store.create("alice", remember_me(30 * kDay, 7 * kDay));
    ordinary = store.create("alice");
    EXPECT_EQ(remembered.session.absolute_expires_at, start + 30 * kDay);
    EXPECT_EQ(remembered.session.expires_at, start + 7 * kDay);
    EXPECT_EQ(remembered.session.idle_timeout_seconds, 7 * kDay);
    EXPECT_EQ(ordinary.session.absolute_expires_at, start + kHour);
    EXPECT_EQ(ordinary.session.expires_at, start + 15 * kMinute);
    EXPECT_FALSE(ordinary.session.idle_timeout_seconds.has_value());
    const std::optional<Session> in_storage = stored(remembered.session.id);
    ASSERT_TRUE(in_storage.has_value());
    EXPECT_TRUE(pylon::test::same_session(remembered.session, *in_storage));

    clock_.advance(2 * kHour);  // past both of the store's lifetimes
    EXPECT_FALSE(store.validate(ordinary.token).has_value()) << "the control session lives on";
    const std::optional<Session> slid = store.validate(remembered.token);
    ASSERT_TRUE(slid.has_value()) << "a remember-me session died with the store's defaults";
    EXPECT_EQ(slid->expires_at, clock_.now() + 7 * kDay) << "slid by its own idle timeout";
  }
  // A restart: a new store on the same database keeps its lifetimes.
  SessionStore restarted = open_store();
  clock_.advance(6 * kDay);  // within its 7 days idle, far past the store's 15 minutes
  const std::optional<Session> after_restart = restarted.validate(remembered.token);
  ASSERT_TRUE(after_restart.has_value()) << "the restart lost the session's own lifetimes";
  EXPECT_EQ(after_restart->idle_timeout_seconds, 7 * kDay);
  EXPECT_EQ(after_restart->expires_at, clock_.now() + 7 * kDay);
  EXPECT_EQ(after_restart->absolute_expires_at, start + 30 * kDay);

  // A rotation keeps them too.
  const std::optional<NewSession> rotated = restarted.rotate(remembered.token);
  ASSERT_TRUE(rotated.has_value());
  EXPECT_EQ(rotated->session.idle_timeout_seconds, 7 * kDay);
  EXPECT_EQ(rotated->session.absolute_expires_at, start + 30 * kDay);
  const std::optional<Session> rotated_in_storage = stored(rotated->session.id);
  ASSERT_TRUE(rotated_in_storage.has_value());
  EXPECT_EQ(rotated_in_storage->idle_timeout_seconds, 7 * kDay);
  clock_.advance(6 * kDay);
  ASSERT_TRUE(restarted.validate(rotated->token).has_value()) << "lost at the rotation";
  clock_.advance(6 * kDay);
  const std::optional<Session> late = restarted.validate(rotated->token);
  ASSERT_TRUE(late.has_value());
  EXPECT_LE(late->expires_at, start + 30 * kDay) << "a slide went past its own hard cap";
  // Its own hard cap still ends it, however active it is.
  clock_.set(start + 30 * kDay);
  EXPECT_FALSE(restarted.validate(rotated->token).has_value());
}

TEST_P(LifecycleContract, EverySlideUsesTheSessionsOwnIdleTimeout) {
  StoreOptions every_request = options();
  every_request.touch_interval = std::chrono::seconds(0);  // every validate writes its slide
  SessionStore store = open_store(every_request);
  CreateOptions shorter;
  shorter.idle_timeout = std::chrono::seconds(5 * kMinute);  // the store's: 15 min
  CreateOptions longer;
  longer.idle_timeout = std::chrono::seconds(40 * kMinute);
  const NewSession short_one = store.create("alice", shorter);
  const NewSession long_one = store.create("alice", longer);
  EXPECT_EQ(short_one.session.absolute_expires_at, clock_.now() + kHour) << "the store's cap";
  EXPECT_EQ(long_one.session.expires_at, clock_.now() + 40 * kMinute);

  for (int request = 0; request < 3; ++request) {
    clock_.advance(4 * kMinute);
    const std::optional<Session> s = store.validate(short_one.token);
    ASSERT_TRUE(s.has_value()) << "request " << request;
    EXPECT_EQ(s->expires_at, clock_.now() + 5 * kMinute);
    const std::optional<Session> in_storage = stored(short_one.session.id);
    ASSERT_TRUE(in_storage.has_value());
    EXPECT_EQ(in_storage->expires_at, clock_.now() + 5 * kMinute) << "the stored slide";
  }
  clock_.advance(5 * kMinute);  // unused for its 5 minutes
  EXPECT_FALSE(store.validate(short_one.token).has_value());

  clock_.advance(20 * kMinute);  // 32 min after creation: past 15, within 40
  const std::optional<Session> l = store.validate(long_one.token);
  ASSERT_TRUE(l.has_value()) << "the store's idle timeout ended a session with its own";
  EXPECT_EQ(l->expires_at, std::min(clock_.now() + 40 * kMinute, l->absolute_expires_at));
}

TEST_P(LifecycleContract, LifetimesOverTheStoreMaximaAreRefusedAndNothingIsStored) {
  StoreOptions capped = options();
  capped.max_absolute_ttl = std::chrono::seconds(10 * kDay);
  capped.max_idle_timeout = std::chrono::seconds(2 * kDay);
  SessionStore store = open_store(capped);
  EXPECT_PYLON_ERROR(store.create("alice", remember_me(10 * kDay + 1, kDay)),
                     ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(store.create("alice", remember_me(kDay, 2 * kDay + 1)),
                     ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(store.create_anonymous(remember_me(10 * kDay + 1, kDay)),
                     ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(store.create_anonymous(remember_me(kDay, 2 * kDay + 1)),
                     ErrorCode::kInvalidArgument);
  CreateOptions zero;
  zero.absolute_ttl = std::chrono::seconds(0);
  EXPECT_PYLON_ERROR(store.create("alice", zero), ErrorCode::kInvalidArgument);
  CreateOptions negative;
  negative.idle_timeout = std::chrono::seconds(-1);
  EXPECT_PYLON_ERROR(store.create("alice", negative), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(stored_ids().empty()) << "a refused create stored something";
  EXPECT_EQ(store.size(), 0U);
  EXPECT_TRUE(store.list_user("alice").empty());

  // At the maxima exactly: accepted, as asked (not shortened).
  const NewSession at_max = store.create("alice", remember_me(10 * kDay, 2 * kDay));
  EXPECT_EQ(at_max.session.absolute_expires_at, clock_.now() + 10 * kDay);
  EXPECT_EQ(at_max.session.expires_at, clock_.now() + 2 * kDay);
  EXPECT_EQ(stored_ids(), std::vector<std::string>{at_max.session.id});
}

// A maximum below the store's own default does not refuse the store: a session may always have
// what the store gives every session, and nothing longer.
TEST_P(LifecycleContract, StoreMaximaBelowTheStoreDefaultsStillAllowTheDefaults) {
  StoreOptions below = options();  // absolute_ttl: 1 hour; idle_timeout: 15 minutes
  below.max_absolute_ttl = std::chrono::seconds(kHour - 1);
  below.max_idle_timeout = std::chrono::seconds(15 * kMinute - 1);
  SessionStore store = open_store(below);
  CreateOptions at_the_defaults;
  at_the_defaults.absolute_ttl = std::chrono::seconds(kHour);
  at_the_defaults.idle_timeout = std::chrono::seconds(15 * kMinute);
  const NewSession created = store.create("alice", at_the_defaults);
  EXPECT_EQ(created.session.absolute_expires_at, created.session.created_at + kHour);
  EXPECT_EQ(created.session.idle_timeout_seconds, 15 * kMinute);
  EXPECT_TRUE(store.validate(created.token).has_value());

  CreateOptions over_the_default;
  over_the_default.absolute_ttl = std::chrono::seconds(kHour + 1);
  EXPECT_PYLON_ERROR(static_cast<void>(store.create("alice", over_the_default)),
                     ErrorCode::kInvalidArgument);
  CreateOptions idle_over_the_default;
  idle_over_the_default.idle_timeout = std::chrono::seconds(15 * kMinute + 1);
  EXPECT_PYLON_ERROR(static_cast<void>(store.create("alice", idle_over_the_default)),
                     ErrorCode::kInvalidArgument);
  EXPECT_EQ(store.list_user("alice").size(), 1U);

  StoreOptions over_a_century = options();
  over_a_century.max_absolute_ttl = std::chrono::hours(24 * 36526);
  EXPECT_PYLON_ERROR(static_cast<void>(open_store(over_a_century)), ErrorCode::kInvalidArgument);
  StoreOptions zero = options();
  zero.max_idle_timeout = std::chrono::seconds(0);
  EXPECT_PYLON_ERROR(static_cast<void>(open_store(zero)), ErrorCode::kInvalidArgument);
}

// ------------------------------------------------------------------------------------------------
// 2. Anonymous sessions
// ------------------------------------------------------------------------------------------------

TEST_P(LifecycleContract, AnAnonymousSessionValidatesHoldsDataAndExpires) {
  SessionStore store = open_store();
  CreateOptions visitor;
  visitor.device = "Firefox on Linux";
  visitor.data = "lang=fr";
  const NewSession anonymous = store.create_anonymous(visitor);
  EXPECT_TRUE(anonymous.session.is_anonymous());
  EXPECT_EQ(anonymous.session.user_id, "");
  EXPECT_EQ(anonymous.session.authenticated_at, 0);
  const std::optional<Session> valid = store.validate(anonymous.token);
  ASSERT_TRUE(valid.has_value());
  EXPECT_TRUE(valid->is_anonymous());
  EXPECT_EQ(valid->data, "lang=fr");
  EXPECT_EQ(valid->device, "Firefox on Linux");
  EXPECT_FALSE(store.authenticated_within(*valid, std::chrono::hours(24 * 365)));

  const std::string cart = std::string("cart=[book]\0", 12);
  ASSERT_TRUE(store.update_data(anonymous.token, cart).has_value());
  const std::optional<Session> in_storage = stored(anonymous.session.id);
  ASSERT_TRUE(in_storage.has_value());
  EXPECT_EQ(in_storage->data, cart);
  EXPECT_EQ(in_storage->user_id, "");
  EXPECT_EQ(in_storage->authenticated_at, 0);
  SessionStore restarted = open_store();  // and after a restart
  const std::optional<Session> again = restarted.validate(anonymous.token);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->data, cart);
  EXPECT_TRUE(again->is_anonymous());

  clock_.advance(15 * kMinute);  // unused for the store's idle timeout
  EXPECT_FALSE(store.validate(anonymous.token).has_value());
  EXPECT_FALSE(restarted.validate(anonymous.token).has_value());
  EXPECT_EQ(store.purge_expired(), 1U);
  EXPECT_TRUE(stored_ids().empty());
}

TEST_P(LifecycleContract, AnonymousSessionsAreInNoUserListAndUnderNoCap) {
  StoreOptions capped = options();
  capped.max_sessions_per_user = 1;
  SessionStore store = open_store(capped);
  std::vector<NewSession> visitors;
  visitors.reserve(4);
  for (int i = 0; i < 3; ++i) visitors.push_back(store.create_anonymous(in_tenant("t1")));
  const NewSession alice = store.create("alice", in_tenant("t1"));
  const NewSession another = store.create_anonymous(in_tenant("t1"));
  visitors.push_back(another);
  for (const NewSession& visitor : visitors) {
    EXPECT_TRUE(store.validate(visitor.token).has_value()) << "a cap evicted a visitor";
  }
  EXPECT_TRUE(store.validate(alice.token).has_value()) << "visitors counted against alice";
  EXPECT_TRUE(store.list_user("").empty());
  EXPECT_TRUE(store.list_user("", "t1").empty());
  EXPECT_THAT(ids_of(store.list_user("alice")), ElementsAre(alice.session.id));
  EXPECT_EQ(stored_ids().size(), 5U);
}

TEST_P(LifecycleContract, NoBulkRevokeOfAUserReachesOtherAnonymousSessions) {
  SessionStore store = open_store();
  std::vector<NewSession> visitors;
  visitors.reserve(4);
  for (int i = 0; i < 3; ++i) visitors.push_back(store.create_anonymous());
  visitors.push_back(store.create_anonymous(in_tenant("t1")));
  EXPECT_EQ(store.revoke_user(""), 0U);
  EXPECT_EQ(store.revoke_user("", "t1"), 0U);
  EXPECT_EQ(store.revoke_others(visitors[0].token), 0U) << "a visitor has no 'other sessions'";
  // An identity provider's logout for an empty `sub`: refused or nothing, never the visitors.
  try {
    EXPECT_EQ(store.logout_by_claims(std::nullopt, std::string_view("")), 0U);
  } catch (const pylon::Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::kInvalidArgument) << error.what();
  }
  for (const NewSession& visitor : visitors) {
    EXPECT_TRUE(store.validate(visitor.token).has_value());
  }
  EXPECT_EQ(stored_ids().size(), visitors.size()) << "storage lost a visitor";
}

// ------------------------------------------------------------------------------------------------
// 3. attach_user: signing a visitor in
// ------------------------------------------------------------------------------------------------

TEST_P(LifecycleContract, AttachUserGivesANewTokenWithTheUserAndKeepsTheData) {
  SessionStore store = open_store();
  CreateOptions visitor = remember_me(10 * kDay, kDay);
  visitor.tenant_id = "t1";
  visitor.device = "phone";
  visitor.data = "cart=[book]";
  const NewSession anonymous = store.create_anonymous(visitor);
  clock_.advance(30);
  const std::int64_t login_at = clock_.now();
  const std::optional<NewSession> signed_in = store.attach_user(anonymous.token, "alice");
  ASSERT_TRUE(signed_in.has_value());
  EXPECT_NE(signed_in->token, anonymous.token);
  EXPECT_NE(signed_in->session.id, anonymous.session.id);
  const Session& s = signed_in->session;
  EXPECT_EQ(s.user_id, "alice");
  EXPECT_FALSE(s.is_anonymous());
  EXPECT_EQ(s.authenticated_at, login_at);
  EXPECT_EQ(s.data, "cart=[book]");
  EXPECT_EQ(s.tenant_id, "t1");
  EXPECT_EQ(s.device, "phone");
  EXPECT_EQ(s.created_at, anonymous.session.created_at);
  EXPECT_EQ(s.absolute_expires_at, anonymous.session.absolute_expires_at);
  EXPECT_EQ(s.idle_timeout_seconds, kDay);
  EXPECT_TRUE(store.authenticated_within(s, std::chrono::seconds(0)));

  // Storage: the old row gone, the new one the user's.
  EXPECT_EQ(stored_ids(), std::vector<std::string>{s.id});
  const std::optional<Session> in_storage = stored(s.id);
  ASSERT_TRUE(in_storage.has_value());
  EXPECT_EQ(in_storage->user_id, "alice");
  EXPECT_EQ(in_storage->authenticated_at, login_at);
  EXPECT_EQ(in_storage->data, "cart=[book]");
  EXPECT_THAT(ids_of(store.list_user("alice")), ElementsAre(s.id));

  // The old token is refused, and its use reported as a replayed rotated-away token.
  EXPECT_TRUE(store.validate(signed_in->token).has_value());
  EXPECT_FALSE(store.validate(anonymous.token).has_value());
  const std::vector<SessionEvent> reused = events_->of(SessionEventType::kRotatedTokenReused);
  ASSERT_EQ(reused.size(), 1U);
  EXPECT_EQ(reused[0].session_id, anonymous.session.id);
  EXPECT_EQ(reused[0].replaced_by, s.id);
  EXPECT_FALSE(store.attach_user(anonymous.token, "alice").has_value());

  // Another store on the database: the same answer.
  events_->clear();
  SessionStore restarted = open_store();
  const std::optional<Session> there = restarted.validate(signed_in->token);
  ASSERT_TRUE(there.has_value());
  EXPECT_EQ(there->user_id, "alice");
  EXPECT_EQ(there->authenticated_at, login_at);
  EXPECT_FALSE(restarted.validate(anonymous.token).has_value());
  EXPECT_EQ(events_->of(SessionEventType::kRotatedTokenReused).size(), 1U);
}

TEST_P(LifecycleContract, AttachUserKeepsTheNewSessionAndEvictsTheUsersOldestOther) {
  StoreOptions capped = options();
  capped.max_sessions_per_user = 2;
  SessionStore store = open_store(capped);
  const NewSession visitor = store.create_anonymous();  // older than alice's sessions
  clock_.advance(10);
  const NewSession first = store.create("alice");
  clock_.advance(10);
  const NewSession second = store.create("alice");
  const NewSession bobs = store.create("bob");
  clock_.advance(10);
  const std::optional<NewSession> signed_in = store.attach_user(visitor.token, "alice");
  ASSERT_TRUE(signed_in.has_value());
  EXPECT_TRUE(store.validate(signed_in->token).has_value()) << "the cap evicted the new session";
  EXPECT_FALSE(store.validate(first.token).has_value()) << "the oldest other was not evicted";
  EXPECT_TRUE(store.validate(second.token).has_value());
  EXPECT_TRUE(store.validate(bobs.token).has_value());
  EXPECT_EQ(stored_ids(), sorted({signed_in->session.id, second.session.id, bobs.session.id}));
  EXPECT_THAT(event_ids(events_->of(SessionEventType::kRevoked)), ElementsAre(first.session.id))
      << "the eviction is reported as a revoke";
}

TEST_P(LifecycleContract, AttachUserRefusesAnotherUsersSessionAndAnEmptyUser) {
  SessionStore store = open_store();
  const NewSession bobs = store.create("bob");
  const NewSession visitor = store.create_anonymous();
  EXPECT_PYLON_ERROR(store.attach_user(bobs.token, "alice"), ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(store.attach_user(visitor.token, ""), ErrorCode::kInvalidArgument);
  const std::optional<Session> bob_still = store.validate(bobs.token);
  ASSERT_TRUE(bob_still.has_value()) << "a refused sign-in rotated bob's token away";
  EXPECT_EQ(bob_still->user_id, "bob");
  const std::optional<Session> visitor_still = store.validate(visitor.token);
  ASSERT_TRUE(visitor_still.has_value());
  EXPECT_TRUE(visitor_still->is_anonymous());
  EXPECT_EQ(stored_ids(), sorted({bobs.session.id, visitor.session.id}));
  EXPECT_TRUE(events_->of(SessionEventType::kUserAttached).empty());

  // Unknown, malformed and expired tokens: nothing to sign in to.
  EXPECT_FALSE(store.attach_user(pylon::generate_token(), "alice").has_value());
  EXPECT_FALSE(store.attach_user("not a token", "alice").has_value());
  clock_.advance(15 * kMinute);
  EXPECT_FALSE(store.attach_user(visitor.token, "alice").has_value());
  EXPECT_EQ(stored_ids(), sorted({bobs.session.id, visitor.session.id}));

  // Signing in to a session that already is the user's: allowed (it rotates).
  const NewSession alices = store.create("alice");
  const std::optional<NewSession> again = store.attach_user(alices.token, "alice");
  ASSERT_TRUE(again.has_value());
  EXPECT_FALSE(store.validate(alices.token).has_value());
  EXPECT_TRUE(store.validate(again->token).has_value());
}

// ------------------------------------------------------------------------------------------------
// 4. reauthenticate and authenticated_within
// ------------------------------------------------------------------------------------------------

TEST_P(LifecycleContract, ReauthenticateRotatesAndMovesAuthenticatedAt) {
  SessionStore store = open_store();
  const std::int64_t login_at = clock_.now();
  const NewSession login = store.create("alice");
  EXPECT_EQ(login.session.authenticated_at, login_at);
  const std::chrono::seconds five_minutes(5 * kMinute);
  EXPECT_TRUE(store.authenticated_within(login.session, five_minutes));
  clock_.advance(5 * kMinute);  // authenticated_at + window == now: still within
  EXPECT_TRUE(store.authenticated_within(login.session, five_minutes));
  clock_.advance(1);
  EXPECT_FALSE(store.authenticated_within(login.session, five_minutes));

  const std::int64_t proved_at = clock_.now();
  const std::optional<NewSession> fresh = store.reauthenticate(login.token);
  ASSERT_TRUE(fresh.has_value());
  EXPECT_NE(fresh->token, login.token);
  EXPECT_EQ(fresh->session.authenticated_at, proved_at);
  EXPECT_EQ(fresh->session.created_at, login_at) << "re-authentication is not a new session";
  EXPECT_EQ(fresh->session.user_id, "alice");
  EXPECT_TRUE(store.authenticated_within(fresh->session, five_minutes));
  EXPECT_FALSE(store.validate(login.token).has_value()) << "the old token still works";
  const std::optional<Session> validated = store.validate(fresh->token);
  ASSERT_TRUE(validated.has_value());
  EXPECT_EQ(validated->authenticated_at, proved_at);
  const std::optional<Session> in_storage = stored(fresh->session.id);
  ASSERT_TRUE(in_storage.has_value());
  EXPECT_EQ(in_storage->authenticated_at, proved_at);
  EXPECT_EQ(stored_ids(), std::vector<std::string>{fresh->session.id});
  SessionStore restarted = open_store();
  const std::optional<Session> after_restart = restarted.validate(fresh->token);
  ASSERT_TRUE(after_restart.has_value());
  EXPECT_EQ(after_restart->authenticated_at, proved_at);

  clock_.advance(5 * kMinute);
  EXPECT_TRUE(store.authenticated_within(*validated, five_minutes));
  clock_.advance(1);
  EXPECT_FALSE(store.authenticated_within(*validated, five_minutes));
}

TEST_P(LifecycleContract, ReauthenticateRefusesAnAnonymousSession) {
  SessionStore store = open_store();
  const NewSession visitor = store.create_anonymous();
  EXPECT_PYLON_ERROR(store.reauthenticate(visitor.token), ErrorCode::kInvalidArgument);
  const std::optional<Session> still = store.validate(visitor.token);
  ASSERT_TRUE(still.has_value()) << "a refused re-authentication rotated the token away";
  EXPECT_TRUE(still->is_anonymous());
  EXPECT_EQ(stored_ids(), std::vector<std::string>{visitor.session.id});
  EXPECT_FALSE(store.reauthenticate(pylon::generate_token()).has_value());
  EXPECT_FALSE(store.reauthenticate("garbage").has_value());
  EXPECT_TRUE(events_->of(SessionEventType::kReauthenticated).empty());
}

// ------------------------------------------------------------------------------------------------
// 5. extend
// ------------------------------------------------------------------------------------------------

TEST_P(LifecycleContract, ExtendWritesAtOnceEvenWithinTheTouchInterval) {
  StoreOptions lazy = options();
  lazy.touch_interval = std::chrono::seconds(10 * kMinute);
  SessionStore store = open_store(lazy);
  const std::int64_t start = clock_.now();
  const NewSession login = store.create("alice");
  clock_.advance(3 * kMinute);
  ASSERT_TRUE(store.validate(login.token).has_value());
  const std::optional<Session> before = stored(login.session.id);
  ASSERT_TRUE(before.has_value());
  ASSERT_EQ(before->expires_at, start + 15 * kMinute)
      << "validate() wrote within its touch_interval: this test cannot tell extend() apart";

  const std::optional<Session> extended = store.extend(login.token);
  ASSERT_TRUE(extended.has_value());
  EXPECT_EQ(extended->expires_at, clock_.now() + 15 * kMinute);
  EXPECT_EQ(extended->last_seen_at, clock_.now());
  const std::optional<Session> after = stored(login.session.id);
  ASSERT_TRUE(after.has_value());
  EXPECT_EQ(after->expires_at, clock_.now() + 15 * kMinute) << "extend() did not write at once";
  EXPECT_EQ(after->last_seen_at, clock_.now());
  SessionStore other = open_store(lazy);  // and another store sees it
  const std::optional<Session> there = other.find(login.session.id);
  ASSERT_TRUE(there.has_value());
  EXPECT_EQ(there->expires_at, clock_.now() + 15 * kMinute);
}

TEST_P(LifecycleContract, ExtendNeverPassesTheAbsoluteCap) {
  SessionStore store = open_store();  // 1 hour absolute, 15 minutes idle
  const std::int64_t start = clock_.now();
  const NewSession login = store.create("alice");
  for (int i = 0; i < 3; ++i) {
    clock_.advance(14 * kMinute);
    ASSERT_TRUE(store.extend(login.token).has_value()) << "extend #" << i;
  }
  clock_.advance(14 * kMinute);  // 56 minutes: now + idle would be 71
  const std::optional<Session> capped = store.extend(login.token);
  ASSERT_TRUE(capped.has_value());
  EXPECT_EQ(capped->expires_at, start + kHour);
  const std::optional<Session> in_storage = stored(login.session.id);
  ASSERT_TRUE(in_storage.has_value());
  EXPECT_EQ(in_storage->expires_at, start + kHour);
  clock_.set(start + kHour);
  EXPECT_FALSE(store.extend(login.token).has_value()) << "extended past its hard cap";
  EXPECT_FALSE(store.validate(login.token).has_value());
}

TEST_P(LifecycleContract, ExtendNearTheIdleLimitKeepsTheSessionAlive) {
  SessionStore store = open_store();
  const NewSession answered = store.create("alice");
  const NewSession ignored = store.create("alice");  // the same life, never extended
  const NewSession remembered = store.create("bob", remember_me(30 * kDay, 2 * kHour));
  clock_.advance(15 * kMinute - 1);  // one second before the idle expiry
  const std::optional<Session> extended = store.extend(answered.token);
  ASSERT_TRUE(extended.has_value()) << "extend() one second before the idle limit failed";
  EXPECT_EQ(extended->expires_at, clock_.now() + 15 * kMinute);
  const std::optional<Session> own = store.extend(remembered.token);
  ASSERT_TRUE(own.has_value());
  EXPECT_EQ(own->expires_at, clock_.now() + 2 * kHour) << "extend() used the store's timeout";

  clock_.advance(10 * kMinute);
  EXPECT_TRUE(store.validate(answered.token).has_value()) << "the extension did not hold";
  EXPECT_FALSE(store.validate(ignored.token).has_value());
  EXPECT_FALSE(store.extend(ignored.token).has_value()) << "an expired session was extended";
  EXPECT_FALSE(store.extend(pylon::generate_token()).has_value());
  EXPECT_FALSE(store.extend("nonsense").has_value());
}

// ------------------------------------------------------------------------------------------------
// 6. Administration: list_sessions, count_by_tenant, revoke_tenant
// ------------------------------------------------------------------------------------------------

// Every page of `query` (a limit of `query.limit`), following next_cursor; fails the test on a
// page over the limit, ids out of order, or a listing that does not end.
std::vector<std::string> list_all(const SessionStore& store, SessionQuery query) {
  std::vector<std::string> ids;
  for (int pages = 0; pages < 100000; ++pages) {
    const SessionPage page = store.list_sessions(query);
    EXPECT_LE(page.sessions.size(), query.limit);
    for (const Session& session : page.sessions) {
      EXPECT_TRUE(ids.empty() || ids.back() < session.id) << "ids out of order or repeated";
      ids.push_back(session.id);
    }
    if (page.next_cursor.empty()) return ids;
    query.after = page.next_cursor;
  }
  ADD_FAILURE() << "the listing did not end";
  return ids;
}

TEST_P(LifecycleContract, ListSessionsFiltersWhatStorageHoldsFromEveryStore) {
  SessionStore store = open_store();
  SessionStore other = open_store();
  const std::int64_t t0 = clock_.now();
  CreateOptions phone = in_tenant("t1");
  phone.device = "phone";
  const NewSession a1 = store.create("alice", phone);
  clock_.advance(100);
  const NewSession a2 = store.create("alice", in_tenant("t2"));
  const NewSession visitor = store.create_anonymous(phone);
  clock_.advance(100);
  const NewSession b1 = other.create("bob", in_tenant("t1"));  // another store's session
  const NewSession none = other.create("carol");
  const NewSession revoked = other.create("dave", in_tenant("t1"));
  ASSERT_TRUE(other.revoke(revoked.token));
  clock_.advance(100);
  ASSERT_TRUE(store.validate(a1.token).has_value());  // a1 last seen at t0 + 300 (written)
  const std::int64_t a1_seen = t0 + 300;

  const auto listed = [&store](const SessionQuery& query) {
    return sorted(list_all(store, query));
  };
  SessionQuery q;
  EXPECT_EQ(listed(q), sorted({a1.session.id, a2.session.id, visitor.session.id, b1.session.id,
                               none.session.id}))
      << "every live session, the other store's included";
  q.tenant_id = "t1";
  EXPECT_EQ(listed(q), sorted({a1.session.id, visitor.session.id, b1.session.id}));
  q = {};
  q.user_id = "alice";
  EXPECT_EQ(listed(q), sorted({a1.session.id, a2.session.id}));
  q.tenant_id = "t2";
  EXPECT_EQ(listed(q), std::vector<std::string>{a2.session.id});
  q = {};
  q.user_id = "";
  EXPECT_EQ(listed(q), std::vector<std::string>{visitor.session.id}) << "\"\": the anonymous";
  q = {};
  q.device = "phone";
  EXPECT_EQ(listed(q), sorted({a1.session.id, visitor.session.id}));
  q = {};
  q.created_since = t0 + 100;
  EXPECT_EQ(listed(q), sorted({a2.session.id, visitor.session.id, b1.session.id, none.session.id}));
  q.created_before = t0 + 200;
  EXPECT_EQ(listed(q), sorted({a2.session.id, visitor.session.id}));
  q = {};
  q.last_seen_since = a1_seen;
  EXPECT_EQ(listed(q), std::vector<std::string>{a1.session.id});
  q = {};
  q.last_seen_before = t0 + 200;  // created (and last seen) before t0 + 200
  EXPECT_EQ(listed(q), sorted({a2.session.id, visitor.session.id}));

  // The full sessions, as storage holds them.
  q = {};
  q.user_id = "bob";
  const SessionPage bobs = store.list_sessions(q);
  ASSERT_EQ(bobs.sessions.size(), 1U);
  EXPECT_TRUE(pylon::test::same_session(b1.session, bobs.sessions[0]));

  // Expired sessions are not listed (nor purged by listing).
  clock_.set(t0 + 200 + 15 * kMinute);  // past the idle expiry of all but a1
  EXPECT_EQ(listed(SessionQuery{}), std::vector<std::string>{a1.session.id});
  EXPECT_EQ(stored_ids().size(), 5U);
}

TEST_P(LifecycleContract, ListSessionsRefusesALimitOrCursorOutOfRange) {
  SessionStore store = open_store();
  const NewSession login = store.create("alice");
  SessionQuery q;
  q.limit = 0;
  EXPECT_PYLON_ERROR(store.list_sessions(q), ErrorCode::kInvalidArgument);
  q.limit = pylon::kMaxPageSize + 1;
  EXPECT_PYLON_ERROR(store.list_sessions(q), ErrorCode::kInvalidArgument);
  q.limit = pylon::kMaxPageSize;
  EXPECT_EQ(store.list_sessions(q).sessions.size(), 1U);
  q.limit = 1;
  const SessionPage one = store.list_sessions(q);
  ASSERT_EQ(one.sessions.size(), 1U);
  EXPECT_EQ(one.next_cursor, login.session.id) << "a full page has a cursor";
  q.after = one.next_cursor;
  const SessionPage after = store.list_sessions(q);
  EXPECT_TRUE(after.sessions.empty());
  EXPECT_TRUE(after.next_cursor.empty());
  for (const std::string& cursor :
       {std::string("garbage"), std::string(64, 'G'), login.token, std::string(64, 'A')}) {
    q.after = cursor;
    EXPECT_PYLON_ERROR(store.list_sessions(q), ErrorCode::kInvalidArgument) << cursor;
  }
  q.after.clear();
  q.tenant_id = std::string("t\0x", 3);
  EXPECT_PYLON_ERROR(store.list_sessions(q), ErrorCode::kInvalidArgument);
}

const std::vector<std::string>& three_tenants() {
  static const std::vector<std::string> kTenants = {"t1", "t2", "t3"};
  return kTenants;
}

// `count` live sessions spread over three_tenants(), written in batches by a backend of its own
// (another writer than the stores under test); returns their ids.
std::set<std::string> save_live_sessions(const TestDatabase& db, int count, std::int64_t now) {
  auto backend = db.open_backend();
  std::set<std::string> ids;
  std::vector<Session> batch;
  for (int i = 0; i < count; ++i) {
    Session session = pylon::test::make_session("user-" + std::to_string(i % 50), i);
    session.tenant_id = three_tenants()[static_cast<std::size_t>(i) % three_tenants().size()];
    session.created_at = now - 10;
    session.last_seen_at = now - 5;
    session.expires_at = now + kHour;
    session.absolute_expires_at = now + kDay;
    session.authenticated_at = session.created_at;
    ids.insert(session.id);
    batch.push_back(std::move(session));
    if (batch.size() == 500 || i + 1 == count) {
      backend->save_batch(batch);
      batch.clear();
    }
  }
  return ids;
}

// A thread that creates sessions through `store` (users' and anonymous ones, in every tenant) and
// revokes every other one it created, until stopped; writes() counts what it did.
class Churn {
 public:
  explicit Churn(SessionStore& store) : thread_([this, &store] { run(store); }) {}
  ~Churn() { stop(); }
  Churn(const Churn&) = delete;
  Churn& operator=(const Churn&) = delete;
  Churn(Churn&&) = delete;
  Churn& operator=(Churn&&) = delete;

  [[nodiscard]] int writes() const { return writes_.load(); }
  // Stops the thread; returns what it failed with ("" if nothing).
  std::string stop() {
    done_.store(true);
    if (thread_.joinable()) thread_.join();
    return failure_;
  }

 private:
  void run(SessionStore& store) {
    std::vector<std::string> mine;
    try {
      for (std::size_t i = 0; !done_.load(); ++i) {
        const std::string& tenant = three_tenants()[i % three_tenants().size()];
        mine.push_back(i % 4 == 3 ? store.create_anonymous(in_tenant(tenant)).token
                                  : store.create("churn", in_tenant(tenant)).token);
        if (i % 2 == 1) store.revoke(mine[i / 2]);
        writes_.fetch_add(1);
      }
    } catch (const pylon::Error& error) {
      failure_ = error.what();
      writes_.store(1 << 30);  // a lister waiting for a write goes on
    }
  }

  std::atomic<bool> done_{false};
  std::atomic<int> writes_{0};
  std::string failure_;
  std::thread thread_;  // last: started once everything above exists
};

TEST_P(LifecycleContract, PagingThousandsOfSessionsWhileOthersWriteListsEachOnce) {
  // The sessions that exist throughout: the listing must find every one exactly once.
  const std::set<std::string> stable = save_live_sessions(*db_, 2000, clock_.now());
  SessionStore lister = open_store();
  SessionStore writer = open_store();
  Churn churn(writer);

  // Between two pages the lister waits for at least one write of the churn, so the listing is
  // interleaved with creates and revokes whatever the speed of either.
  std::map<std::string, int> seen;
  std::vector<std::string> order;
  SessionQuery query;
  query.limit = 97;
  int pages = 0;
  for (; pages < 1000; ++pages) {
    const int before = churn.writes();
    const SessionPage page = lister.list_sessions(query);
    for (const Session& session : page.sessions) {
      ++seen[session.id];
      order.push_back(session.id);
    }
    if (page.next_cursor.empty()) break;
    query.after = page.next_cursor;
    while (churn.writes() == before) std::this_thread::yield();
  }
  const int writes = churn.writes();
  const std::string failure = churn.stop();
  ASSERT_TRUE(failure.empty()) << failure;
  EXPECT_LT(pages, 1000) << "the listing did not end";
  EXPECT_GE(writes, pages) << "the writes did not interleave with the pages";
  EXPECT_TRUE(std::is_sorted(order.begin(), order.end()));
  std::size_t duplicates = 0;
  for (const auto& [id, times] : seen) {
    if (times > 1) ++duplicates;
  }
  EXPECT_EQ(duplicates, 0U) << "sessions listed more than once";
  std::size_t missing = 0;
  for (const std::string& id : stable) {
    if (seen.count(id) == 0) ++missing;
  }
  EXPECT_EQ(missing, 0U) << "sessions that existed throughout were not listed";

  // One tenant's listing holds exactly that tenant's stable sessions (and the churn's).
  SessionQuery t2;
  t2.tenant_id = "t2";
  t2.limit = 250;
  std::size_t stable_listed = 0;
  for (const std::string& id : list_all(lister, t2)) stable_listed += stable.count(id);
  std::size_t stable_in_t2 = 0;
  for (const Session& row : db_->open_backend()->load_all()) {
    if (row.tenant_id == "t2" && stable.count(row.id) == 1) ++stable_in_t2;
  }
  EXPECT_EQ(stable_listed, stable_in_t2);
  EXPECT_GT(stable_in_t2, 0U);
}

TEST_P(LifecycleContract, CountByTenantCountsEveryStoresLiveSessions) {
  SessionStore store = open_store();
  SessionStore other = open_store();
  store.create("alice", in_tenant("a"));
  other.create("bob", in_tenant("a"));
  store.create_anonymous(in_tenant("a"));
  other.create_anonymous(in_tenant("b"));
  store.create("carol");
  other.create_anonymous();
  const NewSession gone = store.create("dave", in_tenant("c"));
  ASSERT_TRUE(store.revoke(gone.token));
  CreateOptions short_lived = in_tenant("d");
  short_lived.idle_timeout = std::chrono::seconds(60);
  store.create("erin", short_lived);
  clock_.advance(61);  // erin's session expired: not counted

  EXPECT_THAT(store.count_by_tenant(), ElementsAre(TenantCount{std::nullopt, 2, 1},
                                                   TenantCount{"a", 3, 1}, TenantCount{"b", 1, 1}));
  SessionStore scoped_a = open_store(scoped("a"));
  EXPECT_THAT(scoped_a.count_by_tenant(), ElementsAre(TenantCount{"a", 3, 1}));
  SessionStore scoped_z = open_store(scoped("z"));
  EXPECT_TRUE(scoped_z.count_by_tenant().empty());
}

TEST_P(LifecycleContract, RevokeTenantRemovesExactlyThatTenantEverywhere) {
  SessionStore store = open_store();
  SessionStore other = open_store();
  std::vector<NewSession> t1;
  t1.push_back(store.create("alice", in_tenant("t1")));
  t1.push_back(store.create("bob", in_tenant("t1")));
  t1.push_back(store.create_anonymous(in_tenant("t1")));
  t1.push_back(other.create("carol", in_tenant("t1")));  // created by another store
  const NewSession t2 = store.create("alice", in_tenant("t2"));
  const NewSession t1_upper = store.create("alice", in_tenant("T1"));
  const NewSession no_tenant = other.create("alice");
  std::vector<std::string> t1_ids;
  t1_ids.reserve(t1.size());
  for (const NewSession& session : t1) t1_ids.push_back(session.session.id);
  events_->clear();

  EXPECT_EQ(store.revoke_tenant("t1"), t1.size());
  EXPECT_EQ(stored_ids(), sorted({t2.session.id, t1_upper.session.id, no_tenant.session.id}));
  for (const NewSession& session : t1) {
    EXPECT_FALSE(store.validate(session.token).has_value());
    EXPECT_FALSE(other.validate(session.token).has_value()) << "the other store still serves it";
  }
  EXPECT_TRUE(store.validate(t2.token).has_value());
  EXPECT_TRUE(store.validate(t1_upper.token).has_value());
  EXPECT_TRUE(other.validate(no_tenant.token).has_value());

  const std::vector<SessionEvent> tenant_events = events_->of(SessionEventType::kTenantRevoked);
  ASSERT_EQ(tenant_events.size(), 1U);
  EXPECT_EQ(tenant_events[0].detail, "t1");
  EXPECT_EQ(tenant_events[0].count, t1.size());
  EXPECT_THAT(event_ids(events_->of(SessionEventType::kRevoked)), UnorderedElementsAreArray(t1_ids))
      << "one kRevoked per session of the tenant, the other store's included";
  EXPECT_EQ(store.revoke_tenant("t1"), 0U) << "nothing left to revoke";
}

TEST_P(LifecycleContract, ATenantScopedStoreRevokesNoOtherTenant) {
  SessionStore store = open_store();
  const NewSession t1 = store.create("alice", in_tenant("t1"));
  const NewSession t2 = store.create("alice", in_tenant("t2"));
  SessionStore scoped_t2 = open_store(scoped("t2"));
  EXPECT_EQ(scoped_t2.revoke_tenant("t1"), 0U);
  EXPECT_EQ(stored_ids(), sorted({t1.session.id, t2.session.id}));
  EXPECT_TRUE(store.validate(t1.token).has_value());
  SessionQuery other_tenant;
  other_tenant.tenant_id = "t1";
  EXPECT_TRUE(scoped_t2.list_sessions(other_tenant).sessions.empty());
  EXPECT_THAT(ids_of(scoped_t2.list_sessions(SessionQuery{}).sessions), ElementsAre(t2.session.id));
  EXPECT_EQ(scoped_t2.revoke_tenant("t2"), 1U);
  EXPECT_EQ(stored_ids(), std::vector<std::string>{t1.session.id});
}

// ------------------------------------------------------------------------------------------------
// 7. Events
// ------------------------------------------------------------------------------------------------

TEST_P(LifecycleContract, TheNewCallsReportTheirEventsWithTheRightIds) {
  SessionStore store = open_store();
  const NewSession visitor = store.create_anonymous();
  const std::optional<NewSession> attached = store.attach_user(visitor.token, "alice");
  ASSERT_TRUE(attached.has_value());
  const std::vector<SessionEvent> attach_events = events_->of(SessionEventType::kUserAttached);
  ASSERT_EQ(attach_events.size(), 1U);
  EXPECT_EQ(attach_events[0].session_id, visitor.session.id);
  EXPECT_EQ(attach_events[0].replaced_by, attached->session.id);
  EXPECT_EQ(attach_events[0].user_id, "alice");

  clock_.advance(kMinute);
  const std::optional<NewSession> fresh = store.reauthenticate(attached->token);
  ASSERT_TRUE(fresh.has_value());
  const std::vector<SessionEvent> reauth_events = events_->of(SessionEventType::kReauthenticated);
  ASSERT_EQ(reauth_events.size(), 1U);
  EXPECT_EQ(reauth_events[0].session_id, attached->session.id);
  EXPECT_EQ(reauth_events[0].replaced_by, fresh->session.id);
  EXPECT_EQ(reauth_events[0].user_id, "alice");

  clock_.advance(kMinute);
  ASSERT_TRUE(store.extend(fresh->token).has_value());
  const std::vector<SessionEvent> extend_events = events_->of(SessionEventType::kExtended);
  ASSERT_EQ(extend_events.size(), 1U);
  EXPECT_EQ(extend_events[0].session_id, fresh->session.id);
  EXPECT_EQ(extend_events[0].user_id, "alice");

  // A call that finds nothing reports nothing; no event carries a token.
  EXPECT_FALSE(store.extend(pylon::generate_token()).has_value());
  EXPECT_EQ(events_->of(SessionEventType::kExtended).size(), 1U);
  for (const SessionEventType type :
       {SessionEventType::kUserAttached, SessionEventType::kReauthenticated,
        SessionEventType::kExtended}) {
    for (const SessionEvent& event : events_->of(type)) {
      for (const std::string* token : {&visitor.token, &attached->token, &fresh->token}) {
        EXPECT_FALSE(pylon::test::contains_raw_token(
            event.session_id + event.replaced_by + event.user_id + event.detail, *token));
      }
    }
  }
}

}  // namespace

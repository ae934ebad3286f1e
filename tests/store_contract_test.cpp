// The SessionStore contract, run on every backend from one parameterised suite (parameters
// "sqlite" and "postgres", a fresh database per test) with a ManualClock (no test sleeps):
// create, validate, find, revoke, revoke_id, revoke_user, list_user, purge_expired; restart
// persistence by destroying and reopening; absolute and idle expiry with sliding written at most
// once per touch_interval (read back from the raw table); caps; malformed tokens; raw tokens
// absent from every table; adoption of a _pylon_sessions table written by pylon's runtime;
// write-through failures made for real (another connection holding the lock writes need, or a
// trigger refusing rows): failed creates change nothing, failed revokes fail closed and reach
// storage with the next write; the call pattern seen through a recording decorator around the
// real backend (reads never touch storage, one slide write per interval); and 8 threads at once.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "session_backend.hpp"
#include "support/forwarding_backend.hpp"
#include "support/test_database.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::test::is_live;
using pylon::test::pylon_rows;
using pylon::test::PylonRow;

using pylon::CreateOptions;
using pylon::ErrorCode;
using pylon::NewSession;
using pylon::Session;
using pylon::SessionStore;
using pylon::StoreOptions;
using pylon::test::ManualClock;
using pylon::test::same_session;
using pylon::test::TestDatabase;
using ::testing::ElementsAre;

constexpr std::int64_t kMinute = 60;
constexpr std::int64_t kHour = 60 * kMinute;
constexpr std::int64_t kDay = 24 * kHour;

std::vector<std::string> ids_of(const std::vector<Session>& sessions) {
  std::vector<std::string> ids;
  ids.reserve(sessions.size());
  for (const Session& session : sessions) ids.push_back(session.id);
  return ids;
}

// A store on a fresh database of the backend under test, with the default durations and a
// manual clock.
class StoreContract : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &db_)); }

  [[nodiscard]] StoreOptions options() const {
    StoreOptions options;
    options.clock = clock_.fn();
    return options;
  }
  [[nodiscard]] SessionStore open_store() const { return open_store(options()); }
  [[nodiscard]] SessionStore open_store(const StoreOptions& options) const {
    return SessionStore::open(db_->url(), options);
  }
  // A store whose writes give up after ~100 ms of lock contention.
  [[nodiscard]] SessionStore open_impatient_store() const {
    return SessionStore::open(db_->impatient_url(), options());
  }

  std::unique_ptr<TestDatabase> db_;
  ManualClock clock_{1'700'000'000};
};

INSTANTIATE_TEST_SUITE_P(Backends, StoreContract,
                         ::testing::ValuesIn(pylon::test::contract_backends()),
                         pylon::test::backend_name);

TEST_P(StoreContract, CreateReturnsATokenAndTheSessionItNames) {
  SessionStore store = open_store();
  const std::int64_t now = clock_.now();
  CreateOptions create;
  create.tenant_id = "acme";
  create.device = "Firefox on Linux";
  create.ip = "198.51.100.7";
  create.data = std::string("\0\xff\xfe{cart:3}", 11);
  const NewSession created = store.create("user-42", create);

  EXPECT_TRUE(pylon::is_well_formed_token(created.token)) << created.token;
  EXPECT_EQ(created.session.id, pylon::session_id_for_token(created.token));
  EXPECT_EQ(created.session.user_id, "user-42");
  EXPECT_EQ(created.session.tenant_id, create.tenant_id);
  EXPECT_EQ(created.session.device, create.device);
  EXPECT_EQ(created.session.ip, create.ip);
  EXPECT_TRUE(created.session.data == create.data);
  EXPECT_EQ(created.session.created_at, now);
  EXPECT_EQ(created.session.last_seen_at, now);
  EXPECT_EQ(created.session.expires_at, now + kHour) << "min(24 h cap, 1 h idle)";
  EXPECT_EQ(created.session.absolute_expires_at, now + kDay);
}

TEST_P(StoreContract, CreateWithoutOptionsLeavesOptionalFieldsEmpty) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  EXPECT_EQ(created.session.tenant_id, std::nullopt);
  EXPECT_EQ(created.session.device, std::nullopt);
  EXPECT_EQ(created.session.ip, std::nullopt);
  EXPECT_EQ(created.session.data, "");
}

TEST_P(StoreContract, CreateIsInStorageBeforeItReturns) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  EXPECT_TRUE(db_->has(created.session.id));
  EXPECT_EQ(db_->column("expires_at", created.session.id), created.session.expires_at);
  EXPECT_EQ(db_->count(), 1);
}

TEST_P(StoreContract, EveryCreateGetsAFreshToken) {
  SessionStore store = open_store();
  std::set<std::string> tokens;
  for (int i = 0; i < 50; ++i) tokens.insert(store.create("alice").token);
  EXPECT_EQ(tokens.size(), 50U);
  EXPECT_EQ(store.size(), 50U);
}

TEST_P(StoreContract, IdleTimeoutZeroMeansTheAbsoluteCapAlone) {
  StoreOptions opts = options();
  opts.idle_timeout = std::chrono::seconds(0);
  SessionStore store = open_store(opts);
  const NewSession created = store.create("alice");
  EXPECT_EQ(created.session.expires_at, clock_.now() + kDay);
  clock_.advance(kDay - 1);
  EXPECT_TRUE(store.find(created.session.id).has_value()) << "no idle expiry";
  clock_.advance(1);
  EXPECT_FALSE(store.validate(created.token).has_value());
}

TEST_P(StoreContract, AnAbsoluteTtlShorterThanIdleCapsTheFirstExpiry) {
  StoreOptions opts = options();
  opts.absolute_ttl = std::chrono::minutes(30);
  SessionStore store = open_store(opts);
  const NewSession created = store.create("alice");
  EXPECT_EQ(created.session.expires_at, clock_.now() + 1800);
  EXPECT_EQ(created.session.absolute_expires_at, clock_.now() + 1800);
}

TEST_P(StoreContract, CreateRefusesBadArgumentsAndStoresNothing) {
  SessionStore store = open_store();
  store.create("alice");
  EXPECT_PYLON_ERROR(store.create(""), ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(store.create(std::string("al\0ice", 6)), ErrorCode::kInvalidArgument);
  CreateOptions nul_device;
  nul_device.device = std::string("agent\0x", 7);
  EXPECT_PYLON_ERROR(store.create("bob", nul_device), ErrorCode::kInvalidArgument);
  CreateOptions nul_tenant;
  nul_tenant.tenant_id = std::string("\0", 1);
  EXPECT_PYLON_ERROR(store.create("bob", nul_tenant), ErrorCode::kInvalidArgument);
  CreateOptions nul_ip;
  nul_ip.ip = std::string("10.0.0.1\0", 9);
  EXPECT_PYLON_ERROR(store.create("bob", nul_ip), ErrorCode::kInvalidArgument);
  EXPECT_EQ(store.size(), 1U);
  EXPECT_TRUE(store.list_user("bob").empty());
  EXPECT_EQ(db_->count(), 1);
}

TEST_P(StoreContract, ValidateReturnsTheCreatedSession) {
  SessionStore store = open_store();
  CreateOptions create;
  create.device = "phone";
  create.data = std::string("\x00\x01\x02", 3);
  const NewSession created = store.create("alice", create);
  const auto validated = store.validate(created.token);
  ASSERT_TRUE(validated.has_value());
  EXPECT_TRUE(same_session(created.session, *validated));
}

TEST_P(StoreContract, FindReturnsTheSessionWithoutSliding) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  clock_.advance(30 * kMinute);
  const auto found = store.find(created.session.id);
  ASSERT_TRUE(found.has_value());
  EXPECT_TRUE(same_session(created.session, *found));
  clock_.advance(30 * kMinute);  // one hour after creation, with only find() in between
  EXPECT_FALSE(store.find(created.session.id).has_value());
  EXPECT_FALSE(store.validate(created.token).has_value());
}

TEST_P(StoreContract, UnknownTokensAndIdsAreNotFound) {
  SessionStore store = open_store();
  store.create("alice");
  const std::string stranger = pylon::generate_token();
  EXPECT_FALSE(store.validate(stranger).has_value());
  EXPECT_FALSE(store.find(pylon::session_id_for_token(stranger)).has_value());
  EXPECT_FALSE(store.revoke(stranger));
  EXPECT_FALSE(store.revoke_id(pylon::session_id_for_token(stranger)));
  EXPECT_EQ(store.revoke_user("nobody"), 0U);
  EXPECT_TRUE(store.list_user("nobody").empty());
  EXPECT_EQ(store.size(), 1U);
}

TEST_P(StoreContract, MalformedTokensAreRejectedWithoutError) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  std::string upper = created.token;
  std::transform(upper.begin() + 6, upper.end(), upper.begin() + 6, [](char c) {
    return (c >= 'a' && c <= 'f') ? static_cast<char>(c - 'a' + 'A') : c;
  });
  std::string with_nul = created.token;
  with_nul[40] = '\0';
  const std::vector<std::string> malformed = {
      "",
      "pylon_",
      created.token.substr(0, 69),
      created.token + "0",
      upper,
      "xylon_" + created.token.substr(6),
      created.token.substr(6),  // the hex without its prefix
      created.session.id,       // an id is not a token
      with_nul,
      std::string(4096, 'a'),
  };
  for (const std::string& token : malformed) {
    std::optional<Session> validated;
    EXPECT_NO_THROW(validated = store.validate(token)) << token;
    EXPECT_FALSE(validated.has_value()) << token;
    bool revoked = true;
    EXPECT_NO_THROW(revoked = store.revoke(token)) << token;
    EXPECT_FALSE(revoked) << token;
  }
  for (const std::string& id : {std::string(), std::string("abc"), created.token,
                                std::string(64, 'G'), std::string(200, 'a')}) {
    std::optional<Session> found;
    EXPECT_NO_THROW(found = store.find(id)) << id;
    EXPECT_FALSE(found.has_value()) << id;
    bool revoked = true;
    EXPECT_NO_THROW(revoked = store.revoke_id(id)) << id;
    EXPECT_FALSE(revoked) << id;
  }
  EXPECT_TRUE(store.validate(created.token).has_value()) << "the real session is unaffected";
  EXPECT_EQ(db_->count(), 1);
}

TEST_P(StoreContract, StoreCanBeMoved) {
  SessionStore first = open_store();
  const NewSession created = first.create("alice");
  SessionStore second = std::move(first);
  EXPECT_TRUE(second.validate(created.token).has_value());
  SessionStore third = open_store();
  third = std::move(second);
  EXPECT_TRUE(third.validate(created.token).has_value());
}

TEST_P(StoreContract, SessionsSurviveARestart) {
  std::vector<NewSession> created;
  {
    SessionStore store = open_store();
    for (int i = 0; i < 3; ++i) {
      CreateOptions create;
      create.tenant_id = "t" + std::to_string(i);
      create.device = "device " + std::to_string(i);
      create.data = std::string("\0\xff", 2) + std::to_string(i);
      created.push_back(store.create("user-" + std::to_string(i % 2), create));
      clock_.advance(1);
    }
  }
  SessionStore store = open_store();
  EXPECT_EQ(store.size(), 3U);
  for (const NewSession& c : created) {
    const auto found = store.find(c.session.id);
    ASSERT_TRUE(found.has_value());
    EXPECT_TRUE(same_session(c.session, *found));
    EXPECT_TRUE(store.validate(c.token).has_value());
  }
  EXPECT_EQ(store.list_user("user-0").size(), 2U);
}

TEST_P(StoreContract, RevokedSessionsNeverComeBackAfterARestart) {
  NewSession kept;
  NewSession by_token;
  NewSession by_id;
  NewSession by_user;
  {
    SessionStore store = open_store();
    kept = store.create("alice");
    by_token = store.create("alice");
    by_id = store.create("alice");
    by_user = store.create("bob");
    ASSERT_TRUE(store.revoke(by_token.token));
    ASSERT_TRUE(store.revoke_id(by_id.session.id));
    ASSERT_EQ(store.revoke_user("bob"), 1U);
  }
  for (int restart = 0; restart < 2; ++restart) {
    SessionStore store = open_store();
    EXPECT_TRUE(store.validate(kept.token).has_value());
    EXPECT_FALSE(store.validate(by_token.token).has_value());
    EXPECT_FALSE(store.validate(by_id.token).has_value());
    EXPECT_FALSE(store.validate(by_user.token).has_value());
    EXPECT_EQ(store.size(), 1U);
  }
  EXPECT_EQ(db_->count(), 1);
}

TEST_P(StoreContract, RevokeDeletesFromStorageBeforeReturning) {
  SessionStore store = open_store();
  const NewSession a = store.create("alice");
  const NewSession b = store.create("alice");
  EXPECT_TRUE(store.revoke(a.token));
  EXPECT_FALSE(db_->has(a.session.id));
  EXPECT_FALSE(store.validate(a.token).has_value());
  EXPECT_FALSE(store.find(a.session.id).has_value());
  EXPECT_FALSE(store.revoke(a.token)) << "a second revoke finds nothing";
  EXPECT_TRUE(store.validate(b.token).has_value());
  EXPECT_EQ(store.size(), 1U);
}

TEST_P(StoreContract, RevokeIdDeletesFromStorageBeforeReturning) {
  SessionStore store = open_store();
  const NewSession a = store.create("alice");
  EXPECT_TRUE(store.revoke_id(a.session.id));
  EXPECT_FALSE(db_->has(a.session.id));
  EXPECT_FALSE(store.validate(a.token).has_value());
  EXPECT_FALSE(store.revoke_id(a.session.id));
}

TEST_P(StoreContract, RevokeUserSignsOutEverywhereAndCountsRemovedRows) {
  SessionStore store = open_store();
  const NewSession stale = store.create("alice");
  clock_.advance(50 * kMinute);
  const NewSession a1 = store.create("alice");
  const NewSession a2 = store.create("alice");
  const NewSession b = store.create("bob");
  clock_.advance(15 * kMinute);  // `stale` is now idle-expired
  ASSERT_FALSE(store.find(stale.session.id).has_value());

  EXPECT_EQ(store.revoke_user("alice"), 3U) << "every row storage removed, the expired one too";
  EXPECT_FALSE(store.validate(a1.token).has_value());
  EXPECT_FALSE(store.validate(a2.token).has_value());
  EXPECT_TRUE(store.list_user("alice").empty());
  EXPECT_TRUE(store.validate(b.token).has_value());
  EXPECT_EQ(db_->count("user_id = 'alice'"), 0) << "every row of the user is deleted";
  EXPECT_EQ(db_->count("user_id = 'bob'"), 1);
  EXPECT_EQ(store.revoke_user("alice"), 0U);
}

TEST_P(StoreContract, ListUserIsOldestFirstAndOnlyThatUsersLiveSessions) {
  SessionStore store = open_store();
  const NewSession a1 = store.create("alice");
  clock_.advance(10);
  const NewSession b1 = store.create("bob");
  clock_.advance(10);
  const NewSession a2 = store.create("alice");
  clock_.advance(10);
  const NewSession a3 = store.create("alice");
  clock_.advance(10);
  const NewSession a4 = store.create("alice");
  ASSERT_TRUE(store.revoke(a3.token));
  EXPECT_THAT(ids_of(store.list_user("alice")),
              ElementsAre(a1.session.id, a2.session.id, a4.session.id));
  EXPECT_THAT(ids_of(store.list_user("bob")), ElementsAre(b1.session.id));
  EXPECT_TRUE(store.list_user("alic").empty());
  // Sliding a1 does not change its place: the order is by creation.
  clock_.advance(120);
  ASSERT_TRUE(store.validate(a1.token).has_value());
  EXPECT_THAT(ids_of(store.list_user("alice")),
              ElementsAre(a1.session.id, a2.session.id, a4.session.id));
}

TEST_P(StoreContract, IdleTimeoutExpiresAnUnusedSession) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  clock_.advance(kHour - 1);
  EXPECT_TRUE(store.find(created.session.id).has_value());
  clock_.advance(1);  // expires_at <= now: expired
  EXPECT_FALSE(store.validate(created.token).has_value());
  EXPECT_FALSE(store.find(created.session.id).has_value());
  EXPECT_TRUE(store.list_user("alice").empty());
  EXPECT_EQ(store.size(), 1U) << "size() counts expired sessions until they are purged";
  EXPECT_EQ(store.purge_expired(), 1U);
  EXPECT_EQ(store.size(), 0U);
}

TEST_P(StoreContract, ValidatingSlidesTheIdleExpiry) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  for (int i = 0; i < 6; ++i) {
    clock_.advance(50 * kMinute);
    const auto session = store.validate(created.token);
    ASSERT_TRUE(session.has_value()) << "after " << (i + 1) * 50 << " minutes of activity";
    EXPECT_EQ(session->expires_at, clock_.now() + kHour);
    EXPECT_EQ(session->last_seen_at, clock_.now());
  }
  clock_.advance(kHour);
  EXPECT_FALSE(store.validate(created.token).has_value());
}

TEST_P(StoreContract, AbsoluteLifetimeEndsEvenAConstantlyActiveSession) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  const std::int64_t cap = created.session.created_at + kDay;
  while (clock_.now() + 20 * kMinute < cap) {
    clock_.advance(20 * kMinute);
    const auto session = store.validate(created.token);
    ASSERT_TRUE(session.has_value()) << "at " << clock_.now() - created.session.created_at << " s";
    EXPECT_LE(session->expires_at, cap) << "sliding never passes the absolute cap";
  }
  clock_.set(cap - 1);
  const auto last = store.validate(created.token);
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(last->expires_at, cap);
  clock_.set(cap);
  EXPECT_FALSE(store.validate(created.token).has_value());
  EXPECT_FALSE(store.find(created.session.id).has_value());
  EXPECT_TRUE(store.list_user("alice").empty());
}

TEST_P(StoreContract, SlidesAreWrittenAtMostOncePerTouchInterval) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  const std::string& id = created.session.id;
  const std::int64_t t0 = clock_.now();
  ASSERT_EQ(db_->column("last_seen_at", id), t0);

  clock_.advance(30);
  auto session = store.validate(created.token);
  ASSERT_TRUE(session.has_value());
  EXPECT_EQ(db_->column("last_seen_at", id), t0) << "within the interval nothing is written";
  EXPECT_EQ(db_->column("expires_at", id), t0 + kHour);
  EXPECT_EQ(session->last_seen_at, t0) << "last_seen_at is what storage has";

  clock_.advance(31);  // t0 + 61
  session = store.validate(created.token);
  ASSERT_TRUE(session.has_value());
  EXPECT_EQ(db_->column("last_seen_at", id), t0 + 61) << "past the interval the slide is written";
  EXPECT_EQ(db_->column("expires_at", id), t0 + 61 + kHour);
  EXPECT_EQ(session->last_seen_at, t0 + 61);
  EXPECT_EQ(session->expires_at, t0 + 61 + kHour);

  for (int i = 0; i < 5; ++i) {
    clock_.advance(10);  // up to t0 + 111: within the interval of the last write
    ASSERT_TRUE(store.validate(created.token).has_value());
    EXPECT_EQ(db_->column("last_seen_at", id), t0 + 61);
  }
  clock_.advance(15);  // t0 + 126
  ASSERT_TRUE(store.validate(created.token).has_value());
  EXPECT_EQ(db_->column("last_seen_at", id), t0 + 126);
  EXPECT_EQ(db_->column("expires_at", id), t0 + 126 + kHour);
}

TEST_P(StoreContract, ARestartKeepsTheWrittenSlide) {
  NewSession created;
  {
    SessionStore store = open_store();
    created = store.create("alice");
    clock_.advance(61);
    ASSERT_TRUE(store.validate(created.token).has_value());
  }
  const std::int64_t slid_to = created.session.created_at + 61 + kHour;
  clock_.set(slid_to - 5);  // past the unslid expiry (created_at + 1 h)
  {
    SessionStore store = open_store();
    const auto found = store.find(created.session.id);
    ASSERT_TRUE(found.has_value()) << "the slide written before the restart is kept";
    EXPECT_EQ(found->expires_at, slid_to);
    EXPECT_EQ(found->last_seen_at, created.session.created_at + 61);
  }
  clock_.set(slid_to);
  SessionStore store = open_store();
  EXPECT_FALSE(store.validate(created.token).has_value());
}

TEST_P(StoreContract, ExpiredSessionsAreNeverReturnedAfterARestart) {
  NewSession created;
  {
    SessionStore store = open_store();
    created = store.create("alice");
  }
  clock_.advance(kHour);
  SessionStore store = open_store();
  EXPECT_FALSE(store.validate(created.token).has_value());
  EXPECT_FALSE(store.find(created.session.id).has_value());
  EXPECT_TRUE(store.list_user("alice").empty());
  EXPECT_EQ(store.size(), 1U) << "size() counts expired sessions until they are purged";
}

TEST_P(StoreContract, PurgeExpiredDeletesExpiredRows) {
  SessionStore store = open_store();
  const NewSession old1 = store.create("alice");
  const NewSession old2 = store.create("bob");
  clock_.advance(50 * kMinute);
  const NewSession young = store.create("alice");
  clock_.advance(15 * kMinute);
  ASSERT_EQ(db_->count(), 3);

  EXPECT_EQ(store.purge_expired(), 2U);
  EXPECT_EQ(db_->count(), 1);
  EXPECT_FALSE(db_->has(old1.session.id));
  EXPECT_FALSE(db_->has(old2.session.id));
  EXPECT_TRUE(db_->has(young.session.id));
  EXPECT_EQ(store.purge_expired(), 0U);
  EXPECT_TRUE(store.validate(young.token).has_value());
  EXPECT_EQ(store.size(), 1U);
}

TEST_P(StoreContract, MaxSessionsPerUserEvictsTheOldest) {
  StoreOptions opts = options();
  opts.max_sessions_per_user = 3;
  std::vector<NewSession> alice;
  NewSession bob;
  {
    SessionStore store = open_store(opts);
    bob = store.create("bob");
    for (int i = 0; i < 5; ++i) {
      clock_.advance(1);
      alice.push_back(store.create("alice"));
    }
    EXPECT_FALSE(store.validate(alice[0].token).has_value());
    EXPECT_FALSE(store.validate(alice[1].token).has_value());
    EXPECT_THAT(ids_of(store.list_user("alice")),
                ElementsAre(alice[2].session.id, alice[3].session.id, alice[4].session.id));
    EXPECT_TRUE(store.validate(bob.token).has_value());
    EXPECT_EQ(db_->count("user_id = 'alice'"), 3);
  }
  SessionStore store = open_store(opts);
  EXPECT_EQ(store.list_user("alice").size(), 3U);
  EXPECT_FALSE(store.validate(alice[0].token).has_value());
  EXPECT_TRUE(store.validate(alice[4].token).has_value());
}

TEST_P(StoreContract, MaxDataBytesRefusesLargerPayloadsAndStoresNothing) {
  StoreOptions opts = options();
  opts.max_data_bytes = 16;
  SessionStore store = open_store(opts);
  CreateOptions fits;
  fits.data = std::string(16, '\0');
  const NewSession created = store.create("alice", fits);
  EXPECT_EQ(created.session.data.size(), 16U);
  const std::int64_t rows = db_->count();

  CreateOptions too_big;
  too_big.data = std::string(17, 'x');
  EXPECT_PYLON_ERROR(store.create("alice", too_big), ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(store.create("bob", too_big), ErrorCode::kInvalidArgument);
  EXPECT_EQ(db_->count(), rows);
  EXPECT_EQ(store.size(), 1U);
  EXPECT_EQ(store.list_user("alice").size(), 1U);
  EXPECT_TRUE(store.list_user("bob").empty());
}

TEST_P(StoreContract, ReadsNeedNoLock) {
  SessionStore store = open_impatient_store();
  const NewSession created = store.create("alice");
  auto block = db_->block_writes();
  clock_.advance(30);  // within the touch interval: validate writes nothing
  EXPECT_TRUE(store.validate(created.token).has_value());
  EXPECT_TRUE(store.find(created.session.id).has_value());
  EXPECT_EQ(store.list_user("alice").size(), 1U);
  EXPECT_EQ(store.size(), 1U);
  block.reset();
}

TEST_P(StoreContract, CreateUnderLockThrowsBusyAndChangesNothing) {
  NewSession before;
  {
    SessionStore store = open_impatient_store();
    before = store.create("alice");
    auto block = db_->block_writes();
    EXPECT_PYLON_ERROR(store.create("alice"), ErrorCode::kBusy);
    EXPECT_PYLON_ERROR(store.create("bob"), ErrorCode::kBusy);
    EXPECT_EQ(store.size(), 1U);
    EXPECT_THAT(ids_of(store.list_user("alice")), ElementsAre(before.session.id));
    EXPECT_TRUE(store.list_user("bob").empty());
    block.reset();
    EXPECT_EQ(store.size(), 1U);
  }
  EXPECT_EQ(db_->count(), 1);
  SessionStore store = open_store();
  EXPECT_EQ(store.size(), 1U);
  EXPECT_TRUE(store.validate(before.token).has_value());
}

TEST_P(StoreContract, RevokeUnderLockFailsClosedAndReachesStorageWithTheNextWrite) {
  SessionStore store = open_impatient_store();
  const NewSession revoked = store.create("alice");
  const NewSession kept = store.create("alice");
  auto block = db_->block_writes();
  const auto error = pylon::test::capture_pylon_error([&] { store.revoke(revoked.token); });
  ASSERT_TRUE(error.has_value()) << "a revoke that cannot reach storage must throw";
  EXPECT_EQ(error->code(), ErrorCode::kBusy) << error->what();
  EXPECT_FALSE(pylon::test::contains_raw_token(error->what(), revoked.token));
  // Denied at once, in this process.
  EXPECT_FALSE(store.validate(revoked.token).has_value());
  EXPECT_FALSE(store.find(revoked.session.id).has_value());
  EXPECT_THAT(ids_of(store.list_user("alice")), ElementsAre(kept.session.id));
  EXPECT_TRUE(store.validate(kept.token).has_value());
  block.reset();
  EXPECT_TRUE(db_->has(revoked.session.id)) << "storage still has it until the next write";

  const NewSession next = store.create("bob");  // the next write retries the delete first
  EXPECT_FALSE(db_->has(revoked.session.id)) << "the pending delete reached storage";
  EXPECT_TRUE(db_->has(next.session.id));
  EXPECT_FALSE(store.validate(revoked.token).has_value());

  SessionStore fresh = open_store();
  EXPECT_FALSE(fresh.validate(revoked.token).has_value());
  EXPECT_TRUE(fresh.validate(kept.token).has_value());
  EXPECT_TRUE(fresh.validate(next.token).has_value());
}

TEST_P(StoreContract, RevokeIdUnderLockFailsClosedAndTheDestructorRetriesTheDelete) {
  NewSession revoked;
  {
    SessionStore store = open_impatient_store();
    revoked = store.create("alice");
    auto block = db_->block_writes();
    EXPECT_PYLON_ERROR(store.revoke_id(revoked.session.id), ErrorCode::kBusy);
    EXPECT_FALSE(store.validate(revoked.token).has_value());
    block.reset();
  }  // no further write: the destructor makes the last attempt
  EXPECT_FALSE(db_->has(revoked.session.id));
  SessionStore fresh = open_store();
  EXPECT_FALSE(fresh.validate(revoked.token).has_value());
}

TEST_P(StoreContract, RevokeUserUnderLockFailsClosed) {
  SessionStore store = open_impatient_store();
  const NewSession a1 = store.create("alice");
  const NewSession a2 = store.create("alice");
  const NewSession b = store.create("bob");
  {
    auto block = db_->block_writes();
    EXPECT_PYLON_ERROR(store.revoke_user("alice"), ErrorCode::kBusy);
    EXPECT_FALSE(store.validate(a1.token).has_value());
    EXPECT_FALSE(store.validate(a2.token).has_value());
    EXPECT_TRUE(store.list_user("alice").empty());
    EXPECT_TRUE(store.validate(b.token).has_value());
    block.reset();
  }
  store.create("carol");
  EXPECT_EQ(db_->count("user_id = 'alice'"), 0);
  SessionStore fresh = open_store();
  EXPECT_FALSE(fresh.validate(a1.token).has_value());
  EXPECT_FALSE(fresh.validate(a2.token).has_value());
  EXPECT_TRUE(fresh.validate(b.token).has_value());
}

TEST_P(StoreContract, SlideWriteUnderLockThrowsAndTheSessionStaysAsStored) {
  SessionStore store = open_impatient_store();
  const NewSession created = store.create("alice");
  auto block = db_->block_writes();
  clock_.advance(61);
  EXPECT_PYLON_ERROR(store.validate(created.token), ErrorCode::kBusy);
  const auto found = store.find(created.session.id);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->expires_at, created.session.expires_at) << "the cache is as storage is";
  EXPECT_EQ(found->last_seen_at, created.session.last_seen_at);
  block.reset();
  const auto validated = store.validate(created.token);
  ASSERT_TRUE(validated.has_value());
  EXPECT_EQ(db_->column("last_seen_at", created.session.id), clock_.now());
}

TEST_P(StoreContract, PurgeUnderLockThrowsBusyThenWorks) {
  SessionStore store = open_impatient_store();
  store.create("alice");
  clock_.advance(kHour);
  auto block = db_->block_writes();
  EXPECT_PYLON_ERROR(store.purge_expired(), ErrorCode::kBusy);
  block.reset();
  EXPECT_EQ(db_->count(), 1);
  EXPECT_EQ(store.purge_expired(), 1U);
  EXPECT_EQ(db_->count(), 0);
}

// What one of the threads of EightThreadsCreateValidateAndRevokeAtOnce saw.
struct ThreadOutcome {
  std::vector<std::string> alive;
  std::vector<std::string> revoked;
  std::vector<std::string> problems;
};

// One of those threads: creates, validates and revokes sessions of its own user, checking as it
// goes that its live sessions stay live.
void create_validate_and_revoke(SessionStore& store, ThreadOutcome& outcome, int thread,
                                int sessions) {
  const std::string user = "user-" + std::to_string(thread);
  try {
    for (int i = 0; i < sessions; ++i) {
      const NewSession created = store.create(user);
      const auto validated = store.validate(created.token);
      if (!validated || validated->user_id != user) {
        outcome.problems.emplace_back("fresh session did not validate");
      }
      if (i % 3 == 0) {
        if (!store.revoke(created.token)) outcome.problems.emplace_back("revoke was false");
        if (store.validate(created.token)) outcome.problems.emplace_back("revoked validated");
        outcome.revoked.push_back(created.token);
      } else {
        outcome.alive.push_back(created.token);
      }
      for (const std::string& token : outcome.alive) {
        if (!store.validate(token)) outcome.problems.emplace_back("live token lost");
      }
      (void)store.list_user(user);
      (void)store.size();
    }
  } catch (const std::exception& error) {
    outcome.problems.push_back(std::string("threw: ") + error.what());
  }
}

TEST_P(StoreContract, EightThreadsCreateValidateAndRevokeAtOnce) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 25;
  using Outcome = ThreadOutcome;
  std::vector<Outcome> outcomes(kThreads);
  {
    SessionStore store = open_store();
    std::vector<std::thread> threads;
    threads.reserve(kThreads);
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back(create_validate_and_revoke, std::ref(store),
                           std::ref(outcomes[static_cast<std::size_t>(t)]), t, kPerThread);
    }
    for (std::thread& thread : threads) thread.join();

    std::size_t alive = 0;
    for (int t = 0; t < kThreads; ++t) {
      const Outcome& outcome = outcomes[static_cast<std::size_t>(t)];
      EXPECT_TRUE(outcome.problems.empty())
          << "thread " << t << ": " << ::testing::PrintToString(outcome.problems);
      EXPECT_EQ(store.list_user("user-" + std::to_string(t)).size(), outcome.alive.size());
      alive += outcome.alive.size();
    }
    EXPECT_EQ(alive, static_cast<std::size_t>(kThreads * (kPerThread - (kPerThread + 2) / 3)));
    EXPECT_EQ(store.size(), alive);
  }

  SessionStore reopened = open_store();
  std::size_t alive = 0;
  for (const Outcome& outcome : outcomes) {
    for (const std::string& token : outcome.alive) {
      EXPECT_TRUE(reopened.validate(token).has_value());
    }
    for (const std::string& token : outcome.revoked) {
      EXPECT_FALSE(reopened.validate(token).has_value());
    }
    alive += outcome.alive.size();
  }
  EXPECT_EQ(reopened.size(), alive);
  EXPECT_EQ(db_->count(), static_cast<std::int64_t>(alive));
}

// ------------------------------------------------------------------------------------------------
// Tokens stay secret
// ------------------------------------------------------------------------------------------------

TEST_P(StoreContract, RawTokensNeverReachStorage) {
  std::vector<NewSession> created;
  {
    SessionStore store = open_store();
    for (int i = 0; i < 5; ++i) {
      CreateOptions create;
      create.device = "device";
      create.data = "payload";
      created.push_back(store.create("alice", create));
    }
    clock_.advance(120);
    for (const NewSession& c : created) ASSERT_TRUE(store.validate(c.token).has_value());
    ASSERT_TRUE(store.revoke(created[0].token));

    const std::string stored = db_->all_tables_text();
    EXPECT_NE(stored.find(created[1].session.id), std::string::npos)
        << "sanity: the ids are in what we read";
    for (const NewSession& c : created) {
      EXPECT_FALSE(pylon::test::contains_raw_token(stored, c.token));
    }
  }
  const std::string stored = db_->all_tables_text();
  EXPECT_NE(stored.find(created[1].session.id), std::string::npos);
  for (const NewSession& c : created) {
    EXPECT_FALSE(pylon::test::contains_raw_token(stored, c.token));
  }
}

// ------------------------------------------------------------------------------------------------
// pylon adoption: a _pylon_sessions table written by pylon's runtime (raw tokens as the key)
// ------------------------------------------------------------------------------------------------

// Writes `rows` into a _pylon_sessions table as pylon's runtime creates it on this backend (the
// older pylon, without tenant_id, when `with_tenant` is false), and an unrelated table.
void write_pylon_table(const TestDatabase& db, const std::vector<PylonRow>& rows,
                       bool with_tenant) {
  const std::string integer = db.is_postgres() ? "BIGINT" : "INTEGER";
  db.exec(
      "CREATE TABLE _pylon_sessions (token TEXT PRIMARY KEY, user_id TEXT NOT NULL, "
      "expires_at " +
      integer + " NOT NULL, created_at " + integer + " NOT NULL, device TEXT" +
      (with_tenant ? ", tenant_id TEXT)" : ")"));
  db.exec("CREATE INDEX _pylon_sessions_user_idx ON _pylon_sessions(user_id)");
  db.exec("CREATE INDEX _pylon_sessions_exp_idx ON _pylon_sessions(expires_at)");
  db.exec("CREATE TABLE app_notes (id INTEGER PRIMARY KEY, body TEXT)");
  db.exec("INSERT INTO app_notes (id, body) VALUES (1, 'kept'), (2, 'also kept')");
  const auto text = [](const std::optional<std::string>& value) -> pylon::test::SqlValue {
    if (value) return *value;
    return nullptr;
  };
  for (const PylonRow& row : rows) {
    std::vector<pylon::test::SqlValue> params = {row.token, row.user_id, row.expires_at,
                                                 row.created_at, text(row.device)};
    if (with_tenant) params.push_back(text(row.tenant_id));
    (void)db.query(with_tenant ? "INSERT INTO _pylon_sessions (token, user_id, expires_at, "
                                 "created_at, device, tenant_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                               : "INSERT INTO _pylon_sessions (token, user_id, expires_at, "
                                 "created_at, device) VALUES (?1, ?2, ?3, ?4, ?5)",
                   params);
  }
}

// The whole adoption scenario, for a table with or without the tenant_id column.
void check_adoption(const TestDatabase& db, bool with_tenant) {
  const std::vector<PylonRow> rows = pylon_rows(with_tenant);
  write_pylon_table(db, rows, with_tenant);
  // The check below can fail: before adoption every token is stored.
  const std::string original = db.all_tables_text();
  for (const PylonRow& row : rows) {
    ASSERT_TRUE(pylon::test::contains_raw_token(original, row.token));
  }

  std::size_t live = 0;
  {
    SessionStore store = SessionStore::open(db.url());
    for (const PylonRow& row : rows) {
      const std::string id = pylon::session_id_for_token(row.token);
      if (!is_live(row)) {
        EXPECT_FALSE(store.validate(row.token).has_value()) << "expired pylon session validated";
        EXPECT_FALSE(store.find(id).has_value());
        continue;
      }
      ++live;
      const auto session = store.validate(row.token);
      ASSERT_TRUE(session.has_value())
          << "unexpired pylon session of " << row.user_id << " (created " << row.created_at
          << ", expires " << row.expires_at << ") does not validate";
      EXPECT_EQ(session->id, id);
      EXPECT_EQ(session->user_id, row.user_id);
      EXPECT_EQ(session->device, row.device);
      EXPECT_EQ(session->tenant_id, row.tenant_id);
      EXPECT_EQ(session->created_at, row.created_at);
      EXPECT_LE(session->expires_at, row.expires_at) << "adoption must not extend a session";
    }
    EXPECT_EQ(store.size(), live);
    const std::string stored = db.all_tables_text();
    for (const PylonRow& row : rows) {
      EXPECT_FALSE(pylon::test::contains_raw_token(stored, row.token))
          << "a raw token of " << row.user_id << " is still stored while the store is open";
    }
  }
  const std::string stored = db.all_tables_text();
  for (const PylonRow& row : rows) {
    EXPECT_FALSE(pylon::test::contains_raw_token(stored, row.token))
        << "a raw token of " << row.user_id << " is still stored after the store closed";
    EXPECT_EQ(db.has(pylon::session_id_for_token(row.token)), is_live(row));
  }
  EXPECT_EQ(db.count(), static_cast<std::int64_t>(live));
  EXPECT_EQ(db.query_int("SELECT count(*) FROM app_notes"), 2) << "other tables are untouched";

  // A second start changes nothing: every live session still validates.
  SessionStore again = SessionStore::open(db.url());
  EXPECT_EQ(again.size(), live);
  for (const PylonRow& row : rows) EXPECT_EQ(again.validate(row.token).has_value(), is_live(row));
}

TEST_P(StoreContract, AdoptsAPylonTableWithTenantId) { check_adoption(*db_, true); }

TEST_P(StoreContract, AdoptsAnOlderPylonTableWithoutTenantId) { check_adoption(*db_, false); }

TEST_P(StoreContract, AdoptedSessionsCanBeRevoked) {
  const std::vector<PylonRow> rows = pylon_rows(true);
  write_pylon_table(*db_, rows, true);
  {
    SessionStore store = SessionStore::open(db_->url());
    EXPECT_TRUE(store.revoke(rows[0].token));
    EXPECT_EQ(store.revoke_user("bob"), 1U);
  }
  SessionStore store = SessionStore::open(db_->url());
  EXPECT_FALSE(store.validate(rows[0].token).has_value());
  EXPECT_FALSE(store.validate(rows[2].token).has_value());
  EXPECT_TRUE(store.validate(rows[1].token).has_value());
  EXPECT_TRUE(store.validate(rows[3].token).has_value());
}

// ------------------------------------------------------------------------------------------------
// The calls the store makes, seen through a recording decorator around the real backend
// ------------------------------------------------------------------------------------------------

// What a RecordingBackend saw: one entry per call, made before the call is forwarded (so failed
// calls are logged too): "load_all", "save <id>", "remove <id>", "remove_user <user>",
// "remove_expired <now>". Shared with the test, since the store owns the backend.
class CallLog {
 public:
  void add(std::string entry) {
    const std::lock_guard<std::mutex> lock(mutex_);
    calls_.push_back(std::move(entry));
  }
  std::vector<std::string> take() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(calls_, {});
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> calls_;
};

// A SessionBackend that forwards every call to a real backend and logs the calls that read all
// rows or write. It changes nothing: every failure the store sees comes from the real database.
class RecordingBackend final : public pylon::test::ForwardingBackend {
 public:
  RecordingBackend(std::unique_ptr<pylon::SessionBackend> real, std::shared_ptr<CallLog> log)
      : ForwardingBackend(std::move(real)), log_(std::move(log)) {}

  void load_each(const std::function<void(const Session&)>& visit) override {
    log_->add("load_each");
    ForwardingBackend::load_each(visit);
  }
  void save(const Session& session) override {
    log_->add("save " + session.id);
    ForwardingBackend::save(session);
  }
  std::vector<pylon::RemovedSession> insert_new(const std::vector<Session>& sessions,
                                                std::size_t max_per_user) override {
    std::string line = "insert_new";
    for (const Session& session : sessions) line += " " + session.id;
    log_->add(line);
    return ForwardingBackend::insert_new(sessions, max_per_user);
  }
  bool remove(std::string_view id) override {
    log_->add("remove " + std::string(id));
    return ForwardingBackend::remove(id);
  }
  std::size_t remove_expired(std::int64_t now) override {
    log_->add("remove_expired " + std::to_string(now));
    return ForwardingBackend::remove_expired(now);
  }
  std::vector<pylon::RemovedSession> remove_matching(const pylon::SessionFilter& filter) override {
    std::string line = "remove_matching";
    if (filter.id) line += " id=" + *filter.id;
    if (filter.user_id) line += " user_id=" + *filter.user_id;
    if (filter.tenant_id) line += " tenant_id=" + *filter.tenant_id;
    if (filter.idp_session_id) line += " idp_session_id=" + *filter.idp_session_id;
    if (filter.except_id) line += " except_id=" + *filter.except_id;
    log_->add(line);
    return ForwardingBackend::remove_matching(filter);
  }
  std::optional<Session> touch(std::string_view id, std::int64_t last_seen_at,
                               std::int64_t expires_at) override {
    log_->add("touch " + std::string(id));
    return ForwardingBackend::touch(id, last_seen_at, expires_at);
  }
  std::optional<Session> update_data(std::string_view id, std::string_view data) override {
    log_->add("update_data " + std::string(id));
    return ForwardingBackend::update_data(id, data);
  }
  std::optional<Session> rotate(std::string_view old_id, std::string_view new_id,
                                std::int64_t now) override {
    log_->add("rotate " + std::string(old_id) + " " + std::string(new_id));
    return ForwardingBackend::rotate(old_id, new_id, now);
  }
  std::size_t remove_expired_batch(std::int64_t now, std::size_t limit) override {
    log_->add("remove_expired_batch " + std::to_string(now) + " " + std::to_string(limit));
    return ForwardingBackend::remove_expired_batch(now, limit);
  }

 private:
  std::shared_ptr<CallLog> log_;
};

class RecordedStoreContract : public StoreContract {
 protected:
  // A store on the database under test (impatient: writes fail fast under a lock), through a
  // RecordingBackend; the log holds what happened after construction.
  [[nodiscard]] SessionStore recorded_store(StoreOptions options = {}) const {
    options.clock = clock_.fn();
    SessionStore store(
        std::make_unique<RecordingBackend>(pylon::open_backend(db_->impatient_url()), log_),
        options);
    EXPECT_THAT(log_->take(), ElementsAre("load_each")) << "construction loads once";
    return store;
  }
  // The stored row with this id.
  [[nodiscard]] std::optional<Session> stored(const std::string& id) const {
    return pylon::test::find_loaded(*db_->open_backend(), id);
  }

  std::shared_ptr<CallLog> log_ = std::make_shared<CallLog>();
};

INSTANTIATE_TEST_SUITE_P(Backends, RecordedStoreContract,
                         ::testing::ValuesIn(pylon::test::contract_backends()),
                         pylon::test::backend_name);

TEST_P(RecordedStoreContract, ConstructionLoadsEveryRowOnceAndHidesExpiredOnes) {
  Session live = pylon::test::make_session("alice", 1);
  live.expires_at = clock_.now() + 100;
  live.absolute_expires_at = clock_.now() + 1000;
  Session dead = pylon::test::make_session("alice", 2);
  dead.expires_at = clock_.now();
  {
    auto backend = db_->open_backend();
    backend->save(live);
    backend->save(dead);
  }
  SessionStore store = recorded_store();
  EXPECT_EQ(store.size(), 2U);
  const auto found = store.find(live.id);
  ASSERT_TRUE(found.has_value());
  EXPECT_TRUE(same_session(live, *found));
  EXPECT_FALSE(store.find(dead.id).has_value());
  EXPECT_THAT(ids_of(store.list_user("alice")), ElementsAre(live.id));
  EXPECT_TRUE(log_->take().empty());
}

TEST_P(RecordedStoreContract, ReadsNeverTouchStorage) {
  SessionStore store = recorded_store();
  const NewSession created = store.create("alice");
  EXPECT_THAT(log_->take(), ElementsAre("insert_new " + created.session.id));
  for (int i = 0; i < 10; ++i) {
    clock_.advance(5);  // 50 s in all: within the touch interval
    ASSERT_TRUE(store.validate(created.token).has_value());
    ASSERT_TRUE(store.find(created.session.id).has_value());
    ASSERT_EQ(store.list_user("alice").size(), 1U);
    ASSERT_EQ(store.size(), 1U);
    ASSERT_FALSE(store.validate(pylon::generate_token()).has_value());
    ASSERT_FALSE(store.validate("garbage").has_value());
    ASSERT_FALSE(store.revoke("garbage"));
  }
  EXPECT_TRUE(log_->take().empty());
}

TEST_P(RecordedStoreContract, ValidateWritesASlideAtMostOncePerTouchInterval) {
  SessionStore store = recorded_store();
  const NewSession created = store.create("alice");
  log_->take();
  const std::string slide = "touch " + created.session.id;
  clock_.advance(61);
  ASSERT_TRUE(store.validate(created.token).has_value());
  ASSERT_TRUE(store.validate(created.token).has_value());
  EXPECT_THAT(log_->take(), ElementsAre(slide));
  clock_.advance(59);
  ASSERT_TRUE(store.validate(created.token).has_value());
  EXPECT_TRUE(log_->take().empty());
  clock_.advance(2);
  ASSERT_TRUE(store.validate(created.token).has_value());
  EXPECT_THAT(log_->take(), ElementsAre(slide));
  const auto row = stored(created.session.id);
  ASSERT_TRUE(row.has_value());
  EXPECT_EQ(row->last_seen_at, clock_.now());
  EXPECT_EQ(row->expires_at, clock_.now() + kHour);
  EXPECT_EQ(row->absolute_expires_at, created.session.created_at + kDay);
}

TEST_P(RecordedStoreContract, AFailedCreateLeavesTheCacheAsStorageIs) {
  SessionStore store = recorded_store();
  const NewSession kept = store.create("alice");
  {
    const auto block = db_->block_writes();
    EXPECT_PYLON_ERROR(store.create("alice"), ErrorCode::kBusy);
    EXPECT_PYLON_ERROR(store.create("bob"), ErrorCode::kBusy);
  }
  EXPECT_EQ(log_->take().size(), 3U) << "one insert each, the failed ones included";
  EXPECT_EQ(store.size(), 1U);
  EXPECT_THAT(ids_of(store.list_user("alice")), ElementsAre(kept.session.id));
  EXPECT_TRUE(store.list_user("bob").empty());
  EXPECT_EQ(db_->count(), 1);
}

TEST_P(RecordedStoreContract, AFailedCreateAtTheCapEvictsNothing) {
  // Counting, evicting and inserting are one storage transaction: when storage refuses the new
  // row (a trigger), the eviction is rolled back with it, and the user keeps the session.
  StoreOptions options;
  options.max_sessions_per_user = 1;
  SessionStore store = recorded_store(options);
  const NewSession oldest = store.create("alice");
  clock_.advance(1);
  db_->refuse_saves(true);
  EXPECT_THROW(store.create("alice"), pylon::Error);
  db_->refuse_saves(false);
  const std::vector<std::string> calls = log_->take();
  EXPECT_THAT(calls, ::testing::Contains(::testing::StartsWith("insert_new ")))
      << "the insert was tried";
  EXPECT_TRUE(db_->has(oldest.session.id)) << "the failed create evicted nothing";
  EXPECT_TRUE(store.validate(oldest.token).has_value());
  EXPECT_EQ(store.list_user("alice").size(), 1U);
  EXPECT_EQ(db_->count(), 1);
}

TEST_P(RecordedStoreContract, AFailedSlideLeavesTheSessionAsStorageHasIt) {
  SessionStore store = recorded_store();
  const NewSession created = store.create("alice");
  db_->refuse_saves(true);
  clock_.advance(61);
  EXPECT_THROW(store.validate(created.token), pylon::Error);
  const auto found = store.find(created.session.id);
  ASSERT_TRUE(found.has_value());
  const auto row = stored(created.session.id);
  ASSERT_TRUE(row.has_value());
  EXPECT_TRUE(same_session(*row, *found));
  db_->refuse_saves(false);
  ASSERT_TRUE(store.validate(created.token).has_value());
  EXPECT_EQ(db_->column("last_seen_at", created.session.id), clock_.now());
}

TEST_P(RecordedStoreContract, AFailedRevokeIsDeniedAtOnceAndRetriedBeforeTheNextWrite) {
  SessionStore store = recorded_store();
  const NewSession revoked = store.create("alice");
  const NewSession kept = store.create("alice");
  log_->take();
  {
    const auto block = db_->block_writes();
    EXPECT_PYLON_ERROR(store.revoke(revoked.token), ErrorCode::kBusy);
    EXPECT_FALSE(store.validate(revoked.token).has_value());
    EXPECT_FALSE(store.find(revoked.session.id).has_value());
    EXPECT_EQ(store.size(), 1U);

    // Storage still refuses: the next write retries the delete, and fails without storing.
    EXPECT_THROW(store.create("bob"), pylon::Error);
    EXPECT_TRUE(store.list_user("bob").empty());
    EXPECT_FALSE(store.validate(revoked.token).has_value());
  }
  EXPECT_EQ(db_->count(), 2) << "nothing reached storage while it was locked";
  const std::vector<std::string> failed = log_->take();
  ASSERT_GE(failed.size(), 2U) << ::testing::PrintToString(failed);
  EXPECT_EQ(failed[0], "remove_matching id=" + revoked.session.id);
  EXPECT_EQ(failed[1], "remove_matching id=" + revoked.session.id) << "retried before the create";

  const NewSession next = store.create("bob");
  EXPECT_THAT(log_->take(), ElementsAre("remove_matching id=" + revoked.session.id,
                                        "insert_new " + next.session.id))
      << "the pending delete goes first";
  EXPECT_FALSE(db_->has(revoked.session.id));
  EXPECT_TRUE(db_->has(next.session.id));
  EXPECT_TRUE(store.validate(kept.token).has_value());

  // Once storage has it, it is not retried again.
  const NewSession carol = store.create("carol");
  EXPECT_THAT(log_->take(), ElementsAre("insert_new " + carol.session.id));
}

TEST_P(RecordedStoreContract, TheDestructorRetriesPendingDeletesAndNeverThrows) {
  NewSession revoked;
  {
    SessionStore store = recorded_store();
    revoked = store.create("alice");
    const auto block = db_->block_writes();
    EXPECT_PYLON_ERROR(store.revoke(revoked.token), ErrorCode::kBusy);
    log_->take();
  }  // the block is released first, then the store's destructor retries
  EXPECT_THAT(log_->take(), ElementsAre("remove_matching id=" + revoked.session.id));
  EXPECT_FALSE(db_->has(revoked.session.id));

  NewSession stuck;
  {
    std::unique_ptr<pylon::test::WriteBlock> block;  // outlives the store
    {
      SessionStore store = recorded_store();
      stuck = store.create("alice");
      block = db_->block_writes();
      EXPECT_PYLON_ERROR(store.revoke(stuck.token), ErrorCode::kBusy);
      log_->take();
    }  // the destructor's last attempt fails too: it must swallow the error
    EXPECT_THAT(log_->take(), ElementsAre("remove_matching id=" + stuck.session.id));
  }
  EXPECT_TRUE(db_->has(stuck.session.id)) << "storage refused the delete throughout";
}

TEST_P(RecordedStoreContract, ConstructionFailsWhenLoadingFails) {
  auto backend = db_->open_backend();
  db_->exec("ALTER TABLE _pylon_sessions RENAME TO _pylon_sessions_elsewhere");
  StoreOptions options;
  options.clock = clock_.fn();
  const auto error = pylon::test::capture_pylon_error([&] {
    SessionStore store(std::make_unique<RecordingBackend>(std::move(backend), log_), options);
  });
  ASSERT_TRUE(error.has_value()) << "a store must not start empty when loading fails";
  EXPECT_THAT(log_->take(), ElementsAre("load_each"));
}

}  // namespace

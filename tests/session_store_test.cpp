// SessionStore on real SQLite files with a ManualClock (no test sleeps): create, validate, find,
// revoke, revoke_id, revoke_user, list_user, purge_expired; restart persistence; absolute and
// idle expiry with sliding written at most once per touch_interval (read back from the raw
// table); caps; malformed tokens; raw tokens absent from the files; write-through failures under
// another connection's exclusive lock (failed creates change nothing, failed revokes fail closed
// and reach storage with the next write); the same contract through a scripted fake backend;
// and 8 threads at once.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "session_backend.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::CreateOptions;
using pylon::ErrorCode;
using pylon::NewSession;
using pylon::Session;
using pylon::SessionStore;
using pylon::StoreOptions;
using pylon::test::ManualClock;
using pylon::test::RawDb;
using pylon::test::same_session;
using pylon::test::TempDir;
using ::testing::ElementsAre;

constexpr std::int64_t kHour = 3600;
constexpr std::int64_t kDay = 24 * kHour;

std::vector<std::string> ids_of(const std::vector<Session>& sessions) {
  std::vector<std::string> ids;
  for (const Session& session : sessions) ids.push_back(session.id);
  return ids;
}

// A store on a temporary file, with the default durations and a manual clock.
class StoreTest : public ::testing::Test {
 protected:
  StoreOptions options() const {
    StoreOptions options;
    options.clock = clock_.fn();
    return options;
  }
  SessionStore open_store(const std::string& query = {}) const {
    return open_store(options(), query);
  }
  SessionStore open_store(const StoreOptions& options, const std::string& query = {}) const {
    return SessionStore::open(pylon::test::sqlite_url(path_, query), options);
  }
  // A store whose writes give up after 50 ms of lock contention.
  SessionStore open_impatient_store() const { return open_store("busy_timeout=50"); }

  std::int64_t raw_count(const std::string& where = "1") const {
    RawDb raw(path_);
    return raw.query_int("SELECT count(*) FROM _pylon_sessions WHERE " + where);
  }
  bool raw_has(const std::string& id) const {
    RawDb raw(path_);
    return raw.query_int("SELECT count(*) FROM _pylon_sessions WHERE id = ?1", {id}) == 1;
  }
  std::int64_t raw_int(const std::string& column, const std::string& id) const {
    RawDb raw(path_);
    return raw.query_int("SELECT " + column + " FROM _pylon_sessions WHERE id = ?1", {id});
  }

  TempDir dir_;
  std::string path_ = dir_.file("sessions.db");
  ManualClock clock_{1'700'000'000};
};

// ------------------------------------------------------------------------------------------------
// create, validate, find
// ------------------------------------------------------------------------------------------------

TEST_F(StoreTest, CreateReturnsATokenAndTheSessionItNames) {
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

TEST_F(StoreTest, CreateWithoutOptionsLeavesOptionalFieldsEmpty) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  EXPECT_EQ(created.session.tenant_id, std::nullopt);
  EXPECT_EQ(created.session.device, std::nullopt);
  EXPECT_EQ(created.session.ip, std::nullopt);
  EXPECT_EQ(created.session.data, "");
}

TEST_F(StoreTest, CreateIsInStorageBeforeItReturns) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  EXPECT_TRUE(raw_has(created.session.id));
  EXPECT_EQ(raw_int("expires_at", created.session.id), created.session.expires_at);
  EXPECT_EQ(raw_count(), 1);
}

TEST_F(StoreTest, EveryCreateGetsAFreshToken) {
  SessionStore store = open_store();
  std::set<std::string> tokens;
  for (int i = 0; i < 50; ++i) tokens.insert(store.create("alice").token);
  EXPECT_EQ(tokens.size(), 50U);
  EXPECT_EQ(store.size(), 50U);
}

TEST_F(StoreTest, IdleTimeoutZeroMeansTheAbsoluteCapAlone) {
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

TEST_F(StoreTest, AnAbsoluteTtlShorterThanIdleCapsTheFirstExpiry) {
  StoreOptions opts = options();
  opts.absolute_ttl = std::chrono::minutes(30);
  SessionStore store = open_store(opts);
  const NewSession created = store.create("alice");
  EXPECT_EQ(created.session.expires_at, clock_.now() + 1800);
  EXPECT_EQ(created.session.absolute_expires_at, clock_.now() + 1800);
}

TEST_F(StoreTest, CreateRefusesBadArgumentsAndStoresNothing) {
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
  EXPECT_EQ(raw_count(), 1);
}

TEST_F(StoreTest, ValidateReturnsTheCreatedSession) {
  SessionStore store = open_store();
  CreateOptions create;
  create.device = "phone";
  create.data = std::string("\x00\x01\x02", 3);
  const NewSession created = store.create("alice", create);
  const auto validated = store.validate(created.token);
  ASSERT_TRUE(validated.has_value());
  EXPECT_TRUE(same_session(created.session, *validated));
}

TEST_F(StoreTest, FindReturnsTheSessionWithoutSliding) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  clock_.advance(30 * 60);
  const auto found = store.find(created.session.id);
  ASSERT_TRUE(found.has_value());
  EXPECT_TRUE(same_session(created.session, *found));
  clock_.advance(30 * 60);  // one hour after creation, with only find() in between
  EXPECT_FALSE(store.find(created.session.id).has_value());
  EXPECT_FALSE(store.validate(created.token).has_value());
}

TEST_F(StoreTest, UnknownTokensAndIdsAreNotFound) {
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

TEST_F(StoreTest, MalformedTokensAreRejectedWithoutError) {
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
  EXPECT_EQ(raw_count(), 1);
}

TEST_F(StoreTest, StoreCanBeMoved) {
  SessionStore first = open_store();
  const NewSession created = first.create("alice");
  SessionStore second = std::move(first);
  EXPECT_TRUE(second.validate(created.token).has_value());
  SessionStore third = open_store();
  third = std::move(second);
  EXPECT_TRUE(third.validate(created.token).has_value());
}

TEST(StoreOptionsValidation, InvalidOptionsAreRefused) {
  TempDir dir;
  const std::string path = dir.file("s.db");
  StoreOptions negative_idle;
  negative_idle.idle_timeout = std::chrono::seconds(-1);
  EXPECT_PYLON_ERROR(SessionStore::open(path, negative_idle), ErrorCode::kInvalidArgument);
  StoreOptions zero_ttl;
  zero_ttl.absolute_ttl = std::chrono::seconds(0);
  EXPECT_PYLON_ERROR(SessionStore::open(path, zero_ttl), ErrorCode::kInvalidArgument);
  StoreOptions negative_ttl;
  negative_ttl.absolute_ttl = std::chrono::seconds(-60);
  EXPECT_PYLON_ERROR(SessionStore::open(path, negative_ttl), ErrorCode::kInvalidArgument);
  StoreOptions negative_touch;
  negative_touch.touch_interval = std::chrono::seconds(-5);
  EXPECT_PYLON_ERROR(SessionStore::open(path, negative_touch), ErrorCode::kInvalidArgument);
  StoreOptions no_clock;
  no_clock.clock = nullptr;
  EXPECT_PYLON_ERROR(SessionStore::open(path, no_clock), ErrorCode::kInvalidArgument);
}

// ------------------------------------------------------------------------------------------------
// Restarts
// ------------------------------------------------------------------------------------------------

TEST_F(StoreTest, SessionsSurviveARestart) {
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

TEST_F(StoreTest, RevokedSessionsNeverComeBackAfterARestart) {
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
  EXPECT_EQ(raw_count(), 1);
}

// ------------------------------------------------------------------------------------------------
// Revocation and listing
// ------------------------------------------------------------------------------------------------

TEST_F(StoreTest, RevokeDeletesFromStorageBeforeReturning) {
  SessionStore store = open_store();
  const NewSession a = store.create("alice");
  const NewSession b = store.create("alice");
  EXPECT_TRUE(store.revoke(a.token));
  EXPECT_FALSE(raw_has(a.session.id));
  EXPECT_FALSE(store.validate(a.token).has_value());
  EXPECT_FALSE(store.find(a.session.id).has_value());
  EXPECT_FALSE(store.revoke(a.token)) << "a second revoke finds nothing";
  EXPECT_TRUE(store.validate(b.token).has_value());
  EXPECT_EQ(store.size(), 1U);
}

TEST_F(StoreTest, RevokeIdDeletesFromStorageBeforeReturning) {
  SessionStore store = open_store();
  const NewSession a = store.create("alice");
  EXPECT_TRUE(store.revoke_id(a.session.id));
  EXPECT_FALSE(raw_has(a.session.id));
  EXPECT_FALSE(store.validate(a.token).has_value());
  EXPECT_FALSE(store.revoke_id(a.session.id));
}

TEST_F(StoreTest, RevokeUserSignsOutEverywhereAndCountsRemovedRows) {
  SessionStore store = open_store();
  const NewSession stale = store.create("alice");
  clock_.advance(50 * 60);
  const NewSession a1 = store.create("alice");
  const NewSession a2 = store.create("alice");
  const NewSession b = store.create("bob");
  clock_.advance(15 * 60);  // `stale` is now idle-expired
  ASSERT_FALSE(store.find(stale.session.id).has_value());

  EXPECT_EQ(store.revoke_user("alice"), 3U) << "every row storage removed, the expired one too";
  EXPECT_FALSE(store.validate(a1.token).has_value());
  EXPECT_FALSE(store.validate(a2.token).has_value());
  EXPECT_TRUE(store.list_user("alice").empty());
  EXPECT_TRUE(store.validate(b.token).has_value());
  EXPECT_EQ(raw_count("user_id = 'alice'"), 0) << "every row of the user is deleted";
  EXPECT_EQ(raw_count("user_id = 'bob'"), 1);
  EXPECT_EQ(store.revoke_user("alice"), 0U);
}

TEST_F(StoreTest, ListUserIsOldestFirstAndOnlyThatUsersLiveSessions) {
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

// ------------------------------------------------------------------------------------------------
// Expiry
// ------------------------------------------------------------------------------------------------

TEST_F(StoreTest, IdleTimeoutExpiresAnUnusedSession) {
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

TEST_F(StoreTest, ValidatingSlidesTheIdleExpiry) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  for (int i = 0; i < 6; ++i) {
    clock_.advance(50 * 60);
    const auto session = store.validate(created.token);
    ASSERT_TRUE(session.has_value()) << "after " << (i + 1) * 50 << " minutes of activity";
    EXPECT_EQ(session->expires_at, clock_.now() + kHour);
    EXPECT_EQ(session->last_seen_at, clock_.now());
  }
  clock_.advance(kHour);
  EXPECT_FALSE(store.validate(created.token).has_value());
}

TEST_F(StoreTest, AbsoluteLifetimeEndsEvenAConstantlyActiveSession) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  const std::int64_t cap = created.session.created_at + kDay;
  while (clock_.now() + 20 * 60 < cap) {
    clock_.advance(20 * 60);
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

TEST_F(StoreTest, SlidesAreWrittenAtMostOncePerTouchInterval) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  const std::string& id = created.session.id;
  const std::int64_t t0 = clock_.now();
  ASSERT_EQ(raw_int("last_seen_at", id), t0);

  clock_.advance(30);
  auto session = store.validate(created.token);
  ASSERT_TRUE(session.has_value());
  EXPECT_EQ(raw_int("last_seen_at", id), t0) << "within the interval nothing is written";
  EXPECT_EQ(raw_int("expires_at", id), t0 + kHour);
  EXPECT_EQ(session->last_seen_at, t0) << "last_seen_at is what storage has";

  clock_.advance(31);  // t0 + 61
  session = store.validate(created.token);
  ASSERT_TRUE(session.has_value());
  EXPECT_EQ(raw_int("last_seen_at", id), t0 + 61) << "past the interval the slide is written";
  EXPECT_EQ(raw_int("expires_at", id), t0 + 61 + kHour);
  EXPECT_EQ(session->last_seen_at, t0 + 61);
  EXPECT_EQ(session->expires_at, t0 + 61 + kHour);

  for (int i = 0; i < 5; ++i) {
    clock_.advance(10);  // up to t0 + 111: within the interval of the last write
    ASSERT_TRUE(store.validate(created.token).has_value());
    EXPECT_EQ(raw_int("last_seen_at", id), t0 + 61);
  }
  clock_.advance(15);  // t0 + 126
  ASSERT_TRUE(store.validate(created.token).has_value());
  EXPECT_EQ(raw_int("last_seen_at", id), t0 + 126);
  EXPECT_EQ(raw_int("expires_at", id), t0 + 126 + kHour);
}

TEST_F(StoreTest, ARestartKeepsTheWrittenSlide) {
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

TEST_F(StoreTest, ExpiredSessionsAreNeverReturnedAfterARestart) {
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

TEST_F(StoreTest, PurgeExpiredDeletesExpiredRows) {
  SessionStore store = open_store();
  const NewSession old1 = store.create("alice");
  const NewSession old2 = store.create("bob");
  clock_.advance(50 * 60);
  const NewSession young = store.create("alice");
  clock_.advance(15 * 60);
  ASSERT_EQ(raw_count(), 3);

  EXPECT_EQ(store.purge_expired(), 2U);
  EXPECT_EQ(raw_count(), 1);
  EXPECT_FALSE(raw_has(old1.session.id));
  EXPECT_FALSE(raw_has(old2.session.id));
  EXPECT_TRUE(raw_has(young.session.id));
  EXPECT_EQ(store.purge_expired(), 0U);
  EXPECT_TRUE(store.validate(young.token).has_value());
  EXPECT_EQ(store.size(), 1U);
}

// ------------------------------------------------------------------------------------------------
// Caps
// ------------------------------------------------------------------------------------------------

TEST_F(StoreTest, MaxSessionsPerUserEvictsTheOldest) {
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
    EXPECT_EQ(raw_count("user_id = 'alice'"), 3);
  }
  SessionStore store = open_store(opts);
  EXPECT_EQ(store.list_user("alice").size(), 3U);
  EXPECT_FALSE(store.validate(alice[0].token).has_value());
  EXPECT_TRUE(store.validate(alice[4].token).has_value());
}

TEST_F(StoreTest, MaxDataBytesRefusesLargerPayloadsAndStoresNothing) {
  StoreOptions opts = options();
  opts.max_data_bytes = 16;
  SessionStore store = open_store(opts);
  CreateOptions fits;
  fits.data = std::string(16, '\0');
  const NewSession created = store.create("alice", fits);
  EXPECT_EQ(created.session.data.size(), 16U);
  const std::int64_t rows = raw_count();

  CreateOptions too_big;
  too_big.data = std::string(17, 'x');
  EXPECT_PYLON_ERROR(store.create("alice", too_big), ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(store.create("bob", too_big), ErrorCode::kInvalidArgument);
  EXPECT_EQ(raw_count(), rows);
  EXPECT_EQ(store.size(), 1U);
  EXPECT_EQ(store.list_user("alice").size(), 1U);
  EXPECT_TRUE(store.list_user("bob").empty());
}

// ------------------------------------------------------------------------------------------------
// Tokens stay secret
// ------------------------------------------------------------------------------------------------

TEST_F(StoreTest, RawTokensNeverReachTheDatabaseFiles) {
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

    const std::string open_bytes = pylon::test::read_database_files(path_);
    EXPECT_NE(open_bytes.find(created[1].session.id), std::string::npos)
        << "sanity: the ids are in the files we read";
    for (const NewSession& c : created) {
      EXPECT_FALSE(pylon::test::contains_raw_token(open_bytes, c.token));
    }
  }
  const std::string closed_bytes = pylon::test::read_database_files(path_);
  EXPECT_NE(closed_bytes.find(created[1].session.id), std::string::npos);
  for (const NewSession& c : created) {
    EXPECT_FALSE(pylon::test::contains_raw_token(closed_bytes, c.token));
  }
}

// ------------------------------------------------------------------------------------------------
// Write-through under another connection's exclusive lock
// ------------------------------------------------------------------------------------------------

TEST_F(StoreTest, ReadsNeedNoLock) {
  SessionStore store = open_impatient_store();
  const NewSession created = store.create("alice");
  RawDb holder(path_);
  holder.exec("BEGIN EXCLUSIVE");
  clock_.advance(30);  // within the touch interval: validate writes nothing
  EXPECT_TRUE(store.validate(created.token).has_value());
  EXPECT_TRUE(store.find(created.session.id).has_value());
  EXPECT_EQ(store.list_user("alice").size(), 1U);
  EXPECT_EQ(store.size(), 1U);
  holder.exec("COMMIT");
}

TEST_F(StoreTest, CreateUnderLockThrowsBusyAndChangesNothing) {
  NewSession before;
  {
    SessionStore store = open_impatient_store();
    before = store.create("alice");
    RawDb holder(path_);
    holder.exec("BEGIN EXCLUSIVE");
    EXPECT_PYLON_ERROR(store.create("alice"), ErrorCode::kBusy);
    EXPECT_PYLON_ERROR(store.create("bob"), ErrorCode::kBusy);
    EXPECT_EQ(store.size(), 1U);
    EXPECT_THAT(ids_of(store.list_user("alice")), ElementsAre(before.session.id));
    EXPECT_TRUE(store.list_user("bob").empty());
    holder.exec("COMMIT");
    holder.close();
    EXPECT_EQ(store.size(), 1U);
  }
  EXPECT_EQ(raw_count(), 1);
  SessionStore store = open_store();
  EXPECT_EQ(store.size(), 1U);
  EXPECT_TRUE(store.validate(before.token).has_value());
}

TEST_F(StoreTest, RevokeUnderLockFailsClosedAndReachesStorageWithTheNextWrite) {
  SessionStore store = open_impatient_store();
  const NewSession revoked = store.create("alice");
  const NewSession kept = store.create("alice");
  RawDb holder(path_);
  holder.exec("BEGIN EXCLUSIVE");
  const auto error = pylon::test::capture_pylon_error([&] { store.revoke(revoked.token); });
  ASSERT_TRUE(error.has_value()) << "a revoke that cannot reach storage must throw";
  EXPECT_EQ(error->code(), ErrorCode::kBusy) << error->what();
  EXPECT_FALSE(pylon::test::contains_raw_token(error->what(), revoked.token));
  // Denied at once, in this process.
  EXPECT_FALSE(store.validate(revoked.token).has_value());
  EXPECT_FALSE(store.find(revoked.session.id).has_value());
  EXPECT_THAT(ids_of(store.list_user("alice")), ElementsAre(kept.session.id));
  EXPECT_TRUE(store.validate(kept.token).has_value());
  holder.exec("COMMIT");
  holder.close();
  EXPECT_TRUE(raw_has(revoked.session.id)) << "storage still has it until the next write";

  const NewSession next = store.create("bob");  // the next write retries the delete first
  EXPECT_FALSE(raw_has(revoked.session.id)) << "the pending delete reached storage";
  EXPECT_TRUE(raw_has(next.session.id));
  EXPECT_FALSE(store.validate(revoked.token).has_value());

  SessionStore fresh = open_store();
  EXPECT_FALSE(fresh.validate(revoked.token).has_value());
  EXPECT_TRUE(fresh.validate(kept.token).has_value());
  EXPECT_TRUE(fresh.validate(next.token).has_value());
}

TEST_F(StoreTest, RevokeIdUnderLockFailsClosedAndTheDestructorRetriesTheDelete) {
  NewSession revoked;
  {
    SessionStore store = open_impatient_store();
    revoked = store.create("alice");
    RawDb holder(path_);
    holder.exec("BEGIN EXCLUSIVE");
    EXPECT_PYLON_ERROR(store.revoke_id(revoked.session.id), ErrorCode::kBusy);
    EXPECT_FALSE(store.validate(revoked.token).has_value());
    holder.exec("COMMIT");
    holder.close();
  }  // no further write: the destructor makes the last attempt
  EXPECT_FALSE(raw_has(revoked.session.id));
  SessionStore fresh = open_store();
  EXPECT_FALSE(fresh.validate(revoked.token).has_value());
}

TEST_F(StoreTest, RevokeUserUnderLockFailsClosed) {
  SessionStore store = open_impatient_store();
  const NewSession a1 = store.create("alice");
  const NewSession a2 = store.create("alice");
  const NewSession b = store.create("bob");
  {
    RawDb holder(path_);
    holder.exec("BEGIN EXCLUSIVE");
    EXPECT_PYLON_ERROR(store.revoke_user("alice"), ErrorCode::kBusy);
    EXPECT_FALSE(store.validate(a1.token).has_value());
    EXPECT_FALSE(store.validate(a2.token).has_value());
    EXPECT_TRUE(store.list_user("alice").empty());
    EXPECT_TRUE(store.validate(b.token).has_value());
    holder.exec("COMMIT");
  }
  store.create("carol");
  EXPECT_EQ(raw_count("user_id = 'alice'"), 0);
  SessionStore fresh = open_store();
  EXPECT_FALSE(fresh.validate(a1.token).has_value());
  EXPECT_FALSE(fresh.validate(a2.token).has_value());
  EXPECT_TRUE(fresh.validate(b.token).has_value());
}

TEST_F(StoreTest, SlideWriteUnderLockThrowsAndTheSessionStaysAsStored) {
  SessionStore store = open_impatient_store();
  const NewSession created = store.create("alice");
  RawDb holder(path_);
  holder.exec("BEGIN EXCLUSIVE");
  clock_.advance(61);
  EXPECT_PYLON_ERROR(store.validate(created.token), ErrorCode::kBusy);
  const auto found = store.find(created.session.id);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->expires_at, created.session.expires_at) << "the cache is as storage is";
  EXPECT_EQ(found->last_seen_at, created.session.last_seen_at);
  holder.exec("COMMIT");
  holder.close();
  const auto validated = store.validate(created.token);
  ASSERT_TRUE(validated.has_value());
  EXPECT_EQ(raw_int("last_seen_at", created.session.id), clock_.now());
}

TEST_F(StoreTest, PurgeUnderLockThrowsBusyThenWorks) {
  SessionStore store = open_impatient_store();
  store.create("alice");
  clock_.advance(kHour);
  RawDb holder(path_);
  holder.exec("BEGIN EXCLUSIVE");
  EXPECT_PYLON_ERROR(store.purge_expired(), ErrorCode::kBusy);
  holder.exec("COMMIT");
  holder.close();
  EXPECT_EQ(raw_count(), 1);
  EXPECT_EQ(store.purge_expired(), 1U);
  EXPECT_EQ(raw_count(), 0);
}

// ------------------------------------------------------------------------------------------------
// The same contract through a scripted backend: every call is counted, any call can fail
// ------------------------------------------------------------------------------------------------

// A SessionBackend in memory that logs each call ("save <id>", "remove <id>", ...) and throws
// `failure` from every write while it is set. The state outlives the backend, which the store owns.
struct FakeState {
  std::mutex mutex;
  std::map<std::string, Session> rows;
  std::vector<std::string> log;
  std::optional<ErrorCode> failure;
  std::string failure_only;  // when set, only writes whose log entry starts with this fail
  int loads = 0;

  std::vector<std::string> take_log() {
    const std::lock_guard<std::mutex> lock(mutex);
    return std::exchange(log, {});
  }
  void fail_writes(std::optional<ErrorCode> code, std::string only = {}) {
    const std::lock_guard<std::mutex> lock(mutex);
    failure = code;
    failure_only = std::move(only);
  }
  std::size_t row_count() {
    const std::lock_guard<std::mutex> lock(mutex);
    return rows.size();
  }
};

class FakeBackend : public pylon::SessionBackend {
 public:
  explicit FakeBackend(std::shared_ptr<FakeState> state) : state_(std::move(state)) {}

  std::vector<Session> load_all() override {
    const std::lock_guard<std::mutex> lock(state_->mutex);
    ++state_->loads;
    std::vector<Session> all;
    for (const auto& entry : state_->rows) all.push_back(entry.second);
    return all;
  }
  void save(const Session& session) override {
    const std::lock_guard<std::mutex> lock(state_->mutex);
    record("save " + session.id);
    state_->rows[session.id] = session;
  }
  bool remove(std::string_view id) override {
    const std::lock_guard<std::mutex> lock(state_->mutex);
    record("remove " + std::string(id));
    return state_->rows.erase(std::string(id)) == 1;
  }
  std::size_t remove_user(std::string_view user_id) override {
    const std::lock_guard<std::mutex> lock(state_->mutex);
    record("remove_user " + std::string(user_id));
    return erase_if([&](const Session& s) { return s.user_id == user_id; });
  }
  std::size_t remove_expired(std::int64_t now) override {
    const std::lock_guard<std::mutex> lock(state_->mutex);
    record("remove_expired " + std::to_string(now));
    return erase_if([&](const Session& s) { return s.expires_at <= now; });
  }
  std::string describe() const override { return "fake://"; }

 private:
  // Logs a write and throws while a failure is scripted. Called with the state's mutex held.
  void record(const std::string& entry) {
    state_->log.push_back(entry);
    if (state_->failure && entry.rfind(state_->failure_only, 0) == 0) {
      throw pylon::Error(*state_->failure, "scripted failure of a write");
    }
  }
  template <typename Predicate>
  std::size_t erase_if(Predicate matches) {
    std::size_t removed = 0;
    for (auto it = state_->rows.begin(); it != state_->rows.end();) {
      if (matches(it->second)) {
        it = state_->rows.erase(it);
        ++removed;
      } else {
        ++it;
      }
    }
    return removed;
  }

  std::shared_ptr<FakeState> state_;
};

class FakeStoreTest : public ::testing::Test {
 protected:
  SessionStore make_store(StoreOptions options = {}) {
    options.clock = clock_.fn();
    return SessionStore(std::make_unique<FakeBackend>(state_), options);
  }

  std::shared_ptr<FakeState> state_ = std::make_shared<FakeState>();
  ManualClock clock_{1'700'000'000};
};

TEST_F(FakeStoreTest, ConstructionLoadsEveryRowOnceAndHidesExpiredOnes) {
  Session live = pylon::test::make_session("alice", 1);
  live.expires_at = clock_.now() + 100;
  live.absolute_expires_at = clock_.now() + 1000;
  Session dead = pylon::test::make_session("alice", 2);
  dead.expires_at = clock_.now();
  state_->rows[live.id] = live;
  state_->rows[dead.id] = dead;

  SessionStore store = make_store();
  EXPECT_EQ(state_->loads, 1);
  EXPECT_EQ(store.size(), 2U);
  const auto found = store.find(live.id);
  ASSERT_TRUE(found.has_value());
  EXPECT_TRUE(same_session(live, *found));
  EXPECT_FALSE(store.find(dead.id).has_value());
  EXPECT_THAT(ids_of(store.list_user("alice")), ElementsAre(live.id));
}

TEST_F(FakeStoreTest, ReadsNeverTouchStorage) {
  SessionStore store = make_store();
  const NewSession created = store.create("alice");
  EXPECT_THAT(state_->take_log(), ElementsAre("save " + created.session.id));
  for (int i = 0; i < 10; ++i) {
    clock_.advance(5);  // 50 s in all: within the touch interval
    ASSERT_TRUE(store.validate(created.token).has_value());
    ASSERT_TRUE(store.find(created.session.id).has_value());
    ASSERT_EQ(store.list_user("alice").size(), 1U);
    ASSERT_EQ(store.size(), 1U);
    ASSERT_FALSE(store.validate(pylon::generate_token()).has_value());
    ASSERT_FALSE(store.validate("garbage").has_value());
  }
  EXPECT_TRUE(state_->take_log().empty());
  EXPECT_EQ(state_->loads, 1);
}

TEST_F(FakeStoreTest, ValidateWritesASlideAtMostOncePerTouchInterval) {
  SessionStore store = make_store();
  const NewSession created = store.create("alice");
  state_->take_log();
  const std::string save = "save " + created.session.id;
  clock_.advance(61);
  ASSERT_TRUE(store.validate(created.token).has_value());
  ASSERT_TRUE(store.validate(created.token).has_value());
  EXPECT_THAT(state_->take_log(), ElementsAre(save));
  clock_.advance(59);
  ASSERT_TRUE(store.validate(created.token).has_value());
  EXPECT_TRUE(state_->take_log().empty());
  clock_.advance(2);
  ASSERT_TRUE(store.validate(created.token).has_value());
  EXPECT_THAT(state_->take_log(), ElementsAre(save));
  const Session stored = state_->rows.at(created.session.id);
  EXPECT_EQ(stored.last_seen_at, clock_.now());
  EXPECT_EQ(stored.expires_at, clock_.now() + kHour);
  EXPECT_EQ(stored.absolute_expires_at, created.session.created_at + kDay);
}

TEST_F(FakeStoreTest, AFailedCreateLeavesTheCacheAsStorageIs) {
  SessionStore store = make_store();
  const NewSession kept = store.create("alice");
  state_->fail_writes(ErrorCode::kStorageFull);
  EXPECT_PYLON_ERROR(store.create("alice"), ErrorCode::kStorageFull);
  EXPECT_PYLON_ERROR(store.create("bob"), ErrorCode::kStorageFull);
  EXPECT_EQ(store.size(), 1U);
  EXPECT_THAT(ids_of(store.list_user("alice")), ElementsAre(kept.session.id));
  EXPECT_TRUE(store.list_user("bob").empty());
  EXPECT_EQ(state_->row_count(), 1U);
}

TEST_F(FakeStoreTest, AFailedCreateAtTheCapLeavesTheCacheAsStorageIs) {
  // The eviction reaches storage but the save of the new session does not: whatever storage
  // ends up holding, the cache must agree with it, and the new session must not exist.
  StoreOptions options;
  options.max_sessions_per_user = 1;
  SessionStore store = make_store(options);
  const NewSession oldest = store.create("alice");
  clock_.advance(1);
  state_->fail_writes(ErrorCode::kStorageFull, "save ");
  EXPECT_PYLON_ERROR(store.create("alice"), ErrorCode::kStorageFull);
  state_->fail_writes(std::nullopt);
  const bool stored = state_->rows.count(oldest.session.id) == 1;
  EXPECT_EQ(store.find(oldest.session.id).has_value(), stored)
      << "storage " << (stored ? "still has" : "no longer has") << " the oldest session";
  EXPECT_EQ(store.validate(oldest.token).has_value(), stored);
  EXPECT_EQ(store.list_user("alice").size(), state_->row_count());
  EXPECT_EQ(store.size(), state_->row_count());
}

TEST_F(FakeStoreTest, AFailedSlideLeavesTheSessionAsStorageHasIt) {
  SessionStore store = make_store();
  const NewSession created = store.create("alice");
  state_->fail_writes(ErrorCode::kIo);
  clock_.advance(61);
  EXPECT_PYLON_ERROR(store.validate(created.token), ErrorCode::kIo);
  const auto found = store.find(created.session.id);
  ASSERT_TRUE(found.has_value());
  EXPECT_TRUE(same_session(state_->rows.at(created.session.id), *found));
  state_->fail_writes(std::nullopt);
  ASSERT_TRUE(store.validate(created.token).has_value());
  EXPECT_EQ(state_->rows.at(created.session.id).last_seen_at, clock_.now());
}

TEST_F(FakeStoreTest, AFailedRevokeIsDeniedAtOnceAndRetriedBeforeTheNextWrite) {
  SessionStore store = make_store();
  const NewSession revoked = store.create("alice");
  const NewSession kept = store.create("alice");
  state_->take_log();
  state_->fail_writes(ErrorCode::kConnectionLost);
  EXPECT_PYLON_ERROR(store.revoke(revoked.token), ErrorCode::kConnectionLost);
  EXPECT_FALSE(store.validate(revoked.token).has_value());
  EXPECT_FALSE(store.find(revoked.session.id).has_value());
  EXPECT_EQ(store.size(), 1U);
  EXPECT_EQ(state_->row_count(), 2U);

  // Storage still refuses: the next write retries the delete, and fails without storing.
  EXPECT_THROW(store.create("bob"), pylon::Error);
  EXPECT_TRUE(store.list_user("bob").empty());
  EXPECT_FALSE(store.validate(revoked.token).has_value());
  state_->take_log();

  state_->fail_writes(std::nullopt);
  const NewSession next = store.create("bob");
  const std::vector<std::string> log = state_->take_log();
  ASSERT_EQ(log.size(), 2U) << ::testing::PrintToString(log);
  EXPECT_EQ(log[0], "remove " + revoked.session.id) << "the pending delete goes first";
  EXPECT_EQ(log[1], "save " + next.session.id);
  EXPECT_EQ(state_->rows.count(revoked.session.id), 0U);
  EXPECT_TRUE(store.validate(kept.token).has_value());

  // Once storage has it, it is not retried again.
  store.create("carol");
  EXPECT_EQ(state_->take_log().size(), 1U);
}

TEST_F(FakeStoreTest, TheDestructorRetriesPendingDeletesAndNeverThrows) {
  NewSession revoked;
  {
    SessionStore store = make_store();
    revoked = store.create("alice");
    state_->fail_writes(ErrorCode::kIo);
    EXPECT_PYLON_ERROR(store.revoke(revoked.token), ErrorCode::kIo);
    state_->fail_writes(std::nullopt);
  }
  EXPECT_EQ(state_->rows.count(revoked.session.id), 0U);

  NewSession stuck;
  {
    SessionStore store = make_store();
    stuck = store.create("alice");
    state_->fail_writes(ErrorCode::kIo);
    EXPECT_PYLON_ERROR(store.revoke(stuck.token), ErrorCode::kIo);
  }  // the last attempt fails too: the destructor must swallow it
  EXPECT_EQ(state_->rows.count(stuck.session.id), 1U);
}

TEST_F(FakeStoreTest, ConstructionFailsWhenLoadingFails) {
  class BrokenBackend : public FakeBackend {
   public:
    using FakeBackend::FakeBackend;
    std::vector<Session> load_all() override {
      throw pylon::Error(ErrorCode::kCorruptDatabase, "scripted load failure");
    }
  };
  StoreOptions options;
  options.clock = clock_.fn();
  EXPECT_PYLON_ERROR(SessionStore(std::make_unique<BrokenBackend>(state_), options),
                     ErrorCode::kCorruptDatabase);
}

// ------------------------------------------------------------------------------------------------
// Threads
// ------------------------------------------------------------------------------------------------

TEST_F(StoreTest, EightThreadsCreateValidateAndRevokeAtOnce) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 25;
  struct Outcome {
    std::vector<std::string> alive;
    std::vector<std::string> revoked;
    std::vector<std::string> problems;
  };
  std::vector<Outcome> outcomes(kThreads);
  {
    SessionStore store = open_store();
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&store, &outcome = outcomes[static_cast<std::size_t>(t)], t] {
        const std::string user = "user-" + std::to_string(t);
        try {
          for (int i = 0; i < kPerThread; ++i) {
            const NewSession created = store.create(user);
            const auto validated = store.validate(created.token);
            if (!validated || validated->user_id != user) {
              outcome.problems.push_back("fresh session did not validate");
            }
            if (i % 3 == 0) {
              if (!store.revoke(created.token)) outcome.problems.push_back("revoke was false");
              if (store.validate(created.token)) outcome.problems.push_back("revoked validated");
              outcome.revoked.push_back(created.token);
            } else {
              outcome.alive.push_back(created.token);
            }
            for (const std::string& token : outcome.alive) {
              if (!store.validate(token)) outcome.problems.push_back("live token lost");
            }
            (void)store.list_user(user);
            (void)store.size();
          }
        } catch (const std::exception& error) {
          outcome.problems.push_back(std::string("threw: ") + error.what());
        }
      });
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
  EXPECT_EQ(raw_count(), static_cast<std::int64_t>(alive));
}

}  // namespace

// The SessionStore features beyond the basic contract, run on every backend from one parameterised
// suite (parameters "sqlite" and "postgres", a fresh database per test) with a ManualClock:
// rotation (the old token dead at once and across a restart, storage holding exactly the new
// row, a replayed old token reported), revoke_others, update_data (write-through, bytes, the
// size limit, eight concurrent writers that never mix), OIDC back-channel logout by sid or sub,
// tenant scoping (a scoped store never returns, lists or revokes another tenant's rows, even
// those another store wrote), the per-user cap under eight creating threads, the reaper (it
// purges on its own, in bounded batches seen through a recording decorator, and stops when the
// store goes), events (never a token; a throwing listener fails nothing) and stats(), with a
// real failed write. Where a test waits for the reaper thread it polls for the outcome with a
// generous deadline; nothing asserts how long anything took.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "session_backend.hpp"
#include "support/forwarding_backend.hpp"
#include "support/test_database.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::CreateOptions;
using pylon::ErrorCode;
using pylon::NewSession;
using pylon::Session;
using pylon::SessionEvent;
using pylon::SessionEventType;
using pylon::SessionStore;
using pylon::StoreOptions;
using pylon::StoreStats;
using pylon::test::ManualClock;
using pylon::test::same_session;
using pylon::test::TestDatabase;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;
using ::testing::UnorderedElementsAreArray;

constexpr std::int64_t kHour = 3600;

std::vector<std::string> ids_of(const std::vector<Session>& sessions) {
  std::vector<std::string> ids;
  ids.reserve(sessions.size());
  for (const Session& session : sessions) ids.push_back(session.id);
  return ids;
}

const char* type_name(SessionEventType type) {
  switch (type) {
    case SessionEventType::kCreated:
      return "created";
    case SessionEventType::kValidatedExpired:
      return "validated_expired";
    case SessionEventType::kRevoked:
      return "revoked";
    case SessionEventType::kRotated:
      return "rotated";
    case SessionEventType::kRotatedTokenReused:
      return "rotated_token_reused";
    case SessionEventType::kPurged:
      return "purged";
    case SessionEventType::kReaperFailed:
      return "reaper_failed";
    case SessionEventType::kFilePermissionsTightened:
      return "file_permissions_tightened";
    case SessionEventType::kChangeFeedLost:
      return "change_feed_lost";
    case SessionEventType::kChangeFeedResumed:
      return "change_feed_resumed";
    case SessionEventType::kUserAttached:
      return "user_attached";
    case SessionEventType::kReauthenticated:
      return "reauthenticated";
    case SessionEventType::kExtended:
      return "extended";
    case SessionEventType::kTenantRevoked:
      return "tenant_revoked";
  }
  return "?";
}

// Every event a store delivered, from whichever thread delivered it.
class EventLog {
 public:
  void add(const SessionEvent& event) {
    const std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(event);
  }
  std::vector<SessionEvent> events() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return events_;
  }
  // The events of one type.
  std::vector<SessionEvent> of(SessionEventType type) {
    std::vector<SessionEvent> matching;
    for (const SessionEvent& event : events()) {
      if (event.type == type) matching.push_back(event);
    }
    return matching;
  }
  // The sum of the counts of the kPurged events.
  std::size_t purged() {
    std::size_t total = 0;
    for (const SessionEvent& event : of(SessionEventType::kPurged)) total += event.count;
    return total;
  }

 private:
  std::mutex mutex_;
  std::vector<SessionEvent> events_;
};

// One line per event, for failure messages.
std::string describe(const std::vector<SessionEvent>& events) {
  std::string text;
  for (const SessionEvent& event : events) {
    text += std::string("\n  ") + type_name(event.type) + " id=" + event.session_id +
            " user=" + event.user_id + " replaced_by=" + event.replaced_by +
            " count=" + std::to_string(event.count);
  }
  return text;
}

// True when any field of any event holds any of the tokens, in any form a leak could take.
bool events_leak(const std::vector<SessionEvent>& events, const std::vector<std::string>& tokens) {
  for (const SessionEvent& event : events) {
    for (const std::string& token : tokens) {
      for (const std::string* field : {&event.session_id, &event.user_id, &event.replaced_by}) {
        if (pylon::test::contains_raw_token(*field, token)) return true;
      }
    }
  }
  return false;
}

// Polls `done` every 50 ms until it holds or 30 s have passed; true if it held. For outcomes a
// background thread produces: the assertion is on the outcome, never on the time it took.
bool eventually(const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return done();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return true;
}

// A store on a fresh database of the backend under test, with the default durations, a manual
// clock and an event log.
class FeatureContract : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &db_)); }

  [[nodiscard]] StoreOptions options() const {
    StoreOptions options;
    options.clock = clock_.fn();
    options.on_event = [log = events_](const SessionEvent& event) { log->add(event); };
    return options;
  }
  [[nodiscard]] SessionStore open_store() const { return open_store(options()); }
  [[nodiscard]] SessionStore open_store(const StoreOptions& options) const {
    return SessionStore::open(db_->url(), options);
  }
  [[nodiscard]] StoreOptions scoped_options(const std::string& tenant) const {
    StoreOptions scoped = options();
    scoped.tenant_id = tenant;
    return scoped;
  }

  // What storage holds, read through a backend of its own.
  [[nodiscard]] std::vector<Session> stored_rows() const { return db_->open_backend()->load_all(); }
  [[nodiscard]] std::vector<std::string> stored_ids() const { return ids_of(stored_rows()); }
  [[nodiscard]] std::optional<Session> stored(const std::string& id) const {
    return pylon::test::find_loaded(*db_->open_backend(), id);
  }

  std::unique_ptr<TestDatabase> db_;
  ManualClock clock_{1'700'000'000};
  std::shared_ptr<EventLog> events_ = std::make_shared<EventLog>();
};

INSTANTIATE_TEST_SUITE_P(Backends, FeatureContract,
                         ::testing::ValuesIn(pylon::test::contract_backends()),
                         pylon::test::backend_name);

// ------------------------------------------------------------------------------------------------
// 1. Rotation
// ------------------------------------------------------------------------------------------------

TEST_P(FeatureContract, RotateGivesANewTokenForTheSameSession) {
  CreateOptions create;
  create.tenant_id = "acme";
  create.idp_session_id = "idp-sid-1";
  create.device = "Firefox on Linux";
  create.ip = "198.51.100.7";
  create.data = std::string("\0\xff{cart:3}\xc3\x28", 12);
  NewSession created;
  NewSession rotated;
  {
    SessionStore store = open_store();
    created = store.create("alice", create);
    clock_.advance(90);  // rotation keeps created_at, not "now"
    std::optional<NewSession> result = store.rotate(created.token);
    ASSERT_TRUE(result.has_value());
    rotated = *std::move(result);

    EXPECT_TRUE(pylon::is_well_formed_token(rotated.token));
    EXPECT_NE(rotated.token, created.token);
    EXPECT_EQ(rotated.session.id, pylon::session_id_for_token(rotated.token));
    EXPECT_NE(rotated.session.id, created.session.id);
    Session expected = created.session;
    expected.id = rotated.session.id;
    EXPECT_TRUE(same_session(expected, rotated.session))
        << "same user, tenant, data, created_at, device, ip, idp_session_id and expiry";

    const std::vector<Session> rows = stored_rows();
    ASSERT_EQ(rows.size(), 1U) << "storage holds exactly the new row, before any slide";
    EXPECT_EQ(rows.at(0).id, rotated.session.id);
    EXPECT_TRUE(same_session(rotated.session, rows.at(0)));

    EXPECT_FALSE(store.validate(created.token).has_value()) << "the old token is dead at once";
    EXPECT_FALSE(store.find(created.session.id).has_value());
    const auto validated = store.validate(rotated.token);
    ASSERT_TRUE(validated.has_value());
    EXPECT_EQ(validated->user_id, "alice");
    EXPECT_TRUE(validated->data == create.data);
    EXPECT_THAT(ids_of(store.list_user("alice")), ElementsAre(rotated.session.id));
  }
  SessionStore restarted = open_store();
  EXPECT_FALSE(restarted.validate(created.token).has_value()) << "also after a restart";
  EXPECT_FALSE(restarted.find(created.session.id).has_value());
  const auto validated = restarted.validate(rotated.token);
  ASSERT_TRUE(validated.has_value());
  EXPECT_EQ(validated->created_at, created.session.created_at);
  EXPECT_EQ(validated->tenant_id, create.tenant_id);
  EXPECT_EQ(validated->device, create.device);
  EXPECT_EQ(validated->idp_session_id, create.idp_session_id);
  EXPECT_TRUE(validated->data == create.data);
}

TEST_P(FeatureContract, RotatingAgainChainsAndOnlyTheNewestTokenWorks) {
  SessionStore store = open_store();
  const NewSession first = store.create("alice");
  const auto second = store.rotate(first.token);
  ASSERT_TRUE(second.has_value());
  const auto third = store.rotate(second->token);
  ASSERT_TRUE(third.has_value());
  EXPECT_FALSE(store.rotate(first.token).has_value());
  EXPECT_FALSE(store.rotate(second->token).has_value());
  EXPECT_FALSE(store.validate(first.token).has_value());
  EXPECT_FALSE(store.validate(second->token).has_value());
  EXPECT_TRUE(store.validate(third->token).has_value());
  EXPECT_THAT(stored_ids(), ElementsAre(third->session.id));
}

TEST_P(FeatureContract, RotatingAnUnknownMalformedRevokedOrExpiredTokenGivesNothing) {
  SessionStore store = open_store();
  const NewSession kept = store.create("alice");
  EXPECT_FALSE(store.rotate(pylon::generate_token()).has_value()) << "unknown";
  EXPECT_FALSE(store.rotate("").has_value());
  EXPECT_FALSE(store.rotate("pylon_not-a-token").has_value());
  std::string upper = kept.token;
  std::transform(upper.begin(), upper.end(), upper.begin(),
                 [](char c) { return c >= 'a' && c <= 'f' ? static_cast<char>(c - 32) : c; });
  EXPECT_FALSE(store.rotate(upper).has_value()) << "malformed";
  EXPECT_FALSE(store.rotate(std::string(kept.token) + "0").has_value());

  const NewSession revoked = store.create("alice");
  ASSERT_TRUE(store.revoke(revoked.token));
  EXPECT_FALSE(store.rotate(revoked.token).has_value()) << "revoked";

  const NewSession expiring = store.create("bob");
  clock_.advance(kHour);
  EXPECT_FALSE(store.rotate(expiring.token).has_value()) << "expired";

  EXPECT_THAT(stored_ids(), UnorderedElementsAre(kept.session.id, expiring.session.id))
      << "no rotation wrote anything";
  EXPECT_TRUE(events_->of(SessionEventType::kRotated).empty());
}

TEST_P(FeatureContract, RotationAndAReplayedOldTokenRaiseEventsWithoutTheToken) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  const auto rotated = store.rotate(created.token);
  ASSERT_TRUE(rotated.has_value());

  const std::vector<SessionEvent> rotations = events_->of(SessionEventType::kRotated);
  ASSERT_EQ(rotations.size(), 1U) << describe(events_->events());
  EXPECT_EQ(rotations.at(0).session_id, created.session.id);
  EXPECT_EQ(rotations.at(0).replaced_by, rotated->session.id);
  EXPECT_EQ(rotations.at(0).user_id, "alice");
  EXPECT_TRUE(events_->of(SessionEventType::kRotatedTokenReused).empty())
      << "nobody presented the old token yet";

  EXPECT_FALSE(store.validate(created.token).has_value());
  const std::vector<SessionEvent> reuses = events_->of(SessionEventType::kRotatedTokenReused);
  ASSERT_EQ(reuses.size(), 1U) << describe(events_->events());
  EXPECT_EQ(reuses.at(0).session_id, created.session.id);
  EXPECT_EQ(reuses.at(0).replaced_by, rotated->session.id);
  EXPECT_EQ(reuses.at(0).user_id, "alice");

  EXPECT_FALSE(events_leak(events_->events(), {created.token, rotated->token}))
      << describe(events_->events());
  EXPECT_TRUE(store.validate(rotated->token).has_value()) << "the report revokes nothing";
}

TEST_P(FeatureContract, EightThreadsRotatingOneTokenLeaveExactlyOneSuccessor) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  std::mutex mutex;
  std::vector<NewSession> winners;
  std::vector<std::string> failures;
  std::vector<std::thread> threads;
  threads.reserve(8);
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      try {
        std::optional<NewSession> result = store.rotate(created.token);
        const std::lock_guard<std::mutex> lock(mutex);
        if (result) winners.push_back(*std::move(result));
      } catch (const std::exception& error) {
        const std::lock_guard<std::mutex> lock(mutex);
        failures.emplace_back(error.what());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_THAT(failures, ::testing::IsEmpty());
  ASSERT_EQ(winners.size(), 1U) << "one token, one rotation";
  EXPECT_THAT(stored_ids(), ElementsAre(winners.at(0).session.id));
  EXPECT_THAT(ids_of(store.list_user("alice")), ElementsAre(winners.at(0).session.id));
  EXPECT_FALSE(store.validate(created.token).has_value());
  EXPECT_TRUE(store.validate(winners.at(0).token).has_value());
}

// ------------------------------------------------------------------------------------------------
// 2. Sign out the others
// ------------------------------------------------------------------------------------------------

TEST_P(FeatureContract, RevokeOthersKeepsThisSessionAndSignsOutTheUsersOthers) {
  SessionStore store = open_store();
  const NewSession mine = store.create("alice");
  const NewSession laptop = store.create("alice");
  CreateOptions tenant;
  tenant.tenant_id = "t2";
  const NewSession phone = store.create("alice", tenant);
  const NewSession bob = store.create("bob");
  // A session another instance of the application created after this store loaded.
  NewSession elsewhere;
  {
    SessionStore other = open_store();
    elsewhere = other.create("alice");
  }

  EXPECT_EQ(store.revoke_others(mine.token), 3U) << "laptop, phone and the other instance's";
  EXPECT_THAT(stored_ids(), UnorderedElementsAre(mine.session.id, bob.session.id));
  EXPECT_TRUE(store.validate(mine.token).has_value());
  EXPECT_TRUE(store.validate(bob.token).has_value());
  EXPECT_FALSE(store.validate(laptop.token).has_value());
  EXPECT_FALSE(store.validate(phone.token).has_value());
  EXPECT_THAT(ids_of(store.list_user("alice")), ElementsAre(mine.session.id));

  EXPECT_EQ(store.revoke_others(mine.token), 0U) << "nothing left to sign out";
  SessionStore restarted = open_store();
  EXPECT_TRUE(restarted.validate(mine.token).has_value());
  EXPECT_FALSE(restarted.validate(laptop.token).has_value());
  EXPECT_FALSE(restarted.validate(elsewhere.token).has_value());
}

TEST_P(FeatureContract, RevokeOthersWithoutALiveSessionRevokesNothing) {
  SessionStore store = open_store();
  const NewSession a = store.create("alice");
  const NewSession b = store.create("alice");
  EXPECT_EQ(store.revoke_others(pylon::generate_token()), 0U);
  EXPECT_EQ(store.revoke_others("garbage"), 0U);
  const NewSession gone = store.create("alice");
  ASSERT_TRUE(store.revoke(gone.token));
  EXPECT_EQ(store.revoke_others(gone.token), 0U) << "a revoked token signs out nobody";
  EXPECT_THAT(stored_ids(), UnorderedElementsAre(a.session.id, b.session.id));
}

// ------------------------------------------------------------------------------------------------
// 3. Session data
// ------------------------------------------------------------------------------------------------

TEST_P(FeatureContract, UpdateDataIsWriteThroughAndSurvivesARestart) {
  const std::string bytes = std::string("\0\x01\xff\xfe", 4) + "cart=3" +
                            std::string("\xc3\x28\xa0\xa1\0", 5) + std::string(1000, '\0');
  NewSession created;
  {
    SessionStore store = open_store();
    CreateOptions create;
    create.data = "before";
    create.device = "phone";
    created = store.create("alice", create);
    const auto updated = store.update_data(created.token, bytes);
    ASSERT_TRUE(updated.has_value());
    EXPECT_TRUE(updated->data == bytes);
    Session expected = created.session;
    expected.data = bytes;
    EXPECT_TRUE(same_session(expected, *updated)) << "only the data changes";

    const auto stored_now = stored(created.session.id);
    ASSERT_TRUE(stored_now.has_value());
    EXPECT_TRUE(stored_now->data == bytes) << "in storage before update_data returns";
    const auto validated = store.validate(created.token);
    ASSERT_TRUE(validated.has_value());
    EXPECT_TRUE(validated->data == bytes);
  }
  SessionStore restarted = open_store();
  const auto validated = restarted.validate(created.token);
  ASSERT_TRUE(validated.has_value());
  EXPECT_EQ(validated->data.size(), bytes.size());
  EXPECT_TRUE(validated->data == bytes);
  EXPECT_EQ(validated->device, "phone");
}

TEST_P(FeatureContract, UpdateDataOverTheLimitIsRefusedAndStoresNothing) {
  StoreOptions opts = options();
  opts.max_data_bytes = 16;
  SessionStore store = open_store(opts);
  CreateOptions create;
  create.data = "original";
  const NewSession created = store.create("alice", create);
  EXPECT_PYLON_ERROR(store.update_data(created.token, std::string(17, 'x')),
                     ErrorCode::kInvalidArgument);
  const auto unchanged = stored(created.session.id);
  ASSERT_TRUE(unchanged.has_value());
  EXPECT_EQ(unchanged->data, "original");
  const auto cached = store.find(created.session.id);
  ASSERT_TRUE(cached.has_value());
  EXPECT_EQ(cached->data, "original");

  const auto at_limit = store.update_data(created.token, std::string(16, '\0'));
  ASSERT_TRUE(at_limit.has_value()) << "exactly max_data_bytes fits";
  const auto stored_at_limit = stored(created.session.id);
  ASSERT_TRUE(stored_at_limit.has_value());
  EXPECT_TRUE(stored_at_limit->data == std::string(16, '\0'));
}

TEST_P(FeatureContract, UpdateDataWithoutALiveSessionGivesNothingAndStoresNothing) {
  SessionStore store = open_store();
  const NewSession revoked = store.create("alice");
  ASSERT_TRUE(store.revoke(revoked.token));
  EXPECT_FALSE(store.update_data(revoked.token, "x").has_value());
  EXPECT_FALSE(store.update_data(pylon::generate_token(), "x").has_value());
  EXPECT_FALSE(store.update_data("garbage", "x").has_value());
  const NewSession expired = store.create("bob");
  clock_.advance(kHour);
  EXPECT_FALSE(store.update_data(expired.token, "x").has_value());
  const std::vector<Session> rows = stored_rows();
  ASSERT_EQ(rows.size(), 1U) << "no update resurrected a session or wrote a new one";
  EXPECT_EQ(rows.at(0).id, expired.session.id);
  EXPECT_EQ(rows.at(0).data, "");
}

// Two instances of an application on one database, each with its cache: one signs the user out,
// then the other, whose cache has not heard of it, updates the session's data. The update must
// not bring the deleted row back (rotate() already checks this, through replace()).
TEST_P(FeatureContract, UpdateDataNeverBringsBackASessionAnotherInstanceRevoked) {
  SessionStore first = open_store();
  const NewSession created = first.create("alice");
  {
    SessionStore second = open_store();
    ASSERT_TRUE(second.revoke(created.token));
  }
  ASSERT_FALSE(db_->has(created.session.id));
  try {
    first.update_data(created.token, "cart=4");
  } catch (const pylon::Error& error) {  // refusing is fine; resurrecting is not
    SCOPED_TRACE(error.what());
  }
  EXPECT_FALSE(db_->has(created.session.id)) << "update_data re-inserted a revoked session";
  SessionStore restarted = open_store();
  EXPECT_FALSE(restarted.validate(created.token).has_value())
      << "a signed-out session is valid again after a restart";
}

TEST_P(FeatureContract, ASlideNeverBringsBackASessionAnotherInstanceRevoked) {
  SessionStore first = open_store();
  const NewSession created = first.create("alice");
  {
    SessionStore second = open_store();
    ASSERT_TRUE(second.revoke(created.token));
  }
  clock_.advance(61);  // past the touch interval: this validate writes a slide
  EXPECT_FALSE(first.validate(created.token).has_value())
      << "the slide found the row gone, so the session is gone here too";
  EXPECT_FALSE(db_->has(created.session.id)) << "the slide re-inserted a revoked session";
  SessionStore restarted = open_store();
  EXPECT_FALSE(restarted.validate(created.token).has_value());
}

TEST_P(FeatureContract, ConcurrentUpdatesOfOneSessionNeverMixAndTheLastWriterWins) {
  SessionStore store = open_store();
  const NewSession created = store.create("alice");
  std::vector<std::string> payloads;
  payloads.reserve(8);
  for (int i = 0; i < 8; ++i) {
    // Distinct lengths and bytes, so any mix of two payloads is none of them.
    payloads.push_back(
        "writer-" + std::to_string(i) + ":" +
        std::string(static_cast<std::size_t>(512 + (64 * i)), static_cast<char>('a' + i)) +
        std::string(1, '\0'));
  }
  std::mutex mutex;
  std::vector<std::string> failures;
  std::vector<std::thread> threads;
  threads.reserve(payloads.size());
  for (const std::string& payload : payloads) {
    threads.emplace_back([&, payload] {
      for (int round = 0; round < 5; ++round) {
        try {
          const auto updated = store.update_data(created.token, payload);
          if (!updated || updated->data != payload) {
            const std::lock_guard<std::mutex> lock(mutex);
            failures.emplace_back("update_data did not return the payload it wrote");
          }
        } catch (const std::exception& error) {
          const std::lock_guard<std::mutex> lock(mutex);
          failures.emplace_back(error.what());
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_THAT(failures, ::testing::IsEmpty());

  const auto cached = store.find(created.session.id);
  const auto in_storage = stored(created.session.id);
  ASSERT_TRUE(cached.has_value());
  ASSERT_TRUE(in_storage.has_value());
  EXPECT_TRUE(cached->data == in_storage->data) << "the cache is as storage is";
  EXPECT_NE(std::find(payloads.begin(), payloads.end(), in_storage->data), payloads.end())
      << "the stored data is one whole payload, never a mix (size " << in_storage->data.size()
      << ")";
  SessionStore restarted = open_store();
  const auto validated = restarted.validate(created.token);
  ASSERT_TRUE(validated.has_value());
  EXPECT_TRUE(validated->data == in_storage->data);
}

// ------------------------------------------------------------------------------------------------
// 4. OIDC back-channel logout
// ------------------------------------------------------------------------------------------------

NewSession create_with_sid(SessionStore& store, const std::string& user,
                           std::optional<std::string> sid) {
  CreateOptions create;
  create.idp_session_id = std::move(sid);
  return store.create(user, create);
}

TEST_P(FeatureContract, LogoutBySidRevokesExactlyTheSessionsOfThatIdpSession) {
  SessionStore store = open_store();
  const NewSession a1 = create_with_sid(store, "alice", "sid-A");
  const NewSession a2 = create_with_sid(store, "alice", "sid-A");
  const NewSession a3 = create_with_sid(store, "alice", "sid-B");
  const NewSession a4 = create_with_sid(store, "alice", std::nullopt);
  const NewSession b1 = create_with_sid(store, "bob", "sid-C");
  NewSession elsewhere;  // another instance, after this store loaded
  {
    SessionStore other = open_store();
    elsewhere = create_with_sid(other, "alice", "sid-A");
  }

  EXPECT_EQ(store.logout_by_claims("sid-A", "alice"), 3U)
      << "by sid when given, including the other instance's session";
  EXPECT_THAT(stored_ids(), UnorderedElementsAre(a3.session.id, a4.session.id, b1.session.id));
  EXPECT_FALSE(store.validate(a1.token).has_value());
  EXPECT_FALSE(store.validate(a2.token).has_value());
  EXPECT_TRUE(store.validate(a3.token).has_value()) << "another sid of the same user stays";
  EXPECT_TRUE(store.validate(a4.token).has_value());
  EXPECT_TRUE(store.validate(b1.token).has_value());

  EXPECT_EQ(store.logout_by_claims("sid-A", std::nullopt), 0U) << "a repeated logout is no error";
  SessionStore restarted = open_store();
  EXPECT_FALSE(restarted.validate(a1.token).has_value());
  EXPECT_FALSE(restarted.validate(elsewhere.token).has_value());
  EXPECT_TRUE(restarted.validate(a3.token).has_value());
}

TEST_P(FeatureContract, LogoutBySubRevokesEveryOneOfTheUsersSessions) {
  SessionStore store = open_store();
  create_with_sid(store, "alice", "sid-A");
  create_with_sid(store, "alice", "sid-B");
  create_with_sid(store, "alice", std::nullopt);
  const NewSession b1 = create_with_sid(store, "bob", "sid-A2");
  EXPECT_EQ(store.logout_by_claims(std::nullopt, "alice"), 3U);
  EXPECT_THAT(stored_ids(), ElementsAre(b1.session.id));
  EXPECT_TRUE(store.list_user("alice").empty());
  EXPECT_TRUE(store.validate(b1.token).has_value());
}

// Two identity providers whose `sid` and `sub` values collide, each mapped to a tenant on one
// unscoped store: a logout scoped to one tenant never reaches the other's sessions.
TEST_P(FeatureContract, ALogoutScopedToATenantNeverReachesAnotherTenantsSessions) {
  SessionStore store = open_store();
  const auto create_in = [&store](const std::string& tenant, const std::string& sid) {
    CreateOptions where;
    where.tenant_id = tenant;
    where.idp_session_id = sid;
    return store.create("alice", where);
  };
  const NewSession a_first = create_in("idp-a", "sid-1");
  const NewSession a_second = create_in("idp-a", "sid-2");
  const NewSession b_first = create_in("idp-b", "sid-1");
  const NewSession b_second = create_in("idp-b", "sid-2");

  EXPECT_EQ(store.logout_by_claims("sid-1", std::nullopt, "idp-a"), 1U);
  EXPECT_FALSE(store.validate(a_first.token).has_value());
  EXPECT_TRUE(store.validate(b_first.token).has_value()) << "the same sid at another provider";

  EXPECT_EQ(store.logout_by_claims(std::nullopt, "alice", "idp-b"), 2U);
  EXPECT_FALSE(store.validate(b_first.token).has_value());
  EXPECT_FALSE(store.validate(b_second.token).has_value());
  EXPECT_TRUE(store.validate(a_second.token).has_value()) << "the same sub at another provider";
  EXPECT_THAT(stored_ids(), ElementsAre(a_second.session.id));

  SessionStore scoped = open_store(scoped_options("idp-a"));
  EXPECT_EQ(scoped.logout_by_claims("sid-2", std::nullopt, "idp-b"), 0U) << "not its tenant";
  EXPECT_TRUE(scoped.validate(a_second.token).has_value());
}

// In an unscoped store the cap counts a user's sessions per tenant: one tenant's logins never
// evict another's.
TEST_P(FeatureContract, TheCapCountsSessionsPerTenantAndUser) {
  StoreOptions capped = options();
  capped.max_sessions_per_user = 1;
  SessionStore store = open_store(capped);
  CreateOptions in_a;
  in_a.tenant_id = "a";
  CreateOptions in_b;
  in_b.tenant_id = "b";
  const NewSession first_a = store.create("alice", in_a);
  const NewSession first_b = store.create("alice", in_b);
  const NewSession untenanted = store.create("alice");
  EXPECT_THAT(stored_ids(),
              UnorderedElementsAre(first_a.session.id, first_b.session.id, untenanted.session.id));
  clock_.advance(1);
  const NewSession second_a = store.create("alice", in_a);
  EXPECT_THAT(stored_ids(),
              UnorderedElementsAre(second_a.session.id, first_b.session.id, untenanted.session.id));
  EXPECT_FALSE(store.validate(first_a.token).has_value());
}

TEST_P(FeatureContract, LogoutWithUnknownClaimsRevokesNothingAndWithoutClaimsIsRefused) {
  SessionStore store = open_store();
  const NewSession a1 = create_with_sid(store, "alice", "sid-A");
  const NewSession b1 = create_with_sid(store, "bob", std::nullopt);
  EXPECT_EQ(store.logout_by_claims("sid-unknown", std::nullopt), 0U);
  EXPECT_EQ(store.logout_by_claims("sid-unknown", "alice"), 0U) << "sid wins over sub";
  EXPECT_EQ(store.logout_by_claims(std::nullopt, "nobody"), 0U);
  EXPECT_PYLON_ERROR(store.logout_by_claims(std::nullopt, std::nullopt),
                     ErrorCode::kInvalidArgument);
  EXPECT_THAT(stored_ids(), UnorderedElementsAre(a1.session.id, b1.session.id));
  EXPECT_TRUE(store.validate(a1.token).has_value());
  EXPECT_TRUE(store.validate(b1.token).has_value());
}

// ------------------------------------------------------------------------------------------------
// 5. Tenants
// ------------------------------------------------------------------------------------------------

TEST_P(FeatureContract, AStoreScopedToATenantNeverReturnsListsOrRevokesAnothersSessions) {
  NewSession a_t1;
  NewSession a_t2;
  NewSession a_none;
  NewSession b_t2;
  {
    SessionStore unscoped = open_store();
    CreateOptions t1;
    t1.tenant_id = "t1";
    CreateOptions t2;
    t2.tenant_id = "t2";
    t2.idp_session_id = "sid-t2";
    a_t1 = unscoped.create("alice", t1);
    a_t2 = unscoped.create("alice", t2);
    a_none = unscoped.create("alice");
    b_t2 = unscoped.create("bob", t2);
  }
  SessionStore scoped = open_store(scoped_options("t1"));
  EXPECT_EQ(scoped.size(), 1U);
  EXPECT_EQ(scoped.stats().sessions, 1U);

  EXPECT_FALSE(scoped.validate(a_t2.token).has_value());
  EXPECT_FALSE(scoped.find(a_t2.session.id).has_value());
  EXPECT_FALSE(scoped.validate(a_none.token).has_value()) << "no tenant is not tenant t1";
  EXPECT_FALSE(scoped.rotate(a_t2.token).has_value());
  EXPECT_FALSE(scoped.update_data(a_t2.token, "mine now").has_value());
  EXPECT_THAT(ids_of(scoped.list_user("alice")), ElementsAre(a_t1.session.id));
  EXPECT_TRUE(scoped.list_user("alice", "t2").empty());
  EXPECT_TRUE(scoped.list_user("bob").empty());

  EXPECT_FALSE(scoped.revoke(a_t2.token));
  EXPECT_FALSE(scoped.revoke_id(a_t2.session.id));
  EXPECT_FALSE(scoped.revoke_id(a_none.session.id));
  EXPECT_EQ(scoped.revoke_user("alice", "t2"), 0U);
  EXPECT_EQ(scoped.revoke_user("bob"), 0U);
  EXPECT_EQ(scoped.logout_by_claims("sid-t2", std::nullopt), 0U);
  EXPECT_EQ(scoped.logout_by_claims(std::nullopt, "bob"), 0U);
  EXPECT_EQ(scoped.revoke_others(a_t1.token), 0U) << "alice's other sessions are other tenants'";
  EXPECT_THAT(stored_ids(), UnorderedElementsAre(a_t1.session.id, a_t2.session.id,
                                                 a_none.session.id, b_t2.session.id));
  const auto untouched = stored(a_t2.session.id);
  ASSERT_TRUE(untouched.has_value());
  EXPECT_TRUE(same_session(a_t2.session, *untouched));

  EXPECT_EQ(scoped.revoke_user("alice"), 1U) << "only the t1 row";
  EXPECT_THAT(stored_ids(),
              UnorderedElementsAre(a_t2.session.id, a_none.session.id, b_t2.session.id));

  SessionStore other_tenant = open_store(scoped_options("t2"));
  EXPECT_TRUE(other_tenant.validate(a_t2.token).has_value()) << "t2's store still has it";
  EXPECT_THAT(ids_of(other_tenant.list_user("alice")), ElementsAre(a_t2.session.id));
}

TEST_P(FeatureContract, AScopedStoreStampsItsTenantAndRefusesAnother) {
  SessionStore scoped = open_store(scoped_options("t1"));
  const NewSession stamped = scoped.create("alice");
  EXPECT_EQ(stamped.session.tenant_id, "t1");
  CreateOptions same;
  same.tenant_id = "t1";
  const NewSession explicit_t1 = scoped.create("alice", same);
  EXPECT_EQ(explicit_t1.session.tenant_id, "t1");
  CreateOptions other;
  other.tenant_id = "t2";
  EXPECT_PYLON_ERROR(scoped.create("alice", other), ErrorCode::kInvalidArgument);

  const std::vector<Session> rows = stored_rows();
  ASSERT_EQ(rows.size(), 2U) << "the refused create stored nothing";
  for (const Session& row : rows) EXPECT_EQ(row.tenant_id, "t1") << row.id;
  EXPECT_EQ(scoped.list_user("alice").size(), 2U);
}

TEST_P(FeatureContract, ListAndRevokeOneTenantOfAUserOnAnUnscopedStore) {
  SessionStore store = open_store();
  CreateOptions t1;
  t1.tenant_id = "t1";
  CreateOptions t2;
  t2.tenant_id = "t2";
  const NewSession a1 = store.create("alice", t1);
  const NewSession a2 = store.create("alice", t1);
  const NewSession a3 = store.create("alice", t2);
  const NewSession a4 = store.create("alice");
  const NewSession b1 = store.create("bob", t1);

  EXPECT_THAT(ids_of(store.list_user("alice", "t1")),
              UnorderedElementsAre(a1.session.id, a2.session.id));
  EXPECT_THAT(ids_of(store.list_user("alice", "t2")), ElementsAre(a3.session.id));
  EXPECT_TRUE(store.list_user("alice", "t3").empty());
  EXPECT_EQ(store.list_user("alice").size(), 4U);

  EXPECT_EQ(store.revoke_user("alice", "t3"), 0U);
  EXPECT_EQ(store.revoke_user("alice", "t1"), 2U);
  EXPECT_THAT(stored_ids(), UnorderedElementsAre(a3.session.id, a4.session.id, b1.session.id));
  EXPECT_FALSE(store.validate(a1.token).has_value());
  EXPECT_FALSE(store.validate(a2.token).has_value());
  EXPECT_TRUE(store.validate(a3.token).has_value());
  EXPECT_TRUE(store.validate(a4.token).has_value());
  EXPECT_TRUE(store.validate(b1.token).has_value()) << "another user of the same tenant";
  EXPECT_THAT(ids_of(store.list_user("alice")), UnorderedElementsAre(a3.session.id, a4.session.id));
}

// ------------------------------------------------------------------------------------------------
// 6. The cap under concurrency
// ------------------------------------------------------------------------------------------------

TEST_P(FeatureContract, EightThreadsCreatingForOneUserNeverExceedTheCap) {
  StoreOptions opts = options();
  opts.max_sessions_per_user = 3;
  SessionStore store = open_store(opts);

  std::atomic<bool> done{false};
  std::int64_t most_seen = 0;
  std::string monitor_error;
  // Reads storage over and over while the creates run.
  std::thread monitor([&] {
    try {
      while (!done) most_seen = std::max(most_seen, db_->count("user_id = 'alice'"));
    } catch (const std::exception& error) {
      monitor_error = error.what();
    }
  });
  std::mutex mutex;
  std::vector<std::string> failures;
  std::vector<std::thread> threads;
  threads.reserve(8);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10; ++i) {
        try {
          store.create("alice");
        } catch (const std::exception& error) {
          const std::lock_guard<std::mutex> lock(mutex);
          failures.emplace_back(error.what());
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  done = true;
  monitor.join();

  EXPECT_THAT(failures, ::testing::IsEmpty());
  EXPECT_EQ(monitor_error, "");
  EXPECT_LE(most_seen, 3) << "storage held more than the cap while the creates ran";
  const std::vector<std::string> in_storage = stored_ids();
  EXPECT_EQ(in_storage.size(), 3U);
  const std::vector<Session> listed = store.list_user("alice");
  EXPECT_LE(listed.size(), 3U);
  EXPECT_THAT(ids_of(listed), UnorderedElementsAreArray(in_storage)) << "cache == storage";
  EXPECT_EQ(store.size(), in_storage.size());
  const StoreStats stats = store.stats();
  EXPECT_EQ(stats.sessions, in_storage.size());
  EXPECT_EQ(stats.users, 1U);
}

// ------------------------------------------------------------------------------------------------
// 7. The reaper
// ------------------------------------------------------------------------------------------------

TEST_P(FeatureContract, TheReaperPurgesExpiredSessionsOnItsOwn) {
  StoreOptions opts = options();
  opts.reaper_interval = std::chrono::seconds(1);
  SessionStore store = open_store(opts);
  store.create("alice");
  store.create("alice");
  store.create("bob");
  clock_.advance(kHour + 1);
  const NewSession live = store.create("carol");

  ASSERT_TRUE(eventually([&] { return db_->count() == 1 && events_->purged() >= 3; }))
      << "the reaper never purged: " << db_->count() << " rows left;"
      << describe(events_->events());
  EXPECT_THAT(stored_ids(), ElementsAre(live.session.id));
  EXPECT_TRUE(eventually([&] { return store.stats().sessions == 1; }))
      << "the cache still holds " << store.stats().sessions;
  EXPECT_EQ(events_->purged(), 3U) << describe(events_->events());
  for (const SessionEvent& purge : events_->of(SessionEventType::kPurged)) {
    EXPECT_EQ(purge.session_id, "");
    EXPECT_EQ(purge.user_id, "");
  }
  EXPECT_TRUE(store.validate(live.token).has_value());
  EXPECT_EQ(store.list_user("carol").size(), 1U);
}

// A reaper whose purge fails (storage locked by another connection past the busy timeout) says
// so: a kReaperFailed event naming the failure, counted in stats(); and it purges again once
// storage is back.
TEST_P(FeatureContract, AFailingReaperRaisesAnEventAndIsCounted) {
  StoreOptions opts = options();
  opts.reaper_interval = std::chrono::seconds(1);
  SessionStore store = SessionStore::open(db_->impatient_url(), opts);
  store.create("alice");
  clock_.advance(kHour + 1);
  {
    const auto block = db_->block_writes();
    ASSERT_TRUE(eventually([&] { return !events_->of(SessionEventType::kReaperFailed).empty(); }))
        << "no kReaperFailed event while storage refused every write;"
        << describe(events_->events());
    EXPECT_GE(store.stats().reaper_failures, 1U);
    const SessionEvent failure = events_->of(SessionEventType::kReaperFailed).front();
    EXPECT_THAT(failure.detail, HasSubstr("[pylon."));
    EXPECT_EQ(failure.session_id, "");
  }
  ASSERT_TRUE(eventually([&] { return db_->count() == 0; }))
      << "the reaper did not purge once storage was back";
}

// Forwards every call to a real backend and records what remove_expired_batch() was asked and
// answered. It changes nothing: what the store sees comes from the real database.
class BatchRecordingBackend final : public pylon::test::ForwardingBackend {
 public:
  struct Batch {
    std::size_t limit;
    std::size_t removed;
  };

  BatchRecordingBackend(std::unique_ptr<pylon::SessionBackend> real,
                        std::shared_ptr<std::vector<Batch>> batches,
                        std::shared_ptr<std::mutex> mutex)
      : ForwardingBackend(std::move(real)),
        batches_(std::move(batches)),
        mutex_(std::move(mutex)) {}

  std::size_t remove_expired_batch(std::int64_t now, std::size_t limit) override {
    const std::size_t removed = ForwardingBackend::remove_expired_batch(now, limit);
    const std::lock_guard<std::mutex> lock(*mutex_);
    batches_->push_back({limit, removed});
    return removed;
  }

 private:
  std::shared_ptr<std::vector<Batch>> batches_;
  std::shared_ptr<std::mutex> mutex_;
};

TEST_P(FeatureContract, TheReaperDeletesInBatchesOfAtMostItsBatchSize) {
  std::vector<std::string> live_ids;
  {
    auto backend = db_->open_backend();
    for (int i = 0; i < 50; ++i) {
      Session expired = pylon::test::make_session("user-" + std::to_string(i % 5), i);
      expired.expires_at = clock_.now() - (i % 3);  // at or before now
      expired.absolute_expires_at = expired.expires_at;
      backend->save(expired);
    }
    for (int i = 0; i < 2; ++i) {
      Session live = pylon::test::make_session("keeper", 100 + i);
      live.expires_at = clock_.now() + kHour;
      live.absolute_expires_at = clock_.now() + kHour;
      backend->save(live);
      live_ids.push_back(live.id);
    }
  }
  ASSERT_EQ(db_->count(), 52);

  auto batches = std::make_shared<std::vector<BatchRecordingBackend::Batch>>();
  auto mutex = std::make_shared<std::mutex>();
  auto recorded = [&] {
    const std::lock_guard<std::mutex> lock(*mutex);
    return *batches;
  };
  {
    StoreOptions opts = options();
    opts.reaper_interval = std::chrono::seconds(1);
    opts.reaper_batch_size = 7;
    SessionStore store(std::make_unique<BatchRecordingBackend>(db_->open_backend(), batches, mutex),
                       opts);
    ASSERT_TRUE(eventually([&] { return events_->purged() >= 50; }))
        << db_->count() << " rows left;" << describe(events_->events());
    EXPECT_EQ(store.stats().sessions, 2U);
    EXPECT_THAT(ids_of(store.list_user("keeper")), UnorderedElementsAreArray(live_ids));
  }  // the destructor stops the reaper; the test finishing is the check

  EXPECT_THAT(stored_ids(), UnorderedElementsAreArray(live_ids)) << "all 50 expired rows gone";
  EXPECT_EQ(events_->purged(), 50U) << describe(events_->events());
  const std::vector<BatchRecordingBackend::Batch> seen = recorded();
  std::size_t total = 0;
  for (const BatchRecordingBackend::Batch& batch : seen) {
    EXPECT_EQ(batch.limit, 7U);
    EXPECT_LE(batch.removed, 7U);
    total += batch.removed;
  }
  EXPECT_EQ(total, 50U);
  EXPECT_GE(seen.size(), 8U) << "50 rows in batches of at most 7 take at least 8 statements";
}

TEST_P(FeatureContract, DestroyingAStoreStopsItsReaper) {
  NewSession created;
  {
    StoreOptions opts = options();
    opts.reaper_interval = std::chrono::hours(1);  // a destructor that waited would time out
    SessionStore store = open_store(opts);
    created = store.create("alice");
  }
  {
    StoreOptions opts = options();
    opts.reaper_interval = std::chrono::seconds(1);
    SessionStore store = open_store(opts);
    EXPECT_TRUE(store.validate(created.token).has_value());
    clock_.advance(kHour);
    ASSERT_TRUE(eventually([&] { return events_->purged() >= 1; }));
  }  // destroyed right after a purge, with the reaper waiting for the next interval
  EXPECT_EQ(db_->count(), 0);
  SessionStore after = open_store();  // the database is usable and nothing is left running
  EXPECT_EQ(after.size(), 0U);
}

TEST_P(FeatureContract, ReaperOptionsAreChecked) {
  StoreOptions no_batch = options();
  no_batch.reaper_interval = std::chrono::seconds(1);
  no_batch.reaper_batch_size = 0;
  EXPECT_PYLON_ERROR(static_cast<void>(open_store(no_batch)), ErrorCode::kInvalidArgument);
  StoreOptions negative = options();
  negative.reaper_interval = std::chrono::seconds(-1);
  EXPECT_PYLON_ERROR(static_cast<void>(open_store(negative)), ErrorCode::kInvalidArgument);
}

// ------------------------------------------------------------------------------------------------
// 8. Events and stats
// ------------------------------------------------------------------------------------------------

TEST_P(FeatureContract, EventsNameTheSessionAndUserAndNeverCarryAToken) {
  SessionStore store = open_store();
  const NewSession a = store.create("alice");
  ASSERT_TRUE(store.revoke(a.token));
  const NewSession b = store.create("bob");
  clock_.advance(kHour);
  EXPECT_FALSE(store.validate(b.token).has_value());
  EXPECT_EQ(store.purge_expired(), 1U);

  const std::vector<SessionEvent> seen = events_->events();
  ASSERT_EQ(seen.size(), 5U) << describe(seen);
  EXPECT_EQ(seen.at(0).type, SessionEventType::kCreated);
  EXPECT_EQ(seen.at(0).session_id, a.session.id);
  EXPECT_EQ(seen.at(0).user_id, "alice");
  EXPECT_EQ(seen.at(0).count, 1U);
  EXPECT_EQ(seen.at(1).type, SessionEventType::kRevoked);
  EXPECT_EQ(seen.at(1).session_id, a.session.id);
  EXPECT_EQ(seen.at(1).user_id, "alice");
  EXPECT_EQ(seen.at(1).count, 1U);
  EXPECT_EQ(seen.at(2).type, SessionEventType::kCreated);
  EXPECT_EQ(seen.at(2).session_id, b.session.id);
  EXPECT_EQ(seen.at(3).type, SessionEventType::kValidatedExpired);
  EXPECT_EQ(seen.at(3).session_id, b.session.id);
  EXPECT_EQ(seen.at(3).user_id, "bob");
  EXPECT_EQ(seen.at(4).type, SessionEventType::kPurged);
  EXPECT_EQ(seen.at(4).count, 1U);
  EXPECT_FALSE(events_leak(seen, {a.token, b.token})) << describe(seen);
  EXPECT_EQ(describe(seen).find("pylon_"), std::string::npos) << describe(seen);
}

TEST_P(FeatureContract, BulkRevocationsAreReportedWithTheirUserAndCount) {
  SessionStore store = open_store();
  const NewSession mine = store.create("alice");
  store.create("alice");
  store.create("alice");
  const NewSession b = store.create("bob");
  ASSERT_EQ(store.revoke_others(mine.token), 2U);
  ASSERT_EQ(store.revoke_user("bob"), 1U);
  std::size_t alice_revoked = 0;
  std::size_t bob_revoked = 0;
  for (const SessionEvent& event : events_->of(SessionEventType::kRevoked)) {
    EXPECT_NE(event.session_id, mine.session.id) << "the kept session was not revoked";
    (event.user_id == "alice" ? alice_revoked : bob_revoked) += event.count;
  }
  EXPECT_EQ(alice_revoked, 2U) << describe(events_->events());
  EXPECT_EQ(bob_revoked, 1U) << describe(events_->events());
  EXPECT_FALSE(events_leak(events_->events(), {mine.token, b.token}));
}

TEST_P(FeatureContract, AListenerThatThrowsFailsNoCall) {
  std::atomic<int> calls{0};
  StoreOptions opts = options();
  opts.on_event = [&calls](const SessionEvent&) {
    ++calls;
    throw std::runtime_error("listener failure");
  };
  SessionStore store = open_store(opts);
  const NewSession created = store.create("alice");
  const auto rotated = store.rotate(created.token);
  ASSERT_TRUE(rotated.has_value());
  EXPECT_FALSE(store.validate(created.token).has_value());  // kRotatedTokenReused
  ASSERT_TRUE(store.update_data(rotated->token, "data").has_value());
  ASSERT_TRUE(store.revoke(rotated->token));
  const NewSession expiring = store.create("bob");
  clock_.advance(kHour);
  EXPECT_FALSE(store.validate(expiring.token).has_value());  // kValidatedExpired
  EXPECT_EQ(store.purge_expired(), 1U);
  EXPECT_EQ(db_->count(), 0);
  EXPECT_GE(calls.load(), 7) << "the listener was called for every event, and threw each time";
}

TEST_P(FeatureContract, StatsCountSessionsUsersHitsMissesAndWrites) {
  SessionStore store = open_store();
  StoreStats stats = store.stats();
  EXPECT_EQ(stats.sessions, 0U);
  EXPECT_EQ(stats.users, 0U);
  EXPECT_EQ(stats.cache_hits, 0U);
  EXPECT_EQ(stats.cache_misses, 0U);
  EXPECT_EQ(stats.writes, 0U);
  EXPECT_EQ(stats.write_failures, 0U);
  EXPECT_EQ(stats.last_error, "");

  const NewSession a1 = store.create("alice");
  const NewSession a2 = store.create("alice");
  const NewSession b1 = store.create("bob");
  EXPECT_TRUE(store.validate(a1.token).has_value());      // hit
  EXPECT_TRUE(store.find(a2.session.id).has_value());     // hit
  EXPECT_FALSE(store.validate(pylon::generate_token()));  // miss
  EXPECT_FALSE(store.validate("garbage"));                // miss
  EXPECT_FALSE(store.find(std::string(64, '0')));         // miss
  stats = store.stats();
  EXPECT_EQ(stats.sessions, 3U);
  EXPECT_EQ(stats.users, 2U);
  EXPECT_EQ(stats.cache_hits, 2U);
  EXPECT_EQ(stats.cache_misses, 3U);
  EXPECT_EQ(stats.writes, 3U) << "three creates, and no slide within touch_interval";

  ASSERT_TRUE(store.revoke(b1.token));
  stats = store.stats();
  EXPECT_EQ(stats.sessions, 2U);
  EXPECT_EQ(stats.users, 1U);
  EXPECT_EQ(stats.writes, 4U);
  EXPECT_EQ(stats.write_failures, 0U);
  EXPECT_EQ(stats.last_error, "");
}

TEST_P(FeatureContract, StatsRecordARealFailedWrite) {
  SessionStore store = SessionStore::open(db_->impatient_url(), options());
  store.create("alice");
  {
    const auto block = db_->block_writes();
    EXPECT_PYLON_ERROR(store.create("bob"), ErrorCode::kBusy);
  }
  StoreStats stats = store.stats();
  EXPECT_EQ(stats.writes, 1U);
  EXPECT_EQ(stats.write_failures, 1U);
  EXPECT_THAT(stats.last_error, HasSubstr("[pylon.busy]"));
  EXPECT_EQ(stats.sessions, 1U) << "the failed create is not cached";
  EXPECT_EQ(stats.users, 1U);

  store.create("carol");
  stats = store.stats();
  EXPECT_EQ(stats.writes, 2U);
  EXPECT_EQ(stats.write_failures, 1U);
  EXPECT_THAT(stats.last_error, HasSubstr("[pylon.busy]")) << "the last error is kept";
}

}  // namespace

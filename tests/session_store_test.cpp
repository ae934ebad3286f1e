// What only the SQLite store shows (the shared contract is in store_contract_test.cpp): raw
// tokens absent from the bytes of the database files (.db, -wal, -shm) while the store is open
// and after it closed; options refused before any storage is opened, each past its range; and
// hostile rows (malformed fields, times out of range or order) skipped and counted.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "session_backend.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::CreateOptions;
using pylon::ErrorCode;
using pylon::NewSession;
using pylon::SessionStore;
using pylon::StoreOptions;
using pylon::test::ManualClock;
using pylon::test::TempDir;

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

// Each option refused just past its documented range, accepted at its edge, and the message
// names the option and its range. seconds::max() would overflow the reaper's wait.
TEST(StoreOptionsValidation, EveryOptionIsRangeChecked) {
  TempDir dir;
  const std::string path = dir.file("s.db");
  using std::chrono::seconds;
  constexpr std::int64_t kDay = 86400;
  constexpr std::int64_t kHundredYears = 36525 * kDay;
  const std::vector<std::pair<std::string, std::function<void(StoreOptions&, bool)>>> options = {
      {"absolute_ttl", [](StoreOptions& o,
                          bool over) { o.absolute_ttl = seconds(kHundredYears + (over ? 1 : 0)); }},
      {"idle_timeout", [](StoreOptions& o,
                          bool over) { o.idle_timeout = seconds(kHundredYears + (over ? 1 : 0)); }},
      {"touch_interval",
       [](StoreOptions& o, bool over) {
         o.touch_interval = seconds(kHundredYears + (over ? 1 : 0));
       }},
      {"reaper_interval",
       [](StoreOptions& o, bool over) {
         o.reaper_interval = over ? seconds::max() : seconds(365 * kDay);
       }},
      {"rotation_grace",
       [](StoreOptions& o, bool over) { o.rotation_grace = seconds(kDay + (over ? 1 : 0)); }},
      {"max_sessions_per_user",
       [](StoreOptions& o, bool over) {
         o.max_sessions_per_user =
             static_cast<std::size_t>(pylon::kMaxSessionsPerUser) + (over ? 1 : 0);
       }},
      {"max_data_bytes",
       [](StoreOptions& o, bool over) {
         o.max_data_bytes = over ? std::numeric_limits<std::size_t>::max()
                                 : static_cast<std::size_t>(pylon::kMaxDataBytes);
       }},
      {"reaper_batch_size",
       [](StoreOptions& o, bool over) {
         o.reaper_interval = seconds(3600);
         o.reaper_batch_size = over ? 0 : static_cast<std::size_t>(pylon::kMaxReaperBatchSize);
       }},
  };
  for (const auto& [name, set] : options) {
    StoreOptions at_edge;
    set(at_edge, false);
    EXPECT_NO_THROW(SessionStore::open(path, at_edge)) << name << " at the edge of its range";
    StoreOptions past_edge;
    set(past_edge, true);
    const auto error =
        pylon::test::capture_pylon_error([&] { SessionStore::open(path, past_edge); });
    ASSERT_TRUE(error.has_value()) << name << " past its range was accepted";
    EXPECT_EQ(error->code(), ErrorCode::kInvalidArgument) << name;
    EXPECT_THAT(error->what(), ::testing::HasSubstr("StoreOptions::" + name)) << name;
    EXPECT_THAT(error->what(), ::testing::HasSubstr("outside its range")) << name;
  }
}

TEST(SqliteStore, RawTokensNeverReachTheDatabaseFiles) {
  TempDir dir;
  const std::string path = dir.file("sessions.db");
  ManualClock clock;
  StoreOptions options;
  options.clock = clock.fn();
  const auto open_store = [&] { return SessionStore::open(path, options); };
  std::vector<NewSession> created;
  {
    SessionStore store = open_store();
    for (int i = 0; i < 5; ++i) {
      CreateOptions create;
      create.device = "device";
      create.data = "payload";
      created.push_back(store.create("alice", create));
    }
    clock.advance(120);
    for (const NewSession& c : created) ASSERT_TRUE(store.validate(c.token).has_value());
    ASSERT_TRUE(store.revoke(created[0].token));

    const std::string open_bytes = pylon::test::read_database_files(path);
    EXPECT_NE(open_bytes.find(created[1].session.id), std::string::npos)
        << "sanity: the ids are in the files we read";
    for (const NewSession& c : created) {
      EXPECT_FALSE(pylon::test::contains_raw_token(open_bytes, c.token));
    }
  }
  const std::string closed_bytes = pylon::test::read_database_files(path);
  EXPECT_NE(closed_bytes.find(created[1].session.id), std::string::npos);
  for (const NewSession& c : created) {
    EXPECT_FALSE(pylon::test::contains_raw_token(closed_bytes, c.token));
  }
}

// Hostile rows (hand-edited or damaged files): each is skipped and counted at start-up, never
// cached and never handed out, and the file keeps them as they were.
TEST(HostileRows, RowsNoWriteWouldStoreAreSkippedCountedAndLeftInPlace) {
  TempDir dir;
  const std::string path = dir.file("s.db");
  NewSession kept;
  {
    SessionStore store = SessionStore::open(path);
    kept = store.create("alice");
  }
  const std::string good_id = kept.session.id;
  {
    pylon::test::RawDb raw(path);
    raw.exec("PRAGMA ignore_check_constraints = ON");  // as a hand-edited file would have them
    const std::string insert =
        "INSERT INTO _pylon_sessions (id, user_id, tenant_id, created_at, expires_at, "
        "last_seen_at, absolute_expires_at, device, ip, data, idp_session_id) VALUES ";
    const std::string far = std::to_string(pylon::system_clock_now() + 3600);
    // A digest of the wrong length, an upper-case digest, a user over kMaxUserIdBytes (an empty
    // user is an anonymous session, which is served), a user with invalid UTF-8, a device
    // holding a NUL byte.
    raw.exec(insert + "('abc', 'bob', NULL, 0, " + far + ", 0, " + far +
             ", NULL, NULL, x'', NULL)");
    raw.exec(insert + "('" + std::string(64, 'A') + "', 'bob', NULL, 0, " + far + ", 0, " + far +
             ", NULL, NULL, x'', NULL)");
    raw.exec(insert + "('" + std::string(64, 'a') + "', '" +
             std::string(pylon::kMaxUserIdBytes + 1, 'u') + "', NULL, 0, " + far + ", 0, " + far +
             ", NULL, NULL, x'', NULL)");
    raw.exec(insert + "('" + std::string(64, 'b') + "', CAST(x'ff62' AS TEXT), NULL, 0, " + far +
             ", 0, " + far + ", NULL, NULL, x'', NULL)");
    raw.exec(insert + "('" + std::string(64, 'c') + "', 'carol', NULL, 0, " + far + ", 0, " + far +
             ", CAST(x'410042' AS TEXT), NULL, x'', NULL)");
  }
  const std::string before = pylon::test::read_file_bytes(path);
  SessionStore store = SessionStore::open(path);
  EXPECT_EQ(store.stats().skipped_rows, 5U);
  EXPECT_EQ(store.size(), 1U);
  EXPECT_TRUE(store.validate(kept.token).has_value());
  EXPECT_FALSE(store.find(std::string(64, 'c')).has_value());
  EXPECT_FALSE(store.find(std::string(64, 'b')).has_value());
  EXPECT_TRUE(store.list_user("bob").empty());
  EXPECT_EQ(pylon::test::read_file_bytes(path), before) << "loading must not rewrite the rows";
}

// Rows whose times no write of pylon's makes, each under the hash of a token a client could
// present: skipped and counted, never served, and no arithmetic on them overflows (the ASan+UBSan
// build runs this).
TEST(HostileRows, RowsWithTimesOutOfRangeOrOutOfOrderAreSkipped) {
  TempDir dir;
  const std::string path = dir.file("s.db");
  NewSession kept;
  {
    SessionStore store = SessionStore::open(path);
    kept = store.create("alice");
  }
  const std::int64_t now = pylon::system_clock_now();
  const std::string min = std::to_string(std::numeric_limits<std::int64_t>::min());
  const std::string max = std::to_string(std::numeric_limits<std::int64_t>::max());
  const std::string past = std::to_string(now - 60);
  const std::string soon = std::to_string(now + 3600);
  const std::string later = std::to_string(now + 7200);
  const std::string year_10000 = std::to_string(pylon::kMaxSessionTime + 1);
  // created_at, expires_at, last_seen_at, absolute_expires_at
  const std::vector<std::array<std::string, 4>> hostile = {
      {past, soon, min, soon},        // last_seen_at = INT64_MIN (before created_at)
      {past, max, past, max},         // served for ever
      {past, max, past, "0"},         // served for ever, without a cap
      {soon, soon, past, soon},       // created after it was last seen
      {past, later, past, soon},      // expires after its hard cap
      {"-5", soon, past, soon},       // created before 1970
      {past, year_10000, past, "0"},  // beyond the year 9999
      {min, soon, min, soon},         // every time at the bottom of the range
  };
  std::vector<std::string> tokens;
  {
    pylon::test::RawDb raw(path);
    for (const auto& times : hostile) {
      tokens.push_back(pylon::generate_token());
      raw.exec(
          "INSERT INTO _pylon_sessions (id, user_id, tenant_id, created_at, expires_at, "
          "last_seen_at, absolute_expires_at, device, ip, data, idp_session_id) VALUES ('" +
          pylon::session_id_for_token(tokens.back()) + "', 'mallory', NULL, " + times[0] + ", " +
          times[1] + ", " + times[2] + ", " + times[3] + ", NULL, NULL, x'', NULL)");
    }
    // A device string far over its limit.
    tokens.push_back(pylon::generate_token());
    raw.exec(
        "INSERT INTO _pylon_sessions (id, user_id, tenant_id, created_at, expires_at, "
        "last_seen_at, absolute_expires_at, device, ip, data, idp_session_id) VALUES ('" +
        pylon::session_id_for_token(tokens.back()) + "', 'mallory', NULL, " + past + ", " + soon +
        ", " + past + ", " + soon + ", '" + std::string(pylon::kMaxDeviceBytes + 1, 'd') +
        "', NULL, x'', NULL)");
  }
  StoreOptions options;
  options.touch_interval = std::chrono::seconds(0);  // every validate would slide
  SessionStore store = SessionStore::open(path, options);
  EXPECT_EQ(store.stats().skipped_rows, hostile.size() + 1);
  EXPECT_EQ(store.size(), 1U);
  for (const std::string& token : tokens) EXPECT_FALSE(store.validate(token).has_value());
  EXPECT_TRUE(store.list_user("mallory").empty());
  EXPECT_TRUE(store.validate(kept.token).has_value());
}

}  // namespace

// A store's change feed does not read back what its own writes logged (the SQLite backend records
// the positions its groups wrote, and its change source skips them), but applies every write of
// another store. Misses never read storage here, so the other store's session can only come
// through the feed.
TEST(SessionStoreChangeFeed, OwnWritesAreNotReadBackAndAnotherStoresAreApplied) {
  TempDir dir;
  const std::string path = dir.file("shared.db");
  StoreOptions options;
  options.change_check_interval = std::chrono::milliseconds(0);  // the feed runs before lookups
  options.miss_lookups_per_second = 0;
  SessionStore a(pylon::open_sqlite_backend(path), options);
  SessionStore b(pylon::open_sqlite_backend(path), options);
  std::vector<std::string> tokens(20);
  for (std::string& token : tokens) token = a.create("alice").token;
  ASSERT_TRUE(a.revoke(tokens.back()));
  ASSERT_TRUE(a.update_data(tokens.front(), "{}").has_value());

  EXPECT_FALSE(a.validate(pylon::generate_token()).has_value());  // runs a's feed
  EXPECT_EQ(a.stats().changes_applied, 0U) << "a read its own writes back";
  EXPECT_TRUE(a.validate(tokens.front()).has_value());

  EXPECT_FALSE(b.validate(pylon::generate_token()).has_value());  // runs b's feed
  EXPECT_GE(b.stats().changes_applied, 22U);
  EXPECT_TRUE(b.validate(tokens.front()).has_value());
  EXPECT_FALSE(b.validate(tokens.back()).has_value());

  const NewSession from_b = b.create("bob");
  EXPECT_TRUE(a.validate(from_b.token).has_value()) << "a missed b's create";
  EXPECT_EQ(a.stats().changes_applied, 1U);
}

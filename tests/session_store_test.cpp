// What only the SQLite store shows (the shared contract is in store_contract_test.cpp): raw
// tokens absent from the bytes of the database files (.db, -wal, -shm) while the store is open
// and after it closed; and options refused before any storage is opened.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
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
    // A digest of the wrong length, an upper-case digest, an empty user, a user with invalid
    // UTF-8, a device holding a NUL byte.
    raw.exec(insert + "('abc', 'bob', NULL, 0, " + far + ", 0, " + far +
             ", NULL, NULL, x'', NULL)");
    raw.exec(insert + "('" + std::string(64, 'A') + "', 'bob', NULL, 0, " + far + ", 0, " + far +
             ", NULL, NULL, x'', NULL)");
    raw.exec(insert + "('" + std::string(64, 'a') + "', '', NULL, 0, " + far + ", 0, " + far +
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

}  // namespace

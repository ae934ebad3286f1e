// The SessionBackend contract, run on every backend from one parameterised suite (parameters
// "sqlite" and "postgres", a fresh database per test): every field round-trips byte for byte
// (NUL bytes and invalid UTF-8 in data, extreme times, empty versus absent text), across a
// close and reopen; upsert, remove, remove_user and remove_expired; two backends on one
// database; text storage cannot hold refused with the same pylon::Error, code and message, on
// every backend; a write under another connection's lock fails with kBusy and stores nothing;
// a newer schema version, a view or a foreign table named _pylon_sessions refused, the database
// left as it was. Backend-only cases live in sqlite_backend_test.cpp and pg_backend_test.cpp.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "session_backend.hpp"
#include "support/test_database.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::ErrorCode;
using pylon::Session;
using pylon::test::find_loaded;
using pylon::test::make_session;
using pylon::test::same_session;
using pylon::test::TestDatabase;
using ::testing::HasSubstr;

// load_all() as a map from id, failing the test on a duplicate id.
std::map<std::string, Session> load_by_id(pylon::SessionBackend& backend) {
  std::map<std::string, Session> by_id;
  for (Session& session : backend.load_all()) {
    const std::string id = session.id;
    EXPECT_TRUE(by_id.emplace(id, std::move(session)).second) << "duplicate id " << id;
  }
  return by_id;
}

// Every byte value, then the bytes that most often get mangled.
std::string awkward_bytes() {
  std::string bytes;
  for (int i = 0; i < 256; ++i) bytes.push_back(static_cast<char>(i));
  bytes += std::string("\x00\xff\xfe", 3);
  bytes += std::string("\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc", 11);  // invalid UTF-8
  bytes += std::string(3, '\0');
  return bytes;
}

class BackendContract : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &db_)); }

  std::unique_ptr<pylon::SessionBackend> open() const { return db_->open_backend(); }

  std::unique_ptr<TestDatabase> db_;
};

INSTANTIATE_TEST_SUITE_P(Backends, BackendContract,
                         ::testing::ValuesIn(pylon::test::contract_backends()),
                         pylon::test::backend_name);

// ------------------------------------------------------------------------------------------------
// Round trips and the five operations
// ------------------------------------------------------------------------------------------------

TEST_P(BackendContract, SaveThenLoadAllRoundTrips) {
  auto backend = open();
  Session full = make_session("alice", 1);
  full.data = awkward_bytes();
  Session sparse;
  sparse.id = pylon::session_id_for_token(pylon::generate_token());
  sparse.user_id = "bob";
  sparse.created_at = 10;
  sparse.expires_at = 20;
  sparse.last_seen_at = 15;
  backend->save(full);
  backend->save(sparse);

  const auto loaded = load_by_id(*backend);
  ASSERT_EQ(loaded.size(), 2U);
  ASSERT_EQ(loaded.count(full.id), 1U);
  ASSERT_EQ(loaded.count(sparse.id), 1U);
  EXPECT_TRUE(same_session(full, loaded.at(full.id)));
  EXPECT_TRUE(same_session(sparse, loaded.at(sparse.id)));
  EXPECT_EQ(loaded.at(full.id).data.size(), full.data.size());
}

TEST_P(BackendContract, RoundTripSurvivesClosingAndReopening) {
  Session session = make_session("alice", 2);
  session.data = awkward_bytes();
  open()->save(session);

  auto reopened = open();
  const auto loaded = load_by_id(*reopened);
  ASSERT_EQ(loaded.size(), 1U);
  ASSERT_EQ(loaded.count(session.id), 1U);
  EXPECT_TRUE(same_session(session, loaded.at(session.id)));
}

TEST_P(BackendContract, NonAsciiTextFieldsRoundTrip) {
  auto backend = open();
  Session session = make_session("usuário-ümlaut-用户-🙂", 3);
  session.tenant_id = "société";
  session.device = "Safari — iPhone 🍎";
  session.ip = "2001:db8::1";
  backend->save(session);
  const auto loaded = find_loaded(*backend, session.id);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(same_session(session, *loaded));
}

TEST_P(BackendContract, EmptyOptionalTextStaysDistinctFromAbsent) {
  auto backend = open();
  Session session = make_session("alice", 4);
  session.tenant_id = "";
  session.device = "";
  session.ip = "";
  session.data = "";
  backend->save(session);
  const auto loaded = find_loaded(*backend, session.id);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(same_session(session, *loaded));
}

TEST_P(BackendContract, ExtremeTimesRoundTrip) {
  auto backend = open();
  Session session = make_session("alice", 5);
  session.created_at = std::numeric_limits<std::int64_t>::min();
  session.last_seen_at = -1;
  session.expires_at = std::numeric_limits<std::int64_t>::max();
  session.absolute_expires_at = std::numeric_limits<std::int64_t>::max() - 1;
  backend->save(session);
  const auto loaded = find_loaded(*backend, session.id);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(same_session(session, *loaded));
}

TEST_P(BackendContract, LargeDataRoundTrips) {
  Session session = make_session("alice", 6);
  session.data = pylon::test::random_bytes(std::size_t{1} << 20U, 6);
  open()->save(session);
  const auto loaded = find_loaded(*open(), session.id);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(loaded->data == session.data) << "1 MiB of random bytes must come back unchanged";
}

TEST_P(BackendContract, UpsertReplacesEveryField) {
  auto backend = open();
  const Session original = make_session("alice", 7);
  backend->save(original);

  Session replacement;
  replacement.id = original.id;
  replacement.user_id = "bob";
  replacement.created_at = original.created_at + 1;
  replacement.expires_at = original.expires_at + 100;
  replacement.last_seen_at = original.last_seen_at + 50;
  replacement.data = std::string("\0new", 4);
  replacement.absolute_expires_at = 0;
  backend->save(replacement);

  auto loaded = load_by_id(*backend);
  ASSERT_EQ(loaded.size(), 1U);
  EXPECT_TRUE(same_session(replacement, loaded.at(original.id)));

  // And back again: absent optionals become present.
  backend->save(original);
  loaded = load_by_id(*backend);
  ASSERT_EQ(loaded.size(), 1U);
  EXPECT_TRUE(same_session(original, loaded.at(original.id)));
  EXPECT_EQ(db_->count(), 1);
}

TEST_P(BackendContract, RemoveReportsWhetherARowWasRemoved) {
  auto backend = open();
  const Session keep = make_session("alice", 8);
  const Session gone = make_session("alice", 9);
  backend->save(keep);
  backend->save(gone);
  EXPECT_TRUE(backend->remove(gone.id));
  EXPECT_FALSE(backend->remove(gone.id));
  EXPECT_FALSE(backend->remove(pylon::session_id_for_token(pylon::generate_token())));
  EXPECT_FALSE(backend->remove(std::string("\0\xff", 2))) << "an id no row can have";
  const auto loaded = load_by_id(*backend);
  ASSERT_EQ(loaded.size(), 1U);
  EXPECT_EQ(loaded.count(keep.id), 1U);
  EXPECT_FALSE(db_->has(gone.id));
}

TEST_P(BackendContract, RemoveUserCountsTheUsersRows) {
  auto backend = open();
  for (int i = 0; i < 3; ++i) backend->save(make_session("alice", i));
  for (int i = 0; i < 2; ++i) backend->save(make_session("bob", 10 + i));
  backend->save(make_session("alice2", 20));  // a prefix match is not a match
  backend->save(make_session("ALICE", 21));   // nor is another case

  EXPECT_EQ(backend->remove_user("alice"), 3U);
  EXPECT_EQ(backend->remove_user("alice"), 0U);
  EXPECT_EQ(backend->remove_user("nobody"), 0U);
  EXPECT_EQ(backend->remove_user("al%"), 0U) << "no pattern matching";
  EXPECT_EQ(backend->remove_user(std::string("a\0", 2)), 0U) << "a user no row can have";
  const auto loaded = backend->load_all();
  ASSERT_EQ(loaded.size(), 4U);
  for (const Session& session : loaded) EXPECT_NE(session.user_id, "alice");
  EXPECT_EQ(db_->count("user_id = 'alice'"), 0);
}

TEST_P(BackendContract, RemoveExpiredDeletesRowsExpiringAtOrBeforeNow) {
  auto backend = open();
  std::vector<Session> sessions;
  for (const std::int64_t expires_at : {50, 99, 100, 101, 5000}) {
    Session session = make_session("alice", static_cast<int>(expires_at));
    session.expires_at = expires_at;
    backend->save(session);
    sessions.push_back(session);
  }
  EXPECT_EQ(backend->remove_expired(100), 3U);
  EXPECT_EQ(backend->remove_expired(100), 0U);
  backend.reset();

  const auto loaded = load_by_id(*open());
  ASSERT_EQ(loaded.size(), 2U);
  EXPECT_EQ(loaded.count(sessions[3].id), 1U);
  EXPECT_EQ(loaded.count(sessions[4].id), 1U);
}

TEST_P(BackendContract, TwoBackendsOnOneDatabaseSeeEachOthersWrites) {
  auto first = open();
  auto second = open();
  const Session session = make_session("alice", 11);
  first->save(session);
  EXPECT_TRUE(find_loaded(*second, session.id).has_value());
  EXPECT_TRUE(second->remove(session.id));
  EXPECT_FALSE(find_loaded(*first, session.id).has_value());
  EXPECT_FALSE(first->remove(session.id));
}

TEST_P(BackendContract, DescribeNamesTheDatabase) {
  EXPECT_THAT(open()->describe(), HasSubstr(db_->name_in_messages()));
}

// ------------------------------------------------------------------------------------------------
// Fields storage cannot hold: the same Error, code and message, on every backend
// ------------------------------------------------------------------------------------------------

// The exact what() and backend_detail() of the refusal of a text field: spelled out here, so
// both instances of the suite compare with one text.
std::string refused_text_message(const std::string& field) {
  return "[pylon.invalid_argument] session field '" + field +
         "' must be UTF-8 text without NUL bytes (use `data` for arbitrary bytes)";
}

void expect_refused_text(pylon::SessionBackend& backend, const Session& session,
                         const std::string& field) {
  const auto error = pylon::test::capture_pylon_error([&] { backend.save(session); });
  ASSERT_TRUE(error.has_value()) << field << " must be refused";
  EXPECT_EQ(error->code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(std::string(error->what()), refused_text_message(field));
  EXPECT_EQ(error->backend_detail(), "") << "refused before anything reaches storage";
}

TEST_P(BackendContract, NulInATextFieldIsRefusedAlikeAndStoresNothing) {
  auto backend = open();
  const std::string with_nul("al\0ice", 6);
  Session bad_user = make_session(with_nul, 26);
  Session bad_tenant = make_session("alice", 27);
  bad_tenant.tenant_id = with_nul;
  Session bad_device = make_session("alice", 28);
  bad_device.device = with_nul;
  Session bad_ip = make_session("alice", 29);
  bad_ip.ip = std::string("192.0.2.1\0", 10);
  expect_refused_text(*backend, bad_user, "user_id");
  expect_refused_text(*backend, bad_tenant, "tenant_id");
  expect_refused_text(*backend, bad_device, "device");
  expect_refused_text(*backend, bad_ip, "ip");
  EXPECT_TRUE(backend->load_all().empty());
  EXPECT_EQ(db_->count(), 0);
}

TEST_P(BackendContract, InvalidUtf8InATextFieldIsRefusedAlikeAndStoresNothing) {
  auto backend = open();
  Session bad_user = make_session("\xff\xfe", 30);
  Session bad_tenant = make_session("alice", 31);
  bad_tenant.tenant_id = "\xc3\x28";
  Session bad_device = make_session("alice", 32);
  bad_device.device = "agent \xed\xa0\x80";  // an encoded UTF-16 surrogate
  Session bad_ip = make_session("alice", 33);
  bad_ip.ip = "\x80";
  Session overlong = make_session("\xc0\xaf", 34);  // an overlong '/'
  expect_refused_text(*backend, bad_user, "user_id");
  expect_refused_text(*backend, bad_tenant, "tenant_id");
  expect_refused_text(*backend, bad_device, "device");
  expect_refused_text(*backend, bad_ip, "ip");
  expect_refused_text(*backend, overlong, "user_id");
  EXPECT_TRUE(backend->load_all().empty());
  EXPECT_EQ(db_->count(), 0);
}

TEST_P(BackendContract, MalformedIdIsRefusedAlikeAndStoresNothing) {
  auto backend = open();
  Session short_id = make_session("alice", 34);
  short_id.id = "abc";
  Session upper_id = make_session("alice", 35);
  upper_id.id = std::string(64, 'A');
  for (const Session* session : {&short_id, &upper_id}) {
    const auto error = pylon::test::capture_pylon_error([&] { backend->save(*session); });
    ASSERT_TRUE(error.has_value());
    EXPECT_EQ(std::string(error->what()),
              "[pylon.invalid_argument] session id must be 64 lowercase hex characters (the "
              "SHA-256 of a token)");
  }
  EXPECT_TRUE(backend->load_all().empty());
}

// An empty user_id is an anonymous session: stored and read back as it was, through a reopen,
// next to a user's row that holds the two columns of migration 0005.
TEST_P(BackendContract, AnAnonymousRowRoundTrips) {
  Session anonymous = make_session("", 36);
  anonymous.authenticated_at = 0;
  anonymous.idle_timeout_seconds = 1800;
  Session signed_in = make_session("alice", 37);
  signed_in.authenticated_at = signed_in.created_at + 5;
  signed_in.idle_timeout_seconds = 0;  // no idle expiry: not the same as "the store's"
  {
    auto backend = open();
    backend->save(anonymous);
    backend->save_batch({signed_in});
    const auto loaded = backend->load_one(anonymous.id);
    ASSERT_TRUE(loaded.has_value());
    EXPECT_TRUE(same_session(anonymous, *loaded));
    EXPECT_TRUE(loaded->is_anonymous());
  }
  auto reopened = open();
  const std::map<std::string, Session> stored = load_by_id(*reopened);
  ASSERT_EQ(stored.size(), 2U);
  ASSERT_EQ(stored.count(anonymous.id), 1U);
  EXPECT_TRUE(same_session(anonymous, stored.at(anonymous.id)));
  ASSERT_EQ(stored.count(signed_in.id), 1U);
  EXPECT_TRUE(same_session(signed_in, stored.at(signed_in.id)));
  EXPECT_EQ(db_->count("user_id = ''"), 1);
}

// ------------------------------------------------------------------------------------------------
// A write under another connection's lock
// ------------------------------------------------------------------------------------------------

TEST_P(BackendContract, SaveUnderAnotherConnectionsLockIsBusyThenSucceeds) {
  auto backend = pylon::open_backend(db_->impatient_url());
  const Session before_lock = make_session("alice", 21);
  backend->save(before_lock);

  const Session blocked = make_session("alice", 22);
  {
    const auto block = db_->block_writes();
    const auto error = pylon::test::capture_pylon_error([&] { backend->save(blocked); });
    ASSERT_TRUE(error.has_value()) << "a save under another writer's lock must fail";
    EXPECT_EQ(error->code(), ErrorCode::kBusy) << error->what();
    EXPECT_THAT(error->what(), HasSubstr(db_->name_in_messages()));
    EXPECT_FALSE(error->backend_detail().empty()) << "what the database said is kept for logs";
  }
  EXPECT_FALSE(db_->has(blocked.id)) << "the failed save left nothing behind";
  backend->save(blocked);
  const auto after = load_by_id(*backend);
  ASSERT_EQ(after.size(), 2U);
  EXPECT_TRUE(same_session(blocked, after.at(blocked.id)));
}

TEST_P(BackendContract, RemovesUnderAnotherConnectionsLockAreBusyAndRemoveNothing) {
  auto backend = pylon::open_backend(db_->impatient_url());
  Session session = make_session("alice", 23);
  session.expires_at = 100;
  backend->save(session);
  {
    const auto block = db_->block_writes();
    EXPECT_PYLON_ERROR(backend->remove(session.id), ErrorCode::kBusy);
    EXPECT_PYLON_ERROR(backend->remove_user("alice"), ErrorCode::kBusy);
    EXPECT_PYLON_ERROR(backend->remove_expired(1000), ErrorCode::kBusy);
  }
  EXPECT_TRUE(db_->has(session.id));
  EXPECT_TRUE(find_loaded(*backend, session.id).has_value());
  EXPECT_TRUE(backend->remove(session.id));
}

// ------------------------------------------------------------------------------------------------
// Databases that are not ours: refused, named, left as they were
// ------------------------------------------------------------------------------------------------

// Opening must throw pylon::Error with `code` naming the database, and change no table.
void expect_refused_and_unchanged(const TestDatabase& db, ErrorCode code,
                                  const std::string& also_named = {}) {
  const std::string before = db.all_tables_text();
  const std::string file_before =
      db.is_postgres() ? std::string() : pylon::test::read_file_bytes(db.sqlite_path());
  const auto error = pylon::test::capture_pylon_error([&] { db.open_backend(); });
  ASSERT_TRUE(error.has_value()) << "opening must throw pylon::Error";
  EXPECT_EQ(error->code(), code) << "got " << pylon::to_string(error->code()) << ": "
                                 << error->what();
  EXPECT_THAT(error->what(), HasSubstr(db.name_in_messages()));
  if (!also_named.empty()) {
    EXPECT_THAT(error->what(), HasSubstr(also_named));
  }
  EXPECT_EQ(db.all_tables_text(), before) << "the database was changed";
  if (!db.is_postgres()) {
    EXPECT_TRUE(pylon::test::read_file_bytes(db.sqlite_path()) == file_before)
        << "the file was modified";
  }
}

TEST_P(BackendContract, NewerSchemaVersionIsRefusedAndUnchanged) {
  open()->save(make_session("alice", 15));
  db_->exec(
      "INSERT INTO _pylon_schema_migrations (version, name, applied_at) "
      "VALUES (999, '0999_from_the_future.sql', 1700000000)");
  expect_refused_and_unchanged(*db_, ErrorCode::kSchemaTooNew, "999");
  EXPECT_EQ(db_->count(), 1);
}

TEST_P(BackendContract, ViewNamedPylonSessionsIsRefusedAndUnchanged) {
  db_->exec("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT)");
  db_->exec("INSERT INTO things (id, name) VALUES (1, 'a'), (2, 'b')");
  db_->exec("CREATE VIEW _pylon_sessions AS SELECT id, name FROM things");
  expect_refused_and_unchanged(*db_, ErrorCode::kCorruptDatabase);
  EXPECT_EQ(db_->query_int("SELECT count(*) FROM _pylon_sessions"), 2) << "the view is still there";
}

TEST_P(BackendContract, ForeignPylonSessionsTableIsRefusedAndUnchanged) {
  db_->exec("CREATE TABLE _pylon_sessions (session_key TEXT PRIMARY KEY, payload TEXT, n INT)");
  db_->exec("INSERT INTO _pylon_sessions VALUES ('k1', 'x', 1), ('k2', '', 2)");
  expect_refused_and_unchanged(*db_, ErrorCode::kCorruptDatabase);
  EXPECT_EQ(db_->count(), 2);
}

TEST_P(BackendContract, PylonColumnsOfAnotherTypeAreRefusedAndUnchanged) {
  // Our column names, but `data` as text and the times as text: not our schema.
  db_->exec(
      "CREATE TABLE _pylon_sessions (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, tenant_id TEXT, "
      "created_at TEXT, expires_at TEXT, last_seen_at TEXT, absolute_expires_at TEXT, "
      "device TEXT, ip TEXT, data TEXT)");
  db_->exec(
      "INSERT INTO _pylon_sessions (id, user_id, created_at, expires_at, last_seen_at, "
      "absolute_expires_at, data) VALUES ('" +
      std::string(64, 'a') + "', 'alice', 'soon', 'later', 'now', 'never', 'text')");
  const std::string before = db_->all_tables_text();
  const auto error = pylon::test::capture_pylon_error([&] {
    auto backend = db_->open_backend();
    backend->load_all();
  });
  ASSERT_TRUE(error.has_value()) << "a table of other types must not be read as ours";
  EXPECT_EQ(error->code(), ErrorCode::kCorruptDatabase) << error->what();
  EXPECT_EQ(db_->all_tables_text(), before);
}

TEST_P(BackendContract, OtherApplicationTablesAreUntouched) {
  db_->exec("CREATE TABLE app_users (id INTEGER PRIMARY KEY, name TEXT NOT NULL)");
  db_->exec("CREATE INDEX app_users_by_name ON app_users (name)");
  db_->exec("INSERT INTO app_users (id, name) VALUES (1, 'ann'), (2, 'ben'), (3, 'cat')");
  const auto rows_before = db_->query("SELECT id, name FROM app_users ORDER BY id");
  {
    auto backend = open();
    const Session session = make_session("ann", 16);
    backend->save(session);
    backend->remove_expired(std::numeric_limits<std::int64_t>::max());
    backend->remove_user("ann");
    backend->save(session);
  }
  open();  // a second open runs no migration twice
  EXPECT_EQ(db_->query("SELECT id, name FROM app_users ORDER BY id"), rows_before);
  EXPECT_EQ(db_->count(), 1);
  EXPECT_EQ(db_->query_int("SELECT count(*) FROM _pylon_schema_migrations WHERE version = 1"), 1);
}

}  // namespace

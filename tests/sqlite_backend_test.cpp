// The SQLite SessionBackend on real files: every field round-trips byte for byte (NUL bytes and
// invalid UTF-8 in data), upsert/remove/remove_user/remove_expired semantics, file mode 0600,
// WAL and the synchronous setting, refusal of files that are not ours (garbage, text, damaged,
// newer schema, a foreign _pylon_sessions) leaving them byte for byte unchanged, unusable paths,
// immutable files, a write that fails under another connection's lock, and fields storage
// cannot hold.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <future>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "session_backend.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::ErrorCode;
using pylon::Session;
using pylon::test::find_loaded;
using pylon::test::list_dir;
using pylon::test::make_session;
using pylon::test::make_unwritable;
using pylon::test::RawDb;
using pylon::test::read_file_bytes;
using pylon::test::same_session;
using pylon::test::TempDir;
using ::testing::AnyOf;
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

// Restores the process umask on scope exit.
class ScopedUmask {
 public:
  explicit ScopedUmask(mode_t mask) : previous_(::umask(mask)) {}
  ~ScopedUmask() { ::umask(previous_); }
  ScopedUmask(const ScopedUmask&) = delete;
  ScopedUmask& operator=(const ScopedUmask&) = delete;

 private:
  mode_t previous_;
};

// ------------------------------------------------------------------------------------------------
// Round trips and the five operations
// ------------------------------------------------------------------------------------------------

TEST(SqliteBackend, SaveThenLoadAllRoundTrips) {
  TempDir dir;
  auto backend = pylon::open_sqlite_backend(dir.file("s.db"));
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

TEST(SqliteBackend, RoundTripSurvivesClosingAndReopening) {
  TempDir dir;
  const std::string path = dir.file("s.db");
  Session session = make_session("alice", 2);
  session.data = awkward_bytes();
  pylon::open_sqlite_backend(path)->save(session);

  auto reopened = pylon::open_sqlite_backend(path);
  const auto loaded = load_by_id(*reopened);
  ASSERT_EQ(loaded.size(), 1U);
  ASSERT_EQ(loaded.count(session.id), 1U);
  EXPECT_TRUE(same_session(session, loaded.at(session.id)));
}

TEST(SqliteBackend, NonAsciiTextFieldsRoundTrip) {
  TempDir dir;
  auto backend = pylon::open_sqlite_backend(dir.file("s.db"));
  Session session = make_session("usuário-ümlaut-用户-🙂", 3);
  session.tenant_id = "société";
  session.device = "Safari — iPhone 🍎";
  session.ip = "2001:db8::1";
  backend->save(session);
  const auto loaded = find_loaded(*backend, session.id);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(same_session(session, *loaded));
}

TEST(SqliteBackend, EmptyOptionalTextStaysDistinctFromAbsent) {
  TempDir dir;
  auto backend = pylon::open_sqlite_backend(dir.file("s.db"));
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

TEST(SqliteBackend, ExtremeTimesRoundTrip) {
  TempDir dir;
  auto backend = pylon::open_sqlite_backend(dir.file("s.db"));
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

TEST(SqliteBackend, LargeDataRoundTrips) {
  TempDir dir;
  const std::string path = dir.file("s.db");
  Session session = make_session("alice", 6);
  session.data = pylon::test::random_bytes(1 << 20, 6);
  pylon::open_sqlite_backend(path)->save(session);
  const auto loaded = find_loaded(*pylon::open_sqlite_backend(path), session.id);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(loaded->data == session.data) << "1 MiB of random bytes must come back unchanged";
}

TEST(SqliteBackend, UpsertReplacesEveryField) {
  TempDir dir;
  auto backend = pylon::open_sqlite_backend(dir.file("s.db"));
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
}

TEST(SqliteBackend, RemoveReportsWhetherARowWasRemoved) {
  TempDir dir;
  auto backend = pylon::open_sqlite_backend(dir.file("s.db"));
  const Session keep = make_session("alice", 8);
  const Session gone = make_session("alice", 9);
  backend->save(keep);
  backend->save(gone);
  EXPECT_TRUE(backend->remove(gone.id));
  EXPECT_FALSE(backend->remove(gone.id));
  EXPECT_FALSE(backend->remove(pylon::session_id_for_token(pylon::generate_token())));
  const auto loaded = load_by_id(*backend);
  ASSERT_EQ(loaded.size(), 1U);
  EXPECT_EQ(loaded.count(keep.id), 1U);
}

TEST(SqliteBackend, RemoveUserCountsTheUsersRows) {
  TempDir dir;
  auto backend = pylon::open_sqlite_backend(dir.file("s.db"));
  for (int i = 0; i < 3; ++i) backend->save(make_session("alice", i));
  for (int i = 0; i < 2; ++i) backend->save(make_session("bob", 10 + i));
  backend->save(make_session("alice2", 20));  // a prefix match is not a match

  EXPECT_EQ(backend->remove_user("alice"), 3U);
  EXPECT_EQ(backend->remove_user("alice"), 0U);
  EXPECT_EQ(backend->remove_user("nobody"), 0U);
  const auto loaded = backend->load_all();
  ASSERT_EQ(loaded.size(), 3U);
  for (const Session& session : loaded) EXPECT_NE(session.user_id, "alice");
}

TEST(SqliteBackend, RemoveExpiredDeletesRowsExpiringAtOrBeforeNow) {
  TempDir dir;
  const std::string path = dir.file("s.db");
  auto backend = pylon::open_sqlite_backend(path);
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

  const auto loaded = load_by_id(*pylon::open_sqlite_backend(path));
  ASSERT_EQ(loaded.size(), 2U);
  EXPECT_EQ(loaded.count(sessions[3].id), 1U);
  EXPECT_EQ(loaded.count(sessions[4].id), 1U);
}

TEST(SqliteBackend, TwoBackendsOnOneFileSeeEachOthersWrites) {
  TempDir dir;
  const std::string path = dir.file("s.db");
  auto first = pylon::open_sqlite_backend(path);
  auto second = pylon::open_sqlite_backend(path);
  const Session session = make_session("alice", 11);
  first->save(session);
  EXPECT_TRUE(find_loaded(*second, session.id).has_value());
  EXPECT_TRUE(second->remove(session.id));
  EXPECT_FALSE(find_loaded(*first, session.id).has_value());
}

TEST(SqliteBackend, DescribeNamesThePath) {
  TempDir dir;
  const std::string path = dir.file("described.db");
  EXPECT_THAT(pylon::open_sqlite_backend(path)->describe(), HasSubstr(path));
}

// ------------------------------------------------------------------------------------------------
// Storage discipline: file mode, WAL, synchronous
// ------------------------------------------------------------------------------------------------

TEST(SqliteBackend, NewFileHasMode0600EvenWithAPermissiveUmask) {
  TempDir dir;
  const std::string path = dir.file("s.db");
  ScopedUmask umask(0);
  auto backend = pylon::open_sqlite_backend(path);
  backend->save(make_session("alice", 12));
  EXPECT_EQ(pylon::test::file_mode(path), 0600U);
  for (const char* suffix : {"-wal", "-shm", "-journal"}) {
    if (pylon::test::file_exists(path + suffix)) {
      EXPECT_EQ(pylon::test::file_mode(path + suffix), 0600U) << suffix;
    }
  }
  EXPECT_TRUE(pylon::test::file_exists(path + "-wal")) << "WAL mode keeps a -wal file while open";
}

TEST(SqliteBackend, JournalModeIsWal) {
  TempDir dir;
  const std::string path = dir.file("s.db");
  auto backend = pylon::open_sqlite_backend(path);
  backend->save(make_session("alice", 13));
  {
    RawDb raw(path);
    EXPECT_EQ(raw.query_text("PRAGMA journal_mode"), "wal");
  }
  // WAL is recorded in the file header: bytes 18 and 19 (write and read versions) are 2.
  const std::string header = read_file_bytes(path);
  ASSERT_GE(header.size(), 100U);
  EXPECT_EQ(header.substr(0, 16), std::string("SQLite format 3\0", 16));
  EXPECT_EQ(static_cast<int>(header[18]), 2);
  EXPECT_EQ(static_cast<int>(header[19]), 2);
}

TEST(SqliteBackend, SynchronousIsFullByDefault) {
  pylon::test::ConnectionSpy::install();
  TempDir dir;
  const std::string path = dir.file("s.db");
  auto backend = pylon::open_sqlite_backend(path);
  const auto connections = pylon::test::ConnectionSpy::open_connections_to(path);
  ASSERT_EQ(connections.size(), 1U);
  EXPECT_EQ(pylon::test::pragma_int(connections.front(), "synchronous"), 2) << "2 is FULL";
  EXPECT_EQ(pylon::test::pragma_int(connections.front(), "busy_timeout"), 5000);
}

TEST(SqliteBackend, SynchronousNormalAndBusyTimeoutWhenAsked) {
  pylon::test::ConnectionSpy::install();
  TempDir dir;
  const std::string path = dir.file("s.db");
  pylon::SqliteOptions options;
  options.synchronous = pylon::SqliteSync::kNormal;
  options.busy_timeout = std::chrono::milliseconds(250);
  auto backend = pylon::open_sqlite_backend(path, options);
  const auto connections = pylon::test::ConnectionSpy::open_connections_to(path);
  ASSERT_EQ(connections.size(), 1U);
  EXPECT_EQ(pylon::test::pragma_int(connections.front(), "synchronous"), 1) << "1 is NORMAL";
  EXPECT_EQ(pylon::test::pragma_int(connections.front(), "busy_timeout"), 250);
}

TEST(SqliteBackend, MemoryDatabaseWorks) {
  auto backend = pylon::open_sqlite_backend(":memory:");
  const Session session = make_session("alice", 14);
  backend->save(session);
  const auto loaded = find_loaded(*backend, session.id);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(same_session(session, *loaded));
}

// ------------------------------------------------------------------------------------------------
// Files that are not ours: refused, named, untouched
// ------------------------------------------------------------------------------------------------

// Opens `path`, expecting a pylon::Error with one of `codes` whose message names the path, and
// the file byte for byte as it was. With `same_listing`, nothing may be created beside it either.
void expect_refused_and_untouched(const std::string& path, std::vector<ErrorCode> codes,
                                  bool same_listing = true) {
  const std::string before = read_file_bytes(path);
  const std::string parent = path.substr(0, path.rfind('/'));
  const auto listing_before = list_dir(parent);
  const auto error = pylon::test::capture_pylon_error([&] { pylon::open_sqlite_backend(path); });
  ASSERT_TRUE(error.has_value()) << "opening " << path << " must throw pylon::Error";
  EXPECT_THAT(codes, ::testing::Contains(error->code()))
      << "got " << pylon::to_string(error->code()) << ": " << error->what();
  EXPECT_THAT(error->what(), HasSubstr(path));
  EXPECT_TRUE(read_file_bytes(path) == before) << path << " was modified";
  if (same_listing) {
    EXPECT_EQ(list_dir(parent), listing_before);
  }
}

TEST(SqliteBackend, GarbageFileIsCorruptAndUntouched) {
  TempDir dir;
  const std::string path = dir.file("garbage.db");
  pylon::test::write_file_bytes(path, pylon::test::random_bytes(8192, 42));
  expect_refused_and_untouched(path, {ErrorCode::kCorruptDatabase});
}

TEST(SqliteBackend, TextFileIsCorruptAndUntouched) {
  TempDir dir;
  const std::string path = dir.file("notes.txt");
  std::string text;
  for (int i = 0; i < 200; ++i) text += "line " + std::to_string(i) + ": this is not a database\n";
  pylon::test::write_file_bytes(path, text);
  expect_refused_and_untouched(path, {ErrorCode::kCorruptDatabase});
}

TEST(SqliteBackend, ShortTextFileIsCorruptAndUntouched) {
  TempDir dir;
  const std::string path = dir.file("short.db");
  pylon::test::write_file_bytes(path, "hello\n");
  expect_refused_and_untouched(path, {ErrorCode::kCorruptDatabase});
}

TEST(SqliteBackend, SqliteMagicFollowedByGarbageIsRefusedAndUntouched) {
  TempDir dir;
  const std::string path = dir.file("magic.db");
  pylon::test::write_file_bytes(
      path, std::string("SQLite format 3\0", 16) + pylon::test::random_bytes(8192 - 16, 7));
  expect_refused_and_untouched(path, {ErrorCode::kCorruptDatabase});
}

TEST(SqliteBackend, ValidHeaderWithDamagedSchemaPageIsRefusedAndUntouched) {
  TempDir dir;
  const std::string path = dir.file("damaged.db");
  {
    RawDb raw(path);
    raw.exec("CREATE TABLE app_users (id INTEGER PRIMARY KEY, name TEXT)");
    raw.exec("INSERT INTO app_users (name) VALUES ('ann'), ('ben')");
  }
  // Keep the 100-byte header intact and scribble over the rest of page 1 (the schema table).
  std::string bytes = read_file_bytes(path);
  ASSERT_GT(bytes.size(), 4096U);
  const std::string noise = pylon::test::random_bytes(4096 - 100, 9);
  bytes.replace(100, noise.size(), noise);
  pylon::test::write_file_bytes(path, bytes);
  expect_refused_and_untouched(path, {ErrorCode::kCorruptDatabase}, false);
}

TEST(SqliteBackend, NewerSchemaVersionIsRefusedAndUntouched) {
  TempDir dir;
  const std::string path = dir.file("future.db");
  pylon::open_sqlite_backend(path)->save(make_session("alice", 15));
  {
    RawDb raw(path);
    raw.exec(
        "INSERT INTO _pylon_schema_migrations (version, name, applied_at) "
        "VALUES (999, '0999_from_the_future.sql', 1700000000)");
  }
  const std::string before = read_file_bytes(path);
  const auto error = pylon::test::capture_pylon_error([&] { pylon::open_sqlite_backend(path); });
  ASSERT_TRUE(error.has_value()) << "a schema newer than the code must be refused";
  EXPECT_EQ(error->code(), ErrorCode::kSchemaTooNew) << error->what();
  EXPECT_THAT(error->what(), HasSubstr(path));
  EXPECT_THAT(error->what(), HasSubstr("999")) << "the message names the migration number";
  EXPECT_TRUE(read_file_bytes(path) == before) << path << " was modified";
  RawDb raw(path);
  EXPECT_EQ(raw.query_int("SELECT count(*) FROM _pylon_sessions"), 1);
}

TEST(SqliteBackend, ViewNamedPylonSessionsIsRefusedAndUntouched) {
  TempDir dir;
  const std::string path = dir.file("view.db");
  {
    RawDb raw(path);
    raw.exec("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT)");
    raw.exec("INSERT INTO things (name) VALUES ('a'), ('b')");
    raw.exec("CREATE VIEW _pylon_sessions AS SELECT id, name FROM things");
  }
  expect_refused_and_untouched(path, {ErrorCode::kCorruptDatabase}, false);
}

TEST(SqliteBackend, ForeignPylonSessionsTableIsRefusedAndUntouched) {
  TempDir dir;
  const std::string path = dir.file("foreign.db");
  {
    RawDb raw(path);
    raw.exec("CREATE TABLE _pylon_sessions (session_key TEXT PRIMARY KEY, payload BLOB, n INT)");
    raw.exec("INSERT INTO _pylon_sessions VALUES ('k1', x'00ff', 1), ('k2', x'', 2)");
  }
  expect_refused_and_untouched(path, {ErrorCode::kCorruptDatabase}, false);
}

TEST(SqliteBackend, OtherApplicationTablesAreUntouched) {
  TempDir dir;
  const std::string path = dir.file("shared.db");
  const std::string rows_query = "SELECT id, name, quote(avatar) FROM app_users ORDER BY id";
  const std::string schema_query =
      "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE tbl_name = 'app_users' "
      "ORDER BY name";
  std::vector<pylon::test::SqlRow> rows_before;
  std::vector<pylon::test::SqlRow> schema_before;
  {
    RawDb raw(path);
    raw.exec("CREATE TABLE app_users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, avatar BLOB)");
    raw.exec("CREATE INDEX app_users_by_name ON app_users (name)");
    raw.exec(
        "INSERT INTO app_users (name, avatar) VALUES ('ann', x'00ff'), ('ben', NULL), "
        "('cat', x'')");
    rows_before = raw.query(rows_query);
    schema_before = raw.query(schema_query);
  }
  {
    auto backend = pylon::open_sqlite_backend(path);
    const Session session = make_session("ann", 16);
    backend->save(session);
    backend->remove_expired(std::numeric_limits<std::int64_t>::max());
    backend->save(session);
  }
  pylon::open_sqlite_backend(path);  // a second open runs no migration twice
  RawDb raw(path);
  EXPECT_EQ(raw.query(rows_query), rows_before);
  EXPECT_EQ(raw.query(schema_query), schema_before);
  EXPECT_EQ(raw.query_int("SELECT count(*) FROM _pylon_sessions"), 1);
}

// ------------------------------------------------------------------------------------------------
// Paths that cannot be used
// ------------------------------------------------------------------------------------------------

TEST(SqliteBackend, DirectoryPathIsRefusedNamingThePath) {
  TempDir dir;
  const std::string path = dir.file("a-directory");
  ASSERT_EQ(::mkdir(path.c_str(), 0700), 0);
  const auto error = pylon::test::capture_pylon_error([&] { pylon::open_sqlite_backend(path); });
  ASSERT_TRUE(error.has_value());
  EXPECT_THAT(error->code(), AnyOf(ErrorCode::kIo, ErrorCode::kReadOnly)) << error->what();
  EXPECT_THAT(error->what(), HasSubstr(path));
  EXPECT_TRUE(list_dir(path).empty()) << "nothing may be created inside the directory";
}

TEST(SqliteBackend, MissingParentDirectoryIsRefusedNamingThePath) {
  TempDir dir;
  const std::string path = dir.file("no/such/dir/s.db");
  const auto error = pylon::test::capture_pylon_error([&] { pylon::open_sqlite_backend(path); });
  ASSERT_TRUE(error.has_value());
  EXPECT_THAT(error->code(), AnyOf(ErrorCode::kIo, ErrorCode::kReadOnly)) << error->what();
  EXPECT_THAT(error->what(), HasSubstr(path));
  EXPECT_TRUE(list_dir(dir.path()).empty()) << "no directory may be created";
}

TEST(SqliteBackend, NewFileInReadOnlyDirectoryIsRefusedNamingThePath) {
  TempDir dir;
  const std::string locked = dir.file("locked");
  ASSERT_EQ(::mkdir(locked.c_str(), 0700), 0);
  ASSERT_TRUE(make_unwritable(locked));
  const std::string path = locked + "/s.db";
  const auto error = pylon::test::capture_pylon_error([&] { pylon::open_sqlite_backend(path); });
  ASSERT_TRUE(error.has_value());
  EXPECT_THAT(error->code(), AnyOf(ErrorCode::kReadOnly, ErrorCode::kIo)) << error->what();
  EXPECT_THAT(error->what(), HasSubstr(path));
}

TEST(SqliteBackend, ExistingFileInReadOnlyDirectoryFailsCleanly) {
  TempDir dir;
  const std::string locked = dir.file("locked");
  ASSERT_EQ(::mkdir(locked.c_str(), 0700), 0);
  const std::string path = locked + "/s.db";
  const Session session = make_session("alice", 17);
  pylon::open_sqlite_backend(path)->save(session);
  ASSERT_FALSE(pylon::test::file_exists(path + "-wal")) << "closing removes the WAL";
  const std::string before = read_file_bytes(path);
  ASSERT_TRUE(make_unwritable(locked));  // WAL needs to create -wal and -shm beside the file

  const auto error = pylon::test::capture_pylon_error([&] {
    auto backend = pylon::open_sqlite_backend(path);
    backend->save(make_session("bob", 18));
  });
  ASSERT_TRUE(error.has_value()) << "a write into a read-only directory cannot succeed";
  EXPECT_THAT(error->code(), AnyOf(ErrorCode::kReadOnly, ErrorCode::kIo)) << error->what();
  EXPECT_THAT(error->what(), HasSubstr(path));
  EXPECT_TRUE(read_file_bytes(path) == before) << path << " was modified";
}

TEST(SqliteBackend, ImmutableFileIsReadOnlyAndUntouched) {
  TempDir dir;
  const std::string path = dir.file("frozen.db");
  pylon::open_sqlite_backend(path)->save(make_session("alice", 19));
  const std::string before = read_file_bytes(path);
  ASSERT_TRUE(make_unwritable(path));  // chattr +i: immutable, even for root

  EXPECT_PYLON_ERROR_WITH(
      {
        auto backend = pylon::open_sqlite_backend(path);
        backend->save(make_session("bob", 20));
      },
      ErrorCode::kReadOnly, path);
  EXPECT_TRUE(read_file_bytes(path) == before) << path << " was modified";
}

// ------------------------------------------------------------------------------------------------
// Writes that fail
// ------------------------------------------------------------------------------------------------

TEST(SqliteBackend, SaveUnderAnotherConnectionsExclusiveLockIsBusyThenSucceeds) {
  TempDir dir;
  const std::string path = dir.file("s.db");
  auto backend = pylon::open_backend(pylon::test::sqlite_url(path, "busy_timeout=50"));
  const Session before_lock = make_session("alice", 21);
  backend->save(before_lock);

  RawDb holder(path);
  holder.exec("BEGIN EXCLUSIVE");
  const Session blocked = make_session("alice", 22);
  const auto error = pylon::test::capture_pylon_error([&] { backend->save(blocked); });
  ASSERT_TRUE(error.has_value()) << "a save under another writer's lock must fail";
  EXPECT_EQ(error->code(), ErrorCode::kBusy) << error->what();
  EXPECT_THAT(error->what(), HasSubstr(path));
  EXPECT_FALSE(error->backend_detail().empty()) << "what SQLite said is kept for the logs";
  // Readers are not blocked in WAL mode, and the failed save left nothing behind.
  auto during = load_by_id(*backend);
  EXPECT_EQ(during.size(), 1U);
  EXPECT_EQ(during.count(blocked.id), 0U);
  holder.exec("COMMIT");
  holder.close();

  backend->save(blocked);
  const auto after = load_by_id(*backend);
  ASSERT_EQ(after.size(), 2U);
  EXPECT_TRUE(same_session(blocked, after.at(blocked.id)));
}

TEST(SqliteBackend, RemovesUnderAnotherConnectionsExclusiveLockAreBusyAndRemoveNothing) {
  TempDir dir;
  const std::string path = dir.file("s.db");
  auto backend = pylon::open_backend(pylon::test::sqlite_url(path, "busy_timeout=50"));
  Session session = make_session("alice", 23);
  session.expires_at = 100;
  backend->save(session);

  RawDb holder(path);
  holder.exec("BEGIN EXCLUSIVE");
  EXPECT_PYLON_ERROR(backend->remove(session.id), ErrorCode::kBusy);
  EXPECT_PYLON_ERROR(backend->remove_user("alice"), ErrorCode::kBusy);
  EXPECT_PYLON_ERROR(backend->remove_expired(1000), ErrorCode::kBusy);
  holder.exec("ROLLBACK");
  holder.close();

  EXPECT_TRUE(find_loaded(*backend, session.id).has_value());
  EXPECT_TRUE(backend->remove(session.id));
}

TEST(SqliteBackend, SaveWaitsForALockReleasedWithinTheBusyTimeout) {
  TempDir dir;
  const std::string path = dir.file("s.db");
  auto backend = pylon::open_sqlite_backend(path);  // default busy timeout: 5 s
  backend->save(make_session("alice", 24));

  std::promise<void> locked;
  std::thread holder([&] {
    RawDb raw(path);
    raw.exec("BEGIN EXCLUSIVE");
    locked.set_value();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    raw.exec("COMMIT");
  });
  locked.get_future().wait();
  const Session session = make_session("alice", 25);
  EXPECT_NO_THROW(backend->save(session)) << "two writers on one file wait rather than fail";
  holder.join();
  EXPECT_TRUE(find_loaded(*backend, session.id).has_value());
}

// ------------------------------------------------------------------------------------------------
// Fields storage cannot hold
// ------------------------------------------------------------------------------------------------

TEST(SqliteBackend, NulInATextFieldIsInvalidArgumentAndStoresNothing) {
  TempDir dir;
  auto backend = pylon::open_sqlite_backend(dir.file("s.db"));
  const std::string with_nul("al\0ice", 6);
  Session bad_user = make_session(with_nul, 26);
  Session bad_tenant = make_session("alice", 27);
  bad_tenant.tenant_id = with_nul;
  Session bad_device = make_session("alice", 28);
  bad_device.device = with_nul;
  Session bad_ip = make_session("alice", 29);
  bad_ip.ip = std::string("192.0.2.1\0", 10);
  EXPECT_PYLON_ERROR(backend->save(bad_user), ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(backend->save(bad_tenant), ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(backend->save(bad_device), ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(backend->save(bad_ip), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(backend->load_all().empty());
}

TEST(SqliteBackend, InvalidUtf8InATextFieldIsInvalidArgumentAndStoresNothing) {
  TempDir dir;
  auto backend = pylon::open_sqlite_backend(dir.file("s.db"));
  Session bad_user = make_session("\xff\xfe", 30);
  Session bad_tenant = make_session("alice", 31);
  bad_tenant.tenant_id = "\xc3\x28";
  Session bad_device = make_session("alice", 32);
  bad_device.device = "agent \xed\xa0\x80";  // an encoded UTF-16 surrogate
  Session bad_ip = make_session("alice", 33);
  bad_ip.ip = "\x80";
  EXPECT_PYLON_ERROR(backend->save(bad_user), ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(backend->save(bad_tenant), ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(backend->save(bad_device), ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(backend->save(bad_ip), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(backend->load_all().empty());
}

TEST(SqliteBackend, MalformedIdIsInvalidArgumentAndStoresNothing) {
  TempDir dir;
  auto backend = pylon::open_sqlite_backend(dir.file("s.db"));
  Session short_id = make_session("alice", 34);
  short_id.id = "abc";
  Session empty_id = make_session("alice", 35);
  empty_id.id = "";
  EXPECT_PYLON_ERROR(backend->save(short_id), ErrorCode::kInvalidArgument);
  EXPECT_PYLON_ERROR(backend->save(empty_id), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(backend->load_all().empty());
}

}  // namespace

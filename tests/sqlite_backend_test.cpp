// What only the SQLite backend does, on real files (the shared contract is in
// backend_contract_test.cpp): file mode 0600, WAL and the synchronous setting, an in-memory
// database, refusal of files that are not databases (garbage, text, damaged) leaving them byte
// for byte unchanged, unusable paths, immutable files, readers that a writer's lock does not
// block, and a writer that waits for a lock released within the busy timeout.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <future>
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
using ::testing::Not;

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
void expect_refused_and_untouched(const std::string& path, const std::vector<ErrorCode>& codes,
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

// ------------------------------------------------------------------------------------------------
// Tables that look like ours but are not: what our statements rely on is checked before anything
// is written or any pragma changes the file
// ------------------------------------------------------------------------------------------------

// A current pylon-sessions file with one session, changed by `edit` (raw SQL); then opening it
// must be refused as kCorruptDatabase with `reason` in the message, the file left byte for byte.
void expect_edited_file_refused(const std::string& edit, const std::string& reason) {
  TempDir dir;
  const std::string path = dir.file("edited.db");
  pylon::open_sqlite_backend(path)->save(make_session("alice", 1));
  {
    RawDb raw(path);
    raw.exec(edit);
    raw.exec("PRAGMA wal_checkpoint(TRUNCATE)");
  }
  const std::string before = read_file_bytes(path);
  const auto error = pylon::test::capture_pylon_error([&] { pylon::open_sqlite_backend(path); });
  ASSERT_TRUE(error.has_value()) << "opened after: " << edit;
  EXPECT_EQ(error->code(), ErrorCode::kCorruptDatabase) << error->what();
  EXPECT_THAT(error->what(), HasSubstr(path));
  EXPECT_THAT(error->what(), HasSubstr(reason));
  EXPECT_THAT(error->what(), Not(HasSubstr("damaged"))) << "a sound file called damaged";
  EXPECT_TRUE(read_file_bytes(path) == before) << path << " was modified";
}

TEST(SqliteBackend, ATableWithoutItsPrimaryKeyIsRefusedAndUntouched) {
  expect_edited_file_refused(
      "CREATE TABLE copy AS SELECT * FROM _pylon_sessions; DROP TABLE _pylon_sessions; "
      "CREATE TABLE _pylon_sessions (id TEXT NOT NULL, user_id TEXT NOT NULL, tenant_id TEXT, "
      "created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, last_seen_at INTEGER NOT NULL, "
      "absolute_expires_at INTEGER NOT NULL DEFAULT 0, device TEXT, ip TEXT, data BLOB NOT NULL "
      "DEFAULT x'', idp_session_id TEXT, authenticated_at INTEGER NOT NULL DEFAULT 0, "
      "idle_timeout_seconds INTEGER, expiry_hour INTEGER NOT NULL DEFAULT 0) STRICT; "
      "INSERT INTO _pylon_sessions SELECT * FROM copy; "
      "DROP TABLE copy; CREATE INDEX _pylon_sessions_by_user ON _pylon_sessions (user_id); "
      "CREATE INDEX _pylon_sessions_by_expiry_hour ON _pylon_sessions (expiry_hour); "
      "CREATE INDEX _pylon_sessions_by_idp_session ON _pylon_sessions (idp_session_id)",
      "whose primary key is (), not (id)");
}

TEST(SqliteBackend, ATableWithoutAnIndexItsVersionPromisesIsRefusedAndUntouched) {
  expect_edited_file_refused("DROP INDEX _pylon_sessions_by_user",
                             "without the index _pylon_sessions_by_user on (user_id)");
  expect_edited_file_refused("DROP INDEX _pylon_rotated_ids_by_expiry",
                             "without the index _pylon_rotated_ids_by_expiry on (expires_at)");
  expect_edited_file_refused("DROP INDEX _pylon_sessions_by_expiry_hour",
                             "without the index _pylon_sessions_by_expiry_hour on (expiry_hour)");
}

TEST(SqliteBackend, ARotatedIdsTableOfAnotherShapeIsRefusedAndUntouched) {
  expect_edited_file_refused(
      "DROP TABLE _pylon_rotated_ids; CREATE TABLE _pylon_rotated_ids (id TEXT PRIMARY KEY, x)",
      "_pylon_rotated_ids table that is not pylon-sessions'");
}

TEST(SqliteBackend, ARotatedIdsTableBeforeVersionThreeIsForeignAndRefused) {
  expect_edited_file_refused(
      "DELETE FROM _pylon_schema_migrations WHERE version >= 3; DROP TABLE _pylon_rotated_ids; "
      "CREATE TABLE _pylon_rotated_ids (anything TEXT)",
      "_pylon_rotated_ids table that pylon-sessions did not create");
}

// A file whose pages are damaged, in a way that also makes its table look foreign, is reported
// as damaged, with what SQLite's integrity check says, not as someone else's table.
TEST(SqliteBackend, ADamagedFileIsReportedAsDamagedWithTheIntegrityCheck) {
  TempDir dir;
  const std::string path = dir.file("damaged.db");
  {
    RawDb raw(path);
    raw.exec("PRAGMA page_size = 4096");
    raw.exec("CREATE TABLE _pylon_sessions (token TEXT, something_else INTEGER)");
    raw.exec("CREATE TABLE app_log (id INTEGER PRIMARY KEY, line TEXT)");
    raw.exec("CREATE INDEX app_log_by_line ON app_log (line)");
    raw.exec("BEGIN");
    for (int i = 0; i < 400; ++i) {
      raw.exec("INSERT INTO app_log (line) VALUES ('line " + std::to_string(i) +
               " of a log that fills several pages')");
    }
    raw.exec("COMMIT");
  }
  // Scribble over page 4 onwards (the log's pages), leaving the header and schema intact.
  std::string bytes = read_file_bytes(path);
  ASSERT_GT(bytes.size(), 6U * 4096U);
  const std::string noise = pylon::test::random_bytes(std::size_t{2} * 4096, 11);
  bytes.replace(std::size_t{3} * 4096, noise.size(), noise);
  pylon::test::write_file_bytes(path, bytes);
  const auto error = pylon::test::capture_pylon_error([&] { pylon::open_sqlite_backend(path); });
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), ErrorCode::kCorruptDatabase) << error->what();
  EXPECT_THAT(error->what(), HasSubstr("is damaged (PRAGMA quick_check: "));
  EXPECT_TRUE(read_file_bytes(path) == bytes) << path << " was modified";
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

TEST(SqliteBackend, ReadersAreNotBlockedByAnotherConnectionsExclusiveLock) {
  TempDir dir;
  const std::string path = dir.file("s.db");
  auto backend = pylon::open_backend(pylon::test::sqlite_url(path, "busy_timeout=50"));
  const Session stored = make_session("alice", 21);
  backend->save(stored);
  RawDb holder(path);
  holder.exec("BEGIN EXCLUSIVE");
  EXPECT_PYLON_ERROR(backend->save(make_session("alice", 22)), ErrorCode::kBusy);
  // WAL: readers see the last commit while a writer holds the lock.
  const auto loaded = find_loaded(*backend, stored.id);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(same_session(stored, *loaded));
  holder.exec("ROLLBACK");
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

}  // namespace

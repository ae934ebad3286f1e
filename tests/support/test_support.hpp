// Helpers shared by the pylon-sessions tests: temporary directories, assertions on pylon::Error
// codes, an injectable clock, raw file and raw SQLite access (to prepare files and to look at
// what the library really wrote), and a spy on the SQLite connections the library opens.
#ifndef PYLON_TESTS_SUPPORT_TEST_SUPPORT_HPP_
#define PYLON_TESTS_SUPPORT_TEST_SUPPORT_HPP_

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "session_backend.hpp"

struct sqlite3;

namespace pylon {
// gtest prints Sessions with this (found by argument-dependent lookup).
void PrintTo(const Session& session, std::ostream* os);
}  // namespace pylon

namespace pylon::test {

// ------------------------------------------------------------------------------------------------
// Files and directories
// ------------------------------------------------------------------------------------------------

// A fresh directory under /tmp (mkdtemp), removed with everything in it on destruction. Anything
// a test made immutable (chattr +i) or unwritable is made writable again first.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path() + "/" + name.
  std::string file(std::string_view name) const;

 private:
  std::string path_;
};

// Changes the working directory for the lifetime of the object, then restores it.
class ScopedCurrentDir {
 public:
  explicit ScopedCurrentDir(const std::string& dir);
  ~ScopedCurrentDir();
  ScopedCurrentDir(const ScopedCurrentDir&) = delete;
  ScopedCurrentDir& operator=(const ScopedCurrentDir&) = delete;

 private:
  std::string previous_;
};

// The whole content of a file; "" if it does not exist.
std::string read_file_bytes(const std::string& path);
void write_file_bytes(const std::string& path, std::string_view bytes);
bool file_exists(const std::string& path);
// Names of the entries of a directory, sorted.
std::vector<std::string> list_dir(const std::string& dir);
// st_mode & 07777 of a path; fails the test (and returns 0) if stat fails.
unsigned file_mode(const std::string& path);
// Makes a file or directory refuse writes: `chattr +i` when running as root (whom permission
// bits do not stop), `chmod a-w` otherwise. True on success. TempDir undoes both.
bool make_unwritable(const std::string& path);
// `count` deterministic pseudo-random bytes.
std::string random_bytes(std::size_t count, std::uint32_t seed);

// The database file and its SQLite companions (-wal, -shm, -journal), concatenated.
std::string read_database_files(const std::string& db_path);
// True when `haystack` holds `token` in any form a leak could take: the token itself, its 64
// hex characters without the prefix, or the 32 bytes they encode.
bool contains_raw_token(const std::string& haystack, const std::string& token);

// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

// Runs `fn` and returns the pylon::Error it threw, if any (other exceptions propagate).
template <typename Fn>
std::optional<pylon::Error> capture_pylon_error(Fn&& fn) {
  try {
    std::forward<Fn>(fn)();
  } catch (const pylon::Error& error) {
    return error;
  }
  return std::nullopt;
}

// Success when `fn` throws a pylon::Error with `code` whose what() contains `substring`.
::testing::AssertionResult throws_pylon_error(const std::function<void()>& fn,
                                              const char* statement, pylon::ErrorCode code,
                                              std::string_view substring = {});

// ------------------------------------------------------------------------------------------------
// Time
// ------------------------------------------------------------------------------------------------

// A clock for StoreOptions::clock that moves only when told to. Copies share the same time, so
// a copy captured by a store follows advance() calls on the original.
class ManualClock {
 public:
  explicit ManualClock(std::int64_t start = 1'700'000'000);

  std::int64_t now() const { return now_->load(); }
  void advance(std::int64_t seconds) { now_->fetch_add(seconds); }
  void set(std::int64_t unix_seconds) { now_->store(unix_seconds); }
  // The function to put into StoreOptions::clock.
  std::function<std::int64_t()> fn() const;

 private:
  std::shared_ptr<std::atomic<std::int64_t>> now_;
};

// ------------------------------------------------------------------------------------------------
// Raw SQLite
// ------------------------------------------------------------------------------------------------

using SqlValue = std::variant<std::nullptr_t, std::int64_t, std::string>;
using SqlRow = std::vector<std::optional<std::string>>;  // every column as its bytes; NULL = {}

// A second, plain sqlite3 connection: prepares files and reads what the library wrote. Every
// failure throws std::runtime_error (a test that gets one fails).
class RawDb {
 public:
  // Read-write, created if missing; busy timeout 5 s so reads never race the library's writes.
  explicit RawDb(const std::string& path);
  ~RawDb();
  RawDb(const RawDb&) = delete;
  RawDb& operator=(const RawDb&) = delete;

  void exec(const std::string& sql);
  // Runs one statement with bound parameters (?1, ?2, ...).
  void run(const std::string& sql, const std::vector<SqlValue>& params);
  std::vector<SqlRow> query(const std::string& sql, const std::vector<SqlValue>& params = {});
  std::int64_t query_int(const std::string& sql, const std::vector<SqlValue>& params = {});
  std::string query_text(const std::string& sql, const std::vector<SqlValue>& params = {});
  void close();
  sqlite3* handle() const { return db_; }

 private:
  std::string path_;
  sqlite3* db_ = nullptr;
};

// Runs `PRAGMA <name>` on any connection and returns its first column as an integer.
std::int64_t pragma_int(sqlite3* db, const std::string& name);

// Tracks every SQLite connection opened in this process (sqlite3_auto_extension) until it
// closes, so a test can read per-connection settings (synchronous, busy_timeout) from the
// connection the library itself opened. install() before the library opens the file.
class ConnectionSpy {
 public:
  static void install();
  // The open connections whose main database is the file `path`.
  static std::vector<sqlite3*> open_connections_to(const std::string& path);
};

// ------------------------------------------------------------------------------------------------
// Sessions
// ------------------------------------------------------------------------------------------------

// A session with every field set, under a fresh id; `seed` varies the contents.
pylon::Session make_session(const std::string& user_id, int seed = 0);
// Field-by-field comparison (clearer failures than operator==), plus operator== itself.
::testing::AssertionResult same_session(const pylon::Session& expected,
                                        const pylon::Session& actual);
// The stored session with this id, if load_all() returns it.
std::optional<pylon::Session> find_loaded(pylon::SessionBackend& backend, const std::string& id);
// "sqlite://" + an absolute path + query ("sqlite:///tmp/x/s.db?busy_timeout=50").
std::string sqlite_url(const std::string& absolute_path, const std::string& query = {});

// One row of a `_pylon_sessions` table as pylon's runtime writes it (raw token as the key).
struct PylonRow {
  std::string token;
  std::string user_id;
  std::int64_t expires_at = 0;
  std::int64_t created_at = 0;
  std::optional<std::string> device;
  std::optional<std::string> tenant_id;
};

// Live and expired pylon rows relative to the real clock (adoption compares with the real time),
// with tenants unless `with_tenant` is false (the pylon before tenant_id).
std::vector<PylonRow> pylon_rows(bool with_tenant);
bool is_live(const PylonRow& row);

}  // namespace pylon::test

// Checks that `statement` throws pylon::Error with `code` (not merely some exception); the
// _WITH variants also require what() to contain `substring`.
#define EXPECT_PYLON_ERROR(statement, code) \
  EXPECT_TRUE(::pylon::test::throws_pylon_error([&] { statement; }, #statement, code))
#define ASSERT_PYLON_ERROR(statement, code) \
  ASSERT_TRUE(::pylon::test::throws_pylon_error([&] { statement; }, #statement, code))
#define EXPECT_PYLON_ERROR_WITH(statement, code, substring) \
  EXPECT_TRUE(::pylon::test::throws_pylon_error([&] { statement; }, #statement, code, substring))
#define ASSERT_PYLON_ERROR_WITH(statement, code, substring) \
  ASSERT_TRUE(::pylon::test::throws_pylon_error([&] { statement; }, #statement, code, substring))

#endif  // PYLON_TESTS_SUPPORT_TEST_SUPPORT_HPP_

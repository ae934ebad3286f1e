// Implementation of the shared test helpers (see test_support.hpp).
#include "support/test_support.hpp"

#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iterator>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <system_error>

#include "support/process.hpp"

namespace pylon {

namespace {

// Bytes as a C string literal body, so a NUL or 0xff in a field is visible in a failure.
std::string escaped(std::string_view bytes) {
  std::ostringstream out;
  for (const char c : bytes) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out << '\\' << c;
    } else if (byte >= 0x20 && byte < 0x7f) {
      out << c;
    } else {
      out << "\\x" << std::hex << std::setw(2) << std::setfill('0') << static_cast<unsigned>(byte)
          << std::dec;
    }
  }
  return out.str();
}

std::string escaped_optional(const std::optional<std::string>& value) {
  return value ? '"' + escaped(std::string_view(*value)) + '"' : std::string("nullopt");
}

}  // namespace

void PrintTo(const Session& session, std::ostream* os) {
  *os << "Session{id=" << session.id << ", user_id=\"" << escaped(std::string_view(session.user_id))
      << "\", tenant_id=" << escaped_optional(session.tenant_id)
      << ", created_at=" << session.created_at << ", expires_at=" << session.expires_at
      << ", last_seen_at=" << session.last_seen_at
      << ", device=" << escaped_optional(session.device) << ", ip=" << escaped_optional(session.ip)
      << ", data=\"" << escaped(std::string_view(session.data))
      << "\", absolute_expires_at=" << session.absolute_expires_at
      << ", idp_session_id=" << escaped_optional(session.idp_session_id)
      << ", authenticated_at=" << session.authenticated_at << ", idle_timeout_seconds="
      << (session.idle_timeout_seconds ? std::to_string(*session.idle_timeout_seconds) : "none")
      << "}";
}

namespace test {

// ------------------------------------------------------------------------------------------------
// Files and directories
// ------------------------------------------------------------------------------------------------

TempDir::TempDir() {
  std::string pattern = "/tmp/pylon-test-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw std::system_error(errno, std::generic_category(), "mkdtemp");
  }
  path_ = pattern;
}

TempDir::~TempDir() {
  // A test may have left a file or directory immutable; even root cannot delete it then.
  // Likewise a directory left without write permission (when not running as root).
  try {
    run_quietly({"chattr", "-R", "-i", path_});
    run_quietly({"chmod", "-R", "u+rwX", path_});
  } catch (const std::exception& error) {
    ADD_FAILURE() << "cannot make " << path_ << " removable: " << error.what();
  }
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::string TempDir::file(std::string_view name) const { return path_ + "/" + std::string(name); }

ScopedCurrentDir::ScopedCurrentDir(const std::string& dir) {
  previous_ = std::filesystem::current_path().string();
  std::filesystem::current_path(dir);
}

ScopedCurrentDir::~ScopedCurrentDir() {
  std::error_code ignored;
  std::filesystem::current_path(previous_, ignored);
}

std::string read_file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file_bytes(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.insert(entry.path().filename().string());
  }
  return {names.begin(), names.end()};
}

unsigned file_mode(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    ADD_FAILURE() << "stat(" << path << "): " << std::strerror(errno);
    return 0;
  }
  return static_cast<unsigned>(st.st_mode) & 07777U;
}

bool make_unwritable(const std::string& path) {
  if (::geteuid() == 0) {
    return run_quietly({"chattr", "+i", path}) == 0;
  }
  std::error_code error;
  std::filesystem::permissions(path,
                               std::filesystem::perms::owner_write |
                                   std::filesystem::perms::group_write |
                                   std::filesystem::perms::others_write,
                               std::filesystem::perm_options::remove, error);
  return !error;
}

std::string random_bytes(std::size_t count, std::uint32_t seed) {
  std::mt19937 generator(seed);
  std::uniform_int_distribution<int> byte(0, 255);
  std::string bytes(count, '\0');
  for (auto& c : bytes) c = static_cast<char>(static_cast<unsigned char>(byte(generator)));
  return bytes;
}

std::string read_database_files(const std::string& db_path) {
  return read_file_bytes(db_path) + read_file_bytes(db_path + "-wal") +
         read_file_bytes(db_path + "-shm") + read_file_bytes(db_path + "-journal");
}

bool contains_raw_token(const std::string& haystack, const std::string& token) {
  if (haystack.find(token) != std::string::npos) return true;
  const std::string hex = token.size() > 6 ? token.substr(6) : token;
  if (haystack.find(hex) != std::string::npos) return true;
  std::string raw;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    raw.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return !raw.empty() && haystack.find(raw) != std::string::npos;
}

// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

::testing::AssertionResult throws_pylon_error(const std::function<void()>& fn,
                                              const char* statement, pylon::ErrorCode code,
                                              std::string_view substring) {
  try {
    fn();
  } catch (const pylon::Error& error) {
    if (error.code() != code) {
      return ::testing::AssertionFailure()
             << statement << " threw pylon::Error with code " << pylon::to_string(error.code())
             << ", expected " << pylon::to_string(code) << "; what(): " << error.what();
    }
    if (!substring.empty() && std::string_view(error.what()).find(substring) == std::string::npos) {
      return ::testing::AssertionFailure()
             << statement << " threw pylon::Error " << pylon::to_string(code)
             << " whose what() lacks \"" << substring << "\": " << error.what();
    }
    return ::testing::AssertionSuccess();
  } catch (const std::exception& error) {
    return ::testing::AssertionFailure()
           << statement << " threw a non-pylon exception: " << error.what();
  } catch (...) {
    return ::testing::AssertionFailure() << statement << " threw something not a std::exception";
  }
  return ::testing::AssertionFailure()
         << statement << " did not throw (expected pylon::Error " << pylon::to_string(code) << ")";
}

// ------------------------------------------------------------------------------------------------
// Time
// ------------------------------------------------------------------------------------------------

ManualClock::ManualClock(std::int64_t start)
    : now_(std::make_shared<std::atomic<std::int64_t>>(start)) {}

std::function<std::int64_t()> ManualClock::fn() const {
  return [now = now_] { return now->load(); };
}

// ------------------------------------------------------------------------------------------------
// Raw SQLite
// ------------------------------------------------------------------------------------------------

namespace {

// Finalizes a statement on every path out of a RawDb call.
struct StatementCloser {
  void operator()(sqlite3_stmt* stmt) const noexcept { sqlite3_finalize(stmt); }
};
using StatementPtr = std::unique_ptr<sqlite3_stmt, StatementCloser>;

[[noreturn]] void fail(sqlite3* db, const std::string& what) {
  throw std::runtime_error("raw sqlite: " + what + ": " + sqlite3_errmsg(db) + " (" +
                           std::to_string(sqlite3_extended_errcode(db)) + ")");
}

StatementPtr prepare(sqlite3* db, const std::string& sql, const std::vector<SqlValue>& params) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &raw, nullptr) != SQLITE_OK) {
    fail(db, "prepare \"" + sql + "\"");
  }
  StatementPtr stmt(raw);
  for (std::size_t i = 0; i < params.size(); ++i) {
    const int index = static_cast<int>(i) + 1;
    int rc = SQLITE_OK;
    if (std::holds_alternative<std::int64_t>(params[i])) {
      rc = sqlite3_bind_int64(raw, index, std::get<std::int64_t>(params[i]));
    } else if (std::holds_alternative<std::string>(params[i])) {
      // The params vector outlives the statement's steps, so no copy is needed (SQLITE_STATIC).
      const auto& text = std::get<std::string>(params[i]);
      rc = sqlite3_bind_text(raw, index, text.data(), static_cast<int>(text.size()), nullptr);
    } else {
      rc = sqlite3_bind_null(raw, index);
    }
    if (rc != SQLITE_OK) {
      fail(db, "bind parameter " + std::to_string(index) + " of \"" + sql + "\"");
    }
  }
  return stmt;
}

}  // namespace

RawDb::RawDb(const std::string& path) : path_(path) {
  const int rc =
      sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
  if (rc != SQLITE_OK) {
    const std::string message = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw std::runtime_error("raw sqlite: cannot open " + path + ": " + message);
  }
  sqlite3_busy_timeout(db_, 5000);
}

RawDb::~RawDb() { close(); }

void RawDb::close() {
  if (db_ != nullptr) {
    sqlite3_close(db_);
    db_ = nullptr;
  }
}

void RawDb::exec(const std::string& sql) {
  char* message = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &message) != SQLITE_OK) {
    const std::string text = message ? message : "unknown error";
    sqlite3_free(message);
    throw std::runtime_error("raw sqlite: exec \"" + sql + "\" on " + path_ + ": " + text);
  }
}

void RawDb::run(const std::string& sql, const std::vector<SqlValue>& params) {
  StatementPtr stmt = prepare(db_, sql, params);
  int rc = SQLITE_ROW;
  while ((rc = sqlite3_step(stmt.get())) == SQLITE_ROW) {
  }
  if (rc != SQLITE_DONE) fail(db_, "step \"" + sql + "\"");
}

std::vector<SqlRow> RawDb::query(const std::string& sql, const std::vector<SqlValue>& params) {
  StatementPtr stmt = prepare(db_, sql, params);
  std::vector<SqlRow> rows;
  int rc = SQLITE_ROW;
  while ((rc = sqlite3_step(stmt.get())) == SQLITE_ROW) {
    SqlRow row;
    const int columns = sqlite3_column_count(stmt.get());
    for (int c = 0; c < columns; ++c) {
      if (sqlite3_column_type(stmt.get(), c) == SQLITE_NULL) {
        row.emplace_back(std::nullopt);
        continue;
      }
      const void* bytes = sqlite3_column_blob(stmt.get(), c);
      const int size = sqlite3_column_bytes(stmt.get(), c);
      row.emplace_back(
          bytes ? std::string(static_cast<const char*>(bytes), static_cast<std::size_t>(size))
                : std::string());
    }
    rows.push_back(std::move(row));
  }
  if (rc != SQLITE_DONE) fail(db_, "step \"" + sql + "\"");
  return rows;
}

std::int64_t RawDb::query_int(const std::string& sql, const std::vector<SqlValue>& params) {
  StatementPtr stmt = prepare(db_, sql, params);
  const int rc = sqlite3_step(stmt.get());
  if (rc != SQLITE_ROW) fail(db_, "no row from \"" + sql + "\"");
  return sqlite3_column_int64(stmt.get(), 0);
}

std::string RawDb::query_text(const std::string& sql, const std::vector<SqlValue>& params) {
  const std::vector<SqlRow> rows = query(sql, params);
  if (rows.empty() || rows.front().empty()) {
    throw std::runtime_error("raw sqlite: no row from \"" + sql + "\"");
  }
  return rows.front().front().value_or("NULL");
}

std::int64_t pragma_int(sqlite3* db, const std::string& name) {
  StatementPtr stmt = prepare(db, "PRAGMA " + name, {});
  if (sqlite3_step(stmt.get()) != SQLITE_ROW) fail(db, "PRAGMA " + name);
  return sqlite3_column_int64(stmt.get(), 0);
}

namespace {

std::mutex& spy_mutex() {
  static std::mutex mutex;
  return mutex;
}

std::set<sqlite3*>& spy_connections() {
  static std::set<sqlite3*> connections;
  return connections;
}

void spy_forget(void* db) {
  const std::lock_guard<std::mutex> lock(spy_mutex());
  spy_connections().erase(static_cast<sqlite3*>(db));
}

void spy_function(sqlite3_context* context, int /*argc*/, sqlite3_value** /*argv*/) {
  sqlite3_result_null(context);
}

// Runs inside every sqlite3_open*() of the process. The function registered here is destroyed
// when its connection closes, which is how the spy forgets closed connections.
int spy_entry(sqlite3* db, const char** /*error*/, const sqlite3_api_routines* /*api*/) {
  {
    const std::lock_guard<std::mutex> lock(spy_mutex());
    spy_connections().insert(db);
  }
  sqlite3_create_function_v2(db, "pylon_test_connection_spy", 0, SQLITE_UTF8, db, spy_function,
                             nullptr, nullptr, spy_forget);
  return SQLITE_OK;
}

}  // namespace

void ConnectionSpy::install() {
  static const bool kInstalled = [] {
    // sqlite3_auto_extension() takes every entry point as `void (*)()`, whatever its signature.
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): the C API demands this cast
    return sqlite3_auto_extension(reinterpret_cast<void (*)()>(&spy_entry)) == SQLITE_OK;
  }();
  ASSERT_TRUE(kInstalled) << "sqlite3_auto_extension failed";
}

std::vector<sqlite3*> ConnectionSpy::open_connections_to(const std::string& path) {
  const std::string wanted = std::filesystem::weakly_canonical(path).string();
  std::vector<sqlite3*> found;
  const std::lock_guard<std::mutex> lock(spy_mutex());
  for (sqlite3* db : spy_connections()) {
    const char* name = sqlite3_db_filename(db, "main");
    if (name != nullptr && *name != '\0' &&
        std::filesystem::weakly_canonical(name).string() == wanted) {
      found.push_back(db);
    }
  }
  return found;
}

// ------------------------------------------------------------------------------------------------
// Sessions
// ------------------------------------------------------------------------------------------------

pylon::Session make_session(const std::string& user_id, int seed) {
  pylon::Session session;
  session.id = pylon::session_id_for_token(pylon::generate_token());
  session.user_id = user_id;
  session.tenant_id = "tenant-" + std::to_string(seed);
  session.created_at = 1'700'000'000 + seed;
  session.expires_at = session.created_at + 3600;
  session.last_seen_at = session.created_at + 10;
  session.device = "Mozilla/5.0 (device " + std::to_string(seed) + ")";
  session.ip = "192.0.2." + std::to_string(seed % 250);
  session.data = std::string("\x00\xff\xfe", 3) + "payload-" + std::to_string(seed) +
                 std::string("\x00\xc3\x28", 3);
  session.absolute_expires_at = session.created_at + 86400;
  return session;
}

::testing::AssertionResult same_session(const pylon::Session& expected,
                                        const pylon::Session& actual) {
  std::ostringstream diff;
  auto field = [&diff](const char* name, const auto& want, const auto& got) {
    if (!(want == got)) {
      diff << "\n  " << name << " differs: expected " << ::testing::PrintToString(want) << ", got "
           << ::testing::PrintToString(got);
    }
  };
  field("id", expected.id, actual.id);
  field("user_id", expected.user_id, actual.user_id);
  field("tenant_id", expected.tenant_id, actual.tenant_id);
  field("created_at", expected.created_at, actual.created_at);
  field("expires_at", expected.expires_at, actual.expires_at);
  field("last_seen_at", expected.last_seen_at, actual.last_seen_at);
  field("device", expected.device, actual.device);
  field("ip", expected.ip, actual.ip);
  field("data", expected.data, actual.data);
  field("absolute_expires_at", expected.absolute_expires_at, actual.absolute_expires_at);
  field("idp_session_id", expected.idp_session_id, actual.idp_session_id);
  field("authenticated_at", expected.authenticated_at, actual.authenticated_at);
  field("idle_timeout_seconds", expected.idle_timeout_seconds, actual.idle_timeout_seconds);
  const std::string differences = diff.str();
  if (!differences.empty()) return ::testing::AssertionFailure() << differences;
  if (!(expected == actual)) {
    return ::testing::AssertionFailure()
           << "every field is equal but operator== says the sessions differ";
  }
  return ::testing::AssertionSuccess();
}

std::optional<pylon::Session> find_loaded(pylon::SessionBackend& backend, const std::string& id) {
  for (pylon::Session& session : backend.load_all()) {
    if (session.id == id) return std::move(session);
  }
  return std::nullopt;
}

std::string sqlite_url(const std::string& absolute_path, const std::string& query) {
  return "sqlite://" + absolute_path + (query.empty() ? "" : "?" + query);
}

std::vector<PylonRow> pylon_rows(bool with_tenant) {
  constexpr std::int64_t kDaySeconds = 86400;
  const std::int64_t now = pylon::system_clock_now();
  auto tenant = [with_tenant](const char* value) -> std::optional<std::string> {
    if (with_tenant && value != nullptr) return std::string(value);
    return std::nullopt;
  };
  return {
      {pylon::generate_token(), "alice", now + 3600, now - 60, "Firefox on Linux", tenant("acme")},
      {pylon::generate_token(), "alice", now + 7 * kDaySeconds, now - 3 * kDaySeconds, std::nullopt,
       tenant("acme")},
      {pylon::generate_token(), "bob", now + 600, now - 30, "curl/8.0", tenant(nullptr)},
      {pylon::generate_token(), "carol", now + kDaySeconds, now - 10, "Safari — iPhone",
       tenant("société")},
      {pylon::generate_token(), "alice", now - 10, now - 7200, "old laptop", tenant("acme")},
      {pylon::generate_token(), "dave", now - kDaySeconds, now - 30 * kDaySeconds, std::nullopt,
       tenant("acme")},
  };
}

bool is_live(const PylonRow& row) { return row.expires_at > pylon::system_clock_now(); }

}  // namespace test
}  // namespace pylon

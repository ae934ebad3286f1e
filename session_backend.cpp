// pylon-sessions: the SQLite backend, and what every backend shares.
//
// The file reads in the order a reader meets the ideas:
//   1. errors        ErrorCode names and pylon::Error
//   2. fields        what a Session may hold (shared by every backend)
//   3. SQLite        the default backend: file creation, probing, pragmas, statements
//   4. migrations    the embedded schema, its version table, pylon adoption
// Tokens are in token.cpp, DATABASE_URL in database_url.cpp, PostgreSQL in pg_backend.cpp, the
// store (SessionStore, the cache) in session_store.cpp and session_cache.cpp.
#include "session_backend.hpp"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "session_backend_internal.hpp"

namespace pylon {

// ================================================================================================
// 1. Errors
//
// One exception type with a code; what() is prefixed with a stable id "[pylon.<code>]" so logs
// can be grepped without parsing prose.
// ================================================================================================

const char* to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::kInvalidArgument:
      return "invalid_argument";
    case ErrorCode::kUnsupportedScheme:
      return "unsupported_scheme";
    case ErrorCode::kCorruptDatabase:
      return "corrupt_database";
    case ErrorCode::kSchemaTooNew:
      return "schema_too_new";
    case ErrorCode::kBusy:
      return "busy";
    case ErrorCode::kConnectionLost:
      return "connection_lost";
    case ErrorCode::kStorageFull:
      return "storage_full";
    case ErrorCode::kReadOnly:
      return "read_only";
    case ErrorCode::kIo:
      return "io";
    case ErrorCode::kConfiguration:
      return "configuration";
    case ErrorCode::kInternal:
      return "internal";
  }
  return "unknown";
}

Error::Error(ErrorCode code, const std::string& message, std::string backend_detail)
    : std::runtime_error("[pylon." + std::string(to_string(code)) + "] " + message),
      code_(code),
      backend_detail_(std::move(backend_detail)) {}

// ================================================================================================
// 2. Fields
//
// Both backends must store the same values byte for byte. PostgreSQL TEXT holds neither NUL nor
// invalid UTF-8, so text fields are refused with kInvalidArgument on every backend when they
// contain either; `data` is bytes and holds anything.
// ================================================================================================

void SessionBackend::load_each(const std::function<void(const Session&)>& visit) {
  for (const Session& session : load_all()) visit(session);
}

std::optional<Session> SessionBackend::load_one(std::string_view id) {
  std::optional<Session> found;
  load_each([&found, id](const Session& session) {
    if (session.id == id) found = session;
  });
  return found;
}

bool operator==(const Session& a, const Session& b) {
  return a.id == b.id && a.user_id == b.user_id && a.tenant_id == b.tenant_id &&
         a.created_at == b.created_at && a.expires_at == b.expires_at &&
         a.last_seen_at == b.last_seen_at && a.device == b.device && a.ip == b.ip &&
         a.data == b.data && a.absolute_expires_at == b.absolute_expires_at &&
         a.idp_session_id == b.idp_session_id;
}

namespace detail {

// The length of the multi-byte UTF-8 sequence that `lead` starts, with the code point bits it
// carries in `bits`; 0 for a byte that cannot start one.
static std::size_t utf8_sequence_length(unsigned char lead, std::uint32_t* bits) noexcept {
  if (lead >= 0xC2 && lead <= 0xDF) {
    *bits = lead & 0x1FU;
    return 2;
  }
  if (lead >= 0xE0 && lead <= 0xEF) {
    *bits = lead & 0x0FU;
    return 3;
  }
  if (lead >= 0xF0 && lead <= 0xF4) {
    *bits = lead & 0x07U;
    return 4;
  }
  return 0;
}

bool is_storable_text(std::string_view text) noexcept {
  // Eight bytes at a time while they are ASCII without NUL, as nearly every field is: a word
  // passes when no byte has its high bit set and none is zero ((w - 0x01..) & ~w flags a zero).
  constexpr std::uint64_t kLowBits = 0x0101010101010101ULL;
  constexpr std::uint64_t kHighBits = 0x8080808080808080ULL;
  std::size_t i = 0;
  for (std::uint64_t word = 0; text.size() - i >= sizeof word; i += sizeof word) {
    std::memcpy(&word, text.data() + i, sizeof word);
    if (((word | ((word - kLowBits) & ~word)) & kHighBits) != 0) break;
  }
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    if (lead == 0) return false;
    if (lead < 0x80) {
      ++i;
      continue;
    }
    std::uint32_t code_point = 0;
    const std::size_t length = utf8_sequence_length(lead, &code_point);
    if (length == 0 || text.size() - i < length) return false;
    for (std::size_t k = 1; k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0U) != 0x80U) return false;
      code_point = (code_point << 6U) | (next & 0x3FU);
    }
    const bool overlong =
        (length == 3 && code_point < 0x800) || (length == 4 && code_point < 0x10000);
    const bool surrogate = code_point >= 0xD800 && code_point <= 0xDFFF;
    if (overlong || surrogate || code_point > 0x10FFFF) return false;
    i += length;
  }
  return true;
}

bool is_storable_field(const TextField& field, std::string_view value) noexcept {
  return value.size() <= field.max_bytes && is_storable_text(value);
}

void check_text_field(const TextField& field, std::string_view value) {
  if (value.size() > field.max_bytes) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string("session field '") + field.name + "' is " +
                    std::to_string(value.size()) + " bytes, over its limit of " +
                    std::to_string(field.max_bytes) + " (the same on every backend)");
  }
  if (!is_storable_text(value)) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string("session field '") + field.name +
                    "' must be UTF-8 text without NUL bytes (use `data` for arbitrary bytes)");
  }
}

void check_optional_text_field(const TextField& field, const std::optional<std::string>& value) {
  if (value) check_text_field(field, *value);
}

bool is_storable_session(const Session& session) noexcept {
  const auto storable = [](const TextField& field, const std::optional<std::string>& text) {
    return !text || is_storable_field(field, *text);
  };
  return is_well_formed_session_id(session.id) && !session.user_id.empty() &&
         is_storable_field(kUserIdField, session.user_id) &&
         storable(kTenantIdField, session.tenant_id) && storable(kDeviceField, session.device) &&
         storable(kIpField, session.ip) && storable(kIdpSessionIdField, session.idp_session_id);
}

bool has_sane_times(const Session& session) noexcept {
  const auto in_range = [](std::int64_t time) { return time >= 0 && time <= kMaxSessionTime; };
  return in_range(session.created_at) && in_range(session.last_seen_at) &&
         in_range(session.expires_at) && in_range(session.absolute_expires_at) &&
         session.created_at <= session.last_seen_at &&
         (session.absolute_expires_at == 0 || session.expires_at <= session.absolute_expires_at);
}

bool is_servable_session(const Session& session) noexcept {
  return is_storable_session(session) && has_sane_times(session);
}

std::int64_t saturating_add(std::int64_t a, std::int64_t b) noexcept {
  std::int64_t sum = 0;
  if (__builtin_add_overflow(a, b, &sum)) {
    return b > 0 ? std::numeric_limits<std::int64_t>::max()
                 : std::numeric_limits<std::int64_t>::min();
  }
  return sum;
}

std::int64_t saturating_sub(std::int64_t a, std::int64_t b) noexcept {
  std::int64_t difference = 0;
  if (__builtin_sub_overflow(a, b, &difference)) {
    return b < 0 ? std::numeric_limits<std::int64_t>::max()
                 : std::numeric_limits<std::int64_t>::min();
  }
  return difference;
}

void check_session_for_storage(const Session& session) {
  if (!is_well_formed_session_id(session.id)) {
    throw Error(ErrorCode::kInvalidArgument,
                "session id must be 64 lowercase hex characters (the SHA-256 of a token)");
  }
  if (session.user_id.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "session field 'user_id' must not be empty");
  }
  check_text_field(kUserIdField, session.user_id);
  check_optional_text_field(kTenantIdField, session.tenant_id);
  check_optional_text_field(kDeviceField, session.device);
  check_optional_text_field(kIpField, session.ip);
  check_optional_text_field(kIdpSessionIdField, session.idp_session_id);
}

}  // namespace detail

// ================================================================================================
// 3. SQLite
//
// SqliteBackend owns one connection and its prepared statements; a mutex serialises its calls.
// Every mutation is one autocommit statement, so each is atomic and, in WAL mode with
// synchronous=FULL, fsynced before the call returns.
//
// Opening is ordered so that a file we refuse is never written: create the file (mode 0600) only
// if it is missing, open it read-write, then probe it (a read of sqlite_master fails on a file
// that is not SQLite: sqlite3_open_v2 alone succeeds on garbage), check the schema version and
// the shape of an existing `_pylon_sessions`, and only then switch to WAL and migrate.
// ================================================================================================

namespace {

using Connection = std::unique_ptr<sqlite3, detail::FreeWith<sqlite3_close_v2>>;
using Statement = std::unique_ptr<sqlite3_stmt, detail::FreeWith<sqlite3_finalize>>;

// Resets a reused statement however the scope ends: a statement left mid-step would keep its
// read transaction (and so the WAL) pinned.
class StatementReset {
 public:
  explicit StatementReset(sqlite3_stmt* statement) noexcept : statement_(statement) {}
  ~StatementReset() {
    sqlite3_reset(statement_);
    sqlite3_clear_bindings(statement_);
  }
  StatementReset(const StatementReset&) = delete;
  StatementReset& operator=(const StatementReset&) = delete;
  StatementReset(StatementReset&&) = delete;
  StatementReset& operator=(StatementReset&&) = delete;

 private:
  sqlite3_stmt* statement_;
};

ErrorCode error_code_for_sqlite(int result) noexcept {
  switch (result & 0xFF) {
    case SQLITE_FULL:
      return ErrorCode::kStorageFull;
    case SQLITE_READONLY:
      return ErrorCode::kReadOnly;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return ErrorCode::kCorruptDatabase;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return ErrorCode::kBusy;
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
    case SQLITE_PERM:
    case SQLITE_AUTH:
    case SQLITE_NOLFS:
      return ErrorCode::kIo;
    case SQLITE_TOOBIG:
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_RANGE:
      return ErrorCode::kInvalidArgument;
    default:
      return ErrorCode::kInternal;
  }
}

std::string system_error_text(int error_number) {
  return {std::strerror(error_number)};  // NOLINT(concurrency-mt-unsafe): messages only
}

// The parent directory of `path`, for the fsync that makes a new file's name durable.
std::string parent_directory(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Creates `path` with mode 0600 if it does not exist. Returns true if it created it. SQLite gives
// its -wal and -shm files the database file's mode, so this one call covers all three.
bool create_private_file_if_missing(const std::string& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) == 0) {
    if (S_ISDIR(info.st_mode)) {
      throw Error(ErrorCode::kIo,
                  "cannot use " + redact_url(path) + " as a database: it is a directory");
    }
    return false;
  }
  if (errno != ENOENT) {
    const int error_number = errno;
    throw Error(ErrorCode::kIo,
                "cannot open " + redact_url(path) + ": " + system_error_text(error_number));
  }
  // O_EXCL: if another process creates the file between stat() and here, we use theirs.
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open(2) takes the mode as a vararg
  const int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    const int error_number = errno;
    if (error_number == EEXIST) return false;
    const ErrorCode code =
        (error_number == EROFS || error_number == EACCES || error_number == EPERM)
            ? ErrorCode::kReadOnly
            : (error_number == ENOSPC ? ErrorCode::kStorageFull : ErrorCode::kIo);
    throw Error(code, "cannot create database file " + redact_url(path) + ": " +
                          system_error_text(error_number));
  }
  ::close(fd);
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open(2)
  const int directory = ::open(parent_directory(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (directory >= 0) {
    ::fsync(directory);
    ::close(directory);
  }
  return true;
}

// The database file and its -wal and -shm as they are on disk, before SQLite reads a byte of them:
// refused when another user owns one or group or others may write one, tightened to 0600 when
// group or others may only read one (pylon's own runtime created its file 0644). Nothing is
// changed unless every file passes. Returns the event that reports a tightening, if any.
std::optional<SessionEvent> secure_database_files(const std::string& path,
                                                  const std::string& shown_path) {
  struct Found {
    std::string path;
    std::string shown;
    mode_t mode;
  };
  std::vector<Found> to_tighten;
  for (const char* suffix : {"", "-wal", "-shm"}) {
    const std::string file = path + suffix;
    const std::string shown = shown_path + suffix;
    struct stat info {};
    if (::stat(file.c_str(), &info) != 0) {
      const int error_number = errno;
      if (error_number == ENOENT) continue;
      throw Error(ErrorCode::kIo, "cannot check the permissions of database file " + shown + ": " +
                                      system_error_text(error_number));
    }
    const mode_t mode = info.st_mode & 07777U;
    std::array<char, 8> octal{};
    std::snprintf(octal.data(), octal.size(), "%04o", static_cast<unsigned>(mode));
    if (info.st_uid != ::geteuid()) {
      throw Error(ErrorCode::kIo,
                  "database file " + shown + " is owned by user ID " + std::to_string(info.st_uid) +
                      ", not by this process's user ID " + std::to_string(::geteuid()) +
                      ": that user could insert a session and log in as anyone. Fix: chown it "
                      "to the user the application runs as and chmod 600 it, or set "
                      "allow_shared_file to share it knowingly (the file was left as it is)");
    }
    if ((mode & (S_IWGRP | S_IWOTH)) != 0) {
      throw Error(ErrorCode::kIo,
                  "database file " + shown + " has mode " + octal.data() +
                      ": group or others may write it, and so insert a session and log in as "
                      "anyone. Fix: chmod 600 " +
                      shown +
                      ", or set allow_shared_file to share it knowingly (the file was left as "
                      "it is)");
    }
    if ((mode & (S_IRWXG | S_IRWXO)) != 0) to_tighten.push_back({file, shown, mode});
  }
  if (to_tighten.empty()) return std::nullopt;
  std::string detail;
  for (const Found& found : to_tighten) {
    const mode_t tightened = found.mode & ~static_cast<mode_t>(S_IRWXG | S_IRWXO);
    if (::chmod(found.path.c_str(), tightened) != 0) {
      const int error_number = errno;
      throw Error(ErrorCode::kIo, "cannot make database file " + found.shown + " private (chmod " +
                                      "600): " + system_error_text(error_number));
    }
    std::array<char, 32> modes{};
    std::snprintf(modes.data(), modes.size(), ": mode %04o -> %04o",
                  static_cast<unsigned>(found.mode), static_cast<unsigned>(tightened));
    detail += (detail.empty() ? "" : "; ") + found.shown + modes.data();
  }
  return SessionEvent::with_detail(SessionEventType::kFilePermissionsTightened,
                                   "group or others could read the database files; made them "
                                   "private: " +
                                       detail);
}

// SQLite's default VFS takes paths of at most mxPathname bytes once made absolute. A longer one
// would be created here and then refused by sqlite3_open_v2, leaving a file behind: refused first.
void check_path_fits_sqlite(const std::string& path) {
  const sqlite3_vfs* vfs = sqlite3_vfs_find(nullptr);
  const std::size_t limit = vfs != nullptr ? static_cast<std::size_t>(vfs->mxPathname) : 512;
  std::size_t absolute = path.size();
  if (path.front() != '/') {
    std::string directory(4096, '\0');
    if (::getcwd(directory.data(), directory.size()) == nullptr) {
      const int error_number = errno;
      throw Error(ErrorCode::kIo,
                  "cannot read the working directory to place the relative SQLite path in it: " +
                      system_error_text(error_number));
    }
    absolute += std::strlen(directory.c_str()) + 1;
  }
  if (absolute >= limit) {
    throw Error(ErrorCode::kInvalidArgument,
                "the SQLite database path is " + std::to_string(absolute) +
                    " bytes long once made absolute; SQLite takes paths shorter than " +
                    std::to_string(limit) + " bytes (nothing was created)");
  }
}

void sqlite_sha256_hex(sqlite3_context* context, int argc, sqlite3_value** argv) {
  sqlite3_value* token = argc == 1 ? *argv : nullptr;
  if (token == nullptr || sqlite3_value_type(token) == SQLITE_NULL) {
    sqlite3_result_null(context);
    return;
  }
  const auto* bytes = sqlite3_value_blob(token);
  const int size = sqlite3_value_bytes(token);
  const std::string hex = session_id_for_token(
      std::string_view(static_cast<const char*>(bytes), static_cast<std::size_t>(size)));
  sqlite3_result_text(context, hex.data(), static_cast<int>(hex.size()), SQLITE_TRANSIENT);
}

// The columns of `_pylon_sessions` ("name TYPE", sorted) as schema version 1 made it and as the
// latest version has it (2 added idp_session_id). Rows are read by type, so a table with our
// names but other types is as foreign as one with other names.
const std::vector<std::string>& version_1_session_columns() {
  static const std::vector<std::string> kColumns = {"absolute_expires_at INTEGER",
                                                    "created_at INTEGER",
                                                    "data BLOB",
                                                    "device TEXT",
                                                    "expires_at INTEGER",
                                                    "id TEXT",
                                                    "ip TEXT",
                                                    "last_seen_at INTEGER",
                                                    "tenant_id TEXT",
                                                    "user_id TEXT"};
  return kColumns;
}
const std::vector<std::string>& current_session_columns() {
  static const std::vector<std::string> kColumns = {"absolute_expires_at INTEGER",
                                                    "created_at INTEGER",
                                                    "data BLOB",
                                                    "device TEXT",
                                                    "expires_at INTEGER",
                                                    "id TEXT",
                                                    "idp_session_id TEXT",
                                                    "ip TEXT",
                                                    "last_seen_at INTEGER",
                                                    "tenant_id TEXT",
                                                    "user_id TEXT"};
  return kColumns;
}

// The columns of `_pylon_rotated_ids` ("name TYPE", sorted), which schema version 3 made.
const std::vector<std::string>& rotated_id_columns() {
  static const std::vector<std::string> kColumns = {"expires_at INTEGER", "id TEXT",
                                                    "replaced_by TEXT",   "rotated_at INTEGER",
                                                    "tenant_id TEXT",     "user_id TEXT"};
  return kColumns;
}

// The schema, embedded from migrations/sqlite/*.sql by cmake/embed_migrations.cmake. A C array:
// the fragment is a list of braced initialisers, which std::array cannot size in C++17.
// NOLINTNEXTLINE(cppcoreguidelines-avoid-c-arrays,modernize-avoid-c-arrays)
constexpr detail::Migration kSqliteMigrations[] = {
#include "pylon_migrations_sqlite.inc"
};
constexpr int kLatestSqliteVersion =
    kSqliteMigrations[std::size(kSqliteMigrations) - 1].version;  // NOLINT

// Every column of a session, in the order read_session_row() reads them and bind_session() binds
// them.
#define PYLON_SQLITE_SESSION_COLUMNS                                                    \
  "id, user_id, tenant_id, created_at, expires_at, last_seen_at, absolute_expires_at, " \
  "device, ip, data, idp_session_id"

void assign_column_text(sqlite3_stmt* query, int column, std::string& out) {
  const auto* text = sqlite3_column_text(query, column);
  const int size = sqlite3_column_bytes(query, column);
  if (text == nullptr) {
    out.clear();
  } else {
    out.assign(reinterpret_cast<const char*>(text),  // NOLINT: SQLite's text is bytes
               static_cast<std::size_t>(size));
  }
}

void assign_column_optional_text(sqlite3_stmt* query, int column, std::optional<std::string>& out) {
  if (sqlite3_column_type(query, column) == SQLITE_NULL) {
    out.reset();
    return;
  }
  if (!out) out.emplace();
  assign_column_text(query, column, *out);
}

// The row a statement selecting PYLON_SQLITE_SESSION_COLUMNS stands on, into `session`, whose
// strings keep their buffers.
void read_session_row(sqlite3_stmt* query, Session& session) {
  assign_column_text(query, 0, session.id);
  assign_column_text(query, 1, session.user_id);
  assign_column_optional_text(query, 2, session.tenant_id);
  session.created_at = sqlite3_column_int64(query, 3);
  session.expires_at = sqlite3_column_int64(query, 4);
  session.last_seen_at = sqlite3_column_int64(query, 5);
  session.absolute_expires_at = sqlite3_column_int64(query, 6);
  assign_column_optional_text(query, 7, session.device);
  assign_column_optional_text(query, 8, session.ip);
  const void* blob = sqlite3_column_blob(query, 9);
  const int blob_size = sqlite3_column_bytes(query, 9);
  if (blob == nullptr) {
    session.data.clear();
  } else {
    session.data.assign(static_cast<const char*>(blob), static_cast<std::size_t>(blob_size));
  }
  assign_column_optional_text(query, 10, session.idp_session_id);
}

class SqliteBackend final : public SessionBackend {
 public:
  SqliteBackend(std::string path, const SqliteOptions& options);

  std::vector<Session> load_all() override;
  void load_each(const std::function<void(const Session&)>& visit) override;
  std::optional<Session> load_one(std::string_view id) override;
  void save(const Session& session) override;
  void save_batch(const std::vector<Session>& sessions) override;
  bool remove(std::string_view id) override;
  std::size_t remove_user(std::string_view user_id) override;
  std::size_t remove_expired(std::int64_t now) override;
  std::vector<RemovedSession> remove_matching(const SessionFilter& filter) override;
  bool replace(std::string_view old_id, const Session& replacement) override;
  std::size_t remove_expired_batch(std::int64_t now, std::size_t limit) override;
  std::vector<RemovedSession> insert_new(const std::vector<Session>& sessions,
                                         std::size_t max_per_user) override;
  std::optional<Session> touch(std::string_view id, std::int64_t last_seen_at,
                               std::int64_t expires_at) override;
  std::optional<Session> update_data(std::string_view id, std::string_view data) override;
  std::optional<Session> rotate(std::string_view old_id, std::string_view new_id,
                                std::int64_t now) override;
  void load_rotated_each(const std::function<void(const RotatedId&)>& visit) override;
  std::size_t remove_expired_rotated(std::int64_t now, std::size_t limit) override;
  std::string describe() const override { return shown_path_; }
  std::vector<SessionEvent> opening_events() const override { return opening_events_; }

 private:
  // Open-time steps, in order.
  void probe();
  void check_schema_version_and_shape();
  void check_keys_and_indexes(const char* table, int version);
  void check_rotated_ids_table(int version);
  // Throws kCorruptDatabase: the file `what` ("has a ... table ..."), or is damaged when SQLite's
  // quick_check finds it so.
  [[noreturn]] void refuse_table(const std::string& what);
  // What PRAGMA quick_check finds wrong with the file; nullopt when it is sound.
  std::optional<std::string> damage_report() noexcept;
  void set_pragmas(const SqliteOptions& options);
  void migrate();
  void verify_table_shape();
  void prepare_statements();

  // Statement helpers. All throw Error with the path and SQLite's message.
  [[noreturn]] void fail(int result, const std::string& action) const;
  void check(int result, const std::string& action) const {
    if (result != SQLITE_OK) fail(result, action);
  }
  void exec(const char* sql, const std::string& action);
  Statement prepare(const char* sql, unsigned int flags,
                    const char* action = "cannot prepare a statement on") const;
  bool table_exists(const char* name, std::string* type = nullptr);
  std::vector<std::string> table_columns(const char* table, bool with_types = true);
  int applied_schema_version();

  void bind_text(sqlite3_stmt* statement, int index, std::string_view text) const;
  void bind_optional_text(sqlite3_stmt* statement, int index,
                          const std::optional<std::string>& text) const;
  std::size_t run_delete(sqlite3_stmt* statement, const std::string& action);
  // Steps a statement that returns `id, user_id` rows (DELETE ... RETURNING) to its end.
  std::vector<RemovedSession> run_returning_removed(sqlite3_stmt* statement,
                                                    const std::string& action);
  // Steps a statement that returns at most one session row (... RETURNING every column) to its
  // end; the row, or nullopt when it returned none.
  std::optional<Session> run_returning_session(sqlite3_stmt* statement, const char* action);
  void bind_int64(sqlite3_stmt* statement, int index, std::int64_t value) const {
    check(sqlite3_bind_int64(statement, index, value), "cannot bind a value for");
  }
  void bind_session(sqlite3_stmt* statement, const Session& session);
  void step_done(sqlite3_stmt* statement, const char* action);
  // Runs `body` between BEGIN IMMEDIATE and COMMIT, the caller holding mutex_. If `body` returns
  // false or anything throws, the transaction is rolled back and nothing was written.
  template <typename Body>
  bool in_transaction(const char* action, Body&& body);

  std::mutex mutex_;  // serialises every use of the connection and its statements
  std::string path_;
  // path_ as messages show it: through redact_url(), in case a mistyped libpq keyword/value
  // string ("host=db password=...") was taken for a file name.
  std::string shown_path_;
  bool adopt_pylon_table_ = false;  // set by check_schema_version_and_shape(), used by migrate()
  std::vector<SessionEvent> opening_events_;
  Connection db_;  // declared before the statements: they finalize first
  Statement upsert_;
  Statement delete_by_id_;
  Statement delete_by_user_;
  Statement delete_expired_;
  Statement select_all_;
  Statement select_one_;
  Statement delete_expired_batch_;
  Statement begin_;
  Statement commit_;
  Statement evict_beyond_cap_;
  Statement touch_;
  Statement update_data_;
  Statement record_rotated_;
  Statement copy_as_successor_;
  Statement select_rotated_;
  Statement delete_expired_rotated_;
  Statement delete_expired_rotated_batch_;
  // remove_matching()'s DELETE for each combination of filter fields, prepared on first use.
  std::array<Statement, 32> delete_matching_;
};

SqliteBackend::SqliteBackend(std::string path, const SqliteOptions& options)
    : path_(std::move(path)), shown_path_(redact_url(path_)) {
  const bool in_memory = path_ == ":memory:";
  if (!in_memory) {
    create_private_file_if_missing(path_);
    if (!options.allow_shared_file) {
      if (std::optional<SessionEvent> tightened = secure_database_files(path_, shown_path_)) {
        opening_events_.push_back(*std::move(tightened));
      }
    }
  }

  sqlite3* handle = nullptr;
  // No SQLITE_OPEN_CREATE: the file exists by now, and a file deleted since must not be silently
  // recreated with default permissions.
  const int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE |
                    (in_memory ? SQLITE_OPEN_CREATE | SQLITE_OPEN_MEMORY : 0);
  const int opened = sqlite3_open_v2(path_.c_str(), &handle, flags, nullptr);
  db_.reset(handle);  // own the handle before looking at the result: it must be closed either way
  if (opened != SQLITE_OK) fail(opened, "cannot open database");
  // SQLITE_OPEN_READWRITE falls back to read-only on a write-protected file (chattr +i, a
  // read-only mount). Refuse that here rather than fail on the first write.
  if (sqlite3_db_readonly(db_.get(), "main") == 1) {
    throw Error(ErrorCode::kReadOnly, "database file " + shown_path_ +
                                          " is read-only (file permissions, immutable flag or a "
                                          "read-only mount); sessions could not be saved");
  }
  check(sqlite3_busy_timeout(db_.get(), static_cast<int>(std::min<std::int64_t>(
                                            options.busy_timeout.count(), INT_MAX))),
        "cannot set the busy timeout");

  probe();
  check_schema_version_and_shape();
  set_pragmas(options);
  migrate();
  verify_table_shape();
  prepare_statements();
}

void SqliteBackend::fail(int result, const std::string& action) const {
  const int extended = db_ ? sqlite3_extended_errcode(db_.get()) : result;
  const char* message = db_ ? sqlite3_errmsg(db_.get()) : sqlite3_errstr(result);
  std::string detail =
      "sqlite3 error " + std::to_string(extended) + " (" + sqlite3_errstr(result) + ")";
  ErrorCode code = error_code_for_sqlite(result);
  std::string text = action + " " + shown_path_ + ": " + message;
  if (code == ErrorCode::kCorruptDatabase) {
    text +=
        " (the file is not a pylon-sessions SQLite database, or it is damaged; it was left "
        "as it is)";
  }
  throw Error(code, text, std::move(detail));
}

void SqliteBackend::exec(const char* sql, const std::string& action) {
  check(sqlite3_exec(db_.get(), sql, nullptr, nullptr, nullptr), action);
}

Statement SqliteBackend::prepare(const char* sql, unsigned int flags, const char* action) const {
  sqlite3_stmt* raw = nullptr;
  const int result = sqlite3_prepare_v3(db_.get(), sql, -1, flags, &raw, nullptr);
  Statement statement(raw);
  if (result != SQLITE_OK) fail(result, action);
  return statement;
}

bool SqliteBackend::table_exists(const char* name, std::string* type) {
  Statement query = prepare("SELECT type FROM sqlite_schema WHERE name = ?1", 0);
  check(sqlite3_bind_text(query.get(), 1, name, -1, SQLITE_STATIC), "cannot read the schema of");
  const int step = sqlite3_step(query.get());
  if (step == SQLITE_DONE) return false;
  if (step != SQLITE_ROW) fail(step, "cannot read the schema of");
  if (type != nullptr) {
    const unsigned char* text = sqlite3_column_text(query.get(), 0);
    *type = text == nullptr ? std::string() : reinterpret_cast<const char*>(text);  // NOLINT
  }
  return true;
}

// "name TYPE" of each column, sorted; names only when `with_types` is false.
std::vector<std::string> SqliteBackend::table_columns(const char* table, bool with_types) {
  Statement query =
      prepare(with_types ? "SELECT name || ' ' || upper(type) FROM pragma_table_info(?1) ORDER BY 1"
                         : "SELECT name FROM pragma_table_info(?1) ORDER BY 1",
              0);
  check(sqlite3_bind_text(query.get(), 1, table, -1, SQLITE_STATIC), "cannot read the schema of");
  std::vector<std::string> columns;
  for (int step = sqlite3_step(query.get()); step != SQLITE_DONE;
       step = sqlite3_step(query.get())) {
    if (step != SQLITE_ROW) fail(step, "cannot read the schema of");
    const unsigned char* text = sqlite3_column_text(query.get(), 0);
    columns.emplace_back(text == nullptr ? "" : reinterpret_cast<const char*>(text));  // NOLINT
  }
  return columns;
}

int SqliteBackend::applied_schema_version() {
  if (!table_exists("_pylon_schema_migrations")) return 0;
  Statement query = prepare("SELECT coalesce(max(version), 0) FROM _pylon_schema_migrations", 0);
  const int step = sqlite3_step(query.get());
  if (step != SQLITE_ROW) fail(step, "cannot read the schema version of");
  const sqlite3_int64 version = sqlite3_column_int64(query.get(), 0);
  return static_cast<int>(std::clamp<sqlite3_int64>(version, 0, INT_MAX));
}

void SqliteBackend::probe() {
  // Reading the schema forces SQLite to parse the header and the first page: this is where a
  // file of random bytes or another format is caught (SQLITE_NOTADB), before anything is written.
  Statement query = prepare("SELECT count(*) FROM sqlite_schema", 0, "cannot read");
  const int step = sqlite3_step(query.get());
  if (step != SQLITE_ROW) fail(step, "cannot read");
}

void SqliteBackend::check_schema_version_and_shape() {
  const int version = applied_schema_version();
  if (version > kLatestSqliteVersion) {
    throw Error(ErrorCode::kSchemaTooNew,
                "database " + shown_path_ + " has pylon-sessions schema version " +
                    std::to_string(version) + ", newer than version " +
                    std::to_string(kLatestSqliteVersion) +
                    " that this build knows; upgrade pylon-sessions (the file was left as it is)");
  }
  check_rotated_ids_table(version);
  std::string type;
  if (!table_exists("_pylon_sessions", &type)) return;
  if (type != "table") {
    throw Error(ErrorCode::kCorruptDatabase,
                "database " + shown_path_ + " has a _pylon_sessions " + type +
                    ", not a table; refusing to use it (the file was left as it is)");
  }
  // Each schema version has exactly one shape; version 0 (no migrations table) may hold a table
  // shaped like our version 1, or pylon's.
  const std::vector<std::string> columns = table_columns("_pylon_sessions");
  if ((version >= 2 && columns == current_session_columns()) ||
      (version <= 1 && columns == version_1_session_columns())) {
    // Our statements rely on the primary key (ON CONFLICT (id)) and on the indexes the
    // migrations made; a table without them is not ours, however its columns look.
    check_keys_and_indexes("_pylon_sessions", version >= 1 ? version : 0);
    return;
  }
  // pylon's runtime: token, user_id, expires_at, created_at, device, and later tenant_id.
  std::vector<std::string> legacy = {"created_at", "device", "expires_at", "token", "user_id"};
  std::vector<std::string> legacy_with_tenant = {"created_at", "device", "expires_at",
                                                 "tenant_id",  "token",  "user_id"};
  const std::vector<std::string> names = table_columns("_pylon_sessions", false);
  if (version == 0 && (names == legacy || names == legacy_with_tenant)) {
    adopt_pylon_table_ = true;
    return;
  }
  std::string listed;
  for (const std::string& column : columns) listed += (listed.empty() ? "" : ", ") + column;
  refuse_table("has a _pylon_sessions table with columns (" + listed +
               ") that is neither pylon-sessions' nor pylon's");
}

// The indexes each schema version's migrations made, as "table index column".
const std::vector<std::array<const char*, 4>>& expected_indexes() {
  // {table, index, first column, the version that made it}
  static const std::vector<std::array<const char*, 4>> kIndexes = {
      {"_pylon_sessions", "_pylon_sessions_by_user", "user_id", "1"},
      {"_pylon_sessions", "_pylon_sessions_by_expiry", "expires_at", "1"},
      {"_pylon_sessions", "_pylon_sessions_by_idp_session", "idp_session_id", "2"},
      {"_pylon_rotated_ids", "_pylon_rotated_ids_by_expiry", "expires_at", "3"},
  };
  return kIndexes;
}

void SqliteBackend::check_keys_and_indexes(const char* table, int version) {
  Statement key = prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk", 0);
  check(sqlite3_bind_text(key.get(), 1, table, -1, SQLITE_STATIC), "cannot read the schema of");
  std::string primary_key;
  for (int step = sqlite3_step(key.get()); step != SQLITE_DONE; step = sqlite3_step(key.get())) {
    if (step != SQLITE_ROW) fail(step, "cannot read the schema of");
    const unsigned char* name = sqlite3_column_text(key.get(), 0);
    primary_key +=
        (primary_key.empty() ? "" : ", ") +
        std::string(name == nullptr ? "" : reinterpret_cast<const char*>(name));  // NOLINT
  }
  if (primary_key != "id") {
    refuse_table(std::string("has a ") + table + " table whose primary key is (" + primary_key +
                 "), not (id)");
  }
  Statement index = prepare(
      "SELECT count(*) FROM pragma_index_list(?1) AS list, pragma_index_info(list.name) AS info "
      "WHERE list.name = ?2 AND info.seqno = 0 AND info.name = ?3",
      0);
  for (const auto& [owner, name, column, since] : expected_indexes()) {
    if (std::string_view(owner) != table || version < std::atoi(since)) continue;  // NOLINT
    const StatementReset reset(index.get());
    check(sqlite3_bind_text(index.get(), 1, table, -1, SQLITE_STATIC), "cannot read the schema of");
    check(sqlite3_bind_text(index.get(), 2, name, -1, SQLITE_STATIC), "cannot read the schema of");
    check(sqlite3_bind_text(index.get(), 3, column, -1, SQLITE_STATIC),
          "cannot read the schema of");
    const int step = sqlite3_step(index.get());
    if (step != SQLITE_ROW) fail(step, "cannot read the schema of");
    if (sqlite3_column_int(index.get(), 0) != 1) {
      refuse_table(std::string("has a ") + table + " table without the index " + name + " on (" +
                   column + ") that its schema version " + std::to_string(version) + " promises");
    }
  }
}

void SqliteBackend::check_rotated_ids_table(int version) {
  std::string type;
  if (!table_exists("_pylon_rotated_ids", &type)) return;
  if (version < 3) {
    refuse_table("has a _pylon_rotated_ids " + type +
                 " that pylon-sessions did not create (its "
                 "schema version is " +
                 std::to_string(version) + ", and version 3 makes it)");
  }
  if (type != "table" || table_columns("_pylon_rotated_ids") != rotated_id_columns()) {
    refuse_table("has a _pylon_rotated_ids " + type + " that is not pylon-sessions'");
  }
  check_keys_and_indexes("_pylon_rotated_ids", version);
}

std::optional<std::string> SqliteBackend::damage_report() noexcept {
  try {
    Statement query = prepare("PRAGMA quick_check(1)", 0);
    const int step = sqlite3_step(query.get());
    if (step != SQLITE_ROW)
      return "PRAGMA quick_check failed: " + std::string(sqlite3_errstr(step));
    const unsigned char* text = sqlite3_column_text(query.get(), 0);
    const std::string result =
        text == nullptr ? "" : reinterpret_cast<const char*>(text);  // NOLINT
    if (result == "ok") return std::nullopt;
    return "PRAGMA quick_check: " + result;
  } catch (...) {
    return "PRAGMA quick_check could not run";
  }
}

void SqliteBackend::refuse_table(const std::string& what) {
  // A damaged file can look like a foreign one (a page of the schema overwritten); say which.
  if (std::optional<std::string> damage = damage_report()) {
    throw Error(ErrorCode::kCorruptDatabase,
                "database " + shown_path_ + " is damaged (" + *damage + "); it " + what +
                    "; refusing to use it (the file was left as it is)");
  }
  throw Error(ErrorCode::kCorruptDatabase, "database " + shown_path_ + " " + what +
                                               "; refusing to use it (the file was left as it is)");
}

void SqliteBackend::set_pragmas(const SqliteOptions& options) {
  // journal_mode answers with the mode now in force; an in-memory database stays "memory". The
  // switch writes the file header, and an I/O error there may surface only when the statement
  // finishes (found by tests/faults/io_error_test.cpp with an injected fdatasync failure): so
  // the statement is stepped to its end and checked, and the mode is read back afterwards.
  {
    Statement wal = prepare("PRAGMA journal_mode = WAL", 0);
    int step = sqlite3_step(wal.get());
    while (step == SQLITE_ROW) step = sqlite3_step(wal.get());
    if (step != SQLITE_DONE) fail(step, "cannot switch to WAL mode");
  }
  Statement query = prepare("PRAGMA journal_mode", 0);
  const int step = sqlite3_step(query.get());
  if (step != SQLITE_ROW) fail(step, "cannot read the journal mode of");
  const unsigned char* mode = sqlite3_column_text(query.get(), 0);
  const std::string mode_text =
      mode == nullptr ? "" : reinterpret_cast<const char*>(mode);  // NOLINT
  if (mode_text != "wal" && mode_text != "memory") {
    throw Error(ErrorCode::kIo, "cannot switch " + shown_path_ + " to WAL mode (it stays in " +
                                    mode_text + " mode)");
  }
  query.reset();
  exec(options.synchronous == SqliteSync::kFull ? "PRAGMA synchronous = FULL"
                                                : "PRAGMA synchronous = NORMAL",
       "cannot set synchronous on");
}

void SqliteBackend::verify_table_shape() {
  std::string type;
  if (!table_exists("_pylon_sessions", &type) || type != "table" ||
      table_columns("_pylon_sessions") != current_session_columns()) {
    throw Error(ErrorCode::kCorruptDatabase,
                "database " + shown_path_ +
                    " does not have the _pylon_sessions table its schema "
                    "version promises");
  }
  if (!table_exists("_pylon_rotated_ids", &type) || type != "table" ||
      table_columns("_pylon_rotated_ids") != rotated_id_columns()) {
    throw Error(ErrorCode::kCorruptDatabase,
                "database " + shown_path_ +
                    " does not have the _pylon_rotated_ids table its schema version promises");
  }
}

// ================================================================================================
// 4. Migrations
//
// Each embedded migration runs in its own BEGIN IMMEDIATE transaction together with the row that
// records it in `_pylon_schema_migrations`, so a crash leaves a migration either applied and
// recorded or neither. The version is read again inside the transaction: two processes opening
// one new file at once apply each migration once. A version newer than the code is refused
// before anything is written (check_schema_version_and_shape).
//
// Adopting pylon's table: it is renamed to `_pylon_sessions_pylon_v0` inside migration 1's
// transaction, and migration 1 moves its live rows under the hash of their token. Afterwards the
// file is VACUUMed with secure_delete on and the WAL truncated, so the raw tokens are gone from
// the database, its WAL and its free pages.
// ================================================================================================

void SqliteBackend::migrate() {
  const int applied = applied_schema_version();
  if (applied >= kLatestSqliteVersion) return;

  check(sqlite3_create_function_v2(db_.get(), "pylon_sha256_hex", 1,
                                   SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_DIRECTONLY, nullptr,
                                   sqlite_sha256_hex, nullptr, nullptr, nullptr),
        "cannot register the migration functions on");
  if (adopt_pylon_table_) exec("PRAGMA secure_delete = ON", "cannot enable secure_delete on");

  bool adopted = false;
  // NOLINTNEXTLINE(*-array-to-pointer-decay): the embedded array, see its declaration
  for (const detail::Migration& migration : kSqliteMigrations) {
    const std::string action = "migration " + std::string(migration.name) + " failed on";
    exec("BEGIN IMMEDIATE", action);
    try {
      exec(
          "CREATE TABLE IF NOT EXISTS _pylon_schema_migrations ("
          " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
          action);
      if (applied_schema_version() >= migration.version) {
        exec("COMMIT", action);
        continue;
      }
      if (migration.version == 1 && adopt_pylon_table_ && table_exists("_pylon_sessions")) {
        if (table_columns("_pylon_sessions", false).size() == 5) {  // pylon before tenant_id
          exec("ALTER TABLE _pylon_sessions ADD COLUMN tenant_id TEXT", action);
        }
        exec("ALTER TABLE _pylon_sessions RENAME TO _pylon_sessions_pylon_v0", action);
        adopted = true;
      }
      exec(migration.sql, action);
      Statement record = prepare(
          "INSERT INTO _pylon_schema_migrations (version, name, applied_at) "
          "VALUES (?1, ?2, unixepoch())",
          0);
      check(sqlite3_bind_int(record.get(), 1, migration.version), action);
      check(sqlite3_bind_text(record.get(), 2, migration.name, -1, SQLITE_STATIC), action);
      const int step = sqlite3_step(record.get());
      if (step != SQLITE_DONE) fail(step, action);
      exec("COMMIT", action);
    } catch (...) {
      // Nothing of the migration was committed; ROLLBACK can only fail if SQLite already rolled
      // back on its own (after SQLITE_FULL, say), which is the outcome we want anyway.
      sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
      throw;
    }
  }

  if (adopted) {
    exec("VACUUM", "cannot VACUUM the adopted pylon table out of");
    Statement checkpoint = prepare("PRAGMA wal_checkpoint(TRUNCATE)", 0);
    const int step = sqlite3_step(checkpoint.get());
    if (step != SQLITE_ROW) fail(step, "cannot checkpoint the WAL of");
    if (sqlite3_column_int(checkpoint.get(), 0) != 0) {
      throw Error(ErrorCode::kBusy,
                  "adopted pylon's sessions in " + shown_path_ +
                      " but another connection kept the WAL from being truncated; open the "
                      "store again once other connections are closed to finish erasing raw "
                      "tokens");
    }
  }
  if (adopt_pylon_table_) exec("PRAGMA secure_delete = OFF", "cannot reset secure_delete on");
}

// ------------------------------------------------------------------------------------------------
// The backend's statements
// ------------------------------------------------------------------------------------------------

void SqliteBackend::prepare_statements() {
  constexpr unsigned int kPersistent = SQLITE_PREPARE_PERSISTENT;
  upsert_ = prepare(
      "INSERT INTO _pylon_sessions (id, user_id, tenant_id, created_at, expires_at, "
      "last_seen_at, absolute_expires_at, device, ip, data, idp_session_id) "
      "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) "
      "ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, "
      "tenant_id = excluded.tenant_id, created_at = excluded.created_at, "
      "expires_at = excluded.expires_at, last_seen_at = excluded.last_seen_at, "
      "absolute_expires_at = excluded.absolute_expires_at, device = excluded.device, "
      "ip = excluded.ip, data = excluded.data, idp_session_id = excluded.idp_session_id",
      kPersistent);
  delete_by_id_ = prepare("DELETE FROM _pylon_sessions WHERE id = ?1", kPersistent);
  delete_by_user_ = prepare("DELETE FROM _pylon_sessions WHERE user_id = ?1", kPersistent);
  delete_expired_ = prepare("DELETE FROM _pylon_sessions WHERE expires_at <= ?1", kPersistent);
  select_all_ =
      prepare("SELECT " PYLON_SQLITE_SESSION_COLUMNS " FROM _pylon_sessions", kPersistent);
  select_one_ = prepare(
      "SELECT " PYLON_SQLITE_SESSION_COLUMNS " FROM _pylon_sessions WHERE id = ?1", kPersistent);
  delete_expired_batch_ = prepare(
      "DELETE FROM _pylon_sessions WHERE rowid IN "
      "(SELECT rowid FROM _pylon_sessions WHERE expires_at <= ?1 LIMIT ?2)",
      kPersistent);
  begin_ = prepare("BEGIN IMMEDIATE", kPersistent);
  commit_ = prepare("COMMIT", kPersistent);
  // Oldest first by created_at, then by rowid: SQLite gives a new row a rowid larger than every
  // row's in the table, so among the rows present it orders by insertion.
  evict_beyond_cap_ = prepare(
      "DELETE FROM _pylon_sessions WHERE rowid IN (SELECT rowid FROM _pylon_sessions "
      "WHERE user_id = ?1 AND tenant_id IS ?2 ORDER BY created_at DESC, rowid DESC "
      "LIMIT -1 OFFSET ?3) RETURNING id, user_id",
      kPersistent);
  touch_ = prepare(
      "UPDATE _pylon_sessions SET last_seen_at = max(last_seen_at, ?2), "
      "expires_at = max(expires_at, ?3) WHERE id = ?1 RETURNING " PYLON_SQLITE_SESSION_COLUMNS,
      kPersistent);
  update_data_ = prepare(
      "UPDATE _pylon_sessions SET data = ?2 WHERE id = ?1 RETURNING " PYLON_SQLITE_SESSION_COLUMNS,
      kPersistent);
  record_rotated_ = prepare(
      "INSERT INTO _pylon_rotated_ids (id, replaced_by, user_id, tenant_id, rotated_at, "
      "expires_at) SELECT id, ?2, user_id, tenant_id, ?3, CASE WHEN absolute_expires_at > 0 "
      "THEN absolute_expires_at ELSE expires_at END FROM _pylon_sessions "
      "WHERE id = ?1 AND expires_at > ?3 "
      "ON CONFLICT (id) DO UPDATE SET replaced_by = excluded.replaced_by, "
      "user_id = excluded.user_id, tenant_id = excluded.tenant_id, "
      "rotated_at = excluded.rotated_at, expires_at = excluded.expires_at",
      kPersistent);
  copy_as_successor_ = prepare(
      "INSERT INTO _pylon_sessions (" PYLON_SQLITE_SESSION_COLUMNS
      ") SELECT ?2, user_id, "
      "tenant_id, created_at, expires_at, last_seen_at, absolute_expires_at, device, ip, data, "
      "idp_session_id FROM _pylon_sessions WHERE id = ?1 RETURNING " PYLON_SQLITE_SESSION_COLUMNS,
      kPersistent);
  select_rotated_ = prepare(
      "SELECT id, replaced_by, user_id, tenant_id, rotated_at, expires_at FROM _pylon_rotated_ids",
      kPersistent);
  delete_expired_rotated_ =
      prepare("DELETE FROM _pylon_rotated_ids WHERE expires_at <= ?1", kPersistent);
  delete_expired_rotated_batch_ = prepare(
      "DELETE FROM _pylon_rotated_ids WHERE rowid IN "
      "(SELECT rowid FROM _pylon_rotated_ids WHERE expires_at <= ?1 LIMIT ?2)",
      kPersistent);
}

void SqliteBackend::bind_text(sqlite3_stmt* statement, int index, std::string_view text) const {
  if (text.size() > static_cast<std::size_t>(INT_MAX)) {
    throw Error(ErrorCode::kInvalidArgument, "a session field is larger than SQLite can bind");
  }
  check(sqlite3_bind_text(statement, index, text.data(), static_cast<int>(text.size()),
                          SQLITE_STATIC),
        "cannot bind a value for");
}

void SqliteBackend::bind_optional_text(sqlite3_stmt* statement, int index,
                                       const std::optional<std::string>& text) const {
  if (text) {
    bind_text(statement, index, *text);
  } else {
    check(sqlite3_bind_null(statement, index), "cannot bind a value for");
  }
}

std::vector<Session> SqliteBackend::load_all() {
  std::vector<Session> sessions;
  load_each([&sessions](const Session& session) { sessions.push_back(session); });
  return sessions;
}

// One Session is reused for every row, so its strings keep their buffers: a start-up load of a
// million rows allocates for the cache, not for the rows on their way into it.
void SqliteBackend::load_each(const std::function<void(const Session&)>& visit) {
  const std::lock_guard<std::mutex> lock(mutex_);
  sqlite3_stmt* query = select_all_.get();
  const StatementReset reset(query);
  Session session;
  for (int step = sqlite3_step(query); step != SQLITE_DONE; step = sqlite3_step(query)) {
    if (step != SQLITE_ROW) fail(step, "cannot load sessions from");
    read_session_row(query, session);
    visit(session);
  }
}

// The checks of every write: storable text fields, and a blob SQLite can bind.
void check_sqlite_storable(const Session& session) {
  detail::check_session_for_storage(session);
  if (session.data.size() > static_cast<std::size_t>(INT_MAX)) {
    throw Error(ErrorCode::kInvalidArgument, "session data is larger than SQLite can store");
  }
}

void SqliteBackend::save(const Session& session) {
  check_sqlite_storable(session);
  const std::lock_guard<std::mutex> lock(mutex_);
  sqlite3_stmt* upsert = upsert_.get();
  const StatementReset reset(upsert);
  bind_session(upsert, session);
  step_done(upsert, "cannot save a session to");
}

void SqliteBackend::save_batch(const std::vector<Session>& sessions) {
  for (const Session& session : sessions) check_sqlite_storable(session);
  if (sessions.empty()) return;
  const std::lock_guard<std::mutex> lock(mutex_);
  in_transaction("cannot save sessions to", [&] {
    for (const Session& session : sessions) {
      const StatementReset reset(upsert_.get());
      bind_session(upsert_.get(), session);
      step_done(upsert_.get(), "cannot save sessions to");
    }
    return true;
  });
}

template <typename Body>
bool SqliteBackend::in_transaction(const char* action, Body&& body) {
  {
    const StatementReset reset(begin_.get());
    step_done(begin_.get(), action);
  }
  try {
    if (!body()) {
      sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
      return false;
    }
    const StatementReset reset(commit_.get());
    step_done(commit_.get(), action);
  } catch (...) {
    // Nothing was acknowledged. A failed COMMIT leaves the transaction open; roll it back so the
    // connection is usable. If SQLite already rolled back on its own, this is a no-op.
    if (sqlite3_get_autocommit(db_.get()) == 0) {
      sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
    }
    throw;
  }
  return true;
}

void SqliteBackend::bind_session(sqlite3_stmt* statement, const Session& session) {
  bind_text(statement, 1, session.id);
  bind_text(statement, 2, session.user_id);
  bind_optional_text(statement, 3, session.tenant_id);
  check(sqlite3_bind_int64(statement, 4, session.created_at), "cannot bind a value for");
  check(sqlite3_bind_int64(statement, 5, session.expires_at), "cannot bind a value for");
  check(sqlite3_bind_int64(statement, 6, session.last_seen_at), "cannot bind a value for");
  check(sqlite3_bind_int64(statement, 7, session.absolute_expires_at), "cannot bind a value for");
  bind_optional_text(statement, 8, session.device);
  bind_optional_text(statement, 9, session.ip);
  // A zero-length blob must still be a blob, not NULL: bind_zeroblob(0) gives x''.
  check(session.data.empty()
            ? sqlite3_bind_zeroblob(statement, 10, 0)
            : sqlite3_bind_blob(statement, 10, session.data.data(),
                                static_cast<int>(session.data.size()), SQLITE_STATIC),
        "cannot bind a value for");
  bind_optional_text(statement, 11, session.idp_session_id);
}

void SqliteBackend::step_done(sqlite3_stmt* statement, const char* action) {
  const int step = sqlite3_step(statement);
  if (step != SQLITE_DONE) fail(step, action);
}

// Rotation: the delete of the old id and the insert of the new one commit together or not at
// all, so no reader, here or in another process, ever sees both tokens valid or neither.
bool SqliteBackend::replace(std::string_view old_id, const Session& replacement) {
  check_sqlite_storable(replacement);
  const std::lock_guard<std::mutex> lock(mutex_);
  return in_transaction("cannot rotate a session in", [&] {
    {
      const StatementReset reset(delete_by_id_.get());
      bind_text(delete_by_id_.get(), 1, old_id);
      if (run_delete(delete_by_id_.get(), "cannot rotate a session in") == 0) return false;
    }
    const StatementReset reset(upsert_.get());
    bind_session(upsert_.get(), replacement);
    step_done(upsert_.get(), "cannot rotate a session in");
    return true;
  });
}

// One DELETE per combination of set fields, so every one is a plain indexed equality (an
// `?1 IS NULL OR user_id = ?1` form would keep SQLite from using the indexes).
std::vector<RemovedSession> SqliteBackend::remove_matching(const SessionFilter& filter) {
  if (!filter.id && !filter.user_id && !filter.idp_session_id) {
    throw Error(ErrorCode::kInvalidArgument,
                "remove_matching needs an id, a user_id or an idp_session_id: an empty filter "
                "would delete every session");
  }
  const std::array<std::pair<const std::optional<std::string>*, const char*>, 5> fields = {{
      {&filter.id, "id = ?"},
      {&filter.user_id, "user_id = ?"},
      {&filter.tenant_id, "tenant_id = ?"},
      {&filter.idp_session_id, "idp_session_id = ?"},
      {&filter.except_id, "id <> ?"},
  }};
  std::size_t mask = 0;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (fields.at(i).first->has_value()) mask |= std::size_t{1} << i;
  }
  const std::lock_guard<std::mutex> lock(mutex_);
  Statement& statement = delete_matching_.at(mask);
  if (!statement) {
    std::string sql = "DELETE FROM _pylon_sessions WHERE ";
    const char* separator = "";
    for (std::size_t i = 0; i < fields.size(); ++i) {
      if ((mask & (std::size_t{1} << i)) == 0) continue;
      sql.append(separator).append(fields.at(i).second);
      separator = " AND ";
    }
    sql.append(" RETURNING id, user_id");
    statement = prepare(sql.c_str(), SQLITE_PREPARE_PERSISTENT);
  }
  const StatementReset reset(statement.get());
  int index = 1;
  for (const auto& field : fields) {
    if (field.first->has_value()) bind_text(statement.get(), index++, **field.first);
  }
  return run_returning_removed(statement.get(), "cannot delete sessions from");
}

std::size_t SqliteBackend::remove_expired_batch(std::int64_t now, std::size_t limit) {
  const std::lock_guard<std::mutex> lock(mutex_);
  sqlite3_stmt* statement = delete_expired_batch_.get();
  const StatementReset reset(statement);
  check(sqlite3_bind_int64(statement, 1, now), "cannot bind a value for");
  check(sqlite3_bind_int64(statement, 2,
                           static_cast<sqlite3_int64>(std::min<std::size_t>(limit, INT64_MAX))),
        "cannot bind a value for");
  return run_delete(statement, "cannot delete expired sessions from");
}

std::size_t SqliteBackend::run_delete(sqlite3_stmt* statement, const std::string& action) {
  const int step = sqlite3_step(statement);
  if (step != SQLITE_DONE) fail(step, action);
  return static_cast<std::size_t>(sqlite3_changes64(db_.get()));
}

bool SqliteBackend::remove(std::string_view id) {
  const std::lock_guard<std::mutex> lock(mutex_);
  sqlite3_stmt* statement = delete_by_id_.get();
  const StatementReset reset(statement);
  bind_text(statement, 1, id);
  return run_delete(statement, "cannot delete a session from") > 0;
}

std::size_t SqliteBackend::remove_user(std::string_view user_id) {
  const std::lock_guard<std::mutex> lock(mutex_);
  sqlite3_stmt* statement = delete_by_user_.get();
  const StatementReset reset(statement);
  bind_text(statement, 1, user_id);
  return run_delete(statement, "cannot delete a user's sessions from");
}

std::size_t SqliteBackend::remove_expired(std::int64_t now) {
  const char* action = "cannot delete expired sessions from";
  const std::lock_guard<std::mutex> lock(mutex_);
  std::size_t removed = 0;
  in_transaction(action, [&] {
    {
      const StatementReset reset(delete_expired_.get());
      bind_int64(delete_expired_.get(), 1, now);
      removed = run_delete(delete_expired_.get(), action);
    }
    const StatementReset reset(delete_expired_rotated_.get());
    bind_int64(delete_expired_rotated_.get(), 1, now);
    run_delete(delete_expired_rotated_.get(), action);
    return true;
  });
  return removed;
}

std::vector<RemovedSession> SqliteBackend::run_returning_removed(sqlite3_stmt* statement,
                                                                 const std::string& action) {
  std::vector<RemovedSession> removed;
  for (int step = sqlite3_step(statement); step != SQLITE_DONE; step = sqlite3_step(statement)) {
    if (step != SQLITE_ROW) fail(step, action);
    RemovedSession row;
    assign_column_text(statement, 0, row.id);
    assign_column_text(statement, 1, row.user_id);
    removed.push_back(std::move(row));
  }
  return removed;
}

std::optional<Session> SqliteBackend::run_returning_session(sqlite3_stmt* statement,
                                                            const char* action) {
  std::optional<Session> row;
  for (int step = sqlite3_step(statement); step != SQLITE_DONE; step = sqlite3_step(statement)) {
    if (step != SQLITE_ROW) fail(step, action);
    read_session_row(statement, row.emplace());
  }
  return row;
}

std::optional<Session> SqliteBackend::load_one(std::string_view id) {
  const std::lock_guard<std::mutex> lock(mutex_);
  sqlite3_stmt* query = select_one_.get();
  const StatementReset reset(query);
  bind_text(query, 1, id);
  return run_returning_session(query, "cannot read a session from");
}

// The creates and the evictions they cause share one BEGIN IMMEDIATE transaction: SQLite's write
// lock makes counting, evicting and inserting one step for every connection to the file, so the
// cap holds across processes, and a failed create evicts nothing.
std::vector<RemovedSession> SqliteBackend::insert_new(const std::vector<Session>& sessions,
                                                      std::size_t max_per_user) {
  for (const Session& session : sessions) check_sqlite_storable(session);
  std::vector<RemovedSession> evicted;
  if (sessions.empty()) return evicted;
  const char* action = "cannot save sessions to";
  const std::lock_guard<std::mutex> lock(mutex_);
  const auto insert_all = [&] {
    for (const Session& session : sessions) {
      const StatementReset reset(upsert_.get());
      bind_session(upsert_.get(), session);
      step_done(upsert_.get(), action);
    }
  };
  if (max_per_user == 0 && sessions.size() == 1) {
    insert_all();  // one statement is its own transaction
    return evicted;
  }
  in_transaction(action, [&] {
    insert_all();
    if (max_per_user == 0) return true;
    std::vector<std::pair<std::string_view, const std::optional<std::string>*>> owners;
    for (const Session& session : sessions) {
      const std::pair<std::string_view, const std::optional<std::string>*> owner{
          session.user_id, &session.tenant_id};
      const bool seen = std::any_of(owners.begin(), owners.end(), [&](const auto& other) {
        return other.first == owner.first && *other.second == *owner.second;
      });
      if (!seen) owners.push_back(owner);
    }
    for (const auto& [user_id, tenant_id] : owners) {
      sqlite3_stmt* evict = evict_beyond_cap_.get();
      const StatementReset reset(evict);
      bind_text(evict, 1, user_id);
      bind_optional_text(evict, 2, *tenant_id);
      bind_int64(evict, 3,
                 static_cast<std::int64_t>(std::min<std::size_t>(max_per_user, INT64_MAX)));
      std::vector<RemovedSession> removed = run_returning_removed(evict, action);
      std::move(removed.begin(), removed.end(), std::back_inserter(evicted));
    }
    return true;
  });
  return evicted;
}

std::optional<Session> SqliteBackend::touch(std::string_view id, std::int64_t last_seen_at,
                                            std::int64_t expires_at) {
  const std::lock_guard<std::mutex> lock(mutex_);
  sqlite3_stmt* statement = touch_.get();
  const StatementReset reset(statement);
  bind_text(statement, 1, id);
  bind_int64(statement, 2, last_seen_at);
  bind_int64(statement, 3, expires_at);
  return run_returning_session(statement, "cannot slide a session's expiry in");
}

std::optional<Session> SqliteBackend::update_data(std::string_view id, std::string_view data) {
  if (data.size() > static_cast<std::size_t>(INT_MAX)) {
    throw Error(ErrorCode::kInvalidArgument, "session data is larger than SQLite can store");
  }
  const std::lock_guard<std::mutex> lock(mutex_);
  sqlite3_stmt* statement = update_data_.get();
  const StatementReset reset(statement);
  bind_text(statement, 1, id);
  // A zero-length blob must still be a blob, not NULL: bind_zeroblob(0) gives x''.
  check(data.empty() ? sqlite3_bind_zeroblob(statement, 2, 0)
                     : sqlite3_bind_blob(statement, 2, data.data(), static_cast<int>(data.size()),
                                         SQLITE_STATIC),
        "cannot bind a value for");
  return run_returning_session(statement, "cannot update a session's data in");
}

// Rotation: the rotated-id record, the successor (copied from the stored row, in SQL) and the
// delete of the old row commit together or not at all, so no reader, here or in another
// process, ever sees both tokens valid or neither.
std::optional<Session> SqliteBackend::rotate(std::string_view old_id, std::string_view new_id,
                                             std::int64_t now) {
  // The new row's id is the one field of it the caller gives: checked as save() checks an id.
  if (!is_well_formed_session_id(new_id)) {
    throw Error(ErrorCode::kInvalidArgument,
                "session id must be 64 lowercase hex characters (the SHA-256 of a token)");
  }
  if (new_id == old_id) {
    throw Error(ErrorCode::kInvalidArgument,
                "a rotated session needs a new id: the new id is the old one");
  }
  const char* action = "cannot rotate a session in";
  const std::lock_guard<std::mutex> lock(mutex_);
  std::optional<Session> successor;
  in_transaction(action, [&] {
    {
      sqlite3_stmt* record = record_rotated_.get();
      const StatementReset reset(record);
      bind_text(record, 1, old_id);
      bind_text(record, 2, new_id);
      bind_int64(record, 3, now);
      if (run_delete(record, action) == 0) return false;  // no live row `old_id`
    }
    {
      sqlite3_stmt* copy = copy_as_successor_.get();
      const StatementReset reset(copy);
      bind_text(copy, 1, old_id);
      bind_text(copy, 2, new_id);
      successor = run_returning_session(copy, action);
    }
    const StatementReset reset(delete_by_id_.get());
    bind_text(delete_by_id_.get(), 1, old_id);
    run_delete(delete_by_id_.get(), action);
    return successor.has_value();
  });
  return successor;
}

void SqliteBackend::load_rotated_each(const std::function<void(const RotatedId&)>& visit) {
  const std::lock_guard<std::mutex> lock(mutex_);
  sqlite3_stmt* query = select_rotated_.get();
  const StatementReset reset(query);
  RotatedId rotated;
  for (int step = sqlite3_step(query); step != SQLITE_DONE; step = sqlite3_step(query)) {
    if (step != SQLITE_ROW) fail(step, "cannot load rotated session ids from");
    assign_column_text(query, 0, rotated.id);
    assign_column_text(query, 1, rotated.replaced_by);
    assign_column_text(query, 2, rotated.user_id);
    assign_column_optional_text(query, 3, rotated.tenant_id);
    rotated.rotated_at = sqlite3_column_int64(query, 4);
    rotated.expires_at = sqlite3_column_int64(query, 5);
    visit(rotated);
  }
}

std::size_t SqliteBackend::remove_expired_rotated(std::int64_t now, std::size_t limit) {
  const std::lock_guard<std::mutex> lock(mutex_);
  sqlite3_stmt* statement = delete_expired_rotated_batch_.get();
  const StatementReset reset(statement);
  bind_int64(statement, 1, now);
  bind_int64(statement, 2, static_cast<std::int64_t>(std::min<std::size_t>(limit, INT64_MAX)));
  return run_delete(statement, "cannot delete expired rotated session ids from");
}

}  // namespace

std::unique_ptr<SessionBackend> open_sqlite_backend(const std::string& path,
                                                    const SqliteOptions& options) {
  if (path.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "SQLite database path is empty");
  }
  if (path.find('\0') != std::string::npos) {
    throw Error(ErrorCode::kInvalidArgument, "SQLite database path contains a NUL byte");
  }
  if (options.busy_timeout.count() < 0 || options.busy_timeout > std::chrono::hours(1)) {
    throw Error(ErrorCode::kInvalidArgument, "SQLite busy_timeout is " +
                                                 std::to_string(options.busy_timeout.count()) +
                                                 " ms, outside its range of 0 to 1 hour");
  }
  if (path != ":memory:") check_path_fits_sqlite(path);
  return std::make_unique<SqliteBackend>(path, options);
}

}  // namespace pylon

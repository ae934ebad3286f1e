// pylon-sessions: the SQLite backend.
//
// The file reads in the order a reader meets the ideas:
//   1. SQLite        the default backend: file creation, probing, pragmas, statements
//   2. migrations    the embedded schema, its version table, pylon adoption
// Errors are in errors.cpp, the checks on what a Session may hold (shared by every backend) in
// fields.cpp, tokens in token.cpp, DATABASE_URL in database_url.cpp, PostgreSQL in pg_backend.cpp,
// the store in session_store.cpp and internal/ (the cache: internal/session_cache.cpp).
#include "session_backend.hpp"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "internal/backend_shared.hpp"
#include "internal/own_changes.hpp"
#include "internal/session_row.hpp"

namespace pylon {

// ================================================================================================
// 1. SQLite
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

// A file mode as chmod(1) writes it: four octal digits ("0644").
std::string octal_mode(mode_t mode) {
  std::string digits(4, '0');
  for (std::size_t i = 4; i-- > 0; mode >>= 3U) digits[i] = static_cast<char>('0' + (mode & 7U));
  return digits;
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
    if (info.st_uid != ::geteuid()) {
      throw Error(ErrorCode::kIo,
                  "database file " + shown + " is owned by user ID " + std::to_string(info.st_uid) +
                      ", not by this process's user ID " + std::to_string(::geteuid()) +
                      ": that user could insert a session and log in as anyone. Fix: chown it "
                      "to the user the application runs as and chmod 600 it, or set "
                      "allow_shared_file to share it knowingly (the file was left as it is)");
    }
    if ((mode & (S_IWGRP | S_IWOTH)) != 0) {
      std::string message = "database file ";
      message.append(shown)
          .append(" has mode ")
          .append(octal_mode(mode))
          .append(
              ": group or others may write it, and so insert a session and log in as "
              "anyone. Fix: chmod 600 ")
          .append(shown)
          .append(", or set allow_shared_file to share it knowingly (the file was left as it is)");
      throw Error(ErrorCode::kIo, message);
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
    if (!detail.empty()) detail += "; ";
    detail.append(found.shown)
        .append(": mode ")
        .append(octal_mode(found.mode))
        .append(" -> ")
        .append(octal_mode(tightened));
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

// The columns of `_pylon_sessions` ("name TYPE", sorted) as schema version `applied` leaves them
// (kSessionColumns: each column from the version that added it; version 0, before our
// migrations, may hold a table shaped like version 1's). Rows are read by type, so a table with
// our names but other types is as foreign as one with other names.
std::vector<std::string> session_columns_at(int applied) {
  std::vector<std::string> columns;
  for (const detail::SessionColumn& column : detail::kSessionColumns) {
    if (column.since_version <= std::max(applied, 1)) {
      columns.push_back(std::string(column.name) + " " + column.sqlite_type);
    }
  }
  if (applied >= 6) columns.emplace_back("expiry_hour INTEGER");  // storage's, not a Session's
  std::sort(columns.begin(), columns.end());
  return columns;
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

// `expiry_hour` is this expression of `expires_at` (migration 0006): the hour the purges find a
// row by. Appended to a time, in SQL.
constexpr const char* kExpiryHourOf = " / 3600";

// Every column of a session, "id, user_id, ...", in the order of detail::kSessionColumns: the
// order read_session_row() reads and Use::bind(const Session&) binds.
const std::string& session_columns() {
  static const std::string kColumns = detail::session_column_list();
  return kColumns;
}

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

// The row a statement selecting session_columns() (from column `first` on) stands on, into
// `session`, whose strings keep their buffers.
void read_session_row(sqlite3_stmt* query, Session& session, int first = 0) {
  int index = first;
  detail::for_each_session_field(
      session, [query, &index](const detail::SessionColumn& column, auto& member) {
        using Member = std::decay_t<decltype(member)>;
        const int at = index++;
        if constexpr (std::is_same_v<Member, std::int64_t>) {
          member = sqlite3_column_int64(query, at);
        } else if constexpr (std::is_same_v<Member, std::optional<std::int64_t>>) {
          if (sqlite3_column_type(query, at) == SQLITE_NULL) {
            member.reset();
          } else {
            member = sqlite3_column_int64(query, at);
          }
        } else if constexpr (std::is_same_v<Member, std::optional<std::string>>) {
          assign_column_optional_text(query, at, member);
        } else if (column.kind == detail::ColumnKind::kBytes) {
          const void* blob = sqlite3_column_blob(query, at);
          const int size = sqlite3_column_bytes(query, at);
          if (blob == nullptr) {
            member.clear();
          } else {
            member.assign(static_cast<const char*>(blob), static_cast<std::size_t>(size));
          }
        } else {
          assign_column_text(query, at, member);
        }
      });
}

// Every column of a rotated id, in the order read_rotated_row() reads them.
#define PYLON_SQLITE_ROTATED_COLUMNS "id, replaced_by, user_id, tenant_id, rotated_at, expires_at"

void read_rotated_row(sqlite3_stmt* query, RotatedId& rotated, int first = 0) {
  assign_column_text(query, first, rotated.id);
  assign_column_text(query, first + 1, rotated.replaced_by);
  assign_column_text(query, first + 2, rotated.user_id);
  assign_column_optional_text(query, first + 3, rotated.tenant_id);
  rotated.rotated_at = sqlite3_column_int64(query, first + 4);
  rotated.expires_at = sqlite3_column_int64(query, first + 5);
}

// An entry of the change log with what storage holds for its id: position, id, then whether a
// session row was joined and its columns, then whether a rotated id was joined and its columns.
constexpr int kChangeSessionColumn = 3;
constexpr int kChangeRotatedColumn =
    kChangeSessionColumn + static_cast<int>(detail::kSessionColumns.size()) + 1;
const std::string& change_columns() {
  static const std::string kColumns =
      "c.position, c.id, s.id IS NOT NULL, " + detail::session_column_list("s.") +
      ", r.id IS NOT NULL, r.id, r.replaced_by, r.user_id, r.tenant_id, r.rotated_at, "
      "r.expires_at FROM _pylon_change_log AS c LEFT JOIN _pylon_sessions AS s ON s.id = c.id "
      "LEFT JOIN _pylon_rotated_ids AS r ON r.id = c.id";
  return kColumns;
}

SessionChange read_change_row(sqlite3_stmt* query) {
  SessionChange change;
  change.position = sqlite3_column_int64(query, 0);
  assign_column_text(query, 1, change.id);
  if (sqlite3_column_int(query, kChangeSessionColumn - 1) != 0) {
    read_session_row(query, change.session.emplace(), kChangeSessionColumn);
  }
  if (sqlite3_column_int(query, kChangeRotatedColumn - 1) != 0) {
    read_rotated_row(query, change.rotated.emplace(), kChangeRotatedColumn);
  }
  return change;
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
  std::optional<Authentication> authenticate(std::string_view old_id, std::string_view new_id,
                                             std::string_view user_id, std::int64_t now,
                                             std::size_t max_per_user) override;
  std::vector<Session> list_page(const SessionQuery& query, std::int64_t now) override;
  std::vector<TenantCount> count_by_tenant(std::int64_t now) override;
  std::vector<SessionWriteOutcome> write_group(std::vector<SessionWrite> writes) override;
  void load_rotated_each(const std::function<void(const RotatedId&)>& visit) override;
  std::size_t remove_expired_rotated(std::int64_t now, std::size_t limit) override;
  std::string describe() const override { return shown_path_; }
  std::vector<SessionEvent> opening_events() const override { return opening_events_; }
  std::unique_ptr<ChangeSource> open_change_source() override;

  // The change log, for SqliteChangeSource, which reads it through a backend of its own.
  std::int64_t data_version();
  std::int64_t change_position();
  // `own`: the positions the writing backend's groups logged, reported as skipped.
  ChangeBatch read_changes(std::int64_t after, const std::vector<std::int64_t>& also,
                           std::size_t limit, detail::OwnChanges& own);
  std::size_t prune_changes(std::chrono::seconds keep);

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
  void prepare_session_statements();
  void prepare_rotation_statements();
  void prepare_change_log_statements();

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

  // A prepared statement in use, and a transaction; see "Statements in use" below.
  class Use;
  class Transaction;
  class Savepoint;

  // The writes, with mutex_ held and inside a transaction the caller opened and commits (each
  // call alone, or a group): each changes storage only through its statements. rotate_in() and
  // authenticate_in() may have written when they return nullopt: the caller rolls back.
  std::vector<RemovedSession> insert_new_in(const std::vector<Session>& sessions,
                                            std::size_t max_per_user);
  std::optional<Session> rotate_in(std::string_view old_id, std::string_view new_id,
                                   std::int64_t now);
  std::optional<Authentication> authenticate_in(std::string_view old_id, std::string_view new_id,
                                                std::string_view user_id, std::int64_t now,
                                                std::size_t max_per_user);
  std::vector<RemovedSession> remove_matching_in(const SessionFilter& filter);
  std::optional<Session> touch_in(std::string_view id, std::int64_t last_seen_at,
                                  std::int64_t expires_at);
  std::optional<Session> update_data_in(std::string_view id, std::string_view data);
  // One write of a group, inside its own savepoint when it needs one; write_in() makes it.
  SessionWriteOutcome write_in_group(const SessionWrite& write);
  SessionWriteOutcome write_in(const SessionWrite& write);
  // The update hook: collects the positions of the change-log rows this connection inserts
  // while a write_group() runs (PositionCollection).
  static void on_row_changed(void* backend, int operation, const char* database, const char* table,
                             sqlite3_int64 rowid);
  class PositionCollection;

  std::mutex mutex_;  // serialises every use of the connection and its statements
  std::string path_;
  SqliteOptions options_;  // as opened: a change source opens the file again with them
  // path_ as messages show it: through redact_url(), in case a mistyped libpq keyword/value
  // string ("host=db password=...") was taken for a file name.
  std::string shown_path_;
  bool adopt_pylon_table_ = false;  // set by check_schema_version_and_shape(), used by migrate()
  std::vector<SessionEvent> opening_events_;
  // The change-log positions write_group() logged, shared with the change source opened here;
  // those of the group under way, collected by on_row_changed() while collecting_positions_.
  std::shared_ptr<detail::OwnChanges> own_changes_ = std::make_shared<detail::OwnChanges>();
  std::vector<std::int64_t> logged_positions_;
  bool collecting_positions_ = false;
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
  Statement savepoint_;
  Statement release_savepoint_;
  Statement evict_beyond_cap_;
  Statement touch_;
  Statement update_data_;
  Statement record_rotated_;
  Statement copy_as_successor_;
  Statement copy_as_authenticated_;
  Statement evict_others_beyond_cap_;
  Statement count_by_tenant_;
  Statement select_rotated_;
  Statement delete_expired_rotated_;
  Statement delete_expired_rotated_batch_;
  Statement data_version_;
  Statement change_position_;
  Statement positions_after_;
  Statement changes_between_;
  Statement change_at_;
  Statement pruned_through_;
  Statement has_prunable_;
  Statement record_pruned_;
  Statement delete_pruned_;
  // remove_matching()'s DELETE for each combination of filter fields, prepared on first use.
  std::array<Statement, 32> delete_matching_;
};

// ------------------------------------------------------------------------------------------------
// Statements in use
//
// Use is one prepared statement in use: typed binds that check their result once, next_row() and
// run() that step it and fail with the path and SQLite's message, and a reset (bindings cleared)
// however the scope ends, so a statement left mid-step never keeps its read transaction (and so
// the WAL) pinned. Transaction is BEGIN IMMEDIATE ... COMMIT that rolls back unless committed.
// ------------------------------------------------------------------------------------------------

class SqliteBackend::Use {
 public:
  Use(const SqliteBackend& backend, const Statement& statement, const char* action)
      : backend_(backend), statement_(statement.get()), action_(action) {}
  ~Use() {
    sqlite3_reset(statement_);
    sqlite3_clear_bindings(statement_);
  }
  Use(const Use&) = delete;
  Use& operator=(const Use&) = delete;
  Use(Use&&) = delete;
  Use& operator=(Use&&) = delete;

  Use& bind(int index, std::string_view text) {
    if (text.size() > static_cast<std::size_t>(INT_MAX)) {
      throw Error(ErrorCode::kInvalidArgument, "a session field is larger than SQLite can bind");
    }
    return checked(sqlite3_bind_text(statement_, index, text.data(), static_cast<int>(text.size()),
                                     SQLITE_STATIC));
  }
  Use& bind(int index, const std::optional<std::string>& text) {
    return text ? bind(index, std::string_view(*text))
                : checked(sqlite3_bind_null(statement_, index));
  }
  Use& bind(int index, std::int64_t value) {
    return checked(sqlite3_bind_int64(statement_, index, value));
  }
  Use& bind(int index, const std::optional<std::int64_t>& value) {
    return value ? bind(index, *value) : checked(sqlite3_bind_null(statement_, index));
  }
  Use& bind(int index, std::size_t count) {
    return bind(index, static_cast<std::int64_t>(std::min<std::size_t>(count, INT64_MAX)));
  }
  // Bytes as a BLOB; an empty one is still a blob, not NULL (bind_zeroblob(0) gives x'').
  Use& bind_blob(int index, std::string_view bytes) {
    if (bytes.size() > static_cast<std::size_t>(INT_MAX)) {
      throw Error(ErrorCode::kInvalidArgument, "session data is larger than SQLite can store");
    }
    return checked(bytes.empty()
                       ? sqlite3_bind_zeroblob(statement_, index, 0)
                       : sqlite3_bind_blob(statement_, index, bytes.data(),
                                           static_cast<int>(bytes.size()), SQLITE_STATIC));
  }
  // Every column of a session, as session_columns() lists them, from ?1 on.
  Use& bind(const Session& session) {
    int index = 1;
    detail::for_each_session_field(
        session, [this, &index](const detail::SessionColumn& column, const auto& member) {
          if constexpr (std::is_same_v<std::decay_t<decltype(member)>, std::string>) {
            if (column.kind == detail::ColumnKind::kBytes) {
              bind_blob(index++, member);
              return;
            }
            bind(index++, std::string_view(member));
          } else {
            bind(index++, member);
          }
        });
    return *this;
  }

  // Steps once: true with a row to read, false when the statement is done.
  bool next_row() {
    const int step = sqlite3_step(statement_);
    if (step == SQLITE_ROW) return true;
    if (step != SQLITE_DONE) backend_.fail(step, action_);
    return false;
  }
  // Steps to the end (reading no rows); the number of rows it changed.
  std::size_t run() {
    while (next_row()) {
    }
    return static_cast<std::size_t>(sqlite3_changes64(backend_.db_.get()));
  }
  // Steps to the end, collecting the `id, user_id` rows a DELETE ... RETURNING gives.
  std::vector<RemovedSession> removed_rows() {
    std::vector<RemovedSession> removed;
    while (next_row()) {
      RemovedSession row;
      assign_column_text(statement_, 0, row.id);
      assign_column_text(statement_, 1, row.user_id);
      removed.push_back(std::move(row));
    }
    return removed;
  }
  // Steps to the end; the one session row it gave (every column), or nullopt.
  std::optional<Session> session_row() {
    std::optional<Session> row;
    while (next_row()) read_session_row(statement_, row.emplace());
    return row;
  }
  sqlite3_stmt* get() const { return statement_; }

 private:
  Use& checked(int result) {
    if (result != SQLITE_OK) backend_.fail(result, "cannot bind a value for");
    return *this;
  }

  const SqliteBackend& backend_;
  sqlite3_stmt* statement_;
  const char* action_;
};

class SqliteBackend::Transaction {
 public:
  // Before prepare_statements() (migrations), BEGIN and COMMIT are run as plain SQL.
  Transaction(SqliteBackend& backend, const char* action) : backend_(backend), action_(action) {
    if (backend_.begin_) {
      Use(backend_, backend_.begin_, action_).run();
    } else {
      backend_.exec("BEGIN IMMEDIATE", action_);
    }
  }
  // Nothing was acknowledged: roll back, so the connection is usable again. A failed COMMIT
  // leaves the transaction open; if SQLite already rolled back on its own, this is a no-op.
  ~Transaction() {
    if (!committed_ && sqlite3_get_autocommit(backend_.db_.get()) == 0) {
      sqlite3_exec(backend_.db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
    }
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  Transaction(Transaction&&) = delete;
  Transaction& operator=(Transaction&&) = delete;

  void commit() {
    if (backend_.commit_) {
      Use(backend_, backend_.commit_, action_).run();
    } else {
      backend_.exec("COMMIT", action_);
    }
    committed_ = true;
  }

 private:
  SqliteBackend& backend_;
  const char* action_;
  bool committed_ = false;
};

// One write of a group inside the group's transaction: rolled back to where it started unless
// released, so a write that fails, or finds nothing to change, leaves the others as they were.
class SqliteBackend::Savepoint {
 public:
  Savepoint(SqliteBackend& backend, const char* action) : backend_(backend), action_(action) {
    Use(backend_, backend_.savepoint_, action_).run();
  }
  // A failure that ended the whole transaction (SQLite rolls back on its own after a full disk or
  // an I/O error) leaves no savepoint to return to: the group's COMMIT then fails, failing all.
  ~Savepoint() {
    if (!released_ && sqlite3_get_autocommit(backend_.db_.get()) == 0) {
      sqlite3_exec(backend_.db_.get(), "ROLLBACK TO pylon_write; RELEASE pylon_write", nullptr,
                   nullptr, nullptr);
    }
  }
  Savepoint(const Savepoint&) = delete;
  Savepoint& operator=(const Savepoint&) = delete;
  Savepoint(Savepoint&&) = delete;
  Savepoint& operator=(Savepoint&&) = delete;

  void release() {
    Use(backend_, backend_.release_savepoint_, action_).run();
    released_ = true;
  }

 private:
  SqliteBackend& backend_;
  const char* action_;
  bool released_ = false;
};

// While it lives, on_row_changed() collects the positions of the change-log rows this
// connection's statements insert (migration 0004's triggers log every write), starting from none.
// mutex_ is held throughout, as on every use of the connection, hook calls included.
class SqliteBackend::PositionCollection {
 public:
  explicit PositionCollection(SqliteBackend& backend) : backend_(backend) {
    backend_.logged_positions_.clear();
    backend_.collecting_positions_ = true;
  }
  ~PositionCollection() { backend_.collecting_positions_ = false; }
  PositionCollection(const PositionCollection&) = delete;
  PositionCollection& operator=(const PositionCollection&) = delete;
  PositionCollection(PositionCollection&&) = delete;
  PositionCollection& operator=(PositionCollection&&) = delete;

 private:
  SqliteBackend& backend_;
};

// SQLite calls this for every row a statement of this connection changes in a rowid table,
// trigger programs included; the rowid of a change-log row is its position.
void SqliteBackend::on_row_changed(void* backend, int operation, const char* database,
                                   const char* table, sqlite3_int64 rowid) {
  auto* self = static_cast<SqliteBackend*>(backend);
  if (!self->collecting_positions_ || operation != SQLITE_INSERT ||
      std::strcmp(database, "main") != 0 || std::strcmp(table, "_pylon_change_log") != 0) {
    return;
  }
  try {
    self->logged_positions_.push_back(rowid);
  } catch (const std::bad_alloc&) {
    // Not recorded as this backend's own: the change source then reads the entry back and the
    // store applies it, as it would anyone's. Harmless, and a callback must not throw.
    self->collecting_positions_ = false;
  }
}

SqliteBackend::SqliteBackend(std::string path, const SqliteOptions& options)
    : path_(std::move(path)), options_(options), shown_path_(redact_url(path_)) {
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
  sqlite3_update_hook(db_.get(), &SqliteBackend::on_row_changed, this);

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
  const Statement query = prepare("SELECT type FROM sqlite_schema WHERE name = ?1", 0);
  Use use(*this, query, "cannot read the schema of");
  if (!use.bind(1, std::string_view(name)).next_row()) return false;
  if (type != nullptr) assign_column_text(use.get(), 0, *type);
  return true;
}

// "name TYPE" of each column, sorted; names only when `with_types` is false.
std::vector<std::string> SqliteBackend::table_columns(const char* table, bool with_types) {
  Statement query =
      prepare(with_types ? "SELECT name || ' ' || upper(type) FROM pragma_table_info(?1) ORDER BY 1"
                         : "SELECT name FROM pragma_table_info(?1) ORDER BY 1",
              0);
  Use use(*this, query, "cannot read the schema of");
  use.bind(1, std::string_view(table));
  std::vector<std::string> columns;
  while (use.next_row()) assign_column_text(use.get(), 0, columns.emplace_back());
  return columns;
}

int SqliteBackend::applied_schema_version() {
  if (!table_exists("_pylon_schema_migrations")) return 0;
  const Statement query =
      prepare("SELECT coalesce(max(version), 0) FROM _pylon_schema_migrations", 0);
  Use use(*this, query, "cannot read the schema version of");
  if (!use.next_row()) return 0;
  const sqlite3_int64 applied = sqlite3_column_int64(use.get(), 0);
  return static_cast<int>(std::clamp<sqlite3_int64>(applied, 0, INT_MAX));
}

void SqliteBackend::probe() {
  // Reading the schema forces SQLite to parse the header and the first page: this is where a
  // file of random bytes or another format is caught (SQLITE_NOTADB), before anything is written.
  const Statement query = prepare("SELECT count(*) FROM sqlite_schema", 0, "cannot read");
  Use(*this, query, "cannot read").run();
}

void SqliteBackend::check_schema_version_and_shape() {
  const int applied = applied_schema_version();
  if (applied > kLatestSqliteVersion) {
    throw Error(ErrorCode::kSchemaTooNew,
                "database " + shown_path_ + " has pylon-sessions schema version " +
                    std::to_string(applied) + ", newer than version " +
                    std::to_string(kLatestSqliteVersion) +
                    " that this build knows; upgrade pylon-sessions (the file was left as it is)");
  }
  check_rotated_ids_table(applied);
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
  if (columns == session_columns_at(applied)) {
    // Our statements rely on the primary key (ON CONFLICT (id)) and on the indexes the
    // migrations made; a table without them is not ours, however its columns look.
    check_keys_and_indexes("_pylon_sessions", applied >= 1 ? applied : 0);
    return;
  }
  // pylon's runtime: token, user_id, expires_at, created_at, device, and later tenant_id.
  std::vector<std::string> legacy = {"created_at", "device", "expires_at", "token", "user_id"};
  std::vector<std::string> legacy_with_tenant = {"created_at", "device", "expires_at",
                                                 "tenant_id",  "token",  "user_id"};
  const std::vector<std::string> names = table_columns("_pylon_sessions", false);
  if (applied == 0 && (names == legacy || names == legacy_with_tenant)) {
    adopt_pylon_table_ = true;
    return;
  }
  std::string listed;
  for (const std::string& column : columns) listed += (listed.empty() ? "" : ", ") + column;
  refuse_table("has a _pylon_sessions table with columns (" + listed +
               ") that is neither pylon-sessions' nor pylon's");
}

// An index a schema version's migrations made, and the versions that have it.
struct SqliteIndexOfVersion {
  const char* table;
  const char* name;
  const char* first_column;
  int since_version;
  int until_version;  // the last version that has it; 0: every later one too
};
const std::vector<SqliteIndexOfVersion>& expected_indexes() {
  static const std::vector<SqliteIndexOfVersion> kIndexes = {
      {"_pylon_sessions", "_pylon_sessions_by_user", "user_id", 1, 0},
      {"_pylon_sessions", "_pylon_sessions_by_expiry", "expires_at", 1, 5},
      {"_pylon_sessions", "_pylon_sessions_by_idp_session", "idp_session_id", 2, 0},
      {"_pylon_rotated_ids", "_pylon_rotated_ids_by_expiry", "expires_at", 3, 0},
      {"_pylon_sessions", "_pylon_sessions_by_expiry_hour", "expiry_hour", 6, 0},
  };
  return kIndexes;
}

void SqliteBackend::check_keys_and_indexes(const char* table, int version) {
  const char* action = "cannot read the schema of";
  const Statement key =
      prepare("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk", 0);
  std::string primary_key;
  {
    Use use(*this, key, action);
    use.bind(1, std::string_view(table));
    std::string name;
    while (use.next_row()) {
      assign_column_text(use.get(), 0, name);
      primary_key += (primary_key.empty() ? "" : ", ") + name;
    }
  }
  if (primary_key != "id") {
    refuse_table(std::string("has a ") + table + " table whose primary key is (" + primary_key +
                 "), not (id)");
  }
  const Statement index = prepare(
      "SELECT count(*) FROM pragma_index_list(?1) AS list, pragma_index_info(list.name) AS info "
      "WHERE list.name = ?2 AND info.seqno = 0 AND info.name = ?3",
      0);
  for (const SqliteIndexOfVersion& expected : expected_indexes()) {
    if (std::string_view(expected.table) != table || version < expected.since_version ||
        (expected.until_version != 0 && version > expected.until_version)) {
      continue;
    }
    Use use(*this, index, action);
    use.bind(1, std::string_view(table)).bind(2, std::string_view(expected.name));
    if (!use.bind(3, std::string_view(expected.first_column)).next_row() ||
        sqlite3_column_int(use.get(), 0) != 1) {
      refuse_table(std::string("has a ") + table + " table without the index " + expected.name +
                   " on (" + expected.first_column + ") that its schema version " +
                   std::to_string(version) + " promises");
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
    if (step != SQLITE_ROW) {
      return "PRAGMA quick_check failed: " + std::string(sqlite3_errstr(step));
    }
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
    const Statement wal = prepare("PRAGMA journal_mode = WAL", 0);
    Use(*this, wal, "cannot switch to WAL mode").run();
  }
  std::string mode_text;
  {
    const Statement query = prepare("PRAGMA journal_mode", 0);
    Use use(*this, query, "cannot read the journal mode of");
    if (use.next_row()) assign_column_text(use.get(), 0, mode_text);
  }
  if (mode_text != "wal" && mode_text != "memory") {
    throw Error(ErrorCode::kIo, "cannot switch " + shown_path_ + " to WAL mode (it stays in " +
                                    mode_text + " mode)");
  }
  exec(options.synchronous == SqliteSync::kFull ? "PRAGMA synchronous = FULL"
                                                : "PRAGMA synchronous = NORMAL",
       "cannot set synchronous on");
  // A checkpoint copies the WAL's pages back into the database file and syncs it. At NORMAL,
  // where a commit syncs nothing, checkpoints every 10,000 pages (40 MB of WAL) instead of
  // SQLite's 1,000 copy a page written by many commits once for all of them: creates and revokes
  // measured 15-20% faster (bench/pylon_bench, `writes`). At FULL every commit syncs the WAL, and
  // a sync that also grows the file costs about twice one that does not: the default, whose
  // smaller WAL is reused sooner, measured faster there.
  if (options.synchronous == SqliteSync::kNormal) {
    exec("PRAGMA wal_autocheckpoint = 10000", "cannot set wal_autocheckpoint on");
  }
}

void SqliteBackend::verify_table_shape() {
  std::string type;
  if (!table_exists("_pylon_sessions", &type) || type != "table" ||
      table_columns("_pylon_sessions") != session_columns_at(kLatestSqliteVersion)) {
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
// 2. Migrations
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
    // Nothing of a migration that fails is committed: the Transaction rolls it back.
    Transaction transaction(*this, action.c_str());
    exec(
        "CREATE TABLE IF NOT EXISTS _pylon_schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
        action);
    if (applied_schema_version() >= migration.version) {
      transaction.commit();
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
    const Statement record = prepare(
        "INSERT INTO _pylon_schema_migrations (version, name, applied_at) "
        "VALUES (?1, ?2, unixepoch())",
        0);
    Use(*this, record, action.c_str())
        .bind(1, std::int64_t{migration.version})
        .bind(2, std::string_view(migration.name))
        .run();
    transaction.commit();
  }

  if (adopted) {
    exec("VACUUM", "cannot VACUUM the adopted pylon table out of");
    const Statement checkpoint = prepare("PRAGMA wal_checkpoint(TRUNCATE)", 0);
    Use use(*this, checkpoint, "cannot checkpoint the WAL of");
    if (!use.next_row() || sqlite3_column_int(use.get(), 0) != 0) {
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
  prepare_session_statements();
  prepare_rotation_statements();
  prepare_change_log_statements();
}

// The writes and reads of sessions, and the transaction's own statements.
void SqliteBackend::prepare_session_statements() {
  constexpr unsigned int kPersistent = SQLITE_PREPARE_PERSISTENT;
  const std::string& columns = session_columns();
  const std::string returning = " RETURNING " + columns;
  std::string placeholders;
  std::string expires_at;
  for (std::size_t i = 1; i <= detail::kSessionColumns.size(); ++i) {
    placeholders.append(i == 1 ? "?" : ", ?").append(std::to_string(i));
    if (detail::kSessionColumns.at(i - 1).name == std::string_view("expires_at")) {
      expires_at = "?" + std::to_string(i);
    }
  }
  // expiry_hour is set with the row, so that migration 0006's trigger has nothing to correct; an
  // upsert that moves expires_at leaves it to that trigger.
  upsert_ = prepare(("INSERT INTO _pylon_sessions (" + columns + ", expiry_hour) VALUES (" +
                     placeholders + ", " + expires_at + kExpiryHourOf +
                     ") ON CONFLICT (id) DO UPDATE SET " + detail::session_upsert_assignments())
                        .c_str(),
                    kPersistent);
  delete_by_id_ = prepare("DELETE FROM _pylon_sessions WHERE id = ?1", kPersistent);
  delete_by_user_ = prepare("DELETE FROM _pylon_sessions WHERE user_id = ?1", kPersistent);
  delete_expired_ = prepare(("DELETE FROM _pylon_sessions WHERE expiry_hour <= ?1" +
                             std::string(kExpiryHourOf) + " AND expires_at <= ?1")
                                .c_str(),
                            kPersistent);
  select_all_ = prepare(("SELECT " + columns + " FROM _pylon_sessions").c_str(), kPersistent);
  select_one_ =
      prepare(("SELECT " + columns + " FROM _pylon_sessions WHERE id = ?1").c_str(), kPersistent);
  delete_expired_batch_ =
      prepare(("DELETE FROM _pylon_sessions WHERE rowid IN (SELECT rowid FROM _pylon_sessions "
               "WHERE expiry_hour <= ?1" +
               std::string(kExpiryHourOf) + " AND expires_at <= ?1 LIMIT ?2)")
                  .c_str(),
              kPersistent);
  begin_ = prepare("BEGIN IMMEDIATE", kPersistent);
  commit_ = prepare("COMMIT", kPersistent);
  savepoint_ = prepare("SAVEPOINT pylon_write", kPersistent);
  release_savepoint_ = prepare("RELEASE pylon_write", kPersistent);
  // Oldest first by created_at, then by rowid: SQLite gives a new row a rowid larger than every
  // row's in the table, so among the rows present it orders by insertion.
  evict_beyond_cap_ = prepare(
      "DELETE FROM _pylon_sessions WHERE rowid IN (SELECT rowid FROM _pylon_sessions "
      "WHERE user_id = ?1 AND tenant_id IS ?2 ORDER BY created_at DESC, rowid DESC "
      "LIMIT -1 OFFSET ?3) RETURNING id, user_id",
      kPersistent);
  touch_ = prepare(("UPDATE _pylon_sessions SET last_seen_at = max(last_seen_at, ?2), "
                    "expires_at = max(expires_at, ?3) WHERE id = ?1" +
                    returning)
                       .c_str(),
                   kPersistent);
  update_data_ = prepare(("UPDATE _pylon_sessions SET data = ?2 WHERE id = ?1" + returning).c_str(),
                         kPersistent);
  // NULL sorts first in SQLite, and text in byte order (BINARY): as PostgreSQL's COLLATE "C"
  // with NULLS FIRST.
  count_by_tenant_ = prepare(
      "SELECT tenant_id, count(*), sum(user_id = '') FROM _pylon_sessions WHERE expires_at > ?1 "
      "GROUP BY tenant_id ORDER BY tenant_id",
      kPersistent);
}

// Rotation and sign-in (a successor copied from the stored row), and the rotated ids.
void SqliteBackend::prepare_rotation_statements() {
  constexpr unsigned int kPersistent = SQLITE_PREPARE_PERSISTENT;
  const std::string& columns = session_columns();
  const std::string returning = " RETURNING " + columns;
  record_rotated_ = prepare(
      "INSERT INTO _pylon_rotated_ids (id, replaced_by, user_id, tenant_id, rotated_at, "
      "expires_at) SELECT id, ?2, user_id, tenant_id, ?3, CASE WHEN absolute_expires_at > 0 "
      "THEN absolute_expires_at ELSE expires_at END FROM _pylon_sessions "
      "WHERE id = ?1 AND expires_at > ?3 "
      "ON CONFLICT (id) DO UPDATE SET replaced_by = excluded.replaced_by, "
      "user_id = excluded.user_id, tenant_id = excluded.tenant_id, "
      "rotated_at = excluded.rotated_at, expires_at = excluded.expires_at",
      kPersistent);
  // A rotation's successor: the stored row, every column, under the new id ?2.
  copy_as_successor_ =
      prepare(("INSERT INTO _pylon_sessions (" + columns + ", expiry_hour) SELECT " +
               detail::session_column_list_replacing({{"id", "?2"}}) +
               ", expiry_hour FROM _pylon_sessions WHERE id = ?1" + returning)
                  .c_str(),
              kPersistent);
  // The successor of a sign-in: the copy above, with the user and the time they proved it.
  copy_as_authenticated_ =
      prepare(("INSERT INTO _pylon_sessions (" + columns + ", expiry_hour) SELECT " +
               detail::session_column_list_replacing(
                   {{"id", "?2"}, {"user_id", "?3"}, {"authenticated_at", "?4"}}) +
               ", expiry_hour FROM _pylon_sessions WHERE id = ?1" + returning)
                  .c_str(),
              kPersistent);
  // evict_beyond_cap_ that spares the signed-in row ?4 and keeps ?3 others.
  evict_others_beyond_cap_ = prepare(
      "DELETE FROM _pylon_sessions WHERE rowid IN (SELECT rowid FROM _pylon_sessions "
      "WHERE user_id = ?1 AND tenant_id IS ?2 AND id <> ?4 ORDER BY created_at DESC, rowid DESC "
      "LIMIT -1 OFFSET ?3) RETURNING id, user_id",
      kPersistent);
  select_rotated_ =
      prepare("SELECT " PYLON_SQLITE_ROTATED_COLUMNS " FROM _pylon_rotated_ids", kPersistent);
  delete_expired_rotated_ =
      prepare("DELETE FROM _pylon_rotated_ids WHERE expires_at <= ?1", kPersistent);
  delete_expired_rotated_batch_ = prepare(
      "DELETE FROM _pylon_rotated_ids WHERE rowid IN "
      "(SELECT rowid FROM _pylon_rotated_ids WHERE expires_at <= ?1 LIMIT ?2)",
      kPersistent);
}

// What SqliteChangeSource reads and prunes.
void SqliteBackend::prepare_change_log_statements() {
  constexpr unsigned int kPersistent = SQLITE_PREPARE_PERSISTENT;
  data_version_ = prepare("PRAGMA data_version", kPersistent);
  change_position_ = prepare(
      "SELECT max(coalesce((SELECT max(position) FROM _pylon_change_log), 0), "
      "(SELECT pruned_through FROM _pylon_change_log_state))",
      kPersistent);
  positions_after_ = prepare(
      "SELECT position FROM _pylon_change_log WHERE position > ?1 ORDER BY position LIMIT ?2",
      kPersistent);
  changes_between_ = prepare(
      ("SELECT " + change_columns() + " WHERE c.position BETWEEN ?1 AND ?2 ORDER BY c.position")
          .c_str(),
      kPersistent);
  change_at_ =
      prepare(("SELECT " + change_columns() + " WHERE c.position = ?1").c_str(), kPersistent);
  pruned_through_ = prepare("SELECT pruned_through FROM _pylon_change_log_state", kPersistent);
  // The log has no index on logged_at (migration 0006): its rows are in position order, which is
  // commit order, so pruning walks it from the oldest row and stops at the first one to keep.
  // The newest row is never pruned, so the largest position, and with it the next one SQLite
  // hands out, never goes back.
  has_prunable_ = prepare(
      "SELECT EXISTS (SELECT 1 FROM (SELECT position, logged_at FROM _pylon_change_log "
      "ORDER BY position LIMIT 1) WHERE logged_at < CAST(strftime('%s', 'now') AS INTEGER) - ?1 "
      "AND position < (SELECT max(position) FROM _pylon_change_log))",
      kPersistent);
  record_pruned_ = prepare(
      "UPDATE _pylon_change_log_state SET pruned_through = max(pruned_through, "
      "coalesce((SELECT position FROM _pylon_change_log "
      "WHERE logged_at >= CAST(strftime('%s', 'now') AS INTEGER) - ?1 ORDER BY position LIMIT 1), "
      "(SELECT max(position) FROM _pylon_change_log), 1) - 1)",
      kPersistent);
  delete_pruned_ = prepare(
      "DELETE FROM _pylon_change_log WHERE position <= "
      "(SELECT pruned_through FROM _pylon_change_log_state) "
      "AND position < (SELECT max(position) FROM _pylon_change_log)",
      kPersistent);
}

// ------------------------------------------------------------------------------------------------
// The calls
// ------------------------------------------------------------------------------------------------

std::vector<Session> SqliteBackend::load_all() {
  std::vector<Session> sessions;
  load_each([&sessions](const Session& session) { sessions.push_back(session); });
  return sessions;
}

// One Session is reused for every row, so its strings keep their buffers: a start-up load of a
// million rows allocates for the cache, not for the rows on their way into it.
void SqliteBackend::load_each(const std::function<void(const Session&)>& visit) {
  const std::lock_guard<std::mutex> lock(mutex_);
  Use query(*this, select_all_, "cannot load sessions from");
  Session session;
  while (query.next_row()) {
    read_session_row(query.get(), session);
    visit(session);
  }
}

std::optional<Session> SqliteBackend::load_one(std::string_view id) {
  const std::lock_guard<std::mutex> lock(mutex_);
  return Use(*this, select_one_, "cannot read a session from").bind(1, id).session_row();
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
  Use(*this, upsert_, "cannot save a session to").bind(session).run();
}

void SqliteBackend::save_batch(const std::vector<Session>& sessions) { insert_new(sessions, 0); }

// The creates and the evictions they cause share one BEGIN IMMEDIATE transaction: SQLite's write
// lock makes counting, evicting and inserting one step for every connection to the file, so the
// cap holds across processes, and a failed create evicts nothing.
std::vector<RemovedSession> SqliteBackend::insert_new(const std::vector<Session>& sessions,
                                                      std::size_t max_per_user) {
  for (const Session& session : sessions) check_sqlite_storable(session);
  if (sessions.empty()) return {};
  const char* action = "cannot save sessions to";
  const std::lock_guard<std::mutex> lock(mutex_);
  if (max_per_user == 0 && sessions.size() == 1) {
    Use(*this, upsert_, action).bind(sessions.front()).run();  // its own transaction
    return {};
  }
  Transaction transaction(*this, action);
  std::vector<RemovedSession> evicted = insert_new_in(sessions, max_per_user);
  transaction.commit();
  return evicted;
}

std::vector<RemovedSession> SqliteBackend::insert_new_in(const std::vector<Session>& sessions,
                                                         std::size_t max_per_user) {
  const char* action = "cannot save sessions to";
  std::vector<RemovedSession> evicted;
  for (const Session& session : sessions) Use(*this, upsert_, action).bind(session).run();
  if (max_per_user == 0) return evicted;
  // Each (user, tenant) of the batch once.
  std::vector<const Session*> owners;
  for (const Session& session : sessions) {
    const bool seen = std::any_of(owners.begin(), owners.end(), [&](const Session* other) {
      return other->user_id == session.user_id && other->tenant_id == session.tenant_id;
    });
    if (!seen) owners.push_back(&session);
  }
  for (const Session* owner : owners) {
    if (owner->is_anonymous()) continue;  // anonymous sessions count against no cap
    std::vector<RemovedSession> removed = Use(*this, evict_beyond_cap_, action)
                                              .bind(1, std::string_view(owner->user_id))
                                              .bind(2, owner->tenant_id)
                                              .bind(3, max_per_user)
                                              .removed_rows();
    std::move(removed.begin(), removed.end(), std::back_inserter(evicted));
  }
  return evicted;
}

// An update that never re-inserts a row deleted meanwhile: the delete finds nothing and the whole
// transaction is rolled back.
bool SqliteBackend::replace(std::string_view old_id, const Session& replacement) {
  check_sqlite_storable(replacement);
  const char* action = "cannot rotate a session in";
  const std::lock_guard<std::mutex> lock(mutex_);
  Transaction transaction(*this, action);
  if (Use(*this, delete_by_id_, action).bind(1, old_id).run() == 0) return false;
  Use(*this, upsert_, action).bind(replacement).run();
  transaction.commit();
  return true;
}

std::optional<Session> SqliteBackend::touch(std::string_view id, std::int64_t last_seen_at,
                                            std::int64_t expires_at) {
  const std::lock_guard<std::mutex> lock(mutex_);
  return touch_in(id, last_seen_at, expires_at);
}

std::optional<Session> SqliteBackend::touch_in(std::string_view id, std::int64_t last_seen_at,
                                               std::int64_t expires_at) {
  return Use(*this, touch_, "cannot slide a session's expiry in")
      .bind(1, id)
      .bind(2, last_seen_at)
      .bind(3, expires_at)
      .session_row();
}

std::optional<Session> SqliteBackend::update_data(std::string_view id, std::string_view data) {
  const std::lock_guard<std::mutex> lock(mutex_);
  return update_data_in(id, data);
}

std::optional<Session> SqliteBackend::update_data_in(std::string_view id, std::string_view data) {
  return Use(*this, update_data_, "cannot update a session's data in")
      .bind(1, id)
      .bind_blob(2, data)
      .session_row();
}

// Rotation: the rotated-id record, the successor (copied from the stored row, in SQL) and the
// delete of the old row commit together or not at all, so no reader, here or in another
// process, ever sees both tokens valid or neither.
std::optional<Session> SqliteBackend::rotate(std::string_view old_id, std::string_view new_id,
                                             std::int64_t now) {
  detail::check_rotation_ids(old_id, new_id);
  const std::lock_guard<std::mutex> lock(mutex_);
  Transaction transaction(*this, "cannot rotate a session in");
  std::optional<Session> successor = rotate_in(old_id, new_id, now);
  if (successor) transaction.commit();
  return successor;
}

std::optional<Session> SqliteBackend::rotate_in(std::string_view old_id, std::string_view new_id,
                                                std::int64_t now) {
  const char* action = "cannot rotate a session in";
  if (Use(*this, record_rotated_, action).bind(1, old_id).bind(2, new_id).bind(3, now).run() == 0) {
    return std::nullopt;  // no live row `old_id`
  }
  std::optional<Session> successor =
      Use(*this, copy_as_successor_, action).bind(1, old_id).bind(2, new_id).session_row();
  if (successor) Use(*this, delete_by_id_, action).bind(1, old_id).run();
  return successor;
}

// A sign-in is rotate() whose successor takes the user: the checks, the rotated-id record, the
// copy, the delete of the old row and the evictions the user's cap asks for commit together.
std::optional<Authentication> SqliteBackend::authenticate(std::string_view old_id,
                                                          std::string_view new_id,
                                                          std::string_view user_id,
                                                          std::int64_t now,
                                                          std::size_t max_per_user) {
  detail::check_rotation_ids(old_id, new_id);
  detail::check_signing_in_user(user_id);
  const std::lock_guard<std::mutex> lock(mutex_);
  Transaction transaction(*this, "cannot sign a user in to a session in");
  std::optional<Authentication> signed_in =
      authenticate_in(old_id, new_id, user_id, now, max_per_user);
  if (signed_in) transaction.commit();
  return signed_in;
}

std::optional<Authentication> SqliteBackend::authenticate_in(std::string_view old_id,
                                                             std::string_view new_id,
                                                             std::string_view user_id,
                                                             std::int64_t now,
                                                             std::size_t max_per_user) {
  const char* action = "cannot sign a user in to a session in";
  const std::optional<Session> current =
      Use(*this, select_one_, action).bind(1, old_id).session_row();
  if (!current || current->expires_at <= now) return std::nullopt;
  detail::check_may_sign_in(*current, user_id);
  Use(*this, record_rotated_, action).bind(1, old_id).bind(2, new_id).bind(3, now).run();
  std::optional<Session> successor = Use(*this, copy_as_authenticated_, action)
                                         .bind(1, old_id)
                                         .bind(2, new_id)
                                         .bind(3, user_id)
                                         .bind(4, now)
                                         .session_row();
  if (!successor) return std::nullopt;
  Authentication signed_in;
  signed_in.session = *std::move(successor);
  Use(*this, delete_by_id_, action).bind(1, old_id).run();
  if (max_per_user > 0) {
    signed_in.evicted = Use(*this, evict_others_beyond_cap_, action)
                            .bind(1, user_id)
                            .bind(2, signed_in.session.tenant_id)
                            .bind(3, max_per_user - 1)
                            .bind(4, new_id)
                            .removed_rows();
  }
  return signed_in;
}

// Built per call from the fields the query sets (an administrator's listing is rare; a statement
// per combination would be 256 of them). Keyset paging on the primary key: `id > ?` then ORDER BY
// id walks the key's index, whatever else is filtered.
std::vector<Session> SqliteBackend::list_page(const SessionQuery& query, std::int64_t now) {
  detail::check_session_query(query);
  std::string sql = "SELECT " + session_columns() + " FROM _pylon_sessions WHERE expires_at > ?1";
  int next = 2;
  const auto condition = [&sql, &next](bool set, const char* clause) {
    if (set) sql.append(" AND ").append(clause).append(" ?").append(std::to_string(next++));
  };
  condition(!query.after.empty(), "id >");
  condition(query.tenant_id.has_value(), "tenant_id =");
  condition(query.user_id.has_value(), "user_id =");
  condition(query.device.has_value(), "device =");
  condition(query.created_since.has_value(), "created_at >=");
  condition(query.created_before.has_value(), "created_at <");
  condition(query.last_seen_since.has_value(), "last_seen_at >=");
  condition(query.last_seen_before.has_value(), "last_seen_at <");
  sql.append(" ORDER BY id LIMIT ?").append(std::to_string(next));
  const char* action = "cannot list sessions in";
  const std::lock_guard<std::mutex> lock(mutex_);
  const Statement statement = prepare(sql.c_str(), 0, action);
  Use use(*this, statement, action);
  use.bind(1, now);
  int index = 2;
  if (!query.after.empty()) use.bind(index++, std::string_view(query.after));
  for (const std::optional<std::string>* text : {&query.tenant_id, &query.user_id, &query.device}) {
    if (*text) use.bind(index++, std::string_view(**text));
  }
  for (const std::optional<std::int64_t>* time :
       {&query.created_since, &query.created_before, &query.last_seen_since,
        &query.last_seen_before}) {
    if (*time) use.bind(index++, **time);
  }
  use.bind(index, query.limit);
  std::vector<Session> page;
  while (use.next_row()) read_session_row(use.get(), page.emplace_back());
  return page;
}

std::vector<TenantCount> SqliteBackend::count_by_tenant(std::int64_t now) {
  const std::lock_guard<std::mutex> lock(mutex_);
  Use use(*this, count_by_tenant_, "cannot count sessions in");
  use.bind(1, now);
  std::vector<TenantCount> counts;
  while (use.next_row()) {
    TenantCount& count = counts.emplace_back();
    assign_column_optional_text(use.get(), 0, count.tenant_id);
    count.sessions = static_cast<std::size_t>(sqlite3_column_int64(use.get(), 1));
    count.anonymous = static_cast<std::size_t>(sqlite3_column_int64(use.get(), 2));
  }
  return counts;
}

// One DELETE per combination of set fields, so every one is a plain indexed equality (an
// `?1 IS NULL OR user_id = ?1` form would keep SQLite from using the indexes).
std::vector<RemovedSession> SqliteBackend::remove_matching(const SessionFilter& filter) {
  const std::lock_guard<std::mutex> lock(mutex_);
  return remove_matching_in(filter);
}

std::vector<RemovedSession> SqliteBackend::remove_matching_in(const SessionFilter& filter) {
  detail::check_removal_filter(filter);
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
  Use use(*this, statement, "cannot delete sessions from");
  int index = 1;
  for (const auto& field : fields) {
    if (field.first->has_value()) use.bind(index++, std::string_view(**field.first));
  }
  return use.removed_rows();
}

// One statement is atomic on its own (an error backs out its changes and leaves the transaction
// open): only a write of several statements needs a savepoint in a group.
bool needs_savepoint(const SessionWrite& write) {
  if (const auto* create = std::get_if<InsertNewWrite>(&write)) {
    return create->sessions.size() > 1 || create->max_per_user > 0;
  }
  return std::holds_alternative<RotateWrite>(write) ||
         std::holds_alternative<AuthenticateWrite>(write);
}

// A rotation or sign-in that found no live row may have recorded its old id: it is undone.
bool found_nothing(const SessionWrite& write, const SessionWriteOutcome& outcome) {
  return (std::holds_alternative<RotateWrite>(write) ||
          std::holds_alternative<AuthenticateWrite>(write)) &&
         !outcome.session;
}

// The checks each write's own call makes before it writes anything.
void check_group_write(const SessionWrite& write) {
  std::visit(
      [](const auto& arguments) {
        using Write = std::decay_t<decltype(arguments)>;
        if constexpr (std::is_same_v<Write, InsertNewWrite>) {
          for (const Session& session : arguments.sessions) check_sqlite_storable(session);
        } else if constexpr (std::is_same_v<Write, RotateWrite>) {
          detail::check_rotation_ids(arguments.old_id, arguments.new_id);
        } else if constexpr (std::is_same_v<Write, AuthenticateWrite>) {
          detail::check_rotation_ids(arguments.old_id, arguments.new_id);
          detail::check_signing_in_user(arguments.user_id);
        }
      },
      write);
}

// A group of one single-statement write is that statement alone, committed as it ends; any other
// group is one BEGIN IMMEDIATE ... COMMIT, each write of several statements in a savepoint of its
// own. The change-log positions the group's triggers wrote (on_row_changed()) are recorded, once
// committed, as this backend's own, for its change source to skip: the store applies each
// outcome itself.
std::vector<SessionWriteOutcome> SqliteBackend::write_group(std::vector<SessionWrite> writes) {
  const char* action = "cannot commit a group of writes to";
  std::vector<SessionWriteOutcome> outcomes;
  outcomes.reserve(writes.size());
  const std::lock_guard<std::mutex> lock(mutex_);
  const PositionCollection collecting(*this);
  if (writes.size() == 1) {
    // Alone, a write needs no savepoint: its failure (thrown) fails the group, and a rotation that
    // found nothing rolls its transaction back.
    const SessionWrite& write = writes.front();
    check_group_write(write);
    if (!needs_savepoint(write)) {
      outcomes.push_back(write_in(write));
    } else {
      Transaction transaction(*this, action);
      outcomes.push_back(write_in(write));
      if (found_nothing(write, outcomes.back())) {
        logged_positions_.clear();
      } else {
        transaction.commit();
      }
    }
  } else {
    Transaction transaction(*this, action);
    for (const SessionWrite& write : writes) outcomes.push_back(write_in_group(write));
    transaction.commit();
  }
  for (const std::int64_t position : logged_positions_) {
    own_changes_->record(position, position);
  }
  return outcomes;
}

// The checks come first (they throw before anything is written); a write of several statements
// that finds nothing to change, or throws, is rolled back to its savepoint (a single statement
// backs itself out). An error that ended the whole transaction is rethrown: the group fails.
SessionWriteOutcome SqliteBackend::write_in_group(const SessionWrite& write) {
  SessionWriteOutcome outcome;
  // What this write logged is forgotten when it is undone: those positions will be handed out
  // again, to whoever writes next.
  const std::size_t logged_before = logged_positions_.size();
  bool kept = false;
  try {
    check_group_write(write);
    std::optional<Savepoint> savepoint;
    if (needs_savepoint(write)) savepoint.emplace(*this, "cannot commit a group of writes to");
    outcome = write_in(write);
    kept = !found_nothing(write, outcome);
    if (savepoint && kept) savepoint->release();
  } catch (const Error&) {
    if (sqlite3_get_autocommit(db_.get()) != 0) throw;  // the transaction is gone: all fail
    outcome = SessionWriteOutcome();
    outcome.error = std::current_exception();
  }
  if (!kept) logged_positions_.resize(logged_before);
  return outcome;
}

SessionWriteOutcome SqliteBackend::write_in(const SessionWrite& write) {
  SessionWriteOutcome outcome;
  std::visit(
      [this, &outcome](const auto& arguments) {
        using Write = std::decay_t<decltype(arguments)>;
        if constexpr (std::is_same_v<Write, InsertNewWrite>) {
          outcome.removed = insert_new_in(arguments.sessions, arguments.max_per_user);
        } else if constexpr (std::is_same_v<Write, TouchWrite>) {
          outcome.session = touch_in(arguments.id, arguments.last_seen_at, arguments.expires_at);
        } else if constexpr (std::is_same_v<Write, UpdateDataWrite>) {
          outcome.session = update_data_in(arguments.id, arguments.data);
        } else if constexpr (std::is_same_v<Write, RotateWrite>) {
          outcome.session = rotate_in(arguments.old_id, arguments.new_id, arguments.now);
        } else if constexpr (std::is_same_v<Write, AuthenticateWrite>) {
          std::optional<Authentication> signed_in =
              authenticate_in(arguments.old_id, arguments.new_id, arguments.user_id, arguments.now,
                              arguments.max_per_user);
          if (signed_in) {
            outcome.session = std::move(signed_in->session);
            outcome.removed = std::move(signed_in->evicted);
          }
        } else {
          static_assert(std::is_same_v<Write, RemoveMatchingWrite>);
          outcome.removed = remove_matching_in(arguments.filter);
        }
      },
      write);
  return outcome;
}

bool SqliteBackend::remove(std::string_view id) {
  const std::lock_guard<std::mutex> lock(mutex_);
  return Use(*this, delete_by_id_, "cannot delete a session from").bind(1, id).run() > 0;
}

std::size_t SqliteBackend::remove_user(std::string_view user_id) {
  const std::lock_guard<std::mutex> lock(mutex_);
  return Use(*this, delete_by_user_, "cannot delete a user's sessions from").bind(1, user_id).run();
}

std::size_t SqliteBackend::remove_expired(std::int64_t now) {
  const char* action = "cannot delete expired sessions from";
  const std::lock_guard<std::mutex> lock(mutex_);
  Transaction transaction(*this, action);
  const std::size_t removed = Use(*this, delete_expired_, action).bind(1, now).run();
  Use(*this, delete_expired_rotated_, action).bind(1, now).run();
  transaction.commit();
  return removed;
}

std::size_t SqliteBackend::remove_expired_batch(std::int64_t now, std::size_t limit) {
  const std::lock_guard<std::mutex> lock(mutex_);
  return Use(*this, delete_expired_batch_, "cannot delete expired sessions from")
      .bind(1, now)
      .bind(2, limit)
      .run();
}

void SqliteBackend::load_rotated_each(const std::function<void(const RotatedId&)>& visit) {
  const std::lock_guard<std::mutex> lock(mutex_);
  Use query(*this, select_rotated_, "cannot load rotated session ids from");
  RotatedId rotated;
  while (query.next_row()) {
    read_rotated_row(query.get(), rotated);
    visit(rotated);
  }
}

// ------------------------------------------------------------------------------------------------
// The change log
// ------------------------------------------------------------------------------------------------

std::int64_t SqliteBackend::data_version() {
  const std::lock_guard<std::mutex> lock(mutex_);
  Use query(*this, data_version_, "cannot read the data version of");
  return query.next_row() ? sqlite3_column_int64(query.get(), 0) : 0;
}

std::int64_t SqliteBackend::change_position() {
  const std::lock_guard<std::mutex> lock(mutex_);
  Use query(*this, change_position_, "cannot read the change log of");
  return query.next_row() ? sqlite3_column_int64(query.get(), 0) : 0;
}

// The entries first, pruned_through after: a prune that removed entries before the first read
// has recorded it by the second. The positions after `after` are listed first, without their
// rows: those `own` holds are skipped (their store applied them), and the rows of the others are
// read run by run, so a store writing alone reads back nothing but positions.
ChangeBatch SqliteBackend::read_changes(std::int64_t after, const std::vector<std::int64_t>& also,
                                        std::size_t limit, detail::OwnChanges& own) {
  const char* action = "cannot read the change log of";
  own.forget_through(after);
  const std::lock_guard<std::mutex> lock(mutex_);
  ChangeBatch batch;
  for (const std::int64_t position : also) {
    Use query(*this, change_at_, action);
    query.bind(1, position);
    while (query.next_row()) batch.changes.push_back(read_change_row(query.get()));
  }
  std::vector<std::int64_t> positions;
  {
    Use query(*this, positions_after_, action);
    query.bind(1, after).bind(2, limit);
    while (query.next_row()) positions.push_back(sqlite3_column_int64(query.get(), 0));
  }
  for (std::size_t first = 0; first < positions.size();) {
    if (own.contains(positions[first])) {
      batch.skipped_through = positions[first++];
      continue;
    }
    std::size_t last = first;
    while (last + 1 < positions.size() && !own.contains(positions[last + 1])) ++last;
    Use query(*this, changes_between_, action);
    query.bind(1, positions[first]).bind(2, positions[last]);
    while (query.next_row()) batch.changes.push_back(read_change_row(query.get()));
    first = last + 1;
  }
  Use query(*this, pruned_through_, action);
  batch.pruned_through = query.next_row() ? sqlite3_column_int64(query.get(), 0) : 0;
  return batch;
}

std::size_t SqliteBackend::prune_changes(std::chrono::seconds keep) {
  const char* action = "cannot prune the change log of";
  const std::lock_guard<std::mutex> lock(mutex_);
  const auto keep_seconds = static_cast<std::int64_t>(keep.count());
  {
    // Asked first: nothing to prune costs a read, not a write transaction.
    Use query(*this, has_prunable_, action);
    if (!query.bind(1, keep_seconds).next_row() || sqlite3_column_int(query.get(), 0) == 0) {
      return 0;
    }
  }
  Transaction transaction(*this, action);
  Use(*this, record_pruned_, action).bind(1, keep_seconds).run();
  const std::size_t pruned = Use(*this, delete_pruned_, action).run();
  transaction.commit();
  return pruned;
}

// SQLite cannot notify: wait() sleeps, then asks whether another connection committed since it
// last asked (PRAGMA data_version, which changes on every commit of another connection, this
// process's own backend included). The log itself is read through a backend of its own, so a
// read never waits behind the store's writes for the backend's lock.
class SqliteChangeSource final : public ChangeSource {
 public:
  SqliteChangeSource(std::unique_ptr<SqliteBackend> backend,
                     std::shared_ptr<detail::OwnChanges> own_changes)
      : backend_(std::move(backend)),
        own_changes_(std::move(own_changes)),
        seen_version_(backend_->data_version()) {}

  std::int64_t position() override { return backend_->change_position(); }
  ChangeBatch read(std::int64_t after, const std::vector<std::int64_t>& also,
                   std::size_t limit) override {
    return backend_->read_changes(after, also, limit, *own_changes_);
  }
  bool wait(std::chrono::milliseconds timeout) override {
    if (timeout.count() > 0) std::this_thread::sleep_for(timeout);
    const std::int64_t current = backend_->data_version();
    const bool changed = current != seen_version_;
    seen_version_ = current;
    return changed;
  }
  std::size_t prune(std::chrono::seconds keep) override { return backend_->prune_changes(keep); }

 private:
  std::unique_ptr<SqliteBackend> backend_;
  std::shared_ptr<detail::OwnChanges> own_changes_;  // the writing backend's
  std::int64_t seen_version_;
};

// An in-memory database is private to its connection: no one else can write it.
std::unique_ptr<ChangeSource> SqliteBackend::open_change_source() {
  if (path_ == ":memory:") return nullptr;
  return std::make_unique<SqliteChangeSource>(std::make_unique<SqliteBackend>(path_, options_),
                                              own_changes_);
}

std::size_t SqliteBackend::remove_expired_rotated(std::int64_t now, std::size_t limit) {
  const std::lock_guard<std::mutex> lock(mutex_);
  return Use(*this, delete_expired_rotated_batch_, "cannot delete expired rotated session ids from")
      .bind(1, now)
      .bind(2, limit)
      .run();
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

// sessionctl: read-only access to a database, and the copy ledger. See ctl_storage.hpp.
#include "ctl_storage.hpp"

#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ctl_output.hpp"
#include "session_backend.hpp"
#include "sessionctl_migrations.inc"  // generated: SESSIONCTL_*_MIGRATIONS

#ifdef SESSIONCTL_WITH_POSTGRES
#include <libpq-fe.h>
#endif

namespace sessionctl {

namespace {

constexpr const char* kSessionTable = "_pylon_sessions";
constexpr const char* kRotatedTable = "_pylon_rotated_ids";

// The migrations of this build, from migrations/<dialect>/NNNN_name.sql (tools/CMakeLists.txt
// lists them at configure time).
const std::vector<MigrationInfo>& sqlite_migrations() {
  static const std::vector<MigrationInfo> kMigrations = {SESSIONCTL_SQLITE_MIGRATIONS};
  return kMigrations;
}
const std::vector<MigrationInfo>& postgres_migrations() {
  static const std::vector<MigrationInfo> kMigrations = {SESSIONCTL_POSTGRES_MIGRATIONS};
  return kMigrations;
}

// Where the ':' that ends a leading URL scheme (RFC 3986) is, or npos for a bare path.
std::size_t scheme_end(std::string_view text) {
  if (text.empty() || std::isalpha(static_cast<unsigned char>(text[0])) == 0) {
    return std::string::npos;
  }
  for (std::size_t i = 1; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == ':') return i;
    if (std::isalnum(c) == 0 && c != '+' && c != '-' && c != '.') return std::string::npos;
  }
  return std::string::npos;
}

int latest_version(bool postgres) {
  const std::vector<MigrationInfo>& all = known_migrations(postgres);
  return all.empty() ? 0 : all.back().version;
}

// The condition a row must meet for SessionStore to serve it (internal/backend_shared.hpp's
// is_servable_session), in SQL: `check` counts the rows that fail it. An empty user_id is an
// anonymous session, servable since migration 0005; `with_authentication`: the database has that
// migration's columns, which must be in range too (a NULL idle_timeout_seconds is the store's).
std::string unservable_condition(bool postgres, bool with_authentication) {
  std::string condition =
      std::string("length(id) != 64 OR ") +
      (postgres ? "id ~ '[^0-9a-f]'" : "id GLOB '*[^0-9a-f]*'") +
      " OR created_at < 0 OR "
      "created_at > 253402300799 OR last_seen_at < 0 OR last_seen_at > 253402300799 OR "
      "expires_at < 0 OR expires_at > 253402300799 OR absolute_expires_at < 0 OR "
      "absolute_expires_at > 253402300799 OR created_at > last_seen_at OR "
      "(absolute_expires_at != 0 AND expires_at > absolute_expires_at)";
  if (with_authentication) {
    condition +=
        " OR authenticated_at < 0 OR authenticated_at > 253402300799 OR "
        "idle_timeout_seconds < 0 OR idle_timeout_seconds > 253402300799";
  }
  return condition;
}

// The columns Session has since migration 0005, or, in a database without them, what that
// migration would put there (created_at for a user's session, 0 for an anonymous one; NULL: the
// store's idle timeout), so that `copy` and `export` of an older database carry the same values.
const char* authentication_columns(bool present) {
  return present ? "authenticated_at, idle_timeout_seconds"
                 : "CASE WHEN user_id <> '' THEN created_at ELSE 0 END, NULL";
}

// ------------------------------------------------------------------------------------------------
// SQLite
// ------------------------------------------------------------------------------------------------

struct CloseDb {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
struct FinalizeStmt {
  void operator()(sqlite3_stmt* statement) const noexcept { sqlite3_finalize(statement); }
};
using Stmt = std::unique_ptr<sqlite3_stmt, FinalizeStmt>;

// A path as the path part of an SQLite "file:" URI: '%', '?', '#' and bytes outside printable
// ASCII percent-encoded.
std::string uri_path(std::string_view path) {
  constexpr std::string_view kHex = "0123456789ABCDEF";
  std::string out;
  for (const char c : path) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '%' || c == '?' || c == '#' || byte <= 0x20 || byte >= 0x7f) {
      out += '%';
      out += kHex[byte >> 4U];
      out += kHex[byte & 0xfU];
    } else {
      out += c;
    }
  }
  return out;
}

std::string column_text(sqlite3_stmt* statement, int column) {
  const auto* text = sqlite3_column_text(statement, column);
  if (text == nullptr) return {};
  return {reinterpret_cast<const char*>(text),  // NOLINT(*-reinterpret-cast): SQLite's bytes
          static_cast<std::size_t>(sqlite3_column_bytes(statement, column))};
}

std::optional<std::string> column_optional_text(sqlite3_stmt* statement, int column) {
  if (sqlite3_column_type(statement, column) == SQLITE_NULL) return std::nullopt;
  return column_text(statement, column);
}

std::string column_blob(sqlite3_stmt* statement, int column) {
  const void* blob = sqlite3_column_blob(statement, column);
  if (blob == nullptr) return {};
  return {static_cast<const char*>(blob),
          static_cast<std::size_t>(sqlite3_column_bytes(statement, column))};
}

// An SQLite connection with messages that name the file.
class SqliteConnection {
 public:
  // Opens an existing file; read-only unless `writable`. Never creates a file.
  SqliteConnection(const std::string& path, bool writable) : shown_(pylon::redact_url(path)) {
    std::error_code ec;
    std::string absolute = std::filesystem::absolute(path, ec).string();
    if (ec) absolute = path;
    const std::string base = "file:" + uri_path(absolute);
    open(base + (writable ? "?mode=rw" : "?mode=ro"),
         writable ? SQLITE_OPEN_READWRITE : SQLITE_OPEN_READONLY);
    if (writable) return;
    // A read-only open of a WAL database needs its -shm file, which it creates when it can. In
    // a directory nobody may write, it cannot: then the file is read as immutable, which is
    // exact when no -wal file holds changes (an application that closed cleanly leaves none).
    const int probe =
        sqlite3_exec(db_.get(), "SELECT count(*) FROM sqlite_schema", nullptr, nullptr, nullptr);
    if (probe == SQLITE_OK) return;
    struct stat wal {};
    const bool wal_has_changes = ::stat((absolute + "-wal").c_str(), &wal) == 0 && wal.st_size > 0;
    const int primary = probe & 0xff;
    if ((primary == SQLITE_CANTOPEN || primary == SQLITE_READONLY) && !wal_has_changes) {
      open(base + "?mode=ro&immutable=1", SQLITE_OPEN_READONLY);
      if (sqlite3_exec(db_.get(), "SELECT count(*) FROM sqlite_schema", nullptr, nullptr,
                       nullptr) == SQLITE_OK) {
        return;
      }
    }
    fail("cannot read");
  }

  [[nodiscard]] sqlite3* get() const { return db_.get(); }
  [[nodiscard]] const std::string& shown() const { return shown_; }

  [[noreturn]] void fail(const std::string& action) const {
    const int code = sqlite3_errcode(db_.get());
    std::string message = action + " " + shown_ + ": " + sqlite3_errmsg(db_.get());
    if (code == SQLITE_NOTADB || code == SQLITE_CORRUPT) {
      message += " (not an SQLite database, or a damaged one)";
    }
    throw Failure(kExitStorage, message);
  }

  Stmt prepare(const char* sql) const {
    sqlite3_stmt* raw = nullptr;
    const int result = sqlite3_prepare_v2(db_.get(), sql, -1, &raw, nullptr);
    Stmt statement(raw);
    if (result != SQLITE_OK) fail("cannot read");
    return statement;
  }

  void exec(const char* sql, const char* action) const {
    if (sqlite3_exec(db_.get(), sql, nullptr, nullptr, nullptr) != SQLITE_OK) fail(action);
  }

  void bind(sqlite3_stmt* statement, int index, std::string_view text) const {
    if (sqlite3_bind_text(statement, index, text.data(), static_cast<int>(text.size()),
                          SQLITE_TRANSIENT) != SQLITE_OK) {  // NOLINT: SQLite's own macro
      fail("cannot read");
    }
  }
  void bind(sqlite3_stmt* statement, int index, std::int64_t value) const {
    if (sqlite3_bind_int64(statement, index, value) != SQLITE_OK) fail("cannot read");
  }

  // Steps to the next row: true on a row, false at the end.
  bool step(sqlite3_stmt* statement, const char* action = "cannot read") const {
    const int result = sqlite3_step(statement);
    if (result == SQLITE_ROW) return true;
    if (result == SQLITE_DONE) return false;
    fail(action);
  }

  bool table_exists(const char* name) const {
    const Stmt query = prepare("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1");
    bind(query.get(), 1, std::string_view(name));
    return step(query.get());
  }

  bool column_exists(const char* table, const char* column) const {
    const Stmt query = prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2");
    bind(query.get(), 1, std::string_view(table));
    bind(query.get(), 2, std::string_view(column));
    return step(query.get());
  }

  int schema_version() const {
    if (!table_exists("_pylon_schema_migrations")) return 0;
    const Stmt query = prepare("SELECT coalesce(max(version), 0) FROM _pylon_schema_migrations");
    if (!step(query.get())) return 0;
    return static_cast<int>(
        std::clamp<sqlite3_int64>(sqlite3_column_int64(query.get(), 0), 0, INT_MAX));
  }

  // One text value of the first row of `sql`, or "".
  std::string scalar_text(const char* sql) const {
    const Stmt query = prepare(sql);
    return step(query.get()) ? column_text(query.get(), 0) : std::string();
  }

 private:
  void open(const std::string& uri, int mode) {
    sqlite3* raw = nullptr;
    const int result = sqlite3_open_v2(uri.c_str(), &raw, mode | SQLITE_OPEN_URI, nullptr);
    db_.reset(raw);
    if (result != SQLITE_OK) fail("cannot open");
    sqlite3_busy_timeout(db_.get(), 5000);
  }

  std::string shown_;
  std::unique_ptr<sqlite3, CloseDb> db_;
};

// "name TYPE NOT NULL PK" of each column, then "index NAME (columns) [partial]" of each index, of
// the tables of ours: what `check` compares with a database the library has just created.
std::vector<std::string> sqlite_shape(const SqliteConnection& db) {
  std::vector<std::string> shape;
  for (const char* table : {kSessionTable, kRotatedTable}) {
    Stmt columns = db.prepare(
        "SELECT name, upper(type), \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid");
    db.bind(columns.get(), 1, std::string_view(table));
    while (db.step(columns.get())) {
      shape.push_back(std::string(table) + "." + column_text(columns.get(), 0) + " " +
                      column_text(columns.get(), 1) +
                      (sqlite3_column_int(columns.get(), 2) != 0 ? " NOT NULL" : "") +
                      (sqlite3_column_int(columns.get(), 3) != 0 ? " PRIMARY KEY" : ""));
    }
    Stmt indexes = db.prepare(
        "SELECT list.name, group_concat(info.name, ', '), list.partial "
        "FROM pragma_index_list(?1) AS list, pragma_index_info(list.name) AS info "
        "WHERE list.origin = 'c' GROUP BY list.name ORDER BY list.name");
    db.bind(indexes.get(), 1, std::string_view(table));
    while (db.step(indexes.get())) {
      shape.push_back(std::string(table) + " index " + column_text(indexes.get(), 0) + " (" +
                      column_text(indexes.get(), 1) + ")" +
                      (sqlite3_column_int(indexes.get(), 2) != 0 ? " partial" : ""));
    }
  }
  std::sort(shape.begin(), shape.end());
  return shape;
}

// The shape of a database this build of the library has just created and migrated, in a
// temporary directory that is removed again.
std::vector<std::string> reference_sqlite_shape() {
  std::string pattern =
      (std::filesystem::temp_directory_path() / "sessionctl-check.XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    throw Failure(kExitStorage,
                  "cannot make a temporary directory: " +
                      std::string(std::strerror(errno)));  // NOLINT(concurrency-mt-unsafe)
  }
  const std::filesystem::path directory = pattern;
  std::vector<std::string> shape;
  try {
    const std::string path = (directory / "reference.db").string();
    pylon::open_sqlite_backend(path).reset();
    const SqliteConnection db(path, false);
    shape = sqlite_shape(db);
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove_all(directory, ignored);
    throw;
  }
  std::error_code ignored;
  std::filesystem::remove_all(directory, ignored);
  return shape;
}

// What differs between two sorted shapes, as "missing X" / "unexpected Y".
std::string shape_difference(const std::vector<std::string>& expected,
                             const std::vector<std::string>& actual) {
  std::vector<std::string> missing;
  std::vector<std::string> unexpected;
  std::set_difference(expected.begin(), expected.end(), actual.begin(), actual.end(),
                      std::back_inserter(missing));
  std::set_difference(actual.begin(), actual.end(), expected.begin(), expected.end(),
                      std::back_inserter(unexpected));
  std::string text;
  for (const std::string& item : missing) text += (text.empty() ? "" : "; ") + ("missing " + item);
  for (const std::string& item : unexpected) {
    text += (text.empty() ? "" : "; ") + ("unexpected " + item);
  }
  return text;
}

std::string octal_mode(mode_t mode) {
  constexpr std::string_view kDigits = "01234567";
  std::string text;
  text += kDigits[(mode >> 6U) & 7U];
  text += kDigits[(mode >> 3U) & 7U];
  text += kDigits[mode & 7U];
  return text;
}

std::string version_problem(int version, bool postgres) {
  if (version > latest_version(postgres)) {
    return "schema version " + std::to_string(version) + " is newer than this sessionctl knows (" +
           std::to_string(latest_version(postgres)) +
           "); use the sessionctl of the pylon-sessions that migrated it";
  }
  return {};
}

class SqliteInspector final : public Inspector {
 public:
  explicit SqliteInspector(const Target& target)
      : path_(target.sqlite_path),
        db_(target.sqlite_path, false),
        has_sessions_(db_.table_exists(kSessionTable)),
        has_rotated_(db_.table_exists(kRotatedTable)),
        has_idp_(has_sessions_ && db_.column_exists(kSessionTable, "idp_session_id")),
        has_authentication_(has_sessions_ && db_.column_exists(kSessionTable, "authenticated_at")),
        version_(db_.schema_version()) {}

  [[nodiscard]] std::string describe() const override { return db_.shown(); }
  int schema_version() override { return version_; }

  void each_session(const ListFilter& filter,
                    const std::function<bool(const pylon::Session&)>& visit) override {
    require_table();
    std::string sql = select_columns() + " WHERE 1 = 1";
    if (!filter.include_expired) sql += " AND expires_at > ?1";
    if (filter.user_id) sql += " AND user_id = ?2";
    if (filter.tenant_id) sql += " AND tenant_id = ?3";
    sql += " ORDER BY created_at, id";
    if (filter.limit) sql += " LIMIT ?4";
    const Stmt query = db_.prepare(sql.c_str());
    if (!filter.include_expired) db_.bind(query.get(), 1, filter.now);
    if (filter.user_id) db_.bind(query.get(), 2, *filter.user_id);
    if (filter.tenant_id) db_.bind(query.get(), 3, *filter.tenant_id);
    if (filter.limit) {
      db_.bind(query.get(), 4,
               static_cast<std::int64_t>(std::min<std::size_t>(*filter.limit, INT64_MAX)));
    }
    pylon::Session session;
    while (db_.step(query.get())) {
      read(query.get(), session);
      if (!visit(session)) break;
    }
  }

  std::vector<pylon::Session> sessions_by_prefix(std::string_view prefix) override {
    require_table();
    const Stmt query =
        db_.prepare((select_columns() + " WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT 2").c_str());
    db_.bind(query.get(), 1, prefix);
    db_.bind(query.get(), 2, std::string(prefix) + "g");  // past every hex digit
    std::vector<pylon::Session> found;
    while (db_.step(query.get())) read(query.get(), found.emplace_back());
    return found;
  }

  std::optional<pylon::RotatedId> rotated(std::string_view id) override {
    if (!has_rotated_) return std::nullopt;
    const Stmt query = db_.prepare(
        "SELECT id, replaced_by, user_id, tenant_id, rotated_at, expires_at FROM "
        "_pylon_rotated_ids WHERE id = ?1");
    db_.bind(query.get(), 1, id);
    if (!db_.step(query.get())) return std::nullopt;
    pylon::RotatedId found;
    found.id = column_text(query.get(), 0);
    found.replaced_by = column_text(query.get(), 1);
    found.user_id = column_text(query.get(), 2);
    found.tenant_id = column_optional_text(query.get(), 3);
    found.rotated_at = sqlite3_column_int64(query.get(), 4);
    found.expires_at = sqlite3_column_int64(query.get(), 5);
    return found;
  }

  Counts counts(std::int64_t now) override {
    require_table();
    const Stmt query = db_.prepare(
        "SELECT coalesce(sum(expires_at > ?1), 0), coalesce(sum(expires_at <= ?1), 0), "
        "count(DISTINCT CASE WHEN expires_at > ?1 AND user_id <> '' THEN user_id END), "
        "count(DISTINCT CASE WHEN expires_at > ?1 THEN tenant_id END), "
        "coalesce(sum(expires_at > ?1 AND user_id = ''), 0) FROM _pylon_sessions");
    db_.bind(query.get(), 1, now);
    Counts counts;
    if (db_.step(query.get())) {
      counts.live = static_cast<std::uint64_t>(sqlite3_column_int64(query.get(), 0));
      counts.expired = static_cast<std::uint64_t>(sqlite3_column_int64(query.get(), 1));
      counts.users = static_cast<std::uint64_t>(sqlite3_column_int64(query.get(), 2));
      counts.tenants = static_cast<std::uint64_t>(sqlite3_column_int64(query.get(), 3));
      counts.anonymous = static_cast<std::uint64_t>(sqlite3_column_int64(query.get(), 4));
    }
    if (has_rotated_) {
      const Stmt count = db_.prepare("SELECT count(*) FROM _pylon_rotated_ids");
      if (db_.step(count.get())) {
        counts.rotated = static_cast<std::uint64_t>(sqlite3_column_int64(count.get(), 0));
      }
    }
    return counts;
  }

  void check(std::vector<Finding>& out) override {
    check_files(out);
    {
      const Stmt query = db_.prepare("PRAGMA integrity_check(5)");
      std::string said;
      while (db_.step(query.get())) {
        said += (said.empty() ? "" : "; ") + column_text(query.get(), 0);
      }
      out.push_back({"integrity", said == "ok", "PRAGMA integrity_check: " + said});
    }
    const std::string mode = db_.scalar_text("PRAGMA journal_mode");
    out.push_back(
        {"journal mode", mode == "wal",
         mode == "wal" ? "wal" : mode + " (the library uses WAL; its next open switches)"});
    check_version(out, version_, false);
    if (!has_sessions_) {
      out.push_back({"table shape", false,
                     "no _pylon_sessions table: not a pylon-sessions "
                     "database, or no application has opened it yet"});
      return;
    }
    if (version_ == latest_version(false)) {
      const std::string difference = shape_difference(reference_sqlite_shape(), sqlite_shape(db_));
      out.push_back({"table shape", difference.empty(),
                     difference.empty() ? "_pylon_sessions and _pylon_rotated_ids as this "
                                          "build's migrations create them"
                                        : difference});
    }
    const std::string unservable =
        db_.scalar_text(("SELECT count(*) FROM _pylon_sessions WHERE " +
                         unservable_condition(false, has_authentication_))
                            .c_str());
    out.push_back({"rows", unservable == "0",
                   unservable == "0"
                       ? "every row is one the library can serve"
                       : unservable + " rows the library skips at start-up (malformed id, "
                                      "times out of range or order)"});
  }

 private:
  void require_table() const {
    if (!has_sessions_) {
      throw Failure(kExitStorage, "database " + db_.shown() +
                                      " has no _pylon_sessions table: not a pylon-sessions "
                                      "database, or no application has opened it yet");
    }
    if (const std::string problem = version_problem(version_, false); !problem.empty()) {
      throw Failure(kExitStorage, "database " + db_.shown() + ": " + problem);
    }
  }

  [[nodiscard]] std::string select_columns() const {
    return std::string(
               "SELECT id, user_id, tenant_id, created_at, expires_at, last_seen_at, "
               "absolute_expires_at, device, ip, data, ") +
           (has_idp_ ? "idp_session_id" : "NULL") + ", " +
           authentication_columns(has_authentication_) + " FROM _pylon_sessions";
  }

  static void read(sqlite3_stmt* query, pylon::Session& s) {
    s.id = column_text(query, 0);
    s.user_id = column_text(query, 1);
    s.tenant_id = column_optional_text(query, 2);
    s.created_at = sqlite3_column_int64(query, 3);
    s.expires_at = sqlite3_column_int64(query, 4);
    s.last_seen_at = sqlite3_column_int64(query, 5);
    s.absolute_expires_at = sqlite3_column_int64(query, 6);
    s.device = column_optional_text(query, 7);
    s.ip = column_optional_text(query, 8);
    s.data = column_blob(query, 9);
    s.idp_session_id = column_optional_text(query, 10);
    s.authenticated_at = sqlite3_column_int64(query, 11);
    s.idle_timeout_seconds.reset();
    if (sqlite3_column_type(query, 12) != SQLITE_NULL) {
      s.idle_timeout_seconds = sqlite3_column_int64(query, 12);
    }
  }

  static void check_version(std::vector<Finding>& out, int version, bool postgres) {
    const int latest = latest_version(postgres);
    if (version > latest) {
      out.push_back({"schema version", false, version_problem(version, postgres)});
    } else if (version < latest) {
      out.push_back({"schema version", true,
                     std::to_string(version) + " (this build's is " + std::to_string(latest) +
                         "; `sessionctl migrate` or the application's next start migrates it)"});
    } else {
      out.push_back({"schema version", true, std::to_string(version) + " (current)"});
    }
  }

  void check_files(std::vector<Finding>& out) const {
    for (const char* suffix : {"", "-wal", "-shm"}) {
      const std::string file = path_ + suffix;
      struct stat info {};
      if (::stat(file.c_str(), &info) != 0) continue;
      const mode_t mode = info.st_mode & 0777U;
      const bool shared = (mode & 077U) != 0;
      const bool owned = info.st_uid == ::geteuid();
      std::string detail = pylon::redact_url(file) + " mode " + octal_mode(mode);
      if (shared) detail += " (group or others may access it; the library wants 0600: chmod 600)";
      if (!owned) detail += ", owned by uid " + std::to_string(info.st_uid) + ", not by this user";
      out.push_back({"file mode", !shared, detail});
    }
  }

  std::string path_;
  SqliteConnection db_;
  bool has_sessions_ = false;
  bool has_rotated_ = false;
  bool has_idp_ = false;
  bool has_authentication_ = false;
  int version_ = 0;
};

// The copy ledger of an SQLite destination: its own connection to the file the library has
// opened, synchronous=FULL so that an entry is durable before the rows it names are written.
class SqliteLedger final : public CopyLedger {
 public:
  explicit SqliteLedger(const Target& target) : db_(target.sqlite_path, true) {
    db_.exec("PRAGMA synchronous = FULL; PRAGMA cache_size = -32768", "cannot configure");
  }

  std::uint64_t begin(std::int64_t now) override {
    db_.exec(
        "CREATE TABLE IF NOT EXISTS _pylon_copy_runs (run INTEGER PRIMARY KEY, started_at "
        "INTEGER NOT NULL, finished_at INTEGER);"
        "CREATE TABLE IF NOT EXISTS _pylon_copied_ids (id TEXT NOT NULL PRIMARY KEY, run "
        "INTEGER NOT NULL, keep_until INTEGER NOT NULL) WITHOUT ROWID",
        "cannot create the copy ledger in");
    const Stmt purge = db_.prepare("DELETE FROM _pylon_copied_ids WHERE keep_until <= ?1");
    db_.bind(purge.get(), 1, now);
    db_.step(purge.get(), "cannot write the copy ledger in");
    const Stmt start = db_.prepare("INSERT INTO _pylon_copy_runs (started_at) VALUES (?1)");
    db_.bind(start.get(), 1, now);
    db_.step(start.get(), "cannot write the copy ledger in");
    run_ = sqlite3_last_insert_rowid(db_.get());
    const std::string pending =
        "SELECT count(*) FROM _pylon_copied_ids AS l JOIN _pylon_copy_runs AS c ON c.run = "
        "l.run WHERE c.finished_at IS NULL AND c.run != " +
        std::to_string(run_);
    return std::stoull(db_.scalar_text(pending.c_str()));
  }

  std::unordered_map<std::string, DestinationState> lookup(
      const std::vector<std::string>& ids) override {
    const Stmt query = db_.prepare(
        "SELECT j.value, s.id IS NOT NULL, s.last_seen_at, s.data, r.id IS NOT NULL, "
        "CASE WHEN l.id IS NULL THEN -1 WHEN l.run = ?2 OR c.finished_at IS NOT NULL THEN 1 "
        "ELSE 0 END FROM json_each(?1) AS j "
        "LEFT JOIN _pylon_sessions AS s ON s.id = j.value "
        "LEFT JOIN _pylon_rotated_ids AS r ON r.id = j.value "
        "LEFT JOIN _pylon_copied_ids AS l ON l.id = j.value "
        "LEFT JOIN _pylon_copy_runs AS c ON c.run = l.run");
    db_.bind(query.get(), 1, json_array(ids));
    db_.bind(query.get(), 2, run_);
    std::unordered_map<std::string, DestinationState> states;
    while (db_.step(query.get())) {
      DestinationState& state = states[column_text(query.get(), 0)];
      state.present = sqlite3_column_int(query.get(), 1) != 0;
      state.last_seen_at = sqlite3_column_int64(query.get(), 2);
      state.data = column_blob(query.get(), 3);
      state.rotated = sqlite3_column_int(query.get(), 4) != 0;
      state.ledger = sqlite3_column_int(query.get(), 5);
    }
    return states;
  }

  void record(const std::vector<Entry>& entries) override {
    if (entries.empty()) return;
    db_.exec("BEGIN IMMEDIATE", "cannot write the copy ledger in");
    try {
      const Stmt insert = db_.prepare(
          "INSERT INTO _pylon_copied_ids (id, run, keep_until) VALUES (?1, ?2, ?3) "
          "ON CONFLICT (id) DO UPDATE SET run = excluded.run, keep_until = excluded.keep_until");
      for (const Entry& entry : entries) {
        db_.bind(insert.get(), 1, entry.id);
        db_.bind(insert.get(), 2, run_);
        db_.bind(insert.get(), 3, entry.keep_until);
        db_.step(insert.get(), "cannot write the copy ledger in");
        sqlite3_reset(insert.get());
      }
      db_.exec("COMMIT", "cannot write the copy ledger in");
    } catch (...) {
      sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
      throw;
    }
  }

  void forget(const std::vector<std::string>& ids) override {
    if (ids.empty()) return;
    const Stmt remove =
        db_.prepare("DELETE FROM _pylon_copied_ids WHERE id IN (SELECT value FROM json_each(?1))");
    db_.bind(remove.get(), 1, json_array(ids));
    db_.step(remove.get(), "cannot write the copy ledger in");
  }

  void finish(std::int64_t now) override {
    const Stmt done = db_.prepare("UPDATE _pylon_copy_runs SET finished_at = ?1 WHERE run = ?2");
    db_.bind(done.get(), 1, now);
    db_.bind(done.get(), 2, run_);
    db_.step(done.get(), "cannot write the copy ledger in");
  }

 private:
  // Session ids are hex, so they need no escaping inside JSON strings.
  static std::string json_array(const std::vector<std::string>& ids) {
    std::string text = "[";
    for (const std::string& id : ids) {
      if (text.size() > 1) text += ',';
      text += '"';
      text += pylon::is_well_formed_session_id(id) ? id : std::string();
      text += '"';
    }
    return text + "]";
  }

  SqliteConnection db_;
  std::int64_t run_ = 0;
};

// ------------------------------------------------------------------------------------------------
// PostgreSQL
// ------------------------------------------------------------------------------------------------

#ifdef SESSIONCTL_WITH_POSTGRES

struct FinishConn {
  void operator()(PGconn* conn) const noexcept { PQfinish(conn); }
};
struct ClearResult {
  void operator()(PGresult* result) const noexcept { PQclear(result); }
};
using Result = std::unique_ptr<PGresult, ClearResult>;

// The passwords a PostgreSQL URL may hold: the user info's ("//user:PASSWORD@") and any
// "password=" query parameter, raw and as libpq decodes them.
std::vector<std::string> passwords_in(std::string_view url) {
  std::vector<std::string> found;
  const std::size_t scheme = url.find("://");
  if (scheme != std::string_view::npos) {
    const std::size_t at = url.rfind('@');
    const std::size_t colon = url.find(':', scheme + 3);
    if (at != std::string_view::npos && colon != std::string_view::npos && colon < at) {
      found.emplace_back(url.substr(colon + 1, at - colon - 1));
    }
  }
  for (std::size_t at = url.find("password="); at != std::string_view::npos;
       at = url.find("password=", at + 1)) {
    const std::size_t begin = at + 9;
    found.emplace_back(url.substr(begin, url.find_first_of("& ", begin) - begin));
  }
  const std::size_t raw = found.size();
  for (std::size_t i = 0; i < raw; ++i) {
    std::string decoded;
    const std::string& text = found[i];
    for (std::size_t k = 0; k < text.size(); ++k) {
      if (text[k] == '%' && k + 2 < text.size() &&
          std::isxdigit(static_cast<unsigned char>(text[k + 1])) != 0 &&
          std::isxdigit(static_cast<unsigned char>(text[k + 2])) != 0) {
        decoded += static_cast<char>(std::stoi(text.substr(k + 1, 2), nullptr, 16));
        k += 2;
      } else {
        decoded += text[k];
      }
    }
    found.push_back(decoded);
  }
  return found;
}

// One line of libpq's text, every password the URL may hold replaced by "***".
std::string scrubbed(std::string text, const std::string& url) {
  for (char& c : text) {
    if (c == '\n' || c == '\t' || c == '\r') c = ' ';
  }
  while (!text.empty() && text.back() == ' ') text.pop_back();
  for (const std::string& secret : passwords_in(url)) {
    if (secret.empty()) continue;
    for (std::size_t at = text.find(secret); at != std::string::npos;
         at = text.find(secret, at + 3)) {
      text.replace(at, secret.size(), "***");
    }
  }
  return text;
}

std::int64_t to_int64(const char* text) {
  return text == nullptr ? 0 : std::strtoll(text, nullptr, 10);
}

// bytea in PostgreSQL's text output (hex: "\x48656c6c6f").
std::string from_bytea(const char* text) {
  std::string out;
  if (text == nullptr) return out;
  const std::string_view hex(text);
  if (hex.substr(0, 2) != "\\x") {
    std::size_t length = 0;
    unsigned char* raw = PQunescapeBytea(reinterpret_cast<const unsigned char*>(text),  // NOLINT
                                         &length);
    if (raw != nullptr) {
      out.assign(reinterpret_cast<const char*>(raw), length);  // NOLINT(*-reinterpret-cast)
      PQfreemem(raw);
    }
    return out;
  }
  const auto value = [](char c) {
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;  // NOLINT(hicpp-signed-bitwise)
  };
  out.reserve((hex.size() - 2) / 2);
  for (std::size_t i = 2; i + 1 < hex.size(); i += 2) {
    out += static_cast<char>(value(hex[i]) * 16 + value(hex[i + 1]));
  }
  return out;
}

// A libpq connection with messages that name the database, never the password.
class PgConnection {
 public:
  PgConnection(const Target& target, bool read_only) : url_(target.url), shown_(target.shown) {
    const std::array<const char*, 4> keys = {"connect_timeout", "application_name", "dbname",
                                             nullptr};
    const std::array<const char*, 4> values = {"5", "sessionctl", url_.c_str(), nullptr};
    conn_.reset(PQconnectdbParams(keys.data(), values.data(), 1));
    if (conn_ == nullptr || PQstatus(conn_.get()) != CONNECTION_OK) {
      throw Failure(kExitStorage, "cannot connect to " + shown_ + ": " +
                                      scrubbed(PQerrorMessage(conn_.get()), url_));
    }
    PQsetNoticeProcessor(
        conn_.get(), [](void* /*unused*/, const char* /*notice*/) {}, nullptr);
    exec(read_only ? "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"
                   : "SET synchronous_commit TO on");
  }

  [[nodiscard]] const std::string& shown() const { return shown_; }
  [[nodiscard]] PGconn* get() const { return conn_.get(); }

  [[noreturn]] void fail(const std::string& action) const {
    throw Failure(kExitStorage,
                  action + " " + shown_ + ": " + scrubbed(PQerrorMessage(conn_.get()), url_));
  }

  Result exec(const char* sql, const std::vector<std::string>& params = {},
              const char* action = "cannot read") const {
    std::vector<const char*> values;
    values.reserve(params.size());
    for (const std::string& param : params) values.push_back(param.c_str());
    Result result(PQexecParams(conn_.get(), sql, static_cast<int>(values.size()), nullptr,
                               values.data(), nullptr, nullptr, 0));
    const ExecStatusType status = PQresultStatus(result.get());
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) fail(action);
    return result;
  }

  // Streams the rows of `sql` one at a time (libpq's single-row mode).
  void stream(const char* sql, const std::vector<std::string>& params,
              const std::function<bool(const PGresult*)>& visit) const {
    std::vector<const char*> values;
    values.reserve(params.size());
    for (const std::string& param : params) values.push_back(param.c_str());
    if (PQsendQueryParams(conn_.get(), sql, static_cast<int>(values.size()), nullptr, values.data(),
                          nullptr, nullptr, 0) == 0) {
      fail("cannot read");
    }
    PQsetSingleRowMode(conn_.get());
    bool wanted = true;
    std::optional<std::string> error;
    for (Result result(PQgetResult(conn_.get())); result; result.reset(PQgetResult(conn_.get()))) {
      const ExecStatusType status = PQresultStatus(result.get());
      if (status == PGRES_SINGLE_TUPLE) {
        if (wanted) wanted = visit(result.get());
      } else if (status != PGRES_TUPLES_OK && !error) {
        error = scrubbed(PQresultErrorMessage(result.get()), url_);
      }
    }
    if (error) throw Failure(kExitStorage, "cannot read " + shown_ + ": " + *error);
  }

  bool relation_exists(const char* name) const {
    const Result result = exec("SELECT to_regclass($1) IS NOT NULL", {name});
    return std::string_view(PQgetvalue(result.get(), 0, 0)) == "t";
  }

  bool column_exists(const char* table, const char* column) const {
    const Result result = exec(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = $1 AND column_name = $2)",
        {table, column});
    return std::string_view(PQgetvalue(result.get(), 0, 0)) == "t";
  }

  int schema_version() const {
    if (!relation_exists("_pylon_schema_migrations")) return 0;
    const Result result =
        exec("SELECT coalesce(max(version), 0)::bigint FROM _pylon_schema_migrations");
    return static_cast<int>(
        std::clamp<std::int64_t>(to_int64(PQgetvalue(result.get(), 0, 0)), 0, INT_MAX));
  }

 private:
  std::string url_;
  std::string shown_;
  std::unique_ptr<PGconn, FinishConn> conn_;
};

// PostgreSQL's text[] literal of hex ids.
std::string pg_array(const std::vector<std::string>& ids) {
  std::string text = "{";
  for (const std::string& id : ids) {
    if (text.size() > 1) text += ',';
    text += pylon::is_well_formed_session_id(id) ? id : std::string("\"\"");
  }
  return text + "}";
}

class PgInspector final : public Inspector {
 public:
  explicit PgInspector(const Target& target)
      : db_(target, true),
        has_sessions_(db_.relation_exists(kSessionTable)),
        has_rotated_(db_.relation_exists(kRotatedTable)),
        has_authentication_(has_sessions_ && db_.column_exists(kSessionTable, "authenticated_at")),
        version_(db_.schema_version()),
        select_(std::string("SELECT id, user_id, tenant_id, created_at, expires_at, last_seen_at, "
                            "absolute_expires_at, device, ip, data, idp_session_id, ") +
                authentication_columns(has_authentication_) + " FROM _pylon_sessions") {}

  [[nodiscard]] std::string describe() const override { return db_.shown(); }
  int schema_version() override { return version_; }

  void each_session(const ListFilter& filter,
                    const std::function<bool(const pylon::Session&)>& visit) override {
    require_table();
    std::vector<std::string> params;
    std::string sql = select_ + " WHERE true";
    if (!filter.include_expired) {
      params.push_back(std::to_string(filter.now));
      sql += " AND expires_at > $" + std::to_string(params.size());
    }
    if (filter.user_id) {
      params.push_back(*filter.user_id);
      sql += " AND user_id = $" + std::to_string(params.size());
    }
    if (filter.tenant_id) {
      params.push_back(*filter.tenant_id);
      sql += " AND tenant_id = $" + std::to_string(params.size());
    }
    sql += " ORDER BY created_at, id";
    if (filter.limit) sql += " LIMIT " + std::to_string(*filter.limit);
    pylon::Session session;
    db_.stream(sql.c_str(), params, [&](const PGresult* row) {
      read(row, 0, session);
      return visit(session);
    });
  }

  std::vector<pylon::Session> sessions_by_prefix(std::string_view prefix) override {
    require_table();
    const Result result =
        db_.exec((select_ + " WHERE id >= $1 AND id < $2 ORDER BY id LIMIT 2").c_str(),
                 {std::string(prefix), std::string(prefix) + "g"});
    std::vector<pylon::Session> found;
    found.reserve(static_cast<std::size_t>(PQntuples(result.get())));
    for (int row = 0; row < PQntuples(result.get()); ++row) {
      read(result.get(), row, found.emplace_back());
    }
    return found;
  }

  std::optional<pylon::RotatedId> rotated(std::string_view id) override {
    if (!has_rotated_) return std::nullopt;
    const Result result = db_.exec(
        "SELECT id, replaced_by, user_id, tenant_id, rotated_at, expires_at FROM "
        "_pylon_rotated_ids WHERE id = $1",
        {std::string(id)});
    if (PQntuples(result.get()) == 0) return std::nullopt;
    pylon::RotatedId found;
    found.id = PQgetvalue(result.get(), 0, 0);
    found.replaced_by = PQgetvalue(result.get(), 0, 1);
    found.user_id = PQgetvalue(result.get(), 0, 2);
    if (PQgetisnull(result.get(), 0, 3) == 0) found.tenant_id = PQgetvalue(result.get(), 0, 3);
    found.rotated_at = to_int64(PQgetvalue(result.get(), 0, 4));
    found.expires_at = to_int64(PQgetvalue(result.get(), 0, 5));
    return found;
  }

  Counts counts(std::int64_t now) override {
    require_table();
    const Result result = db_.exec(
        "SELECT count(*) FILTER (WHERE expires_at > $1), count(*) FILTER (WHERE expires_at <= $1), "
        "count(DISTINCT user_id) FILTER (WHERE expires_at > $1 AND user_id <> ''), "
        "count(DISTINCT tenant_id) FILTER (WHERE expires_at > $1), "
        "count(*) FILTER (WHERE expires_at > $1 AND user_id = '') FROM _pylon_sessions",
        {std::to_string(now)});
    Counts counts;
    counts.live = static_cast<std::uint64_t>(to_int64(PQgetvalue(result.get(), 0, 0)));
    counts.expired = static_cast<std::uint64_t>(to_int64(PQgetvalue(result.get(), 0, 1)));
    counts.users = static_cast<std::uint64_t>(to_int64(PQgetvalue(result.get(), 0, 2)));
    counts.tenants = static_cast<std::uint64_t>(to_int64(PQgetvalue(result.get(), 0, 3)));
    counts.anonymous = static_cast<std::uint64_t>(to_int64(PQgetvalue(result.get(), 0, 4)));
    if (has_rotated_) {
      const Result count = db_.exec("SELECT count(*) FROM _pylon_rotated_ids");
      counts.rotated = static_cast<std::uint64_t>(to_int64(PQgetvalue(count.get(), 0, 0)));
    }
    return counts;
  }

  void check(std::vector<Finding>& out) override {
    {
      const Result result = db_.exec("SELECT current_setting('server_version')");
      out.push_back({"server", true, std::string("PostgreSQL ") + PQgetvalue(result.get(), 0, 0)});
    }
    const int latest = latest_version(true);
    if (version_ > latest) {
      out.push_back({"schema version", false, version_problem(version_, true)});
    } else {
      out.push_back({"schema version", true,
                     std::to_string(version_) +
                         (version_ == latest ? " (current)"
                                             : " (this build's is " + std::to_string(latest) +
                                                   "; `sessionctl migrate` migrates it)")});
    }
    if (!has_sessions_) {
      out.push_back({"table shape", false, "no _pylon_sessions table"});
      return;
    }
    if (version_ == latest) {
      const std::string difference = shape_difference(expected_shape(), actual_shape());
      out.push_back({"table shape", difference.empty(),
                     difference.empty() ? "_pylon_sessions and _pylon_rotated_ids as this "
                                          "build's migrations create them"
                                        : difference});
    }
    const Result rows = db_.exec(("SELECT count(*) FROM _pylon_sessions WHERE " +
                                  unservable_condition(true, has_authentication_))
                                     .c_str());
    const std::string unservable = PQgetvalue(rows.get(), 0, 0);
    out.push_back({"rows", unservable == "0",
                   unservable == "0" ? "every row is one the library can serve"
                                     : unservable + " rows the library skips at start-up"});
  }

 private:
  void require_table() const {
    if (!has_sessions_) {
      throw Failure(kExitStorage, "database " + db_.shown() +
                                      " has no _pylon_sessions table: not a pylon-sessions "
                                      "database, or no application has opened it yet");
    }
    if (const std::string problem = version_problem(version_, true); !problem.empty()) {
      throw Failure(kExitStorage, "database " + db_.shown() + ": " + problem);
    }
  }

  static void read(const PGresult* result, int row, pylon::Session& s) {
    const auto optional = [&](int column) -> std::optional<std::string> {
      if (PQgetisnull(result, row, column) != 0) return std::nullopt;
      return std::string(PQgetvalue(result, row, column));
    };
    s.id = PQgetvalue(result, row, 0);
    s.user_id = PQgetvalue(result, row, 1);
    s.tenant_id = optional(2);
    s.created_at = to_int64(PQgetvalue(result, row, 3));
    s.expires_at = to_int64(PQgetvalue(result, row, 4));
    s.last_seen_at = to_int64(PQgetvalue(result, row, 5));
    s.absolute_expires_at = to_int64(PQgetvalue(result, row, 6));
    s.device = optional(7);
    s.ip = optional(8);
    s.data = from_bytea(PQgetvalue(result, row, 9));
    s.idp_session_id = optional(10);
    s.authenticated_at = to_int64(PQgetvalue(result, row, 11));
    s.idle_timeout_seconds.reset();
    if (PQgetisnull(result, row, 12) == 0) {
      s.idle_timeout_seconds = to_int64(PQgetvalue(result, row, 12));
    }
  }

  // The columns the migrations make, as "table.column type": SQLite's, with PostgreSQL's types,
  // less SQLite's own expiry_hour (SQLite migration 0006) and plus PostgreSQL's own insert_order.
  static std::vector<std::string> expected_shape() {
    std::vector<std::string> shape;
    for (const std::string& item : reference_sqlite_shape()) {
      if (item.find(" index ") != std::string::npos ||
          item.rfind("_pylon_sessions.expiry_hour ", 0) == 0) {
        continue;
      }
      const std::size_t space = item.find(' ');
      std::string type = item.substr(space + 1, item.find(' ', space + 1) - space - 1);
      type = type == "INTEGER" ? "bigint" : type == "BLOB" ? "bytea" : "text";
      shape.push_back(item.substr(0, space) + " " + type);
    }
    shape.emplace_back("_pylon_sessions.insert_order bigint");
    std::sort(shape.begin(), shape.end());
    return shape;
  }

  [[nodiscard]] std::vector<std::string> actual_shape() const {
    const Result result = db_.exec(
        "SELECT table_name || '.' || column_name || ' ' || data_type FROM "
        "information_schema.columns WHERE table_schema = current_schema() AND table_name IN "
        "('_pylon_sessions', '_pylon_rotated_ids')");
    std::vector<std::string> shape;
    shape.reserve(static_cast<std::size_t>(PQntuples(result.get())));
    for (int row = 0; row < PQntuples(result.get()); ++row) {
      shape.emplace_back(PQgetvalue(result.get(), row, 0));
    }
    std::sort(shape.begin(), shape.end());
    return shape;
  }

  PgConnection db_;
  bool has_sessions_ = false;
  bool has_rotated_ = false;
  bool has_authentication_ = false;
  int version_ = 0;
  std::string select_;  // every column of a session, in read()'s order
};

class PgLedger final : public CopyLedger {
 public:
  explicit PgLedger(const Target& target) : db_(target, false) {}

  std::uint64_t begin(std::int64_t now) override {
    db_.exec(
        "CREATE TABLE IF NOT EXISTS _pylon_copy_runs (run BIGSERIAL PRIMARY KEY, started_at "
        "BIGINT NOT NULL, finished_at BIGINT)",
        {}, "cannot create the copy ledger in");
    db_.exec(
        "CREATE TABLE IF NOT EXISTS _pylon_copied_ids (id TEXT NOT NULL PRIMARY KEY, run BIGINT "
        "NOT NULL, keep_until BIGINT NOT NULL)",
        {}, "cannot create the copy ledger in");
    db_.exec("DELETE FROM _pylon_copied_ids WHERE keep_until <= $1", {std::to_string(now)},
             "cannot write the copy ledger in");
    const Result run =
        db_.exec("INSERT INTO _pylon_copy_runs (started_at) VALUES ($1) RETURNING run",
                 {std::to_string(now)}, "cannot write the copy ledger in");
    run_ = PQgetvalue(run.get(), 0, 0);
    const Result pending = db_.exec(
        "SELECT count(*) FROM _pylon_copied_ids AS l JOIN _pylon_copy_runs AS c ON c.run = l.run "
        "WHERE c.finished_at IS NULL AND c.run != $1",
        {run_});
    return static_cast<std::uint64_t>(to_int64(PQgetvalue(pending.get(), 0, 0)));
  }

  std::unordered_map<std::string, DestinationState> lookup(
      const std::vector<std::string>& ids) override {
    const Result result = db_.exec(
        // Point lookups by primary key for each id: the LIMITs keep the planner from hashing
        // the whole table once per batch.
        "SELECT j.id, s.id IS NOT NULL, s.last_seen_at, s.data, "
        "EXISTS (SELECT 1 FROM _pylon_rotated_ids AS r WHERE r.id = j.id), "
        "coalesce((SELECT CASE WHEN l.run = $2 OR c.finished_at IS NOT NULL THEN 1 ELSE 0 END "
        "FROM _pylon_copied_ids AS l LEFT JOIN _pylon_copy_runs AS c ON c.run = l.run "
        "WHERE l.id = j.id LIMIT 1), -1) "
        "FROM unnest($1::text[]) AS j(id) LEFT JOIN LATERAL (SELECT id, last_seen_at, data FROM "
        "_pylon_sessions WHERE id = j.id LIMIT 1) AS s ON true",
        {pg_array(ids), run_});
    std::unordered_map<std::string, DestinationState> states;
    for (int row = 0; row < PQntuples(result.get()); ++row) {
      DestinationState& state = states[PQgetvalue(result.get(), row, 0)];
      state.present = std::string_view(PQgetvalue(result.get(), row, 1)) == "t";
      state.last_seen_at = to_int64(PQgetvalue(result.get(), row, 2));
      if (state.present) state.data = from_bytea(PQgetvalue(result.get(), row, 3));
      state.rotated = std::string_view(PQgetvalue(result.get(), row, 4)) == "t";
      state.ledger = static_cast<int>(to_int64(PQgetvalue(result.get(), row, 5)));
    }
    return states;
  }

  void record(const std::vector<Entry>& entries) override {
    if (entries.empty()) return;
    std::vector<std::string> ids;
    ids.reserve(entries.size());
    std::string keep = "{";
    for (const Entry& entry : entries) {
      ids.push_back(entry.id);
      keep += (keep.size() > 1 ? "," : "") + std::to_string(entry.keep_until);
    }
    db_.exec(
        "INSERT INTO _pylon_copied_ids (id, run, keep_until) SELECT id, $2, keep FROM "
        "unnest($1::text[], $3::bigint[]) AS e(id, keep) ON CONFLICT (id) DO UPDATE SET run = "
        "excluded.run, keep_until = excluded.keep_until",
        {pg_array(ids), run_, keep + "}"}, "cannot write the copy ledger in");
  }

  void forget(const std::vector<std::string>& ids) override {
    if (ids.empty()) return;
    db_.exec("DELETE FROM _pylon_copied_ids WHERE id = ANY($1::text[])", {pg_array(ids)},
             "cannot write the copy ledger in");
  }

  void finish(std::int64_t now) override {
    db_.exec("UPDATE _pylon_copy_runs SET finished_at = $1 WHERE run = $2",
             {std::to_string(now), run_}, "cannot write the copy ledger in");
  }

 private:
  PgConnection db_;
  std::string run_;
};

#endif  // SESSIONCTL_WITH_POSTGRES

}  // namespace

const std::vector<MigrationInfo>& known_migrations(bool postgres) {
  return postgres ? postgres_migrations() : sqlite_migrations();
}

// The README's DATABASE_URL forms, read as open_backend() reads them; the library's own checks
// of a URL's details (its parameters, an ambiguous user info) apply when it opens one.
Target resolve_target(const std::string& url) {
  constexpr const char* kForms =
      "supported: a bare file path (sessions.db, /var/lib/app/sessions.db), "
      "sqlite://relative/path.db, sqlite:///absolute/path.db, sqlite::memory:, postgres://... or "
      "postgresql://...";
  Target target;
  target.url = url;
  target.shown = pylon::redact_url(url.empty() ? std::string("sessions.db") : url);
  if (url.empty()) {
    target.sqlite_path = "sessions.db";
    return target;
  }
  const std::size_t colon = scheme_end(url);
  if (colon == std::string::npos) {
    if (url == ":memory:") {
      throw Failure(kExitUsage,
                    "':memory:' as a bare path would name a file; write sqlite::memory:");
    }
    target.sqlite_path = url;  // a bare path, taken literally
    return target;
  }
  std::string scheme = url.substr(0, colon);
  for (char& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const std::string rest = url.substr(colon + 1);
  if (scheme == "postgres" || scheme == "postgresql") {
#ifdef SESSIONCTL_WITH_POSTGRES
    target.is_postgres = true;
    return target;
#else
    throw Failure(kExitStorage,
                  "this build has no PostgreSQL support; cannot open " + target.shown);
#endif
  }
  if (scheme == "sqlite") {
    if (rest == ":memory:") {
      target.is_memory = true;
      target.sqlite_path = ":memory:";
      return target;
    }
    if (rest.rfind("//", 0) != 0 || rest.size() == 2 || rest[2] == '?') {
      throw Failure(kExitUsage, "SQLite URL " + target.shown + " has no file path; " + kForms);
    }
    std::string path = rest.substr(
        2, rest.find('?') == std::string::npos ? std::string::npos : rest.find('?') - 2);
    if (path[0] != '/' && scheme_end(path) != std::string::npos) path.insert(0, "./");
    target.sqlite_path = path;
    return target;
  }
  throw Failure(kExitStorage,
                "unknown DATABASE_URL scheme '" + scheme + "' in " + target.shown + "; " + kForms);
}

void require_existing_database(const Target& target) {
  if (target.is_postgres) return;
  if (target.is_memory) {
    throw Failure(kExitStorage,
                  "sqlite::memory: is a new, empty database in each process; there is nothing "
                  "for sessionctl to read or change in it");
  }
  struct stat info {};
  if (::stat(target.sqlite_path.c_str(), &info) != 0) {
    const int error = errno;
    throw Failure(kExitStorage,
                  "no database at " + pylon::redact_url(target.sqlite_path) + ": " +
                      std::strerror(error) +  // NOLINT(concurrency-mt-unsafe): one thread
                      " (sessionctl creates no database here; check the path, --db and "
                      "DATABASE_URL)");
  }
  if (!S_ISREG(info.st_mode)) {
    throw Failure(kExitStorage, pylon::redact_url(target.sqlite_path) + " is not a regular file");
  }
}

std::unique_ptr<Inspector> open_inspector(const Target& target) {
  require_existing_database(target);
#ifdef SESSIONCTL_WITH_POSTGRES
  if (target.is_postgres) return std::make_unique<PgInspector>(target);
#endif
  return std::make_unique<SqliteInspector>(target);
}

std::unique_ptr<CopyLedger> open_copy_ledger(const Target& target) {
#ifdef SESSIONCTL_WITH_POSTGRES
  if (target.is_postgres) return std::make_unique<PgLedger>(target);
#endif
  return std::make_unique<SqliteLedger>(target);
}

}  // namespace sessionctl

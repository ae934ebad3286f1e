// make_seeds: writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/) so that they
// can be regenerated rather than trusted: `scripts/fuzz.sh --seeds` runs it.
//
//   make_seeds <corpus directory>
//
// token_fuzz and url_fuzz get a few strings of each documented form. The db_fuzz seeds are the
// files it must handle: databases the library itself made (empty, with
// sessions), the older shapes it must migrate (schema version 1; pylon's own `_pylon_sessions`,
// with and without tenant_id), files it must refuse (a newer schema, a foreign table, a view, a
// truncated file, not SQLite at all). Every SQLite seed uses 512-byte pages, SQLite's smallest, to
// keep each file to a few KB: the fuzzer mutates every byte it is given, so small is fast.
// Every time and token is fixed, so two runs write the same bytes. Each seed is then opened with
// the library on a scratch copy and the outcome printed, so a seed that stops meaning what its
// name says (say, the library starts refusing schema_v1.db) shows up here.
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "session_backend.hpp"

namespace {

namespace fs = std::filesystem;

constexpr std::int64_t kCreated = 1'699'990'000;    // 2023-11-14, just before db_fuzz's clock
constexpr std::int64_t kFarFuture = 4'102'444'800;  // 2100-01-01: live whenever adopted
constexpr std::int64_t kLongAgo = 1'600'000'000;    // 2020-09-13: expired for every clock

// A token of the right form from a fixed seed byte, so the seeds are reproducible.
std::string fixed_token(char digit) { return "pylon_" + std::string(64, digit); }

// A raw SQLite connection for the files the library would never write itself.
class RawDatabase {
 public:
  explicit RawDatabase(const fs::path& path) {
    sqlite3* handle = nullptr;
    const int result =
        sqlite3_open_v2(path.c_str(), &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
    db_.reset(handle);  // owned before the result is checked: a failed open still allocates
    if (result != SQLITE_OK) throw std::runtime_error("cannot open " + path.string());
  }

  void exec(const std::string& sql) {
    char* message = nullptr;
    if (sqlite3_exec(db_.get(), sql.c_str(), nullptr, nullptr, &message) != SQLITE_OK) {
      const std::string text = message == nullptr ? "unknown error" : message;
      sqlite3_free(message);
      throw std::runtime_error("sqlite: " + text + " in: " + sql);
    }
  }

 private:
  struct Close {
    void operator()(sqlite3* handle) const noexcept { sqlite3_close(handle); }
  };
  std::unique_ptr<sqlite3, Close> db_;
};

// An empty database file with 512-byte pages. The page size of an SQLite file is fixed by its
// first write, so the library, which never sets it, keeps it for every table it then creates.
void create_small_page_file(const fs::path& path) {
  fs::remove(path);
  RawDatabase raw(path);
  raw.exec("PRAGMA page_size = 512; VACUUM;");
}

// The library stamps applied_at with the real time; overwrite it so the bytes are reproducible.
void fix_migration_times(const fs::path& path) {
  RawDatabase raw(path);
  raw.exec("UPDATE _pylon_schema_migrations SET applied_at = " + std::to_string(kCreated));
}

pylon::Session session(char token_digit, const std::string& user) {
  pylon::Session s;
  s.id = pylon::session_id_for_token(fixed_token(token_digit));
  s.user_id = user;
  s.created_at = kCreated;
  s.last_seen_at = kCreated;
  s.expires_at = kFarFuture;
  s.absolute_expires_at = kFarFuture;
  return s;
}

void write_latest(const fs::path& path, bool with_sessions) {
  create_small_page_file(path);
  {
    std::unique_ptr<pylon::SessionBackend> backend = pylon::open_sqlite_backend(path.string());
    if (with_sessions) {
      pylon::Session alice = session('1', "alice");
      alice.tenant_id = "acme";
      alice.device = "Firefox on Linux";
      alice.ip = "203.0.113.7";
      alice.idp_session_id = "idp-sid-1";
      alice.data = std::string("cart\0items", 10);
      backend->save(alice);
      pylon::Session alice_phone = session('2', "alice");
      alice_phone.tenant_id = "acme";
      alice_phone.device = "Safari \xE2\x80\x94 iPhone";
      backend->save(alice_phone);
      backend->save(session('3', "bob"));
      pylon::Session expired = session('4', "carol");
      expired.expires_at = kLongAgo;
      expired.absolute_expires_at = kLongAgo;
      backend->save(expired);
    }
  }
  fix_migration_times(path);
}

// Schema version 1 as it shipped (migrations/sqlite/0001, which never changes): the table
// before 0002 added idp_session_id, recorded as version 1.
void write_schema_v1(const fs::path& path) {
  create_small_page_file(path);
  RawDatabase raw(path);
  raw.exec(
      "CREATE TABLE _pylon_sessions ("
      " id TEXT NOT NULL PRIMARY KEY CHECK (length(id) = 64), user_id TEXT NOT NULL,"
      " tenant_id TEXT, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,"
      " last_seen_at INTEGER NOT NULL, absolute_expires_at INTEGER NOT NULL DEFAULT 0,"
      " device TEXT, ip TEXT, data BLOB NOT NULL DEFAULT x'') STRICT;"
      "CREATE INDEX _pylon_sessions_by_user ON _pylon_sessions (user_id);"
      "CREATE INDEX _pylon_sessions_by_expiry ON _pylon_sessions (expires_at);"
      "CREATE TABLE _pylon_schema_migrations ("
      " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL);"
      "INSERT INTO _pylon_schema_migrations VALUES (1, '0001_create_sessions.sql', " +
      std::to_string(kCreated) + ");");
  for (const char digit : {'5', '6'}) {
    const pylon::Session s = session(digit, digit == '5' ? "dave" : "erin");
    raw.exec(
        "INSERT INTO _pylon_sessions (id, user_id, created_at, expires_at, last_seen_at,"
        " absolute_expires_at, device) VALUES ('" +
        s.id + "', '" + s.user_id + "', " + std::to_string(kCreated) + ", " +
        std::to_string(kFarFuture) + ", " + std::to_string(kCreated) + ", " +
        std::to_string(kFarFuture) + ", 'curl/8.0')");
  }
}

// pylon's runtime table, as tests/migration_test.cpp's write_pylon_database() writes it: raw
// tokens as the key, the older pylon without tenant_id when `with_tenant` is false.
void write_pylon_v0(const fs::path& path, bool with_tenant) {
  create_small_page_file(path);
  RawDatabase raw(path);
  raw.exec(std::string("CREATE TABLE _pylon_sessions (token TEXT PRIMARY KEY, user_id TEXT NOT "
                       "NULL, expires_at INTEGER NOT NULL, created_at INTEGER NOT NULL, device "
                       "TEXT") +
           (with_tenant ? ", tenant_id TEXT)" : ")"));
  raw.exec("CREATE INDEX _pylon_sessions_user_idx ON _pylon_sessions(user_id)");
  raw.exec("CREATE INDEX _pylon_sessions_exp_idx ON _pylon_sessions(expires_at)");
  raw.exec("CREATE TABLE app_notes (id INTEGER PRIMARY KEY, body TEXT)");
  raw.exec("INSERT INTO app_notes (body) VALUES ('kept')");
  const std::string tenant = with_tenant ? ", 'acme'" : "";
  const std::string columns = std::string("token, user_id, expires_at, created_at, device") +
                              (with_tenant ? ", tenant_id" : "");
  raw.exec("INSERT INTO _pylon_sessions (" + columns + ") VALUES ('" + fixed_token('7') +
           "', 'frank', " + std::to_string(kFarFuture) + ", " + std::to_string(kCreated) +
           ", 'Firefox'" + tenant + "), ('" + fixed_token('8') + "', 'grace', " +
           std::to_string(kLongAgo) + ", " + std::to_string(kLongAgo - 3600) + ", NULL" + tenant +
           ")");
}

// The latest schema with rows whose times no write of pylon's makes (loaded under
// UBSan, each must be skipped and counted, never served, and nothing may overflow): INT64_MIN and
// INT64_MAX times, times out of order, a device over its limit; and a rotated id.
void write_hostile_times(const fs::path& path) {
  write_latest(path, true);
  RawDatabase raw(path);
  const std::string min = std::to_string(std::numeric_limits<std::int64_t>::min());
  const std::string max = std::to_string(std::numeric_limits<std::int64_t>::max());
  const std::string created = std::to_string(kCreated);
  const std::string far = std::to_string(kFarFuture);
  // created_at, expires_at, last_seen_at, absolute_expires_at
  const std::vector<std::array<std::string, 4>> rows = {
      {created, far, min, far},         {created, max, created, max}, {far, far, created, far},
      {created, far, created, created}, {min, min, min, min},         {max, max, max, max},
  };
  char digit = 'a';
  for (const auto& times : rows) {
    raw.exec(
        "INSERT INTO _pylon_sessions (id, user_id, created_at, expires_at, last_seen_at,"
        " absolute_expires_at) VALUES ('" +
        session(digit++, "mallory").id + "', 'mallory', " + times[0] + ", " + times[1] + ", " +
        times[2] + ", " + times[3] + ")");
  }
  raw.exec(
      "INSERT INTO _pylon_sessions (id, user_id, created_at, expires_at, last_seen_at,"
      " absolute_expires_at, device) VALUES ('" +
      session(digit++, "mallory").id + "', 'mallory', " + created + ", " + far + ", " + created +
      ", " + far + ", '" + std::string(2000, 'd') + "')");
  raw.exec("INSERT INTO _pylon_rotated_ids VALUES ('" + session(digit++, "mallory").id + "', '" +
           session('1', "alice").id + "', 'alice', 'acme', " + created + ", " + max + ")");
}

// Files the library must refuse, each for its own reason.
void write_too_new(const fs::path& path) {
  write_latest(path, false);
  RawDatabase raw(path);
  raw.exec("INSERT INTO _pylon_schema_migrations VALUES (99, '0099_future.sql', " +
           std::to_string(kCreated) + ")");
}

void write_foreign_table(const fs::path& path) {
  create_small_page_file(path);
  RawDatabase(path).exec("CREATE TABLE _pylon_sessions (key TEXT PRIMARY KEY, value BLOB)");
}

void write_view(const fs::path& path) {
  create_small_page_file(path);
  RawDatabase(path).exec("CREATE VIEW _pylon_sessions AS SELECT 1 AS id");
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

// Opens a scratch copy of `seed` the way db_fuzz does and says what happened.
void report(const fs::path& seed, const fs::path& scratch) {
  fs::copy_file(seed, scratch, fs::copy_options::overwrite_existing);
  std::string outcome;
  try {
    pylon::StoreOptions options;
    options.clock = [] { return std::int64_t{1'700'000'000}; };
    pylon::SessionStore store(pylon::open_sqlite_backend(scratch.string()), options);
    outcome = "opens: " + std::to_string(store.size()) + " sessions in the store";
  } catch (const pylon::Error& error) {
    outcome = std::string("refused: ") + error.what();
  }
  for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(scratch.string() + suffix);
  std::cout << "  " << std::left << std::setw(28) << seed.filename().string() << std::right
            << std::setw(6) << fs::file_size(seed) << " bytes  " << outcome << '\n';
}

// Seeds of url_fuzz: one of each form open_backend() documents, with and without passwords.
void write_url_seeds(const fs::path& out) {
  const std::vector<std::pair<const char*, const char*>> urls = {
      {"empty", ""},
      {"bare_path", "sessions.db"},
      {"bare_absolute", "/var/lib/app/sessions.db"},
      {"sqlite_relative", "sqlite://data/sessions.db"},
      {"sqlite_absolute_options", "sqlite:///var/lib/app.db?synchronous=normal&busy_timeout=250"},
      {"sqlite_colon_path", "sqlite:sessions.db?synchronous=FULL"},
      {"sqlite_memory", "sqlite::memory:"},
      {"sqlite_bad_option", "sqlite:///tmp/s.db?journal=wal"},
      {"sqlite_password_param", "sqlite:///tmp/s.db?password=hunter22&busy_timeout=x"},
      {"postgres_userinfo", "postgres://app:s3cr3t-pw@db.internal:5432/sessions?sslmode=require"},
      {"postgresql_query_password",
       "postgresql://app@db/sessions?password=correct-horse&application_name=web"},
      {"postgres_multi_host", "postgres://app:tr0ub4dor@db1:5432,db2:5433/sessions"},
      {"unknown_scheme", "mysql://root:letmein1@localhost/app"},
      {"keyword_value", "host=db user=app password=Pa55word dbname=sessions"},
      // The shapes that once leaked a password, and forms that must be refused.
      {"url_fuzz-quote-and-bad-percent-escape",
       "postgresql://app:Tr0ub4dor\"&3%horse@127.0.0.1:5432/app"},
      {"url_fuzz-unencoded-at-in-password", "postgresql://app:hunter2@work!@127.0.0.1:5432/app"},
      {"url_fuzz-unencoded-slash-in-password",
       "postgresql://app:Zm9vYmFy/YmF6cXV4@127.0.0.1:5432/app"},
      {"url_fuzz-percent-encoded-password",
       "postgresql://app:Zm9vYmFy%2FYmF6cXV4@127.0.0.1:5432/"
       "app?sslmode=require&password=Sw0rd%3Df1sh"},
      {"url_fuzz-libpq-keyword-value-quoted",
       "host=db port=5432 password = 'Tr0ub\\'4dor x'user=app dbname=app"},
      {"url_fuzz-file-uri", "file:data.db"},
      {"url_fuzz-sqlite-one-slash", "sqlite:/one-slash.db"},
  };
  fs::create_directories(out);
  for (const auto& [name, url] : urls) write_bytes(out / (std::string(name) + ".txt"), url);
}

// Seeds of token_fuzz: a token, its id, and near misses of each.
void write_token_seeds(const fs::path& out) {
  const std::string token = fixed_token('9');
  std::string upper = token;
  upper.back() = 'A';
  const std::vector<std::pair<const char*, std::string>> seeds = {
      {"token", token},
      {"token_id", pylon::session_id_for_token(token)},
      {"token_uppercase_hex", upper},
      {"token_short", token.substr(0, token.size() - 1)},
      {"token_long", token + "0"},
      {"prefix_only", "pylon_"},
      {"empty", ""},
  };
  fs::create_directories(out);
  for (const auto& [name, bytes] : seeds) write_bytes(out / (std::string(name) + ".txt"), bytes);
}

void write_db_seeds(const fs::path& out) {
  fs::create_directories(out);
  write_latest(out / "latest_empty.db", false);
  write_latest(out / "latest_sessions.db", true);
  write_schema_v1(out / "schema_v1.db");
  write_hostile_times(out / "hostile_times.db");
  write_pylon_v0(out / "pylon_v0_tenant.db", true);
  write_pylon_v0(out / "pylon_v0_no_tenant.db", false);
  write_too_new(out / "refused_schema_too_new.db");
  write_foreign_table(out / "refused_foreign_table.db");
  write_view(out / "refused_view.db");
  // Garbage: the first 100 bytes (the SQLite header alone) of a real file, the same file's
  // first page with an impossible page size, and text.
  const std::string real = read_bytes(out / "latest_sessions.db");
  write_bytes(out / "garbage_header_only.db", real.substr(0, 100));
  std::string bad_page_size = real.substr(0, 512);
  bad_page_size[16] = '\x03';  // bytes 16-17: the page size, big-endian; 0x0300 is no power of 2
  bad_page_size[17] = '\x00';
  write_bytes(out / "garbage_bad_page_size.db", bad_page_size);
  write_bytes(out / "garbage_text.db", "this is not an SQLite database\n");
  write_bytes(out / "garbage_empty.db", "");

  const fs::path scratch =
      fs::temp_directory_path() / ("pylon-make-seeds-" + std::to_string(::getpid()) + ".db");
  std::cout << "make_seeds: " << out.string() << ", each opened on a scratch copy:\n";
  std::vector<fs::path> seeds;
  for (const fs::directory_entry& entry : fs::directory_iterator(out)) {
    seeds.push_back(entry.path());
  }
  std::sort(seeds.begin(), seeds.end());
  for (const fs::path& seed : seeds) report(seed, scratch);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_seeds <corpus directory>\n";
    return 2;
  }
  try {
    // NOLINTNEXTLINE(cppcoreguidelines-pro-bounds-pointer-arithmetic): argv
    const fs::path corpus = argv[1];
    // Each target's seeds replace what was there, so a seed dropped here leaves the corpus too.
    for (const char* target : {"token_fuzz", "url_fuzz", "db_fuzz"}) {
      fs::remove_all(corpus / target);
    }
    write_token_seeds(corpus / "token_fuzz");
    write_url_seeds(corpus / "url_fuzz");
    write_db_seeds(corpus / "db_fuzz");
  } catch (const std::exception& error) {
    std::cerr << "make_seeds: " << error.what() << '\n';
    return 1;
  }
  return 0;
}

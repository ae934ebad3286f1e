// pylon_bench: what each library operation costs, next to the raw engine limit beneath it,
// measured in the same run on the same machine, with the ratio printed. The README's
// "Performance" table comes from this program (scripts/bench.sh runs it on a release build).
//
//   pylon_bench [--quick] [--dir DIR] [--postgres URL] [--rows N] [--only SECTION]
//
// Discipline: every figure is the median of several repetitions after a warm-up run; library
// and raw limit alternate within a repetition, so drift on a noisy machine hits both. Nothing is
// asserted about time: --quick (small sizes, one repetition) is the smoke run the test command
// makes so that this program never rots.
//
// Ratios are "raw time / pylon time": 1.0 means the library costs what the engine costs, and
// above 1.0 it is faster than the naive raw loop (group commit). The raw limits:
//   validate   SHA-256 of the token (OpenSSL EVP, algorithm fetched once) and one lookup in a
//              std::unordered_map<std::string, Session> under a std::mutex, copying the session
//              out as validate() returns it
//   create     one prepared INSERT ... ON CONFLICT DO UPDATE per transaction, on a file opened
//              as the library opens it (WAL, synchronous=FULL), one thread
//   start-up   one SELECT of every column of every row, each value read (sqlite3_column_*)
//   memory     RSS growth and heap in use per cached session, minus its field bytes
#include <libpq-fe.h>
#include <malloc.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "session_backend.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using pylon::Session;
using pylon::SessionStore;
using pylon::StoreOptions;

// ------------------------------------------------------------------------------------------------
// Harness: settings, timing, the table
// ------------------------------------------------------------------------------------------------

struct Settings {
  bool quick = false;
  std::string dir = "/var/tmp";
  std::string postgres_url;
  std::string only;  // one section: validate, create, startup, bulk, rotate, postgres
  std::size_t startup_rows = 1000000;
  int repetitions = 5;
};

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "pylon_bench: %s\n", why.c_str());
  std::exit(2);  // NOLINT(concurrency-mt-unsafe): single-threaded at this point
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t middle = values.size() / 2;
  return values.size() % 2 == 1 ? values[middle] : (values[middle - 1] + values[middle]) / 2;
}

// One pair of figures: seconds per operation of the library and of the raw limit.
struct Pair {
  double pylon = 0;
  double raw = 0;
};

// Runs `round` (which returns one Pair of seconds-per-op) once to warm up, then `repetitions`
// times; the medians of each side.
Pair measure(int repetitions, const std::function<Pair()>& round) {
  round();
  std::vector<double> pylon;
  std::vector<double> raw;
  for (int i = 0; i < repetitions; ++i) {
    const Pair result = round();
    pylon.push_back(result.pylon);
    raw.push_back(result.raw);
  }
  return {median(pylon), median(raw)};
}

std::string human_time(double seconds) {
  std::array<char, 32> text{};
  if (seconds < 1e-6) {
    std::snprintf(text.data(), text.size(), "%.0f ns", seconds * 1e9);
  } else if (seconds < 1e-3) {
    std::snprintf(text.data(), text.size(), "%.1f us", seconds * 1e6);
  } else if (seconds < 1) {
    std::snprintf(text.data(), text.size(), "%.1f ms", seconds * 1e3);
  } else {
    std::snprintf(text.data(), text.size(), "%.2f s", seconds);
  }
  return text.data();
}

void header() {
  std::printf("%-44s %12s %12s %8s  %s\n", "operation", "pylon", "raw limit", "ratio",
              "target (ratio = raw/pylon)");
}

void row(const std::string& name, double pylon_seconds, double raw_seconds,
         const std::string& target) {
  std::printf("%-44s %12s %12s %7.2fx  %s\n", name.c_str(), human_time(pylon_seconds).c_str(),
              raw_seconds > 0 ? human_time(raw_seconds).c_str() : "-",
              raw_seconds > 0 ? raw_seconds / pylon_seconds : 0.0, target.c_str());
  std::fflush(stdout);
}

void note(const std::string& text) {
  std::printf("  %s\n", text.c_str());
  std::fflush(stdout);
}

// A fresh file path in the bench directory, with its -wal and -shm removed too.
class ScratchFile {
 public:
  ScratchFile(const std::string& dir, const std::string& name)
      : path_(dir + "/pylon-bench-" + std::to_string(::getpid()) + "-" + name + ".db") {
    remove_all();
  }
  ~ScratchFile() { remove_all(); }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;
  ScratchFile(ScratchFile&&) = delete;
  ScratchFile& operator=(ScratchFile&&) = delete;
  const std::string& path() const { return path_; }

 private:
  void remove_all() const {
    for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
      std::remove((path_ + suffix).c_str());
    }
  }
  std::string path_;
};

// ------------------------------------------------------------------------------------------------
// Raw engines
// ------------------------------------------------------------------------------------------------

struct SqliteCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close(db); }
};
struct StatementFinalizer {
  void operator()(sqlite3_stmt* statement) const noexcept { sqlite3_finalize(statement); }
};
using RawSqlite = std::unique_ptr<sqlite3, SqliteCloser>;
using RawStatement = std::unique_ptr<sqlite3_stmt, StatementFinalizer>;

void sqlite_exec(sqlite3* db, const char* sql) {
  char* message = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &message) != SQLITE_OK) {
    const std::string text = message != nullptr ? message : "?";
    sqlite3_free(message);
    die(std::string("sqlite: ") + sql + ": " + text);
  }
}

// Opens a file the library has created (so the table, indexes and pragmas are the library's) the
// way the library opens it: WAL, synchronous=FULL.
RawSqlite open_raw_sqlite(const std::string& path) {
  sqlite3* handle = nullptr;
  const int opened = sqlite3_open_v2(path.c_str(), &handle, SQLITE_OPEN_READWRITE, nullptr);
  RawSqlite db(handle);
  if (opened != SQLITE_OK) die("cannot open " + path);
  sqlite3_busy_timeout(db.get(), 5000);
  sqlite_exec(db.get(), "PRAGMA journal_mode=WAL");
  sqlite_exec(db.get(), "PRAGMA synchronous=FULL");
  return db;
}

RawStatement prepare(sqlite3* db, const char* sql) {
  sqlite3_stmt* statement = nullptr;
  if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &statement, nullptr) !=
      SQLITE_OK) {
    die(std::string("cannot prepare: ") + sqlite3_errmsg(db));
  }
  return RawStatement(statement);
}

constexpr const char* kRawUpsert =
    "INSERT INTO _pylon_sessions (id, user_id, tenant_id, created_at, expires_at, last_seen_at, "
    "absolute_expires_at, device, ip, data, idp_session_id) "
    "VALUES (?1, ?2, NULL, ?3, ?4, ?3, ?4, NULL, NULL, x'', NULL) "
    "ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, expires_at = excluded.expires_at, "
    "last_seen_at = excluded.last_seen_at";

std::string random_hex_id() {
  std::array<unsigned char, 32> bytes{};
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) die("RAND_bytes failed");
  static constexpr std::array<char, 16> kHex = {'0', '1', '2', '3', '4', '5', '6', '7',
                                                '8', '9', 'a', 'b', 'c', 'd', 'e', 'f'};
  std::string hex(64, '0');
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    hex[2 * i] = kHex[bytes[i] >> 4U];
    hex[2 * i + 1] = kHex[bytes[i] & 0x0FU];
  }
  return hex;
}

void raw_upsert(sqlite3* db, sqlite3_stmt* upsert, const std::string& id, const std::string& user,
                std::int64_t now) {
  sqlite3_bind_text(upsert, 1, id.data(), static_cast<int>(id.size()), SQLITE_STATIC);
  sqlite3_bind_text(upsert, 2, user.data(), static_cast<int>(user.size()), SQLITE_STATIC);
  sqlite3_bind_int64(upsert, 3, now);
  sqlite3_bind_int64(upsert, 4, now + 86400);
  if (sqlite3_step(upsert) != SQLITE_DONE) die(std::string("raw upsert: ") + sqlite3_errmsg(db));
  sqlite3_reset(upsert);
}

// SHA-256 the fastest documented OpenSSL 3 way: EVP with the algorithm fetched once.
class RawSha256 {
 public:
  RawSha256() : algorithm_(EVP_MD_fetch(nullptr, "SHA256", nullptr)), context_(EVP_MD_CTX_new()) {}
  ~RawSha256() {
    EVP_MD_CTX_free(context_);
    EVP_MD_free(algorithm_);
  }
  RawSha256(const RawSha256&) = delete;
  RawSha256& operator=(const RawSha256&) = delete;
  RawSha256(RawSha256&&) = delete;
  RawSha256& operator=(RawSha256&&) = delete;
  std::string digest(const std::string& text) {
    std::string out(32, '\0');
    unsigned int size = 0;
    EVP_DigestInit_ex2(context_, algorithm_, nullptr);
    EVP_DigestUpdate(context_, text.data(), text.size());
    EVP_DigestFinal_ex(context_, reinterpret_cast<unsigned char*>(out.data()),  // NOLINT
                       &size);
    return out;
  }

 private:
  EVP_MD* algorithm_;
  EVP_MD_CTX* context_;
};

// ------------------------------------------------------------------------------------------------
// validate: cache hits, one and two threads
// ------------------------------------------------------------------------------------------------

StoreOptions fixed_clock_options() {
  StoreOptions options;
  const std::int64_t start = pylon::system_clock_now();
  options.clock = [start] { return start; };  // no slide falls due while the bench runs
  return options;
}

void bench_validate(const Settings& settings) {
  const std::size_t sessions = settings.quick ? 2000 : 10000;
  const std::size_t lookups = settings.quick ? 200000 : 2000000;
  SessionStore store = SessionStore::open("sqlite::memory:", fixed_clock_options());
  std::vector<std::string> tokens;
  std::unordered_map<std::string, Session> raw_map;
  RawSha256 sha;
  for (std::size_t i = 0; i < sessions; ++i) {
    pylon::NewSession created = store.create("user-" + std::to_string(i % 1000));
    raw_map.emplace(sha.digest(created.token), created.session);
    tokens.push_back(std::move(created.token));
  }
  std::mutex raw_mutex;

  // Each thread validates `lookups` tokens; returns seconds per lookup per thread.
  const auto run_pylon = [&](int threads) {
    std::atomic<std::size_t> found{0};
    const auto start = Clock::now();
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        std::size_t hits = 0;
        for (std::size_t i = 0; i < lookups; ++i) {
          hits +=
              store.validate(tokens[(i * 7 + static_cast<std::size_t>(t)) % sessions]) ? 1U : 0U;
        }
        found += hits;
      });
    }
    for (std::thread& worker : workers) worker.join();
    const double elapsed = seconds_since(start);
    if (found != lookups * static_cast<std::size_t>(threads)) die("validate missed a session");
    return elapsed / static_cast<double>(lookups * static_cast<std::size_t>(threads));
  };
  const auto run_raw = [&](int threads) {
    std::atomic<std::size_t> found{0};
    const auto start = Clock::now();
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        RawSha256 local_sha;
        std::size_t hits = 0;
        for (std::size_t i = 0; i < lookups; ++i) {
          const std::string key =
              local_sha.digest(tokens[(i * 7 + static_cast<std::size_t>(t)) % sessions]);
          std::optional<Session> copy;
          {
            const std::lock_guard<std::mutex> lock(raw_mutex);
            const auto it = raw_map.find(key);
            if (it != raw_map.end()) copy = it->second;
          }
          hits += copy ? 1U : 0U;
        }
        found += hits;
      });
    }
    for (std::thread& worker : workers) worker.join();
    const double elapsed = seconds_since(start);
    if (found != lookups * static_cast<std::size_t>(threads)) die("raw lookup missed");
    return elapsed / static_cast<double>(lookups * static_cast<std::size_t>(threads));
  };

  const Pair one = measure(settings.repetitions, [&] { return Pair{run_pylon(1), run_raw(1)}; });
  row("validate, cache hit, 1 thread", one.pylon, one.raw, ">= 0.8x");
  const Pair two = measure(settings.repetitions, [&] { return Pair{run_pylon(2), run_raw(2)}; });
  // Per-thread seconds per op over two threads: throughput is 2 / that.
  row("validate, cache hit, 2 threads (per op)", two.pylon / 2, two.raw / 2, "scales");
  note("2-thread throughput / 1-thread: pylon " + std::to_string(2 * one.pylon / two.pylon) +
       "x, raw (one global mutex) " + std::to_string(2 * one.raw / two.raw) + "x");
}

// ------------------------------------------------------------------------------------------------
// create on a file, synchronous=FULL: one thread, eight threads (group commit)
// ------------------------------------------------------------------------------------------------

// `threads` threads share `creates` creates on an empty store; seconds per create. Dies if the
// store does not hold every one afterwards.
double seconds_per_create(SessionStore& store, int threads, int creates) {
  const int per_thread = creates / threads;
  const auto start = Clock::now();
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&store, per_thread] {
      for (int i = 0; i < per_thread; ++i) store.create("user");
    });
  }
  for (std::thread& worker : workers) worker.join();
  const double elapsed = seconds_since(start);
  const int created = per_thread * threads;
  if (store.size() != static_cast<std::size_t>(created)) die("a create was lost");
  return elapsed / static_cast<double>(created);
}

void bench_create(const Settings& settings) {
  const int per_round = settings.quick ? 200 : 2000;
  const auto raw_round = [&] {
    const ScratchFile file(settings.dir, "raw-create");
    { pylon::open_sqlite_backend(file.path()); }  // the library's schema
    const RawSqlite db = open_raw_sqlite(file.path());
    const RawStatement upsert = prepare(db.get(), kRawUpsert);
    std::vector<std::string> ids;
    for (int i = 0; i < per_round; ++i) ids.push_back(random_hex_id());
    const std::int64_t now = pylon::system_clock_now();
    const auto start = Clock::now();
    for (int i = 0; i < per_round; ++i) {
      raw_upsert(db.get(), upsert.get(), ids[static_cast<std::size_t>(i)], "user", now);
    }
    return seconds_since(start) / per_round;
  };
  const auto pylon_round = [&](int threads) {
    const ScratchFile file(settings.dir, "pylon-create");
    SessionStore store(pylon::open_sqlite_backend(file.path()));
    return seconds_per_create(store, threads, per_round);
  };
  const Pair one = measure(settings.repetitions, [&] { return Pair{pylon_round(1), raw_round()}; });
  row("create, SQLite file, FULL, 1 thread", one.pylon, one.raw, ">= 0.9x");
  const Pair eight = measure(settings.repetitions, [&] {
    return Pair{pylon_round(8), raw_round()};
  });
  row("create, SQLite file, FULL, 8 threads", eight.pylon, eight.raw,
      ">= 3x (vs raw 1 thread; group commit)");
}

// ------------------------------------------------------------------------------------------------
// Start-up and memory: SessionStore construction on N rows against a raw scan of them
// ------------------------------------------------------------------------------------------------

std::size_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t pages = 0;
  std::size_t resident = 0;
  statm >> pages >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

void fill_rows(const std::string& path, std::size_t rows, std::int64_t now) {
  { pylon::open_sqlite_backend(path); }
  const RawSqlite db = open_raw_sqlite(path);
  sqlite_exec(db.get(), "BEGIN");
  const RawStatement insert =
      prepare(db.get(),
              "INSERT INTO _pylon_sessions (id, user_id, tenant_id, created_at, expires_at, "
              "last_seen_at, absolute_expires_at, device, ip, data, idp_session_id) "
              "VALUES (?1, ?2, NULL, ?3, ?4, ?3, ?4, ?5, ?6, ?7, NULL)");
  const std::string device = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0";
  const std::string ip = "203.0.113.7";
  const std::string data = R"({"csrf":"8f14e45fceea167a5a36dedd4bea2543","theme":"dark"})";
  for (std::size_t i = 0; i < rows; ++i) {
    const std::string id = random_hex_id();
    const std::string user = "user-" + std::to_string(i % (rows / 4 + 1));
    sqlite3_bind_text(insert.get(), 1, id.data(), 64, SQLITE_TRANSIENT);
    sqlite3_bind_text(insert.get(), 2, user.data(), static_cast<int>(user.size()),
                      SQLITE_TRANSIENT);
    sqlite3_bind_int64(insert.get(), 3, now);
    sqlite3_bind_int64(insert.get(), 4, now + 86400);
    sqlite3_bind_text(insert.get(), 5, device.data(), static_cast<int>(device.size()),
                      SQLITE_STATIC);
    sqlite3_bind_text(insert.get(), 6, ip.data(), static_cast<int>(ip.size()), SQLITE_STATIC);
    sqlite3_bind_blob(insert.get(), 7, data.data(), static_cast<int>(data.size()), SQLITE_STATIC);
    if (sqlite3_step(insert.get()) != SQLITE_DONE) die("fill failed");
    sqlite3_reset(insert.get());
  }
  sqlite_exec(db.get(), "COMMIT");
  sqlite_exec(db.get(), "PRAGMA wal_checkpoint(TRUNCATE)");
}

// Reads every column of every row, as load_all() must; returns the bytes seen.
std::size_t raw_scan(const std::string& path) {
  const RawSqlite db = open_raw_sqlite(path);
  const RawStatement select =
      prepare(db.get(),
              "SELECT id, user_id, tenant_id, created_at, expires_at, last_seen_at, "
              "absolute_expires_at, device, ip, data, idp_session_id FROM _pylon_sessions");
  std::size_t bytes = 0;
  while (sqlite3_step(select.get()) == SQLITE_ROW) {
    for (int column = 0; column < 11; ++column) {
      if (column >= 3 && column <= 6) {
        bytes += static_cast<std::size_t>(sqlite3_column_int64(select.get(), column) & 1);
      } else {
        const void* value =
            column == 9 ? sqlite3_column_blob(select.get(), column)
                        : static_cast<const void*>(sqlite3_column_text(select.get(), column));
        bytes += value == nullptr
                     ? 0
                     : static_cast<std::size_t>(sqlite3_column_bytes(select.get(), column));
      }
    }
  }
  return bytes;
}

void bench_startup_and_memory(const Settings& settings) {
  const std::size_t rows = settings.startup_rows;
  const ScratchFile file(settings.dir, "startup");
  const std::int64_t now = pylon::system_clock_now();
  fill_rows(file.path(), rows, now);
  std::size_t field_bytes = 0;
  const Pair startup = measure(settings.quick ? 1 : 3, [&] {
    Pair result;
    auto start = Clock::now();
    field_bytes = raw_scan(file.path());
    result.raw = seconds_since(start);
    start = Clock::now();
    std::optional<SessionStore> store(std::in_place, pylon::open_sqlite_backend(file.path()));
    result.pylon = seconds_since(start);  // construction only: the teardown is not start-up
    store.reset();
    return result;
  });
  row("start-up, " + std::to_string(rows) + " sessions (whole load)", startup.pylon, startup.raw,
      ">= 0.5x (<= 2x the scan)");

  // Memory: the cache of a store, measured after the load (the rows' transient copies freed).
  // Field bytes: the 64-character id, the text and data bytes, and four 8-byte times.
  malloc_trim(0);
  const std::size_t rss_before = resident_bytes();
  const std::size_t heap_before = mallinfo2().uordblks;
  const SessionStore store(pylon::open_sqlite_backend(file.path()));
  malloc_trim(0);
  const double per_session_rss =
      static_cast<double>(resident_bytes() - rss_before) / static_cast<double>(rows);
  const double per_session_heap =
      static_cast<double>(mallinfo2().uordblks - heap_before) / static_cast<double>(rows);
  const double fields =
      static_cast<double>(field_bytes) / static_cast<double>(rows) + 4 * sizeof(std::int64_t);
  std::array<char, 200> text{};
  std::snprintf(text.data(), text.size(),
                "memory per cached session: %.0f B RSS, %.0f B heap; field bytes %.0f; "
                "overhead %.0f B (RSS), %.0f B (heap); target <= 200",
                per_session_rss, per_session_heap, fields, per_session_rss - fields,
                per_session_heap - fields);
  note(text.data());
}

// ------------------------------------------------------------------------------------------------
// Bulk deletes: revoke_user of 1,000 sessions, purge_expired of 100,000 rows
// ------------------------------------------------------------------------------------------------

struct BulkTimes {
  double revoke_user = 0;
  double purge = 0;
};

void bench_bulk_deletes(const Settings& settings) {
  const std::size_t user_sessions = settings.quick ? 100 : 1000;
  const std::size_t expired_rows = settings.quick ? 10000 : 100000;
  const std::int64_t now = pylon::system_clock_now();
  const auto one_round = [&](bool pylon_side) {
    const ScratchFile file(settings.dir, "bulk");
    { pylon::open_sqlite_backend(file.path()); }
    {
      const RawSqlite db = open_raw_sqlite(file.path());
      sqlite_exec(db.get(), "BEGIN");
      const RawStatement upsert = prepare(db.get(), kRawUpsert);
      for (std::size_t i = 0; i < user_sessions; ++i) {
        raw_upsert(db.get(), upsert.get(), random_hex_id(), "heavy-user", now);
      }
      for (std::size_t i = 0; i < expired_rows; ++i) {
        raw_upsert(db.get(), upsert.get(), random_hex_id(), "user-" + std::to_string(i % 5000),
                   now - std::int64_t{2} * 86400);
      }
      sqlite_exec(db.get(), "COMMIT");
    }
    BulkTimes seconds;
    if (pylon_side) {
      SessionStore store(pylon::open_sqlite_backend(file.path()));
      auto start = Clock::now();
      if (store.revoke_user("heavy-user") != user_sessions) die("revoke_user count");
      seconds.revoke_user = seconds_since(start);
      start = Clock::now();
      if (store.purge_expired() != expired_rows) die("purge count");
      seconds.purge = seconds_since(start);
    } else {
      const RawSqlite db = open_raw_sqlite(file.path());
      auto start = Clock::now();
      sqlite_exec(db.get(), "DELETE FROM _pylon_sessions WHERE user_id = 'heavy-user'");
      seconds.revoke_user = seconds_since(start);
      start = Clock::now();
      const std::string purge =
          "DELETE FROM _pylon_sessions WHERE expires_at <= " + std::to_string(now);
      sqlite_exec(db.get(), purge.c_str());
      seconds.purge = seconds_since(start);
    }
    return seconds;
  };
  std::vector<BulkTimes> pylon_runs;
  std::vector<BulkTimes> raw_runs;
  const Pair revoke = measure(settings.quick ? 1 : 3, [&] {
    pylon_runs.push_back(one_round(true));
    raw_runs.push_back(one_round(false));
    return Pair{pylon_runs.back().revoke_user, raw_runs.back().revoke_user};
  });
  // The purge figures of the same rounds; [0] was the warm-up.
  std::vector<double> pylon_purges;
  std::vector<double> raw_purges;
  for (std::size_t i = 1; i < pylon_runs.size(); ++i) {
    pylon_purges.push_back(pylon_runs[i].purge);
    raw_purges.push_back(raw_runs[i].purge);
  }
  const Pair purge{median(pylon_purges), median(raw_purges)};
  row("revoke_user, " + std::to_string(user_sessions) + " sessions (whole call)", revoke.pylon,
      revoke.raw, "one statement");
  row("purge_expired, " + std::to_string(expired_rows) + " rows (whole call)", purge.pylon,
      purge.raw, "one statement");
}

// ------------------------------------------------------------------------------------------------
// PostgreSQL: create (one and eight threads) and start-up against raw libpq
//
// Both sides of the create rows keep one connection for the whole section, as an application
// keeps its store, and with one thread both run on the calling thread. On a small VM where the
// client and its server process run decides much of a round trip (a wake-up across vCPUs costs
// several times one on the same vCPU), so a fresh connection and thread on one side only would
// measure placement, not the library.
// ------------------------------------------------------------------------------------------------

struct PgCloser {
  void operator()(PGconn* connection) const noexcept { PQfinish(connection); }
};
using RawPg = std::unique_ptr<PGconn, PgCloser>;

RawPg connect_raw_pg(const std::string& url) {
  RawPg connection(PQconnectdb(url.c_str()));
  if (PQstatus(connection.get()) != CONNECTION_OK) {
    die(std::string("cannot connect to PostgreSQL: ") + PQerrorMessage(connection.get()));
  }
  return connection;
}

void pg_exec(PGconn* connection, const char* sql) {
  PGresult* result = PQexec(connection, sql);
  const ExecStatusType status = PQresultStatus(result);
  PQclear(result);
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    die(std::string("postgres: ") + sql + ": " + PQerrorMessage(connection));
  }
}

void pg_prepare(PGconn* connection, const char* name, const char* sql, int parameters) {
  PGresult* prepared = PQprepare(connection, name, sql, parameters, nullptr);
  const bool ok = PQresultStatus(prepared) == PGRES_COMMAND_OK;
  PQclear(prepared);
  if (!ok) die(std::string("prepare: ") + PQerrorMessage(connection));
}

void pg_run_prepared(PGconn* connection, const char* name, const std::vector<const char*>& values) {
  PGresult* result = PQexecPrepared(connection, name, static_cast<int>(values.size()),
                                    values.data(), nullptr, nullptr, 0);
  const bool ok = PQresultStatus(result) == PGRES_COMMAND_OK;
  PQclear(result);
  if (!ok) die(std::string(name) + ": " + PQerrorMessage(connection));
}

// seconds_per_create() for a store kept open across rounds: its cache keeps the sessions of
// earlier rounds while the table is emptied between them. One thread runs on the caller's.
double pg_seconds_per_create(SessionStore& store, int threads, int creates) {
  const std::size_t before = store.size();
  const int per_thread = creates / threads;
  const auto work = [&store, per_thread] {
    for (int i = 0; i < per_thread; ++i) store.create("user");
  };
  const auto start = Clock::now();
  if (threads == 1) {
    work();
  } else {
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) workers.emplace_back(work);
    for (std::thread& worker : workers) worker.join();
  }
  const double elapsed = seconds_since(start);
  const int created = per_thread * threads;
  if (store.size() - before != static_cast<std::size_t>(created)) die("a create was lost");
  return elapsed / static_cast<double>(created);
}

// Reads every row of _pylon_sessions in binary format, each value touched (its bytes summed into
// `*bytes`), as one result or, with `single_row`, streamed as the library does. Returns the rows.
std::size_t raw_pg_scan(PGconn* connection, bool single_row, std::size_t* bytes) {
  const char* const select =
      "SELECT id, user_id, tenant_id, created_at, expires_at, last_seen_at, absolute_expires_at, "
      "device, ip, data, idp_session_id FROM _pylon_sessions";
  if (PQsendQueryParams(connection, select, 0, nullptr, nullptr, nullptr, nullptr, 1) == 0 ||
      (single_row && PQsetSingleRowMode(connection) == 0)) {
    die(std::string("raw scan: ") + PQerrorMessage(connection));
  }
  std::size_t rows = 0;
  for (PGresult* result = PQgetResult(connection); result != nullptr;
       result = PQgetResult(connection)) {
    const ExecStatusType status = PQresultStatus(result);
    if (status != PGRES_TUPLES_OK && status != PGRES_SINGLE_TUPLE) {
      die(std::string("raw scan: ") + PQerrorMessage(connection));
    }
    const int count = PQntuples(result);
    for (int tuple = 0; tuple < count; ++tuple) {
      for (int column = 0; column < 11; ++column) {
        if (PQgetisnull(result, tuple, column) == 0) {
          *bytes += static_cast<std::size_t>(PQgetlength(result, tuple, column)) +
                    static_cast<unsigned char>(*PQgetvalue(result, tuple, column));
        }
      }
    }
    rows += static_cast<std::size_t>(count);
    PQclear(result);
  }
  return rows;
}

void bench_postgres(const Settings& settings) {
  const std::string& url = settings.postgres_url;
  { pylon::open_backend(url); }  // the library's schema
  const RawPg raw = connect_raw_pg(url);
  pg_exec(raw.get(), "TRUNCATE _pylon_sessions");
  constexpr const char* kRawColumns =
      "INSERT INTO _pylon_sessions (id, user_id, tenant_id, created_at, expires_at, "
      "last_seen_at, absolute_expires_at, device, ip, data, idp_session_id) ";
  constexpr const char* kRawConflict =
      " ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, "
      "expires_at = excluded.expires_at, last_seen_at = excluded.last_seen_at";
  pg_prepare(raw.get(), "raw_upsert",
             (std::string(kRawColumns) +
              "VALUES ($1, $2, NULL, $3::bigint, $3::bigint + 86400, $3::bigint, "
              "$3::bigint + 86400, NULL, NULL, ''::bytea, NULL)" +
              kRawConflict)
                 .c_str(),
             3);
  // What group commit can at best reach: the rows of one batch in one statement (the ids as an
  // array, unnested), one statement per round trip.
  pg_prepare(raw.get(), "raw_upsert_batch",
             (std::string(kRawColumns) +
              "SELECT unnest($1::text[]), $2, NULL, $3::bigint, $3::bigint + 86400, $3::bigint, "
              "$3::bigint + 86400, NULL, NULL, ''::bytea, NULL" +
              kRawConflict)
                 .c_str(),
             3);
  const int per_round = settings.quick ? 200 : 2000;
  constexpr int kThreads = 8;
  const auto fresh_ids = [per_round] {
    std::vector<std::string> ids;
    for (int i = 0; i < per_round; ++i) ids.push_back(random_hex_id());
    return ids;
  };
  const auto raw_round = [&] {
    const std::vector<std::string> ids = fresh_ids();
    const std::string now = std::to_string(pylon::system_clock_now());
    const auto start = Clock::now();
    for (const std::string& id : ids) {
      pg_run_prepared(raw.get(), "raw_upsert", {id.c_str(), "user", now.c_str()});
    }
    const double elapsed = seconds_since(start) / per_round;
    pg_exec(raw.get(), "TRUNCATE _pylon_sessions");
    return elapsed;
  };
  const auto raw_batch_round = [&] {
    const std::vector<std::string> ids = fresh_ids();
    std::vector<std::string> arrays;  // "{id,id,...}", kThreads ids each
    for (std::size_t first = 0; first < ids.size(); first += kThreads) {
      std::string array = "{";
      for (std::size_t i = first; i < std::min(ids.size(), first + kThreads); ++i) {
        array += (i > first ? "," : "") + ids[i];
      }
      arrays.push_back(array + "}");
    }
    const std::string now = std::to_string(pylon::system_clock_now());
    const auto start = Clock::now();
    for (const std::string& array : arrays) {
      pg_run_prepared(raw.get(), "raw_upsert_batch", {array.c_str(), "user", now.c_str()});
    }
    const double elapsed = seconds_since(start) / per_round;
    pg_exec(raw.get(), "TRUNCATE _pylon_sessions");
    return elapsed;
  };
  {
    SessionStore store = SessionStore::open(url);
    const auto pylon_round = [&](int threads) {
      const double elapsed = pg_seconds_per_create(store, threads, per_round);
      pg_exec(raw.get(), "TRUNCATE _pylon_sessions");
      return elapsed;
    };
    const Pair one = measure(settings.repetitions, [&] {
      return Pair{pylon_round(1), raw_round()};
    });
    row("create, PostgreSQL, 1 thread", one.pylon, one.raw, "vs raw prepared upsert");
    const Pair eight = measure(settings.repetitions, [&] {
      return Pair{pylon_round(kThreads), raw_round()};
    });
    row("create, PostgreSQL, 8 threads", eight.pylon, eight.raw, "vs raw 1 thread; group commit");
    const Pair batched = measure(settings.repetitions, [&] { return Pair{0, raw_batch_round()}; });
    note("raw limit beneath group commit: " + std::to_string(kThreads) +
         " rows per statement (unnest), 1 thread: " + human_time(batched.raw) + " per row");
  }

  const std::size_t rows = settings.quick ? 20000 : 200000;
  pg_exec(raw.get(),
          ("INSERT INTO _pylon_sessions (id, user_id, tenant_id, created_at, expires_at, "
           "last_seen_at, absolute_expires_at, device, ip, data, idp_session_id) "
           "SELECT encode(sha256(g::text::bytea), 'hex'), 'user-' || (g % 1000), NULL, "
           "extract(epoch FROM now())::bigint, extract(epoch FROM now())::bigint + 86400, "
           "extract(epoch FROM now())::bigint, extract(epoch FROM now())::bigint + 86400, "
           "'Mozilla/5.0', '203.0.113.7', '\\x7b7d'::bytea, NULL FROM generate_series(1, " +
           std::to_string(rows) + ") AS g")
              .c_str());
  pg_exec(raw.get(), "VACUUM ANALYZE _pylon_sessions");
  std::size_t bytes = 0;
  const Pair startup = measure(settings.quick ? 1 : 3, [&] {
    // The raw limit is the faster of the two ways to read every row: one result, or streamed.
    Pair result;
    auto start = Clock::now();
    if (raw_pg_scan(raw.get(), false, &bytes) != rows) die("raw scan count");
    result.raw = seconds_since(start);
    start = Clock::now();
    if (raw_pg_scan(raw.get(), true, &bytes) != rows) die("raw scan count");
    result.raw = std::min(result.raw, seconds_since(start));
    start = Clock::now();
    std::optional<SessionStore> store(SessionStore::open(url));
    result.pylon = seconds_since(start);
    if (store->size() != rows) die("start-up count");
    store.reset();
    return result;
  });
  row("start-up, PostgreSQL, " + std::to_string(rows) + " sessions", startup.pylon, startup.raw,
      "vs raw binary SELECT, each value read");
  pg_exec(raw.get(), "TRUNCATE _pylon_sessions");
}

// ------------------------------------------------------------------------------------------------
// rotate: the first rotations and the last ones of a long run, each next to the raw limit
// ------------------------------------------------------------------------------------------------

// The raw limit of one rotation: what SessionBackend::rotate does, as the library does it on
// SQLite, in one transaction: record the old id, copy the stored row under the new id, delete
// the old row.
constexpr const char* kRawRecordRotated =
    "INSERT INTO _pylon_rotated_ids (id, replaced_by, user_id, tenant_id, rotated_at, expires_at) "
    "SELECT id, ?2, user_id, tenant_id, ?3, absolute_expires_at FROM _pylon_sessions "
    "WHERE id = ?1 AND expires_at > ?3";
constexpr const char* kRawCopySuccessor =
    "INSERT INTO _pylon_sessions (id, user_id, tenant_id, created_at, expires_at, last_seen_at, "
    "absolute_expires_at, device, ip, data, idp_session_id) SELECT ?2, user_id, tenant_id, "
    "created_at, expires_at, last_seen_at, absolute_expires_at, device, ip, data, idp_session_id "
    "FROM _pylon_sessions WHERE id = ?1";
constexpr const char* kRawDeleteOld = "DELETE FROM _pylon_sessions WHERE id = ?1";

// `count` rotations of one chain of sessions through the store, and the same through raw
// statements on a second file; seconds per rotation of each.
void bench_rotate(const Settings& settings) {
  // synchronous=NORMAL, so that a million rotations take seconds, not minutes of fsyncs: what is
  // measured is whether a rotation gets slower as rotated ids pile up, not the disk.
  const std::size_t total = settings.quick ? 20000 : 1000000;
  const std::size_t window = settings.quick ? 1000 : 10000;
  const std::int64_t now = pylon::system_clock_now();
  const ScratchFile pylon_file(settings.dir, "rotate");
  const ScratchFile raw_file(settings.dir, "rotate-raw");
  pylon::SqliteOptions normal;
  normal.synchronous = pylon::SqliteSync::kNormal;
  { pylon::open_sqlite_backend(raw_file.path(), normal); }
  SessionStore store(pylon::open_sqlite_backend(pylon_file.path(), normal));
  std::string token = store.create("rotating-user").token;

  const RawSqlite raw = open_raw_sqlite(raw_file.path());
  sqlite_exec(raw.get(), "PRAGMA synchronous=NORMAL");
  const RawStatement upsert = prepare(raw.get(), kRawUpsert);
  const RawStatement record = prepare(raw.get(), kRawRecordRotated);
  const RawStatement copy = prepare(raw.get(), kRawCopySuccessor);
  const RawStatement remove = prepare(raw.get(), kRawDeleteOld);
  std::string raw_id = random_hex_id();
  raw_upsert(raw.get(), upsert.get(), raw_id, "rotating-user", now);
  const auto raw_rotate = [&] {
    const std::string next = random_hex_id();
    sqlite_exec(raw.get(), "BEGIN IMMEDIATE");
    for (sqlite3_stmt* statement : {record.get(), copy.get(), remove.get()}) {
      sqlite3_bind_text(statement, 1, raw_id.data(), static_cast<int>(raw_id.size()),
                        SQLITE_STATIC);
      if (statement != remove.get()) {
        sqlite3_bind_text(statement, 2, next.data(), static_cast<int>(next.size()), SQLITE_STATIC);
      }
      if (statement == record.get()) sqlite3_bind_int64(statement, 3, now);
      if (sqlite3_step(statement) != SQLITE_DONE) {
        die(std::string("raw rotate: ") + sqlite3_errmsg(raw.get()));
      }
      sqlite3_reset(statement);
    }
    sqlite_exec(raw.get(), "COMMIT");
    raw_id = next;
  };
  const auto pylon_rotate = [&] {
    std::optional<pylon::NewSession> next = store.rotate(token);
    if (!next) die("rotate found no session");
    token = std::move(next->token);
  };
  // Alternating windows of each side, so that drift on a noisy machine hits both.
  const auto timed_window = [&](const std::function<void()>& rotate_once) {
    const auto start = Clock::now();
    for (std::size_t i = 0; i < window; ++i) rotate_once();
    return seconds_since(start) / static_cast<double>(window);
  };
  const Pair first{timed_window(pylon_rotate), timed_window(raw_rotate)};
  for (std::size_t done = window; done + window < total; done += window) {
    timed_window(pylon_rotate);
    timed_window(raw_rotate);
  }
  const Pair last{timed_window(pylon_rotate), timed_window(raw_rotate)};
  row("rotate, first " + std::to_string(window) + " (synchronous=NORMAL)", first.pylon, first.raw,
      "vs the same 3 statements raw");
  row("rotate, last " + std::to_string(window) + " of " + std::to_string(total), last.pylon,
      last.raw, "same cost as the first");
  note("pylon last/first: " + std::to_string(last.pylon / first.pylon) +
       "x; raw last/first: " + std::to_string(last.raw / first.raw) + "x");
}

Settings parse_arguments(int argc, char** argv) {
  Settings settings;
  const std::vector<std::string> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    const auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) die(args[i] + " needs a value");
      return args[++i];
    };
    if (args[i] == "--quick") {
      settings.quick = true;
    } else if (args[i] == "--dir") {
      settings.dir = value();
    } else if (args[i] == "--postgres") {
      settings.postgres_url = value();
    } else if (args[i] == "--only") {
      settings.only = value();
    } else if (args[i] == "--rows") {
      settings.startup_rows = static_cast<std::size_t>(std::stoull(value()));
    } else {
      die("unknown argument " + args[i] +
          "; usage: pylon_bench [--quick] [--dir DIR] [--postgres URL] [--rows N] "
          "[--only SECTION]");
    }
  }
  if (settings.quick) {
    settings.repetitions = 1;
    settings.startup_rows = std::min<std::size_t>(settings.startup_rows, 20000);
  }
  return settings;
}

}  // namespace

int main(int argc, char** argv) {
  const Settings settings = parse_arguments(argc, argv);
  std::printf("pylon_bench%s: %u cores, files in %s, SQLite %s\n",
              settings.quick ? " --quick (smoke run; figures not meaningful)" : "",
              std::thread::hardware_concurrency(), settings.dir.c_str(), sqlite3_libversion());
  try {
    header();
    const auto wanted = [&settings](const char* section) {
      return settings.only.empty() || settings.only == section;
    };
    if (wanted("validate")) bench_validate(settings);
    if (wanted("create")) bench_create(settings);
    if (wanted("startup")) bench_startup_and_memory(settings);
    if (wanted("bulk")) bench_bulk_deletes(settings);
    if (wanted("rotate")) bench_rotate(settings);
    if (wanted("postgres") && !settings.postgres_url.empty()) bench_postgres(settings);
  } catch (const pylon::Error& error) {
    die(std::string("library error: ") + error.what());
  }
  return 0;
}

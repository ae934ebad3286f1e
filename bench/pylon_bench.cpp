// pylon_bench: what each library operation costs, next to the raw engine limit beneath it,
// measured in the same run on the same machine, with the ratio printed. The README's
// "Performance" table comes from this program (scripts/bench.sh runs it on a release build).
//
//   pylon_bench [--quick] [--dir DIR] [--postgres URL] [--rows N] [--sessions N]
//               [--only SECTION]
//
// --rows: the start-up section's rows; --sessions: the workload section's N (10,000).
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
//   writes     each write of the library (create, slide, update_data, rotate, revoke_user,
//              revoke) as the raw prepared statement(s) making the same change to its table, in
//              its own transaction, on a file opened the same way (WAL, synchronous FULL or
//              NORMAL); a rotation is three statements in one BEGIN IMMEDIATE ... COMMIT
//   mixed      8 threads creating, sliding (extend()), updating, rotating and revoking through
//              one store (group commit), against the writes section's raw statements making the
//              same changes from one thread, one commit each, on a file opened the same way (FULL)
//   start-up   one SELECT of every column of every row, each value read (sqlite3_column_*)
//   memory     RSS growth and heap in use per cached session, minus its field bytes
// The `workload` section has no raw column: it is the workload other session stores publish
// rates for (bench/peer/ runs it against better-sqlite3-session-store), as calls per second.
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
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <pylon/session_backend.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

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
  std::string only;  // one section: validate, create, startup, bulk, rotate, writes, workload,
                     // postgres
  std::size_t startup_rows = 1000000;
  std::size_t workload_sessions = 10000;  // the workload section's N (bench/peer/ takes the same)
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
// way the library opens it: WAL, `synchronous` as SqliteOptions::synchronous sets it, and at
// NORMAL a checkpoint every 10,000 pages.
RawSqlite open_raw_sqlite(const std::string& path,
                          pylon::SqliteSync synchronous = pylon::SqliteSync::kFull) {
  sqlite3* handle = nullptr;
  const int opened = sqlite3_open_v2(path.c_str(), &handle, SQLITE_OPEN_READWRITE, nullptr);
  RawSqlite db(handle);
  if (opened != SQLITE_OK) die("cannot open " + path);
  sqlite3_busy_timeout(db.get(), 5000);
  sqlite_exec(db.get(), "PRAGMA journal_mode=WAL");
  sqlite_exec(db.get(), synchronous == pylon::SqliteSync::kFull ? "PRAGMA synchronous=FULL"
                                                                : "PRAGMA synchronous=NORMAL");
  if (synchronous == pylon::SqliteSync::kNormal) {
    sqlite_exec(db.get(), "PRAGMA wal_autocheckpoint=10000");
  }
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
    "absolute_expires_at, device, ip, data, idp_session_id, authenticated_at, expiry_hour) "
    "VALUES (?1, ?2, NULL, ?3, ?4, ?3, ?4, NULL, NULL, x'', NULL, ?3, ?4 / 3600) "
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

// Every kind of write from 8 threads (defined with the writes section, whose raw statements it
// reuses).
void bench_mixed_writes(const Settings& settings);

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
  bench_mixed_writes(settings);
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
              "last_seen_at, absolute_expires_at, device, ip, data, idp_session_id, "
              "expiry_hour) VALUES (?1, ?2, NULL, ?3, ?4, ?3, ?4, ?5, ?6, ?7, NULL, ?4 / 3600)");
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
              "absolute_expires_at, device, ip, data, idp_session_id, authenticated_at, "
              "idle_timeout_seconds FROM _pylon_sessions");
  std::size_t bytes = 0;
  while (sqlite3_step(select.get()) == SQLITE_ROW) {
    for (int column = 0; column < 13; ++column) {
      if ((column >= 3 && column <= 6) || column >= 11) {
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
      // By the hour first, as the library's purge (migration 0006's index on expiry_hour).
      const std::string purge =
          "DELETE FROM _pylon_sessions WHERE expiry_hour <= " + std::to_string(now / 3600) +
          " AND expires_at <= " + std::to_string(now);
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

// "0.87x", as row() prints a ratio, for the notes of this section.
std::string pg_ratio_text(double ratio) {
  std::array<char, 16> text{};
  std::snprintf(text.data(), text.size(), "%.2fx", ratio);
  return text.data();
}

// seconds_per_create() for a store kept open across rounds while the table is emptied between
// them (its change feed may drop the earlier rounds' sessions from the cache meanwhile, as
// storage no longer holds them): each create of this round is checked to be in the cache. One
// thread runs on the caller's.
double pg_seconds_per_create(SessionStore& store, int threads, int creates) {
  const int per_thread = creates / threads;
  std::vector<std::vector<std::string>> ids(static_cast<std::size_t>(threads));
  const auto work = [&store, &ids, per_thread](std::size_t t) {
    for (int i = 0; i < per_thread; ++i) ids[t].push_back(store.create("user").session.id);
  };
  const auto start = Clock::now();
  if (threads == 1) {
    work(0);
  } else {
    std::vector<std::thread> workers;
    for (std::size_t t = 0; t < ids.size(); ++t) workers.emplace_back(work, t);
    for (std::thread& worker : workers) worker.join();
  }
  const double elapsed = seconds_since(start);
  for (const std::vector<std::string>& of_thread : ids) {
    for (const std::string& id : of_thread) {
      if (!store.find(id)) die("a create was lost");
    }
  }
  return elapsed / static_cast<double>(per_thread * threads);
}

// Reads every row of _pylon_sessions in binary format, each value touched (its bytes summed into
// `*bytes`), as one result or, with `single_row`, streamed as the library does. Returns the rows.
std::size_t raw_pg_scan(PGconn* connection, bool single_row, std::size_t* bytes) {
  const char* const select =
      "SELECT id, user_id, tenant_id, created_at, expires_at, last_seen_at, absolute_expires_at, "
      "device, ip, data, idp_session_id, authenticated_at, idle_timeout_seconds "
      "FROM _pylon_sessions";
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
      for (int column = 0; column < 13; ++column) {
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
      "last_seen_at, absolute_expires_at, device, ip, data, idp_session_id, authenticated_at) ";
  constexpr const char* kRawConflict =
      " ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, "
      "expires_at = excluded.expires_at, last_seen_at = excluded.last_seen_at";
  pg_prepare(raw.get(), "raw_upsert",
             (std::string(kRawColumns) +
              "VALUES ($1, $2, NULL, $3::bigint, $3::bigint + 86400, $3::bigint, "
              "$3::bigint + 86400, NULL, NULL, ''::bytea, NULL, $3::bigint)" +
              kRawConflict)
                 .c_str(),
             3);
  // What group commit can at best reach: the rows of one batch in one statement (the ids as an
  // array, unnested), one statement per round trip.
  pg_prepare(raw.get(), "raw_upsert_batch",
             (std::string(kRawColumns) +
              "SELECT unnest($1::text[]), $2, NULL, $3::bigint, $3::bigint + 86400, $3::bigint, "
              "$3::bigint + 86400, NULL, NULL, ''::bytea, NULL, $3::bigint" +
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
  // The raw upsert as an application without a store would run it: the rows below time it with
  // the store open, whose change feed then wakes on each raw NOTIFY and reads the log, on the
  // same two cores.
  const double raw_alone = measure(settings.repetitions, [&] { return Pair{0, raw_round()}; }).raw;
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
    note("raw prepared upsert with no store open (measured before it): " + human_time(raw_alone) +
         " per row, ratio " + pg_ratio_text(raw_alone / one.pylon));
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
  std::vector<double> fresh;  // the raw read as a start-up must make it: connect, then SELECT
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
    {
      const RawPg connection = connect_raw_pg(url);
      if (raw_pg_scan(connection.get(), true, &bytes) != rows) die("raw scan count");
    }
    fresh.push_back(seconds_since(start));
    start = Clock::now();
    std::optional<SessionStore> store(SessionStore::open(url));
    result.pylon = seconds_since(start);
    if (store->size() != rows) die("start-up count");
    store.reset();
    return result;
  });
  row("start-up, PostgreSQL, " + std::to_string(rows) + " sessions", startup.pylon, startup.raw,
      "vs raw binary SELECT, each value read");
  // A store's start-up is a new connection, whose server process reads the table for the first
  // time; the raw limit above reads it on a connection that has read it before.
  const double fresh_raw = median(fresh);
  note("raw on a new connection (connect, then the streamed SELECT): " + human_time(fresh_raw) +
       ", ratio " + pg_ratio_text(fresh_raw / startup.pylon));
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
    "absolute_expires_at, device, ip, data, idp_session_id, authenticated_at, "
    "idle_timeout_seconds, expiry_hour) SELECT ?2, user_id, tenant_id, created_at, expires_at, "
    "last_seen_at, absolute_expires_at, device, ip, data, idp_session_id, authenticated_at, "
    "idle_timeout_seconds, expiry_hour FROM _pylon_sessions WHERE id = ?1";
constexpr const char* kRawDeleteOld = "DELETE FROM _pylon_sessions WHERE id = ?1";

// The three statements of a raw rotation, prepared once on one connection.
class RawRotation {
 public:
  explicit RawRotation(sqlite3* db)
      : db_(db),
        record_(prepare(db, kRawRecordRotated)),
        copy_(prepare(db, kRawCopySuccessor)),
        remove_(prepare(db, kRawDeleteOld)) {}
  // Replaces the row `old_id` by a copy under `new_id`, recording `old_id` as rotated at `now`,
  // in one transaction.
  void rotate(const std::string& old_id, const std::string& new_id, std::int64_t now) {
    sqlite_exec(db_, "BEGIN IMMEDIATE");
    for (sqlite3_stmt* statement : {record_.get(), copy_.get(), remove_.get()}) {
      sqlite3_bind_text(statement, 1, old_id.data(), static_cast<int>(old_id.size()),
                        SQLITE_STATIC);
      if (statement != remove_.get()) {
        sqlite3_bind_text(statement, 2, new_id.data(), static_cast<int>(new_id.size()),
                          SQLITE_STATIC);
      }
      if (statement == record_.get()) sqlite3_bind_int64(statement, 3, now);
      if (sqlite3_step(statement) != SQLITE_DONE || sqlite3_changes(db_) != 1) {
        die(std::string("raw rotate: ") + sqlite3_errmsg(db_));
      }
      sqlite3_reset(statement);
    }
    sqlite_exec(db_, "COMMIT");
  }

 private:
  sqlite3* db_;
  RawStatement record_;
  RawStatement copy_;
  RawStatement remove_;
};

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

  const RawSqlite raw = open_raw_sqlite(raw_file.path(), pylon::SqliteSync::kNormal);
  const RawStatement upsert = prepare(raw.get(), kRawUpsert);
  RawRotation rotation(raw.get());
  std::string raw_id = random_hex_id();
  raw_upsert(raw.get(), upsert.get(), raw_id, "rotating-user", now);
  const auto raw_rotate = [&] {
    std::string new_id = random_hex_id();
    rotation.rotate(raw_id, new_id, now);
    raw_id = std::move(new_id);
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

// ------------------------------------------------------------------------------------------------
// The shape both write sections share: the workload other session stores are benchmarked on
// (about 5 sessions per user, a device string, 200 bytes of data), a manual clock, and both
// settings of SqliteOptions::synchronous
// ------------------------------------------------------------------------------------------------

constexpr std::size_t kSessionsPerUser = 5;
constexpr const char* kWorkloadDevice =
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

// 200 bytes of JSON-shaped session data; `variant` makes a second payload for update_data().
std::string workload_data(char variant) {
  std::string data = R"({"csrf":"8f14e45fceea167a5a36dedd4bea2543","theme":"dark","pad":")";
  data.append(200 - data.size() - 2, variant);
  data += "\"}";
  return data;
}

// The users of `sessions` sessions, kSessionsPerUser each: session i belongs to users[i / 5].
std::vector<std::string> workload_users(std::size_t sessions) {
  std::vector<std::string> users;
  for (std::size_t i = 0; i < sessions; i += kSessionsPerUser) {
    users.push_back("user-" + std::to_string(i / kSessionsPerUser));
  }
  return users;
}

// A clock the bench moves by hand, so that a slide falls due exactly when it is asked to.
class ManualClock {
 public:
  void advance(std::int64_t seconds) { *now_ += seconds; }
  std::int64_t now() const { return now_->load(); }
  StoreOptions options() const {
    StoreOptions options;
    options.clock = [now = now_] { return now->load(); };
    return options;
  }

 private:
  std::shared_ptr<std::atomic<std::int64_t>> now_ =
      std::make_shared<std::atomic<std::int64_t>>(pylon::system_clock_now());
};

struct Durability {
  pylon::SqliteSync synchronous;
  const char* name;
};
constexpr std::array<Durability, 2> kDurabilities{
    {{pylon::SqliteSync::kFull, "FULL"}, {pylon::SqliteSync::kNormal, "NORMAL"}}};

pylon::SqliteOptions sqlite_options(pylon::SqliteSync synchronous) {
  pylon::SqliteOptions options;
  options.synchronous = synchronous;
  return options;
}

// Runs call(0) ... call(count - 1); seconds per call.
template <typename Call>
double per_call(std::size_t count, Call&& call) {
  const auto start = Clock::now();
  for (std::size_t i = 0; i < count; ++i) call(i);
  return seconds_since(start) / static_cast<double>(count);
}

// ------------------------------------------------------------------------------------------------
// Every write, one at a time, at both settings, next to the raw statements doing the same change
// ------------------------------------------------------------------------------------------------

// The raw limits of the writes: each the prepared statement that makes the same change to the
// library's table, in its own (autocommit) transaction; a rotation is RawRotation's three.
constexpr const char* kRawInsert =
    "INSERT INTO _pylon_sessions (id, user_id, tenant_id, created_at, expires_at, last_seen_at, "
    "absolute_expires_at, device, ip, data, idp_session_id, authenticated_at, expiry_hour) "
    "VALUES (?1, ?2, NULL, ?3, ?4, ?3, ?5, ?6, NULL, ?7, NULL, ?3, ?4 / 3600)";
constexpr const char* kRawSlide =
    "UPDATE _pylon_sessions SET last_seen_at = ?2, expires_at = ?3 WHERE id = ?1";
constexpr const char* kRawUpdateData = "UPDATE _pylon_sessions SET data = ?2 WHERE id = ?1";
constexpr const char* kRawDeleteUser = "DELETE FROM _pylon_sessions WHERE user_id = ?1";

// Seconds per call of each write, one side of one round.
struct WriteTimes {
  double create = 0;
  double slide = 0;
  double update_data = 0;
  double rotate = 0;
  double revoke_user = 0;
  double revoke = 0;
};

struct WriteRow {
  const char* name;
  double WriteTimes::*seconds;
};
constexpr std::array<WriteRow, 6> kWriteRows{{
    {"create", &WriteTimes::create},
    {"slide (validate past touch_interval)", &WriteTimes::slide},
    {"update_data (200 B)", &WriteTimes::update_data},
    {"rotate", &WriteTimes::rotate},
    {"revoke_user (5 sessions)", &WriteTimes::revoke_user},
    {"revoke", &WriteTimes::revoke},
}};

// One round through the library: create every session, validate each once its slide is due,
// update its data, rotate it, then revoke_user() the first half of the users and revoke() each
// session of the other half. Dies if a call does not do what it should.
WriteTimes pylon_writes(const Settings& settings, pylon::SqliteSync synchronous,
                        const std::vector<std::string>& users) {
  const std::size_t sessions = users.size() * kSessionsPerUser;
  const ScratchFile file(settings.dir, "writes");
  ManualClock clock;
  SessionStore store(pylon::open_sqlite_backend(file.path(), sqlite_options(synchronous)),
                     clock.options());
  const std::string data = workload_data('a');
  const std::string new_data = workload_data('b');
  std::vector<std::string> tokens(sessions);
  WriteTimes seconds;
  seconds.create = per_call(sessions, [&](std::size_t i) {
    pylon::CreateOptions options;
    options.device = kWorkloadDevice;
    options.data = data;
    tokens[i] = store.create(users[i / kSessionsPerUser], std::move(options)).token;
  });
  clock.advance(StoreOptions{}.touch_interval.count() + 1);
  const std::uint64_t writes = store.stats().writes;
  seconds.slide = per_call(sessions, [&](std::size_t i) {
    if (!store.validate(tokens[i])) die("validate lost a session");
  });
  if (store.stats().writes - writes != sessions) die("a validate past the interval wrote no slide");
  seconds.update_data = per_call(sessions, [&](std::size_t i) {
    if (!store.update_data(tokens[i], new_data)) die("update_data lost a session");
  });
  seconds.rotate = per_call(sessions, [&](std::size_t i) {
    std::optional<pylon::NewSession> next = store.rotate(tokens[i]);
    if (!next) die("rotate lost a session");
    tokens[i] = std::move(next->token);
  });
  const std::size_t half = users.size() / 2;
  seconds.revoke_user = per_call(half, [&](std::size_t u) {
    if (store.revoke_user(users[u]) != kSessionsPerUser) die("revoke_user count");
  });
  const std::size_t first = half * kSessionsPerUser;
  seconds.revoke = per_call(sessions - first, [&](std::size_t i) {
    if (!store.revoke(tokens[first + i])) die("revoke found no session");
  });
  if (store.size() != 0) die("sessions left after the round");
  return seconds;
}

// step_raw: steps a write statement to its end, checks it changed `changes` rows, resets it.
void step_raw(sqlite3* db, sqlite3_stmt* statement, int changes) {
  if (sqlite3_step(statement) != SQLITE_DONE) die(std::string("raw write: ") + sqlite3_errmsg(db));
  if (sqlite3_changes(db) != changes) die("raw write changed an unexpected number of rows");
  sqlite3_reset(statement);
}

void bind_text(sqlite3_stmt* statement, int index, const std::string& text) {
  sqlite3_bind_text(statement, index, text.data(), static_cast<int>(text.size()), SQLITE_STATIC);
}

// The same round as raw statements on a file the library created, opened the same way. Ids are
// drawn before the clock starts (the library's side makes and hashes its tokens inside it).
WriteTimes raw_writes(const Settings& settings, pylon::SqliteSync synchronous,
                      const std::vector<std::string>& users) {
  const std::size_t sessions = users.size() * kSessionsPerUser;
  const ScratchFile file(settings.dir, "writes-raw");
  { pylon::open_sqlite_backend(file.path(), sqlite_options(synchronous)); }
  const RawSqlite db = open_raw_sqlite(file.path(), synchronous);
  const RawStatement insert = prepare(db.get(), kRawInsert);
  const RawStatement slide = prepare(db.get(), kRawSlide);
  const RawStatement update_data = prepare(db.get(), kRawUpdateData);
  const RawStatement delete_user = prepare(db.get(), kRawDeleteUser);
  const RawStatement delete_one = prepare(db.get(), kRawDeleteOld);
  RawRotation rotation(db.get());
  const std::string device = kWorkloadDevice;
  const std::string data = workload_data('a');
  const std::string new_data = workload_data('b');
  std::vector<std::string> ids;
  std::vector<std::string> successors;
  for (std::size_t i = 0; i < sessions; ++i) {
    ids.push_back(random_hex_id());
    successors.push_back(random_hex_id());
  }
  std::int64_t now = pylon::system_clock_now();
  const StoreOptions defaults;
  WriteTimes seconds;
  seconds.create = per_call(sessions, [&](std::size_t i) {
    bind_text(insert.get(), 1, ids[i]);
    bind_text(insert.get(), 2, users[i / kSessionsPerUser]);
    sqlite3_bind_int64(insert.get(), 3, now);
    sqlite3_bind_int64(insert.get(), 4, now + defaults.idle_timeout.count());
    sqlite3_bind_int64(insert.get(), 5, now + defaults.absolute_ttl.count());
    bind_text(insert.get(), 6, device);
    sqlite3_bind_blob(insert.get(), 7, data.data(), static_cast<int>(data.size()), SQLITE_STATIC);
    step_raw(db.get(), insert.get(), 1);
  });
  now += defaults.touch_interval.count() + 1;
  seconds.slide = per_call(sessions, [&](std::size_t i) {
    bind_text(slide.get(), 1, ids[i]);
    sqlite3_bind_int64(slide.get(), 2, now);
    sqlite3_bind_int64(slide.get(), 3, now + defaults.idle_timeout.count());
    step_raw(db.get(), slide.get(), 1);
  });
  seconds.update_data = per_call(sessions, [&](std::size_t i) {
    bind_text(update_data.get(), 1, ids[i]);
    sqlite3_bind_blob(update_data.get(), 2, new_data.data(), static_cast<int>(new_data.size()),
                      SQLITE_STATIC);
    step_raw(db.get(), update_data.get(), 1);
  });
  seconds.rotate = per_call(sessions, [&](std::size_t i) {
    rotation.rotate(ids[i], successors[i], now);
    ids[i] = successors[i];
  });
  const std::size_t half = users.size() / 2;
  seconds.revoke_user = per_call(half, [&](std::size_t u) {
    bind_text(delete_user.get(), 1, users[u]);
    step_raw(db.get(), delete_user.get(), static_cast<int>(kSessionsPerUser));
  });
  const std::size_t first = half * kSessionsPerUser;
  seconds.revoke = per_call(sessions - first, [&](std::size_t i) {
    bind_text(delete_one.get(), 1, ids[first + i]);
    step_raw(db.get(), delete_one.get(), 1);
  });
  return seconds;
}

void bench_writes(const Settings& settings) {
  for (const Durability& durability : kDurabilities) {
    const bool full = durability.synchronous == pylon::SqliteSync::kFull;
    const std::size_t sessions = settings.quick ? 50 : full ? 1000 : 5000;
    const std::vector<std::string> users = workload_users(sessions);
    std::vector<WriteTimes> pylon_runs;
    std::vector<WriteTimes> raw_runs;
    // Round 0 warms up (none in the smoke run: its figures mean nothing anyway).
    for (int round = settings.quick ? 1 : 0; round <= settings.repetitions; ++round) {
      WriteTimes pylon_side = pylon_writes(settings, durability.synchronous, users);
      WriteTimes raw_side = raw_writes(settings, durability.synchronous, users);
      if (round == 0) continue;
      pylon_runs.push_back(pylon_side);
      raw_runs.push_back(raw_side);
    }
    note("every write, one at a time, " + std::to_string(sessions) +
         " sessions (5 per user, a device, 200 B data), WAL + synchronous=" + durability.name +
         ":");
    for (const WriteRow& write : kWriteRows) {
      std::vector<double> pylon_seconds;
      std::vector<double> raw_seconds;
      for (const WriteTimes& run : pylon_runs) pylon_seconds.push_back(run.*write.seconds);
      for (const WriteTimes& run : raw_runs) raw_seconds.push_back(run.*write.seconds);
      row(std::string(write.name) + ", " + durability.name, median(pylon_seconds),
          median(raw_seconds), full ? "reported" : ">= 0.9x (issue 17)");
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Every kind of write from 8 threads at synchronous=FULL (group commit), against one thread of the
// raw statements making the same changes, one commit each
// ------------------------------------------------------------------------------------------------

// One cycle of the mix, on one session: create it (a device, 200 B of data), slide it (extend():
// the write validate() makes past touch_interval, made at once), update_data() it, rotate() it and
// revoke() the successor. Five writes.
constexpr std::size_t kMixedWritesPerCycle = 5;

// `threads` threads, each doing `cycles` cycles through one store on a fresh file at FULL; seconds
// per write. Dies if a write does not do what it should.
double seconds_per_mixed_write(const Settings& settings, std::size_t threads, std::size_t cycles) {
  const ScratchFile file(settings.dir, "mixed");
  SessionStore store(
      pylon::open_sqlite_backend(file.path(), sqlite_options(pylon::SqliteSync::kFull)));
  const std::string data = workload_data('a');
  const std::string new_data = workload_data('b');
  std::mutex failure_mutex;
  std::string failure;  // guarded by failure_mutex
  const auto start = Clock::now();
  std::vector<std::thread> workers;
  workers.reserve(threads);
  for (std::size_t t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      const std::string user = "mixed-user-" + std::to_string(t);
      try {
        for (std::size_t i = 0; i < cycles; ++i) {
          pylon::CreateOptions options;
          options.device = kWorkloadDevice;
          options.data = data;
          const std::string token = store.create(user, std::move(options)).token;
          if (!store.extend(token)) throw std::runtime_error("extend lost a session");
          if (!store.update_data(token, new_data)) {
            throw std::runtime_error("update_data lost a session");
          }
          const std::optional<pylon::NewSession> next = store.rotate(token);
          if (!next) throw std::runtime_error("rotate lost a session");
          if (!store.revoke(next->token)) throw std::runtime_error("revoke found no session");
        }
      } catch (const std::exception& error) {
        const std::lock_guard<std::mutex> lock(failure_mutex);
        failure = error.what();
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  const double elapsed = seconds_since(start);
  if (!failure.empty()) die("mixed writes: " + failure);
  if (store.size() != 0) die("mixed writes: sessions left after the round");
  return elapsed / static_cast<double>(threads * cycles * kMixedWritesPerCycle);
}

// The same cycles from one thread as raw prepared statements (those of the writes section) on a
// file the library created, opened the same way, each write its own commit; seconds per write.
double raw_seconds_per_mixed_write(const Settings& settings, std::size_t cycles) {
  const ScratchFile file(settings.dir, "mixed-raw");
  { pylon::open_sqlite_backend(file.path(), sqlite_options(pylon::SqliteSync::kFull)); }
  const RawSqlite db = open_raw_sqlite(file.path(), pylon::SqliteSync::kFull);
  const RawStatement insert = prepare(db.get(), kRawInsert);
  const RawStatement slide = prepare(db.get(), kRawSlide);
  const RawStatement update_data = prepare(db.get(), kRawUpdateData);
  const RawStatement delete_one = prepare(db.get(), kRawDeleteOld);
  RawRotation rotation(db.get());
  const std::string user = "mixed-user";
  const std::string device = kWorkloadDevice;
  const std::string data = workload_data('a');
  const std::string new_data = workload_data('b');
  std::vector<std::string> ids;
  std::vector<std::string> successors;
  for (std::size_t i = 0; i < cycles; ++i) {
    ids.push_back(random_hex_id());
    successors.push_back(random_hex_id());
  }
  const std::int64_t now = pylon::system_clock_now();
  const StoreOptions defaults;
  const auto start = Clock::now();
  for (std::size_t i = 0; i < cycles; ++i) {
    bind_text(insert.get(), 1, ids[i]);
    bind_text(insert.get(), 2, user);
    sqlite3_bind_int64(insert.get(), 3, now);
    sqlite3_bind_int64(insert.get(), 4, now + defaults.idle_timeout.count());
    sqlite3_bind_int64(insert.get(), 5, now + defaults.absolute_ttl.count());
    bind_text(insert.get(), 6, device);
    sqlite3_bind_blob(insert.get(), 7, data.data(), static_cast<int>(data.size()), SQLITE_STATIC);
    step_raw(db.get(), insert.get(), 1);
    bind_text(slide.get(), 1, ids[i]);
    sqlite3_bind_int64(slide.get(), 2, now);
    sqlite3_bind_int64(slide.get(), 3, now + defaults.idle_timeout.count());
    step_raw(db.get(), slide.get(), 1);
    bind_text(update_data.get(), 1, ids[i]);
    sqlite3_bind_blob(update_data.get(), 2, new_data.data(), static_cast<int>(new_data.size()),
                      SQLITE_STATIC);
    step_raw(db.get(), update_data.get(), 1);
    rotation.rotate(ids[i], successors[i], now);
    bind_text(delete_one.get(), 1, successors[i]);
    step_raw(db.get(), delete_one.get(), 1);
  }
  return seconds_since(start) / static_cast<double>(cycles * kMixedWritesPerCycle);
}

void bench_mixed_writes(const Settings& settings) {
  constexpr std::size_t kThreads = 8;
  const std::size_t cycles_per_thread = settings.quick ? 5 : 50;
  const Pair mixed = measure(settings.repetitions, [&] {
    return Pair{seconds_per_mixed_write(settings, kThreads, cycles_per_thread),
                raw_seconds_per_mixed_write(settings, kThreads * cycles_per_thread)};
  });
  row("mixed writes, SQLite file, FULL, 8 threads", mixed.pylon, mixed.raw,
      ">= 5x (group commit; vs raw 1 thread)");
  note(
      "mixed: each thread creates, slides (extend), updates the data of, rotates and revokes one "
      "session after another, " +
      std::to_string(kThreads * cycles_per_thread * kMixedWritesPerCycle) +
      " writes; raw: the same statements, one thread, one commit each; time per write");
}

// ------------------------------------------------------------------------------------------------
// The workload other session stores publish figures for, as rates per phase (bench/peer/ runs
// it against better-sqlite3-session-store and prints the same table)
// ------------------------------------------------------------------------------------------------

struct WorkloadRates {
  double create = 0;    // sessions per second
  double validate = 0;  // within touch_interval: no write
  double slide = 0;     // validate once the slide is due: one write each
  double revoke = 0;    // every other session
  double restart = 0;   // rows per second of reopening the store (the load of the rest)
};

struct WorkloadRow {
  const char* name;
  double WorkloadRates::*rate;
};
constexpr std::array<WorkloadRow, 5> kWorkloadRows{{
    {"create", &WorkloadRates::create},
    {"validate", &WorkloadRates::validate},
    {"slide (validate past touch_interval)", &WorkloadRates::slide},
    {"revoke (half)", &WorkloadRates::revoke},
    {"restart, rows/s (reopen, load the rest)", &WorkloadRates::restart},
}};

WorkloadRates run_workload(const Settings& settings, pylon::SqliteSync synchronous,
                           std::size_t sessions) {
  const std::vector<std::string> users = workload_users(sessions);
  const ScratchFile file(settings.dir, "workload");
  ManualClock clock;
  std::optional<SessionStore> store(
      std::in_place, pylon::open_sqlite_backend(file.path(), sqlite_options(synchronous)),
      clock.options());
  const std::string data = workload_data('a');
  std::vector<std::string> tokens(sessions);
  const auto rate = [](double seconds_per_call) { return 1 / seconds_per_call; };
  WorkloadRates rates;
  rates.create = rate(per_call(sessions, [&](std::size_t i) {
    pylon::CreateOptions options;
    options.device = kWorkloadDevice;
    options.data = data;
    tokens[i] = store->create(users[i / kSessionsPerUser], std::move(options)).token;
  }));
  const std::uint64_t writes = store->stats().writes;
  rates.validate = rate(per_call(sessions, [&](std::size_t i) {
    if (!store->validate(tokens[i])) die("validate lost a session");
  }));
  if (store->stats().writes != writes) die("a validate within touch_interval wrote");
  clock.advance(StoreOptions{}.touch_interval.count() + 1);
  rates.slide = rate(per_call(sessions, [&](std::size_t i) {
    if (!store->validate(tokens[i])) die("validate lost a session");
  }));
  if (store->stats().writes - writes != sessions) {
    die("a validate past the interval wrote no slide");
  }
  rates.revoke = rate(per_call(sessions / 2, [&](std::size_t i) {
    if (!store->revoke(tokens[2 * i])) die("revoke found no session");
  }));
  store.reset();  // the restart: its teardown is not timed, the reopening and load are
  const auto start = Clock::now();
  store.emplace(pylon::open_sqlite_backend(file.path(), sqlite_options(synchronous)),
                clock.options());
  rates.restart = static_cast<double>(store->size()) / seconds_since(start);
  if (store->size() != sessions - sessions / 2) die("restart count");
  return rates;
}

// 12345.6 -> "12,346"
std::string with_commas(double value) {
  std::string digits = std::to_string(std::llround(value));
  for (std::size_t i = digits.size(); i > 3; i -= 3) digits.insert(i - 3, ",");
  return digits;
}

void bench_workload(const Settings& settings) {
  const std::size_t sessions = settings.quick ? 200 : settings.workload_sessions;
  const int repetitions = settings.quick ? 1 : 3;
  std::array<WorkloadRates, kDurabilities.size()> medians{};
  for (std::size_t d = 0; d < kDurabilities.size(); ++d) {
    std::vector<WorkloadRates> runs;
    for (int round = settings.quick ? 1 : 0; round <= repetitions; ++round) {  // 0 warms up
      WorkloadRates rates = run_workload(settings, kDurabilities[d].synchronous, sessions);
      if (round > 0) runs.push_back(rates);
    }
    for (const WorkloadRow& phase : kWorkloadRows) {
      std::vector<double> values;
      for (const WorkloadRates& run : runs) values.push_back(run.*phase.rate);
      medians[d].*phase.rate = median(values);
    }
  }
  std::printf(
      "\nworkload: %zu sessions, %zu per user, a device string and %zu B of data; create "
      "each, validate each,\nvalidate each past touch_interval (each writes its slide), "
      "revoke half, reopen and load the rest;\none call at a time; median of %d runs, "
      "calls per second\n",
      sessions, kSessionsPerUser, workload_data('a').size(), repetitions);
  std::printf("| %-40s | %22s | %22s |\n", "phase", "WAL + synchronous=FULL",
              "WAL + synchronous=NORMAL");
  for (const WorkloadRow& phase : kWorkloadRows) {
    std::printf("| %-40s | %22s | %22s |\n", phase.name,
                with_commas(medians[0].*phase.rate).c_str(),
                with_commas(medians[1].*phase.rate).c_str());
  }
  std::printf("\n");
  std::fflush(stdout);
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
    } else if (args[i] == "--sessions") {
      settings.workload_sessions = static_cast<std::size_t>(std::stoull(value()));
      if (settings.workload_sessions < 2) die("--sessions needs at least 2");
    } else {
      die("unknown argument " + args[i] +
          "; usage: pylon_bench [--quick] [--dir DIR] [--postgres URL] [--rows N] "
          "[--sessions N] [--only SECTION]");
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
    if (wanted("writes")) bench_writes(settings);
    if (wanted("workload")) bench_workload(settings);
    if (wanted("postgres") && !settings.postgres_url.empty()) bench_postgres(settings);
  } catch (const pylon::Error& error) {
    die(std::string("library error: ") + error.what());
  }
  return 0;
}

// Measures how long one reaper batch holds the SQLite write lock while 1,000,000 expired sessions
// are purged, the figure the README states for StoreOptions::reaper_batch_size.
//
//   build/release/bench/reaper_hold [ROWS] [BATCH]      (defaults: 1000000 and 1000)
//
// It fills a fresh file (synchronous=FULL, as the library opens it) with expired rows through
// raw SQLite in one transaction, then calls SessionBackend::remove_expired_batch() until nothing
// is left, timing each call: each call is one DELETE statement and one commit, so its duration
// bounds how long the write lock was held. Prints the median, p99 and maximum.
#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <memory>
#include <pylon/session_backend.hpp>
#include <string>
#include <vector>

namespace {

struct ConnectionCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close(db); }
};
struct StatementFinalizer {
  void operator()(sqlite3_stmt* statement) const noexcept { sqlite3_finalize(statement); }
};

// Inserts `rows` sessions that expired at Unix second 2, spread over 1,000 users.
bool fill_with_expired_rows(const std::string& path, std::int64_t rows) {
  sqlite3* raw = nullptr;
  const int opened = sqlite3_open(path.c_str(), &raw);
  const std::unique_ptr<sqlite3, ConnectionCloser> db(raw);
  if (opened != SQLITE_OK) return false;
  sqlite3_stmt* raw_insert = nullptr;
  if (sqlite3_prepare_v2(db.get(),
                         "INSERT INTO _pylon_sessions (id, user_id, created_at, expires_at, "
                         "last_seen_at, absolute_expires_at) VALUES (printf('%064x', ?1), "
                         "'user-' || (?1 % 1000), 1, 2, 1, 2)",
                         -1, &raw_insert, nullptr) != SQLITE_OK) {
    return false;
  }
  const std::unique_ptr<sqlite3_stmt, StatementFinalizer> insert(raw_insert);
  if (sqlite3_exec(db.get(), "BEGIN", nullptr, nullptr, nullptr) != SQLITE_OK) return false;
  for (std::int64_t i = 0; i < rows; ++i) {
    sqlite3_bind_int64(insert.get(), 1, i);
    if (sqlite3_step(insert.get()) != SQLITE_DONE) return false;
    sqlite3_reset(insert.get());
  }
  return sqlite3_exec(db.get(), "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK;
}

}  // namespace

int main(int argc, char** argv) {
  // NOLINTNEXTLINE(cppcoreguidelines-pro-bounds-pointer-arithmetic): main()'s argv
  const std::vector<std::string> args(argv, argv + argc);
  const std::int64_t rows = args.size() > 1 ? std::stoll(args[1]) : 1'000'000;
  const std::size_t batch = args.size() > 2 ? std::stoul(args[2]) : 1000;
  const std::string path = "reaper_hold.db";
  const auto remove_files = [&path] {
    for (const char* suffix : {"", "-wal", "-shm"}) {
      static_cast<void>(std::remove((path + suffix).c_str()));  // absent is fine
    }
  };
  remove_files();

  try {
    pylon::open_sqlite_backend(path);  // creates the schema
    if (!fill_with_expired_rows(path, rows)) {
      std::cerr << "reaper_hold: could not fill " << path << '\n';
      return 1;
    }
    const std::unique_ptr<pylon::SessionBackend> backend = pylon::open_sqlite_backend(path);
    std::vector<double> hold_ms;
    std::size_t purged = 0;
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      const auto before = std::chrono::steady_clock::now();
      const std::size_t removed = backend->remove_expired_batch(100, batch);
      hold_ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - before)
              .count());
      purged += removed;
      if (removed < batch) break;
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::sort(hold_ms.begin(), hold_ms.end());
    std::cout << std::fixed << std::setprecision(1) << "purged " << purged << " rows in "
              << hold_ms.size() << " statements of at most " << batch << " rows, " << seconds
              << " s in all; hold per statement: median " << hold_ms[hold_ms.size() / 2]
              << " ms, p99 " << hold_ms[hold_ms.size() * 99 / 100] << " ms, max " << hold_ms.back()
              << " ms\n";
  } catch (const pylon::Error& error) {
    std::cerr << "reaper_hold: " << error.what() << '\n';
    return 1;
  }
  remove_files();
  return 0;
}

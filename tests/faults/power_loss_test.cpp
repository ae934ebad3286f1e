// Power loss under the SQLite backend ("Nothing lost under faults"). The library opens
// its file through the process's default VFS; these tests make PowerLossVfs that default, so the
// library's own connection runs on a disk whose unsynced writes vanish (or tear, sector by sector)
// when the power goes at a chosen xWrite/xTruncate/xSync call.
//
// What they promise, for a create, a revoke and a rotation, at every crash point of the operation
// (found by a dry run that counts its I/O calls) and just after it returns, with the unsynced
// writes dropped and torn with three seeds:
//   - the database is never corrupt (PRAGMA integrity_check) and the store reopens;
//   - what is found is the state after some prefix of the operations, the one in flight whole or
//     absent: never half a rotation, never a row no operation wrote;
//   - synchronous=FULL: that prefix holds every acknowledged operation (every acknowledged create
//     validates, every acknowledged revoke stays revoked, a rotated-away token is invalid and its
//     acknowledged successor valid), and nothing is left unsynced when a write returns;
//   - synchronous=NORMAL, the README's trade-off: only operations acknowledged after the last
//     sync may be rolled back, and some are: the sweep must see an acknowledged login lost, a
//     revoked session back, or a rotation undone, else NORMAL was secretly FULL.
// The reopened store is checked row for row against the table, read with raw SQL.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "faults/power_loss_vfs.hpp"
#include "session_backend.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::SqliteSync;
using pylon::test::PowerCut;
using pylon::test::PowerLossVfs;

// ------------------------------------------------------------------------------------------------
// The VFS itself: it must lose what was not synced and keep what was, or the sweeps prove nothing
// ------------------------------------------------------------------------------------------------

// A plain sqlite3 connection through whatever VFS is the default now.
class Connection {
 public:
  explicit Connection(const std::string& path) {
    const int opened =
        sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
    if (opened != SQLITE_OK) ADD_FAILURE() << "cannot open " << path << ": " << opened;
  }
  ~Connection() { sqlite3_close_v2(db_); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  Connection(Connection&&) = delete;
  Connection& operator=(Connection&&) = delete;

  int exec(const std::string& sql) {
    return sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr);
  }

 private:
  sqlite3* db_ = nullptr;
};

TEST(PowerLossVfs, KeepsSyncedCommitsAndLosesUnsyncedOnes) {
  pylon::test::TempDir dir;
  const std::string path = dir.file("vfs.db");
  {
    PowerLossVfs vfs;
    {
      Connection db(path);
      ASSERT_EQ(db.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;"
                        "CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1);"),
                SQLITE_OK);
      EXPECT_EQ(vfs.unsynced_operations(), 0U) << "FULL must sync the WAL at every commit";
      // With synchronous=OFF SQLite never syncs: this commit stays in the VFS's RAM only.
      ASSERT_EQ(db.exec("PRAGMA synchronous = OFF; INSERT INTO t VALUES (2);"), SQLITE_OK);
      EXPECT_GT(vfs.unsynced_operations(), 0U);
      vfs.power_off(PowerCut::kDropUnsynced);
      EXPECT_NE(db.exec("INSERT INTO t VALUES (3);"), SQLITE_OK) << "no I/O without power";
    }
    ASSERT_EQ(vfs.open_files(), 0U);
    vfs.restart();
  }
  pylon::test::RawDb raw(path);  // the plain unix VFS again
  EXPECT_EQ(raw.query_int("SELECT group_concat(v) = '1' FROM t"), 1)
      << "row 1 was synced, row 2 never was";
  EXPECT_EQ(raw.query_text("PRAGMA integrity_check"), "ok");
}

TEST(PowerLossVfs, ArmedCallAndEveryLaterOneFail) {
  pylon::test::TempDir dir;
  PowerLossVfs vfs;
  Connection db(dir.file("armed.db"));
  ASSERT_EQ(db.exec("PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER);"), SQLITE_OK);
  vfs.arm(0, PowerCut::kDropUnsynced);
  ASSERT_EQ(db.exec("INSERT INTO t VALUES (1);"), SQLITE_OK);
  const std::uint64_t calls = vfs.mutating_calls();
  ASSERT_GE(calls, 2U) << "a WAL commit writes at least one frame and syncs";
  vfs.arm(calls, PowerCut::kDropUnsynced);  // the commit's last call: its sync
  EXPECT_NE(db.exec("INSERT INTO t VALUES (2);"), SQLITE_OK);
  EXPECT_TRUE(vfs.powered_off());
  EXPECT_EQ(vfs.mutating_calls(), calls) << "the power went at the armed call, not before";
  EXPECT_NE(db.exec("SELECT count(*) FROM t;"), SQLITE_OK);
}

TEST(PowerLossVfs, TornWritesReachTheDiskSectorBySector) {
  pylon::test::TempDir dir;
  // One unsynced write of 4096 bytes at offset 100: nine pieces, cut at 512-byte boundaries.
  const std::string block(4096, '\xab');
  constexpr sqlite3_int64 kOffset = 100;
  std::size_t mixed = 0;
  for (std::uint32_t seed = 1; seed <= 8; ++seed) {
    const std::string path = dir.file("torn" + std::to_string(seed) + ".db");
    PowerLossVfs vfs(seed);
    sqlite3_vfs* default_vfs = sqlite3_vfs_find(nullptr);
    std::vector<std::max_align_t> storage(
        static_cast<std::size_t>(default_vfs->szOsFile) / sizeof(std::max_align_t) + 1);
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): a VFS file is a C struct
    auto* file = reinterpret_cast<sqlite3_file*>(storage.data());
    ASSERT_EQ(default_vfs->xOpen(default_vfs, path.c_str(), file,
                                 SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_CREATE | SQLITE_OPEN_READWRITE,
                                 nullptr),
              SQLITE_OK);
    ASSERT_EQ(file->pMethods->xWrite(file, block.data(), static_cast<int>(block.size()), kOffset),
              SQLITE_OK);
    vfs.power_off(PowerCut::kTearUnsynced);
    file->pMethods->xClose(file);
    vfs.restart();
    EXPECT_EQ(vfs.torn_pieces_applied() + vfs.torn_pieces_dropped(), 9U);

    // Each piece is on disk whole or not at all, and nothing outside the write changed.
    const std::string on_disk = pylon::test::read_file_bytes(path);
    std::size_t applied = 0;
    for (sqlite3_int64 at = kOffset; at < kOffset + 4096; at = (at / 512 + 1) * 512) {
      const auto from = static_cast<std::size_t>(at);
      const std::size_t length = static_cast<std::size_t>(
          std::min<sqlite3_int64>((at / 512 + 1) * 512, kOffset + 4096) - at);
      const std::string piece = from < on_disk.size() ? on_disk.substr(from, length) : "";
      if (piece == std::string(length, '\xab')) {
        ++applied;
      } else {
        EXPECT_EQ(piece.find_first_not_of('\0'), std::string::npos)
            << "piece at " << at << " is neither written nor untouched";
      }
    }
    EXPECT_EQ(
        on_disk.substr(0, std::min<std::size_t>(on_disk.size(), kOffset)).find_first_not_of('\0'),
        std::string::npos);
    EXPECT_EQ(applied, vfs.torn_pieces_applied());
    if (applied > 0 && applied < 9) ++mixed;
  }
  EXPECT_GT(mixed, 0U) << "over 8 seeds some restart must apply part of the write and drop part";
}

// ------------------------------------------------------------------------------------------------
// The sweeps
// ------------------------------------------------------------------------------------------------

// A fresh directory on tmpfs (/dev/shm) when there is one, else under /tmp; removed with its
// content. The sweeps make several hundred databases: PowerLossVfs alone decides what survives a
// cut, so the real fsync beneath it needs no real disk, and on tmpfs it costs nothing.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp");
    pattern += "/pylon-power-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::system_error(errno, std::generic_category(), "mkdtemp " + pattern);
    }
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  ScratchDir(ScratchDir&&) = delete;
  ScratchDir& operator=(ScratchDir&&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// kCreateBatch: three sessions in one SessionBackend::save_batch, the one transaction in which
// the store's group commit writes the creates of concurrent callers (driven directly, so its I/O
// calls are the same in every run).
enum class Operation { kCreate, kRevoke, kRotate, kCreateBatch };

struct SweepCase {
  Operation operation;
  SqliteSync sync;
  // wal_autocheckpoint = 1 on the library's connection: every commit also checkpoints, which
  // stands in for the WAL reaching its 1000-page threshold, so the crash points of a checkpoint
  // (WAL sync, database writes, database sync, truncate) are swept too.
  bool checkpoint_every_commit;
};

const char* operation_name(Operation operation) {
  switch (operation) {
    case Operation::kCreate:
      return "create";
    case Operation::kRevoke:
      return "revoke";
    case Operation::kRotate:
      return "rotate";
    case Operation::kCreateBatch:
      return "create_batch";
  }
  return "?";
}

std::string case_name(const ::testing::TestParamInfo<SweepCase>& info) {
  const SweepCase& c = info.param;
  std::string name = c.sync == SqliteSync::kFull ? "full_" : "normal_";
  name += operation_name(c.operation);
  if (c.checkpoint_every_commit) name += "_checkpointing";
  return name;
}

// gtest shows a case by its name (found by argument-dependent lookup).
void PrintTo(const SweepCase& sweep_case, std::ostream* os) { *os << case_name({sweep_case, 0}); }

using Rows = std::map<std::string, std::string>;  // id -> data, the content of _pylon_sessions

// One operation of a run, as the test saw it.
struct Step {
  std::string label;
  std::vector<std::string> removes;  // ids it deletes
  // Rows it inserts, id -> data. An empty id is a row whose id the test cannot know (a create or
  // rotation that did not return); a step has at most one.
  std::vector<std::pair<std::string, std::string>> adds;
  bool acknowledged = false;  // the call returned
  bool durable = false;       // nothing was left unsynced when it returned
};

void apply(const Step& step, Rows* rows) {
  for (const std::string& id : step.removes) rows->erase(id);
  for (const auto& [id, data] : step.adds) (*rows)[id] = data;
}

// Whether `found` is `before` with the in-flight `step` applied, whatever id its unknown row got.
bool matches_in_flight(Rows before, const Step& step, const Rows& found) {
  for (const std::string& id : step.removes) before.erase(id);
  const std::string* unknown_data = nullptr;
  for (const auto& [id, data] : step.adds) {
    if (id.empty()) {
      unknown_data = &data;
    } else {
      before[id] = data;
    }
  }
  if (unknown_data == nullptr) return found == before;
  if (found.size() != before.size() + 1) return false;
  for (const auto& [id, data] : found) {
    if (before.count(id) != 0) {
      if (before.at(id) != data) return false;
    } else if (data != *unknown_data ||
               std::find(step.removes.begin(), step.removes.end(), id) != step.removes.end()) {
      // A rotation's new row has a new id: the old row left in place is no successor.
      return false;
    }
  }
  return true;
}

// What one run (one crash point, one kind of cut) found after the reboot.
struct RunResult {
  std::uint64_t operation_calls = 0;  // write/truncate/sync calls the operation made before the cut
  bool crashed_inside = false;        // the power went during the operation
  bool acknowledged = false;          // the operation returned
  std::size_t acknowledged_steps = 0;
  std::size_t durable_steps = 0;    // the prefix that must survive: up to the last synced ack
  std::optional<std::size_t> kept;  // acknowledged steps found (the matched prefix)
  bool in_flight_kept = false;      // the operation, unacknowledged, was found applied
  std::size_t torn_applied = 0;
  std::size_t torn_dropped = 0;
};

class CrashRun {
 public:
  CrashRun(const SweepCase& sweep_case, std::uint64_t crash_at, PowerCut cut, std::uint32_t seed)
      : case_(sweep_case), crash_at_(crash_at), cut_(cut), seed_(seed) {}

  // crash_at 0: the power goes right after the operation returns (or throws).
  RunResult execute() {
    const std::string path = dir_.path() + "/power.db";
    wal_path_ = path + "-wal";
    pylon::SqliteOptions sqlite;
    sqlite.synchronous = case_.sync;
    RunResult result;
    // Before any connection opens: the spy hands over the library's connection for
    // checkpoint_every_commit().
    pylon::test::ConnectionSpy::install();
    {
      PowerLossVfs vfs(seed_);
      // First life of the process: ends with a clean close, after which everything is synced.
      {
        pylon::SessionStore store(pylon::open_sqlite_backend(path, sqlite));
        create(&store, &vfs, "s0");
        create(&store, &vfs, "x");
        revoke(&store, &vfs, "x");
      }
      EXPECT_EQ(vfs.unsynced_operations(), 0U) << "a clean close must leave nothing unsynced";
      for (Step& step : steps_) step.durable = true;

      // Second life: a few operations, then the one under test, and the power goes.
      {
        pylon::SessionStore store(pylon::open_sqlite_backend(path, sqlite));
        // A third connection, as the batch writer (the store has two: its backend's and its
        // change feed's); opened before the count starts.
        std::unique_ptr<pylon::SessionBackend> batch_backend;
        if (case_.operation == Operation::kCreateBatch) {
          batch_backend = pylon::open_sqlite_backend(path, sqlite);
        }
        if (case_.checkpoint_every_commit) checkpoint_every_commit(path, batch_backend ? 3 : 2);
        create(&store, &vfs, "s1");
        create(&store, &vfs, "s2");
        create(&store, &vfs, "s3");
        revoke(&store, &vfs, "s2");
        if (::testing::Test::HasFailure()) return result;

        vfs.arm(crash_at_, cut_);
        switch (case_.operation) {
          case Operation::kCreate:
            create(&store, &vfs, "s4");
            break;
          case Operation::kRevoke:
            revoke(&store, &vfs, "s1");
            break;
          case Operation::kRotate:
            rotate(&store, &vfs, "s3", "s3'");
            break;
          case Operation::kCreateBatch:
            create_batch(batch_backend.get(), &vfs, {"b1", "b2", "b3"});
            break;
        }
        result.crashed_inside = vfs.powered_off();
        result.operation_calls = vfs.mutating_calls();
        result.acknowledged = steps_.back().acknowledged;
        if (!vfs.powered_off()) vfs.power_off(cut_);
      }  // the store dies without power: its errors are swallowed by design
      EXPECT_EQ(vfs.open_files(), 0U) << "the store must close its connection even without power";
      if (vfs.open_files() != 0) return result;
      vfs.restart();
      result.torn_applied = vfs.torn_pieces_applied();
      result.torn_dropped = vfs.torn_pieces_dropped();
    }  // the VFS is unregistered: what follows reads the real files through the unix VFS

    for (const Step& step : steps_) {
      if (!step.acknowledged) continue;
      ++result.acknowledged_steps;
      if (step.durable) result.durable_steps = result.acknowledged_steps;
    }
    verify(path, &result);
    return result;
  }

 private:
  // Runs one store call as a Step; a call that throws stays unacknowledged (in flight).
  template <typename Call>
  void record(Step step, PowerLossVfs* vfs, Call&& call) {
    try {
      call(&step);
      step.acknowledged = true;
      // Durable when the WAL holds nothing unsynced: the commit's frames reached the disk. (A
      // checkpoint's unsynced database writes copy frames that are already durable in the WAL.)
      const std::optional<std::size_t> unsynced = vfs->unsynced_operations_of(wal_path_);
      EXPECT_TRUE(unsynced.has_value()) << "the VFS never saw " << wal_path_;
      step.durable = unsynced.value_or(1) == 0;
    } catch (const pylon::Error& error) {
      EXPECT_TRUE(vfs->powered_off())
          << step.label << " failed with the power on: " << error.what();
    }
    steps_.push_back(std::move(step));
  }

  void create(pylon::SessionStore* store, PowerLossVfs* vfs, const std::string& name) {
    Step step;
    step.label = "create " + name;
    step.adds.emplace_back("", "data of " + name);
    record(std::move(step), vfs, [&](Step* s) {
      pylon::CreateOptions options;
      options.data = s->adds.front().second;
      const pylon::NewSession created = store->create("user-" + name, options);
      s->adds.front().first = created.session.id;
      tokens_[name] = created.token;
    });
  }

  void revoke(pylon::SessionStore* store, PowerLossVfs* vfs, const std::string& name) {
    Step step;
    step.label = "revoke " + name;
    step.removes.push_back(pylon::session_id_for_token(tokens_.at(name)));
    record(std::move(step), vfs,
           [&](Step* s) { EXPECT_TRUE(store->revoke(tokens_.at(name))) << s->label; });
  }

  void rotate(pylon::SessionStore* store, PowerLossVfs* vfs, const std::string& name,
              const std::string& successor) {
    Step step;
    step.label = "rotate " + name;
    step.removes.push_back(pylon::session_id_for_token(tokens_.at(name)));
    step.adds.emplace_back("", "data of " + name);
    record(std::move(step), vfs, [&](Step* s) {
      const std::optional<pylon::NewSession> rotated = store->rotate(tokens_.at(name));
      ASSERT_TRUE(rotated.has_value()) << s->label;
      s->adds.front().first = rotated->session.id;
      tokens_[successor] = rotated->token;
    });
  }

  void create_batch(pylon::SessionBackend* backend, PowerLossVfs* vfs,
                    const std::vector<std::string>& names) {
    Step step;
    step.label = "save_batch";
    std::vector<pylon::Session> sessions;
    const std::int64_t now = pylon::system_clock_now();
    for (const std::string& name : names) {
      tokens_[name] = pylon::generate_token();
      pylon::Session session;
      session.id = pylon::session_id_for_token(tokens_[name]);
      session.user_id = "user-" + name;
      session.created_at = now;
      session.last_seen_at = now;
      session.expires_at = now + 3600;
      session.absolute_expires_at = now + 86400;
      session.data = "data of " + name;
      step.adds.emplace_back(session.id, session.data);
      sessions.push_back(std::move(session));
    }
    record(std::move(step), vfs, [&](Step* /*step*/) { backend->save_batch(sessions); });
  }

  // On each of the library's `expected` connections to `path`.
  static void checkpoint_every_commit(const std::string& path, std::size_t expected) {
    const std::vector<sqlite3*> connections = pylon::test::ConnectionSpy::open_connections_to(path);
    ASSERT_EQ(connections.size(), expected) << "the library's connections";
    for (sqlite3* connection : connections) {
      ASSERT_EQ(sqlite3_wal_autocheckpoint(connection, 1), SQLITE_OK);
    }
  }

  // Reopens the file with a fresh store and the plain VFS; finds which prefix of steps_ it holds.
  void verify(const std::string& path, RunResult* result) {
    std::optional<pylon::SessionStore> store;
    try {
      store.emplace(pylon::open_sqlite_backend(path));
    } catch (const pylon::Error& error) {
      ADD_FAILURE() << "the store does not reopen after the power loss: " << error.what();
      return;
    }
    pylon::test::RawDb raw(path);
    EXPECT_EQ(raw.query_text("PRAGMA integrity_check"), "ok");
    Rows found;
    for (const pylon::test::SqlRow& row : raw.query("SELECT id, data FROM _pylon_sessions")) {
      found[row.at(0).value_or("")] = row.at(1).value_or("");
    }
    raw.close();

    // The reloaded cache equals the table, row for row.
    EXPECT_EQ(store->size(), found.size());
    for (const auto& [id, data] : found) {
      const std::optional<pylon::Session> cached = store->find(id);
      EXPECT_TRUE(cached.has_value() && cached->data == data) << "row " << id << " not in cache";
    }

    // Which prefix of the acknowledged steps (plus, maybe, the one in flight) is this?
    std::vector<Rows> prefixes(1);
    for (const Step& step : steps_) {
      if (!step.acknowledged) continue;
      prefixes.push_back(prefixes.back());
      apply(step, &prefixes.back());
    }
    const Step& last = steps_.back();
    Rows kept_rows;
    if (!last.acknowledged && matches_in_flight(prefixes.back(), last, found)) {
      result->kept = prefixes.size() - 1;
      result->in_flight_kept = true;
      kept_rows = found;
    } else {
      for (std::size_t p = prefixes.size(); p-- > 0;) {
        if (prefixes[p] == found) {
          result->kept = p;
          kept_rows = found;
          break;
        }
      }
    }
    if (!result->kept) {
      std::string listed;
      for (const auto& [id, data] : found) listed += "\n  " + id.substr(0, 12) + " " + data;
      ADD_FAILURE() << "the table is no prefix of the operations (a torn transaction?):" << listed;
      return;
    }

    // Every token the test knows validates exactly when its row is there: acknowledged creates
    // and successors live, revoked and rotated-away ones do not.
    for (const auto& [name, token] : tokens_) {
      const bool stored = kept_rows.count(pylon::session_id_for_token(token)) != 0;
      EXPECT_EQ(store->validate(token).has_value(), stored) << "token of " << name;
    }
  }

  SweepCase case_;
  std::uint64_t crash_at_;
  PowerCut cut_;
  std::uint32_t seed_;
  ScratchDir dir_;
  std::string wal_path_;
  std::vector<Step> steps_;
  std::map<std::string, std::string> tokens_;  // "s1" -> its token
};

// What a sweep saw over all its runs, for the summary line and the NORMAL check.
struct SweepTally {
  std::size_t runs = 0;
  std::size_t in_flight_kept = 0;  // the operation threw, yet was found applied
  std::size_t in_flight_lost = 0;
  std::size_t runs_losing_acknowledged = 0;   // any acknowledged operation rolled back
  std::size_t runs_losing_the_operation = 0;  // the operation under test, acknowledged, rolled back
  std::size_t torn_applied = 0;
  std::size_t torn_dropped = 0;

  void add(const RunResult& run) {
    ++runs;
    const std::size_t kept = run.kept.value_or(0);
    if (!run.acknowledged) ++(run.in_flight_kept ? in_flight_kept : in_flight_lost);
    if (kept < run.acknowledged_steps) ++runs_losing_acknowledged;
    if (run.acknowledged && kept < run.acknowledged_steps) ++runs_losing_the_operation;
    torn_applied += run.torn_applied;
    torn_dropped += run.torn_dropped;
  }
};

// The promises of the sync mode, for one run that crashed at point k (0: after the return).
void check_run(const RunResult& run, std::uint64_t k, bool full) {
  if (k > 0) {
    EXPECT_TRUE(run.crashed_inside) << "the operation made fewer I/O calls than its dry run";
    EXPECT_EQ(run.operation_calls, k);
  }
  ASSERT_TRUE(run.kept.has_value());
  EXPECT_GE(*run.kept, run.durable_steps)
      << "an operation acknowledged before the last sync was rolled back";
  if (full) {
    EXPECT_EQ(run.durable_steps, run.acknowledged_steps)
        << "with synchronous=FULL every acknowledged write is synced before it returns";
    EXPECT_EQ(*run.kept, run.acknowledged_steps) << "an acknowledged operation was lost";
  }
}

class PowerLossSweep : public ::testing::TestWithParam<SweepCase> {};

TEST_P(PowerLossSweep, EveryCrashPointKeepsWhatTheSyncModePromises) {
  const SweepCase& sweep_case = GetParam();
  const bool full = sweep_case.sync == SqliteSync::kFull;

  // The dry run: no cut until the operation has returned. It counts the operation's I/O calls.
  const RunResult dry = CrashRun(sweep_case, 0, PowerCut::kDropUnsynced, 1).execute();
  ASSERT_FALSE(::testing::Test::HasFailure());
  ASSERT_TRUE(dry.acknowledged);
  const std::uint64_t points = dry.operation_calls;
  ASSERT_GE(points, 1U) << "the operation must write something";

  struct Cut {
    PowerCut cut;
    std::uint32_t seed;
  };
  const std::vector<Cut> cuts = {{PowerCut::kDropUnsynced, 1},
                                 {PowerCut::kTearUnsynced, 11},
                                 {PowerCut::kTearUnsynced, 22},
                                 {PowerCut::kTearUnsynced, 33}};
  SweepTally tally;
  // Crash point k: the power goes at the operation's k-th write/truncate/sync (that call fails);
  // k = 0 stands for "just after it returned".
  for (std::uint64_t k = 0; k <= points; ++k) {
    for (const Cut& cut : cuts) {
      SCOPED_TRACE("crash point " + std::to_string(k) + " of " + std::to_string(points) +
                   (cut.cut == PowerCut::kDropUnsynced
                        ? ", unsynced writes dropped"
                        : ", unsynced writes torn, seed " + std::to_string(cut.seed)));
      const bool reuse_dry_run = k == 0 && cut.cut == PowerCut::kDropUnsynced;
      const RunResult run =
          reuse_dry_run ? dry : CrashRun(sweep_case, k, cut.cut, cut.seed).execute();
      if (!::testing::Test::HasFailure()) check_run(run, k, full);
      if (::testing::Test::HasFailure()) return;  // the first failing run says it all
      tally.add(run);
    }
  }

  if (!full && !sweep_case.checkpoint_every_commit) {
    // The other half of the README's trade-off: NORMAL really does roll back acknowledged writes
    // (a login lost, a revoked session back, a rotation undone) when nothing synced them.
    EXPECT_GT(tally.runs_losing_the_operation, 0U)
        << "synchronous=NORMAL never lost an acknowledged operation: is it really NORMAL?";
  }
  std::cout << "power loss " << case_name({sweep_case, 0}) << ": " << points
            << " I/O calls in the operation, " << tally.runs
            << " runs (every crash point and just after, dropped and torn x3); unacknowledged "
               "operation found applied "
            << tally.in_flight_kept << ", absent " << tally.in_flight_lost
            << "; runs that rolled back acknowledged operations " << tally.runs_losing_acknowledged
            << " (the operation itself " << tally.runs_losing_the_operation
            << "); torn sector pieces " << tally.torn_applied << " applied, " << tally.torn_dropped
            << " dropped\n";
}

std::vector<SweepCase> all_cases() {
  std::vector<SweepCase> cases;
  for (const SqliteSync sync : {SqliteSync::kFull, SqliteSync::kNormal}) {
    for (const bool checkpointing : {false, true}) {
      for (const Operation operation :
           {Operation::kCreate, Operation::kRevoke, Operation::kRotate, Operation::kCreateBatch}) {
        cases.push_back({operation, sync, checkpointing});
      }
    }
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(SqliteSync, PowerLossSweep, ::testing::ValuesIn(all_cases()), case_name);

}  // namespace

// Injected I/O errors: a child process (this program re-executed) opens a
// store on a new SQLite file, creates and revokes sessions, and closes it, under
// `strace -e inject=<syscall>:error=EIO:when=N`, for every N at which the child makes that
// system call. Promises checked for each N:
//   - the child ends on its own, with exit status 0: no crash, no signal, and no hang (a child
//     still running after kChildLimit is killed and the test fails);
//   - when strace reports the injection (INJECTED in its trace) on the database or its WAL
//     during open, a create or a revoke, that very call threw pylon::Error (the child logs
//     "E <phase> <code>"); a revoke that threw denied the session at once (fail closed);
//   - a fresh store opened afterwards without strace holds every acknowledged create that was not
//     revoked and none of the acknowledged revokes, and the file passes integrity_check.
// The syscalls swept are the ones SQLite and the library really make here (the calibration run
// counts them): fdatasync and fsync for durability, pwrite64 for the database and WAL pages.
//
// The child logs with writev(2), one whole line per call, so injected write/pwrite64 faults never
// hit its own log, and strace's trace of those writev calls marks which phase each injected call
// belongs to.
#include <gtest/gtest.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "faults/fault_helpers.hpp"
#include "session_backend.hpp"
#include "support/process.hpp"
#include "support/test_support.hpp"

namespace pylon::test::faults {

namespace {

// A hang is a failure, not a slow run: a child is given this long (it needs well under a second).
constexpr std::chrono::seconds kChildLimit{60};
constexpr unsigned kChildAlarmSeconds = 90;  // the child's own backstop if the parent vanishes

// What the child does with the store it opens first (a new file) and then with the one it opens
// again (an existing file, with a WAL to recover if the first close failed). Each step is one
// phase of the trace.
const std::vector<std::string>& first_plan() {
  static const std::vector<std::string> kPlan = {"create 1", "create 2", "create 3", "revoke 1",
                                                 "create 4", "revoke 2", "create 5"};
  return kPlan;
}
const std::vector<std::string>& second_plan() {
  static const std::vector<std::string> kPlan = {"create 6", "revoke 3", "create 7"};
  return kPlan;
}

// ------------------------------------------------------------------------------------------------
// The child
// ------------------------------------------------------------------------------------------------

// Log lines: "B <phase>" when a phase begins; "C <token>" after an acknowledged create;
// "R <token>" after an acknowledged revoke; "F <token>" after a revoke that threw (and left the
// session denied); "E <phase> <code>" for a pylon::Error; "U <text>" for anything unexpected.
// `live` holds the acknowledged creates not yet revoked, oldest first.
void run_plan(pylon::SessionStore& store, const std::vector<std::string>& plan,
              std::vector<std::string>& live, const LineLog& log) {
  for (const std::string& phase : plan) {
    log.line("B " + phase);
    try {
      if (phase.rfind("create", 0) == 0) {
        pylon::CreateOptions options;
        options.device = "io-error child";
        options.data = std::string("\0io\xff", 4) + phase;
        const pylon::NewSession session = store.create("io-user", options);
        log.line("C " + session.token);
        live.push_back(session.token);
        if (!store.find(session.session.id)) log.line("U acknowledged create not in the cache");
        continue;
      }
      if (live.empty()) continue;  // every create failed so far: nothing to revoke
      const std::string token = live.front();
      live.erase(live.begin());
      try {
        if (!store.revoke(token)) {
          log.line("U revoke of a live session returned false");
          continue;
        }
        log.line("R " + token);
      } catch (const pylon::Error&) {
        // Fail closed: the session must be denied here at once, whatever storage has.
        if (store.validate(token)) log.line("U a revoke that threw left the session valid");
        log.line("F " + token);
        throw;
      }
    } catch (const pylon::Error& error) {
      log.line("E " + phase + " " + pylon::to_string(error.code()));
    }
  }
}

}  // namespace

int io_error_child_main(const std::vector<std::string>& args) {
  if (args.size() != 2) return 64;
  // strace is the parent: die with it. The alarm ends a hang even if the parent cannot.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // NOLINT(cppcoreguidelines-pro-type-vararg): C API
  ::alarm(kChildAlarmSeconds);
  const LineLog log(args[1]);
  try {
    std::vector<std::string> live;
    for (const auto& [open_phase, plan] :
         {std::pair("open", &first_plan()), std::pair("reopen", &second_plan())}) {
      std::optional<pylon::SessionStore> store;
      log.line(std::string("B ") + open_phase);
      try {
        store.emplace(pylon::SessionStore::open(args[0]));
      } catch (const pylon::Error& error) {
        log.line(std::string("E ") + open_phase + " " + pylon::to_string(error.code()));
        continue;
      }
      run_plan(*store, *plan, live, log);
      // The destructor checkpoints and retries pending deletes; it must swallow what fails.
      log.line(std::string("B close after ") + open_phase);
      store.reset();
    }
    log.line("B end");
  } catch (const std::exception& error) {
    log.line(std::string("U exception ") + error.what());
    return 2;
  }
  return 0;
}

namespace {

// ------------------------------------------------------------------------------------------------
// The parent: strace's trace
// ------------------------------------------------------------------------------------------------

// One call of the traced syscall, as strace -y reports it.
struct TracedCall {
  std::string phase;  // the child's last "B <phase>" before the call
  std::string path;   // what the descriptor names (-y), "" if strace could not tell
  bool injected = false;
};

// The calls of `syscall` in strace's output file, in order, each with its phase. Lines look like
//   4711 writev(3</tmp/d/x.log>, [{iov_base="B create 1\n", iov_len=11}], 1) = 11
//   4711 fdatasync(5</tmp/d/x.db-wal>) = -1 EIO (Input/output error) (INJECTED)
// and, when another thread interleaves, "... <unfinished ...>" and "<... fdatasync resumed>".
// The phase a "B <phase>" line of the child's log starts, from strace's line of its writev.
std::optional<std::string> phase_marker(const std::string& line) {
  if (line.rfind("writev(", 0) != 0) return std::nullopt;
  const std::string marker = "iov_base=\"B ";
  const std::size_t at = line.find(marker);
  if (at == std::string::npos) return std::nullopt;
  const std::size_t begin = at + marker.size();
  const std::size_t end = line.find("\\n", begin);
  if (end == std::string::npos) return std::nullopt;
  return line.substr(begin, end - begin);
}

std::vector<TracedCall> read_trace(const std::string& trace_path, const std::string& syscall) {
  std::vector<TracedCall> calls;
  std::map<std::string, std::size_t> unfinished;  // pid -> index of its call left unfinished
  std::string phase = "start";
  for (const std::string& raw : complete_lines(read_file_bytes(trace_path))) {
    // With -f every line starts with the pid, padded with spaces.
    const std::size_t digits = raw.find_first_not_of("0123456789");
    const std::string pid = raw.substr(0, digits == std::string::npos ? 0 : digits);
    const std::size_t text = raw.find_first_not_of(' ', pid.size());
    const std::string line = text == std::string::npos ? "" : raw.substr(text);
    if (std::optional<std::string> marker = phase_marker(line)) {
      phase = *std::move(marker);
      continue;
    }
    const bool injected = line.find("(INJECTED)") != std::string::npos;
    if (line.rfind("<... " + syscall + " resumed>", 0) == 0) {
      const auto found = unfinished.find(pid);
      if (found != unfinished.end()) {
        calls[found->second].injected = calls[found->second].injected || injected;
        unfinished.erase(found);
      }
      continue;
    }
    if (line.rfind(syscall + "(", 0) != 0) continue;
    TracedCall call;
    call.phase = phase;
    call.injected = injected;
    const std::size_t open = line.find('<');
    const std::size_t close = line.find('>', open == std::string::npos ? 0 : open);
    if (open != std::string::npos && close != std::string::npos) {
      call.path = line.substr(open + 1, close - open - 1);
    }
    if (line.find("<unfinished ...>") != std::string::npos) unfinished[pid] = calls.size();
    calls.push_back(call);
  }
  return calls;
}

// ------------------------------------------------------------------------------------------------
// The parent: one run of the child, and its checks
// ------------------------------------------------------------------------------------------------

struct ChildRun {
  ChildEnd end;
  std::vector<std::string> log;   // the child's complete log lines
  std::vector<TracedCall> calls;  // its calls of the swept syscall
  std::string strace_output;      // strace's own stdout and stderr
  std::string db_path;
};

// Runs the child under strace on a new database `name`.db in `dir`, injecting EIO into the
// `when`-th call of `syscall` (no injection when `when` is 0).
ChildRun run_child(const TempDir& dir, const std::string& name, const std::string& syscall,
                   int when) {
  ChildRun child;
  child.db_path = dir.file(name + ".db");
  const std::string log_path = dir.file(name + ".log");
  const std::string trace_path = dir.file(name + ".trace");
  const std::string output_path = dir.file(name + ".out");
  // Under ASan, LeakSanitizer needs ptrace itself and cannot run in a process strace traces.
  const char* asan = std::getenv("ASAN_OPTIONS");  // NOLINT(concurrency-mt-unsafe): no threads
  const std::string asan_options = std::string("ASAN_OPTIONS=") +
                                   (asan != nullptr ? std::string(asan) + ":" : "") +
                                   "detect_leaks=0";
  std::vector<std::string> argv = {
      "strace", "-f", "-qq",      "-y", "-s",
      "64",     "-o", trace_path, "-e", "trace=" + syscall + ",writev"};
  if (when > 0) {
    argv.insert(argv.end(),
                {"-e", "inject=" + syscall + ":error=EIO:when=" + std::to_string(when)});
  }
  argv.insert(argv.end(),
              {"-E", asan_options, self_executable(), kIoErrorChildFlag, child.db_path, log_path});
  const pid_t pid = spawn(argv, output_path, -1, /*stderr_too=*/true);
  child.end = wait_at_most(pid, kChildLimit);
  child.log = complete_lines(read_file_bytes(log_path));
  child.calls = read_trace(trace_path, syscall);
  child.strace_output = read_file_bytes(output_path);
  return child;
}

std::string describe(const ChildRun& child) {
  std::string text = "child log:\n";
  for (const std::string& line : child.log) text += "  " + line.substr(0, 40) + "\n";
  if (!child.strace_output.empty()) text += "strace/child output:\n" + child.strace_output;
  return text;
}

// What the sweep of one syscall saw, for the summary printed at the end.
struct SweepTally {
  int runs = 0;
  int injected = 0;        // runs in which strace reported the injection
  int reported = 0;        // ... and the call of that phase threw pylon::Error
  int unreported_dir = 0;  // ... on a directory descriptor, which no call reported
  int during_close = 0;    // ... while the store was being destroyed (nothing can report it)
  std::map<std::string, int> codes;  // error codes the children reported
};

// The child ended on its own, normally, at the end of its plan, with nothing unexpected.
void check_end(const ChildRun& child, SweepTally& tally) {
  ASSERT_TRUE(child.end.in_time) << "the child hung (killed after " << kChildLimit.count()
                                 << " s)\n"
                                 << describe(child);
  ASSERT_EQ(child.end.status, 0) << "the child crashed or failed (exit status or 128 + signal)\n"
                                 << describe(child);
  ASSERT_FALSE(child.log.empty() || child.log.back() != "B end")
      << "the child did not reach its end\n"
      << describe(child);
  for (const std::string& line : child.log) {
    EXPECT_NE(line[0], 'U') << line << "\n" << describe(child);
    if (line[0] == 'E') ++tally.codes[line.substr(line.rfind(' ') + 1)];
  }
}

// Every injected failure of a store call was reported by that call.
void check_injections(const TempDir& dir, const ChildRun& child, SweepTally& tally) {
  for (const TracedCall& call : child.calls) {
    if (!call.injected) continue;
    ++tally.injected;
    const bool store_call = call.phase == "open" || call.phase == "reopen" ||
                            call.phase.rfind("create", 0) == 0 ||
                            call.phase.rfind("revoke", 0) == 0;
    if (!store_call) {
      ++tally.during_close;  // a destructor cannot report; the restart check still applies
      continue;
    }
    bool reported = false;
    for (const std::string& line : child.log) {
      if (line.rfind("E " + call.phase + " ", 0) == 0) reported = true;
    }
    if (reported) {
      ++tally.reported;
    } else if (call.path == dir.path()) {
      // The fsync of the directory after a file is created (the library's, and SQLite's for a
      // new WAL) is best effort in both: a failure there is not reported to the caller.
      ++tally.unreported_dir;
    } else {
      ADD_FAILURE() << "an I/O error injected into " << call.path << " during " << call.phase
                    << " was not reported as a pylon::Error\n"
                    << describe(child);
    }
  }
}

// A restart, without strace: what was acknowledged is there, and stays revoked.
void check_restart(const ChildRun& child) {
  std::set<std::string> created;
  std::set<std::string> must_be_gone;
  std::set<std::string> failed_revokes;  // pending in the store: gone once a later write is acked
  std::set<std::string> unknown;         // failed revokes whose store closed: either outcome
  for (const std::string& line : child.log) {
    const std::string value = line.size() > 2 ? line.substr(2) : "";
    if (line[0] == 'C' || line[0] == 'R') {
      // Every write flushes the pending deletes of earlier failed revokes first: an
      // acknowledged write of the same store proves that storage has them.
      must_be_gone.insert(failed_revokes.begin(), failed_revokes.end());
      failed_revokes.clear();
    }
    if (line.rfind("B close", 0) == 0) {
      // Only the destructor's last attempt is left, and it reports nothing.
      unknown.insert(failed_revokes.begin(), failed_revokes.end());
      failed_revokes.clear();
    }
    if (line[0] == 'C') created.insert(value);
    if (line[0] == 'R') must_be_gone.insert(value);
    if (line[0] == 'F') failed_revokes.insert(value);
  }
  unknown.insert(failed_revokes.begin(), failed_revokes.end());
  const auto reopened = capture_pylon_error([&] {
    pylon::SessionStore store = pylon::SessionStore::open(child.db_path);
    for (const std::string& token : created) {
      const std::string id = pylon::session_id_for_token(token);
      if (must_be_gone.count(token) != 0) {
        EXPECT_FALSE(store.find(id)) << "an acknowledged revoke came back after a restart\n"
                                     << describe(child);
      } else if (unknown.count(token) == 0) {
        EXPECT_TRUE(store.find(id)) << "an acknowledged create is lost after a restart\n"
                                    << describe(child);
      }
    }
  });
  ASSERT_FALSE(reopened.has_value())
      << "the file cannot be opened after the run: " << reopened->what() << "\n"
      << describe(child);
  RawDb raw(child.db_path);
  EXPECT_EQ(raw.query_text("PRAGMA integrity_check"), "ok") << describe(child);
}

void check_run(const TempDir& dir, const ChildRun& child, SweepTally& tally) {
  ++tally.runs;
  check_end(child, tally);
  if (::testing::Test::HasFatalFailure()) return;
  check_injections(dir, child, tally);
  check_restart(child);
}

// Calibrates (a run without injection counts the child's calls of `syscall`), then runs the
// child once for every N from 1 to that count.
// `must_report`: at least one injection must have been reported (false for a syscall the child
// only makes on directories).
void sweep(const std::string& syscall, bool must_report) {
  TempDir dir;
  const ChildRun calibration = run_child(dir, "calibration", syscall, 0);
  SweepTally tally;
  check_run(dir, calibration, tally);
  if (::testing::Test::HasFatalFailure()) return;
  for (const std::string& line : calibration.log) {
    ASSERT_NE(line[0], 'E') << "without injection nothing may fail\n" << describe(calibration);
  }
  std::map<std::string, int> per_phase;
  for (const TracedCall& call : calibration.calls) ++per_phase[call.phase];
  const int total = static_cast<int>(calibration.calls.size());
  ASSERT_GT(total, 0) << "the child made no " << syscall << " call: the sweep would test nothing";

  tally = SweepTally{};
  for (int when = 1; when <= total; ++when) {
    SCOPED_TRACE(syscall + " fails (EIO) at call " + std::to_string(when) + " of " +
                 std::to_string(total));
    check_run(dir, run_child(dir, "run-" + std::to_string(when), syscall, when), tally);
    // Go on after a wrong outcome, to show every N that fails; stop after a crash or a hang.
    if (::testing::Test::HasFatalFailure()) return;
  }
  if (must_report) {
    EXPECT_GT(tally.reported, 0) << "no injected " << syscall << " failure was ever reported";
  }

  std::ostringstream summary;
  summary << syscall << ": " << total << " calls (";
  for (const auto& [phase, count] : per_phase) summary << phase << ": " << count << ", ";
  summary << "); " << tally.runs << " runs, " << tally.injected << " injected, " << tally.reported
          << " reported as pylon::Error, " << tally.unreported_dir
          << " on a directory fsync (best effort), " << tally.during_close
          << " while closing; codes:";
  for (const auto& [code, count] : tally.codes) summary << " " << code << " x" << count;
  std::cout << summary.str() << "\n";
}

// SQLite (Debian's 3.40, built with HAVE_FDATASYNC) syncs files and directories with fdatasync.
TEST(IoErrors, FdatasyncFailuresAreReportedAndLoseNothing) { sweep("fdatasync", true); }

// Only the library calls fsync: on the parent directory of a file it has just created, as a best
// effort. Any fsync of a file would have to be reported, like every other injected failure.
TEST(IoErrors, FsyncFailuresNeitherCrashNorLoseAnything) { sweep("fsync", false); }

// SQLite writes pages, WAL frames and the -shm with pwrite64; it makes no write(2) call at all
// (the calibration of a write sweep finds none), so there is no write(2) sweep.
TEST(IoErrors, Pwrite64FailuresAreReportedAndLoseNothing) { sweep("pwrite64", true); }

}  // namespace

}  // namespace pylon::test::faults

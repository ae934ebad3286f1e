// kill -9 under load ("Nothing lost under faults"). A child process runs 8 threads that
// create sessions, overwrite their data (update_data), rotate their tokens and revoke them, all
// on one SQLite file, and appends each call to an ack log once the call has returned (an intent
// line before a call whose outcome the check must tolerate). The parent SIGKILLs it at a random
// moment, 24 rounds on the same file, and after every round proves with the log as the oracle:
//   - zero acknowledged writes lost: every acknowledged create or rotation successor is found,
//     with the data of its last acknowledged update (or of the update in flight at the kill);
//   - zero revoked sessions back: no acknowledged revoke, no rotated-away id, is found;
//   - no phantom rows: rows the log cannot name are at most the creates and rotations that were
//     in flight when the children died;
//   - PRAGMA integrity_check is ok, and a freshly loaded store equals the table row for row.
// It prints one summary line (rounds, acknowledged operations, kills) for reviewers.
//
// The child is this very binary re-executed (/proc/self/exe --pylon-crash-child DB LOG SEED), so
// it starts as a fresh process rather than a fork of the test runner; that is why this file has
// its own main() instead of gtest_main.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "session_backend.hpp"
#include "support/process.hpp"
#include "support/test_support.hpp"

namespace {

constexpr const char* kChildFlag = "--pylon-crash-child";
constexpr int kChildThreads = 8;
constexpr int kRounds = 24;
// Each thread keeps at most this many live sessions (revoking its oldest beyond), so the table
// stays small however many rounds run.
constexpr std::size_t kLivePerThread = 12;

// ------------------------------------------------------------------------------------------------
// The child: work until killed
// ------------------------------------------------------------------------------------------------

// Reports why the child gives up on stderr and exits at once with `status`.
[[noreturn]] void child_fails(int status, const std::string& why) {
  const std::string line = "crash child: " + why + "\n";
  [[maybe_unused]] const ssize_t written = ::write(STDERR_FILENO, line.data(), line.size());
  std::_Exit(status);
}

// Appends one whole line with a single write(2) on an O_APPEND descriptor, so a line is either
// entirely in the log or not at all when the process dies. A line is
//   <kind> <token> [<token or data>]
// with kinds: S started; C created (data); u update called (data); U update returned (data);
// o rotation called; O rotation returned (new token); r revoke called; R revoke returned.
class Journal {
 public:
  explicit Journal(int fd) : fd_(fd) {}
  void line(char kind, const std::string& first, const std::string& second = {}) {
    std::string text = std::string(1, kind) + " " + first;
    if (!second.empty()) text += " " + second;
    text += "\n";
    const std::lock_guard<std::mutex> lock(mutex_);
    if (::write(fd_, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
      child_fails(5, std::string("write to log failed: ") + std::strerror(errno));
    }
  }

 private:
  int fd_;
  std::mutex mutex_;
};

// One thread's endless mix of writes on its own sessions. Data strings carry no spaces, so the
// log stays one token per field.
void child_thread(pylon::SessionStore* store, Journal* journal, int thread, std::uint32_t seed) {
  const std::string user = "crash-user-" + std::to_string(thread);
  std::mt19937 random(seed);
  std::uniform_int_distribution<int> percent(0, 99);
  std::vector<std::string> mine;  // the tokens of this thread's live sessions
  const auto revoke_at = [&](std::size_t index) {
    const std::string victim = mine[index];
    mine.erase(mine.begin() + static_cast<std::ptrdiff_t>(index));
    journal->line('r', victim);
    if (!store->revoke(victim)) child_fails(6, "revoke of a live session returned false");
    journal->line('R', victim);
  };
  // Bounded only as a safety net: the parent kills the child long before.
  for (int i = 0; i < 10'000'000; ++i) {
    const std::string tag = std::to_string(seed) + "-" + std::to_string(i);
    const int dice = percent(random);
    if (mine.empty() || dice < 30) {
      pylon::CreateOptions options;
      options.data = "c-" + tag;
      options.device = "crash-device-" + std::to_string(thread);
      options.ip = "192.0.2." + std::to_string(thread);
      options.idp_session_id = "sid-" + tag;
      const pylon::NewSession created = store->create(user, options);
      journal->line('C', created.token, options.data);
      mine.push_back(created.token);
    } else if (dice < 65) {
      const std::string& target = mine[random() % mine.size()];
      const std::string data = "u-" + tag;
      journal->line('u', target, data);
      if (!store->update_data(target, data)) child_fails(7, "update of a live session");
      journal->line('U', target, data);
    } else if (dice < 85) {
      std::string& target = mine[random() % mine.size()];
      journal->line('o', target);
      const std::optional<pylon::NewSession> rotated = store->rotate(target);
      if (!rotated) child_fails(8, "rotation of a live session returned nothing");
      journal->line('O', target, rotated->token);
      target = rotated->token;
    } else {
      revoke_at(random() % mine.size());
    }
    if (mine.size() > kLivePerThread) revoke_at(0);
  }
}

// Never returns: the parent kills it (or, if the parent died, the kernel does: PDEATHSIG).
[[noreturn]] void run_crash_child(const std::string& db_path, const std::string& log_path,
                                  const std::string& seed) {
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open(2) takes the mode as a vararg
  const int fd = ::open(log_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    child_fails(3, "cannot open " + log_path + ": " + std::strerror(errno));
  }
  Journal journal(fd);
  try {
    pylon::SessionStore store = pylon::SessionStore::open(db_path);
    journal.line('S', "started");
    const auto base_seed = static_cast<std::uint32_t>(std::stoul(seed));
    std::vector<std::thread> threads;
    threads.reserve(kChildThreads);
    for (int t = 0; t < kChildThreads; ++t) {
      threads.emplace_back([&store, &journal, t, base_seed] {
        try {
          child_thread(&store, &journal, t, base_seed * 16U + static_cast<std::uint32_t>(t));
        } catch (const std::exception& error) {
          child_fails(4, "thread " + std::to_string(t) + ": " + error.what());
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
  } catch (const std::exception& error) {
    child_fails(2, error.what());
  }
  std::_Exit(0);
}

// ------------------------------------------------------------------------------------------------
// The parent: the oracle
// ------------------------------------------------------------------------------------------------

// What the log says of one token.
struct TokenFate {
  enum Status { kLive, kRevoking, kRevoked, kRotating, kRotatedAway };
  Status status = kLive;
  std::string data;                    // the last acknowledged data
  std::optional<std::string> pending;  // an update called but not acknowledged
};

struct Ledger {
  std::map<std::string, TokenFate> tokens;
  std::size_t starts = 0;
  std::size_t acknowledged = 0;  // C, U, O and R lines
  std::map<char, std::size_t> counts;
};

// Reads the log; a line without its newline (cut by the kill) is ignored.
Ledger read_ledger(const std::string& log_path) {
  Ledger ledger;
  std::istringstream content(pylon::test::read_file_bytes(log_path));
  std::string line;
  while (std::getline(content, line)) {
    if (content.eof()) break;  // no newline: the kill cut it
    std::istringstream fields(line);
    char kind = 0;
    std::string first;
    std::string second;
    fields >> kind >> first >> second;
    ++ledger.counts[kind];
    switch (kind) {
      case 'S':
        ++ledger.starts;
        break;
      case 'C':
        ledger.tokens[first] = TokenFate{TokenFate::kLive, second, std::nullopt};
        break;
      case 'u':
        ledger.tokens.at(first).pending = second;
        break;
      case 'U':
        ledger.tokens.at(first).data = second;
        ledger.tokens.at(first).pending.reset();
        break;
      case 'o':
        ledger.tokens.at(first).status = TokenFate::kRotating;
        break;
      case 'O': {
        TokenFate& old = ledger.tokens.at(first);
        old.status = TokenFate::kRotatedAway;
        ledger.tokens[second] = TokenFate{TokenFate::kLive, old.data, std::nullopt};
        break;
      }
      case 'r':
        ledger.tokens.at(first).status = TokenFate::kRevoking;
        break;
      case 'R':
        ledger.tokens.at(first).status = TokenFate::kRevoked;
        break;
      default:
        ADD_FAILURE() << "unreadable log line: " << line;
        break;
    }
    if (kind == 'C' || kind == 'U' || kind == 'O' || kind == 'R') ++ledger.acknowledged;
  }
  return ledger;
}

// Every row of _pylon_sessions, read with raw SQL, as Sessions keyed by id.
std::map<std::string, pylon::Session> read_table(const std::string& db_path) {
  pylon::test::RawDb raw(db_path);
  std::map<std::string, pylon::Session> rows;
  for (const pylon::test::SqlRow& row :
       raw.query("SELECT id, user_id, tenant_id, created_at, expires_at, last_seen_at, "
                 "absolute_expires_at, device, ip, data, idp_session_id, authenticated_at, "
                 "idle_timeout_seconds FROM _pylon_sessions")) {
    pylon::Session session;
    session.id = row.at(0).value_or("");
    session.user_id = row.at(1).value_or("");
    session.tenant_id = row.at(2);
    session.created_at = std::stoll(row.at(3).value_or("0"));
    session.expires_at = std::stoll(row.at(4).value_or("0"));
    session.last_seen_at = std::stoll(row.at(5).value_or("0"));
    session.absolute_expires_at = std::stoll(row.at(6).value_or("0"));
    session.device = row.at(7);
    session.ip = row.at(8);
    session.data = row.at(9).value_or("");
    session.idp_session_id = row.at(10);
    session.authenticated_at = std::stoll(row.at(11).value_or("0"));
    if (row.at(12)) session.idle_timeout_seconds = std::stoll(*row.at(12));
    rows[session.id] = session;
  }
  raw.close();
  return rows;
}

// Problems found after a round, with a few examples for the failure message.
struct Findings {
  std::size_t lost = 0;        // acknowledged sessions missing, or with data no call wrote
  std::size_t revived = 0;     // acknowledged revokes or rotations undone
  std::size_t unknown = 0;     // rows the log cannot name
  std::size_t mismatched = 0;  // cache and table disagree
  std::string examples;

  void note(const std::string& what) {
    if (examples.size() < 600) examples += "\n  " + what;
  }
};

std::string brief(const std::string& token) { return token.substr(0, 14) + "..."; }

// The reloaded cache equals the table, row for row.
void compare_cache_with_table(pylon::SessionStore* store,
                              const std::map<std::string, pylon::Session>& table,
                              Findings* findings) {
  EXPECT_EQ(store->size(), table.size());
  EXPECT_EQ(store->stats().sessions, table.size());
  for (const auto& [id, row] : table) {
    const std::optional<pylon::Session> cached = store->find(id);
    if (!cached || *cached != row) {
      ++findings->mismatched;
      findings->note("cache differs from row " + id.substr(0, 12));
      if (cached) {
        EXPECT_TRUE(pylon::test::same_session(row, *cached));
      }
    }
  }
}

// One token of the log against the table.
void check_fate(const std::string& token, const TokenFate& fate,
                const std::map<std::string, pylon::Session>& table, Findings* findings) {
  const auto row = table.find(pylon::session_id_for_token(token));
  const bool stored = row != table.end();
  const bool data_ok =
      stored && (row->second.data == fate.data || row->second.data == fate.pending);
  switch (fate.status) {
    case TokenFate::kLive:
      if (!stored) {
        ++findings->lost;
        findings->note("lost " + brief(token));
      } else if (!data_ok) {
        ++findings->lost;
        findings->note("wrong data (\"" + row->second.data + "\", acknowledged \"" + fate.data +
                       "\") for " + brief(token));
      }
      break;
    case TokenFate::kRevoking:
    case TokenFate::kRotating:
      // Outcome unknown: gone, or still there with data a call wrote.
      if (stored && !data_ok) {
        ++findings->lost;
        findings->note("wrong data for " + brief(token));
      }
      break;
    case TokenFate::kRevoked:
    case TokenFate::kRotatedAway:
      if (stored) {
        ++findings->revived;
        findings->note("revived " + brief(token));
      }
      break;
  }
}

// After a round: a fresh store against the table, and the table against the log.
Findings check_round(const std::string& db_path, const Ledger& ledger) {
  Findings findings;
  const std::map<std::string, pylon::Session> table = read_table(db_path);
  pylon::SessionStore store = pylon::SessionStore::open(db_path);
  compare_cache_with_table(&store, table, &findings);
  std::set<std::string> named;
  for (const auto& [token, fate] : ledger.tokens) {
    named.insert(pylon::session_id_for_token(token));
    check_fate(token, fate, table, &findings);
  }
  for (const auto& entry : table) {
    if (named.count(entry.first) == 0) ++findings.unknown;
  }
  return findings;
}

// Acknowledgement lines (C, U, O, R) appended to the log at or after byte `from`.
std::size_t acknowledged_since(const std::string& log_path, std::size_t from) {
  std::ifstream log(log_path, std::ios::binary);
  log.seekg(static_cast<std::streamoff>(from));
  std::size_t count = 0;
  std::string line;
  while (std::getline(log, line)) {
    if (log.eof()) break;  // no newline yet: still being written
    if (!line.empty() && std::strchr("CUOR", line[0]) != nullptr) ++count;
  }
  return count;
}

std::size_t file_size(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 ? static_cast<std::size_t>(info.st_size) : 0;
}

TEST(Crash, AcknowledgedWritesSurviveKillNineUnderLoad) {
  pylon::test::TempDir dir;
  const std::string db_path = dir.file("crash.db");
  const std::string log_path = dir.file("acknowledged.log");
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("random seed " + std::to_string(seed));
  std::mt19937 random(seed);
  // When to kill: after the round's child has acknowledged this many calls, plus this many ms.
  std::uniform_int_distribution<std::size_t> acknowledged_first(1, 160);
  std::uniform_int_distribution<int> delay_ms(0, 40);

  std::size_t kills = 0;
  std::size_t unknown_rows = 0;
  Ledger ledger;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round + 1));
    const std::size_t log_before = file_size(log_path);
    const pid_t pid = pylon::test::spawn(
        {"/proc/self/exe", kChildFlag, db_path, log_path, std::to_string(random())});

    // Wait until this round's child has acknowledged a random number of calls, then let it run a
    // random little more and kill it mid-work. The deadline only prevents a hang when the child
    // cannot start; the threshold and the delay are what place the kill.
    const std::size_t threshold = acknowledged_first(random);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    bool child_exited = false;
    int status = 0;
    while (acknowledged_since(log_path, log_before) < threshold) {
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        child_exited = true;
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (!child_exited) {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(random)));
      ::kill(pid, SIGKILL);
      ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    }
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the child must die of our SIGKILL, not exit on its own (exit status "
        << (WIFEXITED(status) ? WEXITSTATUS(status) : -1) << "); see its stderr above";
    ++kills;

    const std::size_t acknowledged_before = ledger.acknowledged;
    ledger = read_ledger(log_path);
    EXPECT_EQ(ledger.starts, static_cast<std::size_t>(round + 1));
    ASSERT_GT(ledger.acknowledged, acknowledged_before) << "the child acknowledged nothing";

    const Findings findings = check_round(db_path, ledger);
    unknown_rows = findings.unknown;
    EXPECT_EQ(findings.lost, 0U) << "acknowledged writes lost" << findings.examples;
    EXPECT_EQ(findings.revived, 0U) << "revoked or rotated-away sessions back" << findings.examples;
    EXPECT_EQ(findings.mismatched, 0U)
        << "the reloaded cache differs from the table" << findings.examples;
    // Each thread has at most one create or rotation in flight when its child dies.
    EXPECT_LE(findings.unknown, static_cast<std::size_t>(kChildThreads) * kills)
        << "rows that no acknowledged or in-flight call can explain";
    pylon::test::RawDb raw(db_path);
    EXPECT_EQ(raw.query_text("PRAGMA integrity_check"), "ok");
    raw.close();
    if (::testing::Test::HasFailure()) return;
  }
  std::cout << "crash test: " << kRounds << " rounds, " << kills << " kills (SIGKILL), "
            << kChildThreads << " threads; " << ledger.acknowledged << " acknowledged operations ("
            << ledger.counts['C'] << " creates, " << ledger.counts['U'] << " updates, "
            << ledger.counts['O'] << " rotations, " << ledger.counts['R']
            << " revokes); after every restart 0 lost, 0 revived, cache == table; " << unknown_rows
            << " rows from calls in flight at a kill; seed " << seed << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  // NOLINTNEXTLINE(cppcoreguidelines-pro-bounds-pointer-arithmetic): main's argv is a C array
  const std::vector<std::string> args(argv, argv + argc);
  if (args.size() == 5 && args[1] == kChildFlag) run_crash_child(args[2], args[3], args[4]);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

// kill -9 in the middle of work: a child process runs 4 threads creating and revoking sessions
// on one SQLite file and logs every acknowledged operation; the parent SIGKILLs it after a
// random short delay, five rounds on the same file. After each round a fresh store must validate
// every acknowledged create that was not revoked, keep every acknowledged revoke revoked, and
// the file must pass PRAGMA integrity_check.
//
// The child is this very binary re-executed (/proc/self/exe --pylon-crash-child DB LOG), so it
// starts as a fresh process rather than a fork of the test runner; that is why this file has its
// own main() instead of gtest_main.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "session_backend.hpp"
#include "support/process.hpp"
#include "support/test_support.hpp"

namespace {

constexpr const char* kChildFlag = "--pylon-crash-child";
constexpr int kChildThreads = 4;
constexpr int kRounds = 5;

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
// entirely in the log or not at all when the process dies.
class Journal {
 public:
  explicit Journal(int fd) : fd_(fd) {}
  void line(char kind, const std::string& token) {
    const std::string text = std::string(1, kind) + " " + token + "\n";
    const std::lock_guard<std::mutex> lock(mutex_);
    if (::write(fd_, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
      child_fails(5, std::string("write to log failed: ") + std::strerror(errno));
    }
  }

 private:
  int fd_;
  std::mutex mutex_;
};

// Never returns: the parent kills it (or, if the parent died, the kernel does: PDEATHSIG).
[[noreturn]] void run_crash_child(const char* db_path, const char* log_path) {
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open(2) takes the mode as a vararg
  const int fd = ::open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    child_fails(3, "cannot open " + std::string(log_path) + ": " + std::strerror(errno));
  }
  Journal journal(fd);
  try {
    pylon::SessionStore store = pylon::SessionStore::open(db_path);
    journal.line('S', "started");
    std::vector<std::thread> threads;
    threads.reserve(kChildThreads);
    for (int t = 0; t < kChildThreads; ++t) {
      threads.emplace_back([&store, &journal, t] {
        const std::string user = "crash-user-" + std::to_string(t);
        std::vector<std::string> mine;
        try {
          // Bounded only as a safety net: the parent kills the child long before.
          for (int i = 0; i < 1'000'000; ++i) {
            pylon::CreateOptions options;
            options.data = std::string("\0crash", 6) + std::to_string(i);
            const pylon::NewSession created = store.create(user, options);
            journal.line('C', created.token);
            mine.push_back(created.token);
            if (i % 3 == 2) {
              const std::string victim = mine[mine.size() / 2];
              mine.erase(mine.begin() + static_cast<std::ptrdiff_t>(mine.size() / 2));
              journal.line('r', victim);  // intent: its outcome is unknown until 'R'
              if (!store.revoke(victim)) {
                child_fails(6, "revoke of a live session returned false");
              }
              journal.line('R', victim);
            }
            if (!store.validate(created.token)) {
              child_fails(7, "a fresh session did not validate");
            }
          }
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
// The parent
// ------------------------------------------------------------------------------------------------

struct Ledger {
  std::set<std::string> created;         // 'C': create returned
  std::set<std::string> revoke_started;  // 'r': revoke called, outcome unknown without 'R'
  std::set<std::string> revoked;         // 'R': revoke returned true
  int starts = 0;
};

// Reads the log; a line without its newline (cut by the kill) is ignored.
Ledger read_ledger(const std::string& log_path) {
  Ledger ledger;
  const std::string content = pylon::test::read_file_bytes(log_path);
  std::size_t begin = 0;
  for (std::size_t end = content.find('\n'); end != std::string::npos;
       begin = end + 1, end = content.find('\n', begin)) {
    const std::string line = content.substr(begin, end - begin);
    if (line.size() < 3 || line[1] != ' ') continue;
    const std::string value = line.substr(2);
    switch (line[0]) {
      case 'S':
        ++ledger.starts;
        break;
      case 'C':
        ledger.created.insert(value);
        break;
      case 'r':
        ledger.revoke_started.insert(value);
        break;
      case 'R':
        ledger.revoked.insert(value);
        break;
      default:
        break;
    }
  }
  return ledger;
}

std::size_t count_lines(const std::string& log_path, char kind) {
  const std::string content = pylon::test::read_file_bytes(log_path);
  std::size_t count = 0;
  for (std::size_t at = 0; at < content.size(); ++at) {
    if ((at == 0 || content[at - 1] == '\n') && content[at] == kind) ++count;
  }
  return count;
}

pid_t spawn_child(const std::string& db_path, const std::string& log_path) {
  return pylon::test::spawn({"/proc/self/exe", kChildFlag, db_path, log_path});
}

// After round `round` (0-based): a fresh store validates every acknowledged create that was not
// revoked, no acknowledged revoke, and the file is intact.
void check_round(const std::string& db_path, const std::string& log_path, int round) {
  const Ledger ledger = read_ledger(log_path);
  EXPECT_EQ(ledger.starts, round + 1);
  std::size_t must_live = 0;
  std::size_t lost_creates = 0;
  std::size_t resurrected = 0;
  std::string examples;
  {
    pylon::SessionStore store = pylon::SessionStore::open(db_path);
    for (const std::string& token : ledger.created) {
      if (ledger.revoke_started.count(token) != 0) continue;  // outcome unknown
      ++must_live;
      if (!store.validate(token).has_value()) {
        ++lost_creates;
        if (examples.size() < 400) examples += "\n  lost create " + token.substr(0, 16) + "...";
      }
    }
    for (const std::string& token : ledger.revoked) {
      if (store.validate(token).has_value()) {
        ++resurrected;
        if (examples.size() < 400) examples += "\n  revived " + token.substr(0, 16) + "...";
      }
    }
    EXPECT_GE(store.size(), must_live);
  }
  std::cout << "round " << round + 1 << ": killed after " << ledger.created.size()
            << " acknowledged creates and " << ledger.revoked.size() << " revokes in all\n";
  EXPECT_EQ(lost_creates, 0U) << "of " << must_live << " acknowledged creates" << examples;
  EXPECT_EQ(resurrected, 0U) << "of " << ledger.revoked.size() << " acknowledged revokes"
                             << examples;
  pylon::test::RawDb raw(db_path);
  EXPECT_EQ(raw.query_text("PRAGMA integrity_check"), "ok");
  raw.close();
}

TEST(Crash, AcknowledgedWritesSurviveKillNine) {
  pylon::test::TempDir dir;
  const std::string db_path = dir.file("crash.db");
  const std::string log_path = dir.file("acknowledged.log");
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("random seed " + std::to_string(seed));
  std::mt19937 random(seed);
  std::uniform_int_distribution<int> delay_ms(5, 60);

  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round + 1));
    const std::size_t creates_before = count_lines(log_path, 'C');
    const pid_t pid = spawn_child(db_path, log_path);

    // Wait until this round's child has acknowledged some creates, then let it run a little more
    // and kill it mid-work. The deadline only prevents a hang when the child cannot start.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    bool child_exited = false;
    int status = 0;
    while (count_lines(log_path, 'C') < creates_before + 20) {
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
    ASSERT_GE(count_lines(log_path, 'C'), creates_before + 20) << "the child made no progress";

    check_round(db_path, log_path, round);
    if (::testing::Test::HasFailure()) return;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // NOLINTNEXTLINE(cppcoreguidelines-pro-bounds-pointer-arithmetic): main's argv is a C array
  if (argc == 4 && std::strcmp(argv[1], kChildFlag) == 0) run_crash_child(argv[2], argv[3]);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

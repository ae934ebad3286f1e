// Helpers shared by the filesystem fault suites in tests/faults/: the flags and entry
// points of the child processes this test program re-executes itself as, a line log that a child
// can die in the middle of without leaving half a line, and a bounded wait for a child, so that
// a hang fails the test instead of stalling it.
#ifndef PYLON_TESTS_FAULTS_FAULT_HELPERS_HPP_
#define PYLON_TESTS_FAULTS_FAULT_HELPERS_HPP_

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

namespace pylon::test::faults {

// argv[1] of this program when it runs as a child; the arguments after the flag are passed on.
inline constexpr const char* kIoErrorChildFlag = "--pylon-io-error-child";
inline constexpr const char* kBadPathChildFlag = "--pylon-bad-path-child";

// The children's main functions (io_error_test.cpp, bad_path_test.cpp). They return the exit
// status of the child.
int io_error_child_main(const std::vector<std::string>& args);
int bad_path_child_main(const std::vector<std::string>& args);

// The absolute path of this test program (readlink /proc/self/exe), for commands that run it
// through another program (strace, setpriv), where "/proc/self/exe" would name that program.
std::string self_executable();

// Appends whole lines to a file opened with O_APPEND, each with a single writev(2): a line is in
// the file entirely or not at all, whatever happens to the process. writev rather than write so
// that a test injecting faults into write(2) or pwrite64(2) never hits the log itself.
class LineLog {
 public:
  explicit LineLog(const std::string& path);
  ~LineLog();
  LineLog(const LineLog&) = delete;
  LineLog& operator=(const LineLog&) = delete;
  LineLog(LineLog&&) = delete;
  LineLog& operator=(LineLog&&) = delete;

  // Writes `text` and a newline. Exits the process with status 70 if the write fails: a child
  // that cannot log cannot be checked.
  void line(const std::string& text) const;

 private:
  int fd_;
};

// How a child ended.
struct ChildEnd {
  bool in_time = false;  // false: still running at the deadline, then killed with SIGKILL
  int status = -1;       // exit status, or 128 + the signal that ended it
};

// Waits for `pid` for at most `limit`, then kills it. Polls: no timed assertion is made, the
// limit only turns a hang into a failure.
ChildEnd wait_at_most(pid_t pid, std::chrono::seconds limit);

// The lines of `text`, without their newline; a last line without a newline is dropped (it was
// being written when the writer died).
std::vector<std::string> complete_lines(const std::string& text);

}  // namespace pylon::test::faults

#endif  // PYLON_TESTS_FAULTS_FAULT_HELPERS_HPP_

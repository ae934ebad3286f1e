// Implementation of the fault-suite helpers (see fault_helpers.hpp).
#include "faults/fault_helpers.hpp"

#include <fcntl.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <stdexcept>
#include <thread>

namespace pylon::test::faults {

std::string self_executable() {
  std::array<char, 4096> buffer{};
  const ssize_t size = ::readlink("/proc/self/exe", buffer.data(), buffer.size() - 1);
  if (size <= 0) throw std::runtime_error("readlink /proc/self/exe failed");
  return {buffer.data(), static_cast<std::size_t>(size)};
}

LineLog::LineLog(const std::string& path)
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open(2) takes the mode as a vararg
    : fd_(::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600)) {
  if (fd_ < 0) std::_Exit(70);
}

LineLog::~LineLog() { ::close(fd_); }

void LineLog::line(const std::string& text) const {
  std::string whole = text + "\n";
  iovec part{whole.data(), whole.size()};
  if (::writev(fd_, &part, 1) != static_cast<ssize_t>(whole.size())) std::_Exit(70);
}

ChildEnd wait_at_most(pid_t pid, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  for (;;) {
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) return {};
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return {};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  if (WIFEXITED(status)) return {true, WEXITSTATUS(status)};
  if (WIFSIGNALED(status)) return {true, 128 + WTERMSIG(status)};
  return {true, -1};
}

std::vector<std::string> complete_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t begin = 0;
  for (std::size_t end = text.find('\n'); end != std::string::npos;
       begin = end + 1, end = text.find('\n', begin)) {
    lines.push_back(text.substr(begin, end - begin));
  }
  return lines;
}

}  // namespace pylon::test::faults

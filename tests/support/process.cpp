// Implementation of the child-process helpers (see process.hpp).
#include "support/process.hpp"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <stdexcept>

namespace pylon::test {

pid_t spawn(const std::vector<std::string>& argv, const std::string& stdout_path, int stdin_fd,
            bool stderr_too) {
  if (argv.empty()) throw std::runtime_error("spawn: no program");
  // Everything exec needs is built before fork: between fork and exec only async-signal-safe
  // calls are made.
  std::vector<std::string> args = argv;
  std::vector<char*> raw_args;
  raw_args.reserve(args.size() + 1);
  for (std::string& arg : args) raw_args.push_back(arg.data());
  raw_args.push_back(nullptr);
  int out_fd = -1;
  if (!stdout_path.empty()) {
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open(2) takes the mode as a vararg
    out_fd = ::open(stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out_fd < 0) throw std::runtime_error("spawn: cannot open " + stdout_path);
  }
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // NOLINT(cppcoreguidelines-pro-type-vararg): C API
    if (out_fd >= 0) ::dup2(out_fd, STDOUT_FILENO);
    if (out_fd >= 0 && stderr_too) ::dup2(out_fd, STDERR_FILENO);
    if (stdin_fd >= 0) ::dup2(stdin_fd, STDIN_FILENO);
    ::execvp(raw_args.front(), raw_args.data());
    ::_exit(127);
  }
  const int fork_errno = errno;
  if (out_fd >= 0) ::close(out_fd);
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(fork_errno));
  return pid;
}

int wait_for(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw std::runtime_error(std::string("waitpid: ") + std::strerror(errno));
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

int run(const std::vector<std::string>& argv) { return wait_for(spawn(argv)); }

int run_quietly(const std::vector<std::string>& argv) {
  return wait_for(spawn(argv, "/dev/null", -1, /*stderr_too=*/true));
}

}  // namespace pylon::test

// Child processes for the tests: this test program re-executed (/proc/self/exe) as a second,
// independent process, and plain commands (pg_ctl), without a shell.
#ifndef PYLON_TESTS_SUPPORT_PROCESS_HPP_
#define PYLON_TESTS_SUPPORT_PROCESS_HPP_

#include <sys/types.h>

#include <string>
#include <vector>

namespace pylon::test {

// Starts `argv` (argv[0] is looked up in PATH unless it contains a '/'), with stdout sent to
// `stdout_path` when not empty (stderr too, with `stderr_too`) and stdin from the read end
// `stdin_fd` when >= 0. The child dies with the test process (PR_SET_PDEATHSIG). Returns its
// pid; throws std::runtime_error.
pid_t spawn(const std::vector<std::string>& argv, const std::string& stdout_path = {},
            int stdin_fd = -1, bool stderr_too = false);
// Waits for `pid`; returns its exit status, or 128 + the signal that killed it.
int wait_for(pid_t pid);
// spawn() then wait_for().
int run(const std::vector<std::string>& argv);
// run() with stdout and stderr sent to /dev/null.
int run_quietly(const std::vector<std::string>& argv);

}  // namespace pylon::test

#endif  // PYLON_TESTS_SUPPORT_PROCESS_HPP_

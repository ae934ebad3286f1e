// The PostgreSQL cluster that scripts/pg-cluster.sh started (PYLON_PG_DIR), for the tests that
// take the server away on purpose: stop it (pg_ctl stop -m immediate, a crash as far as clients
// can tell), start it again, or freeze and thaw its processes (SIGSTOP, SIGCONT). Such tests
// run alone (RUN_SERIAL): every other PostgreSQL test would see the outage too.
#ifndef PYLON_TESTS_SUPPORT_PG_CLUSTER_HPP_
#define PYLON_TESTS_SUPPORT_PG_CLUSTER_HPP_

#include <signal.h>  // NOLINT(modernize-deprecated-headers): kill() is POSIX, not <csignal>
#include <unistd.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "support/process.hpp"
#include "support/test_support.hpp"

namespace pylon::test {

class PgCluster {
 public:
  // Empty when PYLON_PG_DIR is not set.
  static std::optional<PgCluster> from_environment() {
    const char* dir = std::getenv("PYLON_PG_DIR");  // NOLINT(concurrency-mt-unsafe): no setenv
    if (dir == nullptr || *dir == '\0') return std::nullopt;
    std::string bindir = read_file_bytes(std::string(dir) + "/bindir");
    while (!bindir.empty() && bindir.back() == '\n') bindir.pop_back();
    return PgCluster(dir, bindir.empty() ? std::string("pg_ctl") : bindir + "/pg_ctl");
  }

  // pg_ctl ACTION on the cluster, as its owner (the postgres user when we are root). The
  // address and port come from the cluster's configuration, so `start` brings it back as it was.
  [[nodiscard]] int pg_ctl(const std::vector<std::string>& action) const {
    std::vector<std::string> command;
    if (::geteuid() == 0) command = {"runuser", "-u", "postgres", "--"};
    command.insert(command.end(), {pg_ctl_, "--pgdata=" + dir_ + "/data",
                                   "--log=" + dir_ + "/server.log", "--wait", "--silent"});
    command.insert(command.end(), action.begin(), action.end());
    return run(command);
  }

  // Sends `signal` to the postmaster and every process it started: SIGSTOP freezes the whole
  // server (sockets stay open, the kernel still accepts connections, nobody answers).
  [[nodiscard]] bool signal_server(int signal) const {
    const std::string pid_file = read_file_bytes(dir_ + "/data/postmaster.pid");
    const auto postmaster = static_cast<pid_t>(std::strtol(pid_file.c_str(), nullptr, 10));
    if (postmaster <= 0) return false;
    bool ok = ::kill(postmaster, signal) == 0;
    const std::string children = read_file_bytes("/proc/" + std::to_string(postmaster) + "/task/" +
                                                 std::to_string(postmaster) + "/children");
    std::size_t begin = 0;
    while (begin < children.size()) {
      std::size_t end = children.find(' ', begin);
      if (end == std::string::npos) end = children.size();
      const auto child =
          static_cast<pid_t>(std::strtol(children.substr(begin, end - begin).c_str(), nullptr, 10));
      if (child > 0) ok = ::kill(child, signal) == 0 && ok;
      begin = end + 1;
    }
    return ok;
  }

 private:
  PgCluster(std::string dir, std::string pg_ctl)
      : dir_(std::move(dir)), pg_ctl_(std::move(pg_ctl)) {}

  std::string dir_;
  std::string pg_ctl_;
};

}  // namespace pylon::test

#endif  // PYLON_TESTS_SUPPORT_PG_CLUSTER_HPP_

// How long a change made by one store takes to reach another on the same database, and what
// following costs: the figures of the README's "Several instances" rows. A measurement program,
// not a test: it asserts nothing about time.
//
// Two stores, A and B, each with its own connections, as two instances would have. Each round
// A creates a session and the clock runs until B accepts its token without a storage lookup
// (B's lookups are off: only its change feed can bring the session), then A revokes it and the
// clock runs until B refuses it. Then, on B alone: validate() of a cached token (a hit), of a
// well-formed token storage does not hold (a miss that reads storage: the point read), and, on
// SQLite, a hit with change_check_interval 0 (data_version checked before every lookup).
//
// Usage: propagation [--sqlite PATH | --postgres URL] [--rounds N] [--interval-ms N]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <pylon/session_backend.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double microseconds(Clock::duration duration) {
  return std::chrono::duration<double, std::micro>(duration).count();
}

// Median and 99th percentile of `samples` (µs), sorted in place.
void report(const char* what, std::vector<double>& samples) {
  if (samples.empty()) return;
  std::sort(samples.begin(), samples.end());
  const double median = samples[samples.size() / 2];
  const double p99 = samples[std::min(samples.size() - 1, samples.size() * 99 / 100)];
  std::cout << "  " << what << ": median " << median / 1000.0 << " ms, p99 " << p99 / 1000.0
            << " ms, max " << samples.back() / 1000.0 << " ms (" << samples.size() << " rounds)\n";
}

// Spins (yielding) until `done` holds; the time it took, or a negative value after 10 s.
template <typename Done>
double time_until(Clock::time_point started, Done done) {
  const Clock::time_point give_up = started + std::chrono::seconds(10);
  while (!done()) {
    if (Clock::now() > give_up) return -1;
    std::this_thread::yield();
  }
  return microseconds(Clock::now() - started);
}

// ns per validate() of `tokens`, cycled, over `calls` calls.
double validate_ns(pylon::SessionStore& store, const std::vector<std::string>& tokens,
                   std::size_t calls) {
  // validate() is in another translation unit and has effects (counters): never elided.
  const Clock::time_point started = Clock::now();
  for (std::size_t i = 0; i < calls; ++i) store.validate(tokens[i % tokens.size()]);
  return microseconds(Clock::now() - started) * 1000.0 / static_cast<double>(calls);
}

}  // namespace

int main(int argc, char** argv) {
  std::string url;
  std::size_t rounds = 200;
  std::int64_t interval_ms = 100;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];  // NOLINT(cppcoreguidelines-pro-bounds-pointer-arithmetic)
    const bool has_value = i + 1 < argc;
    // NOLINTNEXTLINE(cppcoreguidelines-pro-bounds-pointer-arithmetic)
    const std::string value = has_value ? argv[i + 1] : "";
    if ((arg == "--sqlite" || arg == "--postgres") && has_value) {
      url = value;
      ++i;
    } else if (arg == "--rounds" && has_value) {
      rounds = std::stoul(value);
      ++i;
    } else if (arg == "--interval-ms" && has_value) {
      interval_ms = std::stoll(value);
      ++i;
    } else {
      std::cerr << "usage: propagation [--sqlite PATH | --postgres URL] [--rounds N] "
                   "[--interval-ms N]\n";
      return 2;
    }
  }
  std::string scratch;
  if (url.empty()) {
    std::string directory = "/tmp/pylon-propagation-XXXXXX";
    if (::mkdtemp(directory.data()) == nullptr) return 1;
    scratch = directory;
    url = scratch + "/sessions.db";
  }
  const bool postgres = url.rfind("postgres", 0) == 0;
  try {
    pylon::StoreOptions a_options;
    pylon::StoreOptions b_options;
    b_options.miss_lookups_per_second = 0;  // only the feed can bring A's sessions to B
    b_options.change_check_interval = std::chrono::milliseconds(interval_ms);
    pylon::SessionStore a = pylon::SessionStore::open(url, a_options);
    pylon::SessionStore b = pylon::SessionStore::open(url, b_options);
    std::cout << "propagation on " << (postgres ? "PostgreSQL" : "SQLite")
              << ", change_check_interval " << interval_ms << " ms\n";

    std::vector<double> creates;
    std::vector<double> revokes;
    std::size_t lost = 0;
    std::mt19937 random(std::random_device{}());
    std::uniform_int_distribution<std::int64_t> jitter(0, std::max<std::int64_t>(interval_ms, 1));
    // A pause of random length before each write, so that writes land anywhere in B's polling
    // cycle instead of just after the check that saw the previous one.
    const auto pause = [&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(jitter(random)));
    };
    for (std::size_t round = 0; round < rounds; ++round) {
      pause();
      const pylon::NewSession login = a.create("user-" + std::to_string(round % 50));
      const double created =
          time_until(Clock::now(), [&] { return b.validate(login.token).has_value(); });
      pause();
      a.revoke(login.token);
      const double revoked =
          time_until(Clock::now(), [&] { return !b.validate(login.token).has_value(); });
      if (created < 0 || revoked < 0) {
        ++lost;
        continue;
      }
      creates.push_back(created);
      revokes.push_back(revoked);
    }
    report("a create on A, accepted by B", creates);
    report("a revoke on A, refused by B", revokes);
    if (lost > 0) std::cout << "  " << lost << " rounds never propagated within 10 s\n";

    // The cost of one validate() on B: a hit, and a miss that reads storage.
    std::vector<std::string> live;
    for (int i = 0; i < 100; ++i) live.push_back(a.create("hit-" + std::to_string(i)).token);
    time_until(Clock::now(), [&] { return b.validate(live.back()).has_value(); });
    pylon::StoreOptions looking = b_options;
    looking.miss_lookups_per_second = pylon::kMaxMissLookupsPerSecond;
    pylon::SessionStore c = pylon::SessionStore::open(url, looking);
    std::vector<std::string> unknown;
    for (int i = 0; i < 1000; ++i) unknown.push_back(pylon::generate_token());
    std::cout << "  validate(), a cached token: " << validate_ns(b, live, 200000) << " ns\n";
    std::cout << "  validate(), a token storage does not hold (one point read): "
              << validate_ns(c, unknown, 2000) / 1000.0 << " µs\n";
    if (!postgres) {
      pylon::StoreOptions exact = b_options;
      exact.change_check_interval = std::chrono::milliseconds(0);
      pylon::SessionStore d = pylon::SessionStore::open(url, exact);
      std::cout << "  validate(), a cached token, change_check_interval 0: "
                << validate_ns(d, live, 200000) << " ns\n";
    }
  } catch (const std::exception& error) {
    std::cerr << "propagation: " << error.what() << "\n";
    return 1;
  }
  if (!scratch.empty()) {
    for (const char* suffix : {"", "-wal", "-shm"}) {
      const std::string file = scratch + "/sessions.db" + suffix;
      ::unlink(file.c_str());
    }
    ::rmdir(scratch.c_str());
  }
  return 0;
}

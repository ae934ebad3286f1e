// validate_timing: whether SessionStore::validate() takes a measurably different time for the
// token of a live session and for a well-formed token that was never issued (issue 6, "Timing").
//
//   validate_timing [--quick] [--check] [--bare] [--cold] [--dir DIR] [--samples N]
//                   [--sessions N] [--seed S]
//
// Method (after dudect, Reparaz, Balasch and Verbauwhede, "Dude, is my code constant time?",
// DATE 2017): a store on an SQLite file in DIR holds --sessions live sessions. N samples (default
// 1,000,000) each time one validate() call with std::chrono::steady_clock (clock_gettime through
// the vDSO), and belong to one of two classes drawn at random from a seeded generator, so the
// run is reproducible and drift (frequency scaling, another process, the page cache) hits both
// classes alike:
//   known     the token of a live session (validate returns a copy of it)
//   unknown   a well-formed `pylon_<64 hex>` token from generate_token(), never issued
// A third class, interleaved the same way (one sample in ten on top of N), is reported apart:
//   malformed a token of the wrong form (uppercase hex, another prefix, one character short or
//             long, a non-hex character, empty). It is rejected by its form before any hashing,
//             so it is expected to be faster, and that leaks nothing about the stored sessions:
//             whether a string has the token form is public knowledge.
// The sessions look like a web login's (a user agent, an address, 58 bytes of data); with --bare
// they hold only a short user id, which shows how much of a difference is the copy of the
// session that validate() returns.
// A warm-up pass (a tenth of the samples, at least 10,000, over every class) runs first and is
// not counted. The store's clock is fixed at its start, so no idle-expiry slide falls due during
// the run and no sample includes a write (checked: StoreStats::writes must not move).
//
// What one sample times, the same for every class:
//   - validate() and the destruction of the optional it returned. A miss copies a session as a
//     hit does (a decoy from the buckets its id would be in: see SessionCache::find_token) and
//     frees the copy inside validate(); a hit hands its copy over and the caller frees it.
//     Timing the call without the destruction would charge the frees to a miss only.
//   - with the token's data in the processor's caches: each timed call comes right after an
//     untimed validate() of the same token, so that the figure is validate()'s own work. --cold
//     drops the untimed call: a hit's session and a miss's decoy then come from memory, and a
//     decoy that serves several unknown tokens is more often in the caches than a session that
//     serves one.
//
// The statistic is Welch's t of known against unknown, on every sample ("raw") and after
// dudect's cropping ("cropped"): one threshold, the 99th percentile of both classes pooled, and
// every sample at or above it dropped from its class, so that interrupts and preemptions, which
// land in either class by chance, do not decide the figure. Two A/A checks guard the harness:
// each class split in two at random, and each class split by token (even and odd places in its
// pool), must show no difference; the second shows how far tokens of one class differ among
// themselves (where their slots and sessions lie), which Welch's t, counting samples and not
// tokens, does not allow for. The verdict is issue 6's test: Welch's t on the raw samples,
// |t| < 4.5 read as "no measurable difference" (dudect's threshold for "probably not constant
// time" is 4.5 as well; an actual leak drives |t| far past it as samples grow). The cropped t is
// printed beside it but is not the verdict: its error is a few hundredths of a nanosecond, and it
// resolves offsets of a few tenths of a nanosecond whose sign changes from run to run of the same
// binary (where the heap, the stack and the code fall in a process).
// The verdict is a figure, not an assertion: the exit status is 0 whenever the run completed, 2
// on an error, and 1 only with --check when |t| >= 4.5. --quick (a small N) is the smoke run that
// keeps this program building and running; its figures mean little.
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <optional>
#include <pylon/session_backend.hpp>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using pylon::Session;
using pylon::SessionStore;
using pylon::StoreOptions;

constexpr double kThreshold = 4.5;

// ------------------------------------------------------------------------------------------------
// Settings and output
// ------------------------------------------------------------------------------------------------

struct Settings {
  bool quick = false;
  bool check = false;
  bool bare = false;  // sessions without device, ip or data: the smallest copy validate returns
  bool cold = false;  // no untimed validate() of the token before each timed one
  std::string dir = "/var/tmp";
  std::size_t samples = 1000000;  // known + unknown; malformed ones come on top (a tenth)
  std::size_t sessions = 10000;
  std::uint64_t seed = 1;
};

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "validate_timing: %s\n", why.c_str());
  std::exit(2);  // NOLINT(concurrency-mt-unsafe): single-threaded
}

// The kernel's clock source: with a TSC (or kvm-clock) steady_clock is read in user space in
// tens of nanoseconds; with hpet or acpi_pm every read is a system call, and the figures drown.
std::string clock_source() {
  std::ifstream file("/sys/devices/system/clocksource/clocksource0/current_clocksource");
  std::string name;
  file >> name;
  return name.empty() ? "unknown" : name;
}

// The SQLite file of the store, with its -wal and -shm removed before and after the run.
class ScratchFile {
 public:
  explicit ScratchFile(const std::string& dir)
      : path_(dir + "/pylon-validate-timing-" + std::to_string(::getpid()) + ".db") {
    remove_all();
  }
  ~ScratchFile() { remove_all(); }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;
  ScratchFile(ScratchFile&&) = delete;
  ScratchFile& operator=(ScratchFile&&) = delete;
  const std::string& path() const { return path_; }

 private:
  void remove_all() const {
    for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
      std::remove((path_ + suffix).c_str());
    }
  }
  std::string path_;
};

// ------------------------------------------------------------------------------------------------
// Statistics
// ------------------------------------------------------------------------------------------------

struct Summary {
  std::size_t count = 0;
  double mean = 0;
  double variance = 0;  // unbiased (n - 1)
  double median = 0;
  double p99 = 0;
};

// The value at quantile q (0..1) of sorted values, nearest rank.
double quantile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const auto rank =
      static_cast<std::size_t>(std::llround(q * static_cast<double>(sorted.size() - 1)));
  return sorted[std::min(rank, sorted.size() - 1)];
}

// Two passes (mean, then squared deviations): exact enough for 10^6 values of ~10^3 ns.
Summary summarize(std::vector<double> values) {
  Summary summary;
  summary.count = values.size();
  if (values.empty()) return summary;
  double sum = 0;
  for (const double value : values) sum += value;
  summary.mean = sum / static_cast<double>(values.size());
  double squares = 0;
  for (const double value : values) squares += (value - summary.mean) * (value - summary.mean);
  summary.variance = values.size() > 1 ? squares / static_cast<double>(values.size() - 1) : 0;
  std::sort(values.begin(), values.end());
  summary.median = quantile(values, 0.5);
  summary.p99 = quantile(values, 0.99);
  return summary;
}

// Welch's t: the difference of the means over its standard error, the variances not assumed
// equal. Positive when `a` is slower.
double welch_t(const Summary& a, const Summary& b) {
  const double error = std::sqrt(a.variance / static_cast<double>(a.count) +
                                 b.variance / static_cast<double>(b.count));
  return error > 0 ? (a.mean - b.mean) / error : 0;
}

// The values strictly below `limit`.
std::vector<double> below(const std::vector<double>& values, double limit) {
  std::vector<double> kept;
  kept.reserve(values.size());
  for (const double value : values) {
    if (value < limit) kept.push_back(value);
  }
  return kept;
}

// ------------------------------------------------------------------------------------------------
// Tokens and samples
// ------------------------------------------------------------------------------------------------

enum class Kind : std::uint8_t { kKnown, kUnknown, kMalformed };

struct Sample {
  Kind kind = Kind::kKnown;
  bool second_half = false;  // a random split of each class, for the A/A check
  bool odd_token = false;    // the token's place in its pool is odd: a split by token
  const std::string* token = nullptr;
  double nanoseconds = 0;
};

// A token of the wrong form, of one of several kinds by `variant`, made from a fresh token.
std::string malformed_token(std::size_t variant) {
  std::string token = pylon::generate_token();
  switch (variant % 6) {
    case 0:  // uppercase hex
      std::transform(token.begin() + 6, token.end(), token.begin() + 6,
                     [](char c) { return c >= 'a' && c <= 'f' ? static_cast<char>(c - 32) : c; });
      token.back() = 'F';  // at least one uppercase digit, whatever the random bytes were
      return token;
    case 1:  // another prefix
      token[4] = 'x';
      return token;
    case 2:  // one character short
      token.pop_back();
      return token;
    case 3:  // one character long
      token.push_back('0');
      return token;
    case 4:  // a non-hex character at the end
      token.back() = 'g';
      return token;
    default:
      return {};
  }
}

// Live sessions shaped like a web login (device, address, a little data), or with `bare` only a
// short user id; their tokens.
std::vector<std::string> create_sessions(SessionStore& store, std::size_t count, bool bare) {
  std::vector<std::string> tokens;
  tokens.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    pylon::CreateOptions where;
    if (!bare) {
      where.device = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0";
      where.ip = "203.0.113.7";
      where.data = R"({"csrf":"8f14e45fceea167a5a36dedd4bea2543","theme":"dark"})";
    }
    tokens.push_back(store.create("user-" + std::to_string(i % 1000), where).token);
  }
  return tokens;
}

// `pairs` known and unknown samples (half each) and `pairs / 10` malformed ones, in an order
// shuffled by `random`; each takes a token of its pool, also drawn by `random`.
std::vector<Sample> draw_samples(std::size_t pairs, std::mt19937_64& random,
                                 const std::vector<std::string>& known,
                                 const std::vector<std::string>& unknown,
                                 const std::vector<std::string>& malformed) {
  std::vector<Sample> samples(pairs + pairs / 10);
  for (std::size_t i = 0; i < samples.size(); ++i) {
    samples[i].kind = i < pairs / 2 ? Kind::kKnown : i < pairs ? Kind::kUnknown : Kind::kMalformed;
  }
  std::shuffle(samples.begin(), samples.end(), random);
  std::bernoulli_distribution coin;
  for (Sample& sample : samples) {
    sample.second_half = coin(random);
    const std::vector<std::string>& pool = sample.kind == Kind::kKnown     ? known
                                           : sample.kind == Kind::kUnknown ? unknown
                                                                           : malformed;
    const std::size_t place =
        std::uniform_int_distribution<std::size_t>(0, pool.size() - 1)(random);
    sample.token = &pool[place];
    sample.odd_token = place % 2 == 1;
  }
  return samples;
}

// Times one validate() per sample, in order, its result destroyed inside the timed region; unless
// `cold`, each after an untimed validate() of the same token. Dies if a known token fails or
// another succeeds.
void run(SessionStore& store, std::vector<Sample>& samples, bool cold) {
  std::size_t wrong = 0;
  for (Sample& sample : samples) {
    if (!cold) static_cast<void>(store.validate(*sample.token));
    const Clock::time_point start = Clock::now();
    bool valid = false;
    {
      const std::optional<Session> session = store.validate(*sample.token);
      valid = session.has_value();
    }  // the session, if any, is freed here: a miss frees its decoy inside validate()
    const Clock::time_point stop = Clock::now();
    sample.nanoseconds = std::chrono::duration<double, std::nano>(stop - start).count();
    if (valid != (sample.kind == Kind::kKnown)) ++wrong;
  }
  if (wrong > 0) die(std::to_string(wrong) + " validate() results did not match their class");
}

// The median cost of two back-to-back clock reads: included in every sample, alike for all.
double clock_overhead_ns() {
  std::vector<double> gaps(100000);
  for (double& gap : gaps) {
    const Clock::time_point start = Clock::now();
    const Clock::time_point stop = Clock::now();
    gap = std::chrono::duration<double, std::nano>(stop - start).count();
  }
  std::sort(gaps.begin(), gaps.end());
  return quantile(gaps, 0.5);
}

void print_class(const char* name, const Summary& summary) {
  std::printf("%-34s %9zu %10.1f %10.1f %10.1f %10.1f\n", name, summary.count, summary.mean,
              std::sqrt(summary.variance), summary.median, summary.p99);
}

// ------------------------------------------------------------------------------------------------
// The measurement
// ------------------------------------------------------------------------------------------------

// Returns the exit status.
int measure(const Settings& settings) {
  const ScratchFile file(settings.dir);
  // synchronous=NORMAL only to make the set-up's creates quick: validate() never touches the
  // file, which the run checks below.
  pylon::SqliteOptions sqlite;
  sqlite.synchronous = pylon::SqliteSync::kNormal;
  StoreOptions options;
  const std::int64_t start = pylon::system_clock_now();
  options.clock = [start] { return start; };  // no slide falls due while the run lasts
  // What is measured is the cache: a hit against a miss of its lookup. With lookups for misses
  // on, an unknown token may also cost a storage read (StoreOptions::miss_lookups_per_second),
  // which takes longer, and is keyed by the token's SHA-256 so that it tells nothing about any
  // other token; the README's Timing section says so.
  options.miss_lookups_per_second = 0;
  SessionStore store(pylon::open_sqlite_backend(file.path(), sqlite), options);

  const std::vector<std::string> issued = create_sessions(store, settings.sessions, settings.bare);
  // The pools are copied in one interleaved pass, so that the strings of the three classes sit
  // side by side on the heap: where a token's bytes lie must not differ by class.
  std::vector<std::string> known;
  std::vector<std::string> unknown;
  std::vector<std::string> malformed;
  for (std::size_t i = 0; i < settings.sessions; ++i) {
    known.push_back(issued[i]);
    unknown.push_back(pylon::generate_token());
    malformed.push_back(malformed_token(i));
  }
  for (const std::string& token : unknown) {
    if (!pylon::is_well_formed_token(token) || store.validate(token)) die("a bad unknown token");
  }
  for (const std::string& token : malformed) {
    if (pylon::is_well_formed_token(token)) die("a malformed token is well formed");
  }

  std::mt19937_64 random(settings.seed);
  std::vector<Sample> warm_up = draw_samples(std::max<std::size_t>(settings.samples / 10, 10000),
                                             random, known, unknown, malformed);
  std::vector<Sample> samples = draw_samples(settings.samples, random, known, unknown, malformed);
  const std::uint64_t writes_before = store.stats().writes;
  run(store, warm_up, settings.cold);
  const auto began = Clock::now();
  run(store, samples, settings.cold);
  const double seconds = std::chrono::duration<double>(Clock::now() - began).count();
  const std::uint64_t writes = store.stats().writes - writes_before;
  if (writes != 0) die(std::to_string(writes) + " storage writes during the run");

  std::array<std::vector<double>, 3> by_kind;
  // [known, unknown][first, second]: split at random, and split by token
  std::array<std::array<std::vector<double>, 2>, 2> halves;
  std::array<std::array<std::vector<double>, 2>, 2> token_halves;
  for (const Sample& sample : samples) {
    const auto kind = static_cast<std::size_t>(sample.kind);
    by_kind.at(kind).push_back(sample.nanoseconds);
    if (kind < 2) {
      halves.at(kind).at(sample.second_half ? 1 : 0).push_back(sample.nanoseconds);
      token_halves.at(kind).at(sample.odd_token ? 1 : 0).push_back(sample.nanoseconds);
    }
  }
  const std::vector<double>& known_ns = by_kind[0];
  const std::vector<double>& unknown_ns = by_kind[1];
  const std::vector<double>& malformed_ns = by_kind[2];

  std::vector<double> pooled(known_ns);
  pooled.insert(pooled.end(), unknown_ns.begin(), unknown_ns.end());
  std::sort(pooled.begin(), pooled.end());
  const double crop = quantile(pooled, 0.99);

  const Summary known_raw = summarize(known_ns);
  const Summary unknown_raw = summarize(unknown_ns);
  const Summary malformed_raw = summarize(malformed_ns);
  const Summary known_cropped = summarize(below(known_ns, crop));
  const Summary unknown_cropped = summarize(below(unknown_ns, crop));
  const Summary malformed_cropped = summarize(below(malformed_ns, crop));
  const double t_raw = welch_t(known_raw, unknown_raw);
  const double t_cropped = welch_t(known_cropped, unknown_cropped);

  std::printf(
      "%zu samples (%zu known and unknown, %zu malformed) in %.1f s after %zu warm-up "
      "samples; clock overhead (two reads, in every sample) %.0f ns\n\n",
      samples.size(), settings.samples, samples.size() - settings.samples, seconds, warm_up.size(),
      clock_overhead_ns());
  std::printf("%-34s %9s %10s %10s %10s %10s\n", "class (ns per validate)", "count", "mean", "sd",
              "median", "p99");
  print_class("known (live session)", known_raw);
  print_class("unknown (well-formed, never issued)", unknown_raw);
  print_class("malformed (rejected by form)", malformed_raw);
  std::printf("cropped at %.0f ns (p99 of known and unknown pooled):\n", crop);
  print_class("known (live session)", known_cropped);
  print_class("unknown (well-formed, never issued)", unknown_cropped);
  print_class("malformed (rejected by form)", malformed_cropped);
  std::printf(
      "\nWelch t, known vs unknown: raw %.2f, cropped %.2f (positive: known slower; "
      "difference of means %.1f ns raw, %.1f ns cropped)\n",
      t_raw, t_cropped, known_raw.mean - unknown_raw.mean,
      known_cropped.mean - unknown_cropped.mean);
  const bool same = std::fabs(t_raw) < kThreshold;
  const auto a_a = [crop](const std::array<std::vector<double>, 2>& split) {
    return welch_t(summarize(below(split[0], crop)), summarize(below(split[1], crop)));
  };
  std::printf(
      "A/A checks, cropped (|t| >= 4.5 here would mean the harness itself is biased): each class "
      "split in two at random: known %.2f, unknown %.2f; split by token: known %.2f, unknown "
      "%.2f\n",
      a_a(halves[0]), a_a(halves[1]), a_a(token_halves[0]), a_a(token_halves[1]));
  std::printf(
      "Welch t, malformed vs unknown: raw %.2f, cropped %.2f (reported apart: a malformed "
      "token is rejected by its form before hashing, which tells nothing about the "
      "stored sessions, so it may be faster)\n",
      welch_t(malformed_raw, unknown_raw), welch_t(malformed_cropped, unknown_cropped));
  std::printf(
      "\n%s: validate() known vs unknown%s, Welch |t| %.2f over the raw samples; PASS needs < "
      "4.5 (cropped |t| %.2f, reported, not the verdict)%s\n",
      same ? "PASS" : "FAIL", settings.cold ? " (--cold)" : "", std::fabs(t_raw),
      std::fabs(t_cropped),
      settings.quick ? " (--quick: a smoke run, the verdict means little)" : "");
  std::fflush(stdout);
  return settings.check && !same ? 1 : 0;
}

Settings parse_arguments(int argc, char** argv) {
  Settings settings;
  const std::vector<std::string> args(argv + 1, argv + argc);
  bool samples_given = false;
  bool sessions_given = false;
  const auto number = [](const std::string& option, const std::string& text) {
    std::size_t used = 0;
    std::uint64_t value = 0;
    try {
      value = static_cast<std::uint64_t>(std::stoull(text, &used));
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != text.size() || text.empty() || text[0] == '-') {
      die(option + " needs a non-negative integer, not \"" + text + "\"");
    }
    return value;
  };
  for (std::size_t i = 0; i < args.size(); ++i) {
    const auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) die(args[i] + " needs a value");
      return args[++i];
    };
    if (args[i] == "--quick") {
      settings.quick = true;
    } else if (args[i] == "--check") {
      settings.check = true;
    } else if (args[i] == "--bare") {
      settings.bare = true;
    } else if (args[i] == "--cold") {
      settings.cold = true;
    } else if (args[i] == "--dir") {
      settings.dir = value();
    } else if (args[i] == "--samples") {
      settings.samples = static_cast<std::size_t>(number("--samples", value()));
      samples_given = true;
    } else if (args[i] == "--sessions") {
      settings.sessions = static_cast<std::size_t>(number("--sessions", value()));
      sessions_given = true;
    } else if (args[i] == "--seed") {
      settings.seed = number("--seed", value());
    } else {
      die("unknown argument " + args[i] +
          "; usage: validate_timing [--quick] [--check] [--bare] [--cold] [--dir DIR] "
          "[--samples N] [--sessions N] [--seed S]");
    }
  }
  if (settings.quick) {
    if (!samples_given) settings.samples = 20000;
    if (!sessions_given) settings.sessions = 200;
  }
  if (settings.samples < 100) die("--samples must be at least 100");
  if (settings.sessions < 1) die("--sessions must be at least 1");
  return settings;
}

}  // namespace

int main(int argc, char** argv) {
  const Settings settings = parse_arguments(argc, argv);
  std::printf(
      "validate_timing%s: %u cores, file in %s, clock source %s; %zu samples, seed %s, "
      "%zu live sessions%s; %s\n",
      settings.quick ? " --quick (smoke run; figures not meaningful)" : "",
      std::thread::hardware_concurrency(), settings.dir.c_str(), clock_source().c_str(),
      settings.samples, std::to_string(settings.seed).c_str(), settings.sessions,
      settings.bare ? " (bare: no device, ip or data)" : "",
      settings.cold ? "cold (no untimed call before each timed one)"
                    : "each timed call after an untimed one with the same token");
  try {
    return measure(settings);
  } catch (const pylon::Error& error) {
    die(std::string("library error: ") + error.what());
  }
}

// Races ("Sanitizers and races"): 8 threads validate, create, revoke and rotate on one
// SessionStore seeded with 10,000 sessions, on each backend (TEST_P with the parameters "sqlite"
// and "postgres", a fresh database per test). The threads share one pool of tokens, and half of
// their picks go to a "contested" token (all threads aim at it until it is revoked or rotated
// away) or to one of the last few issued, so two threads often revoke or rotate the same session
// at once. Each thread runs a fixed number of operations (fewer under a
// sanitizer) and checks every result as it comes, against what calls that had already returned
// established:
//   - a token revoked or rotated away by a call that returned (in any thread) never validates
//     again, and revoke/rotate of it fail;
//   - a token nobody has tried to revoke or rotate validates, with its user, tenant, device, ip,
//     data, creation time and hard cap, live at the time of the call and slid within
//     touch_interval (the clock moves during the run, so validate also writes slides);
//   - of all the revokes and rotations of one token, exactly one succeeds; a failed one leaves
//     the token dead; a rotation's successor validates and carries the session's fields;
//   - unknown and malformed tokens never validate, revoke or rotate.
// Afterwards: every token's fate is as its calls said, storage (load_all() of a fresh backend)
// holds exactly the live sessions, the store's cache equals storage row for row (find() of each
// row, list_user() of each user, size()), a second store opened on the database agrees with the
// first for every token ever issued, and the events match the calls that succeeded.
//
// PYLON_STRESS_SEED=<n> replays each thread's random draws (which operation, which place in the
// pool); the interleaving, and so which token is at that place, stays the scheduler's. The seed
// is in every failure message and in the summary line.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "session_backend.hpp"
#include "support/test_database.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::CreateOptions;
using pylon::NewSession;
using pylon::Session;
using pylon::SessionEvent;
using pylon::SessionEventType;
using pylon::SessionStore;
using pylon::StoreOptions;
using pylon::test::ManualClock;
using pylon::test::TestDatabase;

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

constexpr int kThreads = 8;
constexpr std::size_t kSeededSessions = 10'000;
constexpr std::size_t kUsers = 100;
// A fixed amount of work, not a fixed time: sanitized builds run fewer operations so that a run
// stays under a minute on two busy cores.
constexpr int kOperationsPerThread = kSanitized ? 1000 : 2000;
// Three picks in ten are one of the kHotWindow tokens issued last (two more are the contested
// token): where the threads collide.
constexpr std::size_t kHotWindow = 16;
// Each thread moves the shared clock one second forward every this many operations, so that
// validate() writes idle slides (touch_interval is 60 s) while the others revoke and rotate.
constexpr int kAdvanceEvery = 25;
constexpr std::int64_t kStart = 1'700'000'000;
constexpr std::int64_t kTouchInterval = 60;
constexpr std::int64_t kIdleTimeout = 3600;
constexpr std::int64_t kAbsoluteTtl = 86'400;
// Nothing may expire during the run, or a session could vanish without a call that ended it.
static_assert(std::int64_t{kThreads} * (kOperationsPerThread / kAdvanceEvery) < kIdleTimeout / 2);

// How many problems a thread describes in full (it counts them all).
constexpr std::size_t kProblemsShown = 12;

std::string user_name(std::size_t index) { return "stress-user-" + std::to_string(index); }

// The first characters of a session id: enough to find it, and never the token.
std::string brief_id(const std::string& id) { return id.substr(0, 12); }

// ------------------------------------------------------------------------------------------------
// The shared pool of tokens
// ------------------------------------------------------------------------------------------------

// One token ever issued (seeded, created or a rotation's successor), and what the calls on it
// that have returned established. A thread bumps kill_attempts before it calls revoke() or
// rotate() on the token, and sets dead after such a call succeeded: so a validate() that reads
// dead == true before it starts must fail, and one that fails while kill_attempts is still 0
// after it returned had no reason to.
struct TokenState {
  TokenState(std::string issued, Session session)
      : token(std::move(issued)), id(session.id), expected(std::move(session)) {}

  const std::string token;
  const std::string id;
  // As issued. Its user, tenant, device, ip, data, created_at, absolute_expires_at and
  // idp_session_id never change; last_seen_at and expires_at slide.
  const Session expected;
  std::atomic<int> kill_attempts{0};
  std::atomic<int> kills{0};  // revokes and rotations of it that succeeded
  std::atomic<bool> dead{false};
};

class TokenPool {
 public:
  TokenState* add(std::string token, Session session) {
    const std::lock_guard<std::mutex> lock(mutex_);
    // A deque never moves its elements, so the pointer stays valid as the pool grows.
    return &states_.emplace_back(std::move(token), std::move(session));
  }

  // A random token: a fifth of the time the contested one (every thread aims at it until it is
  // revoked or rotated away, then another live token takes its place), three tenths one of the
  // kHotWindow issued last, else any.
  TokenState* pick(std::mt19937_64& random) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const std::size_t size = states_.size();
    const std::uint64_t dice = random() % 10;
    if (dice < 2) {
      // A few tries for a live one; a dead one is a fine target too.
      for (int i = 0; i < 8 && (contested_ == nullptr || contested_->dead.load()); ++i) {
        contested_ = &states_[static_cast<std::size_t>(random() % size)];
      }
      return contested_;
    }
    if (dice < 5) return &states_[size - 1 - static_cast<std::size_t>(random() % kHotWindow)];
    return &states_[static_cast<std::size_t>(random() % size)];
  }

  // Every state; call once the threads have joined.
  std::vector<const TokenState*> all() {
    const std::lock_guard<std::mutex> lock(mutex_);
    std::vector<const TokenState*> states;
    states.reserve(states_.size());
    for (const TokenState& state : states_) states.push_back(&state);
    return states;
  }

 private:
  std::mutex mutex_;
  std::deque<TokenState> states_;    // guarded by mutex_
  TokenState* contested_ = nullptr;  // guarded by mutex_
};

// ------------------------------------------------------------------------------------------------
// One thread
// ------------------------------------------------------------------------------------------------

struct ThreadReport {
  std::size_t problem_count = 0;
  std::vector<std::string> problems;  // the first kProblemsShown
  std::size_t validated = 0;          // validate() of pool tokens that returned a session
  std::size_t refused = 0;            // validate() of pool tokens that returned none
  std::size_t unknown = 0;            // unknown or malformed tokens tried
  std::size_t created = 0;
  std::size_t revoked = 0;  // revoke() that returned true
  std::size_t revoke_lost = 0;
  std::size_t rotated = 0;  // rotate() that returned a successor
  std::size_t rotate_lost = 0;
  // Revokes and rotations that failed on a token not yet known dead when they were called:
  // another thread's call on the same session was in flight, and won.
  std::size_t raced = 0;

  void problem(const std::string& what) {
    ++problem_count;
    if (problems.size() < kProblemsShown) problems.push_back(what);
  }
};

// Events, counted by the store's on_event (called on the threads doing the calls).
struct EventCounts {
  std::atomic<std::size_t> created{0};
  std::atomic<std::size_t> revoked{0};
  std::atomic<std::size_t> rotated{0};
  std::atomic<std::size_t> reused{0};
  std::atomic<std::size_t> expired{0};

  void count(const SessionEvent& event) {
    switch (event.type) {
      case SessionEventType::kCreated:
        ++created;
        break;
      case SessionEventType::kRevoked:
        revoked += event.count;
        break;
      case SessionEventType::kRotated:
        ++rotated;
        break;
      case SessionEventType::kRotatedTokenReused:
        ++reused;
        break;
      case SessionEventType::kValidatedExpired:
        ++expired;
        break;
      case SessionEventType::kPurged:
      case SessionEventType::kReaperFailed:
      case SessionEventType::kFilePermissionsTightened:
      case SessionEventType::kChangeFeedLost:
      case SessionEventType::kChangeFeedResumed:
      case SessionEventType::kUserAttached:
      case SessionEventType::kReauthenticated:
      case SessionEventType::kExtended:
      case SessionEventType::kTenantRevoked:
        break;
    }
  }
};

// The fields a session keeps for its whole life, rotation included. Empty when they match.
std::string differences_in_fixed_fields(const Session& expected, const Session& got) {
  std::string differences;
  const auto field = [&differences](const char* name, bool same) {
    if (!same) differences += std::string(differences.empty() ? "" : ", ") + name;
  };
  field("user_id", expected.user_id == got.user_id);
  field("tenant_id", expected.tenant_id == got.tenant_id);
  field("device", expected.device == got.device);
  field("ip", expected.ip == got.ip);
  field("data", expected.data == got.data);
  field("created_at", expected.created_at == got.created_at);
  field("absolute_expires_at", expected.absolute_expires_at == got.absolute_expires_at);
  field("idp_session_id", expected.idp_session_id == got.idp_session_id);
  return differences;
}

class StressThread {
 public:
  StressThread(SessionStore* store, TokenPool* pool, ManualClock clock, int thread,
               std::uint64_t seed, ThreadReport* report)
      : store_(store),
        pool_(pool),
        clock_(std::move(clock)),
        thread_(thread),
        random_(seed),
        report_(report) {}

  void run(int operations) {
    for (int i = 0; i < operations; ++i) {
      const std::uint64_t dice = random_() % 100;
      if (dice < 40) {
        validate_pooled(pool_->pick(random_));
      } else if (dice < 45) {
        validate_own_killed();
      } else if (dice < 50) {
        try_unknown();
      } else if (dice < 65) {
        create(i);
      } else if (dice < 80) {
        revoke(pool_->pick(random_));
      } else {
        rotate(pool_->pick(random_));
      }
      if (i % kAdvanceEvery == kAdvanceEvery - 1) clock_.advance(1);
    }
  }

 private:
  void problem(const std::string& what) {
    report_->problem("thread " + std::to_string(thread_) + ": " + what);
  }

  // A session validate() returned for `state`: its id, its fixed fields, live now.
  void check_validated(const TokenState& state, const Session& got, std::int64_t called_at,
                       const char* what) {
    if (got.id != state.id) problem(std::string(what) + ": wrong id " + brief_id(got.id));
    const std::string differences = differences_in_fixed_fields(state.expected, got);
    if (!differences.empty()) {
      problem(std::string(what) + " " + brief_id(state.id) + ": " + differences + " changed");
    }
    // The store read its clock after called_at: live then, and touched within touch_interval.
    if (got.expires_at <= called_at) problem(std::string(what) + ": returned an expired session");
    if (got.last_seen_at + kTouchInterval <= called_at) {
      problem(std::string(what) + " " + brief_id(state.id) + ": last_seen_at " +
              std::to_string(got.last_seen_at) + " not slid at " + std::to_string(called_at));
    }
  }

  void validate_pooled(TokenState* state) {
    const std::int64_t called_at = clock_.now();
    const bool dead_before = state->dead.load();
    const std::optional<Session> got = store_->validate(state->token);
    if (got) {
      ++report_->validated;
      if (dead_before) {
        problem("validate of " + brief_id(state->id) +
                " returned a session after a revoke or rotation of it had returned");
      }
      check_validated(*state, *got, called_at, "validate");
    } else {
      ++report_->refused;
      if (state->kill_attempts.load() == 0) {
        problem("validate of " + brief_id(state->id) +
                " returned none, and no call ever tried to revoke or rotate it");
      }
    }
  }

  // A token this thread revoked or rotated away: never valid again, nor revocable.
  void validate_own_killed() {
    if (killed_.empty()) {
      try_unknown();
      return;
    }
    const TokenState* state = killed_[random_() % killed_.size()];
    if (store_->validate(state->token)) {
      problem("validate of " + brief_id(state->id) +
              ", which this thread revoked or rotated "
              "away, returned a session");
    }
    if (random_() % 4 == 0 && store_->revoke(state->token)) {
      problem("revoke of " + brief_id(state->id) + " succeeded a second time");
    }
  }

  // A token never issued, or a string that cannot be a token.
  void try_unknown() {
    ++report_->unknown;
    std::string token = pylon::generate_token();
    switch (random_() % 4) {
      case 0:
        token.back() = 'G';  // not hex
        break;
      case 1:
        token.pop_back();  // one character short
        break;
      default:
        break;  // well-formed, never issued
    }
    if (store_->validate(token)) problem("an unknown token validated");
    if (random_() % 4 == 0) {
      if (store_->rotate(token)) problem("an unknown token was rotated");
      if (store_->revoke(token)) problem("an unknown token was revoked");
    }
  }

  void create(int operation) {
    const std::string user = user_name(random_() % kUsers);
    CreateOptions options;
    if (random_() % 3 == 0) options.tenant_id = "tenant-" + std::to_string(random_() % 3);
    options.device = "stress-device-" + std::to_string(thread_);
    options.ip = "203.0.113." + std::to_string(thread_);
    options.data = std::string("\0\xff", 2) + "t" + std::to_string(thread_) + "-op" +
                   std::to_string(operation);
    if (random_() % 2 == 0) options.idp_session_id = "sid-" + std::to_string(random_() % 1000);
    const std::int64_t called_at = clock_.now();
    const NewSession created = store_->create(user, options);
    ++report_->created;
    const Session& session = created.session;
    if (!pylon::is_well_formed_token(created.token) ||
        session.id != pylon::session_id_for_token(created.token)) {
      problem("create returned a malformed token, or a session id that is not its hash");
    }
    if (session.user_id != user || session.tenant_id != options.tenant_id ||
        session.device != options.device || session.ip != options.ip ||
        session.data != options.data || session.idp_session_id != options.idp_session_id) {
      problem("create returned a session with other fields than it was given");
    }
    if (session.created_at < called_at || session.created_at > clock_.now()) {
      problem("create stamped " + std::to_string(session.created_at) + ", outside the call");
    }
    TokenState fresh(created.token, session);
    // Nobody else knows the token yet: it must validate.
    const std::optional<Session> got = store_->validate(created.token);
    if (!got) {
      problem("a session just created does not validate");
    } else {
      check_validated(fresh, *got, called_at, "validate after create");
    }
    pool_->add(created.token, session);
  }

  void revoke(TokenState* state) {
    const bool dead_before = state->dead.load();
    state->kill_attempts.fetch_add(1);
    const bool revoked = store_->revoke(state->token);
    if (revoked) {
      ++report_->revoked;
      if (dead_before) problem("revoke of " + brief_id(state->id) + " succeeded once it was dead");
      if (state->kills.fetch_add(1) != 0) {
        problem("revoke of " + brief_id(state->id) + " succeeded after another revoke or rotation");
      }
      state->dead.store(true);
      killed_.push_back(state);
    } else {
      ++report_->revoke_lost;
      if (!dead_before) ++report_->raced;
      // False: the session was gone already, so another revoke or rotation took it.
      if (state->kill_attempts.load() == 1) {
        problem("revoke of " + brief_id(state->id) +
                " returned false, and no other call ever tried to revoke or rotate it");
      }
    }
    // Either way, the token has no session now, and never will again.
    if (store_->validate(state->token)) {
      problem("validate of " + brief_id(state->id) + " after revoke returned " +
              (revoked ? "true" : "false") + " returned a session");
    }
  }

  void rotate(TokenState* state) {
    const std::int64_t called_at = clock_.now();
    const bool dead_before = state->dead.load();
    state->kill_attempts.fetch_add(1);
    const std::optional<NewSession> rotated = store_->rotate(state->token);
    if (!rotated) {
      ++report_->rotate_lost;
      if (!dead_before) ++report_->raced;
      if (state->kill_attempts.load() == 1) {
        problem("rotate of " + brief_id(state->id) +
                " returned none, and no other call ever tried to revoke or rotate it");
      }
      if (store_->validate(state->token)) {
        problem("validate of " + brief_id(state->id) + " after a failed rotate returned a session");
      }
      return;
    }
    ++report_->rotated;
    if (dead_before) problem("rotate of " + brief_id(state->id) + " succeeded once it was dead");
    if (state->kills.fetch_add(1) != 0) {
      problem("rotate of " + brief_id(state->id) + " succeeded after another revoke or rotation");
    }
    state->dead.store(true);
    killed_.push_back(state);

    const Session& successor = rotated->session;
    if (!pylon::is_well_formed_token(rotated->token) || rotated->token == state->token ||
        successor.id != pylon::session_id_for_token(rotated->token)) {
      problem("rotate of " + brief_id(state->id) + " returned a bad token or id");
    }
    const std::string differences = differences_in_fixed_fields(state->expected, successor);
    if (!differences.empty()) {
      problem("rotate of " + brief_id(state->id) + " changed " + differences);
    }
    if (store_->validate(state->token)) {
      problem("the token rotated away from " + brief_id(state->id) + " still validates");
    }
    TokenState fresh(rotated->token, successor);
    // Nobody else knows the successor yet: it must validate.
    const std::optional<Session> got = store_->validate(rotated->token);
    if (!got) {
      problem("the successor of " + brief_id(state->id) + " does not validate");
    } else {
      check_validated(fresh, *got, called_at, "validate of a successor");
    }
    pool_->add(rotated->token, successor);
  }

  SessionStore* store_;
  TokenPool* pool_;
  ManualClock clock_;  // shares the time with the test's clock
  int thread_;
  std::mt19937_64 random_;
  ThreadReport* report_;
  std::vector<const TokenState*> killed_;  // revoked or rotated away by this thread
};

// ------------------------------------------------------------------------------------------------
// The test
// ------------------------------------------------------------------------------------------------

// PYLON_STRESS_SEED when set, else a random seed.
std::uint64_t choose_seed() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): read before any thread starts; nothing calls setenv
  const char* text = std::getenv("PYLON_STRESS_SEED");
  if (text != nullptr && *text != '\0') return std::stoull(text);
  std::random_device device;
  return (static_cast<std::uint64_t>(device()) << 32U) | device();
}

// The 10,000 sessions a fresh store starts with, each with its token.
std::vector<std::pair<std::string, Session>> seed_sessions(std::int64_t now) {
  std::vector<std::pair<std::string, Session>> seeded;
  seeded.reserve(kSeededSessions);
  for (std::size_t i = 0; i < kSeededSessions; ++i) {
    std::string token = pylon::generate_token();
    Session session;
    session.id = pylon::session_id_for_token(token);
    session.user_id = user_name(i % kUsers);
    if (i % 3 == 0) session.tenant_id = "tenant-" + std::to_string(i % 2);
    // Logged in over the last ten minutes, all seen just now: the first slides come once the
    // clock has moved touch_interval.
    session.created_at = now - static_cast<std::int64_t>(i % 600);
    session.last_seen_at = now;
    session.absolute_expires_at = session.created_at + kAbsoluteTtl;
    session.expires_at = std::min(session.absolute_expires_at, now + kIdleTimeout);
    session.device = "seed-device-" + std::to_string(i % 7);
    if (i % 2 == 0) session.ip = "198.51.100." + std::to_string(i % 250);
    session.data = "seed-" + std::to_string(i) + std::string("\0\xc3\x28", 3);
    if (i % 5 == 0) session.idp_session_id = "sid-" + std::to_string(i % 1000);
    seeded.emplace_back(std::move(token), std::move(session));
  }
  return seeded;
}

// Runs the threads to the end; one report each.
std::vector<ThreadReport> run_threads(SessionStore* store, TokenPool* pool,
                                      const ManualClock& clock, std::uint64_t seed) {
  std::vector<ThreadReport> reports(kThreads);
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    ThreadReport* report = &reports[static_cast<std::size_t>(t)];
    const std::uint64_t thread_seed = seed + static_cast<std::uint64_t>(t) * 0x9E3779B97F4A7C15U;
    threads.emplace_back([store, pool, clock, t, thread_seed, report] {
      try {
        StressThread(store, pool, clock, t, thread_seed, report).run(kOperationsPerThread);
      } catch (const std::exception& error) {
        report->problem("thread " + std::to_string(t) + " threw: " + error.what());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  return reports;
}

// The threads' counts added up; their problems, as test failures.
ThreadReport add_up(const std::vector<ThreadReport>& reports) {
  ThreadReport total;
  for (const ThreadReport& report : reports) {
    EXPECT_EQ(report.problem_count, 0U) << ::testing::PrintToString(report.problems);
    total.validated += report.validated;
    total.refused += report.refused;
    total.unknown += report.unknown;
    total.created += report.created;
    total.revoked += report.revoked;
    total.revoke_lost += report.revoke_lost;
    total.rotated += report.rotated;
    total.rotate_lost += report.rotate_lost;
    total.raced += report.raced;
  }
  return total;
}

// Problems found after the run, with a few examples for the failure message.
struct Mismatches {
  std::size_t count = 0;
  std::string examples;

  void note(const std::string& what) {
    ++count;
    if (examples.size() < 800) examples += "\n  " + what;
  }
};

using LiveTokens = std::map<std::string, const TokenState*>;  // by session id

// Every token's fate, from the calls that returned: live unless one revoke or rotation of it
// succeeded; and one did exactly when somebody tried (nothing else ends a session here).
LiveTokens live_tokens(const std::vector<const TokenState*>& states, Mismatches* fates) {
  LiveTokens live;
  for (const TokenState* state : states) {
    const int kills = state->kills.load();
    const int attempts = state->kill_attempts.load();
    if (kills != (attempts > 0 ? 1 : 0)) {
      fates->note(brief_id(state->id) + ": " + std::to_string(attempts) +
                  " revokes or rotations tried, " + std::to_string(kills) + " succeeded");
    }
    if (kills == 0) live.emplace(state->id, state);
  }
  return live;
}

// Storage holds exactly the live sessions, with the fields they were issued with.
Mismatches compare_storage_with_fates(const std::map<std::string, Session>& rows,
                                      const LiveTokens& live) {
  Mismatches stored;
  for (const auto& [id, state] : live) {
    const auto row = rows.find(id);
    if (row == rows.end()) {
      stored.note("live session " + brief_id(id) + " is not in storage");
      continue;
    }
    const std::string differences = differences_in_fixed_fields(state->expected, row->second);
    if (!differences.empty()) stored.note("stored " + brief_id(id) + " differs in " + differences);
  }
  for (const auto& entry : rows) {
    if (live.count(entry.first) == 0) {
      stored.note("row " + brief_id(entry.first) + " of a dead session is stored");
    }
  }
  return stored;
}

// The cache equals storage row for row: every row through find(), every user's sessions through
// list_user() (which together must be every cached session), and no dead session cached.
Mismatches compare_cache_with_storage(SessionStore* store,
                                      const std::map<std::string, Session>& rows,
                                      const std::vector<const TokenState*>& states) {
  Mismatches cached;
  for (const auto& [id, row] : rows) {
    const std::optional<Session> found = store->find(id);
    if (!found) {
      cached.note("row " + brief_id(id) + " is not in the cache");
    } else if (const ::testing::AssertionResult same = pylon::test::same_session(row, *found);
               !same) {
      cached.note("cache differs from row " + brief_id(id) + ":" + same.message());
    }
  }
  std::size_t listed = 0;
  for (std::size_t u = 0; u < kUsers; ++u) {
    const std::string user = user_name(u);
    const std::vector<Session> of_user = store->list_user(user);
    listed += of_user.size();
    const auto stored_of_user = static_cast<std::size_t>(
        std::count_if(rows.begin(), rows.end(),
                      [&user](const auto& entry) { return entry.second.user_id == user; }));
    if (of_user.size() != stored_of_user) {
      cached.note("list_user(" + user + ") has " + std::to_string(of_user.size()) +
                  " sessions, storage " + std::to_string(stored_of_user));
    }
    for (const Session& session : of_user) {
      const auto row = rows.find(session.id);
      if (row == rows.end() || row->second != session) {
        cached.note("list_user(" + user + ") returned " + brief_id(session.id) +
                    ", which storage does not hold as is");
      }
    }
  }
  if (listed != rows.size()) {
    cached.note("list_user() of every user returned " + std::to_string(listed) + " sessions, " +
                "storage holds " + std::to_string(rows.size()));
  }
  for (const TokenState* state : states) {
    if (rows.count(state->id) == 0 && store->find(state->id)) {
      cached.note("session " + brief_id(state->id) + " is cached but not stored");
    }
  }
  return cached;
}

// A second store on the same database agrees with the first for every token ever issued: its
// validate() returns what the first one's cache holds, and a session exactly for live tokens.
Mismatches compare_stores(SessionStore* first, SessionStore* second,
                          const std::vector<const TokenState*>& states, const LiveTokens& live) {
  Mismatches agreement;
  for (const TokenState* state : states) {
    const std::optional<Session> first_view = first->find(state->id);
    const std::optional<Session> second_view = second->validate(state->token);
    if (first_view != second_view) agreement.note("the stores disagree on " + brief_id(state->id));
    if (second_view.has_value() != (live.count(state->id) == 1)) {
      agreement.note("the second store has " + brief_id(state->id) +
                     (second_view ? " live" : " dead") + ", against the calls' outcomes");
    }
  }
  return agreement;
}

class Stress : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &db_)); }

  [[nodiscard]] StoreOptions options() const {
    StoreOptions options;
    options.clock = clock_.fn();
    options.absolute_ttl = std::chrono::seconds(kAbsoluteTtl);
    options.idle_timeout = std::chrono::seconds(kIdleTimeout);
    options.touch_interval = std::chrono::seconds(kTouchInterval);
    return options;
  }

  // The database's URL. SQLite with synchronous=normal: what this test races on is the same code
  // with either setting, and FULL's fsync per commit would make the run mostly waiting.
  [[nodiscard]] std::string url() const {
    return db_->is_postgres() ? db_->url()
                              : pylon::test::sqlite_url(db_->sqlite_path(), "synchronous=normal");
  }

  // Stores the seeded sessions (one transaction) and puts their tokens in `pool`.
  void seed_storage(TokenPool* pool) const {
    std::vector<Session> rows;
    rows.reserve(kSeededSessions);
    for (auto& [token, session] : seed_sessions(clock_.now())) {
      rows.push_back(session);
      pool->add(std::move(token), std::move(session));
    }
    db_->open_backend()->save_batch(rows);
  }

  // Every row of the table, read by a backend of its own.
  [[nodiscard]] std::map<std::string, Session> stored_rows() const {
    std::map<std::string, Session> rows;
    for (Session& row : db_->open_backend()->load_all()) rows.emplace(row.id, std::move(row));
    return rows;
  }

  std::unique_ptr<TestDatabase> db_;
  ManualClock clock_{kStart};
};

INSTANTIATE_TEST_SUITE_P(Backends, Stress, ::testing::ValuesIn(pylon::test::contract_backends()),
                         pylon::test::backend_name);

TEST_P(Stress, EightThreadsValidateCreateRevokeAndRotateOnTenThousandSessions) {
  const std::uint64_t seed = choose_seed();
  SCOPED_TRACE("PYLON_STRESS_SEED=" + std::to_string(seed));
  const auto started = std::chrono::steady_clock::now();

  TokenPool pool;
  seed_storage(&pool);
  EventCounts events;
  StoreOptions store_options = options();
  store_options.on_event = [&events](const SessionEvent& event) { events.count(event); };
  SessionStore store = SessionStore::open(url(), store_options);
  ASSERT_EQ(store.size(), kSeededSessions);

  const ThreadReport total = add_up(run_threads(&store, &pool, clock_, seed));
  const auto ran = std::chrono::steady_clock::now();
  const pylon::StoreStats run_stats = store.stats();
  EXPECT_EQ(run_stats.write_failures, 0U) << run_stats.last_error;
  EXPECT_EQ(events.created.load(), total.created);
  EXPECT_EQ(events.revoked.load(), total.revoked);
  EXPECT_EQ(events.rotated.load(), total.rotated);
  EXPECT_EQ(events.expired.load(), 0U) << "nothing may expire during the run";
  EXPECT_GT(total.raced, 0U)
      << "no two calls ever raced for one session: the test does not test races";

  const std::vector<const TokenState*> states = pool.all();
  ASSERT_EQ(states.size(), kSeededSessions + total.created + total.rotated);
  Mismatches fates;
  const LiveTokens live = live_tokens(states, &fates);
  EXPECT_EQ(fates.count, 0U) << "tokens whose revokes and rotations disagree" << fates.examples;
  EXPECT_EQ(live.size(), kSeededSessions + total.created - total.revoked);

  const std::map<std::string, Session> rows = stored_rows();
  EXPECT_EQ(rows.size(), live.size());
  const Mismatches stored = compare_storage_with_fates(rows, live);
  EXPECT_EQ(stored.count, 0U) << "storage differs from the calls' outcomes" << stored.examples;

  EXPECT_EQ(store.size(), rows.size());
  EXPECT_EQ(store.stats().sessions, rows.size());
  const Mismatches cached = compare_cache_with_storage(&store, rows, states);
  EXPECT_EQ(cached.count, 0U) << "the cache differs from storage" << cached.examples;

  // The second store never slides (touch_interval = absolute_ttl): its validate() writes nothing
  // and returns exactly what storage holds.
  StoreOptions second_options = options();
  second_options.touch_interval = second_options.absolute_ttl;
  SessionStore second = SessionStore::open(url(), second_options);
  EXPECT_EQ(second.size(), rows.size());
  const Mismatches agreement = compare_stores(&store, &second, states, live);
  EXPECT_EQ(agreement.count, 0U) << "a second store disagrees with the first" << agreement.examples;

  const auto checked = std::chrono::steady_clock::now();
  const auto ms = [](auto duration) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(duration).count();
  };
  std::cout << "stress " << GetParam() << ": " << kThreads << " threads x " << kOperationsPerThread
            << " operations on " << kSeededSessions << " seeded sessions: " << total.validated
            << " validated, " << total.refused << " refused, " << total.unknown
            << " unknown or malformed, " << total.created << " created, " << total.revoked
            << " revoked, " << total.rotated << " rotated, "
            << total.revoke_lost + total.rotate_lost << " revokes or rotations failed ("
            << total.raced << " lost a race for a live session), " << events.reused.load()
            << " reuses of rotated tokens reported, " << run_stats.writes << " storage writes; "
            << rows.size() << " live, cache == storage == a second store; run " << ms(ran - started)
            << " ms, checks " << ms(checked - ran) << " ms; seed " << seed << "\n";
}

}  // namespace

// Damaged database files (the file half): a real database written by the library
// (sessions with tenants, devices, data; some revoked), closed, then copied 300 times with a few
// bytes overwritten at random offsets (seeds 0..299, so every case can be replayed). Each copy
// is opened with the library and loaded into a SessionStore. Promises checked for every seed:
//   - the outcome is a pylon::Error or a working store: never another exception, never a crash
//     (CI runs this under ASan and UBSan), never a hang (ctest's timeout);
//   - a store that opens returns only well-formed sessions: an id of 64 lowercase hex characters
//     (the SHA-256 of the token when found by token), text fields that are UTF-8 without NUL
//     (an empty user id is an anonymous session), exactly what a write would accept;
//   - when opening fails, the file is left byte for byte as it was, and no file is left beside it.
// The damage mostly hits what SQLite itself checks (page headers, b-tree cells, the schema) and
// sometimes row contents, which no checksum protects; the test does not ask the library to
// notice those, only never to hand out a row it would refuse to store.
#include <gtest/gtest.h>

#include <cstdint>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "internal/backend_shared.hpp"
#include "session_backend.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::test::ManualClock;
using pylon::test::TempDir;

constexpr std::uint32_t kVariants = 300;

struct Original {
  std::string token;
  std::string user_id;
};

// Writes the database every variant starts from; returns the sessions it created (revoked ones
// included: a damaged file must not bring them back in a malformed shape either).
std::vector<Original> build_database(const std::string& path, const ManualClock& clock) {
  pylon::StoreOptions options;
  options.clock = clock.fn();
  std::vector<Original> sessions;
  pylon::SessionStore store = pylon::SessionStore::open(path, options);
  for (int i = 0; i < 60; ++i) {
    pylon::CreateOptions create;
    if (i % 3 == 0) create.tenant_id = "tenant-" + std::to_string(i % 4);
    if (i % 2 == 0) create.device = "Firefox on Linux #" + std::to_string(i);
    if (i % 5 == 0) create.ip = "203.0.113." + std::to_string(i);
    if (i % 7 == 0) create.idp_session_id = "sid-" + std::to_string(i);
    create.data = pylon::test::random_bytes(static_cast<std::size_t>(i) * 37 % 900,
                                            static_cast<std::uint32_t>(i));
    const std::string user = "user-" + std::to_string(i % 9);
    sessions.push_back({store.create(user, create).token, user});
    if (i % 6 == 5) store.revoke(sessions[static_cast<std::size_t>(i) - 2].token);
  }
  return sessions;  // the store's destructor checkpoints: the file alone holds everything
}

// `bytes` with 1 to 8 runs of 1 to 4 random bytes written at random offsets.
std::string damaged(std::string bytes, std::uint32_t seed) {
  std::mt19937 random(seed);
  const int runs = std::uniform_int_distribution<int>(1, 8)(random);
  for (int r = 0; r < runs; ++r) {
    const auto at = std::uniform_int_distribution<std::size_t>(0, bytes.size() - 1)(random);
    const auto length = std::uniform_int_distribution<std::size_t>(1, 4)(random);
    for (std::size_t i = at; i < at + length && i < bytes.size(); ++i) {
      bytes[i] = static_cast<char>(std::uniform_int_distribution<int>(0, 255)(random));
    }
  }
  return bytes;
}

// Why `session` should never have left the store ("" if it is well formed).
std::string malformation(const pylon::Session& session) {
  try {
    pylon::detail::check_session_for_storage(session);
  } catch (const pylon::Error& error) {
    return error.what();
  }
  return {};
}

// What opening one damaged copy led to.
struct Outcome {
  std::string name;                   // the error code, "opened", or "other exception"
  std::optional<pylon::Error> error;  // when opening (or loading) threw pylon::Error
  std::vector<std::string> problems;  // broken promises
};

// Opens `path` through the store, the way an application does (backend, migrations, load_all),
// and looks at every session it hands out: by each original token, and by each user.
Outcome open_damaged(const std::string& path, const std::vector<Original>& sessions,
                     const std::set<std::string>& users, const ManualClock& clock) {
  Outcome outcome;
  const auto check = [&outcome](const pylon::Session& session) {
    if (std::string why = malformation(session); !why.empty()) {
      outcome.problems.push_back("handed out a malformed session: " + why);
    }
  };
  try {
    pylon::StoreOptions options;
    options.clock = clock.fn();
    pylon::SessionStore store = pylon::SessionStore::open(path, options);
    for (const Original& original : sessions) {
      const std::optional<pylon::Session> found = store.validate(original.token);
      if (!found) continue;
      if (found->id != pylon::session_id_for_token(original.token)) {
        outcome.problems.emplace_back("validate returned a session under another id");
      }
      check(*found);
    }
    for (const std::string& user : users) {
      for (const pylon::Session& listed : store.list_user(user)) {
        if (listed.user_id != user) {
          outcome.problems.emplace_back("list_user returned another user");
        }
        check(listed);
      }
    }
    outcome.name = "opened";
  } catch (const pylon::Error& error) {
    outcome.name = pylon::to_string(error.code());
    outcome.error = error;
  } catch (const std::exception& other) {
    outcome.name = "other exception";
    outcome.problems.push_back(std::string("threw something else than pylon::Error: ") +
                               other.what());
  }
  return outcome;
}

// A refused file: the message names it, its bytes are as they were, nothing was left beside it.
void check_refusal(const std::string& path, const std::string& before,
                   const std::vector<std::string>& listing, Outcome& outcome) {
  const std::string what = outcome.error->what();
  if (what.find(path) == std::string::npos) {
    outcome.problems.push_back("the error does not name the file: " + what.substr(0, 60));
  }
  if (pylon::test::read_file_bytes(path) != before) {
    outcome.problems.push_back("modified a file it refused (" + outcome.name + ")");
  }
  if (pylon::test::list_dir(path.substr(0, path.rfind('/'))) != listing) {
    outcome.problems.emplace_back("left files beside a file it refused");
  }
}

TEST(CorruptFiles, RandomlyDamagedDatabasesFailCleanlyOrYieldOnlyWellFormedSessions) {
  TempDir dir;
  ManualClock clock;
  const std::string pristine_path = dir.file("pristine.db");
  const std::vector<Original> sessions = build_database(pristine_path, clock);
  const std::string pristine = pylon::test::read_file_bytes(pristine_path);
  ASSERT_GT(pristine.size(), 8U * 4096) << "the database is too small to damage usefully";
  std::set<std::string> users;
  for (const Original& session : sessions) users.insert(session.user_id);

  std::map<std::string, int> outcomes;                         // error code, or "opened"
  std::map<std::string, std::vector<std::uint32_t>> problems;  // what went wrong -> seeds
  for (std::uint32_t seed = 0; seed < kVariants; ++seed) {
    const std::string path = dir.file("variant-" + std::to_string(seed) + ".db");
    const std::string before = damaged(pristine, seed);
    pylon::test::write_file_bytes(path, before);
    const std::vector<std::string> listing = pylon::test::list_dir(dir.path());

    Outcome outcome = open_damaged(path, sessions, users, clock);
    ++outcomes[outcome.name];
    if (outcome.error) check_refusal(path, before, listing, outcome);
    for (const std::string& problem : outcome.problems) {
      std::vector<std::uint32_t>& seeds = problems[problem];
      if (seeds.empty() || seeds.back() != seed) seeds.push_back(seed);
    }
  }

  // One failure per kind of problem, with the seeds that reproduce it (damaged(pristine, seed)).
  for (const auto& [problem, seeds] : problems) {
    std::string listed;
    for (std::size_t i = 0; i < seeds.size() && i < 12; ++i) {
      listed += (i == 0 ? "" : ", ") + std::to_string(seeds[i]);
    }
    ADD_FAILURE() << problem << "\n  " << seeds.size() << " of " << kVariants << " seeds, e.g. "
                  << listed;
  }

  std::cout << kVariants << " damaged copies:";
  for (const auto& [outcome, count] : outcomes) std::cout << " " << outcome << " x" << count;
  std::cout << "\n";
  // Both outcomes must occur, or the damage was too weak (or too strong) to test anything.
  EXPECT_GT(outcomes["opened"], 0);
  EXPECT_GT(outcomes["corrupt_database"], 0);
}

}  // namespace

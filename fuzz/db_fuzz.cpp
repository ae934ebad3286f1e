// db_fuzz: libFuzzer target for opening a database file nobody vouches for. The input bytes are
// written to a file, which is opened with open_sqlite_backend() (probe, schema checks, WAL,
// migrations, the adoption of pylon's table) and loaded into a SessionStore, which is then used a
// little: lookups, a purge, a create and a revoke, each a write to the fuzzed file.
//
// It checks, for every input:
//   - only pylon::Error escapes the library (a damaged or foreign file must be refused with
//     kCorruptDatabase & co., not crash, and not throw std::length_error or the like);
//   - every session the store hands out has a well-formed id, belongs to the user it was listed
//     for, and is live at the store's clock;
//   - ASan and UBSan see no memory error, leak or undefined behaviour.
// The file lives in a private directory under /tmp made once per process (so parallel fuzzing
// jobs do not share files), and it and its -wal, -shm and -journal files are removed after every
// input: each run starts from the input's bytes alone.

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "session_backend.hpp"

namespace {

[[noreturn]] void fail(const char* what, std::string_view detail = {}) {
  std::cerr << "db_fuzz: broken promise: " << what << '\n' << detail << std::endl;
  __builtin_trap();
}

// A fixed clock: the same input always takes the same path (a real clock would make a seed's
// sessions expire one day and change what the fuzzer sees). 2023-11-14, before the seeds' expiry.
constexpr std::int64_t kNow = 1'700'000'000;
// Enough to exercise the per-user paths without letting a file with a million users time out.
constexpr std::size_t kMaxUsersChecked = 8;

std::string& scratch_directory() {
  static std::string directory;
  return directory;
}

std::string database_path() { return scratch_directory() + "/fuzz.db"; }

// Missing files are fine (no -journal in WAL mode, no -wal once the library checkpointed it).
void remove_database_files() {
  const std::string path = database_path();
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
    std::error_code ignored;
    std::filesystem::remove(path + suffix, ignored);
  }
}

void remove_scratch_directory() {
  remove_database_files();
  std::error_code ignored;
  std::filesystem::remove(scratch_directory(), ignored);
}

void write_file(const std::string& path, const std::uint8_t* data, std::size_t size) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): bytes to the stream's char
  file.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  file.close();
  if (!file) fail("cannot write the scratch database file", path);
}

void check_session(const pylon::Session& session, std::string_view listed_for) {
  if (!pylon::is_well_formed_session_id(session.id)) {
    fail("the store holds a session with a malformed id", session.id);
  }
  if (session.user_id != listed_for) fail("list_user returned another user's session");
  if (session.expires_at <= kNow) fail("the store returned an expired session", session.id);
}

// Everything after opening. Store calls may throw pylon::Error (the file is as broken as the
// fuzzer likes); each is tried on its own so that one refusal does not hide the rest.
template <typename Call>
void tolerate_pylon_error(Call&& call) {
  try {
    call();
  } catch (const pylon::Error&) {  // NOLINT(bugprone-empty-catch): a refusal is a valid outcome
  }
}

void exercise(std::unique_ptr<pylon::SessionBackend> backend) {
  // The rows as storage has them, before the store filters them, to know which ids and users
  // to ask the store about.
  const std::vector<pylon::Session> rows = backend->load_all();

  pylon::StoreOptions options;
  options.clock = [] { return kNow; };
  pylon::SessionStore store(std::move(backend), options);
  if (store.size() > rows.size()) fail("the store holds more sessions than storage has rows");

  std::set<std::string> users;
  for (const pylon::Session& row : rows) {
    if (users.size() < kMaxUsersChecked) users.insert(row.user_id);
    const std::optional<pylon::Session> found = store.find(row.id);
    if (found) {
      if (found->id != row.id) fail("find() returned another session");
      if (!pylon::is_well_formed_session_id(found->id)) fail("find() returned a malformed id");
      if (found->expires_at <= kNow) fail("find() returned an expired session");
    }
  }
  for (const std::string& user : users) {
    for (const pylon::Session& session : store.list_user(user)) check_session(session, user);
  }
  // A well-formed token that no seed holds: a miss, without sliding anything.
  if (store.validate("pylon_" + std::string(64, 'a'))) fail("validate() found an unknown token");

  tolerate_pylon_error([&] { store.purge_expired(); });
  tolerate_pylon_error([&] {
    const pylon::NewSession created = store.create("fuzz-user");
    check_session(created.session, "fuzz-user");
    const std::optional<pylon::Session> validated = store.validate(created.token);
    if (!validated || validated->id != created.session.id) fail("a new session does not validate");
  });
  if (!rows.empty()) tolerate_pylon_error([&] { store.revoke_id(rows.front().id); });
  const pylon::StoreStats stats = store.stats();
  if (stats.sessions != store.size()) fail("stats() and size() disagree");
}

}  // namespace

// NOLINTNEXTLINE(readability-identifier-naming): libFuzzer's name
extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  std::array<char, 32> name{"/tmp/pylon-db-fuzz-XXXXXX"};
  if (::mkdtemp(name.data()) == nullptr) fail("cannot create a scratch directory under /tmp");
  scratch_directory() = name.data();
  // libFuzzer ends a run by exit(), which runs atexit handlers; a crash leaves the directory
  // behind, with the file that crashed, which is what one wants then.
  if (std::atexit(remove_scratch_directory) != 0) fail("atexit failed");
  return 0;
}

// NOLINTNEXTLINE(readability-identifier-naming): libFuzzer's name
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = database_path();
  write_file(path, data, size);
  try {
    pylon::SqliteOptions sqlite_options;
    // NORMAL: one fsync per checkpoint rather than per commit. Durability is not under test
    // here, and fsyncs would make each input several times slower.
    sqlite_options.synchronous = pylon::SqliteSync::kNormal;
    exercise(pylon::open_sqlite_backend(path, sqlite_options));
  } catch (const pylon::Error&) {  // NOLINT(bugprone-empty-catch): refusing the file is allowed
  } catch (const std::exception& error) {
    fail("an exception other than pylon::Error escaped", error.what());
  }
  remove_database_files();
  return 0;
}

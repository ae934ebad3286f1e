// Read-only and unusable paths, for the cases tests/sqlite_backend_test.cpp
// does not cover. That file already opens, as root: a path that is a directory, a missing
// parent directory, a new file in a directory made immutable, an existing file in one, and an
// immutable file (chattr +i; chmod proves nothing to root), each through open_sqlite_backend.
// This one adds:
//   - the same refusals through SessionStore::open and a sqlite:// URL, the way an application
//     opens a store, with the working directory watched: nothing may appear there either;
//   - an unprivileged user (setpriv --reuid=nobody --regid=nogroup --clear-groups, running this
//     program again as a child) and directories whose permission bits stop it, which root never
//     meets: a directory it may not write, one it may not enter, a database file it may read but
//     not write in a directory it may write (where SQLite could create a -wal or -shm).
// Promises: a pylon::Error whose message names the path, and no file created or changed
// anywhere in the parent directory or the working directory.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "faults/fault_helpers.hpp"
#include "session_backend.hpp"
#include "support/process.hpp"
#include "support/test_support.hpp"

namespace pylon::test::faults {

// The child, as nobody: opens a store on args[0] with args[1] as its working directory, makes
// one session, and prints "OK" or "E <code> <what>" on stdout. Exit status 0 either way; 2 for
// anything that is not a pylon::Error.
int bad_path_child_main(const std::vector<std::string>& args) {
  if (args.size() != 2) return 64;
  if (::chdir(args[1].c_str()) != 0) return 65;
  try {
    pylon::SessionStore store = pylon::SessionStore::open(args[0]);
    store.create("nobody-user");
    std::cout << "OK\n";
  } catch (const pylon::Error& error) {
    std::cout << "E " << pylon::to_string(error.code()) << " " << error.what() << "\n";
  } catch (const std::exception& error) {
    std::cout << "U " << error.what() << "\n";
    return 2;
  }
  return 0;
}

namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// The entries under `dir`, recursively (paths relative to it), with each file's bytes: what
// "nothing created or changed" is checked against. Directories the caller cannot read show as
// such, which is enough to see a change.
std::vector<std::string> snapshot(const std::string& dir) {
  std::vector<std::string> entries;
  std::error_code error;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, error);
       !error && it != std::filesystem::recursive_directory_iterator(); it.increment(error)) {
    const std::string path = it->path().string();
    std::string entry = path.substr(dir.size());
    if (it->is_regular_file()) entry += " " + read_file_bytes(path);
    entries.push_back(entry);
  }
  return entries;
}

// A directory for the child's working directory that nobody may write into, so the child can
// enter it and anything created there would show.
std::string make_world_writable(const std::string& path) {
  std::filesystem::create_directory(path);
  std::filesystem::permissions(path, std::filesystem::perms::all);
  return path;
}

// ------------------------------------------------------------------------------------------------
// As root, through SessionStore::open and a URL
// ------------------------------------------------------------------------------------------------

// Opens `path` through sqlite:// with the working directory set to a fresh empty directory;
// expects a pylon::Error naming the path, with `parent` and the working directory unchanged.
void expect_store_refused(const std::string& path, const std::string& parent) {
  TempDir cwd;
  const std::vector<std::string> parent_before = snapshot(parent);
  std::optional<pylon::Error> error;
  {
    const ScopedCurrentDir inside(cwd.path());
    error = capture_pylon_error([&] { pylon::SessionStore::open(sqlite_url(path)); });
  }
  ASSERT_TRUE(error.has_value()) << "a store opened on " << path;
  EXPECT_THAT(error->code(), AnyOf(ErrorCode::kIo, ErrorCode::kReadOnly)) << error->what();
  EXPECT_THAT(error->what(), HasSubstr(path));
  EXPECT_EQ(snapshot(parent), parent_before) << "files changed beside " << path;
  EXPECT_TRUE(list_dir(cwd.path()).empty()) << "files appeared in the working directory";
}

TEST(BadPaths, StoreOnAnImmutableFileIsRefusedNamingItAndChangesNothing) {
  TempDir dir;
  const std::string path = dir.file("frozen.db");
  pylon::SessionStore::open(path).create("alice");
  ASSERT_TRUE(make_unwritable(path));  // chattr +i as root
  expect_store_refused(path, dir.path());
}

TEST(BadPaths, StoreInAMissingDirectoryIsRefusedNamingItAndCreatesNothing) {
  TempDir dir;
  expect_store_refused(dir.file("missing/s.db"), dir.path());
}

TEST(BadPaths, StoreOnADirectoryIsRefusedNamingItAndCreatesNothing) {
  TempDir dir;
  const std::string path = dir.file("a-directory");
  ASSERT_EQ(::mkdir(path.c_str(), 0700), 0);
  expect_store_refused(path, dir.path());
}

// ------------------------------------------------------------------------------------------------
// As nobody
// ------------------------------------------------------------------------------------------------

// A tree nobody can reach: /tmp/pylon-test-X (made 0755) with the test program copied in (the
// build tree may not be readable by nobody), and a working directory nobody may write.
class AsNobody : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::geteuid(), 0U) << "these tests switch to the user nobody: run them as root";
    std::filesystem::permissions(
        dir_.path(), std::filesystem::perms::owner_all | std::filesystem::perms::group_read |
                         std::filesystem::perms::group_exec | std::filesystem::perms::others_read |
                         std::filesystem::perms::others_exec);
    program_ = dir_.file("faults-child");
    std::filesystem::copy_file(self_executable(), program_);
    std::filesystem::permissions(
        program_, std::filesystem::perms::owner_all | std::filesystem::perms::group_read |
                      std::filesystem::perms::group_exec | std::filesystem::perms::others_read |
                      std::filesystem::perms::others_exec);
    cwd_ = make_world_writable(dir_.file("cwd"));
  }

  // Runs the child as nobody on `path`; returns its line ("OK", "E <code> <what>", ...).
  std::string open_as_nobody(const std::string& path) {
    const std::string output = dir_.file("child.out");
    const pid_t pid = spawn({"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                             program_, kBadPathChildFlag, path, cwd_},
                            output, -1, /*stderr_too=*/true);
    const ChildEnd end = wait_at_most(pid, std::chrono::seconds(60));
    std::string text = read_file_bytes(output);
    EXPECT_TRUE(end.in_time) << "the child hung";
    EXPECT_EQ(end.status, 0) << "setpriv or the child failed (127: setpriv not installed):\n"
                             << text;
    return text;
  }

  // Expects the child to be refused on `path` with a message naming it, and nothing changed in
  // `parent` or the child's working directory.
  void expect_refused_as_nobody(const std::string& path, const std::string& parent) {
    const std::vector<std::string> before = snapshot(parent);
    const std::string line = open_as_nobody(path);
    EXPECT_THAT(line, StartsWith("E ")) << "nobody opened " << path;
    EXPECT_THAT(line, AnyOf(StartsWith("E io "), StartsWith("E read_only "))) << line;
    EXPECT_THAT(line, HasSubstr(path));
    EXPECT_EQ(snapshot(parent), before) << "files changed beside " << path;
    EXPECT_TRUE(list_dir(cwd_).empty()) << "files appeared in the working directory";
  }

  TempDir dir_;
  std::string program_;
  std::string cwd_;
};

TEST_F(AsNobody, TheChildReallyRunsAsNobodyAndCanOpenWhereItMayWrite) {
  // The control case: without it, every refusal below could be setpriv failing.
  const std::string open_dir = make_world_writable(dir_.file("open"));
  const std::string line = open_as_nobody(open_dir + "/s.db");
  EXPECT_EQ(line, "OK\n");
  struct stat info {};
  ASSERT_EQ(::stat((open_dir + "/s.db").c_str(), &info), 0);
  EXPECT_NE(info.st_uid, 0U) << "the file was created by root: setpriv did not switch users";
}

TEST_F(AsNobody, NewFileInADirectoryItMayNotWriteIsRefused) {
  const std::string locked = dir_.file("locked");
  ASSERT_EQ(::mkdir(locked.c_str(), 0755), 0);  // root's: nobody may enter, not write
  expect_refused_as_nobody(locked + "/s.db", locked);
}

TEST_F(AsNobody, FileInADirectoryItMayNotEnterIsRefused) {
  const std::string closed = dir_.file("closed");
  ASSERT_EQ(::mkdir(closed.c_str(), 0700), 0);
  pylon::SessionStore::open(closed + "/s.db").create("root-user");
  expect_refused_as_nobody(closed + "/s.db", closed);
}

TEST_F(AsNobody, FileItMayReadButNotWriteIsRefusedWithoutLeavingAWalOrShm) {
  // The directory is writable by nobody: SQLite could create -wal and -shm files there.
  const std::string shared = make_world_writable(dir_.file("shared"));
  const std::string path = shared + "/s.db";
  pylon::SessionStore::open(path).create("root-user");
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  expect_refused_as_nobody(path, shared);
}

}  // namespace

}  // namespace pylon::test::faults

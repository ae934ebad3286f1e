// Database files whose permissions or owner would let another local user read or forge sessions,
// and paths SQLite cannot take. Promises:
//   - a file, -wal or -shm that group or others may write, or that another user owns, is refused
//     with kIo naming the path, the mode or owner and the fix, and left byte for byte and mode for
//     mode as it was;
//   - one that group or others may only read (pylon's own runtime made its file 0644) is made
//     0600, with its -wal and -shm, before anything is read, and a kFilePermissionsTightened event
//     says so;
//   - SqliteOptions::allow_shared_file uses such files as they are;
//   - a path longer than SQLite takes is refused before any file is created.
// Runs as root (chown needs it), as the rest of this program does.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "session_backend.hpp"
#include "support/test_support.hpp"

namespace pylon::test::faults {
namespace {

using ::testing::HasSubstr;

class FilePermissions : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::geteuid(), 0U) << "FilePermissions changes file owners: run this suite as root";
    path_ = dir_.file("sessions.db");
    kept_ = pylon::SessionStore::open(path_).create("alice");
  }

  // Opens a store on path_ with `sqlite`, recording its events; the error, if it threw.
  std::optional<pylon::Error> open(const pylon::SqliteOptions& sqlite = {}) {
    pylon::StoreOptions options;
    options.on_event = [this](const pylon::SessionEvent& event) { events_.push_back(event); };
    return capture_pylon_error([&] {
      pylon::SessionStore store(pylon::open_sqlite_backend(path_, sqlite), options);
      validated_ = store.validate(kept_.token).has_value();
    });
  }

  // Expects open() to refuse path_ because of `file`, naming it, with nothing changed.
  void expect_refused_because_of(const std::string& file, const std::string& reason) {
    const std::string bytes = read_file_bytes(path_);
    const unsigned mode = file_mode(file);
    const std::optional<pylon::Error> error = open();
    ASSERT_TRUE(error.has_value()) << file << " was used";
    EXPECT_EQ(error->code(), pylon::ErrorCode::kIo) << error->what();
    EXPECT_THAT(error->what(), HasSubstr(file));
    EXPECT_THAT(error->what(), HasSubstr(reason));
    EXPECT_THAT(error->what(), HasSubstr("was left as it is"));
    EXPECT_EQ(read_file_bytes(path_), bytes) << "the refused file was changed";
    EXPECT_EQ(file_mode(file), mode) << "the refused file's mode was changed";
    EXPECT_TRUE(events_.empty());
  }

  TempDir dir_;
  std::string path_;
  pylon::NewSession kept_;
  std::vector<pylon::SessionEvent> events_;
  bool validated_ = false;
};

TEST_F(FilePermissions, AFileOthersMayReadIsMadePrivateWithItsWalAndShmBeforeUse) {
  ASSERT_EQ(::chmod(path_.c_str(), 0644), 0);
  write_file_bytes(path_ + "-wal", "");
  write_file_bytes(path_ + "-shm", "");
  ASSERT_EQ(::chmod((path_ + "-wal").c_str(), 0644), 0);
  ASSERT_EQ(::chmod((path_ + "-shm").c_str(), 0640), 0);
  const std::optional<pylon::Error> error = open();
  ASSERT_FALSE(error.has_value()) << error->what();
  EXPECT_TRUE(validated_) << "the session in the tightened file was lost";
  for (const std::string& file : {path_, path_ + "-wal", path_ + "-shm"}) {
    if (file_exists(file)) {
      EXPECT_EQ(file_mode(file), 0600U) << file;
    }
  }
  ASSERT_EQ(events_.size(), 1U);
  EXPECT_EQ(events_[0].type, pylon::SessionEventType::kFilePermissionsTightened);
  EXPECT_THAT(events_[0].detail, HasSubstr(path_ + ": mode 0644 -> 0600"));
  EXPECT_THAT(events_[0].detail, HasSubstr(path_ + "-shm: mode 0640 -> 0600"));

  // Once private, it is opened without a word.
  events_.clear();
  ASSERT_FALSE(open().has_value());
  EXPECT_TRUE(events_.empty());
}

TEST_F(FilePermissions, AFileOthersMayWriteIsRefusedAndLeftAsItWas) {
  ASSERT_EQ(::chmod(path_.c_str(), 0666), 0);
  expect_refused_because_of(path_, "mode 0666");
}

TEST_F(FilePermissions, AFileTheGroupMayWriteIsRefused) {
  ASSERT_EQ(::chmod(path_.c_str(), 0620), 0);
  expect_refused_because_of(path_, "mode 0620");
}

TEST_F(FilePermissions, AWalOthersMayWriteIsRefusedThoughTheFileIsPrivate) {
  write_file_bytes(path_ + "-wal", "");
  ASSERT_EQ(::chmod((path_ + "-wal").c_str(), 0646), 0);
  expect_refused_because_of(path_ + "-wal", "mode 0646");
  EXPECT_EQ(file_mode(path_), 0600U);
}

TEST_F(FilePermissions, AFileAnotherUserOwnsIsRefused) {
  ASSERT_EQ(::chown(path_.c_str(), 65534, 65534), 0);
  expect_refused_because_of(path_, "owned by user ID 65534");
}

TEST_F(FilePermissions, AllowSharedFileUsesTheFilesAsTheyAre) {
  ASSERT_EQ(::chmod(path_.c_str(), 0664), 0);
  ASSERT_EQ(::chown(path_.c_str(), 65534, 65534), 0);
  pylon::SqliteOptions shared;
  shared.allow_shared_file = true;
  const std::optional<pylon::Error> error = open(shared);
  ASSERT_FALSE(error.has_value()) << error->what();
  EXPECT_TRUE(validated_);
  EXPECT_EQ(file_mode(path_), 0664U);
  EXPECT_TRUE(events_.empty());
}

TEST(SqlitePaths, APathLongerThanSqliteTakesIsRefusedBeforeAnyFileIsCreated) {
  TempDir dir;
  const std::string deep = dir.file(std::string(200, 'd'));
  ASSERT_EQ(::mkdir(deep.c_str(), 0700), 0);
  const std::string deeper = deep + "/" + std::string(200, 'e');
  ASSERT_EQ(::mkdir(deeper.c_str(), 0700), 0);
  const std::string path = deeper + "/" + std::string(200, 'f') + ".db";
  const std::optional<pylon::Error> error =
      capture_pylon_error([&] { pylon::SessionStore::open(path); });
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code(), pylon::ErrorCode::kInvalidArgument);
  EXPECT_THAT(error->what(), HasSubstr("SQLite takes paths shorter than"));
  EXPECT_TRUE(list_dir(deeper).empty()) << "a file was left behind";

  // The same, relative to a deep working directory.
  const ScopedCurrentDir cwd(deeper);
  const std::optional<pylon::Error> relative =
      capture_pylon_error([&] { pylon::SessionStore::open(std::string(100, 'r') + ".db"); });
  ASSERT_TRUE(relative.has_value());
  EXPECT_EQ(relative->code(), pylon::ErrorCode::kInvalidArgument);
  EXPECT_TRUE(list_dir(deeper).empty()) << "a file was left behind";
}

}  // namespace
}  // namespace pylon::test::faults

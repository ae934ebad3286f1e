// A full disk, on a real one: each test mounts its own 512 KiB tmpfs
// (mount -t tmpfs -o size=512k), puts the database on it, and fills it with sessions until a
// create fails. Promises checked:
//   - the failing create throws pylon::Error kStorageFull naming the file, and the cache keeps
//     exactly what storage has: every acknowledged session, not the failed one;
//   - a revoke while the disk is full either succeeds (and storage no longer has the row) or
//     throws kStorageFull, and the session is denied at once either way (fail closed);
//   - once space is freed, the same store, never reopened, creates and revokes again, and the
//     delete of a revoke that failed reaches storage with the next write: another store opened on
//     the file meanwhile does not see the session.
// Which write hits the wall is made deterministic with filler files on the same tmpfs: one that
// leaves a few WAL frames of room, and, for the revoke, one that takes the last byte.
//
// Needs root (mount(2)); without it the tests fail and say so. The mount is undone in TearDown,
// whatever the test did.
#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "session_backend.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::ErrorCode;
using pylon::test::capture_pylon_error;
using pylon::test::ManualClock;
using pylon::test::RawDb;
using pylon::test::TempDir;
using ::testing::HasSubstr;

constexpr std::size_t kPayloadBytes = 3000;  // a session carrying data: about a WAL frame
// What the first filler leaves for sessions: room for about four creates (each commit appends
// about six 4 KiB WAL frames: the session's table and indexes, and the change log's), while
// freeing the filler later gives back more than 300 KiB.
constexpr std::uint64_t kRoomLeft = std::uint64_t{104} * 1024;
constexpr int kMaxCreates = 1000;  // a disk that never fills is a failure

// Bytes the filesystem of `path` can still give an unprivileged writer.
std::uint64_t free_bytes(const std::string& path) {
  struct statvfs info {};
  if (::statvfs(path.c_str(), &info) != 0) return 0;
  return static_cast<std::uint64_t>(info.f_bavail) * info.f_frsize;
}

// Writes up to `limit` bytes (all it can, if `limit` is 0) into a new file `path`, in 4 KiB
// blocks, stopping at ENOSPC. Returns how many bytes it wrote.
std::uint64_t write_filler(const std::string& path, std::uint64_t limit) {
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open(2) takes the mode as a vararg
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return 0;
  const std::string block(4096, 'f');
  std::uint64_t written = 0;
  while (limit == 0 || written < limit) {
    const std::size_t want =
        limit == 0
            ? block.size()
            : static_cast<std::size_t>(std::min<std::uint64_t>(block.size(), limit - written));
    const ssize_t done = ::write(fd, block.data(), want);
    if (done <= 0) break;  // ENOSPC: the disk is full
    written += static_cast<std::uint64_t>(done);
  }
  ::close(fd);
  return written;
}

pylon::CreateOptions with_data(std::string data) {
  pylon::CreateOptions options;
  options.data = std::move(data);
  return options;
}

// The ids in the table, read by a plain sqlite3 connection of its own.
std::set<std::string> stored_ids(const std::string& db_path) {
  RawDb raw(db_path);
  std::set<std::string> ids;
  for (const auto& row : raw.query("SELECT id FROM _pylon_sessions")) ids.insert(row.at(0).value());
  return ids;
}

class FullDisk : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::geteuid(), 0U) << "FullDisk mounts a tmpfs: run this suite as root";
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): mount(2) is a C API
    const int mounted =
        ::mount("tmpfs", dir_.path().c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=512k,mode=0700");
    const int error_number = errno;
    ASSERT_EQ(mounted, 0) << "mount -t tmpfs -o size=512k on " << dir_.path() << " failed: "
                          << std::strerror(error_number)  // NOLINT(concurrency-mt-unsafe)
                          << " (a container needs CAP_SYS_ADMIN)";
    mounted_ = true;
    db_path_ = dir_.file("sessions.db");
    options_.clock = clock_.fn();  // the clock never moves: validate() never writes a slide
  }

  void TearDown() override {
    if (!mounted_) return;
    if (::umount2(dir_.path().c_str(), 0) != 0) {
      ADD_FAILURE() << "cannot unmount " << dir_.path() << ": "
                    << std::strerror(errno);       // NOLINT(concurrency-mt-unsafe)
      ::umount2(dir_.path().c_str(), MNT_DETACH);  // at least nothing stays visible
    }
  }

  // Leaves about kRoomLeft bytes free on the tmpfs, with a filler file that frees the rest later.
  void leave_little_room() {
    const std::uint64_t free = free_bytes(dir_.path());
    ASSERT_GT(free, kRoomLeft) << "the store alone filled the tmpfs";
    ASSERT_EQ(write_filler(filler_path(), free - kRoomLeft), free - kRoomLeft);
  }

  // Creates sessions carrying data until one fails; returns that failure. The acknowledged ones
  // are in created_.
  std::optional<pylon::Error> create_until_full(pylon::SessionStore& store) {
    for (int i = 0; i < kMaxCreates; ++i) {
      pylon::CreateOptions options;
      options.data = pylon::test::random_bytes(kPayloadBytes, static_cast<std::uint32_t>(i));
      std::optional<pylon::NewSession> session;
      auto error = capture_pylon_error([&] { session = store.create("filler", options); });
      if (error) return error;
      created_.push_back(*session);
    }
    return std::nullopt;
  }

  std::string filler_path() const { return dir_.file("filler"); }
  std::string last_byte_path() const { return dir_.file("last-bytes"); }

  TempDir dir_;  // the mount point; destroyed (emptied, removed) after TearDown unmounts
  bool mounted_ = false;
  std::string db_path_;
  ManualClock clock_;
  pylon::StoreOptions options_;
  std::vector<pylon::NewSession> created_;
};

TEST_F(FullDisk, CreateFailsWithStorageFullAndTheCacheKeepsWhatStorageHas) {
  pylon::SessionStore store = pylon::SessionStore::open(db_path_, options_);
  leave_little_room();
  const auto error = create_until_full(store);
  ASSERT_TRUE(error.has_value()) << kMaxCreates << " creates of " << kPayloadBytes
                                 << " bytes never filled a 512 KiB tmpfs";
  EXPECT_EQ(error->code(), ErrorCode::kStorageFull) << error->what();
  EXPECT_THAT(error->what(), HasSubstr(db_path_));
  ASSERT_FALSE(created_.empty()) << "the tmpfs was full before the first session";

  // The cache holds every acknowledged session and nothing else: the failed create is not in it.
  EXPECT_EQ(store.size(), created_.size());
  for (const pylon::NewSession& session : created_) {
    EXPECT_TRUE(store.find(session.session.id)) << "acknowledged create missing from the cache";
  }
  EXPECT_GE(store.stats().write_failures, 1U);
  // Storage holds exactly the acknowledged sessions, read by a connection of its own.
  std::set<std::string> acknowledged;
  for (const pylon::NewSession& session : created_) acknowledged.insert(session.session.id);
  EXPECT_EQ(stored_ids(db_path_), acknowledged);

  // Still full: the next create fails the same way, and changes nothing either.
  EXPECT_PYLON_ERROR(store.create("filler", with_data(std::string(kPayloadBytes, 'x'))),
                     ErrorCode::kStorageFull);
  EXPECT_EQ(store.size(), created_.size());

  // Space freed: the same store, never reopened, works again.
  ASSERT_EQ(::unlink(filler_path().c_str()), 0);
  const pylon::NewSession later = store.create("after", with_data(std::string(kPayloadBytes, 'y')));
  EXPECT_TRUE(store.validate(later.token));
  acknowledged.insert(later.session.id);
  EXPECT_EQ(stored_ids(db_path_), acknowledged);
}

TEST_F(FullDisk, RevokeOnAFullDiskFailsClosedAndReachesStorageOnceSpaceIsFreed) {
  pylon::SessionStore store = pylon::SessionStore::open(db_path_, options_);
  leave_little_room();
  ASSERT_TRUE(create_until_full(store).has_value()) << "the tmpfs never filled";
  ASSERT_GE(created_.size(), 3U) << "too little room was left for the scenario";
  // Take whatever is left too: a delete needs a WAL frame, and now there is no room for one.
  write_filler(last_byte_path(), 0);

  const pylon::NewSession& victim = created_.front();
  bool revoked = false;
  const auto error = capture_pylon_error([&] { revoked = store.revoke(victim.token); });
  if (error) {
    EXPECT_EQ(error->code(), ErrorCode::kStorageFull) << error->what();
    EXPECT_THAT(error->what(), HasSubstr(db_path_));
  } else {
    // Acknowledged: then storage has it, full disk or not.
    EXPECT_TRUE(revoked);
    EXPECT_EQ(stored_ids(db_path_).count(victim.session.id), 0U)
        << "revoke returned, but the row is still stored";
  }
  // Fail closed: denied here at once, whatever storage has.
  EXPECT_FALSE(store.validate(victim.token));
  EXPECT_FALSE(store.find(victim.session.id));
  EXPECT_EQ(store.size(), created_.size() - 1);
  std::cout << "revoke on a full disk "
            << (error ? "threw: " + std::string(error->what()) : std::string("succeeded")) << "\n";

  // Space freed: the same store writes again, and its first write takes the pending delete along.
  ASSERT_EQ(::unlink(last_byte_path().c_str()), 0);
  ASSERT_EQ(::unlink(filler_path().c_str()), 0);
  const pylon::NewSession later = store.create("after", with_data("after the disk was full"));
  {
    const std::set<std::string> ids = stored_ids(db_path_);
    EXPECT_EQ(ids.count(victim.session.id), 0U) << "the failed revoke never reached storage";
    EXPECT_EQ(ids.count(later.session.id), 1U);
    for (std::size_t i = 1; i < created_.size(); ++i) {
      EXPECT_EQ(ids.count(created_[i].session.id), 1U) << "acknowledged session " << i << " lost";
    }
  }
  // Another store on the file, while the first is alive (its destructor would retry the delete
  // too, which would hide a store that only deletes on close).
  {
    pylon::SessionStore other = pylon::SessionStore::open(db_path_, options_);
    EXPECT_FALSE(other.validate(victim.token)) << "the revoked session came back";
    EXPECT_TRUE(other.validate(later.token));
    EXPECT_EQ(other.size(), created_.size());  // every create but the victim, plus `later`
  }
  // And revokes work again.
  EXPECT_TRUE(store.revoke(created_.back().token));
  EXPECT_EQ(stored_ids(db_path_).count(created_.back().session.id), 0U);
}

TEST_F(FullDisk, OpeningANewDatabaseOnAFullDiskFailsWithStorageFull) {
  write_filler(filler_path(), 0);
  ASSERT_LT(free_bytes(dir_.path()), 4096U) << "the filler did not fill the tmpfs";
  const auto error = capture_pylon_error([&] { pylon::SessionStore::open(db_path_, options_); });
  ASSERT_TRUE(error.has_value()) << "a store opened on a full disk";
  EXPECT_EQ(error->code(), ErrorCode::kStorageFull) << error->what();
  EXPECT_THAT(error->what(), HasSubstr(db_path_));

  // Once there is room, the same path opens and works (the failed open left nothing broken).
  ASSERT_EQ(::unlink(filler_path().c_str()), 0);
  pylon::SessionStore store = pylon::SessionStore::open(db_path_, options_);
  const pylon::NewSession session = store.create("after");
  EXPECT_EQ(stored_ids(db_path_), std::set<std::string>{session.session.id});
}

}  // namespace

// A test-only SQLite VFS that simulates a power loss. It owns nothing of the library: it wraps the
// process's default VFS (unix), registers itself as the new default, so the library's own
// connections go through it unchanged, and promises this model of a disk with a volatile cache:
//
//   - xWrite and xTruncate of a named file change an in-memory image of that file (every read of
//     any connection sees them) and are queued as "unsynced"; the real file is not touched.
//   - xSync of a file applies its queued writes and truncates to the real file, in order, then
//     fsyncs it through the wrapped VFS. Only then are they durable.
//   - At the armed crash point (the n-th xWrite, xTruncate or xSync, counted together from
//     arm()), or on power_off(), the power goes: that call and every later I/O call fail with an
//     SQLITE_IOERR code (unlocks, unmaps and closes still go through, so connections can close).
//     restart() then models the reboot: the unsynced queue is lost (kDropUnsynced), or a random
//     subset of its 512-byte sector pieces reaches the disk (kTearUnsynced, a torn write), each
//     -shm file is overwritten with garbage (shared memory is RAM), and the images are forgotten.
//   - File creation and deletion are durable at once, and bytes outside a write are never changed
//     (the "powersafe overwrite" the unix VFS promises), so the model is no harsher than SQLite's
//     documented assumptions: what it loses, a real power cut may lose too.
//
// Temporary files (no name) pass straight through and are not counted. One instance per process
// at a time; its methods may be called from any thread.
#ifndef PYLON_TESTS_FAULTS_POWER_LOSS_VFS_HPP_
#define PYLON_TESTS_FAULTS_POWER_LOSS_VFS_HPP_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace pylon::test {

// What reaches the disk of the writes that were not synced when the power went.
enum class PowerCut {
  kDropUnsynced,  // nothing
  kTearUnsynced,  // each 512-byte piece of each write (and each truncate) with probability 1/2
};

class PowerLossVfs {
 public:
  // Registers the VFS as the process default. Throws std::runtime_error if SQLite refuses, or if
  // another PowerLossVfs is installed. `tear_seed` makes kTearUnsynced reproducible.
  explicit PowerLossVfs(std::uint32_t tear_seed = 1);
  // Unregisters it and makes the wrapped VFS the default again. Anything still unsynced is lost,
  // as if the power had gone; the real files keep what was synced.
  ~PowerLossVfs();
  PowerLossVfs(const PowerLossVfs&) = delete;
  PowerLossVfs& operator=(const PowerLossVfs&) = delete;
  PowerLossVfs(PowerLossVfs&&) = delete;
  PowerLossVfs& operator=(PowerLossVfs&&) = delete;

  // Restarts the count of xWrite/xTruncate/xSync calls; the power goes at call number
  // `call_number` (1-based: that call already fails), or never with 0.
  void arm(std::uint64_t call_number, PowerCut cut);
  // The power goes now.
  void power_off(PowerCut cut);
  [[nodiscard]] bool powered_off() const;
  // Calls counted since the last arm() (or since construction or restart()).
  [[nodiscard]] std::uint64_t mutating_calls() const;
  // Writes and truncates made but not yet synced, over every file.
  [[nodiscard]] std::size_t unsynced_operations() const;
  // The same for one file (its full path, as SQLite names it: "/dir/x.db-wal"); nullopt when no
  // file of that name was opened since the last restart().
  [[nodiscard]] std::optional<std::size_t> unsynced_operations_of(const std::string& path) const;
  // Files opened through this VFS and not yet closed.
  [[nodiscard]] std::size_t open_files() const;
  // The reboot after power_off() or the armed point: applies kDropUnsynced / kTearUnsynced to the
  // real files, garbles the -shm files and forgets every image; the power is back on. Throws
  // std::logic_error while the power is still on or a file is still open (a live connection would
  // keep RAM across the reboot, which no real machine does).
  void restart();
  // Sector pieces the last kTearUnsynced restart applied and dropped.
  [[nodiscard]] std::size_t torn_pieces_applied() const;
  [[nodiscard]] std::size_t torn_pieces_dropped() const;

  struct State;

 private:
  std::unique_ptr<State> state_;
};

}  // namespace pylon::test

#endif  // PYLON_TESTS_FAULTS_POWER_LOSS_VFS_HPP_

// sessionctl: the writing half of `copy` and `import`.
#ifndef PYLON_TOOLS_CTL_COPY_HPP_
#define PYLON_TOOLS_CTL_COPY_HPP_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ctl_storage.hpp"
#include "session_backend.hpp"

namespace sessionctl {

struct CopyOptions {
  std::size_t batch_size = 5000;
  bool retry_interrupted = false;   // copy rows a killed copy had begun (see CopyLedger)
  bool progress = false;            // draw a progress line on stderr (a terminal) after 1 s
  std::uint64_t expected_rows = 0;  // for the progress line; 0 when unknown
};

struct CopyReport {
  std::string to;
  std::uint64_t read = 0;                    // rows offered
  std::uint64_t inserted = 0;                // new at the destination
  std::uint64_t updated = 0;                 // the source had seen later activity: expiry, data
  std::uint64_t unchanged = 0;               // the destination holds the same or a newer version
  std::uint64_t revoked_at_destination = 0;  // copied before, gone since: not brought back
  std::uint64_t rotated_at_destination = 0;  // rotated away there: not brought back
  std::uint64_t interrupted = 0;             // begun by a killed copy, not retried
  std::uint64_t skipped = 0;                 // rows the destination cannot store
  std::vector<std::pair<std::string, std::string>> skipped_rows;  // id, why (the first 100)
  double seconds = 0;
};

// Makes SIGINT and SIGTERM ask a running copy or import to stop after its current batch (see
// CopySink::add), so that Ctrl-C leaves the ledger complete.
void stop_copies_on_signals();

// Writes sessions into a destination in batches. Each batch: one read of what the destination
// holds of its ids (rows, rotated ids, the copy ledger), one ledger transaction, then one
// SessionBackend::save_batch() transaction for the rows that are new. Rows the destination
// cannot store are skipped and reported, never fatal; storage errors are (Failure or
// pylon::Error).
class CopySink {
 public:
  CopySink(const Target& to, CopyOptions options);
  ~CopySink();
  CopySink(const CopySink&) = delete;
  CopySink& operator=(const CopySink&) = delete;
  CopySink(CopySink&&) = delete;
  CopySink& operator=(CopySink&&) = delete;

  // Throws Failure(130) once a signal asked to stop, after finishing the batch in flight.
  void add(const pylon::Session& session);
  // A row that never reached add() (unreadable input): counted and reported as skipped.
  void skip(const std::string& id, const std::string& why);
  // Writes what is left and ends the progress line.
  CopyReport finish();
  [[nodiscard]] std::uint64_t pending_at_start() const { return pending_at_start_; }

 private:
  enum class Decision { kInsert, kPresent, kSkip };
  void flush();
  // What to do with a row the destination holds as `state`; counts the rows it skips.
  Decision decide(const DestinationState& state);
  void insert(std::vector<pylon::Session>& rows);
  void save(std::vector<pylon::Session>& rows, std::vector<std::string>& saved,
            std::vector<std::string>& failed);
  void draw_progress(bool last);

  CopyOptions options_;
  std::unique_ptr<pylon::SessionBackend> backend_;
  std::unique_ptr<CopyLedger> ledger_;
  std::vector<pylon::Session> batch_;
  CopyReport report_;
  std::int64_t now_;
  std::uint64_t pending_at_start_ = 0;
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point drawn_;
  bool drew_ = false;
};

}  // namespace sessionctl

#endif  // PYLON_TOOLS_CTL_COPY_HPP_

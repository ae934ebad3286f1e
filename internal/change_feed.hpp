// pylon-sessions: the change feed, through which a store's cache follows what other stores and
// tools write to the same database. Private.
//
// What it owns: a ChangeSource (its own connection to the database), its thread, its lock, and
// its place in the change log: the last position it applied and the gaps below it. What it
// promises: every entry of the log is applied, in position order, within the store's
// change_check_interval while storage is reachable; when the source fails it says so once (an
// event, and following() turns false), keeps trying, and catches up from its place when storage
// is back, or reloads every session when its place was pruned from the log meanwhile.
//
// Applying an entry means making the cache hold what storage holds for that id now (a session or
// nothing, and a rotated-away record), so entries may be applied late or twice; what must not
// happen is a state read from storage replacing a newer one this store wrote itself. The feed
// reads without any lock of the store (a slow or frozen server then delays the feed, never the
// store's writes), and applies inside ChangeApplier::exclusive(), the lock every write of the
// store holds from its storage call to its cache update, only if no such call came between
// (ChangeApplier::write_generation() unchanged); otherwise it reads again, and after a few
// tries reads inside exclusive() itself. A source may skip the entries of its store's own writes
// (ChangeBatch::skipped_through): a batch with nothing left to apply needs no lock at all.
#ifndef PYLON_INTERNAL_CHANGE_FEED_HPP_
#define PYLON_INTERNAL_CHANGE_FEED_HPP_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "internal/thread_annotations.hpp"
#include "session_backend.hpp"

namespace pylon::detail {

// What the feed needs of its store.
class ChangeApplier {
 public:
  virtual ~ChangeApplier() = default;
  // Runs `step` while no write of this store can interleave.
  virtual void exclusive(const std::function<void()>& step) = 0;
  // Makes the cache hold what `change` says storage holds. Called inside exclusive().
  virtual void apply(const SessionChange& change) = 0;
  // Makes the cache hold every session storage holds, and nothing else. Called inside
  // exclusive(), when the store fell behind the log.
  virtual void reload() = 0;
  // Tells the store's listener (kChangeFeedLost, kChangeFeedResumed). Must not throw.
  virtual void report(const SessionEvent& event) noexcept = 0;
  // Moves on after every storage call the store makes under the lock exclusive() takes.
  virtual std::uint64_t write_generation() const noexcept = 0;

 protected:
  ChangeApplier() = default;
  ChangeApplier(const ChangeApplier&) = default;
  ChangeApplier& operator=(const ChangeApplier&) = default;
  ChangeApplier(ChangeApplier&&) = default;
  ChangeApplier& operator=(ChangeApplier&&) = default;
};

class ChangeFeed {
 public:
  struct Options {
    // The longest a change may go unseen; 0: no thread, the store calls check_now() instead.
    std::chrono::milliseconds interval{100};
    std::chrono::seconds retention{600};  // how long the log keeps an entry
  };

  // Takes the log's position now: the store constructs the feed before it loads its cache, so
  // every change the load may miss comes after it. Throws what the source throws.
  ChangeFeed(std::unique_ptr<ChangeSource> source, ChangeApplier& applier, Options options)
      : source_(std::move(source)), applier_(applier), options_(options) {
    const MutexLock lock(mutex_);
    cursor_ = source_->position();
    following_ = true;
  }
  ~ChangeFeed() {
    {
      const MutexLock lock(stop_mutex_);
      stop_requested_ = true;
    }
    stop_.signal_all();
    if (thread_.joinable()) thread_.join();
  }
  ChangeFeed(const ChangeFeed&) = delete;
  ChangeFeed& operator=(const ChangeFeed&) = delete;
  ChangeFeed(ChangeFeed&&) = delete;
  ChangeFeed& operator=(ChangeFeed&&) = delete;

  // Starts following on a thread of its own (unless the interval is 0), once the store has
  // loaded its cache: the first read applies what changed during the load.
  void start() {
    if (options_.interval.count() > 0) thread_ = std::thread([this] { loop(); });
  }

  // With interval 0, before each lookup: applies what changed since the last call. Never throws:
  // a failure is reported as the thread reports it, and following() turns false.
  void check_now() noexcept EXCLUDES(mutex_) {
    const MutexLock lock(mutex_);
    try {
      if (source_->wait(std::chrono::milliseconds(0)) || !following_ || !gaps_.empty()) {
        catch_up();
      }
      prune_when_due();
      mark_following();
    } catch (const std::exception& error) {
      mark_lost(error.what());
    }
  }

  bool following() const noexcept { return following_; }
  std::uint64_t applied() const noexcept { return applied_; }
  std::uint64_t losses() const noexcept { return losses_; }
  std::uint64_t reloads() const noexcept { return reloads_; }

 private:
  // At most this many entries per read; a longer backlog is read in several.
  static constexpr std::size_t kBatch = 1000;
  // Reads made outside the store's lock before one is made inside it (see the top).
  static constexpr int kOptimisticReads = 3;
  // A gap (a position handed out but not seen committed) is read again for this long; a
  // transaction that commits later than that is not followed (none of pylon's takes that long).
  static constexpr std::chrono::seconds kGapPatience{30};
  static constexpr std::size_t kMaxGaps = 1000;
  // How long the thread waits between tries while the source fails.
  static constexpr std::chrono::milliseconds kRetryPause{100};
  // The longest the thread blocks in the source at once: bounds how long stopping takes.
  static constexpr std::chrono::milliseconds kLongestWait{100};
  // With no sign of change, the log is read anyway this often.
  static constexpr std::chrono::seconds kQuietRead{5};

  using Clock = std::chrono::steady_clock;

  void loop() EXCLUDES(mutex_) {
    const std::chrono::milliseconds wait = std::min(options_.interval, kLongestWait);
    Clock::time_point last_read = Clock::now();
    while (!stop_requested()) {
      bool failed = false;
      {
        const MutexLock lock(mutex_);
        try {
          // A notification or a changed file, a gap to read again, a source that failed before,
          // or a long quiet spell (a read now and then costs little and guards against a sign of
          // change lost without the source noticing).
          const bool changed = source_->wait(wait);
          if (changed || !following_ || !gaps_.empty() ||
              Clock::now() - last_read >=
                  std::max<Clock::duration>(options_.interval, kQuietRead)) {
            catch_up();
            last_read = Clock::now();
          }
          prune_when_due();
          mark_following();
        } catch (const std::exception& error) {
          mark_lost(error.what());
          failed = true;
        }
      }
      if (failed) pause(kRetryPause);
    }
  }

  // Applies every entry after cursor_ (and the gaps), in batches; reloads instead when the log
  // no longer holds the entries after cursor_.
  void catch_up() REQUIRES(mutex_) {
    bool more = true;
    while (more) {
      std::vector<std::int64_t> gaps;
      gaps.reserve(gaps_.size());
      for (const auto& gap : gaps_) gaps.push_back(gap.first);
      ChangeBatch batch;
      bool caught_up = false;
      for (int attempt = 0; attempt < kOptimisticReads && !caught_up; ++attempt) {
        const std::uint64_t generation = applier_.write_generation();
        batch = source_->read(cursor_, gaps, kBatch);
        if (batch.changes.empty()) {
          // Nothing to apply (the store's own writes, skipped): no state read can be stale, so
          // neither the store's lock nor an unchanged generation is needed.
          caught_up = apply(batch, &more);
          break;
        }
        applier_.exclusive([&]() NO_THREAD_SAFETY_ANALYSIS {  // runs here, with mutex_ held
          if (applier_.write_generation() == generation) caught_up = apply(batch, &more);
        });
      }
      if (!caught_up) {
        // A store writing without pause: read where none of its writes can come between.
        applier_.exclusive([&]() NO_THREAD_SAFETY_ANALYSIS {
          batch = source_->read(cursor_, gaps, kBatch);
          caught_up = apply(batch, &more);
        });
      }
      if (!caught_up) reload();
    }
  }

  // Inside exclusive(): applies `batch` and moves cursor_ on; false, having applied nothing,
  // when the log no longer holds what came after cursor_. *more: a full batch was read.
  bool apply(const ChangeBatch& batch, bool* more) REQUIRES(mutex_) {
    *more = false;
    if (batch.pruned_through > cursor_) return false;
    std::size_t after_cursor = 0;
    for (const SessionChange& change : batch.changes) {
      applier_.apply(change);
      ++applied_;
      if (change.position > cursor_) ++after_cursor;
    }
    const std::int64_t before = cursor_;
    advance(batch);
    *more = after_cursor >= kBatch ||
            (batch.skipped_through > before &&
             static_cast<std::uint64_t>(batch.skipped_through - before) >= kBatch);
    return true;
  }

  // Entries this store never applied were pruned: every session is read again. The position is
  // taken first, so whatever is written during the reload is read again after it.
  void reload() REQUIRES(mutex_) {
    const std::int64_t position = source_->position();
    applier_.exclusive([&]() NO_THREAD_SAFETY_ANALYSIS { applier_.reload(); });
    cursor_ = position;
    gaps_.clear();
    ++reloads_;
  }

  // Moves cursor_ past the entries read, remembering the positions missing between them as gaps
  // (but not those the source skipped: batch.skipped_through) and forgetting the gaps that were
  // read, pruned or waited for long enough.
  void advance(const ChangeBatch& batch) REQUIRES(mutex_) {
    const Clock::time_point now = Clock::now();
    std::int64_t expected = std::max(cursor_, batch.skipped_through) + 1;
    for (const SessionChange& change : batch.changes) {
      if (change.position <= cursor_) {
        gaps_.erase(change.position);
        continue;
      }
      // Only the last kMaxGaps positions of a long run are kept.
      for (std::int64_t gap = std::max<std::int64_t>(
               expected, change.position - static_cast<std::int64_t>(kMaxGaps));
           gap < change.position; ++gap) {
        gaps_.emplace(gap, now);
      }
      expected = std::max(expected, change.position + 1);
    }
    cursor_ = std::max(cursor_, expected - 1);
    for (auto gap = gaps_.begin(); gap != gaps_.end();) {
      const bool drop = gap->first <= batch.pruned_through || now - gap->second > kGapPatience;
      gap = drop ? gaps_.erase(gap) : std::next(gap);
    }
    while (gaps_.size() > kMaxGaps) gaps_.erase(gaps_.begin());
  }

  void prune_when_due() REQUIRES(mutex_) {
    const auto every = std::min<Clock::duration>(options_.retention / 4, std::chrono::minutes(1));
    const Clock::time_point now = Clock::now();
    if (last_prune_ != Clock::time_point::min() && now - last_prune_ < every) return;
    last_prune_ = now;
    try {
      source_->prune(options_.retention);
    } catch (const std::exception&) {  // NOLINT(bugprone-empty-catch)
      // Pruning is housekeeping (the file busy, the server gone): tried again next time, and a
      // lost connection is the next wait()'s to report.
    }
  }

  void mark_following() REQUIRES(mutex_) {
    if (following_) return;
    following_ = true;
    applier_.report(SessionEvent::with_detail(SessionEventType::kChangeFeedResumed, {}));
  }

  void mark_lost(const char* why) REQUIRES(mutex_) {
    if (!following_) return;
    following_ = false;
    ++losses_;
    try {
      applier_.report(SessionEvent::with_detail(SessionEventType::kChangeFeedLost, why));
    } catch (const std::bad_alloc&) {  // NOLINT(bugprone-empty-catch): the count still shows it
    }
  }

  bool stop_requested() EXCLUDES(stop_mutex_) {
    const MutexLock lock(stop_mutex_);
    return stop_requested_;
  }
  void pause(std::chrono::milliseconds duration) EXCLUDES(stop_mutex_) {
    MutexLock lock(stop_mutex_);
    stop_.wait_for(duration, [this]() NO_THREAD_SAFETY_ANALYSIS { return stop_requested_; });
  }

  Mutex mutex_;  // the source, and the place in the log
  const std::unique_ptr<ChangeSource> source_ PT_GUARDED_BY(mutex_);
  ChangeApplier& applier_;
  const Options options_;
  std::int64_t cursor_ GUARDED_BY(mutex_) = 0;  // every position up to it applied, or in gaps_
  std::map<std::int64_t, Clock::time_point> gaps_ GUARDED_BY(mutex_);  // position, first missed
  // The first prune is due at once: a store that starts finds the log as others left it.
  Clock::time_point last_prune_ GUARDED_BY(mutex_) = Clock::time_point::min();
  std::atomic<bool> following_{false};
  std::atomic<std::uint64_t> applied_{0};
  std::atomic<std::uint64_t> losses_{0};
  std::atomic<std::uint64_t> reloads_{0};

  Mutex stop_mutex_;
  CondVar stop_{stop_mutex_};
  bool stop_requested_ GUARDED_BY(stop_mutex_) = false;
  std::thread thread_;  // last: started by start(), once everything above exists
};

}  // namespace pylon::detail

#endif  // PYLON_INTERNAL_CHANGE_FEED_HPP_

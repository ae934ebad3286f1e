// pylon-sessions: the change-log positions a backend's own group writes made. Private.
//
// What it owns: a set of position ranges, under its own lock, shared by a backend that writes
// (SessionBackend::write_group, whose outcomes its store applies to its cache) and the change
// source it opened (another connection, read on the change feed's thread). What it promises: a
// range is recorded only once the transaction that logged those positions has committed, and only
// for writes whose outcome the store applies itself; so the source may report them as skipped
// (ChangeBatch::skipped_through) instead of making the store read back what it already holds.
// Forgetting a range is always safe: its entries are then read back and applied like anyone
// else's, which is what happens to a range not yet recorded when the source reads it.
#ifndef PYLON_INTERNAL_OWN_CHANGES_HPP_
#define PYLON_INTERNAL_OWN_CHANGES_HPP_

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>

#include "internal/thread_annotations.hpp"

namespace pylon::detail {

class OwnChanges {
 public:
  // Positions first..last (a transaction's), adjacent ranges merged: one process writing alone
  // keeps a single range. Past kMaxRanges the oldest are forgotten.
  void record(std::int64_t first, std::int64_t last) noexcept EXCLUDES(mutex_) {
    if (first > last) return;
    const MutexLock lock(mutex_);
    try {
      auto next = ranges_.upper_bound(first);
      if (next != ranges_.begin()) {
        const auto previous = std::prev(next);
        if (previous->second + 1 >= first) {  // touches or overlaps the range before
          if (previous->second < last) previous->second = last;
          return;
        }
      }
      ranges_.emplace_hint(next, first, last);
      while (ranges_.size() > kMaxRanges) ranges_.erase(ranges_.begin());
    } catch (...) {  // NOLINT(bugprone-empty-catch): forgetting is safe (see the top)
    }
  }

  // Whether `position` was recorded.
  bool contains(std::int64_t position) const EXCLUDES(mutex_) {
    const MutexLock lock(mutex_);
    auto next = ranges_.upper_bound(position);
    return next != ranges_.begin() && std::prev(next)->second >= position;
  }

  // Forgets every position up to `through`: the reader will not ask for them again.
  void forget_through(std::int64_t through) EXCLUDES(mutex_) {
    const MutexLock lock(mutex_);
    while (!ranges_.empty() && ranges_.begin()->second <= through) ranges_.erase(ranges_.begin());
  }

 private:
  static constexpr std::size_t kMaxRanges = 100000;
  mutable Mutex mutex_;
  std::map<std::int64_t, std::int64_t> ranges_ GUARDED_BY(mutex_);  // first -> last, disjoint
};

}  // namespace pylon::detail

#endif  // PYLON_INTERNAL_OWN_CHANGES_HPP_

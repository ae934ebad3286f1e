// pylon-sessions: the bound on the storage reads a cache miss may cost. Private.
//
// What it owns: a token bucket of lookups (refilled at `per_second`, holding at most one
// second's worth), under its own lock, and the counts stats() reports. A token the cache does not
// hold may have been created by another instance, so the store reads its row from storage; a
// flood of random well-formed tokens must not turn into a flood of reads, so past the bound a miss
// is refused without one. 0 per second: never look.
#ifndef PYLON_INTERNAL_MISS_LOOKUPS_HPP_
#define PYLON_INTERNAL_MISS_LOOKUPS_HPP_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>

#include "internal/thread_annotations.hpp"

namespace pylon::detail {

class MissLookups {
 public:
  explicit MissLookups(std::int64_t per_second)
      : per_second_(per_second), available_(static_cast<double>(per_second)) {}

  // Whether lookups are on (a rate above 0). When off, the caller counts its refusals itself,
  // with the counter a hit uses the like of, so that a miss costs what a hit costs.
  bool enabled() const noexcept { return per_second_ > 0; }
  // True, counting a lookup, when one may be made now; false, counting a refusal, when the
  // bound is reached (or lookups are off: uncounted, see enabled()).
  bool try_acquire() EXCLUDES(mutex_) {
    if (per_second_ <= 0) return false;
    const auto now = std::chrono::steady_clock::now();
    {
      const MutexLock lock(mutex_);
      const double elapsed = std::chrono::duration<double>(now - last_refill_).count();
      last_refill_ = now;
      const auto capacity = static_cast<double>(per_second_);
      available_ = std::min(capacity, available_ + elapsed * capacity);
      if (available_ >= 1.0) {
        available_ -= 1.0;
        ++made_;
        return true;
      }
    }
    ++refused_;
    return false;
  }

  std::uint64_t made() const noexcept { return made_; }
  std::uint64_t refused() const noexcept { return refused_; }

 private:
  const std::int64_t per_second_;
  Mutex mutex_;
  double available_ GUARDED_BY(mutex_);
  std::chrono::steady_clock::time_point last_refill_ GUARDED_BY(mutex_) =
      std::chrono::steady_clock::now();
  std::atomic<std::uint64_t> made_{0};
  std::atomic<std::uint64_t> refused_{0};
};

}  // namespace pylon::detail

#endif  // PYLON_INTERNAL_MISS_LOOKUPS_HPP_

// pylon-sessions: the memory of rotated-away session ids. Private.
//
// What it owns: the record of every rotated id this store knows of (SessionBackend::rotate keeps
// them in storage; a store reads them at start-up and adds its own rotations), under its own
// lock, and the cache's markers for them, which it keeps in step with the record.
#ifndef PYLON_INTERNAL_ROTATED_IDS_HPP_
#define PYLON_INTERNAL_ROTATED_IDS_HPP_

#include <cstdint>
#include <new>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

#include "internal/backend_shared.hpp"
#include "internal/session_cache.hpp"
#include "internal/thread_annotations.hpp"
#include "session_backend.hpp"

namespace pylon::detail {

// The ids rotated away that storage holds (SessionBackend::rotate), for validate() to recognise a
// replayed old token. Each id is kept twice, and this class keeps the two in step: as a marker
// in the cache, which validate()'s lookup reads anyway (an unknown token costs no second lookup),
// and here with what a reuse event or the grace window needs. Its own lock; callers may hold the
// store's write mutex (taken before this one), never the cache's locks.
class RotatedIds {
 public:
  explicit RotatedIds(SessionCache& cache) : cache_(cache) {}

  // Remembers a rotated id (a well-formed one; others are ignored). Best effort: on bad_alloc
  // the id goes unrecorded (in storage it is recorded, and a restart reads it back), since
  // rotate() has succeeded by then and its caller must get the new token.
  void remember(RotatedId rotated) noexcept EXCLUDES(mutex_) {
    SessionDigest digest{};
    if (!parse_session_id(rotated.id, &digest)) return;
    try {
      const MutexLock lock(mutex_);
      cache_.remember_rotated(digest);
      try {
        std::string id = rotated.id;
        by_id_.insert_or_assign(std::move(id), std::move(rotated));
      } catch (...) {
        cache_.forget_rotated(digest);
        throw;
      }
    } catch (const std::bad_alloc&) {  // NOLINT(bugprone-empty-catch): documented above
    }
  }

  // The record of a rotated id, if remembered.
  std::optional<RotatedId> find(const std::string& id) const EXCLUDES(mutex_) {
    const MutexLock lock(mutex_);
    const auto found = by_id_.find(id);
    if (found == by_id_.end()) return std::nullopt;
    return found->second;
  }

  // The last session of a chain of rotations that starts at `rotated` (A -> B, then B -> C: C),
  // as far as this process knows; a chain longer than a session could plausibly be rotated
  // within one grace window ends early.
  std::string last_successor(const RotatedId& rotated) const EXCLUDES(mutex_) {
    const MutexLock lock(mutex_);
    std::string successor = rotated.replaced_by;
    for (int hops = 0; hops < kMaxChain; ++hops) {
      const auto next = by_id_.find(successor);
      if (next == by_id_.end()) break;
      successor = next->second.replaced_by;
    }
    return successor;
  }

  // Forgets every id whose session would have expired by `at`.
  void forget_expired(std::int64_t at) noexcept EXCLUDES(mutex_) {
    const MutexLock lock(mutex_);
    for (auto it = by_id_.begin(); it != by_id_.end();) {
      if (it->second.expires_at > at) {
        ++it;
        continue;
      }
      SessionDigest digest{};
      if (parse_session_id(it->first, &digest)) cache_.forget_rotated(digest);
      it = by_id_.erase(it);
    }
  }

 private:
  static constexpr int kMaxChain = 64;
  SessionCache& cache_;
  mutable Mutex mutex_;
  std::unordered_map<std::string, RotatedId> by_id_ GUARDED_BY(mutex_);
};

}  // namespace pylon::detail

#endif  // PYLON_INTERNAL_ROTATED_IDS_HPP_

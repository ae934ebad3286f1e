// pylon-sessions: the books a store keeps of its writes to storage. Private.
//
// What it owns: the store's write mutex, which serialises every storage write and the cache
// update that follows it (so the cache changes in the order storage did); the deletes that failed
// and are owed to storage (fail closed); the writes whose outcome is unknown (in doubt); and the
// counters stats() reports. What it promises, with its mutex held:
//   - run() counts every write and records a failure before rethrowing it;
//   - run_in_doubt() takes the ids a write touched out of the cache, to be read back from storage,
//     when the write failed with its outcome unknown (kConnectionLost: applied or not, only the
//     server knows): the cache never guesses;
//   - owe_delete() denies what a failed delete meant to delete, at once, and settle() retries the
//     same filter (not a list of ids: another process's sessions must go too) and reads the
//     in-doubt ids back, before every later write, until storage has both.
#ifndef PYLON_INTERNAL_STORAGE_WRITES_HPP_
#define PYLON_INTERNAL_STORAGE_WRITES_HPP_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "internal/session_cache.hpp"
#include "internal/thread_annotations.hpp"
#include "session_backend.hpp"

namespace pylon::detail {

// Whether `session` is one of the rows `filter` matches (SessionBackend::remove_matching).
inline bool matches(const SessionFilter& filter, const Session& session) {
  return (!filter.id || session.id == *filter.id) &&
         (!filter.user_id || session.user_id == *filter.user_id) &&
         (!filter.tenant_id || session.tenant_id == filter.tenant_id) &&
         (!filter.idp_session_id || session.idp_session_id == filter.idp_session_id) &&
         (!filter.except_id || session.id != *filter.except_id);
}

class StorageWrites {
 public:
  // `cacheable` tells whether a row read back from storage may enter the cache (storable, sane,
  // in the store's scope).
  StorageWrites(SessionBackend& backend, SessionCache& cache,
                std::function<bool(const Session&)> cacheable)
      : backend_(backend), cache_(cache), cacheable_(std::move(cacheable)) {}
  StorageWrites(const StorageWrites&) = delete;
  StorageWrites& operator=(const StorageWrites&) = delete;
  StorageWrites(StorageWrites&&) = delete;
  StorageWrites& operator=(StorageWrites&&) = delete;
  // The last attempt at the deletes still owed. A destructor must not throw: what still fails
  // stays in storage, as the Error thrown by the original revoke reported.
  ~StorageWrites() {
    const MutexLock lock(mutex_);
    for (const SessionFilter& filter : owed_deletes_) {
      try {
        backend_.remove_matching(filter);
      } catch (...) {  // NOLINT(bugprone-empty-catch): reported when the revoke failed
      }
    }
  }

  Mutex& mutex() RETURN_CAPABILITY(mutex_) { return mutex_; }

  // Runs one storage write: counts it, records a failure, rethrows.
  template <typename Call>
  decltype(auto) run(Call&& call) REQUIRES(mutex_) {
    const StorageTouched touched(*this);
    try {
      if constexpr (std::is_void_v<decltype(call())>) {
        call();
        ++writes_;
      } else {
        auto result = call();
        ++writes_;
        return result;
      }
    } catch (const std::exception& error) {
      ++failures_;
      const MutexLock lock(last_error_mutex_);
      last_error_ = error.what();
      throw;
    }
  }

  // run(), and when the write fails in doubt, `ids` leave the cache until settle() reads them back.
  template <typename Call>
  decltype(auto) run_in_doubt(const std::vector<std::string>& ids, Call&& call) REQUIRES(mutex_) {
    try {
      return run(std::forward<Call>(call));
    } catch (const Error& error) {
      if (error.code() == ErrorCode::kConnectionLost) {
        for (const std::string& id : ids) {
          cache_.erase(std::string_view(id));
          in_doubt_.insert(id);
        }
      }
      throw;
    }
  }

  // A group of `count` writes in one storage call (SessionBackend::write_group), counted write by
  // write: a failure of the whole counts `count` failures (and with kConnectionLost puts the ids
  // `ids_in_doubt()` returns in doubt, as run_in_doubt() does) and rethrows; otherwise the caller
  // counts each write's own outcome with count_outcome(). The ids are asked for only on failure:
  // a write that succeeds costs no list of them.
  template <typename Ids, typename Call>
  decltype(auto) run_group(Ids&& ids_in_doubt, std::size_t count, Call&& call) REQUIRES(mutex_) {
    const StorageTouched touched(*this);
    try {
      return call();
    } catch (const std::exception& error) {
      failures_ += count;
      note_error(error, ids_in_doubt);
      throw;
    }
  }
  // One write of a group: a success counted, or its failure recorded, the ids `ids_in_doubt()`
  // returns in doubt when its outcome is unknown (kConnectionLost from a backend that commits
  // each write alone).
  template <typename Ids>
  void count_outcome(const std::exception_ptr& failure, Ids&& ids_in_doubt) REQUIRES(mutex_) {
    if (!failure) {
      ++writes_;
      return;
    }
    ++failures_;
    try {
      std::rethrow_exception(failure);
    } catch (const std::exception& error) {
      note_error(error, ids_in_doubt);
    } catch (...) {  // NOLINT(bugprone-empty-catch): counted above; nothing more to note
    }
  }

  // A delete of `filter` failed: `denied` (the cached sessions it matches) leave the cache now,
  // and the delete is owed to storage.
  void owe_delete(SessionFilter filter, const std::vector<std::string>& denied) REQUIRES(mutex_) {
    for (const std::string& id : denied) cache_.erase(std::string_view(id));
    owed_deletes_.push_back(std::move(filter));
  }

  // Pays the deletes owed, then reads the in-doubt ids back, making the cache agree with what
  // storage says. Throws, leaving the rest owed or in doubt, if storage still refuses. Called
  // before every write.
  void settle() REQUIRES(mutex_) {
    while (!owed_deletes_.empty()) {
      const SessionFilter& owed = owed_deletes_.front();
      const std::vector<RemovedSession> removed =
          run([this, &owed] { return backend_.remove_matching(owed); });
      for (const RemovedSession& row : removed) cache_.erase(std::string_view(row.id));
      owed_deletes_.erase(owed_deletes_.begin());
    }
    for (auto it = in_doubt_.begin(); it != in_doubt_.end();) {
      const std::string& id = *it;
      const std::optional<Session> stored = run([this, &id] { return backend_.load_one(id); });
      if (stored && !owes_delete_of(*stored) && cacheable_(*stored)) {
        cache_.put(*stored);
      } else {
        cache_.erase(std::string_view(*it));
      }
      it = in_doubt_.erase(it);
    }
  }

  // Whether a failed delete still owed to storage covers `session`: it is denied here.
  bool denies(const Session& session) const REQUIRES(mutex_) { return owes_delete_of(session); }
  // Whether a write to `id` failed with its outcome unknown and settle() has not read it back:
  // it stays out of the cache until then, whatever a reader saw of it meanwhile.
  bool in_doubt(const std::string& id) const REQUIRES(mutex_) { return in_doubt_.count(id) != 0; }
  // Whether a failed delete of exactly this id is owed: denied without reading its row.
  bool denies_id(std::string_view id) const REQUIRES(mutex_) {
    return std::any_of(owed_deletes_.begin(), owed_deletes_.end(),
                       [id](const SessionFilter& filter) { return filter.id && *filter.id == id; });
  }

  // Moves on after every storage call made under the write lock (a write, or a read whose row
  // enters the cache), failed ones included: whoever read storage without the lock and finds it
  // unchanged once holding the lock knows no write of this store came between (ChangeFeed).
  std::uint64_t generation() const noexcept { return generation_; }
  void note_storage_read() REQUIRES(mutex_) { ++generation_; }

  std::uint64_t writes() const noexcept { return writes_; }
  std::uint64_t failures() const noexcept { return failures_; }
  std::string last_error() const EXCLUDES(last_error_mutex_) {
    const MutexLock lock(last_error_mutex_);
    return last_error_;
  }

 private:
  // Moves generation_ on when a storage call ends, however it ends.
  class StorageTouched {
   public:
    explicit StorageTouched(StorageWrites& writes) : writes_(writes) {}
    ~StorageTouched() { ++writes_.generation_; }
    StorageTouched(const StorageTouched&) = delete;
    StorageTouched& operator=(const StorageTouched&) = delete;
    StorageTouched(StorageTouched&&) = delete;
    StorageTouched& operator=(StorageTouched&&) = delete;

   private:
    StorageWrites& writes_;
  };

  template <typename Ids>
  void note_error(const std::exception& error, Ids&& ids_in_doubt) REQUIRES(mutex_) {
    {
      const MutexLock lock(last_error_mutex_);
      last_error_ = error.what();
    }
    const auto* failure = dynamic_cast<const Error*>(&error);
    if (failure != nullptr && failure->code() == ErrorCode::kConnectionLost) {
      for (const std::string& id : ids_in_doubt()) {
        cache_.erase(std::string_view(id));
        in_doubt_.insert(id);
      }
    }
  }

  bool owes_delete_of(const Session& session) const REQUIRES(mutex_) {
    return std::any_of(
        owed_deletes_.begin(), owed_deletes_.end(),
        [&session](const SessionFilter& filter) { return matches(filter, session); });
  }

  Mutex mutex_;
  SessionBackend& backend_;
  SessionCache& cache_;
  const std::function<bool(const Session&)> cacheable_;
  std::vector<SessionFilter> owed_deletes_ GUARDED_BY(mutex_);
  std::unordered_set<std::string> in_doubt_ GUARDED_BY(mutex_);
  std::atomic<std::uint64_t> writes_{0};
  std::atomic<std::uint64_t> failures_{0};
  std::atomic<std::uint64_t> generation_{0};
  mutable Mutex last_error_mutex_;
  std::string last_error_ GUARDED_BY(last_error_mutex_);
};

}  // namespace pylon::detail

#endif  // PYLON_INTERNAL_STORAGE_WRITES_HPP_

// pylon-sessions: group commit, the queue that lets concurrent writes share one commit. Private.
//
// What it owns: the queue of waiting writers and the leader role, under its own mutex. Modelled
// on leveldb's DBImpl::Write: every caller brings a Writer record with its own condition variable
// and queues it; the first caller that finds no leader active becomes the leader, takes the whole
// queue as its group, and commits the group with the queue's mutex released, so the writers that
// arrive meanwhile queue up for the next group. Each caller returns only once its own record is
// done: committed, or failed with its group.
//
// What it adds to leveldb's scheme: the callers a commit releases usually come straight back with
// their next write while the writers queued during that commit are already waiting. The next
// leader waits for them, at most half as long as the last commit took (capped), so one commit
// carries both groups instead of alternating between two half-full ones. A caller that does not
// come back costs the others that half commit once. Each waiter sleeps on its own condition
// variable and is woken alone: on two cores, a thundering herd costs the leader its core.
#ifndef PYLON_INTERNAL_GROUP_COMMIT_HPP_
#define PYLON_INTERNAL_GROUP_COMMIT_HPP_

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <utility>
#include <vector>

#include "internal/thread_annotations.hpp"

namespace pylon::detail {

template <typename Item>
class GroupCommit {
 public:
  // One caller's place in the queue. The leader that commits it changes `item` (with the queue's
  // mutex released: the caller reads it only after it saw `done`, which the leader sets under the
  // mutex afterwards).
  class Writer {
   public:
    Writer(GroupCommit& owner, Item queued) : item(std::move(queued)), wake_(owner.mutex_) {}
    Writer(const Writer&) = delete;
    Writer& operator=(const Writer&) = delete;
    Writer(Writer&&) = delete;
    Writer& operator=(Writer&&) = delete;
    ~Writer() = default;

    Item item;

   private:
    friend class GroupCommit;
    bool done_ = false;  // guarded by the owner's mutex_
    CondVar wake_;
  };

  GroupCommit() = default;
  GroupCommit(const GroupCommit&) = delete;
  GroupCommit& operator=(const GroupCommit&) = delete;
  GroupCommit(GroupCommit&&) = delete;
  GroupCommit& operator=(GroupCommit&&) = delete;
  ~GroupCommit() = default;

  // Queues `writer` and returns once a leader, this thread or another, has called
  // commit(const std::vector<Writer*>& group) on a group that holds it. `commit` must not throw:
  // it records each writer's outcome in its item.
  template <typename Commit>
  void write(Writer& writer, Commit&& commit) EXCLUDES(mutex_) {
    MutexLock lock(mutex_);
    queue_.push_back(&writer);
    if (rejoining_ > 0 && --rejoining_ == 0 && gathering_leader_ != nullptr) {
      gathering_leader_->wake_.signal();
    }
    while (!writer.done_) {
      if (leader_active_) {
        writer.wake_.wait();
        continue;
      }
      leader_active_ = true;
      if (rejoining_ > 0) {
        gathering_leader_ = &writer;
        writer.wake_.wait_for(last_commit_time_ / 2, [this]() NO_THREAD_SAFETY_ANALYSIS {
          return rejoining_ == 0;  // evaluated with mutex_ held, inside the wait
        });
        gathering_leader_ = nullptr;
      }
      std::vector<Writer*> group;
      group.swap(queue_);
      lock.unlock();
      const auto started = std::chrono::steady_clock::now();
      commit(static_cast<const std::vector<Writer*>&>(group));
      const auto took = std::chrono::steady_clock::now() - started;
      lock.lock();
      last_commit_time_ = std::min<std::chrono::steady_clock::duration>(took, kMaxGatherBasis);
      rejoining_ = group.size();
      // Signalled under the mutex: a follower's record (and its condition variable) lives on its
      // stack until it has seen done_, which it cannot before this thread releases the mutex.
      for (Writer* member : group) {
        member->done_ = true;
        if (member != &writer) member->wake_.signal();
      }
      leader_active_ = false;
      if (!queue_.empty()) queue_.front()->wake_.signal();  // the next leader
    }
  }

 private:
  // The longest commit time the gathering wait is based on: a slow commit (a stalled disk) must
  // not make every later leader wait long.
  static constexpr std::chrono::milliseconds kMaxGatherBasis{10};

  Mutex mutex_;
  std::vector<Writer*> queue_ GUARDED_BY(mutex_);
  bool leader_active_ GUARDED_BY(mutex_) = false;
  // How many callers the last commit released that have not queued a write since, and the
  // leader waiting for them.
  std::size_t rejoining_ GUARDED_BY(mutex_) = 0;
  Writer* gathering_leader_ GUARDED_BY(mutex_) = nullptr;
  std::chrono::steady_clock::duration last_commit_time_ GUARDED_BY(mutex_){};
};

}  // namespace pylon::detail

#endif  // PYLON_INTERNAL_GROUP_COMMIT_HPP_

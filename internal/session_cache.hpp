// pylon-sessions: SessionCache, the in-memory table of sessions behind SessionStore. Private: not
// installed, not part of the API.
//
// What it promises:
//   - Reads (find, of_user, with_idp_session, size) run concurrently with each other and with
//     reads on other threads. A find takes the shared lock of one of 16 shards, chosen by the
//     session's digest, so validate() on several threads does not meet on one lock.
//   - Compact and cache-friendly: a session is one allocation (a fixed header followed by its
//     field bytes), found through hash tables of 16-byte slots that hold the key's hash next to
//     the pointer, so a lookup reads two cache-line buckets and then the session itself. Ids are
//     kept as their 32 digest bytes, not 64 hex characters. bench/pylon_bench measures the bytes.
//   - find_token(), validate()'s lookup, does the same work for an id that is cached and for one
//     that is not, so that validate() does not tell them apart by its time.
//   - Fast start-up: a Loader fills the cache from a backend's rows on a second thread while the
//     first reads them, prefetching the buckets of the rows it will insert next.
//   - Writes (put, erase, erase_expired, remember_rotated, forget_rotated) come from one thread
//     at a time: SessionStore calls them under its write_mutex_. A write holds one shard's lock
//     exclusively, and the user index's too when it changes a session, so a reader sees a
//     session either wholly before or wholly after it. A cached
//     session is never changed in place: put() builds the new one first and swaps it in.
#ifndef PYLON_INTERNAL_SESSION_CACHE_HPP_
#define PYLON_INTERNAL_SESSION_CACHE_HPP_

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "internal/backend_shared.hpp"
#include "internal/thread_annotations.hpp"
#include "session_backend.hpp"

namespace pylon::detail {

class SessionCache {
  struct Entry;
  struct EntryDelete {
    void operator()(Entry* entry) const noexcept;
  };
  using OwnedEntry = std::unique_ptr<Entry, EntryDelete>;
  // A session on its way in, with the hashes of its id and of its user id.
  struct Pending {
    OwnedEntry entry;
    std::uint64_t id_hash = 0;
    std::uint64_t user_hash = 0;
  };
  static constexpr std::size_t kShards = 16;

 public:
  enum class Found { kNone, kLive, kExpired, kRotatedAway };

  SessionCache();
  ~SessionCache();
  SessionCache(const SessionCache&) = delete;
  SessionCache& operator=(const SessionCache&) = delete;
  SessionCache(SessionCache&&) = delete;
  SessionCache& operator=(SessionCache&&) = delete;

  // ---- Reads: any thread, any time.

  // Whether the session is cached and live at `at`; when it is cached, live or not, *out gets a
  // copy of it.
  Found find(const SessionDigest& id, std::int64_t at, Session* out) const;
  // The lookup behind validate(), which must take no measurably different time for a token whose
  // session is cached and for one that never was (bench/validate_timing measures it): a miss does
  // the work of a hit. It reads the same two buckets, compares the id in constant time against an
  // entry (a hit's own, a miss's decoy: another session of those buckets), and copies that entry
  // into *out. So on kNone *out holds a decoy the caller must discard unread; on kLive and kExpired
  // it holds the session, as find() gives it. kRotatedAway: the id is marked by remember_rotated()
  // (*out is then unspecified). Never kRotatedAway from find(): a marker is not a session.
  Found find_token(const SessionDigest& id, std::int64_t at, Session* out) const;
  // The live session, copied.
  std::optional<Session> find_live(const SessionDigest& id, std::int64_t at) const;
  // Every cached session of the user, expired ones included, in no particular order. Anonymous
  // sessions belong to no user: of_user("") is empty, and users() does not count them.
  std::vector<Session> of_user(std::string_view user_id) const;
  // A cached session as with_idp_session() names it: its id and its user.
  struct SessionOfUser {
    std::string id;
    std::string user_id;
  };
  // Every cached session with this identity-provider session id, in `tenant` when it is set. A
  // scan of every session: back-channel logouts are rare.
  std::vector<SessionOfUser> with_idp_session(std::string_view idp_session_id,
                                              const std::optional<std::string>& tenant) const;
  // Every cached session of the tenant. A scan of every session: revoking a tenant is rare.
  std::vector<SessionOfUser> in_tenant(std::string_view tenant) const;
  std::size_t size() const noexcept { return size_.load(std::memory_order_relaxed); }
  std::size_t users() const;

  // ---- Writes: one thread at a time.

  // Inserts the session, or replaces the cached one with the same id. `session.id` must be a
  // well-formed id (Error(kInternal) otherwise: callers check it first). Allocates before it
  // changes anything: a throw leaves the cache as it was.
  void put(const Session& session);
  // Removes the session if it is cached. False when it was not.
  bool erase(const SessionDigest& id);
  bool erase(std::string_view id);
  // Removes every session expired at `at`; returns how many.
  std::size_t erase_expired(std::int64_t at);
  // Removes every session whose id `keep` rejects; returns how many. `keep` runs with the cache's
  // locks held and must not call the cache.
  std::size_t erase_unless(const std::function<bool(const SessionDigest&)>& keep);
  // Marks an id as rotated away, for find_token() to report; a marker lives beside the sessions,
  // in the same buckets (so checking for one costs a lookup nothing), but is not a session:
  // find(), erase(), erase_expired(), size() and the user lists do not see it. SessionStore keeps
  // the markers in step with its record of rotated ids. remember_rotated() of a marked id does
  // nothing; forget_rotated() returns whether there was a marker.
  void remember_rotated(const SessionDigest& id);
  bool forget_rotated(const SessionDigest& id);

  // Fills a cache with many sessions, as put() would, but faster, for a start-up load. add()
  // only copies the session into a batch (whose strings keep their buffers from one batch to the
  // next); once a batch of kBatch is full, a second thread builds the entries and inserts them,
  // so reading rows and filling tables overlap (a small load never starts it). Inserts prefetch
  // the table slots and user heads of the sessions a few places ahead, so their memory latencies
  // overlap too. The Loader holds every lock of the cache from construction to destruction:
  // readers on other threads wait for the whole load.
  //
  // Sessions are in the cache once finish() returned. finish() and add() rethrow what building
  // or inserting threw (Error(kInternal) for a malformed id, bad_alloc); a Loader destroyed
  // without finish() stops its thread and may leave any subset of the sessions in the cache.
  class Loader {
   public:
    explicit Loader(SessionCache& cache);
    ~Loader();
    Loader(const Loader&) = delete;
    Loader& operator=(const Loader&) = delete;
    Loader(Loader&&) = delete;
    Loader& operator=(Loader&&) = delete;

    void add(const Session& session);
    void finish() EXCLUDES(queue_mutex_);

   private:
    static constexpr std::size_t kBatch = 1024;
    static constexpr std::size_t kQueuedBatches = 4;  // bounds the memory ahead of the inserts

    struct Batch {
      std::vector<Session> rows;  // the first `size` are this batch's; the rest are spare buffers
      std::size_t size = 0;
    };

    void insert_rows(Batch* batch);
    void hand_off() EXCLUDES(queue_mutex_);
    void inserter_loop() noexcept EXCLUDES(queue_mutex_);
    void stop_inserter() noexcept EXCLUDES(queue_mutex_);

    SessionCache& cache_;
    std::unique_lock<SharedMutex> users_lock_;
    std::array<std::unique_lock<SharedMutex>, kShards> shard_locks_;
    Batch batch_;                   // being filled by add()
    std::vector<Pending> pending_;  // the entries of one batch, on their way in (insert_rows)

    // The hand-over between add() and the inserter.
    Mutex queue_mutex_;
    CondVar queue_filled_{queue_mutex_};
    CondVar queue_drained_{queue_mutex_};
    std::deque<Batch> queue_ GUARDED_BY(queue_mutex_);   // full batches, oldest first
    std::vector<Batch> spare_ GUARDED_BY(queue_mutex_);  // inserted batches, for add() to reuse
    bool closing_ GUARDED_BY(queue_mutex_) = false;
    std::exception_ptr failure_ GUARDED_BY(queue_mutex_);
    std::thread inserter_;  // last: joined before the members above go
  };

 private:
  // One slot of a table: the key's 64-bit hash and the entry it leads to (null: empty).
  struct Slot {
    std::uint64_t hash = 0;
    Entry* entry = nullptr;
  };
  // A hash table of slots (bucketized cuckoo hashing): buckets of kWays slots, one cache line
  // each, and every key lives in one of its two buckets, both chosen by its hash. A lookup reads
  // exactly those two buckets, whether the key is there or not, which is what lets probe() take
  // the same path for a hit and a miss. An insert that finds both buckets full moves entries to
  // their other buckets along the shortest free path (a breadth-first search); an erase only
  // empties a slot. At most 3/4 full.
  //
  // Bit 0 of a hash is a tag the table's user may set: buckets are chosen by the other bits, so a
  // key stored with either tag lives in the same two buckets (SessionCache tags rotated-away
  // markers, see remember_rotated()).
  class SlotTable {
   public:
    static constexpr std::size_t kNone = ~std::size_t{0};
    static constexpr std::size_t kWays = 4;

    // What probe() saw in the two buckets of a hash: the entry stored under exactly that hash,
    // the one stored under it with the tag bit set, and the first entry stored under an untagged
    // hash (the decoy of a miss; see SessionCache::find_token). Each is null when there is none.
    struct Probe {
      const Entry* match = nullptr;
      const Entry* tagged = nullptr;
      const Entry* decoy = nullptr;
    };

    // The index of the slot whose hash is `hash` and whose entry satisfies `matches`, or kNone.
    template <typename Matches>
    std::size_t find(std::uint64_t hash, Matches matches) const noexcept;
    // Reads all 2 * kWays slots of the hash's buckets without a branch on what they hold. `hash`
    // must be untagged (bit 0 clear). Two keys with one 64-bit hash are the caller's to tell
    // apart (match is the first).
    Probe probe(std::uint64_t hash) const noexcept;
    // The first entry under an untagged hash in the buckets after the hash's first one, wrapping
    // around; null when there is none. For the rare probe() that saw no decoy.
    const Entry* untagged_entry_after(std::uint64_t hash) const noexcept;
    // Adds a slot; the key must not be in the table. Grows the table first when it is 3/4 full,
    // or when no path of moves frees a slot in the key's buckets. Strong guarantee: a throw
    // (bad_alloc, only when it grows) leaves the table as it was.
    void insert(std::uint64_t hash, Entry* entry);
    void erase_at(std::size_t index) noexcept;
    void reserve(std::size_t entries);
    // Hints to the processor: the two buckets of `hash`, and the entry under `hash` in them.
    void prefetch(std::uint64_t hash) const noexcept;
    void prefetch_entry(std::uint64_t hash) const noexcept;

    Entry* entry_at(std::size_t index) const noexcept { return slot_at(index).entry; }
    void set_entry_at(std::size_t index, Entry* entry) noexcept { slot_at(index).entry = entry; }
    std::size_t size() const noexcept { return size_; }
    // Calls visit(const Slot&) for every occupied slot. Erasing the visited slot from within is
    // safe: an erase moves no other slot. The analysis does not carry a caller's locks into a
    // callback, so a callback that needs them says so (REQUIRES on the lambda) and this call of it
    // is left unchecked; the caller's own access to the table is checked where it is made.
    template <typename Visit>
    void for_each(Visit visit) const NO_THREAD_SAFETY_ANALYSIS;

   private:
    struct alignas(64) Bucket {
      std::array<Slot, kWays> slots;
    };

    // Breadth-first search for a free slot reachable from the hash's buckets by moving entries
    // to their other buckets; makes the moves and returns the freed slot's index, or kNone
    // (nothing moved) when none is within its search bound.
    std::size_t make_room(std::uint64_t hash) noexcept;
    void rehash(std::size_t buckets);
    std::size_t first_bucket(std::uint64_t hash) const noexcept {
      return (hash >> 1U) & (buckets_.size() - 1);
    }
    std::size_t second_bucket(std::uint64_t hash) const noexcept {
      // Differs from the first whenever there are two buckets or more.
      return (first_bucket(hash) ^ ((hash >> 33U) | 1U)) & (buckets_.size() - 1);
    }
    Slot& slot_at(std::size_t index) noexcept {
      return buckets_[index / kWays].slots[index % kWays];
    }
    const Slot& slot_at(std::size_t index) const noexcept {
      return buckets_[index / kWays].slots[index % kWays];
    }

    std::vector<Bucket> buckets_;  // a power of two in number, or empty
    std::size_t size_ = 0;
  };

  // Cache-line aligned, so that two threads locking two shards do not share a line.
  struct alignas(64) Shard {
    mutable SharedMutex mutex;
    SlotTable entries GUARDED_BY(mutex);  // keyed by the digest; owns its entries
  };

  // The last digest byte picks the shard; the others hash within it.
  static std::size_t shard_index(const SessionDigest& id) noexcept { return id.back() % kShards; }
  // The index of the slot of `table` under `hash` that holds `id`'s entry, or SlotTable::kNone.
  static std::size_t slot_of(const SlotTable& table, std::uint64_t hash,
                             const SessionDigest& id) noexcept;
  // Copies the entry into *out; kLive or kExpired as it is at `at`.
  static Found copy_out(const Entry& entry, std::int64_t at, Session* out);
  // Untagged: bit 0 is clear, and set only in the hash a rotated-away marker is stored under.
  static std::uint64_t hash_of(const SessionDigest& id) noexcept;
  static constexpr std::uint64_t kRotatedTag = 1;
  static std::uint64_t hash_of(std::string_view user_id) noexcept;
  // with_idp_session() and in_tenant(): the sessions whose entry `matches` accepts.
  template <typename Matches>
  std::vector<SessionOfUser> sessions_where(Matches matches) const;

  // The session as an entry, with its hashes; Error(kInternal) for a malformed id.
  static Pending make_pending(const Session& session);
  // Inserts the sessions in order, as insert_locked() does, prefetching ahead, and empties
  // *pending_sessions. The caller (a Loader) holds every lock exclusively, through holders the
  // analysis cannot follow, so this one function is unchecked. Throws only bad_alloc; what was
  // inserted before stays.
  void insert_batch(std::vector<Pending>* pending_sessions) NO_THREAD_SAFETY_ANALYSIS;
  // Inserts the entry, replacing a cached session with its id; returns the replaced one. Throws
  // only bad_alloc, and then changes nothing.
  OwnedEntry insert_locked(Shard& shard, Pending pending) REQUIRES(users_mutex_, shard.mutex);
  // The user list.
  void link_user(Entry* entry, std::uint64_t user_hash) REQUIRES(users_mutex_);
  void unlink_user(Entry* entry) noexcept REQUIRES(users_mutex_);

  std::array<Shard, kShards> shards_;
  mutable SharedMutex users_mutex_;
  // One slot per user, keyed by the hash of the user id, pointing at the first session of the
  // user's list (the sessions are linked through their entries).
  SlotTable user_heads_ GUARDED_BY(users_mutex_);
  std::atomic<std::size_t> size_{0};
};

}  // namespace pylon::detail

#endif  // PYLON_INTERNAL_SESSION_CACHE_HPP_

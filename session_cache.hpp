// pylon-sessions: SessionCache, the in-memory table of sessions behind SessionStore. Private: not
// installed, not part of the API.
//
// What it promises:
//   - Reads (find, of_user, with_idp_session, size) run concurrently with each other and with
//     reads on other threads. A find takes the shared lock of one of 16 shards, chosen by the
//     session's digest, so validate() on several threads does not meet on one lock.
//   - Compact: a session costs its field bytes plus about 130 bytes (its map node, its field
//     buffer, its share of the bucket arrays and of the user index); bench/pylon_bench measures
//     it. Ids are kept as their 32 digest bytes, not 64 hex characters.
//   - Writes (put, erase, erase_expired) come from one thread at a time: SessionStore calls them
//     under its write_mutex_. A write holds the user index's lock and one shard's lock, both
//     exclusively, so a reader sees a session either wholly before or wholly after it.
#ifndef PYLON_SESSION_CACHE_HPP_
#define PYLON_SESSION_CACHE_HPP_

#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "session_backend.hpp"
#include "session_backend_internal.hpp"

namespace pylon::detail {

class SessionCache {
 public:
  enum class Found { kNone, kLive, kExpired };

  SessionCache() = default;
  ~SessionCache() = default;
  SessionCache(const SessionCache&) = delete;
  SessionCache& operator=(const SessionCache&) = delete;
  SessionCache(SessionCache&&) = delete;
  SessionCache& operator=(SessionCache&&) = delete;

  // ---- Reads: any thread, any time.

  // Whether the session is cached and live at `at`; when it is cached, live or not, *out gets a
  // copy of it.
  Found find(const SessionDigest& id, std::int64_t at, Session* out) const;
  // The live session, copied.
  std::optional<Session> find_live(const SessionDigest& id, std::int64_t at) const;
  // Every cached session of the user, expired ones included, in no particular order.
  std::vector<Session> of_user(std::string_view user_id) const;
  // (id, user_id) of every cached session with this identity-provider session id, in `tenant`
  // when it is set. A scan of every session: back-channel logouts are rare.
  std::vector<std::pair<std::string, std::string>> with_idp_session(
      std::string_view idp_session_id, const std::optional<std::string>& tenant) const;
  std::size_t size() const noexcept { return size_.load(std::memory_order_relaxed); }
  std::size_t users() const;

  // ---- Writes: one thread at a time.

  // Inserts the session, or replaces the cached one with the same id. `session.id` must be a
  // well-formed id (Error(kInternal) otherwise: callers check it first).
  void put(const Session& session);
  // Removes the session if it is cached. False when it was not.
  bool erase(const SessionDigest& id);
  bool erase(std::string_view id);
  // Removes every session expired at `at`; returns how many.
  std::size_t erase_expired(std::int64_t at);
  // Sizes the tables for `sessions` more, so a start-up load does not rehash as it grows.
  void reserve(std::size_t sessions);

 private:
  // One cached session. The text fields and data live in one buffer, one after the other, in the
  // order of Field; optional ones only when set.
  struct Entry {
    enum Field : std::size_t { kUserId, kTenantId, kDevice, kIp, kData, kIdpSessionId, kFields };
    const SessionDigest* id = nullptr;  // the key of the map node that holds this entry
    // The user's sessions form a list through their entries; user_heads_ points at its head.
    Entry* user_previous = nullptr;
    Entry* user_next = nullptr;
    std::unique_ptr<char[]> bytes;  // NOLINT(*-avoid-c-arrays): one buffer, sized at run time
    std::int64_t created_at = 0;
    std::int64_t expires_at = 0;
    std::int64_t last_seen_at = 0;
    std::int64_t absolute_expires_at = 0;
    std::array<std::uint32_t, kFields> sizes{};
    std::uint8_t present = 0;  // bit f: optional field f is set

    std::string_view field(Field which) const noexcept;
    std::optional<std::string> optional_field(Field which) const;
    void assign(const Session& session);  // every field but the id and the user links
    Session to_session() const;
  };

  // The digest is uniformly random already: its first bytes are the hash.
  struct DigestHash {
    std::size_t operator()(const SessionDigest& digest) const noexcept {
      std::size_t hash = 0;
      std::memcpy(&hash, digest.data(), sizeof hash);
      return hash;
    }
  };

  // Cache-line aligned, so that two threads locking two shards do not share a line.
  struct alignas(64) Shard {
    mutable std::shared_mutex mutex;
    std::unordered_map<SessionDigest, Entry, DigestHash> entries;
  };
  static constexpr std::size_t kShards = 16;

  // The last digest byte picks the shard; the first eight hash within it.
  Shard& shard_of(const SessionDigest& id) noexcept { return shards_[id.back() % kShards]; }
  const Shard& shard_of(const SessionDigest& id) const noexcept {
    return shards_[id.back() % kShards];
  }

  // The user list, under users_mutex_ held exclusively.
  void link_user(Entry* entry);
  void unlink_user(Entry* entry);
  // Erases an entry of `shard`; the caller holds users_mutex_ and the shard's mutex exclusively.
  void erase_locked(Shard& shard,
                    std::unordered_map<SessionDigest, Entry, DigestHash>::iterator found);

  std::array<Shard, kShards> shards_;
  mutable std::shared_mutex users_mutex_;
  // The head of each user's list, keyed by a view of the head entry's user_id bytes (re-keyed
  // when the head goes).
  std::unordered_map<std::string_view, Entry*> user_heads_;  // guarded by users_mutex_
  std::atomic<std::size_t> size_{0};
};

}  // namespace pylon::detail

#endif  // PYLON_SESSION_CACHE_HPP_

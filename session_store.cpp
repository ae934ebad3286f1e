// pylon-sessions: SessionStore, the write-through cache in front of a SessionBackend.
//
// Split out of session_backend.cpp when the store grew rotation, tenants, back-channel logout,
// the reaper, events and stats: the backend file stays about storage, this one about sessions.
//
// Invariants (hold whenever no mutex is held):
//   - cache_ holds exactly the rows of this store's tenant scope that storage holds and this
//     process knows of, minus the sessions matching pending_deletes_: those are denied here
//     already, but storage has not yet acknowledged their delete. Each write takes from storage
//     what it changed (the row an update returns, the ids a delete returns), never from a copy
//     read earlier, so a write racing another process's, or another thread's, cannot leave the
//     cache claiming what storage does not hold.
//   - in_doubt_ holds the ids of writes whose acknowledgement was lost (kConnectionLost: applied
//     or not, only the server knows). They are out of the cache until the next write reads them
//     back from storage (settle_in_doubt()): the cache never guesses.
//   - rotated_ids_ remembers the ids rotated away that storage holds (by this process, or read at
//     start-up), until they would have expired, so a replayed old token is reported; it makes a
//     token valid only as its successor, within rotation_grace.
// Locking: write_mutex_ serialises every storage write and the cache update that follows it, so
// the cache changes in the order storage did. The cache locks itself (sharded; see
// session_cache.hpp) only for map operations, never across a storage call, so reads never wait
// for the disk. Creates queue under create_queue_mutex_ without holding write_mutex_, so that
// they gather while a commit is in flight (group commit, see create()). Lock order:
// create_queue_mutex_ is never held with another; write_mutex_, then RotatedIds' lock, then the
// cache's locks, then last_error_mutex_. Events are delivered after every lock is released.
#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <iterator>
#include <limits>
#include <mutex>
#include <new>
#include <shared_mutex>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "session_backend.hpp"
#include "session_backend_internal.hpp"
#include "session_cache.hpp"

namespace pylon {

namespace {

using detail::saturating_add;
using detail::saturating_sub;

// Every option has a documented range (session_backend.hpp, StoreOptions); a value outside it is
// refused here, so no arithmetic on it can overflow later (a reaper_interval of 300 years would
// overflow the wait's conversion to nanoseconds).
void check_range(const char* option, std::int64_t value, std::int64_t low, std::int64_t high,
                 const char* unit) {
  if (value < low || value > high) {
    throw Error(ErrorCode::kInvalidArgument, std::string("StoreOptions::") + option + " is " +
                                                 std::to_string(value) + " " + unit +
                                                 ", outside its range of " + std::to_string(low) +
                                                 " to " + std::to_string(high) + " " + unit);
  }
}

void check_store_options(const StoreOptions& options) {
  constexpr std::int64_t kDay = 86400;
  constexpr std::int64_t kHundredYears = 36525 * kDay;
  check_range("absolute_ttl", options.absolute_ttl.count(), 1, kHundredYears, "seconds");
  check_range("idle_timeout", options.idle_timeout.count(), 0, kHundredYears, "seconds");
  check_range("touch_interval", options.touch_interval.count(), 0, kHundredYears, "seconds");
  check_range("reaper_interval", options.reaper_interval.count(), 0, 365 * kDay, "seconds");
  check_range("rotation_grace", options.rotation_grace.count(), 0, kDay, "seconds");
  const auto count = [](std::size_t value) {
    return static_cast<std::int64_t>(
        std::min<std::size_t>(value, std::numeric_limits<std::int64_t>::max()));
  };
  check_range("max_sessions_per_user", count(options.max_sessions_per_user), 0, kMaxSessionsPerUser,
              "sessions");
  check_range("max_data_bytes", count(options.max_data_bytes), 0, kMaxDataBytes, "bytes");
  if (options.reaper_interval.count() > 0) {
    check_range("reaper_batch_size", count(options.reaper_batch_size), 1, kMaxReaperBatchSize,
                "rows");
  }
  if (!options.clock) {
    throw Error(ErrorCode::kInvalidArgument, "StoreOptions::clock must be set");
  }
  detail::check_optional_text_field(detail::kTenantIdField, options.tenant_id);
}

bool is_live(const Session& session, std::int64_t at) { return session.expires_at > at; }

// A counter that threads bump without meeting on one cache line: validate() counts every hit,
// and one shared atomic would make two threads validating in parallel slower than one.
class StripedCounter {
 public:
  void add() noexcept {
    stripes_[stripe_of_this_thread()].value.fetch_add(1, std::memory_order_relaxed);
  }
  std::uint64_t total() const noexcept {
    std::uint64_t sum = 0;
    for (const Stripe& stripe : stripes_) sum += stripe.value.load(std::memory_order_relaxed);
    return sum;
  }

 private:
  static constexpr std::size_t kStripes = 16;
  struct alignas(64) Stripe {
    std::atomic<std::uint64_t> value{0};
  };
  static std::size_t stripe_of_this_thread() noexcept {
    static std::atomic<std::size_t> next_stripe{0};
    thread_local const std::size_t kThisThreadsStripe =
        next_stripe.fetch_add(1, std::memory_order_relaxed) % kStripes;
    return kThisThreadsStripe;
  }
  std::array<Stripe, kStripes> stripes_;
};

// The ids rotated away that storage holds (SessionBackend::rotate), for validate() to recognise a
// replayed old token. Each id is kept twice, and this class keeps the two in step: as a marker
// in the cache, which validate()'s lookup reads anyway (an unknown token costs no second lookup),
// and here with what a reuse event or the grace window needs. Its own lock; callers may hold the
// store's write_mutex_ (taken before this one), never the cache's locks.
class RotatedIds {
 public:
  explicit RotatedIds(detail::SessionCache& cache) : cache_(cache) {}

  // Remembers a rotated id (a well-formed one; others are ignored). Best effort: on bad_alloc
  // the id goes unrecorded (in storage it is recorded, and a restart reads it back), since
  // rotate() has succeeded by then and its caller must get the new token.
  void remember(RotatedId rotated) noexcept {
    detail::SessionDigest digest{};
    if (!detail::parse_session_id(rotated.id, &digest)) return;
    try {
      const std::lock_guard<std::mutex> lock(mutex_);
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
  std::optional<RotatedId> find(const std::string& id) const {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto found = by_id_.find(id);
    if (found == by_id_.end()) return std::nullopt;
    return found->second;
  }

  // The last session of a chain of rotations that starts at `rotated` (A -> B, then B -> C: C),
  // as far as this process knows; a chain longer than a session could plausibly be rotated
  // within one grace window ends early.
  std::string last_successor(const RotatedId& rotated) const {
    const std::lock_guard<std::mutex> lock(mutex_);
    std::string successor = rotated.replaced_by;
    for (int hops = 0; hops < kMaxChain; ++hops) {
      const auto next = by_id_.find(successor);
      if (next == by_id_.end()) break;
      successor = next->second.replaced_by;
    }
    return successor;
  }

  // Forgets every id whose session would have expired by `at`.
  void forget_expired(std::int64_t at) noexcept {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = by_id_.begin(); it != by_id_.end();) {
      if (it->second.expires_at > at) {
        ++it;
        continue;
      }
      detail::SessionDigest digest{};
      if (detail::parse_session_id(it->first, &digest)) cache_.forget_rotated(digest);
      it = by_id_.erase(it);
    }
  }

 private:
  static constexpr int kMaxChain = 64;
  detail::SessionCache& cache_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, RotatedId> by_id_;  // guarded by mutex_
};

// Whether `session` is one of the rows `filter` matches (SessionBackend::remove_matching).
bool matches(const SessionFilter& filter, const Session& session) {
  return (!filter.id || session.id == *filter.id) &&
         (!filter.user_id || session.user_id == *filter.user_id) &&
         (!filter.tenant_id || session.tenant_id == filter.tenant_id) &&
         (!filter.idp_session_id || session.idp_session_id == filter.idp_session_id) &&
         (!filter.except_id || session.id != *filter.except_id);
}

}  // namespace

std::int64_t system_clock_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

class SessionStore::Impl {
 public:
  Impl(std::unique_ptr<SessionBackend> backend, StoreOptions options);
  ~Impl();
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  Impl(Impl&&) = delete;
  Impl& operator=(Impl&&) = delete;

  NewSession create(std::string_view user_id, CreateOptions options);
  std::optional<Session> validate(std::string_view token);
  std::optional<Session> find(std::string_view id);
  bool revoke_id(std::string_view id);
  std::size_t revoke_user(std::string_view user_id, const std::optional<std::string>& tenant);
  std::size_t revoke_others(std::string_view token);
  std::size_t logout_by_claims(std::optional<std::string_view> sid,
                               std::optional<std::string_view> sub,
                               const std::optional<std::string>& tenant);
  std::optional<NewSession> rotate(std::string_view token);
  std::optional<Session> update_data(std::string_view token, std::string data);
  std::vector<Session> list_user(std::string_view user_id,
                                 const std::optional<std::string>& tenant);
  std::size_t purge_expired();
  std::size_t size();
  StoreStats stats();

 private:
  std::int64_t now() const { return options_.clock(); }
  bool in_scope(const Session& session) const {
    return !options_.tenant_id || session.tenant_id == options_.tenant_id;
  }
  void emit(const SessionEvent& event) const noexcept;

  // Every storage write goes through here: counts it, records a failure, rethrows.
  template <typename Call>
  auto write(Call&& call) -> decltype(call());

  // The live cached session of `id` (a well-formed id), copied.
  std::optional<Session> live_copy(const std::string& id, std::int64_t at) const;
  // The ids of the cached sessions `filter` matches.
  std::vector<std::string> cached_ids_matching(const SessionFilter& filter) const;
  // Whether a delete still pending (pending_deletes_) covers this session. Caller holds
  // write_mutex_.
  bool pending_delete_covers(const Session& session) const;
  // Cache removals; the caller holds write_mutex_.
  void cache_erase(const std::vector<std::string>& ids);
  // Makes the cache hold `stored`, a row as storage returned it after a write to `id`: cached
  // when it is live, storable and in scope, dropped otherwise. Returns it when it was cached.
  // Caller holds write_mutex_.
  std::optional<Session> cache_stored(const std::string& id, std::optional<Session> stored,
                                      std::int64_t at);

  // Retries deletes left by failed revokes; throws (leaving the rest pending) if storage still
  // refuses. Caller holds write_mutex_. Called before every write.
  void flush_pending_deletes();
  // The ids of a write that failed in doubt leave the cache and join in_doubt_; any other
  // failure is a known outcome (nothing applied) and changes nothing. Rethrows. Caller holds
  // write_mutex_.
  template <typename Call>
  auto write_in_doubt(const std::vector<std::string>& ids, Call&& call) -> decltype(call());
  // Reads each id in in_doubt_ back from storage and makes the cache agree. Throws, leaving the
  // rest in doubt, if storage cannot answer. Caller holds write_mutex_.
  void settle_in_doubt();
  // Deletes what `filter` matches, in one statement, and removes from the cache exactly the
  // rows storage deleted. Fails closed: if storage refuses, the cached sessions the filter
  // matches are denied here at once, and the same filter (not a list of ids: other processes'
  // sessions must go too) is retried before the next write until storage has it.
  std::vector<RemovedSession> revoke_matching(const SessionFilter& filter);
  // The idle slide of a live cached session, written when touch_interval has passed.
  std::optional<Session> touch(const std::string& id, std::int64_t at);
  // The session an old token stands for within rotation_grace: its chain's last successor,
  // slid as validate() slides any session; nullopt if that is gone.
  std::optional<Session> successor_in_grace(const RotatedId& rotated, std::int64_t at);

  // Group commit (see create()). A queued create: the leader that commits it fills in
  // `committed`, `error` and `evictions` (the sessions of its user that its insert evicted),
  // then sets `done` under create_queue_mutex_.
  struct QueuedCreate {
    Session session;
    bool committed = false;
    std::exception_ptr error;
    std::vector<SessionEvent> evictions;
    bool done = false;  // guarded by create_queue_mutex_
    // Woken when `done` is set, or when the leader role is free and this item heads the queue:
    // one waiter per event, never the whole queue (on two cores, a thundering herd of waiters
    // costs the leader its core).
    std::condition_variable wake;
  };
  // Writes the batch to storage and the cache; records each item's outcome, never throws.
  // Caller holds write_mutex_.
  void commit_creates(const std::vector<QueuedCreate*>& batch);

  void reaper_loop();
  std::size_t purge_in_batches();

  // The cache-line aligned members first: less padding.
  detail::SessionCache cache_;  // written under write_mutex_ only
  StripedCounter cache_hits_;
  StripedCounter cache_misses_;

  std::unique_ptr<SessionBackend> backend_;
  StoreOptions options_;

  std::mutex write_mutex_;
  std::vector<SessionFilter> pending_deletes_;  // guarded by write_mutex_
  std::unordered_set<std::string> in_doubt_;    // guarded by write_mutex_

  std::mutex create_queue_mutex_;
  std::vector<QueuedCreate*> create_queue_;  // guarded by create_queue_mutex_

  RotatedIds rotated_ids_{cache_};

  std::size_t skipped_rows_ = 0;  // set by the constructor only
  std::atomic<std::uint64_t> writes_{0};
  std::atomic<std::uint64_t> write_failures_{0};
  std::atomic<std::uint64_t> reaper_failures_{0};
  std::mutex last_error_mutex_;
  std::string last_error_;  // guarded by last_error_mutex_

  std::mutex reaper_mutex_;
  std::condition_variable reaper_wake_;
  // Group commit's gathering (see create()), guarded by create_queue_mutex_: how many callers the
  // last commit released that have not queued a create since, the leader waiting for them, and
  // how long the last commit took (capped at 10 ms).
  std::size_t creates_rejoining_ = 0;
  QueuedCreate* gathering_leader_ = nullptr;
  std::chrono::steady_clock::duration last_commit_time_{};

  // The one-byte members together, before the thread: less padding.
  bool create_leader_active_ = false;  // guarded by create_queue_mutex_
  bool reaper_stopping_ = false;       // guarded by reaper_mutex_
  std::atomic<bool> stopping_{false};
  std::thread reaper_;  // last member: started once everything above exists
};

SessionStore::Impl::Impl(std::unique_ptr<SessionBackend> backend, StoreOptions options)
    : backend_(std::move(backend)), options_(std::move(options)) {
  if (!backend_) throw Error(ErrorCode::kInvalidArgument, "SessionStore needs a backend");
  check_store_options(options_);
  const std::int64_t at = now();
  {
    detail::SessionCache::Loader loader(cache_);
    backend_->load_each([this, &loader](const Session& row) {
      // A row that no token can match, or that holds what no write would store (a damaged or
      // hand-edited file), is never handed out: counted, left where it is.
      if (!detail::is_servable_session(row)) {
        ++skipped_rows_;
      } else if (in_scope(row)) {
        loader.add(row);
      }
    });
    loader.finish();
  }
  // Gathered first and remembered once the backend has returned: remember() takes cache locks,
  // which are never taken under the backend's own lock (the Loader above holds the cache's
  // locks across load_each(), so the two orders would meet).
  std::vector<RotatedId> rotated_ids;
  backend_->load_rotated_each([this, at, &rotated_ids](const RotatedId& rotated) {
    if (rotated.expires_at > at &&
        (!options_.tenant_id || rotated.tenant_id == options_.tenant_id)) {
      rotated_ids.push_back(rotated);
    }
  });
  for (RotatedId& rotated : rotated_ids) rotated_ids_.remember(std::move(rotated));
  for (const SessionEvent& event : backend_->opening_events()) emit(event);
  if (options_.reaper_interval.count() > 0) reaper_ = std::thread([this] { reaper_loop(); });
}

SessionStore::Impl::~Impl() {
  if (reaper_.joinable()) {
    {
      const std::lock_guard<std::mutex> lock(reaper_mutex_);
      reaper_stopping_ = true;
    }
    stopping_ = true;  // also ends a purge between two batches
    reaper_wake_.notify_all();
    reaper_.join();
  }
  // Last attempt for deletes that failed earlier. A destructor must not throw: what still fails
  // stays in storage, as the Error thrown by the original revoke reported.
  const std::lock_guard<std::mutex> lock(write_mutex_);
  for (const SessionFilter& filter : pending_deletes_) {
    try {
      backend_->remove_matching(filter);
    } catch (...) {  // NOLINT(bugprone-empty-catch): reported when the revoke failed
    }
  }
}

void SessionStore::Impl::emit(const SessionEvent& event) const noexcept {
  if (!options_.on_event) return;
  try {
    options_.on_event(event);
  } catch (...) {  // NOLINT(bugprone-empty-catch): documented: a listener cannot fail a call
  }
}

template <typename Call>
auto SessionStore::Impl::write(Call&& call) -> decltype(call()) {
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
    ++write_failures_;
    const std::lock_guard<std::mutex> lock(last_error_mutex_);
    last_error_ = error.what();
    throw;
  }
}

std::optional<Session> SessionStore::Impl::live_copy(const std::string& id, std::int64_t at) const {
  detail::SessionDigest digest{};
  if (!detail::parse_session_id(id, &digest)) return std::nullopt;
  return cache_.find_live(digest, at);
}

std::vector<std::string> SessionStore::Impl::cached_ids_matching(
    const SessionFilter& filter) const {
  std::vector<std::string> ids;
  if (filter.id) {
    detail::SessionDigest digest{};
    Session cached;
    if (detail::parse_session_id(*filter.id, &digest) &&
        cache_.find(digest, 0, &cached) != detail::SessionCache::Found::kNone &&
        matches(filter, cached)) {
      ids.push_back(std::move(cached.id));
    }
  } else if (filter.user_id) {
    for (Session& session : cache_.of_user(*filter.user_id)) {
      if (matches(filter, session)) ids.push_back(std::move(session.id));
    }
  } else if (filter.idp_session_id) {
    for (auto& [id, user] : cache_.with_idp_session(*filter.idp_session_id, filter.tenant_id)) {
      if (!filter.except_id || id != *filter.except_id) ids.push_back(std::move(id));
    }
  }
  return ids;
}

bool SessionStore::Impl::pending_delete_covers(const Session& session) const {
  return std::any_of(pending_deletes_.begin(), pending_deletes_.end(),
                     [&session](const SessionFilter& filter) { return matches(filter, session); });
}

void SessionStore::Impl::cache_erase(const std::vector<std::string>& ids) {
  for (const std::string& id : ids) cache_.erase(std::string_view(id));
}

std::optional<Session> SessionStore::Impl::cache_stored(const std::string& id,
                                                        std::optional<Session> stored,
                                                        std::int64_t at) {
  if (stored && stored->id == id && is_live(*stored, at) && detail::is_servable_session(*stored) &&
      in_scope(*stored)) {
    cache_.put(*stored);
    return stored;
  }
  cache_.erase(std::string_view(id));
  return std::nullopt;
}

void SessionStore::Impl::flush_pending_deletes() {
  while (!pending_deletes_.empty()) {
    // Throws: this filter and the rest stay pending.
    const std::vector<RemovedSession> removed =
        write([&] { return backend_->remove_matching(pending_deletes_.front()); });
    for (const RemovedSession& row : removed) cache_.erase(std::string_view(row.id));
    pending_deletes_.erase(pending_deletes_.begin());
  }
  settle_in_doubt();
}

template <typename Call>
auto SessionStore::Impl::write_in_doubt(const std::vector<std::string>& ids, Call&& call)
    -> decltype(call()) {
  try {
    return write(std::forward<Call>(call));
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

void SessionStore::Impl::settle_in_doubt() {
  for (auto it = in_doubt_.begin(); it != in_doubt_.end();) {
    const std::optional<Session> stored = write([&] { return backend_->load_one(*it); });
    if (stored && !pending_delete_covers(*stored) && detail::is_servable_session(*stored) &&
        in_scope(*stored)) {
      cache_.put(*stored);
    } else {
      cache_.erase(std::string_view(*it));
    }
    it = in_doubt_.erase(it);
  }
}

std::vector<RemovedSession> SessionStore::Impl::revoke_matching(const SessionFilter& filter) {
  std::vector<RemovedSession> removed;
  {
    const std::lock_guard<std::mutex> lock(write_mutex_);
    try {
      flush_pending_deletes();
      removed = write([&] { return backend_->remove_matching(filter); });
    } catch (...) {
      // Fail closed: denied in this process now, deleted from storage before the next write.
      cache_erase(cached_ids_matching(filter));
      pending_deletes_.push_back(filter);
      throw;
    }
    for (const RemovedSession& row : removed) cache_.erase(std::string_view(row.id));
  }
  for (const RemovedSession& row : removed) {
    emit(SessionEvent::of_session(SessionEventType::kRevoked, row.id, row.user_id));
  }
  return removed;
}

NewSession SessionStore::Impl::create(std::string_view user_id, CreateOptions options) {
  if (user_id.empty()) throw Error(ErrorCode::kInvalidArgument, "user_id must not be empty");
  detail::check_text_field(detail::kUserIdField, user_id);
  detail::check_optional_text_field(detail::kTenantIdField, options.tenant_id);
  detail::check_optional_text_field(detail::kDeviceField, options.device);
  detail::check_optional_text_field(detail::kIpField, options.ip);
  detail::check_optional_text_field(detail::kIdpSessionIdField, options.idp_session_id);
  if (options_.tenant_id) {
    if (options.tenant_id && options.tenant_id != options_.tenant_id) {
      throw Error(ErrorCode::kInvalidArgument,
                  "this store is scoped to one tenant and cannot create a session of another");
    }
    options.tenant_id = options_.tenant_id;
  }
  if (options.data.size() > options_.max_data_bytes) {
    throw Error(ErrorCode::kInvalidArgument,
                "session data is " + std::to_string(options.data.size()) +
                    " bytes, over the limit of " + std::to_string(options_.max_data_bytes) +
                    " (StoreOptions::max_data_bytes); nothing was stored");
  }

  NewSession created;
  created.token = generate_token();
  Session& session = created.session;
  session.id = session_id_for_token(created.token);
  session.user_id = std::string(user_id);
  session.tenant_id = std::move(options.tenant_id);
  session.device = std::move(options.device);
  session.ip = std::move(options.ip);
  session.data = std::move(options.data);
  session.idp_session_id = std::move(options.idp_session_id);

  // The clock is read before queueing: a create stamped a little before its group commit is
  // still a create made at that time.
  const std::int64_t at = now();
  session.created_at = at;
  session.last_seen_at = at;
  session.absolute_expires_at = saturating_add(at, options_.absolute_ttl.count());
  session.expires_at =
      options_.idle_timeout.count() > 0
          ? std::min(session.absolute_expires_at, saturating_add(at, options_.idle_timeout.count()))
          : session.absolute_expires_at;

  // Group commit. The create joins the queue; if no leader is committing, this thread becomes
  // the leader and commits everything queued in one save_batch() (one transaction, one fsync)
  // while the creates that arrive meanwhile queue up for the next one. Followers sleep until
  // their own item is done, or until the leader role is free and theirs heads the queue. Each
  // caller returns only after its own row is durable, and a failed batch fails every caller in
  // it.
  QueuedCreate queued{std::move(created.session), false, nullptr, {}, false, {}};
  {
    std::unique_lock<std::mutex> queue(create_queue_mutex_);
    create_queue_.push_back(&queued);
    if (creates_rejoining_ > 0 && --creates_rejoining_ == 0 && gathering_leader_ != nullptr) {
      gathering_leader_->wake.notify_one();
    }
    while (!queued.done) {
      if (create_leader_active_) {
        queued.wake.wait(queue);
        continue;
      }
      create_leader_active_ = true;
      // The callers the last commit released usually come straight back with their next create,
      // while the creates queued during that commit are already here. Waiting a moment for the
      // former, at most half as long as that commit took, lets one commit carry both groups
      // instead of alternating between two half-full ones. A caller that does not come back
      // costs the others that half commit once.
      if (creates_rejoining_ > 0) {
        gathering_leader_ = &queued;
        queued.wake.wait_for(queue, last_commit_time_ / 2,
                             [this] { return creates_rejoining_ == 0; });
        gathering_leader_ = nullptr;
      }
      std::vector<QueuedCreate*> batch;
      batch.swap(create_queue_);
      queue.unlock();
      const auto commit_started = std::chrono::steady_clock::now();
      {
        const std::lock_guard<std::mutex> lock(write_mutex_);
        commit_creates(batch);
      }
      const auto commit_time = std::chrono::steady_clock::now() - commit_started;
      queue.lock();
      last_commit_time_ =
          std::min<std::chrono::steady_clock::duration>(commit_time, std::chrono::milliseconds(10));
      creates_rejoining_ = batch.size();
      // Notified under the lock: a follower's item (and its condition variable) lives on its
      // stack until it has seen `done`, which it cannot before this thread lets the lock go.
      for (QueuedCreate* item : batch) {
        item->done = true;
        if (item != &queued) item->wake.notify_one();
      }
      create_leader_active_ = false;
      if (!create_queue_.empty()) create_queue_.front()->wake.notify_one();  // the next leader
    }
  }
  created.session = std::move(queued.session);
  for (const SessionEvent& event : queued.evictions) emit(event);
  if (queued.error) std::rethrow_exception(queued.error);
  emit(SessionEvent::of_session(SessionEventType::kCreated, created.session.id,
                                created.session.user_id));
  return created;
}

namespace {

// A copy of the exception being handled, for one caller of a failed batch. Every caller gets its
// own object: rethrowing one exception_ptr on several threads hands them one shared object, which
// the last of them frees (a race as ThreadSanitizer sees it, and a surprise to a caller that keeps
// or changes what it caught). Call only inside a catch block.
std::exception_ptr own_copy_of_current_exception() noexcept {
  try {
    throw;
  } catch (const Error& error) {
    return std::make_exception_ptr(error);
  } catch (const std::bad_alloc&) {
    return std::make_exception_ptr(std::bad_alloc());
  } catch (const std::exception& error) {
    return std::make_exception_ptr(Error(ErrorCode::kInternal, error.what()));
  } catch (...) {
    return std::make_exception_ptr(Error(ErrorCode::kInternal, "a save failed"));
  }
}

}  // namespace

// One transaction for the whole batch: the creates, and with a cap the evictions they cause
// (SessionBackend::insert_new counts, evicts and inserts atomically, for every process). The
// cache then follows what storage did: the new sessions in, the evicted ones out, including a
// new one evicted by a later create of the same user in the same batch (as if they had run one
// after the other).
void SessionStore::Impl::commit_creates(const std::vector<QueuedCreate*>& batch) {
  const std::size_t cap = options_.max_sessions_per_user;
  try {
    flush_pending_deletes();
    std::vector<Session> rows;
    std::vector<std::string> ids;
    rows.reserve(batch.size());
    ids.reserve(batch.size());
    for (const QueuedCreate* item : batch) {
      rows.push_back(item->session);
      ids.push_back(item->session.id);
    }
    if (cap > 0) {
      // A batch in doubt may have evicted any of its users' sessions: those are in doubt too.
      for (const QueuedCreate* item : batch) {
        SessionFilter same_owner;
        same_owner.user_id = item->session.user_id;
        for (std::string& id : cached_ids_matching(same_owner)) ids.push_back(std::move(id));
      }
    }
    const std::vector<RemovedSession> evicted =
        write_in_doubt(ids, [&] { return backend_->insert_new(rows, cap); });
    std::unordered_set<std::string_view> evicted_ids;
    for (const RemovedSession& row : evicted) {
      evicted_ids.insert(row.id);
      cache_.erase(std::string_view(row.id));
    }
    for (QueuedCreate* item : batch) {
      // put() throws only bad_alloc: the row is stored, not cached.
      if (evicted_ids.count(item->session.id) == 0) cache_.put(item->session);
      item->committed = true;
    }
    // Each eviction is reported by the last create of its user in the batch: the one that, in
    // the order the batch stands for, pushed the user over the cap.
    for (const RemovedSession& row : evicted) {
      const auto by_user = std::find_if(
          batch.rbegin(), batch.rend(),
          [&row](const QueuedCreate* item) { return item->session.user_id == row.user_id; });
      if (by_user != batch.rend()) {
        (*by_user)->evictions.push_back(
            SessionEvent::of_session(SessionEventType::kRevoked, row.id, row.user_id));
      }
    }
  } catch (...) {
    // Every create not yet committed fails with this error; none of them is in the cache.
    for (QueuedCreate* item : batch) {
      if (!item->committed && !item->error) item->error = own_copy_of_current_exception();
    }
  }
}

// The slide of the idle expiry, written at most once per touch_interval. Re-reads the session
// under write_mutex_: it may have been revoked or touched by another thread meanwhile. Storage
// moves only last_seen_at and expires_at, never back (SessionBackend::touch), and returns the
// row it holds, which the cache then takes: data another store updated comes along.
std::optional<Session> SessionStore::Impl::touch(const std::string& id, std::int64_t at) {
  const std::lock_guard<std::mutex> lock(write_mutex_);
  std::optional<Session> current = live_copy(id, at);
  if (!current) return std::nullopt;
  if (saturating_sub(at, current->last_seen_at) < options_.touch_interval.count()) return current;
  const std::int64_t cap =
      current->absolute_expires_at > 0 ? current->absolute_expires_at : current->expires_at;
  const std::int64_t slid_expiry =
      options_.idle_timeout.count() > 0
          ? std::min(cap, saturating_add(at, options_.idle_timeout.count()))
          : current->expires_at;
  flush_pending_deletes();
  std::optional<Session> stored =
      write_in_doubt({id}, [&] { return backend_->touch(id, at, slid_expiry); });
  return cache_stored(id, std::move(stored), at);
}

std::optional<Session> SessionStore::Impl::successor_in_grace(const RotatedId& rotated,
                                                              std::int64_t at) {
  const std::string successor = rotated_ids_.last_successor(rotated);
  std::optional<Session> session = live_copy(successor, at);
  if (!session || saturating_sub(at, session->last_seen_at) < options_.touch_interval.count())
    return session;
  return touch(successor, at);
}

// A known token and an unknown one take no measurably different time (issue 6; measured by
// bench/validate_timing): find_token() does a hit's work for a miss too, copying a decoy session
// into `result`, and both paths then free a whole Session, the miss here, the hit in the caller.
// Every path returns `result` itself, so it is built in the caller's place and never moved.
std::optional<Session> SessionStore::Impl::validate(std::string_view token) {
  std::optional<Session> result;
  if (!is_well_formed_token(token)) {
    cache_misses_.add();
    return result;
  }
  const detail::SessionDigest digest = detail::digest_of_token(token);
  const std::int64_t at = now();
  Session& session = result.emplace();
  std::optional<SessionEvent> event;
  switch (cache_.find_token(digest, at, &session)) {
    case detail::SessionCache::Found::kLive: {
      cache_hits_.add();
      // The common case: touched recently, so this read is a hash, a lookup and a clock check.
      if (saturating_sub(at, session.last_seen_at) < options_.touch_interval.count()) return result;
      const std::string id = session.id;
      result = touch(id, at);
      if (!result) cache_misses_.add();  // revoked or expired meanwhile
      return result;
    }
    case detail::SessionCache::Found::kNone:
      // Unknown (and `session` a decoy): a token is handed out only once its session is cached,
      // so there is nothing to re-check under write_mutex_, and an unknown token never waits
      // behind a commit.
      cache_misses_.add();
      result.reset();
      return result;
    case detail::SessionCache::Found::kExpired:
      event = SessionEvent::of_session(SessionEventType::kValidatedExpired, session.id,
                                       session.user_id);
      break;
    case detail::SessionCache::Found::kRotatedAway: {
      // Not found: forgotten since the cache's marker was read.
      if (std::optional<RotatedId> rotated = rotated_ids_.find(detail::session_id_of(digest))) {
        if (saturating_sub(at, rotated->rotated_at) < options_.rotation_grace.count()) {
          result = successor_in_grace(*rotated, at);
          (result ? cache_hits_ : cache_misses_).add();
          return result;
        }
        event = SessionEvent::of_session(SessionEventType::kRotatedTokenReused,
                                         std::move(rotated->id), std::move(rotated->user_id),
                                         rotated_ids_.last_successor(*rotated));
      }
      break;
    }
  }
  cache_misses_.add();
  result.reset();
  if (event) emit(*event);
  return result;
}

std::optional<Session> SessionStore::Impl::find(std::string_view id) {
  if (!is_well_formed_session_id(id)) {
    cache_misses_.add();
    return std::nullopt;
  }
  std::optional<Session> found = live_copy(std::string(id), now());
  (found ? cache_hits_ : cache_misses_).add();
  return found;
}

// Always asked of storage, not of the cache: another process may have created the session. A
// store scoped to a tenant deletes only a row of that tenant.
bool SessionStore::Impl::revoke_id(std::string_view id) {
  if (!is_well_formed_session_id(id)) return false;
  SessionFilter filter;
  filter.id = std::string(id);
  filter.tenant_id = options_.tenant_id;
  return !revoke_matching(filter).empty();
}

std::size_t SessionStore::Impl::revoke_user(std::string_view user_id,
                                            const std::optional<std::string>& tenant) {
  if (tenant) detail::check_text_field(detail::kTenantIdField, *tenant);
  if (options_.tenant_id && tenant && tenant != options_.tenant_id) return 0;  // not ours
  SessionFilter filter;
  filter.user_id = std::string(user_id);
  filter.tenant_id = tenant ? tenant : options_.tenant_id;
  return revoke_matching(filter).size();
}

std::size_t SessionStore::Impl::revoke_others(std::string_view token) {
  if (!is_well_formed_token(token)) return 0;
  const std::optional<Session> current = live_copy(session_id_for_token(token), now());
  if (!current) return 0;
  SessionFilter filter;
  filter.user_id = current->user_id;
  filter.tenant_id = options_.tenant_id;
  filter.except_id = current->id;
  return revoke_matching(filter).size();
}

std::size_t SessionStore::Impl::logout_by_claims(std::optional<std::string_view> sid,
                                                 std::optional<std::string_view> sub,
                                                 const std::optional<std::string>& tenant) {
  if (tenant) detail::check_text_field(detail::kTenantIdField, *tenant);
  if (sid) {
    detail::check_text_field({"sid", kMaxIdpSessionIdBytes}, *sid);
    if (options_.tenant_id && tenant && tenant != options_.tenant_id) return 0;  // not ours
    SessionFilter filter;
    filter.idp_session_id = std::string(*sid);
    filter.tenant_id = tenant ? tenant : options_.tenant_id;
    return revoke_matching(filter).size();
  }
  if (sub) {
    detail::check_text_field({"sub", kMaxUserIdBytes}, *sub);
    return revoke_user(*sub, tenant);
  }
  throw Error(ErrorCode::kInvalidArgument,
              "logout_by_claims needs a `sid` or a `sub` claim (a logout token carries one)");
}

// Storage builds the successor from the row it holds, records the old id and deletes it, in one
// transaction (SessionBackend::rotate); the cache then takes the successor storage returned.
std::optional<NewSession> SessionStore::Impl::rotate(std::string_view token) {
  if (!is_well_formed_token(token)) return std::nullopt;
  const std::string old_id = session_id_for_token(token);
  NewSession rotated;
  {
    const std::lock_guard<std::mutex> lock(write_mutex_);
    const std::int64_t at = now();
    if (!live_copy(old_id, at)) return std::nullopt;
    rotated.token = generate_token();
    const std::string new_id = session_id_for_token(rotated.token);
    flush_pending_deletes();
    std::optional<Session> successor =
        write_in_doubt({old_id, new_id}, [&] { return backend_->rotate(old_id, new_id, at); });
    cache_.erase(std::string_view(old_id));
    if (!successor) return std::nullopt;  // revoked or expired in storage meanwhile
    if (!cache_stored(new_id, successor, at)) {
      // Stored, but not a session this store may hand out (out of scope, or unstorable bytes
      // written by something else): the old token is gone either way.
      return std::nullopt;
    }
    rotated.session = *std::move(successor);
    rotated_ids_.remember({old_id, new_id, rotated.session.user_id, rotated.session.tenant_id, at,
                           rotated.session.absolute_expires_at > 0
                               ? rotated.session.absolute_expires_at
                               : rotated.session.expires_at});
  }
  emit(SessionEvent::of_session(SessionEventType::kRotated, old_id, rotated.session.user_id,
                                rotated.session.id));
  return rotated;
}

std::optional<Session> SessionStore::Impl::update_data(std::string_view token, std::string data) {
  if (!is_well_formed_token(token)) return std::nullopt;
  if (data.size() > options_.max_data_bytes) {
    throw Error(ErrorCode::kInvalidArgument,
                "session data is " + std::to_string(data.size()) + " bytes, over the limit of " +
                    std::to_string(options_.max_data_bytes) +
                    " (StoreOptions::max_data_bytes); nothing was stored");
  }
  const std::string id = session_id_for_token(token);
  const std::lock_guard<std::mutex> lock(write_mutex_);
  const std::int64_t at = now();
  if (!live_copy(id, at)) return std::nullopt;
  flush_pending_deletes();
  // Update-only: never writes back a session another instance revoked, and changes no column
  // but `data`, so another store's slide is kept.
  std::optional<Session> stored =
      write_in_doubt({id}, [&] { return backend_->update_data(id, data); });
  return cache_stored(id, std::move(stored), at);
}

std::vector<Session> SessionStore::Impl::list_user(std::string_view user_id,
                                                   const std::optional<std::string>& tenant) {
  const std::int64_t at = now();
  std::vector<Session> live;
  for (Session& session : cache_.of_user(user_id)) {
    if (is_live(session, at) && (!tenant || session.tenant_id == tenant)) {
      live.push_back(std::move(session));
    }
  }
  std::sort(live.begin(), live.end(), [](const Session& a, const Session& b) {
    return std::tie(a.created_at, a.id) < std::tie(b.created_at, b.id);
  });
  return live;
}

std::size_t SessionStore::Impl::purge_expired() {
  std::size_t removed = 0;
  {
    const std::lock_guard<std::mutex> lock(write_mutex_);
    const std::int64_t at = now();
    flush_pending_deletes();
    removed = write([&] { return backend_->remove_expired(at); });
    cache_.erase_expired(at);
    rotated_ids_.forget_expired(at);
  }
  if (removed > 0) emit(SessionEvent::purged(removed));
  return removed;
}

// ------------------------------------------------------------------------------------------------
// The reaper
//
// Wakes every reaper_interval and deletes expired rows in statements of at most
// reaper_batch_size rows, releasing write_mutex_ (and so the database's write lock) between
// batches, so creates and revokes interleave with a purge of millions of rows: expired sessions
// first, then expired rotated ids. The cache is swept once at the end: expired entries are never
// returned, so they may stay a little longer.
// ------------------------------------------------------------------------------------------------

std::size_t SessionStore::Impl::purge_in_batches() {
  const std::int64_t at = now();
  const std::size_t batch = options_.reaper_batch_size;
  const auto in_batches = [this, batch](auto&& remove_batch) {
    std::size_t total = 0;
    for (;;) {
      std::size_t removed = 0;
      {
        const std::lock_guard<std::mutex> lock(write_mutex_);
        flush_pending_deletes();
        removed = write(remove_batch);
      }
      total += removed;
      if (removed < batch || stopping_) return total;
    }
  };
  const std::size_t total = in_batches([&] { return backend_->remove_expired_batch(at, batch); });
  if (!stopping_) in_batches([&] { return backend_->remove_expired_rotated(at, batch); });
  {
    const std::lock_guard<std::mutex> lock(write_mutex_);
    cache_.erase_expired(at);
    rotated_ids_.forget_expired(at);
  }
  if (total > 0) emit(SessionEvent::purged(total));
  return total;
}

void SessionStore::Impl::reaper_loop() {
  std::unique_lock<std::mutex> lock(reaper_mutex_);
  while (
      !reaper_wake_.wait_for(lock, options_.reaper_interval, [this] { return reaper_stopping_; })) {
    lock.unlock();
    // A failure is retried next interval; it is counted, and told to the listener, so that a
    // reaper that keeps failing (a full disk, a lost server) is seen.
    bool failed = false;
    SessionEvent failure = SessionEvent::with_detail(SessionEventType::kReaperFailed, {});
    try {
      purge_in_batches();
    } catch (const std::exception& error) {
      failed = true;
      try {
        failure.detail = error.what();
      } catch (...) {  // NOLINT(bugprone-empty-catch): out of memory: the event goes without it
      }
    } catch (...) {
      failed = true;
    }
    if (failed) {
      ++reaper_failures_;
      emit(failure);
    }
    lock.lock();
  }
}

std::size_t SessionStore::Impl::size() { return cache_.size(); }

StoreStats SessionStore::Impl::stats() {
  StoreStats stats;
  stats.sessions = cache_.size();
  stats.users = cache_.users();
  stats.cache_hits = cache_hits_.total();
  stats.cache_misses = cache_misses_.total();
  stats.writes = writes_;
  stats.write_failures = write_failures_;
  stats.skipped_rows = skipped_rows_;
  stats.reaper_failures = reaper_failures_;
  const std::lock_guard<std::mutex> lock(last_error_mutex_);
  stats.last_error = last_error_;
  return stats;
}

// ------------------------------------------------------------------------------------------------
// SessionStore: the public face of Impl
// ------------------------------------------------------------------------------------------------

SessionStore::SessionStore(std::unique_ptr<SessionBackend> backend, StoreOptions options)
    : impl_(std::make_unique<Impl>(std::move(backend), std::move(options))) {}

SessionStore SessionStore::open(const std::string& database_url, StoreOptions options) {
  return SessionStore(open_backend(database_url), std::move(options));
}

SessionStore::SessionStore(SessionStore&& other) noexcept = default;
SessionStore& SessionStore::operator=(SessionStore&& other) noexcept = default;
SessionStore::~SessionStore() = default;

NewSession SessionStore::create(std::string_view user_id, CreateOptions options) {
  return impl_->create(user_id, std::move(options));
}
std::optional<Session> SessionStore::validate(std::string_view token) {
  return impl_->validate(token);
}
std::optional<Session> SessionStore::find(std::string_view id) { return impl_->find(id); }
bool SessionStore::revoke(std::string_view token) {
  if (!is_well_formed_token(token)) return false;
  return impl_->revoke_id(session_id_for_token(token));
}
bool SessionStore::revoke_id(std::string_view id) { return impl_->revoke_id(id); }
std::size_t SessionStore::revoke_user(std::string_view user_id) {
  return impl_->revoke_user(user_id, std::nullopt);
}
std::size_t SessionStore::revoke_user(std::string_view user_id, std::string_view tenant_id) {
  return impl_->revoke_user(user_id, std::string(tenant_id));
}
std::vector<Session> SessionStore::list_user(std::string_view user_id) {
  return impl_->list_user(user_id, std::nullopt);
}
std::vector<Session> SessionStore::list_user(std::string_view user_id, std::string_view tenant_id) {
  return impl_->list_user(user_id, std::string(tenant_id));
}
std::size_t SessionStore::purge_expired() { return impl_->purge_expired(); }
std::size_t SessionStore::size() { return impl_->size(); }
std::optional<NewSession> SessionStore::rotate(std::string_view token) {
  return impl_->rotate(token);
}
std::size_t SessionStore::revoke_others(std::string_view token) {
  return impl_->revoke_others(token);
}
std::optional<Session> SessionStore::update_data(std::string_view token, std::string data) {
  return impl_->update_data(token, std::move(data));
}
std::size_t SessionStore::logout_by_claims(std::optional<std::string_view> sid,
                                           std::optional<std::string_view> sub) {
  return impl_->logout_by_claims(sid, sub, std::nullopt);
}
std::size_t SessionStore::logout_by_claims(std::optional<std::string_view> sid,
                                           std::optional<std::string_view> sub,
                                           std::string_view tenant_id) {
  return impl_->logout_by_claims(sid, sub, std::string(tenant_id));
}
StoreStats SessionStore::stats() { return impl_->stats(); }

}  // namespace pylon

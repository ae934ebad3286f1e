// pylon-sessions: SessionStore, the write-through cache in front of a SessionBackend.
//
// What it owns: the operations of the public API. Each reads as: check the arguments, take the
// write lock, write through to storage, make the cache what storage returned, emit the events.
// The mechanisms they rely on are classes of their own, each owning its state and its lock:
//   StorageWrites  (internal/storage_writes.hpp)  the write lock, deletes owed after a failure
//                  (fail closed), writes in doubt, the write counters;
//   GroupCommit    (internal/group_commit.hpp)    concurrent creates sharing one commit;
//   RotatedIds     (internal/rotated_ids.hpp)     the rotated ids a replay is recognised by;
//   Reaper         (internal/reaper.hpp)          the purge on a schedule;
//   MissLookups    (internal/miss_lookups.hpp)    the bound on storage reads for cache misses;
//   ChangeFeed     (internal/change_feed.hpp)     what other stores wrote, applied to the cache;
//   SessionCache   (internal/session_cache.hpp)   the sharded in-memory table of sessions.
//
// Invariant, whenever no lock is held: the cache holds exactly the rows of this store's tenant
// scope that storage holds and this process knows of (with a change feed, every row storage held
// when the feed last read the log), minus those StorageWrites has denied or holds in doubt. Each
// write takes from storage what it changed (the row an update returns, the ids a delete returns),
// never from a copy read earlier, so a write racing another process's, or another thread's, cannot
// leave the cache claiming what storage does not hold.
//
// Locking: the write lock (StorageWrites::mutex()) serialises every storage write and the cache
// update after it, so the cache changes in the order storage did. The cache locks itself only
// for map operations, never across a storage call, so reads never wait for the disk. Creates
// queue in GroupCommit without the write lock, so they gather while a commit is in flight. Lock
// order: GroupCommit's lock is never held with another; the ChangeFeed's lock, then the write
// lock, then RotatedIds' lock, then the cache's locks, then the counters' lock. Events are
// delivered after every lock is released, except the feed's own (kChangeFeedLost, Resumed), sent
// with the feed's lock held. scripts/thread-safety.sh has Clang check the annotated rules.
#include <algorithm>
#include <array>
#include <atomic>
#include <exception>
#include <limits>
#include <memory>
#include <new>
#include <tuple>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <variant>

#include "internal/backend_shared.hpp"
#include "internal/change_feed.hpp"
#include "internal/group_commit.hpp"
#include "internal/miss_lookups.hpp"
#include "internal/reaper.hpp"
#include "internal/rotated_ids.hpp"
#include "internal/session_cache.hpp"
#include "internal/storage_writes.hpp"
#include "internal/thread_annotations.hpp"
#include "session_backend.hpp"

namespace pylon {

namespace {

using detail::MutexLock;
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
  check_range("change_check_interval", options.change_check_interval.count(), 0, 60000,
              "milliseconds");
  check_range("change_log_retention", options.change_log_retention.count(), 60, 30 * kDay,
              "seconds");
  check_range("max_absolute_ttl", options.max_absolute_ttl.count(), 1, kHundredYears, "seconds");
  check_range("max_idle_timeout", options.max_idle_timeout.count(), 1, kHundredYears, "seconds");
  const auto count = [](std::size_t value) {
    return static_cast<std::int64_t>(
        std::min<std::size_t>(value, std::numeric_limits<std::int64_t>::max()));
  };
  check_range("max_sessions_per_user", count(options.max_sessions_per_user), 0, kMaxSessionsPerUser,
              "sessions");
  check_range("max_data_bytes", count(options.max_data_bytes), 0, kMaxDataBytes, "bytes");
  check_range("miss_lookups_per_second", count(options.miss_lookups_per_second), 0,
              kMaxMissLookupsPerSecond, "reads");
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

// A copy of the exception being handled, for one caller of a failed group. Every caller gets its
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

// One write on its way through group commit. The caller fills `write`, `at` (its clock, by which
// a row storage returns is live or not) and `old_user` (a rotation's or sign-in's old session's
// user, for its RotatedId); the leader that commits it fills `stored` (the row the cache then took:
// a create's new session, the row an update or rotation returned), `removed` (the rows storage
// evicted or deleted) and `error`.
struct QueuedWrite {
  SessionWrite write;
  std::int64_t at = 0;
  std::string old_user;
  std::optional<Session> stored;
  std::vector<RemovedSession> removed;
  std::exception_ptr error;
  bool finished = false;  // the leader recorded its outcome
};

}  // namespace

std::int64_t system_clock_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

class SessionStore::Impl final : private detail::ChangeApplier {
 public:
  Impl(std::unique_ptr<SessionBackend> backend, StoreOptions options);
  ~Impl() override;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  Impl(Impl&&) = delete;
  Impl& operator=(Impl&&) = delete;

  // create() and create_anonymous(): `user_id` is checked by the caller ("" for anonymous).
  NewSession create(std::string_view user_id, CreateOptions options);
  // attach_user() with a user, reauthenticate() without.
  std::optional<NewSession> sign_in(std::string_view token,
                                    std::optional<std::string_view> user_id);
  std::optional<Session> extend(std::string_view token);
  bool authenticated_within(const Session& session, std::chrono::seconds window) const;
  SessionPage list_sessions(SessionQuery query) const;
  std::vector<TenantCount> count_by_tenant() const;
  std::size_t revoke_tenant(std::string_view tenant_id);
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
                                 const std::optional<std::string>& tenant) const;
  std::size_t purge_expired();
  std::size_t size() const;
  StoreStats stats() const;

 private:
  using WriteQueue = detail::GroupCommit<QueuedWrite>;

  std::int64_t now() const { return options_.clock(); }
  // What the ChangeFeed needs (detail::ChangeApplier).
  void exclusive(const std::function<void()>& step) override EXCLUDES(writes_.mutex());
  void apply(const SessionChange& change) override NO_THREAD_SAFETY_ANALYSIS;
  void reload() override NO_THREAD_SAFETY_ANALYSIS;
  void report(const SessionEvent& event) noexcept override { emit(event); }
  std::uint64_t write_generation() const noexcept override { return writes_.generation(); }
  // With change_check_interval 0, applies what other stores wrote before a lookup. False when
  // the store does not follow the log and refuse_while_not_following says to refuse.
  bool follow_before_lookup();
  bool in_scope(const Session& session) const {
    return !options_.tenant_id || session.tenant_id == options_.tenant_id;
  }
  // Whether a row storage returned may be cached: storable, sane, in this store's scope.
  bool cacheable(const Session& row) const {
    return detail::is_servable_session(row) && in_scope(row);
  }
  void emit(const SessionEvent& event) const noexcept;
  Session new_session(std::string_view user_id, CreateOptions options) const;

  // The live cached session of `id` (a well-formed id), copied.
  std::optional<Session> live_copy(const std::string& id, std::int64_t at) const;
  // The ids of the cached sessions `filter` matches.
  std::vector<std::string> cached_ids_matching(const SessionFilter& filter) const;
  // Makes the cache hold `stored`, the row storage returned after a write to `id`: cached when it
  // is live and cacheable, dropped otherwise. Returns it when it was cached.
  std::optional<Session> cache_stored(const std::string& id, std::optional<Session> stored,
                                      std::int64_t at) REQUIRES(writes_.mutex());

  // Queues `write` for group commit and returns it once storage and the cache have it (or it
  // failed: its `error`). Every write of the store but purges goes through here.
  QueuedWrite commit(SessionWrite write, std::int64_t at, std::string old_user = {})
      EXCLUDES(writes_.mutex());
  // The leader's part: the group's writes in one SessionBackend::write_group() call, then each
  // write's cache step, in order, under the write lock; never throws.
  void commit_group(const std::vector<WriteQueue::Writer*>& group) EXCLUDES(writes_.mutex());
  // The ids whose cached state a write leaves unknown when its outcome is (kConnectionLost).
  std::vector<std::string> ids_in_doubt(const SessionWrite& write) REQUIRES(writes_.mutex());
  // Makes the cache what storage did for one write, and records it in `item`.
  void apply_outcome(QueuedWrite& item, SessionWriteOutcome outcome) REQUIRES(writes_.mutex());
  // A write that failed: a delete fails closed (denied here now, owed to storage).
  void fail_write(QueuedWrite& item, std::exception_ptr error) REQUIRES(writes_.mutex());
  // The kRevoked events of rows storage evicted or deleted.
  void emit_revoked(const std::vector<RemovedSession>& rows) const;
  // Deletes what `filter` matches, in one statement, and removes from the cache exactly the rows
  // storage deleted. Fails closed: if storage refuses, the cached sessions the filter matches are
  // denied here at once and the same filter is owed to storage (StorageWrites).
  std::vector<RemovedSession> revoke_matching(const SessionFilter& filter)
      EXCLUDES(writes_.mutex());
  // A well-formed id the cache does not hold, once MissLookups allowed the read: its row read
  // from storage, cached and returned when it is live (and slid as validate() slides); nullopt
  // when storage has none, the read fails (counted), or a failed revoke still owes its delete.
  // The read is made under the write lock, so it cannot interleave with this process's own
  // writes (a revoke between the read and the cache update would bring the session back here).
  std::optional<Session> look_up_miss(const std::string& id, std::int64_t at, bool slide)
      EXCLUDES(writes_.mutex());
  // The idle slide of a live cached session, written when touch_interval has passed, or at once
  // when `forced` (extend()).
  std::optional<Session> touch(const std::string& id, std::int64_t at, bool forced = false)
      EXCLUDES(writes_.mutex());
  // touch() of `current`, the copy of a live cached session the caller already holds.
  std::optional<Session> slide(const Session& current, std::int64_t at, bool forced = false)
      EXCLUDES(writes_.mutex());
  // The idle timeout a session slides by: its own (CreateOptions::idle_timeout), else the store's.
  std::int64_t idle_timeout_of(const Session& session) const {
    return session.idle_timeout_seconds.value_or(options_.idle_timeout.count());
  }
  // The session an old token stands for within rotation_grace: its chain's last successor, slid
  // as validate() slides any session; nullopt if that is gone.
  std::optional<Session> successor_in_grace(const RotatedId& rotated, std::int64_t at)
      EXCLUDES(writes_.mutex());
  // One run of the reaper: expired sessions, then expired rotated ids, in batches of at most
  // reaper_batch_size rows, with the write lock released between batches so that other writers
  // interleave with a purge of millions of rows. A failure is counted and reported.
  void reap(const detail::Reaper& reaper) noexcept EXCLUDES(writes_.mutex());
  std::size_t purge_in_batches(const detail::Reaper& reaper) EXCLUDES(writes_.mutex());

  // The cache-line aligned members first: less padding.
  detail::SessionCache cache_;
  // Counted by the read-only calls too.
  mutable StripedCounter cache_hits_;
  mutable StripedCounter cache_misses_;
  // Misses refused unread because lookups are off: counted once, as both a miss and a refusal.
  mutable StripedCounter misses_unread_;

  std::unique_ptr<SessionBackend> backend_;
  StoreOptions options_;
  detail::StorageWrites writes_;
  WriteQueue write_queue_;
  detail::RotatedIds rotated_ids_{cache_};
  std::size_t skipped_rows_ = 0;  // set by the constructor only
  std::atomic<std::uint64_t> reaper_failures_{0};
  std::atomic<std::uint64_t> miss_lookup_failures_{0};
  mutable detail::MissLookups miss_lookups_{static_cast<std::int64_t>(
      std::min<std::size_t>(options_.miss_lookups_per_second, INT64_MAX))};
  std::unique_ptr<detail::ChangeFeed> feed_;  // null for a backend without a change log
  std::unique_ptr<detail::Reaper> reaper_;    // last: started once everything above exists
};

SessionStore::Impl::Impl(std::unique_ptr<SessionBackend> backend, StoreOptions options)
    : backend_(std::move(backend)),
      options_(std::move(options)),
      writes_(backend_ ? *backend_
                       : throw Error(ErrorCode::kInvalidArgument, "SessionStore needs a backend"),
              cache_, [this](const Session& row) { return cacheable(row); }) {
  check_store_options(options_);
  const std::int64_t at = now();
  // The feed takes the log's position before the load: what is written during it is applied
  // after it.
  if (std::unique_ptr<ChangeSource> source = backend_->open_change_source()) {
    feed_ = std::make_unique<detail::ChangeFeed>(
        std::move(source), static_cast<detail::ChangeApplier&>(*this),
        detail::ChangeFeed::Options{options_.change_check_interval, options_.change_log_retention});
  }
  {
    detail::SessionCache::Loader loader(cache_);
    backend_->load_each([this, &loader](const Session& row) {
      // A row that no token can match, or that holds what no write of ours would store (a
      // damaged or hand-edited file), is never handed out: counted, left where it is.
      if (!detail::is_servable_session(row)) {
        ++skipped_rows_;
      } else if (in_scope(row)) {
        loader.add(row);
      }
    });
    loader.finish();
  }
  // Gathered first and remembered once the backend has returned: remember() takes cache locks,
  // which are never taken under the backend's own lock (the Loader above holds the cache's locks
  // across load_each(), so the two orders would meet).
  std::vector<RotatedId> rotated_ids;
  backend_->load_rotated_each([this, at, &rotated_ids](const RotatedId& rotated) {
    if (rotated.expires_at > at &&
        (!options_.tenant_id || rotated.tenant_id == options_.tenant_id)) {
      rotated_ids.push_back(rotated);
    }
  });
  for (RotatedId& rotated : rotated_ids) rotated_ids_.remember(std::move(rotated));
  for (const SessionEvent& event : backend_->opening_events()) emit(event);
  if (options_.reaper_interval.count() > 0) {
    reaper_ = std::make_unique<detail::Reaper>(
        options_.reaper_interval, [this](const detail::Reaper& reaper) { reap(reaper); });
  }
  if (feed_) feed_->start();
}

// The feed and the reaper stop first (they write to the cache and through writes_);
// StorageWrites' destructor then makes the last attempt at the deletes still owed.
SessionStore::Impl::~Impl() {
  feed_.reset();
  reaper_.reset();
}

// ------------------------------------------------------------------------------------------------
// Following other stores (detail::ChangeApplier, called by the ChangeFeed)
// ------------------------------------------------------------------------------------------------

// Under the write lock, which each of this store's writes holds from its storage call to its
// cache update: the feed applies a state read from storage only if no such call came between
// its read and this lock (write_generation() unchanged), so applying it never brings back a
// session this store has just revoked.
void SessionStore::Impl::exclusive(const std::function<void()>& step) {
  const MutexLock lock(writes_.mutex());
  step();
}

// Called inside exclusive(): the write lock is held (not visible to the analysis through the
// std::function).
void SessionStore::Impl::apply(const SessionChange& change) {
  const std::int64_t at = now();
  const std::optional<Session>& stored = change.session;
  // An expired row is cached too, as the start-up load caches it: validate() reports it
  // (kValidatedExpired) until a purge deletes it.
  // An id in doubt stays out until settle() reads it back: the write whose outcome is unknown
  // may still commit after the state read here.
  if (stored && stored->id == change.id && cacheable(*stored) && !writes_.denies(*stored) &&
      !writes_.in_doubt(change.id)) {
    cache_.put(*stored);
  } else {
    cache_.erase(std::string_view(change.id));
  }
  if (change.rotated && change.rotated->id == change.id && change.rotated->expires_at > at &&
      (!options_.tenant_id || change.rotated->tenant_id == options_.tenant_id)) {
    rotated_ids_.remember(*change.rotated);
  }
}

// Called inside exclusive(). Every row storage holds is put (replacing what the cache had), as
// the start-up load puts it, then every cached session storage no longer holds is erased: the
// cache never goes empty on the way, so lookups meanwhile still find the sessions that stay.
void SessionStore::Impl::reload() {
  // Read whole first: the cache's locks are never taken under the backend's own (the start-up
  // Loader takes them the other way round).
  const std::vector<Session> rows = backend_->load_all();
  std::unordered_set<std::string> stored_ids;
  for (const Session& row : rows) {
    if (cacheable(row) && !writes_.denies(row)) {
      cache_.put(row);
      stored_ids.insert(row.id);
    }
  }
  cache_.erase_unless([&stored_ids](const detail::SessionDigest& digest) {
    return stored_ids.count(detail::session_id_of(digest)) > 0;
  });
}

bool SessionStore::Impl::follow_before_lookup() {
  if (!feed_) return true;
  if (options_.change_check_interval.count() == 0) feed_->check_now();
  return feed_->following() || !options_.refuse_while_not_following;
}

void SessionStore::Impl::emit(const SessionEvent& event) const noexcept {
  if (!options_.on_event) return;
  try {
    options_.on_event(event);
  } catch (...) {  // NOLINT(bugprone-empty-catch): documented: a listener cannot fail a call
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
        detail::matches(filter, cached)) {
      ids.push_back(std::move(cached.id));
    }
  } else if (filter.user_id) {
    for (Session& session : cache_.of_user(*filter.user_id)) {
      if (detail::matches(filter, session)) ids.push_back(std::move(session.id));
    }
  } else if (filter.idp_session_id) {
    for (detail::SessionCache::SessionOfUser& match :
         cache_.with_idp_session(*filter.idp_session_id, filter.tenant_id)) {
      if (!filter.except_id || match.id != *filter.except_id) ids.push_back(std::move(match.id));
    }
  } else if (filter.tenant_id) {
    for (detail::SessionCache::SessionOfUser& match : cache_.in_tenant(*filter.tenant_id)) {
      if (!filter.except_id || match.id != *filter.except_id) ids.push_back(std::move(match.id));
    }
  }
  return ids;
}

std::optional<Session> SessionStore::Impl::cache_stored(const std::string& id,
                                                        std::optional<Session> stored,
                                                        std::int64_t at) {
  if (stored && stored->id == id && is_live(*stored, at) && cacheable(*stored)) {
    cache_.put(*stored);
    return stored;
  }
  cache_.erase(std::string_view(id));
  return std::nullopt;
}

std::vector<RemovedSession> SessionStore::Impl::revoke_matching(const SessionFilter& filter) {
  QueuedWrite done = commit(RemoveMatchingWrite{filter}, now());
  emit_revoked(done.removed);
  if (done.error) std::rethrow_exception(done.error);
  return std::move(done.removed);
}

namespace {

// A session's own lifetime (CreateOptions), in seconds: from 1 to the store's maximum.
std::int64_t own_lifetime(const char* option, std::chrono::seconds value, std::chrono::seconds max,
                          const char* max_option) {
  if (value.count() < 1 || value > max) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string("CreateOptions::") + option + " is " + std::to_string(value.count()) +
                    " seconds, outside its range of 1 to " + std::to_string(max.count()) +
                    " (StoreOptions::" + max_option + "); nothing was stored");
  }
  return value.count();
}

}  // namespace

// A new session of `user_id` ("" for an anonymous one), checked and stamped, not yet stored.
Session SessionStore::Impl::new_session(std::string_view user_id, CreateOptions options) const {
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
  // A session may always have what the store gives every session.
  const std::int64_t absolute_ttl =
      options.absolute_ttl
          ? own_lifetime("absolute_ttl", *options.absolute_ttl,
                         std::max(options_.max_absolute_ttl, options_.absolute_ttl),
                         "max_absolute_ttl")
          : options_.absolute_ttl.count();
  Session session;
  if (options.idle_timeout) {
    session.idle_timeout_seconds = own_lifetime(
        "idle_timeout", *options.idle_timeout,
        std::max(options_.max_idle_timeout, options_.idle_timeout), "max_idle_timeout");
  }
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
  session.authenticated_at = session.is_anonymous() ? 0 : at;
  session.absolute_expires_at = saturating_add(at, absolute_ttl);
  const std::int64_t idle = idle_timeout_of(session);
  session.expires_at = idle > 0 ? std::min(session.absolute_expires_at, saturating_add(at, idle))
                                : session.absolute_expires_at;
  return session;
}

// Returns only after its own row is durable (GroupCommit).
NewSession SessionStore::Impl::create(std::string_view user_id, CreateOptions options) {
  NewSession created;
  created.session = new_session(user_id, std::move(options));
  created.token = generate_token();
  created.session.id = session_id_for_token(created.token);
  const std::int64_t at = created.session.created_at;
  QueuedWrite done = commit(InsertNewWrite{{created.session}, options_.max_sessions_per_user}, at);
  emit_revoked(done.removed);
  if (done.error) std::rethrow_exception(done.error);
  emit(SessionEvent::of_session(SessionEventType::kCreated, created.session.id,
                                created.session.user_id));
  return created;
}

QueuedWrite SessionStore::Impl::commit(SessionWrite write, std::int64_t at, std::string old_user) {
  QueuedWrite item;
  item.write = std::move(write);
  item.at = at;
  item.old_user = std::move(old_user);
  WriteQueue::Writer queued(write_queue_, std::move(item));
  write_queue_.write(
      queued, [this](const std::vector<WriteQueue::Writer*>& group) { commit_group(group); });
  return std::move(queued.item);
}

// One storage call for the whole group; a write that failed on its own fails alone. The cache
// then follows storage write by write, in the order storage made them: a create evicted by a
// later create of the same group, a row slid and then revoked, end as they would one by one.
void SessionStore::Impl::commit_group(const std::vector<WriteQueue::Writer*>& group) {
  const MutexLock lock(writes_.mutex());
  try {
    writes_.settle();
    std::vector<SessionWrite> writes;
    writes.reserve(group.size());
    for (const WriteQueue::Writer* writer : group) writes.push_back(writer->item.write);
    // Asked for only when the group fails: the cache has not changed since the writes were queued.
    // Called by StorageWrites with its mutex (writes_.mutex()) held, which the analysis cannot
    // follow into a lambda passed through a template.
    const auto all_doubts = [&]() NO_THREAD_SAFETY_ANALYSIS {
      std::vector<std::string> ids;
      for (const WriteQueue::Writer* writer : group) {
        std::vector<std::string> doubts = ids_in_doubt(writer->item.write);
        std::move(doubts.begin(), doubts.end(), std::back_inserter(ids));
      }
      return ids;
    };
    std::vector<SessionWriteOutcome> outcomes = writes_.run_group(
        all_doubts, group.size(), [&] { return backend_->write_group(std::move(writes)); });
    if (outcomes.size() != group.size()) {
      throw Error(ErrorCode::kInternal, "SessionBackend::write_group returned " +
                                            std::to_string(outcomes.size()) + " outcomes for " +
                                            std::to_string(group.size()) + " writes");
    }
    for (std::size_t i = 0; i < group.size(); ++i) {
      writes_.count_outcome(outcomes[i].error, [&]() NO_THREAD_SAFETY_ANALYSIS {  // as above
        return ids_in_doubt(group[i]->item.write);
      });
      apply_outcome(group[i]->item, std::move(outcomes[i]));
    }
  } catch (...) {
    // Every write without an outcome fails with this error; the cache holds none of them.
    for (WriteQueue::Writer* writer : group) {
      if (!writer->item.finished) fail_write(writer->item, own_copy_of_current_exception());
    }
  }
}

std::vector<std::string> SessionStore::Impl::ids_in_doubt(const SessionWrite& write) {
  std::vector<std::string> ids;
  // With a cap, a write in doubt may have evicted any of its user's sessions: those too.
  const auto add_users_sessions = [this, &ids](const std::string& user_id) {
    if (options_.max_sessions_per_user == 0 || user_id.empty()) return;
    SessionFilter same_owner;
    same_owner.user_id = user_id;
    for (std::string& id : cached_ids_matching(same_owner)) ids.push_back(std::move(id));
  };
  std::visit(
      [&](const auto& arguments) {
        using Write = std::decay_t<decltype(arguments)>;
        if constexpr (std::is_same_v<Write, InsertNewWrite>) {
          for (const Session& session : arguments.sessions) {
            ids.push_back(session.id);
            add_users_sessions(session.user_id);
          }
        } else if constexpr (std::is_same_v<Write, TouchWrite> ||
                             std::is_same_v<Write, UpdateDataWrite>) {
          ids.push_back(arguments.id);
        } else if constexpr (std::is_same_v<Write, RotateWrite>) {
          ids = {arguments.old_id, arguments.new_id};
        } else if constexpr (std::is_same_v<Write, AuthenticateWrite>) {
          ids = {arguments.old_id, arguments.new_id};
          add_users_sessions(arguments.user_id);
        }
        // A delete in doubt fails closed instead (fail_write).
      },
      write);
  return ids;
}

void SessionStore::Impl::apply_outcome(QueuedWrite& item, SessionWriteOutcome outcome) {
  if (outcome.error) {
    fail_write(item, outcome.error);
    return;
  }
  item.removed = std::move(outcome.removed);
  for (const RemovedSession& row : item.removed) cache_.erase(std::string_view(row.id));
  std::visit(
      [&](const auto& arguments) REQUIRES(writes_.mutex()) {
        using Write = std::decay_t<decltype(arguments)>;
        if constexpr (std::is_same_v<Write, InsertNewWrite>) {
          for (const Session& session : arguments.sessions) {
            const bool evicted =
                std::any_of(item.removed.begin(), item.removed.end(),
                            [&session](const RemovedSession& row) { return row.id == session.id; });
            // put() throws only bad_alloc: the row is stored, not cached.
            if (!evicted) cache_.put(session);
          }
        } else if constexpr (std::is_same_v<Write, TouchWrite> ||
                             std::is_same_v<Write, UpdateDataWrite>) {
          item.stored = cache_stored(arguments.id, std::move(outcome.session), item.at);
        } else if constexpr (std::is_same_v<Write, RotateWrite> ||
                             std::is_same_v<Write, AuthenticateWrite>) {
          cache_.erase(std::string_view(arguments.old_id));
          item.stored = cache_stored(arguments.new_id, std::move(outcome.session), item.at);
          if (item.stored) {
            rotated_ids_.remember({arguments.old_id, arguments.new_id, item.old_user,
                                   item.stored->tenant_id, arguments.now,
                                   item.stored->absolute_expires_at > 0
                                       ? item.stored->absolute_expires_at
                                       : item.stored->expires_at});
          }
        }
      },
      item.write);
  item.finished = true;
}

void SessionStore::Impl::fail_write(QueuedWrite& item, std::exception_ptr error) {
  if (const auto* remove = std::get_if<RemoveMatchingWrite>(&item.write)) {
    writes_.owe_delete(remove->filter, cached_ids_matching(remove->filter));
  }
  item.error = std::move(error);
  item.finished = true;
}

void SessionStore::Impl::emit_revoked(const std::vector<RemovedSession>& rows) const {
  for (const RemovedSession& row : rows) {
    emit(SessionEvent::of_session(SessionEventType::kRevoked, row.id, row.user_id));
  }
}

// Storage moves only last_seen_at and expires_at, never back (SessionBackend::touch), and returns
// the row it holds, which the cache then takes: data another store updated comes along. Two
// threads sliding one session at once both write; the later write changes nothing.
std::optional<Session> SessionStore::Impl::touch(const std::string& id, std::int64_t at,
                                                 bool forced) {
  std::optional<Session> current = live_copy(id, at);
  if (!current) return std::nullopt;
  return slide(*current, at, forced);
}

std::optional<Session> SessionStore::Impl::slide(const Session& current, std::int64_t at,
                                                 bool forced) {
  if (!forced && saturating_sub(at, current.last_seen_at) < options_.touch_interval.count()) {
    return current;
  }
  const std::int64_t cap =
      current.absolute_expires_at > 0 ? current.absolute_expires_at : current.expires_at;
  const std::int64_t idle = idle_timeout_of(current);
  const std::int64_t slid_expiry =
      idle > 0 ? std::min(cap, saturating_add(at, idle)) : current.expires_at;
  QueuedWrite done = commit(TouchWrite{current.id, at, slid_expiry}, at);
  if (done.error) std::rethrow_exception(done.error);
  return std::move(done.stored);
}

std::optional<Session> SessionStore::Impl::look_up_miss(const std::string& id, std::int64_t at,
                                                        bool slide) {
  std::optional<Session> found;
  {
    const MutexLock lock(writes_.mutex());
    found = live_copy(id, at);  // cached meanwhile, by another thread
    if (!found) {
      if (writes_.denies_id(id)) return std::nullopt;
      std::optional<Session> stored;
      writes_.note_storage_read();
      try {
        stored = backend_->load_one(id);
      } catch (const std::exception&) {
        // Not checked, so not accepted: refused, and counted. Nothing changed anywhere.
        ++miss_lookup_failures_;
        return std::nullopt;
      }
      if (!stored || writes_.denies(*stored)) return std::nullopt;
      found = cache_stored(id, std::move(stored), at);
    }
  }
  if (!found || !slide ||
      saturating_sub(at, found->last_seen_at) < options_.touch_interval.count()) {
    return found;
  }
  return touch(id, at);
}

std::optional<Session> SessionStore::Impl::successor_in_grace(const RotatedId& rotated,
                                                              std::int64_t at) {
  const std::string successor = rotated_ids_.last_successor(rotated);
  std::optional<Session> session = live_copy(successor, at);
  if (!session || saturating_sub(at, session->last_seen_at) < options_.touch_interval.count()) {
    return session;
  }
  return touch(successor, at);
}

// A known token and an unknown one take no measurably different time (measured by
// bench/validate_timing): find_token() does a hit's work for a miss too, copying a decoy session
// into `result`, and both paths then free a whole Session, the miss here, the hit in the caller.
// Every path returns `result` itself, so it is built in the caller's place and never moved.
std::optional<Session> SessionStore::Impl::validate(std::string_view token) {
  std::optional<Session> result;
  if (!is_well_formed_token(token)) {
    cache_misses_.add();
    return result;
  }
  if (!follow_before_lookup()) {
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
      result = slide(session, at);       // `session` is not read once slide() has returned
      if (!result) cache_misses_.add();  // revoked or expired meanwhile
      return result;
    }
    case detail::SessionCache::Found::kNone:
      // Not cached (and `session` a decoy): another instance may have created it. A token this
      // store handed out is cached before it is returned, so only storage can say more.
      // With lookups off, a miss counts one counter, as a hit does: the two take no measurably
      // different time (bench/validate_timing measures with lookups off).
      result.reset();
      if (!miss_lookups_.enabled()) {
        misses_unread_.add();
        return result;
      }
      if (miss_lookups_.try_acquire()) {
        result = look_up_miss(detail::session_id_of(digest), at, /*slide=*/true);
      }
      (result ? cache_hits_ : cache_misses_).add();
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
  if (!is_well_formed_session_id(id) || !follow_before_lookup()) {
    cache_misses_.add();
    return std::nullopt;
  }
  const std::int64_t at = now();
  detail::SessionDigest digest{};
  detail::parse_session_id(id, &digest);  // well-formed: checked above
  std::optional<Session> found;
  Session cached;
  switch (cache_.find(digest, at, &cached)) {
    case detail::SessionCache::Found::kLive:
      found = std::move(cached);
      break;
    case detail::SessionCache::Found::kNone:
      if (!miss_lookups_.enabled()) {
        misses_unread_.add();
        return found;
      }
      if (miss_lookups_.try_acquire()) found = look_up_miss(std::string(id), at, /*slide=*/false);
      break;
    case detail::SessionCache::Found::kExpired:
    case detail::SessionCache::Found::kRotatedAway:
      break;
  }
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
  if (user_id.empty()) return 0;  // anonymous sessions have no user to sign out
  if (options_.tenant_id && tenant && tenant != options_.tenant_id) return 0;  // not ours
  SessionFilter filter;
  filter.user_id = std::string(user_id);
  filter.tenant_id = tenant ? tenant : options_.tenant_id;
  return revoke_matching(filter).size();
}

std::size_t SessionStore::Impl::revoke_others(std::string_view token) {
  if (!is_well_formed_token(token)) return 0;
  const std::optional<Session> current = live_copy(session_id_for_token(token), now());
  if (!current || current->is_anonymous()) return 0;  // an anonymous session has no others
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
  const std::int64_t at = now();
  const std::optional<Session> current = live_copy(old_id, at);
  if (!current) return std::nullopt;
  NewSession rotated;
  rotated.token = generate_token();
  QueuedWrite done =
      commit(RotateWrite{old_id, session_id_for_token(rotated.token), at}, at, current->user_id);
  if (done.error) std::rethrow_exception(done.error);
  // None: revoked or expired in storage meanwhile, or stored but not a session this store may
  // hand out (out of scope, unstorable bytes written by something else); the old token is gone.
  if (!done.stored) return std::nullopt;
  rotated.session = *std::move(done.stored);
  emit(SessionEvent::of_session(SessionEventType::kRotated, old_id, rotated.session.user_id,
                                rotated.session.id));
  return rotated;
}

// attach_user() and reauthenticate(): rotate() whose successor storage also gives the user and
// authenticated_at = now, with the evictions the user's cap asks for, in one transaction
// (SessionBackend::authenticate). The cache then takes what storage returned, as for rotate().
std::optional<NewSession> SessionStore::Impl::sign_in(std::string_view token,
                                                      std::optional<std::string_view> user_id) {
  if (user_id) detail::check_signing_in_user(*user_id);
  if (!is_well_formed_token(token)) return std::nullopt;
  const std::string old_id = session_id_for_token(token);
  const std::int64_t at = now();
  const std::optional<Session> current = live_copy(old_id, at);
  if (!current) return std::nullopt;
  if (!user_id && current->is_anonymous()) {
    throw Error(ErrorCode::kInvalidArgument,
                "reauthenticate needs a session with a user; this one is anonymous (sign the user "
                "in with attach_user())");
  }
  std::string user = user_id ? std::string(*user_id) : current->user_id;
  detail::check_may_sign_in(*current, user);
  NewSession signed_in;
  signed_in.token = generate_token();
  QueuedWrite done = commit(AuthenticateWrite{old_id, session_id_for_token(signed_in.token),
                                              std::move(user), at, options_.max_sessions_per_user},
                            at, current->user_id);
  emit_revoked(done.removed);
  if (done.error) std::rethrow_exception(done.error);
  if (!done.stored) return std::nullopt;  // gone meanwhile, or not ours to hand out (as rotate())
  signed_in.session = *std::move(done.stored);
  emit(SessionEvent::of_session(
      user_id ? SessionEventType::kUserAttached : SessionEventType::kReauthenticated, old_id,
      signed_in.session.user_id, signed_in.session.id));
  return signed_in;
}

std::optional<Session> SessionStore::Impl::extend(std::string_view token) {
  if (!is_well_formed_token(token)) return std::nullopt;
  std::optional<Session> extended = touch(session_id_for_token(token), now(), /*forced=*/true);
  if (extended) {
    emit(SessionEvent::of_session(SessionEventType::kExtended, extended->id, extended->user_id));
  }
  return extended;
}

bool SessionStore::Impl::authenticated_within(const Session& session,
                                              std::chrono::seconds window) const {
  if (window.count() < 0) {
    throw Error(ErrorCode::kInvalidArgument, "authenticated_within: the window is " +
                                                 std::to_string(window.count()) +
                                                 " seconds; it must not be negative");
  }
  if (session.is_anonymous() || session.authenticated_at <= 0) return false;
  return saturating_add(session.authenticated_at, window.count()) >= now();
}

// Read from storage, not the cache: the listing includes every other store's sessions. A store
// scoped to a tenant lists its own tenant's only.
SessionPage SessionStore::Impl::list_sessions(SessionQuery query) const {
  detail::check_session_query(query);
  SessionPage page;
  if (options_.tenant_id) {
    if (query.tenant_id && query.tenant_id != options_.tenant_id) return page;  // not ours
    query.tenant_id = options_.tenant_id;
  }
  page.sessions = backend_->list_page(query, now());
  if (page.sessions.size() >= query.limit) page.next_cursor = page.sessions.back().id;
  return page;
}

std::vector<TenantCount> SessionStore::Impl::count_by_tenant() const {
  std::vector<TenantCount> counts = backend_->count_by_tenant(now());
  if (options_.tenant_id) {
    counts.erase(std::remove_if(counts.begin(), counts.end(),
                                [this](const TenantCount& count) {
                                  return count.tenant_id != options_.tenant_id;
                                }),
                 counts.end());
  }
  return counts;
}

std::size_t SessionStore::Impl::revoke_tenant(std::string_view tenant_id) {
  detail::check_text_field(detail::kTenantIdField, tenant_id);
  if (options_.tenant_id && tenant_id != *options_.tenant_id) return 0;  // not ours
  SessionFilter filter;
  filter.tenant_id = std::string(tenant_id);
  const std::size_t removed = revoke_matching(filter).size();
  SessionEvent event =
      SessionEvent::with_detail(SessionEventType::kTenantRevoked, std::string(tenant_id));
  event.count = removed;
  emit(event);
  return removed;
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
  const std::int64_t at = now();
  if (!live_copy(id, at)) return std::nullopt;
  // Update-only: never writes back a session another instance revoked, and changes no column
  // but `data`, so another store's slide is kept.
  QueuedWrite done = commit(UpdateDataWrite{id, std::move(data)}, at);
  if (done.error) std::rethrow_exception(done.error);
  return std::move(done.stored);
}

std::vector<Session> SessionStore::Impl::list_user(std::string_view user_id,
                                                   const std::optional<std::string>& tenant) const {
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
    const MutexLock lock(writes_.mutex());
    const std::int64_t at = now();
    writes_.settle();
    removed = writes_.run([&] { return backend_->remove_expired(at); });
    cache_.erase_expired(at);
    rotated_ids_.forget_expired(at);
  }
  if (removed > 0) emit(SessionEvent::purged(removed));
  return removed;
}

// ------------------------------------------------------------------------------------------------
// The reaper's run
//
// The cache is swept once at the end: expired entries are never returned, so they may stay a
// little longer.
// ------------------------------------------------------------------------------------------------

std::size_t SessionStore::Impl::purge_in_batches(const detail::Reaper& reaper) {
  const std::int64_t at = now();
  const std::size_t batch = options_.reaper_batch_size;
  const auto in_batches = [this, batch, &reaper](auto&& remove_batch) {
    std::size_t total = 0;
    for (;;) {
      std::size_t removed = 0;
      {
        const MutexLock lock(writes_.mutex());
        writes_.settle();
        removed = writes_.run(remove_batch);
      }
      total += removed;
      if (removed < batch || reaper.stopping()) return total;
    }
  };
  const std::size_t total = in_batches([&] { return backend_->remove_expired_batch(at, batch); });
  if (!reaper.stopping()) {
    in_batches([&] { return backend_->remove_expired_rotated(at, batch); });
  }
  {
    const MutexLock lock(writes_.mutex());
    cache_.erase_expired(at);
    rotated_ids_.forget_expired(at);
  }
  if (total > 0) emit(SessionEvent::purged(total));
  return total;
}

// A failure is retried next interval; it is counted, and told to the listener, so that a reaper
// that keeps failing (a full disk, a lost server) is seen.
void SessionStore::Impl::reap(const detail::Reaper& reaper) noexcept {
  bool failed = false;
  SessionEvent failure = SessionEvent::with_detail(SessionEventType::kReaperFailed, {});
  try {
    purge_in_batches(reaper);
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
}

std::size_t SessionStore::Impl::size() const { return cache_.size(); }

StoreStats SessionStore::Impl::stats() const {
  StoreStats stats;
  stats.sessions = cache_.size();
  stats.users = cache_.users();
  stats.cache_hits = cache_hits_.total();
  stats.cache_misses = cache_misses_.total() + misses_unread_.total();
  stats.writes = writes_.writes();
  stats.write_failures = writes_.failures();
  stats.skipped_rows = skipped_rows_;
  stats.reaper_failures = reaper_failures_;
  stats.miss_lookups = miss_lookups_.made();
  stats.miss_lookups_refused = miss_lookups_.refused() + misses_unread_.total();
  stats.miss_lookup_failures = miss_lookup_failures_;
  stats.last_error = writes_.last_error();
  if (feed_) {
    stats.following_changes = feed_->following();
    stats.changes_applied = feed_->applied();
    stats.change_feed_losses = feed_->losses();
    stats.change_feed_reloads = feed_->reloads();
  }
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
  if (user_id.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "user_id must not be empty (a session without a user: create_anonymous())");
  }
  return impl_->create(user_id, std::move(options));
}
NewSession SessionStore::create_anonymous(CreateOptions options) {
  return impl_->create({}, std::move(options));
}
std::optional<NewSession> SessionStore::attach_user(std::string_view token,
                                                    std::string_view user_id) {
  return impl_->sign_in(token, user_id);
}
std::optional<NewSession> SessionStore::reauthenticate(std::string_view token) {
  return impl_->sign_in(token, std::nullopt);
}
bool SessionStore::authenticated_within(const Session& session, std::chrono::seconds window) const {
  return impl_->authenticated_within(session, window);
}
std::optional<Session> SessionStore::extend(std::string_view token) { return impl_->extend(token); }
SessionPage SessionStore::list_sessions(const SessionQuery& query) const {
  return impl_->list_sessions(query);
}
std::vector<TenantCount> SessionStore::count_by_tenant() const { return impl_->count_by_tenant(); }
std::size_t SessionStore::revoke_tenant(std::string_view tenant_id) {
  return impl_->revoke_tenant(tenant_id);
}
std::optional<Session> SessionStore::validate(std::string_view token) {
  return impl_->validate(token);
}
std::optional<Session> SessionStore::find(std::string_view id) const { return impl_->find(id); }
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
std::vector<Session> SessionStore::list_user(std::string_view user_id) const {
  return impl_->list_user(user_id, std::nullopt);
}
std::vector<Session> SessionStore::list_user(std::string_view user_id,
                                             std::string_view tenant_id) const {
  return impl_->list_user(user_id, std::string(tenant_id));
}
std::size_t SessionStore::purge_expired() { return impl_->purge_expired(); }
std::size_t SessionStore::size() const { return impl_->size(); }
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
StoreStats SessionStore::stats() const { return impl_->stats(); }

}  // namespace pylon

// pylon-sessions: SessionCache (see session_cache.hpp for what it promises).
#include "session_cache.hpp"

#include <chrono>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <random>
#include <type_traits>

namespace pylon::detail {

// ------------------------------------------------------------------------------------------------
// Entry: one session in one allocation
//
// The header below, then the bytes of the text fields and data, one after the other in the order
// of Field (optional ones only when set). Immutable once built, but for the user links: a change
// to a session is a new Entry swapped in under the locks, so a reader holding either lock reads a
// whole session.
// ------------------------------------------------------------------------------------------------

struct SessionCache::Entry {
  enum Field : std::size_t { kUserId, kTenantId, kDevice, kIp, kData, kIdpSessionId, kFields };

  SessionDigest id{};
  // The user's sessions form a list through their entries; user_heads_ points at its head.
  Entry* user_previous = nullptr;
  Entry* user_next = nullptr;
  std::int64_t created_at = 0;
  std::int64_t expires_at = 0;
  std::int64_t last_seen_at = 0;
  std::int64_t absolute_expires_at = 0;
  std::array<std::uint32_t, kFields> sizes{};
  std::uint8_t present = 0;  // bit f: optional field f is set

  const char* bytes() const noexcept {
    // The field bytes are allocated right behind the header (make_pending).
    // NOLINTNEXTLINE(*-reinterpret-cast,*-pointer-arithmetic)
    return reinterpret_cast<const char*>(this + 1);
  }
  std::string_view field(Field which) const noexcept {
    std::size_t offset = 0;
    for (std::size_t i = 0; i < which; ++i) offset += sizes[i];
    return {bytes() + offset, sizes[which]};  // NOLINT(*-pointer-arithmetic)
  }
  bool has(Field which) const noexcept { return (present & (1U << which)) != 0; }
  void copy_optional(Field which, std::optional<std::string>* out) const {
    if (has(which)) {
      out->emplace(field(which));
    } else {
      out->reset();
    }
  }
  // Assigns rather than constructs, so a Session that is reused keeps its buffers.
  void copy_to(Session* out) const {
    out->id = session_id_of(id);
    out->user_id.assign(field(kUserId));
    copy_optional(kTenantId, &out->tenant_id);
    out->created_at = created_at;
    out->expires_at = expires_at;
    out->last_seen_at = last_seen_at;
    copy_optional(kDevice, &out->device);
    copy_optional(kIp, &out->ip);
    out->data.assign(field(kData));
    out->absolute_expires_at = absolute_expires_at;
    copy_optional(kIdpSessionId, &out->idp_session_id);
  }
};

void SessionCache::EntryDelete::operator()(Entry* entry) const noexcept {
  static_assert(std::is_trivially_destructible_v<Entry>);
  ::operator delete(entry);
}

SessionCache::Pending SessionCache::make_pending(const Session& session) {
  SessionDigest id{};
  if (!parse_session_id(session.id, &id)) {
    throw Error(ErrorCode::kInternal, "the session cache was given a malformed session id");
  }
  const std::array<const std::string*, Entry::kFields> values = {
      &session.user_id,
      session.tenant_id ? &*session.tenant_id : nullptr,
      session.device ? &*session.device : nullptr,
      session.ip ? &*session.ip : nullptr,
      &session.data,
      session.idp_session_id ? &*session.idp_session_id : nullptr};
  std::array<std::uint32_t, Entry::kFields> sizes{};
  std::uint8_t present = 0;
  std::size_t total = 0;
  for (std::size_t i = 0; i < Entry::kFields; ++i) {
    if (values[i] == nullptr) continue;
    if (values[i]->size() > std::numeric_limits<std::uint32_t>::max()) {
      throw Error(ErrorCode::kInvalidArgument, "a session field is larger than 4 GiB");
    }
    sizes[i] = static_cast<std::uint32_t>(values[i]->size());
    present = static_cast<std::uint8_t>(present | (1U << i));
    total += values[i]->size();
  }
  // One allocation, the header's size plus the field bytes: operator new's alignment suits the
  // header, and the bytes need none.
  static_assert(alignof(Entry) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__);
  OwnedEntry entry(new (::operator new(sizeof(Entry) + total)) Entry);
  char* bytes = const_cast<char*>(entry->bytes());  // NOLINT(*-const-cast): ours, just allocated
  for (const std::string* value : values) {
    if (value == nullptr) continue;
    // NOLINTNEXTLINE(bugprone-not-null-terminated-result): fields are sized, not terminated
    std::memcpy(bytes, value->data(), value->size());
    bytes += value->size();  // NOLINT(*-pointer-arithmetic)
  }
  entry->id = id;
  entry->created_at = session.created_at;
  entry->expires_at = session.expires_at;
  entry->last_seen_at = session.last_seen_at;
  entry->absolute_expires_at = session.absolute_expires_at;
  entry->sizes = sizes;
  entry->present = present;
  const std::uint64_t user_hash = hash_of(entry->field(Entry::kUserId));
  return Pending{std::move(entry), hash_of(id), user_hash};
}

// ------------------------------------------------------------------------------------------------
// SlotTable: open addressing with linear probing
//
// At most 3/4 full, so a probe always ends at an empty slot. The slot keeps the key's hash, so a
// probe compares hashes and touches an entry only when they match.
// ------------------------------------------------------------------------------------------------

template <typename Matches>
std::size_t SessionCache::SlotTable::find(std::uint64_t hash, Matches matches) const noexcept {
  if (slots_.empty()) return kNone;
  const std::size_t mask = slots_.size() - 1;
  for (std::size_t index = home_of(hash);; index = (index + 1) & mask) {
    const Slot& slot = slots_[index];
    if (slot.entry == nullptr) return kNone;
    if (slot.hash == hash && matches(slot.entry)) return index;
  }
}

void SessionCache::SlotTable::insert(std::uint64_t hash, Entry* entry) {
  reserve(size_ + 1);
  const std::size_t mask = slots_.size() - 1;
  std::size_t index = home_of(hash);
  while (slots_[index].entry != nullptr) index = (index + 1) & mask;
  slots_[index] = Slot{hash, entry};
  ++size_;
}

// Backward-shift deletion: each following slot of the run moves into the hole unless its home
// lies cyclically in (hole, slot], where moving it would put it before its home.
void SessionCache::SlotTable::erase_at(std::size_t index) noexcept {
  const std::size_t mask = slots_.size() - 1;
  std::size_t hole = index;
  for (std::size_t next = (hole + 1) & mask; slots_[next].entry != nullptr;
       next = (next + 1) & mask) {
    const std::size_t home = home_of(slots_[next].hash);
    const bool stays = hole <= next ? (hole < home && home <= next) : (hole < home || home <= next);
    if (!stays) {
      slots_[hole] = slots_[next];
      hole = next;
    }
  }
  slots_[hole] = Slot{};
  --size_;
}

void SessionCache::SlotTable::reserve(std::size_t entries) {
  std::size_t capacity = slots_.empty() ? 16 : slots_.size();
  while (entries * 4 > capacity * 3) capacity *= 2;
  if (capacity != slots_.size()) rehash(capacity);
}

void SessionCache::SlotTable::rehash(std::size_t capacity) {
  std::vector<Slot> old(capacity);
  old.swap(slots_);
  const std::size_t mask = capacity - 1;
  for (const Slot& slot : old) {
    if (slot.entry == nullptr) continue;
    std::size_t index = home_of(slot.hash);
    while (slots_[index].entry != nullptr) index = (index + 1) & mask;
    slots_[index] = slot;
  }
}

// Prefetches are hints: an address they compute may be stale by the time it is read, which costs
// nothing but the hint.
void SessionCache::SlotTable::prefetch(std::uint64_t hash) const noexcept {
#if defined(__GNUC__)
  if (!slots_.empty()) __builtin_prefetch(&slots_[home_of(hash)]);
#else
  (void)hash;
#endif
}

void SessionCache::SlotTable::prefetch_entry(std::uint64_t hash) const noexcept {
#if defined(__GNUC__)
  if (slots_.empty()) return;
  const Slot& slot = slots_[home_of(hash)];
  if (slot.entry != nullptr && slot.hash == hash) {
    __builtin_prefetch(slot.entry);           // the user links
    __builtin_prefetch(slot.entry->bytes());  // the user id, compared by link_user()
  }
#else
  (void)hash;
#endif
}

// ------------------------------------------------------------------------------------------------
// Hashing
//
// Keyed by a per-process seed and mixing every byte, so rows of a hostile database file cannot
// be chosen to pile up in one run of a table. Each 8-byte word goes through splitmix64's
// finaliser, chained; not cryptographic, and it need not be: it only spreads keys.
// ------------------------------------------------------------------------------------------------

namespace {

std::uint64_t mix(std::uint64_t value) noexcept {
  value ^= value >> 30;
  value *= 0xbf58476d1ce4e5b9ULL;
  value ^= value >> 27;
  value *= 0x94d049bb133111ebULL;
  value ^= value >> 31;
  return value;
}

std::uint64_t process_seed() noexcept {
  static const std::uint64_t kSeed = [] {
    auto seed =
        static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    try {
      std::random_device device;
      seed ^= (std::uint64_t{device()} << 32U) | device();
    } catch (...) {  // NOLINT(bugprone-empty-catch): the clock alone still varies the seed
    }
    return mix(seed);
  }();
  return kSeed;
}

std::uint64_t hash_bytes(const void* data, std::size_t size) noexcept {
  const auto* bytes = static_cast<const unsigned char*>(data);
  std::uint64_t hash = process_seed() ^ size;
  for (; size >= sizeof(std::uint64_t); size -= sizeof(std::uint64_t)) {
    std::uint64_t word = 0;
    std::memcpy(&word, bytes, sizeof word);
    hash = mix(hash ^ word);
    bytes += sizeof word;  // NOLINT(*-pointer-arithmetic)
  }
  if (size > 0) {
    std::uint64_t tail = 0;
    std::memcpy(&tail, bytes, size);
    hash = mix(hash ^ tail);
  }
  return hash;
}

}  // namespace

std::uint64_t SessionCache::hash_of(const SessionDigest& id) noexcept {
  return hash_bytes(id.data(), id.size());
}

std::uint64_t SessionCache::hash_of(std::string_view user_id) noexcept {
  return hash_bytes(user_id.data(), user_id.size());
}

// ------------------------------------------------------------------------------------------------
// Reads
// ------------------------------------------------------------------------------------------------

SessionCache::SessionCache() = default;

SessionCache::~SessionCache() {
  for (Shard& shard : shards_) {
    for (const Slot& slot : shard.entries.slots()) EntryDelete()(slot.entry);
  }
}

SessionCache::Found SessionCache::find(const SessionDigest& id, std::int64_t at,
                                       Session* out) const {
  const Shard& shard = shards_[shard_index(id)];
  const std::uint64_t hash = hash_of(id);
  const std::shared_lock<std::shared_mutex> lock(shard.mutex);
  const std::size_t index =
      shard.entries.find(hash, [&id](const Entry* entry) { return entry->id == id; });
  if (index == SlotTable::kNone) return Found::kNone;
  const Entry& entry = *shard.entries.entry_at(index);
  entry.copy_to(out);
  return entry.expires_at > at ? Found::kLive : Found::kExpired;
}

std::optional<Session> SessionCache::find_live(const SessionDigest& id, std::int64_t at) const {
  Session session;
  if (find(id, at, &session) != Found::kLive) return std::nullopt;
  return session;
}

std::vector<Session> SessionCache::of_user(std::string_view user_id) const {
  std::vector<Session> sessions;
  const std::uint64_t hash = hash_of(user_id);
  const std::shared_lock<std::shared_mutex> lock(users_mutex_);
  const std::size_t index = user_heads_.find(
      hash, [user_id](const Entry* head) { return head->field(Entry::kUserId) == user_id; });
  if (index == SlotTable::kNone) return sessions;
  for (const Entry* entry = user_heads_.entry_at(index); entry != nullptr;
       entry = entry->user_next) {
    entry->copy_to(&sessions.emplace_back());
  }
  return sessions;
}

std::vector<std::pair<std::string, std::string>> SessionCache::with_idp_session(
    std::string_view idp_session_id, const std::optional<std::string>& tenant) const {
  std::vector<std::pair<std::string, std::string>> matches;
  for (const Shard& shard : shards_) {
    const std::shared_lock<std::shared_mutex> lock(shard.mutex);
    for (const Slot& slot : shard.entries.slots()) {
      const Entry* entry = slot.entry;
      if (entry == nullptr || !entry->has(Entry::kIdpSessionId) ||
          entry->field(Entry::kIdpSessionId) != idp_session_id) {
        continue;
      }
      if (tenant && (!entry->has(Entry::kTenantId) || entry->field(Entry::kTenantId) != *tenant)) {
        continue;
      }
      matches.emplace_back(session_id_of(entry->id), std::string(entry->field(Entry::kUserId)));
    }
  }
  return matches;
}

std::size_t SessionCache::users() const {
  const std::shared_lock<std::shared_mutex> lock(users_mutex_);
  return user_heads_.size();
}

// ------------------------------------------------------------------------------------------------
// Writes
// ------------------------------------------------------------------------------------------------

// A new entry becomes the head of its user's list.
void SessionCache::link_user(Entry* entry, std::uint64_t user_hash) {
  const std::string_view user_id = entry->field(Entry::kUserId);
  const std::size_t index = user_heads_.find(
      user_hash, [user_id](const Entry* head) { return head->field(Entry::kUserId) == user_id; });
  if (index == SlotTable::kNone) {
    user_heads_.insert(user_hash, entry);
    return;
  }
  Entry* head = user_heads_.entry_at(index);
  entry->user_next = head;
  head->user_previous = entry;
  user_heads_.set_entry_at(index, entry);
}

void SessionCache::unlink_user(Entry* entry) noexcept {
  if (entry->user_previous != nullptr) {
    entry->user_previous->user_next = entry->user_next;
    if (entry->user_next != nullptr) entry->user_next->user_previous = entry->user_previous;
  } else {
    const std::size_t index =
        user_heads_.find(hash_of(entry->field(Entry::kUserId)),
                         [entry](const Entry* head) { return head == entry; });
    if (index != SlotTable::kNone) {
      if (entry->user_next != nullptr) {
        entry->user_next->user_previous = nullptr;
        user_heads_.set_entry_at(index, entry->user_next);
      } else {
        user_heads_.erase_at(index);
      }
    }
  }
  entry->user_previous = nullptr;
  entry->user_next = nullptr;
}

SessionCache::OwnedEntry SessionCache::insert_locked(Shard& shard, Pending pending) {
  // Room first: after these two, nothing below allocates, so nothing below throws.
  shard.entries.reserve(shard.entries.size() + 1);
  user_heads_.reserve(user_heads_.size() + 1);
  const SessionDigest& id = pending.entry->id;
  const std::size_t index =
      shard.entries.find(pending.id_hash, [&id](const Entry* cached) { return cached->id == id; });
  Entry* added = pending.entry.release();  // owned by the shard's table from here
  OwnedEntry replaced;
  if (index == SlotTable::kNone) {
    shard.entries.insert(pending.id_hash, added);
    size_.fetch_add(1, std::memory_order_relaxed);
  } else {
    replaced.reset(shard.entries.entry_at(index));
    unlink_user(replaced.get());
    shard.entries.set_entry_at(index, added);
  }
  link_user(added, pending.user_hash);
  return replaced;
}

void SessionCache::put(const Session& session) {
  Pending pending = make_pending(session);  // allocates before any lock
  OwnedEntry replaced;
  {
    Shard& shard = shards_[shard_index(pending.entry->id)];
    const std::unique_lock<std::shared_mutex> users_lock(users_mutex_);
    const std::unique_lock<std::shared_mutex> lock(shard.mutex);
    replaced = insert_locked(shard, std::move(pending));
  }
  replaced.reset();  // the free, once the locks are released
}

bool SessionCache::erase(const SessionDigest& id) {
  Shard& shard = shards_[shard_index(id)];
  const std::uint64_t hash = hash_of(id);
  OwnedEntry erased;  // freed after the locks are released
  const std::unique_lock<std::shared_mutex> users_lock(users_mutex_);
  const std::unique_lock<std::shared_mutex> lock(shard.mutex);
  const std::size_t index =
      shard.entries.find(hash, [&id](const Entry* entry) { return entry->id == id; });
  if (index == SlotTable::kNone) return false;
  erased.reset(shard.entries.entry_at(index));
  unlink_user(erased.get());
  shard.entries.erase_at(index);
  size_.fetch_sub(1, std::memory_order_relaxed);
  return true;
}

bool SessionCache::erase(std::string_view id) {
  SessionDigest digest{};
  return parse_session_id(id, &digest) && erase(digest);
}

// Collects a shard's expired entries first, then erases them one by one: a backward shift moves
// slots, so erasing while walking the table could skip one.
std::size_t SessionCache::erase_expired(std::int64_t at) {
  std::size_t erased = 0;
  std::vector<Entry*> expired;
  const std::unique_lock<std::shared_mutex> users_lock(users_mutex_);
  for (Shard& shard : shards_) {
    const std::unique_lock<std::shared_mutex> lock(shard.mutex);
    expired.clear();
    for (const Slot& slot : shard.entries.slots()) {
      if (slot.entry != nullptr && slot.entry->expires_at <= at) expired.push_back(slot.entry);
    }
    for (Entry* entry : expired) {
      const std::size_t index = shard.entries.find(
          hash_of(entry->id), [entry](const Entry* cached) { return cached == entry; });
      unlink_user(entry);
      if (index != SlotTable::kNone) shard.entries.erase_at(index);
      EntryDelete()(entry);
    }
    erased += expired.size();
  }
  size_.fetch_sub(erased, std::memory_order_relaxed);
  return erased;
}

// ------------------------------------------------------------------------------------------------
// Loader
// ------------------------------------------------------------------------------------------------

// The slots of the session kAhead places on, and the user head of the one kAhead / 2 places on
// (whose slot the first prefetch brought in), are fetched while this one is inserted.
void SessionCache::insert_batch(std::vector<Pending>* pending_sessions) {
  constexpr std::size_t kAhead = 8;
  std::vector<Pending>& pending = *pending_sessions;
  for (std::size_t i = 0; i < pending.size(); ++i) {
    if (i + kAhead < pending.size()) {
      const Pending& ahead = pending[i + kAhead];
      shards_[shard_index(ahead.entry->id)].entries.prefetch(ahead.id_hash);
      user_heads_.prefetch(ahead.user_hash);
    }
    if (i + kAhead / 2 < pending.size()) {
      user_heads_.prefetch_entry(pending[i + kAhead / 2].user_hash);
    }
    // The shard first: the argument moved from may be built before the other is evaluated.
    Shard& shard = shards_[shard_index(pending[i].entry->id)];
    // A new id replaces nothing; a repeated one replaces its earlier row, freed here.
    insert_locked(shard, std::move(pending[i]));
  }
  pending.clear();
}

SessionCache::Loader::Loader(SessionCache& cache) : cache_(cache), users_lock_(cache.users_mutex_) {
  for (std::size_t i = 0; i < kShards; ++i) {
    shard_locks_[i] = std::unique_lock<std::shared_mutex>(cache.shards_[i].mutex);
  }
}

SessionCache::Loader::~Loader() { stop_inserter(); }

void SessionCache::Loader::add(const Session& session) {
  if (batch_.size == batch_.rows.size()) batch_.rows.emplace_back();
  batch_.rows[batch_.size++] = session;  // assignment: the strings reuse their buffers
  if (batch_.size == kBatch) hand_off();
}

void SessionCache::Loader::finish() {
  if (!inserter_.joinable()) {  // a small load: no thread was needed
    insert_rows(&batch_);
    return;
  }
  if (batch_.size > 0) hand_off();
  stop_inserter();
  const std::lock_guard<std::mutex> lock(queue_mutex_);
  if (failure_) std::rethrow_exception(failure_);
}

// Builds the entries of the batch's rows and inserts them; empties the batch, keeping its
// buffers. Runs on the inserter, or on the loading thread when there is none.
void SessionCache::Loader::insert_rows(Batch* batch) {
  for (std::size_t i = 0; i < batch->size; ++i) pending_.push_back(make_pending(batch->rows[i]));
  batch->size = 0;
  cache_.insert_batch(&pending_);
}

// Queues the full batch for the inserter, starting it the first time, and takes a spare one to
// fill next; waits while kQueuedBatches are queued already.
void SessionCache::Loader::hand_off() {
  if (!inserter_.joinable()) inserter_ = std::thread([this] { inserter_loop(); });
  {
    std::unique_lock<std::mutex> lock(queue_mutex_);
    queue_drained_.wait(lock, [this] { return queue_.size() < kQueuedBatches || failure_; });
    if (failure_) std::rethrow_exception(failure_);
    queue_.push_back(std::move(batch_));
    batch_ = Batch();
    if (!spare_.empty()) {
      batch_ = std::move(spare_.back());
      spare_.pop_back();
    }
  }
  queue_filled_.notify_one();
}

// Inserts the queued batches in order until closing_ is set and the queue is empty. After a
// failure it only drains the queue, so add() never waits on it for ever.
void SessionCache::Loader::inserter_loop() noexcept {
  for (;;) {
    Batch batch;
    bool failed = false;
    {
      std::unique_lock<std::mutex> lock(queue_mutex_);
      queue_filled_.wait(lock, [this] { return !queue_.empty() || closing_; });
      if (queue_.empty()) return;
      batch = std::move(queue_.front());
      queue_.pop_front();
      failed = failure_ != nullptr;
    }
    queue_drained_.notify_one();
    try {
      if (!failed) insert_rows(&batch);
      batch.size = 0;
      const std::lock_guard<std::mutex> lock(queue_mutex_);
      spare_.push_back(std::move(batch));
    } catch (...) {
      pending_.clear();
      const std::lock_guard<std::mutex> lock(queue_mutex_);
      failure_ = std::current_exception();
    }
  }
}

void SessionCache::Loader::stop_inserter() noexcept {
  if (!inserter_.joinable()) return;
  {
    const std::lock_guard<std::mutex> lock(queue_mutex_);
    closing_ = true;
  }
  queue_filled_.notify_one();
  inserter_.join();
}

}  // namespace pylon::detail

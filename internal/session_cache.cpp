// pylon-sessions: SessionCache (see internal/session_cache.hpp for what it promises).
#include "internal/session_cache.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <random>
#include <type_traits>
#include <utility>

#include "internal/session_row.hpp"

namespace pylon::detail {

// ------------------------------------------------------------------------------------------------
// Entry: one session in one allocation
//
// The header below, then the bytes of the text and byte fields, one after the other in the order
// of kSessionColumns (optional ones only when set). Which member goes where follows the one table
// of columns (internal/session_row.hpp): the id is kept as its digest, every integer column in
// `integers`, every text or byte column in the bytes. Immutable once built, but for the user
// links: a change to a session is a new Entry swapped in under the locks, so a reader holding
// either lock reads a whole session.
// ------------------------------------------------------------------------------------------------

namespace {

constexpr std::size_t kColumns = kSessionColumns.size();
constexpr std::size_t kIdColumn = session_column_index("id");

constexpr bool is_integer_column(std::size_t column) {
  return kSessionColumns[column].kind == ColumnKind::kInteger;
}

// Where column c lives: its index among the integer columns, or among the byte-stored ones.
constexpr std::array<std::size_t, kColumns> kSlotOf = [] {
  std::array<std::size_t, kColumns> slots{};
  std::size_t integers = 0;
  std::size_t texts = 0;
  for (std::size_t c = 0; c < kColumns; ++c) {
    if (c == kIdColumn) continue;
    slots[c] = is_integer_column(c) ? integers++ : texts++;
  }
  return slots;
}();
constexpr std::size_t kIntegerSlots = [] {
  std::size_t count = 0;
  for (std::size_t c = 0; c < kColumns; ++c) {
    if (is_integer_column(c)) ++count;
  }
  return count;
}();
constexpr std::size_t kTextSlots = kColumns - kIntegerSlots - 1;  // all but the id
static_assert(kColumns <= 32, "Entry::present has a bit per column");

std::size_t column_of(const SessionColumn& column) noexcept {
  return static_cast<std::size_t>(&column - kSessionColumns.data());
}

}  // namespace

struct SessionCache::Entry {
  // The slots the cache itself reads.
  static constexpr std::size_t kUserId = kSlotOf[session_column_index("user_id")];
  static constexpr std::size_t kTenantId = kSlotOf[session_column_index("tenant_id")];
  static constexpr std::size_t kIdpSessionId = kSlotOf[session_column_index("idp_session_id")];
  static constexpr std::size_t kExpiresAt = kSlotOf[session_column_index("expires_at")];

  SessionDigest id{};
  // The user's sessions form a list through their entries; user_heads_ points at its head.
  Entry* user_previous = nullptr;
  Entry* user_next = nullptr;
  std::array<std::int64_t, kIntegerSlots> integers{};
  std::array<std::uint32_t, kTextSlots> sizes{};
  std::uint32_t present = 0;  // bit c: nullable column c is set

  const char* bytes() const noexcept {
    // The field bytes are allocated right behind the header (make_pending).
    // NOLINTNEXTLINE(*-reinterpret-cast,*-pointer-arithmetic)
    return reinterpret_cast<const char*>(this + 1);
  }
  std::string_view field(std::size_t slot) const noexcept {
    std::size_t offset = 0;
    for (std::size_t i = 0; i < slot; ++i) offset += sizes[i];
    return {bytes() + offset, sizes[slot]};  // NOLINT(*-pointer-arithmetic)
  }
  bool has_column(std::size_t column) const noexcept { return (present & (1U << column)) != 0; }
  bool has_tenant() const noexcept { return has_column(session_column_index("tenant_id")); }
  bool has_idp_session() const noexcept {
    return has_column(session_column_index("idp_session_id"));
  }
  std::int64_t expires_at() const noexcept { return integers[kExpiresAt]; }

  // Assigns rather than constructs, so a Session that is reused keeps its buffers.
  void copy_to(Session* out) const {
    for_each_session_field(*out, [this](const SessionColumn& column, auto& member) {
      using Member = std::decay_t<decltype(member)>;
      const std::size_t c = column_of(column);
      if constexpr (std::is_same_v<Member, std::int64_t>) {
        member = integers[kSlotOf[c]];
      } else if constexpr (std::is_same_v<Member, std::optional<std::int64_t>>) {
        if (has_column(c)) {
          member = integers[kSlotOf[c]];
        } else {
          member.reset();
        }
      } else if constexpr (std::is_same_v<Member, std::optional<std::string>>) {
        if (has_column(c)) {
          member.emplace(field(kSlotOf[c]));
        } else {
          member.reset();
        }
      } else if (c == kIdColumn) {
        member = session_id_of(id);
      } else {
        member.assign(field(kSlotOf[c]));
      }
    });
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
  // The header first, then the bytes of the text fields, in slot order.
  Entry header;
  std::array<const std::string*, kTextSlots> texts{};
  std::size_t total = 0;
  for_each_session_field(session, [&](const SessionColumn& column, const auto& member) {
    using Member = std::decay_t<decltype(member)>;
    const std::size_t c = column_of(column);
    if constexpr (std::is_same_v<Member, std::int64_t>) {
      header.integers[kSlotOf[c]] = member;
    } else if constexpr (std::is_same_v<Member, std::optional<std::int64_t>>) {
      if (member) {
        header.integers[kSlotOf[c]] = *member;
        header.present |= 1U << c;
      }
    } else {
      const std::string* text = nullptr;
      if constexpr (std::is_same_v<Member, std::optional<std::string>>) {
        if (member) {
          text = &*member;
          header.present |= 1U << c;
        }
      } else if (c != kIdColumn) {
        text = &member;
      }
      if (text == nullptr) return;
      if (text->size() > std::numeric_limits<std::uint32_t>::max()) {
        throw Error(ErrorCode::kInvalidArgument, "a session field is larger than 4 GiB");
      }
      texts[kSlotOf[c]] = text;
      header.sizes[kSlotOf[c]] = static_cast<std::uint32_t>(text->size());
      total += text->size();
    }
  });
  // One allocation, the header's size plus the field bytes: operator new's alignment suits the
  // header, and the bytes need none.
  static_assert(alignof(Entry) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__);
  OwnedEntry entry(new (::operator new(sizeof(Entry) + total)) Entry(header));
  char* bytes = const_cast<char*>(entry->bytes());  // NOLINT(*-const-cast): ours, just allocated
  for (const std::string* text : texts) {
    if (text == nullptr) continue;
    // NOLINTNEXTLINE(bugprone-not-null-terminated-result): fields are sized, not terminated
    std::memcpy(bytes, text->data(), text->size());
    bytes += text->size();  // NOLINT(*-pointer-arithmetic)
  }
  entry->id = id;
  const std::uint64_t user_hash = hash_of(entry->field(Entry::kUserId));
  return Pending{std::move(entry), hash_of(id), user_hash};
}

// ------------------------------------------------------------------------------------------------
// SlotTable: bucketized cuckoo hashing
//
// A slot index is bucket * kWays + way. The slot keeps the key's hash, so a lookup compares
// hashes and touches an entry only when they match.
// ------------------------------------------------------------------------------------------------

template <typename Matches>
std::size_t SessionCache::SlotTable::find(std::uint64_t hash, Matches matches) const noexcept {
  if (buckets_.empty()) return kNone;
  for (const std::size_t bucket : {first_bucket(hash), second_bucket(hash)}) {
    for (std::size_t way = 0; way < kWays; ++way) {
      const Slot& slot = buckets_[bucket].slots[way];
      if (slot.entry != nullptr && slot.hash == hash && matches(slot.entry)) {
        return bucket * kWays + way;
      }
    }
  }
  return kNone;
}

namespace {

// All ones when `condition` holds, else zero.
std::uintptr_t mask_if(bool condition) noexcept {
  return std::uintptr_t{0} - static_cast<std::uintptr_t>(condition);
}

// `if_set` where `mask` is all ones, `if_clear` where it is zero: a select by arithmetic, which
// compilers keep free of branches. A ternary promises no such thing: GCC made branches of some in
// probe(), and their mispredictions, more frequent for a miss, made it measurably slower than a
// hit (bench/validate_timing measures the difference).
template <typename T>
T* select(std::uintptr_t mask, T* if_set, T* if_clear) noexcept {
  // NOLINTBEGIN(*-reinterpret-cast,performance-no-int-to-ptr): pointers as bits, and back
  return reinterpret_cast<T*>((reinterpret_cast<std::uintptr_t>(if_set) & mask) |
                              (reinterpret_cast<std::uintptr_t>(if_clear) & ~mask));
  // NOLINTEND(*-reinterpret-cast,performance-no-int-to-ptr)
}

}  // namespace

// Every slot is read and folded in by select(), so the instructions and memory reads are the
// same wherever (and whether) the hash is found. The slots are walked backwards in a fixed order,
// so that each pick ends as the first candidate in the forward order. The decoy is the first
// session at or after a slot the hash chooses, wrapping around, so that decoys are spread over
// every way of the buckets: a decoy that serves fewer unknown tokens is as seldom in the
// processor's caches as a hit's session is (bench/validate_timing --cold).
SessionCache::SlotTable::Probe SessionCache::SlotTable::probe(std::uint64_t hash) const noexcept {
  if (buckets_.empty()) return {};
  const std::array<const Bucket*, 2> buckets = {&buckets_[first_bucket(hash)],
                                                &buckets_[second_bucket(hash)]};
  constexpr std::size_t kSlots = 2 * kWays;
  const std::size_t start = (hash >> 40U) % kSlots;
  Probe probe;
  const Entry* first_session = nullptr;
  const Entry* first_session_from_start = nullptr;
  for (std::size_t at = kSlots; at-- > 0;) {
    const Slot& slot = buckets[at / kWays]->slots[at % kWays];
    const Entry* entry = slot.entry;
    // An empty slot's entry is null and its hash 0: untagged, but no session.
    const std::uintptr_t session =
        mask_if(entry != nullptr) & mask_if((slot.hash & kRotatedTag) == 0);
    probe.match = select(mask_if(slot.hash == hash), entry, probe.match);
    probe.tagged = select(mask_if(slot.hash == (hash | kRotatedTag)), entry, probe.tagged);
    first_session = select(session, entry, first_session);
    first_session_from_start =
        select(session & mask_if(at >= start), entry, first_session_from_start);
  }
  probe.decoy =
      select(mask_if(first_session_from_start != nullptr), first_session_from_start, first_session);
  return probe;
}

const SessionCache::Entry* SessionCache::SlotTable::untagged_entry_after(
    std::uint64_t hash) const noexcept {
  if (buckets_.empty()) return nullptr;
  const std::size_t mask = buckets_.size() - 1;
  const std::size_t start = first_bucket(hash);
  for (std::size_t bucket = (start + 1) & mask;; bucket = (bucket + 1) & mask) {
    for (const Slot& slot : buckets_[bucket].slots) {
      if (slot.entry != nullptr && (slot.hash & kRotatedTag) == 0) return slot.entry;
    }
    if (bucket == start) return nullptr;
  }
}

void SessionCache::SlotTable::insert(std::uint64_t hash, Entry* entry) {
  reserve(size_ + 1);
  std::size_t index = make_room(hash);
  // No path within the search bound: a bigger table (rarely needed at 3/4 full or less).
  for (std::size_t buckets = buckets_.size() * 2; index == kNone; buckets *= 2) {
    rehash(buckets);
    index = make_room(hash);
  }
  slot_at(index) = Slot{hash, entry};
  ++size_;
}

// The search is a tree of buckets: the roots are the key's two, and a bucket's children are the
// other buckets of the entries it holds, each bucket at most once. Reaching a bucket with a free
// slot, each entry on the way back to the root moves one level down, into the slot its child
// freed, and the root's slot is the key's.
std::size_t SessionCache::SlotTable::make_room(std::uint64_t hash) noexcept {
  struct Node {
    std::size_t bucket;
    std::size_t parent;  // index in `nodes`; kNone for a root
    std::size_t way;     // the parent's slot whose entry would move into this bucket
  };
  constexpr std::size_t kMaxNodes = 2 + 2 * kWays + 2 * kWays * kWays;  // three levels
  std::array<Node, kMaxNodes> nodes{};
  std::size_t count = 0;
  const auto visited = [&nodes, &count](std::size_t bucket) {
    return std::any_of(nodes.begin(), nodes.begin() + static_cast<std::ptrdiff_t>(count),
                       [bucket](const Node& node) { return node.bucket == bucket; });
  };
  nodes[count++] = {first_bucket(hash), kNone, 0};
  nodes[count++] = {second_bucket(hash), kNone, 0};
  for (std::size_t at = 0; at < count; ++at) {
    const std::size_t bucket = nodes[at].bucket;
    const std::array<Slot, kWays>& slots = buckets_[bucket].slots;
    const auto* const empty_slot = std::find_if(
        slots.begin(), slots.end(), [](const Slot& slot) { return slot.entry == nullptr; });
    if (empty_slot != slots.end()) {
      std::size_t node = at;
      auto free_way = static_cast<std::size_t>(empty_slot - slots.begin());
      for (; nodes[node].parent != kNone; node = nodes[node].parent) {
        const Node& step = nodes[node];
        Slot& from = buckets_[nodes[step.parent].bucket].slots[step.way];
        buckets_[step.bucket].slots[free_way] = from;
        from = Slot{};
        free_way = step.way;
      }
      return nodes[node].bucket * kWays + free_way;
    }
    for (std::size_t way = 0; way < kWays && count < kMaxNodes; ++way) {
      const std::uint64_t moved = slots[way].hash;
      const std::size_t first = first_bucket(moved);
      const std::size_t other = first == bucket ? second_bucket(moved) : first;
      if (!visited(other)) nodes[count++] = {other, at, way};
    }
  }
  return kNone;
}

void SessionCache::SlotTable::erase_at(std::size_t index) noexcept {
  slot_at(index) = Slot{};
  --size_;
}

void SessionCache::SlotTable::reserve(std::size_t entries) {
  std::size_t buckets = buckets_.empty() ? 4 : buckets_.size();
  while (entries * 4 > buckets * kWays * 3) buckets *= 2;
  if (buckets != buckets_.size()) rehash(buckets);
}

// Builds the new table aside and swaps it in, so a bad_alloc changes nothing.
void SessionCache::SlotTable::rehash(std::size_t buckets) {
  SlotTable bigger;
  for (;; buckets *= 2) {
    bigger.buckets_.assign(buckets, Bucket{});
    bigger.size_ = 0;
    bool placed_all = true;
    for_each([&bigger, &placed_all](const Slot& slot) {
      if (!placed_all) return;
      const std::size_t index = bigger.make_room(slot.hash);
      if (index == kNone) {
        placed_all = false;
        return;
      }
      bigger.slot_at(index) = slot;
      ++bigger.size_;
    });
    if (placed_all) break;
  }
  buckets_.swap(bigger.buckets_);
}

template <typename Visit>
void SessionCache::SlotTable::for_each(Visit visit) const {
  for (const Bucket& bucket : buckets_) {
    for (const Slot& slot : bucket.slots) {
      if (slot.entry != nullptr) visit(slot);
    }
  }
}

// Prefetches are hints: an address they compute may be stale by the time it is read, which costs
// nothing but the hint.
void SessionCache::SlotTable::prefetch(std::uint64_t hash) const noexcept {
#if defined(__GNUC__)
  if (buckets_.empty()) return;
  __builtin_prefetch(&buckets_[first_bucket(hash)]);
  __builtin_prefetch(&buckets_[second_bucket(hash)]);
#else
  (void)hash;
#endif
}

void SessionCache::SlotTable::prefetch_entry(std::uint64_t hash) const noexcept {
#if defined(__GNUC__)
  const std::size_t index = find(hash, [](const Entry*) { return true; });
  if (index == kNone) return;
  const Entry* entry = entry_at(index);
  __builtin_prefetch(entry);           // the user links
  __builtin_prefetch(entry->bytes());  // the user id, compared by link_user()
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
  return hash_bytes(id.data(), id.size()) & ~kRotatedTag;
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
    shard.entries.for_each([](const Slot& slot) { EntryDelete()(slot.entry); });
  }
}

std::size_t SessionCache::slot_of(const SlotTable& table, std::uint64_t hash,
                                  const SessionDigest& id) noexcept {
  return table.find(hash, [&id](const Entry* entry) { return entry->id == id; });
}

SessionCache::Found SessionCache::copy_out(const Entry& entry, std::int64_t at, Session* out) {
  entry.copy_to(out);
  return entry.expires_at() > at ? Found::kLive : Found::kExpired;
}

SessionCache::Found SessionCache::find(const SessionDigest& id, std::int64_t at,
                                       Session* out) const {
  const Shard& shard = shards_[shard_index(id)];
  const std::uint64_t hash = hash_of(id);
  const ReaderLock lock(shard.mutex);
  const std::size_t index = slot_of(shard.entries, hash, id);
  if (index == SlotTable::kNone) return Found::kNone;
  return copy_out(*shard.entries.entry_at(index), at, out);
}

namespace {

// Reads every byte of both, whatever they hold (memcmp stops at the first difference).
bool equal_in_constant_time(const SessionDigest& a, const SessionDigest& b) noexcept {
  unsigned difference = 0;
  for (std::size_t i = 0; i < a.size(); ++i) difference |= static_cast<unsigned>(a[i] ^ b[i]);
  return difference == 0;
}

}  // namespace

// A hit and a miss run the same instructions here: the comparison's result is folded into the
// answer by select(), and the two branches below it are not taken by either (they are for a
// 64-bit hash collision and a rotated-away id). The decoy is a session from the same two buckets:
// memory as far from the processor as a hit's session would be, and a copy of the same size
// distribution. A miss whose buckets hold no session (tables at least 3/8 full leave that to one
// miss in 40 or fewer) takes the next one along the table; only a shard with no session at all
// has no decoy, and then no hit to be told apart from either.
SessionCache::Found SessionCache::find_token(const SessionDigest& id, std::int64_t at,
                                             Session* out) const {
  const Shard& shard = shards_[shard_index(id)];
  const std::uint64_t hash = hash_of(id);
  const ReaderLock lock(shard.mutex);
  const SlotTable::Probe probe = shard.entries.probe(hash);
  const Entry* compared = select(mask_if(probe.match != nullptr), probe.match, probe.decoy);
  if (compared == nullptr) compared = shard.entries.untagged_entry_after(hash);
  bool same = false;
  Found found = Found::kNone;
  if (compared != nullptr) {
    same = equal_in_constant_time(compared->id, id);
    const Found cached = copy_out(*compared, at, out);
    static_assert(static_cast<std::uintptr_t>(Found::kNone) == 0);
    found = static_cast<Found>(static_cast<std::uintptr_t>(cached) & mask_if(same));
  }
  // Selects, not `&&`, so that neither branch below depends on `same`.
  const Entry* const no_entry = nullptr;
  const Entry* other_with_hash = select(mask_if(!same), probe.match, no_entry);
  const Entry* marker = select(mask_if(!same), probe.tagged, no_entry);
  if (other_with_hash != nullptr) {
    // Another id with the same 64-bit hash (keyed per process, so not one an attacker can aim
    // for): the id may still be cached in another slot.
    const std::size_t index = slot_of(shard.entries, hash, id);
    if (index != SlotTable::kNone) return copy_out(*shard.entries.entry_at(index), at, out);
  }
  if (marker != nullptr && slot_of(shard.entries, hash | kRotatedTag, id) != SlotTable::kNone) {
    return Found::kRotatedAway;
  }
  return found;
}

std::optional<Session> SessionCache::find_live(const SessionDigest& id, std::int64_t at) const {
  Session session;
  if (find(id, at, &session) != Found::kLive) return std::nullopt;
  return session;
}

std::vector<Session> SessionCache::of_user(std::string_view user_id) const {
  std::vector<Session> sessions;
  const std::uint64_t hash = hash_of(user_id);
  const ReaderLock lock(users_mutex_);
  const std::size_t index = user_heads_.find(
      hash, [user_id](const Entry* head) { return head->field(Entry::kUserId) == user_id; });
  if (index == SlotTable::kNone) return sessions;
  for (const Entry* entry = user_heads_.entry_at(index); entry != nullptr;
       entry = entry->user_next) {
    entry->copy_to(&sessions.emplace_back());
  }
  return sessions;
}

// Every cached session (rotated-id markers aside) whose entry `matches` accepts: a scan of every
// shard, each under its read lock.
template <typename Matches>
std::vector<SessionCache::SessionOfUser> SessionCache::sessions_where(Matches matches) const {
  std::vector<SessionOfUser> found;
  for (const Shard& shard : shards_) {
    const ReaderLock lock(shard.mutex);
    shard.entries.for_each([&](const Slot& slot) {
      const Entry* entry = slot.entry;
      if ((slot.hash & kRotatedTag) != 0 || !matches(*entry)) return;
      found.push_back({session_id_of(entry->id), std::string(entry->field(Entry::kUserId))});
    });
  }
  return found;
}

std::vector<SessionCache::SessionOfUser> SessionCache::with_idp_session(
    std::string_view idp_session_id, const std::optional<std::string>& tenant) const {
  return sessions_where([&](const Entry& entry) {
    return entry.has_idp_session() && entry.field(Entry::kIdpSessionId) == idp_session_id &&
           (!tenant || (entry.has_tenant() && entry.field(Entry::kTenantId) == *tenant));
  });
}

std::vector<SessionCache::SessionOfUser> SessionCache::in_tenant(std::string_view tenant) const {
  return sessions_where([&](const Entry& entry) {
    return entry.has_tenant() && entry.field(Entry::kTenantId) == tenant;
  });
}

std::size_t SessionCache::users() const {
  const ReaderLock lock(users_mutex_);
  return user_heads_.size();
}

// ------------------------------------------------------------------------------------------------
// Writes
// ------------------------------------------------------------------------------------------------

// A new entry becomes the head of its user's list. An anonymous session (no user) is in no list:
// no user lists it, and it is not counted as a user. (unlink_user() then finds no list for it.)
void SessionCache::link_user(Entry* entry, std::uint64_t user_hash) {
  const std::string_view user_id = entry->field(Entry::kUserId);
  if (user_id.empty()) return;
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

// Throws only bad_alloc, from link_user() (nothing changed yet) or the table's insert (undone).
SessionCache::OwnedEntry SessionCache::insert_locked(Shard& shard, Pending pending) {
  // Room first, so that the inserts below rarely allocate (only when no path of moves frees a
  // slot in a key's buckets).
  shard.entries.reserve(shard.entries.size() + 1);
  user_heads_.reserve(user_heads_.size() + 1);
  const SessionDigest& id = pending.entry->id;
  const std::size_t index = slot_of(shard.entries, pending.id_hash, id);
  Entry* added = pending.entry.get();
  link_user(added, pending.user_hash);
  OwnedEntry replaced;
  if (index == SlotTable::kNone) {
    try {
      shard.entries.insert(pending.id_hash, added);
    } catch (...) {
      unlink_user(added);
      throw;
    }
    size_.fetch_add(1, std::memory_order_relaxed);
  } else {
    replaced.reset(shard.entries.entry_at(index));
    unlink_user(replaced.get());
    shard.entries.set_entry_at(index, added);
  }
  static_cast<void>(pending.entry.release());  // owned by the shard's table from here
  return replaced;
}

void SessionCache::put(const Session& session) {
  Pending pending = make_pending(session);  // allocates before any lock
  OwnedEntry replaced;
  {
    Shard& shard = shards_[shard_index(pending.entry->id)];
    const WriterLock users_lock(users_mutex_);
    const WriterLock lock(shard.mutex);
    replaced = insert_locked(shard, std::move(pending));
  }
  replaced.reset();  // the free, once the locks are released
}

bool SessionCache::erase(const SessionDigest& id) {
  Shard& shard = shards_[shard_index(id)];
  const std::uint64_t hash = hash_of(id);
  OwnedEntry erased;  // freed after the locks are released
  const WriterLock users_lock(users_mutex_);
  const WriterLock lock(shard.mutex);
  const std::size_t index = slot_of(shard.entries, hash, id);
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

std::size_t SessionCache::erase_expired(std::int64_t at) {
  std::size_t erased = 0;
  const WriterLock users_lock(users_mutex_);
  for (Shard& shard : shards_) {
    const WriterLock lock(shard.mutex);
    shard.entries.for_each([&](const Slot& slot) REQUIRES(users_mutex_, shard.mutex) {
      Entry* entry = slot.entry;
      if ((slot.hash & kRotatedTag) != 0 || entry->expires_at() > at) return;
      unlink_user(entry);
      // An erase moves no other slot, so the walk goes on safely.
      shard.entries.erase_at(
          shard.entries.find(slot.hash, [entry](const Entry* cached) { return cached == entry; }));
      EntryDelete()(entry);
      ++erased;
    });
  }
  size_.fetch_sub(erased, std::memory_order_relaxed);
  return erased;
}

std::size_t SessionCache::erase_unless(const std::function<bool(const SessionDigest&)>& keep) {
  std::size_t erased = 0;
  const WriterLock users_lock(users_mutex_);
  for (Shard& shard : shards_) {
    const WriterLock lock(shard.mutex);
    shard.entries.for_each([&](const Slot& slot) REQUIRES(users_mutex_, shard.mutex) {
      Entry* entry = slot.entry;
      if ((slot.hash & kRotatedTag) != 0 || keep(entry->id)) return;
      unlink_user(entry);
      shard.entries.erase_at(
          shard.entries.find(slot.hash, [entry](const Entry* cached) { return cached == entry; }));
      EntryDelete()(entry);
      ++erased;
    });
  }
  size_.fetch_sub(erased, std::memory_order_relaxed);
  return erased;
}

// A marker is an entry with the id alone, stored under the id's hash with the tag bit set.
void SessionCache::remember_rotated(const SessionDigest& id) {
  OwnedEntry marker(new (::operator new(sizeof(Entry))) Entry);
  marker->id = id;
  Shard& shard = shards_[shard_index(id)];
  const std::uint64_t hash = hash_of(id) | kRotatedTag;
  const WriterLock lock(shard.mutex);
  if (slot_of(shard.entries, hash, id) != SlotTable::kNone) return;
  shard.entries.insert(hash, marker.get());
  static_cast<void>(marker.release());  // owned by the shard's table from here
}

bool SessionCache::forget_rotated(const SessionDigest& id) {
  Shard& shard = shards_[shard_index(id)];
  OwnedEntry forgotten;  // freed after the lock is released
  const WriterLock lock(shard.mutex);
  const std::size_t index = slot_of(shard.entries, hash_of(id) | kRotatedTag, id);
  if (index == SlotTable::kNone) return false;
  forgotten.reset(shard.entries.entry_at(index));
  shard.entries.erase_at(index);
  return true;
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
    shard_locks_[i] = std::unique_lock<SharedMutex>(cache.shards_[i].mutex);
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
  const MutexLock lock(queue_mutex_);
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
    const MutexLock lock(queue_mutex_);
    queue_drained_.wait(
        [this]() REQUIRES(queue_mutex_) { return queue_.size() < kQueuedBatches || failure_; });
    if (failure_) std::rethrow_exception(failure_);
    queue_.push_back(std::move(batch_));
    batch_ = Batch();
    if (!spare_.empty()) {
      batch_ = std::move(spare_.back());
      spare_.pop_back();
    }
  }
  queue_filled_.signal();
}

// Inserts the queued batches in order until closing_ is set and the queue is empty. After a
// failure it only drains the queue, so add() never waits on it for ever.
void SessionCache::Loader::inserter_loop() noexcept {
  for (;;) {
    Batch batch;
    bool failed = false;
    {
      const MutexLock lock(queue_mutex_);
      queue_filled_.wait([this]() REQUIRES(queue_mutex_) { return !queue_.empty() || closing_; });
      if (queue_.empty()) return;
      batch = std::move(queue_.front());
      queue_.pop_front();
      failed = failure_ != nullptr;
    }
    queue_drained_.signal();
    try {
      if (!failed) insert_rows(&batch);
      batch.size = 0;
      const MutexLock lock(queue_mutex_);
      spare_.push_back(std::move(batch));
    } catch (...) {
      pending_.clear();
      const MutexLock lock(queue_mutex_);
      failure_ = std::current_exception();
    }
  }
}

void SessionCache::Loader::stop_inserter() noexcept {
  if (!inserter_.joinable()) return;
  {
    const MutexLock lock(queue_mutex_);
    closing_ = true;
  }
  queue_filled_.signal();
  inserter_.join();
}

}  // namespace pylon::detail

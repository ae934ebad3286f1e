// pylon-sessions: SessionCache (see session_cache.hpp for what it promises).
#include "session_cache.hpp"

#include <limits>
#include <mutex>

namespace pylon::detail {

// ------------------------------------------------------------------------------------------------
// Entry: one session in one buffer
// ------------------------------------------------------------------------------------------------

std::string_view SessionCache::Entry::field(Field which) const noexcept {
  std::size_t offset = 0;
  for (std::size_t i = 0; i < which; ++i) offset += sizes[i];
  return {bytes.get() + offset, sizes[which]};
}

std::optional<std::string> SessionCache::Entry::optional_field(Field which) const {
  if ((present & (1U << which)) == 0) return std::nullopt;
  return std::string(field(which));
}

void SessionCache::Entry::assign(const Session& session) {
  const std::array<const std::string*, kFields> values = {
      &session.user_id,
      session.tenant_id ? &*session.tenant_id : nullptr,
      session.device ? &*session.device : nullptr,
      session.ip ? &*session.ip : nullptr,
      &session.data,
      session.idp_session_id ? &*session.idp_session_id : nullptr};
  std::size_t total = 0;
  std::array<std::uint32_t, kFields> new_sizes{};
  std::uint8_t new_present = 0;
  for (std::size_t i = 0; i < kFields; ++i) {
    if (values[i] == nullptr) continue;
    if (values[i]->size() > std::numeric_limits<std::uint32_t>::max()) {
      throw Error(ErrorCode::kInvalidArgument, "a session field is larger than 4 GiB");
    }
    new_sizes[i] = static_cast<std::uint32_t>(values[i]->size());
    new_present = static_cast<std::uint8_t>(new_present | (1U << i));
    total += values[i]->size();
  }
  // NOLINTNEXTLINE(*-avoid-c-arrays): one buffer for every field, sized at run time
  auto new_bytes = std::make_unique<char[]>(total);
  std::size_t offset = 0;
  for (std::size_t i = 0; i < kFields; ++i) {
    if (values[i] == nullptr) continue;
    std::memcpy(new_bytes.get() + offset, values[i]->data(), values[i]->size());
    offset += values[i]->size();
  }
  bytes = std::move(new_bytes);
  sizes = new_sizes;
  present = new_present;
  created_at = session.created_at;
  expires_at = session.expires_at;
  last_seen_at = session.last_seen_at;
  absolute_expires_at = session.absolute_expires_at;
}

Session SessionCache::Entry::to_session() const {
  Session session;
  session.id = session_id_of(*id);
  session.user_id = std::string(field(kUserId));
  session.tenant_id = optional_field(kTenantId);
  session.created_at = created_at;
  session.expires_at = expires_at;
  session.last_seen_at = last_seen_at;
  session.device = optional_field(kDevice);
  session.ip = optional_field(kIp);
  session.data = std::string(field(kData));
  session.absolute_expires_at = absolute_expires_at;
  session.idp_session_id = optional_field(kIdpSessionId);
  return session;
}

// ------------------------------------------------------------------------------------------------
// Reads
// ------------------------------------------------------------------------------------------------

SessionCache::Found SessionCache::find(const SessionDigest& id, std::int64_t at,
                                       Session* out) const {
  const Shard& shard = shard_of(id);
  const std::shared_lock<std::shared_mutex> lock(shard.mutex);
  const auto found = shard.entries.find(id);
  if (found == shard.entries.end()) return Found::kNone;
  *out = found->second.to_session();
  return found->second.expires_at > at ? Found::kLive : Found::kExpired;
}

std::optional<Session> SessionCache::find_live(const SessionDigest& id, std::int64_t at) const {
  Session session;
  if (find(id, at, &session) != Found::kLive) return std::nullopt;
  return session;
}

std::vector<Session> SessionCache::of_user(std::string_view user_id) const {
  std::vector<Session> sessions;
  const std::shared_lock<std::shared_mutex> lock(users_mutex_);
  const auto head = user_heads_.find(user_id);
  if (head == user_heads_.end()) return sessions;
  for (const Entry* entry = head->second; entry != nullptr; entry = entry->user_next) {
    sessions.push_back(entry->to_session());
  }
  return sessions;
}

std::vector<std::pair<std::string, std::string>> SessionCache::with_idp_session(
    std::string_view idp_session_id, const std::optional<std::string>& tenant) const {
  std::vector<std::pair<std::string, std::string>> matches;
  for (const Shard& shard : shards_) {
    const std::shared_lock<std::shared_mutex> lock(shard.mutex);
    for (const auto& [id, entry] : shard.entries) {
      if ((entry.present & (1U << Entry::kIdpSessionId)) == 0 ||
          entry.field(Entry::kIdpSessionId) != idp_session_id) {
        continue;
      }
      if (tenant && ((entry.present & (1U << Entry::kTenantId)) == 0 ||
                     entry.field(Entry::kTenantId) != *tenant)) {
        continue;
      }
      matches.emplace_back(session_id_of(id), std::string(entry.field(Entry::kUserId)));
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

// A new entry goes second in its user's list, so the head, whose bytes the key views, stays.
void SessionCache::link_user(Entry* entry) {
  const auto [head, inserted] = user_heads_.emplace(entry->field(Entry::kUserId), entry);
  if (inserted) return;
  Entry* first = head->second;
  entry->user_previous = first;
  entry->user_next = first->user_next;
  if (first->user_next != nullptr) first->user_next->user_previous = entry;
  first->user_next = entry;
}

void SessionCache::unlink_user(Entry* entry) {
  if (entry->user_previous != nullptr) {
    entry->user_previous->user_next = entry->user_next;
    if (entry->user_next != nullptr) entry->user_next->user_previous = entry->user_previous;
  } else {
    // The head goes: the key views its bytes, so the next entry (if any) is keyed anew.
    user_heads_.erase(entry->field(Entry::kUserId));
    if (entry->user_next != nullptr) {
      entry->user_next->user_previous = nullptr;
      user_heads_.emplace(entry->user_next->field(Entry::kUserId), entry->user_next);
    }
  }
  entry->user_previous = nullptr;
  entry->user_next = nullptr;
}

void SessionCache::put(const Session& session) {
  SessionDigest id{};
  if (!parse_session_id(session.id, &id)) {
    throw Error(ErrorCode::kInternal, "the session cache was given a malformed session id");
  }
  Entry replacement;
  replacement.assign(session);  // allocates before any lock: a throw leaves the cache as it was
  Shard& shard = shard_of(id);
  const std::unique_lock<std::shared_mutex> users_lock(users_mutex_);
  const std::unique_lock<std::shared_mutex> lock(shard.mutex);
  auto [found, inserted] = shard.entries.try_emplace(id);
  Entry& entry = found->second;
  if (!inserted) unlink_user(&entry);
  entry.bytes = std::move(replacement.bytes);
  entry.sizes = replacement.sizes;
  entry.present = replacement.present;
  entry.created_at = replacement.created_at;
  entry.expires_at = replacement.expires_at;
  entry.last_seen_at = replacement.last_seen_at;
  entry.absolute_expires_at = replacement.absolute_expires_at;
  entry.id = &found->first;
  link_user(&entry);
  if (inserted) size_.fetch_add(1, std::memory_order_relaxed);
}

void SessionCache::erase_locked(
    Shard& shard, std::unordered_map<SessionDigest, Entry, DigestHash>::iterator found) {
  unlink_user(&found->second);
  shard.entries.erase(found);
  size_.fetch_sub(1, std::memory_order_relaxed);
}

bool SessionCache::erase(const SessionDigest& id) {
  Shard& shard = shard_of(id);
  const std::unique_lock<std::shared_mutex> users_lock(users_mutex_);
  const std::unique_lock<std::shared_mutex> lock(shard.mutex);
  const auto found = shard.entries.find(id);
  if (found == shard.entries.end()) return false;
  erase_locked(shard, found);
  return true;
}

bool SessionCache::erase(std::string_view id) {
  SessionDigest digest{};
  return parse_session_id(id, &digest) && erase(digest);
}

std::size_t SessionCache::erase_expired(std::int64_t at) {
  std::size_t erased = 0;
  const std::unique_lock<std::shared_mutex> users_lock(users_mutex_);
  for (Shard& shard : shards_) {
    const std::unique_lock<std::shared_mutex> lock(shard.mutex);
    for (auto it = shard.entries.begin(); it != shard.entries.end();) {
      auto next = std::next(it);
      if (it->second.expires_at <= at) {
        erase_locked(shard, it);
        ++erased;
      }
      it = next;
    }
  }
  return erased;
}

void SessionCache::reserve(std::size_t sessions) {
  const std::size_t per_shard = (size() + sessions) / kShards + 1;
  for (Shard& shard : shards_) {
    const std::unique_lock<std::shared_mutex> lock(shard.mutex);
    shard.entries.reserve(per_shard);
  }
  const std::unique_lock<std::shared_mutex> users_lock(users_mutex_);
  user_heads_.reserve(user_heads_.size() + sessions);
}

}  // namespace pylon::detail

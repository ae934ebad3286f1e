// MemoryBackend: a SessionBackend that keeps sessions in a map, for tests and as the example of
// writing a backend of your own (README, "Write a backend"). Nothing survives the process.
// Every call holds one mutex throughout, so each is atomic and threads may share the backend.
#ifndef PYLON_EXAMPLES_MEMORY_BACKEND_HPP_
#define PYLON_EXAMPLES_MEMORY_BACKEND_HPP_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <pylon/session_backend.hpp>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

class MemoryBackend final : public pylon::SessionBackend {
 public:
  // The fault hook of the conformance suite: while set, every insert and update throws.
  void refuse_writes(bool refuse) {
    const std::lock_guard<std::recursive_mutex> l(m_);
    refuse_ = refuse;
  }

  std::vector<pylon::Session> load_all() override {
    const std::lock_guard<std::recursive_mutex> l(m_);
    std::vector<pylon::Session> all;
    for (const auto& [id, row] : rows_) all.push_back(row.s);
    return all;
  }
  void save(const pylon::Session& s) override { save_batch({s}); }
  void save_batch(const std::vector<pylon::Session>& sessions) override {
    const std::lock_guard<std::recursive_mutex> l(m_);
    writable();
    for (const pylon::Session& s : sessions) {
      auto [it, fresh] = rows_.try_emplace(s.id, Row{s, order_});  // an upsert keeps its place
      it->second.s = s;
      order_ += fresh ? 1 : 0;
    }
  }
  bool remove(std::string_view id) override {
    return !remove_if([&](auto& s) { return s.id == id; }).empty();
  }
  std::size_t remove_user(std::string_view user) override {
    return remove_if([&](auto& s) { return s.user_id == user; }).size();
  }
  std::size_t remove_expired(std::int64_t now) override {
    const std::lock_guard<std::recursive_mutex> l(m_);
    const std::size_t n = remove_expired_batch(now, SIZE_MAX);
    remove_expired_rotated(now, SIZE_MAX);
    return n;
  }
  std::size_t remove_expired_batch(std::int64_t now, std::size_t limit) override {
    return remove_if([&](auto& s) { return s.expires_at <= now; }, limit).size();
  }
  std::vector<pylon::RemovedSession> remove_matching(const pylon::SessionFilter& f) override {
    if (!f.id && !f.user_id && !f.idp_session_id && !f.tenant_id) {
      throw pylon::Error(pylon::ErrorCode::kInvalidArgument,
                         "a filter must set id, user, sid or tenant");
    }
    return remove_if([&](const pylon::Session& s) {
      return (!f.id || s.id == *f.id) && (!f.user_id || s.user_id == *f.user_id) &&
             (!f.tenant_id || s.tenant_id == f.tenant_id) &&
             (!f.except_id || s.id != *f.except_id) &&
             (!f.idp_session_id || s.idp_session_id == f.idp_session_id);
    });
  }
  bool replace(std::string_view old_id, const pylon::Session& replacement) override {
    const std::lock_guard<std::recursive_mutex> l(m_);
    writable();
    const auto it = rows_.find(old_id);
    if (it == rows_.end()) return false;
    rows_.erase(it);
    rows_[replacement.id] = Row{replacement, order_++};
    return true;
  }
  std::vector<pylon::RemovedSession> insert_new(const std::vector<pylon::Session>& sessions,
                                                std::size_t cap) override {
    const std::lock_guard<std::recursive_mutex> l(m_);
    writable();
    for (const pylon::Session& s : sessions) rows_[s.id] = Row{s, order_++};
    if (cap == 0) return {};
    std::set<std::pair<std::string, std::optional<std::string>>> owners;
    for (const pylon::Session& s : sessions) {
      if (!s.is_anonymous()) owners.emplace(s.user_id, s.tenant_id);  // anonymous: no cap
    }
    std::vector<pylon::RemovedSession> evicted;
    for (const auto& [user, tenant] : owners) evict_beyond(user, tenant, cap, {}, &evicted);
    return evicted;
  }
  std::optional<pylon::Session> touch(std::string_view id, std::int64_t seen,
                                      std::int64_t exp) override {
    return update(id, [&](pylon::Session& s) {
      s.last_seen_at = std::max(s.last_seen_at, seen);
      s.expires_at = std::max(s.expires_at, exp);
    });
  }
  std::optional<pylon::Session> update_data(std::string_view id, std::string_view data) override {
    return update(id, [&](pylon::Session& s) { s.data = data; });
  }
  std::optional<pylon::Session> rotate(std::string_view old_id, std::string_view new_id,
                                       std::int64_t now) override {
    const std::lock_guard<std::recursive_mutex> l(m_);
    writable();
    const auto it = rows_.find(old_id);
    if (it == rows_.end() || it->second.s.expires_at <= now) return std::nullopt;
    pylon::Session s = it->second.s;
    rows_.erase(it);
    const std::int64_t cap = s.absolute_expires_at != 0 ? s.absolute_expires_at : s.expires_at;
    rotated_[s.id] = {s.id, std::string(new_id), s.user_id, s.tenant_id, now, cap};
    s.id = new_id;
    rows_[s.id] = Row{s, order_++};
    return s;
  }
  // rotate(), whose new row also takes the user and authenticated_at = now; the user's oldest
  // other rows beyond the cap go in the same call (never the new row).
  std::optional<pylon::Authentication> authenticate(std::string_view old_id,
                                                    std::string_view new_id,
                                                    std::string_view user_id, std::int64_t now,
                                                    std::size_t cap) override {
    const std::lock_guard<std::recursive_mutex> l(m_);
    writable();
    const auto it = rows_.find(old_id);
    if (it == rows_.end() || it->second.s.expires_at <= now) return std::nullopt;
    if (!it->second.s.is_anonymous() && it->second.s.user_id != user_id) {
      throw pylon::Error(pylon::ErrorCode::kInvalidArgument,
                         "memory backend: the session belongs to another user");
    }
    std::optional<pylon::Session> row = rotate(old_id, new_id, now);
    pylon::Authentication signed_in;
    row->user_id = user_id;
    row->authenticated_at = now;
    rows_[row->id].s = *row;
    signed_in.session = *row;
    if (cap > 0) evict_beyond(row->user_id, row->tenant_id, cap, row->id, &signed_in.evicted);
    return signed_in;
  }
  // The live rows the query matches, by id, after the cursor, at most `limit`.
  std::vector<pylon::Session> list_page(const pylon::SessionQuery& q, std::int64_t now) override {
    if (q.limit < 1 || q.limit > pylon::kMaxPageSize) {
      throw pylon::Error(pylon::ErrorCode::kInvalidArgument, "memory backend: a page limit");
    }
    if (!q.after.empty() && !pylon::is_well_formed_session_id(q.after)) {
      throw pylon::Error(pylon::ErrorCode::kInvalidArgument, "memory backend: a cursor");
    }
    const std::lock_guard<std::recursive_mutex> l(m_);
    std::vector<pylon::Session> page;
    for (auto it = rows_.upper_bound(q.after); it != rows_.end() && page.size() < q.limit; ++it) {
      const pylon::Session& s = it->second.s;
      if (s.expires_at > now && (!q.tenant_id || s.tenant_id == q.tenant_id) &&
          (!q.user_id || s.user_id == *q.user_id) && (!q.device || s.device == q.device) &&
          (!q.created_since || s.created_at >= *q.created_since) &&
          (!q.created_before || s.created_at < *q.created_before) &&
          (!q.last_seen_since || s.last_seen_at >= *q.last_seen_since) &&
          (!q.last_seen_before || s.last_seen_at < *q.last_seen_before)) {
        page.push_back(s);
      }
    }
    return page;
  }
  std::vector<pylon::TenantCount> count_by_tenant(std::int64_t now) override {
    const std::lock_guard<std::recursive_mutex> l(m_);
    std::map<std::optional<std::string>, pylon::TenantCount> counts;  // nullopt sorts first
    for (const auto& [id, row] : rows_) {
      if (row.s.expires_at <= now) continue;
      pylon::TenantCount& count = counts[row.s.tenant_id];
      count.tenant_id = row.s.tenant_id;
      ++count.sessions;
      if (row.s.is_anonymous()) ++count.anonymous;
    }
    std::vector<pylon::TenantCount> all;
    all.reserve(counts.size());
    for (const auto& [tenant, count] : counts) all.push_back(count);
    return all;
  }
  void load_rotated_each(const std::function<void(const pylon::RotatedId&)>& visit) override {
    const std::lock_guard<std::recursive_mutex> l(m_);
    for (const auto& [id, rotated] : rotated_) visit(rotated);
  }
  std::size_t remove_expired_rotated(std::int64_t now, std::size_t limit) override {
    const std::lock_guard<std::recursive_mutex> l(m_);
    std::size_t n = 0;
    for (auto it = rotated_.begin(); it != rotated_.end() && n < limit;) {
      if (it->second.expires_at > now) {
        ++it;
        continue;
      }
      it = rotated_.erase(it);
      ++n;
    }
    return n;
  }
  [[nodiscard]] std::string describe() const override { return "memory"; }

 private:
  struct Row {
    pylon::Session s;
    std::uint64_t order = 0;  // insertion order: the cap's tie-break after created_at
  };
  void writable() const {
    if (refuse_) throw pylon::Error(pylon::ErrorCode::kIo, "memory backend: writes refused");
  }
  // Evicts the user's oldest rows in the tenant (smallest created_at, then earliest inserted)
  // beyond `cap`, never the row `keep`, into `evicted`.
  void evict_beyond(const std::string& user, const std::optional<std::string>& tenant,
                    std::size_t cap, std::string_view keep,
                    std::vector<pylon::RemovedSession>* evicted) {
    std::vector<const Row*> mine;  // the user's other rows in the tenant, oldest first
    for (const auto& [id, row] : rows_) {
      if (row.s.user_id == user && row.s.tenant_id == tenant && id != keep) mine.push_back(&row);
    }
    std::sort(mine.begin(), mine.end(), [](const Row* a, const Row* b) {
      return std::pair(a->s.created_at, a->order) < std::pair(b->s.created_at, b->order);
    });
    const std::size_t room = keep.empty() ? cap : cap - 1;  // `keep` takes one place
    std::vector<std::string> gone;
    for (std::size_t i = 0; i + room < mine.size(); ++i) {
      evicted->push_back({mine[i]->s.id, user});
      gone.push_back(mine[i]->s.id);
    }
    for (const std::string& id : gone) rows_.erase(id);
  }
  template <typename Match>
  std::vector<pylon::RemovedSession> remove_if(Match match, std::size_t limit = SIZE_MAX) {
    const std::lock_guard<std::recursive_mutex> l(m_);
    std::vector<pylon::RemovedSession> removed;
    for (auto it = rows_.begin(); it != rows_.end() && removed.size() < limit;) {
      if (!match(it->second.s)) {
        ++it;
        continue;
      }
      removed.push_back({it->second.s.id, it->second.s.user_id});
      it = rows_.erase(it);
    }
    return removed;
  }
  template <typename Change>
  std::optional<pylon::Session> update(std::string_view id, Change change) {
    const std::lock_guard<std::recursive_mutex> l(m_);
    writable();
    const auto it = rows_.find(id);
    if (it == rows_.end()) return std::nullopt;
    change(it->second.s);
    return it->second.s;
  }

  std::recursive_mutex m_;  // recursive: remove_expired() is two calls in one
  bool refuse_ = false;
  std::uint64_t order_ = 0;
  std::map<std::string, Row, std::less<>> rows_;
  std::map<std::string, pylon::RotatedId, std::less<>> rotated_;
};

#endif  // PYLON_EXAMPLES_MEMORY_BACKEND_HPP_

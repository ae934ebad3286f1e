// ForwardingBackend: a SessionBackend that hands every call to a real backend. Tests derive
// decorators from it that record, delay or interleave calls, overriding only the calls they
// watch; everything the store sees still comes from the real database. open_change_source() is
// not forwarded: a store on a ForwardingBackend is one on a backend without a change log (it
// learns of other stores' writes only by looking misses up); a decorator that wants the log
// forwards it itself.
#ifndef PYLON_TESTS_SUPPORT_FORWARDING_BACKEND_HPP_
#define PYLON_TESTS_SUPPORT_FORWARDING_BACKEND_HPP_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "session_backend.hpp"

namespace pylon::test {

class ForwardingBackend : public SessionBackend {
 public:
  explicit ForwardingBackend(std::unique_ptr<SessionBackend> real) : real_(std::move(real)) {}

  std::vector<Session> load_all() override { return real_->load_all(); }
  void load_each(const std::function<void(const Session&)>& visit) override {
    real_->load_each(visit);
  }
  std::optional<Session> load_one(std::string_view id) override { return real_->load_one(id); }
  void save(const Session& session) override { real_->save(session); }
  void save_batch(const std::vector<Session>& sessions) override { real_->save_batch(sessions); }
  bool remove(std::string_view id) override { return real_->remove(id); }
  std::size_t remove_user(std::string_view user_id) override { return real_->remove_user(user_id); }
  std::size_t remove_expired(std::int64_t now) override { return real_->remove_expired(now); }
  std::vector<RemovedSession> remove_matching(const SessionFilter& filter) override {
    return real_->remove_matching(filter);
  }
  bool replace(std::string_view old_id, const Session& replacement) override {
    return real_->replace(old_id, replacement);
  }
  std::size_t remove_expired_batch(std::int64_t now, std::size_t limit) override {
    return real_->remove_expired_batch(now, limit);
  }
  std::vector<RemovedSession> insert_new(const std::vector<Session>& sessions,
                                         std::size_t max_per_user) override {
    return real_->insert_new(sessions, max_per_user);
  }
  std::optional<Session> touch(std::string_view id, std::int64_t last_seen_at,
                               std::int64_t expires_at) override {
    return real_->touch(id, last_seen_at, expires_at);
  }
  std::optional<Session> update_data(std::string_view id, std::string_view data) override {
    return real_->update_data(id, data);
  }
  std::optional<Session> rotate(std::string_view old_id, std::string_view new_id,
                                std::int64_t now) override {
    return real_->rotate(old_id, new_id, now);
  }
  std::optional<Authentication> authenticate(std::string_view old_id, std::string_view new_id,
                                             std::string_view user_id, std::int64_t now,
                                             std::size_t max_per_user) override {
    return real_->authenticate(old_id, new_id, user_id, now, max_per_user);
  }
  std::vector<Session> list_page(const SessionQuery& query, std::int64_t now) override {
    return real_->list_page(query, now);
  }
  std::vector<TenantCount> count_by_tenant(std::int64_t now) override {
    return real_->count_by_tenant(now);
  }
  void load_rotated_each(const std::function<void(const RotatedId&)>& visit) override {
    real_->load_rotated_each(visit);
  }
  std::size_t remove_expired_rotated(std::int64_t now, std::size_t limit) override {
    return real_->remove_expired_rotated(now, limit);
  }
  [[nodiscard]] std::string describe() const override { return real_->describe(); }
  [[nodiscard]] std::vector<SessionEvent> opening_events() const override {
    return real_->opening_events();
  }

 protected:
  SessionBackend& real() { return *real_; }

 private:
  std::unique_ptr<SessionBackend> real_;
};

}  // namespace pylon::test

#endif  // PYLON_TESTS_SUPPORT_FORWARDING_BACKEND_HPP_

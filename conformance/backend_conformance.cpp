// The SessionBackend conformance suite (pylon/backend_conformance.hpp): every check of the
// contract in session_backend.hpp, made through the interface only, registered with GoogleTest
// once per backend. The checks read in the header's order: reads and save (every column,
// authenticated_at and idle_timeout_seconds included, and anonymous rows), deletes (a tenant's
// rows by tenant alone), replace, the writes that change exactly what they mean to (insert_new,
// touch, update_data, rotate and the rotated ids, authenticate), the administrator's reads
// (list_page, count_by_tenant), loads, threads; then a SessionStore on the backend; then the
// checks that need a hook (a reopen, refused writes, a lost connection).
#include "pylon/backend_conformance.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace pylon::conformance {
namespace {

// ------------------------------------------------------------------------------------------------
// Rows and what storage holds
// ------------------------------------------------------------------------------------------------

constexpr std::int64_t kNow = 1'700'000'000;

std::string new_id() { return session_id_for_token(generate_token()); }

// A row with every field set; `created_at` orders rows for the cap.
Session make_row(const std::string& user_id, std::optional<std::string> tenant_id,
                 std::int64_t created_at = kNow) {
  Session session;
  session.id = new_id();
  session.user_id = user_id;
  session.tenant_id = std::move(tenant_id);
  session.created_at = created_at;
  session.last_seen_at = created_at + 10;
  session.expires_at = created_at + 3600;
  session.absolute_expires_at = created_at + 86400;
  session.device = "Mozilla/5.0 (conformance)";
  session.ip = "192.0.2.7";
  session.idp_session_id = "sid-" + user_id;
  session.data = std::string("\x00\xff", 2) + "data of " + user_id;
  session.authenticated_at = user_id.empty() ? 0 : created_at + 5;
  session.idle_timeout_seconds = 1800;
  return session;
}

// Every byte value, then bytes that are not UTF-8.
std::string every_byte() {
  std::string bytes;
  for (int i = 0; i < 256; ++i) bytes.push_back(static_cast<char>(i));
  bytes += std::string("\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc\0\0", 13);
  return bytes;
}

std::string quoted(const std::optional<std::string>& text) {
  return text ? "\"" + *text + "\"" : "(none)";
}

std::string describe(const Session& s) {
  std::ostringstream out;
  out << "{id " << s.id << ", user \"" << s.user_id << "\", tenant " << quoted(s.tenant_id)
      << ", created " << s.created_at << ", last_seen " << s.last_seen_at << ", expires "
      << s.expires_at << ", absolute " << s.absolute_expires_at << ", device " << quoted(s.device)
      << ", ip " << quoted(s.ip) << ", sid " << quoted(s.idp_session_id) << ", authenticated "
      << s.authenticated_at << ", idle timeout "
      << (s.idle_timeout_seconds ? std::to_string(*s.idle_timeout_seconds) : "(none)") << ", "
      << s.data.size() << " data bytes}";
  return out.str();
}

::testing::AssertionResult same(const Session& expected, const std::optional<Session>& actual) {
  if (!actual) return ::testing::AssertionFailure() << "no row; expected " << describe(expected);
  if (expected == *actual) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "expected " << describe(expected) << "\n     got " << describe(*actual);
}

std::vector<Session> sorted_by_id(std::vector<Session> rows) {
  std::sort(rows.begin(), rows.end(),
            [](const Session& a, const Session& b) { return a.id < b.id; });
  return rows;
}

::testing::AssertionResult same_rows(std::vector<Session> expected, std::vector<Session> actual) {
  expected = sorted_by_id(std::move(expected));
  actual = sorted_by_id(std::move(actual));
  if (expected.size() != actual.size()) {
    return ::testing::AssertionFailure()
           << "expected " << expected.size() << " rows, got " << actual.size();
  }
  for (std::size_t i = 0; i < expected.size(); ++i) {
    ::testing::AssertionResult row = same(expected[i], actual[i]);
    if (!row) return row;
  }
  return ::testing::AssertionSuccess();
}

std::vector<std::string> sorted(std::vector<std::string> values) {
  std::sort(values.begin(), values.end());
  return values;
}

// The ids of every stored row, sorted.
std::vector<std::string> stored_ids(SessionBackend& backend) {
  std::vector<std::string> ids;
  for (const Session& session : backend.load_all()) ids.push_back(session.id);
  return sorted(std::move(ids));
}

// "id user" of each removed row, sorted: what a delete reported.
std::vector<std::string> named(const std::vector<RemovedSession>& removed) {
  std::vector<std::string> names;
  names.reserve(removed.size());
  for (const RemovedSession& row : removed) names.push_back(row.id + " " + row.user_id);
  return sorted(std::move(names));
}
std::vector<std::string> names_of(const std::vector<const Session*>& rows) {
  std::vector<std::string> names;
  names.reserve(rows.size());
  for (const Session* row : rows) names.push_back(row->id + " " + row->user_id);
  return sorted(std::move(names));
}

std::vector<RotatedId> rotated_ids(SessionBackend& backend) {
  std::vector<RotatedId> ids;
  backend.load_rotated_each([&ids](const RotatedId& rotated) { ids.push_back(rotated); });
  std::sort(ids.begin(), ids.end(),
            [](const RotatedId& a, const RotatedId& b) { return a.id < b.id; });
  return ids;
}

std::string describe(const RotatedId& r) {
  std::ostringstream out;
  out << "{id " << r.id << ", replaced_by " << r.replaced_by << ", user \"" << r.user_id
      << "\", tenant " << quoted(r.tenant_id) << ", rotated_at " << r.rotated_at << ", expires "
      << r.expires_at << "}";
  return out.str();
}

::testing::AssertionResult same_rotated(const std::vector<RotatedId>& expected,
                                        const std::vector<RotatedId>& actual) {
  if (expected == actual) return ::testing::AssertionSuccess();
  ::testing::AssertionResult failure = ::testing::AssertionFailure();
  failure << "rotated ids differ\n  expected:";
  for (const RotatedId& r : expected) failure << " " << describe(r);
  failure << "\n       got:";
  for (const RotatedId& r : actual) failure << " " << describe(r);
  return failure;
}

// Whether `call` throws pylon::Error with `code`.
::testing::AssertionResult throws_code(const std::function<void()>& call, ErrorCode code) {
  try {
    call();
  } catch (const Error& error) {
    if (error.code() == code) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "threw " << error.what() << ", expected code " << to_string(code);
  } catch (const std::exception& other) {
    return ::testing::AssertionFailure() << "threw a non-pylon exception: " << other.what();
  }
  return ::testing::AssertionFailure() << "did not throw; expected " << to_string(code);
}

// Whether `call` throws pylon::Error (any code).
::testing::AssertionResult throws_error(const std::function<void()>& call) {
  try {
    call();
  } catch (const Error&) {
    return ::testing::AssertionSuccess();
  } catch (const std::exception& other) {
    return ::testing::AssertionFailure() << "threw a non-pylon exception: " << other.what();
  }
  return ::testing::AssertionFailure() << "did not throw pylon::Error";
}

// A SessionBackend that hands every call to one it does not own, so that a SessionStore can use
// the backend under test while the test keeps it.
class Borrowed final : public SessionBackend {
 public:
  explicit Borrowed(SessionBackend& real) : real_(&real) {}

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

 private:
  SessionBackend* real_;
};

// What each check gets: the backend under test (fresh and empty), its hooks, and a clock.
struct Context {
  const BackendUnderTest& config;
  SessionBackend& backend;
  std::shared_ptr<std::atomic<std::int64_t>> now =
      std::make_shared<std::atomic<std::int64_t>>(kNow);

  // A SessionStore on the backend under test (which the test keeps), on the test's clock.
  [[nodiscard]] SessionStore store(StoreOptions options = {}) const {
    options.clock = [now = now] { return now->load(); };
    return SessionStore(std::make_unique<Borrowed>(backend), std::move(options));
  }
};

// ------------------------------------------------------------------------------------------------
// Reads and save
// ------------------------------------------------------------------------------------------------

void empty_backend_holds_nothing(Context& c) {
  SessionBackend& b = c.backend;
  EXPECT_TRUE(b.load_all().empty());
  std::size_t visited = 0;
  b.load_each([&visited](const Session&) { ++visited; });
  EXPECT_EQ(visited, 0U);
  EXPECT_FALSE(b.load_one(new_id()).has_value());
  EXPECT_TRUE(rotated_ids(b).empty());
  // Every call that finds nothing to act on writes nothing.
  EXPECT_FALSE(b.remove(new_id()));
  EXPECT_EQ(b.remove_user("nobody"), 0U);
  EXPECT_EQ(b.remove_expired(kNow), 0U);
  EXPECT_EQ(b.remove_expired_batch(kNow, 10), 0U);
  EXPECT_EQ(b.remove_expired_rotated(kNow, 10), 0U);
  SessionFilter nobody;
  nobody.user_id = "nobody";
  EXPECT_TRUE(b.remove_matching(nobody).empty());
  EXPECT_FALSE(b.touch(new_id(), kNow, kNow + 60).has_value());
  EXPECT_FALSE(b.update_data(new_id(), "data").has_value());
  EXPECT_FALSE(b.rotate(new_id(), new_id(), kNow).has_value());
  EXPECT_FALSE(b.replace(new_id(), make_row("alice", std::nullopt)));
  EXPECT_FALSE(b.authenticate(new_id(), new_id(), "alice", kNow, 0).has_value());
  SessionQuery everything;
  EXPECT_TRUE(b.list_page(everything, kNow).empty());
  EXPECT_TRUE(b.count_by_tenant(kNow).empty());
  EXPECT_TRUE(b.load_all().empty()) << "a call on a missing row inserted one";
  EXPECT_TRUE(rotated_ids(b).empty());
}

void save_then_load_returns_every_field_byte_for_byte(Context& c) {
  SessionBackend& b = c.backend;
  Session full = make_row("Zoë 🦊", "tenant ü");
  full.data = every_byte();
  full.device = "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0 — ☃";
  Session sparse;  // every optional field absent, no data, no hard cap
  sparse.id = new_id();
  sparse.user_id = "bob";
  sparse.created_at = kNow;
  sparse.last_seen_at = kNow;
  sparse.expires_at = kNow + 1;
  Session empty_text = make_row("carol", "");  // empty text is not absent text
  empty_text.device = "";
  empty_text.ip = "";
  empty_text.idp_session_id = "";
  empty_text.data.clear();
  Session extreme = make_row("dave", "t");  // the whole range of times
  extreme.created_at = 0;
  extreme.last_seen_at = 0;
  extreme.expires_at = kMaxSessionTime;
  extreme.absolute_expires_at = kMaxSessionTime;
  extreme.authenticated_at = kMaxSessionTime;
  extreme.idle_timeout_seconds = kMaxSessionTime;
  Session anonymous = make_row("", "t");  // no user: authenticated_at 0
  Session no_idle_expiry = make_row("erin", std::nullopt);
  no_idle_expiry.idle_timeout_seconds = 0;  // 0 is not absent ("the store's")
  no_idle_expiry.authenticated_at = 0;
  const std::vector<Session> rows{full, sparse, empty_text, extreme, anonymous, no_idle_expiry};
  for (const Session& row : rows) b.save(row);

  EXPECT_TRUE(same_rows(rows, b.load_all())) << "load_all()";
  std::vector<Session> visited;
  b.load_each([&visited](const Session& session) { visited.push_back(session); });
  EXPECT_TRUE(same_rows(rows, visited)) << "load_each()";
  for (const Session& row : rows) EXPECT_TRUE(same(row, b.load_one(row.id))) << "load_one()";
}

void save_replaces_every_field_of_the_same_id(Context& c) {
  SessionBackend& b = c.backend;
  const Session first = make_row("alice", "t1");
  b.save(first);
  Session second;
  second.id = first.id;
  second.user_id = "mallory";
  second.created_at = first.created_at + 5;
  second.last_seen_at = first.last_seen_at + 5;
  second.expires_at = first.expires_at + 5;
  second.data = "other";
  b.save(second);
  EXPECT_TRUE(same_rows({second}, b.load_all())) << "fields absent now must read back absent";
}

void save_batch_stores_every_row_and_a_repeated_id_ends_as_its_last_row(Context& c) {
  SessionBackend& b = c.backend;
  const Session a = make_row("alice", "t1");
  const Session other = make_row("bob", std::nullopt);
  Session a_again = a;
  a_again.data = "the last row of a";
  a_again.device.reset();
  b.save_batch({a, other, a_again});
  EXPECT_TRUE(same_rows({a_again, other}, b.load_all()));
  b.save_batch({});
  EXPECT_TRUE(same_rows({a_again, other}, b.load_all())) << "an empty batch changed something";
}

void load_one_finds_exactly_that_row(Context& c) {
  SessionBackend& b = c.backend;
  const Session a = make_row("alice", "t1");
  const Session a2 = make_row("alice", "t1");
  b.save(a);
  b.save(a2);
  EXPECT_TRUE(same(a, b.load_one(a.id)));
  EXPECT_TRUE(same(a2, b.load_one(a2.id)));
  EXPECT_FALSE(b.load_one(new_id()).has_value());
}

void load_each_ends_at_an_exception_from_visit(Context& c) {
  SessionBackend& b = c.backend;
  for (int i = 0; i < 3; ++i) b.save(make_row("alice", std::nullopt, kNow + i));
  struct Stop {};
  std::size_t visits = 0;
  EXPECT_THROW(b.load_each([&visits](const Session&) {
    ++visits;
    throw Stop{};
  }),
               Stop);
  EXPECT_EQ(visits, 1U) << "load_each() went on after visit threw";
  b.save(make_row("bob", std::nullopt));
  EXPECT_EQ(b.load_all().size(), 4U) << "the backend is usable after a load that threw";
  Session rotated = make_row("carol", std::nullopt);
  b.save(rotated);
  ASSERT_TRUE(b.rotate(rotated.id, new_id(), kNow).has_value());
  EXPECT_THROW(b.load_rotated_each([](const RotatedId&) { throw Stop{}; }), Stop);
  EXPECT_EQ(rotated_ids(b).size(), 1U);
}

void describe_names_the_backend(Context& c) { EXPECT_FALSE(c.backend.describe().empty()); }

// ------------------------------------------------------------------------------------------------
// Deletes
// ------------------------------------------------------------------------------------------------

void remove_reports_whether_a_row_was_removed(Context& c) {
  SessionBackend& b = c.backend;
  const Session a = make_row("alice", "t1");
  const Session other = make_row("bob", "t1");
  b.save(a);
  b.save(other);
  EXPECT_TRUE(b.remove(a.id));
  EXPECT_FALSE(b.remove(a.id));
  EXPECT_FALSE(b.remove("not an id"));
  EXPECT_EQ(stored_ids(b), std::vector<std::string>{other.id});
}

void remove_user_deletes_the_users_rows_in_every_tenant(Context& c) {
  SessionBackend& b = c.backend;
  const Session bob = make_row("bob", "t1");
  for (const char* tenant : {"t1", "t2"}) b.save(make_row("alice", std::string(tenant)));
  b.save(make_row("alice", std::nullopt));
  b.save(bob);
  EXPECT_EQ(b.remove_user("alice"), 3U);
  EXPECT_EQ(b.remove_user("alice"), 0U);
  EXPECT_EQ(b.remove_user("Alice"), 0U) << "user ids are compared exactly";
  EXPECT_EQ(stored_ids(b), std::vector<std::string>{bob.id});
}

void remove_expired_deletes_rows_expiring_at_or_before_now(Context& c) {
  SessionBackend& b = c.backend;
  Session before = make_row("alice", std::nullopt, kNow - 100);
  before.expires_at = kNow - 1;
  Session at = make_row("alice", std::nullopt, kNow - 100);
  at.expires_at = kNow;
  Session after = make_row("alice", std::nullopt, kNow - 100);
  after.expires_at = kNow + 1;
  // A rotated id expiring at kNow + 200 (the rotated row's hard cap).
  Session rotated = make_row("bob", std::nullopt, kNow - 100);
  rotated.expires_at = kNow + 100;
  rotated.absolute_expires_at = kNow + 200;
  for (const Session* row : {&before, &at, &after, &rotated}) b.save(*row);
  const std::optional<Session> successor = b.rotate(rotated.id, new_id(), kNow - 50);
  ASSERT_TRUE(successor.has_value());

  EXPECT_EQ(b.remove_expired(kNow), 2U);
  EXPECT_EQ(stored_ids(b), sorted({after.id, successor->id}));
  EXPECT_EQ(rotated_ids(b).size(), 1U) << "a rotated id was deleted before its expiry";
  EXPECT_EQ(b.remove_expired(kNow + 199), 2U);
  EXPECT_EQ(rotated_ids(b).size(), 1U);
  EXPECT_EQ(b.remove_expired(kNow + 200), 0U) << "only sessions are counted";
  EXPECT_TRUE(rotated_ids(b).empty()) << "remove_expired() keeps an expired rotated id";
}

void remove_expired_batch_deletes_at_most_its_limit(Context& c) {
  SessionBackend& b = c.backend;
  std::vector<std::string> live;
  for (int i = 0; i < 5; ++i) {
    Session expired = make_row("alice", std::nullopt, kNow - 100);
    expired.expires_at = kNow - i;
    b.save(expired);
  }
  for (int i = 0; i < 2; ++i) {
    const Session row = make_row("bob", std::nullopt);
    b.save(row);
    live.push_back(row.id);
  }
  EXPECT_EQ(b.remove_expired_batch(kNow, 2), 2U);
  EXPECT_EQ(b.remove_expired_batch(kNow, 2), 2U);
  EXPECT_EQ(b.remove_expired_batch(kNow, 2), 1U);
  EXPECT_EQ(b.remove_expired_batch(kNow, 2), 0U);
  EXPECT_EQ(stored_ids(b), sorted(live));
}

void remove_matching_refuses_a_filter_that_would_match_everyone(Context& c) {
  SessionBackend& b = c.backend;
  const Session a = make_row("alice", "t1");
  const Session other = make_row("bob", std::nullopt);
  b.save(a);
  b.save(other);
  SessionFilter except_only;
  except_only.except_id = a.id;
  for (const SessionFilter& filter : {SessionFilter{}, except_only}) {
    EXPECT_TRUE(throws_code([&] { b.remove_matching(filter); }, ErrorCode::kInvalidArgument));
  }
  EXPECT_EQ(stored_ids(b), sorted({a.id, other.id})) << "a refused filter deleted rows";
}

void remove_matching_deletes_exactly_the_matching_rows_and_returns_them(Context& c) {
  SessionBackend& b = c.backend;
  Session r1 = make_row("alice", "t1");
  r1.idp_session_id = "sid-A";
  Session r2 = make_row("alice", "t1");
  r2.idp_session_id = "sid-B";
  Session r3 = make_row("alice", "t2");
  r3.idp_session_id = "sid-A";
  Session r4 = make_row("bob", "t1");
  r4.idp_session_id = "sid-A";
  Session r5 = make_row("alice", std::nullopt);
  r5.idp_session_id.reset();
  for (const Session* row : {&r1, &r2, &r3, &r4, &r5}) b.save(*row);

  SessionFilter others_in_t1;  // "sign out the others", in one tenant
  others_in_t1.user_id = "alice";
  others_in_t1.tenant_id = "t1";
  others_in_t1.except_id = r1.id;
  EXPECT_EQ(named(b.remove_matching(others_in_t1)), names_of({&r2}));

  SessionFilter id_in_other_tenant;
  id_in_other_tenant.id = r4.id;
  id_in_other_tenant.tenant_id = "t2";
  EXPECT_TRUE(b.remove_matching(id_in_other_tenant).empty()) << "r4 is t1's";

  SessionFilter sid_in_t2;
  sid_in_t2.idp_session_id = "sid-A";
  sid_in_t2.tenant_id = "t2";
  EXPECT_EQ(named(b.remove_matching(sid_in_t2)), names_of({&r3}));

  SessionFilter unknown_sid;
  unknown_sid.idp_session_id = "sid-unknown";
  EXPECT_TRUE(b.remove_matching(unknown_sid).empty());

  SessionFilter sid;  // two users: each row named with its own user
  sid.idp_session_id = "sid-A";
  EXPECT_EQ(named(b.remove_matching(sid)), names_of({&r1, &r4}));

  SessionFilter by_id;
  by_id.id = r5.id;
  by_id.user_id = "bob";
  EXPECT_TRUE(b.remove_matching(by_id).empty()) << "r5 is alice's";
  EXPECT_EQ(stored_ids(b), std::vector<std::string>{r5.id});
  by_id.user_id = "alice";
  EXPECT_EQ(named(b.remove_matching(by_id)), names_of({&r5}));
  EXPECT_TRUE(b.load_all().empty());
}

void remove_matching_by_tenant_alone_deletes_that_whole_tenant(Context& c) {
  SessionBackend& b = c.backend;
  const Session alice = make_row("alice", "t1");
  const Session bob = make_row("bob", "t1");
  const Session visitor = make_row("", "t1");
  const Session kept_by_except = make_row("carol", "t1");
  const Session other_tenant = make_row("alice", "t2");
  const Session other_case = make_row("alice", "T1");  // tenants are compared exactly
  const Session no_tenant = make_row("alice", std::nullopt);
  for (const Session* row :
       {&alice, &bob, &visitor, &kept_by_except, &other_tenant, &other_case, &no_tenant}) {
    b.save(*row);
  }
  SessionFilter tenant_but_one;
  tenant_but_one.tenant_id = "t1";
  tenant_but_one.except_id = kept_by_except.id;
  EXPECT_EQ(named(b.remove_matching(tenant_but_one)), names_of({&alice, &bob, &visitor}))
      << "each row named with its own user, the anonymous one with \"\"";
  SessionFilter tenant;
  tenant.tenant_id = "t1";
  EXPECT_EQ(named(b.remove_matching(tenant)), names_of({&kept_by_except}));
  EXPECT_TRUE(b.remove_matching(tenant).empty());
  SessionFilter unknown;
  unknown.tenant_id = "t9";
  EXPECT_TRUE(b.remove_matching(unknown).empty());
  EXPECT_EQ(stored_ids(b), sorted({other_tenant.id, other_case.id, no_tenant.id}));
}

// ------------------------------------------------------------------------------------------------
// replace
// ------------------------------------------------------------------------------------------------

void replace_swaps_the_old_row_for_the_replacement(Context& c) {
  SessionBackend& b = c.backend;
  const Session old_row = make_row("alice", "t1");
  const Session other = make_row("bob", std::nullopt);
  b.save(old_row);
  b.save(other);
  Session replacement = old_row;
  replacement.id = new_id();
  replacement.data = "replaced";
  EXPECT_TRUE(b.replace(old_row.id, replacement));
  EXPECT_TRUE(same_rows({replacement, other}, b.load_all()));
  EXPECT_FALSE(b.replace(old_row.id, make_row("alice", "t1"))) << "the old row is gone";
  EXPECT_TRUE(same_rows({replacement, other}, b.load_all()));

  // The same id: an update, which never brings back a row deleted meanwhile.
  Session updated = replacement;
  updated.last_seen_at += 60;
  EXPECT_TRUE(b.replace(replacement.id, updated));
  EXPECT_TRUE(same(updated, b.load_one(updated.id)));
  ASSERT_TRUE(b.remove(updated.id));
  EXPECT_FALSE(b.replace(updated.id, updated));
  EXPECT_EQ(stored_ids(b), std::vector<std::string>{other.id});
}

// ------------------------------------------------------------------------------------------------
// insert_new, touch, update_data
// ------------------------------------------------------------------------------------------------

void insert_new_without_a_cap_inserts_and_evicts_nothing(Context& c) {
  SessionBackend& b = c.backend;
  const std::vector<Session> rows{make_row("alice", "t1"), make_row("alice", "t1"),
                                  make_row("alice", "t1"), make_row("alice", "t1")};
  EXPECT_TRUE(b.insert_new({rows[0], rows[1]}, 0).empty());
  EXPECT_TRUE(b.insert_new({rows[2], rows[3]}, 0).empty());
  EXPECT_TRUE(same_rows(rows, b.load_all()));
}

void insert_new_evicts_the_oldest_beyond_the_cap_in_the_new_sessions_tenant(Context& c) {
  SessionBackend& b = c.backend;
  // The same user, tenant and created_at: the order of insertion decides.
  const Session a1 = make_row("alice", "t1");
  const Session a2 = make_row("alice", "t1");
  const Session a3 = make_row("alice", "t1");
  EXPECT_TRUE(b.insert_new({a1, a2}, 2).empty());
  EXPECT_EQ(named(b.insert_new({a3}, 2)), names_of({&a1}));
  // Another tenant of the user, and no tenant, each have a cap of their own.
  const Session a_t2 = make_row("alice", "t2");
  const Session a_none = make_row("alice", std::nullopt);
  EXPECT_TRUE(b.insert_new({a_t2}, 1).empty());
  EXPECT_TRUE(b.insert_new({a_none}, 1).empty());
  EXPECT_EQ(stored_ids(b), sorted({a2.id, a3.id, a_t2.id, a_none.id}));
  const Session a_none2 = make_row("alice", std::nullopt);
  EXPECT_EQ(named(b.insert_new({a_none2}, 1)), names_of({&a_none}));
  // Within one batch, the earlier row is the older.
  const Session b1 = make_row("bob", "t1");
  const Session b2 = make_row("bob", "t1");
  EXPECT_EQ(named(b.insert_new({b1, b2}, 1)), names_of({&b1}));
  // created_at comes before the order of insertion.
  const Session c_newer = make_row("carol", "t1", kNow + 100);
  const Session c_older = make_row("carol", "t1", kNow);
  const Session c_newest = make_row("carol", "t1", kNow + 200);
  EXPECT_TRUE(b.insert_new({c_newer}, 2).empty());
  EXPECT_TRUE(b.insert_new({c_older}, 2).empty());
  EXPECT_EQ(named(b.insert_new({c_newest}, 2)), names_of({&c_older}));
  EXPECT_EQ(stored_ids(b),
            sorted({a2.id, a3.id, a_t2.id, a_none2.id, b2.id, c_newer.id, c_newest.id}));
  EXPECT_TRUE(same(c_newest, b.load_one(c_newest.id)));
}

void insert_new_never_caps_anonymous_rows(Context& c) {
  SessionBackend& b = c.backend;
  const std::vector<Session> visitors{make_row("", "t1"), make_row("", "t1"), make_row("", "t1")};
  EXPECT_TRUE(b.insert_new({visitors[0], visitors[1]}, 1).empty());
  EXPECT_TRUE(b.insert_new({visitors[2]}, 1).empty()) << "anonymous rows have no cap";
  const Session alice = make_row("alice", "t1");
  EXPECT_TRUE(b.insert_new({alice}, 1).empty()) << "visitors count against no user";
  EXPECT_TRUE(same_rows({visitors[0], visitors[1], visitors[2], alice}, b.load_all()));
}

void touch_moves_only_its_two_times_and_never_back(Context& c) {
  SessionBackend& b = c.backend;
  const Session row = make_row("alice", "t1");
  b.save(row);
  // Earlier values: nothing moves back.
  EXPECT_TRUE(same(row, b.touch(row.id, row.last_seen_at - 5, row.expires_at - 5)));
  // Later values: exactly the two columns move.
  Session expected = row;
  expected.last_seen_at += 100;
  expected.expires_at += 100;
  EXPECT_TRUE(same(expected, b.touch(row.id, expected.last_seen_at, expected.expires_at)));
  // Each to the larger of the two, independently.
  expected.last_seen_at += 50;
  EXPECT_TRUE(same(expected, b.touch(row.id, expected.last_seen_at, expected.expires_at - 1000)));
  EXPECT_TRUE(same(expected, b.load_one(row.id)));
  // Never inserts.
  EXPECT_FALSE(b.touch(new_id(), kNow, kNow + 60).has_value());
  EXPECT_EQ(b.load_all().size(), 1U);
}

void update_data_sets_only_data_and_never_inserts(Context& c) {
  SessionBackend& b = c.backend;
  const Session row = make_row("alice", "t1");
  b.save(row);
  Session expected = row;
  expected.data = every_byte();
  EXPECT_TRUE(same(expected, b.update_data(row.id, expected.data)));
  EXPECT_TRUE(same(expected, b.load_one(row.id)));
  expected.data.clear();
  EXPECT_TRUE(same(expected, b.update_data(row.id, "")));
  EXPECT_FALSE(b.update_data(new_id(), "x").has_value());
  EXPECT_TRUE(same_rows({expected}, b.load_all()));
}

// ------------------------------------------------------------------------------------------------
// rotate and the rotated ids
// ------------------------------------------------------------------------------------------------

void rotate_copies_the_stored_row_and_keeps_a_rotated_id(Context& c) {
  SessionBackend& b = c.backend;
  const Session row = make_row("alice", "t1");
  const Session other = make_row("bob", std::nullopt);
  b.save(row);
  b.save(other);
  const std::string successor_id = new_id();
  const std::int64_t now = row.created_at + 20;
  Session expected = row;
  expected.id = successor_id;
  EXPECT_TRUE(same(expected, b.rotate(row.id, successor_id, now)));
  EXPECT_TRUE(same_rows({expected, other}, b.load_all()));
  EXPECT_TRUE(same_rotated(
      {RotatedId{row.id, successor_id, "alice", row.tenant_id, now, row.absolute_expires_at}},
      rotated_ids(b)));

  // Without a hard cap (absolute_expires_at 0), the rotated id expires with the session.
  Session uncapped = make_row("carol", std::nullopt);
  uncapped.absolute_expires_at = 0;
  b.save(uncapped);
  const std::string uncapped_successor = new_id();
  ASSERT_TRUE(b.rotate(uncapped.id, uncapped_successor, now).has_value());
  const std::vector<RotatedId> all = rotated_ids(b);
  const auto found =
      std::find_if(all.begin(), all.end(), [&](const RotatedId& r) { return r.id == uncapped.id; });
  ASSERT_NE(found, all.end());
  EXPECT_TRUE(same_rotated(
      {RotatedId{uncapped.id, uncapped_successor, "carol", std::nullopt, now, uncapped.expires_at}},
      {*found}));
}

void rotate_of_a_missing_or_expired_row_writes_nothing(Context& c) {
  SessionBackend& b = c.backend;
  const Session expired = make_row("alice", "t1");
  b.save(expired);
  const std::string successor_id = new_id();
  EXPECT_FALSE(b.rotate(new_id(), successor_id, kNow).has_value());
  EXPECT_FALSE(b.rotate(expired.id, successor_id, expired.expires_at).has_value())
      << "expires_at <= now: expired";
  EXPECT_FALSE(b.rotate(expired.id, successor_id, expired.expires_at + 1).has_value());
  EXPECT_TRUE(same_rows({expired}, b.load_all()));
  EXPECT_TRUE(rotated_ids(b).empty());
}

void a_rotated_row_is_the_newest_for_the_cap(Context& c) {
  SessionBackend& b = c.backend;
  const Session first = make_row("alice", "t1");
  const Session second = make_row("alice", "t1");  // the same created_at
  ASSERT_TRUE(b.insert_new({first, second}, 2).empty());
  const std::optional<Session> rotated = b.rotate(first.id, new_id(), kNow + 1);
  ASSERT_TRUE(rotated.has_value());
  const Session third = make_row("alice", "t1");
  EXPECT_EQ(named(b.insert_new({third}, 2)), names_of({&second}))
      << "the rotated row was inserted after `second`, so `second` is the oldest";
  EXPECT_EQ(stored_ids(b), sorted({rotated->id, third.id}));
}

void rotated_ids_are_never_sessions(Context& c) {
  SessionBackend& b = c.backend;
  const Session row = make_row("alice", "t1");
  b.save(row);
  const std::optional<Session> successor = b.rotate(row.id, new_id(), kNow + 1);
  ASSERT_TRUE(successor.has_value());
  EXPECT_EQ(stored_ids(b), std::vector<std::string>{successor->id});
  EXPECT_FALSE(b.load_one(row.id).has_value());
  EXPECT_FALSE(b.touch(row.id, kNow + 2, kNow + 100).has_value());
  EXPECT_FALSE(b.update_data(row.id, "x").has_value());
  EXPECT_FALSE(b.rotate(row.id, new_id(), kNow + 2).has_value());
  EXPECT_FALSE(b.remove(row.id));
  EXPECT_EQ(stored_ids(b), std::vector<std::string>{successor->id});
  EXPECT_EQ(rotated_ids(b).size(), 1U);
  // Deleting the user's sessions leaves the rotated id to expire on its own.
  EXPECT_EQ(b.remove_user("alice"), 1U);
  EXPECT_EQ(rotated_ids(b).size(), 1U);
}

void remove_expired_rotated_deletes_at_most_its_limit_of_due_ids(Context& c) {
  SessionBackend& b = c.backend;
  std::vector<std::string> successors;
  for (int i = 1; i <= 3; ++i) {
    Session row = make_row("alice", "t1");
    row.absolute_expires_at = kNow + std::int64_t{1000} * i;
    b.save(row);
    const std::optional<Session> successor = b.rotate(row.id, new_id(), kNow + 1);
    ASSERT_TRUE(successor.has_value());
    successors.push_back(successor->id);
  }
  EXPECT_EQ(b.remove_expired_rotated(kNow + 1999, 5), 1U);
  EXPECT_EQ(b.remove_expired_rotated(kNow + 3000, 1), 1U);
  EXPECT_EQ(b.remove_expired_rotated(kNow + 3000, 1), 1U);
  EXPECT_EQ(b.remove_expired_rotated(kNow + 3000, 1), 0U);
  EXPECT_TRUE(rotated_ids(b).empty());
  EXPECT_EQ(stored_ids(b), sorted(successors)) << "sessions are not rotated ids";
}

// ------------------------------------------------------------------------------------------------
// authenticate
// ------------------------------------------------------------------------------------------------

void authenticate_signs_an_anonymous_row_in_as_a_rotation(Context& c) {
  SessionBackend& b = c.backend;
  const Session visitor = make_row("", "t1");
  const Session other = make_row("bob", "t1");
  b.save(visitor);
  b.save(other);
  const std::string successor_id = new_id();
  const std::int64_t now = visitor.created_at + 30;
  const std::optional<Authentication> signed_in =
      b.authenticate(visitor.id, successor_id, "alice", now, 0);
  ASSERT_TRUE(signed_in.has_value());
  Session expected = visitor;  // every column as stored: data, tenant, times, lifetimes
  expected.id = successor_id;
  expected.user_id = "alice";
  expected.authenticated_at = now;
  EXPECT_TRUE(same(expected, signed_in->session));
  EXPECT_TRUE(signed_in->evicted.empty());
  EXPECT_TRUE(same_rows({expected, other}, b.load_all())) << "the old row must be gone";
  EXPECT_TRUE(same_rotated({RotatedId{visitor.id, successor_id, "", visitor.tenant_id, now,
                                      visitor.absolute_expires_at}},
                           rotated_ids(b)))
      << "the rotated id is rotate()'s: the old row's user (none) and tenant";
  // The old id is a rotated id now, not a session: it cannot be signed in to again.
  EXPECT_FALSE(b.authenticate(visitor.id, new_id(), "alice", now + 1, 0).has_value());
  EXPECT_TRUE(same_rows({expected, other}, b.load_all()));
}

void authenticate_of_the_same_user_moves_authenticated_at(Context& c) {
  SessionBackend& b = c.backend;
  const Session row = make_row("alice", "t1");
  b.save(row);
  const std::string successor_id = new_id();
  const std::int64_t now = row.created_at + 600;
  const std::optional<Authentication> again = b.authenticate(row.id, successor_id, "alice", now, 1);
  ASSERT_TRUE(again.has_value());
  Session expected = row;
  expected.id = successor_id;
  expected.authenticated_at = now;
  EXPECT_TRUE(same(expected, again->session));
  EXPECT_TRUE(again->evicted.empty()) << "at a cap of 1 the signed-in row itself stays";
  EXPECT_TRUE(same_rows({expected}, b.load_all()));
  EXPECT_TRUE(same_rotated(
      {RotatedId{row.id, successor_id, "alice", row.tenant_id, now, row.absolute_expires_at}},
      rotated_ids(b)));
}

void authenticate_refuses_another_users_row_and_writes_nothing(Context& c) {
  SessionBackend& b = c.backend;
  const Session bobs = make_row("bob", "t1");
  b.save(bobs);
  EXPECT_TRUE(throws_code([&] { b.authenticate(bobs.id, new_id(), "alice", kNow + 20, 0); },
                          ErrorCode::kInvalidArgument));
  EXPECT_TRUE(throws_code([&] { b.authenticate(bobs.id, new_id(), "Bob", kNow + 20, 0); },
                          ErrorCode::kInvalidArgument))
      << "user ids are compared exactly";
  EXPECT_TRUE(same_rows({bobs}, b.load_all()));
  EXPECT_TRUE(rotated_ids(b).empty());
}

void authenticate_of_a_missing_or_expired_row_writes_nothing(Context& c) {
  SessionBackend& b = c.backend;
  const Session visitor = make_row("", "t1");
  b.save(visitor);
  EXPECT_FALSE(b.authenticate(new_id(), new_id(), "alice", kNow, 0).has_value());
  EXPECT_FALSE(b.authenticate(visitor.id, new_id(), "alice", visitor.expires_at, 0).has_value())
      << "expires_at <= now: expired";
  EXPECT_FALSE(
      b.authenticate(visitor.id, new_id(), "alice", visitor.expires_at + 1, 3).has_value());
  EXPECT_TRUE(same_rows({visitor}, b.load_all()));
  EXPECT_TRUE(rotated_ids(b).empty());
}

void authenticate_evicts_the_users_oldest_others_beyond_the_cap(Context& c) {
  SessionBackend& b = c.backend;
  // The visitor's row is older than every session of the user: the cap still keeps it, the
  // row being signed in, and evicts the oldest others.
  const Session visitor = make_row("", "t1", kNow);
  const Session older = make_row("alice", "t1", kNow + 100);
  const Session newer = make_row("alice", "t1", kNow + 200);
  const Session other_tenant = make_row("alice", "t2", kNow + 50);
  const Session no_tenant = make_row("alice", std::nullopt, kNow + 50);
  const Session other_user = make_row("bob", "t1", kNow + 10);
  for (const Session* row : {&visitor, &older, &newer, &other_tenant, &no_tenant, &other_user}) {
    b.save(*row);
  }
  const std::optional<Authentication> signed_in =
      b.authenticate(visitor.id, new_id(), "alice", kNow + 300, 2);
  ASSERT_TRUE(signed_in.has_value());
  EXPECT_EQ(named(signed_in->evicted), names_of({&older}));
  EXPECT_EQ(stored_ids(b), sorted({signed_in->session.id, newer.id, other_tenant.id, no_tenant.id,
                                   other_user.id}));
  // A cap of 1: the signed-in row alone stays in its tenant.
  const Session visitor2 = make_row("", "t2", kNow);
  b.save(visitor2);
  const std::optional<Authentication> only =
      b.authenticate(visitor2.id, new_id(), "alice", kNow + 400, 1);
  ASSERT_TRUE(only.has_value());
  EXPECT_EQ(named(only->evicted), names_of({&other_tenant}));
  EXPECT_TRUE(same(only->session, b.load_one(only->session.id)));
  EXPECT_EQ(stored_ids(b), sorted({signed_in->session.id, newer.id, only->session.id, no_tenant.id,
                                   other_user.id}));
}

// ------------------------------------------------------------------------------------------------
// The administrator's reads: list_page, count_by_tenant
// ------------------------------------------------------------------------------------------------

std::vector<std::string> ids_of(const std::vector<Session>& rows) {
  std::vector<std::string> ids;
  ids.reserve(rows.size());
  for (const Session& row : rows) ids.push_back(row.id);
  return ids;
}

void list_page_returns_live_matching_rows_by_id_after_the_cursor(Context& c) {
  SessionBackend& b = c.backend;
  Session a = make_row("alice", "t1", kNow - 100);  // last seen kNow - 90
  a.device = "phone";
  Session a2 = make_row("alice", "t2", kNow);
  Session visitor = make_row("", "t1", kNow + 50);
  visitor.device = "phone";
  Session bob = make_row("bob", std::nullopt, kNow + 100);
  Session expired = make_row("alice", "t1", kNow - 100);
  expired.expires_at = kNow;  // expires_at <= now: not live
  for (const Session* row : {&a, &a2, &visitor, &bob, &expired}) b.save(*row);

  SessionQuery all;
  const std::vector<Session> everything = b.list_page(all, kNow);
  EXPECT_TRUE(same_rows({a, a2, visitor, bob}, everything)) << "the live rows, every column";
  EXPECT_EQ(ids_of(everything), sorted({a.id, a2.id, visitor.id, bob.id})) << "ordered by id";

  const auto listed = [&b](const SessionQuery& query) {
    return sorted(ids_of(b.list_page(query, kNow)));
  };
  SessionQuery q;
  q.tenant_id = "t1";
  EXPECT_EQ(listed(q), sorted({a.id, visitor.id}));
  q = {};
  q.user_id = "alice";
  EXPECT_EQ(listed(q), sorted({a.id, a2.id}));
  q = {};
  q.user_id = "";
  EXPECT_EQ(listed(q), std::vector<std::string>{visitor.id}) << "\"\" lists the anonymous";
  q = {};
  q.device = "phone";
  EXPECT_EQ(listed(q), sorted({a.id, visitor.id}));
  q = {};
  q.created_since = kNow;  // created_at >= kNow
  EXPECT_EQ(listed(q), sorted({a2.id, visitor.id, bob.id}));
  q = {};
  q.created_before = kNow + 50;  // created_at < kNow + 50
  EXPECT_EQ(listed(q), sorted({a.id, a2.id}));
  q = {};
  q.last_seen_since = kNow + 60;  // last_seen_at >= kNow + 60
  EXPECT_EQ(listed(q), sorted({visitor.id, bob.id}));
  q = {};
  q.last_seen_before = kNow + 60;  // last_seen_at < kNow + 60
  EXPECT_EQ(listed(q), sorted({a.id, a2.id}));
  q = {};
  q.tenant_id = "t1";
  q.user_id = "alice";
  q.device = "phone";
  q.created_since = kNow - 100;
  q.created_before = kNow - 99;
  q.last_seen_since = kNow - 90;
  q.last_seen_before = kNow - 89;
  EXPECT_EQ(listed(q), std::vector<std::string>{a.id}) << "every filter at its boundary";
  q.user_id = "Alice";
  EXPECT_TRUE(listed(q).empty()) << "text is compared exactly";
  // At a later time the same rows are no longer live.
  EXPECT_TRUE(b.list_page(all, kNow + std::int64_t{1} * 86400 * 2).empty());
}

void list_page_pages_by_keyset_without_gaps_or_repeats(Context& c) {
  SessionBackend& b = c.backend;
  std::vector<std::string> ids;
  for (int i = 0; i < 25; ++i) {
    const Session row = make_row("user-" + std::to_string(i % 3), "t", kNow + i);
    b.save(row);
    ids.push_back(row.id);
  }
  SessionQuery q;
  q.limit = 10;
  std::vector<std::string> seen;
  std::size_t pages = 0;
  while (true) {
    const std::vector<Session> page = b.list_page(q, kNow);
    ASSERT_LE(page.size(), q.limit);
    for (const Session& row : page) {
      EXPECT_GT(row.id, q.after) << "a row at or before the cursor";
      seen.push_back(row.id);
    }
    if (page.size() < q.limit) break;
    q.after = page.back().id;
    ASSERT_LT(++pages, 10U) << "paging does not end";
  }
  EXPECT_EQ(seen, sorted(ids)) << "each row once, in id order";
  // A cursor need not be a stored id: any id works as a position.
  q.after = std::string(64, '0');
  q.limit = kMaxPageSize;
  EXPECT_EQ(ids_of(b.list_page(q, kNow)), sorted(ids));
  q.after = std::string(64, 'f');
  EXPECT_TRUE(b.list_page(q, kNow).empty());
}

void list_page_refuses_a_limit_or_cursor_out_of_range(Context& c) {
  SessionBackend& b = c.backend;
  b.save(make_row("alice", "t1"));
  SessionQuery q;
  q.limit = 0;
  EXPECT_TRUE(throws_code([&] { b.list_page(q, kNow); }, ErrorCode::kInvalidArgument)) << "0";
  q.limit = kMaxPageSize + 1;
  EXPECT_TRUE(throws_code([&] { b.list_page(q, kNow); }, ErrorCode::kInvalidArgument))
      << "kMaxPageSize + 1";
  q.limit = kMaxPageSize;
  EXPECT_EQ(b.list_page(q, kNow).size(), 1U) << "kMaxPageSize itself is allowed";
  q.limit = 1;
  EXPECT_EQ(b.list_page(q, kNow).size(), 1U) << "1 is allowed";
  for (const std::string& cursor :
       {std::string("not a cursor"), std::string(64, 'A'), std::string(63, 'a'),
        std::string(65, 'a'), std::string("' OR 1=1 --")}) {
    q.after = cursor;
    EXPECT_TRUE(throws_code([&] { b.list_page(q, kNow); }, ErrorCode::kInvalidArgument))
        << "cursor \"" << cursor << "\"";
  }
}

void count_by_tenant_counts_live_rows_and_anonymous_ones_by_tenant(Context& c) {
  SessionBackend& b = c.backend;
  Session expired = make_row("alice", "gone");
  expired.expires_at = kNow;
  Session expired_visitor = make_row("", "a");
  expired_visitor.expires_at = kNow - 5;
  for (const Session& row : {make_row("alice", "a"), make_row("bob", "a"), make_row("", "a"),
                             make_row("", std::nullopt), make_row("carol", std::nullopt),
                             make_row("alice", "B"), make_row("", "b"), expired, expired_visitor}) {
    b.save(row);
  }
  const std::vector<TenantCount> expected{
      {std::nullopt, 2, 1},  // the sessions without a tenant come first
      {"B", 1, 0},           // then by tenant, in byte order
      {"a", 3, 1},
      {"b", 1, 1},
  };
  const std::vector<TenantCount> counted = b.count_by_tenant(kNow);
  ASSERT_EQ(counted.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(counted[i], expected[i])
        << "#" << i << ": got tenant " << quoted(counted[i].tenant_id) << " with "
        << counted[i].sessions << " sessions, " << counted[i].anonymous << " anonymous";
  }
  EXPECT_TRUE(b.count_by_tenant(kNow + std::int64_t{2} * 86400).empty()) << "none live then";
}

// ------------------------------------------------------------------------------------------------
// Threads
// ------------------------------------------------------------------------------------------------

void several_threads_share_one_backend(Context& c) {
  SessionBackend& b = c.backend;
  constexpr std::size_t kThreads = 4;
  constexpr std::size_t kRowsEach = 20;
  std::vector<std::vector<Session>> rows(kThreads);
  for (std::size_t t = 0; t < kThreads; ++t) {
    for (std::size_t i = 0; i < kRowsEach; ++i) {
      rows[t].push_back(make_row("user-" + std::to_string(t), "t"));
    }
  }
  std::mutex failures_mutex;
  std::vector<std::string> failures;
  std::vector<std::thread> threads;
  threads.reserve(rows.size());
  for (std::vector<Session>& mine : rows) {
    threads.emplace_back([&b, &mine, &failures, &failures_mutex] {
      try {
        for (Session& row : mine) {
          b.save(row);
          row.data = "updated: " + row.id;
          if (!b.update_data(row.id, row.data)) throw std::runtime_error("update_data lost a row");
          row.last_seen_at += 1;
          row.expires_at += 1;
          if (!b.touch(row.id, row.last_seen_at, row.expires_at)) {
            throw std::runtime_error("touch lost a row");
          }
        }
      } catch (const std::exception& error) {
        const std::lock_guard<std::mutex> lock(failures_mutex);
        failures.emplace_back(error.what());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_TRUE(failures.empty()) << failures.front();
  std::vector<Session> expected;
  for (const std::vector<Session>& mine : rows) {
    expected.insert(expected.end(), mine.begin(), mine.end());
  }
  EXPECT_TRUE(same_rows(expected, b.load_all()));
}

// ------------------------------------------------------------------------------------------------
// A SessionStore on the backend
// ------------------------------------------------------------------------------------------------

void a_store_logs_in_validates_and_revokes_through_the_backend(Context& c) {
  SessionStore store = c.store();
  CreateOptions where;
  where.device = "Firefox on Linux";
  where.data = std::string("\0cart", 5);
  const NewSession login = store.create("alice", where);
  const std::optional<Session> valid = store.validate(login.token);
  ASSERT_TRUE(valid.has_value());
  EXPECT_EQ(valid->user_id, "alice");
  EXPECT_TRUE(same(login.session, c.backend.load_one(login.session.id)))
      << "the session is in storage once create() returns";
  EXPECT_TRUE(store.revoke(login.token));
  EXPECT_FALSE(c.backend.load_one(login.session.id).has_value())
      << "a revoked session is gone from storage once revoke() returns";
  EXPECT_FALSE(store.validate(login.token).has_value());
}

void a_store_writes_data_through_and_purges(Context& c) {
  SessionStore store = c.store();
  const NewSession login = store.create("alice");
  const std::string data = every_byte();
  ASSERT_TRUE(store.update_data(login.token, data).has_value());
  const std::optional<Session> stored = c.backend.load_one(login.session.id);
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(stored->data, data);
  c.now->store(kNow + std::int64_t{25} * 3600);  // past the default absolute_ttl of 24 h
  EXPECT_FALSE(store.validate(login.token).has_value());
  EXPECT_EQ(store.purge_expired(), 1U);
  EXPECT_TRUE(c.backend.load_all().empty());
}

void a_store_rotation_reports_a_replayed_old_token(Context& c) {
  std::vector<SessionEvent> events;
  StoreOptions options;
  options.on_event = [&events](const SessionEvent& event) { events.push_back(event); };
  SessionStore store = c.store(options);
  const NewSession login = store.create("alice");
  const std::optional<NewSession> rotated = store.rotate(login.token);
  ASSERT_TRUE(rotated.has_value());
  EXPECT_TRUE(store.validate(rotated->token).has_value());
  EXPECT_FALSE(store.validate(login.token).has_value());
  const auto reuse = std::find_if(events.begin(), events.end(), [](const SessionEvent& event) {
    return event.type == SessionEventType::kRotatedTokenReused;
  });
  ASSERT_NE(reuse, events.end()) << "no kRotatedTokenReused event";
  EXPECT_EQ(reuse->session_id, login.session.id);
  EXPECT_EQ(reuse->replaced_by, rotated->session.id);
  EXPECT_EQ(stored_ids(c.backend), std::vector<std::string>{rotated->session.id});
}

void a_store_cap_evicts_the_oldest_session(Context& c) {
  StoreOptions options;
  options.max_sessions_per_user = 2;
  SessionStore store = c.store(options);
  const NewSession first = store.create("alice");
  const NewSession second = store.create("alice");
  const NewSession third = store.create("alice");
  EXPECT_FALSE(store.validate(first.token).has_value());
  EXPECT_EQ(store.list_user("alice").size(), 2U);
  EXPECT_EQ(stored_ids(c.backend), sorted({second.session.id, third.session.id}));
}

void a_store_signs_out_everywhere_and_by_claims(Context& c) {
  SessionStore store = c.store();
  CreateOptions with_sid;
  with_sid.idp_session_id = "sid-1";
  const NewSession by_sid = store.create("bob", with_sid);
  const NewSession bob_other = store.create("bob");
  store.create("alice");
  store.create("alice");
  EXPECT_EQ(store.logout_by_claims(std::string_view("sid-1"), std::nullopt), 1U);
  EXPECT_FALSE(store.validate(by_sid.token).has_value());
  EXPECT_EQ(store.revoke_user("alice"), 2U);
  EXPECT_EQ(stored_ids(c.backend), std::vector<std::string>{bob_other.session.id});
}

void a_store_signs_a_visitor_in_keeping_their_data(Context& c) {
  StoreOptions options;
  options.max_sessions_per_user = 1;
  SessionStore store = c.store(options);
  const NewSession earlier = store.create("alice");
  const NewSession visitor = store.create_anonymous();
  ASSERT_TRUE(store.update_data(visitor.token, "cart=[book]").has_value());
  EXPECT_TRUE(store.list_user("").empty()) << "no user lists a visitor";
  c.now->fetch_add(60);
  const std::optional<NewSession> signed_in = store.attach_user(visitor.token, "alice");
  ASSERT_TRUE(signed_in.has_value());
  EXPECT_NE(signed_in->token, visitor.token);
  EXPECT_FALSE(store.validate(visitor.token).has_value()) << "the visitor's token still works";
  EXPECT_FALSE(store.validate(earlier.token).has_value()) << "the cap of 1 was not applied";
  const std::optional<Session> stored = c.backend.load_one(signed_in->session.id);
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(stored->user_id, "alice");
  EXPECT_EQ(stored->data, "cart=[book]");
  EXPECT_EQ(stored->authenticated_at, c.now->load());
  EXPECT_EQ(stored_ids(c.backend), std::vector<std::string>{signed_in->session.id});
}

void a_store_lists_counts_and_revokes_a_tenant_through_the_backend(Context& c) {
  SessionStore store = c.store();
  CreateOptions t1;
  t1.tenant_id = "t1";
  CreateOptions t2;
  t2.tenant_id = "t2";
  std::vector<std::string> t1_ids;
  t1_ids.reserve(7);
  for (int i = 0; i < 5; ++i) t1_ids.push_back(store.create("alice", t1).session.id);
  t1_ids.push_back(store.create_anonymous(t1).session.id);
  const NewSession kept = store.create("bob", t2);
  // A row another writer stored is listed, counted and revoked too.
  Session foreign = make_row("carol", "t1", c.now->load());
  c.backend.save(foreign);
  t1_ids.push_back(foreign.id);

  SessionQuery q;
  q.tenant_id = "t1";
  q.limit = 3;
  std::vector<std::string> listed;
  for (int pages = 0; pages < 10; ++pages) {
    const SessionPage page = store.list_sessions(q);
    for (const Session& session : page.sessions) listed.push_back(session.id);
    if (page.next_cursor.empty()) break;
    q.after = page.next_cursor;
  }
  EXPECT_EQ(listed, sorted(t1_ids));
  const std::vector<TenantCount> counts = store.count_by_tenant();
  ASSERT_EQ(counts.size(), 2U);
  EXPECT_EQ(counts[0], (TenantCount{"t1", 7, 1}));
  EXPECT_EQ(counts[1], (TenantCount{"t2", 1, 0}));
  EXPECT_EQ(store.revoke_tenant("t1"), 7U);
  EXPECT_EQ(stored_ids(c.backend), std::vector<std::string>{kept.session.id});
  EXPECT_TRUE(store.validate(kept.token).has_value());
}

// ------------------------------------------------------------------------------------------------
// With hooks
// ------------------------------------------------------------------------------------------------

void a_reopened_backend_sees_every_acknowledged_write(Context& c) {
  if (!c.config.reopen) FAIL() << "registered without the reopen hook";
  SessionBackend& b = c.backend;
  Session saved = make_row("alice", "t1");
  saved.data = every_byte();
  b.save(saved);
  b.save_batch({make_row("alice", "t1"), make_row("bob", std::nullopt)});
  b.insert_new({make_row("carol", "t2")}, 1);
  const Session to_rotate = make_row("dave", std::nullopt);
  b.save(to_rotate);
  ASSERT_TRUE(b.rotate(to_rotate.id, new_id(), kNow + 1).has_value());
  ASSERT_TRUE(b.touch(saved.id, saved.last_seen_at + 60, saved.expires_at + 60).has_value());
  ASSERT_TRUE(b.update_data(saved.id, "updated").has_value());
  const Session removed = make_row("erin", std::nullopt);
  b.save(removed);
  ASSERT_TRUE(b.remove(removed.id));

  const std::unique_ptr<SessionBackend> reopened = c.config.reopen(b);
  ASSERT_NE(reopened, nullptr);
  EXPECT_TRUE(same_rows(b.load_all(), reopened->load_all()));
  EXPECT_TRUE(same_rotated(rotated_ids(b), rotated_ids(*reopened)));
  // And the other way: a write through the second is seen by the first.
  const Session later = make_row("frank", std::nullopt);
  reopened->save(later);
  EXPECT_TRUE(same(later, b.load_one(later.id)));
}

void a_store_restarted_on_the_storage_keeps_its_sessions(Context& c) {
  if (!c.config.reopen) FAIL() << "registered without the reopen hook";
  NewSession kept;
  NewSession revoked;
  NewSession rotated_away;
  std::optional<NewSession> successor;
  {
    SessionStore store = c.store();
    kept = store.create("alice");
    revoked = store.create("alice");
    rotated_away = store.create("bob");
    successor = store.rotate(rotated_away.token);
    ASSERT_TRUE(successor.has_value());
    ASSERT_TRUE(store.revoke(revoked.token));
  }
  std::vector<SessionEvent> events;
  StoreOptions options;
  options.clock = [now = c.now] { return now->load(); };
  options.on_event = [&events](const SessionEvent& event) { events.push_back(event); };
  SessionStore restarted(c.config.reopen(c.backend), options);
  EXPECT_TRUE(restarted.validate(kept.token).has_value());
  EXPECT_TRUE(restarted.validate(successor->token).has_value());
  EXPECT_FALSE(restarted.validate(revoked.token).has_value()) << "a revoke came undone";
  EXPECT_FALSE(restarted.validate(rotated_away.token).has_value());
  EXPECT_TRUE(std::any_of(events.begin(), events.end(), [](const SessionEvent& event) {
    return event.type == SessionEventType::kRotatedTokenReused;
  })) << "the replayed old token was not recognised after the restart";
}

void refused_writes_throw_and_change_nothing(Context& c) {
  if (!c.config.refuse_writes) {
    FAIL() << "registered without the refuse_writes hook";
  }
  SessionBackend& b = c.backend;
  const Session a = make_row("alice", "t1");
  const Session a2 = make_row("alice", "t1");
  ASSERT_TRUE(b.insert_new({a, a2}, 0).empty());
  const std::vector<Session> before = b.load_all();

  c.config.refuse_writes(b, true);
  const Session fresh = make_row("alice", "t1");
  EXPECT_TRUE(throws_error([&] { b.save(fresh); })) << "save()";
  EXPECT_TRUE(throws_error([&] {
    b.save_batch({make_row("bob", std::nullopt), fresh});
  })) << "save_batch()";
  EXPECT_TRUE(throws_error([&] { b.insert_new({fresh}, 1); })) << "insert_new() at the cap";
  Session replacement = a;
  replacement.id = new_id();
  EXPECT_TRUE(throws_error([&] { b.replace(a.id, replacement); })) << "replace()";
  EXPECT_TRUE(throws_error([&] { b.touch(a.id, a.last_seen_at + 60, a.expires_at + 60); }))
      << "touch()";
  EXPECT_TRUE(throws_error([&] { b.update_data(a.id, "refused"); })) << "update_data()";
  EXPECT_TRUE(throws_error([&] { b.rotate(a.id, new_id(), kNow + 1); })) << "rotate()";
  EXPECT_TRUE(throws_error([&] { b.authenticate(a.id, new_id(), "alice", kNow + 1, 1); }))
      << "authenticate() at the cap";
  c.config.refuse_writes(b, false);

  EXPECT_TRUE(same_rows(before, b.load_all()))
      << "a failed write changed storage (an insert, an eviction, a replace, a rotation or a "
         "sign-in stayed)";
  EXPECT_TRUE(rotated_ids(b).empty()) << "a failed rotate() or authenticate() kept its rotated id";
  b.save(fresh);
  EXPECT_TRUE(same(fresh, b.load_one(fresh.id))) << "writes work again";
}

void a_store_whose_writes_fail_stays_as_storage_is(Context& c) {
  if (!c.config.refuse_writes) {
    FAIL() << "registered without the refuse_writes hook";
  }
  StoreOptions options;
  options.max_sessions_per_user = 1;
  SessionStore store = c.store(options);
  const NewSession login = store.create("alice");
  c.config.refuse_writes(c.backend, true);
  EXPECT_TRUE(throws_error([&] { store.create("alice"); })) << "create()";
  EXPECT_TRUE(throws_error([&] { store.update_data(login.token, "refused"); })) << "update_data()";
  EXPECT_TRUE(throws_error([&] { store.rotate(login.token); })) << "rotate()";
  c.config.refuse_writes(c.backend, false);
  const std::optional<Session> still = store.validate(login.token);
  ASSERT_TRUE(still.has_value()) << "a failed create at the cap evicted the session";
  EXPECT_EQ(still->data, login.session.data);
  EXPECT_TRUE(same_rows({login.session}, c.backend.load_all()));
  EXPECT_EQ(store.list_user("alice").size(), 1U);
  const NewSession again = store.create("alice");
  EXPECT_TRUE(store.validate(again.token).has_value()) << "writes work again";
}

void a_lost_connection_fails_at_most_one_call(Context& c) {
  if (!c.config.lose_connection) {
    FAIL() << "registered without the lose_connection hook";
  }
  SessionBackend& b = c.backend;
  const Session acknowledged = make_row("alice", "t1");
  b.save(acknowledged);
  c.config.lose_connection(b);
  const Session in_doubt = make_row("alice", "t1");
  try {
    b.save(in_doubt);
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::kConnectionLost) << error.what();
  }
  // The call after it reconnects; every acknowledged write is there.
  EXPECT_TRUE(same(acknowledged, b.load_one(acknowledged.id)));
  const Session after = make_row("bob", std::nullopt);
  b.save(after);
  EXPECT_TRUE(same(after, b.load_one(after.id)));
}

// ------------------------------------------------------------------------------------------------
// The change log
// ------------------------------------------------------------------------------------------------

// The entries of `batch` for `id`, in position order.
std::vector<SessionChange> entries_for(const ChangeBatch& batch, const std::string& id) {
  std::vector<SessionChange> found;
  for (const SessionChange& change : batch.changes) {
    if (change.id == id) found.push_back(change);
  }
  return found;
}

void a_change_source_sees_every_write(Context& c) {
  SessionBackend& b = c.backend;
  const std::unique_ptr<ChangeSource> source = b.open_change_source();
  ASSERT_NE(source, nullptr) << "follows_changes is set, but open_change_source() gave none";
  const std::int64_t start = source->position();

  Session row = make_row("alice", "t1");
  b.save(row);
  ChangeBatch batch = source->read(start, {}, 1000);
  std::vector<SessionChange> seen = entries_for(batch, row.id);
  ASSERT_FALSE(seen.empty()) << "a save is not in the change log";
  EXPECT_TRUE(same(row, seen.back().session)) << "the entry does not carry the stored row";
  for (std::size_t i = 1; i < batch.changes.size(); ++i) {
    EXPECT_LT(batch.changes[i - 1].position, batch.changes[i].position) << "not in order";
  }
  const std::int64_t after_save = batch.changes.back().position;

  ASSERT_TRUE(b.update_data(row.id, "cart=[book]").has_value());
  batch = source->read(after_save, {}, 1000);
  seen = entries_for(batch, row.id);
  ASSERT_FALSE(seen.empty()) << "update_data() is not in the change log";
  ASSERT_TRUE(seen.back().session.has_value());
  EXPECT_EQ(seen.back().session->data, "cart=[book]");
  EXPECT_GT(seen.back().position, after_save);

  const std::string successor = new_id();
  ASSERT_TRUE(b.rotate(row.id, successor, row.created_at + 1).has_value());
  batch = source->read(seen.back().position, {}, 1000);
  seen = entries_for(batch, row.id);
  ASSERT_FALSE(seen.empty()) << "a rotation's old id is not in the change log";
  EXPECT_FALSE(seen.back().session.has_value()) << "the old id's row is gone";
  ASSERT_TRUE(seen.back().rotated.has_value()) << "the old id's entry lacks its rotated record";
  EXPECT_EQ(seen.back().rotated->replaced_by, successor);
  ASSERT_FALSE(entries_for(batch, successor).empty()) << "the successor is not in the log";

  ASSERT_TRUE(b.remove(successor));
  batch = source->read(batch.changes.back().position, {}, 1000);
  seen = entries_for(batch, successor);
  ASSERT_FALSE(seen.empty()) << "a delete is not in the change log";
  EXPECT_FALSE(seen.back().session.has_value());

  // A limit is honoured; an entry asked for again by position comes back.
  const ChangeBatch first = source->read(start, {}, 1);
  ASSERT_EQ(first.changes.size(), 1U);
  const ChangeBatch again =
      source->read(batch.changes.back().position, {first.changes[0].position}, 10);
  ASSERT_EQ(again.changes.size(), 1U);
  EXPECT_EQ(again.changes[0].position, first.changes[0].position);

  // Nothing here is a day old: a prune keeping a day deletes nothing.
  EXPECT_EQ(source->prune(std::chrono::hours(24)), 0U);
  EXPECT_FALSE(source->read(start, {}, 1000).changes.empty());
  EXPECT_GE(source->position(), 0);
}

// ------------------------------------------------------------------------------------------------
// Registration
// ------------------------------------------------------------------------------------------------

// The hook a check needs: a backend without it does not get the check (it is not registered, so
// no test is skipped; the README says which checks need which hook).
enum class Needs { kNothing, kReopen, kRefuseWrites, kLoseConnection, kChangeSource };

struct Check {
  const char* name;
  void (*run)(Context&);
  Needs needs = Needs::kNothing;
};

bool offers(const BackendUnderTest& backend, Needs needs) {
  switch (needs) {
    case Needs::kNothing:
      return true;
    case Needs::kReopen:
      return static_cast<bool>(backend.reopen);
    case Needs::kRefuseWrites:
      return static_cast<bool>(backend.refuse_writes);
    case Needs::kLoseConnection:
      return static_cast<bool>(backend.lose_connection);
    case Needs::kChangeSource:
      return backend.follows_changes;
  }
  return false;
}

// Every check, in the order the tests are registered.
const std::vector<Check>& all_checks() {
  static const std::vector<Check> kChecks{
      {"EmptyBackendHoldsNothing", empty_backend_holds_nothing},
      {"SaveThenLoadReturnsEveryFieldByteForByte",
       save_then_load_returns_every_field_byte_for_byte},
      {"SaveReplacesEveryFieldOfTheSameId", save_replaces_every_field_of_the_same_id},
      {"SaveBatchStoresEveryRowAndARepeatedIdEndsAsItsLastRow",
       save_batch_stores_every_row_and_a_repeated_id_ends_as_its_last_row},
      {"LoadOneFindsExactlyThatRow", load_one_finds_exactly_that_row},
      {"LoadEachEndsAtAnExceptionFromVisit", load_each_ends_at_an_exception_from_visit},
      {"DescribeNamesTheBackend", describe_names_the_backend},
      {"RemoveReportsWhetherARowWasRemoved", remove_reports_whether_a_row_was_removed},
      {"RemoveUserDeletesTheUsersRowsInEveryTenant",
       remove_user_deletes_the_users_rows_in_every_tenant},
      {"RemoveExpiredDeletesRowsExpiringAtOrBeforeNow",
       remove_expired_deletes_rows_expiring_at_or_before_now},
      {"RemoveExpiredBatchDeletesAtMostItsLimit", remove_expired_batch_deletes_at_most_its_limit},
      {"RemoveMatchingRefusesAFilterThatWouldMatchEveryone",
       remove_matching_refuses_a_filter_that_would_match_everyone},
      {"RemoveMatchingDeletesExactlyTheMatchingRowsAndReturnsThem",
       remove_matching_deletes_exactly_the_matching_rows_and_returns_them},
      {"RemoveMatchingByTenantAloneDeletesThatWholeTenant",
       remove_matching_by_tenant_alone_deletes_that_whole_tenant},
      {"ReplaceSwapsTheOldRowForTheReplacement", replace_swaps_the_old_row_for_the_replacement},
      {"InsertNewWithoutACapInsertsAndEvictsNothing",
       insert_new_without_a_cap_inserts_and_evicts_nothing},
      {"InsertNewEvictsTheOldestBeyondTheCapInTheNewSessionsTenant",
       insert_new_evicts_the_oldest_beyond_the_cap_in_the_new_sessions_tenant},
      {"InsertNewNeverCapsAnonymousRows", insert_new_never_caps_anonymous_rows},
      {"TouchMovesOnlyItsTwoTimesAndNeverBack", touch_moves_only_its_two_times_and_never_back},
      {"UpdateDataSetsOnlyDataAndNeverInserts", update_data_sets_only_data_and_never_inserts},
      {"RotateCopiesTheStoredRowAndKeepsARotatedId",
       rotate_copies_the_stored_row_and_keeps_a_rotated_id},
      {"RotateOfAMissingOrExpiredRowWritesNothing",
       rotate_of_a_missing_or_expired_row_writes_nothing},
      {"ARotatedRowIsTheNewestForTheCap", a_rotated_row_is_the_newest_for_the_cap},
      {"RotatedIdsAreNeverSessions", rotated_ids_are_never_sessions},
      {"RemoveExpiredRotatedDeletesAtMostItsLimitOfDueIds",
       remove_expired_rotated_deletes_at_most_its_limit_of_due_ids},
      {"AuthenticateSignsAnAnonymousRowInAsARotation",
       authenticate_signs_an_anonymous_row_in_as_a_rotation},
      {"AuthenticateOfTheSameUserMovesAuthenticatedAt",
       authenticate_of_the_same_user_moves_authenticated_at},
      {"AuthenticateRefusesAnotherUsersRowAndWritesNothing",
       authenticate_refuses_another_users_row_and_writes_nothing},
      {"AuthenticateOfAMissingOrExpiredRowWritesNothing",
       authenticate_of_a_missing_or_expired_row_writes_nothing},
      {"AuthenticateEvictsTheUsersOldestOthersBeyondTheCap",
       authenticate_evicts_the_users_oldest_others_beyond_the_cap},
      {"ListPageReturnsLiveMatchingRowsByIdAfterTheCursor",
       list_page_returns_live_matching_rows_by_id_after_the_cursor},
      {"ListPagePagesByKeysetWithoutGapsOrRepeats",
       list_page_pages_by_keyset_without_gaps_or_repeats},
      {"ListPageRefusesALimitOrCursorOutOfRange", list_page_refuses_a_limit_or_cursor_out_of_range},
      {"CountByTenantCountsLiveRowsAndAnonymousOnesByTenant",
       count_by_tenant_counts_live_rows_and_anonymous_ones_by_tenant},
      {"SeveralThreadsShareOneBackend", several_threads_share_one_backend},
      {"AStoreLogsInValidatesAndRevokesThroughTheBackend",
       a_store_logs_in_validates_and_revokes_through_the_backend},
      {"AStoreWritesDataThroughAndPurges", a_store_writes_data_through_and_purges},
      {"AStoreRotationReportsAReplayedOldToken", a_store_rotation_reports_a_replayed_old_token},
      {"AStoreCapEvictsTheOldestSession", a_store_cap_evicts_the_oldest_session},
      {"AStoreSignsOutEverywhereAndByClaims", a_store_signs_out_everywhere_and_by_claims},
      {"AStoreSignsAVisitorInKeepingTheirData", a_store_signs_a_visitor_in_keeping_their_data},
      {"AStoreListsCountsAndRevokesATenantThroughTheBackend",
       a_store_lists_counts_and_revokes_a_tenant_through_the_backend},
      {"AReopenedBackendSeesEveryAcknowledgedWrite",
       a_reopened_backend_sees_every_acknowledged_write, Needs::kReopen},
      {"AStoreRestartedOnTheStorageKeepsItsSessions",
       a_store_restarted_on_the_storage_keeps_its_sessions, Needs::kReopen},
      {"RefusedWritesThrowAndChangeNothing", refused_writes_throw_and_change_nothing,
       Needs::kRefuseWrites},
      {"AStoreWhoseWritesFailStaysAsStorageIs", a_store_whose_writes_fail_stays_as_storage_is,
       Needs::kRefuseWrites},
      {"AChangeSourceSeesEveryWrite", a_change_source_sees_every_write, Needs::kChangeSource},
      {"ALostConnectionFailsAtMostOneCall", a_lost_connection_fails_at_most_one_call,
       Needs::kLoseConnection},
  };
  return kChecks;
}

class ConformanceTest : public ::testing::Test {
 public:
  ConformanceTest(std::shared_ptr<const BackendUnderTest> config, const Check* check)
      : config_(std::move(config)), check_(check) {}

  void TestBody() override {
    std::unique_ptr<SessionBackend> backend;
    try {
      backend = config_->make_empty();
    } catch (const std::exception& error) {
      FAIL() << "the factory of backend '" << config_->name << "' threw: " << error.what();
    }
    ASSERT_NE(backend, nullptr) << "the factory of backend '" << config_->name
                                << "' returned no backend";
    Context context{*config_, *backend};
    check_->run(context);
  }

 private:
  std::shared_ptr<const BackendUnderTest> config_;
  const Check* check_;
};

class FailingTest : public ::testing::Test {
 public:
  explicit FailingTest(std::string message) : message_(std::move(message)) {}
  void TestBody() override { FAIL() << message_; }

 private:
  std::string message_;
};

// One test of the suite BackendConformance. GoogleTest owns what `factory` makes.
template <typename Factory>
void register_one(const std::string& test_name, Factory factory) {
  ::testing::RegisterTest("BackendConformance", test_name.c_str(), nullptr, nullptr, __FILE__,
                          __LINE__, std::move(factory));
}

bool is_valid_name(std::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_';
  });
}

}  // namespace

bool register_backend_conformance_tests(const BackendUnderTest& backend) noexcept {
  std::string refusal;
  if (!is_valid_name(backend.name)) {
    refusal = "backend name '" + backend.name + "' must be letters, digits and '_'";
  } else if (!backend.make_empty) {
    refusal = "backend '" + backend.name + "' has no factory (make_empty)";
  } else {
    static std::mutex registered_mutex;
    static std::set<std::string> registered;
    const std::lock_guard<std::mutex> lock(registered_mutex);
    if (!registered.insert(backend.name).second) {
      refusal = "backend '" + backend.name + "' is registered twice";
    }
  }
  if (!refusal.empty()) {
    // Registration runs before main(), where a throw could only end the program: the mistake is
    // reported as a failing test instead.
    static std::atomic<int> refused{0};
    const std::string test_name = "InvalidRegistration/" + std::to_string(++refused);
    register_one(test_name, [refusal]() -> ::testing::Test* {
      return std::make_unique<FailingTest>("pylon conformance: " + refusal).release();
    });
    return false;
  }
  auto config = std::make_shared<const BackendUnderTest>(backend);
  for (const Check& check : all_checks()) {
    if (!offers(*config, check.needs)) continue;
    register_one(std::string(check.name) + "/" + backend.name,
                 [config, check = &check]() -> ::testing::Test* {
                   return std::make_unique<ConformanceTest>(config, check).release();
                 });
  }
  return true;
}

bool register_backend_conformance_tests(const std::string& name,
                                        BackendFactory make_empty) noexcept {
  BackendUnderTest backend;
  backend.name = name;
  backend.make_empty = std::move(make_empty);
  return register_backend_conformance_tests(backend);
}

}  // namespace pylon::conformance

// The SessionBackend calls beyond the basic contract, run on every backend from one parameterised
// suite (parameters "sqlite" and "postgres", a fresh database per test): remove_matching() deletes
// exactly the rows equal to every field its filter sets (a tenant alone: that whole tenant) and
// refuses a filter that would match everyone; replace() swaps one row for another, or writes
// nothing when the old row is missing; remove_expired_batch() never deletes more than its limit,
// and never a live row.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "session_backend.hpp"
#include "support/test_database.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::ErrorCode;
using pylon::Session;
using pylon::SessionFilter;
using pylon::test::make_session;
using pylon::test::same_session;
using pylon::test::TestDatabase;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

constexpr std::int64_t kNow = 1'700'000'000;

std::vector<std::string> ids_of(const std::vector<Session>& sessions) {
  std::vector<std::string> ids;
  ids.reserve(sessions.size());
  for (const Session& session : sessions) ids.push_back(session.id);
  return ids;
}

// A live row of `user`, in `tenant`, of the identity provider session `sid`.
Session row(const std::string& user, std::optional<std::string> tenant,
            std::optional<std::string> sid, int seed) {
  Session session = make_session(user, seed);
  session.tenant_id = std::move(tenant);
  session.idp_session_id = std::move(sid);
  session.expires_at = kNow + 3600;
  session.absolute_expires_at = kNow + 86400;
  return session;
}

class BackendFeatureContract : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &db_)); }

  [[nodiscard]] std::unique_ptr<pylon::SessionBackend> open() const { return db_->open_backend(); }
  // What storage holds, read through a backend of its own.
  [[nodiscard]] std::vector<std::string> stored_ids() const { return ids_of(open()->load_all()); }

  std::unique_ptr<TestDatabase> db_;
};

INSTANTIATE_TEST_SUITE_P(Backends, BackendFeatureContract,
                         ::testing::ValuesIn(pylon::test::contract_backends()),
                         pylon::test::backend_name);

TEST_P(BackendFeatureContract, RemoveMatchingRefusesAFilterThatWouldMatchEveryone) {
  auto backend = open();
  const Session a = row("alice", "t1", "sid-A", 1);
  const Session b = row("bob", std::nullopt, std::nullopt, 2);
  backend->save(a);
  backend->save(b);

  EXPECT_PYLON_ERROR(backend->remove_matching(SessionFilter{}), ErrorCode::kInvalidArgument);
  SessionFilter except_only;
  except_only.except_id = a.id;
  EXPECT_PYLON_ERROR(backend->remove_matching(except_only), ErrorCode::kInvalidArgument);

  EXPECT_THAT(stored_ids(), UnorderedElementsAre(a.id, b.id)) << "nothing was deleted";
}

// A filter of a tenant alone matches that whole tenant (revoke_tenant()), and nothing else.
TEST_P(BackendFeatureContract, RemoveMatchingByTenantAloneDeletesThatTenant) {
  auto backend = open();
  const Session a = row("alice", "t1", "sid-A", 1);
  const Session visitor = row("", "t1", std::nullopt, 2);
  const Session kept = row("carol", "t1", std::nullopt, 3);
  const Session other = row("alice", "t2", "sid-A", 4);
  const Session none = row("bob", std::nullopt, std::nullopt, 5);
  for (const Session* session : {&a, &visitor, &kept, &other, &none}) backend->save(*session);

  SessionFilter tenant_but_one;
  tenant_but_one.tenant_id = "t1";
  tenant_but_one.except_id = kept.id;
  EXPECT_THAT(backend->remove_matching(tenant_but_one),
              UnorderedElementsAre(pylon::RemovedSession{a.id, "alice"},
                                   pylon::RemovedSession{visitor.id, ""}));
  SessionFilter tenant_only;
  tenant_only.tenant_id = "t1";
  EXPECT_THAT(backend->remove_matching(tenant_only),
              UnorderedElementsAre(pylon::RemovedSession{kept.id, "carol"}));
  EXPECT_THAT(stored_ids(), UnorderedElementsAre(other.id, none.id));
}

TEST_P(BackendFeatureContract, RemoveMatchingDeletesExactlyTheRowsMatchingEverySetField) {
  auto backend = open();
  const Session r1 = row("alice", "t1", "sid-A", 1);
  const Session r2 = row("alice", "t1", "sid-B", 2);
  const Session r3 = row("alice", "t2", "sid-A", 3);
  const Session r4 = row("bob", "t1", "sid-A", 4);
  const Session r5 = row("alice", std::nullopt, std::nullopt, 5);
  for (const Session* session : {&r1, &r2, &r3, &r4, &r5}) backend->save(*session);

  SessionFilter others_in_t1;  // "sign out the others", in one tenant
  others_in_t1.user_id = "alice";
  others_in_t1.tenant_id = "t1";
  others_in_t1.except_id = r1.id;
  EXPECT_EQ(backend->remove_matching(others_in_t1).size(), 1U);
  EXPECT_THAT(stored_ids(), UnorderedElementsAre(r1.id, r3.id, r4.id, r5.id));

  SessionFilter wrong_tenant;
  wrong_tenant.id = r4.id;
  wrong_tenant.tenant_id = "t2";
  EXPECT_EQ(backend->remove_matching(wrong_tenant).size(), 0U) << "r4 is t1's";

  SessionFilter sid_in_t2;
  sid_in_t2.idp_session_id = "sid-A";
  sid_in_t2.tenant_id = "t2";
  EXPECT_EQ(backend->remove_matching(sid_in_t2).size(), 1U);
  EXPECT_THAT(stored_ids(), UnorderedElementsAre(r1.id, r4.id, r5.id));

  SessionFilter unknown_sid;
  unknown_sid.idp_session_id = "sid-unknown";
  EXPECT_EQ(backend->remove_matching(unknown_sid).size(), 0U);

  SessionFilter sid;
  sid.idp_session_id = "sid-A";
  EXPECT_THAT(backend->remove_matching(sid),
              UnorderedElementsAre(pylon::RemovedSession{r1.id, "alice"},
                                   pylon::RemovedSession{r4.id, "bob"}))
      << "r1 and r4, of two users, each named with its user";
  EXPECT_THAT(stored_ids(), ElementsAre(r5.id));

  SessionFilter user;
  user.user_id = "alice";
  EXPECT_EQ(backend->remove_matching(user).size(), 1U);
  EXPECT_THAT(stored_ids(), IsEmpty());
}

TEST_P(BackendFeatureContract, ReplaceSwapsTheOldRowForTheReplacement) {
  auto backend = open();
  const Session old_row = row("alice", "t1", "sid-A", 1);
  const Session other = row("bob", std::nullopt, std::nullopt, 2);
  backend->save(old_row);
  backend->save(other);
  Session replacement = old_row;
  replacement.id = pylon::session_id_for_token(pylon::generate_token());

  EXPECT_TRUE(backend->replace(old_row.id, replacement));
  const std::vector<Session> rows = open()->load_all();
  EXPECT_THAT(ids_of(rows), UnorderedElementsAre(replacement.id, other.id));
  const auto stored = pylon::test::find_loaded(*open(), replacement.id);
  ASSERT_TRUE(stored.has_value());
  EXPECT_TRUE(same_session(replacement, *stored));

  EXPECT_FALSE(backend->replace(old_row.id, row("alice", "t1", "sid-A", 3)))
      << "the old row is gone: a second rotation of it finds nothing";
  EXPECT_THAT(stored_ids(), UnorderedElementsAre(replacement.id, other.id));
}

TEST_P(BackendFeatureContract, ReplaceOfAnUnknownIdReturnsFalseAndWritesNothing) {
  auto backend = open();
  const Session other = row("bob", std::nullopt, std::nullopt, 1);
  backend->save(other);
  const Session replacement = row("alice", "t1", "sid-A", 2);
  EXPECT_FALSE(backend->replace(pylon::session_id_for_token(pylon::generate_token()), replacement));
  EXPECT_FALSE(backend->replace("not-an-id", replacement));
  EXPECT_THAT(stored_ids(), ElementsAre(other.id)) << "the replacement was not inserted";
  const auto unchanged = pylon::test::find_loaded(*open(), other.id);
  ASSERT_TRUE(unchanged.has_value());
  EXPECT_TRUE(same_session(other, *unchanged));
}

TEST_P(BackendFeatureContract, RemoveExpiredBatchRespectsItsLimitAndSparesLiveRows) {
  auto backend = open();
  std::vector<std::string> live;
  for (int i = 0; i < 10; ++i) {
    Session expired = row("user-" + std::to_string(i % 3), std::nullopt, std::nullopt, i);
    expired.expires_at = kNow - i;  // the first one expires exactly now: still expired
    backend->save(expired);
  }
  for (int i = 0; i < 3; ++i) {
    Session alive = row("keeper", std::nullopt, std::nullopt, 100 + i);
    alive.expires_at = kNow + 1;
    backend->save(alive);
    live.push_back(alive.id);
  }
  EXPECT_EQ(backend->remove_expired_batch(kNow, 0), 0U) << "a limit of 0 deletes nothing";
  EXPECT_EQ(db_->count(), 13);
  EXPECT_EQ(backend->remove_expired_batch(kNow, 4), 4U);
  EXPECT_EQ(db_->count(), 9);
  EXPECT_EQ(backend->remove_expired_batch(kNow, 4), 4U);
  EXPECT_EQ(db_->count(), 5);
  EXPECT_EQ(backend->remove_expired_batch(kNow, 4), 2U);
  EXPECT_EQ(backend->remove_expired_batch(kNow, 4), 0U);
  EXPECT_THAT(stored_ids(), UnorderedElementsAre(live.at(0), live.at(1), live.at(2)));
}

}  // namespace

namespace {

// One set of limits on every backend: a text field over its limit is refused with the same code
// and message before anything is written (PostgreSQL would otherwise refuse a long user_id with
// an index error SQLite never gives), and a value at its limit is stored byte for byte.
TEST_P(BackendFeatureContract, TextFieldsHaveTheSameLimitsOnEveryBackend) {
  auto backend = open();
  struct Oversized {
    const char* field;
    std::function<void(Session&)> set;
  };
  const std::vector<Oversized> cases = {
      {"user_id", [](Session& s) { s.user_id = std::string(3000, 'u'); }},
      {"tenant_id",
       [](Session& s) { s.tenant_id = std::string(pylon::kMaxTenantIdBytes + 1, 't'); }},
      {"idp_session_id", [](Session& s) { s.idp_session_id = std::string(9000, 's'); }},
      {"device", [](Session& s) { s.device = std::string(std::size_t{1} << 20U, 'd'); }},
      {"ip", [](Session& s) { s.ip = std::string(pylon::kMaxIpBytes + 1, '1'); }},
  };
  int seed = 1;
  for (const Oversized& oversized : cases) {
    Session session = row("alice", std::nullopt, std::nullopt, seed++);
    oversized.set(session);
    const auto error = pylon::test::capture_pylon_error([&] { backend->save(session); });
    ASSERT_TRUE(error.has_value()) << oversized.field << " over its limit was stored";
    EXPECT_EQ(error->code(), ErrorCode::kInvalidArgument) << oversized.field;
    EXPECT_THAT(error->what(),
                ::testing::HasSubstr(std::string("session field '") + oversized.field + "' is "))
        << oversized.field;
    EXPECT_PYLON_ERROR(backend->insert_new({session}, 0), ErrorCode::kInvalidArgument)
        << oversized.field;
  }
  EXPECT_THAT(stored_ids(), IsEmpty()) << "nothing over a limit reached storage";

  Session at_limits =
      row(std::string(pylon::kMaxUserIdBytes, 'u'), std::string(pylon::kMaxTenantIdBytes, 't'),
          std::string(pylon::kMaxIdpSessionIdBytes, 's'), seed++);
  at_limits.device = std::string(pylon::kMaxDeviceBytes, 'd');
  at_limits.ip = std::string(pylon::kMaxIpBytes, '1');
  backend->save(at_limits);
  const std::optional<Session> stored = backend->load_one(at_limits.id);
  ASSERT_TRUE(stored.has_value());
  EXPECT_TRUE(same_session(at_limits, *stored));
}

}  // namespace

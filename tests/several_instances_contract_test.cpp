// Several stores on one database, the coherence the issue "Several instances, one truth" asks
// for, as far as it is built: a token the cache does not hold is looked up in storage (a point
// read by primary key), bounded by StoreOptions::miss_lookups_per_second, and never brings back
// a session a failed revoke still owes storage. Run on every backend (parameters "sqlite" and
// "postgres", a fresh database per test) with a ManualClock for the sessions' times.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "session_backend.hpp"
#include "support/test_database.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::NewSession;
using pylon::Session;
using pylon::SessionStore;
using pylon::StoreOptions;
using pylon::test::ManualClock;
using pylon::test::same_session;
using pylon::test::TestDatabase;

class SeveralInstances : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &db_)); }

  [[nodiscard]] StoreOptions options() const {
    StoreOptions options;
    options.clock = clock_.fn();
    return options;
  }
  [[nodiscard]] SessionStore open_store(const StoreOptions& options) const {
    return SessionStore::open(db_->url(), options);
  }

  std::unique_ptr<TestDatabase> db_;
  ManualClock clock_;
};

INSTANTIATE_TEST_SUITE_P(Backends, SeveralInstances,
                         ::testing::ValuesIn(pylon::test::contract_backends()),
                         pylon::test::backend_name);

// A user logs in on A; the next request lands on B, which started before the login.
TEST_P(SeveralInstances, ATokenCreatedByAnotherStoreIsAcceptedAtOnce) {
  SessionStore a = open_store(options());
  SessionStore b = open_store(options());
  const NewSession login = a.create("alice");

  const std::optional<Session> on_b = b.validate(login.token);
  ASSERT_TRUE(on_b.has_value()) << "B refused a session storage holds";
  EXPECT_TRUE(same_session(login.session, *on_b));
  EXPECT_EQ(b.stats().miss_lookups, 1U);
  EXPECT_EQ(b.list_user("alice").size(), 1U) << "the session found entered B's cache";
  EXPECT_TRUE(b.validate(login.token).has_value());
  EXPECT_EQ(b.stats().miss_lookups, 1U) << "the second request is a cache hit";

  const NewSession other = a.create("bob");
  const std::optional<Session> found = b.find(other.session.id);
  ASSERT_TRUE(found.has_value()) << "find() looks up an id the cache does not hold too";
  EXPECT_TRUE(same_session(other.session, *found));
}

// A lookup finds the row another store slid, and a row that has expired is not served.
TEST_P(SeveralInstances, ALookupServesOnlyALiveRowAndSlidesItAsValidateDoes) {
  SessionStore a = open_store(options());
  const NewSession stale = a.create("alice");
  const NewSession fresh = a.create("alice");
  clock_.advance(std::int64_t{2} * 3600);  // past the idle timeout of both
  SessionStore b = open_store(options());  // loads both, as expired
  SessionStore c_later = open_store(options());
  EXPECT_FALSE(b.validate(stale.token).has_value());
  EXPECT_EQ(b.stats().miss_lookups, 0U) << "an expired cached session needs no lookup";

  const NewSession late = a.create("carol");
  clock_.advance(61);
  const std::optional<Session> slid = c_later.validate(late.token);
  ASSERT_TRUE(slid.has_value());
  EXPECT_EQ(slid->last_seen_at, clock_.now()) << "a session found by a lookup slides too";
  const std::optional<Session> row = db_->open_backend()->load_one(late.session.id);
  ASSERT_TRUE(row.has_value());
  EXPECT_EQ(row->last_seen_at, clock_.now());
}

// A revoke whose delete failed is owed to storage and denied here; a lookup of the row still in
// storage must not bring it back.
TEST_P(SeveralInstances, ALookupNeverBringsBackASessionAFailedRevokeOwes) {
  SessionStore a = open_store(options());
  const NewSession doomed = a.create("alice");
  SessionStore b = SessionStore::open(db_->impatient_url(), options());
  ASSERT_TRUE(b.validate(doomed.token).has_value());
  {
    const auto block = db_->block_writes();
    EXPECT_THROW(b.revoke(doomed.token), pylon::Error);
  }
  ASSERT_TRUE(db_->has(doomed.session.id)) << "the delete is still owed";
  EXPECT_FALSE(b.validate(doomed.token).has_value());
  EXPECT_FALSE(b.find(doomed.session.id).has_value());
  b.create("bob");  // the next write pays what is owed
  EXPECT_FALSE(db_->has(doomed.session.id));
}

// A flood of random well-formed tokens costs at most the bound's worth of reads.
TEST_P(SeveralInstances, LookupsForMissesAreBoundedAndTheRestCounted) {
  StoreOptions bounded = options();
  bounded.miss_lookups_per_second = 5;
  SessionStore store = open_store(bounded);
  const auto started = std::chrono::steady_clock::now();
  constexpr int kTokens = 2000;
  for (int i = 0; i < kTokens; ++i) EXPECT_FALSE(store.validate(pylon::generate_token()));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const pylon::StoreStats stats = store.stats();
  EXPECT_EQ(stats.miss_lookups + stats.miss_lookups_refused, static_cast<std::uint64_t>(kTokens));
  // A burst of one second's worth, then the rate: however long the loop took.
  const auto bound = static_cast<std::uint64_t>(5 + std::ceil(5 * seconds));
  EXPECT_LE(stats.miss_lookups, bound) << "over " << seconds << " s";
  EXPECT_GE(stats.miss_lookups, 1U);
}

TEST_P(SeveralInstances, WithLookupsOffAMissIsRefusedWithoutReadingStorage) {
  SessionStore a = open_store(options());
  StoreOptions off = options();
  off.miss_lookups_per_second = 0;
  SessionStore b = open_store(off);
  const NewSession login = a.create("alice");
  EXPECT_FALSE(b.validate(login.token).has_value());
  EXPECT_EQ(b.stats().miss_lookups, 0U);
  EXPECT_EQ(b.stats().miss_lookups_refused, 1U);
}

}  // namespace

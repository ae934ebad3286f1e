// Group commit for every write (issue 17, item 3), proved on every backend from one parameterised
// suite (parameters "sqlite" and "postgres", a fresh database per test). PostgreSQL has no
// write_group() of its own yet: it runs the default (one call per write), which must keep the
// same contract.
//   1. SessionBackend::write_group() with a mix of every kind of write returns, write by write,
//      what the individual calls return on a second database fed the same writes one by one,
//      and leaves the same rows and the same rotated ids;
//   2. a write failing alone (a sign-in to another user's session, a malformed id) has its
//      error in its outcome and changes nothing, while the writes around it are stored; a
//      rotation of a missing id yields no session and records nothing;
//   3. SQLite: a failure that ends the whole transaction (a trigger's RAISE(ROLLBACK)) throws and
//      stores none of the group, wherever the failing write stands in it;
//   4. through SessionStore, 8 threads making every kind of write at once (SQLite at
//      synchronous=full) share commits (a recording backend sees groups of more than one), every
//      caller gets its own outcome, and a second store opened on the database agrees with the
//      first for every session;
//   5. a group whose commit fails fails each of its callers: none of their changes is in the
//      cache or storage, and a revoke in it fails closed (refused at once, deleted once storage
//      takes writes again).
// Nothing sleeps for expiry (a ManualClock moves time) and nothing asserts how long anything
// took. The one pause (GroupingBackend) only makes grouping overwhelmingly likely.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "session_backend.hpp"
#include "support/forwarding_backend.hpp"
#include "support/test_database.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::AuthenticateWrite;
using pylon::ErrorCode;
using pylon::InsertNewWrite;
using pylon::NewSession;
using pylon::RemovedSession;
using pylon::RemoveMatchingWrite;
using pylon::RotatedId;
using pylon::RotateWrite;
using pylon::Session;
using pylon::SessionBackend;
using pylon::SessionFilter;
using pylon::SessionStore;
using pylon::SessionWrite;
using pylon::SessionWriteOutcome;
using pylon::StoreOptions;
using pylon::TouchWrite;
using pylon::UpdateDataWrite;
using pylon::test::ManualClock;
using pylon::test::same_session;
using pylon::test::TestDatabase;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

constexpr std::int64_t kStart = 1'700'000'000;
constexpr std::int64_t kHour = 3600;
constexpr std::int64_t kDay = 24 * kHour;

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

// A fresh session id (the SHA-256 of a fresh token).
std::string fresh_id() { return pylon::session_id_for_token(pylon::generate_token()); }

// A stored row of `user` (empty: anonymous) in `tenant`, created and last seen at `created`,
// expiring an hour later, with a hard cap a day later; every other field set by make_session().
Session row_of(const std::string& user, std::optional<std::string> tenant, std::int64_t created,
               int seed) {
  Session session = pylon::test::make_session(user, seed);
  session.tenant_id = std::move(tenant);
  session.created_at = created;
  session.last_seen_at = created;
  session.expires_at = created + kHour;
  session.absolute_expires_at = created + kDay;
  session.authenticated_at = user.empty() ? 0 : created;
  return session;
}

// What an error is, comparably: "" for none, the ErrorCode's name for a pylon::Error.
std::string error_name(const std::exception_ptr& error) {
  if (!error) return "";
  try {
    std::rethrow_exception(error);
  } catch (const pylon::Error& failure) {
    return pylon::to_string(failure.code());
  } catch (const std::exception& other) {
    return std::string("not a pylon::Error: ") + other.what();
  }
}

// Removed rows as "id user", sorted: a DELETE's RETURNING order is not part of the contract.
std::vector<std::string> removed_text(const std::vector<RemovedSession>& rows) {
  std::vector<std::string> text;
  text.reserve(rows.size());
  for (const RemovedSession& row : rows) text.push_back(row.id + " " + row.user_id);
  std::sort(text.begin(), text.end());
  return text;
}

// Every stored row, sorted by id.
std::vector<Session> rows_by_id(SessionBackend& backend) {
  std::vector<Session> rows = backend.load_all();
  std::sort(rows.begin(), rows.end(),
            [](const Session& a, const Session& b) { return a.id < b.id; });
  return rows;
}

// Every stored rotated id as text, sorted.
std::vector<std::string> rotated_text(SessionBackend& backend) {
  std::vector<std::string> text;
  backend.load_rotated_each([&text](const RotatedId& rotated) {
    text.push_back(rotated.id + " -> " + rotated.replaced_by + " user=" + rotated.user_id +
                   " tenant=" + rotated.tenant_id.value_or("(none)") +
                   " at=" + std::to_string(rotated.rotated_at) +
                   " expires=" + std::to_string(rotated.expires_at));
  });
  std::sort(text.begin(), text.end());
  return text;
}

bool has_rotated_id(SessionBackend& backend, const std::string& id) {
  bool found = false;
  backend.load_rotated_each([&](const RotatedId& rotated) { found = found || rotated.id == id; });
  return found;
}

// One write made by its own call, as the test's reference: what that call returned, or threw.
SessionWriteOutcome make_alone(SessionBackend& backend, const SessionWrite& write) {
  SessionWriteOutcome outcome;
  try {
    std::visit(
        [&backend, &outcome](const auto& arguments) {
          using Write = std::decay_t<decltype(arguments)>;
          if constexpr (std::is_same_v<Write, InsertNewWrite>) {
            outcome.removed = backend.insert_new(arguments.sessions, arguments.max_per_user);
          } else if constexpr (std::is_same_v<Write, TouchWrite>) {
            outcome.session =
                backend.touch(arguments.id, arguments.last_seen_at, arguments.expires_at);
          } else if constexpr (std::is_same_v<Write, UpdateDataWrite>) {
            outcome.session = backend.update_data(arguments.id, arguments.data);
          } else if constexpr (std::is_same_v<Write, RotateWrite>) {
            outcome.session = backend.rotate(arguments.old_id, arguments.new_id, arguments.now);
          } else if constexpr (std::is_same_v<Write, AuthenticateWrite>) {
            std::optional<pylon::Authentication> signed_in =
                backend.authenticate(arguments.old_id, arguments.new_id, arguments.user_id,
                                     arguments.now, arguments.max_per_user);
            if (signed_in) {
              outcome.session = std::move(signed_in->session);
              outcome.removed = std::move(signed_in->evicted);
            }
          } else {
            static_assert(std::is_same_v<Write, RemoveMatchingWrite>);
            outcome.removed = backend.remove_matching(arguments.filter);
          }
        },
        write);
  } catch (...) {
    outcome = SessionWriteOutcome();
    outcome.error = std::current_exception();
  }
  return outcome;
}

// A backend that forwards every call, write_group() included, to a real one, and records the size
// of each write_group(). Two switches for the store tests:
//   hold_next_group(n): the next write_group() waits, before it writes, until n threads have
//     called about_to_call() (or 60 s pass: then held_too_long() says so), then a little more,
//     so that the callers queue behind it and the next group carries them;
//   fail_writes(true): every write_group() (after its hold) and every remove_matching() (the
//     store's retry of an owed delete) throws Error(kIo) without reaching storage.
class GroupingBackend final : public pylon::test::ForwardingBackend {
 public:
  // Long enough, after the last caller said it is about to call, for it to have queued.
  static constexpr std::chrono::milliseconds kQueuePause{150};
  static constexpr std::chrono::seconds kHoldLimit{60};

  explicit GroupingBackend(std::unique_ptr<SessionBackend> inner)
      : ForwardingBackend(std::move(inner)) {}

  void hold_next_group(std::size_t callers) {
    const std::lock_guard<std::mutex> lock(mutex_);
    hold_armed_ = true;
    hold_for_ = callers;
    announced_ = 0;
  }
  void about_to_call() {
    const std::lock_guard<std::mutex> lock(mutex_);
    ++announced_;
    changed_.notify_all();
  }
  // True once a write_group() is being held (false after `timeout`).
  bool wait_until_holding(std::chrono::seconds timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    return changed_.wait_for(lock, timeout, [this] { return holding_; });
  }
  [[nodiscard]] bool held_too_long() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return held_too_long_;
  }
  void fail_writes(bool fail) { failing_.store(fail); }
  [[nodiscard]] std::vector<std::size_t> group_sizes() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return sizes_;
  }

  std::vector<SessionWriteOutcome> write_group(std::vector<SessionWrite> writes) override {
    bool held = false;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      sizes_.push_back(writes.size());
      held = std::exchange(hold_armed_, false);
      if (held) {
        holding_ = true;
        changed_.notify_all();
        if (!changed_.wait_for(lock, kHoldLimit, [this] { return announced_ >= hold_for_; })) {
          held_too_long_ = true;
        }
      }
    }
    if (held) std::this_thread::sleep_for(kQueuePause);
    if (failing_.load()) throw pylon::Error(ErrorCode::kIo, "write_group refused by the test");
    return real().write_group(std::move(writes));
  }
  std::vector<RemovedSession> remove_matching(const SessionFilter& filter) override {
    if (failing_.load()) throw pylon::Error(ErrorCode::kIo, "remove_matching refused by the test");
    return ForwardingBackend::remove_matching(filter);
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::size_t> sizes_;  // guarded by mutex_
  bool hold_armed_ = false;         // guarded by mutex_
  bool holding_ = false;            // guarded by mutex_
  bool held_too_long_ = false;      // guarded by mutex_
  std::size_t hold_for_ = 0;        // guarded by mutex_
  std::size_t announced_ = 0;       // guarded by mutex_
  std::atomic<bool> failing_{false};
};

// ------------------------------------------------------------------------------------------------
// The backend call: write_group() against the same writes one by one
// ------------------------------------------------------------------------------------------------

class GroupCommitContract : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &db_)); }

  std::unique_ptr<TestDatabase> db_;
};

INSTANTIATE_TEST_SUITE_P(Backends, GroupCommitContract,
                         ::testing::ValuesIn(pylon::test::contract_backends()),
                         pylon::test::backend_name);

TEST_P(GroupCommitContract, AGroupOfEveryKindOfWriteDoesWhatTheWritesDoOneByOne) {
  std::unique_ptr<TestDatabase> reference_db;
  ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &reference_db));
  std::unique_ptr<SessionBackend> grouped = db_->open_backend();
  std::unique_ptr<SessionBackend> one_by_one = reference_db->open_backend();

  const std::string tenant = "acme";
  const Session a1 = row_of("alice", tenant, kStart + 1, 1);
  const Session a2 = row_of("alice", tenant, kStart + 2, 2);
  const Session a3 = row_of("alice", tenant, kStart + 3, 3);
  const Session b1 = row_of("bob", tenant, kStart + 4, 4);
  const Session b2 = row_of("bob", tenant, kStart + 5, 5);
  const Session b3 = row_of("bob", tenant, kStart + 6, 6);
  const Session c1 = row_of("carol", tenant, kStart + 7, 7);
  const Session c2 = row_of("carol", tenant, kStart + 8, 8);
  const Session anonymous = row_of("", tenant, kStart + 9, 9);
  const Session d1 = row_of("dan", std::nullopt, kStart + 10, 10);
  const Session d2 = row_of("dan", std::nullopt, kStart + 11, 11);
  Session expired = row_of("eve", tenant, kStart - 2 * kHour, 12);
  expired.expires_at = kStart - kHour;
  Session f1 = row_of("frank", tenant, kStart + 12, 13);
  f1.idp_session_id = "sid-9";
  Session f2 = row_of("frank", tenant, kStart + 13, 14);
  f2.idp_session_id = "sid-9";
  const std::vector<Session> seed = {a1, a2,        a3, b1, b2,      b3, c1,
                                     c2, anonymous, d1, d2, expired, f1, f2};
  grouped->insert_new(seed, 0);
  one_by_one->insert_new(seed, 0);
  ASSERT_EQ(rows_by_id(*grouped), rows_by_id(*one_by_one));

  const std::int64_t now = kStart + 100;
  const Session n1 = row_of("alice", tenant, now, 20);
  const Session g1 = row_of("gina", tenant, now, 21);
  const Session g2 = row_of("gina", tenant, now, 22);
  Session malformed = row_of("hal", tenant, now, 23);
  malformed.id = std::string(64, 'A');  // upper case: not a session id
  const std::string r1 = fresh_id();
  const std::string r4 = fresh_id();
  const std::string signed_in = fresh_id();
  SessionFilter dan;
  dan.user_id = "dan";
  SessionFilter rotated_successor;
  rotated_successor.id = r1;
  SessionFilter by_sid;
  by_sid.idp_session_id = "sid-9";
  by_sid.except_id = f1.id;
  const std::vector<SessionWrite> writes = {
      InsertNewWrite{{n1}, 3},                                      // 0: evicts a1 (cap 3)
      TouchWrite{a2.id, now, now + kHour},                          // 1
      TouchWrite{fresh_id(), now, now + kHour},                     // 2: no such row
      UpdateDataWrite{a3.id, "cart=[book]"},                        // 3
      UpdateDataWrite{a1.id, "lost"},                               // 4: a1 went in write 0
      RotateWrite{b1.id, r1, now},                                  // 5
      RotateWrite{fresh_id(), fresh_id(), now},                     // 6: no such row
      RotateWrite{expired.id, fresh_id(), now},                     // 7: expired
      RotateWrite{b2.id, a3.id, now},                               // 8: onto an existing row
      AuthenticateWrite{anonymous.id, signed_in, "carol", now, 2},  // 9: evicts c1
      AuthenticateWrite{b3.id, fresh_id(), "alice", now, 0},        // 10: bob's session
      AuthenticateWrite{fresh_id(), fresh_id(), "dave", now, 0},    // 11: no such row
      RemoveMatchingWrite{dan},                                     // 12
      RemoveMatchingWrite{rotated_successor},                       // 13: write 5's successor
      RemoveMatchingWrite{SessionFilter{}},                         // 14: matches everyone: refused
      InsertNewWrite{{g1, g2}, 0},                                  // 15
      TouchWrite{a2.id, now - 50, now - 50 + kHour},                // 16: never backwards
      RemoveMatchingWrite{by_sid},                                  // 17
      InsertNewWrite{{malformed}, 0},                               // 18: refused
      RotateWrite{g1.id, r4, now},                                  // 19: inserted by write 15
      UpdateDataWrite{r4, "after rotation"},                        // 20: write 19's successor
  };

  const std::vector<SessionWriteOutcome> together = grouped->write_group(writes);
  std::vector<SessionWriteOutcome> alone;
  alone.reserve(writes.size());
  for (const SessionWrite& write : writes) alone.push_back(make_alone(*one_by_one, write));

  ASSERT_EQ(together.size(), writes.size());
  for (std::size_t i = 0; i < writes.size(); ++i) {
    SCOPED_TRACE("write " + std::to_string(i));
    EXPECT_EQ(error_name(together[i].error), error_name(alone[i].error));
    EXPECT_EQ(together[i].session, alone[i].session);
    EXPECT_EQ(removed_text(together[i].removed), removed_text(alone[i].removed));
  }
  EXPECT_EQ(rows_by_id(*grouped), rows_by_id(*one_by_one));
  EXPECT_EQ(rotated_text(*grouped), rotated_text(*one_by_one));

  // The writes did what the test says they do, so the comparison above compared something: each
  // one saw the writes before it in the group.
  EXPECT_THAT(removed_text(together[0].removed), ElementsAre(a1.id + " alice"));
  ASSERT_TRUE(together[1].session.has_value());
  EXPECT_EQ(together[1].session->last_seen_at, now);
  EXPECT_FALSE(together[2].session.has_value());
  ASSERT_TRUE(together[3].session.has_value());
  EXPECT_EQ(together[3].session->data, "cart=[book]");
  EXPECT_FALSE(together[4].session.has_value());
  ASSERT_TRUE(together[5].session.has_value());
  EXPECT_EQ(together[5].session->id, r1);
  EXPECT_FALSE(together[6].session.has_value());
  EXPECT_FALSE(together[7].session.has_value());
  EXPECT_FALSE(together[8].session.has_value());
  EXPECT_TRUE(grouped->load_one(b2.id).has_value()) << "a failed rotation deleted its row";
  EXPECT_FALSE(has_rotated_id(*grouped, b2.id)) << "a failed rotation kept its record";
  ASSERT_TRUE(together[9].session.has_value());
  EXPECT_EQ(together[9].session->user_id, "carol");
  EXPECT_THAT(removed_text(together[9].removed), ElementsAre(c1.id + " carol"));
  EXPECT_EQ(error_name(together[10].error), "invalid_argument");
  EXPECT_FALSE(together[11].session.has_value());
  EXPECT_EQ(removed_text(together[12].removed).size(), 2U);
  EXPECT_THAT(removed_text(together[13].removed), ElementsAre(r1 + " bob"));
  EXPECT_EQ(error_name(together[14].error), "invalid_argument");
  ASSERT_TRUE(together[16].session.has_value());
  EXPECT_EQ(together[16].session->last_seen_at, now);
  EXPECT_THAT(removed_text(together[17].removed), ElementsAre(f2.id + " frank"));
  EXPECT_EQ(error_name(together[18].error), "invalid_argument");
  ASSERT_TRUE(together[19].session.has_value());
  EXPECT_EQ(together[19].session->id, r4);
  ASSERT_TRUE(together[20].session.has_value());
  EXPECT_EQ(together[20].session->data, "after rotation");
  EXPECT_EQ(together[20].session->user_id, "gina");
}

TEST_P(GroupCommitContract, AWriteThatFailsAloneChangesNothingAndTheOthersAreStored) {
  std::unique_ptr<SessionBackend> backend = db_->open_backend();
  const Session alices = row_of("alice", "acme", kStart + 1, 1);
  const Session bobs_first = row_of("bob", "acme", kStart + 2, 2);
  const Session to_slide = row_of("carol", "acme", kStart + 3, 3);
  backend->insert_new({alices, bobs_first, to_slide}, 0);

  const std::int64_t now = kStart + 100;
  const Session before = row_of("bob", "acme", now, 10);
  const Session after = row_of("dan", std::nullopt, now, 11);
  Session malformed = row_of("erin", std::nullopt, now, 12);
  malformed.id = "not-a-session-id";
  const Session partner_of_malformed = row_of("erin", std::nullopt, now, 13);
  Session malformed_too = row_of("erin", std::nullopt, now, 14);
  malformed_too.id = std::string(64, 'F');
  const std::string bob_signed_in = fresh_id();
  const std::string missing = fresh_id();
  const std::string missing_successor = fresh_id();
  const std::vector<SessionWrite> writes = {
      InsertNewWrite{{before}, 0},
      // Fails after its first statement: the rotated id is recorded, then the copy collides with
      // an existing row. What it wrote must go with it.
      RotateWrite{bobs_first.id, to_slide.id, now},
      // Bob signs in to Alice's session, with a cap of 1 that would evict his other rows.
      AuthenticateWrite{alices.id, bob_signed_in, "bob", now, 1},
      InsertNewWrite{{malformed}, 0},
      InsertNewWrite{{partner_of_malformed, malformed_too}, 0},  // all of it or nothing
      TouchWrite{to_slide.id, now, now + kHour},
      RotateWrite{missing, missing_successor, now},
      InsertNewWrite{{after}, 0},
  };
  const std::vector<SessionWriteOutcome> outcomes = backend->write_group(writes);
  ASSERT_EQ(outcomes.size(), writes.size());

  EXPECT_EQ(error_name(outcomes[0].error), "");
  EXPECT_NE(error_name(outcomes[1].error), "") << "a rotation onto an existing id";
  EXPECT_FALSE(outcomes[1].session.has_value());
  EXPECT_EQ(error_name(outcomes[2].error), "invalid_argument");
  EXPECT_FALSE(outcomes[2].session.has_value());
  EXPECT_THAT(outcomes[2].removed, IsEmpty());
  EXPECT_EQ(error_name(outcomes[3].error), "invalid_argument");
  EXPECT_EQ(error_name(outcomes[4].error), "invalid_argument");
  EXPECT_EQ(error_name(outcomes[5].error), "");
  ASSERT_TRUE(outcomes[5].session.has_value());
  EXPECT_EQ(outcomes[5].session->last_seen_at, now);
  EXPECT_EQ(error_name(outcomes[6].error), "");
  EXPECT_FALSE(outcomes[6].session.has_value());
  EXPECT_EQ(error_name(outcomes[7].error), "");

  // The failed rotation left Bob's row, and recorded no rotated id.
  const std::optional<Session> bob_now = backend->load_one(bobs_first.id);
  ASSERT_TRUE(bob_now.has_value());
  EXPECT_TRUE(same_session(bobs_first, *bob_now));
  EXPECT_FALSE(has_rotated_id(*backend, bobs_first.id));
  // The refused sign-in changed nothing: Alice's row as it was, no successor, no rotated id, and
  // Bob's rows not evicted.
  const std::optional<Session> alice_now = backend->load_one(alices.id);
  ASSERT_TRUE(alice_now.has_value());
  EXPECT_TRUE(same_session(alices, *alice_now));
  EXPECT_FALSE(backend->load_one(bob_signed_in).has_value());
  EXPECT_FALSE(has_rotated_id(*backend, alices.id));
  EXPECT_TRUE(backend->load_one(bobs_first.id).has_value());
  // The refused inserts stored nothing, the valid row beside a malformed one included.
  EXPECT_FALSE(backend->load_one(partner_of_malformed.id).has_value());
  EXPECT_FALSE(backend->load_one(malformed_too.id).has_value());
  // The rotation of a missing id stored and recorded nothing.
  EXPECT_FALSE(backend->load_one(missing_successor).has_value());
  EXPECT_FALSE(has_rotated_id(*backend, missing));
  EXPECT_THAT(rotated_text(*backend), IsEmpty());
  // The writes before and after them are stored.
  const std::optional<Session> stored_before = backend->load_one(before.id);
  ASSERT_TRUE(stored_before.has_value());
  EXPECT_TRUE(same_session(before, *stored_before));
  const std::optional<Session> stored_after = backend->load_one(after.id);
  ASSERT_TRUE(stored_after.has_value());
  EXPECT_TRUE(same_session(after, *stored_after));
  const std::optional<Session> slid = backend->load_one(to_slide.id);
  ASSERT_TRUE(slid.has_value());
  EXPECT_EQ(slid->last_seen_at, now);
  EXPECT_EQ(slid->expires_at, now + kHour);
  EXPECT_EQ(rows_by_id(*backend).size(), 5U);  // the 3 seeded, `before`, `after`
}

// ------------------------------------------------------------------------------------------------
// SQLite: a failure of the whole transaction fails the whole group
// ------------------------------------------------------------------------------------------------

class GroupCommitSqlite : public GroupCommitContract {};

INSTANTIATE_TEST_SUITE_P(Backends, GroupCommitSqlite,
                         ::testing::Values(std::string(pylon::test::kSqlite)),
                         pylon::test::backend_name);

TEST_P(GroupCommitSqlite, ATransactionEndedByTheEngineFailsTheWholeGroupAndStoresNone) {
  std::unique_ptr<SessionBackend> backend = db_->open_backend();
  const Session to_slide = row_of("alice", "acme", kStart + 1, 1);
  const Session to_update = row_of("alice", "acme", kStart + 2, 2);
  const Session to_rotate = row_of("bob", "acme", kStart + 3, 3);
  const Session to_revoke = row_of("carol", "acme", kStart + 4, 4);
  backend->insert_new({to_slide, to_update, to_rotate, to_revoke}, 0);
  // SQLite ends the whole transaction when this fires: no savepoint survives it.
  pylon::test::RawDb raw(db_->sqlite_path());
  raw.exec(
      "CREATE TRIGGER group_commit_poison BEFORE UPDATE OF data ON _pylon_sessions "
      "WHEN NEW.data = CAST('poison' AS BLOB) BEGIN SELECT RAISE(ROLLBACK, 'refused'); END");
  raw.close();
  const std::vector<Session> rows_before = rows_by_id(*backend);

  const std::int64_t now = kStart + 100;
  SessionFilter revoke;
  revoke.id = to_revoke.id;
  // The poisoned write first, in the middle, and last: wherever it stands, nothing is stored.
  for (const std::size_t poisoned_at : {std::size_t{0}, std::size_t{3}, std::size_t{6}}) {
    SCOPED_TRACE("the poisoned write at " + std::to_string(poisoned_at));
    const Session created = row_of("dan", std::nullopt, now, 10);
    const std::string successor = fresh_id();
    std::vector<SessionWrite> writes = {
        InsertNewWrite{{created}, 0},
        TouchWrite{to_slide.id, now, now + kHour},
        UpdateDataWrite{to_update.id, "cart"},
        RotateWrite{to_rotate.id, successor, now},
        RemoveMatchingWrite{revoke},
        InsertNewWrite{{row_of("erin", std::nullopt, now, 11)}, 0},
    };
    writes.insert(writes.begin() + static_cast<std::ptrdiff_t>(poisoned_at),
                  UpdateDataWrite{to_update.id, "poison"});
    EXPECT_THROW(backend->write_group(writes), pylon::Error);
    EXPECT_EQ(rows_by_id(*backend), rows_before);
    EXPECT_THAT(rotated_text(*backend), IsEmpty());
  }

  // The backend is usable afterwards: the same group without the poison commits.
  const std::string successor = fresh_id();
  const std::vector<SessionWriteOutcome> outcomes = backend->write_group(
      {TouchWrite{to_slide.id, now, now + kHour}, RotateWrite{to_rotate.id, successor, now},
       RemoveMatchingWrite{revoke}});
  ASSERT_EQ(outcomes.size(), 3U);
  for (const SessionWriteOutcome& outcome : outcomes) EXPECT_EQ(error_name(outcome.error), "");
  EXPECT_TRUE(backend->load_one(successor).has_value());
  EXPECT_FALSE(backend->load_one(to_revoke.id).has_value());
  EXPECT_EQ(backend->load_one(to_slide.id)->last_seen_at, now);
}

// ------------------------------------------------------------------------------------------------
// Through SessionStore: eight threads, every kind of write
// ------------------------------------------------------------------------------------------------

constexpr std::size_t kThreads = 8;

// An sqlite3_commit_hook: counts the commits of a connection; lets every one happen.
int count_commit(void* commits) {
  static_cast<std::atomic<std::size_t>*>(commits)->fetch_add(1);
  return 0;
}

// A session stored before the store opens, whose token the test holds.
struct Seeded {
  std::string token;
  std::string id;
};

// Adds to `rows` a session of `user` created and last seen at kStart, with the data "initial".
Seeded seed(const std::string& user, std::vector<Session>* rows) {
  Seeded seeded{pylon::generate_token(), {}};
  Session row = row_of(user, std::nullopt, kStart, static_cast<int>(rows->size()));
  row.id = pylon::session_id_for_token(seeded.token);
  row.data = "initial";
  row.idp_session_id.reset();
  seeded.id = row.id;
  rows->push_back(std::move(row));
  return seeded;
}

class GroupCommitStore : public GroupCommitContract {
 protected:
  // The store's options: the manual clock, and no storage reads for misses, so that find()
  // answers from the cache alone and a cache that lost a stored row shows it.
  [[nodiscard]] StoreOptions options() const {
    StoreOptions options;
    options.clock = clock_.fn();
    options.miss_lookups_per_second = 0;
    return options;
  }
  // A backend on the test's database; SQLite at synchronous=full.
  [[nodiscard]] std::unique_ptr<SessionBackend> open_backend() const {
    if (db_->is_postgres()) return db_->open_backend();
    pylon::SqliteOptions full;
    full.synchronous = pylon::SqliteSync::kFull;
    return pylon::open_sqlite_backend(db_->sqlite_path(), full);
  }

  ManualClock clock_{kStart};
};

INSTANTIATE_TEST_SUITE_P(Backends, GroupCommitStore,
                         ::testing::ValuesIn(pylon::test::contract_backends()),
                         pylon::test::backend_name);

// One round of one thread of the mixed test: the sessions it was given, what it did with them and
// what the store gave back; checked once the threads have ended.
constexpr std::size_t kWritesPerRound = 9;  // create, slide, extend, update_data, rotate, revoke,
                                            // revoke_user, create_anonymous, attach_user
constexpr std::size_t kVictimSessions = 2;
struct MixedRound {
  // Given: seeded sessions of `user`, and kVictimSessions of `victim` for revoke_user().
  std::string user;
  std::string victim;
  Seeded to_slide;
  Seeded to_update;
  Seeded to_rotate;
  Seeded to_revoke;
  std::vector<Seeded> victims;
  // Done.
  std::string error;  // what() of anything a call threw
  NewSession created;
  std::optional<Session> slid;
  std::optional<Session> extended;
  std::string updated_data;
  std::optional<Session> updated;
  std::optional<NewSession> rotated;
  bool revoked = false;
  std::size_t victims_revoked = 0;
  NewSession anonymous;
  std::optional<NewSession> attached;
};

MixedRound seed_round(std::size_t thread, std::size_t round, std::vector<Session>* rows) {
  MixedRound mixed;
  mixed.user = "user-" + std::to_string(thread);
  mixed.victim = "victim-" + std::to_string(thread) + "-" + std::to_string(round);
  mixed.to_slide = seed(mixed.user, rows);
  mixed.to_update = seed(mixed.user, rows);
  mixed.to_rotate = seed(mixed.user, rows);
  mixed.to_revoke = seed(mixed.user, rows);
  for (std::size_t v = 0; v < kVictimSessions; ++v) {
    mixed.victims.push_back(seed(mixed.victim, rows));
  }
  mixed.updated_data = "updated by " + std::to_string(thread) + "/" + std::to_string(round);
  return mixed;
}

// The round's writes, one call after another (kWritesPerRound of them).
void play_round(SessionStore& store, MixedRound& mixed) {
  try {
    mixed.created = store.create(mixed.user);
    mixed.slid = store.validate(mixed.to_slide.token);  // past touch_interval: a slide
    mixed.extended = store.extend(mixed.created.token);
    mixed.updated = store.update_data(mixed.to_update.token, mixed.updated_data);
    mixed.rotated = store.rotate(mixed.to_rotate.token);
    mixed.revoked = store.revoke(mixed.to_revoke.token);
    mixed.victims_revoked = store.revoke_user(mixed.victim);
    mixed.anonymous = store.create_anonymous();
    mixed.attached = store.attach_user(mixed.anonymous.token, mixed.user);
  } catch (const std::exception& error) {
    mixed.error = error.what();
  }
}

// Each call of the round returned its own outcome, and the store now answers accordingly (at
// `now`, the clock the round ran at). Adds every id the round dealt with to `ids`.
void check_round(SessionStore& store, const MixedRound& mixed, std::int64_t now,
                 std::vector<std::string>* ids) {
  ASSERT_EQ(mixed.error, "");
  ids->insert(ids->end(), {mixed.created.session.id, mixed.to_slide.id, mixed.to_update.id,
                           mixed.to_rotate.id, mixed.to_revoke.id, mixed.anonymous.session.id});
  for (const Seeded& victim : mixed.victims) ids->push_back(victim.id);

  const std::optional<Session> created = store.find(mixed.created.session.id);
  ASSERT_TRUE(created.has_value());
  EXPECT_EQ(created->user_id, mixed.user);
  ASSERT_TRUE(mixed.extended.has_value());
  EXPECT_EQ(mixed.extended->expires_at, now + kHour);

  ASSERT_TRUE(mixed.slid.has_value());
  EXPECT_EQ(mixed.slid->last_seen_at, now);
  const std::optional<Session> slid = store.find(mixed.to_slide.id);
  ASSERT_TRUE(slid.has_value());
  EXPECT_EQ(slid->last_seen_at, now);
  EXPECT_EQ(slid->expires_at, now + kHour);

  ASSERT_TRUE(mixed.updated.has_value());
  EXPECT_EQ(mixed.updated->data, mixed.updated_data);
  const std::optional<Session> updated = store.find(mixed.to_update.id);
  ASSERT_TRUE(updated.has_value());
  EXPECT_EQ(updated->data, mixed.updated_data);

  ASSERT_TRUE(mixed.rotated.has_value());
  ids->push_back(mixed.rotated->session.id);
  EXPECT_FALSE(store.validate(mixed.to_rotate.token).has_value()) << "rotated old token";
  EXPECT_FALSE(store.find(mixed.to_rotate.id).has_value());
  const std::optional<Session> successor = store.find(mixed.rotated->session.id);
  ASSERT_TRUE(successor.has_value());
  EXPECT_EQ(successor->user_id, mixed.user);

  EXPECT_TRUE(mixed.revoked);
  EXPECT_FALSE(store.validate(mixed.to_revoke.token).has_value()) << "revoked token";
  EXPECT_EQ(mixed.victims_revoked, kVictimSessions);
  for (const Seeded& victim : mixed.victims) {
    EXPECT_FALSE(store.validate(victim.token).has_value()) << "revoke_user's session";
  }

  ASSERT_TRUE(mixed.attached.has_value());
  ids->push_back(mixed.attached->session.id);
  EXPECT_FALSE(store.validate(mixed.anonymous.token).has_value()) << "the anonymous token";
  const std::optional<Session> attached = store.find(mixed.attached->session.id);
  ASSERT_TRUE(attached.has_value());
  EXPECT_EQ(attached->user_id, mixed.user);
}

TEST_P(GroupCommitStore, EightThreadsMakingEveryKindOfWriteShareCommitsAndEachGetsItsOwnOutcome) {
  if (!db_->is_postgres()) pylon::test::ConnectionSpy::install();
  constexpr std::size_t kRounds = 4;
  std::vector<std::vector<MixedRound>> rounds(kThreads);
  std::vector<Session> rows;
  for (std::size_t t = 0; t < kThreads; ++t) {
    for (std::size_t r = 0; r < kRounds; ++r) rounds[t].push_back(seed_round(t, r, &rows));
  }
  open_backend()->insert_new(rows, 0);

  auto wrapped = std::make_unique<GroupingBackend>(open_backend());
  GroupingBackend* grouping = wrapped.get();
  SessionStore store(std::move(wrapped), options());
  // SQLite: the store's one connection runs at synchronous=full, and every commit it makes is
  // counted, so that the test sees each group share one.
  std::atomic<std::size_t> commits{0};
  if (!db_->is_postgres()) {
    const std::vector<sqlite3*> connections =
        pylon::test::ConnectionSpy::open_connections_to(db_->sqlite_path());
    ASSERT_EQ(connections.size(), 1U);
    EXPECT_EQ(pylon::test::pragma_int(connections.front(), "synchronous"), 2) << "synchronous=full";
    sqlite3_commit_hook(connections.front(), &count_commit, &commits);
  }
  clock_.advance(61);  // past touch_interval: validate() of a seeded session writes its slide
  const std::int64_t now = clock_.now();

  grouping->hold_next_group(kThreads);
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (std::size_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&store, grouping, &mine = rounds[t]] {
      grouping->about_to_call();
      for (MixedRound& mixed : mine) play_round(store, mixed);
    });
  }
  for (std::thread& thread : threads) thread.join();
  ASSERT_FALSE(grouping->held_too_long()) << "the threads never all called the store";

  // Every write went through write_group(), and some group held more than one.
  const std::vector<std::size_t> sizes = grouping->group_sizes();
  std::size_t written = 0;
  for (const std::size_t size : sizes) written += size;
  EXPECT_EQ(written, kThreads * kRounds * kWritesPerRound);
  EXPECT_GT(*std::max_element(sizes.begin(), sizes.end()), 1U)
      << "no two writes shared a group, in " << sizes.size() << " groups";
  EXPECT_EQ(store.stats().writes, kThreads * kRounds * kWritesPerRound);
  EXPECT_EQ(store.stats().write_failures, 0U);
  if (!db_->is_postgres()) {
    EXPECT_EQ(commits.load(), sizes.size()) << "one commit per group";
  }

  std::vector<std::string> ids;  // every id the threads dealt with
  for (std::size_t t = 0; t < kThreads; ++t) {
    for (std::size_t r = 0; r < kRounds; ++r) {
      SCOPED_TRACE("thread " + std::to_string(t) + ", round " + std::to_string(r));
      check_round(store, rounds[t][r], now, &ids);
    }
  }

  // A second store, loading what storage holds, agrees with the first about every session.
  SessionStore second(open_backend(), options());
  for (const Session& row : rows_by_id(*open_backend())) ids.push_back(row.id);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::size_t live = 0;
  for (const std::string& id : ids) {
    const std::optional<Session> first_says = store.find(id);
    const std::optional<Session> second_says = second.find(id);
    EXPECT_EQ(first_says, second_says) << "session " << id;
    if (second_says) ++live;
  }
  // Per round: the created, slid and updated sessions, the rotation's and the sign-in's successors.
  EXPECT_EQ(live, kThreads * kRounds * 5);
  EXPECT_EQ(store.size(), second.size());
}

TEST_P(GroupCommitStore, AFailedGroupFailsEachOfItsCallersAndKeepsNoneOfTheirChanges) {
  std::vector<Session> rows;
  const Seeded to_slide = seed("user-1", &rows);
  const Seeded to_extend = seed("user-2", &rows);
  const Seeded to_update = seed("user-3", &rows);
  const Seeded to_rotate = seed("user-4", &rows);
  const Seeded to_revoke = seed("user-5", &rows);
  const Seeded victim_one = seed("victim", &rows);
  const Seeded victim_two = seed("victim", &rows);
  const Seeded anonymous = seed("", &rows);
  open_backend()->insert_new(rows, 0);

  auto wrapped = std::make_unique<GroupingBackend>(open_backend());
  GroupingBackend* grouping = wrapped.get();
  SessionStore store(std::move(wrapped), options());
  clock_.advance(61);  // past touch_interval: validate() of a seeded session writes its slide
  const std::vector<Session> stored_before = rows_by_id(*open_backend());
  std::vector<std::optional<Session>> cached_before;
  cached_before.reserve(rows.size());
  for (const Session& row : rows) cached_before.push_back(store.find(row.id));
  const std::size_t size_before = store.size();

  // One caller's write is held in write_group() until the seven others are about to call, so they
  // queue behind it; every group fails.
  grouping->fail_writes(true);
  grouping->hold_next_group(kThreads);
  std::vector<std::function<void()>> calls = {
      [&] { store.create("user-0"); },
      [&] { store.validate(to_slide.token); },
      [&] { store.extend(to_extend.token); },
      [&] { store.update_data(to_update.token, "never stored"); },
      [&] { store.rotate(to_rotate.token); },
      [&] { store.revoke(to_revoke.token); },
      [&] { store.revoke_user("victim"); },
      [&] { store.attach_user(anonymous.token, "user-7"); },
  };
  ASSERT_EQ(calls.size(), kThreads);
  std::vector<std::string> errors(kThreads);
  const auto run = [&](std::size_t t) {
    grouping->about_to_call();
    try {
      calls[t]();
      errors[t] = "no error";
    } catch (const pylon::Error& error) {
      errors[t] = pylon::to_string(error.code());
    } catch (const std::exception& error) {
      errors[t] = std::string("not a pylon::Error: ") + error.what();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  threads.emplace_back(run, 0);
  const bool holding = grouping->wait_until_holding(std::chrono::seconds(60));
  for (std::size_t t = 1; t < kThreads; ++t) threads.emplace_back(run, t);
  for (std::thread& thread : threads) thread.join();
  ASSERT_TRUE(holding);
  ASSERT_FALSE(grouping->held_too_long());

  const std::vector<std::size_t> sizes = grouping->group_sizes();
  EXPECT_GT(*std::max_element(sizes.begin(), sizes.end()), 1U)
      << "no failed group held more than one caller, in " << sizes.size() << " groups";
  for (std::size_t t = 0; t < kThreads; ++t) {
    EXPECT_EQ(errors[t], "io") << "caller " << t << " of a failed group";
  }

  // Storage holds exactly what it held: no create, slide, update, rotation, sign-in or delete.
  EXPECT_EQ(rows_by_id(*open_backend()), stored_before);
  EXPECT_THAT(rotated_text(*open_backend()), IsEmpty());
  // The cache holds none of the changes either; the revoked sessions are refused at once (fail
  // closed), though storage still has them.
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const std::string& id = rows[i].id;
    const bool revoked = id == to_revoke.id || id == victim_one.id || id == victim_two.id;
    EXPECT_EQ(store.find(id), revoked ? std::nullopt : cached_before[i]) << "session " << id;
  }
  EXPECT_EQ(store.size(), size_before - 3);
  EXPECT_FALSE(store.validate(to_revoke.token).has_value());
  EXPECT_FALSE(store.validate(victim_one.token).has_value());
  EXPECT_TRUE(store.find(to_rotate.id).has_value()) << "the rotation failed: the old id stays";
  EXPECT_TRUE(store.list_user("user-0").empty()) << "the failed create is cached";

  // Once storage takes writes again, the next write first pays the deletes the revokes owe.
  grouping->fail_writes(false);
  const NewSession later = store.create("user-0");
  for (const std::string& id : {to_revoke.id, victim_one.id, victim_two.id}) {
    EXPECT_FALSE(open_backend()->load_one(id).has_value()) << "owed delete not paid: " << id;
  }
  EXPECT_TRUE(store.find(later.session.id).has_value());
  EXPECT_EQ(rows_by_id(*open_backend()).size(), stored_before.size() - 3 + 1);
}

}  // namespace

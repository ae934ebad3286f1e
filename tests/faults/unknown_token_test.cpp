// Unknown tokens never write anything. A flood of tokens that
// name no live session (well-formed ones never issued, near misses of live tokens, malformed
// strings of every kind, the empty string, a revoked, an expired and a rotated-away token) must
// leave storage exactly as it was, whatever the backend:
//   sqlite    the database file and its -wal and -journal are byte for byte the same (size,
//             SHA-256, contents) and keep their modification times (not the -shm: a token the
//             cache does not hold is looked up in storage, and a read in WAL mode takes a read
//             mark there, which is SQLite's shared memory, not data);
//             and the library's own connection runs no statement that could write (traced with
//             sqlite3_trace_v2: a DELETE of no row, or a write lock taken for nothing, changes
//             no byte but is a write all the same);
//   postgres  every row of every table of the database keeps its values, its xmin (the
//             transaction that wrote it) and its ctid (where it lives): an UPDATE, even one that
//             writes the same values, or a DELETE and re-INSERT, changes both.
// The store must not change either: the same sessions, users and counters (only cache_misses
// grows, by one per call), and only the events those tokens announce.
//
// The setup makes a write due: the live sessions were last seen twenty minutes ago, past
// touch_interval, so validating any of their tokens slides its idle expiry and writes. Each test
// ends with that control, which must show up in the same comparison, so a comparison that cannot
// see a write fails the test instead of passing it.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "session_backend.hpp"
#include "support/test_database.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::NewSession;
using pylon::Session;
using pylon::SessionEvent;
using pylon::SessionEventType;
using pylon::SessionStore;
using pylon::StoreOptions;
using pylon::StoreStats;
using pylon::test::ManualClock;
using pylon::test::SqlRow;
using pylon::test::TestDatabase;

constexpr std::int64_t kMinute = 60;

// ------------------------------------------------------------------------------------------------
// What storage holds, read without writing
// ------------------------------------------------------------------------------------------------

struct FileState {
  bool exists = false;
  std::string bytes;
  std::int64_t modified_ns = 0;
};

// SQLite: the database file and its companions. PostgreSQL: every table's rows with their xmin
// and ctid, read on a connection of the test's own (a SELECT writes no row version).
struct StorageState {
  std::map<std::string, FileState> files;
  std::vector<SqlRow> rows;
};

FileState file_state(const std::string& path) {
  FileState state;
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) return state;
  state.exists = true;
  state.bytes = pylon::test::read_file_bytes(path);
  state.modified_ns = std::int64_t{info.st_mtim.tv_sec} * 1000000000 + info.st_mtim.tv_nsec;
  return state;
}

StorageState storage_state(const TestDatabase& db) {
  StorageState state;
  if (!db.is_postgres()) {
    for (const char* suffix : {"", "-wal", "-journal"}) {
      state.files[suffix] = file_state(db.sqlite_path() + suffix);
    }
    return state;
  }
  const std::vector<SqlRow> tables = db.query(
      "SELECT quote_ident(table_name) FROM information_schema.tables "
      "WHERE table_schema = current_schema() ORDER BY table_name");
  for (const SqlRow& table : tables) {
    const std::string name = table.at(0).value_or("?");
    for (SqlRow row : db.query("SELECT xmin::text, ctid::text, t::text FROM " + name + " AS t")) {
      row.insert(row.begin(), name);
      state.rows.push_back(std::move(row));
    }
  }
  return state;
}

std::string row_text(const SqlRow& row) {
  std::string text;
  for (const auto& cell : row) text += cell.value_or("NULL") + " | ";
  return text;
}

// What differs between two states, one line per difference; "" when nothing does.
std::string storage_changes(const StorageState& before, const StorageState& after) {
  std::ostringstream changes;
  for (const auto& [suffix, old_file] : before.files) {
    const FileState& new_file = after.files.at(suffix);
    const std::string name = "database file" + (suffix.empty() ? std::string() : " " + suffix);
    if (old_file.exists != new_file.exists) {
      changes << name << (new_file.exists ? " appeared\n" : " disappeared\n");
    } else if (old_file.bytes != new_file.bytes) {
      changes << name << " changed: " << old_file.bytes.size() << " bytes, SHA-256 "
              << pylon::session_id_for_token(old_file.bytes) << " -> " << new_file.bytes.size()
              << " bytes, SHA-256 " << pylon::session_id_for_token(new_file.bytes) << "\n";
    } else if (old_file.modified_ns != new_file.modified_ns) {
      changes << name << " was written (same bytes, modification time moved)\n";
    }
  }
  // Rows as (table | xmin | ctid | row): "-" gone or rewritten, "+" new or rewritten.
  std::vector<SqlRow> old_rows = before.rows;
  std::vector<SqlRow> new_rows = after.rows;
  std::sort(old_rows.begin(), old_rows.end());
  std::sort(new_rows.begin(), new_rows.end());
  std::vector<SqlRow> gone;
  std::vector<SqlRow> added;
  std::set_difference(old_rows.begin(), old_rows.end(), new_rows.begin(), new_rows.end(),
                      std::back_inserter(gone));
  std::set_difference(new_rows.begin(), new_rows.end(), old_rows.begin(), old_rows.end(),
                      std::back_inserter(added));
  for (const SqlRow& row : gone) changes << "- " << row_text(row) << "\n";
  for (const SqlRow& row : added) changes << "+ " << row_text(row) << "\n";
  return changes.str();
}

// The statements that could write (sqlite3_stmt_readonly() is false) run on the library's own
// SQLite connections, found through ConnectionSpy. It must outlive those connections: the trace
// callback keeps a pointer to it until they close.
class WriteStatementLog {
 public:
  WriteStatementLog() = default;
  ~WriteStatementLog() = default;
  WriteStatementLog(const WriteStatementLog&) = delete;
  WriteStatementLog& operator=(const WriteStatementLog&) = delete;
  WriteStatementLog(WriteStatementLog&&) = delete;
  WriteStatementLog& operator=(WriteStatementLog&&) = delete;

  // Traces every connection open on `path` now; how many there were.
  std::size_t attach(const std::string& path) {
    const std::vector<sqlite3*> connections = pylon::test::ConnectionSpy::open_connections_to(path);
    for (sqlite3* db : connections) {
      sqlite3_trace_v2(db, SQLITE_TRACE_STMT, &WriteStatementLog::on_statement, this);
    }
    return connections.size();
  }
  // The SQL of the writing statements run since the last call (bound values not expanded).
  std::vector<std::string> take() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(statements_, {});
  }

 private:
  static int on_statement(unsigned type, void* context, void* statement, void* /*sql*/) {
    auto* self = static_cast<WriteStatementLog*>(context);
    auto* prepared = static_cast<sqlite3_stmt*>(statement);
    if (type == SQLITE_TRACE_STMT && sqlite3_stmt_readonly(prepared) == 0) {
      const char* sql = sqlite3_sql(prepared);
      const std::lock_guard<std::mutex> lock(self->mutex_);
      self->statements_.emplace_back(sql != nullptr ? sql : "?");
    }
    return 0;
  }

  std::mutex mutex_;
  std::vector<std::string> statements_;
};

// ------------------------------------------------------------------------------------------------
// What the store holds
// ------------------------------------------------------------------------------------------------

struct StoreState {
  StoreStats stats;                                   // read first, before the calls below
  std::vector<std::optional<Session>> found;          // find() of every live session's id
  std::map<std::string, std::vector<Session>> users;  // list_user() of every user
};

StoreState store_state(SessionStore& store, const std::vector<NewSession>& live) {
  StoreState state;
  state.stats = store.stats();
  for (const NewSession& session : live) {
    state.found.push_back(store.find(session.session.id));
    state.users[session.session.user_id] = store.list_user(session.session.user_id);
  }
  return state;
}

// Whether the store is as it was, except for the counters that `calls` more validate() calls
// that missed, and the find() calls of `before` itself, move.
::testing::AssertionResult same_store(const StoreState& before, const StoreState& after,
                                      std::uint64_t calls) {
  std::uint64_t found = 0;
  for (const std::optional<Session>& session : before.found) found += session ? 1U : 0U;
  const StoreStats& a = before.stats;
  const StoreStats& b = after.stats;
  if (a.sessions != b.sessions || a.users != b.users || b.cache_hits != a.cache_hits + found ||
      b.cache_misses != a.cache_misses + calls + (before.found.size() - found) ||
      a.writes != b.writes || a.write_failures != b.write_failures ||
      a.last_error != b.last_error || a.skipped_rows != b.skipped_rows) {
    return ::testing::AssertionFailure()
           << "stats moved: sessions " << a.sessions << " -> " << b.sessions << ", users "
           << a.users << " -> " << b.users << ", hits " << a.cache_hits << " -> " << b.cache_hits
           << " (expected +" << found << " from find()), misses " << a.cache_misses << " -> "
           << b.cache_misses << " (expected +" << calls << "), writes " << a.writes << " -> "
           << b.writes << ", write failures " << a.write_failures << " -> " << b.write_failures
           << ", last error \"" << b.last_error << "\"";
  }
  if (before.found != after.found) return ::testing::AssertionFailure() << "find() differs";
  if (before.users != after.users) return ::testing::AssertionFailure() << "list_user() differs";
  return ::testing::AssertionSuccess();
}

// ------------------------------------------------------------------------------------------------
// Tokens that name no live session
// ------------------------------------------------------------------------------------------------

// Well-formed tokens of no session: fresh ones, one hex digit off a live token, and a live
// session's id dressed as a token (the id is the hash of the token, not the token).
std::vector<std::string> never_issued_tokens(const std::vector<NewSession>& live) {
  std::vector<std::string> tokens;
  tokens.reserve(2000 + 3 * live.size());
  for (int i = 0; i < 2000; ++i) tokens.push_back(pylon::generate_token());
  for (const NewSession& session : live) {
    std::string near = session.token;
    near.back() = near.back() == '0' ? '1' : '0';
    tokens.push_back(near);
    near = session.token;
    near[pylon::kTokenLength / 2] = near[pylon::kTokenLength / 2] == 'f' ? 'e' : 'f';
    tokens.push_back(near);
    tokens.push_back("pylon_" + session.session.id);
  }
  return tokens;
}

// Strings that are not tokens, many of them a live token slightly spoiled.
std::vector<std::string> malformed_tokens(const std::vector<NewSession>& live) {
  std::vector<std::string> tokens = {"", "pylon_", "pylon", "null", std::string(1 << 20, 'a')};
  for (const NewSession& session : live) {
    const std::string& token = session.token;
    std::string upper = token;
    for (char& c : upper) c = c >= 'a' && c <= 'f' ? static_cast<char>(c - 'a' + 'A') : c;
    upper.back() = 'F';
    tokens.push_back(upper);
    tokens.push_back(token.substr(6));                    // the hex without its prefix
    tokens.push_back(session.session.id);                 // the session id itself
    tokens.push_back(token.substr(0, token.size() - 1));  // one character short
    tokens.push_back(token + "0");                        // one character long
    tokens.push_back(token + "\n");                       // as a careless header parser has it
    tokens.push_back(" " + token);                        // with the cookie's separator
    tokens.push_back(std::string(token).insert(20, 1, '\0').substr(0, token.size()));  // a NUL
    tokens.push_back("Pylon_" + token.substr(6));  // another prefix
    tokens.push_back(token.substr(0, 69) + "g");   // a non-hex digit
    tokens.push_back(token + token);               // twice
  }
  for (std::uint32_t seed = 0; seed < 1000; ++seed) {
    tokens.push_back(pylon::test::random_bytes(seed % 140, seed));  // 70 bytes among them
  }
  return tokens;
}

// ------------------------------------------------------------------------------------------------
// The fixture
// ------------------------------------------------------------------------------------------------

// Records the events of a store (SessionStore calls on_event on the calling thread).
class EventLog {
 public:
  std::function<void(const SessionEvent&)> sink() {
    return [this](const SessionEvent& event) {
      const std::lock_guard<std::mutex> lock(mutex_);
      events_.push_back(event);
    };
  }
  std::vector<SessionEvent> take() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return std::exchange(events_, {});
  }

 private:
  std::mutex mutex_;
  std::vector<SessionEvent> events_;
};

// On a fresh database of the backend under test, with a manual clock, the default durations
// (absolute 24 h, idle 1 h, touch interval 60 s) and:
//   live_      12 sessions of 4 users, created at T+50 min;
//   expired_   created at T, idle-expired since T+60 min;
//   revoked_   created and revoked at T+50 min;
//   rotated_   the old token of a session rotated at T+50 min (its successor is in live_);
// and the clock at T+70 min: every live session is due for a slide write.
class UnknownToken : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(pylon::test::make_test_database(GetParam(), &db_));
    if (!db_->is_postgres()) pylon::test::ConnectionSpy::install();
    store_ = std::make_unique<SessionStore>(SessionStore::open(db_->impatient_url(), options()));
    expired_ = store_->create("expired-user").token;
    clock_.advance(50 * kMinute);
    for (int i = 0; i < 12; ++i) {
      pylon::CreateOptions where;
      where.device = "device " + std::to_string(i);
      where.data = "data " + std::to_string(i);
      live_.push_back(store_->create("user-" + std::to_string(i % 4), where));
    }
    revoked_ = store_->create("user-0").token;
    ASSERT_TRUE(store_->revoke(revoked_));
    NewSession rotating = store_->create("user-1");
    std::optional<NewSession> successor = store_->rotate(rotating.token);
    ASSERT_TRUE(successor.has_value());
    rotated_ = rotating.token;
    live_.push_back(*std::move(successor));
    clock_.advance(20 * kMinute);
    events_.take();
    if (!db_->is_postgres()) {
      ASSERT_GE(statements_.attach(db_->sqlite_path()), 1U) << "the store's connection";
    }
  }

  [[nodiscard]] StoreOptions options() {
    StoreOptions options;
    options.clock = clock_.fn();
    options.on_event = events_.sink();
    return options;
  }

  // Validates every token of `tokens` `rounds` times; each must be refused. Returns the calls.
  std::uint64_t refuse_all(const std::vector<std::string>& tokens, int rounds = 1) {
    std::uint64_t calls = 0;
    for (int round = 0; round < rounds; ++round) {
      for (const std::string& token : tokens) {
        EXPECT_FALSE(store_->validate(token).has_value()) << "token #" << calls;
        ++calls;
      }
    }
    return calls;
  }

  // The control: a live token's validate, due for a slide, must write, and the same comparison
  // that found nothing before must see it. Else that comparison proves nothing.
  void expect_a_known_token_writes(const StorageState& before) {
    const std::uint64_t writes = store_->stats().writes;
    const std::optional<Session> validated = store_->validate(live_.front().token);
    ASSERT_TRUE(validated.has_value());
    EXPECT_EQ(validated->last_seen_at, clock_.now()) << "the slide was not taken";
    EXPECT_GT(store_->stats().writes, writes);
    EXPECT_NE(storage_changes(before, storage_state(*db_)), "")
        << "a slide write went unseen: the comparison cannot detect a write";
    if (!db_->is_postgres()) {
      EXPECT_FALSE(statements_.take().empty()) << "a slide write went unseen by the trace";
    }
  }

  // SQLite: no statement that could write ran on the store's connection since the last call.
  void expect_no_write_statement() {
    if (db_->is_postgres()) return;
    const std::vector<std::string> statements = statements_.take();
    if (statements.empty()) return;
    const std::set<std::string> distinct(statements.begin(), statements.end());
    std::string list;
    for (const std::string& sql : distinct) list += "\n  " + sql;
    ADD_FAILURE() << "the store ran " << statements.size() << " statements that write:" << list;
  }

  std::unique_ptr<TestDatabase> db_;
  ManualClock clock_{1'700'000'000};
  EventLog events_;
  WriteStatementLog statements_;  // before store_: it must outlive the store's connection
  std::unique_ptr<SessionStore> store_;
  std::vector<NewSession> live_;
  std::string expired_;
  std::string revoked_;
  std::string rotated_;
};

INSTANTIATE_TEST_SUITE_P(Backends, UnknownToken,
                         ::testing::ValuesIn(pylon::test::contract_backends()),
                         pylon::test::backend_name);

TEST_P(UnknownToken, TheTokensAreWhatTheyClaimToBe) {
  for (const std::string& token : never_issued_tokens(live_)) {
    ASSERT_TRUE(pylon::is_well_formed_token(token)) << token;
  }
  for (const std::string& token : malformed_tokens(live_)) {
    ASSERT_FALSE(pylon::is_well_formed_token(token)) << token;
  }
  for (const NewSession& session : live_) {
    ASSERT_TRUE(store_->find(session.session.id).has_value());
  }
  EXPECT_EQ(db_->count(), static_cast<std::int64_t>(live_.size()) + 1) << "live + expired rows";
}

TEST_P(UnknownToken, ThousandsOfUnknownTokensWriteNothing) {
  const StorageState storage_before = storage_state(*db_);
  const StoreState store_before = store_state(*store_, live_);

  std::uint64_t calls = refuse_all(never_issued_tokens(live_));
  calls += refuse_all(malformed_tokens(live_));
  calls += refuse_all({revoked_}, 100);
  const std::uint64_t expired_calls = refuse_all({expired_}, 100);
  const std::uint64_t rotated_calls = refuse_all({rotated_}, 100);
  calls += expired_calls + rotated_calls;
  ASSERT_GT(calls, 3000U);

  EXPECT_EQ(storage_changes(storage_before, storage_state(*db_)), "");
  expect_no_write_statement();
  EXPECT_TRUE(same_store(store_before, store_state(*store_, live_), calls));
  // Only the announcements these tokens call for: nothing created, revoked or purged.
  std::uint64_t expired_events = 0;
  std::uint64_t reuse_events = 0;
  for (const SessionEvent& event : events_.take()) {
    if (event.type == SessionEventType::kValidatedExpired) {
      ++expired_events;
    } else if (event.type == SessionEventType::kRotatedTokenReused) {
      ++reuse_events;
    } else {
      ADD_FAILURE() << "unexpected event of type " << static_cast<int>(event.type);
    }
  }
  EXPECT_EQ(expired_events, expired_calls);
  EXPECT_EQ(reuse_events, rotated_calls);

  expect_a_known_token_writes(storage_before);
}

// A revoke whose delete failed is pending until the store's next write; a validate of unknown
// tokens is no write and must not send it (nor anything else).
TEST_P(UnknownToken, UnknownTokensDoNotSendAPendingRevoke) {
  const NewSession doomed = live_.back();
  live_.pop_back();
  {
    const std::unique_ptr<pylon::test::WriteBlock> block = db_->block_writes();
    EXPECT_PYLON_ERROR(store_->revoke(doomed.token), pylon::ErrorCode::kBusy);
  }
  ASSERT_TRUE(db_->has(doomed.session.id)) << "the delete is still pending";
  statements_.take();  // the failed revoke's attempt
  const StorageState storage_before = storage_state(*db_);
  const StoreState store_before = store_state(*store_, live_);

  std::uint64_t calls = refuse_all(never_issued_tokens(live_));
  calls += refuse_all(malformed_tokens(live_));
  calls += refuse_all({doomed.token}, 100);

  EXPECT_EQ(storage_changes(storage_before, storage_state(*db_)), "");
  expect_no_write_statement();
  EXPECT_TRUE(same_store(store_before, store_state(*store_, live_), calls));

  expect_a_known_token_writes(storage_before);
  EXPECT_FALSE(db_->has(doomed.session.id)) << "the next write sent the pending delete";
}

}  // namespace

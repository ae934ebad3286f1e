// The shipped conformance suite run against pylon's own backends: SQLite always, PostgreSQL when
// PYLON_TEST_DATABASE_URL or CI is set (pylon::test::contract_backends()), each on a fresh
// database per test, with every hook: reopen (a second backend on the database), refuse_writes
// (triggers refusing inserts and updates) and, on PostgreSQL, lose_connection
// (pg_terminate_backend); and against the example MemoryBackend (examples/memory_backend), as
// its own test program registers it. Tests: BackendConformance.<Check>/{memory,sqlite,postgres}.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include "memory_backend.hpp"
#include "pylon/backend_conformance.hpp"
#include "support/forwarding_backend.hpp"
#include "support/test_database.hpp"

namespace {

using pylon::SessionBackend;
using pylon::test::TestDatabase;

// The database outlives every backend on it: a base-from-member, destroyed after the backend.
struct DatabaseHolder {
  std::shared_ptr<TestDatabase> database;
};

class OnTestDatabase final : private DatabaseHolder, public pylon::test::ForwardingBackend {
 public:
  explicit OnTestDatabase(std::shared_ptr<TestDatabase> db)
      : DatabaseHolder{std::move(db)}, ForwardingBackend(database->open_backend()) {}
  std::unique_ptr<pylon::ChangeSource> open_change_source() override {
    return real().open_change_source();
  }

  static OnTestDatabase& of(SessionBackend& backend) {
    return dynamic_cast<OnTestDatabase&>(backend);
  }
  [[nodiscard]] const std::shared_ptr<TestDatabase>& shared_database() const { return database; }
};

pylon::conformance::BackendUnderTest on_test_databases(const std::string& kind) {
  pylon::conformance::BackendUnderTest backend;
  backend.name = kind;
  backend.make_empty = [kind] {
    return std::make_unique<OnTestDatabase>(std::make_shared<TestDatabase>(kind));
  };
  backend.follows_changes = true;
  backend.reopen = [](SessionBackend& opened) {
    return std::make_unique<OnTestDatabase>(OnTestDatabase::of(opened).shared_database());
  };
  backend.refuse_writes = [](SessionBackend& opened, bool refuse) {
    OnTestDatabase::of(opened).shared_database()->refuse_saves(refuse);
  };
  if (kind == pylon::test::kPostgres) {
    backend.lose_connection = [](SessionBackend& opened) {
      // With a timeout, pg_terminate_backend returns once the server process is gone.
      const std::int64_t ended = OnTestDatabase::of(opened).shared_database()->query_int(
          "SELECT count(*) FROM (SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
          "WHERE datname = current_database() AND pid <> pg_backend_pid() "
          "AND application_name = 'pylon-sessions') AS terminated");
      if (ended < 1) throw std::runtime_error("the backend's connection was not found");
    };
  }
  return backend;
}

}  // namespace

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  pylon::conformance::BackendUnderTest memory;
  memory.name = "memory";
  memory.make_empty = [] { return std::make_unique<MemoryBackend>(); };
  memory.refuse_writes = [](SessionBackend& backend, bool refuse) {
    dynamic_cast<MemoryBackend&>(backend).refuse_writes(refuse);
  };
  pylon::conformance::register_backend_conformance_tests(memory);
  for (const std::string& kind : pylon::test::contract_backends()) {
    pylon::conformance::register_backend_conformance_tests(on_test_databases(kind));
  }
  return RUN_ALL_TESTS();
}

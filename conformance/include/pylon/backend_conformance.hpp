// pylon-sessions: the SessionBackend conformance suite, for GoogleTest.
//
// A backend of your own (Redis, DynamoDB, a map in memory) keeps the SessionBackend contract when
// it passes these tests: the same suite that pylon-sessions runs against its SQLite and
// PostgreSQL backends. Every check goes through the SessionBackend interface, and through a
// SessionStore built on the backend; none looks at storage any other way. Link
// pylon::backend_conformance (CMake) and GoogleTest, then register your backend once:
//
//   #include <pylon/backend_conformance.hpp>
//
//   PYLON_BACKEND_CONFORMANCE_TESTS(redis, [] { return std::make_unique<RedisBackend>(...); });
//
// and link GTest::gtest_main (or call register_backend_conformance_tests() from your own main()
// before RUN_ALL_TESTS()). The factory must return a fresh, empty backend on every call: each
// test gets its own. Tests are named BackendConformance.<Check>/<name>.
//
// Behaviour that needs a fault (a refused write, a lost connection) or a second backend on the
// same storage (a restart) is checked only when the backend offers a hook for it (see
// BackendUnderTest); without one, those checks are not registered for that backend.
#ifndef PYLON_BACKEND_CONFORMANCE_HPP_
#define PYLON_BACKEND_CONFORMANCE_HPP_

#include <functional>
#include <memory>
#include <pylon/session_backend.hpp>
#include <string>

namespace pylon::conformance {

// Makes a fresh, empty backend. It may throw: the test then fails with what it threw.
using BackendFactory = std::function<std::unique_ptr<SessionBackend>()>;

struct BackendUnderTest {
  // Shown in every test's name; letters, digits and '_' only.
  std::string name;
  BackendFactory make_empty;

  // Optional hooks. Each receives a backend that make_empty() returned.
  //
  // Another backend on the same storage, as a restart (or another process) would open it. Runs
  // the checks that acknowledged writes are durable and that a SessionStore restarted on the
  // storage still validates its tokens.
  std::function<std::unique_ptr<SessionBackend>(SessionBackend& backend)> reopen;
  // refuse = true: from now on every insert and update of the backend throws pylon::Error
  // (deletes may still succeed); false: writes work again. Runs the checks that a failed write
  // changes nothing: no row inserted, replaced, evicted or rotated, and a SessionStore left as
  // storage is.
  std::function<void(SessionBackend& backend, bool refuse)> refuse_writes;
  // Breaks the backend's connection to its server, as a server restart would, and returns once
  // it is broken. Runs the check that the next call fails with kConnectionLost or succeeds (never
  // another error, never a hang), that the call after it succeeds, and that every acknowledged
  // write is still there.
  std::function<void(SessionBackend& backend)> lose_connection;
  // True when the backend's open_change_source() returns a reader of its change log (several
  // stores share its storage and follow each other through it). Runs the check that every write
  // appears in the log, in order, with what storage then holds for its id, and that pruning
  // keeps what is younger than it was told to keep.
  bool follows_changes = false;
};

// Registers the suite's tests for `backend` with GoogleTest. Call it before RUN_ALL_TESTS(),
// once per backend (names must differ); it may run before main(), to initialise a static. A
// name that is not an identifier, a missing factory or a name registered twice registers one
// failing test that says so (BackendConformance.InvalidRegistration/<n>) and returns false.
bool register_backend_conformance_tests(const BackendUnderTest& backend) noexcept;
bool register_backend_conformance_tests(const std::string& name,
                                        BackendFactory make_empty) noexcept;

}  // namespace pylon::conformance

#define PYLON_CONFORMANCE_CONCAT_INNER_(a, b) a##b
#define PYLON_CONFORMANCE_CONCAT_(a, b) PYLON_CONFORMANCE_CONCAT_INNER_(a, b)

// Registers the suite for a backend while the program starts, so that GTest::gtest_main's
// main() runs it. `name` is an identifier; the rest is anything a BackendFactory can hold (a
// lambda may contain commas).
#define PYLON_BACKEND_CONFORMANCE_TESTS(name, ...)                                   \
  static const bool PYLON_CONFORMANCE_CONCAT_(pylon_conformance_registered_, name) = \
      ::pylon::conformance::register_backend_conformance_tests(#name, (__VA_ARGS__))

#endif  // PYLON_BACKEND_CONFORMANCE_HPP_

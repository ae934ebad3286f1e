// Runs the shipped SessionBackend conformance suite against MemoryBackend: what a backend of your
// own needs to be tested (README, "Write a backend"). Link pylon::backend_conformance and
// GoogleTest; the tests are BackendConformance.<Check>/memory.
#include "memory_backend.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <pylon/backend_conformance.hpp>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  pylon::conformance::BackendUnderTest memory;
  memory.name = "memory";
  memory.make_empty = [] { return std::make_unique<MemoryBackend>(); };
  // The optional fault hook: the checks that a refused write changes nothing run too. (A backend
  // on a server would also offer lose_connection; one on lasting storage, reopen.)
  memory.refuse_writes = [](pylon::SessionBackend& backend, bool refuse) {
    dynamic_cast<MemoryBackend&>(backend).refuse_writes(refuse);
  };
  pylon::conformance::register_backend_conformance_tests(memory);
  return RUN_ALL_TESTS();
}

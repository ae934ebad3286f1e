# The power-loss suite ("Nothing lost under faults"), included from
# tests/CMakeLists.txt. One program, pylon_power_loss_test: PowerLossVfs (a test-only SQLite VFS
# that wraps the default one and loses or tears every unsynced write when the power "goes"),
# registered as the default VFS in this process only, and the sweeps that cut the power at every
# I/O call of a create, a revoke and a rotation under synchronous=FULL and NORMAL.
# Each test works in its own temporary directory, so the suite runs in parallel with the others.
pylon_add_test_program(pylon_power_loss_test
  ${CMAKE_CURRENT_LIST_DIR}/power_loss_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/power_loss_vfs.cpp)
gtest_discover_tests(pylon_power_loss_test NO_PRETTY_VALUES DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 300)

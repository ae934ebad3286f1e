# The filesystem fault suites ("Nothing lost under faults"), included from
# tests/CMakeLists.txt. One program, pylon_filesystem_faults_test, with its own main(): it runs
# itself again as a child under strace (injected I/O errors) and setpriv (an unprivileged user).
#   FullDisk.*      a tmpfs of 256 KiB mounted per test (needs root; fails, never skips, without)
#   IoErrors.*      EIO injected by strace into fdatasync, fsync and pwrite64, every call in turn
#   BadPaths.*      an immutable file, a missing directory, a directory as the path (as root)
#   AsNobody.*      directories and files the user nobody may not write or enter (setpriv)
#   CorruptFiles.*  a real database with bytes overwritten at random offsets, 300 seeded variants
#   FilePermissions.*, SqlitePaths.*  files others may write or read, or another user owns (as
#                   root); a path longer than SQLite takes
# Each tmpfs is private to its test and the tests touch nothing outside their own temporary
# directories, so they can run in parallel with every other test: none is RUN_SERIAL. The timeout
# covers the pwrite64 sweep under ASan (about 80 s on two busy cores; under 20 s in a dev build).
pylon_add_test_program(pylon_filesystem_faults_test OWN_MAIN
  ${CMAKE_CURRENT_LIST_DIR}/filesystem_faults_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/fault_helpers.cpp
  ${CMAKE_CURRENT_LIST_DIR}/io_error_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/full_disk_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/corrupt_file_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/bad_path_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/file_permissions_test.cpp)
gtest_discover_tests(pylon_filesystem_faults_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 300)

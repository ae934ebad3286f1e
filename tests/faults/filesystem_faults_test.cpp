// The entry point of pylon_filesystem_faults_test, the filesystem half of "Nothing lost under
// faults": a full disk (full_disk_test.cpp), injected I/O errors (io_error_test.cpp),
// read-only and unusable paths (bad_path_test.cpp) and damaged database files
// (corrupt_file_test.cpp).
//
// Two suites run this very program again as a child process (a fresh process, not a fork of the
// test runner): under strace, which injects the I/O errors, and under setpriv, as an unprivileged
// user. That is why this program has its own main() instead of gtest_main: argv[1] selects the
// child, and a child never starts GoogleTest.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "faults/fault_helpers.hpp"

int main(int argc, char** argv) {
  if (argc >= 2) {
    // NOLINTNEXTLINE(cppcoreguidelines-pro-bounds-pointer-arithmetic): main's argv is a C array
    const std::vector<std::string> args(argv + 2, argv + argc);
    // NOLINTNEXTLINE(cppcoreguidelines-pro-bounds-pointer-arithmetic): main's argv is a C array
    const std::string flag = argv[1];
    if (flag == pylon::test::faults::kIoErrorChildFlag) {
      return pylon::test::faults::io_error_child_main(args);
    }
    if (flag == pylon::test::faults::kBadPathChildFlag) {
      return pylon::test::faults::bad_path_child_main(args);
    }
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

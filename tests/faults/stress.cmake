# The race suite of issue 6 ("Sanitizers and races"), included from tests/CMakeLists.txt. One
# program, pylon_stress_test: 8 threads validate, create, revoke and rotate on a store of 10,000
# sessions, then the cache is compared with storage row for row (stress_test.cpp says what each
# thread checks). One TEST_P, instantiated for "sqlite" and, when PYLON_TEST_DATABASE_URL or CI is
# set, for "postgres" (labelled `pg`); each instance works on a fresh SQLite file or a fresh
# PostgreSQL database of its own, so it runs in parallel with every other test. It is meant for
# the asan and tsan presets above all; a sanitized build runs fewer operations per thread. The
# timeout covers a sanitized run on two busy cores (about a minute; a few seconds in dev).
add_executable(pylon_stress_test ${CMAKE_CURRENT_LIST_DIR}/stress_test.cpp)
target_link_libraries(pylon_stress_test PRIVATE pylon_test_support GTest::gtest_main)
set_target_properties(pylon_stress_test PROPERTIES CXX_EXTENSIONS OFF)
pylon_enable_warnings(pylon_stress_test)
pylon_enable_sanitizers(pylon_stress_test)

# Whether the postgres instance exists depends on ctest's environment (see tests/CMakeLists.txt),
# so the tests are listed when ctest runs (PRE_TEST), and this script, run by ctest before the
# lists are read, forgets them whenever PYLON_TEST_DATABASE_URL or CI went from set to unset or
# back since the last run. It is registered before the lists, so it runs first.
set(pylon_stress_lists_script ${CMAKE_CURRENT_BINARY_DIR}/forget_stale_stress_test_lists.cmake)
file(WRITE ${pylon_stress_lists_script} "\
set(key \"url=0 ci=0\")
if(NOT \"\$ENV{PYLON_TEST_DATABASE_URL}\" STREQUAL \"\")
  string(REPLACE \"url=0\" \"url=1\" key \"\${key}\")
endif()
if(NOT \"\$ENV{CI}\" STREQUAL \"\")
  string(REPLACE \"ci=0\" \"ci=1\" key \"\${key}\")
endif()
set(stamp \"${CMAKE_CURRENT_BINARY_DIR}/stress_test_lists.env\")
set(previous \"\")
if(EXISTS \"\${stamp}\")
  file(READ \"\${stamp}\" previous)
endif()
if(NOT previous STREQUAL key)
  foreach(list pylon_stress_test[1] pylon_stress_test[2])
    file(REMOVE \"${CMAKE_CURRENT_BINARY_DIR}/\${list}_tests.cmake\")
  endforeach()
  file(WRITE \"\${stamp}\" \"\${key}\")
endif()
")
set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${pylon_stress_lists_script})

gtest_discover_tests(pylon_stress_test TEST_FILTER "*/sqlite" DISCOVERY_MODE PRE_TEST
                     NO_PRETTY_VALUES DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)
gtest_discover_tests(pylon_stress_test TEST_FILTER "*/postgres" DISCOVERY_MODE PRE_TEST
                     NO_PRETTY_VALUES DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240 LABELS pg)

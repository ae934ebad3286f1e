# The unknown-token suite of issue 6 ("unknown tokens never write anything"), included from
# tests/CMakeLists.txt. One program, pylon_unknown_token_test: thousands of tokens that name no
# live session, on a store where a live token's validate would write, must leave the SQLite file
# (and its -wal) byte for byte as it was, and every PostgreSQL row with its xmin and ctid.
# Instantiated for "sqlite", and for "postgres" when PYLON_TEST_DATABASE_URL or CI is set (with
# CI and no URL those fail, saying why), as the contract suites are: the list is made when ctest
# runs (PRE_TEST), in ctest's environment.
add_executable(pylon_unknown_token_test ${CMAKE_CURRENT_LIST_DIR}/unknown_token_test.cpp)
target_link_libraries(pylon_unknown_token_test PRIVATE pylon_test_support GTest::gtest_main)
set_target_properties(pylon_unknown_token_test PROPERTIES CXX_EXTENSIONS OFF)
pylon_enable_warnings(pylon_unknown_token_test)
pylon_enable_sanitizers(pylon_unknown_token_test)

# Like forget_stale_pg_test_lists.cmake in tests/CMakeLists.txt, for this program's postgres list
# (the second gtest_discover_tests below, hence [2]), with a stamp of its own: ctest keeps a
# PRE_TEST list until the executable is rebuilt, but whether the postgres tests exist depends on
# the environment ctest runs in. Registered before the lists' own include files, so it runs first.
set(pylon_unknown_token_lists_script
    ${CMAKE_CURRENT_BINARY_DIR}/forget_stale_unknown_token_test_lists.cmake)
file(WRITE ${pylon_unknown_token_lists_script} "\
set(key \"url=0 ci=0\")
if(NOT \"\$ENV{PYLON_TEST_DATABASE_URL}\" STREQUAL \"\")
  string(REPLACE \"url=0\" \"url=1\" key \"\${key}\")
endif()
if(NOT \"\$ENV{CI}\" STREQUAL \"\")
  string(REPLACE \"ci=0\" \"ci=1\" key \"\${key}\")
endif()
set(stamp \"${CMAKE_CURRENT_BINARY_DIR}/unknown_token_test_lists.env\")
set(previous \"\")
if(EXISTS \"\${stamp}\")
  file(READ \"\${stamp}\" previous)
endif()
if(NOT previous STREQUAL key)
  file(REMOVE \"${CMAKE_CURRENT_BINARY_DIR}/pylon_unknown_token_test[2]_tests.cmake\")
  file(WRITE \"\${stamp}\" \"\${key}\")
endif()
")
set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES ${pylon_unknown_token_lists_script})

gtest_discover_tests(pylon_unknown_token_test TEST_FILTER "*/sqlite" DISCOVERY_MODE PRE_TEST
                     NO_PRETTY_VALUES DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
gtest_discover_tests(pylon_unknown_token_test TEST_FILTER "*/postgres" DISCOVERY_MODE PRE_TEST
                     NO_PRETTY_VALUES DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120 LABELS pg)

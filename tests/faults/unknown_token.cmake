# The unknown-token suite ("unknown tokens never write anything"), included from
# tests/CMakeLists.txt. One program, pylon_unknown_token_test: thousands of tokens that name no
# live session, on a store where a live token's validate would write, must leave the SQLite file
# (and its -wal) byte for byte as it was, and every PostgreSQL row with its xmin and ctid.
# Instantiated for "sqlite", and for "postgres" when PYLON_TEST_DATABASE_URL or CI is set (with
# CI and no URL those fail, saying why), as the contract suites are: the list is made when ctest
# runs (PRE_TEST), in ctest's environment.
pylon_add_test_program(pylon_unknown_token_test ${CMAKE_CURRENT_LIST_DIR}/unknown_token_test.cpp)

# Its postgres list (the second gtest_discover_tests below, hence [2]) depends on ctest's
# environment (see tests/CMakeLists.txt).
pylon_forget_stale_lists(pylon_unknown_token_test[2])

gtest_discover_tests(pylon_unknown_token_test TEST_FILTER "*/sqlite" DISCOVERY_MODE PRE_TEST
                     NO_PRETTY_VALUES DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120)
gtest_discover_tests(pylon_unknown_token_test TEST_FILTER "*/postgres" DISCOVERY_MODE PRE_TEST
                     NO_PRETTY_VALUES DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 120 LABELS pg)

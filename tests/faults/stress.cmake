# The race suite ("Sanitizers and races"), included from tests/CMakeLists.txt. One
# program, pylon_stress_test: 8 threads validate, create, revoke and rotate on a store of 10,000
# sessions, then the cache is compared with storage row for row (stress_test.cpp says what each
# thread checks). One TEST_P, instantiated for "sqlite" and, when PYLON_TEST_DATABASE_URL or CI is
# set, for "postgres" (labelled `pg`); each instance works on a fresh SQLite file or a fresh
# PostgreSQL database of its own, so it runs in parallel with every other test. It is meant for
# the asan and tsan presets above all; a sanitized build runs fewer operations per thread. The
# timeout covers a sanitized run on two busy cores (about a minute; a few seconds in dev).
pylon_add_test_program(pylon_stress_test ${CMAKE_CURRENT_LIST_DIR}/stress_test.cpp)

# Whether the postgres instance exists depends on ctest's environment (see tests/CMakeLists.txt).
pylon_forget_stale_lists(pylon_stress_test[1] pylon_stress_test[2])

gtest_discover_tests(pylon_stress_test TEST_FILTER "*/sqlite" DISCOVERY_MODE PRE_TEST
                     NO_PRETTY_VALUES DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240)
gtest_discover_tests(pylon_stress_test TEST_FILTER "*/postgres" DISCOVERY_MODE PRE_TEST
                     NO_PRETTY_VALUES DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240 LABELS pg)

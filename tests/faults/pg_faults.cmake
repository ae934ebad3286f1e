# The PostgreSQL fault suite ("Nothing lost under faults"), included from
# tests/CMakeLists.txt: the server stopped under 8 threads, frozen with SIGSTOP, a backend ended
# by pg_terminate_backend, a write whose reply is lost. It takes the server of PYLON_PG_DIR away,
# so it runs alone (RUN_SERIAL).
pylon_add_test_program(pylon_pg_faults_test ${CMAKE_CURRENT_LIST_DIR}/pg_faults_test.cpp)
pylon_forget_stale_lists(pylon_pg_faults_test[1])
gtest_discover_tests(pylon_pg_faults_test DISCOVERY_MODE PRE_TEST NO_PRETTY_VALUES
                     DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240 LABELS pg RUN_SERIAL TRUE)

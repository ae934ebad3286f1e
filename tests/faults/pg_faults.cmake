# The PostgreSQL fault suite of issue 6 ("Nothing lost under faults"), included from
# tests/CMakeLists.txt: the server stopped under 8 threads, frozen with SIGSTOP, a backend ended
# by pg_terminate_backend, a write whose reply is lost. It takes the server of PYLON_PG_DIR away,
# so it runs alone (RUN_SERIAL).
add_executable(pylon_pg_faults_test ${CMAKE_CURRENT_LIST_DIR}/pg_faults_test.cpp)
target_link_libraries(pylon_pg_faults_test PRIVATE pylon_test_support GTest::gtest_main)
set_target_properties(pylon_pg_faults_test PROPERTIES CXX_EXTENSIONS OFF)
pylon_enable_warnings(pylon_pg_faults_test)
pylon_enable_sanitizers(pylon_pg_faults_test)
gtest_discover_tests(pylon_pg_faults_test DISCOVERY_MODE PRE_TEST NO_PRETTY_VALUES
                     DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 240 LABELS pg RUN_SERIAL TRUE)

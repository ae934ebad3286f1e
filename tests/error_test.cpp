// pylon::Error and ErrorCode: every code has a distinct, stable lowercase name, and what() reads
// "[pylon.<code>] <message>" with the backend's own words kept apart in backend_detail().
#include <gtest/gtest.h>

#include <array>
#include <set>
#include <string>

#include "session_backend.hpp"
#include "support/test_support.hpp"

namespace {

using pylon::ErrorCode;

constexpr std::array<ErrorCode, 11> kAllCodes = {
    ErrorCode::kInvalidArgument,
    ErrorCode::kUnsupportedScheme,
    ErrorCode::kCorruptDatabase,
    ErrorCode::kSchemaTooNew,
    ErrorCode::kBusy,
    ErrorCode::kConnectionLost,
    ErrorCode::kStorageFull,
    ErrorCode::kReadOnly,
    ErrorCode::kIo,
    ErrorCode::kInternal,
    ErrorCode::kConfiguration,
};

TEST(ErrorCode, EveryCodeHasADistinctLowercaseName) {
  std::set<std::string> names;
  for (const ErrorCode code : kAllCodes) {
    const std::string name = pylon::to_string(code);
    EXPECT_FALSE(name.empty());
    for (const char c : name) {
      EXPECT_TRUE((c >= 'a' && c <= 'z') || c == '_') << "name \"" << name << "\"";
    }
    names.insert(name);
  }
  EXPECT_EQ(names.size(), kAllCodes.size());
}

TEST(ErrorCode, StorageFullIsNamedStorageFull) {
  EXPECT_STREQ(pylon::to_string(ErrorCode::kStorageFull), "storage_full");
}

TEST(Error, WhatCarriesTheCodeNameThenTheMessage) {
  const pylon::Error error(ErrorCode::kSchemaTooNew, "/var/lib/app.db: schema version 7 is newer");
  EXPECT_EQ(error.code(), ErrorCode::kSchemaTooNew);
  EXPECT_EQ(std::string(error.what()), std::string("[pylon.") +
                                           pylon::to_string(ErrorCode::kSchemaTooNew) +
                                           "] /var/lib/app.db: schema version 7 is newer");
  EXPECT_EQ(error.backend_detail(), "");
}

TEST(Error, KeepsTheBackendDetailApart) {
  const pylon::Error error(ErrorCode::kStorageFull, "disk full writing x.db", "SQLITE_FULL (13)");
  EXPECT_EQ(error.backend_detail(), "SQLITE_FULL (13)");
  EXPECT_EQ(error.code(), ErrorCode::kStorageFull);
}

TEST(Error, IsARuntimeErrorThatTheAssertionMacroRecognises) {
  EXPECT_PYLON_ERROR(throw pylon::Error(ErrorCode::kBusy, "locked"), ErrorCode::kBusy);
  EXPECT_PYLON_ERROR_WITH(throw pylon::Error(ErrorCode::kIo, "cannot open /x"), ErrorCode::kIo,
                          "/x");
  // The helper itself must be able to fail: wrong code, missing substring, no throw.
  EXPECT_FALSE(pylon::test::throws_pylon_error(
      [] { throw pylon::Error(ErrorCode::kBusy, "locked"); }, "busy", ErrorCode::kIo));
  EXPECT_FALSE(pylon::test::throws_pylon_error(
      [] { throw pylon::Error(ErrorCode::kBusy, "locked"); }, "busy", ErrorCode::kBusy, "nope"));
  EXPECT_FALSE(pylon::test::throws_pylon_error([] {}, "nothing", ErrorCode::kBusy));
  EXPECT_FALSE(pylon::test::throws_pylon_error([] { throw std::runtime_error("x"); }, "other",
                                               ErrorCode::kBusy));
}

}  // namespace

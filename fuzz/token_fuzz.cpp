// token_fuzz: libFuzzer target for the token functions of session_backend.hpp
// (is_well_formed_token, session_id_for_token, is_well_formed_session_id) on arbitrary bytes.
//
// It promises nothing to callers; it checks that the library keeps these promises for every input:
//   - is_well_formed_token(x) holds exactly when x is "pylon_" + 64 lowercase hex characters
//     (the form generate_token() makes), judged by an independent oracle written here;
//   - is_well_formed_session_id(x) holds exactly when x is 64 lowercase hex characters;
//   - session_id_for_token(x) accepts any bytes, returns a well-formed id, the same id every
//     time, never the input itself, and never a well-formed token (so an id shown on a "your
//     devices" page can never be replayed as a cookie).
// A broken promise ends the run through __builtin_trap(), which libFuzzer reports as a crash and
// saves the input; ASan and UBSan report memory errors and undefined behaviour the same way.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iostream>
#include <string>
#include <string_view>

#include "session_backend.hpp"

namespace {

constexpr std::string_view kTokenPrefix = "pylon_";
constexpr std::size_t kIdLength = 64;

// Prints which promise broke (the input itself is saved by libFuzzer), then traps.
[[noreturn]] void fail(const char* what) {
  std::cerr << "token_fuzz: broken promise: " << what << std::endl;
  __builtin_trap();
}

void require(bool condition, const char* what) {
  if (!condition) fail(what);
}

// The oracle: written from the format's definition, not from the library's code.
bool is_lower_hex(std::string_view text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool oracle_is_id(std::string_view text) { return text.size() == kIdLength && is_lower_hex(text); }

bool oracle_is_token(std::string_view text) {
  return text.size() == kTokenPrefix.size() + kIdLength &&
         text.substr(0, kTokenPrefix.size()) == kTokenPrefix &&
         is_lower_hex(text.substr(kTokenPrefix.size()));
}

void check(std::string_view input) {
  const bool token = pylon::is_well_formed_token(input);
  require(token == oracle_is_token(input), "is_well_formed_token disagrees with the format");
  if (token) require(input.size() == pylon::kTokenLength, "accepted token of the wrong length");
  require(pylon::is_well_formed_session_id(input) == oracle_is_id(input),
          "is_well_formed_session_id disagrees with the format");

  // Any bytes hash, malformed tokens included: the store rejects those before it hashes, but
  // the function itself must not care (the SQLite adoption of pylon's rows hashes whatever the
  // old table holds).
  const std::string id = pylon::session_id_for_token(input);
  require(oracle_is_id(id), "session_id_for_token returned a malformed id");
  require(pylon::is_well_formed_session_id(id), "the library refuses its own id");
  require(id != input, "an id equals its token");
  require(!pylon::is_well_formed_token(id), "an id is a well-formed token");
  require(pylon::session_id_for_token(input) == id, "session_id_for_token is not deterministic");
}

}  // namespace

// SHA-256 of the empty string (FIPS 180-4 test vector): the id really is SHA-256, lowercase hex.
// NOLINTNEXTLINE(readability-identifier-naming): libFuzzer's name
extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  require(pylon::session_id_for_token("") ==
              "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
          "session_id_for_token(\"\") is not SHA-256");
  return 0;
}

// NOLINTNEXTLINE(readability-identifier-naming): libFuzzer's name
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): libFuzzer hands us raw bytes
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  check(input);
  // The same input turned into a token candidate: with the prefix (when it is missing) the
  // fuzzer reaches the accepting branch without first having to guess "pylon_".
  if (input.substr(0, kTokenPrefix.size()) != kTokenPrefix) {
    check(std::string(kTokenPrefix) + std::string(input));
  }
  return 0;
}

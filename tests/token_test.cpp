// Tokens and session ids: the pylon_ + 64 lowercase hex format, uniqueness of generated tokens,
// the well-formedness checks that keep garbage away from storage, and session ids as the
// SHA-256 of the token (checked against published test vectors).
#include <gtest/gtest.h>

#include <string>
#include <unordered_set>

#include "session_backend.hpp"

namespace {

bool is_lower_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

// A well-formed token (a function rather than a global std::string, whose construction could
// throw before main).
std::string valid_token() {
  return "pylon_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
}

TEST(Token, GeneratedTokenIsPylonPrefixAnd64LowercaseHex) {
  for (int i = 0; i < 100; ++i) {
    const std::string token = pylon::generate_token();
    ASSERT_EQ(token.size(), pylon::kTokenLength);
    ASSERT_EQ(token.size(), 70U);
    EXPECT_EQ(token.substr(0, 6), "pylon_");
    for (std::size_t j = 6; j < token.size(); ++j) {
      ASSERT_TRUE(is_lower_hex(token[j])) << "character " << j << " of " << token;
    }
    EXPECT_TRUE(pylon::is_well_formed_token(token)) << token;
  }
}

TEST(Token, GeneratedTokensAreUnique) {
  std::unordered_set<std::string> seen;
  constexpr int kDraws = 20000;
  for (int i = 0; i < kDraws; ++i) seen.insert(pylon::generate_token());
  EXPECT_EQ(seen.size(), static_cast<std::size_t>(kDraws));
}

TEST(Token, GeneratedTokensUseEveryHexDigit) {
  // 32 random bytes per token: over 50 tokens every hex digit shows up (a constant or
  // low-entropy generator would not).
  std::unordered_set<char> digits;
  for (int i = 0; i < 50; ++i) {
    const std::string token = pylon::generate_token();
    digits.insert(token.begin() + 6, token.end());
  }
  EXPECT_EQ(digits.size(), 16U);
}

TEST(Token, WellFormedAcceptsTheExactFormat) {
  EXPECT_TRUE(pylon::is_well_formed_token(valid_token()));
}

TEST(Token, WellFormedRejectsWrongLength) {
  EXPECT_FALSE(pylon::is_well_formed_token(""));
  EXPECT_FALSE(pylon::is_well_formed_token("pylon_"));
  EXPECT_FALSE(pylon::is_well_formed_token(valid_token().substr(0, 69)));
  EXPECT_FALSE(pylon::is_well_formed_token(valid_token() + "0"));
  EXPECT_FALSE(pylon::is_well_formed_token(valid_token() + "\n"));
  EXPECT_FALSE(pylon::is_well_formed_token(valid_token() + valid_token()));
}

TEST(Token, WellFormedRejectsWrongPrefix) {
  EXPECT_FALSE(pylon::is_well_formed_token("Pylon_" + valid_token().substr(6)));
  EXPECT_FALSE(pylon::is_well_formed_token("PYLON_" + valid_token().substr(6)));
  EXPECT_FALSE(pylon::is_well_formed_token("pylon-" + valid_token().substr(6)));
  EXPECT_FALSE(pylon::is_well_formed_token("xylon_" + valid_token().substr(6)));
  EXPECT_FALSE(pylon::is_well_formed_token("0123456789" + valid_token().substr(10)));
}

TEST(Token, WellFormedRejectsUppercaseHex) {
  std::string token = valid_token();
  token[20] = 'A';
  EXPECT_FALSE(pylon::is_well_formed_token(token));
  std::string upper = pylon::generate_token();
  for (std::size_t i = 6; i < upper.size(); ++i) {
    if (upper[i] >= 'a' && upper[i] <= 'f') upper[i] = static_cast<char>(upper[i] - 'a' + 'A');
  }
  EXPECT_FALSE(pylon::is_well_formed_token(upper));
}

TEST(Token, WellFormedRejectsNonHexCharacters) {
  for (const char bad : {'g', 'z', ' ', '-', '_', '.', '\xff', '\x80'}) {
    std::string token = valid_token();
    token[40] = bad;
    EXPECT_FALSE(pylon::is_well_formed_token(token))
        << "with character code " << static_cast<int>(bad);
  }
}

TEST(Token, WellFormedRejectsAnEmbeddedNul) {
  std::string token = valid_token();
  token[30] = '\0';
  ASSERT_EQ(token.size(), 70U);
  EXPECT_FALSE(pylon::is_well_formed_token(token));
  std::string last = valid_token();
  last.back() = '\0';
  EXPECT_FALSE(pylon::is_well_formed_token(last));
}

TEST(SessionId, IsSha256HexOfTheTokenBytes) {
  // FIPS 180-2 test vectors.
  EXPECT_EQ(pylon::session_id_for_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(pylon::session_id_for_token(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(pylon::session_id_for_token("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // sha256(b"pylon_" + b"0" * 64), computed with Python's hashlib.
  EXPECT_EQ(pylon::session_id_for_token("pylon_" + std::string(64, '0')),
            "20f141983e8f869934f5736a9078376eb0c33853967a63cba8c5e18c68a2c8e5");
}

TEST(SessionId, HashesEveryByteIncludingNul) {
  // sha256(b"a\x00b"): the NUL is hashed, not a string terminator.
  EXPECT_EQ(pylon::session_id_for_token(std::string("a\0b", 3)),
            "59b271ae1bbcb1d31d41929817f4b16fb439eb4f31520b5ad1d5ce98920a7138");
}

TEST(SessionId, IsDeterministicAndDistinctPerToken) {
  const std::string a = pylon::generate_token();
  const std::string b = pylon::generate_token();
  EXPECT_EQ(pylon::session_id_for_token(a), pylon::session_id_for_token(a));
  EXPECT_NE(pylon::session_id_for_token(a), pylon::session_id_for_token(b));
  EXPECT_NE(pylon::session_id_for_token(a), a.substr(6));
}

TEST(SessionId, WellFormedAcceptsIdsOfTokens) {
  for (int i = 0; i < 20; ++i) {
    const std::string id = pylon::session_id_for_token(pylon::generate_token());
    EXPECT_EQ(id.size(), 64U);
    EXPECT_TRUE(pylon::is_well_formed_session_id(id)) << id;
  }
}

TEST(SessionId, WellFormedRejectsAnythingElse) {
  const std::string id = pylon::session_id_for_token("abc");
  EXPECT_FALSE(pylon::is_well_formed_session_id(""));
  EXPECT_FALSE(pylon::is_well_formed_session_id(id.substr(0, 63)));
  EXPECT_FALSE(pylon::is_well_formed_session_id(id + "0"));
  std::string upper = id;
  upper[0] = 'B';
  EXPECT_FALSE(pylon::is_well_formed_session_id(upper));
  std::string non_hex = id;
  non_hex[10] = 'g';
  EXPECT_FALSE(pylon::is_well_formed_session_id(non_hex));
  std::string with_nul = id;
  with_nul[63] = '\0';
  EXPECT_FALSE(pylon::is_well_formed_session_id(with_nul));
  // A token is not a session id.
  EXPECT_FALSE(pylon::is_well_formed_session_id(valid_token()));
  EXPECT_FALSE(pylon::is_well_formed_session_id(valid_token().substr(6, 64) + "\n"));
}

}  // namespace

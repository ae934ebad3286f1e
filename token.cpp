// pylon-sessions: tokens and session ids.
//
// What it promises: a token is "pylon_" + the lowercase hex of 32 bytes from OpenSSL's CSPRNG;
// only its SHA-256, in lowercase hex (the session id), is ever kept; the well-formedness checks
// run first everywhere, so input that cannot be a token costs a length comparison and never
// reaches a hash or a lock.
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <array>
#include <cstddef>
#include <string>
#include <string_view>

#include "internal/backend_shared.hpp"
#include "session_backend.hpp"

namespace pylon {

namespace {

constexpr std::string_view kTokenPrefix = "pylon_";
constexpr std::size_t kTokenRandomBytes = 32;
constexpr std::size_t kSessionIdLength = std::size_t{2} * SHA256_DIGEST_LENGTH;
constexpr std::array<char, 16> kHexDigits = {'0', '1', '2', '3', '4', '5', '6', '7',
                                             '8', '9', 'a', 'b', 'c', 'd', 'e', 'f'};

template <std::size_t kSize>
std::string to_lower_hex(const std::array<unsigned char, kSize>& bytes) {
  std::string hex(2 * kSize, '\0');
  for (std::size_t i = 0; i < kSize; ++i) {
    hex[2 * i] = kHexDigits[bytes[i] >> 4U];
    hex[2 * i + 1] = kHexDigits[bytes[i] & 0x0FU];
  }
  return hex;
}

// Branch-free over the whole text (the compiler vectorises it): every validate() checks 64
// characters, and a per-character early exit costs more than it saves on well-formed input.
bool is_lower_hex(std::string_view text) noexcept {
  unsigned all_hex = 1;
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    all_hex &= static_cast<unsigned>(static_cast<unsigned char>(byte - '0') < 10U) |
               static_cast<unsigned>(static_cast<unsigned char>(byte - 'a') < 6U);
  }
  return all_hex == 1;
}

}  // namespace

std::string generate_token() {
  std::array<unsigned char, kTokenRandomBytes> random{};
  if (RAND_bytes(random.data(), static_cast<int>(random.size())) != 1) {
    throw Error(ErrorCode::kInternal, "the OpenSSL CSPRNG (RAND_bytes) failed to produce a token");
  }
  std::string token(kTokenPrefix);
  token += to_lower_hex(random);
  return token;
}

bool is_well_formed_token(std::string_view token) noexcept {
  return token.size() == kTokenLength && token.substr(0, kTokenPrefix.size()) == kTokenPrefix &&
         is_lower_hex(token.substr(kTokenPrefix.size()));
}

namespace {

// SHA-256 through EVP with the algorithm fetched once and a context per thread. OpenSSL 3's
// one-shot SHA256() fetches the algorithm and allocates a context on every call, which costs
// several times the hash of a token itself, and validate() hashes on every request
// (bench/pylon_bench's validate section measures validate() against a raw EVP hash and lookup).
class Sha256 {
 public:
  Sha256() : context_(EVP_MD_CTX_new()) {
    if (context_ == nullptr) fail();
  }
  ~Sha256() { EVP_MD_CTX_free(context_); }
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  Sha256(Sha256&&) = delete;
  Sha256& operator=(Sha256&&) = delete;

  detail::SessionDigest digest(std::string_view bytes) {
    detail::SessionDigest digest{};
    unsigned int size = 0;
    if (EVP_DigestInit_ex2(context_, algorithm(), nullptr) != 1 ||
        EVP_DigestUpdate(context_, bytes.data(), bytes.size()) != 1 ||
        EVP_DigestFinal_ex(context_, digest.data(), &size) != 1 || size != digest.size()) {
      fail();
    }
    return digest;
  }

 private:
  [[noreturn]] static void fail() {
    throw Error(ErrorCode::kInternal, "OpenSSL could not compute a SHA-256 digest");
  }
  // Fetched once and never freed: it must outlive every thread's context, and OpenSSL frees its
  // providers at exit on its own.
  static const EVP_MD* algorithm() {
    static const EVP_MD* const kSha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    if (kSha256 == nullptr) fail();
    return kSha256;
  }

  EVP_MD_CTX* context_;
};

}  // namespace

detail::SessionDigest detail::digest_of_token(std::string_view token) {
  thread_local Sha256 sha256;
  return sha256.digest(token);
}

std::string detail::session_id_of(const SessionDigest& digest) { return to_lower_hex(digest); }

bool detail::parse_session_id(std::string_view id, SessionDigest* digest) noexcept {
  if (!is_well_formed_session_id(id)) return false;
  const auto nibble = [](char c) {
    return static_cast<unsigned char>(c <= '9' ? c - '0' : c - 'a' + 10);
  };
  for (std::size_t i = 0; i < digest->size(); ++i) {
    (*digest)[i] = static_cast<unsigned char>((nibble(id[2 * i]) << 4U) | nibble(id[2 * i + 1]));
  }
  return true;
}

std::string session_id_for_token(std::string_view token) {
  return detail::session_id_of(detail::digest_of_token(token));
}

bool is_well_formed_session_id(std::string_view id) noexcept {
  return id.size() == kSessionIdLength && is_lower_hex(id);
}

}  // namespace pylon

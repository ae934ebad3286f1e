// pylon-sessions: what session_backend.cpp shares with pg_backend.cpp. Private: not installed,
// not part of the API. Both backends must refuse the same values with the same messages, so the
// checks live here once.
#ifndef PYLON_SESSION_BACKEND_INTERNAL_HPP_
#define PYLON_SESSION_BACKEND_INTERNAL_HPP_

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "session_backend.hpp"

namespace pylon::detail {

// A unique_ptr deleter that hands the pointer to the C library's release function, so every C
// handle is owned from the moment it exists: unique_ptr<sqlite3_stmt, FreeWith<sqlite3_finalize>>.
// The release function's result is ignored: a deleter runs in destructors and must not throw.
template <auto kRelease>
struct FreeWith {
  template <typename Handle>
  void operator()(Handle* handle) const noexcept {
    kRelease(handle);
  }
};

// Strict UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF) and no NUL: what a
// PostgreSQL TEXT column can hold, and so what every backend accepts in a text field.
bool is_storable_text(std::string_view text) noexcept;

// Throws Error(kInvalidArgument) naming `field` unless is_storable_text(value).
void check_text_field(const char* field, std::string_view value);
void check_optional_text_field(const char* field, const std::optional<std::string>& value);

// What every backend checks before it writes a row: a well-formed id, a non-empty user, and
// storable text fields. Throws Error(kInvalidArgument).
void check_session_for_storage(const Session& session);

// Defined in pg_backend.cpp, built when PYLON_WITH_POSTGRES is set; open_backend() calls it for
// postgres:// and postgresql:// URLs.
std::unique_ptr<SessionBackend> open_postgres_backend(const std::string& url);

}  // namespace pylon::detail

#endif  // PYLON_SESSION_BACKEND_INTERNAL_HPP_

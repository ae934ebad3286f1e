// sessionctl: exit statuses, errors and everything it prints (text, tables, JSON).
//
// Every message and every human-readable line goes through redact_tokens(): the only raw token
// sessionctl ever prints is the one `create` has just made.
#ifndef PYLON_TOOLS_CTL_OUTPUT_HPP_
#define PYLON_TOOLS_CTL_OUTPUT_HPP_

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "session_backend.hpp"

namespace sessionctl {

// The exit statuses, as `sessionctl --help` documents them.
inline constexpr int kExitOk = 0;
inline constexpr int kExitNotFound = 1;  // not found, invalid token, `check` found a problem
inline constexpr int kExitUsage = 2;     // the command line is wrong
inline constexpr int kExitStorage = 3;   // the database cannot be opened, read or written
inline constexpr int kExitPartial = 4;   // copy/import/export done, but rows were skipped

// A failure that ends the command with `status` and prints `what()` on stderr.
class Failure : public std::runtime_error {
 public:
  Failure(int status, const std::string& message) : std::runtime_error(message), status_(status) {}
  [[nodiscard]] int status() const noexcept { return status_; }

 private:
  int status_;
};

// `text` with every run that looks like a token ("pylon_" and at least 8 letters or digits)
// shortened to "pylon_" + its first 4 characters + "…".
std::string redact_tokens(std::string_view text);

// `text` with control bytes and backslashes escaped (\t, \n, \\, \xNN), so that text from the
// database cannot rewrite a terminal or forge lines. Bytes >= 0x80 pass through.
std::string escape(std::string_view text);

// Unix seconds as "2024-05-01T12:00:00Z"; "out-of-range" outside years 0..9999.
std::string iso8601(std::int64_t unix_seconds);
// "2024-05-01 12:00" (UTC, minutes): the short form of tables.
std::string short_time(std::int64_t unix_seconds);
// "in 59m 58s" / "2h 3m ago".
std::string relative(std::int64_t when, std::int64_t now);
// A time an operator typed: Unix seconds ("1764666840"), or UTC as "2026-12-02",
// "2026-12-02T09:14", "2026-12-02 09:14" (as tables show it) or "2026-12-02T09:14:00Z" (as `show`
// does); within 1970..9999. nullopt for anything else.
std::optional<std::int64_t> parse_time(std::string_view text);
// The USER cell of a table: the user, or "(anonymous)" for a session without one.
std::string user_label(const pylon::Session& session);

std::string base64_encode(std::string_view bytes);
// nullopt when `text` is not base64.
std::optional<std::string> base64_decode(std::string_view text);

// The JSON of a session: every column, times as Unix seconds, text fields as strings or null,
// `idle_timeout_seconds` a number or null (the store's), `anonymous` (no user), `data_bytes`,
// and `data_base64` when `with_data`. Never a token.
nlohmann::json session_json(const pylon::Session& session, std::int64_t now, bool with_data);
// The session of session_json(…, true); throws Failure(kExitNotFound) naming what is wrong. A
// line without `authenticated_at` (written before migration 0005) takes what that migration
// gives: created_at for a user's session, 0 for an anonymous one.
pylon::Session session_from_json(const nlohmann::json& object);

// One JSON document on one line; invalid UTF-8 in strings replaced (U+FFFD), never thrown.
std::string dump(const nlohmann::json& value);

// The "key: value" block of `show`, `validate` and `create`.
void print_session(std::ostream& out, const pylon::Session& session, std::int64_t now);
// "key: value" with the key padded.
void print_field(std::ostream& out, std::string_view key, std::string_view value);

// A table printed row by row, with fixed column widths: rows are streamed, never held.
class Table {
 public:
  struct Column {
    std::string title;
    std::size_t width;  // display characters; longer cells are cut and end with "…"
  };
  explicit Table(std::vector<Column> columns) : columns_(std::move(columns)) {}
  void header(std::ostream& out) const;
  void row(std::ostream& out, const std::vector<std::string>& cells) const;

 private:
  std::vector<Column> columns_;
};

}  // namespace sessionctl

#endif  // PYLON_TOOLS_CTL_OUTPUT_HPP_

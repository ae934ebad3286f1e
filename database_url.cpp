// pylon-sessions: DATABASE_URL, read and shown.
//
// What it promises: open_backend() picks the backend by the URL's scheme and refuses any other
// with the list of supported forms; parse_database_url() opens nothing (the fuzz target feeds it
// arbitrary bytes); every message that shows a URL shows it through redact_url(), so a password
// never reaches an exception, a log or a terminal.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "session_backend.hpp"
#include "session_backend_internal.hpp"

namespace pylon {

namespace {

constexpr const char* kSupportedSchemes =
    "sqlite://<path>, sqlite::memory:, a bare file path, postgres://, postgresql://";

std::string ascii_lower(std::string_view text) {
  std::string lower(text);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](char c) {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  });
  return lower;
}

// The scheme of "scheme://...", or "" when `url` does not start with one (a bare path).
std::string url_scheme(std::string_view url) {
  const std::size_t separator = url.find("://");
  if (separator == std::string_view::npos || separator == 0) return {};
  const std::string_view scheme = url.substr(0, separator);
  const bool valid =
      std::isalpha(static_cast<unsigned char>(scheme[0])) != 0 &&
      std::all_of(scheme.begin(), scheme.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '+' || c == '-' || c == '.';
      });
  return valid ? ascii_lower(scheme) : std::string();
}

std::int64_t parse_non_negative(std::string_view text, const std::string& what) {
  std::int64_t value = 0;
  if (text.empty() || text.size() > 12) {
    throw Error(ErrorCode::kInvalidArgument, what + " must be a non-negative integer");
  }
  for (const char c : text) {
    if (c < '0' || c > '9') {
      throw Error(ErrorCode::kInvalidArgument, what + " must be a non-negative integer");
    }
    value = value * 10 + (c - '0');
  }
  return value;
}

// One "key=value" of an SQLite URL's query string, applied to *options; Error(kInvalidArgument)
// naming the URL (as shown, without its password) for an unknown key or a bad value.
void apply_sqlite_parameter(std::string_view pair, const std::string& shown_url,
                            SqliteOptions* options) {
  const std::size_t equals = pair.find('=');
  const std::string key = ascii_lower(pair.substr(0, equals));
  const std::string value =
      equals == std::string_view::npos ? std::string() : ascii_lower(pair.substr(equals + 1));
  if (key == "synchronous") {
    if (value == "full") {
      options->synchronous = SqliteSync::kFull;
    } else if (value == "normal") {
      options->synchronous = SqliteSync::kNormal;
    } else {
      throw Error(ErrorCode::kInvalidArgument,
                  "synchronous must be 'full' or 'normal' in " + shown_url);
    }
    return;
  }
  if (key == "busy_timeout") {
    options->busy_timeout = std::chrono::milliseconds(
        parse_non_negative(value, "busy_timeout (milliseconds) in " + shown_url));
    return;
  }
  // The name is shown only where the redacted URL shows it: text that some reading takes for a
  // password may look like a parameter name to this one.
  const std::string_view raw_key = pair.substr(0, equals);
  std::string message = shown_url.find(raw_key) != std::string::npos
                            ? "unknown SQLite URL parameter '" + key + "' in "
                            : std::string(
                                  "unknown SQLite URL parameter (its name overlaps what may be a "
                                  "password, so it is not shown) in ");
  message.append(shown_url).append(
      "; known parameters: synchronous=full|normal, busy_timeout=<ms>");
  throw Error(ErrorCode::kInvalidArgument, message);
}

// "path?synchronous=normal&busy_timeout=100" -> path and options.
std::pair<std::string, SqliteOptions> parse_sqlite_location(std::string_view location,
                                                            const std::string& shown_url) {
  SqliteOptions options;
  const std::size_t question = location.find('?');
  std::string path(location.substr(0, question));
  if (question != std::string_view::npos) {
    std::string_view query = location.substr(question + 1);
    while (!query.empty()) {
      const std::size_t amp = query.find('&');
      const std::string_view pair = query.substr(0, amp);
      query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
      if (!pair.empty()) apply_sqlite_parameter(pair, shown_url, &options);
    }
  }
  if (path.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "SQLite URL has no file path: " + shown_url);
  }
  return {path, options};
}

}  // namespace

namespace {

// A password in the text, [begin, end), to be shown as "***".
struct PasswordSpan {
  std::size_t begin;
  std::size_t end;
};

// The user info ends at an '@' before the first '/': libpq takes the first such '@' (so a
// password may hold '?' or '#'), RFC 3986 the last before '/', '?' or '#'. Hiding from the first
// ':' to the last '@' before the first '/' covers both readings.
void add_userinfo_password(std::string_view text, std::size_t authority,
                           std::vector<PasswordSpan>& spans) {
  const std::size_t path_start = text.find('/', authority);
  const std::size_t at = text.rfind('@', path_start);
  if (at == std::string_view::npos || at < authority) return;
  const std::size_t colon = text.find(':', authority);
  if (colon != std::string_view::npos && colon < at) spans.push_back({colon + 1, at});
}

// Where the value of a "password=" that starts at `value_start` ends: at '&' for a query
// parameter, one that follows '?' or '&' (libpq knows no fragment there; and whether or not the
// text has a "://", a later '&' may start another password). Else it is a libpq keyword/value
// pair (which may follow whitespace even inside something that looks like a URI), and ends at
// whitespace, or, for a quoted value, at the later of whitespace and the closing quote: libpq
// reads the quotes, a reader that splits at whitespace does not, and either may be the one that
// meets the text. npos: at the end.
std::size_t password_value_end(std::string_view text, std::size_t value_start,
                               bool is_query_parameter) {
  if (is_query_parameter) return text.find('&', value_start);
  std::size_t whitespace = std::string_view::npos;
  for (std::size_t i = value_start; i < text.size(); ++i) {
    if (std::isspace(static_cast<unsigned char>(text[i])) != 0) {
      whitespace = i;
      break;
    }
  }
  if (value_start >= text.size() || text[value_start] != '\'') return whitespace;
  for (std::size_t i = value_start + 1; i < text.size(); ++i) {
    if (text[i] == '\\') {
      ++i;  // an escaped character, the quote included
    } else if (text[i] == '\'') {
      return std::max(i + 1, whitespace);
    }
  }
  return std::string_view::npos;  // no closing quote: libpq takes the rest
}

}  // namespace

// Conservative on purpose: where RFC 3986 and libpq read a URL differently, whatever either of
// them would take for a password is hidden. Every reading's passwords are found in the text as
// given, then the union of them is hidden, so one reading's value that starts inside or runs past
// another's is never half shown.
std::string redact_url(std::string_view url) {
  std::vector<PasswordSpan> spans;
  const std::size_t separator = url.find("://");
  if (separator != std::string_view::npos) add_userinfo_password(url, separator + 3, spans);
  // "password=..." as a URI query parameter or a libpq keyword/value pair.
  constexpr std::string_view kKey = "password=";
  const std::string lower = ascii_lower(url);
  for (std::size_t pos = lower.find(kKey); pos != std::string::npos;
       pos = lower.find(kKey, pos + 1)) {
    const bool after_separator = pos > 0 && (lower[pos - 1] == '?' || lower[pos - 1] == '&');
    const bool at_word_start = pos == 0 || after_separator ||
                               std::isspace(static_cast<unsigned char>(lower[pos - 1])) != 0;
    if (!at_word_start) continue;
    const std::size_t value_start = pos + kKey.size();
    spans.push_back(
        {value_start, std::min(password_value_end(url, value_start, after_separator), url.size())});
  }
  std::sort(spans.begin(), spans.end(), [](const PasswordSpan& left, const PasswordSpan& right) {
    return left.begin < right.begin;
  });
  std::string shown;
  std::size_t copied = 0;  // url[0, copied) is in `shown` already, or hidden
  for (std::size_t i = 0; i < spans.size(); ++i) {
    const PasswordSpan& span = spans[i];
    if (i == 0 || span.begin > copied) {  // else it overlaps the block hidden last: merge
      shown.append(url.substr(copied, span.begin - copied));
      shown += "***";
    }
    copied = std::max(copied, span.end);
  }
  shown.append(url.substr(copied));
  return shown;
}

std::string database_url_from_env() {
  const char* value = std::getenv("DATABASE_URL");  // NOLINT(concurrency-mt-unsafe): read-only
  return value == nullptr ? std::string() : std::string(value);
}

namespace detail {

DatabaseLocation parse_database_url(const std::string& database_url) {
  DatabaseLocation location;
  if (database_url.empty()) {
    location.sqlite_path = "sessions.db";
    return location;
  }
  if (database_url == "sqlite::memory:") {
    location.sqlite_path = ":memory:";
    return location;
  }
  const std::string shown = redact_url(database_url);
  const std::string scheme = url_scheme(database_url);
  if (scheme == "sqlite") {
    std::tie(location.sqlite_path, location.sqlite_options) = parse_sqlite_location(
        std::string_view(database_url).substr(std::strlen("sqlite://")), shown);
    return location;
  }
  if (scheme == "postgres" || scheme == "postgresql") {
#ifdef PYLON_WITH_POSTGRES
    location.is_postgres = true;
    return location;
#else
    throw Error(ErrorCode::kUnsupportedScheme,
                "this build of pylon-sessions has no PostgreSQL support (configure it with "
                "libpq); cannot open " +
                    shown);
#endif
  }
  if (!scheme.empty()) {
    throw Error(ErrorCode::kUnsupportedScheme, "unknown DATABASE_URL scheme '" + scheme + "' in " +
                                                   shown + "; supported: " + kSupportedSchemes);
  }
  if (database_url.rfind("sqlite:", 0) == 0) {  // "sqlite:path", as sqlx and others accept
    std::tie(location.sqlite_path, location.sqlite_options) =
        parse_sqlite_location(std::string_view(database_url).substr(std::strlen("sqlite:")), shown);
    return location;
  }
  location.sqlite_path = database_url;  // a bare path: taken literally, no parameters
  return location;
}

}  // namespace detail

std::unique_ptr<SessionBackend> open_backend(const std::string& database_url) {
  const detail::DatabaseLocation location = detail::parse_database_url(database_url);
  if (location.is_postgres) return open_postgres_backend(database_url);
  return open_sqlite_backend(location.sqlite_path, location.sqlite_options);
}

#ifndef PYLON_WITH_POSTGRES
// pg_backend.cpp defines it in builds with libpq.
std::unique_ptr<SessionBackend> open_postgres_backend(const std::string& url,
                                                      const PostgresOptions& /*options*/) {
  throw Error(ErrorCode::kUnsupportedScheme,
              "this build of pylon-sessions has no PostgreSQL support (configure it with libpq); "
              "cannot open " +
                  redact_url(url));
}
#endif

}  // namespace pylon

// pylon-sessions: DATABASE_URL, read and shown.
//
// What it promises: open_backend() accepts only the forms the README's DATABASE_URL table lists
// and refuses anything else, with the list of forms, before any file is created;
// parse_database_url() opens nothing (the fuzz target feeds it arbitrary bytes); every message
// that shows a URL shows it through redact_url(), and no message ever shows four bytes in a row
// of anything that some reading of the string could take for a password.
//
// How a string is read:
//   - ""                                    sessions.db in the working directory;
//   - "sqlite::memory:"                     a private in-memory database;
//   - a string that starts like a URL scheme, ^[A-Za-z][A-Za-z0-9+.-]*:, is a URL: sqlite://
//     (then a relative or absolute path), postgres:// or postgresql://, and nothing else. So
//     "file:data.db", "sqlite:/x.db", "sqlite:x.db" and "c:x" are refused; a file whose path
//     starts that way is written "./file:data.db" or "sqlite://./file:data.db".
//   - anything else is a bare file path, taken literally (no parameters, no decoding).
//
// PostgreSQL URLs are read by several programs that disagree on malformed ones: RFC 3986 ends
// the user info at the last '@' before the first '/', '?' or '#'; libpq at the first '@' before
// the first '/', and knows no fragment; hand-written parsers at the last '@' of all. Where they
// could disagree about which text is the password, the URL is refused before libpq sees it,
// with a message that says what to percent-encode and quotes nothing of the URL: more than one
// '@', an '@' after a '/' or '?', a '#', a bad %-escape, a space or control byte, a query
// parameter without exactly one '='. What is left reads the same in every one of them.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "internal/backend_shared.hpp"
#include "session_backend.hpp"

namespace pylon {

namespace {

constexpr const char* kSupportedForms =
    "a bare file path (sessions.db, /var/lib/app/sessions.db), sqlite://relative/path.db, "
    "sqlite:///absolute/path.db, sqlite::memory:, postgres://... or postgresql://...";

// How a file whose path starts like a URL scheme is named.
constexpr const char* kColonPathHint =
    "; a file path that starts with 'name:' is read as a URL: write it ./name:... or "
    "sqlite://./name:...";

// What the C library's isspace() takes for white space in the "C" locale: libpq splits its
// keyword/value strings there.
bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_hex_digit(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
int hex_value(char c) {
  if (is_digit(c)) return c - '0';
  return (c >= 'a' && c <= 'f') ? c - 'a' + 10 : c - 'A' + 10;
}

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::string ascii_lower(std::string_view text) {
  std::string lowered(text);
  std::transform(lowered.begin(), lowered.end(), lowered.begin(), lower);
  return lowered;
}

bool starts_with_ignoring_case(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    if (lower(text[i]) != prefix[i]) return false;
  }
  return true;
}

// Where the ':' that ends a leading URL scheme is (RFC 3986: ALPHA *( ALPHA / DIGIT / "+" / "-"
// / "." ) ":"), or npos when `text` does not start with one: then it is a bare path.
std::size_t scheme_end(std::string_view text) {
  if (text.empty() || !is_alpha(text[0])) return std::string_view::npos;
  for (std::size_t i = 1; i < text.size(); ++i) {
    const char c = text[i];
    if (c == ':') return i;
    if (!is_alpha(c) && !is_digit(c) && c != '+' && c != '-' && c != '.') break;
  }
  return std::string_view::npos;
}

// ------------------------------------------------------------------------------------------------
// Passwords, by every reading
// ------------------------------------------------------------------------------------------------

// A password in the text, [begin, end), to be shown as "***".
struct PasswordSpan {
  std::size_t begin;
  std::size_t end;
};

constexpr std::string_view kPasswordWord = "password";

// The user info of "scheme://user:password@...": the password follows the first ':' after the
// "://" and ends at an '@'. RFC 3986 takes the last '@' before '/', '?' or '#'; libpq the first
// before '/'; a hand-written parser may take the last '@' of all. Every one of them ends at or
// before the last '@', so the span up to it covers them all.
void add_userinfo_password(std::string_view text, std::vector<PasswordSpan>& spans) {
  const std::size_t separator = text.find("://");
  if (separator == std::string_view::npos) return;
  const std::size_t authority = separator + 3;
  const std::size_t at = text.rfind('@');
  if (at == std::string_view::npos || at < authority) return;
  const std::size_t colon = text.find(':', authority);
  if (colon < at) spans.push_back({colon + 1, at});
}

// Query parameters "?...&password=VALUE&...", as libpq reads a URI's query (whatever the
// scheme, and whether or not a "://" precedes: a reader may take any '?' for the query's start).
// The value ends at the next '&'; libpq knows no fragment, so not at '#'.
void add_query_passwords(std::string_view text, std::vector<PasswordSpan>& spans) {
  constexpr std::string_view kKey = "password=";
  for (std::size_t pos = 1; pos < text.size(); ++pos) {
    if ((text[pos - 1] != '?' && text[pos - 1] != '&') ||
        !starts_with_ignoring_case(text.substr(pos), kKey)) {
      continue;
    }
    const std::size_t value = pos + kKey.size();
    spans.push_back({value, std::min(text.find('&', value), text.size())});
  }
}

// Where the value of a keyword/value "password" that starts at `value_start` ends, for a reader
// that splits the text at white space: at white space, or, for a quoted value, at the later of
// white space and the closing quote (libpq reads the quotes, a reader that splits at white
// space does not). npos: at the end.
std::size_t word_value_end(std::string_view text, std::size_t value_start) {
  std::size_t whitespace = std::string_view::npos;
  for (std::size_t i = value_start; i < text.size(); ++i) {
    if (is_space(text[i])) {
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

// Keyword/value text read a word at a time: "password=VALUE" (or "password = VALUE") at the
// start of the text or after white space, wherever it is (even inside something that looks like
// a URI, or inside another value).
void add_word_passwords(std::string_view text, std::vector<PasswordSpan>& spans) {
  for (std::size_t pos = 0; pos < text.size(); ++pos) {
    if ((pos > 0 && !is_space(text[pos - 1])) ||
        !starts_with_ignoring_case(text.substr(pos), kPasswordWord)) {
      continue;
    }
    std::size_t i = pos + kPasswordWord.size();
    while (i < text.size() && is_space(text[i])) ++i;
    if (i >= text.size() || text[i] != '=') continue;
    ++i;
    while (i < text.size() && is_space(text[i])) ++i;
    spans.push_back({i, std::min(word_value_end(text, i), text.size())});
  }
}

std::size_t skip_spaces(std::string_view text, std::size_t i) {
  while (i < text.size() && is_space(text[i])) ++i;
  return i;
}

// Where the libpq keyword/value value that starts at `i` ends (past its closing quote).
std::size_t libpq_value_end(std::string_view text, std::size_t i) {
  if (i < text.size() && text[i] == '\'') {
    for (++i; i < text.size(); ++i) {
      if (text[i] == '\\') {
        ++i;
      } else if (text[i] == '\'') {
        return i + 1;
      }
    }
    return text.size();  // unterminated: libpq fails, having read the rest as the value
  }
  for (; i < text.size() && !is_space(text[i]); ++i) {
    if (text[i] == '\\') ++i;
  }
  return std::min(i, text.size());
}

// Keyword/value text as libpq's conninfo_parse() reads it, from the start, one pair after the
// other: a name ends at '=' or white space, a value at unescaped white space or, quoted, at its
// closing quote, after which the next name may start at once ("host='db'password=x"). A
// backslash escapes the next byte, white space included. libpq stops at a name without '='.
void add_libpq_keyword_passwords(std::string_view text, std::vector<PasswordSpan>& spans) {
  for (std::size_t i = skip_spaces(text, 0); i < text.size(); i = skip_spaces(text, i)) {
    const std::size_t name_begin = i;
    while (i < text.size() && text[i] != '=' && !is_space(text[i])) ++i;
    const std::string_view name = text.substr(name_begin, i - name_begin);
    i = skip_spaces(text, i);
    if (i >= text.size() || text[i] != '=') return;
    const std::size_t value_begin = skip_spaces(text, i + 1);
    i = libpq_value_end(text, value_begin);
    if (name.size() == kPasswordWord.size() && starts_with_ignoring_case(name, kPasswordWord)) {
      spans.push_back({value_begin, i});
    }
  }
}

std::vector<PasswordSpan> password_spans(std::string_view text) {
  std::vector<PasswordSpan> spans;
  add_userinfo_password(text, spans);
  add_query_passwords(text, spans);
  add_word_passwords(text, spans);
  add_libpq_keyword_passwords(text, spans);
  spans.erase(std::remove_if(spans.begin(), spans.end(),
                             [](const PasswordSpan& span) { return span.end <= span.begin; }),
              spans.end());
  std::sort(spans.begin(), spans.end(), [](const PasswordSpan& left, const PasswordSpan& right) {
    return left.begin < right.begin;
  });
  return spans;
}

// `text` with %XX escapes decoded (a bad one is kept as it is): what libpq makes of URI parts.
std::string percent_decoded(std::string_view text) {
  std::string decoded;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && is_hex_digit(text[i + 1]) &&
        is_hex_digit(text[i + 2])) {
      decoded += static_cast<char>(hex_value(text[i + 1]) * 16 + hex_value(text[i + 2]));
      i += 2;
    } else {
      decoded += text[i];
    }
  }
  return decoded;
}

// `text` without its quotes and backslashes: what libpq makes of a keyword/value value.
std::string unescaped(std::string_view text) {
  if (!text.empty() && text.front() == '\'') text.remove_prefix(1);
  if (!text.empty() && text.back() == '\'') text.remove_suffix(1);
  std::string plain;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 1 < text.size()) ++i;
    plain += text[i];
  }
  return plain;
}

// ------------------------------------------------------------------------------------------------
// SQLite URLs
// ------------------------------------------------------------------------------------------------

std::int64_t parse_non_negative(std::string_view text, const std::string& what) {
  std::int64_t value = 0;
  if (text.empty() || text.size() > 12) {
    throw Error(ErrorCode::kInvalidArgument, what + " must be a non-negative integer");
  }
  for (const char c : text) {
    if (!is_digit(c)) {
      throw Error(ErrorCode::kInvalidArgument, what + " must be a non-negative integer");
    }
    value = value * 10 + (c - '0');
  }
  return value;
}

// One "key=value" of an SQLite URL's query string, applied to *options; Error(kInvalidArgument)
// naming the URL (as shown, without its password) for an unknown key or a bad value. A pair
// that overlaps what some reading takes for a password (`in_password`) is refused, if at all,
// in words that say nothing of its key or value: which message is given would tell them.
void apply_sqlite_parameter(std::string_view pair, bool in_password, const std::string& shown_url,
                            SqliteOptions* options) {
  const auto refuse_unnamed = [&shown_url] {
    throw Error(ErrorCode::kInvalidArgument,
                "an SQLite URL parameter (not shown: it overlaps what may be a password) is not "
                "one of synchronous=full|normal, busy_timeout=<ms> in " +
                    shown_url);
  };
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
      if (in_password) refuse_unnamed();
      throw Error(ErrorCode::kInvalidArgument,
                  "synchronous must be 'full' or 'normal' in " + shown_url);
    }
    return;
  }
  if (key == "busy_timeout") {
    try {
      options->busy_timeout = std::chrono::milliseconds(
          parse_non_negative(value, "busy_timeout (milliseconds) in " + shown_url));
    } catch (const Error&) {
      if (in_password) refuse_unnamed();
      throw;
    }
    return;
  }
  if (in_password) refuse_unnamed();
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

// url[location, end): "path?synchronous=normal&busy_timeout=100" (what follows "sqlite://") ->
// path and options.
std::pair<std::string, SqliteOptions> parse_sqlite_location(std::string_view url,
                                                            std::size_t location,
                                                            const std::string& shown_url) {
  SqliteOptions options;
  const std::vector<PasswordSpan> spans = password_spans(url);
  const std::size_t question = url.find('?', location);
  std::string path(url.substr(location, question - location));
  if (question != std::string_view::npos) {
    for (std::size_t begin = question + 1; begin < url.size();) {
      const std::size_t end = std::min(url.find('&', begin), url.size());
      const bool in_password = std::any_of(
          spans.begin(), spans.end(),
          [begin, end](const PasswordSpan& span) { return span.begin < end && begin < span.end; });
      if (end > begin) {
        apply_sqlite_parameter(url.substr(begin, end - begin), in_password, shown_url, &options);
      }
      begin = end + 1;
    }
  }
  if (path.empty()) {
    throw Error(ErrorCode::kInvalidArgument, "SQLite URL has no file path: " + shown_url);
  }
  // The SQLite backend shows its path through redact_url(), which no longer sees the "://" in
  // front of it: a path that some reading of the URL splits into user:password@ must not reach
  // it. A ':' before an '@' is all such a reading needs.
  const std::size_t colon = path.find(':');
  if (colon != std::string::npos && path.find('@', colon) != std::string::npos) {
    throw Error(ErrorCode::kInvalidArgument,
                "the path of SQLite URL " + shown_url +
                    " has a ':' before an '@', which reads as user:password@host; an SQLite URL "
                    "takes no user or password (give such a path as a bare path: ./name:x@y)");
  }
  if (path == ":memory:") {
    throw Error(ErrorCode::kInvalidArgument,
                "sqlite://:memory: would name a file; write sqlite::memory: for an in-memory "
                "database");
  }
  // SQLite (as Debian builds it, with SQLITE_USE_URI) reads a file name that starts with
  // "file:" as a URI; a relative path that starts like a scheme is made explicitly relative.
  if (path[0] != '/' && scheme_end(path) != std::string::npos) path.insert(0, "./");
  return {path, options};
}

// ------------------------------------------------------------------------------------------------
// PostgreSQL URLs: refused unless every reading agrees
// ------------------------------------------------------------------------------------------------

// The messages quote nothing of the URL, and avoid words a password may share a fragment with
// ("password" itself): fixed text that looks like a leak would hide a real one.
[[noreturn]] void refuse_postgres_url(const std::string& what) {
  throw Error(ErrorCode::kInvalidArgument,
              "the PostgreSQL URL (not shown: it may hold credentials) " + what);
}

// The names of the parts of "postgres://user:password@host:port/dbname?query", for messages.
struct PostgresUrlParts {
  std::size_t at = std::string_view::npos;     // the '@' that ends the user info, if any
  std::size_t host_end = 0;                    // the first '/' or '?' after the user info
  std::size_t query = std::string_view::npos;  // the '?', if any

  [[nodiscard]] const char* name_of(std::size_t pos) const {
    if (at != std::string_view::npos && pos < at) return "user info";
    if (pos < host_end) return "host and port";
    if (query == std::string_view::npos || pos < query) return "database name";
    return "query string";
  }
};

// The user info: at most one '@', before any '/' or '?'. Returns where the parts are.
PostgresUrlParts check_postgres_user_info(std::string_view rest) {
  PostgresUrlParts parts;
  const std::size_t authority_end = std::min(rest.find_first_of("/?"), rest.size());
  const std::size_t first_at = rest.find('@');
  if (first_at != std::string_view::npos) {
    if (first_at > authority_end) {
      refuse_postgres_url(
          "has an '@' after a '/' or '?': if that '@' ends the user info, percent-encode the "
          "'/' (%2F) or '?' (%3F) before it; if it belongs to the database name or a "
          "parameter, percent-encode it as %40");
    }
    if (rest.find('@', first_at + 1) != std::string_view::npos) {
      refuse_postgres_url(
          "has more than one '@': its user-info part contains an unencoded '@', and readers "
          "disagree on where the user info ends; percent-encode it as %40");
    }
    parts.at = first_at;
  }
  parts.host_end = parts.at == std::string_view::npos
                       ? authority_end
                       : std::min(rest.find_first_of("/?", parts.at), rest.size());
  parts.query = rest.find('?');
  return parts;
}

// Every '%' starts a %XX escape, and none is %00: libpq refuses both, quoting the text.
void check_postgres_escapes(std::string_view rest, const PostgresUrlParts& parts) {
  for (std::size_t i = rest.find('%'); i != std::string_view::npos; i = rest.find('%', i + 1)) {
    if (i + 2 >= rest.size() || !is_hex_digit(rest[i + 1]) || !is_hex_digit(rest[i + 2])) {
      refuse_postgres_url(std::string("has a '%' in its ") + parts.name_of(i) +
                          " that does not start a %XX escape; write a '%' itself as %25");
    }
    if (rest[i + 1] == '0' && rest[i + 2] == '0') {
      refuse_postgres_url(std::string("has %00 in its ") + parts.name_of(i) +
                          ", which libpq refuses: a NUL byte cannot be part of a connection "
                          "setting");
    }
  }
}

// libpq splits the query at '&' and each parameter at its one '='; it refuses an empty
// parameter (but for a trailing '&') and one with no '=' or two, quoting the text.
void check_postgres_query(std::string_view query) {
  for (int number = 1; !query.empty(); ++number) {
    const std::size_t amp = query.find('&');
    const std::string_view parameter = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    const std::size_t equals = parameter.find('=');
    const std::string which =
        "has in its query string a parameter (number " + std::to_string(number) + ")";
    if (equals == std::string_view::npos) {
      refuse_postgres_url(which + " without '=': each is name=value, joined by '&'");
    }
    if (equals == 0) refuse_postgres_url(which + " without a name");
    if (parameter.find('=', equals + 1) != std::string_view::npos) {
      refuse_postgres_url(which +
                          " with more than one '='; percent-encode an '=' in a value "
                          "as %3D");
    }
  }
}

// `rest` is what follows "postgres://" or "postgresql://". Throws Error(kInvalidArgument) with
// a message that quotes nothing of it.
void check_postgres_url(std::string_view rest) {
  const auto is_blank_or_control = [](char c) {
    const auto byte = static_cast<unsigned char>(c);
    return byte <= 0x20 || byte == 0x7F;
  };
  if (std::any_of(rest.begin(), rest.end(), is_blank_or_control)) {
    refuse_postgres_url(
        "contains a space or a control character; percent-encode it (a space is %20)");
  }
  if (rest.find('#') != std::string_view::npos) {
    refuse_postgres_url(
        "contains a '#': libpq reads no fragment where other readers end the URL, so they "
        "disagree on what follows; percent-encode it as %23");
  }
  const PostgresUrlParts parts = check_postgres_user_info(rest);
  check_postgres_escapes(rest, parts);
  if (parts.query != std::string_view::npos) check_postgres_query(rest.substr(parts.query + 1));
}

}  // namespace

// Conservative on purpose: whatever any reading above would take for a password is hidden.
// Every reading's passwords are found in the text as given, then the union of them is hidden,
// so one reading's value that starts inside or runs past another's is never half shown.
std::string redact_url(std::string_view url) {
  const std::vector<PasswordSpan> spans = password_spans(url);
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

// Each password some reading finds in `url`: as written, percent-decoded, and unquoted and
// unescaped, since libpq may quote any of the three in a message.
std::vector<std::string> password_candidates(std::string_view url) {
  std::vector<std::string> candidates;
  const auto add = [&candidates](std::string candidate) {
    if (!candidate.empty() &&
        std::find(candidates.begin(), candidates.end(), candidate) == candidates.end()) {
      candidates.push_back(std::move(candidate));
    }
  };
  for (const PasswordSpan& span : password_spans(url)) {
    const std::string_view raw = url.substr(span.begin, span.end - span.begin);
    add(std::string(raw));
    add(percent_decoded(raw));
    add(unescaped(raw));
  }
  return candidates;
}

DatabaseLocation parse_database_url(const std::string& database_url) {
  DatabaseLocation location;
  if (database_url.empty()) {
    location.sqlite_path = "sessions.db";
    return location;
  }
  const std::string_view url = database_url;
  const std::size_t colon = scheme_end(url);
  if (colon == std::string_view::npos) {
    if (database_url == ":memory:") {
      throw Error(ErrorCode::kInvalidArgument,
                  "':memory:' as a bare path would name a file; write sqlite::memory: for an "
                  "in-memory database, or ./:memory: for a file of that name");
    }
    location.sqlite_path = database_url;  // a bare path: taken literally, no parameters
    return location;
  }
  const std::string scheme = ascii_lower(url.substr(0, colon));
  const std::string_view rest = url.substr(colon + 1);
  if (scheme == "sqlite") {
    if (rest == ":memory:") {
      location.sqlite_path = ":memory:";
      return location;
    }
    const std::string shown = redact_url(url);
    if (rest.substr(0, 2) != "//") {
      throw Error(ErrorCode::kInvalidArgument,
                  "SQLite URL " + shown +
                      " is not one of the documented forms; supported: " + kSupportedForms);
    }
    std::tie(location.sqlite_path, location.sqlite_options) =
        parse_sqlite_location(url, colon + 3, shown);
    return location;
  }
  if (scheme == "postgres" || scheme == "postgresql") {
    if (rest.substr(0, 2) != "//") {
      refuse_postgres_url("does not start with postgres:// or postgresql://; supported: " +
                          std::string(kSupportedForms));
    }
    check_postgres_url(rest.substr(2));
#ifdef PYLON_WITH_POSTGRES
    location.is_postgres = true;
    return location;
#else
    throw Error(ErrorCode::kUnsupportedScheme,
                "this build of pylon-sessions has no PostgreSQL support (configure it with "
                "libpq); cannot open " +
                    redact_url(url));
#endif
  }
  throw Error(ErrorCode::kUnsupportedScheme,
              "unknown DATABASE_URL scheme '" + scheme + "' in " + redact_url(url) +
                  "; supported: " + kSupportedForms + kColonPathHint);
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

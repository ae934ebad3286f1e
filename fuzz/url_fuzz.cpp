// url_fuzz: libFuzzer target for DATABASE_URL handling: pylon::detail::parse_database_url (which
// opens nothing) and pylon::redact_url, on arbitrary bytes.
//
// It checks, for every input:
//   - parse_database_url() either returns a location or throws pylon::Error with
//     kInvalidArgument or kUnsupportedScheme and a what() of the form "[pylon.<code>] ...";
//     anything else escaping it (std::out_of_range from a substr, say) is a bug;
//   - only the documented forms are accepted: a string that starts like a URL scheme
//     (^[A-Za-z][A-Za-z0-9+.-]*:) is sqlite://..., sqlite::memory: or refused (this build has
//     no PostgreSQL, so postgres:// is refused too, after its checks); anything else is a bare
//     path, handed to SQLite literally; and no path handed to SQLite is one that SQLite would
//     read as something else (a "file:" URI, ":memory:");
//   - no four bytes in a row of anything that any reading of the input takes for a password
//     appear in redact_url(input), or in the what() or backend_detail() of the Error the parser
//     throws (the README: "A password never reaches an error message, whatever the URL looks
//     like").
// The passwords are found here independently of the library (see find_passwords()), and a broken
// promise ends the run through __builtin_trap(), which libFuzzer reports as a crash.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "internal/backend_shared.hpp"
#include "session_backend.hpp"

namespace {

using namespace std::string_view_literals;

[[noreturn]] void fail(const char* what, std::string_view detail = {}) {
  // A string_view, not a C string: the detail may hold NUL bytes (the input is arbitrary).
  std::cerr << "url_fuzz: broken promise: " << what << '\n' << detail << std::endl;
  __builtin_trap();
}

// Where a password lies in the input: [begin, end).
struct Span {
  std::size_t begin;
  std::size_t end;
};

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool starts_with_ignoring_case(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    if (lower(text[i]) != prefix[i]) return false;
  }
  return true;
}

bool equals_ignoring_case(std::string_view text, std::string_view word) {
  return text.size() == word.size() && starts_with_ignoring_case(text, word);
}

bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_hex(char c) { return is_digit(c) || (lower(c) >= 'a' && lower(c) <= 'f'); }

// RFC 3986 section 3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
bool is_scheme(std::string_view text) {
  return !text.empty() && is_alpha(text[0]) && std::all_of(text.begin(), text.end(), [](char c) {
    return is_alpha(c) || is_digit(c) || c == '+' || c == '-' || c == '.';
  });
}

// The scheme the input starts with ("name:"), lowercased, or nullopt for a bare path.
std::optional<std::string> leading_scheme(std::string_view url) {
  const std::size_t colon = url.find(':');
  if (colon == std::string_view::npos || !is_scheme(url.substr(0, colon))) return std::nullopt;
  std::string scheme(url.substr(0, colon));
  std::transform(scheme.begin(), scheme.end(), scheme.begin(), lower);
  return scheme;
}

// The password of the userinfo "user:PASSWORD" in text[begin, at): what follows its first ':'.
void add_userinfo_password(std::string_view text, std::size_t begin, std::size_t at,
                           std::vector<Span>& spans) {
  const std::size_t colon = text.substr(0, at).find(':', begin);
  if (colon != std::string_view::npos) spans.push_back({colon + 1, at});
}

// Every password the input carries, by the grammars of the programs that would read it. Written
// from those grammars rather than from redact_url()'s code, so a shared mistake is less likely:
//   1. RFC 3986: "scheme://userinfo@host...", the authority ending at the first '/', '?' or '#'
//      and the userinfo at its last '@' (what browsers and most URL libraries do).
//   2. libpq, for "postgres://" and "postgresql://" (the library lowercases the scheme for it):
//      its conninfo_uri_parse_options() ends the userinfo at the first '@' before any '/', so
//      '?' and '#' belong to the password ("postgres://app:pa?ss@db" has the password "pa?ss").
//   3. A hand-written reader: the userinfo ends at the last '@' of all, so that
//      "postgres://app:Zm9v/YmF6@db/app" has the password "Zm9v/YmF6".
//   4. Query parameters "?...&password=VALUE&...", the query ending at '#' (RFC 3986); libpq
//      reads these as connection keywords.
//   5. Keyword/value strings read a word at a time: a whitespace-separated "password=VALUE".
//   6. libpq's conninfo_parse(): keyword/value pairs read one after the other, with white space
//      allowed around '=', quoted values, and backslash escapes.
// Keys are compared ignoring case, as redact_url's contract ("password=...") reads.
constexpr std::string_view kPasswordKey = "password=";
constexpr std::string_view kPasswordWord = "password";
// What isspace() takes for whitespace in the "C" locale.
constexpr std::string_view kWhitespace = " \t\n\v\f\r";

bool is_space(char c) { return kWhitespace.find(c) != std::string_view::npos && c != '\0'; }

// 1., 2. and 3.: the password of the userinfo.
void add_userinfo_passwords(std::string_view url, std::vector<Span>& spans) {
  const std::size_t separator = url.find("://");
  if (separator == std::string_view::npos || !is_scheme(url.substr(0, separator))) return;
  const std::size_t authority = separator + 3;
  const std::size_t authority_end = std::min(url.find_first_of("/?#", authority), url.size());
  const std::size_t at = url.substr(0, authority_end).rfind('@');
  if (at != std::string_view::npos && at >= authority) {
    add_userinfo_password(url, authority, at, spans);
  }
  const std::size_t last_at = url.rfind('@');
  if (last_at != std::string_view::npos && last_at >= authority) {
    add_userinfo_password(url, authority, last_at, spans);
  }
  std::string scheme(url.substr(0, separator));
  std::transform(scheme.begin(), scheme.end(), scheme.begin(), lower);
  if (scheme != "postgres" && scheme != "postgresql") return;
  const std::size_t libpq_at = url.find_first_of("@/", authority);
  if (libpq_at != std::string_view::npos && url[libpq_at] == '@') {
    add_userinfo_password(url, authority, libpq_at, spans);
  }
}

// 4. The query: after the first '?', up to '#'; parameters separated by '&'.
void add_query_passwords(std::string_view url, std::vector<Span>& spans) {
  const std::size_t question = url.find('?');
  if (question == std::string_view::npos) return;
  const std::size_t query_end = std::min(url.find('#', question), url.size());
  for (std::size_t begin = question + 1; begin <= query_end;) {
    const std::size_t end = std::min(url.substr(0, query_end).find('&', begin), query_end);
    const std::string_view parameter = url.substr(begin, end - begin);
    if (starts_with_ignoring_case(parameter, kPasswordKey)) {
      // A URL holds no raw whitespace (RFC 3986 has it percent-encoded), so whitespace ends the
      // value too: past it the text is no longer a URL, and the keyword/value readings take over.
      const std::size_t blank = parameter.find_first_of(kWhitespace);
      spans.push_back(
          {begin + kPasswordKey.size(), blank == std::string_view::npos ? end : begin + blank});
    }
    begin = end + 1;
  }
}

// 5. Keyword/value a word at a time: words separated by whitespace, which libpq's
// conninfo_parse() tells with isspace(): a form feed or a newline ends a value as a space does.
void add_keyword_value_passwords(std::string_view url, std::vector<Span>& spans) {
  for (std::size_t begin = 0; begin < url.size();) {
    const std::size_t end = std::min(url.find_first_of(kWhitespace, begin), url.size());
    if (starts_with_ignoring_case(url.substr(begin, end - begin), kPasswordKey)) {
      spans.push_back({begin + kPasswordKey.size(), end});
    }
    begin = end + 1;
  }
}

// 6. As libpq's conninfo_parse() (src/interfaces/libpq/fe-connect.c) reads it: skip white space;
// a name runs to '=' or white space; white space may follow it; then '='; white space; then a
// value: quoted ('...', a backslash escaping the next byte, to the closing quote; unterminated:
// libpq fails, but what it had read is the password all the same) or bare (to white space, a
// backslash escaping the next byte). A missing '=' ends the parse.
std::size_t past_spaces(std::string_view url, std::size_t pos) {
  while (pos < url.size() && is_space(url[pos])) ++pos;
  return pos;
}

// The end of the value that starts at `pos`, past its closing quote if it has one.
std::size_t conninfo_value_end(std::string_view url, std::size_t pos) {
  if (pos < url.size() && url[pos] == '\'') {
    ++pos;
    while (pos < url.size() && url[pos] != '\'') pos += url[pos] == '\\' ? 2 : 1;
    return std::min(pos + 1, url.size());
  }
  while (pos < url.size() && !is_space(url[pos])) pos += url[pos] == '\\' ? 2 : 1;
  return std::min(pos, url.size());
}

void add_libpq_conninfo_passwords(std::string_view url, std::vector<Span>& spans) {
  for (std::size_t pos = past_spaces(url, 0); pos < url.size(); pos = past_spaces(url, pos)) {
    const std::size_t name_begin = pos;
    while (pos < url.size() && url[pos] != '=' && !is_space(url[pos])) ++pos;
    const std::string_view name = url.substr(name_begin, pos - name_begin);
    pos = past_spaces(url, pos);
    if (pos >= url.size() || url[pos] != '=') return;
    const std::size_t value_begin = past_spaces(url, pos + 1);
    pos = conninfo_value_end(url, value_begin);
    if (equals_ignoring_case(name, kPasswordWord)) spans.push_back({value_begin, pos});
  }
}

std::vector<Span> find_passwords(std::string_view url) {
  std::vector<Span> spans;
  add_userinfo_passwords(url, spans);
  add_query_passwords(url, spans);
  add_keyword_value_passwords(url, spans);
  add_libpq_conninfo_passwords(url, spans);
  return spans;
}

// A password as its reader ends up holding it, besides the bytes of the input: libpq decodes
// %XX in a URI, and unquotes and unescapes a keyword/value.
std::string percent_decoded(std::string_view text) {
  std::string decoded;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '%' && i + 2 < text.size() && is_hex(text[i + 1]) && is_hex(text[i + 2])) {
      decoded += static_cast<char>(std::stoi(std::string(text.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      decoded += text[i];
    }
  }
  return decoded;
}

std::string unescaped(std::string_view text) {
  std::string plain;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\'') continue;
    if (text[i] == '\\' && i + 1 < text.size()) ++i;
    plain += text[i];
  }
  return plain;
}

// Everything the library shows about a URL: redact_url(url), then the parser's error text, if
// any. Checks the parser's other promises on the way.
std::vector<std::string> shown_texts(const std::string& url) {
  std::vector<std::string> texts;
  try {
    texts.push_back(pylon::redact_url(url));
    try {
      const pylon::detail::DatabaseLocation location = pylon::detail::parse_database_url(url);
      if (location.is_postgres) fail("a PostgreSQL location from a build without PostgreSQL");
      const std::string& path = location.sqlite_path;
      if (path.empty()) fail("an empty SQLite path", url);
      const std::optional<std::string> scheme = leading_scheme(url);
      if (!scheme && !url.empty() && path != url) fail("a bare path not taken literally", url);
      // What follows "scheme:".
      const std::string rest = scheme ? url.substr(scheme->size() + 1) : std::string();
      if (scheme && *scheme != "sqlite") fail("an undocumented scheme accepted", url);
      if (scheme && rest.rfind("//", 0) != 0 && rest != ":memory:") {
        fail("an undocumented sqlite: form accepted", url);
      }
      if (path.rfind("file:", 0) == 0) fail("a path SQLite reads as a URI", url);
      if (path == ":memory:" && !(scheme && rest == ":memory:")) {
        fail("an in-memory database from a form that names a file", url);
      }
    } catch (const pylon::Error& error) {
      const pylon::ErrorCode code = error.code();
      if (code != pylon::ErrorCode::kInvalidArgument &&
          code != pylon::ErrorCode::kUnsupportedScheme) {
        fail("the parser threw an unexpected ErrorCode", error.what());
      }
      const std::string what = error.what();
      const std::string prefix = std::string("[pylon.") + pylon::to_string(code) + "] ";
      if (what.rfind(prefix, 0) != 0) fail("an Error whose what() lacks its code", what);
      texts.push_back(what);
      texts.push_back(error.backend_detail());
    }
  } catch (const pylon::Error&) {
    fail("redact_url threw pylon::Error");
  } catch (const std::exception& error) {
    fail("an exception other than pylon::Error escaped", error.what());
  }
  return texts;
}

bool any_contains(const std::vector<std::string>& texts, std::string_view needle) {
  return std::any_of(texts.begin(), texts.end(), [needle](const std::string& text) {
    return text.find(needle) != std::string::npos;
  });
}

// The promise covers four bytes in a row of a password: fewer turn up by chance in the fixed
// text of a message or in the "***" that replaces a password, so a hit would say little.
constexpr std::size_t kWindow = 4;

// The bytes that delimit something in one reading of a URL or another, and the ones whose
// presence a check looks at (white space and control bytes, '%' and the two digits after it,
// '"'). NUL too: what() is a C string, so a NUL cuts a message short, in the input as in the
// twin.
constexpr std::string_view kDelimiters = "&?#@/:='\"\\%\0"sv;

bool keeps_structure(const std::string& url, std::size_t i) {
  const auto byte = static_cast<unsigned char>(url[i]);
  if (byte <= 0x20 || byte == 0x7F || kDelimiters.find(url[i]) != std::string_view::npos) {
    return true;
  }
  // A %XX escape keeps its digits: whether it is valid, or %00, is structure too.
  return (i >= 1 && url[i - 1] == '%') || (i >= 2 && url[i - 2] == '%');
}

// The input with every byte of every password span replaced by `filler`, except the bytes that
// give it its structure (keeps_structure()) and every "password" keyword, which stay where they
// are: the twin reads as the input does. With a password's '&' gone, a query value would end at
// a later '&' and hide different bytes than the input's; and a "password" keyword inside
// another password's value starts a value of its own in some reading.
std::string twin_of(const std::string& url, const std::vector<Span>& spans, char filler) {
  std::vector<bool> is_key(url.size(), false);
  for (std::size_t i = 0; i + kPasswordWord.size() <= url.size(); ++i) {
    if (starts_with_ignoring_case(std::string_view(url).substr(i), kPasswordWord)) {
      std::fill_n(is_key.begin() + static_cast<std::ptrdiff_t>(i), kPasswordWord.size(), true);
    }
  }
  std::string twin = url;
  for (const Span& span : spans) {
    for (std::size_t i = span.begin; i < span.end && i < url.size(); ++i) {
      if (!is_key[i] && !keeps_structure(url, i)) twin[i] = filler;
    }
  }
  return twin;
}

// The windows of `password` (in every form its readers hold it) that `texts` show.
std::vector<std::string> shown_windows(std::string_view password,
                                       const std::vector<std::string>& texts) {
  std::vector<std::string> shown;
  for (const std::string& form :
       {std::string(password), percent_decoded(password), unescaped(password)}) {
    for (std::size_t start = 0; start + kWindow <= form.size(); ++start) {
      const std::string window = form.substr(start, kWindow);
      if (window.find_first_not_of(kDelimiters) == std::string::npos) continue;
      if (any_contains(texts, window)) shown.push_back(window);
    }
  }
  return shown;
}

// The texts of the twin that fills every span, by filler: most inputs need one, or none.
using FilledTwins = std::vector<std::pair<char, std::vector<std::string>>>;

// Checks one password, url[span): see check_passwords().
void check_password(const std::string& url, const std::vector<Span>& spans, const Span& span,
                    const std::vector<std::string>& texts, FilledTwins& twins) {
  const std::string password = url.substr(span.begin, span.end - span.begin);
  const std::vector<std::string> windows = shown_windows(password, texts);
  if (windows.empty()) return;
  // Bytes of the password appear in what the library shows. That is a leak only if they are
  // there *because of* the password: the same bytes may also be the user name
  // ("postgres://abcd:abcd@db"), the host, a lowercased scheme, or fixed text of the message
  // ("synchronous=full|normal", "percent-encode"). So build a twin of the input in which every
  // password byte is replaced by a filler byte the password does not contain (letters that are
  // no hex digits first: a filler must not make a bad %-escape good), and run the library on
  // it: a window that the twin's texts show too comes from elsewhere and proves nothing.
  // A second twin fills this password's span alone. The first one, filling every span, also
  // changes what other readings parse: text that one reading takes for a password may be, in
  // the SQLite reading, a parameter the message then names ("busy_timeout (milliseconds)",
  // found by CI's fuzzing with the password "sy_ti"), or a key the message quotes because the
  // redacted URL shows it elsewhere anyway. Bytes still shown with this password filled come
  // from elsewhere too; a leak of them is another password's, checked on its own turn.
  constexpr std::string_view kFillers = "xqzjkvXQZJKV0123456789";
  const std::size_t filler_at = kFillers.find_first_not_of(password);
  if (filler_at == std::string_view::npos) return;
  const char filler = kFillers[filler_at];
  auto twin = std::find_if(twins.begin(), twins.end(),
                           [filler](const auto& made) { return made.first == filler; });
  if (twin == twins.end()) {
    twins.emplace_back(filler, shown_texts(twin_of(url, spans, filler)));
    twin = twins.end() - 1;
  }
  const std::vector<std::string>& all_filled = twin->second;
  std::optional<std::vector<std::string>> this_filled;  // made on first need
  for (const std::string& window : windows) {
    if (window.find(filler) != std::string::npos || any_contains(all_filled, window)) continue;
    if (!this_filled) this_filled = shown_texts(twin_of(url, {span}, filler));
    if (any_contains(*this_filled, window)) continue;
    std::string report = "input: ";
    report.append(url).append("\npassword: ").append(password).append("\nshown: ");
    report.append(window);
    for (const std::string& text : texts) report.append("\ntext: ").append(text);
    fail("four bytes of a password appear in what the library shows", report);
  }
}

void check_passwords(const std::string& url, const std::vector<std::string>& texts) {
  const std::vector<Span> spans = find_passwords(url);
  FilledTwins twins;
  for (const Span& span : spans) {
    if (span.end - span.begin >= kWindow) check_password(url, spans, span, texts, twins);
  }
}

}  // namespace

// NOLINTNEXTLINE(readability-identifier-naming): libFuzzer's name
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): libFuzzer hands us raw bytes
  const std::string url(reinterpret_cast<const char*>(data), size);
  const std::vector<std::string> texts = shown_texts(url);
  check_passwords(url, texts);
  return 0;
}

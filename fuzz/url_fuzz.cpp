// url_fuzz: libFuzzer target for DATABASE_URL handling: pylon::detail::parse_database_url (which
// opens nothing) and pylon::redact_url, on arbitrary bytes.
//
// It checks, for every input:
//   - parse_database_url() either returns a location (a non-empty SQLite path; never PostgreSQL,
//     which this build leaves out) or throws pylon::Error with kInvalidArgument or
//     kUnsupportedScheme and a what() of the form "[pylon.<code>] ..."; anything else escaping it
//     (std::out_of_range from a substr, say) is a bug;
//   - no password the input carries appears in redact_url(input) or in the what() of the Error
//     the parser throws: the header promises "No message ever contains a raw token or a password".
// The passwords are found here independently of the library (see find_passwords()), and a broken
// promise ends the run through __builtin_trap(), which libFuzzer reports as a crash.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "session_backend.hpp"
#include "session_backend_internal.hpp"

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

bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

// RFC 3986 section 3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
bool is_scheme(std::string_view text) {
  return !text.empty() && is_alpha(text[0]) && std::all_of(text.begin(), text.end(), [](char c) {
    return is_alpha(c) || is_digit(c) || c == '+' || c == '-' || c == '.';
  });
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
//   2. libpq, for "postgres://" and "postgresql://" (the prefixes it compares exactly): its
//      conninfo_uri_parse_options() ends the userinfo at the first '@' before any '/', so '?' and
//      '#' belong to the password ("postgres://app:pa?ss@db" has the password "pa?ss").
//   3. Query parameters "?...&password=VALUE&...", the query ending at '#' (RFC 3986); libpq
//      reads these as connection keywords.
//   4. libpq keyword/value strings: a whitespace-separated "password=VALUE".
// Keys are compared ignoring case, as redact_url's contract ("password=...") reads.
constexpr std::string_view kPasswordKey = "password=";
// What isspace() takes for whitespace in the "C" locale.
constexpr std::string_view kWhitespace = " \t\n\v\f\r";

// 1. and 2.: the password of the userinfo, by RFC 3986 and, for PostgreSQL URLs, by libpq.
void add_userinfo_passwords(std::string_view url, std::vector<Span>& spans) {
  const std::size_t separator = url.find("://");
  if (separator == std::string_view::npos || !is_scheme(url.substr(0, separator))) return;
  const std::size_t authority = separator + 3;
  const std::size_t authority_end = std::min(url.find_first_of("/?#", authority), url.size());
  const std::size_t at = url.substr(0, authority_end).rfind('@');
  if (at != std::string_view::npos && at >= authority) {
    add_userinfo_password(url, authority, at, spans);
  }
  const std::string_view scheme = url.substr(0, separator);
  if (scheme != "postgres" && scheme != "postgresql") return;
  const std::size_t libpq_at = url.find_first_of("@/", authority);
  if (libpq_at != std::string_view::npos && url[libpq_at] == '@') {
    add_userinfo_password(url, authority, libpq_at, spans);
  }
}

// 3. The query: after the first '?', up to '#'; parameters separated by '&'.
void add_query_passwords(std::string_view url, std::vector<Span>& spans) {
  const std::size_t question = url.find('?');
  if (question == std::string_view::npos) return;
  const std::size_t query_end = std::min(url.find('#', question), url.size());
  for (std::size_t begin = question + 1; begin <= query_end;) {
    const std::size_t end = std::min(url.substr(0, query_end).find('&', begin), query_end);
    const std::string_view parameter = url.substr(begin, end - begin);
    if (starts_with_ignoring_case(parameter, kPasswordKey)) {
      // A URL holds no raw whitespace (RFC 3986 has it percent-encoded), so whitespace ends the
      // value too: past it the text is no longer a URL, and the keyword/value reading (4.) takes
      // over.
      const std::size_t blank = parameter.find_first_of(kWhitespace);
      spans.push_back(
          {begin + kPasswordKey.size(), blank == std::string_view::npos ? end : begin + blank});
    }
    begin = end + 1;
  }
}

// 4. Keyword/value: words separated by whitespace, which libpq's conninfo_parse() tells with
// isspace(): a form feed or a newline ends a value as a space does.
void add_keyword_value_passwords(std::string_view url, std::vector<Span>& spans) {
  for (std::size_t begin = 0; begin < url.size();) {
    const std::size_t end = std::min(url.find_first_of(kWhitespace, begin), url.size());
    if (starts_with_ignoring_case(url.substr(begin, end - begin), kPasswordKey)) {
      spans.push_back({begin + kPasswordKey.size(), end});
    }
    begin = end + 1;
  }
}

std::vector<Span> find_passwords(std::string_view url) {
  std::vector<Span> spans;
  add_userinfo_passwords(url, spans);
  add_query_passwords(url, spans);
  add_keyword_value_passwords(url, spans);
  return spans;
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
      if (location.sqlite_path.empty()) fail("an empty SQLite path", url);
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

// Shorter passwords are not checked: three bytes or fewer turn up by chance in the fixed text of
// a message ("[pylon.invalid_argument] ...", the list of schemes) or in the "***" that replaces a
// password, so a hit says little. The twin below removes most of those false alarms anyway; the
// length floor keeps the reports to passwords a person would recognise.
constexpr std::size_t kMinPasswordLength = 4;

// The bytes that delimit something in one reading of a URL or another. NUL too: what() is a C
// string, so a NUL cuts a message short, in the input as in the twin.
constexpr std::string_view kDelimiters = "&?#@/:='\\ \t\n\v\f\r\0"sv;

// The input with every byte of every password span replaced by `filler`, except the delimiters
// and every "password=" key, which stay where they are: the twin has the structure of the input.
// With a password's '&' gone, a query value would end at a later '&' and hide different bytes
// than the input's; and a "password=" key inside another password's value starts a value of its
// own in some reading.
std::string twin_of(const std::string& url, const std::vector<Span>& spans, char filler) {
  std::vector<bool> is_key(url.size(), false);
  for (std::size_t i = 0; i + kPasswordKey.size() <= url.size(); ++i) {
    if (starts_with_ignoring_case(std::string_view(url).substr(i), kPasswordKey)) {
      std::fill_n(is_key.begin() + static_cast<std::ptrdiff_t>(i), kPasswordKey.size(), true);
    }
  }
  std::string twin = url;
  for (const Span& span : spans) {
    for (std::size_t i = span.begin; i < span.end; ++i) {
      if (!is_key[i] && kDelimiters.find(twin[i]) == std::string_view::npos) twin[i] = filler;
    }
  }
  return twin;
}

void check_passwords(const std::string& url, const std::vector<std::string>& texts) {
  const std::vector<Span> spans = find_passwords(url);
  for (const Span& span : spans) {
    if (span.end - span.begin < kMinPasswordLength) continue;
    const std::string password = url.substr(span.begin, span.end - span.begin);
    if (!any_contains(texts, password)) continue;
    // The password's bytes appear in what the library shows. That is a leak only if they are
    // there *because of* the password: the same bytes may also be the user name
    // ("postgres://abcd:abcd@db"), the host, a lowercased scheme, or fixed text of the message
    // ("synchronous=full|normal"). So build a twin of the input in which every password byte is
    // replaced by a filler byte the password does not contain (letters and digits), and run the
    // library on it: if the twin's texts contain the password too, its bytes come from elsewhere
    // and prove nothing.
    // A second twin fills this password's span alone. The first one, filling every span, also
    // changes what other readings parse: text that one reading takes for a password may be, in
    // the SQLite reading, a parameter the message then names ("busy_timeout (milliseconds)",
    // found by CI's fuzzing with the password "sy_ti"), or a key the message quotes because the
    // redacted URL shows it elsewhere anyway. Bytes still shown with this password filled come
    // from elsewhere too; a leak of them is another password's, checked on its own turn.
    constexpr std::string_view kFillers = "xqzjkvXQZJKV0123456789";
    const std::size_t filler = kFillers.find_first_not_of(password);
    if (filler == std::string_view::npos) continue;
    if (password.find_first_not_of(kDelimiters) == std::string::npos) continue;
    if (any_contains(shown_texts(twin_of(url, spans, kFillers[filler])), password)) continue;
    if (any_contains(shown_texts(twin_of(url, {span}, kFillers[filler])), password)) continue;
    std::string report = "input: ";
    report.append(url).append("\npassword: ").append(password);
    for (const std::string& text : texts) report.append("\nshown: ").append(text);
    fail("a password appears in what the library shows", report);
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

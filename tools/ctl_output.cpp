// sessionctl: what it prints. See ctl_output.hpp.
#include "ctl_output.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sessionctl {

namespace {

bool is_hex(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

bool is_alnum(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

std::string padded(std::int64_t value, std::size_t width) {
  if (value < 0) return std::to_string(value);
  std::string digits = std::to_string(value);
  if (digits.size() < width) digits.insert(0, width - digits.size(), '0');
  return digits;
}

std::int64_t floor_div(std::int64_t a, std::int64_t b) {
  const std::int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

bool is_showable_time(std::int64_t unix_seconds) {
  return unix_seconds >= -62167219200 && unix_seconds <= pylon::kMaxSessionTime;
}

struct Civil {
  std::int64_t year, month, day, hour, minute, second;
};

// Howard Hinnant's civil_from_days: thread-safe, no gmtime, exact for years 0..9999.
Civil civil(std::int64_t unix_seconds) {
  const std::int64_t days = floor_div(unix_seconds, 86400);
  const std::int64_t secs = unix_seconds - days * 86400;
  const std::int64_t z = days + 719468;
  const std::int64_t era = floor_div(z, 146097);
  const std::int64_t doe = z - era * 146097;
  const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const std::int64_t mp = (5 * doy + 2) / 153;
  const std::int64_t day = doy - (153 * mp + 2) / 5 + 1;
  const std::int64_t month = mp < 10 ? mp + 3 : mp - 9;
  const std::int64_t year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  return {year, month, day, secs / 3600, secs / 60 % 60, secs % 60};
}

// Howard Hinnant's days_from_civil, the inverse of civil(): days since 1970-01-01.
std::int64_t days_from_civil(std::int64_t year, std::int64_t month, std::int64_t day) {
  year -= month <= 2 ? 1 : 0;
  const std::int64_t era = floor_div(year, 400);
  const std::int64_t yoe = year - era * 400;
  const std::int64_t doy = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1;
  const std::int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

// Reads a time typed on the command line, left to right.
class Scanner {
 public:
  explicit Scanner(std::string_view text) : text_(text) {}
  // The number in the next `count` characters, all decimal digits; nullopt otherwise.
  std::optional<std::int64_t> digits(std::size_t count) {
    if (text_.size() - at_ < count) return std::nullopt;
    std::int64_t value = 0;
    for (std::size_t i = 0; i < count; ++i) {
      const char c = text_[at_ + i];
      if (c < '0' || c > '9') return std::nullopt;
      value = value * 10 + (c - '0');
    }
    at_ += count;
    return value;
  }
  // Consumes `c` when it comes next.
  bool skip(char c) {
    if (at_ >= text_.size() || text_[at_] != c) return false;
    ++at_;
    return true;
  }
  [[nodiscard]] bool done() const { return at_ == text_.size(); }

 private:
  std::string_view text_;
  std::size_t at_ = 0;
};

// "YYYY-MM-DD" as year, month and day (not yet checked as a date).
std::optional<Civil> scan_date(Scanner& in) {
  const std::optional<std::int64_t> year = in.digits(4);
  if (!year || !in.skip('-')) return std::nullopt;
  const std::optional<std::int64_t> month = in.digits(2);
  if (!month || !in.skip('-')) return std::nullopt;
  const std::optional<std::int64_t> day = in.digits(2);
  if (!day) return std::nullopt;
  return Civil{*year, *month, *day, 0, 0, 0};
}

// "HH:MM" or "HH:MM:SS" into `t` (not yet checked as a time of day).
bool scan_clock(Scanner& in, Civil& t) {
  const std::optional<std::int64_t> hour = in.digits(2);
  if (!hour || !in.skip(':')) return false;
  const std::optional<std::int64_t> minute = in.digits(2);
  if (!minute) return false;
  t.hour = *hour;
  t.minute = *minute;
  if (in.skip(':')) {
    const std::optional<std::int64_t> second = in.digits(2);
    if (!second) return false;
    t.second = *second;
  }
  return true;
}

// The number of characters a terminal shows for UTF-8 `text` (continuation bytes not counted).
std::size_t display_width(std::string_view text) {
  return static_cast<std::size_t>(std::count_if(text.begin(), text.end(), [](char c) {
    return (static_cast<unsigned char>(c) & 0xC0U) != 0x80U;
  }));
}

// `text` cut to `width` display characters, the last one "…" when cut, then padded.
std::string fit(std::string_view text, std::size_t width) {
  std::string out;
  if (display_width(text) <= width) {
    out = text;
  } else {
    std::size_t shown = 0;
    for (const char c : text) {
      const bool starts_char = (static_cast<unsigned char>(c) & 0xC0U) != 0x80U;
      if (starts_char && ++shown > width - 1) break;
      out += c;
    }
    out += "\u2026";
  }
  const std::size_t used = display_width(out);
  if (used < width) out.append(width - used, ' ');
  return out;
}

constexpr std::string_view kBase64 =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int base64_value(char c) {
  const std::size_t at = kBase64.find(c);
  return at == std::string_view::npos ? -1 : static_cast<int>(at);
}

std::optional<std::string> optional_text(const nlohmann::json& object, const char* key) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) throw Failure(kExitNotFound, std::string(key) + " is not a string");
  return it->get<std::string>();
}

std::int64_t integer(const nlohmann::json& object, const char* key, bool required) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) {
    if (required) throw Failure(kExitNotFound, std::string("no ") + key);
    return 0;
  }
  if (!it->is_number_integer()) {
    throw Failure(kExitNotFound, std::string(key) + " is not an integer");
  }
  return it->get<std::int64_t>();
}

}  // namespace

std::string redact_tokens(std::string_view text) {
  constexpr std::string_view kPrefix = "pylon_";
  constexpr std::size_t kShown = 4;
  constexpr std::size_t kTokenish = 8;  // hex digits after the prefix that make a token's shape
  std::string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    const std::size_t at = text.find(kPrefix, i);
    if (at == std::string_view::npos) {
      out.append(text.substr(i));
      break;
    }
    const std::size_t start = at + kPrefix.size();
    std::size_t hex_end = start;
    while (hex_end < text.size() && is_hex(text[hex_end])) ++hex_end;
    out.append(text.substr(i, start - i));
    if (hex_end - start >= kTokenish) {
      std::size_t end = hex_end;
      while (end < text.size() && is_alnum(text[end])) ++end;
      out.append(text.substr(start, kShown)).append("\u2026");
      i = end;
    } else {
      i = start;
    }
  }
  return out;
}

std::string escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (byte < 0x20 || byte == 0x7f) {
      constexpr std::string_view kHex = "0123456789abcdef";
      out += "\\x";
      out += kHex[byte >> 4U];
      out += kHex[byte & 0xfU];
    } else {
      out += c;
    }
  }
  return out;
}

std::string iso8601(std::int64_t unix_seconds) {
  if (!is_showable_time(unix_seconds)) return "out-of-range";
  const Civil t = civil(unix_seconds);
  return padded(t.year, 4) + '-' + padded(t.month, 2) + '-' + padded(t.day, 2) + 'T' +
         padded(t.hour, 2) + ':' + padded(t.minute, 2) + ':' + padded(t.second, 2) + 'Z';
}

std::string short_time(std::int64_t unix_seconds) {
  if (!is_showable_time(unix_seconds)) return "out-of-range";
  const Civil t = civil(unix_seconds);
  return padded(t.year, 4) + '-' + padded(t.month, 2) + '-' + padded(t.day, 2) + ' ' +
         padded(t.hour, 2) + ':' + padded(t.minute, 2);
}

std::string relative(std::int64_t when, std::int64_t now) {
  if (!is_showable_time(when) || !is_showable_time(now)) return "out of range";
  const std::int64_t delta = when >= now ? when - now : now - when;
  std::string text;
  if (delta >= 86400) {
    text = std::to_string(delta / 86400) + "d " + std::to_string(delta % 86400 / 3600) + "h";
  } else if (delta >= 3600) {
    text = std::to_string(delta / 3600) + "h " + std::to_string(delta % 3600 / 60) + "m";
  } else if (delta >= 60) {
    text = std::to_string(delta / 60) + "m " + std::to_string(delta % 60) + "s";
  } else {
    text = std::to_string(delta) + "s";
  }
  return when >= now ? "in " + text : text + " ago";
}

std::optional<std::int64_t> parse_time(std::string_view text) {
  constexpr std::size_t kMaxDigits = 12;  // kMaxSessionTime has 12
  if (!text.empty() && text.size() <= kMaxDigits &&
      text.find_first_not_of("0123456789") == std::string_view::npos) {
    Scanner in(text);
    const std::optional<std::int64_t> seconds = in.digits(text.size());
    return seconds && *seconds <= pylon::kMaxSessionTime ? seconds : std::nullopt;
  }
  Scanner in(text);
  std::optional<Civil> t = scan_date(in);
  if (!t) return std::nullopt;
  if ((in.skip('T') || in.skip(' ')) && !scan_clock(in, *t)) return std::nullopt;
  in.skip('Z');
  if (!in.done() || t->year < 1970 || t->month < 1 || t->month > 12 || t->day < 1 || t->hour > 23 ||
      t->minute > 59 || t->second > 59) {
    return std::nullopt;
  }
  const std::int64_t seconds = days_from_civil(t->year, t->month, t->day) * 86400 + t->hour * 3600 +
                               t->minute * 60 + t->second;
  const Civil back = civil(seconds);
  if (back.month != t->month || back.day != t->day) return std::nullopt;  // 2026-02-30
  return seconds;
}

std::string user_label(const pylon::Session& session) {
  return session.is_anonymous() ? std::string("(anonymous)") : session.user_id;
}

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const auto n = (static_cast<unsigned>(static_cast<unsigned char>(bytes[i])) << 16U) |
                   (static_cast<unsigned>(static_cast<unsigned char>(bytes[i + 1])) << 8U) |
                   static_cast<unsigned>(static_cast<unsigned char>(bytes[i + 2]));
    out += kBase64[(n >> 18U) & 63U];
    out += kBase64[(n >> 12U) & 63U];
    out += kBase64[(n >> 6U) & 63U];
    out += kBase64[n & 63U];
  }
  const std::size_t rest = bytes.size() - i;
  if (rest > 0) {
    unsigned n = static_cast<unsigned>(static_cast<unsigned char>(bytes[i])) << 16U;
    if (rest == 2) n |= static_cast<unsigned>(static_cast<unsigned char>(bytes[i + 1])) << 8U;
    out += kBase64[(n >> 18U) & 63U];
    out += kBase64[(n >> 12U) & 63U];
    out += rest == 2 ? kBase64[(n >> 6U) & 63U] : '=';
    out += '=';
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    std::array<int, 4> v{};
    std::size_t pad = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      const char c = text[i + k];
      if (c == '=' && i + 4 == text.size() && k >= 2) {
        v.at(k) = 0;
        ++pad;
      } else {
        if (pad > 0) return std::nullopt;
        v.at(k) = base64_value(c);
        if (v.at(k) < 0) return std::nullopt;
      }
    }
    const auto n = (static_cast<unsigned>(v[0]) << 18U) | (static_cast<unsigned>(v[1]) << 12U) |
                   (static_cast<unsigned>(v[2]) << 6U) | static_cast<unsigned>(v[3]);
    out += static_cast<char>((n >> 16U) & 0xFFU);
    if (pad < 2) out += static_cast<char>((n >> 8U) & 0xFFU);
    if (pad < 1) out += static_cast<char>(n & 0xFFU);
  }
  return out;
}

nlohmann::json session_json(const pylon::Session& s, std::int64_t now, bool with_data) {
  const auto text = [](const std::optional<std::string>& value) {
    return value ? nlohmann::json(*value) : nlohmann::json(nullptr);
  };
  nlohmann::json object = {
      {"id", s.id},
      {"user_id", s.user_id},
      {"tenant_id", text(s.tenant_id)},
      {"created_at", s.created_at},
      {"last_seen_at", s.last_seen_at},
      {"expires_at", s.expires_at},
      {"absolute_expires_at", s.absolute_expires_at},
      {"device", text(s.device)},
      {"ip", text(s.ip)},
      {"idp_session_id", text(s.idp_session_id)},
      {"anonymous", s.is_anonymous()},
      {"authenticated_at", s.authenticated_at},
      {"idle_timeout_seconds",
       s.idle_timeout_seconds ? nlohmann::json(*s.idle_timeout_seconds) : nlohmann::json(nullptr)},
      {"data_bytes", s.data.size()},
  };
  if (!with_data) object["expired"] = s.expires_at <= now;
  if (with_data) object["data_base64"] = base64_encode(s.data);
  return object;
}

pylon::Session session_from_json(const nlohmann::json& object) {
  if (!object.is_object()) throw Failure(kExitNotFound, "not a JSON object");
  pylon::Session s;
  const std::optional<std::string> id = optional_text(object, "id");
  const std::optional<std::string> user = optional_text(object, "user_id");
  if (!id) throw Failure(kExitNotFound, "no id");
  if (!user) throw Failure(kExitNotFound, "no user_id");
  s.id = *id;
  s.user_id = *user;
  s.tenant_id = optional_text(object, "tenant_id");
  s.created_at = integer(object, "created_at", true);
  s.last_seen_at = integer(object, "last_seen_at", true);
  s.expires_at = integer(object, "expires_at", true);
  s.absolute_expires_at = integer(object, "absolute_expires_at", false);
  s.device = optional_text(object, "device");
  s.ip = optional_text(object, "ip");
  s.idp_session_id = optional_text(object, "idp_session_id");
  if (object.contains("authenticated_at")) {
    s.authenticated_at = integer(object, "authenticated_at", true);
  } else {
    s.authenticated_at = s.is_anonymous() ? 0 : s.created_at;  // as migration 0005 sets it
  }
  const auto idle = object.find("idle_timeout_seconds");
  if (idle != object.end() && !idle->is_null()) {
    s.idle_timeout_seconds = integer(object, "idle_timeout_seconds", true);
  }
  if (const std::optional<std::string> data = optional_text(object, "data_base64")) {
    std::optional<std::string> bytes = base64_decode(*data);
    if (!bytes) throw Failure(kExitNotFound, "data_base64 is not base64");
    s.data = *std::move(bytes);
  }
  return s;
}

std::string dump(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void print_field(std::ostream& out, std::string_view key, std::string_view value) {
  std::string label = std::string(key) + ":";
  label.resize(std::max<std::size_t>(label.size() + 1, 17), ' ');
  out << label << redact_tokens(value) << '\n';
}

void print_session(std::ostream& out, const pylon::Session& s, std::int64_t now) {
  const auto optional = [](const std::optional<std::string>& text) {
    return text ? escape(*text) : std::string("-");
  };
  print_field(out, "id", s.id);
  print_field(out, "user", s.is_anonymous() ? std::string("(anonymous)") : escape(s.user_id));
  print_field(out, "tenant", optional(s.tenant_id));
  print_field(out, "device", optional(s.device));
  print_field(out, "ip", optional(s.ip));
  print_field(out, "idp_session_id", optional(s.idp_session_id));
  print_field(out, "created", iso8601(s.created_at) + " (" + std::to_string(s.created_at) + ")");
  print_field(out, "last_seen",
              iso8601(s.last_seen_at) + " (" + std::to_string(s.last_seen_at) + ")");
  print_field(out, "expires",
              iso8601(s.expires_at) + " (" + std::to_string(s.expires_at) + "), " +
                  (s.expires_at <= now ? "expired " : "") + relative(s.expires_at, now));
  if (s.absolute_expires_at != 0) {
    print_field(
        out, "absolute_expiry",
        iso8601(s.absolute_expires_at) + " (" + std::to_string(s.absolute_expires_at) + ")");
  }
  print_field(out, "authenticated",
              s.is_anonymous() || s.authenticated_at == 0
                  ? std::string("never (0)")
                  : iso8601(s.authenticated_at) + " (" + std::to_string(s.authenticated_at) +
                        "), " + relative(s.authenticated_at, now));
  print_field(out, "idle_timeout",
              !s.idle_timeout_seconds        ? std::string("the store's")
              : *s.idle_timeout_seconds == 0 ? std::string("none (0)")
                                             : std::to_string(*s.idle_timeout_seconds) + " s");
  print_field(out, "data", std::to_string(s.data.size()) + " bytes");
}

void Table::header(std::ostream& out) const {
  std::vector<std::string> titles;
  titles.reserve(columns_.size());
  for (const Column& column : columns_) titles.push_back(column.title);
  row(out, titles);
}

void Table::row(std::ostream& out, const std::vector<std::string>& cells) const {
  std::string line;
  for (std::size_t i = 0; i < columns_.size() && i < cells.size(); ++i) {
    const std::string cell = redact_tokens(escape(cells[i]));
    if (i + 1 == columns_.size()) {
      line += cell;  // the last column is not cut: nothing follows it
    } else {
      line += fit(cell, columns_[i].width);
      line += "  ";
    }
  }
  while (!line.empty() && line.back() == ' ') line.pop_back();
  out << line << '\n';
}

}  // namespace sessionctl

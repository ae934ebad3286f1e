// pylon-sessions: the PostgreSQL backend, built when PYLON_WITH_POSTGRES is defined.
//
// This file owns everything that touches libpq; it is the only file that includes <libpq-fe.h>.
// open_backend() (session_backend.cpp) hands it postgres:// and postgresql:// URLs unchanged, so
// sslmode, connect_timeout, application_name and the rest work as libpq documents them.
//
// What it promises, on top of the SessionBackend contract:
//   - Same values as the SQLite backend, byte for byte. The schema (migrations/postgres/) mirrors
//     SQLite's column for column; every value is a bound parameter sent in binary format, so
//     `data` round-trips NUL bytes and invalid UTF-8; text PostgreSQL cannot hold is refused with
//     the same Error as on SQLite before anything is sent.
//   - Every mutation is one autocommit statement, acknowledged once the server has committed it
//     (save_batch() and insert_new() too, unless their rows exceed 32 MiB: then one transaction
//     of several; insert_new() with a cap per user is always one transaction of several).
//   - A lost connection fails the call in flight with kConnectionLost and the next call
//     reconnects. A statement whose outcome is unknown is never sent again behind the caller's
//     back: only a connection found dead *before* sending is replaced silently.
//   - No call hangs: each has PostgresOptions::deadline (6 s by default) to get its turn on the
//     connection, to reconnect, and to hear from the server. A server that is frozen, or a
//     network that silently drops packets, fails the call when it runs out, instead of after
//     the kernel's TCP timeouts (minutes).
//   - No message carries the password: a URL that readers could split differently is refused
//     before libpq sees it (database_url.cpp), the URL is shown through redact_url(), the server
//     through its host, port and database name, and every text from libpq is scrubbed of every
//     string that some reading of the URL takes for a password, down to four bytes of one.
//   - Failures carry the code that says whether to retry: the server refusing the connection as
//     configured (authentication, a database or role that does not exist) is kConfiguration, a
//     write that a constraint or trigger refuses is kInvalidArgument as on SQLite, and a table
//     that is not the one the schema version promises is kCorruptDatabase, found before anything
//     is written.
//
// The file reads in order:
//   1. libpq handles   RAII for PGconn and PGresult; parameters and columns in binary format
//   2. errors          SQLSTATE to ErrorCode in one function; messages without passwords
//   3. the connection  PgConnection: connecting, durability, the deadline, noticing a dead
//                      connection and reconnecting; exec, exec_params, exec_prepared
//   4. migrations      PgMigrations: the embedded schema, the advisory lock, pylon adoption,
//                      the tables' shape
//   5. the backend     PostgresBackend: the statements, their parameters, the SessionBackend
//                      calls
//   6. the change log  PgChangeSource: a connection of its own that LISTENs for the change
//                      log's NOTIFY and reads the log for a store's ChangeFeed
#ifdef PYLON_WITH_POSTGRES  // without it this file is empty, so it may always be compiled
#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "internal/backend_shared.hpp"
#include "internal/session_row.hpp"
#include "session_backend.hpp"

namespace pylon {

// ================================================================================================
// 1. libpq handles
//
// PGconn and PGresult are owned by unique_ptrs from the moment libpq returns them, so no path,
// thrown or not, leaks one. Parameters and result columns use the binary format: text is its
// bytes (no NUL terminator needed), bytea is its bytes (no escaping), int8 is eight bytes
// big-endian. What the caller gave is exactly what the server gets, and back.
// ================================================================================================

namespace {

using PgHandle = std::unique_ptr<PGconn, detail::FreeWith<PQfinish>>;
using PgResult = std::unique_ptr<PGresult, detail::FreeWith<PQclear>>;
using PgConninfo = std::unique_ptr<PQconninfoOption, detail::FreeWith<PQconninfoFree>>;
using PgText = std::unique_ptr<char, detail::FreeWith<PQfreemem>>;

// OIDs of the built-in types we bind and read. They are fixed in every PostgreSQL release;
// catalog/pg_type_d.h, which names them, is a server header that client builds may lack.
constexpr Oid kByteaOid = 17;
constexpr Oid kInt8Oid = 20;
constexpr Oid kTextOid = 25;
constexpr Oid kByteaArrayOid = 1001;
constexpr Oid kTextArrayOid = 1009;
constexpr Oid kInt8ArrayOid = 1016;
constexpr int kBinaryFormat = 1;

// How a session column of each kind travels, bound and read in binary format (section 5): text
// as text, an integer as int8, bytes as bytea.
constexpr Oid oid_of(detail::ColumnKind kind) noexcept {
  switch (kind) {
    case detail::ColumnKind::kText:
      return kTextOid;
    case detail::ColumnKind::kInteger:
      return kInt8Oid;
    case detail::ColumnKind::kBytes:
      return kByteaOid;
  }
  return kTextOid;
}

// The type format_type() names for oid_of(kind): the type the table must give the column.
constexpr std::string_view postgres_type_of(detail::ColumnKind kind) noexcept {
  switch (kind) {
    case detail::ColumnKind::kText:
      return "text";
    case detail::ColumnKind::kInteger:
      return "bigint";
    case detail::ColumnKind::kBytes:
      return "bytea";
  }
  return "text";
}

// A column whose PostgreSQL type is not its kind's would be bound and read as another type:
// binary int8 read from an int4 column is garbage, not an error. So the table may not say so.
constexpr bool postgres_types_match_kinds() noexcept {
  // NOLINTNEXTLINE(readability-use-anyofallof): std::all_of is constexpr only from C++20
  for (const detail::SessionColumn& column : detail::kSessionColumns) {
    if (postgres_type_of(column.kind) != column.postgres_type) return false;
  }
  return true;
}
static_assert(postgres_types_match_kinds(),
              "kSessionColumns: a column's postgres_type must be text, bigint or bytea as its "
              "kind is text, integer or bytes (pg_backend.cpp binds and reads it so)");

std::array<char, 8> encode_int8(std::int64_t value) noexcept {
  const auto bits = static_cast<std::uint64_t>(value);
  std::array<char, 8> bytes{};
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    bytes[i] = static_cast<char>((bits >> (56U - 8U * i)) & 0xFFU);
  }
  return bytes;
}

// `bytes` holds the eight bytes of an int8 value.
std::int64_t decode_int8(std::string_view bytes) noexcept {
  std::uint64_t bits = 0;
  for (const char byte : bytes.substr(0, 8)) {
    bits = (bits << 8U) | static_cast<unsigned char>(byte);
  }
  return static_cast<std::int64_t>(bits);
}

// The parameters of one statement. It points into the caller's strings (and into itself, for
// integers), so it lives on the caller's stack for one call and is never copied or moved.
class Params {
 public:
  // The most any statement binds: replace()'s old id and a whole Session.
  static constexpr std::size_t kCapacity = detail::kSessionColumns.size() + 1;

  Params() = default;
  Params(const Params&) = delete;
  Params& operator=(const Params&) = delete;
  Params(Params&&) = delete;
  Params& operator=(Params&&) = delete;
  ~Params() = default;

  Params& text(std::string_view value) { return add(kTextOid, value.data(), value.size()); }
  Params& optional_text(const std::optional<std::string>& value) {
    if (!value) return add(kTextOid, nullptr, 0, /*is_null=*/true);
    return text(*value);
  }
  Params& int8(std::int64_t value) {
    std::array<char, 8>& slot = integers_.at(count_);
    slot = encode_int8(value);
    return add(kInt8Oid, slot.data(), slot.size());
  }
  Params& optional_int8(const std::optional<std::int64_t>& value) {
    if (!value) return add(kInt8Oid, nullptr, 0, /*is_null=*/true);
    return int8(*value);
  }
  Params& bytea(std::string_view value) { return add(kByteaOid, value.data(), value.size()); }
  // A member of a Session as the parameter of its column (bind_session()), typed by the
  // column's kind.
  Params& field(const detail::SessionColumn& column, const std::string& value) {
    return add(oid_of(column.kind), value.data(), value.size());
  }
  Params& field(const detail::SessionColumn& column, const std::optional<std::string>& value) {
    if (!value) return add(oid_of(column.kind), nullptr, 0, /*is_null=*/true);
    return field(column, *value);
  }
  Params& field(const detail::SessionColumn& /*column*/, std::int64_t value) { return int8(value); }
  Params& field(const detail::SessionColumn& /*column*/, const std::optional<std::int64_t>& value) {
    return optional_int8(value);
  }
  // An array already in binary format (ArrayParam), of the array type `type`.
  Params& array(Oid type, std::string_view encoded) {
    return add(type, encoded.data(), encoded.size());
  }

  [[nodiscard]] int count() const noexcept { return static_cast<int>(count_); }
  [[nodiscard]] const Oid* types() const noexcept { return types_.data(); }
  [[nodiscard]] const char* const* values() const noexcept { return values_.data(); }
  [[nodiscard]] const int* lengths() const noexcept { return lengths_.data(); }
  [[nodiscard]] const int* formats() const noexcept { return formats_.data(); }

 private:
  Params& add(Oid type, const char* data, std::size_t size, bool is_null = false) {
    if (count_ == kCapacity) {
      throw Error(ErrorCode::kInternal, "a PostgreSQL statement was given too many parameters");
    }
    if (size > static_cast<std::size_t>(INT_MAX)) {
      throw Error(ErrorCode::kInvalidArgument,
                  "a session field is larger than PostgreSQL can take");
    }
    types_.at(count_) = type;
    // libpq reads a null pointer as SQL NULL: an empty string_view may have one, and must stay
    // an empty value.
    values_.at(count_) = is_null ? nullptr : (data == nullptr ? "" : data);
    lengths_.at(count_) = static_cast<int>(size);
    formats_.at(count_) = kBinaryFormat;
    ++count_;
    return *this;
  }

  std::size_t count_ = 0;
  std::array<Oid, kCapacity> types_{};
  std::array<const char*, kCapacity> values_{};
  std::array<int, kCapacity> lengths_{};
  std::array<int, kCapacity> formats_{};
  std::array<std::array<char, 8>, kCapacity> integers_{};
};

// One column of a batch as a one-dimensional PostgreSQL array in binary format (what the
// server's array_recv reads): dimensions and element type, then each element as its length in
// four big-endian bytes (-1 for NULL) followed by its bytes, int8 elements as eight bytes.
class ArrayParam {
 public:
  ArrayParam(Oid element, std::size_t count) {
    if (count > static_cast<std::size_t>(INT_MAX)) {
      throw Error(ErrorCode::kInvalidArgument,
                  "a batch has more sessions than PostgreSQL can take");
    }
    append_int4(1);  // dimensions
    append_int4(0);  // whether an element is NULL: set by optional_bytes()
    append_int4(static_cast<std::int32_t>(element));
    append_int4(static_cast<std::int32_t>(count));  // elements of the dimension
    append_int4(1);                                 // its lower bound
  }

  void reserve(std::size_t element_bytes) { bytes_.reserve(bytes_.size() + element_bytes); }
  void bytes(std::string_view value) {
    if (value.size() > static_cast<std::size_t>(INT_MAX)) {
      throw Error(ErrorCode::kInvalidArgument,
                  "a session field is larger than PostgreSQL can take");
    }
    append_int4(static_cast<std::int32_t>(value.size()));
    bytes_.append(value.data(), value.size());
  }
  void optional_bytes(const std::optional<std::string>& value) {
    if (value) {
      bytes(*value);
      return;
    }
    null();
  }
  void int8(std::int64_t value) {
    append_int4(8);
    const std::array<char, 8> big_endian = encode_int8(value);
    bytes_.append(big_endian.data(), big_endian.size());
  }
  void optional_int8(const std::optional<std::int64_t>& value) {
    if (value) {
      int8(*value);
      return;
    }
    null();
  }
  // A member of a Session as the next element of its column's array (bind_sessions()): text
  // and bytea elements are both their bytes.
  void field(const std::string& value) { bytes(value); }
  void field(const std::optional<std::string>& value) { optional_bytes(value); }
  void field(std::int64_t value) { int8(value); }
  void field(const std::optional<std::int64_t>& value) { optional_int8(value); }
  // The bytes field(value) appends.
  static std::size_t field_size(const std::string& value) noexcept { return 4 + value.size(); }
  static std::size_t field_size(const std::optional<std::string>& value) noexcept {
    return 4 + (value ? value->size() : 0);
  }
  static std::size_t field_size(std::int64_t /*value*/) noexcept { return 4 + 8; }
  static std::size_t field_size(const std::optional<std::int64_t>& /*value*/) noexcept {
    return 4 + 8;  // a NULL takes 4: this errs high, as a bound should
  }
  [[nodiscard]] std::string_view encoded() const noexcept { return bytes_; }

 private:
  static constexpr std::size_t kHasNullByte = 7;  // the low byte of the second header word

  void null() {
    bytes_[kHasNullByte] = 1;
    append_int4(-1);
  }
  void append_int4(std::int32_t value) {
    const auto bits = static_cast<std::uint32_t>(value);
    const std::array<char, 4> big_endian = {
        static_cast<char>((bits >> 24U) & 0xFFU), static_cast<char>((bits >> 16U) & 0xFFU),
        static_cast<char>((bits >> 8U) & 0xFFU), static_cast<char>(bits & 0xFFU)};
    bytes_.append(big_endian.data(), big_endian.size());
  }

  std::string bytes_;
};

// Column `column` of row `row`, in binary format.
std::string text_at(const PGresult* result, int row, int column) {
  const char* value = PQgetvalue(result, row, column);
  const int length = PQgetlength(result, row, column);
  return {value, static_cast<std::size_t>(std::max(length, 0))};
}

std::string text_at(const PGresult* result, int column) { return text_at(result, 0, column); }

// Column `column` of row 0 into `into`, which keeps its buffer: a load reading every row into
// one object allocates only when a value outgrows it.
void assign_text_at(const PGresult* result, int column, std::string& into) {
  into.assign(PQgetvalue(result, 0, column),
              static_cast<std::size_t>(std::max(PQgetlength(result, 0, column), 0)));
}

void assign_optional_text_at(const PGresult* result, int column, std::optional<std::string>& into) {
  if (PQgetisnull(result, 0, column) != 0) {
    into.reset();
    return;
  }
  if (!into) into.emplace();
  assign_text_at(result, column, *into);
}

// Column `column` of row 0, an int8 in binary format; 0 for NULL (the columns are NOT NULL).
std::int64_t int8_at(const PGresult* result, int column) {
  if (PQgetisnull(result, 0, column) != 0 || PQgetlength(result, 0, column) != 8) return 0;
  return decode_int8({PQgetvalue(result, 0, column), 8});
}

// The same for a column that may be NULL: nullopt then.
std::optional<std::int64_t> optional_int8_at(const PGresult* result, int column) {
  if (PQgetisnull(result, 0, column) != 0) return std::nullopt;
  return int8_at(result, column);
}

// Column `column` of row 0 into a member of a Session (read_session_result()), by the member's
// type: text and bytea are both their bytes.
void read_field(const PGresult* result, int column, std::string& into) {
  assign_text_at(result, column, into);
}
void read_field(const PGresult* result, int column, std::optional<std::string>& into) {
  assign_optional_text_at(result, column, into);
}
void read_field(const PGresult* result, int column, std::int64_t& into) {
  into = int8_at(result, column);
}
void read_field(const PGresult* result, int column, std::optional<std::int64_t>& into) {
  into = optional_int8_at(result, column);
}

// ================================================================================================
// 2. Errors
//
// One function maps what PostgreSQL said to an ErrorCode; the retry advice of the codes
// (session_backend.hpp) decides the mapping. Messages name the action and the database; the
// SQLSTATE and the server's primary message go to backend_detail. The server's DETAIL line is
// left out: it can quote row values.
// ================================================================================================

// `connection_bad`: libpq reports the connection dead after the failure. That decides before
// any SQLSTATE does: whatever the statement hit, the next call must reconnect.
ErrorCode error_code_for_postgres(std::string_view sqlstate, bool connection_bad) noexcept {
  if (connection_bad) return ErrorCode::kConnectionLost;
  // A failure without SQLSTATE on a live connection was made by libpq itself (out of memory,
  // a protocol misuse): ours to fix.
  if (sqlstate.size() != 5) return ErrorCode::kInternal;
  const std::string_view error_class = sqlstate.substr(0, 2);

  // The server went away or is going: 08 connection exceptions, administrator or crash
  // shutdown, a server still starting up, the session or the database terminated.
  if (error_class == "08" || sqlstate == "57P01" || sqlstate == "57P02" || sqlstate == "57P03" ||
      sqlstate == "57P04" || sqlstate == "57P05") {
    return ErrorCode::kConnectionLost;
  }
  if (sqlstate == "53100") return ErrorCode::kStorageFull;  // disk_full
  // Other insufficient resources (out of memory, too many connections) pass: retry later.
  if (error_class == "53") return ErrorCode::kBusy;
  // Serialization failure, deadlock, lock_timeout, statement_timeout, an object in use.
  if (error_class == "40" || sqlstate == "55P03" || sqlstate == "55006" || sqlstate == "57014") {
    return ErrorCode::kBusy;
  }
  // A read-only transaction (a hot standby, default_transaction_read_only), or a role that may
  // not write the table: the server refuses writes.
  if (sqlstate == "25006" || sqlstate == "42501") return ErrorCode::kReadOnly;
  // Data exceptions (invalid UTF-8, untranslatable characters, values out of range), integrity
  // constraints, program limits (a bytea over 1 GB): the value cannot be stored. A trigger that
  // refuses a row raises an exception (P0001, RAISE EXCEPTION) or fails an ASSERT (P0004): the
  // row cannot be stored either, as SQLITE_CONSTRAINT from a trigger's RAISE(ABORT) on SQLite.
  if (error_class == "22" || error_class == "23" || error_class == "54" || sqlstate == "P0001" ||
      sqlstate == "P0004") {
    return ErrorCode::kInvalidArgument;
  }
  // Authentication or authorization refused (class 28), a database that does not exist: the
  // server refuses how it is asked, and asking again changes nothing.
  if (error_class == "28" || sqlstate == "3D000") return ErrorCode::kConfiguration;
  // Our table or a column of it is missing or of another type: not the schema its version
  // promises. data_corrupted and index_corrupted speak for themselves.
  if (sqlstate == "42P01" || sqlstate == "42703" || sqlstate == "42804" || sqlstate == "XX001" ||
      sqlstate == "XX002") {
    return ErrorCode::kCorruptDatabase;
  }
  if (error_class == "58") return ErrorCode::kIo;  // system errors: the server's I/O failed
  return ErrorCode::kInternal;
}

// The same at connection time, when the server's refusal is final more often: the role's
// password or pg_hba.conf (class 28), a database that does not exist (3D000), no CONNECT
// privilege (42501), a setting in `options` the server does not know or accept (42704, 22023:
// classes 42 and 22), a database that takes no connections (55000), a feature the server lacks
// (0A000). `needs_password`: the server asked for a password and none was given. A failure
// without SQLSTATE (refused, unreachable, a name that does not resolve, TLS) may pass.
ErrorCode error_code_for_connection(std::string_view sqlstate, bool needs_password) noexcept {
  if (needs_password) return ErrorCode::kConfiguration;
  if (sqlstate.size() != 5) return ErrorCode::kConnectionLost;
  const std::string_view error_class = sqlstate.substr(0, 2);
  if (error_class == "28" || error_class == "42" || error_class == "22" || sqlstate == "3D000" ||
      sqlstate == "55000" || sqlstate == "0A000") {
    return ErrorCode::kConfiguration;
  }
  const ErrorCode code = error_code_for_postgres(sqlstate, /*connection_bad=*/false);
  return code == ErrorCode::kInternal ? ErrorCode::kConnectionLost : code;
}

// `text` with every run of bytes that holds one of `secrets`, or four bytes in a row of one,
// replaced by "***" (a secret shorter than four bytes: where it occurs whole). libpq does not put
// passwords in its messages, but it quotes host names, ports and database names, which a URL
// read one way holds what another reading takes for the password; scrubbing costs little, and
// a leaked password costs a lot. Repeated until nothing changes, since a "***" may complete a
// window of a secret that holds '*' with the bytes beside it.
std::string scrub(std::string text, const std::vector<std::string>& secrets) {
  constexpr std::size_t kWindow = 4;
  for (;;) {
    std::vector<bool> hidden(text.size(), false);
    for (const std::string& secret : secrets) {
      const std::size_t width = std::min(secret.size(), kWindow);
      for (std::size_t start = 0; width > 0 && start + width <= secret.size(); ++start) {
        const std::string_view window = std::string_view(secret).substr(start, width);
        for (std::size_t at = text.find(window); at != std::string::npos;
             at = text.find(window, at + 1)) {
          std::fill_n(hidden.begin() + static_cast<std::ptrdiff_t>(at), width, true);
        }
      }
    }
    std::string scrubbed;
    for (std::size_t i = 0; i < text.size(); ++i) {
      if (!hidden[i]) {
        scrubbed += text[i];
      } else if (i == 0 || !hidden[i - 1]) {
        scrubbed += "***";
      }
    }
    if (scrubbed == text) return text;
    text = std::move(scrubbed);
  }
}

// libpq's multi-line messages ("...failed: ...\n\tIs the server running...?\n") on one line:
// a line break becomes "; ", any other run of white space one space.
std::string one_line(std::string_view text) {
  std::string line;
  bool pending_space = false;
  bool pending_break = false;
  for (const char c : text) {
    if (std::isspace(static_cast<unsigned char>(c)) != 0) {
      pending_space = !line.empty();
      pending_break = pending_break || (pending_space && c == '\n');
      continue;
    }
    if (pending_space) line += pending_break ? "; " : " ";
    pending_space = false;
    pending_break = false;
    line += c;
  }
  return line;
}

// Why PQconninfoParse() refused a connection string, in words of our own. libpq's message
// quotes the text it choked on, which may be the password (and a '"' in that text ends the
// quoting early, so no pairing of quotes can tell what to hide); nothing of it is repeated but
// a parameter name made of letters, digits and '_', which the caller scrubs as every message.
std::string parse_failure_reason(std::string_view said) {
  struct Known {
    std::string_view start;
    const char* reason;
  };
  static constexpr std::array<Known, 11> kKnown = {{
      {"invalid percent-encoded token", "a '%' that does not start a %XX escape"},
      {"forbidden value %00", "%00 (a NUL byte) in a percent-encoded value"},
      {"missing \"=\" after", "a word without '=' (a keyword/value string is name=value pairs)"},
      {"unterminated quoted string", "a quoted value without its closing quote"},
      {"invalid connection option", "an unknown connection parameter"},
      {"invalid URI query parameter", "an unknown connection parameter"},
      {"extra key/value separator", "a query parameter with more than one '='"},
      {"missing key/value separator", "a query parameter without '='"},
      {"end of string reached when looking for matching", "an IPv6 address without its ']'"},
      {"IPv6 host address may not be empty", "an empty IPv6 address ([])"},
      {"unexpected character", "an unexpected character after an IPv6 address ([...])"},
  }};
  for (const Known& known : kKnown) {
    if (said.substr(0, known.start.size()) != known.start) continue;
    std::string reason = known.reason;
    const std::size_t open = said.find('"');
    const std::size_t close = said.rfind('"');
    if (reason.find("parameter") != std::string::npos && open != std::string_view::npos &&
        close > open + 1 && close - open <= 65) {
      const std::string_view name = said.substr(open + 1, close - open - 1);
      const bool plain = std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_';
      });
      if (plain) reason.append(" '").append(name).append("'");
    }
    return reason;
  }
  return "libpq cannot parse it (its own message is not shown: it would quote the text)";
}

// What a connection failure's message says, read at PQERRORS_VERBOSE: the server's SQLSTATE
// (after "SEVERITY:  ", the last one when libpq tried several hosts) and the text without it or
// the LOCATION lines that this verbosity adds.
struct ConnectionFailure {
  std::string sqlstate;
  std::string text;
};

ConnectionFailure read_connection_failure(std::string_view message) {
  ConnectionFailure failure;
  const auto is_code_char = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z'); };
  while (!message.empty()) {
    const std::size_t newline = message.find('\n');
    std::string line(message.substr(0, newline));
    message = newline == std::string_view::npos ? std::string_view() : message.substr(newline + 1);
    if (line.rfind("LOCATION:", 0) == 0) continue;
    // "...failed: FATAL:  28P01: password authentication failed for user ..."
    for (std::size_t at = line.find(":  "); at != std::string::npos;
         at = line.find(":  ", at + 1)) {
      const std::size_t code = at + 3;
      if (code + 7 <= line.size() && line.compare(code + 5, 2, ": ") == 0 &&
          std::all_of(line.begin() + static_cast<std::ptrdiff_t>(code),
                      line.begin() + static_cast<std::ptrdiff_t>(code + 5), is_code_char)) {
        failure.sqlstate = line.substr(code, 5);
        line.erase(code, 7);
        break;
      }
    }
    if (!failure.text.empty()) failure.text += '\n';
    failure.text += line;
  }
  return failure;
}

// ================================================================================================
// 3. The connection
//
// PgConnection is one connection to the server and everything that keeps it honest: the call's
// deadline, noticing a dead connection and reconnecting, and turning what libpq says into an
// Error. It knows nothing of sessions: its owner hands it a setup to run on every new server
// session (PostgresBackend prepares its statements there), so a second one can be opened on the
// same URL for another purpose, with a setup of its own.
//
// Running SQL has three plain ways, as libpqxx names them: exec() (constant SQL text),
// exec_params() (SQL and parameters) and exec_prepared() (a prepared statement; whole, or row by
// row). Each first takes a Reconnect, so every call site says whether the call may replace a
// connection found dead before anything is sent (Reconnect::kIfDead) or must use the one it has
// (Reconnect::kNever: inside a transaction, while setting a connection up, or after the caller
// has checked the connection itself). No statement is ever sent twice.
//
// A connection is one call's at a time: a call takes its Turn, which sets the call's deadline;
// a transaction is a Transaction, which rolls back unless committed.
//
// Connecting: the URL goes to PQconnectdbParams as `dbname` with expand_dbname, between two
// groups of keywords. Keywords before it are defaults that the URL overrides (connect_timeout,
// so an unreachable server fails within seconds rather than the OS's minutes; an application
// name for pg_stat_activity). Keywords after it are what this file relies on and the URL cannot
// change: client_encoding=UTF8, because text travels as the caller's UTF-8 bytes.
//
// Durability: save() promises "durable on return". A server (or role, or database) configured
// with synchronous_commit=off acknowledges commits it may lose in a crash, so each connection
// raises it to `local` (wait for the local WAL flush). A URL that asks for `off` itself
// (options=-c synchronous_commit=off) is the application's informed choice and is kept.
//
// Losing the connection: a call first checks the connection. A server that restarted or ended
// our session while we were idle has left an EOF or a FATAL message on the socket; reading it
// marks the connection bad, and the call reconnects (PQreset) and runs the owner's setup again
// before sending anything. A failure while a statement is in flight is reported as
// kConnectionLost and marks the connection broken; the statement is not re-sent (it may have
// been applied), and the next call reconnects.
//
// The deadline: the connection is non-blocking, and every wait (for the socket to take our
// bytes, for the server's reply, for a reconnect) is a poll() bounded by the call's deadline,
// taken when the call starts. Waiting for its turn counts too: behind a call stuck on a frozen
// server, the next one fails with kBusy (it sent nothing) rather than queueing for minutes. A
// load's deadline starts again whenever rows arrive: it bounds silence, not the table's size.
// A call that runs out marks the connection broken; the next call reconnects, on a fresh socket,
// whatever the old one still had in flight.
// ================================================================================================

constexpr const char* kDefaultConnectTimeoutSeconds = "5";

// libpq's default notice processor prints to stderr; a library must not ("relation already
// exists, skipping" from a migration, or a FATAL that arrives while idle).
void ignore_notice(void* /*arg*/, const char* /*message*/) {}

// Whether a call may replace a connection that it finds dead before it sends anything.
enum class Reconnect {
  kIfDead,  // check the connection, and reconnect (running the setup again) if it died
  kNever,   // send on the connection as it is: in a transaction, in setup, or already checked
};

class PgConnection {
 public:
  // A call's hold on the connection, taken by the call's deadline, which it sets.
  class Turn;
  // BEGIN ... COMMIT, rolled back unless committed.
  class Transaction;

  // Connects to `url` (a libpq connection string or URL) and configures the server session,
  // within one `deadline`. The connection counts as being set up (a statement the server cancels
  // is then its configuration's fault) until finish_setup().
  PgConnection(const std::string& url, std::chrono::milliseconds deadline);

  // Runs `setup` now and again on every new server session after a reconnect, before anything
  // else is sent on it, still within the deadline of the opening (or of the call that
  // reconnects); then the connection is set up.
  void finish_setup(std::function<void()> setup);

  PgResult exec(Reconnect reconnect, const char* sql, const std::string& action);
  PgResult exec_params(Reconnect reconnect, const char* sql, const Params& params,
                       const std::string& action);
  PgResult exec_prepared(Reconnect reconnect, const char* name, const Params& params,
                         const std::string& action);
  // The prepared query `name` in single-row mode: each row, a result of one row valid only
  // during the call, goes to `row`. The deadline starts again whenever data arrives.
  void exec_prepared(Reconnect reconnect, const char* name, const Params& params,
                     const std::string& action, const std::function<void(const PGresult*)>& row);
  void prepare(Reconnect reconnect, const char* name, const char* sql,
               const std::vector<Oid>& types);
  // A statement to prepare: its name, its text, its parameters' types.
  struct Statement {
    const char* name;
    std::string sql;
    std::vector<Oid> types;
  };
  // Runs `sql` (constant text, statements separated by ';'; may be empty) and then prepares
  // every statement of `statements`, all in one round trip; for the setup of a new server
  // session, so it never reconnects.
  void setup_in_one_round_trip(const std::string& sql, const std::vector<Statement>& statements);
  // Reconnect::kIfDead on its own, for a caller that must know the server session it will use
  // before it chooses its statements (one prepared on first use, say).
  void reconnect_if_dead();
  // For a connection that LISTENs (its setup sends LISTEN, so a reconnect listens again): true
  // at once when it had to reconnect (notifications sent meanwhile are lost) or a notification
  // from a server process other than `paced_sender` has arrived; a notification from
  // `paced_sender` (0: none) makes it true only once `timeout` has passed. Else waits up to
  // `timeout`; false when nothing came. Reconnects when dead; throws kConnectionLost when the
  // connection fails. Runs in the caller's Turn.
  bool wait_for_notification(std::chrono::milliseconds timeout, int paced_sender = 0);
  // Keeps `*pid` the server process of this connection, as notifications name their sender,
  // while every statement it sent has an outcome known to the caller; 0 from when a statement's
  // outcome is lost (the server may still commit it, and notify) until a new server session is
  // set up.
  void publish_server_pid(std::shared_ptr<std::atomic<int>> pid);

  // "database "app" on host db.internal, port 5432", for messages: never the password.
  [[nodiscard]] std::string target() const;
  // The URL with its password hidden.
  [[nodiscard]] const std::string& shown_url() const noexcept { return shown_url_; }

 private:
  bool read_conninfo(const std::string& url);
  void connect(const std::string& url, bool url_sets_connect_timeout);
  void remember_used_password();
  // NOLINTNEXTLINE(google-runtime-int): pollfd's type
  void wait_for_socket(short events, const std::string& action, bool connecting = false);
  void flush_query(const std::string& action);
  PgResult await_result(const std::string& action);
  PgResult checked_result(const std::string& action);
  // exec() and exec_params() without their Reconnect, for the setup of a new server session,
  // which runs inside a reconnect.
  PgResult send_text(const char* sql, const std::string& action);
  PgResult send_params(const char* sql, const Params& params, const std::string& action);
  PgResult next_result(const std::string& action, bool restart_deadline = false);
  bool is_usable() noexcept;
  bool drain_notifications(int paced_sender, bool* paced);
  void configure_session();
  void note_lost_statement() noexcept;
  // Sets what publish_server_pid() keeps: the server process when `live`, else 0.
  void publish(bool live) noexcept;
  void settle_lost_statement();
  void roll_back() noexcept;
  [[noreturn]] void fail_connection(const std::string& action, bool in_handshake = false);
  [[noreturn]] void fail(const PGresult* result, const std::string& action);
  void check(const PGresult* result, const std::string& action);

  // The connection is one call's at a time: in_use_, under turn_mutex_, with turn_free_ to wait
  // for it until a deadline. (Not a std::timed_mutex: libstdc++ locks it by the steady clock
  // with pthread_mutex_clocklock, which ThreadSanitizer does not see; a condition variable's
  // clock wait it does.)
  std::mutex turn_mutex_;
  std::condition_variable turn_free_;
  bool in_use_ = false;  // guarded by turn_mutex_
  std::chrono::milliseconds deadline_;
  std::chrono::steady_clock::time_point call_deadline_;  // of the call whose Turn it is
  // Until when calls fail at once: a deadline after one ran out waiting for the server.
  std::chrono::steady_clock::time_point unresponsive_until_{};
  std::string shown_url_;  // the URL with its password hidden: describe() and messages
  // Every string some reading of the URL takes for a password, and the password libpq used:
  // scrubbed out of every text libpq gives us.
  std::vector<std::string> secrets_;
  // Opening, or setting a new connection up: a statement cancelled by the server's
  // statement_timeout then says the setting is too short for us, not that the server is busy.
  bool setting_up_ = true;
  PgHandle conn_;
  bool broken_ = false;  // a call saw the connection fail; the next call reconnects
  // The server process of a connection lost with a statement in flight, until it is known to
  // be gone (0: none). A frozen server may still run that statement once it thaws; see
  // settle_lost_statement().
  int lost_statement_pid_ = 0;
  // The owner's setup of every new server session (finish_setup()).
  std::function<void()> setup_;
  std::shared_ptr<std::atomic<int>> published_pid_;  // see publish_server_pid(); may be null
};

PgConnection::PgConnection(const std::string& url, std::chrono::milliseconds deadline)
    : deadline_(deadline), shown_url_(redact_url(url)), secrets_(detail::password_candidates(url)) {
  const bool url_sets_connect_timeout = read_conninfo(url);
  call_deadline_ = std::chrono::steady_clock::now() + deadline_;
  connect(url, url_sets_connect_timeout);
  call_deadline_ = std::chrono::steady_clock::now() + deadline_;
  configure_session();
}

void PgConnection::finish_setup(std::function<void()> setup) {
  setup_ = std::move(setup);
  setup_();
  setting_up_ = false;
}

void PgConnection::publish_server_pid(std::shared_ptr<std::atomic<int>> pid) {
  published_pid_ = std::move(pid);
  publish(!broken_);
}

void PgConnection::publish(bool live) noexcept {
  if (published_pid_) published_pid_->store(live && conn_ ? PQbackendPID(conn_.get()) : 0);
}

// Refuses a connection string libpq cannot parse, and learns from it the password it holds
// (a secret) and whether it sets connect_timeout (the return value).
bool PgConnection::read_conninfo(const std::string& url) {
  char* raw_error = nullptr;
  const PgConninfo conninfo(PQconninfoParse(url.c_str(), &raw_error));
  const PgText parse_error(raw_error);
  if (!conninfo) {
    // Not even the redacted URL: libpq and redact_url() may disagree on what is a password in a
    // string that libpq cannot parse.
    const std::string reason =
        parse_error ? scrub(one_line(parse_failure_reason(parse_error.get())), secrets_)
                    : "out of memory";
    throw Error(
        ErrorCode::kInvalidArgument,
        "malformed PostgreSQL connection string (not shown: it may hold credentials): " + reason);
  }
  bool url_sets_connect_timeout = false;
  // libpq's option list is a C array ended by a null keyword.
  for (const PQconninfoOption* option = conninfo.get(); option->keyword != nullptr;
       ++option) {  // NOLINT(cppcoreguidelines-pro-bounds-pointer-arithmetic)
    if (option->val == nullptr || *option->val == '\0') continue;
    if (std::strcmp(option->keyword, "password") == 0) secrets_.emplace_back(option->val);
    if (std::strcmp(option->keyword, "connect_timeout") == 0) url_sets_connect_timeout = true;
  }
  return url_sets_connect_timeout;
}

void PgConnection::connect(const std::string& url, bool url_sets_connect_timeout) {
  std::vector<const char*> keywords;
  std::vector<const char*> values;
  // PGCONNECT_TIMEOUT is the user's choice too; an explicit keyword would hide it.
  const bool env_sets_connect_timeout =
      std::getenv("PGCONNECT_TIMEOUT") != nullptr;  // NOLINT(concurrency-mt-unsafe): read-only
  if (!url_sets_connect_timeout && !env_sets_connect_timeout) {
    keywords.push_back("connect_timeout");
    values.push_back(kDefaultConnectTimeoutSeconds);
  }
  keywords.push_back("fallback_application_name");
  values.push_back("pylon-sessions");
  keywords.push_back("dbname");
  values.push_back(url.c_str());
  keywords.push_back("client_encoding");
  values.push_back("UTF8");
  keywords.push_back(nullptr);
  values.push_back(nullptr);

  // Started, then polled rather than PQconnectdbParams(): the server's SQLSTATE reaches a
  // connection failure's message only at PQERRORS_VERBOSE, which must be set before the server
  // answers (the connection keeps it for every reconnect). Polling, libpq does not apply
  // connect_timeout itself: the wait ends at the earlier of it and the deadline.
  conn_.reset(PQconnectStartParams(keywords.data(), values.data(), /*expand_dbname=*/1));
  if (!conn_) {
    throw Error(ErrorCode::kInternal,
                "libpq could not allocate a connection (out of memory) for " + shown_url_);
  }
  PQsetNoticeProcessor(conn_.get(), ignore_notice, nullptr);
  PQsetErrorVerbosity(conn_.get(), PQERRORS_VERBOSE);
  const PgConninfo in_use(PQconninfo(conn_.get()));
  for (const PQconninfoOption* option = in_use.get(); option && option->keyword != nullptr;
       ++option) {  // NOLINT(cppcoreguidelines-pro-bounds-pointer-arithmetic): libpq's C array
    if (std::strcmp(option->keyword, "connect_timeout") != 0 || option->val == nullptr) continue;
    const long seconds = std::strtol(option->val, nullptr, 10);  // NOLINT(google-runtime-int)
    if (seconds > 0) {  // libpq waits at least 2 s; 0 or less: without a limit
      call_deadline_ = std::min(call_deadline_, std::chrono::steady_clock::now() +
                                                    std::chrono::seconds(std::max(seconds, 2L)));
    }
  }
  const std::string action = "cannot connect to PostgreSQL";
  if (PQstatus(conn_.get()) == CONNECTION_BAD) fail_connection(action, /*in_handshake=*/true);
  for (PostgresPollingStatusType status = PGRES_POLLING_WRITING; status != PGRES_POLLING_OK;
       status = PQconnectPoll(conn_.get())) {
    if (status == PGRES_POLLING_FAILED) fail_connection(action, /*in_handshake=*/true);
    wait_for_socket(status == PGRES_POLLING_READING ? POLLIN : POLLOUT, action,
                    /*connecting=*/true);
  }
  remember_used_password();
  if (PQsetnonblocking(conn_.get(), 1) != 0) fail_connection("cannot set up the connection to");
}

// A password from PGPASSWORD or ~/.pgpass is as secret as one in the URL.
void PgConnection::remember_used_password() {
  const char* used_password = conn_ ? PQpass(conn_.get()) : nullptr;
  if (used_password == nullptr || *used_password == '\0') return;
  if (std::find(secrets_.begin(), secrets_.end(), used_password) == secrets_.end()) {
    secrets_.emplace_back(used_password);
  }
}

class PgConnection::Turn {
 public:
  Turn(PgConnection& connection, const std::string& action) : connection_(connection) {
    const auto deadline = std::chrono::steady_clock::now() + connection.deadline_;
    std::unique_lock<std::mutex> lock(connection.turn_mutex_);
    if (!connection.turn_free_.wait_until(lock, deadline,
                                          [&connection] { return !connection.in_use_; })) {
      throw Error(ErrorCode::kBusy, action + " " + connection.shown_url_ +
                                        ": the call ahead of this one has held the " +
                                        "connection for the whole deadline of " +
                                        std::to_string(connection.deadline_.count()) +
                                        " ms (PostgresOptions::deadline); nothing was sent");
    }
    // Behind a call that found the server unresponsive, waiting a whole deadline again (and
    // again for each call queued since) would hang callers after all: they fail at once, for
    // one deadline, and the first call after that tries a new connection.
    if (std::chrono::steady_clock::now() < connection.unresponsive_until_) {
      throw Error(ErrorCode::kConnectionLost,
                  action + " " + connection.shown_url_ +
                      ": the server did not answer within the deadline of " +
                      std::to_string(connection.deadline_.count()) +
                      " ms a moment ago; calls fail at once for one deadline, then the next one "
                      "reconnects (nothing was sent)",
                  "pylon: server unresponsive");
    }
    connection.in_use_ = true;
    connection.call_deadline_ = deadline;
  }
  ~Turn() {
    {
      const std::lock_guard<std::mutex> lock(connection_.turn_mutex_);
      connection_.in_use_ = false;
    }
    connection_.turn_free_.notify_one();
  }
  Turn(const Turn&) = delete;
  Turn& operator=(const Turn&) = delete;
  Turn(Turn&&) = delete;
  Turn& operator=(Turn&&) = delete;

 private:
  PgConnection& connection_;
};

// "database "app" on host db.internal, port 5432", from what libpq resolved (defaults and
// environment included), for messages. Never the password, never the full conninfo.
std::string PgConnection::target() const {
  const char* db = conn_ ? PQdb(conn_.get()) : nullptr;
  const char* host = conn_ ? PQhost(conn_.get()) : nullptr;
  const char* port = conn_ ? PQport(conn_.get()) : nullptr;
  std::string text = "database \"" + std::string(db != nullptr ? db : "?") + "\"";
  const std::string host_text = host != nullptr && *host != '\0' ? host : "localhost";
  text += host_text[0] == '/' || host_text[0] == '@' ? " via the Unix socket in " : " on host ";
  text += host_text + ", port " + (port != nullptr && *port != '\0' ? port : "5432");
  return scrub(text, secrets_);
}

// `in_handshake`: the failure ended a connection attempt (first or re-), so libpq's message is
// the server's refusal, with its SQLSTATE, or libpq's own account of the attempt.
void PgConnection::fail_connection(const std::string& action, bool in_handshake) {
  broken_ = true;
  publish(false);
  remember_used_password();
  ConnectionFailure failure =
      read_connection_failure(conn_ ? PQerrorMessage(conn_.get()) : "libpq has no connection");
  if (!in_handshake) failure.sqlstate.clear();  // an older message may still be there
  const bool needs_password = in_handshake && conn_ && PQconnectionNeedsPassword(conn_.get()) != 0;
  const ErrorCode code = error_code_for_connection(failure.sqlstate, needs_password);
  const std::string said = scrub(one_line(failure.text), secrets_);
  std::string message = action + " " + target() + ": " + said;
  if (code == ErrorCode::kConfiguration) {
    message +=
        " (the server refuses the connection as configured; retrying cannot help: fix the URL, "
        "the role or the server's configuration)";
  }
  throw Error(
      code, message,
      failure.sqlstate.empty() ? "libpq: " + said : "SQLSTATE " + failure.sqlstate + ": " + said);
}

// True when the connection can take a statement now. See the section comment: this is where a
// connection that died while idle is found, before anything is sent on it.
bool PgConnection::is_usable() noexcept {
  if (broken_ || !conn_ || PQstatus(conn_.get()) != CONNECTION_OK) return false;
  pollfd socket{};
  socket.fd = PQsocket(conn_.get());
  socket.events = POLLIN;
  if (socket.fd < 0) return false;
  // A dying server sends its FATAL message and then closes: the first read takes the message
  // (libpq hands it to the notice processor), a later one meets the EOF. A few rounds suffice;
  // a socket that stays readable after them is a live server with a lot to say.
  for (int round = 0; round < 8 && ::poll(&socket, 1, 0) > 0; ++round) {
    if (PQconsumeInput(conn_.get()) == 0 || PQstatus(conn_.get()) != CONNECTION_OK) return false;
  }
  return true;
}

// Reconnects on a fresh socket (PQresetStart closes the old one), within the call's deadline as
// well as libpq's connect_timeout.
void PgConnection::reconnect_if_dead() {
  if (is_usable()) return;
  broken_ = true;  // stays set until the connection is fully set up again
  const std::string action = "cannot reconnect to PostgreSQL";
  if (PQresetStart(conn_.get()) == 0) fail_connection(action, /*in_handshake=*/true);
  for (PostgresPollingStatusType status = PGRES_POLLING_WRITING; status != PGRES_POLLING_OK;
       status = PQresetPoll(conn_.get())) {
    if (status == PGRES_POLLING_FAILED) fail_connection(action, /*in_handshake=*/true);
    wait_for_socket(status == PGRES_POLLING_READING ? POLLIN : POLLOUT, action);
  }
  if (PQsetnonblocking(conn_.get(), 1) != 0) fail_connection(action);
  setting_up_ = true;
  configure_session();
  settle_lost_statement();
  setup_();
  setting_up_ = false;
  broken_ = false;
  publish(true);
}

bool PgConnection::wait_for_notification(std::chrono::milliseconds timeout, int paced_sender) {
  const std::string action = "cannot listen for changes on";
  const bool reconnected = !is_usable();  // reads what the socket holds, notifications included
  reconnect_if_dead();
  bool paced = false;  // a notification from paced_sender came: true once the timeout is over
  const auto drain = [this, paced_sender, &paced] {
    return drain_notifications(paced_sender, &paced);
  };
  if (drain() || reconnected) return true;
  if (timeout.count() <= 0) return paced;
  pollfd socket{};
  socket.fd = PQsocket(conn_.get());
  socket.events = POLLIN;
  if (socket.fd < 0) fail_connection(action);
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    if (left.count() <= 0) return paced;
    const int ready =
        ::poll(&socket, 1, static_cast<int>(std::min<std::int64_t>(left.count(), INT_MAX)));
    if (ready < 0 && errno != EINTR) fail_connection(action);
    if (ready == 0) return paced;
    if (ready < 0) continue;
    if (PQconsumeInput(conn_.get()) == 0 || PQstatus(conn_.get()) != CONNECTION_OK) {
      fail_connection(action);
    }
    if (drain()) return true;
  }
}

// Takes every notification libpq holds; true when one came from a server process other than
// `paced_sender`, and *paced set when one came from it.
bool PgConnection::drain_notifications(int paced_sender, bool* paced) {
  bool other = false;
  while (PGnotify* notification = PQnotifies(conn_.get())) {
    if (paced_sender != 0 && notification->be_pid == paced_sender) {
      *paced = true;
    } else {
      other = true;
    }
    PQfreemem(notification);
  }
  return other;
}

// The connection is lost with a statement in flight, or may be: it is given up (the next call
// reconnects), and its server process is remembered for settle_lost_statement().
void PgConnection::note_lost_statement() noexcept {
  broken_ = true;
  publish(false);
  if (lost_statement_pid_ == 0 && conn_) lost_statement_pid_ = PQbackendPID(conn_.get());
}

// A statement whose reply was lost may still be waiting in the old server process: a server
// that was frozen (kill -STOP, a VM paused) reads it from the socket buffer when it thaws, and
// commits it, possibly after the caller has been told "in doubt" and has read the row back.
// Ending that process, and waiting until it is gone, makes the outcome final before this
// connection sends anything, so what the caller reads next is what stays.
void PgConnection::settle_lost_statement() {
  if (lost_statement_pid_ == 0) return;
  Params pid;
  pid.int8(lost_statement_pid_);
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      call_deadline_ - std::chrono::steady_clock::now());
  pid.int8(std::max<std::int64_t>(left.count(), 1));
  // false, with a warning, when the process is gone already (the server restarted, or it ended
  // the session itself); false too if it outlives the deadline, and then this call fails.
  const PgResult ended = send_params(
      "SELECT pg_terminate_backend($1::integer, $2) OR NOT EXISTS "
      "(SELECT 1 FROM pg_stat_activity WHERE pid = $1::integer)",
      pid, "cannot end the server process of a lost connection on");
  if (PQntuples(ended.get()) != 1 || PQgetlength(ended.get(), 0, 0) != 1 ||
      *PQgetvalue(ended.get(), 0, 0) == 0) {
    throw Error(ErrorCode::kConnectionLost,
                "cannot settle a lost statement on " + target() + ": its server process " +
                    std::to_string(lost_statement_pid_) + " did not end within the deadline",
                "pylon: lost statement unsettled");
  }
  lost_statement_pid_ = 0;
}

void PgConnection::configure_session() {
  send_text(
      "SELECT set_config('synchronous_commit', 'local', false) FROM pg_settings "
      "WHERE name = 'synchronous_commit' AND setting = 'off' AND source <> 'client'",
      "cannot configure the session on");
}

// ------------------------------------------------------------------------------------------------
// Running statements
// ------------------------------------------------------------------------------------------------

void PgConnection::fail(const PGresult* result, const std::string& action) {
  const bool connection_bad = !conn_ || PQstatus(conn_.get()) != CONNECTION_OK;
  const char* sqlstate = result != nullptr ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
  const char* primary =
      result != nullptr ? PQresultErrorField(result, PG_DIAG_MESSAGE_PRIMARY) : nullptr;
  const std::string state = sqlstate != nullptr ? sqlstate : "";
  ErrorCode code = error_code_for_postgres(state, connection_bad);
  // query_canceled while opening or setting a connection up: a statement_timeout of the role or
  // database too short for statements that take milliseconds, which no retry outlasts. (A
  // cancel by an administrator lands here too; it is as final for this attempt.)
  const bool cancelled_setting_up = setting_up_ && state == "57014";
  if (cancelled_setting_up) code = ErrorCode::kConfiguration;
  if (code == ErrorCode::kConnectionLost) note_lost_statement();

  // Without a server message, the failure is libpq's own ("server closed the connection
  // unexpectedly", "no connection to the server").
  std::string text;
  if (primary != nullptr) {
    text = primary;
  } else if (result != nullptr && *PQresultErrorMessage(result) != '\0') {
    text = PQresultErrorMessage(result);
  } else if (conn_) {
    text = PQerrorMessage(conn_.get());
  }
  const std::string said = scrub(one_line(text), secrets_);
  std::string message = action + " " + target() + ": " + said;
  if (cancelled_setting_up) {
    message +=
        " (the server cancelled it while the connection was being set up: a statement_timeout "
        "set for the role or database is too short; raise it, or add "
        "options=-c%20statement_timeout%3D0 to the URL)";
  } else if (code == ErrorCode::kConfiguration) {
    message += " (the server refuses this as configured; retrying cannot help)";
  } else if (state.substr(0, 2) == "23" || state == "P0001" || state == "P0004") {
    message += " (a constraint or trigger of the table refused the row)";
  } else if (code == ErrorCode::kConnectionLost) {
    message +=
        " (the connection was lost; a statement that reached the server may or may not have "
        "been applied; the next call reconnects)";
  } else if (code == ErrorCode::kCorruptDatabase) {
    message += " (the table is not the one pylon-sessions' schema version promises)";
  }
  throw Error(code, message, state.empty() ? "libpq: " + said : "SQLSTATE " + state + ": " + said);
}

void PgConnection::check(const PGresult* result, const std::string& action) {
  const ExecStatusType status = result != nullptr ? PQresultStatus(result) : PGRES_FATAL_ERROR;
  if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK || status == PGRES_SINGLE_TUPLE) {
    return;
  }
  fail(result, action);
}

// Waits until the socket is ready for `events` or the call's deadline passes; at the deadline
// the connection is given up (the next call reconnects) and the call fails with kConnectionLost.
// `connecting`: the first connection's handshake, when no statement can be in flight.
void PgConnection::wait_for_socket(short events,  // NOLINT(google-runtime-int): pollfd's type
                                   const std::string& action, bool connecting) {
  pollfd socket{};
  socket.fd = PQsocket(conn_.get());
  socket.events = events;
  if (socket.fd < 0) fail_connection(action);
  for (;;) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(
        call_deadline_ - std::chrono::steady_clock::now());
    if (left.count() <= 0 && connecting) {
      broken_ = true;
      throw Error(ErrorCode::kConnectionLost,
                  action + " " + target() + ": no answer within connect_timeout or the deadline " +
                      "of " + std::to_string(deadline_.count()) +
                      " ms (PostgresOptions::deadline), whichever is shorter",
                  "pylon: client deadline");
    }
    if (left.count() <= 0) {
      note_lost_statement();
      unresponsive_until_ = std::chrono::steady_clock::now() + deadline_;
      throw Error(ErrorCode::kConnectionLost,
                  action + " " + target() + ": no answer within the deadline of " +
                      std::to_string(deadline_.count()) +
                      " ms (PostgresOptions::deadline); a statement that reached the server may "
                      "or may not have been applied; the next call reconnects",
                  "pylon: client deadline");
    }
    const int ready =
        ::poll(&socket, 1, static_cast<int>(std::min<std::int64_t>(left.count(), INT_MAX)));
    if (ready > 0) return;
    if (ready < 0 && errno != EINTR) fail_connection(action);
  }
}

// The result of the statement just sent, as PQexec() would return it (the first failure, else
// the last result), read without ever blocking past the call's deadline.
PgResult PgConnection::await_result(const std::string& action) {
  flush_query(action);
  PgResult kept;
  bool kept_a_failure = false;
  for (PgResult result = next_result(action); result; result = next_result(action)) {
    if (kept_a_failure) continue;  // read to the end, so the connection is ready for more
    const ExecStatusType status = PQresultStatus(result.get());
    kept_a_failure = status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK;
    kept = std::move(result);
  }
  if (!kept) fail(nullptr, action);  // the connection ended before any result
  return kept;
}

// Sends what libpq still holds of the statement: a non-blocking connection queues what the
// socket would not take at once.
void PgConnection::flush_query(const std::string& action) {
  for (int pending = PQflush(conn_.get()); pending != 0; pending = PQflush(conn_.get())) {
    if (pending < 0) fail(nullptr, action);
    // The server may be sending (a notice, an error) while we still write: take it in, or both
    // sides could wait for the other's buffer to drain.
    wait_for_socket(POLLIN | POLLOUT, action);
    if (PQconsumeInput(conn_.get()) == 0) fail(nullptr, action);
  }
}

// PQgetResult() once the whole result is in, so it never blocks; null after the last one. With
// `restart_deadline`, the call's deadline starts again each time data arrives (a load, whose
// rows may take longer than one deadline in all).
PgResult PgConnection::next_result(const std::string& action, bool restart_deadline) {
  while (PQisBusy(conn_.get()) != 0) {
    wait_for_socket(POLLIN, action);
    if (PQconsumeInput(conn_.get()) == 0) fail(nullptr, action);
    if (restart_deadline) call_deadline_ = std::chrono::steady_clock::now() + deadline_;
  }
  return PgResult(PQgetResult(conn_.get()));
}

PgResult PgConnection::checked_result(const std::string& action) {
  PgResult result = await_result(action);
  check(result.get(), action);
  return result;
}

// Simple-query protocol: for constant SQL only (it may hold several statements, as a migration
// file does). Nothing a caller supplies ever goes through here.
PgResult PgConnection::exec(Reconnect reconnect, const char* sql, const std::string& action) {
  if (reconnect == Reconnect::kIfDead) reconnect_if_dead();
  return send_text(sql, action);
}

PgResult PgConnection::exec_params(Reconnect reconnect, const char* sql, const Params& params,
                                   const std::string& action) {
  if (reconnect == Reconnect::kIfDead) reconnect_if_dead();
  return send_params(sql, params, action);
}

PgResult PgConnection::send_text(const char* sql, const std::string& action) {
  if (PQsendQuery(conn_.get(), sql) == 0) fail(nullptr, action);
  return checked_result(action);
}

PgResult PgConnection::send_params(const char* sql, const Params& params,
                                   const std::string& action) {
  if (PQsendQueryParams(conn_.get(), sql, params.count(), params.types(), params.values(),
                        params.lengths(), params.formats(), kBinaryFormat) == 0) {
    fail(nullptr, action);
  }
  return checked_result(action);
}

PgResult PgConnection::exec_prepared(Reconnect reconnect, const char* name, const Params& params,
                                     const std::string& action) {
  if (reconnect == Reconnect::kIfDead) reconnect_if_dead();
  if (PQsendQueryPrepared(conn_.get(), name, params.count(), params.values(), params.lengths(),
                          params.formats(), kBinaryFormat) == 0) {
    fail(nullptr, action);
  }
  return checked_result(action);
}

// Marks the connection broken unless the query in flight was read to its end: an exception
// while rows still arrive leaves the connection mid-query, and dropping it at the next call is
// cheaper than reading a million rows we no longer want.
class QueryInFlight {
 public:
  explicit QueryInFlight(bool& broken) noexcept : broken_(broken) {}
  ~QueryInFlight() {
    if (!finished_) broken_ = true;
  }
  QueryInFlight(const QueryInFlight&) = delete;
  QueryInFlight& operator=(const QueryInFlight&) = delete;
  QueryInFlight(QueryInFlight&&) = delete;
  QueryInFlight& operator=(QueryInFlight&&) = delete;
  void finished() noexcept { finished_ = true; }

 private:
  bool& broken_;
  bool finished_ = false;
};

void PgConnection::exec_prepared(Reconnect reconnect, const char* name, const Params& params,
                                 const std::string& action,
                                 const std::function<void(const PGresult*)>& row) {
  if (reconnect == Reconnect::kIfDead) reconnect_if_dead();
  if (PQsendQueryPrepared(conn_.get(), name, params.count(), params.values(), params.lengths(),
                          params.formats(), kBinaryFormat) == 0) {
    fail(nullptr, action);
  }
  QueryInFlight query(broken_);
  if (PQsetSingleRowMode(conn_.get()) == 0) {
    throw Error(ErrorCode::kInternal, action + " " + target() + ": libpq refused single-row mode");
  }
  flush_query(action);

  PgResult error;  // the first failure; later results are read only to finish the query
  // The deadline bounds the server's silence, not the size of the table: it starts again
  // whenever data arrives.
  for (PgResult result = next_result(action, /*restart_deadline=*/true); result;
       result = next_result(action, /*restart_deadline=*/true)) {
    const ExecStatusType status = PQresultStatus(result.get());
    if (status == PGRES_SINGLE_TUPLE && !error) {
      row(result.get());
    } else if (status != PGRES_SINGLE_TUPLE && status != PGRES_TUPLES_OK && !error) {
      error = std::move(result);
    }
  }
  query.finished();
  if (error) fail(error.get(), action);
}

void PgConnection::prepare(Reconnect reconnect, const char* name, const char* sql,
                           const std::vector<Oid>& types) {
  if (reconnect == Reconnect::kIfDead) reconnect_if_dead();
  const std::string action = "cannot prepare a statement on";
  if (PQsendPrepare(conn_.get(), name, sql, static_cast<int>(types.size()), types.data()) == 0) {
    fail(nullptr, action);
  }
  checked_result(action);
}

// The name SQL gives the type `oid` in a PREPARE's parameter list.
const char* sql_type_name(Oid oid) {
  switch (oid) {
    case kTextOid:
      return "text";
    case kInt8Oid:
      return "int8";
    case kByteaOid:
      return "bytea";
    case kTextArrayOid:
      return "text[]";
    case kInt8ArrayOid:
      return "int8[]";
    case kByteaArrayOid:
      return "bytea[]";
    default:
      throw Error(ErrorCode::kInternal, "pylon-sessions: no SQL name for type " +
                                            std::to_string(oid) + " of a prepared statement");
  }
}

// SQL PREPARE makes the same prepared statements as the protocol's Parse (PQprepare), and one
// simple query may hold many: a new server session's statements (the backend has about twenty)
// cost one round trip instead of one each, which a store pays before it can load. The first
// statement that fails stops the rest, and the setup fails as a failed PQprepare made it fail.
void PgConnection::setup_in_one_round_trip(const std::string& sql,
                                           const std::vector<Statement>& statements) {
  std::string all = sql;
  for (const Statement& statement : statements) {
    all += all.empty() ? "PREPARE " : "; PREPARE ";
    all += statement.name;
    for (std::size_t i = 0; i < statement.types.size(); ++i) {
      all += i == 0 ? " (" : ", ";
      all += sql_type_name(statement.types[i]);
    }
    all += statement.types.empty() ? " AS " : ") AS ";
    all += statement.sql;
  }
  send_text(all.c_str(), "cannot prepare the statements of");
}

// Ends the transaction a failed step left open, while its error propagates. A broken connection
// is left alone: the server rolls back when it goes, and the next call reconnects.
void PgConnection::roll_back() noexcept {
  if (broken_) return;
  try {
    exec(Reconnect::kNever, "ROLLBACK", "cannot roll back a transaction on");
  } catch (...) {  // NOLINT(bugprone-empty-catch): the step's own error is the one to report
  }
}

class PgConnection::Transaction {
 public:
  // Sends `begin` ("BEGIN ...").
  Transaction(PgConnection& connection, Reconnect reconnect, const char* begin,
              const std::string& action)
      : connection_(connection) {
    connection_.exec(reconnect, begin, action);
  }
  // Nothing is committed unless commit() returned. ROLLBACK fails only on a dead connection, and
  // then the server has rolled back already (or, if COMMIT itself was lost in flight, it alone
  // knows: the caller was told kConnectionLost).
  ~Transaction() {
    if (!committed_) connection_.roll_back();
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  Transaction(Transaction&&) = delete;
  Transaction& operator=(Transaction&&) = delete;

  void commit(const std::string& action) {
    connection_.exec(Reconnect::kNever, "COMMIT", action);
    committed_ = true;
  }

 private:
  PgConnection& connection_;
  bool committed_ = false;
};

// ================================================================================================
// 4. Migrations
//
// PgMigrations brings the schema up to date and checks its tables, on a connection that is
// being set up (PostgresBackend's, before it prepares its statements). Opening runs every step
// below in ONE transaction that first takes a transaction-scoped advisory lock. Two instances
// starting at once against an empty database queue on the lock; the second reads the schema version
// only once the first has committed (READ COMMITTED is forced: each statement sees what was
// committed before it, whatever the server's default isolation), finds the work done and skips it.
// Both come up, with one schema.
//
// Anything refused (a schema newer than this code, a `_pylon_sessions` that is a view or has
// columns we do not know) rolls the transaction back: the database is left as it was.
//
// Adopting pylon's table: as on SQLite, it is renamed to `_pylon_sessions_pylon_v0` (gaining the
// `tenant_id` column early pylon lacked) in migration 1's transaction, and migration 1 moves its
// live rows under the hash of their token and drops it.
// ================================================================================================

// The schema, embedded from migrations/postgres/*.sql by cmake/embed_migrations.cmake. A C array:
// the fragment is a list of braced initialisers, which std::array cannot size in C++17.
// NOLINTNEXTLINE(cppcoreguidelines-avoid-c-arrays,modernize-avoid-c-arrays)
constexpr detail::Migration kPostgresMigrations[] = {
#include "pylon_migrations_postgres.inc"
};
constexpr int kLatestPostgresVersion =
    kPostgresMigrations[std::size(kPostgresMigrations) - 1].version;  // NOLINT

// pg_advisory_xact_lock key that serialises migrations across instances: "pylonmig" in ASCII.
constexpr std::int64_t kMigrationLockKey = 0x70796C6F6E6D6967;
// One column of a table as the migrations make it: its type as format_type() names it, whether
// it is NOT NULL, the schema version that adds it, and whether it must fill itself (an identity).
struct ExpectedColumn {
  const char* name;
  const char* type;
  bool not_null;
  int since;
  bool generated = false;
};

class PgMigrations {
 public:
  explicit PgMigrations(PgConnection& connection) : connection_(connection) {}
  // Migrates to kLatestPostgresVersion and verifies the tables, in one transaction.
  void run();

 private:
  void apply(int applied, bool adopt_pylon_table, std::string& action);
  int applied_schema_version();
  bool relation_kind(const char* name, std::string* kind);
  std::vector<std::pair<std::string, std::string>> table_columns(const char* table);
  bool check_session_table(int applied);
  void check_rotated_table(int applied);
  void verify_table_shape(int version);
  void verify_table(const char* table, const std::vector<ExpectedColumn>& expected, int version);
  void verify_columns(const char* table, const std::vector<ExpectedColumn>& expected, int version);
  void verify_keys(const char* table, int version);
  [[noreturn]] void refuse_table(const std::string& what) const;

  PgConnection& connection_;
};

void PgMigrations::run() {
  std::string action = "cannot migrate the schema of";
  // Nothing of the migration is committed unless all of it is.
  PgConnection::Transaction transaction(connection_, Reconnect::kNever,
                                        "BEGIN ISOLATION LEVEL READ COMMITTED", action);
  {
    Params key;
    key.int8(kMigrationLockKey);
    connection_.exec_params(Reconnect::kNever, "SELECT pg_advisory_xact_lock($1)", key, action);
  }
  const int applied = applied_schema_version();
  if (applied > kLatestPostgresVersion) {
    throw Error(ErrorCode::kSchemaTooNew,
                connection_.target() + " has pylon-sessions schema version " +
                    std::to_string(applied) + ", newer than version " +
                    std::to_string(kLatestPostgresVersion) +
                    " that this build knows; upgrade pylon-sessions (the database was left as "
                    "it is)");
  }
  const bool adopt_pylon_table = check_session_table(applied);  // true only at version 0
  check_rotated_table(applied);
  // Before anything is written: the tables as version `applied` left them, keys and indexes
  // included. (A table that lacks its primary key would otherwise fail the first upsert, and
  // one that lacks an index would be migrated further and then refused.)
  if (!adopt_pylon_table) verify_table_shape(applied);
  if (applied < kLatestPostgresVersion) {
    apply(applied, adopt_pylon_table, action);
    action = "cannot migrate the schema of";
    verify_table_shape(kLatestPostgresVersion);
  }
  transaction.commit(action);
}

// The migrations after version `applied`, each recorded; `action` names the one running.
void PgMigrations::apply(int applied, bool adopt_pylon_table, std::string& action) {
  connection_.exec(Reconnect::kNever,
                   "CREATE TABLE IF NOT EXISTS _pylon_schema_migrations ("
                   " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
                   action);
  // Versions run from 1 without gaps (cmake/embed_migrations.cmake refuses a gap), so the
  // first migration to apply is entry `applied`.
  for (auto index = static_cast<std::size_t>(applied); index < std::size(kPostgresMigrations);
       ++index) {
    const detail::Migration& migration = kPostgresMigrations[index];
    action = "migration " + std::string(migration.name) + " failed on";
    if (migration.version == 1 && adopt_pylon_table) {
      const auto columns = table_columns("_pylon_sessions");
      const bool has_tenant = std::any_of(columns.begin(), columns.end(), [](const auto& column) {
        return column.first == "tenant_id";
      });
      if (!has_tenant) {
        connection_.exec(Reconnect::kNever, "ALTER TABLE _pylon_sessions ADD COLUMN tenant_id TEXT",
                         action);
      }
      connection_.exec(Reconnect::kNever,
                       "ALTER TABLE _pylon_sessions RENAME TO _pylon_sessions_pylon_v0", action);
    }
    connection_.exec(Reconnect::kNever, migration.sql, action);
    Params record;
    record.int8(migration.version).text(migration.name);
    connection_.exec_params(Reconnect::kNever,
                            "INSERT INTO _pylon_schema_migrations (version, name, applied_at) "
                            "VALUES ($1, $2, floor(extract(epoch FROM now()))::bigint)",
                            record, action);
  }
}

int PgMigrations::applied_schema_version() {
  const std::string action = "cannot read the schema version of";
  std::string kind;
  if (!relation_kind("_pylon_schema_migrations", &kind)) return 0;
  const PgResult result = connection_.exec_params(
      Reconnect::kNever, "SELECT coalesce(max(version), 0)::bigint FROM _pylon_schema_migrations",
      Params(), action);
  if (PQntuples(result.get()) != 1 || PQgetlength(result.get(), 0, 0) != 8) {
    throw Error(
        ErrorCode::kCorruptDatabase,
        action + " " + connection_.target() + ": _pylon_schema_migrations is not pylon-sessions'");
  }
  return static_cast<int>(
      std::clamp<std::int64_t>(decode_int8({PQgetvalue(result.get(), 0, 0), 8}), 0, INT_MAX));
}

// Whether `name` resolves (through search_path, as our unqualified statements do) to a
// relation, and its pg_class.relkind.
bool PgMigrations::relation_kind(const char* name, std::string* kind) {
  Params params;
  params.text(name);
  const PgResult result = connection_.exec_params(
      Reconnect::kNever, "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)", params,
      "cannot read the schema of");
  if (PQntuples(result.get()) == 0) return false;
  *kind = text_at(result.get(), 0);
  return true;
}

// (name, type) of every column of `table`, ordered by name.
std::vector<std::pair<std::string, std::string>> PgMigrations::table_columns(const char* table) {
  Params params;
  params.text(table);
  const PgResult result = connection_.exec_params(
      Reconnect::kNever,
      "SELECT attname::text, format_type(atttypid, NULL) FROM pg_attribute "
      "WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped ORDER BY attname",
      params, "cannot read the schema of");
  std::vector<std::pair<std::string, std::string>> columns;
  const int rows = PQntuples(result.get());
  for (int row = 0; row < rows; ++row) {
    const auto field = [&result, row](int column) {
      return std::string(PQgetvalue(result.get(), row, column),
                         static_cast<std::size_t>(PQgetlength(result.get(), row, column)));
    };
    columns.emplace_back(field(0), field(1));
  }
  return columns;
}

// The columns of `_pylon_sessions` that only PostgreSQL's migrations make, besides a session's
// (detail::kSessionColumns). insert_order ranks rows created in the same second for the cap
// (kEvictBeyondCap); no statement gives it a value: its identity does (an identity column is NOT
// NULL).
constexpr std::array<ExpectedColumn, 1> kPostgresOnlySessionColumns = {{
    {"insert_order", "bigint", true, 3, /*generated=*/true},
}};

// Every column of `_pylon_sessions`: a session's, then the PostgreSQL-only ones, ordered by the
// version that adds them (stable, so a session's keep their order), as the migrations add them.
// verify_columns() checks them in this order and names the first that differs.
const std::vector<ExpectedColumn>& session_column_shapes() {
  static const std::vector<ExpectedColumn> kColumns = [] {
    std::vector<ExpectedColumn> columns;
    columns.reserve(detail::kSessionColumns.size() + kPostgresOnlySessionColumns.size());
    for (const detail::SessionColumn& column : detail::kSessionColumns) {
      columns.push_back(
          {column.name, column.postgres_type, !column.nullable, column.since_version});
    }
    columns.insert(columns.end(), kPostgresOnlySessionColumns.begin(),
                   kPostgresOnlySessionColumns.end());
    std::stable_sort(
        columns.begin(), columns.end(),
        [](const ExpectedColumn& a, const ExpectedColumn& b) { return a.since < b.since; });
    return columns;
  }();
  return kColumns;
}

// The version that creates `_pylon_rotated_ids`, and its columns.
constexpr int kRotatedIdsVersion = 3;
const std::vector<ExpectedColumn>& rotated_column_shapes() {
  static const std::vector<ExpectedColumn> kColumns = {
      {"id", "text", true, kRotatedIdsVersion},
      {"replaced_by", "text", true, kRotatedIdsVersion},
      {"user_id", "text", true, kRotatedIdsVersion},
      {"tenant_id", "text", false, kRotatedIdsVersion},
      {"rotated_at", "bigint", true, kRotatedIdsVersion},
      {"expires_at", "bigint", true, kRotatedIdsVersion},
  };
  return kColumns;
}

// The indexes the migrations make besides the primary keys, by name and first column: what
// the purges, the cap and remove_matching() rely on to cost a batch, not a scan.
struct ExpectedIndex {
  const char* table;
  const char* name;
  const char* column;
  int since;
};

constexpr std::array<ExpectedIndex, 4> kIndexes = {{
    {"_pylon_sessions", "_pylon_sessions_by_user", "user_id", 1},
    {"_pylon_sessions", "_pylon_sessions_by_expiry", "expires_at", 1},
    {"_pylon_sessions", "_pylon_sessions_by_idp_session", "idp_session_id", 2},
    {"_pylon_rotated_ids", "_pylon_rotated_ids_by_expiry", "expires_at", kRotatedIdsVersion},
}};

// (name, type) of every column of `_pylon_sessions` once migration `version` (1 or later) has
// run, ordered by name as table_columns() returns them.
std::vector<std::pair<std::string, std::string>> expected_session_columns(int version) {
  std::vector<std::pair<std::string, std::string>> columns;
  for (const ExpectedColumn& column : session_column_shapes()) {
    if (column.since <= version) columns.emplace_back(column.name, column.type);
  }
  std::sort(columns.begin(), columns.end());
  return columns;
}

std::vector<std::string> names_of(const std::vector<std::pair<std::string, std::string>>& columns) {
  std::vector<std::string> names;
  names.reserve(columns.size());
  for (const auto& column : columns) names.push_back(column.first);
  return names;
}

std::string describe_relkind(const std::string& kind) {
  if (kind == "v") return "view";
  if (kind == "m") return "materialized view";
  if (kind == "f") return "foreign table";
  if (kind == "S") return "sequence";
  if (kind == "i" || kind == "I") return "index";
  if (kind == "c") return "composite type";
  return "relation of kind '" + kind + "'";
}

// Refuses a `_pylon_sessions` that is not a table or whose columns are neither ours (as schema
// version `applied` left them) nor pylon's. Returns true when it is pylon's table, to be adopted
// by migration 1. As on SQLite, only the column names are compared here; verify_table_shape()
// checks the types after migrating.
bool PgMigrations::check_session_table(int applied) {
  std::string kind;
  if (!relation_kind("_pylon_sessions", &kind)) return false;
  if (kind != "r" && kind != "p") {  // an ordinary or a partitioned table
    throw Error(ErrorCode::kCorruptDatabase,
                connection_.target() + " has a _pylon_sessions " + describe_relkind(kind) +
                    ", not a table; refusing to use it (the database was left as it is)");
  }
  const std::vector<std::string> columns = names_of(table_columns("_pylon_sessions"));
  // Migration 1 creates the table only if it is missing, so at version 0 a table of version 1's
  // shape is taken as it is. A table already of a later shape than its version is not: the
  // migrations still to run would fail on it half-way (a column added twice).
  if (columns == names_of(expected_session_columns(std::max(applied, 1)))) return false;
  // pylon's runtime: token, user_id, expires_at, created_at, device, and later tenant_id.
  const std::vector<std::string> legacy = {"created_at", "device", "expires_at", "token",
                                           "user_id"};
  const std::vector<std::string> legacy_with_tenant = {"created_at", "device", "expires_at",
                                                       "tenant_id",  "token",  "user_id"};
  if (applied == 0 && (columns == legacy || columns == legacy_with_tenant)) {
    return true;
  }
  std::string listed;
  for (const std::string& column : columns) listed += (listed.empty() ? "" : ", ") + column;
  throw Error(ErrorCode::kCorruptDatabase,
              connection_.target() + " has a _pylon_sessions table with columns (" + listed +
                  ") that is neither pylon-sessions' nor pylon's; refusing to use it (the "
                  "database was left as it is)");
}

// Refuses a `_pylon_rotated_ids` that exists before the migration that creates it has run: it
// is not ours, and that migration would fail on it half-way (a duplicate table, reported as a
// bug rather than as the database at fault).
void PgMigrations::check_rotated_table(int applied) {
  std::string kind;
  if (applied >= kRotatedIdsVersion || !relation_kind("_pylon_rotated_ids", &kind)) return;
  throw Error(ErrorCode::kCorruptDatabase,
              connection_.target() + " has a _pylon_rotated_ids " +
                  (kind == "r" || kind == "p" ? std::string("table") : describe_relkind(kind)) +
                  " that pylon-sessions did not create (its schema version is " +
                  std::to_string(applied) +
                  "); refusing to use it (the database was left as it is)");
}

// The tables as schema version `version` leaves them, exactly: every column with its type and
// NOT NULL (rows are read in binary format, and an INTEGER read as a BIGINT would be garbage,
// not an error), the primary key on (id) that every ON CONFLICT (id) relies on, and the indexes
// the migrations made, valid. At version 0 a table of version 1's columns is taken over by
// migration 1, which makes its indexes: only its columns and key are checked then.
// Error(kCorruptDatabase) naming the first difference.
void PgMigrations::verify_table_shape(int version) {
  verify_table("_pylon_sessions", session_column_shapes(), version);
  if (version >= kRotatedIdsVersion) {
    verify_table("_pylon_rotated_ids", rotated_column_shapes(), version);
  }
}

void PgMigrations::refuse_table(const std::string& what) const {
  throw Error(ErrorCode::kCorruptDatabase,
              connection_.target() + " has a " + what +
                  "; it is not pylon-sessions' table, refusing to use it (the database was left "
                  "as it is)");
}

void PgMigrations::verify_table(const char* table, const std::vector<ExpectedColumn>& expected,
                                int version) {
  std::string kind;
  if (!relation_kind(table, &kind)) {
    if (version == 0) return;
    refuse_table(std::string(table) + " table missing, which its schema version " +
                 std::to_string(version) + " promises");
  }
  if (kind != "r" && kind != "p") refuse_table(std::string(table) + " " + describe_relkind(kind));
  verify_columns(table, expected, std::max(version, 1));
  verify_keys(table, version);
}

void PgMigrations::verify_columns(const char* table, const std::vector<ExpectedColumn>& expected,
                                  int version) {
  Params name;
  name.text(table);
  const PgResult columns = connection_.exec_params(
      Reconnect::kNever,
      "SELECT attname::text, format_type(atttypid, NULL), attnotnull::text, "
      "(attidentity <> '' OR atthasdef)::text FROM pg_attribute "
      "WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
      name, "cannot read the schema of");
  const int rows = PQntuples(columns.get());
  int wanted = 0;
  for (const ExpectedColumn& column : expected) {
    if (column.since > version) continue;
    ++wanted;
    int row = 0;
    while (row < rows && text_at(columns.get(), row, 0) != column.name) ++row;
    if (row == rows) refuse_table(std::string(table) + " table without the column " + column.name);
    const std::string named = std::string(table) + " table whose column " + column.name;
    const std::string type = text_at(columns.get(), row, 1);
    if (type != column.type) {
      std::string what = named;
      refuse_table(what.append(" is of type ").append(type).append(", not ").append(column.type));
    }
    if ((text_at(columns.get(), row, 2) == "true") != column.not_null) {
      refuse_table(named + (column.not_null ? " may be NULL" : " is NOT NULL") + ", unlike ours");
    }
    if (column.generated && text_at(columns.get(), row, 3) != "true") {
      refuse_table(named + " is not an identity column");
    }
  }
  if (rows != wanted) {
    refuse_table(std::string(table) + " table with columns that its schema version " +
                 std::to_string(version) + " does not have");
  }
}

// The primary key on (id), and from version 1 on the indexes of kIndexes.
void PgMigrations::verify_keys(const char* table, int version) {
  Params name;
  name.text(table);
  // Each index: its name, its first column ('' for an expression), whether it is the primary
  // key, its number of key columns, whether it is usable.
  const PgResult indexes = connection_.exec_params(
      Reconnect::kNever,
      "SELECT c.relname::text, coalesce((SELECT a.attname::text FROM pg_attribute a "
      "WHERE a.attrelid = i.indrelid AND a.attnum = i.indkey[0]), ''), i.indisprimary::text, "
      "i.indnkeyatts::text, (i.indisvalid AND i.indisready AND i.indexprs IS NULL)::text "
      "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
      "WHERE i.indrelid = to_regclass($1)",
      name, "cannot read the schema of");
  const int rows = PQntuples(indexes.get());
  const auto has_index = [&indexes, rows](const char* index_name, const char* column,
                                          bool primary) {
    for (int row = 0; row < rows; ++row) {
      const bool usable =
          text_at(indexes.get(), row, 1) == column && text_at(indexes.get(), row, 4) == "true";
      const bool named = primary ? text_at(indexes.get(), row, 2) == "true" &&
                                       text_at(indexes.get(), row, 3) == "1"
                                 : text_at(indexes.get(), row, 0) == index_name;
      if (usable && named) return true;
    }
    return false;
  };
  if (!has_index(nullptr, "id", /*primary=*/true)) {
    refuse_table(std::string(table) + " table whose primary key is not (id)");
  }
  for (const ExpectedIndex& index : kIndexes) {
    if (std::strcmp(index.table, table) != 0 || index.since > version) continue;
    if (!has_index(index.name, index.column, /*primary=*/false)) {
      refuse_table(std::string(table) + " table without the index " + index.name + " on (" +
                   index.column + ") that its schema version " + std::to_string(version) +
                   " promises");
    }
  }
}

// ================================================================================================

// ================================================================================================
// 5. The backend
//
// PostgresBackend is the SessionBackend: it owns its statements, their texts and the encoding of
// a Session as their parameters, and runs them on its PgConnection, whose setup prepares them.
// Fields are checked before anything is sent: PostgreSQL TEXT holds neither NUL nor invalid
// UTF-8, and both backends refuse such text with the same checks and messages
// (internal/backend_shared.hpp), so a caller sees one behaviour whichever backend it runs on.
//
// Every statement is prepared once per connection with the types of its parameters, and every
// call sends only parameters. load_all() streams: in single-row mode libpq hands over one row at
// a time, so a million sessions are held once (as Sessions), never also as one huge PGresult;
// load_each() reads every row into one Session, whose buffers each row reuses.
//
// Each call is still one autocommit statement, the multi-step ones included:
//   - save_batch() sends its rows as arrays, one per column, to one INSERT ... SELECT
//     unnest(...) upsert: one round trip and one commit for the batch, where a transaction of
//     upserts would cost a round trip per row. ON CONFLICT cannot change a row twice in one
//     statement, so of rows sharing an id only the last is sent, which is what upserting them in
//     turn would leave. Only past kBatchStatementBytes is a batch split into statements run in
//     one transaction.
//   - replace() is a DELETE and an INSERT joined by a data-modifying CTE. One statement commits
//     whole or not at all, so no reader, here or in another process, sees both ids or neither;
//     and it is one round trip with no transaction left open if the connection drops half-way.
//   - remove_expired_batch() bounds its DELETE with a LIMITed subquery; SKIP LOCKED lets
//     several instances purge side by side instead of queueing on the same rows.
//   - remove_matching() has one statement per combination of filter fields, each a plain
//     conjunction of equalities the indexes serve; there are 32 combinations and an application
//     uses a few, so they are prepared on first use rather than all on every (re)connect. Each
//     returns the ids and users it deleted. (A whole tenant, revoke_tenant(), has no index of its
//     own: an administrator's rare call, it reads the table once rather than cost every write an
//     index entry.)
//   - list_page() likewise has one SELECT per combination of the query's filters (128), prepared
//     on first use. It pages by keyset: `id > $after ORDER BY id LIMIT $limit`, the first page's
//     cursor '' (below every id). Ids are compared in collation "C", byte order as SQLite's
//     BINARY, so both backends page alike whatever the database's collation; migration 0005 gives
//     the id column that collation, so the primary key's index serves the walk and a page costs
//     its size, not the table's. count_by_tenant() is one GROUP BY, in the same byte order.
//   - rotate() is one statement too: a CTE deletes the live old row and returns it, a second
//     records the rotated id, and the INSERT it feeds copies the row, as storage holds it, under
//     the new id and returns the copy. touch() and update_data() are UPDATE ... RETURNING: each
//     changes its columns only, in storage, and answers with the whole row.
//   - remove_expired() deletes expired rotated ids in a CTE of its DELETE: one statement, whose
//     command tag counts the sessions alone.
//
// The one exception is insert_new() with a cap per user: counting a user's sessions and evicting
// the oldest must not interleave with another instance doing the same, or two creates at once
// could each see room for one more. So it is a transaction in READ COMMITTED (whatever the
// server's default: each statement must see what others committed before it started) that first
// takes a transaction-scoped advisory lock per user and tenant of the batch, in the order of the
// lock keys, so two batches sharing users queue instead of deadlocking; then inserts; then, in a
// statement of its own that sees the rows committed by whoever held a lock before, deletes what
// lies beyond the cap. Without a cap, or for anonymous sessions only (they have no cap), it is
// save_batch().
//
// authenticate() is a transaction too: it must tell "no live session" from "another user's
// session" (refused), and with a cap it evicts under insert_new()'s lock. In READ COMMITTED it
// reads the old row (nothing locked yet); takes the lock of the user signing in and the row's
// tenant; then runs rotate()'s statement, whose DELETE also requires the user and tenant just
// read (a row that changed in between is read again); then evicts the user's oldest other rows.
// Taking the lock before touching any row keeps it from deadlocking with a capped writer that
// holds the lock and evicts the very row.
// ================================================================================================

// The prepared statements, by name. Names are per connection: every reconnect prepares them again.
constexpr const char* kUpsert = "pylon_upsert";
constexpr const char* kUpsertBatch = "pylon_upsert_batch";
constexpr const char* kDeleteById = "pylon_delete_by_id";
constexpr const char* kDeleteByUser = "pylon_delete_by_user";
constexpr const char* kDeleteExpired = "pylon_delete_expired";
constexpr const char* kSelectAll = "pylon_select_all";
constexpr const char* kSelectById = "pylon_select_by_id";
constexpr const char* kReplace = "pylon_replace";
constexpr const char* kDeleteExpiredBatch = "pylon_delete_expired_batch";
constexpr const char* kLockOwners = "pylon_lock_owners";
constexpr const char* kEvictBeyondCap = "pylon_evict_beyond_cap";
constexpr const char* kTouch = "pylon_touch";
constexpr const char* kUpdateData = "pylon_update_data";
constexpr const char* kRotate = "pylon_rotate";
constexpr const char* kAuthenticate = "pylon_authenticate";
constexpr const char* kEvictOthersBeyondCap = "pylon_evict_others_beyond_cap";
constexpr const char* kCountByTenant = "pylon_count_by_tenant";
constexpr const char* kSelectRotated = "pylon_select_rotated";
constexpr const char* kDeleteExpiredRotatedBatch = "pylon_delete_expired_rotated_batch";
// remove_matching()'s statements are prepared on first use, one per combination of filter
// fields: this prefix and the bitmask of the fields (see MatchField).
constexpr const char* kDeleteMatchingPrefix = "pylon_delete_matching_";
// list_page()'s, the same way: this prefix and the bitmask of the query's filters (ListFilter).
constexpr const char* kListPagePrefix = "pylon_list_page_";

// The most array bytes one statement of save_batch() sends. The server would take up to 1 GB;
// this keeps the copies a statement makes (ours, the server's arrays and the rows unnested from
// them) small, while any batch of ordinary sessions, thousands of them, is still one statement.
constexpr std::size_t kBatchStatementBytes = std::size_t{32} << 20U;

// The columns of kSelectRotated, in order, with the type each must have.
constexpr std::array<Oid, 6> kSelectRotatedTypes = {kTextOid, kTextOid, kTextOid,
                                                    kTextOid, kInt8Oid, kInt8Oid};

// The fields of a SessionFilter, as bits of the mask that names remove_matching()'s statement.
// Conditions and parameters follow this order.
enum MatchField : unsigned {
  kMatchId = 1U << 0U,
  kMatchUserId = 1U << 1U,
  kMatchTenantId = 1U << 2U,
  kMatchIdpSessionId = 1U << 3U,
  kMatchExceptId = 1U << 4U,
};
constexpr std::size_t kMatchCombinations = 32;

// The filters of a SessionQuery, as bits of the mask that names list_page()'s statement.
// Conditions and parameters (from $4: $1 is now, $2 the cursor, $3 the limit) follow this order.
enum ListFilter : unsigned {
  kListTenantId = 1U << 0U,
  kListUserId = 1U << 1U,
  kListDevice = 1U << 2U,
  kListCreatedSince = 1U << 3U,
  kListCreatedBefore = 1U << 4U,
  kListLastSeenSince = 1U << 5U,
  kListLastSeenBefore = 1U << 6U,
};
constexpr std::size_t kListCombinations = 128;

// The first key of the two-key pg_advisory_xact_lock that insert_new() takes per user and tenant
// ("pcap" in ASCII); the second is a hash of the two. PostgreSQL keeps two-key locks apart from
// one-key locks such as kMigrationLockKey: the spaces never overlap.
constexpr std::int32_t kCapLockClass = 0x70636170;

// The "N" of the command tag "DELETE N" or "INSERT 0 N". Takes a non-const PGresult: libpq's
// PQcmdTuples() does.
std::size_t affected_rows(PGresult* result, const PgConnection& connection,
                          const std::string& action) {
  const std::string_view tuples = PQcmdTuples(result);
  std::size_t count = 0;
  const bool digits_only =
      !tuples.empty() && tuples.size() < 20 &&
      std::all_of(tuples.begin(), tuples.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!digits_only) {
    throw Error(ErrorCode::kInternal, action + " " + connection.target() +
                                          ": the server did not say how many rows it changed");
  }
  for (const char digit : tuples) count = count * 10 + static_cast<std::size_t>(digit - '0');
  return count;
}

class PostgresBackend final : public SessionBackend {
 public:
  PostgresBackend(const std::string& url, const PostgresOptions& options);
  std::unique_ptr<ChangeSource> open_change_source() override;

  std::vector<Session> load_all() override;
  void load_each(const std::function<void(const Session&)>& visit) override;
  std::optional<Session> load_one(std::string_view id) override;
  void save(const Session& session) override;
  void save_batch(const std::vector<Session>& sessions) override;
  bool remove(std::string_view id) override;
  std::size_t remove_user(std::string_view user_id) override;
  std::size_t remove_expired(std::int64_t now) override;
  std::vector<RemovedSession> remove_matching(const SessionFilter& filter) override;
  bool replace(std::string_view old_id, const Session& replacement) override;
  std::size_t remove_expired_batch(std::int64_t now, std::size_t limit) override;
  std::vector<RemovedSession> insert_new(const std::vector<Session>& sessions,
                                         std::size_t max_per_user) override;
  std::optional<Session> touch(std::string_view id, std::int64_t last_seen_at,
                               std::int64_t expires_at) override;
  std::optional<Session> update_data(std::string_view id, std::string_view data) override;
  std::optional<Session> rotate(std::string_view old_id, std::string_view new_id,
                                std::int64_t now) override;
  std::optional<Authentication> authenticate(std::string_view old_id, std::string_view new_id,
                                             std::string_view user_id, std::int64_t now,
                                             std::size_t max_per_user) override;
  std::vector<Session> list_page(const SessionQuery& query, std::int64_t now) override;
  std::vector<TenantCount> count_by_tenant(std::int64_t now) override;
  void load_rotated_each(const std::function<void(const RotatedId&)>& visit) override;
  std::size_t remove_expired_rotated(std::int64_t now, std::size_t limit) override;
  [[nodiscard]] std::string describe() const override { return connection_.shown_url(); }

 private:
  // Every new server session's setup: the statements, prepared again after each reconnect.
  void prepare_statements();
  // Each call below runs in the caller's Turn and throws Error naming the action and the
  // database.
  std::size_t run_counting(const char* statement, const Params& params, const std::string& action);
  std::optional<Session> run_returning_session(const char* statement, const Params& params,
                                               const std::string& action);
  void load_rows(const char* statement, const char* table, const Oid* types, std::size_t type_count,
                 const std::string& action, const std::function<void(const PGresult*)>& row);
  void upsert_in_statements(const std::vector<const Session*>& rows,
                            const std::vector<std::size_t>& ends, const std::string& action);
  void upsert_rows(const std::vector<const Session*>& rows, std::size_t begin, std::size_t end,
                   const std::string& action);
  // authenticate()'s rotation, in its transaction: the new row, or nullopt when the row `old_id`
  // is gone, expired or another user's; throws when it is another user's.
  std::optional<Session> sign_in(std::string_view old_id, std::string_view new_id,
                                 std::string_view user_id, std::int64_t now,
                                 std::size_t max_per_user, const std::string& action);

  std::string url_;  // as opened: a change source opens its own connection with them
  PostgresOptions options_;
  PgConnection connection_;
  // Which of remove_matching()'s and list_page()'s statements this connection has prepared, by
  // field mask. prepare_statements() clears them: a reconnect starts a server session that has
  // none.
  std::array<bool, kMatchCombinations> matching_prepared_{};
  std::array<bool, kListCombinations> listing_prepared_{};
  // The server process of connection_ (PgConnection::publish_server_pid()): this store's own
  // writes notify from it, and its change sources pace those (PgChangeSource::wait()).
  std::shared_ptr<std::atomic<int>> server_pid_ = std::make_shared<std::atomic<int>>(0);
};

PostgresBackend::PostgresBackend(const std::string& url, const PostgresOptions& options)
    : url_(url), options_(options), connection_(url, options.deadline) {
  PgMigrations(connection_).run();
  connection_.finish_setup([this] { prepare_statements(); });
  connection_.publish_server_pid(server_pid_);
}

std::size_t PostgresBackend::run_counting(const char* statement, const Params& params,
                                          const std::string& action) {
  const PgResult result = connection_.exec_prepared(Reconnect::kIfDead, statement, params, action);
  return affected_rows(result.get(), connection_, action);
}

// Every column of a session, "id, user_id, ...", in the order of detail::kSessionColumns: the
// order bind_session() binds and read_session_result() reads. Built once.
const std::string& row_columns() {
  static const std::string kColumns = detail::session_column_list();
  return kColumns;
}

// An upsert sets every column, so save() replaces the whole row, as the contract asks.
const std::string& update_every_column() {
  static const std::string kSet =
      " ON CONFLICT (id) DO UPDATE SET " + detail::session_upsert_assignments();
  return kSet;
}

// "$first, $first+1, ...": the parameters of a whole row, from $first on.
std::string row_parameters(int first) {
  std::string list;
  for (std::size_t i = 0; i < detail::kSessionColumns.size(); ++i) {
    list.append(i == 0 ? "$" : ", $").append(std::to_string(first + static_cast<int>(i)));
  }
  return list;
}

// The type of each column's parameter, and of each column read back, in row_columns()' order.
constexpr std::array<Oid, detail::kSessionColumns.size()> session_column_oids() noexcept {
  std::array<Oid, detail::kSessionColumns.size()> oids{};
  for (std::size_t i = 0; i < oids.size(); ++i) oids[i] = oid_of(detail::kSessionColumns[i].kind);
  return oids;
}
constexpr std::array<Oid, detail::kSessionColumns.size()> kSessionColumnOids =
    session_column_oids();

const std::vector<Oid>& session_parameter_types() {
  static const std::vector<Oid> kTypes(kSessionColumnOids.begin(), kSessionColumnOids.end());
  return kTypes;
}

void bind_session(Params& params, const Session& session) {
  detail::for_each_session_field(
      session, [&params](const detail::SessionColumn& column, const auto& member) {
        params.field(column, member);
      });
}

// The array type whose elements are of `element`, one of the types bind_session() binds.
Oid array_type_of(Oid element) noexcept {
  if (element == kInt8Oid) return kInt8ArrayOid;
  if (element == kByteaOid) return kByteaArrayOid;
  return kTextArrayOid;
}

// The bytes a session adds to the arrays of kUpsertBatch: its fields and a length word for each.
std::size_t encoded_size(const Session& session) noexcept {
  std::size_t size = 0;
  detail::for_each_session_field(session,
                                 [&size](const detail::SessionColumn&, const auto& member) {
                                   size += ArrayParam::field_size(member);
                                 });
  return size;
}

// rows[begin, end) as the array parameters of kUpsertBatch, one per column, in bind_session()'s
// order. The parameters point into `columns`, which must outlive them.
void bind_sessions(Params& params, std::vector<ArrayParam>& columns,
                   const std::vector<const Session*>& rows, std::size_t begin, std::size_t end) {
  const std::size_t count = end - begin;
  columns.clear();
  columns.reserve(kSessionColumnOids.size());
  for (const Oid type : kSessionColumnOids) columns.emplace_back(type, count);
  // Each array reserved whole ahead, so none grows by copying itself as it fills.
  std::array<std::size_t, detail::kSessionColumns.size()> bytes{};
  for (std::size_t row = begin; row < end; ++row) {
    std::size_t column = 0;
    detail::for_each_session_field(
        *rows[row], [&bytes, &column](const detail::SessionColumn&, const auto& member) {
          bytes.at(column++) += ArrayParam::field_size(member);
        });
  }
  for (std::size_t column = 0; column < columns.size(); ++column) {
    columns.at(column).reserve(bytes.at(column));
  }
  for (std::size_t row = begin; row < end; ++row) {
    std::size_t column = 0;
    detail::for_each_session_field(
        *rows[row], [&columns, &column](const detail::SessionColumn&, const auto& member) {
          columns.at(column++).field(member);
        });
  }
  for (std::size_t column = 0; column < columns.size(); ++column) {
    params.array(array_type_of(kSessionColumnOids.at(column)), columns.at(column).encoded());
  }
}

// The sessions a batch writes, in the batch's order: of several with one id only the last, which
// is what upserting them one after the other would leave. (It is also what one statement can
// do: ON CONFLICT DO UPDATE refuses to change a row twice.)
std::vector<const Session*> last_of_each_id(const std::vector<Session>& sessions) {
  std::vector<const Session*> rows;
  rows.reserve(sessions.size());
  std::unordered_set<std::string_view> seen;
  seen.reserve(sessions.size());
  for (auto session = sessions.rbegin(); session != sessions.rend(); ++session) {
    if (seen.insert(session->id).second) rows.push_back(&*session);
  }
  std::reverse(rows.begin(), rows.end());
  return rows;
}

// A statement every server session has prepared: its name, its text, its parameters' types.
using PreparedStatement = PgConnection::Statement;

// save(), save_batch() and replace(): upserts of whole rows.
void add_upserts(std::vector<PreparedStatement>& statements) {
  const std::string upsert = "INSERT INTO _pylon_sessions (" + row_columns() + ") VALUES (" +
                             row_parameters(1) + ")" + update_every_column();
  statements.push_back({kUpsert, upsert, session_parameter_types()});

  // save_batch(): the same upsert for many rows in one statement, each column an array. The
  // unnest() calls of a select list run in step (row i holds the arrays' i-th elements, in
  // order); compared with unnest(...) in FROM, which first copies each array into a tuplestore,
  // the server spends less per statement on batches of 4 to 16 (EXPLAIN ANALYZE of such a batch
  // shows it; no bench in bench/ measures it).
  std::string upsert_batch = "INSERT INTO _pylon_sessions (" + row_columns() + ") SELECT ";
  const auto column_count = static_cast<int>(session_parameter_types().size());
  for (int parameter = 1; parameter <= column_count; ++parameter) {
    upsert_batch += (parameter > 1 ? ", unnest($" : "unnest($") + std::to_string(parameter) + ")";
  }
  upsert_batch += update_every_column();
  std::vector<Oid> array_types;
  for (const Oid type : session_parameter_types()) array_types.push_back(array_type_of(type));
  statements.push_back({kUpsertBatch, upsert_batch, array_types});

  // The INSERT runs only when the DELETE found the old row; its command tag then says 1, else 0.
  // The upsert form keeps replace() writing exactly what save() would (a replacement whose id
  // is also the old one is fine: the DELETE's row no longer conflicts in the same statement).
  const std::string replace_sql =
      "WITH gone AS (DELETE FROM _pylon_sessions WHERE id = $1 RETURNING 1) "
      "INSERT INTO _pylon_sessions (" +
      row_columns() + ") SELECT " + row_parameters(2) + " WHERE EXISTS (SELECT 1 FROM gone)" +
      update_every_column();
  std::vector<Oid> replace_types = {kTextOid};
  replace_types.insert(replace_types.end(), session_parameter_types().begin(),
                       session_parameter_types().end());
  statements.push_back({kReplace, replace_sql, replace_types});
}

// The removals and the loads.
void add_deletes_and_selects(std::vector<PreparedStatement>& statements) {
  statements.push_back({kDeleteById, "DELETE FROM _pylon_sessions WHERE id = $1", {kTextOid}});
  statements.push_back(
      {kDeleteByUser, "DELETE FROM _pylon_sessions WHERE user_id = $1", {kTextOid}});
  statements.push_back({kDeleteExpired,
                        "WITH rotated AS (DELETE FROM _pylon_rotated_ids WHERE expires_at <= $1) "
                        "DELETE FROM _pylon_sessions WHERE expires_at <= $1",
                        {kInt8Oid}});
  // By id rather than ctid: ctid is not unique in a partitioned table. FOR UPDATE is what keeps
  // it right under concurrent writes: in READ COMMITTED a row changed since the statement's
  // snapshot (a save() sliding its expiry) is re-read at its newest version and re-checked
  // before it is locked, and once locked nobody else can change it, so every row the DELETE
  // finds by id is still expired. (An id semi-join alone would not re-check expires_at.) With no
  // second expires_at condition outside, the planner walks at most `limit` entries of the
  // expiry index and looks each row up by key: a batch costs its size, not the backlog's.
  statements.push_back({kDeleteExpiredBatch,
                        "DELETE FROM _pylon_sessions WHERE id IN (SELECT id FROM _pylon_sessions "
                        "WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
                        {kInt8Oid, kInt8Oid}});
  statements.push_back({kSelectAll, "SELECT " + row_columns() + " FROM _pylon_sessions", {}});
  statements.push_back(
      {kSelectById, "SELECT " + row_columns() + " FROM _pylon_sessions WHERE id = $1", {kTextOid}});
}

// insert_new()'s cap, then touch() and update_data().
void add_cap_and_updates(std::vector<PreparedStatement>& statements) {
  // insert_new(): one lock per "user_id <US> tenant_id" key ($1, distinct), in the order of the
  // lock keys. The server evaluates a volatile function of the select list after the sort (since
  // PostgreSQL 9.6), so the locks are taken in that order; a hash shared by two keys is one lock,
  // taken once.
  statements.push_back(
      {kLockOwners,
       "SELECT pg_advisory_xact_lock(" + std::to_string(kCapLockClass) +
           ", key) FROM (SELECT DISTINCT hashtext(owner) AS key FROM unnest($1::text[]) AS owner) "
           "AS keys ORDER BY key",
       {kTextArrayOid}});
  // The rows of each (user, tenant) pair of $1 and $2 (distinct pairs) beyond the newest $3:
  // newest by created_at, then by insertion. The join starts from the pairs, so the user index
  // finds their rows.
  statements.push_back(
      {kEvictBeyondCap,
       "DELETE FROM _pylon_sessions WHERE id IN (SELECT id FROM (SELECT s.id, row_number() "
       "OVER (PARTITION BY s.user_id, s.tenant_id ORDER BY s.created_at DESC, "
       "s.insert_order DESC) AS newer FROM unnest($1::text[], $2::text[]) AS owner(user_id, "
       "tenant_id) JOIN _pylon_sessions AS s ON s.user_id = owner.user_id AND s.tenant_id IS "
       "NOT DISTINCT FROM owner.tenant_id) AS ranked WHERE newer > $3) RETURNING id, user_id",
       {kTextArrayOid, kTextArrayOid, kInt8Oid}});
  statements.push_back(
      {kTouch,
       std::string("UPDATE _pylon_sessions SET last_seen_at = GREATEST(last_seen_at, $2), "
                   "expires_at = GREATEST(expires_at, $3) WHERE id = $1 RETURNING ") +
           row_columns(),
       {kTextOid, kInt8Oid, kInt8Oid}});
  statements.push_back(
      {kUpdateData,
       "UPDATE _pylon_sessions SET data = $2 WHERE id = $1 RETURNING " + row_columns(),
       {kTextOid, kByteaOid}});
}

// rotate()'s statement ($1 the old id, $2 the new one, $3 now), with `also_requires` added to
// the old row's conditions, and the new row the old one but for the columns of `copied_as`, each
// of which takes the expression given there instead (a parameter: the id is always $2).
// The INSERT copies what the DELETE returned, so the new row is the old one as storage held it
// at that instant; when there was no live old row, both CTEs and the INSERT see nothing and the
// statement writes nothing. A rotated id already recorded (its session re-created under the
// same id since) takes the new record's values; it keeps the old row's user either way.
std::string rotation_sql(
    const char* also_requires,
    std::initializer_list<std::pair<std::string_view, std::string>> copied_as) {
  return std::string("WITH old AS (DELETE FROM _pylon_sessions WHERE id = $1 AND expires_at > $3") +
         also_requires + " RETURNING " + row_columns() +
         "), rotated AS (INSERT INTO _pylon_rotated_ids (id, replaced_by, user_id, tenant_id, "
         "rotated_at, expires_at) SELECT id, $2, user_id, tenant_id, $3, CASE WHEN "
         "absolute_expires_at > 0 THEN absolute_expires_at ELSE expires_at END FROM old "
         "ON CONFLICT (id) DO UPDATE SET replaced_by = excluded.replaced_by, "
         "user_id = excluded.user_id, tenant_id = excluded.tenant_id, "
         "rotated_at = excluded.rotated_at, expires_at = excluded.expires_at) "
         "INSERT INTO _pylon_sessions (" +
         row_columns() + ") SELECT " + detail::session_column_list_replacing(copied_as) +
         " FROM old RETURNING " + row_columns();
}

// rotate(), authenticate() and the rotated ids they record.
void add_rotation(std::vector<PreparedStatement>& statements) {
  statements.push_back({kRotate, rotation_sql("", {{"id", "$2"}}), {kTextOid, kTextOid, kInt8Oid}});
  // authenticate(): $4 the user signing in, who becomes the new row's, authenticated now; $5 and
  // $6 the user and tenant the transaction read the old row with (and locked by), which the row
  // must still have.
  statements.push_back({kAuthenticate,
                        rotation_sql(" AND user_id = $5 AND tenant_id IS NOT DISTINCT FROM $6",
                                     {{"id", "$2"}, {"user_id", "$4"}, {"authenticated_at", "$3"}}),
                        {kTextOid, kTextOid, kInt8Oid, kTextOid, kTextOid, kTextOid}});
  // authenticate()'s cap: of the rows of user $1 in tenant $2 other than the new row $3, those
  // beyond the newest $4 - 1 (kEvictBeyondCap's order), so $4 remain with the new row.
  statements.push_back(
      {kEvictOthersBeyondCap,
       "DELETE FROM _pylon_sessions WHERE id IN (SELECT id FROM (SELECT id, row_number() "
       "OVER (ORDER BY created_at DESC, insert_order DESC) AS newer FROM _pylon_sessions "
       "WHERE user_id = $1 AND tenant_id IS NOT DISTINCT FROM $2 AND id <> $3) AS ranked "
       "WHERE newer >= $4) RETURNING id, user_id",
       {kTextOid, kTextOid, kTextOid, kInt8Oid}});
  statements.push_back({kSelectRotated,
                        "SELECT id, replaced_by, user_id, tenant_id, rotated_at, expires_at "
                        "FROM _pylon_rotated_ids",
                        {}});
  // As kDeleteExpiredBatch, for the same reasons.
  statements.push_back(
      {kDeleteExpiredRotatedBatch,
       "DELETE FROM _pylon_rotated_ids WHERE id IN (SELECT id FROM "
       "_pylon_rotated_ids WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
       {kInt8Oid, kInt8Oid}});
}

// count_by_tenant(): the live rows of each tenant, NULL first, then in byte order (collation
// "C"), as SQLite orders them. Grouping needs no collation: every deterministic one, the only
// kind a database's default can be, calls two texts equal only when their bytes are.
void add_administration(std::vector<PreparedStatement>& statements) {
  statements.push_back(
      {kCountByTenant,
       "SELECT tenant_id, count(*), count(*) FILTER (WHERE user_id = '') FROM _pylon_sessions "
       "WHERE expires_at > $1 GROUP BY tenant_id ORDER BY tenant_id COLLATE \"C\" NULLS FIRST",
       {kInt8Oid}});
}

// Every statement but remove_matching()'s and list_page()'s, in the order they are prepared.
// Built once: the texts are the same for every connection.
const std::vector<PreparedStatement>& session_statements() {
  static const std::vector<PreparedStatement> kStatements = [] {
    std::vector<PreparedStatement> statements;
    add_upserts(statements);
    add_deletes_and_selects(statements);
    add_cap_and_updates(statements);
    add_rotation(statements);
    add_administration(statements);
    return statements;
  }();
  return kStatements;
}

void PostgresBackend::prepare_statements() {
  connection_.setup_in_one_round_trip({}, session_statements());
  matching_prepared_.fill(false);
  listing_prepared_.fill(false);
}

// remove_matching()'s DELETE for the fields in `mask`, parameters numbered in MatchField order.
std::string matching_sql(unsigned mask) {
  static constexpr std::array<std::pair<MatchField, const char*>, 5> kConditions = {{
      {kMatchId, "id = $"},
      {kMatchUserId, "user_id = $"},
      {kMatchTenantId, "tenant_id = $"},
      {kMatchIdpSessionId, "idp_session_id = $"},
      {kMatchExceptId, "id <> $"},
  }};
  std::string sql = "DELETE FROM _pylon_sessions WHERE ";
  int parameter = 0;
  for (const auto& [field, condition] : kConditions) {
    if ((mask & field) == 0) continue;
    if (parameter > 0) sql += " AND ";
    sql += condition + std::to_string(++parameter);
  }
  return sql + " RETURNING id, user_id";
}

// list_page()'s SELECT for the filters in `mask`: $1 now, $2 the cursor ('' for the first page,
// below every id), $3 the limit, then the filters' parameters in ListFilter order. The cursor's
// comparison and the order are in collation "C", the id column's since migration 0005, so the
// primary key's index walks the page. On that column a plain `id > $2` would do; spelling the
// collation out keeps the order byte order even where the column has another (a table altered
// by hand), at the cost of pages that read the whole table there.
std::string listing_sql(unsigned mask) {
  static constexpr std::array<std::pair<ListFilter, const char*>, 7> kConditions = {{
      {kListTenantId, "tenant_id = $"},
      {kListUserId, "user_id = $"},
      {kListDevice, "device = $"},
      {kListCreatedSince, "created_at >= $"},
      {kListCreatedBefore, "created_at < $"},
      {kListLastSeenSince, "last_seen_at >= $"},
      {kListLastSeenBefore, "last_seen_at < $"},
  }};
  std::string sql = "SELECT " + row_columns() +
                    " FROM _pylon_sessions WHERE id COLLATE \"C\" > $2 AND expires_at > $1";
  int parameter = 3;
  for (const auto& [filter, condition] : kConditions) {
    if ((mask & filter) == 0) continue;
    sql.append(" AND ").append(condition).append(std::to_string(++parameter));
  }
  return sql + " ORDER BY id COLLATE \"C\" LIMIT $3";
}

// The rows of a result of "... RETURNING id, user_id".
std::vector<RemovedSession> removed_rows(const PGresult* result) {
  std::vector<RemovedSession> removed;
  const int rows = PQntuples(result);
  removed.reserve(static_cast<std::size_t>(std::max(rows, 0)));
  for (int row = 0; row < rows; ++row) {
    removed.push_back({text_at(result, row, 0), text_at(result, row, 1)});
  }
  return removed;
}

// Row 0 of a result selecting row_columns() (from column `first` on) into `session`. Its
// strings are assigned, not built anew, so a load that reads every row into one Session reuses
// their buffers. (Not read_session_row: the amalgamation is one translation unit, and
// session_backend.cpp's reader has that name.)
void read_session_result(const PGresult* row, Session& session, int first = 0) {
  int column = first;
  detail::for_each_session_field(session,
                                 [row, &column](const detail::SessionColumn&, auto& member) {
                                   read_field(row, column++, member);
                                 });
}

// Row 0 of a result selecting the columns of _pylon_rotated_ids (from column `first` on).
void read_rotated_result(const PGresult* row, RotatedId& rotated, int first = 0) {
  assign_text_at(row, first, rotated.id);
  assign_text_at(row, first + 1, rotated.replaced_by);
  assign_text_at(row, first + 2, rotated.user_id);
  assign_optional_text_at(row, first + 3, rotated.tenant_id);
  rotated.rotated_at = int8_at(row, first + 4);
  rotated.expires_at = int8_at(row, first + 5);
}

std::vector<Session> PostgresBackend::load_all() {
  std::vector<Session> sessions;
  load_each([&sessions](const Session& session) { sessions.push_back(session); });
  return sessions;
}

void PostgresBackend::load_each(const std::function<void(const Session&)>& visit) {
  const std::string action = "cannot load sessions from";
  Session session;  // every row is read into this one, reusing its buffers
  load_rows(kSelectAll, "_pylon_sessions", kSessionColumnOids.data(), kSessionColumnOids.size(),
            action, [&session, &visit](const PGresult* row) {
              read_session_result(row, session);
              visit(session);
            });
}

void PostgresBackend::load_rotated_each(const std::function<void(const RotatedId&)>& visit) {
  const std::string action = "cannot load rotated session ids from";
  RotatedId rotated;  // as in load_each(), one for every row
  load_rows(kSelectRotated, "_pylon_rotated_ids", kSelectRotatedTypes.data(),
            kSelectRotatedTypes.size(), action, [&rotated, &visit](const PGresult* row) {
              read_rotated_result(row, rotated);
              visit(rotated);
            });
}

// Runs the prepared query `statement` of `table` in single-row mode and hands each row, a result
// of one row, to `row`, once the types of its columns are checked against `types`. A row is
// valid only during the call.
void PostgresBackend::load_rows(const char* statement, const char* table, const Oid* types,
                                std::size_t type_count, const std::string& action,
                                const std::function<void(const PGresult*)>& row) {
  const PgConnection::Turn turn(connection_, action);
  bool types_checked = false;
  const auto check_types = [&](const PGresult* result) {
    // NOLINTBEGIN(cppcoreguidelines-pro-bounds-pointer-arithmetic): types[0, type_count)
    for (std::size_t column = 0; column < type_count; ++column) {
      const int index = static_cast<int>(column);
      if (PQftype(result, index) != types[column] || PQfformat(result, index) != kBinaryFormat) {
        throw Error(ErrorCode::kCorruptDatabase, action + " " + connection_.target() + ": column " +
                                                     PQfname(result, index) + " of " + table +
                                                     " is not of the type pylon-sessions wrote");
      }
    }
    // NOLINTEND(cppcoreguidelines-pro-bounds-pointer-arithmetic)
    types_checked = true;
  };
  connection_.exec_prepared(Reconnect::kIfDead, statement, Params(), action,
                            [&](const PGresult* result) {
                              if (!types_checked) check_types(result);
                              row(result);
                            });
}

std::optional<Session> PostgresBackend::load_one(std::string_view id) {
  if (!detail::is_storable_text(id)) return std::nullopt;  // as in remove(): no row can have it
  Params params;
  params.text(id);
  const std::string action = "cannot load a session from";
  const PgConnection::Turn turn(connection_, action);
  const PgResult result =
      connection_.exec_prepared(Reconnect::kIfDead, kSelectById, params, action);
  if (PQntuples(result.get()) == 0) return std::nullopt;
  Session session;
  read_session_result(result.get(), session);
  return session;
}

void PostgresBackend::save(const Session& session) {
  detail::check_session_for_storage(session);
  Params params;
  bind_session(params, session);
  const std::string action = "cannot save a session to";
  const PgConnection::Turn turn(connection_, action);
  connection_.exec_prepared(Reconnect::kIfDead, kUpsert, params, action);
}

// Where each statement of a batch ends in `rows`: at least one row each, at most
// kBatchStatementBytes unless a single row is larger.
std::vector<std::size_t> statement_ends(const std::vector<const Session*>& rows) {
  std::vector<std::size_t> ends;
  std::size_t bytes = 0;
  for (std::size_t row = 0; row < rows.size(); ++row) {
    const std::size_t size = encoded_size(*rows[row]);
    if (row > 0 && bytes + size > kBatchStatementBytes) {
      ends.push_back(row);
      bytes = 0;
    }
    bytes += size;
  }
  ends.push_back(rows.size());
  return ends;
}

// One statement, so one round trip and one commit (one WAL flush on the server) for the whole
// batch, and the guarantees of save(): autocommit, so a lost reply leaves nothing open on the
// server, and in doubt only as save() is. Past kBatchStatementBytes the rows go in several such
// statements inside BEGIN ... COMMIT: a round trip each, still one commit.
void PostgresBackend::save_batch(const std::vector<Session>& sessions) {
  for (const Session& session : sessions) detail::check_session_for_storage(session);
  if (sessions.empty()) return;
  const std::vector<const Session*> rows = last_of_each_id(sessions);
  const std::vector<std::size_t> ends = statement_ends(rows);
  const std::string action = "cannot save sessions to";
  const PgConnection::Turn turn(connection_, action);
  connection_.reconnect_if_dead();
  upsert_in_statements(rows, ends, action);
}

// save_batch()'s statements for `rows`, split at `ends`, on a connection the caller has just
// checked, in its Turn.
void PostgresBackend::upsert_in_statements(const std::vector<const Session*>& rows,
                                           const std::vector<std::size_t>& ends,
                                           const std::string& action) {
  if (ends.size() == 1) {
    upsert_rows(rows, 0, rows.size(), action);
    return;
  }
  PgConnection::Transaction transaction(connection_, Reconnect::kNever, "BEGIN", action);
  std::size_t begin = 0;
  for (const std::size_t end : ends) {
    upsert_rows(rows, begin, end, action);
    begin = end;
  }
  transaction.commit(action);
}

// Upserts rows[begin, end), whose ids are distinct, in one statement.
void PostgresBackend::upsert_rows(const std::vector<const Session*>& rows, std::size_t begin,
                                  std::size_t end, const std::string& action) {
  Params params;
  if (end - begin == 1) {  // the plain upsert: no arrays to build, none for the server to unnest
    bind_session(params, *rows[begin]);
    connection_.exec_prepared(Reconnect::kNever, kUpsert, params, action);
    return;
  }
  std::vector<ArrayParam> columns;
  bind_sessions(params, columns, rows, begin, end);
  connection_.exec_prepared(Reconnect::kNever, kUpsertBatch, params, action);
}

bool PostgresBackend::remove(std::string_view id) {
  // TEXT cannot hold such an id, so no row has it; the server would reject the parameter.
  if (!detail::is_storable_text(id)) return false;
  Params params;
  params.text(id);
  const std::string action = "cannot delete a session from";
  const PgConnection::Turn turn(connection_, action);
  return run_counting(kDeleteById, params, action) > 0;
}

std::size_t PostgresBackend::remove_user(std::string_view user_id) {
  if (!detail::is_storable_text(user_id)) return 0;  // as in remove(): no row can have it
  Params params;
  params.text(user_id);
  const std::string action = "cannot delete a user's sessions from";
  const PgConnection::Turn turn(connection_, action);
  return run_counting(kDeleteByUser, params, action);
}

std::size_t PostgresBackend::remove_expired(std::int64_t now) {
  Params params;
  params.int8(now);
  const std::string action = "cannot delete expired sessions from";
  const PgConnection::Turn turn(connection_, action);
  return run_counting(kDeleteExpired, params, action);
}

std::vector<RemovedSession> PostgresBackend::remove_matching(const SessionFilter& filter) {
  // A tenant alone is a whole tenant (revoke_tenant()); except_id alone would be everyone else.
  detail::check_removal_filter(filter);
  const std::array<std::pair<MatchField, const std::optional<std::string>*>, 5> fields = {{
      {kMatchId, &filter.id},
      {kMatchUserId, &filter.user_id},
      {kMatchTenantId, &filter.tenant_id},
      {kMatchIdpSessionId, &filter.idp_session_id},
      {kMatchExceptId, &filter.except_id},
  }};
  unsigned mask = 0;
  Params params;
  for (const auto& [field, value] : fields) {
    if (!value->has_value()) continue;
    // TEXT cannot hold such a value, so no row has it (and the server would reject the
    // parameter): an equality on it matches nothing, and sparing it spares no row.
    if (!detail::is_storable_text(**value)) {
      if (field == kMatchExceptId) continue;
      return {};
    }
    mask |= field;
    params.text(**value);
  }
  const std::string action = "cannot delete sessions from";
  const std::string name = kDeleteMatchingPrefix + std::to_string(mask);
  const PgConnection::Turn turn(connection_, action);
  connection_.reconnect_if_dead();  // a reconnect forgets what was prepared
  if (!matching_prepared_.at(mask)) {
    connection_.prepare(Reconnect::kNever, name.c_str(), matching_sql(mask).c_str(),
                        std::vector<Oid>(static_cast<std::size_t>(params.count()), kTextOid));
    matching_prepared_.at(mask) = true;
  }
  const PgResult result =
      connection_.exec_prepared(Reconnect::kNever, name.c_str(), params, action);
  return removed_rows(result.get());
}

bool PostgresBackend::replace(std::string_view old_id, const Session& replacement) {
  detail::check_session_for_storage(replacement);
  if (!detail::is_storable_text(old_id)) return false;  // as in remove(): no row can have it
  Params params;
  params.text(old_id);
  bind_session(params, replacement);
  const std::string action = "cannot rotate a session in";
  const PgConnection::Turn turn(connection_, action);
  return run_counting(kReplace, params, action) > 0;
}

std::size_t PostgresBackend::remove_expired_batch(std::int64_t now, std::size_t limit) {
  if (limit == 0) return 0;  // LIMIT 0 deletes nothing; no need to ask the server
  const auto max_limit = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
  Params params;
  params.int8(now).int8(static_cast<std::int64_t>(std::min(limit, max_limit)));
  const std::string action = "cannot delete expired sessions from";
  const PgConnection::Turn turn(connection_, action);
  return run_counting(kDeleteExpiredBatch, params, action);
}

// The key of the advisory lock that insert_new() and authenticate() take for a user and tenant
// (kLockOwners hashes it): the user and the tenant joined by U+001F, a character that ends
// neither. A null tenant and an empty one share a key; they only wait for each other.
std::string cap_lock_key(std::string_view user_id, std::optional<std::string_view> tenant_id) {
  std::string key(user_id);
  key += '\x1f';
  if (tenant_id) key += *tenant_id;
  return key;
}

// See the section comment: without a cap (or with anonymous sessions only), save_batch(); with
// one, a transaction that locks the batch's users and tenants, inserts, and evicts.
std::vector<RemovedSession> PostgresBackend::insert_new(const std::vector<Session>& sessions,
                                                        std::size_t max_per_user) {
  for (const Session& session : sessions) detail::check_session_for_storage(session);
  if (sessions.empty()) return {};
  const std::vector<const Session*> rows = last_of_each_id(sessions);
  const std::vector<std::size_t> ends = statement_ends(rows);
  const std::string action = "cannot save sessions to";

  // The distinct (user, tenant) pairs of the batch, and the key each one's lock is taken by
  // (cap_lock_key()). Anonymous sessions count against no cap: they have no pair, so none of
  // them is locked for, ranked or evicted.
  std::set<std::pair<std::string_view, std::optional<std::string_view>>> owners;
  if (max_per_user > 0) {
    for (const Session* session : rows) {
      if (session->is_anonymous()) continue;
      std::optional<std::string_view> tenant_id;
      if (session->tenant_id) tenant_id = *session->tenant_id;
      owners.emplace(session->user_id, tenant_id);
    }
  }
  if (owners.empty()) {
    const PgConnection::Turn turn(connection_, action);
    connection_.reconnect_if_dead();
    upsert_in_statements(rows, ends, action);
    return {};
  }
  ArrayParam keys(kTextOid, owners.size());
  ArrayParam users(kTextOid, owners.size());
  ArrayParam tenants(kTextOid, owners.size());
  for (const auto& [user_id, tenant_id] : owners) {
    keys.bytes(cap_lock_key(user_id, tenant_id));
    users.bytes(user_id);
    tenants.optional_bytes(tenant_id ? std::optional<std::string>(*tenant_id) : std::nullopt);
  }
  Params lock;
  lock.array(kTextArrayOid, keys.encoded());
  const auto max_cap = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
  Params evict;
  evict.array(kTextArrayOid, users.encoded())
      .array(kTextArrayOid, tenants.encoded())
      .int8(static_cast<std::int64_t>(std::min(max_per_user, max_cap)));

  const PgConnection::Turn turn(connection_, action);
  // Nothing is committed unless all is: no row inserted, none evicted.
  PgConnection::Transaction transaction(connection_, Reconnect::kIfDead,
                                        "BEGIN ISOLATION LEVEL READ COMMITTED", action);
  connection_.exec_prepared(Reconnect::kNever, kLockOwners, lock, action);
  std::size_t begin = 0;
  for (const std::size_t end : ends) {
    upsert_rows(rows, begin, end, action);
    begin = end;
  }
  const PgResult evicted =
      connection_.exec_prepared(Reconnect::kNever, kEvictBeyondCap, evict, action);
  std::vector<RemovedSession> removed = removed_rows(evicted.get());
  transaction.commit(action);
  return removed;
}

// Runs `statement`, an UPDATE or INSERT ... RETURNING every column, which changes one row or
// none; the row as stored, or nullopt.
std::optional<Session> PostgresBackend::run_returning_session(const char* statement,
                                                              const Params& params,
                                                              const std::string& action) {
  const PgConnection::Turn turn(connection_, action);
  const PgResult result = connection_.exec_prepared(Reconnect::kIfDead, statement, params, action);
  if (PQntuples(result.get()) == 0) return std::nullopt;
  Session session;
  read_session_result(result.get(), session);
  return session;
}

std::optional<Session> PostgresBackend::touch(std::string_view id, std::int64_t last_seen_at,
                                              std::int64_t expires_at) {
  if (!detail::is_storable_text(id)) return std::nullopt;  // as in remove(): no row can have it
  Params params;
  params.text(id).int8(last_seen_at).int8(expires_at);
  return run_returning_session(kTouch, params, "cannot slide a session's expiry in");
}

std::optional<Session> PostgresBackend::update_data(std::string_view id, std::string_view data) {
  if (!detail::is_storable_text(id)) return std::nullopt;  // as in remove(): no row can have it
  Params params;
  params.text(id).bytea(data);
  return run_returning_session(kUpdateData, params, "cannot update a session's data in");
}

std::optional<Session> PostgresBackend::rotate(std::string_view old_id, std::string_view new_id,
                                               std::int64_t now) {
  detail::check_rotation_ids(old_id, new_id);
  if (!detail::is_storable_text(old_id)) return std::nullopt;  // as in remove(): no such row
  Params params;
  params.text(old_id).text(new_id).int8(now);
  return run_returning_session(kRotate, params, "cannot rotate a session in");
}

// See the section comment. The checks, and their messages, are SQLite's (check_signing_in_user,
// check_may_sign_in).
std::optional<Authentication> PostgresBackend::authenticate(std::string_view old_id,
                                                            std::string_view new_id,
                                                            std::string_view user_id,
                                                            std::int64_t now,
                                                            std::size_t max_per_user) {
  detail::check_rotation_ids(old_id, new_id);
  detail::check_signing_in_user(user_id);
  if (!detail::is_storable_text(old_id)) return std::nullopt;  // as in remove(): no such row
  const std::string action = "cannot sign a user in to a session in";
  const PgConnection::Turn turn(connection_, action);
  // Nothing is committed unless all is: no rotation without its evictions, nor the reverse.
  PgConnection::Transaction transaction(connection_, Reconnect::kIfDead,
                                        "BEGIN ISOLATION LEVEL READ COMMITTED", action);
  std::optional<Session> session = sign_in(old_id, new_id, user_id, now, max_per_user, action);
  if (!session) return std::nullopt;  // the transaction rolls back, having written nothing
  Authentication signed_in;
  if (max_per_user > 0) {
    const auto max_cap = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
    Params evict;
    evict.text(user_id)
        .optional_text(session->tenant_id)
        .text(new_id)
        .int8(static_cast<std::int64_t>(std::min(max_per_user, max_cap)));
    const PgResult evicted =
        connection_.exec_prepared(Reconnect::kNever, kEvictOthersBeyondCap, evict, action);
    signed_in.evicted = removed_rows(evicted.get());
  }
  transaction.commit(action);
  signed_in.session = *std::move(session);
  return signed_in;
}

std::optional<Session> PostgresBackend::sign_in(std::string_view old_id, std::string_view new_id,
                                                std::string_view user_id, std::int64_t now,
                                                std::size_t max_per_user,
                                                const std::string& action) {
  // Each round reads the row, then rotates it only if it is still live with the user and tenant
  // read. A row deleted or expired in between ends the next round with nullopt; only a row whose
  // user or tenant changed in between (which a save() or replace() of the whole row can do, and
  // no slide or data update) takes another round. Past a few, kBusy: the caller may retry.
  constexpr int kRounds = 3;
  std::set<std::string> locked;  // the cap's lock keys this transaction holds
  for (int round = 0; round < kRounds; ++round) {
    Params id;
    id.text(old_id);
    const PgResult found = connection_.exec_prepared(Reconnect::kNever, kSelectById, id, action);
    if (PQntuples(found.get()) == 0) return std::nullopt;
    Session current;
    read_session_result(found.get(), current);
    if (current.expires_at <= now) return std::nullopt;
    detail::check_may_sign_in(current, user_id);
    std::optional<std::string_view> tenant_id;
    if (current.tenant_id) tenant_id = *current.tenant_id;
    std::string key = cap_lock_key(user_id, tenant_id);
    if (max_per_user > 0 && locked.count(key) == 0) {
      ArrayParam keys(kTextOid, 1);
      keys.bytes(key);
      Params lock;
      lock.array(kTextArrayOid, keys.encoded());
      connection_.exec_prepared(Reconnect::kNever, kLockOwners, lock, action);
      locked.insert(std::move(key));
    }
    Params params;
    params.text(old_id)
        .text(new_id)
        .int8(now)
        .text(user_id)
        .text(current.user_id)
        .optional_text(current.tenant_id);
    const PgResult rotated =
        connection_.exec_prepared(Reconnect::kNever, kAuthenticate, params, action);
    if (PQntuples(rotated.get()) > 0) {
      Session session;
      read_session_result(rotated.get(), session);
      return session;
    }
  }
  throw Error(ErrorCode::kBusy, action + " " + connection_.target() +
                                    ": the session's user or tenant changed under each of " +
                                    std::to_string(kRounds) +
                                    " attempts to sign in to it; nothing was written");
}

std::vector<Session> PostgresBackend::list_page(const SessionQuery& query, std::int64_t now) {
  detail::check_session_query(query);  // every text is storable, the cursor an id or ''
  Params params;
  params.int8(now).text(query.after).int8(static_cast<std::int64_t>(query.limit));
  unsigned mask = 0;
  const auto filter_text = [&mask, &params](ListFilter filter,
                                            const std::optional<std::string>& value) {
    if (!value) return;
    mask |= filter;
    params.text(*value);
  };
  const auto filter_time = [&mask, &params](ListFilter filter,
                                            const std::optional<std::int64_t>& value) {
    if (!value) return;
    mask |= filter;
    params.int8(*value);
  };
  filter_text(kListTenantId, query.tenant_id);
  filter_text(kListUserId, query.user_id);
  filter_text(kListDevice, query.device);
  filter_time(kListCreatedSince, query.created_since);
  filter_time(kListCreatedBefore, query.created_before);
  filter_time(kListLastSeenSince, query.last_seen_since);
  filter_time(kListLastSeenBefore, query.last_seen_before);

  const std::string action = "cannot list sessions in";
  const std::string name = kListPagePrefix + std::to_string(mask);
  const PgConnection::Turn turn(connection_, action);
  connection_.reconnect_if_dead();  // a reconnect forgets what was prepared
  if (!listing_prepared_.at(mask)) {
    std::vector<Oid> types = {kInt8Oid, kTextOid, kInt8Oid};
    for (const ListFilter filter : {kListTenantId, kListUserId, kListDevice}) {
      if ((mask & filter) != 0) types.push_back(kTextOid);
    }
    for (const ListFilter filter :
         {kListCreatedSince, kListCreatedBefore, kListLastSeenSince, kListLastSeenBefore}) {
      if ((mask & filter) != 0) types.push_back(kInt8Oid);
    }
    connection_.prepare(Reconnect::kNever, name.c_str(), listing_sql(mask).c_str(), types);
    listing_prepared_.at(mask) = true;
  }
  std::vector<Session> page;
  connection_.exec_prepared(
      Reconnect::kNever, name.c_str(), params, action,
      [&page](const PGresult* row) { read_session_result(row, page.emplace_back()); });
  return page;
}

std::vector<TenantCount> PostgresBackend::count_by_tenant(std::int64_t now) {
  Params params;
  params.int8(now);
  const std::string action = "cannot count sessions in";
  const PgConnection::Turn turn(connection_, action);
  std::vector<TenantCount> counts;
  connection_.exec_prepared(Reconnect::kIfDead, kCountByTenant, params, action,
                            [&counts](const PGresult* row) {
                              TenantCount& count = counts.emplace_back();
                              assign_optional_text_at(row, 0, count.tenant_id);
                              count.sessions = static_cast<std::size_t>(int8_at(row, 1));
                              count.anonymous = static_cast<std::size_t>(int8_at(row, 2));
                            });
  return counts;
}

std::size_t PostgresBackend::remove_expired_rotated(std::int64_t now, std::size_t limit) {
  if (limit == 0) return 0;  // as in remove_expired_batch()
  const auto max_limit = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
  Params params;
  params.int8(now).int8(static_cast<std::int64_t>(std::min(limit, max_limit)));
  const std::string action = "cannot delete expired rotated session ids from";
  const PgConnection::Turn turn(connection_, action);
  return run_counting(kDeleteExpiredRotatedBatch, params, action);
}

// ================================================================================================
// 6. The change log
//
// A store's ChangeFeed reads the change log through a PgChangeSource: a connection of its own
// (so the feed never waits behind the store's writes for the backend's connection, nor they
// behind it), which LISTENs for the NOTIFY that migration 0004's trigger sends as every change
// commits. Its reads are prepared statements on that connection, prepared again, with LISTEN,
// on every new server session: a reconnect after the connection was terminated or the server
// restarted listens again before anything else, and wait() then says "may have changed" so the
// feed reads what it missed.
// ================================================================================================

// An entry of the log with what storage holds for its id: position, id, whether a session row
// was joined and its columns (from kLoggedSessionColumn), whether a rotated id was joined and its
// columns (from kLoggedRotatedColumn). Built once.
constexpr int kLoggedSessionColumn = 3;
constexpr int kLoggedRotatedColumn =
    kLoggedSessionColumn + static_cast<int>(detail::kSessionColumns.size()) + 1;
const std::string& logged_change_columns() {
  static const std::string kColumns =
      "c.position, c.id, s.id IS NOT NULL, " + detail::session_column_list("s.") +
      ", r.id IS NOT NULL, r.id, r.replaced_by, r.user_id, r.tenant_id, r.rotated_at, "
      "r.expires_at FROM _pylon_change_log AS c "
      "LEFT JOIN _pylon_sessions AS s ON s.id = c.id "
      "LEFT JOIN _pylon_rotated_ids AS r ON r.id = c.id";
  return kColumns;
}
// Positions are handed out when an entry is logged and committed later, so entries just below
// the newest may still be in flight when a store starts: it starts this far back, and applies
// those again (harmless: an entry carries what storage holds now).
constexpr std::int64_t kStartOverlap = 1000;

bool bool_at(const PGresult* row, int column) {
  return PQgetisnull(row, 0, column) == 0 && PQgetlength(row, 0, column) == 1 &&
         *PQgetvalue(row, 0, column) != 0;
}

// The newest position of the log less kStartOverlap (see there), or the newest pruned.
std::string change_position_sql() {
  return "SELECT GREATEST(COALESCE((SELECT max(position) FROM _pylon_change_log), 0) - " +
         std::to_string(kStartOverlap) +
         ", (SELECT pruned_through FROM _pylon_change_log_state), 0)::int8";
}

// Its connection is made on a thread of its own, started by the constructor, so that a store
// opening loads its sessions meanwhile instead of waiting for a second handshake; the first
// call that needs the connection waits for it, and a connection that failed is tried again by
// the next call. The position a store takes before its load is read by the backend, on its own
// connection (PostgresBackend::open_change_source()), and handed over as `first_position`.
// Notifications sent before LISTEN reached the server are not lost to the store: wait() says
// "may have changed" on the first call after each new connection, so the log is read.
class PgChangeSource final : public ChangeSource {
 public:
  // `writer_pid`: the server process of the backend whose store follows this source.
  PgChangeSource(std::string url, std::chrono::milliseconds deadline,
                 std::shared_ptr<const std::atomic<int>> writer_pid, std::int64_t first_position)
      : url_(std::move(url)),
        deadline_(deadline),
        writer_pid_(std::move(writer_pid)),
        first_position_(first_position),
        connecting_([this] {
          try {
            open();
          } catch (...) {
            connect_error_ = std::current_exception();
          }
        }) {}
  ~PgChangeSource() override {
    if (connecting_.joinable()) connecting_.join();
  }
  PgChangeSource(const PgChangeSource&) = delete;
  PgChangeSource& operator=(const PgChangeSource&) = delete;
  PgChangeSource(PgChangeSource&&) = delete;
  PgChangeSource& operator=(PgChangeSource&&) = delete;

  std::int64_t position() override {
    if (first_position_) {
      const std::int64_t first = *first_position_;
      first_position_.reset();
      return first;
    }
    const std::string action = "cannot read the change log of";
    PgConnection& connection = connected();
    const PgConnection::Turn turn(connection, action);
    const PgResult result =
        connection.exec_prepared(Reconnect::kIfDead, "pylon_change_position", Params(), action);
    return int8_at(result.get(), 0);
  }

  // The entries first, pruned_through after: a prune that removed entries before the first read
  // has recorded it by the second.
  ChangeBatch read(std::int64_t after, const std::vector<std::int64_t>& also,
                   std::size_t limit) override {
    const std::string action = "cannot read the change log of";
    PgConnection& connection = connected();
    const PgConnection::Turn turn(connection, action);
    ArrayParam gaps(kInt8Oid, also.size());
    for (const std::int64_t gap : also) gaps.int8(gap);
    Params params;
    params.int8(after)
        .array(kInt8ArrayOid, gaps.encoded())
        .int8(static_cast<std::int64_t>(std::min<std::size_t>(limit, INT64_MAX)));
    ChangeBatch batch;
    connection.exec_prepared(
        Reconnect::kIfDead, "pylon_changes_after", params, action, [&batch](const PGresult* row) {
          SessionChange& change = batch.changes.emplace_back();
          change.position = int8_at(row, 0);
          assign_text_at(row, 1, change.id);
          if (bool_at(row, kLoggedSessionColumn - 1)) {
            read_session_result(row, change.session.emplace(), kLoggedSessionColumn);
          }
          if (bool_at(row, kLoggedRotatedColumn - 1)) {
            read_rotated_result(row, change.rotated.emplace(), kLoggedRotatedColumn);
          }
        });
    const PgResult pruned =
        connection.exec_prepared(Reconnect::kNever, "pylon_pruned_through", Params(), action);
    batch.pruned_through = int8_at(pruned.get(), 0);
    return batch;
  }

  // 0: "may have changed" always, so a store checking before every lookup reads the log each
  // time; a notification may still be on its way when the write's own call has returned.
  //
  // A notification of the store's own backend connection (its writes, already in its cache)
  // counts only once `timeout` is over, as SQLite's data_version is looked at once per
  // interval: one read of the log per interval while the store writes, instead of one per
  // write, each of which the feed must apply under the store's write lock. Every other
  // process's notification (another store, sessionctl, a hand-written statement) wakes the
  // feed at once, and its read applies the store's own entries with it.
  bool wait(std::chrono::milliseconds timeout) override {
    const std::string action = "cannot listen for changes on";
    PgConnection& connection = connected();
    const bool fresh = std::exchange(fresh_, false);
    const PgConnection::Turn turn(connection, action);
    const bool notified = connection.wait_for_notification(timeout, writer_pid_->load());
    return fresh || notified || timeout.count() <= 0;
  }

  std::size_t prune(std::chrono::seconds keep) override {
    const std::string action = "cannot prune the change log of";
    PgConnection& connection = connected();
    const PgConnection::Turn turn(connection, action);
    Params params;
    params.int8(static_cast<std::int64_t>(keep.count()));
    const PgResult result =
        connection.exec_prepared(Reconnect::kIfDead, "pylon_prune_changes", params, action);
    return affected_rows(result.get(), connection, action);
  }

 private:
  // Connects and sets the connection up; on the constructor's thread first, then, after a
  // failure, in the call that finds no connection.
  void open() {
    connection_.emplace(url_, deadline_);
    try {
      connection_->finish_setup([this] { listen_and_prepare(); });
    } catch (...) {
      connection_.reset();
      throw;
    }
    fresh_ = true;
  }

  // The connection, once the constructor's thread is done with it; the failure of that thread,
  // once, or of a new try.
  PgConnection& connected() {
    if (connecting_.joinable()) connecting_.join();
    if (connect_error_) std::rethrow_exception(std::exchange(connect_error_, nullptr));
    if (!connection_) open();
    return *connection_;
  }

  void listen_and_prepare() {
    // Told apart from the store's other connection in pg_stat_activity (by operators, and by
    // tests that fault one of them): its application_name gains " (change feed)".
    connection_->setup_in_one_round_trip(
        "SELECT set_config('application_name', "
        "current_setting('application_name') || ' (change feed)', false); "
        "LISTEN _pylon_change_log",
        {{"pylon_change_position", change_position_sql(), {}},
         {"pylon_changes_after",
          "SELECT " + logged_change_columns() +
              " WHERE c.position > $1 OR c.position = ANY($2) ORDER BY c.position LIMIT $3",
          {kInt8Oid, kInt8ArrayOid, kInt8Oid}},
         {"pylon_pruned_through", "SELECT pruned_through FROM _pylon_change_log_state", {}},
         {"pylon_prune_changes",
          "WITH pruned AS (UPDATE _pylon_change_log_state SET pruned_through = "
          "GREATEST(pruned_through, COALESCE((SELECT max(position) FROM _pylon_change_log "
          "WHERE logged_at < extract(epoch FROM clock_timestamp())::bigint - $1), 0)) "
          "WHERE EXISTS (SELECT 1 FROM _pylon_change_log "
          "WHERE logged_at < extract(epoch FROM clock_timestamp())::bigint - $1) "
          "RETURNING pruned_through) "
          "DELETE FROM _pylon_change_log WHERE position <= (SELECT pruned_through FROM pruned)",
          {kInt8Oid}}});
  }

  std::string url_;
  std::chrono::milliseconds deadline_;
  std::shared_ptr<const std::atomic<int>> writer_pid_;
  std::optional<std::int64_t> first_position_;  // for the first position() call
  std::optional<PgConnection> connection_;
  std::exception_ptr connect_error_;  // of the constructor's thread, until a call reports it
  bool fresh_ = false;                // a new connection: the next wait() says "may have changed"
  std::thread connecting_;            // last: started once every member above exists
};

// The log's position is read here, on the backend's connection, for the store to take before
// it loads: the change source's own connection is still being made.
std::unique_ptr<ChangeSource> PostgresBackend::open_change_source() {
  const std::string action = "cannot read the change log of";
  std::int64_t position = 0;
  {
    const PgConnection::Turn turn(connection_, action);
    const PgResult result = connection_.exec_params(
        Reconnect::kIfDead, change_position_sql().c_str(), Params(), action);
    position = int8_at(result.get(), 0);
  }
  return std::make_unique<PgChangeSource>(url_, options_.deadline, server_pid_, position);
}

}  // namespace

std::unique_ptr<SessionBackend> open_postgres_backend(const std::string& url,
                                                      const PostgresOptions& options) {
  if (url.find('\0') != std::string::npos) {
    throw Error(ErrorCode::kInvalidArgument, "PostgreSQL URL contains a NUL byte");
  }
  // A URL (anything that starts like "scheme:") is checked as open_backend() checks it: one
  // that readers could split differently is refused before libpq sees it, and one of another
  // scheme is not ours. Anything else is a libpq keyword/value string (or a database name).
  const detail::DatabaseLocation location = detail::parse_database_url(url);
  const bool is_bare = url.empty() || location.sqlite_path == url;  // not read as a URL
  if (!location.is_postgres && !is_bare) {
    throw Error(ErrorCode::kUnsupportedScheme,
                "open_postgres_backend takes a postgres:// or postgresql:// URL or a libpq "
                "keyword/value string, not " +
                    redact_url(url));
  }
  // Bounded above too: the deadline is added to the steady clock, where milliseconds::max()
  // would overflow.
  if (options.deadline.count() <= 0 || options.deadline > std::chrono::hours(1)) {
    throw Error(ErrorCode::kInvalidArgument,
                "PostgresOptions::deadline is " + std::to_string(options.deadline.count()) +
                    " ms, outside its range of 1 ms to 1 hour, for " + redact_url(url));
  }
  // open_backend() takes the scheme in any case (RFC 3986: schemes are case-insensitive), but
  // libpq recognises only a lowercase "postgresql://" or "postgres://".
  std::string libpq_url = url;
  const std::size_t separator = libpq_url.find("://");
  if (separator != std::string::npos) {
    const auto scheme_end = libpq_url.begin() + static_cast<std::ptrdiff_t>(separator);
    std::transform(libpq_url.begin(), scheme_end, libpq_url.begin(), [](char c) {
      return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    });
  }
  return std::make_unique<PostgresBackend>(libpq_url, options);
}

}  // namespace pylon
#endif  // PYLON_WITH_POSTGRES

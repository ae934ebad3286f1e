// sessionctl: the command-line tool of pylon-sessions.
//
// It owns argument parsing, the text it prints and its exit status, nothing else: every session
// operation is one call into the public API of session_backend.hpp, so the tool sees a database
// exactly as an application linking the library does. Arguments are parsed by hand (the grammar
// is small) to keep the tool free of dependencies.
//
// What it promises:
//   - The only token it ever prints is the one `create` has just made, alone on the first line.
//     Everything else names a session by its id, the SHA-256 of its token.
//   - Text from the database (user, tenant, device, ip) is printed with control characters
//     escaped, so a hostile user agent cannot rewrite the terminal or forge output lines.
//   - Exit status: 0 success, 1 not found / invalid token / nothing to revoke, 2 usage error,
//     3 storage error; kTopLevelHelp states the exact rules.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "session_backend.hpp"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitNotFound = 1;
constexpr int kExitUsage = 2;
constexpr int kExitStorage = 3;

constexpr const char* kTopLevelHelp =
    "sessionctl: inspect and manage the sessions of a pylon-sessions database.\n"
    R"(
Usage: sessionctl [--db URL] COMMAND [ARGS]
       sessionctl COMMAND --help      (or: sessionctl help COMMAND)
       sessionctl --help

Commands:
  create USER       create a session; prints its token (shown once), then the session
  validate TOKEN    show the live session of TOKEN; exit 1 if there is none
  list USER         the live sessions of USER, one line each, oldest first
  revoke TOKEN      delete the session of TOKEN; exit 1 if there is none
  revoke-id ID      delete the session with this id; exit 1 if there is none
  revoke-user USER  delete every session of USER; prints how many
  purge             delete the expired sessions; prints how many
  stats             count sessions, users and expired rows; names the database
  copy-to URL       copy every live session into the database at URL (SQLite <-> PostgreSQL)
  help [COMMAND]    this text, or the help of COMMAND

A TOKEN argument of '-' is read from standard input, keeping it out of `ps` and shell history.
Put '--' before an argument that begins with '-': sessionctl list -- -alice

Database: --db URL (it may also follow the command), else $DATABASE_URL, else the file
sessions.db in the working directory. The URL forms:
  sessions.db, /var/lib/app/sessions.db   a file path
  sqlite://relative/path.db               a path relative to the working directory
  sqlite:///absolute/path.db              an absolute path
  sqlite::memory:                         in memory; nothing outlives the command
  postgres://USER:PASSWORD@HOST/DB        PostgreSQL, when this build has it (also postgresql://)
SQLite URLs take ?synchronous=full|normal and &busy_timeout=MILLISECONDS. A new database file is
created with mode 0600. Prefer DATABASE_URL to --db for a URL holding a password: other users
can read command lines with `ps`. Messages never show a password.

Exit status:
  0  success (also `list` with no session, and `revoke-user`/`purge` that deleted nothing)
  1  not found: a malformed, unknown, revoked or expired token; an unknown session id, so
     nothing to show or to revoke
  2  usage error: unknown command or option, missing, empty or extra argument, or a value
     the library refuses as invalid (a malformed URL, a field storage cannot hold)
  3  storage error: the database cannot be opened, read or written (not an SQLite file, a
     schema from a newer version, an unsupported URL scheme, a lock held past the busy
     timeout, a full disk, a permission denied)
)";

// A mistake in the command line: printed with a pointer to the relevant --help, exit 2.
class UsageError : public std::runtime_error {
 public:
  UsageError(const std::string& message, std::string command)
      : std::runtime_error(message), command_(std::move(command)) {}
  // The command whose help to point at, or "" for the top-level help.
  [[nodiscard]] const std::string& command() const noexcept { return command_; }

 private:
  std::string command_;
};

// One parsed command line, handed to the function of its command.
struct Invocation {
  std::optional<std::string> db;               // --db, when given
  std::vector<std::string> operands;           // the arguments after the command name
  std::map<std::string, std::string> options;  // "--device" -> "Firefox"
  [[nodiscard]] std::string url() const { return db ? *db : pylon::database_url_from_env(); }
  [[nodiscard]] std::optional<std::string> option(const std::string& name) const {
    auto it = options.find(name);
    if (it == options.end()) return std::nullopt;
    return it->second;
  }
};

struct Command {
  const char* name;
  std::vector<const char*> operands;  // placeholders, in order: {"USER"}
  std::vector<const char*> options;   // options taking a value: {"--device"}
  const char* help;                   // the body of `sessionctl COMMAND --help`
  int (*run)(const Invocation&);
};

// ------------------------------------------------------------------------------------------------
// Output helpers
// ------------------------------------------------------------------------------------------------

// `text` with control bytes and backslashes escaped (\t, \n, \\, \xNN). Bytes >= 0x80 pass
// through, so UTF-8 names print as themselves.
std::string escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
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

std::string escape_optional(const std::optional<std::string>& text) {
  return text ? escape(*text) : "-";
}

// `value` in decimal, zero-padded to `width` digits ("07").
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

// Whether a stored time can be shown as a date: a hand-edited or damaged row may hold any
// integer, and the arithmetic below is for years 0 to 9999.
bool is_showable_time(std::int64_t unix_seconds) {
  return unix_seconds >= -62167219200 && unix_seconds <= pylon::kMaxSessionTime;
}

// Unix seconds as ISO-8601 UTC, "2024-05-01T12:00:00Z". Computed with Howard Hinnant's
// civil_from_days rather than gmtime, so it is thread-safe and has no range surprises.
std::string iso8601(std::int64_t unix_seconds) {
  if (!is_showable_time(unix_seconds)) return "out-of-range";
  const std::int64_t days = floor_div(unix_seconds, 86400);
  const std::int64_t secs = unix_seconds - days * 86400;
  const std::int64_t z = days + 719468;
  const std::int64_t era = floor_div(z, 146097);
  const std::int64_t doe = z - era * 146097;                                       // [0, 146096]
  const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;  // [0, 399]
  const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);                // [0, 365]
  const std::int64_t mp = (5 * doy + 2) / 153;                                     // [0, 11]
  const std::int64_t day = doy - (153 * mp + 2) / 5 + 1;
  const std::int64_t month = mp < 10 ? mp + 3 : mp - 9;
  const std::int64_t year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  return padded(year, 4) + '-' + padded(month, 2) + '-' + padded(day, 2) + 'T' +
         padded(secs / 3600, 2) + ':' + padded(secs / 60 % 60, 2) + ':' + padded(secs % 60, 2) +
         'Z';
}

// "2024-05-01T12:00:00Z (1714564800)": readable, and exact for scripts.
std::string timestamp(std::int64_t unix_seconds) {
  return iso8601(unix_seconds) + " (" + std::to_string(unix_seconds) + ")";
}

// "in 59m 58s" or "2h 3m ago": how far `when` is from `now`, to two units.
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

void print_field(const char* key, const std::string& value) {
  std::string label = std::string(key) + ":";
  label.resize(std::max<std::size_t>(label.size() + 1, 18), ' ');
  std::cout << label << value << '\n';
}

// The "key: value" block shared by `create` and `validate`. Never includes the token.
void print_session(const pylon::Session& s) {
  const std::int64_t now = pylon::system_clock_now();
  print_field("id", s.id);
  print_field("user", escape(s.user_id));
  print_field("tenant", escape_optional(s.tenant_id));
  print_field("device", escape_optional(s.device));
  print_field("ip", escape_optional(s.ip));
  print_field("created", timestamp(s.created_at));
  print_field("last_seen", timestamp(s.last_seen_at));
  print_field("expires", timestamp(s.expires_at) + ", " + relative(s.expires_at, now));
  if (s.absolute_expires_at != 0) {
    print_field("absolute_expiry", timestamp(s.absolute_expires_at));
  }
  print_field("data", std::to_string(s.data.size()) + " bytes");
}

// The token argument of validate/revoke: '-' reads one line from standard input.
std::string read_token(const std::string& operand) {
  if (operand != "-") return operand;
  std::string line;
  std::getline(std::cin, line);
  const auto first = line.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  const auto last = line.find_last_not_of(" \t\r\n");
  return line.substr(first, last - first + 1);
}

constexpr const char* kMalformedToken =
    "sessionctl: not a session token (expected 'pylon_' followed by 64 lowercase hex "
    "characters)\n";

// ------------------------------------------------------------------------------------------------
// Commands
// ------------------------------------------------------------------------------------------------

int run_create(const Invocation& inv) {
  pylon::CreateOptions options;
  options.tenant_id = inv.option("--tenant");
  options.device = inv.option("--device");
  options.ip = inv.option("--ip");
  auto store = pylon::SessionStore::open(inv.url());
  const pylon::NewSession created = store.create(inv.operands[0], std::move(options));
  std::cout << created.token << '\n';
  print_session(created.session);
  return kExitOk;
}

// Looks the session up with find(), not validate(): checking a token from the command line is
// not activity by its user, so it must not slide the idle expiry or write to storage.
int run_validate(const Invocation& inv) {
  const std::string token = read_token(inv.operands[0]);
  if (!pylon::is_well_formed_token(token)) {
    std::cerr << kMalformedToken;
    return kExitNotFound;
  }
  auto store = pylon::SessionStore::open(inv.url());
  const std::optional<pylon::Session> session = store.find(pylon::session_id_for_token(token));
  if (!session) {
    std::cerr << "sessionctl: no live session for this token (unknown, revoked or expired)\n";
    return kExitNotFound;
  }
  print_session(*session);
  return kExitOk;
}

int run_list(const Invocation& inv) {
  auto store = pylon::SessionStore::open(inv.url());
  for (const pylon::Session& s : store.list_user(inv.operands[0])) {
    std::cout << s.id << '\t' << iso8601(s.created_at) << '\t' << iso8601(s.last_seen_at) << '\t'
              << iso8601(s.expires_at) << '\t' << escape_optional(s.tenant_id) << '\t'
              << escape_optional(s.device) << '\t' << escape_optional(s.ip) << '\n';
  }
  return kExitOk;
}

int run_revoke(const Invocation& inv) {
  const std::string token = read_token(inv.operands[0]);
  if (!pylon::is_well_formed_token(token)) {
    std::cerr << kMalformedToken;
    return kExitNotFound;
  }
  auto store = pylon::SessionStore::open(inv.url());
  if (!store.revoke(token)) {
    std::cerr << "sessionctl: no session for this token; nothing revoked\n";
    return kExitNotFound;
  }
  std::cout << "revoked: " << pylon::session_id_for_token(token) << '\n';
  return kExitOk;
}

int run_revoke_id(const Invocation& inv) {
  std::string id = inv.operands[0];
  std::transform(id.begin(), id.end(), id.begin(), [](char c) {
    return (c >= 'A' && c <= 'F') ? static_cast<char>(c - 'A' + 'a') : c;
  });
  if (!pylon::is_well_formed_session_id(id)) {
    std::cerr << "sessionctl: not a session id (expected 64 hex characters)\n";
    return kExitNotFound;
  }
  auto store = pylon::SessionStore::open(inv.url());
  if (!store.revoke_id(id)) {
    std::cerr << "sessionctl: no session with this id; nothing revoked\n";
    return kExitNotFound;
  }
  std::cout << "revoked: " << id << '\n';
  return kExitOk;
}

int run_revoke_user(const Invocation& inv) {
  auto store = pylon::SessionStore::open(inv.url());
  std::cout << "revoked: " << store.revoke_user(inv.operands[0]) << '\n';
  return kExitOk;
}

int run_purge(const Invocation& inv) {
  auto store = pylon::SessionStore::open(inv.url());
  std::cout << "purged: " << store.purge_expired() << '\n';
  return kExitOk;
}

// Reads the rows through a bare backend: the store hides expired rows, and stats is the one
// command that wants to count them. A row counts as expired exactly when purge would delete it.
int run_stats(const Invocation& inv) {
  const std::unique_ptr<pylon::SessionBackend> backend = pylon::open_backend(inv.url());
  const std::int64_t now = pylon::system_clock_now();
  std::size_t live = 0;
  std::size_t expired = 0;
  std::set<std::string> users;
  for (const pylon::Session& s : backend->load_all()) {
    if (s.expires_at <= now) {
      ++expired;
    } else {
      ++live;
      users.insert(s.user_id);
    }
  }
  print_field("database", escape(backend->describe()));
  print_field("sessions", std::to_string(live));
  print_field("users", std::to_string(users.size()));
  print_field("expired", std::to_string(expired));
  return kExitOk;
}

// Rows are copied as they are stored (ids are token hashes, the same on every backend), so every
// copied session validates on the destination with the token its user already holds. Each row
// is one upsert: re-running the copy is harmless, and a copy interrupted half-way can be re-run.
int run_copy_to(const Invocation& inv) {
  const std::unique_ptr<pylon::SessionBackend> source = pylon::open_backend(inv.url());
  const std::unique_ptr<pylon::SessionBackend> destination = pylon::open_backend(inv.operands[0]);
  const std::int64_t now = pylon::system_clock_now();
  std::size_t copied = 0;
  for (const pylon::Session& s : source->load_all()) {
    if (s.expires_at <= now) continue;
    destination->save(s);
    ++copied;
  }
  print_field("from", escape(source->describe()));
  print_field("to", escape(destination->describe()));
  print_field("copied", std::to_string(copied));
  return kExitOk;
}

const std::vector<Command>& commands() {
  static const std::vector<Command> kCommands = {
      {"create",
       {"USER"},
       {"--tenant", "--device", "--ip"},
       R"(Creates a session for USER (any non-empty text) with the library's default lifetimes:
24 hours at most, ended after 1 hour without activity.

Prints the new token alone on the first line. It is shown this once: the database keeps only
its SHA-256, the session id. The session follows as "key: value" lines, as `validate` prints
them.

Options:
  --tenant TEXT   the tenant the session belongs to
  --device TEXT   free text describing the client, e.g. a user agent
  --ip TEXT       the client address to record

Exit status: 0 created; 2 usage error, including an empty USER or a value the library refuses;
3 storage error.
)",
       run_create},
      {"validate",
       {"TOKEN"},
       {},
       R"(Shows the live session of TOKEN ('-' reads the token from standard input), as lines
  id, user, tenant, device, ip            text; '-' when not set
  created, last_seen, expires             ISO-8601 UTC, then (Unix seconds)
  absolute_expiry                         the hard cap that activity never extends
  data                                    the size of the application's payload
The token itself is never printed. This is an inspection: unlike SessionStore::validate() it
does not count as activity, so it neither extends the idle expiry nor writes to the database.

Exit status: 0 the session is live; 1 the token is malformed, unknown, revoked or expired;
2 usage error; 3 storage error.
)",
       run_validate},
      {"list",
       {"USER"},
       {},
       R"(Lists the live sessions of USER, oldest first, one line each, with these tab-separated
columns and no header:
  ID  CREATED  LAST_SEEN  EXPIRES  TENANT  DEVICE  IP
Times are ISO-8601 UTC; an unset text field is '-'. A user without live sessions prints
nothing, so `sessionctl list USER | wc -l` counts them.

Exit status: 0 (also when there is no session); 2 usage error; 3 storage error.
)",
       run_list},
      {"revoke",
       {"TOKEN"},
       {},
       R"(Deletes the session of TOKEN ('-' reads the token from standard input) and prints
"revoked: ID".

Exit status: 0 revoked; 1 the token is malformed or has no session; 2 usage error;
3 storage error.
)",
       run_revoke},
      {"revoke-id",
       {"ID"},
       {},
       R"(Deletes the session with this id (64 hex characters, as `list` shows) and prints
"revoked: ID".

Exit status: 0 revoked; 1 not a session id, or no session has it; 2 usage error;
3 storage error.
)",
       run_revoke_id},
      {"revoke-user",
       {"USER"},
       {},
       R"(Deletes every session of USER ("sign out everywhere") and prints "revoked: N", the
number of sessions deleted.

Exit status: 0, also when N is 0 (the user is signed out everywhere either way); 2 usage error;
3 storage error.
)",
       run_revoke_user},
      {"purge",
       {},
       {},
       R"(Deletes every expired session, in one statement, and prints "purged: N".
Expired sessions are never valid; purging only reclaims their space.

Exit status: 0, also when N is 0; 2 usage error; 3 storage error.
)",
       run_purge},
      {"stats",
       {},
       {},
       R"(Prints, as "key: value" lines:
  database   the database in use, as the library describes it (no password)
  sessions   live sessions
  users      users with at least one live session
  expired    expired sessions not yet purged (what `sessionctl purge` would delete)

Exit status: 0; 2 usage error; 3 storage error.
)",
       run_stats},
      {"copy-to",
       {"URL"},
       {},
       R"(Copies every live session of the database (--db, $DATABASE_URL or sessions.db) into the
database at URL, creating its schema if needed, and prints "copied: N". Sessions keep their ids,
times and data, so nobody is logged out: this is how an application moves from the SQLite
default to PostgreSQL (or back). Each row is an upsert, so the copy can be re-run; sessions
already at the destination are kept. Stop the application first, so no session is created or
revoked in the source while the copy runs.

  sessionctl --db sqlite://sessions.db copy-to 'postgres://app:secret@db/app'

Exit status: 0; 2 usage error; 3 storage error on either side.
)",
       run_copy_to},
  };
  return kCommands;
}

const Command* find_command(std::string_view name) {
  for (const Command& c : commands()) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

void print_command_help(const Command& c) {
  std::cout << "Usage: sessionctl [--db URL] " << c.name;
  for (const char* operand : c.operands) std::cout << ' ' << operand;
  for (const char* option : c.options) std::cout << " [" << option << " TEXT]";
  std::cout << "\n\n" << c.help;
  std::cout << "\nThe database is --db URL, else $DATABASE_URL, else sessions.db in the working\n"
               "directory; `sessionctl --help` lists the URL forms.\n";
}

// ------------------------------------------------------------------------------------------------
// Argument parsing
// ------------------------------------------------------------------------------------------------

bool is_help(std::string_view arg) { return arg == "-h" || arg == "--help"; }

bool is_option(std::string_view arg) { return arg.size() > 1 && arg[0] == '-'; }

// If `args[i]` is option `name` ("--db URL" or "--db=URL"), stores its value, advances `i` past
// it and returns true.
bool take_option(const std::vector<std::string>& args, std::size_t& i, std::string_view name,
                 const std::string& command, std::string& value) {
  const std::string& arg = args[i];
  if (arg == name) {
    if (i + 1 >= args.size()) {
      throw UsageError("option " + std::string(name) + " needs a value", command);
    }
    value = args[++i];
    return true;
  }
  if (arg.size() > name.size() && arg.compare(0, name.size(), name) == 0 &&
      arg[name.size()] == '=') {
    value = arg.substr(name.size() + 1);
    return true;
  }
  return false;
}

// Reads the options before the command name into `inv`, leaving `i` at the command name.
// Returns true when they ask for the top-level help.
bool parse_global_options(const std::vector<std::string>& args, std::size_t& i, Invocation& inv) {
  for (; i < args.size() && is_option(args[i]); ++i) {
    std::string value;
    if (is_help(args[i])) return true;
    if (!take_option(args, i, "--db", "", value)) {
      throw UsageError("unknown option '" + escape(args[i]) + "'", "");
    }
    inv.db = value;
  }
  return false;
}

// True when an argument before any "--" asks for help: that wins over any other mistake.
bool asks_for_help(const std::vector<std::string>& args, std::size_t i) {
  for (; i < args.size() && args[i] != "--"; ++i) {
    if (is_help(args[i])) return true;
  }
  return false;
}

// If `args[i]` is one of the command's own options, stores it in `inv`, advances `i` past it
// and returns true.
bool take_command_option(const Command& command, const std::vector<std::string>& args,
                         std::size_t& i, Invocation& inv) {
  for (const char* option : command.options) {
    std::string value;
    if (take_option(args, i, option, command.name, value)) {
      inv.options[option] = value;
      return true;
    }
  }
  return false;
}

// Reads the arguments after the command name into `inv`: its options, --db, and its operands.
void parse_command_arguments(const Command& command, const std::vector<std::string>& args,
                             std::size_t i, Invocation& inv) {
  const std::string name = command.name;
  bool operands_only = false;  // after "--"
  for (; i < args.size(); ++i) {
    const std::string& arg = args[i];
    std::string value;
    if (operands_only || !is_option(arg)) {
      inv.operands.push_back(arg);
    } else if (arg == "--") {
      operands_only = true;
    } else if (take_option(args, i, "--db", name, value)) {
      inv.db = value;
    } else if (!take_command_option(command, args, i, inv)) {
      throw UsageError("unknown option '" + escape(arg) + "' for " + name, name);
    }
  }
}

// Every operand the command needs, none more, none empty.
void check_operands(const Command& command, const Invocation& inv) {
  const std::string name = command.name;
  const std::size_t expected = command.operands.size();
  if (inv.operands.size() < expected) {
    throw UsageError(
        "missing argument " + std::string(command.operands[inv.operands.size()]) + " for " + name,
        name);
  }
  if (inv.operands.size() > expected) {
    throw UsageError("unexpected argument '" + escape(inv.operands[expected]) + "' for " + name,
                     name);
  }
  for (std::size_t k = 0; k < expected; ++k) {
    if (inv.operands[k].empty()) {
      throw UsageError(std::string(command.operands[k]) + " must not be empty", name);
    }
  }
}

// `sessionctl help [COMMAND]`; `i` indexes the argument after "help".
int run_help(const std::vector<std::string>& args, std::size_t i) {
  if (i == args.size()) {
    std::cout << kTopLevelHelp;
    return kExitOk;
  }
  const Command* topic = find_command(args[i]);
  if (topic == nullptr) throw UsageError("unknown command '" + escape(args[i]) + "'", "");
  if (i + 1 != args.size()) throw UsageError("usage: sessionctl help [COMMAND]", "");
  print_command_help(*topic);
  return kExitOk;
}

int run(const std::vector<std::string>& args) {
  Invocation inv;
  std::size_t i = 0;
  if (parse_global_options(args, i, inv)) {
    std::cout << kTopLevelHelp;
    return kExitOk;
  }
  if (i == args.size()) throw UsageError("missing command", "");
  const std::string& name = args[i];
  ++i;
  if (name == "help") return run_help(args, i);
  const Command* command = find_command(name);
  if (command == nullptr) throw UsageError("unknown command '" + escape(name) + "'", "");
  if (asks_for_help(args, i)) {
    print_command_help(*command);
    return kExitOk;
  }
  parse_command_arguments(*command, args, i, inv);
  check_operands(*command, inv);
  return command->run(inv);
}

}  // namespace

int main(int argc, char** argv) {
  int status = kExitOk;
  try {
    // NOLINTNEXTLINE(cppcoreguidelines-pro-bounds-pointer-arithmetic): main()'s argv
    status = run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const UsageError& e) {
    std::cerr << "sessionctl: " << e.what() << '\n'
              << "Try 'sessionctl " << (e.command().empty() ? "" : e.command() + " ")
              << "--help'.\n";
    return kExitUsage;
  } catch (const pylon::Error& e) {
    // The library's messages already hide passwords and never hold a token.
    std::cerr << "sessionctl: " << escape(e.what()) << '\n';
    if (!e.backend_detail().empty()) {
      std::cerr << "sessionctl: backend said: " << escape(e.backend_detail()) << '\n';
    }
    if (e.code() == pylon::ErrorCode::kInvalidArgument) {
      std::cerr << "Try 'sessionctl --help'.\n";
      return kExitUsage;
    }
    return kExitStorage;
  } catch (const std::exception& e) {
    std::cerr << "sessionctl: " << escape(e.what()) << '\n';
    return kExitStorage;
  }
  std::cout.flush();
  if (!std::cout) {
    std::cerr << "sessionctl: cannot write to standard output\n";
    return kExitStorage;
  }
  return status;
}

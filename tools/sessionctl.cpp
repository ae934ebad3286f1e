// sessionctl: the command-line tool of pylon-sessions.
//
// The command line is CLI11's, the JSON nlohmann's. What it promises:
//   - The only raw token it ever prints is the one `create` has just made, alone on the first
//     line (or as "token" in its JSON). Every message and every human-readable line passes
//     through redact_tokens(), so a token typed in the wrong place shows as "pylon_1234…".
//   - Inspection commands (list, show, validate, stats, check, export, migrate --dry-run) open
//     the database read-only (ctl_storage.hpp), refuse a path that does not exist, and ask
//     storage for what they show. Commands that write go through the library's SessionBackend.
//   - Text from the database is printed with control characters escaped.
//   - Exit status: 0 success, 1 not found / invalid / `check` found a problem, 2 usage error,
//     3 storage error, 4 copy/import/export finished but skipped rows (listed).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ctl_copy.hpp"
#include "ctl_output.hpp"
#include "ctl_storage.hpp"
#include "session_backend.hpp"

namespace sessionctl {
namespace {

using nlohmann::json;

// The options every command shares.
struct Globals {
  std::string db;
  bool db_given = false;
  bool json = false;
};

Globals& globals() {
  static Globals g;
  return g;
}

// --db, else $DATABASE_URL, else sessions.db.
Target database() {
  const Globals& g = globals();
  return resolve_target(g.db_given ? g.db : pylon::database_url_from_env());
}

void emit(const json& value) { std::cout << dump(value) << '\n'; }

// A TOKEN argument: '-' reads one line from standard input. Never echoed.
std::string read_token(const std::string& operand) {
  if (operand != "-") return operand;
  std::string line;
  std::getline(std::cin, line);
  const auto first = line.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  const auto last = line.find_last_not_of(" \t\r\n");
  return line.substr(first, last - first + 1);
}

std::string checked_token(const std::string& operand) {
  std::string token = read_token(operand);
  if (!pylon::is_well_formed_token(token)) {
    throw Failure(kExitNotFound,
                  "not a session token (expected 'pylon_' followed by 64 lowercase hex "
                  "characters)");
  }
  return token;
}

// An ID argument: a whole session id or a prefix of at least 8 hex characters, any case.
std::string checked_id_prefix(const std::string& operand) {
  if (operand.rfind("pylon_", 0) == 0) {
    throw Failure(kExitUsage,
                  "that is a token, not a session id: use `validate -` or `revoke -` and type "
                  "the token on standard input");
  }
  std::string id = operand;
  for (char& c : id) {
    if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
  }
  const bool hex = id.find_first_not_of("0123456789abcdef") == std::string::npos;
  if (!hex || id.size() < 8 || id.size() > 64) {
    throw Failure(kExitNotFound,
                  "not a session id (64 hex characters, or a prefix of at least 8, as `list` "
                  "shows)");
  }
  return id;
}

// The one session an ID argument names; Failure(1) when none or several do.
pylon::Session session_for_prefix(Inspector& inspector, const std::string& prefix) {
  const std::vector<pylon::Session> found = inspector.sessions_by_prefix(prefix);
  if (found.size() > 1) {
    throw Failure(kExitNotFound,
                  "several sessions have ids starting with " + prefix + "; give more characters");
  }
  if (found.empty()) {
    if (prefix.size() == 64) {
      if (const std::optional<pylon::RotatedId> rotated = inspector.rotated(prefix)) {
        throw Failure(kExitNotFound, "session " + prefix + " was rotated away; its successor is " +
                                         rotated->replaced_by);
      }
    }
    throw Failure(kExitNotFound, "no session with id " + prefix);
  }
  return found.front();
}

// ------------------------------------------------------------------------------------------------
// Commands
// ------------------------------------------------------------------------------------------------

struct CreateArgs {
  std::string user;
  std::optional<std::string> tenant, device, ip, idp_session_id;
  std::int64_t ttl = 86400;
  std::int64_t idle = 3600;
};

int run_create(const CreateArgs& args) {
  if (args.ttl <= 0 || args.idle < 0) throw Failure(kExitUsage, "--ttl must be > 0, --idle >= 0");
  const Target target = database();
  const std::unique_ptr<pylon::SessionBackend> backend = pylon::open_backend(target.url);
  const std::int64_t now = pylon::system_clock_now();
  pylon::Session s;
  const std::string token = pylon::generate_token();
  s.id = pylon::session_id_for_token(token);
  s.user_id = args.user;
  s.tenant_id = args.tenant;
  s.device = args.device;
  s.ip = args.ip;
  s.idp_session_id = args.idp_session_id;
  s.created_at = now;
  s.last_seen_at = now;
  s.absolute_expires_at = now + args.ttl;
  s.expires_at =
      args.idle > 0 ? std::min(now + args.idle, s.absolute_expires_at) : s.absolute_expires_at;
  backend->insert_new({s}, 0);
  if (globals().json) {
    emit({{"token", token}, {"session", session_json(s, now, false)}});
  } else {
    std::cout << token << '\n';
    print_session(std::cout, s, now);
  }
  return kExitOk;
}

int run_validate(const std::string& operand) {
  const std::string token = checked_token(operand);
  const std::unique_ptr<Inspector> inspector = open_inspector(database());
  const std::string id = pylon::session_id_for_token(token);
  const std::int64_t now = pylon::system_clock_now();
  const std::vector<pylon::Session> found = inspector->sessions_by_prefix(id);
  if (found.empty() || found.front().expires_at <= now) {
    std::string why = found.empty() ? "no live session for this token (unknown or revoked)"
                                    : "the session of this token has expired";
    if (found.empty()) {
      if (const std::optional<pylon::RotatedId> rotated = inspector->rotated(id)) {
        why = "this token was rotated away (session " + id + " is now " + rotated->replaced_by +
              "); presenting it again may mean it was stolen";
      }
    }
    if (globals().json) emit({{"valid", false}, {"id", id}, {"reason", why}});
    throw Failure(kExitNotFound, why);
  }
  if (globals().json) {
    emit({{"valid", true}, {"session", session_json(found.front(), now, false)}});
  } else {
    print_session(std::cout, found.front(), now);
  }
  return kExitOk;
}

int run_show(const std::string& operand) {
  const std::string prefix = checked_id_prefix(operand);
  const std::unique_ptr<Inspector> inspector = open_inspector(database());
  const std::int64_t now = pylon::system_clock_now();
  const pylon::Session s = session_for_prefix(*inspector, prefix);
  if (globals().json) {
    emit(session_json(s, now, false));
  } else {
    print_session(std::cout, s, now);
  }
  return kExitOk;
}

struct ListArgs {
  std::optional<std::string> user, tenant;
  bool all = false;
  std::optional<std::size_t> limit;
};

int run_list(const ListArgs& args) {
  const std::unique_ptr<Inspector> inspector = open_inspector(database());
  ListFilter filter;
  filter.user_id = args.user;
  filter.tenant_id = args.tenant;
  filter.include_expired = args.all;
  filter.now = pylon::system_clock_now();
  filter.limit = args.limit;
  const Table table({{"ID", 17},
                     {"USER", 18},
                     {"TENANT", 10},
                     {"CREATED (UTC)", 16},
                     {"LAST SEEN", 16},
                     {"EXPIRES", 16},
                     {"IP", 15},
                     {"DEVICE", 0}});
  std::size_t rows = 0;
  if (globals().json) std::cout << "[";
  inspector->each_session(filter, [&](const pylon::Session& s) {
    if (globals().json) {
      std::cout << (rows == 0 ? "\n" : ",\n") << dump(session_json(s, filter.now, false));
    } else {
      if (rows == 0) table.header(std::cout);
      table.row(std::cout, {s.id.substr(0, 16) + "\u2026", s.user_id, s.tenant_id.value_or("-"),
                            short_time(s.created_at), short_time(s.last_seen_at),
                            s.expires_at <= filter.now ? "expired" : short_time(s.expires_at),
                            s.ip.value_or("-"), s.device.value_or("-")});
    }
    ++rows;
    return static_cast<bool>(std::cout);
  });
  if (globals().json) {
    std::cout << (rows == 0 ? "]\n" : "\n]\n");
  } else if (rows == 0) {
    std::cerr << "no sessions\n";
  } else if (!args.limit || rows < *args.limit) {
    std::cerr << rows << (rows == 1 ? " session\n" : " sessions\n");
  } else {
    std::cerr << rows << " sessions shown (--limit)\n";
  }
  return kExitOk;
}

// A bare backend on an existing database: writes without loading every session.
std::unique_ptr<pylon::SessionBackend> writable_backend(const Target& target) {
  require_existing_database(target);
  return pylon::open_backend(target.url);
}

int run_revoke(const std::string& operand) {
  const std::string token = checked_token(operand);
  const Target target = database();
  const std::unique_ptr<pylon::SessionBackend> backend = writable_backend(target);
  const std::string id = pylon::session_id_for_token(token);
  if (!backend->remove(id)) {
    throw Failure(kExitNotFound, "no session for this token; nothing revoked");
  }
  if (globals().json) {
    emit({{"revoked", json::array({id})}});
  } else {
    std::cout << "revoked: " << id << '\n';
  }
  return kExitOk;
}

int run_revoke_id(const std::string& operand) {
  const std::string prefix = checked_id_prefix(operand);
  const Target target = database();
  std::string id = prefix;
  if (prefix.size() < 64) id = session_for_prefix(*open_inspector(target), prefix).id;
  const std::unique_ptr<pylon::SessionBackend> backend = writable_backend(target);
  if (!backend->remove(id)) {
    throw Failure(kExitNotFound, "no session with id " + id + "; nothing revoked");
  }
  if (globals().json) {
    emit({{"revoked", json::array({id})}});
  } else {
    std::cout << "revoked: " << id << '\n';
  }
  return kExitOk;
}

int run_revoke_user(const std::string& user, const std::optional<std::string>& tenant) {
  const std::unique_ptr<pylon::SessionBackend> backend = writable_backend(database());
  pylon::SessionFilter filter;
  filter.user_id = user;
  filter.tenant_id = tenant;
  const std::vector<pylon::RemovedSession> removed = backend->remove_matching(filter);
  if (globals().json) {
    json ids = json::array();
    for (const pylon::RemovedSession& r : removed) ids.push_back(r.id);
    emit({{"revoked", ids}, {"count", removed.size()}});
  } else {
    std::cout << "revoked: " << removed.size() << '\n';
  }
  return kExitOk;
}

int run_purge() {
  const std::unique_ptr<pylon::SessionBackend> backend = writable_backend(database());
  const std::size_t purged = backend->remove_expired(pylon::system_clock_now());
  if (globals().json) {
    emit({{"purged", purged}});
  } else {
    std::cout << "purged: " << purged << '\n';
  }
  return kExitOk;
}

int run_stats() {
  const std::unique_ptr<Inspector> inspector = open_inspector(database());
  const Counts c = inspector->counts(pylon::system_clock_now());
  const int version = inspector->schema_version();
  if (globals().json) {
    emit({{"database", inspector->describe()},
          {"schema_version", version},
          {"sessions", c.live},
          {"users", c.users},
          {"tenants", c.tenants},
          {"expired", c.expired},
          {"rotated_ids", c.rotated}});
  } else {
    print_field(std::cout, "database", escape(inspector->describe()));
    print_field(std::cout, "schema_version", std::to_string(version));
    print_field(std::cout, "sessions", std::to_string(c.live));
    print_field(std::cout, "users", std::to_string(c.users));
    print_field(std::cout, "tenants", std::to_string(c.tenants));
    print_field(std::cout, "expired", std::to_string(c.expired));
    print_field(std::cout, "rotated_ids", std::to_string(c.rotated));
  }
  return kExitOk;
}

int run_check() {
  const std::unique_ptr<Inspector> inspector = open_inspector(database());
  std::vector<Finding> findings;
  inspector->check(findings);
  bool ok = true;
  json list = json::array();
  for (const Finding& f : findings) {
    ok = ok && f.ok;
    list.push_back({{"check", f.check}, {"ok", f.ok}, {"detail", f.detail}});
  }
  if (globals().json) {
    emit({{"database", inspector->describe()}, {"ok", ok}, {"checks", list}});
  } else {
    std::cout << "database: " << redact_tokens(escape(inspector->describe())) << '\n';
    for (const Finding& f : findings) {
      std::cout << (f.ok ? "  ok       " : "  PROBLEM  ") << f.check << ": "
                << redact_tokens(escape(f.detail)) << '\n';
    }
    std::cout << (ok ? "no problems found\n" : "problems found\n");
  }
  return ok ? kExitOk : kExitNotFound;
}

// Whether the database exists; a missing SQLite file is an error unless `create`.
bool database_exists(const Target& target, bool create) {
  if (target.is_postgres) return true;
  try {
    require_existing_database(target);
  } catch (const Failure&) {
    if (!create || target.is_memory) throw;
    return false;
  }
  return true;
}

void print_migration(const Target& target, int before, int latest, const json& pending,
                     bool dry_run) {
  if (globals().json) {
    emit({{"database", target.shown},
          {"from_version", before},
          {"to_version", latest},
          {dry_run ? "would_apply" : "applied", pending},
          {"dry_run", dry_run}});
    return;
  }
  std::cout << "database: " << escape(target.shown) << '\n'
            << "schema version: " << before << (dry_run ? " (this build's: " : " -> ") << latest
            << (dry_run ? ")" : "") << '\n';
  if (pending.empty()) std::cout << "up to date: nothing to apply\n";
  for (const json& m : pending) {
    std::cout << (dry_run ? "  would apply " : "  applied ") << m["version"].get<int>() << " "
              << m["name"].get<std::string>() << '\n';
  }
}

int run_migrate(bool dry_run, bool create) {
  const Target target = database();
  const bool exists = database_exists(target, create);
  const std::vector<MigrationInfo>& known = known_migrations(target.is_postgres);
  const int latest = known.empty() ? 0 : known.back().version;
  int before = 0;
  if (exists) before = open_inspector(target)->schema_version();
  if (before > latest) {
    throw Failure(kExitStorage, "database " + target.shown + " has schema version " +
                                    std::to_string(before) + ", newer than this build's " +
                                    std::to_string(latest) + "; nothing to do");
  }
  json pending = json::array();
  for (const MigrationInfo& m : known) {
    if (m.version > before) pending.push_back({{"version", m.version}, {"name", m.name}});
  }
  if (!dry_run) pylon::open_backend(target.url).reset();  // migrates, in one transaction each
  print_migration(target, before, latest, pending, dry_run);
  return kExitOk;
}

struct ExportArgs {
  std::optional<std::string> user, tenant;
  bool all = false;
  std::optional<std::string> output;
};

int run_export(const ExportArgs& args) {
  const std::unique_ptr<Inspector> inspector = open_inspector(database());
  std::ofstream file;
  if (args.output) {
    file.open(*args.output, std::ios::out | std::ios::trunc | std::ios::binary);
    if (!file) throw Failure(kExitStorage, "cannot write " + *args.output);
  }
  std::ostream& out = args.output ? static_cast<std::ostream&>(file) : std::cout;
  ListFilter filter;
  filter.user_id = args.user;
  filter.tenant_id = args.tenant;
  filter.include_expired = args.all;
  filter.now = pylon::system_clock_now();
  std::uint64_t written = 0;
  std::uint64_t skipped = 0;
  inspector->each_session(filter, [&](const pylon::Session& s) {
    try {
      out << session_json(s, filter.now, true).dump() << '\n';  // throws on invalid UTF-8
      ++written;
    } catch (const json::exception&) {
      ++skipped;
      std::cerr << "sessionctl: skipped session " << s.id << ": a text field is not UTF-8\n";
    }
    return static_cast<bool>(out);
  });
  out.flush();
  if (!out) throw Failure(kExitStorage, "cannot write the export");
  const json summary = {{"exported", written}, {"skipped", skipped}};
  if (args.output) {
    if (globals().json) {
      emit(summary);
    } else {
      std::cout << "exported: " << written << "\nskipped: " << skipped << '\n';
    }
  } else {
    std::cerr << "exported: " << written << (skipped > 0 ? ", skipped: " : "")
              << (skipped > 0 ? std::to_string(skipped) : "") << '\n';
  }
  return skipped > 0 ? kExitPartial : kExitOk;
}

json report_json(const CopyReport& r) {
  json skipped = json::array();
  for (const auto& [id, why] : r.skipped_rows) {
    skipped.push_back({{"id", id}, {"reason", redact_tokens(why)}});
  }
  return {{"to", r.to},
          {"read", r.read},
          {"inserted", r.inserted},
          {"updated", r.updated},
          {"unchanged", r.unchanged},
          {"revoked_at_destination", r.revoked_at_destination},
          {"rotated_at_destination", r.rotated_at_destination},
          {"interrupted_not_retried", r.interrupted},
          {"skipped", r.skipped},
          {"skipped_rows", skipped},
          {"seconds", r.seconds}};
}

void print_report(const CopyReport& r, const std::string& verb) {
  print_field(std::cout, "to", escape(r.to));
  print_field(std::cout, "read", std::to_string(r.read));
  print_field(std::cout, verb, std::to_string(r.inserted));
  print_field(std::cout, "updated", std::to_string(r.updated));
  print_field(std::cout, "unchanged", std::to_string(r.unchanged));
  print_field(std::cout, "not restored",
              std::to_string(r.revoked_at_destination + r.rotated_at_destination) +
                  " (revoked or rotated at the destination since "
                  "a previous copy)");
  if (r.interrupted > 0) {
    print_field(std::cout, "interrupted",
                std::to_string(r.interrupted) +
                    " (begun by a copy that was killed; not copied: "
                    "--retry-interrupted copies them)");
  }
  print_field(std::cout, "skipped", std::to_string(r.skipped));
  std::ostringstream seconds;
  seconds << std::fixed << std::setprecision(2) << r.seconds << " s";
  print_field(std::cout, "time", seconds.str());
  for (const auto& [id, why] : r.skipped_rows) {
    std::cerr << "sessionctl: skipped " << id << ": " << redact_tokens(escape(why)) << '\n';
  }
  if (r.skipped > r.skipped_rows.size()) {
    std::cerr << "sessionctl: ... and " << r.skipped - r.skipped_rows.size() << " more\n";
  }
}

// A URL from --x URL (or '-': a line of standard input) or --x-env VAR.
std::string url_from(const std::optional<std::string>& literal,
                     const std::optional<std::string>& env, const char* what, bool& read_stdin) {
  if (literal && env) {
    throw Failure(kExitUsage, std::string("give --") + what + " or --" + what + "-env, not both");
  }
  if (env) {
    const char* value = std::getenv(env->c_str());  // NOLINT(concurrency-mt-unsafe): one thread
    if (value == nullptr || *value == '\0') {
      throw Failure(kExitUsage, "the environment variable " + *env + " (--" + what +
                                    "-env) is not set or empty");
    }
    return value;
  }
  if (literal && *literal == "-") {
    if (read_stdin) throw Failure(kExitUsage, "only one URL can come from standard input");
    read_stdin = true;
    std::string line;
    std::getline(std::cin, line);
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.empty()) {
      throw Failure(kExitUsage, std::string("no --") + what + " URL on standard input");
    }
    return line;
  }
  if (literal) {
    if (literal->empty()) throw Failure(kExitUsage, std::string("--") + what + " URL is empty");
    if (pylon::redact_url(*literal) != *literal) {
      std::cerr << "sessionctl: warning: the --" << what
                << " URL holds a password, which `ps` shows to other users; prefer --" << what
                << "-env VAR or --" << what << " - (standard input)\n";
    }
    return *literal;
  }
  return {};
}

struct CopyArgs {
  std::optional<std::string> from, from_env, to, to_env;
  std::size_t batch = 5000;
  bool retry_interrupted = false;
  bool no_progress = false;
};

int finish_copy(CopySink& sink, const std::string& verb) {
  const CopyReport report = sink.finish();
  if (globals().json) {
    emit(report_json(report));
  } else {
    print_report(report, verb);
  }
  return report.skipped > 0 ? kExitPartial : kExitOk;
}

int run_copy(const CopyArgs& args) {
  bool read_stdin = false;
  std::string from_url = url_from(args.from, args.from_env, "from", read_stdin);
  if (!args.from && !args.from_env) {
    from_url = globals().db_given ? globals().db : pylon::database_url_from_env();
  }
  const std::string to_url = url_from(args.to, args.to_env, "to", read_stdin);
  if (to_url.empty()) {
    throw Failure(kExitUsage, "copy needs a destination: --to URL, --to - or --to-env VAR");
  }
  const Target from = resolve_target(from_url);
  const Target to = resolve_target(to_url);
  if (to.is_memory) {
    throw Failure(kExitUsage, "the destination sqlite::memory: would vanish when sessionctl exits");
  }
  if (from.url == to.url ||
      (!from.is_postgres && !to.is_postgres && from.sqlite_path == to.sqlite_path)) {
    throw Failure(kExitUsage, "the source and the destination are the same database");
  }
  const std::unique_ptr<Inspector> source = open_inspector(from);
  const std::int64_t now = pylon::system_clock_now();
  CopyOptions options;
  options.batch_size = args.batch;
  options.retry_interrupted = args.retry_interrupted;
  options.progress = !args.no_progress && ::isatty(STDERR_FILENO) == 1;
  options.expected_rows = source->counts(now).live;
  stop_copies_on_signals();
  CopySink sink(to, options);
  if (sink.pending_at_start() > 0 && !args.retry_interrupted) {
    std::cerr << "sessionctl: a previous copy into " << escape(to.shown) << " was killed with "
              << sink.pending_at_start()
              << " sessions recorded; those not at the destination are not copied again "
                 "(--retry-interrupted copies them)\n";
  }
  ListFilter filter;
  filter.now = now;
  source->each_session(filter, [&](const pylon::Session& s) {
    sink.add(s);
    return true;
  });
  return finish_copy(sink, "copied");
}

int run_import(const std::optional<std::string>& input, const CopyArgs& args) {
  const Target to = database();
  if (to.is_memory) throw Failure(kExitUsage, "sqlite::memory: would vanish when sessionctl exits");
  std::ifstream file;
  if (input && *input != "-") {
    file.open(*input, std::ios::in | std::ios::binary);
    if (!file) throw Failure(kExitStorage, "cannot read " + *input);
  }
  std::istream& in = input && *input != "-" ? static_cast<std::istream&>(file) : std::cin;
  CopyOptions options;
  options.batch_size = args.batch;
  options.retry_interrupted = args.retry_interrupted;
  options.progress = !args.no_progress && ::isatty(STDERR_FILENO) == 1;
  stop_copies_on_signals();
  CopySink sink(to, options);
  const std::int64_t now = pylon::system_clock_now();
  std::string line;
  std::uint64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    pylon::Session s;
    try {
      s = session_from_json(json::parse(line));
    } catch (const std::exception& e) {
      sink.skip("line " + std::to_string(number), e.what());
      continue;
    }
    if (s.expires_at <= now) continue;  // expired: nothing to import
    sink.add(s);
  }
  return finish_copy(sink, "imported");
}

// ------------------------------------------------------------------------------------------------
// The command line
// ------------------------------------------------------------------------------------------------

constexpr const char* kDescription =
    "sessionctl: inspect and manage the sessions of a pylon-sessions database (SQLite or "
    "PostgreSQL).";

constexpr const char* kFooter = R"(
Database: --db URL, else $DATABASE_URL, else the file sessions.db in the working directory.
  sessions.db, /var/lib/app/sessions.db   a file path
  sqlite://relative/path.db               a path relative to the working directory
  sqlite:///absolute/path.db              an absolute path
  postgres://USER:PASSWORD@HOST/DB        PostgreSQL (also postgresql://)
Inspection commands (list, show, validate, stats, check, export, migrate --dry-run) open the
database read-only and refuse a path that does not exist. A URL with a password is best given
through DATABASE_URL (other users see command lines in `ps`). Messages never show a password,
and show an argument shaped like a token as pylon_1234... : give tokens as '-' and type them
on standard input.

Every command takes --json: one JSON document on standard output (`export` writes JSON Lines).
Errors go to standard error.

Exit status:
  0  success (also `list` with no session, `revoke-user`/`purge` that deleted nothing)
  1  not found or invalid: a malformed, unknown, revoked or expired token, an unknown session
     id; `check` found a problem
  2  usage error: unknown command or option, a missing or extra argument, a value the
     library refuses as invalid
  3  storage error: the database cannot be opened, read or written (no such file, not an
     SQLite file, a newer schema, a lock held too long, a full disk, a permission denied,
     a server that does not answer)
  4  copy, import or export finished but skipped rows (each listed on standard error)
)";

constexpr const char* kCopyHelp =
    R"(Copies every live session from the source (--from URL, --from-env VAR, else --db /
$DATABASE_URL / sessions.db) into the destination (--to URL, --to - to read the URL from
standard input, or --to-env VAR: keep passwords off the command line), creating the
destination's schema if needed. Sessions keep their ids (token hashes), times and data, so
nobody is logged out. The source is opened read-only and streamed: the whole source is never
in memory. Each batch (--batch rows) is one transaction at the destination.

Re-running it is safe, and it never brings back a session revoked at the destination:
  - the destination keeps a ledger, the tables _pylon_copied_ids and _pylon_copy_runs: every
    session id a copy put there or found there (until the session's hard expiry), and the
    run that recorded it. A source row whose id is in the ledger but no longer in the
    destination was revoked, rotated or purged there since: it is not copied again ("not
    restored" in the report);
  - an id the destination rotated away (_pylon_rotated_ids) is never inserted;
  - a row the destination already holds is never overwritten: if the source saw later
    activity, the destination's expiry is moved forward and its data updated, by writes
    that never insert (so a revoke racing the copy still wins);
  - each batch's ids are recorded (one transaction) before its rows are inserted (another).
    A copy killed in between leaves recorded ids it never inserted, under a run that never
    finished: later runs treat them as revoked (fail closed) and say how many;
    --retry-interrupted copies them, and with them any session of that run revoked at the
    destination since, so use it right after the killed copy. Ctrl-C is not a kill: the copy
    stops after the batch in flight, leaving nothing pending (exit status 130).
Sessions revoked in the *source* after a first copy are not removed from the destination:
copy with the applications stopped, or revoke them at the destination too.

A row the destination cannot store (a field over its limit, text that is not UTF-8, times
out of range) is skipped; the rest is copied, the skipped rows are listed at the end, and the
exit status is 4. A progress bar is drawn on a terminal when the copy takes over a second.

  DATABASE_URL='postgres://app:secret@db/app' sessionctl --db sqlite://sessions.db copy --to-env DATABASE_URL
Exit status: 0 copied; 2 usage error; 3 storage error (the copy stops: the batches committed
stay, and a re-run goes on from there); 4 done, but rows were skipped.)";

// `text` with each line that does not start with a space word-wrapped at 96 columns.
std::string wrap(std::string_view text) {
  constexpr std::size_t kWidth = 96;
  std::string out;
  std::size_t begin = 0;
  while (begin <= text.size()) {
    std::size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(begin, end - begin);
    if (line.empty() || line.front() == ' ' || line.size() <= kWidth) {
      out.append(line);
    } else {
      std::size_t column = 0;
      std::size_t word = 0;
      while (word < line.size()) {
        std::size_t next = line.find(' ', word);
        if (next == std::string_view::npos) next = line.size();
        const std::size_t length = next - word;
        if (column > 0 && column + 1 + length > kWidth) {
          out += '\n';
          column = 0;
        } else if (column > 0) {
          out += ' ';
          ++column;
        }
        out.append(line.substr(word, length));
        column += length;
        word = next + 1;
      }
    }
    if (end < text.size()) out += '\n';
    begin = end + 1;
  }
  return out;
}

// The text after a command's options in its --help.
void describe(CLI::App* command, std::string_view text) {
  command->footer("\n" + wrap(text) +
                  "\nGlobal options (before or after the command): --db URL, --json.\n"
                  "`sessionctl --help` lists the URL forms and exit statuses.\n");
}

void add_filter_options(CLI::App* command, std::optional<std::string>& user,
                        std::optional<std::string>& tenant, bool& all) {
  command->add_option("--user", user, "only the sessions of this user");
  command->add_option("--tenant", tenant, "only the sessions of this tenant");
  command->add_flag("--all", all, "include expired sessions not yet purged");
}

int run(int argc, char** argv) {
  CLI::App app(kDescription, "sessionctl");
  app.footer(kFooter);
  app.require_subcommand(1);
  app.set_version_flag("--version",
                       std::string("sessionctl (pylon-sessions) ") + SESSIONCTL_VERSION);
  Globals& g = globals();
  app.add_option("--db", g.db, "the database URL (default: $DATABASE_URL, else sessions.db)")
      ->each([&g](const std::string&) { g.db_given = true; });
  app.add_flag("--json", g.json, "print one JSON document on standard output");
  std::function<int()> action;

  CreateArgs create;
  CLI::App* c = app.add_subcommand("create", "create a session for USER; prints its token once");
  c->add_option("USER", create.user, "the user (any non-empty text)")->required();
  c->add_option("--tenant", create.tenant, "the tenant of the session");
  c->add_option("--device", create.device, "free text describing the client");
  c->add_option("--ip", create.ip, "the client address to record");
  c->add_option("--idp-session-id", create.idp_session_id, "the identity provider's sid");
  c->add_option("--ttl", create.ttl, "absolute lifetime in seconds")->capture_default_str();
  c->add_option("--idle", create.idle, "idle timeout in seconds (0: none)")->capture_default_str();
  describe(
      c,
      "Prints the new token alone on the first line: it is shown this once (the database keeps "
      "only its SHA-256, the session id); the session follows. Creates the database if it does "
      "not exist.\n  sessionctl create alice --device 'curl'\nExit status: 0 created; 2 an "
      "invalid value; 3 storage error.");
  c->callback([&] { action = [&] { return run_create(create); }; });

  std::string token;
  CLI::App* v = app.add_subcommand("validate", "show the live session of TOKEN ('-': stdin)");
  v->add_option("TOKEN", token, "the token, or - to read it from standard input")->required();
  describe(v,
           "An inspection: opens the database read-only; does not slide the idle expiry. Says when "
           "the token was rotated away.\n  printf '%s\\n' \"$TOKEN\" | sessionctl validate -\nExit "
           "status: 0 live; 1 malformed, unknown, revoked, rotated or expired; 3 storage error.");
  v->callback([&] { action = [&] { return run_validate(token); }; });

  std::string id;
  CLI::App* sh = app.add_subcommand("show", "show one session by id (or a unique prefix)");
  sh->add_option("ID", id, "64 hex characters, or at least the first 8")->required();
  describe(sh,
           "  sessionctl show 3f2a9c01\nExit status: 0 shown; 1 no such session; 3 storage error.");
  sh->callback([&] { action = [&] { return run_show(id); }; });

  ListArgs list;
  CLI::App* l = app.add_subcommand("list", "list live sessions, oldest first (streamed)");
  add_filter_options(l, list.user, list.tenant, list.all);
  l->add_option("--limit", list.limit, "at most this many");
  describe(
      l,
      "A table with a header (ID is the first 16 characters of the session id: `show` and "
      "`revoke-id` take it), or with --json an array of sessions. Rows are streamed from "
      "storage, never all held.\n  sessionctl list --user alice\n  sessionctl --json list "
      "--tenant acme --limit 100\nExit status: 0 (also when nothing matches); 3 storage error.");
  l->callback([&] { action = [&] { return run_list(list); }; });

  std::string revoke_token;
  CLI::App* r = app.add_subcommand("revoke", "delete the session of TOKEN ('-': stdin)");
  r->add_option("TOKEN", revoke_token, "the token, or - to read it from standard input")
      ->required();
  describe(r, "Exit status: 0 revoked; 1 malformed token or no such session; 3 storage error.");
  r->callback([&] { action = [&] { return run_revoke(revoke_token); }; });

  std::string revoke_id;
  CLI::App* ri = app.add_subcommand("revoke-id", "delete the session with this id (or prefix)");
  ri->add_option("ID", revoke_id, "64 hex characters, or a unique prefix of at least 8")
      ->required();
  describe(ri,
           "  sessionctl revoke-id 3f2a9c01\nExit status: 0 revoked; 1 no such session; 3 storage "
           "error.");
  ri->callback([&] { action = [&] { return run_revoke_id(revoke_id); }; });

  std::string revoke_user;
  std::optional<std::string> revoke_tenant;
  CLI::App* ru =
      app.add_subcommand("revoke-user", "delete every session of USER (sign out everywhere)");
  ru->add_option("USER", revoke_user, "the user")->required();
  ru->add_option("--tenant", revoke_tenant, "only the user's sessions of this tenant");
  describe(ru,
           "Prints how many sessions went (0 is a success).\n  sessionctl revoke-user alice\nExit "
           "status: 0; 3 storage error.");
  ru->callback([&] { action = [&] { return run_revoke_user(revoke_user, revoke_tenant); }; });

  CLI::App* p = app.add_subcommand("purge", "delete every expired session (one statement)");
  describe(p, "Exit status: 0 (also when nothing was expired); 3 storage error.");
  p->callback([&] { action = [&] { return run_purge(); }; });

  CLI::App* st = app.add_subcommand("stats", "count live and expired sessions, users, tenants");
  describe(
      st,
      "Counted by storage (SQL), never by reading every row.\nExit status: 0; 3 storage error.");
  st->callback([&] { action = [&] { return run_stats(); }; });

  CLI::App* ck =
      app.add_subcommand("check", "check integrity, schema version, table shape, file mode");
  describe(ck,
           "Read-only. SQLite: PRAGMA integrity_check, the journal mode, the schema version, the "
           "tables and indexes compared with what this build's migrations create, the modes and "
           "owner of the file and its -wal and -shm (0600 expected), rows the library would skip. "
           "PostgreSQL: the server version, schema version, columns and rows.\nExit status: 0 no "
           "problem; 1 a problem found (each marked PROBLEM); 3 storage error.");
  ck->callback([&] { action = [&] { return run_check(); }; });

  bool dry_run = false;
  bool create_db = false;
  CLI::App* m = app.add_subcommand("migrate", "bring the schema up to this build's version");
  m->add_flag("--dry-run", dry_run, "only say which migrations would run (read-only)");
  m->add_flag("--create", create_db, "create the SQLite file if it does not exist");
  describe(m,
           "Each migration runs in one transaction with its record; re-running is a no-op.\nExit "
           "status: 0; 3 storage error or a schema newer than this build.");
  m->callback([&] { action = [&] { return run_migrate(dry_run, create_db); }; });

  ExportArgs exp;
  CLI::App* e = app.add_subcommand("export", "write sessions as JSON Lines (one session a line)");
  add_filter_options(e, exp.user, exp.tenant, exp.all);
  e->add_option("--output,-o", exp.output, "write to this file instead of standard output");
  describe(
      e,
      "Each line: the session's columns, with `data_base64` (its bytes). Streamed from "
      "storage. A session whose text is not UTF-8 is skipped and named (exit 4).\n  sessionctl "
      "export > sessions.jsonl\nExit status: 0; 3 storage error; 4 rows skipped.");
  e->callback([&] { action = [&] { return run_export(exp); }; });

  std::optional<std::string> import_file;
  CopyArgs import_args;
  CLI::App* im =
      app.add_subcommand("import", "read JSON Lines (as `export` writes) into the database");
  im->add_option("FILE", import_file, "the file, or - (the default) for standard input");
  im->add_option("--batch", import_args.batch, "rows per transaction")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  im->add_flag("--retry-interrupted", import_args.retry_interrupted, "see `copy --help`");
  im->add_flag("--no-progress", import_args.no_progress, "never draw a progress bar");
  describe(im,
           "Writes as `copy` does (see `sessionctl copy --help`): batched, never overwriting a "
           "session, never bringing back one revoked since a previous import; expired lines are "
           "ignored; a line that cannot be stored is skipped and reported (exit 4).\n  sessionctl "
           "--db new.db import sessions.jsonl\nExit status: 0 imported; 2 usage error; 3 storage "
           "error; 4 "
           "lines skipped.");
  im->callback([&] { action = [&] { return run_import(import_file, import_args); }; });

  CopyArgs copy;
  CLI::App* cp = app.add_subcommand("copy", "copy every live session into another database");
  cp->add_option("--from", copy.from, "the source URL (default: --db, $DATABASE_URL)");
  cp->add_option("--from-env", copy.from_env, "the name of a variable holding the source URL");
  cp->add_option("--to", copy.to, "the destination URL, or - to read it from standard input");
  cp->add_option("--to-env", copy.to_env, "the name of a variable holding the destination URL");
  cp->add_option("--batch", copy.batch, "rows per transaction")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  cp->add_flag("--retry-interrupted", copy.retry_interrupted,
               "also copy what a killed copy had begun");
  cp->add_flag("--no-progress", copy.no_progress, "never draw a progress bar");
  describe(cp, kCopyHelp);
  cp->callback([&] { action = [&] { return run_copy(copy); }; });

  for (CLI::App* command : app.get_subcommands({})) command->fallthrough();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    if (error.get_exit_code() == 0) {
      std::ostringstream out;
      std::ostringstream err;
      app.exit(error, out, err);
      std::cout << redact_tokens(out.str());
      return kExitOk;
    }
    std::cerr << "sessionctl: " << redact_tokens(escape(error.what())) << "\n"
              << "Try 'sessionctl --help'"
              << (app.get_subcommands().empty()
                      ? std::string()
                      : " or 'sessionctl " + app.get_subcommands().front()->get_name() + " --help'")
              << ".\n";
    return kExitUsage;
  }
  return action ? action() : kExitUsage;
}

}  // namespace
}  // namespace sessionctl

int main(int argc, char** argv) {
  using sessionctl::escape;
  using sessionctl::redact_tokens;
  int status = sessionctl::kExitOk;
  try {
    status = sessionctl::run(argc, argv);
  } catch (const sessionctl::Failure& e) {
    std::cout.flush();
    std::cerr << "sessionctl: " << redact_tokens(escape(e.what())) << '\n';
    return e.status();
  } catch (const pylon::Error& e) {
    std::cout.flush();
    // The library's messages hide passwords and never hold a token; redacted all the same.
    std::cerr << "sessionctl: " << redact_tokens(escape(e.what())) << '\n';
    if (!e.backend_detail().empty()) {
      std::cerr << "sessionctl: backend said: " << redact_tokens(escape(e.backend_detail()))
                << '\n';
    }
    return e.code() == pylon::ErrorCode::kInvalidArgument ? sessionctl::kExitUsage
                                                          : sessionctl::kExitStorage;
  } catch (const std::exception& e) {
    std::cerr << "sessionctl: " << redact_tokens(escape(e.what())) << '\n';
    return sessionctl::kExitStorage;
  }
  std::cout.flush();
  if (!std::cout) {
    std::cerr << "sessionctl: cannot write to standard output\n";
    return sessionctl::kExitStorage;
  }
  return status;
}

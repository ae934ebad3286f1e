// sessionctl: the command-line tool of pylon-sessions.
//
// The command line is CLI11's, the JSON nlohmann's. What it promises:
//   - The only raw token it ever prints is the one `create` has just made, alone on the first
//     line (or as "token" in its JSON). Every message and every human-readable line passes
//     through redact_tokens(), so a token typed in the wrong place shows as "pylon_1234…".
//   - Inspection commands (show, validate, stats, check, export, list --all, migrate --dry-run)
//     open the database read-only (ctl_storage.hpp), refuse a path that does not exist, and ask
//     storage for what they show. Commands that write go through the library's SessionBackend.
//   - The administration reads the library offers (`list`: SessionBackend::list_page, page by
//     page with a keyset cursor; `count`: count_by_tenant) and `revoke --tenant`
//     (remove_matching with a tenant-only filter) go through the library too, so that the tool
//     and the applications share one implementation. `list` and `count` refuse a path that does
//     not exist and a schema older than this build's (the library would migrate it).
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
  bool idle_given = false;  // --idle was on the command line: stored as the session's own
};

int run_create(const CreateArgs& args) {
  if (args.ttl <= 0 || args.idle < 0) throw Failure(kExitUsage, "--ttl must be > 0, --idle >= 0");
  if (args.user.empty()) {
    throw Failure(kExitUsage,
                  "USER must not be empty (sessions without a user are made by the application, "
                  "SessionStore::create_anonymous)");
  }
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
  s.authenticated_at = now;  // as SessionStore::create() sets it
  if (args.idle_given) s.idle_timeout_seconds = args.idle;
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
  std::optional<std::string> user, tenant, device, after;
  std::optional<std::string> created_since, created_before, last_seen_since, last_seen_before;
  bool anonymous = false;
  bool all = false;
  std::optional<std::size_t> limit;
};

// The sessions a listing prints: a table (its header before the first row) or a streamed JSON
// array, one session at a time.
class SessionPrinter {
 public:
  explicit SessionPrinter(std::int64_t now)
      : now_(now),
        table_({{"ID", 17},
                {"USER", 18},
                {"TENANT", 10},
                {"CREATED (UTC)", 16},
                {"LAST SEEN", 16},
                {"EXPIRES", 16},
                {"IP", 15},
                {"DEVICE", 0}}) {
    if (globals().json) std::cout << "[";
  }

  // False once standard output cannot be written.
  bool print(const pylon::Session& s) {
    if (globals().json) {
      std::cout << (rows_ == 0 ? "\n" : ",\n") << dump(session_json(s, now_, false));
    } else {
      if (rows_ == 0) table_.header(std::cout);
      table_.row(std::cout,
                 {s.id.substr(0, 16) + "\u2026", user_label(s), s.tenant_id.value_or("-"),
                  short_time(s.created_at), short_time(s.last_seen_at),
                  s.expires_at <= now_ ? "expired" : short_time(s.expires_at), s.ip.value_or("-"),
                  s.device.value_or("-")});
    }
    ++rows_;
    return static_cast<bool>(std::cout);
  }

  // Ends the JSON array; returns how many sessions were printed.
  std::size_t finish() const {
    if (globals().json) std::cout << (rows_ == 0 ? "]\n" : "\n]\n");
    return rows_;
  }

 private:
  std::int64_t now_;
  Table table_;
  std::size_t rows_ = 0;
};

std::string plural(std::size_t count, const char* one, const char* many) {
  return std::to_string(count) + " " + (count == 1 ? one : many);
}

// --created-since and the like: Unix seconds, or a UTC time as `show` and the tables print it.
std::optional<std::int64_t> time_option(const char* option,
                                        const std::optional<std::string>& text) {
  if (!text) return std::nullopt;
  const std::optional<std::int64_t> time = parse_time(*text);
  if (!time) {
    throw Failure(kExitUsage, std::string(option) + " '" + *text +
                                  "' is not a time: give Unix seconds (1764666840) or a UTC "
                                  "time as 2026-12-02, 2026-12-02T09:14 or 2026-12-02T09:14:00Z");
  }
  return time;
}

// --after: the cursor a previous `list` printed, the id of the last session it showed.
std::string checked_cursor(const std::string& operand) {
  if (operand.rfind("pylon_", 0) == 0) {
    throw Failure(kExitUsage,
                  "--after takes the cursor a previous `list` printed, not a token (a token "
                  "is never a cursor, and belongs on standard input)");
  }
  std::string cursor = operand;
  for (char& c : cursor) {
    if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
  }
  if (!pylon::is_well_formed_session_id(cursor)) {
    throw Failure(kExitUsage,
                  "--after takes the cursor a previous `list` printed (a session id: 64 hex "
                  "characters)");
  }
  return cursor;
}

// What the filters of `list` ask the library's SessionBackend::list_page for.
pylon::SessionQuery list_query(const ListArgs& args) {
  pylon::SessionQuery query;
  query.tenant_id = args.tenant;
  query.user_id = args.user;
  if (args.anonymous) query.user_id = std::string();  // "" lists the anonymous sessions
  query.device = args.device;
  query.created_since = time_option("--created-since", args.created_since);
  query.created_before = time_option("--created-before", args.created_before);
  query.last_seen_since = time_option("--last-seen-since", args.last_seen_since);
  query.last_seen_before = time_option("--last-seen-before", args.last_seen_before);
  if (args.after) query.after = checked_cursor(*args.after);
  return query;
}

// The newest schema version this build's migrations reach for `target`.
int latest_schema_version(const Target& target) {
  const std::vector<MigrationInfo>& known = known_migrations(target.is_postgres);
  return known.empty() ? 0 : known.back().version;
}

// A backend for the administration reads (`list`, `count`): they ask the library's
// SessionBackend::list_page and count_by_tenant, the calls behind an application's
// SessionStore::list_sessions and count_by_tenant, so that the tool and the applications share
// one implementation. The library opens a database as an application does: read-write, and it
// migrates an older schema. A read must not change the schema behind the applications' back, so
// an older one is refused here; a file the library cannot open for writing is named with the
// commands that read it read-only.
std::unique_ptr<pylon::SessionBackend> admin_backend(const Target& target, const char* command) {
  require_existing_database(target);
  const int version = open_inspector(target)->schema_version();
  const int latest = latest_schema_version(target);
  const std::string readers = "`list --all`, `export` and `stats` read it read-only, as it is";
  if (version == 0) {
    throw Failure(kExitStorage, "database " + target.shown +
                                    " has no pylon-sessions schema: not a pylon-sessions "
                                    "database, or no application has opened it yet");
  }
  if (version < latest) {
    throw Failure(kExitStorage,
                  "database " + target.shown + " has schema version " + std::to_string(version) +
                      "; `" + command + "` asks the library, which needs this build's version " +
                      std::to_string(latest) +
                      " and would migrate it: run `sessionctl migrate` first (" + readers + ")");
  }
  try {
    return pylon::open_backend(target.url);
  } catch (const pylon::Error& e) {
    if (e.code() != pylon::ErrorCode::kReadOnly && e.code() != pylon::ErrorCode::kIo) throw;
    throw Failure(kExitStorage, std::string(e.what()) + "; `" + command +
                                    "` asks the library, which opens the database read-write "
                                    "as an application does (" +
                                    readers + ")");
  }
}

// `list --all`: expired sessions too, which the library's listing never returns; read-only
// through the Inspector, oldest first, streamed.
int run_list_all(const ListArgs& args) {
  if (args.device || args.after || args.created_since || args.created_before ||
      args.last_seen_since || args.last_seen_before) {
    throw Failure(kExitUsage,
                  "--all (expired sessions too, read-only, oldest first) takes only --user, "
                  "--anonymous, --tenant and --limit; --device, --created-*, --last-seen-* and "
                  "--after filter and page the live sessions");
  }
  const std::unique_ptr<Inspector> inspector = open_inspector(database());
  ListFilter filter;
  filter.user_id = args.anonymous ? std::optional<std::string>(std::string()) : args.user;
  filter.tenant_id = args.tenant;
  filter.include_expired = true;
  filter.now = pylon::system_clock_now();
  filter.limit = args.limit;
  SessionPrinter printer(filter.now);
  inspector->each_session(filter, [&](const pylon::Session& s) { return printer.print(s); });
  const std::size_t rows = printer.finish();
  if (rows == 0) {
    std::cerr << "no sessions\n";
  } else if (!args.limit || rows < *args.limit) {
    std::cerr << plural(rows, "session", "sessions") << '\n';
  } else {
    std::cerr << rows << " sessions shown (--limit)\n";
  }
  return kExitOk;
}

// Sessions per call of list_page: each page is printed before the next is asked for.
constexpr std::size_t kListPage = 1000;

int run_list(const ListArgs& args) {
  if (args.user && args.user->empty()) {
    throw Failure(kExitUsage,
                  "--user must not be empty; --anonymous lists the sessions without "
                  "a user");
  }
  if (args.all) return run_list_all(args);
  pylon::SessionQuery query = list_query(args);
  const std::unique_ptr<pylon::SessionBackend> backend = admin_backend(database(), "list");
  const std::int64_t now = pylon::system_clock_now();
  SessionPrinter printer(now);
  std::size_t rows = 0;
  bool more = false;  // sessions follow the last one printed (--limit stopped the listing)
  std::string last;
  while (true) {
    // With --limit, one session past it is asked for, to tell whether any follow.
    const std::size_t left = args.limit ? *args.limit - rows : kListPage;
    query.limit = left < kListPage ? left + 1 : kListPage;
    const std::vector<pylon::Session> page = backend->list_page(query, now);
    for (const pylon::Session& s : page) {
      if (args.limit && rows == *args.limit) {
        more = true;
        break;
      }
      if (!printer.print(s)) return kExitOk;  // main() reports the failed write
      last = s.id;
      ++rows;
    }
    if (more || page.size() < query.limit) break;
    query.after = page.back().id;
  }
  printer.finish();
  if (rows == 0) {
    std::cerr << (args.after ? "no sessions after the cursor\n" : "no sessions\n");
  } else if (more) {
    std::cerr << plural(rows, "session", "sessions") << " shown (--limit); the next page: --after "
              << last << " (with the same filters)\n";
  } else {
    std::cerr << plural(rows, "session", "sessions") << '\n';
  }
  return kExitOk;
}

// `count`: the live sessions of each tenant, and how many of them are anonymous, from the
// library's SessionBackend::count_by_tenant (one grouped query in storage).
int run_count() {
  const std::unique_ptr<pylon::SessionBackend> backend = admin_backend(database(), "count");
  const std::vector<pylon::TenantCount> counts =
      backend->count_by_tenant(pylon::system_clock_now());
  std::size_t sessions = 0;
  std::size_t anonymous = 0;
  std::size_t tenants = 0;
  std::size_t without_tenant = 0;
  for (const pylon::TenantCount& c : counts) {
    sessions += c.sessions;
    anonymous += c.anonymous;
    if (c.tenant_id) {
      ++tenants;
    } else {
      without_tenant += c.sessions;
    }
  }
  if (globals().json) {
    json list = json::array();
    for (const pylon::TenantCount& c : counts) {
      list.push_back({{"tenant_id", c.tenant_id ? json(*c.tenant_id) : json(nullptr)},
                      {"sessions", c.sessions},
                      {"anonymous", c.anonymous}});
    }
    emit({{"tenants", list}, {"sessions", sessions}, {"anonymous", anonymous}});
    return kExitOk;
  }
  const Table table({{"TENANT", 24}, {"SESSIONS", 10}, {"ANONYMOUS", 0}});
  for (const pylon::TenantCount& c : counts) {
    if (&c == &counts.front()) table.header(std::cout);
    table.row(std::cout,
              {c.tenant_id.value_or("-"), std::to_string(c.sessions), std::to_string(c.anonymous)});
  }
  std::cerr << "total: " << plural(sessions, "session", "sessions") << " (" << anonymous
            << " anonymous); " << plural(tenants, "tenant", "tenants") << ", "
            << plural(without_tenant, "session", "sessions") << " without one\n";
  return kExitOk;
}

// A bare backend on an existing database: writes without loading every session.
std::unique_ptr<pylon::SessionBackend> writable_backend(const Target& target) {
  require_existing_database(target);
  return pylon::open_backend(target.url);
}

// `revoke --tenant T`: every session of the tenant, in one statement (the library's
// remove_matching() with a tenant-only filter, as SessionStore::revoke_tenant() does).
int run_revoke_tenant(const std::string& tenant) {
  if (tenant.empty()) {
    throw Failure(kExitUsage,
                  "--tenant must not be empty (sessions without a tenant cannot be "
                  "revoked by tenant)");
  }
  const std::unique_ptr<pylon::SessionBackend> backend = writable_backend(database());
  pylon::SessionFilter filter;
  filter.tenant_id = tenant;
  const std::vector<pylon::RemovedSession> removed = backend->remove_matching(filter);
  if (globals().json) {
    json ids = json::array();
    for (const pylon::RemovedSession& r : removed) ids.push_back(r.id);
    emit({{"tenant", tenant}, {"revoked", ids}, {"count", removed.size()}});
  } else {
    std::cout << "revoked: " << removed.size() << '\n';
  }
  return kExitOk;
}

struct RevokeArgs {
  std::optional<std::string> token;
  std::optional<std::string> tenant;
};

int run_revoke(const RevokeArgs& args) {
  if (args.token && args.tenant) {
    throw Failure(kExitUsage, "give a TOKEN or --tenant, not both");
  }
  if (args.tenant) return run_revoke_tenant(*args.tenant);
  if (!args.token) {
    throw Failure(kExitUsage,
                  "revoke needs a TOKEN ('-': read it from standard input) or --tenant T");
  }
  const std::string token = checked_token(*args.token);
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
  if (user.empty()) {
    throw Failure(kExitUsage,
                  "USER must not be empty (anonymous sessions have no user: revoke them by id, "
                  "or with `revoke --tenant`)");
  }
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
          {"anonymous", c.anonymous},
          {"tenants", c.tenants},
          {"expired", c.expired},
          {"rotated_ids", c.rotated}});
  } else {
    print_field(std::cout, "database", escape(inspector->describe()));
    print_field(std::cout, "schema_version", std::to_string(version));
    print_field(std::cout, "sessions", std::to_string(c.live));
    print_field(std::cout, "users", std::to_string(c.users));
    print_field(std::cout, "anonymous", std::to_string(c.anonymous));
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
Inspection commands (show, validate, stats, check, export, list --all, migrate --dry-run)
open the database read-only and refuse a path that does not exist. `list` and `count` ask the
library's administration calls, which open the database as an application does (read-write):
they refuse a path that does not exist and a schema older than this build's. A URL with a
password is best given through DATABASE_URL (other users see command lines in `ps`). Messages
never show a password, and show an argument shaped like a token as pylon_1234... : give
tokens as '-' and type them on standard input.

Every command takes --json: one JSON document on standard output (`export` writes JSON Lines).
Errors go to standard error.

Exit status:
  0  success (also `list` with no session, `revoke-user`/`revoke --tenant`/`purge` that
     deleted nothing)
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

constexpr const char* kListHelp =
    R"HELP(Lists the live sessions through the library's administration call
(SessionBackend::list_page, the one behind SessionStore::list_sessions), ordered by session id,
page by page: each page is printed before the next is read, so nothing holds them all.
Filters combine (a session must match every one): --tenant, --user or --anonymous (the sessions
without a user), --device (exactly this device text), --created-since/--created-before and
--last-seen-since/--last-seen-before (since: at or after; before: strictly before; Unix seconds,
or UTC as 2026-12-02, 2026-12-02T09:14, 2026-12-02 09:14 or 2026-12-02T09:14:00Z).
With --limit N at most N sessions are printed; when more follow, the last line on standard
error gives the cursor to continue from: run the same command with --after CURSOR (the id of the
last session shown). A session that exists from the first page to the last is listed exactly
once, whatever is created or revoked meanwhile.
A table with a header (ID is the first 16 characters of the session id: `show` and `revoke-id`
take it; USER is "(anonymous)" for a session without one), or with --json an array of sessions
(each with authenticated_at, idle_timeout_seconds and anonymous).
--all also lists expired sessions not yet purged, as `list` did before it paged: read-only,
oldest first, streamed; with --user, --anonymous, --tenant and --limit only.
The library opens the database as an application does: read-write, at this build's schema
version (an older one is refused: `sessionctl migrate` first). `list --all` and `export` read a
read-only, immutable or older database as it is.
  sessionctl list --tenant acme --limit 100
  sessionctl list --tenant acme --limit 100 --after CURSOR
  sessionctl --json list --anonymous --last-seen-before 2026-12-01
Exit status: 0 (also when nothing matches); 2 usage error (a time or cursor that is not one);
3 storage error.)HELP";

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
      "not exist. authenticated_at is now. An --idle given on the command line is stored as the "
      "session's own idle timeout, which every slide then uses; without it the first expiry is "
      "--idle's default and the application's idle timeout applies from then on.\n  sessionctl "
      "create alice --device 'curl'\nExit status: 0 created; 2 an invalid value (an empty "
      "USER: anonymous sessions are made by the application); 3 storage error.");
  c->callback([&] {
    create.idle_given = c->count("--idle") > 0;
    action = [&] { return run_create(create); };
  });

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
  CLI::App* l =
      app.add_subcommand("list", "list live sessions page by page, with filters and a cursor");
  add_filter_options(l, list.user, list.tenant, list.all);
  l->add_flag("--anonymous", list.anonymous, "only the sessions without a user")
      ->excludes("--user");
  l->add_option("--device", list.device, "only the sessions with exactly this device text");
  l->add_option("--created-since", list.created_since, "created at or after TIME");
  l->add_option("--created-before", list.created_before, "created before TIME");
  l->add_option("--last-seen-since", list.last_seen_since, "last seen at or after TIME");
  l->add_option("--last-seen-before", list.last_seen_before, "last seen before TIME");
  l->add_option("--limit", list.limit, "at most this many (then the cursor of the next page)")
      ->check(CLI::PositiveNumber);
  l->add_option("--after", list.after, "the cursor a previous page printed: continue there");
  describe(l, kListHelp);
  l->callback([&] { action = [&] { return run_list(list); }; });

  CLI::App* n = app.add_subcommand("count", "count the live sessions of each tenant");
  describe(n,
           "One row per tenant that has live sessions (TENANT \"-\": the sessions without a "
           "tenant, first), with how many of them are anonymous; the total on standard error. "
           "From the library's administration call (SessionBackend::count_by_tenant, one grouped "
           "query in storage), which opens the database as an application does; like `list`, it "
           "refuses a schema older than this build's. `stats` counts read-only.\n  sessionctl "
           "count\n  sessionctl --json count\nExit status: 0; 3 storage error.");
  n->callback([&] { action = [&] { return run_count(); }; });

  RevokeArgs revoke;
  CLI::App* r = app.add_subcommand(
      "revoke", "delete the session of TOKEN ('-': stdin), or those of a --tenant");
  r->add_option("TOKEN", revoke.token, "the token, or - to read it from standard input");
  r->add_option("--tenant", revoke.tenant,
                "instead of a TOKEN: every session of this tenant, in one statement");
  describe(r,
           "`revoke TOKEN` deletes one session. `revoke --tenant T` deletes every session of the "
           "tenant in one statement (the library's remove_matching with a tenant-only filter, "
           "as SessionStore::revoke_tenant) and prints how many went; the other tenants' "
           "sessions stay. Running applications drop them from their caches as they follow the "
           "change log.\n  printf '%s\\n' \"$TOKEN\" | sessionctl revoke -\n  sessionctl revoke "
           "--tenant acme\nExit status: 0 revoked (--tenant: also when nothing was); 1 malformed "
           "token or no such session; 2 neither or both of TOKEN and --tenant; 3 storage error.");
  r->callback([&] { action = [&] { return run_revoke(revoke); }; });

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
           "Prints how many sessions went (0 is a success). USER must not be empty (anonymous "
           "sessions have no user).\n  sessionctl revoke-user alice\nExit status: 0; 2 an empty "
           "USER; 3 storage error.");
  ru->callback([&] { action = [&] { return run_revoke_user(revoke_user, revoke_tenant); }; });

  CLI::App* p = app.add_subcommand("purge", "delete every expired session (one statement)");
  describe(p, "Exit status: 0 (also when nothing was expired); 3 storage error.");
  p->callback([&] { action = [&] { return run_purge(); }; });

  CLI::App* st = app.add_subcommand(
      "stats", "count live and expired sessions, users, anonymous sessions and tenants");
  describe(st,
           "Counted by storage (SQL), never by reading every row; read-only. `count` gives the "
           "sessions of each tenant.\nExit status: 0; 3 storage error.");
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

// pylon-sessions: sessions that survive a restart, for C++17 applications.
//
// This header is the whole public API. It includes no database header: SQLite, libpq and
// OpenSSL stay inside the library.
//
//   auto store = pylon::SessionStore::open("sqlite://sessions.db");
//   pylon::NewSession login = store.create("user-42");       // give login.token to the client
//   std::optional<pylon::Session> s = store.validate(token);  // on every request
//   store.revoke(token);                                      // sign out
//
// Error model: every failure of storage, and every invalid argument, throws pylon::Error, which
// carries an ErrorCode. "Not found" is never an error: it is an empty optional, `false` or 0.
// No message ever contains a raw token or a password.
#ifndef PYLON_SESSION_BACKEND_HPP_
#define PYLON_SESSION_BACKEND_HPP_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

// The version and the export macro. CMakeLists.txt reads the version from here: the one place
// it is written.
// The version of the header. pylon::version() returns the library's, which differs only when an
// application is built against one release and runs with the shared library of another.
#define PYLON_SESSIONS_VERSION_MAJOR 0
#define PYLON_SESSIONS_VERSION_MINOR 1
#define PYLON_SESSIONS_VERSION_PATCH 0
#define PYLON_SESSIONS_VERSION_STRING "0.1.0"
// One number for comparisons: 10000 * major + 100 * minor + patch (0.1.0 is 100).
#define PYLON_SESSIONS_VERSION                                                 \
  (PYLON_SESSIONS_VERSION_MAJOR * 10000 + PYLON_SESSIONS_VERSION_MINOR * 100 + \
   PYLON_SESSIONS_VERSION_PATCH)

// PYLON_API marks what the library exports: the public API of session_backend.hpp and nothing
// else. The library is compiled with hidden visibility, so everything in pylon::detail stays
// inside a shared build. Builds define PYLON_SHARED when the library is a DLL or shared object
// (CMake does, for BUILD_SHARED_LIBS=ON), and PYLON_BUILDING_LIBRARY while compiling it.
#if defined(_WIN32) && defined(PYLON_SHARED)
#if defined(PYLON_BUILDING_LIBRARY)
#define PYLON_API __declspec(dllexport)
#else
#define PYLON_API __declspec(dllimport)
#endif
#elif defined(__GNUC__) || defined(__clang__)
#define PYLON_API __attribute__((visibility("default")))
#else
#define PYLON_API
#endif
// PYLON_HIDDEN keeps a class nested in an exported one (SessionStore::Impl) inside the library.
#if (defined(__GNUC__) || defined(__clang__)) && !defined(_WIN32)
#define PYLON_HIDDEN __attribute__((visibility("hidden")))
#else
#define PYLON_HIDDEN
#endif

namespace pylon {

// The version of the library this program runs with, "major.minor.patch"
// (PYLON_SESSIONS_VERSION_STRING is the header's).
PYLON_API const char* version() noexcept;

// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

// What went wrong, in terms a caller can act on.
//   Retry the same call later:  kBusy (another writer holds the lock past the busy timeout),
//                               kConnectionLost (the server went away; the next call reconnects).
//   Fix the environment first: kStorageFull, kReadOnly, kIo, kConfiguration.
//   Do not retry:               kInvalidArgument, kUnsupportedScheme, kCorruptDatabase,
//                               kSchemaTooNew, kInternal.
enum class ErrorCode {
  kInvalidArgument,    // a malformed URL, an oversized payload, a field storage cannot hold
  kUnsupportedScheme,  // DATABASE_URL scheme unknown, or not compiled into this build
  kCorruptDatabase,    // not an SQLite file, a damaged file, or a foreign `_pylon_sessions`
  kSchemaTooNew,       // the database was migrated by a newer pylon-sessions
  kBusy,               // lock contention outlasted the busy timeout
  kConnectionLost,     // the database server could not be reached or went away
  kStorageFull,        // the disk (or the server's disk) is full
  kReadOnly,           // the file, directory or server refuses writes
  kIo,                 // any other operating-system level failure (open, fsync, permissions)
  kInternal,           // a bug in pylon-sessions or a misuse of the C libraries beneath it
  // The server refused how it was asked: authentication failed, the database or role does not
  // exist, a setting it does not accept. Retrying the same call cannot cure it.
  kConfiguration,
};

// A stable, lowercase name for a code ("storage_full"); also used in Error messages.
PYLON_API const char* to_string(ErrorCode code) noexcept;

// The one exception type of the library. what() reads "[pylon.<code>] <message>", where the
// message names the object at fault (a path, a URL without its password, a migration number).
class PYLON_API Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message, std::string backend_detail = {});

  [[nodiscard]] ErrorCode code() const noexcept { return code_; }
  // What the backend itself said, for logs and bug reports: "SQLITE_FULL (13)", "SQLSTATE 53100".
  [[nodiscard]] const std::string& backend_detail() const noexcept { return backend_detail_; }

 private:
  ErrorCode code_;
  std::string backend_detail_;
};

// ------------------------------------------------------------------------------------------------
// Sessions and tokens
// ------------------------------------------------------------------------------------------------

// One stored session. Times are Unix seconds. A Session never holds its token: `id` is the
// lowercase hex SHA-256 of the token, safe to show on a "your devices" page and to revoke by.
struct Session {
  std::string id;                        // 64 lowercase hex characters; the primary key
  std::string user_id;                   // UTF-8 text without NUL bytes; empty: anonymous
  std::optional<std::string> tenant_id;  // UTF-8 text without NUL bytes
  std::int64_t created_at = 0;
  std::int64_t expires_at = 0;        // the effective expiry: min(absolute cap, last_seen + idle)
  std::int64_t last_seen_at = 0;      // the last activity written to storage (see touch_interval)
  std::optional<std::string> device;  // free text, e.g. a user agent; UTF-8 without NUL
  std::optional<std::string> ip;      // as the application saw it; UTF-8 without NUL
  std::string data;                   // opaque bytes, NUL and invalid UTF-8 included
  // The hard cap from creation (created_at + absolute_ttl). Sliding never moves expires_at past
  // it. Zero means "no cap beyond expires_at" (rows saved through a bare SessionBackend).
  std::int64_t absolute_expires_at = 0;
  // The identity provider's session id (OIDC `sid`), for back-channel logout; UTF-8 without NUL.
  std::optional<std::string> idp_session_id;
  // When the user last proved who they are: at create(), attach_user() and reauthenticate().
  // 0 for an anonymous session. SessionStore::authenticated_within() asks it.
  std::int64_t authenticated_at = 0;
  // This session's own idle timeout in seconds (CreateOptions::idle_timeout), which every slide
  // uses; nullopt: the store's StoreOptions::idle_timeout. 0 means no idle expiry.
  std::optional<std::int64_t> idle_timeout_seconds;

  // An anonymous session has no user (an empty user_id): SessionStore::create_anonymous().
  [[nodiscard]] bool is_anonymous() const noexcept { return user_id.empty(); }

  friend PYLON_API bool operator==(const Session& a, const Session& b);
  friend bool operator!=(const Session& a, const Session& b) { return !(a == b); }
};

// The most bytes each text field of a Session may hold, the same on every backend (PostgreSQL's
// index rows bound the indexed ones, and the others bound memory as max_data_bytes does). A
// longer value is refused with kInvalidArgument before anything is written; a stored row that
// holds one is skipped at start-up (StoreStats::skipped_rows).
inline constexpr std::size_t kMaxUserIdBytes = 512;
inline constexpr std::size_t kMaxTenantIdBytes = 512;
inline constexpr std::size_t kMaxIdpSessionIdBytes = 512;
inline constexpr std::size_t kMaxDeviceBytes = 1024;
inline constexpr std::size_t kMaxIpBytes = 256;

// The range of every time a session holds, in Unix seconds: 1970 to the end of year 9999. A
// stored row with a time outside it, or with times out of order (created_at after last_seen_at,
// or expires_at after absolute_expires_at when that is set), or with a negative
// idle_timeout_seconds, is skipped at start-up.
inline constexpr std::int64_t kMaxSessionTime = 253402300799;

// Length of a token: "pylon_" followed by 64 lowercase hex characters (32 random bytes).
inline constexpr std::size_t kTokenLength = 70;

// A fresh token from OpenSSL's CSPRNG (RAND_bytes). Throws Error(kInternal) if the CSPRNG fails.
PYLON_API std::string generate_token();

// True when `token` has exactly the form generate_token() produces. Checked before any hashing
// or lookup, so a garbage cookie costs a length check and never reaches storage.
PYLON_API bool is_well_formed_token(std::string_view token) noexcept;

// The session id of a token: lowercase hex SHA-256 of its bytes (any bytes are accepted here).
PYLON_API std::string session_id_for_token(std::string_view token);

// True when `id` is 64 lowercase hex characters.
PYLON_API bool is_well_formed_session_id(std::string_view id) noexcept;

// ------------------------------------------------------------------------------------------------
// Storage
// ------------------------------------------------------------------------------------------------

// What SessionStore tells StoreOptions::on_event, and what a backend reports of its own opening.
enum class SessionEventType {
  kCreated,           // create()
  kValidatedExpired,  // validate() of a token whose session exists but has expired
  kRevoked,           // revoke(), revoke_id(), revoke_user(), revoke_others(), logout, eviction
  kRotated,           // rotate(): session_id is the old id, replaced_by the new one
  // validate() of a token rotated away: a stolen cookie may be in use. user_id is the old
  // session's user ("" for a visitor's token replayed after attach_user()).
  kRotatedTokenReused,
  kPurged,        // purge_expired() or the reaper: `count` expired rows deleted
  kReaperFailed,  // the reaper's purge failed (`detail`: the error); retried next interval
  // The SQLite file (and its -wal, -shm) was readable by group or others, and was made 0600
  // before anything was read (`detail`: the path and the modes).
  kFilePermissionsTightened,
  // The store stopped following the change log (`detail`: why): other instances' writes are not
  // seen until kChangeFeedResumed. See StoreOptions::refuse_while_not_following.
  kChangeFeedLost,
  kChangeFeedResumed,  // the store follows the change log again, having caught up
  // attach_user(): a user signed in on an anonymous session. session_id is the old (anonymous)
  // id, replaced_by the new one, user_id the user attached.
  kUserAttached,
  // reauthenticate(): the user proved who they are again; session_id is the old id, replaced_by
  // the new one.
  kReauthenticated,
  kExtended,  // extend(): the idle expiry was slid on purpose
  // revoke_tenant(): every session of a tenant deleted (`count` of them, `detail` the tenant).
  // Each session also gets its own kRevoked.
  kTenantRevoked,
};

struct SessionEvent {
  SessionEventType type;
  std::string session_id;   // empty for kPurged and the events that carry a `detail`
  std::string user_id;      // empty for those too
  std::string replaced_by;  // kRotated and kRotatedTokenReused: the id of the successor
  std::size_t count = 1;    // how many sessions the event covers
  std::string detail;       // kReaperFailed, kFilePermissionsTightened, kChangeFeedLost: what;
                            // kTenantRevoked: the tenant

  // One named way to build each kind of event.
  static SessionEvent of_session(SessionEventType type, std::string session_id, std::string user_id,
                                 std::string replaced_by = {}) {
    return {type, std::move(session_id), std::move(user_id), std::move(replaced_by), 1, {}};
  }
  static SessionEvent purged(std::size_t count) {
    return {SessionEventType::kPurged, {}, {}, {}, count, {}};
  }
  static SessionEvent with_detail(SessionEventType type, std::string detail) {
    return {type, {}, {}, {}, 0, std::move(detail)};
  }
};

// Which rows SessionBackend::remove_matching() deletes: a row matches when it equals every field
// that is set. `except_id` keeps one row ("sign out the others"). A filter that sets tenant_id
// and none of id, user_id and idp_session_id matches the whole tenant (revoke_tenant()).
struct SessionFilter {
  std::optional<std::string> id;
  std::optional<std::string> user_id;
  std::optional<std::string> tenant_id;  // rows of exactly this tenant
  std::optional<std::string> idp_session_id;
  std::optional<std::string> except_id;
};

// A row a delete removed: which session, and whose. Deletes that match many rows return these,
// so that a caller can forget exactly what storage deleted, sessions other processes created
// included.
struct RemovedSession {
  std::string id;
  std::string user_id;

  friend bool operator==(const RemovedSession& a, const RemovedSession& b) {
    return a.id == b.id && a.user_id == b.user_id;
  }
};

// Which live sessions (expires_at > now) an administrator's listing returns
// (SessionStore::list_sessions, SessionBackend::list_page): those that match every field set,
// ordered by id. Paging is by keyset: each page holds the ids after `after`, so a session that
// exists from the first page to the last is listed exactly once, whatever is created or revoked
// meanwhile; one created or revoked during the listing may or may not appear.
struct SessionQuery {
  std::optional<std::string> tenant_id;
  std::optional<std::string> user_id;           // "" lists the anonymous sessions
  std::optional<std::string> device;            // exactly this device string
  std::optional<std::int64_t> created_since;    // created_at >= this
  std::optional<std::int64_t> created_before;   // created_at < this
  std::optional<std::int64_t> last_seen_since;  // last_seen_at >= this
  std::optional<std::int64_t> last_seen_before;
  // Where the page starts: the previous page's SessionPage::next_cursor; "" for the first page.
  std::string after;
  // At most this many sessions per page: 1 to kMaxPageSize.
  std::size_t limit = 100;
};

inline constexpr std::size_t kMaxPageSize = 10000;

struct SessionPage {
  std::vector<Session> sessions;  // by id
  // Pass as SessionQuery::after for the next page; "" when this page was the last. (A full page
  // always has a cursor, so the page after the last full one may be empty.)
  std::string next_cursor;
};

// How many live sessions a tenant has (SessionStore::count_by_tenant).
struct TenantCount {
  std::optional<std::string> tenant_id;  // nullopt: the sessions without a tenant
  std::size_t sessions = 0;
  std::size_t anonymous = 0;  // of those, how many have no user

  friend bool operator==(const TenantCount& a, const TenantCount& b) {
    return a.tenant_id == b.tenant_id && a.sessions == b.sessions && a.anonymous == b.anonymous;
  }
};

// What SessionBackend::authenticate() stored: the new row, and the sessions of its user the cap
// evicted in the same transaction.
struct Authentication {
  Session session;
  std::vector<RemovedSession> evicted;
};

// One write of a group commit (SessionBackend::write_group): the arguments of one of the calls
// below, which the write makes exactly as that call would.
struct InsertNewWrite {  // insert_new()
  std::vector<Session> sessions;
  std::size_t max_per_user = 0;
};
struct TouchWrite {  // touch()
  std::string id;
  std::int64_t last_seen_at = 0;
  std::int64_t expires_at = 0;
};
struct UpdateDataWrite {  // update_data()
  std::string id;
  std::string data;
};
struct RotateWrite {  // rotate()
  std::string old_id;
  std::string new_id;
  std::int64_t now = 0;
};
struct AuthenticateWrite {  // authenticate()
  std::string old_id;
  std::string new_id;
  std::string user_id;
  std::int64_t now = 0;
  std::size_t max_per_user = 0;
};
struct RemoveMatchingWrite {  // remove_matching()
  SessionFilter filter;
};
using SessionWrite = std::variant<InsertNewWrite, TouchWrite, UpdateDataWrite, RotateWrite,
                                  AuthenticateWrite, RemoveMatchingWrite>;

// What one write of a group did, as its own call would have returned it: `session` the row
// touch(), update_data(), rotate() or authenticate() returned (nullopt: no such row), `removed` the
// rows insert_new() or authenticate() evicted or remove_matching() deleted; or `error`, when this
// write failed and changed nothing.
struct SessionWriteOutcome {
  std::optional<Session> session;
  std::vector<RemovedSession> removed;
  std::exception_ptr error;
};

// A session id rotated away (SessionBackend::rotate), kept in storage until the session it
// belonged to would have expired, so that every store, and a store after a restart, recognises a
// replayed old token. It is not a session: it never validates and is never listed or counted.
struct RotatedId {
  std::string id;           // the old session id
  std::string replaced_by;  // the id of the session that took its place
  std::string user_id;
  std::optional<std::string> tenant_id;
  std::int64_t rotated_at = 0;
  std::int64_t expires_at = 0;  // the old session's hard cap; purges delete it after that

  friend bool operator==(const RotatedId& a, const RotatedId& b) {
    return a.id == b.id && a.replaced_by == b.replaced_by && a.user_id == b.user_id &&
           a.tenant_id == b.tenant_id && a.rotated_at == b.rotated_at &&
           a.expires_at == b.expires_at;
  }
};

// One entry of the change log (ChangeSource): storage changed what it holds for `id`, a session
// or a rotated-away id, at `position`. `session` and `rotated` are what storage held for that id
// when the entry was read (nullopt: nothing), not what the change wrote: an entry read late
// carries the newest state, and applying entries again is harmless.
struct SessionChange {
  std::int64_t position = 0;
  std::string id;
  std::optional<Session> session;
  std::optional<RotatedId> rotated;
};

struct ChangeBatch {
  std::vector<SessionChange> changes;  // by position
  // The log no longer holds positions up to this one (pruned): a reader whose last position is
  // older missed changes, and must reload every session instead.
  std::int64_t pruned_through = 0;
  // Every position up to this one was read, and those `changes` does not list need nothing
  // applied: they are the reader's own backend's writes (SessionBackend::write_group), which its
  // store applied itself. A reader skips them; they are not gaps. 0: nothing was skipped.
  std::int64_t skipped_through = 0;
};

// A reader of the change log that every write to `_pylon_sessions` and `_pylon_rotated_ids`
// appends to in its own transaction (migration 0004's triggers), on a connection of its own.
// SessionStore opens one per store and follows it, so that its cache follows what other stores
// and tools write to the same database. Used by one thread at a time; every call may throw Error
// (kConnectionLost, kBusy, ...), and the next call tries again (reconnecting if need be).
class PYLON_API ChangeSource {
 public:
  virtual ~ChangeSource() = default;
  // The newest position in the log (or, when every entry was pruned, the newest pruned).
  virtual std::int64_t position() = 0;
  // The entries after `after` (at most `limit`, by position), and those at the positions `also`
  // (gaps a reader saw: positions handed out but not yet committed), in one snapshot.
  virtual ChangeBatch read(std::int64_t after, const std::vector<std::int64_t>& also,
                           std::size_t limit) = 0;
  // Returns true once storage may have changed since the previous call (a notification, or
  // another connection's commit), false when `timeout` passes without a sign. A source that
  // cannot be notified waits `timeout` and then checks.
  virtual bool wait(std::chrono::milliseconds timeout) = 0;
  // Deletes the entries logged more than `keep` ago; returns how many.
  virtual std::size_t prune(std::chrono::seconds keep) = 0;

 protected:
  ChangeSource() = default;
  ChangeSource(const ChangeSource&) = default;
  ChangeSource& operator=(const ChangeSource&) = default;
  ChangeSource(ChangeSource&&) = default;
  ChangeSource& operator=(ChangeSource&&) = default;
};

// Synchronous storage of sessions in the table `_pylon_sessions`. Every call is one statement
// or one transaction; every failure throws Error and leaves storage as it was before the call.
// A backend serialises its own calls, so it may be shared between threads, but one caller's
// calls are not grouped into transactions with another's.
//
// Implement this interface to put sessions somewhere else (Redis, DynamoDB, ...);
// SessionStore works with any implementation that keeps this contract.
class PYLON_API SessionBackend {
 public:
  virtual ~SessionBackend() = default;

  // Every stored row, expired ones included, in no particular order.
  virtual std::vector<Session> load_all() = 0;
  // Calls `visit` with every row load_all() would return, one at a time, without holding them
  // all: SessionStore loads its cache through it. The Session passed is valid only during the
  // call, and `visit` must not call this backend. An exception from `visit` ends the load and
  // propagates. The default implementation calls load_all(); both built-in backends stream.
  virtual void load_each(const std::function<void(const Session&)>& visit);
  // The row with this id, if storage holds one. SessionStore asks it for the outcome of a write
  // whose acknowledgement was lost (kConnectionLost: it may or may not have been applied). The
  // default scans load_each(); a backend that can look the id up directly overrides it.
  virtual std::optional<Session> load_one(std::string_view id);
  // Inserts the session, or replaces every field of the row with the same id. Durable on return.
  virtual void save(const Session& session) = 0;
  // Upserts every session as save() does, in one transaction: all of them are durable on
  // return, or none is stored and it throws. SessionStore hands it the creates of concurrent
  // callers, so that they share one commit and one fsync (group commit). An id repeated in the
  // batch ends as its last row, as sequential save() calls would leave it.
  virtual void save_batch(const std::vector<Session>& sessions) = 0;
  // Deletes the row with this id. True if a row was removed. Durable on return.
  virtual bool remove(std::string_view id) = 0;
  // Deletes every row of the user; returns how many.
  virtual std::size_t remove_user(std::string_view user_id) = 0;
  // Deletes every row with expires_at <= now, and every RotatedId with expires_at <= now, in one
  // transaction; returns how many sessions it deleted.
  virtual std::size_t remove_expired(std::int64_t now) = 0;

  // Deletes, in one statement, every row matching every field `filter` sets; returns the rows
  // it deleted. A filter that sets none of id, user_id, idp_session_id and tenant_id is refused
  // with kInvalidArgument: it would match everyone.
  virtual std::vector<RemovedSession> remove_matching(const SessionFilter& filter) = 0;
  // In one transaction, deletes the row `old_id` and inserts `replacement`. Returns false,
  // having written nothing, when there is no row `old_id`. With replacement.id == old_id it is
  // an update that never re-inserts a row deleted meanwhile. (SessionStore rotates with rotate()
  // and updates with touch() and update_data(), which never copy a caller's fields over storage.)
  virtual bool replace(std::string_view old_id, const Session& replacement) = 0;
  // Deletes at most `limit` rows with expires_at <= now, in one statement; returns how many.
  // Short statements keep a purge of millions of rows from stalling other writers.
  virtual std::size_t remove_expired_batch(std::int64_t now, std::size_t limit) = 0;

  // ---- Writes that change exactly what they mean to. Several stores, in several processes, may
  // share one database: each of these reads what it needs from storage inside its own statement
  // or transaction, so no write carries a caller's stale copy of a row over another's change.

  // New sessions, in one transaction (a group commit of creates). With max_per_user > 0, the
  // same transaction then deletes, for each user of `sessions` (anonymous ones have no cap),
  // that user's oldest rows in the
  // new session's tenant (rows whose tenant_id equals it, or is null when it is null) beyond
  // max_per_user: oldest is the smallest created_at, then the earliest inserted. It is atomic
  // against every other writer, other processes included, so no interleaving of creates ever
  // leaves more than max_per_user rows. Returns the rows it deleted. A failure throws and leaves
  // storage as it was: nothing inserted, nothing evicted.
  virtual std::vector<RemovedSession> insert_new(const std::vector<Session>& sessions,
                                                 std::size_t max_per_user) = 0;
  // The idle slide: sets last_seen_at and expires_at of the row `id`, each to the larger of its
  // stored value and the one given (so two stores sliding in either order never move a session's
  // expiry back), and no other column. Returns every column of the row as storage then holds
  // it; nullopt, having written nothing, if there is no row `id`. Never inserts.
  virtual std::optional<Session> touch(std::string_view id, std::int64_t last_seen_at,
                                       std::int64_t expires_at) = 0;
  // Sets `data` of the row `id`, and no other column. Returns the row as storage then holds it;
  // nullopt, having written nothing, if there is no row `id`. Never inserts.
  virtual std::optional<Session> update_data(std::string_view id, std::string_view data) = 0;
  // Token rotation, in one transaction: reads the row `old_id`; if there is none, or it expired
  // (expires_at <= now), returns nullopt having written nothing. Otherwise inserts a copy of that
  // row, every column as storage holds it, under `new_id` (inserted now, so the newest for
  // max_per_user's order), deletes `old_id`, and stores the RotatedId {old_id, new_id, its user
  // and tenant, rotated_at = now, expires_at = the row's absolute_expires_at, or its expires_at
  // when that is 0}. Returns the new row as stored.
  virtual std::optional<Session> rotate(std::string_view old_id, std::string_view new_id,
                                        std::int64_t now) = 0;
  // Signing in, in one transaction: rotate() (same checks, same RotatedId), whose new row also
  // takes `user_id` and authenticated_at = now. Refused with kInvalidArgument, having written
  // nothing, when the row `old_id` belongs to another user (only an anonymous session, or one of
  // `user_id` itself, may be signed in to). With max_per_user > 0 it then evicts, as insert_new()
  // does, the user's oldest other rows in the new row's tenant beyond max_per_user (never the new
  // row). nullopt, having written nothing, when there is no live row `old_id`.
  virtual std::optional<Authentication> authenticate(std::string_view old_id,
                                                     std::string_view new_id,
                                                     std::string_view user_id, std::int64_t now,
                                                     std::size_t max_per_user) = 0;
  // One page of the live sessions (expires_at > now) that `query` matches, ordered by id, the
  // ids after query.after, at most query.limit of them. Reads storage, so sessions every other
  // store created are listed.
  virtual std::vector<Session> list_page(const SessionQuery& query, std::int64_t now) = 0;
  // The live sessions (expires_at > now) of each tenant that has one, ordered by tenant in byte
  // order (the sessions without a tenant first).
  virtual std::vector<TenantCount> count_by_tenant(std::int64_t now) = 0;
  // Group commit: every write of `writes`, in order, each as its own call would make it, committed
  // together (the built-in backends: one transaction, so one commit and one fsync for all). A
  // write that fails on its own (an argument refused, a sign-in to another user's session)
  // changes nothing, and its outcome holds the error; the others still commit. A failure of the
  // whole (the commit, the connection, a full disk) throws, and then none of them is stored, or,
  // with kConnectionLost, it is unknown whether all of them were. Returns one outcome per write,
  // in order. SessionStore hands it the writes of concurrent callers, so that they share a commit.
  // The default makes consecutive creates with the same cap one insert_new() call (each eviction
  // then reported by the last create of its user in that run, and, should the call fail other
  // than in doubt, each create made alone), and every other write with its own call, one commit
  // each; it reports each failure in that write's outcome (kConnectionLost too: that write, and
  // only it, is in doubt).
  virtual std::vector<SessionWriteOutcome> write_group(std::vector<SessionWrite> writes);
  // Calls `visit` with every stored RotatedId, expired ones included, one at a time, as
  // load_each() does for sessions. remove_expired() deletes those with expires_at <= now, and
  // remove_expired_rotated() does in batches.
  virtual void load_rotated_each(const std::function<void(const RotatedId&)>& visit) = 0;
  // Deletes at most `limit` RotatedIds with expires_at <= now, in one statement; returns how many.
  virtual std::size_t remove_expired_rotated(std::int64_t now, std::size_t limit) = 0;

  // A reader of this database's change log on a new connection, for a store to follow what
  // others write; nullptr when no one else can write this storage (an in-memory database), and by
  // default, so a custom backend without a change log serves one process (documented in the
  // README's "Several instances").
  [[nodiscard]] virtual std::unique_ptr<ChangeSource> open_change_source() { return nullptr; }

  // The URL or path this backend was opened with, its password hidden. For messages and tools.
  [[nodiscard]] virtual std::string describe() const = 0;
  // What the backend did on its own while opening that its user should hear of (the SQLite
  // backend tightening a file's permissions), as events; SessionStore delivers them to
  // StoreOptions::on_event when it is constructed. The default has none.
  [[nodiscard]] virtual std::vector<SessionEvent> opening_events() const { return {}; }

 protected:
  SessionBackend() = default;
  SessionBackend(const SessionBackend&) = default;
  SessionBackend& operator=(const SessionBackend&) = default;
  SessionBackend(SessionBackend&&) = default;
  SessionBackend& operator=(SessionBackend&&) = default;
};

// How much an acknowledged write survives, for the SQLite backend (the `synchronous` pragma in
// WAL mode). kFull: a commit is fsynced before save() returns; it survives a process crash and
// a power loss. kNormal: a commit survives a process crash, but the last commits before a power
// loss or OS crash may be rolled back (never corrupted); about one fsync per checkpoint instead
// of one per commit.
enum class SqliteSync { kFull, kNormal };

struct SqliteOptions {
  SqliteSync synchronous = SqliteSync::kFull;
  // How long a write waits for another connection's lock before failing with kBusy. 0 to 1 hour.
  std::chrono::milliseconds busy_timeout{5000};
  // false (the default): an existing database file, -wal or -shm that another user owns, or that
  // group or others may write, is refused (kIo), since whoever can write it can insert a session
  // and log in as anyone; one that group or others may only read is made 0600 before anything is
  // read (a kFilePermissionsTightened event), since it holds every session's metadata and data.
  // true: the files are used as they are, for a deployment that shares one file between users
  // (a group-writable file and directory) and accepts that every member of that group can read
  // and forge sessions. New files are created 0600 either way. URL parameter:
  // allow_shared_file=true.
  bool allow_shared_file = false;
};

// Opens (creating it with mode 0600 if missing) an SQLite database file and brings its schema
// up to date. `path` is a file path, or ":memory:" for a private in-memory database.
// Throws Error: kCorruptDatabase for a file that is not an SQLite database or whose
// `_pylon_sessions` is not ours, kSchemaTooNew, kIo / kReadOnly for paths that cannot be used.
// A file that is refused is left byte for byte as it was.
PYLON_API std::unique_ptr<SessionBackend> open_sqlite_backend(const std::string& path,
                                                              const SqliteOptions& options = {});

struct PostgresOptions {
  // The longest a call waits: for its turn on the connection (another call may hold it), to
  // reconnect, and for the server's reply (for a load: between two arrivals of rows). Past it
  // the call fails, with kBusy if it had sent nothing yet and kConnectionLost otherwise (the
  // statement may or may not have been applied), and the next call starts on a new connection.
  // It bounds what a frozen server or a network that drops packets silently can cost a caller;
  // libpq's connect_timeout (5 s unless the URL or PGCONNECT_TIMEOUT sets it) also still bounds
  // each connection attempt. 1 ms to 1 hour.
  std::chrono::milliseconds deadline{6000};
};

// Opens a PostgreSQL database (a postgres:// or postgresql:// URL, or a libpq keyword/value
// string) and brings its schema up to date. open_backend() calls it with the default options.
// Throws Error(kUnsupportedScheme) in a build without libpq, Error(kInvalidArgument) for a
// malformed URL or a deadline that is not positive, and kConnectionLost when no server answers.
PYLON_API std::unique_ptr<SessionBackend> open_postgres_backend(
    const std::string& url, const PostgresOptions& options = {});

// Opens the backend a DATABASE_URL names:
//   ""                             the file sessions.db in the working directory
//   sessions.db, /var/lib/app.db   a bare file path
//   sqlite://relative/path.db      a path relative to the working directory
//   sqlite:///absolute/path.db     an absolute path
//   sqlite::memory:                a private in-memory database (nothing survives a restart)
//   postgres://... postgresql://   PostgreSQL, when this build has libpq support
// SQLite URLs take query parameters `synchronous=full|normal` and `busy_timeout=<ms>`.
// Throws Error(kUnsupportedScheme) for other schemes (the message lists the supported ones),
// Error(kInvalidArgument) for a malformed URL, and whatever opening the backend throws.
PYLON_API std::unique_ptr<SessionBackend> open_backend(const std::string& database_url);

// The value of the environment variable DATABASE_URL, or "" when it is unset.
PYLON_API std::string database_url_from_env();

// `url` with any password replaced by "***" ("postgres://app:***@db/sessions"). Used by every
// message that shows a URL.
PYLON_API std::string redact_url(std::string_view url);

// ------------------------------------------------------------------------------------------------
// The store
// ------------------------------------------------------------------------------------------------

// The current time in Unix seconds from the system clock: StoreOptions::clock's default.
PYLON_API std::int64_t system_clock_now();

// What SessionStore::stats() reports. Counters start at 0 when the store is constructed.
struct StoreStats {
  std::size_t sessions = 0;          // in the cache, expired ones not yet purged included
  std::size_t users = 0;             // users with at least one session in the cache
  std::uint64_t cache_hits = 0;      // validate()/find() calls that returned a session
  std::uint64_t cache_misses = 0;    // validate()/find() calls that returned none
  std::uint64_t writes = 0;          // storage writes that succeeded
  std::uint64_t write_failures = 0;  // storage writes that threw
  std::string last_error;            // what() of the last failed write; "" if none
  // Rows found at start-up that no token can match or that a write would refuse (a malformed
  // id, text that is not UTF-8 or holds NUL, times out of range): left in storage, never cached.
  std::size_t skipped_rows = 0;
  std::uint64_t reaper_failures = 0;  // reaper runs that failed (each also a kReaperFailed event)
  std::uint64_t miss_lookups = 0;     // storage reads made for tokens the cache did not hold
  std::uint64_t miss_lookups_refused = 0;  // misses refused without a read: over the bound
  std::uint64_t miss_lookup_failures = 0;  // reads for misses that failed (the token refused)
  // Whether this store follows the change log now (false before its first read, while storage
  // is unreachable, and for a backend without a change log, such as an in-memory database).
  bool following_changes = false;
  std::uint64_t changes_applied = 0;      // change log entries applied to the cache
  std::uint64_t change_feed_losses = 0;   // times the store stopped following (kChangeFeedLost)
  std::uint64_t change_feed_reloads = 0;  // full reloads: the store had fallen behind the log
};

// The largest values StoreOptions accepts for its counts (see StoreOptions).
inline constexpr std::int64_t kMaxSessionsPerUser = 1000000;
inline constexpr std::int64_t kMaxDataBytes = std::int64_t{64} * 1024 * 1024;
inline constexpr std::int64_t kMaxReaperBatchSize = 1000000;
inline constexpr std::int64_t kMaxMissLookupsPerSecond = 1000000;

// Every option has a range, given beside it; the constructor refuses a value outside it with
// kInvalidArgument naming the option, its value and its range.
struct StoreOptions {
  // Hard lifetime from creation, whatever the activity: bounds how long a stolen token is useful.
  // 1 second to 100 years.
  std::chrono::seconds absolute_ttl{std::chrono::hours(24)};
  // A session unused this long expires (0 = no idle expiry): ends sessions left open on a
  // shared or lost device. Slides forward on validate(). 0 to 100 years.
  std::chrono::seconds idle_timeout{std::chrono::hours(1)};
  // validate() writes a slide at most once per interval per session, so reads stay off the disk.
  // The idle expiry a user sees is therefore between idle_timeout - touch_interval and
  // idle_timeout after their last request. 0 to 100 years.
  std::chrono::seconds touch_interval{std::chrono::seconds(60)};
  // 0 = unlimited. When a user is at the cap, create() evicts their oldest sessions in the same
  // storage transaction. Counted per user within the new session's tenant. 0 to
  // kMaxSessionsPerUser.
  std::size_t max_sessions_per_user = 0;
  // create() and update_data() refuse a larger `data` payload with kInvalidArgument and store
  // nothing. 0 to kMaxDataBytes (64 MiB).
  std::size_t max_data_bytes = std::size_t{64} * 1024;
  // Unix seconds. Injectable, so tests move time instead of sleeping.
  std::function<std::int64_t()> clock = system_clock_now;
  // Scopes the store to one tenant: create() stamps it on every session, and no call returns,
  // lists or revokes a session of another tenant (purges still delete every tenant's expired
  // rows). Unset: every tenant.
  std::optional<std::string> tenant_id;
  // 0 = no reaper. Otherwise a background thread purges expired sessions this often, in
  // statements of at most reaper_batch_size rows, and stops when the store is destroyed.
  // reaper_interval: 0 to 365 days; reaper_batch_size, when the reaper runs: 1 to
  // kMaxReaperBatchSize.
  std::chrono::seconds reaper_interval{0};
  std::size_t reaper_batch_size = 1000;
  // After rotate(), the old token still validates, as the new session, for this long, and
  // presenting it raises no kRotatedTokenReused: requests a client sent before it received the
  // new token are not logged out. After it, the old token is refused and its use reported.
  // 0 = no grace: the old token is refused at once. 0 to 1 day.
  std::chrono::seconds rotation_grace{0};
  // A well-formed token (or id) the cache does not hold may belong to a session another instance
  // created: validate() and find() then read that one row from storage (a point read by primary
  // key) before refusing it, and cache it when it is live. At most this many such reads a second
  // (a burst of up to one second's worth): past that, a miss is refused without reading storage,
  // and counted (StoreStats::miss_lookups_refused), so a flood of random tokens cannot overload
  // the database. 0 = never read storage on a miss. 0 to kMaxMissLookupsPerSecond.
  std::size_t miss_lookups_per_second = 100;
  // Several stores on one database (other processes, sessionctl) follow each other through its
  // change log (SessionBackend::open_change_source): each store applies what the others wrote to
  // its cache. This is the longest a change may go unseen while storage is reachable: PostgreSQL
  // wakes the store at once (LISTEN/NOTIFY) and this interval only paces a safety re-read; SQLite
  // has no notifications, so the file's data_version is checked every interval. 0 = checked by
  // validate() and find() themselves before every lookup (exact, but each call then reads
  // storage's state first). 0 to 60 seconds.
  std::chrono::milliseconds change_check_interval{100};
  // While the store cannot read the change log (the database unreachable, the listening
  // connection lost and not yet back), it serves its cache as last known (false, the default:
  // sessions revoked elsewhere meanwhile may still validate here until it has caught up) or
  // refuses every token and id (true: fail closed). Either way StoreStats::following_changes is
  // false and a kChangeFeedLost event was sent.
  bool refuse_while_not_following = false;
  // How long the change log keeps an entry. A store that could not read the log for longer than
  // this (it was unreachable, or stopped) reloads every session when it is back. Pruned by every
  // store's change feed. 1 minute to 30 days.
  std::chrono::seconds change_log_retention{std::chrono::minutes(10)};
  // The longest lifetimes a session may be given on its own (CreateOptions::absolute_ttl and
  // idle_timeout, "remember me"), or the store's absolute_ttl and idle_timeout when those are
  // longer. The defaults are 400 days, the longest a browser keeps a cookie. 1 second to 100
  // years.
  std::chrono::seconds max_absolute_ttl{std::chrono::hours(24 * 400)};
  std::chrono::seconds max_idle_timeout{std::chrono::hours(24 * 400)};
  // Told of every event, on the thread that caused it, after storage has it. It must not call
  // back into the store; what it throws is caught and ignored. Events never carry a token.
  std::function<void(const SessionEvent&)> on_event;
};

struct CreateOptions {
  // This session's own lifetimes, instead of the store's absolute_ttl and idle_timeout: a "keep
  // me signed in" session next to short default ones. absolute_ttl from 1 second to
  // StoreOptions::max_absolute_ttl; idle_timeout from 1 second to StoreOptions::max_idle_timeout
  // (or to the store's own absolute_ttl / idle_timeout when longer); a longer value is refused
  // with kInvalidArgument, not shortened. Stored with the session, so every slide, a restart and
  // a rotation keep them. Set both for a long session: the store's
  // idle_timeout would otherwise still end it when unused.
  std::optional<std::chrono::seconds> absolute_ttl;
  std::optional<std::chrono::seconds> idle_timeout;
  std::optional<std::string> tenant_id;
  std::optional<std::string> idp_session_id;  // OIDC `sid`, for logout_by_claims()
  std::optional<std::string> device;
  std::optional<std::string> ip;
  std::string data;
};

struct NewSession {
  std::string token;  // give this to the client, once; it is stored nowhere
  Session session;
};

// An in-process cache of every session, restored from a SessionBackend at construction, so that
// reads never touch storage and a restart logs nobody out.
//
// Thread safety: all member functions may be called concurrently from any number of threads.
// Consistency: writes go to storage first and to the cache only once storage has them. A write
// that throws leaves the cache exactly as storage is. A revoke whose write fails fails closed: it
// throws, the session is denied in this process at once, and the delete is retried before the
// store's next write until storage has it.
// Expired sessions are never returned by any call.
class PYLON_API SessionStore {
 public:
  // Loads every row of `backend`. Throws Error if that fails, or if `options` are invalid
  // (a negative duration, an absolute_ttl of 0, an empty clock).
  explicit SessionStore(std::unique_ptr<SessionBackend> backend, StoreOptions options = {});
  // open_backend(database_url), then the constructor above.
  static SessionStore open(const std::string& database_url, StoreOptions options = {});

  // A moved-from store may only be destroyed or assigned to.
  SessionStore(SessionStore&& other) noexcept;
  SessionStore& operator=(SessionStore&& other) noexcept;
  SessionStore(const SessionStore&) = delete;
  SessionStore& operator=(const SessionStore&) = delete;
  // Makes a last attempt at deletes still pending from failed revokes; never throws.
  ~SessionStore();

  // A new session for `user_id` (non-empty; see create_anonymous()), stored before this returns.
  // Evicts the user's oldest sessions first when max_sessions_per_user is reached. Throws
  // kInvalidArgument (empty user, NUL in a text field, data over max_data_bytes) or a storage
  // error; then nothing was stored and the cache is unchanged.
  NewSession create(std::string_view user_id, CreateOptions options = {});

  // A session without a user (Session::is_anonymous), for a visitor's state before login: a
  // cart, a language, a CSRF secret. It validates, holds data, slides and expires like any other
  // session; no user lists it and it counts against no cap. authenticated_at is 0. At login, call
  // attach_user() with its token. Throws as create() does.
  NewSession create_anonymous(CreateOptions options = {});

  // Signs `user_id` (non-empty) in on the session of `token`: a new token for it, whose session
  // has that user and authenticated_at = now, and the old token stops working, in one storage
  // transaction (the fixation defence: the token a visitor held before login never carries a
  // signed-in session). The data, tenant, device, lifetimes and expiry stay. The session must be
  // anonymous or already the same user's; another user's session is refused with
  // kInvalidArgument. max_sessions_per_user applies: the user's oldest other sessions are evicted
  // in the same transaction. The old token then behaves as a rotated-away one (rotation_grace,
  // kRotatedTokenReused). nullopt if `token` has no live session.
  std::optional<NewSession> attach_user(std::string_view token, std::string_view user_id);

  // The user of the session of `token` proved who they are again (a password prompt before a
  // sensitive operation): authenticated_at = now, and the token is rotated, as on every privilege
  // change, in one storage transaction. An anonymous session is refused with kInvalidArgument
  // (use attach_user()). nullopt if `token` has no live session.
  std::optional<NewSession> reauthenticate(std::string_view token);

  // Whether the session's user proved who they are within the last `window` (by the store's
  // clock): authenticated_at + window >= now. False for an anonymous session. For pages such as
  // "confirm your password to change your e-mail" (OWASP ASVS re-authentication).
  bool authenticated_within(const Session& session, std::chrono::seconds window) const;

  // Slides the idle expiry of the session of `token` to now + its idle timeout, never past its
  // absolute cap, and writes it at once (not once per touch_interval, as validate() does): for
  // an "are you still there?" prompt the user answered. Returns the session as storage then
  // holds it; nullopt if `token` has no live session.
  std::optional<Session> extend(std::string_view token);

  // The live session of `token`, or nullopt (malformed, unknown, revoked or expired token).
  // Slides the idle expiry; the slide is written at most once per touch_interval, and a failed
  // slide write throws Error (the session stays as storage has it). A token the cache does not
  // hold costs one bounded point read of storage (StoreOptions::miss_lookups_per_second); a read
  // that fails (storage unreachable or locked) refuses the token, which could not be checked, and
  // is counted (StoreStats::miss_lookup_failures).
  std::optional<Session> validate(std::string_view token);

  // The live session with this id, without sliding its expiry. An id the cache does not hold
  // costs one bounded point read of storage, as in validate().
  std::optional<Session> find(std::string_view id) const;

  // Deletes the session of `token` / with this id from storage. False if there was none.
  // Throws on a storage failure, after denying the session in this process (fail closed).
  bool revoke(std::string_view token);
  bool revoke_id(std::string_view id);

  // Deletes every session of the user from storage ("sign out everywhere"), including sessions
  // other processes created; returns how many rows storage removed. Fails closed like revoke().
  std::size_t revoke_user(std::string_view user_id);

  // The user's live sessions, oldest first.
  std::vector<Session> list_user(std::string_view user_id) const;

  // Deletes every expired session from storage in one statement; returns how many rows went.
  std::size_t purge_expired();

  // Number of sessions in the cache, expired ones not yet purged included.
  std::size_t size() const;

  // A new token for the session of `token` (same user, tenant, device, data, created_at and
  // expiry, as storage holds them); the old token stops working in the same storage transaction
  // (after StoreOptions::rotation_grace, when that is set). Use it at login and on every
  // privilege change, against session fixation. nullopt if `token` has no live session.
  // Storage keeps the old id until the session would have expired, so presenting the old token
  // afterwards raises kRotatedTokenReused in this store, after a restart, and in every store
  // started on the same database since.
  std::optional<NewSession> rotate(std::string_view token);

  // Signs out every other session of the token's user (in the store's tenant scope), in one
  // statement; returns how many rows went. 0 if `token` has no live session.
  std::size_t revoke_others(std::string_view token);

  // Replaces the session's data, write-through; max_data_bytes applies. Last writer wins: each
  // update is whole and atomic, so concurrent updates never mix, and the later one stays.
  // nullopt if `token` has no live session.
  std::optional<Session> update_data(std::string_view token, std::string data);

  // OIDC back-channel logout: revokes the sessions of the identity provider's session `sid`
  // when given, else every session of `sub`. Unknown ids revoke nothing and are not errors.
  // Throws kInvalidArgument when both are missing.
  std::size_t logout_by_claims(std::optional<std::string_view> sid,
                               std::optional<std::string_view> sub);
  // The same, for the sessions of one tenant only: an application that serves several identity
  // providers stamps each provider's sessions with a tenant (CreateOptions::tenant_id) and passes
  // it here, so that one provider's logout never reaches another's sessions, even when their
  // `sid` or `sub` values collide. On a store scoped to another tenant it revokes nothing.
  std::size_t logout_by_claims(std::optional<std::string_view> sid,
                               std::optional<std::string_view> sub, std::string_view tenant_id);

  // list_user() and revoke_user() for one tenant of the user.
  std::vector<Session> list_user(std::string_view user_id, std::string_view tenant_id) const;
  std::size_t revoke_user(std::string_view user_id, std::string_view tenant_id);

  // ---- Administration: these read and write storage, not the cache, so their answers include
  // the sessions every other store created. A store scoped to a tenant sees only its own.

  // One page of the live sessions `query` matches, by id (see SessionQuery for the paging
  // guarantee). Throws kInvalidArgument for a limit outside 1..kMaxPageSize, a cursor that is not
  // a session id, or a text field storage could not hold.
  SessionPage list_sessions(const SessionQuery& query) const;

  // The live sessions of each tenant (a store scoped to a tenant: of its own), by tenant.
  std::vector<TenantCount> count_by_tenant() const;

  // Deletes every session of the tenant in one statement; returns how many rows storage removed.
  // Fails closed like revoke_user(). A store scoped to another tenant revokes nothing.
  std::size_t revoke_tenant(std::string_view tenant_id);

  StoreStats stats() const;

 private:
  class PYLON_HIDDEN Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pylon

#endif  // PYLON_SESSION_BACKEND_HPP_

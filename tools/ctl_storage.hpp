// sessionctl: read-only access to a database, and the ledger `copy` keeps at its destination.
//
// The library's SessionBackend opens a database read-write (creating a missing SQLite file and
// migrating its schema), and SessionStore reads every row at construction. An inspection must
// do neither: it must not create a file for a mistyped path, it must work on a read-only or
// immutable file, and it must ask storage for what it shows. So the inspection commands read
// through an Inspector: raw SQLite opened with SQLITE_OPEN_READONLY, or a libpq connection whose
// transactions are read-only, with SQL that filters, counts and pages in storage. Writes go
// through the library (open_backend), never through this file, except the copy ledger.
#ifndef PYLON_TOOLS_CTL_STORAGE_HPP_
#define PYLON_TOOLS_CTL_STORAGE_HPP_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "session_backend.hpp"

namespace sessionctl {

// A DATABASE_URL, read as the library reads it.
struct Target {
  std::string url;    // as given (may hold a password: never print it)
  std::string shown;  // redact_url(url)
  bool is_postgres = false;
  bool is_memory = false;   // sqlite::memory:
  std::string sqlite_path;  // the file, for SQLite
};

// Throws pylon::Error for a URL the library would refuse (kInvalidArgument, kUnsupportedScheme).
Target resolve_target(const std::string& url);

// Throws Failure(kExitStorage) unless the SQLite file of `target` exists and is a regular file:
// sessionctl never creates a database by accident. PostgreSQL targets pass.
void require_existing_database(const Target& target);

// The schema versions this build's migrations reach, per dialect, and their names.
struct MigrationInfo {
  int version;
  const char* name;
};
const std::vector<MigrationInfo>& known_migrations(bool postgres);

struct ListFilter {
  std::optional<std::string> user_id;
  std::optional<std::string> tenant_id;
  bool include_expired = false;
  std::int64_t now = 0;
  std::optional<std::size_t> limit;
};

struct Counts {
  std::uint64_t live = 0;
  std::uint64_t expired = 0;
  std::uint64_t users = 0;      // with at least one live session
  std::uint64_t anonymous = 0;  // live sessions without a user
  std::uint64_t tenants = 0;    // distinct non-null tenants of live sessions
  std::uint64_t rotated = 0;    // rotated-away ids still kept
};

// One line of `check`'s report.
struct Finding {
  std::string check;  // "integrity", "schema version", "table shape", "file mode", ...
  bool ok = true;
  std::string detail;  // what was found
};

// Read-only access. Every call runs SQL that filters, counts or pages in storage: nothing here
// reads every row into memory. The administration calls the library offers (listing live
// sessions page by page, counts per tenant, revoking a tenant) are not here: sessionctl makes
// them through the library's SessionBackend, so that there is one implementation of each.
class Inspector {
 public:
  virtual ~Inspector() = default;
  [[nodiscard]] virtual std::string describe() const = 0;
  // 0 when the database has no migrations table.
  virtual int schema_version() = 0;
  // Sessions matching `filter`, oldest first (created_at, then id), streamed: `visit` sees one
  // row at a time and may return false to stop.
  virtual void each_session(const ListFilter& filter,
                            const std::function<bool(const pylon::Session&)>& visit) = 0;
  // The rows whose id starts with `prefix` (a whole id, or at least 8 hex characters); at most 2.
  virtual std::vector<pylon::Session> sessions_by_prefix(std::string_view prefix) = 0;
  virtual std::optional<pylon::RotatedId> rotated(std::string_view id) = 0;
  virtual Counts counts(std::int64_t now) = 0;
  // The checks of `sessionctl check`, appended to `out`.
  virtual void check(std::vector<Finding>& out) = 0;

 protected:
  Inspector() = default;
  Inspector(const Inspector&) = default;
  Inspector& operator=(const Inspector&) = default;
  Inspector(Inspector&&) = default;
  Inspector& operator=(Inspector&&) = default;
};

// Opens `target` read-only. A missing SQLite file, an in-memory URL, a file without a
// `_pylon_sessions` table or with a newer schema: Failure(kExitStorage), saying which.
std::unique_ptr<Inspector> open_inspector(const Target& target);

// What the destination of a copy knows of one session id.
struct DestinationState {
  bool present = false;           // a row with this id exists
  std::int64_t last_seen_at = 0;  // when present
  std::string data;               // when present
  bool rotated = false;           // the id was rotated away there
  // -1: no copy ever recorded it; 1: recorded by this copy or by one that finished;
  // 0: recorded by a copy that never finished (killed between its record and its insert?).
  int ledger = -1;
};

// The ledger a copy keeps at its destination: `_pylon_copied_ids` holds every session id a
// copy put there or found there, with the run that recorded it, kept until the session's hard
// cap passes; `_pylon_copy_runs` holds one row per run, with the time it finished. An id in
// the ledger but no longer in `_pylon_sessions` was revoked, rotated or purged at the
// destination, so no later copy inserts it again. A run records its ids (one transaction)
// before it inserts their rows (another), so a run killed in between has recorded ids that it
// never inserted: those are told apart by their unfinished run, and are not inserted again
// unless asked to (fail closed).
class CopyLedger {
 public:
  virtual ~CopyLedger() = default;
  // Creates the tables if missing, deletes entries past their cap and starts a run. Returns
  // how many entries unfinished earlier runs left.
  virtual std::uint64_t begin(std::int64_t now) = 0;
  virtual std::unordered_map<std::string, DestinationState> lookup(
      const std::vector<std::string>& ids) = 0;
  struct Entry {
    std::string id;
    std::int64_t keep_until;
  };
  // Records `entries` under this run, in one transaction.
  virtual void record(const std::vector<Entry>& entries) = 0;
  // Deletes the entries of ids that were not inserted after all.
  virtual void forget(const std::vector<std::string>& ids) = 0;
  // Marks this run finished: everything it recorded and did not forget was inserted.
  virtual void finish(std::int64_t now) = 0;

 protected:
  CopyLedger() = default;
  CopyLedger(const CopyLedger&) = default;
  CopyLedger& operator=(const CopyLedger&) = default;
  CopyLedger(CopyLedger&&) = default;
  CopyLedger& operator=(CopyLedger&&) = default;
};

// On a destination the library has already opened (so its schema exists).
std::unique_ptr<CopyLedger> open_copy_ledger(const Target& target);

}  // namespace sessionctl

#endif  // PYLON_TOOLS_CTL_STORAGE_HPP_

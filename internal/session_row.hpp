// pylon-sessions: the columns of `_pylon_sessions`, described once. Private.
//
// What it owns: the one table of a session's fields (name, SQLite type, PostgreSQL type,
// nullable, the schema version that added it), in the order every statement binds and selects
// them, and the one walk over a Session's members in that order. Both backends build their
// column lists, SELECT / INSERT / upsert text, the shapes they expect of the table and their row
// readers and binders from these; the cache places each member by them; the field checks walk
// them; Session's equality compares session_fields(). Adding a column touches kSessionColumns,
// session_fields(), the Session struct and the two migrations. (A column one dialect alone needs,
// PostgreSQL's insert_order, is that backend's own, listed once in pg_backend.cpp.)
#ifndef PYLON_INTERNAL_SESSION_ROW_HPP_
#define PYLON_INTERNAL_SESSION_ROW_HPP_

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#include "session_backend.hpp"

namespace pylon::detail {

// How a column is stored: text (UTF-8, no NUL), a 64-bit integer, or bytes.
enum class ColumnKind { kText, kInteger, kBytes };

struct SessionColumn {
  const char* name;
  ColumnKind kind;
  bool nullable;
  int since_version;  // the schema version whose migration added it
  const char* sqlite_type;
  const char* postgres_type;
  // A text column's limit (session_backend.hpp's kMax*Bytes), the same on every backend; 0 for
  // the id (its own form is checked) and for other kinds. Every integer column holds a time or a
  // duration in seconds, within [0, kMaxSessionTime].
  std::size_t max_text_bytes = 0;
};

// In bind and select order: for_each_session_field() visits Session's members in this order.
inline constexpr std::array<SessionColumn, 13> kSessionColumns = {{
    {"id", ColumnKind::kText, false, 1, "TEXT", "text"},
    {"user_id", ColumnKind::kText, false, 1, "TEXT", "text", kMaxUserIdBytes},
    {"tenant_id", ColumnKind::kText, true, 1, "TEXT", "text", kMaxTenantIdBytes},
    {"created_at", ColumnKind::kInteger, false, 1, "INTEGER", "bigint"},
    {"expires_at", ColumnKind::kInteger, false, 1, "INTEGER", "bigint"},
    {"last_seen_at", ColumnKind::kInteger, false, 1, "INTEGER", "bigint"},
    {"absolute_expires_at", ColumnKind::kInteger, false, 1, "INTEGER", "bigint"},
    {"device", ColumnKind::kText, true, 1, "TEXT", "text", kMaxDeviceBytes},
    {"ip", ColumnKind::kText, true, 1, "TEXT", "text", kMaxIpBytes},
    {"data", ColumnKind::kBytes, false, 1, "BLOB", "bytea"},
    {"idp_session_id", ColumnKind::kText, true, 2, "TEXT", "text", kMaxIdpSessionIdBytes},
    {"authenticated_at", ColumnKind::kInteger, false, 5, "INTEGER", "bigint"},
    {"idle_timeout_seconds", ColumnKind::kInteger, true, 5, "INTEGER", "bigint"},
}};

// Session's members, as references, in the order of kSessionColumns: the one place that pairs a
// column with its member. Each is a std::string, std::optional<std::string>, std::int64_t or
// std::optional<std::int64_t>, as the column's kind and nullability say. Tuples compare member by
// member, which is Session's equality.
template <typename AnySession>
auto session_fields(AnySession& session) {
  static_assert(std::is_same_v<std::remove_const_t<AnySession>, Session>);
  return std::tie(session.id, session.user_id, session.tenant_id, session.created_at,
                  session.expires_at, session.last_seen_at, session.absolute_expires_at,
                  session.device, session.ip, session.data, session.idp_session_id,
                  session.authenticated_at, session.idle_timeout_seconds);
}

// Calls visit(column, member) for each member of `session` (Session or const Session), in the
// order of kSessionColumns.
template <typename AnySession, typename Visit>
void for_each_session_field(AnySession& session, Visit&& visit) {
  auto fields = session_fields(session);
  static_assert(std::tuple_size_v<decltype(fields)> == kSessionColumns.size(),
                "kSessionColumns and session_fields() must list the same columns");
  std::apply(
      [&visit](auto&... member) {
        std::size_t i = 0;
        (visit(kSessionColumns[i++], member), ...);
      },
      fields);
}

// The index of the column `name` in kSessionColumns (a compile-time lookup for statements that
// bind one column by its place).
constexpr std::size_t session_column_index(std::string_view name) {
  for (std::size_t i = 0; i < kSessionColumns.size(); ++i) {
    if (std::string_view(kSessionColumns[i].name) == name) return i;
  }
  return kSessionColumns.size();
}

// "id, user_id, ...": every column, each after `prefix` ("s." for a join).
std::string session_column_list(std::string_view prefix = {});
// The same list with some columns replaced by an expression, for INSERT ... SELECT copies
// (rotation: {"id", "?2"}): each column named in `replaced` shows its expression instead.
std::string session_column_list_replacing(
    std::initializer_list<std::pair<std::string_view, std::string>> replaced);
// "c = excluded.c, ..." for every column but id: an upsert's DO UPDATE SET.
std::string session_upsert_assignments();

}  // namespace pylon::detail

#endif  // PYLON_INTERNAL_SESSION_ROW_HPP_

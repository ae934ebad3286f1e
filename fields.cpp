// pylon-sessions: what a Session may hold, checked the same way by every backend (declared in
// internal/backend_shared.hpp), with Session's equality and SessionBackend's default readers.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "internal/backend_shared.hpp"
#include "internal/session_row.hpp"
#include "session_backend.hpp"

namespace pylon {

// Both backends must store the same values byte for byte. PostgreSQL TEXT holds neither NUL nor
// invalid UTF-8, so text fields are refused with kInvalidArgument on every backend when they
// contain either; `data` is bytes and holds anything.

void SessionBackend::load_each(const std::function<void(const Session&)>& visit) {
  for (const Session& session : load_all()) visit(session);
}

std::optional<Session> SessionBackend::load_one(std::string_view id) {
  std::optional<Session> found;
  load_each([&found, id](const Session& session) {
    if (session.id == id) found = session;
  });
  return found;
}

namespace {

// One write through its own call: what the default write_group() does with every write but a run
// of creates.
SessionWriteOutcome write_alone(SessionBackend& backend, SessionWrite& write) {
  SessionWriteOutcome outcome;
  try {
    std::visit(
        [&backend, &outcome](auto& arguments) {
          using Write = std::decay_t<decltype(arguments)>;
          if constexpr (std::is_same_v<Write, InsertNewWrite>) {
            outcome.removed = backend.insert_new(arguments.sessions, arguments.max_per_user);
          } else if constexpr (std::is_same_v<Write, TouchWrite>) {
            outcome.session =
                backend.touch(arguments.id, arguments.last_seen_at, arguments.expires_at);
          } else if constexpr (std::is_same_v<Write, UpdateDataWrite>) {
            outcome.session = backend.update_data(arguments.id, arguments.data);
          } else if constexpr (std::is_same_v<Write, RotateWrite>) {
            outcome.session = backend.rotate(arguments.old_id, arguments.new_id, arguments.now);
          } else if constexpr (std::is_same_v<Write, AuthenticateWrite>) {
            std::optional<Authentication> signed_in =
                backend.authenticate(arguments.old_id, arguments.new_id, arguments.user_id,
                                     arguments.now, arguments.max_per_user);
            if (signed_in) {
              outcome.session = std::move(signed_in->session);
              outcome.removed = std::move(signed_in->evicted);
            }
          } else {
            static_assert(std::is_same_v<Write, RemoveMatchingWrite>);
            outcome.removed = backend.remove_matching(arguments.filter);
          }
        },
        write);
  } catch (...) {
    outcome = SessionWriteOutcome();
    outcome.error = std::current_exception();
  }
  return outcome;
}

// Creates [first, last) with one cap, as one insert_new() call (one transaction, as the calls one
// after another would leave storage). Each eviction goes to the last create of its user in the
// run, the one that pushed the user over the cap. When the call fails other than in doubt, each
// create is made alone, so that one bad row fails only its own write.
void insert_run(SessionBackend& backend, std::vector<SessionWrite>& writes, std::size_t first,
                std::size_t last, std::vector<SessionWriteOutcome>& outcomes) {
  std::vector<Session> rows;
  for (std::size_t i = first; i < last; ++i) {
    const auto& sessions = std::get<InsertNewWrite>(writes[i]).sessions;
    rows.insert(rows.end(), sessions.begin(), sessions.end());
  }
  std::vector<RemovedSession> evicted;
  try {
    evicted = backend.insert_new(rows, std::get<InsertNewWrite>(writes[first]).max_per_user);
  } catch (const Error& error) {
    for (std::size_t i = first; i < last; ++i) {
      if (error.code() == ErrorCode::kConnectionLost) {
        outcomes[i].error = std::current_exception();
      } else {
        outcomes[i] = write_alone(backend, writes[i]);
      }
    }
    return;
  }
  for (RemovedSession& row : evicted) {
    std::size_t owner = last - 1;
    for (std::size_t i = last; i-- > first;) {
      const auto& sessions = std::get<InsertNewWrite>(writes[i]).sessions;
      if (std::any_of(sessions.begin(), sessions.end(),
                      [&row](const Session& session) { return session.user_id == row.user_id; })) {
        owner = i;
        break;
      }
    }
    outcomes[owner].removed.push_back(std::move(row));
  }
}

}  // namespace

// Consecutive creates with the same cap go as one insert_new() (a backend's batch: for
// PostgreSQL one statement); every other write through its own call, one commit each, so a custom
// backend without transactions of its own still serves a store.
std::vector<SessionWriteOutcome> SessionBackend::write_group(std::vector<SessionWrite> writes) {
  std::vector<SessionWriteOutcome> outcomes(writes.size());
  std::size_t i = 0;
  while (i < writes.size()) {
    const auto* create = std::get_if<InsertNewWrite>(&writes[i]);
    std::size_t end = i + 1;
    while (create != nullptr && end < writes.size()) {
      const auto* next = std::get_if<InsertNewWrite>(&writes[end]);
      if (next == nullptr || next->max_per_user != create->max_per_user) break;
      ++end;
    }
    if (create != nullptr && end - i > 1) {
      insert_run(*this, writes, i, end, outcomes);
    } else {
      outcomes[i] = write_alone(*this, writes[i]);
    }
    i = end;
  }
  return outcomes;
}

bool operator==(const Session& a, const Session& b) {
  return detail::session_fields(a) == detail::session_fields(b);
}

namespace detail {

// The length of the multi-byte UTF-8 sequence that `lead` starts, with the code point bits it
// carries in `bits`; 0 for a byte that cannot start one.
static std::size_t utf8_sequence_length(unsigned char lead, std::uint32_t* bits) noexcept {
  if (lead >= 0xC2 && lead <= 0xDF) {
    *bits = lead & 0x1FU;
    return 2;
  }
  if (lead >= 0xE0 && lead <= 0xEF) {
    *bits = lead & 0x0FU;
    return 3;
  }
  if (lead >= 0xF0 && lead <= 0xF4) {
    *bits = lead & 0x07U;
    return 4;
  }
  return 0;
}

bool is_storable_text(std::string_view text) noexcept {
  // Eight bytes at a time while they are ASCII without NUL, as nearly every field is: a word
  // passes when no byte has its high bit set and none is zero ((w - 0x01..) & ~w flags a zero).
  constexpr std::uint64_t kLowBits = 0x0101010101010101ULL;
  constexpr std::uint64_t kHighBits = 0x8080808080808080ULL;
  std::size_t i = 0;
  for (std::uint64_t word = 0; text.size() - i >= sizeof word; i += sizeof word) {
    std::memcpy(&word, text.data() + i, sizeof word);
    if (((word | ((word - kLowBits) & ~word)) & kHighBits) != 0) break;
  }
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    if (lead == 0) return false;
    if (lead < 0x80) {
      ++i;
      continue;
    }
    std::uint32_t code_point = 0;
    const std::size_t length = utf8_sequence_length(lead, &code_point);
    if (length == 0 || text.size() - i < length) return false;
    for (std::size_t k = 1; k < length; ++k) {
      const auto next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0U) != 0x80U) return false;
      code_point = (code_point << 6U) | (next & 0x3FU);
    }
    const bool overlong =
        (length == 3 && code_point < 0x800) || (length == 4 && code_point < 0x10000);
    const bool surrogate = code_point >= 0xD800 && code_point <= 0xDFFF;
    if (overlong || surrogate || code_point > 0x10FFFF) return false;
    i += length;
  }
  return true;
}

bool is_storable_field(const TextField& field, std::string_view value) noexcept {
  return value.size() <= field.max_bytes && is_storable_text(value);
}

void check_text_field(const TextField& field, std::string_view value) {
  if (value.size() > field.max_bytes) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string("session field '") + field.name + "' is " +
                    std::to_string(value.size()) + " bytes, over its limit of " +
                    std::to_string(field.max_bytes) + " (the same on every backend)");
  }
  if (!is_storable_text(value)) {
    throw Error(ErrorCode::kInvalidArgument,
                std::string("session field '") + field.name +
                    "' must be UTF-8 text without NUL bytes (use `data` for arbitrary bytes)");
  }
}

void check_optional_text_field(const TextField& field, const std::optional<std::string>& value) {
  if (value) check_text_field(field, *value);
}

// Calls check(field, text) for every set text field of `session` but its id: each column's limit
// from the one table of columns.
template <typename Check>
void for_each_text_field(const Session& session, Check&& check) {
  for_each_session_field(session, [&check](const SessionColumn& column, const auto& member) {
    using Member = std::decay_t<decltype(member)>;
    if (column.kind != ColumnKind::kText || column.max_text_bytes == 0) return;
    const TextField field{column.name, column.max_text_bytes};
    if constexpr (std::is_same_v<Member, std::string>) {
      check(field, member);
    } else if constexpr (std::is_same_v<Member, std::optional<std::string>>) {
      if (member) check(field, *member);
    }
  });
}

bool is_storable_session(const Session& session) noexcept {
  bool storable = is_well_formed_session_id(session.id);
  for_each_text_field(session, [&storable](const TextField& field, const std::string& text) {
    storable = storable && is_storable_field(field, text);
  });
  return storable;
}

bool has_sane_times(const Session& session) noexcept {
  bool in_range = true;
  for_each_session_field(session, [&in_range](const SessionColumn&, const auto& member) {
    using Member = std::decay_t<decltype(member)>;
    if constexpr (std::is_same_v<Member, std::int64_t>) {
      in_range = in_range && member >= 0 && member <= kMaxSessionTime;
    } else if constexpr (std::is_same_v<Member, std::optional<std::int64_t>>) {
      in_range = in_range && (!member || (*member >= 0 && *member <= kMaxSessionTime));
    }
  });
  return in_range && session.created_at <= session.last_seen_at &&
         (session.absolute_expires_at == 0 || session.expires_at <= session.absolute_expires_at);
}

bool is_servable_session(const Session& session) noexcept {
  return is_storable_session(session) && has_sane_times(session);
}

std::int64_t saturating_add(std::int64_t a, std::int64_t b) noexcept {
  std::int64_t sum = 0;
  if (__builtin_add_overflow(a, b, &sum)) {
    return b > 0 ? std::numeric_limits<std::int64_t>::max()
                 : std::numeric_limits<std::int64_t>::min();
  }
  return sum;
}

std::int64_t saturating_sub(std::int64_t a, std::int64_t b) noexcept {
  std::int64_t difference = 0;
  if (__builtin_sub_overflow(a, b, &difference)) {
    return b < 0 ? std::numeric_limits<std::int64_t>::max()
                 : std::numeric_limits<std::int64_t>::min();
  }
  return difference;
}

void check_rotation_ids(std::string_view old_id, std::string_view new_id) {
  if (!is_well_formed_session_id(new_id)) {
    throw Error(ErrorCode::kInvalidArgument,
                "session id must be 64 lowercase hex characters (the SHA-256 of a token)");
  }
  if (new_id == old_id) {
    throw Error(ErrorCode::kInvalidArgument,
                "a rotated session needs a new id: the new id is the old one");
  }
}

void check_session_for_storage(const Session& session) {
  if (!is_well_formed_session_id(session.id)) {
    throw Error(ErrorCode::kInvalidArgument,
                "session id must be 64 lowercase hex characters (the SHA-256 of a token)");
  }
  for_each_text_field(session, [](const TextField& field, const std::string& text) {
    check_text_field(field, text);
  });
}

void check_signing_in_user(std::string_view user_id) {
  if (user_id.empty()) {
    throw Error(ErrorCode::kInvalidArgument,
                "user_id must not be empty: a session is signed in to a user");
  }
  check_text_field(kUserIdField, user_id);
}

void check_may_sign_in(const Session& stored, std::string_view user_id) {
  if (!stored.is_anonymous() && stored.user_id != user_id) {
    throw Error(ErrorCode::kInvalidArgument,
                "the session belongs to another user: only an anonymous session, or one of the "
                "same user, can be signed in to");
  }
}

void check_removal_filter(const SessionFilter& filter) {
  if (!filter.id && !filter.user_id && !filter.idp_session_id && !filter.tenant_id) {
    throw Error(ErrorCode::kInvalidArgument,
                "remove_matching needs an id, a user_id, an idp_session_id or a tenant_id: an "
                "empty filter would delete every session");
  }
}

void check_session_query(const SessionQuery& query) {
  if (query.limit < 1 || query.limit > kMaxPageSize) {
    throw Error(ErrorCode::kInvalidArgument, "SessionQuery::limit is " +
                                                 std::to_string(query.limit) + ", outside 1 to " +
                                                 std::to_string(kMaxPageSize));
  }
  if (!query.after.empty() && !is_well_formed_session_id(query.after)) {
    throw Error(ErrorCode::kInvalidArgument,
                "SessionQuery::after must be empty or a cursor a previous page returned (a "
                "session id: 64 lowercase hex characters)");
  }
  check_optional_text_field(kTenantIdField, query.tenant_id);
  check_optional_text_field(kUserIdField, query.user_id);
  check_optional_text_field(kDeviceField, query.device);
}

std::string session_column_list(std::string_view prefix) {
  std::string list;
  for (const SessionColumn& column : kSessionColumns) {
    list.append(list.empty() ? "" : ", ").append(prefix).append(column.name);
  }
  return list;
}

std::string session_column_list_replacing(
    std::initializer_list<std::pair<std::string_view, std::string>> replaced) {
  std::string list;
  for (const SessionColumn& column : kSessionColumns) {
    list.append(list.empty() ? "" : ", ");
    const auto* replacement =
        std::find_if(replaced.begin(), replaced.end(),
                     [&column](const auto& pair) { return pair.first == column.name; });
    list.append(replacement != replaced.end() ? replacement->second : column.name);
  }
  return list;
}

std::string session_upsert_assignments() {
  std::string assignments;
  for (const SessionColumn& column : kSessionColumns) {
    if (std::string_view(column.name) == "id") continue;
    assignments.append(assignments.empty() ? "" : ", ")
        .append(column.name)
        .append(" = excluded.")
        .append(column.name);
  }
  return assignments;
}

}  // namespace detail

}  // namespace pylon

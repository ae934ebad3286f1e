// sessionctl: the writing half of `copy` and `import`. See ctl_copy.hpp and `copy --help`.
#include "ctl_copy.hpp"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <iostream>
#include <iterator>
#include <limits>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ctl_output.hpp"
#include "session_backend.hpp"

namespace sessionctl {

namespace {

constexpr std::size_t kReportedSkips = 100;
constexpr int kExitInterrupted = 130;

// Set by the handler of SIGINT and SIGTERM: the one state a signal handler may write.
// NOLINTNEXTLINE(cppcoreguidelines-avoid-non-const-global-variables)
volatile std::sig_atomic_t g_stop = 0;

extern "C" void on_stop_signal(int /*signal*/) { g_stop = 1; }

// Why no store would serve `s`, or "" (the destination's own field checks run in save_batch):
// a time outside 1970..9999 or out of order, or an idle timeout out of range, as SessionStore's
// start-up check has it. An empty user_id is an anonymous session, which is copied.
std::string unservable_reason(const pylon::Session& s) {
  const auto in_range = [](std::int64_t t) { return t >= 0 && t <= pylon::kMaxSessionTime; };
  if (!pylon::is_well_formed_session_id(s.id)) return "not a session id (64 lowercase hex)";
  if (!in_range(s.created_at) || !in_range(s.last_seen_at) || !in_range(s.expires_at) ||
      !in_range(s.absolute_expires_at) || s.created_at > s.last_seen_at ||
      (s.absolute_expires_at != 0 && s.expires_at > s.absolute_expires_at)) {
    return "times out of range (1970..9999) or out of order; no store would serve it";
  }
  if (!in_range(s.authenticated_at)) {
    return "authenticated_at out of range (1970..9999); no store would serve it";
  }
  if (s.idle_timeout_seconds && !in_range(*s.idle_timeout_seconds)) {
    return "idle_timeout_seconds negative or over kMaxSessionTime; no store would serve it";
  }
  return {};
}

// How long a ledger entry is kept: until the session's hard cap, past which no copy would
// bring it back anyway. A row without a cap keeps its entry for good.
std::int64_t keep_until(const pylon::Session& s) {
  return s.absolute_expires_at != 0 ? std::max(s.absolute_expires_at, s.expires_at)
                                    : std::numeric_limits<std::int64_t>::max();
}

}  // namespace

void stop_copies_on_signals() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;  // NOLINT(*-union-access): the C API's union
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

CopySink::CopySink(const Target& to, CopyOptions options)
    : options_(options),
      backend_(pylon::open_backend(to.url)),
      ledger_(open_copy_ledger(to)),
      now_(pylon::system_clock_now()),
      pending_at_start_(ledger_->begin(now_)),
      started_(std::chrono::steady_clock::now()),
      drawn_(started_) {
  report_.to = backend_->describe();
  batch_.reserve(options_.batch_size);
}

CopySink::~CopySink() = default;

void CopySink::add(const pylon::Session& session) {
  ++report_.read;
  if (std::string why = unservable_reason(session); !why.empty()) {
    skip(session.id, why);
    return;
  }
  batch_.push_back(session);
  if (batch_.size() >= options_.batch_size) flush();
  if (g_stop != 0) {
    const CopyReport done = finish();
    throw Failure(kExitInterrupted,
                  "interrupted after " + std::to_string(done.read) + " sessions (" +
                      std::to_string(done.inserted) +
                      " new at the destination); run the same command again to go on");
  }
}

void CopySink::skip(const std::string& id, const std::string& why) {
  ++report_.skipped;
  if (report_.skipped_rows.size() < kReportedSkips) report_.skipped_rows.emplace_back(id, why);
}

void CopySink::flush() {
  if (batch_.empty()) return;
  std::vector<pylon::Session> rows;
  rows.swap(batch_);
  batch_.reserve(options_.batch_size);
  std::vector<std::string> ids;
  ids.reserve(rows.size());
  for (const pylon::Session& s : rows) ids.push_back(s.id);
  const std::unordered_map<std::string, DestinationState> states = ledger_->lookup(ids);

  std::vector<pylon::Session> inserts;
  std::vector<const pylon::Session*> updates;
  std::vector<CopyLedger::Entry> entries;
  for (const pylon::Session& s : rows) {
    const auto found = states.find(s.id);
    const DestinationState state = found == states.end() ? DestinationState{} : found->second;
    switch (decide(state)) {
      case Decision::kInsert:
        inserts.push_back(s);
        entries.push_back({s.id, keep_until(s)});
        break;
      case Decision::kPresent:
        // Already there: the destination's row is kept, and only moved forward (a later
        // activity's expiry, that activity's data) by writes that never insert.
        if (s.last_seen_at > state.last_seen_at) {
          updates.push_back(&s);
        } else {
          ++report_.unchanged;
        }
        if (state.ledger != 1) entries.push_back({s.id, keep_until(s)});
        break;
      case Decision::kSkip:
        break;
    }
  }
  // The ledger first: once it is committed, no later copy brings these ids back if they go.
  ledger_->record(entries);
  insert(inserts);
  for (const pylon::Session* s : updates) {
    if (!backend_->touch(s->id, s->last_seen_at, s->expires_at)) {
      ++report_.revoked_at_destination;  // revoked there while we looked
      continue;
    }
    if (states.at(s->id).data != s->data) backend_->update_data(s->id, s->data);
    ++report_.updated;
  }
  draw_progress(false);
}

CopySink::Decision CopySink::decide(const DestinationState& state) {
  if (state.present) return Decision::kPresent;
  if (state.rotated) {
    ++report_.rotated_at_destination;
  } else if (state.ledger == 1) {
    ++report_.revoked_at_destination;
  } else if (state.ledger == 0 && !options_.retry_interrupted) {
    ++report_.interrupted;
  } else {
    return Decision::kInsert;
  }
  return Decision::kSkip;
}

void CopySink::insert(std::vector<pylon::Session>& rows) {
  if (rows.empty()) return;
  std::vector<std::string> ids;
  ids.reserve(rows.size());
  for (const pylon::Session& s : rows) ids.push_back(s.id);
  std::vector<std::string> saved;
  std::vector<std::string> failed;
  try {
    save(rows, saved, failed);
  } catch (...) {
    // A storage error: the entries of the rows not saved go (those saved stay recorded).
    std::sort(saved.begin(), saved.end());
    std::vector<std::string> unsaved;
    for (const std::string& id : ids) {
      if (!std::binary_search(saved.begin(), saved.end(), id)) unsaved.push_back(id);
    }
    ledger_->forget(unsaved);
    throw;
  }
  ledger_->forget(failed);
  report_.inserted += saved.size();
}

// save_batch() is all or nothing; when the destination refuses a batch as invalid (a value a
// constraint or trigger of its own refuses), halves are tried until the rows at fault are found.
// NOLINTNEXTLINE(misc-no-recursion): halving, so at most log2(--batch) calls deep
void CopySink::save(std::vector<pylon::Session>& rows, std::vector<std::string>& saved,
                    std::vector<std::string>& failed) {
  try {
    backend_->save_batch(rows);
    for (const pylon::Session& s : rows) saved.push_back(s.id);
  } catch (const pylon::Error& e) {
    if (e.code() != pylon::ErrorCode::kInvalidArgument) throw;
    if (rows.size() == 1) {
      failed.push_back(rows.front().id);
      skip(rows.front().id, e.what());
      return;
    }
    const auto middle = rows.begin() + static_cast<std::ptrdiff_t>(rows.size() / 2);
    std::vector<pylon::Session> first(std::make_move_iterator(rows.begin()),
                                      std::make_move_iterator(middle));
    std::vector<pylon::Session> second(std::make_move_iterator(middle),
                                       std::make_move_iterator(rows.end()));
    save(first, saved, failed);
    save(second, saved, failed);
  }
}

void CopySink::draw_progress(bool last) {
  if (!options_.progress) return;
  const auto now = std::chrono::steady_clock::now();
  if (!last &&
      (now - started_ < std::chrono::seconds(1) || now - drawn_ < std::chrono::milliseconds(100))) {
    return;
  }
  if (last && !drew_) return;
  drawn_ = now;
  drew_ = true;
  const double seconds = std::chrono::duration<double>(now - started_).count();
  std::string line = "\r  " + std::to_string(report_.read);
  if (options_.expected_rows > 0) {
    const std::uint64_t shown = std::min(report_.read, options_.expected_rows);
    const auto percent = static_cast<int>(100 * shown / options_.expected_rows);
    constexpr int kWidth = 30;
    const int filled = percent * kWidth / 100;
    line = "\r  [" + std::string(static_cast<std::size_t>(filled), '#') +
           std::string(static_cast<std::size_t>(kWidth - filled), ' ') + "] " +
           std::to_string(percent) + "%  " + std::to_string(report_.read) + "/" +
           std::to_string(options_.expected_rows);
  }
  line += " sessions, " +
          std::to_string(static_cast<std::uint64_t>(
              seconds > 0 ? static_cast<double>(report_.read) / seconds : 0)) +
          "/s   ";
  std::cerr << line << (last ? "\n" : "") << std::flush;
}

CopyReport CopySink::finish() {
  flush();
  ledger_->finish(pylon::system_clock_now());
  draw_progress(true);
  report_.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  return report_;
}

}  // namespace sessionctl

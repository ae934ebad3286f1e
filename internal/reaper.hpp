// pylon-sessions: the reaper, a thread that runs a purge on a schedule. Private.
//
// What it owns: its thread, its schedule and its stop flag. It calls `run` every `interval`
// from the moment it is constructed, and its destructor stops it promptly (a run in progress
// sees stopping() turn true and may end early) and joins the thread. What a run does, and what a
// failed run means, is the owner's business: `run` must not throw.
#ifndef PYLON_INTERNAL_REAPER_HPP_
#define PYLON_INTERNAL_REAPER_HPP_

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>
#include <utility>

#include "internal/thread_annotations.hpp"

namespace pylon::detail {

class Reaper {
 public:
  // `run` gets the Reaper, to ask stopping(): it runs on the reaper's thread, which may start
  // before whoever constructs the Reaper has stored it anywhere.
  Reaper(std::chrono::seconds interval, std::function<void(const Reaper&)> run)
      : interval_(interval), run_(std::move(run)), thread_([this] { loop(); }) {}
  ~Reaper() {
    {
      const MutexLock lock(mutex_);
      stop_requested_ = true;
    }
    stopping_ = true;
    wake_.signal_all();
    thread_.join();
  }
  Reaper(const Reaper&) = delete;
  Reaper& operator=(const Reaper&) = delete;
  Reaper(Reaper&&) = delete;
  Reaper& operator=(Reaper&&) = delete;

  // True once the destructor has begun: a long run checks it between its steps.
  bool stopping() const noexcept { return stopping_; }

 private:
  void loop() EXCLUDES(mutex_) {
    MutexLock lock(mutex_);
    while (!wake_.wait_for(interval_, [this]() NO_THREAD_SAFETY_ANALYSIS {
      return stop_requested_;  // evaluated with mutex_ held, inside the wait
    })) {
      lock.unlock();
      run_(*this);
      lock.lock();
    }
  }

  Mutex mutex_;
  CondVar wake_{mutex_};
  bool stop_requested_ GUARDED_BY(mutex_) = false;
  std::atomic<bool> stopping_{false};
  const std::chrono::seconds interval_;
  const std::function<void(const Reaper&)> run_;
  std::thread thread_;  // last: started once everything above exists
};

}  // namespace pylon::detail

#endif  // PYLON_INTERNAL_REAPER_HPP_

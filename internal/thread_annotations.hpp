// pylon-sessions: locks the compiler checks. Private: not installed, not part of the API.
//
// What it owns: Mutex (a std::mutex that Clang's thread-safety analysis knows as a capability),
// MutexLock (its scoped holder), CondVar (a condition variable on a Mutex), SharedMutex (a
// std::shared_mutex the analysis knows, held by WriterLock exclusively or ReaderLock shared), and
// the attribute macros the rest of the library writes its lock rules with:
//   GUARDED_BY(m)       this member is written only with m held, read with m held or shared;
//   REQUIRES(m)         the caller holds m (exclusively);
//   REQUIRES_SHARED(m)  the caller holds m, shared or exclusively;
//   EXCLUDES(m)         the caller does not hold m (the function takes it).
// Under Clang with -Wthread-safety (scripts/thread-safety.sh, run by the test command) a rule
// broken is a compile error; under GCC the macros are empty and the classes are plain wrappers.
#ifndef PYLON_INTERNAL_THREAD_ANNOTATIONS_HPP_
#define PYLON_INTERNAL_THREAD_ANNOTATIONS_HPP_

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <shared_mutex>

#if defined(__clang__)
#define PYLON_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define PYLON_THREAD_ANNOTATION(x)
#endif

#define CAPABILITY(x) PYLON_THREAD_ANNOTATION(capability(x))
#define SCOPED_CAPABILITY PYLON_THREAD_ANNOTATION(scoped_lockable)
#define GUARDED_BY(x) PYLON_THREAD_ANNOTATION(guarded_by(x))
#define PT_GUARDED_BY(x) PYLON_THREAD_ANNOTATION(pt_guarded_by(x))
#define REQUIRES(...) PYLON_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define REQUIRES_SHARED(...) PYLON_THREAD_ANNOTATION(requires_shared_capability(__VA_ARGS__))
#define EXCLUDES(...) PYLON_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define ACQUIRE(...) PYLON_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define RELEASE(...) PYLON_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define ACQUIRE_SHARED(...) PYLON_THREAD_ANNOTATION(acquire_shared_capability(__VA_ARGS__))
#define RELEASE_SHARED(...) PYLON_THREAD_ANNOTATION(release_shared_capability(__VA_ARGS__))
#define RETURN_CAPABILITY(x) PYLON_THREAD_ANNOTATION(lock_returned(x))
#define NO_THREAD_SAFETY_ANALYSIS PYLON_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace pylon::detail {

class CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;
  Mutex(Mutex&&) = delete;
  Mutex& operator=(Mutex&&) = delete;
  ~Mutex() = default;

  void lock() ACQUIRE() { mutex_.lock(); }
  void unlock() RELEASE() { mutex_.unlock(); }

 private:
  friend class CondVar;
  std::mutex mutex_;
};

// Holds a Mutex for its scope; unlock() and lock() let a scope step out for a while (a leader
// committing with the queue released).
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mutex) ACQUIRE(mutex) : mutex_(mutex) { mutex_.lock(); }
  ~MutexLock() RELEASE() {
    if (held_) mutex_.unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;
  MutexLock(MutexLock&&) = delete;
  MutexLock& operator=(MutexLock&&) = delete;

  void unlock() RELEASE() {
    mutex_.unlock();
    held_ = false;
  }
  void lock() ACQUIRE() {
    mutex_.lock();
    held_ = true;
  }

 private:
  Mutex& mutex_;
  bool held_ = true;
};

// A condition variable whose waits release and retake one Mutex, which the caller holds.
class CondVar {
 public:
  explicit CondVar(Mutex& mutex) : mutex_(mutex) {}
  CondVar(const CondVar&) = delete;
  CondVar& operator=(const CondVar&) = delete;
  CondVar(CondVar&&) = delete;
  CondVar& operator=(CondVar&&) = delete;
  ~CondVar() = default;

  // The analysis cannot see a wait release and retake the mutex; the caller holds it throughout
  // as far as its own code is concerned.
  void wait() NO_THREAD_SAFETY_ANALYSIS {
    std::unique_lock<std::mutex> lock(mutex_.mutex_, std::adopt_lock);
    condition_.wait(lock);
    lock.release();
  }
  // Waits until `done()` is true; `done` runs with the mutex held.
  template <typename Predicate>
  void wait(Predicate done) NO_THREAD_SAFETY_ANALYSIS {
    std::unique_lock<std::mutex> lock(mutex_.mutex_, std::adopt_lock);
    condition_.wait(lock, done);
    lock.release();
  }
  template <typename Rep, typename Period, typename Predicate>
  bool wait_for(std::chrono::duration<Rep, Period> timeout,
                Predicate done) NO_THREAD_SAFETY_ANALYSIS {
    std::unique_lock<std::mutex> lock(mutex_.mutex_, std::adopt_lock);
    const bool result = condition_.wait_for(lock, timeout, done);
    lock.release();
    return result;
  }
  void signal() { condition_.notify_one(); }
  void signal_all() { condition_.notify_all(); }

 private:
  Mutex& mutex_;
  std::condition_variable condition_;
};

// A std::shared_mutex the analysis knows: many readers or one writer. lock() and unlock() also
// make it Lockable, for a holder (std::unique_lock) that outlives one scope.
class CAPABILITY("shared mutex") SharedMutex {
 public:
  SharedMutex() = default;
  SharedMutex(const SharedMutex&) = delete;
  SharedMutex& operator=(const SharedMutex&) = delete;
  SharedMutex(SharedMutex&&) = delete;
  SharedMutex& operator=(SharedMutex&&) = delete;
  ~SharedMutex() = default;

  void lock() ACQUIRE() { mutex_.lock(); }
  void unlock() RELEASE() { mutex_.unlock(); }
  void lock_shared() ACQUIRE_SHARED() { mutex_.lock_shared(); }
  void unlock_shared() RELEASE_SHARED() { mutex_.unlock_shared(); }

 private:
  std::shared_mutex mutex_;
};

// Holds a SharedMutex exclusively for its scope.
class SCOPED_CAPABILITY WriterLock {
 public:
  explicit WriterLock(SharedMutex& mutex) ACQUIRE(mutex) : mutex_(mutex) { mutex_.lock(); }
  ~WriterLock() RELEASE() { mutex_.unlock(); }
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;
  WriterLock(WriterLock&&) = delete;
  WriterLock& operator=(WriterLock&&) = delete;

 private:
  SharedMutex& mutex_;
};

// Holds a SharedMutex shared for its scope.
class SCOPED_CAPABILITY ReaderLock {
 public:
  explicit ReaderLock(SharedMutex& mutex) ACQUIRE_SHARED(mutex) : mutex_(mutex) {
    mutex_.lock_shared();
  }
  ~ReaderLock() RELEASE() { mutex_.unlock_shared(); }
  ReaderLock(const ReaderLock&) = delete;
  ReaderLock& operator=(const ReaderLock&) = delete;
  ReaderLock(ReaderLock&&) = delete;
  ReaderLock& operator=(ReaderLock&&) = delete;

 private:
  SharedMutex& mutex_;
};

}  // namespace pylon::detail

#endif  // PYLON_INTERNAL_THREAD_ANNOTATIONS_HPP_

#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

namespace granary::sys {

// The system seam: threads, locks, waits, monotonic time and randomness.
//
// Every thread, lock, wait, sleep and steady-clock read of the runtime and
// the cluster goes through these types. A thread started by a deterministic
// simulation has a `kernel` (see `current_kernel`); there the calls go to
// it, which runs one thread at a time in a seeded order and keeps virtual
// time. Every other thread uses the operating system, at the cost of one
// thread-local read per call.

/// The monotonic clock's time points (virtual under a simulation).
using time_point = std::chrono::steady_clock::time_point;

class mutex;
class condition_variable;
class thread;

/// What a deterministic scheduler implements. Only threads it started see
/// it; it never runs two of them at once.
class kernel {
public:
  virtual ~kernel();

  /// Blocks until `m` is free, then takes it.
  virtual void lock(mutex& m) = 0;

  /// Takes `m` if it is free.
  virtual bool try_lock(mutex& m) = 0;

  /// Frees `m` (held by the calling thread).
  virtual void unlock(mutex& m) = 0;

  /// Frees `m`, waits for a notify of `cv` or for `deadline`, takes `m`
  /// again; false when the deadline passed first.
  virtual bool wait(condition_variable& cv, mutex& m,
                    std::optional<time_point> deadline)
      = 0;

  /// Wakes one (or every) waiter of `cv`.
  virtual void notify(condition_variable& cv, bool all) = 0;

  /// The virtual monotonic time.
  virtual time_point now() = 0;

  /// Waits until the virtual time reaches `t`.
  virtual void sleep_until(time_point t) = 0;

  /// Lets another thread run (a scheduling point).
  virtual void yield() = 0;

  /// Starts `fn` as a new thread of the caller's process; returns its id.
  virtual uint64_t start(std::string name, std::function<void()> fn) = 0;

  /// Waits until thread `id` has finished.
  virtual void join(uint64_t id) = 0;

  /// A random number from the run's seed.
  virtual uint64_t random() = 0;

  /// Waits until `ready()` holds or `deadline`; the kernel checks `ready`
  /// at every scheduling decision (for state it cannot see, such as a job
  /// queue filled without a notify). False on timeout.
  virtual bool wait_until_ready(const std::function<bool()>& ready,
                                std::optional<time_point> deadline)
      = 0;

  /// The wall clock as the calling thread's process sees it (virtual,
  /// with the process's skew), in milliseconds since the Unix epoch.
  virtual int64_t wall_ms() = 0;

  /// Whether the calling thread may call the OS's clocks, sleeps, threads
  /// and sockets (a simulation fails the run otherwise); returns the
  /// previous setting.
  virtual bool allow_os_calls(bool allowed) = 0;
};

/// The kernel of the calling thread, or null outside a simulation.
kernel* current_kernel() noexcept;

/// Makes `k` the calling thread's kernel (for the kernel's own threads).
void set_current_kernel(kernel* k) noexcept;

/// Lets the calling thread call the OS's clocks and threads while it
/// lives, under a simulation: only around third-party code whose use of
/// them does not reach the simulated logic (CAF builds its logger's start
/// time from the OS clock). Does nothing outside a simulation.
class os_calls_allowed {
public:
  os_calls_allowed();
  ~os_calls_allowed();
  os_calls_allowed(const os_calls_allowed&) = delete;
  os_calls_allowed& operator=(const os_calls_allowed&) = delete;

private:
  bool previous_ = false;
};

/// A mutex (BasicLockable and Lockable: `std::lock_guard`,
/// `std::unique_lock` and `std::scoped_lock` work with it).
class mutex {
public:
  mutex() = default;
  mutex(const mutex&) = delete;
  mutex& operator=(const mutex&) = delete;

  void lock();
  bool try_lock();
  void unlock();

  /// The operating system's mutex (outside a simulation).
  std::mutex& native() noexcept {
    return native_;
  }

  /// Simulation bookkeeping, owned by the kernel: the holder's thread id
  /// (0: free).
  uint64_t sim_holder = 0;

private:
  std::mutex native_;
};

/// A condition variable used with `std::unique_lock<sys::mutex>`.
class condition_variable {
public:
  using lock_type = std::unique_lock<mutex>;

  condition_variable() = default;
  condition_variable(const condition_variable&) = delete;
  condition_variable& operator=(const condition_variable&) = delete;

  void notify_one();
  void notify_all();

  void wait(lock_type& lock);

  template <class Pred>
  void wait(lock_type& lock, Pred pred) {
    // Bounded by the waker: each pass blocks until a notify.
    while (!pred())
      wait(lock);
  }

  /// Waits until notified or `deadline`.
  std::cv_status wait_until(lock_type& lock, time_point deadline);

  template <class Pred>
  bool wait_until(lock_type& lock, time_point deadline, Pred pred) {
    // Bounded by the deadline.
    while (!pred())
      if (wait_until(lock, deadline) == std::cv_status::timeout)
        return pred();
    return true;
  }

  template <class Rep, class Period>
  std::cv_status wait_for(lock_type& lock,
                          std::chrono::duration<Rep, Period> d) {
    return wait_until(lock, deadline_after(d));
  }

  template <class Rep, class Period, class Pred>
  bool wait_for(lock_type& lock, std::chrono::duration<Rep, Period> d,
                Pred pred) {
    return wait_until(lock, deadline_after(d), std::move(pred));
  }

private:
  template <class Rep, class Period>
  static time_point deadline_after(std::chrono::duration<Rep, Period> d);

  std::condition_variable native_;
};

/// The monotonic time (virtual under a simulation).
time_point now();

/// Sleeps for `d` (in virtual time under a simulation).
void sleep_for(std::chrono::nanoseconds d);

/// Sleeps until `t`.
void sleep_until(time_point t);

/// A scheduling point: under a simulation another thread may run here.
void yield();

/// Under a simulation, waits until `ready()` holds or `deadline` (see
/// `kernel::wait_until_ready`); false on timeout. Outside a simulation,
/// polls every millisecond.
bool wait_until_ready(const std::function<bool()>& ready,
                      std::optional<time_point> deadline);

/// The wall clock in milliseconds since the Unix epoch (virtual under a
/// simulation).
int64_t wall_ms();

/// A random 64-bit number: from the run's seed under a simulation, from
/// the operating system otherwise.
uint64_t random_u64();

/// A thread; under a simulation, one of the kernel's threads in the
/// caller's process. `name` shows up in simulation traces.
class thread {
public:
  thread() = default;
  thread(std::string name, std::function<void()> fn);
  thread(thread&& other) noexcept;
  thread& operator=(thread&& other) noexcept;
  thread(const thread&) = delete;
  thread& operator=(const thread&) = delete;
  /// Like `std::thread`: destroying a joinable thread terminates.
  ~thread();

  bool joinable() const noexcept;
  void join();

private:
  std::thread native_;
  kernel* kernel_ = nullptr;
  uint64_t sim_id_ = 0;
};

/// A value handed from one thread to another once: a promise and its
/// future in one object, shared (`std::shared_ptr`) between a waiting
/// caller and a callback that may outlive it.
template <class T>
class one_shot {
public:
  /// Stores `value` and wakes the waiter; later values are ignored.
  void set(T value) {
    std::lock_guard guard{mtx_};
    if (value_)
      return;
    value_.emplace(std::move(value));
    cv_.notify_all();
  }

  /// The value, once set before `deadline`; nullopt on timeout.
  std::optional<T> wait_until(time_point deadline) {
    std::unique_lock lock{mtx_};
    if (!cv_.wait_until(lock, deadline, [&] { return value_.has_value(); }))
      return std::nullopt;
    return std::move(*value_);
  }

  template <class Rep, class Period>
  std::optional<T> wait_for(std::chrono::duration<Rep, Period> d) {
    std::unique_lock lock{mtx_};
    if (!cv_.wait_for(lock, d, [&] { return value_.has_value(); }))
      return std::nullopt;
    return std::move(*value_);
  }

private:
  mutex mtx_;
  condition_variable cv_;
  std::optional<T> value_;
};

template <class Rep, class Period>
time_point
condition_variable::deadline_after(std::chrono::duration<Rep, Period> d) {
  auto t = now();
  // Saturates: "wait for ever" durations must not overflow.
  if (d > std::chrono::duration_cast<std::chrono::duration<Rep, Period>>(
          time_point::max() - t))
    return time_point::max();
  return t + std::chrono::duration_cast<time_point::duration>(d);
}

} // namespace granary::sys

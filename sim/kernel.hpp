#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/sys.hpp"

namespace granary::sim {

/// A simulated process: a group of threads that crash, pause and resume
/// together (a silo, or the world that drives the run).
using process_id = uint64_t;

/// The world: the process of the run's first thread. It never crashes.
inline constexpr process_id world = 1;

/// Settings of one run of the kernel.
struct kernel_config {
  /// Seeds every choice: the same seed gives the same run.
  uint64_t seed = 1;
  /// Chance that a scheduling point which need not switch threads does.
  double switch_rate = 0.2;
  /// Virtual time one scheduling decision costs, so that a thread that
  /// polls the clock without waiting still sees time pass.
  std::chrono::nanoseconds step_cost{2'000};
  /// Livelock guard: the run fails after this many decisions.
  uint64_t max_steps = 100'000'000;
  /// The wall clock at the start of the run (ms since the Unix epoch).
  int64_t wall_start_ms = 1'800'000'000'000;
  /// The run fails when the virtual time passes this.
  std::chrono::nanoseconds max_time = std::chrono::hours{24 * 365};
  /// Events kept for the report of a failed run.
  size_t trace_tail = 48;
  /// Upper bound of threads alive at once.
  size_t max_threads = 4'096;
};

/// How a run ended.
struct run_result {
  /// True when the first thread returned and no invariant failed.
  bool ok = false;
  /// The invariant that failed ("deadlock", "livelock", an exception or a
  /// checker's name); empty when ok.
  std::string invariant;
  /// What was wrong.
  std::string detail;
  /// Virtual time at the end, since the start of the run.
  std::chrono::nanoseconds elapsed{0};
  /// Scheduling decisions made.
  uint64_t steps = 0;
  /// Hash of every decision and traced event: equal for equal runs.
  uint64_t trace_hash = 0;
  /// The last events, oldest first, one line each.
  std::vector<std::string> tail;
  /// Every unfinished thread at the end and what it waited for, one line
  /// each ("silo-1#2/agent: waits on a condition variable until t=...").
  std::vector<std::string> threads;
  /// Threads that never finished (crashed processes, or waiting at the
  /// end); they stay parked until the program exits.
  size_t abandoned_threads = 0;
};

/// A deterministic scheduler: runs real code on real threads, one at a
/// time, in an order drawn from a seed, with virtual time.
///
/// Every thread it starts sees it as `sys::current_kernel()`, so their
/// locks, waits, sleeps, clock reads and new threads come here. At each
/// such scheduling point the kernel picks the next thread to run with its
/// seeded generator; when every thread waits, the virtual time jumps to the
/// earliest deadline. A run therefore replays exactly from its seed, and a
/// simulated hour of timers takes as long as the work in it.
///
/// Processes crash (their threads never run again and their memory is
/// abandoned, as a killed process's is), and pause. A crash waits until no
/// thread of the process holds a mutex, so that shared simulated devices
/// (the network, the disks) stay consistent and no living thread can wait
/// for a lock held by a dead one.
class kernel final : public sys::kernel {
public:
  explicit kernel(kernel_config cfg = {});
  ~kernel() override;

  kernel(const kernel&) = delete;
  kernel& operator=(const kernel&) = delete;

  /// Runs `main` as the first thread of process `world` until it returns,
  /// an invariant fails or no thread can go on. Call once, from a thread
  /// outside the simulation.
  run_result run(std::function<void()> main);

  // -- from threads of the simulation -----------------------------------------

  /// A new, empty process.
  process_id new_process(std::string name);

  /// Starts `fn` as a thread of process `p`.
  uint64_t spawn(process_id p, std::string name, std::function<void()> fn);

  /// The calling thread's process.
  process_id current_process() const;

  /// Stops every thread of `p` for good (at once, or as soon as none holds
  /// another process's mutex). Returns once the crash has happened, unless
  /// the caller belongs to `p`.
  void crash(process_id p);

  /// Stops the threads of `p` for `d` of virtual time (like SIGSTOP).
  void pause(process_id p, std::chrono::nanoseconds d);

  /// Sets how far `p`'s wall clock is ahead of the true (virtual) time;
  /// negative: behind.
  void skew(process_id p, std::chrono::milliseconds ahead);

  /// False once `p` crashed.
  bool alive(process_id p) const;

  /// Waits until `ready()` holds, checking it at every scheduling decision
  /// (for loops that poll state the kernel cannot see, like a CAF job
  /// queue), or until `deadline`; false on timeout.
  bool wait_until_ready(const std::function<bool()>& ready,
                        std::optional<sys::time_point> deadline) override;

  /// Waits until no other thread can run without the virtual time moving
  /// on: each one waits for a deadline, a lock, a notification or a
  /// predicate that is false (the time-skipping test environment's
  /// `run_until_idle`). Time does not move while the caller waits.
  void wait_until_idle();

  /// Adds an event to the trace (and its hash).
  void trace(std::string event);

  /// Fails the run: `invariant` names what broke. The caller never returns
  /// (its thread parks).
  [[noreturn]] void fail(std::string invariant, std::string detail);

  /// Virtual time since the start of the run.
  std::chrono::nanoseconds elapsed() const;

  /// Scheduling decisions so far.
  uint64_t steps() const;

  // -- sys::kernel ------------------------------------------------------------

  void lock(sys::mutex& m) override;
  bool try_lock(sys::mutex& m) override;
  void unlock(sys::mutex& m) override;
  bool wait(sys::condition_variable& cv, sys::mutex& m,
            std::optional<sys::time_point> deadline) override;
  void notify(sys::condition_variable& cv, bool all) override;
  sys::time_point now() override;
  void sleep_until(sys::time_point t) override;
  void yield() override;
  uint64_t start(std::string name, std::function<void()> fn) override;
  void join(uint64_t id) override;
  uint64_t random() override;
  int64_t wall_ms() override;
  bool allow_os_calls(bool allowed) override;

  struct state;

private:
  // Shared with the kernel's OS threads: a thread parked for good (of a
  // crashed process, or waiting when the run ended) keeps it alive.
  std::shared_ptr<state> st_;
};

} // namespace granary::sim

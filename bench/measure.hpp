#pragma once

// What every scenario of `granary bench` measures with: clocks, CPU meters,
// a latency histogram, the closed loops that drive a run, temporary
// directories and the memory of the process.

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace granary::bench {

/// Receives one progress line at a time; may be empty.
using progress_fn = std::function<void(const std::string&)>;

/// The warm-up share of every timed run; its operations are not counted.
inline constexpr double warmup_share = 0.1;

/// How long calls still in flight may take to finish after a timed run.
inline constexpr std::chrono::seconds drain_timeout{10};

// -- time ---------------------------------------------------------------------

/// The steady clock in nanoseconds.
inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// Converts seconds to nanoseconds.
inline int64_t to_ns(double seconds) {
  return static_cast<int64_t>(seconds * 1e9);
}

/// Converts nanoseconds to seconds.
inline double to_s(int64_t ns) {
  return static_cast<double>(ns) / 1e9;
}

/// Cores kept busy between `start` and `stop`: by this process, and by
/// everything else on the machine. The latter tells whether a run was
/// disturbed by other work.
struct cpu_meter {
  int64_t proc0 = 0;
  int64_t machine0 = 0;
  int64_t wall0 = 0;
  double own_cores = 0;
  double other_cores = 0;

  /// Takes the readings at the start.
  void start();

  /// Takes the readings at the end and computes the cores.
  void stop();
};

// -- latency histogram --------------------------------------------------------

/// A log-linear latency histogram (64 sub-buckets per power of two, so a
/// reported percentile is within 1.6% of the true value). Recording is one
/// relaxed atomic increment, safe from any thread.
class histogram {
public:
  /// Records one latency of `ns` nanoseconds.
  void record(int64_t ns) {
    buckets_[index(ns)].fetch_add(1, std::memory_order_relaxed);
  }

  /// Returns the number of latencies recorded.
  uint64_t count() const {
    uint64_t n = 0;
    for (auto& b : buckets_)
      n += b.load(std::memory_order_relaxed);
    return n;
  }

  /// Returns the `q` quantile (0 < q <= 1) in milliseconds; 0 if empty.
  double quantile_ms(double q) const {
    auto total = count();
    if (total == 0)
      return 0;
    auto rank = std::max<uint64_t>(
        1, static_cast<uint64_t>(std::ceil(q * static_cast<double>(total))));
    uint64_t seen = 0;
    for (size_t i = 0; i < size; ++i) {
      seen += buckets_[i].load(std::memory_order_relaxed);
      if (seen >= rank)
        return static_cast<double>(midpoint(i)) / 1e6;
    }
    return static_cast<double>(midpoint(size - 1)) / 1e6;
  }

private:
  static constexpr int sub_bits = 6;
  static constexpr uint64_t sub = uint64_t{1} << sub_bits;
  // Values up to 2^43 ns (about 2.4 hours) have their own bucket.
  static constexpr int max_exp = 42;
  static constexpr size_t size = (max_exp - sub_bits + 2) * sub;

  static size_t index(int64_t ns) {
    auto v = static_cast<uint64_t>(std::max<int64_t>(ns, 0));
    if (v < 2 * sub)
      return static_cast<size_t>(v);
    int k = std::bit_width(v) - 1;
    if (k > max_exp) {
      k = max_exp;
      v = (uint64_t{1} << (max_exp + 1)) - 1;
    }
    int shift = k - sub_bits;
    return static_cast<size_t>((k - sub_bits + 1) * sub + ((v >> shift) - sub));
  }

  static uint64_t midpoint(size_t i) {
    if (i < 2 * sub)
      return i;
    auto group = i / sub;
    auto shift = group - 1;
    auto lower = (sub + i % sub) << shift;
    return lower + ((uint64_t{1} << shift) >> 1);
  }

  std::array<std::atomic<uint64_t>, size> buckets_{};
};

/// Throughput, latency percentiles and CPU of one measured load.
struct load_figures {
  double ops_per_s = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  double p999_ms = 0;
  cpu_meter cpu;
};

/// Returns `ops_per_s` with the percentiles of `hist` and the CPU of `cpu`.
load_figures figures_of(double ops_per_s, const histogram& hist,
                        const cpu_meter& cpu);

// -- closed-loop load ---------------------------------------------------------

/// Shared state of a closed loop: a fixed number of slots, each issuing its
/// next request from the completion of the previous one. Completions are
/// counted, and their latencies recorded, only inside the window that
/// follows the warm-up.
struct load_state {
  std::atomic<bool> stop{false};
  std::atomic<int64_t> outstanding{0};
  std::atomic<uint64_t> completed{0};
  std::atomic<uint64_t> in_window{0};
  // Set before the first request is issued; read-only afterwards.
  int64_t t0_ns = 0;
  int64_t window_start_ns = 0;
  int64_t window_end_ns = 0;
  histogram hist;
  // CPU use inside the window (set by run_timed).
  cpu_meter cpu;

  /// Fixes the timeline of a run that starts now and lasts `duration_s`.
  void start_clock(double duration_s) {
    t0_ns = now_ns();
    window_start_ns = t0_ns + to_ns(duration_s * warmup_share);
    window_end_ns = t0_ns + to_ns(duration_s);
  }

  /// Records a completion; returns false once the slot must stop, in which
  /// case the slot no longer counts as outstanding.
  bool complete(int64_t start_ns, int64_t end_ns) {
    completed.fetch_add(1, std::memory_order_relaxed);
    if (end_ns >= window_start_ns && end_ns < window_end_ns) {
      in_window.fetch_add(1, std::memory_order_relaxed);
      hist.record(end_ns - start_ns);
    }
    if (stop.load(std::memory_order_relaxed)) {
      outstanding.fetch_sub(1);
      return false;
    }
    return true;
  }

  /// Records a failed request; its slot stops.
  void fail(caf::error err) {
    {
      std::lock_guard guard{mtx_};
      if (!first_error_)
        first_error_ = std::move(err);
    }
    outstanding.fetch_sub(1);
  }

  /// Returns the first failure, if any.
  caf::error error() const {
    std::lock_guard guard{mtx_};
    return first_error_;
  }

  /// Returns the length of the measured window in seconds.
  double window_s() const {
    return to_s(window_end_ns - window_start_ns);
  }

  /// Returns the completions per second inside the window.
  double ops_per_s() const {
    return static_cast<double>(in_window.load()) / window_s();
  }

  /// Returns the throughput, percentiles and CPU of the window.
  load_figures figures() const {
    return figures_of(ops_per_s(), hist, cpu);
  }

private:
  mutable std::mutex mtx_;
  caf::error first_error_;
};

/// Optional callbacks of `run_timed`.
struct timed_hooks {
  /// Runs on the driving thread when the measured window opens and closes.
  std::function<void()> window_opened;
  std::function<void()> window_closed;
};

/// Drives a closed loop from the calling thread until its window closes:
/// one progress line per second, the hooks at the window's edges, then it
/// stops the loop and waits (bounded) for the requests still in flight.
caf::error run_timed(load_state& st, const std::string& label,
                     const std::string& unit, const progress_fn& progress,
                     const timed_hooks& hooks = {});

/// A closed loop of `total` operations in which every one counts: the
/// window spans the whole (bounded) run.
struct counted_load : load_state {
  uint64_t total = 0;
  std::atomic<uint64_t> next{0};

  /// Returns the number of the next operation to issue, or nothing once
  /// all are issued; the calling slot then stops.
  std::optional<uint64_t> take() {
    auto i = next.fetch_add(1);
    if (i < total)
      return i;
    outstanding.fetch_sub(1);
    return std::nullopt;
  }
};

/// Drives a counted load from the calling thread: starts `concurrency`
/// slots (at most `total`) with `issue`, then waits until all slots stopped
/// or `timeout_ns` passed, with one progress line per second ("[label] 3 s:
/// `verb` 1200/5000"). Returns the seconds it took; `st.cpu` holds the CPU
/// of that time and the slots are told to stop.
double run_counted(counted_load& st, size_t concurrency, int64_t timeout_ns,
                   const std::function<void()>& issue, const std::string& label,
                   const std::string& verb, const progress_fn& progress);

/// Returns a timeout error if only `done` of `n` `what` finished in time
/// ("label: only 5 of 10 grains activated in time"), or no error.
caf::error shortfall(const std::string& label, uint64_t done, uint64_t n,
                     const std::string& what);

// -- temporary directories and process memory ---------------------------------

/// Creates a fresh directory "granary-bench-`tag`-XXXXXX" under `parent`
/// (/tmp when empty).
caf::expected<std::string> make_temp_dir(const std::string& parent,
                                         const char* tag);

/// Removes a temporary directory when it goes out of scope.
struct temp_dir {
  std::string path;

  ~temp_dir();
};

/// Resident set size of this process in bytes, from /proc/self/statm.
uint64_t rss_bytes();

/// RSS after returning freed heap pages to the kernel, so that memory that
/// earlier scenarios freed neither hides nor inflates a growth.
uint64_t settled_rss_bytes();

} // namespace granary::bench

#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

namespace granary {

/// The clock seam: wall-clock milliseconds since the epoch. Durable timers
/// store due times in this clock; a simulation can substitute its own.
class clock {
public:
  virtual ~clock();

  /// Milliseconds since the Unix epoch.
  virtual int64_t now_ms() const = 0;
};

/// The system's wall clock (under a simulation, the virtual wall clock of
/// the calling thread's process).
class system_clock final : public clock {
public:
  int64_t now_ms() const override;
};

/// A clock that moves only when told to (for tests).
class manual_clock final : public clock {
public:
  explicit manual_clock(int64_t start_ms = 1'000'000)
      : now_(start_ms) {}

  int64_t now_ms() const override {
    return now_.load();
  }

  /// Moves the clock forward by `ms`.
  void advance(int64_t ms) {
    now_ += ms;
  }

private:
  std::atomic<int64_t> now_;
};

/// Returns a shared system clock.
std::shared_ptr<clock> make_system_clock();

} // namespace granary

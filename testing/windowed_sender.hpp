#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <vector>

#include <caf/error.hpp>

#include "runtime/assert.hpp"

namespace granary::testing {

/// The sending loop of the crash children: starts items 0..count-1 with at
/// most `window` in flight, and starts a failed item again after
/// `retry_delay` (with the same id, so receivers deduplicate it) until
/// every item was acknowledged once.
class windowed_sender {
public:
  /// Reports the outcome of one attempt.
  using done_fn = std::function<void(const caf::error&)>;

  /// Starts attempt at item `i`; calls `done` exactly once, from any thread
  /// (inline too).
  using send_fn = std::function<void(int64_t i, done_fn done)>;

  /// Sees each outcome, in order, before it counts: `acks` is how often
  /// `i` has now been acknowledged (0 after an error; above 1 is a
  /// duplicate acknowledgement, which a test reports). Runs under the
  /// sender's lock: keep it short, and never call the sender from it.
  using result_fn
      = std::function<void(int64_t i, const caf::error& err, int acks)>;

  windowed_sender(int64_t count, int64_t window,
                  std::chrono::milliseconds retry_delay, send_fn send,
                  result_fn on_result)
      : count_(count)
      , window_(std::max<int64_t>(window, 1))
      , retry_delay_(retry_delay)
      , send_(std::move(send))
      , on_result_(std::move(on_result))
      , acks_(static_cast<size_t>(std::max<int64_t>(count, 0))) {
    GRANARY_ASSERT(count >= 0, "a sender has a count");
  }

  windowed_sender(const windowed_sender&) = delete;
  windowed_sender& operator=(const windowed_sender&) = delete;

  /// Returns once every item was acknowledged.
  void run() {
    int64_t next = 0;
    std::unique_lock guard{mtx_};
    while (acked_ < count_) {
      auto now = std::chrono::steady_clock::now();
      int64_t pick = -1;
      if (inflight_ < window_) {
        if (!retries_.empty() && retries_.front().due <= now) {
          pick = retries_.front().id;
          retries_.pop_front();
        } else if (next < count_) {
          pick = next++;
        }
      }
      if (pick < 0) {
        auto until = now + std::chrono::milliseconds{50};
        if (!retries_.empty())
          until = std::min(until, retries_.front().due);
        cv_.wait_until(guard, until);
        continue;
      }
      ++inflight_;
      // The callback may run inline (an admission error) and takes the
      // mutex itself.
      guard.unlock();
      send_(pick, [this, pick](const caf::error& err) { on_done(pick, err); });
      guard.lock();
    }
  }

private:
  struct retry {
    int64_t id;
    std::chrono::steady_clock::time_point due;
  };

  void on_done(int64_t i, const caf::error& err) {
    std::lock_guard guard{mtx_};
    GRANARY_ASSERT(i >= 0 && i < count_, "an outcome names a sent item");
    auto& acks = acks_[static_cast<size_t>(i)];
    if (!err)
      ++acks;
    on_result_(i, err, err ? 0 : acks);
    if (err)
      retries_.push_back(
          retry{i, std::chrono::steady_clock::now() + retry_delay_});
    else if (acks == 1)
      ++acked_;
    --inflight_;
    cv_.notify_one();
  }

  const int64_t count_;
  const int64_t window_;
  const std::chrono::milliseconds retry_delay_;
  send_fn send_;
  result_fn on_result_;
  std::mutex mtx_;
  std::condition_variable cv_;
  int64_t inflight_ = 0;
  // Distinct items acknowledged: a callback that runs twice (a runtime
  // bug) cannot end the run early.
  int64_t acked_ = 0;
  std::vector<int> acks_;
  std::deque<retry> retries_;
};

} // namespace granary::testing

#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "cluster/transport/transport.hpp"

namespace granary::cluster {

/// What a `faulty_transport` does to outbound frames. Rates are
/// probabilities in [0, 1], drawn per frame from one seeded generator.
struct fault_config {
  /// Seeds the generator; the same seed and the same sequence of `send`
  /// calls give the same decisions.
  uint64_t seed = 1;
  /// A dropped frame is reported as sent and never reaches the inner
  /// transport.
  double drop_rate = 0;
  /// A duplicated frame goes out twice (each copy then faces delay and
  /// reorder on its own).
  double duplicate_rate = 0;
  /// A delayed frame waits a uniform time in [0, max_delay] first.
  double delay_rate = 0;
  /// A reordered frame is held back until the next frame to the same peer
  /// has gone out, or for at most max_delay.
  double reorder_rate = 0;
  /// Bound of delays and of holding a reordered frame.
  std::chrono::milliseconds max_delay{20};
  /// Frames held at the same time; beyond it frames go out undisturbed.
  size_t max_held = 10000;
};

/// Counters of injected faults.
struct fault_stats {
  /// Frames dropped.
  uint64_t dropped = 0;
  /// Extra copies sent.
  uint64_t duplicated = 0;
  /// Frames delayed.
  uint64_t delayed = 0;
  /// Frames held back to swap places with a later frame.
  uint64_t reordered = 0;
  /// Held frames that the inner transport refused when they were released.
  uint64_t release_errors = 0;
};

/// Decorates another transport with seeded drop, duplication, delay and
/// reordering of outbound frames, for tests and simulations. Inbound frames
/// and everything else pass through.
///
/// Decisions are deterministic given the seed and the order of `send`
/// calls. Held frames are released by a timer thread of the decorator, so
/// the interleaving of delayed frames with later sends depends on timing;
/// a reordered frame released by the next frame to its peer does not.
class faulty_transport final : public transport {
public:
  /// Wraps `inner`, which must not be started yet.
  faulty_transport(std::shared_ptr<transport> inner, fault_config config);

  /// Stops the decorator and the inner transport.
  ~faulty_transport() override;

  faulty_transport(const faulty_transport&) = delete;
  faulty_transport& operator=(const faulty_transport&) = delete;

  /// Forwards to the inner transport.
  void set_handler(frame_handler handler) override;

  /// Starts the inner transport and the timer thread.
  caf::expected<uint16_t> start(const endpoint& listen) override;

  /// Applies the faults, then forwards whatever is left. Errors of frames
  /// sent at once are returned; held frames report theirs in `faults()`.
  caf::error send(const peer_address& to, const Frame& frame) override;

  /// Drops held frames, stops the timer thread and the inner transport.
  void stop() override;

  /// The inner transport's counters.
  transport_stats stats() const override;

  /// Counters of injected faults.
  fault_stats faults() const;

private:
  class impl;
  std::unique_ptr<impl> impl_;
};

} // namespace granary::cluster

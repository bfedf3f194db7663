#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "runtime/grain_base.hpp"
#include "runtime/grain_id.hpp"

namespace granary {

namespace wire {
class Envelope;
} // namespace wire

/// The runtime's view of a cluster: which partitions this silo owns and how
/// to reach the owners of the others. `cluster/` implements it over the
/// silo-to-silo transport; a silo without one owns every partition.
class remote_router {
public:
  /// The owner's verdict on a durable message: `caf::none` once it is
  /// durable there, otherwise the error and when to try again.
  using ack_fn = std::function<void(const caf::error&, int64_t retry_after_ms)>;

  /// The answer to a transient call.
  using reply_fn = std::function<void(caf::expected<message_ptr>)>;

  virtual ~remote_router();

  /// True if this silo owns partition `p`.
  virtual bool owns(uint32_t p) const = 0;

  /// Sends durable `env` to the owner of partition `p`. `ack` runs at most
  /// once, on any thread, with the owner's verdict, or with an error when
  /// the message or its answer was lost (the caller decides whether to
  /// retry); a redelivery of the same message (same `ack_key`) while an
  /// earlier one is unanswered may replace it. Must not block.
  virtual void deliver(uint32_t p, std::shared_ptr<const wire::Envelope> env,
                       ack_fn ack)
      = 0;

  /// Transient call to `target` on the owner of partition `p`; `reply`
  /// runs once, at the latest when `timeout` passed. Must not block.
  virtual void call(uint32_t p, const grain_id& target, message_ptr msg,
                    std::chrono::milliseconds timeout, reply_fn reply)
      = 0;
};

} // namespace granary

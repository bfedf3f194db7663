#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cluster/transport.hpp"
#include "runtime/remote.hpp"
#include "runtime/silo.hpp"

namespace granary::cluster {

/// Bounds of a `transport_router`.
struct router_config {
  /// Durable messages awaiting their owner's acknowledgement; beyond, new
  /// deliveries fail with `overloaded` (the outbox retries them).
  size_t max_pending_acks = 65'536;
  /// Transient calls awaiting their reply.
  size_t max_pending_calls = 65'536;
  /// An acknowledgement that does not come within this long counts as lost
  /// (the outbox redelivers; the receiver deduplicates).
  std::chrono::milliseconds ack_timeout{5'000};
};

/// Connects a silo to the other silos of its cluster over a `transport`:
/// it routes durable messages and transient calls for partitions owned by
/// other silos, and runs those that other silos send here. Ownership is a
/// static table for now (the partition map from membership replaces it).
///
/// Wire use: durable messages travel as `EnvelopeBatch` frames and are
/// answered by `AckBatch` frames carrying the envelope's `ack_key`; calls
/// travel as `Call` frames answered by `CallReply`. Answers go to the
/// sender's listen address from its handshake.
class transport_router : public remote_router {
public:
  /// `owners[p]` is the silo that owns partition `p`; `self` is this one.
  /// Pass the router in `silo_config::router`, then `attach` the silo.
  transport_router(transport& net, peer_address self,
                   std::vector<peer_address> owners, router_config cfg = {});

  /// Starts running what other silos send to `local`; frames that arrive
  /// before are dropped (their senders retry).
  void attach(silo& local);

  /// Stops the expiry thread; pending answers fail with `silo_stopped`.
  ~transport_router() override;

  transport_router(const transport_router&) = delete;
  transport_router& operator=(const transport_router&) = delete;

  /// The handler to install on the transport (before it starts).
  frame_handler handler();

  bool owns(uint32_t p) const override;

  void deliver(uint32_t p, std::shared_ptr<const wire::Envelope> env,
               ack_fn ack) override;

  void call(uint32_t p, const grain_id& target, message_ptr msg,
            std::chrono::milliseconds timeout, reply_fn reply) override;

  /// Stops routing: pending answers fail, new requests fail at once.
  void stop();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace granary::cluster

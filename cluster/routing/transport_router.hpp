#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cluster/transport/transport.hpp"
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

/// Where one partition is served, as this silo last learned it.
struct route {
  /// The owning silo; an empty silo id while the partition has no owner.
  peer_address owner;
  /// The epoch at which the owner serves the partition (0: unfenced, for
  /// fixed member lists).
  uint64_t epoch = 0;
  /// False while the owner is dead or the partition is being handed off:
  /// durable messages then wait in their senders' outboxes and transient
  /// calls fail at once with `partition_unavailable`.
  bool available = true;
  /// Why the partition is unavailable, for error messages.
  std::string why;
};

/// Connects a silo to the other silos of its cluster over a `transport`:
/// it routes durable messages and transient calls for partitions owned by
/// other silos, and runs those that other silos send here.
///
/// Routes come from the partition map (see `cluster_agent`) and change at
/// run time. Every frame names the epoch at which the sender believes the
/// receiver owns the target's partition; the receiver refuses (`not_owner`)
/// a partition it does not serve or an epoch other than its own, and the
/// sender then re-reads the map (`on_stale_route`) while its outbox retries.
/// So a grain only ever runs where the map and the owner agree.
///
/// Wire use: durable messages travel as `EnvelopeBatch` frames and are
/// answered by `AckBatch` frames carrying the envelope's `ack_key`; calls
/// travel as `Call` frames answered by `CallReply`. Answers go to the
/// sender's listen address from its handshake.
class transport_router : public remote_router {
public:
  /// A router for `partitions` partitions, none of them routed yet (all
  /// unavailable); `self` is this silo. Pass the router in
  /// `silo_config::router`, then `attach` the silo.
  transport_router(transport& net, peer_address self, uint32_t partitions,
                   router_config cfg = {});

  /// A router with a fixed table: `owners[p]` owns partition `p`, unfenced.
  transport_router(transport& net, peer_address self,
                   std::vector<peer_address> owners, router_config cfg = {});

  /// Replaces the route of partition `p`. Thread-safe; takes effect for
  /// the next message.
  void set_route(uint32_t p, route r);

  /// Returns the route of partition `p`.
  route route_of(uint32_t p) const;

  /// This silo.
  const peer_address& self() const;

  /// Runs `fn` (on a transport thread; must not block) when another silo
  /// refused a message because this silo's route is stale. Set before
  /// traffic starts.
  void on_stale_route(std::function<void()> fn);

  /// Runs `fn(from, frame)` for frames the router does not handle itself
  /// (pings, membership, handoff). Set before traffic starts.
  void on_other_frame(frame_handler fn);

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

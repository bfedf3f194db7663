#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "cluster/transport/transport.hpp"

namespace granary::cluster {

/// Settings of an `asio_transport`. Every queue and wait has a bound here.
struct asio_transport_config {
  /// Silos only talk to silos with the same cluster id.
  std::string cluster_id;
  /// This silo's cluster-unique name.
  std::string silo_id;
  /// This silo process's incarnation, sent in the handshake.
  uint64_t incarnation = 0;
  /// Host that peers use to reach us; empty means the listen host.
  std::string advertised_host;
  /// Threads running the io_context.
  size_t io_threads = 1;
  /// Largest frame, without its length prefix, that is sent or accepted.
  size_t max_frame_size = 16 * 1024 * 1024;
  /// Frames queued per peer (not yet written) before `send` says overloaded.
  size_t max_queued_frames = 65536;
  /// Bytes queued per peer before `send` says overloaded.
  size_t max_queued_bytes = 64 * 1024 * 1024;
  /// Peers (silo ids) this transport sends to.
  size_t max_peers = 4096;
  /// Accepted connections open at the same time; more are closed at once.
  size_t max_inbound_connections = 1024;
  /// Time to connect and complete the handshake.
  std::chrono::milliseconds handshake_timeout{5000};
  /// A connection that completes no frame for this long is closed; a peer
  /// that sends nothing but half a frame is cut off after it too.
  std::chrono::milliseconds idle_timeout{60000};
  /// First delay before reconnecting to a peer after a failure.
  std::chrono::milliseconds reconnect_initial{20};
  /// Longest delay between reconnect attempts.
  std::chrono::milliseconds reconnect_max{2000};
  /// Seeds the reconnect jitter; 0 picks a random seed.
  uint64_t jitter_seed = 0;
  /// A `send` to an idle connection writes at once from the caller's
  /// thread, unless the previous such write was less than this long ago:
  /// then the frame queues and the io thread writes it with whatever
  /// follows, so that bursts leave in batches.
  std::chrono::microseconds batch_window{20};
};

/// The default transport: TCP with length-prefixed protobuf frames on
/// Boost.Asio.
///
/// Each peer silo gets one outbound connection, opened on the first `send`
/// and reopened with exponential backoff (with jitter) after failures. Frames
/// are encoded by `send` into the peer's queue; while a write is in flight,
/// later frames accumulate and leave together in the next write. A frame to
/// an idle connection is written at once by `send` (see `batch_window`).
/// Inbound
/// connections from other silos deliver frames to the handler.
///
/// Threads: `send`, `stats` and `stop` are thread-safe. The frame handler
/// runs on one of the transport's io threads; frames of one connection
/// arrive one at a time and in order. With more than one io thread, frames
/// of different connections may be handled concurrently. The handler may
/// call `send`, but a slow handler stalls its connection (and, with one io
/// thread, the whole transport).
class asio_transport final : public transport {
public:
  /// Creates a stopped transport.
  explicit asio_transport(asio_transport_config config);

  /// Stops the transport.
  ~asio_transport() override;

  asio_transport(const asio_transport&) = delete;
  asio_transport& operator=(const asio_transport&) = delete;

  /// See `transport::set_handler`.
  void set_handler(frame_handler handler) override;

  /// See `transport::start`. Fails with `invalid_config` for bad settings or
  /// when the address cannot be bound.
  caf::expected<uint16_t> start(const endpoint& listen) override;

  /// See `transport::send`.
  caf::error send(const peer_address& to, const Frame& frame) override;

  /// See `transport::stop`.
  void stop() override;

  /// See `transport::stats`.
  transport_stats stats() const override;

private:
  class impl;
  std::unique_ptr<impl> impl_;
};

} // namespace granary::cluster

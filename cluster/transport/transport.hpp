#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace granary::cluster {

class Frame;

/// A TCP address, e.g. {"127.0.0.1", 7100}.
struct endpoint {
  /// Host name or IP address.
  std::string host;
  /// TCP port; 0 asks `transport::start` for an ephemeral port.
  uint16_t port = 0;

  /// Renders the endpoint as "host:port".
  std::string to_string() const;
};

/// Parses "host:port" or "[v6]:port" (`invalid_config` naming the text and
/// the problem). `allow_any_port` admits port 0.
caf::expected<endpoint> parse_endpoint(std::string_view text,
                                       bool allow_any_port = false);

/// The silo a frame goes to: its identity and where it listens.
struct peer_address {
  /// Cluster-unique name of the silo; connections are kept per silo id.
  std::string silo_id;
  /// Where the silo accepts connections.
  endpoint address;
};

/// The silo a frame came from, as stated in its handshake.
struct peer_info {
  /// Cluster-unique name of the silo.
  std::string silo_id;
  /// Process incarnation of the silo; grows when it restarts.
  uint64_t incarnation = 0;
  /// Where the silo accepts connections, to send answers back.
  endpoint address;
};

/// Called for every inbound frame. The transport may be on its own thread;
/// see the implementation for which one. The handler may move from `frame`.
using frame_handler = std::function<void(const peer_info& from, Frame&& frame)>;

/// Counters of a transport, for tests, benchmarks and metrics.
struct transport_stats {
  /// Frames accepted by `send` and written to a socket.
  uint64_t frames_sent = 0;
  /// Write operations on sockets; each one carries a batch of frames.
  uint64_t writes = 0;
  /// Bytes written to sockets, length prefixes included.
  uint64_t bytes_sent = 0;
  /// Frames handed to the handler.
  uint64_t frames_received = 0;
  /// Bytes read from sockets.
  uint64_t bytes_received = 0;
  /// Outbound connections that completed their handshake.
  uint64_t connects = 0;
  /// Outbound connection attempts that failed before the handshake ended.
  uint64_t connect_failures = 0;
  /// Established outbound connections that were lost afterwards.
  uint64_t disconnects = 0;
  /// Handshakes refused, by us or by the peer (wrong cluster or silo).
  uint64_t handshakes_refused = 0;
  /// Connections closed for bad input: oversized, unparsable or unexpected
  /// frames.
  uint64_t protocol_errors = 0;
  /// Connections closed because a handshake or frame took too long.
  uint64_t timeouts = 0;
  /// Sends rejected because the peer's queue was full.
  uint64_t overloaded = 0;
  /// Frames that were queued or written when their connection died; the
  /// transport does not resend them (the durable layer redelivers).
  uint64_t frames_lost = 0;
};

/// Carries frames between the silos of one cluster. Delivery is best effort
/// and in order per connection: a frame can be lost when a connection dies,
/// and never arrives twice from the transport itself. Implementations never
/// throw out of these functions.
class transport {
public:
  virtual ~transport();

  /// Sets the handler for inbound frames. Call before `start`.
  virtual void set_handler(frame_handler handler) = 0;

  /// Starts accepting connections on `listen` and returns the bound port
  /// (useful when `listen.port` is 0).
  virtual caf::expected<uint16_t> start(const endpoint& listen) = 0;

  /// Queues `frame` for `to` and returns at once. Fails with `overloaded`
  /// when the peer's bounded queue is full, `payload_too_large` when the
  /// frame exceeds the maximum frame size, `invalid_config` while the peer
  /// refuses our handshake and `silo_stopped` after `stop`.
  virtual caf::error send(const peer_address& to, const Frame& frame) = 0;

  /// Closes all connections and joins the transport's threads. Queued
  /// frames are dropped. A stopped transport cannot be started again. Must
  /// not be called from the frame handler.
  virtual void stop() = 0;

  /// Returns a snapshot of the counters.
  virtual transport_stats stats() const = 0;
};

} // namespace granary::cluster

#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "cluster/transport/transport.hpp"
#include "http/message.hpp"
#include "runtime/error.hpp"
#include "runtime/silo.hpp"

namespace granary::cluster {

namespace detail {
class gateway_state;
} // namespace detail

/// Deepest nesting of objects and arrays that a request body may have
/// (the body itself is level 1); deeper bodies get a 400 before parsing.
inline constexpr size_t max_json_depth = 64;

/// Where the gateway listens and its bounds.
struct gateway_config {
  /// Address to bind (an IP literal or "localhost"); port 0 picks a free one.
  endpoint listen{"127.0.0.1", 0};
  /// Threads running the HTTP I/O and the requests' steps (no step waits:
  /// silo calls, sends, relays and waits complete asynchronously).
  size_t threads = 1;
  /// Requests in progress (waiting for a silo, another gateway or a poll
  /// timer); beyond that, 429.
  size_t max_pending = 1'024;
  /// Connections beyond this many are answered 503 (with `Retry-After`)
  /// and closed.
  size_t max_connections = 256;
  /// Largest request header (431 beyond).
  size_t max_header_bytes = 16 * 1024;
  /// Largest request body (413 beyond).
  size_t max_body_bytes = 1 << 20;
  /// A connection idle between requests this long is closed; also bounds
  /// the receipt of each request body and the sending of each answer.
  std::chrono::milliseconds idle_timeout{30'000};
  /// A request's header must arrive within this long (from the opening of
  /// the connection for its first request, from the first byte for later
  /// ones); beyond that, 408 and the connection is closed. This keeps slow
  /// clients from holding connection slots.
  std::chrono::milliseconds header_timeout{10'000};
  /// Deadline of each silo call and durable send.
  std::chrono::milliseconds call_timeout{10'000};
  /// Upper bound of `wait_ms` (results and updates).
  std::chrono::milliseconds max_wait{60'000};
  /// Largest `limit` of a list request.
  size_t max_list = 1'000;
  /// Shown by `GET /v1/cluster`.
  std::string cluster_id = "local";
  /// Shown by `GET /v1/cluster`.
  std::string silo_id = "silo-0";
  /// In a cluster: renders the members and the partition map as JSON
  /// fields (`"silos":[...],...`) for `GET /v1/cluster`; unset for a silo
  /// on its own.
  std::function<std::string()> cluster_fields;
  /// In a cluster: the gateway address ("host:port") of the silo that owns
  /// partition `p` when that is another silo, else empty. History and list
  /// requests for such partitions are relayed there.
  std::function<std::string(uint32_t p)> remote_gateway;

  /// Returns `invalid_config` naming the first bad field.
  caf::error validate() const;
};

/// Counters of a running gateway.
struct gateway_stats {
  /// Connections open now.
  size_t open_connections = 0;
  /// Connections answered 503 because `max_connections` were open.
  uint64_t rejected_connections = 0;
  /// Connections closed because a request header did not arrive in time.
  uint64_t header_timeouts = 0;
  /// Requests handed to the endpoints, errors included.
  uint64_t requests = 0;
  /// Requests in progress (waiting for a silo, another gateway or a poll).
  size_t pending = 0;
};

/// The HTTP/1.1 JSON gateway of one silo. Messages travel as protobuf's
/// JSON mapping of any message type linked into the process, looked up by
/// full name. Endpoints (errors are `{"error": {"code", "message"}}`):
///
///     GET    /healthz
///     GET    /v1/cluster
///     POST   /v1/workflows/{type}/{id}/start
///     GET    /v1/workflows/{type}/{id}
///     GET    /v1/workflows/{type}/{id}/result?wait_ms=N
///     POST   /v1/workflows/{type}/{id}/signal|query|cancel|update
///     GET    /v1/workflows/{type}/{id}/history
///     GET    /v1/workflows?type=T&status=S&limit=N&cursor=C
///     POST   /v1/grains/{type}/{key}/call|send
///     GET    /v1/dead-letters?limit=N
///     POST   /v1/dead-letters/{type}/{key}/{msg_id}/requeue
///     DELETE /v1/dead-letters/{type}/{key}/{msg_id}
///
/// Path segments are percent-decoded. In a cluster, history, requeue and
/// drop go to the gateway of the silo that owns the grain's partition; the
/// workflow list and the dead-letter list gather every silo's (`local=1`
/// asks for this silo's only). While a silo is down both lists answer with
/// what the others have and name the gateways that did not answer in
/// `unreachable` (with their partitions, for workflows). docs/HTTP_API.md
/// is the reference. Requests are asynchronous end to end: no thread
/// waits for a silo call, a relay or a `wait_ms`; only storage reads and
/// dead-letter administration (blocking in the silo's API) run on a pool
/// of two threads. Every member function is thread-safe; the silo must
/// outlive the gateway.
class gateway {
public:
  /// Binds, listens and starts serving `s`.
  static caf::expected<std::unique_ptr<gateway>> start(gateway_config cfg,
                                                       silo& s);

  /// Stops (see `stop`).
  ~gateway();

  gateway(const gateway&) = delete;
  gateway& operator=(const gateway&) = delete;

  /// The port the gateway listens on.
  uint16_t port() const;

  /// The bound address as "host:port".
  std::string address() const;

  /// Counters.
  gateway_stats stats() const;

  /// Closes the listener and every connection (requests in progress are
  /// not answered), lets running relays and storage work finish (each is
  /// bounded by its deadline) and joins the threads. Idempotent.
  void stop();

private:
  explicit gateway(std::unique_ptr<detail::gateway_state> state);

  std::unique_ptr<detail::gateway_state> state_;
};

/// Percent-encodes `segment` for use as one path segment.
using http::percent_encode;

/// Returns the `errc` whose name is `name`, or `errc::unspecified`.
errc errc_from_name(std::string_view name);

} // namespace granary::cluster

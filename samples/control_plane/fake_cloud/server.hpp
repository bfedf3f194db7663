#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "samples/control_plane/fake_cloud/types.hpp"

namespace fake_cloud {

namespace detail {

class server_state;

} // namespace detail

/// The faults the server injects. All random decisions derive from `seed`
/// and the request itself (method, path, idempotency key and how often the
/// server has seen that request), so a given sequence of attempts per key
/// meets the same faults on every run, however requests interleave.
struct fault_config {
  /// Seeds every random decision.
  uint64_t seed = 1;
  /// Each faultable request waits a uniform latency in [min, max].
  std::chrono::milliseconds latency_min{0};
  /// Upper bound of the latency.
  std::chrono::milliseconds latency_max{0};
  /// Fraction of mutations answered 500 or 503 before they are applied.
  double fail_rate = 0;
  /// Fraction of mutations applied and then answered 500 (the case
  /// idempotency keys exist for).
  double fail_after_apply_rate = 0;
  /// Token bucket refill rate in requests per second; 0 disables it.
  double rate_limit_per_s = 0;
  /// Token bucket size.
  uint32_t rate_limit_burst = 1;
  /// Fraction of requests held for `timeout` and then closed unanswered.
  double timeout_rate = 0;
  /// How long a timed-out request holds its connection.
  std::chrono::milliseconds timeout{1'000};
  /// Fraction of timed-out mutations that are applied before the hold.
  double timeout_apply_rate = 0.5;
};

/// Where the server listens, its bounds and its faults.
struct server_config {
  /// Address to bind, an IP literal.
  std::string host = "127.0.0.1";
  /// Port to bind; 0 picks an ephemeral port (see `server::port`).
  uint16_t port = 0;
  /// Threads running the io_context.
  size_t threads = 1;
  /// Connections beyond this many are closed at once, unanswered.
  size_t max_connections = 64;
  /// Largest request header accepted (431 beyond).
  size_t max_header_bytes = 8 * 1024;
  /// Largest request body accepted (413 beyond).
  size_t max_body_bytes = 64 * 1024;
  /// A connection idle (or slow to send a request) this long is closed.
  std::chrono::milliseconds idle_timeout{5'000};
  /// Idempotency keys the record holds; new keys beyond get 507.
  size_t max_keys = 1'000'000;
  /// The faults to inject.
  fault_config faults;
};

/// Returns `invalid_config` naming the first bad field of `cfg`.
caf::error validate(const server_config& cfg);

/// Returns `invalid_config` naming the first bad field of `cfg`.
caf::error validate(const fault_config& cfg);

/// Counters of the server's connections.
struct connection_stats {
  /// Connections open now.
  size_t open = 0;
  /// Connections accepted since start.
  uint64_t accepted = 0;
  /// Connections closed at once because `max_connections` were open.
  uint64_t rejected = 0;
};

/// An HTTP/1.1 server that imitates a slow, flaky, throttled cloud
/// provider API (see README.md), on granary's http/ server (latencies and
/// held requests wait on timers, not threads). It runs on its own
/// threads; every member function is thread-safe.
class server {
public:
  /// Binds, listens and starts the threads; `invalid_config` for a bad
  /// config, `unspecified` when the address cannot be bound.
  static caf::expected<std::unique_ptr<server>> start(server_config cfg);

  /// Stops (see `stop`).
  ~server();

  server(const server&) = delete;
  server& operator=(const server&) = delete;

  /// The port the server listens on.
  uint16_t port() const;

  /// The address the server listens on.
  const std::string& host() const;

  /// Replaces the faults for requests that arrive from now on;
  /// `invalid_config` (and no change) when `faults` is invalid.
  caf::error set_faults(const fault_config& faults);

  /// The mutation record's summary, as `GET /v1/_audit` renders it.
  audit_summary audit() const;

  /// Connection counters.
  connection_stats connections() const;

  /// Closes the listener and every connection (requests held by a timeout
  /// fault included) and joins the threads. Idempotent.
  void stop();

private:
  explicit server(std::shared_ptr<detail::server_state> state);

  std::shared_ptr<detail::server_state> state_;
};

} // namespace fake_cloud

#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <boost/asio/any_io_executor.hpp>
#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "http/message.hpp"

namespace granary::http {

namespace detail {
class server_core;
class session;
} // namespace detail

/// Why the server answers (or closes) a connection itself, without the
/// handler.
enum class refusal {
  /// `max_connections` are open (503, or closed at once).
  too_many_connections,
  /// The request header exceeds `max_header_bytes` (431).
  header_too_large,
  /// The request body exceeds `max_body_bytes` (413).
  body_too_large,
  /// The request header did not arrive within `header_timeout` (408).
  header_timeout,
  /// The request is not valid HTTP/1.1 (400).
  malformed,
  /// `max_pending` requests are in progress (429).
  too_many_pending,
  /// The handler let go of its responder without answering (500).
  dropped,
};

/// Returns the name of `r` ("header_too_large", ...).
std::string_view to_string(refusal r);

/// An answer the server gives itself: a status, a message that says why,
/// and a retry hint. A `server_config::render` makes a response of it.
struct server_error {
  refusal what = refusal::malformed;
  unsigned status = 400;
  std::string message;
  uint64_t retry_after_ms = 0;
};

/// Where a server listens, its bounds and how it words its own answers.
struct server_config {
  /// Address to bind: an IP literal or "localhost".
  std::string host = "127.0.0.1";
  /// Port to bind; 0 picks a free one (see `server::port`).
  uint16_t port = 0;
  /// Threads running the I/O and the handlers.
  size_t threads = 1;
  /// Connections beyond this many are refused.
  size_t max_connections = 256;
  /// Whether a refused connection gets an answer (503 with `Retry-After`)
  /// before it is closed; otherwise it is closed at once.
  bool answer_refused_connections = true;
  /// Largest request header (431 beyond).
  size_t max_header_bytes = 16 * 1024;
  /// Largest request body (413 beyond).
  size_t max_body_bytes = 1 << 20;
  /// A request's header must arrive within this long (from the opening of
  /// the connection for its first request, from the first byte for later
  /// ones); beyond that, 408 and the connection is closed. This keeps slow
  /// clients from holding connection slots.
  std::chrono::milliseconds header_timeout{10'000};
  /// A connection idle between requests this long is closed; also bounds
  /// the receipt of each request body and the sending of each answer.
  std::chrono::milliseconds idle_timeout{30'000};
  /// Requests handed to the handler and not answered yet; beyond, 429.
  size_t max_pending = 1'024;
  /// Sent as `Server`.
  std::string name = "granary";
  /// Makes the server's own answers; by default
  /// `{"error":"<refusal>","message":"..."}`.
  std::function<response(const server_error&)> render;

  /// Returns `invalid_config` naming the first bad field.
  caf::error validate() const;
};

/// Counters of a running server.
struct server_stats {
  /// Connections open now.
  size_t open_connections = 0;
  /// Connections accepted since the start, refused ones included.
  uint64_t accepted = 0;
  /// Connections refused because `max_connections` were open.
  uint64_t rejected_connections = 0;
  /// Connections closed because a request header did not arrive in time.
  uint64_t header_timeouts = 0;
  /// Requests handed to the handler.
  uint64_t requests = 0;
  /// Requests handed to the handler and not answered yet.
  size_t pending = 0;
};

/// Schedules work for one request, from any thread; copyable, so that
/// callbacks on other threads can hold it while the request's owner keeps
/// its `responder`. Work runs on the connection's strand, one piece at a
/// time, and only while the request waits for its answer: once it is
/// answered, or the connection is closed, or the server stops, it is
/// dropped without running.
class request_strand {
public:
  request_strand() = default;

  /// Runs `fn` on the connection's strand (at once when called there).
  void post(std::function<void()> fn) const;

  /// Runs `fn` on the connection's strand after `delay`. One timer per
  /// request: arming it again replaces what was armed before.
  void after(std::chrono::milliseconds delay, std::function<void()> fn) const;

  /// The connection's strand, for asynchronous work on behalf of the
  /// request (an HTTP client call, for instance).
  boost::asio::any_io_executor executor() const;

private:
  friend class responder;

  std::shared_ptr<detail::session> session_;
  uint64_t request_ = 0;
};

/// The way back to the client of one request. The handler may answer at
/// once or keep the responder and answer later from any thread; no thread
/// needs to wait for it. Exactly one of `send` and `drop` takes effect; a
/// responder destroyed before either answers 500 (`refusal::dropped`).
/// The connection reads its next request only after the answer, so a
/// responder is never confused with another request's.
/// Not thread-safe itself (one owner at a time); every member may be
/// called from any thread.
class responder {
public:
  responder() = default;
  responder(responder&& other) noexcept = default;
  responder& operator=(responder&& other) noexcept;
  ~responder();

  /// Whether this responder still owes the answer.
  explicit operator bool() const noexcept {
    return session_ != nullptr;
  }

  /// Answers the request.
  void send(response r);

  /// Closes the connection without an answer.
  void drop();

  /// Schedules work for this request (see `request_strand`).
  request_strand strand() const;

  /// Same as `strand().post(fn)`.
  void post(std::function<void()> fn) const;

  /// Same as `strand().after(delay, fn)`.
  void after(std::chrono::milliseconds delay, std::function<void()> fn) const;

  /// Same as `strand().executor()`.
  boost::asio::any_io_executor executor() const;

private:
  friend class detail::session;

  responder(std::shared_ptr<detail::session> s, uint64_t request);

  // Gives up the request (it no longer counts as pending).
  std::shared_ptr<detail::session> take();

  void release();

  std::shared_ptr<detail::session> session_;
  uint64_t request_ = 0;
};

/// Serves one request; see `responder`. Runs on an I/O thread: it must not
/// block.
using handler = std::function<void(request, responder)>;

/// An asynchronous HTTP/1.1 server with keep-alive (one request at a time
/// per connection) and the bounds of `server_config`. Every member
/// function is thread-safe.
class server {
public:
  /// Binds, listens and starts serving with `h`; `invalid_config` for a bad
  /// config or an address that cannot be bound.
  static caf::expected<std::unique_ptr<server>> start(server_config cfg,
                                                      handler h);

  /// Stops (see `stop`).
  ~server();

  server(const server&) = delete;
  server& operator=(const server&) = delete;

  /// The port the server listens on.
  uint16_t port() const;

  /// The bound address as "host:port".
  std::string address() const;

  /// The configuration.
  const server_config& config() const;

  /// Counters.
  server_stats stats() const;

  /// Closes the listener and every connection, drops what was scheduled
  /// for requests (`responder::post`, `after`), lets running I/O finish
  /// (bounded by `drain_limit`) and joins the threads. A responder
  /// answered after the stop does nothing. Idempotent.
  void stop(std::chrono::milliseconds drain_limit = std::chrono::seconds{2});

private:
  explicit server(std::shared_ptr<detail::server_core> core);

  std::shared_ptr<detail::server_core> core_;
};

} // namespace granary::http

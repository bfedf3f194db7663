#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/system/error_code.hpp>

#include "http/message.hpp"

namespace granary::http {

namespace detail {
class client_stream;
} // namespace detail

/// Bounds of client requests.
struct client_options {
  /// The deadline of one exchange: name lookup, connect, write and read
  /// together.
  std::chrono::milliseconds timeout{30'000};
  /// Larger response bodies are refused (`client_failure::too_large`).
  uint64_t max_response_bytes = 64 * 1024 * 1024;
};

/// A request to send.
struct client_request {
  verb method = verb::get;
  std::string target = "/";
  std::string body;
  /// Sent as `Content-Type` with a non-empty body.
  std::string content_type = "application/json";
  /// More header fields.
  std::vector<std::pair<std::string, std::string>> headers;
  /// Sent as `User-Agent`.
  std::string user_agent = "granary";
  /// Keep the connection open after the answer (`connection` reuses it);
  /// otherwise the request says `Connection: close`.
  bool keep_alive = false;
};

/// A response as the client received it.
struct client_response {
  unsigned status = 0;
  std::string body;
  fields headers;
  /// Whether the server keeps the connection open.
  bool keep_alive = false;

  /// The header `name` (empty when absent).
  std::string_view header(std::string_view name) const;
};

/// Why an exchange did not produce a response.
struct client_failure {
  /// What the client was doing.
  enum class stage { resolving, connecting, sending, reading };

  stage where = stage::connecting;
  boost::system::error_code ec;
  /// The deadline passed.
  bool timed_out = false;
  /// Not a byte of the answer arrived.
  bool received_nothing = true;
  /// The exchange used a connection that an earlier one had opened.
  bool reused_connection = false;
  /// The deadline that applied.
  std::chrono::milliseconds timeout{0};

  /// The response body exceeded `max_response_bytes`.
  bool too_large() const;

  /// "timed out after 200 ms while connecting", "failed while reading the
  /// response: end of stream", ...
  std::string describe() const;
};

/// A response, or why there is none.
struct client_result {
  std::optional<client_failure> failure;
  client_response response;

  explicit operator bool() const noexcept {
    return !failure;
  }
};

/// Sends `req` to `host:port` (an IP literal or a name) on a new
/// connection and reads the answer, within `opts.timeout`; blocks the
/// calling thread.
client_result fetch(const std::string& host, uint16_t port, client_request req,
                    const client_options& opts);

/// The same without blocking: runs on `ex` and calls `done` there, once.
void async_fetch(boost::asio::any_io_executor ex, std::string host,
                 uint16_t port, client_request req, client_options opts,
                 std::function<void(client_result)> done);

/// A synchronous keep-alive connection to one server, for one thread at a
/// time (`cancel` excepted): requests reuse it while the server keeps it
/// open, and a new one is opened when it is closed. It can also read an
/// answer as a stream.
class connection {
public:
  /// Connects on the first request.
  connection(std::string host, uint16_t port, client_options opts);

  ~connection();

  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  /// Sends `req` and reads the answer, before `deadline`. The connection
  /// stays open when both sides keep it alive.
  client_result exchange(client_request req,
                         std::chrono::steady_clock::time_point deadline);

  /// Sends `req` and reads the answer's header before `deadline`; the body
  /// then comes through `read_some`, with no limit on its total size (the
  /// reader bounds what it keeps).
  client_result open_stream(client_request req,
                            std::chrono::steady_clock::time_point deadline);

  /// Appends the next part of the streamed body to `out`, waiting without
  /// a time limit; false at its end (`failure` unset) or on a failure.
  bool read_some(std::string& out, std::optional<client_failure>& failure);

  /// Whether a connection is open.
  bool is_open() const;

  /// Closes the connection.
  void close();

  /// Makes a running or later `exchange`, `open_stream` or `read_some`
  /// fail soon. Thread-safe. `close` and a new request undo it.
  void cancel();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace granary::http

#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "etcd_api.pb.h"

namespace granary::cluster {

/// Settings of an `etcd_client`.
struct etcd_client_config {
  /// "host:port" of etcd members' client URLs (an "http://" prefix is
  /// accepted), in order of preference; at least one.
  std::vector<std::string> endpoints = {"127.0.0.1:2379"};
  /// Bounds every request to one endpoint: name resolution, connect, write
  /// and read. A request that fails over may take this long per endpoint.
  std::chrono::milliseconds request_timeout{2000};
  /// Largest response body accepted.
  size_t max_response_bytes = 64 * 1024 * 1024;
};

/// A synchronous client for etcd's v3 JSON gateway (HTTP/1.1 on the client
/// port), with one keep-alive connection to one endpoint at a time.
/// Requests are serialized by a mutex; every attempt is bounded by
/// `request_timeout`.
///
/// Failover: a request goes to the endpoint that answered last (the first
/// one at the start). When it cannot connect there, the connection fails
/// or the endpoint does not answer in time, the request goes to the next
/// endpoint, and so on once around the list; the endpoint that answers is
/// used from then on. A write that timed out at one endpoint may have been
/// applied, so its repeat at the next one is a compare-and-set that then
/// reports a conflict (or an unconditional put): the caller re-reads.
///
/// Errors name the endpoint and the path: `errc::storage_failure` when etcd
/// cannot be reached or fails the request, `errc::timeout` when it does not
/// answer in time (the outcome of a write is then unknown), and
/// `errc::malformed_message` for an unparsable answer. When every endpoint
/// failed, the error names each with its failure, and is `timeout` when any
/// of them timed out.
///
/// A request is retried once, on a new connection, only when a reused
/// connection fails before any byte of the answer arrived (etcd closed an
/// idle connection or restarted). Should etcd have applied the first attempt
/// and died before answering, the retry of a compare-and-set txn reports a
/// conflict, and the caller's re-read shows its own write.
class etcd_client {
public:
  /// Creates a client; connects on the first request.
  explicit etcd_client(etcd_client_config cfg);

  ~etcd_client();

  etcd_client(const etcd_client&) = delete;

  etcd_client& operator=(const etcd_client&) = delete;

  /// POSTs `json` to `path` (e.g. "/v3/kv/range") and returns the body of
  /// a 200 answer.
  caf::expected<std::string> post(std::string_view path, std::string_view json);

  /// GETs `path` (e.g. "/health") and returns the body of a 200 answer.
  caf::expected<std::string> get(std::string_view path);

  /// POST /v3/kv/range.
  caf::expected<etcd::RangeResponse> range(const etcd::RangeRequest& req);

  /// POST /v3/kv/txn.
  caf::expected<etcd::TxnResponse> txn(const etcd::TxnRequest& req);

  /// Returns the endpoint requests go to now (the one that answered last).
  std::string endpoint() const;

  /// Returns the settings.
  const etcd_client_config& config() const noexcept;

private:
  class impl;
  std::unique_ptr<impl> impl_;
};

/// One streaming POST to the gateway (used for /v3/watch): the answer is a
/// stream of JSON objects, one per line, until either side closes.
class etcd_stream {
public:
  /// Creates a closed stream.
  explicit etcd_stream(etcd_client_config cfg);

  ~etcd_stream();

  etcd_stream(const etcd_stream&) = delete;

  etcd_stream& operator=(const etcd_stream&) = delete;

  /// Connects, sends `json` to `path` and reads the answer's header, all
  /// within `request_timeout`, trying the endpoints in order until one
  /// answers.
  caf::error open(std::string_view path, std::string_view json);

  /// Returns the index in `endpoints` of the endpoint that `open` reached.
  size_t endpoint_index() const;

  /// Blocks until the next JSON object arrives and returns it, without a
  /// time limit. Fails when the connection ends or `close` is called.
  caf::expected<std::string> next();

  /// Makes a blocked or later `open` / `next` fail soon. Thread-safe; the
  /// only member function that may be called while another thread is in
  /// `open` or `next`.
  void close();

private:
  class impl;
  std::unique_ptr<impl> impl_;
};

/// Returns the `range_end` that selects every key starting with `s`: the
/// smallest key greater than all of them.
std::string etcd_prefix_end(std::string s);

/// Renders `msg` as the gateway's JSON (proto field names, bytes as
/// base64, 64-bit integers as strings).
std::string etcd_to_json(const google::protobuf::Message& msg);

/// Parses gateway JSON into `msg`, ignoring unknown fields. Fails with
/// `errc::malformed_message`, naming `what`.
caf::error etcd_from_json(std::string_view json, google::protobuf::Message& msg,
                          std::string_view what);

} // namespace granary::cluster

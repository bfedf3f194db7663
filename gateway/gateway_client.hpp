#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "cluster/transport/transport.hpp"
#include "runtime/admin.hpp"

namespace granary::cluster {

/// An HTTP response as the client saw it.
struct http_response {
  unsigned status = 0;
  std::string body;
  /// `Retry-After` in seconds; 0 when absent.
  uint64_t retry_after_s = 0;
};

/// A dead-letter list as `GET /v1/dead-letters` answers it.
struct dead_letter_page {
  std::vector<dead_letter_info> letters;
  /// The list stopped at the requested limit.
  bool limit_reached = false;
  /// Gateways that did not answer: their silos' dead letters are missing.
  std::vector<std::string> unreachable;
};

/// Decodes the body of a dead-letter list; `malformed_message` when it is
/// not one.
caf::expected<dead_letter_page> parse_dead_letters(const std::string& json);

/// A synchronous client of a silo's HTTP/JSON gateway (see gateway.hpp),
/// on http/client.hpp. Each request opens one connection and must complete
/// within the timeout. Methods return the response's JSON body, or the
/// gateway's error as a `caf::error` with its `errc` and message; a network
/// failure is `unspecified` (cannot connect) or `timeout`, and message JSON
/// that does not parse is `invalid_argument` before anything is sent. Not
/// thread-safe.
class gateway_client {
public:
  /// Talks to `server` with a deadline of `timeout` per request.
  explicit gateway_client(endpoint server, std::chrono::milliseconds timeout
                                           = std::chrono::seconds{30});

  ~gateway_client();

  gateway_client(const gateway_client&) = delete;
  gateway_client& operator=(const gateway_client&) = delete;

  /// Sends one request; any HTTP status is a success here.
  caf::expected<http_response> request(std::string_view method,
                                       std::string_view target,
                                       std::string_view body = {});

  /// Sends one request and turns an error status into a `caf::error`.
  caf::expected<std::string> exchange(std::string_view method,
                                      std::string_view target,
                                      std::string_view body = {});

  /// `GET /healthz`.
  caf::expected<std::string> healthz();

  /// `GET /v1/cluster`.
  caf::expected<std::string> cluster_status();

  /// Starts workflow `type/id` with `input_json` of message `input_type`.
  caf::expected<std::string> start_workflow(const std::string& type,
                                            const std::string& id,
                                            const std::string& input_type,
                                            const std::string& input_json,
                                            bool reject_if_exists = false);

  /// Describes workflow `type/id`.
  caf::expected<std::string> describe_workflow(const std::string& type,
                                               const std::string& id);

  /// Reads the result, waiting up to `wait` for the run to finish. Sets
  /// `finished` to whether it did.
  caf::expected<std::string> workflow_result(const std::string& type,
                                             const std::string& id,
                                             std::chrono::milliseconds wait,
                                             bool* finished = nullptr);

  /// Sends signal `name` (payload optional; `msg_id` for safe retries).
  caf::expected<std::string> signal_workflow(const std::string& type,
                                             const std::string& id,
                                             const std::string& name,
                                             const std::string& payload_type,
                                             const std::string& payload_json,
                                             const std::string& msg_id = {});

  /// Reads the value published under `name`.
  caf::expected<std::string> query_workflow(const std::string& type,
                                            const std::string& id,
                                            const std::string& name);

  /// Cancels workflow `type/id`.
  caf::expected<std::string> cancel_workflow(const std::string& type,
                                             const std::string& id,
                                             const std::string& reason,
                                             const std::string& msg_id = {});

  /// Sends update `name` and waits for the code's answer.
  caf::expected<std::string> update_workflow(const std::string& type,
                                             const std::string& id,
                                             const std::string& name,
                                             const std::string& payload_type,
                                             const std::string& payload_json,
                                             const std::string& update_id = {});

  /// The journal of workflow `type/id` (see gateway_history.hpp).
  caf::expected<std::string> workflow_history(const std::string& type,
                                              const std::string& id);

  /// Lists workflows of `type`, optionally with `status`.
  caf::expected<std::string> list_workflows(const std::string& type,
                                            const std::string& status,
                                            size_t limit,
                                            const std::string& cursor = {});

  /// Transient call of grain `type/key` with `message_json` of
  /// `message_type`.
  caf::expected<std::string> call_grain(const std::string& type,
                                        const std::string& key,
                                        const std::string& message_type,
                                        const std::string& message_json);

  /// Durable send to grain `type/key`.
  caf::expected<std::string> send_grain(const std::string& type,
                                        const std::string& key,
                                        const std::string& message_type,
                                        const std::string& message_json,
                                        const std::string& msg_id = {});

  /// Lists up to `limit` dead letters.
  caf::expected<std::string> dead_letters(size_t limit);

  /// Requeues a dead letter.
  caf::expected<std::string> requeue_dead_letter(const std::string& type,
                                                 const std::string& key,
                                                 const std::string& msg_id);

  /// Drops a dead letter.
  caf::expected<std::string> drop_dead_letter(const std::string& type,
                                              const std::string& key,
                                              const std::string& msg_id);

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace granary::cluster

#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "runtime/error.hpp"
#include "samples/control_plane/fake_cloud/types.hpp"

namespace fake_cloud {

/// The answer to an applied (or replayed) PUT or DELETE.
struct mutation_result {
  /// 201 for a PUT that created the resource, 200 otherwise.
  unsigned status = 0;
  /// Whether the server answered from its record of an earlier attempt
  /// under the same idempotency key (`Idempotent-Replayed: true`).
  bool replayed = false;
  /// The resource after a PUT, or as it was before a DELETE.
  resource res;
};

/// The provider calls the control-plane sample's activities make: the
/// HTTP `client` below, or `memory_cloud` (in process, for the
/// deterministic simulation). Implementations are thread-safe.
class api {
public:
  virtual ~api() = default;

  /// Creates `kind/name` (see `client::put`).
  virtual caf::expected<mutation_result>
  put(const std::string& kind, const std::string& name,
      const std::string& spec_json,
      const std::string& idempotency_key) const = 0;

  /// Updates `kind/name` (see `client::update`).
  virtual caf::expected<mutation_result>
  update(const std::string& kind, const std::string& name,
         const std::string& spec_json, const std::string& idempotency_key,
         std::optional<uint64_t> expected_version = std::nullopt) const = 0;

  /// Deletes `kind/name` (see `client::del`).
  virtual caf::expected<mutation_result>
  del(const std::string& kind, const std::string& name,
      const std::string& idempotency_key) const = 0;

  /// Reads `kind/name` (see `client::get`).
  virtual caf::expected<resource> get(const std::string& kind,
                                      const std::string& name) const = 0;
};

/// A synchronous client of the fake cloud, for use inside activities, on
/// granary's http/ client.
///
/// Every call opens one connection, sends one request and reads one
/// response within `timeout` (name lookup, connect, write and read
/// together). The object holds only its immutable configuration, so one
/// instance may be used from several threads at once.
///
/// Failures are classified for retry policies (see `retryable`):
/// - `timeout`: the deadline passed; the outcome is unknown (retry with the
///   same idempotency key).
/// - `overloaded`: 429 or 503; the message ends with "retry after N ms".
/// - `handler_failed`: another 5xx; the outcome may be unknown.
/// - `unspecified`: connection refused, reset or closed before a response.
/// - `not_found` (404), `payload_too_large` (413) and `invalid_argument`
///   (any other 4xx: bad input, 409 conflict, 412 precondition failed, 422
///   key reused): retrying cannot help.
class client : public api {
public:
  /// Talks to `host:port` (an IP literal or a name) with a deadline of
  /// `timeout` per call.
  client(std::string host, uint16_t port,
         std::chrono::milliseconds timeout = std::chrono::seconds{5});

  /// Creates `kind/name` with `spec_json` (a flat JSON object of string
  /// fields); a live resource with the same spec is left as is (status 200,
  /// but the server's audit reports it as a double create).
  caf::expected<mutation_result>
  put(const std::string& kind, const std::string& name,
      const std::string& spec_json,
      const std::string& idempotency_key) const override;

  /// Updates the live resource `kind/name` to `spec_json`; with
  /// `expected_version` set, only if it is at that version.
  caf::expected<mutation_result> update(const std::string& kind,
                                        const std::string& name,
                                        const std::string& spec_json,
                                        const std::string& idempotency_key,
                                        std::optional<uint64_t> expected_version
                                        = std::nullopt) const override;

  /// Deletes `kind/name`; `not_found` if it does not exist.
  caf::expected<mutation_result>
  del(const std::string& kind, const std::string& name,
      const std::string& idempotency_key) const override;

  /// Reads `kind/name`; `not_found` if it does not exist.
  caf::expected<resource> get(const std::string& kind,
                              const std::string& name) const override;

  /// Lists the live resources of `kind`, by name.
  caf::expected<std::vector<resource>> list(const std::string& kind) const;

  /// Reads the server's mutation record summary.
  caf::expected<audit_summary> audit() const;

  /// Returns `none` when the server answers `GET /healthz` with 200.
  caf::error healthz() const;

  /// The host this client talks to.
  const std::string& host() const {
    return host_;
  }

  /// The port this client talks to.
  uint16_t port() const {
    return port_;
  }

private:
  std::string host_;
  uint16_t port_;
  std::chrono::milliseconds timeout_;
};

/// Whether an attempt that failed with `err` may succeed when retried.
bool retryable(const caf::error& err);

/// The server's hint for when to retry, parsed from a message that ends
/// with "retry after N ms"; empty when there is none.
std::optional<std::chrono::milliseconds> retry_after(const caf::error& err);

/// The error kinds `client` returns that retrying cannot fix; put them in
/// `granary::activity_options::non_retryable`.
std::vector<granary::errc> non_retryable_errors();

} // namespace fake_cloud

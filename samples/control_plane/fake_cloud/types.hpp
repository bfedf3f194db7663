#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <caf/expected.hpp>

namespace fake_cloud {

/// A resource of the fake cloud: a kind (`cell`, `db_shard`, ...), a name,
/// a version that every applied create or update increments, and a spec of
/// string fields.
struct resource {
  std::string kind;
  std::string name;
  uint64_t version = 0;
  std::map<std::string, std::string> spec;

  friend bool operator==(const resource&, const resource&) = default;
};

/// The life of one resource name in the mutation record.
struct resource_history {
  std::string kind;
  std::string name;
  /// Applied PUTs that created the resource (a create after a delete
  /// counts again).
  uint64_t created = 0;
  /// Applied DELETEs that removed the resource.
  uint64_t deleted = 0;
  /// Whether the resource exists now.
  bool live = false;

  friend bool operator==(const resource_history&, const resource_history&)
      = default;
};

/// A create-intent PUT (no `If-Match`) under a new idempotency key that
/// found the resource already live: the caller created it twice.
struct double_create {
  std::string kind;
  std::string name;
  /// The idempotency key of the second create.
  std::string key;

  friend bool operator==(const double_create&, const double_create&) = default;
};

/// Counts of the faults the server injected.
struct fault_counts {
  /// Mutations answered 500 or 503 before they were applied.
  uint64_t failed_before_apply = 0;
  /// Mutations applied and then answered 500.
  uint64_t failed_after_apply = 0;
  /// Requests answered 429 by the rate limiter.
  uint64_t rate_limited = 0;
  /// Requests held and closed without an answer.
  uint64_t timeouts = 0;
  /// Of `timeouts`, the mutations applied before the connection closed.
  uint64_t timeouts_after_apply = 0;

  friend bool operator==(const fault_counts&, const fault_counts&) = default;
};

/// What the server's mutation record says: the evidence that no mutation
/// was applied twice, no resource created twice and none leaked.
struct audit_summary {
  /// Live resources per kind (kinds with none are left out).
  std::map<std::string, uint64_t> live;
  /// Idempotency keys whose mutation the server executed (including
  /// executions that answered 404 or 409).
  uint64_t applied = 0;
  /// Requests answered from the record of an earlier execution.
  uint64_t replayed = 0;
  /// Create-intent PUTs that met a live resource with another spec (409).
  uint64_t conflicts = 0;
  /// Keys executed more than once; empty unless the server is broken.
  std::vector<std::string> keys_applied_more_than_once;
  /// Resources created while already live, under another key.
  std::vector<double_create> double_creates;
  /// Every resource name ever created, by kind then name.
  std::vector<resource_history> resources;
  /// The faults injected so far.
  fault_counts faults;

  friend bool operator==(const audit_summary&, const audit_summary&) = default;
};

/// Renders `r` as `{"kind":..,"name":..,"version":..,"spec":{..}}`.
std::string to_json(const resource& r);

/// Renders `s` as the JSON object `GET /v1/_audit` answers.
std::string to_json(const audit_summary& s);

/// Parses the JSON of a resource, as `to_json` renders it.
caf::expected<resource> resource_from_json(std::string_view text);

/// Parses the JSON of an audit summary, as `to_json` renders it.
caf::expected<audit_summary> audit_from_json(std::string_view text);

/// Parses a flat JSON object of string fields, e.g. a resource spec.
caf::expected<std::map<std::string, std::string>>
spec_from_json(std::string_view text);

/// Renders a spec as a flat JSON object, fields in name order.
std::string spec_to_json(const std::map<std::string, std::string>& spec);

} // namespace fake_cloud

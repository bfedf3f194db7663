#pragma once

#include <cstdint>
#include <string>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace granary {

/// Error codes of the `granary` error category. Every error a user can hit
/// carries one of these plus a message that names what was wrong.
enum class errc : uint8_t {
  unspecified = 1,
  /// The grain type is not registered on this silo.
  unknown_grain_type,
  /// The grain does not handle this message type.
  unhandled_message,
  /// The payload exceeds the configured maximum size.
  payload_too_large,
  /// The payload bytes do not parse as the declared message type.
  malformed_message,
  /// An inbox or queue bound was reached; the message says when to retry.
  overloaded,
  /// A transient call did not complete within its timeout.
  timeout,
  /// The grain's handler returned an error or threw.
  handler_failed,
  /// The data directory has less free space than the watermark.
  storage_full,
  /// A storage read or write failed; the silo stops accepting work.
  storage_failure,
  /// A stored record could not be decoded.
  corrupt_record,
  /// The data directory is locked by another silo process.
  data_dir_locked,
  /// The silo is shutting down or has failed.
  silo_stopped,
  /// A configuration value is invalid.
  invalid_config,
  /// An argument is invalid (empty grain key, bad name, ...).
  invalid_argument,
  /// The requested record does not exist.
  not_found,
  /// A workflow's code issued a command that does not match its journal.
  nondeterminism,
  /// A workflow run ended by continuing as a new run (not a failure).
  continued_as_new,
  /// A workflow (or one of its commands) was cancelled.
  cancelled,
  /// The record to create exists already (a workflow id that is taken).
  already_exists,
  /// The partition of the target is not served by the silo asked (it moved,
  /// is moving or the sender's partition map is stale); retry.
  not_owner,
  /// The partition's owner is down or unknown; durable messages wait in
  /// their senders' outboxes, transient calls fail with this.
  partition_unavailable,
};

/// The last `errc` value, for iterating over all codes.
inline constexpr errc last_errc = errc::partition_unavailable;

/// Name of the CAF error category used for `errc`.
caf::atom_value error_category();

/// Returns the symbolic name of `code`, e.g. "overloaded".
const char* to_string(errc code);

/// Creates an error of the granary category with a human-readable message.
caf::error make_error(errc code, std::string message);

/// Returns the `errc` of `err`, or `errc::unspecified` for foreign errors.
errc code_of(const caf::error& err);

/// Renders any error as "code: message", for logs and CLI output.
std::string describe(const caf::error& err);

} // namespace granary

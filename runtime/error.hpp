#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace granary {

// The table of error codes: X(name, number, http_status, description).
//
// The numbers are part of the storage format: replies to durable calls,
// workflow journals, activity results and the cluster's `AckBatch` store
// them, and old records must keep their meaning after an upgrade. So:
// - never change the number of a code;
// - a new code takes the next number above every number ever used, live
//   or retired;
// - a removed code leaves a gap: move it to GRANARY_RETIRED_ERRC below
//   with its number, which is never used again.
// 0 is not a code: it means "no error" (as in `Reply.error_code`).
// `http_status` is the status the gateway answers for the code (4xx: the
// request was wrong, 5xx: the service failed or is not available now).
// clang-format off
#define GRANARY_ERRC(X)                                                        \
  X(unspecified,            1, 500, "an error without a more specific code")   \
  X(unknown_grain_type,     2, 404, "the grain type is not registered on "     \
                                    "this silo")                               \
  X(unhandled_message,      3, 400, "the grain does not handle this message "  \
                                    "type")                                    \
  X(payload_too_large,      4, 413, "the payload exceeds the configured "      \
                                    "maximum size")                            \
  X(malformed_message,      5, 400, "the payload bytes do not parse as the "   \
                                    "declared message type")                   \
  X(overloaded,             6, 429, "an inbox or queue bound was reached; "    \
                                    "the message says when to retry")          \
  X(timeout,                7, 504, "a transient call did not complete "       \
                                    "within its timeout")                      \
  X(handler_failed,         8, 500, "the grain's handler returned an error "   \
                                    "or threw")                                \
  X(storage_full,           9, 503, "the data directory has less free space "  \
                                    "than the watermark")                      \
  X(storage_failure,       10, 503, "a storage read or write failed; the "     \
                                    "silo stops accepting work")               \
  X(corrupt_record,        11, 500, "a stored record could not be decoded")    \
  X(data_dir_locked,       12, 503, "the data directory is locked by another " \
                                    "silo process")                            \
  X(silo_stopped,          13, 503, "the silo is shutting down or has "        \
                                    "failed")                                  \
  X(invalid_config,        14, 400, "a configuration value is invalid")        \
  X(invalid_argument,      15, 400, "an argument is invalid (empty grain "     \
                                    "key, bad name, ...)")                     \
  X(not_found,             16, 404, "the requested record does not exist")     \
  X(nondeterminism,        17, 500, "a workflow's code issued a command that " \
                                    "does not match its journal")              \
  X(continued_as_new,      18, 500, "a workflow run ended by continuing as a " \
                                    "new run (not a failure)")                 \
  X(cancelled,             19, 409, "a workflow (or one of its commands) was " \
                                    "cancelled")                               \
  X(already_exists,        20, 409, "the record to create exists already (a "  \
                                    "workflow id that is taken)")              \
  X(not_owner,             21, 503, "the partition of the target is not "      \
                                    "served by the silo asked (it moved, is "  \
                                    "moving or the sender's map is stale); "   \
                                    "retry")                                   \
  X(partition_unavailable, 22, 503, "the partition's owner is down or "        \
                                    "unknown; durable messages wait in their " \
                                    "senders' outboxes, transient calls fail")

// Codes that were removed: X(name, number, why). Their numbers may still
// be stored, so they are never given to another code.
#define GRANARY_RETIRED_ERRC(X)
// clang-format on

/// Error codes of the `granary` error category. Every error a user can hit
/// carries one of these plus a message that names what was wrong. The
/// numbers are fixed (see GRANARY_ERRC above, which also documents each
/// code): they are stored, so a code is never renumbered or reused.
enum class errc : uint8_t {
#define GRANARY_ERRC_ENUM(name, number, status, text) name = number,
  GRANARY_ERRC(GRANARY_ERRC_ENUM)
#undef GRANARY_ERRC_ENUM
};

/// Every live code, in table order, for iterating over all codes (their
/// numbers may have gaps).
inline constexpr std::array all_errc{
#define GRANARY_ERRC_VALUE(name, number, status, text) errc::name,
    GRANARY_ERRC(GRANARY_ERRC_VALUE)
#undef GRANARY_ERRC_VALUE
};

#define GRANARY_ERRC_ONE(name, number, why) +1
/// How many codes were removed.
inline constexpr size_t retired_errc_count
    = 0 GRANARY_RETIRED_ERRC(GRANARY_ERRC_ONE);
#undef GRANARY_ERRC_ONE

/// The numbers of removed codes, which no live code may use.
inline constexpr std::array<uint8_t, retired_errc_count> retired_errc_numbers{
#define GRANARY_ERRC_NUMBER(name, number, why) number,
    GRANARY_RETIRED_ERRC(GRANARY_ERRC_NUMBER)
#undef GRANARY_ERRC_NUMBER
};

/// Name of the CAF error category used for `errc`.
caf::atom_value error_category();

/// Returns the symbolic name of `code`, e.g. "overloaded" ("unknown" for a
/// number that is no live code).
const char* to_string(errc code);

/// Returns the code whose name is `name`, if any.
std::optional<errc> errc_from_name(std::string_view name);

/// Returns the one-line description of `code` from the table.
const char* describe_code(errc code);

/// Returns the HTTP status that answers an error with `code` (400..599;
/// 500 for a number that is no live code).
unsigned http_status(errc code);

/// Creates an error of the granary category with a human-readable message.
caf::error make_error(errc code, std::string message);

/// Returns the `errc` of `err`, or `errc::unspecified` for foreign errors.
errc code_of(const caf::error& err);

/// Renders any error as "code: message", for logs and CLI output.
std::string describe(const caf::error& err);

} // namespace granary

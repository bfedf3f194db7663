#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <caf/error.hpp>

#include "runtime/grain_id.hpp"
#include "runtime/limits.hpp"

namespace granary {

/// The record kinds; each maps to one RocksDB column family.
enum class column : uint8_t {
  meta = 0,
  state,
  inbox,
  outbox,
  timers,
  dedup,
  dead_letters,
  journal,
  timer_index,
};

/// Number of distinct columns.
inline constexpr size_t column_count = 9;

/// Column family name of `c`.
const char* to_string(column c);

/// Key layout shared by every storage implementation. All keys except meta
/// keys begin with a 2-byte big-endian partition id, so that a partition is
/// one contiguous key range per column. A grain prefix then follows:
///   partition(2) | varint(len(type)) | type | varint(len(key)) | key
/// and a record-specific suffix (a big-endian sequence number, a timer name
/// or a message id).
namespace keys {

/// Appends the 2-byte big-endian partition id.
void append_partition(std::string& out, uint32_t partition);

/// Returns the 2-byte prefix of `partition`.
std::string partition_prefix(uint32_t partition);

/// Partition ids are two bytes in every key.
inline constexpr uint32_t max_partition = limits::max_partition_id;

/// The key range of one partition in a column: [lower, upper), where an
/// empty `upper` means no upper bound (the last partition).
struct partition_range {
  std::string lower;
  std::string upper;
};

/// Returns the key range of partition `p`.
partition_range range_of(uint32_t p);

/// Returns whether `key` lies in `r`.
bool in_range(const partition_range& r, std::string_view key);

/// The `invalid_argument` error for a partition id above `max_partition`.
caf::error invalid_partition(uint32_t p);

/// Returns the grain prefix of `id` in `partition`.
std::string grain_prefix(uint32_t partition, const grain_id& id);

/// Appends a big-endian 64-bit integer (sorts numerically).
void append_u64(std::string& out, uint64_t value);

/// Reads a big-endian 64-bit integer from the first 8 bytes of `in`.
std::optional<uint64_t> read_u64(std::string_view in);

/// Returns `prefix` followed by a big-endian sequence number.
std::string with_seq(std::string prefix, uint64_t seq);

/// Returns `prefix` followed by a raw suffix.
std::string with_suffix(std::string prefix, std::string_view suffix);

/// A key decoded into its parts.
struct decoded {
  uint32_t partition = 0;
  grain_id id;
  /// Bytes after the grain prefix.
  std::string_view suffix;
};

/// The partition a key starts with (its first 2 bytes, big-endian);
/// nullopt for a key shorter than that.
std::optional<uint32_t> read_partition(std::string_view key);

/// Decodes a key that starts with a grain prefix; nullopt if malformed.
std::optional<decoded> decode(std::string_view key);

/// Returns the `timer_index` key of the timer stored under `timers_key`
/// (partition, grain prefix, timer name) and due at `due_ms`:
///   partition(2) | due_ms (8, BE) | the rest of `timers_key`
/// so that a partition's timers sort by due time. A negative due time is
/// stored as 0. `timers_key` must hold at least the partition.
std::string timer_index_key(std::string_view timers_key, int64_t due_ms);

/// A `timer_index` key decoded into the timer's due time and its `timers`
/// key.
struct timer_index_entry {
  int64_t due_ms = 0;
  std::string timers_key;
};

/// Decodes a `timer_index` key; nullopt if it is too short.
std::optional<timer_index_entry> decode_timer_index(std::string_view key);

/// Hex rendering of a key for log lines.
std::string printable(std::string_view key);

} // namespace keys

} // namespace granary

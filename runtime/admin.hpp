#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "runtime/grain_id.hpp"
#include "runtime/storage.hpp"

namespace granary {

/// A dead-letter record as shown to users.
struct dead_letter_info {
  grain_id target;
  std::string msg_id;
  std::string payload_type;
  std::string error;
  uint32_t attempts = 0;
  int64_t dead_ms = 0;
};

/// Lists up to `limit` dead letters (including quarantined records).
caf::expected<std::vector<dead_letter_info>> list_dead_letters(storage& store,
                                                               size_t limit);

/// With no silo running on `store`: moves a dead letter back into its
/// grain's inbox, where the next silo start picks it up. One atomic commit
/// removes the dead letter and its dedup record and stores the message.
caf::error requeue_dead_letter_offline(storage& store, const grain_id& target,
                                       const std::string& msg_id);

/// Reads the stored state record of grain `id` (nullopt when it has none),
/// using the partition count recorded in the silo metadata.
caf::expected<std::optional<std::string>> read_grain_state(storage& store,
                                                           const grain_id& id);

/// A grain's stored state, as `scan_grain_states` returns it.
struct stored_state {
  grain_id id;
  std::string bytes;
};

/// One page of stored grain states.
struct state_page {
  std::vector<stored_state> states;
  /// Where the next page starts (an opaque storage key); empty when the
  /// scan is complete.
  std::string cursor;
};

/// Reads up to `limit` stored states of grain type `type`, partition by
/// partition, starting at `cursor` (empty: from the beginning). Only
/// committed states are seen. Visits at most `limit + 1` records.
caf::expected<state_page> scan_grain_states(storage& store,
                                            std::string_view type,
                                            std::string_view cursor,
                                            size_t limit);

/// With no silo running on `store`: deletes a dead letter.
caf::error drop_dead_letter_offline(storage& store, const grain_id& target,
                                    const std::string& msg_id);

} // namespace granary

#pragma once

#include <cstdint>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "runtime/storage.hpp"

// A silo's data directory says which partitions it holds: a `meta` record
// `partition/<p>` (decimal) whose value is the epoch the partition was
// created or received at. It is written when a partition is created or
// imported and deleted when it is dropped; a silo never serves a partition
// the map gives it without one (a wrong or wiped data directory).

namespace granary::cluster {

/// Records that `data` holds partition `p` at `epoch`, or (`held` false)
/// that it no longer does.
caf::error put_held(storage& data, uint32_t p, uint64_t epoch, bool held);

/// Whether `data` holds partition `p`.
caf::expected<bool> is_held(storage& data, uint32_t p);

/// The epoch recorded with the held partition `p` (0 when there is none or
/// it does not parse).
caf::expected<uint64_t> held_epoch(storage& data, uint32_t p);

} // namespace granary::cluster

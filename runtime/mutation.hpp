#pragma once

#include <cstdint>
#include <string_view>

namespace granary {

/// Known bugs that the simulator's tests switch back on, one at a time, to
/// prove that the simulation finds them (a simulator that finds nothing
/// proves nothing). Production never switches one on; each costs one
/// relaxed atomic load where it applies.
enum class mutation : uint8_t {
  /// A redelivered durable message skips the dedup check and is applied
  /// again.
  skip_dedup = 1,
  /// A partition releases replies and acknowledgements before the batch
  /// they depend on is durable.
  reply_before_durable = 2,
  /// A cancel leaves a queued firing of a periodic timer in place, and the
  /// firing's turn stores the next period although the timer is gone: the
  /// cancelled reminder fires for ever.
  rearm_after_cancel = 3,
  /// A partition's release exports it without waiting for the local
  /// receivers of its deliveries: an outbox entry whose delivery a local
  /// receiver already applied moves, and the new owner delivers it again.
  release_before_local_acks = 4,
  /// A handoff whose map write has an unknown outcome gives up after its
  /// attempts and serves the partition again at the old epoch, although
  /// the write may have applied: two owners.
  restore_after_unknown_map_write = 5,
  /// A local redelivery writes no dedup record: a copy that an earlier
  /// owner of the sending partition sent from another silo, arriving late,
  /// is applied again (found by the simulation, seed 93 of `bank`).
  unrecorded_local_redelivery = 6,
};

/// Switches `m` on, process-wide.
void set_mutation(mutation m) noexcept;

/// Switches every mutation off.
void clear_mutations() noexcept;

/// True while `m` is switched on.
bool mutation_active(mutation m) noexcept;

/// The mutation's name ("skip_dedup", ...).
std::string_view to_string(mutation m) noexcept;

/// Every mutation, in number order.
inline constexpr mutation all_mutations[]
    = {mutation::skip_dedup,
       mutation::reply_before_durable,
       mutation::rearm_after_cancel,
       mutation::release_before_local_acks,
       mutation::restore_after_unknown_map_write,
       mutation::unrecorded_local_redelivery};

} // namespace granary

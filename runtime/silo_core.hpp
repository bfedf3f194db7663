#pragma once

// Internal: state shared by the silo and its partitions.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>

#include "runtime/assert.hpp"
#include "runtime/clock.hpp"
#include "runtime/commit_loop.hpp"
#include "runtime/error.hpp"
#include "runtime/remote.hpp"
#include "runtime/silo.hpp"
#include "runtime/storage.hpp"
#include "runtime/sys.hpp"

namespace granary::detail {

/// A bounded counter of requests in a partition's mailbox.
struct mailbox_gauge {
  alignas(64) std::atomic<int64_t> queued{0};
};

/// Silo-wide counters, updated with relaxed atomics.
struct counters {
  std::atomic<uint64_t> turns{0};
  std::atomic<uint64_t> durable_turns{0};
  std::atomic<uint64_t> transient_turns{0};
  std::atomic<uint64_t> failed_turns{0};
  std::atomic<uint64_t> activations{0};
  std::atomic<uint64_t> deactivations{0};
  std::atomic<uint64_t> dead_letters{0};
  std::atomic<uint64_t> overloaded{0};
  std::atomic<uint64_t> duplicates{0};
  std::atomic<uint64_t> timers_fired{0};
  std::atomic<uint64_t> quarantined{0};
  std::atomic<uint64_t> ticks{0};
  // Gauge: entries in the partitions' due-ordered timer queues.
  std::atomic<int64_t> timers_in_memory{0};
};

inline void bump(std::atomic<uint64_t>& x, uint64_t n = 1) {
  x.fetch_add(n, std::memory_order_relaxed);
}

struct silo_core {
  silo_config cfg;
  // Set by the first partition that fail-stops (see
  // `silo_config::on_storage_failure`).
  std::atomic<bool> storage_failed{false};
  grain_registry registry;
  std::unique_ptr<storage> store;
  std::shared_ptr<granary::clock> clk;
  std::unique_ptr<caf::actor_system_config> sys_cfg;
  std::unique_ptr<caf::actor_system> sys;
  /// Under a simulation: the thread that runs CAF's test coordinator (the
  /// partitions' scheduler there), and its stop flag.
  sys::thread caf_driver;
  std::atomic<bool> caf_driver_stop{false};
  std::unique_ptr<commit_loop> commits;
  std::vector<caf::actor> partitions;
  std::unique_ptr<mailbox_gauge[]> gauges;
  uint64_t incarnation = 0;
  // "<node id>.<incarnation>." in hex: message ids stay unique across
  // restarts and across the silos of a cluster (receivers deduplicate by
  // id).
  std::string msg_id_prefix;
  std::atomic<uint64_t> next_counter{0};
  std::atomic<uint64_t> seq_counter{0};
  std::atomic<bool> stopping{false};
  // Callers inside the client API (see `api_guard` in silo.cpp): `stop`
  // tears the partitions and the actor system down only once none is left.
  std::atomic<int64_t> callers{0};
  // Set when the silo is part of a cluster; null: every partition is local.
  std::atomic<remote_router*> router{nullptr};

  /// The router when partition `p` belongs to another silo, else null.
  remote_router* remote_owner(uint32_t p) const {
    auto* r = router.load(std::memory_order_acquire);
    return r && !r->owns(p) ? r : nullptr;
  }
  counters stats;
  // Free-space watermark, refreshed at most every
  // `limits::space_check_interval`.
  std::atomic<int64_t> space_checked_ms{0};
  std::atomic<bool> space_low{false};

  /// Returns a fresh, silo-unique message id.
  std::string next_msg_id();

  /// Returns a fresh sequence number for an inbox or outbox key: above
  /// every number this silo made before (it starts at `incarnation << 40`)
  /// and above every number in the partitions it recovered, which another
  /// silo may have made before a handoff.
  uint64_t next_seq() {
    return seq_counter.fetch_add(1, std::memory_order_relaxed);
  }

  /// Keeps later `next_seq` results above `seen`, a number found in a
  /// recovered key, so that a new key never overwrites a stored one and a
  /// grain's inbox keeps its order across handoffs.
  void observe_seq(uint64_t seen) {
    auto cur = seq_counter.load(std::memory_order_relaxed);
    while (cur <= seen
           && !seq_counter.compare_exchange_weak(cur, seen + 1,
                                                 std::memory_order_relaxed)) {
    }
  }

  /// Reserves a slot in partition `p`'s mailbox, or returns `overloaded`.
  caf::error reserve(uint32_t p);

  /// Releases a slot reserved by `reserve`.
  void release(uint32_t p) {
    auto before = gauges[p].queued.fetch_sub(1, std::memory_order_relaxed);
    GRANARY_ASSERT(before > 0, "a mailbox slot was released twice");
  }

  /// Returns `storage_full` while free space is below the watermark.
  caf::error check_space();

  /// Returns the reason the silo no longer accepts work, if any.
  caf::error check_running() const;
};

/// Admits one call of the silo's client API: while the guard lives, `stop`
/// keeps the partitions, the actor system and the storage; a guard made
/// once the stop began carries the reason in `error()`.
class api_guard {
public:
  explicit api_guard(silo_core& c);
  ~api_guard();

  api_guard(const api_guard&) = delete;
  api_guard& operator=(const api_guard&) = delete;

  /// Why the call must not go on (the silo stopped or failed), if so.
  const caf::error& error() const {
    return err_;
  }

private:
  silo_core& c_;
  caf::error err_;
};

} // namespace granary::detail

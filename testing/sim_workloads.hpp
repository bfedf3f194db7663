#pragma once

#include <chrono>
#include <string>
#include <vector>

#include <caf/error.hpp>

#include "testing/simulation.hpp"

namespace granary::testing {

/// Settings of the built-in workloads.
struct workload_options {
  /// Counter grains (counters) or accounts.
  int grains = 6;
  /// Operations the workload issues.
  int operations = 60;
  /// Clients issuing them at once.
  int clients = 4;
  /// A client waits a random time below this before each operation, so
  /// that the work spreads over the faults (handoffs under load); 0: none.
  std::chrono::milliseconds pace{0};
};

/// Durable counters: `operations` messages, each with its own message id,
/// go through random silos and are sent again with the same id until one
/// is acknowledged. Two in three are Adds; every third is a Forward, which
/// adds to its grain and sends an Add on to another counter (grain to
/// grain, across partitions and silos). Checks that each counter counts
/// every acknowledged Add and Forward exactly once (no loss, no duplicate,
/// also of the forwarded Adds).
void add_counter_workload(simulation& sim, workload_options opts = {});

/// Timers and reminders: each grain arms a periodic timer, is blocked by a
/// failing message while its cancel queues and the timer fires again, then
/// unblocks. Checks that every timer fired while armed, and that none fires
/// once cancelled (a cancelled reminder must stay cancelled).
void add_timer_workload(simulation& sim, workload_options opts = {});

/// Bank transfers as sagas: `operations` transfers between `grains`
/// accounts (and two closed ones, which refuse credits so that the saga
/// refunds), each a workflow whose legs are durable calls with a durable
/// timer between them. Checks that money is conserved (no leg lost or
/// applied twice), that every transfer finishes, and that every stored
/// journal replays (`check_journals`).
void add_bank_workload(simulation& sim, workload_options opts = {});

/// Control-plane provisioning: `operations / 3` workflows create three
/// resources each through activities against a simulated flaky cloud API
/// (slow; 15% of calls fail before applying, 15% apply and lose the
/// answer), which records every creation by idempotency key. Checks that
/// no resource is created twice, that the workflows got the ids the API
/// created, that every run finishes, and that every journal replays.
void add_cloud_workload(simulation& sim, workload_options opts = {});

/// The built-in workloads' names, for `granary sim --workload`.
std::vector<std::string> workload_names();

/// Adds the built-in workload `name` to `sim` (`invalid_argument` naming
/// the known ones).
caf::error add_workload(simulation& sim, const std::string& name,
                        workload_options opts = {});

} // namespace granary::testing

#pragma once

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

/// The built-in workloads' names, for `granary sim --workload`.
std::vector<std::string> workload_names();

/// Adds the built-in workload `name` to `sim` (`invalid_argument` naming
/// the known ones).
caf::error add_workload(simulation& sim, const std::string& name,
                        workload_options opts = {});

} // namespace granary::testing

// A cluster of real silos under the deterministic simulation: durable
// counters through random silos while the network drops, duplicates,
// delays and cuts frames, links clog, and silos crash, pause and skew
// their clocks. Nothing acknowledged is lost, nothing is applied twice,
// and a seed replays to the same trace.

#include <cstdlib>
#include <map>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "actors/grain.hpp"
#include "runtime/sys.hpp"
#include "testing/sim_workloads.hpp"
#include "testing/simulation.hpp"
#include "testing/test_grains.hpp"

using namespace granary;
using namespace granary::testing;
using namespace std::chrono_literals;

namespace {

// Durable counters on three silos (see add_counter_workload).
simulation counter_simulation(sim_faults faults) {
  sim_options opts;
  opts.silos = 3;
  opts.partitions = 6;
  opts.fault_time = 60s;
  opts.faults = faults;
  opts.verbose_trace = std::getenv("GRANARY_SIM_VERBOSE") != nullptr;
  simulation sim{opts};
  add_counter_workload(sim);
  return sim;
}

// The report's end: the last events and what every thread waited for.
std::string details(const sim_report& r) {
  std::string out;
  for (auto& l : r.run.tail)
    out += "  " + l + "\n";
  out += " threads:\n";
  for (auto& l : r.run.threads)
    out += "  " + l + "\n";
  return out;
}

} // namespace

TEST(sim_cluster, counters_add_up_without_faults) {
  auto report = counter_simulation(sim_faults::none()).run(1);
  EXPECT_TRUE(report.run.ok) << report.summary() << "\n" << details(report);
  EXPECT_TRUE(report.faults.empty());
}

TEST(sim_cluster, counters_survive_every_fault_kind) {
  auto sim = counter_simulation(sim_faults::all());
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    auto report = sim.run(seed);
    EXPECT_TRUE(report.run.ok) << report.summary() << "\n" << details(report);
    EXPECT_GE(report.run.elapsed, 60s);
  }
}

TEST(sim_cluster, timers_stay_cancelled_under_every_fault_kind) {
  sim_options opts;
  opts.silos = 3;
  opts.partitions = 6;
  opts.fault_time = 60s;
  opts.faults = sim_faults::all();
  simulation sim{opts};
  add_timer_workload(sim);
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    auto report = sim.run(seed);
    EXPECT_TRUE(report.run.ok) << report.summary() << "\n" << details(report);
  }
}

// Found by `granary sim --seeds 100` (seed 52, the command's defaults): a
// forwarded Add was applied by a remote receiver, whose partition then
// moved to the sender's silo before the sender got the answer; the
// redelivery, now local, ignored the receiver's dedup record and applied
// it again.
TEST(sim_cluster, regression_seed_52_a_moved_receiver_keeps_its_dedup) {
  sim_options opts;
  opts.faults = sim_faults::all();
  opts.faults.disk = false; // The faults of the run that found it.
  simulation sim{opts};
  add_counter_workload(sim);
  auto report = sim.run(52);
  EXPECT_TRUE(report.run.ok) << report.summary() << "\n" << details(report);
}

// Found by `granary sim --seeds 300 --workload bank` (seed 93; also 254,
// 290 and 295): a debit call was sent to a remote receiver by one owner
// of the workflow's partition; the partition then moved to the
// receiver's silo and redelivered the call locally, which applied it and
// wrote no dedup record (a local delivery relied on deleting the sender's
// outbox record); the first copy, delayed in the network, then arrived
// and was applied again. The simulator's client and faults have changed
// since; today seed 159 meets the same bug when the fix is switched off
// (mutation unrecorded_local_redelivery).
TEST(sim_cluster, regression_seed_159_a_late_remote_copy_of_a_local_delivery) {
  sim_options opts;
  opts.faults = sim_faults::all();
  simulation sim{opts};
  add_bank_workload(sim);
  auto report = sim.run(159);
  EXPECT_TRUE(report.run.ok) << report.summary() << "\n" << details(report);
}

TEST(sim_cluster, a_seed_replays_to_the_same_trace) {
  auto sim = counter_simulation(sim_faults::all());
  auto a = sim.run(11);
  auto b = sim.run(11);
  ASSERT_TRUE(a.run.ok) << a.summary();
  EXPECT_EQ(a.run.trace_hash, b.run.trace_hash);
  EXPECT_EQ(a.run.steps, b.run.steps);
  EXPECT_EQ(a.faults, b.faults);
}

namespace {

// A built-in workload on three silos with every fault kind.
simulation faulty_simulation(const std::string& workload) {
  sim_options opts;
  opts.silos = 3;
  opts.partitions = 6;
  opts.fault_time = 60s;
  opts.faults = sim_faults::all();
  opts.verbose_trace = std::getenv("GRANARY_SIM_VERBOSE") != nullptr;
  simulation sim{opts};
  workload_options w;
  w.operations = 24;
  EXPECT_FALSE(add_workload(sim, workload, w));
  return sim;
}

} // namespace

TEST(sim_cluster, bank_transfers_conserve_money_under_every_fault_kind) {
  auto sim = faulty_simulation("bank");
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    auto report = sim.run(seed);
    EXPECT_TRUE(report.run.ok) << report.summary() << "\n" << details(report);
  }
}

TEST(sim_cluster, cloud_resources_are_created_once_under_every_fault_kind) {
  auto sim = faulty_simulation("cloud");
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    auto report = sim.run(seed);
    EXPECT_TRUE(report.run.ok) << report.summary() << "\n" << details(report);
  }
}

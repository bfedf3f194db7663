// The simulator must bite: each known bug, switched back on, is found
// within a bounded number of seeds, and the failed invariant names it.
// The seeds it took are printed (and reported in bench/RESULTS.md).

#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "runtime/mutation.hpp"
#include "testing/sim_workloads.hpp"
#include "testing/simulation.hpp"

using namespace granary;
using namespace granary::testing;
using namespace std::chrono_literals;

namespace {

// Seeds tried per mutation before the test gives up.
constexpr uint64_t max_seeds = 40;

struct hunt {
  uint64_t seeds = 0;
  sim_report report;
};

// Where a mutation is hunted: a workload, its size and pace, the faults.
struct ground {
  std::string workload = "counters";
  int operations = 300;
  uint32_t partitions = 6;
  std::chrono::milliseconds pace{0};
  std::string faults = "all";
  uint64_t seeds = max_seeds;
};

// Runs the workload under the faults with `m` switched on, seed after
// seed, until one fails. The seeds are fixed, so a hunt is deterministic;
// a change that shifts the schedules may move the first failing seed past
// the budget (then hunt with `granary sim --mutation` and adjust).
hunt find(mutation m, const ground& g = {}) {
  clear_mutations();
  set_mutation(m);
  sim_options opts;
  opts.silos = 3;
  opts.partitions = g.partitions;
  opts.fault_time = 60s;
  auto faults = sim_faults::parse(g.faults);
  EXPECT_TRUE(faults);
  opts.faults = *faults;
  simulation sim{opts};
  workload_options wo;
  wo.operations = g.operations;
  wo.pace = g.pace;
  EXPECT_FALSE(add_workload(sim, g.workload, wo));
  hunt h;
  for (uint64_t seed = 1; seed <= g.seeds; ++seed) {
    h.seeds = seed;
    h.report = sim.run(seed);
    if (!h.report.run.ok)
      break;
  }
  clear_mutations();
  std::printf("mutation %s: %s after %llu seeds (%s: %s)\n",
              std::string{to_string(m)}.c_str(),
              h.report.run.ok ? "NOT FOUND" : "found",
              static_cast<unsigned long long>(h.seeds),
              h.report.run.invariant.c_str(), h.report.run.detail.c_str());
  return h;
}

} // namespace

TEST(sim_mutation, skipped_dedup_is_found_as_a_duplicate_effect) {
  auto h = find(mutation::skip_dedup);
  ASSERT_FALSE(h.report.run.ok) << "not found in " << max_seeds << " seeds";
  EXPECT_EQ(h.report.run.invariant,
            "no acknowledged message is lost or applied twice");
  // Seen twice, or counted once too often.
  EXPECT_TRUE(h.report.run.detail.find(" times") != std::string::npos
              || h.report.run.detail.find("but the acknowledged")
                     != std::string::npos)
      << h.report.run.detail;
}

TEST(sim_mutation, a_reply_before_its_batch_is_durable_is_found_as_a_loss) {
  auto h = find(mutation::reply_before_durable);
  ASSERT_FALSE(h.report.run.ok) << "not found in " << max_seeds << " seeds";
  EXPECT_EQ(h.report.run.invariant,
            "no acknowledged message is lost or applied twice");
}

TEST(sim_mutation, a_reminder_rearmed_after_cancel_is_found) {
  ground timers;
  timers.workload = "timers";
  auto h = find(mutation::rearm_after_cancel, timers);
  ASSERT_FALSE(h.report.run.ok) << "not found in " << max_seeds << " seeds";
  EXPECT_EQ(h.report.run.invariant,
            "timers fire, and a cancelled timer stays cancelled");
  EXPECT_NE(h.report.run.detail.find("although its cancel was acknowledged"),
            std::string::npos)
      << h.report.run.detail;
}

// Since the fix for seed 93 (a local redelivery records its id), most of
// this bug's duplicates are caught at the receiver; what is left needs a
// first local delivery in flight while its sender partition moves. Bank
// transfers paced over the faults find it (the counters no longer do
// within the budget).
TEST(sim_mutation, a_release_before_local_acks_is_found_as_a_duplicate) {
  ground bank;
  bank.workload = "bank";
  bank.operations = 120;
  bank.partitions = 8;
  bank.pace = 1s;
  bank.seeds = 60;
  auto h = find(mutation::release_before_local_acks, bank);
  ASSERT_FALSE(h.report.run.ok) << "not found in " << bank.seeds << " seeds";
  EXPECT_EQ(h.report.run.invariant, "money is conserved");
  EXPECT_NE(h.report.run.detail.find("applied 2 times"), std::string::npos)
      << h.report.run.detail;
}

// The bug seed 93 of `bank` found: a late remote copy of a message that
// was redelivered locally is applied again. A rare interleaving (about one
// seed in a hundred): the bank's defaults meet it at seed 159.
TEST(sim_mutation, an_unrecorded_local_redelivery_is_found_as_a_duplicate) {
  ground bank;
  bank.workload = "bank";
  bank.operations = 60;
  bank.partitions = 8;
  bank.seeds = 170;
  auto h = find(mutation::unrecorded_local_redelivery, bank);
  ASSERT_FALSE(h.report.run.ok) << "not found in " << bank.seeds << " seeds";
  EXPECT_EQ(h.report.run.invariant, "money is conserved");
  EXPECT_NE(h.report.run.detail.find("applied 2 times"), std::string::npos)
      << h.report.run.detail;
}

TEST(sim_mutation, a_restore_after_an_unknown_map_write_is_found) {
  auto h = find(mutation::restore_after_unknown_map_write);
  ASSERT_FALSE(h.report.run.ok) << "not found in " << max_seeds << " seeds";
  // Two owners show as such, or as the messages one of them lost.
  EXPECT_TRUE(h.report.run.invariant == "at most one silo serves a partition"
              || h.report.run.invariant
                     == "no acknowledged message is lost or applied twice")
      << h.report.run.invariant << ": " << h.report.run.detail;
}

TEST(sim_mutation, without_a_mutation_the_same_seeds_pass) {
  clear_mutations();
  sim_options opts;
  opts.silos = 3;
  opts.partitions = 6;
  opts.fault_time = 60s;
  opts.faults = sim_faults::all();
  for (auto workload : {"counters", "timers"}) {
    simulation sim{opts};
    ASSERT_FALSE(add_workload(sim, workload));
    for (uint64_t seed = 1; seed <= 5; ++seed) {
      auto report = sim.run(seed);
      EXPECT_TRUE(report.run.ok) << workload << ": " << report.summary();
    }
  }
}

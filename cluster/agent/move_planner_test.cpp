// The move planner: deterministic plans that spread the partitions over
// the active silos, empty leaving silos and leave dead silos' partitions
// where their data is.

#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cluster/agent/move_planner.hpp"

using namespace granary::cluster;

namespace {

membership_entry row(std::string id, silo_status status) {
  membership_entry e;
  e.silo_id = std::move(id);
  e.address = "127.0.0.1:1";
  e.status = status;
  return e;
}

membership_table table_of(std::vector<membership_entry> rows) {
  membership_table t;
  t.rows = std::move(rows);
  return t;
}

partition_map map_of(std::vector<std::string> owners) {
  partition_map m;
  m.partition_count = static_cast<uint32_t>(owners.size());
  for (uint32_t p = 0; p < owners.size(); ++p)
    m.partitions.push_back(partition_assignment{
        p, 1, {partition_owner{owners[p], replica_role::primary}}});
  return m;
}

// Applies `moves` to `owners` and counts partitions per silo.
std::map<std::string, int> after(std::vector<std::string> owners,
                                 const std::vector<partition_move>& moves) {
  for (auto& m : moves) {
    EXPECT_EQ(owners[m.partition], m.from);
    owners[m.partition] = m.to;
  }
  std::map<std::string, int> counts;
  for (auto& o : owners)
    ++counts[o];
  return counts;
}

TEST(plan_moves, spreads_partitions_over_a_new_silo) {
  std::vector<std::string> owners(12, "a");
  auto t
      = table_of({row("a", silo_status::active), row("b", silo_status::active),
                  row("c", silo_status::joining)});
  auto moves = plan_moves(map_of(owners), t);
  auto counts = after(owners, moves);
  EXPECT_EQ(counts["a"], 6);
  EXPECT_EQ(counts["b"], 6);
  EXPECT_EQ(counts.count("c"), 0u) << "joining silos receive nothing yet";
  EXPECT_EQ(moves.size(), 6u) << "no partition moves twice";
}

TEST(plan_moves, empties_a_shutting_down_silo_and_keeps_balance) {
  std::vector<std::string> owners;
  for (int i = 0; i < 12; ++i)
    owners.push_back(std::string(1, static_cast<char>('a' + i % 3)));
  auto t = table_of({row("a", silo_status::active),
                     row("b", silo_status::shutting_down),
                     row("c", silo_status::active)});
  auto counts = after(owners, plan_moves(map_of(owners), t));
  EXPECT_EQ(counts.count("b"), 0u);
  EXPECT_EQ(counts["a"], 6);
  EXPECT_EQ(counts["c"], 6);
}

TEST(plan_moves, leaves_partitions_of_dead_silos_alone) {
  std::vector<std::string> owners = {"a", "a", "d", "d", "d", "d"};
  auto t
      = table_of({row("a", silo_status::active), row("b", silo_status::active),
                  row("d", silo_status::dead)});
  auto moves = plan_moves(map_of(owners), t);
  ASSERT_EQ(moves.size(), 1u);
  EXPECT_EQ(moves[0].from, "a");
  EXPECT_EQ(moves[0].to, "b");
  // A balanced map needs nothing.
  EXPECT_TRUE(plan_moves(map_of({"a", "b", "a", "b"}), t).empty());
}

TEST(plan_moves, ties_go_to_the_lower_silo_and_the_higher_partition) {
  std::vector<std::string> owners(5, "a");
  auto t
      = table_of({row("a", silo_status::active), row("c", silo_status::active),
                  row("b", silo_status::active)});
  auto moves = plan_moves(map_of(owners), t);
  // b and c tie as the least loaded: b (the lower id) gets the first move,
  // and the highest partition moves first.
  ASSERT_EQ(moves.size(), 3u);
  EXPECT_EQ(moves[0], (partition_move{4, "a", "b"}));
  EXPECT_EQ(moves[1], (partition_move{3, "a", "c"}));
  EXPECT_EQ(moves[2], (partition_move{2, "a", "b"}));
  EXPECT_EQ(plan_moves(map_of(owners), t), moves) << "the same plan again";
}

} // namespace

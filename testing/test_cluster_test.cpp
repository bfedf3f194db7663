// The in-process test cluster itself: silos start, crash, restart on their
// data, leave and join, and `wait_stable` sees the cluster settle each
// time.

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "testing/test_cluster.hpp"
#include "testing/test_grains.hpp"

using namespace granary;
using namespace granary::testing;
using namespace std::chrono_literals;

namespace {

constexpr uint32_t partitions = 12;

// The partitions the map gives silo `id`.
std::vector<uint32_t> owned_by(cluster::membership_store& store,
                               const std::string& id) {
  std::vector<uint32_t> out;
  auto map = store.read_partition_map();
  if (map)
    for (auto& a : map->partitions)
      if (auto* owner = a.primary(); owner && *owner == id)
        out.push_back(a.partition);
  return out;
}

cluster::silo_status status_of(cluster::membership_store& store,
                               const std::string& id) {
  auto snap = store.read(id);
  return snap && snap->find(id) ? snap->find(id)->status
                                : cluster::silo_status::dead;
}

// Start 3, crash one, restart it, one leaves, one joins: over loopback TCP,
// or over the in-process network.
void crash_restart_leave_and_join(bool in_memory) {
  auto built
      = test_cluster_builder{3}
            .partitions(partitions)
            .in_memory_network(in_memory)
            .grains([](host::registration& r) { return r.grain<probe>(); })
            .build();
  ASSERT_TRUE(built) << describe(built.error());
  auto& c = **built;
  auto& store = c.membership();
  ASSERT_EQ(c.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(c.running(i));
    EXPECT_EQ(c.id(i), "silo-" + std::to_string(i));
    EXPECT_EQ(c.agent(i).served().size(), partitions / 3);
    EXPECT_EQ(status_of(store, c.id(i)), cluster::silo_status::active);
  }
  // A grain on silo 2, written through silo 0.
  auto mine = c.agent(2).served();
  std::string key;
  for (int i = 0; key.empty(); ++i) {
    auto k = "g" + std::to_string(i);
    auto p = partition_of(id_of<probe>(k), partitions);
    if (std::find(mine.begin(), mine.end(), p) != mine.end())
      key = k;
  }
  Add add5;
  add5.set_delta(5);
  auto added = grain_ref<probe>{c.runtime(0), key}.call<Value>(add5, 2s);
  ASSERT_TRUE(added) << describe(added.error());

  // A crash: the others declare silo 2 dead; its data stays.
  auto memory = c.memory(2);
  auto incarnation = c.host(2).incarnation();
  c.crash(2);
  EXPECT_FALSE(c.running(2));
  ASSERT_TRUE(eventually(
      [&] { return status_of(store, c.id(2)) == cluster::silo_status::dead; },
      15s));
  EXPECT_EQ(owned_by(store, c.id(2)), mine) << "a dead silo keeps its own";

  // A restart on the same data, as a new incarnation.
  auto restarted = c.restart(2);
  ASSERT_FALSE(restarted) << describe(restarted);
  EXPECT_GT(c.host(2).incarnation(), incarnation);
  EXPECT_EQ(c.memory(2), memory);
  ASSERT_TRUE(c.wait_stable());
  EXPECT_FALSE(c.declared_dead(2)) << "the new run was not declared dead";
  auto v = grain_ref<probe>{c.runtime(1), key}.call<Value>(Get{}, 2s);
  ASSERT_TRUE(v) << describe(v.error());
  EXPECT_EQ(v->value(), 5);

  // A graceful leave: silo 1's partitions move to silos 0 and 2.
  auto left = c.leave(1);
  ASSERT_FALSE(left) << describe(left);
  EXPECT_FALSE(c.running(1));
  ASSERT_TRUE(c.wait_stable());
  EXPECT_EQ(status_of(store, c.id(1)), cluster::silo_status::dead);
  EXPECT_TRUE(owned_by(store, c.id(1)).empty());
  EXPECT_EQ(owned_by(store, c.id(0)).size(), partitions / 2);
  EXPECT_EQ(owned_by(store, c.id(2)).size(), partitions / 2);

  // A new silo joins and takes its share.
  auto joined = c.add_silo();
  ASSERT_TRUE(joined) << describe(joined.error());
  EXPECT_EQ(*joined, 3u);
  ASSERT_TRUE(c.wait_stable());
  for (size_t i : {0u, 2u, 3u})
    EXPECT_EQ(c.agent(i).served().size(), partitions / 3) << c.id(i);
  v = grain_ref<probe>{c.runtime(3), key}.call<Value>(Get{}, 2s);
  ASSERT_TRUE(v) << describe(v.error());
  EXPECT_EQ(v->value(), 5);
}

TEST(test_cluster, silos_crash_restart_leave_and_join) {
  crash_restart_leave_and_join(false);
}

TEST(test_cluster, the_same_over_the_in_process_network) {
  crash_restart_leave_and_join(true);
}

} // namespace

// Two silos of an in-process test cluster (testing/test_cluster.hpp), each
// serving half of the partitions, connected by the Asio transport over
// real loopback TCP: durable messages and transient calls cross between
// them, effectively once, also through a transport that drops, duplicates
// and reorders frames.

#include <algorithm>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "cluster/routing/transport_router.hpp"
#include "cluster/transport/faulty_transport.hpp"
#include "testing/test_cluster.hpp"
#include "testing/test_grains.hpp"

using namespace granary;
using namespace granary::cluster;
using namespace granary::testing;
using namespace std::chrono_literals;

namespace {

constexpr uint32_t partitions = 8;

grain_id pid(const std::string& key) {
  return id_of<probe>(key);
}

class router_test : public ::testing::Test {
protected:
  // Starts silos "silo-0" (a) and "silo-1" (b), which share the partitions
  // evenly, optionally with faults injected into both transports.
  void start(const fault_config* faults = nullptr) {
    auto spec
        = test_cluster_builder{2}
              .partitions(partitions)
              .grains([](host::registration& r) { return r.grain<probe>(); })
              .configure([faults](host::silo_file_config& cfg, size_t) {
                cfg.limits.redelivery_timeout = 200ms;
                cfg.limits.remote_call_timeout = 300ms;
                if (faults) {
                  cfg.faults_enabled = true;
                  cfg.faults = *faults;
                }
              });
    auto built = spec.build();
    ASSERT_TRUE(built) << describe(built.error());
    c = std::move(*built);
    for (size_t i = 0; i < 2; ++i)
      served[i] = c->agent(i).served();
  }

  silo& a() {
    return c->runtime(0);
  }

  silo& b() {
    return c->runtime(1);
  }

  // A key of grain type test.probe whose partition silo `owner` serves.
  std::string key_on(size_t owner, int i) const {
    auto& mine = served[owner];
    for (int j = 0;; ++j) {
      auto key = "k" + std::to_string(i) + "-" + std::to_string(j);
      auto p = partition_of(pid(key), partitions);
      if (std::find(mine.begin(), mine.end(), p) != mine.end())
        return key;
    }
  }

  static int64_t value(silo& s, const std::string& key) {
    auto v = grain_ref<probe>{s, key}.call<Value>(Get{});
    return v ? v->value() : -1;
  }

  std::unique_ptr<test_cluster> c;
  // The partitions each silo served once the cluster was stable.
  std::vector<uint32_t> served[2];
};

} // namespace

TEST_F(router_test, durable_messages_cross_silos_once) {
  start();
  ASSERT_TRUE(c);
  constexpr int n = 200;
  // Forwards sent to grains on silo a add to grains on silo b.
  for (int i = 0; i < n; ++i) {
    Forward f;
    f.set_to(key_on(1, i % 5));
    f.set_delta(1);
    ASSERT_FALSE(a().send(pid(key_on(0, i)), f));
  }
  ASSERT_TRUE(eventually([&] {
    int64_t sum = 0;
    for (int k = 0; k < 5; ++k)
      sum += value(a(), key_on(1, k)); // Read through silo a: forwarded.
    return sum == n;
  }));
  EXPECT_TRUE(
      eventually([&] { return c->memory(0)->count(column::outbox) == 0; }));
  // The remote receiver keeps dedup records; silo a has none of b's grains.
  EXPECT_EQ(c->memory(1)->count(column::dedup), static_cast<size_t>(n));
  EXPECT_EQ(c->memory(0)->count(column::state), static_cast<size_t>(n));
  EXPECT_EQ(c->memory(1)->count(column::state), 5u);
}

TEST_F(router_test, client_calls_and_sends_are_forwarded_to_the_owner) {
  start();
  ASSERT_TRUE(c);
  auto remote = key_on(1, 0);
  Add add;
  add.set_delta(7);
  ASSERT_FALSE(a().send(pid(remote), add, "client-1"));
  ASSERT_FALSE(a().send(pid(remote), add, "client-1")); // deduplicated
  EXPECT_EQ(value(a(), remote), 7);
  EXPECT_EQ(value(b(), remote), 7);
  auto r = grain_ref<probe>{a(), remote}.call<Value>(add);
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(r->value(), 14);
  // The owner's errors come back as they are.
  auto bad = a().call(grain_id{"no.such", remote}, std::make_shared<Get>());
  ASSERT_FALSE(bad);
  EXPECT_EQ(code_of(bad.error()), errc::unknown_grain_type)
      << describe(bad.error());
}

TEST_F(router_test, a_faulty_network_still_delivers_exactly_once) {
  fault_config faults;
  faults.seed = 11;
  faults.drop_rate = 0.2;
  faults.duplicate_rate = 0.2;
  faults.reorder_rate = 0.2;
  faults.delay_rate = 0.2;
  faults.max_delay = 20ms;
  start(&faults);
  ASSERT_TRUE(c);
  constexpr int n = 150;
  for (int i = 0; i < n; ++i) {
    Forward f;
    f.set_to(key_on(1, i % 3));
    f.set_delta(1);
    ASSERT_FALSE(a().send(pid(key_on(0, i)), f));
  }
  ASSERT_TRUE(eventually(
      [&] {
        int64_t sum = 0;
        for (int k = 0; k < 3; ++k)
          sum += value(b(), key_on(1, k));
        return sum == n && c->memory(0)->count(column::outbox) == 0;
      },
      20s));
  std::this_thread::sleep_for(300ms); // Late duplicates change nothing.
  int64_t sum = 0;
  for (int k = 0; k < 3; ++k)
    sum += value(b(), key_on(1, k));
  EXPECT_EQ(sum, n);
  EXPECT_GT(b().stats().duplicates, 0u);
}

TEST_F(router_test, a_call_to_a_silo_that_is_down_says_which_partition) {
  start();
  ASSERT_TRUE(c);
  auto remote = key_on(1, 0);
  c->crash(1); // Silo b is unreachable from now on.
  auto started = std::chrono::steady_clock::now();
  auto r = a().call(pid(remote), std::make_shared<Get>(), 5s);
  ASSERT_FALSE(r);
  auto why = describe(r.error());
  EXPECT_NE(why.find("partition "
                     + std::to_string(partition_of(pid(remote), partitions))),
            std::string::npos)
      << why;
  EXPECT_NE(why.find("silo '" + c->id(1) + "'"), std::string::npos) << why;
  EXPECT_NE(why.find("unavailable"), std::string::npos) << why;
  EXPECT_LT(std::chrono::steady_clock::now() - started, 4s);
  // A durable send waits in the sender's outbox instead: still stored.
  Forward f;
  f.set_to(remote);
  f.set_delta(1);
  ASSERT_FALSE(a().send(pid(key_on(0, 0)), f));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(c->memory(0)->count(column::outbox), 1u);
}

// Two silos in one process, each owning half of the partitions, connected
// by the Asio transport over real loopback TCP: durable messages and
// transient calls cross between them, effectively once, also through a
// transport that drops, duplicates and reorders frames.

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "cluster.pb.h"
#include "cluster/routing/transport_router.hpp"
#include "cluster/transport/asio_transport.hpp"
#include "cluster/transport/faulty_transport.hpp"
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

struct node {
  explicit node(std::string name)
      : id(std::move(name)) {}

  std::string id;
  std::shared_ptr<memory_storage> mem = std::make_shared<memory_storage>();
  std::unique_ptr<silo> s;
  std::shared_ptr<transport> net;
  std::atomic<transport_router*> router_ptr{nullptr};
  std::unique_ptr<transport_router> router;
  uint16_t port = 0;
};

class router_test : public ::testing::Test {
protected:
  // Starts silos "a" (even partitions) and "b" (odd), optionally with
  // faults injected into both transports.
  void start(const fault_config* faults = nullptr) {
    for (auto* n : {&a, &b}) {
      asio_transport_config tc;
      tc.cluster_id = "router-test";
      tc.silo_id = n->id;
      tc.incarnation = 1;
      std::shared_ptr<transport> net = std::make_shared<asio_transport>(tc);
      if (faults)
        net = std::make_shared<faulty_transport>(net, *faults);
      n->net = net;
      n->net->set_handler([n](const peer_info& from, Frame&& f) {
        if (auto* r = n->router_ptr.load())
          r->handler()(from, std::move(f));
      });
      auto port = n->net->start(endpoint{"127.0.0.1", 0});
      ASSERT_TRUE(port) << describe(port.error());
      n->port = *port;
    }
    std::vector<peer_address> owners;
    for (uint32_t p = 0; p < partitions; ++p) {
      auto& n = p % 2 == 0 ? a : b;
      owners.push_back(peer_address{n.id, endpoint{"127.0.0.1", n.port}});
    }
    for (auto* n : {&a, &b}) {
      n->router = std::make_unique<transport_router>(
          *n->net, peer_address{n->id, endpoint{"127.0.0.1", n->port}}, owners);
      n->router_ptr = n->router.get();
      silo_config cfg;
      cfg.partitions = partitions;
      cfg.redelivery_timeout = 200ms;
      cfg.timer_poll = 10ms;
      cfg.router = n->router.get();
      cfg.remote_call_timeout = 300ms;
      grain_registry reg;
      ASSERT_FALSE(register_grain<probe>(reg));
      auto started = silo::start(cfg, std::move(reg),
                                 std::make_unique<shared_storage>(n->mem));
      ASSERT_TRUE(started) << describe(started.error());
      n->s = std::move(*started);
      n->router->attach(*n->s);
    }
  }

  void TearDown() override {
    for (auto* n : {&a, &b}) {
      if (n->router)
        n->router->stop();
      n->router_ptr = nullptr;
    }
    for (auto* n : {&a, &b})
      if (n->net)
        n->net->stop();
    for (auto* n : {&a, &b})
      n->s.reset();
  }

  // A key of grain type test.probe whose partition has the given parity.
  static std::string key_on(uint32_t parity, int i) {
    for (int j = 0;; ++j) {
      auto key = "k" + std::to_string(i) + "-" + std::to_string(j);
      if (partition_of(pid(key), partitions) % 2 == parity)
        return key;
    }
  }

  static int64_t value(silo& s, const std::string& key) {
    auto v = grain_ref<probe>{s, key}.call<Value>(Get{});
    return v ? v->value() : -1;
  }

  node a{"a"};
  node b{"b"};
};

} // namespace

TEST_F(router_test, durable_messages_cross_silos_once) {
  start();
  constexpr int n = 200;
  // Forwards sent to grains on silo a add to grains on silo b.
  for (int i = 0; i < n; ++i) {
    Forward f;
    f.set_to(key_on(1, i % 5));
    f.set_delta(1);
    ASSERT_FALSE(a.s->send(pid(key_on(0, i)), f));
  }
  ASSERT_TRUE(eventually([&] {
    int64_t sum = 0;
    for (int k = 0; k < 5; ++k)
      sum += value(*a.s, key_on(1, k)); // Read through silo a: forwarded.
    return sum == n;
  }));
  EXPECT_TRUE(eventually([&] { return a.mem->count(column::outbox) == 0; }));
  // The remote receiver keeps dedup records; silo a has none of b's grains.
  EXPECT_EQ(b.mem->count(column::dedup), static_cast<size_t>(n));
  EXPECT_EQ(a.mem->count(column::state), static_cast<size_t>(n));
  EXPECT_EQ(b.mem->count(column::state), 5u);
}

TEST_F(router_test, client_calls_and_sends_are_forwarded_to_the_owner) {
  start();
  auto remote = key_on(1, 0);
  Add add;
  add.set_delta(7);
  ASSERT_FALSE(a.s->send(pid(remote), add, "client-1"));
  ASSERT_FALSE(a.s->send(pid(remote), add, "client-1")); // deduplicated
  EXPECT_EQ(value(*a.s, remote), 7);
  EXPECT_EQ(value(*b.s, remote), 7);
  auto r = grain_ref<probe>{*a.s, remote}.call<Value>(add);
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(r->value(), 14);
  // The owner's errors come back as they are.
  auto bad = a.s->call(grain_id{"no.such", remote}, std::make_shared<Get>());
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
  constexpr int n = 150;
  for (int i = 0; i < n; ++i) {
    Forward f;
    f.set_to(key_on(1, i % 3));
    f.set_delta(1);
    ASSERT_FALSE(a.s->send(pid(key_on(0, i)), f));
  }
  ASSERT_TRUE(eventually(
      [&] {
        int64_t sum = 0;
        for (int k = 0; k < 3; ++k)
          sum += value(*b.s, key_on(1, k));
        return sum == n && a.mem->count(column::outbox) == 0;
      },
      20s));
  std::this_thread::sleep_for(300ms); // Late duplicates change nothing.
  int64_t sum = 0;
  for (int k = 0; k < 3; ++k)
    sum += value(*b.s, key_on(1, k));
  EXPECT_EQ(sum, n);
  EXPECT_GT(b.s->stats().duplicates, 0u);
}

TEST_F(router_test, a_call_to_a_silo_that_is_down_says_which_partition) {
  start();
  auto remote = key_on(1, 0);
  b.net->stop(); // Silo b is unreachable from now on.
  auto started = std::chrono::steady_clock::now();
  auto r = a.s->call(pid(remote), std::make_shared<Get>(), 5s);
  ASSERT_FALSE(r);
  auto why = describe(r.error());
  EXPECT_NE(why.find("partition "
                     + std::to_string(partition_of(pid(remote), partitions))),
            std::string::npos)
      << why;
  EXPECT_NE(why.find("silo 'b'"), std::string::npos) << why;
  EXPECT_NE(why.find("unavailable"), std::string::npos) << why;
  EXPECT_LT(std::chrono::steady_clock::now() - started, 4s);
  // A durable send waits in the sender's outbox instead: still stored.
  Forward f;
  f.set_to(remote);
  f.set_delta(1);
  ASSERT_FALSE(a.s->send(pid(key_on(0, 0)), f));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(a.mem->count(column::outbox), 1u);
}

// One silo on in-memory storage under the deterministic kernel: the real
// partitions (on CAF's test coordinator), commit loop and timers run on
// the kernel's threads, and a run replays bit for bit from its seed.

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "actors/grain.hpp"
#include "runtime/memory_storage.hpp"
#include "runtime/sys.hpp"
#include "sim/kernel.hpp"
#include "testing/test_grains.hpp"

using namespace granary;
using namespace granary::testing;
using namespace std::chrono_literals;

namespace {

constexpr int grains = 5;
constexpr int clients = 3;
constexpr int sends_per_client = 20;

struct outcome {
  sim::run_result run;
  std::vector<int64_t> values;
  int64_t fired = 0;
};

// Three clients send durable Adds to five grains while one grain runs a
// periodic timer for two virtual hours; then every value is read.
outcome run_silo(uint64_t seed) {
  sim::kernel_config kc;
  kc.seed = seed;
  sim::kernel k{kc};
  outcome out;
  out.run = k.run([&] {
    silo_config cfg;
    cfg.partitions = 4;
    cfg.threads = 1;
    grain_registry reg;
    if (auto err = register_grain<probe>(reg))
      k.fail("setup", describe(err));
    auto started
        = silo::start(cfg, std::move(reg), std::make_unique<memory_storage>(),
                      make_system_clock());
    if (!started)
      k.fail("setup", "silo::start: " + describe(started.error()));
    auto& s = **started;
    Arm arm;
    arm.set_name("tick");
    arm.set_delay_ms(60'000);
    arm.set_period_ms(600'000);
    if (auto err = grain_ref<probe>{s, "timed"}.send(arm))
      k.fail("send", describe(err));
    std::vector<sys::thread> threads;
    for (int c = 0; c < clients; ++c)
      threads.emplace_back("client-" + std::to_string(c), [&, c] {
        for (int i = 0; i < sends_per_client; ++i) {
          Add add;
          add.set_delta(1);
          auto key = "g" + std::to_string((c + i) % grains);
          if (auto err = grain_ref<probe>{s, key}.send(add))
            k.fail("send", key + ": " + describe(err));
        }
      });
    for (auto& t : threads)
      t.join();
    sys::sleep_for(2h);
    for (int g = 0; g < grains; ++g) {
      auto v = grain_ref<probe>{s, "g" + std::to_string(g)}.call<Value>(Get{});
      if (!v)
        k.fail("read", describe(v.error()));
      out.values.push_back(v->value());
    }
    auto v = grain_ref<probe>{s, "timed"}.call<Value>(Get{});
    if (!v)
      k.fail("read", describe(v.error()));
    out.fired = v->fired();
    if (auto err = s.stop())
      k.fail("stop", describe(err));
  });
  return out;
}

} // namespace

TEST(sim_runtime, a_silo_runs_under_the_kernel_and_loses_nothing) {
  auto out = run_silo(1);
  ASSERT_TRUE(out.run.ok) << out.run.invariant << ": " << out.run.detail;
  int64_t total = 0;
  for (auto v : out.values)
    total += v;
  EXPECT_EQ(total, clients * sends_per_client);
  // First at 1 min, then every 10 min, for 2 h: 12 firings.
  EXPECT_EQ(out.fired, 12);
  EXPECT_GE(out.run.elapsed, 2h);
}

TEST(sim_runtime, the_same_seed_gives_the_same_trace) {
  auto a = run_silo(42);
  auto b = run_silo(42);
  ASSERT_TRUE(a.run.ok) << a.run.invariant << ": " << a.run.detail;
  ASSERT_TRUE(b.run.ok) << b.run.invariant << ": " << b.run.detail;
  EXPECT_EQ(a.run.trace_hash, b.run.trace_hash);
  EXPECT_EQ(a.run.steps, b.run.steps);
  auto c = run_silo(43);
  ASSERT_TRUE(c.run.ok) << c.run.invariant << ": " << c.run.detail;
  EXPECT_NE(a.run.trace_hash, c.run.trace_hash);
}

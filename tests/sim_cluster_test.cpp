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
#include "testing/simulation.hpp"
#include "testing/test_grains.hpp"

using namespace granary;
using namespace granary::testing;
using namespace std::chrono_literals;

namespace {

constexpr int counters = 6;
constexpr int adds = 60;

// Sends `adds` durable Adds, each with its own message id, through random
// silos; a send whose answer is lost is sent again with the same id. The
// checks read every counter: each acknowledged add counts exactly once.
simulation counter_simulation(sim_faults faults) {
  sim_options opts;
  opts.silos = 3;
  opts.partitions = 6;
  opts.fault_time = 60s;
  opts.faults = faults;
  opts.verbose_trace = std::getenv("GRANARY_SIM_VERBOSE") != nullptr;
  simulation sim{opts};
  auto sent = std::make_shared<std::map<std::string, std::set<std::string>>>();
  sim.grains([](host::registration& r) { return r.grain<probe>(); })
      .workload([sent](sim_world& w) {
        for (int n = 0; n < adds; ++n) {
          auto key = "c" + std::to_string(n % counters);
          auto msg_id = "add-" + std::to_string(n);
          // Bounded: 200 attempts, 1 s apart at most.
          bool acked = false;
          for (int attempt = 0; attempt < 200 && !acked; ++attempt) {
            auto via = w.random() % w.size();
            caf::error result = make_error(errc::silo_stopped, "not sent");
            auto err = w.on(via, [&](silo& s) {
              Add add;
              add.set_delta(1);
              result = grain_ref<probe>{s, key}.send(add, msg_id);
            });
            acked = !err && !result;
            if (!acked)
              w.trace(msg_id + " via silo-" + std::to_string(via) + ": "
                      + describe(err ? err : result));
            if (!acked)
              sys::sleep_for(std::chrono::milliseconds{100 + w.random() % 900});
          }
          if (!acked)
            w.fail("liveness", msg_id + " was never acknowledged");
          (*sent)[key].insert(msg_id);
        }
      })
      .check("no acknowledged message is lost or applied twice",
             [sent](sim_world& w) -> std::optional<std::string> {
               for (int c = 0; c < counters; ++c) {
                 auto key = "c" + std::to_string(c);
                 std::optional<Value> value;
                 // Bounded: every silo is up again; 50 tries.
                 for (int attempt = 0; attempt < 50 && !value; ++attempt) {
                   static_cast<void>(w.on(attempt % w.size(), [&](silo& s) {
                     auto v = grain_ref<probe>{s, key}.call<Value>(Get{});
                     if (v)
                       value = *v;
                   }));
                   if (!value)
                     sys::sleep_for(500ms);
                 }
                 if (!value)
                   return key + " cannot be read";
                 auto& want = (*sent)[key];
                 std::multiset<std::string> seen(value->seen().begin(),
                                                 value->seen().end());
                 for (auto& id : want)
                   if (seen.count(id) != 1)
                     return key + ": " + id + " applied "
                            + std::to_string(seen.count(id)) + " times";
                 if (value->value() != static_cast<int64_t>(want.size()))
                   return key + " is " + std::to_string(value->value())
                          + ", expected " + std::to_string(want.size());
               }
               return std::nullopt;
             });
  return sim;
}

} // namespace

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

TEST(sim_cluster, counters_add_up_without_faults) {
  auto report = counter_simulation(sim_faults::none()).run(1);
  EXPECT_TRUE(report.run.ok) << report.summary() << "\n" << details(report);
  EXPECT_TRUE(report.faults.empty());
}

TEST(sim_cluster, counters_survive_every_fault_kind) {
  auto sim = counter_simulation(sim_faults::all());
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    auto report = sim.run(seed);
    EXPECT_TRUE(report.run.ok) << report.summary() << "\n"
                               << [&] {
                                    std::string t;
                                    for (auto& l : report.run.tail)
                                      t += "  " + l + "\n";
                                    return t;
                                  }();
    EXPECT_GE(report.run.elapsed, 60s);
    std::cerr << report.summary() << "\n";
  }
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

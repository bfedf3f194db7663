// The control-plane sample's workflows on three simulated silos with every
// fault kind, against an in-process flaky provider API (`memory_cloud`),
// over many seeds: every namespace ends ready or compensated, no
// resource is created twice, nothing leaks, and every journal replays.
// GRANARY_CP_SIM_SEEDS=N runs N seeds (default 3).

#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "samples/control_plane/control_plane.hpp"
#include "samples/control_plane/fake_cloud/memory_cloud.hpp"
#include "testing/simulation.hpp"

using namespace granary;
using namespace std::chrono_literals;

namespace {

constexpr int namespaces = 6;

cp::CreateNamespace ns(int i) {
  cp::CreateNamespace in;
  in.set_name("ns-" + std::to_string(i));
  in.set_cell("cell-" + std::to_string(i % 3));
  // Every 6th asks for more quota than a cell grants: it compensates.
  in.set_tier(i % 6 == 5 ? "xl" : "standard");
  return in;
}

// What the workload saw: the namespaces that completed and failed.
struct outcomes {
  sys::mutex mtx;
  std::set<std::string> ready;
  std::set<std::string> failed;
};

granary::testing::simulation
control_plane_simulation(std::shared_ptr<fake_cloud::memory_cloud> api,
                         std::shared_ptr<outcomes> seen) {
  granary::testing::sim_options opts;
  opts.faults = granary::testing::sim_faults::all();
  opts.fault_time = 60s;
  opts.settle_time = 10min;
  opts.verbose_trace = std::getenv("GRANARY_SIM_VERBOSE") != nullptr;
  granary::testing::simulation sim{opts};
  sim.grains([api](host::registration& r) -> caf::error {
       auto cloud = std::make_shared<cp::cloud_config>();
       cloud->rate_per_s = 0; // The limiter grain is not under test here.
       if (auto err = r.services.add(std::move(cloud)))
         return err;
       if (auto err = r.services.add(std::shared_ptr<fake_cloud::api>{api}))
         return err;
       return cp::register_all(r.grains, r.activities);
     })
      .workload([api, seen](granary::testing::sim_world& w) {
        api->clear();
        fake_cloud::memory_faults faults;
        faults.min_latency = 5ms;
        faults.max_latency = 300ms;
        faults.fail_before_apply = 0.1;
        faults.fail_after_apply = 0.1;
        api->set_faults(faults);
        {
          std::lock_guard guard{seen->mtx};
          seen->ready.clear();
          seen->failed.clear();
        }
        for (int i = 0; i < namespaces; ++i)
          w.start<cp::create_namespace>(ns(i).name(), ns(i));
        for (int i = 0; i < namespaces; ++i) {
          auto out = w.finish<cp::create_namespace>(ns(i).name());
          std::lock_guard guard{seen->mtx};
          (out ? seen->ready : seen->failed).insert(ns(i).name());
        }
      })
      .check(
          "every namespace ends ready or compensated",
          [seen](granary::testing::sim_world&) -> std::optional<std::string> {
            std::lock_guard guard{seen->mtx};
            for (int i = 0; i < namespaces; ++i) {
              auto name = ns(i).name();
              bool xl = ns(i).tier() == "xl";
              if (xl && seen->failed.count(name) == 0)
                return name + " asked for too much quota but is ready";
              if (!xl && seen->ready.count(name) == 0)
                return name + " failed";
            }
            return std::nullopt;
          })
      .check("no effect is applied twice per idempotency key",
             [api, seen](
                 granary::testing::sim_world&) -> std::optional<std::string> {
               auto audit = api->audit();
               if (!audit.double_creates.empty()) {
                 auto& d = audit.double_creates.front();
                 return d.kind + "/" + d.name + " was created again under key "
                        + d.key + " while it was live";
               }
               std::lock_guard guard{seen->mtx};
               std::map<std::string, size_t> live;
               for (auto& r : audit.resources) {
                 if (r.created > 1)
                   return r.kind + "/" + r.name + " was created "
                          + std::to_string(r.created) + " times";
                 if (!r.live)
                   continue;
                 ++live[r.kind];
                 if (seen->ready.count(r.name) == 0)
                   return r.kind + "/" + r.name
                          + " leaked from a compensated namespace";
               }
               for (auto kind : cp::namespace_kinds)
                 if (live[std::string{kind}] != seen->ready.size())
                   return std::to_string(live[std::string{kind}]) + " live "
                          + std::string{kind} + " resources for "
                          + std::to_string(seen->ready.size())
                          + " ready namespaces";
               return std::nullopt;
             })
      .check("journal replay issues the same commands",
             [](granary::testing::sim_world& w) {
               std::vector<std::string> ids;
               for (int i = 0; i < namespaces; ++i)
                 ids.push_back(ns(i).name());
               return granary::testing::check_journals<cp::create_namespace>(
                   w, ids);
             });
  return sim;
}

} // namespace

TEST(control_plane_sim, namespaces_survive_every_fault_kind_over_many_seeds) {
  auto api = std::make_shared<fake_cloud::memory_cloud>();
  auto seen = std::make_shared<outcomes>();
  auto sim = control_plane_simulation(api, seen);
  uint64_t seeds = 3;
  if (auto* n = std::getenv("GRANARY_CP_SIM_SEEDS"))
    seeds = std::strtoull(n, nullptr, 10);
  for (uint64_t seed = 1; seed <= seeds; ++seed) {
    auto report = sim.run(seed);
    EXPECT_TRUE(report.run.ok) << report.summary() << report.details();
    // The provider's faults really happened: retries were needed.
    if (report.run.ok) {
      auto audit = api->audit();
      EXPECT_GT(audit.faults.failed_before_apply
                    + audit.faults.failed_after_apply,
                0u);
    }
  }
}

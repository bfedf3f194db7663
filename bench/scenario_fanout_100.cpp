// fanout-100: workflows that start 100 activities at once and await them
// together, against the durable-ping messages those activities take.

#include <algorithm>

#include "bench/bench_grains.hpp"
#include "bench/report.hpp"
#include "bench/scenario.hpp"
#include "bench/workflow_load.hpp"

namespace granary::bench {

namespace {

// Workflows in flight (each with 100 activities).
constexpr size_t fanout_100_concurrency = 8;

caf::expected<result> run(session& s) {
  auto duration_s = s.duration_s();
  auto concurrency = s.opts.concurrency.value_or(fanout_100_concurrency);
  auto payload = s.payload();
  if (auto err = s.ensure_durable_baseline())
    return err;
  auto ours = measure_workflows(s.opts.data_dir, duration_s, concurrency, 1,
                                payload, fanout_flow::type_name, "fanout-100",
                                s.opts.progress);
  if (!ours)
    return std::move(ours.error());
  auto& base = *s.durable;
  auto width = static_cast<double>(fanout_width);
  auto activities_per_s = ours->load.ops_per_s * width;
  // An activity is two durable messages at least (its start and its
  // recorded result): compare activities with pairs of durable-ping
  // messages.
  auto res = make_result("fanout-100", ours->load, "durable-ping/200",
                         base.msgs_per_s / (2 * width));
  res.target = "report only";
  res.met = true;
  res.extras
      = {{"width", width},
         {"concurrency", static_cast<double>(concurrency)},
         {"payload_bytes", static_cast<double>(payload)},
         {"duration_s", duration_s},
         {"activities_per_s", activities_per_s},
         {"durable_turns_per_workflow", ours->turns_per_workflow},
         {"ops_per_workflow", ours->ops_per_workflow},
         {"bytes_per_workflow", ours->bytes_per_workflow},
         {"state_bytes_per_workflow", ours->state_bytes_per_workflow},
         {"ops_per_fsync", ours->ops_per_fsync},
         {"fsyncs_per_s", ours->fsyncs_per_s},
         {"cpu_cores", ours->load.cpu.own_cores},
         {"other_cpu_cores", ours->load.cpu.other_cores},
         {"cpu_us_per_activity",
          ours->load.cpu.own_cores / std::max(activities_per_s, 1e-9) * 1e6},
         {"baseline_msgs_per_s", base.msgs_per_s},
         {"baseline_cpu_cores", base.cpu_cores},
         {"baseline_other_cpu_cores", base.other_cpu_cores}};
  return res;
}

} // namespace

constinit const scenario_def fanout_100_scenario{
    "fanout-100",
    "workflows of 100 parallel activities against durable-ping msgs/s / "
    "200",
    &run};

} // namespace granary::bench

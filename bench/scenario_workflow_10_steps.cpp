// workflow-10-steps: workflows of 10 sequential durable calls, against the
// durable-ping messages those calls take, and next to the same calls
// chained by a hand-written grain without a journal.

#include "bench/bench_grains.hpp"
#include "bench/report.hpp"
#include "bench/scenario.hpp"
#include "bench/workflow_load.hpp"

namespace granary::bench {

namespace {

constexpr size_t workflow_concurrency = 64;
// "A 10-step workflow costs at most about 2x the durable messages of 10
// plain durable calls": workflows/s >= 0.5 x (durable msgs/s / 20).
constexpr double workflow_target = 0.5;

caf::expected<result> run(session& s) {
  auto [duration_s, concurrency, grains, payload]
      = s.settings(workflow_concurrency, small_grains);
  if (auto err = s.ensure_durable_baseline())
    return err;
  auto ours = measure_workflows(s.opts.data_dir, duration_s, concurrency,
                                grains, payload, steps_flow::type_name,
                                "workflow-10-steps", s.opts.progress);
  if (!ours)
    return std::move(ours.error());
  // The same calls without the workflow machinery: what the durable calls
  // themselves cost, so the journal's share can be told apart.
  auto plain = measure_workflows(
      s.opts.data_dir, duration_s, concurrency, grains, payload,
      chain::type_name, "workflow-10-steps: call chain", s.opts.progress);
  if (!plain)
    return std::move(plain.error());
  auto cpu_us_per_chain
      = plain->load.cpu.own_cores / plain->load.ops_per_s * 1e6;
  auto& base = *s.durable;
  auto steps = static_cast<double>(workflow_steps);
  auto cpu_us_per_workflow
      = ours->load.cpu.own_cores / ours->load.ops_per_s * 1e6;
  auto base_cpu_us = base.cpu_cores / base.msgs_per_s * 1e6 * 2 * steps;
  // "A 10-step workflow costs at most about 2x the durable messages of 10
  // plain durable calls": 10 calls are 20 durable messages (request and
  // reply), so one workflow is measured against 20 durable-ping messages
  // and must reach half their rate.
  auto res = make_result("workflow-10-steps", ours->load, "durable-ping/20",
                         base.msgs_per_s / (2 * steps));
  res.target = "ratio >= 0.5";
  res.met = res.ratio >= workflow_target;
  res.extras
      = {{"steps", steps},
         {"concurrency", static_cast<double>(concurrency)},
         {"grains", static_cast<double>(grains)},
         {"payload_bytes", static_cast<double>(payload)},
         {"duration_s", duration_s},
         {"steps_per_s", ours->load.ops_per_s * steps},
         {"durable_turns_per_workflow", ours->turns_per_workflow},
         {"ops_per_workflow", ours->ops_per_workflow},
         {"baseline_ops_per_20_msgs", base.ops_per_msg * 2 * steps},
         {"ops_ratio",
          ratio_of(ours->ops_per_workflow, base.ops_per_msg * 2 * steps)},
         {"bytes_per_workflow", ours->bytes_per_workflow},
         {"baseline_bytes_per_20_msgs", base.bytes_per_msg * 2 * steps},
         {"bytes_ratio",
          ratio_of(ours->bytes_per_workflow, base.bytes_per_msg * 2 * steps)},
         {"state_bytes_per_workflow", ours->state_bytes_per_workflow},
         {"outbox_bytes_per_workflow", ours->outbox_bytes_per_workflow},
         {"dedup_bytes_per_workflow", ours->dedup_bytes_per_workflow},
         {"reads_per_workflow", ours->reads_per_workflow},
         {"ops_per_fsync", ours->ops_per_fsync},
         {"fsyncs_per_s", ours->fsyncs_per_s},
         {"cpu_cores", ours->load.cpu.own_cores},
         {"other_cpu_cores", ours->load.cpu.other_cores},
         {"cpu_us_per_workflow", cpu_us_per_workflow},
         {"baseline_cpu_us_per_20_msgs", base_cpu_us},
         {"cpu_ratio", ratio_of(base_cpu_us, cpu_us_per_workflow)},
         {"chain_per_s", plain->load.ops_per_s},
         {"chain_p50_ms", plain->load.p50_ms},
         {"chain_p99_ms", plain->load.p99_ms},
         {"chain_durable_turns", plain->turns_per_workflow},
         {"chain_ops", plain->ops_per_workflow},
         {"chain_bytes", plain->bytes_per_workflow},
         {"chain_state_bytes", plain->state_bytes_per_workflow},
         {"chain_cpu_us", cpu_us_per_chain},
         {"chain_cpu_cores", plain->load.cpu.own_cores},
         {"chain_other_cpu_cores", plain->load.cpu.other_cores},
         {"workflow_vs_chain", ratio_of(res.ops_per_s, plain->load.ops_per_s)},
         {"baseline_msgs_per_s", base.msgs_per_s},
         {"baseline_concurrency", static_cast<double>(base.concurrency)},
         {"baseline_duration_s", base.duration_s},
         {"baseline_cpu_cores", base.cpu_cores},
         {"baseline_other_cpu_cores", base.other_cpu_cores}};
  return res;
}

} // namespace

constinit const scenario_def workflow_10_steps_scenario{
    "workflow-10-steps", "10-step workflows/s against durable-ping msgs/s / 20",
    &run};

} // namespace granary::bench

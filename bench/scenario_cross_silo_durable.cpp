// cross-silo-durable: durable sends through one silo to grains that a
// second silo owns, on a two-silo test cluster over loopback TCP, against
// durable-ping on one silo.

#include <atomic>
#include <memory>
#include <vector>

#include "bench/bench_grains.hpp"
#include "bench/counting_storage.hpp"
#include "bench/report.hpp"
#include "bench/scenario.hpp"
#include "runtime/log.hpp"
#include "testing/test_cluster.hpp"

namespace granary::bench {

namespace {

/// Durable sends through one silo to counter grains that the other owns,
/// on a two-silo test cluster (the host's real transport, router and agent
/// over loopback): every message crosses (forwarded, committed by the
/// owner with a dedup record, acknowledged back).
caf::expected<load_figures>
measure_cross_silo(const std::string& data_dir, double duration_s,
                   size_t concurrency, size_t grains, size_t payload,
                   const std::string& label, const progress_fn& progress) {
  auto cfg = base_config(concurrency);
  // The cluster's join and handoff lines would bury the figures.
  set_log_level(log_level::warning);
  struct restore_level {
    ~restore_level() {
      set_log_level(log_level::info);
    }
  } restore;
  temp_dir dirs[2];
  counting_storage* counts[2] = {nullptr, nullptr};
  auto built = testing::test_cluster_builder{2}
                   .partitions(cfg.partitions)
                   .configure([&](host::silo_file_config& fc, size_t) {
                     fc.limits = cfg;
                   })
                   .customize([&](host::silo_builder& b, size_t i) {
                     b.storage([&, i](const host::silo_file_config&)
                                   -> caf::expected<std::unique_ptr<storage>> {
                       auto counted = open_counting(data_dir, "cross", dirs[i]);
                       if (!counted)
                         return std::move(counted.error());
                       counts[i] = counted->get();
                       return std::unique_ptr<storage>{std::move(*counted)};
                     });
                   })
                   .grains([](host::registration& r) {
                     return register_bench_grains(r.grains, nullptr);
                   })
                   .build();
  if (!built)
    return std::move(built.error());
  auto& cluster = **built;
  // Grains of the partitions the receiving silo serves.
  auto* agent = cluster.host(1).agent();
  auto served = agent->served();
  std::vector<bool> remote(cfg.partitions, false);
  for (auto p : served)
    remote[p] = true;
  std::vector<grain_id> ids;
  for (size_t i = 0; ids.size() < grains && i < grains * 64; ++i) {
    auto id = id_of<counter>(counter_key(i));
    if (remote[partition_of(id, cfg.partitions)])
      ids.push_back(std::move(id));
  }
  window_snapshots w;
  auto sends = run_durable_sends(
      cluster.runtime(0), std::move(ids), concurrency, payload, duration_s,
      label, progress, w.hooks(cluster.runtime(1), *counts[1]));
  caf::error stop_err;
  for (size_t i = 0; i < cluster.size(); ++i)
    if (auto e = cluster.host(i).stop(); e && !stop_err)
      stop_err = e;
  if (sends.err)
    return sends.err;
  if (stop_err)
    return stop_err;
  return sends.figures;
}

caf::expected<result> run(session& s) {
  auto [duration_s, concurrency, grains, payload]
      = s.settings(durable_concurrency, small_grains);
  if (auto err = s.ensure_durable_baseline())
    return err;
  auto ours
      = measure_cross_silo(s.opts.data_dir, duration_s, concurrency, grains,
                           payload, "cross-silo-durable", s.opts.progress);
  if (!ours)
    return std::move(ours.error());
  auto& base = *s.durable;
  // The cost of crossing a silo: the same durable sends, once to a grain
  // of the receiving silo and once through another silo.
  auto res = make_result("cross-silo-durable", *ours, "durable-ping",
                         base.msgs_per_s);
  res.target = "report only";
  res.met = true;
  res.extras = {{"concurrency", static_cast<double>(concurrency)},
                {"grains", static_cast<double>(grains)},
                {"payload_bytes", static_cast<double>(payload)},
                {"duration_s", duration_s},
                {"cpu_cores", ours->cpu.own_cores},
                {"other_cpu_cores", ours->cpu.other_cores},
                {"baseline_concurrency", static_cast<double>(base.concurrency)},
                {"baseline_cpu_cores", base.cpu_cores},
                {"baseline_other_cpu_cores", base.other_cpu_cores}};
  return res;
}

} // namespace

constinit const scenario_def cross_silo_durable_scenario{
    "cross-silo-durable",
    "durable messages/s between two silos over loopback TCP against "
    "durable-ping",
    &run};

} // namespace granary::bench

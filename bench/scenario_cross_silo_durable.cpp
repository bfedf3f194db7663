// cross-silo-durable: durable sends through one silo to grains that a
// second silo owns, over the Asio transport on loopback, against
// durable-ping on one silo.

#include <atomic>
#include <memory>
#include <vector>

#include "bench/bench_grains.hpp"
#include "bench/counting_storage.hpp"
#include "bench/report.hpp"
#include "bench/scenario.hpp"
#include "cluster.pb.h"
#include "cluster/routing/transport_router.hpp"
#include "cluster/transport/asio_transport.hpp"

namespace granary::bench {

namespace {

/// Durable sends through silo "a" to counter grains that silo "b" owns,
/// over the Asio transport on loopback: every message crosses (forwarded,
/// committed by b with a dedup record, acknowledged back through a).
caf::expected<load_figures>
measure_cross_silo(const std::string& data_dir, double duration_s,
                   size_t concurrency, size_t grains, size_t payload,
                   const std::string& label, const progress_fn& progress) {
  struct member {
    std::string id;
    temp_dir dir;
    std::shared_ptr<cluster::asio_transport> net;
    std::atomic<cluster::transport_router*> ptr{nullptr};
    std::unique_ptr<cluster::transport_router> router;
    std::unique_ptr<silo> s;
    uint16_t port = 0;
  };
  member ms[2];
  ms[0].id = "a";
  ms[1].id = "b";
  auto cfg = base_config(concurrency);
  for (auto& m : ms) {
    cluster::asio_transport_config tc;
    tc.cluster_id = "bench";
    tc.silo_id = m.id;
    tc.incarnation = 1;
    m.net = std::make_shared<cluster::asio_transport>(tc);
    auto* mp = &m;
    m.net->set_handler(
        [mp](const cluster::peer_info& from, cluster::Frame&& f) {
          if (auto* r = mp->ptr.load())
            r->handler()(from, std::move(f));
        });
    auto port = m.net->start(cluster::endpoint{"127.0.0.1", 0});
    if (!port)
      return std::move(port.error());
    m.port = *port;
  }
  std::vector<cluster::peer_address> owners;
  for (uint32_t p = 0; p < cfg.partitions; ++p) {
    auto& m = ms[p % 2];
    owners.push_back({m.id, {"127.0.0.1", m.port}});
  }
  counting_storage* counts = nullptr;
  for (auto& m : ms) {
    m.router = std::make_unique<cluster::transport_router>(
        *m.net, cluster::peer_address{m.id, {"127.0.0.1", m.port}}, owners);
    m.ptr = m.router.get();
    auto counted = open_counting(data_dir, "cross", m.dir);
    if (!counted)
      return std::move(counted.error());
    counts = counted->get(); // The receiving silo, b, is started last.
    auto c = cfg;
    c.router = m.router.get();
    auto s = start_silo(c, std::move(*counted));
    if (!s)
      return std::move(s.error());
    m.s = std::move(*s);
    m.router->attach(*m.s);
  }
  std::vector<grain_id> ids;
  for (size_t i = 0; ids.size() < grains && i < grains * 64; ++i) {
    auto id = id_of<counter>(counter_key(i));
    if (partition_of(id, cfg.partitions) % 2 == 1)
      ids.push_back(std::move(id));
  }
  window_snapshots w;
  auto sends = run_durable_sends(*ms[0].s, std::move(ids), concurrency, payload,
                                 duration_s, label, progress,
                                 w.hooks(*ms[1].s, *counts));
  caf::error stop_err;
  for (auto& m : ms)
    if (auto e = m.s->stop(); e && !stop_err)
      stop_err = e;
  for (auto& m : ms) {
    m.ptr = nullptr;
    m.router->stop();
    m.net->stop();
  }
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

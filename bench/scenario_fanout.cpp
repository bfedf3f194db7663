// fanout: one driver grain tells a million sink grains one transient Ping
// each, against transient-ping calls of the same run.

#include <algorithm>
#include <cstdio>
#include <memory>
#include <thread>

#include "bench/bench_grains.hpp"
#include "bench/report.hpp"
#include "bench/scenario.hpp"
#include "runtime/error.hpp"
#include "runtime/memory_storage.hpp"

namespace granary::bench {

namespace {

using namespace std::chrono_literals;

constexpr double fanout_target = 0.3;
// fanout measures itself against a transient-ping of the same run; when
// none ran before, a short one runs first.
constexpr double fanout_prerun_s = 2;
// Queued requests per partition in the fan-out silo. A chunk puts about
// 64 tells into each of the 64 partitions, so 16 chunks fit. The default
// (16,384) lets the driver run up to a million tells ahead; it then waits
// behind that whole backlog in CAF's FIFO run queue (chunk calls of up to
// a second), and the cores idle while it does. Measured on the reference
// machine: 1,024 gave 0.65-0.76M deliveries/s, 16,384 gave 0.51-0.57M.
constexpr size_t fanout_queue_bound = 1'024;

struct fanout_run {
  double seconds = 0;
  cpu_meter cpu;
  uint64_t chunks = 0;
  uint64_t backoffs = 0;
};

/// Has the driver grain tell sinks 0..n-1 one transient Ping each, chunk by
/// chunk from this thread, and waits until all of them received it. Each
/// chunk call's round trip goes into `hist`.
caf::error fan_out(silo& s, uint64_t n, histogram& hist,
                   const std::string& label, const progress_fn& progress,
                   fanout_run& out) {
  sink::receipts = 0;
  auto drv = id_of<driver>("d");
  uint64_t told = 0;
  out.cpu.start();
  auto t0 = now_ns();
  // Generous: a million deliveries normally take a few seconds.
  auto deadline = t0 + to_ns(120) + static_cast<int64_t>(n) * 20'000;
  auto next_report = t0 + to_ns(1);
  auto report = [&](int64_t now) {
    if (now < next_report || !progress)
      return;
    char buf[160];
    std::snprintf(buf, sizeof(buf),
                  "[%s] %.0f s: told %llu/%llu, received %llu", label.c_str(),
                  to_s(now - t0), static_cast<unsigned long long>(told),
                  static_cast<unsigned long long>(n),
                  static_cast<unsigned long long>(sink::receipts.load()));
    progress(buf);
    next_report += to_ns(1);
  };
  // Bounded by `deadline`; each pass tells at least one sink or backs off.
  while (told < n) {
    auto now = now_ns();
    if (now >= deadline)
      return make_error(errc::timeout,
                        label + ": told only " + std::to_string(told) + " of "
                            + std::to_string(n) + " sinks before the deadline");
    report(now);
    auto req = std::make_shared<FanOut>();
    req->set_first(told);
    req->set_count(std::min<uint64_t>(fanout_chunk, n - told));
    auto start = now_ns();
    auto res = s.call(drv, req);
    if (!res)
      return std::move(res.error());
    hist.record(now_ns() - start);
    ++out.chunks;
    auto* reply = dynamic_cast<const FanOutReply*>(res->get());
    if (!reply)
      return make_error(errc::malformed_message,
                        label + ": the driver replied with "
                            + (*res)->GetDescriptor()->full_name());
    told += reply->sent();
    if (reply->sent() == 0) {
      ++out.backoffs;
      std::this_thread::sleep_for(200us);
    }
  }
  // Bounded by `deadline`.
  while (sink::receipts.load() < n && now_ns() < deadline) {
    report(now_ns());
    std::this_thread::sleep_for(100us);
  }
  out.seconds = to_s(now_ns() - t0);
  out.cpu.stop();
  if (auto received = sink::receipts.load(); received < n)
    return make_error(errc::timeout, label + ": only "
                                         + std::to_string(received) + " of "
                                         + std::to_string(n)
                                         + " sinks received their message");
  return caf::none;
}

caf::expected<result> run(session& s) {
  auto n = static_cast<uint64_t>(s.opts.grains.value_or(large_grains));
  if (!s.transient_ops_per_s) {
    auto pre = measure_transient(
        std::min(fanout_prerun_s, s.opts.duration_s.value_or(fanout_prerun_s)),
        s.opts.concurrency.value_or(transient_concurrency),
        s.opts.grains ? std::min(*s.opts.grains, small_grains) : small_grains,
        s.payload(), "fanout: transient-ping", s.opts.progress);
    if (!pre)
      return std::move(pre.error());
    s.transient_ops_per_s = pre->ops_per_s;
  }
  auto cfg = base_config(1);
  cfg.max_queued_per_partition = fanout_queue_bound;
  auto started = start_silo(cfg, std::make_unique<memory_storage>());
  if (!started)
    return std::move(started.error());
  histogram hist;
  fanout_run first;
  fanout_run again;
  auto err = fan_out(**started, n, hist, "fanout", s.opts.progress, first);
  if (!err) {
    // The same fan-out to the now active sinks: the difference is the cost
    // of activating a grain.
    histogram unused;
    err = fan_out(**started, n, unused, "fanout again", s.opts.progress, again);
  }
  auto stats = (*started)->stats();
  auto stop_err = (*started)->stop();
  if (err)
    return err;
  if (stop_err)
    return stop_err;
  auto res = make_result(
      "fanout",
      figures_of(static_cast<double>(n) / first.seconds, hist, first.cpu),
      "transient-ping", *s.transient_ops_per_s);
  res.target = "ratio >= 0.3";
  res.met = res.ratio >= fanout_target;
  res.extras
      = {{"grains", static_cast<double>(n)},
         {"seconds", first.seconds},
         {"cpu_cores", first.cpu.own_cores},
         {"other_cpu_cores", first.cpu.other_cores},
         {"chunks", static_cast<double>(first.chunks)},
         {"backoffs", static_cast<double>(first.backoffs)},
         {"overloaded", static_cast<double>(stats.overloaded)},
         {"activations", static_cast<double>(stats.activations)},
         {"active_again_ops_per_s", static_cast<double>(n) / again.seconds},
         {"active_again_cpu_cores", again.cpu.own_cores}};
  return res;
}

} // namespace

constinit const scenario_def fanout_scenario{
    "fanout", "one grain tells N grains; against transient-ping", &run};

} // namespace granary::bench

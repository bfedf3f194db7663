// retry-storm: the CPU a silo spends while messages wait for a partition
// whose owner is dead, against the same silo idle.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "bench/bench_grains.hpp"
#include "bench/report.hpp"
#include "bench/scenario.hpp"
#include "runtime/error.hpp"
#include "runtime/remote.hpp"

namespace granary::bench {

namespace {

/// Routes partition `dead` to a silo that is down: every delivery is
/// refused as unavailable with the transport router's retry hint, as while
/// the owner of a partition is dead. Counts the attempts.
class dead_partition_router : public remote_router {
public:
  explicit dead_partition_router(uint32_t p)
      : dead(p) {}

  bool owns(uint32_t p) const override {
    return p != dead;
  }

  void deliver(uint32_t p, std::shared_ptr<const wire::Envelope>,
               ack_fn ack) override {
    attempts.fetch_add(1, std::memory_order_relaxed);
    ack(make_error(errc::partition_unavailable,
                   "partition " + std::to_string(p) + " has a dead owner"),
        500);
  }

  void call(uint32_t p, const grain_id&, message_ptr, std::chrono::milliseconds,
            reply_fn reply) override {
    reply(make_error(errc::partition_unavailable,
                     "partition " + std::to_string(p) + " has a dead owner"));
  }

  uint32_t dead;
  std::atomic<uint64_t> attempts{0};
};

caf::expected<result> run(session& s) {
  auto duration_s = s.duration_s();
  auto waiting = s.opts.grains.value_or(100'000);
  auto concurrency = s.opts.concurrency.value_or(durable_concurrency);
  auto dir = make_temp_dir(s.opts.data_dir, "storm");
  if (!dir)
    return std::move(dir.error());
  temp_dir cleanup{*dir};
  auto cfg = base_config(concurrency);
  dead_partition_router router{0};
  cfg.router = &router;
  // Senders in live partitions, each holding at most 1,000 of the waiting
  // messages (well below max_outbox_per_grain); targets in the dead one.
  auto of = [&](const std::string_view type, const std::string& key) {
    return partition_of(grain_id{std::string{type}, key}, cfg.partitions);
  };
  std::vector<std::string> relays;
  std::vector<std::string> targets;
  for (uint64_t i = 0; relays.size() < std::max<size_t>(1, waiting / 1'000)
                       && i < 100 * waiting + 1'000;
       ++i)
    if (of(relay::type_name, "r" + std::to_string(i)) != router.dead)
      relays.push_back("r" + std::to_string(i));
  for (uint64_t i = 0; targets.size() < 64 && i < 100'000; ++i)
    if (of(sink::type_name, sink_key(i)) == router.dead)
      targets.push_back(sink_key(i));
  if (relays.empty() || targets.empty())
    return make_error(errc::invalid_argument, "retry-storm: no grain keys");
  auto started = start_rocksdb_silo(cfg, *dir);
  if (!started)
    return std::move(started.error());
  auto& node = **started;
  auto pause = [](double seconds) {
    std::this_thread::sleep_for(
        std::chrono::milliseconds{static_cast<int64_t>(seconds * 1'000)});
  };
  // The baseline: the same silo, idle, in the same run.
  s.progress("retry-storm: measuring an idle silo for " + fmt_num(duration_s)
             + " s");
  cpu_meter idle;
  idle.start();
  pause(duration_s);
  idle.stop();
  s.progress("retry-storm: storing " + fmt_grouped(static_cast<double>(waiting))
             + " messages for a partition whose owner is dead");
  std::atomic<int64_t> in_flight{0};
  std::atomic<uint64_t> failed{0};
  caf::error first_error;
  std::mutex err_mtx;
  for (uint64_t i = 0; i < waiting; ++i) {
    // A closed window of `concurrency` sends, bounded by the deadline.
    for (int spin = 0; in_flight.load() >= static_cast<int64_t>(concurrency)
                       && spin < 600'000;
         ++spin)
      std::this_thread::sleep_for(std::chrono::microseconds{100});
    Ping ping;
    ping.set_seq(i);
    ping.set_payload(targets[i % targets.size()]);
    ++in_flight;
    node.send_async(
        grain_id{std::string{relay::type_name}, relays[i % relays.size()]},
        ping, {}, [&](const caf::error& err) {
          if (err) {
            ++failed;
            std::lock_guard guard{err_mtx};
            if (!first_error)
              first_error = err;
          }
          --in_flight;
        });
  }
  for (int spin = 0; in_flight.load() > 0 && spin < 600'000; ++spin)
    std::this_thread::sleep_for(std::chrono::microseconds{100});
  if (failed.load() > 0)
    return make_error(errc::storage_failure,
                      "retry-storm: " + std::to_string(failed.load())
                          + " sends failed; first: " + describe(first_error));
  // Every message was tried once and refused; from here on they wait.
  for (int spin = 0; router.attempts.load() < waiting && spin < 6'000; ++spin)
    std::this_thread::sleep_for(std::chrono::milliseconds{10});
  auto before = router.attempts.load();
  s.progress("retry-storm: measuring while they wait for " + fmt_num(duration_s)
             + " s");
  cpu_meter busy;
  busy.start();
  pause(duration_s);
  busy.stop();
  auto retries = router.attempts.load() - before;
  result res;
  res.scenario = "retry-storm";
  // Deliveries tried per second while the messages wait.
  res.ops_per_s = static_cast<double>(retries) / duration_s;
  res.baseline = "idle-silo-cpu";
  res.baseline_ops_per_s = idle.own_cores;
  // CPU while they wait, against the same silo idle.
  res.ratio = ratio_of(busy.own_cores, idle.own_cores);
  res.target = "waiting messages cost at most 0.05 cores";
  res.met = busy.own_cores <= 0.05;
  res.extras = {
      {"messages_waiting", static_cast<double>(waiting)},
      {"retries", static_cast<double>(retries)},
      {"cpu_cores_waiting", busy.own_cores},
      {"cpu_cores_idle", idle.own_cores},
      {"other_cpu_cores", busy.other_cores},
      {"parked_retry_s", static_cast<double>(cfg.parked_retry.count()) / 1'000},
      {"duration_s", duration_s}};
  static_cast<void>(node.stop());
  return res;
}

} // namespace

constinit const scenario_def retry_storm_scenario{
    "retry-storm",
    "CPU while --grains messages (100k) wait for a dead partition; "
    "against the same silo idle",
    &run};

} // namespace granary::bench

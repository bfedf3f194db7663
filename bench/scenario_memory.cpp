// memory: RSS per idle activation when a million grains are activated,
// against one idle CAF actor per grain.

#include <memory>
#include <thread>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>

#include "bench/bench_grains.hpp"
#include "bench/report.hpp"
#include "bench/scenario.hpp"
#include "runtime/memory_storage.hpp"

namespace granary::bench {

namespace {

using namespace std::chrono_literals;

constexpr size_t memory_concurrency = 256;
constexpr double memory_target_bytes = 2'048;

/// Activates grains "m0", "m1", ... with one transient call each.
struct activation_load : counted_load {
  silo* target_silo = nullptr;
  message_ptr msg;
};

void issue_activation(const std::shared_ptr<activation_load>& st) {
  auto i = st->take();
  if (!i)
    return;
  auto start = now_ns();
  st->target_silo->call_async(id_of<echo>("m" + std::to_string(*i)), st->msg,
                              [st, start](caf::expected<message_ptr> res) {
                                if (!res) {
                                  st->fail(std::move(res.error()));
                                  return;
                                }
                                if (st->complete(start, now_ns()))
                                  issue_activation(st);
                              });
}

// Idle CAF actors started so far; the memory baseline waits for all.
std::atomic<uint64_t> idle_actors_started{0};

caf::behavior idle_actor(caf::event_based_actor*) {
  idle_actors_started.fetch_add(1, std::memory_order_relaxed);
  return {[](uint64_t) {}};
}

struct caf_memory_figures {
  double bytes_per_actor = 0;
  double spawns_per_s = 0;
};

/// RSS growth per idle event-based actor when every grain is its own CAF
/// actor: the design a partition multiplexes away.
caf::expected<caf_memory_figures> caf_actor_memory(size_t n,
                                                   int64_t timeout_ns) {
  auto cfg = plain_caf_config();
  caf::actor_system sys{*cfg};
  // Touch the handle vector's pages before the first reading: it is the
  // benchmark's bookkeeping, not the actors' memory.
  std::vector<caf::actor> actors(n);
  idle_actors_started = 0;
  auto before = settled_rss_bytes();
  auto t0 = now_ns();
  for (auto& a : actors)
    a = sys.spawn(idle_actor);
  auto deadline = t0 + timeout_ns;
  while (idle_actors_started.load() < n && now_ns() < deadline)
    std::this_thread::sleep_for(1ms);
  auto secs = to_s(now_ns() - t0);
  auto started = idle_actors_started.load();
  auto after = settled_rss_bytes();
  for (auto& a : actors)
    caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  actors.clear();
  if (auto err = shortfall("memory", started, n, "CAF actors started"))
    return err;
  caf_memory_figures out;
  out.bytes_per_actor
      = static_cast<double>(after - before) / static_cast<double>(n);
  out.spawns_per_s = static_cast<double>(n) / secs;
  return out;
}

caf::expected<result> run(session& s) {
  auto n = static_cast<uint64_t>(s.opts.grains.value_or(large_grains));
  auto concurrency = s.opts.concurrency.value_or(memory_concurrency);
  auto timeout_ns = to_ns(120) + static_cast<int64_t>(n) * 20'000;
  auto cfg = base_config(concurrency);
  // Nothing may be deactivated while we count.
  cfg.idle_age = std::chrono::hours{24};
  double bytes_per_activation = 0;
  double activation_s = 0;
  uint64_t active = 0;
  load_figures ours;
  {
    auto started = start_silo(cfg, std::make_unique<memory_storage>());
    if (!started)
      return std::move(started.error());
    auto st = std::make_shared<activation_load>();
    st->target_silo = started->get();
    st->msg = std::make_shared<const Ping>();
    st->total = n;
    auto before = settled_rss_bytes();
    activation_s = run_counted(
        *st, concurrency, timeout_ns, [&st] { issue_activation(st); }, "memory",
        "activated", s.opts.progress);
    if (auto err = st->error())
      return err;
    if (auto err
        = shortfall("memory", st->completed.load(), n, "grains activated"))
      return err;
    auto after = settled_rss_bytes();
    active = (*started)->stats().active;
    bytes_per_activation
        = (static_cast<double>(after) - static_cast<double>(before))
          / static_cast<double>(n);
    ours = figures_of(static_cast<double>(n) / activation_s, st->hist, st->cpu);
    if (auto err = (*started)->stop())
      return err;
  }
  s.progress("[memory] raw CAF: spawning " + std::to_string(n)
             + " idle actors");
  auto base = caf_actor_memory(n, timeout_ns);
  if (!base)
    return std::move(base.error());
  auto res
      = make_result("memory", ours, "caf-actor-per-grain", base->spawns_per_s);
  res.target = "rss_bytes_per_activation <= 2048";
  res.met = bytes_per_activation <= memory_target_bytes;
  res.extras = {{"rss_bytes_per_activation", bytes_per_activation},
                {"active", static_cast<double>(active)},
                {"grains", static_cast<double>(n)},
                {"concurrency", static_cast<double>(concurrency)},
                {"activation_s", activation_s},
                {"cpu_cores", ours.cpu.own_cores},
                {"other_cpu_cores", ours.cpu.other_cores},
                {"baseline_rss_bytes_per_actor", base->bytes_per_actor}};
  return res;
}

} // namespace

constinit const scenario_def memory_scenario{
    "memory", "RSS per idle activation; against one CAF actor each", &run};

} // namespace granary::bench

// transient-ping: transient calls to echo grains on one silo, against the
// same request/response between two plain CAF actors.

#include <memory>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/atom.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>

#include "bench/bench_grains.hpp"
#include "bench/report.hpp"
#include "bench/scenario.hpp"
#include "runtime/memory_storage.hpp"

namespace granary::bench {

namespace {

constexpr double transient_target = 0.4;

// -- transient calls on a silo ------------------------------------------------

struct transient_load : load_state {
  silo* target_silo = nullptr;
  std::vector<grain_id> ids;
  message_ptr msg;
  size_t concurrency = 1;
};

void issue_call(const std::shared_ptr<transient_load>& st, size_t slot,
                uint64_t n) {
  auto& id = st->ids[(slot + n * st->concurrency) % st->ids.size()];
  auto start = now_ns();
  st->target_silo->call_async(
      id, st->msg, [st, slot, n, start](caf::expected<message_ptr> res) {
        if (!res) {
          st->fail(std::move(res.error()));
          return;
        }
        if (st->complete(start, now_ns()))
          issue_call(st, slot, n + 1);
      });
}

// -- raw CAF request/response -------------------------------------------------

using bench_stop_atom = caf::atom_constant<caf::atom("benchstop")>;

caf::behavior caf_echo(caf::event_based_actor*) {
  return {[](uint64_t x) { return x; }};
}

void caf_issue(caf::event_based_actor* self, const caf::actor& server,
               const std::shared_ptr<load_state>& st, uint64_t seq) {
  auto start = now_ns();
  self->request(server, caf::infinite, seq)
      .then(
          [self, server, st, start](uint64_t x) {
            if (st->complete(start, now_ns()))
              caf_issue(self, server, st, x + 1);
          },
          [st](caf::error& err) { st->fail(std::move(err)); });
}

caf::behavior caf_client(caf::event_based_actor* self, caf::actor server,
                         std::shared_ptr<load_state> st, size_t concurrency) {
  for (size_t i = 0; i < concurrency; ++i)
    caf_issue(self, server, st, i);
  return {[self](bench_stop_atom) { self->quit(); }};
}

caf::expected<load_figures> measure_caf(double duration_s, size_t concurrency,
                                        const std::string& label,
                                        const progress_fn& progress) {
  auto cfg = plain_caf_config();
  caf::actor_system sys{*cfg};
  auto st = std::make_shared<load_state>();
  st->outstanding = static_cast<int64_t>(concurrency);
  st->start_clock(duration_s);
  auto server = sys.spawn(caf_echo);
  auto client = sys.spawn(caf_client, server, st, concurrency);
  auto err = run_timed(*st, label, "round trips", progress);
  caf::anon_send(client, bench_stop_atom::value);
  caf::anon_send_exit(server, caf::exit_reason::user_shutdown);
  if (err)
    return err;
  return st->figures();
}

// -- the scenario -------------------------------------------------------------

caf::expected<result> run(session& s) {
  auto [duration_s, concurrency, grains, payload]
      = s.settings(transient_concurrency, small_grains);
  auto ours = measure_transient(duration_s, concurrency, grains, payload,
                                "transient-ping", s.opts.progress);
  if (!ours)
    return std::move(ours.error());
  s.transient_ops_per_s = ours->ops_per_s;
  auto base = measure_caf(duration_s, concurrency, "transient-ping raw CAF",
                          s.opts.progress);
  if (!base)
    return std::move(base.error());
  auto res = make_result("transient-ping", *ours, "caf-request-response",
                         base->ops_per_s);
  res.target = "ratio >= 0.4";
  res.met = res.ratio >= transient_target;
  res.extras = {{"concurrency", static_cast<double>(concurrency)},
                {"grains", static_cast<double>(grains)},
                {"duration_s", duration_s},
                {"cpu_cores", ours->cpu.own_cores},
                {"other_cpu_cores", ours->cpu.other_cores},
                {"baseline_cpu_cores", base->cpu.own_cores},
                {"baseline_other_cpu_cores", base->cpu.other_cores},
                {"baseline_p50_ms", base->p50_ms},
                {"baseline_p99_ms", base->p99_ms},
                {"baseline_p999_ms", base->p999_ms}};
  return res;
}

} // namespace

caf::expected<load_figures> measure_transient(double duration_s,
                                              size_t concurrency, size_t grains,
                                              size_t payload,
                                              const std::string& label,
                                              const progress_fn& progress) {
  auto s = start_silo(base_config(concurrency),
                      std::make_unique<memory_storage>());
  if (!s)
    return std::move(s.error());
  auto st = std::make_shared<transient_load>();
  st->target_silo = s->get();
  st->concurrency = concurrency;
  st->ids.reserve(grains);
  for (size_t i = 0; i < grains; ++i)
    st->ids.push_back(id_of<echo>("e" + std::to_string(i)));
  auto ping = std::make_shared<Ping>();
  ping->set_payload(std::string(payload, 'x'));
  st->msg = std::move(ping);
  st->outstanding = static_cast<int64_t>(concurrency);
  st->start_clock(duration_s);
  for (size_t slot = 0; slot < concurrency; ++slot)
    issue_call(st, slot, 0);
  auto err = run_timed(*st, label, "calls", progress);
  auto stop_err = (*s)->stop();
  if (err)
    return err;
  if (stop_err)
    return stop_err;
  return st->figures();
}

constinit const scenario_def transient_ping_scenario{
    "transient-ping", "transient calls/s against raw CAF request/response",
    &run};

} // namespace granary::bench

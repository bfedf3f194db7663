#include "bench/workflow_load.hpp"

#include <atomic>
#include <memory>

#include "bench/bench_grains.hpp"
#include "bench/counting_storage.hpp"
#include "runtime/error.hpp"

namespace granary::bench {

namespace {

constexpr uint64_t no_run = ~uint64_t{0};

/// One slot of a workflow load: the run it has in flight.
struct workflow_slot {
  /// Sequence number of the run in flight, or `no_run`.
  std::atomic<uint64_t> running{no_run};
  /// When that run's start was sent.
  std::atomic<int64_t> start_ns{0};
};

/// Closed loop of workflow (or chain) runs: each slot starts its next run
/// when the previous one reports its end through `workflow_ended`.
struct workflow_load : load_state, std::enable_shared_from_this<workflow_load> {
  silo* target_silo = nullptr;
  /// Grain type started with each `WorkflowInput`: a workflow or a chain.
  std::string type;
  size_t concurrency = 1;
  size_t grains = 1;
  std::string payload;
  std::unique_ptr<workflow_slot[]> slots;
  std::atomic<uint64_t> next_seq{0};

  /// Ends run `seq` of `slot`; false if it had ended already (a replayed
  /// or rolled-back turn reporting again, or a failed start).
  bool end_run(size_t slot, uint64_t seq) {
    auto expected = seq;
    return slots[slot].running.compare_exchange_strong(
        expected, no_run, std::memory_order_acq_rel);
  }
};

// The workflow load being measured; null outside a run. Set before the
// first workflow starts and cleared after the silo stopped, while the
// measuring function holds the load alive.
std::atomic<workflow_load*> current_workflow_load{nullptr};

std::string workflow_key(uint64_t seq) {
  return "w" + std::to_string(seq);
}

void issue_workflow(const std::shared_ptr<workflow_load>& st, size_t slot) {
  auto seq = st->next_seq.fetch_add(1, std::memory_order_relaxed);
  WorkflowInput in;
  in.set_slot(slot);
  in.set_seq(seq);
  in.set_first(seq * workflow_steps % st->grains);
  in.set_grains(st->grains);
  in.set_payload(st->payload);
  auto& s = st->slots[slot];
  s.start_ns.store(now_ns(), std::memory_order_relaxed);
  s.running.store(seq, std::memory_order_release);
  // A fresh id per run, and no msg_id: the start is unresendable, like a
  // durable-ping message.
  st->target_silo->send_async(grain_id{st->type, workflow_key(seq)}, in, {},
                              [st, slot, seq](const caf::error& err) {
                                if (err && st->end_run(slot, seq))
                                  st->fail(err);
                              });
}

} // namespace

void workflow_ended(uint64_t slot, uint64_t seq, const caf::error& err) {
  auto end = now_ns();
  auto* raw = current_workflow_load.load(std::memory_order_acquire);
  if (!raw || slot >= raw->concurrency || !raw->end_run(slot, seq))
    return;
  auto st = raw->shared_from_this();
  if (err) {
    st->fail(make_error(code_of(err), "workflow " + workflow_key(seq)
                                          + " failed: " + describe(err)));
    return;
  }
  auto start = st->slots[slot].start_ns.load(std::memory_order_relaxed);
  if (st->complete(start, end))
    issue_workflow(st, slot);
}

caf::expected<workflow_figures>
measure_workflows(const std::string& data_dir, double duration_s,
                  size_t concurrency, size_t grains, size_t payload,
                  std::string_view type, const std::string& label,
                  const progress_fn& progress) {
  temp_dir guard;
  auto counted = open_counting(data_dir, "workflow", guard);
  if (!counted)
    return std::move(counted.error());
  auto* counts = counted->get();
  // Activities of fanout-100: a no-op, so that the figure is the cost of
  // scheduling, running and recording an activity, not of its work.
  activity_pool pool{2, fanout_width * concurrency + 64};
  auto added = pool.add<Ping, Pong>(
      "bench.noop", [](const activity_context&, const Ping& in) {
        Pong out;
        out.set_seq(in.seq());
        return caf::expected<Pong>{std::move(out)};
      });
  if (added)
    return added;
  auto s = start_silo(base_config(concurrency), std::move(*counted), &pool);
  if (!s)
    return std::move(s.error());
  pool.attach(**s);
  auto st = std::make_shared<workflow_load>();
  st->target_silo = s->get();
  st->type = std::string{type};
  st->concurrency = concurrency;
  st->grains = grains;
  st->payload = std::string(payload, 'x');
  st->slots = std::make_unique<workflow_slot[]>(concurrency);
  window_snapshots w;
  auto hooks = w.hooks(**s, *counts);
  current_workflow_load.store(st.get(), std::memory_order_release);
  st->outstanding = static_cast<int64_t>(concurrency);
  st->start_clock(duration_s);
  for (size_t slot = 0; slot < concurrency; ++slot)
    issue_workflow(st, slot);
  auto err = run_timed(*st, label, "runs", progress, hooks);
  // The pool reports to the silo: stop it first.
  pool.stop();
  auto stop_err = (*s)->stop();
  current_workflow_load.store(nullptr, std::memory_order_release);
  if (err)
    return err;
  if (stop_err)
    return stop_err;
  workflow_figures out;
  out.load = st->figures();
  auto done = static_cast<double>(st->in_window.load());
  auto ops = static_cast<double>(w.s1.commits.ops - w.s0.commits.ops);
  auto groups = static_cast<double>(w.s1.commits.groups - w.s0.commits.groups);
  if (done <= 0 || ops <= 0 || groups <= 0)
    return make_error(errc::unspecified,
                      label + ": no run completed inside the measured window");
  auto per = [done](uint64_t a, uint64_t b) {
    return static_cast<double>(b - a) / done;
  };
  auto put_bytes = [&](column col) {
    auto i = static_cast<size_t>(col);
    return per(w.c0.put_bytes[i], w.c1.put_bytes[i]);
  };
  out.turns_per_workflow = per(w.s0.durable_turns, w.s1.durable_turns);
  out.ops_per_workflow = ops / done;
  out.ops_per_fsync = ops / groups;
  out.fsyncs_per_s = groups / to_s(w.s1_ns - w.s0_ns);
  out.bytes_per_workflow = per(w.c0.bytes, w.c1.bytes);
  out.state_bytes_per_workflow = put_bytes(column::state);
  out.outbox_bytes_per_workflow = put_bytes(column::outbox);
  out.dedup_bytes_per_workflow = put_bytes(column::dedup);
  out.reads_per_workflow = per(w.c0.reads, w.c1.reads);
  return out;
}

} // namespace granary::bench

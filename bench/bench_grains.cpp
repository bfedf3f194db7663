#include "bench/bench_grains.hpp"

#include <algorithm>
#include <chrono>
#include <vector>

#include <caf/atom.hpp>

#include "persistence/rocksdb_storage.hpp"
#include "runtime/error.hpp"

namespace granary::bench {

namespace {

/// Ends a run of a bench workflow: reports it to the driver in a side
/// effect (so that a replay does not report again), then yields its
/// output of `steps` steps, or `failure`.
caf::expected<WorkflowOutput> finish_run(workflow_context& ctx,
                                         const WorkflowInput& in,
                                         uint64_t steps, caf::error failure) {
  std::string name = failure ? "failed" : "finished";
  auto mark = ctx.side_effect<Pong>(name, [&]() -> caf::expected<Pong> {
    workflow_ended(in.slot(), in.seq(), failure);
    return Pong{};
  });
  if (!mark)
    return std::move(mark.error());
  if (failure)
    return failure;
  WorkflowOutput out;
  out.set_steps(steps);
  return out;
}

} // namespace

std::string sink_key(uint64_t i) {
  return "s" + std::to_string(i);
}

std::string counter_key(uint64_t i) {
  return "c" + std::to_string(i);
}

// -- grains -------------------------------------------------------------------

caf::expected<Pong> echo::ping(turn&, const Ping& msg) {
  Pong pong;
  pong.set_seq(msg.seq());
  return pong;
}

caf::expected<Pong> counter::ping(turn&, const Ping& msg) {
  auto& st = state();
  st.set_count(st.count() + 1);
  st.set_last(msg.payload());
  Pong pong;
  pong.set_seq(msg.seq());
  return pong;
}

caf::expected<done> sink::ping(turn&, const Ping&) {
  receipts.fetch_add(1, std::memory_order_relaxed);
  return done{};
}

caf::expected<done> relay::ping(turn& t, const Ping& msg) {
  Ping out;
  out.set_seq(msg.seq());
  if (auto err
      = t.send(grain_id{std::string{sink::type_name}, msg.payload()}, out))
    return err;
  return done{};
}

caf::expected<FanOutReply> driver::fan_out(turn& t, const FanOut& msg) {
  // One immutable message shared by every tell: nothing is copied.
  static const message_ptr ping = std::make_shared<const Ping>();
  auto n = std::min<uint64_t>(msg.count(), fanout_chunk);
  grain_id target{std::string{sink::type_name}, {}};
  uint64_t sent = 0;
  for (; sent < n; ++sent) {
    target.key = sink_key(msg.first() + sent);
    if (auto err = t.tell(target, ping)) {
      if (code_of(err) == errc::overloaded)
        break;
      return err;
    }
  }
  FanOutReply reply;
  reply.set_sent(sent);
  return reply;
}

// -- workflows ----------------------------------------------------------------

task<WorkflowOutput> steps_flow::run(workflow_context& ctx,
                                     const WorkflowInput& in) {
  // GCC 12 may destroy a braced temporary or a converted string literal
  // inside a co_await expression twice: every argument is a named local.
  Ping ping;
  ping.set_payload(in.payload());
  caf::error failure;
  for (uint64_t i = 0; i < workflow_steps; ++i) {
    ping.set_seq(i);
    auto target = id_of<counter>(counter_key((in.first() + i) % in.grains()));
    auto pong = co_await ctx.call<Pong>(target, ping);
    if (!pong) {
      failure = std::move(pong.error());
      break;
    }
  }
  co_return finish_run(ctx, in, workflow_steps, std::move(failure));
}

task<WorkflowOutput> fanout_flow::run(workflow_context& ctx,
                                      const WorkflowInput& in) {
  Ping ping;
  ping.set_payload(in.payload());
  std::string name = "bench.noop";
  activity_options opts;
  opts.initial_interval = std::chrono::milliseconds{10};
  std::vector<workflow_context::awaiter<Pong>> calls;
  calls.reserve(fanout_width);
  for (uint64_t i = 0; i < fanout_width; ++i) {
    ping.set_seq(i);
    calls.push_back(ctx.activity<Pong>(name, ping, opts));
  }
  co_await ctx.all(calls);
  caf::error failure;
  for (auto& c : calls)
    if (auto r = c.result(); !r && !failure)
      failure = std::move(r.error());
  co_return finish_run(ctx, in, fanout_width, std::move(failure));
}

task<WorkflowOutput> sleeper_flow::run(workflow_context& ctx,
                                       const WorkflowInput&) {
  std::chrono::milliseconds nap{sleep_days * 24 * 3'600'000};
  if (auto slept = co_await ctx.sleep(nap); !slept)
    co_return slept.error();
  co_return WorkflowOutput{};
}

caf::expected<done> chain::start(turn& t, const WorkflowInput& in) {
  if (view().has_input())
    return done{}; // Started already.
  *state().mutable_input() = in;
  return call_step(t);
}

caf::expected<done> chain::on_reply(turn& t, const wire::Reply& reply) {
  auto step = view().step();
  if (step >= workflow_steps || reply.correlation() != std::to_string(step))
    return done{}; // Not the reply this chain waits for.
  auto& in = view().input();
  if (reply.error_code() != 0) {
    state().set_step(workflow_steps);
    workflow_ended(
        in.slot(), in.seq(),
        make_error(static_cast<errc>(reply.error_code()), reply.error()));
    return done{};
  }
  state().set_step(step + 1);
  if (step + 1 < workflow_steps)
    return call_step(t);
  workflow_ended(in.slot(), in.seq(), caf::none);
  return done{};
}

caf::expected<done> chain::call_step(turn& t) {
  auto& st = view();
  Ping ping;
  ping.set_seq(st.step());
  ping.set_payload(st.input().payload());
  auto key = (st.input().first() + st.step()) % st.input().grains();
  if (auto err = t.call(id_of<counter>(counter_key(key)), ping,
                        std::to_string(st.step())))
    return err;
  return done{};
}

// -- silos and actor systems --------------------------------------------------

silo_config base_config(size_t concurrency) {
  silo_config cfg;
  cfg.threads = 2;
  cfg.scheduler_policy = "sharing";
  // In the worst case every request in flight targets one partition.
  cfg.max_queued_per_partition
      = std::max(cfg.max_queued_per_partition, concurrency);
  cfg.max_uncommitted_per_partition
      = std::max(cfg.max_uncommitted_per_partition, concurrency);
  return cfg;
}

caf::error register_bench_grains(grain_registry& registry,
                                 activity_pool* pool) {
  for (auto err :
       {register_grain<echo>(registry), register_grain<counter>(registry),
        register_grain<sink>(registry), register_grain<driver>(registry),
        register_workflow<steps_flow>(registry, nullptr),
        register_grain<chain>(registry), register_grain<relay>(registry),
        register_workflow<fanout_flow>(registry, pool),
        register_workflow<sleeper_flow>(registry, pool)})
    if (err)
      return err;
  return caf::none;
}

caf::expected<std::unique_ptr<silo>>
start_silo(silo_config cfg, std::unique_ptr<storage> st, activity_pool* pool) {
  grain_registry registry;
  if (auto err = register_bench_grains(registry, pool))
    return err;
  return silo::start(std::move(cfg), std::move(registry), std::move(st));
}

caf::expected<std::unique_ptr<silo>>
start_rocksdb_silo(silo_config cfg, const std::string& dir) {
  auto store = rocksdb_storage::open({.data_dir = dir});
  if (!store)
    return std::move(store.error());
  return start_silo(std::move(cfg), std::move(*store));
}

std::unique_ptr<caf::actor_system_config> plain_caf_config() {
  auto cfg = std::make_unique<caf::actor_system_config>();
  cfg->set("scheduler.max-threads", size_t{2});
  cfg->set("scheduler.policy", caf::atom("sharing"));
  cfg->set("logger.console-verbosity", caf::atom("quiet"));
  cfg->set("logger.file-verbosity", caf::atom("quiet"));
  return cfg;
}

} // namespace granary::bench

#pragma once

// The grains and workflows the scenarios of `granary bench` run, and the
// silo (and the plain CAF actor system of the baselines) they run on.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <caf/actor_system_config.hpp>
#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "actors/grain.hpp"
#include "actors/workflow.hpp"
#include "bench.pb.h"

namespace granary::bench {

/// Sinks the fan-out driver tells per turn at most.
inline constexpr uint64_t fanout_chunk = 4'096;

/// Sequential durable calls in one bench workflow.
inline constexpr uint64_t workflow_steps = 10;

/// Activities started in parallel by one fanout-100 workflow.
inline constexpr uint64_t fanout_width = 100;

/// How long each workflow of sleeping-workflows sleeps.
inline constexpr int64_t sleep_days = 30;

/// Returns the key of sink `i`.
std::string sink_key(uint64_t i);

/// Returns the key of counter `i`.
std::string counter_key(uint64_t i);

/// Tells the workflow-10-steps driver that workflow run `seq` of `slot`
/// ended, with `err` if it failed. Runs on a silo thread, inside the
/// workflow's last turn. Defined in workflow_load.cpp.
void workflow_ended(uint64_t slot, uint64_t seq, const caf::error& err);

/// Answers a transient Ping with a Pong; never writes.
class echo : public grain<echo> {
public:
  static constexpr std::string_view type_name = "bench.echo";

  static void define(handlers<echo>& h) {
    h.on(&echo::ping);
  }

  caf::expected<Pong> ping(turn&, const Ping& msg);
};

/// Counts durable pings and keeps the last payload in its state, so that
/// every turn writes a state record besides its dedup record.
class counter : public grain<counter, CounterState> {
public:
  static constexpr std::string_view type_name = "bench.counter";

  static void define(handlers<counter>& h) {
    h.on(&counter::ping);
  }

  caf::expected<Pong> ping(turn&, const Ping& msg);
};

/// The target of a fan-out: counts receipts in a process-wide counter.
class sink : public grain<sink> {
public:
  static constexpr std::string_view type_name = "bench.sink";

  /// Pings received by all sinks since the last reset.
  static inline std::atomic<uint64_t> receipts{0};

  static void define(handlers<sink>& h) {
    h.on(&sink::ping);
  }

  caf::expected<done> ping(turn&, const Ping&);
};

/// Durably sends a Ping to the sink whose key is the payload of the Ping
/// it gets.
class relay : public grain<relay> {
public:
  static constexpr std::string_view type_name = "bench.relay";

  static void define(handlers<relay>& h) {
    h.on(&relay::ping);
  }

  caf::expected<done> ping(turn& t, const Ping& msg);
};

/// Tells one transient Ping to each sink of a `FanOut` range, up to
/// `fanout_chunk` per turn, and stops early when a target partition's
/// queue is full; the reply says how many it sent.
class driver : public grain<driver> {
public:
  static constexpr std::string_view type_name = "bench.driver";

  static void define(handlers<driver>& h) {
    h.on(&driver::fan_out);
  }

  caf::expected<FanOutReply> fan_out(turn& t, const FanOut& msg);
};

/// The workflow of workflow-10-steps: `workflow_steps` sequential durable
/// calls to counter grains, then a side effect that reports the end to the
/// bench driver. Side effects run once and are replayed from the journal,
/// so a replay does not report again.
class steps_flow : public workflow<steps_flow, WorkflowInput, WorkflowOutput> {
public:
  static constexpr std::string_view type_name = "bench.workflow";

  task<WorkflowOutput> run(workflow_context& ctx, const WorkflowInput& in);
};

/// The workflow of fanout-100: `fanout_width` activities started at once
/// and awaited together (structured concurrency), then the same end report
/// as `steps_flow`.
class fanout_flow
    : public workflow<fanout_flow, WorkflowInput, WorkflowOutput> {
public:
  static constexpr std::string_view type_name = "bench.fanout";

  task<WorkflowOutput> run(workflow_context& ctx, const WorkflowInput& in);
};

/// The workflow of sleeping-workflows: one durable sleep of `sleep_days`,
/// what a control plane waiting on long timers holds by the million.
class sleeper_flow
    : public workflow<sleeper_flow, WorkflowInput, WorkflowOutput> {
public:
  static constexpr std::string_view type_name = "bench.sleeper";

  task<WorkflowOutput> run(workflow_context& ctx, const WorkflowInput&);
};

/// The hand-written equivalent of `steps_flow`, measured next to it: the
/// same sequential durable calls with the same replies, driven by a grain
/// whose state is its input and the step it waits for (no journal).
class chain : public grain<chain, ChainState> {
public:
  static constexpr std::string_view type_name = "bench.chain";

  static void define(handlers<chain>& h) {
    h.on(&chain::start).on(&chain::on_reply);
  }

  caf::expected<done> start(turn& t, const WorkflowInput& in);

  caf::expected<done> on_reply(turn& t, const wire::Reply& reply);

private:
  caf::expected<done> call_step(turn& t);
};

/// The configuration every bench silo starts from: 2 threads, work
/// sharing, and partition queues that hold `concurrency` requests.
silo_config base_config(size_t concurrency);

/// Registers every bench grain and workflow; the workflows that run
/// activities use `pool`.
caf::error register_bench_grains(grain_registry& registry, activity_pool* pool);

/// Starts a silo with every bench grain and workflow registered; the
/// workflows that run activities use `pool`.
caf::expected<std::unique_ptr<silo>> start_silo(silo_config cfg,
                                                std::unique_ptr<storage> st,
                                                activity_pool* pool = nullptr);

/// Starts a silo like `start_silo`, on a RocksDB storage in `dir`.
caf::expected<std::unique_ptr<silo>> start_rocksdb_silo(silo_config cfg,
                                                        const std::string& dir);

/// An actor system configured like a silo's: 2 threads, work sharing.
std::unique_ptr<caf::actor_system_config> plain_caf_config();

} // namespace granary::bench

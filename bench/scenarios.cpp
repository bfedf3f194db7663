#include "bench/scenarios.hpp"

#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <span>
#include <thread>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/atom.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include "actors/grain.hpp"
#include "actors/workflow.hpp"
#include "bench.pb.h"
#include "cluster.pb.h"
#include "cluster/routing/transport_router.hpp"
#include "cluster/transport/asio_transport.hpp"
#include "persistence/rocksdb_storage.hpp"
#include "runtime/error.hpp"
#include "runtime/json.hpp"
#include "runtime/keys.hpp"
#include "runtime/memory_storage.hpp"

namespace granary::bench {

namespace {

using namespace std::chrono_literals;

// -- defaults and targets -----------------------------------------------------

constexpr double default_duration_s = 5;
constexpr size_t default_payload = 32;
constexpr size_t transient_concurrency = 64;
constexpr size_t durable_concurrency = 256;
constexpr size_t memory_concurrency = 256;
constexpr size_t workflow_concurrency = 64;
constexpr size_t small_grains = 1'000;
constexpr size_t large_grains = 1'000'000;
// The warm-up share of every timed run; its operations are not counted.
constexpr double warmup_share = 0.1;
// fanout measures itself against a transient-ping of the same run; when
// none ran before, a short one runs first.
constexpr double fanout_prerun_s = 2;
// Sinks the fan-out driver tells per turn at most.
constexpr uint64_t fanout_chunk = 4'096;
// Queued requests per partition in the fan-out silo. A chunk puts about
// 64 tells into each of the 64 partitions, so 16 chunks fit. The default
// (16,384) lets the driver run up to a million tells ahead; it then waits
// behind that whole backlog in CAF's FIFO run queue (chunk calls of up to
// a second), and the cores idle while it does. Measured on the reference
// machine: 1,024 gave 0.65-0.76M deliveries/s, 16,384 gave 0.51-0.57M.
constexpr size_t fanout_queue_bound = 1'024;
// workflow-10-steps measures itself against a durable-ping of the same run;
// when none ran before, a short one runs first.
constexpr double durable_prerun_s = 2;
// Workflows of fanout-100 in flight (each with 100 activities).
constexpr size_t fanout_100_concurrency = 8;
// sleeping-workflows: workflows created by default, starts in flight, and
// how long each one sleeps.
constexpr size_t sleeping_workflows_default = 100'000;
constexpr size_t sleeping_concurrency = 256;
constexpr int64_t sleep_days = 30;
// Creating workflows keeps their activations for this long only, so that
// a million of them do not all stay in memory while they are created.
constexpr auto sleeping_idle_age = 2s;

// Sequential durable calls in one bench workflow.
constexpr uint64_t workflow_steps = 10;
// How long calls still in flight may take to finish after a timed run.
constexpr auto drain_timeout = 10s;

constexpr double transient_target = 0.4;
constexpr double durable_target = 0.3;
constexpr double durable_p99_target_ms = 5;
constexpr double fanout_target = 0.3;
constexpr double memory_target_bytes = 2'048;
constexpr double sleeping_target_bytes = 200;
// "A 10-step workflow costs at most about 2x the durable messages of 10
// plain durable calls": workflows/s >= 0.5 x (durable msgs/s / 20).
constexpr double workflow_target = 0.5;

// -- time ---------------------------------------------------------------------

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t to_ns(double seconds) {
  return static_cast<int64_t>(seconds * 1e9);
}

double to_s(int64_t ns) {
  return static_cast<double>(ns) / 1e9;
}

/// CPU time of the whole process (all threads) in nanoseconds.
int64_t process_cpu_ns() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

/// Busy CPU time of the whole machine in nanoseconds, from /proc/stat.
int64_t machine_busy_ns() {
  std::ifstream in{"/proc/stat"};
  std::string cpu;
  int64_t user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0,
          softirq = 0, steal = 0;
  if (!(in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq
        >> steal))
    return 0;
  auto ticks = user + nice + system + irq + softirq + steal;
  return ticks * (1'000'000'000 / sysconf(_SC_CLK_TCK));
}

/// Cores kept busy between `start` and `stop`: by this process, and by
/// everything else on the machine. The latter tells whether a run was
/// disturbed by other work.
struct cpu_meter {
  int64_t proc0 = 0;
  int64_t machine0 = 0;
  int64_t wall0 = 0;
  double own_cores = 0;
  double other_cores = 0;

  void start() {
    proc0 = process_cpu_ns();
    machine0 = machine_busy_ns();
    wall0 = now_ns();
  }

  void stop() {
    auto wall = static_cast<double>(std::max<int64_t>(now_ns() - wall0, 1));
    auto own = static_cast<double>(process_cpu_ns() - proc0);
    auto all = static_cast<double>(machine_busy_ns() - machine0);
    own_cores = own / wall;
    other_cores = std::max(0.0, (all - own) / wall);
  }
};

// -- latency histogram --------------------------------------------------------

/// A log-linear latency histogram (64 sub-buckets per power of two, so a
/// reported percentile is within 1.6% of the true value). Recording is one
/// relaxed atomic increment, safe from any thread.
class histogram {
public:
  void record(int64_t ns) {
    buckets_[index(ns)].fetch_add(1, std::memory_order_relaxed);
  }

  uint64_t count() const {
    uint64_t n = 0;
    for (auto& b : buckets_)
      n += b.load(std::memory_order_relaxed);
    return n;
  }

  /// Returns the `q` quantile (0 < q <= 1) in milliseconds; 0 if empty.
  double quantile_ms(double q) const {
    auto total = count();
    if (total == 0)
      return 0;
    auto rank = std::max<uint64_t>(
        1, static_cast<uint64_t>(std::ceil(q * static_cast<double>(total))));
    uint64_t seen = 0;
    for (size_t i = 0; i < size; ++i) {
      seen += buckets_[i].load(std::memory_order_relaxed);
      if (seen >= rank)
        return static_cast<double>(midpoint(i)) / 1e6;
    }
    return static_cast<double>(midpoint(size - 1)) / 1e6;
  }

private:
  static constexpr int sub_bits = 6;
  static constexpr uint64_t sub = uint64_t{1} << sub_bits;
  // Values up to 2^43 ns (about 2.4 hours) have their own bucket.
  static constexpr int max_exp = 42;
  static constexpr size_t size = (max_exp - sub_bits + 2) * sub;

  static size_t index(int64_t ns) {
    auto v = static_cast<uint64_t>(std::max<int64_t>(ns, 0));
    if (v < 2 * sub)
      return static_cast<size_t>(v);
    int k = std::bit_width(v) - 1;
    if (k > max_exp) {
      k = max_exp;
      v = (uint64_t{1} << (max_exp + 1)) - 1;
    }
    int shift = k - sub_bits;
    return static_cast<size_t>((k - sub_bits + 1) * sub + ((v >> shift) - sub));
  }

  static uint64_t midpoint(size_t i) {
    if (i < 2 * sub)
      return i;
    auto group = i / sub;
    auto shift = group - 1;
    auto lower = (sub + i % sub) << shift;
    return lower + ((uint64_t{1} << shift) >> 1);
  }

  std::array<std::atomic<uint64_t>, size> buckets_{};
};

// -- grains -------------------------------------------------------------------

/// Answers a transient Ping with a Pong; never writes.
class echo : public grain<echo> {
public:
  static constexpr std::string_view type_name = "bench.echo";

  static void define(handlers<echo>& h) {
    h.on(&echo::ping);
  }

  caf::expected<Pong> ping(turn&, const Ping& msg) {
    Pong pong;
    pong.set_seq(msg.seq());
    return pong;
  }
};

/// Counts durable pings and keeps the last payload in its state, so that
/// every turn writes a state record besides its dedup record.
class counter : public grain<counter, CounterState> {
public:
  static constexpr std::string_view type_name = "bench.counter";

  static void define(handlers<counter>& h) {
    h.on(&counter::ping);
  }

  caf::expected<Pong> ping(turn&, const Ping& msg) {
    auto& st = state();
    st.set_count(st.count() + 1);
    st.set_last(msg.payload());
    Pong pong;
    pong.set_seq(msg.seq());
    return pong;
  }
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

  caf::expected<done> ping(turn&, const Ping&) {
    receipts.fetch_add(1, std::memory_order_relaxed);
    return done{};
  }
};

std::string sink_key(uint64_t i) {
  return "s" + std::to_string(i);
}

/// Durably sends a Ping to the sink whose key is the payload of the Ping
/// it gets.
class relay : public grain<relay> {
public:
  static constexpr std::string_view type_name = "bench.relay";

  static void define(handlers<relay>& h) {
    h.on(&relay::ping);
  }

  caf::expected<done> ping(turn& t, const Ping& msg) {
    Ping out;
    out.set_seq(msg.seq());
    if (auto err
        = t.send(grain_id{std::string{sink::type_name}, msg.payload()}, out))
      return err;
    return done{};
  }
};

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

/// Tells one transient Ping to each sink of a `FanOut` range, up to
/// `fanout_chunk` per turn, and stops early when a target partition's
/// queue is full; the reply says how many it sent.
class driver : public grain<driver> {
public:
  static constexpr std::string_view type_name = "bench.driver";

  static void define(handlers<driver>& h) {
    h.on(&driver::fan_out);
  }

  caf::expected<FanOutReply> fan_out(turn& t, const FanOut& msg) {
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
};

std::string counter_key(uint64_t i) {
  return "c" + std::to_string(i);
}

/// Tells the workflow-10-steps driver that workflow run `seq` of `slot`
/// ended, with `err` if it failed. Runs on a silo thread, inside the
/// workflow's last turn.
void workflow_ended(uint64_t slot, uint64_t seq, const caf::error& err);

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

/// The workflow of workflow-10-steps: `workflow_steps` sequential durable
/// calls to counter grains, then a side effect that reports the end to the
/// bench driver. Side effects run once and are replayed from the journal,
/// so a replay does not report again.
class steps_flow : public workflow<steps_flow, WorkflowInput, WorkflowOutput> {
public:
  static constexpr std::string_view type_name = "bench.workflow";

  task<WorkflowOutput> run(workflow_context& ctx, const WorkflowInput& in) {
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
};

/// Activities started in parallel by one fanout-100 workflow.
constexpr uint64_t fanout_width = 100;

/// The workflow of fanout-100: `fanout_width` activities started at once
/// and awaited together (structured concurrency), then the same end report
/// as `steps_flow`.
class fanout_flow
    : public workflow<fanout_flow, WorkflowInput, WorkflowOutput> {
public:
  static constexpr std::string_view type_name = "bench.fanout";

  task<WorkflowOutput> run(workflow_context& ctx, const WorkflowInput& in) {
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
};

/// The workflow of sleeping-workflows: one durable sleep of `sleep_days`,
/// what a control plane waiting on long timers holds by the million.
class sleeper_flow
    : public workflow<sleeper_flow, WorkflowInput, WorkflowOutput> {
public:
  static constexpr std::string_view type_name = "bench.sleeper";

  task<WorkflowOutput> run(workflow_context& ctx, const WorkflowInput&) {
    std::chrono::milliseconds nap{sleep_days * 24 * 3'600'000};
    if (auto slept = co_await ctx.sleep(nap); !slept)
      co_return slept.error();
    co_return WorkflowOutput{};
  }
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

  caf::expected<done> start(turn& t, const WorkflowInput& in) {
    if (view().has_input())
      return done{}; // Started already.
    *state().mutable_input() = in;
    return call_step(t);
  }

  caf::expected<done> on_reply(turn& t, const wire::Reply& reply) {
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

private:
  caf::expected<done> call_step(turn& t) {
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
};

// -- storage accounting -------------------------------------------------------

/// What a `counting_storage` committed and read so far.
struct storage_counts {
  uint64_t reads = 0;
  uint64_t puts = 0;
  uint64_t deletes = 0;
  /// Key and value bytes of puts and deletes, all columns.
  uint64_t bytes = 0;
  /// Key and value bytes of puts, by column.
  std::array<uint64_t, column_count> put_bytes{};
};

/// Forwards to another storage and counts the operations and bytes of the
/// commits that succeeded, and the reads.
class counting_storage : public storage {
public:
  explicit counting_storage(std::unique_ptr<storage> inner)
      : inner_(std::move(inner)) {}

  caf::expected<std::optional<std::string>> get(column col,
                                                std::string_view key) override {
    reads_.fetch_add(1, std::memory_order_relaxed);
    return inner_->get(col, key);
  }

  caf::error commit(std::span<const write_batch* const> batches) override {
    if (auto err = inner_->commit(batches))
      return err;
    // Summed locally first: this runs on the commit thread, between fsyncs.
    storage_counts add;
    for (auto* b : batches) {
      add.bytes += b->bytes();
      for (auto& op : b->ops()) {
        if (op.erase) {
          ++add.deletes;
          continue;
        }
        ++add.puts;
        add.put_bytes[static_cast<size_t>(op.col)]
            += op.key.size() + op.value.size();
      }
    }
    bytes_.fetch_add(add.bytes, std::memory_order_relaxed);
    puts_.fetch_add(add.puts, std::memory_order_relaxed);
    deletes_.fetch_add(add.deletes, std::memory_order_relaxed);
    for (size_t i = 0; i < column_count; ++i)
      put_bytes_[i].fetch_add(add.put_bytes[i], std::memory_order_relaxed);
    return caf::none;
  }

  caf::error scan(column col, std::string_view prefix, std::string_view start,
                  size_t limit, const scan_visitor& visit) override {
    return inner_->scan(col, prefix, start, limit, visit);
  }

  std::optional<uint64_t> free_bytes() override {
    return inner_->free_bytes();
  }

  caf::expected<std::vector<partition_file>>
  export_partition(uint32_t p, const std::string& dir) override {
    return inner_->export_partition(p, dir);
  }

  caf::error import_partition(uint32_t p,
                              std::span<const partition_file> files) override {
    return inner_->import_partition(p, files);
  }

  caf::error drop_partition(uint32_t p) override {
    return inner_->drop_partition(p);
  }

  /// The totals so far.
  storage_counts counts() const {
    storage_counts out;
    out.reads = reads_.load(std::memory_order_relaxed);
    out.puts = puts_.load(std::memory_order_relaxed);
    out.deletes = deletes_.load(std::memory_order_relaxed);
    out.bytes = bytes_.load(std::memory_order_relaxed);
    for (size_t i = 0; i < column_count; ++i)
      out.put_bytes[i] = put_bytes_[i].load(std::memory_order_relaxed);
    return out;
  }

private:
  std::unique_ptr<storage> inner_;
  std::atomic<uint64_t> reads_{0};
  std::atomic<uint64_t> puts_{0};
  std::atomic<uint64_t> deletes_{0};
  std::atomic<uint64_t> bytes_{0};
  std::array<std::atomic<uint64_t>, column_count> put_bytes_{};
};

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

caf::expected<std::unique_ptr<silo>> start_silo(silo_config cfg,
                                                std::unique_ptr<storage> st,
                                                activity_pool* pool = nullptr) {
  grain_registry registry;
  for (auto err :
       {register_grain<echo>(registry), register_grain<counter>(registry),
        register_grain<sink>(registry), register_grain<driver>(registry),
        register_workflow<steps_flow>(registry, nullptr),
        register_grain<chain>(registry), register_grain<relay>(registry),
        register_workflow<fanout_flow>(registry, pool),
        register_workflow<sleeper_flow>(registry, pool)})
    if (err)
      return err;
  return silo::start(std::move(cfg), std::move(registry), std::move(st));
}

// -- temporary directories and process memory ---------------------------------

caf::expected<std::string> make_temp_dir(const std::string& parent,
                                         const char* tag) {
  std::string base = parent.empty() ? "/tmp" : parent;
  std::error_code ec;
  std::filesystem::create_directories(base, ec);
  if (ec)
    return make_error(errc::invalid_argument, "cannot create data directory '"
                                                  + base
                                                  + "': " + ec.message());
  auto pattern = base + "/granary-bench-" + tag + "-XXXXXX";
  std::vector<char> buf{pattern.begin(), pattern.end()};
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr)
    return make_error(errc::storage_failure,
                      "cannot create a temporary directory under '" + base
                          + "': " + std::strerror(errno));
  return std::string{buf.data()};
}

/// Removes a temporary directory when it goes out of scope.
struct temp_dir {
  std::string path;

  ~temp_dir() {
    if (path.empty())
      return;
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

/// Resident set size of this process in bytes, from /proc/self/statm.
uint64_t rss_bytes() {
  std::ifstream in{"/proc/self/statm"};
  uint64_t size = 0;
  uint64_t resident = 0;
  if (!(in >> size >> resident))
    return 0;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

/// RSS after returning freed heap pages to the kernel, so that memory that
/// earlier scenarios freed neither hides nor inflates a growth.
uint64_t settled_rss_bytes() {
  malloc_trim(0);
  return rss_bytes();
}

// -- closed-loop load ---------------------------------------------------------

/// Shared state of a closed loop: a fixed number of slots, each issuing its
/// next request from the completion of the previous one. Completions are
/// counted, and their latencies recorded, only inside the window that
/// follows the warm-up.
struct load_state {
  std::atomic<bool> stop{false};
  std::atomic<int64_t> outstanding{0};
  std::atomic<uint64_t> completed{0};
  std::atomic<uint64_t> in_window{0};
  // Set before the first request is issued; read-only afterwards.
  int64_t t0_ns = 0;
  int64_t window_start_ns = 0;
  int64_t window_end_ns = 0;
  histogram hist;
  // CPU use inside the window (set by run_timed).
  cpu_meter cpu;

  /// Fixes the timeline of a run that starts now and lasts `duration_s`.
  void start_clock(double duration_s) {
    t0_ns = now_ns();
    window_start_ns = t0_ns + to_ns(duration_s * warmup_share);
    window_end_ns = t0_ns + to_ns(duration_s);
  }

  /// Records a completion; returns false once the slot must stop, in which
  /// case the slot no longer counts as outstanding.
  bool complete(int64_t start_ns, int64_t end_ns) {
    completed.fetch_add(1, std::memory_order_relaxed);
    if (end_ns >= window_start_ns && end_ns < window_end_ns) {
      in_window.fetch_add(1, std::memory_order_relaxed);
      hist.record(end_ns - start_ns);
    }
    if (stop.load(std::memory_order_relaxed)) {
      outstanding.fetch_sub(1);
      return false;
    }
    return true;
  }

  /// Records a failed request; its slot stops.
  void fail(caf::error err) {
    {
      std::lock_guard guard{mtx_};
      if (!first_error_)
        first_error_ = std::move(err);
    }
    outstanding.fetch_sub(1);
  }

  caf::error error() const {
    std::lock_guard guard{mtx_};
    return first_error_;
  }

  double window_s() const {
    return to_s(window_end_ns - window_start_ns);
  }

  double ops_per_s() const {
    return static_cast<double>(in_window.load()) / window_s();
  }

private:
  mutable std::mutex mtx_;
  caf::error first_error_;
};

/// Optional callbacks of `run_timed`.
struct timed_hooks {
  /// Runs on the driving thread when the measured window opens and closes.
  std::function<void()> window_opened;
  std::function<void()> window_closed;
};

/// Silo counters and storage counts at the opening and closing of a
/// measured window, for per-operation figures.
struct window_snapshots {
  silo_stats s0;
  silo_stats s1;
  storage_counts c0;
  storage_counts c1;
  int64_t s0_ns = 0;
  int64_t s1_ns = 0;

  /// Hooks that take the snapshots; `this` must outlive the run.
  timed_hooks hooks(silo& s, const counting_storage& counts) {
    timed_hooks out;
    out.window_opened = [this, &s, &counts] {
      s0 = s.stats();
      c0 = counts.counts();
      s0_ns = now_ns();
    };
    out.window_closed = [this, &s, &counts] {
      s1 = s.stats();
      c1 = counts.counts();
      s1_ns = now_ns();
    };
    return out;
  }
};

std::string fmt_rate(double x) {
  char buf[64];
  if (x >= 1e6)
    std::snprintf(buf, sizeof(buf), "%.2fM", x / 1e6);
  else if (x >= 1e3)
    std::snprintf(buf, sizeof(buf), "%.1fk", x / 1e3);
  else
    std::snprintf(buf, sizeof(buf), "%.0f", x);
  return buf;
}

/// Drives a closed loop from the calling thread until its window closes:
/// one progress line per second, the hooks at the window's edges, then it
/// stops the loop and waits (bounded) for the requests still in flight.
caf::error run_timed(load_state& st, const std::string& label,
                     const std::string& unit,
                     const std::function<void(const std::string&)>& progress,
                     const timed_hooks& hooks = {}) {
  bool opened = false;
  auto open_window = [&] {
    opened = true;
    st.cpu.start();
    if (hooks.window_opened)
      hooks.window_opened();
  };
  auto next_report = st.t0_ns + to_ns(1);
  auto last_done = st.completed.load();
  auto last_ns = st.t0_ns;
  // Bounded by the window's end; each pass sleeps at most 50 ms.
  for (;;) {
    auto now = now_ns();
    if (!opened && now >= st.window_start_ns)
      open_window();
    if (now >= st.window_end_ns || st.outstanding.load() <= 0)
      break;
    if (progress && now >= next_report) {
      auto done = st.completed.load();
      auto rate = static_cast<double>(done - last_done) / to_s(now - last_ns);
      char buf[160];
      std::snprintf(buf, sizeof(buf), "[%s] %.0f/%.0f s: %s %s/s%s",
                    label.c_str(), to_s(now - st.t0_ns),
                    to_s(st.window_end_ns - st.t0_ns), fmt_rate(rate).c_str(),
                    unit.c_str(), opened ? "" : " (warm-up)");
      progress(buf);
      last_done = done;
      last_ns = now;
      next_report += to_ns(1);
    }
    auto wake = std::min(next_report, st.window_end_ns);
    if (!opened)
      wake = std::min(wake, st.window_start_ns);
    auto nap = std::clamp<int64_t>(wake - now, 0, 50'000'000);
    std::this_thread::sleep_for(std::chrono::nanoseconds{nap});
  }
  if (!opened)
    open_window();
  st.cpu.stop();
  if (hooks.window_closed)
    hooks.window_closed();
  st.stop = true;
  auto deadline = now_ns() + std::chrono::nanoseconds{drain_timeout}.count();
  while (st.outstanding.load() > 0 && now_ns() < deadline)
    std::this_thread::sleep_for(1ms);
  if (auto err = st.error())
    return err;
  if (auto left = st.outstanding.load(); left > 0)
    return make_error(errc::timeout, label + ": " + std::to_string(left)
                                         + " requests still in flight "
                                         + std::to_string(drain_timeout.count())
                                         + " s after the run ended");
  return caf::none;
}

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

struct load_figures {
  double ops_per_s = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  double p999_ms = 0;
  cpu_meter cpu;
};

load_figures figures_of(const load_state& st) {
  return {st.ops_per_s(), st.hist.quantile_ms(0.5), st.hist.quantile_ms(0.99),
          st.hist.quantile_ms(0.999), st.cpu};
}

caf::expected<load_figures>
measure_transient(double duration_s, size_t concurrency, size_t grains,
                  size_t payload, const std::string& label,
                  const std::function<void(const std::string&)>& progress) {
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
  return figures_of(*st);
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

/// An actor system configured like a silo's: 2 threads, work sharing.
std::unique_ptr<caf::actor_system_config> plain_caf_config() {
  auto cfg = std::make_unique<caf::actor_system_config>();
  cfg->set("scheduler.max-threads", size_t{2});
  cfg->set("scheduler.policy", caf::atom("sharing"));
  cfg->set("logger.console-verbosity", caf::atom("quiet"));
  cfg->set("logger.file-verbosity", caf::atom("quiet"));
  return cfg;
}

caf::expected<load_figures>
measure_caf(double duration_s, size_t concurrency, const std::string& label,
            const std::function<void(const std::string&)>& progress) {
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
  return figures_of(*st);
}

// -- durable sends on a silo --------------------------------------------------

struct durable_load : load_state {
  silo* target_silo = nullptr;
  std::vector<grain_id> ids;
  // One message per slot: a slot has one send in flight at a time, and
  // protobuf's cached sizes must not be shared between threads.
  std::vector<Ping> msgs;
  size_t concurrency = 1;
};

void issue_send(const std::shared_ptr<durable_load>& st, size_t slot,
                uint64_t n) {
  auto& id = st->ids[(slot + n * st->concurrency) % st->ids.size()];
  auto& msg = st->msgs[slot];
  msg.set_seq(n);
  auto start = now_ns();
  st->target_silo->send_async(id, msg, {},
                              [st, slot, n, start](const caf::error& err) {
                                if (err) {
                                  st->fail(err);
                                  return;
                                }
                                if (st->complete(start, now_ns()))
                                  issue_send(st, slot, n + 1);
                              });
}

struct raw_figures {
  double puts_per_s = 0;
  double writes_per_s = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  cpu_meter cpu;
};

std::string hex(uint64_t x) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "%llx", static_cast<unsigned long long>(x));
  return buf;
}

/// One writer thread doing `sync = true` WriteBatches of `batch_puts` puts
/// each on a fresh RocksDB with default options. The puts mimic a durable
/// turn's records: a dedup record (grain prefix + message id -> 8 bytes)
/// and a state record (grain prefix -> `state_value`), alternately.
caf::expected<raw_figures>
raw_group_commit(const std::string& dir, size_t batch_puts,
                 const std::vector<std::string>& prefixes,
                 const std::string& state_value, double duration_s,
                 const std::function<void(const std::string&)>& progress) {
  rocksdb::Options o;
  o.create_if_missing = true;
  rocksdb::DB* raw = nullptr;
  auto s = rocksdb::DB::Open(o, dir, &raw);
  if (!s.ok())
    return make_error(errc::storage_failure,
                      "raw RocksDB baseline: cannot open '" + dir
                          + "': " + s.ToString());
  std::unique_ptr<rocksdb::DB> db{raw};
  rocksdb::WriteOptions wo;
  wo.sync = true;
  load_state st;
  st.start_clock(duration_s);
  std::string dedup_value;
  keys::append_u64(dedup_value, 1'700'000'000'000);
  uint64_t msg_no = 0;
  uint64_t puts_in_window = 0;
  uint64_t writes_in_window = 0;
  auto next_report = st.t0_ns + to_ns(1);
  uint64_t last_puts = 0;
  uint64_t puts = 0;
  auto last_ns = st.t0_ns;
  rocksdb::WriteBatch wb;
  std::string key;
  raw_figures out;
  bool opened = false;
  // Bounded by the window's end.
  for (;;) {
    auto start = now_ns();
    if (start >= st.window_end_ns)
      break;
    if (!opened && start >= st.window_start_ns) {
      opened = true;
      out.cpu.start();
    }
    wb.Clear();
    for (size_t i = 0; i < batch_puts; ++i) {
      auto& prefix = prefixes[(msg_no / 2) % prefixes.size()];
      if (msg_no % 2 == 0) {
        key.assign(prefix);
        key += "1.";
        key += hex(msg_no / 2);
        wb.Put(key, dedup_value);
      } else {
        wb.Put(prefix, state_value);
      }
      ++msg_no;
    }
    s = db->Write(wo, &wb);
    if (!s.ok())
      return make_error(errc::storage_failure,
                        "raw RocksDB baseline: write failed: " + s.ToString());
    auto end = now_ns();
    puts += batch_puts;
    if (end >= st.window_start_ns && end < st.window_end_ns) {
      puts_in_window += batch_puts;
      ++writes_in_window;
      st.hist.record(end - start);
    }
    if (progress && end >= next_report) {
      char buf[160];
      std::snprintf(
          buf, sizeof(buf),
          "[durable-ping] raw RocksDB %.0f/%.0f s: %s puts/s%s",
          to_s(end - st.t0_ns), duration_s,
          fmt_rate(static_cast<double>(puts - last_puts) / to_s(end - last_ns))
              .c_str(),
          end < st.window_start_ns ? " (warm-up)" : "");
      progress(buf);
      last_puts = puts;
      last_ns = end;
      next_report += to_ns(1);
    }
  }
  if (opened)
    out.cpu.stop();
  db->Close().PermitUncheckedError();
  out.puts_per_s = static_cast<double>(puts_in_window) / st.window_s();
  out.writes_per_s = static_cast<double>(writes_in_window) / st.window_s();
  out.p50_ms = st.hist.quantile_ms(0.5);
  out.p99_ms = st.hist.quantile_ms(0.99);
  return out;
}

// -- durable sends, measured -------------------------------------------------

/// Figures of a durable-ping silo run.
struct durable_figures {
  load_figures load;
  double ops_per_msg = 0;
  double ops_per_fsync = 0;
  double fsyncs_per_s = 0;
  /// Key and value bytes committed per message.
  double bytes_per_msg = 0;
  /// Grain prefixes of the counters, for the raw baseline's keys.
  std::vector<std::string> prefixes;
};

caf::expected<durable_figures>
measure_durable(const std::string& data_dir, double duration_s,
                size_t concurrency, size_t grains, size_t payload,
                const std::string& label,
                const std::function<void(const std::string&)>& progress) {
  auto cfg = base_config(concurrency);
  auto partitions = cfg.partitions;
  auto dir = make_temp_dir(data_dir, "silo");
  if (!dir)
    return std::move(dir.error());
  temp_dir guard{*dir};
  auto store = rocksdb_storage::open({.data_dir = *dir});
  if (!store)
    return std::move(store.error());
  auto counted = std::make_unique<counting_storage>(std::move(*store));
  auto* counts = counted.get();
  auto s = start_silo(cfg, std::move(counted));
  if (!s)
    return std::move(s.error());
  durable_figures out;
  auto st = std::make_shared<durable_load>();
  st->target_silo = s->get();
  st->concurrency = concurrency;
  st->ids.reserve(grains);
  out.prefixes.reserve(grains);
  for (size_t i = 0; i < grains; ++i) {
    st->ids.push_back(id_of<counter>(counter_key(i)));
    out.prefixes.push_back(keys::grain_prefix(
        partition_of(st->ids.back(), partitions), st->ids.back()));
  }
  st->msgs.resize(concurrency);
  for (auto& m : st->msgs)
    m.set_payload(std::string(payload, 'x'));
  window_snapshots w;
  auto hooks = w.hooks(**s, *counts);
  st->outstanding = static_cast<int64_t>(concurrency);
  st->start_clock(duration_s);
  for (size_t slot = 0; slot < concurrency; ++slot)
    issue_send(st, slot, 0);
  auto err = run_timed(*st, label, "msgs", progress, hooks);
  auto stop_err = (*s)->stop();
  if (err)
    return err;
  if (stop_err)
    return stop_err;
  out.load = figures_of(*st);
  auto ops = static_cast<double>(w.s1.commits.ops - w.s0.commits.ops);
  auto groups = static_cast<double>(w.s1.commits.groups - w.s0.commits.groups);
  auto turns = static_cast<double>(w.s1.durable_turns - w.s0.durable_turns);
  if (ops <= 0 || groups <= 0 || turns <= 0)
    return make_error(errc::unspecified,
                      label
                          + ": no durable turn committed inside the measured "
                            "window");
  out.ops_per_msg = ops / turns;
  out.ops_per_fsync = ops / groups;
  out.fsyncs_per_s = groups / to_s(w.s1_ns - w.s0_ns);
  out.bytes_per_msg = static_cast<double>(w.c1.bytes - w.c0.bytes) / turns;
  return out;
}

// -- two silos ----------------------------------------------------------------

/// Durable sends through silo "a" to counter grains that silo "b" owns,
/// over the Asio transport on loopback: every message crosses (forwarded,
/// committed by b with a dedup record, acknowledged back through a).
caf::expected<load_figures>
measure_cross_silo(const std::string& data_dir, double duration_s,
                   size_t concurrency, size_t grains, size_t payload,
                   const std::string& label,
                   const std::function<void(const std::string&)>& progress) {
  struct member {
    std::string id;
    std::optional<temp_dir> dir;
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
    auto dir = make_temp_dir(data_dir, "cross");
    if (!dir)
      return std::move(dir.error());
    m.dir.emplace(*dir);
    auto store = rocksdb_storage::open({.data_dir = *dir});
    if (!store)
      return std::move(store.error());
    auto counted = std::make_unique<counting_storage>(std::move(*store));
    counts = counted.get(); // The receiving silo, b, is started last.
    auto c = cfg;
    c.router = m.router.get();
    auto s = start_silo(c, std::move(counted));
    if (!s)
      return std::move(s.error());
    m.s = std::move(*s);
    m.router->attach(*m.s);
  }
  auto st = std::make_shared<durable_load>();
  st->target_silo = ms[0].s.get();
  st->concurrency = concurrency;
  for (size_t i = 0; st->ids.size() < grains && i < grains * 64; ++i) {
    auto id = id_of<counter>(counter_key(i));
    if (partition_of(id, cfg.partitions) % 2 == 1)
      st->ids.push_back(std::move(id));
  }
  st->msgs.resize(concurrency);
  for (auto& m : st->msgs)
    m.set_payload(std::string(payload, 'x'));
  window_snapshots w;
  auto hooks = w.hooks(*ms[1].s, *counts);
  st->outstanding = static_cast<int64_t>(concurrency);
  st->start_clock(duration_s);
  for (size_t slot = 0; slot < concurrency; ++slot)
    issue_send(st, slot, 0);
  auto err = run_timed(*st, label, "msgs", progress, hooks);
  caf::error stop_err;
  for (auto& m : ms)
    if (auto e = m.s->stop(); e && !stop_err)
      stop_err = e;
  for (auto& m : ms) {
    m.ptr = nullptr;
    m.router->stop();
    m.net->stop();
  }
  if (err)
    return err;
  if (stop_err)
    return stop_err;
  return figures_of(*st);
}

// -- workflows on a silo ------------------------------------------------------

constexpr uint64_t no_run = ~uint64_t{0};

/// One slot of workflow-10-steps: the run it has in flight.
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

/// Figures of a workflow-10-steps silo run; per-workflow figures are
/// window deltas divided by the workflows completed in the window.
struct workflow_figures {
  load_figures load;
  double turns_per_workflow = 0;
  double ops_per_workflow = 0;
  double ops_per_fsync = 0;
  double fsyncs_per_s = 0;
  double bytes_per_workflow = 0;
  double state_bytes_per_workflow = 0;
  double outbox_bytes_per_workflow = 0;
  double dedup_bytes_per_workflow = 0;
  double reads_per_workflow = 0;
};

/// Runs `concurrency` slots of `type` grains (steps_flow or chain), each
/// started with a `WorkflowInput` under a fresh key, until the window ends.
caf::expected<workflow_figures>
measure_workflows(const std::string& data_dir, double duration_s,
                  size_t concurrency, size_t grains, size_t payload,
                  std::string_view type, const std::string& label,
                  const std::function<void(const std::string&)>& progress) {
  auto dir = make_temp_dir(data_dir, "workflow");
  if (!dir)
    return std::move(dir.error());
  temp_dir guard{*dir};
  auto store = rocksdb_storage::open({.data_dir = *dir});
  if (!store)
    return std::move(store.error());
  auto counted = std::make_unique<counting_storage>(std::move(*store));
  auto* counts = counted.get();
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
  auto s = start_silo(base_config(concurrency), std::move(counted), &pool);
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
  out.load = figures_of(*st);
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

// -- memory -------------------------------------------------------------------

/// Activates grains "m0", "m1", ... with one transient call each.
struct activation_load : load_state {
  silo* target_silo = nullptr;
  message_ptr msg;
  uint64_t total = 0;
  std::atomic<uint64_t> next{0};
};

void issue_activation(const std::shared_ptr<activation_load>& st) {
  auto i = st->next.fetch_add(1);
  if (i >= st->total) {
    st->outstanding.fetch_sub(1);
    return;
  }
  auto start = now_ns();
  st->target_silo->call_async(id_of<echo>("m" + std::to_string(i)), st->msg,
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
  if (started < n)
    return make_error(errc::timeout, "memory: only " + std::to_string(started)
                                         + " of " + std::to_string(n)
                                         + " CAF actors started in time");
  caf_memory_figures out;
  out.bytes_per_actor
      = static_cast<double>(after - before) / static_cast<double>(n);
  out.spawns_per_s = static_cast<double>(n) / secs;
  return out;
}

// -- sleeping workflows -------------------------------------------------------

/// Starts sleeper workflows "z0", "z1", ... with one durable send each.
struct sleeper_load : load_state {
  silo* target_silo = nullptr;
  uint64_t total = 0;
  std::atomic<uint64_t> next{0};
};

std::string sleeper_key(uint64_t i) {
  return "z" + std::to_string(i);
}

void issue_sleeper(const std::shared_ptr<sleeper_load>& st) {
  auto i = st->next.fetch_add(1);
  if (i >= st->total) {
    st->outstanding.fetch_sub(1);
    return;
  }
  WorkflowInput in;
  in.set_seq(i);
  auto start = now_ns();
  // Acknowledged once the workflow's first turn, which journals the sleep
  // and stores its timer, is durable.
  st->target_silo->send_async(
      grain_id{std::string{sleeper_flow::type_name}, sleeper_key(i)}, in, {},
      [st, start](const caf::error& err) {
        if (err) {
          st->fail(err);
          return;
        }
        if (st->complete(start, now_ns()))
          issue_sleeper(st);
      });
}

/// Bytes of all files under `dir`.
uint64_t dir_bytes(const std::string& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (auto& e : std::filesystem::recursive_directory_iterator(dir, ec))
    if (e.is_regular_file(ec))
      total += e.file_size(ec);
  return total;
}

/// Counts the records of `col` in `st`, a page at a time.
caf::expected<uint64_t> count_records(storage& st, column col) {
  constexpr size_t page = 4'096;
  uint64_t total = 0;
  std::string start;
  // Bounded by the records of the column: every pass moves past a page.
  for (;;) {
    size_t seen = 0;
    std::string last;
    auto err = st.scan(col, {}, start, page,
                       [&](std::string_view k, std::string_view) {
                         ++seen;
                         last.assign(k);
                         return true;
                       });
    if (err)
      return err;
    total += seen;
    if (seen < page)
      return total;
    start = std::move(last);
    start.push_back('\0');
  }
}

/// Figures of one sleeping-workflows run.
struct sleeping_figures {
  load_figures create;
  double create_s = 0;
  double recovery_s = 0;
  double empty_start_s = 0;
  uint64_t rss_empty = 0;
  uint64_t rss_empty_after_create = 0;
  uint64_t rss_restarted = 0;
  uint64_t timers_in_memory = 0;
  uint64_t active = 0;
  uint64_t timers_stored = 0;
  uint64_t disk_bytes = 0;
};

/// Starts an empty silo for the baseline RSS, creates `n` sleeping
/// workflows on a RocksDB silo and stops it, then starts a silo on that
/// directory again and measures it once recovery is done.
caf::expected<sleeping_figures>
measure_sleeping(const std::string& data_dir, uint64_t n, size_t concurrency,
                 const std::function<void(const std::string&)>& progress) {
  auto cfg = base_config(concurrency);
  cfg.idle_age = sleeping_idle_age;
  auto dir = make_temp_dir(data_dir, "sleeping");
  if (!dir)
    return std::move(dir.error());
  temp_dir guard{*dir};
  sleeping_figures out;
  // An empty silo on a fresh directory, started the same way: what the
  // restarted silo is compared with. Returns its start time and RSS.
  auto empty_silo = [&]() -> caf::expected<std::pair<double, uint64_t>> {
    auto empty = make_temp_dir(data_dir, "sleeping-empty");
    if (!empty)
      return std::move(empty.error());
    temp_dir empty_guard{*empty};
    auto t0 = now_ns();
    auto store = rocksdb_storage::open({.data_dir = *empty});
    if (!store)
      return std::move(store.error());
    auto s = start_silo(cfg, std::move(*store));
    if (!s)
      return std::move(s.error());
    auto start_s = to_s(now_ns() - t0);
    auto rss = settled_rss_bytes();
    if (auto err = (*s)->stop())
      return err;
    return std::make_pair(start_s, rss);
  };
  if (progress)
    progress("[sleeping-workflows] baseline: an empty silo");
  auto pristine = empty_silo();
  if (!pristine)
    return std::move(pristine.error());
  out.empty_start_s = pristine->first;
  out.rss_empty = pristine->second;
  {
    auto store = rocksdb_storage::open({.data_dir = *dir});
    if (!store)
      return std::move(store.error());
    auto s = start_silo(cfg, std::move(*store));
    if (!s)
      return std::move(s.error());
    auto st = std::make_shared<sleeper_load>();
    st->target_silo = s->get();
    st->total = n;
    auto slots = std::min<uint64_t>(concurrency, n);
    st->outstanding = static_cast<int64_t>(slots);
    // Every creation counts: the window spans the whole (bounded) run.
    auto timeout_ns = to_ns(120) + static_cast<int64_t>(n) * 200'000;
    st->t0_ns = now_ns();
    st->window_start_ns = st->t0_ns;
    st->window_end_ns = st->t0_ns + timeout_ns;
    st->cpu.start();
    for (uint64_t i = 0; i < slots; ++i)
      issue_sleeper(st);
    auto next_report = st->t0_ns + to_ns(1);
    // Bounded by the window's end.
    while (st->outstanding.load() > 0 && now_ns() < st->window_end_ns) {
      if (progress && now_ns() >= next_report) {
        char buf[160];
        std::snprintf(buf, sizeof(buf),
                      "[sleeping-workflows] %.0f s: created %llu/%llu",
                      to_s(now_ns() - st->t0_ns),
                      static_cast<unsigned long long>(st->completed.load()),
                      static_cast<unsigned long long>(n));
        progress(buf);
        next_report += to_ns(1);
      }
      std::this_thread::sleep_for(1ms);
    }
    out.create_s = to_s(now_ns() - st->t0_ns);
    st->cpu.stop();
    st->stop = true;
    auto stop_err = (*s)->stop();
    if (auto err = st->error())
      return err;
    if (st->completed.load() < n)
      return make_error(errc::timeout,
                        "sleeping-workflows: only "
                            + std::to_string(st->completed.load()) + " of "
                            + std::to_string(n) + " workflows created in time");
    if (stop_err)
      return stop_err;
    out.create.ops_per_s = static_cast<double>(n) / out.create_s;
    out.create.p50_ms = st->hist.quantile_ms(0.5);
    out.create.p99_ms = st->hist.quantile_ms(0.99);
    out.create.p999_ms = st->hist.quantile_ms(0.999);
    out.create.cpu = st->cpu;
  }
  // The same again with the heap the creation left behind, to tell what
  // of the growth that history explains.
  auto after = empty_silo();
  if (!after)
    return std::move(after.error());
  out.rss_empty_after_create = after->second;
  if (progress)
    progress("[sleeping-workflows] restarting on " + std::to_string(n)
             + " sleeping workflows");
  {
    auto t0 = now_ns();
    auto store = rocksdb_storage::open({.data_dir = *dir});
    if (!store)
      return std::move(store.error());
    auto s = start_silo(cfg, std::move(*store));
    if (!s)
      return std::move(s.error());
    out.recovery_s = to_s(now_ns() - t0);
    out.rss_restarted = settled_rss_bytes();
    auto stats = (*s)->stats();
    out.timers_in_memory = stats.timers_in_memory;
    out.active = stats.active;
    if (auto err = (*s)->stop())
      return err;
  }
  // Counted after the measurement: a full scan fills the block cache.
  auto store = rocksdb_storage::open({.data_dir = *dir});
  if (!store)
    return std::move(store.error());
  auto stored = count_records(**store, column::timer_index);
  if (!stored)
    return std::move(stored.error());
  out.timers_stored = *stored;
  store->reset();
  out.disk_bytes = dir_bytes(*dir);
  return out;
}

// -- fan-out ------------------------------------------------------------------

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
                   const std::string& label,
                   const std::function<void(const std::string&)>& progress,
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

// -- output helpers -----------------------------------------------------------

std::string fmt_num(double x) {
  if (!std::isfinite(x))
    return "null";
  char buf[64];
  if (x == std::floor(x) && std::fabs(x) < 1e15)
    std::snprintf(buf, sizeof(buf), "%.0f", x);
  else
    std::snprintf(buf, sizeof(buf), "%.10g", x);
  return buf;
}

// Renders 1234567.8 as "1,234,568".
std::string fmt_grouped(double x) {
  if (!std::isfinite(x))
    return "-";
  auto digits = std::to_string(static_cast<long long>(std::llround(x)));
  std::string out;
  size_t sign = digits[0] == '-' ? 1 : 0;
  size_t len = digits.size() - sign;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > sign && (len - (i - sign)) % 3 == 0)
      out += ',';
    out += digits[i];
  }
  return out;
}

std::string fmt_ms(double x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3f", x);
  return buf;
}

double ratio_of(double ours, double base) {
  return base > 0 ? ours / base : 0;
}

} // namespace

// -- public API ---------------------------------------------------------------

const std::vector<scenario_info>& scenarios() {
  static const std::vector<scenario_info> list{
      {"transient-ping", "transient calls/s against raw CAF request/response"},
      {"durable-ping", "durable messages/s against raw RocksDB group commit"},
      {"cross-silo-durable",
       "durable messages/s between two silos over loopback TCP against "
       "durable-ping"},
      {"workflow-10-steps",
       "10-step workflows/s against durable-ping msgs/s / 20"},
      {"fanout-100",
       "workflows of 100 parallel activities against durable-ping msgs/s / "
       "200"},
      {"fanout", "one grain tells N grains; against transient-ping"},
      {"memory", "RSS per idle activation; against one CAF actor each"},
      {"retry-storm",
       "CPU while --grains messages (100k) wait for a dead partition; "
       "against the same silo idle"},
      {"sleeping-workflows",
       "RSS per workflow asleep on a long timer after a restart; against "
       "an empty silo"},
  };
  return list;
}

const std::vector<std::string>& scenario_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (auto& s : scenarios())
      out.push_back(s.name);
    return out;
  }();
  return names;
}

bool is_scenario(std::string_view name) {
  if (name == "all")
    return true;
  auto& names = scenario_names();
  return std::find(names.begin(), names.end(), name) != names.end();
}

caf::error validate(const options& opts) {
  auto bad = [](std::string what) {
    return make_error(errc::invalid_argument, std::move(what));
  };
  if (opts.duration_s
      && (!std::isfinite(*opts.duration_s) || *opts.duration_s <= 0
          || *opts.duration_s > max_duration_s))
    return bad("--duration must be above 0 and at most "
               + fmt_num(max_duration_s) + " seconds");
  if (opts.concurrency
      && (*opts.concurrency == 0 || *opts.concurrency > max_concurrency))
    return bad("--concurrency must be between 1 and "
               + std::to_string(max_concurrency));
  if (opts.grains && (*opts.grains == 0 || *opts.grains > max_grains))
    return bad("--grains must be between 1 and " + std::to_string(max_grains));
  if (opts.payload && *opts.payload > max_payload)
    return bad("--payload must be at most " + std::to_string(max_payload)
               + " bytes");
  return caf::none;
}

runner::runner(options opts)
    : opts_(std::move(opts)) {}

void runner::progress(const std::string& line) const {
  if (opts_.progress)
    opts_.progress(line);
}

caf::expected<result> runner::run(std::string_view name) {
  if (name == "transient-ping")
    return transient_ping();
  if (name == "durable-ping")
    return durable_ping();
  if (name == "fanout")
    return fanout();
  if (name == "memory")
    return memory();
  if (name == "workflow-10-steps")
    return workflow_10_steps();
  if (name == "fanout-100")
    return fanout_100();
  if (name == "cross-silo-durable")
    return cross_silo_durable();
  if (name == "retry-storm")
    return retry_storm();
  if (name == "sleeping-workflows")
    return sleeping_workflows();
  return make_error(errc::invalid_argument,
                    "unknown scenario '" + std::string{name} + "'");
}

caf::expected<result> runner::transient_ping() {
  auto duration_s = opts_.duration_s.value_or(default_duration_s);
  auto concurrency = opts_.concurrency.value_or(transient_concurrency);
  auto grains = opts_.grains.value_or(small_grains);
  auto payload = opts_.payload.value_or(default_payload);
  auto progress_fn = [this](const std::string& line) { progress(line); };
  auto ours = measure_transient(duration_s, concurrency, grains, payload,
                                "transient-ping", progress_fn);
  if (!ours)
    return std::move(ours.error());
  transient_ops_per_s_ = ours->ops_per_s;
  auto base = measure_caf(duration_s, concurrency, "transient-ping raw CAF",
                          progress_fn);
  if (!base)
    return std::move(base.error());
  result res;
  res.scenario = "transient-ping";
  res.ops_per_s = ours->ops_per_s;
  res.p50_ms = ours->p50_ms;
  res.p99_ms = ours->p99_ms;
  res.p999_ms = ours->p999_ms;
  res.baseline = "caf-request-response";
  res.baseline_ops_per_s = base->ops_per_s;
  res.ratio = ratio_of(res.ops_per_s, res.baseline_ops_per_s);
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

caf::expected<result> runner::durable_ping() {
  auto duration_s = opts_.duration_s.value_or(default_duration_s);
  auto concurrency = opts_.concurrency.value_or(durable_concurrency);
  auto grains = opts_.grains.value_or(small_grains);
  auto payload = opts_.payload.value_or(default_payload);
  auto progress_fn = [this](const std::string& line) { progress(line); };
  auto state_value = [&] {
    CounterState st;
    st.set_count(12'345);
    st.set_last(std::string(payload, 'x'));
    return st.SerializeAsString();
  }();
  auto ours = measure_durable(opts_.data_dir, duration_s, concurrency, grains,
                              payload, "durable-ping", progress_fn);
  if (!ours)
    return std::move(ours.error());
  durable_ = durable_run{.msgs_per_s = ours->load.ops_per_s,
                         .ops_per_msg = ours->ops_per_msg,
                         .bytes_per_msg = ours->bytes_per_msg,
                         .cpu_cores = ours->load.cpu.own_cores,
                         .other_cpu_cores = ours->load.cpu.other_cores,
                         .concurrency = concurrency,
                         .duration_s = duration_s};
  // The raw writer stores one record per message, in sync batches of as
  // many messages as one of our group commits carried. (Our own writes
  // per message can be fewer than one: a group keeps only the last state
  // of a grain that several messages changed.)
  auto msgs_per_fsync = ours->ops_per_fsync / std::max(ours->ops_per_msg, 1e-9);
  auto batch
      = std::max<size_t>(1, static_cast<size_t>(std::llround(msgs_per_fsync)));
  raw_figures raw;
  {
    auto dir = make_temp_dir(opts_.data_dir, "raw");
    if (!dir)
      return std::move(dir.error());
    temp_dir guard{*dir};
    auto r = raw_group_commit(*dir, batch, ours->prefixes, state_value,
                              duration_s, progress_fn);
    if (!r)
      return std::move(r.error());
    raw = *r;
  }
  result res;
  res.scenario = "durable-ping";
  res.ops_per_s = ours->load.ops_per_s;
  res.p50_ms = ours->load.p50_ms;
  res.p99_ms = ours->load.p99_ms;
  res.p999_ms = ours->load.p999_ms;
  res.baseline = "rocksdb-group-commit";
  res.baseline_ops_per_s = raw.puts_per_s;
  res.ratio = ratio_of(res.ops_per_s, res.baseline_ops_per_s);
  res.target = "ratio >= 0.3 and p99 < 5 ms";
  res.met = res.ratio >= durable_target && res.p99_ms < durable_p99_target_ms;
  res.extras = {{"concurrency", static_cast<double>(concurrency)},
                {"grains", static_cast<double>(grains)},
                {"payload_bytes", static_cast<double>(payload)},
                {"duration_s", duration_s},
                {"ops_per_msg", ours->ops_per_msg},
                {"ops_per_fsync", ours->ops_per_fsync},
                {"fsyncs_per_s", ours->fsyncs_per_s},
                {"bytes_per_msg", ours->bytes_per_msg},
                {"cpu_cores", ours->load.cpu.own_cores},
                {"other_cpu_cores", ours->load.cpu.other_cores},
                {"baseline_batch_puts", static_cast<double>(batch)},
                {"baseline_puts_per_s", raw.puts_per_s},
                {"baseline_fsyncs_per_s", raw.writes_per_s},
                {"baseline_write_p50_ms", raw.p50_ms},
                {"baseline_write_p99_ms", raw.p99_ms},
                {"baseline_cpu_cores", raw.cpu.own_cores},
                {"baseline_other_cpu_cores", raw.cpu.other_cores}};
  return res;
}

caf::error runner::ensure_durable_baseline() {
  if (durable_)
    return caf::none;
  // The same settings durable-ping would use with these options.
  auto duration_s = opts_.duration_s.value_or(default_duration_s);
  auto pre_s = std::min(durable_prerun_s, duration_s);
  auto pre_concurrency = opts_.concurrency.value_or(durable_concurrency);
  auto pre = measure_durable(
      opts_.data_dir, pre_s, pre_concurrency,
      opts_.grains.value_or(small_grains),
      opts_.payload.value_or(default_payload), "baseline: durable-ping",
      [this](const std::string& line) { progress(line); });
  if (!pre)
    return std::move(pre.error());
  durable_ = durable_run{.msgs_per_s = pre->load.ops_per_s,
                         .ops_per_msg = pre->ops_per_msg,
                         .bytes_per_msg = pre->bytes_per_msg,
                         .cpu_cores = pre->load.cpu.own_cores,
                         .other_cpu_cores = pre->load.cpu.other_cores,
                         .concurrency = pre_concurrency,
                         .duration_s = pre_s};
  return caf::none;
}

caf::expected<result> runner::cross_silo_durable() {
  auto duration_s = opts_.duration_s.value_or(default_duration_s);
  auto concurrency = opts_.concurrency.value_or(durable_concurrency);
  auto grains = opts_.grains.value_or(small_grains);
  auto payload = opts_.payload.value_or(default_payload);
  if (auto err = ensure_durable_baseline())
    return err;
  auto ours
      = measure_cross_silo(opts_.data_dir, duration_s, concurrency, grains,
                           payload, "cross-silo-durable",
                           [this](const std::string& line) { progress(line); });
  if (!ours)
    return std::move(ours.error());
  auto& base = *durable_;
  result res;
  res.scenario = "cross-silo-durable";
  res.ops_per_s = ours->ops_per_s;
  res.p50_ms = ours->p50_ms;
  res.p99_ms = ours->p99_ms;
  res.p999_ms = ours->p999_ms;
  // The cost of crossing a silo: the same durable sends, once to a grain
  // of the receiving silo and once through another silo.
  res.baseline = "durable-ping";
  res.baseline_ops_per_s = base.msgs_per_s;
  res.ratio = ratio_of(res.ops_per_s, res.baseline_ops_per_s);
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

caf::expected<result> runner::retry_storm() {
  auto duration_s = opts_.duration_s.value_or(default_duration_s);
  auto waiting = opts_.grains.value_or(100'000);
  auto concurrency = opts_.concurrency.value_or(durable_concurrency);
  auto dir = make_temp_dir(opts_.data_dir, "storm");
  if (!dir)
    return std::move(dir.error());
  temp_dir cleanup{*dir};
  auto store = rocksdb_storage::open({.data_dir = *dir});
  if (!store)
    return std::move(store.error());
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
  auto started = start_silo(cfg, std::move(*store));
  if (!started)
    return std::move(started.error());
  auto& s = **started;
  auto pause = [](double seconds) {
    std::this_thread::sleep_for(
        std::chrono::milliseconds{static_cast<int64_t>(seconds * 1'000)});
  };
  // The baseline: the same silo, idle, in the same run.
  progress("retry-storm: measuring an idle silo for " + fmt_num(duration_s)
           + " s");
  cpu_meter idle;
  idle.start();
  pause(duration_s);
  idle.stop();
  progress("retry-storm: storing " + fmt_grouped(static_cast<double>(waiting))
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
    s.send_async(
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
  progress("retry-storm: measuring while they wait for " + fmt_num(duration_s)
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
  static_cast<void>(s.stop());
  return res;
}

caf::expected<result> runner::fanout_100() {
  auto duration_s = opts_.duration_s.value_or(default_duration_s);
  auto concurrency = opts_.concurrency.value_or(fanout_100_concurrency);
  auto payload = opts_.payload.value_or(default_payload);
  auto progress_fn = [this](const std::string& line) { progress(line); };
  if (auto err = ensure_durable_baseline())
    return err;
  auto ours
      = measure_workflows(opts_.data_dir, duration_s, concurrency, 1, payload,
                          fanout_flow::type_name, "fanout-100", progress_fn);
  if (!ours)
    return std::move(ours.error());
  auto& base = *durable_;
  auto width = static_cast<double>(fanout_width);
  auto activities_per_s = ours->load.ops_per_s * width;
  result res;
  res.scenario = "fanout-100";
  res.ops_per_s = ours->load.ops_per_s;
  res.p50_ms = ours->load.p50_ms;
  res.p99_ms = ours->load.p99_ms;
  res.p999_ms = ours->load.p999_ms;
  // An activity is two durable messages at least (its start and its
  // recorded result): compare activities with pairs of durable-ping
  // messages.
  res.baseline = "durable-ping/200";
  res.baseline_ops_per_s = base.msgs_per_s / (2 * width);
  res.ratio = ratio_of(res.ops_per_s, res.baseline_ops_per_s);
  res.target = "report only";
  res.met = true;
  res.extras
      = {{"width", width},
         {"concurrency", static_cast<double>(concurrency)},
         {"payload_bytes", static_cast<double>(payload)},
         {"duration_s", duration_s},
         {"activities_per_s", activities_per_s},
         {"durable_turns_per_workflow", ours->turns_per_workflow},
         {"ops_per_workflow", ours->ops_per_workflow},
         {"bytes_per_workflow", ours->bytes_per_workflow},
         {"state_bytes_per_workflow", ours->state_bytes_per_workflow},
         {"ops_per_fsync", ours->ops_per_fsync},
         {"fsyncs_per_s", ours->fsyncs_per_s},
         {"cpu_cores", ours->load.cpu.own_cores},
         {"other_cpu_cores", ours->load.cpu.other_cores},
         {"cpu_us_per_activity",
          ours->load.cpu.own_cores / std::max(activities_per_s, 1e-9) * 1e6},
         {"baseline_msgs_per_s", base.msgs_per_s},
         {"baseline_cpu_cores", base.cpu_cores},
         {"baseline_other_cpu_cores", base.other_cpu_cores}};
  return res;
}

caf::expected<result> runner::workflow_10_steps() {
  auto duration_s = opts_.duration_s.value_or(default_duration_s);
  auto concurrency = opts_.concurrency.value_or(workflow_concurrency);
  auto grains = opts_.grains.value_or(small_grains);
  auto payload = opts_.payload.value_or(default_payload);
  auto progress_fn = [this](const std::string& line) { progress(line); };
  if (auto err = ensure_durable_baseline())
    return err;
  auto ours = measure_workflows(opts_.data_dir, duration_s, concurrency, grains,
                                payload, steps_flow::type_name,
                                "workflow-10-steps", progress_fn);
  if (!ours)
    return std::move(ours.error());
  // The same calls without the workflow machinery: what the durable calls
  // themselves cost, so the journal's share can be told apart.
  auto plain = measure_workflows(opts_.data_dir, duration_s, concurrency,
                                 grains, payload, chain::type_name,
                                 "workflow-10-steps: call chain", progress_fn);
  if (!plain)
    return std::move(plain.error());
  auto cpu_us_per_chain
      = plain->load.cpu.own_cores / plain->load.ops_per_s * 1e6;
  auto& base = *durable_;
  auto steps = static_cast<double>(workflow_steps);
  auto cpu_us_per_workflow
      = ours->load.cpu.own_cores / ours->load.ops_per_s * 1e6;
  auto base_cpu_us = base.cpu_cores / base.msgs_per_s * 1e6 * 2 * steps;
  result res;
  res.scenario = "workflow-10-steps";
  res.ops_per_s = ours->load.ops_per_s;
  res.p50_ms = ours->load.p50_ms;
  res.p99_ms = ours->load.p99_ms;
  res.p999_ms = ours->load.p999_ms;
  // "A 10-step workflow costs at most about 2x the durable messages of 10
  // plain durable calls": 10 calls are 20 durable messages (request and
  // reply), so one workflow is measured against 20 durable-ping messages
  // and must reach half their rate.
  res.baseline = "durable-ping/20";
  res.baseline_ops_per_s = base.msgs_per_s / (2 * steps);
  res.ratio = ratio_of(res.ops_per_s, res.baseline_ops_per_s);
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

caf::expected<result> runner::fanout() {
  auto n = static_cast<uint64_t>(opts_.grains.value_or(large_grains));
  if (!transient_ops_per_s_) {
    auto pre = measure_transient(
        std::min(fanout_prerun_s, opts_.duration_s.value_or(fanout_prerun_s)),
        opts_.concurrency.value_or(transient_concurrency),
        opts_.grains ? std::min(*opts_.grains, small_grains) : small_grains,
        opts_.payload.value_or(default_payload), "fanout: transient-ping",
        [this](const std::string& line) { progress(line); });
    if (!pre)
      return std::move(pre.error());
    transient_ops_per_s_ = pre->ops_per_s;
  }
  auto cfg = base_config(1);
  cfg.max_queued_per_partition = fanout_queue_bound;
  auto s = start_silo(cfg, std::make_unique<memory_storage>());
  if (!s)
    return std::move(s.error());
  histogram hist;
  fanout_run first;
  fanout_run again;
  auto progress_fn = [this](const std::string& line) { progress(line); };
  auto err = fan_out(**s, n, hist, "fanout", progress_fn, first);
  if (!err) {
    // The same fan-out to the now active sinks: the difference is the cost
    // of activating a grain.
    histogram unused;
    err = fan_out(**s, n, unused, "fanout again", progress_fn, again);
  }
  auto stats = (*s)->stats();
  auto stop_err = (*s)->stop();
  if (err)
    return err;
  if (stop_err)
    return stop_err;
  result res;
  res.scenario = "fanout";
  res.ops_per_s = static_cast<double>(n) / first.seconds;
  res.p50_ms = hist.quantile_ms(0.5);
  res.p99_ms = hist.quantile_ms(0.99);
  res.p999_ms = hist.quantile_ms(0.999);
  res.baseline = "transient-ping";
  res.baseline_ops_per_s = *transient_ops_per_s_;
  res.ratio = ratio_of(res.ops_per_s, res.baseline_ops_per_s);
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

caf::expected<result> runner::memory() {
  auto n = static_cast<uint64_t>(opts_.grains.value_or(large_grains));
  auto concurrency = opts_.concurrency.value_or(memory_concurrency);
  auto timeout_ns = to_ns(120) + static_cast<int64_t>(n) * 20'000;
  auto cfg = base_config(concurrency);
  // Nothing may be deactivated while we count.
  cfg.idle_age = std::chrono::hours{24};
  double bytes_per_activation = 0;
  double activation_s = 0;
  uint64_t active = 0;
  load_figures ours;
  {
    auto s = start_silo(cfg, std::make_unique<memory_storage>());
    if (!s)
      return std::move(s.error());
    auto st = std::make_shared<activation_load>();
    st->target_silo = s->get();
    st->msg = std::make_shared<const Ping>();
    st->total = n;
    auto slots = std::min<uint64_t>(concurrency, n);
    st->outstanding = static_cast<int64_t>(slots);
    auto before = settled_rss_bytes();
    // Every activation counts: the window spans the whole (bounded) run.
    st->t0_ns = now_ns();
    st->window_start_ns = st->t0_ns;
    st->window_end_ns = st->t0_ns + timeout_ns;
    st->cpu.start();
    for (uint64_t i = 0; i < slots; ++i)
      issue_activation(st);
    auto next_report = st->t0_ns + to_ns(1);
    // Bounded by the window's end.
    while (st->outstanding.load() > 0 && now_ns() < st->window_end_ns) {
      if (opts_.progress && now_ns() >= next_report) {
        char buf[128];
        std::snprintf(buf, sizeof(buf), "[memory] %.0f s: activated %llu/%llu",
                      to_s(now_ns() - st->t0_ns),
                      static_cast<unsigned long long>(st->completed.load()),
                      static_cast<unsigned long long>(n));
        progress(buf);
        next_report += to_ns(1);
      }
      std::this_thread::sleep_for(1ms);
    }
    activation_s = to_s(now_ns() - st->t0_ns);
    st->cpu.stop();
    ours.cpu = st->cpu;
    st->stop = true;
    if (auto err = st->error())
      return err;
    if (st->completed.load() < n)
      return make_error(errc::timeout,
                        "memory: only " + std::to_string(st->completed.load())
                            + " of " + std::to_string(n)
                            + " grains activated in time");
    auto after = settled_rss_bytes();
    active = (*s)->stats().active;
    bytes_per_activation
        = (static_cast<double>(after) - static_cast<double>(before))
          / static_cast<double>(n);
    ours.ops_per_s = static_cast<double>(n) / activation_s;
    ours.p50_ms = st->hist.quantile_ms(0.5);
    ours.p99_ms = st->hist.quantile_ms(0.99);
    ours.p999_ms = st->hist.quantile_ms(0.999);
    if (auto err = (*s)->stop())
      return err;
  }
  progress("[memory] raw CAF: spawning " + std::to_string(n) + " idle actors");
  auto base = caf_actor_memory(n, timeout_ns);
  if (!base)
    return std::move(base.error());
  result res;
  res.scenario = "memory";
  res.ops_per_s = ours.ops_per_s;
  res.p50_ms = ours.p50_ms;
  res.p99_ms = ours.p99_ms;
  res.p999_ms = ours.p999_ms;
  res.baseline = "caf-actor-per-grain";
  res.baseline_ops_per_s = base->spawns_per_s;
  res.ratio = ratio_of(res.ops_per_s, res.baseline_ops_per_s);
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

caf::expected<result> runner::sleeping_workflows() {
  auto n = static_cast<uint64_t>(
      opts_.grains.value_or(sleeping_workflows_default));
  auto concurrency = opts_.concurrency.value_or(sleeping_concurrency);
  if (auto err = ensure_durable_baseline())
    return err;
  auto ours
      = measure_sleeping(opts_.data_dir, n, concurrency,
                         [this](const std::string& line) { progress(line); });
  if (!ours)
    return std::move(ours.error());
  auto per_workflow
      = [n](double bytes) { return bytes / static_cast<double>(n); };
  auto rss_per_workflow = per_workflow(static_cast<double>(ours->rss_restarted)
                                       - static_cast<double>(ours->rss_empty));
  result res;
  res.scenario = "sleeping-workflows";
  // Creations per second, with the latency of each start's durable send
  // (acknowledged once the workflow's first turn is durable).
  res.ops_per_s = ours->create.ops_per_s;
  res.p50_ms = ours->create.p50_ms;
  res.p99_ms = ours->create.p99_ms;
  res.p999_ms = ours->create.p999_ms;
  res.baseline = "durable-ping";
  res.baseline_ops_per_s = durable_->msgs_per_s;
  res.ratio = ratio_of(res.ops_per_s, res.baseline_ops_per_s);
  res.target = "rss_bytes_per_sleeping_workflow <= 200";
  res.met
      = rss_per_workflow <= sleeping_target_bytes && ours->timers_stored == n;
  res.extras
      = {{"rss_bytes_per_sleeping_workflow", rss_per_workflow},
         {"workflows", static_cast<double>(n)},
         {"sleep_days", static_cast<double>(sleep_days)},
         {"concurrency", static_cast<double>(concurrency)},
         {"create_s", ours->create_s},
         {"recovery_s", ours->recovery_s},
         {"empty_start_s", ours->empty_start_s},
         {"rss_after_restart_bytes", static_cast<double>(ours->rss_restarted)},
         {"rss_empty_silo_bytes", static_cast<double>(ours->rss_empty)},
         {"rss_empty_silo_after_create_bytes",
          static_cast<double>(ours->rss_empty_after_create)},
         {"timers_in_memory", static_cast<double>(ours->timers_in_memory)},
         {"timers_stored", static_cast<double>(ours->timers_stored)},
         {"active_after_restart", static_cast<double>(ours->active)},
         {"disk_bytes_per_workflow",
          per_workflow(static_cast<double>(ours->disk_bytes))},
         {"cpu_cores", ours->create.cpu.own_cores},
         {"other_cpu_cores", ours->create.cpu.other_cores}};
  return res;
}

std::string to_json(const result& res) {
  std::string out = "{";
  auto field = [&](std::string_view name, const std::string& value) {
    if (out.size() > 1)
      out += ',';
    out += json_quote(name);
    out += ':';
    out += value;
  };
  field("scenario", json_quote(res.scenario));
  field("ops_per_s", fmt_num(res.ops_per_s));
  field("p50_ms", fmt_num(res.p50_ms));
  field("p99_ms", fmt_num(res.p99_ms));
  field("p999_ms", fmt_num(res.p999_ms));
  field("baseline", json_quote(res.baseline));
  field("baseline_ops_per_s", fmt_num(res.baseline_ops_per_s));
  field("ratio", fmt_num(res.ratio));
  field("target", json_quote(res.target));
  field("met", res.met ? "true" : "false");
  for (auto& [name, value] : res.extras)
    field(name, fmt_num(value));
  out += '}';
  return out;
}

std::string to_table(const std::vector<result>& results) {
  std::string out;
  char buf[256];
  auto line = [&](const char* scenario, const char* ops, const char* p50,
                  const char* p99, const char* p999, const char* base,
                  const char* base_ops, const char* ratio, const char* met) {
    std::snprintf(buf, sizeof(buf),
                  "%-17s %12s %8s %8s %9s  %-21s %12s %7s  %s\n", scenario, ops,
                  p50, p99, p999, base, base_ops, ratio, met);
    out += buf;
  };
  line("scenario", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "baseline",
       "baseline/s", "ratio", "target");
  for (auto& r : results) {
    char ratio[32];
    std::snprintf(ratio, sizeof(ratio), "%.3f", r.ratio);
    auto verdict = r.target + (r.met ? ": met" : ": MISSED");
    line(r.scenario.c_str(), fmt_grouped(r.ops_per_s).c_str(),
         fmt_ms(r.p50_ms).c_str(), fmt_ms(r.p99_ms).c_str(),
         fmt_ms(r.p999_ms).c_str(), r.baseline.c_str(),
         fmt_grouped(r.baseline_ops_per_s).c_str(), ratio, verdict.c_str());
  }
  out += "\n";
  for (auto& r : results) {
    out += r.scenario + ":";
    for (auto& [name, value] : r.extras)
      out += " " + name + "=" + fmt_num(value);
    out += "\n";
  }
  return out;
}

} // namespace granary::bench

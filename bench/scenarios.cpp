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
#include "bench.pb.h"
#include "persistence/rocksdb_storage.hpp"
#include "runtime/error.hpp"
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
// How long calls still in flight may take to finish after a timed run.
constexpr auto drain_timeout = 10s;

constexpr double transient_target = 0.4;
constexpr double durable_target = 0.3;
constexpr double durable_p99_target_ms = 5;
constexpr double fanout_target = 0.3;
constexpr double memory_target_bytes = 2'048;

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
                                                std::unique_ptr<storage> st) {
  grain_registry registry;
  for (auto err :
       {register_grain<echo>(registry), register_grain<counter>(registry),
        register_grain<sink>(registry), register_grain<driver>(registry)})
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

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
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

const std::vector<std::string>& scenario_names() {
  static const std::vector<std::string> names{"transient-ping", "durable-ping",
                                              "fanout", "memory"};
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
  auto cfg = base_config(concurrency);
  auto partitions = cfg.partitions;
  auto state_value = [&] {
    CounterState st;
    st.set_count(12'345);
    st.set_last(std::string(payload, 'x'));
    return st.SerializeAsString();
  }();
  std::vector<std::string> prefixes;
  load_figures ours;
  double ops_per_msg = 0;
  double ops_per_fsync = 0;
  double fsyncs_per_s = 0;
  {
    auto dir = make_temp_dir(opts_.data_dir, "silo");
    if (!dir)
      return std::move(dir.error());
    temp_dir guard{*dir};
    auto store = rocksdb_storage::open({.data_dir = *dir});
    if (!store)
      return std::move(store.error());
    auto s = start_silo(cfg, std::move(*store));
    if (!s)
      return std::move(s.error());
    auto st = std::make_shared<durable_load>();
    st->target_silo = s->get();
    st->concurrency = concurrency;
    st->ids.reserve(grains);
    for (size_t i = 0; i < grains; ++i) {
      st->ids.push_back(id_of<counter>("c" + std::to_string(i)));
      prefixes.push_back(keys::grain_prefix(
          partition_of(st->ids.back(), partitions), st->ids.back()));
    }
    st->msgs.resize(concurrency);
    for (auto& m : st->msgs)
      m.set_payload(std::string(payload, 'x'));
    silo_stats s0;
    silo_stats s1;
    int64_t s0_ns = 0;
    int64_t s1_ns = 0;
    timed_hooks hooks;
    hooks.window_opened = [&] {
      s0 = (*s)->stats();
      s0_ns = now_ns();
    };
    hooks.window_closed = [&] {
      s1 = (*s)->stats();
      s1_ns = now_ns();
    };
    st->outstanding = static_cast<int64_t>(concurrency);
    st->start_clock(duration_s);
    for (size_t slot = 0; slot < concurrency; ++slot)
      issue_send(st, slot, 0);
    auto err = run_timed(*st, "durable-ping", "msgs", progress_fn, hooks);
    auto stop_err = (*s)->stop();
    if (err)
      return err;
    if (stop_err)
      return stop_err;
    ours = figures_of(*st);
    auto ops = static_cast<double>(s1.commits.ops - s0.commits.ops);
    auto groups = static_cast<double>(s1.commits.groups - s0.commits.groups);
    auto turns = static_cast<double>(s1.durable_turns - s0.durable_turns);
    if (ops <= 0 || groups <= 0 || turns <= 0)
      return make_error(errc::unspecified,
                        "durable-ping: no durable turn committed inside the "
                        "measured window");
    ops_per_msg = ops / turns;
    ops_per_fsync = ops / groups;
    fsyncs_per_s = groups / to_s(s1_ns - s0_ns);
  }
  auto batch
      = std::max<size_t>(1, static_cast<size_t>(std::llround(ops_per_fsync)));
  raw_figures raw;
  {
    auto dir = make_temp_dir(opts_.data_dir, "raw");
    if (!dir)
      return std::move(dir.error());
    temp_dir guard{*dir};
    auto r = raw_group_commit(*dir, batch, prefixes, state_value, duration_s,
                              progress_fn);
    if (!r)
      return std::move(r.error());
    raw = *r;
  }
  result res;
  res.scenario = "durable-ping";
  res.ops_per_s = ours.ops_per_s;
  res.p50_ms = ours.p50_ms;
  res.p99_ms = ours.p99_ms;
  res.p999_ms = ours.p999_ms;
  res.baseline = "rocksdb-group-commit";
  res.baseline_ops_per_s = raw.puts_per_s / ops_per_msg;
  res.ratio = ratio_of(res.ops_per_s, res.baseline_ops_per_s);
  res.target = "ratio >= 0.3 and p99 < 5 ms";
  res.met = res.ratio >= durable_target && res.p99_ms < durable_p99_target_ms;
  res.extras = {{"concurrency", static_cast<double>(concurrency)},
                {"grains", static_cast<double>(grains)},
                {"payload_bytes", static_cast<double>(payload)},
                {"duration_s", duration_s},
                {"ops_per_msg", ops_per_msg},
                {"ops_per_fsync", ops_per_fsync},
                {"fsyncs_per_s", fsyncs_per_s},
                {"cpu_cores", ours.cpu.own_cores},
                {"other_cpu_cores", ours.cpu.other_cores},
                {"baseline_batch_puts", static_cast<double>(batch)},
                {"baseline_puts_per_s", raw.puts_per_s},
                {"baseline_fsyncs_per_s", raw.writes_per_s},
                {"baseline_write_p50_ms", raw.p50_ms},
                {"baseline_write_p99_ms", raw.p99_ms},
                {"baseline_cpu_cores", raw.cpu.own_cores},
                {"baseline_other_cpu_cores", raw.cpu.other_cores}};
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

std::string to_json(const result& res) {
  std::string out = "{";
  auto field = [&](std::string_view name, const std::string& value) {
    if (out.size() > 1)
      out += ',';
    out += json_string(name);
    out += ':';
    out += value;
  };
  field("scenario", json_string(res.scenario));
  field("ops_per_s", fmt_num(res.ops_per_s));
  field("p50_ms", fmt_num(res.p50_ms));
  field("p99_ms", fmt_num(res.p99_ms));
  field("p999_ms", fmt_num(res.p999_ms));
  field("baseline", json_string(res.baseline));
  field("baseline_ops_per_s", fmt_num(res.baseline_ops_per_s));
  field("ratio", fmt_num(res.ratio));
  field("target", json_string(res.target));
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
                  "%-15s %12s %8s %8s %9s  %-21s %12s %7s  %s\n", scenario, ops,
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

// sleeping-workflows: RSS per workflow asleep on a long timer after a
// restart, against an empty silo; the creations are measured against
// durable-ping.

#include <filesystem>
#include <memory>
#include <utility>

#include "bench/bench_grains.hpp"
#include "bench/report.hpp"
#include "bench/scenario.hpp"
#include "persistence/rocksdb_storage.hpp"

namespace granary::bench {

namespace {

using namespace std::chrono_literals;

// Workflows created by default, and starts in flight.
constexpr size_t sleeping_workflows_default = 100'000;
constexpr size_t sleeping_concurrency = 256;
// Creating workflows keeps their activations for this long only, so that
// a million of them do not all stay in memory while they are created.
constexpr auto sleeping_idle_age = 2s;
constexpr double sleeping_target_bytes = 200;

/// Starts sleeper workflows "z0", "z1", ... with one durable send each.
struct sleeper_load : counted_load {
  silo* target_silo = nullptr;
};

std::string sleeper_key(uint64_t i) {
  return "z" + std::to_string(i);
}

void issue_sleeper(const std::shared_ptr<sleeper_load>& st) {
  auto i = st->take();
  if (!i)
    return;
  WorkflowInput in;
  in.set_seq(*i);
  auto start = now_ns();
  // Acknowledged once the workflow's first turn, which journals the sleep
  // and stores its timer, is durable.
  st->target_silo->send_async(
      grain_id{std::string{sleeper_flow::type_name}, sleeper_key(*i)}, in, {},
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
caf::expected<sleeping_figures> measure_sleeping(const std::string& data_dir,
                                                 uint64_t n, size_t concurrency,
                                                 const progress_fn& progress) {
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
    auto s = start_rocksdb_silo(cfg, *empty);
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
    auto s = start_rocksdb_silo(cfg, *dir);
    if (!s)
      return std::move(s.error());
    auto st = std::make_shared<sleeper_load>();
    st->target_silo = s->get();
    st->total = n;
    auto timeout_ns = to_ns(120) + static_cast<int64_t>(n) * 200'000;
    out.create_s = run_counted(
        *st, concurrency, timeout_ns, [&st] { issue_sleeper(st); },
        "sleeping-workflows", "created", progress);
    auto stop_err = (*s)->stop();
    if (auto err = st->error())
      return err;
    if (auto err = shortfall("sleeping-workflows", st->completed.load(), n,
                             "workflows created"))
      return err;
    if (stop_err)
      return stop_err;
    out.create
        = figures_of(static_cast<double>(n) / out.create_s, st->hist, st->cpu);
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
    auto s = start_rocksdb_silo(cfg, *dir);
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

caf::expected<result> run(session& s) {
  auto n = static_cast<uint64_t>(
      s.opts.grains.value_or(sleeping_workflows_default));
  auto concurrency = s.opts.concurrency.value_or(sleeping_concurrency);
  if (auto err = s.ensure_durable_baseline())
    return err;
  auto ours
      = measure_sleeping(s.opts.data_dir, n, concurrency, s.opts.progress);
  if (!ours)
    return std::move(ours.error());
  auto per_workflow
      = [n](double bytes) { return bytes / static_cast<double>(n); };
  auto rss_per_workflow = per_workflow(static_cast<double>(ours->rss_restarted)
                                       - static_cast<double>(ours->rss_empty));
  // Creations per second, with the latency of each start's durable send
  // (acknowledged once the workflow's first turn is durable).
  auto res = make_result("sleeping-workflows", ours->create, "durable-ping",
                         s.durable->msgs_per_s);
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

} // namespace

constinit const scenario_def sleeping_workflows_scenario{
    "sleeping-workflows",
    "RSS per workflow asleep on a long timer after a restart; against "
    "an empty silo",
    &run};

} // namespace granary::bench

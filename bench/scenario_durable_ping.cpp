// durable-ping: durable sends to counter grains on one silo with RocksDB,
// against one thread writing the same records to a raw RocksDB in sync
// batches as large as the silo's group commits.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <vector>

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include "bench/bench_grains.hpp"
#include "bench/counting_storage.hpp"
#include "bench/report.hpp"
#include "bench/scenario.hpp"
#include "runtime/error.hpp"
#include "runtime/keys.hpp"

namespace granary::bench {

namespace {

constexpr double durable_target = 0.3;
constexpr double durable_p99_target_ms = 5;
// Scenarios that compare themselves with durable-ping run a short one
// first when none ran before.
constexpr double durable_prerun_s = 2;

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

// -- raw RocksDB group commit -------------------------------------------------

/// Figures of the raw writer: its sync writes (one per batch), and the
/// puts they carried.
struct raw_figures {
  load_figures writes;
  double puts_per_s = 0;
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
                 const progress_fn& progress) {
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
  cpu_meter cpu;
  bool opened = false;
  // Bounded by the window's end.
  for (;;) {
    auto start = now_ns();
    if (start >= st.window_end_ns)
      break;
    if (!opened && start >= st.window_start_ns) {
      opened = true;
      cpu.start();
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
    cpu.stop();
  db->Close().PermitUncheckedError();
  raw_figures out;
  out.writes = figures_of(static_cast<double>(writes_in_window) / st.window_s(),
                          st.hist, cpu);
  out.puts_per_s = static_cast<double>(puts_in_window) / st.window_s();
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
                const std::string& label, const progress_fn& progress) {
  auto cfg = base_config(concurrency);
  auto partitions = cfg.partitions;
  temp_dir guard;
  auto counted = open_counting(data_dir, "silo", guard);
  if (!counted)
    return std::move(counted.error());
  auto* counts = counted->get();
  auto s = start_silo(cfg, std::move(*counted));
  if (!s)
    return std::move(s.error());
  durable_figures out;
  std::vector<grain_id> ids;
  ids.reserve(grains);
  out.prefixes.reserve(grains);
  for (size_t i = 0; i < grains; ++i) {
    ids.push_back(id_of<counter>(counter_key(i)));
    out.prefixes.push_back(
        keys::grain_prefix(partition_of(ids.back(), partitions), ids.back()));
  }
  window_snapshots w;
  auto sends
      = run_durable_sends(**s, std::move(ids), concurrency, payload, duration_s,
                          label, progress, w.hooks(**s, *counts));
  auto stop_err = (*s)->stop();
  if (sends.err)
    return sends.err;
  if (stop_err)
    return stop_err;
  out.load = sends.figures;
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

/// What later scenarios keep of a durable-ping run.
durable_run durable_run_of(const durable_figures& f, size_t concurrency,
                           double duration_s) {
  return {.msgs_per_s = f.load.ops_per_s,
          .ops_per_msg = f.ops_per_msg,
          .bytes_per_msg = f.bytes_per_msg,
          .cpu_cores = f.load.cpu.own_cores,
          .other_cpu_cores = f.load.cpu.other_cores,
          .concurrency = concurrency,
          .duration_s = duration_s};
}

// -- the scenario -------------------------------------------------------------

caf::expected<result> run(session& s) {
  auto [duration_s, concurrency, grains, payload]
      = s.settings(durable_concurrency, small_grains);
  CounterState state;
  state.set_count(12'345);
  state.set_last(std::string(payload, 'x'));
  auto state_value = state.SerializeAsString();
  auto ours = measure_durable(s.opts.data_dir, duration_s, concurrency, grains,
                              payload, "durable-ping", s.opts.progress);
  if (!ours)
    return std::move(ours.error());
  s.durable = durable_run_of(*ours, concurrency, duration_s);
  // The raw writer stores one record per message, in sync batches of as
  // many messages as one of our group commits carried. (Our own writes
  // per message can be fewer than one: a group keeps only the last state
  // of a grain that several messages changed.)
  auto msgs_per_fsync = ours->ops_per_fsync / std::max(ours->ops_per_msg, 1e-9);
  auto batch
      = std::max<size_t>(1, static_cast<size_t>(std::llround(msgs_per_fsync)));
  raw_figures raw;
  {
    auto dir = make_temp_dir(s.opts.data_dir, "raw");
    if (!dir)
      return std::move(dir.error());
    temp_dir guard{*dir};
    auto r = raw_group_commit(*dir, batch, ours->prefixes, state_value,
                              duration_s, s.opts.progress);
    if (!r)
      return std::move(r.error());
    raw = *r;
  }
  auto res = make_result("durable-ping", ours->load, "rocksdb-group-commit",
                         raw.puts_per_s);
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
                {"baseline_fsyncs_per_s", raw.writes.ops_per_s},
                {"baseline_write_p50_ms", raw.writes.p50_ms},
                {"baseline_write_p99_ms", raw.writes.p99_ms},
                {"baseline_cpu_cores", raw.writes.cpu.own_cores},
                {"baseline_other_cpu_cores", raw.writes.cpu.other_cores}};
  return res;
}

} // namespace

durable_sends run_durable_sends(silo& s, std::vector<grain_id> ids,
                                size_t concurrency, size_t payload,
                                double duration_s, const std::string& label,
                                const progress_fn& progress,
                                const timed_hooks& hooks) {
  auto st = std::make_shared<durable_load>();
  st->target_silo = &s;
  st->concurrency = concurrency;
  st->ids = std::move(ids);
  st->msgs.resize(concurrency);
  for (auto& m : st->msgs)
    m.set_payload(std::string(payload, 'x'));
  st->outstanding = static_cast<int64_t>(concurrency);
  st->start_clock(duration_s);
  for (size_t slot = 0; slot < concurrency; ++slot)
    issue_send(st, slot, 0);
  durable_sends out;
  out.err = run_timed(*st, label, "msgs", progress, hooks);
  out.figures = st->figures();
  return out;
}

caf::error session::ensure_durable_baseline() {
  if (durable)
    return caf::none;
  // The same settings durable-ping would use with these options.
  auto cfg = settings(durable_concurrency, small_grains);
  auto pre_s = std::min(durable_prerun_s, cfg.duration_s);
  auto pre
      = measure_durable(opts.data_dir, pre_s, cfg.concurrency, cfg.grains,
                        cfg.payload, "baseline: durable-ping", opts.progress);
  if (!pre)
    return std::move(pre.error());
  durable = durable_run_of(*pre, cfg.concurrency, pre_s);
  return caf::none;
}

constinit const scenario_def durable_ping_scenario{
    "durable-ping", "durable messages/s against raw RocksDB group commit",
    &run};

} // namespace granary::bench

#include "testing/simulation.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <set>

#include "cluster/membership/embedded_membership.hpp"
#include "cluster/routing/transport_router.hpp"
#include "cluster/transport/memory_transport.hpp"
#include "runtime/assert.hpp"
#include "runtime/error.hpp"
#include "runtime/keys.hpp"
#include "runtime/log.hpp"
#include "runtime/sys.hpp"

namespace granary::testing {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// -- faults -------------------------------------------------------------------

sim_faults sim_faults::none() {
  return {};
}

sim_faults sim_faults::all() {
  sim_faults f;
  f.drop_rate = 0.02;
  f.duplicate_rate = 0.02;
  f.delay_rate = 0.05;
  f.partitions = true;
  f.clogging = true;
  f.crashes = true;
  f.pauses = true;
  f.clock_skew = true;
  f.leaves = true;
  f.membership = true;
  f.disk = true;
  return f;
}

caf::expected<sim_faults> sim_faults::parse(std::string_view list) {
  sim_faults f;
  auto all = sim_faults::all();
  // Bounded by the list's length.
  while (!list.empty()) {
    auto comma = list.find(',');
    auto kind = list.substr(0, comma);
    list = comma == std::string_view::npos ? std::string_view{}
                                           : list.substr(comma + 1);
    if (kind == "all")
      f = all;
    else if (kind == "none")
      f = none();
    else if (kind == "drop")
      f.drop_rate = all.drop_rate;
    else if (kind == "duplicate")
      f.duplicate_rate = all.duplicate_rate;
    else if (kind == "delay")
      f.delay_rate = all.delay_rate;
    else if (kind == "partition")
      f.partitions = true;
    else if (kind == "clog")
      f.clogging = true;
    else if (kind == "crash")
      f.crashes = true;
    else if (kind == "pause")
      f.pauses = true;
    else if (kind == "skew")
      f.clock_skew = true;
    else if (kind == "leave")
      f.leaves = true;
    else if (kind == "membership")
      f.membership = true;
    else if (kind == "disk")
      f.disk = true;
    else
      return make_error(errc::invalid_argument,
                        "unknown fault kind '" + std::string{kind}
                            + "' (known: drop, duplicate, delay, partition, "
                              "clog, crash, pause, skew, leave, membership, "
                              "disk, all, none)");
  }
  return f;
}

std::string sim_faults::to_string() const {
  std::string out;
  auto add = [&](bool on, const char* name) {
    if (on)
      out += (out.empty() ? "" : ",") + std::string{name};
  };
  add(drop_rate > 0, "drop");
  add(duplicate_rate > 0, "duplicate");
  add(delay_rate > 0, "delay");
  add(partitions, "partition");
  add(clogging, "clog");
  add(crashes, "crash");
  add(pauses, "pause");
  add(clock_skew, "skew");
  add(leaves, "leave");
  add(membership, "membership");
  add(disk, "disk");
  return out.empty() ? "none" : out;
}

std::string sim_report::details() const {
  if (run.ok)
    return {};
  std::string out = "\n last events:\n";
  for (auto& l : run.tail)
    out += "  " + l + "\n";
  out += " threads:\n";
  for (auto& l : run.threads)
    out += "  " + l + "\n";
  return out;
}

std::string sim_report::summary() const {
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "seed %llu: %s, %.1f s simulated in %.2f s, %llu frames",
                static_cast<unsigned long long>(seed), run.ok ? "ok" : "FAILED",
                std::chrono::duration<double>(run.elapsed).count(),
                std::chrono::duration<double>(wall).count(),
                static_cast<unsigned long long>(frames));
  std::string out = buf;
  std::string kinds;
  for (auto& [kind, n] : faults)
    kinds += (kinds.empty() ? "" : ", ") + kind + " " + std::to_string(n);
  if (!kinds.empty())
    out += ", faults: " + kinds;
  if (!run.ok)
    out += "; " + run.invariant + ": " + run.detail;
  return out;
}

// -- world --------------------------------------------------------------------

sim_world::~sim_world() = default;

uint64_t sim_world::random() {
  return kernel().random();
}

void sim_world::fail(std::string invariant, std::string detail) {
  kernel().fail(std::move(invariant), std::move(detail));
}

void sim_world::trace(std::string event) {
  kernel().trace(std::move(event));
}

void sim_world::pause() {
  sys::sleep_for(std::chrono::milliseconds{100 + random() % 900});
}

bool sim_world::cluster_fault(const caf::error& err) {
  auto code = code_of(err);
  return code == errc::timeout || code == errc::silo_stopped
         || code == errc::partition_unavailable || code == errc::not_owner
         || code == errc::overloaded || code == errc::not_found
         || code == errc::storage_full || code == errc::storage_failure;
}

std::vector<wire::WorkflowState> sim_world::stored_runs(const grain_id& id) {
  std::vector<wire::WorkflowState> out;
  auto key = keys::grain_prefix(partition_of(id, partitions()), id);
  for (size_t i = 0; i < size(); ++i) {
    auto raw = data(i).get(column::state, key);
    if (!raw || !*raw)
      continue;
    wire::WorkflowState st;
    if (!st.ParseFromString(**raw))
      fail("storage", "the state of " + to_string(id) + " on silo "
                          + std::to_string(i) + " is not a workflow journal");
    out.push_back(std::move(st));
  }
  return out;
}

namespace {

// Faults of the membership store as silos see it (shared by the world and
// every silo's guarded_store; guarded by the world's mutex).
struct store_faults {
  // Chance that a write applies but its answer is lost.
  double lost_answer_rate = 0;
  // Per silo id: until when the store cannot be reached from it.
  std::map<std::string, sys::time_point> unreachable;
  uint64_t lost_answers = 0;
  uint64_t refused_calls = 0;
};

// The shared membership store as one silo sees it: watchers of a crashed
// silo are not called (its threads are gone; its objects must stay
// still); with faults, calls time out while the store is unreachable from
// this silo, and some writes apply but answer with a timeout.
class guarded_store final : public cluster::membership_store {
public:
  guarded_store(cluster::membership_store& inner, sim::kernel& k,
                sim::process_id p, std::string silo_id, sys::mutex& mtx,
                store_faults& faults)
      : inner_(inner)
      , k_(k)
      , p_(p)
      , silo_id_(std::move(silo_id))
      , mtx_(mtx)
      , faults_(faults) {}

  caf::expected<cluster::membership_table> read_all() override {
    if (auto err = unreachable())
      return err;
    return inner_.read_all();
  }
  caf::expected<cluster::membership_table>
  read(const std::string& silo_id) override {
    if (auto err = unreachable())
      return err;
    return inner_.read(silo_id);
  }
  caf::expected<cluster::write_result>
  insert(const cluster::membership_entry& entry, uint64_t v) override {
    if (auto err = unreachable())
      return err;
    return lose_answer(inner_.insert(entry, v));
  }
  caf::expected<cluster::write_result>
  update(const cluster::membership_entry& entry, uint64_t row,
         uint64_t table) override {
    if (auto err = unreachable())
      return err;
    return lose_answer(inner_.update(entry, row, table));
  }
  caf::error update_i_am_alive(const std::string& silo_id,
                               int64_t now_ms) override {
    if (auto err = unreachable())
      return err;
    return inner_.update_i_am_alive(silo_id, now_ms);
  }
  caf::expected<size_t> delete_dead(int64_t older_than_ms) override {
    if (auto err = unreachable())
      return err;
    return inner_.delete_dead(older_than_ms);
  }
  caf::expected<cluster::watch_token>
  watch(cluster::membership_watcher watcher) override {
    return inner_.watch([k = &k_, p = p_, w = std::move(watcher)](
                            const cluster::membership_change& c) {
      if (k->alive(p))
        w(c);
    });
  }
  caf::expected<cluster::partition_map> read_partition_map() override {
    if (auto err = unreachable())
      return err;
    return inner_.read_partition_map();
  }
  caf::expected<cluster::write_result>
  write_partition_map(const cluster::partition_map& map,
                      uint64_t expected) override {
    if (auto err = unreachable())
      return err;
    return lose_answer(inner_.write_partition_map(map, expected));
  }

private:
  // A call from a silo that cannot reach the store: it waits for its
  // deadline (1 s) and times out, as a remote store's client would.
  caf::error unreachable() {
    {
      std::lock_guard guard{mtx_};
      auto i = faults_.unreachable.find(silo_id_);
      if (i == faults_.unreachable.end() || i->second <= sys::now())
        return caf::none;
      ++faults_.refused_calls;
    }
    sys::sleep_for(std::chrono::seconds{1});
    return make_error(errc::timeout,
                      "simulated membership store: no answer within 1000 ms");
  }

  // A write that applied, whose answer may be lost on the way back.
  caf::expected<cluster::write_result>
  lose_answer(caf::expected<cluster::write_result> res) {
    std::lock_guard guard{mtx_};
    if (!res || faults_.lost_answer_rate <= 0
        || static_cast<double>(sys::random_u64() % 1'000'000)
               >= faults_.lost_answer_rate * 1e6)
      return res;
    ++faults_.lost_answers;
    return make_error(errc::timeout,
                      "simulated membership store: the answer was lost; the "
                      "outcome of the write is unknown");
  }

  cluster::membership_store& inner_;
  sim::kernel& k_;
  sim::process_id p_;
  std::string silo_id_;
  sys::mutex& mtx_;
  store_faults& faults_;
};

// A silo's disk: its data (kept across crashes) behind an fsync that takes
// a while, so that a crash during a commit loses the batch, as power loss
// before the fsync returned would.
// The faults of one silo's disk, set by the world and read by its
// `sim_disk` (the disk outlives the silo's processes).
struct disk_faults {
  sys::mutex mtx;
  // Until then, every commit takes 100 to 500 ms more.
  sys::time_point slow_until;
  // Until then, the disk reports no free space.
  sys::time_point full_until;
  // The next commit fails (applied or not: its outcome is unknown).
  bool fail_next = false;
};

class sim_disk final : public storage {
public:
  sim_disk(std::shared_ptr<memory_storage> mem,
           std::shared_ptr<disk_faults> faults)
      : inner_(std::move(mem))
      , faults_(std::move(faults)) {}

  caf::expected<std::optional<std::string>> get(column col,
                                                std::string_view key) override {
    return inner_.get(col, key);
  }
  caf::error commit(std::span<const write_batch* const> batches) override {
    bool slow = false;
    bool fail = false;
    // Without disk faults no lock is taken: a lock is a scheduling point,
    // and runs without them keep the schedules (and seeds) they had.
    if (faults_) {
      std::lock_guard guard{faults_->mtx};
      slow = sys::now() < faults_->slow_until;
      fail = std::exchange(faults_->fail_next, false);
    }
    // 50 us to 2 ms, like an fsync of an SSD; a slow disk adds 100-500 ms.
    auto took = std::chrono::microseconds{50 + sys::random_u64() % 1950};
    if (slow)
      took += std::chrono::milliseconds{100 + sys::random_u64() % 400};
    sys::sleep_for(took);
    if (fail) {
      // A failed write may or may not have reached the disk.
      if (sys::random_u64() % 2 == 0)
        static_cast<void>(inner_.commit(batches));
      return make_error(errc::storage_failure,
                        "simulated disk: the write failed (EIO)");
    }
    return inner_.commit(batches);
  }
  caf::error scan(column col, std::string_view prefix, std::string_view start,
                  size_t limit, const scan_visitor& visit) override {
    return inner_.scan(col, prefix, start, limit, visit);
  }
  std::optional<uint64_t> free_bytes() override {
    if (faults_) {
      std::lock_guard guard{faults_->mtx};
      if (sys::now() < faults_->full_until)
        return 0;
    }
    return inner_.free_bytes();
  }
  caf::expected<std::vector<partition_file>>
  export_partition(uint32_t p, const std::string& dir) override {
    return inner_.export_partition(p, dir);
  }
  caf::error import_partition(uint32_t p,
                              std::span<const partition_file> files) override {
    return inner_.import_partition(p, files);
  }
  caf::error drop_partition(uint32_t p) override {
    return inner_.drop_partition(p);
  }

private:
  shared_memory_storage inner_;
  // Null without disk faults.
  std::shared_ptr<disk_faults> faults_;
};

struct sim_node {
  std::string id;
  std::shared_ptr<memory_storage> mem = std::make_shared<memory_storage>();
  std::shared_ptr<disk_faults> disk = std::make_shared<disk_faults>();
  // Why its process ended on its own, for the report.
  std::string exit_reason = "declared dead";
  sim::process_id process = 0;
  std::unique_ptr<guarded_store> store;
  std::unique_ptr<host::silo_host> host;
  uint64_t incarnation = 0;
};

using link = std::pair<std::string, std::string>;

class world final : public sim_world {
public:
  world(const sim_options& opts, std::vector<host::grains_fn> grains,
        std::vector<std::function<void(host::silo_file_config&, size_t)>>
            configure,
        sim::kernel& k, sim_report& report, fs::path dir)
      : opts_(opts)
      , grains_(std::move(grains))
      , configure_(std::move(configure))
      , k_(k)
      , report_(report)
      , dir_(std::move(dir)) {}

  // -- sim_world --

  size_t size() const override {
    return nodes_.size();
  }

  bool running(size_t i) const override {
    auto& n = *nodes_.at(i);
    return n.host != nullptr && k_.alive(n.process);
  }

  caf::error on(size_t i, const std::function<void(silo&)>& fn) override {
    auto& n = *nodes_.at(i);
    if (!running(i))
      return make_error(errc::silo_stopped, n.id + " is down");
    auto* s = &n.host->runtime();
    auto done = run_in<bool>(n.process, "client", 100ms, [s, &fn] {
      fn(*s);
      return true;
    });
    if (!done)
      return make_error(errc::silo_stopped,
                        n.id + " crashed while a client used it");
    return caf::none;
  }

  memory_storage& data(size_t i) override {
    return *nodes_.at(i)->mem;
  }

  sim::kernel& kernel() override {
    return k_;
  }

  uint32_t partitions() const override {
    return opts_.partitions;
  }

  // -- the run --

  void setup() {
    cluster::embedded_membership_config mc;
    mc.dir = "simulated-membership";
    mc.in_memory = true;
    auto opened = cluster::embedded_membership::open(mc);
    GRANARY_ASSERT(opened, "an in-memory membership store opens");
    store_ = std::move(*opened);
    net_ = cluster::memory_network::make();
    net_->set_link_policy(
        [this](const std::string& from, const std::string& to) {
          return fate(from, to);
        });
    for (size_t i = 0; i < opts_.silos; ++i) {
      nodes_.push_back(std::make_unique<sim_node>());
      nodes_.back()->id = "silo-" + std::to_string(i);
    }
    for (size_t i = 0; i < nodes_.size(); ++i)
      if (auto err = start(i))
        fail("setup", "starting " + nodes_[i]->id + ": " + describe(err));
  }

  // Injects faults for `fault_time`, then heals everything and restarts
  // the crashed silos.
  void inject_faults() {
    auto end = sys::now() + opts_.fault_time;
    std::vector<std::string> kinds;
    auto& f = opts_.faults;
    if (f.partitions)
      kinds.push_back("partition");
    if (f.clogging)
      kinds.push_back("clog");
    if (f.crashes)
      kinds.push_back("crash");
    if (f.pauses)
      kinds.push_back("pause");
    if (f.leaves)
      kinds.push_back("leave");
    if (f.membership)
      kinds.push_back("membership");
    if (f.disk)
      kinds.push_back("disk");
    {
      std::lock_guard guard{mtx_};
      network_faults_ = true;
      if (f.membership)
        store_faults_.lost_answer_rate = 0.05;
    }
    // Bounded by `end`: every pass sleeps at least 200 ms.
    while (sys::now() < end) {
      auto gap = std::chrono::milliseconds{200 + random() % 2800};
      sys::sleep_until(std::min(end, sys::now() + gap));
      expire_network_faults();
      if (sys::now() >= end || kinds.empty())
        continue;
      auto kind = kinds[random() % kinds.size()];
      if (kind == "partition")
        cut_random();
      else if (kind == "clog")
        clog_random();
      else if (kind == "crash")
        crash_random();
      else if (kind == "pause")
        pause_random();
      else if (kind == "leave")
        leave_random();
      else if (kind == "membership")
        cut_store_random();
      else if (kind == "disk")
        disk_random();
    }
    {
      std::lock_guard guard{mtx_};
      network_faults_ = false;
      cuts_.clear();
      clogs_.clear();
      store_faults_.lost_answer_rate = 0;
      store_faults_.unreachable.clear();
      if (store_faults_.lost_answers > 0)
        report_.faults["membership answer lost"] = store_faults_.lost_answers;
      if (store_faults_.refused_calls > 0)
        report_.faults["membership call refused"] = store_faults_.refused_calls;
    }
    for (auto& n : nodes_) {
      if (!f.disk)
        break;
      std::lock_guard guard{n->disk->mtx};
      n->disk->slow_until = {};
      n->disk->full_until = {};
      n->disk->fail_next = false;
    }
    note("faults stopped; healing");
    // Crashed silos come back now rather than at their planned time.
    for (auto& r : restart_at_)
      r.first = std::min(r.first, sys::now());
  }

  // Checks, every 10 ms of virtual time until `stop_supervising`, that no
  // two live silos serve one partition (a paused silo still counts: it
  // believes it does).
  void monitor_ownership() {
    // Bounded by the stop flag; every pass sleeps 10 ms.
    while (!supervisor_stop_) {
      for (uint32_t p = 0; p < opts_.partitions; ++p) {
        std::string owners;
        int count = 0;
        for (auto& n : nodes_) {
          if (!n->host || !k_.alive(n->process))
            continue;
          auto* r = dynamic_cast<cluster::transport_router*>(
              n->host->config().limits.router);
          if (!r || !r->owns(p))
            continue;
          ++count;
          owners += (owners.empty() ? "" : " and ") + n->id + " (epoch "
                    + std::to_string(r->route_of(p).epoch) + ")";
        }
        if (count > 1)
          fail("at most one silo serves a partition",
               "partition " + std::to_string(p) + " is served by " + owners);
      }
      sys::sleep_for(10ms);
    }
  }

  // Restarts silos that crashed or exited, like a process supervisor,
  // until `stop_supervising`; runs on its own world thread.
  void supervise() {
    // Bounded by the stop flag; every pass sleeps 500 ms.
    while (!supervisor_stop_) {
      heal_due();
      sys::sleep_for(500ms);
    }
  }

  void stop_supervising() {
    supervisor_stop_ = true;
  }

  void stop_all() {
    collect_exited();
    for (auto& n : nodes_) {
      if (!n->host)
        continue;
      auto* h = n->host.get();
      auto deadline = sys::now() + 120s;
      auto stopped = run_in<bool>(n->process, "stop", 100ms, [h, deadline] {
        static_cast<void>(h->stop());
        return sys::now() < deadline;
      });
      if (!stopped) {
        // Declared dead while it stopped (the others saw it go quiet): it
        // exited, and its threads may be parked inside the host.
        abandoned_hosts_.push_back(std::move(n->host));
        abandoned_stores_.push_back(std::move(n->store));
        continue;
      }
      if (!*stopped)
        fail("shutdown", n->id + " did not stop within 120 s");
      n->host.reset();
      n->store.reset();
    }
  }

  uint64_t frames() const {
    return frames_.load();
  }

private:
  void note(std::string event) {
    if (opts_.verbose_trace)
      trace(std::move(event));
  }

  void count(const std::string& kind) {
    ++report_.faults[kind];
  }

  caf::error start(size_t i) {
    auto& n = *nodes_.at(i);
    GRANARY_ASSERT(!n.host, "starting a running silo");
    auto p = k_.new_process(n.id + "#" + std::to_string(n.incarnation + 1));
    if (opts_.faults.clock_skew) {
      auto ahead = static_cast<int64_t>(random() % 4001) - 2000;
      k_.skew(p, std::chrono::milliseconds{ahead});
    }
    auto store = std::make_unique<guarded_store>(*store_, k_, p, n.id, mtx_,
                                                 store_faults_);
    host::silo_file_config cfg;
    cfg.cluster_id = "sim";
    cfg.silo_id = n.id;
    cfg.data_dir = (dir_ / n.id).string();
    cfg.silo_listen = cluster::endpoint{"sim", 0};
    cfg.gateway_listen = cluster::endpoint{"sim", 0};
    cfg.limits.partitions = opts_.partitions;
    cfg.limits.threads = 1;
    cfg.limits.redelivery_timeout = 1s;
    cfg.limits.remote_call_timeout = 2s;
    auto& d = cfg.membership.detector;
    d.probe_interval = 500ms;
    d.missed_probes = 4;
    d.vote_expiry = 10s;
    d.i_am_alive_interval = 2s;
    d.join_timeout = 2s;
    d.refresh_interval = 500ms;
    d.handoff_timeout = 5s;
    cfg.membership.leave_timeout = 30s;
    for (auto& fn : configure_)
      fn(cfg, i);
    host::silo_builder b;
    b.config(cfg)
        .gateway(false)
        .incarnation(++n.incarnation)
        .activity_pool_size(2)
        .join_patience(10s)
        .storage([mem = n.mem, disk = opts_.faults.disk ? n.disk : nullptr](
                     const host::silo_file_config&)
                     -> caf::expected<std::unique_ptr<storage>> {
          return std::make_unique<sim_disk>(mem, disk);
        })
        .membership(
            [s = store.get()](const host::silo_file_config&)
                -> caf::expected<cluster::membership_store*> { return s; })
        .transport([net = net_](const host::silo_file_config& c,
                                uint64_t incarnation) {
          return net->attach(c.silo_id, incarnation);
        })
        // A silo declared dead exits (its process ends, as with _Exit); the
        // world restarts it later.
        .on_declared_dead([this, p, node = &n](const std::string& why) {
          note("process " + std::to_string(p) + " exits: " + why);
          node->exit_reason = "declared dead";
          k_.crash(p);
        })
        // A storage error fail-stops the silo: its process exits, and the
        // supervisor restarts it on its (reopened) disk.
        .on_storage_failure([this, p, node = &n](const caf::error& err) {
          note("process " + std::to_string(p) + " exits: " + describe(err));
          node->exit_reason = "storage failure";
          k_.crash(p);
        });
    for (auto& fn : grains_)
      b.grains(fn);
    using started_type = caf::expected<std::unique_ptr<host::silo_host>>;
    auto got = run_in<started_type>(p, "boot", 1s,
                                    [b = std::move(b)] { return b.start(); });
    if (!got)
      return make_error(errc::silo_stopped, n.id + " crashed while starting");
    if (!*got)
      return std::move(got->error());
    n.host = std::move(**got);
    n.process = p;
    n.store = std::move(store);
    note(n.id + " started");
    return caf::none;
  }

  // One silo's disk turns slow or full for 2 to 10 s, or fails its next
  // write (the silo fail-stops, exits and is restarted).
  void disk_random() {
    auto i = random() % nodes_.size();
    auto& n = *nodes_[i];
    if (!running(i))
      return;
    auto lasts = std::chrono::milliseconds{2'000 + random() % 8'000};
    auto what = random() % 3;
    std::lock_guard guard{n.disk->mtx};
    if (what == 0) {
      n.disk->slow_until = sys::now() + lasts;
      count("disk slow");
      note(n.id + "'s disk is slow");
    } else if (what == 1) {
      n.disk->full_until = sys::now() + lasts;
      count("disk full");
      note(n.id + "'s disk is full");
    } else {
      n.disk->fail_next = true;
      count("disk write error");
      note(n.id + "'s next write fails");
    }
  }

  void crash(size_t i) {
    auto& n = *nodes_.at(i);
    if (!n.host)
      return;
    k_.crash(n.process);
    abandon(i, std::chrono::milliseconds{1000 + random() % 9000});
    count("crash");
    note(n.id + " crashed");
  }

  // Silo `i`'s process has ended (crashed, exited or left). Its threads
  // may be parked for good inside its host: the objects are kept, never
  // freed, as the memory of a killed process is gone. It restarts after
  // `delay`.
  void abandon(size_t i, std::chrono::milliseconds delay) {
    auto& n = *nodes_.at(i);
    abandoned_hosts_.push_back(std::move(n.host));
    abandoned_stores_.push_back(std::move(n.store));
    restart_at_.emplace_back(sys::now() + delay, i);
  }

  // Runs `fn` on a new thread of process `p` and waits for its result,
  // checking every `poll` whether the process is still alive; nullopt
  // when it crashed or ended first.
  template <class T, class F>
  std::optional<T> run_in(sim::process_id p, std::string name,
                          std::chrono::milliseconds poll, F fn) {
    auto result = std::make_shared<sys::one_shot<T>>();
    k_.spawn(p, std::move(name),
             [result, fn = std::move(fn)]() mutable { result->set(fn()); });
    // Bounded: `fn` returns, or its process is gone.
    for (;;) {
      if (auto got = result->wait_for(poll))
        return got;
      if (!k_.alive(p))
        return std::nullopt;
    }
  }

  // Silos that ended on their own (declared dead): abandoned like crashed
  // ones, and restarted a moment later.
  void collect_exited() {
    for (size_t i = 0; i < nodes_.size(); ++i) {
      auto& n = *nodes_[i];
      if (!n.host || k_.alive(n.process))
        continue;
      abandon(i, 1s);
      count("exit (" + n.exit_reason + ")");
    }
  }

  void expire_network_faults() {
    auto now = sys::now();
    std::lock_guard guard{mtx_};
    std::erase_if(cuts_, [&](auto& c) { return c.second <= now; });
    std::erase_if(clogs_, [&](auto& c) { return c.second.first <= now; });
  }

  void heal_due() {
    collect_exited();
    auto now = sys::now();
    // Bounded by the restarts queued.
    for (size_t k = 0; k < restart_at_.size();) {
      auto [when, i] = restart_at_[k];
      if (when > now) {
        ++k;
        continue;
      }
      restart_at_.erase(restart_at_.begin() + static_cast<std::ptrdiff_t>(k));
      if (nodes_[i]->host)
        continue;
      if (auto err = start(i)) {
        note(nodes_[i]->id + " did not restart: " + describe(err));
        restart_at_.emplace_back(now + 2s, i);
      }
    }
  }

  std::pair<size_t, size_t> random_pair() {
    auto a = random() % nodes_.size();
    auto b = (a + 1 + random() % (nodes_.size() - 1)) % nodes_.size();
    return {a, b};
  }

  void cut_random() {
    if (nodes_.size() < 2)
      return;
    auto [a, b] = random_pair();
    auto until = sys::now() + std::chrono::milliseconds{1000 + random() % 9000};
    bool one_way = random() % 2 == 0;
    std::lock_guard guard{mtx_};
    cuts_[{nodes_[a]->id, nodes_[b]->id}] = until;
    if (!one_way)
      cuts_[{nodes_[b]->id, nodes_[a]->id}] = until;
    ++report_.faults[one_way ? "cut one-way" : "cut"];
  }

  void clog_random() {
    if (nodes_.size() < 2)
      return;
    auto [a, b] = random_pair();
    auto until = sys::now() + std::chrono::milliseconds{1000 + random() % 9000};
    std::lock_guard guard{mtx_};
    auto slow = std::chrono::milliseconds{
        100 + static_cast<int64_t>(random() % 1900)};
    clogs_[{nodes_[a]->id, nodes_[b]->id}] = {until, slow};
    ++report_.faults["clog"];
  }

  void crash_random() {
    // One silo down at a time: with three, the others still form the
    // majority that failure detection needs.
    for (auto& n : nodes_)
      if (!n->host)
        return;
    crash(random() % nodes_.size());
  }

  // A graceful leave: the silo hands its partitions to the others and
  // stops; it joins again a while later.
  void leave_random() {
    // One silo away at a time.
    for (auto& n : nodes_)
      if (!n->host)
        return;
    auto i = random() % nodes_.size();
    auto& n = *nodes_[i];
    auto* h = n.host.get();
    // Bounded by the leave's own timeout (30 s) plus the stop.
    auto result = run_in<caf::error>(n.process, "leave", 1s, [h] {
      auto err = h->leave();
      auto stopped = h->stop();
      return err ? err : stopped;
    });
    if (!result)
      return; // Crashed or exited meanwhile: the supervisor restarts it.
    note(n.id + " left" + (*result ? ": " + describe(*result) : ""));
    count("leave");
    // The process ends after its stop; a client still inside the silo's
    // API ends with it (so its objects are abandoned, not freed).
    k_.crash(n.process);
    abandon(i, std::chrono::milliseconds{1000 + random() % 9000});
  }

  // The membership store becomes unreachable from one silo for a while.
  void cut_store_random() {
    auto i = random() % nodes_.size();
    auto until = sys::now() + std::chrono::milliseconds{500 + random() % 4500};
    std::lock_guard guard{mtx_};
    store_faults_.unreachable[nodes_[i]->id] = until;
  }

  void pause_random() {
    auto i = random() % nodes_.size();
    if (!nodes_[i]->host)
      return;
    k_.pause(nodes_[i]->process,
             std::chrono::milliseconds{500 + random() % 7500});
    count("pause");
  }

  // The fate of one frame (called by senders, under the network's lock).
  cluster::link_fate fate(const std::string& from, const std::string& to) {
    std::lock_guard guard{mtx_};
    ++frames_;
    cluster::link_fate f;
    if (cuts_.contains({from, to})) {
      f.drop = true;
      return f;
    }
    if (auto c = clogs_.find({from, to}); c != clogs_.end()) {
      auto bound = static_cast<uint64_t>(c->second.second.count()) + 1;
      f.delay[0] = f.delay[1] = std::chrono::nanoseconds{random() % bound};
    }
    if (!network_faults_)
      return f;
    auto& o = opts_.faults;
    auto roll = [&](double rate) {
      return rate > 0 && static_cast<double>(random() % 1'000'000) < rate * 1e6;
    };
    if (roll(o.drop_rate)) {
      ++report_.faults["drop"];
      f.drop = true;
      return f;
    }
    auto max
        = static_cast<uint64_t>(std::chrono::nanoseconds{o.max_delay}.count())
          + 1;
    if (roll(o.duplicate_rate)) {
      ++report_.faults["duplicate"];
      f.copies = 2;
      f.delay[1] += std::chrono::nanoseconds{random() % max};
    }
    if (roll(o.delay_rate)) {
      ++report_.faults["delay"];
      f.delay[0] += std::chrono::nanoseconds{random() % max};
    }
    return f;
  }

  uint64_t random() {
    return sys::random_u64();
  }

  const sim_options& opts_;
  std::vector<host::grains_fn> grains_;
  std::vector<std::function<void(host::silo_file_config&, size_t)>> configure_;
  sim::kernel& k_;
  sim_report& report_;
  fs::path dir_;
  std::unique_ptr<cluster::membership_store> store_;
  std::shared_ptr<cluster::memory_network> net_;
  std::vector<std::unique_ptr<sim_node>> nodes_;
  std::vector<std::pair<sys::time_point, size_t>> restart_at_;
  // Hosts of crashed or ended processes, whose parked threads may still
  // point into them: kept (reachable, never stopped) with the world.
  std::vector<std::unique_ptr<host::silo_host>> abandoned_hosts_;
  std::vector<std::unique_ptr<guarded_store>> abandoned_stores_;

  sys::mutex mtx_;
  bool network_faults_ = false;
  store_faults store_faults_;
  bool supervisor_stop_ = false;
  std::map<link, sys::time_point> cuts_;
  std::map<link, std::pair<sys::time_point, std::chrono::nanoseconds>> clogs_;
  std::atomic<uint64_t> frames_{0};
};

// Worlds whose crashed silos' threads are parked inside them: kept
// reachable, never freed.
std::vector<world*>* abandoned_worlds = new std::vector<world*>;

} // namespace

// -- simulation ---------------------------------------------------------------

simulation::simulation(sim_options opts)
    : opts_(std::move(opts)) {}

simulation& simulation::grains(host::grains_fn fn) {
  grains_.push_back(std::move(fn));
  return *this;
}

simulation&
simulation::configure(std::function<void(host::silo_file_config&, size_t)> fn) {
  configure_.push_back(std::move(fn));
  return *this;
}

simulation& simulation::workload(sim_workload fn) {
  workload_ = std::move(fn);
  return *this;
}

simulation& simulation::check(std::string invariant, sim_check fn) {
  checks_.emplace_back(std::move(invariant), std::move(fn));
  return *this;
}

sim_report simulation::run(uint64_t seed) const {
  GRANARY_ASSERT(opts_.silos >= 1 && opts_.silos <= 16,
                 "a simulation has 1 to 16 silos");
  sim_report report;
  report.seed = seed;
  static std::atomic<uint64_t> counter{0};
  auto dir = fs::temp_directory_path()
             / ("granary-sim-" + std::to_string(::getpid()) + "-"
                + std::to_string(seed) + "-" + std::to_string(counter++));
  fs::remove_all(dir);
  fs::create_directories(dir);
  sim::kernel_config kc;
  kc.seed = seed;
  sim::kernel k{kc};
  // Silos log a lot under faults; a verbose run shows it on stderr.
  if (!opts_.verbose_trace)
    set_log_sink([](log_level, std::string_view) {});
  auto wall = std::chrono::steady_clock::now();
  // Abandoned when a crashed silo's threads still use it.
  auto* w = new world(opts_, grains_, configure_, k, report, dir);
  bool finished = false;
  report.run = k.run([&] {
    w->setup();
    auto done = std::make_shared<sys::one_shot<bool>>();
    auto workload = workload_;
    k.spawn(sim::world, "workload", [w, done, workload] {
      if (workload)
        workload(*w);
      done->set(true);
    });
    sys::thread supervisor{"supervisor", [w] { w->supervise(); }};
    sys::thread monitor{"ownership-monitor", [w] { w->monitor_ownership(); }};
    w->inject_faults();
    if (!done->wait_for(opts_.settle_time))
      w->fail("liveness", "the workload did not finish within "
                              + std::to_string(opts_.settle_time.count())
                              + " ms after the faults stopped");
    for (auto& [name, fn] : checks_)
      if (auto violation = fn(*w))
        w->fail(name, *violation);
    w->stop_supervising();
    supervisor.join();
    monitor.join();
    w->stop_all();
    finished = true;
  });
  report.wall = std::chrono::steady_clock::now() - wall;
  report.frames = w->frames();
  if (!opts_.verbose_trace)
    set_log_sink({});
  if (finished && report.run.abandoned_threads == 0)
    delete w;
  else
    abandoned_worlds->push_back(w);
  std::error_code ec;
  fs::remove_all(dir, ec);
  return report;
}

} // namespace granary::testing

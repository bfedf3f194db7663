#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "actors/workflow.hpp"
#include "host/silo_host.hpp"
#include "runtime/memory_storage.hpp"
#include "runtime/silo.hpp"
#include "runtime/sys.hpp"
#include "sim/kernel.hpp"

namespace granary::testing {

/// The faults a simulation injects while its workload runs.
struct sim_faults {
  /// Chance that a frame between silos is lost, arrives twice, or is
  /// delayed by up to `max_delay` (delayed frames overtake others).
  double drop_rate = 0;
  double duplicate_rate = 0;
  double delay_rate = 0;
  std::chrono::milliseconds max_delay{50};
  /// Network cuts between two silos, both ways or one way, healed later.
  bool partitions = false;
  /// One link at a time becomes slow (every frame delayed by up to 2 s).
  bool clogging = false;
  /// Silos crash (their unsaved memory is lost) and restart on their data
  /// a while later.
  bool crashes = false;
  /// Silos stop for up to 8 s (like SIGSTOP) and go on.
  bool pauses = false;
  /// Silos' wall clocks run up to 2 s ahead or behind.
  bool clock_skew = false;
  /// Silos leave gracefully (their partitions move to the others) and
  /// join again a while later.
  bool leaves = false;
  /// The membership store loses the answers of some writes (they may or
  /// may not have applied), and cannot be reached by one silo for a while.
  bool membership = false;
  /// One silo's disk turns slow (commits take 100-500 ms more) or full
  /// (no free space: new work is refused) for a while, or fails a write
  /// (the silo fail-stops, exits and restarts on its disk).
  bool disk = false;

  /// Nothing.
  static sim_faults none();
  /// Every kind, at rates that still let work finish.
  static sim_faults all();
  /// Parses a comma-separated list of kinds: drop, duplicate, delay,
  /// partition, clog, crash, pause, skew, leave, membership, disk, or
  /// "all" or "none"
  /// (`invalid_argument` naming an unknown kind).
  static caf::expected<sim_faults> parse(std::string_view list);
  /// The kinds, as `parse` reads them.
  std::string to_string() const;
};

/// Settings of a simulated cluster.
struct sim_options {
  /// Silos at the start (1 to 16).
  size_t silos = 3;
  /// Partitions of the key space.
  uint32_t partitions = 8;
  /// Virtual time during which faults are injected (the workload starts
  /// with it).
  std::chrono::milliseconds fault_time{60'000};
  /// Once the faults stop, how long the workload may take to finish (the
  /// liveness bound).
  std::chrono::milliseconds settle_time{120'000};
  sim_faults faults;
  /// Adds to the run's trace every fault and workload event (always
  /// hashed; shown in a failure's tail).
  bool verbose_trace = false;
};

/// What one seed's run did.
struct sim_report {
  uint64_t seed = 0;
  sim::run_result run;
  /// Faults injected, by kind.
  std::map<std::string, uint64_t> faults;
  /// Frames sent between silos.
  uint64_t frames = 0;
  /// Wall time of the run.
  std::chrono::nanoseconds wall{0};

  /// One line: seed, outcome, simulated and wall time, faults, frames.
  std::string summary() const;

  /// For a failed run: the last events of the trace and what every thread
  /// waited for at the end, one per line (empty for a passed run).
  std::string details() const;
};

/// The running cluster, as the workload and the checks see it. Its calls
/// are made from the simulation's world thread (the workload's).
class sim_world {
public:
  virtual ~sim_world();

  /// Number of silos.
  virtual size_t size() const = 0;

  /// True while silo `i` runs.
  virtual bool running(size_t i) const = 0;

  /// Runs `fn` with silo `i`'s runtime on a new thread of silo `i`'s
  /// process, like a client connected to that silo, and waits for it.
  /// `silo_stopped` when the silo is down, or crashes before `fn` returns
  /// (then whatever `fn` did has an unknown outcome).
  virtual caf::error on(size_t i, const std::function<void(silo&)>& fn) = 0;

  /// The data of silo `i` (kept across its crashes).
  virtual memory_storage& data(size_t i) = 0;

  /// The simulation's kernel (time, randomness, trace).
  virtual sim::kernel& kernel() = 0;

  /// Partitions of the key space.
  virtual uint32_t partitions() const = 0;

  /// Every stored copy of the workflow state of grain `id`, one per silo
  /// that holds one (an old owner may keep an older copy), from the silos'
  /// storage: crashed silos' too.
  std::vector<wire::WorkflowState> stored_runs(const grain_id& id);

  /// A number from the run's seed.
  uint64_t random();

  /// Fails the run: `invariant` names what broke. Never returns.
  [[noreturn]] void fail(std::string invariant, std::string detail);

  /// Adds `event` to the trace.
  void trace(std::string event);

  /// Starts run `id` of workflow `W` with `input` through random silos
  /// until one takes it (a start with the same id starts nothing new);
  /// fails the run ("liveness") after 200 tries.
  template <class W>
  void start(const std::string& id, const typename W::input_type& input) {
    // Bounded: 200 attempts, at most 1 s apart.
    for (int attempt = 0; attempt < 200; ++attempt) {
      bool taken = false;
      static_cast<void>(on(random() % size(), [&](silo& s) {
        taken = static_cast<bool>(
            silo_workflow_client{s, std::chrono::seconds{5}}.template start<W>(
                id, input));
      }));
      if (taken) {
        trace("started " + std::string{W::type_name} + "/" + id);
        return;
      }
      pause();
    }
    fail("liveness", "workflow " + std::string{W::type_name} + "/" + id
                         + " could not be started");
  }

  /// Sends signal `name` with `payload` to run `id` of `W` through random
  /// silos until one takes it (with a fixed signal id: delivered once);
  /// fails the run ("liveness") after 200 tries.
  template <class W>
  void signal(const std::string& id, const std::string& name,
              const google::protobuf::Message& payload) {
    // Bounded: 200 attempts, at most 1 s apart.
    for (int attempt = 0; attempt < 200; ++attempt) {
      caf::error err = make_error(errc::silo_stopped, "not sent");
      static_cast<void>(on(random() % size(), [&](silo& s) {
        err = silo_workflow_client{s, std::chrono::seconds{5}}
                  .template signal<W>(id, name, payload, name + "@" + id);
      }));
      if (!err) {
        trace("signalled " + std::string{W::type_name} + "/" + id);
        return;
      }
      if (!cluster_fault(err))
        fail("workflows complete", "signal '" + name + "' to "
                                       + std::string{W::type_name} + "/" + id
                                       + ": " + describe(err));
      pause();
    }
    fail("liveness", "signal '" + name + "' never reached "
                         + std::string{W::type_name} + "/" + id);
  }

  /// Waits for run `id` of `W` through random silos until it finished:
  /// its output, or the error it failed with (a failed run is an answer).
  /// Fails the simulation ("workflows complete") when the run is
  /// suspended, and ("liveness") when it did not finish `within` (virtual
  /// time).
  template <class W>
  caf::expected<typename W::output_type> finish(const std::string& id,
                                                std::chrono::milliseconds within
                                                = std::chrono::minutes{30}) {
    auto name = std::string{W::type_name} + "/" + id;
    std::string last = "no silo answered";
    auto deadline = sys::now() + within;
    // Bounded by the deadline: each round waits at least the pause.
    while (sys::now() < deadline) {
      std::optional<caf::expected<typename W::output_type>> got;
      std::optional<wire::WorkflowInfo> info;
      static_cast<void>(on(random() % size(), [&](silo& s) {
        silo_workflow_client client{s, std::chrono::seconds{5}};
        got = client.template result<W>(id, std::chrono::seconds{20});
        if (got && !*got)
          if (auto d = client.template describe<W>(id))
            info = *d;
      }));
      if (got && *got)
        return std::move(**got);
      if (info && info->status() == wire::WorkflowState::FAILED)
        return std::move(got->error());
      if (info && info->status() == wire::WorkflowState::SUSPENDED)
        fail("workflows complete", name + " is suspended: " + info->error());
      if (got) {
        last = describe(got->error());
        trace("waiting for " + name + ": " + last);
      }
      pause();
    }
    fail("liveness", name + " did not finish: " + last);
  }

  /// `finish`, for a run that must complete: fails the simulation
  /// ("workflows complete") when it failed.
  template <class W>
  typename W::output_type result(const std::string& id,
                                 std::chrono::milliseconds within
                                 = std::chrono::minutes{30}) {
    auto out = finish<W>(id, within);
    if (!out)
      fail("workflows complete", std::string{W::type_name} + "/" + id
                                     + " failed: " + describe(out.error()));
    return std::move(*out);
  }

  /// Sleeps 100 ms to 1 s, drawn from the seed (a client's backoff).
  void pause();

private:
  // True for the errors a client meets while the cluster is faulty
  // (timeouts, stopped silos, moving partitions).
  static bool cluster_fault(const caf::error& err);
};

/// The journal-replay checker: replays every stored copy of the runs
/// `ids` of workflow `W` with `check_replay` (journal identities and
/// requests, see `replay_check_options`). Empty when each issues the same
/// commands again; else the first difference.
template <class W>
std::optional<std::string> check_journals(sim_world& w,
                                          const std::vector<std::string>& ids) {
  for (auto& id : ids)
    for (auto& st : w.stored_runs(grain_id{std::string{W::type_name}, id}))
      if (auto err = check_replay<W>(st, id))
        return describe(err);
  return std::nullopt;
}

/// The workload: drives the cluster during the faults and returns once its
/// work is done (bounded by `sim_options::settle_time` after the faults).
using sim_workload = std::function<void(sim_world&)>;

/// A check after the workload: empty when it holds, else what is wrong.
using sim_check = std::function<std::optional<std::string>(sim_world&)>;

/// A cluster of real silos with the user's grains under the deterministic
/// kernel: simulated network (with drops, duplicates, delays, cuts and slow
/// links), in-memory storage that survives crashes, a shared membership
/// store, and faults drawn from the seed. Every run replays exactly from
/// its seed.
///
///     simulation sim{opts};
///     sim.grains([](host::registration& r) { return r.grain<account>(); })
///        .workload(transfers)
///        .check("money is conserved", conserved);
///     auto report = sim.run(seed);
class simulation {
public:
  explicit simulation(sim_options opts = {});

  /// Registrations every silo runs.
  simulation& grains(host::grains_fn fn);

  /// Adjusts each silo's config after the simulation's defaults.
  simulation&
  configure(std::function<void(host::silo_file_config&, size_t)> fn);

  /// The workload (one; the last call wins).
  simulation& workload(sim_workload fn);

  /// A check run after the workload finished and the cluster settled.
  simulation& check(std::string invariant, sim_check fn);

  /// Runs one seed.
  sim_report run(uint64_t seed) const;

private:
  sim_options opts_;
  std::vector<host::grains_fn> grains_;
  std::vector<std::function<void(host::silo_file_config&, size_t)>> configure_;
  sim_workload workload_;
  std::vector<std::pair<std::string, sim_check>> checks_;
};

} // namespace granary::testing

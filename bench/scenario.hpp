#pragma once

// What a scenario of `granary bench` is made of, for the files that
// define one (scenario_*.cpp): the session it runs in, the entry it adds
// to the registry in scenarios.cpp, and the defaults and measurements
// that more than one scenario uses.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "bench/measure.hpp"
#include "bench/scenarios.hpp"
#include "runtime/grain_id.hpp"
#include "runtime/silo.hpp"

namespace granary::bench {

// -- defaults -----------------------------------------------------------------

inline constexpr double default_duration_s = 5;
inline constexpr size_t default_payload = 32;
inline constexpr size_t transient_concurrency = 64;
inline constexpr size_t durable_concurrency = 256;
inline constexpr size_t small_grains = 1'000;
inline constexpr size_t large_grains = 1'000'000;

// -- session and registry -----------------------------------------------------

/// What later scenarios compare themselves with: the durable-ping run of
/// this process (or a short one of their own).
struct durable_run {
  double msgs_per_s = 0;
  double ops_per_msg = 0;
  double bytes_per_msg = 0;
  double cpu_cores = 0;
  double other_cpu_cores = 0;
  size_t concurrency = 0;
  double duration_s = 0;
};

/// The settings of a closed-loop scenario.
struct load_settings {
  double duration_s = 0;
  size_t concurrency = 0;
  size_t grains = 0;
  size_t payload = 0;
};

/// The state of one `runner`: the options, and what a later scenario
/// needs from an earlier one (fanout compares itself with the
/// transient-ping throughput of the same run, the workflow scenarios and
/// cross-silo-durable with the durable-ping one).
struct session {
  options opts;
  /// Transient-ping throughput measured earlier in this run, if any.
  std::optional<double> transient_ops_per_s;
  /// Durable-ping figures measured earlier in this run, if any.
  std::optional<durable_run> durable;

  /// Passes `line` to the progress callback, if there is one.
  void progress(const std::string& line) const {
    if (opts.progress)
      opts.progress(line);
  }

  /// Returns --duration or its default.
  double duration_s() const {
    return opts.duration_s.value_or(default_duration_s);
  }

  /// Returns --payload or its default.
  size_t payload() const {
    return opts.payload.value_or(default_payload);
  }

  /// Returns the options, with the scenario's defaults where unset.
  load_settings settings(size_t default_concurrency,
                         size_t default_grains) const {
    return {duration_s(), opts.concurrency.value_or(default_concurrency),
            opts.grains.value_or(default_grains), payload()};
  }

  /// Measures durable-ping once per process (a short run unless
  /// durable-ping ran already), so that `durable` is set afterwards.
  /// Defined in scenario_durable_ping.cpp.
  caf::error ensure_durable_baseline();
};

/// One scenario: its name, its summary for `granary bench --help`, and
/// the function that runs it.
struct scenario_def {
  std::string_view name;
  std::string_view summary;
  caf::expected<result> (*run)(session&);
};

/// The scenarios, one per file; scenarios.cpp lists them in order.
extern const scenario_def transient_ping_scenario;
extern const scenario_def durable_ping_scenario;
extern const scenario_def cross_silo_durable_scenario;
extern const scenario_def workflow_10_steps_scenario;
extern const scenario_def fanout_100_scenario;
extern const scenario_def fanout_scenario;
extern const scenario_def memory_scenario;
extern const scenario_def retry_storm_scenario;
extern const scenario_def sleeping_workflows_scenario;

// -- measurements more than one scenario uses ---------------------------------

/// Transient calls to `grains` echo grains from `concurrency` slots on a
/// silo with memory storage (transient-ping, and fanout's baseline).
caf::expected<load_figures> measure_transient(double duration_s,
                                              size_t concurrency, size_t grains,
                                              size_t payload,
                                              const std::string& label,
                                              const progress_fn& progress);

/// The outcome of `run_durable_sends`.
struct durable_sends {
  load_figures figures;
  /// The first failure of the run, if any.
  caf::error err;
};

/// Durable sends of Pings with `payload` bytes through `s` to `ids`, from
/// `concurrency` slots in a closed loop, until the window of `duration_s`
/// closes (durable-ping and cross-silo-durable). The caller stops the
/// silo, then looks at the error.
durable_sends run_durable_sends(silo& s, std::vector<grain_id> ids,
                                size_t concurrency, size_t payload,
                                double duration_s, const std::string& label,
                                const progress_fn& progress,
                                const timed_hooks& hooks);

} // namespace granary::bench

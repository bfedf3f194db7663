#pragma once

// The scenarios behind `granary bench`. Each one measures Granary and, in
// the same process, a raw baseline of the same machine (plain CAF actors,
// raw RocksDB, ...), and reports both with their ratio.

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace granary::bench {

/// Settings of a benchmark run. Unset values take per-scenario defaults.
struct options {
  /// Seconds per timed scenario, warm-up (the first 10%) included.
  std::optional<double> duration_s;
  /// Requests in flight (transient-ping: 64, durable-ping: 256,
  /// memory: 256); workflows in flight for workflow-10-steps (64);
  /// workflow starts in flight for sleeping-workflows (256).
  std::optional<size_t> concurrency;
  /// Distinct grain keys (transient-ping, durable-ping and the counters
  /// of workflow-10-steps: 1,000; fanout and memory: 1,000,000); the
  /// workflows of sleeping-workflows (100,000).
  std::optional<size_t> grains;
  /// Bytes of payload in each ping (default 32).
  std::optional<size_t> payload;
  /// Parent directory of the fresh temporary RocksDB directories; empty
  /// selects /tmp. The temporary directories are removed afterwards.
  std::string data_dir;
  /// Receives one progress line per second; may be empty.
  std::function<void(const std::string&)> progress;
};

/// Largest accepted values of the options.
inline constexpr double max_duration_s = 3'600;
inline constexpr size_t max_concurrency = 65'536;
inline constexpr size_t max_grains = 10'000'000;
inline constexpr size_t max_payload = 1 << 20;

/// Outcome of one scenario.
struct result {
  std::string scenario;
  /// Granary's throughput in the scenario's unit (calls, messages,
  /// workflows, deliveries or activations per second).
  double ops_per_s = 0;
  /// Latency percentiles of the measured operations, in milliseconds.
  double p50_ms = 0;
  double p99_ms = 0;
  double p999_ms = 0;
  /// What the baseline is, e.g. "caf-request-response".
  std::string baseline;
  /// The baseline's throughput in the same unit as `ops_per_s`.
  double baseline_ops_per_s = 0;
  /// `ops_per_s / baseline_ops_per_s`.
  double ratio = 0;
  /// The target, in words, and whether this run met it.
  std::string target;
  bool met = false;
  /// Further figures, in insertion order.
  std::vector<std::pair<std::string, double>> extras;
};

/// A runnable scenario: its name and, in a few words, what it measures
/// against which baseline (the help text of `granary bench`).
struct scenario_info {
  std::string name;
  std::string summary;
};

/// The runnable scenarios, in the order `all` runs them.
const std::vector<scenario_info>& scenarios();

/// Names of the runnable scenarios, in the order `all` runs them.
const std::vector<std::string>& scenario_names();

/// Returns true if `name` is a scenario name or "all".
bool is_scenario(std::string_view name);

/// Checks every option against its bounds; the error names the option.
caf::error validate(const options& opts);

/// The state a runner keeps between scenarios (bench/scenario.hpp).
struct session;

/// Runs scenarios one after another in one process, keeping what a later
/// scenario needs from an earlier one (fanout compares itself with the
/// transient-ping throughput of the same run, workflow-10-steps and
/// sleeping-workflows with the durable-ping one).
class runner {
public:
  /// Creates a runner; call `validate(opts)` first.
  explicit runner(options opts);

  ~runner();

  /// Runs scenario `name` (not "all").
  caf::expected<result> run(std::string_view name);

private:
  std::unique_ptr<session> session_;
};

/// Renders `res` as one JSON object on one line (no trailing newline).
std::string to_json(const result& res);

/// Renders `results` as a readable table with a details section.
std::string to_table(const std::vector<result>& results);

} // namespace granary::bench

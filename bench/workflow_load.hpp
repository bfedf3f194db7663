#pragma once

// The closed loop of workflow runs that workflow-10-steps and fanout-100
// measure: each slot starts its next run when the previous one reports
// its end.

#include <cstddef>
#include <string>
#include <string_view>

#include <caf/expected.hpp>

#include "bench/measure.hpp"

namespace granary::bench {

/// Figures of a workflow silo run; per-workflow figures are window deltas
/// divided by the workflows completed in the window.
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

/// Runs `concurrency` slots of `type` grains (a bench workflow or chain),
/// each started with a `WorkflowInput` under a fresh key, on a silo with
/// RocksDB until the window ends.
caf::expected<workflow_figures>
measure_workflows(const std::string& data_dir, double duration_s,
                  size_t concurrency, size_t grains, size_t payload,
                  std::string_view type, const std::string& label,
                  const progress_fn& progress);

} // namespace granary::bench

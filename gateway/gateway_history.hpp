#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <caf/expected.hpp>

#include "runtime/grain_id.hpp"

namespace granary::wire {
class WorkflowState;
} // namespace granary::wire

namespace granary::cluster {

/// One journaled command, as `granary workflow history` shows it.
struct history_entry {
  uint64_t seq = 0;
  std::string kind;
  std::string target;
  bool completed = false;
  std::string error;
};

/// A workflow's journal, as `granary workflow history` and the gateway's
/// `GET /v1/workflows/{type}/{id}/history` show it.
struct workflow_history {
  /// "type/id".
  std::string workflow;
  std::string status;
  uint32_t run = 0;
  std::string error;
  std::vector<history_entry> journal;
};

/// Extracts the journal of workflow `id` from its stored state.
workflow_history make_history(const grain_id& id,
                              const wire::WorkflowState& st);

/// One-line JSON: {"workflow","status","run","error","journal":[...]}.
std::string to_json(const workflow_history& h);

/// The human-readable table, one line per journal entry.
std::string to_text(const workflow_history& h);

/// Parses what `to_json` wrote.
caf::expected<workflow_history> history_from_json(std::string_view json);

} // namespace granary::cluster

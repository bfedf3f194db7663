#include "gateway/gateway_history.hpp"

#include <cstdio>

#include "gateway/gateway_json.hpp"
#include "runtime/error.hpp"
#include "workflow.pb.h"

namespace granary::cluster {

workflow_history make_history(const grain_id& id,
                              const wire::WorkflowState& st) {
  workflow_history h;
  h.workflow = to_string(id);
  h.status = wire::WorkflowState::Status_Name(st.status());
  h.run = st.run();
  h.error = st.error();
  h.journal.reserve(static_cast<size_t>(st.journal_size()));
  for (auto& e : st.journal())
    h.journal.push_back(history_entry{e.seq(),
                                      wire::JournalEntry::Kind_Name(e.kind()),
                                      e.target(), e.completed(), e.error()});
  return h;
}

std::string to_json(const workflow_history& h) {
  detail::json journal = detail::json::array();
  for (auto& e : h.journal) {
    detail::json entry;
    entry["seq"] = e.seq;
    entry["kind"] = e.kind;
    entry["target"] = e.target;
    entry["completed"] = e.completed;
    entry["error"] = e.error;
    journal.push_back(std::move(entry));
  }
  detail::json out;
  out["workflow"] = h.workflow;
  out["status"] = h.status;
  out["run"] = h.run;
  out["error"] = h.error;
  out["journal"] = std::move(journal);
  return detail::dump(out);
}

std::string to_text(const workflow_history& h) {
  std::string out;
  char line[512];
  std::snprintf(line, sizeof(line), "%s  %s  run %u  %zu journal entries\n",
                h.workflow.c_str(), h.status.c_str(), h.run, h.journal.size());
  out += line;
  if (!h.error.empty())
    out += "  error: " + h.error + "\n";
  for (auto& e : h.journal) {
    std::snprintf(line, sizeof(line), "  %4llu  %-11s %-30s %s",
                  static_cast<unsigned long long>(e.seq), e.kind.c_str(),
                  e.target.c_str(), e.completed ? "done" : "pending");
    out += line;
    if (!e.error.empty())
      out += "  " + e.error;
    out += "\n";
  }
  return out;
}

caf::expected<workflow_history> history_from_json(std::string_view json) {
  auto bad = [](const std::string& why) {
    return make_error(errc::malformed_message,
                      "workflow history is not valid: " + why);
  };
  auto obj = detail::json::parse(json, nullptr, false);
  if (obj.is_discarded())
    return bad("not JSON");
  if (!obj.is_object())
    return bad("not a JSON object");
  auto text = [](const detail::json& v, const char* key) {
    auto i = v.find(key);
    return i != v.end() && i->is_string() ? i->get<std::string>()
                                          : std::string{};
  };
  auto number = [](const detail::json& v, const char* key) {
    auto i = v.find(key);
    return i != v.end() && i->is_number_unsigned() ? i->get<uint64_t>()
                                                   : uint64_t{0};
  };
  workflow_history h;
  h.workflow = text(obj, "workflow");
  h.status = text(obj, "status");
  h.error = text(obj, "error");
  h.run = static_cast<uint32_t>(number(obj, "run"));
  auto j = obj.find("journal");
  if (h.workflow.empty() || j == obj.end() || !j->is_array())
    return bad("missing 'workflow' or 'journal'");
  for (auto& e : *j) {
    if (!e.is_object())
      return bad("a journal entry is not an object");
    history_entry out;
    out.seq = number(e, "seq");
    out.kind = text(e, "kind");
    out.target = text(e, "target");
    out.error = text(e, "error");
    auto done = e.find("completed");
    out.completed = done != e.end() && done->is_boolean() && done->get<bool>();
    h.journal.push_back(std::move(out));
  }
  return h;
}

} // namespace granary::cluster

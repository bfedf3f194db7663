#include "gateway/gateway_history.hpp"

#include <cstdio>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include "runtime/error.hpp"
#include "runtime/json.hpp"
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
  std::string out = "{\"workflow\":" + json_quote(h.workflow) + ",\"status\":"
                    + json_quote(h.status) + ",\"run\":" + std::to_string(h.run)
                    + ",\"error\":" + json_quote(h.error) + ",\"journal\":[";
  for (size_t i = 0; i < h.journal.size(); ++i) {
    auto& e = h.journal[i];
    out += (i == 0 ? "{\"seq\":" : ",{\"seq\":") + std::to_string(e.seq)
           + ",\"kind\":" + json_quote(e.kind)
           + ",\"target\":" + json_quote(e.target)
           + ",\"completed\":" + (e.completed ? "true" : "false")
           + ",\"error\":" + json_quote(e.error) + "}";
  }
  return out + "]}";
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
  google::protobuf::Struct obj;
  auto st = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece{json.data(), json.size()}, &obj);
  auto bad = [](const std::string& why) {
    return make_error(errc::malformed_message,
                      "workflow history is not valid: " + why);
  };
  if (!st.ok())
    return bad(st.ToString());
  auto& f = obj.fields();
  auto text = [&](const google::protobuf::Struct& s, const char* key) {
    auto i = s.fields().find(key);
    return i == s.fields().end() ? std::string{} : i->second.string_value();
  };
  workflow_history h;
  h.workflow = text(obj, "workflow");
  h.status = text(obj, "status");
  h.error = text(obj, "error");
  if (auto i = f.find("run"); i != f.end())
    h.run = static_cast<uint32_t>(i->second.number_value());
  auto j = f.find("journal");
  if (h.workflow.empty() || j == f.end() || !j->second.has_list_value())
    return bad("missing 'workflow' or 'journal'");
  for (auto& v : j->second.list_value().values()) {
    if (!v.has_struct_value())
      return bad("a journal entry is not an object");
    auto& e = v.struct_value();
    history_entry out;
    if (auto i = e.fields().find("seq"); i != e.fields().end())
      out.seq = static_cast<uint64_t>(i->second.number_value());
    out.kind = text(e, "kind");
    out.target = text(e, "target");
    out.error = text(e, "error");
    if (auto i = e.fields().find("completed"); i != e.fields().end())
      out.completed = i->second.bool_value();
    h.journal.push_back(std::move(out));
  }
  return h;
}

} // namespace granary::cluster

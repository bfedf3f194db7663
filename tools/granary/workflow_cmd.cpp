// `granary workflow ...`: starts, describes, awaits, signals, queries,
// cancels, updates, lists and shows workflows through a silo's gateway;
// `history --data DIR` reads a stopped silo's journal instead.

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include "gateway/gateway_history.hpp"
#include "persistence/rocksdb_storage.hpp"
#include "runtime/admin.hpp"
#include "runtime/error.hpp"
#include "tools/granary/cli.hpp"
#include "workflow.pb.h"

namespace granary::cli {

namespace {

struct workflow_args {
  gateway_args gw;
  std::string type;
  std::string id;
  std::string name;
  std::string input_type;
  std::string input;
  bool reject_if_exists = false;
  uint64_t wait_ms = 0;
  std::string payload_type;
  std::string payload;
  std::string msg_id;
  std::string reason;
  std::string status;
  size_t limit = 100;
  std::string cursor;
  bool json = false;
  std::string data_dir;
  std::string export_file;
};

int failed(const std::string& what) {
  return fail("workflow", what);
}

// `workflow history --data DIR TYPE ID`: reads, never writes, the
// directory.
int history_offline(const workflow_args& a) {
  auto store = rocksdb_storage::open(
      rocksdb_config{.data_dir = a.data_dir, .read_only = true});
  if (!store) {
    if (code_of(store.error()) == errc::data_dir_locked)
      return failed(describe(store.error())
                    + "; stop the silo that uses this directory first, or "
                      "ask it with --gateway HOST:PORT");
    return failed(describe(store.error()));
  }
  grain_id id{a.type, a.id};
  auto raw = read_grain_state(**store, id);
  if (!raw)
    return failed(describe(raw.error()));
  if (!*raw)
    return failed("no workflow " + to_string(id) + " in " + a.data_dir);
  wire::WorkflowState st;
  if (!st.ParseFromString(**raw))
    return failed("the state of " + to_string(id)
                  + " is not a workflow journal");
  if (!a.export_file.empty()) {
    std::ofstream out{a.export_file, std::ios::binary | std::ios::trunc};
    out << **raw;
    if (!out)
      return failed("cannot write " + a.export_file);
  }
  auto history = cluster::make_history(id, st);
  if (a.json)
    std::printf("%s\n", cluster::to_json(history).c_str());
  else
    std::fputs(cluster::to_text(history).c_str(), stdout);
  return exit_ok;
}

int history_online(const workflow_args& a) {
  auto res = a.gw.client().workflow_history(a.type, a.id);
  if (!res || a.json)
    return answer("workflow", res);
  auto h = cluster::history_from_json(*res);
  if (!h)
    return failed(describe(h.error()));
  std::fputs(cluster::to_text(*h).c_str(), stdout);
  return exit_ok;
}

// `result` exits 1 unless the run completed.
int result(const workflow_args& a) {
  std::chrono::milliseconds wait{a.wait_ms};
  bool finished = false;
  auto res = a.gw.client(wait).workflow_result(a.type, a.id, wait, &finished);
  if (!res)
    return failed(describe(res.error()));
  print_body(*res);
  auto run = a.type + "/" + a.id;
  if (!finished)
    return failed(run + " has not finished after " + std::to_string(a.wait_ms)
                  + " ms");
  if (res->find("\"status\":\"COMPLETED\"") == std::string::npos)
    return failed(run + " did not complete");
  return exit_ok;
}

// `list` exits 1 when a silo did not answer: the list is partial.
int list(const workflow_args& a) {
  auto res = a.gw.client().list_workflows(a.type, a.status, a.limit, a.cursor);
  if (!res)
    return failed(describe(res.error()));
  print_body(*res);
  google::protobuf::Struct obj;
  size_t missing = 0;
  if (google::protobuf::util::JsonStringToMessage(*res, &obj).ok())
    if (auto i = obj.fields().find("unreachable"); i != obj.fields().end())
      for (auto& v : i->second.list_value().values()) {
        auto& f = v.struct_value().fields();
        std::string parts;
        if (auto p = f.find("partitions"); p != f.end())
          for (auto& n : p->second.list_value().values())
            parts += (parts.empty() ? "" : ",")
                     + std::to_string(static_cast<long long>(n.number_value()));
        auto gw = f.count("gateway") ? f.at("gateway").string_value()
                                     : std::string{"?"};
        failed("the gateway at " + gw + " did not answer; the workflows of "
               + "partitions " + parts + " are missing");
        ++missing;
      }
  return missing == 0 ? exit_ok : exit_failed;
}

// Adds subcommand `name`, which takes the first `nargs` of TYPE ID NAME.
CLI::App* add_leaf(CLI::App& group, workflow_args& a, const char* name,
                   const char* help, int nargs, bool needs_gateway = true) {
  auto* sub = group.add_subcommand(name, help);
  add_gateway_options(*sub, a.gw, needs_gateway);
  add_id_part(*sub, "TYPE", a.type, "workflow type");
  if (nargs > 1)
    add_id_part(*sub, "ID", a.id, "workflow id");
  if (nargs > 2)
    sub->add_option("NAME", a.name, "The signal, query or update")
        ->type_name("")
        ->required();
  return sub;
}

// --payload-type and --payload (which go together) and --id.
void add_message(CLI::App* sub, workflow_args& a, const char* id_help) {
  auto* type = sub->add_option("--payload-type", a.payload_type,
                               "Full protobuf name of the payload");
  auto* payload = sub->add_option("--payload", a.payload, "The payload")
                      ->type_name("JSON")
                      ->needs(type);
  type->type_name("T")->needs(payload);
  sub->add_option("--id", a.msg_id, id_help)->type_name("MSG_ID");
}

} // namespace

void add_workflow(CLI::App& app, command& run) {
  auto a = std::make_shared<workflow_args>();
  auto* group
      = add_group(app, "workflow",
                  "Starts, inspects and steers workflows through a gateway",
                  json_messages_help);

  auto* start = add_leaf(*group, *a, "start", "Starts a workflow", 2);
  start->add_option("--input-type", a->input_type, "Full protobuf name")
      ->type_name("T")
      ->required();
  start->add_option("--input", a->input, "The input")->type_name("JSON");
  start->add_flag("--reject-if-exists", a->reject_if_exists,
                  "Fail if the workflow exists, finished or not");
  on_parse(start, a, run, [](const workflow_args& a) {
    return answer("workflow",
                  a.gw.client().start_workflow(a.type, a.id, a.input_type,
                                               a.input, a.reject_if_exists));
  });

  auto* describe_cmd
      = add_leaf(*group, *a, "describe", "Shows a workflow's status", 2);
  on_parse(describe_cmd, a, run, [](const workflow_args& a) {
    return answer("workflow", a.gw.client().describe_workflow(a.type, a.id));
  });

  auto* result_cmd = add_leaf(*group, *a, "result",
                              "Prints the result; exits 1 unless "
                              "the run COMPLETED",
                              2);
  result_cmd
      ->add_option("--wait", a->wait_ms,
                   "Waits this long for the run to finish\n(added to "
                   "--timeout)")
      ->type_name("MS")
      ->transform(count(0, 3'600'000));
  on_parse(result_cmd, a, run, result);

  auto* signal = add_leaf(*group, *a, "signal", "Sends a signal", 3);
  add_message(signal, *a, "Message id, for safe retries");
  on_parse(signal, a, run, [](const workflow_args& a) {
    return answer("workflow", a.gw.client().signal_workflow(
                                  a.type, a.id, a.name, a.payload_type,
                                  a.payload, a.msg_id));
  });

  auto* query = add_leaf(*group, *a, "query", "Reads a published value", 3);
  on_parse(query, a, run, [](const workflow_args& a) {
    return answer("workflow",
                  a.gw.client().query_workflow(a.type, a.id, a.name));
  });

  auto* cancel = add_leaf(*group, *a, "cancel", "Cancels a workflow", 2);
  cancel->add_option("--reason", a->reason, "Why")->type_name("TEXT");
  cancel->add_option("--id", a->msg_id, "Message id, for safe retries")
      ->type_name("MSG_ID");
  on_parse(cancel, a, run, [](const workflow_args& a) {
    return answer("workflow", a.gw.client().cancel_workflow(
                                  a.type, a.id, a.reason, a.msg_id));
  });

  auto* update = add_leaf(*group, *a, "update",
                          "Sends an update and prints the answer", 3);
  add_message(update, *a, "Update id, for safe retries");
  on_parse(update, a, run, [](const workflow_args& a) {
    return answer("workflow", a.gw.client().update_workflow(
                                  a.type, a.id, a.name, a.payload_type,
                                  a.payload, a.msg_id));
  });

  auto* list_cmd
      = add_leaf(*group, *a, "list",
                 "Lists workflows; exits 1 if a silo did not answer", 1);
  list_cmd->add_option("--status", a->status, "Only runs in this status")
      ->type_name("S");
  list_cmd->add_option("--limit", a->limit, "Most workflows listed")
      ->type_name("N")
      ->transform(count(1))
      ->capture_default_str();
  list_cmd->add_option("--cursor", a->cursor, "Continue a previous list")
      ->type_name("C");
  on_parse(list_cmd, a, run, list);

  auto* history
      = add_leaf(*group, *a, "history",
                 "Shows the journal (also of a stopped silo)", 2, false);
  history->add_flag("--json", a->json, "Print the journal as JSON");
  auto* data = add_data_option(*history, a->data_dir);
  history
      ->add_option("--export", a->export_file,
                   "Writes the stored state to FILE, the input of\n"
                   "granary::check_replay in a replay test")
      ->type_name("FILE")
      ->needs(data);
  history->callback([a, &run] {
    require_data_or_gateway(a->data_dir, a->gw);
    run = [a] {
      return a->data_dir.empty() ? history_online(*a) : history_offline(*a);
    };
  });
}

} // namespace granary::cli

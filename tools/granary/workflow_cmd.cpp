#include "tools/granary/workflow_cmd.hpp"

#include <cstdio>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/gateway_history.hpp"
#include "persistence/rocksdb_storage.hpp"
#include "runtime/admin.hpp"
#include "runtime/error.hpp"
#include "tools/granary/gateway_cmd.hpp"
#include "workflow.pb.h"

namespace granary::cli {

namespace {

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;

constexpr const char* usage_text
    = "usage: granary workflow history --data DIR TYPE ID [--json]\n"
      "                                [--export FILE]\n"
      "\n"
      "Shows the journal of workflow TYPE/ID in a stopped silo's data\n"
      "directory. --export writes the stored state to FILE, the input of\n"
      "granary::check_replay in a replay test.\n"
      "\n"
      "With --gateway HOST:PORT, works on a running silo: start, describe,\n"
      "result, signal, query, cancel, update, list and history (see\n"
      "'granary workflow --gateway HOST:PORT --help').\n";

int usage(const std::string& what) {
  std::fprintf(stderr, "granary workflow: %s\n%s", what.c_str(), usage_text);
  return exit_usage;
}

int fail(const std::string& what) {
  std::fprintf(stderr, "granary workflow: %s\n", what.c_str());
  return exit_failed;
}

} // namespace

int workflow_main(int argc, char** argv) {
  if (has_gateway_flag(argc, argv))
    return workflow_gateway_main(argc, argv);
  std::string data_dir;
  std::string export_file;
  bool json = false;
  std::vector<std::string> positional;
  for (int i = 0; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--data" && i + 1 < argc)
      data_dir = argv[++i];
    else if (arg == "--export" && i + 1 < argc)
      export_file = argv[++i];
    else if (arg == "--json")
      json = true;
    else if (arg == "--help" || arg == "-h")
      return std::fputs(usage_text, stdout), exit_ok;
    else if (arg.starts_with("--"))
      return usage("unknown option '" + std::string{arg} + "'");
    else
      positional.emplace_back(arg);
  }
  if (positional.empty() || positional.front() != "history")
    return usage("the only subcommand with --data is 'history'; the others "
                 "need --gateway HOST:PORT");
  if (positional.size() != 3)
    return usage("history takes TYPE ID");
  if (data_dir.empty())
    return usage("--data DIR is required");
  if (positional[1].empty())
    return usage("the workflow type is empty");
  if (positional[2].empty())
    return usage("the workflow id is empty");
  // Only reads: the directory is neither created nor changed.
  auto store = rocksdb_storage::open(
      rocksdb_config{.data_dir = data_dir, .read_only = true});
  if (!store) {
    if (code_of(store.error()) == errc::data_dir_locked)
      return fail(describe(store.error())
                  + "; stop the silo that uses this directory first, or ask "
                    "it with --gateway HOST:PORT");
    return fail(describe(store.error()));
  }
  grain_id id{positional[1], positional[2]};
  auto raw = read_grain_state(**store, id);
  if (!raw)
    return fail(describe(raw.error()));
  if (!*raw)
    return fail("no workflow " + to_string(id) + " in " + data_dir);
  wire::WorkflowState st;
  if (!st.ParseFromString(**raw))
    return fail("the state of " + to_string(id) + " is not a workflow journal");
  if (!export_file.empty()) {
    std::ofstream out{export_file, std::ios::binary | std::ios::trunc};
    out << **raw;
    if (!out)
      return fail("cannot write " + export_file);
  }
  auto history = cluster::make_history(id, st);
  if (json)
    std::printf("%s\n", cluster::to_json(history).c_str());
  else
    std::fputs(cluster::to_text(history).c_str(), stdout);
  return exit_ok;
}

} // namespace granary::cli

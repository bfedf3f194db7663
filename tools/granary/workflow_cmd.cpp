#include "tools/granary/workflow_cmd.hpp"

#include <cstdio>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "persistence/rocksdb_storage.hpp"
#include "runtime/admin.hpp"
#include "runtime/error.hpp"
#include "runtime/json.hpp"
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
      "granary::check_replay in a replay test.\n";

int usage(const std::string& what) {
  std::fprintf(stderr, "granary workflow: %s\n%s", what.c_str(), usage_text);
  return exit_usage;
}

int fail(const std::string& what) {
  std::fprintf(stderr, "granary workflow: %s\n", what.c_str());
  return exit_failed;
}

const char* status_name(wire::WorkflowState::Status s) {
  return wire::WorkflowState::Status_Name(s).c_str();
}

} // namespace

int workflow_main(int argc, char** argv) {
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
    return usage("the only subcommand is 'history'");
  if (positional.size() != 3)
    return usage("history takes TYPE ID");
  if (data_dir.empty())
    return usage("--data DIR is required");
  auto store = rocksdb_storage::open(
      rocksdb_config{.data_dir = data_dir, .create_if_missing = false});
  if (!store)
    return fail(describe(store.error()));
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
  if (json) {
    std::printf("{\"workflow\":%s,\"status\":%s,\"run\":%u,\"error\":%s,"
                "\"journal\":[",
                json_quote(to_string(id)).c_str(),
                json_quote(status_name(st.status())).c_str(), st.run(),
                json_quote(st.error()).c_str());
    for (int i = 0; i < st.journal_size(); ++i) {
      auto& e = st.journal(i);
      std::printf("%s{\"seq\":%llu,\"kind\":%s,\"target\":%s,"
                  "\"completed\":%s,\"error\":%s}",
                  i == 0 ? "" : ",", static_cast<unsigned long long>(e.seq()),
                  json_quote(wire::JournalEntry::Kind_Name(e.kind())).c_str(),
                  json_quote(e.target()).c_str(),
                  e.completed() ? "true" : "false",
                  json_quote(e.error()).c_str());
    }
    std::printf("]}\n");
    return exit_ok;
  }
  std::printf("%s  %s  run %u  %d journal entries\n", to_string(id).c_str(),
              status_name(st.status()), st.run(), st.journal_size());
  if (!st.error().empty())
    std::printf("  error: %s\n", st.error().c_str());
  for (auto& e : st.journal())
    std::printf("  %4llu  %-11s %-30s %s%s\n",
                static_cast<unsigned long long>(e.seq()),
                wire::JournalEntry::Kind_Name(e.kind()).c_str(),
                e.target().c_str(), e.completed() ? "done" : "pending",
                e.error().empty() ? "" : ("  " + e.error()).c_str());
  return exit_ok;
}

} // namespace granary::cli

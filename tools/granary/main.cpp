// The `granary` command-line tool: benchmarks, and workflow, grain and
// dead-letter administration (offline on a data directory, or online
// through a silo's gateway). A silo is the user's own binary, built on
// `granary::host::run_silo_main`; this tool runs none.
//
//   granary bench SCENARIO [--duration SECONDS] [--concurrency N]
//                 [--grains N] [--payload BYTES] [--data DIR] [--json]
//   granary workflow|grain|dead-letters|cluster ... --gateway HOST:PORT
//
// Exit codes: 0 success, 1 a scenario failed, 2 bad usage.

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "bench/scenarios.hpp"
#include "runtime/error.hpp"
#include "tools/granary/dead_letters_cmd.hpp"
#include "tools/granary/gateway_cmd.hpp"
#include "tools/granary/workflow_cmd.hpp"

namespace {

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;

constexpr const char* usage_head
    = "usage: granary bench SCENARIO [--duration SECONDS] [--concurrency N]\n"
      "                     [--grains N] [--payload BYTES] [--data DIR] "
      "[--json]\n"
      "       granary dead-letters (--data DIR | --gateway HOST:PORT)\n"
      "                            [list|requeue|drop] ...\n"
      "       granary workflow history --data DIR TYPE ID [--json] "
      "[--export FILE]\n"
      "       granary workflow start|describe|result|signal|query|cancel|\n"
      "                        update|list|history --gateway HOST:PORT ...\n"
      "       granary grain call|send --gateway HOST:PORT TYPE KEY ...\n"
      "       granary cluster status --gateway HOST:PORT\n"
      "       granary help\n"
      "\n"
      "'granary COMMAND --help' explains each command.\n"
      "\n"
      "scenarios:\n";

constexpr const char* usage_options
    = "\n"
      "options:\n"
      "  --duration SECONDS  length of each timed run, warm-up included "
      "(5)\n"
      "  --concurrency N     requests in flight (64 transient, 256 durable);\n"
      "                      workflows in flight (64)\n"
      "  --grains N          grain keys (1000; fanout and memory: 1000000)\n"
      "  --payload BYTES     payload bytes per ping (32)\n"
      "  --data DIR          parent of the temporary RocksDB directories "
      "(/tmp)\n"
      "  --json              one JSON object per scenario and line\n";

// One scenario of the help text: the name in a column of 18, the summary
// wrapped to 78 columns beside it (below it for a long name).
void add_scenario(std::string& out, const std::string& name,
                  const std::string& summary) {
  constexpr size_t indent = 18;
  constexpr size_t width = 78;
  out += "  " + name;
  size_t col = 2 + name.size();
  if (col + 2 > indent) {
    out += "\n";
    col = 0;
  }
  out.append(indent - col, ' ');
  col = indent;
  size_t i = 0;
  // Bounded: every pass consumes one word.
  while (i < summary.size()) {
    auto end = summary.find(' ', i);
    if (end == std::string::npos)
      end = summary.size();
    auto word = summary.substr(i, end - i);
    if (col > indent && col + 1 + word.size() > width) {
      out += "\n" + std::string(indent, ' ');
      col = indent;
    } else if (col > indent) {
      out += ' ';
      ++col;
    }
    out += word;
    col += word.size();
    i = end + 1;
  }
  out += "\n";
}

// The help text; the scenarios come from the list that `bench` runs.
std::string usage_text() {
  std::string out = usage_head;
  for (auto& s : granary::bench::scenarios())
    add_scenario(out, s.name, s.summary);
  add_scenario(out, "all", "all of the above, one after another");
  out += usage_options;
  return out;
}

int usage_error(const std::string& what) {
  std::fprintf(stderr,
               "granary: %s\n"
               "usage: granary COMMAND ...; see 'granary help'\n",
               what.c_str());
  return exit_usage;
}

std::optional<size_t> parse_size(std::string_view text) {
  size_t value = 0;
  auto* end = text.data() + text.size();
  auto res = std::from_chars(text.data(), end, value);
  if (text.empty() || res.ec != std::errc{} || res.ptr != end)
    return std::nullopt;
  return value;
}

std::optional<double> parse_double(const std::string& text) {
  if (text.empty())
    return std::nullopt;
  errno = 0;
  char* end = nullptr;
  auto value = std::strtod(text.c_str(), &end);
  if (errno != 0 || end != text.c_str() + text.size())
    return std::nullopt;
  return value;
}

struct bench_args {
  std::string scenario;
  granary::bench::options opts;
  bool json = false;
};

// Parses the arguments after "bench"; returns an exit code on error or
// when help was printed.
std::optional<int> parse_bench(const std::vector<std::string>& args,
                               bench_args& out) {
  for (size_t i = 0; i < args.size(); ++i) {
    const auto& arg = args[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(usage_text().c_str(), stdout);
      return exit_ok;
    }
    if (arg.rfind("--", 0) != 0) {
      if (!out.scenario.empty())
        return usage_error("more than one scenario given ('" + out.scenario
                           + "' and '" + arg + "')");
      out.scenario = arg;
      continue;
    }
    std::string name = arg;
    std::optional<std::string> value;
    if (auto eq = arg.find('='); eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    }
    if (name == "--json") {
      if (value)
        return usage_error("--json takes no value");
      out.json = true;
      continue;
    }
    static const std::vector<std::string> valued{
        "--duration", "--concurrency", "--grains", "--payload", "--data"};
    if (std::find(valued.begin(), valued.end(), name) == valued.end())
      return usage_error("unknown option '" + name + "'");
    if (!value) {
      if (i + 1 >= args.size())
        return usage_error(name + " needs a value");
      value = args[++i];
    }
    if (name == "--duration") {
      auto d = parse_double(*value);
      if (!d)
        return usage_error("--duration: '" + *value
                           + "' is not a number of seconds");
      out.opts.duration_s = *d;
    } else if (name == "--data") {
      if (value->empty())
        return usage_error("--data: the directory must not be empty");
      out.opts.data_dir = *value;
    } else {
      auto n = parse_size(*value);
      if (!n)
        return usage_error(name + ": '" + *value
                           + "' is not a non-negative integer");
      if (name == "--concurrency")
        out.opts.concurrency = *n;
      else if (name == "--grains")
        out.opts.grains = *n;
      else
        out.opts.payload = *n;
    }
  }
  if (out.scenario.empty())
    return usage_error("bench: no scenario given");
  if (!granary::bench::is_scenario(out.scenario)) {
    std::string known;
    for (auto& s : granary::bench::scenario_names())
      known += s + ", ";
    return usage_error("bench: unknown scenario '" + out.scenario
                       + "' (expected one of: " + known + "all)");
  }
  if (auto err = granary::bench::validate(out.opts))
    return usage_error(granary::describe(err));
  return std::nullopt;
}

int run_bench(const std::vector<std::string>& args) {
  bench_args parsed;
  if (auto code = parse_bench(args, parsed))
    return *code;
  if (!parsed.json)
    parsed.opts.progress = [](const std::string& line) {
      std::fprintf(stderr, "%s\n", line.c_str());
    };
  std::vector<std::string> names;
  if (parsed.scenario == "all")
    names = granary::bench::scenario_names();
  else
    names.push_back(parsed.scenario);
  granary::bench::runner runner{parsed.opts};
  std::vector<granary::bench::result> results;
  int code = exit_ok;
  for (auto& name : names) {
    auto res = runner.run(name);
    if (!res) {
      std::fprintf(stderr, "granary: bench %s failed: %s\n", name.c_str(),
                   granary::describe(res.error()).c_str());
      code = exit_failed;
      continue;
    }
    if (parsed.json) {
      std::printf("%s\n", granary::bench::to_json(*res).c_str());
      std::fflush(stdout);
    }
    results.push_back(std::move(*res));
  }
  if (!parsed.json && !results.empty())
    std::fputs(granary::bench::to_table(results).c_str(), stdout);
  return code;
}

} // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args{argv + 1, argv + argc};
  if (args.empty())
    return usage_error("no command given");
  auto& cmd = args.front();
  if (cmd == "help" || cmd == "-h" || cmd == "--help") {
    std::fputs(usage_text().c_str(), stdout);
    return exit_ok;
  }
  if (cmd == "bench")
    return run_bench({args.begin() + 1, args.end()});
  if (cmd == "dead-letters")
    return granary::cli::dead_letters_main(argc - 2, argv + 2);
  if (cmd == "workflow")
    return granary::cli::workflow_main(argc - 2, argv + 2);
  if (cmd == "silo") {
    // Removed: a silo runs the user's grains, so it is the user's binary.
    std::fputs(
        "granary: 'granary silo' was removed. A silo runs your grains, so it "
        "is\nyour own program: a main() that calls "
        "granary::host::run_silo_main\n(README, \"Build your own silo\"). "
        "The control-plane sample's silo is\ncontrol_plane_silo "
        "(build/samples/control_plane/control_plane_silo).\n",
        stderr);
    return exit_usage;
  }
  if (cmd == "grain")
    return granary::cli::grain_main(argc - 2, argv + 2);
  if (cmd == "cluster")
    return granary::cli::cluster_main(argc - 2, argv + 2);
  return usage_error("unknown command '" + cmd + "'");
}

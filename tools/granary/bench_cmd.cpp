// `granary bench SCENARIO`: runs the scenarios of bench/scenarios.hpp.

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "bench/scenarios.hpp"
#include "runtime/error.hpp"
#include "tools/granary/cli.hpp"

namespace granary::cli {

namespace {

struct bench_args {
  std::string scenario;
  bench::options opts;
  bool json = false;
};

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

int run_bench(bench_args& a) {
  if (!a.json)
    a.opts.progress = [](const std::string& line) {
      std::fprintf(stderr, "%s\n", line.c_str());
    };
  std::vector<std::string> names{a.scenario};
  if (a.scenario == "all")
    names = bench::scenario_names();
  bench::runner runner{a.opts};
  std::vector<bench::result> results;
  int code = exit_ok;
  for (auto& name : names) {
    auto res = runner.run(name);
    if (!res) {
      fail("bench " + name, "failed: " + describe(res.error()));
      code = exit_failed;
      continue;
    }
    if (a.json) {
      std::printf("%s\n", bench::to_json(*res).c_str());
      std::fflush(stdout);
    }
    results.push_back(std::move(*res));
  }
  if (!a.json && !results.empty())
    std::fputs(bench::to_table(results).c_str(), stdout);
  return code;
}

} // namespace

std::string bench_scenarios_help() {
  std::string out;
  for (auto& s : bench::scenarios())
    add_scenario(out, s.name, s.summary);
  add_scenario(out, "all", "all of the above, one after another");
  return out;
}

void add_bench(CLI::App& app, command& run) {
  auto a = std::make_shared<bench_args>();
  auto* sub = app.add_subcommand(
      "bench", "Measures Granary against a raw baseline on this machine");
  sub->add_option("SCENARIO", a->scenario, "A scenario below, or 'all'")
      ->type_name("")
      ->required()
      ->check(CLI::Validator{[](const std::string& name) {
                               if (bench::is_scenario(name))
                                 return std::string{};
                               std::string known;
                               for (auto& s : bench::scenario_names())
                                 known += s + ", ";
                               return "unknown scenario '" + name
                                      + "' (expected one of: " + known + "all)";
                             },
                             ""});
  sub->add_option("--duration", a->opts.duration_s,
                  "Each timed run, warm-up included (5)")
      ->type_name("SECONDS");
  sub->add_option("--concurrency", a->opts.concurrency,
                  "Requests in flight (64 transient, 256\ndurable); "
                  "workflows in flight (64)")
      ->type_name("N")
      ->transform(count(1, bench::max_concurrency));
  sub->add_option("--grains", a->opts.grains,
                  "Grain keys (1000; fanout and memory: 1000000)")
      ->type_name("N")
      ->transform(count(1, bench::max_grains));
  sub->add_option("--payload", a->opts.payload, "Payload bytes per ping (32)")
      ->type_name("BYTES")
      ->transform(count(0, bench::max_payload));
  sub->add_option("--data", a->opts.data_dir,
                  "Parent of the temporary RocksDB directories (/tmp)")
      ->type_name("DIR")
      ->check(not_empty("directory"));
  sub->add_flag("--json", a->json, "One JSON object per scenario and line");
  sub->footer("Scenarios:\n" + bench_scenarios_help());
  sub->callback([a, &run] {
    // The rules a range cannot say (a finite, positive duration).
    if (auto err = bench::validate(a->opts))
      throw CLI::ValidationError{describe(err)};
    run = [a] { return run_bench(*a); };
  });
}

} // namespace granary::cli

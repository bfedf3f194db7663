// The `granary` command-line tool: benchmarks, and workflow, grain and
// dead-letter administration (offline on a data directory, or online
// through a silo's gateway). A silo is the user's own binary, built on
// `granary::host::run_silo_main`; this tool runs none.
//
// Each command group defines its subcommands next to its code (see
// cli.hpp); here they are put together, and every usage error becomes
// exit code 2 in one place.

#include <algorithm>
#include <cstdio>
#include <string>

#include "tools/granary/cli.hpp"

using namespace granary::cli;

namespace {

// Reports a usage error for the deepest subcommand parsed, naming what
// is wrong; returns `exit_usage`.
int usage_error(const CLI::App& app, const CLI::ParseError& err) {
  const CLI::App* at = &app;
  std::string path = app.get_name();
  // Bounded by the depth of the subcommand tree.
  while (!at->get_subcommands().empty()) {
    at = at->get_subcommands().front();
    path += " " + at->get_name();
  }
  std::string what = err.what();
  // An argument nobody took is the likely cause of any other complaint
  // ("a subcommand is required"), and CLI11 does not say what kind it is.
  if (auto extras = app.remaining(true); !extras.empty()) {
    auto option = std::find_if(extras.begin(), extras.end(),
                               [](auto& arg) { return arg.starts_with("-"); });
    if (option != extras.end() && !option->starts_with("--"))
      what = "unknown option '" + *option
             + "' (an id that starts with '-' goes after '--')";
    else if (option != extras.end())
      what = "unknown option '" + option->substr(0, option->find('=')) + "'";
    else if (!at->get_subcommands({}).empty())
      what = "unknown subcommand '" + extras.front() + "'";
    else
      what = "unexpected argument '" + extras.front() + "'";
  }
  std::fprintf(stderr, "%s: %s\nRun '%s --help' for usage.\n", path.c_str(),
               what.c_str(), path.c_str());
  return exit_usage;
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"Benchmarks and administration of a Granary cluster", "granary"};
  // Inherited by every subcommand created below.
  app.get_formatter()->column_width(26);
  app.option_defaults()->disable_flag_override();
  app.require_subcommand(1);
  command run;
  add_bench(app, run);
  add_workflow(app, run);
  add_grain(app, run);
  add_dead_letters(app, run);
  add_cluster(app, run);
  add_sim(app, run);
  app.add_subcommand("help", "Prints this help")->callback([&] {
    run = [&app] {
      std::fputs(
          app.get_formatter()
              ->make_help(&app, app.get_name(), CLI::AppFormatMode::Normal)
              .c_str(),
          stdout);
      return exit_ok;
    };
  });
  // Removed, so hidden (no group): a silo runs the user's grains, so it is
  // the user's binary.
  auto* silo = app.add_subcommand("silo")->group("")->prefix_command();
  silo->callback([&run] {
    run = [] {
      std::fputs(
          "granary: 'granary silo' was removed. A silo runs your grains, so "
          "it is\nyour own program: a main() that calls "
          "granary::host::run_silo_main\n(README, \"Build your own silo\"). "
          "The control-plane sample's silo is\ncontrol_plane_silo "
          "(build/samples/control_plane/control_plane_silo).\n",
          stderr);
      return exit_usage;
    };
  });
  app.footer("Exit codes: 0 success, 1 failure, 2 bad usage.\n"
             "'granary COMMAND --help' explains each command.\n\n"
             "Bench scenarios:\n"
             + bench_scenarios_help());
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return exit_ok;
  } catch (const CLI::ParseError& err) {
    return usage_error(app, err);
  }
  return run();
}

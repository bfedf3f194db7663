#pragma once

// What the command groups of `granary` share. Each group (bench_cmd.cpp,
// workflow_cmd.cpp, ...) defines its subcommands with CLI11 next to their
// implementation; main.cpp assembles them, and turns every usage error
// into exit code 2 in one place.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "gateway/gateway_client.hpp"

namespace granary::cli {

/// Exit codes of `granary`.
constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;

/// The footer of the commands that take messages.
constexpr const char* json_messages_help
    = "Messages are JSON in protobuf's JSON mapping, typed by their full\n"
      "protobuf name (e.g. --type granary.cp.Reserve). Output is the\n"
      "gateway's JSON answer.";

/// The work a parsed command line selected; returns the exit code. A
/// subcommand's callback sets it, so it runs after parsing succeeded.
using command = std::function<int()>;

/// Makes `sub`, once parsed, select `fn(*args)` as the command to run.
template <class Args, class Fn>
void on_parse(CLI::App* sub, std::shared_ptr<Args> args, command& run, Fn fn) {
  sub->callback([args, &run, fn] { run = [args, fn] { return fn(*args); }; });
}

/// Adds command group `name`, which takes one of its subcommands; those
/// added later inherit `footer`.
CLI::App* add_group(CLI::App& app, const std::string& name,
                    const std::string& help, const std::string& footer = {});

/// Refuses an empty argument, naming it: "the workflow id is empty".
CLI::Validator not_empty(const std::string& what);

/// Adds the required positional `name` (e.g. "KEY"), the `what` (e.g.
/// "grain key") of an id, refused when empty.
CLI::Option* add_id_part(CLI::App& app, const std::string& name,
                         std::string& out, const std::string& what);

/// A count in [lo, hi], in decimal digits only (CLI11 alone would read
/// "010" as octal and "0x10" as hex, and wrap "-1" around). Use it with
/// `transform`: it hands the number on without leading zeros.
CLI::Validator count(uint64_t lo, uint64_t hi = UINT64_MAX);

/// `--gateway HOST:PORT` and `--timeout MS`: talks to a silo's gateway.
struct gateway_args {
  /// Empty when `--gateway` was not given.
  std::string address;
  uint64_t timeout_ms = 30'000;

  /// A client whose deadline is `--timeout` plus `extra`. Needs
  /// `--gateway`.
  cluster::gateway_client client(std::chrono::milliseconds extra = {}) const;
};

/// Adds `--gateway` and `--timeout` to `app`, storing into `args`.
/// `required`: the subcommand works only through a gateway.
CLI::Option* add_gateway_options(CLI::App& app, gateway_args& args,
                                 bool required);

/// Adds `--data DIR`, a stopped silo's data directory, to `app`: the
/// alternative to `--gateway`.
CLI::Option* add_data_option(CLI::App& app, std::string& dir);

/// Throws a usage error unless exactly one of `--data` and `--gateway`
/// was given.
void require_data_or_gateway(const std::string& dir, const gateway_args& gw);

/// Prints "granary CMD: WHAT" to stderr; returns `exit_failed`.
int fail(const std::string& cmd, const std::string& what);

/// Prints a gateway's JSON answer, ending it with a newline.
void print_body(const std::string& body);

/// Prints the gateway's answer `res` to command `cmd`, or its error;
/// returns the exit code.
int answer(const std::string& cmd, const caf::expected<std::string>& res);

/// The command groups: each adds its subcommand to `app` and sets `run`
/// when that subcommand is parsed.
void add_bench(CLI::App& app, command& run);
void add_workflow(CLI::App& app, command& run);
void add_grain(CLI::App& app, command& run);
void add_dead_letters(CLI::App& app, command& run);
void add_cluster(CLI::App& app, command& run);

/// Adds `sim`: a workload on a simulated cluster, over seeds.
void add_sim(CLI::App& app, command& run);

/// The scenarios of `granary bench`, one per line with its summary.
std::string bench_scenarios_help();

} // namespace granary::cli

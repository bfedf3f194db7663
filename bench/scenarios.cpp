#include "bench/scenarios.hpp"

#include <algorithm>
#include <array>
#include <cmath>

#include "bench/report.hpp"
#include "bench/scenario.hpp"
#include "runtime/error.hpp"

namespace granary::bench {

namespace {

// The registry: every scenario, in the order `granary bench --help` lists
// them and `all` runs them. Each is defined in its own scenario_*.cpp and
// declared in scenario.hpp; a new one is added there, here and to
// CMakeLists.txt.
constexpr std::array registry{
    &transient_ping_scenario,
    &durable_ping_scenario,
    &cross_silo_durable_scenario,
    &workflow_10_steps_scenario,
    &fanout_100_scenario,
    &fanout_scenario,
    &memory_scenario,
    &retry_storm_scenario,
    &sleeping_workflows_scenario,
};

} // namespace

const std::vector<scenario_info>& scenarios() {
  static const std::vector<scenario_info> list = [] {
    std::vector<scenario_info> out;
    for (auto* def : registry)
      out.push_back({std::string{def->name}, std::string{def->summary}});
    return out;
  }();
  return list;
}

const std::vector<std::string>& scenario_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (auto& s : scenarios())
      out.push_back(s.name);
    return out;
  }();
  return names;
}

bool is_scenario(std::string_view name) {
  if (name == "all")
    return true;
  auto& names = scenario_names();
  return std::find(names.begin(), names.end(), name) != names.end();
}

caf::error validate(const options& opts) {
  auto bad = [](std::string what) {
    return make_error(errc::invalid_argument, std::move(what));
  };
  if (opts.duration_s
      && (!std::isfinite(*opts.duration_s) || *opts.duration_s <= 0
          || *opts.duration_s > max_duration_s))
    return bad("--duration must be above 0 and at most "
               + fmt_num(max_duration_s) + " seconds");
  if (opts.concurrency
      && (*opts.concurrency == 0 || *opts.concurrency > max_concurrency))
    return bad("--concurrency must be between 1 and "
               + std::to_string(max_concurrency));
  if (opts.grains && (*opts.grains == 0 || *opts.grains > max_grains))
    return bad("--grains must be between 1 and " + std::to_string(max_grains));
  if (opts.payload && *opts.payload > max_payload)
    return bad("--payload must be at most " + std::to_string(max_payload)
               + " bytes");
  return caf::none;
}

runner::runner(options opts)
    : session_(std::make_unique<session>()) {
  session_->opts = std::move(opts);
}

runner::~runner() = default;

caf::expected<result> runner::run(std::string_view name) {
  for (auto* def : registry)
    if (def->name == name)
      return def->run(*session_);
  return make_error(errc::invalid_argument,
                    "unknown scenario '" + std::string{name} + "'");
}

} // namespace granary::bench

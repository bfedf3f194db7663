// `granary sim`: runs a built-in workload on a simulated cluster of real
// silos under the deterministic kernel, over one seed or many, and
// reports every seed that broke an invariant (see testing/simulation.hpp).

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "runtime/error.hpp"
#include "runtime/mutation.hpp"
#include "testing/sim_workloads.hpp"
#include "testing/simulation.hpp"
#include "tools/granary/cli.hpp"

namespace granary::cli {

namespace {

using namespace std::chrono_literals;

struct sim_args {
  uint64_t seed = 0;
  uint64_t seeds = 0;
  uint64_t first = 1;
  double sim_hours = 0;
  uint64_t silos = 3;
  uint64_t partitions = 8;
  std::string workload = "counters";
  std::string faults = "all";
  uint64_t operations = 60;
  uint64_t pace_ms = 0;
  bool trace = false;
  std::string mutation;
};

// One seed's outcome, as the child process that ran it reports it.
struct seed_outcome {
  bool ok = false;
  std::string invariant;
  uint64_t steps = 0;
  std::chrono::nanoseconds elapsed{0};
  uint64_t frames = 0;
  std::map<std::string, uint64_t> faults;
};

// Prints one seed's lines (its summary; for a failure or with --trace the
// replay command, the last events and the threads).
void print_seed(const testing::sim_report& report, const sim_args& a,
                const testing::sim_options& opts) {
  std::printf("%s\n", report.summary().c_str());
  if (report.run.ok && !a.trace)
    return;
  std::printf("  replay: granary sim --seed %llu --workload %s --faults "
              "%s --silos %llu --trace\n",
              static_cast<unsigned long long>(report.seed), a.workload.c_str(),
              opts.faults.to_string().c_str(),
              static_cast<unsigned long long>(a.silos));
  std::printf("  trace hash %016llx; last events:\n",
              static_cast<unsigned long long>(report.run.trace_hash));
  for (auto& line : report.run.tail)
    std::printf("    %s\n", line.c_str());
  if (!report.run.ok) {
    std::printf("  threads at the end:\n");
    for (auto& line : report.run.threads)
      std::printf("    %s\n", line.c_str());
  }
}

// Runs one seed in a child process: a crashed silo's threads stay parked
// until their process exits, so thousands of seeds in one process would
// run out of threads. The child prints the seed's lines and reports its
// outcome through a pipe.
seed_outcome run_isolated(const testing::simulation& sim, uint64_t seed,
                          const sim_args& a, const testing::sim_options& opts) {
  seed_outcome out;
  int fds[2];
  if (::pipe(fds) != 0) {
    out.invariant = "cannot create a pipe";
    return out;
  }
  std::fflush(stdout);
  auto pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    out.invariant = "cannot fork";
    return out;
  }
  if (pid == 0) {
    ::close(fds[0]);
    auto report = sim.run(seed);
    print_seed(report, a, opts);
    std::fflush(stdout);
    std::string msg = std::to_string(report.run.ok ? 1 : 0) + "\t"
                      + std::to_string(report.run.steps) + "\t"
                      + std::to_string(report.run.elapsed.count()) + "\t"
                      + std::to_string(report.frames) + "\t"
                      + report.run.invariant + "\n";
    for (auto& [kind, n] : report.faults)
      msg += kind + "\t" + std::to_string(n) + "\n";
    auto left = msg.size();
    auto* at = msg.data();
    // Bounded by the message's size.
    while (left > 0) {
      auto n = ::write(fds[1], at, left);
      if (n <= 0)
        break;
      left -= static_cast<size_t>(n);
      at += n;
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string text;
  char buf[4096];
  // Bounded by the child's message.
  for (;;) {
    auto n = ::read(fds[0], buf, sizeof(buf));
    if (n <= 0)
      break;
    text.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (text.empty()) {
    out.invariant = WIFSIGNALED(status)
                        ? "the run crashed (signal "
                              + std::to_string(WTERMSIG(status)) + ")"
                        : "the run ended without a report";
    std::printf("seed %llu: FAILED; %s\n",
                static_cast<unsigned long long>(seed), out.invariant.c_str());
    return out;
  }
  std::vector<std::string> lines;
  for (size_t start = 0; start < text.size();) {
    auto end = text.find('\n', start);
    lines.push_back(text.substr(start, end - start));
    start = end == std::string::npos ? text.size() : end + 1;
  }
  auto field = [](const std::string& line, size_t i) {
    size_t start = 0;
    for (size_t k = 0; k < i && start != std::string::npos; ++k) {
      start = line.find('\t', start);
      if (start != std::string::npos)
        ++start;
    }
    if (start == std::string::npos)
      return std::string{};
    return line.substr(start, line.find('\t', start) - start);
  };
  out.ok = field(lines[0], 0) == "1";
  out.steps = std::stoull("0" + field(lines[0], 1));
  out.elapsed = std::chrono::nanoseconds{std::stoll("0" + field(lines[0], 2))};
  out.frames = std::stoull("0" + field(lines[0], 3));
  out.invariant = field(lines[0], 4);
  for (size_t i = 1; i < lines.size(); ++i)
    if (!lines[i].empty())
      out.faults[field(lines[i], 0)] += std::stoull("0" + field(lines[i], 1));
  return out;
}

int simulate(const sim_args& a) {
  if (!a.mutation.empty()) {
    std::string known;
    for (auto m : all_mutations)
      known += (known.empty() ? "" : ", ") + std::string{to_string(m)};
    // A comma-separated list: several known bugs at once.
    std::string_view list = a.mutation;
    // Bounded by the list's length.
    while (!list.empty()) {
      auto comma = list.find(',');
      auto name = list.substr(0, comma);
      list = comma == std::string_view::npos ? std::string_view{}
                                             : list.substr(comma + 1);
      bool found = false;
      for (auto m : all_mutations)
        if (to_string(m) == name) {
          set_mutation(m);
          found = true;
        }
      if (!found) {
        std::fprintf(stderr,
                     "granary sim: unknown mutation '%.*s' (known: %s)\n",
                     static_cast<int>(name.size()), name.data(), known.c_str());
        return exit_usage;
      }
    }
    std::printf("granary sim: mutation %s is switched on: the runs should "
                "fail\n",
                a.mutation.c_str());
  }
  auto faults = testing::sim_faults::parse(a.faults);
  if (!faults) {
    std::fprintf(stderr, "granary sim: %s\n", describe(faults.error()).c_str());
    return exit_usage;
  }
  testing::sim_options opts;
  opts.silos = a.silos;
  opts.partitions = static_cast<uint32_t>(a.partitions);
  opts.faults = *faults;
  if (a.sim_hours > 0)
    opts.fault_time = std::chrono::milliseconds{
        static_cast<int64_t>(a.sim_hours * 3'600'000.0)};
  opts.verbose_trace = a.trace;
  testing::simulation sim{opts};
  testing::workload_options wo;
  wo.operations = static_cast<int>(a.operations);
  wo.pace = std::chrono::milliseconds{a.pace_ms};
  if (auto err = testing::add_workload(sim, a.workload, wo)) {
    std::fprintf(stderr, "granary sim: %s\n", describe(err).c_str());
    return exit_usage;
  }
  uint64_t first = a.seed != 0 ? a.seed : a.first;
  uint64_t count = a.seed != 0 ? 1 : (a.seeds != 0 ? a.seeds : 1);
  bool tty = ::isatty(STDERR_FILENO) != 0;
  std::printf("granary sim: workload %s, %llu silos, %u partitions, faults "
              "%s, %.2f h of faults per seed\n",
              a.workload.c_str(), static_cast<unsigned long long>(a.silos),
              opts.partitions, opts.faults.to_string().c_str(),
              std::chrono::duration<double>(opts.fault_time).count() / 3600);
  std::fflush(stdout);
  auto wall = std::chrono::steady_clock::now();
  uint64_t failed = 0;
  uint64_t frames = 0;
  uint64_t steps = 0;
  std::chrono::nanoseconds simulated{0};
  std::map<std::string, uint64_t> faults_by_kind;
  std::map<std::string, uint64_t> violations;
  // Bounded by `count`.
  for (uint64_t i = 0; i < count; ++i) {
    if (tty)
      std::fprintf(stderr, "\r\033[K");
    auto report = run_isolated(sim, first + i, a, opts);
    simulated += report.elapsed;
    frames += report.frames;
    steps += report.steps;
    for (auto& [kind, n] : report.faults)
      faults_by_kind[kind] += n;
    if (!report.ok) {
      ++failed;
      ++violations[report.invariant];
    }
    std::fflush(stdout);
    if (tty) {
      auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now()
                                                - wall)
                      .count();
      std::fprintf(stderr, "%llu/%llu seeds, %llu failed, %.0f s",
                   static_cast<unsigned long long>(i + 1),
                   static_cast<unsigned long long>(count),
                   static_cast<unsigned long long>(failed), secs);
    }
  }
  if (tty)
    std::fprintf(stderr, "\r\033[K");
  auto secs
      = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall)
            .count();
  auto sim_secs = std::chrono::duration<double>(simulated).count();
  std::string kinds;
  for (auto& [kind, n] : faults_by_kind)
    kinds += (kinds.empty() ? "" : ", ") + kind + " " + std::to_string(n);
  std::printf("summary: %llu seeds, %llu failed (invariant violations), "
              "%.2f simulated hours, %.1f s wall (%.0f simulated s per wall "
              "s, %.0f seeds per minute, %.0f events per s), %llu messages "
              "between silos\n",
              static_cast<unsigned long long>(count),
              static_cast<unsigned long long>(failed), sim_secs / 3600, secs,
              secs > 0 ? sim_secs / secs : 0.0,
              secs > 0 ? static_cast<double>(count) * 60 / secs : 0.0,
              secs > 0 ? static_cast<double>(steps) / secs : 0.0,
              static_cast<unsigned long long>(frames));
  std::printf("faults injected: %s\n", kinds.empty() ? "none" : kinds.c_str());
  for (auto& [name, n] : violations)
    std::printf("violated: %s (%llu seeds)\n", name.c_str(),
                static_cast<unsigned long long>(n));
  return failed == 0 ? exit_ok : exit_failed;
}

} // namespace

void add_sim(CLI::App& app, command& run) {
  auto a = std::make_shared<sim_args>();
  auto* sub = app.add_subcommand(
      "sim", "Runs a workload on a simulated cluster under faults, per seed");
  sub->footer(
      "Real silos run in one process under a deterministic scheduler with\n"
      "virtual time, a simulated network and in-memory storage. Each seed\n"
      "draws its own faults and interleavings and replays exactly: a failed\n"
      "seed prints the command that replays it with --trace.\n"
      "Exit status: 0 when every seed held every invariant, 1 otherwise.");
  auto* one = sub->add_option("--seed", a->seed, "Runs this one seed")
                  ->transform(count(1));
  sub->add_option("--seeds", a->seeds, "Runs this many seeds (default 1)")
      ->transform(count(1, 100'000'000))
      ->excludes(one);
  sub->add_option("--first-seed", a->first, "First seed of --seeds")
      ->transform(count(1))
      ->excludes(one);
  sub->add_option("--sim-hours", a->sim_hours,
                  "Simulated time of faults per seed, in hours (default: "
                  "one minute)")
      ->check(CLI::Range(0.0001, 1000.0));
  sub->add_option("--silos", a->silos, "Silos of the cluster (1 to 16)")
      ->transform(count(1, 16));
  sub->add_option("--partitions", a->partitions, "Partitions")
      ->transform(count(1, 1024));
  std::string names;
  for (auto& n : testing::workload_names())
    names += (names.empty() ? "" : ", ") + n;
  sub->add_option("--workload", a->workload, "Workload: " + names);
  sub->add_option("--pace-ms", a->pace_ms,
                  "Each client waits a random time below this before each "
                  "operation, spreading the work over the faults (default 0)")
      ->transform(count(0, 60'000));
  sub->add_option("--operations", a->operations,
                  "Operations the workload issues per seed")
      ->transform(count(1, 1'000'000));
  sub->add_option("--faults", a->faults,
                  "Comma-separated: drop, duplicate, delay, partition, clog, "
                  "crash, pause, skew, leave, membership, disk, all, none "
                  "(default all)");
  sub->add_option("--mutation", a->mutation,
                  "Switches known bugs back on (comma-separated), to see the "
                  "simulation find them: skip_dedup, reply_before_durable, "
                  "rearm_after_cancel, release_before_local_acks, "
                  "restore_after_unknown_map_write, "
                  "unrecorded_local_redelivery");
  sub->add_flag("--trace", a->trace,
                "Print each seed's last events and the silos' log lines");
  on_parse(sub, a, run, simulate);
}

} // namespace granary::cli

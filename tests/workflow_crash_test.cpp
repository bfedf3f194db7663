// Workflow crash test: hundreds of workflows call a fake external API that
// records idempotency keys, sleep durably and book on ledger grains, while
// their silo is SIGKILLed at random moments and restarted. Every workflow
// must complete, the API must apply every idempotency key exactly once, and
// every ledger booking (a durable call) must be applied exactly once.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "testing/child_process.hpp"

using namespace std::chrono_literals;
using granary::testing::child_exit;
using granary::testing::child_process;
using granary::testing::parse_int;
using granary::testing::steady_clock;
using granary::testing::temp_dir;

namespace {

/// Workflows wf-0 .. wf-<n-1>, started by every run.
constexpr int64_t n_workflows = 300;

/// Ledger grains: workflow i books on ledger i % K.
constexpr int64_t n_ledgers = 8;

/// Killed runs before the final, uninterrupted one.
constexpr int n_killed_runs = 6;

/// Every `early_kill_every`-th killed run is killed as soon as all its
/// starts are durable ("started"), while the activities its recovery
/// resubmitted are in flight. The others are killed once the count of
/// completed workflows grew by a random step in
/// [min_kill_step, max_kill_step] within the run (capped at
/// n_workflows - 1): observed progress, however slow the machine, never a
/// fixed delay.
constexpr int early_kill_every = 3;
constexpr int min_kill_step = 5;
constexpr int max_kill_step = 40;

/// Default seed of the kill steps; GRANARY_WFCRASH_SEED overrides it.
constexpr uint32_t default_seed = 20'240'917;

/// Journal sequence numbers of the two activities of a workflow: provision
/// (seq 0), sleep (1), ledger call (2), notify (3).
constexpr int provision_seq = 0;
constexpr int notify_seq = 3;

/// What the parent saw of one run or verify child.
struct child_output {
  child_exit exit;
  /// "started": every start was durable.
  bool started = false;
  /// Completed counts of the first and last "progress" line, -1 if none.
  int64_t first_progress = -1;
  int64_t last_progress = -1;
  /// "done".
  bool done = false;
  /// "failed ..." lines.
  std::vector<std::string> failures;
  /// "stuck <i> <STATUS> <journal size>": workflows the run waited for
  /// without progress, as that process saw them.
  std::vector<std::string> stuck;
  /// verify: status name and error text per workflow.
  std::map<int64_t, std::string> status;
  std::map<int64_t, std::string> status_error;
  /// verify: per ledger {value, seen, distinct seen}.
  std::map<int64_t, std::vector<int64_t>> ledgers;
  /// Lines that follow no protocol rule.
  std::vector<std::string> bad_lines;
};

/// Splits `line` at single spaces into at most `max` fields; the last
/// field keeps the rest of the line.
std::vector<std::string_view> split(std::string_view line, size_t max) {
  std::vector<std::string_view> out;
  while (out.size() + 1 < max) {
    auto sp = line.find(' ');
    if (sp == std::string_view::npos)
      break;
    out.push_back(line.substr(0, sp));
    line = line.substr(sp + 1);
  }
  out.push_back(line);
  return out;
}

/// Applies one output line of the child to `out`.
void parse_line(std::string_view line, child_output& out) {
  auto bad = [&] { out.bad_lines.emplace_back(line); };
  auto f = split(line, 5);
  auto& word = f[0];
  if (word == "done" && f.size() == 1) {
    out.done = true;
  } else if (word == "started" && f.size() == 2) {
    out.started = true;
  } else if (word == "progress" && f.size() == 3) {
    auto c = parse_int(f[1]);
    if (!c || *c > n_workflows || parse_int(f[2]) != n_workflows)
      return bad();
    if (out.first_progress < 0)
      out.first_progress = *c;
    out.last_progress = *c;
  } else if (word == "failed" && f.size() >= 3) {
    out.failures.emplace_back(line);
  } else if (word == "stuck" && f.size() == 4) {
    out.stuck.emplace_back(line);
  } else if (word == "status" && f.size() >= 4) {
    auto i = parse_int(f[1]);
    if (!i || *i >= n_workflows)
      return bad();
    out.status[*i] = std::string{f[2]};
    out.status_error[*i] = f.size() == 5 ? std::string{f[4]} : std::string{};
  } else if (word == "ledger" && f.size() == 5) {
    auto k = parse_int(f[1]);
    auto v = parse_int(f[2]);
    auto seen = parse_int(f[3]);
    auto distinct = parse_int(f[4]);
    if (!k || !v || !seen || !distinct || *k >= n_ledgers)
      return bad();
    out.ledgers[*k] = {*v, *seen, *distinct};
  } else {
    bad();
  }
}

/// When to kill a run: asked after every line with what was seen so far.
using kill_rule = std::function<bool(const child_output&)>;

/// Kills once the child's count of completed workflows grew by `step`
/// since its first report (or reached n_workflows - 1).
kill_rule after_progress(int64_t step) {
  return [step](const child_output& out) {
    return out.first_progress >= 0
           && out.last_progress
                  >= std::min(out.first_progress + step, n_workflows - 1);
  };
}

/// Runs the child once in `mode`; kills it as soon as `kill_when` (if set)
/// holds, or at `timeout`.
child_output run_child(const std::filesystem::path& dir,
                       const std::string& mode, const kill_rule& kill_when,
                       std::chrono::milliseconds timeout) {
  child_output out;
  child_process child;
  auto err = child.spawn(
      {GRANARY_WORKFLOW_CRASH_CHILD, "--data", (dir / "data").string(), "--api",
       (dir / "api.log").string(), "--mode", mode, "--count",
       std::to_string(n_workflows), "--ledgers", std::to_string(n_ledgers)});
  if (!err.empty()) {
    ADD_FAILURE() << "cannot start " << GRANARY_WORKFLOW_CRASH_CHILD << ": "
                  << err;
    return out;
  }
  auto start = steady_clock::now();
  out.exit = child.collect_until(std::nullopt, start + timeout,
                                 [&](std::string_view l) {
                                   parse_line(l, out);
                                   return kill_when && kill_when(out);
                                 });
  if (!out.exit.unterminated.empty())
    out.bad_lines.push_back("unterminated: " + out.exit.unterminated);
  return out;
}

/// The fake API's log as the parent reads it after a child's death.
struct api_log {
  /// Total lines of each kind.
  int64_t attempts = 0;
  int64_t applies = 0;
  /// Attempts at a key already attempted: by the same child process (a
  /// timed-out attempt retried) or by a later one (retried after a kill).
  int64_t repeats_same_process = 0;
  int64_t repeats_after_restart = 0;
  /// Highest attempt number the workflows reached.
  int64_t max_attempt = 0;
  /// Per idempotency key: activity name, attempts, applies, and the pid
  /// of its latest attempt.
  struct key_info {
    std::string activity;
    int64_t attempts = 0;
    int64_t applies = 0;
    std::string last_pid;
  };
  std::map<std::string, key_info> keys;
  /// Lines that are not "attempt|apply <activity> <key> <attempt> <pid>",
  /// and violations (an apply that is not the answer to an attempt of the
  /// same process, a key under two activities).
  std::vector<std::string> problems;

  /// Reads the log at `path` (absent means empty).
  static api_log read(const std::filesystem::path& path) {
    api_log out;
    std::ifstream in{path};
    std::string line;
    int64_t n = 0;
    while (std::getline(in, line)) {
      ++n;
      auto where = "line " + std::to_string(n) + " '" + line + "'";
      if (in.eof()) {
        out.problems.push_back(where + ": no newline (cut short)");
        break;
      }
      if (line.empty())
        continue; // The fence a restarted child writes after a cut line.
      auto f = split(line, 5);
      auto attempt = f.size() == 5 ? parse_int(f[3]) : std::nullopt;
      if (!attempt || !parse_int(f[4])
          || (f[0] != "attempt" && f[0] != "apply")) {
        out.problems.push_back(where + ": malformed");
        continue;
      }
      auto& k = out.keys[std::string{f[2]}];
      if (!k.activity.empty() && k.activity != f[1])
        out.problems.push_back(where + ": key already used by activity "
                               + k.activity);
      k.activity = std::string{f[1]};
      out.max_attempt = std::max(out.max_attempt, *attempt);
      if (f[0] == "attempt") {
        ++out.attempts;
        if (k.attempts++ > 0)
          ++(k.last_pid == f[4] ? out.repeats_same_process
                                : out.repeats_after_restart);
        k.last_pid = std::string{f[4]};
      } else {
        ++out.applies;
        ++k.applies;
        if (k.attempts == 0 || k.last_pid != f[4])
          out.problems.push_back(where
                                 + ": apply without an attempt of its process");
      }
    }
    return out;
  }

  /// Lines of the log in total.
  int64_t lines() const {
    return attempts + applies;
  }
};

/// Idempotency keys of the workflows: "<type>/<id>:<seq>".
constexpr std::string_view key_prefix = "wfcrash.provision/wf-";

/// The idempotency key of the activity at `seq` of workflow `i`.
std::string key_of(int64_t i, int64_t seq) {
  return std::string{key_prefix} + std::to_string(i) + ":"
         + std::to_string(seq);
}

/// The activity name and workflow index an idempotency key belongs to, or
/// nullopt for a key no workflow of this test can produce.
std::optional<std::pair<std::string, int64_t>>
expected_key(const std::string& key) {
  if (!key.starts_with(key_prefix))
    return std::nullopt;
  auto colon = key.find(':');
  if (colon == std::string::npos)
    return std::nullopt;
  auto i = parse_int(std::string_view{key}.substr(key_prefix.size(),
                                                  colon - key_prefix.size()));
  auto seq = parse_int(std::string_view{key}.substr(colon + 1));
  if (!i || *i >= n_workflows || !seq)
    return std::nullopt;
  if (*seq == provision_seq)
    return std::pair{std::string{"provision"}, *i};
  if (*seq == notify_seq)
    return std::pair{std::string{"notify"}, *i};
  return std::nullopt;
}

/// Checks the invariants that hold at every moment: every line is well
/// formed, every key belongs to the activity that owns its sequence
/// number, and no key is applied more than once.
void check_api_log(const api_log& log, const std::string& when, uint32_t seed) {
  for (auto& p : log.problems)
    ADD_FAILURE() << when << ": fake API log: " << p << " (seed " << seed
                  << ")";
  for (auto& [key, info] : log.keys) {
    auto owner = expected_key(key);
    if (!owner) {
      ADD_FAILURE() << when << ": unexpected idempotency key " << key
                    << " (seed " << seed << ")";
      continue;
    }
    EXPECT_EQ(info.activity, owner->first)
        << when << ": key " << key << " (seed " << seed << ")";
    EXPECT_LE(info.applies, 1)
        << when << ": key " << key << " was applied " << info.applies
        << " times (seed " << seed << ")";
  }
}

uint32_t seed_from_env() {
  if (auto* str = std::getenv("GRANARY_WFCRASH_SEED"))
    if (auto val = parse_int(str))
      return static_cast<uint32_t>(*val);
  return default_seed;
}

} // namespace

TEST(workflow_crash, sigkill_loop_completes_every_workflow_effectively_once) {
  auto seed = seed_from_env();
  std::cout << "workflow crash test seed: " << seed
            << " (set GRANARY_WFCRASH_SEED to reproduce or vary)\n";
  RecordProperty("seed", std::to_string(seed));
  std::mt19937 rng{seed};
  std::uniform_int_distribution<int64_t> kill_step{min_kill_step,
                                                   max_kill_step};

  temp_dir dir;
  {
    auto err = dir.create("granary-wfcrash");
    ASSERT_TRUE(err.empty()) << err;
  }
  auto api_path = dir.path / "api.log";

  auto started = steady_clock::now();
  int64_t completed_before = 0; // Last completed count any run reported.
  int killed_mid_way = 0;
  int progress_kills = 0;
  for (int run = 0; run < n_killed_runs; ++run) {
    bool early = run % early_kill_every == early_kill_every - 1;
    auto step = kill_step(rng);
    auto when
        = "run " + std::to_string(run)
          + (early ? std::string{" (kill once started)"}
                   : " (kill after " + std::to_string(step) + " completions)");
    progress_kills += early ? 0 : 1;
    auto lines_before = api_log::read(api_path).lines();
    auto t0 = steady_clock::now();
    auto out = run_child(
        dir.path, "run",
        early ? kill_rule{[](const child_output& o) { return o.started; }}
              : after_progress(step),
        60s);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  steady_clock::now() - t0)
                  .count();
    ASSERT_FALSE(out.exit.timed_out) << when << ": child timed out";
    ASSERT_TRUE(out.failures.empty())
        << when << ": " << out.failures.front() << " (seed " << seed << ")";
    ASSERT_TRUE(out.exit.killed() || (out.exit.clean_exit() && out.done))
        << when << ": child ended with " << out.exit.describe_status()
        << (out.done ? " after" : " before") << " printing done";
    EXPECT_TRUE(out.bad_lines.empty())
        << when << ": unexpected output: " << out.bad_lines.front();
    // A completion reported through DescribeWorkflow was durable: a later
    // run may not see fewer.
    if (out.first_progress >= 0) {
      EXPECT_GE(out.first_progress, completed_before)
          << when << ": completed workflows went back (seed " << seed << ")";
      completed_before = out.last_progress;
    }
    auto log = api_log::read(api_path);
    check_api_log(log, "after " + when, seed);
    auto api_grew = log.lines() > lines_before;
    bool mid_way = !out.done && out.last_progress > 0
                   && out.last_progress < n_workflows && api_grew;
    killed_mid_way += mid_way ? 1 : 0;
    std::cout << "  " << when << ": " << ms << " ms, "
              << (out.started ? "all started" : "not all started")
              << ", completed " << std::max<int64_t>(out.first_progress, 0)
              << " -> " << std::max<int64_t>(out.last_progress, 0) << " / "
              << n_workflows << ", API log " << log.attempts << " attempts "
              << log.applies << " applies, " << out.exit.describe_status()
              << (mid_way ? ", killed mid-way" : "") << "\n";
    if (HasFailure())
      return;
  }

  auto t0 = steady_clock::now();
  auto final_out = run_child(dir.path, "run", nullptr, 60s);
  auto final_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      steady_clock::now() - t0)
                      .count();
  if (!final_out.done) {
    // Names the workflows that did not finish, as the final run saw them
    // and as a fresh process sees them, for the diagnosis.
    for (auto& line : final_out.stuck)
      std::cout << "    final run: " << line << "\n";
    auto diag = run_child(dir.path, "verify", nullptr, 60s);
    int shown = 0;
    for (auto& [i, status] : diag.status) {
      if (status != "COMPLETED" && shown++ < 20)
        std::cout << "    fresh process: wf-" << i << ": " << status << " "
                  << diag.status_error[i] << "\n";
    }
  }
  ASSERT_FALSE(final_out.exit.timed_out)
      << "final run did not finish in 60 s: " << final_out.last_progress
      << " of " << n_workflows << " workflows completed (seed " << seed << ")";
  ASSERT_TRUE(final_out.failures.empty())
      << "final run: " << final_out.failures.front() << " (seed " << seed
      << ")";
  ASSERT_TRUE(final_out.exit.clean_exit() && final_out.done)
      << "final run ended with " << final_out.exit.describe_status()
      << (final_out.done ? " after" : " before") << " printing done";
  EXPECT_GE(final_out.first_progress, completed_before)
      << "final run: completed workflows went back (seed " << seed << ")";
  std::cout << "  final run: " << final_ms << " ms, completed "
            << final_out.first_progress << " -> " << final_out.last_progress
            << "\n";

  auto verified = run_child(dir.path, "verify", nullptr, 60s);
  ASSERT_TRUE(verified.exit.clean_exit())
      << "verify child ended with " << verified.exit.describe_status();
  EXPECT_TRUE(verified.bad_lines.empty())
      << "verify: unexpected output: " << verified.bad_lines.front();
  ASSERT_EQ(static_cast<int64_t>(verified.status.size()), n_workflows);
  for (auto& [i, status] : verified.status)
    EXPECT_EQ(status, "COMPLETED")
        << "wf-" << i << ": " << verified.status_error[i];

  // Each workflow's durable call booked exactly once: the ledger values
  // add up to the number of workflows, and no booking repeated a msg id.
  ASSERT_EQ(static_cast<int64_t>(verified.ledgers.size()), n_ledgers);
  int64_t sum = 0;
  for (auto& [k, v] : verified.ledgers) {
    auto expected = n_workflows / n_ledgers + (k < n_workflows % n_ledgers);
    EXPECT_EQ(v[0], expected) << "ledger-" << k << " (seed " << seed << ")";
    EXPECT_EQ(v[1], v[0]) << "ledger-" << k << ": bookings vs value";
    EXPECT_EQ(v[2], v[1]) << "ledger-" << k << ": a msg id booked twice";
    sum += v[0];
  }
  EXPECT_EQ(sum, n_workflows) << "seed " << seed;

  // Every side effect was applied once per idempotency key: exactly the
  // keys of wf-i's seq 0 (provision) and 3 (notify), each applied once.
  auto log = api_log::read(api_path);
  check_api_log(log, "at the end", seed);
  EXPECT_EQ(log.applies, 2 * n_workflows) << "seed " << seed;
  EXPECT_EQ(static_cast<int64_t>(log.keys.size()), 2 * n_workflows)
      << "seed " << seed;
  for (int64_t i = 0; i < n_workflows; ++i) {
    for (auto seq : {provision_seq, notify_seq}) {
      auto key = key_of(i, seq);
      auto it = log.keys.find(key);
      if (it == log.keys.end()) {
        ADD_FAILURE() << "key " << key << " never reached the API";
        continue;
      }
      EXPECT_EQ(it->second.applies, 1) << "key " << key;
    }
  }
  EXPECT_GE(log.attempts, log.applies);
  int64_t retried_keys = 0;
  for (auto& [key, info] : log.keys)
    retried_keys += info.attempts > 1 ? 1 : 0;

  auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
      steady_clock::now() - started);
  std::cout << "  API: " << log.attempts << " attempts, " << log.applies
            << " applies; " << log.attempts - log.applies
            << " repeated attempts on " << retried_keys << " keys ("
            << log.repeats_after_restart << " after a restart, "
            << log.repeats_same_process
            << " in the same process after a start_to_close timeout); "
            << "highest attempt number " << log.max_attempt << "\n"
            << "  " << killed_mid_way << " of " << n_killed_runs
            << " runs killed mid-way; total " << elapsed.count() << " ms\n";
  RecordProperty("attempts", std::to_string(log.attempts));
  RecordProperty("applies", std::to_string(log.applies));
  RecordProperty("repeats_after_restart",
                 std::to_string(log.repeats_after_restart));
  // Mid-way: some workflows had completed, not all, and the run had
  // reached the API. Runs killed after observed progress land there.
  EXPECT_GE(killed_mid_way, progress_kills - 1)
      << "runs killed after observed progress were not killed mid-way";
}

// A graceful stop (the activity pool first, then the silo, as
// register_workflow asks) while activities are due must fail no workflow:
// a RunActivity timer that fires after activity_pool::stop() gets
// `silo_stopped`, which is transient.
TEST(workflow_crash, graceful_stops_mid_way_fail_no_workflow) {
  temp_dir dir;
  {
    auto err = dir.create("granary-wfcrash");
    ASSERT_TRUE(err.empty()) << err;
  }
  // Killed once some workflows completed, so that others are mid-way.
  auto first = run_child(dir.path, "run", after_progress(1), 60s);
  ASSERT_TRUE(first.exit.killed()) << first.exit.describe_status();
  ASSERT_GT(first.last_progress, 0) << "the kill landed too early";
  ASSERT_LT(first.last_progress, n_workflows) << "the kill landed too late";
  // Each verify child recovers, lets due activities run for a moment and
  // stops gracefully while others are due.
  for (int round = 0; round < 3; ++round) {
    auto out = run_child(dir.path, "verify", nullptr, 60s);
    ASSERT_TRUE(out.exit.clean_exit()) << out.exit.describe_status();
    int64_t failed = 0;
    std::string first_error;
    for (auto& [i, status] : out.status) {
      if (status != "FAILED")
        continue;
      if (failed++ == 0)
        first_error = "wf-" + std::to_string(i) + ": " + out.status_error[i];
    }
    ASSERT_EQ(failed, 0) << "after graceful stop " << round << ": "
                         << first_error;
  }
  auto final_out = run_child(dir.path, "run", nullptr, 60s);
  EXPECT_TRUE(final_out.done) << final_out.exit.describe_status();
}

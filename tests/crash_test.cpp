// Crash test: a child process increments counters with durable sends and
// is SIGKILLed after a random number of new acknowledgements. Every increment
// it reported as acknowledged must survive, and no increment may ever be
// applied twice, although every restart resends all of them with the same
// msg_ids.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
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
using granary::testing::temp_dir;

namespace {

using clock_type = granary::testing::steady_clock;

/// Increments sent by every run; each run resends all of them.
constexpr int64_t n_ids = 100'000;

/// Counters the increments are spread over: id i goes to counter i % K.
constexpr int64_t n_counters = 50;

/// Killed runs before the final, uninterrupted one.
constexpr int n_runs = 6;

/// A killed run dies once it printed a random number of acks of ids that
/// no earlier run acknowledged, between 1 and half of the ids still
/// unacknowledged: observed progress, never a fixed delay, so that a loaded
/// machine cannot make the kill land before anything happened.

/// Default seed of the kill points; GRANARY_CRASH_SEED overrides it.
constexpr uint32_t default_seed = 20'240'601;

/// What the parent saw of one child process (and how it ended).
struct child_result : child_exit {
  /// Ids of all "ack <i>" lines, in order of arrival.
  std::vector<int64_t> acks;
  /// Number of "err <i> <message>" lines.
  size_t errs = 0;
  /// First "err" line, for the log.
  std::string first_err;
  /// Counter values of "value <k> <v>" lines, -1 where missing.
  std::vector<int64_t> values = std::vector<int64_t>(n_counters, -1);
  /// True when the child printed "done".
  bool done = false;
  /// Lines that follow no protocol rule, and an unterminated last line.
  std::vector<std::string> bad_lines;
};

/// Applies one complete output line of the child to `res`.
void parse_line(std::string_view line, child_result& res) {
  auto bad = [&] { res.bad_lines.emplace_back(line); };
  if (line == "done") {
    res.done = true;
    return;
  }
  auto sp = line.find(' ');
  if (sp == std::string_view::npos)
    return bad();
  auto word = line.substr(0, sp);
  auto rest = line.substr(sp + 1);
  if (word == "ack") {
    auto i = parse_int(rest);
    if (!i || *i >= n_ids)
      return bad();
    res.acks.push_back(*i);
  } else if (word == "err") {
    auto sp2 = rest.find(' ');
    auto i = parse_int(rest.substr(0, sp2));
    if (!i || *i >= n_ids)
      return bad();
    if (res.errs++ == 0)
      res.first_err = std::string{line};
  } else if (word == "value") {
    auto sp2 = rest.find(' ');
    if (sp2 == std::string_view::npos)
      return bad();
    auto k = parse_int(rest.substr(0, sp2));
    auto v = parse_int(rest.substr(sp2 + 1));
    if (!k || !v || *k >= n_counters)
      return bad();
    res.values[static_cast<size_t>(*k)] = *v;
  } else {
    bad();
  }
}

/// When to kill a run: asked after every line with what was seen so far.
using kill_rule = std::function<bool(const child_result&)>;

/// Runs the child once; kills it as soon as `kill_when` (if set) holds, or
/// at `timeout`.
child_result run_child(const std::string& data_dir, const std::string& mode,
                       const kill_rule& kill_when,
                       std::chrono::milliseconds timeout) {
  child_process child;
  auto err = child.spawn({GRANARY_CRASH_CHILD, "--data", data_dir, "--mode",
                          mode, "--count", std::to_string(n_ids), "--counters",
                          std::to_string(n_counters)});
  if (!err.empty()) {
    ADD_FAILURE() << "cannot start " << GRANARY_CRASH_CHILD << ": " << err;
    return {};
  }
  auto start = clock_type::now();
  child_result res;
  static_cast<child_exit&>(res) = child.collect_until(
      std::nullopt, start + timeout, [&](std::string_view line) {
        parse_line(line, res);
        return kill_when && kill_when(res);
      });
  if (!res.unterminated.empty())
    res.bad_lines.push_back("unterminated: " + res.unterminated);
  return res;
}

/// Number of ids i in [0, n_ids) with i % n_counters == k.
int64_t ids_of_counter(int64_t k) {
  return n_ids / n_counters + (k < n_ids % n_counters ? 1 : 0);
}

uint32_t seed_from_env() {
  if (auto* str = std::getenv("GRANARY_CRASH_SEED"))
    if (auto val = parse_int(str))
      return static_cast<uint32_t>(*val);
  return default_seed;
}

} // namespace

TEST(crash, sigkill_loop_preserves_acknowledged_increments_exactly_once) {
  auto seed = seed_from_env();
  std::cout << "crash test seed: " << seed
            << " (set GRANARY_CRASH_SEED to reproduce or vary)\n";
  RecordProperty("seed", std::to_string(seed));
  std::mt19937 rng{seed};

  temp_dir dir;
  {
    auto err = dir.create("granary-crash");
    ASSERT_TRUE(err.empty()) << err;
  }
  auto data_dir = (dir.path / "data").string();

  std::vector<bool> acked(n_ids, false);
  std::vector<int64_t> acked_per_counter(n_counters, 0);
  std::vector<int64_t> last_values(n_counters, 0);
  bool exact_expected = false;
  int killed_mid_way = 0;

  // Checks the bounds after a run; `exact` once some run has finished.
  auto verify = [&](const std::string& when, bool exact) {
    auto res = run_child(data_dir, "verify", nullptr, 60s);
    ASSERT_TRUE(res.clean_exit())
        << when << ": verify child ended with " << res.describe_status();
    ASSERT_TRUE(res.bad_lines.empty())
        << when << ": unexpected output: " << res.bad_lines.front();
    int64_t sum = 0;
    for (int64_t k = 0; k < n_counters; ++k) {
      auto v = res.values[static_cast<size_t>(k)];
      auto lo = acked_per_counter[static_cast<size_t>(k)];
      auto hi = ids_of_counter(k);
      ASSERT_GE(v, 0) << when << ": no value for counter c" << k;
      sum += v;
      EXPECT_GE(v, lo) << when << ": counter c" << k << " lost " << lo - v
                       << " acknowledged increments (seed " << seed << ")";
      EXPECT_LE(v, hi) << when << ": counter c" << k << " is " << v - hi
                       << " above its " << hi
                       << " distinct ids: some were applied twice (seed "
                       << seed << ")";
      EXPECT_GE(v, last_values[static_cast<size_t>(k)])
          << when << ": counter c" << k << " went back from "
          << last_values[static_cast<size_t>(k)] << " to " << v << " (seed "
          << seed << ")";
      if (exact) {
        EXPECT_EQ(v, hi) << when << ": counter c" << k
                         << " after a finished run (seed " << seed << ")";
      }
      last_values[static_cast<size_t>(k)] = v;
    }
    std::cout << "  " << when << ": sum of counters " << sum << " / " << n_ids
              << "\n";
  };

  auto absorb = [&](const std::string& when, const child_result& res) {
    EXPECT_TRUE(res.bad_lines.empty())
        << when << ": unexpected output: " << res.bad_lines.front();
    size_t fresh = 0;
    for (auto i : res.acks) {
      if (!acked[static_cast<size_t>(i)]) {
        acked[static_cast<size_t>(i)] = true;
        ++acked_per_counter[static_cast<size_t>(i % n_counters)];
        ++fresh;
      }
    }
    std::cout << "  " << when << ": " << res.acks.size() << " acks (" << fresh
              << " new), " << res.errs << " errs, "
              << (res.done ? "done" : "not done") << ", "
              << res.describe_status() << "\n";
    if (res.errs > 0)
      std::cout << "    first error: " << res.first_err << "\n";
  };

  auto started = clock_type::now();
  for (int run = 0; run < n_runs; ++run) {
    auto unacked
        = static_cast<int64_t>(std::count(acked.begin(), acked.end(), false));
    auto target = std::uniform_int_distribution<int64_t>{
        1, std::max<int64_t>(unacked / 2, 1)}(rng);
    auto when = "run " + std::to_string(run) + " (kill after "
                + std::to_string(target) + " new acks)";
    size_t seen = 0;
    int64_t fresh = 0;
    auto res = run_child(
        data_dir, "run",
        [&](const child_result& r) {
          for (; seen < r.acks.size(); ++seen)
            fresh += acked[static_cast<size_t>(r.acks[seen])] ? 0 : 1;
          return fresh >= target;
        },
        120s);
    ASSERT_FALSE(res.timed_out)
        << when << ": child timed out after " << res.acks.size() << " acks, "
        << res.errs << " errs; first: " << res.first_err;
    ASSERT_TRUE(res.killed() || (res.clean_exit() && res.done))
        << when << ": child ended with " << res.describe_status()
        << (res.done ? " after" : " before") << " printing done";
    absorb(when, res);
    if (res.done)
      exact_expected = true;
    else if (!res.acks.empty())
      ++killed_mid_way;
    verify("after " + when, exact_expected);
    if (HasFatalFailure())
      return;
  }

  auto final_res = run_child(data_dir, "run", nullptr, 120s);
  ASSERT_FALSE(final_res.timed_out)
      << "final run did not finish in 120 s: " << final_res.acks.size()
      << " acks, " << final_res.errs << " errs; first: " << final_res.first_err;
  ASSERT_TRUE(final_res.clean_exit() && final_res.done)
      << "final run ended with " << final_res.describe_status()
      << (final_res.done ? " after" : " before") << " printing done";
  absorb("final run", final_res);
  EXPECT_EQ(std::count(acked.begin(), acked.end(), true), n_ids)
      << "the final run did not acknowledge every id";
  verify("after the final run", true);

  auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
      clock_type::now() - started);
  std::cout << "  " << killed_mid_way << " of " << n_runs
            << " runs killed mid-way; total " << elapsed.count() << " ms\n";
  // Mid-way means: acknowledged something, then died before "done". Every
  // run is killed before it acknowledged half of the ids still open.
  EXPECT_EQ(killed_mid_way, n_runs) << "a run was not killed while sending";
}

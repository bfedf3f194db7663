// The failure detector on a clock that moves only when told: probe rounds,
// answers and table snapshots are fed by hand, and each test checks whom
// the detector votes against, and why not.

#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cluster/agent/failure_detector.hpp"
#include "runtime/clock.hpp"

using namespace granary;
using namespace granary::cluster;

namespace {

using kind = failure_detector::verdict_kind;

constexpr int64_t probe_interval = 100;
constexpr int64_t vote_expiry = 3'000;

membership_entry row(std::string id, uint64_t incarnation = 1,
                     silo_status status = silo_status::active) {
  membership_entry e;
  e.silo_id = std::move(id);
  e.address = "127.0.0.1:1";
  e.status = status;
  e.incarnation = incarnation;
  e.version = 7;
  return e;
}

membership_table table_of(std::vector<membership_entry> rows) {
  membership_table t;
  t.rows = std::move(rows);
  t.version = 9;
  return t;
}

// The live peers of `t` other than "a", as the agent gives them.
std::vector<failure_detector::peer> peers_of(const membership_table& t) {
  std::vector<failure_detector::peer> out;
  for (auto& r : t.rows)
    if (r.silo_id != "a" && r.status != silo_status::dead)
      out.push_back({r.silo_id, r.incarnation});
  return out;
}

std::vector<std::string> ids(const std::vector<failure_detector::probe>& ps) {
  std::vector<std::string> out;
  for (auto& p : ps)
    out.push_back(p.silo_id);
  return out;
}

std::vector<std::string> ids(const std::vector<failure_detector::suspect>& xs) {
  std::vector<std::string> out;
  for (auto& x : xs)
    out.push_back(x.silo_id);
  return out;
}

// Silo "a"'s detector (3 missed probes, 2 votes, 3 s expiry) on a manual
// clock, with a round every 100 ms.
class detector_test : public ::testing::Test {
protected:
  failure_detector::round tick(const membership_table& t,
                               const std::vector<std::string>& answering) {
    clk.advance(probe_interval);
    auto r = fd.start_round(peers_of(t), clk.now_ms());
    for (auto& id : answering)
      fd.on_answer(id);
    return r;
  }

  // Runs `n` rounds (4: the round that first suspects a silent peer) and
  // returns the last.
  failure_detector::round ticks(const membership_table& t,
                                const std::vector<std::string>& answering,
                                int n = 4) {
    failure_detector::round r;
    for (int i = 0; i < n; ++i)
      r = tick(t, answering);
    return r;
  }

  manual_clock clk;
  failure_detector fd{detector_config{"a", 3, 2, vote_expiry}, 42};
};

TEST_F(detector_test, missed_probes_make_a_suspect) {
  auto t = table_of({row("a"), row("b"), row("c")});
  auto first = tick(t, {"c"});
  EXPECT_EQ(ids(first.probes), (std::vector<std::string>{"b", "c"}));
  for (auto& p : first.probes)
    EXPECT_NE(p.nonce, 0u);
  EXPECT_TRUE(first.suspects.empty()) << "no probe was missed yet";
  // Rounds 2 and 3 count b's first two misses.
  EXPECT_TRUE(tick(t, {"c"}).suspects.empty());
  EXPECT_TRUE(tick(t, {"c"}).suspects.empty());
  EXPECT_EQ(fd.missed("b"), 2u);
  EXPECT_EQ(fd.missed("c"), 0u);
  auto fourth = tick(t, {"c"});
  ASSERT_EQ(ids(fourth.suspects), (std::vector<std::string>{"b"}));
  EXPECT_EQ(fourth.suspects[0].incarnation, 1u);
  EXPECT_EQ(fourth.suspects[0].missed, 3u);
  EXPECT_EQ(ids(fourth.probes), (std::vector<std::string>{"b", "c"}))
      << "a suspect is still probed";
  // The vote is judged and written now: its first miss was 2 rounds ago.
  auto v = fd.judge(t, fourth.suspects[0], 1, clk.now_ms());
  ASSERT_EQ(v.kind, kind::vote);
  EXPECT_EQ(fd.voted("b", clk.now_ms()), 2 * probe_interval);
}

TEST_F(detector_test, a_late_answer_resets_the_count) {
  auto t = table_of({row("a"), row("b"), row("c")});
  ticks(t, {"c"}, 3);
  ASSERT_EQ(fd.missed("b"), 2u);
  // b answers one of its older probes, late.
  fd.on_answer("b");
  EXPECT_EQ(fd.missed("b"), 0u);
  EXPECT_TRUE(tick(t, {"c"}).suspects.empty())
      << "the round after an answer counts no miss";
  EXPECT_EQ(fd.missed("b"), 0u);
  // b must miss 3 rounds in a row again.
  EXPECT_TRUE(tick(t, {"c"}).suspects.empty());
  EXPECT_TRUE(tick(t, {"c"}).suspects.empty());
  EXPECT_EQ(ids(tick(t, {"c"}).suspects), (std::vector<std::string>{"b"}));
}

TEST_F(detector_test, votes_repeat_at_half_the_expiry) {
  auto t = table_of({row("a"), row("b"), row("c")});
  auto r = ticks(t, {"c"});
  ASSERT_EQ(ids(r.suspects), (std::vector<std::string>{"b"}));
  fd.voted("b", clk.now_ms());
  auto voted_at = clk.now_ms();
  // Silent all along: suspected again once half the expiry passed.
  int rounds = 0;
  for (; rounds < 100; ++rounds)
    if (!tick(t, {"c"}).suspects.empty())
      break;
  EXPECT_GT(clk.now_ms() - voted_at, vote_expiry / 2);
  EXPECT_LE(clk.now_ms() - voted_at, vote_expiry / 2 + probe_interval);
  // A vote that was not written does not pace the next one.
  EXPECT_FALSE(tick(t, {"c"}).suspects.empty());
}

TEST_F(detector_test, expired_votes_and_votes_about_other_runs_do_not_count) {
  auto t = table_of({row("a"), row("b"), row("c"), row("d"), row("e")});
  auto r = ticks(t, {"b", "c", "d"});
  ASSERT_EQ(ids(r.suspects), (std::vector<std::string>{"e"}));
  auto now = clk.now_ms();
  auto& e = t.rows[4];
  e.suspicions = {
      {"b", now - vote_expiry, 1},     // expired
      {"c", now - 10, 0},              // about an earlier run of e
      {"a", now - 1'000, 1},           // a's own earlier vote: replaced
      {"d", now - vote_expiry + 1, 1}, // still fresh
  };
  auto v = fd.judge(t, r.suspects[0], 1, now);
  ASSERT_EQ(v.kind, kind::vote);
  ASSERT_EQ(v.row.suspicions.size(), 2u);
  EXPECT_EQ(v.row.suspicions[0],
            (suspicion_vote{"d", now - vote_expiry + 1, 1}));
  EXPECT_EQ(v.row.suspicions[1], (suspicion_vote{"a", now, 1}));
  EXPECT_EQ(v.votes, 2u);
  EXPECT_EQ(v.needed, 2u);
  EXPECT_TRUE(v.declares_dead);
  EXPECT_EQ(v.row.status, silo_status::dead);
  EXPECT_EQ(v.row.version, 7u) << "written against the row it judged";
  // One millisecond later d's vote expired too: a's alone decides nothing.
  clk.advance(1);
  v = fd.judge(t, r.suspects[0], 1, clk.now_ms());
  ASSERT_EQ(v.kind, kind::vote);
  EXPECT_EQ(v.votes, 1u);
  EXPECT_FALSE(v.declares_dead);
  EXPECT_EQ(v.row.status, silo_status::active);
}

TEST_F(detector_test, votes_needed_is_capped_at_the_other_live_silos) {
  detector_config cfg{"a", 3, 5, vote_expiry};
  failure_detector strict{cfg, 1};
  auto t = table_of(
      {row("a"), row("b"), row("c"), row("d", 1, silo_status::dead)});
  failure_detector::round r;
  for (int i = 0; i < 4; ++i) {
    clk.advance(probe_interval);
    r = strict.start_round(peers_of(t), clk.now_ms());
    strict.on_answer("b");
  }
  ASSERT_EQ(ids(r.suspects), (std::vector<std::string>{"c"}));
  auto v = strict.judge(t, r.suspects[0], 1, clk.now_ms());
  ASSERT_EQ(v.kind, kind::vote);
  EXPECT_EQ(v.needed, 2u) << "a and b are the live silos other than c";
  EXPECT_FALSE(v.declares_dead);
}

TEST_F(detector_test, a_silo_votes_only_while_it_reaches_a_majority) {
  // Three silos: a hears neither b nor c. 1 of 3 is no majority.
  auto t = table_of({row("a"), row("b"), row("c")});
  auto r = ticks(t, {});
  ASSERT_EQ(ids(r.suspects), (std::vector<std::string>{"b", "c"}));
  auto v = fd.judge(t, r.suspects[0], 1, clk.now_ms());
  EXPECT_EQ(v.kind, kind::minority);
  EXPECT_EQ(v.reached.reached, 1u);
  EXPECT_EQ(v.reached.live, 3u);
  // c answers: a and c are 2 of 3, so a votes against b.
  fd.on_answer("c");
  v = fd.judge(t, r.suspects[0], 1, clk.now_ms());
  EXPECT_EQ(v.kind, kind::vote);
  EXPECT_EQ(v.reached.reached, 2u);
}

TEST_F(detector_test, two_silos_never_declare_each_other_dead) {
  auto t = table_of({row("a"), row("b")});
  auto r = ticks(t, {});
  ASSERT_EQ(ids(r.suspects), (std::vector<std::string>{"b"}));
  auto v = fd.judge(t, r.suspects[0], 1, clk.now_ms());
  EXPECT_EQ(v.kind, kind::minority) << "1 of 2 is no majority";
  // A dead row counts for neither side: a, b and a dead c are still 2.
  t = table_of({row("a"), row("b"), row("c", 1, silo_status::dead)});
  EXPECT_EQ(fd.judge(t, r.suspects[0], 1, clk.now_ms()).kind, kind::minority);
}

TEST_F(detector_test, a_suspect_that_answers_before_the_vote_gets_none) {
  // Two silos on a lossy network: b misses 3 rounds, then its answer comes
  // late, between the round that suspects it and the vote.
  auto t = table_of({row("a"), row("b")});
  auto r = ticks(t, {});
  ASSERT_EQ(ids(r.suspects), (std::vector<std::string>{"b"}));
  fd.on_answer("b");
  auto v = fd.judge(t, r.suspects[0], 1, clk.now_ms());
  EXPECT_EQ(v.kind, kind::answered)
      << "b answered: it is alive, and it must not count as a's majority";
  // Three silos: the same holds when a reaches a majority without b.
  t = table_of({row("a"), row("b"), row("c")});
  r = ticks(t, {"c"});
  ASSERT_EQ(ids(r.suspects), (std::vector<std::string>{"b"}));
  fd.on_answer("b");
  EXPECT_EQ(fd.judge(t, r.suspects[0], 1, clk.now_ms()).kind, kind::answered);
}

TEST_F(detector_test, a_quickly_restarted_silo_starts_with_a_clean_record) {
  auto t = table_of({row("a"), row("b"), row("c")});
  auto r = ticks(t, {"c"});
  ASSERT_EQ(ids(r.suspects), (std::vector<std::string>{"b"}));
  // Before the vote is written, b restarted: the table shows run 2, with a
  // vote against run 1 still on the row.
  t.rows[1].incarnation = 2;
  t.rows[1].suspicions = {{"c", clk.now_ms(), 1}};
  auto v = fd.judge(t, r.suspects[0], 1, clk.now_ms());
  EXPECT_EQ(v.kind, kind::other_run);
  EXPECT_EQ(fd.missed("b"), 0u);
  // Run 2 must miss its own 3 rounds; when it does, the vote against run 1
  // does not count with a's.
  EXPECT_TRUE(tick(t, {"c"}).suspects.empty());
  EXPECT_TRUE(tick(t, {"c"}).suspects.empty());
  EXPECT_TRUE(tick(t, {"c"}).suspects.empty());
  r = tick(t, {"c"});
  ASSERT_EQ(r.suspects.size(), 1u);
  EXPECT_EQ(r.suspects[0].incarnation, 2u);
  v = fd.judge(t, r.suspects[0], 1, clk.now_ms());
  ASSERT_EQ(v.kind, kind::vote);
  EXPECT_EQ(v.votes, 1u);
  EXPECT_FALSE(v.declares_dead);
}

TEST_F(detector_test, a_new_run_in_the_table_resets_the_round_count) {
  auto t = table_of({row("a"), row("b"), row("c")});
  ticks(t, {"c"}, 3);
  ASSERT_EQ(fd.missed("b"), 2u);
  t.rows[1].incarnation = 2;
  EXPECT_TRUE(tick(t, {"c"}).suspects.empty());
  EXPECT_EQ(fd.missed("b"), 0u)
      << "what run 1 missed is not run 2's: its first probe just left";
}

TEST_F(detector_test, a_silo_declared_dead_votes_nothing) {
  auto t = table_of({row("a"), row("b"), row("c")});
  auto r = ticks(t, {"c"});
  ASSERT_EQ(ids(r.suspects), (std::vector<std::string>{"b"}));
  t.rows[0].status = silo_status::dead;
  auto v = fd.judge(t, r.suspects[0], 1, clk.now_ms());
  EXPECT_EQ(v.kind, kind::stop);
  EXPECT_EQ(v.why, "silo 'a' was declared dead by its peers");
  // A newer run of a wrote its row: this run stops, whatever the status.
  t.rows[0].status = silo_status::active;
  t.rows[0].incarnation = 2;
  v = fd.judge(t, r.suspects[0], 1, clk.now_ms());
  EXPECT_EQ(v.kind, kind::stop);
  EXPECT_EQ(v.why, "silo 'a' was restarted elsewhere (incarnation 2)");
  // The run the table shows dead is an older one: not this run's death.
  t.rows[0].status = silo_status::dead;
  EXPECT_FALSE(why_stop(t, "a", 3));
  EXPECT_FALSE(why_stop(t, "a", 0)) << "before joining, nothing is known";
}

TEST_F(detector_test, a_suspect_already_dead_or_gone_is_settled) {
  auto t = table_of({row("a"), row("b"), row("c")});
  auto r = ticks(t, {"c"});
  ASSERT_EQ(ids(r.suspects), (std::vector<std::string>{"b"}));
  t.rows[1].status = silo_status::dead;
  EXPECT_EQ(fd.judge(t, r.suspects[0], 1, clk.now_ms()).kind, kind::settled);
  t.rows.erase(t.rows.begin() + 1);
  EXPECT_EQ(fd.judge(t, r.suspects[0], 1, clk.now_ms()).kind, kind::settled);
  // Gone from the live peers, b is forgotten.
  tick(t, {"c"});
  EXPECT_EQ(fd.missed("b"), 0u);
}

TEST_F(detector_test, join_probes_wait_for_answers_then_start_over) {
  auto probes = fd.join_probes({"b", "c"});
  ASSERT_EQ(ids(probes), (std::vector<std::string>{"b", "c"}));
  EXPECT_EQ(fd.unanswered({"b", "c"}), probes) << "repeated with one nonce";
  fd.on_answer("b");
  EXPECT_EQ(ids(fd.unanswered({"b", "c"})), (std::vector<std::string>{"c"}));
  // c never answered while a joined; the detector judges it from the first
  // round on, without counting the join.
  auto t = table_of({row("a"), row("b"), row("c")});
  tick(t, {"b"});
  EXPECT_EQ(fd.missed("c"), 0u);
  tick(t, {"b"});
  EXPECT_EQ(fd.missed("c"), 1u);
}

} // namespace

// The time-skipping workflow test environment: a day of sleeps, signal
// timeouts and activity retries passes in virtual time; stub activities
// answer from a script; journals are read for the replay check.

#include <atomic>
#include <chrono>
#include <string>

#include <gtest/gtest.h>

#include "actors/workflow.hpp"
#include "testing/test_grains.hpp"
#include "testing/workflow_env.hpp"
#include "workflow_test.pb.h"

using namespace granary;
using namespace granary::testing;
using namespace granary::wftest;
using namespace std::chrono_literals;

namespace {

activity_options charge_policy() {
  activity_options o;
  o.initial_interval = 10s;
  o.backoff_coefficient = 2;
  o.max_attempts = 5;
  return o;
}

// Sleeps an hour, waits a day for approval, then charges.
class approval_flow : public workflow<approval_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "env.approval";

  task<Receipt> run(workflow_context& ctx, const Order& order) {
    Receipt r;
    r.set_started_ms(ctx.now());
    if (auto s = co_await ctx.sleep(1h); !s)
      co_return s.error();
    auto approved = co_await ctx.wait_signal<Number>("approve", 24h);
    if (approved)
      r.set_branch("approved");
    else if (code_of(approved.error()) == errc::timeout)
      r.set_branch("timed-out");
    else
      co_return approved.error();
    Number amount;
    amount.set_value(order.items_size());
    auto charged
        = co_await ctx.activity<Number>("charge", amount, charge_policy());
    if (!charged)
      co_return charged.error();
    r.set_total(charged->value());
    co_return r;
  }
};

Number number(int64_t v) {
  Number n;
  n.set_value(v);
  return n;
}

Order order_of(int items) {
  Order o;
  for (int i = 0; i < items; ++i)
    o.add_items("item-" + std::to_string(i));
  return o;
}

workflow_env approval_env(workflow_env_options opts = {}) {
  workflow_env env{opts};
  env.grains([](host::registration& r) { return r.workflow<approval_flow>(); });
  return env;
}

} // namespace

TEST(workflow_env, a_day_of_timers_and_retries_passes_in_virtual_time) {
  auto env = approval_env();
  auto& charge = env.stub<Number, Number>("charge");
  charge.fails(errc::handler_failed, "503 from the billing API")
      .fails(errc::handler_failed, "503 from the billing API")
      .returns(number(300));
  int64_t started = 0;
  int64_t finished = 0;
  auto run = env.run([&](workflow_session& s) {
    started = s.now_ms();
    ASSERT_TRUE(s.client().start<approval_flow>("a-1", order_of(3)));
    auto out = s.result<approval_flow>("a-1");
    ASSERT_TRUE(out) << describe(out.error());
    EXPECT_EQ(out->branch(), "timed-out");
    EXPECT_EQ(out->total(), 300);
    finished = s.now_ms();
  });
  ASSERT_TRUE(run.ok) << run.invariant << ": " << run.detail;
  // An hour's sleep, a day's signal timeout, then retries after 10 s and
  // 20 s: the run took that much virtual time, and no more than a minute
  // beyond it.
  auto least = (1h + 24h + 30s) / 1ms;
  EXPECT_GE(finished - started, least);
  EXPECT_LT(finished - started, least + (1min / 1ms));
  auto attempts = charge.attempts();
  ASSERT_EQ(attempts.size(), 3u);
  for (size_t i = 0; i < attempts.size(); ++i) {
    EXPECT_EQ(attempts[i].attempt, i + 1);
    EXPECT_EQ(attempts[i].input.value(), 3);
    EXPECT_EQ(attempts[i].idempotency_key, attempts[0].idempotency_key);
  }
  EXPECT_GE(attempts[1].at_ms - attempts[0].at_ms, 10'000);
  EXPECT_GE(attempts[2].at_ms - attempts[1].at_ms, 20'000);
}

TEST(workflow_env, time_moves_only_when_the_test_lets_it) {
  auto env = approval_env();
  env.stub<Number, Number>("charge").otherwise(
      [](const activity_context&, const Number& n) -> caf::expected<Number> {
        return number(n.value() * 100);
      });
  auto run = env.run([&](workflow_session& s) {
    ASSERT_TRUE(s.client().start<approval_flow>("a-2", order_of(2)));
    auto t0 = s.now_ms();
    s.run_until_idle();
    // Idle: the run sleeps, and the clock has not moved to its timer.
    auto info = s.client().describe<approval_flow>("a-2");
    ASSERT_TRUE(info);
    EXPECT_EQ(info->status(), wire::WorkflowState::RUNNING);
    EXPECT_LT(s.now_ms() - t0, 1'000);
    auto j = s.journal<approval_flow>("a-2");
    ASSERT_TRUE(j);
    ASSERT_EQ(j->journal_size(), 2); // now, sleep
    EXPECT_FALSE(j->journal(1).completed());
    s.advance(1h);
    j = s.journal<approval_flow>("a-2");
    ASSERT_TRUE(j);
    ASSERT_EQ(j->journal_size(), 3); // now, sleep, signal
    EXPECT_TRUE(j->journal(1).completed());
    ASSERT_FALSE(s.client().signal<approval_flow>("a-2", "approve", number(1),
                                                  "approve-1"));
    auto out = s.result<approval_flow>("a-2");
    ASSERT_TRUE(out) << describe(out.error());
    EXPECT_EQ(out->branch(), "approved");
    EXPECT_EQ(out->total(), 200);
  });
  ASSERT_TRUE(run.ok) << run.invariant << ": " << run.detail;
}

TEST(workflow_env, a_restart_replays_the_journal_and_the_run_goes_on) {
  auto env = approval_env();
  auto& charge = env.stub<Number, Number>("charge");
  charge.returns(number(7));
  auto run = env.run([&](workflow_session& s) {
    ASSERT_TRUE(s.client().start<approval_flow>("a-3", order_of(1)));
    s.advance(2h); // past the sleep, into the signal wait
    ASSERT_FALSE(s.restart());
    ASSERT_FALSE(s.client().signal<approval_flow>("a-3", "approve", number(1),
                                                  "approve-1"));
    auto out = s.result<approval_flow>("a-3");
    ASSERT_TRUE(out) << describe(out.error());
    EXPECT_EQ(out->branch(), "approved");
    auto j = s.journal<approval_flow>("a-3");
    ASSERT_TRUE(j);
    EXPECT_FALSE(check_replay<approval_flow>(*j));
  });
  ASSERT_TRUE(run.ok) << run.invariant << ": " << run.detail;
  EXPECT_EQ(charge.attempts().size(), 1u);
}

TEST(workflow_env, a_seed_replays_the_same_run) {
  auto once = [](uint64_t seed) {
    workflow_env_options opts;
    opts.seed = seed;
    auto env = approval_env(opts);
    env.stub<Number, Number>("charge")
        .fails(errc::handler_failed, "503")
        .returns(number(1));
    return env.run([](workflow_session& s) {
      for (int i = 0; i < 4; ++i)
        ASSERT_TRUE(s.client().start<approval_flow>("r-" + std::to_string(i),
                                                    order_of(i)));
      for (int i = 0; i < 4; ++i)
        ASSERT_TRUE(s.result<approval_flow>("r-" + std::to_string(i)));
    });
  };
  auto a = once(5);
  auto b = once(5);
  ASSERT_TRUE(a.ok) << a.detail;
  ASSERT_TRUE(b.ok) << b.detail;
  EXPECT_EQ(a.trace_hash, b.trace_hash);
  EXPECT_EQ(a.elapsed, b.elapsed);
}

// -- the replay check
// ----------------------------------------------------------

namespace {

// Which change `changing_flow` runs with: 0 the original; 1 a changed
// activity input; 2 a changed retry policy; 3 a changed call payload; 4 an
// extra command at the end; 5 a renamed activity; 6 returns after the
// activity.
std::atomic<int> variant{0};

class changing_flow : public workflow<changing_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "env.changing";

  task<Receipt> run(workflow_context& ctx, const Order& order) {
    Receipt r;
    auto v = variant.load();
    Number amount;
    amount.set_value(order.items_size() * (v == 1 ? 10 : 1));
    auto policy = charge_policy();
    if (v == 2) {
      policy.max_attempts = 9;
      policy.initial_interval = 1s;
    }
    std::string name = v == 5 ? "charge.v2" : "charge";
    auto charged = co_await ctx.activity<Number>(name, amount, policy);
    if (!charged)
      co_return charged.error();
    r.set_total(charged->value());
    if (v == 6)
      co_return r;
    Add add;
    add.set_delta(v == 3 ? 2 : 1);
    std::string ledger = "ledger";
    auto booked = co_await ctx.call<Value, probe>(ledger, add);
    if (!booked)
      co_return booked.error();
    auto go = co_await ctx.wait_signal<Number>("go");
    if (!go)
      co_return go.error();
    if (v == 4) {
      if (auto s = co_await ctx.sleep(1s); !s)
        co_return s.error();
    }
    co_return r;
  }
};

class replay_check : public ::testing::Test {
protected:
  void SetUp() override {
    variant = 0;
    env.grains([](host::registration& r) {
      if (auto err = r.grain<probe>())
        return err;
      return r.workflow<changing_flow>();
    });
    auto& charge = env.stub<Number, Number>("charge");
    charge.otherwise(
        [](const activity_context&, const Number& n) -> caf::expected<Number> {
          return number(n.value() + 1);
        });
    env.stub<Number, Number>("charge.v2").returns(number(0));
  }

  // Runs "c-1" to its signal wait (and with `finish`, to its end) under
  // variant 0, and returns its journal.
  wire::WorkflowState journal_of_a_run(bool finish) {
    wire::WorkflowState out;
    auto run = env.run([&](workflow_session& s) {
      ASSERT_TRUE(s.client().start<changing_flow>("c-1", order_of(2)));
      s.run_until_idle();
      if (finish) {
        ASSERT_FALSE(
            s.client().signal<changing_flow>("c-1", "go", number(1), "go-1"));
        ASSERT_TRUE(s.result<changing_flow>("c-1"));
      }
      auto j = s.journal<changing_flow>("c-1");
      ASSERT_TRUE(j) << describe(j.error());
      out = *j;
    });
    EXPECT_TRUE(run.ok) << run.invariant << ": " << run.detail;
    return out;
  }

  workflow_env env;
};

// The replay check of `stored` under variant `v`: "" when it passes.
std::string replay_under(int v, const wire::WorkflowState& stored,
                         replay_check_options opts = {}) {
  variant = v;
  auto err = check_replay<changing_flow>(stored, std::move(opts));
  variant = 0;
  return err ? describe(err) : std::string{};
}

} // namespace

TEST_F(replay_check, the_same_code_and_a_changed_retry_policy_pass) {
  auto stored = journal_of_a_run(true);
  ASSERT_EQ(stored.status(), wire::WorkflowState::COMPLETED);
  EXPECT_EQ(replay_under(0, stored), "");
  // The journaled policy governs the activity's attempts; a new policy
  // applies to activities scheduled after the change.
  EXPECT_EQ(replay_under(2, stored), "");
}

TEST_F(replay_check, a_changed_activity_input_or_call_payload_is_reported) {
  auto stored = journal_of_a_run(true);
  auto input = replay_under(1, stored);
  EXPECT_NE(input.find("nondeterminism"), std::string::npos) << input;
  EXPECT_NE(input.find("at seq 0"), std::string::npos) << input;
  EXPECT_NE(input.find("activity(charge"), std::string::npos) << input;
  EXPECT_NE(input.find("request that differs"), std::string::npos) << input;
  auto payload = replay_under(3, stored);
  EXPECT_NE(payload.find("at seq 1"), std::string::npos) << payload;
  EXPECT_NE(payload.find("call(test.probe/ledger"), std::string::npos)
      << payload;
  // Offline, nothing is suspended: the message says what is true.
  for (auto& msg : {input, payload}) {
    EXPECT_EQ(msg.find("suspended"), std::string::npos) << msg;
    EXPECT_NE(msg.find("nothing ran and nothing was changed"),
              std::string::npos)
        << msg;
  }
  // Identities only, as a live replay compares them.
  replay_check_options identities;
  identities.payloads = false;
  EXPECT_EQ(replay_under(1, stored, identities), "");
  EXPECT_EQ(replay_under(3, stored, identities), "");
}

TEST_F(replay_check, an_extra_command_after_a_finished_run_is_reported) {
  auto stored = journal_of_a_run(true);
  auto extra = replay_under(4, stored);
  EXPECT_NE(extra.find("completed after 3 commands"), std::string::npos)
      << extra;
  EXPECT_NE(extra.find("sleep(1000)"), std::string::npos) << extra;
  // A running run waits at the end of its journal: new code may go on
  // from there.
  auto early = replay_under(6, stored);
  EXPECT_NE(early.find("finished at seq 1 but the journal holds 3"),
            std::string::npos)
      << early;
  auto running = journal_of_a_run(false);
  ASSERT_EQ(running.status(), wire::WorkflowState::RUNNING);
  EXPECT_EQ(replay_under(4, running), "");
}

TEST_F(replay_check, a_renamed_activity_is_reported_with_both_commands) {
  auto stored = journal_of_a_run(true);
  auto renamed = replay_under(5, stored);
  EXPECT_NE(renamed.find("the journal has activity(charge, "),
            std::string::npos)
      << renamed;
  EXPECT_NE(renamed.find("now issues activity(charge.v2, "), std::string::npos)
      << renamed;
}

TEST_F(replay_check, a_live_run_keeps_its_journal_across_compatible_changes) {
  auto run = env.run([&](workflow_session& s) {
    ASSERT_TRUE(s.client().start<changing_flow>("live-1", order_of(2)));
    ASSERT_TRUE(s.client().start<changing_flow>("live-2", order_of(2)));
    ASSERT_TRUE(s.client().start<changing_flow>("live-3", order_of(2)));
    s.run_until_idle();
    // A deploy with a changed activity input: the journaled outcome
    // stands and the run goes on.
    variant = 1;
    ASSERT_FALSE(s.restart());
    ASSERT_FALSE(
        s.client().signal<changing_flow>("live-1", "go", number(1), "go-1"));
    auto out = s.result<changing_flow>("live-1");
    ASSERT_TRUE(out) << describe(out.error());
    EXPECT_EQ(out->total(), 3); // 2 items + 1, from the original input.
    // A deploy that renames the activity: the run is suspended.
    variant = 5;
    ASSERT_FALSE(s.restart());
    ASSERT_FALSE(
        s.client().signal<changing_flow>("live-2", "go", number(1), "go-2"));
    s.run_until_idle();
    auto info = s.client().describe<changing_flow>("live-2");
    ASSERT_TRUE(info);
    EXPECT_EQ(info->status(), wire::WorkflowState::SUSPENDED);
    EXPECT_NE(info->error().find("the run is suspended"), std::string::npos)
        << info->error();
    // A deploy whose code returns before the journal's end: suspended too,
    // rather than completed with a result the journal does not support.
    variant = 6;
    ASSERT_FALSE(s.restart());
    ASSERT_FALSE(
        s.client().signal<changing_flow>("live-3", "go", number(1), "go-3"));
    s.run_until_idle();
    info = s.client().describe<changing_flow>("live-3");
    ASSERT_TRUE(info);
    EXPECT_EQ(info->status(), wire::WorkflowState::SUSPENDED);
    EXPECT_NE(info->error().find("finished at seq 1"), std::string::npos)
        << info->error();
    variant = 0;
  });
  variant = 0;
  ASSERT_TRUE(run.ok) << run.invariant << ": " << run.detail;
}

// The time-skipping workflow test environment: a day of sleeps, signal
// timeouts and activity retries passes in virtual time; stub activities
// answer from a script; journals are read for the replay check.

#include <chrono>
#include <string>

#include <gtest/gtest.h>

#include "actors/workflow.hpp"
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

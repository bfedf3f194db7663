#pragma once

// Workflows that the workflow client tests (in process and over the
// gateway) drive: each waits on one kind of command, chosen by its input.

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "actors/workflow.hpp"
#include "runtime/keys.hpp"
#include "testing/test_grains.hpp"
#include "workflow_test.pb.h"

namespace granary::wcflows {

using wftest::Number;
using wftest::Order;
using wftest::Receipt;

/// Policy of the always failing "charge" activity: the second attempt
/// waits an hour, so a test finds the run between attempts.
inline activity_options charge_options() {
  activity_options opts;
  opts.initial_interval = std::chrono::hours{1};
  opts.max_interval = std::chrono::hours{1};
  opts.max_attempts = 5;
  opts.start_to_close = std::chrono::seconds{30};
  return opts;
}

/// Publishes "progress", then waits on what `items(0)` of its input names
/// (`sleep_ms` is the timer's duration or the signal's timeout):
/// "timer", "signal" (named "approve", a `Number`), "update" (named
/// "add"; answers value + 100), "child" (a `wc.waiter` child `<id>.child`
/// that waits for a signal), "call" (a durable call of `Flaky` to
/// test.probe/flaky), "activity" ("charge", see `charge_options`); "fail"
/// fails at once with `invalid_argument`. The output's total is the value
/// received.
class waiter_flow : public workflow<waiter_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wc.waiter";

  task<Receipt> run(workflow_context& ctx, const Order& order) {
    Number progress;
    progress.set_value(1);
    if (auto err = ctx.publish("progress", progress))
      co_return err;
    std::string kind = order.items_size() > 0 ? order.items(0) : "signal";
    std::chrono::milliseconds wait{order.sleep_ms()};
    Receipt r;
    // GCC 12 may destroy a braced temporary inside a co_await expression
    // twice; every argument is named.
    if (kind == "fail") {
      co_return make_error(errc::invalid_argument,
                           "order " + ctx.workflow_id() + " is bad");
    } else if (kind == "timer") {
      if (auto slept = co_await ctx.sleep(wait); !slept)
        co_return slept.error();
    } else if (kind == "signal") {
      std::string name = "approve";
      auto n = co_await ctx.wait_signal<Number>(name, wait);
      if (!n)
        co_return n.error();
      r.set_total(n->value());
    } else if (kind == "update") {
      std::string name = "add";
      auto u = co_await ctx.wait_update<Number>(name);
      if (!u)
        co_return u.error();
      Number answer;
      answer.set_value(u->request.value() + 100);
      if (auto err = ctx.reply_update(*u, answer))
        co_return err;
      r.set_total(u->request.value());
    } else if (kind == "child") {
      Order child;
      child.add_items("signal");
      auto child_id = ctx.workflow_id() + ".child";
      auto out = co_await ctx.child<Receipt, waiter_flow>(child_id, child);
      if (!out)
        co_return out.error();
      r.set_total(out->total());
    } else if (kind == "call") {
      testing::Flaky f;
      f.set_delta(1);
      std::string key = "flaky";
      auto v = co_await ctx.call<testing::Value, testing::probe>(key, f);
      if (!v)
        co_return v.error();
      r.set_total(v->value());
    } else if (kind == "activity") {
      Number amount;
      amount.set_value(7);
      std::string name = "charge";
      auto opts = charge_options();
      auto v = co_await ctx.activity<Number>(name, amount, opts);
      if (!v)
        co_return v.error();
      r.set_total(v->value());
    }
    co_return r;
  }
};

/// Signals `wc.waiter/<items(0)>` ("approve", 5) with a durable call and
/// fails with the answer's error, if any.
class signaller_flow : public workflow<signaller_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wc.signaller";

  task<Receipt> run(workflow_context& ctx, const Order& order) {
    Number five;
    five.set_value(5);
    auto sig = make_signal("approve", five);
    auto target = id_of<waiter_flow>(order.items(0));
    auto answer = co_await ctx.call<done>(target, sig);
    if (!answer)
      co_return answer.error();
    co_return Receipt{};
  }
};

/// A `Number` holding `value`.
inline Number number(int64_t value) {
  Number n;
  n.set_value(value);
  return n;
}

/// Silo settings of the client tests (on a manual clock): a failing
/// durable message waits an hour for its retry, so that a call to
/// test.probe/flaky stays open.
inline silo_config test_config() {
  silo_config cfg;
  cfg.partitions = 8;
  cfg.timer_poll = std::chrono::milliseconds{10};
  cfg.retry_initial = std::chrono::hours{1};
  cfg.retry_max = std::chrono::hours{1};
  return cfg;
}

/// An activity pool whose "charge" activity always fails.
inline std::unique_ptr<activity_pool> failing_pool() {
  auto pool = std::make_unique<activity_pool>(2, 64);
  auto err = pool->add<Number, Number>(
      "charge", [](const activity_context&, const Number&) {
        return caf::expected<Number>{
            make_error(errc::handler_failed, "cloud API answered 503")};
      });
  return err ? nullptr : std::move(pool);
}

/// Registers test.probe and the workflows above, which run their
/// activities on `pool`.
inline caf::error register_flows(grain_registry& reg, activity_pool* pool) {
  if (auto err = register_grain<testing::probe>(reg))
    return err;
  if (auto err = register_workflow<waiter_flow>(reg, pool))
    return err;
  return register_workflow<signaller_flow>(reg, pool);
}

/// Rewrites the stored state of workflow `id` in `mem` (of a silo with
/// `partitions` partitions) with `edit`, while no silo runs on it.
inline void
edit_stored_workflow(memory_storage& mem, uint32_t partitions,
                     const grain_id& id,
                     const std::function<void(wire::WorkflowState&)>& edit) {
  auto key = keys::grain_prefix(partition_of(id, partitions), id);
  auto raw = mem.get(column::state, key);
  ASSERT_TRUE(raw && *raw) << to_string(id);
  wire::WorkflowState st;
  ASSERT_TRUE(st.ParseFromString(**raw)) << to_string(id);
  edit(st);
  write_batch wb;
  wb.put(column::state, key, st.SerializeAsString());
  const write_batch* views[] = {&wb};
  ASSERT_FALSE(mem.commit(views));
}

/// The one thing `wc.waiter` run `id` waits on, once it waits (an empty
/// `WaitingOn` and a test failure when it settles first or waits on more).
inline wire::WaitingOn waits_on(workflow_client& client,
                                const std::string& id) {
  wire::WorkflowInfo info;
  EXPECT_TRUE(testing::eventually([&] {
    auto d = client.describe<waiter_flow>(id);
    if (d)
      info = *d;
    return d
           && (info.waiting_count() > 0
               || info.status() != wire::WorkflowState::RUNNING);
  })) << id;
  EXPECT_EQ(info.status(), wire::WorkflowState::RUNNING) << info.error();
  EXPECT_EQ(info.waiting_count(), 1u) << id;
  return info.waiting_size() == 1 ? info.waiting(0) : wire::WaitingOn{};
}

/// An input that makes a `wc.waiter` wait on `kind`.
inline Order waiting_on(const std::string& kind, int64_t sleep_ms = 0) {
  Order o;
  o.add_items(kind);
  o.set_sleep_ms(sleep_ms);
  return o;
}

} // namespace granary::wcflows

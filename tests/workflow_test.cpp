// Coroutine workflows: journaled commands, replay after restart, durable
// sleep under a manual clock, non-determinism detection and versioning.

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "actors/saga.hpp"
#include "actors/workflow.hpp"
#include "runtime/keys.hpp"
#include "testing/test_grains.hpp"
#include "workflow_client_flows.hpp"
#include "workflow_test.pb.h"

using namespace granary;
using namespace granary::testing;
using namespace granary::wftest;
using namespace std::chrono_literals;

namespace {

std::atomic<int> side_effect_runs{0};

// The shared body of the order workflows. `variant` selects the code
// version: 1 is the original, 2 adds a versioned bonus call, 3 swaps the
// sleep in front of the calls (a non-deterministic change).
task<Receipt> order_body(workflow_context& ctx, const Order& order,
                         int variant) {
  Receipt r;
  if (variant == 3) {
    if (auto s
        = co_await ctx.sleep(std::chrono::milliseconds{order.sleep_ms()});
        !s)
      co_return s.error();
  }
  r.set_started_ms(ctx.now());
  r.set_lucky(ctx.random());
  auto side = ctx.side_effect<Number>("count", []() -> caf::expected<Number> {
    ++side_effect_runs;
    Number n;
    n.set_value(42);
    return n;
  });
  if (!side)
    co_return side.error();
  r.set_side(side->value());
  int64_t version = 1;
  if (variant == 2)
    version = ctx.version("bonus-item", 1, 2);
  r.set_branch(version == 2 ? "new" : "old");
  for (auto& item : order.items()) {
    Add add;
    add.set_delta(1);
    auto target = id_of<probe>(item);
    auto v = co_await ctx.call<Value>(target, add);
    if (!v)
      co_return v.error();
    r.set_total(r.total() + v->value());
  }
  if (version == 2) {
    Add add;
    add.set_delta(1);
    std::string bonus = "bonus";
    auto v = co_await ctx.call<Value, probe>(bonus, add);
    if (!v)
      co_return v.error();
  }
  if (variant != 3) {
    if (auto s
        = co_await ctx.sleep(std::chrono::milliseconds{order.sleep_ms()});
        !s)
      co_return s.error();
  }
  Add audit;
  audit.set_delta(r.total());
  std::string auditor = "audit";
  auto v = co_await ctx.call<Value, probe>(auditor, audit);
  if (!v)
    co_return v.error();
  co_return r;
}

template <int Variant>
class order_flow : public workflow<order_flow<Variant>, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wf.order";

  task<Receipt> run(workflow_context& ctx, const Order& order) {
    return order_body(ctx, order, Variant);
  }
};

// Fails with the callee's error: calls a grain type nobody registered.
class broken_flow : public workflow<broken_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wf.broken";

  task<Receipt> run(workflow_context& ctx, const Order&) {
    // GCC 12 may destroy a braced temporary inside a co_await expression
    // twice; naming the arguments avoids it.
    grain_id nobody{"no.such", "x"};
    Get get;
    auto v = co_await ctx.call<Value>(nobody, get);
    if (!v)
      co_return v.error();
    co_return Receipt{};
  }
};

class workflow_test : public ::testing::Test {
protected:
  void SetUp() override {
    side_effect_runs = 0;
    mem = std::make_shared<memory_storage>();
    clk = std::make_shared<manual_clock>();
    cfg.partitions = 8;
    cfg.timer_poll = 10ms;
  }

  // Registers `G` as a workflow (without a pool: these run no activity) or
  // as a plain grain.
  template <class G>
  static caf::error register_any(grain_registry& reg) {
    if constexpr (is_workflow_v<G>)
      return register_workflow<G>(reg, nullptr);
    else
      return register_grain<G>(reg);
  }

  // Starts a silo with grain classes `Gs` on the shared storage and clock.
  template <class... Gs>
  std::unique_ptr<silo> start_with() {
    grain_registry reg;
    auto check
        = [](const caf::error& err) { EXPECT_FALSE(err) << describe(err); };
    (check(register_any<Gs>(reg)), ...);
    auto s = silo::start(cfg, std::move(reg),
                         std::make_unique<shared_storage>(mem), clk);
    if (!s) {
      ADD_FAILURE() << describe(s.error());
      return nullptr;
    }
    return std::move(*s);
  }

  template <int Variant>
  std::unique_ptr<silo> start() {
    return start_with<probe, order_flow<Variant>, broken_flow>();
  }

  static wire::WorkflowInfo describe_flow(silo& s, const std::string& id,
                                          std::string type = "wf.order") {
    auto r = s.call(grain_id{std::move(type), id},
                    std::make_shared<wire::DescribeWorkflow>());
    if (!r)
      return {};
    return static_cast<const wire::WorkflowInfo&>(**r);
  }

  static int64_t value_of(silo& s, const std::string& key) {
    auto v = grain_ref<probe>{s, key}.call<Value>(Get{});
    return v ? v->value() : -1;
  }

  static Order order(int64_t sleep_ms) {
    Order o;
    o.add_items("a");
    o.add_items("b");
    o.add_items("a");
    o.set_sleep_ms(sleep_ms);
    return o;
  }

  bool wait_status(silo& s, const std::string& id,
                   wire::WorkflowState::Status status) {
    return eventually([&] { return describe_flow(s, id).status() == status; });
  }

  // Waits until the run parks at its sleep (all item calls answered).
  bool wait_parked(silo& s, const std::string& id, int journal_size) {
    return eventually([&] {
      return describe_flow(s, id).journal_size()
             == static_cast<uint64_t>(journal_size);
    });
  }

  std::shared_ptr<memory_storage> mem;
  std::shared_ptr<manual_clock> clk;
  silo_config cfg;
};

} // namespace

TEST_F(workflow_test, runs_calls_and_sleep_to_completion) {
  auto s = start<1>();
  ASSERT_FALSE(s->send(grain_id{"wf.order", "o-1"}, order(1'000)));
  // now, random, side effect, three calls, sleep.
  ASSERT_TRUE(wait_parked(*s, "o-1", 7));
  EXPECT_EQ(describe_flow(*s, "o-1").status(), wire::WorkflowState::RUNNING);
  clk->advance(1'000);
  ASSERT_TRUE(wait_status(*s, "o-1", wire::WorkflowState::COMPLETED));
  Receipt r;
  ASSERT_TRUE(r.ParseFromString(describe_flow(*s, "o-1").output()));
  // Replies were 1, 1 (b), 2 (a again): their values add up to 4.
  EXPECT_EQ(r.total(), 4);
  EXPECT_EQ(r.side(), 42);
  EXPECT_EQ(r.branch(), "old");
  EXPECT_EQ(value_of(*s, "a"), 2);
  EXPECT_EQ(value_of(*s, "b"), 1);
  EXPECT_EQ(value_of(*s, "audit"), 4);
  EXPECT_EQ(side_effect_runs, 1);
  // Starting the same id again is idempotent: nothing runs twice.
  ASSERT_FALSE(s->send(grain_id{"wf.order", "o-1"}, order(1'000)));
  EXPECT_EQ(value_of(*s, "audit"), 4);
}

TEST_F(workflow_test, restart_replays_the_journal_without_repeating_effects) {
  Receipt first;
  {
    auto s = start<1>();
    ASSERT_FALSE(s->send(grain_id{"wf.order", "o-2"}, order(60'000)));
    ASSERT_TRUE(wait_parked(*s, "o-2", 7));
  }
  auto s = start<1>();
  clk->advance(60'000);
  ASSERT_TRUE(wait_status(*s, "o-2", wire::WorkflowState::COMPLETED));
  Receipt r;
  ASSERT_TRUE(r.ParseFromString(describe_flow(*s, "o-2").output()));
  EXPECT_EQ(r.total(), 4);
  // Calls, the side effect and now() were not re-run by the replay.
  EXPECT_EQ(value_of(*s, "a"), 2);
  EXPECT_EQ(value_of(*s, "b"), 1);
  EXPECT_EQ(value_of(*s, "audit"), 4);
  EXPECT_EQ(side_effect_runs, 1);
  EXPECT_EQ(r.started_ms(), 1'000'000); // The manual clock's start.
}

TEST_F(workflow_test, thirty_day_sleep_completes_under_a_manual_clock) {
  auto s = start<1>();
  Order o = order(int64_t{30} * 24 * 3600 * 1000);
  ASSERT_FALSE(s->send(grain_id{"wf.order", "o-3"}, o));
  ASSERT_TRUE(wait_parked(*s, "o-3", 7));
  clk->advance(int64_t{30} * 24 * 3600 * 1000);
  EXPECT_TRUE(wait_status(*s, "o-3", wire::WorkflowState::COMPLETED));
}

TEST_F(workflow_test, nondeterministic_change_suspends_and_keeps_the_data) {
  {
    auto s = start<1>();
    ASSERT_FALSE(s->send(grain_id{"wf.order", "o-4"}, order(60'000)));
    ASSERT_TRUE(wait_parked(*s, "o-4", 7));
  }
  auto journal_before = *mem->get(
      column::state,
      keys::grain_prefix(partition_of(grain_id{"wf.order", "o-4"}, 8),
                         grain_id{"wf.order", "o-4"}));
  {
    auto s = start<3>(); // The sleep moved in front of the calls.
    clk->advance(60'000);
    ASSERT_TRUE(wait_status(*s, "o-4", wire::WorkflowState::SUSPENDED));
    auto info = describe_flow(*s, "o-4");
    EXPECT_NE(info.error().find("non-determinism at seq 0"), std::string::npos)
        << info.error();
    EXPECT_NE(info.error().find("now()"), std::string::npos) << info.error();
    EXPECT_NE(info.error().find("sleep(60000)"), std::string::npos)
        << info.error();
    EXPECT_EQ(info.journal_size(), 7u);
    EXPECT_EQ(value_of(*s, "audit"), 0);
  }
  // The fixed code resumes the run where it stopped.
  auto s = start<1>();
  ASSERT_FALSE(s->send(grain_id{"wf.order", "o-4"}, wire::ResumeWorkflow{}));
  ASSERT_TRUE(wait_status(*s, "o-4", wire::WorkflowState::COMPLETED));
  EXPECT_EQ(value_of(*s, "a"), 2);
  EXPECT_EQ(value_of(*s, "audit"), 4);
  EXPECT_TRUE(journal_before.has_value());
}

TEST_F(workflow_test, versioning_keeps_old_runs_on_the_old_branch) {
  {
    auto s = start<1>();
    ASSERT_FALSE(s->send(grain_id{"wf.order", "old"}, order(60'000)));
    ASSERT_TRUE(wait_parked(*s, "old", 7));
  }
  auto s = start<2>();
  ASSERT_FALSE(s->send(grain_id{"wf.order", "new"}, order(60'000)));
  // The new run records the version marker and makes the bonus call.
  ASSERT_TRUE(wait_parked(*s, "new", 9));
  clk->advance(60'000);
  ASSERT_TRUE(wait_status(*s, "old", wire::WorkflowState::COMPLETED));
  ASSERT_TRUE(wait_status(*s, "new", wire::WorkflowState::COMPLETED));
  Receipt old_r, new_r;
  ASSERT_TRUE(old_r.ParseFromString(describe_flow(*s, "old").output()));
  ASSERT_TRUE(new_r.ParseFromString(describe_flow(*s, "new").output()));
  EXPECT_EQ(old_r.branch(), "old");
  EXPECT_EQ(new_r.branch(), "new");
  EXPECT_EQ(value_of(*s, "bonus"), 1);
}

TEST_F(workflow_test, a_failed_call_fails_the_run_with_its_error) {
  auto s = start<1>();
  ASSERT_FALSE(s->send(grain_id{"wf.broken", "x"}, order(0)));
  ASSERT_TRUE(eventually([&] {
    return describe_flow(*s, "x", "wf.broken").status()
           == wire::WorkflowState::FAILED;
  }));
  auto info = describe_flow(*s, "x", "wf.broken");
  EXPECT_NE(info.error().find("no.such"), std::string::npos) << info.error();
}

namespace {

// A fake cloud API: counts attempts per idempotency key, fails the first
// `fail_first` attempts of each key, and applies each key's mutation once.
struct fake_api {
  std::mutex mtx;
  std::map<std::string, int> attempts;
  std::map<std::string, int> applied;
  std::map<std::string, int> repeats;
  int fail_first = 0;
  errc fail_with = errc::handler_failed;
  std::chrono::milliseconds first_attempt_delay{0};
  // Attempts running at once, per key, and the most there ever were.
  std::map<std::string, int> busy;
  int max_overlap = 0;
  // First attempts that found themselves abandoned after their delay.
  int saw_abandoned = 0;

  caf::expected<Number> charge(const activity_context& ctx, const Number& in) {
    int n;
    {
      std::lock_guard guard{mtx};
      n = ++attempts[ctx.idempotency_key];
      max_overlap = std::max(max_overlap, ++busy[ctx.idempotency_key]);
    }
    if (n == 1 && first_attempt_delay.count() > 0) {
      std::this_thread::sleep_for(first_attempt_delay);
      if (!ctx.heartbeat()) {
        std::lock_guard guard{mtx};
        ++saw_abandoned;
      }
    }
    {
      std::lock_guard guard{mtx};
      --busy[ctx.idempotency_key];
    }
    if (n <= fail_first)
      return make_error(fail_with, "cloud API answered 503 (attempt "
                                       + std::to_string(n) + ")");
    std::lock_guard guard{mtx};
    // Idempotent like a well-behaved cloud API: a key applies once, and a
    // repeat is only counted.
    if (applied[ctx.idempotency_key] == 0)
      applied[ctx.idempotency_key] = 1;
    else
      ++repeats[ctx.idempotency_key];
    Number out;
    out.set_value(in.value() * 10);
    return out;
  }
};

fake_api* api = nullptr;
activity_options pay_options;

task<Receipt> pay_body(workflow_context& ctx) {
  Number amount;
  amount.set_value(7);
  std::string name = "charge";
  auto charged = co_await ctx.activity<Number>(name, amount, pay_options);
  if (!charged)
    co_return charged.error();
  Receipt r;
  r.set_total(charged->value());
  co_return r;
}

class pay_flow : public workflow<pay_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wf.pay";

  task<Receipt> run(workflow_context& ctx, const Order&) {
    return pay_body(ctx);
  }
};

// The same code under another type name: its activities must not share
// idempotency keys with wf.pay's.
class refund_flow : public workflow<refund_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wf.refund";

  task<Receipt> run(workflow_context& ctx, const Order&) {
    return pay_body(ctx);
  }
};

// Fills its first turn with timers (sleeps it never awaits) up to the
// turn's limit, so that its activity's first attempt cannot be scheduled.
class crowded_flow : public workflow<crowded_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wf.crowded";

  task<Receipt> run(workflow_context& ctx, const Order&) {
    for (size_t i = 0; i < turn::max_effects; ++i)
      static_cast<void>(ctx.sleep(std::chrono::hours{1}));
    return pay_body(ctx);
  }
};

class activity_test : public workflow_test {
protected:
  void SetUp() override {
    workflow_test::SetUp();
    api = &fake;
    pay_options = activity_options{};
    pay_options.initial_interval = 10ms;
    pay_options.max_interval = 40ms;
    pay_options.max_attempts = 5;
    pay_options.start_to_close = 1'000ms;
    pool = std::make_unique<activity_pool>(2, 64);
    ASSERT_FALSE((pool->add<Number, Number>(
        "charge", [](const activity_context& ctx, const Number& in) {
          return api->charge(ctx, in);
        })));
  }

  void TearDown() override {
    // The pool reports to the silo: stop it first.
    pool->stop();
    s.reset();
    api = nullptr;
  }

  void start_pay(bool attach = true) {
    grain_registry reg;
    ASSERT_FALSE(register_workflow<pay_flow>(reg, pool.get()));
    ASSERT_FALSE(register_workflow<refund_flow>(reg, pool.get()));
    ASSERT_FALSE(register_workflow<crowded_flow>(reg, pool.get()));
    auto started = silo::start(cfg, std::move(reg),
                               std::make_unique<shared_storage>(mem), clk);
    ASSERT_TRUE(started) << describe(started.error());
    s = std::move(*started);
    if (attach)
      pool->attach(*s);
  }

  // Stops the pool (first, as it reports to the silo) and the silo, and
  // builds a fresh pool for the next start.
  void stop_pay() {
    pool->stop();
    s.reset();
    pool = std::make_unique<activity_pool>(2, 64);
    ASSERT_FALSE((pool->add<Number, Number>(
        "charge", [](const activity_context& ctx, const Number& in) {
          return api->charge(ctx, in);
        })));
  }

  // The committed journal entry of the activity of pay flow `id`.
  wire::JournalEntry stored_activity(const std::string& id) {
    auto raw = s->read_state(grain_id{"wf.pay", id});
    wire::WorkflowState st;
    if (!raw || !*raw || !st.ParseFromString(**raw) || st.journal_size() == 0)
      return {};
    return st.journal(0);
  }

  // Rewrites the stored state of pay flow `id` while no silo runs.
  void edit_stored(const std::string& id,
                   const std::function<void(wire::WorkflowState&)>& edit) {
    wcflows::edit_stored_workflow(*mem, cfg.partitions, grain_id{"wf.pay", id},
                                  edit);
  }

  // Waits, without moving the clock, until the run leaves RUNNING.
  wire::WorkflowInfo settled(const std::string& id,
                             const std::string& type = "wf.pay") {
    wire::WorkflowInfo info;
    eventually([&] {
      info = describe_flow(*s, id, type);
      return info.status() != wire::WorkflowState::RUNNING;
    });
    return info;
  }

  // Moves the manual clock forward until the run leaves RUNNING.
  wire::WorkflowInfo run_to_end(const std::string& id) {
    wire::WorkflowInfo info;
    eventually([&] {
      clk->advance(20);
      info = describe_flow(*s, id, "wf.pay");
      return info.status() != wire::WorkflowState::RUNNING;
    });
    return info;
  }

  fake_api fake;
  std::unique_ptr<activity_pool> pool;
  std::unique_ptr<silo> s;
};

} // namespace

TEST_F(activity_test, retries_with_backoff_until_success_and_applies_once) {
  fake.fail_first = 2;
  start_pay();
  ASSERT_FALSE(s->send(grain_id{"wf.pay", "p-1"}, order(0)));
  auto info = run_to_end("p-1");
  ASSERT_EQ(info.status(), wire::WorkflowState::COMPLETED) << info.error();
  Receipt r;
  ASSERT_TRUE(r.ParseFromString(info.output()));
  EXPECT_EQ(r.total(), 70);
  std::lock_guard guard{fake.mtx};
  EXPECT_EQ(fake.attempts["wf.pay/p-1:0"], 3);
  EXPECT_EQ(fake.applied["wf.pay/p-1:0"], 1);
}

TEST_F(activity_test, non_retryable_errors_fail_at_once) {
  fake.fail_first = 100;
  fake.fail_with = errc::invalid_argument;
  pay_options.non_retryable = {errc::invalid_argument};
  start_pay();
  ASSERT_FALSE(s->send(grain_id{"wf.pay", "p-2"}, order(0)));
  auto info = run_to_end("p-2");
  ASSERT_EQ(info.status(), wire::WorkflowState::FAILED);
  EXPECT_NE(info.error().find("non-retryable"), std::string::npos)
      << info.error();
  std::lock_guard guard{fake.mtx};
  EXPECT_EQ(fake.attempts["wf.pay/p-2:0"], 1);
}

TEST_F(activity_test, gives_up_after_max_attempts) {
  fake.fail_first = 100;
  pay_options.max_attempts = 3;
  start_pay();
  ASSERT_FALSE(s->send(grain_id{"wf.pay", "p-3"}, order(0)));
  auto info = run_to_end("p-3");
  ASSERT_EQ(info.status(), wire::WorkflowState::FAILED);
  EXPECT_NE(info.error().find("after 3 attempt(s)"), std::string::npos)
      << info.error();
  EXPECT_NE(info.error().find("503"), std::string::npos) << info.error();
  std::lock_guard guard{fake.mtx};
  EXPECT_EQ(fake.attempts["wf.pay/p-3:0"], 3);
}

TEST_F(activity_test,
       a_timed_out_attempt_is_abandoned_and_its_retry_waits_for_it) {
  fake.first_attempt_delay = 300ms;
  pay_options.initial_interval = 0ms;
  pay_options.start_to_close = 100ms;
  start_pay();
  ASSERT_FALSE(s->send(grain_id{"wf.pay", "p-4"}, order(0)));
  ASSERT_TRUE(eventually([&] {
    std::lock_guard guard{fake.mtx};
    return fake.attempts["wf.pay/p-4:0"] == 1;
  }));
  // start_to_close passes while the first attempt still runs.
  clk->advance(100);
  auto info = settled("p-4");
  ASSERT_EQ(info.status(), wire::WorkflowState::COMPLETED) << info.error();
  std::lock_guard guard{fake.mtx};
  EXPECT_EQ(fake.attempts["wf.pay/p-4:0"], 2);
  // The first attempt learnt that it was abandoned; the retry started only
  // once it had returned.
  EXPECT_EQ(fake.saw_abandoned, 1);
  EXPECT_EQ(fake.max_overlap, 1);
  // Both attempts reached the API; the idempotency key made the second a
  // repeat instead of a second mutation.
  EXPECT_EQ(fake.applied["wf.pay/p-4:0"], 1);
  EXPECT_EQ(fake.repeats["wf.pay/p-4:0"], 1);
}

TEST_F(activity_test, an_attempt_lost_in_a_crash_is_retried_after_restart) {
  fake.first_attempt_delay = 500ms;
  pay_options.start_to_close = 200ms;
  start_pay();
  ASSERT_FALSE(s->send(grain_id{"wf.pay", "p-5"}, order(0)));
  ASSERT_TRUE(eventually([&] {
    std::lock_guard guard{fake.mtx};
    return fake.attempts["wf.pay/p-5:0"] == 1;
  }));
  // Stop while the first attempt runs: its result cannot be recorded.
  stop_pay();
  start_pay();
  auto info = run_to_end("p-5");
  ASSERT_EQ(info.status(), wire::WorkflowState::COMPLETED) << info.error();
  std::lock_guard guard{fake.mtx};
  EXPECT_EQ(fake.attempts["wf.pay/p-5:0"], 2);
}

TEST_F(activity_test, a_restart_retries_an_attempt_in_flight_at_once) {
  fake.first_attempt_delay = 200ms;
  pay_options.start_to_close = 60s;
  start_pay();
  ASSERT_FALSE(s->send(grain_id{"wf.pay", "p-6"}, order(0)));
  ASSERT_TRUE(eventually([&] {
    std::lock_guard guard{fake.mtx};
    return fake.attempts["wf.pay/p-6:0"] == 1;
  }));
  stop_pay();
  // The manual clock stands still: the 60 s start_to_close never passes,
  // so only the recovery of the partition can retry the lost attempt.
  start_pay();
  auto info = settled("p-6");
  ASSERT_EQ(info.status(), wire::WorkflowState::COMPLETED) << info.error();
  std::lock_guard guard{fake.mtx};
  EXPECT_EQ(fake.attempts["wf.pay/p-6:0"], 2);
}

TEST_F(activity_test, attempts_submitted_while_the_silo_starts_are_recorded) {
  fake.fail_first = 1;
  pay_options.initial_interval = 10s;
  pay_options.start_to_close = 60s;
  start_pay();
  ASSERT_FALSE(s->send(grain_id{"wf.pay", "p-7"}, order(0)));
  // The first attempt failed and its retry, due in 10 s, is committed.
  ASSERT_TRUE(eventually([&] { return stored_activity("p-7").value() == 2; }));
  stop_pay();
  clk->advance(10'000);
  // Recovery fires the due retry and submits the attempt before the pool
  // is attached (as every host does, after silo::start returns).
  start_pay(false);
  ASSERT_TRUE(eventually([&] { return pool->stats().queued == 1; }));
  pool->attach(*s);
  auto info = settled("p-7");
  ASSERT_EQ(info.status(), wire::WorkflowState::COMPLETED) << info.error();
  EXPECT_EQ(pool->stats().dropped_results, 0u);
  std::lock_guard guard{fake.mtx};
  EXPECT_EQ(fake.attempts["wf.pay/p-7:0"], 2);
}

TEST_F(activity_test, an_activity_that_cannot_be_scheduled_fails_the_run) {
  start_pay();
  ASSERT_FALSE(s->send(grain_id{"wf.crowded", "c-1"}, order(0)));
  wire::WorkflowInfo info;
  ASSERT_TRUE(eventually(
      [&] {
        info = describe_flow(*s, "c-1", "wf.crowded");
        return info.status() == wire::WorkflowState::FAILED;
      },
      30s))
      << "the activity's entry stayed open: status " << info.status();
  EXPECT_NE(info.error().find("could not be scheduled"), std::string::npos)
      << info.error();
  std::lock_guard guard{fake.mtx};
  EXPECT_TRUE(fake.attempts.empty());
}

TEST_F(activity_test, invalid_activity_options_fail_the_activity_at_once) {
  fake.fail_first = 1;
  pay_options.initial_interval = -5ms;
  start_pay();
  ASSERT_FALSE(s->send(grain_id{"wf.pay", "p-8"}, order(0)));
  auto info = settled("p-8");
  ASSERT_EQ(info.status(), wire::WorkflowState::FAILED);
  EXPECT_NE(info.error().find("initial_interval"), std::string::npos)
      << info.error();
}

TEST_F(activity_test, two_grain_types_with_one_id_get_different_keys) {
  start_pay();
  ASSERT_FALSE(s->send(grain_id{"wf.pay", "same"}, order(0)));
  ASSERT_FALSE(s->send(grain_id{"wf.refund", "same"}, order(0)));
  ASSERT_EQ(run_to_end("same").status(), wire::WorkflowState::COMPLETED);
  wire::WorkflowInfo refund;
  ASSERT_TRUE(eventually([&] {
    refund = describe_flow(*s, "same", "wf.refund");
    return refund.status() == wire::WorkflowState::COMPLETED;
  }));
  std::lock_guard guard{fake.mtx};
  EXPECT_EQ(fake.applied["wf.pay/same:0"], 1);
  EXPECT_EQ(fake.applied["wf.refund/same:0"], 1);
  EXPECT_EQ(fake.repeats.size(), 0u);
}

TEST_F(activity_test, an_activity_journaled_before_typed_keys_keeps_its_key) {
  fake.fail_first = 1;
  pay_options.initial_interval = 10s;
  start_pay();
  ASSERT_FALSE(s->send(grain_id{"wf.pay", "p-9"}, order(0)));
  // The first attempt failed and its retry, due in 10 s, is committed.
  ASSERT_TRUE(eventually([&] { return stored_activity("p-9").value() == 2; }));
  stop_pay();
  // As an older version journaled it.
  edit_stored("p-9", [](wire::WorkflowState& st) {
    st.mutable_journal(0)->mutable_activity()->clear_key_format();
  });
  fake.fail_first = 0;
  clk->advance(10'000);
  start_pay();
  auto info = run_to_end("p-9");
  ASSERT_EQ(info.status(), wire::WorkflowState::COMPLETED) << info.error();
  std::lock_guard guard{fake.mtx};
  EXPECT_EQ(fake.attempts["wf.pay/p-9:0"], 1);
  EXPECT_EQ(fake.attempts["p-9:0"], 1);
}

TEST(activity_key_test, keys_name_the_grain_type_and_the_run) {
  grain_id w{"wf.pay", "order:7"};
  EXPECT_EQ(activity_idempotency_key(w, 0, 3), "wf.pay/order:7:3");
  EXPECT_EQ(activity_idempotency_key(w, 2, 3), "wf.pay/order:7:2.3");
  // Activities journaled before the type was part of the key keep theirs.
  EXPECT_EQ(activity_idempotency_key(w, 0, 3, 0), "order:7:3");
  EXPECT_EQ(activity_idempotency_key(w, 2, 3, 0), "order:7:2.3");
}

namespace {

class approval_flow : public workflow<approval_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wf.approval";

  task<Receipt> run(workflow_context& ctx, const Order& order) {
    std::string name = "approve";
    std::chrono::milliseconds timeout{order.sleep_ms()};
    auto approved = co_await ctx.wait_signal<Number>(name, timeout);
    if (!approved)
      co_return approved.error();
    Receipt r;
    r.set_total(approved->value());
    co_return r;
  }
};

class signal_test : public workflow_test {
protected:
  std::unique_ptr<silo> start_approval() {
    return start_with<approval_flow>();
  }

  static wire::Signal approve(int64_t value) {
    Number n;
    n.set_value(value);
    return make_signal("approve", n);
  }

  static wire::WorkflowInfo info(silo& s, const std::string& id) {
    return describe_flow(s, id, "wf.approval");
  }

  bool finished(silo& s, const std::string& id) {
    return eventually(
        [&] { return info(s, id).status() != wire::WorkflowState::RUNNING; });
  }
};

} // namespace

TEST_F(signal_test, a_signal_resumes_the_waiting_run) {
  auto s = start_approval();
  grain_id id{"wf.approval", "a-1"};
  ASSERT_FALSE(s->send(id, order(0)));
  ASSERT_TRUE(eventually([&] { return info(*s, "a-1").journal_size() == 1; }));
  EXPECT_EQ(info(*s, "a-1").status(), wire::WorkflowState::RUNNING);
  ASSERT_FALSE(s->send(id, approve(5), "sig-1"));
  ASSERT_TRUE(finished(*s, "a-1"));
  Receipt r;
  ASSERT_TRUE(r.ParseFromString(info(*s, "a-1").output()));
  EXPECT_EQ(r.total(), 5);
}

TEST_F(signal_test, a_signal_sent_before_the_wait_is_buffered) {
  auto s = start_approval();
  grain_id id{"wf.approval", "a-2"};
  ASSERT_FALSE(s->send(id, approve(8), "sig-2"));
  ASSERT_FALSE(s->send(id, order(0)));
  ASSERT_TRUE(finished(*s, "a-2"));
  Receipt r;
  ASSERT_TRUE(r.ParseFromString(info(*s, "a-2").output()));
  EXPECT_EQ(r.total(), 8);
}

TEST_F(signal_test, a_wait_times_out_with_a_clear_error) {
  auto s = start_approval();
  grain_id id{"wf.approval", "a-3"};
  ASSERT_FALSE(s->send(id, order(5'000)));
  ASSERT_TRUE(eventually([&] { return info(*s, "a-3").journal_size() == 1; }));
  clk->advance(5'000);
  ASSERT_TRUE(finished(*s, "a-3"));
  auto i = info(*s, "a-3");
  EXPECT_EQ(i.status(), wire::WorkflowState::FAILED);
  EXPECT_NE(i.error().find("no signal 'approve' arrived in time"),
            std::string::npos)
      << i.error();
}

TEST_F(signal_test, a_run_waiting_across_a_restart_takes_the_signal) {
  grain_id id{"wf.approval", "a-4"};
  {
    auto s = start_approval();
    ASSERT_FALSE(s->send(id, order(0)));
    ASSERT_TRUE(
        eventually([&] { return info(*s, "a-4").journal_size() == 1; }));
  }
  auto s = start_approval();
  ASSERT_FALSE(s->send(id, approve(3), "sig-4"));
  // The same signal again (a client retry) is deduplicated.
  ASSERT_FALSE(s->send(id, approve(3), "sig-4"));
  ASSERT_TRUE(finished(*s, "a-4"));
  Receipt r;
  ASSERT_TRUE(r.ParseFromString(info(*s, "a-4").output()));
  EXPECT_EQ(r.total(), 3);
}

namespace {

// Calls every item's probe in windows of three (bounded parallelism), then
// races two signals.
class fan_flow : public workflow<fan_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wf.fan";

  task<Receipt> run(workflow_context& ctx, const Order& order) {
    Receipt r;
    Add add;
    add.set_delta(1);
    auto& items = order.items();
    for (int first = 0; first < items.size(); first += 3) {
      std::vector<workflow_context::awaiter<Value>> window;
      for (int i = first; i < std::min(first + 3, items.size()); ++i)
        window.push_back(ctx.call<Value>(id_of<probe>(items[i]), add));
      auto n = co_await ctx.all(window);
      if (n != window.size())
        co_return make_error(errc::unspecified, "all() returned early");
      for (auto& call : window) {
        auto v = call.result();
        if (!v)
          co_return v.error();
        r.set_total(r.total() + 1);
      }
    }
    std::vector<workflow_context::awaiter<Number>> race;
    std::string left = "left";
    std::string right = "right";
    race.push_back(ctx.wait_signal<Number>(left));
    race.push_back(ctx.wait_signal<Number>(right));
    auto winner = co_await ctx.any(race);
    r.set_branch(winner == 0 ? "left" : "right");
    if (order.sleep_ms() > 0) {
      // Parks after the race, so that a restart replays through it.
      std::chrono::milliseconds pause{order.sleep_ms()};
      if (auto slept = co_await ctx.sleep(pause); !slept)
        co_return slept.error();
    }
    co_return r;
  }
};

class fan_test : public workflow_test {
protected:
  std::unique_ptr<silo> start_fan() {
    return start_with<probe, fan_flow>();
  }
};

} // namespace

TEST_F(fan_test, all_waits_for_a_window_and_any_picks_the_first_to_finish) {
  Order o;
  for (int i = 0; i < 10; ++i)
    o.add_items("item-" + std::to_string(i));
  grain_id id{"wf.fan", "f-1"};
  {
    auto s = start_fan();
    ASSERT_FALSE(s->send(id, o));
    // 10 calls and two signal waits journaled: parked at the race.
    ASSERT_TRUE(eventually([&] {
      return describe_flow(*s, "f-1", "wf.fan").journal_size() == 12;
    }));
    for (int i = 0; i < 10; ++i)
      EXPECT_EQ(value_of(*s, "item-" + std::to_string(i)), 1);
    Number n;
    ASSERT_FALSE(s->send(id, make_signal("right", n), "sig-right"));
    ASSERT_TRUE(eventually([&] {
      return describe_flow(*s, "f-1", "wf.fan").status()
             == wire::WorkflowState::COMPLETED;
    }));
    // A later signal for the loser changes nothing.
    ASSERT_FALSE(s->send(id, make_signal("left", n), "sig-left"));
  }
  auto s = start_fan();
  auto info = describe_flow(*s, "f-1", "wf.fan");
  Receipt r;
  ASSERT_TRUE(r.ParseFromString(info.output()));
  EXPECT_EQ(r.total(), 10);
  EXPECT_EQ(r.branch(), "right");
}

TEST_F(fan_test, any_replays_to_the_same_winner) {
  Order o;
  o.add_items("x");
  o.set_sleep_ms(1'000);
  grain_id id{"wf.fan", "f-2"};
  {
    auto s = start_fan();
    ASSERT_FALSE(s->send(id, o));
    ASSERT_TRUE(eventually([&] {
      return describe_flow(*s, "f-2", "wf.fan").journal_size() == 3;
    }));
    Number n;
    // Both signals arrive, "right" first: both waits are complete by the
    // time anything replays, and only the recorded order tells the winner.
    ASSERT_FALSE(s->send(id, make_signal("right", n), "r"));
    ASSERT_FALSE(s->send(id, make_signal("left", n), "l"));
    ASSERT_TRUE(eventually([&] {
      return describe_flow(*s, "f-2", "wf.fan").journal_size() == 4;
    }));
  }
  auto s = start_fan();
  clk->advance(1'000);
  ASSERT_TRUE(eventually([&] {
    return describe_flow(*s, "f-2", "wf.fan").status()
           == wire::WorkflowState::COMPLETED;
  }));
  Receipt r;
  ASSERT_TRUE(r.ParseFromString(describe_flow(*s, "f-2", "wf.fan").output()));
  EXPECT_EQ(r.branch(), "right");
}

TEST_F(workflow_test,
       the_replay_check_tells_compatible_code_from_incompatible) {
  {
    auto s = start<1>();
    ASSERT_FALSE(s->send(grain_id{"wf.order", "r-1"}, order(60'000)));
    ASSERT_TRUE(wait_parked(*s, "r-1", 7));
  }
  grain_id id{"wf.order", "r-1"};
  auto raw
      = mem->get(column::state, keys::grain_prefix(partition_of(id, 8), id));
  ASSERT_TRUE(raw && *raw);
  wire::WorkflowState stored;
  ASSERT_TRUE(stored.ParseFromString(**raw));
  EXPECT_FALSE(check_replay<order_flow<1>>(stored));
  EXPECT_FALSE(check_replay<order_flow<2>>(stored)); // Versioned change.
  auto err = check_replay<order_flow<3>>(stored);
  EXPECT_EQ(code_of(err), errc::nondeterminism);
  EXPECT_NE(describe(err).find("seq 0"), std::string::npos) << describe(err);
  // The check never touches the world.
  EXPECT_EQ(side_effect_runs, 1);
}

namespace {

// Reserves items one by one; an item named "bad" fails, and the saga then
// releases what was reserved, last first.
class booking_flow : public workflow<booking_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wf.booking";

  task<Receipt> run(workflow_context& ctx, const Order& order) {
    saga undo;
    Receipt r;
    for (auto& item : order.items()) {
      if (item == "bad") {
        auto compensated = co_await undo.compensate();
        if (!compensated)
          co_return compensated.error();
        co_return make_error(errc::handler_failed,
                             "item 'bad' cannot be booked; compensated");
      }
      auto target = id_of<probe>(item);
      Add reserve;
      reserve.set_delta(1);
      auto v = co_await ctx.call<Value>(target, reserve);
      if (!v)
        co_return v.error();
      static_cast<void>(
          undo.add([&ctx, target]() -> task<google::protobuf::Empty> {
            Add release;
            // Releases are recorded as -1 on the item's probe; the seen list
            // of the audit probe records their order.
            release.set_delta(-1);
            auto done = co_await ctx.call<Value>(target, release);
            if (!done)
              co_return done.error();
            auto audit = id_of<probe>("released");
            Add mark;
            mark.set_delta(1);
            auto marked = co_await ctx.call<Value>(audit, mark);
            if (!marked)
              co_return marked.error();
            co_return google::protobuf::Empty{};
          }));
    }
    co_return r;
  }
};

} // namespace

TEST_F(workflow_test, a_saga_compensates_in_reverse_order) {
  auto started = start_with<probe, booking_flow>();
  ASSERT_TRUE(started);
  auto& s = *started;
  Order o;
  o.add_items("hotel");
  o.add_items("car");
  o.add_items("bad");
  ASSERT_FALSE(s.send(grain_id{"wf.booking", "b-1"}, o));
  ASSERT_TRUE(eventually([&] {
    return describe_flow(s, "b-1", "wf.booking").status()
           == wire::WorkflowState::FAILED;
  }));
  EXPECT_NE(describe_flow(s, "b-1", "wf.booking").error().find("compensated"),
            std::string::npos);
  EXPECT_EQ(value_of(s, "hotel"), 0);
  EXPECT_EQ(value_of(s, "car"), 0);
  EXPECT_EQ(value_of(s, "released"), 2);
  // The journal shows the releases in reverse order: car, then hotel.
  wire::WorkflowState st;
  grain_id id{"wf.booking", "b-1"};
  ASSERT_TRUE(st.ParseFromString(
      **mem->get(column::state, keys::grain_prefix(partition_of(id, 8), id))));
  std::vector<std::string> targets;
  for (auto& e : st.journal())
    targets.push_back(e.target());
  std::vector<std::string> expected{"test.probe/hotel", "test.probe/car",
                                    "test.probe/car",   "test.probe/released",
                                    "test.probe/hotel", "test.probe/released"};
  EXPECT_EQ(targets, expected);
}

namespace {

// Each run adds 1 to probe "loop", sleeps, and continues as new with one
// item fewer, until no item is left.
class loop_flow : public workflow<loop_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wf.loop";

  task<Receipt> run(workflow_context& ctx, const Order& order) {
    auto target = id_of<probe>("loop");
    Add add;
    add.set_delta(1);
    auto v = co_await ctx.call<Value>(target, add);
    if (!v)
      co_return v.error();
    std::chrono::milliseconds pause{10};
    if (auto slept = co_await ctx.sleep(pause); !slept)
      co_return slept.error();
    if (order.items_size() == 0) {
      Receipt r;
      r.set_total(v->value());
      co_return r;
    }
    Order next = order;
    next.mutable_items()->RemoveLast();
    co_return ctx.continue_as_new(next);
  }
};

} // namespace

TEST_F(workflow_test, continue_as_new_starts_fresh_runs_with_bounded_journals) {
  auto started = start_with<probe, loop_flow>();
  ASSERT_TRUE(started);
  auto& s = *started;
  Order o;
  for (int i = 0; i < 4; ++i)
    o.add_items("x");
  ASSERT_FALSE(s.send(grain_id{"wf.loop", "l-1"}, o));
  ASSERT_TRUE(eventually([&] {
    clk->advance(10);
    return describe_flow(s, "l-1", "wf.loop").status()
           == wire::WorkflowState::COMPLETED;
  }));
  auto info = describe_flow(s, "l-1", "wf.loop");
  Receipt r;
  ASSERT_TRUE(r.ParseFromString(info.output()));
  // Five runs, each applied its call once; the last journal holds only
  // the last run's two commands.
  EXPECT_EQ(r.total(), 5);
  EXPECT_EQ(value_of(s, "loop"), 5);
  EXPECT_EQ(info.journal_size(), 2u);
  grain_id id{"wf.loop", "l-1"};
  wire::WorkflowState st;
  ASSERT_TRUE(st.ParseFromString(
      **mem->get(column::state, keys::grain_prefix(partition_of(id, 8), id))));
  EXPECT_EQ(st.run(), 4u);
}

namespace {

// Starts an approval child and doubles its total.
class parent_flow : public workflow<parent_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wf.parent";

  task<Receipt> run(workflow_context& ctx, const Order& order) {
    auto child_id = "child-of-" + ctx.workflow_id();
    auto res = co_await ctx.child<Receipt, approval_flow>(child_id, order);
    if (!res)
      co_return res.error();
    Receipt r;
    r.set_total(res->total() * 2);
    co_return r;
  }
};

class child_test : public workflow_test {
protected:
  std::unique_ptr<silo> start_family() {
    return start_with<approval_flow, parent_flow>();
  }

  bool settled(silo& s, const std::string& id, const std::string& type) {
    return eventually([&] {
      auto st = describe_flow(s, id, type).status();
      return st == wire::WorkflowState::COMPLETED
             || st == wire::WorkflowState::FAILED;
    });
  }
};

} // namespace

TEST_F(child_test, a_parent_resumes_with_its_childs_output) {
  auto s = start_family();
  ASSERT_FALSE(s->send(grain_id{"wf.parent", "p"}, order(0)));
  ASSERT_TRUE(eventually([&] {
    return describe_flow(*s, "child-of-p", "wf.approval").status()
           == wire::WorkflowState::RUNNING;
  }));
  Number n;
  n.set_value(21);
  ASSERT_FALSE(s->send(grain_id{"wf.approval", "child-of-p"},
                       make_signal("approve", n), "approve-child"));
  ASSERT_TRUE(settled(*s, "p", "wf.parent"));
  auto info = describe_flow(*s, "p", "wf.parent");
  ASSERT_EQ(info.status(), wire::WorkflowState::COMPLETED) << info.error();
  Receipt r;
  ASSERT_TRUE(r.ParseFromString(info.output()));
  EXPECT_EQ(r.total(), 42);
}

TEST_F(child_test, cancelling_a_parent_cancels_its_child) {
  auto s = start_family();
  ASSERT_FALSE(s->send(grain_id{"wf.parent", "q"}, order(0)));
  ASSERT_TRUE(eventually([&] {
    return describe_flow(*s, "child-of-q", "wf.approval").status()
           == wire::WorkflowState::RUNNING;
  }));
  wire::CancelWorkflow cancel;
  cancel.set_reason("operator request");
  ASSERT_FALSE(s->send(grain_id{"wf.parent", "q"}, cancel, "cancel-q"));
  ASSERT_TRUE(settled(*s, "q", "wf.parent"));
  ASSERT_TRUE(settled(*s, "child-of-q", "wf.approval"));
  auto parent = describe_flow(*s, "q", "wf.parent");
  auto child = describe_flow(*s, "child-of-q", "wf.approval");
  EXPECT_EQ(parent.status(), wire::WorkflowState::FAILED);
  EXPECT_NE(parent.error().find("operator request"), std::string::npos)
      << parent.error();
  EXPECT_EQ(child.status(), wire::WorkflowState::FAILED);
  EXPECT_NE(child.error().find("cancelled"), std::string::npos)
      << child.error();
}

// -- heartbeats, queries, start options, journal limits -----------------------

namespace {

// An activity that heartbeats every 5 ms. Its first attempt stops
// heartbeating (a hung call) for `hang` and then checks whether it was
// abandoned; later attempts finish after a few beats. With `until_abandoned`
// it beats until the pool abandons it (bounded to 5 s).
struct beating_api {
  std::atomic<int> attempts{0};
  std::atomic<int> saw_abandoned{0};
  std::chrono::milliseconds hang{0};
  int beats = 4;
  bool until_abandoned = false;

  caf::expected<Number> watch(const activity_context& ctx, const Number& in) {
    auto n = ++attempts;
    auto give_up = std::chrono::steady_clock::now() + 5s;
    for (int i = 0; i < beats || until_abandoned; ++i) {
      if (!ctx.heartbeat()) {
        ++saw_abandoned;
        return make_error(errc::cancelled, "abandoned");
      }
      if (std::chrono::steady_clock::now() > give_up)
        break;
      std::this_thread::sleep_for(5ms);
    }
    if (n == 1 && hang.count() > 0) {
      std::this_thread::sleep_for(hang);
      if (!ctx.heartbeat()) {
        ++saw_abandoned;
        return make_error(errc::timeout, "hung call gave up");
      }
    }
    Number out;
    out.set_value(in.value() + 1);
    return out;
  }
};

beating_api* beats = nullptr;
activity_options watch_options;

// Publishes its stage for queries, runs the watched activity, then waits
// for an "approve" signal.
class watch_flow : public workflow<watch_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wf.watch";

  task<Receipt> run(workflow_context& ctx, const Order& order) {
    Number stage;
    stage.set_value(1);
    static_cast<void>(ctx.publish("stage", stage));
    Number in;
    in.set_value(41);
    std::string name = "watch";
    auto watched = co_await ctx.activity<Number>(name, in, watch_options);
    if (!watched)
      co_return watched.error();
    stage.set_value(2);
    static_cast<void>(ctx.publish("stage", stage));
    if (order.sleep_ms() > 0) {
      std::string signal = "approve";
      auto approved = co_await ctx.wait_signal<Number>(signal);
      if (!approved)
        co_return approved.error();
    }
    Receipt r;
    r.set_total(watched->value());
    co_return r;
  }
};

// Issues one journaled command per item; with a small journal limit the
// run fails instead of growing without bound.
class chatty_flow : public workflow<chatty_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wf.chatty";

  task<Receipt> run(workflow_context& ctx, const Order& order) {
    Receipt r;
    for (int i = 0; i < order.items_size(); ++i)
      r.set_started_ms(ctx.now());
    co_return r;
  }
};

class feature_test : public workflow_test {
protected:
  void SetUp() override {
    workflow_test::SetUp();
    beats = &api;
    watch_options = activity_options{};
    watch_options.initial_interval = 10ms;
    watch_options.max_attempts = 3;
    // Far beyond what the tests' virtual clock reaches: only the heartbeat
    // can fail an attempt here.
    watch_options.start_to_close = 600s;
    watch_options.heartbeat_timeout = 60ms;
    pool = std::make_unique<activity_pool>(3, 16);
    ASSERT_FALSE((pool->add<Number, Number>(
        "watch", [](const activity_context& ctx, const Number& in) {
          return beats->watch(ctx, in);
        })));
  }

  void TearDown() override {
    pool->stop();
    s.reset();
    beats = nullptr;
  }

  void start_watch(workflow_options opts = {}) {
    grain_registry reg;
    ASSERT_FALSE(register_workflow<watch_flow>(reg, pool.get()));
    ASSERT_FALSE(register_workflow<chatty_flow>(reg, pool.get(), opts));
    auto started = silo::start(cfg, std::move(reg),
                               std::make_unique<shared_storage>(mem), clk);
    ASSERT_TRUE(started) << describe(started.error());
    s = std::move(*started);
    pool->attach(*s);
  }

  // Polls the run, moving the manual clock by at most 20 ms per 10 ms of
  // real time (retry timers need it; start_to_close never comes near).
  wire::WorkflowInfo wait_for(const std::string& id,
                              wire::WorkflowState::Status status,
                              std::string type = "wf.watch") {
    wire::WorkflowInfo info;
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < deadline) {
      info = describe_flow(*s, id, type);
      if (info.status() == status)
        break;
      clk->advance(20);
      std::this_thread::sleep_for(10ms);
    }
    return info;
  }

  beating_api api;
  std::unique_ptr<activity_pool> pool;
  std::unique_ptr<silo> s;
};

} // namespace

TEST_F(feature_test, a_hung_attempt_fails_by_heartbeat_timeout_and_retries) {
  api.hang = 400ms;
  start_watch();
  ASSERT_FALSE(s->send(grain_id{"wf.watch", "h-1"}, order(0)));
  auto info = wait_for("h-1", wire::WorkflowState::COMPLETED);
  ASSERT_EQ(info.status(), wire::WorkflowState::COMPLETED) << info.error();
  Receipt r;
  ASSERT_TRUE(r.ParseFromString(info.output()));
  EXPECT_EQ(r.total(), 42);
  EXPECT_EQ(api.attempts.load(), 2);
  // The hung attempt learns that it was abandoned when it wakes up, and
  // its late outcome changes nothing.
  EXPECT_TRUE(eventually([&] { return api.saw_abandoned.load() == 1; }));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(describe_flow(*s, "h-1", "wf.watch").status(),
            wire::WorkflowState::COMPLETED);
}

TEST_F(feature_test, heartbeats_keep_a_long_attempt_alive) {
  // 40 beats of 5+ ms outlast the 60 ms heartbeat timeout three times over.
  api.beats = 40;
  watch_options.heartbeat_timeout = 60ms;
  start_watch();
  ASSERT_FALSE(s->send(grain_id{"wf.watch", "h-2"}, order(0)));
  auto info = wait_for("h-2", wire::WorkflowState::COMPLETED);
  ASSERT_EQ(info.status(), wire::WorkflowState::COMPLETED) << info.error();
  EXPECT_EQ(api.attempts.load(), 1);
  EXPECT_EQ(api.saw_abandoned.load(), 0);
}

TEST_F(feature_test, cancelling_a_workflow_abandons_its_running_activity) {
  api.until_abandoned = true;
  start_watch();
  ASSERT_FALSE(s->send(grain_id{"wf.watch", "h-3"}, order(0)));
  ASSERT_TRUE(eventually([&] { return api.attempts.load() == 1; }));
  wire::CancelWorkflow cancel;
  cancel.set_reason("operator");
  ASSERT_FALSE(s->send(grain_id{"wf.watch", "h-3"}, cancel));
  auto info = wait_for("h-3", wire::WorkflowState::FAILED);
  ASSERT_EQ(info.status(), wire::WorkflowState::FAILED);
  EXPECT_NE(info.error().find("operator"), std::string::npos) << info.error();
  // The activity's next heartbeat tells it to stop, long before its 5 s.
  EXPECT_TRUE(eventually([&] { return api.saw_abandoned.load() == 1; }, 2s));
}

TEST_F(feature_test, queries_read_published_values_without_replaying) {
  start_watch();
  grain_id id{"wf.watch", "q-1"};
  ASSERT_FALSE(s->send(id, order(1)));
  ASSERT_TRUE(eventually([&] {
    auto stage = query_workflow<Number>(*s, id, "stage");
    return stage && stage->value() == 2;
  }));
  auto missing = query_workflow<Number>(*s, id, "no-such-name");
  ASSERT_FALSE(missing);
  EXPECT_EQ(code_of(missing.error()), errc::not_found);
  auto wrong_type = query_workflow<Receipt>(*s, id, "stage");
  ASSERT_FALSE(wrong_type);
  EXPECT_NE(describe(wrong_type.error()).find("granary.wftest.Number"),
            std::string::npos);
  // After a restart the value is read from the stored state: the query
  // neither replays the code nor runs the activity again.
  pool->stop();
  s.reset();
  pool = std::make_unique<activity_pool>(1, 4);
  ASSERT_FALSE((pool->add<Number, Number>(
      "watch", [](const activity_context& ctx, const Number& in) {
        return beats->watch(ctx, in);
      })));
  start_watch();
  auto stage = query_workflow<Number>(*s, id, "stage");
  ASSERT_TRUE(stage) << describe(stage.error());
  EXPECT_EQ(stage->value(), 2);
  EXPECT_EQ(api.attempts.load(), 1);
  ASSERT_FALSE(s->send(id, make_signal("approve", Number{})));
  EXPECT_EQ(wait_for("q-1", wire::WorkflowState::COMPLETED).status(),
            wire::WorkflowState::COMPLETED);
}

TEST_F(feature_test, a_start_can_return_the_existing_run_or_be_rejected) {
  start_watch();
  grain_id id{"wf.watch", "s-1"};
  auto start = std::make_shared<wire::StartWorkflow>();
  start->set_input_type(std::string{Order::descriptor()->full_name()});
  order(1).SerializeToString(start->mutable_input());
  start->set_reject_if_exists(true);
  auto first = s->call(id, start);
  ASSERT_TRUE(first) << describe(first.error());
  EXPECT_TRUE(static_cast<const wire::WorkflowInfo&>(**first).started());
  // Rejected: the id is taken.
  auto second = s->call(id, start);
  ASSERT_FALSE(second);
  EXPECT_EQ(code_of(second.error()), errc::already_exists);
  EXPECT_NE(describe(second.error()).find("RUNNING"), std::string::npos)
      << describe(second.error());
  // Idempotent: the existing run is returned, not started again.
  auto again = std::make_shared<wire::StartWorkflow>(*start);
  again->set_reject_if_exists(false);
  auto third = s->call(id, again);
  ASSERT_TRUE(third) << describe(third.error());
  EXPECT_FALSE(static_cast<const wire::WorkflowInfo&>(**third).started());
  // A durable rejected start is answered, not retried into a dead letter.
  ASSERT_FALSE(s->send(id, *start));
  std::this_thread::sleep_for(50ms);
  EXPECT_TRUE(s->dead_letters()->empty());
  // A start with the wrong input type says what the workflow takes.
  auto wrong = std::make_shared<wire::StartWorkflow>();
  wrong->set_input_type("granary.wftest.Number");
  auto bad = s->call(grain_id{"wf.watch", "s-2"}, wrong);
  ASSERT_FALSE(bad);
  EXPECT_EQ(code_of(bad.error()), errc::invalid_argument);
  EXPECT_NE(describe(bad.error()).find("granary.wftest.Order"),
            std::string::npos);
  EXPECT_EQ(api.attempts.load(), 1);
}

TEST_F(feature_test, a_run_that_reaches_its_journal_limit_fails_clearly) {
  workflow_options opts;
  opts.journal_warn = 2;
  opts.journal_limit = 5;
  start_watch(opts);
  Order big;
  for (int i = 0; i < 10; ++i)
    big.add_items("x");
  ASSERT_FALSE(s->send(grain_id{"wf.chatty", "j-1"}, big));
  auto info = wait_for("j-1", wire::WorkflowState::FAILED, "wf.chatty");
  ASSERT_EQ(info.status(), wire::WorkflowState::FAILED);
  EXPECT_NE(info.error().find("journal limit of 5"), std::string::npos)
      << info.error();
  EXPECT_NE(info.error().find("continue-as-new"), std::string::npos);
  EXPECT_EQ(info.journal_size(), 5u);
  // Small runs are unaffected.
  Order small;
  small.add_items("x");
  ASSERT_FALSE(s->send(grain_id{"wf.chatty", "j-2"}, small));
  EXPECT_EQ(
      wait_for("j-2", wire::WorkflowState::COMPLETED, "wf.chatty").status(),
      wire::WorkflowState::COMPLETED);
}

TEST(workflow_options_test, contradictory_journal_limits_are_refused) {
  grain_registry reg;
  workflow_options opts;
  opts.journal_warn = 10;
  opts.journal_limit = 5;
  auto err = register_workflow<chatty_flow>(reg, nullptr, opts);
  ASSERT_TRUE(err);
  EXPECT_EQ(code_of(err), errc::invalid_config);
  EXPECT_NE(describe(err).find("journal_warn"), std::string::npos);
}

// -- updates
// -------------------------------------------------------------------

namespace {

// Adds every "add" update to a running total and answers with the total;
// an update of 0 ends the run.
class tally_flow : public workflow<tally_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wf.tally";

  task<Receipt> run(workflow_context& ctx, const Order&) {
    int64_t total = 0;
    std::string name = "add";
    for (int i = 0; i < 100; ++i) {
      auto u = co_await ctx.wait_update<Number>(name);
      if (!u)
        co_return u.error();
      total += u->request.value();
      Number answer;
      answer.set_value(total);
      if (auto err = ctx.reply_update(*u, answer))
        co_return err;
      if (u->request.value() == 0)
        break;
    }
    Receipt r;
    r.set_total(total);
    co_return r;
  }
};

// Sends one update to tally "t-grain" as a durable call and returns the
// answer it got.
class updater_flow : public workflow<updater_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wf.updater";

  task<Receipt> run(workflow_context& ctx, const Order& order) {
    Number n;
    n.set_value(order.sleep_ms());
    auto update = make_update("add", "from-" + ctx.workflow_id(), n);
    auto target = id_of<tally_flow>("t-grain");
    auto answer = co_await ctx.call<Number>(target, update);
    if (!answer)
      co_return answer.error();
    Receipt r;
    r.set_total(answer->value());
    co_return r;
  }
};

} // namespace

TEST_F(workflow_test, updates_are_answered_once_by_the_code) {
  auto s = start_with<tally_flow, updater_flow>();
  ASSERT_TRUE(s);
  grain_id tally{"wf.tally", "t-1"};
  ASSERT_FALSE(s->send(tally, order(0)));
  Number five;
  five.set_value(5);
  auto first = update_workflow<Number>(*s, tally, "add", "u1", five, 5s);
  ASSERT_TRUE(first) << describe(first.error());
  EXPECT_EQ(first->value(), 5);
  Number three;
  three.set_value(3);
  auto second = update_workflow<Number>(*s, tally, "add", "u2", three, 5s);
  ASSERT_TRUE(second) << describe(second.error());
  EXPECT_EQ(second->value(), 8);
  // Retrying an update id is delivered once and returns the same answer.
  auto retried = update_workflow<Number>(*s, tally, "add", "u2", three, 5s);
  ASSERT_TRUE(retried) << describe(retried.error());
  EXPECT_EQ(retried->value(), 8);
  // A transient update without an id is refused with a clear message.
  auto no_id = s->call(
      tally, std::make_shared<wire::Update>(make_update("add", "", three)));
  ASSERT_FALSE(no_id);
  EXPECT_NE(describe(no_id.error()).find("needs an id"), std::string::npos);
  Number zero;
  ASSERT_TRUE(update_workflow<Number>(*s, tally, "add", "u3", zero, 5s));
  ASSERT_TRUE(eventually([&] {
    return describe_flow(*s, "t-1", "wf.tally").status()
           == wire::WorkflowState::COMPLETED;
  }));
  Receipt r;
  ASSERT_TRUE(r.ParseFromString(describe_flow(*s, "t-1", "wf.tally").output()));
  EXPECT_EQ(r.total(), 8);
  // A finished workflow refuses updates.
  auto late = s->call(
      tally, std::make_shared<wire::Update>(make_update("add", "u4", three)));
  ASSERT_FALSE(late);
  EXPECT_NE(describe(late.error()).find("COMPLETED"), std::string::npos);
}

TEST_F(workflow_test, a_grains_durable_call_gets_the_update_answer_as_reply) {
  auto s = start_with<tally_flow, updater_flow>();
  ASSERT_TRUE(s);
  ASSERT_FALSE(s->send(grain_id{"wf.tally", "t-grain"}, order(0)));
  Order o;
  o.set_sleep_ms(4);
  ASSERT_FALSE(s->send(grain_id{"wf.updater", "up-1"}, o));
  ASSERT_TRUE(eventually([&] {
    return describe_flow(*s, "up-1", "wf.updater").status()
           == wire::WorkflowState::COMPLETED;
  }));
  Receipt r;
  ASSERT_TRUE(
      r.ParseFromString(describe_flow(*s, "up-1", "wf.updater").output()));
  EXPECT_EQ(r.total(), 4);
}

// The typed workflow client in process: start, result (which waits),
// describe (what a run waits on), signal, query, update and cancel; and
// signals to finished runs, which are answered instead of dead-lettered.

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "actors/workflow_client.hpp"
#include "runtime/log.hpp"
#include "testing/log_capture.hpp"
#include "workflow_client_flows.hpp"

using namespace granary;
using namespace granary::testing;
using namespace granary::wcflows;
using namespace std::chrono_literals;

namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

class workflow_client_test : public ::testing::Test {
protected:
  void SetUp() override {
    flaky_fails = true;
    mem = std::make_shared<memory_storage>();
    clk = std::make_shared<manual_clock>();
    cfg = test_config();
    auto services = std::make_shared<service_registry>();
    watch = std::make_shared<workflow_watch>();
    ASSERT_FALSE(services->add(watch));
    cfg.services = services;
    start_silo();
  }

  void TearDown() override {
    stop_silo();
    flaky_fails = false;
  }

  void start_silo() {
    pool = failing_pool();
    ASSERT_TRUE(pool);
    grain_registry reg;
    ASSERT_FALSE(register_flows(reg, pool.get()));
    auto started = silo::start(cfg, std::move(reg),
                               std::make_unique<shared_storage>(mem), clk);
    ASSERT_TRUE(started) << describe(started.error());
    s = std::move(*started);
    pool->attach(*s);
    client = std::make_unique<silo_workflow_client>(*s, 5s);
  }

  void stop_silo() {
    client.reset();
    // The pool reports to the silo: stop it first.
    if (pool)
      pool->stop();
    s.reset();
  }

  // Rewrites the stored state of run `id` while no silo runs.
  void edit_stored(const std::string& id,
                   const std::function<void(wire::WorkflowState&)>& edit) {
    edit_stored_workflow(*mem, cfg.partitions, grain_id{"wc.waiter", id}, edit);
  }

  // The one thing run `id` waits on, once it waits.
  wire::WaitingOn waits_on(const std::string& id) {
    return wcflows::waits_on(*client, id);
  }

  std::shared_ptr<memory_storage> mem;
  std::shared_ptr<manual_clock> clk;
  std::shared_ptr<workflow_watch> watch;
  silo_config cfg;
  std::unique_ptr<activity_pool> pool;
  std::unique_ptr<silo> s;
  std::unique_ptr<silo_workflow_client> client;
};

} // namespace

TEST_F(workflow_client_test, start_tells_a_new_run_from_an_existing_one) {
  auto first = client->start<waiter_flow>("st-1", waiting_on("signal"));
  ASSERT_TRUE(first) << describe(first.error());
  EXPECT_TRUE(first->started());
  EXPECT_EQ(first->status(), wire::WorkflowState::RUNNING);
  auto again = client->start<waiter_flow>("st-1", waiting_on("timer"));
  ASSERT_TRUE(again) << describe(again.error());
  EXPECT_FALSE(again->started());
  start_options reject;
  reject.reject_if_exists = true;
  auto refused
      = client->start<waiter_flow>("st-1", waiting_on("signal"), reject);
  ASSERT_FALSE(refused);
  EXPECT_EQ(code_of(refused.error()), errc::already_exists);
  // By type name, with an input the workflow does not take.
  auto wrong = client->start("wc.waiter", "st-2", number(1));
  ASSERT_FALSE(wrong);
  EXPECT_EQ(code_of(wrong.error()), errc::invalid_argument);
  EXPECT_TRUE(contains(describe(wrong.error()), "takes granary.wftest.Order"))
      << describe(wrong.error());
}

TEST_F(workflow_client_test, result_waits_for_the_run_and_returns_its_output) {
  ASSERT_TRUE(client->start<waiter_flow>("r-1", waiting_on("signal")));
  // The signal comes from another thread once the run waits for it, while
  // this one waits in `result`.
  std::thread signaller{[&] {
    auto w = waits_on("r-1");
    EXPECT_EQ(w.kind(), wire::WaitingOn::SIGNAL);
    EXPECT_FALSE(
        client->signal<waiter_flow>("r-1", "approve", number(42), "sig-r-1"));
  }};
  auto out = client->result<waiter_flow>("r-1", 10s);
  signaller.join();
  ASSERT_TRUE(out) << describe(out.error());
  EXPECT_EQ(out->total(), 42);
  // A finished run answers at once, by type name too.
  auto again = client->result<Receipt>("wc.waiter", "r-1", 0ms);
  ASSERT_TRUE(again) << describe(again.error());
  EXPECT_EQ(again->total(), 42);
  // The output is a Receipt, not a Number.
  auto wrong = client->result<Number>("wc.waiter", "r-1", 0ms);
  ASSERT_FALSE(wrong);
  EXPECT_EQ(code_of(wrong.error()), errc::malformed_message);
}

TEST_F(workflow_client_test, result_of_a_failed_run_is_its_error) {
  ASSERT_TRUE(client->start<waiter_flow>("f-1", waiting_on("fail")));
  auto out = client->result<waiter_flow>("f-1", 10s);
  ASSERT_FALSE(out);
  EXPECT_EQ(code_of(out.error()), errc::invalid_argument);
  EXPECT_EQ(describe(out.error()), "invalid_argument: order f-1 is bad");
  auto info = client->describe<waiter_flow>("f-1");
  ASSERT_TRUE(info);
  EXPECT_EQ(info->status(), wire::WorkflowState::FAILED);
  EXPECT_EQ(info->error_code(), static_cast<uint32_t>(errc::invalid_argument));
}

TEST_F(workflow_client_test, result_of_a_run_stored_before_error_codes) {
  ASSERT_TRUE(client->start<waiter_flow>("f-2", waiting_on("fail")));
  ASSERT_FALSE(client->result<waiter_flow>("f-2", 10s));
  // A record written before WorkflowState.error_code: the code comes from
  // the error text.
  stop_silo();
  edit_stored("f-2", [](wire::WorkflowState& st) { st.clear_error_code(); });
  start_silo();
  auto out = client->result<waiter_flow>("f-2", 10s);
  ASSERT_FALSE(out);
  EXPECT_EQ(code_of(out.error()), errc::invalid_argument);
  EXPECT_EQ(describe(out.error()), "invalid_argument: order f-2 is bad");
}

TEST_F(workflow_client_test, result_times_out_naming_what_the_run_waits_on) {
  ASSERT_TRUE(client->start<waiter_flow>("t-1", waiting_on("signal")));
  waits_on("t-1");
  auto out = client->result<waiter_flow>("t-1", 20ms);
  ASSERT_FALSE(out);
  EXPECT_EQ(code_of(out.error()), errc::timeout);
  auto text = describe(out.error());
  EXPECT_TRUE(contains(text, "did not finish within 20 ms (it is RUNNING)"))
      << text;
  EXPECT_TRUE(contains(text, "signal 'approve' (seq 0), no timeout")) << text;
  // A run that never started is not waited for.
  auto none = client->result<waiter_flow>("nobody", 10s);
  ASSERT_FALSE(none);
  EXPECT_EQ(code_of(none.error()), errc::not_found);
  EXPECT_TRUE(contains(describe(none.error()), "never started"));
}

TEST_F(workflow_client_test, describe_shows_a_timer_with_its_due_time) {
  auto t0 = clk->now_ms();
  ASSERT_TRUE(
      client->start<waiter_flow>("d-timer", waiting_on("timer", 60'000)));
  auto w = waits_on("d-timer");
  EXPECT_EQ(w.kind(), wire::WaitingOn::TIMER);
  EXPECT_EQ(w.target(), "60000");
  EXPECT_EQ(w.due_ms(), t0 + 60'000);
  EXPECT_EQ(to_string(w),
            "timer of 60000 ms (seq 0) until 1970-01-01T00:17:40.000Z");
  clk->advance(60'000);
  ASSERT_TRUE(client->result<waiter_flow>("d-timer", 10s));
  EXPECT_FALSE(client->describe<waiter_flow>("d-timer")->waiting_count());
}

TEST_F(workflow_client_test, describe_shows_a_signal_and_its_timeout) {
  auto t0 = clk->now_ms();
  ASSERT_TRUE(
      client->start<waiter_flow>("d-signal", waiting_on("signal", 5'000)));
  auto w = waits_on("d-signal");
  EXPECT_EQ(w.kind(), wire::WaitingOn::SIGNAL);
  EXPECT_EQ(w.target(), "approve");
  EXPECT_EQ(w.payload_type(), "granary.wftest.Number");
  EXPECT_EQ(w.due_ms(), t0 + 5'000);
  EXPECT_TRUE(contains(to_string(w), "signal 'approve' (seq 0), times out at "
                                     "1970-01-01T00:16:45.000Z"))
      << to_string(w);
  clk->advance(5'000);
  auto out = client->result<waiter_flow>("d-signal", 10s);
  ASSERT_FALSE(out);
  EXPECT_EQ(code_of(out.error()), errc::timeout);
  EXPECT_TRUE(contains(describe(out.error()), "no signal 'approve'"));
}

TEST_F(workflow_client_test, describe_shows_an_update) {
  ASSERT_TRUE(client->start<waiter_flow>("d-update", waiting_on("update")));
  auto w = waits_on("d-update");
  EXPECT_EQ(w.kind(), wire::WaitingOn::UPDATE);
  EXPECT_EQ(w.target(), "add");
  EXPECT_EQ(to_string(w), "update 'add' (seq 0), no timeout");
}

TEST_F(workflow_client_test, describe_shows_a_child_workflow) {
  ASSERT_TRUE(client->start<waiter_flow>("d-child", waiting_on("child")));
  auto w = waits_on("d-child");
  EXPECT_EQ(w.kind(), wire::WaitingOn::CHILD);
  EXPECT_EQ(w.target(), "wc.waiter/d-child.child");
  // The child itself waits for its signal; signalled, both finish.
  EXPECT_EQ(waits_on("d-child.child").kind(), wire::WaitingOn::SIGNAL);
  ASSERT_FALSE(
      client->signal<waiter_flow>("d-child.child", "approve", number(9)));
  auto out = client->result<waiter_flow>("d-child", 10s);
  ASSERT_TRUE(out) << describe(out.error());
  EXPECT_EQ(out->total(), 9);
}

TEST_F(workflow_client_test, describe_shows_a_grain_call) {
  ASSERT_TRUE(client->start<waiter_flow>("d-call", waiting_on("call")));
  auto w = waits_on("d-call");
  EXPECT_EQ(w.kind(), wire::WaitingOn::CALL);
  EXPECT_EQ(w.target(), "test.probe/flaky");
  EXPECT_EQ(to_string(w),
            "call to test.probe/flaky (granary.testing.Flaky) (seq 0)");
}

TEST_F(workflow_client_test, describe_shows_an_activity_attempt_and_its_error) {
  auto t0 = clk->now_ms();
  ASSERT_TRUE(client->start<waiter_flow>("d-act", waiting_on("activity")));
  // The first attempt fails at once; the second waits an hour.
  wire::WaitingOn w;
  ASSERT_TRUE(eventually([&] {
    w = waits_on("d-act");
    return w.attempt() == 2;
  }));
  EXPECT_EQ(w.kind(), wire::WaitingOn::ACTIVITY);
  EXPECT_EQ(w.target(), "charge");
  EXPECT_EQ(w.max_attempts(), 5u);
  EXPECT_FALSE(w.running());
  EXPECT_EQ(w.due_ms(), t0 + 3'600'000);
  EXPECT_EQ(w.last_error_code(), static_cast<uint32_t>(errc::handler_failed));
  EXPECT_EQ(w.last_error(), "handler_failed: cloud API answered 503");
  EXPECT_EQ(to_string(w),
            "activity 'charge' (seq 0): attempt 2 of 5 starts at "
            "1970-01-01T01:16:40.000Z; last error: handler_failed: cloud API "
            "answered 503");
  // The second attempt is on the pool and fails, to wait again.
  clk->advance(3'600'000);
  ASSERT_TRUE(eventually([&] {
    w = waits_on("d-act");
    return w.attempt() == 3;
  }));
  EXPECT_FALSE(w.running());
}

TEST_F(workflow_client_test, query_update_and_cancel) {
  ASSERT_TRUE(client->start<waiter_flow>("q-1", waiting_on("update")));
  auto progress = client->query<waiter_flow, Number>("q-1", "progress");
  ASSERT_TRUE(progress) << describe(progress.error());
  EXPECT_EQ(progress->value(), 1);
  auto nothing = client->query<Number>("wc.waiter", "q-1", "nothing");
  ASSERT_FALSE(nothing);
  EXPECT_EQ(code_of(nothing.error()), errc::not_found);
  // Without an update id, the client makes one up.
  auto answer
      = client->update<waiter_flow, Number>("q-1", "add", number(5), 10s);
  ASSERT_TRUE(answer) << describe(answer.error());
  EXPECT_EQ(answer->value(), 105);
  auto out = client->result<waiter_flow>("q-1", 10s);
  ASSERT_TRUE(out) << describe(out.error());
  EXPECT_EQ(out->total(), 5);
  // A finished run takes no update.
  auto late = client->update<Number>("wc.waiter", "q-1", "add", number(1), 10s);
  ASSERT_FALSE(late);
  EXPECT_EQ(code_of(late.error()), errc::invalid_argument);
  EXPECT_TRUE(contains(describe(late.error()), "is COMPLETED"));
  // Cancelling fails the pending wait; the run fails with it.
  ASSERT_TRUE(client->start<waiter_flow>("c-1", waiting_on("signal")));
  waits_on("c-1");
  ASSERT_FALSE(client->cancel<waiter_flow>("c-1", "not needed", "cancel-1"));
  auto cancelled = client->result<waiter_flow>("c-1", 10s);
  ASSERT_FALSE(cancelled);
  EXPECT_EQ(code_of(cancelled.error()), errc::cancelled);
  EXPECT_TRUE(contains(describe(cancelled.error()), "not needed"));
  auto unknown = client->cancel<waiter_flow>("nobody", "why");
  EXPECT_EQ(code_of(unknown), errc::not_found);
}

TEST_F(workflow_client_test, a_settling_run_wakes_its_watchers) {
  grain_id id{"wc.waiter", "w-1"};
  auto sub = watch->watch(id);
  ASSERT_TRUE(sub);
  ASSERT_TRUE(client->start<waiter_flow>("w-1", waiting_on("signal")));
  waits_on("w-1");
  ASSERT_FALSE(client->signal<waiter_flow>("w-1", "approve", number(1)));
  // Woken by the finishing turn, not by the (far) deadline.
  EXPECT_TRUE(sub.wait_until(std::chrono::steady_clock::now() + 60s));
}

TEST(workflow_watch_test, wakes_only_the_watchers_of_the_settled_id) {
  workflow_watch watch;
  grain_id a{"wf", "a"};
  grain_id b{"wf", "b"};
  auto on_a = watch.watch(a);
  auto on_b = watch.watch(b);
  // A settling before anyone waits is not lost.
  watch.settled(a);
  EXPECT_TRUE(on_a.wait_until(std::chrono::steady_clock::now() + 60s));
  std::thread settler{[&] { watch.settled(b); }};
  EXPECT_TRUE(on_b.wait_until(std::chrono::steady_clock::now() + 60s));
  settler.join();
  // Nothing settled a since: the wait ends at its deadline.
  EXPECT_FALSE(on_a.wait_until(std::chrono::steady_clock::now()));
  // Ids nobody watches are not tracked.
  watch.settled(grain_id{"wf", "c"});
}

// -- signals to finished runs ------------------------------------------------

TEST_F(workflow_client_test, a_signal_to_a_finished_run_is_answered) {
  ASSERT_TRUE(client->start<waiter_flow>("done-1", waiting_on("signal")));
  ASSERT_FALSE(client->signal<waiter_flow>("done-1", "approve", number(1)));
  ASSERT_TRUE(client->result<waiter_flow>("done-1", 10s));
  log_capture logs;
  // The client: refused at once.
  auto err = client->signal<waiter_flow>("done-1", "approve", number(2));
  EXPECT_EQ(code_of(err), errc::invalid_argument);
  EXPECT_TRUE(contains(describe(err), "has finished (COMPLETED)"))
      << describe(err);
  // A transient call: answered with the error.
  grain_id id{"wc.waiter", "done-1"};
  auto call = s->call(
      id, std::make_shared<wire::Signal>(make_signal("approve", number(3))));
  ASSERT_FALSE(call);
  EXPECT_EQ(code_of(call.error()), errc::invalid_argument);
  // A grain's durable call: the reply carries the error.
  Order target;
  target.add_items("done-1");
  ASSERT_TRUE(client->start<signaller_flow>("sig-1", target));
  auto out = client->result<signaller_flow>("sig-1", 10s);
  ASSERT_FALSE(out);
  EXPECT_EQ(code_of(out.error()), errc::invalid_argument);
  EXPECT_TRUE(contains(describe(out.error()), "signal 'approve' is not "
                                              "delivered"))
      << describe(out.error());
  // A client's durable send has nobody to answer: it is taken and dropped,
  // not failed into retries and a dead letter. (Its turn ran before the
  // acknowledgement.)
  auto failed_before = s->stats().failed_turns;
  ASSERT_FALSE(s->send(id, make_signal("approve", number(4)), "late-1"));
  EXPECT_EQ(s->stats().failed_turns, failed_before);
  auto letters = s->dead_letters();
  ASSERT_TRUE(letters);
  EXPECT_TRUE(letters->empty());
  auto warned = logs.lines(log_level::warning);
  EXPECT_TRUE(warned.empty()) << warned.front();
}

TEST_F(workflow_client_test, a_resumed_run_is_running_again) {
  ASSERT_TRUE(client->start<waiter_flow>("sus-1", waiting_on("signal")));
  waits_on("sus-1");
  // Make the journal disagree with the code: its wait becomes a sleep.
  auto kind_of_first = [](wire::JournalEntry::Kind kind) {
    return [kind](wire::WorkflowState& st) {
      ASSERT_EQ(st.journal_size(), 1);
      st.mutable_journal(0)->set_kind(kind);
    };
  };
  stop_silo();
  edit_stored("sus-1", kind_of_first(wire::JournalEntry::SLEEP));
  start_silo();
  grain_id id{"wc.waiter", "sus-1"};
  ASSERT_FALSE(s->send(id, wire::ResumeWorkflow{}));
  ASSERT_TRUE(eventually([&] {
    auto d = client->describe<waiter_flow>("sus-1");
    return d && d->status() == wire::WorkflowState::SUSPENDED;
  }));
  auto timed_out = client->result<waiter_flow>("sus-1", 10ms);
  ASSERT_FALSE(timed_out);
  EXPECT_TRUE(contains(describe(timed_out.error()), "it is SUSPENDED: "))
      << describe(timed_out.error());
  // The journal is fixed (as a code fix would): the resumed run waits on
  // its signal again, RUNNING.
  stop_silo();
  edit_stored("sus-1", kind_of_first(wire::JournalEntry::SIGNAL));
  start_silo();
  ASSERT_FALSE(s->send(id, wire::ResumeWorkflow{}));
  auto w = waits_on("sus-1");
  EXPECT_EQ(w.kind(), wire::WaitingOn::SIGNAL);
  EXPECT_TRUE(client->describe<waiter_flow>("sus-1")->error().empty());
}

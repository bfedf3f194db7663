// The typed workflow client over the HTTP gateway, against a gateway on a
// silo on memory storage: the same calls as in process, through real HTTP
// on loopback.

#include <chrono>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "gateway/gateway.hpp"
#include "gateway/workflow_client_http.hpp"
#include "workflow_client_flows.hpp"

using namespace granary;
using namespace granary::cluster;
using namespace granary::testing;
using namespace granary::wcflows;
using namespace std::chrono_literals;

namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

class workflow_client_http_test : public ::testing::Test {
protected:
  void SetUp() override {
    flaky_fails = true;
    clk = std::make_shared<manual_clock>();
    pool = failing_pool();
    ASSERT_TRUE(pool);
    grain_registry reg;
    ASSERT_FALSE(register_flows(reg, pool.get()));
    auto s = silo::start(test_config(), std::move(reg),
                         std::make_unique<shared_storage>(mem), clk);
    ASSERT_TRUE(s) << describe(s.error());
    silo_ = std::move(*s);
    pool->attach(*silo_);
    gateway_config gcfg;
    // Small, so that a result waits in several rounds.
    gcfg.max_wait = 50ms;
    auto g = gateway::start(gcfg, *silo_);
    ASSERT_TRUE(g) << describe(g.error());
    gw = std::move(*g);
    client = std::make_unique<http_workflow_client>(
        endpoint{"127.0.0.1", gw->port()}, 10s);
  }

  void TearDown() override {
    client.reset();
    if (gw)
      gw->stop();
    gw.reset();
    if (pool)
      pool->stop();
    silo_.reset();
    flaky_fails = false;
  }

  // The one thing run `id` waits on, once it waits.
  wire::WaitingOn waits_on(const std::string& id) {
    return wcflows::waits_on(*client, id);
  }

  std::shared_ptr<memory_storage> mem = std::make_shared<memory_storage>();
  std::shared_ptr<manual_clock> clk;
  std::unique_ptr<activity_pool> pool;
  std::unique_ptr<silo> silo_;
  std::unique_ptr<gateway> gw;
  std::unique_ptr<http_workflow_client> client;
};

} // namespace

TEST_F(workflow_client_http_test, start_signal_and_wait_for_the_result) {
  auto started = client->start<waiter_flow>("h-1", waiting_on("signal"));
  ASSERT_TRUE(started) << describe(started.error());
  EXPECT_TRUE(started->started());
  auto again = client->start<waiter_flow>("h-1", waiting_on("signal"));
  ASSERT_TRUE(again) << describe(again.error());
  EXPECT_FALSE(again->started());
  start_options reject;
  reject.reject_if_exists = true;
  auto refused
      = client->start<waiter_flow>("h-1", waiting_on("signal"), reject);
  ASSERT_FALSE(refused);
  EXPECT_EQ(code_of(refused.error()), errc::already_exists);
  auto w = waits_on("h-1");
  EXPECT_EQ(w.kind(), wire::WaitingOn::SIGNAL);
  EXPECT_EQ(w.target(), "approve");
  // The signal comes from another client while this one waits in
  // `result` (the timeout test below covers several rounds of the
  // gateway's 50 ms bound).
  std::thread signaller{[&] {
    http_workflow_client other{endpoint{"127.0.0.1", gw->port()}, 10s};
    EXPECT_FALSE(
        other.signal<waiter_flow>("h-1", "approve", number(42), "sig-h-1"));
  }};
  auto out = client->result<waiter_flow>("h-1", 10s);
  signaller.join();
  ASSERT_TRUE(out) << describe(out.error());
  EXPECT_EQ(out->total(), 42);
  // A finished run refuses signals.
  auto late = client->signal<waiter_flow>("h-1", "approve", number(1));
  EXPECT_EQ(code_of(late), errc::invalid_argument);
}

TEST_F(workflow_client_http_test, failures_timeouts_and_unknown_runs) {
  ASSERT_TRUE(client->start<waiter_flow>("h-fail", waiting_on("fail")));
  auto failed = client->result<waiter_flow>("h-fail", 10s);
  ASSERT_FALSE(failed);
  EXPECT_EQ(code_of(failed.error()), errc::invalid_argument);
  EXPECT_EQ(describe(failed.error()), "invalid_argument: order h-fail is bad");
  ASSERT_TRUE(client->start<waiter_flow>("h-wait", waiting_on("signal")));
  waits_on("h-wait");
  auto pending = client->result<waiter_flow>("h-wait", 120ms);
  ASSERT_FALSE(pending);
  EXPECT_EQ(code_of(pending.error()), errc::timeout);
  EXPECT_TRUE(contains(describe(pending.error()), "signal 'approve'"))
      << describe(pending.error());
  auto none = client->result<waiter_flow>("nobody", 10s);
  ASSERT_FALSE(none);
  EXPECT_EQ(code_of(none.error()), errc::not_found);
  auto undescribed = client->describe<waiter_flow>("nobody");
  ASSERT_FALSE(undescribed);
  EXPECT_EQ(code_of(undescribed.error()), errc::not_found);
}

TEST_F(workflow_client_http_test, describe_shows_an_activity_attempt) {
  auto t0 = clk->now_ms();
  ASSERT_TRUE(client->start<waiter_flow>("h-act", waiting_on("activity")));
  wire::WaitingOn w;
  ASSERT_TRUE(eventually([&] {
    w = waits_on("h-act");
    return w.attempt() == 2;
  }));
  EXPECT_EQ(w.kind(), wire::WaitingOn::ACTIVITY);
  EXPECT_EQ(w.target(), "charge");
  EXPECT_EQ(w.max_attempts(), 5u);
  EXPECT_EQ(w.due_ms(), t0 + 3'600'000);
  EXPECT_EQ(w.last_error(), "handler_failed: cloud API answered 503");
}

TEST_F(workflow_client_http_test, query_update_and_cancel) {
  ASSERT_TRUE(client->start<waiter_flow>("h-q", waiting_on("update")));
  auto progress = client->query<waiter_flow, Number>("h-q", "progress");
  ASSERT_TRUE(progress) << describe(progress.error());
  EXPECT_EQ(progress->value(), 1);
  auto nothing = client->query<waiter_flow, Number>("h-q", "nothing");
  ASSERT_FALSE(nothing);
  EXPECT_EQ(code_of(nothing.error()), errc::not_found);
  auto answer = client->update<waiter_flow, Number>("h-q", "add", number(5),
                                                    10s, "u-1");
  ASSERT_TRUE(answer) << describe(answer.error());
  EXPECT_EQ(answer->value(), 105);
  auto out = client->result<waiter_flow>("h-q", 10s);
  ASSERT_TRUE(out) << describe(out.error());
  EXPECT_EQ(out->total(), 5);
  ASSERT_TRUE(client->start<waiter_flow>("h-c", waiting_on("timer", 60'000)));
  waits_on("h-c");
  ASSERT_FALSE(client->cancel<waiter_flow>("h-c", "not needed", "cancel-1"));
  auto cancelled = client->result<waiter_flow>("h-c", 10s);
  ASSERT_FALSE(cancelled);
  EXPECT_EQ(code_of(cancelled.error()), errc::cancelled);
}

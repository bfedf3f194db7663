// The HTTP/JSON gateway over a real silo on memory storage, through real
// HTTP on loopback (and the C++ client the CLI uses).

#include <chrono>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "actors/workflow.hpp"
#include "cluster/gateway.hpp"
#include "cluster/gateway_client.hpp"
#include "cluster/gateway_history.hpp"
#include "test_grains.hpp"
#include "workflow_test.pb.h"

using namespace granary;
using namespace granary::cluster;
using namespace granary::test;
using namespace granary::wftest;
using namespace std::chrono_literals;

namespace {

// Publishes its progress, answers one "add" update, then waits for an
// "approve" signal and returns its value.
class gate_flow : public workflow<gate_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "gw.gate";

  task<Receipt> run(workflow_context& ctx, const Order& order) {
    Number progress;
    progress.set_value(1);
    if (auto err = ctx.publish("progress", progress))
      co_return err;
    std::string add = "add";
    auto u = co_await ctx.wait_update<Number>(add);
    if (!u)
      co_return u.error();
    Number answer;
    answer.set_value(u->request.value() + 100);
    if (auto err = ctx.reply_update(*u, answer))
      co_return err;
    std::string approve = "approve";
    auto approved = co_await ctx.wait_signal<Number>(approve);
    if (!approved)
      co_return approved.error();
    Receipt r;
    r.set_total(approved->value());
    co_return r;
  }
};

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

class gateway_test : public ::testing::Test {
protected:
  void SetUp() override {
    silo_config cfg;
    cfg.partitions = 8;
    cfg.max_attempts = 1;
    cfg.retry_initial = 1ms;
    grain_registry reg;
    ASSERT_FALSE(register_grain<probe>(reg));
    ASSERT_FALSE(register_grain<gate_flow>(reg));
    auto s = silo::start(cfg, std::move(reg),
                         std::make_unique<shared_storage>(mem));
    ASSERT_TRUE(s) << describe(s.error());
    silo_ = std::move(*s);
    gateway_config gcfg;
    gcfg.max_body_bytes = 4096;
    gcfg.workers = 4;
    gcfg.silo_id = "silo-t";
    gcfg.cluster_id = "test";
    auto g = gateway::start(gcfg, *silo_);
    ASSERT_TRUE(g) << describe(g.error());
    gw = std::move(*g);
    client = std::make_unique<gateway_client>(endpoint{"127.0.0.1", gw->port()},
                                              10s);
  }

  void TearDown() override {
    flaky_fails = false;
    client.reset();
    if (gw)
      gw->stop();
    gw.reset();
    silo_.reset();
  }

  http_response http(std::string_view method, const std::string& target,
                     const std::string& body = {}) {
    auto res = client->request(method, target, body);
    EXPECT_TRUE(res) << describe(res.error());
    return res ? *res : http_response{};
  }

  std::string start_gate(const std::string& id) {
    auto res = client->start_workflow("gw.gate", id, "granary.wftest.Order",
                                      "{\"items\":[\"x\"]}");
    EXPECT_TRUE(res) << describe(res.error());
    return res ? *res : std::string{};
  }

  std::shared_ptr<memory_storage> mem = std::make_shared<memory_storage>();
  std::unique_ptr<silo> silo_;
  std::unique_ptr<gateway> gw;
  std::unique_ptr<gateway_client> client;
};

} // namespace

TEST_F(gateway_test, health_and_cluster_status) {
  auto h = http("GET", "/healthz");
  EXPECT_EQ(h.status, 200u);
  EXPECT_TRUE(contains(h.body, "\"status\":\"ok\"")) << h.body;
  auto c = client->cluster_status();
  ASSERT_TRUE(c) << describe(c.error());
  EXPECT_TRUE(contains(*c, "\"silo_id\":\"silo-t\"")) << *c;
  EXPECT_TRUE(contains(*c, "\"cluster_id\":\"test\"")) << *c;
  EXPECT_TRUE(contains(*c, "\"partitions\":8")) << *c;
  EXPECT_TRUE(contains(*c, "\"status\":\"running\"")) << *c;
  EXPECT_EQ(http("POST", "/healthz").status, 405u);
  auto missing = http("GET", "/v1/nothing");
  EXPECT_EQ(missing.status, 404u);
  EXPECT_TRUE(contains(missing.body, "\"code\":\"not_found\"")) << missing.body;
}

TEST_F(gateway_test, a_workflow_runs_through_every_endpoint) {
  auto started = start_gate("g-1");
  EXPECT_TRUE(contains(started, "\"started\":true")) << started;
  EXPECT_TRUE(contains(started, "\"status\":\"RUNNING\"")) << started;
  // Starting again by id is idempotent; rejecting an existing id is 409.
  auto again = http("POST", "/v1/workflows/gw.gate/g-1/start",
                    R"({"input_type":"granary.wftest.Order","input":{}})");
  EXPECT_EQ(again.status, 200u) << again.body;
  EXPECT_TRUE(contains(again.body, "\"started\":false")) << again.body;
  auto rejected = http("POST", "/v1/workflows/gw.gate/g-1/start",
                       R"({"input_type":"granary.wftest.Order",)"
                       R"("reject_if_exists":true})");
  EXPECT_EQ(rejected.status, 409u) << rejected.body;
  EXPECT_TRUE(contains(rejected.body, "\"code\":\"already_exists\""))
      << rejected.body;

  auto described = client->describe_workflow("gw.gate", "g-1");
  ASSERT_TRUE(described) << describe(described.error());
  EXPECT_TRUE(contains(*described, "\"status\":\"RUNNING\"")) << *described;
  bool finished = true;
  auto pending = client->workflow_result("gw.gate", "g-1", 0ms, &finished);
  ASSERT_TRUE(pending) << describe(pending.error());
  EXPECT_FALSE(finished) << *pending;
  EXPECT_TRUE(contains(*pending, "\"finished\":false")) << *pending;

  ASSERT_TRUE(eventually([&] {
    auto q = client->query_workflow("gw.gate", "g-1", "progress");
    return q && contains(*q, "\"value\":{\"value\":\"1\"}");
  }));
  auto nothing = client->query_workflow("gw.gate", "g-1", "nothing");
  ASSERT_FALSE(nothing);
  EXPECT_EQ(code_of(nothing.error()), errc::not_found);

  auto updated = client->update_workflow(
      "gw.gate", "g-1", "add", "granary.wftest.Number", R"({"value":5})", "u1");
  ASSERT_TRUE(updated) << describe(updated.error());
  EXPECT_TRUE(contains(*updated, "\"value\":{\"value\":\"105\"}")) << *updated;
  // The same update id again is delivered once: the same answer.
  auto retried = client->update_workflow(
      "gw.gate", "g-1", "add", "granary.wftest.Number", R"({"value":5})", "u1");
  ASSERT_TRUE(retried) << describe(retried.error());
  EXPECT_TRUE(contains(*retried, "\"105\"")) << *retried;

  auto signalled = client->signal_workflow("gw.gate", "g-1", "approve",
                                           "granary.wftest.Number",
                                           R"({"value":"7"})", "sig-1");
  ASSERT_TRUE(signalled) << describe(signalled.error());
  EXPECT_TRUE(contains(*signalled, "\"accepted\":true")) << *signalled;
  auto done = client->workflow_result("gw.gate", "g-1", 5s, &finished);
  ASSERT_TRUE(done) << describe(done.error());
  EXPECT_TRUE(finished) << *done;
  EXPECT_TRUE(contains(*done, "\"status\":\"COMPLETED\"")) << *done;
  EXPECT_TRUE(contains(*done, "\"total\":\"7\"")) << *done;

  // A finished workflow refuses signals with a clear error.
  auto late = http("POST", "/v1/workflows/gw.gate/g-1/signal",
                   R"({"name":"approve"})");
  EXPECT_EQ(late.status, 400u) << late.body;
  EXPECT_TRUE(contains(late.body, "has finished")) << late.body;

  auto hist = client->workflow_history("gw.gate", "g-1");
  ASSERT_TRUE(hist) << describe(hist.error());
  auto parsed = history_from_json(*hist);
  ASSERT_TRUE(parsed) << describe(parsed.error());
  EXPECT_EQ(parsed->workflow, "gw.gate/g-1");
  EXPECT_EQ(parsed->status, "COMPLETED");
  ASSERT_EQ(parsed->journal.size(), 2u) << *hist;
  EXPECT_EQ(parsed->journal[1].kind, "SIGNAL");
  EXPECT_TRUE(contains(to_text(*parsed), "approve")) << to_text(*parsed);

  auto completed = client->list_workflows("gw.gate", "COMPLETED", 10);
  ASSERT_TRUE(completed) << describe(completed.error());
  EXPECT_TRUE(contains(*completed, "\"id\":\"g-1\"")) << *completed;
  auto running = client->list_workflows("gw.gate", "RUNNING", 10);
  ASSERT_TRUE(running) << describe(running.error());
  EXPECT_FALSE(contains(*running, "\"id\":\"g-1\"")) << *running;
}

TEST_F(gateway_test, cancel_ends_a_waiting_run) {
  start_gate("g-c");
  auto cancelled = client->cancel_workflow("gw.gate", "g-c", "not needed");
  ASSERT_TRUE(cancelled) << describe(cancelled.error());
  bool finished = false;
  auto res = client->workflow_result("gw.gate", "g-c", 5s, &finished);
  ASSERT_TRUE(res) << describe(res.error());
  EXPECT_TRUE(finished) << *res;
  EXPECT_TRUE(contains(*res, "\"status\":\"FAILED\"")) << *res;
  auto missing = client->cancel_workflow("gw.gate", "never", "x");
  ASSERT_FALSE(missing);
  EXPECT_EQ(code_of(missing.error()), errc::not_found);
}

TEST_F(gateway_test, bad_requests_get_clear_errors) {
  auto bad_json = http("POST", "/v1/workflows/gw.gate/b-1/start", "{nope");
  EXPECT_EQ(bad_json.status, 400u);
  EXPECT_TRUE(contains(bad_json.body, "\"code\":\"invalid_argument\""))
      << bad_json.body;
  EXPECT_TRUE(contains(bad_json.body, "not a JSON object")) << bad_json.body;
  auto unknown_type = http("POST", "/v1/workflows/gw.gate/b-1/start",
                           R"({"input_type":"no.such.Type","input":{}})");
  EXPECT_EQ(unknown_type.status, 400u);
  EXPECT_TRUE(
      contains(unknown_type.body, "unknown message type 'no.such.Type'"))
      << unknown_type.body;
  auto bad_input = http("POST", "/v1/workflows/gw.gate/b-1/start",
                        R"({"input_type":"granary.wftest.Order",)"
                        R"("input":{"sleep_ms":"soon"}})");
  EXPECT_EQ(bad_input.status, 400u) << bad_input.body;
  EXPECT_TRUE(contains(bad_input.body, "'input' is not valid JSON"))
      << bad_input.body;
  auto typo = http("POST", "/v1/workflows/gw.gate/b-1/start",
                   R"({"input_typ":"granary.wftest.Order"})");
  EXPECT_EQ(typo.status, 400u);
  EXPECT_TRUE(contains(typo.body, "unknown field 'input_typ'")) << typo.body;
  auto unknown_workflow_type = http("GET", "/v1/workflows/no.such/x");
  EXPECT_EQ(unknown_workflow_type.status, 404u) << unknown_workflow_type.body;
  EXPECT_TRUE(contains(unknown_workflow_type.body, "unknown_grain_type"))
      << unknown_workflow_type.body;
  auto never = http("GET", "/v1/workflows/gw.gate/never-started");
  EXPECT_EQ(never.status, 404u) << never.body;
  EXPECT_TRUE(contains(never.body, "never started")) << never.body;
  EXPECT_EQ(http("GET", "/v1/workflows/gw.gate/never-started/history").status,
            404u);
  EXPECT_EQ(http("GET", "/v1/workflows/gw.gate/never-started/result").status,
            404u);
  auto big = http("POST", "/v1/workflows/gw.gate/b-1/start",
                  std::string(8'000, ' ') + "{}");
  EXPECT_EQ(big.status, 413u);
  EXPECT_TRUE(contains(big.body, "payload_too_large")) << big.body;
  EXPECT_EQ(http("GET", "/v1/workflows/gw.gate/b-1/start").status, 405u);
  auto no_type = http("GET", "/v1/workflows");
  EXPECT_EQ(no_type.status, 400u);
  auto bad_status = http("GET", "/v1/workflows?type=gw.gate&status=DONE");
  EXPECT_EQ(bad_status.status, 400u);
  EXPECT_TRUE(contains(bad_status.body, "unknown status 'DONE'"))
      << bad_status.body;
  EXPECT_EQ(http("GET", "/v1/workflows?type=gw.gate&limit=0").status, 400u);
  EXPECT_EQ(http("GET", "/v1/workflows/gw.gate/x/result?wait_ms=abc").status,
            400u);
  // The connection survives a refused request: the client still works.
  EXPECT_EQ(http("GET", "/healthz").status, 200u);
}

TEST_F(gateway_test, lists_workflows_in_pages) {
  std::set<std::string> ids;
  for (int i = 0; i < 7; ++i) {
    ids.insert("p-" + std::to_string(i));
    start_gate("p-" + std::to_string(i));
  }
  std::set<std::string> seen;
  std::string cursor;
  for (int page = 0; page < 10; ++page) {
    auto target = "/v1/workflows?type=gw.gate&limit=3"
                  + (cursor.empty() ? "" : "&cursor=" + cursor);
    auto res = http("GET", target);
    ASSERT_EQ(res.status, 200u) << res.body;
    for (auto& id : ids) {
      if (contains(res.body, "\"id\":\"" + id + "\"")) {
        EXPECT_TRUE(seen.insert(id).second) << id << " listed twice";
      }
    }
    auto at = res.body.find("\"next_cursor\":\"");
    ASSERT_NE(at, std::string::npos) << res.body;
    at += 15;
    cursor = res.body.substr(at, res.body.find('"', at) - at);
    if (cursor.empty())
      break;
  }
  EXPECT_EQ(seen, ids);
}

TEST_F(gateway_test, calls_and_sends_to_grains) {
  auto called = client->call_grain("test.probe", "k 1/x", "granary.test.Add",
                                   R"({"delta":"4"})");
  ASSERT_TRUE(called) << describe(called.error());
  EXPECT_TRUE(contains(*called, "\"type\":\"granary.test.Value\"")) << *called;
  EXPECT_TRUE(contains(*called, "\"value\":\"4\"")) << *called;
  auto sent = client->send_grain("test.probe", "k 1/x", "granary.test.Add",
                                 R"({"delta":"3"})", "send-1");
  ASSERT_TRUE(sent) << describe(sent.error());
  EXPECT_TRUE(contains(*sent, "\"id\":\"send-1\"")) << *sent;
  auto got = client->call_grain("test.probe", "k 1/x", "granary.test.Get", "");
  ASSERT_TRUE(got) << describe(got.error());
  EXPECT_TRUE(contains(*got, "\"value\":\"7\"")) << *got;
  auto unknown = client->call_grain("no.such", "k", "granary.test.Get", "{}");
  ASSERT_FALSE(unknown);
  EXPECT_EQ(code_of(unknown.error()), errc::unknown_grain_type);
  auto unhandled
      = client->call_grain("test.probe", "k", "granary.wftest.Number", "{}");
  ASSERT_FALSE(unhandled);
  EXPECT_EQ(code_of(unhandled.error()), errc::unhandled_message);
  auto not_object = http("POST", "/v1/grains/test.probe/k/call",
                         R"({"type":"granary.test.Get","message":[1]})");
  EXPECT_EQ(not_object.status, 400u) << not_object.body;
}

TEST_F(gateway_test, lists_requeues_and_drops_dead_letters) {
  flaky_fails = true;
  ASSERT_TRUE(client->send_grain("test.probe", "a", "granary.test.Flaky",
                                 R"({"delta":"5"})", "poison-a"));
  ASSERT_TRUE(client->send_grain("test.probe", "b", "granary.test.Flaky",
                                 R"({"delta":"5"})", "poison-b"));
  ASSERT_TRUE(eventually([&] {
    auto l = client->dead_letters(10);
    return l && contains(*l, "poison-a") && contains(*l, "poison-b");
  }));
  auto listed = client->dead_letters(10);
  ASSERT_TRUE(listed);
  EXPECT_TRUE(contains(*listed, "failing on purpose")) << *listed;
  flaky_fails = false;
  auto requeued = client->requeue_dead_letter("test.probe", "a", "poison-a");
  ASSERT_TRUE(requeued) << describe(requeued.error());
  auto dropped = client->drop_dead_letter("test.probe", "b", "poison-b");
  ASSERT_TRUE(dropped) << describe(dropped.error());
  auto again = client->drop_dead_letter("test.probe", "b", "poison-b");
  ASSERT_FALSE(again);
  EXPECT_EQ(code_of(again.error()), errc::not_found);
  ASSERT_TRUE(eventually([&] {
    auto v = client->call_grain("test.probe", "a", "granary.test.Get", "{}");
    return v && contains(*v, "\"value\":\"5\"");
  }));
  auto empty = client->dead_letters(10);
  ASSERT_TRUE(empty);
  EXPECT_FALSE(contains(*empty, "poison")) << *empty;
}

TEST_F(gateway_test, a_stopped_silo_answers_503) {
  silo_->stop();
  auto res = http("GET", "/v1/workflows/gw.gate/x");
  EXPECT_EQ(res.status, 503u) << res.body;
  EXPECT_TRUE(contains(res.body, "silo_stopped")) << res.body;
}

TEST(gateway_config, validates_its_bounds) {
  gateway_config cfg;
  EXPECT_FALSE(cfg.validate());
  cfg.workers = 0;
  EXPECT_NE(describe(cfg.validate()).find("workers"), std::string::npos);
}

TEST(gateway_config, percent_encoding_round_trips_through_errc_names) {
  EXPECT_EQ(percent_encode("a b/c"), "a%20b%2Fc");
  EXPECT_EQ(errc_from_name("already_exists"), errc::already_exists);
  EXPECT_EQ(errc_from_name("bogus"), errc::unspecified);
}

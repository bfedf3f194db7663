// The HTTP/JSON gateway over a real silo on memory storage, through real
// HTTP on loopback (and the C++ client the CLI uses).

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "actors/workflow.hpp"
#include "gateway/gateway.hpp"
#include "gateway/gateway_client.hpp"
#include "gateway/gateway_history.hpp"
#include "runtime/json.hpp"
#include "runtime/keys.hpp"
#include "testing/raw_socket.hpp"
#include "testing/test_grains.hpp"
#include "workflow_test.pb.h"

using namespace granary;
using namespace granary::cluster;
using namespace granary::testing;
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

// Until set, the first turn of a `gw.slow_start` run blocks (at most 10 s).
std::atomic<bool> release_slow_start{false};

// A workflow whose start takes as long as the test wants.
class slow_start_flow : public workflow<slow_start_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "gw.slow_start";

  task<Receipt> run(workflow_context&, const Order&) {
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!release_slow_start && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(1ms);
    co_return Receipt{};
  }
};

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// "GET /healthz" with `extra` header lines, closing the connection after.
std::string healthz_request(const std::string& extra = {}) {
  return "GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" + extra
         + "\r\n";
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
    ASSERT_FALSE(register_workflow<gate_flow>(reg, nullptr));
    ASSERT_FALSE(register_workflow<slow_start_flow>(reg, nullptr));
    auto s = silo::start(cfg, std::move(reg),
                         std::make_unique<shared_storage>(mem));
    ASSERT_TRUE(s) << describe(s.error());
    silo_ = std::move(*s);
    gateway_config gcfg;
    gcfg.max_body_bytes = 4096;
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
    release_slow_start = true;
    client.reset();
    if (other)
      other->stop();
    other.reset();
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
  // A second gateway on the same silo with another config, when a test
  // needs one; `other_client` talks to it.
  http_response other_http(std::string_view method, const std::string& target,
                           const std::string& body = {}) {
    gateway_client c{endpoint{"127.0.0.1", other->port()}, 20s};
    auto res = c.request(method, target, body);
    EXPECT_TRUE(res) << describe(res.error());
    return res ? *res : http_response{};
  }

  void start_other(gateway_config cfg) {
    auto g = gateway::start(std::move(cfg), *silo_);
    ASSERT_TRUE(g) << describe(g.error());
    other = std::move(*g);
  }

  std::unique_ptr<gateway> gw;
  std::unique_ptr<gateway> other;
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
  // The description says what the run waits on: the update named "add".
  std::string waiting;
  EXPECT_TRUE(eventually([&] {
    auto d = client->describe_workflow("gw.gate", "g-1");
    waiting = d ? *d : describe(d.error());
    return d && contains(*d, "\"kind\":\"UPDATE\"")
           && contains(*d, "\"target\":\"add\"")
           && contains(*d, "\"waiting_count\":1");
  })) << waiting;
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
  auto called = client->call_grain("test.probe", "k 1/x", "granary.testing.Add",
                                   R"({"delta":"4"})");
  ASSERT_TRUE(called) << describe(called.error());
  EXPECT_TRUE(contains(*called, "\"type\":\"granary.testing.Value\""))
      << *called;
  EXPECT_TRUE(contains(*called, "\"value\":\"4\"")) << *called;
  auto sent = client->send_grain("test.probe", "k 1/x", "granary.testing.Add",
                                 R"({"delta":"3"})", "send-1");
  ASSERT_TRUE(sent) << describe(sent.error());
  EXPECT_TRUE(contains(*sent, "\"id\":\"send-1\"")) << *sent;
  auto got
      = client->call_grain("test.probe", "k 1/x", "granary.testing.Get", "");
  ASSERT_TRUE(got) << describe(got.error());
  EXPECT_TRUE(contains(*got, "\"value\":\"7\"")) << *got;
  auto unknown
      = client->call_grain("no.such", "k", "granary.testing.Get", "{}");
  ASSERT_FALSE(unknown);
  EXPECT_EQ(code_of(unknown.error()), errc::unknown_grain_type);
  auto unhandled
      = client->call_grain("test.probe", "k", "granary.wftest.Number", "{}");
  ASSERT_FALSE(unhandled);
  EXPECT_EQ(code_of(unhandled.error()), errc::unhandled_message);
  auto not_object = http("POST", "/v1/grains/test.probe/k/call",
                         R"({"type":"granary.testing.Get","message":[1]})");
  EXPECT_EQ(not_object.status, 400u) << not_object.body;
}

TEST_F(gateway_test, lists_requeues_and_drops_dead_letters) {
  flaky_fails = true;
  ASSERT_TRUE(client->send_grain("test.probe", "a", "granary.testing.Flaky",
                                 R"({"delta":"5"})", "poison-a"));
  ASSERT_TRUE(client->send_grain("test.probe", "b", "granary.testing.Flaky",
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
    auto v = client->call_grain("test.probe", "a", "granary.testing.Get", "{}");
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
  cfg.max_pending = 0;
  EXPECT_NE(describe(cfg.validate()).find("max_pending"), std::string::npos);
}

TEST(gateway_config, percent_encoding_round_trips_through_errc_names) {
  EXPECT_EQ(percent_encode("a b/c"), "a%20b%2Fc");
  EXPECT_EQ(cluster::errc_from_name("already_exists"), errc::already_exists);
  EXPECT_EQ(cluster::errc_from_name("bogus"), errc::unspecified);
}

TEST_F(gateway_test, a_deeply_nested_body_is_refused_before_parsing) {
  auto nested = [](size_t depth) {
    // The body is level 1, `input` level 2: depth - 2 arrays inside.
    return R"({"input_type":"granary.wftest.Order","input":{"items":)"
           + std::string(depth - 2, '[') + std::string(depth - 2, ']') + "}}";
  };
  auto deep = http("POST", "/v1/workflows/gw.gate/deep/start", nested(65));
  EXPECT_EQ(deep.status, 400u) << deep.body;
  EXPECT_TRUE(contains(deep.body, "deeper than 64 levels")) << deep.body;
  // At the limit the body is parsed (and refused for what it says).
  auto at_limit = http("POST", "/v1/workflows/gw.gate/deep/start", nested(64));
  EXPECT_EQ(at_limit.status, 400u) << at_limit.body;
  EXPECT_FALSE(contains(at_limit.body, "levels")) << at_limit.body;
  // Brackets inside strings do not count.
  auto quoted = http("POST", "/v1/workflows/gw.gate/deep/start",
                     R"({"input_type":"granary.wftest.Order","input":)"
                     R"({"items":[")"
                         + std::string(500, '[') + R"("]}})");
  EXPECT_EQ(quoted.status, 201u) << quoted.body;
  // A large deep body is answered at once, and the gateway keeps serving.
  gateway_config cfg;
  cfg.max_body_bytes = 1 << 20;
  start_other(cfg);
  auto huge
      = other_http("POST", "/v1/workflows/gw.gate/deep/start", nested(100'000));
  EXPECT_EQ(huge.status, 400u) << huge.body.substr(0, 300);
  EXPECT_EQ(other_http("GET", "/healthz").status, 200u);
}

TEST_F(gateway_test, headers_up_to_max_header_bytes_are_served) {
  // The default limit is 16 KiB; Beast's own default is 8 KiB.
  raw_connection fits{gw->port()};
  ASSERT_TRUE(fits.connected());
  ASSERT_TRUE(fits.send(
      healthz_request("X-Pad: " + std::string(12'000, 'a') + "\r\n")));
  auto ok = fits.read_until_closed(10s);
  EXPECT_TRUE(ok.starts_with("HTTP/1.1 200")) << ok.substr(0, 300);
  raw_connection too_big{gw->port()};
  ASSERT_TRUE(too_big.connected());
  ASSERT_TRUE(too_big.send(
      healthz_request("X-Pad: " + std::string(17'000, 'a') + "\r\n")));
  auto refused = too_big.read_until_closed(10s);
  EXPECT_TRUE(refused.starts_with("HTTP/1.1 431")) << refused.substr(0, 300);
  EXPECT_TRUE(contains(refused, "request header exceeds 16384 bytes"))
      << refused.substr(0, 300);
}

TEST_F(gateway_test,
       ids_that_are_not_utf8_or_hold_control_characters_are_refused) {
  auto start = [&](const std::string& type, const std::string& id) {
    return http("POST", "/v1/workflows/" + type + "/" + id + "/start",
                R"({"input_type":"granary.wftest.Order","input":{}})");
  };
  for (auto* id :
       {"bad%FF%FEid", "over%C0%AFlong", "surrogate%ED%A0%80", "cut%E2%82"}) {
    auto res = start("gw.gate", id);
    EXPECT_EQ(res.status, 400u) << id << ": " << res.body;
    EXPECT_TRUE(contains(res.body, "the workflow id is not valid UTF-8"))
        << res.body;
    EXPECT_TRUE(is_valid_utf8(res.body)) << res.body;
  }
  auto nul = start("gw.gate", "a%00b");
  EXPECT_EQ(nul.status, 400u) << nul.body;
  EXPECT_TRUE(contains(nul.body, "the workflow id holds a control character"))
      << nul.body;
  EXPECT_EQ(start("gw.gate", "tab%09").status, 400u);
  EXPECT_EQ(start("gw%FF", "x").status, 400u);
  auto key = http("POST", "/v1/grains/test.probe/k%FF/call",
                  R"({"type":"granary.testing.Get"})");
  EXPECT_EQ(key.status, 400u) << key.body;
  EXPECT_TRUE(contains(key.body, "the grain key is not valid UTF-8"))
      << key.body;
  auto msg_id = http("POST", "/v1/grains/test.probe/k/send",
                     R"({"type":"granary.testing.Get","id":"m\u0001"})");
  EXPECT_EQ(msg_id.status, 400u) << msg_id.body;
  EXPECT_TRUE(contains(msg_id.body, "the message id holds a control"))
      << msg_id.body;
  EXPECT_EQ(http("DELETE", "/v1/dead-letters/test.probe/k/m%FF").status, 400u);
  // UTF-8 ids are fine, and the list stays valid UTF-8 for every caller.
  EXPECT_EQ(start("gw.gate", "caf%C3%A9-%E2%82%AC").status, 201u);
  auto list = http("GET", "/v1/workflows?type=gw.gate");
  EXPECT_EQ(list.status, 200u) << list.body;
  EXPECT_TRUE(contains(list.body, "caf\xC3\xA9-\xE2\x82\xAC")) << list.body;
  EXPECT_TRUE(is_valid_utf8(list.body)) << list.body;
  // Echoed text never carries raw invalid bytes.
  auto echoed = http("GET", "/v1/workflows?type=gw.gate&status=D%FF");
  EXPECT_EQ(echoed.status, 400u);
  EXPECT_TRUE(is_valid_utf8(echoed.body)) << echoed.body;
}

TEST(gateway_json, quoting_keeps_json_valid_utf8) {
  EXPECT_EQ(json_quote("a\xff"
                       "b"),
            "\"a\\ufffdb\"");
  EXPECT_EQ(json_quote("\xC3\xA9"), "\"\xC3\xA9\"");
  EXPECT_EQ(json_quote("\xC0\xAF"), "\"\\ufffd\\ufffd\"");
  EXPECT_EQ(json_quote(std::string_view{"\0", 1}), "\"\\u0000\"");
  EXPECT_TRUE(is_valid_utf8("\xF0\x9F\x8C\xBE"));
  EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80")); // Above U+10FFFF.
  EXPECT_EQ(json_nesting(R"({"a":[1,{"b":"[[[["}]})", 64), 3u);
  EXPECT_EQ(json_nesting(std::string(1'000, '['), 64), 65u);
}

TEST_F(gateway_test, empty_ids_get_a_400_that_names_the_empty_part) {
  auto start = http("POST", "/v1/workflows/gw.gate//start",
                    R"({"input_type":"granary.wftest.Order"})");
  EXPECT_EQ(start.status, 400u) << start.body;
  EXPECT_TRUE(contains(start.body, "the workflow id is empty")) << start.body;
  auto describe_empty = http("GET", "/v1/workflows/gw.gate/");
  EXPECT_EQ(describe_empty.status, 400u) << describe_empty.body;
  EXPECT_TRUE(contains(describe_empty.body, "the workflow id is empty"))
      << describe_empty.body;
  auto no_type = http("GET", "/v1/workflows//x");
  EXPECT_EQ(no_type.status, 400u) << no_type.body;
  EXPECT_TRUE(contains(no_type.body, "the workflow type is empty"))
      << no_type.body;
  auto key = http("POST", "/v1/grains/test.probe//call",
                  R"({"type":"granary.testing.Get"})");
  EXPECT_EQ(key.status, 400u) << key.body;
  EXPECT_TRUE(contains(key.body, "the grain key is empty")) << key.body;
  auto msg = http("DELETE", "/v1/dead-letters/test.probe/k/");
  EXPECT_EQ(msg.status, 404u) << msg.body; // Four segments: no such path.
  auto requeue = http("POST", "/v1/dead-letters/test.probe/k//requeue");
  EXPECT_EQ(requeue.status, 400u) << requeue.body;
  EXPECT_TRUE(contains(requeue.body, "the message id is empty"))
      << requeue.body;
}

TEST_F(gateway_test, over_max_connections_clients_get_503_with_retry_after) {
  gateway_config cfg;
  cfg.max_connections = 2;
  // Long enough that the two idle connections hold their slots while the
  // third one is refused.
  cfg.header_timeout = 5s;
  start_other(cfg);
  raw_connection a{other->port()};
  raw_connection b{other->port()};
  ASSERT_TRUE(a.connected() && b.connected());
  ASSERT_TRUE(a.send("GET /hea")); // A header that never ends.
  ASSERT_TRUE(eventually([&] { return other->stats().open_connections == 2; }));
  raw_connection c{other->port()};
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send(healthz_request()));
  auto refused = c.read_until_closed(10s);
  EXPECT_TRUE(refused.starts_with("HTTP/1.1 503")) << refused;
  EXPECT_TRUE(contains(refused, "Retry-After: 1")) << refused;
  EXPECT_TRUE(contains(refused, "max_connections")) << refused;
  EXPECT_GE(other->stats().rejected_connections, 1u);
}

TEST_F(gateway_test, slow_headers_are_cut_off_at_the_header_deadline) {
  gateway_config cfg;
  cfg.max_connections = 4;
  cfg.header_timeout = 300ms;
  start_other(cfg);
  // A slowloris: every slot taken by connections that send a byte now
  // and then and never finish their header.
  std::vector<std::unique_ptr<raw_connection>> slow;
  for (int i = 0; i < 4; ++i) {
    slow.push_back(std::make_unique<raw_connection>(other->port()));
    ASSERT_TRUE(slow.back()->connected());
    ASSERT_TRUE(slow.back()->send("G"));
  }
  ASSERT_TRUE(eventually([&] { return other->stats().open_connections == 4; }));
  std::atomic<bool> dribbling{true};
  std::thread dribble{[&] {
    while (dribbling) {
      for (auto& c : slow)
        c->send("E");
      std::this_thread::sleep_for(50ms);
    }
  }};
  // Each slow connection is answered 408 at its deadline and closed, so
  // that a real client gets served soon after (503 until then).
  auto served = eventually(
      [&] {
        raw_connection c{other->port()};
        if (!c.connected() || !c.send(healthz_request()))
          return false;
        auto r = c.read_until_closed(5s);
        EXPECT_TRUE(r.starts_with("HTTP/1.1 200")
                    || r.starts_with("HTTP/1.1 503"))
            << r;
        return r.starts_with("HTTP/1.1 200");
      },
      10s);
  dribbling = false;
  dribble.join();
  EXPECT_TRUE(served);
  auto answer = slow.front()->read_until_closed(5s);
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 408")) << answer;
  EXPECT_TRUE(contains(answer, "within 300 ms")) << answer;
  EXPECT_GE(other->stats().header_timeouts, 4u);
}

TEST_F(gateway_test, a_start_that_times_out_says_that_a_retry_is_safe) {
  release_slow_start = false;
  gateway_config cfg;
  cfg.call_timeout = 200ms;
  start_other(cfg);
  auto body = R"({"input_type":"granary.wftest.Order","input":{}})";
  auto timed_out
      = other_http("POST", "/v1/workflows/gw.slow_start/s-1/start", body);
  EXPECT_EQ(timed_out.status, 504u) << timed_out.body;
  EXPECT_TRUE(contains(timed_out.body, "may have started anyway"))
      << timed_out.body;
  EXPECT_TRUE(contains(timed_out.body, "retry with the same id is safe"))
      << timed_out.body;
  release_slow_start = true;
  // It did start; the retry answers the existing run.
  http_response again;
  ASSERT_TRUE(eventually([&] {
    again = http("POST", "/v1/workflows/gw.slow_start/s-1/start", body);
    return again.status == 200u;
  })) << again.body;
  EXPECT_TRUE(contains(again.body, "\"started\":false")) << again.body;
}

TEST_F(gateway_test, lists_what_reachable_silos_have_and_names_the_rest) {
  // A port nobody listens on: the "other silo" of partitions 4..7 is down.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), len), 0);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  auto dead = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  ::close(fd);
  std::set<std::string> here;
  for (int i = 0; i < 12; ++i) {
    auto id = "u-" + std::to_string(i);
    start_gate(id);
    if (partition_of(grain_id{"gw.gate", id}, 8) < 4)
      here.insert(id);
  }
  ASSERT_FALSE(here.empty());
  ASSERT_LT(here.size(), 12u);
  gateway_config cfg;
  cfg.call_timeout = 2s;
  cfg.remote_gateway
      = [dead](uint32_t p) { return p >= 4 ? dead : std::string{}; };
  start_other(cfg);
  auto list = other_http("GET", "/v1/workflows?type=gw.gate&limit=100");
  ASSERT_EQ(list.status, 200u) << list.body;
  for (auto& id : here)
    EXPECT_TRUE(contains(list.body, "\"id\":\"" + id + "\"")) << id;
  EXPECT_TRUE(contains(list.body, "\"unreachable\":[{\"gateway\":\"" + dead
                                      + "\",\"partitions\":[4,5,6,7]}]"))
      << list.body;
  // With every silo up, nothing is missing.
  auto full = http("GET", "/v1/workflows?type=gw.gate&limit=100");
  EXPECT_TRUE(contains(full.body, "\"unreachable\":[]")) << full.body;
}

TEST_F(gateway_test, a_hung_silo_is_asked_once_per_list) {
  // A "gateway" that accepts connections and never answers owns the odd
  // partitions: four runs of partitions, one silo.
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), len), 0);
  ASSERT_EQ(::listen(fd, 16), 0);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  auto hung = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  std::atomic<bool> done{false};
  std::atomic<int> accepted{0};
  std::thread acceptor{[&] {
    std::vector<int> open;
    while (!done) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 10) > 0) {
        int c = ::accept(fd, nullptr, nullptr);
        if (c >= 0) {
          open.push_back(c);
          ++accepted;
        }
      }
    }
    for (int c : open)
      ::close(c);
  }};
  start_gate("h-1");
  gateway_config cfg;
  cfg.call_timeout = 300ms;
  cfg.remote_gateway
      = [hung](uint32_t p) { return p % 2 == 1 ? hung : std::string{}; };
  start_other(cfg);
  auto list = other_http("GET", "/v1/workflows?type=gw.gate&limit=100");
  done = true;
  acceptor.join();
  ::close(fd);
  ASSERT_EQ(list.status, 200u) << list.body;
  EXPECT_TRUE(contains(list.body, "\"unreachable\":[{\"gateway\":\"" + hung
                                      + "\",\"partitions\":[1,3,5,7]}]"))
      << list.body;
  EXPECT_EQ(accepted.load(), 1);
}

TEST_F(gateway_test, a_list_relayed_to_another_gateway_pages_through_all) {
  // Gateway `other` relays partitions 4..7 to the fixture's gateway (the
  // same silo, so it has them all): pages mix relayed and local runs.
  std::set<std::string> ids;
  for (int i = 0; i < 12; ++i) {
    ids.insert("r-" + std::to_string(i));
    start_gate("r-" + std::to_string(i));
  }
  gateway_config cfg;
  auto peer = gw->address();
  cfg.remote_gateway
      = [peer](uint32_t p) { return p >= 4 ? peer : std::string{}; };
  start_other(cfg);
  std::set<std::string> seen;
  std::string cursor;
  for (int page = 0; page < 20; ++page) {
    auto res
        = other_http("GET", "/v1/workflows?type=gw.gate&limit=3"
                                + (cursor.empty() ? "" : "&cursor=" + cursor));
    ASSERT_EQ(res.status, 200u) << res.body;
    // One answer: a single cursor and a single list of what is missing.
    auto at = res.body.find("\"next_cursor\":\"");
    ASSERT_NE(at, std::string::npos) << res.body;
    EXPECT_EQ(res.body.find("\"next_cursor\"", at + 1), std::string::npos)
        << res.body;
    EXPECT_TRUE(contains(res.body, "\"unreachable\":[]}")) << res.body;
    for (auto& id : ids)
      if (contains(res.body, "\"id\":\"" + id + "\""))
        EXPECT_TRUE(seen.insert(id).second) << id << " listed twice";
    at += 15;
    cursor = res.body.substr(at, res.body.find('"', at) - at);
    if (cursor.empty())
      break;
  }
  EXPECT_EQ(seen, ids);
}

TEST_F(gateway_test,
       waits_hold_no_thread_while_the_signal_that_ends_them_runs) {
  // One I/O thread and more waits than the gateway once had workers: the
  // signal is served while every wait is in progress, and ends them all.
  gateway_config cfg;
  cfg.threads = 1;
  start_other(cfg);
  start_gate("w-1");
  ASSERT_TRUE(client->update_workflow("gw.gate", "w-1", "add",
                                      "granary.wftest.Number", R"({"value":1})",
                                      "u-w"));
  constexpr size_t waiters = 20;
  std::atomic<size_t> finished{0};
  std::vector<std::thread> threads;
  for (size_t i = 0; i < waiters; ++i)
    threads.emplace_back([&] {
      gateway_client c{endpoint{"127.0.0.1", other->port()}, 60s};
      bool done = false;
      auto res = c.workflow_result("gw.gate", "w-1", 30s, &done);
      if (res && done)
        ++finished;
    });
  EXPECT_TRUE(eventually([&] { return other->stats().pending == waiters; }));
  gateway_client c{endpoint{"127.0.0.1", other->port()}, 10s};
  auto signalled
      = c.signal_workflow("gw.gate", "w-1", "approve", "granary.wftest.Number",
                          R"({"value":"3"})", "sig-w");
  EXPECT_TRUE(signalled) << describe(signalled.error());
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(finished.load(), waiters);
}

// The HTTP layer: the router on its own, and the server and the client
// over real loopback connections.

#include <atomic>
#include <chrono>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "http/client.hpp"
#include "http/router.hpp"
#include "http/server.hpp"
#include "runtime/error.hpp"
#include "testing/eventually.hpp"
#include "testing/raw_socket.hpp"

using namespace granary::http;
using granary::testing::eventually;
using granary::testing::raw_connection;
using granary::testing::silent_listener;
using namespace std::chrono_literals;

namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

handler answer_with(std::string body) {
  return [body](request, responder res) {
    response r;
    r.body = body;
    res.send(std::move(r));
  };
}

// A handler that keeps every responder, to answer later from the test.
class parking {
public:
  handler park() {
    return [this](request, responder res) {
      std::lock_guard guard{mtx_};
      parked_.push_back(std::move(res));
    };
  }

  /// Answers the oldest parked request with `r` (from this thread).
  void answer(response r) {
    std::lock_guard guard{mtx_};
    parked_.front().send(std::move(r));
    parked_.pop_front();
  }

  /// The oldest parked responder.
  responder take() {
    std::lock_guard guard{mtx_};
    auto res = std::move(parked_.front());
    parked_.pop_front();
    return res;
  }

private:
  std::mutex mtx_;
  std::deque<responder> parked_;
};

client_result get(uint16_t port, const std::string& target,
                  std::chrono::milliseconds timeout = 10s) {
  client_request req;
  req.target = target;
  return fetch("127.0.0.1", port, req, client_options{timeout});
}

std::unique_ptr<server> serve(server_config cfg, handler h) {
  auto s = server::start(std::move(cfg), std::move(h));
  EXPECT_TRUE(s) << granary::describe(s.error());
  return s ? std::move(*s) : nullptr;
}

} // namespace

// -- router -------------------------------------------------------------------

TEST(http_router, matches_templates_and_decodes_parameters) {
  router r;
  r.add(verb::get, "/healthz", answer_with("h"))
      .add(verb::get, "/v1/workflows/{type}/{id}", answer_with("d"))
      .add(verb::post, "/v1/workflows/{type}/{id}/start", answer_with("s"))
      .add(verb::delete_, "/v1/dead-letters/{type}/{key}/{msg_id}",
           answer_with("x"));
  auto m = r.match(verb::post, "/v1/workflows/my.flow/a%20b%2Fc/start");
  ASSERT_NE(m.target, nullptr) << m.error.message;
  ASSERT_EQ(m.params.size(), 2u);
  EXPECT_EQ(m.params[0],
            (std::pair<std::string, std::string>{"type", "my.flow"}));
  // %2F is decoded inside its segment, after the split.
  EXPECT_EQ(m.params[1].second, "a b/c");
  // One trailing slash is ignored; an empty segment is a parameter's value.
  EXPECT_NE(r.match(verb::get, "/healthz/").target, nullptr);
  auto empty = r.match(verb::post, "/v1/workflows/t//start");
  ASSERT_NE(empty.target, nullptr);
  EXPECT_EQ(empty.params[1].second, "");
  EXPECT_EQ(r.match(verb::delete_, "/v1/dead-letters/t/k/").error.status, 404u);
}

TEST(http_router, answers_404_405_and_400_itself) {
  router r;
  r.add(verb::get, "/v1/things/{id}", answer_with("get"))
      .add(verb::put, "/v1/things/{id}", answer_with("put"));
  auto none = r.match(verb::get, "/v1/other/x");
  EXPECT_EQ(none.target, nullptr);
  EXPECT_EQ(none.error.status, 404u);
  EXPECT_EQ(none.error.message, "no endpoint /v1/other/x");
  auto deep = r.match(verb::get, "/v1/things/x/y/z/w/v");
  EXPECT_EQ(deep.error.status, 404u);
  auto wrong = r.match(verb::post, "/v1/things/x");
  EXPECT_EQ(wrong.target, nullptr);
  EXPECT_EQ(wrong.error.status, 405u);
  EXPECT_EQ(wrong.error.allow, "GET, PUT");
  EXPECT_EQ(wrong.error.message, "use GET or PUT /v1/things/x");
  auto bad = r.match(verb::get, "/v1/things/%zz");
  EXPECT_EQ(bad.error.status, 400u);
  EXPECT_EQ(r.match(verb::get, "things").error.status, 400u);
}

TEST(http_router, a_literal_segment_beats_a_parameter) {
  router r;
  r.add(verb::get, "/v1/{kind}", answer_with("list"))
      .add(verb::get, "/v1/_audit", answer_with("audit"))
      .add(verb::get, "/v1/{kind}/{name}", answer_with("get"))
      .any("/v1/{kind}/_all", answer_with("all"));
  auto audit = r.match(verb::get, "/v1/_audit");
  ASSERT_NE(audit.target, nullptr);
  EXPECT_TRUE(audit.params.empty());
  auto list = r.match(verb::get, "/v1/cell");
  ASSERT_EQ(list.params.size(), 1u);
  EXPECT_EQ(list.params[0].second, "cell");
  auto all = r.match(verb::patch, "/v1/cell/_all");
  ASSERT_NE(all.target, nullptr);
  EXPECT_EQ(all.params.size(), 1u);
  // The literal template lacks POST: 405, not the parameter's route.
  EXPECT_EQ(r.match(verb::post, "/v1/_audit").error.status, 405u);
}

TEST(http_router, percent_coding_round_trips) {
  EXPECT_EQ(percent_encode("a b/c~é"), "a%20b%2Fc~%C3%A9");
  EXPECT_EQ(percent_decode("a%20b%2Fc~%C3%A9"), "a b/c~\xC3\xA9");
  EXPECT_EQ(percent_decode("%41%4a%4A"), "AJJ");
  EXPECT_FALSE(percent_decode("%"));
  EXPECT_FALSE(percent_decode("%4"));
  EXPECT_FALSE(percent_decode("ab%4"));
  EXPECT_FALSE(percent_decode("%g1"));
  EXPECT_FALSE(percent_decode("%+1"));
  auto q = parse_query("/x?type=a%20b&limit=3&flag&type=c");
  ASSERT_TRUE(q);
  EXPECT_EQ(q->at("type"), "c");
  EXPECT_EQ(q->at("limit"), "3");
  EXPECT_EQ(q->at("flag"), "");
  EXPECT_FALSE(parse_query("/x?a=%zz"));
  EXPECT_TRUE(parse_query("/x")->empty());
}

// -- server and client --------------------------------------------------------

TEST(http_server, routes_requests_over_keep_alive_connections) {
  router r;
  r.add(verb::get, "/echo/{word}", [](request req, responder res) {
    response out;
    out.body = req.param("word") + "|" + req.query["n"] + "|"
               + std::string{req.header("X-Test")};
    out.headers.emplace_back("X-Answer", "yes");
    res.send(std::move(out));
  });
  auto srv = serve({}, std::ref(r));
  ASSERT_TRUE(srv);
  connection c{"127.0.0.1", srv->port(), client_options{10s}};
  for (int i = 0; i < 3; ++i) {
    client_request req;
    req.target = "/echo/h%C3%A9?n=" + std::to_string(i);
    req.headers.emplace_back("X-Test", "t");
    req.keep_alive = true;
    auto res = c.exchange(req, std::chrono::steady_clock::now() + 10s);
    ASSERT_TRUE(res) << res.failure->describe();
    EXPECT_EQ(res.response.status, 200u);
    EXPECT_EQ(res.response.body, "h\xC3\xA9|" + std::to_string(i) + "|t");
    EXPECT_EQ(res.response.header("X-Answer"), "yes");
    EXPECT_EQ(res.response.header("Server"), "granary");
    EXPECT_TRUE(c.is_open());
  }
  EXPECT_EQ(srv->stats().accepted, 1u);
  EXPECT_EQ(srv->stats().requests, 3u);
  auto missing = get(srv->port(), "/nothing");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing.response.status, 404u);
  client_request post;
  post.method = verb::post;
  post.target = "/echo/x";
  auto wrong = fetch("127.0.0.1", srv->port(), post, {});
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong.response.status, 405u);
  EXPECT_EQ(wrong.response.header("Allow"), "GET");
}

TEST(http_server, a_handler_answers_later_from_another_thread) {
  // One I/O thread: the parked request must not hold it.
  parking parked;
  router r;
  r.add(verb::get, "/park", parked.park());
  r.add(verb::get, "/now", answer_with("now"));
  auto srv = serve({}, std::ref(r));
  ASSERT_TRUE(srv);
  client_result slow;
  std::thread waiter{[&] { slow = get(srv->port(), "/park"); }};
  ASSERT_TRUE(eventually([&] { return srv->stats().pending == 1; }));
  // Served while the parked one waits.
  for (int i = 0; i < 5; ++i) {
    auto fast = get(srv->port(), "/now");
    ASSERT_TRUE(fast) << fast.failure->describe();
    EXPECT_EQ(fast.response.body, "now");
  }
  std::thread answerer{[&] {
    response out;
    out.status = 202;
    out.body = "later";
    parked.answer(std::move(out));
  }};
  answerer.join();
  waiter.join();
  ASSERT_TRUE(slow) << slow.failure->describe();
  EXPECT_EQ(slow.response.status, 202u);
  EXPECT_EQ(slow.response.body, "later");
  EXPECT_EQ(srv->stats().pending, 0u);
}

TEST(http_server, post_and_after_run_on_the_connection_until_it_answers) {
  router r;
  r.add(verb::get, "/steps", [](request, responder res) {
    auto shared = std::make_shared<responder>(std::move(res));
    auto steps = std::make_shared<int>(0);
    // Replaced before it fires: never runs.
    shared->after(1h, [shared] {
      response never;
      never.body = "the replaced timer ran";
      shared->send(std::move(never));
    });
    shared->after(1ms, [shared, steps] {
      ++*steps;
      shared->post([shared, steps] {
        ++*steps;
        response out;
        out.body = "steps " + std::to_string(*steps);
        shared->send(std::move(out));
      });
    });
  });
  r.add(verb::get, "/forget", [](request, responder) {});
  r.add(verb::get, "/throw",
        [](request, responder) { throw std::runtime_error("boom"); });
  auto srv = serve({}, std::ref(r));
  ASSERT_TRUE(srv);
  auto steps = get(srv->port(), "/steps");
  ASSERT_TRUE(steps) << steps.failure->describe();
  EXPECT_EQ(steps.response.body, "steps 2");
  auto forgot = get(srv->port(), "/forget");
  ASSERT_TRUE(forgot);
  EXPECT_EQ(forgot.response.status, 500u);
  EXPECT_TRUE(contains(forgot.response.body, "dropped unanswered"))
      << forgot.response.body;
  auto threw = get(srv->port(), "/throw");
  ASSERT_TRUE(threw);
  EXPECT_EQ(threw.response.status, 500u);
  EXPECT_TRUE(contains(threw.response.body, "boom")) << threw.response.body;
  EXPECT_EQ(srv->stats().pending, 0u);
}

TEST(http_server, header_body_and_pending_limits_are_answered) {
  server_config cfg;
  cfg.max_header_bytes = 1024;
  cfg.max_body_bytes = 100;
  cfg.max_pending = 1;
  parking parked;
  router r;
  r.add(verb::post, "/park", parked.park());
  r.add(verb::get, "/now", answer_with("now"));
  auto srv = serve(cfg, std::ref(r));
  ASSERT_TRUE(srv);
  client_request big;
  big.method = verb::post;
  big.target = "/park";
  big.body = std::string(200, 'x');
  auto too_big = fetch("127.0.0.1", srv->port(), big, {});
  ASSERT_TRUE(too_big) << too_big.failure->describe();
  EXPECT_EQ(too_big.response.status, 413u);
  EXPECT_TRUE(contains(too_big.response.body, "exceeds 100 bytes"));
  client_request long_header;
  long_header.target = "/now";
  long_header.headers.emplace_back("X-Pad", std::string(2000, 'p'));
  auto header = fetch("127.0.0.1", srv->port(), long_header, {});
  ASSERT_TRUE(header) << header.failure->describe();
  EXPECT_EQ(header.response.status, 431u);
  client_result parked_result;
  std::thread waiter{[&] {
    client_request park;
    park.method = verb::post;
    park.target = "/park";
    parked_result = fetch("127.0.0.1", srv->port(), park, {});
  }};
  ASSERT_TRUE(eventually([&] { return srv->stats().pending == 1; }));
  auto busy = get(srv->port(), "/now");
  ASSERT_TRUE(busy);
  EXPECT_EQ(busy.response.status, 429u);
  EXPECT_EQ(busy.response.header("Retry-After"), "1");
  parked.answer(response{});
  waiter.join();
  ASSERT_TRUE(parked_result);
  EXPECT_EQ(parked_result.response.status, 200u);
  EXPECT_EQ(get(srv->port(), "/now").response.status, 200u);
}

TEST(http_server, connections_beyond_the_limit_and_slow_headers_are_refused) {
  server_config cfg;
  cfg.max_connections = 1;
  cfg.header_timeout = 200ms;
  auto srv = serve(cfg, answer_with("ok"));
  ASSERT_TRUE(srv);
  raw_connection slow{srv->port()};
  ASSERT_TRUE(slow.connected());
  ASSERT_TRUE(slow.send("GET /x HTT"));
  ASSERT_TRUE(eventually([&] { return srv->stats().open_connections == 1; }));
  raw_connection refused{srv->port()};
  ASSERT_TRUE(refused.send("GET /x HTTP/1.1\r\nHost: t\r\n\r\n"));
  auto answer = refused.read_until_closed(10s);
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 503")) << answer;
  EXPECT_TRUE(contains(answer, "Retry-After: 1")) << answer;
  auto timed_out = slow.read_until_closed(10s);
  EXPECT_TRUE(timed_out.starts_with("HTTP/1.1 408")) << timed_out;
  EXPECT_TRUE(contains(timed_out, "within 200 ms")) << timed_out;
  EXPECT_EQ(srv->stats().header_timeouts, 1u);
  EXPECT_GE(srv->stats().rejected_connections, 1u);
  // Without an answer for refused connections, they are just closed.
  server_config quiet = cfg;
  quiet.answer_refused_connections = false;
  auto srv2 = serve(quiet, answer_with("ok"));
  ASSERT_TRUE(srv2);
  raw_connection holder{srv2->port()};
  ASSERT_TRUE(eventually([&] { return srv2->stats().open_connections == 1; }));
  auto closed = get(srv2->port(), "/x");
  ASSERT_FALSE(closed);
  EXPECT_FALSE(closed.failure->timed_out) << closed.failure->describe();
}

TEST(http_server, stop_closes_connections_and_a_late_answer_does_nothing) {
  parking parked;
  auto srv = serve({}, parked.park());
  ASSERT_TRUE(srv);
  client_result held;
  std::thread waiter{[&] { held = get(srv->port(), "/park"); }};
  ASSERT_TRUE(eventually([&] { return srv->stats().pending == 1; }));
  srv->stop();
  waiter.join();
  ASSERT_FALSE(held);
  EXPECT_FALSE(held.failure->timed_out) << held.failure->describe();
  srv.reset();
  // The server is gone; its responder still works and does nothing.
  auto late = parked.take();
  late.post([] { FAIL() << "ran after the stop"; });
  late.send(response{});
}

TEST(http_client, deadlines_end_connects_and_reads) {
  silent_listener silent;
  auto res = get(silent.port(), "/", 200ms);
  ASSERT_FALSE(res);
  EXPECT_TRUE(res.failure->timed_out);
  EXPECT_EQ(res.failure->where, client_failure::stage::reading);
  EXPECT_EQ(res.failure->describe(),
            "timed out after 200 ms while reading the response");
  // Nobody listens on a port we just released.
  uint16_t port = 0;
  {
    silent_listener gone;
    port = gone.port();
  }
  auto refused = get(port, "/", 2s);
  ASSERT_FALSE(refused);
  EXPECT_FALSE(refused.failure->timed_out);
  EXPECT_EQ(refused.failure->where, client_failure::stage::connecting);
  client_options small{2s, 10};
  auto srv = serve({}, answer_with(std::string(100, 'x')));
  ASSERT_TRUE(srv);
  client_request req;
  auto too_large = fetch("127.0.0.1", srv->port(), req, small);
  ASSERT_FALSE(too_large);
  EXPECT_TRUE(too_large.failure->too_large());
}

TEST(http_client, a_handler_relays_with_the_asynchronous_client) {
  auto backend = serve({}, [](request req, responder res) {
    response out;
    out.body = "backend saw " + req.target;
    res.send(std::move(out));
  });
  ASSERT_TRUE(backend);
  silent_listener silent;
  auto port = backend->port();
  auto silent_port = silent.port();
  auto front = serve({}, [port, silent_port](request req, responder res) {
    auto shared = std::make_shared<responder>(std::move(res));
    client_request fwd;
    fwd.target = req.target;
    auto to = req.target == "/silent" ? silent_port : port;
    async_fetch(shared->executor(), "127.0.0.1", to, fwd, client_options{200ms},
                [shared](client_result r) {
                  response out;
                  out.body = r ? r.response.body : r.failure->describe();
                  shared->send(std::move(out));
                });
  });
  ASSERT_TRUE(front);
  auto relayed = get(front->port(), "/a?b=c");
  ASSERT_TRUE(relayed) << relayed.failure->describe();
  EXPECT_EQ(relayed.response.body, "backend saw /a?b=c");
  auto late = get(front->port(), "/silent");
  ASSERT_TRUE(late);
  EXPECT_EQ(late.response.body,
            "timed out after 200 ms while reading the response");
}

TEST(http_client, a_streamed_answer_arrives_in_parts) {
  auto srv = serve({}, [](request, responder res) {
    response out;
    out.body = "{\"a\":1}\n{\"b\":2}\n";
    res.send(std::move(out));
  });
  ASSERT_TRUE(srv);
  connection c{"127.0.0.1", srv->port(), client_options{10s}};
  client_request req;
  req.method = verb::post;
  req.target = "/watch";
  req.body = "{}";
  auto head = c.open_stream(req, std::chrono::steady_clock::now() + 10s);
  ASSERT_TRUE(head) << head.failure->describe();
  EXPECT_EQ(head.response.status, 200u);
  std::string body;
  std::optional<client_failure> failure;
  for (int i = 0; i < 100 && c.read_some(body, failure);)
    ++i;
  EXPECT_FALSE(failure);
  EXPECT_EQ(body, "{\"a\":1}\n{\"b\":2}\n");
}

TEST(http_client, cancel_ends_a_blocked_stream_read) {
  parking parked;
  auto srv = serve({}, parked.park());
  ASSERT_TRUE(srv);
  connection c{"127.0.0.1", srv->port(), client_options{10s}};
  client_request req;
  req.target = "/park";
  std::atomic<bool> ended{false};
  client_result res;
  std::thread reader{[&] {
    res = c.open_stream(req, std::chrono::steady_clock::now() + 30s);
    ended = true;
  }};
  ASSERT_TRUE(eventually([&] { return srv->stats().pending == 1; }));
  c.cancel();
  reader.join();
  EXPECT_TRUE(ended);
  ASSERT_FALSE(res);
  EXPECT_FALSE(res.failure->timed_out);
}

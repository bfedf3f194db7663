// Tests of the fake cloud API: a real server on 127.0.0.1 and an ephemeral
// port, talked to with the client, with raw HTTP where headers matter, and
// the fake_cloud_api binary run as a child process.

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include "samples/control_plane/fake_cloud/client.hpp"
#include "samples/control_plane/fake_cloud/memory_cloud.hpp"
#include "samples/control_plane/fake_cloud/server.hpp"
#include "testing/child_process.hpp"
#include "testing/eventually.hpp"

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;
using fake_cloud::client;
using fake_cloud::server;
using fake_cloud::server_config;
using granary::code_of;
using granary::describe;
using granary::errc;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

// Polls every millisecond, for 2 s unless a call says otherwise.
constexpr auto poll_limit = 2s;
constexpr auto poll_every = 1ms;

/// One request over a fresh connection, headers and all.
http::response<http::string_body>
raw(uint16_t port, http::verb method, const std::string& target,
    const std::string& body = "",
    std::vector<std::pair<std::string, std::string>> headers = {}) {
  asio::io_context ioc;
  tcp::socket sock{ioc};
  sock.connect({asio::ip::make_address("127.0.0.1"), port});
  http::request<http::string_body> req{method, target, 11};
  req.set(http::field::host, "127.0.0.1");
  req.set(http::field::connection, "close");
  for (auto& [name, value] : headers)
    req.set(name, value);
  req.body() = body;
  req.prepare_payload();
  http::write(sock, req);
  beast::flat_buffer buf;
  http::response<http::string_body> res;
  http::read(sock, buf, res);
  return res;
}

std::string key_header(const http::response<http::string_body>& res,
                       const char* name) {
  auto v = res[name];
  return std::string{v.data(), v.size()};
}

class fake_cloud_test : public ::testing::Test {
protected:
  void start(server_config cfg = {}) {
    auto s = server::start(std::move(cfg));
    ASSERT_TRUE(s) << describe(s.error());
    srv = std::move(*s);
  }

  client make_client(std::chrono::milliseconds timeout = 2s) const {
    return client{"127.0.0.1", srv->port(), timeout};
  }

  std::unique_ptr<server> srv;
};

TEST_F(fake_cloud_test, crud_round_trip) {
  start();
  auto c = make_client();
  EXPECT_FALSE(c.healthz());
  auto made = c.put("cell", "eu-1", R"({"region":"eu"})", "wf-1:1");
  ASSERT_TRUE(made) << describe(made.error());
  EXPECT_EQ(made->status, 201u);
  EXPECT_FALSE(made->replayed);
  EXPECT_EQ(made->res.version, 1u);
  EXPECT_EQ(made->res.spec.at("region"), "eu");
  auto got = c.get("cell", "eu-1");
  ASSERT_TRUE(got) << describe(got.error());
  EXPECT_EQ(*got, made->res);
  auto updated
      = c.update("cell", "eu-1", R"({"region":"eu","size":"l"})", "wf-1:2", 1);
  ASSERT_TRUE(updated) << describe(updated.error());
  EXPECT_EQ(updated->status, 200u);
  EXPECT_EQ(updated->res.version, 2u);
  auto stale = c.update("cell", "eu-1", R"({"region":"us"})", "wf-1:3", 1);
  ASSERT_FALSE(stale);
  EXPECT_EQ(code_of(stale.error()), errc::invalid_argument);
  EXPECT_NE(describe(stale.error()).find("412"), std::string::npos);
  ASSERT_TRUE(c.put("cell", "us-1", "{}", "wf-1:4"));
  auto all = c.list("cell");
  ASSERT_TRUE(all) << describe(all.error());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].name, "eu-1");
  EXPECT_EQ((*all)[1].name, "us-1");
  auto gone = c.del("cell", "eu-1", "wf-1:5");
  ASSERT_TRUE(gone) << describe(gone.error());
  EXPECT_EQ(gone->res.version, 2u);
  auto missing = c.get("cell", "eu-1");
  ASSERT_FALSE(missing);
  EXPECT_EQ(code_of(missing.error()), errc::not_found);
  EXPECT_FALSE(fake_cloud::retryable(missing.error()));
  auto again = c.del("cell", "eu-1", "wf-1:6");
  ASSERT_FALSE(again);
  EXPECT_EQ(code_of(again.error()), errc::not_found);
}

TEST_F(fake_cloud_test, every_sample_kind_is_accepted_and_bad_kinds_are_400) {
  start();
  auto c = make_client();
  int n = 0;
  for (auto kind : {"cell", "db_shard", "certificate", "dns_record",
                    "ingress_route", "quota"}) {
    auto r = c.put(kind, "x", "{}", "k" + std::to_string(++n));
    EXPECT_TRUE(r) << kind << ": " << describe(r.error());
  }
  auto res = raw(srv->port(), http::verb::get, "/v1/Cell");
  EXPECT_EQ(res.result_int(), 400u);
  EXPECT_NE(res.body().find("\"error\":\"bad_kind\""), std::string::npos);
  auto dash = c.put("db-shard", "x", "{}", "k-dash");
  ASSERT_FALSE(dash);
  EXPECT_EQ(code_of(dash.error()), errc::invalid_argument);
  auto reserved = c.get("_audit", "x");
  ASSERT_FALSE(reserved);
  EXPECT_EQ(code_of(reserved.error()), errc::invalid_argument);
  EXPECT_EQ(srv->audit().applied, 6u);
}

TEST_F(fake_cloud_test, replay_returns_the_original_response_and_applies_once) {
  start();
  auto port = srv->port();
  std::vector<std::pair<std::string, std::string>> key
      = {{"Idempotency-Key", "wf-7:3"}};
  auto first
      = raw(port, http::verb::put, "/v1/quota/team-a", R"({"cpus":"8"})", key);
  auto second
      = raw(port, http::verb::put, "/v1/quota/team-a", R"({"cpus":"8"})", key);
  EXPECT_EQ(first.result_int(), 201u);
  EXPECT_EQ(second.result_int(), 201u);
  EXPECT_EQ(first.body(), second.body());
  EXPECT_EQ(key_header(first, "Idempotent-Replayed"), "");
  EXPECT_EQ(key_header(second, "Idempotent-Replayed"), "true");
  auto c = make_client();
  auto third = c.put("quota", "team-a", R"({"cpus":"8"})", "wf-7:3");
  ASSERT_TRUE(third) << describe(third.error());
  EXPECT_TRUE(third->replayed);
  EXPECT_EQ(third->status, 201u);
  // The same key for another request is refused, whatever differs.
  auto other_spec = c.put("quota", "team-a", R"({"cpus":"9"})", "wf-7:3");
  ASSERT_FALSE(other_spec);
  EXPECT_NE(describe(other_spec.error()).find("422"), std::string::npos);
  auto other_path = c.put("quota", "team-b", R"({"cpus":"8"})", "wf-7:3");
  ASSERT_FALSE(other_path);
  EXPECT_NE(describe(other_path.error()).find("422"), std::string::npos);
  auto other_method = c.del("quota", "team-a", "wf-7:3");
  ASSERT_FALSE(other_method);
  EXPECT_EQ(code_of(other_method.error()), errc::invalid_argument);
  EXPECT_FALSE(fake_cloud::retryable(other_method.error()));
  auto a = srv->audit();
  EXPECT_EQ(a.applied, 1u);
  EXPECT_EQ(a.replayed, 2u);
  EXPECT_TRUE(a.keys_applied_more_than_once.empty());
  ASSERT_EQ(a.resources.size(), 1u);
  EXPECT_EQ(a.resources[0].created, 1u);
}

TEST_F(fake_cloud_test, missing_idempotency_key_is_400) {
  start();
  auto put = raw(srv->port(), http::verb::put, "/v1/cell/a", "{}");
  EXPECT_EQ(put.result_int(), 400u);
  EXPECT_NE(put.body().find("missing_idempotency_key"), std::string::npos);
  auto del = raw(srv->port(), http::verb::delete_, "/v1/cell/a");
  EXPECT_EQ(del.result_int(), 400u);
  auto c = make_client();
  auto empty = c.put("cell", "a", "{}", "");
  ASSERT_FALSE(empty);
  EXPECT_EQ(code_of(empty.error()), errc::invalid_argument);
  EXPECT_EQ(srv->audit().applied, 0u);
}

TEST_F(fake_cloud_test, conflict_is_409_and_a_second_create_is_reported) {
  start();
  auto c = make_client();
  ASSERT_TRUE(c.put("certificate", "api", R"({"cn":"api.example"})", "k1"));
  auto conflict = c.put("certificate", "api", R"({"cn":"other"})", "k2");
  ASSERT_FALSE(conflict);
  EXPECT_EQ(code_of(conflict.error()), errc::invalid_argument);
  EXPECT_NE(describe(conflict.error()).find("409"), std::string::npos);
  EXPECT_FALSE(fake_cloud::retryable(conflict.error()));
  // The recorded 409 is replayed under its key.
  auto raw_conflict = raw(srv->port(), http::verb::put, "/v1/certificate/api",
                          R"({"cn":"other"})", {{"Idempotency-Key", "k2"}});
  EXPECT_EQ(raw_conflict.result_int(), 409u);
  auto twice = c.put("certificate", "api", R"({"cn":"api.example"})", "k3");
  ASSERT_TRUE(twice) << describe(twice.error());
  EXPECT_EQ(twice->status, 200u);
  auto a = srv->audit();
  EXPECT_EQ(a.conflicts, 1u);
  ASSERT_EQ(a.double_creates.size(), 1u);
  EXPECT_EQ(a.double_creates[0],
            (fake_cloud::double_create{"certificate", "api", "k3"}));
  EXPECT_EQ(a.live["certificate"], 1u);
}

TEST_F(fake_cloud_test,
       fail_after_apply_then_retry_with_same_key_applies_once) {
  server_config cfg;
  cfg.faults.fail_after_apply_rate = 1;
  start(cfg);
  auto c = make_client();
  auto first = c.put("db_shard", "s1", R"({"size":"10g"})", "wf-2:1");
  ASSERT_FALSE(first);
  EXPECT_EQ(code_of(first.error()), errc::handler_failed);
  EXPECT_TRUE(fake_cloud::retryable(first.error()));
  // Applied although the caller saw a failure.
  EXPECT_TRUE(c.get("db_shard", "s1"));
  ASSERT_FALSE(srv->set_faults({}));
  auto retry = c.put("db_shard", "s1", R"({"size":"10g"})", "wf-2:1");
  ASSERT_TRUE(retry) << describe(retry.error());
  EXPECT_TRUE(retry->replayed);
  EXPECT_EQ(retry->status, 201u);
  auto a = srv->audit();
  EXPECT_EQ(a.applied, 1u);
  EXPECT_EQ(a.replayed, 1u);
  EXPECT_EQ(a.faults.failed_after_apply, 1u);
  EXPECT_TRUE(a.double_creates.empty());
  ASSERT_EQ(a.resources.size(), 1u);
  EXPECT_EQ(a.resources[0].created, 1u);
}

/// Sends `n` creates under distinct keys; returns which ones failed.
std::vector<bool> create_many(const client& c, int n, int& server_errors,
                              int& unavailable) {
  std::vector<bool> failed;
  for (int i = 0; i < n; ++i) {
    auto name = "r" + std::to_string(i);
    auto r = c.put("dns_record", name, "{}", "key-" + name);
    failed.push_back(!r);
    if (!r && code_of(r.error()) == errc::handler_failed)
      ++server_errors;
    else if (!r && code_of(r.error()) == errc::overloaded)
      ++unavailable;
  }
  return failed;
}

TEST_F(fake_cloud_test,
       failure_rate_is_near_the_configured_fraction_and_seeded) {
  server_config cfg;
  cfg.faults.seed = 42;
  cfg.faults.fail_rate = 0.3;
  start(cfg);
  auto c = make_client();
  int server_errors = 0;
  int unavailable = 0;
  auto failed = create_many(c, 2000, server_errors, unavailable);
  auto failures = server_errors + unavailable;
  EXPECT_GT(failures, 480);
  EXPECT_LT(failures, 720);
  EXPECT_GT(server_errors, 0);
  EXPECT_GT(unavailable, 0);
  auto a = srv->audit();
  EXPECT_EQ(a.applied, 2000u - static_cast<uint64_t>(failures));
  EXPECT_EQ(a.faults.failed_before_apply, static_cast<uint64_t>(failures));
  EXPECT_EQ(a.live["dns_record"], a.applied);
  // The same seed meets the same faults; another seed does not.
  auto replay = [&](uint64_t seed) {
    auto other_cfg = cfg;
    other_cfg.faults.seed = seed;
    auto other = server::start(other_cfg);
    if (!other) {
      ADD_FAILURE() << describe(other.error());
      return std::vector<bool>{};
    }
    int e = 0;
    int u = 0;
    return create_many(client{"127.0.0.1", (*other)->port(), 2s}, 200, e, u);
  };
  std::vector<bool> head(failed.begin(), failed.begin() + 200);
  EXPECT_EQ(replay(42), head);
  EXPECT_NE(replay(43), head);
}

TEST_F(fake_cloud_test, beyond_the_bucket_answers_429_with_retry_after) {
  server_config cfg;
  cfg.faults.rate_limit_per_s = 0.1;
  cfg.faults.rate_limit_burst = 3;
  start(cfg);
  auto c = make_client();
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(c.list("cell")) << i;
  auto limited = c.list("cell");
  ASSERT_FALSE(limited);
  EXPECT_EQ(code_of(limited.error()), errc::overloaded);
  EXPECT_TRUE(fake_cloud::retryable(limited.error()));
  auto hint = fake_cloud::retry_after(limited.error());
  ASSERT_TRUE(hint) << describe(limited.error());
  EXPECT_GT(hint->count(), 8'000);
  EXPECT_LE(hint->count(), 10'000);
  auto res = raw(srv->port(), http::verb::get, "/v1/cell");
  EXPECT_EQ(res.result_int(), 429u);
  EXPECT_EQ(key_header(res, "Retry-After"), "10");
  EXPECT_FALSE(key_header(res, "Retry-After-Ms").empty());
  // Health and audit are never limited.
  EXPECT_FALSE(c.healthz());
  auto a = c.audit();
  ASSERT_TRUE(a) << describe(a.error());
  EXPECT_EQ(a->faults.rate_limited, 2u);
}

TEST_F(fake_cloud_test, timeout_is_a_retryable_error_within_the_deadline) {
  server_config cfg;
  cfg.faults.timeout_rate = 1;
  cfg.faults.timeout = 1'000ms;
  cfg.faults.timeout_apply_rate = 1;
  start(cfg);
  auto c = make_client(200ms);
  auto t0 = clock_type::now();
  auto r = c.put("ingress_route", "web", R"({"host":"a"})", "wf-3:1");
  auto elapsed = clock_type::now() - t0;
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), errc::timeout) << describe(r.error());
  EXPECT_TRUE(fake_cloud::retryable(r.error()));
  EXPECT_LT(elapsed, 900ms);
  auto a = srv->audit();
  EXPECT_EQ(a.applied, 1u);
  EXPECT_EQ(a.faults.timeouts, 1u);
  EXPECT_EQ(a.faults.timeouts_after_apply, 1u);
  // A hold shorter than the client's deadline ends in a closed connection,
  // also retryable; this time nothing was applied.
  auto quick = cfg.faults;
  quick.timeout = 20ms;
  quick.timeout_apply_rate = 0;
  ASSERT_FALSE(srv->set_faults(quick));
  auto closed = make_client(2s).put("ingress_route", "api", "{}", "wf-3:2");
  ASSERT_FALSE(closed);
  EXPECT_EQ(code_of(closed.error()), errc::unspecified)
      << describe(closed.error());
  EXPECT_TRUE(fake_cloud::retryable(closed.error()));
  EXPECT_EQ(srv->audit().applied, 1u);
  ASSERT_FALSE(srv->set_faults({}));
  auto retry = c.put("ingress_route", "web", R"({"host":"a"})", "wf-3:1");
  ASSERT_TRUE(retry) << describe(retry.error());
  EXPECT_TRUE(retry->replayed);
  EXPECT_EQ(srv->audit().applied, 1u);
}

TEST_F(fake_cloud_test, audit_counts_creates_deletes_and_matches_the_endpoint) {
  start();
  auto c = make_client();
  ASSERT_TRUE(c.put("cell", "a", "{}", "k1"));
  ASSERT_TRUE(c.del("cell", "a", "k2"));
  ASSERT_TRUE(c.put("cell", "a", R"({"v":"2"})", "k3"));
  ASSERT_TRUE(c.put("cell", "b", "{}", "k4"));
  ASSERT_TRUE(c.del("cell", "b", "k5"));
  ASSERT_TRUE(c.put("quota", "q", "{}", "k6"));
  ASSERT_TRUE(c.put("quota", "q", "{}", "k6"));
  auto a = srv->audit();
  EXPECT_EQ(a.applied, 6u);
  EXPECT_EQ(a.replayed, 1u);
  EXPECT_TRUE(a.double_creates.empty());
  EXPECT_TRUE(a.keys_applied_more_than_once.empty());
  EXPECT_EQ(a.live,
            (std::map<std::string, uint64_t>{{"cell", 1}, {"quota", 1}}));
  ASSERT_EQ(a.resources.size(), 3u);
  EXPECT_EQ(a.resources[0],
            (fake_cloud::resource_history{"cell", "a", 2, 1, true}));
  EXPECT_EQ(a.resources[1],
            (fake_cloud::resource_history{"cell", "b", 1, 1, false}));
  auto remote = c.audit();
  ASSERT_TRUE(remote) << describe(remote.error());
  EXPECT_EQ(*remote, a);
  EXPECT_EQ(fake_cloud::to_json(*remote), fake_cloud::to_json(a));
}

TEST_F(fake_cloud_test, oversized_body_is_413_and_oversized_header_is_431) {
  server_config cfg;
  cfg.max_body_bytes = 1024;
  start(cfg);
  auto c = make_client();
  auto big = R"({"blob":")" + std::string(4096, 'x') + R"("})";
  auto r = c.put("cell", "a", big, "k1");
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), errc::payload_too_large) << describe(r.error());
  EXPECT_FALSE(fake_cloud::retryable(r.error()));
  auto res = raw(srv->port(), http::verb::get, "/healthz", "",
                 {{"X-Padding", std::string(16 * 1024, 'p')}});
  EXPECT_EQ(res.result_int(), 431u);
  EXPECT_FALSE(c.healthz());
  EXPECT_EQ(srv->audit().applied, 0u);
}

TEST_F(fake_cloud_test, connections_beyond_the_cap_and_idle_ones_are_closed) {
  server_config cfg;
  cfg.max_connections = 2;
  cfg.idle_timeout = 300ms;
  start(cfg);
  asio::io_context ioc;
  tcp::endpoint ep{asio::ip::make_address("127.0.0.1"), srv->port()};
  tcp::socket s1{ioc};
  tcp::socket s2{ioc};
  s1.connect(ep);
  s2.connect(ep);
  ASSERT_TRUE(granary::testing::eventually(
      [&] { return srv->connections().open == 2; }, poll_limit, poll_every));
  auto c = make_client();
  auto refused = c.healthz();
  ASSERT_TRUE(refused);
  EXPECT_EQ(code_of(refused), errc::unspecified) << describe(refused);
  EXPECT_TRUE(fake_cloud::retryable(refused));
  EXPECT_GE(srv->connections().rejected, 1u);
  // The idle connections time out and make room.
  ASSERT_TRUE(granary::testing::eventually(
      [&] { return srv->connections().open == 0; }, poll_limit, poll_every));
  EXPECT_FALSE(c.healthz());
}

TEST_F(fake_cloud_test, stop_closes_held_connections_promptly) {
  server_config cfg;
  cfg.faults.timeout_rate = 1;
  cfg.faults.timeout = 10s;
  start(cfg);
  caf::error seen;
  std::thread caller{[&, c = make_client(5s)] {
    auto r = c.get("cell", "a");
    seen = r ? caf::error{} : r.error();
  }};
  bool held = granary::testing::eventually(
      [&] { return srv->audit().faults.timeouts == 1; }, poll_limit,
      poll_every);
  auto t0 = clock_type::now();
  srv->stop();
  EXPECT_LT(clock_type::now() - t0, 1s);
  caller.join();
  EXPECT_LT(clock_type::now() - t0, 1s);
  ASSERT_TRUE(held);
  ASSERT_TRUE(seen);
  EXPECT_EQ(code_of(seen), errc::unspecified) << describe(seen);
}

TEST_F(fake_cloud_test, concurrent_attempts_with_one_key_apply_once) {
  server_config cfg;
  cfg.threads = 2;
  start(cfg);
  constexpr int keys = 50;
  constexpr int callers = 4;
  std::vector<int> failures(callers, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < callers; ++t)
    threads.emplace_back([&, t, c = make_client()] {
      for (int i = 0; i < keys; ++i) {
        auto name = "c" + std::to_string(i);
        if (!c.put("cell", name, R"({"n":"1"})", "wf-9:" + name))
          ++failures[t];
      }
    });
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(failures, std::vector<int>(callers, 0));
  auto a = srv->audit();
  EXPECT_EQ(a.applied, uint64_t{keys});
  EXPECT_EQ(a.replayed, uint64_t{keys * (callers - 1)});
  EXPECT_TRUE(a.keys_applied_more_than_once.empty());
  EXPECT_TRUE(a.double_creates.empty());
  EXPECT_EQ(a.live["cell"], uint64_t{keys});
}

TEST_F(fake_cloud_test, invalid_config_is_rejected) {
  server_config cfg;
  cfg.faults.fail_rate = 1.5;
  auto s = server::start(cfg);
  ASSERT_FALSE(s);
  EXPECT_EQ(code_of(s.error()), errc::invalid_config);
  cfg.faults.fail_rate = 0;
  cfg.host = "not-an-ip";
  s = server::start(cfg);
  ASSERT_FALSE(s);
  EXPECT_EQ(code_of(s.error()), errc::invalid_config);
  start();
  fake_cloud::fault_config bad;
  bad.latency_min = 5ms;
  bad.latency_max = 1ms;
  EXPECT_EQ(code_of(srv->set_faults(bad)), errc::invalid_config);
}

/// A child process with its stdout and stderr on pipes.
struct child {
  pid_t pid = -1;
  int out = -1;
  int err = -1;
};

child spawn(const std::vector<std::string>& args) {
  int out[2];
  int err[2];
  child c;
  if (pipe2(out, O_CLOEXEC) != 0)
    return c;
  if (pipe2(err, O_CLOEXEC) != 0) {
    close(out[0]);
    close(out[1]);
    return c;
  }
  std::string why;
  c.pid = granary::testing::spawn_child(args, out[1], err[1], true, why);
  close(out[1]);
  close(err[1]);
  c.out = out[0];
  c.err = err[0];
  return c;
}

/// Reads `fd` until `done(text)` holds, end of file or `limit` passes.
std::string read_until(int fd,
                       const std::function<bool(const std::string&)>& done,
                       std::chrono::milliseconds limit = 5s) {
  std::string text;
  auto deadline = clock_type::now() + limit;
  while (!done(text)) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - clock_type::now());
    if (left.count() <= 0)
      break;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count())) <= 0)
      break;
    char buf[4096];
    auto n = read(fd, buf, sizeof(buf));
    if (n <= 0)
      break;
    text.append(buf, static_cast<size_t>(n));
  }
  return text;
}

bool eof(const std::string&) {
  return false;
}

/// Waits for `pid` to exit; returns its wait status, or -1 after `limit`
/// (and kills it).
int wait_exit(pid_t pid, std::chrono::milliseconds limit = 5s) {
  int status = 0;
  bool exited = granary::testing::eventually(
      [&] { return waitpid(pid, &status, WNOHANG) == pid; }, limit, poll_every);
  if (!exited) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
  }
  return status;
}

TEST(fake_cloud_api, serves_until_sigterm_then_prints_the_audit) {
  auto c = spawn({FAKE_CLOUD_API_BIN, "--port", "0", "--seed", "7"});
  ASSERT_GT(c.pid, 0);
  auto line = read_until(c.out, [](const std::string& t) {
    return t.find('\n') != std::string::npos;
  });
  const std::string prefix = "listening on 127.0.0.1:";
  ASSERT_EQ(line.rfind(prefix, 0), 0u) << line;
  auto port = std::stoi(line.substr(prefix.size()));
  ASSERT_GT(port, 0);
  client api{"127.0.0.1", static_cast<uint16_t>(port), 2s};
  auto r = api.put("cell", "from-binary", "{}", "bin:1");
  EXPECT_TRUE(r) << describe(r.error());
  ASSERT_EQ(kill(c.pid, SIGTERM), 0);
  auto rest = read_until(c.out, eof);
  auto status = wait_exit(c.pid);
  close(c.out);
  close(c.err);
  ASSERT_NE(status, -1);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  auto summary = fake_cloud::audit_from_json(rest);
  ASSERT_TRUE(summary) << rest;
  EXPECT_EQ(summary->applied, 1u);
  EXPECT_EQ(summary->live["cell"], 1u);
}

TEST(fake_cloud_api, bad_flag_exits_2_naming_the_flag) {
  struct bad_case {
    std::vector<std::string> args;
    std::string flag;
  };
  std::vector<bad_case> cases = {
      {{FAKE_CLOUD_API_BIN, "--port", "0", "--fail-rate", "1.5"},
       "--fail-rate"},
      {{FAKE_CLOUD_API_BIN, "--port", "0", "--rate-limit", "ten"},
       "--rate-limit"},
      {{FAKE_CLOUD_API_BIN, "--port", "0", "--bogus", "1"}, "--bogus"},
      {{FAKE_CLOUD_API_BIN, "--port", "0", "--seed"}, "--seed"},
      {{FAKE_CLOUD_API_BIN, "--seed", "1"}, "--port"},
  };
  for (auto& [args, flag] : cases) {
    auto c = spawn(args);
    ASSERT_GT(c.pid, 0);
    auto err = read_until(c.err, eof);
    auto status = wait_exit(c.pid);
    close(c.out);
    close(c.err);
    ASSERT_NE(status, -1);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 2);
    EXPECT_NE(err.find(flag), std::string::npos) << err;
  }
}

} // namespace

// The in-process API the simulation uses answers as the server does.
TEST(memory_cloud, keeps_the_servers_semantics_and_audit) {
  fake_cloud::memory_cloud api;
  auto a = api.put("vm", "web", R"({"size":"s"})", "k1");
  ASSERT_TRUE(a) << granary::describe(a.error());
  EXPECT_EQ(a->status, 201u);
  // The same key answers from the record.
  auto again = api.put("vm", "web", R"({"size":"s"})", "k1");
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->replayed);
  // The same key with other parameters is refused (422).
  auto reused = api.put("vm", "web", R"({"size":"m"})", "k1");
  EXPECT_EQ(granary::code_of(reused.error()), granary::errc::invalid_argument);
  // Another key, same spec: a double create, recorded.
  ASSERT_TRUE(api.put("vm", "web", R"({"size":"s"})", "k2"));
  // Another spec: a conflict (409).
  auto conflict = api.put("vm", "web", R"({"size":"l"})", "k3");
  EXPECT_EQ(granary::code_of(conflict.error()),
            granary::errc::invalid_argument);
  // Updates need a live resource (412 otherwise); deletes too (404).
  auto missing = api.update("vm", "db", R"({"size":"s"})", "k4");
  EXPECT_EQ(granary::code_of(missing.error()), granary::errc::invalid_argument);
  auto updated = api.update("vm", "web", R"({"size":"m"})", "k5");
  ASSERT_TRUE(updated);
  EXPECT_EQ(updated->res.version, 2u);
  ASSERT_TRUE(api.del("vm", "web", "k6"));
  auto gone = api.get("vm", "web");
  EXPECT_EQ(granary::code_of(gone.error()), granary::errc::not_found);
  auto audit = api.audit();
  ASSERT_EQ(audit.double_creates.size(), 1u);
  EXPECT_EQ(audit.double_creates[0].key, "k2");
  EXPECT_EQ(audit.conflicts, 1u);
  EXPECT_EQ(audit.replayed, 1u);
  ASSERT_EQ(audit.resources.size(), 1u);
  EXPECT_EQ(audit.resources[0].created, 1u);
  EXPECT_EQ(audit.resources[0].deleted, 1u);
  EXPECT_FALSE(audit.resources[0].live);
}

TEST(memory_cloud, a_failure_after_apply_leaves_a_replayable_record) {
  fake_cloud::memory_faults faults;
  faults.fail_after_apply = 1.0;
  fake_cloud::memory_cloud api{faults};
  auto lost = api.put("vm", "web", R"({"size":"s"})", "k1");
  EXPECT_EQ(granary::code_of(lost.error()), granary::errc::handler_failed);
  api.set_faults({});
  auto retry = api.put("vm", "web", R"({"size":"s"})", "k1");
  ASSERT_TRUE(retry);
  EXPECT_TRUE(retry->replayed);
  EXPECT_EQ(retry->status, 201u);
  EXPECT_TRUE(api.audit().double_creates.empty());
}

#include "gateway/gateway_core.hpp"

#include <algorithm>
#include <charconv>
#include <cstdio>

#include <boost/asio/post.hpp>

#include "runtime/json.hpp"

namespace granary::cluster::detail {

namespace {

/// Threads of the blocking pool: storage reads and dead-letter
/// administration are short and rare next to calls and sends.
constexpr size_t blocking_threads = 2;

milliseconds left_until(steady::time_point deadline) {
  auto left
      = std::chrono::duration_cast<milliseconds>(deadline - steady::now());
  return std::max(left, milliseconds{1});
}

} // namespace

gateway_core::gateway_core(gateway_config config, silo& s)
    : cfg(std::move(config))
    , target(s)
    , pool_(blocking_threads) {}

gateway_core::~gateway_core() {
  stop_pool();
}

std::string gateway_core::silo_status() const {
  if (auto err = target.failure())
    return "failed";
  return stopping.load() ? "stopping" : "running";
}

std::string gateway_core::fresh_id() {
  std::lock_guard guard{mtx_};
  std::uniform_int_distribution<uint64_t> dist;
  char buf[32];
  std::snprintf(buf, sizeof(buf), "gw-%016llx",
                static_cast<unsigned long long>(dist(rng_)));
  return buf;
}

std::string gateway_core::remote_gateway(uint32_t p) const {
  return cfg.remote_gateway ? cfg.remote_gateway(p) : std::string{};
}

bool gateway_core::run_blocking(std::function<void()> job) {
  std::lock_guard guard{mtx_};
  if (pool_stopped_)
    return false;
  boost::asio::post(pool_, std::move(job));
  return true;
}

void gateway_core::stop_pool() {
  {
    std::lock_guard guard{mtx_};
    if (pool_stopped_)
      return;
    pool_stopped_ = true;
  }
  // Runs what was queued to its end (each job is bounded by the silo's
  // own timeouts), so that no job stays behind holding a request.
  pool_.join();
}

namespace {

// Serves a request by making its exchange and handing it to `e`.
http::handler handler_of(const std::shared_ptr<gateway_core>& gw, endpoint e) {
  return [gw, e = std::move(e)](http::request req, http::responder res) {
    auto x = std::make_shared<exchange>();
    x->gw = gw;
    x->strand = res.strand();
    x->res = std::move(res);
    x->req = std::move(req);
    e(x);
  };
}

} // namespace

void add_route(http::router& r, const std::shared_ptr<gateway_core>& gw,
               http::verb method, std::string_view path, endpoint e) {
  r.add(method, path, handler_of(gw, std::move(e)));
}

void add_any_route(http::router& r, const std::shared_ptr<gateway_core>& gw,
                   std::string_view path, endpoint e) {
  r.any(path, handler_of(gw, std::move(e)));
}

bool refuse_name(const exchange_ptr& x, const std::string& text,
                 const char* what) {
  auto refuse = [&](const std::string& why) {
    x->reply(error_reply(400, errc::invalid_argument,
                         std::string{"the "} + what + " " + why));
    return true;
  };
  if (text.empty())
    return refuse("is empty");
  if (!is_valid_utf8(text))
    return refuse("is not valid UTF-8");
  for (unsigned char c : text)
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "0x%02x", c);
      return refuse(std::string{"holds a control character ("} + buf + ")");
    }
  return false;
}

bool refuse_id(const exchange_ptr& x, const std::string& text) {
  return !text.empty() && refuse_name(x, text, "message id");
}

std::optional<size_t> limit_of(const exchange_ptr& x) {
  auto max = x->cfg().max_list;
  auto* t = x->req.query_value("limit");
  if (!t)
    return std::min<size_t>(100, max);
  size_t n = 0;
  auto res = std::from_chars(t->data(), t->data() + t->size(), n);
  if (t->empty() || res.ec != std::errc{} || res.ptr != t->data() + t->size()
      || n == 0 || n > max) {
    x->reply(error_reply(400, errc::invalid_argument,
                         "limit must be in [1, " + std::to_string(max)
                             + "], not '" + *t + "'"));
    return std::nullopt;
  }
  return n;
}

http::response accepted(const std::string& msg_id) {
  json out;
  out["accepted"] = true;
  out["id"] = msg_id;
  return json_reply(202, out);
}

bool finished(wire::WorkflowState::Status s) {
  return s == wire::WorkflowState::COMPLETED
         || s == wire::WorkflowState::FAILED;
}

// -- calls and sends with deadlines -------------------------------------------

namespace {

const caf::error* error_in(const caf::expected<message_ptr>& res) {
  return res ? nullptr : &res.error();
}

const caf::error* error_in(const caf::error& err) {
  return err ? &err : nullptr;
}

// A silo operation in progress (a call or a send), raced against its
// deadline and tried again on `not_owner` (a partition in a handoff), as
// the blocking `silo::call` and `silo::send` do.
template <class Result>
struct attempt_state {
  // Starts one attempt; its callback runs once, on any thread.
  std::function<void(std::function<void(Result)>)> start;
  // The result when the deadline passes first.
  std::function<Result()> timed_out;
  std::function<void(Result)> then;
  steady::time_point deadline;
  milliseconds pause{10};
};

template <class Result>
void attempt(const exchange_ptr& x, std::shared_ptr<attempt_state<Result>> a) {
  auto step = ++x->step;
  x->strand.after(left_until(a->deadline), [x, a, step] {
    if (x->step != step)
      return;
    ++x->step;
    a->then(a->timed_out());
  });
  auto strand = x->strand;
  a->start([x, a, step, strand](Result res) {
    // On a silo thread: continue on the request's strand.
    strand.post([x, a, step, res = std::move(res)]() mutable {
      if (x->step != step)
        return;
      ++x->step;
      auto* err = error_in(res);
      if (err && code_of(*err) == errc::not_owner
          && steady::now() + a->pause < a->deadline) {
        x->strand.after(a->pause, [x, a] { attempt(x, a); });
        a->pause = std::min(a->pause * 2, milliseconds{200});
        return;
      }
      a->then(std::move(res));
    });
  });
}

} // namespace

void call(const exchange_ptr& x, grain_id id, message_ptr msg,
          std::function<void(caf::expected<message_ptr>)> then) {
  using result = caf::expected<message_ptr>;
  auto a = std::make_shared<attempt_state<result>>();
  auto timeout = x->cfg().call_timeout;
  a->timed_out = [id, timeout]() -> result {
    return make_error(errc::timeout,
                      "transient call to " + to_string(id) + " timed out after "
                          + std::to_string(timeout.count()) + " ms");
  };
  auto& target = x->target();
  a->start = [&target, id = std::move(id),
              msg = std::move(msg)](std::function<void(result)> done) {
    target.call_async(id, msg, std::move(done));
  };
  a->then = std::move(then);
  a->deadline = steady::now() + timeout;
  attempt(x, std::move(a));
}

void send(const exchange_ptr& x, grain_id id,
          std::shared_ptr<const google::protobuf::Message> msg,
          std::string msg_id, std::function<void(caf::error)> then) {
  auto a = std::make_shared<attempt_state<caf::error>>();
  auto timeout = x->cfg().call_timeout;
  a->timed_out = [id, timeout] {
    return make_error(errc::timeout,
                      "durable send to " + to_string(id)
                          + " was not acknowledged within "
                          + std::to_string(timeout.count())
                          + " ms; resend with the same msg_id to be safe");
  };
  auto& target = x->target();
  a->start
      = [&target, id = std::move(id), msg = std::move(msg),
         msg_id = std::move(msg_id)](std::function<void(caf::error)> done) {
          target.send_async(id, *msg, msg_id,
                            [done](const caf::error& err) { done(err); });
        };
  a->then = std::move(then);
  a->deadline = steady::now() + timeout;
  attempt(x, std::move(a));
}

void answer_blocking(const exchange_ptr& x,
                     std::function<http::response()> work) {
  x->gw->run_blocking([x, work = std::move(work)] { x->reply(work()); });
}

} // namespace granary::cluster::detail

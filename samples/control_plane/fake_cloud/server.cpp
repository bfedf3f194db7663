#include "samples/control_plane/fake_cloud/server.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio/ip/address.hpp>

#include "http/router.hpp"
#include "http/server.hpp"
#include "runtime/error.hpp"
#include "runtime/json.hpp"

namespace fake_cloud {

using granary::errc;
using granary::json_quote;
using granary::make_error;

namespace {

constexpr std::chrono::milliseconds max_fault_delay{600'000};

bool valid_rate(double x) {
  return std::isfinite(x) && x >= 0 && x <= 1;
}

caf::error bad_config(std::string what) {
  return make_error(errc::invalid_config, std::move(what));
}

} // namespace

caf::error validate(const fault_config& cfg) {
  if (cfg.latency_min.count() < 0 || cfg.latency_max < cfg.latency_min
      || cfg.latency_max > max_fault_delay)
    return bad_config("latency must satisfy 0 <= min <= max <= 600000 ms");
  if (!valid_rate(cfg.fail_rate))
    return bad_config("fail rate must be in [0, 1]");
  if (!valid_rate(cfg.fail_after_apply_rate))
    return bad_config("fail-after-apply rate must be in [0, 1]");
  if (!std::isfinite(cfg.rate_limit_per_s) || cfg.rate_limit_per_s < 0)
    return bad_config("rate limit must be >= 0 requests/s (0 disables it)");
  if (cfg.rate_limit_burst < 1)
    return bad_config("rate limit burst must be >= 1");
  if (!valid_rate(cfg.timeout_rate))
    return bad_config("timeout rate must be in [0, 1]");
  if (cfg.timeout.count() < 0 || cfg.timeout > max_fault_delay)
    return bad_config("timeout must be in [0, 600000] ms");
  if (!valid_rate(cfg.timeout_apply_rate))
    return bad_config("timeout apply rate must be in [0, 1]");
  return caf::none;
}

caf::error validate(const server_config& cfg) {
  boost::system::error_code ec;
  boost::asio::ip::make_address(cfg.host, ec);
  if (ec)
    return bad_config("host '" + cfg.host + "' is not an IP address");
  if (cfg.threads < 1 || cfg.threads > 64)
    return bad_config("threads must be in [1, 64]");
  if (cfg.max_connections < 1 || cfg.max_connections > 100'000)
    return bad_config("max connections must be in [1, 100000]");
  if (cfg.max_header_bytes < 512 || cfg.max_header_bytes > 1024 * 1024)
    return bad_config("max header bytes must be in [512, 1048576]");
  if (cfg.max_body_bytes > 64 * 1024 * 1024)
    return bad_config("max body bytes must be <= 67108864");
  if (cfg.idle_timeout.count() < 1 || cfg.idle_timeout > max_fault_delay)
    return bad_config("idle timeout must be in [1, 600000] ms");
  if (cfg.max_keys < 1)
    return bad_config("max keys must be >= 1");
  return validate(cfg.faults);
}

namespace detail {

namespace http = granary::http;
using std::chrono::milliseconds;

/// An answer before it becomes an HTTP response.
struct reply {
  unsigned status = 200;
  std::string body;
  /// Adds `Retry-After` (whole seconds, rounded up) and `Retry-After-Ms`.
  uint64_t retry_after_ms = 0;
  /// Adds `Idempotent-Replayed: true`.
  bool replayed = false;
};

reply error_reply(unsigned status, std::string_view code,
                  const std::string& message, uint64_t retry_after_ms = 0) {
  reply r;
  r.status = status;
  r.retry_after_ms = retry_after_ms;
  r.body = "{\"error\":" + json_quote(code)
           + ",\"message\":" + json_quote(message);
  if (retry_after_ms > 0)
    r.body += ",\"retry_after_ms\":" + std::to_string(retry_after_ms);
  r.body += "}";
  return r;
}

http::response to_response(reply r) {
  http::response out;
  out.status = r.status;
  out.body = std::move(r.body);
  out.retry_after_ms = r.retry_after_ms;
  if (r.retry_after_ms > 0)
    out.headers.emplace_back("Retry-After-Ms",
                             std::to_string(r.retry_after_ms));
  if (r.replayed)
    out.headers.emplace_back("Idempotent-Replayed", "true");
  return out;
}

// The error codes of the answers the HTTP server gives itself.
std::string_view code_of(http::refusal r) {
  switch (r) {
    case http::refusal::body_too_large:
      return "payload_too_large";
    case http::refusal::header_too_large:
      return "header_too_large";
    case http::refusal::header_timeout:
      return "request_timeout";
    case http::refusal::malformed:
      return "bad_request";
    case http::refusal::too_many_connections:
    case http::refusal::too_many_pending:
      return "unavailable";
    case http::refusal::dropped:
      return "internal";
  }
  return "internal";
}

/// What the request asks for, once routed and validated.
struct request {
  enum class op { get, list, put, del };
  op what = op::get;
  std::string method;
  std::string path;
  std::string kind;
  std::string name;
  std::string key;
  std::map<std::string, std::string> spec;
  /// `If-Match` of a PUT: "*" or a version; empty for create intent.
  std::string if_match;
};

/// What happens to a faultable request, decided when it arrives.
enum class fate {
  normal,
  fail_before,
  fail_after,
  timeout_before,
  timeout_after,
};

/// The decision for one request.
struct plan {
  /// Set when the request is answered at once, without faults.
  std::optional<reply> now;
  request req;
  milliseconds latency{0};
  fate what = fate::normal;
  unsigned fail_status = 500;
  milliseconds hold{0};
};

bool valid_kind(std::string_view kind) {
  if (kind.empty() || kind.size() > 64 || kind.front() == '_')
    return false;
  return std::all_of(kind.begin(), kind.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || c == '_'; });
}

bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > 128)
    return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'
           || c == ':';
  });
}

bool valid_key(std::string_view key) {
  if (key.empty() || key.size() > 255)
    return false;
  return std::all_of(key.begin(), key.end(),
                     [](char c) { return c > 0x20 && c < 0x7f; });
}

/// Parses `*`, `N` or `"N"`; returns false for anything else.
bool parse_if_match(std::string_view text, std::string& out) {
  if (text == "*") {
    out = "*";
    return true;
  }
  if (text.size() >= 2 && text.front() == '"' && text.back() == '"')
    text = text.substr(1, text.size() - 2);
  if (text.empty() || text.size() > 19
      || !std::all_of(text.begin(), text.end(),
                      [](char c) { return c >= '0' && c <= '9'; }))
    return false;
  out = std::string{text};
  return true;
}

uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

uint64_t fnv1a(std::string_view text) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

/// A splitmix64 stream of uniform doubles in [0, 1).
class draws {
public:
  explicit draws(uint64_t state)
      : state_(state) {}

  double next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    return static_cast<double>(mix(state_) >> 11) * 0x1.0p-53;
  }

private:
  uint64_t state_;
};

/// Everything behind `server`: the resource store, the mutation record,
/// the fault state, and the routes served by an `http::server`.
class server_state : public std::enable_shared_from_this<server_state> {
public:
  explicit server_state(server_config cfg)
      : cfg_(std::move(cfg))
      , faults_(cfg_.faults) {
    tokens_ = faults_.rate_limit_burst;
    refilled_ = std::chrono::steady_clock::now();
  }

  /// Listens and serves (the routes hold this state).
  caf::error start();

  void stop() {
    if (http_)
      http_->stop();
  }

  uint16_t port() const {
    return http_->port();
  }

  const server_config& config() const {
    return cfg_;
  }

  caf::error set_faults(const fault_config& faults) {
    if (auto err = validate(faults))
      return err;
    std::lock_guard guard{mtx_};
    faults_ = faults;
    tokens_ = faults_.rate_limit_burst;
    refilled_ = std::chrono::steady_clock::now();
    return caf::none;
  }

  audit_summary audit() const {
    std::lock_guard guard{mtx_};
    return audit_locked();
  }

  connection_stats connections() const {
    auto s = http_->stats();
    connection_stats out;
    out.open = s.open_connections;
    out.accepted = s.accepted;
    out.rejected = s.rejected_connections;
    return out;
  }

private:
  struct key_record {
    std::string method;
    std::string path;
    /// The canonical spec and `If-Match` of the request.
    std::string fingerprint;
    unsigned status = 0;
    std::string body;
    uint64_t executions = 0;
  };

  struct entry {
    resource res;
    bool live = false;
    uint64_t created = 0;
    uint64_t deleted = 0;
    std::string created_by;
  };

  /// Validates a routed request and draws its faults.
  plan admit(request::op what, const http::request& msg);

  /// Serves a routed request as its plan says: delays, applies and
  /// answers it, or holds it and closes the connection unanswered.
  void serve(request::op what, http::request msg, http::responder res);

  /// Applies (or replays, or reads) the request of `p`.
  reply execute(const plan& p);

  audit_summary audit_locked() const;

  reply mutate(const request& req);

  reply put(const request& req);

  reply del(const request& req);

  reply read(const request& req) const;

  static std::string fingerprint(const request& req) {
    return req.if_match + "\n" + spec_to_json(req.spec);
  }

  // Set once in the constructor; `faults_` holds the live copy of faults.
  const server_config cfg_;

  mutable std::mutex mtx_;
  fault_config faults_;
  double tokens_ = 0;
  std::chrono::steady_clock::time_point refilled_;
  std::unordered_map<std::string, uint32_t> seen_;
  std::unordered_map<std::string, key_record> keys_;
  std::map<std::pair<std::string, std::string>, entry> resources_;
  uint64_t applied_ = 0;
  uint64_t replayed_ = 0;
  uint64_t conflicts_ = 0;
  std::vector<double_create> double_creates_;
  fault_counts fault_counts_;

  http::router routes_;
  std::unique_ptr<http::server> http_;
};

caf::error server_state::start() {
  std::weak_ptr<server_state> weak = shared_from_this();
  // The routes hold the state weakly: the state owns the server, and with
  // it the routes.
  auto route = [weak](request::op what) {
    return [weak, what](http::request req, http::responder res) {
      if (auto self = weak.lock())
        self->serve(what, std::move(req), std::move(res));
    };
  };
  auto answer = [](unsigned status, std::string body) {
    return [status, body](http::request, http::responder res) {
      res.send(to_response(reply{status, body}));
    };
  };
  routes_.add(http::verb::get, "/healthz", answer(200, "{\"status\":\"ok\"}"))
      .add(http::verb::get, "/v1/_audit",
           [weak](http::request, http::responder res) {
             if (auto self = weak.lock())
               res.send(to_response(reply{200, to_json(self->audit())}));
           })
      .add(http::verb::get, "/v1/{kind}", route(request::op::list))
      .add(http::verb::get, "/v1/{kind}/{name}", route(request::op::get))
      .add(http::verb::put, "/v1/{kind}/{name}", route(request::op::put))
      .add(http::verb::delete_, "/v1/{kind}/{name}", route(request::op::del))
      .on_error([](const http::request& req, const http::router_error& e) {
        std::string path{req.path()};
        if (e.status == 404)
          return to_response(error_reply(404, "not_found",
                                         "no route for '" + path
                                             + "'; use /v1/{kind}[/{name}]"));
        if (e.status == 405)
          return to_response(error_reply(405, "method_not_allowed", e.message));
        return to_response(error_reply(e.status, "bad_request", e.message));
      });
  auto render = [](const http::server_error& e) {
    return to_response(
        error_reply(e.status, code_of(e.what), e.message, e.retry_after_ms));
  };
  // A provider that is full just closes new connections; one slow to send
  // its request header has the idle timeout to do so.
  http::server_config hc{.host = cfg_.host,
                         .port = cfg_.port,
                         .threads = cfg_.threads,
                         .max_connections = cfg_.max_connections,
                         .answer_refused_connections = false,
                         .max_header_bytes = cfg_.max_header_bytes,
                         .max_body_bytes = cfg_.max_body_bytes,
                         .header_timeout = cfg_.idle_timeout,
                         .idle_timeout = cfg_.idle_timeout,
                         .name = "fake-cloud",
                         .render = render};
  auto srv = http::server::start(std::move(hc), std::ref(routes_));
  if (!srv)
    return make_error(errc::unspecified,
                      "fake cloud: " + granary::describe(srv.error()));
  http_ = std::move(*srv);
  return caf::none;
}

namespace {

// A faultable request in progress: its plan and its way back.
struct held {
  plan p;
  http::responder res;
};

} // namespace

void server_state::serve(request::op what, http::request msg,
                         http::responder res) {
  auto h = std::make_shared<held>();
  h->p = admit(what, msg);
  h->res = std::move(res);
  if (h->p.now) {
    h->res.send(to_response(std::move(*h->p.now)));
    return;
  }
  std::weak_ptr<server_state> weak = shared_from_this();
  // Runs on the connection's strand, after the latency.
  auto proceed = [weak, h] {
    auto self = weak.lock();
    if (!self)
      return;
    auto hold = [h] {
      // Held for `timeout`, then closed without an answer.
      h->res.after(h->p.hold, [h] { h->res.drop(); });
    };
    switch (h->p.what) {
      case fate::fail_before: {
        auto status = h->p.fail_status;
        h->res.send(to_response(
            error_reply(status, status == 503 ? "unavailable" : "internal",
                        "injected failure; the mutation was not applied",
                        status == 503 ? 100 : 0)));
        return;
      }
      case fate::timeout_before:
        hold();
        return;
      case fate::timeout_after:
        self->execute(h->p);
        hold();
        return;
      case fate::fail_after:
        self->execute(h->p);
        h->res.send(to_response(
            error_reply(500, "internal",
                        "injected failure after the mutation was applied")));
        return;
      case fate::normal:
        h->res.send(to_response(self->execute(h->p)));
        return;
    }
  };
  if (h->p.latency.count() == 0)
    proceed();
  else
    h->res.after(h->p.latency, proceed);
}

plan server_state::admit(request::op what, const http::request& msg) {
  plan p;
  auto& req = p.req;
  req.what = what;
  req.method = std::string{http::to_string(msg.method)};
  req.path = std::string{msg.path()};
  req.kind = msg.param("kind");
  req.name = msg.param("name");
  if (!valid_kind(req.kind)) {
    p.now = error_reply(400, "bad_kind",
                        "kind '" + req.kind
                            + "' must be 1-64 characters of [a-z_], not "
                              "starting with '_'");
    return p;
  }
  if (what != request::op::list && !valid_name(req.name)) {
    p.now = error_reply(400, "bad_name",
                        "name '" + req.name
                            + "' must be 1-128 characters of [A-Za-z0-9._:-]");
    return p;
  }
  bool mutation = what == request::op::put || what == request::op::del;
  if (mutation) {
    req.key = std::string{msg.header("Idempotency-Key")};
    if (req.key.empty()) {
      p.now = error_reply(400, "missing_idempotency_key",
                          "PUT and DELETE require an Idempotency-Key header");
      return p;
    }
    if (!valid_key(req.key)) {
      p.now = error_reply(400, "bad_idempotency_key",
                          "Idempotency-Key must be 1-255 printable ASCII "
                          "characters without spaces");
      return p;
    }
    if (what == request::op::put) {
      const auto& body = msg.body;
      auto spec = spec_from_json(body.empty() ? std::string_view{"{}"}
                                              : std::string_view{body});
      if (!spec) {
        p.now = error_reply(400, "bad_spec", granary::describe(spec.error()));
        return p;
      }
      req.spec = std::move(*spec);
      auto if_match = msg.header("If-Match");
      if (!if_match.empty() && !parse_if_match(if_match, req.if_match)) {
        p.now = error_reply(400, "bad_if_match",
                            "If-Match must be '*' or a resource version");
        return p;
      }
    }
  }
  std::lock_guard guard{mtx_};
  auto& f = faults_;
  if (f.rate_limit_per_s > 0) {
    auto now = std::chrono::steady_clock::now();
    std::chrono::duration<double> elapsed = now - refilled_;
    refilled_ = now;
    tokens_ = std::min<double>(f.rate_limit_burst,
                               tokens_ + elapsed.count() * f.rate_limit_per_s);
    if (tokens_ < 1) {
      ++fault_counts_.rate_limited;
      auto wait_ms = std::ceil((1 - tokens_) / f.rate_limit_per_s * 1000);
      auto ms = static_cast<uint64_t>(std::max(1.0, wait_ms));
      p.now = error_reply(429, "rate_limited",
                          "rate limit of " + std::to_string(f.rate_limit_per_s)
                              + " requests/s exceeded",
                          ms);
      return p;
    }
    tokens_ -= 1;
  }
  // The same attempt of the same request meets the same faults on every
  // run, independent of how concurrent requests interleave.
  auto id = req.method + ' ' + req.path + ' ' + req.key;
  if (seen_.size() >= cfg_.max_keys && seen_.count(id) == 0)
    seen_.clear();
  auto attempt = ++seen_[id];
  draws d{mix(f.seed ^ mix(fnv1a(id) + attempt))};
  auto u_latency = d.next();
  auto u_timeout = d.next();
  auto u_timeout_apply = d.next();
  auto u_fail = d.next();
  auto u_fail_status = d.next();
  auto u_fail_after = d.next();
  auto span = (f.latency_max - f.latency_min).count() + 1;
  p.latency = f.latency_min
              + milliseconds{
                  static_cast<int64_t>(u_latency * static_cast<double>(span))};
  p.hold = f.timeout;
  if (u_timeout < f.timeout_rate) {
    ++fault_counts_.timeouts;
    p.what = mutation && u_timeout_apply < f.timeout_apply_rate
                 ? fate::timeout_after
                 : fate::timeout_before;
  } else if (mutation && u_fail < f.fail_rate) {
    ++fault_counts_.failed_before_apply;
    p.what = fate::fail_before;
    p.fail_status = u_fail_status < 0.5 ? 500 : 503;
  } else if (mutation && u_fail_after < f.fail_after_apply_rate) {
    p.what = fate::fail_after;
  }
  return p;
}

reply server_state::execute(const plan& p) {
  std::lock_guard guard{mtx_};
  if (p.what == fate::fail_after)
    ++fault_counts_.failed_after_apply;
  else if (p.what == fate::timeout_after)
    ++fault_counts_.timeouts_after_apply;
  if (p.req.what == request::op::get || p.req.what == request::op::list)
    return read(p.req);
  return mutate(p.req);
}

reply server_state::mutate(const request& req) {
  auto print = fingerprint(req);
  if (auto i = keys_.find(req.key); i != keys_.end()) {
    auto& rec = i->second;
    if (rec.method != req.method || rec.path != req.path
        || rec.fingerprint != print)
      return error_reply(422, "idempotency_key_reused",
                         "Idempotency-Key '" + req.key + "' was used for "
                             + rec.method + " " + rec.path
                             + " with other parameters");
    ++replayed_;
    reply r{rec.status, rec.body};
    r.replayed = true;
    return r;
  }
  if (keys_.size() >= cfg_.max_keys)
    return error_reply(507, "record_full",
                       "the idempotency record holds "
                           + std::to_string(cfg_.max_keys) + " keys");
  auto r = req.what == request::op::put ? put(req) : del(req);
  auto& rec = keys_[req.key];
  rec.method = req.method;
  rec.path = req.path;
  rec.fingerprint = std::move(print);
  rec.status = r.status;
  rec.body = r.body;
  ++rec.executions;
  ++applied_;
  return r;
}

reply server_state::put(const request& req) {
  auto i = resources_.find({req.kind, req.name});
  bool live = i != resources_.end() && i->second.live;
  auto what = req.kind + " '" + req.name + "'";
  if (!req.if_match.empty()) {
    if (!live)
      return error_reply(412, "precondition_failed",
                         what + " does not exist; If-Match needs it to");
    auto& e = i->second;
    if (req.if_match != "*" && req.if_match != std::to_string(e.res.version))
      return error_reply(412, "precondition_failed",
                         what + " is at version "
                             + std::to_string(e.res.version) + ", not "
                             + req.if_match);
    if (e.res.spec != req.spec) {
      e.res.spec = req.spec;
      ++e.res.version;
    }
    auto body = to_json(e.res);
    body.insert(body.size() - 1, ",\"created\":false");
    return reply{200, std::move(body)};
  }
  if (live) {
    auto& e = i->second;
    if (e.res.spec != req.spec) {
      ++conflicts_;
      return error_reply(409, "conflict",
                         what + " exists with another spec (created under "
                             + "Idempotency-Key '" + e.created_by + "')");
    }
    double_creates_.push_back({req.kind, req.name, req.key});
    auto body = to_json(e.res);
    body.insert(body.size() - 1, ",\"created\":false");
    return reply{200, std::move(body)};
  }
  if (i == resources_.end())
    i = resources_.emplace(std::pair{req.kind, req.name}, entry{}).first;
  auto& e = i->second;
  e.res = resource{req.kind, req.name, 1, req.spec};
  e.live = true;
  ++e.created;
  e.created_by = req.key;
  auto body = to_json(e.res);
  body.insert(body.size() - 1, ",\"created\":true");
  return reply{201, std::move(body)};
}

reply server_state::del(const request& req) {
  auto i = resources_.find({req.kind, req.name});
  if (i == resources_.end() || !i->second.live)
    return error_reply(404, "not_found",
                       req.kind + " '" + req.name + "' does not exist");
  auto& e = i->second;
  e.live = false;
  ++e.deleted;
  auto body = to_json(e.res);
  body.insert(body.size() - 1, ",\"deleted\":true");
  return reply{200, std::move(body)};
}

reply server_state::read(const request& req) const {
  if (req.what == request::op::get) {
    auto i = resources_.find({req.kind, req.name});
    if (i == resources_.end() || !i->second.live)
      return error_reply(404, "not_found",
                         req.kind + " '" + req.name + "' does not exist");
    return reply{200, to_json(i->second.res)};
  }
  std::string body = "{\"kind\":" + json_quote(req.kind) + ",\"items\":[";
  bool first = true;
  for (auto i = resources_.lower_bound({req.kind, ""});
       i != resources_.end() && i->first.first == req.kind; ++i) {
    if (!i->second.live)
      continue;
    body += first ? "" : ",";
    first = false;
    body += to_json(i->second.res);
  }
  body += "]}";
  return reply{200, std::move(body)};
}

audit_summary server_state::audit_locked() const {
  audit_summary s;
  s.applied = applied_;
  s.replayed = replayed_;
  s.conflicts = conflicts_;
  s.double_creates = double_creates_;
  s.faults = fault_counts_;
  for (auto& [key, rec] : keys_)
    if (rec.executions > 1)
      s.keys_applied_more_than_once.push_back(key);
  std::sort(s.keys_applied_more_than_once.begin(),
            s.keys_applied_more_than_once.end());
  for (auto& [id, e] : resources_) {
    if (e.live)
      ++s.live[id.first];
    s.resources.push_back({id.first, id.second, e.created, e.deleted, e.live});
  }
  return s;
}

} // namespace detail

server::server(std::shared_ptr<detail::server_state> state)
    : state_(std::move(state)) {}

server::~server() {
  stop();
}

caf::expected<std::unique_ptr<server>> server::start(server_config cfg) {
  if (auto err = validate(cfg))
    return err;
  auto state = std::make_shared<detail::server_state>(std::move(cfg));
  if (auto err = state->start())
    return err;
  return std::unique_ptr<server>{new server(std::move(state))};
}

uint16_t server::port() const {
  return state_->port();
}

const std::string& server::host() const {
  return state_->config().host;
}

caf::error server::set_faults(const fault_config& faults) {
  return state_->set_faults(faults);
}

audit_summary server::audit() const {
  return state_->audit();
}

connection_stats server::connections() const {
  return state_->connections();
}

void server::stop() {
  state_->stop();
}

} // namespace fake_cloud

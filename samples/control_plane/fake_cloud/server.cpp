#include "samples/control_plane/fake_cloud/server.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

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

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using std::chrono::milliseconds;

const boost::system::error_category& http_category() {
  return http::make_error_code(http::error::end_of_stream).category();
}

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

class session;

/// Everything behind `server`: the resource store, the mutation record,
/// the fault state and the io_context with its threads.
class server_state {
public:
  explicit server_state(server_config cfg)
      : cfg_(std::move(cfg))
      , faults_(cfg_.faults) {
    tokens_ = faults_.rate_limit_burst;
    refilled_ = std::chrono::steady_clock::now();
  }

  ~server_state() {
    stop();
  }

  caf::error listen() {
    beast::error_code ec;
    tcp::endpoint ep{asio::ip::make_address(cfg_.host, ec), cfg_.port};
    if (!ec)
      acceptor_.open(ep.protocol(), ec);
    if (!ec)
      acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec)
      acceptor_.bind(ep, ec);
    if (!ec)
      acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (!ec)
      port_ = acceptor_.local_endpoint(ec).port();
    if (ec)
      return make_error(errc::unspecified,
                        "fake cloud cannot listen on " + cfg_.host + ":"
                            + std::to_string(cfg_.port) + ": " + ec.message());
    return caf::none;
  }

  void run() {
    accept();
    for (size_t i = 0; i < cfg_.threads; ++i)
      threads_.emplace_back([this] { work(); });
  }

  void stop();

  uint16_t port() const {
    return port_;
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
    std::lock_guard guard{mtx_};
    return conns_;
  }

  /// Routes and validates a request and draws its faults.
  plan admit(const http::request<http::string_body>& msg);

  /// Applies (or replays, or reads) the request of `p`.
  reply execute(const plan& p);

  /// Counts the connection of `s`; false when the cap is reached.
  bool add_session(const std::shared_ptr<session>& s);

  /// Forgets the connection of `s` (from its destructor).
  void remove_session(const session* s);

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

  void work() {
    // A throwing handler must not take the whole server down; the loop
    // ends when `run` returns normally, i.e. when the work is gone.
    for (;;) {
      try {
        ioc_.run();
        break;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "fake cloud: handler threw: %s\n", e.what());
      }
    }
    std::lock_guard guard{mtx_};
    ++threads_done_;
    threads_cv_.notify_all();
  }

  void accept();

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
  uint16_t port_ = 0;

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
  connection_stats conns_;
  std::map<const session*, std::weak_ptr<session>> sessions_;
  bool stopping_ = false;
  size_t threads_done_ = 0;
  std::condition_variable threads_cv_;

  // Destroyed first: its pending handlers own sessions, whose destructors
  // use the members above.
  asio::io_context ioc_{static_cast<int>(cfg_.threads)};
  asio::executor_work_guard<asio::io_context::executor_type> work_{
      ioc_.get_executor()};
  tcp::acceptor acceptor_{asio::make_strand(ioc_)};
  asio::steady_timer accept_retry_{acceptor_.get_executor()};
  std::vector<std::thread> threads_;
};

/// One connection: reads requests one at a time, delays, applies and
/// answers them, or holds and drops them as the plan says.
class session : public std::enable_shared_from_this<session> {
public:
  session(server_state& st, tcp::socket sock)
      : st_(st)
      , stream_(std::move(sock))
      , timer_(stream_.get_executor())
      , buf_(st.config().max_header_bytes + st.config().max_body_bytes + 4096) {
  }

  ~session() {
    st_.remove_session(this);
  }

  void start() {
    asio::dispatch(stream_.get_executor(),
                   [self = shared_from_this()] { self->read(); });
  }

  /// Closes the connection at once; pending operations end aborted.
  void abort() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] {
      self->closing_ = true;
      self->timer_.cancel();
      beast::error_code ec;
      self->stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
      self->stream_.close();
    });
  }

private:
  void read() {
    if (closing_)
      return;
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(st_.config().max_header_bytes));
    parser_->body_limit(st_.config().max_body_bytes);
    stream_.expires_after(st_.config().idle_timeout);
    http::async_read(stream_, buf_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->on_read(ec);
                     });
  }

  void on_read(beast::error_code ec) {
    if (closing_ || ec == asio::error::operation_aborted)
      return;
    if (ec == http::error::body_limit) {
      answer(error_reply(413, "payload_too_large",
                         "request body exceeds "
                             + std::to_string(st_.config().max_body_bytes)
                             + " bytes"),
             false);
      return;
    }
    if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
      answer(error_reply(431, "header_too_large",
                         "request header exceeds "
                             + std::to_string(st_.config().max_header_bytes)
                             + " bytes"),
             false);
      return;
    }
    if (ec
        && (ec == http::error::end_of_stream
            || ec == http::error::partial_message
            || ec.category() != http_category())) {
      // The client left, went idle or the socket failed: nothing to answer.
      drop();
      return;
    }
    if (ec) {
      answer(error_reply(400, "bad_request", "malformed HTTP: " + ec.message()),
             false);
      return;
    }
    auto& msg = parser_->get();
    keep_alive_ = msg.keep_alive();
    plan_ = st_.admit(msg);
    if (plan_.now) {
      answer(std::move(*plan_.now), keep_alive_);
      return;
    }
    stream_.expires_never();
    if (plan_.latency.count() == 0) {
      proceed();
      return;
    }
    timer_.expires_after(plan_.latency);
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec && !self->closing_)
        self->proceed();
    });
  }

  void proceed() {
    switch (plan_.what) {
      case fate::fail_before: {
        auto r
            = error_reply(plan_.fail_status,
                          plan_.fail_status == 503 ? "unavailable" : "internal",
                          "injected failure; the mutation was not applied",
                          plan_.fail_status == 503 ? 100 : 0);
        answer(std::move(r), keep_alive_);
        return;
      }
      case fate::timeout_before:
        hold();
        return;
      case fate::timeout_after:
        st_.execute(plan_);
        hold();
        return;
      case fate::fail_after:
        st_.execute(plan_);
        answer(error_reply(500, "internal",
                           "injected failure after the mutation was applied"),
               keep_alive_);
        return;
      case fate::normal:
        answer(st_.execute(plan_), keep_alive_);
        return;
    }
  }

  void hold() {
    timer_.expires_after(plan_.hold);
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec && !self->closing_)
        self->drop();
    });
  }

  void answer(reply r, bool keep_alive) {
    res_ = {};
    res_.version(11);
    res_.result(r.status);
    res_.set(http::field::server, "fake-cloud");
    res_.set(http::field::content_type, "application/json");
    if (r.retry_after_ms > 0) {
      res_.set(http::field::retry_after,
               std::to_string((r.retry_after_ms + 999) / 1000));
      res_.set("Retry-After-Ms", std::to_string(r.retry_after_ms));
    }
    if (r.replayed)
      res_.set("Idempotent-Replayed", "true");
    res_.keep_alive(keep_alive);
    res_.body() = std::move(r.body);
    res_.prepare_payload();
    stream_.expires_after(st_.config().idle_timeout);
    http::async_write(
        stream_, res_,
        [self = shared_from_this(), keep_alive](beast::error_code ec, size_t) {
          if (ec || self->closing_)
            return;
          if (keep_alive)
            self->read();
          else
            self->linger();
        });
  }

  // Closing a socket with unread input makes the kernel send a reset,
  // which can destroy the response before the client reads it. So shut
  // down the sending side and drain what the client still sends, bounded
  // in bytes and time, before closing.
  void linger() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    drained_ = 0;
    stream_.expires_after(milliseconds{500});
    drain();
  }

  void drain() {
    stream_.async_read_some(
        asio::buffer(scratch_),
        [self = shared_from_this()](beast::error_code ec, size_t n) {
          self->drained_ += n;
          if (ec || self->closing_
              || self->drained_ > self->st_.config().max_body_bytes + 65536) {
            self->stream_.close();
            return;
          }
          self->drain();
        });
  }

  void drop() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
  }

  server_state& st_;
  beast::tcp_stream stream_;
  asio::steady_timer timer_;
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> res_;
  plan plan_;
  bool keep_alive_ = false;
  bool closing_ = false;
  size_t drained_ = 0;
  std::array<char, 4096> scratch_;
};

void server_state::accept() {
  acceptor_.async_accept(
      asio::make_strand(ioc_), [this](beast::error_code ec, tcp::socket sock) {
        {
          std::lock_guard guard{mtx_};
          if (stopping_)
            return;
        }
        if (ec == asio::error::operation_aborted)
          return;
        if (ec) {
          // Out of descriptors or similar: back off instead of spinning.
          accept_retry_.expires_after(milliseconds{50});
          accept_retry_.async_wait([this](beast::error_code ec) {
            if (!ec)
              accept();
          });
          return;
        }
        auto s = std::make_shared<session>(*this, std::move(sock));
        if (add_session(s))
          s->start();
        else
          s->abort();
        accept();
      });
}

bool server_state::add_session(const std::shared_ptr<session>& s) {
  std::lock_guard guard{mtx_};
  ++conns_.accepted;
  if (conns_.open >= cfg_.max_connections) {
    ++conns_.rejected;
    return false;
  }
  ++conns_.open;
  sessions_.emplace(s.get(), s);
  return true;
}

void server_state::remove_session(const session* s) {
  std::lock_guard guard{mtx_};
  if (sessions_.erase(s) > 0)
    --conns_.open;
}

void server_state::stop() {
  std::vector<std::shared_ptr<session>> open;
  {
    std::lock_guard guard{mtx_};
    if (stopping_)
      return;
    stopping_ = true;
    for (auto& [ptr, weak] : sessions_)
      if (auto s = weak.lock())
        open.push_back(std::move(s));
  }
  asio::post(acceptor_.get_executor(), [this] {
    beast::error_code ec;
    acceptor_.close(ec);
    accept_retry_.cancel();
  });
  for (auto& s : open)
    s->abort();
  open.clear();
  work_.reset();
  {
    // Aborted operations finish quickly; a bounded wait covers handlers
    // that would not, and then the loop is stopped outright.
    std::unique_lock guard{mtx_};
    auto done = [this] { return threads_done_ == threads_.size(); };
    if (!threads_cv_.wait_for(guard, std::chrono::seconds{2}, done)) {
      guard.unlock();
      ioc_.stop();
    }
  }
  for (auto& t : threads_)
    t.join();
  threads_.clear();
}

plan server_state::admit(const http::request<http::string_body>& msg) {
  plan p;
  auto& req = p.req;
  std::string_view target{msg.target().data(), msg.target().size()};
  if (auto q = target.find('?'); q != std::string_view::npos)
    target = target.substr(0, q);
  req.method = std::string{msg.method_string()};
  req.path = std::string{target};
  bool is_get = msg.method() == http::verb::get;
  if (target == "/healthz") {
    if (is_get)
      p.now = reply{200, "{\"status\":\"ok\"}"};
    else
      p.now = error_reply(405, "method_not_allowed", "use GET /healthz");
    return p;
  }
  if (target == "/v1/_audit") {
    if (is_get)
      p.now = reply{200, to_json(audit())};
    else
      p.now = error_reply(405, "method_not_allowed", "use GET /v1/_audit");
    return p;
  }
  constexpr std::string_view prefix = "/v1/";
  if (target.substr(0, prefix.size()) != prefix) {
    p.now = error_reply(404, "not_found",
                        "no route for '" + req.path
                            + "'; use /v1/{kind}[/{name}]");
    return p;
  }
  auto rest = target.substr(prefix.size());
  auto slash = rest.find('/');
  req.kind = std::string{rest.substr(0, slash)};
  if (slash != std::string_view::npos)
    req.name = std::string{rest.substr(slash + 1)};
  if (!valid_kind(req.kind)) {
    p.now = error_reply(400, "bad_kind",
                        "kind '" + req.kind
                            + "' must be 1-64 characters of [a-z_], not "
                              "starting with '_'");
    return p;
  }
  if (slash != std::string_view::npos && !valid_name(req.name)) {
    p.now = error_reply(400, "bad_name",
                        "name '" + req.name
                            + "' must be 1-128 characters of [A-Za-z0-9._:-]");
    return p;
  }
  bool mutation = false;
  if (slash == std::string_view::npos) {
    if (!is_get) {
      p.now = error_reply(405, "method_not_allowed",
                          "use GET /v1/{kind} to list, or PUT/DELETE on "
                          "/v1/{kind}/{name}");
      return p;
    }
    req.what = request::op::list;
  } else if (is_get) {
    req.what = request::op::get;
  } else if (msg.method() == http::verb::put
             || msg.method() == http::verb::delete_) {
    mutation = true;
    req.what
        = msg.method() == http::verb::put ? request::op::put : request::op::del;
    auto key = msg["Idempotency-Key"];
    req.key = std::string{key.data(), key.size()};
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
    if (req.what == request::op::put) {
      const auto& body = msg.body();
      auto spec = spec_from_json(body.empty() ? std::string_view{"{}"}
                                              : std::string_view{body});
      if (!spec) {
        p.now = error_reply(400, "bad_spec", granary::describe(spec.error()));
        return p;
      }
      req.spec = std::move(*spec);
      auto if_match = msg[http::field::if_match];
      if (!if_match.empty()
          && !parse_if_match({if_match.data(), if_match.size()},
                             req.if_match)) {
        p.now = error_reply(400, "bad_if_match",
                            "If-Match must be '*' or a resource version");
        return p;
      }
    }
  } else {
    p.now = error_reply(405, "method_not_allowed",
                        "use GET, PUT or DELETE on /v1/{kind}/{name}");
    return p;
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

server::server(std::unique_ptr<detail::server_state> state)
    : state_(std::move(state)) {}

server::~server() {
  stop();
}

caf::expected<std::unique_ptr<server>> server::start(server_config cfg) {
  if (auto err = validate(cfg))
    return err;
  auto state = std::make_unique<detail::server_state>(std::move(cfg));
  if (auto err = state->listen())
    return err;
  state->run();
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

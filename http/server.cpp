#include "http/server.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <thread>
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

namespace granary::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;
using std::chrono::milliseconds;

std::string_view to_string(refusal r) {
  switch (r) {
    case refusal::too_many_connections:
      return "too_many_connections";
    case refusal::header_too_large:
      return "header_too_large";
    case refusal::body_too_large:
      return "payload_too_large";
    case refusal::header_timeout:
      return "header_timeout";
    case refusal::malformed:
      return "bad_request";
    case refusal::too_many_pending:
      return "overloaded";
    case refusal::dropped:
      return "internal";
  }
  return "internal";
}

caf::error server_config::validate() const {
  auto bad = [](std::string what) {
    return make_error(errc::invalid_config, std::move(what));
  };
  if (host.empty())
    return bad("listen host must not be empty");
  if (threads < 1 || threads > 64)
    return bad("threads must be in [1, 64]");
  if (max_connections < 1 || max_connections > 100'000)
    return bad("max_connections must be in [1, 100000]");
  if (max_header_bytes < 512 || max_header_bytes > (1 << 20))
    return bad("max_header_bytes must be in [512, 1048576]");
  if (max_body_bytes > (64 << 20))
    return bad("max_body_bytes must be in [0, 67108864]");
  if (header_timeout.count() < 1)
    return bad("header_timeout must be positive");
  if (idle_timeout.count() < 1)
    return bad("idle_timeout must be positive");
  if (max_pending < 1 || max_pending > 1'000'000)
    return bad("max_pending must be in [1, 1000000]");
  return caf::none;
}

namespace detail {

namespace {

response default_render(const server_error& e) {
  response r;
  r.status = e.status;
  r.retry_after_ms = e.retry_after_ms;
  r.body = "{\"error\":" + json_quote(to_string(e.what))
           + ",\"message\":" + json_quote(e.message) + "}";
  return r;
}

} // namespace

/// Everything behind `server`: the listener, the sessions, the io_context
/// and its threads. Sessions own it (shared), so that a responder kept
/// past the server's stop still finds it; it then does nothing.
class server_core : public std::enable_shared_from_this<server_core> {
public:
  server_core(server_config cfg, handler h)
      : cfg_(std::move(cfg))
      , handler_(std::move(h)) {
    if (!cfg_.render)
      cfg_.render = default_render;
  }

  caf::error listen() {
    beast::error_code ec;
    auto host = cfg_.host == "localhost" ? std::string{"127.0.0.1"} : cfg_.host;
    auto addr = asio::ip::make_address(host, ec);
    tcp::endpoint ep;
    if (!ec) {
      ep = tcp::endpoint{addr, cfg_.port};
      acceptor_.open(ep.protocol(), ec);
    }
    if (!ec)
      acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec)
      acceptor_.bind(ep, ec);
    if (!ec)
      acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (!ec)
      port_ = acceptor_.local_endpoint(ec).port();
    if (ec)
      return make_error(errc::invalid_config,
                        "cannot listen on " + cfg_.host + ":"
                            + std::to_string(cfg_.port) + ": " + ec.message());
    return caf::none;
  }

  void run() {
    accept();
    for (size_t i = 0; i < cfg_.threads; ++i)
      threads_.emplace_back([this] { work(); });
  }

  void stop(milliseconds drain_limit);

  uint16_t port() const {
    return port_;
  }

  const server_config& config() const {
    return cfg_;
  }

  server_stats stats() const {
    std::lock_guard guard{mtx_};
    auto out = stats_;
    out.requests = requests_.load();
    out.pending = pending_.load();
    return out;
  }

  /// What becomes of a new connection.
  enum class admission { serve, reject, close };

  admission add_session(const std::shared_ptr<session>& s);

  void remove_session(const session* s) {
    std::lock_guard guard{mtx_};
    if (sessions_.erase(s) > 0)
      --stats_.open_connections;
  }

  void end_rejection() {
    std::lock_guard guard{mtx_};
    --rejecting_;
  }

  void count_header_timeout() {
    std::lock_guard guard{mtx_};
    ++stats_.header_timeouts;
  }

  /// Reserves a place for a request; false when `max_pending` are taken.
  bool reserve_pending() {
    if (pending_.fetch_add(1) >= cfg_.max_pending) {
      pending_.fetch_sub(1);
      return false;
    }
    ++requests_;
    return true;
  }

  void release_pending() {
    pending_.fetch_sub(1);
  }

  /// Runs `fn` on `strand`: at once when this thread runs it, else later;
  /// never once the server has stopped (then `fn` is dropped).
  template <class Strand, class F>
  void run_on(const Strand& strand, F&& fn) {
    if (strand.running_in_this_thread()) {
      fn();
      return;
    }
    defer_on(strand, std::forward<F>(fn));
  }

  /// Runs `fn` on `strand` later (never at once); never once the server
  /// has stopped.
  template <class Strand, class F>
  void defer_on(const Strand& strand, F&& fn) {
    std::shared_lock guard{post_mtx_};
    if (closed_)
      return;
    asio::post(strand, std::forward<F>(fn));
  }

  response render(refusal what, unsigned status, std::string message,
                  uint64_t retry_after_ms = 0) const {
    return cfg_.render(
        server_error{what, status, std::move(message), retry_after_ms});
  }

  const handler& handle() const {
    return handler_;
  }

  asio::io_context& context() {
    return ioc_;
  }

private:
  void accept();

  void work() {
    // A throwing handler must not take the whole server down; the loop
    // ends when `run` returns normally, i.e. when the work is gone.
    for (;;) {
      try {
        ioc_.run();
        break;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "granary http: a handler threw: %s\n", e.what());
      }
    }
    std::lock_guard guard{mtx_};
    ++threads_done_;
    threads_cv_.notify_all();
  }

  server_config cfg_;
  const handler handler_;
  uint16_t port_ = 0;
  std::atomic<uint64_t> requests_{0};
  std::atomic<size_t> pending_{0};

  mutable std::mutex mtx_;
  server_stats stats_;
  std::map<const session*, std::weak_ptr<session>> sessions_;
  bool stopping_ = false;
  size_t rejecting_ = 0;
  size_t threads_done_ = 0;
  std::condition_variable threads_cv_;

  // Held (shared) while posting to a session; `closed_` is set (exclusive)
  // once the threads are gone, so that nothing is posted that never runs.
  std::shared_mutex post_mtx_;
  bool closed_ = false;

  // Destroyed first: its pending handlers own sessions, whose destructors
  // use the members above.
  asio::io_context ioc_{static_cast<int>(cfg_.threads)};
  asio::executor_work_guard<asio::io_context::executor_type> work_{
      ioc_.get_executor()};
  tcp::acceptor acceptor_{asio::make_strand(ioc_)};
  asio::steady_timer accept_retry_{acceptor_.get_executor()};
  std::vector<std::thread> threads_;
};

using strand_type = asio::strand<asio::io_context::executor_type>;

/// One connection: reads a request, hands it to the handler, writes the
/// answer when the responder sends it, and reads the next (no
/// pipelining). Everything runs on the connection's strand.
class session : public std::enable_shared_from_this<session> {
public:
  session(std::shared_ptr<server_core> core, strand_type strand,
          tcp::socket sock)
      : core_(std::move(core))
      , strand_(std::move(strand))
      , stream_(std::move(sock))
      , header_timer_(strand_)
      , request_timer_(strand_)
      // Room for the largest header and then some, so that the parser's
      // header limit (not the buffer) decides, with the configured bytes.
      , buf_(core_->config().max_header_bytes + 4096) {}

  ~session() {
    if (rejected_)
      core_->end_rejection();
    else
      core_->remove_session(this);
  }

  void start() {
    asio::dispatch(strand_, [self = shared_from_this()] { self->read(); });
  }

  /// Answers that `max_connections` are open, or closes at once.
  void reject() {
    rejected_ = true;
    auto& cfg = core_->config();
    if (!cfg.answer_refused_connections) {
      abort();
      return;
    }
    asio::dispatch(strand_, [self = shared_from_this()] {
      auto& cfg = self->core_->config();
      self->answer(self->core_->render(
                       refusal::too_many_connections, 503,
                       std::to_string(cfg.max_connections)
                           + " connections are open (max_connections); retry "
                             "after 1000 ms",
                       1'000),
                   false);
    });
  }

  /// Closes the connection; pending operations end aborted and what was
  /// scheduled for the request is dropped.
  void abort() {
    asio::dispatch(strand_, [self = shared_from_this()] {
      self->closing_ = true;
      self->awaiting_ = false;
      self->header_timer_.cancel();
      self->request_timer_.cancel();
      beast::error_code ec;
      self->stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
      self->stream_.close();
    });
  }

  // -- for responder ---------------------------------------------------------

  void respond(uint64_t request, response r) {
    run([self = shared_from_this(), request, r = std::move(r)]() mutable {
      if (!self->current(request))
        return;
      self->awaiting_ = false;
      self->request_timer_.cancel();
      auto keep = self->keep_alive_ && !r.close;
      self->answer(std::move(r), keep);
    });
  }

  void drop(uint64_t request) {
    run([self = shared_from_this(), request] {
      if (!self->current(request))
        return;
      self->awaiting_ = false;
      self->request_timer_.cancel();
      self->close_now();
    });
  }

  // Deferred, so that a handler that threw has its exception noted first.
  void dropped(uint64_t request) {
    core_->defer_on(strand_, [self = shared_from_this(), request] {
      if (!self->current(request))
        return;
      self->awaiting_ = false;
      self->request_timer_.cancel();
      auto msg = self->failure_.empty()
                     ? std::string{"the request was dropped unanswered"}
                     : "the request failed: " + self->failure_;
      self->answer(self->core_->render(refusal::dropped, 500, std::move(msg)),
                   false);
    });
  }

  void post(uint64_t request, std::function<void()> fn) {
    run([self = shared_from_this(), request, fn = std::move(fn)] {
      if (self->current(request))
        fn();
    });
  }

  void after(uint64_t request, milliseconds delay, std::function<void()> fn) {
    run([self = shared_from_this(), request, delay, fn = std::move(fn)] {
      if (!self->current(request))
        return;
      auto armed = ++self->timer_seq_;
      self->request_timer_.expires_after(delay);
      self->request_timer_.async_wait(
          [self, request, armed, fn](beast::error_code ec) {
            // A wait that was replaced may still find its handler queued.
            if (ec || armed != self->timer_seq_ || !self->current(request))
              return;
            fn();
          });
    });
  }

  asio::any_io_executor executor() const {
    return strand_;
  }

  server_core& core() {
    return *core_;
  }

private:
  template <class F>
  void run(F&& fn) {
    core_->run_on(strand_, std::forward<F>(fn));
  }

  bool current(uint64_t request) const {
    return awaiting_ && !closing_ && request == request_;
  }

  void read() {
    if (closing_)
      return;
    if (served_ == 0 || buf_.size() > 0) {
      read_header();
      return;
    }
    // Between requests: the next one may take up to idle_timeout to begin;
    // its header deadline runs from its first byte.
    stream_.expires_after(core_->config().idle_timeout);
    stream_.async_read_some(
        buf_.prepare(1024),
        [self = shared_from_this()](beast::error_code ec, size_t n) {
          if (self->closing_ || ec == asio::error::operation_aborted)
            return;
          if (ec) {
            self->close_now();
            return;
          }
          self->buf_.commit(n);
          self->read_header();
        });
  }

  void read_header() {
    auto& cfg = core_->config();
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(cfg.max_header_bytes));
    parser_->body_limit(cfg.max_body_bytes);
    in_header_ = true;
    header_timed_out_ = false;
    // A backstop only: the header timer below ends the read first.
    stream_.expires_after(cfg.header_timeout + cfg.idle_timeout);
    header_timer_.expires_after(cfg.header_timeout);
    header_timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec || !self->in_header_ || self->closing_)
        return;
      self->header_timed_out_ = true;
      self->stream_.cancel();
    });
    bhttp::async_read_header(
        stream_, buf_, *parser_,
        [self = shared_from_this()](beast::error_code ec, size_t) {
          self->on_header(ec);
        });
  }

  void on_header(beast::error_code ec) {
    in_header_ = false;
    header_timer_.cancel();
    if (closing_)
      return;
    if (ec && header_timed_out_) {
      core_->count_header_timeout();
      answer(core_->render(
                 refusal::header_timeout, 408,
                 "the request header did not arrive within "
                     + std::to_string(core_->config().header_timeout.count())
                     + " ms"),
             false);
      return;
    }
    if (ec || parser_->is_done()) {
      on_read(ec);
      return;
    }
    stream_.expires_after(core_->config().idle_timeout);
    bhttp::async_read(stream_, buf_, *parser_,
                      [self = shared_from_this()](
                          beast::error_code ec, size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    if (closing_ || ec == asio::error::operation_aborted)
      return;
    auto& cfg = core_->config();
    if (ec == bhttp::error::body_limit) {
      answer(core_->render(refusal::body_too_large, 413,
                           "request body exceeds "
                               + std::to_string(cfg.max_body_bytes) + " bytes"),
             false);
      return;
    }
    if (ec == bhttp::error::header_limit
        || ec == bhttp::error::buffer_overflow) {
      answer(core_->render(refusal::header_too_large, 431,
                           "request header exceeds "
                               + std::to_string(cfg.max_header_bytes)
                               + " bytes"),
             false);
      return;
    }
    if (ec
        && (ec == bhttp::error::end_of_stream
            || ec == bhttp::error::partial_message
            || ec.category()
                   != bhttp::make_error_code(bhttp::error::end_of_stream)
                          .category())) {
      // The client left, went idle or the socket failed: nothing to answer.
      close_now();
      return;
    }
    if (ec) {
      answer(core_->render(refusal::malformed, 400,
                           "malformed HTTP: " + ec.message()),
             false);
      return;
    }
    auto& msg = parser_->get();
    keep_alive_ = msg.keep_alive();
    if (!core_->reserve_pending()) {
      answer(core_->render(refusal::too_many_pending, 429,
                           std::to_string(cfg.max_pending)
                               + " requests are in progress (max_pending); "
                                 "retry after 1000 ms",
                           1'000),
             keep_alive_);
      return;
    }
    request rq;
    rq.method = msg.method();
    rq.target = std::string{msg.target()};
    rq.body = std::move(msg.body());
    rq.headers = std::move(static_cast<bhttp::fields&>(msg));
    parser_.reset();
    stream_.expires_never();
    awaiting_ = true;
    failure_.clear();
    auto id = ++request_;
    // The handler may answer at once (then `answer` runs inside it) or
    // later, from any thread.
    try {
      core_->handle()(std::move(rq), responder{shared_from_this(), id});
    } catch (const std::exception& e) {
      // Its responder, unwound unanswered, answers 500 with this.
      failure_ = e.what();
    }
  }

  void answer(response r, bool keep_alive) {
    ++served_;
    res_ = {};
    res_.version(11);
    res_.result(r.status);
    res_.set(bhttp::field::server, core_->config().name);
    if (!r.content_type.empty())
      res_.set(bhttp::field::content_type, r.content_type);
    if (r.retry_after_ms > 0)
      res_.set(bhttp::field::retry_after,
               std::to_string((r.retry_after_ms + 999) / 1000));
    for (auto& [k, v] : r.headers)
      res_.set(k, v);
    res_.keep_alive(keep_alive);
    res_.body() = std::move(r.body);
    res_.prepare_payload();
    stream_.expires_after(core_->config().idle_timeout);
    bhttp::async_write(
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
  // which can destroy the response before the client reads it: shut down
  // the sending side and drain, bounded in bytes and time, first.
  void linger() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    drained_ = 0;
    stream_.expires_after(milliseconds{500});
    drain();
  }

  void drain() {
    stream_.async_read_some(asio::buffer(scratch_), [self = shared_from_this()](
                                                        beast::error_code ec,
                                                        size_t n) {
      self->drained_ += n;
      if (ec || self->closing_
          || self->drained_ > self->core_->config().max_body_bytes + 65536) {
        self->stream_.close();
        return;
      }
      self->drain();
    });
  }

  void close_now() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
  }

  std::shared_ptr<server_core> core_;
  strand_type strand_;
  beast::tcp_stream stream_;
  asio::steady_timer header_timer_;
  asio::steady_timer request_timer_;
  beast::flat_buffer buf_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  bhttp::response<bhttp::string_body> res_;
  bool keep_alive_ = false;
  bool closing_ = false;
  bool rejected_ = false;
  bool in_header_ = false;
  bool header_timed_out_ = false;
  // The handler holds the current request's responder.
  bool awaiting_ = false;
  uint64_t request_ = 0;
  uint64_t timer_seq_ = 0;
  uint64_t served_ = 0;
  size_t drained_ = 0;
  // What the handler threw, for the 500 of its unanswered responder.
  std::string failure_;
  std::array<char, 4096> scratch_;
};

server_core::admission
server_core::add_session(const std::shared_ptr<session>& s) {
  std::lock_guard guard{mtx_};
  ++stats_.accepted;
  if (stopping_)
    return admission::close;
  if (stats_.open_connections >= cfg_.max_connections) {
    ++stats_.rejected_connections;
    // Rejections are short (one small write, then at most 500 ms of
    // lingering), but bound them too.
    if (!cfg_.answer_refused_connections
        || rejecting_ >= std::max<size_t>(64, cfg_.max_connections))
      return admission::close;
    ++rejecting_;
    return admission::reject;
  }
  ++stats_.open_connections;
  sessions_.emplace(s.get(), s);
  return admission::serve;
}

void server_core::accept() {
  auto strand = asio::make_strand(ioc_);
  acceptor_.async_accept(
      strand, [this, strand](beast::error_code ec, tcp::socket sock) {
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
        sock.set_option(tcp::no_delay{true}, ec);
        auto s = std::make_shared<session>(shared_from_this(), strand,
                                           std::move(sock));
        switch (add_session(s)) {
          case admission::serve:
            s->start();
            break;
          case admission::reject:
            s->reject();
            break;
          case admission::close:
            // Not counted as open: its destructor must not uncount it.
            s->abort();
            break;
        }
        accept();
      });
}

void server_core::stop(milliseconds drain_limit) {
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
    // Aborted operations finish quickly; a bounded wait covers I/O that
    // would not, and then the loop is stopped outright.
    std::unique_lock guard{mtx_};
    auto done = [this] { return threads_done_ == threads_.size(); };
    if (!threads_cv_.wait_for(guard, drain_limit, done)) {
      guard.unlock();
      ioc_.stop();
    }
  }
  for (auto& t : threads_)
    t.join();
  threads_.clear();
  {
    std::unique_lock guard{post_mtx_};
    closed_ = true;
  }
  // Runs what was posted before `closed_` (it finds its session closed),
  // so that no handler stays queued holding a session.
  ioc_.restart();
  ioc_.poll();
}

} // namespace detail

// -- responder ----------------------------------------------------------------

responder::responder(std::shared_ptr<detail::session> s, uint64_t request)
    : session_(std::move(s))
    , request_(request) {}

responder& responder::operator=(responder&& other) noexcept {
  if (this != &other) {
    release();
    session_ = std::move(other.session_);
    request_ = other.request_;
  }
  return *this;
}

responder::~responder() {
  release();
}

std::shared_ptr<detail::session> responder::take() {
  if (session_)
    session_->core().release_pending();
  return std::move(session_);
}

void responder::release() {
  if (auto s = take())
    s->dropped(request_);
}

void responder::send(response r) {
  if (auto s = take())
    s->respond(request_, std::move(r));
}

void responder::drop() {
  if (auto s = take())
    s->drop(request_);
}

request_strand responder::strand() const {
  request_strand out;
  out.session_ = session_;
  out.request_ = request_;
  return out;
}

void responder::post(std::function<void()> fn) const {
  strand().post(std::move(fn));
}

void responder::after(std::chrono::milliseconds delay,
                      std::function<void()> fn) const {
  strand().after(delay, std::move(fn));
}

boost::asio::any_io_executor responder::executor() const {
  return strand().executor();
}

// -- request_strand -----------------------------------------------------------

void request_strand::post(std::function<void()> fn) const {
  if (session_)
    session_->post(request_, std::move(fn));
}

void request_strand::after(std::chrono::milliseconds delay,
                           std::function<void()> fn) const {
  if (session_)
    session_->after(request_, delay, std::move(fn));
}

boost::asio::any_io_executor request_strand::executor() const {
  return session_ ? session_->executor() : boost::asio::any_io_executor{};
}

// -- server -------------------------------------------------------------------

caf::expected<std::unique_ptr<server>> server::start(server_config cfg,
                                                     handler h) {
  if (auto err = cfg.validate())
    return err;
  if (!h)
    return make_error(errc::invalid_config, "the server needs a handler");
  auto core
      = std::make_shared<detail::server_core>(std::move(cfg), std::move(h));
  if (auto err = core->listen())
    return err;
  core->run();
  return std::unique_ptr<server>{new server(std::move(core))};
}

server::server(std::shared_ptr<detail::server_core> core)
    : core_(std::move(core)) {}

server::~server() {
  stop();
}

uint16_t server::port() const {
  return core_->port();
}

std::string server::address() const {
  return core_->config().host + ":" + std::to_string(core_->port());
}

const server_config& server::config() const {
  return core_->config();
}

server_stats server::stats() const {
  return core_->stats();
}

void server::stop(std::chrono::milliseconds drain_limit) {
  core_->stop(drain_limit);
}

} // namespace granary::http

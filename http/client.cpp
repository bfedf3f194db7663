#include "http/client.hpp"

#include <limits>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

namespace granary::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;
using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::string_view client_response::header(std::string_view name) const {
  auto i = headers.find(beast::string_view{name.data(), name.size()});
  if (i == headers.end())
    return {};
  auto v = i->value();
  return {v.data(), v.size()};
}

bool client_failure::too_large() const {
  return ec == bhttp::error::body_limit;
}

std::string client_failure::describe() const {
  const char* what = "connecting";
  switch (where) {
    case stage::resolving:
      what = "resolving the host";
      break;
    case stage::connecting:
      what = "connecting";
      break;
    case stage::sending:
      what = "sending the request";
      break;
    case stage::reading:
      what = "reading the response";
      break;
  }
  if (timed_out)
    return "timed out after " + std::to_string(timeout.count()) + " ms while "
           + what;
  return std::string{"failed while "} + what + ": " + ec.message();
}

namespace detail {

/// A TCP stream to one server and one exchange on it at a time. Every
/// step has the exchange's deadline (a timer bounds the name lookup,
/// which has none of its own); the callback runs once, on the executor.
class client_stream : public std::enable_shared_from_this<client_stream> {
public:
  using callback = std::function<void(client_result)>;

  client_stream(asio::any_io_executor ex, std::string host, uint16_t port,
                client_options opts)
      : host_(std::move(host))
      , port_(port)
      , opts_(opts)
      , resolver_(ex)
      , resolve_timer_(ex)
      , stream_(ex) {}

  /// Sends `req` and reads the answer (only its header when
  /// `header_only`), before `deadline`.
  void start(client_request req, steady::time_point deadline, bool header_only,
             callback done) {
    done_ = std::move(done);
    deadline_ = deadline;
    header_only_ = header_only;
    reused_ = stream_.socket().is_open();
    req_ = {req.method,
            beast::string_view{req.target.data(), req.target.size()}, 11};
    req_.set(bhttp::field::host, host_ + ":" + std::to_string(port_));
    req_.set(bhttp::field::user_agent, req.user_agent);
    for (auto& [k, v] : req.headers)
      req_.set(k, v);
    if (!req.body.empty() && !req.content_type.empty())
      req_.set(bhttp::field::content_type, req.content_type);
    req_.keep_alive(req.keep_alive);
    req_.body() = std::move(req.body);
    req_.prepare_payload();
    if (reused_) {
      write();
      return;
    }
    buf_.clear();
    boost::system::error_code literal;
    auto addr = asio::ip::make_address(host_, literal);
    if (!literal) {
      // An IP literal needs no lookup, and asio's resolver would start a
      // thread for it.
      connect(tcp::endpoint{addr, port_});
      return;
    }
    resolve_timer_.expires_at(deadline_);
    resolve_timer_.async_wait(
        [self = shared_from_this()](beast::error_code ec) {
          if (!ec && self->done_)
            self->resolver_.cancel();
        });
    resolver_.async_resolve(
        host_, std::to_string(port_),
        [self = shared_from_this()](beast::error_code ec,
                                    tcp::resolver::results_type endpoints) {
          self->resolve_timer_.cancel();
          if (ec) {
            self->fail(client_failure::stage::resolving, ec,
                       steady::now() >= self->deadline_);
            return;
          }
          self->stream_.expires_at(self->deadline_);
          self->stream_.async_connect(
              endpoints, [self](beast::error_code ec, const tcp::endpoint&) {
                self->on_connect(ec);
              });
        });
  }

  /// Reads the next part of a streamed body into `out`, without a
  /// deadline; `done` gets true at the body's end.
  void
  read_some(std::string& out,
            std::function<void(bool, std::optional<client_failure>)> done) {
    if (!parser_ || parser_->is_done()) {
      done(true, std::nullopt);
      return;
    }
    stream_.expires_never();
    bhttp::async_read_some(
        stream_, buf_, *parser_,
        [self = shared_from_this(), &out,
         done = std::move(done)](beast::error_code ec, size_t) {
          auto& body = self->parser_->get().body();
          out += body;
          body.clear();
          if (ec == bhttp::error::need_buffer)
            ec = {};
          if (ec) {
            auto f = self->failure(client_failure::stage::reading, ec, false);
            self->close();
            done(false, std::move(f));
            return;
          }
          done(self->parser_->is_done(), std::nullopt);
        });
  }

  bool is_open() const {
    return stream_.socket().is_open();
  }

  void close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.close();
    resolver_.cancel();
    buf_.clear();
  }

private:
  void connect(tcp::endpoint ep) {
    stream_.expires_at(deadline_);
    stream_.async_connect(ep,
                          [self = shared_from_this()](beast::error_code ec) {
                            self->on_connect(ec);
                          });
  }

  void on_connect(beast::error_code ec) {
    if (ec) {
      fail(client_failure::stage::connecting, ec);
      return;
    }
    beast::error_code ignored;
    stream_.socket().set_option(tcp::no_delay{true}, ignored);
    write();
  }

  void write() {
    stream_.expires_at(deadline_);
    bhttp::async_write(
        stream_, req_,
        [self = shared_from_this()](beast::error_code ec, size_t) {
          if (ec) {
            self->fail(client_failure::stage::sending, ec);
            return;
          }
          self->read();
        });
  }

  // The header first: Beast 1.74 checks the body limit against the
  // Content-Length only when the header is parsed on its own.
  void read() {
    parser_.emplace();
    // A stream may run for ever: its reader bounds what it keeps. (Not
    // `none`: Beast 1.74 then refuses every Content-Length.)
    if (header_only_)
      parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    else
      parser_->body_limit(opts_.max_response_bytes);
    stream_.expires_at(deadline_);
    auto on_read = [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) {
        self->fail(client_failure::stage::reading, ec);
        return;
      }
      self->finish();
    };
    bhttp::async_read_header(
        stream_, buf_, *parser_,
        [self = shared_from_this(), on_read](beast::error_code ec, size_t n) {
          if (ec || self->header_only_ || self->parser_->is_done()) {
            on_read(ec, n);
            return;
          }
          bhttp::async_read(self->stream_, self->buf_, *self->parser_, on_read);
        });
  }

  void finish() {
    client_result out;
    auto& msg = parser_->get();
    out.response.status = msg.result_int();
    out.response.keep_alive = msg.keep_alive();
    if (!header_only_) {
      out.response.body = std::move(msg.body());
      out.response.headers = std::move(static_cast<bhttp::fields&>(msg));
      parser_.reset();
      if (!out.response.keep_alive || !req_.keep_alive())
        close();
    } else {
      for (auto& f : msg)
        out.response.headers.insert(f.name_string(), f.value());
    }
    complete(std::move(out));
  }

  client_failure failure(client_failure::stage where, beast::error_code ec,
                         bool timed_out) const {
    client_failure f;
    f.where = where;
    f.ec = ec;
    f.timed_out = timed_out || ec == beast::error::timeout;
    f.received_nothing = !parser_ || !parser_->got_some();
    f.reused_connection = reused_;
    f.timeout = opts_.timeout;
    return f;
  }

  void fail(client_failure::stage where, beast::error_code ec,
            bool timed_out = false) {
    client_result out;
    out.failure = failure(where, ec, timed_out);
    close();
    complete(std::move(out));
  }

  void complete(client_result res) {
    auto done = std::move(done_);
    done_ = nullptr;
    if (done)
      done(std::move(res));
  }

  std::string host_;
  uint16_t port_;
  client_options opts_;
  tcp::resolver resolver_;
  asio::steady_timer resolve_timer_;
  beast::tcp_stream stream_;
  beast::flat_buffer buf_;
  bhttp::request<bhttp::string_body> req_;
  std::optional<bhttp::response_parser<bhttp::string_body>> parser_;
  steady::time_point deadline_;
  bool header_only_ = false;
  bool reused_ = false;
  callback done_;
};

} // namespace detail

void async_fetch(asio::any_io_executor ex, std::string host, uint16_t port,
                 client_request req, client_options opts,
                 std::function<void(client_result)> done) {
  req.keep_alive = false;
  auto s = std::make_shared<detail::client_stream>(ex, std::move(host), port,
                                                   opts);
  // The stream lives as long as its handlers, which own it.
  s->start(std::move(req), steady::now() + opts.timeout, false,
           std::move(done));
}

client_result fetch(const std::string& host, uint16_t port, client_request req,
                    const client_options& opts) {
  connection c{host, port, opts};
  req.keep_alive = false;
  return c.exchange(std::move(req), steady::now() + opts.timeout);
}

// -- connection ---------------------------------------------------------------

struct connection::impl {
  impl(std::string host, uint16_t port, client_options opts)
      : stream(std::make_shared<detail::client_stream>(
          ioc.get_executor(), std::move(host), port, opts))
      , timeout(opts.timeout) {}

  ~impl() {
    stream->close();
    ioc.restart();
    ioc.run();
  }

  // Runs the operation that `start` begins until it completes.
  template <class Start>
  client_result run(Start start, steady::time_point deadline) {
    std::optional<client_result> out;
    start([&out](client_result r) { out = std::move(r); });
    ioc.restart();
    // The stream's own expiry ends connect, write and read; the margin
    // only covers the timer that ends a name lookup.
    auto now = steady::now();
    ioc.run_for(std::max(deadline - now, steady::duration::zero())
                + milliseconds{100});
    if (!out) {
      // A lookup the resolver could not abandon: end it all and wait for
      // the handlers, which no longer hold anything of ours.
      stream->close();
      ioc.restart();
      ioc.run();
    }
    if (!out) {
      client_result r;
      r.failure = client_failure{client_failure::stage::resolving,
                                 beast::error::timeout, true};
      r.failure->timeout = timeout;
      return r;
    }
    return std::move(*out);
  }

  asio::io_context ioc{1};
  std::shared_ptr<detail::client_stream> stream;
  milliseconds timeout;
};

connection::connection(std::string host, uint16_t port, client_options opts)
    : impl_(std::make_unique<impl>(std::move(host), port, opts)) {}

connection::~connection() = default;

client_result connection::exchange(client_request req,
                                   steady::time_point deadline) {
  return impl_->run(
      [&](auto done) {
        impl_->stream->start(std::move(req), deadline, false, std::move(done));
      },
      deadline);
}

client_result connection::open_stream(client_request req,
                                      steady::time_point deadline) {
  return impl_->run(
      [&](auto done) {
        impl_->stream->start(std::move(req), deadline, true, std::move(done));
      },
      deadline);
}

bool connection::read_some(std::string& out,
                           std::optional<client_failure>& failure) {
  bool more = false;
  failure.reset();
  impl_->stream->read_some(out,
                           [&](bool at_end, std::optional<client_failure> f) {
                             more = !at_end && !f;
                             failure = std::move(f);
                           });
  impl_->ioc.restart();
  impl_->ioc.run();
  return more;
}

bool connection::is_open() const {
  return impl_->stream->is_open();
}

void connection::close() {
  impl_->stream->close();
}

void connection::cancel() {
  asio::post(impl_->ioc, [s = impl_->stream] { s->close(); });
}

} // namespace granary::http

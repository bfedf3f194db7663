#include "cluster/membership/etcd_client.hpp"

#include <array>
#include <atomic>
#include <mutex>
#include <optional>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <google/protobuf/util/json_util.h>

#include "runtime/error.hpp"

namespace granary::cluster {

namespace {

namespace net = boost::asio;
namespace http = boost::beast::http;
namespace sys = boost::system;
using tcp = net::ip::tcp;
using clock_type = std::chrono::steady_clock;

struct host_port {
  std::string host;
  std::string port;
};

caf::expected<host_port> split_endpoint(std::string_view ep) {
  if (ep.starts_with("http://"))
    ep.remove_prefix(7);
  while (!ep.empty() && ep.back() == '/')
    ep.remove_suffix(1);
  auto colon = ep.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == ep.size())
    return make_error(errc::invalid_config,
                      "etcd endpoint '" + std::string{ep}
                          + "' is not of the form host:port");
  return host_port{std::string{ep.substr(0, colon)},
                   std::string{ep.substr(colon + 1)}};
}

// Runs `ioc` until the operation that `start` begins completes or
// `deadline` passes; on timeout, `cancel` aborts the operation and the
// result is `timed_out`. The io_context must have no other work.
template <class Start, class Cancel>
sys::error_code run_until(net::io_context& ioc, clock_type::time_point deadline,
                          Start start, Cancel cancel) {
  sys::error_code result = net::error::would_block;
  bool done = false;
  start([&](sys::error_code ec, auto&&...) {
    result = ec;
    done = true;
  });
  ioc.restart();
  auto now = clock_type::now();
  if (deadline > now)
    ioc.run_for(deadline - now);
  if (!done) {
    cancel();
    ioc.restart();
    ioc.run();
    return net::error::timed_out;
  }
  return result;
}

// Runs `ioc` until the operation that `start` begins completes.
template <class Start>
sys::error_code run_to_end(net::io_context& ioc, Start start) {
  sys::error_code result = net::error::would_block;
  start([&](sys::error_code ec, auto&&...) { result = ec; });
  ioc.restart();
  ioc.run();
  return result;
}

// Resolves and connects `sock` to `hp` before `deadline`.
sys::error_code connect(net::io_context& ioc, tcp::socket& sock,
                        const host_port& hp, clock_type::time_point deadline) {
  tcp::resolver resolver{ioc};
  tcp::resolver::results_type endpoints;
  auto ec = run_until(
      ioc, deadline,
      [&](auto handler) {
        resolver.async_resolve(
            hp.host, hp.port,
            [&endpoints, handler](sys::error_code ec,
                                  tcp::resolver::results_type results) mutable {
              endpoints = std::move(results);
              handler(ec);
            });
      },
      [&] { resolver.cancel(); });
  if (ec)
    return ec;
  ec = run_until(
      ioc, deadline,
      [&](auto handler) { net::async_connect(sock, endpoints, handler); },
      [&] {
        sys::error_code ignored;
        sock.close(ignored);
      });
  if (!ec) {
    sys::error_code ignored;
    sock.set_option(tcp::no_delay{true}, ignored);
  }
  return ec;
}

caf::error transport_error(const std::string& endpoint, std::string_view what,
                           const sys::error_code& ec) {
  if (ec == net::error::timed_out)
    return make_error(errc::timeout, "etcd at " + endpoint
                                         + " did not answer in time ("
                                         + std::string{what} + ")");
  return make_error(errc::storage_failure,
                    "etcd at " + endpoint + " is unreachable ("
                        + std::string{what} + "): " + ec.message()
                        + "; is etcd running?");
}

std::string http_error_text(const std::string& body) {
  etcd::GatewayError err;
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = true;
  if (google::protobuf::util::JsonStringToMessage(body, &err, opts).ok()) {
    if (!err.message().empty())
      return err.message();
    if (!err.error().empty())
      return err.error();
  }
  constexpr size_t max_len = 200;
  return body.size() <= max_len ? body : body.substr(0, max_len) + "...";
}

template <class Message>
caf::expected<Message> parse_json(const std::string& endpoint,
                                  std::string_view path,
                                  const std::string& body) {
  Message msg;
  auto what = "etcd at " + endpoint + ": the answer to " + std::string{path};
  if (auto err = etcd_from_json(body, msg, what))
    return err;
  return msg;
}

} // namespace

std::string etcd_to_json(const google::protobuf::Message& msg) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  // Only fails for messages with Any fields of unknown types; ours have none.
  (void)google::protobuf::util::MessageToJsonString(msg, &out, opts);
  return out;
}

caf::error etcd_from_json(std::string_view json, google::protobuf::Message& msg,
                          std::string_view what) {
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = true;
  auto st = google::protobuf::util::JsonStringToMessage(
      google::protobuf::StringPiece{json.data(), json.size()}, &msg, opts);
  if (!st.ok())
    return make_error(errc::malformed_message, "cannot parse "
                                                   + std::string{what} + ": "
                                                   + std::string{st.message()});
  return caf::none;
}

std::string etcd_prefix_end(std::string s) {
  while (!s.empty()) {
    auto& last = s.back();
    if (static_cast<unsigned char>(last) != 0xff) {
      last = static_cast<char>(static_cast<unsigned char>(last) + 1);
      return s;
    }
    s.pop_back();
  }
  // etcd reads "\0" as "to the end of the key space".
  return std::string(1, '\0');
}

// -- etcd_client --------------------------------------------------------------

namespace {

// Joins the failures of every endpoint into one error: `timeout` when any
// of them timed out (a write's outcome is then unknown).
caf::error all_failed(const std::vector<caf::error>& errors) {
  if (errors.size() == 1)
    return errors.front();
  bool timed_out = false;
  std::string text = "every etcd endpoint failed: ";
  for (size_t i = 0; i < errors.size(); ++i) {
    timed_out = timed_out || code_of(errors[i]) == errc::timeout;
    text += (i > 0 ? "; " : "") + describe(errors[i]);
  }
  return make_error(timed_out ? errc::timeout : errc::storage_failure,
                    std::move(text));
}

caf::error no_endpoints() {
  return make_error(errc::invalid_config, "etcd: no endpoint is configured");
}

} // namespace

class etcd_client::impl {
public:
  explicit impl(etcd_client_config config)
      : cfg(std::move(config)) {
    if (cfg.endpoints.empty())
      bad_endpoint = no_endpoints();
    for (auto& ep : cfg.endpoints) {
      auto hp = split_endpoint(ep);
      if (!hp) {
        bad_endpoint = std::move(hp.error());
        break;
      }
      addrs.push_back(std::move(*hp));
    }
  }

  // Sends the request to the current endpoint and, when it cannot be
  // reached or does not answer, to the next ones, once around.
  caf::expected<std::string> request(http::verb verb, std::string_view path,
                                     std::string_view body) {
    if (bad_endpoint)
      return bad_endpoint;
    std::lock_guard guard{mtx};
    std::vector<caf::error> errors;
    for (size_t k = 0; k < addrs.size(); ++k) {
      auto idx = (current + k) % addrs.size();
      if (idx != current) {
        close();
        current = idx;
      }
      bool reachable = true;
      auto res = request_at(idx, verb, path, body, reachable);
      if (res || reachable)
        return res;
      errors.push_back(std::move(res.error()));
    }
    return all_failed(errors);
  }

  // One request to endpoint `idx`; `reachable` is cleared when it could not
  // be reached or did not answer in time (then the next one is tried).
  caf::expected<std::string> request_at(size_t idx, http::verb verb,
                                        std::string_view path,
                                        std::string_view body,
                                        bool& reachable) {
    auto& endpoint = cfg.endpoints[idx];
    auto& addr = addrs[idx];
    auto what = std::string{http::to_string(verb)} + " " + std::string{path};
    http::request<http::string_body> req{
        verb, boost::beast::string_view{path.data(), path.size()}, 11};
    req.set(http::field::host, addr.host);
    req.set(http::field::content_type, "application/json");
    req.keep_alive(true);
    if (verb == http::verb::post)
      req.body() = std::string{body};
    req.prepare_payload();
    auto deadline = clock_type::now() + cfg.request_timeout;
    auto unreachable = [&](const sys::error_code& ec) {
      reachable = false;
      return transport_error(endpoint, what, ec);
    };
    // A reused connection may have been closed by etcd while idle; then
    // the request never reached it and one retry on a new connection is
    // safe. Any other failure has an unknown outcome and is reported.
    for (int attempt = 0; attempt < 2; ++attempt) {
      bool reused = sock.is_open();
      if (!reused) {
        if (auto ec = connect(ioc, sock, addr, deadline)) {
          close();
          return unreachable(ec);
        }
      }
      auto ec = run_until(
          ioc, deadline,
          [&](auto handler) { http::async_write(sock, req, handler); },
          [&] { close(); });
      if (ec) {
        close();
        if (reused && attempt == 0 && ec != net::error::timed_out)
          continue;
        return unreachable(ec);
      }
      http::response_parser<http::string_body> parser;
      parser.body_limit(cfg.max_response_bytes);
      ec = run_until(
          ioc, deadline,
          [&](auto handler) {
            http::async_read(sock, buffer, parser, handler);
          },
          [&] { close(); });
      if (ec) {
        bool nothing_read = !parser.got_some();
        close();
        if (reused && attempt == 0 && nothing_read
            && ec != net::error::timed_out)
          continue;
        if (ec == http::error::body_limit)
          return make_error(
              errc::payload_too_large,
              "etcd at " + endpoint + ": the answer to " + what + " exceeds "
                  + std::to_string(cfg.max_response_bytes) + " bytes");
        return unreachable(ec);
      }
      auto res = parser.release();
      if (!res.keep_alive())
        close();
      if (res.result() != http::status::ok)
        return make_error(errc::storage_failure,
                          "etcd at " + endpoint + ": " + what
                              + " failed with HTTP "
                              + std::to_string(res.result_int()) + ": "
                              + http_error_text(res.body()));
      return std::move(res.body());
    }
    reachable = false;
    return make_error(errc::storage_failure, "etcd at " + endpoint
                                                 + " closed the connection ("
                                                 + what + ")");
  }

  void close() {
    sys::error_code ignored;
    sock.close(ignored);
    buffer.clear();
  }

  std::string endpoint() {
    std::lock_guard guard{mtx};
    return cfg.endpoints.empty() ? std::string{} : cfg.endpoints[current];
  }

  etcd_client_config cfg;
  std::vector<host_port> addrs;
  caf::error bad_endpoint;
  // Serializes requests; guards everything below.
  std::mutex mtx;
  // The endpoint the socket belongs to, and the next request goes to.
  size_t current = 0;
  net::io_context ioc{1};
  tcp::socket sock{ioc};
  boost::beast::flat_buffer buffer;
};

etcd_client::etcd_client(etcd_client_config cfg)
    : impl_(std::make_unique<impl>(std::move(cfg))) {
  // nop
}

etcd_client::~etcd_client() {
  // nop
}

caf::expected<std::string> etcd_client::post(std::string_view path,
                                             std::string_view json) {
  return impl_->request(http::verb::post, path, json);
}

caf::expected<std::string> etcd_client::get(std::string_view path) {
  return impl_->request(http::verb::get, path, {});
}

caf::expected<etcd::RangeResponse>
etcd_client::range(const etcd::RangeRequest& req) {
  constexpr std::string_view path = "/v3/kv/range";
  auto body = post(path, etcd_to_json(req));
  if (!body)
    return std::move(body.error());
  return parse_json<etcd::RangeResponse>(endpoint(), path, *body);
}

caf::expected<etcd::TxnResponse> etcd_client::txn(const etcd::TxnRequest& req) {
  constexpr std::string_view path = "/v3/kv/txn";
  auto body = post(path, etcd_to_json(req));
  if (!body)
    return std::move(body.error());
  return parse_json<etcd::TxnResponse>(endpoint(), path, *body);
}

std::string etcd_client::endpoint() const {
  return impl_->endpoint();
}

const etcd_client_config& etcd_client::config() const noexcept {
  return impl_->cfg;
}

// -- etcd_stream --------------------------------------------------------------

class etcd_stream::impl {
public:
  explicit impl(etcd_client_config config)
      : cfg(std::move(config)) {
    // nop
  }

  caf::error open(std::string_view path, std::string_view json) {
    if (cfg.endpoints.empty())
      return no_endpoints();
    what = "POST " + std::string{path};
    std::vector<caf::error> errors;
    for (size_t idx = 0; idx < cfg.endpoints.size(); ++idx) {
      bool reachable = true;
      auto err = open_at(idx, path, json, reachable);
      if (!err || reachable || closed)
        return err;
      errors.push_back(std::move(err));
      sys::error_code ignored;
      sock.close(ignored);
      buffer.clear();
    }
    return all_failed(errors);
  }

  // Opens the stream at endpoint `idx`; `reachable` is cleared when it
  // could not be reached or did not answer in time.
  caf::error open_at(size_t idx, std::string_view path, std::string_view json,
                     bool& reachable) {
    index = idx;
    endpoint = cfg.endpoints[idx];
    auto hp = split_endpoint(endpoint);
    if (!hp)
      return std::move(hp.error());
    if (closed)
      return stopped();
    auto deadline = clock_type::now() + cfg.request_timeout;
    if (auto ec = connect(ioc, sock, *hp, deadline)) {
      reachable = false;
      return fail(ec);
    }
    http::request<http::string_body> req{
        http::verb::post, boost::beast::string_view{path.data(), path.size()},
        11};
    req.set(http::field::host, hp->host);
    req.set(http::field::content_type, "application/json");
    req.body() = std::string{json};
    req.prepare_payload();
    auto close_sock = [this] {
      sys::error_code ignored;
      sock.close(ignored);
    };
    auto ec = run_until(
        ioc, deadline,
        [&](auto handler) { http::async_write(sock, req, handler); },
        close_sock);
    if (ec) {
      reachable = false;
      return fail(ec);
    }
    parser.emplace();
    parser->body_limit(boost::none);
    ec = run_until(
        ioc, deadline,
        [&](auto handler) {
          http::async_read_header(sock, buffer, *parser, handler);
        },
        close_sock);
    if (ec) {
      reachable = false;
      return fail(ec);
    }
    if (parser->get().result() != http::status::ok)
      return make_error(errc::storage_failure,
                        "etcd at " + endpoint + ": " + what
                            + " failed with HTTP "
                            + std::to_string(parser->get().result_int()));
    return caf::none;
  }

  caf::expected<std::string> next() {
    // Bounded by the buffer limit: each pass either returns a line or adds
    // at least one byte to `pending`, which may not exceed the limit.
    for (;;) {
      if (auto nl = pending.find('\n'); nl != std::string::npos) {
        auto line = pending.substr(0, nl);
        pending.erase(0, nl + 1);
        if (line.find_first_not_of(" \r\t") == std::string::npos)
          continue;
        return line;
      }
      if (closed)
        return stopped();
      if (!parser || parser->is_done())
        return make_error(errc::storage_failure, "etcd at " + endpoint
                                                     + " ended the stream ("
                                                     + what + ")");
      if (pending.size() > cfg.max_response_bytes)
        return make_error(
            errc::payload_too_large,
            "etcd at " + endpoint + ": a message of " + what + " exceeds "
                + std::to_string(cfg.max_response_bytes) + " bytes");
      auto& body = parser->get().body();
      body.data = chunk.data();
      body.size = chunk.size();
      auto ec = run_to_end(ioc, [&](auto handler) {
        http::async_read_some(sock, buffer, *parser, handler);
      });
      pending.append(chunk.data(), chunk.size() - body.size);
      if (ec && ec != http::error::need_buffer) {
        if (closed)
          return stopped();
        return fail(ec);
      }
    }
  }

  void close() {
    closed = true;
    net::post(ioc, [this] {
      sys::error_code ignored;
      sock.close(ignored);
    });
  }

  caf::error stopped() {
    return make_error(errc::cancelled, "etcd stream " + what + " was closed");
  }

  caf::error fail(const sys::error_code& ec) {
    sys::error_code ignored;
    sock.close(ignored);
    if (closed)
      return stopped();
    return transport_error(endpoint, what, ec);
  }

  etcd_client_config cfg;
  // The endpoint `open` reached (or tried last), and its index.
  std::string endpoint;
  size_t index = 0;
  std::string what = "stream";
  std::atomic<bool> closed{false};
  net::io_context ioc{1};
  tcp::socket sock{ioc};
  boost::beast::flat_buffer buffer;
  std::optional<http::response_parser<http::buffer_body>> parser;
  std::array<char, 16 * 1024> chunk;
  std::string pending;
};

etcd_stream::etcd_stream(etcd_client_config cfg)
    : impl_(std::make_unique<impl>(std::move(cfg))) {
  // nop
}

etcd_stream::~etcd_stream() {
  // nop
}

caf::error etcd_stream::open(std::string_view path, std::string_view json) {
  return impl_->open(path, json);
}

size_t etcd_stream::endpoint_index() const {
  return impl_->index;
}

caf::expected<std::string> etcd_stream::next() {
  return impl_->next();
}

void etcd_stream::close() {
  impl_->close();
}

} // namespace granary::cluster

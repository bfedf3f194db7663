#include "cluster/membership/etcd_client.hpp"

#include <atomic>
#include <charconv>
#include <mutex>

#include <google/protobuf/util/json_util.h>

#include "http/client.hpp"
#include "runtime/error.hpp"

namespace granary::cluster {

namespace {

using clock_type = std::chrono::steady_clock;

struct host_port {
  std::string host;
  uint16_t port = 0;
};

caf::expected<host_port> split_endpoint(std::string_view ep) {
  if (ep.starts_with("http://"))
    ep.remove_prefix(7);
  while (!ep.empty() && ep.back() == '/')
    ep.remove_suffix(1);
  auto colon = ep.rfind(':');
  uint16_t port = 0;
  auto digits = colon == std::string_view::npos ? std::string_view{}
                                                : ep.substr(colon + 1);
  auto res
      = std::from_chars(digits.data(), digits.data() + digits.size(), port);
  if (colon == std::string_view::npos || colon == 0 || digits.empty()
      || res.ec != std::errc{} || res.ptr != digits.data() + digits.size())
    return make_error(errc::invalid_config,
                      "etcd endpoint '" + std::string{ep}
                          + "' is not of the form host:port");
  return host_port{std::string{ep.substr(0, colon)}, port};
}

caf::error transport_error(const std::string& endpoint, std::string_view what,
                           const http::client_failure& f) {
  if (f.timed_out)
    return make_error(errc::timeout, "etcd at " + endpoint
                                         + " did not answer in time ("
                                         + std::string{what} + ")");
  return make_error(errc::storage_failure,
                    "etcd at " + endpoint + " is unreachable ("
                        + std::string{what} + "): " + f.ec.message()
                        + "; is etcd running?");
}

http::client_options options_of(const etcd_client_config& cfg) {
  http::client_options opts;
  opts.timeout = cfg.request_timeout;
  opts.max_response_bytes = cfg.max_response_bytes;
  return opts;
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
      if (idx != current || !conn) {
        current = idx;
        conn = std::make_unique<http::connection>(
            addrs[idx].host, addrs[idx].port, options_of(cfg));
      }
      bool reachable = true;
      auto res = request_at(idx, verb, path, body, reachable);
      if (res || reachable)
        return res;
      errors.push_back(std::move(res.error()));
    }
    return all_failed(errors);
  }

  // One request to endpoint `idx` on `conn`; `reachable` is cleared when it
  // could not be reached or did not answer in time (then the next one is
  // tried).
  caf::expected<std::string> request_at(size_t idx, http::verb verb,
                                        std::string_view path,
                                        std::string_view body,
                                        bool& reachable) {
    auto& endpoint = cfg.endpoints[idx];
    auto what = std::string{http::to_string(verb)} + " " + std::string{path};
    http::client_request req;
    req.method = verb;
    req.target = std::string{path};
    if (verb == http::verb::post)
      req.body = std::string{body};
    req.keep_alive = true;
    auto deadline = clock_type::now() + cfg.request_timeout;
    // A reused connection may have been closed by etcd while idle; then
    // the request never reached it and one retry on a new connection is
    // safe. Any other failure has an unknown outcome and is reported.
    for (int attempt = 0; attempt < 2; ++attempt) {
      auto res = conn->exchange(req, deadline);
      if (!res) {
        auto& f = *res.failure;
        bool unsent = f.where == http::client_failure::stage::sending
                      || (f.where == http::client_failure::stage::reading
                          && f.received_nothing);
        if (f.reused_connection && attempt == 0 && unsent && !f.timed_out)
          continue;
        if (f.too_large())
          return make_error(
              errc::payload_too_large,
              "etcd at " + endpoint + ": the answer to " + what + " exceeds "
                  + std::to_string(cfg.max_response_bytes) + " bytes");
        reachable = false;
        return transport_error(endpoint, what, f);
      }
      auto& r = res.response;
      if (r.status != 200)
        return make_error(errc::storage_failure,
                          "etcd at " + endpoint + ": " + what
                              + " failed with HTTP " + std::to_string(r.status)
                              + ": " + http_error_text(r.body));
      return std::move(r.body);
    }
    reachable = false;
    return make_error(errc::storage_failure, "etcd at " + endpoint
                                                 + " closed the connection ("
                                                 + what + ")");
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
  // The endpoint the connection belongs to, and the next request goes to.
  size_t current = 0;
  std::unique_ptr<http::connection> conn;
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
    // One connection per endpoint, made up front, so that `close` can
    // cancel them from another thread while `open` moves between them.
    for (auto& ep : cfg.endpoints) {
      auto hp = split_endpoint(ep);
      if (!hp) {
        bad_endpoint = std::move(hp.error());
        break;
      }
      conns.push_back(std::make_unique<http::connection>(hp->host, hp->port,
                                                         options_of(cfg)));
    }
  }

  caf::error open(std::string_view path, std::string_view json) {
    if (cfg.endpoints.empty())
      return no_endpoints();
    if (bad_endpoint)
      return bad_endpoint;
    what = "POST " + std::string{path};
    std::vector<caf::error> errors;
    for (size_t idx = 0; idx < conns.size(); ++idx) {
      bool reachable = true;
      auto err = open_at(idx, path, json, reachable);
      if (!err || reachable || closed)
        return err;
      errors.push_back(std::move(err));
      conns[idx]->close();
    }
    return all_failed(errors);
  }

  // Opens the stream at endpoint `idx`; `reachable` is cleared when it
  // could not be reached or did not answer in time.
  caf::error open_at(size_t idx, std::string_view path, std::string_view json,
                     bool& reachable) {
    index = idx;
    endpoint = cfg.endpoints[idx];
    if (closed)
      return stopped();
    http::client_request req;
    req.method = http::verb::post;
    req.target = std::string{path};
    req.body = std::string{json};
    req.keep_alive = true;
    // Each stream on a fresh connection.
    conns[idx]->close();
    auto res
        = conns[idx]->open_stream(req, clock_type::now() + cfg.request_timeout);
    if (!res) {
      reachable = false;
      return fail(*res.failure);
    }
    if (res.response.status != 200)
      return make_error(errc::storage_failure,
                        "etcd at " + endpoint + ": " + what
                            + " failed with HTTP "
                            + std::to_string(res.response.status));
    ended = false;
    pending.clear();
    return caf::none;
  }

  caf::expected<std::string> next() {
    // Bounded by the buffer limit: each pass either returns a line or adds
    // at least one byte to `pending`, which may not exceed the limit (or
    // finds the stream ended).
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
      if (ended)
        return make_error(errc::storage_failure, "etcd at " + endpoint
                                                     + " ended the stream ("
                                                     + what + ")");
      if (pending.size() > cfg.max_response_bytes)
        return make_error(
            errc::payload_too_large,
            "etcd at " + endpoint + ": a message of " + what + " exceeds "
                + std::to_string(cfg.max_response_bytes) + " bytes");
      std::optional<http::client_failure> failure;
      if (!conns[index]->read_some(pending, failure)) {
        if (failure) {
          if (closed)
            return stopped();
          return fail(*failure);
        }
        ended = true;
      }
    }
  }

  void close() {
    closed = true;
    for (auto& c : conns)
      c->cancel();
  }

  caf::error stopped() {
    return make_error(errc::cancelled, "etcd stream " + what + " was closed");
  }

  caf::error fail(const http::client_failure& f) {
    conns[index]->close();
    if (closed)
      return stopped();
    return transport_error(endpoint, what, f);
  }

  etcd_client_config cfg;
  caf::error bad_endpoint;
  std::vector<std::unique_ptr<http::connection>> conns;
  // The endpoint `open` reached (or tried last), and its index.
  std::string endpoint;
  size_t index = 0;
  std::string what = "stream";
  std::atomic<bool> closed{false};
  bool ended = false;
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

#include "gateway/gateway_client.hpp"

#include <charconv>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include "gateway/gateway.hpp"
#include "runtime/error.hpp"
#include "runtime/json.hpp"

namespace granary::cluster {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using std::chrono::milliseconds;

/// Larger responses (a huge list) are refused.
constexpr uint64_t max_response_bytes = 64 * 1024 * 1024;

std::string path(std::initializer_list<std::string_view> segments) {
  std::string out;
  for (auto s : segments)
    out += "/" + percent_encode(s);
  return out;
}

std::string workflow_path(const std::string& type, const std::string& id) {
  return "/v1/workflows" + path({type, id});
}

// `"key":<json>` when `json` is set.
std::string opt_raw(const char* key, const std::string& json) {
  return json.empty() ? std::string{} : ",\"" + std::string{key} + "\":" + json;
}

std::string opt_text(const char* key, const std::string& text) {
  return text.empty() ? std::string{}
                      : ",\"" + std::string{key} + "\":" + json_quote(text);
}

} // namespace

struct gateway_client::impl {
  endpoint server;
  milliseconds timeout;
};

gateway_client::gateway_client(endpoint server, milliseconds timeout)
    : impl_(std::make_unique<impl>(impl{std::move(server), timeout})) {}

gateway_client::~gateway_client() = default;

caf::expected<http_response> gateway_client::request(std::string_view method,
                                                     std::string_view target,
                                                     std::string_view body) {
  auto verb = http::string_to_verb({method.data(), method.size()});
  if (verb == http::verb::unknown)
    return make_error(errc::invalid_argument,
                      "unknown HTTP method '" + std::string{method} + "'");
  auto& host = impl_->server.host;
  auto port = impl_->server.port;
  auto timeout = impl_->timeout;
  auto what = std::string{method} + " http://" + impl_->server.to_string()
              + std::string{target};
  http::request<http::string_body> req{
      verb, beast::string_view{target.data(), target.size()}, 11};
  req.set(http::field::host, impl_->server.to_string());
  req.set(http::field::user_agent, "granary-cli");
  req.set(http::field::connection, "close");
  if (!body.empty()) {
    req.set(http::field::content_type, "application/json");
    req.body() = std::string{body};
  }
  req.prepare_payload();
  // Declared first so that it is destroyed last: pending handlers refer to
  // the locals below and are destroyed without being run.
  asio::io_context ioc{1};
  tcp::resolver resolver{ioc};
  beast::tcp_stream stream{ioc};
  beast::flat_buffer buf;
  http::response_parser<http::string_body> parser;
  parser.body_limit(max_response_bytes);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  caf::error failure;
  bool done = false;
  const char* stage = "resolving the host";
  auto fail = [&](beast::error_code ec) {
    done = true;
    if (ec == beast::error::timeout)
      failure = make_error(errc::timeout, what + " timed out after "
                                              + std::to_string(timeout.count())
                                              + " ms while " + stage);
    else
      failure = make_error(errc::unspecified, what + " failed while " + stage
                                                  + ": " + ec.message());
  };
  auto on_read = [&](beast::error_code ec, size_t) {
    if (ec)
      return fail(ec);
    done = true;
  };
  auto on_write = [&](beast::error_code ec, size_t) {
    if (ec)
      return fail(ec);
    stage = "reading the response";
    stream.expires_at(deadline);
    http::async_read(stream, buf, parser, on_read);
  };
  auto on_connect = [&](beast::error_code ec) {
    if (ec)
      return fail(ec);
    stage = "sending the request";
    stream.expires_at(deadline);
    http::async_write(stream, req, on_write);
  };
  boost::system::error_code literal;
  auto addr = asio::ip::make_address(host, literal);
  if (!literal) {
    stage = "connecting";
    stream.expires_at(deadline);
    stream.async_connect(tcp::endpoint{addr, port}, on_connect);
  } else {
    resolver.async_resolve(
        host, std::to_string(port),
        [&](beast::error_code ec, tcp::resolver::results_type endpoints) {
          if (ec)
            return fail(ec);
          stage = "connecting";
          stream.expires_at(deadline);
          stream.async_connect(endpoints,
                               [&](beast::error_code ec, const tcp::endpoint&) {
                                 on_connect(ec);
                               });
        });
  }
  // The stream's expiry ends connect, write and read; the margin bounds
  // the name lookup, which has no expiry of its own.
  ioc.run_for(timeout + milliseconds{100});
  if (!done)
    return make_error(errc::timeout, what + " timed out after "
                                         + std::to_string(timeout.count())
                                         + " ms while " + stage);
  if (failure)
    return failure;
  auto& res = parser.get();
  http_response out;
  out.status = res.result_int();
  out.body = std::move(res.body());
  if (auto it = res.find(http::field::retry_after); it != res.end()) {
    auto v = it->value();
    std::from_chars(v.data(), v.data() + v.size(), out.retry_after_s);
  }
  return out;
}

namespace {

// The gateway's error body as a `caf::error`.
caf::error error_of(const http_response& res) {
  google::protobuf::Struct obj;
  auto st = google::protobuf::util::JsonStringToMessage(res.body, &obj);
  auto it = obj.fields().find("error");
  if (st.ok() && it != obj.fields().end() && it->second.has_struct_value()) {
    auto& e = it->second.struct_value().fields();
    auto code = e.count("code") ? e.at("code").string_value() : std::string{};
    auto msg
        = e.count("message") ? e.at("message").string_value() : std::string{};
    if (res.retry_after_s > 0 && msg.find("retry after") == std::string::npos)
      msg += "; retry after " + std::to_string(res.retry_after_s * 1000)
             + " ms";
    return make_error(errc_from_name(code), msg);
  }
  auto text
      = res.body.size() > 200 ? res.body.substr(0, 200) + "..." : res.body;
  return make_error(errc::unspecified, "the gateway answered "
                                           + std::to_string(res.status) + ": "
                                           + text);
}

} // namespace

caf::expected<std::string> gateway_client::exchange(std::string_view method,
                                                    std::string_view target,
                                                    std::string_view body) {
  auto res = request(method, target, body);
  if (!res)
    return std::move(res.error());
  if (res->status >= 300)
    return error_of(*res);
  return std::move(res->body);
}

caf::expected<std::string> gateway_client::healthz() {
  return exchange("GET", "/healthz");
}

caf::expected<std::string> gateway_client::cluster_status() {
  return exchange("GET", "/v1/cluster");
}

caf::expected<std::string>
gateway_client::start_workflow(const std::string& type, const std::string& id,
                               const std::string& input_type,
                               const std::string& input_json,
                               bool reject_if_exists) {
  auto body = "{\"input_type\":" + json_quote(input_type)
              + opt_raw("input", input_json) + ",\"reject_if_exists\":"
              + (reject_if_exists ? "true" : "false") + "}";
  return exchange("POST", workflow_path(type, id) + "/start", body);
}

caf::expected<std::string>
gateway_client::describe_workflow(const std::string& type,
                                  const std::string& id) {
  return exchange("GET", workflow_path(type, id));
}

caf::expected<std::string>
gateway_client::workflow_result(const std::string& type, const std::string& id,
                                milliseconds wait, bool* finished) {
  auto res = request("GET", workflow_path(type, id) + "/result?wait_ms="
                                + std::to_string(wait.count()));
  if (!res)
    return std::move(res.error());
  if (res->status >= 300)
    return error_of(*res);
  if (finished)
    *finished = res->status == 200;
  return std::move(res->body);
}

caf::expected<std::string> gateway_client::signal_workflow(
    const std::string& type, const std::string& id, const std::string& name,
    const std::string& payload_type, const std::string& payload_json,
    const std::string& msg_id) {
  auto body = "{\"name\":" + json_quote(name)
              + opt_text("payload_type", payload_type)
              + opt_raw("payload", payload_json) + opt_text("id", msg_id) + "}";
  return exchange("POST", workflow_path(type, id) + "/signal", body);
}

caf::expected<std::string>
gateway_client::query_workflow(const std::string& type, const std::string& id,
                               const std::string& name) {
  return exchange("POST", workflow_path(type, id) + "/query",
                  "{\"name\":" + json_quote(name) + "}");
}

caf::expected<std::string>
gateway_client::cancel_workflow(const std::string& type, const std::string& id,
                                const std::string& reason,
                                const std::string& msg_id) {
  return exchange("POST", workflow_path(type, id) + "/cancel",
                  "{\"reason\":" + json_quote(reason) + opt_text("id", msg_id)
                      + "}");
}

caf::expected<std::string> gateway_client::update_workflow(
    const std::string& type, const std::string& id, const std::string& name,
    const std::string& payload_type, const std::string& payload_json,
    const std::string& update_id) {
  auto body
      = "{\"name\":" + json_quote(name) + opt_text("payload_type", payload_type)
        + opt_raw("payload", payload_json) + opt_text("id", update_id) + "}";
  return exchange("POST", workflow_path(type, id) + "/update", body);
}

caf::expected<std::string>
gateway_client::workflow_history(const std::string& type,
                                 const std::string& id) {
  return exchange("GET", workflow_path(type, id) + "/history");
}

caf::expected<std::string>
gateway_client::list_workflows(const std::string& type,
                               const std::string& status, size_t limit,
                               const std::string& cursor) {
  auto target = "/v1/workflows?type=" + percent_encode(type)
                + "&limit=" + std::to_string(limit);
  if (!status.empty())
    target += "&status=" + percent_encode(status);
  if (!cursor.empty())
    target += "&cursor=" + percent_encode(cursor);
  return exchange("GET", target);
}

caf::expected<std::string>
gateway_client::call_grain(const std::string& type, const std::string& key,
                           const std::string& message_type,
                           const std::string& message_json) {
  return exchange("POST", "/v1/grains" + path({type, key}) + "/call",
                  "{\"type\":" + json_quote(message_type)
                      + opt_raw("message", message_json) + "}");
}

caf::expected<std::string>
gateway_client::send_grain(const std::string& type, const std::string& key,
                           const std::string& message_type,
                           const std::string& message_json,
                           const std::string& msg_id) {
  return exchange("POST", "/v1/grains" + path({type, key}) + "/send",
                  "{\"type\":" + json_quote(message_type)
                      + opt_raw("message", message_json)
                      + opt_text("id", msg_id) + "}");
}

caf::expected<std::string> gateway_client::dead_letters(size_t limit) {
  return exchange("GET", "/v1/dead-letters?limit=" + std::to_string(limit));
}

caf::expected<std::string>
gateway_client::requeue_dead_letter(const std::string& type,
                                    const std::string& key,
                                    const std::string& msg_id) {
  return exchange("POST",
                  "/v1/dead-letters" + path({type, key, msg_id}) + "/requeue");
}

caf::expected<std::string>
gateway_client::drop_dead_letter(const std::string& type,
                                 const std::string& key,
                                 const std::string& msg_id) {
  return exchange("DELETE", "/v1/dead-letters" + path({type, key, msg_id}));
}

caf::expected<dead_letter_page> parse_dead_letters(const std::string& json) {
  google::protobuf::Struct obj;
  if (!google::protobuf::util::JsonStringToMessage(json, &obj).ok()
      || !obj.fields().count("dead_letters"))
    return make_error(errc::malformed_message,
                      "the gateway's answer is not a dead-letter list");
  dead_letter_page out;
  for (auto& v : obj.fields().at("dead_letters").list_value().values()) {
    auto& f = v.struct_value().fields();
    auto text = [&](const char* k) {
      auto i = f.find(k);
      return i == f.end() ? std::string{} : i->second.string_value();
    };
    auto number = [&](const char* k) {
      auto i = f.find(k);
      return i == f.end() ? 0.0 : i->second.number_value();
    };
    dead_letter_info dl;
    dl.target = grain_id{text("type"), text("key")};
    dl.msg_id = text("msg_id");
    dl.payload_type = text("payload_type");
    dl.error = text("error");
    dl.attempts = static_cast<uint32_t>(number("attempts"));
    dl.dead_ms = static_cast<int64_t>(number("dead_ms"));
    out.letters.push_back(std::move(dl));
  }
  if (auto i = obj.fields().find("limit_reached"); i != obj.fields().end())
    out.limit_reached = i->second.bool_value();
  if (auto i = obj.fields().find("unreachable"); i != obj.fields().end())
    for (auto& gw : i->second.list_value().values())
      out.unreachable.push_back(gw.string_value());
  return out;
}

} // namespace granary::cluster

#include "gateway/gateway_client.hpp"

#include <charconv>

#include "gateway/gateway.hpp"
#include "gateway/gateway_json.hpp"
#include "http/client.hpp"
#include "runtime/error.hpp"

namespace granary::cluster {

namespace {

using detail::json;
using std::chrono::milliseconds;

std::string path(std::initializer_list<std::string_view> segments) {
  std::string out;
  for (auto s : segments)
    out += "/" + percent_encode(s);
  return out;
}

std::string workflow_path(const std::string& type, const std::string& id) {
  return "/v1/workflows" + path({type, id});
}

// A request body under construction: text fields, and message fields from
// the caller's JSON text (left out when empty).
class body_builder {
public:
  body_builder& text(const char* key, const std::string& value) {
    obj_[key] = value;
    return *this;
  }

  body_builder& opt_text(const char* key, const std::string& value) {
    if (!value.empty())
      obj_[key] = value;
    return *this;
  }

  body_builder& flag(const char* key, bool value) {
    obj_[key] = value;
    return *this;
  }

  body_builder& message(const char* key, const std::string& json_text) {
    if (json_text.empty() || err_)
      return *this;
    auto v = json::parse(json_text, nullptr, false);
    if (v.is_discarded())
      err_ = make_error(errc::invalid_argument, "'" + std::string{key}
                                                    + "' is not valid JSON: "
                                                    + json_text.substr(0, 200));
    else
      obj_[key] = std::move(v);
    return *this;
  }

  caf::expected<std::string> done() const {
    if (err_)
      return err_;
    return detail::dump(obj_);
  }

private:
  json obj_ = json::object();
  caf::error err_;
};

// The gateway's error body as a `caf::error`.
caf::error error_of(const http_response& res) {
  auto obj = json::parse(res.body, nullptr, false);
  if (obj.is_object()) {
    auto e = obj.find("error");
    if (e != obj.end() && e->is_object()) {
      auto text = [&](const char* k) {
        auto i = e->find(k);
        return i != e->end() && i->is_string() ? i->get<std::string>()
                                               : std::string{};
      };
      auto msg = text("message");
      if (res.retry_after_s > 0 && msg.find("retry after") == std::string::npos)
        msg += "; retry after " + std::to_string(res.retry_after_s * 1000)
               + " ms";
      return make_error(errc_from_name(text("code")), msg);
    }
  }
  auto text
      = res.body.size() > 200 ? res.body.substr(0, 200) + "..." : res.body;
  return make_error(errc::unspecified, "the gateway answered "
                                           + std::to_string(res.status) + ": "
                                           + text);
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
  auto verb = http::verb_of(method);
  if (verb == http::verb::unknown)
    return make_error(errc::invalid_argument,
                      "unknown HTTP method '" + std::string{method} + "'");
  http::client_request req;
  req.method = verb;
  req.target = std::string{target};
  req.body = std::string{body};
  req.user_agent = "granary-cli";
  http::client_options opts;
  opts.timeout = impl_->timeout;
  auto res = http::fetch(impl_->server.host, impl_->server.port, std::move(req),
                         opts);
  if (!res) {
    auto what = std::string{method} + " http://" + impl_->server.to_string()
                + std::string{target} + " " + res.failure->describe();
    return make_error(res.failure->timed_out ? errc::timeout
                                             : errc::unspecified,
                      std::move(what));
  }
  http_response out;
  out.status = res.response.status;
  out.body = std::move(res.response.body);
  auto retry = res.response.header("Retry-After");
  std::from_chars(retry.data(), retry.data() + retry.size(), out.retry_after_s);
  return out;
}

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

namespace {

// Sends the body that `b` built, unless building it failed.
template <class Client>
caf::expected<std::string> post(Client& c, const std::string& target,
                                const body_builder& b) {
  auto text = b.done();
  if (!text)
    return std::move(text.error());
  return c.exchange("POST", target, *text);
}

} // namespace

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
  return post(*this, workflow_path(type, id) + "/start",
              body_builder{}
                  .text("input_type", input_type)
                  .message("input", input_json)
                  .flag("reject_if_exists", reject_if_exists));
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
  return post(*this, workflow_path(type, id) + "/signal",
              body_builder{}
                  .text("name", name)
                  .opt_text("payload_type", payload_type)
                  .message("payload", payload_json)
                  .opt_text("id", msg_id));
}

caf::expected<std::string>
gateway_client::query_workflow(const std::string& type, const std::string& id,
                               const std::string& name) {
  return post(*this, workflow_path(type, id) + "/query",
              body_builder{}.text("name", name));
}

caf::expected<std::string>
gateway_client::cancel_workflow(const std::string& type, const std::string& id,
                                const std::string& reason,
                                const std::string& msg_id) {
  return post(*this, workflow_path(type, id) + "/cancel",
              body_builder{}.text("reason", reason).opt_text("id", msg_id));
}

caf::expected<std::string> gateway_client::update_workflow(
    const std::string& type, const std::string& id, const std::string& name,
    const std::string& payload_type, const std::string& payload_json,
    const std::string& update_id) {
  return post(*this, workflow_path(type, id) + "/update",
              body_builder{}
                  .text("name", name)
                  .opt_text("payload_type", payload_type)
                  .message("payload", payload_json)
                  .opt_text("id", update_id));
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
  return post(*this, "/v1/grains" + path({type, key}) + "/call",
              body_builder{}
                  .text("type", message_type)
                  .message("message", message_json));
}

caf::expected<std::string>
gateway_client::send_grain(const std::string& type, const std::string& key,
                           const std::string& message_type,
                           const std::string& message_json,
                           const std::string& msg_id) {
  return post(*this, "/v1/grains" + path({type, key}) + "/send",
              body_builder{}
                  .text("type", message_type)
                  .message("message", message_json)
                  .opt_text("id", msg_id));
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

caf::expected<dead_letter_page> parse_dead_letters(const std::string& body) {
  auto obj = json::parse(body, nullptr, false);
  if (!obj.is_object() || !obj.contains("dead_letters")
      || !obj["dead_letters"].is_array())
    return make_error(errc::malformed_message,
                      "the gateway's answer is not a dead-letter list");
  auto text = [](const json& v, const char* k) {
    auto i = v.find(k);
    return i != v.end() && i->is_string() ? i->get<std::string>()
                                          : std::string{};
  };
  auto number = [](const json& v, const char* k) {
    auto i = v.find(k);
    return i != v.end() && i->is_number_integer() ? i->get<int64_t>()
                                                  : int64_t{0};
  };
  dead_letter_page out;
  for (auto& v : obj["dead_letters"]) {
    if (!v.is_object())
      return make_error(errc::malformed_message,
                        "a dead letter of the gateway's answer is not an "
                        "object");
    dead_letter_info dl;
    dl.target = grain_id{text(v, "type"), text(v, "key")};
    dl.msg_id = text(v, "msg_id");
    dl.payload_type = text(v, "payload_type");
    dl.error = text(v, "error");
    dl.attempts = static_cast<uint32_t>(number(v, "attempts"));
    dl.dead_ms = number(v, "dead_ms");
    out.letters.push_back(std::move(dl));
  }
  auto limit = obj.find("limit_reached");
  out.limit_reached
      = limit != obj.end() && limit->is_boolean() && limit->get<bool>();
  if (auto u = obj.find("unreachable"); u != obj.end() && u->is_array())
    for (auto& gw : *u)
      if (gw.is_string())
        out.unreachable.push_back(gw.get<std::string>());
  return out;
}

} // namespace granary::cluster

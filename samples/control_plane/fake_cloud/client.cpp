#include "samples/control_plane/fake_cloud/client.hpp"

#include <algorithm>
#include <charconv>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include "http/client.hpp"

namespace fake_cloud {

namespace {

namespace http = granary::http;
using granary::errc;
using granary::make_error;
using std::chrono::milliseconds;

/// Responses larger than this (a huge list or audit) are refused.
constexpr uint64_t max_response_bytes = 64 * 1024 * 1024;

/// A response as the client needs it.
struct http_answer {
  unsigned status = 0;
  std::string body;
  bool replayed = false;
  /// From `Retry-After-Ms`, else `Retry-After` (seconds); 0 if neither.
  uint64_t retry_after_ms = 0;
};

/// A request to send.
struct http_call {
  http::verb method = http::verb::get;
  std::string target;
  std::string body;
  std::string key;
  std::string if_match;

  std::string what() const {
    return "fake cloud: " + std::string{http::to_string(method)} + " " + target;
  }
};

uint64_t parse_u64(std::string_view text) {
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc{} || end != text.data() + text.size())
    return 0;
  return n;
}

// Kinds and names travel in the request target unescaped, so characters
// that would change its meaning are refused before sending.
bool safe_segment(const std::string& s) {
  return !s.empty() && s.size() <= 255
         && std::all_of(s.begin(), s.end(), [](char c) {
              return c > 0x20 && c < 0x7f && c != '/' && c != '?' && c != '#'
                     && c != '%';
            });
}

caf::error bad_segment(const std::string& what, const std::string& value) {
  return make_error(errc::invalid_argument,
                    "fake cloud: " + what + " '" + value
                        + "' must be 1-255 printable characters without '/', "
                          "'?', '#', '%' or spaces");
}

/// The server's error message from a JSON error body, else the body.
std::string server_message(const std::string& body) {
  google::protobuf::Struct obj;
  auto st = google::protobuf::util::JsonStringToMessage(body, &obj);
  if (st.ok()) {
    auto i = obj.fields().find("message");
    auto j = obj.fields().find("error");
    if (i != obj.fields().end() && j != obj.fields().end())
      return j->second.string_value() + ": " + i->second.string_value();
  }
  return body.size() > 200 ? body.substr(0, 200) + "..." : body;
}

caf::error classify(const http_call& call, const http_answer& a) {
  auto msg = call.what() + " answered " + std::to_string(a.status) + " ("
             + server_message(a.body) + ")";
  if (a.status == 404)
    return make_error(errc::not_found, std::move(msg));
  if (a.status == 413)
    return make_error(errc::payload_too_large, std::move(msg));
  if (a.status == 429 || a.status == 503) {
    if (a.retry_after_ms > 0)
      msg += "; retry after " + std::to_string(a.retry_after_ms) + " ms";
    return make_error(errc::overloaded, std::move(msg));
  }
  if (a.status >= 500)
    return make_error(errc::handler_failed,
                      std::move(msg) + "; the outcome may be unknown");
  if (a.status >= 400)
    return make_error(errc::invalid_argument, std::move(msg));
  return make_error(errc::unspecified, std::move(msg));
}

caf::error network_error(const http_call& call, const http::client_failure& f) {
  return make_error(f.timed_out ? errc::timeout : errc::unspecified,
                    call.what() + " " + f.describe()
                        + "; the outcome is unknown");
}

caf::expected<http_answer> exchange(const std::string& host, uint16_t port,
                                    milliseconds timeout,
                                    const http_call& call) {
  http::client_request req;
  req.method = call.method;
  req.target = call.target;
  req.user_agent = "granary-fake-cloud-client";
  if (!call.key.empty())
    req.headers.emplace_back("Idempotency-Key", call.key);
  if (!call.if_match.empty())
    req.headers.emplace_back("If-Match", call.if_match);
  if (call.method == http::verb::put)
    req.body = call.body;
  http::client_options opts;
  opts.timeout = timeout;
  opts.max_response_bytes = max_response_bytes;
  auto res = http::fetch(host, port, std::move(req), opts);
  if (!res)
    return network_error(call, *res.failure);
  http_answer a;
  a.status = res.response.status;
  a.body = std::move(res.response.body);
  a.replayed = res.response.header("Idempotent-Replayed") == "true";
  auto ms = res.response.header("Retry-After-Ms");
  auto secs = res.response.header("Retry-After");
  if (!ms.empty())
    a.retry_after_ms = parse_u64(ms);
  else if (!secs.empty())
    a.retry_after_ms = parse_u64(secs) * 1000;
  return a;
}

} // namespace

client::client(std::string host, uint16_t port,
               std::chrono::milliseconds timeout)
    : host_(std::move(host))
    , port_(port)
    , timeout_(timeout) {}

namespace {

caf::expected<mutation_result> mutation(const std::string& host, uint16_t port,
                                        milliseconds timeout, http_call call) {
  if (call.key.empty())
    return make_error(errc::invalid_argument,
                      call.what() + " needs an idempotency key");
  auto a = exchange(host, port, timeout, call);
  if (!a)
    return std::move(a.error());
  if (a->status != 200 && a->status != 201)
    return classify(call, *a);
  auto res = resource_from_json(a->body);
  if (!res)
    return make_error(errc::malformed_message,
                      call.what() + ": " + granary::describe(res.error()));
  return mutation_result{a->status, a->replayed, std::move(*res)};
}

} // namespace

caf::expected<mutation_result>
client::put(const std::string& kind, const std::string& name,
            const std::string& spec_json,
            const std::string& idempotency_key) const {
  if (!safe_segment(kind))
    return bad_segment("kind", kind);
  if (!safe_segment(name))
    return bad_segment("name", name);
  return mutation(host_, port_, timeout_,
                  {http::verb::put, "/v1/" + kind + "/" + name, spec_json,
                   idempotency_key, ""});
}

caf::expected<mutation_result>
client::update(const std::string& kind, const std::string& name,
               const std::string& spec_json, const std::string& idempotency_key,
               std::optional<uint64_t> expected_version) const {
  if (!safe_segment(kind))
    return bad_segment("kind", kind);
  if (!safe_segment(name))
    return bad_segment("name", name);
  auto if_match = expected_version ? std::to_string(*expected_version) : "*";
  return mutation(host_, port_, timeout_,
                  {http::verb::put, "/v1/" + kind + "/" + name, spec_json,
                   idempotency_key, if_match});
}

caf::expected<mutation_result>
client::del(const std::string& kind, const std::string& name,
            const std::string& idempotency_key) const {
  if (!safe_segment(kind))
    return bad_segment("kind", kind);
  if (!safe_segment(name))
    return bad_segment("name", name);
  return mutation(host_, port_, timeout_,
                  {http::verb::delete_, "/v1/" + kind + "/" + name, "",
                   idempotency_key, ""});
}

caf::expected<resource> client::get(const std::string& kind,
                                    const std::string& name) const {
  if (!safe_segment(kind))
    return bad_segment("kind", kind);
  if (!safe_segment(name))
    return bad_segment("name", name);
  http_call call{http::verb::get, "/v1/" + kind + "/" + name, "", "", ""};
  auto a = exchange(host_, port_, timeout_, call);
  if (!a)
    return std::move(a.error());
  if (a->status != 200)
    return classify(call, *a);
  auto res = resource_from_json(a->body);
  if (!res)
    return make_error(errc::malformed_message,
                      call.what() + ": " + granary::describe(res.error()));
  return res;
}

caf::expected<std::vector<resource>>
client::list(const std::string& kind) const {
  if (!safe_segment(kind))
    return bad_segment("kind", kind);
  http_call call{http::verb::get, "/v1/" + kind, "", "", ""};
  auto a = exchange(host_, port_, timeout_, call);
  if (!a)
    return std::move(a.error());
  if (a->status != 200)
    return classify(call, *a);
  google::protobuf::Struct obj;
  auto st = google::protobuf::util::JsonStringToMessage(a->body, &obj);
  auto items = obj.fields().find("items");
  if (!st.ok() || items == obj.fields().end()
      || !items->second.has_list_value())
    return make_error(errc::malformed_message,
                      call.what() + ": the answer has no items list");
  std::vector<resource> out;
  for (auto& v : items->second.list_value().values()) {
    std::string text;
    google::protobuf::util::MessageToJsonString(v, &text);
    auto res = resource_from_json(text);
    if (!res)
      return make_error(errc::malformed_message,
                        call.what() + ": " + granary::describe(res.error()));
    out.push_back(std::move(*res));
  }
  return out;
}

caf::expected<audit_summary> client::audit() const {
  http_call call{http::verb::get, "/v1/_audit", "", "", ""};
  auto a = exchange(host_, port_, timeout_, call);
  if (!a)
    return std::move(a.error());
  if (a->status != 200)
    return classify(call, *a);
  auto s = audit_from_json(a->body);
  if (!s)
    return make_error(errc::malformed_message,
                      call.what() + ": " + granary::describe(s.error()));
  return s;
}

caf::error client::healthz() const {
  http_call call{http::verb::get, "/healthz", "", "", ""};
  auto a = exchange(host_, port_, timeout_, call);
  if (!a)
    return std::move(a.error());
  if (a->status != 200)
    return classify(call, *a);
  return caf::none;
}

bool retryable(const caf::error& err) {
  if (!err)
    return false;
  auto kinds = non_retryable_errors();
  return std::find(kinds.begin(), kinds.end(), granary::code_of(err))
         == kinds.end();
}

std::optional<std::chrono::milliseconds> retry_after(const caf::error& err) {
  constexpr std::string_view marker = "retry after ";
  auto text = granary::describe(err);
  auto pos = text.rfind(marker);
  if (pos == std::string::npos)
    return std::nullopt;
  std::string_view rest{text};
  rest.remove_prefix(pos + marker.size());
  auto end = rest.find(" ms");
  if (end == std::string_view::npos || end == 0)
    return std::nullopt;
  uint64_t n = 0;
  auto [p, ec] = std::from_chars(rest.data(), rest.data() + end, n);
  if (ec != std::errc{} || p != rest.data() + end)
    return std::nullopt;
  return milliseconds{static_cast<int64_t>(n)};
}

std::vector<granary::errc> non_retryable_errors() {
  return {errc::invalid_argument, errc::not_found, errc::payload_too_large,
          errc::malformed_message};
}

} // namespace fake_cloud

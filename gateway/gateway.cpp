#include "gateway/gateway.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string_view>
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
#include <google/protobuf/descriptor.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/message.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include "gateway/gateway_client.hpp"
#include "gateway/gateway_history.hpp"
#include "runtime/error.hpp"
#include "runtime/json.hpp"
#include "runtime/keys.hpp"
#include "workflow.pb.h"

namespace granary::cluster {

caf::error gateway_config::validate() const {
  auto bad = [](std::string what) {
    return make_error(errc::invalid_config, "gateway: " + std::move(what));
  };
  if (listen.host.empty())
    return bad("listen host must not be empty");
  if (threads < 1 || threads > 64)
    return bad("threads must be in [1, 64]");
  if (workers < 1 || workers > 1'024)
    return bad("workers must be in [1, 1024]");
  if (max_queued < 1 || max_queued > 1'000'000)
    return bad("max_queued must be in [1, 1000000]");
  if (max_connections < 1 || max_connections > 100'000)
    return bad("max_connections must be in [1, 100000]");
  if (max_header_bytes < 512 || max_header_bytes > (1 << 20))
    return bad("max_header_bytes must be in [512, 1048576]");
  if (max_body_bytes < 1 || max_body_bytes > (64 << 20))
    return bad("max_body_bytes must be in [1, 67108864]");
  if (idle_timeout.count() < 1)
    return bad("idle_timeout must be positive");
  if (header_timeout.count() < 1)
    return bad("header_timeout must be positive");
  if (call_timeout.count() < 1)
    return bad("call_timeout must be positive");
  if (max_wait.count() < 0)
    return bad("max_wait must not be negative");
  if (max_list < 1 || max_list > 100'000)
    return bad("max_list must be in [1, 100000]");
  return caf::none;
}

std::string percent_encode(std::string_view segment) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(segment.size());
  for (unsigned char c : segment) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
        || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'
        || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 0xf];
    }
  }
  return out;
}

errc errc_from_name(std::string_view name) {
  return granary::errc_from_name(name).value_or(errc::unspecified);
}

namespace detail {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace pb = google::protobuf;
using tcp = asio::ip::tcp;
using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

namespace {

/// Records of one list request at most (bounds a sparse status filter).
constexpr size_t max_scanned = 20'000;

/// An answer before it becomes an HTTP response.
struct reply {
  unsigned status = 200;
  std::string body;
  uint64_t retry_after_ms = 0;
};

reply error_reply(unsigned status, errc code, const std::string& message,
                  uint64_t retry_after_ms = 0) {
  return reply{status,
               "{\"error\":{\"code\":" + json_quote(to_string(code))
                   + ",\"message\":" + json_quote(message) + "}}",
               retry_after_ms};
}

// The runtime states retry hints as "retry after N ms".
uint64_t retry_hint(const std::string& message, uint64_t fallback) {
  auto at = message.rfind("retry after ");
  if (at == std::string::npos)
    return fallback;
  uint64_t ms = 0;
  auto* first = message.data() + at + 12;
  auto res = std::from_chars(first, message.data() + message.size(), ms);
  return res.ec == std::errc{} && ms > 0 ? ms : fallback;
}

reply error_reply(const caf::error& err) {
  auto code = code_of(err);
  auto msg = describe(err);
  // describe() renders "code: message"; the code travels separately.
  if (auto colon = msg.find(": ");
      colon != std::string::npos && msg.compare(0, colon, to_string(code)) == 0)
    msg = msg.substr(colon + 2);
  uint64_t retry = 0;
  if (code == errc::overloaded)
    retry = retry_hint(msg, 1'000);
  else if (code == errc::storage_full)
    retry = 5'000;
  return error_reply(http_status(code), code, msg, retry);
}

reply json_reply(unsigned status, std::string body) {
  return reply{status, std::move(body), 0};
}

std::string message_json(const pb::Message& m) {
  pb::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  opts.always_print_primitive_fields = true;
  std::string out;
  auto st = pb::util::MessageToJsonString(m, &out, opts);
  if (!st.ok())
    return "{\"unprintable\":" + json_quote(st.ToString()) + "}";
  return out;
}

const pb::Message* prototype_of(std::string_view type) {
  auto* desc = pb::DescriptorPool::generated_pool()->FindMessageTypeByName(
      std::string{type});
  return desc ? pb::MessageFactory::generated_factory()->GetPrototype(desc)
              : nullptr;
}

// Bytes of message type `type` as JSON; `null` when there is no type.
std::string bytes_json(const std::string& type, const std::string& bytes) {
  if (type.empty())
    return "null";
  auto* proto = prototype_of(type);
  if (!proto)
    return "{\"unknown_type\":" + json_quote(type)
           + ",\"bytes\":" + std::to_string(bytes.size()) + "}";
  std::unique_ptr<pb::Message> m{proto->New()};
  if (!m->ParseFromString(bytes))
    return "{\"undecodable\":" + json_quote(type) + "}";
  return message_json(*m);
}

caf::expected<std::unique_ptr<pb::Message>>
message_from_json(const std::string& field, std::string_view type,
                  std::string_view json) {
  if (type.empty())
    return make_error(errc::invalid_argument,
                      "'" + field + "' needs its message type");
  auto* proto = prototype_of(type);
  if (!proto)
    return make_error(errc::invalid_argument,
                      "unknown message type '" + std::string{type}
                          + "' (not linked into this silo)");
  std::unique_ptr<pb::Message> m{proto->New()};
  if (json.empty())
    return m;
  auto st = pb::util::JsonStringToMessage(
      pb::StringPiece{json.data(), json.size()}, m.get());
  if (!st.ok())
    return make_error(
        errc::invalid_argument,
        "'" + field + "' is not valid JSON of " + std::string{type} + ": "
            + std::string{st.message().data(), st.message().size()});
  return m;
}

size_t skip_ws(std::string_view s, size_t i) {
  while (i < s.size()
         && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
    ++i;
  return i;
}

// End of the JSON string starting at the quote at `i` (one past its
// closing quote).
size_t skip_string(std::string_view s, size_t i) {
  for (++i; i < s.size(); ++i) {
    if (s[i] == '\\')
      ++i;
    else if (s[i] == '"')
      return i + 1;
  }
  return s.size();
}

// Index of the bracket that closes the one at `open` in the JSON `s`
// (brackets inside strings do not count); npos when there is none.
size_t matching(std::string_view s, size_t open) {
  size_t depth = 0;
  for (size_t i = open; i < s.size(); ++i) {
    auto c = s[i];
    if (c == '"') {
      i = skip_string(s, i) - 1;
    } else if (c == '[' || c == '{') {
      ++depth;
    } else if ((c == ']' || c == '}') && --depth == 0) {
      return i;
    }
  }
  return std::string_view::npos;
}

/// The fields of a JSON request body: each value's raw text (so that a
/// nested message keeps its exact numbers) plus its parsed form.
class body_fields {
public:
  /// Parses `body` (empty means `{}`); every key must be in `allowed`.
  caf::error parse(std::string_view body,
                   std::initializer_list<std::string_view> allowed) {
    auto first = skip_ws(body, 0);
    if (first == body.size())
      return caf::none;
    // Checked before any parsing: the JSON parser's cost grows much faster
    // than the depth, so a small deep body would tie up a worker.
    if (json_nesting(body, max_json_depth) > max_json_depth)
      return make_error(errc::invalid_argument,
                        "the request body nests objects and arrays deeper "
                        "than "
                            + std::to_string(max_json_depth) + " levels");
    auto st = pb::util::JsonStringToMessage(
        pb::StringPiece{body.data(), body.size()}, &obj_);
    if (!st.ok())
      return make_error(
          errc::invalid_argument,
          "the request body is not a JSON object: "
              + std::string{st.message().data(), st.message().size()});
    // Valid JSON: walk the top level and cut out each value's text.
    size_t i = skip_ws(body, first + 1);
    while (i < body.size() && body[i] != '}') {
      auto key_end = skip_string(body, i);
      pb::Value key;
      auto ks = pb::util::JsonStringToMessage(
          pb::StringPiece{body.data() + i, key_end - i}, &key);
      if (!ks.ok())
        return make_error(errc::invalid_argument, "bad key in request body");
      i = skip_ws(body, skip_ws(body, key_end) + 1);
      auto start = i;
      int depth = 0;
      for (; i < body.size(); ++i) {
        auto c = body[i];
        if (c == '"') {
          i = skip_string(body, i) - 1;
        } else if (c == '{' || c == '[') {
          ++depth;
        } else if (c == '}' || c == ']') {
          if (depth == 0)
            break;
          --depth;
        } else if (c == ',' && depth == 0) {
          break;
        }
      }
      raw_[key.string_value()] = std::string{body.substr(start, i - start)};
      if (i < body.size() && body[i] == ',')
        i = skip_ws(body, i + 1);
    }
    for (auto& [k, v] : obj_.fields())
      if (std::find(allowed.begin(), allowed.end(), k) == allowed.end()) {
        std::string known;
        for (auto a : allowed)
          known += (known.empty() ? "" : ", ") + std::string{a};
        return make_error(errc::invalid_argument,
                          "unknown field '" + k
                              + "' in the request body (known: " + known + ")");
      }
    return caf::none;
  }

  bool has(const std::string& key) const {
    return obj_.fields().count(key) > 0;
  }

  /// A string field; `invalid_argument` when it has another type.
  caf::expected<std::string> text(const std::string& key, bool required) const {
    auto i = obj_.fields().find(key);
    if (i == obj_.fields().end() || i->second.has_null_value()) {
      if (required)
        return make_error(errc::invalid_argument,
                          "the request body needs a string field '" + key
                              + "'");
      return std::string{};
    }
    if (!i->second.has_string_value())
      return make_error(errc::invalid_argument,
                        "field '" + key + "' must be a string");
    return i->second.string_value();
  }

  caf::expected<bool> flag(const std::string& key) const {
    auto i = obj_.fields().find(key);
    if (i == obj_.fields().end() || i->second.has_null_value())
      return false;
    if (!i->second.has_bool_value())
      return make_error(errc::invalid_argument,
                        "field '" + key + "' must be true or false");
    return i->second.bool_value();
  }

  /// A nested message: JSON object text, or empty when absent.
  caf::expected<std::string> object(const std::string& key) const {
    auto i = obj_.fields().find(key);
    if (i == obj_.fields().end() || i->second.has_null_value())
      return std::string{};
    if (!i->second.has_struct_value())
      return make_error(errc::invalid_argument,
                        "field '" + key
                            + "' must be a JSON object (a message)");
    return raw_.at(key);
  }

private:
  pb::Struct obj_;
  std::map<std::string, std::string> raw_;
};

/// A routed request.
struct request_view {
  http::verb method = http::verb::get;
  // The request target as received (path and query).
  std::string target;
  std::string path;
  std::map<std::string, std::string> query;
  std::string body;
};

bool decode_percent(std::string_view in, std::string& out) {
  out.clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size())
      return false;
    unsigned v = 0;
    auto res = std::from_chars(in.data() + i + 1, in.data() + i + 3, v, 16);
    if (res.ec != std::errc{} || res.ptr != in.data() + i + 3)
      return false;
    out += static_cast<char>(v);
    i += 2;
  }
  return true;
}

std::string hex_encode(std::string_view in) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(in.size() * 2);
  for (unsigned char c : in) {
    out += hex[c >> 4];
    out += hex[c & 0xf];
  }
  return out;
}

std::optional<std::string> hex_decode(std::string_view in) {
  if (in.size() % 2 != 0)
    return std::nullopt;
  std::string out;
  for (size_t i = 0; i < in.size(); i += 2) {
    unsigned v = 0;
    auto res = std::from_chars(in.data() + i, in.data() + i + 2, v, 16);
    if (res.ec != std::errc{} || res.ptr != in.data() + i + 2)
      return std::nullopt;
    out += static_cast<char>(v);
  }
  return out;
}

// Checks text that names a grain or a message (a type, a key, an id): it
// must be non-empty UTF-8 without control characters, since it ends up in
// storage keys and in every JSON answer that lists it. The error names
// `what` and never echoes the bytes.
std::optional<reply> bad_name(const std::string& text, const char* what) {
  auto bad = [&](const std::string& why) {
    return error_reply(400, errc::invalid_argument,
                       std::string{"the "} + what + " " + why);
  };
  if (text.empty())
    return bad("is empty");
  if (!is_valid_utf8(text))
    return bad("is not valid UTF-8");
  for (unsigned char c : text)
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "0x%02x", c);
      return bad(std::string{"holds a control character ("} + buf + ")");
    }
  return std::nullopt;
}

// An optional message id of a request body (empty: none given).
std::optional<reply> bad_id(const std::string& text) {
  return text.empty() ? std::nullopt : bad_name(text, "message id");
}

bool finished(wire::WorkflowState::Status s) {
  return s == wire::WorkflowState::COMPLETED
         || s == wire::WorkflowState::FAILED;
}

} // namespace

class session;

/// Everything behind `gateway`: the listener, the sessions, the worker
/// pool that runs the (blocking) silo calls, and the endpoint handlers.
class gateway_state {
public:
  gateway_state(gateway_config cfg, silo& s)
      : cfg_(std::move(cfg))
      , silo_(s) {}

  ~gateway_state() {
    stop();
  }

  caf::error listen() {
    beast::error_code ec;
    tcp::endpoint ep;
    auto addr = asio::ip::make_address(cfg_.listen.host, ec);
    if (ec && cfg_.listen.host == "localhost") {
      ec = {};
      addr = asio::ip::make_address("127.0.0.1", ec);
    }
    if (!ec) {
      ep = tcp::endpoint{addr, cfg_.listen.port};
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
      return make_error(errc::invalid_config, "gateway cannot listen on "
                                                  + cfg_.listen.to_string()
                                                  + ": " + ec.message());
    return caf::none;
  }

  void run() {
    accept();
    for (size_t i = 0; i < cfg_.threads; ++i)
      io_threads_.emplace_back([this] { io_work(); });
    for (size_t i = 0; i < cfg_.workers; ++i)
      workers_.emplace_back([this] { worker(); });
  }

  void stop();

  uint16_t port() const {
    return port_;
  }

  const gateway_config& config() const {
    return cfg_;
  }

  gateway_stats stats() const {
    std::lock_guard guard{mtx_};
    auto out = stats_;
    out.requests = requests_.load();
    return out;
  }

  /// What becomes of a new connection.
  enum class admission {
    /// Served.
    serve,
    /// Answered 503 (too many connections open) and closed.
    reject,
    /// Closed at once (stopping, or too many rejections in progress).
    close,
  };

  admission add_session(const std::shared_ptr<session>& s) {
    std::lock_guard guard{mtx_};
    if (stopping_)
      return admission::close;
    if (stats_.open_connections >= cfg_.max_connections) {
      ++stats_.rejected_connections;
      // Rejections are short (one small write, then at most 500 ms of
      // lingering), but bound them too.
      if (rejecting_ >= std::max<size_t>(64, cfg_.max_connections))
        return admission::close;
      ++rejecting_;
      return admission::reject;
    }
    ++stats_.open_connections;
    sessions_.emplace(s.get(), s);
    return admission::serve;
  }

  void end_rejection() {
    std::lock_guard guard{mtx_};
    --rejecting_;
  }

  void count_header_timeout() {
    std::lock_guard guard{mtx_};
    ++stats_.header_timeouts;
  }

  void remove_session(const session* s) {
    std::lock_guard guard{mtx_};
    if (sessions_.erase(s) > 0)
      --stats_.open_connections;
  }

  /// Queues `job` for a worker; false when the queue is full or stopping.
  bool submit(std::function<void()> job) {
    std::lock_guard guard{jobs_mtx_};
    if (jobs_stop_ || jobs_.size() >= cfg_.max_queued)
      return false;
    jobs_.push_back(std::move(job));
    jobs_cv_.notify_one();
    return true;
  }

  /// Handles one request on a worker thread.
  reply handle(const request_view& rq) {
    ++requests_;
    try {
      return route(rq);
    } catch (const std::exception& e) {
      return error_reply(500, errc::unspecified,
                         std::string{"request failed: "} + e.what());
    }
  }

private:
  void io_work() {
    for (;;) {
      try {
        ioc_.run();
        break;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "granary gateway: I/O handler threw: %s\n",
                     e.what());
      }
    }
  }

  void worker() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock guard{jobs_mtx_};
        jobs_cv_.wait(guard, [this] { return jobs_stop_ || !jobs_.empty(); });
        if (jobs_stop_)
          return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  // Sleeps up to `d`; false when the gateway is stopping.
  bool pause(milliseconds d) {
    std::unique_lock guard{jobs_mtx_};
    return !jobs_cv_.wait_for(guard, d, [this] { return jobs_stop_; });
  }

  void accept();

  // -- routing ----------------------------------------------------------------

  reply route(const request_view& rq) {
    std::vector<std::string> seg;
    std::string_view path = rq.path;
    if (path.empty() || path.front() != '/')
      return error_reply(400, errc::invalid_argument, "bad request target");
    size_t pos = 1;
    while (pos <= path.size()) {
      auto next = path.find('/', pos);
      if (next == std::string_view::npos)
        next = path.size();
      std::string part;
      if (!decode_percent(path.substr(pos, next - pos), part))
        return error_reply(400, errc::invalid_argument,
                           "bad percent-encoding in the path");
      seg.push_back(std::move(part));
      pos = next + 1;
      if (seg.size() > 8)
        break;
    }
    if (!seg.empty() && seg.back().empty() && seg.size() > 1)
      seg.pop_back();
    auto method = rq.method;
    auto only = [&](http::verb v) -> std::optional<reply> {
      if (method == v)
        return std::nullopt;
      return error_reply(405, errc::invalid_argument,
                         "use " + std::string{http::to_string(v)} + " "
                             + rq.path);
    };
    if (seg.size() == 1 && seg[0] == "healthz") {
      if (auto r = only(http::verb::get))
        return *r;
      return healthz();
    }
    if (seg.empty() || seg[0] != "v1" || seg.size() < 2)
      return not_found(rq.path);
    auto& area = seg[1];
    if (area == "cluster" && seg.size() == 2) {
      if (auto r = only(http::verb::get))
        return *r;
      return cluster();
    }
    if (area == "workflows") {
      if (seg.size() == 2) {
        if (auto r = only(http::verb::get))
          return *r;
        return list_workflows(rq);
      }
      if (seg.size() > 5)
        return not_found(rq.path);
      if (auto r = bad_name(seg[2], "workflow type"))
        return *r;
      if (seg.size() < 4)
        return error_reply(400, errc::invalid_argument,
                           "the workflow id is empty (paths are "
                           "/v1/workflows/TYPE/ID...)");
      if (auto r = bad_name(seg[3], "workflow id"))
        return *r;
      grain_id id{seg[2], seg[3]};
      if (seg.size() == 4) {
        if (auto r = only(http::verb::get))
          return *r;
        return describe_workflow(id);
      }
      auto& op = seg[4];
      auto get = op == "result" || op == "history";
      if (op != "result" && op != "history" && op != "start" && op != "signal"
          && op != "query" && op != "cancel" && op != "update")
        return not_found(rq.path);
      if (auto r = only(get ? http::verb::get : http::verb::post))
        return *r;
      if (op == "result")
        return result(id, rq);
      if (op == "history")
        return history(id, rq);
      if (op == "start")
        return start(id, rq.body);
      if (op == "signal")
        return signal(id, rq.body);
      if (op == "query")
        return query(id, rq.body);
      if (op == "cancel")
        return cancel(id, rq.body);
      return update(id, rq.body);
    }
    if (area == "grains") {
      if (seg.size() != 5 || (seg[4] != "call" && seg[4] != "send"))
        return not_found(rq.path);
      if (auto r = bad_name(seg[2], "grain type"))
        return *r;
      if (auto r = bad_name(seg[3], "grain key"))
        return *r;
      if (auto r = only(http::verb::post))
        return *r;
      return grain_op(grain_id{seg[2], seg[3]}, seg[4] == "call", rq.body);
    }
    if (area == "dead-letters") {
      if (seg.size() == 2) {
        if (auto r = only(http::verb::get))
          return *r;
        return dead_letters(rq);
      }
      if (seg.size() == 5 || (seg.size() == 6 && seg[5] == "requeue")) {
        auto requeue = seg.size() == 6;
        if (auto r = bad_name(seg[2], "grain type"))
          return *r;
        if (auto r = bad_name(seg[3], "grain key"))
          return *r;
        if (auto r = bad_name(seg[4], "message id"))
          return *r;
        if (auto r = only(requeue ? http::verb::post : http::verb::delete_))
          return *r;
        grain_id id{seg[2], seg[3]};
        // A dead letter lives with its grain, in the owner's storage.
        return at_owner(id, rq, requeue ? "POST" : "DELETE", [&] {
          auto err = requeue ? silo_.requeue_dead_letter(id, seg[4])
                             : silo_.drop_dead_letter(id, seg[4]);
          if (err)
            return error_reply(err);
          return json_reply(
              200, std::string{"{\""} + (requeue ? "requeued" : "dropped")
                       + "\":true,\"msg_id\":" + json_quote(seg[4]) + "}");
        });
      }
      return not_found(rq.path);
    }
    return not_found(rq.path);
  }

  static reply not_found(const std::string& path) {
    return error_reply(404, errc::not_found, "no endpoint " + path);
  }

  // -- endpoints --------------------------------------------------------------

  std::string silo_status() {
    if (auto err = silo_.failure())
      return "failed";
    return stopping_flag_.load() ? "stopping" : "running";
  }

  reply healthz() {
    if (auto err = silo_.failure())
      return error_reply(503, errc::storage_failure,
                         "the silo has fail-stopped: " + describe(err));
    return json_reply(200, "{\"status\":\"ok\",\"silo_id\":"
                               + json_quote(cfg_.silo_id) + "}");
  }

  reply cluster() {
    if (cfg_.cluster_fields)
      return json_reply(200, "{\"cluster_id\":" + json_quote(cfg_.cluster_id)
                                 + ",\"silo_id\":" + json_quote(cfg_.silo_id)
                                 + ",\"status\":" + json_quote(silo_status())
                                 + ",\"partitions\":"
                                 + std::to_string(silo_.partitions()) + ","
                                 + cfg_.cluster_fields() + "}");
    auto self
        = "{\"silo_id\":" + json_quote(cfg_.silo_id)
          + ",\"status\":" + json_quote(silo_status()) + ",\"partitions\":"
          + std::to_string(silo_.partitions()) + ",\"gateway\":"
          + json_quote(cfg_.listen.host + ":" + std::to_string(port_)) + "}";
    return json_reply(200, "{\"cluster_id\":" + json_quote(cfg_.cluster_id)
                               + ",\"silo_id\":" + json_quote(cfg_.silo_id)
                               + ",\"status\":" + json_quote(silo_status())
                               + ",\"partitions\":"
                               + std::to_string(silo_.partitions())
                               + ",\"silos\":[" + self + "]}");
  }

  caf::expected<wire::WorkflowInfo> describe_raw(const grain_id& id) {
    auto res = silo_.call(id, std::make_shared<wire::DescribeWorkflow>(),
                          cfg_.call_timeout);
    if (!res)
      return std::move(res.error());
    auto* info = dynamic_cast<const wire::WorkflowInfo*>(res->get());
    if (!info)
      return make_error(errc::malformed_message,
                        to_string(id) + " did not answer with a WorkflowInfo");
    return *info;
  }

  // Describes `id`; `not_found` when it never started.
  caf::expected<wire::WorkflowInfo> describe_existing(const grain_id& id) {
    auto info = describe_raw(id);
    if (info && info->status() == wire::WorkflowState::NEW)
      return make_error(errc::not_found,
                        "no workflow " + to_string(id) + " (never started)");
    return info;
  }

  static std::string info_json(const grain_id& id,
                               const wire::WorkflowInfo& info,
                               std::optional<bool> done = std::nullopt) {
    std::string out
        = "{\"workflow\":" + json_quote(to_string(id))
          + ",\"type\":" + json_quote(id.type) + ",\"id\":" + json_quote(id.key)
          + ",\"status\":"
          + json_quote(wire::WorkflowState::Status_Name(info.status()))
          + ",\"started\":" + (info.started() ? "true" : "false")
          + ",\"journal_size\":" + std::to_string(info.journal_size())
          + ",\"error\":" + json_quote(info.error());
    if (done)
      out += std::string{",\"finished\":"} + (*done ? "true" : "false");
    out += ",\"output_type\":" + json_quote(info.output_type()) + ",\"output\":"
           + bytes_json(info.output_type(), info.output()) + "}";
    return out;
  }

  reply describe_workflow(const grain_id& id) {
    auto info = describe_existing(id);
    if (!info)
      return error_reply(info.error());
    return json_reply(200, info_json(id, *info));
  }

  caf::expected<milliseconds> wait_of(const request_view& rq,
                                      milliseconds fallback) {
    auto i = rq.query.find("wait_ms");
    if (i == rq.query.end())
      return fallback;
    uint64_t ms = 0;
    auto& t = i->second;
    auto res = std::from_chars(t.data(), t.data() + t.size(), ms);
    if (t.empty() || res.ec != std::errc{} || res.ptr != t.data() + t.size())
      return make_error(errc::invalid_argument,
                        "wait_ms must be a non-negative integer, not '" + t
                            + "'");
    return std::min(milliseconds{static_cast<int64_t>(
                        std::min<uint64_t>(ms, uint64_t{1} << 40))},
                    cfg_.max_wait);
  }

  reply result(const grain_id& id, const request_view& rq) {
    auto wait = wait_of(rq, milliseconds{0});
    if (!wait)
      return error_reply(wait.error());
    auto deadline = steady::now() + *wait;
    milliseconds step{5};
    for (;;) {
      auto info = describe_existing(id);
      if (!info)
        return error_reply(info.error());
      if (finished(info->status()))
        return json_reply(200, info_json(id, *info, true));
      if (steady::now() + step > deadline || !pause(step))
        return json_reply(202, info_json(id, *info, false));
      step = std::min(step * 2, milliseconds{100});
    }
  }

  reply start(const grain_id& id, const std::string& text) {
    body_fields body;
    if (auto err
        = body.parse(text, {"input_type", "input", "reject_if_exists"}))
      return error_reply(err);
    auto type = body.text("input_type", true);
    if (!type)
      return error_reply(type.error());
    auto input_json = body.object("input");
    if (!input_json)
      return error_reply(input_json.error());
    auto reject = body.flag("reject_if_exists");
    if (!reject)
      return error_reply(reject.error());
    auto input = message_from_json("input", *type, *input_json);
    if (!input)
      return error_reply(input.error());
    auto m = std::make_shared<wire::StartWorkflow>();
    m->set_input_type(*type);
    (*input)->SerializeToString(m->mutable_input());
    m->set_reject_if_exists(*reject);
    auto res = silo_.call(id, std::move(m), cfg_.call_timeout);
    if (!res && code_of(res.error()) == errc::timeout)
      // The start message may have been delivered and committed even so.
      return error_reply(
          504, errc::timeout,
          "workflow " + to_string(id) + " did not answer the start within "
              + std::to_string(cfg_.call_timeout.count())
              + " ms, but it may have started anyway. A retry with the same "
                "id is safe: a workflow id starts at most one run (without "
                "reject_if_exists the retry answers the existing run; with "
                "it, 409 already_exists means that this start took effect)");
    if (!res)
      return error_reply(res.error());
    auto* info = dynamic_cast<const wire::WorkflowInfo*>(res->get());
    if (!info)
      return error_reply(500, errc::malformed_message,
                         to_string(id) + " is not a workflow");
    return json_reply(info->started() ? 201 : 200, info_json(id, *info));
  }

  // Checks that `id` is a workflow that has not finished.
  caf::error check_open(const grain_id& id, const std::string& what) {
    auto info = describe_raw(id);
    if (!info)
      return std::move(info.error());
    if (finished(info->status()))
      return make_error(errc::invalid_argument,
                        "workflow " + to_string(id) + " has finished ("
                            + wire::WorkflowState::Status_Name(info->status())
                            + "); " + what + " is not delivered");
    return caf::none;
  }

  caf::error payload_into(const body_fields& body, std::string& type_out,
                          std::string& bytes_out) {
    auto type = body.text("payload_type", false);
    if (!type)
      return std::move(type.error());
    auto payload = body.object("payload");
    if (!payload)
      return std::move(payload.error());
    if (type->empty() && payload->empty())
      return caf::none;
    auto msg = message_from_json("payload", *type, *payload);
    if (!msg)
      return std::move(msg.error());
    type_out = *type;
    (*msg)->SerializeToString(&bytes_out);
    return caf::none;
  }

  reply accepted(const std::string& id) {
    return json_reply(202, "{\"accepted\":true,\"id\":" + json_quote(id) + "}");
  }

  reply signal(const grain_id& id, const std::string& text) {
    body_fields body;
    if (auto err = body.parse(text, {"name", "payload_type", "payload", "id"}))
      return error_reply(err);
    auto name = body.text("name", true);
    auto msg_id = body.text("id", false);
    if (!name || !msg_id)
      return error_reply(!name ? name.error() : msg_id.error());
    if (auto r = bad_id(*msg_id))
      return *r;
    wire::Signal sig;
    sig.set_name(*name);
    if (auto err = payload_into(body, *sig.mutable_payload_type(),
                                *sig.mutable_payload()))
      return error_reply(err);
    if (auto err = check_open(id, "signal '" + *name + "'"))
      return error_reply(err);
    if (auto err = silo_.send(id, sig, *msg_id, cfg_.call_timeout))
      return error_reply(err);
    return accepted(*msg_id);
  }

  caf::expected<wire::QueryResult> query_raw(const grain_id& id,
                                             const std::string& name) {
    auto q = std::make_shared<wire::QueryWorkflow>();
    q->set_name(name);
    auto res = silo_.call(id, std::move(q), cfg_.call_timeout);
    if (!res)
      return std::move(res.error());
    auto* qr = dynamic_cast<const wire::QueryResult*>(res->get());
    if (!qr)
      return make_error(errc::malformed_message,
                        to_string(id) + " did not answer with a QueryResult");
    return *qr;
  }

  static std::string value_json(const wire::QueryResult& qr) {
    return "\"status\":"
           + json_quote(wire::WorkflowState::Status_Name(qr.status()))
           + ",\"type\":" + json_quote(qr.type())
           + ",\"value\":" + bytes_json(qr.type(), qr.data());
  }

  reply query(const grain_id& id, const std::string& text) {
    body_fields body;
    if (auto err = body.parse(text, {"name"}))
      return error_reply(err);
    auto name = body.text("name", true);
    if (!name)
      return error_reply(name.error());
    auto qr = query_raw(id, *name);
    if (!qr)
      return error_reply(qr.error());
    if (qr->status() == wire::WorkflowState::NEW)
      return error_reply(404, errc::not_found,
                         "no workflow " + to_string(id) + " (never started)");
    if (qr->type().empty())
      return error_reply(404, errc::not_found,
                         "workflow " + to_string(id)
                             + " published nothing under '" + *name
                             + "' (yet)");
    return json_reply(200, "{\"name\":" + json_quote(*name) + ","
                               + value_json(*qr) + "}");
  }

  reply cancel(const grain_id& id, const std::string& text) {
    body_fields body;
    if (auto err = body.parse(text, {"reason", "id"}))
      return error_reply(err);
    auto reason = body.text("reason", false);
    auto msg_id = body.text("id", false);
    if (!reason || !msg_id)
      return error_reply(!reason ? reason.error() : msg_id.error());
    if (auto r = bad_id(*msg_id))
      return *r;
    auto info = describe_existing(id);
    if (!info)
      return error_reply(info.error());
    wire::CancelWorkflow m;
    m.set_reason(*reason);
    if (auto err = silo_.send(id, m, *msg_id, cfg_.call_timeout))
      return error_reply(err);
    return accepted(*msg_id);
  }

  std::string fresh_id() {
    std::lock_guard guard{mtx_};
    std::uniform_int_distribution<uint64_t> dist;
    char buf[32];
    std::snprintf(buf, sizeof(buf), "gw-%016llx",
                  static_cast<unsigned long long>(dist(rng_)));
    return buf;
  }

  reply update(const grain_id& id, const std::string& text) {
    body_fields body;
    if (auto err = body.parse(text, {"name", "id", "payload_type", "payload"}))
      return error_reply(err);
    auto name = body.text("name", true);
    auto update_id = body.text("id", false);
    if (!name || !update_id)
      return error_reply(!name ? name.error() : update_id.error());
    if (auto r = bad_id(*update_id))
      return *r;
    if (update_id->empty())
      *update_id = fresh_id();
    wire::Update u;
    u.set_name(*name);
    u.set_id(*update_id);
    if (auto err
        = payload_into(body, *u.mutable_payload_type(), *u.mutable_payload()))
      return error_reply(err);
    auto info = describe_existing(id);
    if (!info)
      return error_reply(info.error());
    if (info->status() != wire::WorkflowState::RUNNING)
      return error_reply(400, errc::invalid_argument,
                         "workflow " + to_string(id) + " is "
                             + wire::WorkflowState::Status_Name(info->status())
                             + "; update '" + *name + "' is not delivered");
    auto deadline = steady::now() + cfg_.call_timeout;
    if (auto err = silo_.send(id, u, "update:" + *update_id, cfg_.call_timeout))
      return error_reply(err);
    milliseconds step{2};
    for (;;) {
      auto qr = query_raw(id, "update:" + *update_id);
      if (!qr)
        return error_reply(qr.error());
      if (!qr->type().empty())
        return json_reply(200, "{\"id\":" + json_quote(*update_id) + ","
                                   + value_json(*qr) + "}");
      if (steady::now() + step > deadline || !pause(step))
        return error_reply(
            504, errc::timeout,
            "workflow " + to_string(id) + " did not answer update '" + *name
                + "' (" + *update_id + ") in time; retry with the same id");
      step = std::min(step * 2, milliseconds{50});
    }
  }

  // The gateway of the silo that owns partition `p`, when it is another
  // silo; empty when this silo serves it (or owns it, as far as it knows).
  std::string remote_gateway(uint32_t p) const {
    return cfg_.remote_gateway ? cfg_.remote_gateway(p) : std::string{};
  }

  // Relays a request for `target` to the gateway at `address`.
  reply forward(const std::string& address, const std::string& target,
                std::string_view method = "GET") {
    auto ep = parse_endpoint(address);
    if (!ep)
      return error_reply(ep.error());
    gateway_client peer{*ep, cfg_.call_timeout};
    auto res = peer.request(method, target);
    if (!res)
      return error_reply(503, errc::partition_unavailable,
                         "the owning silo's gateway at " + address
                             + " did not answer: " + describe(res.error()));
    return reply{res->status, std::move(res->body), res->retry_after_s * 1'000};
  }

  // Serves a request about grain `id` with `here` when this silo owns the
  // grain's partition, or relays it once to the owner's gateway. A relayed
  // request carries `local=1` and is never relayed again, so silos whose
  // views of the map disagree during a handoff cannot pass it around; the
  // first gateway tries again on `not_owner` until `call_timeout`, while
  // the views converge.
  template <class Here>
  reply at_owner(const grain_id& id, const request_view& rq,
                 std::string_view method, Here here) {
    auto p = partition_of(id, silo_.partitions());
    bool relayed = rq.query.count("local") > 0;
    auto target = rq.target
                  + (rq.target.find('?') == std::string::npos ? "?" : "&")
                  + "local=1";
    auto deadline = steady::now() + cfg_.call_timeout;
    constexpr milliseconds step{50};
    // Bounded by the deadline.
    for (;;) {
      auto gw = remote_gateway(p);
      auto r
          = gw.empty() ? here()
            : relayed  ? error_reply(make_error(
                   errc::not_owner, "partition " + std::to_string(p)
                                        + " is not served by this silo; retry"))
                       : forward(gw, target, method);
      if (relayed || r.status != 503
          || r.body.find("\"not_owner\"") == std::string::npos
          || steady::now() + step > deadline || !pause(step))
        return r;
    }
  }

  reply history(const grain_id& id, const request_view& rq) {
    // The journal is read from the owner's storage.
    return at_owner(id, rq, "GET", [&] { return local_history(id); });
  }

  reply local_history(const grain_id& id) {
    auto raw = silo_.read_state(id);
    if (!raw)
      return error_reply(raw.error());
    if (!*raw)
      return error_reply(404, errc::not_found,
                         "no workflow " + to_string(id) + " (no stored state)");
    wire::WorkflowState st;
    if (!st.ParseFromString(**raw))
      return error_reply(400, errc::invalid_argument,
                         "the state of " + to_string(id)
                             + " is not a workflow journal");
    return json_reply(200, to_json(make_history(id, st)));
  }

  caf::expected<size_t> limit_of(const request_view& rq) {
    auto i = rq.query.find("limit");
    if (i == rq.query.end())
      return std::min<size_t>(100, cfg_.max_list);
    size_t n = 0;
    auto& t = i->second;
    auto res = std::from_chars(t.data(), t.data() + t.size(), n);
    if (t.empty() || res.ec != std::errc{} || res.ptr != t.data() + t.size()
        || n == 0 || n > cfg_.max_list)
      return make_error(errc::invalid_argument,
                        "limit must be in [1, " + std::to_string(cfg_.max_list)
                            + "], not '" + t + "'");
    return n;
  }

  reply list_workflows(const request_view& rq) {
    auto ti = rq.query.find("type");
    if (ti == rq.query.end() || ti->second.empty())
      return error_reply(400, errc::invalid_argument,
                         "list needs ?type=WORKFLOW_TYPE");
    auto& type = ti->second;
    if (auto r = bad_name(type, "workflow type"))
      return *r;
    std::optional<wire::WorkflowState::Status> want;
    if (auto si = rq.query.find("status"); si != rq.query.end()) {
      wire::WorkflowState::Status s;
      if (!wire::WorkflowState::Status_Parse(si->second, &s))
        return error_reply(400, errc::invalid_argument,
                           "unknown status '" + si->second
                               + "' (expected NEW, RUNNING, COMPLETED, FAILED "
                                 "or SUSPENDED)");
      want = s;
    }
    auto limit = limit_of(rq);
    if (!limit)
      return error_reply(limit.error());
    std::string cursor;
    if (auto ci = rq.query.find("cursor"); ci != rq.query.end()) {
      auto raw = hex_decode(ci->second);
      if (!raw)
        return error_reply(400, errc::invalid_argument, "bad cursor");
      cursor = std::move(*raw);
    }
    // Partitions are listed in order. In a cluster, each run of partitions
    // that another silo owns is listed by that silo's gateway (with
    // `local` set, so that it does not forward again, and `until` the end
    // of the run); this silo scans its own storage for the others.
    auto count = silo_.partitions();
    bool local_only = rq.query.count("local") > 0;
    uint32_t until = count;
    if (auto ui = rq.query.find("until"); ui != rq.query.end()) {
      auto res = std::from_chars(ui->second.data(),
                                 ui->second.data() + ui->second.size(), until);
      if (res.ec != std::errc{} || until > count)
        return error_reply(400, errc::invalid_argument, "bad until");
    }
    // A cursor at the start of partition q for this type.
    auto start_of = [&](uint32_t q) {
      return keys::grain_prefix(q, grain_id{type, {}});
    };
    // Where the listing goes on after partition `q - 1`; empty at the end.
    auto after
        = [&](uint32_t q) { return q < until ? start_of(q) : std::string{}; };
    auto partition_at = [](const std::string& key) {
      return keys::read_partition(key).value_or(0);
    };
    std::string items;
    size_t found = 0;
    size_t scanned = 0;
    // Gateways that did not answer, with the partitions they own.
    std::map<std::string, std::set<uint32_t>> unreachable;
    auto page_size = std::max<size_t>(*limit, 64);
    bool done = false;
    // Bounded: every pass moves the cursor to a later partition or fills
    // the page, and at most max_scanned records are read here.
    for (uint32_t pass = 0; pass <= count && !done; ++pass) {
      auto p = partition_at(cursor);
      if (p >= until)
        break;
      auto gw = local_only ? std::string{} : remote_gateway(p);
      auto end = p + 1;
      while (end < until
             && (local_only ? std::string{} : remote_gateway(end)) == gw)
        ++end;
      if (!gw.empty()) {
        auto target
            = "/v1/workflows?type=" + percent_encode(type)
              + (want ? "&status=" + wire::WorkflowState::Status_Name(*want)
                      : std::string{})
              + "&limit=" + std::to_string(*limit - found)
              + "&cursor=" + hex_encode(cursor.empty() ? start_of(p) : cursor)
              + "&local=1&until=" + std::to_string(end);
        // A gateway that did not answer is not asked again in this request
        // (its other runs of partitions would each wait for a timeout).
        auto r = unreachable.count(gw) > 0 ? reply{503, {}, 0}
                                           : forward(gw, target);
        if (r.status >= 500) {
          // That silo is down (or its gateway busy): list what the others
          // have and name what is missing, so that a partial list is never
          // mistaken for all.
          auto& run = unreachable[gw];
          for (auto q = p; q < end; ++q)
            run.insert(q);
          cursor = after(end);
          if (cursor.empty())
            break;
          continue;
        }
        if (r.status != 200)
          return r;
        google::protobuf::Struct obj;
        if (!pb::util::JsonStringToMessage(r.body, &obj).ok())
          return error_reply(502, errc::malformed_message,
                             "the gateway at " + gw
                                 + " answered a list that is not JSON");
        auto& f = obj.fields();
        auto wi = f.find("workflows");
        auto ci = f.find("next_cursor");
        size_t n = wi == f.end() ? 0 : wi->second.list_value().values_size();
        // The items' text as the other gateway wrote it: from the list's
        // '[' to its matching ']' (other arrays follow it).
        auto open = r.body.find('[');
        auto close = open == std::string::npos ? open : matching(r.body, open);
        if (n > 0 && close != std::string::npos) {
          items += (found == 0 ? "" : ",");
          items += r.body.substr(open + 1, close - open - 1);
        }
        found += n;
        auto next = ci == f.end() ? std::string{}
                                  : hex_decode(ci->second.string_value())
                                        .value_or(std::string{});
        // A cursor back means the other silo filled the page.
        cursor = !next.empty() ? next : after(end);
        if (found >= *limit || cursor.empty())
          break;
        continue;
      }
      if (cursor.empty())
        cursor = start_of(p);
      auto page = silo_.scan_states(type, cursor, page_size);
      if (!page)
        return error_reply(page.error());
      cursor = page->cursor;
      auto& states = page->states;
      for (size_t i = 0; i < states.size(); ++i) {
        ++scanned;
        if (partition_of(states[i].id, count) >= end) {
          // The run of local partitions ends here.
          cursor = after(end);
          break;
        }
        wire::WorkflowState st;
        if (!st.ParseFromString(states[i].bytes)
            || (want && st.status() != *want))
          continue;
        items += (found == 0 ? "" : ",");
        items += "{\"workflow\":" + json_quote(to_string(states[i].id))
                 + ",\"id\":" + json_quote(states[i].id.key) + ",\"status\":"
                 + json_quote(wire::WorkflowState::Status_Name(st.status()))
                 + ",\"run\":" + std::to_string(st.run())
                 + ",\"journal_size\":" + std::to_string(st.journal_size())
                 + ",\"error\":" + json_quote(st.error()) + "}";
        if (++found == *limit) {
          // Resume right after this record.
          cursor
              = i + 1 < states.size() ? keys::grain_prefix(
                    partition_of(states[i + 1].id, count), states[i + 1].id)
                                      : (cursor.empty() ? after(end) : cursor);
          break;
        }
      }
      if (cursor.empty())
        cursor = after(end); // Local storage has nothing further.
      if (found == *limit || scanned >= max_scanned || cursor.empty())
        break;
    }
    if (local_only && !cursor.empty() && partition_at(cursor) >= until)
      cursor.clear();
    std::string missing;
    for (auto& [gw, parts] : unreachable) {
      std::string list;
      for (auto q : parts)
        list += (list.empty() ? "" : ",") + std::to_string(q);
      missing += (missing.empty() ? "" : ",");
      missing += "{\"gateway\":" + json_quote(gw) + ",\"partitions\":[" + list
                 + "]}";
    }
    return json_reply(200, "{\"workflows\":[" + items + "],\"next_cursor\":"
                               + json_quote(hex_encode(cursor))
                               + ",\"unreachable\":[" + missing + "]}");
  }

  reply grain_op(const grain_id& id, bool call, const std::string& text) {
    body_fields body;
    std::initializer_list<std::string_view> call_fields{"type", "message"};
    std::initializer_list<std::string_view> send_fields{"type", "message",
                                                        "id"};
    if (auto err = body.parse(text, call ? call_fields : send_fields))
      return error_reply(err);
    auto type = body.text("type", true);
    if (!type)
      return error_reply(type.error());
    auto json = body.object("message");
    if (!json)
      return error_reply(json.error());
    auto msg = message_from_json("message", *type, *json);
    if (!msg)
      return error_reply(msg.error());
    if (!call) {
      auto msg_id = body.text("id", false);
      if (!msg_id)
        return error_reply(msg_id.error());
      if (auto r = bad_id(*msg_id))
        return *r;
      if (auto err = silo_.send(id, **msg, *msg_id, cfg_.call_timeout))
        return error_reply(err);
      return accepted(*msg_id);
    }
    auto res = silo_.call(id, message_ptr{std::move(*msg)}, cfg_.call_timeout);
    if (!res)
      return error_reply(res.error());
    if (!*res)
      return json_reply(200, "{\"type\":\"\",\"message\":null}");
    return json_reply(
        200, "{\"type\":" + json_quote((*res)->GetDescriptor()->full_name())
                 + ",\"message\":" + message_json(**res) + "}");
  }

  static std::string dead_letter_json(const dead_letter_info& dl) {
    return "{\"type\":" + json_quote(dl.target.type) + ",\"key\":"
           + json_quote(dl.target.key) + ",\"msg_id\":" + json_quote(dl.msg_id)
           + ",\"payload_type\":" + json_quote(dl.payload_type)
           + ",\"attempts\":" + std::to_string(dl.attempts)
           + ",\"dead_ms\":" + std::to_string(dl.dead_ms)
           + ",\"error\":" + json_quote(dl.error) + "}";
  }

  // This silo's dead letters, then those of every other silo that owns a
  // partition (each dead letter lives in its grain's partition), up to
  // `limit`. A silo whose gateway does not answer is named in
  // `unreachable`, so that a partial list is never mistaken for all.
  reply dead_letters(const request_view& rq) {
    auto limit = limit_of(rq);
    if (!limit)
      return error_reply(limit.error());
    auto letters = silo_.dead_letters(*limit);
    if (!letters)
      return error_reply(letters.error());
    std::string items;
    size_t found = 0;
    auto add = [&](const dead_letter_info& dl) {
      items += (found++ == 0 ? "" : ",");
      items += dead_letter_json(dl);
    };
    for (auto& dl : *letters)
      add(dl);
    std::string unreachable;
    if (rq.query.count("local") == 0) {
      std::set<std::string> others;
      for (uint32_t p = 0; p < silo_.partitions(); ++p)
        if (auto gw = remote_gateway(p); !gw.empty())
          others.insert(std::move(gw));
      for (auto& gw : others) {
        if (found >= *limit)
          break;
        auto r = forward(gw, "/v1/dead-letters?local=1&limit="
                                 + std::to_string(*limit - found));
        auto page = r.status == 200
                        ? parse_dead_letters(r.body)
                        : caf::expected<dead_letter_page>{
                            make_error(errc::partition_unavailable, "")};
        if (!page) {
          unreachable += (unreachable.empty() ? "" : ",") + json_quote(gw);
          continue;
        }
        for (auto& dl : page->letters) {
          if (found >= *limit)
            break;
          add(dl);
        }
      }
    }
    return json_reply(200, "{\"dead_letters\":[" + items
                               + "],\"limit_reached\":"
                               + (found >= *limit ? "true" : "false")
                               + ",\"unreachable\":[" + unreachable + "]}");
  }

  const gateway_config cfg_;
  silo& silo_;
  uint16_t port_ = 0;
  std::atomic<uint64_t> requests_{0};
  std::atomic<bool> stopping_flag_{false};

  mutable std::mutex mtx_;
  gateway_stats stats_;
  std::map<const session*, std::weak_ptr<session>> sessions_;
  bool stopping_ = false;
  size_t rejecting_ = 0;
  std::mt19937_64 rng_{std::random_device{}()};

  std::mutex jobs_mtx_;
  std::condition_variable jobs_cv_;
  std::deque<std::function<void()>> jobs_;
  bool jobs_stop_ = false;
  std::vector<std::thread> workers_;

  // Destroyed first: its pending handlers own sessions, whose destructors
  // use the members above.
  asio::io_context ioc_{static_cast<int>(cfg_.threads)};
  asio::executor_work_guard<asio::io_context::executor_type> work_{
      ioc_.get_executor()};
  tcp::acceptor acceptor_{asio::make_strand(ioc_)};
  asio::steady_timer accept_retry_{acceptor_.get_executor()};
  std::vector<std::thread> io_threads_;
};

/// One connection: reads a request, hands it to a worker, writes the
/// answer, and reads the next (no pipelining). The header of each request
/// must arrive within `header_timeout` (counted from the connection's
/// opening for the first request, from the first byte for the others), so
/// that slow clients cannot hold connection slots for long.
class session : public std::enable_shared_from_this<session> {
public:
  session(gateway_state& st, tcp::socket sock)
      : st_(st)
      , stream_(std::move(sock))
      , header_timer_(stream_.get_executor())
      // Room for the largest header and then some, so that the parser's
      // header limit (not the buffer) decides, with the configured bytes.
      , buf_(st.config().max_header_bytes + 4096) {}

  ~session() {
    if (rejected_)
      st_.end_rejection();
    else
      st_.remove_session(this);
  }

  void start() {
    asio::dispatch(stream_.get_executor(),
                   [self = shared_from_this()] { self->read(); });
  }

  /// Answers 503 at once (the gateway has `max_connections` open) and
  /// closes the connection.
  void reject() {
    rejected_ = true;
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] {
      auto& cfg = self->st_.config();
      self->answer(
          error_reply(503, errc::overloaded,
                      "the gateway has " + std::to_string(cfg.max_connections)
                          + " connections open (max_connections); retry "
                            "after 1000 ms",
                      1'000),
          false);
    });
  }

  /// Closes the connection; pending operations end aborted.
  void abort() {
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] {
      self->closing_ = true;
      self->header_timer_.cancel();
      beast::error_code ec;
      self->stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
      self->stream_.close();
    });
  }

  /// Sends `r` from any thread.
  void post_answer(reply r) {
    asio::post(stream_.get_executor(),
               [self = shared_from_this(), r = std::move(r)]() mutable {
                 if (!self->closing_)
                   self->answer(std::move(r), self->keep_alive_);
               });
  }

private:
  void read() {
    if (closing_)
      return;
    if (served_ == 0 || buf_.size() > 0) {
      read_header();
      return;
    }
    // Between requests: the next one may take up to idle_timeout to begin;
    // its header deadline runs from its first byte.
    stream_.expires_after(st_.config().idle_timeout);
    stream_.async_read_some(
        buf_.prepare(1024),
        [self = shared_from_this()](beast::error_code ec, size_t n) {
          if (self->closing_ || ec == asio::error::operation_aborted)
            return;
          if (ec) {
            self->drop();
            return;
          }
          self->buf_.commit(n);
          self->read_header();
        });
  }

  void read_header() {
    auto& cfg = st_.config();
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
    http::async_read_header(
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
      st_.count_header_timeout();
      answer(
          error_reply(408, errc::timeout,
                      "the request header did not arrive within "
                          + std::to_string(st_.config().header_timeout.count())
                          + " ms"),
          false);
      return;
    }
    if (ec) {
      on_read(ec);
      return;
    }
    if (parser_->is_done()) {
      on_read({});
      return;
    }
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
      answer(error_reply(413, errc::payload_too_large,
                         "request body exceeds "
                             + std::to_string(st_.config().max_body_bytes)
                             + " bytes"),
             false);
      return;
    }
    if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
      answer(error_reply(431, errc::payload_too_large,
                         "request header exceeds "
                             + std::to_string(st_.config().max_header_bytes)
                             + " bytes"),
             false);
      return;
    }
    if (ec
        && (ec == http::error::end_of_stream
            || ec == http::error::partial_message
            || ec.category()
                   != http::make_error_code(http::error::end_of_stream)
                          .category())) {
      drop();
      return;
    }
    if (ec) {
      answer(error_reply(400, errc::invalid_argument,
                         "malformed HTTP: " + ec.message()),
             false);
      return;
    }
    auto& msg = parser_->get();
    keep_alive_ = msg.keep_alive();
    request_view rq;
    rq.method = msg.method();
    std::string_view target{msg.target().data(), msg.target().size()};
    auto q = target.find('?');
    rq.target = std::string{target};
    rq.path = std::string{target.substr(0, q)};
    if (q != std::string_view::npos) {
      auto query = target.substr(q + 1);
      size_t n = 0;
      while (!query.empty() && ++n <= 32) {
        auto amp = query.find('&');
        auto pair = query.substr(0, amp);
        auto eq = pair.find('=');
        std::string k;
        std::string v;
        if (!decode_percent(pair.substr(0, eq), k)
            || (eq != std::string_view::npos
                && !decode_percent(pair.substr(eq + 1), v))) {
          answer(error_reply(400, errc::invalid_argument,
                             "bad percent-encoding in the query"),
                 keep_alive_);
          return;
        }
        rq.query[std::move(k)] = std::move(v);
        query = amp == std::string_view::npos ? std::string_view{}
                                              : query.substr(amp + 1);
      }
    }
    rq.body = std::move(msg.body());
    stream_.expires_never();
    auto self = shared_from_this();
    auto queued = st_.submit([self, rq = std::move(rq)] {
      self->post_answer(self->st_.handle(rq));
    });
    if (!queued)
      answer(error_reply(429, errc::overloaded,
                         "the gateway has too many requests queued; retry "
                         "after 1000 ms",
                         1'000),
             keep_alive_);
  }

  void answer(reply r, bool keep_alive) {
    ++served_;
    res_ = {};
    res_.version(11);
    res_.result(r.status);
    res_.set(http::field::server, "granary");
    res_.set(http::field::content_type, "application/json");
    if (r.retry_after_ms > 0)
      res_.set(http::field::retry_after,
               std::to_string((r.retry_after_ms + 999) / 1000));
    res_.keep_alive(keep_alive);
    res_.body() = std::move(r.body);
    res_.body() += "\n";
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

  gateway_state& st_;
  beast::tcp_stream stream_;
  asio::steady_timer header_timer_;
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> res_;
  bool keep_alive_ = false;
  bool closing_ = false;
  bool rejected_ = false;
  bool in_header_ = false;
  bool header_timed_out_ = false;
  uint64_t served_ = 0;
  size_t drained_ = 0;
  std::array<char, 4096> scratch_;
};

void gateway_state::accept() {
  acceptor_.async_accept(
      asio::make_strand(ioc_), [this](beast::error_code ec, tcp::socket sock) {
        if (ec == asio::error::operation_aborted || stopping_flag_)
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
        switch (add_session(s)) {
          case admission::serve:
            s->start();
            break;
          case admission::reject:
            s->reject();
            break;
          case admission::close:
            s->abort();
            break;
        }
        accept();
      });
}

void gateway_state::stop() {
  std::vector<std::shared_ptr<session>> open;
  {
    std::lock_guard guard{mtx_};
    if (stopping_)
      return;
    stopping_ = true;
    stopping_flag_ = true;
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
  // Workers finish their current request (each bounded by its deadline;
  // waits end early); queued requests are dropped with their sessions.
  {
    std::lock_guard guard{jobs_mtx_};
    jobs_stop_ = true;
    jobs_cv_.notify_all();
  }
  for (auto& t : workers_)
    t.join();
  workers_.clear();
  jobs_.clear();
  work_.reset();
  // Aborted operations end quickly; bound the wait, then stop the loop.
  auto deadline = steady::now() + std::chrono::seconds{2};
  while (!ioc_.stopped() && steady::now() < deadline)
    std::this_thread::sleep_for(milliseconds{5});
  ioc_.stop();
  for (auto& t : io_threads_)
    t.join();
  io_threads_.clear();
}

} // namespace detail

caf::expected<std::unique_ptr<gateway>> gateway::start(gateway_config cfg,
                                                       silo& s) {
  if (auto err = cfg.validate())
    return err;
  auto st = std::make_unique<detail::gateway_state>(std::move(cfg), s);
  if (auto err = st->listen())
    return err;
  st->run();
  return std::unique_ptr<gateway>{new gateway(std::move(st))};
}

gateway::gateway(std::unique_ptr<detail::gateway_state> state)
    : state_(std::move(state)) {}

gateway::~gateway() {
  stop();
}

uint16_t gateway::port() const {
  return state_->port();
}

std::string gateway::address() const {
  return state_->config().listen.host + ":" + std::to_string(state_->port());
}

gateway_stats gateway::stats() const {
  return state_->stats();
}

void gateway::stop() {
  state_->stop();
}

} // namespace granary::cluster

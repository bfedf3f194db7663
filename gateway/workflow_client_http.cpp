#include "gateway/workflow_client_http.hpp"

#include <algorithm>
#include <thread>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

namespace granary::cluster {

namespace pb = google::protobuf;

namespace {

caf::expected<std::string> to_json(const pb::Message& msg) {
  pb::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  std::string out;
  auto st = pb::util::MessageToJsonString(msg, &out, opts);
  if (!st.ok())
    return make_error(errc::malformed_message,
                      "cannot render " + msg.GetDescriptor()->full_name()
                          + " as JSON: " + st.ToString());
  return out;
}

// Parses `json` into `out`; fields this client does not know (a newer
// gateway's) are skipped.
caf::error from_json(const std::string& json, pb::Message& out,
                     const std::string& what) {
  pb::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = true;
  auto st = pb::util::JsonStringToMessage(json, &out, opts);
  if (!st.ok())
    return make_error(errc::malformed_message,
                      what + " is not a " + out.GetDescriptor()->full_name()
                          + " in JSON: " + st.ToString());
  return caf::none;
}

} // namespace

http_workflow_client::http_workflow_client(endpoint server,
                                           milliseconds request_timeout)
    : gateway_(std::move(server), request_timeout)
    , request_timeout_(request_timeout) {}

http_workflow_client::~http_workflow_client() = default;

caf::error http_workflow_client::call(const grain_id& id,
                                      const pb::Message& request,
                                      pb::Message& reply) {
  auto json = to_json(request);
  if (!json)
    return std::move(json.error());
  auto body = gateway_.call_grain(id.type, id.key,
                                  request.GetDescriptor()->full_name(), *json);
  if (!body)
    return std::move(body.error());
  // The answer is {"type": <reply type>, "message": <reply as JSON>}.
  auto what = "the gateway's answer to " + request.GetDescriptor()->full_name()
              + " for " + to_string(id);
  pb::Struct answer;
  if (auto err = from_json(*body, answer, what))
    return err;
  auto& fields = answer.fields();
  auto type = fields.find("type");
  auto message = fields.find("message");
  if (type == fields.end() || message == fields.end()
      || type->second.string_value() != reply.GetDescriptor()->full_name())
    return make_error(errc::malformed_message,
                      what + " is not a " + reply.GetDescriptor()->full_name()
                          + ": is it a workflow?");
  auto inner = to_json(message->second);
  if (!inner)
    return std::move(inner.error());
  return from_json(*inner, reply, what);
}

caf::error http_workflow_client::send(const grain_id& id,
                                      const pb::Message& msg,
                                      const std::string& msg_id) {
  auto json = to_json(msg);
  if (!json)
    return std::move(json.error());
  auto body = gateway_.send_grain(
      id.type, id.key, msg.GetDescriptor()->full_name(), *json, msg_id);
  if (!body)
    return std::move(body.error());
  return caf::none;
}

caf::expected<wire::WorkflowInfo>
http_workflow_client::await_finished(const grain_id& id,
                                     clock::time_point deadline) {
  // The gateway waits; a round ends at the deadline, at the gateway's own
  // bound (max_wait_ms), or halfway to this client's request timeout.
  // Bounded by the deadline; a round the gateway cut short is followed by
  // a pause that grows to 100 ms.
  milliseconds pause{2};
  for (;;) {
    auto now = clock::now();
    auto wait
        = std::clamp(std::chrono::duration_cast<milliseconds>(deadline - now),
                     milliseconds{0}, request_timeout_ / 2);
    bool done = false;
    auto res = gateway_.workflow_result(id.type, id.key, wait, &done);
    if (!res)
      return std::move(res.error());
    if (done || clock::now() >= deadline)
      return describe_started(id);
    if (clock::now() >= now + wait)
      continue; // A full round: the next one at once.
    std::this_thread::sleep_until(std::min(deadline, clock::now() + pause));
    pause = std::min(pause * 2, milliseconds{100});
  }
}

} // namespace granary::cluster

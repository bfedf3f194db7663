#include "actors/workflow_client.hpp"
#include "runtime/assert.hpp"
#include "runtime/sys.hpp"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <memory>
#include <string_view>
#include <thread>

namespace granary {

namespace {

// Wall-clock milliseconds as ISO 8601 UTC, e.g. 2025-01-01T10:00:05.000Z.
std::string utc_ms(int64_t ms) {
  auto secs = static_cast<std::time_t>(ms / 1'000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  auto n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof(buf) - n, ".%03dZ",
                static_cast<int>(ms % 1'000));
  return buf;
}

// The code of a failed run: recorded, or (in records from before it was)
// the name its error text starts with.
errc failure_code(const wire::WorkflowInfo& info) {
  if (info.error_code() != 0)
    return static_cast<errc>(info.error_code());
  std::string_view text = info.error();
  auto code = errc_from_name(text.substr(0, text.find(": ")));
  return code ? *code : errc::unspecified;
}

wire::Value value_of(const std::string& type, const std::string& data) {
  wire::Value out;
  out.set_type(type);
  out.set_data(data);
  return out;
}

} // namespace

std::string to_string(const wire::WaitingOn& w) {
  auto seq = " (seq " + std::to_string(w.seq()) + ")";
  auto timeout = [&] {
    return w.due_ms() > 0 ? ", times out at " + utc_ms(w.due_ms())
                          : std::string{", no timeout"};
  };
  switch (w.kind()) {
    case wire::WaitingOn::TIMER:
      return "timer of " + w.target() + " ms" + seq
             + (w.due_ms() > 0 ? " until " + utc_ms(w.due_ms()) : "");
    case wire::WaitingOn::SIGNAL:
      return "signal '" + w.target() + "'" + seq + timeout();
    case wire::WaitingOn::UPDATE:
      return "update '" + w.target() + "'" + seq + timeout();
    case wire::WaitingOn::CHILD:
      return "child workflow " + w.target() + seq;
    case wire::WaitingOn::ACTIVITY: {
      auto out = "activity '" + w.target() + "'" + seq + ": attempt "
                 + std::to_string(w.attempt()) + " of "
                 + std::to_string(w.max_attempts());
      if (w.running())
        out += w.due_ms() > 0 ? " runs until " + utc_ms(w.due_ms())
                              : std::string{" runs"};
      else
        out += w.due_ms() > 0 ? " starts at " + utc_ms(w.due_ms())
                              : std::string{" waits to start"};
      if (!w.last_error().empty())
        out += "; last error: " + w.last_error();
      return out;
    }
    case wire::WaitingOn::CALL:
    default:
      return "call to " + w.target() + " (" + w.payload_type() + ")" + seq;
  }
}

std::string describe_waiting(const wire::WorkflowInfo& info) {
  std::string out;
  for (auto& w : info.waiting())
    out += (out.empty() ? "" : "; ") + to_string(w);
  if (info.waiting_count() > static_cast<uint64_t>(info.waiting_size()))
    out += "; and " + std::to_string(info.waiting_count() - info.waiting_size())
           + " more";
  return out;
}

workflow_client::~workflow_client() = default;

bool workflow_client::finished(wire::WorkflowState::Status status) {
  return status == wire::WorkflowState::COMPLETED
         || status == wire::WorkflowState::FAILED;
}

caf::expected<wire::WorkflowInfo>
workflow_client::describe_started(const grain_id& id) {
  wire::WorkflowInfo info;
  if (auto err = call(id, wire::DescribeWorkflow{}, info))
    return err;
  if (info.status() == wire::WorkflowState::NEW)
    return make_error(errc::not_found,
                      "no workflow " + to_string(id) + " (never started)");
  return info;
}

caf::expected<wire::WorkflowInfo>
workflow_client::start(const std::string& type, const std::string& id,
                       const google::protobuf::Message& input,
                       const start_options& opts) {
  grain_id gid{type, id};
  wire::StartWorkflow m;
  m.set_input_type(input.GetDescriptor()->full_name());
  input.SerializeToString(m.mutable_input());
  m.set_reject_if_exists(opts.reject_if_exists);
  wire::WorkflowInfo info;
  auto err = call(gid, m, info);
  if (err && code_of(err) == errc::timeout)
    // The start may have been delivered and committed even so.
    return make_error(errc::timeout,
                      "workflow " + to_string(gid)
                          + " did not answer the start in time, but it may "
                            "have started anyway. A retry with the same id "
                            "is safe: an id starts at most one run ("
                          + granary::describe(err) + ")");
  if (err)
    return err;
  return info;
}

caf::expected<wire::WorkflowInfo>
workflow_client::describe(const std::string& type, const std::string& id) {
  return describe_started(grain_id{type, id});
}

caf::expected<wire::Value> workflow_client::result_value(const grain_id& id,
                                                         milliseconds timeout) {
  auto info = await_finished(id, sys::now() + timeout);
  if (!info)
    return std::move(info.error());
  if (info->status() == wire::WorkflowState::COMPLETED)
    return value_of(info->output_type(), info->output());
  if (info->status() == wire::WorkflowState::FAILED)
    return make_error(failure_code(*info), info->error());
  auto msg = "workflow " + to_string(id) + " did not finish within "
             + std::to_string(timeout.count()) + " ms (it is "
             + wire::WorkflowState::Status_Name(info->status());
  if (info->status() == wire::WorkflowState::SUSPENDED)
    msg += ": " + info->error();
  msg += ")";
  if (info->waiting_count() > 0)
    msg += "; it waits on " + describe_waiting(*info);
  return make_error(errc::timeout, std::move(msg));
}

caf::error workflow_client::signal(const std::string& type,
                                   const std::string& id,
                                   const std::string& name,
                                   const google::protobuf::Message& payload,
                                   const std::string& signal_id) {
  grain_id gid{type, id};
  wire::WorkflowInfo info;
  if (auto err = call(gid, wire::DescribeWorkflow{}, info))
    return err;
  if (finished(info.status()))
    return make_error(errc::invalid_argument,
                      "workflow " + to_string(gid) + " has finished ("
                          + wire::WorkflowState::Status_Name(info.status())
                          + "); signal '" + name + "' is not delivered");
  return send(gid, make_signal(name, payload), signal_id);
}

caf::expected<wire::Value>
workflow_client::query_value(const grain_id& id, const std::string& name) {
  wire::QueryWorkflow q;
  q.set_name(name);
  wire::QueryResult qr;
  if (auto err = call(id, q, qr))
    return err;
  if (qr.status() == wire::WorkflowState::NEW)
    return make_error(errc::not_found,
                      "no workflow " + to_string(id) + " (never started)");
  if (qr.type().empty())
    return make_error(errc::not_found, "workflow " + to_string(id)
                                           + " published nothing under '" + name
                                           + "' (yet)");
  return value_of(qr.type(), qr.data());
}

caf::expected<wire::Value>
workflow_client::update_value(const grain_id& id, const std::string& name,
                              const google::protobuf::Message& request,
                              milliseconds timeout,
                              const std::string& update_id) {
  auto deadline = sys::now() + timeout;
  auto info = describe_started(id);
  if (!info)
    return std::move(info.error());
  auto uid = update_id.empty() ? fresh_update_id() : update_id;
  auto what = "update '" + name + "' (" + uid + ")";
  if (info->status() != wire::WorkflowState::RUNNING)
    return make_error(errc::invalid_argument,
                      "workflow " + to_string(id) + " is "
                          + wire::WorkflowState::Status_Name(info->status())
                          + "; " + what + " is not delivered");
  if (auto err = send(id, make_update(name, uid, request), "update:" + uid))
    return err;
  wire::QueryWorkflow q;
  q.set_name("update:" + uid);
  // Bounded by the deadline; the pause grows to 50 ms.
  milliseconds pause{2};
  for (;;) {
    wire::QueryResult qr;
    if (auto err = call(id, q, qr))
      return err;
    if (!qr.type().empty())
      return value_of(qr.type(), qr.data());
    if (finished(qr.status()))
      return make_error(errc::invalid_argument,
                        "workflow " + to_string(id) + " finished ("
                            + wire::WorkflowState::Status_Name(qr.status())
                            + ") without answering " + what);
    if (sys::now() + pause > deadline)
      return make_error(errc::timeout,
                        "workflow " + to_string(id) + " did not answer " + what
                            + " within " + std::to_string(timeout.count())
                            + " ms; retry with the same update id");
    sys::sleep_for(pause);
    pause = std::min(pause * 2, milliseconds{50});
  }
}

caf::error workflow_client::cancel(const std::string& type,
                                   const std::string& id,
                                   const std::string& reason,
                                   const std::string& cancel_id) {
  grain_id gid{type, id};
  if (auto info = describe_started(gid); !info)
    return std::move(info.error());
  wire::CancelWorkflow m;
  m.set_reason(reason);
  return send(gid, m, cancel_id);
}

caf::error workflow_client::parse_into(const grain_id& id,
                                       const wire::Value& value,
                                       google::protobuf::Message& out,
                                       const std::string& what) {
  auto expected = out.GetDescriptor()->full_name();
  if (value.type() != expected || !out.ParseFromString(value.data()))
    return make_error(errc::malformed_message,
                      "the " + what + " of workflow " + to_string(id) + " is a "
                          + value.type() + ", not " + std::string{expected});
  return caf::none;
}

std::string workflow_client::fresh_update_id() {
  std::lock_guard guard{rng_mtx_};
  if (!rng_)
    rng_.emplace(sys::random_u64());
  char buf[32];
  std::snprintf(buf, sizeof(buf), "u-%016llx",
                static_cast<unsigned long long>((*rng_)()));
  return buf;
}

// -- in process ---------------------------------------------------------------

silo_workflow_client::silo_workflow_client(silo& s, milliseconds call_timeout)
    : silo_(s)
    , call_timeout_(call_timeout) {}

caf::error silo_workflow_client::call(const grain_id& id,
                                      const google::protobuf::Message& request,
                                      google::protobuf::Message& reply) {
  std::shared_ptr<google::protobuf::Message> msg{request.New()};
  msg->CopyFrom(request);
  auto res = silo_.call(id, std::move(msg), call_timeout_);
  if (!res)
    return std::move(res.error());
  if (!*res || (*res)->GetDescriptor() != reply.GetDescriptor())
    return make_error(errc::malformed_message,
                      to_string(id) + " did not answer "
                          + request.GetDescriptor()->full_name() + " with a "
                          + reply.GetDescriptor()->full_name()
                          + ": is it a workflow?");
  reply.CopyFrom(**res);
  return caf::none;
}

caf::error silo_workflow_client::send(const grain_id& id,
                                      const google::protobuf::Message& msg,
                                      const std::string& msg_id) {
  return silo_.send(id, msg, msg_id, call_timeout_);
}

caf::expected<wire::WorkflowInfo>
silo_workflow_client::await_finished(const grain_id& id,
                                     clock::time_point deadline) {
  // Subscribed before the first read, so that a run finishing in between
  // still wakes this wait.
  auto sub = [&] {
    auto* w = silo_.services().find<workflow_watch>();
    return w ? w->watch(id) : workflow_watch::subscription{};
  }();
  // Bounded by the deadline; the pause grows to 100 ms, and a settling on
  // this silo cuts it short.
  milliseconds pause{2};
  for (;;) {
    auto info = describe_started(id);
    if (!info || finished(info->status()) || sys::now() >= deadline)
      return info;
    auto until = std::min(deadline, sys::now() + pause);
    if (sub)
      sub.wait_until(until);
    else
      sys::sleep_until(until);
    pause = std::min(pause * 2, sub ? max_poll_ : milliseconds{100});
  }
}

void silo_workflow_client::set_max_poll(milliseconds pause) {
  GRANARY_ASSERT(pause.count() > 0, "a poll pause must be positive");
  max_poll_ = pause;
}

} // namespace granary

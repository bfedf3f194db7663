// turn: what a handler records besides its state change (sends, calls,
// answers, timers, tells) and the checks on it. The partition applies the
// records once the handler returns (partition_turns.cpp).

#include "runtime/turn.hpp"

#include <chrono>
#include <optional>
#include <string>

#include <google/protobuf/message.h>

#include "runtime/error.hpp"
#include "runtime/partition.hpp"
#include "runtime/partition_internal.hpp"
#include "runtime/silo_core.hpp"

namespace granary {

using namespace detail;

caf::error turn::check_room() {
  if (sends_.size() + timers_.size() + tells_.size() >= max_effects)
    return make_error(errc::overloaded, "a turn may record at most "
                                            + std::to_string(max_effects)
                                            + " sends and timers");
  return caf::none;
}

caf::error turn::send(const grain_id& to,
                      const google::protobuf::Message& msg) {
  return record_send(to, msg, false, {});
}

caf::error turn::call(const grain_id& to, const google::protobuf::Message& msg,
                      std::string correlation) {
  return record_send(to, msg, true, std::move(correlation));
}

std::optional<turn::pending_call> turn::postpone_reply() {
  if (!env_ || !env_->has_reply_to())
    return std::nullopt;
  postponed_ = true;
  return pending_call{grain_id{env_->reply_to().type(), env_->reply_to().key()},
                      env_->correlation()};
}

caf::error turn::answer(const pending_call& call,
                        const google::protobuf::Message& msg) {
  auto reply = reply_of(std::shared_ptr<const google::protobuf::Message>(
      &msg, [](const google::protobuf::Message*) {}));
  reply.set_correlation(call.correlation);
  return record_send(call.caller, reply, false, {});
}

caf::error turn::answer_error(const pending_call& call, const caf::error& err) {
  auto code = code_of(err);
  auto reply = error_reply(
      code == errc::unspecified ? errc::handler_failed : code, describe(err));
  reply.set_correlation(call.correlation);
  return record_send(call.caller, reply, false, {});
}

caf::error turn::record_send(const grain_id& to,
                             const google::protobuf::Message& msg, bool call,
                             std::string correlation) {
  const char* what = call ? "call" : "send";
  if (auto err = check_room())
    return err;
  if (to.type.empty())
    return make_error(errc::invalid_argument,
                      std::string{what} + ": empty grain type");
  auto& core = owner_->core_;
  auto size = msg.ByteSizeLong() + correlation.size();
  if (size > core.cfg.max_payload_bytes)
    return make_error(errc::payload_too_large,
                      "payload of " + std::to_string(size)
                          + " bytes exceeds max_payload_bytes="
                          + std::to_string(core.cfg.max_payload_bytes));
  if (auto err = owner_->check_outbox_room(self_, sends_.size()))
    return err;
  outgoing out{
      to, msg.GetDescriptor()->full_name(), {}, call, std::move(correlation)};
  msg.SerializeToString(&out.payload);
  sends_.push_back(std::move(out));
  return caf::none;
}

caf::error turn::set_timer(std::string name, std::chrono::milliseconds delay,
                           const google::protobuf::Message& msg,
                           std::chrono::milliseconds period) {
  if (auto err = check_room())
    return err;
  if (name.empty())
    return make_error(errc::invalid_argument, "set_timer: empty timer name");
  if (delay.count() < 0 || period.count() < 0)
    return make_error(errc::invalid_argument,
                      "set_timer: negative delay or period");
  auto& core = owner_->core_;
  auto size = msg.ByteSizeLong();
  if (size > core.cfg.max_payload_bytes)
    return make_error(errc::payload_too_large,
                      "timer payload of " + std::to_string(size)
                          + " bytes exceeds max_payload_bytes");
  timer_change tc;
  tc.name = std::move(name);
  tc.due_ms = now_ms_ + delay.count();
  tc.period_ms = period.count();
  tc.payload_type = msg.GetDescriptor()->full_name();
  msg.SerializeToString(&tc.payload);
  timers_.push_back(std::move(tc));
  return caf::none;
}

caf::error turn::cancel_timer(std::string name) {
  if (auto err = check_room())
    return err;
  timer_change tc;
  tc.name = std::move(name);
  tc.cancel = true;
  timers_.push_back(std::move(tc));
  return caf::none;
}

caf::error turn::tell(const grain_id& to, message_ptr msg) {
  if (auto err = check_room())
    return err;
  if (!msg)
    return make_error(errc::invalid_argument, "tell: null message");
  auto& core = owner_->core_;
  auto p = partition_of(to, core.cfg.partitions);
  if (auto err = core.reserve(p))
    return err;
  tells_.push_back(transient_out{to, std::move(msg)});
  return caf::none;
}

} // namespace granary

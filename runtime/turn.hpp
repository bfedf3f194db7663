#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <caf/error.hpp>

#include "runtime/grain_base.hpp"
#include "runtime/grain_id.hpp"

namespace granary {

class partition;

/// The context of one turn: what a handler may do besides changing its own
/// state. Everything recorded here commits atomically with the state change,
/// and leaves the silo only after that commit is durable.
class turn {
public:
  /// The grain running this turn.
  const grain_id& self() const noexcept {
    return self_;
  }

  /// True for a durable message (or timer), false for a transient call.
  bool durable() const noexcept {
    return durable_;
  }

  /// Id of the message being handled (empty for transient calls).
  const std::string& message_id() const noexcept {
    return message_id_;
  }

  /// The sending grain of a durable message; empty for clients and timers.
  const grain_id& sender() const noexcept {
    return sender_;
  }

  /// Attempt number of this message, starting at 1.
  uint32_t attempt() const noexcept {
    return attempt_;
  }

  /// Wall-clock milliseconds since the epoch, from the silo's clock.
  int64_t now_ms() const noexcept {
    return now_ms_;
  }

  /// Sends `msg` durably to grain `to`: it is stored in this turn's commit,
  /// delivered at least once and processed effectively once. Fails with
  /// `overloaded` when this grain has too many undelivered messages, or with
  /// `payload_too_large`.
  caf::error send(const grain_id& to, const google::protobuf::Message& msg);

  /// Schedules `msg` to this grain after `delay`, durably, under `name`.
  /// A timer of the same name is replaced. With a non-zero `period` it is a
  /// reminder that re-arms itself after each firing.
  caf::error set_timer(std::string name, std::chrono::milliseconds delay,
                       const google::protobuf::Message& msg,
                       std::chrono::milliseconds period
                       = std::chrono::milliseconds{0});

  /// Cancels the timer or reminder called `name`, if any.
  caf::error cancel_timer(std::string name);

  /// Transient one-way message (at most once) to grain `to`; it leaves
  /// after this turn's commit. Fails with `overloaded` when the target's
  /// partition queue is full.
  caf::error tell(const grain_id& to, message_ptr msg);

  /// Outgoing durable message recorded by `send`.
  struct outgoing {
    grain_id to;
    std::string payload_type;
    std::string payload;
  };

  /// Timer change recorded by `set_timer` or `cancel_timer`.
  struct timer_change {
    std::string name;
    bool cancel = false;
    int64_t due_ms = 0;
    int64_t period_ms = 0;
    std::string payload_type;
    std::string payload;
  };

  /// Transient message recorded by `tell`.
  struct transient_out {
    grain_id to;
    message_ptr msg;
  };

  /// Upper bound on the effects one turn may record.
  static constexpr size_t max_effects = 65'536;

private:
  friend class partition;

  turn(partition* owner, const grain_id& self, bool durable,
       std::string message_id, const grain_id& sender, uint32_t attempt,
       int64_t now_ms)
      : owner_(owner)
      , self_(self)
      , durable_(durable)
      , message_id_(std::move(message_id))
      , sender_(sender)
      , attempt_(attempt)
      , now_ms_(now_ms) {}

  caf::error check_room();

  partition* owner_;
  const grain_id& self_;
  bool durable_;
  std::string message_id_;
  const grain_id& sender_;
  uint32_t attempt_;
  int64_t now_ms_;
  std::vector<outgoing> sends_;
  std::vector<timer_change> timers_;
  std::vector<transient_out> tells_;
};

} // namespace granary

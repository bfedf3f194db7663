#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <caf/error.hpp>

#include "runtime/grain_base.hpp"
#include "runtime/grain_id.hpp"
#include "runtime/limits.hpp"
#include "runtime/services.hpp"

namespace granary {

class partition;

namespace wire {
class Envelope;
} // namespace wire

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

  /// The services the silo's host added (see `service_registry`).
  const service_registry& services() const;

  /// Wall-clock milliseconds since the epoch, from the silo's clock.
  int64_t now_ms() const noexcept {
    return now_ms_;
  }

  /// Sends `msg` durably to grain `to`: it is stored in this turn's commit,
  /// delivered at least once and processed effectively once. Fails with
  /// `overloaded` when this grain has too many undelivered messages, or with
  /// `payload_too_large`.
  [[nodiscard]] caf::error send(const grain_id& to,
                                const google::protobuf::Message& msg);

  /// Calls grain `to` durably: sends `msg` exactly like `send` (same checks,
  /// same outbox path, same guarantees) and asks for an answer. Once the
  /// target has processed `msg`, it sends this grain a durable
  /// `granary::wire::Reply` carrying `correlation` and the handler's reply
  /// message, in the commit of that turn. If `msg` is dead-lettered instead
  /// (unknown grain type, unhandled or undecodable payload, `max_attempts`
  /// failures), the `Reply` carries the error code and reason. This grain
  /// handles the `Reply` as an ordinary durable message: register a handler
  /// for `granary::wire::Reply`. `correlation` counts against
  /// `max_payload_bytes` together with `msg`.
  [[nodiscard]] caf::error call(const grain_id& to,
                                const google::protobuf::Message& msg,
                                std::string correlation);

  /// A durable call whose answer the handler postponed (see
  /// `postpone_reply`).
  struct pending_call {
    grain_id caller;
    std::string correlation;
  };

  /// Postpones the answer to the durable call being handled: this turn
  /// sends no reply, and the grain answers later, in any turn, with
  /// `answer` (keep the handle in the grain's state). Returns nullopt when
  /// the message is not a durable call (a send, a timer, a transient call).
  std::optional<pending_call> postpone_reply();

  /// Answers a postponed call with `msg`, durably (like `send`).
  [[nodiscard]] caf::error answer(const pending_call& call,
                                  const google::protobuf::Message& msg);

  /// Answers a postponed call with an error, durably.
  [[nodiscard]] caf::error answer_error(const pending_call& call,
                                        const caf::error& err);

  /// Schedules `msg` to this grain after `delay`, durably, under `name`.
  /// A timer of the same name is replaced. With a non-zero `period` it is a
  /// reminder that re-arms itself after each firing.
  [[nodiscard]] caf::error
  set_timer(std::string name, std::chrono::milliseconds delay,
            const google::protobuf::Message& msg,
            std::chrono::milliseconds period = std::chrono::milliseconds{0});

  /// Like a one-shot `set_timer`, but the timer also fires as soon as its
  /// partition is recovered (after a restart, or on the new owner after a
  /// handoff), however far its due time is: it watches work that lives
  /// only in memory, such as an activity attempt on a pool, which a restart
  /// ends. The handler tells an early firing by its own due time.
  [[nodiscard]] caf::error set_watchdog(std::string name,
                                        std::chrono::milliseconds delay,
                                        const google::protobuf::Message& msg) {
    auto err = set_timer(std::move(name), delay, msg);
    if (!err)
      timers_.back().watchdog = true;
    return err;
  }

  /// Cancels the timer or reminder called `name`, if any.
  [[nodiscard]] caf::error cancel_timer(std::string name);

  /// Transient one-way message (at most once) to grain `to`; it leaves
  /// after this turn's commit. Fails with `overloaded` when the target's
  /// partition queue is full.
  [[nodiscard]] caf::error tell(const grain_id& to, message_ptr msg);

  /// Outgoing durable message recorded by `send` or `call`.
  struct outgoing {
    grain_id to;
    std::string payload_type;
    std::string payload;
    /// True for a `call`: the target replies to this grain.
    bool call = false;
    /// The `call`'s correlation, copied into its reply.
    std::string correlation;
  };

  /// Timer change recorded by `set_timer` or `cancel_timer`.
  struct timer_change {
    std::string name;
    bool cancel = false;
    int64_t due_ms = 0;
    int64_t period_ms = 0;
    std::string payload_type;
    std::string payload;
    /// Set by `set_watchdog`.
    bool watchdog = false;
  };

  /// Transient message recorded by `tell`.
  struct transient_out {
    grain_id to;
    message_ptr msg;
  };

  /// Upper bound on the effects one turn may record.
  static constexpr size_t max_effects = limits::max_turn_effects;

private:
  friend class partition;

  turn(partition* owner, const grain_id& self, bool durable,
       std::string message_id, const grain_id& sender, uint32_t attempt,
       int64_t now_ms, const wire::Envelope* env = nullptr)
      : owner_(owner)
      , self_(self)
      , durable_(durable)
      , message_id_(std::move(message_id))
      , sender_(sender)
      , attempt_(attempt)
      , now_ms_(now_ms)
      , env_(env) {}

  caf::error check_room();

  caf::error record_send(const grain_id& to,
                         const google::protobuf::Message& msg, bool call,
                         std::string correlation);

  partition* owner_;
  const grain_id& self_;
  bool durable_;
  std::string message_id_;
  const grain_id& sender_;
  uint32_t attempt_;
  int64_t now_ms_;
  // The durable message being handled; null for transient calls.
  const wire::Envelope* env_;
  bool postponed_ = false;
  std::vector<outgoing> sends_;
  std::vector<timer_change> timers_;
  std::vector<transient_out> tells_;
};

} // namespace granary

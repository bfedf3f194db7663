#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace google::protobuf {
class Message;
} // namespace google::protobuf

namespace granary {

class turn;

/// An immutable message shared between threads without copying.
using message_ptr = std::shared_ptr<const google::protobuf::Message>;

/// The runtime's view of one grain activation. The typed programming model
/// in `actors/` implements it; the runtime only calls these hooks, always
/// from the single thread that runs the grain's turns.
class grain_base {
public:
  virtual ~grain_base();

  /// Returns the prototype of message type `type_name` if this grain
  /// handles it, nullptr otherwise.
  virtual const google::protobuf::Message*
  prototype(std::string_view type_name) const = 0;

  /// Runs one turn for `msg`. Returns the reply, or an error that makes a
  /// durable message count as a failed attempt.
  virtual caf::expected<message_ptr>
  handle(turn& t, const google::protobuf::Message& msg) = 0;

  /// Replaces the in-memory state with the decoded `bytes`, or with the
  /// default state when `bytes` is nullopt.
  virtual caf::error load_state(std::optional<std::string_view> bytes) = 0;

  /// Serializes the state into `out`.
  virtual void save_state(std::string& out) const = 0;

  /// Called once after the state was loaded.
  virtual void on_activate() {}

  /// Called before an idle activation is dropped from memory.
  virtual void on_deactivate() {}

  /// True when a turn changed the state since the last `clear_dirty()`.
  bool dirty() const noexcept {
    return dirty_;
  }

  /// Resets the dirty flag; the runtime calls it after saving the state.
  void clear_dirty() noexcept {
    dirty_ = false;
  }

protected:
  /// Marks the state as changed; typed grains call it from `state()`.
  void mark_dirty() noexcept {
    dirty_ = true;
  }

private:
  bool dirty_ = false;
};

/// Creates a fresh, default-constructed grain instance.
using grain_factory = std::function<std::unique_ptr<grain_base>()>;

} // namespace granary

#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>

#include <caf/expected.hpp>
#include <google/protobuf/empty.pb.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/message.h>

#include "runtime/error.hpp"
#include "runtime/grain_base.hpp"
#include "runtime/grain_id.hpp"
#include "runtime/silo.hpp"
#include "runtime/turn.hpp"

namespace granary {

/// Serializes `msg` deterministically (map entries in key order), so that
/// equal messages give equal bytes in every process. Use it for messages
/// embedded as bytes in other messages: the workflow engine compares a
/// replayed request with the journaled one by these bytes.
inline std::string deterministic_bytes(const google::protobuf::Message& msg) {
  std::string out;
  google::protobuf::io::StringOutputStream stream{&out};
  google::protobuf::io::CodedOutputStream coded{&stream};
  coded.SetSerializationDeterministic(true);
  msg.SerializeToCodedStream(&coded);
  coded.Trim();
  return out;
}

/// Reply type of handlers that return nothing but success.
using done = google::protobuf::Empty;

/// The handler table of grain class `Derived`: message type name to member
/// function. Built once per class, shared by all activations.
template <class Derived>
class handlers {
public:
  using invoker = std::function<caf::expected<message_ptr>(
      Derived&, turn&, const google::protobuf::Message&)>;

  /// One registered handler.
  struct entry {
    const google::protobuf::Message* prototype;
    invoker fn;
  };

  /// Registers `fn` for message type `M`; its reply type is `R`.
  template <class R, class M>
  handlers& on(caf::expected<R> (Derived::*fn)(turn&, const M&)) {
    static_assert(std::is_base_of_v<google::protobuf::Message, M>,
                  "handler argument must be a protobuf message");
    static_assert(std::is_base_of_v<google::protobuf::Message, R>,
                  "handler reply must be a protobuf message");
    entries_.insert_or_assign(
        std::string{M::descriptor()->full_name()},
        entry{&M::default_instance(),
              [fn](Derived& self, turn& t, const google::protobuf::Message& m)
                  -> caf::expected<message_ptr> {
                auto res = (self.*fn)(t, static_cast<const M&>(m));
                if (!res)
                  return std::move(res.error());
                return message_ptr{std::make_shared<R>(std::move(*res))};
              }});
    return *this;
  }

  /// Returns the entry for `type_name`, or nullptr.
  const entry* find(std::string_view type_name) const {
    auto i = entries_.find(type_name);
    return i != entries_.end() ? &i->second : nullptr;
  }

private:
  std::map<std::string, entry, std::less<>> entries_;
};

/// Base class of user grains. `Derived` declares
/// `static constexpr std::string_view type_name` and
/// `static void define(handlers<Derived>&)`. `State` is the protobuf message
/// that holds the persistent state; each durable turn that changes it saves
/// it in the same commit as the turn's other effects.
template <class Derived, class State = google::protobuf::Empty>
class grain : public grain_base {
public:
  /// The registered type name of this grain class.
  static std::string name() {
    return std::string{Derived::type_name};
  }

  const google::protobuf::Message*
  prototype(std::string_view type_name) const override {
    auto* e = table().find(type_name);
    return e ? e->prototype : nullptr;
  }

  caf::expected<message_ptr>
  handle(turn& t, const google::protobuf::Message& msg) override {
    auto* e = table().find(msg.GetDescriptor()->full_name());
    if (!e)
      return make_error(errc::unhandled_message,
                        "grain type '" + name() + "' does not handle '"
                            + msg.GetDescriptor()->full_name() + "'");
    return e->fn(static_cast<Derived&>(*this), t, msg);
  }

  caf::error load_state(std::optional<std::string_view> bytes) override {
    state_.Clear();
    if (bytes
        && !state_.ParseFromArray(bytes->data(),
                                  static_cast<int>(bytes->size())))
      return make_error(errc::corrupt_record,
                        "state does not parse as "
                            + std::string{State::descriptor()->full_name()});
    return caf::none;
  }

  void save_state(std::string& out) const override {
    state_.SerializeToString(&out);
  }

protected:
  /// Mutable state; marks it as changed, so the turn saves it.
  State& state() {
    mark_dirty();
    return state_;
  }

  /// Read-only state.
  const State& view() const {
    return state_;
  }

private:
  static const handlers<Derived>& table() {
    static const handlers<Derived> instance = [] {
      handlers<Derived> h;
      Derived::define(h);
      return h;
    }();
    return instance;
  }

  State state_;
};

/// True for workflow classes (`workflow<...>` defines the marker).
template <class G>
inline constexpr bool is_workflow_v = requires {
  typename G::workflow_marker;
};

/// True for resource grain classes (`resource<...>` defines the marker).
template <class G>
inline constexpr bool is_resource_v = requires {
  typename G::resource_marker;
};

/// Registers grain class `G` under `G::type_name`. Workflows and resource
/// grains need their activity pool: register them with `register_workflow`
/// and `register_resource` (or a host's `registration`), which this checks
/// at compile time.
template <class G>
caf::error register_grain(grain_registry& registry) {
  static_assert(!is_workflow_v<G>,
                "G is a workflow: register it with register_workflow<G>("
                "registry, &pool), or host::registration::workflow<G>(), so "
                "that its activities have a pool");
  static_assert(!is_resource_v<G>,
                "G is a resource grain: register it with register_resource<G>("
                "registry, pool), or host::registration::resource<G>(), so "
                "that its reconcile activity has a pool");
  return registry.add(std::string{G::type_name},
                      [] { return std::make_unique<G>(); });
}

/// Returns the id of grain `key` of class `G`.
template <class G>
grain_id id_of(std::string key) {
  return grain_id{std::string{G::type_name}, std::move(key)};
}

/// A cheap, copyable reference to a grain of class `G` on a silo.
template <class G>
class grain_ref {
public:
  grain_ref(silo& s, std::string key)
      : silo_(&s)
      , id_(id_of<G>(std::move(key))) {}

  /// The grain's identity.
  const grain_id& id() const noexcept {
    return id_;
  }

  /// Transient call expecting a reply of type `R`.
  template <class R, class M>
  [[nodiscard]] caf::expected<R> call(const M& msg,
                                      std::chrono::milliseconds timeout
                                      = std::chrono::seconds{10}) const {
    auto res = silo_->call(id_, std::make_shared<M>(msg), timeout);
    if (!res)
      return std::move(res.error());
    auto* typed = dynamic_cast<const R*>(res->get());
    if (!typed)
      return make_error(errc::malformed_message,
                        "reply from " + to_string(id_) + " is "
                            + (*res)->GetDescriptor()->full_name()
                            + ", expected "
                            + std::string{R::descriptor()->full_name()});
    return *typed;
  }

  /// Durable send; returns once the message is durably accepted.
  template <class M>
  [[nodiscard]] caf::error send(const M& msg, std::string msg_id = {}) const {
    return silo_->send(id_, msg, std::move(msg_id));
  }

private:
  silo* silo_;
  grain_id id_;
};

} // namespace granary

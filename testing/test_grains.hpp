#pragma once

// Grains and helpers shared by the runtime tests.

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include "actors/grain.hpp"
#include "granary.pb.h"
#include "runtime/memory_storage.hpp"
#include "test.pb.h"
#include "testing/eventually.hpp"

namespace granary::testing {

/// When true, `probe` fails every `Flaky` message.
inline std::atomic<bool> flaky_fails{false};

/// A grain that exercises every runtime feature.
class probe : public grain<probe, ProbeState> {
public:
  static constexpr std::string_view type_name = "test.probe";

  static void define(handlers<probe>& h) {
    h.on(&probe::add)
        .on(&probe::get)
        .on(&probe::forward)
        .on(&probe::flaky)
        .on(&probe::arm)
        .on(&probe::disarm)
        .on(&probe::fired)
        .on(&probe::big)
        .on(&probe::ask)
        .on(&probe::answer);
  }

  caf::expected<Value> add(turn& t, const Add& m) {
    state().set_value(view().value() + m.delta());
    if (t.durable())
      state().add_seen(t.message_id());
    return current();
  }

  caf::expected<Value> get(turn&, const Get&) {
    return current();
  }

  caf::expected<done> forward(turn& t, const Forward& m) {
    state().set_value(view().value() + m.delta());
    Add add;
    add.set_delta(m.delta());
    if (auto err = t.send(grain_id{std::string{type_name}, m.to()}, add))
      return err;
    return done{};
  }

  caf::expected<Value> flaky(turn&, const Flaky& m) {
    state().set_value(view().value() + m.delta());
    if (flaky_fails)
      return make_error(errc::handler_failed, "flaky is failing on purpose");
    return current();
  }

  caf::expected<done> arm(turn& t, const Arm& m) {
    Fired f;
    f.set_name(m.name());
    if (auto err
        = t.set_timer(m.name(), std::chrono::milliseconds{m.delay_ms()}, f,
                      std::chrono::milliseconds{m.period_ms()}))
      return err;
    return done{};
  }

  caf::expected<done> disarm(turn& t, const Disarm& m) {
    if (auto err = t.cancel_timer(m.name()))
      return err;
    return done{};
  }

  caf::expected<done> fired(turn& t, const Fired&) {
    state().set_fired(view().fired() + 1);
    auto* firings = state().mutable_firings();
    if (firings->size() >= 16)
      firings->DeleteSubrange(0, 1);
    *state().add_firings() = t.message_id() + "@" + std::to_string(t.now_ms());
    return done{};
  }

  caf::expected<done> big(turn&, const Big&) {
    return done{};
  }

  caf::expected<done> ask(turn& t, const Ask& m) {
    grain_id to{m.to_type().empty() ? std::string{type_name} : m.to_type(),
                m.to()};
    caf::error err;
    if (m.kind() == "flaky") {
      Flaky f;
      f.set_delta(m.delta());
      err = t.call(to, f, m.correlation());
    } else if (m.kind() == "unhandled") {
      err = t.call(to, Unhandled{}, m.correlation());
    } else {
      Add a;
      a.set_delta(m.delta());
      err = t.call(to, a, m.correlation());
    }
    if (err)
      return err;
    return done{};
  }

  caf::expected<done> answer(turn& t, const wire::Reply& r) {
    auto& a = *state().add_answers();
    a.set_correlation(r.correlation());
    a.set_error_code(r.error_code());
    a.set_error(r.error());
    a.set_from(to_string(t.sender()));
    Value v;
    if (r.payload_type() == Value::descriptor()->full_name()
        && v.ParseFromString(r.payload()))
      a.set_value(v.value());
    return done{};
  }

private:
  Value current() const {
    Value v;
    v.set_value(view().value());
    v.set_fired(view().fired());
    *v.mutable_seen() = view().seen();
    *v.mutable_answers() = view().answers();
    *v.mutable_firings() = view().firings();
    return v;
  }
};

/// Storage over a shared memory_storage (see shared_memory_storage).
using shared_storage = shared_memory_storage;

} // namespace granary::testing

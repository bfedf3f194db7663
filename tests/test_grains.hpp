#pragma once

// Grains and helpers shared by the runtime tests.

#include <atomic>
#include <memory>

#include "actors/grain.hpp"
#include "runtime/memory_storage.hpp"
#include "test.pb.h"

namespace granary::test {

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
        .on(&probe::big);
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

  caf::expected<done> fired(turn&, const Fired&) {
    state().set_fired(view().fired() + 1);
    return done{};
  }

  caf::expected<done> big(turn&, const Big&) {
    return done{};
  }

private:
  Value current() const {
    Value v;
    v.set_value(view().value());
    v.set_fired(view().fired());
    *v.mutable_seen() = view().seen();
    return v;
  }
};

/// Storage that forwards to a shared memory_storage, so that a test can
/// stop a silo and start another one on the same data.
class shared_storage : public storage {
public:
  explicit shared_storage(std::shared_ptr<memory_storage> impl)
      : impl_(std::move(impl)) {}

  caf::expected<std::optional<std::string>> get(column col,
                                                std::string_view key) override {
    return impl_->get(col, key);
  }

  caf::error commit(std::span<const write_batch* const> batches) override {
    return impl_->commit(batches);
  }

  caf::error scan(column col, std::string_view prefix, std::string_view start,
                  size_t limit, const scan_visitor& visit) override {
    return impl_->scan(col, prefix, start, limit, visit);
  }

  std::optional<uint64_t> free_bytes() override {
    return impl_->free_bytes();
  }

private:
  std::shared_ptr<memory_storage> impl_;
};

} // namespace granary::test

#include "samples/hello/counter.hpp"

namespace hello {

void counter::define(granary::handlers<counter>& h) {
  h.on(&counter::add)
      .on(&counter::get)
      .on(&counter::start_reminder)
      .on(&counter::tick);
}

Value counter::current() const {
  Value v;
  v.set_value(view().value());
  v.set_reminders(view().reminders());
  return v;
}

caf::expected<Value> counter::add(granary::turn&, const Add& msg) {
  state().set_value(view().value() + msg.delta());
  return current();
}

caf::expected<Value> counter::get(granary::turn&, const Get&) {
  return current();
}

caf::expected<granary::done> counter::start_reminder(granary::turn& t,
                                                     const StartReminder& msg) {
  if (msg.period_ms() <= 0)
    return granary::make_error(granary::errc::invalid_argument,
                               "StartReminder.period_ms must be positive");
  std::chrono::milliseconds period{msg.period_ms()};
  if (auto err = t.set_timer("tick", period, Tick{}, period))
    return err;
  return granary::done{};
}

caf::expected<granary::done> counter::tick(granary::turn&, const Tick&) {
  state().set_reminders(view().reminders() + 1);
  return granary::done{};
}

} // namespace hello

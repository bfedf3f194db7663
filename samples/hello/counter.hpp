#pragma once

#include "actors/grain.hpp"
#include "hello.pb.h"

namespace hello {

/// A durable counter. `Add` changes it, `Get` reads it, and a reminder
/// started by `StartReminder` counts its own firings, across restarts.
class counter : public granary::grain<counter, CounterState> {
public:
  static constexpr std::string_view type_name = "hello.counter";

  static void define(granary::handlers<counter>& h);

  caf::expected<Value> add(granary::turn& t, const Add& msg);

  caf::expected<Value> get(granary::turn& t, const Get& msg);

  caf::expected<granary::done> start_reminder(granary::turn& t,
                                              const StartReminder& msg);

  caf::expected<granary::done> tick(granary::turn& t, const Tick& msg);

private:
  Value current() const;
};

} // namespace hello

#pragma once

#include <functional>
#include <string>
#include <vector>

#include "actors/task.hpp"
#include "runtime/grain_base.hpp"
#include "runtime/limits.hpp"

#include <google/protobuf/empty.pb.h>

namespace granary {

/// Compensation helper for workflows: register an undo step after each
/// step that succeeded; on failure, `compensate` runs them in reverse
/// order. Compensations are workflow code, so their commands are journaled
/// and replay like any other.
class saga {
public:
  /// An undo step: a coroutine that awaits workflow commands.
  using step = std::function<task<google::protobuf::Empty>()>;

  /// Upper bound on registered compensations.
  static constexpr size_t max_steps = limits::max_saga_steps;

  /// Registers `undo` to run if the workflow compensates.
  caf::error add(step undo) {
    if (steps_.size() >= max_steps)
      return make_error(errc::overloaded, "saga holds "
                                              + std::to_string(max_steps)
                                              + " compensations");
    steps_.push_back(std::move(undo));
    return caf::none;
  }

  /// Number of registered compensations.
  size_t size() const noexcept {
    return steps_.size();
  }

  /// Runs every compensation in reverse order of registration, each once,
  /// even when one of them fails; returns the first failure.
  task<google::protobuf::Empty> compensate() {
    caf::error first;
    while (!steps_.empty()) {
      auto undo = std::move(steps_.back());
      steps_.pop_back();
      auto res = co_await undo();
      if (!res && !first)
        first = std::move(res.error());
    }
    if (first)
      co_return first;
    co_return google::protobuf::Empty{};
  }

private:
  std::vector<step> steps_;
};

} // namespace granary

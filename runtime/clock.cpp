#include "runtime/clock.hpp"

#include "runtime/sys.hpp"

namespace granary {

clock::~clock() = default;

int64_t system_clock::now_ms() const {
  // Under a simulation: the virtual wall clock of the calling process.
  return sys::wall_ms();
}

std::shared_ptr<clock> make_system_clock() {
  return std::make_shared<system_clock>();
}

} // namespace granary

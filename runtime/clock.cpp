#include "runtime/clock.hpp"

#include <chrono>

namespace granary {

clock::~clock() = default;

int64_t system_clock::now_ms() const {
  using namespace std::chrono;
  return duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::shared_ptr<clock> make_system_clock() {
  return std::make_shared<system_clock>();
}

} // namespace granary

#pragma once

#include <chrono>
#include <thread>

namespace granary::testing {

/// Polls `pred` every `every` until it holds or `timeout` passes; returns
/// whether it held. Tests wait for observed progress with it, never for a
/// fixed delay.
template <class Pred>
bool eventually(Pred pred,
                std::chrono::milliseconds timeout = std::chrono::seconds{5},
                std::chrono::milliseconds every
                = std::chrono::milliseconds{5}) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred())
      return true;
    std::this_thread::sleep_for(every);
  }
  return pred();
}

} // namespace granary::testing

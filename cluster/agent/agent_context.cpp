#include "cluster/agent/agent_context.hpp"

namespace granary::cluster {

void say(log_level level, const std::string& line) {
  log(level, "cluster: " + line);
}

agent_context::agent_context(agent_config c, std::shared_ptr<granary::clock> k,
                             membership_store& s, transport& n,
                             transport_router& r)
    : cfg(std::move(c))
    , clk(k ? std::move(k) : make_system_clock())
    , store(s)
    , net(n)
    , router(r)
    , serving(std::make_unique<std::atomic<bool>[]>(cfg.partitions))
    , moving(std::make_unique<std::atomic<bool>[]>(cfg.partitions)) {}

int64_t agent_context::now_ms() const {
  return clk->now_ms();
}

bool agent_context::is_stopped() const {
  std::lock_guard guard{mtx};
  return stopped;
}

bool agent_context::nap(std::chrono::milliseconds d) {
  std::unique_lock guard{mtx};
  cv.wait_for(guard, d, [this] { return stopped; });
  return !stopped;
}

void agent_context::refresh_soon() {
  {
    std::lock_guard guard{mtx};
    refresh_wanted = true;
  }
  cv.notify_all();
}

uint64_t agent_context::random_id() {
  std::lock_guard guard{mtx};
  return rng() | 1;
}

size_t agent_context::held() const {
  size_t n = 0;
  for (uint32_t p = 0; p < cfg.partitions; ++p)
    if (serving[p].load() || moving[p].load())
      ++n;
  return n;
}

} // namespace granary::cluster

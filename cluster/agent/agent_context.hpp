#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <string>

#include "cluster/agent/cluster_agent.hpp"
#include "runtime/log.hpp"
#include "runtime/sys.hpp"

namespace granary::cluster {

/// Bounded compare-and-set retries of membership and map writes.
constexpr int max_cas_attempts = 20;

/// Logs `line` as the cluster's.
void say(log_level level, const std::string& line);

/// What the parts of one silo's agent share: the wiring, the newest view
/// of the cluster, and which partitions this silo serves or is moving.
/// The agent (join, membership, routes), the handoff sender and the
/// handoff receiver each run on their own thread over one context.
struct agent_context {
  agent_context(agent_config c, std::shared_ptr<granary::clock> k,
                membership_store& s, transport& n, transport_router& r);

  const agent_config cfg;
  const std::shared_ptr<granary::clock> clk;
  membership_store& store;
  transport& net;
  transport_router& router;
  /// The silo's storage and the silo (set by `join` and `activate`).
  storage* data = nullptr;
  std::atomic<silo*> local{nullptr};

  /// Guards the fields up to `rng`; `cv` wakes the agent's threads for a
  /// stop or a wanted refresh.
  mutable sys::mutex mtx;
  sys::condition_variable cv;
  bool stopped = false;
  bool refresh_wanted = true;
  bool leaving = false;
  bool left = false;
  /// The newest table and map this silo read (never an older one).
  cluster_view cached;
  std::mt19937_64 rng{sys::random_u64()};

  /// Serializes changes of what this silo serves: applying a view, and a
  /// handoff's start and end.
  sys::mutex apply_mtx;
  /// Per partition: served here now; on its way to another silo.
  std::unique_ptr<std::atomic<bool>[]> serving;
  std::unique_ptr<std::atomic<bool>[]> moving;

  /// Wall-clock milliseconds from the clock seam.
  int64_t now_ms() const;

  bool is_stopped() const;

  /// Sleeps up to `d`, or until stopped; returns false when stopped.
  bool nap(std::chrono::milliseconds d);

  /// Asks the agent's main thread to re-read the table and the map.
  void refresh_soon();

  /// A random, non-zero id (handoffs).
  uint64_t random_id();

  /// Partitions still on this silo: served, or on their way out. A
  /// partition in flight is not served, yet it is ours until its new owner
  /// is in the map, so leaving must wait for it too.
  size_t held() const;
};

} // namespace granary::cluster

#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "cluster/transport/transport.hpp"
#include "runtime/sys.hpp"

namespace granary::cluster {

class memory_transport;

/// What happens to one frame on a `memory_network` link.
struct link_fate {
  /// The frame is lost.
  bool drop = false;
  /// Copies delivered (1, or 2 for a duplicate).
  int copies = 1;
  /// Delay of each copy before its receiver sees it; frames of one link
  /// with different delays overtake each other.
  std::chrono::nanoseconds delay[2] = {};
};

/// Decides the fate of a frame from silo `from` to silo `to` (for fault
/// injection; called under the network's lock, so it must not call back
/// into the network).
using link_policy
    = std::function<link_fate(const std::string& from, const std::string& to)>;

/// A network inside one process: the silos of a test cluster exchange
/// frames through it without sockets. Every transport delivers on its own
/// thread, in order per sender, through a bounded queue; a frame to a silo
/// that is not listening is lost, as on a dead connection.
class memory_network : public std::enable_shared_from_this<memory_network> {
public:
  /// Frames waiting for one receiver before `send` answers `overloaded`.
  static constexpr size_t max_queued_frames = 65'536;

  /// A new network.
  static std::shared_ptr<memory_network> make();

  /// A transport on this network for silo `silo_id`, run `incarnation`.
  std::shared_ptr<transport> attach(std::string silo_id, uint64_t incarnation);

  /// Sets the policy every frame goes through (default: none, every frame
  /// arrives once, in order).
  void set_link_policy(link_policy policy);

private:
  friend class memory_transport;

  memory_network() = default;

  // Registers `t` as listening; returns its port.
  uint16_t listen(memory_transport* t);
  void unlisten(memory_transport* t);
  // Hands `frame` to the transport listening as `to`, if any.
  caf::error deliver(const peer_address& to, const peer_info& from,
                     const Frame& frame);

  sys::mutex mtx_;
  uint16_t next_port_ = 1;
  // By port; a silo is reached at the port it listens on.
  std::map<uint16_t, memory_transport*> listening_;
  link_policy policy_;
};

} // namespace granary::cluster

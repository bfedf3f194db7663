#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "cluster/transport/transport.hpp"
#include "runtime/sys.hpp"

namespace granary::cluster {

class memory_transport;

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
};

} // namespace granary::cluster

#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include <caf/error.hpp>

#include "cluster.pb.h"
#include "cluster/agent/agent_context.hpp"
#include "runtime/sys.hpp"

namespace granary::cluster {

/// The receiving side of partition handoff: takes `HandoffChunk` frames,
/// writes them into files under `handoff_dir`, imports the partition when
/// the last chunk came and records it as held, and answers every chunk
/// with a `HandoffAck` (see `cluster_agent`, "Handoff").
///
/// A transfer starts only from the silo that owns the partition, at the
/// next epoch, in this silo's map (re-read once when it says otherwise),
/// and never for a partition this silo serves. Chunks are taken in order;
/// a repeated chunk (its answer lost) is answered again without being
/// written twice, also the last one of a finished transfer. This silo
/// serves the partition only once the map gives it here (`apply`).
///
/// Chunks queue (at most 64, then `overloaded`: the sender resends) from
/// the transport's threads; `run` works on them on the receiver thread.
class handoff_receiver {
public:
  /// Re-reads the table and the map and applies them.
  using refresh_fn = std::function<caf::error()>;

  handoff_receiver(agent_context& ctx, refresh_fn refresh);

  handoff_receiver(const handoff_receiver&) = delete;
  handoff_receiver& operator=(const handoff_receiver&) = delete;

  /// Queues a chunk from `from`, or answers `overloaded` when the queue is
  /// full or the receiver stopped. Never blocks on a transfer.
  void offer(const peer_info& from, HandoffChunk&& chunk);

  /// Works on the queued chunks until `stop`; then removes the files of
  /// unfinished transfers.
  void run();

  /// Makes `run` return and `offer` refuse.
  void stop();

  /// Chunks that wait at most (then `overloaded`).
  static constexpr size_t max_queued = 64;

private:
  struct inbound {
    peer_info from;
    HandoffChunk chunk;
  };

  struct transfer {
    uint64_t id = 0;
    uint32_t partition = 0;
    uint64_t epoch = 0;
    uint64_t next_seq = 0;
    std::string from;
    std::filesystem::path dir;
    std::vector<partition_file> files;
  };

  void answer(const peer_info& to, const HandoffChunk& c,
              const caf::error& err);
  caf::error check_sender(const peer_info& from, uint32_t p, uint64_t epoch);
  caf::error receive(transfer& t, const peer_info& from, const HandoffChunk& c);

  agent_context& ctx_;
  refresh_fn refresh_;

  sys::mutex mtx_;
  sys::condition_variable cv_;
  bool stopped_ = false;
  std::deque<inbound> incoming_;
};

} // namespace granary::cluster

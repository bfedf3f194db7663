#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <caf/error.hpp>

#include "cluster.pb.h"
#include "cluster/agent/agent_context.hpp"
#include "cluster/agent/move_planner.hpp"
#include "runtime/sys.hpp"

namespace granary::cluster {

/// The sending side of partition handoff: plans the moves from this silo
/// and carries them out one at a time (see `cluster_agent`, "Handoff").
///
/// A move of partition p at epoch e to silo T routes p nowhere, releases
/// it in the silo, exports it, ships the files in acknowledged
/// `HandoffChunk` frames, then writes the map with T at e + 1 and drops the
/// local copy. A failure before the map write serves p here again at e.
/// Once the map write was tried, only the map decides: while its outcome
/// is unknown, p is served nowhere, no other move starts, and the map is
/// asked again until it tells.
///
/// Runs on the agent's sender thread (`run`); `on_ack` comes from the
/// transport's threads.
class handoff_sender {
public:
  explicit handoff_sender(agent_context& ctx);

  handoff_sender(const handoff_sender&) = delete;
  handoff_sender& operator=(const handoff_sender&) = delete;

  /// Plans and moves until the context is stopped.
  void run();

  /// The answer to a chunk; answers to other chunks than the one awaited
  /// are ignored.
  void on_ack(const HandoffAck& ack);

  /// Wakes a wait for an answer (the context was stopped).
  void wake();

private:
  // What the map says about a move whose map write was attempted.
  enum class move_outcome {
    // `p` is on `to` at `epoch + 1`: the move happened.
    moved,
    // `p` is still ours at `epoch`, and no write of ours can still apply.
    ours,
    // `p` is on neither: someone else wrote the map.
    not_ours,
    // A write's outcome is unknown and the map could not tell yet.
    unknown,
  };

  // A move whose new owner has the data but whose map write is not known
  // to have happened or not (the store timed out). `p` stays served
  // nowhere until the map tells, and the sender thread asks again.
  struct pending_move {
    uint64_t epoch = 0;
    std::string to;
    peer_address to_address;
    // Whether a write with an unknown outcome may still apply, and the
    // highest map version such a write expected: a write can only apply
    // while the map is at the version it expected.
    bool unknown = false;
    uint64_t unknown_at = 0;
  };

  // What `commit_move` found: the outcome, the map version that says so and
  // the partition's primary in it.
  struct move_answer {
    move_outcome outcome = move_outcome::unknown;
    uint64_t version = 0;
    std::string owner;
  };

  caf::error hand_off(const partition_move& m, const peer_address& to);
  caf::error release(silo& here, uint32_t p);
  caf::error ship(const peer_address& to, uint32_t p, uint64_t epoch,
                  const std::vector<partition_file>& files);
  caf::error send_chunk(const peer_address& to, Frame& f);
  caf::error await_ack(uint64_t id, uint64_t seq);
  move_answer commit_move(uint32_t p, pending_move& m);
  bool settle(uint32_t p, const pending_move& m, const move_answer& answer);
  void settle_unsettled();
  void finish_move(uint32_t p, const pending_move& m, uint64_t version);
  void restore(uint32_t p, uint64_t epoch);
  void forget(uint32_t p);

  agent_context& ctx_;

  // The answer the sender waits for.
  sys::mutex ack_mtx_;
  sys::condition_variable ack_cv_;
  uint64_t await_id_ = 0;
  uint64_t await_seq_ = 0;
  std::optional<caf::error> await_result_;

  // Map writes that wait for an answer, by partition (sender thread only).
  std::map<uint32_t, pending_move> unsettled_;
};

} // namespace granary::cluster

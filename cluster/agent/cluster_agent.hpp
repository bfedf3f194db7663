#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "cluster/membership/membership.hpp"
#include "cluster/routing/transport_router.hpp"
#include "cluster/transport/transport.hpp"
#include "runtime/clock.hpp"
#include "runtime/silo.hpp"
#include "runtime/storage.hpp"

namespace granary::cluster {

/// Settings of a silo's membership agent.
struct agent_config {
  /// This silo: its id and its silo-to-silo address.
  peer_address self;
  /// Where clients reach this silo's gateway (shown in the table).
  std::string gateway_address;
  /// Partition count of the cluster (fixed at creation).
  uint32_t partitions = 64;
  /// Every silo pings every other live silo this often.
  std::chrono::milliseconds probe_interval{1'000};
  /// Consecutive unanswered pings after which a silo votes its peer dead.
  uint32_t missed_probes = 3;
  /// Votes that declare a silo dead; capped at the number of other live
  /// silos, so that two silos can still decide.
  uint32_t votes_needed = 2;
  /// Votes older than this no longer count.
  std::chrono::milliseconds vote_expiry{30'000};
  /// How often the silo writes its "I am alive" timestamp.
  std::chrono::milliseconds i_am_alive_interval{5'000};
  /// How long a joining silo waits for every live silo to answer a ping
  /// before it becomes active anyway (and lets the detector judge them).
  std::chrono::milliseconds join_timeout{5'000};
  /// Bytes per handoff frame.
  size_t handoff_chunk_bytes = 1 << 20;
  /// How long the sender of a handoff waits for each chunk's answer.
  std::chrono::milliseconds handoff_timeout{10'000};
  /// How long one wait for a partition's release (its pending commits)
  /// lasts. After that the agent asks again, up to 10 times, with the
  /// partition served nowhere meanwhile; only then does it give up and serve
  /// it again (after the release finished).
  std::chrono::milliseconds release_timeout{60'000};
  /// Directory for exported and received partition files; created when
  /// missing.
  std::string handoff_dir;
  /// Whether this silo moves partitions to balance the cluster.
  bool rebalance = true;
  /// Re-reads the table and the map at least this often, even without a
  /// change notification.
  std::chrono::milliseconds refresh_interval{2'000};

  /// Returns `invalid_config` naming the first bad field.
  caf::error validate() const;
};

/// A silo's view of the cluster, for `granary cluster status`.
struct cluster_view {
  membership_table table;
  partition_map map;
};

/// Renders `view` as the JSON body of `GET /v1/cluster` (without the
/// cluster id): `"silos":[{silo_id, status, address, gateway,
/// incarnation, partitions, owned}], "table_version", "map_version"`.
std::string to_json_fields(const cluster_view& view);

/// Keeps one silo in its cluster: membership, failure detection, the
/// partition map and partition handoff.
///
/// - **Join.** The silo writes its row as `joining` with a new
///   incarnation, pings the live silos to prove it can reach them and then
///   marks itself `active`. The first silo of a new cluster writes the
///   partition map with every partition at epoch 1 on itself.
/// - **Failure detection.** Every silo pings every other live silo each
///   `probe_interval`. After `missed_probes` unanswered pings in a row it
///   adds its vote to the suspect's row; the vote that reaches
///   `votes_needed` fresh votes also marks the row `dead`, in the same
///   compare-and-set. A silo votes only while it plus the peers answering
///   its probes are a majority of the live silos, so a cut kills no side
///   without one. A silo that reads its own row as dead, or as a newer
///   incarnation of itself, stops at once (`on_declared_dead`).
/// - **Routing.** The agent feeds the router from the map: partitions it
///   owns are served here, those of dead silos are unavailable (their
///   messages wait in the senders' outboxes).
/// - **Handoff.** When `plan_moves` has a move from this silo, it routes
///   the partition nowhere, releases it in the silo, exports its records,
///   ships them in `HandoffChunk` frames, waits for the new owner to import
///   them durably, then writes the map with the new owner at epoch + 1 and
///   drops its own copy. If anything fails before the map write, it serves
///   the partition again at the old epoch. Once the map write was tried,
///   only the map decides: while the write's outcome is unknown (the store
///   did not answer), the partition is served nowhere and the map is asked
///   again until it tells.
///
/// Threads: one for probes and membership, one for sending handoffs, one
/// for receiving them; the transport's threads only enqueue. The decisions
/// live in parts private to this module (see cluster/README.md): the pure
/// failure detector, the move planner, the handoff sender and receiver.
class cluster_agent {
public:
  /// Called once when this silo learns it was declared dead.
  using dead_fn = std::function<void(const std::string& why)>;

  /// An agent for the silo `cfg.self`. `clk` gives the wall-clock time of
  /// votes, heartbeats and row start times (default: the system clock).
  cluster_agent(agent_config cfg, membership_store& store, transport& net,
                transport_router& router,
                std::shared_ptr<granary::clock> clk = nullptr);

  /// Stops the agent's threads (see `stop`).
  ~cluster_agent();

  cluster_agent(const cluster_agent&) = delete;
  cluster_agent& operator=(const cluster_agent&) = delete;

  /// Writes this silo's row as `joining`, reads (or creates) the partition
  /// map, checks that `data` holds every partition the map gives this silo
  /// and routes them here. Call before starting the silo on `data`. Fails
  /// with `invalid_config` when the map gives this silo a partition its
  /// data directory does not hold (a wrong or wiped data directory), so
  /// that nothing is served from missing data.
  caf::error join(storage& data, uint64_t incarnation);

  /// Proves connectivity, marks the row `active` and starts probing,
  /// watching and rebalancing. `local` must have been started after `join`.
  caf::error activate(silo& local);

  /// Graceful leave: marks the row `shutting_down`, hands every partition
  /// to the other active silos, then marks the row `dead`. Gives up on
  /// handoffs after `limit` (the partitions stay here, served again when
  /// the silo restarts). Call before stopping the silo.
  caf::error leave(std::chrono::milliseconds limit);

  /// Sets what happens when this silo learns it was declared dead (before
  /// `join`); the default logs and exits the process with status 3.
  void on_declared_dead(dead_fn fn);

  /// Handles the frames the router leaves to the agent (pings, pongs and
  /// handoff frames); install with `transport_router::on_other_frame`.
  void on_frame(const peer_info& from, Frame&& frame);

  /// Asks for a re-read of the table and the map (for instance when a peer
  /// refused a message because of a stale route). Never blocks.
  void refresh_soon();

  /// The last table and map this agent read.
  cluster_view view() const;

  /// The gateway address of the silo that owns partition `p` when that is
  /// another silo, by the last map read; empty otherwise.
  std::string gateway_of(uint32_t p) const;

  /// Partitions this silo serves now.
  std::vector<uint32_t> served() const;

  /// Stops the threads; pending handoffs are abandoned (the partition
  /// stays with its owner). Idempotent.
  void stop();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace granary::cluster

#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>

#include "runtime/admin.hpp"
#include "runtime/clock.hpp"
#include "runtime/commit_loop.hpp"
#include "runtime/grain_base.hpp"
#include "runtime/grain_id.hpp"
#include "runtime/remote.hpp"
#include "runtime/services.hpp"
#include "runtime/storage.hpp"

namespace granary::wire {
class DeadLetter;
class Envelope;
} // namespace granary::wire

namespace granary {

/// Tunables of one silo. Every queue has a bound here.
struct silo_config {
  /// Partitions of the key space; fixed when the data directory is created.
  uint32_t partitions = 64;
  /// CAF scheduler threads. CAF's own default is max(cores, 4).
  size_t threads = 2;
  /// CAF scheduler policy: "sharing" or "stealing". Work-stealing with few
  /// threads stalls on large fan-outs in CAF 0.17, hence the default.
  std::string scheduler_policy = "sharing";
  /// Messages a partition handles before it yields its thread. CAF 0.17's
  /// default (unbounded) lets one busy partition starve the others; 100
  /// raised 1M-grain fan-out from 0.43-0.65M to 0.82M deliveries/s and cut
  /// the driver's p99 from ~100 ms to ~20 ms on the reference machine.
  size_t max_throughput = 100;
  /// An activation idle this long is dropped from memory.
  std::chrono::milliseconds idle_age{std::chrono::minutes{10}};
  /// Requests waiting in one partition's mailbox before callers get
  /// `overloaded`.
  size_t max_queued_per_partition = 16'384;
  /// Durable messages waiting for one blocked grain before `overloaded`.
  size_t max_inbox_per_grain = 1'024;
  /// Undelivered durable messages one grain may have sent.
  size_t max_outbox_per_grain = 4'096;
  /// Turns of one partition waiting for their commit before `overloaded`.
  size_t max_uncommitted_per_partition = 32'768;
  /// Attempts at a durable message before it becomes a dead letter.
  uint32_t max_attempts = 5;
  /// First retry delay of a failed durable message; doubles per attempt.
  std::chrono::milliseconds retry_initial{20};
  /// Upper bound of the retry delay.
  std::chrono::milliseconds retry_max{2'000};
  /// Largest accepted payload, in bytes.
  size_t max_payload_bytes = 1 << 20;
  /// New durable work is refused while the data volume has less free space.
  uint64_t min_free_bytes = uint64_t{256} << 20;
  /// Operations merged into one durable write at most.
  size_t max_group_ops = 65'536;
  /// Set when the silo is part of a cluster: partitions it does not own
  /// are reached through this router (not owned; it must outlive the
  /// silo). It is in effect from the first recovered message on, so that
  /// no grain of another silo's partition is ever activated here.
  remote_router* router = nullptr;
  /// How long a transient call to a grain on another silo may take before
  /// the caller gets "partition unavailable".
  std::chrono::milliseconds remote_call_timeout{std::chrono::seconds{10}};
  /// Resend an unacknowledged outbox entry after this long.
  std::chrono::milliseconds redelivery_timeout{std::chrono::seconds{30}};
  /// An outbox entry refused because its partition is unavailable (its
  /// owner is dead) waits, parked, until the route to that partition
  /// changes, and at most this long (a backstop against a missed change).
  std::chrono::milliseconds parked_retry{std::chrono::seconds{10}};
  /// Longest sleep of a partition with pending deadlines; bounds how late
  /// a timer fires after the silo's clock jumps forward.
  std::chrono::milliseconds timer_poll{std::chrono::seconds{1}};
  /// Durable timers due within this window are held in memory; later ones
  /// wait in storage and are paged in by due time as the window reaches
  /// them. A larger window costs memory per timer it covers.
  std::chrono::milliseconds timer_window{std::chrono::seconds{60}};
  /// How long dedup records are kept (effectively-once window).
  std::chrono::milliseconds dedup_retention{std::chrono::hours{24 * 7}};
  /// How often each partition sweeps expired dedup records (a bounded page
  /// per sweep).
  std::chrono::milliseconds dedup_sweep_interval{std::chrono::minutes{1}};
  /// Services handed to grains (`turn::services`) and activities
  /// (`activity_context::services`); null: none.
  std::shared_ptr<const service_registry> services;
  /// Called once, from a partition's thread, when a storage error
  /// fail-stopped a partition: nothing stored can be trusted until the
  /// store is reopened. The host exits the process (status 4) so that its
  /// supervisor restarts it; empty: the failed partitions refuse work
  /// until the silo is restarted by hand.
  std::function<void(const caf::error&)> on_storage_failure;

  /// Checks every value; the error names the field and the problem.
  caf::error validate() const;
};

/// Maps registered grain type names to factories.
class grain_registry {
public:
  /// Registers `type_name`; fails when it is empty or already taken.
  caf::error add(std::string type_name, grain_factory factory);

  /// Returns the factory of `type_name`, or nullptr.
  const grain_factory* find(std::string_view type_name) const;

  /// Registered type names, sorted.
  std::vector<std::string> names() const;

private:
  std::map<std::string, grain_factory, std::less<>> factories_;
};

/// Counters of a running silo.
struct silo_stats {
  uint64_t turns = 0;
  uint64_t durable_turns = 0;
  uint64_t transient_turns = 0;
  uint64_t failed_turns = 0;
  uint64_t activations = 0;
  uint64_t deactivations = 0;
  uint64_t active = 0;
  uint64_t dead_letters = 0;
  uint64_t overloaded = 0;
  uint64_t duplicates = 0;
  uint64_t timers_fired = 0;
  uint64_t quarantined = 0;
  /// Housekeeping wake-ups of all partitions (timers, retries, sweeps).
  uint64_t ticks = 0;
  /// Timers held in memory by all partitions, waiting for their due time
  /// (only those due within `timer_window`; the others wait in storage).
  uint64_t timers_in_memory = 0;
  commit_stats commits;
};

namespace detail {
struct silo_core;
} // namespace detail

/// One silo: a CAF actor system hosting the partitions of the key space,
/// their grain activations, and the group-commit loop over a storage.
class silo {
public:
  /// Callback of a transient call; runs on a silo thread, must not block.
  using reply_handler = std::function<void(caf::expected<message_ptr>)>;

  /// Callback of a durable send: `caf::none` once the message is durable.
  using send_handler = std::function<void(const caf::error&)>;

  /// Opens `store`, recovers every partition and starts serving.
  static caf::expected<std::unique_ptr<silo>>
  start(silo_config cfg, grain_registry registry,
        std::unique_ptr<storage> store,
        std::shared_ptr<granary::clock> clk = make_system_clock());

  /// Stops the silo (see `stop`).
  ~silo();

  silo(const silo&) = delete;
  silo& operator=(const silo&) = delete;

  /// Stops accepting work, commits what is pending and shuts down.
  caf::error stop();

  /// Transient call: at most once, in memory. `reply` runs exactly once.
  void call_async(grain_id target, message_ptr msg, reply_handler reply);

  /// Accepts a durable message that another silo delivers (its outbox
  /// entry, or a client send it forwards): deduplicated by message id
  /// unless `fresh`, and `done` runs once it is durable here. A message this
  /// silo cannot run becomes a dead letter, as for local grain messages.
  void deliver_remote(std::shared_ptr<wire::Envelope> env, bool fresh,
                      send_handler done);

  /// Blocking transient call with a timeout.
  [[nodiscard]] caf::expected<message_ptr>
  call(grain_id target, message_ptr msg,
       std::chrono::milliseconds timeout = std::chrono::seconds{10});

  /// Durable send: `done` runs once the message is durably accepted.
  /// Resending with the same `msg_id` is deduplicated by the receiver
  /// (within `dedup_retention`). An empty `msg_id` gets a fresh id that no
  /// one can resend, so no dedup record is kept for it: pass your own id
  /// when you may retry after a lost acknowledgement.
  void send_async(grain_id target, const google::protobuf::Message& msg,
                  std::string msg_id, send_handler done);

  /// Blocking durable send.
  [[nodiscard]] caf::error
  send(grain_id target, const google::protobuf::Message& msg,
       std::string msg_id = {},
       std::chrono::milliseconds timeout = std::chrono::seconds{30});

  /// Lists up to `limit` dead letters.
  caf::expected<std::vector<dead_letter_info>> dead_letters(size_t limit
                                                            = 1'000);

  /// Moves a dead letter back into its grain's inbox with fresh attempts.
  [[nodiscard]] caf::error requeue_dead_letter(const grain_id& target,
                                               const std::string& msg_id);

  /// Deletes a dead letter.
  [[nodiscard]] caf::error drop_dead_letter(const grain_id& target,
                                            const std::string& msg_id);

  /// Reads the committed state record of grain `id` (nullopt when it has
  /// none); an activation may have run ahead of it in memory.
  caf::expected<std::optional<std::string>> read_state(const grain_id& id);

  /// Reads a page of committed states of grain type `type` (see
  /// `scan_grain_states`).
  caf::expected<state_page> scan_states(std::string_view type,
                                        std::string_view cursor, size_t limit);

  /// Starts serving partition `p`, which this silo's router now says it
  /// owns: recovers its records from storage (for instance after they were
  /// imported by a handoff). Idempotent. During a release of `p` it
  /// waits for the release to finish, then recovers.
  caf::error acquire_partition(uint32_t p);

  /// Stops serving partition `p` for a handoff: commits what is pending,
  /// forgets its activations and returns once nothing of it is in flight.
  /// Until it is acquired again, its work is refused with `not_owner`.
  /// Route `p` elsewhere first, so that no new work arrives. Fails with
  /// `errc::timeout` when the release has not finished after `timeout`; it
  /// goes on, and a later `release_partition` waits for it, as does an
  /// `acquire_partition`, which then recovers the partition.
  caf::error release_partition(uint32_t p, std::chrono::milliseconds timeout
                                           = std::chrono::seconds{60});

  /// Tells the silo that the route to partition `p` changed (a new owner,
  /// epoch or availability): outbox entries parked while `p` was
  /// unavailable are retried now. Never blocks; the router calls it from
  /// any thread.
  void route_changed(uint32_t p);

  /// The silo's storage, for exporting and importing partitions.
  storage& store();

  /// Returns current counters.
  silo_stats stats() const;

  /// The first storage failure, if the silo has fail-stopped.
  caf::error failure() const;

  /// The silo's configuration.
  const silo_config& config() const;

  /// The services of `silo_config::services` (empty when none were given).
  const service_registry& services() const;

  /// The underlying actor system (for benchmarks and tooling).
  caf::actor_system& system();

  /// Partition count, fixed at creation.
  uint32_t partitions() const;

private:
  explicit silo(std::unique_ptr<detail::silo_core> core);

  std::unique_ptr<detail::silo_core> core_;
};

} // namespace granary

#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

namespace granary::cluster {

/// Lifecycle of a silo in the membership table. A silo only moves forward:
/// joining -> active -> shutting_down -> dead (any state may go to dead).
enum class silo_status : uint8_t {
  /// Started, proving connectivity to the active silos; owns nothing yet.
  joining,
  /// Serving; may own partitions.
  active,
  /// Draining before a clean stop.
  shutting_down,
  /// Stopped or declared dead by its peers; a silo that reads itself as
  /// dead must kill itself.
  dead,
};

/// Returns the name of `x`, e.g. "active".
const char* to_string(silo_status x);

/// One silo's vote that another silo is dead.
struct suspicion_vote {
  /// The voting silo.
  std::string voter;
  /// When the vote was cast, milliseconds since the epoch.
  int64_t time_ms = 0;
  /// The incarnation of the suspect that the vote is about: a restarted
  /// silo's row is not killed by votes against its previous run.
  uint64_t incarnation = 0;

  friend bool operator==(const suspicion_vote&, const suspicion_vote&)
      = default;
};

/// One row of the membership table: one silo process (an incarnation).
struct membership_entry {
  /// Cluster-unique name of the silo; the row key.
  std::string silo_id;
  /// host:port for silo-to-silo traffic.
  std::string address;
  /// host:port of the client gateway.
  std::string gateway_address;
  /// Where the silo is in its lifecycle.
  silo_status status = silo_status::joining;
  /// When the silo process started, milliseconds since the epoch.
  int64_t start_time_ms = 0;
  /// Grows with every start of the silo process.
  uint64_t incarnation = 0;
  /// Last "I am alive" heartbeat written by the silo itself, milliseconds
  /// since the epoch. Written by `insert` and `update_i_am_alive` only.
  int64_t i_am_alive_ms = 0;
  /// Votes of other silos that this one is dead.
  std::vector<suspicion_vote> suspicions;
  /// Row version (etag), assigned by the store on every `insert` and
  /// `update` of the row; ignored when writing. `update_i_am_alive` leaves
  /// it unchanged, so that heartbeats never make a vote's CAS fail.
  uint64_t version = 0;
};

/// A consistent snapshot of the membership table (or of one row of it).
struct membership_table {
  /// The rows, ordered by silo id.
  std::vector<membership_entry> rows;
  /// Table version: grows (not necessarily by one) with every successful
  /// `insert`, `update` and `delete_dead`; 0 for a table never written.
  uint64_t version = 0;

  /// Returns the row of `silo_id`, or nullptr.
  const membership_entry* find(const std::string& silo_id) const;
};

/// Role of a silo in the replica set of a partition.
enum class replica_role : uint8_t {
  /// Owns the partition: activates its grains and commits its turns.
  primary,
  /// Receives the primary's committed batches; promoted on failover.
  follower,
};

/// Returns the name of `x`, e.g. "primary".
const char* to_string(replica_role x);

/// One silo in the replica set of a partition.
struct partition_owner {
  /// The silo.
  std::string silo_id;
  /// Its role for this partition.
  replica_role role = replica_role::primary;

  friend bool operator==(const partition_owner&, const partition_owner&)
      = default;
};

/// Who owns one partition.
///
/// Today every partition has exactly one owner, the primary. The owners are
/// a list with roles so that followers (replication, issue "Replication and
/// failover") can be added without changing the format: at most one owner
/// is `primary`; any number are `follower`s. Promoting a follower means
/// writing a map in which it is the primary with a higher epoch.
struct partition_assignment {
  /// Index of the partition, in [0, partition_count).
  uint32_t partition = 0;
  /// Fences stale owners: must grow whenever `owners` changes, and never
  /// shrinks. A silo only serves a partition at the epoch it was given.
  uint64_t epoch = 0;
  /// Replica set; empty while the partition is unassigned.
  std::vector<partition_owner> owners;

  /// Returns the silo id of the primary, or nullptr when there is none.
  const std::string* primary() const;

  friend bool operator==(const partition_assignment&,
                         const partition_assignment&)
      = default;
};

/// The partition map: partition -> owners and epoch. Lives in the
/// membership store next to the table, with its own version.
struct partition_map {
  /// Number of partitions, fixed at cluster creation; 0 for a map never
  /// written.
  uint32_t partition_count = 0;
  /// One assignment per partition, indexed by partition number
  /// (`partitions[i].partition == i`).
  std::vector<partition_assignment> partitions;
  /// Version assigned by the store on every write; ignored when writing;
  /// 0 for a map never written.
  uint64_t version = 0;
};

/// Checks that `next` is a well-formed map and a legal successor of
/// `current`: one assignment per partition in order, at most one primary
/// and no duplicate silo per partition, epochs never decrease and grow
/// whenever the owners of a partition change, and the partition count stays
/// the same once set. Fails with `errc::invalid_argument` naming the
/// partition.
caf::error validate_partition_map_change(const partition_map& current,
                                         const partition_map& next);

/// Checks that `entry` can be written: a non-empty silo id of at most 256
/// printable characters without '/' or whitespace. Fails with
/// `errc::invalid_argument`.
caf::error validate_entry(const membership_entry& entry);

/// Outcome of a conditional write that reached the store.
///
/// Losing a compare-and-set race is an expected outcome, not an error, so
/// it is reported here (as in Orleans' IMembershipTable, whose writes return
/// false) and the caller re-reads and retries. `caf::expected` errors mean
/// the store could not be asked or answered (unreachable, timeout, I/O
/// error, bad input); the outcome of a write that failed with `timeout` or
/// `storage_failure` is unknown, and the caller re-reads to find out.
enum class write_status : uint8_t {
  /// The write happened.
  applied,
  /// `insert`: the silo id has a row already.
  row_exists,
  /// `update`: the silo id has no row.
  row_missing,
  /// `update`: the row changed since `expected_row_version`.
  row_version_conflict,
  /// The table changed since `expected_table_version`.
  table_version_conflict,
  /// `write_partition_map`: the map changed since `expected_version`.
  map_version_conflict,
};

/// Returns the name of `x`, e.g. "row_exists".
const char* to_string(write_status x);

/// Result of `insert`, `update` and `write_partition_map`.
struct write_result {
  /// What happened.
  write_status status = write_status::applied;
  /// After success: the new version, i.e. the new table version (which is
  /// also the written row's new version) or the new partition-map version.
  /// After a conflict: the current table (or map) version.
  uint64_t version = 0;

  /// Returns whether the write happened.
  bool applied() const noexcept {
    return status == write_status::applied;
  }
};

/// What changed in the store.
enum class membership_change_kind : uint8_t {
  /// The membership table (not sent for `update_i_am_alive`).
  table,
  /// The partition map.
  partition_map,
};

/// A change notification: the kind and the version it created.
struct membership_change {
  /// What changed.
  membership_change_kind kind = membership_change_kind::table;
  /// The new table or map version.
  uint64_t version = 0;
};

/// Receives change notifications. Notifications are hints to re-read: calls
/// are serialized, versions per kind only grow, and several changes may be
/// coalesced into one call with the latest version.
using membership_watcher = std::function<void(const membership_change&)>;

/// Keeps a watch alive; destroying or cancelling it unsubscribes.
///
/// After `cancel` returns, the watcher is not running and is never called
/// again. Do not cancel (or destroy) a token from inside its own watcher.
/// A token may outlive its store.
class watch_token {
public:
  /// An empty token.
  watch_token() noexcept = default;

  /// A token that runs `cancel` once.
  explicit watch_token(std::function<void()> cancel);

  /// Cancels the watch.
  ~watch_token();

  watch_token(watch_token&& other) noexcept;

  watch_token& operator=(watch_token&& other) noexcept;

  watch_token(const watch_token&) = delete;

  watch_token& operator=(const watch_token&) = delete;

  /// Unsubscribes now; idempotent.
  void cancel();

  /// Returns whether the token still holds a subscription.
  bool active() const noexcept {
    return static_cast<bool>(cancel_);
  }

private:
  std::function<void()> cancel_;
};

/// The membership store: a versioned table of silos plus the partition map,
/// modelled on Orleans' IMembershipTable.
///
/// Every write of the table is a compare-and-set against the table version,
/// so that all silos agree on one order of membership changes; `update` also
/// compares the row version. Only `update_i_am_alive` is unconditional.
///
/// All member functions are thread-safe and bounded in time (see the
/// providers' settings). Errors are `errc::invalid_argument` for bad input,
/// `errc::not_found` for a missing row where one is required,
/// `errc::storage_failure` / `errc::timeout` when the store cannot be reached
/// or written, and `errc::corrupt_record` for undecodable stored data.
class membership_store {
public:
  virtual ~membership_store();

  /// Reads all rows and the table version as one snapshot.
  virtual caf::expected<membership_table> read_all() = 0;

  /// Reads the row of `silo_id` (zero or one row) and the table version as
  /// one snapshot.
  virtual caf::expected<membership_table> read(const std::string& silo_id) = 0;

  /// Adds a row for a silo id that has none, if the table version is still
  /// `expected_table_version`. Writes `entry.i_am_alive_ms` too.
  virtual caf::expected<write_result> insert(const membership_entry& entry,
                                             uint64_t expected_table_version)
      = 0;

  /// Replaces the row of `entry.silo_id` if its version is still
  /// `expected_row_version` and the table version is still
  /// `expected_table_version`. Leaves the "I am alive" timestamp alone.
  virtual caf::expected<write_result> update(const membership_entry& entry,
                                             uint64_t expected_row_version,
                                             uint64_t expected_table_version)
      = 0;

  /// Sets the "I am alive" timestamp of an existing row, unconditionally;
  /// changes neither the row nor the table version. Fails with
  /// `errc::not_found` when the silo has no row.
  virtual caf::error update_i_am_alive(const std::string& silo_id,
                                       int64_t now_ms)
      = 0;

  /// Deletes the rows of dead silos whose last sign of life (the later of
  /// start time and "I am alive") is older than `older_than_ms`, and returns
  /// how many it deleted. Bumps the table version when it deletes any.
  virtual caf::expected<size_t> delete_dead(int64_t older_than_ms) = 0;

  /// Calls `watcher` after every later change of the table or of the
  /// partition map (see `membership_watcher`), until the token is cancelled.
  /// Changes made before `watch` returns may or may not be reported: watch
  /// first, then read.
  virtual caf::expected<watch_token> watch(membership_watcher watcher) = 0;

  /// Reads the partition map; version 0 and no partitions when it was
  /// never written.
  virtual caf::expected<partition_map> read_partition_map() = 0;

  /// Replaces the partition map if its version is still `expected_version`
  /// and `map` is a legal successor (see `validate_partition_map_change`).
  virtual caf::expected<write_result>
  write_partition_map(const partition_map& map, uint64_t expected_version) = 0;
};

} // namespace granary::cluster

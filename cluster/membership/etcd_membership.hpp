#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cluster/membership/membership.hpp"

namespace granary::cluster {

class etcd_client;
class etcd_stream;
class watcher_list;

/// Settings of an `etcd_membership`.
struct etcd_membership_config {
  /// "host:port" of etcd v3 client URLs (an "http://" prefix is accepted),
  /// one per etcd member; requests fail over from one to the next (see
  /// `etcd_client`).
  std::vector<std::string> endpoints = {"127.0.0.1:2379"};
  /// Selects the key prefix "<key_root>/<cluster_id>/"; must be non-empty,
  /// without '/' or whitespace.
  std::string cluster_id;
  /// First component of every key.
  std::string key_root = "/granary";
  /// Bounds every request to one etcd endpoint.
  std::chrono::milliseconds request_timeout{2000};
  /// Largest number of rows `read_all` accepts; more is an error.
  size_t max_rows = 10000;
  /// First delay before the watch reconnects after a failure.
  std::chrono::milliseconds watch_retry_initial{50};
  /// Longest delay between watch reconnects.
  std::chrono::milliseconds watch_retry_max{2000};
};

/// The membership store in etcd 3.4+, reached through its v3 JSON gateway
/// (HTTP/1.1 on the client port).
///
/// Keys, below P = "<key_root>/<cluster_id>/":
/// - P "meta/table_version": touched by every table write; its
///   `mod_revision` is the table version;
/// - P "meta/partition_map": the partition map as JSON; its `mod_revision`
///   is the map version;
/// - P "silos/<silo id>": the row as JSON (a `MembershipRow` without
///   version and timestamp); its `mod_revision` is the row version;
/// - P "alive/<silo id>": the "I am alive" timestamp, decimal milliseconds.
///
/// Every conditional write is one etcd txn that compares the
/// `mod_revision`s (and, for inserts, the absence of the row) and, when it
/// succeeds, puts the row and "meta/table_version" together, so the row and
/// the table get the same new version: the txn's revision. Reads of several
/// keys are one range or one txn, i.e. one snapshot. The heartbeat lives in
/// a key of its own so that it never changes a row version. No lease is
/// used: a dead silo's row must stay (it fences the old incarnation) until
/// `delete_dead` removes it, and liveness is judged from the timestamps and
/// suspicion votes, as in Orleans.
///
/// `watch` starts one background thread per store, which keeps a streaming
/// POST /v3/watch open on P "meta/" and resumes after the last revision it
/// saw when the connection fails (retry with exponential backoff between
/// `watch_retry_initial` and `watch_retry_max`), at the endpoint that
/// answered last first, then the others. When etcd has compacted
/// that revision, it reads the current versions and reports them instead.
/// The destructor stops and joins the thread.
class etcd_membership final : public membership_store {
public:
  /// Creates the store and checks that etcd answers. Fails with
  /// `errc::invalid_config` for bad settings and `errc::storage_failure` or
  /// `errc::timeout`, naming the endpoint, when etcd cannot be reached.
  static caf::expected<std::unique_ptr<etcd_membership>>
  open(const etcd_membership_config& cfg);

  /// Stops the watch thread.
  ~etcd_membership() override;

  etcd_membership(const etcd_membership&) = delete;

  etcd_membership& operator=(const etcd_membership&) = delete;

  caf::expected<membership_table> read_all() override;

  caf::expected<membership_table> read(const std::string& silo_id) override;

  caf::expected<write_result> insert(const membership_entry& entry,
                                     uint64_t expected_table_version) override;

  caf::expected<write_result> update(const membership_entry& entry,
                                     uint64_t expected_row_version,
                                     uint64_t expected_table_version) override;

  caf::error update_i_am_alive(const std::string& silo_id,
                               int64_t now_ms) override;

  caf::expected<size_t> delete_dead(int64_t older_than_ms) override;

  caf::expected<watch_token> watch(membership_watcher watcher) override;

  caf::expected<partition_map> read_partition_map() override;

  caf::expected<write_result>
  write_partition_map(const partition_map& map,
                      uint64_t expected_version) override;

  /// Returns the key prefix of this cluster, e.g. "/granary/prod/".
  const std::string& prefix() const noexcept {
    return prefix_;
  }

private:
  struct snapshot;

  explicit etcd_membership(etcd_membership_config cfg);

  caf::expected<snapshot> read_snapshot();

  void watch_loop(int64_t start_revision);

  caf::error resync_watchers(int64_t& next_revision);

  std::string row_key(const std::string& silo_id) const;

  std::string alive_key(const std::string& silo_id) const;

  etcd_membership_config cfg_;
  std::string prefix_;
  std::string table_version_key_;
  std::string partition_map_key_;
  std::unique_ptr<etcd_client> client_;
  std::shared_ptr<watcher_list> watchers_;
  // Guards the watch thread's state below.
  std::mutex watch_mtx_;
  std::condition_variable watch_cv_;
  bool stopping_ = false;
  std::shared_ptr<etcd_stream> stream_;
  std::thread watch_thread_;
};

} // namespace granary::cluster

#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "cluster/membership/membership.hpp"
#include "runtime/sys.hpp"

namespace rocksdb {
class DB;
} // namespace rocksdb

namespace granary::cluster {

class watcher_list;

/// Settings of an `embedded_membership`.
struct embedded_membership_config {
  /// Directory of the store's own RocksDB instance, e.g.
  /// "<data_dir>/membership"; created when missing.
  std::string dir;
  /// Keeps the table in memory only, without RocksDB (`dir` is then just
  /// its name in messages): for the deterministic simulation, where the
  /// store stands for an external service that outlives every silo.
  bool in_memory = false;
};

/// The development default: the membership table and the partition map in
/// a RocksDB directory of their own, in this process.
///
/// Keys (default column family): "meta/revision" (u64, bumped by every
/// write), "meta/table_version" (u64), "meta/partition_map" (a
/// `PartitionMapRecord`) and "silos/<silo id>" (a `MembershipRow`). Versions
/// are store revisions, as in etcd: a table write sets both the table
/// version and the row version to the next revision.
///
/// Every write is one `sync = true` RocksDB write, made under one mutex; the
/// store keeps a copy of the table in memory for reads. After a failed write
/// the store is fail-stopped (its outcome is unknown): later writes fail
/// with `errc::storage_failure` until the store is reopened. Watchers run on
/// the writing thread, after the write and outside the store's lock.
///
/// `membership_service` (remote_membership.hpp) serves it to other silos.
class embedded_membership final : public membership_store {
public:
  /// Opens (or creates) the store in `cfg.dir`. Fails with
  /// `errc::invalid_config` for an empty path, `errc::data_dir_locked` when
  /// another instance holds the directory, `errc::corrupt_record` for
  /// undecodable records and `errc::storage_failure` otherwise.
  static caf::expected<std::unique_ptr<embedded_membership>>
  open(const embedded_membership_config& cfg);

  /// Closes the database.
  ~embedded_membership() override;

  embedded_membership(const embedded_membership&) = delete;

  embedded_membership& operator=(const embedded_membership&) = delete;

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

  /// Returns the directory of the store.
  const std::string& dir() const noexcept {
    return dir_;
  }

private:
  struct batch;

  explicit embedded_membership(std::string dir);

  // Writes `b` synchronously; requires mtx_. Fail-stops on error.
  caf::error write(batch& b);

  std::string dir_;
  std::unique_ptr<rocksdb::DB> db_;
  std::shared_ptr<watcher_list> watchers_;
  // Guards the cache and all writes.
  sys::mutex mtx_;
  bool failed_ = false;
  uint64_t revision_ = 0;
  uint64_t table_version_ = 0;
  std::map<std::string, membership_entry> rows_;
  partition_map map_;
};

} // namespace granary::cluster

#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "runtime/storage.hpp"

namespace rocksdb {
class ColumnFamilyHandle;
class DB;
class Env;
} // namespace rocksdb

namespace granary {

/// Settings for opening a RocksDB-backed store.
struct rocksdb_config {
  /// Directory of the RocksDB instance; must not be empty.
  std::string data_dir;
  /// Creates the directory and the database when they do not exist yet.
  /// When false, a missing directory or database is `errc::not_found` and
  /// nothing is created.
  bool create_if_missing = true;
  /// Opens for reading only: nothing in the directory is created or
  /// changed (no log, manifest or WAL is written), every write fails with
  /// `errc::invalid_argument`, and `create_if_missing` is ignored. A
  /// directory that a running silo holds is still `errc::data_dir_locked`.
  bool read_only = false;
  /// Size of the LRU block cache shared by all column families.
  size_t block_cache_bytes = 64 << 20;
  /// Environment for all file I/O; nullptr selects RocksDB's default. Tests
  /// pass a wrapper that injects write and fsync errors. Must outlive the
  /// store.
  rocksdb::Env* env = nullptr;
};

/// The production storage: one RocksDB instance per silo with one column
/// family per `column`, each named by `to_string(column)`. The meta column
/// uses its own column family "meta" rather than RocksDB's "default" family,
/// so that every column is named alike and can be dumped or dropped by name;
/// "default" is opened (RocksDB requires it) but holds nothing.
///
/// Every commit is one `sync = true` write. After the first failed write the
/// store is fail-stopped: later commits fail at once, because the outcome of
/// the failed write is unknown and Debian's RocksDB leaves the database
/// read-only after a failed WAL fsync. The silo must reopen the store.
///
/// All member functions are safe to call from several threads.
class rocksdb_storage : public storage {
public:
  /// Opens (or creates) the database in `cfg.data_dir`. Fails with
  /// `errc::invalid_config` for an empty directory, `errc::not_found` for
  /// a missing one that it may not create, `errc::data_dir_locked` when
  /// another process or instance holds the directory, and
  /// `errc::storage_failure` otherwise.
  static caf::expected<std::unique_ptr<rocksdb_storage>>
  open(const rocksdb_config& cfg);

  /// Closes the database cleanly.
  ~rocksdb_storage() override;

  rocksdb_storage(const rocksdb_storage&) = delete;

  rocksdb_storage& operator=(const rocksdb_storage&) = delete;

  caf::expected<std::optional<std::string>> get(column col,
                                                std::string_view key) override;

  caf::error commit(std::span<const write_batch* const> batches) override;

  caf::error scan(column col, std::string_view prefix, std::string_view start,
                  size_t limit, const scan_visitor& visit) override;

  std::optional<uint64_t> free_bytes() override;

  /// Writes one SST file per non-empty column of partition `p`, named
  /// `<dir>/p<p>-<column>.sst`, from one snapshot of the database. Fails
  /// with `errc::invalid_argument` for a partition above 0xffff or a `dir`
  /// that is not a directory and with `errc::storage_failure` when reading
  /// or writing fails, removing any file it wrote.
  caf::expected<std::vector<partition_file>>
  export_partition(uint32_t p, const std::string& dir) override;

  /// Checks every file (readable SST, valid checksums, only puts of
  /// partition `p`, the stated record count) before it deletes the range of
  /// `p` in every column but `meta` with one synced write, then ingests all
  /// files atomically. A failed write or ingestion fail-stops the store.
  caf::error import_partition(uint32_t p,
                              std::span<const partition_file> files) override;

  /// Deletes the range of `p` in every column but `meta` with one synced
  /// write. A failed write fail-stops the store.
  caf::error drop_partition(uint32_t p) override;

  /// Number of successful commits, each of which synced the WAL once.
  uint64_t wal_syncs() const noexcept {
    return wal_syncs_.load(std::memory_order_relaxed);
  }

  /// Returns true once a write failed and the store is fail-stopped.
  bool failed() const noexcept {
    return failed_.load(std::memory_order_acquire);
  }

  /// Returns the data directory.
  const std::string& data_dir() const noexcept {
    return data_dir_;
  }

private:
  explicit rocksdb_storage(std::string data_dir);

  rocksdb::ColumnFamilyHandle* handle(column col) const noexcept {
    return columns_[static_cast<size_t>(col)];
  }

  // Returns the error for any write after the store is fail-stopped.
  caf::error fail_stopped_error();

  // Returns the error for any write to a store opened read-only.
  caf::error read_only_error() const;

  // Fail-stops the store after the failed write `what` and returns its
  // storage failure.
  caf::error fail_stop(const std::string& what, const std::string& status);

  // Checks that `file` is an SST that `export_partition` could have made
  // for partition `p`; fails with `errc::corrupt_record` otherwise.
  caf::error check_partition_file(uint32_t p, const partition_file& file);

  // Deletes the range of partition `p` in every column but meta with one
  // synced write.
  caf::error erase_partition(uint32_t p, const char* what);

  std::string data_dir_;
  std::unique_ptr<rocksdb::DB> db_;
  // All opened handles (ours, "default" and any unknown families found on
  // disk); all must be destroyed before the DB is closed.
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  // Indexed by column; points into handles_.
  std::vector<rocksdb::ColumnFamilyHandle*> columns_;
  std::atomic<bool> failed_{false};
  std::atomic<uint64_t> wal_syncs_{0};
  bool read_only_ = false;
  // Guards first_error_, which is written once when failed_ is set.
  std::mutex error_mtx_;
  std::string first_error_;
};

} // namespace granary

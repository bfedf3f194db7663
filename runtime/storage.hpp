#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "runtime/assert.hpp"
#include "runtime/keys.hpp"

namespace granary {

/// One put or delete inside a write batch.
struct write_op {
  column col;
  bool erase;
  std::string key;
  std::string value;
};

/// The operations of one or more turns, applied atomically. The runtime
/// builds batches; a storage implementation only applies them.
class write_batch {
public:
  /// Adds a put of `value` under `key` in `col`.
  void put(column col, std::string key, std::string value) {
    bytes_ += key.size() + value.size();
    ops_.push_back(write_op{col, false, std::move(key), std::move(value)});
  }

  /// Adds a delete of `key` in `col`.
  void erase(column col, std::string key) {
    bytes_ += key.size();
    ops_.push_back(write_op{col, true, std::move(key), {}});
  }

  /// Returns the operations in order.
  const std::vector<write_op>& ops() const noexcept {
    return ops_;
  }

  /// Returns the number of operations.
  size_t size() const noexcept {
    return ops_.size();
  }

  /// Returns the summed size of keys and values.
  size_t bytes() const noexcept {
    return bytes_;
  }

  /// Returns true when the batch holds no operation.
  bool empty() const noexcept {
    return ops_.empty();
  }

  /// Removes the operations at the positions that `drop` marks; `drop` has
  /// one entry per operation.
  void drop_marked(const std::vector<bool>& drop) {
    GRANARY_ASSERT(drop.size() == ops_.size(),
                   "drop_marked needs one mark per operation");
    size_t out = 0;
    bytes_ = 0;
    for (size_t i = 0; i < ops_.size(); ++i) {
      if (drop[i])
        continue;
      if (out != i)
        ops_[out] = std::move(ops_[i]);
      bytes_ += ops_[out].key.size() + ops_[out].value.size();
      ++out;
    }
    ops_.resize(out);
  }

  /// Makes room for `n` operations without reallocating.
  void reserve(size_t n) {
    ops_.reserve(n);
  }

  /// Removes all operations.
  void clear() noexcept {
    ops_.clear();
    bytes_ = 0;
  }

private:
  std::vector<write_op> ops_;
  size_t bytes_ = 0;
};

/// One file of an exported partition: the records of one column.
struct partition_file {
  /// The column the records belong to.
  column col = column::state;
  /// Absolute path of the file; its format belongs to the storage type.
  std::string path;
  /// Number of records in the file.
  uint64_t records = 0;
};

/// Checks the arguments of `storage::export_partition`: `p` must be a
/// valid partition and `dir` an existing directory. Returns `dir` made
/// absolute.
caf::expected<std::string> export_directory(uint32_t p, const std::string& dir);

/// Visitor for `storage::scan`; returns false to stop early.
using scan_visitor
    = std::function<bool(std::string_view key, std::string_view value)>;

/// The storage seam. The runtime knows no RocksDB: persistence implements
/// this interface, and tests use `memory_storage`.
class storage {
public:
  virtual ~storage();

  /// Reads one record; nullopt when absent.
  virtual caf::expected<std::optional<std::string>> get(column col,
                                                        std::string_view key)
      = 0;

  /// Applies all `batches` as one atomic write and returns only after it is
  /// durable (fsync'd). An error leaves the outcome unknown: callers treat
  /// it as fail-stop.
  virtual caf::error commit(std::span<const write_batch* const> batches) = 0;

  /// Visits, in key order, up to `limit` records of `col` whose keys begin
  /// with `prefix` and are greater than or equal to `start` (`start` may be
  /// empty).
  virtual caf::error scan(column col, std::string_view prefix,
                          std::string_view start, size_t limit,
                          const scan_visitor& visit)
      = 0;

  /// Free bytes on the volume holding the data; nullopt if not applicable.
  virtual std::optional<uint64_t> free_bytes() = 0;

  /// Writes every record of partition `p` (all columns but `meta`) into
  /// new files under the existing directory `dir`, at most one file per
  /// column and none for an empty column, and returns them. The caller
  /// must have stopped writing to `p`. The files are only meant for
  /// `import_partition` of the same storage type.
  virtual caf::expected<std::vector<partition_file>>
  export_partition(uint32_t p, const std::string& dir) = 0;

  /// Replaces every record of partition `p` with the records in `files`
  /// (made by `export_partition`) and returns once that is durable. Any
  /// record of `p` present before is gone afterwards, also when `files` is
  /// empty. Fails with `corrupt_record` for a file it cannot read, leaving
  /// `p` in an unspecified state that a later successful import or
  /// `drop_partition` replaces.
  virtual caf::error import_partition(uint32_t p,
                                      std::span<const partition_file> files)
      = 0;

  /// Deletes every record of partition `p` (all columns but `meta`) and
  /// returns once that is durable.
  virtual caf::error drop_partition(uint32_t p) = 0;
};

} // namespace granary

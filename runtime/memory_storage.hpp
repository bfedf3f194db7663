#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>

#include "runtime/storage.hpp"
#include "runtime/sys.hpp"

namespace granary {

/// In-memory storage for tests and the deterministic simulation. It can be
/// told to fail commits, to exercise the fail-stop path.
class memory_storage : public storage {
public:
  caf::expected<std::optional<std::string>> get(column col,
                                                std::string_view key) override;

  caf::error commit(std::span<const write_batch* const> batches) override;

  caf::error scan(column col, std::string_view prefix, std::string_view start,
                  size_t limit, const scan_visitor& visit) override;

  std::optional<uint64_t> free_bytes() override;

  /// Writes one file per non-empty column of partition `p`, named
  /// `<dir>/p<p>-<column>.part`: an 8-byte magic, the column byte, a
  /// big-endian 64-bit record count, then per record a big-endian 32-bit
  /// length and the bytes of the key, then the same for the value.
  caf::expected<std::vector<partition_file>>
  export_partition(uint32_t p, const std::string& dir) override;

  /// Parses every file completely before replacing partition `p` in one
  /// step. Fails like `commit` while `fail_commits` is set.
  caf::error import_partition(uint32_t p,
                              std::span<const partition_file> files) override;

  /// Deletes partition `p`. Fails like `commit` while `fail_commits` is
  /// set.
  caf::error drop_partition(uint32_t p) override;

  /// Makes every commit from now on fail with a storage failure.
  void fail_commits(bool value) {
    fail_commits_ = value;
  }

  /// Makes every commit take at least `d` (a slow disk).
  void set_commit_delay(std::chrono::milliseconds d) {
    commit_delay_ms_ = d.count();
  }

  /// Pretends that only `bytes` are free (nullopt: unknown).
  void set_free_bytes(std::optional<uint64_t> bytes);

  /// Number of successful commits so far.
  uint64_t commits() const {
    return commits_;
  }

  /// Number of records in `col`.
  size_t count(column col) const;

  /// Writes a raw record directly, bypassing the runtime (for corruption
  /// tests).
  void poke(column col, std::string key, std::string value);

private:
  mutable sys::mutex mtx_;
  std::array<std::map<std::string, std::string, std::less<>>, column_count>
      data_;
  std::atomic<bool> fail_commits_{false};
  std::atomic<int64_t> commit_delay_ms_{0};
  std::optional<uint64_t> free_bytes_;
  std::atomic<uint64_t> commits_{0};
};

/// Storage that forwards to a shared `memory_storage`, so that a test can
/// stop a silo and start another one on the same data.
class shared_memory_storage : public storage {
public:
  explicit shared_memory_storage(std::shared_ptr<memory_storage> impl)
      : impl_(std::move(impl)) {}

  caf::expected<std::optional<std::string>> get(column col,
                                                std::string_view key) override {
    return impl_->get(col, key);
  }

  caf::error commit(std::span<const write_batch* const> batches) override {
    return impl_->commit(batches);
  }

  caf::error scan(column col, std::string_view prefix, std::string_view start,
                  size_t limit, const scan_visitor& visit) override {
    return impl_->scan(col, prefix, start, limit, visit);
  }

  std::optional<uint64_t> free_bytes() override {
    return impl_->free_bytes();
  }

  caf::expected<std::vector<partition_file>>
  export_partition(uint32_t p, const std::string& dir) override {
    return impl_->export_partition(p, dir);
  }

  caf::error import_partition(uint32_t p,
                              std::span<const partition_file> files) override {
    return impl_->import_partition(p, files);
  }

  caf::error drop_partition(uint32_t p) override {
    return impl_->drop_partition(p);
  }

private:
  std::shared_ptr<memory_storage> impl_;
};

} // namespace granary

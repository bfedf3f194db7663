#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>

#include "runtime/storage.hpp"

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
  mutable std::mutex mtx_;
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

private:
  std::shared_ptr<memory_storage> impl_;
};

} // namespace granary

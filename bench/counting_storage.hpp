#pragma once

// A storage that counts what it commits and reads, and the snapshots of
// a measured window that per-operation figures are taken from.

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "bench/measure.hpp"
#include "runtime/silo.hpp"
#include "runtime/storage.hpp"

namespace granary::bench {

/// What a `counting_storage` committed and read so far.
struct storage_counts {
  uint64_t reads = 0;
  uint64_t puts = 0;
  uint64_t deletes = 0;
  /// Key and value bytes of puts and deletes, all columns.
  uint64_t bytes = 0;
  /// Key and value bytes of puts, by column.
  std::array<uint64_t, column_count> put_bytes{};
};

/// Forwards to another storage and counts the operations and bytes of the
/// commits that succeeded, and the reads.
class counting_storage : public storage {
public:
  explicit counting_storage(std::unique_ptr<storage> inner)
      : inner_(std::move(inner)) {}

  caf::expected<std::optional<std::string>> get(column col,
                                                std::string_view key) override;

  caf::error commit(std::span<const write_batch* const> batches) override;

  caf::error scan(column col, std::string_view prefix, std::string_view start,
                  size_t limit, const scan_visitor& visit) override;

  std::optional<uint64_t> free_bytes() override;

  caf::expected<std::vector<partition_file>>
  export_partition(uint32_t p, const std::string& dir) override;

  caf::error import_partition(uint32_t p,
                              std::span<const partition_file> files) override;

  caf::error drop_partition(uint32_t p) override;

  /// The totals so far.
  storage_counts counts() const;

private:
  std::unique_ptr<storage> inner_;
  std::atomic<uint64_t> reads_{0};
  std::atomic<uint64_t> puts_{0};
  std::atomic<uint64_t> deletes_{0};
  std::atomic<uint64_t> bytes_{0};
  std::array<std::atomic<uint64_t>, column_count> put_bytes_{};
};

/// Opens a counted RocksDB storage in a fresh temporary directory under
/// `parent` (see `make_temp_dir`); `dir` removes it when it goes out of
/// scope, after the silo that owns the storage stopped.
caf::expected<std::unique_ptr<counting_storage>>
open_counting(const std::string& parent, const char* tag, temp_dir& dir);

/// Silo counters and storage counts at the opening and closing of a
/// measured window, for per-operation figures.
struct window_snapshots {
  silo_stats s0;
  silo_stats s1;
  storage_counts c0;
  storage_counts c1;
  int64_t s0_ns = 0;
  int64_t s1_ns = 0;

  /// Hooks that take the snapshots; `this` must outlive the run.
  timed_hooks hooks(silo& s, const counting_storage& counts);
};

} // namespace granary::bench

#include "bench/counting_storage.hpp"

#include "persistence/rocksdb_storage.hpp"

namespace granary::bench {

caf::expected<std::optional<std::string>>
counting_storage::get(column col, std::string_view key) {
  reads_.fetch_add(1, std::memory_order_relaxed);
  return inner_->get(col, key);
}

caf::error
counting_storage::commit(std::span<const write_batch* const> batches) {
  if (auto err = inner_->commit(batches))
    return err;
  // Summed locally first: this runs on the commit thread, between fsyncs.
  storage_counts add;
  for (auto* b : batches) {
    add.bytes += b->bytes();
    for (auto& op : b->ops()) {
      if (op.erase) {
        ++add.deletes;
        continue;
      }
      ++add.puts;
      add.put_bytes[static_cast<size_t>(op.col)]
          += op.key.size() + op.value.size();
    }
  }
  bytes_.fetch_add(add.bytes, std::memory_order_relaxed);
  puts_.fetch_add(add.puts, std::memory_order_relaxed);
  deletes_.fetch_add(add.deletes, std::memory_order_relaxed);
  for (size_t i = 0; i < column_count; ++i)
    put_bytes_[i].fetch_add(add.put_bytes[i], std::memory_order_relaxed);
  return caf::none;
}

caf::error counting_storage::scan(column col, std::string_view prefix,
                                  std::string_view start, size_t limit,
                                  const scan_visitor& visit) {
  return inner_->scan(col, prefix, start, limit, visit);
}

std::optional<uint64_t> counting_storage::free_bytes() {
  return inner_->free_bytes();
}

caf::expected<std::vector<partition_file>>
counting_storage::export_partition(uint32_t p, const std::string& dir) {
  return inner_->export_partition(p, dir);
}

caf::error
counting_storage::import_partition(uint32_t p,
                                   std::span<const partition_file> files) {
  return inner_->import_partition(p, files);
}

caf::error counting_storage::drop_partition(uint32_t p) {
  return inner_->drop_partition(p);
}

storage_counts counting_storage::counts() const {
  storage_counts out;
  out.reads = reads_.load(std::memory_order_relaxed);
  out.puts = puts_.load(std::memory_order_relaxed);
  out.deletes = deletes_.load(std::memory_order_relaxed);
  out.bytes = bytes_.load(std::memory_order_relaxed);
  for (size_t i = 0; i < column_count; ++i)
    out.put_bytes[i] = put_bytes_[i].load(std::memory_order_relaxed);
  return out;
}

caf::expected<std::unique_ptr<counting_storage>>
open_counting(const std::string& parent, const char* tag, temp_dir& dir) {
  auto path = make_temp_dir(parent, tag);
  if (!path)
    return std::move(path.error());
  dir.path = *path;
  auto store = rocksdb_storage::open({.data_dir = dir.path});
  if (!store)
    return std::move(store.error());
  return std::make_unique<counting_storage>(std::move(*store));
}

timed_hooks window_snapshots::hooks(silo& s, const counting_storage& counts) {
  timed_hooks out;
  out.window_opened = [this, &s, &counts] {
    s0 = s.stats();
    c0 = counts.counts();
    s0_ns = now_ns();
  };
  out.window_closed = [this, &s, &counts] {
    s1 = s.stats();
    c1 = counts.counts();
    s1_ns = now_ns();
  };
  return out;
}

} // namespace granary::bench

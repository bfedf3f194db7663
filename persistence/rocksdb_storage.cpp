#include "persistence/rocksdb_storage.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <filesystem>
#include <system_error>

#include <sys/statvfs.h>

#include <rocksdb/cache.h>
#include <rocksdb/convenience.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/status.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include "runtime/error.hpp"

namespace granary {

namespace {

constexpr std::array<column, column_count> all_columns = {
    column::meta,   column::state, column::inbox,        column::outbox,
    column::timers, column::dedup, column::dead_letters, column::journal,
};

rocksdb::Slice to_slice(std::string_view x) {
  return rocksdb::Slice{x.data(), x.size()};
}

std::string_view to_view(const rocksdb::Slice& x) {
  return std::string_view{x.data(), x.size()};
}

bool contains_nocase(std::string_view haystack, std::string_view needle) {
  auto i = std::search(haystack.begin(), haystack.end(), needle.begin(),
                       needle.end(), [](char a, char b) {
                         return std::tolower(static_cast<unsigned char>(a))
                                == std::tolower(static_cast<unsigned char>(b));
                       });
  return i != haystack.end();
}

// RocksDB reports a held LOCK file as an IOError. Another process yields
// "While lock file: <dir>/LOCK: Resource temporarily unavailable"; a second
// open inside the same process yields "lock hold by current process ...".
bool is_lock_error(const rocksdb::Status& st) {
  if (!st.IsIOError())
    return false;
  auto text = st.ToString();
  return contains_nocase(text, "lock")
         || contains_nocase(text, "Resource temporarily unavailable");
}

// Queue-like columns hold short-lived records that mostly die in the
// memtable or L0, so compressing them only burns CPU on the commit path.
bool is_short_lived(column col) {
  switch (col) {
    case column::inbox:
    case column::outbox:
    case column::timers:
    case column::dedup:
      return true;
    default:
      return false;
  }
}

rocksdb::CompressionType long_lived_compression() {
  // Debian links LZ4, but fall back gracefully on builds without it.
  auto supported = rocksdb::GetSupportedCompressions();
  auto has_lz4
      = std::find(supported.begin(), supported.end(), rocksdb::kLZ4Compression)
        != supported.end();
  return has_lz4 ? rocksdb::kLZ4Compression : rocksdb::kNoCompression;
}

rocksdb::ColumnFamilyOptions
make_cf_options(const std::shared_ptr<rocksdb::Cache>& cache,
                rocksdb::CompressionType compression) {
  rocksdb::ColumnFamilyOptions opts;
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = cache;
  // Whole-key bloom filters make point lookups of absent keys (dedup
  // checks, state of fresh grains) skip SST reads.
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  table.whole_key_filtering = true;
  // Keep index and filter memory inside the block cache budget, but pin the
  // L0 ones: L0 is read on every lookup under a write-heavy load.
  table.cache_index_and_filter_blocks = true;
  table.pin_l0_filter_and_index_blocks_in_cache = true;
  table.format_version = 5;
  opts.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  // Level compaction keeps read and space amplification low; dynamic level
  // sizes avoid oversized upper levels while the database is still small.
  opts.compaction_style = rocksdb::kCompactionStyleLevel;
  opts.level_compaction_dynamic_level_bytes = true;
  opts.compression = compression;
  opts.bottommost_compression = compression;
  // Most point lookups miss (dedup checks, state of new grains) and most
  // hits are recent: a whole-key bloom filter on the memtable answers the
  // misses without walking the skiplist.
  opts.memtable_prefix_bloom_size_ratio = 0.02;
  opts.memtable_whole_key_filtering = true;
  return opts;
}

} // namespace

rocksdb_storage::rocksdb_storage(std::string data_dir)
    : data_dir_(std::move(data_dir)) {
  // nop
}

caf::expected<std::unique_ptr<rocksdb_storage>>
rocksdb_storage::open(const rocksdb_config& cfg) {
  if (cfg.data_dir.empty())
    return make_error(errc::invalid_config,
                      "rocksdb storage: data_dir must not be empty");
  if (cfg.create_if_missing) {
    // RocksDB creates only the last path component itself.
    std::error_code ec;
    std::filesystem::create_directories(cfg.data_dir, ec);
    if (ec)
      return make_error(errc::storage_failure, "cannot create data directory '"
                                                   + cfg.data_dir
                                                   + "': " + ec.message());
  }
  rocksdb::DBOptions db_opts;
  db_opts.create_if_missing = cfg.create_if_missing;
  db_opts.create_missing_column_families = true;
  // Two background jobs match the 2-core reference machine.
  db_opts.max_background_jobs = 2;
  // With several column families a WAL file lives until every family has
  // flushed; rarely written families (meta) would pin old WALs forever.
  db_opts.max_total_wal_size = 256ull << 20;
  // Caps the memtables of all families together.
  db_opts.db_write_buffer_size = 256ull << 20;
  db_opts.keep_log_file_num = 5;
  if (cfg.env != nullptr)
    db_opts.env = cfg.env;
  auto cache = rocksdb::NewLRUCache(cfg.block_cache_bytes);
  auto hot = make_cf_options(cache, rocksdb::kNoCompression);
  auto cold = make_cf_options(cache, long_lived_compression());
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  descriptors.emplace_back(rocksdb::kDefaultColumnFamilyName, hot);
  for (auto col : all_columns)
    descriptors.emplace_back(to_string(col), is_short_lived(col) ? hot : cold);
  // RocksDB refuses to open a database without naming every family it
  // holds, so also open families that a newer version may have added.
  std::vector<std::string> existing;
  if (rocksdb::DB::ListColumnFamilies(db_opts, cfg.data_dir, &existing).ok()) {
    for (auto& name : existing) {
      auto known = std::any_of(descriptors.begin(), descriptors.end(),
                               [&](auto& d) { return d.name == name; });
      if (!known)
        descriptors.emplace_back(name, hot);
    }
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  auto st
      = rocksdb::DB::Open(db_opts, cfg.data_dir, descriptors, &handles, &raw);
  if (!st.ok()) {
    if (is_lock_error(st))
      return make_error(errc::data_dir_locked,
                        "data directory '" + cfg.data_dir
                            + "' is in use by another silo (RocksDB LOCK is "
                              "held): "
                            + st.ToString());
    return make_error(errc::storage_failure,
                      "cannot open RocksDB in data directory '" + cfg.data_dir
                          + "': " + st.ToString());
  }
  std::unique_ptr<rocksdb_storage> result{new rocksdb_storage(cfg.data_dir)};
  result->db_.reset(raw);
  result->handles_ = std::move(handles);
  result->columns_.resize(column_count);
  // DB::Open returns handles in descriptor order; the default family comes
  // first, then the columns in enum order.
  for (size_t i = 0; i < column_count; ++i)
    result->columns_[static_cast<size_t>(all_columns[i])]
        = result->handles_[i + 1];
  return result;
}

rocksdb_storage::~rocksdb_storage() {
  if (!db_)
    return;
  for (auto* h : handles_)
    db_->DestroyColumnFamilyHandle(h);
  handles_.clear();
  columns_.clear();
  // Close() is the only way to see close errors, but a destructor has no
  // one to tell: acknowledged writes are already synced, so drop it.
  db_->Close().PermitUncheckedError();
  db_.reset();
}

caf::expected<std::optional<std::string>>
rocksdb_storage::get(column col, std::string_view key) {
  rocksdb::PinnableSlice value;
  auto st
      = db_->Get(rocksdb::ReadOptions{}, handle(col), to_slice(key), &value);
  if (st.IsNotFound())
    return std::optional<std::string>{};
  if (!st.ok())
    return make_error(errc::storage_failure,
                      std::string{"rocksdb get in column '"} + to_string(col)
                          + "' of '" + data_dir_
                          + "' failed: " + st.ToString());
  return std::optional<std::string>{std::string{to_view(value)}};
}

caf::error
rocksdb_storage::commit(std::span<const write_batch* const> batches) {
  if (failed()) {
    std::lock_guard guard{error_mtx_};
    return make_error(errc::storage_failure,
                      "storage '" + data_dir_
                          + "' is fail-stopped after an earlier write error ("
                          + first_error_ + "); the silo must be reopened");
  }
  rocksdb::WriteBatch wb;
  for (auto* batch : batches) {
    if (batch == nullptr)
      continue;
    for (auto& op : batch->ops()) {
      auto st = op.erase ? wb.Delete(handle(op.col), to_slice(op.key))
                         : wb.Put(handle(op.col), to_slice(op.key),
                                  to_slice(op.value));
      // Only oversized keys or values fail here; nothing was written yet,
      // so this is not a reason to fail-stop.
      if (!st.ok())
        return make_error(errc::storage_failure,
                          std::string{"cannot add record to write batch for "
                                      "column '"}
                              + to_string(op.col) + "': " + st.ToString());
    }
  }
  if (wb.Count() == 0)
    return caf::none;
  rocksdb::WriteOptions wo;
  wo.sync = true;
  auto st = db_->Write(wo, &wb);
  if (!st.ok()) {
    auto text = st.ToString();
    {
      std::lock_guard guard{error_mtx_};
      if (first_error_.empty())
        first_error_ = text;
    }
    failed_.store(true, std::memory_order_release);
    return make_error(errc::storage_failure,
                      "rocksdb write to '" + data_dir_ + "' failed: " + text);
  }
  wal_syncs_.fetch_add(1, std::memory_order_relaxed);
  return caf::none;
}

caf::error rocksdb_storage::scan(column col, std::string_view prefix,
                                 std::string_view start, size_t limit,
                                 const scan_visitor& visit) {
  if (limit == 0)
    return caf::none;
  // The upper bound is the smallest key above every key with `prefix`. It
  // lets RocksDB stop at the bound instead of wading through tombstones of
  // the next range, which queue columns accumulate.
  std::string upper{prefix};
  while (!upper.empty() && static_cast<unsigned char>(upper.back()) == 0xff)
    upper.pop_back();
  if (!upper.empty())
    upper.back()
        = static_cast<char>(static_cast<unsigned char>(upper.back()) + 1);
  rocksdb::Slice upper_slice{upper};
  rocksdb::ReadOptions ro;
  if (!upper.empty())
    ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(ro, handle(col))};
  auto from = start.empty() || start < prefix ? prefix : start;
  size_t visited = 0;
  for (it->Seek(to_slice(from)); it->Valid(); it->Next()) {
    auto key = to_view(it->key());
    if (key.substr(0, prefix.size()) != prefix)
      break;
    if (!visit(key, to_view(it->value())) || ++visited == limit)
      break;
  }
  if (auto st = it->status(); !st.ok())
    return make_error(errc::storage_failure,
                      std::string{"rocksdb scan of column '"} + to_string(col)
                          + "' in '" + data_dir_
                          + "' failed: " + st.ToString());
  return caf::none;
}

std::optional<uint64_t> rocksdb_storage::free_bytes() {
  struct statvfs buf;
  if (::statvfs(data_dir_.c_str(), &buf) != 0)
    return std::nullopt;
  return static_cast<uint64_t>(buf.f_bavail)
         * static_cast<uint64_t>(buf.f_frsize);
}

} // namespace granary

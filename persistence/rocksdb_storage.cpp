#include "persistence/rocksdb_storage.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <filesystem>
#include <system_error>

#include <set>

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <rocksdb/cache.h>
#include <rocksdb/convenience.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/snapshot.h>
#include <rocksdb/sst_file_reader.h>
#include <rocksdb/sst_file_writer.h>
#include <rocksdb/status.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include "runtime/error.hpp"
#include "runtime/keys.hpp"

namespace granary {

namespace {

constexpr std::array<column, column_count> all_columns = {
    column::meta,         column::state,   column::inbox,
    column::outbox,       column::timers,  column::dedup,
    column::dead_letters, column::journal, column::timer_index,
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
    case column::timer_index:
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

// Fails with `data_dir_locked` when another process holds the RocksDB
// LOCK file of `dir` (RocksDB locks it with fcntl).
caf::error check_unlocked(const std::string& dir) {
  auto path = dir + "/LOCK";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return caf::none; // No LOCK file: no writer ever opened it.
  struct flock lk {};
  lk.l_type = F_WRLCK;
  lk.l_whence = SEEK_SET;
  auto rc = ::fcntl(fd, F_GETLK, &lk);
  ::close(fd);
  if (rc == 0 && lk.l_type != F_UNLCK)
    return make_error(errc::data_dir_locked,
                      "data directory '" + dir
                          + "' is in use by another silo (its RocksDB LOCK "
                            "is held by process "
                          + std::to_string(lk.l_pid) + ")");
  return caf::none;
}

caf::error corrupt_file(const std::string& path, const std::string& why) {
  return make_error(errc::corrupt_record,
                    "partition file '" + path + "' is unusable: " + why);
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
  // RocksDB creates a missing directory (and writes its log into it) even
  // when asked not to create the database: check first.
  if (!cfg.create_if_missing || cfg.read_only) {
    std::error_code ec;
    if (!std::filesystem::is_directory(cfg.data_dir, ec))
      return make_error(errc::not_found,
                        "no data directory at " + cfg.data_dir);
    if (!std::filesystem::exists(
            std::filesystem::path{cfg.data_dir} / "CURRENT", ec))
      return make_error(errc::not_found,
                        "no silo data in " + cfg.data_dir
                            + " (the directory holds no RocksDB database)");
  }
  if (cfg.read_only) {
    // A read-only open takes no lock; refuse a directory that a silo holds
    // (its files may change under the reader) as a writer would.
    if (auto err = check_unlocked(cfg.data_dir))
      return err;
  } else if (cfg.create_if_missing) {
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
  auto st = cfg.read_only ? rocksdb::DB::OpenForReadOnly(
                db_opts, cfg.data_dir, descriptors, &handles, &raw)
                          : rocksdb::DB::Open(db_opts, cfg.data_dir,
                                              descriptors, &handles, &raw);
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
  result->read_only_ = cfg.read_only;
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
  if (read_only_)
    return read_only_error();
  if (failed())
    return fail_stopped_error();
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
  if (auto st = db_->Write(wo, &wb); !st.ok())
    return fail_stop("rocksdb write", st.ToString());
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

caf::expected<std::vector<partition_file>>
rocksdb_storage::export_partition(uint32_t p, const std::string& dir) {
  auto checked = export_directory(p, dir);
  if (!checked)
    return std::move(checked.error());
  std::filesystem::path abs_dir{*checked};
  std::vector<partition_file> result;
  // Removes what this call wrote so far: half an export is of no use.
  auto fail = [&](caf::error err, const std::string& partial) {
    std::error_code ignored;
    for (auto& f : result)
      std::filesystem::remove(f.path, ignored);
    if (!partial.empty())
      std::filesystem::remove(partial, ignored);
    return err;
  };
  auto range = keys::range_of(p);
  rocksdb::Slice upper_slice{range.upper};
  // One snapshot for all columns, so that the files agree with each other
  // even if a caller kept writing by mistake.
  rocksdb::ManagedSnapshot snapshot{db_.get()};
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot.snapshot();
  // A bulk read must not evict the hot blocks of other partitions.
  ro.fill_cache = false;
  if (!range.upper.empty())
    ro.iterate_upper_bound = &upper_slice;
  for (auto col : all_columns) {
    if (col == column::meta)
      continue;
    auto path
        = (abs_dir / ("p" + std::to_string(p) + "-" + to_string(col) + ".sst"))
              .string();
    auto opts = db_->GetOptions(handle(col));
    // SstFileWriter refuses to finish a file without entries, so the writer
    // opens on the first record only.
    std::optional<rocksdb::SstFileWriter> writer;
    uint64_t records = 0;
    std::unique_ptr<rocksdb::Iterator> it{db_->NewIterator(ro, handle(col))};
    // Bounded by the records of `p` in the snapshot.
    for (it->Seek(to_slice(range.lower)); it->Valid(); it->Next()) {
      if (!writer) {
        writer.emplace(rocksdb::EnvOptions{}, opts);
        if (auto st = writer->Open(path); !st.ok())
          return fail(make_error(errc::storage_failure,
                                 "cannot create partition file '" + path
                                     + "': " + st.ToString()),
                      path);
      }
      if (auto st = writer->Put(it->key(), it->value()); !st.ok())
        return fail(make_error(errc::storage_failure,
                               "cannot write partition file '" + path
                                   + "': " + st.ToString()),
                    path);
      ++records;
    }
    if (auto st = it->status(); !st.ok())
      return fail(make_error(errc::storage_failure,
                             std::string{"rocksdb export of column '"}
                                 + to_string(col) + "' in '" + data_dir_
                                 + "' failed: " + st.ToString()),
                  writer ? path : std::string{});
    if (!writer)
      continue;
    rocksdb::ExternalSstFileInfo info;
    if (auto st = writer->Finish(&info); !st.ok())
      return fail(
          make_error(errc::storage_failure, "cannot finish partition file '"
                                                + path + "': " + st.ToString()),
          path);
    result.push_back(partition_file{col, path, records});
  }
  return result;
}

caf::error
rocksdb_storage::import_partition(uint32_t p,
                                  std::span<const partition_file> files) {
  if (read_only_)
    return read_only_error();
  if (failed())
    return fail_stopped_error();
  if (p > keys::max_partition)
    return keys::invalid_partition(p);
  std::set<column> seen;
  for (auto& f : files) {
    if (f.col == column::meta || static_cast<size_t>(f.col) >= column_count)
      return make_error(errc::invalid_argument,
                        "partition file '" + f.path
                            + "' is for a column that holds no partition");
    if (!seen.insert(f.col).second)
      return make_error(errc::invalid_argument,
                        std::string{"more than one partition file for column '"}
                            + to_string(f.col) + "'");
  }
  // Check every file before deleting anything, so that a bad transfer
  // leaves the old records in place.
  for (auto& f : files)
    if (auto err = check_partition_file(p, f))
      return err;
  if (auto err = erase_partition(p, "import"))
    return err;
  if (files.empty())
    return caf::none;
  std::vector<rocksdb::IngestExternalFileArg> args;
  args.reserve(files.size());
  for (auto& f : files) {
    rocksdb::IngestExternalFileArg arg;
    arg.column_family = handle(f.col);
    arg.external_files.push_back(f.path);
    // Copy so that the caller's files stay valid for a retry.
    arg.options.move_files = false;
    // The files overlap the range tombstones just written; they need a
    // sequence number above them.
    arg.options.allow_global_seqno = true;
    arg.options.allow_blocking_flush = true;
    arg.options.ingest_behind = false;
    arg.options.snapshot_consistency = true;
    // Keep the sequence number in the MANIFEST only: no write into the
    // ingested copy, which keeps its checksums verifiable.
    arg.options.write_global_seqno = false;
    // The checks above read the caller's file; this reads the copy.
    arg.options.verify_checksums_before_ingest = true;
    args.push_back(std::move(arg));
  }
  // One MANIFEST record for all columns: after a crash either every file
  // is in or none. The MANIFEST write is synced, so this is durable.
  auto st = db_->IngestExternalFiles(args);
  if (st.ok())
    return caf::none;
  // Corruption stems from reading the files, before anything changed.
  if (st.IsCorruption())
    return make_error(errc::corrupt_record,
                      "cannot ingest partition files of partition "
                          + std::to_string(p) + ": " + st.ToString());
  return fail_stop("rocksdb ingestion of partition " + std::to_string(p),
                   st.ToString());
}

caf::error rocksdb_storage::drop_partition(uint32_t p) {
  if (read_only_)
    return read_only_error();
  if (failed())
    return fail_stopped_error();
  if (p > keys::max_partition)
    return keys::invalid_partition(p);
  return erase_partition(p, "drop");
}

caf::error rocksdb_storage::read_only_error() const {
  return make_error(errc::invalid_argument,
                    "the storage in '" + data_dir_ + "' is opened read-only");
}

caf::error rocksdb_storage::fail_stopped_error() {
  std::lock_guard guard{error_mtx_};
  return make_error(errc::storage_failure,
                    "storage '" + data_dir_
                        + "' is fail-stopped after an earlier write error ("
                        + first_error_ + "); the silo must be reopened");
}

caf::error rocksdb_storage::fail_stop(const std::string& what,
                                      const std::string& status) {
  {
    std::lock_guard guard{error_mtx_};
    if (first_error_.empty())
      first_error_ = status;
  }
  failed_.store(true, std::memory_order_release);
  return make_error(errc::storage_failure,
                    what + " to '" + data_dir_ + "' failed: " + status);
}

caf::error rocksdb_storage::check_partition_file(uint32_t p,
                                                 const partition_file& file) {
  auto& path = file.path;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    return corrupt_file(path, "no such regular file");
  rocksdb::SstFileReader reader{db_->GetOptions(handle(file.col))};
  if (auto st = reader.Open(path); !st.ok())
    return corrupt_file(path, st.ToString());
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  if (auto st = reader.VerifyChecksum(ro); !st.ok())
    return corrupt_file(path, st.ToString());
  auto props = reader.GetTableProperties();
  if (!props)
    return corrupt_file(path, "no table properties");
  // Range tombstones, deletes or merges would reach beyond the records of
  // the file; export_partition writes puts only.
  if (props->num_range_deletions != 0 || props->num_deletions != 0
      || props->num_merge_operands != 0)
    return corrupt_file(path, "holds more than puts");
  if (props->num_entries != file.records)
    return corrupt_file(path, "holds " + std::to_string(props->num_entries)
                                  + " records instead of "
                                  + std::to_string(file.records));
  // Sorted keys: the first and the last bound the whole file.
  auto range = keys::range_of(p);
  std::unique_ptr<rocksdb::Iterator> it{reader.NewIterator(ro)};
  it->SeekToFirst();
  if (it->Valid() && !keys::in_range(range, to_view(it->key())))
    return corrupt_file(path,
                        "holds keys outside partition " + std::to_string(p));
  it->SeekToLast();
  if (it->Valid() && !keys::in_range(range, to_view(it->key())))
    return corrupt_file(path,
                        "holds keys outside partition " + std::to_string(p));
  if (auto st = it->status(); !st.ok())
    return corrupt_file(path, st.ToString());
  return caf::none;
}

caf::error rocksdb_storage::erase_partition(uint32_t p, const char* what) {
  auto range = keys::range_of(p);
  rocksdb::WriteBatch wb;
  for (auto col : all_columns) {
    if (col == column::meta)
      continue;
    rocksdb::Status st;
    if (!range.upper.empty()) {
      st = wb.DeleteRange(handle(col), to_slice(range.lower),
                          to_slice(range.upper));
    } else {
      // No key bounds the last partition from above, but its own last key
      // does: delete [lower, last) as a range and `last` on its own. The
      // caller stopped writing to `p`, so no larger key shows up meanwhile.
      std::unique_ptr<rocksdb::Iterator> it{
          db_->NewIterator(rocksdb::ReadOptions{}, handle(col))};
      it->SeekToLast();
      if (auto ist = it->status(); !ist.ok())
        return make_error(errc::storage_failure,
                          std::string{"rocksdb read of column '"}
                              + to_string(col) + "' in '" + data_dir_
                              + "' failed: " + ist.ToString());
      if (!it->Valid() || !keys::in_range(range, to_view(it->key())))
        continue;
      std::string last{to_view(it->key())};
      if (last != range.lower)
        st = wb.DeleteRange(handle(col), to_slice(range.lower), to_slice(last));
      if (st.ok())
        st = wb.Delete(handle(col), to_slice(last));
    }
    // Nothing was written yet, so this is not a reason to fail-stop.
    if (!st.ok())
      return make_error(errc::storage_failure,
                        std::string{"cannot add range delete to write batch "
                                    "for column '"}
                            + to_string(col) + "': " + st.ToString());
  }
  if (wb.Count() == 0)
    return caf::none;
  rocksdb::WriteOptions wo;
  wo.sync = true;
  if (auto st = db_->Write(wo, &wb); !st.ok())
    return fail_stop(std::string{"rocksdb "} + what + " of partition "
                         + std::to_string(p),
                     st.ToString());
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

#include "cluster/membership/embedded_membership.hpp"

#include <algorithm>
#include <filesystem>
#include <system_error>

#include <rocksdb/db.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/status.h>
#include <rocksdb/write_batch.h>

#include "cluster/membership/membership_codec.hpp"
#include "runtime/error.hpp"

namespace granary::cluster {

namespace {

constexpr std::string_view revision_key = "meta/revision";
constexpr std::string_view table_version_key = "meta/table_version";
constexpr std::string_view partition_map_key = "meta/partition_map";
constexpr std::string_view row_prefix = "silos/";

rocksdb::Slice to_slice(std::string_view x) {
  return rocksdb::Slice{x.data(), x.size()};
}

std::string encode_u64(uint64_t x) {
  std::string out(8, '\0');
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<char>(x & 0xff);
    x >>= 8;
  }
  return out;
}

bool decode_u64(std::string_view in, uint64_t& x) {
  if (in.size() != 8)
    return false;
  x = 0;
  for (auto c : in)
    x = (x << 8) | static_cast<unsigned char>(c);
  return true;
}

std::string row_key(const std::string& silo_id) {
  std::string key{row_prefix};
  key += silo_id;
  return key;
}

caf::error corrupt(const std::string& dir, std::string_view key) {
  return make_error(errc::corrupt_record, "membership store '" + dir
                                              + "': cannot decode record '"
                                              + std::string{key} + "'");
}

} // namespace

struct embedded_membership::batch {
  rocksdb::WriteBatch wb;

  void put(std::string_view key, std::string_view value) {
    // Put into a WriteBatch only fails past its 4 GiB size limit.
    wb.Put(to_slice(key), to_slice(value)).PermitUncheckedError();
  }

  void erase(std::string_view key) {
    wb.Delete(to_slice(key)).PermitUncheckedError();
  }
};

embedded_membership::embedded_membership(std::string dir)
    : dir_(std::move(dir))
    , watchers_(std::make_shared<watcher_list>()) {
  // nop
}

embedded_membership::~embedded_membership() {
  if (db_)
    db_->Close().PermitUncheckedError();
}

caf::expected<std::unique_ptr<embedded_membership>>
embedded_membership::open(const embedded_membership_config& cfg) {
  if (cfg.dir.empty())
    return make_error(errc::invalid_config,
                      "embedded membership: directory must not be empty");
  if (cfg.in_memory)
    return std::unique_ptr<embedded_membership>{
        new embedded_membership(cfg.dir)};
  std::error_code ec;
  std::filesystem::create_directories(cfg.dir, ec);
  if (ec)
    return make_error(errc::storage_failure,
                      "embedded membership: cannot create directory '" + cfg.dir
                          + "': " + ec.message());
  rocksdb::Options opts;
  opts.create_if_missing = true;
  // A tiny, rarely written table: keep the footprint small.
  opts.max_background_jobs = 1;
  opts.write_buffer_size = 1 << 20;
  opts.keep_log_file_num = 2;
  rocksdb::DB* raw = nullptr;
  auto st = rocksdb::DB::Open(opts, cfg.dir, &raw);
  if (!st.ok()) {
    auto text = st.ToString();
    if (st.IsIOError()
        && (text.find("lock") != std::string::npos
            || text.find("LOCK") != std::string::npos
            || text.find("Resource temporarily unavailable")
                   != std::string::npos))
      return make_error(errc::data_dir_locked,
                        "membership directory '" + cfg.dir
                            + "' is in use by another store: " + text);
    return make_error(errc::storage_failure, "cannot open membership store in '"
                                                 + cfg.dir + "': " + text);
  }
  std::unique_ptr<embedded_membership> self{new embedded_membership(cfg.dir)};
  self->db_.reset(raw);
  // Load everything into the cache; the table is small by nature.
  std::unique_ptr<rocksdb::Iterator> it{
      raw->NewIterator(rocksdb::ReadOptions{})};
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    auto key = std::string_view{it->key().data(), it->key().size()};
    auto value = std::string_view{it->value().data(), it->value().size()};
    if (key == revision_key) {
      if (!decode_u64(value, self->revision_))
        return corrupt(cfg.dir, key);
    } else if (key == table_version_key) {
      if (!decode_u64(value, self->table_version_))
        return corrupt(cfg.dir, key);
    } else if (key == partition_map_key) {
      PartitionMapRecord rec;
      if (!rec.ParseFromArray(value.data(), static_cast<int>(value.size())))
        return corrupt(cfg.dir, key);
      auto map = from_proto(rec);
      if (!map)
        return std::move(map.error());
      self->map_ = std::move(*map);
    } else if (key.starts_with(row_prefix)) {
      MembershipRow row;
      if (!row.ParseFromArray(value.data(), static_cast<int>(value.size())))
        return corrupt(cfg.dir, key);
      auto entry = from_proto(row);
      if (!entry)
        return std::move(entry.error());
      self->rows_.emplace(entry->silo_id, std::move(*entry));
    }
    // Unknown keys come from newer versions; leave them alone.
  }
  if (!it->status().ok())
    return make_error(errc::storage_failure,
                      "cannot read membership store in '" + cfg.dir
                          + "': " + it->status().ToString());
  return self;
}

caf::error embedded_membership::write(batch& b) {
  if (failed_)
    return make_error(errc::storage_failure,
                      "membership store '" + dir_
                          + "' failed a write earlier; reopen it");
  b.put(revision_key, encode_u64(revision_ + 1));
  rocksdb::WriteOptions wo;
  wo.sync = true;
  auto st = db_ ? db_->Write(wo, &b.wb) : rocksdb::Status::OK();
  if (!st.ok()) {
    failed_ = true;
    return make_error(errc::storage_failure,
                      "membership store '" + dir_
                          + "': write failed: " + st.ToString());
  }
  ++revision_;
  return caf::none;
}

caf::expected<membership_table> embedded_membership::read_all() {
  std::lock_guard guard{mtx_};
  membership_table result;
  result.version = table_version_;
  result.rows.reserve(rows_.size());
  for (auto& [id, row] : rows_)
    result.rows.push_back(row);
  return result;
}

caf::expected<membership_table>
embedded_membership::read(const std::string& silo_id) {
  std::lock_guard guard{mtx_};
  membership_table result;
  result.version = table_version_;
  if (auto i = rows_.find(silo_id); i != rows_.end())
    result.rows.push_back(i->second);
  return result;
}

caf::expected<write_result>
embedded_membership::insert(const membership_entry& entry,
                            uint64_t expected_table_version) {
  if (auto err = validate_entry(entry))
    return err;
  write_result result;
  {
    std::lock_guard guard{mtx_};
    if (rows_.count(entry.silo_id) != 0)
      return write_result{write_status::row_exists, table_version_};
    if (table_version_ != expected_table_version)
      return write_result{write_status::table_version_conflict, table_version_};
    auto row = entry;
    row.version = revision_ + 1;
    batch b;
    b.put(row_key(row.silo_id), to_proto(row).SerializeAsString());
    b.put(table_version_key, encode_u64(row.version));
    if (auto err = write(b))
      return err;
    table_version_ = row.version;
    rows_.emplace(row.silo_id, std::move(row));
    result.version = table_version_;
  }
  watchers_->notify({membership_change_kind::table, result.version});
  return result;
}

caf::expected<write_result>
embedded_membership::update(const membership_entry& entry,
                            uint64_t expected_row_version,
                            uint64_t expected_table_version) {
  if (auto err = validate_entry(entry))
    return err;
  write_result result;
  {
    std::lock_guard guard{mtx_};
    auto i = rows_.find(entry.silo_id);
    if (i == rows_.end())
      return write_result{write_status::row_missing, table_version_};
    if (i->second.version != expected_row_version)
      return write_result{write_status::row_version_conflict, table_version_};
    if (table_version_ != expected_table_version)
      return write_result{write_status::table_version_conflict, table_version_};
    auto row = entry;
    row.version = revision_ + 1;
    row.i_am_alive_ms = i->second.i_am_alive_ms;
    batch b;
    b.put(row_key(row.silo_id), to_proto(row).SerializeAsString());
    b.put(table_version_key, encode_u64(row.version));
    if (auto err = write(b))
      return err;
    table_version_ = row.version;
    i->second = std::move(row);
    result.version = table_version_;
  }
  watchers_->notify({membership_change_kind::table, result.version});
  return result;
}

caf::error embedded_membership::update_i_am_alive(const std::string& silo_id,
                                                  int64_t now_ms) {
  std::lock_guard guard{mtx_};
  auto i = rows_.find(silo_id);
  if (i == rows_.end())
    return make_error(errc::not_found, "membership: silo '" + silo_id
                                           + "' has no row to update");
  auto row = i->second;
  row.i_am_alive_ms = now_ms;
  batch b;
  b.put(row_key(silo_id), to_proto(row).SerializeAsString());
  if (auto err = write(b))
    return err;
  i->second = std::move(row);
  return caf::none;
}

caf::expected<size_t> embedded_membership::delete_dead(int64_t older_than_ms) {
  size_t deleted = 0;
  uint64_t version = 0;
  {
    std::lock_guard guard{mtx_};
    std::vector<std::string> victims;
    for (auto& [id, row] : rows_)
      if (row.status == silo_status::dead
          && std::max(row.start_time_ms, row.i_am_alive_ms) < older_than_ms)
        victims.push_back(id);
    if (victims.empty())
      return size_t{0};
    batch b;
    for (auto& id : victims)
      b.erase(row_key(id));
    b.put(table_version_key, encode_u64(revision_ + 1));
    if (auto err = write(b))
      return err;
    table_version_ = revision_;
    for (auto& id : victims)
      rows_.erase(id);
    deleted = victims.size();
    version = table_version_;
  }
  watchers_->notify({membership_change_kind::table, version});
  return deleted;
}

caf::expected<watch_token>
embedded_membership::watch(membership_watcher watcher) {
  if (!watcher)
    return make_error(errc::invalid_argument,
                      "membership: watch needs a callback");
  return watchers_->add(std::move(watcher));
}

caf::expected<partition_map> embedded_membership::read_partition_map() {
  std::lock_guard guard{mtx_};
  return map_;
}

caf::expected<write_result>
embedded_membership::write_partition_map(const partition_map& map,
                                         uint64_t expected_version) {
  write_result result;
  {
    std::lock_guard guard{mtx_};
    if (map_.version != expected_version)
      return write_result{write_status::map_version_conflict, map_.version};
    if (auto err = validate_partition_map_change(map_, map))
      return err;
    auto next = map;
    next.version = revision_ + 1;
    batch b;
    b.put(partition_map_key, to_proto(next).SerializeAsString());
    if (auto err = write(b))
      return err;
    map_ = std::move(next);
    result.version = map_.version;
  }
  watchers_->notify({membership_change_kind::partition_map, result.version});
  return result;
}

} // namespace granary::cluster

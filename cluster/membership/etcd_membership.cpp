#include "cluster/membership/etcd_membership.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <map>

#include "cluster/membership/etcd_client.hpp"
#include "cluster/membership/membership_codec.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"

namespace granary::cluster {

namespace {

// etcd refuses txns with more operations than --max-txn-ops (default 128).
constexpr size_t max_deletes_per_txn = 60;

// Bounds the read-compare-retry loop of `delete_dead`.
constexpr int max_delete_rounds = 64;

using etcd::Compare;
using etcd::RequestOp;

Compare compare_mod(const std::string& key, uint64_t mod_revision) {
  Compare c;
  c.set_target(Compare::MOD);
  c.set_result(Compare::EQUAL);
  c.set_key(key);
  c.set_mod_revision(static_cast<int64_t>(mod_revision));
  return c;
}

Compare compare_exists(const std::string& key, bool exists) {
  Compare c;
  c.set_target(Compare::VERSION);
  c.set_result(exists ? Compare::GREATER : Compare::EQUAL);
  c.set_key(key);
  c.set_version(0);
  return c;
}

RequestOp put_op(const std::string& key, std::string value) {
  RequestOp op;
  auto* put = op.mutable_request_put();
  put->set_key(key);
  put->set_value(std::move(value));
  return op;
}

RequestOp range_op(const std::string& key) {
  RequestOp op;
  op.mutable_request_range()->set_key(key);
  return op;
}

RequestOp delete_op(const std::string& key) {
  RequestOp op;
  op.mutable_request_delete_range()->set_key(key);
  return op;
}

// Returns the mod_revision of the only key in `op`'s range, or 0.
uint64_t mod_of(const etcd::ResponseOp& op) {
  auto& kvs = op.response_range().kvs();
  return kvs.empty() ? 0 : static_cast<uint64_t>(kvs[0].mod_revision());
}

bool valid_name(const std::string& x) {
  return !x.empty() && std::all_of(x.begin(), x.end(), [](unsigned char c) {
    return std::isgraph(c) && c != '/';
  });
}

std::string row_json(const membership_entry& entry) {
  auto row = to_proto(entry);
  // Kept in the key's mod_revision and in the alive key.
  row.clear_version();
  row.clear_i_am_alive_ms();
  return etcd_to_json(row);
}

caf::expected<membership_entry> parse_row(const etcd::KeyValue& kv) {
  MembershipRow row;
  if (auto err = etcd_from_json(kv.value(), row, "membership row " + kv.key()))
    return make_error(errc::corrupt_record, describe(err));
  auto entry = from_proto(row);
  if (entry)
    entry->version = static_cast<uint64_t>(kv.mod_revision());
  return entry;
}

caf::expected<int64_t> parse_alive(const etcd::KeyValue& kv) {
  auto& v = kv.value();
  int64_t ms = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), ms);
  if (ec != std::errc{} || end != v.data() + v.size())
    return make_error(errc::corrupt_record,
                      "membership: key " + kv.key()
                          + " does not hold a timestamp: '" + v + "'");
  return ms;
}

caf::expected<partition_map> parse_map(const etcd::KeyValue& kv) {
  PartitionMapRecord rec;
  if (auto err = etcd_from_json(kv.value(), rec, "partition map " + kv.key()))
    return make_error(errc::corrupt_record, describe(err));
  auto map = from_proto(rec);
  if (map)
    map->version = static_cast<uint64_t>(kv.mod_revision());
  return map;
}

} // namespace

/// All rows with their heartbeats, plus what `delete_dead` compares.
struct etcd_membership::snapshot {
  membership_table table;
  // Per silo id: the mod_revision of its alive key (0 when absent).
  std::map<std::string, uint64_t> alive_mods;
};

etcd_membership::etcd_membership(etcd_membership_config cfg)
    : cfg_(std::move(cfg))
    , watchers_(std::make_shared<watcher_list>()) {
  prefix_ = cfg_.key_root + "/" + cfg_.cluster_id + "/";
  table_version_key_ = prefix_ + "meta/table_version";
  partition_map_key_ = prefix_ + "meta/partition_map";
  etcd_client_config ccfg;
  ccfg.endpoints = cfg_.endpoints;
  ccfg.request_timeout = cfg_.request_timeout;
  client_ = std::make_unique<etcd_client>(std::move(ccfg));
}

etcd_membership::~etcd_membership() {
  {
    std::lock_guard guard{watch_mtx_};
    stopping_ = true;
    if (stream_)
      stream_->close();
  }
  watch_cv_.notify_all();
  if (watch_thread_.joinable())
    watch_thread_.join();
}

caf::expected<std::unique_ptr<etcd_membership>>
etcd_membership::open(const etcd_membership_config& cfg) {
  if (!valid_name(cfg.cluster_id))
    return make_error(errc::invalid_config,
                      "etcd membership: cluster id '" + cfg.cluster_id
                          + "' must be non-empty, without '/' or whitespace");
  if (cfg.key_root.empty() || cfg.key_root.front() != '/'
      || cfg.key_root.back() == '/')
    return make_error(errc::invalid_config,
                      "etcd membership: key root '" + cfg.key_root
                          + "' must start with '/' and not end with one");
  if (cfg.endpoints.empty())
    return make_error(errc::invalid_config,
                      "etcd membership: no endpoint is configured");
  if (cfg.request_timeout.count() <= 0 || cfg.max_rows == 0
      || cfg.watch_retry_initial.count() <= 0
      || cfg.watch_retry_max < cfg.watch_retry_initial)
    return make_error(errc::invalid_config,
                      "etcd membership: timeouts, retry delays and max_rows "
                      "must be positive");
  std::unique_ptr<etcd_membership> self{new etcd_membership(cfg)};
  // Fail early, with the endpoint in the message, when etcd is not there.
  etcd::RangeRequest probe;
  probe.set_key(self->table_version_key_);
  probe.set_count_only(true);
  if (auto res = self->client_->range(probe); !res)
    return std::move(res.error());
  return self;
}

std::string etcd_membership::row_key(const std::string& silo_id) const {
  return prefix_ + "silos/" + silo_id;
}

std::string etcd_membership::alive_key(const std::string& silo_id) const {
  return prefix_ + "alive/" + silo_id;
}

caf::expected<etcd_membership::snapshot> etcd_membership::read_snapshot() {
  // One range over the whole prefix: a single revision, so rows, heartbeats
  // and the table version are consistent with each other.
  etcd::RangeRequest req;
  req.set_key(prefix_);
  req.set_range_end(etcd_prefix_end(prefix_));
  // Two keys per silo plus the two meta keys, plus one to detect overflow.
  req.set_limit(static_cast<int64_t>(2 * cfg_.max_rows + 3));
  auto res = client_->range(req);
  if (!res)
    return std::move(res.error());
  if (res->more())
    return make_error(errc::payload_too_large,
                      "etcd membership: more than "
                          + std::to_string(cfg_.max_rows) + " rows under "
                          + prefix_);
  snapshot snap;
  std::map<std::string, int64_t> alive;
  auto rows_prefix = prefix_ + "silos/";
  auto alive_prefix = prefix_ + "alive/";
  for (auto& kv : res->kvs()) {
    auto& key = kv.key();
    if (key == table_version_key_) {
      snap.table.version = static_cast<uint64_t>(kv.mod_revision());
    } else if (key.starts_with(rows_prefix)) {
      auto entry = parse_row(kv);
      if (!entry)
        return std::move(entry.error());
      snap.table.rows.push_back(std::move(*entry));
    } else if (key.starts_with(alive_prefix)) {
      auto ms = parse_alive(kv);
      if (!ms)
        return std::move(ms.error());
      auto id = key.substr(alive_prefix.size());
      alive[id] = *ms;
      snap.alive_mods[id] = static_cast<uint64_t>(kv.mod_revision());
    }
  }
  // Keys come sorted, so the rows are ordered by silo id already.
  for (auto& row : snap.table.rows)
    if (auto i = alive.find(row.silo_id); i != alive.end())
      row.i_am_alive_ms = i->second;
  return snap;
}

caf::expected<membership_table> etcd_membership::read_all() {
  auto snap = read_snapshot();
  if (!snap)
    return std::move(snap.error());
  return std::move(snap->table);
}

caf::expected<membership_table>
etcd_membership::read(const std::string& silo_id) {
  membership_entry probe;
  probe.silo_id = silo_id;
  if (auto err = validate_entry(probe))
    return err;
  etcd::TxnRequest req;
  *req.add_success() = range_op(row_key(silo_id));
  *req.add_success() = range_op(alive_key(silo_id));
  *req.add_success() = range_op(table_version_key_);
  auto res = client_->txn(req);
  if (!res)
    return std::move(res.error());
  if (res->responses_size() != 3)
    return make_error(errc::malformed_message,
                      "etcd at " + client_->endpoint()
                          + ": a read txn returned the wrong number of "
                            "responses");
  membership_table result;
  result.version = mod_of(res->responses(2));
  auto& rows = res->responses(0).response_range().kvs();
  if (!rows.empty()) {
    auto entry = parse_row(rows[0]);
    if (!entry)
      return std::move(entry.error());
    auto& alive = res->responses(1).response_range().kvs();
    if (!alive.empty()) {
      auto ms = parse_alive(alive[0]);
      if (!ms)
        return std::move(ms.error());
      entry->i_am_alive_ms = *ms;
    }
    result.rows.push_back(std::move(*entry));
  }
  return result;
}

caf::expected<write_result>
etcd_membership::insert(const membership_entry& entry,
                        uint64_t expected_table_version) {
  if (auto err = validate_entry(entry))
    return err;
  auto key = row_key(entry.silo_id);
  etcd::TxnRequest req;
  *req.add_compare() = compare_exists(key, false);
  *req.add_compare() = compare_mod(table_version_key_, expected_table_version);
  *req.add_success() = put_op(key, row_json(entry));
  *req.add_success()
      = put_op(alive_key(entry.silo_id), std::to_string(entry.i_am_alive_ms));
  *req.add_success() = put_op(table_version_key_, "insert " + entry.silo_id);
  *req.add_failure() = range_op(key);
  *req.add_failure() = range_op(table_version_key_);
  auto res = client_->txn(req);
  if (!res)
    return std::move(res.error());
  if (res->succeeded()) {
    auto rev = static_cast<uint64_t>(res->header().revision());
    watchers_->notify({membership_change_kind::table, rev});
    return write_result{write_status::applied, rev};
  }
  if (res->responses_size() != 2)
    return make_error(errc::malformed_message,
                      "etcd at " + client_->endpoint()
                          + ": a failed txn returned the wrong number of "
                            "responses");
  auto current = mod_of(res->responses(1));
  if (mod_of(res->responses(0)) != 0)
    return write_result{write_status::row_exists, current};
  return write_result{write_status::table_version_conflict, current};
}

caf::expected<write_result>
etcd_membership::update(const membership_entry& entry,
                        uint64_t expected_row_version,
                        uint64_t expected_table_version) {
  if (auto err = validate_entry(entry))
    return err;
  auto key = row_key(entry.silo_id);
  etcd::TxnRequest req;
  *req.add_compare() = compare_exists(key, true);
  *req.add_compare() = compare_mod(key, expected_row_version);
  *req.add_compare() = compare_mod(table_version_key_, expected_table_version);
  *req.add_success() = put_op(key, row_json(entry));
  *req.add_success() = put_op(table_version_key_, "update " + entry.silo_id);
  *req.add_failure() = range_op(key);
  *req.add_failure() = range_op(table_version_key_);
  auto res = client_->txn(req);
  if (!res)
    return std::move(res.error());
  if (res->succeeded()) {
    auto rev = static_cast<uint64_t>(res->header().revision());
    watchers_->notify({membership_change_kind::table, rev});
    return write_result{write_status::applied, rev};
  }
  if (res->responses_size() != 2)
    return make_error(errc::malformed_message,
                      "etcd at " + client_->endpoint()
                          + ": a failed txn returned the wrong number of "
                            "responses");
  auto row_mod = mod_of(res->responses(0));
  auto current = mod_of(res->responses(1));
  if (row_mod == 0)
    return write_result{write_status::row_missing, current};
  if (row_mod != expected_row_version)
    return write_result{write_status::row_version_conflict, current};
  return write_result{write_status::table_version_conflict, current};
}

caf::error etcd_membership::update_i_am_alive(const std::string& silo_id,
                                              int64_t now_ms) {
  membership_entry probe;
  probe.silo_id = silo_id;
  if (auto err = validate_entry(probe))
    return err;
  etcd::TxnRequest req;
  *req.add_compare() = compare_exists(row_key(silo_id), true);
  *req.add_success() = put_op(alive_key(silo_id), std::to_string(now_ms));
  auto res = client_->txn(req);
  if (!res)
    return std::move(res.error());
  if (!res->succeeded())
    return make_error(errc::not_found, "membership: silo '" + silo_id
                                           + "' has no row to update");
  return caf::none;
}

caf::expected<size_t> etcd_membership::delete_dead(int64_t older_than_ms) {
  size_t deleted = 0;
  for (int round = 0; round < max_delete_rounds; ++round) {
    auto snap = read_snapshot();
    if (!snap)
      return std::move(snap.error());
    std::vector<const membership_entry*> victims;
    for (auto& row : snap->table.rows)
      if (row.status == silo_status::dead
          && std::max(row.start_time_ms, row.i_am_alive_ms) < older_than_ms
          && victims.size() < max_deletes_per_txn)
        victims.push_back(&row);
    if (victims.empty())
      return deleted;
    // The table version covers every row; the alive keys are compared on
    // their own, since heartbeats do not move the table version.
    etcd::TxnRequest req;
    *req.add_compare() = compare_mod(table_version_key_, snap->table.version);
    for (auto* row : victims) {
      *req.add_compare() = compare_mod(alive_key(row->silo_id),
                                       snap->alive_mods[row->silo_id]);
      *req.add_success() = delete_op(row_key(row->silo_id));
      *req.add_success() = delete_op(alive_key(row->silo_id));
    }
    *req.add_success() = put_op(table_version_key_, "delete_dead");
    auto res = client_->txn(req);
    if (!res)
      return std::move(res.error());
    if (res->succeeded()) {
      deleted += victims.size();
      watchers_->notify({membership_change_kind::table,
                         static_cast<uint64_t>(res->header().revision())});
    }
    // Read again: either the table moved under us or more victims remain.
  }
  return make_error(errc::overloaded,
                    "etcd membership: delete_dead kept losing to concurrent "
                    "writers; deleted "
                        + std::to_string(deleted) + " rows, try again");
}

caf::expected<watch_token> etcd_membership::watch(membership_watcher watcher) {
  if (!watcher)
    return make_error(errc::invalid_argument,
                      "membership: watch needs a callback");
  std::lock_guard guard{watch_mtx_};
  if (!watch_thread_.joinable()) {
    etcd::RangeRequest probe;
    probe.set_key(table_version_key_);
    probe.set_count_only(true);
    auto res = client_->range(probe);
    if (!res)
      return std::move(res.error());
    auto start = res->header().revision() + 1;
    watch_thread_ = std::thread{[this, start] { watch_loop(start); }};
  }
  return watchers_->add(std::move(watcher));
}

caf::error etcd_membership::resync_watchers(int64_t& next_revision) {
  etcd::RangeRequest req;
  req.set_key(prefix_ + "meta/");
  req.set_range_end(etcd_prefix_end(prefix_ + "meta/"));
  req.set_keys_only(true);
  auto res = client_->range(req);
  if (!res)
    return std::move(res.error());
  for (auto& kv : res->kvs()) {
    auto mod = static_cast<uint64_t>(kv.mod_revision());
    if (kv.key() == table_version_key_)
      watchers_->notify({membership_change_kind::table, mod});
    else if (kv.key() == partition_map_key_)
      watchers_->notify({membership_change_kind::partition_map, mod});
  }
  next_revision = res->header().revision() + 1;
  return caf::none;
}

void etcd_membership::watch_loop(int64_t start_revision) {
  auto next_revision = start_revision;
  auto delay = cfg_.watch_retry_initial;
  bool warned = false;
  auto meta = prefix_ + "meta/";
  etcd_client_config scfg;
  scfg.request_timeout = cfg_.request_timeout;
  // The endpoint that answered last goes first.
  size_t first = 0;
  auto n = cfg_.endpoints.size();
  // Each pass opens one stream; bounded by `stopping_`, and every failure
  // waits `delay` (growing to watch_retry_max) before the next pass.
  for (;;) {
    scfg.endpoints.clear();
    for (size_t k = 0; k < n; ++k)
      scfg.endpoints.push_back(cfg_.endpoints[(first + k) % n]);
    auto stream = std::make_shared<etcd_stream>(scfg);
    {
      std::lock_guard guard{watch_mtx_};
      if (stopping_)
        return;
      stream_ = stream;
    }
    etcd::WatchRequest req;
    auto* create = req.mutable_create_request();
    create->set_key(meta);
    create->set_range_end(etcd_prefix_end(meta));
    create->set_start_revision(next_revision);
    auto err = stream->open("/v3/watch", etcd_to_json(req));
    auto at = scfg.endpoints[std::min(stream->endpoint_index(), n - 1)];
    if (!err)
      first = (first + stream->endpoint_index()) % n;
    while (!err) {
      auto line = stream->next();
      if (!line) {
        err = std::move(line.error());
        break;
      }
      etcd::WatchStreamMessage msg;
      if ((err = etcd_from_json(*line, msg, "a /v3/watch message")))
        break;
      if (msg.has_error()) {
        err = make_error(errc::storage_failure,
                         "etcd at " + at
                             + ": /v3/watch failed: " + msg.error().message());
        break;
      }
      auto& res = msg.result();
      if (res.compact_revision() > 0) {
        // Missed changes were compacted away: report the current versions.
        err = resync_watchers(next_revision);
        if (!err)
          err = make_error(errc::cancelled, "watch restarts after compaction");
        break;
      }
      if (res.canceled()) {
        err = make_error(errc::storage_failure,
                         "etcd at " + at
                             + " cancelled the watch: " + res.cancel_reason());
        break;
      }
      delay = cfg_.watch_retry_initial;
      if (warned) {
        log(log_level::info, "etcd membership: watch on " + at + " is back");
        warned = false;
      }
      for (auto& ev : res.events()) {
        auto& kv = ev.kv();
        next_revision = std::max(next_revision, kv.mod_revision() + 1);
        if (ev.type() != etcd::Event::PUT)
          continue;
        auto mod = static_cast<uint64_t>(kv.mod_revision());
        if (kv.key() == table_version_key_)
          watchers_->notify({membership_change_kind::table, mod});
        else if (kv.key() == partition_map_key_)
          watchers_->notify({membership_change_kind::partition_map, mod});
      }
    }
    std::unique_lock guard{watch_mtx_};
    stream_.reset();
    if (stopping_)
      return;
    if (code_of(err) != errc::cancelled && !warned) {
      log(log_level::warning,
          "etcd membership: watch failed, retrying: " + describe(err));
      warned = true;
    }
    watch_cv_.wait_for(guard, delay, [this] { return stopping_; });
    if (stopping_)
      return;
    delay = std::min(delay * 2, cfg_.watch_retry_max);
  }
}

caf::expected<partition_map> etcd_membership::read_partition_map() {
  etcd::RangeRequest req;
  req.set_key(partition_map_key_);
  auto res = client_->range(req);
  if (!res)
    return std::move(res.error());
  if (res->kvs().empty())
    return partition_map{};
  return parse_map(res->kvs(0));
}

caf::expected<write_result>
etcd_membership::write_partition_map(const partition_map& map,
                                     uint64_t expected_version) {
  auto current = read_partition_map();
  if (!current)
    return std::move(current.error());
  if (current->version != expected_version)
    return write_result{write_status::map_version_conflict, current->version};
  if (auto err = validate_partition_map_change(*current, map))
    return err;
  auto rec = to_proto(map);
  rec.clear_version();
  etcd::TxnRequest req;
  *req.add_compare() = compare_mod(partition_map_key_, expected_version);
  *req.add_success() = put_op(partition_map_key_, etcd_to_json(rec));
  *req.add_failure() = range_op(partition_map_key_);
  auto res = client_->txn(req);
  if (!res)
    return std::move(res.error());
  if (res->succeeded()) {
    auto rev = static_cast<uint64_t>(res->header().revision());
    watchers_->notify({membership_change_kind::partition_map, rev});
    return write_result{write_status::applied, rev};
  }
  auto now = res->responses_size() == 1 ? mod_of(res->responses(0)) : 0;
  return write_result{write_status::map_version_conflict, now};
}

} // namespace granary::cluster

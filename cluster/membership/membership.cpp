#include "cluster/membership/membership.hpp"

#include <algorithm>
#include <cctype>
#include <set>
#include <vector>

#include "cluster/membership/membership_codec.hpp"
#include "runtime/error.hpp"

namespace granary::cluster {

const char* to_string(silo_status x) {
  switch (x) {
    case silo_status::joining:
      return "joining";
    case silo_status::active:
      return "active";
    case silo_status::shutting_down:
      return "shutting_down";
    case silo_status::dead:
      return "dead";
  }
  return "unknown";
}

const char* to_string(replica_role x) {
  switch (x) {
    case replica_role::primary:
      return "primary";
    case replica_role::follower:
      return "follower";
  }
  return "unknown";
}

const char* to_string(write_status x) {
  switch (x) {
    case write_status::applied:
      return "applied";
    case write_status::row_exists:
      return "row_exists";
    case write_status::row_missing:
      return "row_missing";
    case write_status::row_version_conflict:
      return "row_version_conflict";
    case write_status::table_version_conflict:
      return "table_version_conflict";
    case write_status::map_version_conflict:
      return "map_version_conflict";
  }
  return "unknown";
}

const membership_entry*
membership_table::find(const std::string& silo_id) const {
  for (auto& row : rows)
    if (row.silo_id == silo_id)
      return &row;
  return nullptr;
}

const std::string* partition_assignment::primary() const {
  for (auto& owner : owners)
    if (owner.role == replica_role::primary)
      return &owner.silo_id;
  return nullptr;
}

caf::error validate_entry(const membership_entry& entry) {
  constexpr size_t max_id = 256;
  auto& id = entry.silo_id;
  if (id.empty())
    return make_error(errc::invalid_argument,
                      "membership: silo id must not be empty");
  if (id.size() > max_id)
    return make_error(errc::invalid_argument,
                      "membership: silo id is longer than 256 characters");
  for (unsigned char c : id)
    if (!std::isgraph(c) || c == '/')
      return make_error(errc::invalid_argument,
                        "membership: silo id '" + id
                            + "' contains '/', whitespace or a control "
                              "character");
  return caf::none;
}

namespace {

caf::error bad_map(uint32_t partition, const std::string& what) {
  return make_error(errc::invalid_argument, "partition map: partition "
                                                + std::to_string(partition)
                                                + ": " + what);
}

} // namespace

caf::error validate_partition_map_change(const partition_map& current,
                                         const partition_map& next) {
  if (next.partitions.size() != next.partition_count)
    return make_error(errc::invalid_argument,
                      "partition map: partition_count is "
                          + std::to_string(next.partition_count) + " but "
                          + std::to_string(next.partitions.size())
                          + " partitions are listed");
  if (current.partition_count != 0
      && current.partition_count != next.partition_count)
    return make_error(errc::invalid_argument,
                      "partition map: the partition count is fixed at "
                          + std::to_string(current.partition_count)
                          + " and cannot become "
                          + std::to_string(next.partition_count));
  for (uint32_t i = 0; i < next.partition_count; ++i) {
    auto& p = next.partitions[i];
    if (p.partition != i)
      return bad_map(i, "listed at index " + std::to_string(i)
                            + " but numbered " + std::to_string(p.partition));
    size_t primaries = 0;
    std::set<std::string> silos;
    for (auto& owner : p.owners) {
      if (owner.silo_id.empty())
        return bad_map(i, "an owner has an empty silo id");
      if (!silos.insert(owner.silo_id).second)
        return bad_map(i, "silo '" + owner.silo_id + "' is listed twice");
      if (owner.role == replica_role::primary)
        ++primaries;
    }
    if (primaries > 1)
      return bad_map(i, "has more than one primary");
    if (i >= current.partitions.size())
      continue;
    auto& old = current.partitions[i];
    if (p.epoch < old.epoch)
      return bad_map(i, "epoch " + std::to_string(p.epoch)
                            + " is lower than the current epoch "
                            + std::to_string(old.epoch));
    if (p.owners != old.owners && p.epoch == old.epoch)
      return bad_map(i, "owners change but the epoch stays at "
                            + std::to_string(p.epoch));
  }
  return caf::none;
}

// -- watch_token --------------------------------------------------------------

watch_token::watch_token(std::function<void()> cancel)
    : cancel_(std::move(cancel)) {
  // nop
}

watch_token::~watch_token() {
  cancel();
}

watch_token::watch_token(watch_token&& other) noexcept
    : cancel_(std::move(other.cancel_)) {
  other.cancel_ = nullptr;
}

watch_token& watch_token::operator=(watch_token&& other) noexcept {
  if (this != &other) {
    cancel();
    cancel_ = std::move(other.cancel_);
    other.cancel_ = nullptr;
  }
  return *this;
}

void watch_token::cancel() {
  if (cancel_) {
    auto f = std::move(cancel_);
    cancel_ = nullptr;
    f();
  }
}

membership_store::~membership_store() {
  // nop
}

// -- codec --------------------------------------------------------------------

MembershipRow to_proto(const membership_entry& x) {
  MembershipRow row;
  row.set_silo_id(x.silo_id);
  row.set_address(x.address);
  row.set_gateway_address(x.gateway_address);
  switch (x.status) {
    case silo_status::joining:
      row.set_status(SILO_JOINING);
      break;
    case silo_status::active:
      row.set_status(SILO_ACTIVE);
      break;
    case silo_status::shutting_down:
      row.set_status(SILO_SHUTTING_DOWN);
      break;
    case silo_status::dead:
      row.set_status(SILO_DEAD);
      break;
  }
  row.set_start_time_ms(x.start_time_ms);
  row.set_incarnation(x.incarnation);
  for (auto& vote : x.suspicions) {
    auto* v = row.add_suspicions();
    v->set_voter(vote.voter);
    v->set_time_ms(vote.time_ms);
    v->set_incarnation(vote.incarnation);
  }
  row.set_version(x.version);
  row.set_i_am_alive_ms(x.i_am_alive_ms);
  return row;
}

caf::expected<membership_entry> from_proto(const MembershipRow& x) {
  membership_entry entry;
  entry.silo_id = x.silo_id();
  entry.address = x.address();
  entry.gateway_address = x.gateway_address();
  switch (x.status()) {
    case SILO_JOINING:
      entry.status = silo_status::joining;
      break;
    case SILO_ACTIVE:
      entry.status = silo_status::active;
      break;
    case SILO_SHUTTING_DOWN:
      entry.status = silo_status::shutting_down;
      break;
    case SILO_DEAD:
      entry.status = silo_status::dead;
      break;
    default:
      return make_error(errc::corrupt_record, "membership row of silo '"
                                                  + x.silo_id()
                                                  + "' has unknown status "
                                                  + std::to_string(x.status()));
  }
  entry.start_time_ms = x.start_time_ms();
  entry.incarnation = x.incarnation();
  entry.suspicions.reserve(x.suspicions_size());
  for (auto& v : x.suspicions())
    entry.suspicions.push_back(
        suspicion_vote{v.voter(), v.time_ms(), v.incarnation()});
  entry.version = x.version();
  entry.i_am_alive_ms = x.i_am_alive_ms();
  return entry;
}

PartitionMapRecord to_proto(const partition_map& x) {
  PartitionMapRecord rec;
  rec.set_partition_count(x.partition_count);
  for (auto& p : x.partitions) {
    auto* a = rec.add_partitions();
    a->set_partition(p.partition);
    a->set_epoch(p.epoch);
    for (auto& owner : p.owners) {
      auto* o = a->add_owners();
      o->set_silo_id(owner.silo_id);
      o->set_role(owner.role == replica_role::primary ? REPLICA_PRIMARY
                                                      : REPLICA_FOLLOWER);
    }
  }
  rec.set_version(x.version);
  return rec;
}

caf::expected<partition_map> from_proto(const PartitionMapRecord& x) {
  partition_map result;
  result.partition_count = x.partition_count();
  result.partitions.reserve(x.partitions_size());
  for (auto& a : x.partitions()) {
    partition_assignment p;
    p.partition = a.partition();
    p.epoch = a.epoch();
    for (auto& o : a.owners()) {
      partition_owner owner;
      owner.silo_id = o.silo_id();
      if (o.role() == REPLICA_PRIMARY)
        owner.role = replica_role::primary;
      else if (o.role() == REPLICA_FOLLOWER)
        owner.role = replica_role::follower;
      else
        return make_error(errc::corrupt_record,
                          "partition map: partition "
                              + std::to_string(a.partition())
                              + " has an owner with unknown role "
                              + std::to_string(o.role()));
      p.owners.push_back(std::move(owner));
    }
    result.partitions.push_back(std::move(p));
  }
  result.version = x.version();
  return result;
}

// -- watcher_list -------------------------------------------------------------

watch_token watcher_list::add(membership_watcher w) {
  uint64_t id = 0;
  {
    std::lock_guard guard{mtx_};
    id = next_id_++;
    watchers_.emplace(id, std::make_shared<membership_watcher>(std::move(w)));
  }
  std::weak_ptr<watcher_list> weak = shared_from_this();
  return watch_token{[weak, id] {
    if (auto self = weak.lock())
      self->remove(id);
  }};
}

void watcher_list::notify(const membership_change& change) {
  std::lock_guard dispatch{dispatch_mtx_};
  std::vector<std::shared_ptr<membership_watcher>> targets;
  {
    std::lock_guard guard{mtx_};
    auto& last = change.kind == membership_change_kind::table ? last_table_
                                                              : last_map_;
    if (change.version <= last)
      return;
    last = change.version;
    targets.reserve(watchers_.size());
    for (auto& [id, w] : watchers_)
      targets.push_back(w);
  }
  for (auto& w : targets)
    (*w)(change);
}

bool watcher_list::empty() const {
  std::lock_guard guard{mtx_};
  return watchers_.empty();
}

void watcher_list::remove(uint64_t id) {
  std::lock_guard dispatch{dispatch_mtx_};
  std::lock_guard guard{mtx_};
  watchers_.erase(id);
}

} // namespace granary::cluster

#pragma once

// Internal to the membership providers: conversions to and from the storage
// format in membership.proto, and the watcher list both providers share.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include <caf/expected.hpp>

#include "cluster/membership/membership.hpp"
#include "membership.pb.h"
#include "runtime/sys.hpp"

namespace granary::cluster {

/// Converts an entry to its stored form (including version and timestamp).
MembershipRow to_proto(const membership_entry& x);

/// Converts a stored row back; fails with `errc::corrupt_record` for an
/// unknown status.
caf::expected<membership_entry> from_proto(const MembershipRow& x);

/// Converts a partition map to its stored form (including the version).
PartitionMapRecord to_proto(const partition_map& x);

/// Converts a stored partition map back; fails with `errc::corrupt_record`
/// for an unknown role.
caf::expected<partition_map> from_proto(const PartitionMapRecord& x);

/// Subscribers of one store. `notify` calls them one at a time and drops
/// versions older than the last one delivered per kind.
class watcher_list : public std::enable_shared_from_this<watcher_list> {
public:
  /// Adds `w` and returns a token that removes it again.
  watch_token add(membership_watcher w);

  /// Calls every watcher with `change`, unless a newer version of the same
  /// kind was delivered already.
  void notify(const membership_change& change);

  /// Returns whether any watcher is subscribed.
  bool empty() const;

private:
  void remove(uint64_t id);

  // Held while watchers run, so that `remove` waits for a running watcher.
  sys::mutex dispatch_mtx_;
  // Guards the members below.
  mutable sys::mutex mtx_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, std::shared_ptr<membership_watcher>> watchers_;
  uint64_t last_table_ = 0;
  uint64_t last_map_ = 0;
};

} // namespace granary::cluster

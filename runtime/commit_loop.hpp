#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include <caf/error.hpp>

#include "runtime/storage.hpp"
#include "runtime/sys.hpp"

namespace granary {

/// Counters of the commit loop, for metrics and benchmarks.
struct commit_stats {
  /// Durable writes (one fsync each).
  uint64_t groups = 0;
  /// Submitted batches that were committed.
  uint64_t batches = 0;
  /// Operations (puts and deletes) committed.
  uint64_t ops = 0;
  /// Outbox records put and deleted within one group, so never written.
  uint64_t cancelled = 0;
  /// Operations dropped because a later one in the same group wrote the
  /// same key.
  uint64_t superseded = 0;
};

/// Group commit in the runtime: one thread merges the batches of many turns
/// from all partitions into one durable storage write, then notifies each
/// submitter in submission order. Measured on the reference machine, one
/// writer with large `sync=true` batches beats many concurrent small
/// writers by 6-10x, which is why this is not left to RocksDB.
class commit_loop {
public:
  /// Called once the batch is durable (`caf::none`) or failed.
  using callback = std::function<void(const caf::error&)>;

  /// Starts the loop thread. `max_group_ops` bounds one merged write.
  commit_loop(storage& store, size_t max_group_ops);

  /// Stops after draining everything submitted so far.
  ~commit_loop();

  commit_loop(const commit_loop&) = delete;
  commit_loop& operator=(const commit_loop&) = delete;

  /// Queues `batch`; `done` runs on the loop thread after the write.
  /// After a failure, every later submission fails at once (fail-stop).
  void submit(write_batch&& batch, callback done);

  /// Waits until everything submitted so far is written, then stops the
  /// thread. Idempotent.
  void stop();

  /// The first storage error, if the loop has failed.
  caf::error failure() const;

  /// True once a write failed.
  bool failed() const noexcept {
    return failed_.load();
  }

  /// Returns a snapshot of the counters.
  commit_stats stats() const;

private:
  struct item {
    write_batch batch;
    callback done;
  };

  void run();

  // The group is written atomically, so only the last operation on each
  // key matters: drops the earlier ones (a grain's state written by several
  // turns), and drops outbox records put and deleted within the group (a
  // message delivered and processed before its sender's commit) entirely.
  void coalesce(std::vector<item>& group);

  struct op_pos {
    size_t batch;
    size_t op;
  };
  // Last operation per key in the group being coalesced, per column;
  // members so that their buckets are reused.
  std::array<std::unordered_map<std::string_view, op_pos>, column_count> last_;

  storage& store_;
  size_t max_group_ops_;
  mutable sys::mutex mtx_;
  sys::condition_variable cv_;
  std::deque<item> queue_;
  bool stopping_ = false;
  std::atomic<bool> failed_{false};
  caf::error failure_;
  std::atomic<uint64_t> groups_{0};
  std::atomic<uint64_t> batches_{0};
  std::atomic<uint64_t> ops_{0};
  std::atomic<uint64_t> cancelled_{0};
  std::atomic<uint64_t> superseded_{0};
  sys::thread thread_;
};

} // namespace granary

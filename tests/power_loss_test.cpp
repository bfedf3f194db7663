// Power loss and I/O faults under a running silo on RocksDB.
//
// A RocksDB Env wrapper tracks how many bytes of every file reached the OS
// and how many of those were synced. Under its lock, while clients keep
// sending, a copy of the data directory is cut to what a power loss would
// leave, and a fresh silo recovers from the copy. The same wrapper injects
// failing WAL syncs and torn WAL appends into a running silo.
//
// Msg ids are "c<thread>-<n>"; the id alone determines the target probe and
// the delta it adds, so any recovered state can be checked on its own.

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <rocksdb/env.h>

#include "persistence/rocksdb_storage.hpp"
#include "runtime/error.hpp"
#include "testing/test_grains.hpp"

using namespace granary;
using namespace granary::testing;
using namespace std::chrono_literals;

namespace fs = std::filesystem;

namespace {

using clock_type = std::chrono::steady_clock;

// -- a RocksDB environment that knows what is durable -------------------------

/// What a simulated power loss keeps of data that was never synced.
struct loss_model {
  /// Keeps a random prefix of each file's unsynced tail, as a crash in the
  /// middle of writeback may, instead of cutting at the last sync.
  bool torn_tails = false;
  /// Files never synced survive (empty, or torn with `torn_tails`) instead
  /// of vanishing along with their directory entry.
  bool keep_unsynced_files = false;
  /// Credits each WAL file only up to its `wal_sync_lag`-th latest sync.
  /// Nonzero models a runtime that acknowledges ahead of its fsync: what it
  /// acknowledged in the last syncs is not on the disk.
  size_t wal_sync_lag = 0;
};

/// What a simulated power loss did to a copy of the data directory.
struct loss_stats {
  /// Files in the copy.
  size_t files = 0;
  /// Files that vanished because they were never synced.
  size_t omitted = 0;
  /// Bytes written to the copy.
  uint64_t kept_bytes = 0;
  /// Bytes that reached the OS but not the disk, in all files.
  uint64_t dropped_bytes = 0;
  /// The part of `dropped_bytes` that was WAL data.
  uint64_t wal_dropped_bytes = 0;
};

/// Forwards to RocksDB's default environment and records, for every file
/// it writes, the bytes appended and the bytes known synced (only `Sync`
/// and `Fsync` count: neither `RangeSync` nor `Close` makes data durable).
/// Renames, links, truncations and deletions carry the records along, so
/// that `copy_durable` can cut a consistent copy of a data directory to
/// what a power loss would leave. Directory entries are not modeled: a file
/// counts as present once some of its data was synced, and a rename as
/// durable at once (RocksDB syncs the directory after both). It also
/// injects WAL faults on request.
class faulty_env : public rocksdb::EnvWrapper {
public:
  faulty_env()
      : rocksdb::EnvWrapper(rocksdb::Env::Default()) {
    // nop
  }

  const char* Name() const override {
    return "faulty_env";
  }

  /// Fails every Sync and Fsync of a WAL file while set.
  std::atomic<bool> fail_wal_syncs{false};

  /// While set, every append to a WAL file writes half of its bytes and
  /// then fails, like a disk that dies in the middle of a write.
  std::atomic<bool> tear_wal_appends{false};

  /// Faults injected so far.
  std::atomic<uint64_t> injected{0};

  /// WAL syncs started but not yet credited as durable.
  std::atomic<int> wal_syncs_in_flight{0};

  rocksdb::Status NewWritableFile(const std::string& name,
                                  std::unique_ptr<rocksdb::WritableFile>* out,
                                  const rocksdb::EnvOptions& opts) override {
    std::lock_guard guard{mtx_};
    auto st = target()->NewWritableFile(name, out, opts);
    if (st.ok()) {
      auto rec = std::make_shared<record>();
      files_[key(name)] = rec;
      *out = std::make_unique<file>(std::move(*out), *this, rec, is_wal(name));
    }
    return st;
  }

  rocksdb::Status
  ReopenWritableFile(const std::string& name,
                     std::unique_ptr<rocksdb::WritableFile>* out,
                     const rocksdb::EnvOptions& opts) override {
    std::lock_guard guard{mtx_};
    auto st = target()->ReopenWritableFile(name, out, opts);
    if (!st.ok())
      return st;
    auto& rec = files_[key(name)];
    if (!rec) {
      // Bytes written before this environment saw the file count as
      // durable: nothing here can tell otherwise.
      rec = std::make_shared<record>();
      uint64_t size = 0;
      if (target()->GetFileSize(name, &size).ok()) {
        rec->appended = rec->synced = size;
        rec->syncs.push_back(size);
      }
    }
    *out = std::make_unique<file>(std::move(*out), *this, rec, is_wal(name));
    return st;
  }

  // Recycled WAL files (recycle_log_file_num) and random-access writes are
  // off in rocksdb_storage; refuse them rather than model them wrongly.
  rocksdb::Status ReuseWritableFile(const std::string&, const std::string&,
                                    std::unique_ptr<rocksdb::WritableFile>*,
                                    const rocksdb::EnvOptions&) override {
    return rocksdb::Status::NotSupported("faulty_env: ReuseWritableFile");
  }

  rocksdb::Status NewRandomRWFile(const std::string&,
                                  std::unique_ptr<rocksdb::RandomRWFile>*,
                                  const rocksdb::EnvOptions&) override {
    return rocksdb::Status::NotSupported("faulty_env: NewRandomRWFile");
  }

  rocksdb::Status RenameFile(const std::string& src,
                             const std::string& dst) override {
    std::lock_guard guard{mtx_};
    auto st = target()->RenameFile(src, dst);
    if (st.ok()) {
      auto i = files_.find(key(src));
      if (i != files_.end()) {
        auto rec = std::move(i->second);
        files_.erase(i);
        files_[key(dst)] = std::move(rec);
      } else {
        files_.erase(key(dst));
      }
    }
    return st;
  }

  rocksdb::Status LinkFile(const std::string& src,
                           const std::string& dst) override {
    std::lock_guard guard{mtx_};
    auto st = target()->LinkFile(src, dst);
    if (st.ok()) {
      // A hard link shares the inode, and with it what is durable.
      auto i = files_.find(key(src));
      if (i != files_.end())
        files_[key(dst)] = i->second;
    }
    return st;
  }

  rocksdb::Status DeleteFile(const std::string& name) override {
    std::lock_guard guard{mtx_};
    auto st = target()->DeleteFile(name);
    if (st.ok())
      files_.erase(key(name));
    return st;
  }

  rocksdb::Status Truncate(const std::string& name, size_t size) override {
    std::lock_guard guard{mtx_};
    auto st = target()->Truncate(name, size);
    if (st.ok())
      if (auto i = files_.find(key(name)); i != files_.end())
        i->second->truncate(size);
    return st;
  }

  /// Runs `f` while no tracked file can change: a consistent cut.
  template <class F>
  auto frozen(F&& f) {
    std::lock_guard guard{mtx_};
    return f();
  }

  /// Returns whether some WAL holds bytes that are not synced yet. Call
  /// only inside `frozen`.
  bool has_unsynced_wal() const {
    return std::any_of(files_.begin(), files_.end(), [](auto& kvp) {
      return is_wal(kvp.first) && kvp.second->appended > kvp.second->synced;
    });
  }

  /// Copies the regular files of `src` to a new directory `dst`, each cut
  /// to what survives a power loss under `model`. Files this environment
  /// never wrote (LOCK, the info LOG) are copied as they are. Call only
  /// inside `frozen`.
  loss_stats copy_durable(const fs::path& src, const fs::path& dst,
                          const loss_model& model, std::mt19937& rng) {
    loss_stats out;
    fs::create_directories(dst);
    for (auto& entry : fs::directory_iterator{src}) {
      if (!entry.is_regular_file())
        continue; // RocksDB keeps a flat directory.
      auto name = entry.path().filename();
      auto size = entry.file_size();
      auto i = files_.find(key(entry.path().string()));
      if (i == files_.end()) {
        fs::copy_file(entry.path(), dst / name);
        ++out.files;
        out.kept_bytes += size;
        continue;
      }
      auto& rec = *i->second;
      bool wal = is_wal(name.string());
      auto credited = rec.syncs.size();
      if (wal)
        credited -= std::min(credited, model.wal_sync_lag);
      auto len = std::min<uint64_t>(rec.appended, size);
      auto durable = credited == 0 ? 0 : std::min(rec.syncs[credited - 1], len);
      uint64_t keep = 0;
      if (credited == 0 && !model.keep_unsynced_files) {
        ++out.omitted;
      } else {
        keep = durable;
        // A torn tail keeps part of what was not synced, never all of it.
        if (auto tail = len - durable; model.torn_tails && tail > 0)
          keep += std::uniform_int_distribution<uint64_t>{0, tail - 1}(rng);
        copy_prefix(entry.path(), dst / name, keep);
        ++out.files;
      }
      out.kept_bytes += keep;
      out.dropped_bytes += len - keep;
      if (wal)
        out.wal_dropped_bytes += len - keep;
    }
    return out;
  }

private:
  // What reached the OS and what reached the disk, per file (inode).
  struct record {
    uint64_t appended = 0;
    uint64_t synced = 0;
    // `appended` at the start of every successful sync, in order.
    std::vector<uint64_t> syncs;

    void truncate(uint64_t size) {
      appended = std::min(appended, size);
      synced = std::min(synced, size);
      for (auto& x : syncs)
        x = std::min(x, size);
    }
  };

  class file : public rocksdb::WritableFileWrapper {
  public:
    file(std::unique_ptr<rocksdb::WritableFile> f, faulty_env& env,
         std::shared_ptr<record> rec, bool wal)
        : rocksdb::WritableFileWrapper(f.get())
        , owned_(std::move(f))
        , env_(env)
        , rec_(std::move(rec))
        , wal_(wal) {
      // nop
    }

    rocksdb::Status Append(const rocksdb::Slice& data) override {
      return env_.append(*owned_, *rec_, wal_, data);
    }

    rocksdb::Status Append(const rocksdb::Slice& data,
                           const rocksdb::DataVerificationInfo&) override {
      return Append(data);
    }

    // Only direct I/O uses positioned appends; rocksdb_storage does not.
    rocksdb::Status PositionedAppend(const rocksdb::Slice&, uint64_t) override {
      return rocksdb::Status::NotSupported("faulty_env: PositionedAppend");
    }

    rocksdb::Status
    PositionedAppend(const rocksdb::Slice&, uint64_t,
                     const rocksdb::DataVerificationInfo&) override {
      return rocksdb::Status::NotSupported("faulty_env: PositionedAppend");
    }

    rocksdb::Status Truncate(uint64_t size) override {
      std::lock_guard guard{env_.mtx_};
      auto st = owned_->Truncate(size);
      if (st.ok())
        rec_->truncate(size);
      return st;
    }

    rocksdb::Status Sync() override {
      return env_.sync(*rec_, wal_, [this] { return owned_->Sync(); });
    }

    rocksdb::Status Fsync() override {
      return env_.sync(*rec_, wal_, [this] { return owned_->Fsync(); });
    }

  private:
    std::unique_ptr<rocksdb::WritableFile> owned_;
    faulty_env& env_;
    std::shared_ptr<record> rec_;
    bool wal_;
  };

  static std::string key(const std::string& name) {
    return fs::path{name}.lexically_normal().string();
  }

  static bool is_wal(const std::string& name) {
    return name.ends_with(".log");
  }

  static void copy_prefix(const fs::path& from, const fs::path& to,
                          uint64_t len) {
    std::ifstream in{from, std::ios::binary};
    std::ofstream out{to, std::ios::binary | std::ios::trunc};
    std::vector<char> buf(1 << 16);
    while (len > 0 && in) {
      auto n
          = static_cast<std::streamsize>(std::min<uint64_t>(len, buf.size()));
      in.read(buf.data(), n);
      out.write(buf.data(), in.gcount());
      len -= static_cast<uint64_t>(in.gcount());
    }
    ASSERT_EQ(len, 0u) << "cannot copy " << from;
  }

  rocksdb::Status append(rocksdb::WritableFile& f, record& rec, bool wal,
                         const rocksdb::Slice& data) {
    // Held across the write, so that a cut never sees bytes in the file
    // that the record does not count yet.
    std::lock_guard guard{mtx_};
    if (wal && tear_wal_appends) {
      ++injected;
      rocksdb::Slice half{data.data(), data.size() / 2};
      if (f.Append(half).ok())
        rec.appended += half.size();
      return rocksdb::Status::IOError("injected torn append");
    }
    auto st = f.Append(data);
    if (st.ok())
      rec.appended += data.size();
    return st;
  }

  template <class F>
  rocksdb::Status sync(record& rec, bool wal, F do_sync) {
    if (wal && fail_wal_syncs) {
      ++injected;
      return rocksdb::Status::IOError("injected fsync failure");
    }
    // Only bytes appended before the sync started are surely covered. The
    // lock is not held across the sync: a cut taken meanwhile must treat
    // those bytes as not durable, as a power loss would.
    uint64_t len = 0;
    {
      std::lock_guard guard{mtx_};
      len = rec.appended;
      if (wal)
        ++wal_syncs_in_flight;
    }
    auto st = do_sync();
    std::lock_guard guard{mtx_};
    if (st.ok()) {
      rec.synced = std::max(rec.synced, len);
      rec.syncs.push_back(len);
    }
    if (wal)
      --wal_syncs_in_flight;
    return st;
  }

  std::mutex mtx_;
  std::unordered_map<std::string, std::shared_ptr<record>> files_;
};

// -- the workload -------------------------------------------------------------

/// Identifies one durable Add: client thread and its sequence number.
struct msg_key {
  uint32_t thread = 0;
  uint64_t n = 0;
};

std::string msg_id(msg_key k) {
  return "c" + std::to_string(k.thread) + "-" + std::to_string(k.n);
}

std::optional<msg_key> parse_msg_id(std::string_view id) {
  msg_key k;
  auto dash = id.find('-');
  if (!id.starts_with('c') || dash == std::string_view::npos)
    return std::nullopt;
  auto end = id.data() + id.size();
  auto [p1, e1] = std::from_chars(id.data() + 1, id.data() + dash, k.thread);
  auto [p2, e2] = std::from_chars(id.data() + dash + 1, end, k.n);
  if (e1 != std::errc{} || e2 != std::errc{} || p2 != end || msg_id(k) != id)
    return std::nullopt;
  return k;
}

std::string grain_of(msg_key k, uint32_t grains) {
  return "g" + std::to_string((k.thread * 7 + k.n) % grains);
}

// Distinct deltas make a value that does not match its seen ids visible.
int64_t delta_of(msg_key k) {
  return 1 + static_cast<int64_t>((k.thread + k.n) % 7);
}

Add add_of(msg_key k) {
  Add m;
  m.set_delta(delta_of(k));
  return m;
}

/// Every id issued, given the per-thread counts of `traffic::issued`.
std::vector<std::string> all_ids(const std::vector<uint64_t>& issued) {
  std::vector<std::string> out;
  for (uint32_t t = 0; t < issued.size(); ++t)
    for (uint64_t n = 0; n < issued[t]; ++n)
      out.push_back(msg_id({t, n}));
  return out;
}

/// Client threads that each keep up to `window` durable Adds in flight and
/// record every outcome. After a thread sees the first failure it sends at
/// most `sends_after_failure` more, which must all fail as well.
class traffic {
public:
  traffic(silo& s, uint32_t threads, uint32_t grains, uint32_t window,
          uint32_t sends_after_failure = 16)
      : silo_(s)
      , grains_(grains)
      , window_(window)
      , sends_after_failure_(sends_after_failure)
      , st_(std::make_shared<shared>())
      , issued_(std::make_unique<std::atomic<uint64_t>[]>(threads)) {
    st_->inflight.resize(threads);
    for (uint32_t t = 0; t < threads; ++t)
      threads_.emplace_back([this, t] { run(t); });
  }

  traffic(const traffic&) = delete;
  traffic& operator=(const traffic&) = delete;

  ~traffic() {
    finish();
  }

  /// Stops issuing and waits for the outcome of every send; false if some
  /// never completed.
  bool finish() {
    {
      std::lock_guard guard{st_->mtx};
      st_->stop = true;
    }
    st_->cv.notify_all();
    for (auto& t : threads_)
      t.join();
    threads_.clear();
    std::unique_lock guard{st_->mtx};
    return st_->cv.wait_for(guard, 30s, [this] {
      return std::all_of(st_->inflight.begin(), st_->inflight.end(),
                         [](uint32_t x) { return x == 0; });
    });
  }

  /// Blocks until `n` sends were acknowledged; false on timeout or failure.
  bool wait_acked(size_t n, std::chrono::milliseconds timeout = 20s) {
    std::unique_lock guard{st_->mtx};
    st_->cv.wait_for(guard, timeout, [&] {
      return st_->acked.size() >= n || st_->failure_seen;
    });
    return st_->acked.size() >= n;
  }

  /// Blocks until every thread stopped issuing after the first failure.
  bool wait_idle_after_failure(std::chrono::milliseconds timeout = 20s) {
    std::unique_lock guard{st_->mtx};
    return st_->cv.wait_for(guard, timeout,
                            [&] { return st_->exited == threads_.size(); });
  }

  size_t acked_count() const {
    std::lock_guard guard{st_->mtx};
    return st_->acked.size();
  }

  /// Acknowledged ids in order of acknowledgement.
  std::vector<std::string> acked() const {
    std::lock_guard guard{st_->mtx};
    return st_->acked;
  }

  /// Failed sends with their errors.
  std::vector<std::pair<std::string, caf::error>> failed() const {
    std::lock_guard guard{st_->mtx};
    return st_->failed;
  }

  /// Sends acknowledged although issued after a failure was reported.
  size_t late_acks() const {
    std::lock_guard guard{st_->mtx};
    return st_->late_acks;
  }

  /// Per thread, how many ids were issued (ids n < count).
  std::vector<uint64_t> issued() const {
    std::vector<uint64_t> out;
    for (size_t t = 0; t < st_->inflight.size(); ++t)
      out.push_back(issued_[t].load());
    return out;
  }

private:
  // Outlives the traffic object: callbacks may run after `finish` returned.
  struct shared {
    mutable std::mutex mtx;
    std::condition_variable cv;
    std::vector<uint32_t> inflight;
    std::vector<std::string> acked;
    std::vector<std::pair<std::string, caf::error>> failed;
    size_t late_acks = 0;
    size_t exited = 0;
    bool stop = false;
    bool failure_seen = false;
  };

  void run(uint32_t t) {
    uint32_t after_failure = 0;
    for (uint64_t n = 0;; ++n) {
      bool late = false;
      {
        std::unique_lock guard{st_->mtx};
        st_->cv.wait(guard,
                     [&] { return st_->stop || st_->inflight[t] < window_; });
        late = st_->failure_seen;
        if (st_->stop || (late && ++after_failure > sends_after_failure_))
          break;
        ++st_->inflight[t];
      }
      msg_key k{t, n};
      issued_[t].store(n + 1);
      silo_.send_async(
          id_of<probe>(grain_of(k, grains_)), add_of(k), msg_id(k),
          [st = st_, t, id = msg_id(k), late](const caf::error& err) {
            {
              std::lock_guard guard{st->mtx};
              if (!err) {
                st->acked.push_back(id);
                if (late)
                  ++st->late_acks;
              } else {
                st->failed.emplace_back(id, err);
                st->failure_seen = true;
              }
              --st->inflight[t];
            }
            st->cv.notify_all();
          });
    }
    {
      std::lock_guard guard{st_->mtx};
      ++st_->exited;
    }
    st_->cv.notify_all();
  }

  silo& silo_;
  uint32_t grains_;
  uint32_t window_;
  uint32_t sends_after_failure_;
  std::shared_ptr<shared> st_;
  std::unique_ptr<std::atomic<uint64_t>[]> issued_;
  std::vector<std::thread> threads_;
};

/// Reads the probes in a loop with transient calls and keeps the latest
/// reply per grain. A reply may only reveal committed state, so every id
/// it shows must survive a later power loss.
class observer {
public:
  observer(silo& s, uint32_t grains)
      : silo_(s)
      , grains_(grains)
      , thread_([this] { run(); }) {
    // nop
  }

  observer(const observer&) = delete;
  observer& operator=(const observer&) = delete;

  ~observer() {
    stop_ = true;
    thread_.join();
  }

  /// Ids shown by replies received so far.
  std::vector<std::string> seen() const {
    std::lock_guard guard{mtx_};
    std::vector<std::string> out;
    for (auto& [g, ids] : latest_)
      out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }

  /// Number of successful reads.
  size_t reads() const {
    std::lock_guard guard{mtx_};
    return reads_;
  }

private:
  void run() {
    for (uint32_t i = 0; !stop_; ++i) {
      auto g = "g" + std::to_string(i % grains_);
      auto res = grain_ref<probe>{silo_, g}.call<Value>(Get{});
      if (res) {
        std::lock_guard guard{mtx_};
        latest_[g].assign(res->seen().begin(), res->seen().end());
        ++reads_;
      }
      std::this_thread::sleep_for(2ms);
    }
  }

  silo& silo_;
  uint32_t grains_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mtx_;
  std::map<std::string, std::vector<std::string>> latest_;
  size_t reads_ = 0;
  std::thread thread_;
};

// -- checks -------------------------------------------------------------------

/// What `audit` found in the probes of a recovered silo.
struct audit_result {
  /// The first few problems, for the failure message.
  std::vector<std::string> problems;
  /// All problems.
  size_t problem_count = 0;
  /// Required ids that are not applied.
  size_t lost = 0;
  /// Every applied id.
  std::unordered_set<std::string> applied;

  void report(std::string what) {
    if (problems.size() < 8)
      problems.push_back(std::move(what));
    ++problem_count;
  }

  std::string summary() const {
    std::string out = std::to_string(problem_count) + " problems";
    for (auto& p : problems)
      out += "\n  " + p;
    return out;
  }
};

/// Reads every probe and checks that each applied id was issued to that
/// grain and is applied once, that the value is the sum of the applied
/// ids' deltas (no half-applied turn), and that every `required` id is
/// applied.
audit_result audit(silo& s, uint32_t grains,
                   const std::vector<uint64_t>& issued,
                   std::span<const std::string> required) {
  audit_result out;
  for (uint32_t i = 0; i < grains; ++i) {
    auto g = "g" + std::to_string(i);
    auto res = grain_ref<probe>{s, g}.call<Value>(Get{});
    if (!res) {
      out.report("cannot read " + g + ": " + describe(res.error()));
      continue;
    }
    int64_t sum = 0;
    for (auto& id : res->seen()) {
      auto k = parse_msg_id(id);
      if (!k || k->thread >= issued.size() || k->n >= issued[k->thread]) {
        out.report(g + " applied unknown id " + id);
        continue;
      }
      if (grain_of(*k, grains) != g)
        out.report(g + " applied " + id + " of " + grain_of(*k, grains));
      if (!out.applied.insert(id).second)
        out.report(g + " applied " + id + " twice");
      sum += delta_of(*k);
    }
    if (sum != res->value())
      out.report(g + " has value " + std::to_string(res->value())
                 + " but its applied ids add up to " + std::to_string(sum));
  }
  for (auto& id : required) {
    if (out.applied.count(id) == 0) {
      ++out.lost;
      out.report("acknowledged " + id + " is lost");
    }
  }
  return out;
}

/// Resends every issued id, as a client does after an unknown outcome;
/// returns the errors.
std::vector<caf::error> resend(silo& s, uint32_t grains,
                               const std::vector<uint64_t>& issued) {
  struct state {
    std::mutex mtx;
    std::condition_variable cv;
    size_t inflight = 0;
    std::vector<caf::error> errors;
  };
  constexpr size_t window = 512;
  auto st = std::make_shared<state>();
  for (auto& id : all_ids(issued)) {
    {
      std::unique_lock guard{st->mtx};
      st->cv.wait(guard, [&] { return st->inflight < window; });
      ++st->inflight;
    }
    auto k = *parse_msg_id(id);
    s.send_async(id_of<probe>(grain_of(k, grains)), add_of(k), id,
                 [st](const caf::error& err) {
                   {
                     std::lock_guard guard{st->mtx};
                     if (err)
                       st->errors.push_back(err);
                     --st->inflight;
                   }
                   st->cv.notify_all();
                 });
  }
  std::unique_lock guard{st->mtx};
  if (!st->cv.wait_for(guard, 60s, [&] { return st->inflight == 0; }))
    st->errors.push_back(
        make_error(errc::timeout, "resent messages were not acknowledged"));
  return st->errors;
}

// -- running silos -----------------------------------------------------------

constexpr uint32_t partitions = 8;

/// Opens RocksDB in `dir` (through `env`, if any) and starts a silo on it.
caf::expected<std::unique_ptr<silo>> start_silo(const fs::path& dir,
                                                rocksdb::Env* env = nullptr) {
  rocksdb_config rc;
  rc.data_dir = dir.string();
  rc.block_cache_bytes = 8 << 20;
  rc.env = env;
  auto store = rocksdb_storage::open(rc);
  if (!store)
    return std::move(store.error());
  silo_config cfg;
  cfg.partitions = partitions;
  cfg.threads = 2;
  grain_registry reg;
  if (auto err = register_grain<probe>(reg))
    return err;
  return silo::start(cfg, std::move(reg), std::move(*store));
}

/// Stops and destroys `s`, closing its store. A silo that does not shut
/// down within `limit` is a hang: a watchdog aborts the process with a
/// message rather than leaving the test runner waiting. The stop runs on
/// the calling thread, which must be the one that started the silo (see
/// `silo_lifecycle.stop_on_another_thread_than_start`).
caf::error stop_within(std::unique_ptr<silo>& s, std::chrono::seconds limit) {
  std::mutex mtx;
  std::condition_variable cv;
  bool done = false;
  std::thread watchdog{[&] {
    std::unique_lock guard{mtx};
    if (!cv.wait_for(guard, limit, [&] { return done; })) {
      std::fprintf(stderr, "power_loss_test: silo did not stop within %llds\n",
                   static_cast<long long>(limit.count()));
      std::abort();
    }
  }};
  auto err = s->stop();
  s.reset();
  {
    std::lock_guard guard{mtx};
    done = true;
  }
  cv.notify_all();
  watchdog.join();
  return err;
}

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

class tmp_dir_test : public ::testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/granary_power_loss_XXXXXX";
    auto* dir = mkdtemp(tmpl);
    ASSERT_NE(dir, nullptr) << std::strerror(errno);
    root_ = dir;
  }

  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  fs::path root_;
};

class power_loss : public tmp_dir_test {};

class silo_lifecycle : public tmp_dir_test {};

class io_fault : public tmp_dir_test {
protected:
  enum class fault { wal_sync, torn_wal_append };

  // Runs traffic into a silo, injects `f` while it flows, and checks the
  // fail-stop, a power loss after the fault, and recovery on reopen.
  void run_fault(fault f, bool heal_before_stop);
};

} // namespace

// -- power loss ---------------------------------------------------------------

// While clients send, the data directory is cut eight times to what a power
// loss would leave, under three models of unsynced data; every other cut
// waits for a WAL sync in flight, when acknowledged-looking bytes are most
// at risk. A silo recovered from each cut must hold every message
// acknowledged (and every id a transient read revealed) before the cut,
// each applied once with its delta; resending all issued ids must then
// apply the missing ones exactly once, which shows that each turn's state
// and dedup record are durable together. Each cut is also taken as a
// "lying" copy whose WALs lack their last syncs; the same checks must find
// losses there, which shows that they detect a runtime acknowledging ahead
// of its fsync.
TEST_F(power_loss, acknowledged_messages_survive_losing_unsynced_data) {
  constexpr uint32_t threads = 4;
  // Many grains keep each probe's seen list, rewritten by every turn, short.
  constexpr uint32_t grains = 64;
  constexpr uint32_t window = 16;
  constexpr int cuts = 8;
  constexpr size_t lie_lag = 16;
  auto t0 = clock_type::now();
  auto data = root_ / "data";
  faulty_env env;
  auto s = start_silo(data, &env);
  ASSERT_TRUE(s) << describe(s.error());
  std::mt19937 rng{20'261'127};
  struct cut {
    loss_model model;
    // Waits for a WAL sync in flight, so that there is a tail to lose.
    bool mid_sync = false;
    loss_stats stats;
    loss_stats lie_stats;
    size_t acked = 0;
    std::vector<std::string> observed;
    std::vector<uint64_t> issued;
  };
  std::vector<cut> taken(cuts);
  for (int i = 0; i < cuts; ++i) {
    taken[i].model.torn_tails = i % 3 == 1;
    taken[i].model.keep_unsynced_files = i % 3 != 0;
    taken[i].mid_sync = i % 2 == 1;
  }
  std::vector<std::string> acked;
  std::vector<uint64_t> issued;
  size_t reads = 0;
  {
    traffic tr{**s, threads, grains, window};
    observer obs{**s, grains};
    ASSERT_TRUE(tr.wait_acked(200)) << "no traffic";
    for (int i = 0; i < cuts; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds{
          std::uniform_int_distribution{50, 150}(rng)});
      auto& c = taken[i];
      auto dir = root_ / ("cut" + std::to_string(i));
      auto deadline = clock_type::now() + 5s;
      for (bool done = false; !done;) {
        while (c.mid_sync && env.wal_syncs_in_flight == 0
               && clock_type::now() < deadline)
          std::this_thread::yield();
        done = env.frozen([&] {
          if (c.mid_sync && !env.has_unsynced_wal()
              && clock_type::now() < deadline)
            return false;
          // Acknowledgements and reads before the cut are after its syncs.
          c.acked = tr.acked_count();
          c.observed = obs.seen();
          c.stats = env.copy_durable(data, dir, c.model, rng);
          loss_model lie{.wal_sync_lag = lie_lag};
          c.lie_stats = env.copy_durable(
              data, root_ / ("lie" + std::to_string(i)), lie, rng);
          c.issued = tr.issued();
          return true;
        });
      }
    }
    ASSERT_TRUE(tr.finish()) << "sends were never acknowledged";
    reads = obs.reads();
    acked = tr.acked();
    issued = tr.issued();
    auto failed = tr.failed();
    ASSERT_TRUE(failed.empty())
        << failed.size() << " sends failed, first " << failed[0].first << ": "
        << describe(failed[0].second);
  }
  auto traffic_secs = seconds_since(t0);
  EXPECT_FALSE(stop_within(*s, 30s));
  // Without a power loss, everything issued was acknowledged and is there.
  {
    auto r = start_silo(data);
    ASSERT_TRUE(r) << describe(r.error());
    auto all = all_ids(issued);
    EXPECT_EQ(all.size(), acked.size());
    auto res = audit(**r, grains, issued, all);
    EXPECT_EQ(res.problem_count, 0u) << "clean stop: " << res.summary();
    EXPECT_FALSE(stop_within(*r, 30s));
  }
  for (int i = 0; i < cuts; ++i) {
    SCOPED_TRACE("cut " + std::to_string(i));
    auto& c = taken[i];
    std::span<const std::string> before{acked.data(), c.acked};
    auto r = start_silo(root_ / ("cut" + std::to_string(i)));
    ASSERT_TRUE(r) << describe(r.error());
    auto res = audit(**r, grains, c.issued, before);
    EXPECT_EQ(res.problem_count, 0u) << res.summary();
    std::vector<std::string> unread;
    for (auto& id : c.observed)
      if (res.applied.count(id) == 0)
        unread.push_back(id);
    EXPECT_TRUE(unread.empty())
        << unread.size() << " ids revealed by reads before the cut are lost, "
        << "first " << unread[0];
    auto errors = resend(**r, grains, c.issued);
    EXPECT_TRUE(errors.empty())
        << errors.size() << " resends failed, first: " << describe(errors[0]);
    auto all = all_ids(c.issued);
    auto after = audit(**r, grains, c.issued, all);
    EXPECT_EQ(after.problem_count, 0u)
        << "after resending: " << after.summary();
    EXPECT_FALSE(stop_within(*r, 30s));
    // The lying copy must lose acknowledged messages, or the checks above
    // could not tell a runtime that acknowledges before its fsync.
    auto l = start_silo(root_ / ("lie" + std::to_string(i)));
    ASSERT_TRUE(l) << describe(l.error());
    auto lie = audit(**l, grains, c.issued, before);
    EXPECT_GT(lie.lost, 0u) << "a copy lacking the last " << lie_lag
                            << " WAL syncs lost nothing acknowledged";
    EXPECT_FALSE(stop_within(*l, 30s));
    std::cout << "cut " << i << ": " << c.acked << " acked before, "
              << c.observed.size() << " ids read before, " << res.applied.size()
              << " applied, " << c.stats.files << " files, " << c.stats.omitted
              << " omitted, " << c.stats.dropped_bytes << " bytes dropped ("
              << c.stats.wal_dropped_bytes << " of WAL); lying copy lost "
              << lie.lost << '\n';
  }
  // Mid-sync cuts must really have cut WAL bytes away, or their power loss
  // was a no-op and their torn tails tested nothing.
  for (int i = 1; i < cuts; i += 2)
    EXPECT_GT(taken[i].stats.wal_dropped_bytes, 0u)
        << "mid-sync cut " << i << " dropped no unsynced WAL bytes";
  EXPECT_GT(reads, 0u);
  std::cout << acked.size() << " acked in " << traffic_secs << " s, " << reads
            << " reads; whole test " << seconds_since(t0) << " s\n";
}

// -- I/O faults ---------------------------------------------------------------

void io_fault::run_fault(fault f, bool heal_before_stop) {
  constexpr uint32_t threads = 3;
  constexpr uint32_t grains = 8;
  auto data = root_ / "data";
  faulty_env env;
  auto s = start_silo(data, &env);
  ASSERT_TRUE(s) << describe(s.error());
  std::vector<std::string> acked;
  std::vector<std::pair<std::string, caf::error>> failed;
  std::vector<uint64_t> issued;
  size_t acked_at_cut = 0;
  std::mt19937 rng{7};
  {
    traffic tr{**s, threads, grains, 8};
    ASSERT_TRUE(tr.wait_acked(300)) << "no traffic before the fault";
    if (f == fault::wal_sync)
      env.fail_wal_syncs = true;
    else
      env.tear_wal_appends = true;
    // Every client thread sees the failure and sends a few more.
    ASSERT_TRUE(tr.wait_idle_after_failure()) << "the fault went unnoticed";
    ASSERT_TRUE(tr.finish()) << "sends were never answered after the fault";
    acked = tr.acked();
    failed = tr.failed();
    issued = tr.issued();
    EXPECT_EQ(tr.late_acks(), 0u)
        << "sends issued after a reported failure were acknowledged";
  }
  EXPECT_GT(env.injected.load(), 0u);
  ASSERT_FALSE(failed.empty());
  for (auto& [id, err] : failed)
    EXPECT_EQ(code_of(err), errc::storage_failure)
        << id << ": " << describe(err);
  auto failure = (*s)->failure();
  EXPECT_EQ(code_of(failure), errc::storage_failure) << describe(failure);
  // Later requests are refused at once, even once the disk is healthy
  // again: the outcome of the failed write is unknown until reopen.
  if (heal_before_stop) {
    env.fail_wal_syncs = false;
    env.tear_wal_appends = false;
  }
  for (int i = 0; i < 3; ++i) {
    auto t = clock_type::now();
    auto err = (*s)->send(id_of<probe>("late"), add_of({99, 0}),
                          "late-" + std::to_string(i), 5s);
    EXPECT_EQ(code_of(err), errc::storage_failure) << describe(err);
    EXPECT_LT(seconds_since(t), 1.0);
  }
  // Transient reads may be served or refused, but must answer.
  for (uint32_t i = 0; i < grains; ++i) {
    auto res
        = grain_ref<probe>{**s, "g" + std::to_string(i)}.call<Value>(Get{}, 5s);
    if (!res) {
      EXPECT_EQ(code_of(res.error()), errc::storage_failure)
          << describe(res.error());
    }
  }
  // A power loss now keeps every acknowledged message as well.
  env.frozen([&] {
    acked_at_cut = acked.size();
    env.copy_durable(data, root_ / "cut", loss_model{}, rng);
  });
  auto stopped = stop_within(*s, 30s);
  EXPECT_EQ(code_of(stopped), errc::storage_failure) << describe(stopped);
  env.fail_wal_syncs = false;
  env.tear_wal_appends = false;
  {
    auto r = start_silo(root_ / "cut");
    ASSERT_TRUE(r) << "power loss after the fault: " << describe(r.error());
    auto res = audit(**r, grains, issued, {acked.data(), acked_at_cut});
    EXPECT_EQ(res.problem_count, 0u)
        << "power loss after the fault: " << res.summary();
    EXPECT_FALSE(stop_within(*r, 30s));
  }
  auto r = start_silo(data);
  ASSERT_TRUE(r) << "reopen: " << describe(r.error());
  auto res = audit(**r, grains, issued, acked);
  EXPECT_EQ(res.problem_count, 0u) << "reopen: " << res.summary();
  // A failed send is applied entirely or not at all (audit checked the
  // "entirely"); count which, for the log.
  size_t present = 0;
  for (auto& [id, err] : failed)
    present += res.applied.count(id);
  // Clients resend what failed; dedup makes that exactly once.
  auto errors = resend(**r, grains, issued);
  EXPECT_TRUE(errors.empty())
      << errors.size() << " resends failed, first: " << describe(errors[0]);
  auto all = all_ids(issued);
  auto after = audit(**r, grains, issued, all);
  EXPECT_EQ(after.problem_count, 0u) << "after resending: " << after.summary();
  // New durable work goes through.
  for (int i = 0; i < 5; ++i)
    EXPECT_FALSE((*r)->send(id_of<probe>("fresh"), add_of({0, 0}),
                            "fresh-" + std::to_string(i)));
  auto fresh = grain_ref<probe>{**r, "fresh"}.call<Value>(Get{});
  ASSERT_TRUE(fresh) << describe(fresh.error());
  EXPECT_EQ(fresh->value(), 5 * delta_of({0, 0}));
  EXPECT_EQ(fresh->seen_size(), 5);
  EXPECT_FALSE(stop_within(*r, 30s));
  std::cout << acked.size() << " acked, " << failed.size() << " failed ("
            << present << " of them applied after reopen), "
            << env.injected.load() << " faults injected\n";
}

// A WAL fsync fails under load: the send in the failing group commit gets
// storage_failure, every later request too, stopping does not hang, and a
// reopen on a healthy disk has every acknowledged message exactly once.
TEST_F(io_fault, fsync_failure_fail_stops_silo_and_reopen_recovers) {
  run_fault(fault::wal_sync, false);
}

// A WAL append fails after writing half its bytes (a torn record) and the
// disk then recovers: the silo stays fail-stopped until reopened, closes
// cleanly, and recovery skips the torn record.
TEST_F(io_fault, torn_wal_append_fail_stops_silo_and_reopen_recovers) {
  run_fault(fault::torn_wal_append, true);
}

// A WAL fsync fails while a silo starts (its metadata commit): start
// reports storage_failure instead of serving, and the next start on a
// healthy disk finds all data.
TEST_F(io_fault, fsync_failure_during_start_is_reported) {
  auto data = root_ / "data";
  faulty_env env;
  {
    auto s = start_silo(data, &env);
    ASSERT_TRUE(s) << describe(s.error());
    for (int i = 0; i < 5; ++i)
      ASSERT_FALSE((*s)->send(id_of<probe>("g0"),
                              add_of({0, static_cast<uint64_t>(i)}),
                              msg_id({0, static_cast<uint64_t>(i)})));
    EXPECT_FALSE(stop_within(*s, 30s));
  }
  {
    rocksdb_config rc;
    rc.data_dir = data.string();
    rc.env = &env;
    auto store = rocksdb_storage::open(rc);
    ASSERT_TRUE(store) << describe(store.error());
    env.fail_wal_syncs = true;
    silo_config cfg;
    cfg.partitions = partitions;
    grain_registry reg;
    ASSERT_FALSE(register_grain<probe>(reg));
    // Start (and, should it succeed, stop) on one thread: a silo must stop
    // on the thread that started it.
    auto fut = std::async(std::launch::async, [&]() -> caf::error {
      auto s = silo::start(cfg, std::move(reg), std::move(*store));
      if (!s)
        return std::move(s.error());
      static_cast<void>((*s)->stop());
      return make_error(errc::unspecified, "silo started on a failing disk");
    });
    if (fut.wait_for(30s) != std::future_status::ready) {
      std::fprintf(stderr, "power_loss_test: silo::start hangs on a failing "
                           "disk\n");
      std::abort();
    }
    auto err = fut.get();
    EXPECT_EQ(code_of(err), errc::storage_failure) << describe(err);
    env.fail_wal_syncs = false;
  }
  auto s = start_silo(data);
  ASSERT_TRUE(s) << describe(s.error());
  auto res = audit(**s, 1, {5}, all_ids({5}));
  EXPECT_EQ(res.problem_count, 0u) << res.summary();
  EXPECT_FALSE(stop_within(*s, 30s));
}

// -- silo lifecycle -----------------------------------------------------------

// Stopping a silo on another thread than the one that started it must not
// hang. CAF 0.17 keeps a reference to its logger in a thread-local of the
// thread that constructed the actor system, and ~actor_system waits for the
// logger's destructor, so destroying the system elsewhere waits until the
// starting thread exits. Here the starting thread stays alive for
// `patience`, then exits, which unblocks a hung stop so the test can
// report it instead of hanging.
TEST_F(silo_lifecycle, stop_on_another_thread_than_start) {
  constexpr auto patience = 5s;
  caf::expected<std::unique_ptr<silo>> s{caf::error{}};
  std::promise<void> started;
  std::promise<void> release;
  std::thread starter{[&] {
    s = start_silo(root_ / "data");
    started.set_value();
    release.get_future().wait();
  }};
  started.get_future().wait();
  if (!s) {
    release.set_value();
    starter.join();
    FAIL() << describe(s.error());
  }
  EXPECT_FALSE((*s)->send(id_of<probe>("g0"), add_of({0, 0}), msg_id({0, 0})));
  auto stopped = std::async(std::launch::async, [&] {
    static_cast<void>((*s)->stop());
    s->reset();
  });
  auto hung = stopped.wait_for(patience) != std::future_status::ready;
  release.set_value();
  starter.join();
  stopped.wait();
  EXPECT_FALSE(hung) << "silo::stop on another thread than silo::start hung "
                        "until the starting thread exited";
}

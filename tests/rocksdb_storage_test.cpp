#include "persistence/rocksdb_storage.hpp"

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <rocksdb/env.h>

#include "runtime/error.hpp"
#include "runtime/keys.hpp"
#include "runtime/memory_storage.hpp"

using namespace granary;

namespace {

using kv_list = std::vector<std::pair<std::string, std::string>>;

// Forwards to the default environment, but fails every Sync and Fsync of
// WAL files once `fail_syncs` is set, like a dying disk.
class failing_env : public rocksdb::EnvWrapper {
public:
  failing_env()
      : rocksdb::EnvWrapper(rocksdb::Env::Default()) {
    // nop
  }

  const char* Name() const override {
    return "failing_env";
  }

  rocksdb::Status NewWritableFile(const std::string& name,
                                  std::unique_ptr<rocksdb::WritableFile>* out,
                                  const rocksdb::EnvOptions& opts) override {
    auto st = target()->NewWritableFile(name, out, opts);
    if (st.ok() && name.ends_with(".log"))
      *out = std::make_unique<file>(std::move(*out), fail_syncs);
    return st;
  }

  std::atomic<bool> fail_syncs{false};

private:
  class file : public rocksdb::WritableFileWrapper {
  public:
    file(std::unique_ptr<rocksdb::WritableFile> f, std::atomic<bool>& fail)
        : rocksdb::WritableFileWrapper(f.get())
        , owned_(std::move(f))
        , fail_(fail) {
      // nop
    }

    rocksdb::Status Sync() override {
      if (fail_)
        return rocksdb::Status::IOError("injected fsync failure");
      return rocksdb::WritableFileWrapper::Sync();
    }

    rocksdb::Status Fsync() override {
      if (fail_)
        return rocksdb::Status::IOError("injected fsync failure");
      return rocksdb::WritableFileWrapper::Fsync();
    }

  private:
    std::unique_ptr<rocksdb::WritableFile> owned_;
    std::atomic<bool>& fail_;
  };
};

class rocksdb_storage_test : public ::testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/granary_rocksdb_test_XXXXXX";
    auto* dir = mkdtemp(tmpl);
    ASSERT_NE(dir, nullptr) << std::strerror(errno);
    root_ = dir;
    cfg_.data_dir = root_ + "/data";
  }

  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(root_, ec);
  }

  std::unique_ptr<rocksdb_storage> open_store() {
    auto res = rocksdb_storage::open(cfg_);
    EXPECT_TRUE(res) << describe(res.error());
    return res ? std::move(*res) : nullptr;
  }

  static caf::error commit(storage& st, const write_batch& batch) {
    const write_batch* batches[] = {&batch};
    return st.commit(batches);
  }

  static std::optional<std::string> lookup(storage& st, column col,
                                           std::string_view key) {
    auto res = st.get(col, key);
    EXPECT_TRUE(res) << describe(res.error());
    return res ? *res : std::nullopt;
  }

  static kv_list scan_all(storage& st, column col, std::string_view prefix,
                          std::string_view start, size_t limit) {
    kv_list out;
    auto err = st.scan(col, prefix, start, limit,
                       [&](std::string_view k, std::string_view v) {
                         out.emplace_back(std::string{k}, std::string{v});
                         return true;
                       });
    EXPECT_FALSE(err) << describe(err);
    return out;
  }

  // Opens a store in `root_/name`, for tests that need two of them.
  std::unique_ptr<rocksdb_storage> open_store_at(const std::string& name) {
    rocksdb_config cfg;
    cfg.data_dir = root_ + "/" + name;
    auto res = rocksdb_storage::open(cfg);
    EXPECT_TRUE(res) << describe(res.error());
    return res ? std::move(*res) : nullptr;
  }

  // Creates `root_/name` and returns its path.
  std::string make_dir(const std::string& name) {
    auto dir = root_ + "/" + name;
    std::filesystem::create_directories(dir);
    return dir;
  }

  std::string root_;
  rocksdb_config cfg_;
};

// The columns that the partition tests fill; outbox, dedup and
// dead_letters stay empty.
constexpr column filled_columns[]
    = {column::state, column::inbox, column::timers, column::journal,
       column::timer_index};

// Writes two grains with three records each into every filled column of
// `p`, with values tagged by `tag`.
caf::error fill_partition(storage& st, uint32_t p, const std::string& tag) {
  write_batch b;
  for (auto col : filled_columns)
    for (auto* key : {"o-1", "o-2"})
      for (uint64_t seq = 1; seq <= 3; ++seq)
        b.put(col, keys::with_seq(keys::grain_prefix(p, {"order", key}), seq),
              tag + "-" + to_string(col) + "-" + key + "-"
                  + std::to_string(seq));
  const write_batch* batches[] = {&b};
  return st.commit(batches);
}

// Every record of partition `p`, by column (meta excluded).
using partition_dump = std::map<column, kv_list>;

partition_dump dump_partition(storage& st, uint32_t p) {
  partition_dump out;
  for (size_t i = 1; i < column_count; ++i) {
    auto col = static_cast<column>(i);
    auto err = st.scan(col, keys::partition_prefix(p), "", 100000,
                       [&](std::string_view k, std::string_view v) {
                         out[col].emplace_back(std::string{k}, std::string{v});
                         return true;
                       });
    EXPECT_FALSE(err) << describe(err);
  }
  return out;
}

size_t record_count(const partition_dump& d) {
  size_t n = 0;
  for (auto& [col, kvs] : d)
    n += kvs.size();
  return n;
}

kv_list dump_meta(storage& st) {
  kv_list out;
  auto err = st.scan(column::meta, "", "", 100000,
                     [&](std::string_view k, std::string_view v) {
                       out.emplace_back(std::string{k}, std::string{v});
                       return true;
                     });
  EXPECT_FALSE(err) << describe(err);
  return out;
}

caf::error put_one(storage& st, column col, std::string key,
                   std::string value) {
  write_batch b;
  b.put(col, std::move(key), std::move(value));
  const write_batch* batches[] = {&b};
  return st.commit(batches);
}

// Fills the destination of an import: its own partitions 3 and 5, a meta
// record, and stale records in partition 4, one of them under a key that
// the import brings too and one in a column that the import lacks.
void fill_destination(storage& dst) {
  ASSERT_FALSE(fill_partition(dst, 3, "dst"));
  ASSERT_FALSE(fill_partition(dst, 5, "dst"));
  ASSERT_FALSE(put_one(dst, column::meta, "silo", "dst-meta"));
  auto g = keys::grain_prefix(4, {"order", "o-1"});
  ASSERT_FALSE(put_one(dst, column::state, keys::with_seq(g, 1), "stale"));
  ASSERT_FALSE(put_one(dst, column::state, keys::with_seq(g, 9), "stale"));
  ASSERT_FALSE(put_one(dst, column::outbox, keys::with_seq(g, 1), "stale"));
  ASSERT_FALSE(
      put_one(dst, column::dedup, keys::grain_prefix(4, {"x", "y"}), "stale"));
}

void write_file(const std::string& path, std::string_view bytes) {
  std::ofstream out{path, std::ios::binary | std::ios::trunc};
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_file(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  return std::string{std::istreambuf_iterator<char>{in}, {}};
}

} // namespace

TEST_F(rocksdb_storage_test, put_get_erase_across_columns) {
  auto st = open_store();
  ASSERT_TRUE(st);
  write_batch b;
  b.put(column::meta, "silo", "m1");
  b.put(column::state, "k", "state-value");
  b.put(column::inbox, "k", "inbox-value");
  b.put(column::journal, "k", "journal-value");
  b.put(column::dedup, "gone", "x");
  b.erase(column::dedup, "gone");
  ASSERT_FALSE(commit(*st, b));
  EXPECT_EQ(st->wal_syncs(), 1u);
  EXPECT_EQ(lookup(*st, column::meta, "silo"), "m1");
  // The same key in different columns holds different records.
  EXPECT_EQ(lookup(*st, column::state, "k"), "state-value");
  EXPECT_EQ(lookup(*st, column::inbox, "k"), "inbox-value");
  EXPECT_EQ(lookup(*st, column::journal, "k"), "journal-value");
  EXPECT_EQ(lookup(*st, column::outbox, "k"), std::nullopt);
  EXPECT_EQ(lookup(*st, column::dedup, "gone"), std::nullopt);
  write_batch b2;
  b2.erase(column::state, "k");
  b2.put(column::inbox, "k", "overwritten");
  ASSERT_FALSE(commit(*st, b2));
  EXPECT_EQ(lookup(*st, column::state, "k"), std::nullopt);
  EXPECT_EQ(lookup(*st, column::inbox, "k"), "overwritten");
  EXPECT_EQ(st->wal_syncs(), 2u);
  // Binary keys and values with embedded zero bytes round-trip.
  write_batch b3;
  std::string bin_key{"\0\1\xff", 3};
  std::string bin_val{"a\0b", 3};
  b3.put(column::timers, bin_key, bin_val);
  ASSERT_FALSE(commit(*st, b3));
  EXPECT_EQ(lookup(*st, column::timers, bin_key), bin_val);
}

TEST_F(rocksdb_storage_test, multi_batch_commit_applies_in_order) {
  auto st = open_store();
  ASSERT_TRUE(st);
  write_batch first;
  first.put(column::state, "a", "1");
  first.put(column::outbox, "o", "msg");
  write_batch second;
  second.put(column::state, "a", "2");
  second.erase(column::outbox, "o");
  second.put(column::dedup, "d", "seen");
  const write_batch* batches[] = {&first, &second};
  ASSERT_FALSE(st->commit(batches));
  // One commit is one WAL sync, however many batches it merges.
  EXPECT_EQ(st->wal_syncs(), 1u);
  EXPECT_EQ(lookup(*st, column::state, "a"), "2");
  EXPECT_EQ(lookup(*st, column::outbox, "o"), std::nullopt);
  EXPECT_EQ(lookup(*st, column::dedup, "d"), "seen");
}

TEST_F(rocksdb_storage_test, multi_batch_commit_is_atomic) {
  auto st = open_store();
  ASSERT_TRUE(st);
  // Each commit writes "a" and "b" from two separate batches. A scan reads
  // from one implicit snapshot, so it must never see one without the other.
  constexpr int rounds = 200;
  std::atomic<bool> done{false};
  std::atomic<int> torn{0};
  std::atomic<int> scans{0};
  std::thread reader{[&] {
    while (!done.load()) {
      auto kvs = scan_all(*st, column::state, "", "", 10);
      std::string a, b;
      for (auto& [k, v] : kvs)
        (k == "a" ? a : b) = v;
      if (a != b)
        ++torn;
      ++scans;
    }
  }};
  for (int i = 0; i < rounds; ++i) {
    write_batch first;
    first.put(column::state, "a", std::to_string(i));
    write_batch second;
    second.put(column::state, "b", std::to_string(i));
    const write_batch* bs[] = {&first, &second};
    ASSERT_FALSE(st->commit(bs));
  }
  done = true;
  reader.join();
  EXPECT_EQ(torn.load(), 0);
  EXPECT_GT(scans.load(), 0);
  EXPECT_EQ(st->wal_syncs(), static_cast<uint64_t>(rounds));
  auto last = std::to_string(rounds - 1);
  st.reset();
  st = open_store();
  ASSERT_TRUE(st);
  EXPECT_EQ(scan_all(*st, column::state, "", "", 10),
            (kv_list{{"a", last}, {"b", last}}));
}

TEST_F(rocksdb_storage_test, empty_commit_is_a_no_op) {
  auto st = open_store();
  ASSERT_TRUE(st);
  write_batch empty;
  ASSERT_FALSE(commit(*st, empty));
  ASSERT_FALSE(st->commit({}));
  EXPECT_EQ(st->wal_syncs(), 0u);
}

TEST_F(rocksdb_storage_test, scan_prefix_start_limit) {
  auto st = open_store();
  ASSERT_TRUE(st);
  grain_id g1{"order", "o-1"};
  grain_id g2{"order", "o-2"};
  auto p1 = keys::grain_prefix(7, g1);
  auto p2 = keys::grain_prefix(7, g2);
  write_batch b;
  // Inserted out of order; big-endian sequence numbers sort numerically.
  for (uint64_t seq : {300u, 2u, 256u, 1u, 65536u})
    b.put(column::inbox, keys::with_seq(p1, seq), "m" + std::to_string(seq));
  b.put(column::inbox, keys::with_seq(p2, 0), "other");
  b.put(column::inbox, keys::with_seq(keys::grain_prefix(6, g1), 5), "p6");
  ASSERT_FALSE(commit(*st, b));
  auto values = [](const kv_list& xs) {
    std::vector<std::string> out;
    for (auto& [k, v] : xs)
      out.push_back(v);
    return out;
  };
  using strs = std::vector<std::string>;
  EXPECT_EQ(values(scan_all(*st, column::inbox, p1, "", 100)),
            (strs{"m1", "m2", "m256", "m300", "m65536"}));
  EXPECT_EQ(values(scan_all(*st, column::inbox, p1, "", 2)),
            (strs{"m1", "m2"}));
  EXPECT_EQ(values(scan_all(*st, column::inbox, p1, keys::with_seq(p1, 3), 2)),
            (strs{"m256", "m300"}));
  // A start below the prefix is clamped to the prefix.
  EXPECT_EQ(values(scan_all(*st, column::inbox, p1, "\x00", 1)), (strs{"m1"}));
  // A start beyond the prefix range yields nothing.
  EXPECT_TRUE(scan_all(*st, column::inbox, p1, p2, 100).empty());
  EXPECT_TRUE(scan_all(*st, column::inbox, p1, "", 0).empty());
  // The partition prefix covers both grains of partition 7 but not 6.
  EXPECT_EQ(
      values(scan_all(*st, column::inbox, keys::partition_prefix(7), "", 100)),
      (strs{"m1", "m2", "m256", "m300", "m65536", "other"}));
  // An empty prefix scans the whole column in key order.
  EXPECT_EQ(scan_all(*st, column::inbox, "", "", 100).size(), 7u);
  // Other columns are separate key spaces.
  EXPECT_TRUE(scan_all(*st, column::outbox, "", "", 100).empty());
  // The visitor stops the scan by returning false.
  size_t calls = 0;
  auto err = st->scan(
      column::inbox, p1, "", 100,
      [&](std::string_view, std::string_view) { return ++calls < 3; });
  EXPECT_FALSE(err);
  EXPECT_EQ(calls, 3u);
}

TEST_F(rocksdb_storage_test, scan_prefix_ending_in_ff_bytes) {
  auto st = open_store();
  ASSERT_TRUE(st);
  std::string prefix{"a\xff\xff", 3};
  write_batch b;
  b.put(column::state, std::string{"a\xfe", 2}, "below");
  b.put(column::state, prefix, "exact");
  b.put(column::state, prefix + "z", "inside");
  b.put(column::state, "b", "above");
  b.put(column::state, std::string{"\xff\xff", 2}, "top");
  ASSERT_FALSE(commit(*st, b));
  EXPECT_EQ(scan_all(*st, column::state, prefix, "", 10),
            (kv_list{{prefix, "exact"}, {prefix + "z", "inside"}}));
  std::string all_ff{"\xff\xff", 2};
  EXPECT_EQ(scan_all(*st, column::state, all_ff, "", 10),
            (kv_list{{all_ff, "top"}}));
}

TEST_F(rocksdb_storage_test, scan_skips_deleted_records) {
  auto st = open_store();
  ASSERT_TRUE(st);
  write_batch b;
  for (int i = 0; i < 10; ++i)
    b.put(column::outbox, keys::with_seq("q", i), std::to_string(i));
  ASSERT_FALSE(commit(*st, b));
  write_batch del;
  for (int i = 0; i < 8; ++i)
    del.erase(column::outbox, keys::with_seq("q", i));
  ASSERT_FALSE(commit(*st, del));
  EXPECT_EQ(
      scan_all(*st, column::outbox, "q", "", 10),
      (kv_list{{keys::with_seq("q", 8), "8"}, {keys::with_seq("q", 9), "9"}}));
}

TEST_F(rocksdb_storage_test, data_survives_reopen) {
  {
    auto st = open_store();
    ASSERT_TRUE(st);
    write_batch b;
    for (size_t i = 0; i < column_count; ++i) {
      auto col = static_cast<column>(i);
      b.put(col, "key", std::string{"value-"} + to_string(col));
    }
    b.put(column::state, "erased", "x");
    ASSERT_FALSE(commit(*st, b));
    write_batch b2;
    b2.erase(column::state, "erased");
    ASSERT_FALSE(commit(*st, b2));
  }
  auto st = open_store();
  ASSERT_TRUE(st);
  for (size_t i = 0; i < column_count; ++i) {
    auto col = static_cast<column>(i);
    EXPECT_EQ(lookup(*st, col, "key"), std::string{"value-"} + to_string(col));
  }
  EXPECT_EQ(lookup(*st, column::state, "erased"), std::nullopt);
  EXPECT_EQ(st->wal_syncs(), 0u);
}

TEST_F(rocksdb_storage_test, second_open_in_same_process_is_locked) {
  auto first = open_store();
  ASSERT_TRUE(first);
  auto second = rocksdb_storage::open(cfg_);
  ASSERT_FALSE(second);
  EXPECT_EQ(code_of(second.error()), errc::data_dir_locked)
      << describe(second.error());
  auto text = describe(second.error());
  EXPECT_NE(text.find(cfg_.data_dir), std::string::npos) << text;
  EXPECT_NE(text.find("in use by another silo"), std::string::npos) << text;
  // The first instance is unaffected, and the lock is released on close.
  write_batch b;
  b.put(column::state, "k", "v");
  EXPECT_FALSE(commit(*first, b));
  first.reset();
  auto third = open_store();
  ASSERT_TRUE(third);
  EXPECT_EQ(lookup(*third, column::state, "k"), "v");
}

TEST_F(rocksdb_storage_test, open_while_other_process_holds_lock) {
  // Create the database, then let a child process hold its LOCK file the
  // way RocksDB does (an fcntl write lock), as another silo process would.
  open_store().reset();
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  auto lock_path = cfg_.data_dir + "/LOCK";
  auto pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Only async-signal-safe calls after fork in a threaded process.
    close(ready[0]);
    int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT, 0644);
    struct flock fl = {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    char ok = (fd >= 0 && fcntl(fd, F_SETLK, &fl) == 0) ? '1' : '0';
    [[maybe_unused]] auto n = write(ready[1], &ok, 1);
    pause();
    _exit(0);
  }
  close(ready[1]);
  char ok = '0';
  ASSERT_EQ(read(ready[0], &ok, 1), 1);
  close(ready[0]);
  auto res = rocksdb_storage::open(cfg_);
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  ASSERT_EQ(ok, '1');
  ASSERT_FALSE(res);
  EXPECT_EQ(code_of(res.error()), errc::data_dir_locked)
      << describe(res.error());
  auto text = describe(res.error());
  EXPECT_NE(text.find(cfg_.data_dir), std::string::npos) << text;
  // Once the other process is gone, the directory opens again.
  EXPECT_TRUE(open_store());
}

TEST_F(rocksdb_storage_test, empty_data_dir_is_invalid_config) {
  rocksdb_config cfg;
  auto res = rocksdb_storage::open(cfg);
  ASSERT_FALSE(res);
  EXPECT_EQ(code_of(res.error()), errc::invalid_config)
      << describe(res.error());
}

TEST_F(rocksdb_storage_test, missing_dir_without_create_fails) {
  cfg_.create_if_missing = false;
  auto res = rocksdb_storage::open(cfg_);
  ASSERT_FALSE(res);
  EXPECT_EQ(code_of(res.error()), errc::not_found) << describe(res.error());
  auto text = describe(res.error());
  EXPECT_NE(text.find("no data directory at " + cfg_.data_dir),
            std::string::npos)
      << text;
  // Nothing was created on the way.
  EXPECT_FALSE(std::filesystem::exists(cfg_.data_dir));
  cfg_.read_only = true;
  auto read_only = rocksdb_storage::open(cfg_);
  ASSERT_FALSE(read_only);
  EXPECT_EQ(code_of(read_only.error()), errc::not_found);
  EXPECT_FALSE(std::filesystem::exists(cfg_.data_dir));
}

TEST_F(rocksdb_storage_test, a_read_only_store_reads_and_refuses_writes) {
  {
    auto st = open_store();
    ASSERT_TRUE(st);
    write_batch wb;
    wb.put(column::state, "k", "v");
    ASSERT_FALSE(commit(*st, wb));
  }
  cfg_.read_only = true;
  auto ro = rocksdb_storage::open(cfg_);
  ASSERT_TRUE(ro) << describe(ro.error());
  auto v = (*ro)->get(column::state, "k");
  ASSERT_TRUE(v);
  EXPECT_EQ(v->value_or(""), "v");
  write_batch wb;
  wb.put(column::state, "k", "w");
  auto err = commit(**ro, wb);
  EXPECT_EQ(code_of(err), errc::invalid_argument) << describe(err);
  EXPECT_FALSE((*ro)->failed());
}

TEST_F(rocksdb_storage_test, creates_nested_data_dir) {
  cfg_.data_dir = root_ + "/a/b/c";
  auto st = open_store();
  ASSERT_TRUE(st);
  EXPECT_TRUE(std::filesystem::exists(cfg_.data_dir + "/CURRENT"));
}

TEST_F(rocksdb_storage_test, free_bytes_is_positive) {
  auto st = open_store();
  ASSERT_TRUE(st);
  auto free = st->free_bytes();
  ASSERT_TRUE(free.has_value());
  EXPECT_GT(*free, 0u);
}

TEST_F(rocksdb_storage_test, failed_write_fail_stops_until_reopen) {
  failing_env env;
  cfg_.env = &env;
  auto st = open_store();
  ASSERT_TRUE(st);
  write_batch good;
  good.put(column::state, "before", "ok");
  ASSERT_FALSE(commit(*st, good));
  env.fail_syncs = true;
  write_batch bad;
  bad.put(column::state, "during", "unknown outcome");
  auto err = commit(*st, bad);
  ASSERT_TRUE(err);
  EXPECT_EQ(code_of(err), errc::storage_failure) << describe(err);
  EXPECT_NE(describe(err).find("injected fsync failure"), std::string::npos)
      << describe(err);
  EXPECT_TRUE(st->failed());
  // Even with a healthy disk again, the store stays fail-stopped.
  env.fail_syncs = false;
  write_batch later;
  later.put(column::state, "after", "x");
  err = commit(*st, later);
  ASSERT_TRUE(err);
  EXPECT_EQ(code_of(err), errc::storage_failure);
  auto text = describe(err);
  EXPECT_NE(text.find("fail-stopped"), std::string::npos) << text;
  EXPECT_NE(text.find("reopen"), std::string::npos) << text;
  EXPECT_EQ(st->wal_syncs(), 1u);
  // Reads still work, and acknowledged data is intact.
  EXPECT_EQ(lookup(*st, column::state, "before"), "ok");
  // Reopening recovers: the acknowledged write is there and commits work.
  st.reset();
  st = open_store();
  ASSERT_TRUE(st);
  EXPECT_EQ(lookup(*st, column::state, "before"), "ok");
  EXPECT_FALSE(st->failed());
  ASSERT_FALSE(commit(*st, later));
  EXPECT_EQ(lookup(*st, column::state, "after"), "x");
}

TEST_F(rocksdb_storage_test, import_replaces_exactly_one_partition) {
  auto src = open_store_at("src");
  auto dst = open_store_at("dst");
  ASSERT_TRUE(src && dst);
  for (uint32_t p : {3u, 4u, 5u})
    ASSERT_FALSE(fill_partition(*src, p, "src" + std::to_string(p)));
  ASSERT_FALSE(put_one(*src, column::meta, "silo", "src-meta"));
  ASSERT_NO_FATAL_FAILURE(fill_destination(*dst));
  auto dst3 = dump_partition(*dst, 3);
  auto dst5 = dump_partition(*dst, 5);
  auto expected = dump_partition(*src, 4);
  ASSERT_EQ(record_count(expected), 6 * std::size(filled_columns));
  auto dir = make_dir("export");
  auto files = src->export_partition(4, dir);
  ASSERT_TRUE(files) << describe(files.error());
  // One file per non-empty column, named after partition and column.
  ASSERT_EQ(files->size(), std::size(filled_columns));
  for (size_t i = 0; i < files->size(); ++i) {
    auto& f = (*files)[i];
    EXPECT_EQ(f.col, filled_columns[i]);
    EXPECT_EQ(f.records, 6u);
    EXPECT_EQ(f.path, dir + "/p4-" + to_string(f.col) + ".sst");
    EXPECT_TRUE(std::filesystem::exists(f.path)) << f.path;
  }
  // Exporting changes nothing in the source.
  EXPECT_EQ(dump_partition(*src, 4), expected);
  ASSERT_FALSE(dst->import_partition(4, *files));
  EXPECT_EQ(dump_partition(*dst, 4), expected);
  EXPECT_EQ(dump_partition(*dst, 3), dst3);
  EXPECT_EQ(dump_partition(*dst, 5), dst5);
  EXPECT_EQ(dump_meta(*dst), (kv_list{{"silo", "dst-meta"}}));
  EXPECT_FALSE(dst->failed());
  // The files were copied, not moved: a retry could use them again.
  for (auto& f : *files)
    EXPECT_TRUE(std::filesystem::exists(f.path)) << f.path;
  // Point reads agree with scans, also for a key the import overwrote.
  auto key = keys::with_seq(keys::grain_prefix(4, {"order", "o-1"}), 1);
  EXPECT_EQ(lookup(*dst, column::state, key), "src4-state-o-1-1");
  EXPECT_EQ(lookup(*dst, column::outbox, key), std::nullopt);
  // Writes after the import land above the ingested records.
  ASSERT_FALSE(put_one(*dst, column::state, key, "newer"));
  EXPECT_EQ(lookup(*dst, column::state, key), "newer");
}

TEST_F(rocksdb_storage_test, imported_partition_survives_reopen) {
  auto src = open_store_at("src");
  ASSERT_TRUE(src);
  for (uint32_t p : {3u, 4u, 5u})
    ASSERT_FALSE(fill_partition(*src, p, "src" + std::to_string(p)));
  auto expected = dump_partition(*src, 4);
  auto files = src->export_partition(4, make_dir("export"));
  ASSERT_TRUE(files) << describe(files.error());
  auto dst = open_store_at("dst");
  ASSERT_TRUE(dst);
  ASSERT_NO_FATAL_FAILURE(fill_destination(*dst));
  // Reopening flushes the recovered WAL, so the stale records sit in SST
  // files rather than in the memtable during the import.
  dst.reset();
  dst = open_store_at("dst");
  ASSERT_TRUE(dst);
  auto dst3 = dump_partition(*dst, 3);
  auto dst5 = dump_partition(*dst, 5);
  ASSERT_FALSE(dst->import_partition(4, *files));
  auto key = keys::with_seq(keys::grain_prefix(4, {"order", "o-2"}), 2);
  ASSERT_FALSE(put_one(*dst, column::journal, key, "after-import"));
  auto after = expected;
  for (auto& [k, v] : after[column::journal])
    if (k == key)
      v = "after-import";
  EXPECT_EQ(dump_partition(*dst, 4), after);
  // The import copied the files: nothing depends on the export any more.
  std::filesystem::remove_all(root_ + "/export");
  src.reset();
  dst.reset();
  dst = open_store_at("dst");
  ASSERT_TRUE(dst);
  EXPECT_EQ(dump_partition(*dst, 4), after);
  EXPECT_EQ(dump_partition(*dst, 3), dst3);
  EXPECT_EQ(dump_partition(*dst, 5), dst5);
  EXPECT_EQ(dump_meta(*dst), (kv_list{{"silo", "dst-meta"}}));
  // And once more, after the reopen recovered the post-import write.
  dst.reset();
  dst = open_store_at("dst");
  ASSERT_TRUE(dst);
  EXPECT_EQ(dump_partition(*dst, 4), after);
}

TEST_F(rocksdb_storage_test, drop_partition_removes_one_partition) {
  auto st = open_store();
  ASSERT_TRUE(st);
  for (uint32_t p : {3u, 4u, 5u})
    ASSERT_FALSE(fill_partition(*st, p, "p" + std::to_string(p)));
  ASSERT_FALSE(put_one(*st, column::dead_letters,
                       keys::grain_prefix(4, {"a", "b"}), "dead"));
  ASSERT_FALSE(put_one(*st, column::meta, "silo", "m"));
  auto p3 = dump_partition(*st, 3);
  auto p5 = dump_partition(*st, 5);
  auto syncs = st->wal_syncs();
  ASSERT_FALSE(st->drop_partition(4));
  EXPECT_EQ(record_count(dump_partition(*st, 4)), 0u);
  EXPECT_EQ(dump_partition(*st, 3), p3);
  EXPECT_EQ(dump_partition(*st, 5), p5);
  EXPECT_EQ(dump_meta(*st), (kv_list{{"silo", "m"}}));
  // A drop is not a commit.
  EXPECT_EQ(st->wal_syncs(), syncs);
  // Dropping an empty partition is fine.
  ASSERT_FALSE(st->drop_partition(4));
  ASSERT_FALSE(st->drop_partition(77));
  st.reset();
  st = open_store();
  ASSERT_TRUE(st);
  EXPECT_EQ(record_count(dump_partition(*st, 4)), 0u);
  EXPECT_EQ(dump_partition(*st, 3), p3);
  EXPECT_EQ(dump_partition(*st, 5), p5);
  EXPECT_EQ(dump_meta(*st), (kv_list{{"silo", "m"}}));
  // Out-of-range partition ids are rejected.
  auto err = st->drop_partition(0x10000);
  EXPECT_EQ(code_of(err), errc::invalid_argument) << describe(err);
}

TEST_F(rocksdb_storage_test, last_partition_has_no_upper_bound) {
  auto src = open_store_at("src");
  auto dst = open_store_at("dst");
  ASSERT_TRUE(src && dst);
  constexpr uint32_t last = 0xffff;
  ASSERT_FALSE(fill_partition(*src, last, "src"));
  // Keys beyond any short bound: a type whose length varint starts 0xff.
  std::string tail{"\xff\xff\xff\xff\xff", 5};
  ASSERT_FALSE(put_one(*src, column::state, tail, "tail"));
  ASSERT_FALSE(fill_partition(*dst, last - 1, "dst"));
  ASSERT_FALSE(fill_partition(*dst, last, "stale"));
  ASSERT_FALSE(put_one(*dst, column::state, tail + "z", "stale-tail"));
  ASSERT_FALSE(put_one(*dst, column::outbox, tail, "stale-tail"));
  auto below = dump_partition(*dst, last - 1);
  auto expected = dump_partition(*src, last);
  ASSERT_EQ(record_count(expected), 6 * std::size(filled_columns) + 1);
  auto files = src->export_partition(last, make_dir("export"));
  ASSERT_TRUE(files) << describe(files.error());
  ASSERT_FALSE(dst->import_partition(last, *files));
  EXPECT_EQ(dump_partition(*dst, last), expected);
  EXPECT_EQ(dump_partition(*dst, last - 1), below);
  ASSERT_FALSE(dst->drop_partition(last));
  EXPECT_EQ(record_count(dump_partition(*dst, last)), 0u);
  EXPECT_EQ(dump_partition(*dst, last - 1), below);
}

TEST_F(rocksdb_storage_test, import_of_bad_file_fails_before_deleting) {
  auto src = open_store_at("src");
  auto dst = open_store_at("dst");
  ASSERT_TRUE(src && dst);
  ASSERT_FALSE(fill_partition(*src, 3, "src3"));
  ASSERT_FALSE(fill_partition(*src, 4, "src4"));
  ASSERT_NO_FATAL_FAILURE(fill_destination(*dst));
  auto before = dump_partition(*dst, 4);
  auto good = src->export_partition(4, make_dir("good"));
  ASSERT_TRUE(good) << describe(good.error());
  ASSERT_FALSE(good->empty());
  auto other = src->export_partition(3, make_dir("other"));
  ASSERT_TRUE(other) << describe(other.error());
  auto bad_dir = make_dir("bad");
  auto bytes = read_file((*good)[0].path);
  ASSERT_GT(bytes.size(), 100u);
  // Each case replaces the first good file with a bad one.
  struct bad_case {
    std::string name;
    partition_file file;
  };
  std::vector<bad_case> cases;
  auto first = (*good)[0];
  auto with_path = [&](std::string path) {
    auto f = first;
    f.path = std::move(path);
    return f;
  };
  write_file(bad_dir + "/truncated.sst", bytes.substr(0, bytes.size() / 2));
  cases.push_back({"truncated", with_path(bad_dir + "/truncated.sst")});
  write_file(bad_dir + "/garbage.sst", std::string(4096, 'x'));
  cases.push_back({"garbage", with_path(bad_dir + "/garbage.sst")});
  auto flipped = bytes;
  flipped[flipped.size() / 4] ^= 0x55;
  write_file(bad_dir + "/flipped.sst", flipped);
  cases.push_back({"flipped", with_path(bad_dir + "/flipped.sst")});
  write_file(bad_dir + "/empty.sst", "");
  cases.push_back({"empty", with_path(bad_dir + "/empty.sst")});
  cases.push_back({"missing", with_path(bad_dir + "/missing.sst")});
  // A valid file of another partition.
  auto foreign = (*other)[0];
  ASSERT_EQ(foreign.col, first.col);
  cases.push_back({"foreign", foreign});
  auto miscounted = first;
  miscounted.records += 1;
  cases.push_back({"miscounted", miscounted});
  for (auto& c : cases) {
    SCOPED_TRACE(c.name);
    std::vector<partition_file> files{good->begin(), good->end()};
    files[0] = c.file;
    auto err = dst->import_partition(4, files);
    ASSERT_TRUE(err);
    EXPECT_EQ(code_of(err), errc::corrupt_record) << describe(err);
    EXPECT_NE(describe(err).find(c.file.path), std::string::npos)
        << describe(err);
    // Checked before deleting: the old records are all still there.
    EXPECT_EQ(dump_partition(*dst, 4), before);
    EXPECT_FALSE(dst->failed());
  }
  // Caller mistakes are invalid arguments.
  std::vector<partition_file> twice{first, first};
  EXPECT_EQ(code_of(dst->import_partition(4, twice)), errc::invalid_argument);
  auto meta_file = first;
  meta_file.col = column::meta;
  EXPECT_EQ(code_of(dst->import_partition(4, {&meta_file, 1})),
            errc::invalid_argument);
  EXPECT_EQ(dump_partition(*dst, 4), before);
  // The store stays usable: the good files import fine afterwards.
  ASSERT_FALSE(dst->import_partition(4, *good));
  EXPECT_EQ(dump_partition(*dst, 4), dump_partition(*src, 4));
}

TEST_F(rocksdb_storage_test, empty_partition_exports_and_imports_nothing) {
  auto src = open_store_at("src");
  auto dst = open_store_at("dst");
  ASSERT_TRUE(src && dst);
  ASSERT_FALSE(fill_partition(*src, 3, "src3"));
  ASSERT_FALSE(fill_partition(*src, 5, "src5"));
  auto dir = make_dir("export");
  auto files = src->export_partition(4, dir);
  ASSERT_TRUE(files) << describe(files.error());
  EXPECT_TRUE(files->empty());
  EXPECT_TRUE(std::filesystem::is_empty(dir));
  ASSERT_NO_FATAL_FAILURE(fill_destination(*dst));
  auto dst3 = dump_partition(*dst, 3);
  auto dst5 = dump_partition(*dst, 5);
  ASSERT_GT(record_count(dump_partition(*dst, 4)), 0u);
  ASSERT_FALSE(dst->import_partition(4, *files));
  EXPECT_EQ(record_count(dump_partition(*dst, 4)), 0u);
  EXPECT_EQ(dump_partition(*dst, 3), dst3);
  EXPECT_EQ(dump_partition(*dst, 5), dst5);
  EXPECT_EQ(dump_meta(*dst), (kv_list{{"silo", "dst-meta"}}));
  dst.reset();
  dst = open_store_at("dst");
  ASSERT_TRUE(dst);
  EXPECT_EQ(record_count(dump_partition(*dst, 4)), 0u);
  EXPECT_EQ(dump_partition(*dst, 3), dst3);
  // A missing export directory is a caller error.
  auto res = src->export_partition(3, root_ + "/no-such-dir");
  ASSERT_FALSE(res);
  EXPECT_EQ(code_of(res.error()), errc::invalid_argument)
      << describe(res.error());
}

TEST_F(rocksdb_storage_test, fail_stopped_store_refuses_import_and_drop) {
  failing_env env;
  cfg_.env = &env;
  auto st = open_store();
  ASSERT_TRUE(st);
  ASSERT_FALSE(fill_partition(*st, 4, "p4"));
  env.fail_syncs = true;
  auto err = st->drop_partition(4);
  ASSERT_TRUE(err);
  EXPECT_EQ(code_of(err), errc::storage_failure) << describe(err);
  EXPECT_TRUE(st->failed());
  env.fail_syncs = false;
  err = st->import_partition(4, {});
  EXPECT_EQ(code_of(err), errc::storage_failure) << describe(err);
  EXPECT_NE(describe(err).find("fail-stopped"), std::string::npos)
      << describe(err);
  err = st->drop_partition(4);
  EXPECT_NE(describe(err).find("fail-stopped"), std::string::npos)
      << describe(err);
  write_batch b;
  b.put(column::state, "k", "v");
  EXPECT_TRUE(commit(*st, b));
}

TEST_F(rocksdb_storage_test, memory_storage_partition_round_trip) {
  memory_storage src;
  auto dst_impl = std::make_shared<memory_storage>();
  shared_memory_storage dst{dst_impl};
  for (uint32_t p : {3u, 4u, 5u})
    ASSERT_FALSE(fill_partition(src, p, "src" + std::to_string(p)));
  ASSERT_FALSE(put_one(src, column::meta, "silo", "src-meta"));
  ASSERT_NO_FATAL_FAILURE(fill_destination(dst));
  auto dst3 = dump_partition(dst, 3);
  auto expected = dump_partition(src, 4);
  auto dir = make_dir("export");
  auto files = dst.export_partition(9, dir);
  ASSERT_TRUE(files) << describe(files.error());
  EXPECT_TRUE(files->empty());
  files = src.export_partition(4, dir);
  ASSERT_TRUE(files) << describe(files.error());
  ASSERT_EQ(files->size(), std::size(filled_columns));
  for (auto& f : *files)
    EXPECT_EQ(f.records, 6u);
  ASSERT_FALSE(dst.import_partition(4, *files));
  EXPECT_EQ(dump_partition(dst, 4), expected);
  EXPECT_EQ(dump_partition(dst, 3), dst3);
  EXPECT_EQ(dump_meta(dst), (kv_list{{"silo", "dst-meta"}}));
  // Truncated and oversized files are corrupt and change nothing.
  auto bytes = read_file((*files)[0].path);
  auto truncated = (*files)[0];
  truncated.path = dir + "/truncated.part";
  write_file(truncated.path, bytes.substr(0, bytes.size() - 3));
  auto oversized = (*files)[0];
  oversized.path = dir + "/oversized.part";
  // The first key length follows the 17-byte header.
  auto big = bytes;
  big[17] = '\x7f';
  write_file(oversized.path, big);
  for (auto& bad : {truncated, oversized}) {
    auto err = dst.import_partition(4, {&bad, 1});
    ASSERT_TRUE(err);
    EXPECT_EQ(code_of(err), errc::corrupt_record) << describe(err);
    EXPECT_NE(describe(err).find(bad.path), std::string::npos) << describe(err);
    EXPECT_EQ(dump_partition(dst, 4), expected);
  }
  ASSERT_FALSE(dst.import_partition(4, {}));
  EXPECT_EQ(record_count(dump_partition(dst, 4)), 0u);
  ASSERT_FALSE(src.drop_partition(4));
  EXPECT_EQ(record_count(dump_partition(src, 4)), 0u);
  EXPECT_EQ(record_count(dump_partition(src, 5)),
            6 * std::size(filled_columns));
}

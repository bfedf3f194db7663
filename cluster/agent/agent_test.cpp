// Silos in one process that form a cluster (testing/test_cluster.hpp: real
// hosts over loopback TCP, one shared membership table): joining spreads
// the partitions with their data, a graceful leave hands them back, a
// crashed silo is detected and declared dead, a silo declared dead stops
// itself, and handoffs survive slow releases and lost map answers.

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "cluster/agent/cluster_agent.hpp"
#include "cluster/membership/embedded_membership.hpp"
#include "cluster/routing/transport_router.hpp"
#include "cluster/transport/asio_transport.hpp"
#include "runtime/clock.hpp"
#include "runtime/keys.hpp"
#include "runtime/log.hpp"
#include "testing/log_capture.hpp"
#include "testing/test_cluster.hpp"
#include "testing/test_grains.hpp"

using namespace granary;
using namespace granary::cluster;
using namespace granary::testing;
using namespace std::chrono_literals;

namespace {

namespace fs = std::filesystem;

constexpr uint32_t partitions = 12;

// -- release and recovery of one partition -----------------------------------

// Holds every commit at the door while `hold` is set: a slow disk under a
// release. Counts the commits that came and that finished.
struct commit_gate {
  std::mutex mtx;
  std::condition_variable cv;
  bool held = false;
  uint64_t entered = 0;
  uint64_t finished = 0;

  void hold(bool value) {
    {
      std::lock_guard guard{mtx};
      held = value;
    }
    cv.notify_all();
  }

  // Waits until more than `n` commits came to the door.
  bool wait_entered(uint64_t n, std::chrono::milliseconds limit = 5s) {
    std::unique_lock guard{mtx};
    return cv.wait_for(guard, limit, [&] { return entered > n; });
  }

  uint64_t finished_now() {
    std::lock_guard guard{mtx};
    return finished;
  }
};

class gated_storage : public shared_memory_storage {
public:
  gated_storage(std::shared_ptr<memory_storage> mem,
                std::shared_ptr<commit_gate> gate)
      : shared_memory_storage(std::move(mem))
      , gate_(std::move(gate)) {}

  caf::error commit(std::span<const write_batch* const> batches) override {
    {
      std::unique_lock guard{gate_->mtx};
      ++gate_->entered;
      gate_->cv.notify_all();
      // Bounded: a test that forgets to open the gate fails, not hangs.
      gate_->cv.wait_for(guard, 30s, [&] { return !gate_->held; });
    }
    auto err = shared_memory_storage::commit(batches);
    {
      std::lock_guard guard{gate_->mtx};
      ++gate_->finished;
    }
    gate_->cv.notify_all();
    return err;
  }

private:
  std::shared_ptr<commit_gate> gate_;
};

struct gated_silo {
  static constexpr uint32_t parts = 4;
  std::shared_ptr<memory_storage> mem = std::make_shared<memory_storage>();
  std::shared_ptr<commit_gate> gate = std::make_shared<commit_gate>();
  std::unique_ptr<silo> s;

  gated_silo() {
    silo_config sc;
    sc.partitions = parts;
    sc.timer_poll = 10ms;
    grain_registry reg;
    EXPECT_FALSE(register_grain<probe>(reg));
    auto started = silo::start(sc, std::move(reg),
                               std::make_unique<gated_storage>(mem, gate));
    EXPECT_TRUE(started) << describe(started.error());
    if (started)
      s = std::move(*started);
  }

  // Starts an Add{delta} to `key` whose commit the gate holds; returns once
  // the commit is at the door. Join the thread after opening the gate.
  std::thread add_held(const std::string& key, int delta) {
    uint64_t before = 0;
    {
      std::lock_guard guard{gate->mtx};
      before = gate->entered;
    }
    gate->hold(true);
    std::thread t{[this, key, delta] {
      Add a;
      a.set_delta(delta);
      auto r = grain_ref<probe>{*s, key}.call<Value>(a, 20s);
      EXPECT_TRUE(r) << describe(r.error());
    }};
    EXPECT_TRUE(gate->wait_entered(before));
    return t;
  }
};

TEST(partition_release, a_recovery_during_a_slow_release_waits_and_serves) {
  gated_silo g;
  ASSERT_TRUE(g.s);
  std::string key = "slow";
  auto p = partition_of(id_of<probe>(key), gated_silo::parts);
  auto adding = g.add_held(key, 2);
  // The release cannot finish while its commit is held: the ask times out.
  auto released = g.s->release_partition(p, 100ms);
  ASSERT_TRUE(released);
  EXPECT_EQ(code_of(released), errc::timeout) << describe(released);
  // A recovery now must not be undone when the release finishes.
  caf::error acquired = make_error(errc::unspecified, "not yet");
  std::thread acquiring{[&] { acquired = g.s->acquire_partition(p); }};
  std::this_thread::sleep_for(50ms);
  g.gate->hold(false);
  acquiring.join();
  adding.join();
  EXPECT_FALSE(acquired) << describe(acquired);
  auto v = grain_ref<probe>{*g.s, key}.call<Value>(Get{}, 2s);
  ASSERT_TRUE(v) << "the partition refuses work after the release finished: "
                 << describe(v.error());
  EXPECT_EQ(v->value(), 2);
}

TEST(partition_release, a_second_release_waits_for_the_first) {
  gated_silo g;
  ASSERT_TRUE(g.s);
  std::string key = "slow";
  auto p = partition_of(id_of<probe>(key), gated_silo::parts);
  auto adding = g.add_held(key, 3);
  auto finished = g.gate->finished_now();
  ASSERT_EQ(code_of(g.s->release_partition(p, 100ms)), errc::timeout);
  // Asked again, the release answers only once the pending commit is
  // durable (a handoff exports right after it).
  uint64_t finished_at_answer = 0;
  caf::error again;
  std::thread releasing{[&] {
    again = g.s->release_partition(p, 20s);
    finished_at_answer = g.gate->finished_now();
  }};
  std::this_thread::sleep_for(50ms);
  g.gate->hold(false);
  releasing.join();
  adding.join();
  EXPECT_FALSE(again) << describe(again);
  EXPECT_GT(finished_at_answer, finished)
      << "the second release answered while the first was still committing";
  auto state
      = g.mem->get(column::state, keys::grain_prefix(p, id_of<probe>(key)));
  ASSERT_TRUE(state && state->has_value());
}

// Forwards everything to another store; tests override what they disturb.
class forwarding_store : public membership_store {
public:
  explicit forwarding_store(membership_store& inner)
      : inner_(inner) {}

  caf::expected<membership_table> read_all() override {
    return inner_.read_all();
  }

  caf::expected<membership_table> read(const std::string& id) override {
    return inner_.read(id);
  }

  caf::expected<write_result> insert(const membership_entry& e,
                                     uint64_t v) override {
    return inner_.insert(e, v);
  }

  caf::expected<write_result> update(const membership_entry& e, uint64_t rv,
                                     uint64_t tv) override {
    return inner_.update(e, rv, tv);
  }

  caf::error update_i_am_alive(const std::string& id, int64_t now) override {
    return inner_.update_i_am_alive(id, now);
  }

  caf::expected<size_t> delete_dead(int64_t older_than_ms) override {
    return inner_.delete_dead(older_than_ms);
  }

  caf::expected<watch_token> watch(membership_watcher w) override {
    return inner_.watch(std::move(w));
  }

  caf::expected<partition_map> read_partition_map() override {
    return inner_.read_partition_map();
  }

  caf::expected<write_result> write_partition_map(const partition_map& m,
                                                  uint64_t v) override {
    return inner_.write_partition_map(m, v);
  }

protected:
  membership_store& inner_;
};

// Holds votes against `suspect` (updates of its row that carry votes) at
// the door while `holding`, so that they reach the store late.
class vote_gate_store final : public forwarding_store {
public:
  vote_gate_store(membership_store& inner, std::string suspect)
      : forwarding_store(inner)
      , suspect_(std::move(suspect)) {}

  caf::expected<write_result> update(const membership_entry& e, uint64_t rv,
                                     uint64_t tv) override {
    if (e.silo_id == suspect_ && !e.suspicions.empty()) {
      std::unique_lock guard{mtx_};
      ++waiting_;
      cv_.notify_all();
      // Bounded: a test that forgets to let go fails, not hangs.
      cv_.wait_for(guard, 30s, [&] { return !holding_; });
      --waiting_;
      passed_.emplace(std::this_thread::get_id(), 0);
    }
    return inner_.update(e, rv, tv);
  }

  caf::expected<membership_table> read_all() override {
    {
      std::lock_guard guard{mtx_};
      if (auto i = passed_.find(std::this_thread::get_id()); i != passed_.end())
        ++i->second;
    }
    cv_.notify_all();
    return inner_.read_all();
  }

  // Waits until `voters` threads passed the door and each read the table
  // `n` times since: by then each has finished what followed its vote.
  bool wait_reads_after_door(size_t voters, int n,
                             std::chrono::milliseconds limit = 10s) {
    std::unique_lock guard{mtx_};
    return cv_.wait_for(guard, limit, [&] {
      return passed_.size() >= voters
             && std::all_of(passed_.begin(), passed_.end(),
                            [&](auto& x) { return x.second >= n; });
    });
  }

  void hold(bool value) {
    {
      std::lock_guard guard{mtx_};
      holding_ = value;
    }
    cv_.notify_all();
  }

  // Waits until `n` votes wait at the door.
  bool wait_waiting(int n, std::chrono::milliseconds limit = 10s) {
    std::unique_lock guard{mtx_};
    return cv_.wait_for(guard, limit, [&] { return waiting_ >= n; });
  }

private:
  std::string suspect_;
  std::mutex mtx_;
  std::condition_variable cv_;
  bool holding_ = false;
  int waiting_ = 0;
  // Threads whose vote passed the door, and their table reads since.
  std::map<std::thread::id, int> passed_;
};

// Forwards to a store. Once `armed`, a partition-map write is applied and
// then answered with a timeout (its answer lost), and from then on reads of
// the map time out too, until `blind` is cleared.
class lossy_map_store final : public forwarding_store {
public:
  explicit lossy_map_store(membership_store& inner)
      : forwarding_store(inner) {}

  std::atomic<bool> armed{false};
  std::atomic<bool> blind{false};
  std::atomic<int> lost_writes{0};
  // Blind reads by the thread whose write was lost (the handoff sender).
  std::atomic<int> writer_blind_reads{0};

  caf::expected<partition_map> read_partition_map() override {
    if (blind.load()) {
      std::lock_guard guard{mtx_};
      if (std::this_thread::get_id() == writer_)
        ++writer_blind_reads;
      return make_error(errc::timeout, "test: the store's answer was lost");
    }
    return inner_.read_partition_map();
  }

  caf::expected<write_result> write_partition_map(const partition_map& m,
                                                  uint64_t v) override {
    {
      // Bounded: a test that forgets to let go fails, not hangs.
      std::unique_lock guard{mtx_};
      ++writes_seen;
      cv_.notify_all();
      cv_.wait_for(guard, 30s, [&] { return !holding_; });
    }
    if (!armed.load())
      return inner_.write_partition_map(m, v);
    auto res = inner_.write_partition_map(m, v);
    if (res && res->applied()) {
      std::lock_guard guard{mtx_};
      writer_ = std::this_thread::get_id();
      ++lost_writes;
      blind = true;
    }
    return make_error(errc::timeout, "test: the store's answer was lost");
  }

  // Holds every map write at the door while set.
  void hold(bool value) {
    {
      std::lock_guard guard{mtx_};
      holding_ = value;
    }
    cv_.notify_all();
  }

  int writes() {
    std::lock_guard guard{mtx_};
    return writes_seen;
  }

  // Waits until more than `n` map writes came to the door.
  bool wait_writes(int n, std::chrono::milliseconds limit = 10s) {
    std::unique_lock guard{mtx_};
    return cv_.wait_for(guard, limit, [&] { return writes_seen > n; });
  }

private:
  std::mutex mtx_;
  std::condition_variable cv_;
  bool holding_ = false;
  int writes_seen = 0;
  std::thread::id writer_;
};

bool contains(const std::vector<uint32_t>& xs, uint32_t x) {
  return std::find(xs.begin(), xs.end(), x) != xs.end();
}

// A probe key whose grain lives in partition `p`.
std::string key_on(uint32_t p, const std::string& prefix) {
  for (int i = 0;; ++i) {
    auto key = prefix + std::to_string(i);
    if (partition_of(id_of<probe>(key), partitions) == p)
      return key;
  }
}

// -- the in-process cluster ---------------------------------------------------

// The agent tests' cluster of `silos` silos ("silo-0", "silo-1", ...; the
// tests call them a, b, c): 12 partitions, probe grains, and the test
// cluster's timings (100 ms probes, 3 missed probes, 3 s vote expiry).
test_cluster_builder spec(size_t silos) {
  return test_cluster_builder{silos}
      .partitions(partitions)
      .grains([](host::registration& r) { return r.grain<probe>(); });
}

// Starts the cluster `b` describes; null (and a failure) when it fails.
std::unique_ptr<test_cluster> start(const test_cluster_builder& b,
                                    std::chrono::milliseconds limit = 20s) {
  auto built = b.build(limit);
  if (!built) {
    ADD_FAILURE() << describe(built.error());
    return nullptr;
  }
  return std::move(*built);
}

::testing::AssertionResult ok(const caf::error& err) {
  if (!err)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << describe(err);
}

template <class T>
::testing::AssertionResult ok(const caf::expected<T>& x) {
  return ok(x ? caf::error{} : x.error());
}

// Silo `id`'s status in the table as silo `viewer` last read it.
silo_status status_in(test_cluster& c, size_t viewer, size_t id) {
  auto v = c.agent(viewer).view();
  auto* r = v.table.find(c.id(id));
  return r ? r->status : silo_status::dead;
}

// Holds the commits of silo 0 (the silo's and its agent's) at `gate`.
storage_wrapper_fn gate_first(std::shared_ptr<commit_gate> gate) {
  return [gate](std::shared_ptr<memory_storage> mem,
                size_t i) -> std::unique_ptr<storage> {
    if (i != 0)
      return nullptr;
    return std::make_unique<gated_storage>(std::move(mem), gate);
  };
}

// Silo 0 sees the table through a `lossy_map_store`, made at its first
// start into `out` (which must outlive the cluster).
membership_wrapper_fn lossy_first(std::shared_ptr<lossy_map_store>& out) {
  return [&out](membership_store& shared,
                size_t i) -> std::shared_ptr<membership_store> {
    if (i != 0)
      return nullptr;
    if (!out)
      out = std::make_shared<lossy_map_store>(shared);
    return out;
  };
}

// Sends Add{1} messages to `grains` probe grains through `s`, each with its
// own message id, retrying every one until it is accepted, until `stop` is
// set (at least `min` messages). Returns how many were accepted.
int send_load(silo& s, const std::string& tag, std::atomic<bool>& stop, int min,
              int grains) {
  int accepted = 0;
  for (int i = 0; i < min || (!stop.load() && i < 100'000); ++i) {
    Add add;
    add.set_delta(1);
    auto key = "g" + std::to_string(i % grains);
    auto id = tag + "-" + std::to_string(i);
    // A handoff makes a partition unavailable for a moment: retry.
    for (int attempt = 0; attempt < 400; ++attempt) {
      if (!s.send(id_of<probe>(key), add, id, 2s)) {
        ++accepted;
        break;
      }
      std::this_thread::sleep_for(25ms);
    }
  }
  return accepted;
}

int64_t total(silo& s, int grains) {
  int64_t sum = 0;
  for (int g = 0; g < grains; ++g) {
    caf::expected<Value> v{caf::error{}};
    for (int attempt = 0; attempt < 100; ++attempt) {
      v = grain_ref<probe>{s, "g" + std::to_string(g)}.call<Value>(Get{}, 2s);
      if (v)
        break;
      std::this_thread::sleep_for(50ms);
    }
    if (!v)
      return -1;
    sum += v->value();
  }
  return sum;
}

// Sends load through a silo on its own thread (see `send_load`) until
// stopped; stops and joins when it goes out of scope.
class load_thread {
public:
  load_thread(silo& s, std::string tag, int min, int grains,
              std::atomic<int>& accepted)
      : thread_{[this, &s, tag, min, grains, &accepted] {
        accepted += send_load(s, tag, stop_, min, grains);
      }} {}

  ~load_thread() {
    stop();
  }

  load_thread(const load_thread&) = delete;
  load_thread& operator=(const load_thread&) = delete;

  void stop() {
    stop_ = true;
    if (thread_.joinable())
      thread_.join();
  }

private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

} // namespace

TEST(agent_test, silos_join_and_spread_the_partitions) {
  auto c = start(spec(1));
  ASSERT_TRUE(c);
  EXPECT_EQ(c->agent(0).served().size(), partitions)
      << "the first silo owns all";
  ASSERT_TRUE(ok(c->add_silo()));
  ASSERT_TRUE(ok(c->add_silo()));
  ASSERT_TRUE(c->wait_stable(20s));
  for (size_t i = 0; i < 3; ++i)
    EXPECT_EQ(status_in(*c, 0, i), silo_status::active);
  // Every grain answers through every silo.
  for (int g = 0; g < 30; ++g) {
    auto key = "k" + std::to_string(g);
    auto r = grain_ref<probe>{c->runtime(g % 3), key}.call<Value>(Add{}, 2s);
    EXPECT_TRUE(r) << key << ": " << describe(r.error());
  }
  auto map = c->membership().read_partition_map();
  ASSERT_TRUE(map);
  for (auto& asg : map->partitions)
    EXPECT_GE(asg.epoch, 1u);
}

TEST(agent_test, handoff_under_load_loses_and_repeats_nothing) {
  auto c = start(spec(1));
  ASSERT_TRUE(c);
  constexpr int grains = 40;
  std::atomic<int> accepted{0};
  load_thread load_a{c->runtime(0), "via-a", 200, grains, accepted};
  ASSERT_TRUE(ok(c->add_silo()));
  load_thread load_b{c->runtime(1), "via-b", 200, grains, accepted};
  ASSERT_TRUE(ok(c->add_silo()));
  std::this_thread::sleep_for(300ms);
  load_a.stop();
  // a leaves while b keeps sending: its partitions move to b and c.
  auto left = c->host(0).leave();
  EXPECT_FALSE(left) << describe(left);
  EXPECT_TRUE(c->agent(0).served().empty());
  c->crash(0);
  std::this_thread::sleep_for(300ms);
  load_b.stop();
  ASSERT_TRUE(c->wait_stable(20s));
  std::printf("accepted %d messages\n", accepted.load());
  EXPECT_EQ(total(c->runtime(2), grains), accepted.load())
      << "every accepted message applied exactly once";
}

TEST(agent_test, a_crashed_silo_is_declared_dead_and_gets_its_partitions_back) {
  auto c = start(spec(3));
  ASSERT_TRUE(c);
  // Some state on c's partitions.
  auto c_parts = c->agent(2).served();
  ASSERT_FALSE(c_parts.empty());
  std::string key;
  for (int i = 0; key.empty(); ++i)
    if (partition_of(id_of<probe>("x" + std::to_string(i)), partitions)
        == c_parts[0])
      key = "x" + std::to_string(i);
  Add add5;
  add5.set_delta(5);
  auto sent5 = grain_ref<probe>{c->runtime(0), key}.send(add5, "before-crash");
  ASSERT_FALSE(sent5) << describe(sent5);
  c->crash(2);
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(eventually(
      [&] { return status_in(*c, 0, 2) == silo_status::dead; }, 15s));
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - t0);
  std::printf("detection time: %lld ms (probe 100 ms, 3 missed probes)\n",
              static_cast<long long>(took.count()));
  // b learns it from the table too (its view follows the watch).
  EXPECT_TRUE(
      eventually([&] { return status_in(*c, 1, 2) == silo_status::dead; }, 5s));
  // Its partitions are unavailable, not moved: their data is on c.
  auto r = grain_ref<probe>{c->runtime(0), key}.call<Value>(Get{}, 1s);
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), errc::partition_unavailable)
      << describe(r.error());
  // A durable message between grains waits in the sender's outbox.
  auto a_parts = c->agent(0).served();
  ASSERT_FALSE(a_parts.empty());
  std::string sender;
  for (int i = 0; sender.empty(); ++i)
    if (partition_of(id_of<probe>("s" + std::to_string(i)), partitions)
        == a_parts[0])
      sender = "s" + std::to_string(i);
  Forward fwd;
  fwd.set_to(key);
  fwd.set_delta(1);
  auto sent_fwd
      = grain_ref<probe>{c->runtime(0), sender}.send(fwd, "while-down");
  ASSERT_FALSE(sent_fwd) << describe(sent_fwd);
  // c restarts on its data and serves its partitions again.
  ASSERT_TRUE(ok(c->restart(2)));
  ASSERT_TRUE(eventually(
      [&] {
        auto v = grain_ref<probe>{c->runtime(1), key}.call<Value>(Get{}, 1s);
        return v && v->value() == 6;
      },
      20s));
  EXPECT_EQ(status_in(*c, 0, 2), silo_status::active);
}

TEST(agent_test, a_silo_declared_dead_stops_itself) {
  auto c = start(spec(2));
  ASSERT_TRUE(c);
  auto& store = c->membership();
  auto snap = store.read(c->id(1));
  ASSERT_TRUE(snap);
  auto entry = *snap->find(c->id(1));
  entry.status = silo_status::dead;
  auto res = store.update(entry, entry.version, snap->version);
  ASSERT_TRUE(res && res->applied());
  EXPECT_TRUE(eventually([&] { return c->declared_dead(1); }, 5s));
  EXPECT_FALSE(c->declared_dead(0));
}

TEST(agent_test, join_refuses_a_data_directory_without_its_partitions) {
  auto c = start(spec(1));
  ASSERT_TRUE(c);
  c->crash(0);
  c->wipe(0);
  auto err = c->restart(0);
  ASSERT_TRUE(err);
  EXPECT_EQ(code_of(err), errc::invalid_config);
  EXPECT_NE(describe(err).find("does not hold"), std::string::npos)
      << describe(err);
  EXPECT_FALSE(c->running(0));
}

TEST(agent_test, the_rows_times_come_from_the_clock_seam) {
  auto dir = fs::temp_directory_path()
             / ("granary-agent-clock-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  auto store = embedded_membership::open({(dir / "membership").string()});
  ASSERT_TRUE(store) << describe(store.error());
  auto clk = std::make_shared<manual_clock>(1'234'000);
  asio_transport_config tc;
  tc.cluster_id = "agent-test";
  tc.silo_id = "a";
  asio_transport net{tc};
  peer_address self{"a", {"127.0.0.1", 1}};
  transport_router router{net, self, partitions};
  agent_config cfg;
  cfg.self = self;
  cfg.partitions = partitions;
  cfg.handoff_dir = (dir / "a-handoff").string();
  {
    cluster_agent agent{cfg, **store, net, router, clk};
    memory_storage data;
    ASSERT_FALSE(agent.join(data, 1));
    auto snap = (*store)->read("a");
    ASSERT_TRUE(snap && snap->find("a"));
    EXPECT_EQ(snap->find("a")->start_time_ms, 1'234'000);
    EXPECT_EQ(snap->find("a")->i_am_alive_ms, 1'234'000);
  }
  store->reset();
  fs::remove_all(dir);
}

TEST(agent_test, a_slow_release_delays_its_handoff_instead_of_failing_it) {
  log_capture logs;
  auto gate = std::make_shared<commit_gate>();
  auto c = start(spec(1)
                     .wrap_storage(gate_first(gate))
                     .configure([](host::silo_file_config& cfg, size_t i) {
                       if (i == 0)
                         cfg.membership.detector.release_timeout = 300ms;
                     }));
  ASSERT_TRUE(c);
  // The highest partition moves first; one of its turns is committing
  // (slowly) when its handoff starts.
  auto key = key_on(partitions - 1, "slow");
  Add add5;
  add5.set_delta(5);
  auto first = grain_ref<probe>{c->runtime(0), key}.call<Value>(add5, 2s);
  ASSERT_TRUE(first) << describe(first.error());
  std::thread adding;
  {
    uint64_t before = 0;
    {
      std::lock_guard guard{gate->mtx};
      before = gate->entered;
    }
    gate->hold(true);
    adding = std::thread{[&] {
      Add add2;
      add2.set_delta(2);
      auto r = grain_ref<probe>{c->runtime(0), key}.call<Value>(add2, 20s);
      EXPECT_TRUE(r) << describe(r.error());
    }};
    ASSERT_TRUE(gate->wait_entered(before));
  }
  ASSERT_TRUE(ok(c->add_silo()));
  auto slow = "releasing partition " + std::to_string(partitions - 1)
              + " takes longer";
  EXPECT_TRUE(eventually([&] { return logs.has(slow); }, 10s))
      << "the agent gave up on the slow release";
  gate->hold(false);
  adding.join();
  ASSERT_TRUE(c->wait_stable(20s));
  EXPECT_FALSE(logs.has("handoff of partition " + std::to_string(partitions - 1)
                        + " to silo '" + c->id(1) + "' failed"));
  auto v = grain_ref<probe>{c->runtime(1), key}.call<Value>(Get{}, 2s);
  ASSERT_TRUE(v) << describe(v.error());
  EXPECT_EQ(v->value(), 7);
}

TEST(agent_test, a_map_write_with_a_lost_answer_never_makes_two_owners) {
  std::shared_ptr<lossy_map_store> lossy;
  auto c = start(spec(1).wrap_membership(lossy_first(lossy)));
  ASSERT_TRUE(c && lossy);
  // The highest partition moves first.
  uint32_t p = partitions - 1;
  auto key = key_on(p, "lost");
  Add add5;
  add5.set_delta(5);
  ASSERT_FALSE(c->runtime(0).send(id_of<probe>(key), add5, "before", 2s));
  lossy->armed = true;
  ASSERT_TRUE(ok(c->add_silo()));
  // The write that gives p to b is applied, its answer is lost, and a
  // cannot read the map for a while.
  ASSERT_TRUE(eventually([&] { return lossy->lost_writes.load() > 0; }, 10s));
  auto map = c->membership().read_partition_map();
  ASSERT_TRUE(map);
  ASSERT_EQ(*map->partitions[p].primary(), c->id(1));
  ASSERT_EQ(map->partitions[p].epoch, 2u);
  ASSERT_TRUE(
      eventually([&] { return contains(c->agent(1).served(), p); }, 10s));
  // Longer than the handoff once waited before it served p again.
  ASSERT_TRUE(
      eventually([&] { return lossy->writer_blind_reads.load() > 20; }, 20s))
      << "the handoff stopped asking the map";
  EXPECT_FALSE(contains(c->agent(0).served(), p))
      << "a serves p at epoch 1 while b serves it at epoch 2";
  // Durable sends to p through both silos.
  int accepted = 0;
  for (int i = 0; i < 4; ++i) {
    Add add1;
    add1.set_delta(1);
    for (size_t n = 0; n < 2; ++n)
      if (!c->runtime(n).send(id_of<probe>(key), add1,
                              c->id(n) + "-" + std::to_string(i), 300ms))
        ++accepted;
  }
  EXPECT_GE(accepted, 4) << "b accepts what it owns";
  // The map answers again: a finishes the handoff.
  lossy->blind = false;
  ASSERT_TRUE(eventually(
      [&] {
        auto r = c->router(0).route_of(p);
        return r.available && r.owner.silo_id == c->id(1) && r.epoch == 2;
      },
      20s));
  EXPECT_FALSE(contains(c->agent(0).served(), p));
  // a routes p to b, then drops its copy.
  EXPECT_TRUE(eventually(
      [&] {
        auto held
            = c->memory(0)->get(column::meta, "partition/" + std::to_string(p));
        return held && !held->has_value();
      },
      5s))
      << "a dropped its copy";
  // Every accepted send applied exactly once, at the one owner.
  auto v = grain_ref<probe>{c->runtime(1), key}.call<Value>(Get{}, 2s);
  ASSERT_TRUE(v) << describe(v.error());
  EXPECT_EQ(v->value(), 5 + accepted);
}

TEST(agent_test, a_receiver_restarted_before_the_map_write_keeps_the_data) {
  std::shared_ptr<lossy_map_store> lossy;
  // b's quick restart must not make a vote it dead.
  auto c = start(spec(1)
                     .wrap_membership(lossy_first(lossy))
                     .configure([](host::silo_file_config& cfg, size_t) {
                       cfg.membership.detector.missed_probes = 100;
                     }));
  ASSERT_TRUE(c && lossy);
  uint32_t p = partitions - 1;
  auto key = key_on(p, "kept");
  Add add5;
  add5.set_delta(5);
  ASSERT_FALSE(c->runtime(0).send(id_of<probe>(key), add5, "before", 2s));
  // b receives p; the map write that gives it to b waits at the door.
  auto seen = lossy->writes();
  lossy->hold(true);
  ASSERT_TRUE(ok(c->add_silo()));
  ASSERT_TRUE(lossy->wait_writes(seen));
  // b restarts meanwhile: the map it reads at join still gives p to a.
  ASSERT_TRUE(ok(c->restart(1)));
  lossy->hold(false);
  ASSERT_TRUE(
      eventually([&] { return contains(c->agent(1).served(), p); }, 10s));
  auto v = grain_ref<probe>{c->runtime(1), key}.call<Value>(Get{}, 2s);
  ASSERT_TRUE(v) << describe(v.error());
  EXPECT_EQ(v->value(), 5) << "b serves p without its data";
}

TEST(agent_test, a_quickly_restarted_silo_survives_the_death_of_its_last_run) {
  // a and b vote through a door that can hold their votes against c.
  std::shared_ptr<vote_gate_store> votes;
  auto c = start(spec(3).wrap_membership(
      [&votes](membership_store& shared,
               size_t i) -> std::shared_ptr<membership_store> {
        if (i == 2)
          return nullptr;
        if (!votes)
          votes = std::make_shared<vote_gate_store>(shared, "silo-2");
        return votes;
      }));
  ASSERT_TRUE(c && votes);
  auto& store = c->membership();
  // c dies; a and b vote against its run, but their votes reach the store
  // only after c came back.
  votes->hold(true);
  c->crash(2);
  ASSERT_TRUE(votes->wait_waiting(2));
  ASSERT_TRUE(ok(c->restart(2)));
  {
    // `activate` wrote the row before the start returned.
    auto row = store.read(c->id(2));
    ASSERT_TRUE(row && row->find(c->id(2)));
    ASSERT_EQ(row->find(c->id(2))->status, silo_status::active);
  }
  votes->hold(false);
  // Both voters went on after their late votes.
  ASSERT_TRUE(votes->wait_reads_after_door(2, 2));
  auto snap = store.read(c->id(2));
  ASSERT_TRUE(snap && snap->find(c->id(2)));
  EXPECT_EQ(snap->find(c->id(2))->status, silo_status::active);
  EXPECT_EQ(snap->find(c->id(2))->incarnation, c->host(2).incarnation());
  EXPECT_TRUE(snap->find(c->id(2))->suspicions.empty())
      << "votes against the previous run stick to the new one";
  EXPECT_TRUE(c->wait_stable(10s));
  EXPECT_FALSE(c->declared_dead(2));
}

TEST(agent_test, a_silo_declared_dead_while_joining_says_so) {
  std::unique_ptr<test_cluster> c;
  // Between join and activate, b's run is declared dead.
  c = start(spec(1).customize([&c](host::silo_builder& b, size_t i) {
    if (i != 1)
      return;
    b.before_activate([&c](silo&) {
      auto& store = c->membership();
      auto snap = store.read(c->id(1));
      ASSERT_TRUE(snap && snap->find(c->id(1)));
      auto entry = *snap->find(c->id(1));
      entry.status = silo_status::dead;
      auto res = store.update(entry, entry.version, snap->version);
      ASSERT_TRUE(res && res->applied());
    });
  }));
  ASSERT_TRUE(c);
  EXPECT_FALSE(c->add_silo()) << "activating a dead run must fail";
  EXPECT_TRUE(c->declared_dead(1))
      << "the join path must report the death like any other";
}

TEST(agent_test, two_silos_cut_apart_declare_no_one_dead) {
  log_capture logs;
  auto c = start(spec(2));
  ASSERT_TRUE(c);
  // Neither hears the other: each suspects the other, and neither reaches a
  // majority of the two live silos.
  c->isolate(0, true);
  c->isolate(1, true);
  ASSERT_TRUE(eventually(
      [&] {
        return (logs.has("silo '" + c->id(0) + "' reaches 1 of 2 live silos")
                && logs.has("silo '" + c->id(1)
                            + "' reaches 1 of 2 live silos"))
               || c->declared_dead(0) || c->declared_dead(1);
      },
      10s));
  EXPECT_FALSE(c->declared_dead(0));
  EXPECT_FALSE(c->declared_dead(1));
  auto table = c->membership().read_all();
  ASSERT_TRUE(table);
  for (size_t i = 0; i < 2; ++i) {
    auto* row = table->find(c->id(i));
    ASSERT_TRUE(row);
    EXPECT_EQ(row->status, silo_status::active) << c->id(i);
    EXPECT_TRUE(row->suspicions.empty()) << c->id(i);
  }
  // Healed, both serve on.
  c->isolate(0, false);
  c->isolate(1, false);
  for (int g = 0; g < 10; ++g) {
    auto r = grain_ref<probe>{c->runtime(0), "cut-" + std::to_string(g)}
                 .call<Value>(Add{}, 5s);
    EXPECT_TRUE(r) << describe(r.error());
  }
}

TEST(agent_test, a_silo_cut_off_from_the_majority_is_declared_dead_alone) {
  log_capture logs;
  auto c = start(spec(3));
  ASSERT_TRUE(c);
  // c hears no one and no one hears c; a and b still hear each other.
  c->isolate(2, true);
  ASSERT_TRUE(eventually([&] { return c->declared_dead(2); }, 15s));
  EXPECT_FALSE(c->declared_dead(0));
  EXPECT_FALSE(c->declared_dead(1));
  auto table = c->membership().read_all();
  ASSERT_TRUE(table);
  EXPECT_EQ(table->find(c->id(0))->status, silo_status::active);
  EXPECT_EQ(table->find(c->id(1))->status, silo_status::active);
  EXPECT_EQ(table->find(c->id(2))->status, silo_status::dead);
}

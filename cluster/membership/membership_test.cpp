// Conformance suite of the membership store, run against every provider:
// the embedded RocksDB store, etcd (a real etcd process per test binary) and
// a seed's embedded store reached over the cluster transport.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <latch>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <gtest/gtest.h>

#include "cluster.pb.h"
#include "cluster/membership/embedded_membership.hpp"
#include "cluster/membership/etcd_client.hpp"
#include "cluster/membership/etcd_membership.hpp"
#include "cluster/membership/remote_membership.hpp"
#include "cluster/transport/asio_transport.hpp"
#include "cluster/transport/ports.hpp"
#include "membership.pb.h"
#include "runtime/error.hpp"
#include "testing/etcd_test_server.hpp"

using namespace granary;
using namespace granary::cluster;
using granary::testing::etcd_test_server;
using namespace std::chrono_literals;

namespace {

/// Returns the value or aborts the test with the error's description.
template <class T>
T must(caf::expected<T> x) {
  if (!x)
    throw std::runtime_error(describe(x.error()));
  return std::move(*x);
}

void must(const caf::error& err) {
  if (err)
    throw std::runtime_error(describe(err));
}

std::string current_test_name() {
  auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info->test_suite_name();
  name += "-";
  name += info->name();
  for (auto& c : name)
    if (c == '/' || c == ' ')
      c = '_';
  return name;
}

} // namespace

// -- providers ----------------------------------------------------------------

// The providers live outside the anonymous namespace so that CTest names the
// typed tests "membership_conformance.<test><embedded_provider>".

namespace {

/// Starts etcd once per process; fails the test when it cannot.
etcd_test_server* shared_etcd();

} // namespace

/// Opens embedded stores in a fresh temporary directory.
struct embedded_provider {
  static constexpr const char* name = "embedded";
  static constexpr bool persistent = true;

  embedded_provider() {
    char tmpl[] = "/tmp/granary-membership-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr)
      throw std::runtime_error("mkdtemp failed");
    dir = tmpl;
  }

  ~embedded_provider() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  /// Opens the store; again after the previous one was destroyed, it
  /// reopens the same directory.
  std::unique_ptr<membership_store> open() {
    embedded_membership_config cfg;
    cfg.dir = dir + "/membership";
    return must(embedded_membership::open(cfg));
  }

  std::string dir;
};

/// Opens in-memory embedded stores (the simulation's): nothing survives a
/// reopen.
struct in_memory_provider {
  static constexpr const char* name = "in_memory";
  static constexpr bool persistent = false;

  std::unique_ptr<membership_store> open() {
    embedded_membership_config cfg;
    cfg.dir = "simulated";
    cfg.in_memory = true;
    return must(embedded_membership::open(cfg));
  }
};

namespace {

etcd_test_server* shared_etcd() {
  static std::unique_ptr<etcd_test_server> server;
  static std::string error;
  if (!server && error.empty()) {
    auto started = etcd_test_server::start();
    if (started)
      server = std::move(*started);
    else
      error = describe(started.error());
  }
  if (!server)
    ADD_FAILURE() << "cannot start etcd: " << error;
  return server.get();
}

} // namespace

/// Opens etcd stores on the shared etcd, one cluster id per test.
struct etcd_provider {
  static constexpr const char* name = "etcd";
  static constexpr bool persistent = true;

  etcd_provider()
      : cluster(current_test_name()) {
    // nop
  }

  /// Opens a new client on the same cluster id.
  std::unique_ptr<membership_store> open() {
    auto* server = shared_etcd();
    if (server == nullptr)
      throw std::runtime_error("etcd is not running; run scripts/setup");
    etcd_membership_config cfg;
    cfg.endpoints = {server->endpoint()};
    cfg.cluster_id = cluster;
    cfg.watch_retry_initial = 20ms;
    cfg.watch_retry_max = 200ms;
    return must(etcd_membership::open(cfg));
  }

  std::string cluster;
};

namespace {

asio_transport_config transport_config(std::string silo_id) {
  asio_transport_config cfg;
  cfg.cluster_id = "membership-test";
  cfg.silo_id = std::move(silo_id);
  cfg.incarnation = 1;
  cfg.handshake_timeout = 500ms;
  cfg.reconnect_initial = 10ms;
  cfg.reconnect_max = 100ms;
  return cfg;
}

/// Returns a port on 127.0.0.1 that nobody listens on.
uint16_t closed_port() {
  // Below the ephemeral range: a listener that binds port 0 (the client
  // silo of the test) can never get it, as it once did in CI and then
  // answered its own calls.
  return must(pick_free_port());
}

/// A seed silo that serves its embedded store through a
/// `membership_service`, and a client silo that reaches it through a
/// `remote_membership`; the store interface is the client's.
class seeded_stack final : public membership_store {
public:
  /// Starts only the seed silo, serving the store in `dir`.
  void start_seed(const std::string& dir) {
    embedded_membership_config cfg;
    cfg.dir = dir;
    seed_store = must(embedded_membership::open(cfg));
    service = std::make_unique<membership_service>(*seed_store);
    seed_net = std::make_unique<asio_transport>(transport_config("seed"));
    seed_net->set_handler([this](const peer_info& from, Frame&& f) {
      if (f.has_membership())
        service->handle(from, f.membership(), *seed_net);
    });
    seed_port = must(seed_net->start({"127.0.0.1", 0}));
  }

  /// Starts the client silo with `cfg` (the seeds default to our seed).
  void start_client(remote_membership_config cfg = {}) {
    client_net = std::make_unique<asio_transport>(transport_config("client"));
    client_net->set_handler([this](const peer_info& from, Frame&& f) {
      if (auto* c = client_ptr.load(); c != nullptr && f.has_membership())
        c->on_frame(from, f.membership());
    });
    must(client_net->start({"127.0.0.1", 0}));
    if (cfg.seeds.empty())
      cfg.seeds.push_back(seed_address());
    client = must(remote_membership::open(*client_net, std::move(cfg)));
    client_ptr = client.get();
  }

  peer_address seed_address() const {
    return {"seed", {"127.0.0.1", seed_port}};
  }

  ~seeded_stack() override {
    // Stop the inbound paths first, then the service while its transport
    // still exists; the members then go in reverse order.
    if (client_net)
      client_net->stop();
    if (seed_net)
      seed_net->stop();
    if (service)
      service->stop();
    client_ptr = nullptr;
    client.reset();
  }

  caf::expected<membership_table> read_all() override {
    return client->read_all();
  }

  caf::expected<membership_table> read(const std::string& silo_id) override {
    return client->read(silo_id);
  }

  caf::expected<write_result> insert(const membership_entry& entry,
                                     uint64_t expected_table_version) override {
    return client->insert(entry, expected_table_version);
  }

  caf::expected<write_result> update(const membership_entry& entry,
                                     uint64_t expected_row_version,
                                     uint64_t expected_table_version) override {
    return client->update(entry, expected_row_version, expected_table_version);
  }

  caf::error update_i_am_alive(const std::string& silo_id,
                               int64_t now_ms) override {
    return client->update_i_am_alive(silo_id, now_ms);
  }

  caf::expected<size_t> delete_dead(int64_t older_than_ms) override {
    return client->delete_dead(older_than_ms);
  }

  caf::expected<watch_token> watch(membership_watcher watcher) override {
    return client->watch(std::move(watcher));
  }

  caf::expected<partition_map> read_partition_map() override {
    return client->read_partition_map();
  }

  caf::expected<write_result>
  write_partition_map(const partition_map& map,
                      uint64_t expected_version) override {
    return client->write_partition_map(map, expected_version);
  }

  std::unique_ptr<embedded_membership> seed_store;
  std::unique_ptr<membership_service> service;
  std::unique_ptr<asio_transport> seed_net;
  uint16_t seed_port = 0;
  std::unique_ptr<asio_transport> client_net;
  std::atomic<remote_membership*> client_ptr{nullptr};
  std::unique_ptr<remote_membership> client;
};

} // namespace

/// Opens a seed silo with an embedded store in a fresh temporary directory
/// and a client silo that uses it over TCP on 127.0.0.1.
struct seeded_provider {
  static constexpr const char* name = "seeded";
  static constexpr bool persistent = true;

  /// Opens a new seed and client; again after the previous ones were
  /// destroyed, the seed reopens the same directory (new transports).
  std::unique_ptr<membership_store> open() {
    auto stack = std::make_unique<seeded_stack>();
    stack->start_seed(dirs.dir + "/membership");
    stack->start_client();
    return stack;
  }

  embedded_provider dirs;
};

namespace {

membership_entry make_entry(std::string id,
                            silo_status status = silo_status::joining) {
  membership_entry e;
  e.silo_id = std::move(id);
  e.address = "10.0.0.1:7100";
  e.gateway_address = "10.0.0.1:8080";
  e.status = status;
  e.start_time_ms = 1'700'000'000'000;
  e.incarnation = 3;
  e.i_am_alive_ms = 1'700'000'000'500;
  return e;
}

void expect_same_row(const membership_entry& want,
                     const membership_entry& got) {
  EXPECT_EQ(got.silo_id, want.silo_id);
  EXPECT_EQ(got.address, want.address);
  EXPECT_EQ(got.gateway_address, want.gateway_address);
  EXPECT_EQ(got.status, want.status);
  EXPECT_EQ(got.start_time_ms, want.start_time_ms);
  EXPECT_EQ(got.incarnation, want.incarnation);
  EXPECT_EQ(got.i_am_alive_ms, want.i_am_alive_ms);
  EXPECT_EQ(got.suspicions, want.suspicions);
}

partition_map make_map(uint32_t count, const std::string& owner,
                       uint64_t epoch) {
  partition_map map;
  map.partition_count = count;
  for (uint32_t i = 0; i < count; ++i)
    map.partitions.push_back(partition_assignment{
        i, epoch, {partition_owner{owner, replica_role::primary}}});
  return map;
}

/// Records watch notifications.
struct change_log {
  std::mutex mtx;
  std::condition_variable cv;
  std::vector<membership_change> changes;

  membership_watcher watcher() {
    return [this](const membership_change& c) {
      std::lock_guard guard{mtx};
      changes.push_back(c);
      cv.notify_all();
    };
  }

  /// Waits until a change of `kind` with at least `version` arrived.
  bool wait_for(membership_change_kind kind, uint64_t version,
                std::chrono::milliseconds limit = 5s) {
    std::unique_lock guard{mtx};
    return cv.wait_for(guard, limit, [&] {
      return std::any_of(changes.begin(), changes.end(), [&](auto& c) {
        return c.kind == kind && c.version >= version;
      });
    });
  }

  size_t size() {
    std::lock_guard guard{mtx};
    return changes.size();
  }
};

// -- conformance suite --------------------------------------------------------

template <class Provider>
class membership_conformance : public ::testing::Test {
protected:
  void SetUp() override {
    store = provider.open();
  }

  void reopen() {
    store.reset();
    store = provider.open();
  }

  Provider provider;
  std::unique_ptr<membership_store> store;
};

using providers = ::testing::Types<embedded_provider, etcd_provider,
                                   seeded_provider, in_memory_provider>;

TYPED_TEST_SUITE(membership_conformance, providers);

TYPED_TEST(membership_conformance, empty_table_has_version_zero) {
  auto table = must(this->store->read_all());
  EXPECT_TRUE(table.rows.empty());
  EXPECT_EQ(table.version, 0u);
  auto one = must(this->store->read("nobody"));
  EXPECT_TRUE(one.rows.empty());
  EXPECT_EQ(one.version, 0u);
}

TYPED_TEST(membership_conformance, insert_then_read) {
  auto a = make_entry("silo-a");
  auto r = must(this->store->insert(a, 0));
  ASSERT_TRUE(r.applied()) << to_string(r.status);
  EXPECT_GT(r.version, 0u);
  auto table = must(this->store->read_all());
  ASSERT_EQ(table.rows.size(), 1u);
  EXPECT_EQ(table.version, r.version);
  expect_same_row(a, table.rows[0]);
  EXPECT_EQ(table.rows[0].version, r.version);
  auto one = must(this->store->read("silo-a"));
  ASSERT_EQ(one.rows.size(), 1u);
  EXPECT_EQ(one.version, r.version);
  expect_same_row(a, one.rows[0]);
  EXPECT_EQ(one.rows[0].version, r.version);
  auto none = must(this->store->read("silo-z"));
  EXPECT_TRUE(none.rows.empty());
  EXPECT_EQ(none.version, r.version);
  // Rows come ordered by silo id.
  auto b = make_entry("silo-0");
  ASSERT_TRUE(must(this->store->insert(b, r.version)).applied());
  table = must(this->store->read_all());
  ASSERT_EQ(table.rows.size(), 2u);
  EXPECT_EQ(table.rows[0].silo_id, "silo-0");
  EXPECT_EQ(table.rows[1].silo_id, "silo-a");
  ASSERT_NE(table.find("silo-a"), nullptr);
  EXPECT_EQ(table.find("silo-b"), nullptr);
}

TYPED_TEST(membership_conformance, duplicate_insert_conflicts) {
  auto r1 = must(this->store->insert(make_entry("a"), 0));
  ASSERT_TRUE(r1.applied());
  auto other = make_entry("a", silo_status::active);
  other.address = "elsewhere:1";
  auto r2 = must(this->store->insert(other, r1.version));
  EXPECT_EQ(r2.status, write_status::row_exists);
  EXPECT_EQ(r2.version, r1.version);
  auto table = must(this->store->read_all());
  ASSERT_EQ(table.rows.size(), 1u);
  EXPECT_EQ(table.rows[0].address, "10.0.0.1:7100");
  EXPECT_EQ(table.version, r1.version);
}

TYPED_TEST(membership_conformance, insert_with_stale_table_version_conflicts) {
  auto r1 = must(this->store->insert(make_entry("a"), 0));
  ASSERT_TRUE(r1.applied());
  auto r2 = must(this->store->insert(make_entry("b"), 0));
  EXPECT_EQ(r2.status, write_status::table_version_conflict);
  EXPECT_EQ(r2.version, r1.version);
  EXPECT_EQ(must(this->store->read_all()).rows.size(), 1u);
}

TYPED_TEST(membership_conformance, update_with_stale_row_version_conflicts) {
  auto a = make_entry("a");
  auto r1 = must(this->store->insert(a, 0));
  a.status = silo_status::active;
  auto r2 = must(this->store->update(a, r1.version, r1.version));
  ASSERT_TRUE(r2.applied()) << to_string(r2.status);
  EXPECT_GT(r2.version, r1.version);
  a.status = silo_status::dead;
  auto r3 = must(this->store->update(a, r1.version, r2.version));
  EXPECT_EQ(r3.status, write_status::row_version_conflict);
  EXPECT_EQ(r3.version, r2.version);
  auto row = must(this->store->read("a")).rows.at(0);
  EXPECT_EQ(row.status, silo_status::active);
  EXPECT_EQ(row.version, r2.version);
}

TYPED_TEST(membership_conformance, update_with_stale_table_version_conflicts) {
  auto a = make_entry("a");
  auto r1 = must(this->store->insert(a, 0));
  auto r2 = must(this->store->insert(make_entry("b"), r1.version));
  ASSERT_TRUE(r2.applied());
  a.status = silo_status::active;
  auto r3 = must(this->store->update(a, r1.version, r1.version));
  EXPECT_EQ(r3.status, write_status::table_version_conflict);
  EXPECT_EQ(r3.version, r2.version);
  EXPECT_EQ(must(this->store->read("a")).rows.at(0).status,
            silo_status::joining);
  auto r4 = must(this->store->update(a, r1.version, r2.version));
  EXPECT_TRUE(r4.applied()) << to_string(r4.status);
}

TYPED_TEST(membership_conformance, update_of_missing_row_conflicts) {
  auto r = must(this->store->update(make_entry("ghost"), 1, 0));
  EXPECT_EQ(r.status, write_status::row_missing);
  EXPECT_TRUE(must(this->store->read_all()).rows.empty());
}

TYPED_TEST(membership_conformance, table_version_strictly_increases) {
  std::vector<uint64_t> versions;
  uint64_t table_version = 0;
  for (int i = 0; i < 5; ++i) {
    auto r = must(this->store->insert(make_entry("s" + std::to_string(i)),
                                      table_version));
    ASSERT_TRUE(r.applied());
    table_version = r.version;
    versions.push_back(r.version);
  }
  for (int i = 0; i < 5; ++i) {
    auto e = make_entry("s" + std::to_string(i), silo_status::dead);
    auto row = must(this->store->read(e.silo_id)).rows.at(0);
    auto r = must(this->store->update(e, row.version, table_version));
    ASSERT_TRUE(r.applied());
    table_version = r.version;
    versions.push_back(r.version);
  }
  EXPECT_EQ(must(this->store->delete_dead(std::numeric_limits<int64_t>::max())),
            5u);
  auto after = must(this->store->read_all()).version;
  versions.push_back(after);
  for (size_t i = 1; i < versions.size(); ++i)
    EXPECT_LT(versions[i - 1], versions[i]) << "at write " << i;
}

TYPED_TEST(membership_conformance, i_am_alive_changes_only_the_timestamp) {
  auto a = make_entry("a");
  auto r1 = must(this->store->insert(a, 0));
  must(this->store->update_i_am_alive("a", 1'700'000'009'000));
  auto table = must(this->store->read_all());
  ASSERT_EQ(table.rows.size(), 1u);
  EXPECT_EQ(table.rows[0].i_am_alive_ms, 1'700'000'009'000);
  EXPECT_EQ(table.rows[0].version, r1.version);
  EXPECT_EQ(table.version, r1.version);
  // A heartbeat does not make a CAS against the row fail; `update` keeps
  // the heartbeat.
  a.status = silo_status::active;
  a.i_am_alive_ms = 1;
  auto r2 = must(this->store->update(a, r1.version, r1.version));
  ASSERT_TRUE(r2.applied()) << to_string(r2.status);
  EXPECT_EQ(must(this->store->read("a")).rows.at(0).i_am_alive_ms,
            1'700'000'009'000);
  auto err = this->store->update_i_am_alive("ghost", 5);
  EXPECT_EQ(code_of(err), errc::not_found) << describe(err);
}

TYPED_TEST(membership_conformance, suspicion_votes_round_trip) {
  auto a = make_entry("a", silo_status::active);
  auto r1 = must(this->store->insert(a, 0));
  a.suspicions = {{"b", 1'700'000'001'000, 7}, {"c", 1'700'000'002'000}};
  auto r2 = must(this->store->update(a, r1.version, r1.version));
  ASSERT_TRUE(r2.applied());
  auto row = must(this->store->read("a")).rows.at(0);
  EXPECT_EQ(row.suspicions, a.suspicions);
  // A third voter adds its vote against the version it read.
  row.suspicions.push_back({"d", 1'700'000'003'000});
  row.status = silo_status::dead;
  auto r3 = must(this->store->update(row, row.version, r2.version));
  ASSERT_TRUE(r3.applied());
  auto table = must(this->store->read_all());
  ASSERT_EQ(table.rows.at(0).suspicions.size(), 3u);
  EXPECT_EQ(table.rows[0].suspicions[2].voter, "d");
  EXPECT_EQ(table.rows[0].suspicions[0].incarnation, 7u);
  EXPECT_EQ(table.rows[0].status, silo_status::dead);
}

TYPED_TEST(membership_conformance, delete_dead_removes_old_dead_rows_only) {
  uint64_t v = 0;
  auto add = [&](std::string id, silo_status st, int64_t alive) {
    auto e = make_entry(std::move(id), st);
    e.start_time_ms = 100;
    e.i_am_alive_ms = alive;
    auto r = must(this->store->insert(e, v));
    ASSERT_TRUE(r.applied());
    v = r.version;
  };
  add("old-dead", silo_status::dead, 200);
  add("new-dead", silo_status::dead, 5000);
  add("old-active", silo_status::active, 200);
  add("old-leaving", silo_status::shutting_down, 200);
  EXPECT_EQ(must(this->store->delete_dead(1000)), 1u);
  auto table = must(this->store->read_all());
  ASSERT_EQ(table.rows.size(), 3u);
  EXPECT_EQ(table.find("old-dead"), nullptr);
  EXPECT_GT(table.version, v);
  EXPECT_EQ(must(this->store->delete_dead(1000)), 0u);
  EXPECT_EQ(must(this->store->read_all()).version, table.version);
  // The silo id can join again after its old row is gone.
  auto r = must(this->store->insert(make_entry("old-dead"), table.version));
  EXPECT_TRUE(r.applied());
}

TYPED_TEST(membership_conformance, watch_notifies_on_change) {
  change_log log;
  auto token = must(this->store->watch(log.watcher()));
  EXPECT_TRUE(token.active());
  auto r1 = must(this->store->insert(make_entry("a"), 0));
  EXPECT_TRUE(log.wait_for(membership_change_kind::table, r1.version));
  auto m = must(this->store->write_partition_map(make_map(4, "a", 1), 0));
  ASSERT_TRUE(m.applied());
  EXPECT_TRUE(log.wait_for(membership_change_kind::partition_map, m.version));
  // Heartbeats are not table changes.
  auto before = log.size();
  must(this->store->update_i_am_alive("a", 42));
  // Cancelled: no more calls, even for later changes.
  token.cancel();
  EXPECT_FALSE(token.active());
  auto r2 = must(this->store->insert(make_entry("b"), r1.version));
  ASSERT_TRUE(r2.applied());
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(log.size(), before);
  std::lock_guard guard{log.mtx};
  uint64_t last_table = 0;
  for (auto& c : log.changes) {
    if (c.kind == membership_change_kind::table) {
      EXPECT_GT(c.version, last_table);
      last_table = c.version;
    }
  }
}

TYPED_TEST(membership_conformance, partition_map_compare_and_set) {
  auto empty = must(this->store->read_partition_map());
  EXPECT_EQ(empty.version, 0u);
  EXPECT_EQ(empty.partition_count, 0u);
  EXPECT_TRUE(empty.partitions.empty());
  auto map = make_map(4, "a", 1);
  map.partitions[2].owners.push_back({"b", replica_role::follower});
  auto r1 = must(this->store->write_partition_map(map, 0));
  ASSERT_TRUE(r1.applied()) << to_string(r1.status);
  auto read = must(this->store->read_partition_map());
  EXPECT_EQ(read.version, r1.version);
  EXPECT_EQ(read.partition_count, 4u);
  EXPECT_EQ(read.partitions, map.partitions);
  ASSERT_NE(read.partitions[2].primary(), nullptr);
  EXPECT_EQ(*read.partitions[2].primary(), "a");
  // A stale writer loses.
  auto r2 = must(this->store->write_partition_map(make_map(4, "b", 2), 0));
  EXPECT_EQ(r2.status, write_status::map_version_conflict);
  EXPECT_EQ(r2.version, r1.version);
  // Moving a partition without a new epoch is refused.
  auto moved = read;
  moved.partitions[1].owners = {{"b", replica_role::primary}};
  auto bad = this->store->write_partition_map(moved, r1.version);
  ASSERT_FALSE(bad);
  EXPECT_EQ(code_of(bad.error()), errc::invalid_argument);
  // So is a lower epoch, a second primary and a new partition count.
  auto lower = read;
  lower.partitions[0].epoch = 0;
  EXPECT_FALSE(this->store->write_partition_map(lower, r1.version));
  auto two = read;
  two.partitions[3].owners.push_back({"c", replica_role::primary});
  two.partitions[3].epoch = 9;
  EXPECT_FALSE(this->store->write_partition_map(two, r1.version));
  EXPECT_FALSE(
      this->store->write_partition_map(make_map(8, "a", 5), r1.version));
  // With a new epoch, the move is accepted.
  moved.partitions[1].epoch = 2;
  auto r3 = must(this->store->write_partition_map(moved, r1.version));
  ASSERT_TRUE(r3.applied()) << to_string(r3.status);
  EXPECT_GT(r3.version, r1.version);
  auto again = must(this->store->read_partition_map());
  EXPECT_EQ(*again.partitions[1].primary(), "b");
  EXPECT_EQ(again.partitions[1].epoch, 2u);
}

TYPED_TEST(membership_conformance, concurrent_writers_never_both_win) {
  constexpr int writers = 6;
  constexpr int rounds = 4;
  auto r0 = must(this->store->insert(make_entry("target"), 0));
  ASSERT_TRUE(r0.applied());
  for (int round = 0; round < rounds; ++round) {
    auto snapshot = must(this->store->read("target"));
    auto row = snapshot.rows.at(0);
    std::atomic<int> wins{0};
    std::atomic<int> conflicts{0};
    std::atomic<int> errors{0};
    std::latch go{writers};
    std::vector<std::thread> threads;
    for (int w = 0; w < writers; ++w)
      threads.emplace_back([&, w] {
        auto e = row;
        e.suspicions.push_back({"voter-" + std::to_string(w), w});
        go.arrive_and_wait();
        auto r = this->store->update(e, row.version, snapshot.version);
        if (!r)
          ++errors;
        else if (r->applied())
          ++wins;
        else
          ++conflicts;
      });
    for (auto& t : threads)
      t.join();
    EXPECT_EQ(errors.load(), 0);
    EXPECT_EQ(wins.load(), 1) << "round " << round;
    EXPECT_EQ(conflicts.load(), writers - 1);
    EXPECT_EQ(must(this->store->read("target")).rows.at(0).suspicions.size(),
              row.suspicions.size() + 1);
  }
  // Inserts of different silos against one table version: one wins.
  auto v = must(this->store->read_all()).version;
  std::atomic<int> wins{0};
  std::latch go{writers};
  std::vector<std::thread> threads;
  for (int w = 0; w < writers; ++w)
    threads.emplace_back([&, w] {
      go.arrive_and_wait();
      auto r
          = this->store->insert(make_entry("joiner-" + std::to_string(w)), v);
      if (r && r->applied())
        ++wins;
    });
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(wins.load(), 1);
  EXPECT_EQ(must(this->store->read_all()).rows.size(), 2u);
}

TYPED_TEST(membership_conformance, reopen_keeps_data) {
  if constexpr (!TypeParam::persistent)
    GTEST_SKIP() << TypeParam::name << " keeps nothing across a reopen";
  auto a = make_entry("a", silo_status::active);
  a.suspicions = {{"b", 7}};
  auto r1 = must(this->store->insert(a, 0));
  must(this->store->update_i_am_alive("a", 1'700'000'123'000));
  a.i_am_alive_ms = 1'700'000'123'000;
  auto m = must(this->store->write_partition_map(make_map(3, "a", 4), 0));
  ASSERT_TRUE(m.applied());
  this->reopen();
  auto table = must(this->store->read_all());
  ASSERT_EQ(table.rows.size(), 1u);
  expect_same_row(a, table.rows[0]);
  EXPECT_EQ(table.rows[0].version, r1.version);
  EXPECT_EQ(table.version, r1.version);
  auto map = must(this->store->read_partition_map());
  EXPECT_EQ(map.version, m.version);
  EXPECT_EQ(map.partitions, make_map(3, "a", 4).partitions);
  // Versions keep growing across the restart.
  auto r2 = must(this->store->insert(make_entry("b"), table.version));
  ASSERT_TRUE(r2.applied());
  EXPECT_GT(r2.version, std::max(r1.version, m.version));
}

TYPED_TEST(membership_conformance, rejects_bad_silo_ids) {
  for (auto& id :
       std::vector<std::string>{"", "a/b", "a b", std::string(300, 'x')}) {
    auto r = this->store->insert(make_entry(id), 0);
    ASSERT_FALSE(r) << "silo id '" << id << "'";
    EXPECT_EQ(code_of(r.error()), errc::invalid_argument);
  }
  EXPECT_FALSE(this->store->watch(nullptr));
}

TYPED_TEST(membership_conformance, measure_cas_round_trip) {
  constexpr int n = 200;
  auto e = make_entry("bench");
  auto r = must(this->store->insert(e, 0));
  uint64_t row_version = r.version;
  uint64_t table_version = r.version;
  std::vector<double> us;
  us.reserve(n);
  for (int i = 0; i < n; ++i) {
    e.incarnation = static_cast<uint64_t>(i);
    auto start = std::chrono::steady_clock::now();
    auto w = must(this->store->update(e, row_version, table_version));
    auto stop = std::chrono::steady_clock::now();
    ASSERT_TRUE(w.applied());
    row_version = table_version = w.version;
    us.push_back(
        std::chrono::duration<double, std::micro>(stop - start).count());
  }
  std::sort(us.begin(), us.end());
  auto alive_start = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i)
    must(this->store->update_i_am_alive("bench", i));
  auto alive_us = std::chrono::duration<double, std::micro>(
                      std::chrono::steady_clock::now() - alive_start)
                      .count()
                  / n;
  std::cout << "[ measure  ] " << TypeParam::name
            << " CAS update round trip: p50 " << us[n / 2] << " us, p99 "
            << us[n * 99 / 100] << " us; i-am-alive mean " << alive_us
            << " us\n";
  this->RecordProperty("cas_p50_us", std::to_string(us[n / 2]));
}

// -- provider specifics -------------------------------------------------------

TEST(embedded_membership, second_open_of_a_directory_fails) {
  embedded_provider p;
  auto first = p.open();
  embedded_membership_config cfg;
  cfg.dir = p.dir + "/membership";
  auto second = embedded_membership::open(cfg);
  ASSERT_FALSE(second);
  EXPECT_EQ(code_of(second.error()), errc::data_dir_locked)
      << describe(second.error());
  EXPECT_FALSE(embedded_membership::open({}));
}

TEST(etcd_membership, unreachable_etcd_is_named_in_the_error) {
  // A port nobody listens on: bind one and close it again.
  etcd_membership_config cfg;
  cfg.endpoints = {"127.0.0.1:1"};
  cfg.cluster_id = "down";
  cfg.request_timeout = 500ms;
  auto store = etcd_membership::open(cfg);
  ASSERT_FALSE(store);
  auto text = describe(store.error());
  EXPECT_EQ(code_of(store.error()), errc::storage_failure) << text;
  EXPECT_NE(text.find("127.0.0.1:1"), std::string::npos) << text;
  EXPECT_NE(text.find("unreachable"), std::string::npos) << text;
  cfg.cluster_id = "a/b";
  EXPECT_EQ(code_of(etcd_membership::open(cfg).error()), errc::invalid_config);
  cfg.cluster_id = "ok";
  cfg.endpoints = {"no-port"};
  EXPECT_EQ(code_of(etcd_membership::open(cfg).error()), errc::invalid_config);
}

TEST(etcd_membership, fails_over_to_an_endpoint_that_answers) {
  auto* server = shared_etcd();
  ASSERT_NE(server, nullptr);
  // Nobody listens on `down`: an etcd member that is not running.
  auto down = "127.0.0.1:" + std::to_string(closed_port());
  etcd_membership_config cfg;
  cfg.endpoints = {down, server->endpoint()};
  cfg.cluster_id = current_test_name();
  cfg.request_timeout = 500ms;
  cfg.watch_retry_initial = 20ms;
  cfg.watch_retry_max = 200ms;
  auto store = must(etcd_membership::open(cfg));
  change_log log;
  auto token = must(store->watch(log.watcher()));
  auto r = must(store->insert(make_entry("a"), 0));
  ASSERT_TRUE(r.applied());
  EXPECT_TRUE(log.wait_for(membership_change_kind::table, r.version))
      << "the watch did not fail over";
  EXPECT_EQ(must(store->read_all()).rows.size(), 1u);
  auto m = must(store->write_partition_map(make_map(2, "a", 1), 0));
  EXPECT_TRUE(log.wait_for(membership_change_kind::partition_map, m.version));
  // The other order, as another silo may list them.
  cfg.endpoints = {server->endpoint(), down};
  auto other = must(etcd_membership::open(cfg));
  EXPECT_EQ(must(other->read_all()).rows.size(), 1u);
  // With every endpoint down, the error names each.
  cfg.endpoints = {down, "127.0.0.1:1"};
  auto none = etcd_membership::open(cfg);
  ASSERT_FALSE(none);
  auto text = describe(none.error());
  EXPECT_EQ(code_of(none.error()), errc::storage_failure) << text;
  EXPECT_NE(text.find(down), std::string::npos) << text;
  EXPECT_NE(text.find("127.0.0.1:1 "), std::string::npos) << text;
}

TEST(etcd_client, keeps_the_endpoint_that_answered) {
  auto* server = shared_etcd();
  ASSERT_NE(server, nullptr);
  auto down = "127.0.0.1:" + std::to_string(closed_port());
  etcd_client_config cfg;
  cfg.endpoints = {down, server->endpoint()};
  cfg.request_timeout = 500ms;
  etcd_client client{cfg};
  EXPECT_EQ(client.endpoint(), down);
  auto health = client.get("/health");
  ASSERT_TRUE(health) << describe(health.error());
  EXPECT_EQ(client.endpoint(), server->endpoint());
  ASSERT_TRUE(client.get("/health"));
  EXPECT_EQ(client.endpoint(), server->endpoint());
}

TEST(etcd_membership, watch_sees_writes_of_other_clients) {
  etcd_provider p;
  auto watcher_store = p.open();
  auto writer_store = p.open();
  change_log log;
  auto token = must(watcher_store->watch(log.watcher()));
  auto r = must(writer_store->insert(make_entry("a"), 0));
  ASSERT_TRUE(r.applied());
  EXPECT_TRUE(log.wait_for(membership_change_kind::table, r.version));
  auto m = must(writer_store->write_partition_map(make_map(2, "a", 1), 0));
  EXPECT_TRUE(log.wait_for(membership_change_kind::partition_map, m.version));
  // Destroying the store stops its watch thread promptly.
  auto start = std::chrono::steady_clock::now();
  token.cancel();
  watcher_store.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
}

TEST(etcd_membership, clusters_do_not_see_each_other) {
  etcd_provider p1;
  etcd_provider p2;
  p1.cluster += "-one";
  p2.cluster += "-two";
  auto s1 = p1.open();
  auto s2 = p2.open();
  ASSERT_TRUE(must(s1->insert(make_entry("a"), 0)).applied());
  ASSERT_TRUE(must(s2->insert(make_entry("a"), 0)).applied());
  EXPECT_EQ(must(s1->read_all()).rows.size(), 1u);
  EXPECT_EQ(must(s2->read_all()).rows.size(), 1u);
  EXPECT_EQ(must(s1->read_partition_map()).version, 0u);
}

} // namespace

namespace {

TEST(etcd_membership, survives_an_etcd_restart) {
  auto server = must(etcd_test_server::start());
  etcd_membership_config cfg;
  cfg.endpoints = {server->endpoint()};
  cfg.cluster_id = "restart";
  cfg.request_timeout = 500ms;
  cfg.watch_retry_initial = 10ms;
  cfg.watch_retry_max = 50ms;
  auto store = must(etcd_membership::open(cfg));
  auto writer = must(etcd_membership::open(cfg));
  change_log log;
  auto token = must(store->watch(log.watcher()));
  auto r1 = must(writer->insert(make_entry("a"), 0));
  ASSERT_TRUE(log.wait_for(membership_change_kind::table, r1.version));
  server->kill();
  // While etcd is down, calls fail within the timeout and name it.
  auto start = std::chrono::steady_clock::now();
  auto down = store->read_all();
  ASSERT_FALSE(down);
  auto text = describe(down.error());
  EXPECT_NE(text.find(server->endpoint()), std::string::npos) << text;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
  // The data survives, and the watch reconnects and resumes after the last
  // revision it saw.
  must(server->restart());
  auto table = must(store->read_all());
  ASSERT_EQ(table.rows.size(), 1u);
  EXPECT_EQ(table.version, r1.version);
  auto r2 = must(writer->insert(make_entry("b"), table.version));
  ASSERT_TRUE(r2.applied());
  EXPECT_TRUE(log.wait_for(membership_change_kind::table, r2.version));
}

} // namespace

namespace {

TEST(remote_membership, calls_time_out_naming_the_seed_when_it_is_down) {
  seeded_stack stack;
  remote_membership_config cfg;
  cfg.seeds.push_back({"gone-seed", {"127.0.0.1", closed_port()}});
  cfg.call_timeout = 300ms;
  cfg.poll_interval = 20ms;
  stack.start_client(cfg);
  auto seed_text = cfg.seeds[0].address.to_string();
  auto start = std::chrono::steady_clock::now();
  auto table = stack.read_all();
  auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(table);
  auto text = describe(table.error());
  EXPECT_EQ(code_of(table.error()), errc::timeout) << text;
  EXPECT_NE(text.find("gone-seed"), std::string::npos) << text;
  EXPECT_NE(text.find(seed_text), std::string::npos) << text;
  EXPECT_GE(elapsed, 300ms);
  EXPECT_LT(elapsed, 2s);
  // A write has an unknown outcome and says so.
  auto w = stack.insert(make_entry("a"), 0);
  ASSERT_FALSE(w);
  EXPECT_EQ(code_of(w.error()), errc::timeout);
  EXPECT_NE(describe(w.error()).find("unknown"), std::string::npos)
      << describe(w.error());
  auto err = stack.update_i_am_alive("a", 1);
  EXPECT_EQ(code_of(err), errc::timeout) << describe(err);
  // Watching works without a seed (nothing is reported), and a cancelled
  // watch and the destructor stop the poller promptly.
  change_log log;
  auto token = must(stack.watch(log.watcher()));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(log.size(), 0u);
  token.cancel();
  auto stats = stack.client->stats();
  EXPECT_GE(stats.timeouts, 3u);
  EXPECT_EQ(stats.answers, 0u);
  start = std::chrono::steady_clock::now();
  stack.client_net->stop();
  stack.client.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
}

TEST(remote_membership, open_rejects_bad_settings) {
  asio_transport net{transport_config("client")};
  remote_membership_config cfg;
  EXPECT_EQ(code_of(remote_membership::open(net, cfg).error()),
            errc::invalid_config);
  cfg.seeds.push_back({"", {"127.0.0.1", 1}});
  EXPECT_EQ(code_of(remote_membership::open(net, cfg).error()),
            errc::invalid_config);
  cfg.seeds[0] = {"seed", {"127.0.0.1", 0}};
  EXPECT_EQ(code_of(remote_membership::open(net, cfg).error()),
            errc::invalid_config);
  cfg.seeds[0] = {"seed", {"127.0.0.1", 1}};
  cfg.call_timeout = 0ms;
  EXPECT_EQ(code_of(remote_membership::open(net, cfg).error()),
            errc::invalid_config);
  cfg.call_timeout = 1s;
  EXPECT_TRUE(remote_membership::open(net, cfg));
}

TEST(remote_membership, reads_move_on_to_the_next_seed) {
  embedded_provider dirs;
  seeded_stack stack;
  stack.start_seed(dirs.dir + "/membership");
  remote_membership_config cfg;
  cfg.seeds.push_back({"gone-seed", {"127.0.0.1", closed_port()}});
  cfg.seeds.push_back(stack.seed_address());
  cfg.call_timeout = 300ms;
  stack.start_client(cfg);
  // The first read waits for the dead seed, then asks the live one.
  auto table = must(stack.read_all());
  EXPECT_EQ(table.version, 0u);
  EXPECT_EQ(stack.client->stats().failovers, 1u);
  // Later calls go straight to the seed that answered.
  auto start = std::chrono::steady_clock::now();
  auto r = must(stack.insert(make_entry("a"), 0));
  EXPECT_TRUE(r.applied());
  EXPECT_LT(std::chrono::steady_clock::now() - start, 300ms);
  EXPECT_EQ(stack.client->stats().failovers, 1u);
  EXPECT_EQ(must(stack.seed_store->read_all()).version, r.version);
  auto v = must(stack.client->read_versions());
  EXPECT_EQ(v.table, r.version);
  EXPECT_EQ(v.partition_map, 0u);
}

TEST(membership_service, garbage_gets_invalid_argument_and_service_survives) {
  embedded_provider dirs;
  seeded_stack stack;
  stack.start_seed(dirs.dir + "/membership");
  // A raw silo that records the answers it gets.
  std::mutex mtx;
  std::condition_variable cv;
  std::map<uint64_t, MembershipAnswer> answers;
  asio_transport raw{transport_config("raw")};
  raw.set_handler([&](const peer_info&, Frame&& f) {
    if (!f.has_membership() || !f.membership().is_answer())
      return;
    MembershipAnswer a;
    if (!a.ParseFromString(f.membership().body()))
      a.set_error("test: undecodable answer");
    std::lock_guard guard{mtx};
    answers[f.membership().request_id()] = std::move(a);
    cv.notify_all();
  });
  must(raw.start({"127.0.0.1", 0}));
  auto send = [&](uint64_t id, std::string body, bool is_answer = false) {
    Frame f;
    f.mutable_membership()->set_request_id(id);
    f.mutable_membership()->set_is_answer(is_answer);
    f.mutable_membership()->set_body(std::move(body));
    must(raw.send(stack.seed_address(), f));
  };
  auto await = [&](uint64_t id) {
    std::unique_lock guard{mtx};
    if (!cv.wait_for(guard, 5s, [&] { return answers.count(id) > 0; }))
      throw std::runtime_error("no answer to request " + std::to_string(id));
    return answers[id];
  };
  // Not a protobuf message at all.
  send(1, std::string("\xff\xff\xff\xff\x0f garbage", 14));
  auto a1 = await(1);
  EXPECT_EQ(a1.error_code(), static_cast<uint32_t>(errc::invalid_argument))
      << a1.error();
  EXPECT_NE(a1.error().find("raw"), std::string::npos) << a1.error();
  // A well-formed call without an operation.
  send(2, "");
  EXPECT_EQ(await(2).error_code(),
            static_cast<uint32_t>(errc::invalid_argument));
  // A row with an unknown status.
  MembershipCall bad_row;
  bad_row.mutable_insert()->mutable_entry()->set_silo_id("x");
  bad_row.mutable_insert()->mutable_entry()->set_status(
      static_cast<SiloStatus>(99));
  send(3, bad_row.SerializeAsString());
  auto a3 = await(3);
  EXPECT_EQ(a3.error_code(), static_cast<uint32_t>(errc::invalid_argument))
      << a3.error();
  // A stray answer is ignored, not answered.
  send(4, "", true);
  // The service still serves valid calls.
  MembershipCall ok;
  ok.mutable_read_all();
  send(5, ok.SerializeAsString());
  auto a5 = await(5);
  EXPECT_EQ(a5.error_code(), 0u) << a5.error();
  EXPECT_TRUE(a5.has_table());
  EXPECT_EQ(a5.table().version(), 0u);
  auto stats = stack.service->stats();
  EXPECT_EQ(stats.invalid, 2u);
  EXPECT_EQ(stats.ignored, 1u);
  EXPECT_EQ(stats.calls, 2u);
  {
    std::lock_guard guard{mtx};
    EXPECT_EQ(answers.count(4), 0u);
  }
  raw.stop();
}

} // namespace

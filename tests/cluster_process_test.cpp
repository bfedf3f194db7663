// Three `control_plane_silo` processes on loopback TCP form a cluster through
// the membership table (kept by the seed silo, or by a real etcd) and run
// the control-plane sample's namespaces against a fake cloud API process.
// The first silo creates the partition map and hands partitions, with
// their data, to the others as they join. Workflows, resource grains and
// cells sit on different silos. One silo is killed with SIGKILL half-way and
// restarted on its data directory; another run goes through a lossy
// network; a hung silo (SIGSTOP) is declared dead and stops itself when it
// wakes. Every namespace ends ready, the API's record shows nothing applied
// or created twice, and graceful leaves hand everything to the last silo.

#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "cluster/transport/ports.hpp"
#include "gateway/gateway_client.hpp"
#include "runtime/grain_id.hpp"
#include "samples/control_plane/fake_cloud/client.hpp"
#include "testing/child_process.hpp"
#include "testing/etcd_test_server.hpp"
#include "testing/eventually.hpp"

using namespace std::chrono_literals;
using granary::testing::output_process;
using granary::testing::steady_clock;
using granary::testing::temp_dir;

namespace {

constexpr int silos = 3;
constexpr int namespaces = 24;

// A port for a silo to listen on (see pick_free_port).
uint16_t free_port() {
  auto port = granary::cluster::pick_free_port();
  if (!port)
    throw std::runtime_error{granary::describe(port.error())};
  return *port;
}

// Polls `pred` every 100 ms until it holds or `limit` passed.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit) {
  return granary::testing::eventually(pred, limit, 100ms);
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

class cluster_process_test : public ::testing::Test {
protected:
  void SetUp() override {
    auto err = tmp.create("granary-cluster");
    ASSERT_TRUE(err.empty()) << err;
    dir = tmp.path.string();
    for (int i = 0; i < silos; ++i) {
      silo_ports.push_back(free_port());
      gateway_ports.push_back(free_port());
    }
  }

  // Writes the silos' configs, with `extra` TOML appended to each. The
  // membership table is kept by silo-0 (the seed), or by etcd at
  // `etcd_endpoint` when set.
  void write_configs(const std::string& extra = {},
                     const std::string& etcd_endpoint = {},
                     const std::string& membership_extra = {}) {
    auto seed = "\"silo-0@127.0.0.1:" + std::to_string(silo_ports[0]) + "\"";
    auto provider = etcd_endpoint.empty()
                        ? "provider = \"embedded\"\nseeds = [" + seed + "]\n"
                        : "provider = \"etcd\"\nendpoints = [\"" + etcd_endpoint
                              + "\"]\nprefix = \"/granary-test\"\n";
    for (int i = 0; i < silos; ++i) {
      auto path = dir + "/silo-" + std::to_string(i) + ".toml";
      std::ofstream out{path};
      out << "cluster_id = \"proc\"\n"
          << "silo_id = \"silo-" << i << "\"\n"
          << "data_dir = \"" << dir << "/data-" << i << "\"\n"
          << "partitions = 12\n"
          << "[listen]\n"
          << "silo = \"127.0.0.1:" << silo_ports[i] << "\"\n"
          << "gateway = \"127.0.0.1:" << gateway_ports[i] << "\"\n"
          << "[membership]\n"
          << provider << "probe_interval_ms = 200\n"
          << "missed_probes = 6\n"
          << "vote_expiry_ms = 5000\n"
          << membership_extra << "[limits]\n"
          << "threads = 2\n"
          << "redelivery_timeout_ms = 300\n"
          << "remote_call_timeout_ms = 500\n"
          << extra;
      configs.push_back(path);
    }
  }

  void start_api() {
    ASSERT_TRUE(api.spawn({FAKE_CLOUD_API_BIN, "--port", "0", "--seed", "5",
                           "--latency-ms", "2:8", "--fail-rate", "0.05",
                           "--fail-after-apply-rate", "0.05"}));
    auto line = api.wait_line("listening on", steady_clock::now() + 10s);
    ASSERT_FALSE(line.empty()) << api.log();
    api_port
        = static_cast<uint16_t>(std::stoi(line.substr(line.rfind(':') + 1)));
  }

  void start_silo(int i) {
    nodes[i] = std::make_unique<output_process>();
    ASSERT_TRUE(nodes[i]->spawn(
        {GRANARY_CP_SILO, "--config", configs[i], "--cloud-api",
         "127.0.0.1:" + std::to_string(api_port), "--activity-threads", "8"}));
    // Generous: over the lossy network every lost membership frame costs a
    // call timeout, and CI machines are slow.
    auto ready = nodes[i]->wait_line("ready ", steady_clock::now() + 60s);
    ASSERT_FALSE(ready.empty()) << nodes[i]->log();
  }

  // The status of namespace `i`'s workflow through silo 0's gateway;
  // empty while its owner cannot be reached.
  std::string status_of(int i) {
    granary::cluster::gateway_client gw{
        granary::cluster::endpoint{"127.0.0.1", gateway_ports[0]}, 5s};
    // A transient call: over a lossy network it may need a few tries.
    auto r = gw.describe_workflow("cp.create_namespace",
                                  "ns-" + std::to_string(i));
    for (int attempt = 1; !r && attempt < 20; ++attempt)
      r = gw.describe_workflow("cp.create_namespace",
                               "ns-" + std::to_string(i));
    if (!r)
      return {};
    for (auto s : {"COMPLETED", "FAILED", "RUNNING", "SUSPENDED"})
      if (contains(*r, std::string{"\"status\":\""} + s + "\""))
        return s;
    return "NEW";
  }

  // Creates the namespaces through silo 0's gateway, SIGKILLs silo 1
  // half-way if `kill_one`, and checks the outcome and the API's record.
  void run_namespaces(bool kill_one);

  // The status of `silo` as silo `viewer` sees it ("" when unknown).
  std::string status_seen_by(int viewer, const std::string& silo) {
    granary::cluster::gateway_client gw{
        granary::cluster::endpoint{"127.0.0.1", gateway_ports[viewer]}, 2s};
    auto r = gw.cluster_status();
    if (!r)
      return {};
    auto at = r->find("\"silo_id\":\"" + silo + "\",\"status\":\"");
    if (at == std::string::npos)
      return {};
    at = r->find("\"status\":\"", at) + 10;
    return r->substr(at, r->find('"', at) - at);
  }

  int completed() {
    int n = 0;
    for (int i = 0; i < namespaces; ++i)
      n += status_of(i) == "COMPLETED" ? 1 : 0;
    return n;
  }

  temp_dir tmp;
  std::string dir;
  std::vector<uint16_t> silo_ports;
  std::vector<uint16_t> gateway_ports;
  std::vector<std::string> configs;
  output_process api;
  uint16_t api_port = 0;
  std::unique_ptr<output_process> nodes[silos];
};

} // namespace

TEST_F(cluster_process_test,
       a_killed_silo_comes_back_and_every_namespace_is_ready) {
  write_configs();
  run_namespaces(true);
}

TEST_F(cluster_process_test,
       a_lossy_reordering_network_still_applies_everything_once) {
  // Every silo's transport drops, duplicates, delays and reorders frames.
  // A lost membership frame costs one call timeout: keep it short, as a
  // deployment on a lossy network would.
  write_configs("[faults]\nseed = 9\ndrop_rate = 0.1\nduplicate_rate = 0.1\n"
                "delay_rate = 0.1\nreorder_rate = 0.1\nmax_delay_ms = 10\n",
                {}, "seed_call_timeout_ms = 500\n");
  run_namespaces(false);
}

TEST_F(cluster_process_test, an_etcd_backed_cluster_completes_every_namespace) {
  auto etcd = granary::testing::etcd_test_server::start();
  ASSERT_TRUE(etcd) << granary::describe(etcd.error());
  write_configs({}, (*etcd)->endpoint());
  run_namespaces(true);
}

TEST_F(cluster_process_test, an_etcd_member_down_does_not_stop_the_cluster) {
  auto etcd = granary::testing::etcd_test_server::start();
  ASSERT_TRUE(etcd) << granary::describe(etcd.error());
  // The first endpoint is an etcd member that is not running.
  auto down = "127.0.0.1:" + std::to_string(free_port());
  write_configs({}, down + "\", \"" + (*etcd)->endpoint());
  start_api();
  for (int i = 0; i < silos; ++i)
    start_silo(i);
  ASSERT_TRUE(eventually(
      [&] {
        return status_seen_by(0, "silo-1") == "active"
               && status_seen_by(0, "silo-2") == "active";
      },
      20s));
  granary::cluster::gateway_client gw{
      granary::cluster::endpoint{"127.0.0.1", gateway_ports[2]}, 10s};
  for (int c = 0; c < 6; ++c) {
    auto r = gw.call_grain("cp.cell", "cell-" + std::to_string(c),
                           "granary.cp.Reserve",
                           "{\"tenant\":\"t\",\"capacity\":4}");
    EXPECT_TRUE(r) << granary::describe(r.error());
  }
}

TEST_F(cluster_process_test, a_hung_silo_is_declared_dead_and_stops_itself) {
  write_configs();
  start_api();
  for (int i = 0; i < silos; ++i)
    start_silo(i);
  ASSERT_TRUE(
      eventually([&] { return status_seen_by(0, "silo-2") == "active"; }, 20s));
  // A hung process answers no pings: the others vote it dead.
  ASSERT_EQ(::kill(nodes[2]->pid(), SIGSTOP), 0);
  auto t0 = steady_clock::now();
  ASSERT_TRUE(
      eventually([&] { return status_seen_by(0, "silo-2") == "dead"; }, 20s))
      << nodes[0]->log();
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
      steady_clock::now() - t0);
  std::printf("detection time of a hung silo: %lld ms (probe 200 ms, 6 "
              "missed probes, 2 votes)\n",
              static_cast<long long>(took.count()));
  EXPECT_TRUE(
      eventually([&] { return status_seen_by(1, "silo-2") == "dead"; }, 5s));
  // When it wakes up, it reads that it is dead and stops itself (exit 3).
  ASSERT_EQ(::kill(nodes[2]->pid(), SIGCONT), 0);
  auto status = nodes[2]->wait_exit(20s);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 3) << status << "\n"
                                                             << nodes[2]->log();
  EXPECT_TRUE(contains(nodes[2]->log(), "was declared dead"))
      << nodes[2]->log();
  // Restarted on its data, it joins again and serves its partitions.
  start_silo(2);
  ASSERT_TRUE(
      eventually([&] { return status_seen_by(0, "silo-2") == "active"; }, 20s));
  granary::cluster::gateway_client gw{
      granary::cluster::endpoint{"127.0.0.1", gateway_ports[0]}, 10s};
  for (int c = 0; c < 6; ++c) {
    auto r = gw.call_grain("cp.cell", "cell-" + std::to_string(c),
                           "granary.cp.Reserve",
                           "{\"tenant\":\"t\",\"capacity\":4}");
    EXPECT_TRUE(r) << granary::describe(r.error());
  }
}

TEST_F(cluster_process_test, a_silo_restarted_right_after_a_kill_stays_up) {
  // One vote declares a silo dead: any vote against the killed run that
  // lands after the new run wrote its row would do.
  write_configs({}, {}, "votes_needed = 1\n");
  start_api();
  for (int i = 0; i < silos; ++i)
    start_silo(i);
  ASSERT_TRUE(eventually(
      [&] {
        return status_seen_by(0, "silo-1") == "active"
               && status_seen_by(2, "silo-1") == "active";
      },
      20s));
  // Back within the detection time (6 missed probes of 200 ms), while the
  // others still count the missed probes of the killed run and vote on it.
  for (auto delay : {300ms, 500ms, 700ms}) {
    nodes[1]->kill_now();
    std::this_thread::sleep_for(delay);
    start_silo(1);
    // The new run outlives the detection of the old one's death.
    auto status = nodes[1]->wait_exit(3s);
    ASSERT_EQ(status, -1) << "restarted " << delay.count()
                          << " ms after the kill, it exited: "
                          << nodes[1]->log();
    ASSERT_TRUE(eventually(
        [&] {
          return status_seen_by(0, "silo-1") == "active"
                 && status_seen_by(2, "silo-1") == "active";
        },
        10s))
        << nodes[0]->log();
  }
  granary::cluster::gateway_client gw{
      granary::cluster::endpoint{"127.0.0.1", gateway_ports[1]}, 10s};
  for (int c = 0; c < 6; ++c) {
    auto r = gw.call_grain("cp.cell", "cell-" + std::to_string(c),
                           "granary.cp.Reserve",
                           "{\"tenant\":\"t\",\"capacity\":4}");
    EXPECT_TRUE(r) << granary::describe(r.error());
  }
}

TEST_F(cluster_process_test, dead_letters_are_handled_through_any_gateway) {
  write_configs();
  start_api();
  for (int i = 0; i < silos; ++i)
    start_silo(i);
  // Balanced: every silo owns its 4 of the 12 partitions, as silo 0 sees.
  auto owns_four = [&](const std::string& silo) {
    granary::cluster::gateway_client c{
        granary::cluster::endpoint{"127.0.0.1", gateway_ports[0]}, 2s};
    auto r = c.cluster_status();
    if (!r)
      return false;
    auto at = r->find("\"silo_id\":\"" + silo + "\",\"status\":\"active\"");
    return at != std::string::npos
           && r->find("\"partitions\":4,", at)
                  == r->find("\"partitions\":", at);
  };
  ASSERT_TRUE(eventually(
      [&] {
        return owns_four("silo-0") && owns_four("silo-1")
               && owns_four("silo-2");
      },
      30s));
  // One grain per partition. A message its grain has no handler for
  // becomes a dead letter where the grain lives when it comes from another
  // silo (a local client is told at once instead, and nothing is stored).
  std::map<uint32_t, std::string> key_of;
  for (int i = 0; key_of.size() < 12 && i < 10'000; ++i) {
    auto key = "dl-" + std::to_string(i);
    key_of.emplace(
        granary::partition_of(granary::grain_id{"cp.dns_record", key}, 12),
        key);
  }
  ASSERT_EQ(key_of.size(), 12u);
  std::vector<std::unique_ptr<granary::cluster::gateway_client>> gw;
  for (int i = 0; i < silos; ++i)
    gw.push_back(std::make_unique<granary::cluster::gateway_client>(
        granary::cluster::endpoint{"127.0.0.1", gateway_ports[i]}, 10s));
  std::set<std::string> dead; // Keys whose message became a dead letter.
  for (auto& [p, key] : key_of) {
    auto r = gw[0]->send_grain("cp.dns_record", key, "granary.cp.Reserve",
                               "{\"tenant\":\"t\",\"capacity\":1}", "m-" + key);
    if (r)
      dead.insert(key);
  }
  // Silo 0 owns some partitions, the others the rest.
  ASSERT_GE(dead.size(), 4u);
  ASSERT_LT(dead.size(), 12u);
  auto listed_keys = [&](int via) {
    std::set<std::string> keys;
    auto r = gw[via]->dead_letters(100);
    if (!r) {
      ADD_FAILURE() << granary::describe(r.error());
      return keys;
    }
    EXPECT_TRUE(contains(*r, "\"unreachable\":[]")) << *r;
    for (size_t at = r->find("\"key\":\""); at != std::string::npos;
         at = r->find("\"key\":\"", at + 1)) {
      auto begin = at + 7;
      keys.insert(r->substr(begin, r->find('"', begin) - begin));
    }
    return keys;
  };
  // Every gateway lists every silo's dead letters.
  for (int via = 0; via < silos; ++via)
    EXPECT_EQ(listed_keys(via), dead) << "through silo-" << via;
  // Each is dropped through a gateway chosen round-robin, mostly one of a
  // silo that does not hold it: the request goes to the owner's gateway.
  int n = 0;
  for (auto& key : dead) {
    auto r
        = gw[n++ % silos]->drop_dead_letter("cp.dns_record", key, "m-" + key);
    EXPECT_TRUE(r && contains(*r, "\"dropped\":true"))
        << key << ": " << (r ? *r : granary::describe(r.error()));
  }
  // An unknown one is not found, wherever its grain lives.
  for (auto& [p, key] : key_of) {
    auto r = gw[1]->requeue_dead_letter("cp.dns_record", key, "no-such-id");
    EXPECT_FALSE(r);
    if (!r) {
      EXPECT_EQ(granary::code_of(r.error()), granary::errc::not_found)
          << granary::describe(r.error());
    }
  }
  for (int via = 0; via < silos; ++via)
    EXPECT_TRUE(listed_keys(via).empty()) << "through silo-" << via;
  // With one silo down, the list says whose letters are missing.
  nodes[2]->kill_now();
  auto r = gw[0]->dead_letters(100);
  ASSERT_TRUE(r) << granary::describe(r.error());
  EXPECT_TRUE(contains(*r, "\"unreachable\":[\"127.0.0.1:"
                               + std::to_string(gateway_ports[2]) + "\"]"))
      << *r;
  // So does the workflow list, with that silo's partitions, instead of
  // failing as a whole.
  auto w = gw[0]->list_workflows("cp.create_namespace", "", 100);
  ASSERT_TRUE(w) << granary::describe(w.error());
  EXPECT_TRUE(contains(*w, "\"unreachable\":[{\"gateway\":\"127.0.0.1:"
                               + std::to_string(gateway_ports[2])
                               + "\",\"partitions\":["))
      << *w;
}

void cluster_process_test::run_namespaces(bool kill_one) {
  start_api();
  for (int i = 0; i < silos; ++i)
    start_silo(i);
  granary::cluster::gateway_client gw{
      granary::cluster::endpoint{"127.0.0.1", gateway_ports[0]}, 10s};
  for (int i = 0; i < namespaces; ++i) {
    auto name = "ns-" + std::to_string(i);
    auto input = "{\"name\":\"" + name + "\",\"cell\":\"cell-"
                 + std::to_string(i % 3) + "\",\"tier\":\"standard\"}";
    // A start is a transient call that a lossy network may lose; starts
    // are idempotent by id, so the client retries.
    auto r = gw.start_workflow("cp.create_namespace", name,
                               "granary.cp.CreateNamespace", input);
    auto give_up = steady_clock::now() + 60s;
    while (!r && steady_clock::now() < give_up)
      r = gw.start_workflow("cp.create_namespace", name,
                            "granary.cp.CreateNamespace", input);
    ASSERT_TRUE(r) << granary::describe(r.error());
  }
  // Half-way, silo 1 dies without warning and comes back on its data.
  auto deadline = steady_clock::now() + 60s;
  // The kill comes as soon as the first namespace is ready, so that most
  // are still in flight however fast the machine is.
  while (completed() < 1 && steady_clock::now() < deadline)
    std::this_thread::sleep_for(50ms);
  if (kill_one) {
    auto before_kill = completed();
    EXPECT_LT(before_kill, namespaces) << "the kill came too late to matter";
    nodes[1]->kill_now();
    std::this_thread::sleep_for(500ms);
    start_silo(1);
  }
  deadline = steady_clock::now() + 90s;
  while (completed() < namespaces && steady_clock::now() < deadline)
    std::this_thread::sleep_for(100ms);
  if (completed() < namespaces) {
    for (int i = 0; i < namespaces; ++i) {
      if (status_of(i) == "COMPLETED")
        continue;
      auto name = "ns-" + std::to_string(i);
      auto d = gw.describe_workflow("cp.create_namespace", name);
      auto q = gw.query_workflow("cp.create_namespace", name, "stage");
      auto h = gw.workflow_history("cp.create_namespace", name);
      std::string res;
      for (auto kind : {"cp.db_shard", "cp.certificate", "cp.dns_record"}) {
        auto r = gw.call_grain(kind, name, "granary.wire.GetResource", "{}");
        res += std::string{kind} + ": "
               + (r ? *r : granary::describe(r.error())) + "\n";
      }
      auto cell = "cell-" + std::to_string(i % 3);
      auto c = gw.call_grain("cp.cell", cell, "granary.cp.GetCell", "{}");
      res += cell + ": " + (c ? *c : granary::describe(c.error())) + "\n";
      ADD_FAILURE() << res << name << ": "
                    << (d ? *d : granary::describe(d.error())) << " stage "
                    << (q ? *q : granary::describe(q.error())) << "\n"
                    << (h ? *h : granary::describe(h.error()));
    }
  }
  ASSERT_EQ(completed(), namespaces) << nodes[0]->log() << "---- silo-1\n"
                                     << nodes[1]->log() << "---- silo-2\n"
                                     << nodes[2]->log();
  // The provider's record: every mutation applied once, nothing created
  // twice, exactly the resources of the ready namespaces live.
  fake_cloud::client probe{"127.0.0.1", api_port, 5s};
  auto audit = probe.audit();
  ASSERT_TRUE(audit) << granary::describe(audit.error());
  EXPECT_TRUE(audit->keys_applied_more_than_once.empty());
  EXPECT_TRUE(audit->double_creates.empty());
  std::map<std::string, int> live;
  for (auto& r : audit->resources)
    if (r.live)
      ++live[r.kind];
  for (auto kind :
       {"db_shard", "certificate", "dns_record", "ingress_route", "quota"})
    EXPECT_EQ(live[kind], namespaces) << kind;
  // Any gateway lists every workflow of the cluster, page by page, and
  // shows any workflow's history, wherever its partition lives.
  for (int via = 0; via < silos; ++via) {
    granary::cluster::gateway_client g{
        granary::cluster::endpoint{"127.0.0.1", gateway_ports[via]}, 10s};
    std::set<std::string> listed;
    std::string cursor;
    for (int page = 0; page < 50; ++page) {
      auto r = g.list_workflows("cp.create_namespace", "COMPLETED", 5, cursor);
      ASSERT_TRUE(r) << granary::describe(r.error());
      for (size_t at = r->find("\"id\":\""); at != std::string::npos;
           at = r->find("\"id\":\"", at + 1)) {
        auto begin = at + 6;
        listed.insert(r->substr(begin, r->find('"', begin) - begin));
      }
      auto c = r->find("\"next_cursor\":\"") + 15;
      cursor = r->substr(c, r->find('"', c) - c);
      if (cursor.empty())
        break;
    }
    EXPECT_EQ(listed.size(), static_cast<size_t>(namespaces))
        << "listed through silo-" << via;
    for (int i = 0; i < namespaces; i += 5) {
      auto h = g.workflow_history("cp.create_namespace",
                                  "ns-" + std::to_string(i));
      EXPECT_TRUE(h && contains(*h, "COMPLETED"))
          << (h ? *h : granary::describe(h.error()));
    }
  }
  // Graceful stops, one after the other: each hands its partitions (with
  // their data) to the silos still running. The seed, which keeps the
  // membership table, goes last.
  for (int i = silos - 1; i >= 0; --i) {
    auto status = nodes[i]->stop(SIGTERM, 30s);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "silo-" << i << " " << nodes[i]->log();
    if (i == 1) {
      // Every workflow now lives on the seed, moved there with its data.
      EXPECT_EQ(completed(), namespaces)
          << nodes[0]->log() << nodes[1]->log() << nodes[2]->log();
    }
  }
}

// The silo config file: a full example parses, and every kind of mistake
// gets an error that names the key and the problem.

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "host/config.hpp"
#include "runtime/error.hpp"

using namespace granary;
using namespace granary::cluster;
using namespace granary::host;

namespace {

constexpr const char* base = R"(
cluster_id = "dev"
silo_id = "silo-1"
data_dir = "/tmp/granary-silo-1"

[listen]
silo = "127.0.0.1:7100"
gateway = "0.0.0.0:8080"
)";

// Parses `text` and returns its error text (empty when it parsed).
std::string error_of(const std::string& text) {
  auto res = parse_config(text, "silo.toml");
  if (res)
    return {};
  EXPECT_EQ(code_of(res.error()), errc::invalid_config);
  return describe(res.error());
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

} // namespace

TEST(silo_config_file, parses_a_full_config) {
  auto res = parse_config("partitions = 16\n" + std::string{base} + R"(
[membership]
provider = "embedded"
seeds = ["silo-0@[::1]:7101"]
probe_interval_ms = 250
missed_probes = 4
rebalance = false

[limits]
threads = 4
max_attempts = 7
retry_initial_ms = 50
idle_age_ms = 60000
scheduler_policy = "sharing"

[gateway]
max_pending = 64
max_body_bytes = 65536
idle_timeout_ms = 5000
)");
  ASSERT_TRUE(res) << describe(res.error());
  EXPECT_EQ(res->cluster_id, "dev");
  EXPECT_EQ(res->silo_id, "silo-1");
  EXPECT_EQ(res->data_dir, "/tmp/granary-silo-1");
  EXPECT_EQ(res->silo_listen.host, "127.0.0.1");
  EXPECT_EQ(res->silo_listen.port, 7100);
  EXPECT_EQ(res->gateway_listen.host, "0.0.0.0");
  EXPECT_EQ(res->gateway_listen.port, 8080);
  EXPECT_EQ(res->limits.partitions, 16u);
  EXPECT_EQ(res->limits.threads, 4u);
  EXPECT_EQ(res->limits.max_attempts, 7u);
  EXPECT_EQ(res->limits.retry_initial, std::chrono::milliseconds{50});
  EXPECT_EQ(res->limits.idle_age, std::chrono::milliseconds{60'000});
  ASSERT_EQ(res->membership.seeds.size(), 1u);
  EXPECT_EQ(res->membership.seeds[0].silo_id, "silo-0");
  EXPECT_EQ(res->membership.seeds[0].address.host, "::1");
  EXPECT_EQ(res->membership.seeds[0].address.port, 7101);
  EXPECT_EQ(res->membership.detector.probe_interval,
            std::chrono::milliseconds{250});
  EXPECT_EQ(res->membership.detector.missed_probes, 4u);
  EXPECT_FALSE(res->membership.detector.rebalance);
  EXPECT_TRUE(res->membership.clustered());
  EXPECT_EQ(res->gateway.max_pending, 64u);
  EXPECT_EQ(res->gateway.max_body_bytes, 65'536u);
  EXPECT_EQ(res->gateway.idle_timeout, std::chrono::milliseconds{5'000});
}

TEST(silo_config_file, parses_an_etcd_membership) {
  auto res = parse_config(std::string{base} + R"(
[membership]
provider = "etcd"
endpoints = ["127.0.0.1:2379"]
prefix = "/granary/dev"
)");
  ASSERT_TRUE(res) << describe(res.error());
  EXPECT_EQ(res->membership.provider, membership_provider::etcd);
  ASSERT_EQ(res->membership.endpoints.size(), 1u);
  EXPECT_EQ(res->membership.endpoints[0].port, 2379);
  EXPECT_EQ(res->membership.prefix, "/granary/dev");
}

TEST(silo_config_file, defaults_apply_to_optional_keys) {
  auto res = parse_config(base);
  ASSERT_TRUE(res) << describe(res.error());
  EXPECT_EQ(res->limits.partitions, 64u);
  EXPECT_EQ(res->membership.provider, membership_provider::embedded);
  EXPECT_TRUE(res->membership.seeds.empty());
  EXPECT_FALSE(res->membership.clustered());
}

TEST(silo_config_file, explains_the_membership_rules) {
  auto err = error_of(std::string{base}
                      + "[membership]\nseeds = [\"a@h:1\", \"b@h:2\"]\n");
  EXPECT_TRUE(contains(err, "key 'membership.seeds': expected an array of "
                            "one \"id@host:port\""))
      << err;
  err = error_of(std::string{base}
                 + "[membership]\nsilos = [\"a@h:1\", \"b@h:2\"]\n");
  EXPECT_TRUE(contains(err, "key 'membership.silos': was replaced by 'seeds'"))
      << err;
  err = error_of(std::string{base}
                 + "[membership]\nprobe_interval_ms = 500\n"
                   "vote_expiry_ms = 400\n");
  EXPECT_TRUE(contains(err, "key 'membership.vote_expiry_ms': must exceed "
                            "probe_interval_ms (500)"))
      << err;
  err = error_of(std::string{base} + "[membership]\nrebalance = 1\n");
  EXPECT_TRUE(contains(err, "key 'membership.rebalance': expected true or "
                            "false"))
      << err;
  err = error_of(std::string{base}
                 + "[membership]\nseeds = [\"silo-1@127.0.0.1:7999\"]\n");
  EXPECT_TRUE(contains(err, "names this silo ('silo-1') at 127.0.0.1:7999 but "
                            "listen.silo is 127.0.0.1:7100"))
      << err;
  err = error_of(std::string{base}
                 + "[membership]\nprovider = \"etcd\"\nendpoints = "
                   "[\"127.0.0.1:2379\"]\nseed_call_timeout_ms = 500\n");
  EXPECT_TRUE(contains(err, "key 'membership.seed_call_timeout_ms': only "
                            "applies to provider \"embedded\""))
      << err;
}

TEST(silo_config_file, the_seed_call_timeout_reaches_the_seed_client) {
  auto res
      = parse_config(std::string{base}
                     + "[membership]\nseeds = [\"silo-0@127.0.0.1:7000\"]\n"
                       "seed_call_timeout_ms = 500\n");
  ASSERT_TRUE(res) << describe(res.error());
  EXPECT_EQ(res->membership.seed_client.call_timeout.count(), 500);
  EXPECT_EQ(parse_config(base)->membership.seed_client.call_timeout,
            remote_membership_config{}.call_timeout);
}

TEST(silo_config_file, names_a_missing_key) {
  auto err = error_of(R"(
cluster_id = "dev"
data_dir = "/tmp/x"
[listen]
silo = "127.0.0.1:7100"
gateway = "127.0.0.1:8080"
)");
  EXPECT_TRUE(contains(err, "silo.toml: key 'silo_id': missing")) << err;
  err = error_of(R"(
cluster_id = "dev"
silo_id = "a"
data_dir = "/tmp/x"
[listen]
silo = "127.0.0.1:7100"
)");
  EXPECT_TRUE(contains(err, "key 'listen.gateway': missing")) << err;
  err = error_of(R"(
cluster_id = "dev"
silo_id = "a"
data_dir = "/tmp/x"
)");
  EXPECT_TRUE(contains(err, "key 'listen': missing")) << err;
}

TEST(silo_config_file, names_a_wrong_type_with_its_line) {
  auto err = error_of("partitions = \"many\"\n" + std::string{base});
  EXPECT_TRUE(contains(err, "silo.toml:1: key 'partitions': expected an "
                            "integer, got a string"))
      << err;
  err = error_of(std::string{base} + "[limits]\nthreads = 2.5\n");
  EXPECT_TRUE(contains(err, "key 'limits.threads': expected an integer, got a "
                            "float"))
      << err;
  err = error_of(std::string{base}
                 + "[membership]\nseeds = \"127.0.0.1:7100\"\n");
  EXPECT_TRUE(contains(err, "key 'membership.seeds': expected an array"))
      << err;
  err = error_of(std::string{base} + "[membership]\nseeds = [7100]\n");
  EXPECT_TRUE(contains(err, "key 'membership.seeds[0]': expected "
                            "\"id@host:port\""))
      << err;
}

TEST(silo_config_file, names_a_bad_address) {
  auto err = error_of(R"(
cluster_id = "dev"
silo_id = "a"
data_dir = "/tmp/x"
[listen]
silo = "127.0.0.1"
gateway = "127.0.0.1:8080"
)");
  EXPECT_TRUE(contains(err, "key 'listen.silo': '127.0.0.1' is not host:port "
                            "(no ':port')"))
      << err;
  err = error_of(std::string{base}
                 + "[membership]\nseeds = [\"s@127.0.0.1:99999\"]\n");
  EXPECT_TRUE(contains(err, "membership.seeds[0]")) << err;
  EXPECT_TRUE(contains(err, "port must be a number")) << err;
  err = error_of(std::string{base} + "[membership]\nseeds = [\"s@h:0\"]\n");
  EXPECT_TRUE(contains(err, "port 0 is not allowed here")) << err;
  EXPECT_FALSE(parse_endpoint("::1:80"));
  EXPECT_FALSE(parse_endpoint(":80"));
  EXPECT_FALSE(parse_endpoint("a b:80"));
  EXPECT_TRUE(parse_endpoint("h:0", true));
}

TEST(silo_config_file, names_an_unknown_provider) {
  auto err = error_of(std::string{base}
                      + "[membership]\nprovider = \"zookeeper\"\n");
  EXPECT_TRUE(contains(err, "key 'membership.provider': unknown provider "
                            "'zookeeper' (expected \"embedded\" or \"etcd\")"))
      << err;
  err = error_of(std::string{base} + "[membership]\nprovider = \"etcd\"\n");
  EXPECT_TRUE(contains(err, "key 'membership.endpoints': missing")) << err;
  err = error_of(std::string{base}
                 + "[membership]\nendpoints = [\"127.0.0.1:2379\"]\n");
  EXPECT_TRUE(contains(err, "key 'membership.endpoints': only applies to "
                            "provider \"etcd\""))
      << err;
}

TEST(silo_config_file, rejects_unknown_keys_with_a_suggestion) {
  auto err = error_of("partitons = 8\n" + std::string{base});
  EXPECT_TRUE(contains(err, "key 'partitons': unknown key; did you mean "
                            "'partitions'?"))
      << err;
  err = error_of(std::string{base} + "[limits]\nmax_atempts = 3\n");
  EXPECT_TRUE(contains(err, "key 'limits.max_atempts': unknown key; did you "
                            "mean 'limits.max_attempts'?"))
      << err;
  err = error_of(std::string{base} + "[listen]\n");
  EXPECT_TRUE(contains(err, "not valid TOML")) << err;
  err = error_of(std::string{base} + "[zzz]\nx = 1\n");
  EXPECT_TRUE(contains(err, "key 'zzz': unknown key; known keys here:")) << err;
}

TEST(silo_config_file, checks_ids_values_and_silo_limits) {
  auto err = error_of(R"(
cluster_id = "dev cluster"
silo_id = "a"
data_dir = "/tmp/x"
[listen]
silo = "127.0.0.1:1"
gateway = "127.0.0.1:2"
)");
  EXPECT_TRUE(contains(err, "key 'cluster_id': 'dev cluster' must be 1-64 "
                            "characters"))
      << err;
  err = error_of("partitions = 0\n" + std::string{base});
  EXPECT_TRUE(contains(err, "key 'partitions': 0 is out of range [1, 65535]"))
      << err;
  err = error_of(std::string{base}
                 + "[limits]\nscheduler_policy = \"random\"\n");
  EXPECT_TRUE(contains(err, "[limits]")) << err;
  EXPECT_TRUE(contains(err, "scheduler")) << err;
}

TEST(silo_config_file, reports_bad_toml_and_missing_files) {
  auto err = error_of("cluster_id = \n");
  EXPECT_TRUE(contains(err, "silo.toml:1: not valid TOML")) << err;
  auto missing = load_config("/nonexistent/silo.toml");
  ASSERT_FALSE(missing);
  EXPECT_TRUE(contains(describe(missing.error()), "/nonexistent/silo.toml"));
  auto path = std::filesystem::temp_directory_path()
              / ("granary-config-" + std::to_string(::getpid()) + ".toml");
  {
    std::ofstream out{path};
    out << base;
  }
  auto loaded = load_config(path.string());
  std::filesystem::remove(path);
  ASSERT_TRUE(loaded) << describe(loaded.error());
  EXPECT_EQ(loaded->silo_id, "silo-1");
}

TEST(silo_config_file, the_deploy_example_documents_every_key) {
  auto shipped = load_config(GRANARY_SILO_TOML);
  ASSERT_TRUE(shipped) << describe(shipped.error());
  // Keys set or shown commented out ("# key = default"), by table.
  std::ifstream in{GRANARY_SILO_TOML};
  std::set<std::string> documented;
  std::string table;
  std::regex header{R"(^\s*#?\s*\[([a-z_]+)\]\s*$)"};
  std::regex key{R"(^\s*#?\s*([a-z_]+)\s*=)"};
  std::string line;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, header)) {
      table = m[1];
      documented.insert(table);
    } else if (std::regex_search(line, m, key)) {
      documented.insert(table.empty() ? std::string{m[1]}
                                      : table + "." + std::string{m[1]});
    }
  }
  auto keys = config_keys();
  EXPECT_GT(keys.size(), 40u);
  EXPECT_TRUE(std::count(keys.begin(), keys.end(), "limits.threads"));
  EXPECT_TRUE(std::count(keys.begin(), keys.end(), "membership.endpoints"));
  EXPECT_FALSE(std::count(keys.begin(), keys.end(), "membership.silos"));
  for (auto& k : keys)
    EXPECT_TRUE(documented.count(k) > 0)
        << "deploy/silo.toml does not document '" << k << "'";
}

TEST(silo_config_file, the_deploy_example_shows_the_defaults) {
  // Uncommented, the "# key = value" lines must parse and give the
  // defaults (etcd's keys aside: they exclude the embedded provider's).
  std::ifstream in{GRANARY_SILO_TOML};
  std::regex shown{R"(^# (\[faults\]|[a-z_]+ = .*)$)"};
  std::string text;
  std::string line;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, shown) && !line.starts_with("# endpoints")
        && !line.starts_with("# prefix"))
      line = m[1];
    text += line + "\n";
  }
  auto all = parse_config(text, "silo.toml (uncommented)");
  ASSERT_TRUE(all) << describe(all.error());
  silo_config limits;
  auto& l = all->limits;
  EXPECT_EQ(l.scheduler_policy, limits.scheduler_policy);
  EXPECT_EQ(l.max_throughput, limits.max_throughput);
  EXPECT_EQ(l.idle_age, limits.idle_age);
  EXPECT_EQ(l.max_queued_per_partition, limits.max_queued_per_partition);
  EXPECT_EQ(l.max_inbox_per_grain, limits.max_inbox_per_grain);
  EXPECT_EQ(l.max_outbox_per_grain, limits.max_outbox_per_grain);
  EXPECT_EQ(l.max_uncommitted_per_partition,
            limits.max_uncommitted_per_partition);
  EXPECT_EQ(l.max_group_ops, limits.max_group_ops);
  EXPECT_EQ(l.redelivery_timeout, limits.redelivery_timeout);
  EXPECT_EQ(l.remote_call_timeout, limits.remote_call_timeout);
  EXPECT_EQ(l.timer_poll, limits.timer_poll);
  EXPECT_EQ(l.dedup_retention, limits.dedup_retention);
  EXPECT_EQ(l.dedup_sweep_interval, limits.dedup_sweep_interval);
  // The keys that are set show their defaults too.
  EXPECT_EQ(l.partitions, limits.partitions);
  EXPECT_EQ(l.threads, limits.threads);
  EXPECT_EQ(l.max_attempts, limits.max_attempts);
  EXPECT_EQ(l.retry_initial, limits.retry_initial);
  EXPECT_EQ(l.retry_max, limits.retry_max);
  EXPECT_EQ(l.max_payload_bytes, limits.max_payload_bytes);
  EXPECT_EQ(l.min_free_bytes, limits.min_free_bytes);
  // One set of defaults: the file's are the components' own.
  cluster::agent_config detector;
  auto& d = all->membership.detector;
  EXPECT_EQ(d.probe_interval, detector.probe_interval);
  EXPECT_EQ(d.missed_probes, detector.missed_probes);
  EXPECT_EQ(d.votes_needed, detector.votes_needed);
  EXPECT_EQ(d.vote_expiry, detector.vote_expiry);
  EXPECT_EQ(d.i_am_alive_interval, detector.i_am_alive_interval);
  EXPECT_EQ(d.join_timeout, detector.join_timeout);
  EXPECT_EQ(all->membership.leave_timeout,
            silo_file_config{}.membership.leave_timeout);
  EXPECT_EQ(d.rebalance, detector.rebalance);
  cluster::gateway_config gateway;
  auto& g = all->gateway;
  EXPECT_EQ(g.threads, gateway.threads);
  EXPECT_EQ(g.max_pending, gateway.max_pending);
  EXPECT_EQ(g.max_connections, gateway.max_connections);
  EXPECT_EQ(g.max_header_bytes, gateway.max_header_bytes);
  EXPECT_EQ(g.max_body_bytes, gateway.max_body_bytes);
  EXPECT_EQ(g.idle_timeout, gateway.idle_timeout);
  EXPECT_EQ(g.header_timeout, gateway.header_timeout);
  EXPECT_EQ(g.call_timeout, gateway.call_timeout);
  EXPECT_EQ(g.max_wait, gateway.max_wait);
  EXPECT_TRUE(all->faults_enabled);
  cluster::fault_config faults;
  EXPECT_EQ(all->faults.seed, faults.seed);
  EXPECT_EQ(all->faults.drop_rate, faults.drop_rate);
  EXPECT_EQ(all->faults.max_delay, faults.max_delay);
}

#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "cluster/agent/cluster_agent.hpp"
#include "cluster/membership/remote_membership.hpp"
#include "cluster/transport/faulty_transport.hpp"
#include "cluster/transport/transport.hpp"
#include "gateway/gateway.hpp"
#include "runtime/silo.hpp"

namespace granary::host {

using cluster::endpoint;
using cluster::parse_endpoint;
using cluster::peer_address;

/// Where the membership table lives.
enum class membership_provider {
  /// In the silos themselves: one silo, or local silos with static seeds.
  embedded,
  /// An etcd cluster reached through its v3 JSON gateway.
  etcd,
};

/// Returns "embedded" or "etcd".
const char* to_string(membership_provider p);

/// The `[membership]` table of a silo's config file.
struct membership_file_config {
  membership_provider provider = membership_provider::embedded;
  /// `embedded`: the seed silo that keeps the membership table, as
  /// "id@host:port" (exactly one). Empty: a single silo on its own.
  std::vector<peer_address> seeds;
  /// `etcd`: client addresses of the etcd members.
  std::vector<endpoint> endpoints;
  /// `etcd`: key prefix of this cluster's rows.
  std::string prefix = "/granary";
  /// Failure detection and membership timing: `probe_interval_ms`,
  /// `missed_probes`, `votes_needed`, `vote_expiry_ms`,
  /// `i_am_alive_interval_ms`, `join_timeout_ms` and `rebalance` set the
  /// fields of the same names; the host fills in the rest (`self`,
  /// `gateway_address`, `partitions`, `handoff_dir`). The defaults are the
  /// agent's own.
  cluster::agent_config detector;
  /// `leave_timeout_ms`: how long a graceful leave may hand off partitions.
  std::chrono::milliseconds leave_timeout{60'000};
  /// `seed_call_timeout_ms` (`embedded`, silos other than the seed): how
  /// long one call to the seed may wait for its answer. The defaults are
  /// the remote membership client's own.
  cluster::remote_membership_config seed_client;

  /// True when the silo is part of a cluster (seeds or etcd).
  bool clustered() const {
    return provider == membership_provider::etcd || !seeds.empty();
  }
};

/// A silo's config file (TOML), e.g.:
///
///     cluster_id = "dev"
///     silo_id = "silo-1"
///     data_dir = "/var/lib/granary"
///     partitions = 64
///     [listen]
///     silo = "127.0.0.1:7100"
///     gateway = "127.0.0.1:8080"
///     [membership]
///     provider = "embedded"
///     seeds = ["silo-1@127.0.0.1:7100"]
///     [limits]
///     max_attempts = 5
///
/// `[limits]` sets fields of `granary::silo_config` (durations as `_ms`).
struct silo_file_config {
  std::string cluster_id;
  std::string silo_id;
  /// `listen.silo`: silo-to-silo transport address (port 0: any free).
  endpoint silo_listen;
  /// `listen.gateway`: HTTP/JSON gateway address (port 0: any free).
  endpoint gateway_listen;
  std::string data_dir;
  membership_file_config membership;
  /// `[gateway]`: bounds of the HTTP/JSON gateway. `listen`, `cluster_id`,
  /// `silo_id` and the cluster callbacks are filled in by the host.
  cluster::gateway_config gateway;
  /// `[faults]`, for testing only: rates (0..1) at which the silo-to-silo
  /// transport drops, duplicates, delays and reorders outbound frames,
  /// with a seed and the delay bound. Absent: a clean transport.
  bool faults_enabled = false;
  /// The `[faults]` settings (when `faults_enabled`).
  cluster::fault_config faults;
  /// The silo's tunables; `partitions` comes from the top-level key.
  silo_config limits;
};

/// Parses and checks a config file's text. The error (`invalid_config`)
/// names `source`, the key, its line and the problem: a missing key, a
/// wrong type, a bad address, an unknown provider or an unknown key.
caf::expected<silo_file_config>
parse_config(std::string_view text, std::string_view source = "config");

/// Every key that `parse_config` accepts, as dotted paths ("limits.threads",
/// "membership.seeds", "partitions"), tables included, sorted.
std::vector<std::string> config_keys();

/// Reads and parses the config file at `path`.
caf::expected<silo_file_config> load_config(const std::string& path);

} // namespace granary::host

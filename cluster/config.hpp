#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "cluster/transport.hpp"
#include "runtime/silo.hpp"

namespace granary::cluster {

/// Where the membership table lives.
enum class membership_provider {
  /// In the silos themselves: one silo, or local silos with static seeds.
  embedded,
  /// An etcd cluster reached through its v3 JSON gateway.
  etcd,
};

/// Returns "embedded" or "etcd".
const char* to_string(membership_provider p);

/// Failure detection and membership timing, in `[membership]`.
struct detector_file_config {
  /// `probe_interval_ms`: every silo pings every other live silo this often.
  std::chrono::milliseconds probe_interval{1'000};
  /// `missed_probes`: unanswered pings in a row before a suspicion vote.
  uint32_t missed_probes = 3;
  /// `votes_needed`: votes that declare a silo dead (capped at the number
  /// of other live silos).
  uint32_t votes_needed = 2;
  /// `vote_expiry_ms`: older votes no longer count.
  std::chrono::milliseconds vote_expiry{30'000};
  /// `i_am_alive_interval_ms`: how often a silo writes its heartbeat.
  std::chrono::milliseconds i_am_alive_interval{5'000};
  /// `join_timeout_ms`: how long a joining silo waits for pings answered.
  std::chrono::milliseconds join_timeout{5'000};
  /// `leave_timeout_ms`: how long a graceful leave may hand off partitions.
  std::chrono::milliseconds leave_timeout{60'000};
  /// `rebalance`: whether this silo moves partitions to even the load.
  bool rebalance = true;
};

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
  /// Failure detection and membership timing.
  detector_file_config detector;

  /// True when the silo is part of a cluster (seeds or etcd).
  bool clustered() const {
    return provider == membership_provider::etcd || !seeds.empty();
  }
};

/// The `[gateway]` table: bounds of the HTTP/JSON gateway.
struct gateway_file_config {
  size_t threads = 1;
  size_t workers = 8;
  size_t max_connections = 256;
  size_t max_header_bytes = 16 * 1024;
  size_t max_body_bytes = 1 << 20;
  std::chrono::milliseconds idle_timeout{30'000};
  std::chrono::milliseconds header_timeout{10'000};
  std::chrono::milliseconds call_timeout{10'000};
  std::chrono::milliseconds max_wait{60'000};
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
  gateway_file_config gateway;
  /// `[faults]`, for testing only: rates (0..1) at which the silo-to-silo
  /// transport drops, duplicates, delays and reorders outbound frames,
  /// with a seed and the delay bound. Absent: a clean transport.
  struct {
    bool enabled = false;
    uint64_t seed = 1;
    double drop_rate = 0;
    double duplicate_rate = 0;
    double delay_rate = 0;
    double reorder_rate = 0;
    std::chrono::milliseconds max_delay{20};
  } faults;
  /// The silo's tunables; `partitions` comes from the top-level key.
  silo_config limits;
};

/// Parses "host:port" or "[v6]:port". `allow_any_port` admits port 0.
caf::expected<endpoint> parse_endpoint(std::string_view text,
                                       bool allow_any_port = false);

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

} // namespace granary::cluster

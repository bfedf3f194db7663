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

/// The `[membership]` table of a silo's config file.
struct membership_file_config {
  membership_provider provider = membership_provider::embedded;
  /// `embedded`: silo-to-silo addresses of the silos to join through.
  std::vector<endpoint> seeds;
  /// `embedded`: a fixed member list, "id@host:port" each, the same on
  /// every silo. Until the seeds serve the membership table, this is how
  /// silos form a cluster: partition p belongs to the member at index
  /// p % n of the list sorted by id.
  std::vector<peer_address> silos;
  /// `etcd`: client addresses of the etcd members.
  std::vector<endpoint> endpoints;
  /// `etcd`: key prefix of this cluster's rows.
  std::string prefix = "/granary";
};

/// The `[gateway]` table: bounds of the HTTP/JSON gateway.
struct gateway_file_config {
  size_t threads = 1;
  size_t workers = 8;
  size_t max_connections = 256;
  size_t max_header_bytes = 16 * 1024;
  size_t max_body_bytes = 1 << 20;
  std::chrono::milliseconds idle_timeout{30'000};
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
///     seeds = ["127.0.0.1:7100"]
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

/// Reads and parses the config file at `path`.
caf::expected<silo_file_config> load_config(const std::string& path);

} // namespace granary::cluster

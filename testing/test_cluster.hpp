#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "cluster/membership/membership.hpp"
#include "cluster/transport/memory_transport.hpp"
#include "host/silo_host.hpp"
#include "runtime/memory_storage.hpp"

namespace granary::testing {

/// Adjusts one silo's config before it starts (its index in the cluster).
using configure_fn = std::function<void(host::silo_file_config&, size_t)>;

/// Adjusts one silo's builder before it starts (storage, decorators,
/// hooks).
using customize_fn = std::function<void(host::silo_builder&, size_t)>;

/// Gives silo `i` its storage over `memory`, the silo's data (kept across
/// its restarts), e.g. a wrapper that holds commits; null: the memory
/// itself. Runs at every start of the silo.
using storage_wrapper_fn = std::function<std::unique_ptr<storage>(
    std::shared_ptr<memory_storage> memory, size_t i)>;

/// Gives silo `i` the membership store it uses instead of `shared`, the
/// cluster's table, e.g. a wrapper that loses answers; null: `shared`.
/// Runs at every start of the silo; the cluster keeps the store alive
/// while the silo runs.
using membership_wrapper_fn
    = std::function<std::shared_ptr<cluster::membership_store>(
        cluster::membership_store& shared, size_t i)>;

class test_cluster;

/// Describes a cluster of silos in one process and starts it (model:
/// Orleans' `TestClusterBuilder`). Every silo is a real host: real
/// transport over loopback TCP, real router, agent and membership table
/// (one embedded store that the silos share), and memory storage that
/// survives a silo's restart. Timings default to fast failure detection
/// (100 ms probes, 3 missed probes, 3 s vote expiry).
///
///     auto cluster = test_cluster_builder{3}
///                        .grains([](host::registration& r) {
///                          return r.grain<my_grain>();
///                        })
///                        .build();
class test_cluster_builder {
public:
  /// A cluster of `silos` silos (1 to 64), named "silo-0", "silo-1", ...
  explicit test_cluster_builder(size_t silos = 3);

  /// Partitions of the key space (default 16).
  test_cluster_builder& partitions(uint32_t count);

  /// Registrations every silo runs (added in order).
  test_cluster_builder& grains(host::grains_fn fn);

  /// Adjusts each silo's config (after the defaults above).
  test_cluster_builder& configure(configure_fn fn);

  /// Adjusts each silo's builder (after the test cluster's own hooks).
  test_cluster_builder& customize(customize_fn fn);

  /// Connects the silos through an in-process network instead of
  /// loopback TCP (default: TCP). Cuts, crashes and restarts work alike.
  test_cluster_builder& in_memory_network(bool enabled = true);

  /// Wraps each silo's storage (the last call wins).
  test_cluster_builder& wrap_storage(storage_wrapper_fn fn);

  /// Wraps each silo's view of the membership table (the last call wins).
  test_cluster_builder& wrap_membership(membership_wrapper_fn fn);

  /// Whether silos serve the HTTP gateway (default: no).
  test_cluster_builder& gateways(bool enabled);

  /// Where the membership table and handoff files go (default: a fresh
  /// directory under the system's temp directory, removed at the end).
  test_cluster_builder& directory(std::filesystem::path dir);

  /// Starts every silo, one after the other, and waits until each is
  /// active and owns its share of the partitions (bounded by `limit`).
  caf::expected<std::unique_ptr<test_cluster>>
  build(std::chrono::milliseconds limit = std::chrono::seconds{30}) const;

private:
  friend class test_cluster;

  size_t silos_;
  uint32_t partitions_ = 16;
  std::vector<host::grains_fn> grains_;
  std::vector<configure_fn> configure_;
  std::vector<customize_fn> customize_;
  storage_wrapper_fn wrap_storage_;
  membership_wrapper_fn wrap_membership_;
  bool gateways_ = false;
  bool in_memory_ = false;
  std::filesystem::path dir_;
};

/// A running in-process cluster. Silos can crash, restart on their data,
/// leave gracefully, be cut off the network and join anew.
class test_cluster {
public:
  /// Crashes every silo that still runs and removes the directory (when
  /// the cluster made it).
  ~test_cluster();

  test_cluster(const test_cluster&) = delete;
  test_cluster& operator=(const test_cluster&) = delete;

  /// Number of silos, running or not.
  size_t size() const;

  /// The id of silo `i` ("silo-<i>").
  std::string id(size_t i) const;

  /// True while silo `i` runs.
  bool running(size_t i) const;

  /// The host of silo `i`, which must run.
  host::silo_host& host(size_t i);

  /// The silo of silo `i`, which must run.
  silo& runtime(size_t i);

  /// The cluster agent of silo `i`, which must run.
  cluster::cluster_agent& agent(size_t i);

  /// The router of silo `i`, which must run.
  cluster::transport_router& router(size_t i);

  /// The data of silo `i`, running or not (the same object across its
  /// restarts, until `wipe`).
  std::shared_ptr<memory_storage> memory(size_t i) const;

  /// Replaces the data of silo `i`, which must be stopped, with nothing: a
  /// wiped data directory.
  void wipe(size_t i);

  /// The membership table the silos share.
  cluster::membership_store& membership();

  /// Starts silo `i` again on its data, with a new incarnation (crashes it
  /// first if it runs). On an error the silo stays stopped.
  caf::error restart(size_t i);

  /// Stops silo `i` without a leave: what a crash looks like to the others
  /// (its committed data stays; nothing uncommitted is lost, since a silo's
  /// replies and effects wait for its commits).
  void crash(size_t i);

  /// Graceful leave of silo `i` (its partitions move), then a stop.
  caf::error leave(size_t i);

  /// Adds a silo and starts it; returns its index. When its start fails,
  /// the silo stays in the cluster, stopped, and the error names it.
  caf::expected<size_t> add_silo();

  /// Cuts silo `i` off the network (every frame from or to another silo is
  /// lost) or heals the cut.
  void isolate(size_t i, bool cut);

  /// True once the other silos declared silo `i` dead (since its start).
  bool declared_dead(size_t i) const;

  /// Waits until every running silo is active in the table, and the map
  /// gives every partition to a running silo with an even spread (counts
  /// differ by at most one), as every running silo sees it.
  bool wait_stable(std::chrono::milliseconds limit = std::chrono::seconds{30});

private:
  friend class test_cluster_builder;
  struct node;

  explicit test_cluster(test_cluster_builder spec);

  caf::error start(size_t i);

  // Whether running silo `n` sees every running silo active and an even
  // spread of the partitions over them that matches what it serves.
  bool stable_as_seen_by(const node& n) const;

  test_cluster_builder spec_;
  bool own_dir_ = false;
  std::unique_ptr<cluster::membership_store> store_;
  // The in-process network, when the builder asked for one.
  std::shared_ptr<cluster::memory_network> network_;
  std::vector<std::unique_ptr<node>> nodes_;
};

} // namespace granary::testing

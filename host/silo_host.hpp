#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "actors/activity.hpp"
#include "actors/grain.hpp"
#include "actors/resource.hpp"
#include "actors/workflow.hpp"
#include "cluster/agent/cluster_agent.hpp"
#include "cluster/membership/membership.hpp"
#include "cluster/routing/transport_router.hpp"
#include "cluster/transport/transport.hpp"
#include "host/config.hpp"
#include "runtime/clock.hpp"
#include "runtime/services.hpp"
#include "runtime/silo.hpp"
#include "runtime/storage.hpp"

namespace granary::host {

/// What the user's code registers into, once per silo start (see
/// `silo_builder::grains`). The host owns all of it and wires it: the
/// activity pool is attached to the silo, the services are handed to every
/// turn and activity.
struct registration {
  /// Grain types by name.
  grain_registry& grains;
  /// Where workflow and resource activities run.
  activity_pool& activities;
  /// Objects handed to grains and activities (replaces globals). The
  /// host adds a `workflow_watch`, which wakes in-process
  /// `silo_workflow_client`s waiting for results.
  service_registry& services;
  /// The silo's settings, from the file or from code.
  const silo_file_config& config;

  /// Registers grain class `G` (not a workflow or resource grain: those
  /// need `workflow<W>` or `resource<R>`, and registering them as plain
  /// grains does not compile).
  template <class G>
  caf::error grain() {
    return register_grain<G>(grains);
  }

  /// Registers workflow class `W` with its activities on the host's pool.
  template <class W>
  caf::error workflow(workflow_options opts = {}) {
    return register_workflow<W>(grains, &activities, opts);
  }

  /// Registers resource grain class `R` and its reconcile activity.
  template <class R>
  caf::error resource(resource_options opts = {}) {
    return register_resource<R>(grains, activities, opts);
  }

  /// Registers activity `name` (see `activity_pool::add`).
  template <class In, class Out, class F>
  caf::error activity(std::string name, F fn) {
    return activities.template add<In, Out>(std::move(name), std::move(fn));
  }
};

/// The user's registrations; an error stops the start (exit status 1).
using grains_fn = std::function<caf::error(registration&)>;

/// Opens the silo's storage; the default opens RocksDB at `data_dir`.
using storage_fn = std::function<caf::expected<std::unique_ptr<storage>>(
    const silo_file_config&)>;

/// Makes the silo-to-silo transport instead of the default Asio TCP one
/// (e.g. a `memory_network`'s), for the silo's id and incarnation.
using transport_fn = std::function<std::shared_ptr<cluster::transport>(
    const silo_file_config&, uint64_t incarnation)>;

/// Wraps the silo-to-silo transport, e.g. in a `faulty_transport` or a
/// test's network cut; gets the transport as configured (faults included).
using transport_decorator = std::function<std::shared_ptr<cluster::transport>(
    std::shared_ptr<cluster::transport>)>;

/// Gives the membership store to use instead of the configured provider
/// (tests share one in-process store between silos). It must outlive the
/// host.
using membership_fn = std::function<caf::expected<cluster::membership_store*>(
    const silo_file_config&)>;

class silo_host;

/// Describes a silo and starts it (model: Orleans' `ISiloBuilder`).
/// Configuration comes from a TOML file (`config_file`) or from code
/// (`config`); the user's grains, workflows, activities and services come
/// from `grains` callbacks. Everything else has a default that the hooks
/// replace. A builder can start any number of silos (one after the other,
/// or several in one process with different configs).
///
///     silo_builder b;
///     b.config_file("silo.toml").grains([](registration& r) {
///       return r.workflow<my_workflow>();
///     });
///     auto host = b.start();
class silo_builder {
public:
  /// Uses `cfg` (replaces a config file).
  silo_builder& config(silo_file_config cfg);

  /// Reads the config from `path` at `start` (replaces `config`).
  silo_builder& config_file(std::string path);

  /// Adds a registration callback; callbacks run in the order added.
  silo_builder& grains(grains_fn fn);

  /// Replaces the storage (default: RocksDB at `data_dir`).
  silo_builder& storage(storage_fn fn);

  /// Replaces the Asio TCP transport (decorators still apply).
  silo_builder& transport(transport_fn fn);

  /// Adds a decorator around the silo-to-silo transport (applied in the
  /// order added, after `[faults]`).
  silo_builder& decorate_transport(transport_decorator fn);

  /// Replaces the configured membership provider.
  silo_builder& membership(membership_fn fn);

  /// The clock of the silo and of its cluster agent (default: the system
  /// clock).
  silo_builder& clock(std::shared_ptr<granary::clock> clk);

  /// Threads and queue bound of the activity pool (default 8 and 4,096).
  silo_builder& activity_pool_size(size_t threads, size_t max_queue = 4'096);

  /// What happens when the other silos declare this one dead (default: log
  /// and exit the process with status 3; in-process test clusters record
  /// it instead).
  silo_builder& on_declared_dead(cluster::cluster_agent::dead_fn fn);

  /// What happens when a storage error fail-stops the silo (default: log
  /// and exit the process with status 4, so that its supervisor restarts
  /// it on a reopened store; in-process test clusters leave the silo up
  /// with its failed partitions, and the simulation crashes its process).
  silo_builder& on_storage_failure(std::function<void(const caf::error&)> fn);

  /// Runs once the silo has started, before it joins the cluster's
  /// routing (tests use it to act at that moment).
  silo_builder& before_activate(std::function<void(silo&)> fn);

  /// Whether to serve the HTTP/JSON gateway (default: yes).
  silo_builder& gateway(bool enabled);

  /// How long to wait for the membership store (the seed silo or etcd) at
  /// start, so that silos of a cluster can start in any order (default
  /// 30 s, tried every 500 ms).
  silo_builder& join_patience(std::chrono::milliseconds limit);

  /// Incarnation of the silo process (default: the wall clock in ns, which
  /// grows across restarts).
  silo_builder& incarnation(uint64_t value);

  /// Starts the silo, in order: config, storage, registrations, transport,
  /// membership, router, agent (join), silo (recovery), activation in the
  /// cluster, activity pool, gateway. On an error, everything started so
  /// far is stopped in reverse order. A bad config or a registration the
  /// config forbids fails with `invalid_config`.
  caf::expected<std::unique_ptr<silo_host>> start() const;

private:
  friend class silo_host;

  std::optional<silo_file_config> config_;
  std::string config_path_;
  std::vector<grains_fn> grains_;
  storage_fn storage_;
  transport_fn transport_;
  std::vector<transport_decorator> decorators_;
  membership_fn membership_;
  std::shared_ptr<granary::clock> clock_;
  size_t pool_threads_ = 8;
  size_t pool_queue_ = 4'096;
  cluster::cluster_agent::dead_fn on_dead_;
  std::function<void(const caf::error&)> on_storage_failure_;
  std::function<void(silo&)> before_activate_;
  bool gateway_ = true;
  std::chrono::milliseconds join_patience_{30'000};
  uint64_t incarnation_ = 0;
};

/// A running silo with everything around it: storage, activity pool,
/// transport, membership, router, agent and gateway. Stopping tears them
/// down in the reverse order of `silo_builder::start`.
class silo_host {
public:
  /// Stops (see `stop`).
  ~silo_host();

  silo_host(const silo_host&) = delete;
  silo_host& operator=(const silo_host&) = delete;

  /// The silo.
  silo& runtime();

  /// The activity pool, attached to the silo.
  activity_pool& activities();

  /// The config the silo runs with (ports as configured; see
  /// `silo_port` and `gateway_address` for the bound ones).
  const silo_file_config& config() const;

  /// The gateway's bound address ("host:port"); empty without a gateway.
  std::string gateway_address() const;

  /// The bound silo-to-silo port; 0 for a silo on its own.
  uint16_t silo_port() const;

  /// The incarnation this silo joined with.
  uint64_t incarnation() const;

  /// The cluster agent; null for a silo on its own.
  cluster::cluster_agent* agent();

  /// The transport; null for a silo on its own.
  cluster::transport* transport();

  /// Graceful leave: hands every partition to the other silos (bounded by
  /// `[membership] leave_timeout_ms`) and marks this silo dead in the
  /// table. No-op for a silo on its own. Call before `stop`.
  caf::error leave();

  /// Stops the gateway, the pool, the agent, the silo (committing what is
  /// pending), then the router, the membership service and the transport.
  /// Without a `leave` first, the other silos see a crash. Idempotent;
  /// returns the silo's stop error, if any.
  caf::error stop();

private:
  friend class silo_builder;
  struct impl;

  explicit silo_host(std::unique_ptr<impl> p);

  std::unique_ptr<impl> impl_;
};

} // namespace granary::host

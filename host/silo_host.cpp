#include "host/silo_host.hpp"

#include <atomic>
#include <thread>

#include "actors/workflow_watch.hpp"
#include "cluster.pb.h"
#include "cluster/membership/embedded_membership.hpp"
#include "cluster/membership/etcd_membership.hpp"
#include "cluster/membership/remote_membership.hpp"
#include "cluster/transport/asio_transport.hpp"
#include "cluster/transport/faulty_transport.hpp"
#include "gateway/gateway.hpp"
#include "host/silo_main.hpp"
#include "persistence/rocksdb_storage.hpp"
#include "runtime/assert.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"
#include "runtime/sys.hpp"

namespace granary::host {

namespace {

caf::error with_context(const std::string& what, const caf::error& err) {
  return make_error(code_of(err), what + ": " + describe(err));
}

} // namespace

// -- the running silo ---------------------------------------------------------

struct silo_host::impl {
  silo_file_config cfg;
  uint64_t incarnation = 0;
  std::unique_ptr<activity_pool> pool;
  std::shared_ptr<cluster::transport> net;
  uint16_t silo_port = 0;
  // Owned when opened from the config; `members` points at it or at the
  // store the builder's `membership` hook gave.
  std::unique_ptr<cluster::membership_store> owned_members;
  cluster::membership_store* members = nullptr;
  std::unique_ptr<cluster::membership_service> service;
  cluster::remote_membership* remote = nullptr;
  std::unique_ptr<cluster::transport_router> router;
  // Read by the transport's threads, which may deliver a frame while the
  // router is being built or torn down.
  std::atomic<cluster::transport_router*> router_ptr{nullptr};
  std::unique_ptr<cluster::cluster_agent> agent;
  std::unique_ptr<silo> s;
  std::unique_ptr<cluster::gateway> gw;
  bool stopped = false;

  caf::error open_membership();

  // Reverse order of `start`; each step is idempotent.
  caf::error stop() {
    if (stopped)
      return caf::none;
    stopped = true;
    if (gw)
      gw->stop();
    if (pool)
      pool->stop();
    // The agent uses the silo's storage: stop it before the silo.
    if (agent)
      agent->stop();
    caf::error err;
    if (s)
      err = s->stop();
    router_ptr = nullptr;
    if (router)
      router->stop();
    if (service)
      service->stop();
    if (net)
      net->stop();
    return err;
  }

  void on_frame(const cluster::peer_info& from, cluster::Frame&& f) {
    if (f.body_case() == cluster::Frame::kMembership) {
      if (service)
        service->handle(from, f.membership(), *net);
      else if (remote)
        remote->on_frame(from, f.membership());
      return;
    }
    if (auto* r = router_ptr.load())
      r->handler()(from, std::move(f));
  }
};

silo_host::silo_host(std::unique_ptr<impl> p)
    : impl_(std::move(p)) {}

silo_host::~silo_host() {
  static_cast<void>(impl_->stop());
}

silo& silo_host::runtime() {
  GRANARY_ASSERT(impl_->s, "a started host has a silo");
  return *impl_->s;
}

activity_pool& silo_host::activities() {
  return *impl_->pool;
}

const silo_file_config& silo_host::config() const {
  return impl_->cfg;
}

std::string silo_host::gateway_address() const {
  return impl_->gw ? impl_->gw->address() : std::string{};
}

uint16_t silo_host::silo_port() const {
  return impl_->silo_port;
}

uint64_t silo_host::incarnation() const {
  return impl_->incarnation;
}

cluster::cluster_agent* silo_host::agent() {
  return impl_->agent.get();
}

cluster::transport* silo_host::transport() {
  return impl_->net.get();
}

caf::error silo_host::leave() {
  if (!impl_->agent || impl_->stopped)
    return caf::none;
  return impl_->agent->leave(impl_->cfg.membership.leave_timeout);
}

caf::error silo_host::stop() {
  return impl_->stop();
}

// -- the builder --------------------------------------------------------------

silo_builder& silo_builder::config(silo_file_config cfg) {
  config_ = std::move(cfg);
  config_path_.clear();
  return *this;
}

silo_builder& silo_builder::config_file(std::string path) {
  config_path_ = std::move(path);
  config_.reset();
  return *this;
}

silo_builder& silo_builder::grains(grains_fn fn) {
  grains_.push_back(std::move(fn));
  return *this;
}

silo_builder& silo_builder::storage(storage_fn fn) {
  storage_ = std::move(fn);
  return *this;
}

silo_builder& silo_builder::transport(transport_fn fn) {
  transport_ = std::move(fn);
  return *this;
}

silo_builder& silo_builder::decorate_transport(transport_decorator fn) {
  decorators_.push_back(std::move(fn));
  return *this;
}

silo_builder& silo_builder::membership(membership_fn fn) {
  membership_ = std::move(fn);
  return *this;
}

silo_builder& silo_builder::clock(std::shared_ptr<granary::clock> clk) {
  clock_ = std::move(clk);
  return *this;
}

silo_builder& silo_builder::activity_pool_size(size_t threads,
                                               size_t max_queue) {
  pool_threads_ = threads;
  pool_queue_ = max_queue;
  return *this;
}

silo_builder&
silo_builder::on_declared_dead(cluster::cluster_agent::dead_fn fn) {
  on_dead_ = std::move(fn);
  return *this;
}

silo_builder&
silo_builder::on_storage_failure(std::function<void(const caf::error&)> fn) {
  on_storage_failure_ = std::move(fn);
  return *this;
}

silo_builder& silo_builder::before_activate(std::function<void(silo&)> fn) {
  before_activate_ = std::move(fn);
  return *this;
}

silo_builder& silo_builder::gateway(bool enabled) {
  gateway_ = enabled;
  return *this;
}

silo_builder& silo_builder::join_patience(std::chrono::milliseconds limit) {
  join_patience_ = limit;
  return *this;
}

silo_builder& silo_builder::incarnation(uint64_t value) {
  incarnation_ = value;
  return *this;
}

// Opens the membership store the config names: etcd, the seed's embedded
// table (on the seed silo, which also serves it), or the seed's table
// through the transport (on every other silo).
caf::error silo_host::impl::open_membership() {
  auto& h = *this;
  auto& mc = cfg.membership;
  if (mc.provider == membership_provider::etcd) {
    cluster::etcd_membership_config ec;
    ec.endpoints.clear();
    std::string listed;
    for (auto& ep : mc.endpoints) {
      ec.endpoints.push_back(ep.to_string());
      listed += (listed.empty() ? "" : ", ") + ep.to_string();
    }
    ec.cluster_id = cfg.cluster_id;
    ec.key_root = mc.prefix;
    auto opened = cluster::etcd_membership::open(ec);
    if (!opened)
      return with_context("membership (etcd at " + listed + ")",
                          opened.error());
    h.owned_members = std::move(*opened);
  } else if (mc.seeds.at(0).silo_id == cfg.silo_id) {
    auto opened
        = cluster::embedded_membership::open({cfg.data_dir + "/membership"});
    if (!opened)
      return with_context("membership table", opened.error());
    h.owned_members = std::move(*opened);
    h.service = std::make_unique<cluster::membership_service>(*h.owned_members);
  } else {
    auto rc = mc.seed_client;
    rc.seeds = mc.seeds;
    auto opened = cluster::remote_membership::open(*h.net, rc);
    if (!opened)
      return with_context("membership (seed " + mc.seeds[0].silo_id + ")",
                          opened.error());
    h.remote = opened->get();
    h.owned_members = std::move(*opened);
  }
  h.members = h.owned_members.get();
  return caf::none;
}

caf::expected<std::unique_ptr<silo_host>> silo_builder::start() const {
  auto h = std::make_unique<silo_host::impl>();
  // 1. Config.
  if (config_) {
    h->cfg = *config_;
  } else if (!config_path_.empty()) {
    auto loaded = load_config(config_path_);
    if (!loaded)
      return std::move(loaded.error());
    h->cfg = std::move(*loaded);
  } else {
    return make_error(errc::invalid_config,
                      "silo_builder: no config (call config or config_file)");
  }
  auto& cfg = h->cfg;
  if (auto err = cfg.limits.validate())
    return make_error(errc::invalid_config, "[limits]: " + describe(err));
  if (pool_threads_ < 1 || pool_threads_ > 1'024 || pool_queue_ < 1)
    return make_error(errc::invalid_config,
                      "silo_builder: the activity pool needs 1 to 1024 "
                      "threads and a queue bound of at least 1");
  h->incarnation = incarnation_ != 0
                       ? incarnation_
                       : static_cast<uint64_t>(sys::wall_ms()) * 1'000'000
                             + sys::random_u64() % 1'000'000;
  // 2. Storage.
  caf::expected<std::unique_ptr<granary::storage>> store{nullptr};
  if (storage_) {
    store = storage_(cfg);
  } else {
    auto opened = rocksdb_storage::open({.data_dir = cfg.data_dir});
    if (!opened)
      return std::move(opened.error());
    store = std::unique_ptr<granary::storage>{std::move(*opened)};
  }
  if (!store)
    return std::move(store.error());
  if (!*store)
    return make_error(errc::invalid_config, "silo_builder: the storage hook "
                                            "returned no storage");
  // 3. The user's registrations.
  h->pool = std::make_unique<activity_pool>(pool_threads_, pool_queue_);
  grain_registry reg;
  auto services = std::make_shared<service_registry>();
  // Wakes in-process clients waiting for workflow results.
  if (auto err = services->add(std::make_shared<workflow_watch>()))
    return err;
  registration r{reg, *h->pool, *services, cfg};
  for (auto& fn : grains_)
    if (auto err = fn(r))
      return with_context("registering grains", err);
  cfg.limits.services = services;
  cfg.limits.on_storage_failure = on_storage_failure_;
  if (!cfg.limits.on_storage_failure)
    cfg.limits.on_storage_failure = [](const caf::error& err) {
      // The store may have lost or half-applied a write: only a reopen
      // (a new process) can trust it again.
      log(log_level::error,
          "silo: storage failure (" + describe(err)
              + "); exiting with status 4 so that the supervisor restarts "
                "the silo on a reopened store");
      std::fflush(stdout);
      std::fflush(stderr);
      std::_Exit(static_cast<int>(exit_storage_failure));
    };
  // 4. The cluster: transport, membership, router, agent (join).
  if (cfg.membership.clustered() || membership_) {
    cluster::asio_transport_config tc;
    tc.cluster_id = cfg.cluster_id;
    tc.silo_id = cfg.silo_id;
    tc.incarnation = h->incarnation;
    if (transport_)
      h->net = transport_(cfg, h->incarnation);
    else
      h->net = std::make_shared<cluster::asio_transport>(tc);
    if (!h->net)
      return make_error(errc::invalid_config,
                        "silo_builder: the transport hook returned none");
    if (cfg.faults_enabled) {
      // Testing only: a network that loses, repeats and reorders frames.
      h->net = std::make_shared<cluster::faulty_transport>(h->net, cfg.faults);
      log(log_level::info,
          "transport faults on: drop " + std::to_string(cfg.faults.drop_rate)
              + ", duplicate " + std::to_string(cfg.faults.duplicate_rate)
              + ", delay " + std::to_string(cfg.faults.delay_rate)
              + ", reorder " + std::to_string(cfg.faults.reorder_rate));
    }
    for (auto& decorate : decorators_)
      h->net = decorate(h->net);
    auto* hp = h.get();
    h->net->set_handler(
        [hp](const cluster::peer_info& from, cluster::Frame&& f) {
          hp->on_frame(from, std::move(f));
        });
    auto port = h->net->start(cfg.silo_listen);
    if (!port) {
      static_cast<void>(h->stop());
      return with_context("listen.silo", port.error());
    }
    h->silo_port = *port;
    if (membership_) {
      auto given = membership_(cfg);
      if (!given || !*given) {
        static_cast<void>(h->stop());
        return given ? make_error(errc::invalid_config,
                                  "silo_builder: the membership hook "
                                  "returned no store")
                     : with_context("membership", given.error());
      }
      h->members = *given;
    } else if (auto err = h->open_membership()) {
      static_cast<void>(h->stop());
      return err;
    }
    cluster::peer_address self{cfg.silo_id, cfg.silo_listen};
    self.address.port = *port;
    h->router = std::make_unique<cluster::transport_router>(
        *h->net, self, cfg.limits.partitions);
    auto ac = cfg.membership.detector;
    ac.self = self;
    ac.gateway_address = cfg.gateway_listen.to_string();
    ac.partitions = cfg.limits.partitions;
    ac.handoff_dir = cfg.data_dir + "/handoff";
    // The agent's probes and vote times run on the silo's clock too.
    h->agent = std::make_unique<cluster::cluster_agent>(
        ac, *h->members, *h->net, *h->router, clock_);
    if (on_dead_)
      h->agent->on_declared_dead(on_dead_);
    auto* a = h->agent.get();
    h->router->on_other_frame(
        [a](const cluster::peer_info& from, cluster::Frame&& f) {
          a->on_frame(from, std::move(f));
        });
    h->router->on_stale_route([a] { a->refresh_soon(); });
    h->router_ptr = h->router.get();
    // Joining needs the membership store: retry for a while, so that the
    // silos of a cluster can start in any order.
    auto deadline = sys::now() + join_patience_;
    caf::error joined;
    for (int attempt = 0;; ++attempt) {
      joined = h->agent->join(**store, h->incarnation);
      if (!joined || code_of(joined) == errc::invalid_config
          || sys::now() >= deadline)
        break;
      if (attempt == 0)
        log(log_level::info,
            "waiting for the membership store: " + describe(joined));
      sys::sleep_for(std::chrono::milliseconds{500});
    }
    if (joined) {
      static_cast<void>(h->stop());
      return code_of(joined) == errc::invalid_config
                 ? joined
                 : with_context("joining the cluster", joined);
    }
    cfg.limits.router = h->router.get();
  }
  // 5. The silo: recovery of every partition it serves.
  auto started
      = clock_
            ? silo::start(cfg.limits, std::move(reg), std::move(*store), clock_)
            : silo::start(cfg.limits, std::move(reg), std::move(*store));
  if (!started) {
    static_cast<void>(h->stop());
    return std::move(started.error());
  }
  h->s = std::move(*started);
  // 6. Routing and the cluster's view of this silo.
  if (h->router) {
    h->router->attach(*h->s);
    if (before_activate_)
      before_activate_(*h->s);
    if (auto err = h->agent->activate(*h->s)) {
      static_cast<void>(h->stop());
      return with_context("joining the cluster", err);
    }
  } else if (before_activate_) {
    before_activate_(*h->s);
  }
  // 7. Activities: attempts recovered above waited in the pool's queue.
  h->pool->attach(*h->s);
  // 8. The gateway.
  if (gateway_) {
    auto gcfg = cfg.gateway;
    gcfg.listen = cfg.gateway_listen;
    gcfg.cluster_id = cfg.cluster_id;
    gcfg.silo_id = cfg.silo_id;
    if (h->agent) {
      auto* a = h->agent.get();
      gcfg.cluster_fields = [a] { return cluster::to_json_fields(a->view()); };
      gcfg.remote_gateway = [a](uint32_t p) { return a->gateway_of(p); };
    }
    auto gw = cluster::gateway::start(gcfg, *h->s);
    if (!gw) {
      static_cast<void>(h->stop());
      return std::move(gw.error());
    }
    h->gw = std::move(*gw);
  }
  return std::unique_ptr<silo_host>{new silo_host{std::move(h)}};
}

} // namespace granary::host

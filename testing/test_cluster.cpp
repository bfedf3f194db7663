#include "testing/test_cluster.hpp"

#include <unistd.h>

#include <algorithm>
#include <map>
#include <random>
#include <thread>

#include "cluster.pb.h"
#include "cluster/membership/embedded_membership.hpp"
#include "cluster/routing/transport_router.hpp"
#include "runtime/assert.hpp"
#include "runtime/error.hpp"
#include "testing/eventually.hpp"

namespace granary::testing {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// A network cut around one silo: while `cut` is set, frames to and from
// the other silos are lost, as on a dead link.
class cuttable_transport final : public cluster::transport {
public:
  cuttable_transport(std::shared_ptr<cluster::transport> inner,
                     std::shared_ptr<std::atomic<bool>> cut)
      : inner_(std::move(inner))
      , cut_(std::move(cut)) {}

  void set_handler(cluster::frame_handler handler) override {
    inner_->set_handler(
        [cut = cut_, handler = std::move(handler)](
            const cluster::peer_info& from, cluster::Frame&& f) {
          if (!cut->load())
            handler(from, std::move(f));
        });
  }

  caf::expected<uint16_t> start(const cluster::endpoint& listen) override {
    return inner_->start(listen);
  }

  caf::error send(const cluster::peer_address& to,
                  const cluster::Frame& frame) override {
    if (cut_->load())
      return caf::none; // Lost on the wire, as far as the sender knows.
    return inner_->send(to, frame);
  }

  void stop() override {
    inner_->stop();
  }

  cluster::transport_stats stats() const override {
    return inner_->stats();
  }

private:
  std::shared_ptr<cluster::transport> inner_;
  std::shared_ptr<std::atomic<bool>> cut_;
};

} // namespace

// -- builder ------------------------------------------------------------------

test_cluster_builder::test_cluster_builder(size_t silos)
    : silos_(silos) {}

test_cluster_builder& test_cluster_builder::partitions(uint32_t count) {
  partitions_ = count;
  return *this;
}

test_cluster_builder& test_cluster_builder::grains(host::grains_fn fn) {
  grains_.push_back(std::move(fn));
  return *this;
}

test_cluster_builder& test_cluster_builder::configure(configure_fn fn) {
  configure_.push_back(std::move(fn));
  return *this;
}

test_cluster_builder& test_cluster_builder::customize(customize_fn fn) {
  customize_.push_back(std::move(fn));
  return *this;
}

test_cluster_builder&
test_cluster_builder::wrap_storage(storage_wrapper_fn fn) {
  wrap_storage_ = std::move(fn);
  return *this;
}

test_cluster_builder&
test_cluster_builder::wrap_membership(membership_wrapper_fn fn) {
  wrap_membership_ = std::move(fn);
  return *this;
}

test_cluster_builder& test_cluster_builder::in_memory_network(bool enabled) {
  in_memory_ = enabled;
  return *this;
}

test_cluster_builder& test_cluster_builder::gateways(bool enabled) {
  gateways_ = enabled;
  return *this;
}

test_cluster_builder& test_cluster_builder::directory(fs::path dir) {
  dir_ = std::move(dir);
  return *this;
}

caf::expected<std::unique_ptr<test_cluster>>
test_cluster_builder::build(std::chrono::milliseconds limit) const {
  if (silos_ < 1 || silos_ > 64)
    return make_error(errc::invalid_argument,
                      "test_cluster_builder: 1 to 64 silos, not "
                          + std::to_string(silos_));
  if (partitions_ < 1 || partitions_ > 4'096)
    return make_error(errc::invalid_argument,
                      "test_cluster_builder: 1 to 4096 partitions");
  std::unique_ptr<test_cluster> c{new test_cluster{*this}};
  for (size_t i = 0; i < silos_; ++i)
    if (auto err = c->start(i))
      return err;
  if (!c->wait_stable(limit))
    return make_error(errc::timeout,
                      "test cluster: the partitions did not spread over "
                      "the silos within "
                          + std::to_string(limit.count()) + " ms");
  return c;
}

// -- cluster ------------------------------------------------------------------

struct test_cluster::node {
  std::string id;
  std::shared_ptr<memory_storage> mem = std::make_shared<memory_storage>();
  std::shared_ptr<std::atomic<bool>> cut
      = std::make_shared<std::atomic<bool>>(false);
  std::shared_ptr<std::atomic<bool>> dead
      = std::make_shared<std::atomic<bool>>(false);
  uint64_t incarnation = 0;
  // The store a `wrap_membership` hook gave; outlives the host.
  std::shared_ptr<cluster::membership_store> members;
  std::unique_ptr<host::silo_host> h;
};

test_cluster::test_cluster(test_cluster_builder spec)
    : spec_(std::move(spec)) {
  if (spec_.dir_.empty()) {
    static std::atomic<uint64_t> counter{0};
    spec_.dir_ = fs::temp_directory_path()
                 / ("granary-test-cluster-" + std::to_string(::getpid()) + "-"
                    + std::to_string(counter++));
    own_dir_ = true;
  }
  fs::remove_all(spec_.dir_);
  fs::create_directories(spec_.dir_);
  auto opened = cluster::embedded_membership::open(
      {(spec_.dir_ / "membership").string()});
  GRANARY_ASSERT(opened, "a fresh directory opens as a membership table");
  store_ = std::move(*opened);
  for (size_t i = 0; i < spec_.silos_; ++i) {
    nodes_.push_back(std::make_unique<node>());
    nodes_.back()->id = "silo-" + std::to_string(i);
  }
}

test_cluster::~test_cluster() {
  for (size_t i = 0; i < nodes_.size(); ++i)
    crash(i);
  store_.reset();
  if (own_dir_) {
    std::error_code ec;
    fs::remove_all(spec_.dir_, ec);
  }
}

size_t test_cluster::size() const {
  return nodes_.size();
}

std::string test_cluster::id(size_t i) const {
  return nodes_.at(i)->id;
}

bool test_cluster::running(size_t i) const {
  return nodes_.at(i)->h != nullptr;
}

host::silo_host& test_cluster::host(size_t i) {
  auto& h = nodes_.at(i)->h;
  GRANARY_ASSERT(h, "test_cluster::host: the silo runs");
  return *h;
}

silo& test_cluster::runtime(size_t i) {
  return host(i).runtime();
}

cluster::cluster_agent& test_cluster::agent(size_t i) {
  auto* a = host(i).agent();
  GRANARY_ASSERT(a, "a silo of a test cluster has an agent");
  return *a;
}

cluster::transport_router& test_cluster::router(size_t i) {
  // The host hands its router to the silo as the remote router.
  auto* r = dynamic_cast<cluster::transport_router*>(
      host(i).config().limits.router);
  GRANARY_ASSERT(r, "a silo of a test cluster has a transport router");
  return *r;
}

std::shared_ptr<memory_storage> test_cluster::memory(size_t i) const {
  return nodes_.at(i)->mem;
}

void test_cluster::wipe(size_t i) {
  auto& n = *nodes_.at(i);
  GRANARY_ASSERT(!n.h, "test_cluster::wipe: the silo is stopped");
  n.mem = std::make_shared<memory_storage>();
}

cluster::membership_store& test_cluster::membership() {
  return *store_;
}

caf::error test_cluster::start(size_t i) {
  auto& n = *nodes_.at(i);
  GRANARY_ASSERT(!n.h, "test_cluster::start: the silo is stopped");
  host::silo_file_config cfg;
  cfg.cluster_id = "test";
  cfg.silo_id = n.id;
  cfg.data_dir = (spec_.dir_ / n.id).string();
  cfg.silo_listen = cluster::endpoint{"127.0.0.1", 0};
  cfg.gateway_listen = cluster::endpoint{"127.0.0.1", 0};
  cfg.limits.partitions = spec_.partitions_;
  cfg.limits.redelivery_timeout = 300ms;
  cfg.limits.timer_poll = 10ms;
  cfg.limits.remote_call_timeout = 500ms;
  auto& d = cfg.membership.detector;
  d.probe_interval = 100ms;
  d.missed_probes = 3;
  d.vote_expiry = 3s;
  d.i_am_alive_interval = 500ms;
  d.join_timeout = 1s;
  d.refresh_interval = 200ms;
  d.handoff_timeout = 2s;
  cfg.membership.leave_timeout = 20s;
  for (auto& fn : spec_.configure_)
    fn(cfg, i);
  n.members.reset();
  if (spec_.wrap_membership_)
    n.members = spec_.wrap_membership_(*store_, i);
  host::silo_builder b;
  b.config(cfg)
      .gateway(spec_.gateways_)
      .incarnation(++n.incarnation)
      .activity_pool_size(4)
      .join_patience(5s)
      .storage([mem = n.mem, wrap = spec_.wrap_storage_,
                i](const host::silo_file_config&)
                   -> caf::expected<std::unique_ptr<storage>> {
        std::unique_ptr<storage> st;
        if (wrap)
          st = wrap(mem, i);
        if (!st)
          st = std::make_unique<shared_memory_storage>(mem);
        return st;
      })
      .membership(
          [store = n.members ? n.members.get()
                             : store_.get()](const host::silo_file_config&)
              -> caf::expected<cluster::membership_store*> { return store; })
      .decorate_transport([cut = n.cut](auto inner) {
        return std::make_shared<cuttable_transport>(std::move(inner), cut);
      })
      .on_declared_dead([dead = n.dead](const std::string&) { *dead = true; })
      // A test's process must not exit: the failed partitions refuse work.
      .on_storage_failure([](const caf::error&) {});
  if (spec_.in_memory_) {
    if (!network_)
      network_ = cluster::memory_network::make();
    b.transport([net = network_](const host::silo_file_config& c,
                                 uint64_t incarnation) {
      return net->attach(c.silo_id, incarnation);
    });
  }
  for (auto& fn : spec_.grains_)
    b.grains(fn);
  for (auto& fn : spec_.customize_)
    fn(b, i);
  n.dead->store(false);
  auto started = b.start();
  if (!started) {
    n.members.reset();
    return make_error(code_of(started.error()),
                      n.id + ": " + describe(started.error()));
  }
  n.h = std::move(*started);
  return caf::none;
}

caf::error test_cluster::restart(size_t i) {
  crash(i);
  return start(i);
}

void test_cluster::crash(size_t i) {
  auto& n = *nodes_.at(i);
  if (n.h) {
    static_cast<void>(n.h->stop());
    n.h.reset();
  }
  n.members.reset();
}

caf::error test_cluster::leave(size_t i) {
  auto& n = *nodes_.at(i);
  if (!n.h)
    return make_error(errc::silo_stopped, n.id + " does not run");
  auto err = n.h->leave();
  crash(i);
  return err;
}

caf::expected<size_t> test_cluster::add_silo() {
  if (nodes_.size() >= 64)
    return make_error(errc::invalid_argument, "test cluster: 64 silos at most");
  nodes_.push_back(std::make_unique<node>());
  nodes_.back()->id = "silo-" + std::to_string(nodes_.size() - 1);
  if (auto err = start(nodes_.size() - 1))
    return err;
  return nodes_.size() - 1;
}

void test_cluster::isolate(size_t i, bool cut) {
  nodes_.at(i)->cut->store(cut);
}

bool test_cluster::declared_dead(size_t i) const {
  return nodes_.at(i)->dead->load();
}

bool test_cluster::stable_as_seen_by(const node& n) const {
  auto* agent = n.h->agent();
  if (!agent)
    return false;
  auto view = agent->view();
  // Every running silo is active, and owns a share of the partitions.
  std::map<std::string, size_t> owned;
  for (auto& other : nodes_) {
    if (!other->h)
      continue;
    auto* row = view.table.find(other->id);
    if (!row || row->status != cluster::silo_status::active)
      return false;
    owned[other->id] = 0;
  }
  if (view.map.partitions.size() != spec_.partitions_)
    return false;
  for (auto& p : view.map.partitions) {
    auto* primary = p.primary();
    auto o = primary ? owned.find(*primary) : owned.end();
    if (o == owned.end())
      return false;
    ++o->second;
  }
  auto [lo, hi]
      = std::minmax_element(owned.begin(), owned.end(), [](auto& a, auto& b) {
          return a.second < b.second;
        });
  return hi->second - lo->second <= 1 && agent->served().size() == owned[n.id];
}

bool test_cluster::wait_stable(std::chrono::milliseconds limit) {
  return eventually(
      [&] {
        return std::all_of(nodes_.begin(), nodes_.end(), [&](auto& n) {
          return !n->h || stable_as_seen_by(*n);
        });
      },
      limit, 20ms);
}

} // namespace granary::testing

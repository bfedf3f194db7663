#include "tools/granary/silo_cmd.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "cluster.pb.h"
#include "cluster/asio_transport.hpp"
#include "cluster/cluster_agent.hpp"
#include "cluster/config.hpp"
#include "cluster/embedded_membership.hpp"
#include "cluster/etcd_membership.hpp"
#include "cluster/faulty_transport.hpp"
#include "cluster/gateway.hpp"
#include "cluster/remote_membership.hpp"
#include "cluster/transport_router.hpp"
#include "persistence/rocksdb_storage.hpp"
#include "runtime/error.hpp"
#include "samples/control_plane/control_plane.hpp"

namespace granary::cli {

namespace {

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;

constexpr const char* usage_text
    = "usage: granary silo --config FILE [--cloud-api HOST:PORT]\n"
      "                    [--activity-threads N]\n"
      "\n"
      "Runs one silo with its HTTP/JSON gateway: opens RocksDB at the\n"
      "config's data_dir, registers the control-plane sample's grains and\n"
      "workflows, serves the gateway on listen.gateway and prints a 'ready'\n"
      "line. With [membership] seeds or provider \"etcd\" it joins a cluster:\n"
      "the partitions spread over the members and move with their data.\n"
      "SIGTERM or SIGINT stops it gracefully: it hands its partitions to the\n"
      "other silos, leaves and exits 0. --cloud-api is where the sample's\n"
      "activities reach the provider API (without it they fail and retry).\n"
      "Exit codes: 0 stopped cleanly, 1 failed, 2 bad usage or bad config,\n"
      "3 declared dead by the other silos.\n";

int usage(const std::string& what) {
  std::fprintf(stderr, "granary silo: %s\n%s", what.c_str(), usage_text);
  return exit_usage;
}

int fail(const std::string& what) {
  std::fprintf(stderr, "granary silo: %s\n", what.c_str());
  return exit_failed;
}

// Tells systemd (Type=notify) about state changes: one datagram to
// $NOTIFY_SOCKET, which is all sd_notify does. No-op without the variable.
void notify_systemd(const char* state) {
  auto* path = std::getenv("NOTIFY_SOCKET");
  if (!path || (path[0] != '/' && path[0] != '@'))
    return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  auto len = std::strlen(path);
  if (len >= sizeof(addr.sun_path))
    return;
  std::memcpy(addr.sun_path, path, len);
  if (path[0] == '@')
    addr.sun_path[0] = '\0';
  auto fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return;
  auto addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
  static_cast<void>(::sendto(fd, state, std::strlen(state), MSG_NOSIGNAL,
                             reinterpret_cast<const sockaddr*>(&addr),
                             addr_len));
  ::close(fd);
}

} // namespace

int silo_main(int argc, char** argv) {
  std::string config_path;
  std::optional<cluster::endpoint> cloud_api;
  size_t activity_threads = 8;
  for (int i = 0; i < argc; ++i) {
    std::string_view arg = argv[i];
    auto value = [&]() -> std::optional<std::string> {
      if (i + 1 >= argc)
        return std::nullopt;
      return std::string{argv[++i]};
    };
    if (arg == "--help" || arg == "-h") {
      std::fputs(usage_text, stdout);
      return exit_ok;
    }
    if (arg == "--config") {
      auto v = value();
      if (!v)
        return usage("--config needs a file");
      config_path = *v;
    } else if (arg == "--cloud-api") {
      auto v = value();
      if (!v)
        return usage("--cloud-api needs HOST:PORT");
      auto ep = cluster::parse_endpoint(*v);
      if (!ep)
        return usage("--cloud-api: " + describe(ep.error()));
      cloud_api = *ep;
    } else if (arg == "--activity-threads") {
      auto v = value();
      size_t n = 0;
      auto res
          = v ? std::from_chars(v->data(), v->data() + v->size(), n)
              : std::from_chars_result{nullptr, std::errc::invalid_argument};
      if (!v || res.ec != std::errc{} || res.ptr != v->data() + v->size()
          || n < 1 || n > 256)
        return usage("--activity-threads takes a number in [1, 256]");
      activity_threads = n;
    } else {
      return usage("unknown argument '" + std::string{arg} + "'");
    }
  }
  if (config_path.empty())
    return usage("--config FILE is required");
  auto cfg = cluster::load_config(config_path);
  if (!cfg) {
    std::fprintf(stderr, "granary silo: %s\n", describe(cfg.error()).c_str());
    return exit_usage;
  }
  // Every thread started from here on inherits the blocked signals, so
  // only `sigwait` below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  auto store = rocksdb_storage::open({.data_dir = cfg->data_dir});
  if (!store)
    return fail(describe(store.error()));
  activity_pool pool{activity_threads, 4'096};
  grain_registry reg;
  if (auto err = cp::register_all(reg, pool))
    return fail(describe(err));
  // A cluster: the transport, the membership store (kept by the seed or
  // etcd), the router and the agent that ties them together.
  std::shared_ptr<cluster::transport> net;
  std::unique_ptr<cluster::membership_store> members;
  std::unique_ptr<cluster::membership_service> service;
  cluster::remote_membership* remote = nullptr;
  std::unique_ptr<cluster::transport_router> router;
  std::atomic<cluster::transport_router*> router_ptr{nullptr};
  std::unique_ptr<cluster::cluster_agent> agent;
  auto stop_cluster = [&] {
    if (agent)
      agent->stop();
    router_ptr = nullptr;
    if (router)
      router->stop();
    if (service)
      service->stop();
    if (net)
      net->stop();
  };
  auto incarnation = static_cast<uint64_t>(
      std::chrono::system_clock::now().time_since_epoch().count());
  if (cfg->membership.clustered()) {
    auto& mc = cfg->membership;
    cluster::asio_transport_config tc;
    tc.cluster_id = cfg->cluster_id;
    tc.silo_id = cfg->silo_id;
    tc.incarnation = incarnation;
    net = std::make_shared<cluster::asio_transport>(tc);
    if (cfg->faults.enabled) {
      // Testing only: a network that loses, repeats and reorders frames.
      cluster::fault_config fc;
      fc.seed = cfg->faults.seed;
      fc.drop_rate = cfg->faults.drop_rate;
      fc.duplicate_rate = cfg->faults.duplicate_rate;
      fc.delay_rate = cfg->faults.delay_rate;
      fc.reorder_rate = cfg->faults.reorder_rate;
      fc.max_delay = cfg->faults.max_delay;
      net = std::make_shared<cluster::faulty_transport>(net, fc);
      std::printf("transport faults on: drop %.2f, duplicate %.2f, delay "
                  "%.2f, reorder %.2f\n",
                  fc.drop_rate, fc.duplicate_rate, fc.delay_rate,
                  fc.reorder_rate);
    }
    net->set_handler([&](const cluster::peer_info& from, cluster::Frame&& f) {
      if (f.body_case() == cluster::Frame::kMembership) {
        if (service)
          service->handle(from, f.membership(), *net);
        else if (remote)
          remote->on_frame(from, f.membership());
        return;
      }
      if (auto* r = router_ptr.load())
        r->handler()(from, std::move(f));
    });
    auto port = net->start(cfg->silo_listen);
    if (!port)
      return fail("listen.silo: " + describe(port.error()));
    bool is_seed = mc.provider == cluster::membership_provider::embedded
                   && mc.seeds[0].silo_id == cfg->silo_id;
    if (mc.provider == cluster::membership_provider::etcd) {
      cluster::etcd_membership_config ec;
      ec.endpoints.clear();
      std::string listed;
      for (auto& ep : mc.endpoints) {
        ec.endpoints.push_back(ep.to_string());
        listed += (listed.empty() ? "" : ", ") + ep.to_string();
      }
      ec.cluster_id = cfg->cluster_id;
      ec.key_root = mc.prefix;
      auto opened = cluster::etcd_membership::open(ec);
      if (!opened) {
        stop_cluster();
        return fail("membership (etcd at " + listed
                    + "): " + describe(opened.error()));
      }
      members = std::move(*opened);
    } else if (is_seed) {
      auto opened
          = cluster::embedded_membership::open({cfg->data_dir + "/membership"});
      if (!opened) {
        stop_cluster();
        return fail("membership table: " + describe(opened.error()));
      }
      members = std::move(*opened);
      service = std::make_unique<cluster::membership_service>(*members);
    } else {
      cluster::remote_membership_config rc;
      rc.seeds = mc.seeds;
      auto opened = cluster::remote_membership::open(*net, rc);
      if (!opened) {
        stop_cluster();
        return fail("membership (seed " + mc.seeds[0].silo_id
                    + "): " + describe(opened.error()));
      }
      remote = opened->get();
      members = std::move(*opened);
    }
    cluster::peer_address self{cfg->silo_id, cfg->silo_listen};
    self.address.port = *port;
    router = std::make_unique<cluster::transport_router>(
        *net, self, cfg->limits.partitions);
    cluster::agent_config ac;
    ac.self = self;
    ac.gateway_address = cfg->gateway_listen.to_string();
    ac.partitions = cfg->limits.partitions;
    ac.probe_interval = mc.detector.probe_interval;
    ac.missed_probes = mc.detector.missed_probes;
    ac.votes_needed = mc.detector.votes_needed;
    ac.vote_expiry = mc.detector.vote_expiry;
    ac.i_am_alive_interval = mc.detector.i_am_alive_interval;
    ac.join_timeout = mc.detector.join_timeout;
    ac.rebalance = mc.detector.rebalance;
    ac.handoff_dir = cfg->data_dir + "/handoff";
    agent
        = std::make_unique<cluster::cluster_agent>(ac, *members, *net, *router);
    auto* a = agent.get();
    router->on_other_frame(
        [a](const cluster::peer_info& from, cluster::Frame&& f) {
          a->on_frame(from, std::move(f));
        });
    router->on_stale_route([a] { a->refresh_soon(); });
    router_ptr = router.get();
    // Joining needs the seed: retry for a while, so that silos of a local
    // cluster can start in any order.
    caf::error joined;
    for (int attempt = 0; attempt < 60; ++attempt) {
      joined = agent->join(**store, incarnation);
      if (!joined || code_of(joined) == errc::invalid_config)
        break;
      if (attempt == 0)
        std::printf("waiting for the membership store: %s\n",
                    describe(joined).c_str());
      std::fflush(stdout);
      std::this_thread::sleep_for(std::chrono::milliseconds{500});
    }
    if (joined) {
      stop_cluster();
      return code_of(joined) == errc::invalid_config
                 ? (std::fprintf(stderr, "granary silo: %s\n",
                                 describe(joined).c_str()),
                    exit_usage)
                 : fail("joining the cluster: " + describe(joined));
    }
    cfg->limits.router = router.get();
  }
  auto started = silo::start(cfg->limits, std::move(reg), std::move(*store));
  if (!started) {
    stop_cluster();
    return fail(describe(started.error()));
  }
  auto& s = **started;
  if (router) {
    router->attach(s);
    if (auto err = agent->activate(s)) {
      stop_cluster();
      static_cast<void>(s.stop());
      return fail("joining the cluster: " + describe(err));
    }
  }
  cp::cloud_config cloud;
  if (cloud_api) {
    cloud.host = cloud_api->host;
    cloud.port = cloud_api->port;
  }
  cp::configure(cloud, &s);
  pool.attach(s);
  cluster::gateway_config gcfg;
  gcfg.listen = cfg->gateway_listen;
  gcfg.threads = cfg->gateway.threads;
  gcfg.workers = cfg->gateway.workers;
  gcfg.max_connections = cfg->gateway.max_connections;
  gcfg.max_header_bytes = cfg->gateway.max_header_bytes;
  gcfg.max_body_bytes = cfg->gateway.max_body_bytes;
  gcfg.idle_timeout = cfg->gateway.idle_timeout;
  gcfg.header_timeout = cfg->gateway.header_timeout;
  gcfg.call_timeout = cfg->gateway.call_timeout;
  gcfg.max_wait = cfg->gateway.max_wait;
  gcfg.cluster_id = cfg->cluster_id;
  gcfg.silo_id = cfg->silo_id;
  if (agent) {
    auto* a = agent.get();
    gcfg.cluster_fields = [a] { return cluster::to_json_fields(a->view()); };
    gcfg.remote_gateway = [a](uint32_t p) { return a->gateway_of(p); };
  }
  auto gw = cluster::gateway::start(gcfg, s);
  if (!gw) {
    pool.stop();
    stop_cluster();
    static_cast<void>(s.stop());
    return fail(describe(gw.error()));
  }
  std::printf("ready silo=%s cluster=%s gateway=%s partitions=%u data=%s\n",
              cfg->silo_id.c_str(), cfg->cluster_id.c_str(),
              (*gw)->address().c_str(), s.partitions(), cfg->data_dir.c_str());
  std::fflush(stdout);
  notify_systemd("READY=1");
  int sig = 0;
  while (sigwait(&stop_signals, &sig) != 0) {
    // Retry: sigwait fails only with EINTR-like conditions.
  }
  notify_systemd("STOPPING=1");
  std::printf("stopping on %s\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  std::fflush(stdout);
  if (agent) {
    // Hand the partitions over while the gateway still forwards requests.
    if (auto err = agent->leave(cfg->membership.detector.leave_timeout))
      std::printf("leaving the cluster: %s\n", describe(err).c_str());
    else
      std::printf("left the cluster\n");
    std::fflush(stdout);
  }
  (*gw)->stop();
  pool.stop();
  // The agent uses the silo's storage: stop it first.
  if (agent)
    agent->stop();
  auto stopped = s.stop();
  stop_cluster();
  if (auto err = stopped)
    return fail("stopping the silo: " + describe(err));
  std::printf("stopped\n");
  std::fflush(stdout);
  return exit_ok;
}

} // namespace granary::cli

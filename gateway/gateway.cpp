// The gateway: its config, and the router and HTTP server that serve the
// endpoints of gateway_cluster.cpp, gateway_workflows.cpp,
// gateway_grains.cpp and gateway_dead_letters.cpp (relays in
// gateway_relay.cpp, the shared steps in gateway_core.cpp).

#include "gateway/gateway.hpp"

#include "gateway/gateway_core.hpp"
#include "http/router.hpp"
#include "http/server.hpp"

namespace granary::cluster {

caf::error gateway_config::validate() const {
  auto bad = [](std::string what) {
    return make_error(errc::invalid_config, "gateway: " + std::move(what));
  };
  if (listen.host.empty())
    return bad("listen host must not be empty");
  if (threads < 1 || threads > 64)
    return bad("threads must be in [1, 64]");
  if (max_pending < 1 || max_pending > 1'000'000)
    return bad("max_pending must be in [1, 1000000]");
  if (max_connections < 1 || max_connections > 100'000)
    return bad("max_connections must be in [1, 100000]");
  if (max_header_bytes < 512 || max_header_bytes > (1 << 20))
    return bad("max_header_bytes must be in [512, 1048576]");
  if (max_body_bytes < 1 || max_body_bytes > (64 << 20))
    return bad("max_body_bytes must be in [1, 67108864]");
  if (idle_timeout.count() < 1)
    return bad("idle_timeout must be positive");
  if (header_timeout.count() < 1)
    return bad("header_timeout must be positive");
  if (call_timeout.count() < 1)
    return bad("call_timeout must be positive");
  if (max_wait.count() < 0)
    return bad("max_wait must not be negative");
  if (max_list < 1 || max_list > 100'000)
    return bad("max_list must be in [1, 100000]");
  return caf::none;
}

errc errc_from_name(std::string_view name) {
  return granary::errc_from_name(name).value_or(errc::unspecified);
}

namespace detail {

namespace {

// The error code of each answer the HTTP server gives itself.
errc code_of_refusal(http::refusal r) {
  switch (r) {
    case http::refusal::too_many_connections:
    case http::refusal::too_many_pending:
      return errc::overloaded;
    case http::refusal::header_too_large:
    case http::refusal::body_too_large:
      return errc::payload_too_large;
    case http::refusal::header_timeout:
      return errc::timeout;
    case http::refusal::malformed:
      return errc::invalid_argument;
    case http::refusal::dropped:
      return errc::unspecified;
  }
  return errc::unspecified;
}

http::server_config server_config_of(const gateway_config& cfg) {
  http::server_config out;
  out.host = cfg.listen.host;
  out.port = cfg.listen.port;
  out.threads = cfg.threads;
  out.max_connections = cfg.max_connections;
  out.answer_refused_connections = true;
  out.max_header_bytes = cfg.max_header_bytes;
  out.max_body_bytes = cfg.max_body_bytes;
  out.header_timeout = cfg.header_timeout;
  out.idle_timeout = cfg.idle_timeout;
  out.max_pending = cfg.max_pending;
  out.name = "granary";
  out.render = [](const http::server_error& e) {
    return error_reply(e.status, code_of_refusal(e.what), e.message,
                       e.retry_after_ms);
  };
  return out;
}

} // namespace

/// Everything behind `gateway`.
class gateway_state {
public:
  gateway_state(gateway_config cfg, silo& s)
      : core(std::make_shared<gateway_core>(std::move(cfg), s)) {
    add_cluster_routes(routes, core);
    add_workflow_routes(routes, core);
    add_grain_routes(routes, core);
    add_dead_letter_routes(routes, core);
    routes.on_error([](const http::request&, const http::router_error& e) {
      auto code = e.status == 404 ? errc::not_found : errc::invalid_argument;
      return error_reply(e.status, code, e.message);
    });
  }

  ~gateway_state() {
    stop();
  }

  caf::error start() {
    auto srv
        = http::server::start(server_config_of(core->cfg), std::ref(routes));
    if (!srv)
      return make_error(errc::invalid_config,
                        "gateway: " + describe(srv.error()));
    server = std::move(*srv);
    core->port = server->port();
    return caf::none;
  }

  void stop() {
    core->stopping = true;
    // Relays in flight end within call_timeout; then storage work.
    if (server)
      server->stop(core->cfg.call_timeout + std::chrono::seconds{1});
    core->stop_pool();
  }

  std::shared_ptr<gateway_core> core;
  http::router routes;
  std::unique_ptr<http::server> server;
};

} // namespace detail

caf::expected<std::unique_ptr<gateway>> gateway::start(gateway_config cfg,
                                                       silo& s) {
  if (auto err = cfg.validate())
    return err;
  auto st = std::make_unique<detail::gateway_state>(std::move(cfg), s);
  if (auto err = st->start())
    return err;
  return std::unique_ptr<gateway>{new gateway(std::move(st))};
}

gateway::gateway(std::unique_ptr<detail::gateway_state> state)
    : state_(std::move(state)) {}

gateway::~gateway() {
  stop();
}

uint16_t gateway::port() const {
  return state_->core->port;
}

std::string gateway::address() const {
  return state_->core->cfg.listen.host + ":"
         + std::to_string(state_->core->port);
}

gateway_stats gateway::stats() const {
  auto s = state_->server->stats();
  gateway_stats out;
  out.open_connections = s.open_connections;
  out.rejected_connections = s.rejected_connections;
  out.header_timeouts = s.header_timeouts;
  out.requests = s.requests;
  out.pending = s.pending;
  return out;
}

void gateway::stop() {
  state_->stop();
}

} // namespace granary::cluster

// Health and cluster status: GET /healthz, GET /v1/cluster.

#include "gateway/gateway_core.hpp"

namespace granary::cluster::detail {

namespace {

void healthz(const exchange_ptr& x) {
  if (auto err = x->target().failure()) {
    x->reply(error_reply(503, errc::storage_failure,
                         "the silo has fail-stopped: " + describe(err)));
    return;
  }
  json out;
  out["status"] = "ok";
  out["silo_id"] = x->cfg().silo_id;
  x->reply(json_reply(200, out));
}

void cluster_status(const exchange_ptr& x) {
  auto& cfg = x->cfg();
  auto& gw = *x->gw;
  json out;
  out["cluster_id"] = cfg.cluster_id;
  out["silo_id"] = cfg.silo_id;
  out["status"] = gw.silo_status();
  out["partitions"] = x->target().partitions();
  if (cfg.cluster_fields) {
    // The cluster layer renders its members and map as JSON fields.
    auto fields = json::parse("{" + cfg.cluster_fields() + "}", nullptr, false);
    if (!fields.is_object()) {
      x->reply(error_reply(500, errc::malformed_message,
                           "the cluster status is not valid JSON"));
      return;
    }
    for (auto& [k, v] : fields.items())
      out[k] = v;
    x->reply(json_reply(200, out));
    return;
  }
  json self;
  self["silo_id"] = cfg.silo_id;
  self["status"] = gw.silo_status();
  self["partitions"] = x->target().partitions();
  self["gateway"] = cfg.listen.host + ":" + std::to_string(gw.port);
  out["silos"] = json::array({std::move(self)});
  x->reply(json_reply(200, out));
}

} // namespace

void add_cluster_routes(http::router& r,
                        const std::shared_ptr<gateway_core>& gw) {
  add_route(r, gw, http::verb::get, "/healthz", healthz);
  add_route(r, gw, http::verb::get, "/v1/cluster", cluster_status);
}

} // namespace granary::cluster::detail

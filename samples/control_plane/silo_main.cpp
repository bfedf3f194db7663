// The control-plane sample's silo: the sample's grains, workflows and
// activities on a Granary host, with the fake cloud API's address as a
// flag. `control_plane_silo --config silo.toml --cloud-api 127.0.0.1:9000`.

#include "host/silo_main.hpp"
#include "samples/control_plane/control_plane.hpp"

using namespace granary;

int main(int argc, char** argv) {
  std::string cloud_api;
  host::silo_main_options opts;
  opts.name = "control_plane_silo";
  opts.description = "Runs one silo of the control-plane sample.";
  opts.flags = [&](CLI::App& app) {
    app.add_option("--cloud-api", cloud_api,
                   "Where activities reach the provider API (without it "
                   "they fail and retry)")
        ->option_text("HOST:PORT");
  };
  host::silo_builder builder;
  builder.grains([&](host::registration& r) -> caf::error {
    auto cloud = std::make_shared<cp::cloud_config>();
    if (!cloud_api.empty()) {
      auto ep = cluster::parse_endpoint(cloud_api);
      if (!ep)
        return make_error(errc::invalid_config,
                          "--cloud-api: " + describe(ep.error()));
      cloud->host = ep->host;
      cloud->port = ep->port;
    }
    if (auto err = r.services.add(std::move(cloud)))
      return err;
    return cp::register_all(r.grains, r.activities);
  });
  return host::run_silo_main(argc, argv, std::move(builder), std::move(opts));
}

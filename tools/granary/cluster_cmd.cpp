// `granary cluster status`: the silos of a cluster, as one silo sees them.

#include <cstdio>
#include <memory>
#include <string>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include "runtime/error.hpp"
#include "tools/granary/cli.hpp"

namespace granary::cli {

namespace {

struct cluster_args {
  gateway_args gw;
  bool json = false;
};

std::string text(const google::protobuf::Struct& s, const char* k) {
  auto i = s.fields().find(k);
  return i == s.fields().end() ? std::string{} : i->second.string_value();
}

unsigned number(const google::protobuf::Struct& s, const char* k) {
  auto i = s.fields().find(k);
  return i == s.fields().end()
             ? 0u
             : static_cast<unsigned>(i->second.number_value());
}

int status(const cluster_args& a) {
  auto res = a.gw.client().cluster_status();
  if (!res)
    return fail("cluster", describe(res.error()));
  if (a.json) {
    print_body(*res);
    return exit_ok;
  }
  google::protobuf::Struct obj;
  if (!google::protobuf::util::JsonStringToMessage(*res, &obj).ok())
    return fail("cluster", describe(make_error(errc::malformed_message,
                                               "the gateway's answer is not "
                                               "JSON")));
  auto& f = obj.fields();
  std::printf("cluster %s (asked silo %s", text(obj, "cluster_id").c_str(),
              text(obj, "silo_id").c_str());
  if (f.count("map_version"))
    std::printf(", table version %u, map version %u",
                number(obj, "table_version"), number(obj, "map_version"));
  std::printf(")\n");
  if (auto silos = f.find("silos"); silos != f.end())
    for (auto& v : silos->second.list_value().values()) {
      auto& s = v.struct_value();
      std::printf("  %-16s %-13s %3u partitions", text(s, "silo_id").c_str(),
                  text(s, "status").c_str(), number(s, "partitions"));
      if (!text(s, "address").empty())
        std::printf("  silo %s", text(s, "address").c_str());
      std::printf("  gateway %s", text(s, "gateway").c_str());
      if (auto votes = number(s, "suspicions"))
        std::printf("  %u suspicion votes", votes);
      if (!text(s, "owned").empty())
        std::printf("\n  %-16s owns %s", "", text(s, "owned").c_str());
      std::printf("\n");
    }
  return exit_ok;
}

} // namespace

void add_cluster(CLI::App& app, command& run) {
  auto a = std::make_shared<cluster_args>();
  auto* sub
      = add_group(app, "cluster", "Shows the cluster's silos")
            ->add_subcommand(
                "status",
                "Shows every silo of the cluster as the asked silo sees it");
  sub->footer("For each silo: its id, status (joining, active, shutting_down,"
              "\ndead), silo-to-silo address, gateway, suspicion votes and "
              "the\npartitions it owns.");
  add_gateway_options(*sub, a->gw, true);
  sub->add_flag("--json", a->json, "Print the gateway's answer as is");
  on_parse(sub, a, run, status);
}

} // namespace granary::cli

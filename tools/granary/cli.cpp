#include "tools/granary/cli.hpp"

#include <charconv>
#include <cstdio>

#include "cluster/transport/transport.hpp"
#include "runtime/assert.hpp"
#include "runtime/error.hpp"

namespace granary::cli {

CLI::App* add_group(CLI::App& app, const std::string& name,
                    const std::string& help, const std::string& footer) {
  auto* group = app.add_subcommand(name, help)->require_subcommand(1);
  group->footer(footer);
  return group;
}

CLI::Validator not_empty(const std::string& what) {
  return {[what](const std::string& text) {
            return text.empty() ? "the " + what + " is empty" : std::string{};
          },
          ""};
}

CLI::Option* add_id_part(CLI::App& app, const std::string& name,
                         std::string& out, const std::string& what) {
  return app.add_option(name, out, "The " + what)
      ->type_name("")
      ->required()
      ->check(not_empty(what));
}

CLI::Validator count(uint64_t lo, uint64_t hi) {
  auto bounds = hi == UINT64_MAX ? "at least " + std::to_string(lo)
                                 : "in [" + std::to_string(lo) + ", "
                                       + std::to_string(hi) + "]";
  return {[lo, hi, bounds](std::string& text) {
            uint64_t n = 0;
            auto* end = text.data() + text.size();
            auto [ptr, ec] = std::from_chars(text.data(), end, n);
            if (ec != std::errc{} || ptr != end || n < lo || n > hi)
              return "must be a whole number " + bounds + ", not '" + text
                     + "'";
            text = std::to_string(n);
            return std::string{};
          },
          ""};
}

cluster::gateway_client
gateway_args::client(std::chrono::milliseconds extra) const {
  auto server = cluster::parse_endpoint(address);
  GRANARY_ASSERT(server, "--gateway was given and its validator passed it");
  return cluster::gateway_client{*server,
                                 std::chrono::milliseconds{timeout_ms} + extra};
}

CLI::Option* add_gateway_options(CLI::App& app, gateway_args& args,
                                 bool required) {
  auto* gateway
      = app.add_option("--gateway", args.address,
                       "A silo's gateway (any silo of the cluster)")
            ->type_name("HOST:PORT")
            ->required(required)
            ->check(CLI::Validator{[](const std::string& text) {
                                     auto ep = cluster::parse_endpoint(text);
                                     return ep ? std::string{}
                                               : describe(ep.error());
                                   },
                                   ""});
  app.add_option("--timeout", args.timeout_ms, "Deadline of each request")
      ->type_name("MS")
      ->transform(count(1, 3'600'000))
      ->capture_default_str();
  return gateway;
}

CLI::Option* add_data_option(CLI::App& app, std::string& dir) {
  return app
      .add_option("--data", dir, "A stopped silo's data directory, instead")
      ->type_name("DIR")
      ->check(not_empty("data directory"));
}

void require_data_or_gateway(const std::string& dir, const gateway_args& gw) {
  if (dir.empty() == gw.address.empty())
    throw CLI::ValidationError{"give --gateway HOST:PORT (a running silo) or "
                               "--data DIR (a stopped one's directory)"};
}

int fail(const std::string& cmd, const std::string& what) {
  std::fprintf(stderr, "granary %s: %s\n", cmd.c_str(), what.c_str());
  return exit_failed;
}

void print_body(const std::string& body) {
  std::fputs(body.c_str(), stdout);
  if (body.empty() || body.back() != '\n')
    std::fputc('\n', stdout);
}

int answer(const std::string& cmd, const caf::expected<std::string>& res) {
  if (!res)
    return fail(cmd, describe(res.error()));
  print_body(*res);
  return exit_ok;
}

} // namespace granary::cli

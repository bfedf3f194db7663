// A silo of the greeter example: `greeter_silo --config silo.toml`.
#include <granary/host/silo_main.hpp>

#include "greeter.hpp"

int main(int argc, char** argv) {
  granary::host::silo_builder builder;
  builder.grains(greeter::register_all);
  granary::host::silo_main_options opts;
  opts.name = "greeter_silo";
  opts.description = "Runs one silo of the greeter example.";
  return granary::host::run_silo_main(argc, argv, std::move(builder), opts);
}

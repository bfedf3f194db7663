#pragma once

// The greeter example: a grain, a workflow and an activity, registered on a
// Granary host. Built out of tree against the installed package.

#include <string_view>

#include <granary/actors/grain.hpp>
#include <granary/actors/workflow.hpp>
#include <granary/host/silo_host.hpp>

#include "greeter.pb.h"

namespace greeter {

/// A grain per name that counts how often it was greeted. Its state is
/// durable: the count survives restarts and moves with its partition.
class greeter : public granary::grain<greeter, GreeterState> {
public:
  static constexpr std::string_view type_name = "greeter.greeter";

  static void define(granary::handlers<greeter>& h);

  caf::expected<Greeting> greet(granary::turn& t, const Greet& msg);
};

/// Welcomes a user: greets them through their greeter grain (a durable
/// call), sends a note through the outside world (an activity, retried,
/// with an idempotency key), pauses durably, and returns both.
class welcome : public granary::workflow<welcome, Welcome, Welcomed> {
public:
  static constexpr std::string_view type_name = "greeter.welcome";

  granary::task<Welcomed> run(granary::workflow_context& ctx,
                              const Welcome& in);
};

/// Registers the grain, the workflow and the activity on a host.
caf::error register_all(granary::host::registration& r);

} // namespace greeter

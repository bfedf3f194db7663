// `granary grain call|send`: a message to a grain through a silo's
// gateway.

#include <memory>
#include <string>

#include "runtime/error.hpp"
#include "tools/granary/cli.hpp"

namespace granary::cli {

namespace {

struct grain_args {
  gateway_args gw;
  std::string type;
  std::string key;
  std::string message_type;
  std::string message;
  std::string msg_id;
};

int deliver(const grain_args& a, bool durable) {
  auto client = a.gw.client();
  return answer("grain", durable ? client.send_grain(
                             a.type, a.key, a.message_type, a.message, a.msg_id)
                                 : client.call_grain(
                                     a.type, a.key, a.message_type, a.message));
}

void add_delivery(CLI::App& group, const std::shared_ptr<grain_args>& a,
                  command& run, bool durable) {
  auto* sub = group.add_subcommand(
      durable ? "send" : "call",
      durable ? "Sends a durable message (pass --id to retry safely)"
              : "Calls the grain (transient) and prints the reply");
  add_gateway_options(*sub, a->gw, true);
  add_id_part(*sub, "TYPE", a->type, "grain type");
  add_id_part(*sub, "KEY", a->key, "grain key");
  sub->add_option("--type", a->message_type,
                  "Full protobuf name of the message")
      ->type_name("T")
      ->required();
  sub->add_option("--message", a->message, "The message")->type_name("JSON");
  if (durable)
    sub->add_option("--id", a->msg_id, "Message id, for safe retries")
        ->type_name("MSG_ID");
  on_parse(sub, a, run,
           [durable](const grain_args& a) { return deliver(a, durable); });
}

} // namespace

void add_grain(CLI::App& app, command& run) {
  auto a = std::make_shared<grain_args>();
  auto* group = add_group(
      app, "grain", "Calls a grain, or sends it a message, through a gateway",
      json_messages_help);
  add_delivery(*group, a, run, false);
  add_delivery(*group, a, run, true);
}

} // namespace granary::cli

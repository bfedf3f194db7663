// Welcomes a user through any silo's gateway and waits for the workflow's
// result: `greeter_client HOST:PORT USER`. Exit status 0 when it completed.
#include <chrono>
#include <cstdio>

#include <granary/gateway/workflow_client_http.hpp>

#include "greeter.hpp"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: greeter_client HOST:PORT USER\n");
    return 2;
  }
  auto gateway = granary::cluster::parse_endpoint(argv[1]);
  if (!gateway) {
    std::fprintf(stderr, "greeter_client: %s\n",
                 granary::describe(gateway.error()).c_str());
    return 2;
  }
  granary::cluster::http_workflow_client client{*gateway};
  greeter::Welcome in;
  in.set_user(argv[2]);
  // Starting is idempotent by id: a second start finds the same run.
  auto started = client.start<greeter::welcome>(argv[2], in);
  if (!started) {
    std::fprintf(stderr, "greeter_client: %s\n",
                 granary::describe(started.error()).c_str());
    return 1;
  }
  auto done
      = client.result<greeter::welcome>(argv[2], std::chrono::seconds{60});
  if (!done) {
    std::fprintf(stderr, "greeter_client: %s\n",
                 granary::describe(done.error()).c_str());
    return 1;
  }
  std::printf("%s (note %s)\n", done->greeting().c_str(),
              done->note_key().c_str());
  return 0;
}

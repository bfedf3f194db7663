#include "host/silo_main.hpp"

#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <CLI/CLI.hpp>

#include "runtime/error.hpp"

namespace granary::host {

namespace {

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

int run_silo_main(int argc, char** argv, silo_builder builder,
                  silo_main_options opts) {
  CLI::App app{opts.description, opts.name};
  app.footer("Exit status: 0 stopped cleanly (SIGTERM/SIGINT: the silo hands "
             "its partitions to the others first), 1 failed, 2 bad flags or "
             "config, 3 declared dead by the other silos, 4 storage "
             "failure (restart it: the store is reopened).");
  std::string config_path;
  size_t activity_threads = 8;
  app.add_option("--config", config_path, "The silo's TOML config file")
      ->required()
      ->option_text("FILE");
  app.add_option("--activity-threads", activity_threads,
                 "Threads running activities")
      ->check(CLI::Range(size_t{1}, size_t{256}))
      ->option_text("N (default 8)");
  if (opts.flags)
    opts.flags(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return exit_ok;
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "%s: %s\nRun with --help for usage.\n",
                 opts.name.c_str(), e.what());
    return exit_usage;
  }
  builder.config_file(config_path).activity_pool_size(activity_threads);
  // Every thread started from here on inherits the blocked signals, so
  // only `sigwait` below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  auto host = builder.start();
  if (!host) {
    std::fprintf(stderr, "%s: %s\n", opts.name.c_str(),
                 describe(host.error()).c_str());
    return code_of(host.error()) == errc::invalid_config ? exit_usage
                                                         : exit_failed;
  }
  auto& h = **host;
  auto& cfg = h.config();
  std::printf("ready silo=%s cluster=%s gateway=%s partitions=%u data=%s\n",
              cfg.silo_id.c_str(), cfg.cluster_id.c_str(),
              h.gateway_address().c_str(), h.runtime().partitions(),
              cfg.data_dir.c_str());
  std::fflush(stdout);
  notify_systemd("READY=1");
  int sig = 0;
  while (sigwait(&stop_signals, &sig) != 0) {
    // Retry: sigwait fails only with EINTR-like conditions.
  }
  notify_systemd("STOPPING=1");
  std::printf("stopping on %s\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  std::fflush(stdout);
  if (h.agent()) {
    // Hand the partitions over while the gateway still forwards requests.
    if (auto err = h.leave())
      std::printf("leaving the cluster: %s\n", describe(err).c_str());
    else
      std::printf("left the cluster\n");
    std::fflush(stdout);
  }
  if (auto err = h.stop()) {
    std::fprintf(stderr, "%s: stopping the silo: %s\n", opts.name.c_str(),
                 describe(err).c_str());
    return exit_failed;
  }
  std::printf("stopped\n");
  std::fflush(stdout);
  return exit_ok;
}

} // namespace granary::host

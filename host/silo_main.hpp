#pragma once

#include <functional>
#include <string>

#include <CLI/App.hpp>

#include "host/silo_host.hpp"

namespace granary::host {

/// Exit statuses of a silo process (`run_silo_main`).
enum exit_status : int {
  /// Stopped by SIGTERM or SIGINT, after a graceful leave.
  exit_ok = 0,
  /// Failed to start or to stop (storage, network, registrations).
  exit_failed = 1,
  /// Bad flags or a bad config file; nothing was started.
  exit_usage = 2,
  /// The other silos declared this one dead; restart it.
  exit_declared_dead = 3,
  /// A storage error fail-stopped the silo; restart it (the store is
  /// reopened).
  exit_storage_failure = 4,
};

/// The program around `run_silo_main`.
struct silo_main_options {
  /// Shown in usage and error messages.
  std::string name = "granary-silo";
  /// One paragraph for `--help`.
  std::string description = "Runs one Granary silo.";
  /// Adds the program's own flags; their values are set before the
  /// builder's `grains` callbacks run, so they may read them.
  std::function<void(CLI::App&)> flags;
};

/// Runs one silo as a process (model: Seastar's `app_template`). It parses
/// the flags (`--config FILE`, required; `--activity-threads N`; the
/// program's own), reads the config file, starts the silo from `builder`,
/// prints a `ready silo=... cluster=... gateway=... partitions=... data=...`
/// line and tells systemd (`READY=1` to `$NOTIFY_SOCKET`). On SIGTERM or
/// SIGINT it leaves the cluster gracefully (its partitions move to the
/// other silos), stops in reverse order and returns `exit_ok`. Errors go
/// to stderr; see `exit_status` for what is returned.
///
///     int main(int argc, char** argv) {
///       granary::host::silo_builder b;
///       b.grains([](granary::host::registration& r) {
///         return r.workflow<my_workflow>();
///       });
///       return granary::host::run_silo_main(argc, argv, std::move(b));
///     }
int run_silo_main(int argc, char** argv, silo_builder builder,
                  silo_main_options opts = {});

} // namespace granary::host

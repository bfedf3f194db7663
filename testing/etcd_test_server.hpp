#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <caf/expected.hpp>

namespace granary::testing {

/// A private single-member etcd process for tests: data in a fresh
/// temporary directory, client and peer URLs on free loopback ports. The
/// process is killed and its directory removed on destruction, and it gets
/// SIGKILL when the thread that started it dies.
class etcd_test_server {
public:
  /// The etcd binary used unless $GRANARY_ETCD names another one.
  static constexpr const char* default_binary = "/usr/bin/etcd";

  /// Starts etcd and waits until GET /health answers true. Fails with
  /// `errc::invalid_config` when the binary is missing (the message says to
  /// run scripts/setup) and `errc::timeout` when it does not become healthy
  /// within `timeout` (the message carries the end of its log).
  static caf::expected<std::unique_ptr<etcd_test_server>>
  start(std::chrono::milliseconds timeout = std::chrono::seconds{10});

  /// Kills etcd and removes its data directory.
  ~etcd_test_server();

  etcd_test_server(const etcd_test_server&) = delete;

  etcd_test_server& operator=(const etcd_test_server&) = delete;

  /// Returns "127.0.0.1:<client port>".
  const std::string& endpoint() const noexcept {
    return endpoint_;
  }

  /// Returns the process id of etcd, or -1 while it is stopped.
  pid_t pid() const noexcept {
    return pid_;
  }

  /// Kills etcd with SIGKILL and waits for it; the data stays.
  void kill();

  /// Starts etcd again on the same data and ports (after `kill`) and waits
  /// until it is healthy.
  caf::error restart(std::chrono::milliseconds timeout
                     = std::chrono::seconds{10});

private:
  etcd_test_server() = default;

  caf::error spawn();

  caf::error wait_healthy(std::chrono::milliseconds timeout);

  pid_t pid_ = -1;
  std::string dir_;
  std::string endpoint_;
  std::vector<std::string> args_;
};

} // namespace granary::testing

#include "testing/etcd_test_server.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "cluster/membership/etcd_client.hpp"
#include "cluster/transport/ports.hpp"
#include "runtime/error.hpp"
#include "testing/child_process.hpp"

namespace granary::testing {

using cluster::etcd_client;
using cluster::etcd_client_config;

namespace {

std::string log_tail(const std::string& path) {
  std::ifstream in{path};
  std::stringstream ss;
  ss << in.rdbuf();
  auto text = ss.str();
  constexpr size_t max_len = 2000;
  return text.size() <= max_len ? text : text.substr(text.size() - max_len);
}

} // namespace

caf::expected<std::unique_ptr<etcd_test_server>>
etcd_test_server::start(std::chrono::milliseconds timeout) {
  std::string binary = default_binary;
  if (auto* env = std::getenv("GRANARY_ETCD"); env != nullptr && *env != 0)
    binary = env;
  if (::access(binary.c_str(), X_OK) != 0)
    return make_error(errc::invalid_config,
                      "etcd is not installed (" + binary
                          + " is missing); run scripts/setup, which installs "
                            "Debian's etcd-server");
  char tmpl[] = "/tmp/granary-etcd-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr)
    return make_error(errc::storage_failure,
                      "cannot create a temporary directory for etcd");
  std::unique_ptr<etcd_test_server> self{new etcd_test_server};
  self->dir_ = tmpl;
  auto client_port = cluster::pick_free_port();
  if (!client_port)
    return std::move(client_port.error());
  auto peer_port = cluster::pick_free_port();
  if (!peer_port)
    return std::move(peer_port.error());
  auto client_url = "http://127.0.0.1:" + std::to_string(*client_port);
  auto peer_url = "http://127.0.0.1:" + std::to_string(*peer_port);
  self->endpoint_ = "127.0.0.1:" + std::to_string(*client_port);
  self->args_ = {
      binary,
      "--name=granary-test",
      "--data-dir=" + self->dir_ + "/data",
      "--listen-client-urls=" + client_url,
      "--advertise-client-urls=" + client_url,
      "--listen-peer-urls=" + peer_url,
      "--initial-advertise-peer-urls=" + peer_url,
      "--initial-cluster=granary-test=" + peer_url,
      "--initial-cluster-state=new",
      "--initial-cluster-token=granary-test",
      // A single member elects itself after one election timeout; the
      // default (1 s) would dominate the start-up time of every test.
      "--heartbeat-interval=10",
      "--election-timeout=100",
      "--logger=zap",
      "--log-outputs=stderr",
  };
  if (auto err = self->spawn())
    return err;
  if (auto err = self->wait_healthy(timeout))
    return err;
  return self;
}

caf::error etcd_test_server::spawn() {
  auto log_path = dir_ + "/etcd.log";
  int log_fd = ::open(log_path.c_str(),
                      O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0)
    return make_error(errc::storage_failure, "cannot create " + log_path);
  std::string err;
  auto pid = spawn_child(args_, log_fd, log_fd, true, err);
  ::close(log_fd);
  if (pid < 0)
    return make_error(errc::storage_failure, "cannot start etcd: " + err);
  pid_ = pid;
  return caf::none;
}

caf::error etcd_test_server::wait_healthy(std::chrono::milliseconds timeout) {
  auto log_path = dir_ + "/etcd.log";
  etcd_client_config cfg;
  cfg.endpoints = {endpoint_};
  cfg.request_timeout = std::chrono::milliseconds{200};
  etcd_client client{cfg};
  auto deadline = std::chrono::steady_clock::now() + timeout;
  // Bounded by the deadline.
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return make_error(errc::storage_failure,
                        "etcd exited during startup; its log:\n"
                            + log_tail(log_path));
    }
    auto health = client.get("/health");
    if (health && health->find("true") != std::string::npos)
      return caf::none;
    std::this_thread::sleep_for(std::chrono::milliseconds{20});
  }
  return make_error(errc::timeout, "etcd did not become healthy within "
                                       + std::to_string(timeout.count())
                                       + " ms; its log:\n"
                                       + log_tail(log_path));
}

caf::error etcd_test_server::restart(std::chrono::milliseconds timeout) {
  kill();
  if (auto err = spawn())
    return err;
  return wait_healthy(timeout);
}

etcd_test_server::~etcd_test_server() {
  kill();
  std::error_code ec;
  if (!dir_.empty())
    std::filesystem::remove_all(dir_, ec);
}

void etcd_test_server::kill() {
  if (pid_ <= 0)
    return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
}

} // namespace granary::testing

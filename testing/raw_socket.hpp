#pragma once

// Plain sockets on loopback for tests of HTTP servers: what well-behaved
// clients never send (huge or slow headers, many connections), and a
// listener that never answers.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace granary::testing {

/// A TCP connection to a port on 127.0.0.1.
class raw_connection {
public:
  explicit raw_connection(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_
        = fd_ >= 0
          && ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr))
                 == 0;
  }

  ~raw_connection() {
    if (fd_ >= 0)
      ::close(fd_);
  }

  raw_connection(const raw_connection&) = delete;
  raw_connection& operator=(const raw_connection&) = delete;

  bool connected() const {
    return connected_;
  }

  /// Sends all of `bytes`; false when the connection failed.
  bool send(std::string_view bytes) {
    while (!bytes.empty()) {
      auto n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0)
        return false;
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  /// Reads what arrives within `timeout`; empty when nothing came or the
  /// peer closed.
  std::string read_some(std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0)
      return {};
    char buf[8192];
    auto n = ::recv(fd_, buf, sizeof(buf), 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string{};
  }

  /// Reads until the peer closes or `timeout` passes; returns what came.
  std::string read_until_closed(std::chrono::milliseconds timeout) {
    std::string out;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    // Bounded by the deadline: each pass reads at least one byte.
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0)
        break;
      auto part = read_some(left);
      if (part.empty())
        break;
      out += part;
    }
    return out;
  }

private:
  int fd_ = -1;
  bool connected_ = false;
};

/// A listening socket on 127.0.0.1 that accepts nothing: connects succeed
/// (the kernel queues them) and no answer ever comes.
class silent_listener {
public:
  silent_listener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) == 0
        && ::listen(fd_, 16) == 0
        && ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
      port_ = ntohs(addr.sin_port);
  }

  ~silent_listener() {
    if (fd_ >= 0)
      ::close(fd_);
  }

  silent_listener(const silent_listener&) = delete;
  silent_listener& operator=(const silent_listener&) = delete;

  /// The port; 0 when the socket could not listen.
  uint16_t port() const {
    return port_;
  }

private:
  int fd_ = -1;
  uint16_t port_ = 0;
};

} // namespace granary::testing

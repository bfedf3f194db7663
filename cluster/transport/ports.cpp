#include "cluster/transport/ports.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <mutex>
#include <random>
#include <set>

#include "runtime/error.hpp"

namespace granary::cluster {

namespace {

// The lowest ephemeral port (Linux default 32768).
int ephemeral_low() {
  std::ifstream in{"/proc/sys/net/ipv4/ip_local_port_range"};
  int low = 0;
  int high = 0;
  if (in >> low >> high && low > 2048)
    return low;
  return 32768;
}

// Whether a listener could bind `port` on loopback now.
bool bindable(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return false;
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0
            && ::listen(fd, 1) == 0;
  ::close(fd);
  return ok;
}

} // namespace

caf::expected<uint16_t> pick_free_port() {
  static std::mutex mtx;
  static std::set<uint16_t> given;
  static std::mt19937 rng{std::random_device{}()};
  constexpr int lowest = 10'000;
  constexpr int max_tries = 1'000;
  auto high = ephemeral_low() - 1;
  if (high <= lowest)
    return make_error(errc::invalid_config,
                      "no port range below the ephemeral ports (they start at "
                          + std::to_string(high + 1) + ")");
  std::lock_guard guard{mtx};
  std::uniform_int_distribution<int> dist{lowest, high};
  for (int i = 0; i < max_tries; ++i) {
    auto port = static_cast<uint16_t>(dist(rng));
    if (given.contains(port) || !bindable(port))
      continue;
    given.insert(port);
    return port;
  }
  return make_error(errc::invalid_config,
                    "no free loopback port in " + std::to_string(lowest) + ".."
                        + std::to_string(high) + " after "
                        + std::to_string(max_tries) + " tries");
}

} // namespace granary::cluster

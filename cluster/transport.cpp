#include "cluster/transport.hpp"

namespace granary::cluster {

std::string endpoint::to_string() const {
  // IPv6 literals need brackets to keep the port apart.
  if (host.find(':') != std::string::npos)
    return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

transport::~transport() = default;

} // namespace granary::cluster

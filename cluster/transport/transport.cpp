#include "cluster/transport/transport.hpp"

#include <algorithm>
#include <charconv>

#include "runtime/error.hpp"

namespace granary::cluster {

std::string endpoint::to_string() const {
  // IPv6 literals need brackets to keep the port apart.
  if (host.find(':') != std::string::npos)
    return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

caf::expected<endpoint> parse_endpoint(std::string_view text,
                                       bool allow_any_port) {
  auto bad = [&](const std::string& why) {
    return make_error(errc::invalid_config, "'" + std::string{text}
                                                + "' is not host:port (" + why
                                                + ")");
  };
  std::string_view host;
  std::string_view port;
  if (text.starts_with('[')) {
    auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size()
        || text[close + 1] != ':')
      return bad("an IPv6 address is written [addr]:port");
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos)
      return bad("no ':port'");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos)
      return bad("write an IPv6 address as [addr]:port");
  }
  if (host.empty())
    return bad("empty host");
  auto host_ok = std::all_of(host.begin(), host.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == ':'
           || c == '_';
  });
  if (!host_ok || host.size() > 253)
    return bad("bad character in host");
  unsigned value = 0;
  auto res = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || res.ec != std::errc{}
      || res.ptr != port.data() + port.size() || value > 65535)
    return bad("port must be a number in ["
               + std::string{allow_any_port ? "0" : "1"} + ", 65535]");
  if (value == 0 && !allow_any_port)
    return bad("port 0 is not allowed here");
  return endpoint{std::string{host}, static_cast<uint16_t>(value)};
}
transport::~transport() = default;

} // namespace granary::cluster

#pragma once

#include <cstdint>

#include <caf/expected.hpp>

namespace granary::cluster {

/// A loopback TCP port for a listener that starts a moment later: below
/// the kernel's ephemeral range (`ip_local_port_range`), so no outbound
/// connection of any process takes it in between, and nothing listened on
/// it when it was picked. Ports are spread at random, and one process never
/// gets the same port twice. For local clusters, tests and samples.
caf::expected<uint16_t> pick_free_port();

} // namespace granary::cluster

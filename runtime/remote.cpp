#include "runtime/remote.hpp"

namespace granary {

remote_router::~remote_router() = default;

} // namespace granary

#include "runtime/storage.hpp"

namespace granary {

storage::~storage() = default;

} // namespace granary

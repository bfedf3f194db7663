#include "runtime/grain_base.hpp"

namespace granary {

grain_base::~grain_base() = default;

} // namespace granary

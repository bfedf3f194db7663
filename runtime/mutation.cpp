#include "runtime/mutation.hpp"

#include <atomic>

namespace granary {

namespace {

std::atomic<uint32_t> active{0};

uint32_t bit(mutation m) {
  return uint32_t{1} << static_cast<uint32_t>(m);
}

} // namespace

void set_mutation(mutation m) noexcept {
  active.fetch_or(bit(m), std::memory_order_relaxed);
}

void clear_mutations() noexcept {
  active.store(0, std::memory_order_relaxed);
}

bool mutation_active(mutation m) noexcept {
  return (active.load(std::memory_order_relaxed) & bit(m)) != 0;
}

std::string_view to_string(mutation m) noexcept {
  switch (m) {
    case mutation::skip_dedup:
      return "skip_dedup";
    case mutation::reply_before_durable:
      return "reply_before_durable";
    case mutation::rearm_after_cancel:
      return "rearm_after_cancel";
    case mutation::release_before_local_acks:
      return "release_before_local_acks";
    case mutation::restore_after_unknown_map_write:
      return "restore_after_unknown_map_write";
    case mutation::unrecorded_local_redelivery:
      return "unrecorded_local_redelivery";
  }
  return "unknown";
}

} // namespace granary

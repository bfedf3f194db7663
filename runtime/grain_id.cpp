#include "runtime/grain_id.hpp"

namespace granary {

namespace {

constexpr uint64_t fnv_offset = 14695981039346656037ull;
constexpr uint64_t fnv_prime = 1099511628211ull;

uint64_t fnv1a(uint64_t h, std::string_view bytes) noexcept {
  for (auto c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= fnv_prime;
  }
  return h;
}

} // namespace

std::string to_string(const grain_id& id) {
  std::string out;
  out.reserve(id.type.size() + id.key.size() + 1);
  out += id.type;
  out += '/';
  out += id.key;
  return out;
}

uint64_t stable_hash(const grain_id& id) noexcept {
  auto h = fnv1a(fnv_offset, id.type);
  h ^= 0xffu; // Separator: no UTF-8 text contains 0xff.
  h *= fnv_prime;
  h = fnv1a(h, id.key);
  // Final avalanche so that the low bits used by `% partitions` mix well.
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  return h;
}

} // namespace granary

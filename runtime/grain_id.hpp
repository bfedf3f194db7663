#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace granary {

/// Identity of a virtual actor: a registered type name plus a string key.
/// A grain always exists logically; holding an id never creates anything.
struct grain_id {
  std::string type;
  std::string key;

  friend bool operator==(const grain_id&, const grain_id&) = default;
  friend auto operator<=>(const grain_id&, const grain_id&) = default;
};

/// Renders `id` as "type/key" for logs and error messages.
std::string to_string(const grain_id& id);

/// Stable 64-bit hash of a grain id (FNV-1a over type, a separator byte and
/// key). It decides partition placement, so it must never change.
uint64_t stable_hash(const grain_id& id) noexcept;

/// Partition of `id` among `partitions` partitions.
inline uint32_t partition_of(const grain_id& id, uint32_t partitions) noexcept {
  return static_cast<uint32_t>(stable_hash(id) % partitions);
}

/// Hash functor for unordered containers. Deliberately not `noexcept`:
/// libstdc++ then caches each node's hash, so that lookups in a catalog of
/// a million activations do not rehash keys on every probe.
struct grain_id_hash {
  size_t operator()(const grain_id& id) const {
    return static_cast<size_t>(stable_hash(id));
  }
};

} // namespace granary

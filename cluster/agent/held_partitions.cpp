#include "cluster/agent/held_partitions.hpp"

#include <exception>
#include <string>

namespace granary::cluster {

namespace {

std::string held_key(uint32_t p) {
  return "partition/" + std::to_string(p);
}

} // namespace

caf::error put_held(storage& data, uint32_t p, uint64_t epoch, bool held) {
  write_batch wb;
  if (held)
    wb.put(column::meta, held_key(p), std::to_string(epoch));
  else
    wb.erase(column::meta, held_key(p));
  const write_batch* views[] = {&wb};
  return data.commit(views);
}

caf::expected<bool> is_held(storage& data, uint32_t p) {
  auto v = data.get(column::meta, held_key(p));
  if (!v)
    return std::move(v.error());
  return v->has_value();
}

caf::expected<uint64_t> held_epoch(storage& data, uint32_t p) {
  auto v = data.get(column::meta, held_key(p));
  if (!v)
    return std::move(v.error());
  if (!v->has_value())
    return uint64_t{0};
  try {
    return static_cast<uint64_t>(std::stoull(**v));
  } catch (const std::exception&) {
    return uint64_t{0};
  }
}

} // namespace granary::cluster

#include "cluster/agent/move_planner.hpp"

#include <algorithm>
#include <map>

namespace granary::cluster {

std::vector<partition_move> plan_moves(const partition_map& map,
                                       const membership_table& table) {
  std::map<std::string, std::vector<uint32_t>> active;
  std::map<std::string, std::vector<uint32_t>> leaving;
  for (auto& row : table.rows) {
    if (row.status == silo_status::active)
      active[row.silo_id];
    else if (row.status == silo_status::shutting_down)
      leaving[row.silo_id];
  }
  if (active.empty())
    return {};
  for (auto& a : map.partitions) {
    auto* owner = a.primary();
    if (!owner)
      continue;
    if (auto i = active.find(*owner); i != active.end())
      i->second.push_back(a.partition);
    else if (auto j = leaving.find(*owner); j != leaving.end())
      j->second.push_back(a.partition);
  }
  std::vector<partition_move> moves;
  auto least = [&] {
    auto best = active.begin();
    for (auto i = active.begin(); i != active.end(); ++i)
      if (i->second.size() < best->second.size())
        best = i;
    return best;
  };
  auto most = [&] {
    auto best = active.begin();
    for (auto i = active.begin(); i != active.end(); ++i)
      if (i->second.size() > best->second.size())
        best = i;
    return best;
  };
  for (auto& [id, parts] : leaving)
    for (auto p : parts) {
      auto to = least();
      moves.push_back({p, id, to->first});
      to->second.push_back(p);
    }
  // Each move narrows the spread, so this ends within partition_count.
  for (size_t guard = 0; guard <= map.partitions.size(); ++guard) {
    auto hi = most();
    auto lo = least();
    if (hi->second.size() <= lo->second.size() + 1)
      break;
    auto& from = hi->second;
    auto top = std::max_element(from.begin(), from.end());
    auto p = *top;
    from.erase(top);
    moves.push_back({p, hi->first, lo->first});
    lo->second.push_back(p);
  }
  return moves;
}

} // namespace granary::cluster

#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cluster/membership/membership.hpp"

namespace granary::cluster {

/// A move of one partition from one silo to another.
struct partition_move {
  uint32_t partition = 0;
  std::string from;
  std::string to;

  friend bool operator==(const partition_move&, const partition_move&)
      = default;
};

/// Returns the moves that spread the partitions of `map` evenly over the
/// active silos of `table`: every partition of a shutting-down silo goes to
/// the least loaded active silo, then partitions go from the most to the
/// least loaded active silo until their counts differ by at most one.
/// Partitions of dead or unknown silos stay where they are (their data is
/// there). Deterministic: every silo computes the same plan from the same
/// snapshot. Ties go to the lower silo id and the higher partition.
std::vector<partition_move> plan_moves(const partition_map& map,
                                       const membership_table& table);

} // namespace granary::cluster

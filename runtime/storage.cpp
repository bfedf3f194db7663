#include "runtime/storage.hpp"

namespace granary {

storage::~storage() = default;

void write_batch::absorb(write_batch&& other) {
  if (ops_.empty()) {
    ops_ = std::move(other.ops_);
  } else {
    ops_.reserve(ops_.size() + other.ops_.size());
    for (auto& op : other.ops_)
      ops_.push_back(std::move(op));
  }
  bytes_ += other.bytes_;
  other.clear();
}

} // namespace granary

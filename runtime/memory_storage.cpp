#include "runtime/memory_storage.hpp"

#include <thread>

#include "runtime/error.hpp"

namespace granary {

caf::expected<std::optional<std::string>>
memory_storage::get(column col, std::string_view key) {
  std::lock_guard guard{mtx_};
  auto& m = data_[static_cast<size_t>(col)];
  if (auto i = m.find(key); i != m.end())
    return std::optional<std::string>{i->second};
  return std::optional<std::string>{};
}

caf::error memory_storage::commit(std::span<const write_batch* const> batches) {
  if (fail_commits_)
    return make_error(errc::storage_failure,
                      "memory storage: injected commit failure");
  if (auto ms = commit_delay_ms_.load(); ms > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds{ms});
  std::lock_guard guard{mtx_};
  for (auto* batch : batches) {
    for (auto& op : batch->ops()) {
      auto& m = data_[static_cast<size_t>(op.col)];
      if (op.erase) {
        if (auto i = m.find(op.key); i != m.end())
          m.erase(i);
      } else {
        m.insert_or_assign(op.key, op.value);
      }
    }
  }
  ++commits_;
  return caf::none;
}

caf::error memory_storage::scan(column col, std::string_view prefix,
                                std::string_view start, size_t limit,
                                const scan_visitor& visit) {
  // Copy out under the lock so that visitors may call back into storage.
  std::vector<std::pair<std::string, std::string>> hits;
  {
    std::lock_guard guard{mtx_};
    auto& m = data_[static_cast<size_t>(col)];
    auto from = start.empty() || start < prefix ? prefix : start;
    for (auto i = m.lower_bound(from);
         i != m.end() && hits.size() < limit
         && std::string_view{i->first}.substr(0, prefix.size()) == prefix;
         ++i)
      hits.emplace_back(i->first, i->second);
  }
  for (auto& [k, v] : hits)
    if (!visit(k, v))
      break;
  return caf::none;
}

std::optional<uint64_t> memory_storage::free_bytes() {
  std::lock_guard guard{mtx_};
  return free_bytes_;
}

void memory_storage::set_free_bytes(std::optional<uint64_t> bytes) {
  std::lock_guard guard{mtx_};
  free_bytes_ = bytes;
}

size_t memory_storage::count(column col) const {
  std::lock_guard guard{mtx_};
  return data_[static_cast<size_t>(col)].size();
}

void memory_storage::poke(column col, std::string key, std::string value) {
  std::lock_guard guard{mtx_};
  data_[static_cast<size_t>(col)].insert_or_assign(std::move(key),
                                                   std::move(value));
}

} // namespace granary

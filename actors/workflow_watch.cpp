#include "actors/workflow_watch.hpp"

#include "runtime/assert.hpp"

namespace granary {

workflow_watch::subscription::~subscription() {
  if (watch_)
    watch_->unwatch(id_);
}

bool workflow_watch::subscription::wait_until(clock::time_point until) {
  if (!watch_)
    return false;
  std::unique_lock guard{watch_->mtx_};
  auto i = watch_->ids_.find(id_);
  GRANARY_ASSERT(i != watch_->ids_.end(), "a subscribed id stays watched");
  auto& e = i->second;
  auto woken = watch_->cv_.wait_until(guard, until,
                                      [&] { return e.settled != seen_; });
  seen_ = e.settled;
  return woken;
}

workflow_watch::subscription workflow_watch::watch(const grain_id& id) {
  std::lock_guard guard{mtx_};
  auto i = ids_.find(id);
  if (i == ids_.end()) {
    if (ids_.size() >= max_watched)
      return {};
    i = ids_.emplace(id, entry{}).first;
  }
  ++i->second.watchers;
  return subscription{this, id, i->second.settled};
}

void workflow_watch::unwatch(const grain_id& id) {
  std::lock_guard guard{mtx_};
  auto i = ids_.find(id);
  GRANARY_ASSERT(i != ids_.end() && i->second.watchers > 0,
                 "every subscription is counted once");
  if (--i->second.watchers == 0)
    ids_.erase(i);
}

void workflow_watch::settled(const grain_id& id) {
  {
    std::lock_guard guard{mtx_};
    auto i = ids_.find(id);
    if (i == ids_.end())
      return;
    ++i->second.settled;
  }
  cv_.notify_all();
}

} // namespace granary

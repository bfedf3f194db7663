#include "runtime/commit_loop.hpp"

#include <string_view>
#include <unordered_map>
#include <vector>

#include "runtime/assert.hpp"
#include "runtime/error.hpp"
#include "runtime/sys.hpp"

namespace granary {

commit_loop::commit_loop(storage& store, size_t max_group_ops)
    : store_(store)
    , max_group_ops_(max_group_ops == 0 ? 1 : max_group_ops) {
  thread_ = sys::thread{"commit", [this] { run(); }};
}

commit_loop::~commit_loop() {
  stop();
}

void commit_loop::submit(write_batch&& batch, callback done) {
  {
    std::unique_lock guard{mtx_};
    if (!failed_ && !stopping_) {
      queue_.push_back(item{std::move(batch), std::move(done)});
      guard.unlock();
      cv_.notify_one();
      return;
    }
  }
  done(failed_ ? failure()
               : make_error(errc::silo_stopped, "the commit loop has stopped"));
}

void commit_loop::stop() {
  {
    std::lock_guard guard{mtx_};
    stopping_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable())
    thread_.join();
}

caf::error commit_loop::failure() const {
  std::lock_guard guard{mtx_};
  return failure_;
}

commit_stats commit_loop::stats() const {
  return commit_stats{groups_.load(), batches_.load(), ops_.load(),
                      cancelled_.load(), superseded_.load()};
}

void commit_loop::coalesce(std::vector<item>& group) {
  for (auto& m : last_)
    m.clear();
  std::vector<std::vector<bool>> drop(group.size());
  auto mark = [&](size_t b, size_t i) {
    if (drop[b].empty())
      drop[b].resize(group[b].batch.size(), false);
    drop[b][i] = true;
  };
  uint64_t cancelled = 0;
  uint64_t superseded = 0;
  for (size_t b = 0; b < group.size(); ++b) {
    auto& ops = group[b].batch.ops();
    for (size_t i = 0; i < ops.size(); ++i) {
      auto& op = ops[i];
      auto& last = last_[static_cast<size_t>(op.col)];
      auto [it, fresh] = last.try_emplace(op.key, op_pos{b, i});
      if (fresh)
        continue;
      auto [pb, pi] = it->second;
      mark(pb, pi);
      // Outbox keys are unique for the life of the data directory, so a
      // put inside this group means that the key did not exist before:
      // deleting it again leaves nothing to write at all.
      if (op.erase && op.col == column::outbox
          && !group[pb].batch.ops()[pi].erase) {
        mark(b, i);
        last.erase(it);
        ++cancelled;
        continue;
      }
      it->second = op_pos{b, i};
      ++superseded;
    }
  }
  if (cancelled + superseded == 0)
    return;
  for (size_t b = 0; b < group.size(); ++b)
    if (!drop[b].empty())
      group[b].batch.drop_marked(drop[b]);
  cancelled_.fetch_add(cancelled, std::memory_order_relaxed);
  superseded_.fetch_add(superseded, std::memory_order_relaxed);
}

void commit_loop::run() {
  std::vector<item> group;
  std::vector<const write_batch*> views;
  for (;;) {
    group.clear();
    size_t taken = 0;
    {
      std::unique_lock guard{mtx_};
      cv_.wait(guard, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty())
        return; // Stopping and drained.
      // Take whole batches until the group bound; the first always fits.
      while (!queue_.empty()
             && (group.empty()
                 || taken + queue_.front().batch.size() <= max_group_ops_)) {
        taken += queue_.front().batch.size();
        group.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    coalesce(group);
    views.clear();
    size_t ops = 0;
    for (auto& x : group) {
      views.push_back(&x.batch);
      ops += x.batch.size();
    }
    // Paired with the bound above: coalescing only ever drops operations,
    // so the write stays within max_group_ops.
    GRANARY_ASSERT(ops <= taken && (group.size() == 1 || ops <= max_group_ops_),
                   "coalescing grew a merged write");
    caf::error err;
    if (failed_) {
      err = failure();
    } else if (ops > 0) {
      err = store_.commit(views);
      if (err) {
        std::lock_guard guard{mtx_};
        failure_ = err;
        failed_ = true;
      } else {
        groups_.fetch_add(1, std::memory_order_relaxed);
        batches_.fetch_add(group.size(), std::memory_order_relaxed);
        ops_.fetch_add(ops, std::memory_order_relaxed);
      }
    }
    for (auto& x : group)
      x.done(err);
    if (failed_) {
      // Fail everything still queued; later submissions fail in `submit`.
      std::deque<item> rest;
      {
        std::lock_guard guard{mtx_};
        rest.swap(queue_);
      }
      for (auto& x : rest)
        x.done(err);
    }
  }
}

} // namespace granary

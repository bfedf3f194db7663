#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "runtime/grain_id.hpp"
#include "runtime/sys.hpp"

namespace granary {

/// Wakes in-process clients that wait for workflow runs to settle
/// (`workflow_client::result`), so that they need not poll. A service of
/// the silo (`service_registry`; the host adds one): a workflow calls
/// `settled` in the turn that finishes or suspends its run, and a waiter
/// then reads the run again (its read waits for that turn's commit). Only
/// ids someone waits for are tracked. Without this service, or for a run
/// on another silo, waiters fall back to polling. Thread-safe.
class workflow_watch {
public:
  /// Upper bound on ids watched at once; `watch` refuses beyond it.
  static constexpr size_t max_watched = 65'536;

  using clock = std::chrono::steady_clock;

  /// Interest in one workflow id while it lives.
  class subscription {
  public:
    subscription() = default;

    subscription(subscription&& other) noexcept
        : watch_(std::exchange(other.watch_, nullptr))
        , id_(std::move(other.id_))
        , seen_(other.seen_) {}

    subscription& operator=(subscription&&) = delete;
    subscription(const subscription&) = delete;
    subscription& operator=(const subscription&) = delete;

    ~subscription();

    /// False when the watch was full (or there is none): poll instead.
    explicit operator bool() const {
      return watch_ != nullptr;
    }

    /// Waits until the run settled since the last call (or since
    /// `watch`), or until `until`. True when it was woken by a settling.
    bool wait_until(clock::time_point until);

  private:
    friend class workflow_watch;

    subscription(workflow_watch* w, grain_id id, uint64_t seen)
        : watch_(w)
        , id_(std::move(id))
        , seen_(seen) {}

    workflow_watch* watch_ = nullptr;
    grain_id id_;
    uint64_t seen_ = 0;
  };

  /// Starts watching `id`; subscribe before reading the run, so that a
  /// settling in between is not missed.
  subscription watch(const grain_id& id);

  /// Called by a workflow in the turn that completes, fails or suspends
  /// its run.
  void settled(const grain_id& id);

private:
  struct entry {
    size_t watchers = 0;
    uint64_t settled = 0;
  };

  void unwatch(const grain_id& id);

  sys::mutex mtx_;
  sys::condition_variable cv_;
  std::map<grain_id, entry> ids_;
};

} // namespace granary

#include "actors/activity.hpp"

#include <algorithm>
#include <cmath>

#include "runtime/limits.hpp"
#include "runtime/log.hpp"
#include "runtime/silo.hpp"
#include "runtime/sys.hpp"
#include "workflow.pb.h"

namespace granary {

namespace {

int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             sys::now().time_since_epoch())
      .count();
}

} // namespace

std::string activity_idempotency_key(const grain_id& owner, uint32_t run,
                                     uint64_t seq, uint32_t format) {
  // The sequence number follows the last ':', so any key stays readable.
  std::string out;
  if (format >= 1) {
    out += owner.type;
    out += '/';
  }
  out += owner.key;
  out += ':';
  if (run != 0) {
    out += std::to_string(run);
    out += '.';
  }
  out += std::to_string(seq);
  return out;
}

caf::error activity_options::validate() const {
  auto bad = [](const std::string& what) {
    return make_error(errc::invalid_argument, "activity_options: " + what);
  };
  if (initial_interval.count() < 0 || max_interval.count() < 0)
    return bad("initial_interval and max_interval must not be negative");
  if (!std::isfinite(backoff_coefficient) || backoff_coefficient < 1.0)
    return bad("backoff_coefficient must be at least 1, not "
               + std::to_string(backoff_coefficient));
  if (start_to_close.count() <= 0)
    return bad("start_to_close must be positive");
  if (heartbeat_timeout.count() < 0)
    return bad("heartbeat_timeout must not be negative");
  return caf::none;
}

const service_registry& activity_context::services() const {
  static const service_registry none;
  return host ? host->services() : none;
}

bool activity_context::heartbeat() const {
  if (!state)
    return true;
  state->last_beat_ms.store(steady_ms());
  return !state->abandoned.load();
}

activity_pool::activity_pool(size_t threads, size_t max_queue,
                             std::chrono::milliseconds attach_warning)
    : max_queue_(max_queue == 0 ? 1 : max_queue)
    , attach_warning_(attach_warning) {
  for (size_t i = 0; i < (threads == 0 ? 1 : threads); ++i)
    threads_.emplace_back("activity", [this] { work(); });
  monitor_ = sys::thread{"activity-monitor", [this] { monitor(); }};
}

activity_pool::~activity_pool() {
  stop();
}

void activity_pool::attach(silo& s) {
  {
    std::lock_guard guard{mtx_};
    silo_ = &s;
  }
  // Attempts queued while the silo started may run now.
  cv_.notify_all();
}

activity_pool_stats activity_pool::stats() const {
  std::lock_guard guard{mtx_};
  activity_pool_stats out;
  out.queued = queue_.size();
  out.running = running_.size();
  out.started = started_;
  out.abandoned = abandoned_;
  out.dropped_results = dropped_;
  return out;
}

caf::error activity_pool::submit(job j, const std::string& input_type) {
  auto i = activities_.find(j.name);
  if (i == activities_.end())
    return make_error(errc::invalid_argument,
                      "activity '" + j.name + "' is not registered");
  if (i->second.input_type != input_type)
    return make_error(errc::invalid_argument, "activity '" + j.name + "' takes "
                                                  + i->second.input_type
                                                  + ", not " + input_type);
  {
    std::lock_guard guard{mtx_};
    if (stopping_)
      return make_error(errc::silo_stopped, "the activity pool is stopped");
    if (queue_.size() >= max_queue_)
      return make_error(errc::overloaded,
                        "activity queue holds " + std::to_string(max_queue_)
                            + " attempts; retry after 100 ms");
    queue_.push_back(std::move(j));
    if (!silo_ && unattached_since_ms_ == 0) {
      unattached_since_ms_ = steady_ms();
      monitor_cv_.notify_one();
    }
  }
  cv_.notify_one();
  return caf::none;
}

void activity_pool::abandon(const grain_id& workflow, uint32_t run) {
  abandon_if(
      [&](const job& j) { return j.workflow == workflow && j.run == run; });
}

void activity_pool::abandon(const grain_id& owner, uint32_t run, uint64_t seq,
                            uint32_t attempt) {
  abandon_if([&](const job& j) {
    return j.workflow == owner && j.run == run && j.seq == seq
           && j.attempt == attempt;
  });
}

void activity_pool::abandon_if(const std::function<bool(const job&)>& which) {
  std::lock_guard guard{mtx_};
  std::erase_if(queue_, which);
  for (auto& r : running_)
    if (which(r.j) && !r.state->abandoned.exchange(true))
      ++abandoned_;
}

std::deque<activity_pool::job>::iterator activity_pool::runnable() {
  // Bounded by max_queue_ times the number of workers.
  return std::find_if(queue_.begin(), queue_.end(), [&](const job& j) {
    return std::none_of(
        running_.begin(), running_.end(), [&](const running& r) {
          return r.j.workflow == j.workflow
                 && (j.per_grain || (r.j.run == j.run && r.j.seq == j.seq));
        });
  });
}

void activity_pool::stop() {
  {
    std::lock_guard guard{mtx_};
    if (stopping_ && threads_.empty())
      return;
    stopping_ = true;
    queue_.clear();
    for (auto& r : running_)
      if (!r.state->abandoned.exchange(true))
        ++abandoned_;
  }
  cv_.notify_all();
  monitor_cv_.notify_all();
  for (auto& t : threads_)
    if (t.joinable())
      t.join();
  threads_.clear();
  if (monitor_.joinable())
    monitor_.join();
}

void activity_pool::report(const job& j, std::string result_type,
                           std::string result, const caf::error& err) {
  if (stopping_ || !silo_) {
    ++dropped_;
    log(log_level::warning, "activity '" + j.name + "' result dropped: "
                                + (stopping_ ? "the pool is stopping"
                                             : "the pool is not attached"));
    return;
  }
  wire::ActivityResult msg;
  msg.set_seq(j.seq);
  msg.set_attempt(j.attempt);
  msg.set_run(j.run);
  if (err) {
    msg.set_error_code(static_cast<uint32_t>(code_of(err)));
    msg.set_error(describe(err));
  } else {
    msg.set_result_type(std::move(result_type));
    msg.set_result(std::move(result));
  }
  // A result that is not delivered (pool stopping, silo overloaded) is not
  // lost work: the workflow retries the attempt after its start_to_close
  // timeout.
  auto msg_id = "act:" + std::to_string(j.run) + ":" + std::to_string(j.seq)
                + ":" + std::to_string(j.attempt);
  silo_->send_async(j.workflow, msg, std::move(msg_id),
                    [name = j.name](const caf::error& err) {
                      if (err)
                        log(log_level::warning,
                            "activity '" + name
                                + "' result not delivered: " + describe(err));
                    });
}

void activity_pool::monitor() {
  std::unique_lock guard{mtx_};
  // Bounded: each pass handles at most one entry per worker, then sleeps
  // until the earliest heartbeat deadline (or a new attempt starts).
  while (!stopping_) {
    auto now = steady_ms();
    int64_t next = now + limits::activity_monitor_sleep.count();
    if (!silo_ && unattached_since_ms_ != 0 && !warned_unattached_) {
      auto due = unattached_since_ms_ + attach_warning_.count();
      if (due <= now) {
        warned_unattached_ = true;
        log(log_level::warning,
            "activity pool: " + std::to_string(queue_.size())
                + " attempts have waited "
                + std::to_string(now - unattached_since_ms_)
                + " ms for a silo: call activity_pool::attach(silo) once "
                  "silo::start returned (a granary::host::silo_builder does "
                  "it); until then no activity runs");
      } else {
        next = std::min(next, due);
      }
    }
    for (auto i = running_.begin(); i != running_.end();) {
      auto timeout = i->j.heartbeat_timeout_ms;
      if (timeout <= 0 || i->state->abandoned.load()) {
        ++i;
        continue;
      }
      auto due = i->state->last_beat_ms.load() + timeout;
      if (due > now) {
        next = std::min(next, due);
        ++i;
        continue;
      }
      i->state->abandoned = true;
      ++abandoned_;
      log(log_level::warning,
          "activity '" + i->j.name + "' of workflow " + to_string(i->j.workflow)
              + " (seq " + std::to_string(i->j.seq) + ", attempt "
              + std::to_string(i->j.attempt) + ") sent no heartbeat for "
              + std::to_string(timeout) + " ms");
      report(i->j, {}, {},
             make_error(errc::timeout,
                        "attempt " + std::to_string(i->j.attempt)
                            + " sent no heartbeat within heartbeat_timeout of "
                            + std::to_string(timeout) + " ms"));
      ++i;
    }
    monitor_cv_.wait_for(
        guard, std::chrono::milliseconds{std::max<int64_t>(next - now, 1)});
  }
}

void activity_pool::work() {
  for (;;) {
    job j;
    silo* host = nullptr;
    auto state = std::make_shared<detail::attempt_state>();
    {
      std::unique_lock guard{mtx_};
      // Nothing starts before attach (its outcome would have nowhere to
      // go), nor next to an earlier attempt of the same activity.
      auto next = queue_.end();
      cv_.wait(guard, [&] {
        if (stopping_)
          return true;
        if (!silo_)
          return false;
        next = runnable();
        return next != queue_.end();
      });
      if (stopping_)
        return;
      j = std::move(*next);
      queue_.erase(next);
      host = silo_;
      state->last_beat_ms = steady_ms();
      running_.push_back(running{j, state});
      ++started_;
    }
    if (j.heartbeat_timeout_ms > 0)
      monitor_cv_.notify_one();
    auto key = j.idempotency_key.empty()
                   ? activity_idempotency_key(j.workflow, j.run, j.seq)
                   : j.idempotency_key;
    activity_context ctx{j.workflow.key, j.seq, j.attempt,
                         std::move(key), state, host};
    std::string result;
    std::string result_type;
    caf::error err;
    try {
      auto& run = activities_.at(j.name).run;
      err = run(ctx, j.input, result, result_type);
    } catch (const std::exception& e) {
      err = make_error(errc::handler_failed,
                       "activity '" + j.name + "' threw: " + e.what());
    }
    std::lock_guard guard{mtx_};
    running_.erase(
        std::find_if(running_.begin(), running_.end(),
                     [&](const running& r) { return r.state == state; }));
    // This worker looks at the queue again next, so an attempt that waited
    // for this one starts without a notification.
    if (state->abandoned.load())
      continue; // Timed out or cancelled: its outcome is settled already.
    report(j, std::move(result_type), std::move(result), err);
  }
}

} // namespace granary

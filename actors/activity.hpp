#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <caf/expected.hpp>
#include <google/protobuf/message.h>

#include "runtime/error.hpp"
#include "runtime/grain_id.hpp"
#include "runtime/services.hpp"
#include "runtime/sys.hpp"

namespace granary {

class silo;

namespace detail {

/// Shared between a running attempt and the pool's heartbeat monitor.
struct attempt_state {
  std::atomic<int64_t> last_beat_ms{0};
  std::atomic<bool> abandoned{false};
};

} // namespace detail

/// Format of the idempotency keys of new activities: "<type>/<key>:<seq>"
/// in a workflow's run 0, "<type>/<key>:<run>.<seq>" after; a resource
/// grain's is "<type>/<name>:<generation>".
inline constexpr uint32_t activity_key_format = 1;

/// The idempotency key of the activity at `seq` of run `run` of grain
/// `owner` in key format `format`: `activity_key_format`, or 0, the format
/// without "<type>/" that activities issued before it keep.
std::string activity_idempotency_key(const grain_id& owner, uint32_t run,
                                     uint64_t seq,
                                     uint32_t format = activity_key_format);

/// What an activity attempt knows about itself.
struct activity_context {
  std::string workflow_id;
  uint64_t seq = 0;
  uint32_t attempt = 1;
  /// Stable across attempts: grain type, workflow id and sequence number
  /// (see `activity_idempotency_key`). Pass it to the outside world so that
  /// a retried attempt is not applied twice.
  std::string idempotency_key;
  /// Internal: the attempt's heartbeat record.
  std::shared_ptr<detail::attempt_state> state;
  /// The silo the pool is attached to: activities may call grains through
  /// it (transient calls, durable sends). Null only in unit tests that
  /// build a context by hand.
  silo* host = nullptr;

  /// The services of the silo (see `service_registry`); empty without one.
  const service_registry& services() const;

  /// Tells the pool that the attempt makes progress; call it more often
  /// than the activity's `heartbeat_timeout`. Returns false once the
  /// attempt is abandoned (its heartbeat timed out, its workflow was
  /// cancelled, or the pool is stopping): stop work and return an error;
  /// the result would be ignored anyway.
  bool heartbeat() const;

  /// True once the attempt is abandoned (see `heartbeat`).
  bool abandoned() const {
    return state && state->abandoned.load();
  }
};

/// Retry policy and timeout of an activity.
struct activity_options {
  std::chrono::milliseconds initial_interval{1'000};
  double backoff_coefficient = 2.0;
  std::chrono::milliseconds max_interval{100'000};
  /// Attempts before the activity fails the awaiting workflow code.
  uint32_t max_attempts = 10;
  /// Error kinds that fail at once, without retry.
  std::vector<errc> non_retryable;
  /// An attempt that has not finished after this long counts as failed
  /// and is abandoned (see `activity_pool::abandon`). Must be positive.
  std::chrono::milliseconds start_to_close{60'000};
  /// When positive, an attempt that does not call
  /// `activity_context::heartbeat` for this long counts as failed (a hung
  /// call is noticed long before `start_to_close`). Checked in memory by the
  /// pool: heartbeats cost no write.
  std::chrono::milliseconds heartbeat_timeout{0};

  /// Checks every value; the error names the field and the problem.
  caf::error validate() const;
};

/// Counters of an activity pool.
struct activity_pool_stats {
  /// Attempts waiting: for a worker, for `attach`, or for an abandoned
  /// attempt of the same activity to return.
  size_t queued = 0;
  /// Attempts on a worker thread (abandoned ones included).
  size_t running = 0;
  /// Attempts started since the pool was built.
  uint64_t started = 0;
  /// Running attempts abandoned (timed out, cancelled, pool stopping).
  uint64_t abandoned = 0;
  /// Outcomes of attempts that were not abandoned but could not be sent:
  /// the pool was stopping or had no silo.
  uint64_t dropped_results = 0;
};

/// Runs activities (calls to the outside world) off the silo's threads on
/// a bounded pool, and reports each attempt's outcome to its workflow as a
/// durable message. Execution is at least once; recording is exactly once.
/// No attempt starts before `attach`, so that no outcome is lost while the
/// silo starts (recovery submits attempts before `silo::start` returns).
/// Two attempts of one activity never run at the same time on one pool: an
/// attempt waits in the queue while an earlier, abandoned one still runs.
class activity_pool {
public:
  /// One attempt to run.
  struct job {
    grain_id workflow;
    uint64_t seq = 0;
    uint32_t attempt = 1;
    std::string name;
    std::string input;
    /// The workflow's continue-as-new run the attempt belongs to.
    uint32_t run = 0;
    /// 0: no heartbeat required.
    int64_t heartbeat_timeout_ms = 0;
    /// Passed to the activity; empty: `activity_idempotency_key` of
    /// `workflow`, `run` and `seq` in the current format.
    std::string idempotency_key;
    /// When true, the attempt waits while any other attempt of the same
    /// grain runs (one reconcile per resource at a time); otherwise only
    /// while an attempt of the same run and seq runs.
    bool per_grain = false;
  };

  /// Starts `threads` workers; at most `max_queue` attempts wait.
  activity_pool(size_t threads, size_t max_queue,
                std::chrono::milliseconds attach_warning
                = std::chrono::seconds{5});

  /// Stops the workers (see `stop`).
  ~activity_pool();

  activity_pool(const activity_pool&) = delete;
  activity_pool& operator=(const activity_pool&) = delete;

  /// Registers activity `name`: `fn(const activity_context&, const In&)`
  /// returns `caf::expected<Out>`. Register before the silo starts.
  template <class In, class Out, class F>
  caf::error add(std::string name, F fn) {
    static_assert(std::is_base_of_v<google::protobuf::Message, In>);
    static_assert(std::is_base_of_v<google::protobuf::Message, Out>);
    if (name.empty() || activities_.count(name) > 0)
      return make_error(errc::invalid_argument,
                        "activity name '" + name
                            + "' is empty or registered twice");
    activities_.emplace(
        std::move(name),
        entry{std::string{In::descriptor()->full_name()},
              [fn = std::move(fn)](const activity_context& ctx,
                                   const std::string& input, std::string& out,
                                   std::string& out_type) -> caf::error {
                In in;
                if (!in.ParseFromString(input))
                  return make_error(
                      errc::malformed_message,
                      "activity input does not parse as "
                          + std::string{In::descriptor()->full_name()});
                caf::expected<Out> res = fn(ctx, in);
                if (!res)
                  return std::move(res.error());
                out_type = std::string{Out::descriptor()->full_name()};
                res->SerializeToString(&out);
                return caf::none;
              }});
    return caf::none;
  }

  /// Where results go; call once `silo::start` returned. Attempts
  /// submitted before (by the silo's recovery) wait in the queue until
  /// then.
  void attach(silo& s);

  /// Queues an attempt; `overloaded` when the queue is full, and
  /// `invalid_argument` for an unknown activity or input type.
  caf::error submit(job j, const std::string& input_type);

  /// Abandons the attempts of run `run` of `workflow` (the workflow was
  /// cancelled): queued ones are dropped, running ones are marked so that
  /// their `heartbeat()` returns false and their results are dropped.
  void abandon(const grain_id& workflow, uint32_t run);

  /// Abandons attempt `attempt` of the activity at `seq` of run `run` of
  /// `owner` (its start-to-close timeout fired) in the same way. A running
  /// C++ function cannot be stopped: the next attempt of that activity
  /// waits until this one returns.
  void abandon(const grain_id& owner, uint32_t run, uint64_t seq,
               uint32_t attempt);

  /// Returns current counters.
  activity_pool_stats stats() const;

  /// Abandons running attempts, waits for them to return and stops the
  /// workers. Their outcomes and the attempts still queued are dropped:
  /// their grains retry them when their partitions are recovered (see
  /// `turn::set_watchdog`), or after their timeout.
  void stop();

private:
  using runner = std::function<caf::error(
      const activity_context&, const std::string&, std::string&, std::string&)>;

  struct entry {
    std::string input_type;
    runner run;
  };

  // An attempt on a worker thread.
  struct running {
    job j;
    std::shared_ptr<detail::attempt_state> state;
  };

  void work();
  // Drops the queued attempts `which` selects and marks the running ones
  // abandoned.
  void abandon_if(const std::function<bool(const job&)>& which);
  // The first queued job that may start now, or `queue_.end()`.
  std::deque<job>::iterator runnable();
  // Fails attempts whose heartbeat is overdue.
  void monitor();
  // Sends an attempt's outcome to its workflow; called with `mtx_` held.
  // The worker and the monitor use the same message id, so only the first
  // of the two outcomes of an attempt is recorded.
  void report(const job& j, std::string result_type, std::string result,
              const caf::error& err);

  std::map<std::string, entry> activities_;
  size_t max_queue_;
  mutable sys::mutex mtx_;
  sys::condition_variable cv_;
  std::deque<job> queue_;
  // At most one entry per worker thread.
  std::vector<running> running_;
  sys::condition_variable monitor_cv_;
  bool stopping_ = false;
  silo* silo_ = nullptr;
  uint64_t started_ = 0;
  uint64_t abandoned_ = 0;
  uint64_t dropped_ = 0;
  // Attempts that wait this long for `attach` get one warning: a pool
  // that is never attached would hang its workflows silently.
  std::chrono::milliseconds attach_warning_;
  // When the first attempt queued before `attach`; 0: none.
  int64_t unattached_since_ms_ = 0;
  bool warned_unattached_ = false;
  std::vector<sys::thread> threads_;
  sys::thread monitor_;
};

} // namespace granary

#pragma once

#include <chrono>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include <caf/expected.hpp>
#include <google/protobuf/message.h>

#include "actors/activity.hpp"
#include "granary.pb.h"
#include "runtime/error.hpp"
#include "runtime/grain_id.hpp"
#include "runtime/limits.hpp"
#include "runtime/turn.hpp"
#include "workflow.pb.h"

namespace granary {

namespace detail {

/// Thrown into workflow code when a replayed command does not match the
/// journal; it unwinds the coroutine without touching any data.
struct workflow_halt : std::exception {
  const char* what() const noexcept override {
    return "workflow halted: non-determinism";
  }
};

/// Thrown in replay-only mode when the code reaches the end of the
/// journal: everything before it replayed deterministically.
struct replay_end : std::exception {
  const char* what() const noexcept override {
    return "replay reached the end of the journal";
  }
};

} // namespace detail

/// The journal and command machinery of one workflow activation. Not a
/// template, so that it is compiled once; `workflow<...>` drives it.
class workflow_engine {
public:
  /// Default hard limit on journal entries of one run: reaching it fails
  /// the run (continue-as-new bounds real workflows long before this).
  static constexpr size_t default_journal_limit = limits::default_journal_limit;

  /// Default journal size at which a warning suggests continue-as-new.
  static constexpr size_t default_journal_warn = limits::default_journal_warn;

  /// Sets the warning threshold and the hard limit of one run's journal.
  void set_journal_limits(size_t warn, size_t limit) {
    journal_warn_ = warn;
    journal_limit_ = limit == 0 ? 1 : limit;
  }

  /// Non-empty once the run hit the journal's hard limit: why it fails.
  const std::string& fatal() const {
    return fatal_;
  }

  /// Binds the engine to the grain's state, which it journals into.
  void bind(wire::WorkflowState* state, const grain_id* self) {
    state_ = state;
    self_ = self;
  }

  /// Starts a replay from sequence number 0.
  void rewind() {
    next_seq_ = 0;
    parked_ = {};
    waiting_.clear();
    continue_input_.reset();
    halted_.clear();
    fatal_.clear();
  }

  /// In replay-only mode the engine never extends the journal: reaching
  /// its end stops the code (see `check_replay`). With `payloads`, a
  /// replayed call, child start or activity whose request differs from
  /// the journaled one is a mismatch too (live replay only logs it).
  void set_replay_only(bool value, bool payloads = true) {
    replay_only_ = value;
    compare_payloads_ = payloads;
  }

  /// True once replay-only code reached the end of the journal.
  bool reached_end() const {
    return reached_end_;
  }

  /// Returns the parked coroutine if what it waits for is complete.
  std::coroutine_handle<> take_parked_if_ready() {
    return wake();
  }

  /// The next sequence number the code will use.
  uint64_t position() const {
    return next_seq_;
  }

  /// The turn during which commands are issued; null outside turns.
  void set_turn(turn* t) {
    turn_ = t;
  }

  /// Called when the code returned: a journal with commands past the
  /// code's last one was written by other code, a non-determinism error
  /// (then `halted` says so and this returns false).
  bool check_finished();

  /// Non-empty after a non-determinism error: what did not match.
  const std::string& halted() const {
    return halted_;
  }

  // -- commands (called by workflow_context) ---------------------------------

  /// Journals a grain call; returns its sequence number.
  uint64_t call(const grain_id& to, const google::protobuf::Message& msg);

  /// Journals a durable sleep; returns its sequence number.
  uint64_t sleep(std::chrono::milliseconds duration);

  /// Journaled wall-clock time.
  int64_t now();

  /// Journaled random number.
  uint64_t random();

  /// Journals an activity and schedules its first attempt.
  uint64_t activity(const std::string& name,
                    const google::protobuf::Message& input,
                    const activity_options& opts);

  /// Journals a child workflow start; its result completes the entry.
  uint64_t child(const grain_id& child, const google::protobuf::Message& input);

  /// Records a child's result; returns the coroutine to resume, if any.
  std::coroutine_handle<> complete_child(const wire::ChildResult& res);

  /// Completes every pending command with `errc::cancelled` and cancels
  /// children; returns the coroutine to resume, if any.
  std::coroutine_handle<> cancel(const std::string& reason);

  /// Ends this run and starts a new one with `input` and an empty journal;
  /// returns the value the code must `co_return`.
  caf::error continue_as_new(const google::protobuf::Message& input);

  /// The new run's input, once the code continued as new.
  const std::optional<std::string>& continue_input() const {
    return continue_input_;
  }

  /// Journals a wait for signal `name` of type `payload_type`; consumes a
  /// buffered signal at once. A positive `timeout` bounds the wait.
  uint64_t wait_signal(const std::string& name, const std::string& payload_type,
                       std::chrono::milliseconds timeout);

  /// Delivers a signal: completes the oldest wait for it, or buffers it.
  /// Returns the coroutine to resume, or `overloaded` when the buffer is
  /// full.
  caf::expected<std::coroutine_handle<>> signal(const wire::Signal& sig);

  /// Handles the timeout of the wait at `seq`.
  std::coroutine_handle<> signal_timeout(const wire::SignalTimeout& t);

  /// Upper bound on buffered, not yet awaited signals.
  static constexpr int max_pending_signals = limits::max_pending_signals;

  /// Upper bounds of published query values.
  static constexpr int max_published = limits::max_published;
  static constexpr size_t max_published_bytes = limits::max_published_bytes;

  /// The update id carried by the signal that completed the wait at `seq`.
  std::string update_id_of(uint64_t seq) const;

  /// Answers update `id`: publishes `msg` under "update:<id>" and, when a
  /// grain's durable call waits for it, replies to that call.
  caf::error reply_update(const std::string& id,
                          const google::protobuf::Message& msg);

  /// Upper bound on updates whose callers wait for an answer.
  static constexpr int max_pending_updates = limits::max_pending_updates;

  /// Upper bound of `WorkflowInfo.waiting`.
  static constexpr int max_waiting_listed = 64;

  /// Fills `out.waiting` and `out.waiting_count` from the open commands
  /// of `st`'s journal, oldest first, without replaying the code.
  static void describe_waiting(const wire::WorkflowState& st,
                               wire::WorkflowInfo& out);

  /// Stores `value` under `name` for queries (see workflow_context::publish).
  caf::error publish(const std::string& name,
                     const google::protobuf::Message& value);

  /// Journaled version marker (see workflow_context::version).
  int64_t version(const std::string& change_id, int64_t min, int64_t max);

  /// Looks up the side effect at the next sequence number: returns its
  /// entry if it was recorded, or null when `record_side_effect` must run.
  const wire::JournalEntry* replay_side_effect(const std::string& name,
                                               const std::string& type);

  /// Records the outcome of a side effect that just ran.
  void record_side_effect(const std::string& name, const std::string& type,
                          const google::protobuf::Message* value,
                          const caf::error& err);

  // -- completion ------------------------------------------------------------

  /// True when the command at `seq` has its result.
  bool completed(uint64_t seq) const;

  /// Remembers the coroutine waiting for `seq`.
  void park(uint64_t seq, std::coroutine_handle<> h) {
    park(std::vector<uint64_t>{seq}, true, h);
  }

  /// Remembers the coroutine waiting for all (or any) of `seqs`.
  void park(std::vector<uint64_t> seqs, bool all, std::coroutine_handle<> h) {
    waiting_ = std::move(seqs);
    wait_all_ = all;
    parked_ = h;
  }

  /// Index in `seqs` of the command that completed first, by journaled
  /// completion order (so replay agrees); `seqs.size()` if none did.
  size_t first_completed(const std::vector<uint64_t>& seqs) const;

  /// The result of the call at `seq`, decoded as `proto`'s type.
  caf::error result_into(uint64_t seq, google::protobuf::Message& out) const;

  /// The error of the command at `seq`, if it failed.
  caf::error error_of(uint64_t seq) const;

  /// Records a reply; returns the coroutine to resume, if it waits for it.
  std::coroutine_handle<> complete_call(const wire::Reply& reply);

  /// Records a timer firing; returns the coroutine to resume, if any.
  std::coroutine_handle<> complete_sleep(const wire::WakeUp& wake);

  /// Starts an attempt on `pool`; returns the coroutine to resume if the
  /// activity failed for good.
  std::coroutine_handle<> run_activity(const wire::RunActivity& run,
                                       activity_pool* pool);

  /// Records an attempt's outcome; retries or completes the activity.
  std::coroutine_handle<> activity_result(const wire::ActivityResult& res);

  /// Handles an attempt's start-to-close timeout, or its watchdog firing
  /// early because the partition was recovered (the attempt was lost with
  /// its silo): abandons the attempt on `pool` and retries or fails.
  std::coroutine_handle<> activity_timeout(const wire::ActivityTimeout& t,
                                           activity_pool* pool);

private:
  // Returns the entry for the next command, appending it when new. Throws
  // workflow_halt when the journal holds a different command there.
  // `payload`, when given, is compared with the journaled request.
  wire::JournalEntry& next(wire::JournalEntry::Kind kind,
                           const std::string& target,
                           const std::string& payload_type, bool& is_new,
                           const google::protobuf::Message* payload = nullptr);

  [[noreturn]] void halt(const wire::JournalEntry& recorded,
                         wire::JournalEntry::Kind kind,
                         const std::string& target,
                         const std::string& payload_type);

  // Replay-only code reached the end of the journal with command `what`:
  // fine for a run that waits there, a mismatch for a finished run.
  [[noreturn]] void end_of_journal(const std::string& what);

  // The message of a mismatch: what differs (at `seq`, when one is
  // named) and what it means for the run: suspended (live) or nothing
  // (offline check).
  std::string mismatch(std::optional<uint64_t> seq,
                       const std::string& what) const;

  // Fails the attempt: schedules the next one (at once when `now`, else
  // after the backoff) or completes with `err`.
  std::coroutine_handle<>
  retry_or_fail(wire::JournalEntry& e, const caf::error& err, bool now = false);

  // Completes the activity `e` with `err`: nothing will retry it.
  std::coroutine_handle<> fail_activity(wire::JournalEntry& e,
                                        const caf::error& err);

  // Completes `e` and returns the coroutine waiting for it, if any.
  std::coroutine_handle<> finish(wire::JournalEntry& e);

  // Clears what describes an activity's current attempt (see WaitingOn).
  static void clear_attempt(wire::JournalEntry& e);

  // The pending entry of `kind` named by a correlation of this run.
  wire::JournalEntry* by_correlation(const std::string& correlation,
                                     wire::JournalEntry::Kind kind);

  // Names timers and correlations "<prefix><run>.<seq>".
  std::string tag(const char* prefix, uint64_t seq) const;

  // Marks `e` completed and numbers its completion.
  void complete(wire::JournalEntry& e);

  // Returns the parked coroutine if what it waits for is now complete.
  std::coroutine_handle<> wake();

  // Sets a durable timer in the current turn; a watchdog also fires when
  // the partition is recovered (see `turn::set_watchdog`). An activity
  // entry whose timer could not be set must be completed with the error:
  // nothing else would ever retry it.
  caf::error timer(const std::string& name, std::chrono::milliseconds delay,
                   const google::protobuf::Message& msg, bool watchdog = false);

  wire::JournalEntry* entry(uint64_t seq);
  const wire::JournalEntry* entry(uint64_t seq) const;

  wire::WorkflowState* state_ = nullptr;
  const grain_id* self_ = nullptr;
  turn* turn_ = nullptr;
  uint64_t next_seq_ = 0;
  std::vector<uint64_t> waiting_;
  bool wait_all_ = true;
  std::coroutine_handle<> parked_;
  std::string halted_;
  std::string fatal_;
  size_t journal_warn_ = default_journal_warn;
  size_t journal_limit_ = default_journal_limit;
  bool replay_only_ = false;
  bool compare_payloads_ = true;
  bool reached_end_ = false;
  std::optional<std::string> continue_input_;
};

} // namespace granary

#include "actors/workflow_engine.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "actors/grain.hpp"
#include "runtime/log.hpp"

namespace granary {

namespace {

const char* kind_name(wire::JournalEntry::Kind kind) {
  switch (kind) {
    case wire::JournalEntry::CALL:
      return "call";
    case wire::JournalEntry::SLEEP:
      return "sleep";
    case wire::JournalEntry::NOW:
      return "now";
    case wire::JournalEntry::RANDOM:
      return "random";
    case wire::JournalEntry::SIDE_EFFECT:
      return "side_effect";
    case wire::JournalEntry::VERSION:
      return "version";
    case wire::JournalEntry::ACTIVITY:
      return "activity";
    case wire::JournalEntry::SIGNAL:
      return "signal";
    case wire::JournalEntry::CHILD:
      return "child";
    default:
      return "unknown";
  }
}

std::string describe_command(wire::JournalEntry::Kind kind,
                             const std::string& target,
                             const std::string& payload_type) {
  std::string out = kind_name(kind);
  out += '(';
  out += target;
  if (!payload_type.empty()) {
    out += ", ";
    out += payload_type;
  }
  out += ')';
  return out;
}

// FNV-1a 64 of `msg`'s deterministic serialization; never 0 (0 marks an
// entry journaled without a hash).
uint64_t hash_of(const google::protobuf::Message& msg) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (auto c : deterministic_bytes(msg)) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return h == 0 ? 1 : h;
}

// SplitMix64: a deterministic function of the run's seed and the sequence
// number, so replay returns the same numbers.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

} // namespace

wire::JournalEntry* workflow_engine::entry(uint64_t seq) {
  if (seq >= static_cast<uint64_t>(state_->journal_size()))
    return nullptr;
  return state_->mutable_journal(static_cast<int>(seq));
}

const wire::JournalEntry* workflow_engine::entry(uint64_t seq) const {
  if (seq >= static_cast<uint64_t>(state_->journal_size()))
    return nullptr;
  return &state_->journal(static_cast<int>(seq));
}

void workflow_engine::halt(const wire::JournalEntry& recorded,
                           wire::JournalEntry::Kind kind,
                           const std::string& target,
                           const std::string& payload_type) {
  halted_ = mismatch(recorded.seq(),
                     "the journal has "
                         + describe_command(recorded.kind(), recorded.target(),
                                            recorded.payload_type())
                         + " but the code now issues "
                         + describe_command(kind, target, payload_type));
  throw detail::workflow_halt{};
}

std::string workflow_engine::mismatch(std::optional<uint64_t> seq,
                                      const std::string& what) const {
  return "workflow " + to_string(*self_) + ": non-determinism"
         + (seq ? " at seq " + std::to_string(*seq) : std::string{}) + ": "
         + what + "; "
         + (replay_only_ ? "(check_replay: nothing ran and nothing was "
                           "changed)"
                         : "the run is suspended and its data is unchanged");
}

bool workflow_engine::check_finished() {
  if (!halted_.empty() || !fatal_.empty()
      || next_seq_ >= static_cast<uint64_t>(state_->journal_size()))
    return halted_.empty();
  halted_ = mismatch(
      std::nullopt, "the code finished at seq " + std::to_string(next_seq_)
                        + " but the journal holds "
                        + std::to_string(state_->journal_size()) + " commands");
  return false;
}

void workflow_engine::end_of_journal(const std::string& what) {
  auto status = state_->status();
  if (status == wire::WorkflowState::COMPLETED
      || status == wire::WorkflowState::FAILED) {
    halted_ = mismatch(
        next_seq_ - 1,
        std::string{"the run "}
            + (status == wire::WorkflowState::COMPLETED ? "completed"
                                                        : "failed")
            + " after " + std::to_string(state_->journal_size())
            + " commands, but the code now issues " + what + " after them");
    throw detail::workflow_halt{};
  }
  reached_end_ = true;
  throw detail::replay_end{};
}

wire::JournalEntry&
workflow_engine::next(wire::JournalEntry::Kind kind, const std::string& target,
                      const std::string& payload_type, bool& is_new,
                      const google::protobuf::Message* payload) {
  if (!halted_.empty() || !fatal_.empty())
    throw detail::workflow_halt{};
  auto seq = next_seq_++;
  auto hash = payload ? hash_of(*payload) : 0;
  if (auto* e = entry(seq)) {
    if (e->kind() != kind || e->target() != target
        || e->payload_type() != payload_type)
      halt(*e, kind, target, payload_type);
    if (hash != 0 && e->payload_hash() != 0 && e->payload_hash() != hash) {
      // The journaled outcome stands either way; a changed request is a
      // compatible change for a live run (as adding a field is), but the
      // replay check reports it: the outcome was for another request.
      auto what = "the code issues "
                  + describe_command(kind, target, payload_type)
                  + " with a request that differs from the journaled one";
      if (replay_only_ && compare_payloads_) {
        halted_ = mismatch(seq, what);
        throw detail::workflow_halt{};
      }
      if (!replay_only_)
        log(log_level::warning,
            "workflow " + to_string(*self_) + ": at seq " + std::to_string(seq)
                + " " + what
                + "; the journaled outcome stands (check_replay reports "
                  "this)");
    }
    is_new = false;
    return *e;
  }
  if (replay_only_)
    end_of_journal(describe_command(kind, target, payload_type));
  if (seq == journal_warn_)
    log(log_level::warning,
        "workflow " + to_string(*self_) + " has " + std::to_string(seq)
            + " journal entries; the run fails at "
            + std::to_string(journal_limit_) + ": use continue-as-new");
  if (seq >= journal_limit_) {
    fatal_ = "workflow " + to_string(*self_) + " reached its journal limit of "
             + std::to_string(journal_limit_)
             + " entries; use continue-as-new to bound long-lived workflows";
    throw detail::workflow_halt{};
  }
  auto* e = state_->add_journal();
  e->set_seq(seq);
  e->set_kind(kind);
  e->set_target(target);
  e->set_payload_type(payload_type);
  e->set_payload_hash(hash);
  is_new = true;
  return *e;
}

uint64_t workflow_engine::call(const grain_id& to,
                               const google::protobuf::Message& msg) {
  bool is_new = false;
  auto& e = next(wire::JournalEntry::CALL, to_string(to),
                 msg.GetDescriptor()->full_name(), is_new, &msg);
  if (is_new) {
    caf::error err;
    if (!turn_)
      err = make_error(errc::invalid_argument,
                       "workflow command issued outside a turn");
    else
      err = turn_->call(to, msg, tag("", e.seq()));
    if (err) {
      // Journaled as the command's outcome, so replay sees the same error.
      complete(e);
      e.set_error_code(static_cast<uint32_t>(code_of(err)));
      e.set_error(describe(err));
    }
  }
  return e.seq();
}

uint64_t workflow_engine::sleep(std::chrono::milliseconds duration) {
  bool is_new = false;
  auto& e = next(wire::JournalEntry::SLEEP, std::to_string(duration.count()),
                 {}, is_new);
  if (is_new) {
    wire::WakeUp wake;
    wake.set_seq(e.seq());
    wake.set_run(state_->run());
    caf::error err;
    if (!turn_) {
      err = make_error(errc::invalid_argument,
                       "workflow command issued outside a turn");
    } else {
      e.set_due_ms(turn_->now_ms() + duration.count());
      err = turn_->set_timer(tag("wf-sleep-", e.seq()), duration, wake);
    }
    if (err) {
      complete(e);
      e.set_error_code(static_cast<uint32_t>(code_of(err)));
      e.set_error(describe(err));
    }
  }
  return e.seq();
}

std::string workflow_engine::tag(const char* prefix, uint64_t seq) const {
  return prefix + std::to_string(state_->run()) + "." + std::to_string(seq);
}

uint64_t workflow_engine::child(const grain_id& child,
                                const google::protobuf::Message& input) {
  bool is_new = false;
  auto& e = next(wire::JournalEntry::CHILD, to_string(child),
                 input.GetDescriptor()->full_name(), is_new, &input);
  if (is_new) {
    wire::StartChild start;
    start.set_input_type(input.GetDescriptor()->full_name());
    input.SerializeToString(start.mutable_input());
    start.set_parent_type(self_->type);
    start.set_parent_key(self_->key);
    start.set_correlation(tag("", e.seq()));
    caf::error err;
    if (!turn_)
      err = make_error(errc::invalid_argument,
                       "workflow command issued outside a turn");
    else
      err = turn_->send(child, start);
    if (err) {
      complete(e);
      e.set_error_code(static_cast<uint32_t>(code_of(err)));
      e.set_error(describe(err));
    }
  }
  return e.seq();
}

std::coroutine_handle<>
workflow_engine::complete_child(const wire::ChildResult& res) {
  auto* e = by_correlation(res.correlation(), wire::JournalEntry::CHILD);
  if (!e)
    return {};
  complete(*e);
  if (res.error_code() != 0) {
    e->set_error_code(res.error_code());
    e->set_error(res.error());
  } else {
    e->set_result_type(res.output_type());
    e->set_result(res.output());
  }
  return wake();
}

std::coroutine_handle<> workflow_engine::cancel(const std::string& reason) {
  auto why = "workflow " + to_string(*self_) + " cancelled: " + reason;
  for (auto& e : *state_->mutable_journal()) {
    if (e.completed())
      continue;
    complete(e);
    e.set_error_code(static_cast<uint32_t>(errc::cancelled));
    e.set_error(why);
    if (!turn_)
      continue;
    switch (e.kind()) {
      case wire::JournalEntry::SLEEP:
        static_cast<void>(turn_->cancel_timer(tag("wf-sleep-", e.seq())));
        break;
      case wire::JournalEntry::ACTIVITY:
        clear_attempt(e);
        static_cast<void>(turn_->cancel_timer(tag("wf-act-", e.seq())));
        static_cast<void>(turn_->cancel_timer(tag("wf-act-timeout-", e.seq())));
        break;
      case wire::JournalEntry::SIGNAL:
        static_cast<void>(turn_->cancel_timer(tag("wf-sig-timeout-", e.seq())));
        break;
      case wire::JournalEntry::CHILD: {
        // Type names contain no '/', so the first one splits the id.
        auto slash = e.target().find('/');
        if (slash == std::string::npos)
          break;
        wire::CancelWorkflow c;
        c.set_reason("parent " + to_string(*self_) + " was cancelled");
        grain_id child{e.target().substr(0, slash),
                       e.target().substr(slash + 1)};
        if (auto err = turn_->send(child, c))
          log(log_level::error,
              "cancelling child " + e.target() + " failed: " + describe(err));
        break;
      }
      default:
        break;
    }
  }
  return wake();
}

caf::error
workflow_engine::continue_as_new(const google::protobuf::Message& input) {
  if (input.GetDescriptor()->full_name() != state_->input_type())
    return make_error(errc::invalid_argument,
                      "continue_as_new needs a " + state_->input_type()
                          + ", got " + input.GetDescriptor()->full_name());
  continue_input_.emplace();
  input.SerializeToString(&*continue_input_);
  return make_error(errc::continued_as_new, "run "
                                                + std::to_string(state_->run())
                                                + " continued as new");
}

void workflow_engine::complete(wire::JournalEntry& e) {
  if (e.completed())
    return;
  e.set_completed(true);
  state_->set_completions(state_->completions() + 1);
  e.set_completed_order(state_->completions());
}

std::coroutine_handle<> workflow_engine::wake() {
  if (!parked_)
    return {};
  size_t done = 0;
  for (auto seq : waiting_)
    if (completed(seq))
      ++done;
  bool ready = wait_all_ ? done == waiting_.size() : done > 0;
  if (!ready)
    return {};
  waiting_.clear();
  return std::exchange(parked_, {});
}

size_t
workflow_engine::first_completed(const std::vector<uint64_t>& seqs) const {
  size_t best = seqs.size();
  uint64_t best_order = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    auto* e = entry(seqs[i]);
    if (e && e->completed()
        && (best == seqs.size() || e->completed_order() < best_order)) {
      best = i;
      best_order = e->completed_order();
    }
  }
  return best;
}

uint64_t workflow_engine::activity(const std::string& name,
                                   const google::protobuf::Message& input,
                                   const activity_options& opts) {
  bool is_new = false;
  auto& e = next(wire::JournalEntry::ACTIVITY, name,
                 input.GetDescriptor()->full_name(), is_new, &input);
  if (is_new) {
    input.SerializeToString(e.mutable_input());
    auto& o = *e.mutable_activity();
    o.set_initial_interval_ms(opts.initial_interval.count());
    o.set_backoff_coefficient(opts.backoff_coefficient);
    o.set_max_interval_ms(opts.max_interval.count());
    o.set_max_attempts(std::max<uint32_t>(opts.max_attempts, 1));
    for (auto code : opts.non_retryable)
      o.add_non_retryable(to_string(code));
    o.set_start_to_close_ms(opts.start_to_close.count());
    o.set_heartbeat_timeout_ms(opts.heartbeat_timeout.count());
    o.set_key_format(activity_key_format);
    e.set_value(1);
    e.set_due_ms(turn_ ? turn_->now_ms() : 0);
    if (auto err = opts.validate()) {
      fail_activity(e, make_error(errc::invalid_argument,
                                  "activity '" + name + "': " + describe(err)));
      return e.seq();
    }
    wire::RunActivity run;
    run.set_seq(e.seq());
    run.set_run(state_->run());
    run.set_attempt(1);
    // Without its timer the entry would stay open for ever.
    if (auto err
        = timer(tag("wf-act-", e.seq()), std::chrono::milliseconds{0}, run))
      fail_activity(e,
                    make_error(code_of(err), "activity '" + name
                                                 + "' could not be scheduled: "
                                                 + describe(err)));
  }
  return e.seq();
}

caf::error workflow_engine::timer(const std::string& name,
                                  std::chrono::milliseconds delay,
                                  const google::protobuf::Message& msg,
                                  bool watchdog) {
  caf::error err;
  if (!turn_)
    err = make_error(errc::invalid_argument, "timer set outside a turn");
  else if (watchdog)
    err = turn_->set_watchdog(name, delay, msg);
  else
    err = turn_->set_timer(name, delay, msg);
  if (err)
    log(log_level::error, "workflow " + to_string(*self_) + ": timer " + name
                              + " not set: " + describe(err));
  return err;
}

void workflow_engine::clear_attempt(wire::JournalEntry& e) {
  // Only an open activity is described by these; the journal keeps what
  // the run needs to replay.
  e.clear_due_ms();
  e.clear_running();
  e.clear_last_error_code();
  e.clear_last_error();
}

std::coroutine_handle<> workflow_engine::finish(wire::JournalEntry& e) {
  complete(e);
  clear_attempt(e);
  if (turn_)
    static_cast<void>(turn_->cancel_timer(tag("wf-act-timeout-", e.seq())));
  return wake();
}

std::coroutine_handle<> workflow_engine::fail_activity(wire::JournalEntry& e,
                                                       const caf::error& err) {
  e.set_error_code(static_cast<uint32_t>(code_of(err)));
  e.set_error(describe(err));
  return finish(e);
}

std::coroutine_handle<> workflow_engine::retry_or_fail(wire::JournalEntry& e,
                                                       const caf::error& err,
                                                       bool now) {
  auto& o = e.activity();
  auto attempt = static_cast<uint32_t>(e.value());
  auto kind = std::string{to_string(code_of(err))};
  bool permanent
      = std::find(o.non_retryable().begin(), o.non_retryable().end(), kind)
        != o.non_retryable().end();
  if (permanent || attempt >= o.max_attempts()) {
    e.set_error_code(static_cast<uint32_t>(code_of(err)));
    e.set_error("activity '" + e.target() + "' failed after "
                + std::to_string(attempt) + " attempt(s)"
                + (permanent ? " (non-retryable)" : "") + ": " + describe(err));
    return finish(e);
  }
  auto delay = static_cast<double>(o.initial_interval_ms())
               * std::pow(o.backoff_coefficient(), attempt - 1);
  delay = std::min(delay, static_cast<double>(o.max_interval_ms()));
  // Journals of older versions were not validated: never a negative delay.
  delay = now || !(delay > 0) ? 0 : delay;
  e.set_value(attempt + 1);
  e.set_running(false);
  e.set_last_error_code(static_cast<uint32_t>(code_of(err)));
  e.set_last_error(describe(err));
  e.set_due_ms(turn_ ? turn_->now_ms() + static_cast<int64_t>(delay) : 0);
  if (turn_)
    static_cast<void>(turn_->cancel_timer(tag("wf-act-timeout-", e.seq())));
  wire::RunActivity run;
  run.set_seq(e.seq());
  run.set_run(state_->run());
  run.set_attempt(attempt + 1);
  if (auto terr
      = timer(tag("wf-act-", e.seq()),
              std::chrono::milliseconds{static_cast<int64_t>(delay)}, run))
    return fail_activity(
        e, make_error(code_of(terr), "activity '" + e.target() + "' attempt "
                                         + std::to_string(attempt) + " failed ("
                                         + describe(err)
                                         + ") and no retry could be scheduled: "
                                         + describe(terr)));
  return {};
}

std::coroutine_handle<>
workflow_engine::run_activity(const wire::RunActivity& run,
                              activity_pool* pool) {
  auto* e = run.run() == state_->run() ? entry(run.seq()) : nullptr;
  if (!e || e->kind() != wire::JournalEntry::ACTIVITY || e->completed()
      || e->value() != run.attempt())
    return {}; // Stale.
  if (!pool)
    return fail_activity(
        *e, make_error(errc::invalid_config,
                       "no activity pool: register the workflow with one"));
  if (!turn_)
    return fail_activity(*e, make_error(errc::invalid_argument,
                                        "activity attempt outside a turn"));
  // The watchdog goes first: an attempt on the pool must always have one.
  // It fires at start_to_close, or as soon as the partition is recovered
  // (the attempt died with its silo, or runs on the partition's old owner).
  auto start_to_close = std::max<int64_t>(e->activity().start_to_close_ms(), 1);
  wire::ActivityTimeout timeout;
  timeout.set_seq(e->seq());
  timeout.set_run(state_->run());
  timeout.set_attempt(run.attempt());
  timeout.set_due_ms(turn_->now_ms() + start_to_close);
  auto timeout_name = tag("wf-act-timeout-", e->seq());
  if (auto err = timer(timeout_name, std::chrono::milliseconds{start_to_close},
                       timeout, true))
    return fail_activity(*e, err);
  activity_pool::job j{*self_,
                       e->seq(),
                       run.attempt(),
                       e->target(),
                       e->input(),
                       state_->run(),
                       e->activity().heartbeat_timeout_ms(),
                       activity_idempotency_key(*self_, state_->run(), e->seq(),
                                                e->activity().key_format())};
  if (auto err = pool->submit(std::move(j), e->payload_type())) {
    static_cast<void>(turn_->cancel_timer(timeout_name));
    // A full or stopping pool is transient (a graceful shutdown stops the
    // pool first); only a wrong activity name or input type is final.
    if (code_of(err) != errc::overloaded && code_of(err) != errc::silo_stopped)
      return fail_activity(*e, err);
    // The pool is full: try this attempt again shortly.
    constexpr std::chrono::milliseconds pool_retry{100};
    if (auto terr = timer(tag("wf-act-", e->seq()), pool_retry, run))
      return fail_activity(*e, terr);
    e->set_running(false);
    e->set_due_ms(turn_->now_ms() + pool_retry.count());
    return {};
  }
  e->set_running(true);
  e->set_due_ms(timeout.due_ms());
  return {};
}

std::coroutine_handle<>
workflow_engine::activity_result(const wire::ActivityResult& res) {
  auto* e = res.run() == state_->run() ? entry(res.seq()) : nullptr;
  if (!e || e->kind() != wire::JournalEntry::ACTIVITY || e->completed()
      || e->value() != res.attempt())
    return {}; // Stale or duplicate.
  if (res.error_code() == 0) {
    e->set_result_type(res.result_type());
    e->set_result(res.result());
    return finish(*e);
  }
  return retry_or_fail(
      *e, make_error(static_cast<errc>(res.error_code()), res.error()));
}

std::coroutine_handle<>
workflow_engine::activity_timeout(const wire::ActivityTimeout& t,
                                  activity_pool* pool) {
  // Whatever the journal says, that attempt must not go on running next to
  // a retry: its heartbeat() turns false and its result is ignored.
  if (pool && t.run() == state_->run())
    pool->abandon(*self_, t.run(), t.seq(), t.attempt());
  auto* e = t.run() == state_->run() ? entry(t.seq()) : nullptr;
  if (!e || e->kind() != wire::JournalEntry::ACTIVITY || e->completed()
      || e->value() != t.attempt())
    return {};
  // Before its due time, the watchdog fired because the partition was
  // recovered: the attempt was lost, and the retry need not wait.
  if (turn_ && t.due_ms() > 0 && turn_->now_ms() < t.due_ms())
    return retry_or_fail(
        *e,
        make_error(errc::timeout,
                   "attempt " + std::to_string(t.attempt())
                       + " was lost: its silo stopped or its partition moved "
                         "before it reported"),
        true);
  return retry_or_fail(
      *e, make_error(errc::timeout,
                     "attempt " + std::to_string(t.attempt())
                         + " exceeded start_to_close of "
                         + std::to_string(e->activity().start_to_close_ms())
                         + " ms"));
}

uint64_t workflow_engine::wait_signal(const std::string& name,
                                      const std::string& payload_type,
                                      std::chrono::milliseconds timeout) {
  bool is_new = false;
  auto& e = next(wire::JournalEntry::SIGNAL, name, payload_type, is_new);
  if (!is_new)
    return e.seq();
  auto& pending = *state_->mutable_pending_signals();
  for (int i = 0; i < pending.size(); ++i) {
    if (pending[i].name() != name)
      continue;
    complete(e);
    e.set_result_type(pending[i].payload_type());
    e.set_result(pending[i].payload());
    e.set_update_id(pending[i].update_id());
    pending.DeleteSubrange(i, 1);
    return e.seq();
  }
  if (timeout.count() > 0) {
    wire::SignalTimeout t;
    t.set_seq(e.seq());
    t.set_run(state_->run());
    if (!timer(tag("wf-sig-timeout-", e.seq()), timeout, t))
      e.set_due_ms(turn_->now_ms() + timeout.count());
  }
  return e.seq();
}

caf::expected<std::coroutine_handle<>>
workflow_engine::signal(const wire::Signal& sig) {
  // The oldest open wait for this name takes it.
  for (auto& e : *state_->mutable_journal()) {
    if (e.kind() != wire::JournalEntry::SIGNAL || e.completed()
        || e.target() != sig.name())
      continue;
    complete(e);
    e.set_result_type(sig.payload_type());
    e.set_result(sig.payload());
    e.set_update_id(sig.update_id());
    if (turn_)
      static_cast<void>(turn_->cancel_timer(tag("wf-sig-timeout-", e.seq())));
    return wake();
  }
  if (state_->pending_signals_size() >= max_pending_signals)
    return make_error(errc::overloaded,
                      "workflow " + to_string(*self_) + " holds "
                          + std::to_string(max_pending_signals)
                          + " signals nobody waits for; retry after 1000 ms");
  *state_->add_pending_signals() = sig;
  return std::coroutine_handle<>{};
}

std::coroutine_handle<>
workflow_engine::signal_timeout(const wire::SignalTimeout& t) {
  auto seq = t.seq();
  auto* e = t.run() == state_->run() ? entry(seq) : nullptr;
  if (!e || e->kind() != wire::JournalEntry::SIGNAL || e->completed())
    return {};
  complete(*e);
  e->set_error_code(static_cast<uint32_t>(errc::timeout));
  e->set_error("no signal '" + e->target() + "' arrived in time");
  return wake();
}

int64_t workflow_engine::now() {
  bool is_new = false;
  auto& e = next(wire::JournalEntry::NOW, {}, {}, is_new);
  if (is_new) {
    e.set_value(turn_ ? turn_->now_ms() : 0);
    complete(e);
  }
  return e.value();
}

uint64_t workflow_engine::random() {
  bool is_new = false;
  auto& e = next(wire::JournalEntry::RANDOM, {}, {}, is_new);
  if (is_new) {
    e.set_value(static_cast<int64_t>(mix(state_->random_seed() ^ e.seq())));
    complete(e);
  }
  return static_cast<uint64_t>(e.value());
}

std::string workflow_engine::update_id_of(uint64_t seq) const {
  auto* e = entry(seq);
  return e ? e->update_id() : std::string{};
}

caf::error workflow_engine::reply_update(const std::string& id,
                                         const google::protobuf::Message& msg) {
  // Publishing is idempotent; answering happens once, because the pending
  // record goes in the same commit as the answer (a replay finds none).
  if (auto err = publish("update:" + id, msg))
    return err;
  auto& pending = *state_->mutable_pending_updates();
  auto i = pending.find(id);
  if (i == pending.end())
    return caf::none;
  if (!turn_)
    return make_error(errc::invalid_argument, "update answered outside a turn");
  turn::pending_call call{
      grain_id{i->second.caller_type(), i->second.caller_key()},
      i->second.correlation()};
  pending.erase(i);
  return turn_->answer(call, msg);
}

caf::error workflow_engine::publish(const std::string& name,
                                    const google::protobuf::Message& value) {
  auto& published = *state_->mutable_published();
  if (published.count(name) == 0 && published.size() >= max_published)
    return make_error(errc::overloaded, "workflow " + to_string(*self_)
                                            + " publishes "
                                            + std::to_string(max_published)
                                            + " query values already; '" + name
                                            + "' is not stored");
  if (auto size = value.ByteSizeLong(); size > max_published_bytes)
    return make_error(errc::payload_too_large,
                      "query value '" + name + "' of " + std::to_string(size)
                          + " bytes exceeds "
                          + std::to_string(max_published_bytes));
  auto& slot = published[name];
  slot.set_type(value.GetDescriptor()->full_name());
  value.SerializeToString(slot.mutable_data());
  return caf::none;
}

int64_t workflow_engine::version(const std::string& change_id, int64_t min,
                                 int64_t max) {
  if (!halted_.empty() || !fatal_.empty())
    throw detail::workflow_halt{};
  if (auto* e = entry(next_seq_)) {
    if (e->kind() == wire::JournalEntry::VERSION && e->target() == change_id) {
      ++next_seq_;
      if (e->value() < min || e->value() > max) {
        halted_ = mismatch(
            e->seq(),
            "change '" + change_id + "' was recorded at version "
                + std::to_string(e->value()) + ", outside the supported range ["
                + std::to_string(min) + ", " + std::to_string(max) + "]");
        throw detail::workflow_halt{};
      }
      return e->value();
    }
    // This run passed this point before the change existed: it keeps the
    // old branch, and no sequence number is used.
    return min;
  }
  if (replay_only_)
    end_of_journal("version('" + change_id + "')");
  bool is_new = false;
  auto& e = next(wire::JournalEntry::VERSION, change_id, {}, is_new);
  e.set_value(max);
  complete(e);
  return max;
}

const wire::JournalEntry*
workflow_engine::replay_side_effect(const std::string& name,
                                    const std::string& type) {
  if (!halted_.empty() || !fatal_.empty())
    throw detail::workflow_halt{};
  auto* e = entry(next_seq_);
  if (!e)
    return nullptr;
  bool is_new = false;
  return &next(wire::JournalEntry::SIDE_EFFECT, name, type, is_new);
}

void workflow_engine::record_side_effect(const std::string& name,
                                         const std::string& type,
                                         const google::protobuf::Message* value,
                                         const caf::error& err) {
  bool is_new = false;
  auto& e = next(wire::JournalEntry::SIDE_EFFECT, name, type, is_new);
  complete(e);
  if (err) {
    e.set_error_code(static_cast<uint32_t>(code_of(err)));
    e.set_error(describe(err));
  } else if (value) {
    e.set_result_type(type);
    value->SerializeToString(e.mutable_result());
  }
}

void workflow_engine::describe_waiting(const wire::WorkflowState& st,
                                       wire::WorkflowInfo& out) {
  static const std::string update_prefix = "update:";
  uint64_t open = 0;
  // Bounded by the journal limit of one run.
  for (auto& e : st.journal()) {
    // The other commands complete when they are issued.
    if (e.completed()
        || (e.kind() != wire::JournalEntry::CALL
            && e.kind() != wire::JournalEntry::SLEEP
            && e.kind() != wire::JournalEntry::SIGNAL
            && e.kind() != wire::JournalEntry::CHILD
            && e.kind() != wire::JournalEntry::ACTIVITY))
      continue;
    if (++open > max_waiting_listed)
      continue;
    auto& w = *out.add_waiting();
    w.set_seq(e.seq());
    w.set_target(e.target());
    w.set_payload_type(e.payload_type());
    w.set_due_ms(e.due_ms());
    if (e.kind() == wire::JournalEntry::CALL) {
      w.set_kind(wire::WaitingOn::CALL);
    } else if (e.kind() == wire::JournalEntry::SLEEP) {
      w.set_kind(wire::WaitingOn::TIMER);
    } else if (e.kind() == wire::JournalEntry::CHILD) {
      w.set_kind(wire::WaitingOn::CHILD);
    } else if (e.kind() == wire::JournalEntry::SIGNAL) {
      bool update
          = e.target().compare(0, update_prefix.size(), update_prefix) == 0;
      w.set_kind(update ? wire::WaitingOn::UPDATE : wire::WaitingOn::SIGNAL);
      if (update)
        w.set_target(e.target().substr(update_prefix.size()));
    } else {
      w.set_kind(wire::WaitingOn::ACTIVITY);
      w.set_attempt(static_cast<uint32_t>(e.value()));
      w.set_max_attempts(e.activity().max_attempts());
      w.set_running(e.running());
      w.set_last_error_code(e.last_error_code());
      w.set_last_error(e.last_error());
    }
  }
  out.set_waiting_count(open);
}

bool workflow_engine::completed(uint64_t seq) const {
  auto* e = entry(seq);
  return e && e->completed();
}

caf::error workflow_engine::error_of(uint64_t seq) const {
  auto* e = entry(seq);
  if (!e)
    return make_error(errc::not_found,
                      "no journal entry " + std::to_string(seq));
  if (e->error_code() == 0)
    return caf::none;
  return make_error(static_cast<errc>(e->error_code()), e->error());
}

caf::error workflow_engine::result_into(uint64_t seq,
                                        google::protobuf::Message& out) const {
  if (auto err = error_of(seq))
    return err;
  auto* e = entry(seq);
  auto expected = out.GetDescriptor()->full_name();
  if (e->result_type() != expected)
    return make_error(errc::malformed_message,
                      "result of seq " + std::to_string(seq) + " is '"
                          + e->result_type() + "', the workflow expects '"
                          + expected + "'");
  if (!out.ParseFromString(e->result()))
    return make_error(errc::malformed_message,
                      "result of seq " + std::to_string(seq)
                          + " does not parse as " + expected);
  return caf::none;
}

wire::JournalEntry*
workflow_engine::by_correlation(const std::string& c,
                                wire::JournalEntry::Kind kind) {
  // A correlation is "<run>.<seq>" (see `tag`).
  uint32_t run = 0;
  uint64_t seq = 0;
  auto* end = c.data() + c.size();
  auto r1 = std::from_chars(c.data(), end, run);
  if (r1.ec != std::errc{} || r1.ptr == end || *r1.ptr != '.')
    return nullptr;
  auto r2 = std::from_chars(r1.ptr + 1, end, seq);
  if (r2.ec != std::errc{} || r2.ptr != end || run != state_->run())
    return nullptr; // Malformed, or for an earlier run.
  auto* e = entry(seq);
  if (!e || e->kind() != kind || e->completed())
    return nullptr; // Unknown or duplicate.
  return e;
}

std::coroutine_handle<>
workflow_engine::complete_call(const wire::Reply& reply) {
  auto* e = by_correlation(reply.correlation(), wire::JournalEntry::CALL);
  if (!e)
    return {};
  complete(*e);
  if (reply.error_code() != 0) {
    e->set_error_code(reply.error_code());
    e->set_error(reply.error());
  } else {
    e->set_result_type(reply.payload_type());
    e->set_result(reply.payload());
  }
  return wake();
}

std::coroutine_handle<> workflow_engine::complete_sleep(const wire::WakeUp& w) {
  auto seq = w.seq();
  auto* e = w.run() == state_->run() ? entry(seq) : nullptr;
  if (!e || e->kind() != wire::JournalEntry::SLEEP || e->completed())
    return {};
  complete(*e);
  return wake();
}

} // namespace granary

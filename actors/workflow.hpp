#pragma once

#include <chrono>
#include <coroutine>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "actors/grain.hpp"
#include "actors/task.hpp"
#include "actors/workflow_client.hpp"
#include "actors/workflow_engine.hpp"
#include "actors/workflow_watch.hpp"
#include "runtime/log.hpp"

namespace granary {

/// An update the code took with `wait_update`: answer it with
/// `workflow_context::reply_update`.
template <class R>
struct update_request {
  /// The update's id (stable across redeliveries).
  std::string id;
  /// The request carried by the update.
  R request;
};

/// What a workflow's code may await. Every command is journaled with a
/// sequence number; on replay the journal answers instead of the world.
class workflow_context {
public:
  explicit workflow_context(workflow_engine& engine, const grain_id& self)
      : engine_(&engine)
      , self_(&self) {}

  /// The workflow's id (its grain key).
  const std::string& workflow_id() const {
    return self_->key;
  }

  /// Awaitable result of a journaled command.
  template <class R>
  struct awaiter {
    workflow_engine* engine;
    uint64_t seq;

    bool await_ready() const {
      return engine->completed(seq);
    }

    void await_suspend(std::coroutine_handle<> h) {
      engine->park(seq, h);
    }

    /// The outcome, once complete (after `all` or `any` returned).
    caf::expected<R> result() {
      return await_resume();
    }

    caf::expected<R> await_resume() {
      if constexpr (std::is_void_v<R>) {
        if (auto err = engine->error_of(seq))
          return err;
        return {};
      } else {
        R out;
        if (auto err = engine->result_into(seq, out))
          return err;
        return out;
      }
    }
  };

  /// Awaits several commands issued earlier: all of them, or the first.
  struct group_awaiter {
    workflow_engine* engine;
    std::vector<uint64_t> seqs;
    bool all;

    bool await_ready() const {
      size_t done = 0;
      for (auto seq : seqs)
        if (engine->completed(seq))
          ++done;
      return all ? done == seqs.size() : done > 0 || seqs.empty();
    }

    void await_suspend(std::coroutine_handle<> h) {
      engine->park(seqs, all, h);
    }

    /// `all`: the number of commands; `any`: the index of the first to
    /// complete (the same on replay).
    size_t await_resume() const {
      return all ? seqs.size() : engine->first_completed(seqs);
    }
  };

  /// Resumes once every command in `cmds` completed; read each with
  /// `result()`. Bounded parallelism: issue a window, await it, repeat.
  template <class R>
  group_awaiter all(std::vector<awaiter<R>>& cmds) {
    return group(cmds, true);
  }

  /// Resumes once one command in `cmds` completed and yields its index.
  template <class R>
  group_awaiter any(std::vector<awaiter<R>>& cmds) {
    return group(cmds, false);
  }

  /// Durable call to grain `to`; resumes with its reply of type `R`.
  template <class R>
  awaiter<R> call(const grain_id& to, const google::protobuf::Message& msg) {
    return {engine_, engine_->call(to, msg)};
  }

  /// Durable call to grain `key` of class `G`.
  template <class R, class G>
  awaiter<R> call(const std::string& key,
                  const google::protobuf::Message& msg) {
    return call<R>(id_of<G>(key), msg);
  }

  /// Runs activity `name` on the workflow's activity pool, with retries
  /// per `opts`; resumes with its result of type `R` or its final error.
  template <class R>
  awaiter<R> activity(const std::string& name,
                      const google::protobuf::Message& input,
                      const activity_options& opts = {}) {
    return {engine_, engine_->activity(name, input, opts)};
  }

  /// Waits for signal `name` carrying an `R`; a signal that arrived
  /// earlier is taken at once. With a positive `timeout` the wait fails
  /// with `errc::timeout` when no signal came in time.
  template <class R>
  awaiter<R> wait_signal(const std::string& name,
                         std::chrono::milliseconds timeout
                         = std::chrono::milliseconds{0}) {
    return {engine_,
            engine_->wait_signal(
                name, std::string{R::descriptor()->full_name()}, timeout)};
  }

  /// Awaitable update: like a signal, plus the id to answer it with.
  template <class R>
  struct update_awaiter {
    workflow_engine* engine;
    uint64_t seq;

    bool await_ready() const {
      return engine->completed(seq);
    }

    void await_suspend(std::coroutine_handle<> h) {
      engine->park(seq, h);
    }

    caf::expected<update_request<R>> await_resume() {
      update_request<R> out;
      if (auto err = engine->result_into(seq, out.request))
        return err;
      out.id = engine->update_id_of(seq);
      return out;
    }
  };

  /// Waits for update `name` carrying an `R` (an `Update` message; one
  /// that arrived earlier is taken at once). Answer it with
  /// `reply_update`: a grain's durable call gets the answer as its reply,
  /// a client reads it with `update_workflow`.
  template <class R>
  update_awaiter<R> wait_update(const std::string& name,
                                std::chrono::milliseconds timeout
                                = std::chrono::milliseconds{0}) {
    return {engine_, engine_->wait_signal(
                         "update:" + name,
                         std::string{R::descriptor()->full_name()}, timeout)};
  }

  /// Answers update `u` with `response`, durably and once (a replay does
  /// not answer again).
  template <class R>
  [[nodiscard]] caf::error
  reply_update(const update_request<R>& u,
               const google::protobuf::Message& response) {
    return engine_->reply_update(u.id, response);
  }

  /// Durable timer: resumes after `duration`, across restarts.
  awaiter<void> sleep(std::chrono::milliseconds duration) {
    return {engine_, engine_->sleep(duration)};
  }

  /// Wall-clock milliseconds, recorded once and replayed.
  int64_t now() {
    return engine_->now();
  }

  /// A random number, recorded once and replayed.
  uint64_t random() {
    return engine_->random();
  }

  /// Runs `fn` once and records its result (a protobuf message `R`);
  /// replay returns the recorded result without running `fn`.
  template <class R, class F>
  caf::expected<R> side_effect(const std::string& name, F&& fn) {
    auto type = std::string{R::descriptor()->full_name()};
    if (auto* e = engine_->replay_side_effect(name, type)) {
      if (e->error_code() != 0)
        return make_error(static_cast<errc>(e->error_code()), e->error());
      R out;
      if (!out.ParseFromString(e->result()))
        return make_error(errc::malformed_message,
                          "recorded side effect '" + name
                              + "' does not parse as " + type);
      return out;
    }
    caf::expected<R> res = fn();
    engine_->record_side_effect(name, type, res ? &*res : nullptr,
                                res ? caf::error{} : res.error());
    return res;
  }

  /// Starts child workflow `id` of class `W` with `input`; resumes with
  /// its output of type `R` once it finishes. Cancelling this workflow
  /// cancels the child.
  template <class R, class W>
  awaiter<R> child(const std::string& id,
                   const google::protobuf::Message& input) {
    return {engine_, engine_->child(id_of<W>(id), input)};
  }

  /// Ends this run and starts the workflow again with `next` as input and
  /// an empty journal, under the same id: `co_return
  /// ctx.continue_as_new(next);`. Bounds the journal of long-lived
  /// workflows; buffered signals carry over.
  caf::error continue_as_new(const google::protobuf::Message& next) {
    return engine_->continue_as_new(next);
  }

  /// Publishes `value` under `name` for queries: `QueryWorkflow{name}`
  /// reads the latest value without replaying or waking the code. Not
  /// journaled: replay publishes the same values again. At most
  /// `workflow_engine::max_published` names of up to
  /// `workflow_engine::max_published_bytes` each.
  caf::error publish(const std::string& name,
                     const google::protobuf::Message& value) {
    return engine_->publish(name, value);
  }

  /// Patch point for changing workflow code: runs that passed this point
  /// before `change_id` existed get `min`; new runs get `max`, recorded.
  int64_t version(const std::string& change_id, int64_t min, int64_t max) {
    return engine_->version(change_id, min, max);
  }

private:
  template <class R>
  group_awaiter group(std::vector<awaiter<R>>& cmds, bool all) {
    group_awaiter g{engine_, {}, all};
    g.seqs.reserve(cmds.size());
    for (auto& c : cmds)
      g.seqs.push_back(c.seq);
    return g;
  }

  workflow_engine* engine_;
  const grain_id* self_;
};

/// Per-type settings of a workflow, given at registration.
struct workflow_options {
  /// Journal entries of one run at which a warning suggests
  /// continue-as-new.
  size_t journal_warn = workflow_engine::default_journal_warn;
  /// Journal entries of one run at which the run fails.
  size_t journal_limit = workflow_engine::default_journal_limit;
};

/// Base class of workflows: a grain whose state is its journal and whose
/// entry point is `task<Output> run(workflow_context&, const Input&)`.
/// Sending an `Input` (or a `StartWorkflow`) starts it; a second start
/// returns the existing run (ids are unique) unless it asks to be rejected.
/// `DescribeWorkflow` and `QueryWorkflow` read it without replaying.
template <class Derived, class Input, class Output>
class workflow : public grain<Derived, wire::WorkflowState> {
public:
  using super = grain<Derived, wire::WorkflowState>;
  /// Marks workflow classes (see `is_workflow_v`).
  using workflow_marker = void;

  /// The message that starts a run.
  using input_type = Input;

  /// The message a completed run returns.
  using output_type = Output;

  static void define(handlers<Derived>& h) {
    using info = caf::expected<wire::WorkflowInfo>;
    using result = caf::expected<done>;
    h.on(static_cast<info (Derived::*)(turn&, const Input&)>(
             &workflow::on_start))
        .on(static_cast<result (Derived::*)(turn&, const wire::Reply&)>(
            &workflow::on_reply))
        .on(static_cast<result (Derived::*)(turn&, const wire::WakeUp&)>(
            &workflow::on_wake))
        .on(static_cast<result (Derived::*)(
                turn&, const wire::ResumeWorkflow&)>(&workflow::on_resume))
        .on(static_cast<result (Derived::*)(turn&, const wire::StartChild&)>(
            &workflow::on_start_child))
        .on(static_cast<result (Derived::*)(turn&, const wire::ChildResult&)>(
            &workflow::on_child_result))
        .on(static_cast<result (Derived::*)(
                turn&, const wire::CancelWorkflow&)>(&workflow::on_cancel))
        .on(static_cast<result (Derived::*)(turn&, const wire::Signal&)>(
            &workflow::on_signal))
        .on(static_cast<result (Derived::*)(turn&, const wire::SignalTimeout&)>(
            &workflow::on_signal_timeout))
        .on(static_cast<result (Derived::*)(turn&, const wire::RunActivity&)>(
            &workflow::on_run_activity))
        .on(static_cast<result (Derived::*)(turn&,
                                            const wire::ActivityResult&)>(
            &workflow::on_activity_result))
        .on(static_cast<result (Derived::*)(turn&,
                                            const wire::ActivityTimeout&)>(
            &workflow::on_activity_timeout))
        .on(static_cast<info (Derived::*)(
                turn&, const wire::DescribeWorkflow&)>(&workflow::on_describe))
        .on(static_cast<info (Derived::*)(turn&, const wire::StartWorkflow&)>(
            &workflow::on_start_workflow))
        .on(static_cast<caf::expected<wire::QueryResult> (Derived::*)(
                turn&, const wire::QueryWorkflow&)>(&workflow::on_query))
        .on(static_cast<caf::expected<wire::UpdateAccepted> (Derived::*)(
                turn&, const wire::Update&)>(&workflow::on_update));
  }

  caf::expected<wire::UpdateAccepted> on_update(turn& t,
                                                const wire::Update& m) {
    auto id = m.id().empty() ? t.message_id() : m.id();
    if (id.empty())
      return make_error(errc::invalid_argument,
                        "update '" + m.name() + "' to " + to_string(t.self())
                            + " needs an id when sent by a transient call");
    wire::UpdateAccepted accepted;
    accepted.set_id(id);
    auto status = this->view().status();
    auto call = t.postpone_reply();
    if (status != wire::WorkflowState::RUNNING) {
      if (auto err
          = refuse(t, call,
                   "workflow " + to_string(t.self()) + " is "
                       + wire::WorkflowState::Status_Name(status) + "; update '"
                       + m.name() + "' is not delivered"))
        return err;
      return accepted;
    }
    auto& st = this->state();
    if (call) {
      if (st.pending_updates_size() >= workflow_engine::max_pending_updates)
        return make_error(
            errc::overloaded,
            "workflow " + to_string(t.self()) + " has "
                + std::to_string(workflow_engine::max_pending_updates)
                + " unanswered updates; retry after 1000 ms");
      auto& p = (*st.mutable_pending_updates())[id];
      p.set_caller_type(call->caller.type);
      p.set_caller_key(call->caller.key);
      p.set_correlation(call->correlation);
    }
    wire::Signal sig;
    sig.set_name("update:" + m.name());
    sig.set_payload_type(m.payload_type());
    sig.set_payload(m.payload());
    sig.set_update_id(id);
    if (auto err = deliver_signal(t, sig))
      return err;
    return accepted;
  }

  caf::expected<wire::WorkflowInfo> on_start(turn& t, const Input& in) {
    if (this->view().status() != wire::WorkflowState::NEW)
      return info();
    auto& st = this->state();
    st.set_status(wire::WorkflowState::RUNNING);
    st.set_input_type(std::string{Input::descriptor()->full_name()});
    in.SerializeToString(st.mutable_input());
    st.set_start_msg_id(t.message_id());
    st.set_random_seed(stable_hash(grain_id{t.message_id(), t.self().key}));
    advance(t, {});
    auto out = info();
    out.set_started(true);
    return out;
  }

  caf::expected<wire::WorkflowInfo>
  on_start_workflow(turn& t, const wire::StartWorkflow& m) {
    auto in = parse_input(t, m.input_type(), m.input());
    if (!in)
      return std::move(in.error());
    if (m.reject_if_exists()
        && this->view().status() != wire::WorkflowState::NEW) {
      // A durable start must not be retried into a dead letter: it is
      // answered (not started) instead.
      if (t.durable())
        return info();
      return make_error(
          errc::already_exists,
          "workflow " + to_string(t.self()) + " exists already (status "
              + wire::WorkflowState::Status_Name(this->view().status())
              + "); start it with another id, or without reject_if_exists");
    }
    return on_start(t, *in);
  }

  caf::expected<wire::QueryResult> on_query(turn&,
                                            const wire::QueryWorkflow& q) {
    auto& st = this->view();
    wire::QueryResult out;
    out.set_status(st.status());
    if (auto i = st.published().find(q.name()); i != st.published().end()) {
      out.set_type(i->second.type());
      out.set_data(i->second.data());
    }
    return out;
  }

  caf::expected<done> on_start_child(turn& t, const wire::StartChild& m) {
    if (this->view().status() != wire::WorkflowState::NEW)
      return done{}; // Started already: the same child id is one run.
    auto in = parse_input(t, m.input_type(), m.input());
    if (!in)
      return std::move(in.error());
    auto& st = this->state();
    st.set_parent_type(m.parent_type());
    st.set_parent_key(m.parent_key());
    st.set_parent_correlation(m.correlation());
    static_cast<void>(on_start(t, *in));
    return done{};
  }

  caf::expected<done> on_child_result(turn& t, const wire::ChildResult& m) {
    engine_.bind(&this->state(), &t.self());
    advance(t, engine_.complete_child(m));
    return done{};
  }

  caf::expected<done> on_cancel(turn& t, const wire::CancelWorkflow& m) {
    auto status = this->view().status();
    if (status == wire::WorkflowState::COMPLETED
        || status == wire::WorkflowState::FAILED)
      return done{};
    auto& st = this->state();
    st.set_cancel_requested(true);
    if (status == wire::WorkflowState::NEW) {
      st.set_status(wire::WorkflowState::FAILED);
      st.set_error_code(static_cast<uint32_t>(errc::cancelled));
      st.set_error("cancelled before it started: " + m.reason());
      notify_settled(t);
      return done{};
    }
    engine_.bind(&st, &t.self());
    engine_.set_turn(&t);
    auto waiting = engine_.cancel(m.reason());
    engine_.set_turn(nullptr);
    if (pool_)
      pool_->abandon(t.self(), st.run());
    advance(t, waiting);
    return done{};
  }

  caf::expected<done> on_reply(turn& t, const wire::Reply& reply) {
    engine_.bind(&this->state(), &t.self());
    advance(t, engine_.complete_call(reply));
    return done{};
  }

  caf::expected<done> on_wake(turn& t, const wire::WakeUp& wake) {
    engine_.bind(&this->state(), &t.self());
    advance(t, engine_.complete_sleep(wake));
    return done{};
  }

  caf::expected<done> on_resume(turn& t, const wire::ResumeWorkflow&) {
    auto status = this->view().status();
    if (status == wire::WorkflowState::SUSPENDED
        || (status == wire::WorkflowState::RUNNING && !run_)) {
      run_.reset();
      advance(t, {});
    }
    return done{};
  }

  caf::expected<done> on_signal(turn& t, const wire::Signal& m) {
    auto status = this->view().status();
    if (status == wire::WorkflowState::COMPLETED
        || status == wire::WorkflowState::FAILED) {
      if (auto err
          = refuse(t, t.postpone_reply(),
                   "workflow " + to_string(t.self()) + " has finished ("
                       + wire::WorkflowState::Status_Name(status)
                       + "); signal '" + m.name() + "' is not delivered"))
        return err;
      return done{};
    }
    if (auto err = deliver_signal(t, m))
      return err;
    return done{};
  }

  caf::expected<done> on_signal_timeout(turn& t, const wire::SignalTimeout& m) {
    engine_.bind(&this->state(), &t.self());
    advance(t, engine_.signal_timeout(m));
    return done{};
  }

  caf::expected<done> on_run_activity(turn& t, const wire::RunActivity& m) {
    engine_.bind(&this->state(), &t.self());
    engine_.set_turn(&t);
    auto waiting = engine_.run_activity(m, pool_);
    advance(t, waiting);
    return done{};
  }

  caf::expected<done> on_activity_result(turn& t,
                                         const wire::ActivityResult& m) {
    engine_.bind(&this->state(), &t.self());
    engine_.set_turn(&t);
    auto waiting = engine_.activity_result(m);
    advance(t, waiting);
    return done{};
  }

  caf::expected<done> on_activity_timeout(turn& t,
                                          const wire::ActivityTimeout& m) {
    engine_.bind(&this->state(), &t.self());
    engine_.set_turn(&t);
    auto waiting = engine_.activity_timeout(m, pool_);
    advance(t, waiting);
    return done{};
  }

  /// The pool that runs this workflow's activities (see register_workflow).
  void set_activity_pool(activity_pool* pool) {
    pool_ = pool;
  }

  /// Applies per-type settings (see register_workflow).
  void set_options(const workflow_options& opts) {
    engine_.set_journal_limits(opts.journal_warn, opts.journal_limit);
  }

  /// Protobuf type name of `Input`.
  static std::string input_type_name() {
    return std::string{Input::descriptor()->full_name()};
  }

  /// Replays `stored` in replay-only mode (see `check_replay`).
  caf::error replay_only(const wire::WorkflowState& stored, const grain_id& id,
                         bool compare_payloads = true) {
    auto copy = stored;
    engine_.bind(&copy, &id);
    engine_.rewind();
    engine_.set_replay_only(true, compare_payloads);
    workflow_context ctx{engine_, id};
    Input input;
    if (!input.ParseFromString(copy.input()))
      return make_error(errc::corrupt_record,
                        "journal input does not parse as " + input_type_name());
    auto coro = static_cast<Derived*>(this)->run(ctx, input);
    // Resume until the code parks on something the journal completed,
    // which happens only while replaying; bounded by the journal size.
    coro.resume();
    for (int i = 0; i <= copy.journal_size() && !coro.done(); ++i) {
      auto h = engine_.take_parked_if_ready();
      if (!h)
        break;
      h.resume();
    }
    if (coro.done() && !engine_.reached_end())
      engine_.check_finished();
    if (!engine_.halted().empty())
      return make_error(errc::nondeterminism, engine_.halted());
    return caf::none;
  }

  caf::error load_state(std::optional<std::string_view> bytes) override {
    // A rolled-back or reloaded journal must be replayed, not continued.
    run_.reset();
    return super::load_state(bytes);
  }

  caf::expected<wire::WorkflowInfo> on_describe(turn&,
                                                const wire::DescribeWorkflow&) {
    return info();
  }

private:
  // Refuses a message that the run's status does not allow, with
  // `invalid_argument` and `why`: a transient call gets the error; a
  // durable call (a grain's `turn::call`) is answered with it; a durable
  // send has nobody to answer and is dropped. Durable messages are never
  // failed into retries and a dead letter: no attempt would succeed.
  caf::error refuse(turn& t, const std::optional<turn::pending_call>& call,
                    std::string why) {
    auto err = make_error(errc::invalid_argument, std::move(why));
    if (!t.durable())
      return err;
    if (call)
      static_cast<void>(t.answer_error(*call, err));
    else
      log(log_level::debug, describe(err));
    return caf::none;
  }

  // Tells in-process waiters (workflow_watch) that the run settled.
  static void notify_settled(turn& t) {
    if (auto* w = t.services().find<workflow_watch>())
      w->settled(t.self());
  }

  // The start input carried as type name and bytes, checked against
  // `Input`.
  caf::expected<Input> parse_input(const turn& t, const std::string& type,
                                   const std::string& bytes) const {
    Input in;
    if (type != input_type_name() || !in.ParseFromString(bytes))
      return make_error(errc::invalid_argument,
                        "workflow " + to_string(t.self()) + " takes "
                            + input_type_name() + ", not " + type);
    return in;
  }

  // Hands a signal (or an update) to the engine: it completes the oldest
  // wait for it or is buffered; the code resumes if it waited.
  caf::error deliver_signal(turn& t, const wire::Signal& sig) {
    engine_.bind(&this->state(), &t.self());
    engine_.set_turn(&t);
    auto waiting = engine_.signal(sig);
    engine_.set_turn(nullptr);
    if (!waiting)
      return std::move(waiting.error());
    advance(t, *waiting);
    return caf::none;
  }

  struct live_run {
    workflow_context ctx;
    Input input;
    task<Output> coro;
  };

  // Continues the run: resumes `waiting` if the coroutine is live, or
  // replays the journal from the start in a fresh coroutine.
  void advance(turn& t, std::coroutine_handle<> waiting) {
    auto status = this->view().status();
    if (status == wire::WorkflowState::COMPLETED
        || status == wire::WorkflowState::FAILED
        || status == wire::WorkflowState::NEW) {
      // Handlers may have bound the turn for the engine: unbind it here
      // too, so the engine never keeps a pointer past its turn.
      engine_.set_turn(nullptr);
      return;
    }
    auto& st = this->state();
    engine_.bind(&st, &t.self());
    engine_.set_turn(&t);
    if (!run_ || run_->coro.done()) {
      engine_.rewind();
      run_ = std::make_unique<live_run>(
          live_run{workflow_context{engine_, t.self()}, Input{}, {}});
      run_->input.ParseFromString(st.input());
      run_->coro = static_cast<Derived*>(this)->run(run_->ctx, run_->input);
      run_->coro.resume();
    } else if (waiting) {
      waiting.resume();
    }
    engine_.set_turn(nullptr);
    if (st.status() == wire::WorkflowState::SUSPENDED
        && engine_.halted().empty()) {
      // Resumed after a fix, and the journal replayed: the run goes on.
      st.set_status(wire::WorkflowState::RUNNING);
      st.clear_error();
    }
    if (!run_->coro.done())
      return;
    auto& res = run_->coro.result();
    if (!engine_.continue_input())
      engine_.check_finished();
    if (engine_.continue_input()) {
      // A fresh run with an empty journal; it starts in its own turn, so
      // that a workflow that always continues cannot loop within one turn.
      st.set_run(st.run() + 1);
      st.clear_journal();
      st.set_completions(0);
      st.set_input(*engine_.continue_input());
      st.clear_output();
      st.clear_error();
      st.clear_error_code();
      run_.reset();
      static_cast<void>(t.set_timer("wf-continue", std::chrono::milliseconds{0},
                                    wire::ResumeWorkflow{}));
      return;
    }
    // The run settles below. Waiters read it again after this turn, and
    // their read waits for its commit.
    notify_settled(t);
    if (!engine_.fatal().empty()) {
      st.set_status(wire::WorkflowState::FAILED);
      st.set_error_code(static_cast<uint32_t>(errc::overloaded));
      st.set_error(engine_.fatal());
      log(log_level::error, engine_.fatal());
      notify_parent(t, st, make_error(errc::overloaded, engine_.fatal()));
      return;
    }
    if (!engine_.halted().empty()) {
      st.set_status(wire::WorkflowState::SUSPENDED);
      st.set_error(engine_.halted());
      log(log_level::error, engine_.halted());
      return;
    }
    if (res) {
      st.set_status(wire::WorkflowState::COMPLETED);
      st.set_output_type(std::string{Output::descriptor()->full_name()});
      res->SerializeToString(st.mutable_output());
      st.clear_error();
      st.clear_error_code();
    } else {
      st.set_status(wire::WorkflowState::FAILED);
      st.set_error_code(static_cast<uint32_t>(code_of(res.error())));
      st.set_error(describe(res.error()));
    }
    notify_parent(t, st, res);
  }

  // A child reports its outcome to its parent, durably, in the same commit
  // as its final state.
  void notify_parent(turn& t, const wire::WorkflowState& st,
                     const caf::expected<Output>& res) {
    if (st.parent_type().empty())
      return;
    wire::ChildResult out;
    out.set_correlation(st.parent_correlation());
    if (res) {
      out.set_output_type(st.output_type());
      out.set_output(st.output());
    } else {
      out.set_error_code(static_cast<uint32_t>(code_of(res.error())));
      out.set_error(st.error());
    }
    if (auto err = t.send(grain_id{st.parent_type(), st.parent_key()}, out))
      log(log_level::error,
          "workflow " + to_string(t.self())
              + " could not report to its parent: " + describe(err));
  }

  wire::WorkflowInfo info() const {
    auto& st = this->view();
    wire::WorkflowInfo out;
    out.set_status(st.status());
    out.set_output_type(st.output_type());
    out.set_output(st.output());
    out.set_error(st.error());
    out.set_journal_size(static_cast<uint64_t>(st.journal_size()));
    out.set_error_code(st.error_code());
    out.set_run(st.run());
    if (st.status() == wire::WorkflowState::RUNNING)
      workflow_engine::describe_waiting(st, out);
    return out;
  }

  workflow_engine engine_;
  std::unique_ptr<live_run> run_;
  activity_pool* pool_ = nullptr;
};

/// What `check_replay` compares besides the commands' identities.
struct replay_check_options {
  /// The id the code sees as its workflow id.
  std::string workflow_id = "replay";
  /// Also report a call, child start or activity whose request differs
  /// from the journaled one (a live replay keeps the journaled outcome and
  /// only logs it).
  bool payloads = true;
};

/// The replay test: runs workflow `W`'s current code against a stored
/// state (journal) without touching the world (nothing runs, nothing is
/// written). Returns `caf::none` when the code would replay that run, and
/// a `nondeterminism` error naming the first difference otherwise:
/// - a command of another kind, target or message type at a sequence
///   number (a live replay suspends the run for this);
/// - with `payloads` (the default), a call, child start or activity whose
///   request differs from the journaled one (a live replay logs it and
///   keeps the journaled outcome);
/// - a finished (completed or failed) run whose code now issues a command
///   after the last journaled one, or whose code finishes before it.
/// A changed retry policy or timeout is not reported: the policy
/// journaled with an activity governs all its attempts, and a new policy
/// applies to activities scheduled after the change. Put it in CI with
/// journals taken from production (`granary workflow history`, or
/// `testing::workflow_session::journal` in tests).
template <class W>
caf::error check_replay(const wire::WorkflowState& stored,
                        replay_check_options opts) {
  if (stored.input_type() != W::input_type_name())
    return make_error(errc::nondeterminism, "journal input is '"
                                                + stored.input_type()
                                                + "', the workflow takes '"
                                                + W::input_type_name() + "'");
  W w;
  return w.replay_only(
      stored, grain_id{std::string{W::type_name}, std::move(opts.workflow_id)},
      opts.payloads);
}

/// `check_replay` with the default options and `workflow_id`.
template <class W>
caf::error check_replay(const wire::WorkflowState& stored,
                        std::string workflow_id = "replay") {
  replay_check_options opts;
  opts.workflow_id = std::move(workflow_id);
  return check_replay<W>(stored, std::move(opts));
}

/// Registers workflow class `W`, whose activities run on `pool` (which
/// must outlive the silo's use of it: stop the pool before the silo, and
/// `attach` it to the silo once started). A null `pool` is for workflows
/// that run no activity: an activity then fails its run with "no activity
/// pool". A host's `registration::workflow<W>()` passes the host's pool.
template <class W>
caf::error register_workflow(grain_registry& registry, activity_pool* pool,
                             workflow_options opts = {}) {
  if (opts.journal_limit == 0 || opts.journal_warn > opts.journal_limit)
    return make_error(errc::invalid_config,
                      "workflow " + std::string{W::type_name}
                          + ": journal_warn must not exceed journal_limit, "
                            "and journal_limit must be positive");
  return registry.add(std::string{W::type_name}, [pool, opts] {
    auto w = std::make_unique<W>();
    w->set_activity_pool(pool);
    w->set_options(opts);
    return w;
  });
}

/// Reads the value workflow `id` published under `name` as an `R`, with a
/// transient call (no replay, no write). `not_found` when nothing is
/// published under that name yet. (`workflow_client::query` in one call.)
template <class R>
[[nodiscard]] caf::expected<R>
query_workflow(silo& s, const grain_id& id, const std::string& name,
               std::chrono::milliseconds timeout = std::chrono::seconds{5}) {
  return silo_workflow_client{s, timeout}.query<R>(id.type, id.key, name);
}

/// Sends update `name` with id `update_id` to workflow `id` durably and
/// waits up to `timeout` for the code's answer of type `R`. Safe to retry
/// with the same `update_id`: the update is delivered once.
/// (`workflow_client::update` in one call.)
template <class R>
[[nodiscard]] caf::expected<R>
update_workflow(silo& s, const grain_id& id, const std::string& name,
                const std::string& update_id,
                const google::protobuf::Message& request,
                std::chrono::milliseconds timeout = std::chrono::seconds{30}) {
  return silo_workflow_client{s, timeout}.update<R>(
      id.type, id.key, name, request, timeout, update_id);
}

} // namespace granary

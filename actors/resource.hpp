#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>
#include <string>

#include "actors/activity.hpp"
#include "actors/grain.hpp"
#include "resource.pb.h"
#include "runtime/log.hpp"
#include "workflow.pb.h"

namespace granary {

/// Settings of a resource grain type, given at registration.
struct resource_options {
  /// Retry policy of one generation's reconcile.
  std::chrono::milliseconds initial_interval{1'000};
  double backoff_coefficient = 2.0;
  std::chrono::milliseconds max_interval{60'000};
  /// Attempts at one generation before the resource is FAILED.
  uint32_t max_attempts = 10;
  /// An attempt without a result after this long counts as failed (a crash
  /// lost it, or the call hung).
  std::chrono::milliseconds attempt_timeout{60'000};
  /// When positive, attempts must heartbeat this often.
  std::chrono::milliseconds heartbeat_timeout{0};
  /// When positive, a durable reminder reconciles this often even without
  /// a change: it repairs drift of the real resource.
  std::chrono::milliseconds resync_interval{0};
  /// Durable calls that may wait (`SetDesired.wait`) at once.
  size_t max_waiters = 64;
};

/// What a reconcile attempt gets.
template <class Spec, class Actual>
struct reconcile_input {
  /// The resource's name (its grain key).
  std::string name;
  /// True when the resource must be removed.
  bool remove = false;
  /// The desired state (default-constructed when removing).
  Spec desired;
  /// The last known actual state; nullopt when none was recorded.
  std::optional<Actual> actual;
  /// The generation being reconciled.
  uint64_t generation = 0;
};

/// "One actor per managed resource" (the entity pattern of cloud control
/// planes): a grain that keeps the desired and the actual state of one
/// external resource, serializes every operation on it (one reconcile at a
/// time, newest desired state wins), reconciles on the activity pool with
/// retries, resyncs on a durable reminder, and answers status queries
/// (`GetResource`) from its stored state.
///
/// `Derived` declares `static constexpr std::string_view type_name` and
/// `static caf::expected<Actual> reconcile(const activity_context&,
/// const reconcile_input<Spec, Actual>&)`, which runs on a pool thread and
/// must be idempotent per `activity_context::idempotency_key` (the same for
/// every attempt at one generation). Register it with `register_resource`.
template <class Derived, class Spec, class Actual>
class resource : public grain<Derived, wire::ResourceState> {
public:
  using state_type = wire::ResourceState;
  /// Marks resource grain classes (see `is_resource_v`).
  using resource_marker = void;

  static void define(handlers<Derived>& h) {
    using info = caf::expected<wire::ResourceInfo>;
    using result = caf::expected<done>;
    h.on(static_cast<info (Derived::*)(turn&, const wire::SetDesired&)>(
             &resource::on_set))
        .on(static_cast<info (Derived::*)(turn&, const wire::GetResource&)>(
            &resource::on_get))
        .on(static_cast<result (Derived::*)(
                turn&, const wire::ActivityResult&)>(&resource::on_result))
        .on(static_cast<result (Derived::*)(
                turn&, const wire::ReconcileRetry&)>(&resource::on_retry))
        .on(static_cast<result (Derived::*)(
                turn&, const wire::ReconcileTimeout&)>(&resource::on_timeout))
        .on(static_cast<result (Derived::*)(turn&, const wire::Resync&)>(
            &resource::on_resync));
  }

  /// Name of the pool activity that runs `Derived::reconcile`.
  static std::string activity_name() {
    return std::string{Derived::type_name} + ".reconcile";
  }

  /// Builds a `SetDesired` carrying `spec`; with `wait`, a durable call
  /// is answered once this state is reconciled.
  static wire::SetDesired desire(const Spec& spec, bool wait = false) {
    wire::SetDesired m;
    m.set_spec_type(std::string{Spec::descriptor()->full_name()});
    // Canonical bytes: a workflow replaying this call compares them.
    *m.mutable_spec() = deterministic_bytes(spec);
    m.set_wait(wait);
    return m;
  }

  /// Builds a `SetDesired` that removes the resource.
  static wire::SetDesired removal(bool wait = false) {
    wire::SetDesired m;
    m.set_remove(true);
    m.set_wait(wait);
    return m;
  }

  /// Runs one reconcile attempt on a pool thread: decodes `req`, calls
  /// `Derived::reconcile` and encodes its actual state.
  static caf::expected<wire::ReconcileResult>
  run_reconcile(const activity_context& ctx,
                const wire::ReconcileRequest& req) {
    reconcile_input<Spec, Actual> in;
    in.name = req.name();
    in.remove = req.remove();
    in.generation = req.generation();
    if (!req.remove() && !in.desired.ParseFromString(req.desired()))
      return make_error(errc::malformed_message,
                        "desired state does not parse as "
                            + std::string{Spec::descriptor()->full_name()});
    if (req.actual_present()) {
      Actual actual;
      if (!actual.ParseFromString(req.actual()))
        return make_error(errc::malformed_message,
                          "actual state does not parse as "
                              + std::string{Actual::descriptor()->full_name()});
      in.actual = std::move(actual);
    }
    caf::expected<Actual> res = Derived::reconcile(ctx, in);
    if (!res)
      return std::move(res.error());
    wire::ReconcileResult out;
    res->SerializeToString(out.mutable_actual());
    return out;
  }

  /// Applies per-type settings (see register_resource).
  void set_resource_options(const resource_options& opts, activity_pool* pool) {
    opts_ = opts;
    pool_ = pool;
  }

  caf::expected<wire::ResourceInfo> on_set(turn& t, const wire::SetDesired& m) {
    if (!m.remove()) {
      Spec probe;
      if (m.spec_type() != Spec::descriptor()->full_name()
          || !probe.ParseFromString(m.spec()))
        return make_error(errc::invalid_argument,
                          "resource " + to_string(t.self()) + " takes a "
                              + std::string{Spec::descriptor()->full_name()}
                              + ", not '" + m.spec_type() + "'");
    }
    auto& st = this->state();
    if (m.wait() && t.durable()
        && static_cast<size_t>(st.waiters_size()) >= opts_.max_waiters)
      return make_error(errc::overloaded,
                        "resource " + to_string(t.self()) + " has "
                            + std::to_string(opts_.max_waiters)
                            + " waiting calls (max_waiters)");
    if (st.generation() > 0 && m.remove() == !st.desired_present()
        && (m.remove() || m.spec() == st.desired())
        && st.phase() != state_type::FAILED) {
      // Unchanged: no new generation; a waiter waits for the current one.
      wait_for(t, m, st.generation());
      answer_waiters(t);
      return info();
    }
    st.set_generation(st.generation() + 1);
    st.set_key_format(activity_key_format);
    st.set_desired_present(!m.remove());
    st.set_desired_type(m.remove() ? std::string{} : m.spec_type());
    st.set_desired(m.remove() ? std::string{} : m.spec());
    st.set_attempt(0);
    st.clear_last_error();
    wait_for(t, m, st.generation());
    if (opts_.resync_interval.count() > 0 && st.generation() == 1)
      log_error(t, t.set_timer("resource-resync", opts_.resync_interval,
                               wire::Resync{}, opts_.resync_interval));
    if (!st.in_flight()) {
      st.set_phase(state_type::PENDING);
      submit(t);
    }
    return info();
  }

  caf::expected<wire::ResourceInfo> on_get(turn&, const wire::GetResource&) {
    return info();
  }

  caf::expected<done> on_result(turn& t, const wire::ActivityResult& r) {
    auto& view = this->view();
    if (!view.in_flight() || r.attempt() != view.submission())
      return done{}; // Stale: a timed-out or superseded submission.
    auto& st = this->state();
    st.set_in_flight(false);
    log_error(t, t.cancel_timer("resource-timeout"));
    auto generation = r.seq();
    if (r.error_code() != 0) {
      fail_attempt(t, make_error(static_cast<errc>(r.error_code()), r.error()));
      return done{};
    }
    wire::ReconcileResult out;
    if (!out.ParseFromString(r.result())) {
      fail_attempt(t, make_error(errc::malformed_message,
                                 "reconcile result does not parse"));
      return done{};
    }
    st.set_reconciles(st.reconciles() + 1);
    st.set_observed_generation(generation);
    st.set_actual_present(!st.submitted_remove());
    if (st.submitted_remove()) {
      st.set_actual_present(false);
      st.clear_actual();
      st.clear_actual_type();
    } else {
      st.set_actual_type(std::string{Actual::descriptor()->full_name()});
      st.set_actual(out.actual());
    }
    st.clear_last_error();
    st.set_attempt(0);
    if (generation < st.generation()) {
      submit(t); // The desired state moved on meanwhile.
    } else {
      st.set_phase(st.desired_present() ? state_type::READY
                                        : state_type::DELETED);
    }
    answer_waiters(t);
    return done{};
  }

  caf::expected<done> on_retry(turn& t, const wire::ReconcileRetry& m) {
    auto& view = this->view();
    if (view.in_flight() || m.submission() != view.submission()
        || view.phase() != state_type::RECONCILING)
      return done{};
    submit(t);
    return done{};
  }

  caf::expected<done> on_timeout(turn& t, const wire::ReconcileTimeout& m) {
    // The attempt must not go on next to the next one: its heartbeat()
    // turns false, its result is ignored, and the pool starts no other
    // reconcile of this resource until it returns.
    if (pool_)
      pool_->abandon(t.self(), 0, m.generation(), m.submission());
    auto& view = this->view();
    if (!view.in_flight() || m.submission() != view.submission())
      return done{};
    this->state().set_in_flight(false);
    if (m.due_ms() > 0 && t.now_ms() < m.due_ms()) {
      // The watchdog fired at recovery: the attempt was lost with its silo
      // (or runs on the partition's old owner); retry at once.
      fail_attempt(t,
                   make_error(errc::timeout,
                              "reconcile attempt was lost: its silo stopped "
                              "or its partition moved before it reported"),
                   true);
      return done{};
    }
    fail_attempt(t,
                 make_error(errc::timeout,
                            "reconcile attempt got no result within "
                                + std::to_string(opts_.attempt_timeout.count())
                                + " ms (attempt_timeout)"));
    return done{};
  }

  caf::expected<done> on_resync(turn& t, const wire::Resync&) {
    auto& view = this->view();
    if (view.in_flight() || view.generation() == 0
        || view.phase() == state_type::RECONCILING
        || view.phase() == state_type::DELETED)
      return done{};
    // A failed resource gets fresh attempts; a ready one is checked for
    // drift under its current generation.
    this->state().set_attempt(0);
    submit(t);
    return done{};
  }

private:
  wire::ResourceInfo info() const {
    auto& st = this->view();
    wire::ResourceInfo out;
    out.set_phase(st.phase());
    out.set_generation(st.generation());
    out.set_observed_generation(st.observed_generation());
    out.set_desired_present(st.desired_present());
    out.set_desired(st.desired());
    out.set_actual_present(st.actual_present());
    out.set_actual(st.actual());
    out.set_last_error(st.last_error());
    out.set_reconciles(st.reconciles());
    return out;
  }

  void wait_for(turn& t, const wire::SetDesired& m, uint64_t generation) {
    if (!m.wait())
      return;
    auto call = t.postpone_reply();
    if (!call)
      return; // Not a durable call: nobody to answer later.
    auto& w = *this->state().add_waiters();
    w.set_caller_type(call->caller.type);
    w.set_caller_key(call->caller.key);
    w.set_correlation(call->correlation);
    w.set_generation(generation);
  }

  // Answers the waiters whose generation is settled: reconciled, or failed
  // (the current generation only).
  void answer_waiters(turn& t) {
    auto& view = this->view();
    if (view.waiters_size() == 0)
      return;
    auto& st = this->state();
    auto* ws = st.mutable_waiters();
    bool failed = st.phase() == state_type::FAILED;
    for (int i = 0; i < ws->size();) {
      auto& w = ws->Get(i);
      bool done_ok = !st.in_flight()
                     && w.generation() <= st.observed_generation()
                     && st.phase() != state_type::RECONCILING;
      bool done_bad = failed && w.generation() <= st.generation();
      bool superseded = w.generation() < st.observed_generation();
      if (!done_ok && !done_bad && !superseded) {
        ++i;
        continue;
      }
      turn::pending_call call{grain_id{w.caller_type(), w.caller_key()},
                              w.correlation()};
      caf::error err;
      if (done_bad && !superseded)
        err = t.answer_error(
            call, make_error(errc::handler_failed,
                             "resource " + to_string(t.self())
                                 + " failed to reconcile: " + st.last_error()));
      else
        err = t.answer(call, info());
      log_error(t, err);
      ws->DeleteSubrange(i, 1);
    }
  }

  // Starts the next attempt at the current generation on the pool.
  void submit(turn& t) {
    auto& st = this->state();
    st.set_phase(state_type::RECONCILING);
    st.set_submission(st.submission() + 1);
    st.set_attempt(st.attempt() + 1);
    if (!pool_) {
      st.set_phase(state_type::FAILED);
      st.set_last_error("no activity pool: register the resource with one");
      answer_waiters(t);
      return;
    }
    wire::ReconcileRequest req;
    req.set_name(t.self().key);
    req.set_remove(!st.desired_present());
    st.set_submitted_remove(req.remove());
    req.set_desired(st.desired());
    req.set_actual_present(st.actual_present());
    req.set_actual(st.actual());
    req.set_generation(st.generation());
    activity_pool::job j{
        t.self(),
        st.generation(),
        st.submission(),
        activity_name(),
        req.SerializeAsString(),
        0,
        opts_.heartbeat_timeout.count(),
        activity_idempotency_key(t.self(), 0, st.generation(), st.key_format()),
        true};
    // The watchdog fires after attempt_timeout, or at once when the
    // partition is recovered (the attempt did not survive the restart).
    wire::ReconcileTimeout timeout;
    timeout.set_submission(st.submission());
    timeout.set_generation(st.generation());
    timeout.set_due_ms(t.now_ms() + opts_.attempt_timeout.count());
    auto err
        = t.set_watchdog("resource-timeout", opts_.attempt_timeout, timeout);
    if (!err)
      err = pool_->submit(
          std::move(j),
          std::string{wire::ReconcileRequest::descriptor()->full_name()});
    if (err) {
      // A full or stopping pool: try again shortly, under a new number.
      log_error(t, t.cancel_timer("resource-timeout"));
      wire::ReconcileRetry retry;
      retry.set_submission(st.submission());
      log_error(t, t.set_timer("resource-retry", std::chrono::milliseconds{100},
                               retry));
      return;
    }
    st.set_in_flight(true);
  }

  // Fails the attempt in flight: retries it (at once when `now`, else after
  // the backoff) or marks the generation FAILED.
  void fail_attempt(turn& t, const caf::error& err, bool now = false) {
    auto& st = this->state();
    st.set_last_error(describe(err));
    auto code = code_of(err);
    bool permanent
        = code == errc::invalid_argument || code == errc::malformed_message;
    if (permanent || st.attempt() >= opts_.max_attempts) {
      st.set_phase(state_type::FAILED);
      st.set_last_error("generation " + std::to_string(st.generation())
                        + " failed after " + std::to_string(st.attempt())
                        + " attempt(s): " + describe(err));
      log(log_level::warning,
          "resource " + to_string(t.self()) + ": " + st.last_error());
      answer_waiters(t);
      return;
    }
    auto delay = static_cast<double>(opts_.initial_interval.count())
                 * std::pow(opts_.backoff_coefficient, st.attempt() - 1);
    delay = std::min(delay, static_cast<double>(opts_.max_interval.count()));
    if (now)
      delay = 0;
    wire::ReconcileRetry retry;
    retry.set_submission(st.submission());
    log_error(
        t, t.set_timer("resource-retry",
                       std::chrono::milliseconds{static_cast<int64_t>(delay)},
                       retry));
  }

  static void log_error(turn& t, const caf::error& err) {
    if (err)
      log(log_level::error,
          "resource " + to_string(t.self()) + ": " + describe(err));
  }

  resource_options opts_;
  activity_pool* pool_ = nullptr;
};

/// Registers resource grain class `R` and its reconcile activity on `pool`
/// (which must outlive the silo's use of it: stop the pool first).
template <class R>
caf::error register_resource(grain_registry& registry, activity_pool& pool,
                             resource_options opts = {}) {
  if (opts.max_attempts == 0 || opts.attempt_timeout.count() <= 0)
    return make_error(errc::invalid_config,
                      "resource " + std::string{R::type_name}
                          + ": max_attempts and attempt_timeout must be "
                            "positive");
  // A negative delay would leave a failed attempt without its retry timer.
  if (opts.initial_interval.count() < 0 || opts.max_interval.count() < 0
      || !(opts.backoff_coefficient >= 1.0)
      || opts.heartbeat_timeout.count() < 0 || opts.resync_interval.count() < 0)
    return make_error(errc::invalid_config,
                      "resource " + std::string{R::type_name}
                          + ": intervals and timeouts must not be negative, "
                            "and backoff_coefficient must be at least 1");
  auto err = pool.add<wire::ReconcileRequest, wire::ReconcileResult>(
      R::activity_name(),
      [](const activity_context& ctx, const wire::ReconcileRequest& req)
          -> caf::expected<wire::ReconcileResult> {
        return R::run_reconcile(ctx, req);
      });
  if (err)
    return err;
  return registry.add(std::string{R::type_name}, [opts, p = &pool] {
    auto r = std::make_unique<R>();
    r->set_resource_options(opts, p);
    return r;
  });
}

} // namespace granary

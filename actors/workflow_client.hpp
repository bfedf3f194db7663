#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <random>
#include <string>

#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <google/protobuf/message.h>

#include "actors/grain.hpp"
#include "actors/workflow_watch.hpp"
#include "runtime/error.hpp"
#include "runtime/grain_id.hpp"
#include "runtime/silo.hpp"
#include "runtime/sys.hpp"
#include "workflow.pb.h"

namespace granary {

/// Builds the durable message that delivers signal `name` with `payload`
/// to a workflow; send it like any message (give it an id for safe
/// retries).
inline wire::Signal make_signal(std::string name,
                                const google::protobuf::Message& payload) {
  wire::Signal sig;
  sig.set_name(std::move(name));
  sig.set_payload_type(payload.GetDescriptor()->full_name());
  *sig.mutable_payload() = deterministic_bytes(payload);
  return sig;
}

/// Builds an `Update` named `name` with id `id` carrying `request`.
inline wire::Update make_update(std::string name, std::string id,
                                const google::protobuf::Message& request) {
  wire::Update u;
  u.set_name(std::move(name));
  u.set_id(std::move(id));
  u.set_payload_type(request.GetDescriptor()->full_name());
  *u.mutable_payload() = deterministic_bytes(request);
  return u;
}

/// Options of `workflow_client::start` (what `StartWorkflow` carries).
struct start_options {
  /// Refuse with `already_exists` when the id has a run already, instead
  /// of returning that run.
  bool reject_if_exists = false;
};

/// Renders one thing a run waits on for people, e.g. "activity 'charge'
/// (seq 2): attempt 3 of 5 runs until 2025-01-01T10:00:05.000Z; last
/// error: handler_failed: 503".
std::string to_string(const wire::WaitingOn& w);

/// Renders everything `info.waiting` lists, separated by "; ".
std::string describe_waiting(const wire::WorkflowInfo& info);

/// A typed client of workflows with one API in process
/// (`silo_workflow_client`) and over a gateway
/// (`cluster::http_workflow_client`). A workflow is named by its type and
/// id, or by its class `W` and id:
///
///     silo_workflow_client client{silo};
///     client.start<order_flow>("o-1", order);
///     auto receipt = client.result<order_flow>("o-1", 10s); // waits
///
/// Errors are values: a failed run's `result` is its error code and
/// message; a run that did not finish in time gives `timeout`, naming what
/// it waits on; a run that never started gives `not_found`.
class workflow_client {
public:
  using milliseconds = std::chrono::milliseconds;

  virtual ~workflow_client();

  // -- by workflow class -----------------------------------------------------

  /// Starts run `id` of workflow `W` with `input`. The answer's
  /// `started()` tells whether this call started it (false: it existed,
  /// and nothing started). With `reject_if_exists` an existing run is
  /// `already_exists`. A `timeout` means the run may have started anyway:
  /// retrying with the same id is safe.
  template <class W>
  caf::expected<wire::WorkflowInfo> start(const std::string& id,
                                          const typename W::input_type& input,
                                          const start_options& opts = {}) {
    return start(std::string{W::type_name}, id, input, opts);
  }

  /// Waits up to `timeout` for run `id` of `W` to finish; returns its
  /// output, or its error when it failed (see the class comment).
  template <class W>
  caf::expected<typename W::output_type> result(const std::string& id,
                                                milliseconds timeout) {
    return result<typename W::output_type>(std::string{W::type_name}, id,
                                           timeout);
  }

  /// Describes run `id` of `W` (see `describe(type, id)`).
  template <class W>
  caf::expected<wire::WorkflowInfo> describe(const std::string& id) {
    return describe(std::string{W::type_name}, id);
  }

  /// Sends signal `name` to run `id` of `W` (see `signal(type, ...)`).
  template <class W>
  caf::error signal(const std::string& id, const std::string& name,
                    const google::protobuf::Message& payload,
                    const std::string& signal_id = {}) {
    return signal(std::string{W::type_name}, id, name, payload, signal_id);
  }

  /// Reads the value run `id` of `W` published under `name`.
  template <class W, class R>
  caf::expected<R> query(const std::string& id, const std::string& name) {
    return query<R>(std::string{W::type_name}, id, name);
  }

  /// Sends update `name` to run `id` of `W` and waits for its answer.
  template <class W, class R>
  caf::expected<R> update(const std::string& id, const std::string& name,
                          const google::protobuf::Message& request,
                          milliseconds timeout,
                          const std::string& update_id = {}) {
    return update<R>(std::string{W::type_name}, id, name, request, timeout,
                     update_id);
  }

  /// Cancels run `id` of `W` (see `cancel(type, ...)`).
  template <class W>
  caf::error cancel(const std::string& id, const std::string& reason,
                    const std::string& cancel_id = {}) {
    return cancel(std::string{W::type_name}, id, reason, cancel_id);
  }

  // -- by type name ----------------------------------------------------------

  /// Starts run `id` of workflow type `type` with `input` (see `start<W>`).
  caf::expected<wire::WorkflowInfo>
  start(const std::string& type, const std::string& id,
        const google::protobuf::Message& input, const start_options& opts = {});

  /// Waits up to `timeout` for the run to finish, without polling by the
  /// caller. Returns its output as an `R`; a failed run's error (its
  /// `errc` and message); `timeout` naming the status and what the run
  /// waits on when it did not finish in time (a suspended run has not
  /// finished); `not_found` when it never started; `malformed_message`
  /// when the output is not an `R`.
  template <class R>
  caf::expected<R> result(const std::string& type, const std::string& id,
                          milliseconds timeout) {
    auto out = result_value(grain_id{type, id}, timeout);
    if (!out)
      return std::move(out.error());
    return parse<R>(grain_id{type, id}, *out, "output");
  }

  /// Reads the run's status, output or error, and what it waits on now
  /// (`waiting`: timers with their due time, signals and updates with
  /// their timeout, calls, children, activities with their attempt and
  /// last error), from its stored state without replaying its code.
  /// `not_found` when it never started.
  caf::expected<wire::WorkflowInfo> describe(const std::string& type,
                                             const std::string& id);

  /// Sends signal `name` with `payload` durably; returns once it is
  /// stored. `signal_id` makes retries safe (delivered once). A run that
  /// has finished refuses it with `invalid_argument` (a run that finishes
  /// while the signal travels drops it). A signal to a run that has not
  /// started yet waits for it.
  caf::error signal(const std::string& type, const std::string& id,
                    const std::string& name,
                    const google::protobuf::Message& payload,
                    const std::string& signal_id = {});

  /// Reads the value the run published under `name`, as an `R`, without
  /// replaying or waking it. `not_found` when it never started or
  /// published nothing under `name` yet.
  template <class R>
  caf::expected<R> query(const std::string& type, const std::string& id,
                         const std::string& name) {
    auto out = query_value(grain_id{type, id}, name);
    if (!out)
      return std::move(out.error());
    return parse<R>(grain_id{type, id}, *out, "query value '" + name + "'");
  }

  /// Sends update `name` carrying `request` and waits up to `timeout` for
  /// the code's answer, an `R`. Only a `RUNNING` run takes updates
  /// (`not_found` when it never started, `invalid_argument` otherwise, or
  /// when it finishes without answering). `timeout` leaves the update
  /// delivered: a retry with the same `update_id` (generated when empty)
  /// returns its answer once there is one.
  template <class R>
  caf::expected<R>
  update(const std::string& type, const std::string& id,
         const std::string& name, const google::protobuf::Message& request,
         milliseconds timeout, const std::string& update_id = {}) {
    auto out
        = update_value(grain_id{type, id}, name, request, timeout, update_id);
    if (!out)
      return std::move(out.error());
    return parse<R>(grain_id{type, id}, *out,
                    "answer to update '" + name + "'");
  }

  /// Cancels the run durably: its pending commands fail with `cancelled`
  /// and its code decides what to do. `not_found` when it never started; a
  /// finished run ignores it. `cancel_id` makes retries safe.
  caf::error cancel(const std::string& type, const std::string& id,
                    const std::string& reason,
                    const std::string& cancel_id = {});

protected:
  using clock = std::chrono::steady_clock;

  /// A transient call of grain `id` with `request`; the answer is parsed
  /// into `reply` (a `WorkflowInfo` or a `QueryResult`).
  virtual caf::error call(const grain_id& id,
                          const google::protobuf::Message& request,
                          google::protobuf::Message& reply)
      = 0;

  /// A durable send of `msg` to `id` under message id `msg_id` (empty: a
  /// fresh one); returns once it is durable.
  virtual caf::error send(const grain_id& id,
                          const google::protobuf::Message& msg,
                          const std::string& msg_id)
      = 0;

  /// Waits until run `id` has finished (`COMPLETED` or `FAILED`) or
  /// `deadline` passed, and returns its description then (`not_found` when
  /// it never started).
  virtual caf::expected<wire::WorkflowInfo>
  await_finished(const grain_id& id, clock::time_point deadline) = 0;

  /// Describes `id`; `not_found` when it never started.
  caf::expected<wire::WorkflowInfo> describe_started(const grain_id& id);

  /// True for `COMPLETED` and `FAILED`.
  static bool finished(wire::WorkflowState::Status status);

private:
  caf::expected<wire::Value> result_value(const grain_id& id,
                                          milliseconds timeout);

  caf::expected<wire::Value> query_value(const grain_id& id,
                                         const std::string& name);

  caf::expected<wire::Value>
  update_value(const grain_id& id, const std::string& name,
               const google::protobuf::Message& request, milliseconds timeout,
               const std::string& update_id);

  // Decodes `value` into `out`; `malformed_message` naming `what` when it
  // is another type or does not parse.
  static caf::error parse_into(const grain_id& id, const wire::Value& value,
                               google::protobuf::Message& out,
                               const std::string& what);

  template <class R>
  static caf::expected<R> parse(const grain_id& id, const wire::Value& value,
                                const std::string& what) {
    R out;
    if (auto err = parse_into(id, value, out, what))
      return err;
    return out;
  }

  std::string fresh_update_id();

  sys::mutex rng_mtx_;
  // Seeded by the first generated id: most clients never need one.
  std::optional<std::mt19937_64> rng_;
};

/// The in-process `workflow_client` of one silo (thread-safe). Waiting
/// for a result is woken by the silo's `workflow_watch` service when there
/// is one (the host adds it); otherwise, and for runs on other silos, it
/// polls with a backoff of 2 ms up to 100 ms.
class silo_workflow_client : public workflow_client {
public:
  /// A client of the workflows of `s` (which must outlive it); each call
  /// to the silo waits at most `call_timeout`.
  explicit silo_workflow_client(silo& s, milliseconds call_timeout
                                         = std::chrono::seconds{10});

  /// Sets the longest pause between two reads of a run while waiting for
  /// it and subscribed to the silo's `workflow_watch` (default 100 ms). A
  /// run that settles on this silo wakes the wait at once, so a client of
  /// a silo on its own (like `testing::workflow_env`'s) can pause far
  /// longer; runs on other silos are seen only by these reads.
  void set_max_poll(milliseconds pause);

protected:
  caf::error call(const grain_id& id, const google::protobuf::Message& request,
                  google::protobuf::Message& reply) override;

  caf::error send(const grain_id& id, const google::protobuf::Message& msg,
                  const std::string& msg_id) override;

  caf::expected<wire::WorkflowInfo>
  await_finished(const grain_id& id, clock::time_point deadline) override;

private:
  silo& silo_;
  milliseconds call_timeout_;
  milliseconds max_poll_{100};
};

} // namespace granary

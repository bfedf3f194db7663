#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "actors/activity.hpp"
#include "actors/workflow_client.hpp"
#include "host/silo_host.hpp"
#include "runtime/assert.hpp"
#include "runtime/error.hpp"
#include "runtime/memory_storage.hpp"
#include "runtime/sys.hpp"
#include "sim/kernel.hpp"
#include "workflow.pb.h"

namespace granary::testing {

/// Settings of a `workflow_env`.
struct workflow_env_options {
  /// Seeds the order in which the silo's threads interleave: a test runs
  /// the same way every time, and other seeds try other orders.
  uint64_t seed = 1;
  /// Partitions of the silo.
  uint32_t partitions = 4;
  /// The wall clock when the test starts (ms since the Unix epoch;
  /// 2027-01-15T08:00:00Z).
  int64_t start_wall_ms = 1'800'000'000'000;
  /// The test fails ("time limit") once this much virtual time passed.
  std::chrono::hours time_limit{24 * 366};
  /// Threads of the activity pool.
  size_t activity_threads = 4;
  /// Shows the silo's log on stderr (it is silent otherwise).
  bool verbose = false;
};

/// One attempt of a stub activity, as the stub saw it.
template <class In>
struct stub_attempt {
  In input;
  /// The idempotency key the attempt was given (the same for every
  /// attempt of one activity).
  std::string idempotency_key;
  /// 1-based attempt number.
  uint32_t attempt = 1;
  /// Virtual wall-clock time of the attempt's start (ms since the epoch).
  int64_t at_ms = 0;
};

/// An activity whose attempts answer from a script: the n-th attempt (of
/// any workflow) gets the n-th outcome, and once the script is used up
/// every attempt gets `otherwise`, or the last outcome again.
///
///     auto& create = env.stub<CreateVm, Vm>("cloud.create_vm");
///     create.fails(errc::unavailable, "503").returns(vm);
template <class In, class Out>
class activity_stub {
public:
  /// The next attempt returns `out` after `takes` of virtual time.
  activity_stub& returns(Out out, std::chrono::milliseconds takes = {}) {
    std::lock_guard guard{st_->mtx};
    st_->script.push_back({std::move(out), caf::none, takes});
    return *this;
  }

  /// The next attempt fails with `code` and `message` after `takes`.
  activity_stub& fails(errc code, std::string message,
                       std::chrono::milliseconds takes = {}) {
    std::lock_guard guard{st_->mtx};
    st_->script.push_back(
        {std::nullopt, make_error(code, std::move(message)), takes});
    return *this;
  }

  /// Answers the attempts after the script.
  activity_stub& otherwise(
      std::function<caf::expected<Out>(const activity_context&, const In&)>
          fn) {
    std::lock_guard guard{st_->mtx};
    st_->fallback = std::move(fn);
    return *this;
  }

  /// Every attempt so far, oldest first.
  std::vector<stub_attempt<In>> attempts() const {
    std::lock_guard guard{st_->mtx};
    return st_->attempts;
  }

private:
  friend class workflow_env;

  struct outcome {
    std::optional<Out> value;
    caf::error error;
    std::chrono::milliseconds takes{0};
  };

  struct shared {
    sys::mutex mtx;
    std::deque<outcome> script;
    std::optional<outcome> last;
    std::function<caf::expected<Out>(const activity_context&, const In&)>
        fallback;
    std::vector<stub_attempt<In>> attempts;
  };

  // One attempt: records it, then answers from the script.
  caf::expected<Out> attempt(const activity_context& ctx, const In& in) {
    std::optional<outcome> next;
    std::function<caf::expected<Out>(const activity_context&, const In&)> fn;
    {
      std::lock_guard guard{st_->mtx};
      // Bounded: a test's attempts fit in memory; a runaway retry loop
      // fails loudly instead.
      GRANARY_ASSERT(st_->attempts.size() < 1'000'000,
                     "a stub activity ran a million attempts");
      st_->attempts.push_back(
          {in, ctx.idempotency_key, ctx.attempt, sys::wall_ms()});
      if (!st_->script.empty()) {
        st_->last = st_->script.front();
        st_->script.pop_front();
        next = st_->last;
      } else if (st_->fallback) {
        fn = st_->fallback;
      } else {
        next = st_->last;
      }
    }
    if (fn)
      return fn(ctx, in);
    if (!next)
      return make_error(errc::handler_failed,
                        "stub activity: no scripted outcome and no otherwise");
    if (next->takes.count() > 0)
      sys::sleep_for(next->takes);
    if (next->value)
      return *next->value;
    return next->error;
  }

  std::shared_ptr<shared> st_ = std::make_shared<shared>();
};

class workflow_env;

/// Reads a journal exported with `granary workflow history --export FILE`
/// (a `WorkflowState`), for `check_replay` in CI (`not_found` naming the
/// file when it cannot be read, `corrupt_record` when it does not parse).
caf::expected<wire::WorkflowState> load_journal(const std::string& path);

/// What a test does inside `workflow_env::run`: start, signal and await
/// workflows, let time pass, and read journals. Only valid inside `run`.
class workflow_session {
public:
  /// The silo.
  silo& runtime();

  /// A client of the silo's workflows whose waits default to 30 days of
  /// virtual time (they end as soon as the run does).
  silo_workflow_client& client();

  /// Waits for run `id` of `W` to finish and returns its output (or its
  /// error): virtual time jumps from timer to timer meanwhile.
  template <class W>
  caf::expected<typename W::output_type>
  result(const std::string& id,
         std::chrono::milliseconds timeout = std::chrono::hours{24 * 30}) {
    return client().template result<W>(id, timeout);
  }

  /// Returns once nothing in the silo can go on without time passing:
  /// every turn, commit and activity attempt that could run did, and what
  /// is left waits for a timer, a retry or a message from outside. The
  /// clock does not move.
  void run_until_idle();

  /// Lets `d` of virtual time pass (timers, retries and timeouts due in it
  /// fire), then runs until idle.
  void advance(std::chrono::milliseconds d);

  /// The virtual wall clock (ms since the epoch).
  int64_t now_ms() const;

  /// The stored state of run `id` of workflow type `type`, journal
  /// included (`not_found` when it never started); pass it to
  /// `check_replay`.
  caf::expected<wire::WorkflowState> journal(const std::string& type,
                                             const std::string& id);

  /// The stored state of run `id` of `W`.
  template <class W>
  caf::expected<wire::WorkflowState> journal(const std::string& id) {
    return journal(std::string{W::type_name}, id);
  }

  /// Stops the silo and starts it again on the same storage: every
  /// workflow replays its journal, as after a deployment.
  caf::error restart();

private:
  friend class workflow_env;

  workflow_session(const workflow_env& env, sim::kernel& k);
  caf::error start();
  void stop();

  const workflow_env* env_;
  sim::kernel* kernel_;
  std::shared_ptr<memory_storage> mem_ = std::make_shared<memory_storage>();
  std::unique_ptr<host::silo_host> host_;
  std::unique_ptr<silo_workflow_client> client_;
};

/// A time-skipping test environment for workflows: one silo on in-memory
/// storage whose threads run under the deterministic kernel, with a
/// virtual clock that jumps to the next timer whenever nothing else can
/// run. A one-hour sleep or a one-day signal timeout passes in about a
/// millisecond, and the test never polls.
///
///     workflow_env env;
///     env.grains([](host::registration& r) { return r.workflow<flow>(); });
///     env.stub<Req, Resp>("api.call").fails(errc::unavailable, "503")
///         .returns(resp);
///     auto r = env.run([](workflow_session& s) {
///       s.client().start<flow>("f-1", input);
///       auto out = s.result<flow>("f-1"); // waits in virtual time
///     });
///     EXPECT_TRUE(r.ok) << r.detail;
class workflow_env {
public:
  explicit workflow_env(workflow_env_options opts = {});

  /// Registrations of the silo (workflows, grains, real activities).
  workflow_env& grains(host::grains_fn fn);

  /// Adjusts the silo's config after the environment's defaults.
  workflow_env& configure(std::function<void(host::silo_file_config&)> fn);

  /// Registers activity `name` as a stub (see `activity_stub`); the stub
  /// lives as long as the environment.
  template <class In, class Out>
  activity_stub<In, Out>& stub(std::string name) {
    auto stub = std::make_shared<activity_stub<In, Out>>();
    grains([stub, name](host::registration& r) {
      return r.activity<In, Out>(
          name, [stub](const activity_context& ctx, const In& in) {
            return stub->attempt(ctx, in);
          });
    });
    keep_.push_back(stub);
    return *stub;
  }

  /// Runs `body` against a fresh silo under the kernel; the silo stops
  /// after it. `ok` is false when the body failed the kernel (a
  /// deadlock, the time limit, an uncaught exception), with what happened
  /// in `detail` and the last events in `tail`. gtest assertions work in
  /// the body.
  sim::run_result run(const std::function<void(workflow_session&)>& body) const;

private:
  friend class workflow_session;

  workflow_env_options opts_;
  std::vector<host::grains_fn> grains_;
  std::vector<std::function<void(host::silo_file_config&)>> configure_;
  std::vector<std::shared_ptr<void>> keep_;
};

} // namespace granary::testing

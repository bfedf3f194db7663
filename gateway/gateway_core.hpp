#pragma once

// What the gateway's endpoints share: its state, one request in progress
// (`exchange`) and the asynchronous steps a request is made of (silo calls
// and sends with deadlines, relays to other gateways, storage work on the
// small blocking pool). Every step of a request runs on its connection's
// strand, one at a time, so an exchange needs no lock; no thread waits
// for a silo or another gateway.

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>

#include <boost/asio/thread_pool.hpp>
#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "gateway/gateway.hpp"
#include "gateway/gateway_json.hpp"
#include "http/router.hpp"
#include "http/server.hpp"
#include "runtime/silo.hpp"
#include "workflow.pb.h"

namespace granary::cluster::detail {

using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

/// The gateway's state. Requests in progress share it, so that one that
/// outlives the gateway (a silo reply that comes late) finds it; it then
/// does nothing, because its connection is gone.
class gateway_core {
public:
  gateway_core(gateway_config cfg, silo& s);

  ~gateway_core();

  const gateway_config cfg;
  silo& target;
  /// The port the gateway listens on (set once it does).
  uint16_t port = 0;
  /// Set when the gateway stops.
  std::atomic<bool> stopping{false};

  /// "running", "stopping" or "failed".
  std::string silo_status() const;

  /// A fresh update id.
  std::string fresh_id();

  /// The gateway of the silo that owns partition `p`, when it is another
  /// silo; empty when this silo serves it (or owns it, as far as it knows).
  std::string remote_gateway(uint32_t p) const;

  /// Runs `job` on the blocking pool (storage reads and dead-letter
  /// administration, which the silo offers only in blocking forms); false
  /// once the pool has stopped (then `job` is dropped).
  bool run_blocking(std::function<void()> job);

  /// Stops the blocking pool after its running jobs.
  void stop_pool();

private:
  std::mutex mtx_;
  std::mt19937_64 rng_{std::random_device{}()};
  bool pool_stopped_ = false;
  boost::asio::thread_pool pool_;
};

/// One request in progress.
struct exchange {
  std::shared_ptr<gateway_core> gw;
  http::request req;
  /// Schedules the request's steps; safe to hold on any thread.
  http::request_strand strand;
  /// Used on the strand only.
  http::responder res;
  /// Counts the steps, so that a deadline and the reply it races cannot
  /// both continue the request.
  uint64_t step = 0;

  void reply(http::response r) {
    res.send(std::move(r));
  }

  void fail(const caf::error& err) {
    res.send(error_reply(err));
  }

  const gateway_config& cfg() const {
    return gw->cfg;
  }

  silo& target() const {
    return gw->target;
  }
};

using exchange_ptr = std::shared_ptr<exchange>;

/// An endpoint: answers (now or later) the request of an exchange.
using endpoint = std::function<void(const exchange_ptr&)>;

/// Serves `method` on `path` of `r` with `e`.
void add_route(http::router& r, const std::shared_ptr<gateway_core>& gw,
               http::verb method, std::string_view path, endpoint e);

/// Serves every method on `path`.
void add_any_route(http::router& r, const std::shared_ptr<gateway_core>& gw,
                   std::string_view path, endpoint e);

/// Answers 400 and returns true when `text` (a type, a key or an id) is
/// empty, not valid UTF-8 or holds control characters; the message names
/// `what` and never echoes the bytes.
bool refuse_name(const exchange_ptr& x, const std::string& text,
                 const char* what);

/// The same for an optional message id (empty: none given).
bool refuse_id(const exchange_ptr& x, const std::string& text);

/// The `limit` of a list request (default 100, at most `max_list`); answers
/// 400 and returns nullopt when it is not a number in range.
std::optional<size_t> limit_of(const exchange_ptr& x);

/// 202 `{"accepted":true,"id":...}`: a durable message was accepted.
http::response accepted(const std::string& msg_id);

/// Whether the workflow status is final.
bool finished(wire::WorkflowState::Status s);

/// A transient call of `id` with `msg`; `then` runs on the strand with the
/// reply, or with `timeout` after `call_timeout`. `not_owner` (a partition
/// in a handoff) is retried until then, as `silo::call` does.
void call(const exchange_ptr& x, grain_id id, message_ptr msg,
          std::function<void(caf::expected<message_ptr>)> then);

/// A durable send of `msg` to `id`; `then` runs on the strand with
/// `none` once it is durable, or with the error (`timeout` after
/// `call_timeout`). `not_owner` is retried until then.
void send(const exchange_ptr& x, grain_id id,
          std::shared_ptr<const google::protobuf::Message> msg,
          std::string msg_id, std::function<void(caf::error)> then);

/// Runs `work` on the blocking pool and then `then` on the strand.
template <class T>
void offload(const exchange_ptr& x, std::function<T()> work,
             std::function<void(T)> then) {
  x->gw->run_blocking([x, work = std::move(work), then = std::move(then)] {
    auto result = std::make_shared<T>(work());
    x->strand.post([result, then] { then(std::move(*result)); });
  });
}

/// Answers with what `work` returns, run on the blocking pool.
void answer_blocking(const exchange_ptr& x,
                     std::function<http::response()> work);

// -- relays (gateway_relay.cpp) -----------------------------------------------

/// Sends `method target` to the gateway at `address` ("host:port") and runs
/// `then` on the strand with its answer, or 503 `partition_unavailable`
/// when it did not answer within `call_timeout`.
void forward(const exchange_ptr& x, const std::string& address,
             std::string target, http::verb method,
             std::function<void(http::response)> then);

/// Answers a request about grain `id` with `here` when this silo owns the
/// grain's partition, or relays it once to the owner's gateway (see
/// gateway_relay.cpp).
void at_owner(const exchange_ptr& x, const grain_id& id,
              std::function<void(std::function<void(http::response)>)> here);

// -- the endpoints, by area ---------------------------------------------------

/// GET /healthz, GET /v1/cluster.
void add_cluster_routes(http::router& r,
                        const std::shared_ptr<gateway_core>& gw);

/// /v1/workflows...
void add_workflow_routes(http::router& r,
                         const std::shared_ptr<gateway_core>& gw);

/// /v1/grains/{type}/{key}/call|send.
void add_grain_routes(http::router& r, const std::shared_ptr<gateway_core>& gw);

/// /v1/dead-letters...
void add_dead_letter_routes(http::router& r,
                            const std::shared_ptr<gateway_core>& gw);

} // namespace granary::cluster::detail

// Relays to the gateway of the silo that owns a partition, for what only
// the owner's storage can answer (history, requeue, drop) and for the
// lists that gather every silo's.

#include <charconv>

#include "gateway/gateway_core.hpp"
#include "http/client.hpp"
#include "runtime/keys.hpp"

namespace granary::cluster::detail {

void forward(const exchange_ptr& x, const std::string& address,
             std::string target, http::verb method,
             std::function<void(http::response)> then) {
  auto ep = parse_endpoint(address);
  if (!ep) {
    then(error_reply(ep.error()));
    return;
  }
  auto what
      = std::string{http::to_string(method)} + " http://" + address + target;
  http::client_request req;
  req.method = method;
  req.target = std::move(target);
  req.user_agent = "granary-gateway";
  http::client_options opts;
  opts.timeout = x->cfg().call_timeout;
  http::async_fetch(
      x->strand.executor(), ep->host, ep->port, std::move(req), opts,
      [x, address, what, then = std::move(then)](http::client_result r) {
        // On the strand already; `post` drops it when the request is gone.
        x->strand.post([x, address, what, then, r = std::move(r)]() mutable {
          if (!r) {
            then(error_reply(503, errc::partition_unavailable,
                             "the owning silo's gateway at " + address
                                 + " did not answer: " + what + " "
                                 + r.failure->describe()));
            return;
          }
          http::response out;
          out.status = r.response.status;
          out.body = std::move(r.response.body);
          auto retry = r.response.header("Retry-After");
          uint64_t secs = 0;
          std::from_chars(retry.data(), retry.data() + retry.size(), secs);
          out.retry_after_ms = secs * 1'000;
          then(std::move(out));
        });
      });
}

namespace {

/// Pause between attempts at the owner while the views of the map
/// converge.
constexpr milliseconds owner_retry{50};

struct owner_state {
  uint32_t partition = 0;
  bool relayed = false;
  std::string target;
  steady::time_point deadline;
  std::function<void(std::function<void(http::response)>)> here;
};

// A relayed request carries `local=1` and is never relayed again, so silos
// whose views of the map disagree during a handoff cannot pass it around;
// the first gateway tries again on `not_owner` until `call_timeout`, while
// the views converge.
void attempt_at_owner(const exchange_ptr& x, std::shared_ptr<owner_state> s) {
  auto done = [x, s](http::response r) {
    if (s->relayed || r.status != 503
        || r.body.find("\"not_owner\"") == std::string::npos
        || steady::now() + owner_retry > s->deadline) {
      x->reply(std::move(r));
      return;
    }
    x->strand.after(owner_retry, [x, s] { attempt_at_owner(x, s); });
  };
  auto gw = x->gw->remote_gateway(s->partition);
  if (gw.empty())
    s->here(done);
  else if (s->relayed)
    done(error_reply(make_error(errc::not_owner,
                                "partition " + std::to_string(s->partition)
                                    + " is not served by this silo; retry")));
  else
    forward(x, gw, s->target, x->req.method, done);
}

} // namespace

void at_owner(const exchange_ptr& x, const grain_id& id,
              std::function<void(std::function<void(http::response)>)> here) {
  auto s = std::make_shared<owner_state>();
  s->partition = partition_of(id, x->target().partitions());
  s->relayed = x->req.query.count("local") > 0;
  s->target = x->req.target
              + (x->req.target.find('?') == std::string::npos ? "?" : "&")
              + "local=1";
  s->deadline = steady::now() + x->cfg().call_timeout;
  s->here = std::move(here);
  attempt_at_owner(x, std::move(s));
}

} // namespace granary::cluster::detail

// Dead letters: GET /v1/dead-letters (every silo's), POST
// /v1/dead-letters/{type}/{key}/{msg_id}/requeue and DELETE
// /v1/dead-letters/{type}/{key}/{msg_id} (at the owner).

#include <set>
#include <vector>

#include "gateway/gateway_client.hpp"
#include "gateway/gateway_core.hpp"

namespace granary::cluster::detail {

namespace {

json dead_letter_json(const dead_letter_info& dl) {
  json out;
  out["type"] = dl.target.type;
  out["key"] = dl.target.key;
  out["msg_id"] = dl.msg_id;
  out["payload_type"] = dl.payload_type;
  out["attempts"] = dl.attempts;
  out["dead_ms"] = dl.dead_ms;
  out["error"] = dl.error;
  return out;
}

// A list in progress: this silo's dead letters, then those of every other
// silo that owns a partition (each dead letter lives in its grain's
// partition), up to `limit`. A silo whose gateway does not answer is named
// in `unreachable`, so that a partial list is never mistaken for all.
struct letter_list {
  size_t limit = 0;
  size_t found = 0;
  json items = json::array();
  json unreachable = json::array();
  std::vector<std::string> others;
  size_t next = 0;

  void add(const dead_letter_info& dl) {
    items.push_back(dead_letter_json(dl));
    ++found;
  }
};

void finish_list(const exchange_ptr& x, const std::shared_ptr<letter_list>& l) {
  json out;
  out["dead_letters"] = std::move(l->items);
  out["limit_reached"] = l->found >= l->limit;
  out["unreachable"] = std::move(l->unreachable);
  x->reply(json_reply(200, out));
}

// Asks the other gateways one after the other.
void ask_others(const exchange_ptr& x, std::shared_ptr<letter_list> l) {
  if (l->next == l->others.size() || l->found >= l->limit) {
    finish_list(x, l);
    return;
  }
  auto& gw = l->others[l->next++];
  forward(x, gw,
          "/v1/dead-letters?local=1&limit="
              + std::to_string(l->limit - l->found),
          http::verb::get, [x, l, gw](http::response r) {
            auto page = r.status == 200
                            ? parse_dead_letters(r.body)
                            : caf::expected<dead_letter_page>{
                                make_error(errc::partition_unavailable, "")};
            if (!page) {
              l->unreachable.push_back(gw);
            } else {
              for (auto& dl : page->letters) {
                if (l->found >= l->limit)
                  break;
                l->add(dl);
              }
            }
            ask_others(x, l);
          });
}

void list_dead_letters(const exchange_ptr& x) {
  auto limit = limit_of(x);
  if (!limit)
    return;
  using letters = caf::expected<std::vector<dead_letter_info>>;
  offload<letters>(
      x, [x, n = *limit] { return x->target().dead_letters(n); },
      [x, n = *limit](letters res) {
        if (!res)
          return x->fail(res.error());
        auto l = std::make_shared<letter_list>();
        l->limit = n;
        for (auto& dl : *res)
          l->add(dl);
        if (x->req.query.count("local") == 0) {
          std::set<std::string> others;
          for (uint32_t p = 0; p < x->target().partitions(); ++p)
            if (auto gw = x->gw->remote_gateway(p); !gw.empty())
              others.insert(std::move(gw));
          l->others.assign(others.begin(), others.end());
        }
        ask_others(x, std::move(l));
      });
}

void dead_letter_op(const exchange_ptr& x, bool requeue) {
  auto& type = x->req.param("type");
  auto& key = x->req.param("key");
  auto& msg_id = x->req.param("msg_id");
  if (refuse_name(x, type, "grain type") || refuse_name(x, key, "grain key")
      || refuse_name(x, msg_id, "message id"))
    return;
  grain_id id{type, key};
  // A dead letter lives with its grain, in the owner's storage.
  at_owner(x, id, [x, id, msg_id, requeue](auto done) {
    offload<http::response>(
        x,
        [x, id, msg_id, requeue] {
          auto err = requeue ? x->target().requeue_dead_letter(id, msg_id)
                             : x->target().drop_dead_letter(id, msg_id);
          if (err)
            return error_reply(err);
          json out;
          out[requeue ? "requeued" : "dropped"] = true;
          out["msg_id"] = msg_id;
          return json_reply(200, out);
        },
        std::move(done));
  });
}

} // namespace

void add_dead_letter_routes(http::router& r,
                            const std::shared_ptr<gateway_core>& gw) {
  add_route(r, gw, http::verb::get, "/v1/dead-letters", list_dead_letters);
  add_route(r, gw, http::verb::post,
            "/v1/dead-letters/{type}/{key}/{msg_id}/requeue",
            [](const exchange_ptr& x) { dead_letter_op(x, true); });
  add_route(r, gw, http::verb::delete_,
            "/v1/dead-letters/{type}/{key}/{msg_id}",
            [](const exchange_ptr& x) { dead_letter_op(x, false); });
}

} // namespace granary::cluster::detail

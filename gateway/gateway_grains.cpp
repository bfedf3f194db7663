// Grains: POST /v1/grains/{type}/{key}/call (transient, at most once) and
// /send (durable, effectively once by message id).

#include <optional>

#include "gateway/gateway_core.hpp"

namespace granary::cluster::detail {

namespace {

// What a call or a send is about: the grain the path names and the
// message (and, for a send, the message id) of the body.
struct grain_request {
  grain_id id;
  message_ptr msg;
  std::string msg_id;
};

// Reads the request of a call (or, `durable`, a send); nullopt when it
// answered 400.
std::optional<grain_request> read_request(const exchange_ptr& x, bool durable) {
  auto& type = x->req.param("type");
  auto& key = x->req.param("key");
  if (refuse_name(x, type, "grain type") || refuse_name(x, key, "grain key"))
    return std::nullopt;
  auto b = durable
               ? body::parse(x->req.body, {{"type", field_type::text, true},
                                           {"message", field_type::message},
                                           {"id", field_type::text}})
               : body::parse(x->req.body, {{"type", field_type::text, true},
                                           {"message", field_type::message}});
  if (!b) {
    x->fail(b.error());
    return std::nullopt;
  }
  auto msg
      = message_from_json("message", b->text("type"), b->message("message"));
  if (!msg) {
    x->fail(msg.error());
    return std::nullopt;
  }
  grain_request out{grain_id{type, key}, std::move(*msg), b->text("id")};
  if (refuse_id(x, out.msg_id))
    return std::nullopt;
  return out;
}

void call_grain(const exchange_ptr& x) {
  auto rq = read_request(x, false);
  if (!rq)
    return;
  call(x, std::move(rq->id), std::move(rq->msg),
       [x](caf::expected<message_ptr> res) {
         if (!res)
           return x->fail(res.error());
         json out;
         if (!*res) {
           out["type"] = "";
           out["message"] = nullptr;
         } else {
           out["type"] = (*res)->GetDescriptor()->full_name();
           out["message"] = message_json(**res);
         }
         x->reply(json_reply(200, out));
       });
}

void send_to_grain(const exchange_ptr& x) {
  auto rq = read_request(x, true);
  if (!rq)
    return;
  send(x, std::move(rq->id), std::move(rq->msg), rq->msg_id,
       [x, msg_id = rq->msg_id](const caf::error& err) {
         if (err)
           return x->fail(err);
         x->reply(accepted(msg_id));
       });
}

} // namespace

void add_grain_routes(http::router& r,
                      const std::shared_ptr<gateway_core>& gw) {
  add_route(r, gw, http::verb::post, "/v1/grains/{type}/{key}/call",
            call_grain);
  add_route(r, gw, http::verb::post, "/v1/grains/{type}/{key}/send",
            send_to_grain);
}

} // namespace granary::cluster::detail

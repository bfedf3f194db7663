// Workflows: start, describe, await the result, signal, query, cancel,
// update, history and lists (/v1/workflows...). Waits (a result's
// `wait_ms`, an update's answer) poll the workflow on a timer of the
// request's connection, so that no thread waits.

#include <charconv>
#include <map>
#include <optional>
#include <set>

#include "actors/workflow_client.hpp"
#include "gateway/gateway_core.hpp"
#include "gateway/gateway_history.hpp"
#include "runtime/keys.hpp"

namespace granary::cluster::detail {

namespace {

using wire::WorkflowState;

/// Records of one list request at most (bounds a sparse status filter).
constexpr size_t max_scanned = 20'000;

std::string hex_encode(std::string_view in) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(in.size() * 2);
  for (unsigned char c : in) {
    out += hex[c >> 4];
    out += hex[c & 0xf];
  }
  return out;
}

std::optional<std::string> hex_decode(std::string_view in) {
  if (in.size() % 2 != 0)
    return std::nullopt;
  std::string out;
  for (size_t i = 0; i < in.size(); i += 2) {
    unsigned v = 0;
    auto res = std::from_chars(in.data() + i, in.data() + i + 2, v, 16);
    if (res.ec != std::errc{} || res.ptr != in.data() + i + 2)
      return std::nullopt;
    out += static_cast<char>(v);
  }
  return out;
}

// The workflow the path names; false when it answered 400.
bool workflow_of(const exchange_ptr& x, grain_id& out) {
  auto& type = x->req.param("type");
  auto& id = x->req.param("id");
  if (refuse_name(x, type, "workflow type")
      || refuse_name(x, id, "workflow id"))
    return false;
  out = grain_id{type, id};
  return true;
}

json info_json(const grain_id& id, const wire::WorkflowInfo& info,
               std::optional<bool> done = std::nullopt) {
  json out;
  out["workflow"] = to_string(id);
  out["type"] = id.type;
  out["id"] = id.key;
  out["status"] = WorkflowState::Status_Name(info.status());
  out["started"] = info.started();
  out["journal_size"] = info.journal_size();
  out["error"] = info.error();
  if (info.error_code() != 0)
    out["error_code"] = to_string(static_cast<errc>(info.error_code()));
  out["run"] = info.run();
  // What the run waits on now, as fields and as one readable line each.
  auto waiting = json::array();
  for (auto& w : info.waiting()) {
    auto entry = message_json(w);
    entry["text"] = to_string(w);
    waiting.push_back(std::move(entry));
  }
  out["waiting"] = std::move(waiting);
  out["waiting_count"] = info.waiting_count();
  if (done)
    out["finished"] = *done;
  out["output_type"] = info.output_type();
  out["output"] = bytes_json(info.output_type(), info.output());
  return out;
}

// Adds the published value of `qr` to `out`.
void add_value(json& out, const wire::QueryResult& qr) {
  out["status"] = WorkflowState::Status_Name(qr.status());
  out["type"] = qr.type();
  out["value"] = bytes_json(qr.type(), qr.data());
}

template <class Reply>
void call_for(const exchange_ptr& x, const grain_id& id, message_ptr msg,
              const char* expected,
              std::function<void(caf::expected<Reply>)> then) {
  call(x, id, std::move(msg),
       [id, expected, then = std::move(then)](caf::expected<message_ptr> res) {
         if (!res)
           return then(std::move(res.error()));
         auto* reply = dynamic_cast<const Reply*>(res->get());
         if (!reply)
           return then(make_error(errc::malformed_message,
                                  to_string(id) + " did not answer with a "
                                      + expected));
         then(*reply);
       });
}

using info_then = std::function<void(caf::expected<wire::WorkflowInfo>)>;

void describe_raw(const exchange_ptr& x, const grain_id& id, info_then then) {
  call_for<wire::WorkflowInfo>(x, id,
                               std::make_shared<wire::DescribeWorkflow>(),
                               "WorkflowInfo", std::move(then));
}

// Describes `id`; `not_found` when it never started.
void describe_existing(const exchange_ptr& x, const grain_id& id,
                       info_then then) {
  describe_raw(
      x, id,
      [id, then = std::move(then)](caf::expected<wire::WorkflowInfo> info) {
        if (info && info->status() == WorkflowState::NEW)
          return then(make_error(errc::not_found, "no workflow " + to_string(id)
                                                      + " (never started)"));
        then(std::move(info));
      });
}

void query_raw(const exchange_ptr& x, const grain_id& id,
               const std::string& name,
               std::function<void(caf::expected<wire::QueryResult>)> then) {
  auto q = std::make_shared<wire::QueryWorkflow>();
  q->set_name(name);
  call_for<wire::QueryResult>(x, id, std::move(q), "QueryResult",
                              std::move(then));
}

// Reads the optional `payload_type` and `payload` of `b` into the message.
caf::error payload_into(const body& b, std::string& type_out,
                        std::string& bytes_out) {
  auto type = b.text("payload_type");
  auto* payload = b.message("payload");
  if (type.empty() && !payload)
    return caf::none;
  auto msg = message_from_json("payload", type, payload);
  if (!msg)
    return std::move(msg.error());
  type_out = type;
  (*msg)->SerializeToString(&bytes_out);
  return caf::none;
}

// -- endpoints ----------------------------------------------------------------

void describe_workflow(const exchange_ptr& x) {
  grain_id id;
  if (!workflow_of(x, id))
    return;
  describe_existing(x, id, [x, id](caf::expected<wire::WorkflowInfo> info) {
    if (!info)
      return x->fail(info.error());
    x->reply(json_reply(200, info_json(id, *info)));
  });
}

void await_result(const exchange_ptr& x, const grain_id& id,
                  steady::time_point deadline, milliseconds step) {
  describe_existing(
      x, id, [x, id, deadline, step](caf::expected<wire::WorkflowInfo> info) {
        if (!info)
          return x->fail(info.error());
        if (finished(info->status()))
          return x->reply(json_reply(200, info_json(id, *info, true)));
        if (steady::now() + step > deadline)
          return x->reply(json_reply(202, info_json(id, *info, false)));
        x->strand.after(step, [x, id, deadline, step] {
          await_result(x, id, deadline, std::min(step * 2, milliseconds{100}));
        });
      });
}

void result(const exchange_ptr& x) {
  grain_id id;
  if (!workflow_of(x, id))
    return;
  milliseconds wait{0};
  if (auto* t = x->req.query_value("wait_ms")) {
    uint64_t ms = 0;
    auto res = std::from_chars(t->data(), t->data() + t->size(), ms);
    if (t->empty() || res.ec != std::errc{} || res.ptr != t->data() + t->size())
      return x->reply(error_reply(400, errc::invalid_argument,
                                  "wait_ms must be a non-negative integer, "
                                  "not '"
                                      + *t + "'"));
    wait = std::min(milliseconds{static_cast<int64_t>(
                        std::min<uint64_t>(ms, uint64_t{1} << 40))},
                    x->cfg().max_wait);
  }
  await_result(x, id, steady::now() + wait, milliseconds{5});
}

void start(const exchange_ptr& x) {
  grain_id id;
  if (!workflow_of(x, id))
    return;
  auto b = body::parse(x->req.body, {{"input_type", field_type::text, true},
                                     {"input", field_type::message},
                                     {"reject_if_exists", field_type::flag}});
  if (!b)
    return x->fail(b.error());
  auto type = b->text("input_type");
  auto input = message_from_json("input", type, b->message("input"));
  if (!input)
    return x->fail(input.error());
  auto m = std::make_shared<wire::StartWorkflow>();
  m->set_input_type(type);
  (*input)->SerializeToString(m->mutable_input());
  m->set_reject_if_exists(b->flag("reject_if_exists"));
  call(x, id, std::move(m), [x, id](caf::expected<message_ptr> res) {
    auto& cfg = x->cfg();
    if (!res && code_of(res.error()) == errc::timeout)
      // The start message may have been delivered and committed even so.
      return x->reply(error_reply(
          504, errc::timeout,
          "workflow " + to_string(id) + " did not answer the start within "
              + std::to_string(cfg.call_timeout.count())
              + " ms, but it may have started anyway. A retry with the same "
                "id is safe: a workflow id starts at most one run (without "
                "reject_if_exists the retry answers the existing run; with "
                "it, 409 already_exists means that this start took effect)"));
    if (!res)
      return x->fail(res.error());
    auto* info = dynamic_cast<const wire::WorkflowInfo*>(res->get());
    if (!info)
      return x->reply(error_reply(500, errc::malformed_message,
                                  to_string(id) + " is not a workflow"));
    x->reply(json_reply(info->started() ? 201 : 200, info_json(id, *info)));
  });
}

void signal(const exchange_ptr& x) {
  grain_id id;
  if (!workflow_of(x, id))
    return;
  auto b = body::parse(x->req.body, {{"name", field_type::text, true},
                                     {"payload_type", field_type::text},
                                     {"payload", field_type::message},
                                     {"id", field_type::text}});
  if (!b)
    return x->fail(b.error());
  auto name = b->text("name");
  auto msg_id = b->text("id");
  if (refuse_id(x, msg_id))
    return;
  auto sig = std::make_shared<wire::Signal>();
  sig->set_name(name);
  if (auto err
      = payload_into(*b, *sig->mutable_payload_type(), *sig->mutable_payload()))
    return x->fail(err);
  describe_raw(
      x, id,
      [x, id, sig, name, msg_id](caf::expected<wire::WorkflowInfo> info) {
        if (!info)
          return x->fail(info.error());
        if (finished(info->status()))
          return x->fail(
              make_error(errc::invalid_argument,
                         "workflow " + to_string(id) + " has finished ("
                             + WorkflowState::Status_Name(info->status())
                             + "); signal '" + name + "' is not delivered"));
        send(x, id, sig, msg_id, [x, msg_id](const caf::error& err) {
          if (err)
            return x->fail(err);
          x->reply(accepted(msg_id));
        });
      });
}

void query(const exchange_ptr& x) {
  grain_id id;
  if (!workflow_of(x, id))
    return;
  auto b = body::parse(x->req.body, {{"name", field_type::text, true}});
  if (!b)
    return x->fail(b.error());
  auto name = b->text("name");
  query_raw(x, id, name, [x, id, name](caf::expected<wire::QueryResult> qr) {
    if (!qr)
      return x->fail(qr.error());
    if (qr->status() == WorkflowState::NEW)
      return x->reply(
          error_reply(404, errc::not_found,
                      "no workflow " + to_string(id) + " (never started)"));
    if (qr->type().empty())
      return x->reply(error_reply(404, errc::not_found,
                                  "workflow " + to_string(id)
                                      + " published nothing under '" + name
                                      + "' (yet)"));
    json out;
    out["name"] = name;
    add_value(out, *qr);
    x->reply(json_reply(200, out));
  });
}

void cancel(const exchange_ptr& x) {
  grain_id id;
  if (!workflow_of(x, id))
    return;
  auto b = body::parse(
      x->req.body, {{"reason", field_type::text}, {"id", field_type::text}});
  if (!b)
    return x->fail(b.error());
  auto msg_id = b->text("id");
  if (refuse_id(x, msg_id))
    return;
  auto m = std::make_shared<wire::CancelWorkflow>();
  m->set_reason(b->text("reason"));
  describe_existing(
      x, id, [x, id, m, msg_id](caf::expected<wire::WorkflowInfo> info) {
        if (!info)
          return x->fail(info.error());
        send(x, id, m, msg_id, [x, msg_id](const caf::error& err) {
          if (err)
            return x->fail(err);
          x->reply(accepted(msg_id));
        });
      });
}

struct update_wait {
  grain_id id;
  std::string name;
  std::string update_id;
  steady::time_point deadline;
};

void await_update(const exchange_ptr& x, std::shared_ptr<update_wait> u,
                  milliseconds step) {
  query_raw(x, u->id, "update:" + u->update_id,
            [x, u, step](caf::expected<wire::QueryResult> qr) {
              if (!qr)
                return x->fail(qr.error());
              if (!qr->type().empty()) {
                json out;
                out["id"] = u->update_id;
                add_value(out, *qr);
                return x->reply(json_reply(200, out));
              }
              if (steady::now() + step > u->deadline)
                return x->reply(error_reply(
                    504, errc::timeout,
                    "workflow " + to_string(u->id) + " did not answer update '"
                        + u->name + "' (" + u->update_id
                        + ") in time; retry with the same id"));
              x->strand.after(step, [x, u, step] {
                await_update(x, u, std::min(step * 2, milliseconds{50}));
              });
            });
}

void update(const exchange_ptr& x) {
  grain_id id;
  if (!workflow_of(x, id))
    return;
  auto b = body::parse(x->req.body, {{"name", field_type::text, true},
                                     {"id", field_type::text},
                                     {"payload_type", field_type::text},
                                     {"payload", field_type::message}});
  if (!b)
    return x->fail(b.error());
  auto u = std::make_shared<update_wait>();
  u->id = id;
  u->name = b->text("name");
  u->update_id = b->text("id");
  if (refuse_id(x, u->update_id))
    return;
  if (u->update_id.empty())
    u->update_id = x->gw->fresh_id();
  auto msg = std::make_shared<wire::Update>();
  msg->set_name(u->name);
  msg->set_id(u->update_id);
  if (auto err
      = payload_into(*b, *msg->mutable_payload_type(), *msg->mutable_payload()))
    return x->fail(err);
  describe_existing(x, id, [x, u, msg](caf::expected<wire::WorkflowInfo> info) {
    if (!info)
      return x->fail(info.error());
    if (info->status() != WorkflowState::RUNNING)
      return x->reply(
          error_reply(400, errc::invalid_argument,
                      "workflow " + to_string(u->id) + " is "
                          + WorkflowState::Status_Name(info->status())
                          + "; update '" + u->name + "' is not delivered"));
    u->deadline = steady::now() + x->cfg().call_timeout;
    send(x, u->id, msg, "update:" + u->update_id,
         [x, u](const caf::error& err) {
           if (err)
             return x->fail(err);
           await_update(x, u, milliseconds{2});
         });
  });
}

void history(const exchange_ptr& x) {
  grain_id id;
  if (!workflow_of(x, id))
    return;
  // The journal is read from the owner's storage.
  at_owner(x, id, [x, id](auto done) {
    offload<http::response>(
        x,
        [x, id] {
          auto raw = x->target().read_state(id);
          if (!raw)
            return error_reply(raw.error());
          if (!*raw)
            return error_reply(404, errc::not_found,
                               "no workflow " + to_string(id)
                                   + " (no stored state)");
          WorkflowState st;
          if (!st.ParseFromString(**raw))
            return error_reply(400, errc::invalid_argument,
                               "the state of " + to_string(id)
                                   + " is not a workflow journal");
          http::response r;
          r.body = to_json(make_history(id, st)) + "\n";
          return r;
        },
        std::move(done));
  });
}

void missing_id(const exchange_ptr& x) {
  if (refuse_name(x, x->req.param("type"), "workflow type"))
    return;
  x->reply(error_reply(400, errc::invalid_argument,
                       "the workflow id is empty (paths are "
                       "/v1/workflows/TYPE/ID...)"));
}

// -- lists --------------------------------------------------------------------

// A list in progress. Partitions are listed in order. In a cluster, each
// run of partitions that another silo owns is listed by that silo's
// gateway (with `local` set, so that it does not forward again, and
// `until` the end of the run); this silo scans its own storage for the
// others.
struct workflow_list {
  std::string type;
  std::optional<WorkflowState::Status> want;
  size_t limit = 0;
  std::string cursor;
  uint32_t count = 0;
  uint32_t until = 0;
  bool local_only = false;
  json items = json::array();
  size_t found = 0;
  size_t scanned = 0;
  uint32_t pass = 0;
  // The local scan found its page full, or hit `max_scanned`.
  bool done = false;
  // Gateways that did not answer, with the partitions they own.
  std::map<std::string, std::set<uint32_t>> unreachable;

  // A cursor at the start of partition q for this type.
  std::string start_of(uint32_t q) const {
    return keys::grain_prefix(q, grain_id{type, {}});
  }

  // Where the listing goes on after partition `q - 1`; empty at the end.
  std::string after(uint32_t q) const {
    return q < until ? start_of(q) : std::string{};
  }
};

uint32_t partition_at(const std::string& key) {
  return keys::read_partition(key).value_or(0);
}

void list_step(const exchange_ptr& x, std::shared_ptr<workflow_list> l);

void list_finish(const exchange_ptr& x,
                 const std::shared_ptr<workflow_list>& l) {
  if (l->local_only && !l->cursor.empty()
      && partition_at(l->cursor) >= l->until)
    l->cursor.clear();
  json missing = json::array();
  for (auto& [gw, parts] : l->unreachable) {
    json entry;
    entry["gateway"] = gw;
    entry["partitions"] = parts;
    missing.push_back(std::move(entry));
  }
  json out;
  out["workflows"] = std::move(l->items);
  out["next_cursor"] = hex_encode(l->cursor);
  out["unreachable"] = std::move(missing);
  x->reply(json_reply(200, out));
}

// Scans this silo's storage for partitions [p, end); runs on the blocking
// pool, which has the list to itself meanwhile.
caf::error scan_local(silo& s, workflow_list& l, uint32_t p, uint32_t end) {
  if (l.cursor.empty())
    l.cursor = l.start_of(p);
  auto page_size = std::max<size_t>(l.limit, 64);
  auto page = s.scan_states(l.type, l.cursor, page_size);
  if (!page)
    return std::move(page.error());
  l.cursor = page->cursor;
  auto& states = page->states;
  for (size_t i = 0; i < states.size(); ++i) {
    ++l.scanned;
    if (partition_of(states[i].id, l.count) >= end) {
      // The run of local partitions ends here.
      l.cursor = l.after(end);
      break;
    }
    WorkflowState st;
    if (!st.ParseFromString(states[i].bytes)
        || (l.want && st.status() != *l.want))
      continue;
    json item;
    item["workflow"] = to_string(states[i].id);
    item["id"] = states[i].id.key;
    item["status"] = WorkflowState::Status_Name(st.status());
    item["run"] = st.run();
    item["journal_size"] = st.journal_size();
    item["error"] = st.error();
    l.items.push_back(std::move(item));
    if (++l.found == l.limit) {
      // Resume right after this record.
      l.cursor
          = i + 1 < states.size()
                ? keys::grain_prefix(partition_of(states[i + 1].id, l.count),
                                     states[i + 1].id)
                : (l.cursor.empty() ? l.after(end) : l.cursor);
      break;
    }
  }
  if (l.cursor.empty())
    l.cursor = l.after(end); // Local storage has nothing further.
  l.done = l.found == l.limit || l.scanned >= max_scanned || l.cursor.empty();
  return caf::none;
}

// Takes the answer of the gateway that lists [p, end) for this one.
void on_relayed(const exchange_ptr& x, const std::shared_ptr<workflow_list>& l,
                const std::string& gw, uint32_t p, uint32_t end,
                http::response r) {
  if (r.status >= 500) {
    // That silo is down (or its gateway busy): list what the others have
    // and name what is missing, so that a partial list is never mistaken
    // for all.
    auto& run = l->unreachable[gw];
    for (auto q = p; q < end; ++q)
      run.insert(q);
    l->cursor = l->after(end);
    if (l->cursor.empty())
      return list_finish(x, l);
    return list_step(x, l);
  }
  if (r.status != 200)
    return x->reply(std::move(r));
  auto page = json::parse(r.body, nullptr, false);
  if (!page.is_object() || !page.contains("workflows")
      || !page["workflows"].is_array())
    return x->reply(error_reply(502, errc::malformed_message,
                                "the gateway at " + gw
                                    + " answered a list that is not JSON"));
  for (auto& item : page["workflows"])
    l->items.push_back(std::move(item));
  l->found += page["workflows"].size();
  std::string next;
  if (auto c = page.find("next_cursor"); c != page.end() && c->is_string())
    next = hex_decode(c->get<std::string>()).value_or(std::string{});
  // A cursor back means the other silo filled the page.
  l->cursor = !next.empty() ? next : l->after(end);
  if (l->found >= l->limit || l->cursor.empty())
    return list_finish(x, l);
  list_step(x, l);
}

// One pass: the run of partitions that starts at the cursor, relayed or
// scanned. Bounded: every pass moves the cursor to a later partition or
// fills the page, at most max_scanned records are read here, and there are
// at most `count + 1` passes.
void list_step(const exchange_ptr& x, std::shared_ptr<workflow_list> l) {
  if (l->pass++ > l->count)
    return list_finish(x, l);
  auto p = partition_at(l->cursor);
  if (p >= l->until)
    return list_finish(x, l);
  auto owner = [&](uint32_t q) {
    return l->local_only ? std::string{} : x->gw->remote_gateway(q);
  };
  auto gw = owner(p);
  auto end = p + 1;
  while (end < l->until && owner(end) == gw)
    ++end;
  if (!gw.empty()) {
    // A gateway that did not answer is not asked again in this request
    // (its other runs of partitions would each wait for a timeout).
    if (l->unreachable.count(gw) > 0)
      return on_relayed(x, l, gw, p, end, http::response{503, {}});
    auto target = "/v1/workflows?type=" + http::percent_encode(l->type)
                  + (l->want ? "&status=" + WorkflowState::Status_Name(*l->want)
                             : std::string{})
                  + "&limit=" + std::to_string(l->limit - l->found) + "&cursor="
                  + hex_encode(l->cursor.empty() ? l->start_of(p) : l->cursor)
                  + "&local=1&until=" + std::to_string(end);
    forward(x, gw, std::move(target), http::verb::get,
            [x, l, gw, p, end](http::response r) {
              on_relayed(x, l, gw, p, end, std::move(r));
            });
    return;
  }
  offload<caf::error>(
      x, [x, l, p, end] { return scan_local(x->target(), *l, p, end); },
      [x, l](caf::error err) {
        if (err)
          return x->fail(err);
        if (l->done)
          return list_finish(x, l);
        list_step(x, l);
      });
}

void list_workflows(const exchange_ptr& x) {
  auto l = std::make_shared<workflow_list>();
  auto* type = x->req.query_value("type");
  if (!type || type->empty())
    return x->reply(error_reply(400, errc::invalid_argument,
                                "list needs ?type=WORKFLOW_TYPE"));
  if (refuse_name(x, *type, "workflow type"))
    return;
  l->type = *type;
  if (auto* s = x->req.query_value("status")) {
    WorkflowState::Status status;
    if (!WorkflowState::Status_Parse(*s, &status))
      return x->reply(error_reply(400, errc::invalid_argument,
                                  "unknown status '" + *s
                                      + "' (expected NEW, RUNNING, COMPLETED, "
                                        "FAILED or SUSPENDED)"));
    l->want = status;
  }
  auto limit = limit_of(x);
  if (!limit)
    return;
  l->limit = *limit;
  if (auto* c = x->req.query_value("cursor")) {
    auto raw = hex_decode(*c);
    if (!raw)
      return x->reply(error_reply(400, errc::invalid_argument, "bad cursor"));
    l->cursor = std::move(*raw);
  }
  l->count = x->target().partitions();
  l->local_only = x->req.query.count("local") > 0;
  l->until = l->count;
  if (auto* u = x->req.query_value("until")) {
    auto res = std::from_chars(u->data(), u->data() + u->size(), l->until);
    if (res.ec != std::errc{} || l->until > l->count)
      return x->reply(error_reply(400, errc::invalid_argument, "bad until"));
  }
  list_step(x, std::move(l));
}

} // namespace

void add_workflow_routes(http::router& r,
                         const std::shared_ptr<gateway_core>& gw) {
  using http::verb;
  add_route(r, gw, verb::get, "/v1/workflows", list_workflows);
  add_any_route(r, gw, "/v1/workflows/{type}", missing_id);
  add_route(r, gw, verb::get, "/v1/workflows/{type}/{id}", describe_workflow);
  add_route(r, gw, verb::get, "/v1/workflows/{type}/{id}/result", result);
  add_route(r, gw, verb::get, "/v1/workflows/{type}/{id}/history", history);
  add_route(r, gw, verb::post, "/v1/workflows/{type}/{id}/start", start);
  add_route(r, gw, verb::post, "/v1/workflows/{type}/{id}/signal", signal);
  add_route(r, gw, verb::post, "/v1/workflows/{type}/{id}/query", query);
  add_route(r, gw, verb::post, "/v1/workflows/{type}/{id}/cancel", cancel);
  add_route(r, gw, verb::post, "/v1/workflows/{type}/{id}/update", update);
}

} // namespace granary::cluster::detail

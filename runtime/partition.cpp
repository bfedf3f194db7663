#include "runtime/partition.hpp"

#include <algorithm>
#include <chrono>
#include <limits>

#include <caf/actor_cast.hpp>
#include <caf/send.hpp>
#include <google/protobuf/message.h>

#include "runtime/assert.hpp"
#include "runtime/error.hpp"
#include "runtime/limits.hpp"
#include "runtime/log.hpp"

namespace granary {

using namespace detail;

namespace {

constexpr int64_t never = std::numeric_limits<int64_t>::max();

std::string encode_ms(int64_t ms) {
  std::string out;
  keys::append_u64(out, static_cast<uint64_t>(ms));
  return out;
}

const grain_id no_sender{};

// The reply to a durable call whose handler answered `msg`.
wire::Reply reply_of(const message_ptr& msg) {
  wire::Reply reply;
  if (msg) {
    reply.set_payload_type(msg->GetDescriptor()->full_name());
    msg->SerializeToString(reply.mutable_payload());
  }
  return reply;
}

// The reply to a durable call that failed for good.
wire::Reply error_reply(errc code, const std::string& why) {
  wire::Reply reply;
  reply.set_error_code(static_cast<uint32_t>(code));
  reply.set_error(why);
  return reply;
}

} // namespace

partition::partition(caf::actor_config& cfg, silo_core& core, uint32_t id)
    : caf::event_based_actor(cfg)
    , core_(core)
    , id_(id) {
  // Default handlers would print to stderr and drop; unexpected messages are
  // a programming error here, but must not kill the partition.
  set_default_handler(caf::drop);
}

caf::behavior partition::make_behavior() {
  return {
      [this](call_msg& m) { on_call(m); },
      [this](tell_msg& m) { on_tell(m); },
      [this](send_msg& m) { on_send(m); },
      [this](deliver_msg& m) { on_deliver(m); },
      [this](ack_msg& m) { on_ack(m); },
      [this](committed_msg& m) { on_committed(m); },
      [this](admin_msg& m) { m.fn(*this); },
      [this](route_msg& m) { on_route_changed(m.partition); },
      [this](flush_atom) { flush(); },
      [this](tick_atom, int64_t deadline) {
        // Only the tick for the current deadline counts: ticks replaced by
        // an earlier arm() would otherwise each re-arm and multiply.
        if (deadline == armed_at_)
          on_tick();
      },
      [this](recover_atom) -> caf::result<bool> {
        if (releasing_) {
          // A release is committing what was pending; recovering now would
          // be undone when it finishes. Recover once it has finished: a
          // release asked of a releasing partition answers then.
          auto rp = make_response_promise();
          request(caf::actor_cast<caf::actor>(this), caf::infinite,
                  release_atom::value)
              .then(
                  [this, rp](bool) mutable {
                    if (releasing_) {
                      rp.deliver(not_served()); // Released again meanwhile.
                      return;
                    }
                    if (serving_) {
                      rp.deliver(true);
                      return;
                    }
                    if (auto err = recover()) {
                      rp.deliver(std::move(err));
                      return;
                    }
                    serving_ = true;
                    rp.deliver(true);
                  },
                  [rp](caf::error& err) mutable {
                    rp.deliver(std::move(err));
                  });
          return rp;
        }
        if (serving_)
          return true;
        if (auto err = recover())
          return err;
        serving_ = true;
        return true;
      },
      [this](release_atom) {
        auto rp = make_response_promise();
        if (releasing_) {
          // Asked again (an earlier ask timed out): answer when it is done.
          release_promises_.push_back(rp);
          return rp;
        }
        if (!serving_ || stopping_) {
          rp.deliver(true);
          return rp;
        }
        stopping_ = true;
        releasing_ = true;
        flush();
        release_promises_.push_back(rp);
        finish_stop();
        return rp;
      },
      [this](stop_atom) {
        auto rp = make_response_promise();
        stopping_ = true;
        shutting_down_ = true;
        flush();
        stop_promises_.push_back(rp);
        finish_stop();
        return rp;
      },
  };
}

// -- admission ----------------------------------------------------------------

caf::error partition::overloaded(std::string what, int64_t retry_after_ms) {
  bump(core_.stats.overloaded);
  what += "; retry after ";
  what += std::to_string(retry_after_ms);
  what += " ms";
  return make_error(errc::overloaded, std::move(what));
}

void partition::on_call(call_msg& m) {
  core_.release(id_);
  if (!failed_ && (!serving_ || releasing_)) {
    m.reply(not_served());
    return;
  }
  if (failed_ || stopping_) {
    m.reply(failed_ ? failure_
                    : make_error(errc::silo_stopped, "the silo is stopping"));
    return;
  }
  auto act_res = activate(m.target);
  if (!act_res) {
    m.reply(std::move(act_res.error()));
    return;
  }
  auto& act = **act_res;
  const google::protobuf::Message* proto = nullptr;
  if (auto err
      = check_payload_type(act, m.msg->GetDescriptor()->full_name(), proto)) {
    m.reply(std::move(err));
    return;
  }
  turn t{this, *act.id, false, {}, no_sender, 1, core_.clk->now_ms()};
  caf::expected<message_ptr> result{caf::error{}};
  try {
    result = act.grain->handle(t, *m.msg);
  } catch (const std::exception& e) {
    result = make_error(errc::handler_failed, "handler of " + to_string(*act.id)
                                                  + " threw: " + e.what());
  }
  bump(core_.stats.turns);
  bump(core_.stats.transient_turns);
  bool writes = act.grain->dirty() || !t.sends_.empty() || !t.timers_.empty();
  if (result && writes) {
    if (auto err = core_.check_space())
      result = std::move(err);
    else if (uncommitted_turns_ >= core_.cfg.max_uncommitted_per_partition)
      result = overloaded("partition " + std::to_string(id_) + " has "
                              + std::to_string(uncommitted_turns_)
                              + " turns waiting for their commit",
                          5);
  }
  if (!result) {
    bump(core_.stats.failed_turns);
    rollback(act);
    for (auto& out : t.tells_)
      core_.release(partition_of(out.to, core_.cfg.partitions));
    defer_after(act,
                [reply = std::move(m.reply), err = std::move(result.error())](
                    const caf::error&) { reply(err); });
    return;
  }
  if (writes)
    apply_turn(act, t);
  else
    for (auto& out : t.tells_)
      defer_after(act, [this, out = std::move(out)](const caf::error& err) {
        emit_tell(out, err);
      });
  defer_after(act, [reply = std::move(m.reply),
                    msg = std::move(*result)](const caf::error& err) {
    if (err)
      reply(err);
    else
      reply(msg);
  });
}

void partition::on_tell(tell_msg& m) {
  // A tell is a transient call whose reply nobody awaits; errors are logged
  // because there is no caller to return them to.
  auto target = m.target;
  call_msg call{std::move(m.target), std::move(m.msg),
                [target](caf::expected<message_ptr> res) {
                  if (!res)
                    log(log_level::warning,
                        "transient tell to " + to_string(target)
                            + " failed: " + describe(res.error()));
                }};
  on_call(call);
}

void partition::on_send(send_msg& m) {
  core_.release(id_);
  auto reject = [&](caf::error err) { m.done(err); };
  if (!failed_ && (!serving_ || releasing_))
    return reject(not_served());
  if (failed_ || stopping_)
    return reject(failed_
                      ? failure_
                      : make_error(errc::silo_stopped, "the silo is stopping"));
  if (auto err = core_.check_space())
    return reject(std::move(err));
  if (uncommitted_turns_ >= core_.cfg.max_uncommitted_per_partition)
    return reject(overloaded("partition " + std::to_string(id_) + " has "
                                 + std::to_string(uncommitted_turns_)
                                 + " turns waiting for their commit",
                             5));
  grain_id target{m.env->target().type(), m.env->target().key()};
  auto dk = keys::with_suffix(prefix_of(target), m.env->msg_id());
  // A local client learns what was wrong and nothing is stored; a message
  // from another silo becomes a dead letter (a call is answered with the
  // error), because its sender would only deliver it again.
  auto refuse = [&](activation* act, caf::error err) {
    if (!m.remote)
      return reject(std::move(err));
    if (pending_ids_.count(dk) > 0) {
      defer(std::move(m.done));
      return;
    }
    if (!m.fresh) {
      auto seen = core_.store->get(column::dedup, dk);
      if (!seen)
        return reject(std::move(seen.error()));
      if (*seen) {
        bump(core_.stats.duplicates);
        return m.done(caf::none);
      }
    }
    work_item item;
    item.env = std::move(m.env);
    item.done = std::move(m.done);
    item.dedup = !m.fresh;
    if (item.dedup)
      pending_ids_.insert(dk);
    auto code = code_of(err);
    dead_letter(act, item,
                code == errc::unspecified ? errc::handler_failed : code,
                describe(err));
  };
  auto act_res = activate(target);
  if (!act_res) {
    if (code_of(act_res.error()) == errc::unknown_grain_type)
      return refuse(nullptr, std::move(act_res.error()));
    return reject(std::move(act_res.error()));
  }
  auto& act = **act_res;
  const google::protobuf::Message* proto = nullptr;
  if (auto err = check_payload_type(act, m.env->payload_type(), proto))
    return refuse(&act, std::move(err));
  {
    // Check undecodable bytes up front.
    std::unique_ptr<google::protobuf::Message> probe{proto->New()};
    if (!probe->ParseFromString(m.env->payload()))
      return refuse(&act,
                    make_error(errc::malformed_message,
                               "payload of message " + m.env->msg_id() + " to "
                                   + to_string(target) + " does not parse as "
                                   + m.env->payload_type()));
  }
  if (!m.fresh) {
    if (pending_ids_.count(dk) > 0) {
      bump(core_.stats.duplicates);
      // Acknowledge once everything in flight (the original) is durable.
      defer(std::move(m.done));
      return;
    }
    auto seen = core_.store->get(column::dedup, dk);
    if (!seen)
      return reject(std::move(seen.error()));
    if (*seen) {
      bump(core_.stats.duplicates);
      m.done(caf::none);
      return;
    }
  }
  work_item item;
  item.env = std::move(m.env);
  item.done = std::move(m.done);
  item.dedup = !m.fresh;
  if (act.blocked
      && act.blocked->items.size() >= core_.cfg.max_inbox_per_grain) {
    auto retry
        = std::max<int64_t>(act.blocked->retry_at_ms - core_.clk->now_ms(), 10);
    return item.done(overloaded("inbox of grain " + to_string(target)
                                    + " holds "
                                    + std::to_string(act.blocked->items.size())
                                    + " messages (max_inbox_per_grain)",
                                retry));
  }
  if (item.dedup)
    pending_ids_.insert(dk);
  accept_durable(act, std::move(item));
}

void partition::on_deliver(deliver_msg& m) {
  core_.release(id_);
  // Shared with the sender, which keeps it for redelivery but never reads
  // or changes its fields again; `fail_durable` copies it before the only
  // change a receiver makes.
  auto env = m.env;
  work_item item;
  item.env = env;
  item.from = m.from;
  item.record = false;
  if (!failed_ && (!serving_ || releasing_)) {
    ack_sender(item, not_served(), 50);
    return;
  }
  if (failed_ && !stopping_) {
    ack_sender(item, failure_, 1'000);
    return;
  }
  if (stopping_)
    return; // The silo stops; the sender redelivers after its restart.
  int64_t retry_ms = 10;
  if (auto err = core_.check_space()) {
    ack_sender(item, err, 1'000);
    return;
  }
  if (uncommitted_turns_ >= core_.cfg.max_uncommitted_per_partition) {
    ack_sender(item, overloaded("partition busy", retry_ms), retry_ms);
    return;
  }
  grain_id target{env->target().type(), env->target().key()};
  auto dk = keys::with_suffix(prefix_of(target), env->msg_id());
  if (!m.fresh) {
    if (pending_ids_.count(dk) > 0) {
      bump(core_.stats.duplicates);
      ack_sender(item, caf::none, 0);
      return;
    }
    // Redeliveries leave only once the sender's record is durable; the
    // commit that processed an earlier copy deleted it.
    auto stored = core_.store->get(column::outbox, env->ack_key());
    if (!stored) {
      fail_stop(stored.error());
      ack_sender(item, failure_, 1'000);
      return;
    }
    if (!*stored) {
      bump(core_.stats.duplicates);
      ack_sender(item, caf::none, 0);
      return;
    }
  }
  if (env->has_reply_to()) {
    // A call's reply joins its target's outbox: refuse new calls while that
    // outbox is full, so that replies never have to be refused.
    if (auto err = check_outbox_room(target, 0)) {
      ack_sender(item, std::move(err), 50);
      return;
    }
  }
  auto act_res = activate(target);
  if (!act_res) {
    if (code_of(act_res.error()) == errc::unknown_grain_type) {
      pending_ids_.insert(dk);
      dead_letter(nullptr, item, errc::unknown_grain_type,
                  describe(act_res.error()));
    } else {
      ack_sender(item, act_res.error(), 1'000);
    }
    return;
  }
  auto& act = **act_res;
  if (act.blocked
      && act.blocked->items.size() >= core_.cfg.max_inbox_per_grain) {
    retry_ms
        = std::max<int64_t>(act.blocked->retry_at_ms - core_.clk->now_ms(), 10);
    ack_sender(item, overloaded("inbox full", retry_ms), retry_ms);
    return;
  }
  pending_ids_.insert(dk);
  accept_durable(act, std::move(item));
}

void partition::accept_durable(activation& act, work_item item) {
  if (!act.blocked) {
    run_durable(act, item);
    return;
  }
  // Queue behind the blocked message; store it so that the accept is
  // durable before the sender is acknowledged.
  if (item.source_key.empty()) {
    item.source_col = column::inbox;
    item.source_key = keys::with_seq(prefix_of(*act.id), core_.next_seq());
    batch_.put(column::inbox, item.source_key, item.env->SerializeAsString());
    touch_write(act);
    if (item.done)
      defer(std::exchange(item.done, nullptr));
    if (item.from != no_partition) {
      ack_sender(item, caf::none, 0);
      item.from = no_partition;
    }
  }
  act.blocked->items.push_back(std::move(item));
}

void partition::ack_sender(work_item& item, caf::error err,
                           int64_t retry_after_ms) {
  if (item.from == no_partition)
    return;
  auto to = core_.partitions[item.from];
  ack_msg ack{item.env->ack_key(), std::move(err), retry_after_ms};
  if (ack.err) {
    caf::anon_send(to, std::move(ack));
    return;
  }
  // Same commit as the processing (or storing) of the message: after a
  // crash, either both happened or the sender redelivers.
  batch_.erase(column::outbox, ack.outbox_key);
  defer([to, ack = std::move(ack)](const caf::error& err) mutable {
    // A failed commit still answers, so that the sender's count of
    // unanswered deliveries stays exact; it keeps its entry.
    if (err) {
      ack.err = err;
      ack.retry_after_ms = 1'000;
    }
    caf::anon_send(to, std::move(ack));
  });
}

void partition::on_ack(ack_msg& m) {
  if (!m.remote) {
    // After a release reset the count, no answer can be left (the release
    // waited for them all) unless the silo is shutting down.
    GRANARY_ASSERT(unanswered_local_ > 0 || shutting_down_ || !serving_,
                   "a local delivery was answered twice");
    if (unanswered_local_ > 0)
      --unanswered_local_;
    if (unanswered_local_ == 0 && releasing_)
      finish_stop();
  }
  auto i = outbox_.find(m.outbox_key);
  if (i == outbox_.end())
    return; // Duplicate acknowledgement.
  auto now = core_.clk->now_ms();
  if (m.err) {
    // A message that keeps being refused is worth a line now and then
    // (attempt 16, 32, 64, ...): it is waiting, not lost.
    auto n = i->second.attempts;
    if (n >= 16 && (n & (n - 1)) == 0)
      log(log_level::warning,
          "message " + i->second.env->msg_id() + " from "
              + to_string(i->second.sender) + " to partition "
              + std::to_string(i->second.target_partition)
              + " is still undelivered after " + std::to_string(n)
              + " attempts: " + describe(m.err));
    // Only a dead owner parks: `not_owner` (a handoff under way, or a
    // partition still recovering) clears within moments, and not always
    // with a change of route here.
    if (code_of(m.err) == errc::partition_unavailable)
      park(i->first, i->second, now, m.retry_after_ms);
    else
      reschedule(i->first, i->second,
                 now + std::max<int64_t>(m.retry_after_ms, 5));
    return;
  }
  if (m.remote) {
    // Another silo committed it, with its own dedup record: the record
    // here goes now (a redelivery before this commit is deduplicated).
    batch_.erase(column::outbox, m.outbox_key);
    schedule_flush();
  }
  forget_out(i);
  schedule_flush();
}

void partition::forget_out(std::map<std::string, pending_out>::iterator i) {
  reschedule(i->first, i->second, never);
  // Paired with the count in `put_outbox` and `recover`.
  auto c = outbox_count_.find(i->second.sender);
  GRANARY_ASSERT(c != outbox_count_.end() && c->second > 0,
                 "an outbox entry was not counted for its sender");
  if (--c->second == 0)
    outbox_count_.erase(c);
  outbox_.erase(i);
}

void partition::reschedule(const std::string& key, pending_out& out,
                           int64_t at_ms) {
  if (out.next_attempt_ms != never) {
    auto n = retry_queue_.erase({out.next_attempt_ms, key});
    GRANARY_ASSERT(n == 1, "an outbox entry's next attempt was not queued");
  }
  if (out.parked) {
    out.parked = false;
    if (auto i = parked_.find(out.target_partition); i != parked_.end()) {
      i->second.erase(key);
      if (i->second.empty())
        parked_.erase(i);
    }
  }
  out.next_attempt_ms = at_ms;
  if (at_ms != never) {
    retry_queue_.emplace(at_ms, key);
    GRANARY_ASSERT(retry_queue_.size() <= outbox_.size(),
                   "the retry queue holds more than the outbox");
    arm(at_ms);
  }
}

void partition::park(const std::string& key, pending_out& out, int64_t now,
                     int64_t retry_after_ms) {
  auto backstop
      = std::max<int64_t>(retry_after_ms, core_.cfg.parked_retry.count());
  reschedule(key, out, now + backstop);
  out.parked = true;
  parked_[out.target_partition].insert(key);
}

void partition::on_route_changed(uint32_t p) {
  auto i = parked_.find(p);
  if (i == parked_.end() || failed_ || stopping_ || !serving_)
    return;
  // Bounded per message, so that a large backlog cannot hold the mailbox;
  // what is left follows in the next message.
  auto now = core_.clk->now_ms();
  size_t moved = 0;
  while (i != parked_.end() && !i->second.empty()
         && moved < limits::max_unparked_per_message) {
    auto key = *i->second.begin();
    auto o = outbox_.find(key);
    GRANARY_ASSERT(o != outbox_.end(), "a parked outbox entry is unknown");
    reschedule(key, o->second, now); // Unparks; erases `i` with the last.
    ++moved;
    i = parked_.find(p);
  }
  if (i != parked_.end())
    send(this, route_msg{p});
}

// -- turns --------------------------------------------------------------------

caf::expected<partition::activation*> partition::activate(const grain_id& id) {
  // Only a recovered partition runs grains, so no grain runs on two silos.
  GRANARY_ASSERT(serving_ || recovering_,
                 "a grain was activated on a partition that does not serve");
  auto now = core_.clk->now_ms();
  if (auto i = catalog_.find(id); i != catalog_.end()) {
    auto* act = i->second.get();
    act->last_used_ms = now;
    lru_touch(*act);
    return act;
  }
  auto* factory = core_.registry.find(id.type);
  if (!factory) {
    std::string known;
    for (auto& name : core_.registry.names())
      known += (known.empty() ? "" : ", ") + name;
    return make_error(errc::unknown_grain_type,
                      "grain type '" + id.type
                          + "' is not registered on this silo (registered: "
                          + (known.empty() ? "none" : known) + ")");
  }
  auto grain = (*factory)();
  auto key = prefix_of(id);
  auto bytes = core_.store->get(column::state, key);
  if (!bytes)
    return std::move(bytes.error());
  caf::error err;
  if (*bytes)
    err = grain->load_state(std::string_view{**bytes});
  else
    err = grain->load_state(std::nullopt);
  if (err) {
    auto msg
        = "state record of grain " + to_string(id) + " (key "
          + keys::printable(key)
          + ") does not decode; the record is kept untouched: " + describe(err);
    log(log_level::error, msg);
    return make_error(errc::corrupt_record, std::move(msg));
  }
  grain->clear_dirty();
  auto [it, added] = catalog_.emplace(id, std::make_unique<activation>());
  auto* act = it->second.get();
  act->id = &it->first;
  act->grain = std::move(grain);
  act->has_state = bytes->has_value();
  if (act->has_state)
    act->state_bytes = std::move(**bytes);
  act->last_used_ms = now;
  lru_touch(*act);
  bump(core_.stats.activations);
  act->grain->on_activate();
  arm(now + std::max<int64_t>(core_.cfg.idle_age.count() / 2, 1));
  return act;
}

caf::error
partition::check_payload_type(activation& act, const std::string& type,
                              const google::protobuf::Message*& proto) {
  proto = act.grain->prototype(type);
  if (proto)
    return caf::none;
  return make_error(errc::unhandled_message,
                    "grain type '" + act.id->type
                        + "' does not handle message type '" + type + "'");
}

void partition::run_durable(activation& act, work_item& item) {
  GRANARY_ASSERT(serving_, "a turn ran on a partition that does not serve");
  auto& env = *item.env;
  const google::protobuf::Message* proto = nullptr;
  if (auto err = check_payload_type(act, env.payload_type(), proto)) {
    dead_letter(&act, item, code_of(err), describe(err));
    return;
  }
  std::unique_ptr<google::protobuf::Message> msg{proto->New()};
  if (!msg->ParseFromString(env.payload())) {
    dead_letter(&act, item, errc::malformed_message,
                "payload does not parse as " + env.payload_type());
    return;
  }
  grain_id sender;
  if (env.has_sender())
    sender = grain_id{env.sender().type(), env.sender().key()};
  turn t{this,
         *act.id,
         true,
         env.msg_id(),
         sender,
         env.attempts() + 1,
         core_.clk->now_ms(),
         &env};
  caf::expected<message_ptr> result{caf::error{}};
  try {
    result = act.grain->handle(t, *msg);
  } catch (const std::exception& e) {
    result = make_error(errc::handler_failed, "handler of " + to_string(*act.id)
                                                  + " threw: " + e.what());
  }
  bump(core_.stats.turns);
  bump(core_.stats.durable_turns);
  if (!result) {
    for (auto& out : t.tells_)
      core_.release(partition_of(out.to, core_.cfg.partitions));
    fail_durable(act, std::move(item), result.error());
    return;
  }
  if (item.dedup) {
    auto dk = keys::with_suffix(prefix_of(*act.id), env.msg_id());
    if (item.record)
      batch_.put(column::dedup, dk, encode_ms(t.now_ms()));
    batch_ids_.push_back(dk);
  }
  finish_source(item);
  apply_turn(act, t);
  if (env.has_reply_to() && !t.postponed_)
    answer_call(env, reply_of(*result));
  if (item.done)
    defer(std::move(item.done));
  ack_sender(item, caf::none, 0);
}

void partition::fail_durable(activation& act, work_item item,
                             const caf::error& err) {
  bump(core_.stats.failed_turns);
  rollback(act);
  // A delivered envelope may still be shared with its sender's outbox.
  if (item.env.use_count() > 1)
    item.env = std::make_shared<wire::Envelope>(*item.env);
  auto& env = *item.env;
  env.set_attempts(env.attempts() + 1);
  log(log_level::warning,
      "grain " + to_string(*act.id) + ": message " + env.msg_id() + " ("
          + env.payload_type() + ") failed, attempt "
          + std::to_string(env.attempts()) + "/"
          + std::to_string(core_.cfg.max_attempts) + ": " + describe(err));
  if (env.attempts() >= core_.cfg.max_attempts) {
    // The handler's own code tells a caller more than a generic failure.
    auto code = code_of(err);
    if (code == errc::unspecified)
      code = errc::handler_failed;
    dead_letter(&act, item, code,
                "failed " + std::to_string(env.attempts())
                    + " attempts; last error: " + describe(err));
    return;
  }
  if (item.source_key.empty()) {
    item.source_col = column::inbox;
    item.source_key = keys::with_seq(prefix_of(*act.id), core_.next_seq());
  }
  if (item.source_col == column::inbox) {
    // Store (or update) the message with its attempt count, so that a
    // restart neither loses it nor resets its poison-message accounting.
    batch_.put(column::inbox, item.source_key, env.SerializeAsString());
    touch_write(act);
    if (item.done)
      defer(std::exchange(item.done, nullptr));
    if (item.from != no_partition) {
      ack_sender(item, caf::none, 0);
      item.from = no_partition;
    }
  }
  if (!act.blocked)
    act.blocked = std::make_unique<blocked_queue>();
  act.blocked->retry_at_ms = core_.clk->now_ms() + retry_delay(env.attempts());
  act.blocked->items.push_front(std::move(item));
  blocked_.insert(act.id);
  arm(act.blocked->retry_at_ms);
}

void partition::dead_letter(activation* act, work_item& item, errc code,
                            const std::string& why) {
  auto& env = *item.env;
  grain_id target{env.target().type(), env.target().key()};
  auto prefix = prefix_of(target);
  wire::DeadLetter dl;
  *dl.mutable_envelope() = env;
  dl.set_error(why);
  dl.set_dead_ms(core_.clk->now_ms());
  dl.set_attempts(env.attempts());
  batch_.put(column::dead_letters, keys::with_suffix(prefix, env.msg_id()),
             dl.SerializeAsString());
  if (item.dedup) {
    auto dk = keys::with_suffix(prefix, env.msg_id());
    if (item.record)
      batch_.put(column::dedup, dk, encode_ms(dl.dead_ms()));
    batch_ids_.push_back(dk);
  }
  finish_source(item);
  if (act)
    touch_write(*act);
  else
    schedule_flush();
  bump(core_.stats.dead_letters);
  log(log_level::warning, "message " + env.msg_id() + " to " + to_string(target)
                              + " moved to dead letters: " + why);
  // A caller never waits forever: a dead-lettered call is answered too.
  if (env.has_reply_to())
    answer_call(env, error_reply(code, why));
  if (item.done)
    defer(std::move(item.done));
  ack_sender(item, caf::none, 0);
}

void partition::finish_source(work_item& item) {
  if (item.source_key.empty())
    return;
  if (item.source_col != column::timers) {
    batch_.erase(item.source_col, item.source_key);
    return;
  }
  auto& env = *item.env;
  auto i = timers_.find(item.source_key);
  if (i == timers_.end() || !i->second.firing
      || i->second.env->due_ms() != env.due_ms())
    return; // Cancelled or re-set since it fired: the new schedule rules.
  if (env.period_ms() <= 0) {
    put_timer(item.source_key, nullptr);
    return;
  }
  auto now = core_.clk->now_ms();
  auto due = env.due_ms() + env.period_ms();
  if (due <= now)
    due = now + env.period_ms(); // Skip missed periods rather than burst.
  auto next = std::make_shared<wire::Envelope>(env);
  next->set_due_ms(due);
  next->set_attempts(0);
  next->set_msg_id("t:" + env.timer_name() + ":" + std::to_string(due));
  put_timer(item.source_key, std::move(next));
}

void partition::apply_turn(activation& act, turn& t) {
  auto prefix = prefix_of(*act.id);
  if (act.grain->dirty()) {
    std::string bytes;
    act.grain->save_state(bytes);
    act.state_bytes = bytes;
    act.has_state = true;
    act.grain->clear_dirty();
    batch_.put(column::state, prefix, std::move(bytes));
  }
  auto now = t.now_ms();
  for (auto& out : t.sends_) {
    auto to = partition_of(out.to, core_.cfg.partitions);
    auto env = std::make_shared<wire::Envelope>();
    env->mutable_target()->set_type(std::move(out.to.type));
    env->mutable_target()->set_key(std::move(out.to.key));
    env->set_payload_type(std::move(out.payload_type));
    env->set_payload(std::move(out.payload));
    if (out.call) {
      env->mutable_reply_to()->set_type(act.id->type);
      env->mutable_reply_to()->set_key(act.id->key);
      env->set_correlation(std::move(out.correlation));
    }
    put_outbox(*act.id, to, std::move(env), now);
  }
  for (auto& tc : t.timers_) {
    auto key = keys::with_suffix(prefix, tc.name);
    drop_queued_firing(act, key);
    if (tc.cancel) {
      put_timer(key, nullptr);
      continue;
    }
    auto env = std::make_shared<wire::Envelope>();
    env->set_msg_id("t:" + tc.name + ":" + std::to_string(tc.due_ms));
    env->mutable_target()->set_type(act.id->type);
    env->mutable_target()->set_key(act.id->key);
    env->set_payload_type(std::move(tc.payload_type));
    env->set_payload(std::move(tc.payload));
    env->set_due_ms(tc.due_ms);
    env->set_period_ms(tc.period_ms);
    env->set_timer_name(tc.name);
    env->set_watchdog(tc.watchdog);
    env->set_accepted_ms(now);
    put_timer(key, std::move(env));
  }
  for (auto& out : t.tells_)
    defer([this, out = std::move(out)](const caf::error& err) {
      emit_tell(out, err);
    });
  touch_write(act);
}

void partition::emit_tell(const turn::transient_out& out,
                          const caf::error& err) {
  auto p = partition_of(out.to, core_.cfg.partitions);
  if (err) {
    core_.release(p);
    return;
  }
  if (auto* router = core_.remote_owner(p)) {
    // At most once, like a local tell: the answer is not awaited.
    core_.release(p);
    router->call(p, out.to, out.msg, core_.cfg.remote_call_timeout,
                 [](caf::expected<message_ptr>) {});
    return;
  }
  caf::anon_send(core_.partitions[p], tell_msg{out.to, out.msg});
}

void partition::rollback(activation& act) {
  if (!act.grain->dirty())
    return;
  std::optional<std::string_view> bytes;
  if (act.has_state)
    bytes = act.state_bytes;
  // The bytes decoded when they were saved, so this cannot fail.
  static_cast<void>(act.grain->load_state(bytes));
  act.grain->clear_dirty();
}

void partition::run_blocked(activation& act) {
  auto now = core_.clk->now_ms();
  // Bounded: each iteration removes one item, and the queue is bounded by
  // max_inbox_per_grain; a failure re-queues the item and returns.
  while (act.blocked && !act.blocked->items.empty()) {
    if (act.blocked->retry_at_ms > now) {
      arm(act.blocked->retry_at_ms);
      return;
    }
    auto item = std::move(act.blocked->items.front());
    act.blocked->items.pop_front();
    run_durable(act, item);
  }
  if (act.blocked && act.blocked->items.empty()) {
    act.blocked.reset();
    blocked_.erase(act.id);
  }
}

int64_t partition::retry_delay(uint32_t attempts) const {
  auto delay = core_.cfg.retry_initial.count();
  for (uint32_t i = 1; i < attempts && delay < core_.cfg.retry_max.count(); ++i)
    delay *= 2;
  return std::min<int64_t>(delay, core_.cfg.retry_max.count());
}

// -- commit and effects -------------------------------------------------------

void partition::touch_write(activation& act) {
  act.last_ticket = next_ticket_;
  ++batch_turns_;
  ++uncommitted_turns_;
  schedule_flush();
}

void partition::defer(effect fx) {
  effects_.push_back(std::move(fx));
  schedule_flush();
}

void partition::defer_after(activation& act, effect fx) {
  // A reply may reveal state written by a turn whose commit is still
  // pending; it waits for that commit so that no caller ever observes state
  // a crash could take back.
  if (act.last_ticket > committed_through_)
    defer(std::move(fx));
  else
    fx(caf::none);
}

void partition::schedule_flush() {
  if (flush_scheduled_)
    return;
  flush_scheduled_ = true;
  // Lands behind everything already in the mailbox: one flush per burst.
  send(this, flush_atom::value);
}

void partition::flush() {
  flush_scheduled_ = false;
  if (batch_.empty()) {
    if (effects_.empty())
      return;
    if (!inflight_.empty()) {
      auto& tail = inflight_.back().effects;
      for (auto& fx : effects_)
        tail.push_back(std::move(fx));
      effects_.clear();
      return;
    }
    auto fxs = std::move(effects_);
    effects_.clear();
    for (auto& fx : fxs)
      fx(failed_ ? failure_ : caf::error{});
    return;
  }
  auto ticket = next_ticket_++;
  // Paired with `on_committed`: tickets grow, so commits land in order.
  GRANARY_ASSERT(ticket > committed_through_
                     && (inflight_.empty() || inflight_.back().ticket < ticket),
                 "commit tickets are not monotonic");
  // The batch moves to the commit thread: size the next one like it, so
  // that it does not grow by reallocation, moving every record each time.
  auto expected_ops = batch_.size();
  inflight_.push_back(inflight{ticket, batch_turns_, std::move(effects_),
                               std::move(batch_ids_)});
  effects_.clear();
  batch_ids_.clear();
  batch_turns_ = 0;
  auto self = caf::actor_cast<caf::actor>(this);
  core_.commits->submit(std::move(batch_),
                        [self, ticket](const caf::error& err) {
                          caf::anon_send(self, committed_msg{ticket, err});
                        });
  batch_.clear();
  batch_.reserve(expected_ops);
  // Submitted: any receiver's commit now lands after this one, so the
  // messages may go before it is durable.
  auto keys = std::move(batch_outbox_);
  batch_outbox_.clear();
  for (auto& key : keys) {
    if (auto i = outbox_.find(key); i != outbox_.end()) {
      i->second.submitted = true;
      deliver(key, i->second);
    }
  }
}

void partition::drop_inflight(uint64_t ticket, const caf::error& err) {
  auto i = std::find_if(inflight_.begin(), inflight_.end(),
                        [&](const inflight& x) { return x.ticket == ticket; });
  if (i == inflight_.end())
    return;
  auto done = std::move(*i);
  inflight_.erase(i);
  GRANARY_ASSERT(uncommitted_turns_ >= done.turns,
                 "a batch counted more turns than are uncommitted");
  uncommitted_turns_ -= done.turns;
  for (auto& fx : done.effects)
    fx(err);
}

void partition::on_committed(committed_msg& m) {
  if (code_of(m.err) == errc::silo_stopped) {
    // Refused at shutdown, possibly ahead of an earlier batch that the
    // commit loop is still draining: nothing was written, so drop it
    // wherever it is; its work is redone after the restart.
    drop_inflight(m.ticket, m.err);
    return;
  }
  if (m.err && (inflight_.empty() || inflight_.front().ticket != m.ticket)) {
    // After a failed write, a batch submitted later fails at once inside
    // `submit` (on this thread) while the loop thread is still failing the
    // earlier ones, so their notices can cross. Every one of them fails,
    // so their order no longer matters.
    fail_stop(m.err);
    drop_inflight(m.ticket, m.err);
    return;
  }
  if (inflight_.empty() || inflight_.front().ticket != m.ticket) {
    // The commit loop notifies successes in submission order; anything
    // else is a bug that must not be papered over.
    fail_stop(make_error(errc::storage_failure,
                         "commit notifications out of order in partition "
                             + std::to_string(id_)));
    return;
  }
  auto done = std::move(inflight_.front());
  inflight_.pop_front();
  GRANARY_ASSERT(done.ticket > committed_through_,
                 "committed_through_ would move backwards");
  committed_through_ = done.ticket;
  timers_committed();
  GRANARY_ASSERT(uncommitted_turns_ >= done.turns,
                 "a batch counted more turns than are uncommitted");
  uncommitted_turns_ -= done.turns;
  GRANARY_DEBUG_ASSERT(uncommitted_turns_ == batch_turns_ + turns_in_flight(),
                       "uncommitted turns out of step with the batches");
  // A batch refused because the silo is shutting down is not a storage
  // failure: its writes are simply not made, and are redone after restart.
  if (m.err && code_of(m.err) != errc::silo_stopped)
    fail_stop(m.err);
  for (auto& id : done.ids)
    pending_ids_.erase(id);
  for (auto& fx : done.effects)
    fx(m.err);
  finish_stop();
}

void partition::finish_stop() {
  if (!stopping_ || !inflight_.empty() || !batch_.empty())
    return;
  // A release also waits until every local receiver answered: until then
  // a receiver may still process, or commit the processing of, a message
  // whose entry the export would carry. A failed or stopping silo exports
  // nothing, so it need not wait.
  bool drained = unanswered_local_ == 0;
  if (releasing_ && !drained && !failed_ && !shutting_down_)
    return;
  if (releasing_) {
    auto promises = std::move(release_promises_);
    release_promises_.clear();
    caf::error why;
    if (failed_)
      why = failure_;
    else if (!drained)
      why = make_error(errc::silo_stopped, "the silo stopped during the "
                                           "release of partition "
                                               + std::to_string(id_));
    reset_state();
    if (shutting_down_)
      stopping_ = true; // The stop that interrupted the release stays.
    for (auto& rp : promises) {
      if (why)
        rp.deliver(why);
      else
        rp.deliver(true);
    }
  }
  for (auto& rp : stop_promises_)
    rp.deliver(true);
  stop_promises_.clear();
}

caf::error partition::not_served() const {
  return make_error(errc::not_owner,
                    "partition " + std::to_string(id_)
                        + " is not served by this silo (it moved or is "
                          "moving); retry");
}

void partition::reset_state() {
  // Nothing is in flight (checked by the caller): everything here is
  // either durable or a cache of durable records.
  GRANARY_ASSERT(inflight_.empty() && batch_.empty(),
                 "a partition was reset with writes in flight");
  unanswered_local_ = 0;
  catalog_.clear();
  lru_head_ = lru_tail_ = nullptr;
  batch_.clear();
  effects_.clear();
  batch_ids_.clear();
  batch_outbox_.clear();
  batch_turns_ = 0;
  uncommitted_turns_ = 0;
  pending_ids_.clear();
  outbox_.clear();
  outbox_count_.clear();
  retry_queue_.clear();
  parked_.clear();
  timers_.clear();
  timer_queue_.clear();
  timer_overlay_.clear();
  timer_overlay_log_.clear();
  timers_loaded_below_.clear();
  timers_loaded_ms_ = std::numeric_limits<int64_t>::min();
  timer_pages_left_ = false;
  sync_timer_gauge();
  blocked_.clear();
  dedup_cursor_.clear();
  next_dedup_sweep_ = 0;
  armed_at_ = never;
  serving_ = false;
  releasing_ = false;
  stopping_ = false;
}

void partition::fail_stop(const caf::error& err) {
  if (failed_)
    return;
  failed_ = true;
  failure_ = make_error(errc::storage_failure,
                        "silo fail-stopped after a storage error; reopen it: "
                            + describe(err));
  log(log_level::error,
      "partition " + std::to_string(id_) + ": " + describe(failure_));
}

// -- outbox -------------------------------------------------------------------

void partition::deliver(const std::string& key, pending_out& out) {
  if (!out.submitted)
    return; // `flush` delivers it.
  auto now = core_.clk->now_ms();
  if (auto* router = core_.remote_owner(out.target_partition)) {
    // Another silo commits on its own, so it may only see messages whose
    // sender is durable: the commit effect delivers the first attempt.
    if (!out.durable) {
      reschedule(key, out, never);
      return;
    }
    ++out.attempts;
    reschedule(key, out, now + core_.cfg.redelivery_timeout.count());
    auto self = caf::actor_cast<caf::actor>(this);
    router->deliver(out.target_partition, out.env,
                    [self, key](const caf::error& err, int64_t retry_ms) {
                      caf::anon_send(self, ack_msg{key, err, retry_ms, true});
                    });
    return;
  }
  if (out.attempts > 0 && !out.durable) {
    // A receiver tells a redelivery by the durable record; wait for it.
    reschedule(key, out, now + 10);
  } else if (core_.reserve(out.target_partition)) {
    reschedule(key, out, now + 10);
  } else {
    bool fresh = out.attempts == 0;
    ++out.attempts;
    ++unanswered_local_;
    reschedule(key, out, now + core_.cfg.redelivery_timeout.count());
    caf::anon_send(core_.partitions[out.target_partition],
                   deliver_msg{out.env, id_, fresh});
  }
}

void partition::put_outbox(const grain_id& sender, uint32_t to,
                           envelope_ptr env, int64_t now) {
  auto key = keys::with_seq(prefix_of(sender), core_.next_seq());
  env->set_msg_id(core_.next_msg_id());
  env->mutable_sender()->set_type(sender.type);
  env->mutable_sender()->set_key(sender.key);
  env->set_ack_key(key);
  env->set_accepted_ms(now);
  batch_.put(column::outbox, key, env->SerializeAsString());
  pending_out entry{std::move(env), sender, to, never, 0};
  bool added = outbox_.try_emplace(key, std::move(entry)).second;
  GRANARY_ASSERT(added, "an outbox key was used twice");
  ++outbox_count_[sender];
  batch_outbox_.push_back(key);
  defer([this, key](const caf::error& err) {
    if (err)
      return;
    auto i = outbox_.find(key);
    if (i == outbox_.end())
      return;
    i->second.durable = true;
    // What waited for durability goes now: a message never sent (its
    // target was remote at submission, and may be local by now, handed to
    // this silo meanwhile), or a retry that came due before (a local
    // attempt refused by a partition that was moving to another silo).
    // (`never`: a retry that found the target remote before this commit.)
    if (i->second.attempts == 0 || i->second.next_attempt_ms == never
        || i->second.next_attempt_ms <= core_.clk->now_ms())
      deliver(key, i->second);
  });
}

void partition::answer_call(const wire::Envelope& env, wire::Reply reply) {
  if (!env.has_reply_to())
    return;
  reply.set_correlation(env.correlation());
  if (auto size = reply.ByteSizeLong(); size > core_.cfg.max_payload_bytes) {
    reply = error_reply(errc::payload_too_large,
                        "reply of " + std::to_string(size)
                            + " bytes exceeds max_payload_bytes="
                            + std::to_string(core_.cfg.max_payload_bytes));
    reply.set_correlation(env.correlation());
  }
  auto out = std::make_shared<wire::Envelope>();
  *out->mutable_target() = env.reply_to();
  out->set_payload_type(wire::Reply::descriptor()->full_name());
  reply.SerializeToString(out->mutable_payload());
  // The call's target answers, even if it has no activation (unknown type).
  grain_id caller{env.reply_to().type(), env.reply_to().key()};
  put_outbox(grain_id{env.target().type(), env.target().key()},
             partition_of(caller, core_.cfg.partitions), std::move(out),
             core_.clk->now_ms());
}

caf::error partition::check_outbox_room(const grain_id& sender, size_t extra) {
  size_t pending = extra;
  if (auto i = outbox_count_.find(sender); i != outbox_count_.end())
    pending += i->second;
  if (pending < core_.cfg.max_outbox_per_grain)
    return caf::none;
  return overloaded("grain " + to_string(sender) + " has "
                        + std::to_string(pending)
                        + " undelivered messages (max_outbox_per_grain)",
                    50);
}

// -- timers and housekeeping --------------------------------------------------

void partition::arm(int64_t at_ms) {
  // Deadlines are in the silo's clock, the wake-up in CAF's: never sleep
  // longer than timer_poll, so that a clock that jumps (a stepped wall
  // clock, or a test's manual clock) is noticed within one poll.
  auto now = core_.clk->now_ms();
  auto delay
      = std::clamp<int64_t>(at_ms - now, 0, core_.cfg.timer_poll.count());
  if (now + delay >= armed_at_)
    return;
  armed_at_ = now + delay;
  delayed_send(this, std::chrono::milliseconds{delay}, tick_atom::value,
               armed_at_);
}

void partition::on_tick() {
  armed_at_ = never;
  bump(core_.stats.ticks);
  // A stopped partition runs no more timers: a stop is a barrier.
  if (failed_ || stopping_ || !serving_)
    return;
  GRANARY_DEBUG_ASSERT(outbox_counted() == outbox_.size(),
                       "the outbox counts are out of step with the outbox");
  GRANARY_ASSERT(timer_queue_.size() <= timers_.size(),
                 "the timer queue holds timers that are not loaded");
  auto now = core_.clk->now_ms();
  if (auto err = page_timers(now)) {
    log(log_level::error,
        "partition " + std::to_string(id_)
            + ": reading the timer index failed: " + describe(err));
    fail_stop(err);
    return;
  }
  fire_timers(now);
  retry_blocked(now);
  retry_outbox(now);
  sweep_idle(now);
  if (now >= next_dedup_sweep_)
    sweep_dedup(now);
  arm(next_dedup_sweep_);
  // Re-arm for the earliest remaining deadline (retry_blocked and
  // retry_outbox re-armed theirs while they walked their entries).
  if (!timer_queue_.empty())
    arm(timer_queue_.begin()->first);
  // The next page is due when less than half a window is loaded ahead
  // (while memory is full of timers, their due times wake us instead).
  if (timers_loaded_ms_ != std::numeric_limits<int64_t>::min()
      && timer_queue_.size() < limits::max_paged_timers)
    arm(timers_loaded_ms_
        - std::max<int64_t>(core_.cfg.timer_window.count() / 2, 1));
  if (!catalog_.empty())
    arm(now + std::max<int64_t>(core_.cfg.idle_age.count() / 2, 1));
}

void partition::fire_timers(int64_t now) {
  size_t fired = 0;
  // Puts a timer that cannot fire now back into the queue, due at `at`;
  // its record keeps its due time, so a restart fires it at once.
  auto retry = [&](const std::string& key, int64_t at) {
    auto i = timers_.find(key);
    if (i == timers_.end())
      return;
    i->second.firing = false;
    i->second.due_ms = at;
    timer_queue_.emplace(at, key);
  };
  while (!timer_queue_.empty() && timer_queue_.begin()->first <= now
         && fired < limits::max_timers_per_tick) {
    auto key
        = std::move(timer_queue_.extract(timer_queue_.begin()).value().second);
    auto i = timers_.find(key);
    GRANARY_ASSERT(i != timers_.end() && !i->second.firing,
                   "a queued timer is not loaded, or fires already");
    i->second.firing = true;
    auto env = i->second.env;
    ++fired;
    bump(core_.stats.timers_fired);
    work_item item;
    item.env = env;
    item.source_col = column::timers;
    item.dedup = false;
    item.source_key = key;
    grain_id target{env->target().type(), env->target().key()};
    auto act = activate(target);
    if (!act) {
      if (code_of(act.error()) == errc::unknown_grain_type)
        dead_letter(nullptr, item, errc::unknown_grain_type,
                    describe(act.error()));
      else
        retry(key, now + 1'000); // It is still stored; try again later.
      continue;
    }
    auto& a = **act;
    if (a.blocked && a.blocked->items.size() >= core_.cfg.max_inbox_per_grain) {
      retry(key, a.blocked->retry_at_ms + 1);
      continue;
    }
    accept_durable(a, std::move(item));
  }
  sync_timer_gauge();
  if (!timer_queue_.empty() && timer_queue_.begin()->first <= now)
    arm(now); // More are due; continue after the mailbox had a turn.
}

void partition::put_timer(const std::string& key, envelope_ptr env) {
  // The index entry of the schedule being replaced goes in the same batch.
  auto old = stored_of(key);
  if (old.due_ms)
    batch_.erase(column::timer_index, keys::timer_index_key(key, *old.due_ms));
  if (auto i = timers_.find(key); i != timers_.end()) {
    if (!i->second.firing)
      timer_queue_.erase({i->second.due_ms, key});
    timers_.erase(i);
  }
  if (env) {
    auto due = env->due_ms();
    auto indexed = index_due_of(*env);
    batch_.put(column::timers, key, env->SerializeAsString());
    batch_.put(column::timer_index, keys::timer_index_key(key, indexed), {});
    if (in_window(key, indexed)) {
      timer_overlay_.erase(key);
      load_timer(key, std::move(env), due);
      sync_timer_gauge();
      return;
    }
  } else {
    if (!old.exists)
      return; // Nothing stored, nothing to delete.
    batch_.erase(column::timers, key);
  }
  // Not in memory: paging must see this change until it is committed.
  timer_overlay_[key] = unloaded_timer{next_ticket_, std::move(env)};
  timer_overlay_log_.emplace_back(next_ticket_, key);
  sync_timer_gauge();
}

partition::stored_timer partition::stored_of(const std::string& key) {
  if (auto i = timers_.find(key); i != timers_.end())
    return {true, index_due_of(*i->second.env)};
  if (auto o = timer_overlay_.find(key); o != timer_overlay_.end()) {
    if (!o->second.env)
      return {};
    return {true, index_due_of(*o->second.env)};
  }
  // Neither loaded nor changed by a pending batch: the committed record is
  // the current one.
  auto raw = core_.store->get(column::timers, key);
  if (!raw) {
    fail_stop(raw.error());
    return {true, std::nullopt};
  }
  if (!*raw)
    return {};
  // A record that does not decode is replaced; its index entry, if any,
  // is left stale, and paging drops it.
  wire::Envelope env;
  if (!env.ParseFromString(**raw))
    return {true, std::nullopt};
  return {true, index_due_of(env)};
}

bool partition::in_window(const std::string& key, int64_t due_ms) const {
  if (due_ms < timers_loaded_ms_)
    return true;
  auto index_key = keys::timer_index_key(key, due_ms);
  return std::string_view{index_key}.substr(2)
         < std::string_view{timers_loaded_below_};
}

caf::error partition::page_timers(int64_t now) {
  auto window = core_.cfg.timer_window.count();
  auto target = now < never - window ? now + window : never - 1;
  if (!timer_pages_left_
      && now + std::max<int64_t>(window / 2, 1) < timers_loaded_ms_)
    return caf::none; // More than half a window is loaded ahead.
  if (timer_queue_.size() >= limits::max_paged_timers)
    return caf::none; // Those fire first; the tick after them pages on.
  auto prefix = keys::partition_prefix(id_);
  size_t seen = 0;
  std::string last;
  std::vector<keys::timer_index_entry> found;
  std::vector<std::string> malformed;
  auto err = core_.store->scan(
      column::timer_index, prefix, prefix + timers_loaded_below_,
      limits::timer_page, [&](std::string_view k, std::string_view) {
        auto entry = keys::decode_timer_index(k);
        if (entry && entry->due_ms > target)
          return false; // Beyond the window: stays in storage.
        ++seen;
        last.assign(k);
        if (entry)
          found.push_back(std::move(*entry));
        else
          malformed.emplace_back(k);
        return true;
      });
  if (err)
    return err;
  for (auto& k : malformed)
    batch_.erase(column::timer_index, std::move(k));
  for (auto& e : found) {
    // Memory and pending changes are newer than the committed index.
    if (timers_.count(e.timers_key) > 0
        || timer_overlay_.count(e.timers_key) > 0)
      continue;
    auto index_key = keys::timer_index_key(e.timers_key, e.due_ms);
    auto raw = core_.store->get(column::timers, e.timers_key);
    if (!raw)
      return std::move(raw.error());
    if (!*raw) {
      batch_.erase(column::timer_index, std::move(index_key));
      continue;
    }
    auto env = std::make_shared<wire::Envelope>();
    if (!env->ParseFromString(**raw) || !keys::decode(e.timers_key)) {
      quarantine(column::timers, e.timers_key, **raw,
                 "record does not decode as an envelope");
      batch_.erase(column::timer_index, std::move(index_key));
      continue;
    }
    if (keys::timer_index_key(e.timers_key, index_due_of(*env)) != index_key) {
      // Left by a schedule that was replaced: the record's own entry is
      // elsewhere in the index.
      batch_.erase(column::timer_index, std::move(index_key));
      continue;
    }
    // A watchdog (indexed at 0) is paged in only by a recovery: its work
    // did not survive the restart or the handoff, so it is due at once.
    auto due = env->watchdog() ? std::min(env->due_ms(), now) : env->due_ms();
    load_timer(e.timers_key, std::move(env), due);
  }
  if (!batch_.empty())
    schedule_flush();
  // Everything below the new bound is loaded now. The bound only grows.
  std::string bound;
  int64_t loaded_ms = 0;
  if (seen >= limits::timer_page) {
    bound = last.substr(2);
    bound.push_back('\0');
    loaded_ms = static_cast<int64_t>(keys::read_u64(bound).value_or(0));
    timer_pages_left_ = true;
  } else {
    keys::append_u64(bound,
                     static_cast<uint64_t>(std::max<int64_t>(target + 1, 0)));
    loaded_ms = target + 1;
    timer_pages_left_ = false;
  }
  if (bound > timers_loaded_below_) {
    timers_loaded_below_ = std::move(bound);
    timers_loaded_ms_ = std::max(timers_loaded_ms_, loaded_ms);
  }
  // Changes not committed yet that now fall below the bound: the scan
  // could not see them.
  for (auto o = timer_overlay_.begin(); o != timer_overlay_.end();) {
    auto& env = o->second.env;
    if (env && timers_.count(o->first) == 0
        && in_window(o->first, index_due_of(*env))) {
      load_timer(o->first, env, env->due_ms());
      o = timer_overlay_.erase(o);
    } else {
      ++o;
    }
  }
  sync_timer_gauge();
  if (timer_pages_left_ && timer_queue_.size() < limits::max_paged_timers)
    arm(now); // The next page after the mailbox had a turn.
  return caf::none;
}

void partition::timers_committed() {
  // Bounded by the changes of the committed batches.
  while (!timer_overlay_log_.empty()
         && timer_overlay_log_.front().first <= committed_through_) {
    auto& [ticket, key] = timer_overlay_log_.front();
    if (auto o = timer_overlay_.find(key);
        o != timer_overlay_.end() && o->second.ticket == ticket)
      timer_overlay_.erase(o);
    timer_overlay_log_.pop_front();
  }
}

void partition::load_timer(const std::string& key, envelope_ptr env,
                           int64_t due_ms) {
  auto [i, added] = timers_.try_emplace(key);
  if (!added && !i->second.firing)
    timer_queue_.erase({i->second.due_ms, key});
  i->second = timer_entry{due_ms, std::move(env)};
  timer_queue_.emplace(due_ms, key);
  arm(due_ms);
}

void partition::drop_queued_firing(activation& act, const std::string& key) {
  auto i = timers_.find(key);
  if (i == timers_.end() || !i->second.firing || !act.blocked)
    return;
  auto& items = act.blocked->items;
  // Bounded by max_inbox_per_grain; a timer has at most one firing.
  auto j = std::find_if(items.begin(), items.end(), [&](const work_item& w) {
    return w.source_col == column::timers && w.source_key == key;
  });
  if (j != items.end())
    items.erase(j);
}

void partition::sync_timer_gauge() {
  auto n = static_cast<int64_t>(timer_queue_.size());
  core_.stats.timers_in_memory.fetch_add(n - reported_timers_,
                                         std::memory_order_relaxed);
  reported_timers_ = n;
}

void partition::retry_blocked(int64_t now) {
  std::vector<const grain_id*> due;
  for (auto* id : blocked_) {
    auto i = catalog_.find(*id);
    if (i == catalog_.end() || !i->second->blocked)
      continue;
    if (i->second->blocked->retry_at_ms <= now)
      due.push_back(id);
    else
      arm(i->second->blocked->retry_at_ms);
  }
  for (auto* id : due)
    if (auto i = catalog_.find(*id); i != catalog_.end())
      run_blocked(*i->second);
}

void partition::retry_outbox(int64_t now) {
  // Bounded per tick; more due entries continue after the mailbox had a
  // turn. Every delivery moves its entry to a later time (or out).
  size_t tried = 0;
  while (!retry_queue_.empty() && retry_queue_.begin()->first <= now
         && tried < limits::max_outbox_retries_per_tick) {
    auto key = retry_queue_.begin()->second;
    auto i = outbox_.find(key);
    GRANARY_ASSERT(i != outbox_.end(), "a queued outbox entry is unknown");
    ++tried;
    deliver(key, i->second);
    GRANARY_ASSERT(i->second.next_attempt_ms > now,
                   "a delivery left its outbox entry due");
  }
  if (!retry_queue_.empty())
    arm(retry_queue_.begin()->first);
}

bool partition::can_deactivate(const activation& act) const {
  return !act.blocked && act.last_ticket <= committed_through_
         && outbox_count_.count(*act.id) == 0;
}

void partition::sweep_idle(int64_t now) {
  auto horizon = now - core_.cfg.idle_age.count();
  size_t visited = 0;
  while (lru_tail_ && lru_tail_->last_used_ms <= horizon
         && visited++ < limits::max_sweep_per_tick) {
    auto* act = lru_tail_;
    if (!can_deactivate(*act)) {
      lru_touch(*act); // Busy: look again after another idle period.
      act->last_used_ms = now;
      continue;
    }
    act->grain->on_deactivate();
    lru_unlink(*act);
    auto id = *act->id;
    catalog_.erase(id);
    bump(core_.stats.deactivations);
  }
}

void partition::sweep_dedup(int64_t now) {
  auto prefix = keys::partition_prefix(id_);
  if (dedup_cursor_.empty())
    dedup_cursor_ = prefix;
  auto horizon = now - core_.cfg.dedup_retention.count();
  size_t seen = 0;
  std::string last;
  auto err = core_.store->scan(
      column::dedup, prefix, dedup_cursor_, limits::dedup_sweep_page,
      [&](std::string_view key, std::string_view value) {
        ++seen;
        last.assign(key);
        auto at = keys::read_u64(value);
        if (at && static_cast<int64_t>(*at) < horizon
            && pending_ids_.count(last) == 0)
          batch_.erase(column::dedup, last);
        return true;
      });
  if (err) {
    log(log_level::warning, "partition " + std::to_string(id_)
                                + ": dedup sweep failed: " + describe(err));
    next_dedup_sweep_ = now + core_.cfg.dedup_sweep_interval.count();
    return;
  }
  if (!batch_.empty())
    schedule_flush();
  if (seen < limits::dedup_sweep_page) {
    // Reached the end of the range: start over after a full interval.
    dedup_cursor_.clear();
    next_dedup_sweep_ = now + core_.cfg.dedup_sweep_interval.count();
  } else {
    dedup_cursor_ = last;
    dedup_cursor_.push_back('\0');
    next_dedup_sweep_ = now + 10;
  }
}

void partition::lru_touch(activation& act) {
  if (lru_head_ == &act)
    return;
  lru_unlink(act);
  act.lru_next = lru_head_;
  act.lru_prev = nullptr;
  if (lru_head_)
    lru_head_->lru_prev = &act;
  lru_head_ = &act;
  if (!lru_tail_)
    lru_tail_ = &act;
}

void partition::lru_unlink(activation& act) {
  if (act.lru_prev)
    act.lru_prev->lru_next = act.lru_next;
  else if (lru_head_ == &act)
    lru_head_ = act.lru_next;
  if (act.lru_next)
    act.lru_next->lru_prev = act.lru_prev;
  else if (lru_tail_ == &act)
    lru_tail_ = act.lru_prev;
  act.lru_prev = act.lru_next = nullptr;
}

size_t partition::turns_in_flight() const {
  size_t n = 0;
  for (auto& x : inflight_)
    n += x.turns;
  return n;
}

size_t partition::outbox_counted() const {
  size_t n = 0;
  for (auto& [sender, count] : outbox_count_)
    n += count;
  return n;
}

// -- recovery -----------------------------------------------------------------

void detail::add_quarantine(write_batch& batch, uint32_t partition, column col,
                            std::string_view key, std::string_view value,
                            const std::string& why, int64_t now_ms) {
  wire::DeadLetter dl;
  dl.set_error(why);
  dl.set_dead_ms(now_ms);
  dl.set_origin_column(to_string(col));
  dl.set_origin_key(std::string{key});
  dl.set_raw_value(std::string{value});
  // 0xff cannot start a valid grain prefix's type length, so quarantined
  // records never collide with dead letters of real grains.
  auto qkey = keys::partition_prefix(partition) + "\xff" + to_string(col) + ":"
              + std::string{key};
  batch.put(column::dead_letters, std::move(qkey), dl.SerializeAsString());
  batch.erase(col, std::string{key});
}

void partition::quarantine(column col, std::string_view key,
                           std::string_view value, const std::string& why) {
  add_quarantine(batch_, id_, col, key, value, why, core_.clk->now_ms());
  ++batch_turns_;
  ++uncommitted_turns_;
  schedule_flush();
  bump(core_.stats.quarantined);
  log(log_level::error, "quarantined corrupt " + std::string{to_string(col)}
                            + " record " + keys::printable(key) + ": " + why);
}

caf::error partition::recover() {
  // Recovery activates the grains of stored inbox entries before the
  // partition serves; `activate` checks for either.
  struct recovering_scope {
    bool& flag;
    ~recovering_scope() {
      flag = false;
    }
  } scope{recovering_};
  recovering_ = true;
  auto prefix = keys::partition_prefix(id_);
  auto now = core_.clk->now_ms();
  // Pages through one column; the loop ends when a page comes back short.
  auto each = [&](column col, auto&& fn) -> caf::error {
    std::string start = prefix;
    for (;;) {
      size_t seen = 0;
      std::string last;
      auto err = core_.store->scan(
          col, prefix, start, limits::recovery_page,
          [&](std::string_view k, std::string_view v) {
            ++seen;
            last.assign(k);
            auto env = std::make_shared<wire::Envelope>();
            if (!env->ParseFromArray(v.data(), static_cast<int>(v.size()))
                || !keys::decode(k)) {
              quarantine(col, k, v,
                         "record does not decode as "
                         "an envelope");
              return true;
            }
            if (col != column::timers && k.size() >= 8)
              if (auto seq = keys::read_u64(k.substr(k.size() - 8)))
                core_.observe_seq(*seq);
            fn(std::string{k}, std::move(env));
            return true;
          });
      if (err)
        return err;
      if (seen < limits::recovery_page)
        return caf::none;
      start = last;
      start.push_back('\0');
    }
  };
  // Only the timers due within the window come into memory; the index
  // pages in the later ones as their time approaches.
  timers_loaded_below_.clear();
  timers_loaded_ms_ = std::numeric_limits<int64_t>::min();
  timer_pages_left_ = false;
  auto err = page_timers(now);
  if (err)
    return err;
  err = each(column::outbox, [&](std::string key, envelope_ptr env) {
    grain_id sender{env->sender().type(), env->sender().key()};
    grain_id target{env->target().type(), env->target().key()};
    ++outbox_count_[sender];
    // Attempts start at 1: an earlier run may have delivered it already.
    auto [i, added] = outbox_.insert_or_assign(
        std::move(key), pending_out{std::move(env), std::move(sender),
                                    partition_of(target, core_.cfg.partitions),
                                    never, 1, true, true});
    GRANARY_ASSERT(added, "an outbox key was recovered twice");
    reschedule(i->first, i->second, now);
  });
  if (err)
    return err;
  std::vector<work_item> inbox;
  err = each(column::inbox, [&](std::string key, envelope_ptr env) {
    work_item item;
    item.env = std::move(env);
    item.source_col = column::inbox;
    item.source_key = std::move(key);
    inbox.push_back(std::move(item));
  });
  if (err)
    return err;
  for (auto& item : inbox) {
    grain_id target{item.env->target().type(), item.env->target().key()};
    auto act = activate(target);
    if (!act) {
      if (code_of(act.error()) == errc::unknown_grain_type) {
        dead_letter(nullptr, item, errc::unknown_grain_type,
                    describe(act.error()));
      } else {
        log(log_level::error, "inbox entry " + keys::printable(item.source_key)
                                  + " stays stored: " + describe(act.error()));
      }
      continue;
    }
    auto& a = **act;
    if (!a.blocked)
      a.blocked = std::make_unique<blocked_queue>();
    pending_ids_.insert(
        keys::with_suffix(prefix_of(target), item.env->msg_id()));
    a.blocked->items.push_back(std::move(item));
    blocked_.insert(a.id);
  }
  GRANARY_DEBUG_ASSERT(outbox_counted() == outbox_.size(),
                       "the outbox counts are out of step with the outbox");
  next_dedup_sweep_ = now + core_.cfg.dedup_sweep_interval.count();
  arm(next_dedup_sweep_);
  if (!timers_.empty() || timer_pages_left_ || !outbox_.empty()
      || !blocked_.empty())
    arm(now);
  return caf::none;
}

// -- administration -----------------------------------------------------------

void partition::admin_dead_letter(const grain_id& target,
                                  const std::string& msg_id, bool requeue,
                                  done_fn done) {
  if (failed_)
    return done(failure_);
  if (!serving_)
    return done(not_served());
  auto prefix = prefix_of(target);
  auto key = keys::with_suffix(prefix, msg_id);
  auto raw = core_.store->get(column::dead_letters, key);
  if (!raw)
    return done(raw.error());
  if (!*raw)
    return done(make_error(errc::not_found, "no dead letter " + msg_id
                                                + " for grain "
                                                + to_string(target)));
  wire::DeadLetter dl;
  if (!dl.ParseFromString(**raw))
    return done(
        make_error(errc::corrupt_record,
                   "dead letter " + keys::printable(key) + " does not decode"));
  if (!requeue) {
    batch_.erase(column::dead_letters, key);
    schedule_flush();
    defer(std::move(done));
    return;
  }
  auto act = activate(target);
  if (!act)
    return done(act.error());
  auto& a = **act;
  if (a.blocked && a.blocked->items.size() >= core_.cfg.max_inbox_per_grain)
    return done(
        overloaded("inbox of grain " + to_string(target) + " is full", 100));
  batch_.erase(column::dead_letters, key);
  auto dk = keys::with_suffix(prefix, msg_id);
  batch_.erase(column::dedup, dk);
  pending_ids_.insert(dk);
  work_item item;
  item.env = std::make_shared<wire::Envelope>(dl.envelope());
  item.env->set_attempts(0);
  // A dead-lettered call was answered with its error already; answering
  // again would give the caller two replies for one call.
  item.env->clear_reply_to();
  item.env->clear_correlation();
  item.done = std::move(done);
  // The requeued message is stored in the inbox in the same commit that
  // removes the dead letter, so a crash loses neither.
  item.source_col = column::inbox;
  item.source_key = keys::with_seq(prefix, core_.next_seq());
  batch_.put(column::inbox, item.source_key, item.env->SerializeAsString());
  touch_write(a);
  if (a.blocked) {
    defer(std::exchange(item.done, nullptr));
    a.blocked->items.push_back(std::move(item));
  } else {
    run_durable(a, item);
  }
}

// -- turn ---------------------------------------------------------------------

caf::error turn::check_room() {
  if (sends_.size() + timers_.size() + tells_.size() >= max_effects)
    return make_error(errc::overloaded, "a turn may record at most "
                                            + std::to_string(max_effects)
                                            + " sends and timers");
  return caf::none;
}

caf::error turn::send(const grain_id& to,
                      const google::protobuf::Message& msg) {
  return record_send(to, msg, false, {});
}

caf::error turn::call(const grain_id& to, const google::protobuf::Message& msg,
                      std::string correlation) {
  return record_send(to, msg, true, std::move(correlation));
}

std::optional<turn::pending_call> turn::postpone_reply() {
  if (!env_ || !env_->has_reply_to())
    return std::nullopt;
  postponed_ = true;
  return pending_call{grain_id{env_->reply_to().type(), env_->reply_to().key()},
                      env_->correlation()};
}

caf::error turn::answer(const pending_call& call,
                        const google::protobuf::Message& msg) {
  auto reply = reply_of(std::shared_ptr<const google::protobuf::Message>(
      &msg, [](const google::protobuf::Message*) {}));
  reply.set_correlation(call.correlation);
  return record_send(call.caller, reply, false, {});
}

caf::error turn::answer_error(const pending_call& call, const caf::error& err) {
  auto code = code_of(err);
  auto reply = error_reply(
      code == errc::unspecified ? errc::handler_failed : code, describe(err));
  reply.set_correlation(call.correlation);
  return record_send(call.caller, reply, false, {});
}

caf::error turn::record_send(const grain_id& to,
                             const google::protobuf::Message& msg, bool call,
                             std::string correlation) {
  const char* what = call ? "call" : "send";
  if (auto err = check_room())
    return err;
  if (to.type.empty())
    return make_error(errc::invalid_argument,
                      std::string{what} + ": empty grain type");
  auto& core = owner_->core_;
  auto size = msg.ByteSizeLong() + correlation.size();
  if (size > core.cfg.max_payload_bytes)
    return make_error(errc::payload_too_large,
                      "payload of " + std::to_string(size)
                          + " bytes exceeds max_payload_bytes="
                          + std::to_string(core.cfg.max_payload_bytes));
  if (auto err = owner_->check_outbox_room(self_, sends_.size()))
    return err;
  outgoing out{
      to, msg.GetDescriptor()->full_name(), {}, call, std::move(correlation)};
  msg.SerializeToString(&out.payload);
  sends_.push_back(std::move(out));
  return caf::none;
}

caf::error turn::set_timer(std::string name, std::chrono::milliseconds delay,
                           const google::protobuf::Message& msg,
                           std::chrono::milliseconds period) {
  if (auto err = check_room())
    return err;
  if (name.empty())
    return make_error(errc::invalid_argument, "set_timer: empty timer name");
  if (delay.count() < 0 || period.count() < 0)
    return make_error(errc::invalid_argument,
                      "set_timer: negative delay or period");
  auto& core = owner_->core_;
  auto size = msg.ByteSizeLong();
  if (size > core.cfg.max_payload_bytes)
    return make_error(errc::payload_too_large,
                      "timer payload of " + std::to_string(size)
                          + " bytes exceeds max_payload_bytes");
  timer_change tc;
  tc.name = std::move(name);
  tc.due_ms = now_ms_ + delay.count();
  tc.period_ms = period.count();
  tc.payload_type = msg.GetDescriptor()->full_name();
  msg.SerializeToString(&tc.payload);
  timers_.push_back(std::move(tc));
  return caf::none;
}

caf::error turn::cancel_timer(std::string name) {
  if (auto err = check_room())
    return err;
  timer_change tc;
  tc.name = std::move(name);
  tc.cancel = true;
  timers_.push_back(std::move(tc));
  return caf::none;
}

caf::error turn::tell(const grain_id& to, message_ptr msg) {
  if (auto err = check_room())
    return err;
  if (!msg)
    return make_error(errc::invalid_argument, "tell: null message");
  auto& core = owner_->core_;
  auto p = partition_of(to, core.cfg.partitions);
  if (auto err = core.reserve(p))
    return err;
  tells_.push_back(transient_out{to, std::move(msg)});
  return caf::none;
}

} // namespace granary

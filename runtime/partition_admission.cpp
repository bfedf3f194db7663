// Admission: the checks a transient call, a tell, a durable send or an
// outbox delivery passes before it reaches a grain (serving, failure, free
// space, uncommitted turns, payload, dedup, inbox room), and the answer to
// the sending partition of a delivery.

#include "runtime/mutation.hpp"
#include "runtime/partition.hpp"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>

#include <caf/send.hpp>
#include <google/protobuf/message.h>

#include "runtime/error.hpp"
#include "runtime/log.hpp"
#include "runtime/partition_internal.hpp"

namespace granary {

using namespace detail;

namespace {

const grain_id no_sender{};

} // namespace

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
  if (!m.fresh && !mutation_active(mutation::skip_dedup)) {
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
  // A first delivery of an entry this silo wrote needs no dedup record:
  // its processing deletes the sender's record in the same commit. A
  // redelivery does: an earlier owner of the sending partition may have
  // sent a copy from another silo that is still on its way here.
  item.record
      = !m.fresh && !mutation_active(mutation::unrecorded_local_redelivery);
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
    // An earlier copy may have been applied while this partition lived on
    // another silo: that remote delivery recorded the id, the partition
    // moved here with the record, and the sender never got the answer.
    auto seen = core_.store->get(column::dedup, dk);
    if (!seen) {
      fail_stop(seen.error());
      ack_sender(item, failure_, 1'000);
      return;
    }
    if (*seen) {
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
    store_in_inbox(act, item);
  }
  act.blocked->items.push_back(std::move(item));
}

void partition::store_in_inbox(activation& act, work_item& item) {
  batch_.put(column::inbox, item.source_key, item.env->SerializeAsString());
  touch_write(act);
  // Accepted once this batch is durable: the sender may be answered then.
  if (item.done)
    defer(std::exchange(item.done, nullptr));
  if (item.from != no_partition) {
    ack_sender(item, caf::none, 0);
    item.from = no_partition;
  }
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

} // namespace granary

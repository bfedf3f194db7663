// Outbox: the durable sends and call replies that turns store, their
// delivery to a partition of this silo or through the router, their
// acknowledgements and retries, and their parking while the owner of the
// target partition is dead.

#include "runtime/partition.hpp"

#include <algorithm>
#include <memory>
#include <string>

#include <caf/actor_cast.hpp>
#include <caf/send.hpp>

#include "runtime/assert.hpp"
#include "runtime/error.hpp"
#include "runtime/limits.hpp"
#include "runtime/log.hpp"
#include "runtime/partition_internal.hpp"

namespace granary {

using namespace detail;

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

size_t partition::outbox_counted() const {
  size_t n = 0;
  for (auto& [sender, count] : outbox_count_)
    n += count;
  return n;
}

} // namespace granary

// Turns: activating grains, running the turn of a durable message, failing
// it (rollback, retry with backoff, dead letter), and turning what a turn
// recorded into writes of the partition's current batch.

#include "runtime/mutation.hpp"
#include "runtime/partition.hpp"

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include <caf/send.hpp>
#include <google/protobuf/message.h>

#include "runtime/assert.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"
#include "runtime/partition_internal.hpp"

namespace granary {

using namespace detail;

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
    store_in_inbox(act, item);
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
  if ((i == timers_.end() || !i->second.firing
       || i->second.env->due_ms() != env.due_ms())
      && !mutation_active(mutation::rearm_after_cancel))
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
    if (!mutation_active(mutation::rearm_after_cancel))
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

} // namespace granary

// The partition actor: construction, the behavior that dispatches its
// messages, the recover / release / stop protocol, and administration of
// dead letters. The other parts of the actor are in partition_*.cpp, one
// per section of partition.hpp.

#include "runtime/partition.hpp"
#include "runtime/mutation.hpp"

#include <limits>
#include <memory>
#include <string>
#include <utility>

#include <caf/actor_cast.hpp>

#include "runtime/assert.hpp"
#include "runtime/error.hpp"
#include "runtime/partition_internal.hpp"

namespace granary {

using namespace detail;

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

void partition::finish_stop() {
  if (!stopping_ || !inflight_.empty() || !batch_.empty())
    return;
  // A release also waits until every local receiver answered: until then
  // a receiver may still process, or commit the processing of, a message
  // whose entry the export would carry. A failed or stopping silo exports
  // nothing, so it need not wait.
  bool drained = unanswered_local_ == 0
                 || mutation_active(mutation::release_before_local_acks);
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

} // namespace granary

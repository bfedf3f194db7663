// Commit and effects: the partition's current batch, its submission to the
// commit loop under a ticket, the effects (acknowledgements, replies) held
// until that commit is durable, and the fail-stop after a storage error.

#include "runtime/mutation.hpp"
#include "runtime/partition.hpp"

#include <algorithm>

#include <caf/actor_cast.hpp>
#include <caf/send.hpp>

#include "runtime/assert.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"

namespace granary {

using namespace detail;

void partition::touch_write(activation& act) {
  act.last_ticket = next_ticket_;
  ++batch_turns_;
  ++uncommitted_turns_;
  schedule_flush();
}

void partition::defer(effect fx) {
  if (mutation_active(mutation::reply_before_durable))
    return fx(caf::none);
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

void partition::fail_stop(const caf::error& err) {
  if (failed_)
    return;
  failed_ = true;
  failure_ = make_error(errc::storage_failure,
                        "silo fail-stopped after a storage error; reopen it: "
                            + describe(err));
  log(log_level::error,
      "partition " + std::to_string(id_) + ": " + describe(failure_));
  if (!core_.storage_failed.exchange(true) && core_.cfg.on_storage_failure)
    core_.cfg.on_storage_failure(failure_);
}

size_t partition::turns_in_flight() const {
  size_t n = 0;
  for (auto& x : inflight_)
    n += x.turns;
  return n;
}

} // namespace granary

// Housekeeping, driven by the partition's tick: durable timers (in memory
// within the window, paged in from the timer index), retries of blocked
// grains and of outbox entries, and the sweeps of idle activations and of
// expired dedup records.

#include "runtime/partition.hpp"

#include <algorithm>
#include <chrono>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <caf/send.hpp>

#include "runtime/assert.hpp"
#include "runtime/error.hpp"
#include "runtime/limits.hpp"
#include "runtime/log.hpp"
#include "runtime/partition_internal.hpp"

namespace granary {

using namespace detail;

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

} // namespace granary

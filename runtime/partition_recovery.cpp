// Recovery: what a partition loads from storage before it serves (its
// timers, outbox and inbox), and the quarantine of records that do not
// decode.

#include "runtime/partition.hpp"

#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "runtime/assert.hpp"
#include "runtime/error.hpp"
#include "runtime/limits.hpp"
#include "runtime/log.hpp"
#include "runtime/partition_internal.hpp"

namespace granary {

using namespace detail;

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

} // namespace granary

#pragma once

// Internal: a partition actor hosts the activations of one key range.
// Multiplexing many grains onto one CAF actor keeps an idle activation far
// below the ~1.4 KB of a CAF actor and avoids CAF 0.17's work-stealing
// stall when one grain fans out to 100k+ idle actors. Its code is in
// partition.cpp and partition_*.cpp, one file per section of the private
// part below; runtime/partition_internal.hpp holds what they share.

#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>
#include <caf/event_based_actor.hpp>

#include "granary.pb.h"
#include "runtime/error.hpp"
#include "runtime/grain_base.hpp"
#include "runtime/grain_id.hpp"
#include "runtime/keys.hpp"
#include "runtime/silo_core.hpp"
#include "runtime/storage.hpp"
#include "runtime/turn.hpp"

namespace granary {
class partition;
} // namespace granary

namespace granary::detail {

using envelope_ptr = std::shared_ptr<wire::Envelope>;
using done_fn = std::function<void(const caf::error&)>;
using reply_fn = std::function<void(caf::expected<message_ptr>)>;

/// Transient call from a client.
struct call_msg {
  grain_id target;
  message_ptr msg;
  reply_fn reply;
};

/// Transient one-way message from a grain.
struct tell_msg {
  grain_id target;
  message_ptr msg;
};

/// Durable message from a client.
struct send_msg {
  envelope_ptr env;
  done_fn done;
  // The silo generated the id for this send: no earlier copy can exist.
  bool fresh = false;
  // Delivered by another silo (an outbox entry or a forwarded client
  // send): bad payloads are dead-lettered (answering a call with the
  // error) rather than refused, since the sender would only resend them.
  bool remote = false;
};

/// Durable message from another partition's outbox, on the same silo. The
/// first delivery may leave before the sender's batch is durable, but never
/// before it is submitted to the commit loop, so the receiver's commit can
/// only land after (or with) the sender's.
struct deliver_msg {
  envelope_ptr env;
  uint32_t from;
  // First delivery of a silo-generated id: no earlier copy can exist.
  bool fresh = false;
};

/// Receiver's answer to a `deliver_msg`. A success means that the receiver
/// deleted the sender's outbox record in the same commit as its processing,
/// so the sender only forgets the entry. A remote receiver cannot: its
/// success makes the sender delete the record itself.
struct ack_msg {
  std::string outbox_key;
  caf::error err;
  int64_t retry_after_ms;
  bool remote = false;
};

/// The commit loop's notice that a ticket is durable (or failed).
struct committed_msg {
  uint64_t ticket;
  caf::error err;
};

/// The route to partition `partition` changed: entries parked for it go.
struct route_msg {
  uint32_t partition;
};

/// Adds to `batch` the move of the corrupt record `key` of `col` in
/// `partition` to `dead_letters`, as a quarantined record with its raw
/// bytes.
void add_quarantine(write_batch& batch, uint32_t partition, column col,
                    std::string_view key, std::string_view value,
                    const std::string& why, int64_t now_ms);

/// The due time under which timer `env` is kept in the `timer_index`: its
/// own, except for a watchdog, which is indexed at 0 so that a recovery
/// always pages it in (its work did not survive the restart) and a set
/// always keeps it in memory.
inline int64_t index_due_of(const wire::Envelope& env) {
  return env.watchdog() ? 0 : env.due_ms();
}

/// Runs an administrative function inside the partition.
struct admin_msg {
  std::function<void(partition&)> fn;
};

using flush_atom = caf::atom_constant<caf::atom("flush")>;
using tick_atom = caf::atom_constant<caf::atom("tick")>;
using recover_atom = caf::atom_constant<caf::atom("recover")>;
using stop_atom = caf::atom_constant<caf::atom("stop")>;
/// Asks a partition to stop serving (for a handoff): it commits what is
/// pending, forgets its activations and answers `true` once nothing of it
/// is in flight; from then on it refuses work until recovered again.
using release_atom = caf::atom_constant<caf::atom("release")>;

} // namespace granary::detail

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(granary::detail::call_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(granary::detail::tell_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(granary::detail::send_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(granary::detail::deliver_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(granary::detail::ack_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(granary::detail::committed_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(granary::detail::admin_msg)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(granary::detail::route_msg)

namespace granary {

/// The actor behind one partition. Internal to the runtime; `turn` calls
/// back into it.
class partition : public caf::event_based_actor {
public:
  partition(caf::actor_config& cfg, detail::silo_core& core, uint32_t id);

  caf::behavior make_behavior() override;

  /// Requeues or drops a dead letter (runs inside the actor).
  void admin_dead_letter(const grain_id& target, const std::string& msg_id,
                         bool requeue, detail::done_fn done);

private:
  friend class turn;

  using effect = std::function<void(const caf::error&)>;

  // A message waiting for, or being run by, a grain.
  struct work_item {
    detail::envelope_ptr env;
    // Durable client sends: acknowledged after the accepting commit.
    detail::done_fn done;
    // Outbox deliveries: the sending partition to acknowledge.
    uint32_t from = no_partition;
    // Where the message is stored (inbox or timers); empty if nowhere yet.
    column source_col = column::inbox;
    std::string source_key;
    // Whether the message id is in `pending_ids_` until the processing
    // commits. Not for timers (their record is the source of truth) nor
    // for client sends whose id the silo generated: nobody can ever resend
    // those ids.
    bool dedup = true;
    // Whether processing also writes a dedup record. Not for the first
    // delivery from a local outbox: its processing deletes the sender's
    // record in the same commit, so no copy can come again. A local
    // redelivery writes one, because a copy sent by an earlier owner of the
    // sending partition may still arrive from another silo.
    bool record = true;
  };

  struct blocked_queue {
    std::deque<work_item> items;
    int64_t retry_at_ms = 0;
  };

  struct activation {
    const grain_id* id = nullptr;
    std::unique_ptr<grain_base> grain;
    // The last saved state, for rolling back a failed turn.
    std::string state_bytes;
    bool has_state = false;
    int64_t last_used_ms = 0;
    // Ticket of this grain's newest uncommitted write (0: none).
    uint64_t last_ticket = 0;
    std::unique_ptr<blocked_queue> blocked;
    activation* lru_prev = nullptr;
    activation* lru_next = nullptr;
  };

  struct pending_out {
    detail::envelope_ptr env;
    grain_id sender;
    uint32_t target_partition = 0;
    int64_t next_attempt_ms = 0;
    uint32_t attempts = 0;
    // The batch that stores the entry was handed to the commit loop: the
    // first delivery may go.
    bool submitted = false;
    // That batch is durable: redeliveries may go (the receiver then checks
    // the stored record to tell a duplicate).
    bool durable = false;
    // Refused because its partition's owner is dead: it waits in `parked_`
    // for a change of route (or the `parked_retry` backstop).
    bool parked = false;
  };

  struct timer_entry {
    // When it fires next; a retry may come later than the stored due time.
    int64_t due_ms = 0;
    // The stored record; its `due_ms` is the due time it was stored with.
    detail::envelope_ptr env;
    // Fired, and its firing is queued or running (so it is not in
    // `timer_queue_`). Only while this holds may the firing's turn delete
    // or reschedule the record: a cancel or re-set clears it.
    bool firing = false;
  };

  // A change to a timer that is not in memory, made by batch `ticket`
  // whose commit is pending: paging sees only committed records, so until
  // then it must apply this change instead.
  struct unloaded_timer {
    uint64_t ticket = 0;
    // The new record; null when the timer was deleted.
    detail::envelope_ptr env;
  };

  static constexpr uint32_t no_partition = 0xffffffffu;

  // -- lifecycle and administration (partition.cpp) -------------------------
  // Answers `err` to work that reaches a partition this silo does not
  // serve (moved, moving or never owned): the sender retries elsewhere.
  caf::error not_served() const;
  // Answers stop and release requests once nothing is in flight.
  void finish_stop();
  // Forgets everything in memory after a release; storage is untouched.
  void reset_state();

  // -- admission (partition_admission.cpp) ----------------------------------
  void on_call(detail::call_msg& m);
  void on_tell(detail::tell_msg& m);
  void on_send(detail::send_msg& m);
  void on_deliver(detail::deliver_msg& m);
  // Accepts a durable message for `act`; runs it now or queues it.
  void accept_durable(activation& act, work_item item);
  // Puts `item` (its source key set) into `act`'s inbox in the current
  // batch, and answers its sender once that batch is durable.
  void store_in_inbox(activation& act, work_item& item);
  void ack_sender(work_item& item, caf::error err, int64_t retry_after_ms);
  caf::error overloaded(std::string what, int64_t retry_after_ms);

  // -- turns (partition_turns.cpp) ------------------------------------------
  caf::expected<activation*> activate(const grain_id& id);
  void run_durable(activation& act, work_item& item);
  void run_blocked(activation& act);
  void fail_durable(activation& act, work_item item, const caf::error& err);
  void dead_letter(activation* act, work_item& item, errc code,
                   const std::string& why);
  void apply_turn(activation& act, turn& t);
  // Sends a turn's transient message once its commit is done (or drops it
  // with `err`), to a local partition or through the router.
  void emit_tell(const turn::transient_out& out, const caf::error& err);
  void rollback(activation& act);
  void finish_source(work_item& item);
  caf::error check_payload_type(activation& act, const std::string& type,
                                const google::protobuf::Message*& proto);
  int64_t retry_delay(uint32_t attempts) const;

  // -- commit and effects (partition_commit.cpp) ----------------------------
  void on_committed(detail::committed_msg& m);
  void touch_write(activation& act);
  void defer(effect fx);
  void defer_after(activation& act, effect fx);
  void schedule_flush();
  void flush();
  void fail_stop(const caf::error& err);
  // Removes batch `ticket` from the in-flight list, wherever it is, and
  // runs its effects with `err`.
  void drop_inflight(uint64_t ticket, const caf::error& err);
  // For invariant checks: the turns of the batches in flight.
  size_t turns_in_flight() const;

  // -- outbox (partition_outbox.cpp) ----------------------------------------
  void on_ack(detail::ack_msg& m);
  void deliver(const std::string& key, pending_out& out);
  // Sets the next attempt of entry `key` to `at_ms` (`never`: none, until
  // something else delivers it), unparking it.
  void reschedule(const std::string& key, pending_out& out, int64_t at_ms);
  // Parks entry `key` until the route to its partition changes, or until
  // `parked_retry` passed.
  void park(const std::string& key, pending_out& out, int64_t now,
            int64_t retry_after_ms);
  // Retries the entries parked for partition `p` (a bounded share per call;
  // the rest follow in a message to itself).
  void on_route_changed(uint32_t p);
  // Forgets an acknowledged entry.
  void forget_out(std::map<std::string, pending_out>::iterator i);
  // Stores `env` (target and payload set) in `sender`'s outbox as part of
  // the current batch; it is delivered to partition `to` once the batch is
  // durable.
  void put_outbox(const grain_id& sender, uint32_t to, detail::envelope_ptr env,
                  int64_t now);
  // Answers `env` with `reply` through its target's outbox, if `env` is a
  // durable call.
  void answer_call(const wire::Envelope& env, wire::Reply reply);
  // Returns `overloaded` when `sender` has `max_outbox_per_grain`
  // undelivered messages, counting `extra` ones not stored yet.
  caf::error check_outbox_room(const grain_id& sender, size_t extra);
  // For invariant checks: the outbox entries counted per sender.
  size_t outbox_counted() const;

  // -- housekeeping: timers, retries, sweeps (partition_housekeeping.cpp) ---
  void arm(int64_t at_ms);
  void on_tick();
  void fire_timers(int64_t now);
  // Stores timer `key` with record `env` in the current batch, or deletes
  // it when `env` is null, replacing any schedule it had in memory.
  void put_timer(const std::string& key, detail::envelope_ptr env);
  // Puts a stored timer into memory, due at `due_ms`.
  void load_timer(const std::string& key, detail::envelope_ptr env,
                  int64_t due_ms);
  // Drops the queued firing of timer `key` from `act`'s blocked queue: a
  // cancel or re-set supersedes a firing that has not run yet.
  void drop_queued_firing(activation& act, const std::string& key);
  // The record of timer `key`, counting uncommitted changes: whether it
  // exists, and its due time (nullopt if it does not decode). Reads
  // storage only for a timer neither in memory nor changed by a pending
  // batch.
  struct stored_timer {
    bool exists = false;
    std::optional<int64_t> due_ms;
  };
  stored_timer stored_of(const std::string& key);
  // Whether a timer stored with (`due_ms`, `key`) lies in the loaded part
  // of the index, so that memory holds it.
  bool in_window(const std::string& key, int64_t due_ms) const;
  // Loads the next page of timers due within `timer_window` from the
  // index, when the loaded part ends less than half a window ahead.
  caf::error page_timers(int64_t now);
  // Forgets the changes of `timer_overlay_` whose commit has landed.
  void timers_committed();
  // Publishes the size of `timer_queue_` in the silo's gauge.
  void sync_timer_gauge();
  void retry_outbox(int64_t now);
  void retry_blocked(int64_t now);
  void sweep_idle(int64_t now);
  void sweep_dedup(int64_t now);
  void lru_touch(activation& act);
  void lru_unlink(activation& act);
  bool can_deactivate(const activation& act) const;

  // -- recovery (partition_recovery.cpp) ------------------------------------
  caf::error recover();
  void quarantine(column col, std::string_view key, std::string_view value,
                  const std::string& why);

  // -- helpers ---------------------------------------------------------------
  std::string prefix_of(const grain_id& id) const {
    return keys::grain_prefix(id_, id);
  }

  detail::silo_core& core_;
  uint32_t id_;
  std::unordered_map<grain_id, std::unique_ptr<activation>, grain_id_hash>
      catalog_;
  activation* lru_head_ = nullptr;
  activation* lru_tail_ = nullptr;

  // Group commit: writes and effects of turns since the last flush.
  write_batch batch_;
  std::vector<effect> effects_;
  std::vector<std::string> batch_ids_;
  // Outbox keys stored by the current batch, delivered when it is submitted.
  std::vector<std::string> batch_outbox_;
  size_t batch_turns_ = 0;
  bool flush_scheduled_ = false;
  uint64_t next_ticket_ = 1;
  uint64_t committed_through_ = 0;
  struct inflight {
    uint64_t ticket;
    size_t turns;
    std::vector<effect> effects;
    // Dedup keys whose records this commit makes durable.
    std::vector<std::string> ids;
  };
  std::deque<inflight> inflight_;
  size_t uncommitted_turns_ = 0;

  // Dedup keys of messages accepted but not yet durably processed.
  std::unordered_set<std::string> pending_ids_;

  // Outbox entries awaiting acknowledgement, and per-grain counts.
  std::map<std::string, pending_out> outbox_;
  std::unordered_map<grain_id, size_t, grain_id_hash> outbox_count_;
  // Every entry with a next attempt, by its due time: a tick walks only the
  // due ones, never the whole outbox.
  std::set<std::pair<int64_t, std::string>> retry_queue_;
  // Parked entries by target partition, retried when its route changes.
  std::unordered_map<uint32_t, std::set<std::string>> parked_;

  // Timers by key, and the armed ones ordered by due time: every entry of
  // the queue is (due_ms, key) of an entry of `timers_` that is not firing.
  std::unordered_map<std::string, timer_entry> timers_;
  std::set<std::pair<int64_t, std::string>> timer_queue_;
  // The queue size last added to the silo's gauge.
  int64_t reported_timers_ = 0;
  // Memory holds exactly the timers whose index entry sorts below
  // `timers_loaded_below_` (the index key after the partition: due time,
  // then the rest of the timers key), plus firings and retries. Every timer
  // due before `timers_loaded_ms_` is loaded; `timer_pages_left_` says that
  // the last page was full, so more may be due within the window.
  std::string timers_loaded_below_;
  int64_t timers_loaded_ms_ = std::numeric_limits<int64_t>::min();
  bool timer_pages_left_ = false;
  // Changes to timers not in memory whose commit is pending, and their
  // (ticket, key) in ticket order, to forget them once committed.
  std::unordered_map<std::string, unloaded_timer> timer_overlay_;
  std::deque<std::pair<uint64_t, std::string>> timer_overlay_log_;

  // Grains with a blocked queue waiting for a retry.
  std::unordered_set<const grain_id*> blocked_;

  // Dedup retention sweep: resume key and next due time.
  std::string dedup_cursor_;
  int64_t next_dedup_sweep_ = 0;

  int64_t armed_at_ = std::numeric_limits<int64_t>::max();
  bool failed_ = false;
  caf::error failure_;
  bool stopping_ = false;
  // Set by `recover`, cleared by a release: only a serving partition
  // activates grains, so no grain runs on two silos.
  bool serving_ = false;
  // While `recover` runs (it activates the grains of stored inbox entries).
  bool recovering_ = false;
  bool releasing_ = false;
  // Set by a stop of the silo: a release then no longer waits for other
  // partitions, which may be stopped already.
  bool shutting_down_ = false;
  // Deliveries sent to partitions of this silo and not answered yet. Each
  // `deliver_msg` gets exactly one `ack_msg` while the silo runs, and a
  // success is sent only once the receiver's commit, which deletes the
  // entry here, is durable. A release waits for this to reach zero, so
  // that an exported outbox never holds an entry that a receiver on this
  // silo processed, or is about to process, without a dedup record.
  size_t unanswered_local_ = 0;
  std::vector<caf::response_promise> stop_promises_;
  std::vector<caf::response_promise> release_promises_;
};

} // namespace granary

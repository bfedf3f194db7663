#pragma once

// The fixed limits of the runtime and the actors layer, in one place, each
// with the reason for its value (model: TigerBeetle's src/constants.zig).
// Limits a deployment may tune are fields of `silo_config` and friends;
// these are not. Every loop over a queue or a storage range is bounded by
// one of them, so that one huge backlog cannot hold a partition's mailbox.
// Changing a value changes behaviour: measure (`granary bench`) first.

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace granary::limits {

// -- key format ---------------------------------------------------------------

/// The largest partition id: every key but the meta keys starts with the
/// partition id in two big-endian bytes, so a partition is one contiguous
/// range in every column.
inline constexpr uint32_t max_partition_id = 0xffff;

/// The most partitions a silo may be configured with (`partitions`).
inline constexpr uint32_t max_partitions = 65'535;

static_assert(max_partitions - 1 <= max_partition_id,
              "every partition id must fit the 2-byte key prefix");

// -- silo configuration bounds ------------------------------------------------

/// The most scheduler threads (`threads`): far above any core count, so
/// that only a typo is refused.
inline constexpr size_t max_threads = 1'024;

/// The largest `max_payload_bytes` a silo accepts. A payload travels inside
/// one stored envelope and one frame; far above what a message between
/// grains should carry.
inline constexpr size_t max_payload_bytes = size_t{64} << 20;

/// The longest `timer_window`: memory holds the timers due within it, so a
/// longer window would only defeat the paging.
inline constexpr std::chrono::hours max_timer_window{24 * 365};

// -- turns --------------------------------------------------------------------

/// Sends, timers and tells one turn may record (`turn::max_effects`): what
/// a turn holds in memory until its commit, and the size of its batch, stay
/// bounded. Far above a real turn (a fan-out of one send per child).
inline constexpr size_t max_turn_effects = 65'536;

// -- partition housekeeping (per tick or per message) -------------------------

/// Timers fired by one tick; more due ones continue after the mailbox had
/// a turn, so a burst of due timers cannot starve calls.
inline constexpr size_t max_timers_per_tick = 4'096;

/// Idle activations looked at by one sweep; the LRU list is walked from its
/// cold end, so a sweep touches only candidates.
inline constexpr size_t max_sweep_per_tick = 16'384;

/// Outbox entries retried by one tick (the due ones, popped from the retry
/// queue by due time); 100,000 entries waiting for a dead silo then cost
/// about 0.001 cores (`granary bench retry-storm`).
inline constexpr size_t max_outbox_retries_per_tick = 4'096;

/// Parked outbox entries retried by one route-change message; the rest
/// follow in the next message, so a silo coming back does not hold the
/// mailbox for a whole backlog.
inline constexpr size_t max_unparked_per_message = 16'384;

/// Dedup records read by one step of the retention sweep; a step runs
/// every 10 ms until the partition's range is done.
inline constexpr size_t dedup_sweep_page = 4'096;

// -- storage paging
// -------------------------------------------------------------

/// Outbox and inbox records read per page when a partition recovers: a page
/// is one storage scan, large enough to amortise it, small enough to keep
/// one scan's records in memory.
inline constexpr size_t recovery_page = 1'024;

/// `timer_index` entries read by one paging step of a partition's timers.
inline constexpr size_t timer_page = 1'024;

/// Paging pauses while this many timers wait in a partition's memory:
/// they are all due before any timer still in storage, so they fire first.
inline constexpr size_t max_paged_timers = 16 * timer_page;

static_assert(max_paged_timers % timer_page == 0 && max_paged_timers > 0,
              "memory holds whole pages of timers");
static_assert(max_timers_per_tick <= max_paged_timers,
              "a tick fires no more timers than memory may hold");

/// Timer records indexed per synced write when a format-1 data directory
/// gets its `timer_index`; a crash midway only repeats the current page.
inline constexpr size_t index_build_page = 1'024;

/// Inbox records read per page, and the most pages, when an offline
/// requeue of a dead letter looks for the end of a grain's inbox. Inboxes
/// are bounded by `max_inbox_per_grain`, 1,024 by default; a million
/// records is far beyond any inbox a silo lets grow.
inline constexpr size_t admin_inbox_page = 1'024;
inline constexpr size_t admin_max_inbox_pages = 1'024;

/// The largest key or value `memory_storage` reads back from a saved file:
/// far above any record the runtime writes, so a larger length can only
/// come from a damaged file.
inline constexpr uint32_t max_file_field_bytes = 64u << 20;

static_assert(max_payload_bytes <= max_file_field_bytes,
              "a payload at the configurable limit must fit one saved "
              "record field");

// -- silo ---------------------------------------------------------------------

/// How often, at most, a silo asks the volume for its free space: a
/// statfs per admission would cost more than the admission.
inline constexpr std::chrono::milliseconds space_check_interval{500};

/// How long `silo::stop` waits for client API calls admitted before the
/// stop; every blocking call is bounded by its own timeout (30 s by
/// default), so reaching this is a bug.
inline constexpr std::chrono::milliseconds stop_caller_wait{120'000};

// -- workflows and activities (actors/) -------------------------------------

/// Default hard limit on journal entries of one workflow run: reaching it
/// fails the run (continue-as-new bounds real workflows long before this).
inline constexpr size_t default_journal_limit = 100'000;

/// Default journal size at which a warning suggests continue-as-new.
inline constexpr size_t default_journal_warn = 10'000;

static_assert(default_journal_warn < default_journal_limit,
              "the warning comes before the limit");

/// Signals buffered by a workflow and not awaited yet; they live in the
/// workflow's state, which every turn of the workflow writes.
inline constexpr int max_pending_signals = 1'000;

/// Names a workflow may publish for queries, and the size of one value:
/// published values live in the workflow's state record too.
inline constexpr int max_published = 64;
inline constexpr size_t max_published_bytes = 64 * 1024;

static_assert(max_published * max_published_bytes <= max_file_field_bytes,
              "a workflow's published values fit one stored record");

/// Updates whose callers wait for an answer, per workflow.
inline constexpr int max_pending_updates = 1'000;

/// Compensations one saga may hold.
inline constexpr size_t max_saga_steps = 10'000;

/// The longest the activity pool's heartbeat monitor sleeps: a new attempt
/// wakes it, so this only bounds how late it notices a missed wake-up.
inline constexpr std::chrono::milliseconds activity_monitor_sleep{1'000};

} // namespace granary::limits

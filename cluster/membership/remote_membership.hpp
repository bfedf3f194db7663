#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "cluster/membership/membership.hpp"
#include "cluster/transport/transport.hpp"

namespace granary::cluster {

class MembershipRpc;

// -- seed side ----------------------------------------------------------------

/// Settings of a `membership_service`.
struct membership_service_config {
  /// Calls received but not yet run; beyond this, calls are answered with
  /// `errc::overloaded` at once. 0 is treated as 1.
  size_t max_queued_calls = 1024;
};

/// Counters of a `membership_service`, for tests and metrics.
struct membership_service_stats {
  /// Calls run on the store (successful or not).
  uint64_t calls = 0;
  /// Calls answered with `errc::overloaded` because the queue was full.
  uint64_t overloaded = 0;
  /// Calls answered with `errc::invalid_argument` because their body did not
  /// decode or named no operation.
  uint64_t invalid = 0;
  /// Calls dropped unrun because they waited in the queue longer than their
  /// caller waits for the answer.
  uint64_t expired = 0;
  /// `MembershipRpc` frames ignored because they were answers, not calls.
  uint64_t ignored = 0;
  /// Answers the transport refused to send (the caller times out).
  uint64_t unsent = 0;
};

/// Serves a local membership store (the seed's `embedded_membership`) to the
/// other silos of the cluster, which reach it through `remote_membership`.
///
/// Whoever owns the transport handler passes every `MembershipRpc` frame
/// with `is_answer == false` to `handle`. `handle` never blocks: it decodes
/// the call and queues it, or answers at once with `errc::invalid_argument`
/// (undecodable body, no operation), `errc::overloaded` (queue full) or
/// `errc::silo_stopped` (after `stop`). One worker thread of the service
/// runs the queued calls on the store, one at a time and in arrival order,
/// and sends each answer back to the calling silo with the same request id.
/// A call that waited in the queue longer than its caller's timeout is
/// dropped unrun, since its caller has given up on it.
///
/// The service is stateless beyond its queue: a restarted seed serves the
/// same table as long as it reopens the same store. `watch` is not served;
/// clients poll the versions (`MembershipCall.read_versions`) instead.
///
/// Thread-safety: `handle` may be called from any number of threads. The
/// store, and every transport passed to `handle`, must outlive `stop` (or
/// the destructor); a stopped transport is fine, it just drops the answers.
class membership_service {
public:
  /// Starts the worker thread. Does not take ownership of `store`.
  explicit membership_service(membership_store& store,
                              membership_service_config cfg = {});

  /// Calls `stop`.
  ~membership_service();

  membership_service(const membership_service&) = delete;

  membership_service& operator=(const membership_service&) = delete;

  /// Queues the call in `rpc`, received from `from`, and later sends the
  /// answer through `net` to `from.silo_id` at `from.address`. Never blocks
  /// on the store and never throws.
  void handle(const peer_info& from, const MembershipRpc& rpc, transport& net);

  /// Lets the running call (if any) finish, answers the queued ones with
  /// `errc::silo_stopped` and joins the worker; later calls are answered
  /// with `errc::silo_stopped`. Idempotent.
  void stop();

  /// Returns a snapshot of the counters.
  membership_service_stats stats() const;

private:
  struct state;
  std::unique_ptr<state> state_;
};

// -- client side --------------------------------------------------------------

/// Settings of a `remote_membership`.
struct remote_membership_config {
  /// Silos that serve the table, in order of preference. Every entry must
  /// reach the same table: e.g. the seed silo under several addresses, or a
  /// standby that takes over the seed's store. The client never merges the
  /// tables of different seeds. Must not be empty.
  std::vector<peer_address> seeds;
  /// How long one call waits for the answer of one seed.
  std::chrono::milliseconds call_timeout{2000};
  /// How often the watch poller asks the seed for the versions while any
  /// watcher is subscribed.
  std::chrono::milliseconds poll_interval{200};
  /// Calls waiting for an answer at the same time; beyond this, calls fail
  /// with `errc::overloaded` at once.
  size_t max_pending_calls = 1024;
};

/// The current versions of the table and of the partition map.
struct membership_versions {
  /// Table version, as in `membership_table::version`.
  uint64_t table = 0;
  /// Partition-map version, as in `partition_map::version`.
  uint64_t partition_map = 0;
};

/// Counters of a `remote_membership`, for tests and metrics.
struct remote_membership_stats {
  /// Calls sent to a seed (one per seed tried).
  uint64_t calls = 0;
  /// Answers that completed a waiting call.
  uint64_t answers = 0;
  /// Frames `on_frame` dropped: answers that arrived after their call gave
  /// up (or twice), answers from another silo than the one asked, and calls.
  uint64_t late_answers = 0;
  /// Calls to one seed that got no answer in time.
  uint64_t timeouts = 0;
  /// Times a call moved on to the next seed.
  uint64_t failovers = 0;
};

/// A `membership_store` whose table lives in a seed silo's store, reached
/// over the cluster transport: the client of `membership_service`.
///
/// Every call becomes one `MembershipRpc` frame to a seed; the calling
/// thread blocks until the answer arrives or `call_timeout` passes. The
/// owner of the transport handler must pass every `MembershipRpc` frame
/// with `is_answer == true` to `on_frame`, which completes the waiting call.
/// Opening does not contact the seeds, so silos may start in any order.
///
/// Seeds: calls go to the seed that answered last (initially the first
/// one). Reads (`read_all`, `read`, `read_partition_map`, `read_versions`)
/// and `update_i_am_alive` move on to the next seed when one does not
/// answer in time or the transport refuses the frame, trying each seed at
/// most once, so a read takes at most `seeds.size() * call_timeout`. A
/// conditional write (`insert`, `update`, `delete_dead`,
/// `write_partition_map`) whose frame was sent but not answered has an
/// unknown outcome: it fails with `errc::timeout` naming the seed, and the
/// caller re-reads (as the `membership_store` docs require); the next call
/// starts at the next seed. Note that the transport queues frames for an
/// unreachable seed, so such a write may still be applied later, once the
/// seed is back, unless it waited in the seed's queue for longer than
/// `call_timeout`.
///
/// Watching: the first `watch` reads the versions (so that later changes are
/// reported) and starts a poller thread that asks a seed for the versions
/// (`read_versions`) every `poll_interval` while any watcher is subscribed,
/// and notifies the watchers when the table or map version grew. Watchers
/// run on the poller thread, one at a time; several changes between two
/// polls coalesce into one notification with the latest version. While no
/// seed answers, nothing is reported; the next successful poll reports
/// what changed meanwhile.
///
/// Errors: the seed's errors come back with their code and text; besides,
/// `errc::timeout` (no answer in time, naming the seed), `errc::overloaded`
/// (too many pending calls, or the transport's queue to the seed is full),
/// `errc::malformed_message` (an undecodable answer) and
/// `errc::silo_stopped` (during destruction).
///
/// Thread-safety: all members are thread-safe. The destructor fails the
/// waiting calls with `errc::silo_stopped` and joins the poller; no call may
/// start, and `on_frame` must not be called, once it runs (stop the
/// transport first or detach the handler). `net` must outlive the store.
class remote_membership final : public membership_store {
public:
  /// Creates the client; sends nothing yet. Fails with
  /// `errc::invalid_config` for an empty seed list, a seed without silo id,
  /// host or port, or a non-positive timeout, interval or bound.
  static caf::expected<std::unique_ptr<remote_membership>>
  open(transport& net, remote_membership_config cfg);

  /// Fails the waiting calls and joins the poller thread.
  ~remote_membership() override;

  remote_membership(const remote_membership&) = delete;

  remote_membership& operator=(const remote_membership&) = delete;

  /// Completes the waiting call that `rpc` answers. Ignores calls (frames
  /// with `is_answer == false`), answers nobody waits for any more and
  /// answers from another silo than the one asked. Never blocks for long
  /// and never throws; call it from the transport handler.
  void on_frame(const peer_info& from, const MembershipRpc& rpc);

  caf::expected<membership_table> read_all() override;

  caf::expected<membership_table> read(const std::string& silo_id) override;

  caf::expected<write_result> insert(const membership_entry& entry,
                                     uint64_t expected_table_version) override;

  caf::expected<write_result> update(const membership_entry& entry,
                                     uint64_t expected_row_version,
                                     uint64_t expected_table_version) override;

  caf::error update_i_am_alive(const std::string& silo_id,
                               int64_t now_ms) override;

  caf::expected<size_t> delete_dead(int64_t older_than_ms) override;

  /// See the class docs on watching.
  caf::expected<watch_token> watch(membership_watcher watcher) override;

  caf::expected<partition_map> read_partition_map() override;

  caf::expected<write_result>
  write_partition_map(const partition_map& map,
                      uint64_t expected_version) override;

  /// Reads only the table and map versions: one small round trip.
  caf::expected<membership_versions> read_versions();

  /// Returns a snapshot of the counters.
  remote_membership_stats stats() const;

  /// Returns the settings.
  const remote_membership_config& config() const noexcept;

private:
  struct state;

  explicit remote_membership(std::unique_ptr<state> st);

  std::unique_ptr<state> state_;
};

} // namespace granary::cluster

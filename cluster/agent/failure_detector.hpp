#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cluster/membership/membership.hpp"

// The failure detector of one silo, as a plain class: no threads, no I/O
// and no clock of its own. The agent feeds it what happened (a probe round
// starts, a peer answered, the table as just read) with the time from its
// clock seam, and asks it whom to vote against; the agent sends the pings
// and writes the votes. Models: Orleans' SiloHealthMonitor (the probe
// record of one peer) and ClusterHealthMonitor (votes and the decision),
// TigerBeetle's src/vsr/fault_detector.zig (a detector fed signals and
// `now`, tested on a clock that moves when told).
//
// What it assumes
// - Rounds start about every `probe_interval`, and each pings every live
//   peer of the table once. A frame may be delayed, lost or repeated but
//   is never invented, so any answer from a peer, to any of its pings and
//   however late, proves that the peer was alive when it answered.
// - Each silo's time comes from one wall clock; votes carry it into the
//   shared table, so the clocks of the silos differ by much less than
//   `vote_expiry`.
// - The membership table is a compare-and-set store: the agent writes a
//   vote only against the row version it judged, and judges again after a
//   conflict.
// - A silo's incarnation grows with every start of its process.
//
// What it guarantees
// - Suspicion: a peer is suspected only after `missed_probes` rounds in a
//   row in which none of its pings was answered. Any answer clears the
//   count, so a peer whose answers take less than
//   `missed_probes * probe_interval` is never suspected; and a suspect
//   that answers before the vote is judged gets no vote (a late answer
//   must neither count as a vote's reach nor be voted against).
// - Pace: after this silo's vote against a peer, it votes against that
//   peer again only once `vote_expiry / 2` passed, so its vote stays fresh
//   while the peer stays silent, without a write every round.
// - One run at a time: misses and votes are about one incarnation of a
//   peer. A new incarnation in the table starts with a clean record, a vote
//   names the incarnation of the row it is written into, and writing a
//   vote drops the votes about any other incarnation, this silo's previous
//   vote, and votes older than `vote_expiry`.
// - Declaration: the vote that makes `min(votes_needed, live silos other
//   than the suspect)` fresh votes (at least 1) also sets the row `dead`,
//   in the same compare-and-set.
// - Majority (the rule that keeps a cut from killing both sides): a silo
//   votes only while it plus the live peers whose last `missed_probes`
//   probes were not all missed are more than half of the live silos in the
//   table. In a network partition only a side that holds a majority
//   declares anyone dead; with two silos neither side does (each reaches 1
//   of 2), so failure detection needs 3 or more silos, and 2f + 1 silos
//   detect f failures at a time.
// - A dead silo's view counts for nothing: a silo whose row says it is dead
//   (its incarnation) or restarted (a newer one) votes nothing; the agent
//   stops it.
//
// What it does not do
// - It judges reachability, not health: a silo that answers pings but does
//   no work is not suspected.
// - Detection takes about `probe_interval * (missed_probes + 1)` plus the
//   votes' compare-and-set; with too few reachable voters it never ends.

namespace granary::cluster {

/// Settings of a `failure_detector` (from `agent_config`).
struct detector_config {
  /// This silo's id.
  std::string self;
  /// Rounds in a row without an answer after which a peer is suspected.
  uint32_t missed_probes = 3;
  /// Votes that declare a silo dead; capped at the live silos other than
  /// the suspect (and at least 1).
  uint32_t votes_needed = 2;
  /// Votes older than this (ms) no longer count.
  int64_t vote_expiry_ms = 30'000;
};

/// Returns why this silo must stop, when `table` says so: its row belongs
/// to a newer incarnation (it was restarted elsewhere), or its incarnation
/// was declared dead. Nothing before `incarnation` is known (0).
std::optional<std::string> why_stop(const membership_table& table,
                                    const std::string& self,
                                    uint64_t incarnation);

/// One silo's failure detector; see the comment above for what it assumes
/// and guarantees. Not thread-safe: the agent serializes the calls.
class failure_detector {
public:
  /// A live peer as the table lists it.
  struct peer {
    std::string silo_id;
    uint64_t incarnation = 0;
  };

  /// A ping to send; the answer echoes the nonce.
  struct probe {
    std::string silo_id;
    uint64_t nonce = 0;

    friend bool operator==(const probe&, const probe&) = default;
  };

  /// A peer to vote against: the run the votes are about, and how many
  /// rounds in a row it missed.
  struct suspect {
    std::string silo_id;
    uint64_t incarnation = 0;
    uint32_t missed = 0;
  };

  /// What a probe round asks for: pings to send, then votes to cast.
  struct round {
    std::vector<probe> probes;
    std::vector<suspect> suspects;
  };

  /// How many live silos this silo reaches: itself plus the live peers it
  /// has not missed `missed_probes` times in a row.
  struct reach {
    size_t reached = 0;
    size_t live = 0;

    /// More than half of the live silos.
    bool majority() const {
      return 2 * reached > live;
    }
  };

  /// What to do about a suspect, given the table as just read.
  enum class verdict_kind {
    /// This silo is dead or was restarted elsewhere: vote nothing, stop.
    stop,
    /// The suspect's row is gone or already dead: nothing to do.
    settled,
    /// The suspect answered since the round that suspected it: no vote.
    answered,
    /// This silo reaches no majority: it votes nothing.
    minority,
    /// The table shows another run of the suspect: its record starts over.
    other_run,
    /// Write `row` (with this silo's vote, and `dead` when it decides).
    vote,
  };

  struct verdict {
    verdict_kind kind = verdict_kind::settled;
    /// `stop`: why.
    std::string why;
    /// `minority`: what this silo reaches.
    reach reached;
    /// `vote`: the suspect's row to write against its version.
    membership_entry row;
    /// `vote`: whether this vote declares the suspect dead.
    bool declares_dead = false;
    /// `vote`: the fresh votes in `row`, and the votes that decide.
    size_t votes = 0;
    size_t needed = 0;
  };

  /// A detector for `cfg.self`; `seed` seeds the probe nonces.
  failure_detector(detector_config cfg, uint64_t seed);

  /// Probes to send while joining, before the first round: one per id in
  /// `peers`, each awaiting an answer. Their record starts over at the
  /// first round (they name no incarnation).
  std::vector<probe> join_probes(const std::vector<std::string>& peers);

  /// The probes of `peers` that no answer came for since they were made.
  std::vector<probe> unanswered(const std::vector<std::string>& peers) const;

  /// Starts a probe round at `now_ms` over `live`, the live peers of the
  /// table (this silo excluded): forgets peers no longer listed, starts
  /// over for a peer listed with another incarnation, counts a miss for
  /// each peer whose last probe went unanswered, and returns a new probe
  /// for every peer, and the peers to vote against (see "Pace").
  round start_round(const std::vector<peer>& live, int64_t now_ms);

  /// A peer answered a probe (any of its probes, however late): it is
  /// alive, and its count of misses starts over.
  void on_answer(const std::string& silo_id);

  /// What this silo reaches in `table` (see "Majority").
  reach reach_in(const membership_table& table) const;

  /// Decides about `s` at `now_ms`, given `table` as just read and this
  /// silo's incarnation. For `other_run`, the suspect's record starts over
  /// at the table's incarnation.
  verdict judge(const membership_table& table, const suspect& s,
                uint64_t own_incarnation, int64_t now_ms);

  /// The vote against `silo_id` judged at `now_ms` was written. Returns
  /// the milliseconds since its first missed round.
  int64_t voted(const std::string& silo_id, int64_t now_ms);

  /// Rounds in a row `silo_id` missed (0 for a peer not tracked).
  uint32_t missed(const std::string& silo_id) const;

private:
  // The probe record of one peer (model: Orleans' SiloHealthMonitor).
  struct peer_state {
    // The run these probes are about; none for join probes.
    std::optional<uint64_t> incarnation;
    // The last probe's nonce (0: none sent yet) and whether any answer
    // came since it was sent.
    uint64_t nonce = 0;
    bool answered = true;
    uint32_t missed = 0;
    int64_t first_miss_ms = 0;
    int64_t last_vote_ms = 0;
  };

  uint64_t next_nonce();

  detector_config cfg_;
  std::mt19937_64 rng_;
  std::map<std::string, peer_state> peers_;
};

} // namespace granary::cluster

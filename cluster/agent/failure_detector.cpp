#include "cluster/agent/failure_detector.hpp"

#include <algorithm>

namespace granary::cluster {

namespace {

bool is_live(silo_status s) {
  return s != silo_status::dead;
}

} // namespace

std::optional<std::string> why_stop(const membership_table& table,
                                    const std::string& self,
                                    uint64_t incarnation) {
  auto* me = table.find(self);
  if (!me || incarnation == 0)
    return std::nullopt;
  if (me->incarnation > incarnation)
    return "silo '" + self + "' was restarted elsewhere (incarnation "
           + std::to_string(me->incarnation) + ")";
  if (me->incarnation == incarnation && me->status == silo_status::dead)
    return "silo '" + self + "' was declared dead by its peers";
  return std::nullopt;
}

failure_detector::failure_detector(detector_config cfg, uint64_t seed)
    : cfg_(std::move(cfg))
    , rng_(seed) {}

uint64_t failure_detector::next_nonce() {
  return rng_() | 1; // 0 means "no probe sent".
}

std::vector<failure_detector::probe>
failure_detector::join_probes(const std::vector<std::string>& peers) {
  std::vector<probe> out;
  for (auto& id : peers) {
    auto& st = peers_[id];
    st.nonce = next_nonce();
    st.answered = false;
    out.push_back(probe{id, st.nonce});
  }
  return out;
}

std::vector<failure_detector::probe>
failure_detector::unanswered(const std::vector<std::string>& peers) const {
  std::vector<probe> out;
  for (auto& id : peers)
    if (auto i = peers_.find(id); i != peers_.end() && !i->second.answered)
      out.push_back(probe{id, i->second.nonce});
  return out;
}

failure_detector::round
failure_detector::start_round(const std::vector<peer>& live, int64_t now_ms) {
  // Forget silos that left the table or died.
  std::erase_if(peers_, [&](auto& x) {
    return std::none_of(live.begin(), live.end(),
                        [&](auto& p) { return p.silo_id == x.first; });
  });
  round out;
  for (auto& p : live) {
    auto& st = peers_[p.silo_id];
    if (st.incarnation != p.incarnation) {
      // A new run of the peer: what its previous run missed is not its.
      st = peer_state{};
      st.incarnation = p.incarnation;
    }
    if (st.nonce != 0 && !st.answered && st.missed++ == 0)
      st.first_miss_ms = now_ms;
    if (st.missed >= cfg_.missed_probes
        && now_ms - st.last_vote_ms > cfg_.vote_expiry_ms / 2)
      out.suspects.push_back(suspect{p.silo_id, p.incarnation, st.missed});
    st.nonce = next_nonce();
    st.answered = false;
    out.probes.push_back(probe{p.silo_id, st.nonce});
  }
  return out;
}

void failure_detector::on_answer(const std::string& silo_id) {
  // Any answer proves the peer alive, also a late one to an older probe (a
  // lossy network delays some).
  if (auto i = peers_.find(silo_id); i != peers_.end()) {
    i->second.answered = true;
    i->second.missed = 0;
  }
}

failure_detector::reach
failure_detector::reach_in(const membership_table& table) const {
  reach r;
  r.reached = 1; // This silo.
  for (auto& row : table.rows) {
    if (!is_live(row.status))
      continue;
    ++r.live;
    if (row.silo_id == cfg_.self)
      continue;
    auto i = peers_.find(row.silo_id);
    if (i != peers_.end() && i->second.incarnation == row.incarnation
        && i->second.missed < cfg_.missed_probes)
      ++r.reached;
  }
  return r;
}

failure_detector::verdict failure_detector::judge(const membership_table& table,
                                                  const suspect& s,
                                                  uint64_t own_incarnation,
                                                  int64_t now_ms) {
  verdict v;
  if (auto why = why_stop(table, cfg_.self, own_incarnation)) {
    v.kind = verdict_kind::stop;
    v.why = std::move(*why);
    return v;
  }
  auto* row = table.find(s.silo_id);
  if (!row || row->status == silo_status::dead)
    return v; // settled
  if (auto i = peers_.find(s.silo_id);
      i != peers_.end() && i->second.incarnation == s.incarnation
      && i->second.missed < cfg_.missed_probes) {
    // A late answer came after the round that suspected it. Voting now
    // would also count the suspect among the silos this one reaches.
    v.kind = verdict_kind::answered;
    return v;
  }
  v.reached = reach_in(table);
  if (!v.reached.majority()) {
    v.kind = verdict_kind::minority;
    return v;
  }
  if (row->incarnation != s.incarnation) {
    // The suspect restarted: its new run starts with a clean record.
    auto& st = peers_[s.silo_id];
    st = peer_state{};
    st.incarnation = row->incarnation;
    v.kind = verdict_kind::other_run;
    return v;
  }
  size_t others = 0;
  for (auto& r : table.rows)
    if (is_live(r.status) && r.silo_id != s.silo_id)
      ++others;
  v.needed = std::max<size_t>(1, std::min<size_t>(cfg_.votes_needed, others));
  v.row = *row;
  v.row.suspicions.clear();
  for (auto& vote : row->suspicions)
    if (vote.voter != cfg_.self && now_ms - vote.time_ms < cfg_.vote_expiry_ms
        && vote.incarnation == row->incarnation)
      v.row.suspicions.push_back(vote);
  v.row.suspicions.push_back(
      suspicion_vote{cfg_.self, now_ms, row->incarnation});
  v.votes = v.row.suspicions.size();
  v.declares_dead = v.votes >= v.needed;
  if (v.declares_dead)
    v.row.status = silo_status::dead;
  v.kind = verdict_kind::vote;
  return v;
}

int64_t failure_detector::voted(const std::string& silo_id, int64_t now_ms) {
  auto& st = peers_[silo_id];
  st.last_vote_ms = now_ms;
  return now_ms - st.first_miss_ms;
}

uint32_t failure_detector::missed(const std::string& silo_id) const {
  auto i = peers_.find(silo_id);
  return i == peers_.end() ? 0 : i->second.missed;
}

} // namespace granary::cluster

#include "cluster/agent/cluster_agent.hpp"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "cluster.pb.h"
#include "cluster/agent/agent_context.hpp"
#include "cluster/agent/failure_detector.hpp"
#include "cluster/agent/handoff_receiver.hpp"
#include "cluster/agent/handoff_sender.hpp"
#include "cluster/agent/held_partitions.hpp"
#include "runtime/error.hpp"
#include "runtime/json.hpp"
#include "runtime/log.hpp"
#include "runtime/sys.hpp"

namespace granary::cluster {

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             sys::now().time_since_epoch())
      .count();
}

} // namespace

// -- config and view ----------------------------------------------------------

caf::error agent_config::validate() const {
  auto bad = [](const std::string& what) {
    return make_error(errc::invalid_config, "cluster agent: " + what);
  };
  if (self.silo_id.empty())
    return bad("silo id is empty");
  if (partitions == 0 || partitions > 65'536)
    return bad("partitions must be in [1, 65536]");
  if (probe_interval < 10ms)
    return bad("probe_interval must be at least 10 ms");
  if (missed_probes == 0)
    return bad("missed_probes must be at least 1");
  if (votes_needed == 0)
    return bad("votes_needed must be at least 1");
  if (vote_expiry <= probe_interval)
    return bad("vote_expiry must exceed probe_interval");
  if (handoff_chunk_bytes < 4'096 || handoff_chunk_bytes > (8u << 20))
    return bad("handoff_chunk_bytes must be in [4 KiB, 8 MiB]");
  if (release_timeout < 10ms)
    return bad("release_timeout must be at least 10 ms");
  if (handoff_dir.empty())
    return bad("handoff_dir is empty");
  return caf::none;
}

std::string to_json_fields(const cluster_view& view) {
  std::map<std::string, std::vector<uint32_t>> owned;
  for (auto& a : view.map.partitions)
    if (auto* o = a.primary())
      owned[*o].push_back(a.partition);
  std::string out = "\"silos\":[";
  bool first = true;
  for (auto& row : view.table.rows) {
    auto& parts = owned[row.silo_id];
    std::string list;
    for (size_t i = 0; i < parts.size(); ++i) {
      // Runs of consecutive partitions as "a-b".
      size_t j = i;
      while (j + 1 < parts.size() && parts[j + 1] == parts[j] + 1)
        ++j;
      if (!list.empty())
        list += ",";
      list += std::to_string(parts[i]);
      if (j > i)
        list += "-" + std::to_string(parts[j]);
      i = j;
    }
    out += first ? "" : ",";
    first = false;
    out += "{\"silo_id\":" + json_quote(row.silo_id)
           + ",\"status\":" + json_quote(to_string(row.status))
           + ",\"address\":" + json_quote(row.address)
           + ",\"gateway\":" + json_quote(row.gateway_address)
           + ",\"incarnation\":" + std::to_string(row.incarnation)
           + ",\"suspicions\":" + std::to_string(row.suspicions.size())
           + ",\"partitions\":" + std::to_string(parts.size())
           + ",\"owned\":" + json_quote(list) + "}";
  }
  out += "],\"table_version\":" + std::to_string(view.table.version)
         + ",\"map_version\":" + std::to_string(view.map.version);
  return out;
}

// -- agent --------------------------------------------------------------------

// The agent is the context its parts share, plus membership: join, the
// failure detector's I/O, heartbeats, and the routes from the map.
struct cluster_agent::impl : agent_context {
  uint64_t incarnation = 0;
  dead_fn on_dead;
  std::atomic<bool> dead_reported{false};

  // Partitions whose missing data was reported (guarded by apply_mtx).
  std::vector<bool> missing_logged;

  // Guards the detector, which pongs reach on the transport's threads.
  sys::mutex probe_mtx;
  failure_detector detector;
  // When a silo without a majority last said so (main thread only).
  int64_t last_minority_log_ms = 0;

  handoff_sender sender;
  handoff_receiver receiver;

  watch_token watch;
  sys::thread main_thread;
  sys::thread sender_thread;
  sys::thread receiver_thread;

  impl(agent_config c, std::shared_ptr<granary::clock> k, membership_store& s,
       transport& n, transport_router& r)
      : agent_context(std::move(c), std::move(k), s, n, r)
      , missing_logged(cfg.partitions, false)
      , detector(detector_config{cfg.self.silo_id, cfg.missed_probes,
                                 cfg.votes_needed, cfg.vote_expiry.count()},
                 sys::random_u64())
      , sender(*this)
      , receiver(*this, [this] { return refresh(); }) {
    on_dead = [](const std::string& why) {
      say(log_level::error, why + "; exiting");
      std::fflush(stdout);
      std::fflush(stderr);
      std::_Exit(3);
    };
  }

  membership_entry own_entry(silo_status status) const {
    membership_entry e;
    e.silo_id = cfg.self.silo_id;
    e.address = cfg.self.address.to_string();
    e.gateway_address = cfg.gateway_address;
    e.status = status;
    e.start_time_ms = now_ms();
    e.incarnation = incarnation;
    e.i_am_alive_ms = now_ms();
    return e;
  }

  // Writes this silo's row with `status` (inserting it when missing).
  caf::error write_own_row(silo_status status, bool fresh_start,
                           std::chrono::milliseconds limit = 30s) {
    caf::error last;
    auto deadline = sys::now() + limit;
    for (int attempt = 0; attempt < max_cas_attempts && sys::now() < deadline;
         ++attempt) {
      auto snap = store.read(cfg.self.silo_id);
      if (!snap) {
        if (code_of(snap.error()) != errc::timeout)
          return std::move(snap.error());
        last = std::move(snap.error()); // A lost request: ask again.
        continue;
      }
      auto* row = snap->find(cfg.self.silo_id);
      auto entry = own_entry(status);
      caf::expected<write_result> res{write_result{}};
      if (!row) {
        res = store.insert(entry, snap->version);
      } else {
        // A row of an older incarnation is rewritten as ours, whatever
        // happened to that run: its death is not ours.
        if (!fresh_start && row->incarnation >= incarnation) {
          if (row->incarnation > incarnation) {
            declare_self_dead("silo '" + cfg.self.silo_id
                              + "' was restarted elsewhere (incarnation "
                              + std::to_string(row->incarnation) + ")");
            return make_error(errc::silo_stopped,
                              "this silo's row belongs to a newer "
                              "incarnation");
          }
          entry.start_time_ms = row->start_time_ms;
          entry.suspicions = row->suspicions;
          if (row->status == silo_status::dead && status != silo_status::dead) {
            declare_self_dead("silo '" + cfg.self.silo_id
                              + "' was declared dead by its peers");
            return make_error(errc::silo_stopped,
                              "this silo was declared dead");
          }
        }
        res = store.update(entry, row->version, snap->version);
      }
      if (!res) {
        if (code_of(res.error()) != errc::timeout)
          return std::move(res.error());
        // Outcome unknown: re-read and decide again.
        last = std::move(res.error());
        continue;
      }
      if (res->applied())
        return caf::none;
      // Lost a race, or our own earlier write (whose answer was lost) went
      // through: re-read and write again.
    }
    return make_error(errc::timeout,
                      "could not write this silo's membership row in "
                          + std::to_string(max_cas_attempts) + " attempts"
                          + (last ? ": " + describe(last) : std::string{}));
  }

  caf::expected<cluster_view> read_view() {
    auto table = store.read_all();
    if (!table)
      return std::move(table.error());
    auto map = store.read_partition_map();
    if (!map)
      return std::move(map.error());
    return cluster_view{std::move(*table), std::move(*map)};
  }

  void declare_self_dead(const std::string& why) {
    {
      std::lock_guard guard{mtx};
      if (left)
        return;
    }
    if (dead_reported.exchange(true))
      return;
    on_dead(why);
  }

  // Installs `view` and makes the router and the silo agree with it.
  void apply(cluster_view view) {
    std::lock_guard apply_guard{apply_mtx};
    {
      std::lock_guard guard{mtx};
      // Never go back to an older snapshot.
      if (view.map.version < cached.map.version)
        view.map = cached.map;
      if (view.table.version < cached.table.version)
        view.table = cached.table;
      cached = view;
    }
    if (auto why = why_stop(view.table, cfg.self.silo_id, incarnation))
      declare_self_dead(*why);
    auto* here = local.load();
    for (auto& a : view.map.partitions) {
      auto p = a.partition;
      if (p >= cfg.partitions || moving[p].load())
        continue;
      auto* owner = a.primary();
      if (owner && *owner == cfg.self.silo_id) {
        if (!serving[p].load() && here) {
          // Never serve a partition from data this silo does not hold
          // (say, a copy dropped while the map write was on its way).
          auto held = is_held(*data, p);
          if (!held || !*held) {
            if (!missing_logged[p])
              say(log_level::error,
                  "the map gives partition " + std::to_string(p)
                      + " to this silo, but its data directory does not hold "
                        "it; not serving it"
                      + (held ? std::string{} : ": " + describe(held.error())));
            missing_logged[p] = true;
            router.set_route(p, route{cfg.self, a.epoch, false,
                                      "its data is missing on this silo"});
            continue;
          }
          if (auto err = here->acquire_partition(p)) {
            say(log_level::error, "cannot serve partition " + std::to_string(p)
                                      + ": " + describe(err));
            continue;
          }
        }
        router.set_route(p, route{cfg.self, a.epoch, true, {}});
        if (here)
          serving[p] = true;
        continue;
      }
      if (serving[p].load()) {
        // Only this silo moves its partitions, so this means someone wrote
        // the map by hand: stop serving first, then route elsewhere.
        say(log_level::error, "the map gives partition " + std::to_string(p)
                                  + " to another silo; releasing it");
        router.set_route(p, route{cfg.self, a.epoch, false, "moved"});
        if (here)
          static_cast<void>(here->release_partition(p));
        serving[p] = false;
      }
      route r;
      r.epoch = a.epoch;
      if (!owner) {
        r.available = false;
        r.why = "the partition has no owner";
      } else {
        r.owner.silo_id = *owner;
        auto* row = view.table.find(*owner);
        auto ep = row ? parse_endpoint(row->address)
                      : caf::expected<endpoint>{
                          make_error(errc::not_found, "no row")};
        if (!row || !ep) {
          r.available = false;
          r.why = "silo '" + *owner + "' is not in the membership table";
        } else if (row->status == silo_status::dead) {
          r.owner.address = *ep;
          r.available = false;
          r.why = "silo '" + *owner
                  + "' is dead; its messages wait until it restarts";
        } else {
          r.owner.address = *ep;
        }
      }
      router.set_route(p, std::move(r));
    }
  }

  caf::error refresh() {
    auto view = read_view();
    if (!view)
      return std::move(view.error());
    apply(std::move(*view));
    return caf::none;
  }

  // -- probing ---------------------------------------------------------------

  void send_ping(const peer_address& to, uint64_t nonce) {
    Frame f;
    f.mutable_ping()->set_nonce(nonce);
    f.mutable_ping()->set_sent_us(now_us());
    static_cast<void>(net.send(to, f));
  }

  std::vector<failure_detector::peer>
  live_peer_rows(std::map<std::string, peer_address>* addresses = nullptr) {
    std::vector<failure_detector::peer> out;
    std::lock_guard guard{mtx};
    for (auto& row : cached.table.rows) {
      if (row.silo_id == cfg.self.silo_id || row.status == silo_status::dead)
        continue;
      auto ep = parse_endpoint(row.address);
      if (!ep)
        continue;
      out.push_back(failure_detector::peer{row.silo_id, row.incarnation});
      if (addresses)
        addresses->emplace(row.silo_id, peer_address{row.silo_id, *ep});
    }
    return out;
  }

  void probe_round() {
    std::map<std::string, peer_address> addresses;
    auto live = live_peer_rows(&addresses);
    failure_detector::round round;
    {
      std::lock_guard guard{probe_mtx};
      round = detector.start_round(live, now_ms());
    }
    for (auto& p : round.probes)
      send_ping(addresses.at(p.silo_id), p.nonce);
    for (auto& x : round.suspects)
      vote(x);
  }

  // Votes that `x` (one run of a silo) is dead, as the detector judges.
  void vote(const failure_detector::suspect& x) {
    for (int attempt = 0; attempt < max_cas_attempts; ++attempt) {
      auto snap = store.read_all();
      if (!snap) {
        say(log_level::warning, "cannot read the table to vote on '" + x.silo_id
                                    + "': " + describe(snap.error()));
        return;
      }
      auto now = now_ms();
      failure_detector::verdict v;
      {
        std::lock_guard guard{probe_mtx};
        v = detector.judge(*snap, x, incarnation, now);
      }
      switch (v.kind) {
        case failure_detector::verdict_kind::stop:
          // A dead silo's view of the others counts for nothing.
          declare_self_dead(v.why);
          return;
        case failure_detector::verdict_kind::minority:
          if (now - last_minority_log_ms > 10'000) {
            last_minority_log_ms = now;
            say(log_level::warning,
                "silo '" + cfg.self.silo_id + "' reaches "
                    + std::to_string(v.reached.reached) + " of "
                    + std::to_string(v.reached.live)
                    + " live silos, not a majority: it declares no one dead "
                      "(it suspects '"
                    + x.silo_id + "')");
          }
          return;
        case failure_detector::verdict_kind::settled:
        case failure_detector::verdict_kind::answered:
        case failure_detector::verdict_kind::other_run:
          return;
        case failure_detector::verdict_kind::vote:
          break;
      }
      auto res = store.update(v.row, v.row.version, snap->version);
      if (!res) {
        if (code_of(res.error()) == errc::timeout)
          continue;
        say(log_level::warning,
            "vote on '" + x.silo_id + "' failed: " + describe(res.error()));
        return;
      }
      if (!res->applied())
        continue;
      int64_t since = 0;
      {
        std::lock_guard guard{probe_mtx};
        since = detector.voted(x.silo_id, now);
      }
      refresh_soon();
      if (v.declares_dead)
        say(log_level::warning,
            "declared silo '" + x.silo_id + "' dead (" + std::to_string(v.votes)
                + " of " + std::to_string(v.needed)
                + " votes; first missed probe "
                + std::to_string(since + cfg.probe_interval.count())
                + " ms ago)");
      else
        say(log_level::info, "suspect silo '" + x.silo_id + "' ("
                                 + std::to_string(v.votes) + " of "
                                 + std::to_string(v.needed) + " votes)");
      return;
    }
  }

  void main_loop() {
    auto next_probe = sys::now();
    auto next_alive = next_probe + cfg.i_am_alive_interval;
    auto next_refresh = next_probe;
    int64_t last_error_log = 0;
    // Bounded by `stopped`; each pass waits for the next deadline.
    for (;;) {
      auto now = sys::now();
      bool want = false;
      {
        std::unique_lock guard{mtx};
        auto wake = std::min({next_probe, next_alive, next_refresh});
        cv.wait_until(guard, wake, [&] { return stopped || refresh_wanted; });
        if (stopped)
          return;
        want = refresh_wanted;
        refresh_wanted = false;
        now = sys::now();
      }
      if (want || now >= next_refresh) {
        next_refresh = now + cfg.refresh_interval;
        if (auto err = refresh()) {
          if (now_ms() - last_error_log > 10'000) {
            last_error_log = now_ms();
            say(log_level::warning,
                "cannot read the membership store: " + describe(err));
          }
        }
      }
      if (now >= next_probe) {
        next_probe = now + cfg.probe_interval;
        probe_round();
      }
      if (now >= next_alive) {
        next_alive = now + cfg.i_am_alive_interval;
        if (auto err = store.update_i_am_alive(cfg.self.silo_id, now_ms());
            err && code_of(err) != errc::timeout)
          say(log_level::warning,
              "cannot write 'I am alive': " + describe(err));
      }
    }
  }

  caf::error watch_ok() {
    auto tok = store.watch([this](const membership_change&) {
      {
        std::lock_guard guard{mtx};
        refresh_wanted = true;
      }
      cv.notify_all();
    });
    if (!tok)
      return std::move(tok.error());
    watch = std::move(*tok);
    return caf::none;
  }

  void start_threads() {
    main_thread = sys::thread{"agent", [this] { main_loop(); }};
    sender_thread = sys::thread{"handoff-sender", [this] { sender.run(); }};
    receiver_thread
        = sys::thread{"handoff-receiver", [this] { receiver.run(); }};
  }
};

cluster_agent::cluster_agent(agent_config cfg, membership_store& store,
                             transport& net, transport_router& router,
                             std::shared_ptr<granary::clock> clk)
    : impl_(std::make_unique<impl>(std::move(cfg), std::move(clk), store, net,
                                   router)) {}

cluster_agent::~cluster_agent() {
  stop();
}

void cluster_agent::on_declared_dead(dead_fn fn) {
  impl_->on_dead = std::move(fn);
}

caf::error cluster_agent::join(storage& data, uint64_t incarnation) {
  auto& d = *impl_;
  if (auto err = d.cfg.validate())
    return err;
  d.data = &data;
  d.incarnation = incarnation;
  std::error_code ec;
  fs::create_directories(d.cfg.handoff_dir, ec);
  if (ec)
    return make_error(errc::invalid_config, "cannot create handoff directory "
                                                + d.cfg.handoff_dir + ": "
                                                + ec.message());
  if (auto err = d.write_own_row(silo_status::joining, true))
    return make_error(code_of(err), "joining the cluster: " + describe(err));
  // The first silo of a new cluster creates the map, holding everything.
  for (int attempt = 0; attempt < max_cas_attempts; ++attempt) {
    auto map = d.store.read_partition_map();
    if (!map)
      return std::move(map.error());
    if (map->version != 0)
      break;
    for (uint32_t p = 0; p < d.cfg.partitions; ++p)
      if (auto err = put_held(data, p, 1, true))
        return err;
    partition_map fresh;
    fresh.partition_count = d.cfg.partitions;
    for (uint32_t p = 0; p < d.cfg.partitions; ++p)
      fresh.partitions.push_back(partition_assignment{
          p, 1, {partition_owner{d.cfg.self.silo_id, replica_role::primary}}});
    auto res = d.store.write_partition_map(fresh, 0);
    if (res && res->applied()) {
      say(log_level::info,
          "created the partition map: " + std::to_string(d.cfg.partitions)
              + " partitions on silo '" + d.cfg.self.silo_id + "'");
      break;
    }
  }
  auto view = d.read_view();
  if (!view)
    return std::move(view.error());
  if (view->map.partition_count != d.cfg.partitions)
    return make_error(errc::invalid_config,
                      "the cluster has "
                          + std::to_string(view->map.partition_count)
                          + " partitions but this silo's config says "
                          + std::to_string(d.cfg.partitions));
  std::string missing;
  for (auto& a : view->map.partitions) {
    auto* owner = a.primary();
    auto held = is_held(data, a.partition);
    if (!held)
      return std::move(held.error());
    bool mine = owner && *owner == d.cfg.self.silo_id;
    if (mine && !*held)
      missing += (missing.empty() ? "" : ",") + std::to_string(a.partition);
    if (!mine && *held) {
      auto epoch = held_epoch(data, a.partition);
      if (!epoch)
        return std::move(epoch.error());
      if (*epoch > a.epoch) {
        // Received for an epoch the map has not reached: the sender's map
        // write may still come, and then this copy is the only one.
        say(log_level::info, "keeping partition " + std::to_string(a.partition)
                                 + ", received for epoch "
                                 + std::to_string(*epoch) + " (the map is at "
                                 + std::to_string(a.epoch) + ")");
        continue;
      }
      // Left over from a handoff that finished (or never did): the owner
      // has the authoritative copy.
      if (auto err = data.drop_partition(a.partition))
        return err;
      if (auto err = put_held(data, a.partition, 0, false))
        return err;
    }
  }
  if (!missing.empty())
    return make_error(errc::invalid_config,
                      "the partition map gives partitions " + missing
                          + " to silo '" + d.cfg.self.silo_id
                          + "' but its data directory does not hold them: a "
                            "wrong or wiped data_dir; refusing to serve "
                            "them empty");
  d.apply(std::move(*view));
  return caf::none;
}

caf::error cluster_agent::activate(silo& local) {
  auto& d = *impl_;
  d.local = &local;
  // `silo::start` recovered the partitions routed here by `join`.
  for (uint32_t p = 0; p < d.cfg.partitions; ++p)
    d.serving[p] = d.router.owns(p);
  if (auto err = d.watch_ok())
    return err;
  // Prove that this silo reaches the live silos before it takes work.
  std::map<std::string, peer_address> addresses;
  std::vector<std::string> peers;
  for (auto& p : d.live_peer_rows(&addresses))
    peers.push_back(p.silo_id);
  auto deadline = sys::now() + d.cfg.join_timeout;
  {
    std::lock_guard guard{d.probe_mtx};
    static_cast<void>(d.detector.join_probes(peers));
  }
  // Pings repeat every 100 ms until all answered or the deadline passed.
  while (sys::now() < deadline) {
    std::vector<failure_detector::probe> pending;
    {
      std::lock_guard guard{d.probe_mtx};
      pending = d.detector.unanswered(peers);
    }
    if (pending.empty())
      break;
    for (auto& p : pending)
      d.send_ping(addresses.at(p.silo_id), p.nonce);
    sys::sleep_for(100ms);
  }
  {
    std::lock_guard guard{d.probe_mtx};
    for (auto& p : d.detector.unanswered(peers))
      say(log_level::warning, "silo '" + p.silo_id
                                  + "' did not answer while joining; the "
                                    "failure detector will judge it");
  }
  if (auto err = d.write_own_row(silo_status::active, false))
    return make_error(code_of(err), "becoming active: " + describe(err));
  say(log_level::info, "silo '" + d.cfg.self.silo_id + "' is active");
  d.start_threads();
  return caf::none;
}

caf::error cluster_agent::leave(std::chrono::milliseconds limit) {
  auto& d = *impl_;
  {
    std::lock_guard guard{d.mtx};
    d.leaving = true;
    d.refresh_wanted = true;
  }
  d.cv.notify_all();
  auto deadline = sys::now() + limit;
  if (auto err = d.write_own_row(silo_status::shutting_down, false, limit / 2))
    return make_error(code_of(err),
                      "cannot announce the leave, so the partitions stay "
                      "here: "
                          + describe(err));
  bool others = false;
  // Waits for the sender thread to move every partition away.
  while (sys::now() < deadline) {
    static_cast<void>(d.refresh());
    auto view = this->view();
    others = std::any_of(view.table.rows.begin(), view.table.rows.end(),
                         [&](auto& r) {
                           return r.status == silo_status::active
                                  && r.silo_id != d.cfg.self.silo_id;
                         });
    if (!others || d.held() == 0)
      break;
    sys::sleep_for(100ms);
  }
  auto left_behind = d.held();
  {
    std::lock_guard guard{d.mtx};
    d.left = true;
  }
  if (auto err = d.write_own_row(silo_status::dead, false, 5s))
    say(log_level::warning, "cannot mark this silo as left: " + describe(err));
  if (left_behind > 0)
    return make_error(others ? errc::timeout : errc::partition_unavailable,
                      std::to_string(left_behind)
                          + " partitions stay on this silo"
                          + (others ? " (handoff did not finish in time)"
                                    : " (no other active silo)")
                          + "; they are served again when it restarts");
  return caf::none;
}

void cluster_agent::on_frame(const peer_info& from, Frame&& frame) {
  auto& d = *impl_;
  switch (frame.body_case()) {
    case Frame::kPing: {
      Frame out;
      auto& pong = *out.mutable_pong();
      pong.set_nonce(frame.ping().nonce());
      pong.set_ping_sent_us(frame.ping().sent_us());
      pong.set_received_us(now_us());
      static_cast<void>(
          d.net.send(peer_address{from.silo_id, from.address}, out));
      break;
    }
    case Frame::kPong: {
      std::lock_guard guard{d.probe_mtx};
      d.detector.on_answer(from.silo_id);
      break;
    }
    case Frame::kHandoffChunk:
      d.receiver.offer(from, std::move(*frame.mutable_handoff_chunk()));
      break;
    case Frame::kHandoffAck:
      d.sender.on_ack(frame.handoff_ack());
      break;
    default:
      break;
  }
}

void cluster_agent::refresh_soon() {
  impl_->refresh_soon();
}

cluster_view cluster_agent::view() const {
  std::lock_guard guard{impl_->mtx};
  return impl_->cached;
}

std::string cluster_agent::gateway_of(uint32_t p) const {
  std::lock_guard guard{impl_->mtx};
  auto& view = impl_->cached;
  if (p >= view.map.partitions.size())
    return {};
  auto* owner = view.map.partitions[p].primary();
  if (!owner || *owner == impl_->cfg.self.silo_id)
    return {};
  auto* row = view.table.find(*owner);
  return row ? row->gateway_address : std::string{};
}

std::vector<uint32_t> cluster_agent::served() const {
  std::vector<uint32_t> out;
  for (uint32_t p = 0; p < impl_->cfg.partitions; ++p)
    if (impl_->serving[p].load())
      out.push_back(p);
  return out;
}

void cluster_agent::stop() {
  auto& d = *impl_;
  {
    std::lock_guard guard{d.mtx};
    d.stopped = true;
  }
  d.cv.notify_all();
  d.sender.wake();
  d.receiver.stop();
  d.watch.cancel();
  for (auto* t : {&d.main_thread, &d.sender_thread, &d.receiver_thread})
    if (t->joinable())
      t->join();
}

} // namespace granary::cluster

#include "cluster/agent/cluster_agent.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include "cluster.pb.h"
#include "cluster/agent/failure_detector.hpp"
#include "cluster/agent/move_planner.hpp"
#include "runtime/error.hpp"
#include "runtime/json.hpp"
#include "runtime/log.hpp"

namespace granary::cluster {

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

int64_t now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void say(log_level level, const std::string& line) {
  log(level, "cluster: " + line);
}

// Meta record that says the data directory holds partition p (value: the
// epoch it was received or created at). Without it a silo refuses to serve
// a partition the map gives it.
std::string held_key(uint32_t p) {
  return "partition/" + std::to_string(p);
}

caf::error put_held(storage& data, uint32_t p, uint64_t epoch, bool held) {
  write_batch wb;
  if (held)
    wb.put(column::meta, held_key(p), std::to_string(epoch));
  else
    wb.erase(column::meta, held_key(p));
  const write_batch* views[] = {&wb};
  return data.commit(views);
}

caf::expected<bool> is_held(storage& data, uint32_t p) {
  auto v = data.get(column::meta, held_key(p));
  if (!v)
    return std::move(v.error());
  return v->has_value();
}

// The epoch recorded with the held partition (0 when unreadable).
caf::expected<uint64_t> held_epoch(storage& data, uint32_t p) {
  auto v = data.get(column::meta, held_key(p));
  if (!v)
    return std::move(v.error());
  if (!v->has_value())
    return uint64_t{0};
  try {
    return static_cast<uint64_t>(std::stoull(**v));
  } catch (const std::exception&) {
    return uint64_t{0};
  }
}

// Bounded compare-and-set retries of membership writes.
constexpr int max_cas_attempts = 20;

// Waits of `release_timeout` each for a slow release before giving up.
constexpr int max_release_waits = 10;

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

struct cluster_agent::impl {
  struct inbound {
    peer_info from;
    HandoffChunk chunk;
  };

  struct transfer {
    uint64_t id = 0;
    uint32_t partition = 0;
    uint64_t epoch = 0;
    uint64_t next_seq = 0;
    std::string from;
    fs::path dir;
    std::vector<partition_file> files;
  };

  agent_config cfg;
  std::shared_ptr<granary::clock> clk;
  membership_store& store;
  transport& net;
  transport_router& router;
  storage* data = nullptr;
  std::atomic<silo*> local{nullptr};
  uint64_t incarnation = 0;
  dead_fn on_dead;
  std::atomic<bool> dead_reported{false};

  mutable std::mutex mtx;
  std::condition_variable cv;
  bool stopped = false;
  bool refresh_wanted = true;
  bool leaving = false;
  bool left = false;
  cluster_view cached;
  std::mt19937_64 rng{std::random_device{}()};

  // Serializes `apply` (it may acquire and release partitions).
  std::mutex apply_mtx;
  std::unique_ptr<std::atomic<bool>[]> serving;
  std::unique_ptr<std::atomic<bool>[]> moving;
  // Partitions whose missing data was reported (guarded by apply_mtx).
  std::vector<bool> missing_logged;

  // Guards the detector, which pongs reach on the transport's threads.
  std::mutex probe_mtx;
  failure_detector detector;
  int64_t last_minority_log_ms = 0;

  // Handoff sender: the answer it waits for.
  std::mutex ack_mtx;
  std::condition_variable ack_cv;
  uint64_t await_id = 0;
  uint64_t await_seq = 0;
  std::optional<caf::error> await_result;

  // Handoff receiver queue.
  std::deque<inbound> incoming;
  static constexpr size_t max_incoming = 64;

  watch_token watch;
  std::thread main_thread;
  std::thread sender_thread;
  std::thread receiver_thread;

  impl(agent_config c, std::shared_ptr<granary::clock> k, membership_store& s,
       transport& n, transport_router& r)
      : cfg(std::move(c))
      , clk(k ? std::move(k) : make_system_clock())
      , store(s)
      , net(n)
      , router(r)
      , serving(std::make_unique<std::atomic<bool>[]>(cfg.partitions))
      , moving(std::make_unique<std::atomic<bool>[]>(cfg.partitions))
      , missing_logged(cfg.partitions, false)
      , detector(detector_config{cfg.self.silo_id, cfg.missed_probes,
                                 cfg.votes_needed, cfg.vote_expiry.count()},
                 std::random_device{}()) {
    on_dead = [](const std::string& why) {
      say(log_level::error, why + "; exiting");
      std::fflush(stdout);
      std::fflush(stderr);
      std::_Exit(3);
    };
  }

  int64_t now_ms() const {
    return clk->now_ms();
  }

  bool is_stopped() const {
    std::lock_guard guard{mtx};
    return stopped;
  }

  // Sleeps up to `d`, or until stopped; returns false when stopped.
  bool nap(std::chrono::milliseconds d) {
    std::unique_lock guard{mtx};
    cv.wait_for(guard, d, [this] { return stopped; });
    return !stopped;
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
    auto deadline = std::chrono::steady_clock::now() + limit;
    for (int attempt = 0; attempt < max_cas_attempts
                          && std::chrono::steady_clock::now() < deadline;
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
    auto next_probe = std::chrono::steady_clock::now();
    auto next_alive = next_probe + cfg.i_am_alive_interval;
    auto next_refresh = next_probe;
    int64_t last_error_log = 0;
    // Bounded by `stopped`; each pass waits for the next deadline.
    for (;;) {
      auto now = std::chrono::steady_clock::now();
      bool want = false;
      {
        std::unique_lock guard{mtx};
        auto wake = std::min({next_probe, next_alive, next_refresh});
        cv.wait_until(guard, wake, [&] { return stopped || refresh_wanted; });
        if (stopped)
          return;
        want = refresh_wanted;
        refresh_wanted = false;
        now = std::chrono::steady_clock::now();
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

  // Partitions still on this silo: served, or on their way out. A
  // partition in flight is not served, yet it is ours until its new owner
  // is in the map, so leaving must wait for it too.
  size_t held() const {
    size_t n = 0;
    for (uint32_t p = 0; p < cfg.partitions; ++p)
      if (serving[p].load() || moving[p].load())
        ++n;
    return n;
  }

  // -- handoff: sending -------------------------------------------------------

  caf::error await_ack(uint64_t id, uint64_t seq) {
    std::unique_lock guard{ack_mtx};
    auto wait = std::min<std::chrono::milliseconds>(cfg.handoff_timeout, 500ms);
    bool got = ack_cv.wait_for(
        guard, wait, [&] { return await_result.has_value() || is_stopped(); });
    auto result = std::move(await_result);
    await_result.reset();
    if (!got || !result)
      return make_error(errc::timeout, "no answer to handoff chunk "
                                           + std::to_string(seq) + " of "
                                           + std::to_string(id));
    return std::move(*result);
  }

  // Sends one chunk and waits for its answer; a chunk or an answer lost on
  // the way is sent again (the receiver answers repeats), until
  // `handoff_timeout` passed.
  caf::error send_chunk(const peer_address& to, Frame& f) {
    {
      std::lock_guard guard{ack_mtx};
      await_id = f.handoff_chunk().handoff_id();
      await_seq = f.handoff_chunk().seq();
      await_result.reset();
    }
    auto deadline = std::chrono::steady_clock::now() + cfg.handoff_timeout;
    caf::error last;
    // Bounded by the deadline.
    while (std::chrono::steady_clock::now() < deadline && !is_stopped()) {
      if (auto err = net.send(to, f)) {
        // Backpressure or a reconnect: transient, try again shortly.
        last = err;
        std::this_thread::sleep_for(20ms);
        continue;
      }
      last = await_ack(f.handoff_chunk().handoff_id(), f.handoff_chunk().seq());
      if (code_of(last) != errc::timeout)
        return last;
    }
    return last ? last
                : make_error(errc::timeout, "handoff to " + to.silo_id
                                                + " did not finish in time");
  }

  caf::error ship(const peer_address& to, uint32_t p, uint64_t epoch,
                  const std::vector<partition_file>& files) {
    uint64_t id = 0;
    {
      std::lock_guard guard{mtx};
      id = rng() | 1;
    }
    uint64_t seq = 0;
    std::vector<char> buf(cfg.handoff_chunk_bytes);
    auto make = [&](uint32_t index, const partition_file* file) {
      Frame f;
      auto& c = *f.mutable_handoff_chunk();
      c.set_handoff_id(id);
      c.set_partition(p);
      c.set_epoch(epoch);
      c.set_seq(seq++);
      c.set_file_index(index);
      c.set_file_count(static_cast<uint32_t>(files.size()));
      if (file) {
        c.set_column(static_cast<uint32_t>(file->col));
        c.set_records(file->records);
      }
      return f;
    };
    for (uint32_t i = 0; i < files.size(); ++i) {
      std::ifstream in{files[i].path, std::ios::binary};
      if (!in)
        return make_error(errc::storage_failure,
                          "cannot read export file " + files[i].path);
      std::error_code ec;
      auto size = fs::file_size(files[i].path, ec);
      if (ec)
        return make_error(errc::storage_failure,
                          "cannot size export file " + files[i].path);
      uint64_t sent = 0;
      // One chunk per handoff_chunk_bytes: bounded by the file's size.
      do {
        auto n = std::min<uint64_t>(buf.size(), size - sent);
        in.read(buf.data(), static_cast<std::streamsize>(n));
        if (static_cast<uint64_t>(in.gcount()) != n)
          return make_error(errc::storage_failure,
                            "short read of export file " + files[i].path);
        sent += n;
        auto f = make(i, &files[i]);
        f.mutable_handoff_chunk()->set_data(buf.data(), n);
        f.mutable_handoff_chunk()->set_last(i + 1 == files.size()
                                            && sent == size);
        if (auto err = send_chunk(to, f))
          return err;
      } while (sent < size);
    }
    if (files.empty()) {
      auto f = make(0, nullptr);
      f.mutable_handoff_chunk()->set_last(true);
      return send_chunk(to, f);
    }
    return caf::none;
  }

  // What the map says about a move whose map write was attempted.
  enum class move_outcome {
    // `p` is on `to` at `epoch + 1`: the move happened.
    moved,
    // `p` is still ours at `epoch`, and no write of ours can still apply.
    ours,
    // `p` is on neither: someone else wrote the map.
    not_ours,
    // A write's outcome is unknown and the map could not tell yet.
    unknown,
  };

  // A move whose new owner has the data but whose map write is not known
  // to have happened or not (the store timed out). `p` stays served
  // nowhere until the map tells, and the sender thread asks again.
  struct pending_move {
    uint64_t epoch = 0;
    std::string to;
    peer_address to_address;
    // Whether a write with an unknown outcome may still apply, and the
    // highest map version such a write expected: a write can only apply
    // while the map is at the version it expected.
    bool unknown = false;
    uint64_t unknown_at = 0;
  };

  // Map writes that wait for an answer, by partition (sender thread only).
  std::map<uint32_t, pending_move> unsettled;

  // What `commit_move` found: the outcome, the map version that says so and
  // the partition's primary in it.
  struct move_answer {
    move_outcome outcome = move_outcome::unknown;
    uint64_t version = 0;
    std::string owner;
  };

  // Writes the map with `p` on `to` at `epoch + 1`, or finds out that this
  // happened. Returns `moved` with the map's version, `ours` or `not_ours`
  // when the map says so for certain, and `unknown` while it cannot.
  move_answer commit_move(uint32_t p, pending_move& m) {
    auto backoff = 50ms;
    for (int attempt = 0; attempt < max_cas_attempts && !is_stopped();
         ++attempt) {
      auto map = store.read_partition_map();
      if (!map || p >= map->partitions.size()) {
        nap(backoff);
        backoff = std::min<std::chrono::milliseconds>(backoff * 2, 200ms);
        continue;
      }
      auto& a = map->partitions[p];
      auto* owner = a.primary();
      if (a.epoch == m.epoch + 1 && owner && *owner == m.to)
        return {move_outcome::moved, map->version, m.to};
      if (a.epoch != m.epoch || !owner || *owner != cfg.self.silo_id)
        return {move_outcome::not_ours, map->version,
                owner ? *owner : std::string{}};
      // Still ours at the old epoch. A lost write that expected an older
      // version can no longer apply; one that expected this version still
      // can, so write again: either one applies, or the map moves on.
      if (m.unknown && map->version > m.unknown_at)
        m.unknown = false;
      auto next = *map;
      next.partitions[p].epoch = m.epoch + 1;
      next.partitions[p].owners
          = {partition_owner{m.to, replica_role::primary}};
      auto res = store.write_partition_map(next, map->version);
      if (res && res->applied())
        return {move_outcome::moved, res->version, m.to};
      if (!res && code_of(res.error()) != errc::invalid_argument) {
        m.unknown = true;
        m.unknown_at = std::max(m.unknown_at, map->version);
      }
    }
    return {m.unknown ? move_outcome::unknown : move_outcome::ours, 0, {}};
  }

  // Acts on what the map said about the move of `p` (see `commit_move`).
  // Returns false while the outcome is unknown (`p` stays unserved).
  bool settle(uint32_t p, const pending_move& m, const move_answer& answer) {
    switch (answer.outcome) {
      case move_outcome::moved:
        finish_move(p, m, answer.version);
        return true;
      case move_outcome::ours:
        restore(p, m.epoch);
        return true;
      case move_outcome::not_ours:
        // Our write applied and the new owner moved `p` on, or someone
        // wrote the map by hand. Either way the map is the truth; our copy
        // is garbage only if the silo it names got it from us.
        say(log_level::error, "partition " + std::to_string(p)
                                  + " changed owner during its handoff (now '"
                                  + answer.owner + "')");
        if (answer.owner == m.to)
          forget(p);
        {
          std::lock_guard apply_guard{apply_mtx};
          moving[p] = false;
        }
        refresh_soon();
        return true;
      case move_outcome::unknown:
        break;
    }
    return false;
  }

  void refresh_soon() {
    {
      std::lock_guard guard{mtx};
      refresh_wanted = true;
    }
    cv.notify_all();
  }

  // Drops this silo's copy of `p`, which another silo owns now.
  void forget(uint32_t p) {
    if (auto err = data->drop_partition(p))
      say(log_level::warning, "dropping the moved partition "
                                  + std::to_string(p)
                                  + " failed: " + describe(err));
    static_cast<void>(put_held(*data, p, 0, false));
  }

  // The map gives `p` to `m.to` at `m.epoch + 1` (map version `version`).
  void finish_move(uint32_t p, const pending_move& m, uint64_t version) {
    {
      std::lock_guard apply_guard{apply_mtx};
      {
        // The new map, as far as this partition goes; any read older than
        // it is ignored by `apply`.
        std::lock_guard guard{mtx};
        auto& a = cached.map.partitions[p];
        if (a.epoch <= m.epoch + 1) {
          a.epoch = m.epoch + 1;
          a.owners = {partition_owner{m.to, replica_role::primary}};
          cached.map.version = std::max(cached.map.version, version);
        }
      }
      router.set_route(p, route{m.to_address, m.epoch + 1, true, {}});
      moving[p] = false;
    }
    // The new owner holds the partition now; our copy is garbage.
    forget(p);
    refresh_soon();
  }

  // Asks the map again about every move whose outcome is unknown.
  void settle_unsettled() {
    for (auto i = unsettled.begin(); i != unsettled.end() && !is_stopped();) {
      if (settle(i->first, i->second, commit_move(i->first, i->second))) {
        say(log_level::info, "the map answered for partition "
                                 + std::to_string(i->first)
                                 + "; its handoff is settled");
        i = unsettled.erase(i);
      } else {
        ++i;
      }
    }
  }

  void restore(uint32_t p, uint64_t epoch) {
    auto* here = local.load();
    if (here) {
      if (auto err = here->acquire_partition(p))
        say(log_level::error,
            "partition " + std::to_string(p)
                + " cannot be served again: " + describe(err));
      else
        serving[p] = true;
    }
    router.set_route(p, route{cfg.self, epoch, true, {}});
    moving[p] = false;
  }

  // Releases `p` in the silo. A slow release (a commit still on its way to
  // disk) is waited for, with `p` served nowhere: serving it again before
  // the release finished would hand work to a partition about to forget it.
  caf::error release(silo& here, uint32_t p) {
    caf::error err;
    for (int attempt = 0; attempt < max_release_waits && !is_stopped();
         ++attempt) {
      err = here.release_partition(p, cfg.release_timeout);
      if (code_of(err) != errc::timeout)
        return err;
      if (attempt == 0)
        say(log_level::warning,
            "releasing partition " + std::to_string(p) + " takes longer than "
                + std::to_string(cfg.release_timeout.count())
                + " ms; waiting for it, the partition is served nowhere");
    }
    return err;
  }

  // Moves partition `m.partition` to `m.to`; see the class comment.
  caf::error hand_off(const partition_move& m, const peer_address& to) {
    auto p = m.partition;
    uint64_t epoch = 0;
    auto* here = local.load();
    if (!here)
      return make_error(errc::silo_stopped, "no silo");
    auto started = std::chrono::steady_clock::now();
    {
      std::lock_guard apply_guard{apply_mtx};
      // Only a partition this silo serves, by the newest map it knows, may
      // move; a plan from an older snapshot must not revive a moved one.
      {
        std::lock_guard guard{mtx};
        auto& a = cached.map.partitions[p];
        auto* owner = a.primary();
        if (!owner || *owner != cfg.self.silo_id || !serving[p].load())
          return make_error(errc::not_owner,
                            "partition " + std::to_string(p)
                                + " is not served here any more");
        epoch = a.epoch;
      }
      moving[p] = true;
      router.set_route(p, route{cfg.self, epoch, false,
                                "it is moving to silo '" + m.to + "'"});
    }
    if (auto err = release(*here, p)) {
      restore(p, epoch);
      return err;
    }
    serving[p] = false;
    auto dir = fs::path{cfg.handoff_dir} / ("out-" + std::to_string(p));
    std::error_code ec;
    fs::remove_all(dir, ec);
    fs::create_directories(dir, ec);
    auto files = data->export_partition(p, dir.string());
    if (!files) {
      fs::remove_all(dir, ec);
      restore(p, epoch);
      return std::move(files.error());
    }
    uint64_t bytes = 0;
    for (auto& f : *files)
      bytes += fs::file_size(f.path, ec);
    auto shipped = ship(to, p, epoch + 1, *files);
    fs::remove_all(dir, ec);
    if (shipped) {
      restore(p, epoch);
      return shipped;
    }
    // From here on the map write may happen even when its answer is lost:
    // never serve `p` again unless the map says it is still ours.
    pending_move pm{epoch, m.to, to, false, 0};
    auto answer = commit_move(p, pm);
    if (!settle(p, pm, answer)) {
      say(log_level::warning,
          "the map write that moves partition " + std::to_string(p)
              + " to silo '" + m.to
              + "' has an unknown outcome; the partition is served nowhere "
                "until the map tells");
      unsettled[p] = std::move(pm);
      return make_error(errc::timeout,
                        "the map write's outcome is unknown; asking again");
    }
    if (answer.outcome == move_outcome::ours)
      return make_error(errc::timeout,
                        "could not write the map; it is served here again");
    if (answer.outcome == move_outcome::not_ours)
      return make_error(errc::storage_failure,
                        "partition " + std::to_string(p)
                            + " changed owner during its handoff");
    auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - started);
    say(log_level::info, "handed partition " + std::to_string(p) + " to silo '"
                             + m.to + "' at epoch " + std::to_string(epoch + 1)
                             + " (" + std::to_string(bytes) + " bytes in "
                             + std::to_string(files->size()) + " files, "
                             + std::to_string(took.count()) + " ms)");
    return caf::none;
  }

  void sender_loop() {
    // Bounded by `stopped`; one move per pass, the next one at once.
    bool moved = false;
    while (moved ? !is_stopped() : nap(100ms)) {
      moved = false;
      if (!unsettled.empty()) {
        // No new move while the map cannot tell how the last one ended.
        settle_unsettled();
        if (!unsettled.empty()) {
          if (!nap(400ms))
            return;
          continue;
        }
      }
      cluster_view view;
      bool allowed = false;
      {
        std::lock_guard guard{mtx};
        view = cached;
        allowed = cfg.rebalance || leaving;
      }
      if (!allowed || !local.load())
        continue;
      auto moves = plan_moves(view.map, view.table);
      auto mine = std::find_if(moves.begin(), moves.end(), [&](auto& m) {
        return m.from == cfg.self.silo_id;
      });
      if (mine == moves.end())
        continue;
      auto* row = view.table.find(mine->to);
      auto ep = row ? parse_endpoint(row->address)
                    : caf::expected<endpoint>{make_error(errc::not_found, "")};
      if (!ep)
        continue;
      auto err = hand_off(*mine, peer_address{mine->to, *ep});
      moved = !err;
      if (code_of(err) == errc::not_owner) {
        // The plan came from a snapshot older than our last move.
        std::lock_guard guard{mtx};
        refresh_wanted = true;
        cv.notify_all();
      } else if (err) {
        say(log_level::warning,
            "handoff of partition " + std::to_string(mine->partition)
                + " to silo '" + mine->to + "' failed: " + describe(err));
        if (!nap(1'000ms))
          return;
      }
    }
  }

  // -- handoff: receiving -----------------------------------------------------

  void answer(const peer_info& to, const HandoffChunk& c,
              const caf::error& err) {
    Frame f;
    auto& a = *f.mutable_handoff_ack();
    a.set_handoff_id(c.handoff_id());
    a.set_seq(c.seq());
    if (err) {
      a.set_error_code(static_cast<uint32_t>(code_of(err)));
      a.set_error(describe(err));
    }
    static_cast<void>(net.send(peer_address{to.silo_id, to.address}, f));
  }

  caf::error check_sender(const peer_info& from, uint32_t p, uint64_t epoch) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      partition_assignment a;
      {
        std::lock_guard guard{mtx};
        if (p < cached.map.partitions.size())
          a = cached.map.partitions[p];
      }
      auto* owner = a.primary();
      if (owner && *owner == from.silo_id && a.epoch + 1 == epoch)
        return serving[p].load() ? make_error(
                   errc::invalid_argument, "this silo serves partition "
                                               + std::to_string(p) + " already")
                                 : caf::none;
      if (attempt == 0)
        static_cast<void>(refresh());
    }
    return make_error(errc::not_owner,
                      "silo '" + from.silo_id + "' does not own partition "
                          + std::to_string(p) + " at epoch "
                          + std::to_string(epoch - 1) + " in this silo's map");
  }

  caf::error receive(transfer& t, const peer_info& from,
                     const HandoffChunk& c) {
    if (c.file_count() > 0) {
      if (c.file_index() >= c.file_count() || c.file_count() > 64
          || c.column() == 0 || c.column() >= column_count)
        return make_error(errc::invalid_argument, "bad handoff chunk");
      if (t.files.size() < c.file_count())
        t.files.resize(c.file_count());
      auto& file = t.files[c.file_index()];
      if (file.path.empty()) {
        file.col = static_cast<column>(c.column());
        file.records = c.records();
        file.path = (t.dir / ("f" + std::to_string(c.file_index()))).string();
      }
      std::ofstream out{file.path, std::ios::binary | std::ios::app};
      out.write(c.data().data(), static_cast<std::streamsize>(c.data().size()));
      if (!out)
        return make_error(errc::storage_failure,
                          "cannot write handoff file " + file.path);
    }
    if (!c.last())
      return caf::none;
    for (auto& f : t.files)
      if (f.path.empty())
        return make_error(errc::invalid_argument,
                          "handoff ended with a file missing");
    if (auto err = data->import_partition(t.partition, t.files))
      return err;
    if (auto err = put_held(*data, t.partition, t.epoch, true))
      return err;
    say(log_level::info, "received partition " + std::to_string(t.partition)
                             + " from silo '" + from.silo_id + "'");
    return caf::none;
  }

  void receiver_loop() {
    std::map<uint32_t, transfer> transfers;
    // The last finished transfer per partition (id, last seq), to answer a
    // repeat of its last chunk whose answer was lost.
    std::map<uint32_t, std::pair<uint64_t, uint64_t>> finished;
    std::error_code ec;
    for (;;) {
      inbound in;
      {
        std::unique_lock guard{mtx};
        cv.wait(guard, [&] { return stopped || !incoming.empty(); });
        if (stopped)
          break;
        in = std::move(incoming.front());
        incoming.pop_front();
      }
      auto& c = in.chunk;
      auto p = c.partition();
      if (p >= cfg.partitions) {
        answer(in.from, c, make_error(errc::invalid_argument, "bad partition"));
        continue;
      }
      auto i = transfers.find(p);
      bool repeat
          = (i != transfers.end() && i->second.id == c.handoff_id())
            || (finished.count(p) > 0 && finished[p].first == c.handoff_id());
      if (c.seq() == 0 && repeat) {
        // A duplicate of the first chunk: never restart a transfer for it.
        answer(in.from, c, caf::none);
        continue;
      }
      if (c.seq() == 0) {
        if (i != transfers.end())
          fs::remove_all(i->second.dir, ec);
        transfers.erase(p);
        if (auto err = check_sender(in.from, p, c.epoch())) {
          answer(in.from, c, err);
          continue;
        }
        transfer t;
        t.id = c.handoff_id();
        t.partition = p;
        t.epoch = c.epoch();
        t.from = in.from.silo_id;
        t.dir = fs::path{cfg.handoff_dir} / ("in-" + std::to_string(p));
        fs::remove_all(t.dir, ec);
        fs::create_directories(t.dir, ec);
        i = transfers.emplace(p, std::move(t)).first;
      }
      if (i == transfers.end() || i->second.id != c.handoff_id()) {
        auto f = finished.find(p);
        if (f != finished.end()
            && f->second == std::make_pair(c.handoff_id(), c.seq()))
          answer(in.from, c, caf::none);
        else
          answer(in.from, c,
                 make_error(errc::invalid_argument, "unknown handoff"));
        continue;
      }
      auto& t = i->second;
      if (c.seq() + 1 == t.next_seq) {
        answer(in.from, c, caf::none); // A repeat of the last chunk.
        continue;
      }
      if (c.seq() != t.next_seq) {
        answer(
            in.from, c,
            make_error(errc::invalid_argument, "handoff chunk out of order"));
        continue;
      }
      auto err = receive(t, in.from, c);
      answer(in.from, c, err);
      if (!err && c.last())
        finished[p] = {c.handoff_id(), c.seq()};
      if (err || c.last()) {
        fs::remove_all(t.dir, ec);
        transfers.erase(i);
        continue;
      }
      ++t.next_seq;
    }
    for (auto& [p, t] : transfers)
      fs::remove_all(t.dir, ec);
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
    main_thread = std::thread{[this] { main_loop(); }};
    sender_thread = std::thread{[this] { sender_loop(); }};
    receiver_thread = std::thread{[this] { receiver_loop(); }};
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
  auto deadline = std::chrono::steady_clock::now() + d.cfg.join_timeout;
  {
    std::lock_guard guard{d.probe_mtx};
    static_cast<void>(d.detector.join_probes(peers));
  }
  // Pings repeat every 100 ms until all answered or the deadline passed.
  while (std::chrono::steady_clock::now() < deadline) {
    std::vector<failure_detector::probe> pending;
    {
      std::lock_guard guard{d.probe_mtx};
      pending = d.detector.unanswered(peers);
    }
    if (pending.empty())
      break;
    for (auto& p : pending)
      d.send_ping(addresses.at(p.silo_id), p.nonce);
    std::this_thread::sleep_for(100ms);
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
  auto deadline = std::chrono::steady_clock::now() + limit;
  if (auto err = d.write_own_row(silo_status::shutting_down, false, limit / 2))
    return make_error(code_of(err),
                      "cannot announce the leave, so the partitions stay "
                      "here: "
                          + describe(err));
  bool others = false;
  // Waits for the sender thread to move every partition away.
  while (std::chrono::steady_clock::now() < deadline) {
    static_cast<void>(d.refresh());
    auto view = this->view();
    others = std::any_of(view.table.rows.begin(), view.table.rows.end(),
                         [&](auto& r) {
                           return r.status == silo_status::active
                                  && r.silo_id != d.cfg.self.silo_id;
                         });
    if (!others || d.held() == 0)
      break;
    std::this_thread::sleep_for(100ms);
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
    case Frame::kHandoffChunk: {
      bool full = false;
      {
        std::lock_guard guard{d.mtx};
        full = d.incoming.size() >= impl::max_incoming || d.stopped;
        if (!full)
          d.incoming.push_back(
              impl::inbound{from, std::move(*frame.mutable_handoff_chunk())});
      }
      if (full)
        d.answer(from, frame.handoff_chunk(),
                 make_error(errc::overloaded, "handoff queue full"));
      else
        d.cv.notify_all();
      break;
    }
    case Frame::kHandoffAck: {
      auto& a = frame.handoff_ack();
      {
        std::lock_guard guard{d.ack_mtx};
        if (a.handoff_id() != d.await_id || a.seq() != d.await_seq)
          break;
        d.await_result
            = a.error_code() == 0
                  ? caf::error{}
                  : make_error(static_cast<errc>(a.error_code()), a.error());
      }
      d.ack_cv.notify_all();
      break;
    }
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
  d.ack_cv.notify_all();
  d.watch.cancel();
  for (auto* t : {&d.main_thread, &d.sender_thread, &d.receiver_thread})
    if (t->joinable())
      t->join();
}

} // namespace granary::cluster

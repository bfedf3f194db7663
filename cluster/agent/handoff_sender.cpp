#include "cluster/agent/handoff_sender.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <thread>

#include "cluster/agent/held_partitions.hpp"
#include "runtime/error.hpp"
#include "runtime/mutation.hpp"
#include "runtime/sys.hpp"

namespace granary::cluster {

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// Waits of `release_timeout` each for a slow release before giving up.
constexpr int max_release_waits = 10;

} // namespace

handoff_sender::handoff_sender(agent_context& ctx)
    : ctx_(ctx) {}

void handoff_sender::on_ack(const HandoffAck& a) {
  {
    std::lock_guard guard{ack_mtx_};
    if (a.handoff_id() != await_id_ || a.seq() != await_seq_)
      return;
    await_result_
        = a.error_code() == 0
              ? caf::error{}
              : make_error(static_cast<errc>(a.error_code()), a.error());
  }
  ack_cv_.notify_all();
}

void handoff_sender::wake() {
  ack_cv_.notify_all();
}

caf::error handoff_sender::await_ack(uint64_t id, uint64_t seq) {
  std::unique_lock guard{ack_mtx_};
  auto wait
      = std::min<std::chrono::milliseconds>(ctx_.cfg.handoff_timeout, 500ms);
  bool got = ack_cv_.wait_for(guard, wait, [&] {
    return await_result_.has_value() || ctx_.is_stopped();
  });
  auto result = std::move(await_result_);
  await_result_.reset();
  if (!got || !result)
    return make_error(errc::timeout, "no answer to handoff chunk "
                                         + std::to_string(seq) + " of "
                                         + std::to_string(id));
  return std::move(*result);
}

// Sends one chunk and waits for its answer; a chunk or an answer lost on
// the way is sent again (the receiver answers repeats), until
// `handoff_timeout` passed.
caf::error handoff_sender::send_chunk(const peer_address& to, Frame& f) {
  {
    std::lock_guard guard{ack_mtx_};
    await_id_ = f.handoff_chunk().handoff_id();
    await_seq_ = f.handoff_chunk().seq();
    await_result_.reset();
  }
  auto deadline = sys::now() + ctx_.cfg.handoff_timeout;
  caf::error last;
  // Bounded by the deadline.
  while (sys::now() < deadline && !ctx_.is_stopped()) {
    if (auto err = ctx_.net.send(to, f)) {
      // Backpressure or a reconnect: transient, try again shortly.
      last = err;
      sys::sleep_for(20ms);
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

caf::error handoff_sender::ship(const peer_address& to, uint32_t p,
                                uint64_t epoch,
                                const std::vector<partition_file>& files) {
  auto id = ctx_.random_id();
  uint64_t seq = 0;
  std::vector<char> buf(ctx_.cfg.handoff_chunk_bytes);
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

// Writes the map with `p` on `to` at `epoch + 1`, or finds out that this
// happened. Returns `moved` with the map's version, `ours` or `not_ours`
// when the map says so for certain, and `unknown` while it cannot.
handoff_sender::move_answer handoff_sender::commit_move(uint32_t p,
                                                        pending_move& m) {
  auto backoff = 50ms;
  for (int attempt = 0; attempt < max_cas_attempts && !ctx_.is_stopped();
       ++attempt) {
    auto map = ctx_.store.read_partition_map();
    if (!map || p >= map->partitions.size()) {
      ctx_.nap(backoff);
      backoff = std::min<std::chrono::milliseconds>(backoff * 2, 200ms);
      continue;
    }
    auto& a = map->partitions[p];
    auto* owner = a.primary();
    if (a.epoch == m.epoch + 1 && owner && *owner == m.to)
      return {move_outcome::moved, map->version, m.to};
    if (a.epoch != m.epoch || !owner || *owner != ctx_.cfg.self.silo_id)
      return {move_outcome::not_ours, map->version,
              owner ? *owner : std::string{}};
    // Still ours at the old epoch. A lost write that expected an older
    // version can no longer apply; one that expected this version still
    // can, so write again: either one applies, or the map moves on.
    if (m.unknown && map->version > m.unknown_at)
      m.unknown = false;
    auto next = *map;
    next.partitions[p].epoch = m.epoch + 1;
    next.partitions[p].owners = {partition_owner{m.to, replica_role::primary}};
    auto res = ctx_.store.write_partition_map(next, map->version);
    if (res && res->applied())
      return {move_outcome::moved, res->version, m.to};
    if (!res && code_of(res.error()) != errc::invalid_argument) {
      if (mutation_active(mutation::restore_after_unknown_map_write))
        return {move_outcome::ours, 0, {}};
      m.unknown = true;
      m.unknown_at = std::max(m.unknown_at, map->version);
    }
  }
  return {m.unknown ? move_outcome::unknown : move_outcome::ours, 0, {}};
}

// Acts on what the map said about the move of `p` (see `commit_move`).
// Returns false while the outcome is unknown (`p` stays unserved).
bool handoff_sender::settle(uint32_t p, const pending_move& m,
                            const move_answer& answer) {
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
        std::lock_guard apply_guard{ctx_.apply_mtx};
        ctx_.moving[p] = false;
      }
      ctx_.refresh_soon();
      return true;
    case move_outcome::unknown:
      break;
  }
  return false;
}

// Drops this silo's copy of `p`, which another silo owns now.
void handoff_sender::forget(uint32_t p) {
  if (auto err = ctx_.data->drop_partition(p))
    say(log_level::warning, "dropping the moved partition " + std::to_string(p)
                                + " failed: " + describe(err));
  static_cast<void>(put_held(*ctx_.data, p, 0, false));
}

// The map gives `p` to `m.to` at `m.epoch + 1` (map version `version`).
void handoff_sender::finish_move(uint32_t p, const pending_move& m,
                                 uint64_t version) {
  {
    std::lock_guard apply_guard{ctx_.apply_mtx};
    {
      // The new map, as far as this partition goes; any read older than
      // it is ignored by `apply`.
      std::lock_guard guard{ctx_.mtx};
      auto& a = ctx_.cached.map.partitions[p];
      if (a.epoch <= m.epoch + 1) {
        a.epoch = m.epoch + 1;
        a.owners = {partition_owner{m.to, replica_role::primary}};
        ctx_.cached.map.version = std::max(ctx_.cached.map.version, version);
      }
    }
    ctx_.router.set_route(p, route{m.to_address, m.epoch + 1, true, {}});
    ctx_.moving[p] = false;
  }
  // The new owner holds the partition now; our copy is garbage.
  forget(p);
  ctx_.refresh_soon();
}

// Asks the map again about every move whose outcome is unknown.
void handoff_sender::settle_unsettled() {
  for (auto i = unsettled_.begin();
       i != unsettled_.end() && !ctx_.is_stopped();) {
    if (settle(i->first, i->second, commit_move(i->first, i->second))) {
      say(log_level::info, "the map answered for partition "
                               + std::to_string(i->first)
                               + "; its handoff is settled");
      i = unsettled_.erase(i);
    } else {
      ++i;
    }
  }
}

void handoff_sender::restore(uint32_t p, uint64_t epoch) {
  auto* here = ctx_.local.load();
  if (here) {
    if (auto err = here->acquire_partition(p))
      say(log_level::error, "partition " + std::to_string(p)
                                + " cannot be served again: " + describe(err));
    else
      ctx_.serving[p] = true;
  }
  ctx_.router.set_route(p, route{ctx_.cfg.self, epoch, true, {}});
  ctx_.moving[p] = false;
}

// Releases `p` in the silo. A slow release (a commit still on its way to
// disk) is waited for, with `p` served nowhere: serving it again before
// the release finished would hand work to a partition about to forget it.
caf::error handoff_sender::release(silo& here, uint32_t p) {
  caf::error err;
  for (int attempt = 0; attempt < max_release_waits && !ctx_.is_stopped();
       ++attempt) {
    err = here.release_partition(p, ctx_.cfg.release_timeout);
    if (code_of(err) != errc::timeout)
      return err;
    if (attempt == 0)
      say(log_level::warning,
          "releasing partition " + std::to_string(p) + " takes longer than "
              + std::to_string(ctx_.cfg.release_timeout.count())
              + " ms; waiting for it, the partition is served nowhere");
  }
  return err;
}

// Moves partition `m.partition` to `m.to`; see the class comment.
caf::error handoff_sender::hand_off(const partition_move& m,
                                    const peer_address& to) {
  auto p = m.partition;
  uint64_t epoch = 0;
  auto* here = ctx_.local.load();
  if (!here)
    return make_error(errc::silo_stopped, "no silo");
  auto started = sys::now();
  {
    std::lock_guard apply_guard{ctx_.apply_mtx};
    // Only a partition this silo serves, by the newest map it knows, may
    // move; a plan from an older snapshot must not revive a moved one.
    {
      std::lock_guard guard{ctx_.mtx};
      auto& a = ctx_.cached.map.partitions[p];
      auto* owner = a.primary();
      if (!owner || *owner != ctx_.cfg.self.silo_id || !ctx_.serving[p].load())
        return make_error(errc::not_owner,
                          "partition " + std::to_string(p)
                              + " is not served here any more");
      epoch = a.epoch;
    }
    ctx_.moving[p] = true;
    ctx_.router.set_route(p, route{ctx_.cfg.self, epoch, false,
                                   "it is moving to silo '" + m.to + "'"});
  }
  if (auto err = release(*here, p)) {
    restore(p, epoch);
    return err;
  }
  ctx_.serving[p] = false;
  auto dir = fs::path{ctx_.cfg.handoff_dir} / ("out-" + std::to_string(p));
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir, ec);
  auto files = ctx_.data->export_partition(p, dir.string());
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
        "the map write that moves partition " + std::to_string(p) + " to silo '"
            + m.to
            + "' has an unknown outcome; the partition is served nowhere "
              "until the map tells");
    unsettled_[p] = std::move(pm);
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
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(sys::now()
                                                                    - started);
  say(log_level::info, "handed partition " + std::to_string(p) + " to silo '"
                           + m.to + "' at epoch " + std::to_string(epoch + 1)
                           + " (" + std::to_string(bytes) + " bytes in "
                           + std::to_string(files->size()) + " files, "
                           + std::to_string(took.count()) + " ms)");
  return caf::none;
}

void handoff_sender::run() {
  // Bounded by `stopped`; one move per pass, the next one at once.
  bool moved = false;
  while (moved ? !ctx_.is_stopped() : ctx_.nap(100ms)) {
    moved = false;
    if (!unsettled_.empty()) {
      // No new move while the map cannot tell how the last one ended.
      settle_unsettled();
      if (!unsettled_.empty()) {
        if (!ctx_.nap(400ms))
          return;
        continue;
      }
    }
    cluster_view view;
    bool allowed = false;
    {
      std::lock_guard guard{ctx_.mtx};
      view = ctx_.cached;
      allowed = ctx_.cfg.rebalance || ctx_.leaving;
    }
    if (!allowed || !ctx_.local.load())
      continue;
    auto moves = plan_moves(view.map, view.table);
    auto mine = std::find_if(moves.begin(), moves.end(), [&](auto& m) {
      return m.from == ctx_.cfg.self.silo_id;
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
      ctx_.refresh_soon();
    } else if (err) {
      say(log_level::warning,
          "handoff of partition " + std::to_string(mine->partition)
              + " to silo '" + mine->to + "' failed: " + describe(err));
      if (!ctx_.nap(1'000ms))
        return;
    }
  }
}

} // namespace granary::cluster

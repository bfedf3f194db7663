#include "cluster/agent/handoff_receiver.hpp"

#include <fstream>
#include <map>
#include <utility>

#include "cluster/agent/held_partitions.hpp"
#include "runtime/error.hpp"

namespace granary::cluster {

namespace fs = std::filesystem;

handoff_receiver::handoff_receiver(agent_context& ctx, refresh_fn refresh)
    : ctx_(ctx)
    , refresh_(std::move(refresh)) {}

void handoff_receiver::offer(const peer_info& from, HandoffChunk&& chunk) {
  bool full = false;
  {
    std::lock_guard guard{mtx_};
    full = incoming_.size() >= max_queued || stopped_;
    if (!full)
      incoming_.push_back(inbound{from, std::move(chunk)});
  }
  if (full)
    answer(from, chunk, make_error(errc::overloaded, "handoff queue full"));
  else
    cv_.notify_all();
}

void handoff_receiver::stop() {
  {
    std::lock_guard guard{mtx_};
    stopped_ = true;
  }
  cv_.notify_all();
}

void handoff_receiver::answer(const peer_info& to, const HandoffChunk& c,
                              const caf::error& err) {
  Frame f;
  auto& a = *f.mutable_handoff_ack();
  a.set_handoff_id(c.handoff_id());
  a.set_seq(c.seq());
  if (err) {
    a.set_error_code(static_cast<uint32_t>(code_of(err)));
    a.set_error(describe(err));
  }
  static_cast<void>(ctx_.net.send(peer_address{to.silo_id, to.address}, f));
}

caf::error handoff_receiver::check_sender(const peer_info& from, uint32_t p,
                                          uint64_t epoch) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    partition_assignment a;
    {
      std::lock_guard guard{ctx_.mtx};
      if (p < ctx_.cached.map.partitions.size())
        a = ctx_.cached.map.partitions[p];
    }
    auto* owner = a.primary();
    if (owner && *owner == from.silo_id && a.epoch + 1 == epoch)
      return ctx_.serving[p].load() ? make_error(
                 errc::invalid_argument,
                 "this silo serves partition " + std::to_string(p) + " already")
                                    : caf::none;
    if (attempt == 0)
      static_cast<void>(refresh_());
  }
  return make_error(errc::not_owner,
                    "silo '" + from.silo_id + "' does not own partition "
                        + std::to_string(p) + " at epoch "
                        + std::to_string(epoch - 1) + " in this silo's map");
}

caf::error handoff_receiver::receive(transfer& t, const peer_info& from,
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
  if (auto err = ctx_.data->import_partition(t.partition, t.files))
    return err;
  if (auto err = put_held(*ctx_.data, t.partition, t.epoch, true))
    return err;
  say(log_level::info, "received partition " + std::to_string(t.partition)
                           + " from silo '" + from.silo_id + "'");
  return caf::none;
}

void handoff_receiver::run() {
  std::map<uint32_t, transfer> transfers;
  // The last finished transfer per partition (id, last seq), to answer a
  // repeat of its last chunk whose answer was lost.
  std::map<uint32_t, std::pair<uint64_t, uint64_t>> finished;
  std::error_code ec;
  for (;;) {
    inbound in;
    {
      std::unique_lock guard{mtx_};
      cv_.wait(guard, [&] { return stopped_ || !incoming_.empty(); });
      if (stopped_)
        break;
      in = std::move(incoming_.front());
      incoming_.pop_front();
    }
    auto& c = in.chunk;
    auto p = c.partition();
    if (p >= ctx_.cfg.partitions) {
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
      t.dir = fs::path{ctx_.cfg.handoff_dir} / ("in-" + std::to_string(p));
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
      answer(in.from, c,
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

} // namespace granary::cluster

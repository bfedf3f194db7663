#include "cluster/transport/faulty_transport.hpp"

#include <condition_variable>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>
#include <utility>

#include "cluster.pb.h"
#include "runtime/error.hpp"
#include "runtime/sys.hpp"

namespace granary::cluster {

namespace {

using steady = std::chrono::steady_clock;

/// A frame waiting in the decorator.
struct held_frame {
  peer_address to;
  Frame frame;
};

/// Orders held frames by release time, then by arrival.
using held_key = std::pair<steady::time_point, uint64_t>;

} // namespace

class faulty_transport::impl {
public:
  impl(std::shared_ptr<transport> inner, fault_config config)
      : inner(std::move(inner))
      , cfg(config)
      , rng(config.seed) {}

  bool roll(double rate) {
    if (rate <= 0)
      return false;
    return std::uniform_real_distribution<double>{0, 1}(rng) < rate;
  }

  caf::error send(const peer_address& to, const Frame& frame);
  caf::error send_one(const peer_address& to, const Frame& frame);
  void release(std::map<held_key, held_frame>::iterator i);
  void run();
  void stop();

  std::shared_ptr<transport> inner;
  fault_config cfg;

  sys::mutex mtx;
  sys::condition_variable cv;
  std::mt19937_64 rng;
  bool running = false;
  bool stopped = false;
  uint64_t seq = 0;
  std::map<held_key, held_frame> held;
  // Per peer: the frame held back for reordering, if any.
  std::unordered_map<std::string, held_key> swap_slot;
  fault_stats counts;
  sys::thread timer;
};

caf::error faulty_transport::impl::send(const peer_address& to,
                                        const Frame& frame) {
  std::lock_guard guard{mtx};
  if (stopped)
    return make_error(errc::silo_stopped, "faulty transport: stopped");
  if (roll(cfg.drop_rate)) {
    ++counts.dropped;
    return {};
  }
  auto copies = 1;
  if (roll(cfg.duplicate_rate)) {
    ++counts.duplicated;
    copies = 2;
  }
  caf::error result;
  for (auto i = 0; i < copies; ++i)
    if (auto err = send_one(to, frame); err && !result)
      result = std::move(err);
  return result;
}

caf::error faulty_transport::impl::send_one(const peer_address& to,
                                            const Frame& frame) {
  auto room = held.size() < cfg.max_held;
  auto now = sys::now();
  if (room && roll(cfg.delay_rate)) {
    ++counts.delayed;
    std::uniform_int_distribution<int64_t> dist{0, cfg.max_delay.count()};
    auto due = now + std::chrono::milliseconds{dist(rng)};
    held.emplace(held_key{due, seq++}, held_frame{to, frame});
    cv.notify_one();
    return {};
  }
  if (room && !swap_slot.contains(to.silo_id) && roll(cfg.reorder_rate)) {
    ++counts.reordered;
    held_key key{now + cfg.max_delay, seq++};
    held.emplace(key, held_frame{to, frame});
    swap_slot.emplace(to.silo_id, key);
    cv.notify_one();
    return {};
  }
  auto err = inner->send(to, frame);
  // The held frame swaps places with this one.
  if (auto slot = swap_slot.find(to.silo_id); slot != swap_slot.end()) {
    auto i = held.find(slot->second);
    if (i != held.end())
      release(i);
  }
  return err;
}

void faulty_transport::impl::release(
    std::map<held_key, held_frame>::iterator i) {
  if (auto slot = swap_slot.find(i->second.to.silo_id);
      slot != swap_slot.end() && slot->second == i->first)
    swap_slot.erase(slot);
  if (inner->send(i->second.to, i->second.frame))
    ++counts.release_errors;
  held.erase(i);
}

void faulty_transport::impl::run() {
  std::unique_lock guard{mtx};
  // Ends with stop(); each round releases what is due or sleeps until the
  // next due time.
  while (!stopped) {
    if (held.empty()) {
      cv.wait(guard);
      continue;
    }
    auto first = held.begin();
    // A copy: `send` may release (erase) this frame while we wait.
    auto due = first->first.first;
    if (due > sys::now()) {
      cv.wait_until(guard, due);
      continue;
    }
    release(first);
  }
}

void faulty_transport::impl::stop() {
  {
    std::lock_guard guard{mtx};
    if (stopped)
      return;
    stopped = true;
    held.clear();
    swap_slot.clear();
    cv.notify_all();
  }
  if (timer.joinable())
    timer.join();
  inner->stop();
}

faulty_transport::faulty_transport(std::shared_ptr<transport> inner,
                                   fault_config config)
    : impl_(std::make_unique<impl>(std::move(inner), config)) {}

faulty_transport::~faulty_transport() {
  stop();
}

void faulty_transport::set_handler(frame_handler handler) {
  impl_->inner->set_handler(std::move(handler));
}

caf::expected<uint16_t> faulty_transport::start(const endpoint& listen) {
  {
    std::lock_guard guard{impl_->mtx};
    if (impl_->stopped)
      return make_error(errc::silo_stopped, "faulty transport: stopped");
    if (impl_->running)
      return make_error(errc::invalid_argument,
                        "faulty transport: already started");
  }
  auto port = impl_->inner->start(listen);
  if (!port)
    return port;
  std::lock_guard guard{impl_->mtx};
  impl_->running = true;
  impl_->timer = sys::thread{"fault-timer", [this] { impl_->run(); }};
  return port;
}

caf::error faulty_transport::send(const peer_address& to, const Frame& frame) {
  return impl_->send(to, frame);
}

void faulty_transport::stop() {
  impl_->stop();
}

transport_stats faulty_transport::stats() const {
  return impl_->inner->stats();
}

fault_stats faulty_transport::faults() const {
  std::lock_guard guard{impl_->mtx};
  return impl_->counts;
}

} // namespace granary::cluster

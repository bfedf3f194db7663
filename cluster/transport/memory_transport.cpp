#include "cluster/transport/memory_transport.hpp"

#include <algorithm>
#include <condition_variable>
#include <map>
#include <thread>

#include "cluster.pb.h"
#include "runtime/assert.hpp"
#include "runtime/error.hpp"
#include "runtime/sys.hpp"

namespace granary::cluster {

/// One silo's end of a `memory_network`.
class memory_transport final : public transport {
public:
  memory_transport(std::shared_ptr<memory_network> net, std::string silo_id,
                   uint64_t incarnation)
      : net_(std::move(net)) {
    self_.silo_id = std::move(silo_id);
    self_.incarnation = incarnation;
  }

  ~memory_transport() override {
    stop();
  }

  void set_handler(frame_handler handler) override {
    handler_ = std::move(handler);
  }

  caf::expected<uint16_t> start(const endpoint& listen) override {
    std::lock_guard guard{mtx_};
    if (started_ || stopped_)
      return make_error(errc::invalid_argument,
                        "memory transport: start called twice");
    started_ = true;
    self_.address = listen;
    self_.address.port = net_->listen(this);
    worker_ = sys::thread{"memory-network", [this] { run(); }};
    return self_.address.port;
  }

  caf::error send(const peer_address& to, const Frame& frame) override {
    {
      std::lock_guard guard{mtx_};
      if (stopped_ || !started_)
        return make_error(errc::silo_stopped, "memory transport stopped");
    }
    auto err = net_->deliver(to, self_, frame);
    std::lock_guard guard{mtx_};
    if (!err)
      ++stats_.frames_sent;
    else if (code_of(err) == errc::overloaded)
      ++stats_.overloaded;
    return err;
  }

  void stop() override {
    {
      std::lock_guard guard{mtx_};
      if (stopped_)
        return;
      stopped_ = true;
    }
    net_->unlisten(this);
    cv_.notify_all();
    if (worker_.joinable())
      worker_.join();
  }

  transport_stats stats() const override {
    std::lock_guard guard{mtx_};
    return stats_;
  }

  /// The silo this transport belongs to.
  const std::string& silo_id() const {
    return self_.silo_id;
  }

  /// Queues a frame from `from`, to be seen after `delay`; `overloaded`
  /// when the queue is full.
  caf::error enqueue(const peer_info& from, const Frame& frame,
                     std::chrono::nanoseconds delay) {
    std::lock_guard guard{mtx_};
    if (stopped_)
      return caf::none; // Lost, as on a connection that just died.
    if (queue_.size() >= memory_network::max_queued_frames) {
      return make_error(errc::overloaded, "memory transport: " + self_.silo_id
                                              + " has a full queue");
    }
    queue_.emplace(std::pair{sys::now() + delay, next_seq_++},
                   item{from, frame});
    cv_.notify_one();
    return caf::none;
  }

private:
  struct item {
    peer_info from;
    Frame frame;
  };

  void run() {
    std::unique_lock guard{mtx_};
    // Ends with stop(); each pass hands over one frame or waits.
    for (;;) {
      if (stopped_)
        return;
      if (queue_.empty()) {
        cv_.wait(guard);
        continue;
      }
      auto due = queue_.begin()->first.first;
      if (due > sys::now()) {
        cv_.wait_until(guard, due);
        continue;
      }
      auto next = std::move(queue_.begin()->second);
      queue_.erase(queue_.begin());
      ++stats_.frames_received;
      guard.unlock();
      if (handler_)
        handler_(next.from, std::move(next.frame));
      guard.lock();
    }
  }

  std::shared_ptr<memory_network> net_;
  peer_info self_;
  frame_handler handler_;
  mutable sys::mutex mtx_;
  sys::condition_variable cv_;
  // By due time, then arrival.
  std::map<std::pair<sys::time_point, uint64_t>, item> queue_;
  uint64_t next_seq_ = 0;
  bool started_ = false;
  bool stopped_ = false;
  transport_stats stats_;
  sys::thread worker_;
};

std::shared_ptr<memory_network> memory_network::make() {
  return std::shared_ptr<memory_network>{new memory_network};
}

std::shared_ptr<transport> memory_network::attach(std::string silo_id,
                                                  uint64_t incarnation) {
  return std::make_shared<memory_transport>(shared_from_this(),
                                            std::move(silo_id), incarnation);
}

uint16_t memory_network::listen(memory_transport* t) {
  std::lock_guard guard{mtx_};
  GRANARY_ASSERT(listening_.size() < 65'000, "ports left on the network");
  while (next_port_ == 0 || listening_.count(next_port_) > 0)
    ++next_port_;
  auto port = next_port_++;
  listening_[port] = t;
  return port;
}

void memory_network::unlisten(memory_transport* t) {
  std::lock_guard guard{mtx_};
  for (auto i = listening_.begin(); i != listening_.end(); ++i)
    if (i->second == t) {
      listening_.erase(i);
      return;
    }
}

caf::error memory_network::deliver(const peer_address& to,
                                   const peer_info& from, const Frame& frame) {
  // Under the network's lock, so that the receiver cannot stop and be
  // destroyed between the lookup and the enqueue.
  std::lock_guard guard{mtx_};
  auto i = listening_.find(to.address.port);
  // Nobody listens there, or another silo does (a handshake would refuse
  // it): the frame is lost.
  if (i == listening_.end() || i->second->silo_id() != to.silo_id)
    return caf::none;
  link_fate fate;
  if (policy_)
    fate = policy_(from.silo_id, to.silo_id);
  if (fate.drop)
    return caf::none;
  caf::error result;
  for (int c = 0; c < std::clamp(fate.copies, 1, 2); ++c)
    if (auto err = i->second->enqueue(from, frame, fate.delay[c]); !result)
      result = std::move(err);
  return result;
}

void memory_network::set_link_policy(link_policy policy) {
  std::lock_guard guard{mtx_};
  policy_ = std::move(policy);
}

} // namespace granary::cluster

#include "cluster/routing/transport_router.hpp"

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include "cluster.pb.h"
#include "granary.pb.h"
#include "runtime/error.hpp"
#include "runtime/log.hpp"
#include "runtime/sys.hpp"

namespace granary::cluster {

namespace {

using clock_type = std::chrono::steady_clock;

// Builds a message of protobuf type `type` from `bytes`; any message type
// linked into this process works.
caf::expected<message_ptr> decode(const std::string& type,
                                  const std::string& bytes) {
  auto* desc = google::protobuf::DescriptorPool::generated_pool()
                   ->FindMessageTypeByName(type);
  if (!desc)
    return make_error(errc::unhandled_message,
                      "message type '" + type + "' is unknown to this silo");
  auto* proto
      = google::protobuf::MessageFactory::generated_factory()->GetPrototype(
          desc);
  std::shared_ptr<google::protobuf::Message> msg{proto->New()};
  if (!msg->ParseFromString(bytes))
    return make_error(errc::malformed_message,
                      "payload does not parse as " + type);
  return message_ptr{std::move(msg)};
}

void set_error(const caf::error& err, uint32_t& code, std::string& text) {
  auto c = code_of(err);
  code = static_cast<uint32_t>(c == errc::unspecified ? errc::handler_failed
                                                      : c);
  text = describe(err);
}

} // namespace

struct transport_router::impl {
  struct pending_ack {
    ack_fn ack;
    clock_type::time_point deadline;
  };

  struct pending_call {
    reply_fn reply;
    clock_type::time_point deadline;
    // For the error when no reply comes: which partition, on which silo.
    uint32_t partition = 0;
  };

  std::atomic<silo*> local{nullptr};
  transport& net;
  peer_address self;
  uint32_t partition_count = 0;
  // Guards `routes`; `serving` mirrors "routed here and available" for the
  // hot path of `owns`.
  mutable sys::mutex routes_mtx;
  std::vector<route> routes;
  std::unique_ptr<std::atomic<bool>[]> serving;
  std::function<void()> stale_fn;
  frame_handler other_fn;
  router_config cfg;
  sys::mutex mtx;
  sys::condition_variable cv;
  std::map<std::string, pending_ack> acks;
  std::map<uint64_t, pending_call> calls;
  uint64_t next_id = 0;
  bool stopped = false;
  sys::thread expiry;

  impl(transport& t, peer_address me, uint32_t count, router_config c)
      : net(t)
      , self(std::move(me))
      , partition_count(count)
      , routes(count)
      , serving(std::make_unique<std::atomic<bool>[]>(count))
      , cfg(c) {
    for (auto& r : routes) {
      r.available = false;
      r.why = "no owner is known yet";
    }
    expiry = sys::thread{"router-expiry", [this] { expire_loop(); }};
  }

  route get(uint32_t p) const {
    std::lock_guard guard{routes_mtx};
    if (p >= routes.size())
      return route{{}, 0, false, "no such partition"};
    return routes[p];
  }

  // The epoch at which this silo serves `p`, or nullopt when it does not.
  std::optional<uint64_t> served_epoch(uint32_t p) const {
    std::lock_guard guard{routes_mtx};
    if (p >= routes.size() || !serving[p].load(std::memory_order_acquire))
      return std::nullopt;
    return routes[p].epoch;
  }

  // Checks that this silo serves `p` at `epoch` (0 from an unfenced sender).
  caf::error check_owner(uint32_t p, uint64_t epoch) const {
    auto mine = served_epoch(p);
    if (!mine)
      return make_error(errc::not_owner, "silo '" + self.silo_id
                                             + "' does not serve partition "
                                             + std::to_string(p));
    if (epoch != 0 && *mine != 0 && epoch != *mine)
      return make_error(errc::not_owner, "silo '" + self.silo_id
                                             + "' serves partition "
                                             + std::to_string(p) + " at epoch "
                                             + std::to_string(*mine) + ", not "
                                             + std::to_string(epoch));
    return caf::none;
  }

  void stale() {
    if (stale_fn)
      stale_fn();
  }

  // Why partition `p` cannot be reached, as an error. A partition this
  // silo is handing off is only briefly away: callers retry (`not_owner`).
  caf::error unavailable(uint32_t p, const route& r) const {
    return make_error(
        r.owner.silo_id == self.silo_id ? errc::not_owner
                                        : errc::partition_unavailable,
        "partition " + std::to_string(p) + " is unavailable"
            + (r.owner.silo_id.empty() ? std::string{}
                                       : " (silo '" + r.owner.silo_id + "')")
            + ": " + r.why);
  }

  // Fails answers that did not come in time; bounded by the pending maps.
  void expire_loop() {
    std::unique_lock guard{mtx};
    while (!stopped) {
      cv.wait_for(guard, std::chrono::milliseconds{50});
      auto now = sys::now();
      std::vector<ack_fn> lost_acks;
      std::vector<std::pair<reply_fn, uint32_t>> lost_calls;
      for (auto i = acks.begin(); i != acks.end();) {
        if (i->second.deadline <= now || stopped) {
          lost_acks.push_back(std::move(i->second.ack));
          i = acks.erase(i);
        } else {
          ++i;
        }
      }
      for (auto i = calls.begin(); i != calls.end();) {
        if (i->second.deadline <= now || stopped) {
          lost_calls.emplace_back(std::move(i->second.reply),
                                  i->second.partition);
          i = calls.erase(i);
        } else {
          ++i;
        }
      }
      guard.unlock();
      auto why = stopped ? errc::silo_stopped : errc::timeout;
      for (auto& a : lost_acks)
        a(make_error(why, "no acknowledgement from the owning silo"), 0);
      for (auto& [r, p] : lost_calls)
        r(make_error(why == errc::timeout ? errc::partition_unavailable : why,
                     "partition " + std::to_string(p) + " (silo '"
                         + get(p).owner.silo_id
                         + "') is unavailable: no reply in time"));
      guard.lock();
    }
  }

  void on_frame(const peer_info& from, Frame&& f) {
    auto* here = local.load(std::memory_order_acquire);
    if (!here)
      return; // Not serving yet: the sender retries.
    peer_address back{from.silo_id, from.address};
    switch (f.body_case()) {
      case Frame::kEnvelopes: {
        auto& batch = *f.mutable_envelopes();
        for (int i = 0; i < batch.envelopes_size(); ++i) {
          auto env = std::make_shared<wire::Envelope>(
              std::move(*batch.mutable_envelopes(i)));
          auto key = env->ack_key();
          auto epoch = i < batch.epochs_size() ? batch.epochs(i) : 0;
          auto p = partition_of(
              grain_id{env->target().type(), env->target().key()},
              partition_count);
          auto done = [this, back, key](const caf::error& err) {
            Frame out;
            auto& a = *out.mutable_acks()->add_acks();
            a.set_outbox_key(key);
            if (err) {
              uint32_t code = 0;
              set_error(err, code, *a.mutable_error());
              a.set_error_code(code);
              a.set_retry_after_ms(code_of(err) == errc::overloaded ? 50 : 500);
            }
            if (auto send_err = net.send(back, out))
              log(log_level::warning, "acknowledgement to " + back.silo_id
                                          + " not sent: " + describe(send_err));
          };
          if (auto err = check_owner(p, epoch)) {
            done(err);
            continue;
          }
          // Not fresh: this silo cannot know whether the sender delivered
          // the message before, so it keeps a dedup record.
          here->deliver_remote(std::move(env), false, std::move(done));
        }
        break;
      }
      case Frame::kAcks:
        for (auto& a : f.acks().acks()) {
          ack_fn ack;
          {
            std::lock_guard guard{mtx};
            auto i = acks.find(a.outbox_key());
            if (i == acks.end())
              continue; // Expired or duplicate.
            ack = std::move(i->second.ack);
            acks.erase(i);
          }
          // Our route is stale: learn the new one; the outbox retries.
          if (a.error_code() == static_cast<uint32_t>(errc::not_owner))
            stale();
          if (a.error_code() == 0)
            ack(caf::none, 0);
          else
            ack(make_error(static_cast<errc>(a.error_code()), a.error()),
                a.retry_after_ms());
        }
        break;
      case Frame::kCall: {
        auto& c = f.call();
        auto id = c.call_id();
        auto answer = [this, back, id](caf::expected<message_ptr> res) {
          Frame out;
          auto& r = *out.mutable_call_reply();
          r.set_call_id(id);
          if (!res) {
            uint32_t code = 0;
            set_error(res.error(), code, *r.mutable_error());
            r.set_error_code(code);
          } else if (*res) {
            r.set_payload_type((*res)->GetDescriptor()->full_name());
            (*res)->SerializeToString(r.mutable_payload());
          }
          if (auto err = net.send(back, out))
            log(log_level::warning, "call reply to " + back.silo_id
                                        + " not sent: " + describe(err));
        };
        grain_id target{c.target().type(), c.target().key()};
        if (auto err
            = check_owner(partition_of(target, partition_count), c.epoch())) {
          answer(std::move(err));
          break;
        }
        auto msg = decode(c.payload_type(), c.payload());
        if (!msg) {
          answer(std::move(msg.error()));
          break;
        }
        here->call_async(std::move(target), std::move(*msg), std::move(answer));
        break;
      }
      case Frame::kCallReply: {
        auto& r = f.call_reply();
        reply_fn reply;
        {
          std::lock_guard guard{mtx};
          auto i = calls.find(r.call_id());
          if (i == calls.end())
            break; // Timed out already.
          reply = std::move(i->second.reply);
          calls.erase(i);
        }
        if (r.error_code() != 0) {
          if (r.error_code() == static_cast<uint32_t>(errc::not_owner))
            stale();
          reply(make_error(static_cast<errc>(r.error_code()), r.error()));
          break;
        }
        if (r.payload_type().empty()) {
          reply(message_ptr{});
          break;
        }
        reply(decode(r.payload_type(), r.payload()));
        break;
      }
      default:
        if (other_fn)
          other_fn(from, std::move(f));
        break;
    }
  }
};

transport_router::transport_router(transport& net, peer_address self,
                                   uint32_t partitions, router_config cfg)
    : impl_(std::make_unique<impl>(net, std::move(self), partitions, cfg)) {}

transport_router::transport_router(transport& net, peer_address self,
                                   std::vector<peer_address> owners,
                                   router_config cfg)
    : transport_router(net, std::move(self),
                       static_cast<uint32_t>(owners.size()), cfg) {
  for (uint32_t p = 0; p < owners.size(); ++p)
    set_route(p, route{std::move(owners[p]), 0, true, {}});
}

void transport_router::set_route(uint32_t p, route r) {
  auto& d = *impl_;
  std::unique_lock guard{d.routes_mtx};
  if (p >= d.routes.size())
    return;
  bool here = r.available && r.owner.silo_id == d.self.silo_id;
  auto& old = d.routes[p];
  bool changed = old.available != r.available || old.epoch != r.epoch
                 || old.owner.silo_id != r.owner.silo_id
                 || old.owner.address.host != r.owner.address.host
                 || old.owner.address.port != r.owner.address.port;
  d.routes[p] = std::move(r);
  d.serving[p].store(here, std::memory_order_release);
  guard.unlock();
  // Messages parked in outboxes while the partition was unavailable or
  // moving go now, instead of at their backstop.
  if (changed)
    if (auto* local = d.local.load(std::memory_order_acquire))
      local->route_changed(p);
}

route transport_router::route_of(uint32_t p) const {
  return impl_->get(p);
}

const peer_address& transport_router::self() const {
  return impl_->self;
}

void transport_router::on_stale_route(std::function<void()> fn) {
  impl_->stale_fn = std::move(fn);
}

void transport_router::on_other_frame(frame_handler fn) {
  impl_->other_fn = std::move(fn);
}

void transport_router::attach(silo& local) {
  impl_->local.store(&local, std::memory_order_release);
}

transport_router::~transport_router() {
  stop();
}

frame_handler transport_router::handler() {
  return [this](const peer_info& from, Frame&& f) {
    impl_->on_frame(from, std::move(f));
  };
}

bool transport_router::owns(uint32_t p) const {
  return p >= impl_->partition_count
         || impl_->serving[p].load(std::memory_order_acquire);
}

void transport_router::deliver(uint32_t p,
                               std::shared_ptr<const wire::Envelope> env,
                               ack_fn ack) {
  auto& d = *impl_;
  auto r = d.get(p);
  if (!r.available || r.owner.silo_id.empty())
    return ack(d.unavailable(p, r), 500);
  Frame f;
  auto& e = *f.mutable_envelopes()->add_envelopes();
  e = *env;
  f.mutable_envelopes()->add_epochs(r.epoch);
  {
    std::lock_guard guard{d.mtx};
    if (d.stopped)
      return ack(make_error(errc::silo_stopped, "the router is stopped"), 0);
    if (d.acks.size() >= d.cfg.max_pending_acks)
      return ack(make_error(errc::overloaded,
                            "too many messages wait for acknowledgements"),
                 100);
    // Client sends have no outbox key: the router names them.
    if (e.ack_key().empty())
      e.set_ack_key("c:" + d.self.silo_id + ":" + std::to_string(++d.next_id));
    // A redelivery while an earlier copy is unanswered takes its place
    // (without answering the earlier one, which would only provoke
    // another redelivery at once).
    d.acks[e.ack_key()]
        = impl::pending_ack{std::move(ack), sys::now() + d.cfg.ack_timeout};
  }
  auto key = e.ack_key();
  if (auto err = d.net.send(r.owner, f)) {
    ack_fn failed;
    {
      std::lock_guard guard{d.mtx};
      auto i = d.acks.find(key);
      if (i == d.acks.end())
        return;
      failed = std::move(i->second.ack);
      d.acks.erase(i);
    }
    failed(err, code_of(err) == errc::overloaded ? 50 : 200);
  }
}

void transport_router::call(uint32_t p, const grain_id& target, message_ptr msg,
                            std::chrono::milliseconds timeout, reply_fn reply) {
  auto& d = *impl_;
  if (!msg)
    return reply(make_error(errc::invalid_argument, "call: null message"));
  auto r = d.get(p);
  if (!r.available || r.owner.silo_id.empty())
    return reply(d.unavailable(p, r));
  Frame f;
  auto& c = *f.mutable_call();
  c.mutable_target()->set_type(target.type);
  c.mutable_target()->set_key(target.key);
  c.set_payload_type(msg->GetDescriptor()->full_name());
  msg->SerializeToString(c.mutable_payload());
  c.set_timeout_ms(static_cast<uint32_t>(timeout.count()));
  c.set_epoch(r.epoch);
  uint64_t id;
  {
    std::lock_guard guard{d.mtx};
    if (d.stopped)
      return reply(make_error(errc::silo_stopped, "the router is stopped"));
    if (d.calls.size() >= d.cfg.max_pending_calls)
      return reply(make_error(errc::overloaded,
                              "too many calls wait for replies; retry after "
                              "100 ms"));
    id = ++d.next_id;
    d.calls[id] = impl::pending_call{std::move(reply), sys::now() + timeout, p};
  }
  c.set_call_id(id);
  if (auto err = d.net.send(r.owner, f)) {
    reply_fn failed;
    {
      std::lock_guard guard{d.mtx};
      auto i = d.calls.find(id);
      if (i == d.calls.end())
        return;
      failed = std::move(i->second.reply);
      d.calls.erase(i);
    }
    // The owner is unreachable: say so, with the partition.
    failed(make_error(code_of(err) == errc::overloaded
                          ? errc::overloaded
                          : errc::partition_unavailable,
                      "partition " + std::to_string(p) + " is unavailable ("
                          + r.owner.silo_id + "): " + describe(err)));
  }
}

void transport_router::stop() {
  auto& d = *impl_;
  {
    std::lock_guard guard{d.mtx};
    if (d.stopped && !d.expiry.joinable())
      return;
    d.stopped = true;
  }
  d.cv.notify_all();
  if (d.expiry.joinable())
    d.expiry.join();
  // The loop's last pass failed everything pending.
  std::map<std::string, impl::pending_ack> acks;
  std::map<uint64_t, impl::pending_call> calls;
  {
    std::lock_guard guard{d.mtx};
    acks.swap(d.acks);
    calls.swap(d.calls);
  }
  for (auto& [k, a] : acks)
    a.ack(make_error(errc::silo_stopped, "the router stopped"), 0);
  for (auto& [k, c] : calls)
    c.reply(make_error(errc::silo_stopped, "the router stopped"));
}

} // namespace granary::cluster

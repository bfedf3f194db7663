#include "cluster/transport_router.hpp"

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include "cluster.pb.h"
#include "granary.pb.h"
#include "runtime/error.hpp"
#include "runtime/log.hpp"

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
  std::vector<peer_address> owners;
  router_config cfg;
  std::mutex mtx;
  std::condition_variable cv;
  std::map<std::string, pending_ack> acks;
  std::map<uint64_t, pending_call> calls;
  uint64_t next_id = 0;
  bool stopped = false;
  std::thread expiry;

  impl(transport& t, peer_address me, std::vector<peer_address> own,
       router_config c)
      : net(t)
      , self(std::move(me))
      , owners(std::move(own))
      , cfg(c) {
    expiry = std::thread{[this] { expire_loop(); }};
  }

  // Fails answers that did not come in time; bounded by the pending maps.
  void expire_loop() {
    std::unique_lock guard{mtx};
    while (!stopped) {
      cv.wait_for(guard, std::chrono::milliseconds{50});
      auto now = clock_type::now();
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
        r(make_error(why, "partition " + std::to_string(p) + " (silo '"
                              + owners[p].silo_id
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
      case Frame::kEnvelopes:
        for (auto& e : *f.mutable_envelopes()->mutable_envelopes()) {
          auto env = std::make_shared<wire::Envelope>(std::move(e));
          auto key = env->ack_key();
          // Not fresh: this silo cannot know whether the sender delivered
          // the message before, so it keeps a dedup record.
          here->deliver_remote(
              std::move(env), false,
              [this, back, key = std::move(key)](const caf::error& err) {
                Frame out;
                auto& a = *out.mutable_acks()->add_acks();
                a.set_outbox_key(key);
                if (err) {
                  uint32_t code = 0;
                  set_error(err, code, *a.mutable_error());
                  a.set_error_code(code);
                  a.set_retry_after_ms(code_of(err) == errc::overloaded ? 50
                                                                        : 500);
                }
                if (auto send_err = net.send(back, out))
                  log(log_level::warning,
                      "acknowledgement to " + back.silo_id
                          + " not sent: " + describe(send_err));
              });
        }
        break;
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
        auto msg = decode(c.payload_type(), c.payload());
        if (!msg) {
          answer(std::move(msg.error()));
          break;
        }
        here->call_async(grain_id{c.target().type(), c.target().key()},
                         std::move(*msg), std::move(answer));
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
        break; // Pings and handshakes are the transport's business.
    }
  }
};

transport_router::transport_router(transport& net, peer_address self,
                                   std::vector<peer_address> owners,
                                   router_config cfg)
    : impl_(
        std::make_unique<impl>(net, std::move(self), std::move(owners), cfg)) {}

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
  return p >= impl_->owners.size()
         || impl_->owners[p].silo_id == impl_->self.silo_id;
}

void transport_router::deliver(uint32_t p,
                               std::shared_ptr<const wire::Envelope> env,
                               ack_fn ack) {
  auto& d = *impl_;
  Frame f;
  auto& e = *f.mutable_envelopes()->add_envelopes();
  e = *env;
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
    d.acks[e.ack_key()] = impl::pending_ack{
        std::move(ack), clock_type::now() + d.cfg.ack_timeout};
  }
  auto key = e.ack_key();
  if (auto err = d.net.send(d.owners[p], f)) {
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
  Frame f;
  auto& c = *f.mutable_call();
  c.mutable_target()->set_type(target.type);
  c.mutable_target()->set_key(target.key);
  c.set_payload_type(msg->GetDescriptor()->full_name());
  msg->SerializeToString(c.mutable_payload());
  c.set_timeout_ms(static_cast<uint32_t>(timeout.count()));
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
    d.calls[id]
        = impl::pending_call{std::move(reply), clock_type::now() + timeout, p};
  }
  c.set_call_id(id);
  if (auto err = d.net.send(d.owners[p], f)) {
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
    failed(make_error(code_of(err) == errc::overloaded ? errc::overloaded
                                                       : errc::silo_stopped,
                      "partition " + std::to_string(p) + " is unavailable ("
                          + d.owners[p].silo_id + "): " + describe(err)));
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

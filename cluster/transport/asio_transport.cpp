#include "cluster/transport/asio_transport.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <sys/socket.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>

#include "cluster.pb.h"
#include "cluster/transport/frame_codec.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"

namespace granary::cluster {

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using steady = std::chrono::steady_clock;
using strand_type = asio::strand<asio::io_context::executor_type>;
using socket_type = asio::basic_stream_socket<tcp, strand_type>;
using acceptor_type = asio::basic_socket_acceptor<tcp, strand_type>;
using resolver_type = asio::ip::basic_resolver<tcp, strand_type>;
using timer_type = asio::basic_waitable_timer<steady, asio::wait_traits<steady>,
                                              strand_type>;

constexpr uint32_t protocol_version = 1;
constexpr int64_t no_deadline = INT64_MAX;
// Outbound buffers above this capacity are released after use, so that one
// burst does not pin memory for the lifetime of the connection.
constexpr size_t max_retained_buffer = 1024 * 1024;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             steady::now().time_since_epoch())
      .count();
}

int64_t after(std::chrono::milliseconds d) {
  return now_ns() + std::chrono::nanoseconds(d).count();
}

void warn(const std::string& line) {
  log(log_level::warning, "cluster transport: " + line);
}

void note(log_level level, const std::string& line) {
  log(level, "cluster transport: " + line);
}

void bump(std::atomic<uint64_t>& counter, uint64_t n = 1) {
  counter.fetch_add(n, std::memory_order_relaxed);
}

const char* body_name(const Frame& f) {
  switch (f.body_case()) {
    case Frame::kHello:
      return "hello";
    case Frame::kHelloReply:
      return "hello_reply";
    case Frame::kEnvelopes:
      return "envelopes";
    case Frame::kAcks:
      return "acks";
    case Frame::kCall:
      return "call";
    case Frame::kCallReply:
      return "call_reply";
    case Frame::kPing:
      return "ping";
    case Frame::kPong:
      return "pong";
    case Frame::kMembership:
      return "membership";
    case Frame::kHandoffChunk:
      return "handoff_chunk";
    case Frame::kHandoffAck:
      return "handoff_ack";
    case Frame::BODY_NOT_SET:
      break;
  }
  return "empty";
}

std::string encode(const Frame& f, size_t max_frame_size) {
  std::string out;
  // Our own handshake frames are tiny; a failure here means a silo id or
  // cluster id beyond the frame size, which start() rejects.
  static_cast<void>(append_frame(f, max_frame_size, out));
  return out;
}

struct counters {
  std::atomic<uint64_t> frames_sent{0};
  std::atomic<uint64_t> writes{0};
  std::atomic<uint64_t> bytes_sent{0};
  std::atomic<uint64_t> frames_received{0};
  std::atomic<uint64_t> bytes_received{0};
  std::atomic<uint64_t> connects{0};
  std::atomic<uint64_t> connect_failures{0};
  std::atomic<uint64_t> disconnects{0};
  std::atomic<uint64_t> handshakes_refused{0};
  std::atomic<uint64_t> protocol_errors{0};
  std::atomic<uint64_t> timeouts{0};
  std::atomic<uint64_t> overloaded{0};
  std::atomic<uint64_t> frames_lost{0};
};

} // namespace

class asio_transport::impl {
public:
  class outbound;
  class inbound;

  explicit impl(asio_transport_config config)
      : cfg(std::move(config))
      , io(static_cast<int>(std::max<size_t>(cfg.io_threads, 1)))
      , accept_strand(asio::make_strand(io))
      , acceptor(accept_strand)
      , accept_retry(accept_strand)
      , sweep_timer(accept_strand)
      , rng(cfg.jitter_seed != 0 ? cfg.jitter_seed : std::random_device{}()) {}

  caf::error validate() const;
  caf::expected<uint16_t> start(const endpoint& listen);
  caf::error send(const peer_address& to, const Frame& frame);
  void stop();
  transport_stats stats() const;

  void accept();
  void arm_sweep();
  void sweep();
  void deliver(const peer_info& from, Frame&& frame);
  void remove(inbound* conn);
  std::chrono::milliseconds backoff(unsigned failures);

  // Declared first so that it is destroyed last: sockets and timers below
  // must go before their io_context.
  asio_transport_config cfg;
  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>>
      work;
  strand_type accept_strand;
  acceptor_type acceptor;
  timer_type accept_retry;
  timer_type sweep_timer;
  frame_handler handler;
  std::atomic<bool> started{false};
  std::atomic<bool> stopped{false};
  Hello hello;
  counters ctr;

  std::mutex mtx;
  std::unordered_map<std::string, std::shared_ptr<outbound>> peers;
  std::unordered_map<inbound*, std::shared_ptr<inbound>> inbounds;

  std::mutex rng_mtx;
  std::mt19937_64 rng;

  std::vector<std::thread> threads;
  std::mutex exit_mtx;
  std::condition_variable exit_cv;
  size_t exited = 0;
};

// -- outbound connections ----------------------------------------------------

/// The connection to one peer silo plus its send queue, which outlives
/// connection attempts. Socket work runs on `strand`; the queue and the
/// connection state are shared with `send` under `mtx`.
class asio_transport::impl::outbound
    : public std::enable_shared_from_this<outbound> {
public:
  enum class state_type { idle, connecting, ready, backoff };

  outbound(impl& owner, const peer_address& to)
      : owner(owner)
      , silo_id(to.silo_id)
      , strand(asio::make_strand(owner.io))
      , sock(strand)
      , resolver(strand)
      , retry_timer(strand)
      , decoder(owner.cfg.max_frame_size)
      , address(to.address)
      , requested(to.address) {}

  caf::error enqueue(const peer_address& dest, const Frame& frame);
  void connect();
  void read(uint64_t gen);
  void handle(uint64_t gen, Frame& frame);
  void flush();
  void write(std::unique_lock<std::mutex>& guard);
  void written(uint64_t gen, const error_code& ec, size_t n);
  void fail(uint64_t gen, const std::string& reason, caf::error refusal = {});
  void on_deadline();
  void shutdown();
  std::string name() const;

  impl& owner;
  const std::string silo_id;
  strand_type strand;
  socket_type sock;
  resolver_type resolver;
  timer_type retry_timer;
  std::atomic<int64_t> deadline{no_deadline};

  // Strand only.
  frame_decoder decoder;
  Frame rframe;
  endpoint address;
  uint64_t generation = 0;
  bool greeted = false;
  peer_info remote;
  std::string hello_buf;
  std::string inflight;
  size_t inflight_frames = 0;

  // Guarded by mtx.
  std::mutex mtx;
  endpoint requested;
  state_type state = state_type::idle;
  std::string pending;
  size_t pending_frames = 0;
  bool writing = false;
  // When `send` last wrote from the caller's thread, in steady ns.
  int64_t last_direct = 0;
  bool flush_posted = false;
  // Bytes at the head of `pending` that finish a frame begun by a direct
  // write; they must never start a new connection.
  size_t partial_head = 0;
  caf::error refused;
  unsigned failures = 0;
};

std::string asio_transport::impl::outbound::name() const {
  return "silo '" + silo_id + "' at " + address.to_string();
}

caf::error asio_transport::impl::outbound::enqueue(const peer_address& dest,
                                                   const Frame& frame) {
  std::unique_lock guard{mtx};
  if (owner.stopped)
    return make_error(errc::silo_stopped, "the cluster transport is stopped");
  if (requested.host != dest.address.host
      || requested.port != dest.address.port)
    requested = dest.address; // The silo moved; used on the next connect.
  if (refused)
    return refused;
  auto old_size = pending.size();
  if (auto err = append_frame(frame, owner.cfg.max_frame_size, pending))
    return err;
  if (pending_frames >= owner.cfg.max_queued_frames
      || pending.size() > owner.cfg.max_queued_bytes) {
    pending.resize(old_size);
    bump(owner.ctr.overloaded);
    auto retry_ms = state == state_type::ready
                        ? int64_t{10}
                        : int64_t{owner.cfg.reconnect_max.count()};
    return make_error(
        errc::overloaded,
        "send queue to silo '" + silo_id + "' at " + dest.address.to_string()
            + " is full (" + std::to_string(pending_frames) + " frames, "
            + std::to_string(old_size) + " bytes"
            + (state == state_type::ready ? "" : ", peer unreachable")
            + "); retry after " + std::to_string(retry_ms) + " ms");
  }
  ++pending_frames;
  auto now = now_ns();
  if (state == state_type::ready && !writing && !flush_posted
      && pending_frames == 1
      && now - last_direct
             >= std::chrono::nanoseconds(owner.cfg.batch_window).count()) {
    // Idle connection: write from the caller's thread and save the hop to
    // the io thread on the latency path. The socket is only closed under
    // `mtx`, so the descriptor stays ours during the call.
    last_direct = now;
    auto n = ::send(sock.native_handle(), pending.data(), pending.size(),
                    MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      bump(owner.ctr.writes);
      bump(owner.ctr.bytes_sent, static_cast<uint64_t>(n));
      if (static_cast<size_t>(n) == pending.size()) {
        bump(owner.ctr.frames_sent);
        pending.clear();
        pending_frames = 0;
      } else {
        // The rest goes out from the strand, as a frame in the queue.
        pending.erase(0, static_cast<size_t>(n));
        partial_head = pending.size();
      }
      deadline = after(owner.cfg.idle_timeout / 2);
      if (pending.empty())
        return {};
    }
    // On a short write, EAGAIN or an error the frame stays queued; the
    // strand's write finishes it or discovers the failure.
  }
  if (state == state_type::ready) {
    if (!writing && !flush_posted) {
      flush_posted = true;
      asio::post(strand, [self = shared_from_this()] { self->flush(); });
    }
  } else if (state == state_type::idle) {
    state = state_type::connecting;
    asio::post(strand, [self = shared_from_this()] { self->connect(); });
  }
  return {};
}

void asio_transport::impl::outbound::connect() {
  if (owner.stopped)
    return;
  auto gen = ++generation;
  greeted = false;
  decoder.reset();
  deadline = after(owner.cfg.handshake_timeout);
  {
    std::lock_guard guard{mtx};
    address = requested;
  }
  auto dest = address;
  auto on_connect = [this, self = shared_from_this(), gen](const error_code& ec,
                                                           auto&&...) {
    if (gen != generation)
      return;
    if (ec) {
      fail(gen, "cannot connect to " + name() + ": " + ec.message());
      return;
    }
    error_code ignored;
    sock.set_option(tcp::no_delay(true), ignored);
    Frame f;
    *f.mutable_hello() = owner.hello;
    f.mutable_hello()->set_target_silo_id(silo_id);
    hello_buf = encode(f, owner.cfg.max_frame_size);
    asio::async_write(sock, asio::buffer(hello_buf),
                      [this, self, gen](const error_code& ec, size_t) {
                        if (ec && gen == generation)
                          fail(gen, "cannot send the handshake to " + name()
                                        + ": " + ec.message());
                      });
    read(gen);
  };
  error_code ec;
  auto addr = asio::ip::make_address(dest.host, ec);
  if (!ec) {
    sock.async_connect(tcp::endpoint{addr, dest.port}, on_connect);
    return;
  }
  resolver.async_resolve(
      dest.host, std::to_string(dest.port),
      [this, self = shared_from_this(), gen,
       on_connect](const error_code& ec, resolver_type::results_type results) {
        if (gen != generation)
          return;
        if (ec) {
          fail(gen, "cannot resolve " + name() + ": " + ec.message());
          return;
        }
        asio::async_connect(sock, results, on_connect);
      });
}

void asio_transport::impl::outbound::read(uint64_t gen) {
  auto buf = decoder.prepare();
  sock.async_read_some(
      asio::buffer(buf.data(), buf.size()),
      [this, self = shared_from_this(), gen](const error_code& ec, size_t n) {
        if (gen != generation)
          return;
        if (ec) {
          fail(gen, (greeted ? "lost the connection to " : "handshake with ")
                        + name() + (greeted ? ": " : " failed: ")
                        + ec.message());
          return;
        }
        bump(owner.ctr.bytes_received, n);
        decoder.commit(n);
        // Bounded by the bytes just read: every round consumes a frame.
        for (;;) {
          auto res = decoder.next(rframe);
          if (res == frame_decoder::result::need_more)
            break;
          if (res == frame_decoder::result::error) {
            bump(owner.ctr.protocol_errors);
            fail(gen, "bad input from " + name() + ": " + decoder.error());
            return;
          }
          handle(gen, rframe);
          if (gen != generation)
            return;
        }
        if (!owner.stopped)
          read(gen);
      });
}

void asio_transport::impl::outbound::handle(uint64_t gen, Frame& frame) {
  if (greeted) {
    if (frame.has_hello() || frame.has_hello_reply()) {
      bump(owner.ctr.protocol_errors);
      fail(gen, "bad input from " + name() + ": unexpected " + body_name(frame)
                    + " after the handshake");
      return;
    }
    deadline = after(owner.cfg.idle_timeout / 2);
    owner.deliver(remote, std::move(frame));
    return;
  }
  if (!frame.has_hello_reply()) {
    bump(owner.ctr.protocol_errors);
    fail(gen, "bad input from " + name() + ": expected a hello_reply, got "
                  + body_name(frame));
    return;
  }
  const auto& reply = frame.hello_reply();
  std::string reason;
  if (reply.error_code() != 0)
    reason = name() + " refused our handshake: " + reply.error();
  else if (reply.hello().protocol_version() != protocol_version)
    reason = name() + " speaks protocol version "
             + std::to_string(reply.hello().protocol_version()) + ", not "
             + std::to_string(protocol_version);
  else if (reply.hello().cluster_id() != owner.cfg.cluster_id)
    reason = name() + " belongs to cluster '" + reply.hello().cluster_id()
             + "', not '" + owner.cfg.cluster_id + "'";
  else if (reply.hello().silo_id() != silo_id)
    reason = "expected " + name() + ", found silo '" + reply.hello().silo_id()
             + "' there";
  if (!reason.empty()) {
    fail(gen, reason, make_error(errc::invalid_config, reason));
    // Counted after `refused` is set, so that observers of the counter also
    // see the refusal in `send`.
    bump(owner.ctr.handshakes_refused);
    return;
  }
  greeted = true;
  remote.silo_id = reply.hello().silo_id();
  remote.incarnation = reply.hello().incarnation();
  remote.address.host = reply.hello().listen_host();
  remote.address.port = static_cast<uint16_t>(reply.hello().listen_port());
  deadline = after(owner.cfg.idle_timeout / 2);
  bump(owner.ctr.connects);
  std::unique_lock guard{mtx};
  if (failures > 0)
    note(log_level::info, "reconnected to " + name());
  state = state_type::ready;
  failures = 0;
  refused = caf::error{};
  if (!writing)
    write(guard);
}

void asio_transport::impl::outbound::flush() {
  std::unique_lock guard{mtx};
  flush_posted = false;
  if (state == state_type::ready && !writing)
    write(guard);
}

void asio_transport::impl::outbound::write(
    std::unique_lock<std::mutex>& guard) {
  if (pending.empty() || owner.stopped)
    return;
  // Double buffering: `send` keeps appending to `pending` while `inflight`
  // is on the wire; both keep their capacity, so a steady stream allocates
  // nothing.
  inflight.swap(pending);
  inflight_frames = pending_frames;
  partial_head = 0;
  pending.clear();
  pending_frames = 0;
  writing = true;
  guard.unlock();
  deadline = after(owner.cfg.idle_timeout / 2);
  bump(owner.ctr.writes);
  asio::async_write(sock, asio::buffer(inflight),
                    [this, self = shared_from_this(),
                     gen = generation](const error_code& ec, size_t n) {
                      written(gen, ec, n);
                    });
}

void asio_transport::impl::outbound::written(uint64_t gen, const error_code& ec,
                                             size_t n) {
  if (gen != generation)
    return;
  if (ec) {
    fail(gen, "cannot write to " + name() + ": " + ec.message());
    return;
  }
  bump(owner.ctr.frames_sent, inflight_frames);
  bump(owner.ctr.bytes_sent, n);
  inflight_frames = 0;
  inflight.clear();
  if (inflight.capacity() > max_retained_buffer)
    std::string{}.swap(inflight);
  deadline = after(owner.cfg.idle_timeout / 2);
  std::unique_lock guard{mtx};
  writing = false;
  write(guard);
}

void asio_transport::impl::outbound::fail(uint64_t gen,
                                          const std::string& reason,
                                          caf::error refusal) {
  if (gen != generation)
    return;
  auto next_gen = ++generation;
  resolver.cancel();
  deadline = no_deadline;
  std::unique_lock guard{mtx};
  // Under the lock: `enqueue` may be writing to this descriptor.
  error_code ignored;
  sock.close(ignored);
  auto was_ready = state == state_type::ready;
  if (writing || inflight_frames > 0)
    bump(owner.ctr.frames_lost, inflight_frames);
  inflight_frames = 0;
  inflight.clear();
  writing = false;
  if (partial_head > 0) {
    pending.erase(0, partial_head);
    partial_head = 0;
    --pending_frames;
    bump(owner.ctr.frames_lost);
  }
  if (owner.stopped) {
    state = state_type::idle;
    return;
  }
  bump(was_ready ? owner.ctr.disconnects : owner.ctr.connect_failures);
  // A peer that stays down or keeps refusing would log on every retry; the
  // first failure of each kind is enough.
  auto loud = was_ready || failures == 0 || (refusal && !refused);
  if (refusal)
    refused = std::move(refusal);
  if (pending.empty()) {
    state = state_type::idle;
  } else {
    state = state_type::backoff;
    retry_timer.expires_after(owner.backoff(failures++));
    retry_timer.async_wait(
        [this, self = shared_from_this(), next_gen](const error_code& ec) {
          if (ec || next_gen != generation || owner.stopped)
            return;
          {
            std::lock_guard guard{mtx};
            if (state != state_type::backoff)
              return;
            state = state_type::connecting;
          }
          connect();
        });
  }
  guard.unlock();
  note(loud ? log_level::warning : log_level::debug, reason);
}

void asio_transport::impl::outbound::on_deadline() {
  if (deadline.load() > now_ns())
    return;
  {
    std::lock_guard guard{mtx};
    if (state == state_type::ready && !writing && pending.empty()) {
      // Idle: close quietly; the next send reconnects.
      ++generation;
      error_code ignored;
      sock.close(ignored);
      deadline = no_deadline;
      state = state_type::idle;
      return;
    }
  }
  bump(owner.ctr.timeouts);
  fail(generation,
       (greeted ? "timed out writing to " : "timed out connecting to ")
           + name());
}

void asio_transport::impl::outbound::shutdown() {
  ++generation;
  resolver.cancel();
  retry_timer.cancel();
  deadline = no_deadline;
  std::lock_guard guard{mtx};
  error_code ignored;
  sock.close(ignored);
  state = state_type::idle;
}

// -- inbound connections -----------------------------------------------------

/// A connection another silo opened to us. Everything runs on its socket's
/// strand.
class asio_transport::impl::inbound
    : public std::enable_shared_from_this<inbound> {
public:
  inbound(impl& owner, socket_type socket)
      : owner(owner)
      , sock(std::move(socket))
      , decoder(owner.cfg.max_frame_size) {
    error_code ec;
    auto ep = sock.remote_endpoint(ec);
    peer = ec ? std::string{"unknown peer"}
              : ep.address().to_string() + ":" + std::to_string(ep.port());
    deadline = after(owner.cfg.handshake_timeout);
  }

  void start();
  void read();
  bool handle(Frame& frame);
  void refuse(const std::string& reason);
  void close();
  void on_deadline();
  std::string name() const;

  impl& owner;
  socket_type sock;
  std::atomic<int64_t> deadline{no_deadline};
  frame_decoder decoder;
  Frame rframe;
  std::string peer;
  bool greeted = false;
  bool closed = false;
  peer_info remote;
  std::string reply_buf;
};

std::string asio_transport::impl::inbound::name() const {
  return greeted ? "silo '" + remote.silo_id + "' (" + peer + ")"
                 : "connection from " + peer;
}

void asio_transport::impl::inbound::start() {
  error_code ignored;
  sock.set_option(tcp::no_delay(true), ignored);
  read();
}

void asio_transport::impl::inbound::read() {
  if (closed || owner.stopped)
    return;
  auto buf = decoder.prepare();
  sock.async_read_some(
      asio::buffer(buf.data(), buf.size()),
      [this, self = shared_from_this()](const error_code& ec, size_t n) {
        if (closed)
          return;
        if (ec) {
          note(log_level::debug, name() + " closed: " + ec.message());
          close();
          return;
        }
        bump(owner.ctr.bytes_received, n);
        decoder.commit(n);
        auto progressed = false;
        // Bounded by the bytes just read: every round consumes a frame.
        for (;;) {
          auto res = decoder.next(rframe);
          if (res == frame_decoder::result::need_more)
            break;
          if (res == frame_decoder::result::error) {
            bump(owner.ctr.protocol_errors);
            warn("closing " + name() + ": " + decoder.error());
            close();
            return;
          }
          if (!handle(rframe))
            return;
          progressed = true;
        }
        if (progressed)
          deadline = after(owner.cfg.idle_timeout);
        read();
      });
}

bool asio_transport::impl::inbound::handle(Frame& frame) {
  if (greeted) {
    if (frame.has_hello() || frame.has_hello_reply()) {
      bump(owner.ctr.protocol_errors);
      warn("closing " + name() + ": unexpected " + body_name(frame)
           + " after the handshake");
      close();
      return false;
    }
    owner.deliver(remote, std::move(frame));
    return !closed;
  }
  if (!frame.has_hello()) {
    bump(owner.ctr.protocol_errors);
    warn("closing " + name() + ": expected a hello, got " + body_name(frame));
    close();
    return false;
  }
  const auto& h = frame.hello();
  const auto& cfg = owner.cfg;
  if (h.protocol_version() != protocol_version) {
    refuse("protocol version " + std::to_string(h.protocol_version())
           + " is not supported (this silo speaks "
           + std::to_string(protocol_version) + ")");
    return false;
  }
  if (h.cluster_id() != cfg.cluster_id) {
    refuse("silo '" + h.silo_id() + "' is in cluster '" + h.cluster_id()
           + "', but silo '" + cfg.silo_id + "' is in cluster '"
           + cfg.cluster_id + "'");
    return false;
  }
  if (h.silo_id().empty()) {
    refuse("the handshake names no silo id");
    return false;
  }
  if (!h.target_silo_id().empty() && h.target_silo_id() != cfg.silo_id) {
    refuse("silo '" + h.silo_id() + "' wanted silo '" + h.target_silo_id()
           + "', but this is silo '" + cfg.silo_id + "'");
    return false;
  }
  greeted = true;
  remote.silo_id = h.silo_id();
  remote.incarnation = h.incarnation();
  remote.address.host = h.listen_host();
  remote.address.port = static_cast<uint16_t>(h.listen_port());
  Frame reply;
  *reply.mutable_hello_reply()->mutable_hello() = owner.hello;
  reply_buf = encode(reply, cfg.max_frame_size);
  asio::async_write(
      sock, asio::buffer(reply_buf),
      [this, self = shared_from_this()](const error_code& ec, size_t) {
        if (ec && !closed) {
          note(log_level::debug, name() + " closed: " + ec.message());
          close();
        }
      });
  note(log_level::debug, "accepted " + name());
  return true;
}

void asio_transport::impl::inbound::refuse(const std::string& reason) {
  bump(owner.ctr.handshakes_refused);
  warn("refusing " + name() + ": " + reason);
  Frame reply;
  reply.mutable_hello_reply()->set_error_code(
      static_cast<uint32_t>(errc::invalid_config));
  reply.mutable_hello_reply()->set_error(reason);
  reply_buf = encode(reply, owner.cfg.max_frame_size);
  // Stop reading; the connection closes once the answer is out, or at the
  // handshake deadline if the peer does not take it.
  asio::async_write(sock, asio::buffer(reply_buf),
                    [this, self = shared_from_this()](const error_code&,
                                                      size_t) { close(); });
}

void asio_transport::impl::inbound::close() {
  if (closed)
    return;
  closed = true;
  deadline = no_deadline;
  error_code ignored;
  sock.shutdown(tcp::socket::shutdown_both, ignored);
  sock.close(ignored);
  owner.remove(this);
}

void asio_transport::impl::inbound::on_deadline() {
  if (closed || deadline.load() > now_ns())
    return;
  bump(owner.ctr.timeouts);
  auto what
      = !greeted ? "no handshake within the handshake timeout"
        : decoder.buffered() > 0
            ? "an incomplete frame was not finished within the idle timeout"
            : "idle for longer than the idle timeout";
  if (greeted && decoder.buffered() == 0)
    note(log_level::debug, "closing " + name() + ": " + what);
  else
    warn("closing " + name() + ": " + what);
  close();
}

// -- transport ---------------------------------------------------------------

caf::error asio_transport::impl::validate() const {
  auto bad = [](const std::string& what) {
    return make_error(errc::invalid_config, "cluster transport: " + what);
  };
  if (cfg.cluster_id.empty())
    return bad("cluster_id must not be empty");
  if (cfg.silo_id.empty())
    return bad("silo_id must not be empty");
  if (cfg.cluster_id.size() > 1024 || cfg.silo_id.size() > 1024
      || cfg.advertised_host.size() > 1024)
    return bad("cluster_id, silo_id and advertised_host must be at most 1024 "
               "bytes");
  if (cfg.io_threads < 1 || cfg.io_threads > 64)
    return bad("io_threads must be between 1 and 64");
  if (cfg.max_frame_size < 4096 || cfg.max_frame_size > (size_t{1} << 31))
    return bad("max_frame_size must be between 4 KiB and 2 GiB");
  if (cfg.max_queued_frames < 1 || cfg.max_queued_bytes < cfg.max_frame_size)
    return bad("max_queued_frames must be positive and max_queued_bytes at "
               "least max_frame_size");
  if (cfg.max_peers < 1 || cfg.max_inbound_connections < 1)
    return bad("max_peers and max_inbound_connections must be positive");
  if (cfg.handshake_timeout.count() <= 0 || cfg.idle_timeout.count() <= 0)
    return bad("handshake_timeout and idle_timeout must be positive");
  if (cfg.batch_window.count() < 0)
    return bad("batch_window must not be negative");
  if (cfg.reconnect_initial.count() <= 0
      || cfg.reconnect_max < cfg.reconnect_initial)
    return bad("reconnect_initial must be positive and at most reconnect_max");
  return {};
}

caf::expected<uint16_t> asio_transport::impl::start(const endpoint& listen) {
  if (stopped)
    return make_error(errc::silo_stopped,
                      "cluster transport: a stopped transport cannot restart");
  if (started)
    return make_error(errc::invalid_argument,
                      "cluster transport: already started");
  if (auto err = validate())
    return err;
  error_code ec;
  tcp::resolver res{io};
  auto results = res.resolve(listen.host, std::to_string(listen.port),
                             tcp::resolver::passive, ec);
  if (ec || results.empty())
    return make_error(errc::invalid_config,
                      "cluster transport: cannot resolve listen address "
                          + listen.to_string() + ": " + ec.message());
  auto ep = results.begin()->endpoint();
  auto fail = [&](const char* what) -> caf::error {
    error_code ignored;
    acceptor.close(ignored);
    return make_error(errc::invalid_config,
                      "cluster transport: cannot " + std::string{what} + " "
                          + listen.to_string() + ": " + ec.message());
  };
  if (acceptor.open(ep.protocol(), ec))
    return fail("open");
  // Lets a restarted silo take its port back while old connections linger
  // in TIME_WAIT.
  if (acceptor.set_option(tcp::acceptor::reuse_address(true), ec))
    return fail("configure");
  if (acceptor.bind(ep, ec))
    return fail("bind");
  if (acceptor.listen(asio::socket_base::max_listen_connections, ec))
    return fail("listen on");
  auto port = acceptor.local_endpoint(ec).port();
  if (ec)
    return fail("query");
  hello.set_protocol_version(protocol_version);
  hello.set_cluster_id(cfg.cluster_id);
  hello.set_silo_id(cfg.silo_id);
  hello.set_incarnation(cfg.incarnation);
  hello.set_listen_host(cfg.advertised_host.empty() ? listen.host
                                                    : cfg.advertised_host);
  hello.set_listen_port(port);
  work.emplace(io.get_executor());
  started = true;
  accept();
  arm_sweep();
  for (size_t i = 0; i < cfg.io_threads; ++i)
    threads.emplace_back([this] {
      // Bounded: each round either ends because run() returned (no work
      // left) or consumed the handler that threw.
      for (;;) {
        try {
          io.run();
          break;
        } catch (const std::exception& e) {
          log(log_level::error,
              std::string{"cluster transport: io thread caught: "} + e.what());
        } catch (...) {
          log(log_level::error,
              "cluster transport: io thread caught an unknown exception");
        }
      }
      std::lock_guard guard{exit_mtx};
      ++exited;
      exit_cv.notify_all();
    });
  return port;
}

void asio_transport::impl::accept() {
  acceptor.async_accept(
      asio::make_strand(io), [this](const error_code& ec, socket_type socket) {
        if (stopped)
          return;
        if (ec) {
          if (ec == asio::error::operation_aborted)
            return;
          // E.g. out of file descriptors: back off instead of spinning.
          warn("accept failed: " + ec.message());
          accept_retry.expires_after(std::chrono::milliseconds{50});
          accept_retry.async_wait([this](const error_code& ec) {
            if (!ec && !stopped)
              accept();
          });
          return;
        }
        std::shared_ptr<inbound> conn;
        {
          std::lock_guard guard{mtx};
          if (inbounds.size() < cfg.max_inbound_connections) {
            conn = std::make_shared<inbound>(*this, std::move(socket));
            inbounds.emplace(conn.get(), conn);
          }
        }
        if (conn) {
          asio::post(conn->sock.get_executor(), [conn] { conn->start(); });
        } else {
          warn("refusing a connection: "
               + std::to_string(cfg.max_inbound_connections)
               + " inbound connections are open already");
          error_code ignored;
          socket.close(ignored);
        }
        accept();
      });
}

void asio_transport::impl::arm_sweep() {
  // Checks deadlines a few times per timeout; the cost is one pass over the
  // connections, not one timer per connection and frame.
  auto tick = std::clamp(
      std::min(cfg.handshake_timeout, cfg.idle_timeout / 2) / 4,
      std::chrono::milliseconds{5}, std::chrono::milliseconds{1000});
  sweep_timer.expires_after(tick);
  sweep_timer.async_wait([this](const error_code& ec) {
    if (ec || stopped)
      return;
    sweep();
    arm_sweep();
  });
}

void asio_transport::impl::sweep() {
  auto now = now_ns();
  std::lock_guard guard{mtx};
  for (auto& [id, p] : peers)
    if (p->deadline.load(std::memory_order_relaxed) <= now)
      asio::post(p->strand, [p = p] { p->on_deadline(); });
  for (auto& [ptr, c] : inbounds)
    if (c->deadline.load(std::memory_order_relaxed) <= now)
      asio::post(c->sock.get_executor(), [c = c] { c->on_deadline(); });
}

void asio_transport::impl::deliver(const peer_info& from, Frame&& frame) {
  bump(ctr.frames_received);
  if (!handler)
    return;
  try {
    handler(from, std::move(frame));
  } catch (const std::exception& e) {
    log(log_level::error,
        std::string{"cluster transport: frame handler threw: "} + e.what());
  } catch (...) {
    log(log_level::error, "cluster transport: frame handler threw");
  }
}

void asio_transport::impl::remove(inbound* conn) {
  std::shared_ptr<inbound> keep; // Destroyed outside the lock.
  std::lock_guard guard{mtx};
  if (auto i = inbounds.find(conn); i != inbounds.end()) {
    keep = std::move(i->second);
    inbounds.erase(i);
  }
}

std::chrono::milliseconds asio_transport::impl::backoff(unsigned failures) {
  auto base = cfg.reconnect_initial.count();
  auto cap = cfg.reconnect_max.count();
  auto delay = base;
  // Bounded: doubles at most until it reaches the cap.
  for (unsigned i = 0; i < failures && delay < cap; ++i)
    delay *= 2;
  delay = std::min(delay, cap);
  std::lock_guard guard{rng_mtx};
  // Jitter in [delay/2, delay], so that silos that lost the same peer do
  // not reconnect in lockstep.
  std::uniform_int_distribution<int64_t> dist{delay / 2, delay};
  return std::chrono::milliseconds{dist(rng)};
}

caf::error asio_transport::impl::send(const peer_address& to,
                                      const Frame& frame) {
  if (!started)
    return make_error(errc::silo_stopped,
                      "cluster transport: send before start");
  if (stopped)
    return make_error(errc::silo_stopped, "cluster transport: stopped");
  if (to.silo_id.empty())
    return make_error(errc::invalid_argument,
                      "cluster transport: the peer's silo id is empty");
  std::shared_ptr<outbound> p;
  {
    std::lock_guard guard{mtx};
    auto i = peers.find(to.silo_id);
    if (i != peers.end()) {
      p = i->second;
    } else {
      if (peers.size() >= cfg.max_peers)
        return make_error(errc::overloaded,
                          "cluster transport: already sending to "
                              + std::to_string(cfg.max_peers) + " peers");
      p = std::make_shared<outbound>(*this, to);
      peers.emplace(to.silo_id, p);
    }
  }
  return p->enqueue(to, frame);
}

void asio_transport::impl::stop() {
  if (stopped.exchange(true) || !started)
    return;
  asio::post(accept_strand, [this] {
    error_code ignored;
    acceptor.close(ignored);
    accept_retry.cancel();
    sweep_timer.cancel();
  });
  {
    std::lock_guard guard{mtx};
    for (auto& [id, p] : peers)
      asio::post(p->strand, [p = p] { p->shutdown(); });
    for (auto& [ptr, c] : inbounds)
      asio::post(c->sock.get_executor(), [c = c] { c->close(); });
  }
  work.reset();
  {
    // Every handler stops re-arming once `stopped` is set, so run() returns
    // by itself; the bound only matters if a handler is stuck.
    std::unique_lock guard{exit_mtx};
    if (!exit_cv.wait_for(guard, std::chrono::seconds{2},
                          [this] { return exited == threads.size(); }))
      io.stop();
  }
  for (auto& t : threads)
    t.join();
  threads.clear();
  std::lock_guard guard{mtx};
  for (auto& [id, p] : peers) {
    std::lock_guard pguard{p->mtx};
    bump(ctr.frames_lost, p->pending_frames);
    p->pending_frames = 0;
  }
}

transport_stats asio_transport::impl::stats() const {
  transport_stats s;
  auto get = [](const std::atomic<uint64_t>& c) {
    return c.load(std::memory_order_relaxed);
  };
  s.frames_sent = get(ctr.frames_sent);
  s.writes = get(ctr.writes);
  s.bytes_sent = get(ctr.bytes_sent);
  s.frames_received = get(ctr.frames_received);
  s.bytes_received = get(ctr.bytes_received);
  s.connects = get(ctr.connects);
  s.connect_failures = get(ctr.connect_failures);
  s.disconnects = get(ctr.disconnects);
  s.handshakes_refused = get(ctr.handshakes_refused);
  s.protocol_errors = get(ctr.protocol_errors);
  s.timeouts = get(ctr.timeouts);
  s.overloaded = get(ctr.overloaded);
  s.frames_lost = get(ctr.frames_lost);
  return s;
}

// -- public interface --------------------------------------------------------

asio_transport::asio_transport(asio_transport_config config)
    : impl_(std::make_unique<impl>(std::move(config))) {}

asio_transport::~asio_transport() {
  stop();
}

void asio_transport::set_handler(frame_handler handler) {
  if (!impl_->started)
    impl_->handler = std::move(handler);
}

caf::expected<uint16_t> asio_transport::start(const endpoint& listen) {
  return impl_->start(listen);
}

caf::error asio_transport::send(const peer_address& to, const Frame& frame) {
  return impl_->send(to, frame);
}

void asio_transport::stop() {
  impl_->stop();
}

transport_stats asio_transport::stats() const {
  return impl_->stats();
}

} // namespace granary::cluster

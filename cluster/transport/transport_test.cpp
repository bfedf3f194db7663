// Tests of the silo-to-silo transport over real TCP on 127.0.0.1.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "cluster.pb.h"
#include "cluster/transport/asio_transport.hpp"
#include "cluster/transport/faulty_transport.hpp"
#include "cluster/transport/frame_codec.hpp"
#include "cluster/transport/memory_transport.hpp"
#include "cluster/transport/ports.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"

using namespace granary;
using namespace granary::cluster;
using namespace std::chrono_literals;

namespace {

constexpr auto wait_limit = 5s;

/// Polls `pred` until it holds or `limit` passes.
bool eventually(const std::function<bool()>& pred,
                std::chrono::milliseconds limit = wait_limit) {
  auto until = std::chrono::steady_clock::now() + limit;
  // Bounded by the deadline.
  while (std::chrono::steady_clock::now() < until) {
    if (pred())
      return true;
    std::this_thread::sleep_for(1ms);
  }
  return pred();
}

asio_transport_config config(std::string silo,
                             std::string cluster = "test-cluster") {
  asio_transport_config cfg;
  cfg.cluster_id = std::move(cluster);
  cfg.silo_id = std::move(silo);
  cfg.incarnation = 7;
  cfg.handshake_timeout = 500ms;
  cfg.idle_timeout = 10s;
  cfg.reconnect_initial = 10ms;
  cfg.reconnect_max = 100ms;
  cfg.jitter_seed = 1;
  return cfg;
}

Frame ping(uint64_t nonce) {
  Frame f;
  f.mutable_ping()->set_nonce(nonce);
  f.mutable_ping()->set_sent_us(42);
  return f;
}

/// A transport plus everything it received.
struct node {
  explicit node(std::shared_ptr<transport> tr)
      : t(std::move(tr)) {
    t->set_handler([this](const peer_info& from, Frame&& f) {
      std::lock_guard guard{mtx};
      senders.push_back(from);
      frames.push_back(std::move(f));
    });
  }

  explicit node(asio_transport_config cfg, uint16_t port = 0)
      : node(std::make_shared<asio_transport>(std::move(cfg))) {
    auto bound = t->start({"127.0.0.1", port});
    EXPECT_TRUE(bound) << describe(bound.error());
    if (bound)
      this->port = *bound;
  }

  ~node() {
    t->stop();
  }

  size_t count() {
    std::lock_guard guard{mtx};
    return frames.size();
  }

  std::vector<uint64_t> nonces() {
    std::lock_guard guard{mtx};
    std::vector<uint64_t> out;
    for (auto& f : frames)
      out.push_back(f.ping().nonce());
    return out;
  }

  peer_address address(const std::string& silo) const {
    return {silo, {"127.0.0.1", port}};
  }

  std::shared_ptr<transport> t;
  uint16_t port = 0;
  std::mutex mtx;
  std::vector<peer_info> senders;
  std::vector<Frame> frames;
};

/// A port nobody listens on, below the ephemeral range (so that no
/// transport of the test that listens on port 0 can take it).
uint16_t unused_port() {
  auto port = pick_free_port();
  EXPECT_TRUE(port) << describe(port.error());
  return port ? *port : uint16_t{1};
}

/// A plain blocking socket, to play a hostile peer.
class raw_socket {
public:
  explicit raw_socket(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_
        = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }

  ~raw_socket() {
    ::close(fd_);
  }

  bool connected() const {
    return connected_;
  }

  void write(const std::string& bytes) {
    size_t done = 0;
    // Bounded by the size of `bytes`, or by the first error.
    while (done < bytes.size()) {
      auto n
          = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      if (n <= 0)
        return;
      done += static_cast<size_t>(n);
    }
  }

  /// Reads until the peer closes (true) or `limit` passes (false).
  bool closed_by_peer(std::chrono::milliseconds limit = wait_limit) {
    auto until = std::chrono::steady_clock::now() + limit;
    char buf[4096];
    // Bounded by the deadline.
    while (std::chrono::steady_clock::now() < until) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 10) <= 0)
        continue;
      auto n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0)
        return true;
      received_.append(buf, static_cast<size_t>(n));
    }
    return false;
  }

  const std::string& received() const {
    return received_;
  }

private:
  int fd_ = -1;
  bool connected_ = false;
  std::string received_;
};

std::string prefix(uint32_t len) {
  std::string out(4, '\0');
  out[0] = static_cast<char>(len >> 24);
  out[1] = static_cast<char>(len >> 16);
  out[2] = static_cast<char>(len >> 8);
  out[3] = static_cast<char>(len);
  return out;
}

std::string hello_bytes(const std::string& cluster, const std::string& silo) {
  Frame f;
  f.mutable_hello()->set_protocol_version(1);
  f.mutable_hello()->set_cluster_id(cluster);
  f.mutable_hello()->set_silo_id(silo);
  std::string out;
  EXPECT_FALSE(append_frame(f, 1 << 20, out));
  return out;
}

/// Collects log lines while alive.
struct log_capture {
  log_capture() {
    set_log_sink([this](log_level level, std::string_view line) {
      std::lock_guard guard{mtx};
      if (level >= log_level::warning)
        lines.emplace_back(line);
    });
  }

  ~log_capture() {
    set_log_sink(nullptr);
  }

  bool contains(const std::string& needle) {
    std::lock_guard guard{mtx};
    return std::any_of(lines.begin(), lines.end(), [&](const std::string& l) {
      return l.find(needle) != std::string::npos;
    });
  }

  std::mutex mtx;
  std::vector<std::string> lines;
};

} // namespace

TEST(transport_codec, decodes_a_stream_fed_byte_by_byte) {
  std::string stream;
  for (uint64_t i = 0; i < 20; ++i)
    ASSERT_FALSE(append_frame(ping(i), 4096, stream));
  frame_decoder dec{4096, 64};
  std::vector<uint64_t> got;
  Frame f;
  for (char c : stream) {
    auto buf = dec.prepare();
    ASSERT_FALSE(buf.empty());
    buf[0] = c;
    dec.commit(1);
    // Bounded: at most one frame completes per byte.
    while (dec.next(f) == frame_decoder::result::frame)
      got.push_back(f.ping().nonce());
  }
  ASSERT_EQ(got.size(), 20u);
  for (uint64_t i = 0; i < 20; ++i)
    EXPECT_EQ(got[i], i);
  EXPECT_EQ(dec.buffered(), 0u);
}

TEST(transport_codec, rejects_an_oversized_prefix_before_reading_the_body) {
  frame_decoder dec{4096, 64};
  auto header = prefix(4097);
  auto buf = dec.prepare();
  std::copy(header.begin(), header.end(), buf.begin());
  dec.commit(header.size());
  Frame f;
  EXPECT_EQ(dec.next(f), frame_decoder::result::error);
  EXPECT_NE(dec.error().find("exceeds the maximum frame size"),
            std::string::npos)
      << dec.error();
  // The decoder did not reserve room for the announced body.
  EXPECT_LE(dec.prepare().size(), 64u);
  std::string out;
  Frame big;
  big.mutable_call()->set_payload(std::string(5000, 'x'));
  EXPECT_EQ(code_of(append_frame(big, 4096, out)), errc::payload_too_large);
  EXPECT_TRUE(out.empty());
}

TEST(asio_transport, round_trip) {
  node a{config("a")};
  // b answers pings through its own connection back to the sender.
  auto b = std::make_shared<asio_transport>(config("b"));
  auto* raw_b = b.get();
  b->set_handler([raw_b](const peer_info& from, Frame&& f) {
    Frame pong;
    pong.mutable_pong()->set_nonce(f.ping().nonce());
    pong.mutable_pong()->set_ping_sent_us(f.ping().sent_us());
    EXPECT_FALSE(raw_b->send({from.silo_id, from.address}, pong));
  });
  auto port = b->start({"127.0.0.1", 0});
  ASSERT_TRUE(port);
  ASSERT_FALSE(a.t->send({"b", {"127.0.0.1", *port}}, ping(99)));
  ASSERT_TRUE(eventually([&] { return a.count() == 1; }));
  std::lock_guard guard{a.mtx};
  ASSERT_TRUE(a.frames[0].has_pong());
  EXPECT_EQ(a.frames[0].pong().nonce(), 99u);
  EXPECT_EQ(a.frames[0].pong().ping_sent_us(), 42);
  EXPECT_EQ(a.senders[0].silo_id, "b");
  EXPECT_EQ(a.senders[0].incarnation, 7u);
  EXPECT_EQ(a.senders[0].address.port, *port);
  auto sa = a.t->stats();
  EXPECT_EQ(sa.connects, 1u);
  EXPECT_EQ(sa.frames_sent, 1u);
  EXPECT_EQ(sa.frames_received, 1u);
  // b counts its pong once its write returns, which may be after a got it.
  EXPECT_TRUE(eventually([&] { return b->stats().frames_sent == 1; }));
  auto sb = b->stats();
  EXPECT_EQ(sb.connects, 1u);
  EXPECT_EQ(sb.frames_sent, 1u);
  EXPECT_EQ(sb.frames_received, 1u);
}

TEST(asio_transport, many_frames_arrive_in_order_and_batched) {
  node a{config("a")};
  node b{config("b")};
  // Connect first, so that the batches below form behind writes in flight
  // rather than behind the handshake.
  ASSERT_FALSE(a.t->send(b.address("b"), ping(0)));
  ASSERT_TRUE(eventually([&] { return b.count() == 1; }));
  constexpr uint64_t n = 20000;
  for (uint64_t i = 1; i <= n; ++i)
    ASSERT_FALSE(a.t->send(b.address("b"), ping(i)));
  ASSERT_TRUE(eventually([&] { return b.count() == n + 1; }));
  auto got = b.nonces();
  for (uint64_t i = 0; i <= n; ++i)
    ASSERT_EQ(got[i], i);
  // Counted when the write completes, which may be after b read it.
  EXPECT_TRUE(eventually([&] { return a.t->stats().frames_sent == n + 1; }));
  auto s = a.t->stats();
  EXPECT_LT(s.writes, (n + 1) / 2) << "frames were not batched";
  EXPECT_EQ(s.connects, 1u);
  EXPECT_EQ(b.t->stats().frames_received, n + 1);
}

TEST(asio_transport, full_queue_is_overloaded_and_oversized_frames_fail) {
  auto cfg = config("a");
  cfg.max_queued_frames = 10;
  cfg.max_frame_size = 4096;
  cfg.max_queued_bytes = 1 << 20;
  node a{cfg};
  peer_address down{"down", {"127.0.0.1", unused_port()}};
  for (uint64_t i = 0; i < 10; ++i)
    ASSERT_FALSE(a.t->send(down, ping(i)));
  auto err = a.t->send(down, ping(10));
  EXPECT_EQ(code_of(err), errc::overloaded) << describe(err);
  EXPECT_NE(describe(err).find("retry after"), std::string::npos);
  EXPECT_EQ(a.t->stats().overloaded, 1u);
  Frame big;
  big.mutable_call()->set_payload(std::string(5000, 'x'));
  EXPECT_EQ(code_of(a.t->send({"other", down.address}, big)),
            errc::payload_too_large);
  // Still bounded after failed reconnects: nothing was dropped to make room.
  ASSERT_TRUE(eventually([&] { return a.t->stats().connect_failures >= 2; }));
  EXPECT_EQ(code_of(a.t->send(down, ping(11))), errc::overloaded);
}

TEST(asio_transport, reconnects_and_flushes_the_queue_after_peer_restart) {
  node a{config("a")};
  auto b = std::make_unique<node>(config("b"));
  auto port = b->port;
  peer_address to{"b", {"127.0.0.1", port}};
  ASSERT_FALSE(a.t->send(to, ping(0)));
  ASSERT_TRUE(eventually([&] { return b->count() == 1; }));
  b.reset();
  ASSERT_TRUE(eventually([&] { return a.t->stats().disconnects == 1; }));
  for (uint64_t i = 1; i <= 100; ++i)
    ASSERT_FALSE(a.t->send(to, ping(i)));
  // The frames sit in the queue while b is down.
  ASSERT_TRUE(eventually([&] { return a.t->stats().connect_failures >= 1; }));
  b = std::make_unique<node>(config("b"), port);
  ASSERT_EQ(b->port, port);
  ASSERT_TRUE(eventually([&] { return b->count() == 100; }));
  auto got = b->nonces();
  for (uint64_t i = 0; i < 100; ++i)
    ASSERT_EQ(got[i], i + 1);
  auto s = a.t->stats();
  EXPECT_EQ(s.connects, 2u);
  EXPECT_EQ(s.frames_lost, 0u);
}

TEST(asio_transport, hostile_bytes_close_only_their_connection) {
  log_capture logs;
  node a{config("a")};
  node b{config("b")};
  ASSERT_FALSE(a.t->send(b.address("b"), ping(0)));
  ASSERT_TRUE(eventually([&] { return b.count() == 1; }));
  {
    // Announces 4 GiB before any handshake.
    raw_socket s{b.port};
    ASSERT_TRUE(s.connected());
    s.write(prefix(0xFFFFFFFF));
    EXPECT_TRUE(s.closed_by_peer());
  }
  EXPECT_TRUE(logs.contains("exceeds the maximum frame size"));
  {
    // A valid handshake, then an oversized prefix.
    raw_socket s{b.port};
    s.write(hello_bytes("test-cluster", "mallory") + prefix(0x7FFFFFFF));
    EXPECT_TRUE(s.closed_by_peer());
    EXPECT_FALSE(s.received().empty()); // the hello_reply
  }
  {
    // A plausible length with a body that is not a Frame.
    raw_socket s{b.port};
    s.write(prefix(16) + std::string(16, '\xff'));
    EXPECT_TRUE(s.closed_by_peer());
  }
  EXPECT_TRUE(logs.contains("does not parse"));
  {
    // Random garbage.
    std::mt19937 rng{1234};
    std::string junk(4096, '\0');
    for (auto& c : junk)
      c = static_cast<char>(rng());
    raw_socket s{b.port};
    s.write(junk);
    EXPECT_TRUE(s.closed_by_peer());
  }
  {
    // Half a frame, then silence: cut off at the handshake timeout.
    raw_socket s{b.port};
    s.write(prefix(100) + std::string(10, 'x'));
    EXPECT_TRUE(s.closed_by_peer(2s));
  }
  EXPECT_TRUE(logs.contains("no handshake within the handshake timeout"));
  auto sb = b.t->stats();
  EXPECT_GE(sb.protocol_errors, 4u);
  EXPECT_EQ(sb.timeouts, 1u);
  // The good peer's connection survived all of it.
  ASSERT_FALSE(a.t->send(b.address("b"), ping(1)));
  ASSERT_TRUE(eventually([&] { return b.count() == 2; }));
  auto sa = a.t->stats();
  EXPECT_EQ(sa.connects, 1u);
  EXPECT_EQ(sa.disconnects, 0u);
}

TEST(asio_transport, idle_timeout_cuts_off_an_unfinished_frame) {
  auto cfg = config("b");
  cfg.idle_timeout = 300ms;
  node b{cfg};
  raw_socket s{b.port};
  s.write(hello_bytes("test-cluster", "slow") + prefix(100) + "xx");
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(s.closed_by_peer(3s));
  EXPECT_GE(std::chrono::steady_clock::now() - start, 200ms);
  EXPECT_EQ(b.t->stats().timeouts, 1u);
  EXPECT_EQ(b.count(), 0u);
}

TEST(asio_transport, wrong_cluster_is_refused) {
  log_capture logs;
  node a{config("a", "cluster-one")};
  node b{config("b", "cluster-two")};
  ASSERT_FALSE(a.t->send(b.address("b"), ping(1)));
  ASSERT_TRUE(eventually([&] { return a.t->stats().handshakes_refused >= 1; }));
  EXPECT_GE(b.t->stats().handshakes_refused, 1u);
  EXPECT_TRUE(logs.contains("is in cluster 'cluster-one', but silo 'b' is "
                            "in cluster 'cluster-two'"));
  // While b refuses us, sending says why instead of queueing.
  auto err = a.t->send(b.address("b"), ping(2));
  EXPECT_EQ(code_of(err), errc::invalid_config) << describe(err);
  EXPECT_NE(describe(err).find("cluster-two"), std::string::npos)
      << describe(err);
  EXPECT_EQ(a.t->stats().connects, 0u);
  EXPECT_EQ(b.count(), 0u);
  // A raw peer with the wrong cluster id is refused too.
  raw_socket s{b.port};
  s.write(hello_bytes("cluster-three", "eve"));
  EXPECT_TRUE(s.closed_by_peer());
  frame_decoder dec{4096};
  auto buf = dec.prepare();
  ASSERT_LE(s.received().size(), buf.size());
  std::copy(s.received().begin(), s.received().end(), buf.begin());
  dec.commit(s.received().size());
  Frame reply;
  ASSERT_EQ(dec.next(reply), frame_decoder::result::frame);
  ASSERT_TRUE(reply.has_hello_reply());
  EXPECT_EQ(reply.hello_reply().error_code(),
            static_cast<uint32_t>(errc::invalid_config));
  EXPECT_NE(reply.hello_reply().error().find("cluster-three"),
            std::string::npos);
}

TEST(asio_transport, wrong_silo_at_the_endpoint_is_refused) {
  node a{config("a")};
  node b{config("b")};
  ASSERT_FALSE(a.t->send({"c", {"127.0.0.1", b.port}}, ping(1)));
  ASSERT_TRUE(eventually([&] { return a.t->stats().handshakes_refused >= 1; }));
  EXPECT_EQ(b.count(), 0u);
  EXPECT_EQ(code_of(a.t->send({"c", {"127.0.0.1", b.port}}, ping(2))),
            errc::invalid_config);
}

namespace {

/// Sends `n` pings from a faulty `a` to `b` and returns b's node once
/// `expected` frames arrived (or the wait ran out).
struct faulty_pair {
  explicit faulty_pair(fault_config faults)
      : inner(std::make_shared<asio_transport>(config("a")))
      , faulty(std::make_shared<faulty_transport>(inner, faults))
      , a(faulty)
      , b(config("b")) {
    auto port = faulty->start({"127.0.0.1", 0});
    EXPECT_TRUE(port);
  }

  std::shared_ptr<asio_transport> inner;
  std::shared_ptr<faulty_transport> faulty;
  node a;
  node b;
};

std::vector<uint64_t> reorder_run(uint64_t seed) {
  fault_config faults;
  faults.seed = seed;
  faults.reorder_rate = 0.3;
  // Long enough that only the next frame releases a held one, which keeps
  // the order independent of timing.
  faults.max_delay = 1s;
  faulty_pair p{faults};
  for (uint64_t i = 0; i < 100; ++i)
    EXPECT_FALSE(p.faulty->send(p.b.address("b"), ping(i)));
  EXPECT_TRUE(eventually([&] { return p.b.count() == 100; }));
  EXPECT_GT(p.faulty->faults().reordered, 0u);
  return p.b.nonces();
}

} // namespace

TEST(faulty_transport, drop_all_delivers_nothing) {
  fault_config faults;
  faults.drop_rate = 1.0;
  faulty_pair p{faults};
  for (uint64_t i = 0; i < 100; ++i)
    ASSERT_FALSE(p.faulty->send(p.b.address("b"), ping(i)));
  // A marker on the same connection, past the decorator: had anything
  // gotten through, it would have arrived before the marker.
  ASSERT_FALSE(p.inner->send(p.b.address("b"), ping(1000)));
  ASSERT_TRUE(eventually([&] { return p.b.count() >= 1; }));
  EXPECT_EQ(p.b.nonces(), std::vector<uint64_t>{1000});
  EXPECT_EQ(p.faulty->faults().dropped, 100u);
}

TEST(faulty_transport, duplicate_all_delivers_each_twice) {
  fault_config faults;
  faults.duplicate_rate = 1.0;
  faulty_pair p{faults};
  for (uint64_t i = 0; i < 50; ++i)
    ASSERT_FALSE(p.faulty->send(p.b.address("b"), ping(i)));
  ASSERT_TRUE(eventually([&] { return p.b.count() == 100; }));
  std::map<uint64_t, int> seen;
  for (auto nonce : p.b.nonces())
    ++seen[nonce];
  ASSERT_EQ(seen.size(), 50u);
  for (auto& [nonce, times] : seen)
    EXPECT_EQ(times, 2) << nonce;
  EXPECT_EQ(p.faulty->faults().duplicated, 50u);
}

TEST(faulty_transport, reorder_changes_order_but_delivers_all) {
  auto first = reorder_run(7);
  ASSERT_EQ(first.size(), 100u);
  EXPECT_FALSE(std::is_sorted(first.begin(), first.end()));
  auto sorted = first;
  std::sort(sorted.begin(), sorted.end());
  for (uint64_t i = 0; i < 100; ++i)
    ASSERT_EQ(sorted[i], i);
  // Same seed, same order.
  EXPECT_EQ(reorder_run(7), first);
}

TEST(faulty_transport, delay_delivers_all_within_the_bound) {
  fault_config faults;
  faults.delay_rate = 1.0;
  faults.max_delay = 30ms;
  faulty_pair p{faults};
  for (uint64_t i = 0; i < 50; ++i)
    ASSERT_FALSE(p.faulty->send(p.b.address("b"), ping(i)));
  ASSERT_TRUE(eventually([&] { return p.b.count() == 50; }, 2s));
  EXPECT_EQ(p.faulty->faults().delayed, 50u);
  auto got = p.b.nonces();
  std::sort(got.begin(), got.end());
  for (uint64_t i = 0; i < 50; ++i)
    ASSERT_EQ(got[i], i);
}

namespace {

// A node on an in-process network, started.
std::unique_ptr<node> memory_node(const std::shared_ptr<memory_network>& net,
                                  const std::string& silo) {
  auto n = std::make_unique<node>(net->attach(silo, 3));
  auto bound = n->t->start({"127.0.0.1", 0});
  EXPECT_TRUE(bound) << describe(bound.error());
  if (bound)
    n->port = *bound;
  return n;
}

} // namespace

TEST(memory_transport, frames_arrive_in_order_with_their_sender) {
  auto net = memory_network::make();
  auto a = memory_node(net, "a");
  auto b = memory_node(net, "b");
  for (uint64_t i = 0; i < 100; ++i)
    ASSERT_FALSE(a->t->send(b->address("b"), ping(i)));
  ASSERT_TRUE(eventually([&] { return b->count() == 100; }));
  std::vector<uint64_t> want(100);
  for (uint64_t i = 0; i < 100; ++i)
    want[i] = i;
  EXPECT_EQ(b->nonces(), want);
  std::lock_guard guard{b->mtx};
  EXPECT_EQ(b->senders[0].silo_id, "a");
  EXPECT_EQ(b->senders[0].incarnation, 3u);
  EXPECT_EQ(b->senders[0].address.port, a->port);
}

TEST(memory_transport, frames_to_a_stopped_or_wrong_silo_are_lost) {
  auto net = memory_network::make();
  auto a = memory_node(net, "a");
  auto b = memory_node(net, "b");
  // The right port under another name is refused, like a handshake.
  ASSERT_FALSE(a->t->send(b->address("c"), ping(1)));
  b->t->stop();
  ASSERT_FALSE(a->t->send(b->address("b"), ping(2)));
  EXPECT_EQ(b->count(), 0u);
  // A stopped transport refuses to send.
  EXPECT_EQ(code_of(b->t->send(a->address("a"), ping(3))), errc::silo_stopped);
  EXPECT_EQ(a->count(), 0u);
}

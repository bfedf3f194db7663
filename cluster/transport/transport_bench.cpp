// Measures the silo-to-silo transport against raw TCP on loopback:
//   (a) serial round trip latency of a small frame (p50/p99), against a
//       blocking TCP ping-pong of the same number of bytes;
//   (b) pipelined one-way frames/s, against raw TCP writes of the same
//       length-prefixed frames (one write per frame, and 64 KiB writes).
//
// Usage: transport_bench [--json] [--round-trips N] [--frames N]

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "cluster.pb.h"
#include "cluster/transport/asio_transport.hpp"
#include "cluster/transport/frame_codec.hpp"
#include "runtime/error.hpp"
#include "runtime/log.hpp"

using namespace granary;
using namespace granary::cluster;
using steady = std::chrono::steady_clock;

namespace {

struct options {
  bool json = false;
  size_t round_trips = 20000;
  size_t frames = 1000000;
};

struct latency {
  double p50_us = 0;
  double p99_us = 0;
};

latency percentiles(std::vector<double>& samples) {
  std::sort(samples.begin(), samples.end());
  auto at = [&](double q) {
    return samples[std::min(samples.size() - 1,
                            static_cast<size_t>(q * samples.size()))];
  };
  return {at(0.50), at(0.99)};
}

double us_since(steady::time_point t0) {
  return std::chrono::duration<double, std::micro>(steady::now() - t0).count();
}

Frame ping(uint64_t nonce) {
  Frame f;
  f.mutable_ping()->set_nonce(nonce);
  f.mutable_ping()->set_sent_us(1700000000000000 + static_cast<int64_t>(nonce));
  return f;
}

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "transport_bench: %s\n", what.c_str());
  std::exit(1);
}

asio_transport_config config(const char* silo) {
  asio_transport_config cfg;
  cfg.cluster_id = "bench";
  cfg.silo_id = silo;
  return cfg;
}

// -- ours --------------------------------------------------------------------

latency ours_round_trip(size_t n) {
  std::atomic<uint32_t> pongs{0};
  asio_transport a{config("a")};
  asio_transport b{config("b")};
  a.set_handler([&](const peer_info&, Frame&&) {
    pongs.fetch_add(1, std::memory_order_release);
    pongs.notify_one();
  });
  b.set_handler([&b](const peer_info& from, Frame&& f) {
    // The reply has the same size as the request.
    if (auto err = b.send({from.silo_id, from.address}, f))
      die(describe(err));
  });
  auto pa = a.start({"127.0.0.1", 0});
  auto pb = b.start({"127.0.0.1", 0});
  if (!pa || !pb)
    die("cannot start the transports");
  peer_address to{"b", {"127.0.0.1", *pb}};
  std::vector<double> samples;
  samples.reserve(n);
  auto warmup = std::min<size_t>(1000, n);
  auto frame = ping(1);
  for (size_t i = 0; i < warmup + n; ++i) {
    auto t0 = steady::now();
    if (auto err = a.send(to, frame))
      die(describe(err));
    auto want = static_cast<uint32_t>(i + 1);
    // Bounded: one pong per ping arrives.
    for (auto seen = pongs.load(); seen < want; seen = pongs.load())
      pongs.wait(seen);
    if (i >= warmup)
      samples.push_back(us_since(t0));
  }
  return percentiles(samples);
}

double ours_one_way(size_t n) {
  std::atomic<uint32_t> received{0};
  auto target = static_cast<uint32_t>(n);
  asio_transport a{config("a")};
  asio_transport b{config("b")};
  b.set_handler([&](const peer_info&, Frame&&) {
    auto now = received.fetch_add(1, std::memory_order_release) + 1;
    if (now == target || now == 1)
      received.notify_one();
  });
  auto pa = a.start({"127.0.0.1", 0});
  auto pb = b.start({"127.0.0.1", 0});
  if (!pa || !pb)
    die("cannot start the transports");
  peer_address to{"b", {"127.0.0.1", *pb}};
  // Connect before measuring.
  if (auto err = a.send(to, ping(0)))
    die(describe(err));
  for (auto seen = received.load(); seen < 1; seen = received.load())
    received.wait(seen);
  received = 0;
  auto t0 = steady::now();
  auto frame = ping(1);
  for (size_t i = 0; i < n; ++i) {
    // Bounded by the receiver draining the queue; overloaded means wait.
    for (;;) {
      auto err = a.send(to, frame);
      if (!err)
        break;
      if (code_of(err) != errc::overloaded)
        die(describe(err));
      std::this_thread::yield();
    }
  }
  for (auto seen = received.load(); seen < target; seen = received.load())
    received.wait(seen);
  auto secs = us_since(t0) / 1e6;
  return static_cast<double>(n) / secs;
}

// -- raw TCP -----------------------------------------------------------------

int listen_socket(uint16_t& port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0
      || ::listen(fd, 4) != 0)
    die("cannot listen");
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  port = ntohs(addr.sin_port);
  return fd;
}

int connect_socket(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
    die("cannot connect");
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

int accept_socket(int lfd) {
  int fd = ::accept(lfd, nullptr, nullptr);
  if (fd < 0)
    die("cannot accept");
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

bool read_exactly(int fd, char* buf, size_t n) {
  size_t done = 0;
  // Bounded by n, or by the first error.
  while (done < n) {
    auto got = ::recv(fd, buf + done, n - done, 0);
    if (got <= 0)
      return false;
    done += static_cast<size_t>(got);
  }
  return true;
}

bool write_all(int fd, const char* buf, size_t n) {
  size_t done = 0;
  // Bounded by n, or by the first error.
  while (done < n) {
    auto put = ::send(fd, buf + done, n - done, MSG_NOSIGNAL);
    if (put <= 0)
      return false;
    done += static_cast<size_t>(put);
  }
  return true;
}

latency raw_round_trip(size_t n, size_t frame_bytes) {
  uint16_t port = 0;
  int lfd = listen_socket(port);
  std::thread echo{[&] {
    int fd = accept_socket(lfd);
    std::vector<char> buf(frame_bytes);
    // Ends when the client closes.
    while (read_exactly(fd, buf.data(), frame_bytes)
           && write_all(fd, buf.data(), frame_bytes)) {
    }
    ::close(fd);
  }};
  int fd = connect_socket(port);
  std::string out;
  if (append_frame(ping(1), 1 << 20, out))
    die("cannot encode");
  std::vector<char> in(frame_bytes);
  std::vector<double> samples;
  samples.reserve(n);
  auto warmup = std::min<size_t>(1000, n);
  for (size_t i = 0; i < warmup + n; ++i) {
    auto t0 = steady::now();
    if (!write_all(fd, out.data(), out.size())
        || !read_exactly(fd, in.data(), frame_bytes))
      die("raw ping-pong failed");
    if (i >= warmup)
      samples.push_back(us_since(t0));
  }
  ::close(fd);
  echo.join();
  ::close(lfd);
  return percentiles(samples);
}

/// Writes `n` copies of an encoded frame, `per_write` frames per write call,
/// to a reader that splits them at their length prefixes.
double raw_one_way(size_t n, size_t per_write) {
  uint16_t port = 0;
  int lfd = listen_socket(port);
  std::atomic<bool> done{false};
  std::thread reader{[&] {
    int fd = accept_socket(lfd);
    std::vector<char> buf(256 * 1024);
    size_t have = 0;
    size_t frames = 0;
    // Ends after n frames or when the writer closes.
    while (frames < n) {
      auto got = ::recv(fd, buf.data() + have, buf.size() - have, 0);
      if (got <= 0)
        break;
      have += static_cast<size_t>(got);
      size_t pos = 0;
      // Bounded by the bytes in the buffer.
      while (have - pos >= 4) {
        auto* p = reinterpret_cast<const uint8_t*>(buf.data() + pos);
        size_t len = (size_t{p[0]} << 24) | (size_t{p[1]} << 16)
                     | (size_t{p[2]} << 8) | size_t{p[3]};
        if (have - pos < 4 + len)
          break;
        pos += 4 + len;
        ++frames;
      }
      std::memmove(buf.data(), buf.data() + pos, have - pos);
      have -= pos;
    }
    done = true;
    ::close(fd);
  }};
  int fd = connect_socket(port);
  std::string one;
  if (append_frame(ping(1), 1 << 20, one))
    die("cannot encode");
  std::string batch;
  for (size_t i = 0; i < per_write; ++i)
    batch += one;
  auto t0 = steady::now();
  for (size_t sent = 0; sent < n; sent += per_write) {
    auto k = std::min(per_write, n - sent);
    if (!write_all(fd, batch.data(), k * one.size()))
      die("raw write failed");
  }
  reader.join();
  auto secs = us_since(t0) / 1e6;
  ::close(fd);
  ::close(lfd);
  if (!done)
    die("raw reader failed");
  return static_cast<double>(n) / secs;
}

} // namespace

int main(int argc, char** argv) {
  options opt;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--json")
      opt.json = true;
    else if (arg == "--round-trips" && i + 1 < argc)
      opt.round_trips = std::max(1ul, std::strtoul(argv[++i], nullptr, 10));
    else if (arg == "--frames" && i + 1 < argc)
      opt.frames = std::max(1ul, std::strtoul(argv[++i], nullptr, 10));
    else
      die("usage: transport_bench [--json] [--round-trips N] [--frames N]");
  }
  // Whatever goes wrong, the benchmark ends.
  ::alarm(600);
  // Teardown logs lost connections; they are expected here.
  set_log_level(log_level::error);
  std::string encoded;
  if (append_frame(ping(1), 1 << 20, encoded))
    die("cannot encode");
  auto frame_bytes = encoded.size();

  auto ours_rtt = ours_round_trip(opt.round_trips);
  auto raw_rtt = raw_round_trip(opt.round_trips, frame_bytes);
  auto ours_tput = ours_one_way(opt.frames);
  auto raw_tput = raw_one_way(opt.frames, 1);
  auto per_batch = size_t{65536} / frame_bytes;
  auto raw_batched_tput = raw_one_way(opt.frames, per_batch);

  if (opt.json) {
    std::printf(
        "{\"frame_bytes\": %zu, \"round_trips\": %zu, \"frames\": %zu,\n"
        " \"rtt_p50_us\": {\"ours\": %.1f, \"raw\": %.1f, \"ratio\": %.2f},\n"
        " \"rtt_p99_us\": {\"ours\": %.1f, \"raw\": %.1f, \"ratio\": %.2f},\n"
        " \"one_way_frames_per_s\": {\"ours\": %.0f, \"raw\": %.0f, "
        "\"ratio\": %.2f, \"raw_64k_writes\": %.0f}}\n",
        frame_bytes, opt.round_trips, opt.frames, ours_rtt.p50_us,
        raw_rtt.p50_us, ours_rtt.p50_us / raw_rtt.p50_us, ours_rtt.p99_us,
        raw_rtt.p99_us, ours_rtt.p99_us / raw_rtt.p99_us, ours_tput, raw_tput,
        ours_tput / raw_tput, raw_batched_tput);
    return 0;
  }
  std::printf("transport_bench: loopback, %zu-byte frames (prefix included), "
              "%zu round trips, %zu one-way frames\n\n",
              frame_bytes, opt.round_trips, opt.frames);
  std::printf("%-34s %12s %12s %10s\n", "", "asio_transport", "raw TCP",
              "ours/raw");
  std::printf("%-34s %12.1f %12.1f %10.2f\n", "serial round trip p50 (us)",
              ours_rtt.p50_us, raw_rtt.p50_us,
              ours_rtt.p50_us / raw_rtt.p50_us);
  std::printf("%-34s %12.1f %12.1f %10.2f\n", "serial round trip p99 (us)",
              ours_rtt.p99_us, raw_rtt.p99_us,
              ours_rtt.p99_us / raw_rtt.p99_us);
  std::printf("%-34s %12.0f %12.0f %10.2f\n",
              "one-way frames/s (raw: 1 write/frame)", ours_tput, raw_tput,
              ours_tput / raw_tput);
  std::printf("%-34s %12s %12.0f %10.2f\n",
              "one-way frames/s (raw: 64 KiB writes)", "", raw_batched_tput,
              ours_tput / raw_batched_tput);
  return 0;
}

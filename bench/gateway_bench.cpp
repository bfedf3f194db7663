// The gateway's cost per request: a silo on memory storage with its HTTP
// gateway, driven over keep-alive connections by blocking clients in this
// process (a transient grain call and a workflow describe, alternating).
// Reports requests/s and CPU per request from getrusage, for the whole
// process and without the clients' own threads (the silo and the gateway).
//
//     gateway_bench [--requests N] [--connections C]

#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include "actors/workflow.hpp"
#include "gateway/gateway.hpp"
#include "testing/raw_socket.hpp"
#include "testing/test_grains.hpp"

using namespace granary;
using namespace granary::testing;

namespace {

// A workflow that finishes at once: something to describe.
class bench_flow : public workflow<bench_flow, Get, Value> {
public:
  static constexpr std::string_view type_name = "bench.flow";

  task<Value> run(workflow_context&, const Get&) {
    Value v;
    v.set_value(1);
    co_return v;
  }
};

double cpu_seconds(int who) {
  rusage ru{};
  getrusage(who, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec)
         + static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// One keep-alive connection with a blocking request/response exchange.
class connection {
public:
  explicit connection(uint16_t port)
      : conn_(port) {}

  // Sends `req` and reads one response; returns its status (0 on failure).
  unsigned exchange(const std::string& req) {
    if (!conn_.connected() || !conn_.send(req))
      return 0;
    // Bounded: every pass reads at least one byte, and a response is
    // refused beyond 1 MiB.
    for (;;) {
      auto end = in_.find("\r\n\r\n");
      if (end != std::string::npos) {
        auto total = end + 4 + content_length(in_.substr(0, end));
        if (in_.size() >= total) {
          unsigned status = std::atoi(in_.c_str() + 9);
          in_.erase(0, total);
          return status;
        }
      }
      auto part = conn_.read_some(std::chrono::seconds{30});
      if (part.empty() || in_.size() > (1 << 20))
        return 0;
      in_ += part;
    }
  }

private:
  static size_t content_length(std::string head) {
    for (auto& c : head)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    constexpr std::string_view name = "content-length:";
    auto at = head.find(name);
    return at == std::string::npos
               ? 0
               : std::strtoul(head.c_str() + at + name.size(), nullptr, 10);
  }

  raw_connection conn_;
  std::string in_;
};

std::string post(const std::string& target, const std::string& body) {
  return "POST " + target
         + " HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
           "Content-Length: "
         + std::to_string(body.size()) + "\r\n\r\n" + body;
}

std::string get(const std::string& target) {
  return "GET " + target + " HTTP/1.1\r\nHost: bench\r\n\r\n";
}

} // namespace

int main(int argc, char** argv) {
  size_t requests = 100'000;
  size_t connections = 16;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    auto value = std::strtoull(argv[i + 1], nullptr, 10);
    if (flag == "--requests")
      requests = value;
    else if (flag == "--connections")
      connections = value;
    else {
      std::fprintf(stderr,
                   "usage: gateway_bench [--requests N] [--connections C]\n");
      return 2;
    }
  }
  if (connections < 1 || requests < connections) {
    std::fprintf(stderr, "gateway_bench: need requests >= connections >= 1\n");
    return 2;
  }
  silo_config cfg;
  cfg.partitions = 8;
  grain_registry reg;
  if (register_grain<probe>(reg)
      || register_workflow<bench_flow>(reg, nullptr)) {
    std::fprintf(stderr, "gateway_bench: cannot register the grains\n");
    return 1;
  }
  auto s = silo::start(cfg, std::move(reg), std::make_unique<memory_storage>());
  if (!s) {
    std::fprintf(stderr, "gateway_bench: %s\n", describe(s.error()).c_str());
    return 1;
  }
  cluster::gateway_config gcfg;
  gcfg.max_connections = std::max<size_t>(256, connections + 8);
  auto gw = cluster::gateway::start(gcfg, **s);
  if (!gw) {
    std::fprintf(stderr, "gateway_bench: %s\n", describe(gw.error()).c_str());
    return 1;
  }
  auto port = (*gw)->port();
  {
    connection c{port};
    auto started = c.exchange(post("/v1/workflows/bench.flow/w-1/start",
                                   R"({"input_type":)"
                                   R"("granary.testing.Get"})"));
    if (started != 201) {
      std::fprintf(stderr, "gateway_bench: the workflow start answered %u\n",
                   started);
      return 1;
    }
  }
  auto call = post("/v1/grains/test.probe/k-1/call",
                   R"({"type":"granary.testing.Get","message":{}})");
  auto describe_req = get("/v1/workflows/bench.flow/w-1");
  std::atomic<size_t> failures{0};
  std::vector<double> client_cpu(connections, 0);
  std::vector<std::thread> clients;
  auto per_client = requests / connections;
  auto cpu0 = cpu_seconds(RUSAGE_SELF);
  auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < connections; ++i)
    clients.emplace_back([&, i] {
      auto c0 = thread_cpu_seconds();
      connection c{port};
      for (size_t n = 0; n < per_client; ++n)
        if (c.exchange(n % 2 == 0 ? call : describe_req) != 200)
          ++failures;
      client_cpu[i] = thread_cpu_seconds() - c0;
    });
  for (auto& t : clients)
    t.join();
  auto secs
      = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
  auto cpu = cpu_seconds(RUSAGE_SELF) - cpu0;
  double clients_cpu = 0;
  for (auto c : client_cpu)
    clients_cpu += c;
  auto done = per_client * connections;
  std::printf("gateway_bench: %zu requests (grain call + workflow describe) "
              "over %zu keep-alive connections, %zu failed\n",
              done, connections, failures.load());
  std::printf("  %.0f requests/s, %.1f s\n", static_cast<double>(done) / secs,
              secs);
  std::printf("  CPU per request: %.1f us process, %.1f us without the "
              "clients (silo + gateway), %.1f us clients\n",
              cpu * 1e6 / static_cast<double>(done),
              (cpu - clients_cpu) * 1e6 / static_cast<double>(done),
              clients_cpu * 1e6 / static_cast<double>(done));
  (*gw)->stop();
  return failures.load() == 0 ? 0 : 1;
}

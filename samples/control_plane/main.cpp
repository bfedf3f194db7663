// The control-plane sample, on one embedded silo: creates namespaces while
// a fake cloud API process fails some of its calls, rolls a version out
// over the cells in rings, rotates certificates from a durable reminder,
// migrates a namespace, and then checks the API's record: nothing applied
// twice, nothing created twice, nothing leaked. Run it again on the same
// data directory: it resumes and duplicates nothing.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "cluster/transport/ports.hpp"
#include "gateway/gateway_client.hpp"
#include "host/silo_host.hpp"
#include "runtime/log.hpp"
#include "samples/control_plane/control_plane.hpp"
#include "samples/control_plane/fake_cloud/client.hpp"

using namespace std::chrono_literals;
using namespace granary;

namespace {

// The path of helper program `name`: next to this binary when it is there
// (an installed package puts every binary in one directory), else where
// the build made it.
std::string helper_binary(const char* built, const char* name) {
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    auto sibling = self.parent_path() / name;
    if (std::filesystem::is_regular_file(sibling, ec))
      return sibling.string();
  }
  return built;
}

struct options {
  std::string data_dir = "granary-control-plane-data";
  int namespaces = 200;
  int cells = 8;
  double fail_rate = 0.10;
  std::string latency = "2:20";
  double rate_limit = 400;
  uint64_t seed = 42;
  int threads = 32;
  std::string fake_cloud
      = helper_binary(GRANARY_FAKE_CLOUD_API, "fake_cloud_api");
  // 0: one embedded silo; n: n `control_plane_silo` processes, one killed.
  int cluster = 0;
};

[[noreturn]] void usage(const char* self, const std::string& problem) {
  std::fprintf(stderr,
               "control_plane_sample: %s\n"
               "usage: %s [--data DIR] [--namespaces N] [--cells N]\n"
               "          [--fail-rate F] [--latency-ms MIN:MAX]\n"
               "          [--rate-limit PER_S] [--seed N] [--threads N]\n"
               "          [--fake-cloud PATH] [--cluster N]\n",
               problem.c_str(), self);
  std::exit(2);
}

options parse(int argc, char** argv) {
  options o;
  auto value = [&](int& i) -> std::string {
    if (i + 1 >= argc)
      usage(argv[0], std::string{argv[i]} + " needs a value");
    return argv[++i];
  };
  auto number = [&](int& i, double lo, double hi) {
    auto flag = std::string{argv[i]};
    auto text = value(i);
    char* end = nullptr;
    auto v = std::strtod(text.c_str(), &end);
    if (end == text.c_str() || *end != '\0' || v < lo || v > hi)
      usage(argv[0], flag + " must be a number in [" + std::to_string(lo) + ", "
                         + std::to_string(hi) + "], not '" + text + "'");
    return v;
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--data")
      o.data_dir = value(i);
    else if (a == "--namespaces")
      o.namespaces = static_cast<int>(number(i, 1, 10'000));
    else if (a == "--cells")
      o.cells = static_cast<int>(number(i, 1, 256));
    else if (a == "--fail-rate")
      o.fail_rate = number(i, 0, 0.9);
    else if (a == "--latency-ms")
      o.latency = value(i);
    else if (a == "--rate-limit")
      o.rate_limit = number(i, 0, 1e6);
    else if (a == "--seed")
      o.seed = static_cast<uint64_t>(number(i, 0, 1e15));
    else if (a == "--threads")
      o.threads = static_cast<int>(number(i, 1, 256));
    else if (a == "--fake-cloud")
      o.fake_cloud = value(i);
    else if (a == "--cluster")
      o.cluster = static_cast<int>(number(i, 2, 9));
    else
      usage(argv[0], "unknown option '" + a + "'");
  }
  return o;
}

/// The fake cloud API as a child process.
struct api_process {
  pid_t pid = -1;
  uint16_t port = 0;

  ~api_process() {
    if (pid <= 0)
      return;
    ::kill(pid, SIGTERM);
    int status = 0;
    ::waitpid(pid, &status, 0);
  }
};

// Forks and execs `args` with its stdout on a pipe, and reads until a line
// containing `marker` is complete, for at most `limit`. Returns what was
// read (empty or without the marker when the child did not get there) and
// sets `pid`. The pipe is closed then: these children only print when they
// start and stop.
std::string spawn_until(std::vector<std::string> args, std::string_view marker,
                        std::chrono::milliseconds limit, pid_t& pid,
                        const std::string& stderr_log = {}) {
  int fds[2];
  if (::pipe(fds) != 0)
    return {};
  pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return {};
  }
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    if (!stderr_log.empty()) {
      // Its warnings go to a log file, not across the progress line.
      int log = ::open(stderr_log.c_str(),
                       O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (log >= 0)
        ::dup2(log, STDERR_FILENO);
    }
    ::close(fds[0]);
    ::close(fds[1]);
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    std::fprintf(stderr, "cannot run %s: %s\n", argv[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(fds[1]);
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    auto at = out.find(marker);
    if (at != std::string::npos && out.find('\n', at) != std::string::npos)
      break;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{fds[0], POLLIN, 0};
    if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0)
      break;
    char buf[512];
    auto n = ::read(fds[0], buf, sizeof(buf));
    if (n <= 0)
      break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  return out;
}

caf::error start_api(const options& o, api_process& api) {
  auto burst = std::to_string(std::max(1, static_cast<int>(o.rate_limit / 4)));
  std::vector<std::string> args{
      o.fake_cloud, "--port", "0", "--seed", std::to_string(o.seed),
      "--latency-ms", o.latency,
      // Half before applying, half after: the
      // nasty case idempotency keys exist for.
      "--fail-rate", std::to_string(o.fail_rate / 2), "--fail-after-apply-rate",
      std::to_string(o.fail_rate / 2), "--timeout-rate", "0.005",
      "--timeout-ms", "300"};
  if (o.rate_limit > 0) {
    args.push_back("--rate-limit");
    args.push_back(std::to_string(static_cast<int>(o.rate_limit * 1.2)) + ":"
                   + burst);
  }
  // Waits for "listening on HOST:PORT" (10 s at most).
  auto line = spawn_until(std::move(args), "listening on", 10s, api.pid);
  if (auto nl = line.find('\n'); nl != std::string::npos)
    line.resize(nl);
  auto colon = line.rfind(':');
  if (line.find("listening on") == std::string::npos
      || colon == std::string::npos)
    return make_error(errc::unspecified, "the fake cloud API (" + o.fake_cloud
                                             + ") did not start: '" + line
                                             + "'");
  api.port = static_cast<uint16_t>(std::atoi(line.c_str() + colon + 1));
  return caf::none;
}

std::string ns_name(int i) {
  return "ns-" + std::to_string(i);
}

std::string tier_of(int i) {
  // Every 25th namespace asks for more quota than a cell grants: its
  // creation fails for good after four resources exist, and compensates.
  if (i % 25 == 7)
    return "xl";
  return i % 5 == 0 ? "large" : "standard";
}

wire::WorkflowInfo describe_run(silo& s, const grain_id& id) {
  auto r = s.call(id, std::make_shared<wire::DescribeWorkflow>(), 5s);
  return r ? static_cast<const wire::WorkflowInfo&>(**r) : wire::WorkflowInfo{};
}

std::string stage_of(silo& s, const grain_id& id) {
  auto st = query_workflow<cp::Stage>(s, id, "stage");
  return st ? st->stage() : std::string{};
}

bool finished(const wire::WorkflowInfo& info) {
  return info.status() == wire::WorkflowState::COMPLETED
         || info.status() == wire::WorkflowState::FAILED;
}

// Starts workflow `id` with `input` unless it exists; true if it started.
template <class In>
caf::expected<bool> start(silo& s, const grain_id& id, const In& input) {
  auto m = std::make_shared<wire::StartWorkflow>();
  m->set_input_type(std::string{In::descriptor()->full_name()});
  input.SerializeToString(m->mutable_input());
  auto r = s.call(id, m, 10s);
  if (!r)
    return std::move(r.error());
  return static_cast<const wire::WorkflowInfo&>(**r).started();
}

// The live progress line on stdout, and log lines that must not break
// it: a log line clears the progress line, goes on a line of its own (to
// stderr), and the progress line is drawn again below it.
class console {
public:
  /// Replaces the progress line with `text`.
  void progress(const std::string& text) {
    std::lock_guard guard{mtx_};
    draw(text);
    line_ = text;
  }

  /// Ends the progress line: it stays, and output goes on below it.
  void end_progress() {
    std::lock_guard guard{mtx_};
    if (!line_.empty())
      std::fputc('\n', stdout);
    std::fflush(stdout);
    line_.clear();
    shown_ = 0;
  }

  /// Prints `text` on a line of its own.
  void note(std::string_view text) {
    std::lock_guard guard{mtx_};
    auto line = line_;
    if (!line.empty())
      draw({});
    std::fprintf(stderr, "%.*s\n", static_cast<int>(text.size()), text.data());
    std::fflush(stderr);
    if (!line.empty())
      draw(line);
  }

private:
  // Overwrites what is shown with `text` (padding over a longer line).
  void draw(const std::string& text) {
    std::string out = "\r" + text;
    if (shown_ > text.size())
      out.append(shown_ - text.size(), ' ').append("\r" + text);
    std::fputs(out.c_str(), stdout);
    std::fflush(stdout);
    shown_ = text.size();
  }

  std::mutex mtx_;
  std::string line_;
  size_t shown_ = 0;
};

console screen;

// What `id` published as its stage, or its status when it publishes none.
std::string stage_or_status(silo& s, const grain_id& id,
                            const wire::WorkflowInfo& info) {
  auto stage = stage_of(s, id);
  return stage.empty() ? wire::WorkflowState::Status_Name(info.status())
                       : stage;
}

// Waits until `id` finishes, printing `label` with its stage.
wire::WorkflowInfo wait_run(silo& s, const grain_id& id,
                            const std::string& label,
                            std::chrono::seconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  wire::WorkflowInfo info;
  while (std::chrono::steady_clock::now() < deadline) {
    info = describe_run(s, id);
    if (finished(info))
      break;
    screen.progress(label + ": " + stage_or_status(s, id, info));
    std::this_thread::sleep_for(200ms);
  }
  screen.progress(
      label + ": "
      + (finished(info) ? stage_or_status(s, id, info) : "still running"));
  screen.end_progress();
  return info;
}

// -- cluster mode -------------------------------------------------------------

/// One `control_plane_silo` child process.
struct silo_child {
  pid_t pid = -1;

  ~silo_child() {
    stop(SIGKILL);
  }

  // Starts it and waits (up to 30 s) for its "ready" line.
  caf::error start(const std::string& config, uint16_t api_port,
                   const std::string& log) {
    static const auto silo_bin
        = helper_binary(GRANARY_CP_SILO, "control_plane_silo");
    auto out = spawn_until({silo_bin, "--config", config, "--cloud-api",
                            "127.0.0.1:" + std::to_string(api_port)},
                           "ready ", 30s, pid, log);
    if (out.find("ready ") == std::string::npos)
      return make_error(errc::unspecified, "control_plane_silo (" + config
                                               + ") did not start: " + out);
    return caf::none;
  }

  // Sends `sig` and reaps the process.
  void stop(int sig) {
    if (pid <= 0)
      return;
    ::kill(pid, sig);
    int status = 0;
    ::waitpid(pid, &status, 0);
    pid = -1;
  }
};

// Runs the namespaces on `n` silo processes, SIGKILLs one half-way and
// restarts it; returns the summary checks' exit code.
int run_cluster(const options& o, uint16_t api_port, int n) {
  namespace fs = std::filesystem;
  auto dir = fs::path{o.data_dir} / "cluster";
  std::error_code ec;
  fs::create_directories(dir, ec);
  // Ports are kept in the directory, so that a re-run finds the same
  // cluster layout.
  std::vector<uint16_t> silo_ports;
  std::vector<uint16_t> gw_ports;
  auto ports_file = dir / "ports";
  if (std::ifstream in{ports_file}; in) {
    uint16_t a = 0, b = 0;
    while (in >> a >> b) {
      silo_ports.push_back(a);
      gw_ports.push_back(b);
    }
  }
  if (static_cast<int>(silo_ports.size()) != n) {
    silo_ports.clear();
    gw_ports.clear();
    std::ofstream out{ports_file};
    for (int i = 0; i < n; ++i) {
      auto silo_port = granary::cluster::pick_free_port();
      auto gw_port = granary::cluster::pick_free_port();
      if (!silo_port || !gw_port) {
        std::fprintf(
            stderr, "control_plane_sample: %s\n",
            granary::describe(silo_port ? gw_port.error() : silo_port.error())
                .c_str());
        return 1;
      }
      silo_ports.push_back(*silo_port);
      gw_ports.push_back(*gw_port);
      out << silo_ports.back() << " " << gw_ports.back() << "\n";
    }
  }
  // silo-0 is the seed that keeps the membership table.
  auto seed = "\"silo-0@127.0.0.1:" + std::to_string(silo_ports[0]) + "\"";
  std::vector<std::string> configs;
  for (int i = 0; i < n; ++i) {
    auto path = (dir / ("silo-" + std::to_string(i) + ".toml")).string();
    std::ofstream out{path};
    out << "cluster_id = \"control-plane\"\nsilo_id = \"silo-" << i
        << "\"\ndata_dir = \"" << (dir / ("data-" + std::to_string(i))).string()
        << "\"\npartitions = 24\n[listen]\nsilo = \"127.0.0.1:" << silo_ports[i]
        << "\"\ngateway = \"127.0.0.1:" << gw_ports[i]
        << "\"\n[membership]\nprovider = \"embedded\"\nseeds = [" << seed
        << "]\nprobe_interval_ms = 250\n[limits]\nthreads = "
           "2\nredelivery_timeout_ms = 500\n";
    configs.push_back(path);
  }
  std::vector<silo_child> silos(static_cast<size_t>(n));
  std::vector<std::string> logs;
  for (int i = 0; i < n; ++i)
    logs.push_back((dir / ("silo-" + std::to_string(i) + ".log")).string());
  for (int i = 0; i < n; ++i) {
    if (auto err = silos[i].start(configs[i], api_port, logs[i])) {
      std::fprintf(stderr, "control_plane_sample: %s\n", describe(err).c_str());
      return 1;
    }
  }
  std::printf(
      "cluster: %d control_plane_silo processes on 127.0.0.1, gateways ", n);
  for (int i = 0; i < n; ++i)
    std::printf("%s%u", i ? ", " : "", gw_ports[i]);
  std::printf("; their logs are %s/silo-N.log\n", dir.string().c_str());
  cluster::gateway_client gw{cluster::endpoint{"127.0.0.1", gw_ports[0]}, 15s};
  int fresh = 0;
  for (int i = 0; i < o.namespaces; ++i) {
    auto name = ns_name(i);
    auto input = "{\"name\":\"" + name + "\",\"cell\":\"cell-"
                 + std::to_string(i % o.cells) + "\",\"tier\":\"" + tier_of(i)
                 + "\"}";
    auto r = gw.start_workflow("cp.create_namespace", name,
                               "granary.cp.CreateNamespace", input);
    if (!r) {
      std::fprintf(stderr, "control_plane_sample: starting %s: %s\n",
                   name.c_str(), describe(r.error()).c_str());
      return 1;
    }
    fresh += r->find("\"started\":true") != std::string::npos ? 1 : 0;
  }
  std::printf("namespaces: %d requested through silo-0's gateway, %d started "
              "now\n",
              o.namespaces, fresh);
  auto status = [&](int i) -> std::string {
    auto r = gw.describe_workflow("cp.create_namespace", ns_name(i));
    if (!r)
      return {};
    for (auto s : {"COMPLETED", "FAILED", "RUNNING"})
      if (r->find(std::string{"\"status\":\""} + s + "\"") != std::string::npos)
        return s;
    return "NEW";
  };
  bool killed = n < 2;
  bool killed_now = false;
  std::set<int> ready;
  std::set<int> failed;
  auto deadline = std::chrono::steady_clock::now() + 10min;
  while (std::chrono::steady_clock::now() < deadline) {
    ready.clear();
    failed.clear();
    int unreachable = 0;
    for (int i = 0; i < o.namespaces; ++i) {
      auto st = status(i);
      if (st == "COMPLETED")
        ready.insert(i);
      else if (st == "FAILED")
        failed.insert(i);
      else if (st.empty())
        ++unreachable;
    }
    auto done = static_cast<int>(ready.size() + failed.size());
    char line[200];
    std::snprintf(line, sizeof(line),
                  "namespaces: %d/%d done (%zu ready, %zu failed or "
                  "compensated), %d on a silo that is down",
                  done, o.namespaces, ready.size(), failed.size(), unreachable);
    screen.progress(line);
    if (done == o.namespaces)
      break;
    if (!killed && done >= o.namespaces / 2) {
      killed = true;
      killed_now = true;
      screen.end_progress();
      std::printf("killing silo-1 with SIGKILL at %d/%d namespaces\n", done,
                  o.namespaces);
      silos[1].stop(SIGKILL);
      std::this_thread::sleep_for(1s);
      std::printf("restarting silo-1 on its data directory\n");
      if (auto err = silos[1].start(configs[1], api_port, logs[1])) {
        std::fprintf(stderr, "control_plane_sample: %s\n",
                     describe(err).c_str());
        return 1;
      }
    }
    std::this_thread::sleep_for(300ms);
  }
  screen.end_progress();
  fake_cloud::client probe{"127.0.0.1", api_port, 2s};
  auto audit = probe.audit();
  // The whole cluster stops: signal every silo at once, so that none
  // hands its partitions to another one that is stopping too.
  for (auto& s : silos)
    if (s.pid > 0)
      ::kill(s.pid, SIGTERM);
  for (auto& s : silos)
    s.stop(SIGTERM);
  if (!audit) {
    std::fprintf(stderr, "control_plane_sample: reading the API audit: %s\n",
                 describe(audit.error()).c_str());
    return 1;
  }
  std::vector<std::string> problems;
  for (auto& k : audit->keys_applied_more_than_once)
    problems.push_back("idempotency key applied twice: " + k);
  for (auto& d : audit->double_creates)
    problems.push_back("created twice: " + d.kind + "/" + d.name);
  std::set<std::string> ready_names;
  for (auto i : ready)
    ready_names.insert(ns_name(i));
  for (auto& r : audit->resources)
    if (r.live && r.kind != "cell" && ready_names.count(r.name) == 0)
      problems.push_back("leaked: " + r.kind + "/" + r.name);
  if (static_cast<int>(ready.size() + failed.size()) != o.namespaces)
    problems.push_back("not every namespace finished");
  std::printf("summary: %zu ready, %zu compensated on %d silos%s; API: %llu "
              "mutations applied, %llu replayed\n",
              ready.size(), failed.size(), n,
              killed_now ? " (silo-1 killed and restarted mid-run)" : "",
              static_cast<unsigned long long>(audit->applied),
              static_cast<unsigned long long>(audit->replayed));
  if (problems.empty()) {
    std::printf("checks: no mutation applied twice, no resource created "
                "twice, none leaked\n");
    return 0;
  }
  for (auto& p : problems)
    std::printf("CHECK FAILED: %s\n", p.c_str());
  return 1;
}

} // namespace

int main(int argc, char** argv) {
  auto o = parse(argc, argv);
  auto t0 = std::chrono::steady_clock::now();
  api_process api;
  if (auto err = start_api(o, api)) {
    std::fprintf(stderr, "control_plane_sample: %s\n", describe(err).c_str());
    return 1;
  }
  std::printf("fake cloud API on 127.0.0.1:%u (fail rate %.0f%%, latency "
              "%s ms, seed %llu)\n",
              api.port, o.fail_rate * 100, o.latency.c_str(),
              static_cast<unsigned long long>(o.seed));
  if (o.cluster > 0)
    return run_cluster(o, api.port, o.cluster);
  // The silo's warnings (retried calls, refused quotas) go on lines of
  // their own, not into the middle of the progress line.
  set_log_sink([](log_level level, std::string_view line) {
    const char* name = level == log_level::error     ? "error"
                       : level == log_level::warning ? "warning"
                                                     : "info";
    screen.note("granary " + std::string{name} + ": " + std::string{line});
  });
  // One embedded silo on RocksDB, built by the host without a gateway: the
  // sample drives it in process.
  host::silo_file_config sc;
  sc.cluster_id = "local";
  sc.silo_id = "silo-0";
  sc.data_dir = o.data_dir;
  host::silo_builder builder;
  builder.config(sc)
      .gateway(false)
      .activity_pool_size(static_cast<size_t>(o.threads))
      .grains([&](host::registration& r) -> caf::error {
        auto cloud = std::make_shared<cp::cloud_config>();
        cloud->port = api.port;
        cloud->rate_per_s = o.rate_limit;
        cloud->burst = static_cast<uint32_t>(std::max(1.0, o.rate_limit / 4));
        if (auto err = r.services.add(std::move(cloud)))
          return err;
        return cp::register_all(r.grains, r.activities);
      });
  auto started = builder.start();
  if (!started) {
    std::fprintf(stderr, "control_plane_sample: %s\n",
                 describe(started.error()).c_str());
    return 1;
  }
  auto& s = (*started)->runtime();
  fake_cloud::client probe{"127.0.0.1", api.port, 2s};

  // 1. Namespaces.
  int fresh = 0;
  for (int i = 0; i < o.namespaces; ++i) {
    cp::CreateNamespace in;
    in.set_name(ns_name(i));
    in.set_cell("cell-" + std::to_string(i % o.cells));
    in.set_tier(tier_of(i));
    auto r = start(s, id_of<cp::create_namespace>(in.name()), in);
    if (!r) {
      std::fprintf(stderr, "\ncontrol_plane_sample: starting %s: %s\n",
                   in.name().c_str(), describe(r.error()).c_str());
      return 1;
    }
    fresh += *r ? 1 : 0;
  }
  std::printf("namespaces: %d requested, %d started now, %d found from an "
              "earlier run\n",
              o.namespaces, fresh, o.namespaces - fresh);
  std::set<int> ready;
  std::set<int> compensated;
  std::set<int> failed;
  auto deadline = std::chrono::steady_clock::now() + 10min;
  while (std::chrono::steady_clock::now() < deadline) {
    ready.clear();
    compensated.clear();
    failed.clear();
    for (int i = 0; i < o.namespaces; ++i) {
      auto id = id_of<cp::create_namespace>(ns_name(i));
      auto info = describe_run(s, id);
      if (info.status() == wire::WorkflowState::COMPLETED)
        ready.insert(i);
      else if (info.status() == wire::WorkflowState::FAILED)
        (stage_of(s, id) == "compensated" ? compensated : failed).insert(i);
    }
    auto audit = probe.audit();
    auto done = ready.size() + compensated.size() + failed.size();
    char line[200];
    std::snprintf(
        line, sizeof(line),
        "namespaces: %zu/%d done (%zu ready, %zu compensated, %zu "
        "failed) | API: %llu applied, %llu faults, %llu throttled",
        done, o.namespaces, ready.size(), compensated.size(), failed.size(),
        audit ? static_cast<unsigned long long>(audit->applied) : 0ull,
        audit ? static_cast<unsigned long long>(
            audit->faults.failed_before_apply + audit->faults.failed_after_apply
            + audit->faults.timeouts)
              : 0ull,
        audit ? static_cast<unsigned long long>(audit->faults.rate_limited)
              : 0ull);
    screen.progress(line);
    if (static_cast<int>(done) == o.namespaces)
      break;
    std::this_thread::sleep_for(500ms);
  }
  screen.end_progress();

  // 2. A ring rollout over the cells, with a bake timer between rings.
  cp::RingRollout rollout;
  rollout.set_version("v2");
  rollout.set_cells(static_cast<uint32_t>(o.cells));
  rollout.set_rings(3);
  rollout.set_parallelism(2);
  rollout.set_bake_ms(300);
  auto rollout_id = id_of<cp::ring_rollout>("rollout-v2");
  if (auto r = start(s, rollout_id, rollout); !r) {
    std::fprintf(stderr, "control_plane_sample: %s\n",
                 describe(r.error()).c_str());
    return 1;
  }
  auto rolled = wait_run(s, rollout_id, "rollout", 120s);

  // 3. Certificate rotation, driven by a durable reminder, and 4. one
  // migration.
  std::vector<std::string> ready_names;
  for (auto i : ready)
    ready_names.push_back(ns_name(i));
  cp::WatchNamespaces watch;
  for (size_t i = 0; i < std::min<size_t>(ready_names.size(), 16); ++i)
    watch.add_namespaces(ready_names[i]);
  watch.set_interval_ms(1'000);
  auto rotator = id_of<cp::cert_rotator>("certs");
  auto rotation = id_of<cp::rotate_certificates>("certs-round-0");
  wire::WorkflowInfo rotated;
  if (watch.namespaces_size() > 0) {
    if (auto err = s.send(rotator, watch, "watch-certs")) {
      std::fprintf(stderr, "control_plane_sample: %s\n", describe(err).c_str());
      return 1;
    }
    rotated = wait_run(s, rotation, "certificate rotation (reminder)", 60s);
  }
  wire::WorkflowInfo migrated;
  if (!ready.empty() && o.cells > 1) {
    auto i = *ready.begin();
    cp::MigrateNamespace m;
    m.set_name(ns_name(i));
    m.set_from_cell("cell-" + std::to_string(i % o.cells));
    m.set_to_cell("cell-" + std::to_string((i + 1) % o.cells));
    auto id = id_of<cp::migrate_namespace>("migrate-" + m.name());
    if (auto r = start(s, id, m); !r) {
      std::fprintf(stderr, "control_plane_sample: %s\n",
                   describe(r.error()).c_str());
      return 1;
    }
    migrated = wait_run(s, id, "migrate " + m.name(), 60s);
  }

  // 5. The API's record.
  auto audit = probe.audit();
  static_cast<void>((*started)->stop());
  auto secs
      = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count();
  if (!audit) {
    std::fprintf(stderr, "control_plane_sample: reading the API audit: %s\n",
                 describe(audit.error()).c_str());
    return 1;
  }
  auto& f = audit->faults;
  std::printf("\nsummary: %zu namespaces ready, %zu compensated, %zu failed; "
              "rollout %s; rotation %s; migration %s; %.1f s\n",
              ready.size(), compensated.size(), failed.size(),
              wire::WorkflowState::Status_Name(rolled.status()).c_str(),
              wire::WorkflowState::Status_Name(rotated.status()).c_str(),
              wire::WorkflowState::Status_Name(migrated.status()).c_str(),
              secs);
  std::printf("API: %llu mutations applied, %llu replayed from the record; "
              "retried calls: %llu failed before applying, %llu failed after "
              "applying, %llu timed out, %llu throttled (429)\n",
              static_cast<unsigned long long>(audit->applied),
              static_cast<unsigned long long>(audit->replayed),
              static_cast<unsigned long long>(f.failed_before_apply),
              static_cast<unsigned long long>(f.failed_after_apply),
              static_cast<unsigned long long>(f.timeouts),
              static_cast<unsigned long long>(f.rate_limited));
  // The checks.
  std::vector<std::string> problems;
  for (auto& k : audit->keys_applied_more_than_once)
    problems.push_back("idempotency key applied twice: " + k);
  for (auto& d : audit->double_creates)
    problems.push_back("created twice: " + d.kind + "/" + d.name);
  std::set<std::string> ready_set{ready_names.begin(), ready_names.end()};
  std::map<std::string, int> live_per_kind;
  for (auto& r : audit->resources) {
    if (!r.live || r.kind == "cell")
      continue;
    ++live_per_kind[r.kind];
    if (ready_set.count(r.name) == 0)
      problems.push_back("leaked: " + r.kind + "/" + r.name
                         + " is live but its namespace is not ready");
  }
  if (fresh == o.namespaces) {
    // Everything was created by this API process: every ready namespace
    // owns exactly one live resource of each kind.
    for (auto kind : cp::namespace_kinds) {
      auto live = live_per_kind[std::string{kind}];
      if (live != static_cast<int>(ready.size()))
        problems.push_back(std::string{kind} + ": " + std::to_string(live)
                           + " live for " + std::to_string(ready.size())
                           + " ready namespaces");
    }
  }
  if (!failed.empty())
    problems.push_back(std::to_string(failed.size())
                       + " namespaces failed without compensating");
  if (problems.empty()) {
    std::printf("checks: no mutation applied twice, no resource created "
                "twice, none leaked%s\n",
                fresh == o.namespaces
                    ? ", every ready namespace owns its 5 resources"
                    : " (resumed run: this API process saw only new calls)");
    return 0;
  }
  for (auto& p : problems)
    std::printf("CHECK FAILED: %s\n", p.c_str());
  return 1;
}

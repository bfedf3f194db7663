// fake_cloud_api: the fake cloud provider API as a process, for the
// control-plane sample and for trying the API with curl. Prints
// "listening on HOST:PORT" when ready, runs until SIGINT or SIGTERM, then
// prints the audit summary as JSON.

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <string>
#include <string_view>

#include <pthread.h>

#include "runtime/error.hpp"
#include "samples/control_plane/fake_cloud/server.hpp"

namespace {

constexpr const char* usage
    = "usage: fake_cloud_api --port P [--host 127.0.0.1] [--seed N]\n"
      "         [--latency-ms MIN:MAX] [--fail-rate F]\n"
      "         [--fail-after-apply-rate F] [--rate-limit PER_S:BURST]\n"
      "         [--timeout-rate F] [--timeout-ms N] [--timeout-apply-rate F]\n"
      "         [--threads N] [--max-connections N] [--max-body-bytes N]\n"
      "         [--idle-timeout-ms N]\n";

constexpr std::string_view known_flags[]
    = {"--port",           "--host",
       "--seed",           "--latency-ms",
       "--fail-rate",      "--fail-after-apply-rate",
       "--rate-limit",     "--timeout-rate",
       "--timeout-ms",     "--timeout-apply-rate",
       "--threads",        "--max-connections",
       "--max-body-bytes", "--idle-timeout-ms"};

int bad_flag(const std::string& flag, const std::string& why) {
  std::fprintf(stderr, "fake_cloud_api: %s: %s\n%s", flag.c_str(), why.c_str(),
               usage);
  return 2;
}

bool parse_u64(std::string_view text, uint64_t& out) {
  if (text.empty() || text.size() > 19)
    return false;
  uint64_t n = 0;
  for (char c : text) {
    if (c < '0' || c > '9')
      return false;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  out = n;
  return true;
}

bool parse_double(const std::string& text, double& out) {
  if (text.empty())
    return false;
  char* end = nullptr;
  out = std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size();
}

bool parse_fraction(const std::string& text, double& out) {
  return parse_double(text, out) && out >= 0 && out <= 1;
}

/// Splits "A:B" at its colon.
bool split_pair(const std::string& text, std::string& a, std::string& b) {
  auto colon = text.find(':');
  if (colon == std::string::npos)
    return false;
  a = text.substr(0, colon);
  b = text.substr(colon + 1);
  return true;
}

} // namespace

int main(int argc, char** argv) {
  fake_cloud::server_config cfg;
  auto& f = cfg.faults;
  bool have_port = false;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(usage, stdout);
      return 0;
    }
    if (std::find(std::begin(known_flags), std::end(known_flags), flag)
        == std::end(known_flags))
      return bad_flag(flag, "unknown flag");
    if (i + 1 >= argc)
      return bad_flag(flag, "needs a value");
    std::string value = argv[++i];
    uint64_t n = 0;
    std::string a;
    std::string b;
    if (flag == "--port") {
      if (!parse_u64(value, n) || n > 65535)
        return bad_flag(flag, "'" + value + "' is not a port in [0, 65535]");
      cfg.port = static_cast<uint16_t>(n);
      have_port = true;
    } else if (flag == "--host") {
      cfg.host = value;
    } else if (flag == "--seed") {
      if (!parse_u64(value, f.seed))
        return bad_flag(flag, "'" + value + "' is not an unsigned integer");
    } else if (flag == "--latency-ms") {
      uint64_t lo = 0;
      uint64_t hi = 0;
      if (!split_pair(value, a, b) || !parse_u64(a, lo) || !parse_u64(b, hi)
          || lo > hi || hi > 600'000)
        return bad_flag(flag, "'" + value
                                  + "' is not MIN:MAX with 0 <= MIN <= MAX <= "
                                    "600000");
      f.latency_min = std::chrono::milliseconds{lo};
      f.latency_max = std::chrono::milliseconds{hi};
    } else if (flag == "--fail-rate") {
      if (!parse_fraction(value, f.fail_rate))
        return bad_flag(flag, "'" + value + "' is not a fraction in [0, 1]");
    } else if (flag == "--fail-after-apply-rate") {
      if (!parse_fraction(value, f.fail_after_apply_rate))
        return bad_flag(flag, "'" + value + "' is not a fraction in [0, 1]");
    } else if (flag == "--rate-limit") {
      uint64_t burst = 0;
      if (!split_pair(value, a, b) || !parse_double(a, f.rate_limit_per_s)
          || !(f.rate_limit_per_s > 0 && f.rate_limit_per_s <= 1e9)
          || !parse_u64(b, burst) || burst < 1 || burst > 1'000'000'000)
        return bad_flag(flag, "'" + value
                                  + "' is not PER_S:BURST with PER_S > 0 and "
                                    "BURST >= 1");
      f.rate_limit_burst = static_cast<uint32_t>(burst);
    } else if (flag == "--timeout-rate") {
      if (!parse_fraction(value, f.timeout_rate))
        return bad_flag(flag, "'" + value + "' is not a fraction in [0, 1]");
    } else if (flag == "--timeout-ms") {
      if (!parse_u64(value, n) || n > 600'000)
        return bad_flag(flag, "'" + value + "' is not in [0, 600000]");
      f.timeout = std::chrono::milliseconds{n};
    } else if (flag == "--timeout-apply-rate") {
      if (!parse_fraction(value, f.timeout_apply_rate))
        return bad_flag(flag, "'" + value + "' is not a fraction in [0, 1]");
    } else if (flag == "--threads") {
      if (!parse_u64(value, n) || n < 1 || n > 64)
        return bad_flag(flag, "'" + value + "' is not in [1, 64]");
      cfg.threads = n;
    } else if (flag == "--max-connections") {
      if (!parse_u64(value, n) || n < 1 || n > 100'000)
        return bad_flag(flag, "'" + value + "' is not in [1, 100000]");
      cfg.max_connections = n;
    } else if (flag == "--max-body-bytes") {
      if (!parse_u64(value, n) || n > 64 * 1024 * 1024)
        return bad_flag(flag, "'" + value + "' is not in [0, 67108864]");
      cfg.max_body_bytes = n;
    } else if (flag == "--idle-timeout-ms") {
      if (!parse_u64(value, n) || n < 1 || n > 600'000)
        return bad_flag(flag, "'" + value + "' is not in [1, 600000]");
      cfg.idle_timeout = std::chrono::milliseconds{n};
    } else {
      return bad_flag(flag, "unknown flag");
    }
  }
  if (!have_port)
    return bad_flag("--port", "is required (0 picks a free port)");
  if (auto err = fake_cloud::validate(cfg))
    return bad_flag("config", granary::describe(err));
  // Block the stop signals before any thread starts, so that every thread
  // inherits the mask and only `sigwait` below sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  auto srv = fake_cloud::server::start(cfg);
  if (!srv) {
    std::fprintf(stderr, "fake_cloud_api: %s\n",
                 granary::describe(srv.error()).c_str());
    return 1;
  }
  std::printf("listening on %s:%u\n", (*srv)->host().c_str(),
              static_cast<unsigned>((*srv)->port()));
  std::fflush(stdout);
  int sig = 0;
  sigwait(&stop_signals, &sig);
  (*srv)->stop();
  std::printf("%s\n", fake_cloud::to_json((*srv)->audit()).c_str());
  std::fflush(stdout);
  return 0;
}

#include "bench/measure.hpp"

#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "bench/report.hpp"
#include "runtime/error.hpp"

namespace granary::bench {

namespace {

using namespace std::chrono_literals;

/// CPU time of the whole process (all threads) in nanoseconds.
int64_t process_cpu_ns() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

/// Busy CPU time of the whole machine in nanoseconds, from /proc/stat.
int64_t machine_busy_ns() {
  std::ifstream in{"/proc/stat"};
  std::string cpu;
  int64_t user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0,
          softirq = 0, steal = 0;
  if (!(in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq
        >> steal))
    return 0;
  auto ticks = user + nice + system + irq + softirq + steal;
  return ticks * (1'000'000'000 / sysconf(_SC_CLK_TCK));
}

} // namespace

// -- time ---------------------------------------------------------------------

void cpu_meter::start() {
  proc0 = process_cpu_ns();
  machine0 = machine_busy_ns();
  wall0 = now_ns();
}

void cpu_meter::stop() {
  auto wall = static_cast<double>(std::max<int64_t>(now_ns() - wall0, 1));
  auto own = static_cast<double>(process_cpu_ns() - proc0);
  auto all = static_cast<double>(machine_busy_ns() - machine0);
  own_cores = own / wall;
  other_cores = std::max(0.0, (all - own) / wall);
}

load_figures figures_of(double ops_per_s, const histogram& hist,
                        const cpu_meter& cpu) {
  return {ops_per_s, hist.quantile_ms(0.5), hist.quantile_ms(0.99),
          hist.quantile_ms(0.999), cpu};
}

// -- closed-loop load ---------------------------------------------------------

caf::error run_timed(load_state& st, const std::string& label,
                     const std::string& unit, const progress_fn& progress,
                     const timed_hooks& hooks) {
  bool opened = false;
  auto open_window = [&] {
    opened = true;
    st.cpu.start();
    if (hooks.window_opened)
      hooks.window_opened();
  };
  auto next_report = st.t0_ns + to_ns(1);
  auto last_done = st.completed.load();
  auto last_ns = st.t0_ns;
  // Bounded by the window's end; each pass sleeps at most 50 ms.
  for (;;) {
    auto now = now_ns();
    if (!opened && now >= st.window_start_ns)
      open_window();
    if (now >= st.window_end_ns || st.outstanding.load() <= 0)
      break;
    if (progress && now >= next_report) {
      auto done = st.completed.load();
      auto rate = static_cast<double>(done - last_done) / to_s(now - last_ns);
      char buf[160];
      std::snprintf(buf, sizeof(buf), "[%s] %.0f/%.0f s: %s %s/s%s",
                    label.c_str(), to_s(now - st.t0_ns),
                    to_s(st.window_end_ns - st.t0_ns), fmt_rate(rate).c_str(),
                    unit.c_str(), opened ? "" : " (warm-up)");
      progress(buf);
      last_done = done;
      last_ns = now;
      next_report += to_ns(1);
    }
    auto wake = std::min(next_report, st.window_end_ns);
    if (!opened)
      wake = std::min(wake, st.window_start_ns);
    auto nap = std::clamp<int64_t>(wake - now, 0, 50'000'000);
    std::this_thread::sleep_for(std::chrono::nanoseconds{nap});
  }
  if (!opened)
    open_window();
  st.cpu.stop();
  if (hooks.window_closed)
    hooks.window_closed();
  st.stop = true;
  auto deadline = now_ns() + std::chrono::nanoseconds{drain_timeout}.count();
  while (st.outstanding.load() > 0 && now_ns() < deadline)
    std::this_thread::sleep_for(1ms);
  if (auto err = st.error())
    return err;
  if (auto left = st.outstanding.load(); left > 0)
    return make_error(errc::timeout, label + ": " + std::to_string(left)
                                         + " requests still in flight "
                                         + std::to_string(drain_timeout.count())
                                         + " s after the run ended");
  return caf::none;
}

double run_counted(counted_load& st, size_t concurrency, int64_t timeout_ns,
                   const std::function<void()>& issue, const std::string& label,
                   const std::string& verb, const progress_fn& progress) {
  auto slots = std::min<uint64_t>(concurrency, st.total);
  st.outstanding = static_cast<int64_t>(slots);
  st.t0_ns = now_ns();
  st.window_start_ns = st.t0_ns;
  st.window_end_ns = st.t0_ns + timeout_ns;
  st.cpu.start();
  for (uint64_t i = 0; i < slots; ++i)
    issue();
  auto next_report = st.t0_ns + to_ns(1);
  // Bounded by the window's end.
  while (st.outstanding.load() > 0 && now_ns() < st.window_end_ns) {
    if (progress && now_ns() >= next_report) {
      char buf[160];
      std::snprintf(buf, sizeof(buf), "[%s] %.0f s: %s %llu/%llu",
                    label.c_str(), to_s(now_ns() - st.t0_ns), verb.c_str(),
                    static_cast<unsigned long long>(st.completed.load()),
                    static_cast<unsigned long long>(st.total));
      progress(buf);
      next_report += to_ns(1);
    }
    std::this_thread::sleep_for(1ms);
  }
  auto seconds = to_s(now_ns() - st.t0_ns);
  st.cpu.stop();
  st.stop = true;
  return seconds;
}

caf::error shortfall(const std::string& label, uint64_t done, uint64_t n,
                     const std::string& what) {
  if (done >= n)
    return caf::none;
  return make_error(errc::timeout, label + ": only " + std::to_string(done)
                                       + " of " + std::to_string(n) + " " + what
                                       + " in time");
}

// -- temporary directories and process memory ---------------------------------

caf::expected<std::string> make_temp_dir(const std::string& parent,
                                         const char* tag) {
  std::string base = parent.empty() ? "/tmp" : parent;
  std::error_code ec;
  std::filesystem::create_directories(base, ec);
  if (ec)
    return make_error(errc::invalid_argument, "cannot create data directory '"
                                                  + base
                                                  + "': " + ec.message());
  auto pattern = base + "/granary-bench-" + tag + "-XXXXXX";
  std::vector<char> buf{pattern.begin(), pattern.end()};
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr)
    return make_error(errc::storage_failure,
                      "cannot create a temporary directory under '" + base
                          + "': " + std::strerror(errno));
  return std::string{buf.data()};
}

temp_dir::~temp_dir() {
  if (path.empty())
    return;
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

uint64_t rss_bytes() {
  std::ifstream in{"/proc/self/statm"};
  uint64_t size = 0;
  uint64_t resident = 0;
  if (!(in >> size >> resident))
    return 0;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

uint64_t settled_rss_bytes() {
  malloc_trim(0);
  return rss_bytes();
}

} // namespace granary::bench

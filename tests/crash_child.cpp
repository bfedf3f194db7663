// The child process of the crash test: a silo on RocksDB that increments
// counters with durable sends and reports every acknowledgement on stdout,
// so that the parent can SIGKILL it at any moment and still know exactly
// which increments the runtime promised to keep.
//
// Usage:
//   crash_child --data DIR --mode run|verify --count N --counters K
//               [--window W]
//
// Output (stdout, one line each, flushed at once):
//   run:    "ack <i>", "err <i> <message>", finally "done"
//   verify: "value <k> <v>" for every counter k

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "persistence/rocksdb_storage.hpp"
#include "runtime/error.hpp"
#include "runtime/silo.hpp"
#include "samples/hello/counter.hpp"
#include "testing/windowed_sender.hpp"

using namespace std::chrono_literals;

namespace {

/// Command line of the child.
struct options {
  std::string data_dir;
  std::string mode;
  int64_t count = -1;
  int64_t counters = -1;
  int64_t window = 64;
};

/// Parses a positive decimal integer; returns -1 on any error.
int64_t parse_positive(const char* str) {
  char* end = nullptr;
  errno = 0;
  auto val = std::strtoll(str, &end, 10);
  if (errno != 0 || end == str || *end != '\0' || val <= 0)
    return -1;
  return val;
}

void usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s --data DIR --mode run|verify --count N "
               "--counters K [--window W]\n",
               argv0);
}

/// Fills `opts` from the command line; false on any error.
bool parse_args(int argc, char** argv, options& opts) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "crash_child: missing value for %s\n", argv[i]);
      return false;
    }
    const char* val = argv[++i];
    if (arg == "--data") {
      opts.data_dir = val;
    } else if (arg == "--mode") {
      opts.mode = val;
    } else if (arg == "--count") {
      opts.count = parse_positive(val);
    } else if (arg == "--counters") {
      opts.counters = parse_positive(val);
    } else if (arg == "--window") {
      opts.window = parse_positive(val);
    } else {
      std::fprintf(stderr, "crash_child: unknown option %s\n", argv[i - 1]);
      return false;
    }
  }
  if (opts.data_dir.empty() || (opts.mode != "run" && opts.mode != "verify")
      || opts.count <= 0 || opts.counters <= 0 || opts.window <= 0) {
    std::fprintf(stderr, "crash_child: invalid or missing arguments\n");
    return false;
  }
  return true;
}

std::string counter_key(int64_t k) {
  return "c" + std::to_string(k);
}

/// Opens the store and starts a silo with the counter grain registered.
std::unique_ptr<granary::silo> open_silo(const std::string& data_dir) {
  auto store = granary::rocksdb_storage::open({.data_dir = data_dir});
  if (!store) {
    std::fprintf(stderr, "crash_child: cannot open %s: %s\n", data_dir.c_str(),
                 granary::describe(store.error()).c_str());
    return nullptr;
  }
  granary::grain_registry registry;
  if (auto err = granary::register_grain<hello::counter>(registry)) {
    std::fprintf(stderr, "crash_child: %s\n", granary::describe(err).c_str());
    return nullptr;
  }
  auto s = granary::silo::start(granary::silo_config{}, std::move(registry),
                                std::move(*store));
  if (!s) {
    std::fprintf(stderr, "crash_child: cannot start the silo: %s\n",
                 granary::describe(s.error()).c_str());
    return nullptr;
  }
  return std::move(*s);
}

// Sends every increment 0..count-1 with at most `window` in flight and
// retries failed ones with the same msg_id until all are acknowledged.
int run_mode(granary::silo& s, const options& opts) {
  granary::testing::windowed_sender sender{
      opts.count, opts.window, 10ms,
      [&](int64_t i, granary::testing::windowed_sender::done_fn done) {
        hello::Add add;
        add.set_delta(1);
        auto target
            = granary::id_of<hello::counter>(counter_key(i % opts.counters));
        s.send_async(std::move(target), add, "inc-" + std::to_string(i),
                     std::move(done));
      },
      [](int64_t i, const caf::error& err, int acks) {
        // The line goes out first: once it is written, the parent counts
        // the increment as promised, whatever happens to this process next.
        if (err) {
          std::printf("err %lld %s\n", static_cast<long long>(i),
                      granary::describe(err).c_str());
          std::fflush(stdout);
          return;
        }
        std::printf("ack %lld\n", static_cast<long long>(i));
        std::fflush(stdout);
        if (acks > 1)
          std::fprintf(stderr, "crash_child: id %lld acknowledged %d times\n",
                       static_cast<long long>(i), acks);
      }};
  sender.run();
  std::printf("done\n");
  std::fflush(stdout);
  return 0;
}

int verify_mode(granary::silo& s, const options& opts) {
  for (int64_t k = 0; k < opts.counters; ++k) {
    granary::grain_ref<hello::counter> ref{s, counter_key(k)};
    auto val = ref.call<hello::Value>(hello::Get{});
    if (!val) {
      std::fprintf(stderr, "crash_child: Get on %s failed: %s\n",
                   counter_key(k).c_str(),
                   granary::describe(val.error()).c_str());
      return 1;
    }
    std::printf("value %lld %lld\n", static_cast<long long>(k),
                static_cast<long long>(val->value()));
  }
  std::fflush(stdout);
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  options opts;
  if (!parse_args(argc, argv, opts)) {
    usage(argv[0]);
    return 1;
  }
  auto s = open_silo(opts.data_dir);
  if (!s)
    return 1;
  auto rc = opts.mode == "run" ? run_mode(*s, opts) : verify_mode(*s, opts);
  if (auto err = s->stop()) {
    std::fprintf(stderr, "crash_child: stop failed: %s\n",
                 granary::describe(err).c_str());
    return 1;
  }
  return rc;
}

// The child process of the workflow crash test: a silo on RocksDB running
// workflows that call a fake external API (activities), sleep durably, and
// book on a ledger grain with a durable call. The parent SIGKILLs it at
// random moments and restarts it; the fake API's log survives every kill.
//
// Usage:
//   workflow_crash_child --data DIR --api FILE --mode run|verify
//                        --count N --ledgers K [--window W]
//
// Workflow i is "wf-<i>"; it books on ledger "ledger-<i % K>" and sleeps
// 100 + (i * 37) % 400 ms between its first activity and its call.
//
// Output (stdout, one line per write, flushed at once):
//   run:    "started <n>" once every start is durable, then
//           "progress <completed> <n>" after each poll that changed it,
//           "stuck <i> <STATUS> <journal size>" for up to 10 workflows
//           when the count stood still for 5 s,
//           "failed <i> <status> <error>" for a run that ended otherwise
//           (then the child exits with status 2), finally "done"
//   verify: "status <i> <STATUS> <journal size> <error>" for every
//           workflow, then "ledger <k> <value> <seen> <distinct seen>"
//
// The fake API (FILE) is an append-only log, fsync'd per line:
//   "attempt <activity> <idempotency key> <attempt> <pid>" for every
//   request it receives, "apply <activity> <idempotency key> <attempt>
//   <pid>" the first time it applies a key. <attempt> is the workflow's
//   attempt number, <pid> the child that sent the request. Its set of
//   applied keys is rebuilt from the log at every start.

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "actors/activity.hpp"
#include "actors/workflow.hpp"
#include "persistence/rocksdb_storage.hpp"
#include "runtime/error.hpp"
#include "runtime/silo.hpp"
#include "testing/test_grains.hpp"
#include "testing/windowed_sender.hpp"
#include "workflow_crash.pb.h"

using namespace std::chrono_literals;

namespace {

/// Command line of the child.
struct options {
  std::string data_dir;
  std::string api_log;
  std::string mode;
  int64_t count = -1;
  int64_t ledgers = -1;
  int64_t window = 32;
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
               "usage: %s --data DIR --api FILE --mode run|verify --count N "
               "--ledgers K [--window W]\n",
               argv0);
}

/// Fills `opts` from the command line; false on any error.
bool parse_args(int argc, char** argv, options& opts) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "workflow_crash_child: missing value for %s\n",
                   argv[i]);
      return false;
    }
    const char* val = argv[++i];
    if (arg == "--data") {
      opts.data_dir = val;
    } else if (arg == "--api") {
      opts.api_log = val;
    } else if (arg == "--mode") {
      opts.mode = val;
    } else if (arg == "--count") {
      opts.count = parse_positive(val);
    } else if (arg == "--ledgers") {
      opts.ledgers = parse_positive(val);
    } else if (arg == "--window") {
      opts.window = parse_positive(val);
    } else {
      std::fprintf(stderr, "workflow_crash_child: unknown option %s\n",
                   argv[i - 1]);
      return false;
    }
  }
  if (opts.data_dir.empty() || opts.api_log.empty()
      || (opts.mode != "run" && opts.mode != "verify") || opts.count <= 0
      || opts.ledgers <= 0 || opts.window <= 0) {
    std::fprintf(stderr,
                 "workflow_crash_child: invalid or missing arguments\n");
    return false;
  }
  return true;
}

/// Writes one line to stdout with a single write(), so that a kill cannot
/// cut it, and so that lines of several threads never interleave.
void emit(const std::string& line) {
  auto out = line + "\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
}

/// The outside world: an idempotent API whose state is an append-only log
/// that outlives the process. Requests are serialized, like a remote
/// service that orders them.
class fake_api {
public:
  fake_api() = default;

  fake_api(const fake_api&) = delete;
  fake_api& operator=(const fake_api&) = delete;

  ~fake_api() {
    if (fd_ >= 0)
      ::close(fd_);
  }

  /// Opens (or creates) the log at `path` and rebuilds the applied keys.
  bool open(const std::string& path) {
    std::string tail;
    {
      std::ifstream in{path};
      std::string line;
      while (std::getline(in, line)) {
        if (in.eof()) {
          tail = line; // No newline: a line cut short.
          break;
        }
        // "apply <activity> <key> <attempt> <pid>"
        auto sp1 = line.find(' ');
        auto sp2 = line.find(' ', sp1 == std::string::npos ? 0 : sp1 + 1);
        auto sp3 = line.find(' ', sp2 == std::string::npos ? 0 : sp2 + 1);
        if (line.compare(0, sp1, "apply") == 0 && sp3 != std::string::npos)
          applied_.insert(line.substr(sp2 + 1, sp3 - sp2 - 1));
      }
    }
    fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) {
      std::fprintf(stderr, "workflow_crash_child: cannot open %s: %s\n",
                   path.c_str(), std::strerror(errno));
      return false;
    }
    // Keeps later lines parseable; the parent reports the cut line.
    if (!tail.empty() && !append("\n"))
      return false;
    return true;
  }

  /// Handles one request: logs the attempt, applies its idempotency key
  /// once, answers after a short network-like delay.
  caf::expected<granary::wfcrash::ApiReceipt>
  request(const std::string& activity, const granary::activity_context& ctx) {
    auto& key = ctx.idempotency_key;
    auto tail = " " + activity + " " + key + " " + std::to_string(ctx.attempt)
                + " " + std::to_string(::getpid()) + "\n";
    granary::wfcrash::ApiReceipt out;
    {
      std::lock_guard guard{mtx_};
      if (!append("attempt" + tail))
        return granary::make_error(granary::errc::handler_failed,
                                   "fake API: log write failed");
      if (applied_.count(key) > 0) {
        out.set_repeat(true);
      } else {
        if (!append("apply" + tail))
          return granary::make_error(granary::errc::handler_failed,
                                     "fake API: log write failed");
        applied_.insert(key);
      }
    }
    // Widens the window in which a kill finds the side effect applied but
    // its result not yet recorded by the workflow.
    std::this_thread::sleep_for(8ms);
    out.set_resource(activity + "/" + key);
    return out;
  }

private:
  bool append(const std::string& line) {
    auto n = ::write(fd_, line.data(), line.size());
    if (n != static_cast<ssize_t>(line.size()) || ::fsync(fd_) != 0) {
      std::fprintf(stderr, "workflow_crash_child: fake API log: %s\n",
                   std::strerror(errno));
      return false;
    }
    return true;
  }

  std::mutex mtx_;
  int fd_ = -1;
  std::set<std::string> applied_;
};

/// Short intervals, so that a restarted child recovers lost attempts
/// quickly; attempts are never exhausted by kills.
granary::activity_options api_options() {
  granary::activity_options opts;
  opts.initial_interval = 20ms;
  opts.backoff_coefficient = 2.0;
  opts.max_interval = 200ms;
  opts.max_attempts = 1'000;
  opts.start_to_close = 200ms;
  return opts;
}

/// Provisions a resource through the API, pauses, books on its ledger
/// with a durable call, and notifies through the API.
class provision_flow
    : public granary::workflow<provision_flow, granary::wfcrash::Job,
                               granary::wfcrash::Outcome> {
public:
  static constexpr std::string_view type_name = "wfcrash.provision";

  granary::task<granary::wfcrash::Outcome>
  run(granary::workflow_context& ctx, const granary::wfcrash::Job& job) {
    // GCC 12 may destroy a braced temporary inside a co_await expression
    // twice: every argument is a named local.
    auto opts = api_options();
    granary::wfcrash::ApiRequest req;
    req.set_workflow_id(ctx.workflow_id());
    std::string provision = "provision";
    auto made = co_await ctx.activity<granary::wfcrash::ApiReceipt>(provision,
                                                                    req, opts);
    if (!made)
      co_return made.error();
    std::chrono::milliseconds pause{job.sleep_ms()};
    if (auto slept = co_await ctx.sleep(pause); !slept)
      co_return slept.error();
    granary::testing::Add add;
    add.set_delta(1);
    std::string ledger = job.ledger();
    auto booked
        = co_await ctx.call<granary::testing::Value, granary::testing::probe>(
            ledger, add);
    if (!booked)
      co_return booked.error();
    std::string notify = "notify";
    auto told = co_await ctx.activity<granary::wfcrash::ApiReceipt>(notify, req,
                                                                    opts);
    if (!told)
      co_return told.error();
    granary::wfcrash::Outcome out;
    out.set_resource(made->resource());
    out.set_ledger_value(booked->value());
    out.set_notice(told->resource());
    co_return out;
  }
};

std::string workflow_key(int64_t i) {
  return "wf-" + std::to_string(i);
}

std::string ledger_key(int64_t k) {
  return "ledger-" + std::to_string(k);
}

/// Asks workflow `i` for its status; nullopt when the query failed.
std::optional<granary::wire::WorkflowInfo> describe_workflow(granary::silo& s,
                                                             int64_t i) {
  auto r = s.call(granary::id_of<provision_flow>(workflow_key(i)),
                  std::make_shared<granary::wire::DescribeWorkflow>());
  if (!r) {
    std::fprintf(stderr, "workflow_crash_child: describe %s: %s\n",
                 workflow_key(i).c_str(), granary::describe(r.error()).c_str());
    return std::nullopt;
  }
  return static_cast<const granary::wire::WorkflowInfo&>(**r);
}

std::string one_line(std::string text) {
  for (auto& ch : text)
    if (ch == '\n' || ch == '\r')
      ch = ' ';
  return text;
}

/// How long the completed count may stand still before the run names the
/// workflows it waits for.
constexpr auto stuck_after = 5s;

int run_mode(granary::silo& s, const options& opts) {
  // Every start with its own msg_id, resent until all are durable.
  granary::testing::windowed_sender starter{
      opts.count, opts.window, 20ms,
      [&](int64_t i, granary::testing::windowed_sender::done_fn done) {
        granary::wfcrash::Job job;
        job.set_ledger(ledger_key(i % opts.ledgers));
        job.set_sleep_ms(100 + (i * 37) % 400);
        s.send_async(granary::id_of<provision_flow>(workflow_key(i)), job,
                     "start-" + workflow_key(i), std::move(done));
      },
      [](int64_t i, const caf::error& err, int) {
        if (err && granary::code_of(err) != granary::errc::overloaded)
          std::fprintf(stderr, "workflow_crash_child: start of %s: %s\n",
                       workflow_key(i).c_str(), granary::describe(err).c_str());
      }};
  starter.run();
  emit("started " + std::to_string(opts.count));
  std::vector<bool> completed(static_cast<size_t>(opts.count), false);
  int64_t n_completed = 0;
  int64_t reported = -1;
  auto last_change = std::chrono::steady_clock::now();
  while (n_completed < opts.count) {
    for (int64_t i = 0; i < opts.count; ++i) {
      if (completed[static_cast<size_t>(i)])
        continue;
      auto info = describe_workflow(s, i);
      if (!info)
        continue;
      auto status = info->status();
      if (status == granary::wire::WorkflowState::COMPLETED) {
        completed[static_cast<size_t>(i)] = true;
        ++n_completed;
      } else if (status == granary::wire::WorkflowState::FAILED
                 || status == granary::wire::WorkflowState::SUSPENDED) {
        // FAILED and SUSPENDED are final here: waiting cannot help.
        emit("failed " + std::to_string(i) + " "
             + granary::wire::WorkflowState::Status_Name(status) + " "
             + one_line(info->error()));
        return 2;
      }
    }
    auto now = std::chrono::steady_clock::now();
    if (n_completed != reported) {
      emit("progress " + std::to_string(n_completed) + " "
           + std::to_string(opts.count));
      reported = n_completed;
      last_change = now;
    } else if (now - last_change >= stuck_after) {
      // Names a few of the workflows that make no progress, as this
      // process sees them (a fresh process might see them otherwise).
      int shown = 0;
      for (int64_t i = 0; i < opts.count && shown < 10; ++i) {
        if (completed[static_cast<size_t>(i)])
          continue;
        auto info = describe_workflow(s, i);
        if (!info)
          continue;
        ++shown;
        emit("stuck " + std::to_string(i) + " "
             + granary::wire::WorkflowState::Status_Name(info->status()) + " "
             + std::to_string(info->journal_size()));
      }
      last_change = now;
    }
    if (n_completed < opts.count)
      std::this_thread::sleep_for(50ms);
  }
  emit("done");
  return 0;
}

int verify_mode(granary::silo& s, const options& opts) {
  for (int64_t i = 0; i < opts.count; ++i) {
    auto info = describe_workflow(s, i);
    if (!info)
      return 1;
    emit("status " + std::to_string(i) + " "
         + granary::wire::WorkflowState::Status_Name(info->status()) + " "
         + std::to_string(info->journal_size()) + " "
         + one_line(info->error()));
  }
  for (int64_t k = 0; k < opts.ledgers; ++k) {
    granary::grain_ref<granary::testing::probe> ref{s, ledger_key(k)};
    auto val = ref.call<granary::testing::Value>(granary::testing::Get{});
    if (!val) {
      std::fprintf(stderr, "workflow_crash_child: Get on %s failed: %s\n",
                   ledger_key(k).c_str(),
                   granary::describe(val.error()).c_str());
      return 1;
    }
    std::set<std::string> distinct{val->seen().begin(), val->seen().end()};
    emit("ledger " + std::to_string(k) + " " + std::to_string(val->value())
         + " " + std::to_string(val->seen_size()) + " "
         + std::to_string(distinct.size()));
  }
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  options opts;
  if (!parse_args(argc, argv, opts)) {
    usage(argv[0]);
    return 1;
  }
  fake_api api;
  if (!api.open(opts.api_log))
    return 1;
  granary::activity_pool pool{3, 64};
  for (std::string name : {"provision", "notify"}) {
    auto fn = [&api, name](const granary::activity_context& ctx,
                           const granary::wfcrash::ApiRequest&) {
      return api.request(name, ctx);
    };
    if (auto err
        = pool.add<granary::wfcrash::ApiRequest, granary::wfcrash::ApiReceipt>(
            name, fn)) {
      std::fprintf(stderr, "workflow_crash_child: %s\n",
                   granary::describe(err).c_str());
      return 1;
    }
  }
  granary::grain_registry registry;
  if (auto err = granary::register_grain<granary::testing::probe>(registry)) {
    std::fprintf(stderr, "workflow_crash_child: %s\n",
                 granary::describe(err).c_str());
    return 1;
  }
  if (auto err = granary::register_workflow<provision_flow>(registry, &pool)) {
    std::fprintf(stderr, "workflow_crash_child: %s\n",
                 granary::describe(err).c_str());
    return 1;
  }
  auto store = granary::rocksdb_storage::open({.data_dir = opts.data_dir});
  if (!store) {
    std::fprintf(stderr, "workflow_crash_child: cannot open %s: %s\n",
                 opts.data_dir.c_str(),
                 granary::describe(store.error()).c_str());
    return 1;
  }
  auto s = granary::silo::start(granary::silo_config{}, std::move(registry),
                                std::move(*store));
  if (!s) {
    std::fprintf(stderr, "workflow_crash_child: cannot start the silo: %s\n",
                 granary::describe(s.error()).c_str());
    return 1;
  }
  pool.attach(**s);
  auto rc = opts.mode == "run" ? run_mode(**s, opts) : verify_mode(**s, opts);
  // The pool reports to the silo: stop it first.
  pool.stop();
  if (auto err = (*s)->stop()) {
    std::fprintf(stderr, "workflow_crash_child: stop failed: %s\n",
                 granary::describe(err).c_str());
    return 1;
  }
  return rc;
}

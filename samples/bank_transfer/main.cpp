// The bank-transfer sample: one embedded silo on RocksDB, N accounts (one
// of them frozen) and M random transfers run as sagas. At the end it checks
// that no money appeared or vanished. Run it again on the same data
// directory: every transfer is found finished and nothing moves twice.

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "persistence/rocksdb_storage.hpp"
#include "samples/bank_transfer/transfer.hpp"

using namespace std::chrono_literals;
using namespace granary;

namespace {

struct options {
  std::string data_dir = "granary-bank-data";
  int accounts = 10;
  int transfers = 200;
  uint64_t seed = 1;
  int64_t initial = 1'000;
};

constexpr int max_accounts = 100'000;
constexpr int max_transfers = 1'000'000;
// Transfer starts awaiting their durable acknowledgement at once.
constexpr size_t start_window = 64;

[[noreturn]] void usage(const char* self, const std::string& problem) {
  std::fprintf(stderr,
               "bank_transfer_sample: %s\n"
               "usage: %s --data DIR [--accounts N] [--transfers M] "
               "[--seed S]\n",
               problem.c_str(), self);
  std::exit(2);
}

options parse(int argc, char** argv) {
  options o;
  bool has_data = false;
  auto number = [&](int& i, long long lo, long long hi) -> long long {
    if (i + 1 >= argc)
      usage(argv[0], std::string{argv[i]} + " needs a value");
    char* end = nullptr;
    auto v = std::strtoll(argv[i + 1], &end, 10);
    if (end == argv[i + 1] || *end != '\0' || v < lo || v > hi)
      usage(argv[0], std::string{argv[i]} + " takes a number in "
                         + std::to_string(lo) + ".." + std::to_string(hi)
                         + ", got '" + argv[i + 1] + "'");
    ++i;
    return v;
  };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--data") {
      if (i + 1 >= argc)
        usage(argv[0], "--data needs a value");
      o.data_dir = argv[++i];
      has_data = true;
    } else if (arg == "--accounts") {
      o.accounts = static_cast<int>(number(i, 2, max_accounts));
    } else if (arg == "--transfers") {
      o.transfers = static_cast<int>(number(i, 0, max_transfers));
    } else if (arg == "--seed") {
      o.seed = static_cast<uint64_t>(number(i, 0, INT64_MAX));
    } else {
      usage(argv[0], "unknown argument '" + arg + "'");
    }
  }
  if (!has_data)
    usage(argv[0], "--data DIR is required");
  return o;
}

std::string account_name(int i) {
  return "acct-" + std::to_string(i);
}

struct planned {
  std::string id;
  bank::TransferRequest req;
};

// The same seed plans the same transfers (ids included), so a second run
// finds them instead of adding new ones.
std::vector<planned> plan(const options& o) {
  std::mt19937_64 rng{o.seed};
  std::vector<planned> out;
  out.reserve(static_cast<size_t>(o.transfers));
  auto n = static_cast<uint64_t>(o.accounts);
  // Up to 60% of an initial balance: after a few transfers some accounts
  // run short, so refused debits happen too.
  auto max_amount
      = static_cast<uint64_t>(std::max<int64_t>(o.initial * 6 / 10, 1));
  for (int i = 0; i < o.transfers; ++i) {
    auto from = rng() % n;
    auto to = (from + 1 + rng() % (n - 1)) % n;
    planned p;
    p.id = "t" + std::to_string(o.seed) + "-" + std::to_string(i);
    p.req.set_from(account_name(static_cast<int>(from)));
    p.req.set_to(account_name(static_cast<int>(to)));
    p.req.set_amount(static_cast<int64_t>(1 + rng() % max_amount));
    out.push_back(std::move(p));
  }
  return out;
}

// Starts `todo` with at most `start_window` starts unacknowledged at once.
// The callbacks share their state, so a start that is never acknowledged
// (the wait gives up after `timeout`) cannot outlive it.
caf::error start_all(silo& s, const std::vector<const planned*>& todo,
                     std::chrono::seconds timeout = 60s) {
  struct shared {
    std::mutex mtx;
    std::condition_variable cv;
    size_t in_flight = 0;
    caf::error first;
  };
  auto st = std::make_shared<shared>();
  auto deadline = std::chrono::steady_clock::now() + timeout;
  auto stalled = [&] {
    return make_error(errc::timeout,
                      "transfer starts were not acknowledged within "
                          + std::to_string(timeout.count()) + " s");
  };
  for (auto* p : todo) {
    {
      std::unique_lock<std::mutex> guard{st->mtx};
      if (!st->cv.wait_until(guard, deadline,
                             [&] { return st->in_flight < start_window; }))
        return stalled();
      if (st->first)
        return st->first;
      ++st->in_flight;
    }
    bank::start_transfer_async(s, p->id, p->req, [st](const caf::error& err) {
      std::lock_guard<std::mutex> guard{st->mtx};
      if (err && !st->first)
        st->first = err;
      --st->in_flight;
      st->cv.notify_all();
    });
  }
  std::unique_lock<std::mutex> guard{st->mtx};
  if (!st->cv.wait_until(guard, deadline, [&] { return st->in_flight == 0; }))
    return stalled();
  return st->first;
}

int fail(silo& s, const std::string& msg) {
  std::fprintf(stderr, "bank_transfer_sample: %s\n", msg.c_str());
  static_cast<void>(s.stop());
  return 1;
}

} // namespace

int main(int argc, char** argv) {
  auto o = parse(argc, argv);
  auto store = rocksdb_storage::open({.data_dir = o.data_dir});
  if (!store) {
    std::fprintf(stderr, "bank_transfer_sample: %s\n",
                 describe(store.error()).c_str());
    return 1;
  }
  grain_registry registry;
  if (auto err = bank::register_bank(registry)) {
    std::fprintf(stderr, "bank_transfer_sample: %s\n", describe(err).c_str());
    return 1;
  }
  auto started
      = silo::start(silo_config{}, std::move(registry), std::move(*store));
  if (!started) {
    std::fprintf(stderr, "bank_transfer_sample: %s\n",
                 describe(started.error()).c_str());
    return 1;
  }
  auto& s = **started;

  // Open every account (a second run finds them open) and freeze the last.
  int opened = 0;
  for (int i = 0; i < o.accounts; ++i) {
    bank::Open open;
    open.set_initial(o.initial);
    grain_ref<bank::account> acct{s, account_name(i)};
    auto before = acct.call<bank::Balance>(bank::GetBalance{});
    if (!before)
      return fail(s, "reading " + account_name(i) + ": "
                         + describe(before.error()));
    if (before->opened())
      continue;
    auto res = acct.call<bank::Balance>(open);
    if (!res)
      return fail(s,
                  "opening " + account_name(i) + ": " + describe(res.error()));
    ++opened;
  }
  auto frozen_name = account_name(o.accounts - 1);
  bank::Freeze freeze;
  freeze.set_frozen(true);
  if (auto res
      = grain_ref<bank::account>{s, frozen_name}.call<bank::Balance>(freeze);
      !res)
    return fail(s, "freezing " + frozen_name + ": " + describe(res.error()));
  std::printf("bank: %d accounts (%d opened now, %d found open), '%s' is "
              "frozen\n",
              o.accounts, opened, o.accounts - opened, frozen_name.c_str());

  // Start what earlier runs did not; running transfers resume by
  // themselves once the silo recovered them.
  auto transfers = plan(o);
  std::vector<const planned*> todo;
  size_t found_finished = 0;
  size_t found_running = 0;
  for (auto& p : transfers) {
    auto v = bank::view_transfer(s, p.id);
    if (!v)
      return fail(s, "reading transfer " + p.id + ": " + describe(v.error()));
    if (v->finished())
      ++found_finished;
    else if (v->status != wire::WorkflowState::NEW)
      ++found_running;
    else
      todo.push_back(&p);
  }
  std::printf("bank: %zu transfers: %zu to start, %zu resumed from an "
              "earlier run, %zu finished in an earlier run\n",
              transfers.size(), todo.size(), found_running, found_finished);
  if (auto err = start_all(s, todo))
    return fail(s, "starting transfers: " + describe(err));

  // Wait for every transfer, with a progress line. Bounded by a deadline
  // that grows with the number of transfers.
  bool tty = isatty(STDOUT_FILENO) != 0;
  std::vector<const planned*> pending;
  for (auto& p : transfers)
    pending.push_back(&p);
  auto deadline = std::chrono::steady_clock::now() + 60s
                  + std::chrono::milliseconds{20} * transfers.size();
  auto last_print = std::chrono::steady_clock::time_point{};
  std::map<bank::TransferStage::Stage, size_t> tally;
  std::vector<std::string> problems;
  for (;;) {
    std::vector<const planned*> still;
    for (auto* p : pending) {
      auto v = bank::view_transfer(s, p->id);
      if (!v)
        return fail(s,
                    "reading transfer " + p->id + ": " + describe(v.error()));
      if (!v->finished()) {
        still.push_back(p);
        continue;
      }
      ++tally[v->stage];
      if (v->stage != bank::TransferStage::COMPLETED
          && v->stage != bank::TransferStage::COMPENSATED
          && v->stage != bank::TransferStage::INSUFFICIENT_FUNDS
          && problems.size() < 5)
        problems.push_back(v->detail);
    }
    pending = std::move(still);
    auto now = std::chrono::steady_clock::now();
    if (pending.empty() || now - last_print >= (tty ? 100ms : 1s)) {
      std::printf("%sbank: %zu/%zu transfers finished", tty ? "\r" : "",
                  transfers.size() - pending.size(), transfers.size());
      if (!tty || pending.empty())
        std::printf("\n");
      std::fflush(stdout);
      last_print = now;
    }
    if (pending.empty())
      break;
    if (now > deadline) {
      if (tty)
        std::printf("\n");
      return fail(s, std::to_string(pending.size())
                         + " transfers did not finish in time, e.g. "
                         + pending.front()->id);
    }
    std::this_thread::sleep_for(20ms);
  }

  // Summary and the invariant: all money is back in balances (no hold is
  // left) and it adds up to what the accounts were opened with. Accounts
  // are opened as acct-0, acct-1, ...; an earlier run with more of them
  // left money beyond acct-<N-1>, so the bank is every open account.
  int64_t total_initial = 0;
  int64_t total_balance = 0;
  int64_t total_held = 0;
  int bank_size = 0;
  std::string balances;
  for (int i = 0; i < max_accounts; ++i) {
    auto b = grain_ref<bank::account>{s, account_name(i)}.call<bank::Balance>(
        bank::GetBalance{});
    if (!b)
      return fail(s, "reading " + account_name(i) + ": " + describe(b.error()));
    if (!b->opened())
      break;
    ++bank_size;
    total_initial += b->initial();
    total_balance += b->balance();
    total_held += b->held();
    if (i < 20)
      balances += " " + account_name(i) + "=" + std::to_string(b->balance());
  }
  auto count = [&](bank::TransferStage::Stage st) {
    auto i = tally.find(st);
    return i != tally.end() ? i->second : size_t{0};
  };
  size_t other = transfers.size() - count(bank::TransferStage::COMPLETED)
                 - count(bank::TransferStage::COMPENSATED)
                 - count(bank::TransferStage::INSUFFICIENT_FUNDS);
  std::printf("bank: summary: %zu completed, %zu compensated (frozen "
              "target), %zu insufficient funds, %zu other\n",
              count(bank::TransferStage::COMPLETED),
              count(bank::TransferStage::COMPENSATED),
              count(bank::TransferStage::INSUFFICIENT_FUNDS), other);
  std::printf("bank: balances:%s%s\n", balances.c_str(),
              bank_size > 20 ? " ..." : "");
  if (bank_size != o.accounts)
    std::printf("bank: %d accounts are open, %d of them from earlier runs "
                "with more --accounts\n",
                bank_size, bank_size - o.accounts);
  std::printf("bank: total %lld, held %lld, opened with %lld\n",
              static_cast<long long>(total_balance),
              static_cast<long long>(total_held),
              static_cast<long long>(total_initial));
  for (auto& p : problems)
    std::fprintf(stderr, "bank: unexpected outcome: %s\n", p.c_str());
  if (total_balance != total_initial || total_held != 0 || other != 0)
    return fail(
        s, "INVARIANT VIOLATED: the accounts hold "
               + std::to_string(total_balance) + " (plus "
               + std::to_string(total_held) + " held) but were opened with "
               + std::to_string(total_initial) + "; " + std::to_string(other)
               + " transfers ended in an unexpected stage");
  std::printf("bank: invariant holds: no money appeared or vanished\n");
  if (auto err = s.stop()) {
    std::fprintf(stderr, "bank_transfer_sample: %s\n", describe(err).c_str());
    return 1;
  }
  return 0;
}

#include "testing/sim_workloads.hpp"

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "actors/grain.hpp"
#include "actors/workflow.hpp"
#include "actors/workflow_client.hpp"
#include "runtime/assert.hpp"
#include "runtime/error.hpp"
#include "runtime/sys.hpp"
#include "testing/test_grains.hpp"

namespace granary::testing {

using namespace std::chrono_literals;

namespace {

// Calls grain `key` of `G` with `req` through the silos in turn until one
// answers with an `R`; nullopt when none did within 50 tries.
template <class G, class R, class M>
std::optional<R> read_any(sim_world& w, const std::string& key, const M& req) {
  std::optional<R> value;
  // Bounded: 50 tries, 500 ms apart.
  for (int attempt = 0; attempt < 50 && !value; ++attempt) {
    static_cast<void>(
        w.on(static_cast<size_t>(attempt) % w.size(), [&](silo& s) {
          auto v = grain_ref<G>{s, key}.template call<R>(req);
          if (v)
            value = *v;
        }));
    if (!value)
      sys::sleep_for(500ms);
  }
  return value;
}

// Reads counter `key` through any silo that answers.
std::optional<Value> read_counter(sim_world& w, const std::string& key) {
  return read_any<probe, Value>(w, key, Get{});
}

// Sends `msg` to probe `key` durably with id `msg_id` through random silos
// until one acknowledges it; fails the run after 200 attempts.
template <class M>
void send_until_acked(sim_world& w, const std::string& key, const M& msg,
                      const std::string& msg_id) {
  // Bounded: 200 attempts, at most 1 s apart.
  for (int attempt = 0; attempt < 200; ++attempt) {
    auto via = w.random() % w.size();
    caf::error result = make_error(errc::silo_stopped, "not sent");
    auto err = w.on(via, [&](silo& s) {
      result = grain_ref<probe>{s, key}.send(msg, msg_id);
    });
    if (!err && !result)
      return;
    w.pause();
  }
  w.fail("liveness", msg_id + " to " + key + " was never acknowledged");
}

// Waits a random time below `pace` (none when 0).
void pace_client(sim_world& w, std::chrono::milliseconds pace) {
  if (pace.count() > 0)
    sys::sleep_for(std::chrono::milliseconds{
        w.random() % static_cast<uint64_t>(pace.count())});
}

// Runs `fn(n)` for n in [0, operations) on `opts.clients` threads, paced.
void on_clients(sim_world& w, const workload_options& opts, int operations,
                const std::function<void(int)>& fn) {
  auto clients = std::clamp(opts.clients, 1, 64);
  std::vector<sys::thread> threads;
  for (int c = 0; c < clients; ++c)
    threads.emplace_back("client-" + std::to_string(c), [&, c] {
      for (int n = c; n < operations; n += clients) {
        pace_client(w, opts.pace);
        fn(n);
      }
    });
  for (auto& t : threads)
    t.join();
}

} // namespace

void add_counter_workload(simulation& sim, workload_options opts) {
  // What the workload got acknowledged: per counter, the ids of its Adds,
  // and how many Forwards it sent and received.
  struct ledger {
    sys::mutex mtx;
    std::map<std::string, std::set<std::string>> adds;
    std::map<std::string, int64_t> forwards;
  };
  auto acked = std::make_shared<ledger>();
  auto grains = std::max(2, opts.grains);
  sim.grains([](host::registration& r) { return r.grain<probe>(); })
      .workload([acked, opts, grains](sim_world& w) {
        {
          std::lock_guard guard{acked->mtx};
          acked->adds.clear();
          acked->forwards.clear();
        }
        on_clients(w, opts, opts.operations, [&](int n) {
          auto key = "c" + std::to_string(n % grains);
          // Every third operation is a Forward: grain to grain, across
          // partitions and silos, and through handoffs.
          if (n % 3 == 2) {
            auto to = "c" + std::to_string((n / 3 + 1 + n % grains) % grains);
            if (to == key)
              to = "c" + std::to_string((n + 1) % grains);
            Forward fwd;
            fwd.set_to(to);
            fwd.set_delta(1);
            send_until_acked(w, key, fwd, "fwd-" + std::to_string(n));
            std::lock_guard guard{acked->mtx};
            ++acked->forwards[key];
            ++acked->forwards[to];
            return;
          }
          Add add;
          add.set_delta(1);
          auto msg_id = "add-" + std::to_string(n);
          send_until_acked(w, key, add, msg_id);
          std::lock_guard guard{acked->mtx};
          acked->adds[key].insert(msg_id);
        });
      })
      .check("no acknowledged message is lost or applied twice",
             [acked, grains](sim_world& w) -> std::optional<std::string> {
               // Forwarded Adds may still be on their way for a while.
               sys::sleep_for(10s);
               for (int c = 0; c < grains; ++c) {
                 auto key = "c" + std::to_string(c);
                 auto value = read_counter(w, key);
                 if (!value)
                   return key + " cannot be read";
                 auto& want = acked->adds[key];
                 std::multiset<std::string> seen(value->seen().begin(),
                                                 value->seen().end());
                 for (auto& id : seen)
                   if (seen.count(id) != 1)
                     return key + ": " + id + " was applied "
                            + std::to_string(seen.count(id)) + " times";
                 for (auto& id : want)
                   if (seen.count(id) != 1)
                     return key + ": " + id + " was applied "
                            + std::to_string(seen.count(id)) + " times";
                 auto expected
                     = static_cast<int64_t>(want.size()) + acked->forwards[key];
                 if (value->value() != expected)
                   return key + " is " + std::to_string(value->value())
                          + ", but the acknowledged adds and forwards make "
                          + std::to_string(expected);
               }
               return std::nullopt;
             });
}

void add_timer_workload(simulation& sim, workload_options opts) {
  auto grains = std::max(1, opts.grains);
  // When each cancel was acknowledged (the world's wall clock, in ms).
  auto cancelled_at
      = std::make_shared<std::vector<int64_t>>(static_cast<size_t>(grains), 0);
  sim.grains([](host::registration& r) { return r.grain<probe>(); })
      .configure([](host::silo_file_config& cfg, size_t) {
        // A failing message keeps its grain blocked for a while.
        cfg.limits.max_attempts = 1'000;
        cfg.limits.retry_initial = 200ms;
        cfg.limits.retry_max = 1s;
      })
      .workload([grains, cancelled_at](sim_world& w) {
        auto key = [](int g) { return "t" + std::to_string(g); };
        for (int g = 0; g < grains; ++g) {
          Arm arm;
          arm.set_name("tick");
          arm.set_delay_ms(500);
          arm.set_period_ms(500);
          send_until_acked(w, key(g), arm, "arm-" + std::to_string(g));
        }
        // Armed for longer than any one fault stops a silo's progress (a
        // full disk, 10 s at most, refuses the firings' turns too).
        sys::sleep_for(20s);
        // Blocked grains queue what arrives: the cancel, then the firings.
        flaky_fails = true;
        for (int g = 0; g < grains; ++g) {
          Flaky flaky;
          flaky.set_delta(0);
          send_until_acked(w, key(g), flaky, "block-" + std::to_string(g));
          Disarm disarm;
          disarm.set_name("tick");
          send_until_acked(w, key(g), disarm, "disarm-" + std::to_string(g));
          (*cancelled_at)[static_cast<size_t>(g)] = sys::wall_ms();
        }
        sys::sleep_for(3s);
        flaky_fails = false;
      })
      .check(
          "timers fire, and a cancelled timer stays cancelled",
          [grains, cancelled_at](sim_world& w) -> std::optional<std::string> {
            flaky_fails = false;
            // Firings queued before the cancel may still run a while.
            sys::sleep_for(10s);
            for (int g = 0; g < grains; ++g) {
              auto key = "t" + std::to_string(g);
              auto v = read_counter(w, key);
              if (!v)
                return key + " cannot be read";
              if (v->fired() < 1)
                return "the timer of " + key
                       + " never fired while it was armed";
              // A firing due after the cancel (beyond the silos' clock
              // skew) was scheduled after it: the timer was re-armed.
              auto cancel = (*cancelled_at)[static_cast<size_t>(g)];
              for (auto& f : v->firings()) {
                auto colon = f.rfind(':');
                auto at = f.find('@');
                if (colon == std::string::npos || at == std::string::npos)
                  continue;
                auto due = std::stoll(f.substr(colon + 1, at - colon - 1));
                if (due > cancel + 2'500)
                  return "the timer of " + key + " fired for due time "
                         + std::to_string(due)
                         + " although its cancel was acknowledged at "
                         + std::to_string(cancel) + " (" + f + ")";
              }
            }
            return std::nullopt;
          });
}

// -- bank ---------------------------------------------------------------------

namespace {

constexpr int64_t opening_balance = 100;

// An account of the bank workload (see `SimAccount`).
class sim_account : public grain<sim_account, SimAccount> {
public:
  static constexpr std::string_view type_name = "sim.account";

  static void define(handlers<sim_account>& h) {
    h.on(&sim_account::move).on(&sim_account::get);
  }

  caf::expected<MoveResult> move(turn& t, const Move& m) {
    auto balance = opening_balance + view().delta();
    MoveResult out;
    bool closed = t.self().key.rfind("closed-", 0) == 0;
    if ((m.amount() < 0 && balance + m.amount() < 0)
        || (m.amount() > 0 && closed
            && m.leg().find(":credit") != m.leg().npos)) {
      out.set_ok(false);
      out.set_balance(balance);
      return out;
    }
    state().set_delta(view().delta() + m.amount());
    // Bounded by the workload's transfers (three legs each at most).
    GRANARY_ASSERT(view().legs_size() < 100'000,
                   "an account applied too many legs");
    state().add_legs(m.leg());
    out.set_ok(true);
    out.set_balance(balance + m.amount());
    return out;
  }

  caf::expected<MoveResult> get(turn&, const Get&) {
    MoveResult out;
    out.set_ok(true);
    out.set_balance(opening_balance + view().delta());
    *out.mutable_legs() = view().legs();
    return out;
  }
};

// Debits `from`, credits `to`, and refunds `from` when the credit is
// refused: a saga whose compensation is itself a durable call.
class sim_transfer : public workflow<sim_transfer, Transfer, TransferOutcome> {
public:
  static constexpr std::string_view type_name = "sim.transfer";

  task<TransferOutcome> run(workflow_context& ctx, const Transfer& t) {
    TransferOutcome out;
    auto id = ctx.workflow_id();
    Move debit;
    debit.set_leg(id + ":debit");
    debit.set_amount(-t.amount());
    auto from = t.from();
    auto debited = co_await ctx.call<MoveResult, sim_account>(from, debit);
    if (!debited)
      co_return debited.error();
    if (!debited->ok()) {
      out.set_outcome("refused");
      co_return out;
    }
    // Money in flight for a while: a durable timer between the legs.
    if (auto s
        = co_await ctx.sleep(std::chrono::milliseconds{ctx.random() % 2'000});
        !s)
      co_return s.error();
    Move credit;
    credit.set_leg(id + ":credit");
    credit.set_amount(t.amount());
    auto to = t.to();
    auto credited = co_await ctx.call<MoveResult, sim_account>(to, credit);
    if (!credited)
      co_return credited.error();
    if (credited->ok()) {
      out.set_outcome("done");
      co_return out;
    }
    Move refund;
    refund.set_leg(id + ":refund");
    refund.set_amount(t.amount());
    auto refunded = co_await ctx.call<MoveResult, sim_account>(from, refund);
    if (!refunded)
      co_return refunded.error();
    if (!refunded->ok())
      co_return make_error(errc::handler_failed, "the refund was refused");
    out.set_outcome("refunded");
    co_return out;
  }
};

} // namespace

void add_bank_workload(simulation& sim, workload_options opts) {
  auto accounts = std::max(2, opts.grains);
  auto account = [](int a) { return "a" + std::to_string(a); };
  std::vector<std::string> all;
  for (int a = 0; a < accounts; ++a)
    all.push_back(account(a));
  all.push_back("closed-0");
  all.push_back("closed-1");
  auto transfers = std::max(1, opts.operations);
  auto ids = std::make_shared<std::vector<std::string>>();
  for (int n = 0; n < transfers; ++n)
    ids->push_back("t" + std::to_string(n));
  // What the workload asked and learnt, per transfer id.
  struct ledger {
    sys::mutex mtx;
    std::map<std::string, std::pair<Transfer, std::string>> done;
  };
  auto book = std::make_shared<ledger>();
  sim.grains([](host::registration& r) {
       if (auto err = r.grain<sim_account>())
         return err;
       return r.workflow<sim_transfer>();
     })
      .workload([=](sim_world& w) {
        {
          std::lock_guard guard{book->mtx};
          book->done.clear();
        }
        on_clients(w, opts, transfers, [&](int n) {
          Transfer t;
          auto from
              = static_cast<int>(w.random() % static_cast<uint64_t>(accounts));
          t.set_from(account(from));
          if (w.random() % 5 == 0)
            t.set_to("closed-" + std::to_string(w.random() % 2));
          else
            t.set_to(
                account((from + 1
                         + static_cast<int>(
                             w.random() % static_cast<uint64_t>(accounts - 1)))
                        % accounts));
          t.set_amount(1 + static_cast<int64_t>(w.random() % 60));
          auto& id = (*ids)[static_cast<size_t>(n)];
          w.start<sim_transfer>(id, t);
          auto out = w.result<sim_transfer>(id);
          w.trace("transfer " + id + ": " + out.outcome());
          std::lock_guard guard{book->mtx};
          book->done[id] = {t, out.outcome()};
        });
      })
      .check("money is conserved",
             [all, book](sim_world& w) -> std::optional<std::string> {
               int64_t total = 0;
               // The legs each account must have applied, by the outcomes.
               std::map<std::string, std::multiset<std::string>> want;
               {
                 std::lock_guard guard{book->mtx};
                 for (auto& [id, done] : book->done) {
                   auto& [t, outcome] = done;
                   if (outcome == "done") {
                     want[t.from()].insert(id + ":debit");
                     want[t.to()].insert(id + ":credit");
                   } else if (outcome == "refunded") {
                     want[t.from()].insert(id + ":debit");
                     want[t.from()].insert(id + ":refund");
                   }
                 }
               }
               for (auto& key : all) {
                 auto got = read_any<sim_account, MoveResult>(w, key, Get{});
                 if (!got)
                   return key + " cannot be read";
                 std::multiset<std::string> legs(got->legs().begin(),
                                                 got->legs().end());
                 if (legs != want[key]) {
                   std::string diff;
                   for (auto& l : want[key])
                     if (legs.count(l) != want[key].count(l))
                       diff += " " + l + " applied "
                               + std::to_string(legs.count(l)) + " times;";
                   for (auto& l : legs)
                     if (want[key].count(l) == 0)
                       diff += " " + l + " applied but its transfer says "
                               + "otherwise;";
                   return key + " (balance " + std::to_string(got->balance())
                          + "):" + diff;
                 }
                 if (got->balance() < 0)
                   return key + " has a negative balance of "
                          + std::to_string(got->balance());
                 total += got->balance();
               }
               auto opened = opening_balance * static_cast<int64_t>(all.size());
               if (total != opened)
                 return "the accounts hold " + std::to_string(total)
                        + ", but they opened with " + std::to_string(opened);
               return std::nullopt;
             })
      .check("journal replay issues the same commands", [ids](sim_world& w) {
        return check_journals<sim_transfer>(w, *ids);
      });
}

// -- cloud --------------------------------------------------------------------

namespace {

// A flaky cloud API shared by every silo: calls are slow, some fail before
// they apply, and some apply and then lose their answer. Like a real
// provider it answers a repeated idempotency key from its record. It
// records every creation, so that a resource created twice (under two keys:
// one logical step retried as a new one) is seen.
struct sim_cloud {
  sys::mutex mtx;
  // Idempotency key to the id it created.
  std::map<std::string, std::string> by_key;
  // Resource name to the keys that created it.
  std::map<std::string, std::vector<std::string>> creations;
  uint64_t next_id = 1;

  caf::expected<CloudCreated> create(const activity_context& ctx,
                                     const CloudCreate& in) {
    sys::sleep_for(std::chrono::milliseconds{5 + sys::random_u64() % 400});
    auto roll = sys::random_u64() % 100;
    if (roll < 15)
      return make_error(errc::handler_failed,
                        "503: the API is busy (nothing applied)");
    CloudCreated out;
    {
      std::lock_guard guard{mtx};
      auto [it, fresh] = by_key.try_emplace(ctx.idempotency_key);
      if (fresh) {
        // Bounded by the workload's resources and their retries.
        GRANARY_ASSERT(by_key.size() < 1'000'000,
                       "the simulated cloud is full");
        it->second = "res-" + std::to_string(next_id++);
        creations[in.resource()].push_back(ctx.idempotency_key);
      }
      out.set_id(it->second);
    }
    if (roll < 30) {
      // Applied, but the answer is lost: only the key makes a retry safe.
      sys::sleep_for(std::chrono::milliseconds{sys::random_u64() % 1'000});
      return make_error(errc::timeout, "the API did not answer in time");
    }
    return out;
  }
};

class sim_provision : public workflow<sim_provision, Provision, Provisioned> {
public:
  static constexpr std::string_view type_name = "sim.provision";

  task<Provisioned> run(workflow_context& ctx, const Provision& p) {
    Provisioned out;
    activity_options opts;
    opts.initial_interval = 200ms;
    opts.max_interval = 5s;
    opts.max_attempts = 1'000;
    opts.start_to_close = 5s;
    for (int i = 0; i < p.count(); ++i) {
      CloudCreate req;
      req.set_resource(p.name() + "-" + std::to_string(i));
      auto made
          = co_await ctx.activity<CloudCreated>("sim.cloud.create", req, opts);
      if (!made)
        co_return made.error();
      out.add_ids(made->id());
    }
    co_return out;
  }
};

} // namespace

void add_cloud_workload(simulation& sim, workload_options opts) {
  auto cloud = std::make_shared<sim_cloud>();
  auto runs = std::max(1, opts.operations / 3);
  constexpr int per_run = 3;
  auto ids = std::make_shared<std::vector<std::string>>();
  for (int n = 0; n < runs; ++n)
    ids->push_back("p" + std::to_string(n));
  auto outputs = std::make_shared<std::map<std::string, Provisioned>>();
  sim.grains([cloud](host::registration& r) {
       if (auto err = r.workflow<sim_provision>())
         return err;
       return r.activity<CloudCreate, CloudCreated>(
           "sim.cloud.create",
           [cloud](const activity_context& ctx, const CloudCreate& in) {
             return cloud->create(ctx, in);
           });
     })
      .workload([=](sim_world& w) {
        {
          std::lock_guard guard{cloud->mtx};
          cloud->by_key.clear();
          cloud->creations.clear();
        }
        outputs->clear();
        sys::mutex mtx;
        on_clients(w, opts, runs, [&](int n) {
          auto& id = (*ids)[static_cast<size_t>(n)];
          Provision p;
          p.set_name(id);
          p.set_count(per_run);
          w.start<sim_provision>(id, p);
          auto out = w.result<sim_provision>(id);
          std::lock_guard guard{mtx};
          (*outputs)[id] = out;
        });
      })
      .check("no effect is applied twice per idempotency key",
             [cloud, ids, outputs](sim_world&) -> std::optional<std::string> {
               std::lock_guard guard{cloud->mtx};
               for (auto& id : *ids) {
                 auto& out = (*outputs)[id];
                 if (out.ids_size() != per_run)
                   return id + " provisioned " + std::to_string(out.ids_size())
                          + " resources, not " + std::to_string(per_run);
                 for (int i = 0; i < per_run; ++i) {
                   auto name = id + "-" + std::to_string(i);
                   auto& keys = cloud->creations[name];
                   if (keys.size() != 1) {
                     std::string list;
                     for (auto& k : keys)
                       list += (list.empty() ? "" : ", ") + k;
                     return name + " was created " + std::to_string(keys.size())
                            + " times (keys: " + list + ")";
                   }
                   if (cloud->by_key[keys.front()] != out.ids(i))
                     return id + " recorded " + out.ids(i) + " for " + name
                            + ", but the API created "
                            + cloud->by_key[keys.front()];
                 }
               }
               return std::nullopt;
             })
      .check("journal replay issues the same commands", [ids](sim_world& w) {
        return check_journals<sim_provision>(w, *ids);
      });
}

std::vector<std::string> workload_names() {
  return {"counters", "timers", "bank", "cloud"};
}

caf::error add_workload(simulation& sim, const std::string& name,
                        workload_options opts) {
  if (name == "counters") {
    add_counter_workload(sim, opts);
    return caf::none;
  }
  if (name == "timers") {
    add_timer_workload(sim, opts);
    return caf::none;
  }
  if (name == "bank") {
    add_bank_workload(sim, opts);
    return caf::none;
  }
  if (name == "cloud") {
    add_cloud_workload(sim, opts);
    return caf::none;
  }
  std::string known;
  for (auto& n : workload_names())
    known += (known.empty() ? "" : ", ") + n;
  return make_error(errc::invalid_argument,
                    "unknown workload '" + name + "' (known: " + known + ")");
}

} // namespace granary::testing

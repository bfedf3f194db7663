#include "testing/sim_workloads.hpp"

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "actors/grain.hpp"
#include "runtime/error.hpp"
#include "runtime/sys.hpp"
#include "testing/test_grains.hpp"

namespace granary::testing {

using namespace std::chrono_literals;

namespace {

// Reads counter `key` through any silo that answers; nullopt when none
// did within 50 tries.
std::optional<Value> read_counter(sim_world& w, const std::string& key) {
  std::optional<Value> value;
  // Bounded: 50 tries, 500 ms apart.
  for (int attempt = 0; attempt < 50 && !value; ++attempt) {
    static_cast<void>(
        w.on(static_cast<size_t>(attempt) % w.size(), [&](silo& s) {
          auto v = grain_ref<probe>{s, key}.call<Value>(Get{});
          if (v)
            value = *v;
        }));
    if (!value)
      sys::sleep_for(500ms);
  }
  return value;
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
    sys::sleep_for(std::chrono::milliseconds{100 + w.random() % 900});
  }
  w.fail("liveness", msg_id + " to " + key + " was never acknowledged");
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
        auto clients = std::clamp(opts.clients, 1, 64);
        std::vector<sys::thread> threads;
        for (int c = 0; c < clients; ++c)
          threads.emplace_back("client-" + std::to_string(c), [&, c] {
            for (int n = c; n < opts.operations; n += clients) {
              auto key = "c" + std::to_string(n % grains);
              // Every third operation is a Forward: grain to grain, across
              // partitions and silos, and through handoffs.
              if (n % 3 == 2) {
                auto to
                    = "c" + std::to_string((n / 3 + 1 + n % grains) % grains);
                if (to == key)
                  to = "c" + std::to_string((n + 1) % grains);
                Forward fwd;
                fwd.set_to(to);
                fwd.set_delta(1);
                send_until_acked(w, key, fwd, "fwd-" + std::to_string(n));
                std::lock_guard guard{acked->mtx};
                ++acked->forwards[key];
                ++acked->forwards[to];
                continue;
              }
              Add add;
              add.set_delta(1);
              auto msg_id = "add-" + std::to_string(n);
              send_until_acked(w, key, add, msg_id);
              std::lock_guard guard{acked->mtx};
              acked->adds[key].insert(msg_id);
            }
          });
        for (auto& t : threads)
          t.join();
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
        sys::sleep_for(3s);
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

std::vector<std::string> workload_names() {
  return {"counters", "timers"};
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
  std::string known;
  for (auto& n : workload_names())
    known += (known.empty() ? "" : ", ") + n;
  return make_error(errc::invalid_argument,
                    "unknown workload '" + name + "' (known: " + known + ")");
}

} // namespace granary::testing

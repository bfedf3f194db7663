#include "testing/sim_workloads.hpp"

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

} // namespace

void add_counter_workload(simulation& sim, workload_options opts) {
  // Per counter: the ids of the acknowledged Adds.
  auto acked = std::make_shared<std::map<std::string, std::set<std::string>>>();
  sim.grains([](host::registration& r) { return r.grain<probe>(); })
      .workload([acked, opts](sim_world& w) {
        acked->clear();
        for (int n = 0; n < opts.operations; ++n) {
          auto key = "c" + std::to_string(n % opts.grains);
          auto msg_id = "add-" + std::to_string(n);
          bool ok = false;
          // Bounded: 200 attempts, at most 1 s apart.
          for (int attempt = 0; attempt < 200 && !ok; ++attempt) {
            auto via = w.random() % w.size();
            caf::error result = make_error(errc::silo_stopped, "not sent");
            auto err = w.on(via, [&](silo& s) {
              Add add;
              add.set_delta(1);
              result = grain_ref<probe>{s, key}.send(add, msg_id);
            });
            ok = !err && !result;
            if (!ok)
              sys::sleep_for(std::chrono::milliseconds{100 + w.random() % 900});
          }
          if (!ok)
            w.fail("liveness", msg_id + " was never acknowledged");
          (*acked)[key].insert(msg_id);
        }
      })
      .check("no acknowledged message is lost or applied twice",
             [acked, opts](sim_world& w) -> std::optional<std::string> {
               for (int c = 0; c < opts.grains; ++c) {
                 auto key = "c" + std::to_string(c);
                 auto value = read_counter(w, key);
                 if (!value)
                   return key + " cannot be read";
                 auto& want = (*acked)[key];
                 std::multiset<std::string> seen(value->seen().begin(),
                                                 value->seen().end());
                 for (auto& id : want)
                   if (seen.count(id) != 1)
                     return key + ": " + id + " was applied "
                            + std::to_string(seen.count(id)) + " times";
                 if (value->value() != static_cast<int64_t>(want.size()))
                   return key + " is " + std::to_string(value->value())
                          + ", but " + std::to_string(want.size())
                          + " adds were acknowledged";
               }
               return std::nullopt;
             });
}

std::vector<std::string> workload_names() {
  return {"counters"};
}

caf::error add_workload(simulation& sim, const std::string& name,
                        workload_options opts) {
  if (name == "counters") {
    add_counter_workload(sim, opts);
    return caf::none;
  }
  std::string known;
  for (auto& n : workload_names())
    known += (known.empty() ? "" : ", ") + n;
  return make_error(errc::invalid_argument,
                    "unknown workload '" + name + "' (known: " + known + ")");
}

} // namespace granary::testing

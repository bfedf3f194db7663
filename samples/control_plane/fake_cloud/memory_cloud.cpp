#include "samples/control_plane/fake_cloud/memory_cloud.hpp"

#include <mutex>

namespace fake_cloud {

using granary::errc;
using granary::make_error;

memory_cloud::memory_cloud(memory_faults faults)
    : faults_(faults) {}

bool memory_cloud::chance(double p) {
  if (p <= 0)
    return false;
  return static_cast<double>(granary::sys::random_u64() % 1'000'000)
         < p * 1'000'000;
}

void memory_cloud::wait() const {
  std::chrono::milliseconds lo;
  std::chrono::milliseconds hi;
  {
    std::lock_guard guard{mtx_};
    lo = faults_.min_latency;
    hi = faults_.max_latency;
  }
  if (hi <= lo) {
    if (lo.count() > 0)
      granary::sys::sleep_for(lo);
    return;
  }
  auto span = static_cast<uint64_t>((hi - lo).count()) + 1;
  granary::sys::sleep_for(
      lo + std::chrono::milliseconds{granary::sys::random_u64() % span});
}

void memory_cloud::set_faults(memory_faults faults) {
  std::lock_guard guard{mtx_};
  faults_ = faults;
}

void memory_cloud::clear() {
  std::lock_guard guard{mtx_};
  resources_.clear();
  keys_.clear();
  audit_ = {};
}

caf::expected<mutation_result> memory_cloud::put(const std::string& kind,
                                                 const std::string& name,
                                                 const std::string& spec_json,
                                                 const std::string& key) const {
  return mutate(op::put, kind, name, spec_json, key, std::nullopt);
}

caf::expected<mutation_result>
memory_cloud::update(const std::string& kind, const std::string& name,
                     const std::string& spec_json, const std::string& key,
                     std::optional<uint64_t> expected_version) const {
  return mutate(op::update, kind, name, spec_json, key, expected_version);
}

caf::expected<mutation_result> memory_cloud::del(const std::string& kind,
                                                 const std::string& name,
                                                 const std::string& key) const {
  return mutate(op::del, kind, name, "{}", key, std::nullopt);
}

caf::expected<resource> memory_cloud::get(const std::string& kind,
                                          const std::string& name) const {
  wait();
  std::lock_guard guard{mtx_};
  auto i = resources_.find({kind, name});
  if (i == resources_.end() || !i->second.live)
    return make_error(errc::not_found,
                      "404: " + kind + " '" + name + "' does not exist");
  return i->second.res;
}

caf::expected<mutation_result>
memory_cloud::mutate(op what, const std::string& kind, const std::string& name,
                     const std::string& spec_json, const std::string& key,
                     std::optional<uint64_t> expected_version) const {
  wait();
  auto spec = spec_from_json(spec_json);
  if (!spec)
    return make_error(errc::invalid_argument,
                      "400: the spec is not a flat JSON object");
  double before = 0;
  double after = 0;
  {
    std::lock_guard guard{mtx_};
    before = faults_.fail_before_apply;
    after = faults_.fail_after_apply;
  }
  if (chance(before)) {
    std::lock_guard guard{mtx_};
    ++audit_.faults.failed_before_apply;
    return make_error(errc::overloaded,
                      "503: the provider is busy; retry after 100 ms");
  }
  caf::expected<mutation_result> answer{mutation_result{}};
  {
    std::lock_guard guard{mtx_};
    auto target = kind + "/" + name;
    std::string print = spec_json + "|"
                        + (expected_version ? std::to_string(*expected_version)
                                            : std::string{"*"});
    if (auto i = keys_.find(key); i != keys_.end()) {
      auto& rec = i->second;
      if (rec.what != what || rec.target != target || rec.fingerprint != print)
        return make_error(errc::invalid_argument,
                          "422: Idempotency-Key '" + key
                              + "' was used with other parameters");
      ++audit_.replayed;
      if (!rec.answer)
        return rec.answer.error();
      auto replay = *rec.answer;
      replay.replayed = true;
      return replay;
    }
    answer = apply(what, kind, name, *spec, key, expected_version);
    // Bounded by the test's workload; a runaway caller fails loudly.
    GRANARY_ASSERT(keys_.size() < 10'000'000,
                   "the in-memory cloud's key record is full");
    keys_.emplace(key, record{what, target, print, answer});
    ++audit_.applied;
  }
  if (chance(after)) {
    std::lock_guard guard{mtx_};
    ++audit_.faults.failed_after_apply;
    return make_error(errc::handler_failed,
                      "500: internal error (the change may have applied)");
  }
  return answer;
}

caf::expected<mutation_result>
memory_cloud::apply(op what, const std::string& kind, const std::string& name,
                    const std::map<std::string, std::string>& spec,
                    const std::string& key,
                    std::optional<uint64_t> expected_version) const {
  auto i = resources_.find({kind, name});
  bool live = i != resources_.end() && i->second.live;
  auto label = kind + " '" + name + "'";
  if (what == op::del) {
    if (!live)
      return make_error(errc::not_found, "404: " + label + " does not exist");
    i->second.live = false;
    ++i->second.deleted;
    return mutation_result{200, false, i->second.res};
  }
  if (what == op::update) {
    if (!live)
      return make_error(errc::invalid_argument,
                        "412: " + label + " does not exist");
    auto& e = i->second;
    if (expected_version && *expected_version != e.res.version)
      return make_error(errc::invalid_argument,
                        "412: " + label + " is at version "
                            + std::to_string(e.res.version));
    if (e.res.spec != spec) {
      e.res.spec = spec;
      ++e.res.version;
    }
    return mutation_result{200, false, e.res};
  }
  if (live) {
    auto& e = i->second;
    if (e.res.spec != spec) {
      ++audit_.conflicts;
      return make_error(errc::invalid_argument,
                        "409: " + label + " exists with another spec");
    }
    audit_.double_creates.push_back({kind, name, key});
    return mutation_result{200, false, e.res};
  }
  if (i == resources_.end())
    i = resources_.emplace(std::pair{kind, name}, entry{}).first;
  auto& e = i->second;
  e.res = resource{kind, name, 1, spec};
  e.live = true;
  e.created_by = key;
  ++e.created;
  return mutation_result{201, false, e.res};
}

audit_summary memory_cloud::audit() const {
  std::lock_guard guard{mtx_};
  auto out = audit_;
  out.live.clear();
  out.resources.clear();
  for (auto& [id, e] : resources_) {
    if (e.live)
      ++out.live[id.first];
    out.resources.push_back(
        {id.first, id.second, e.created, e.deleted, e.live});
  }
  return out;
}

} // namespace fake_cloud

#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "runtime/assert.hpp"
#include "runtime/sys.hpp"
#include "samples/control_plane/fake_cloud/client.hpp"

namespace fake_cloud {

/// Faults of a `memory_cloud`. Random draws come from `granary::sys`, so
/// under the deterministic simulation they follow the run's seed.
struct memory_faults {
  /// Each call waits a uniform latency in [min, max] (virtual time under
  /// a simulation).
  std::chrono::milliseconds min_latency{0};
  std::chrono::milliseconds max_latency{0};
  /// Fraction of mutations answered 503 before they are applied.
  double fail_before_apply = 0;
  /// Fraction of mutations applied and then answered 500 (the case
  /// idempotency keys exist for).
  double fail_after_apply = 0;
};

/// The fake cloud's API in process, with the server's semantics (an
/// idempotency record per key, 409 for a create that meets another spec,
/// 412 for an update of a missing resource, a double create recorded when
/// a create under a new key meets the same live spec) and its audit, for
/// the control-plane sample under the deterministic simulation, where no
/// socket may be opened. Add it to a silo's services as a `fake_cloud::api`.
class memory_cloud : public api {
public:
  explicit memory_cloud(memory_faults faults = {});

  caf::expected<mutation_result>
  put(const std::string& kind, const std::string& name,
      const std::string& spec_json,
      const std::string& idempotency_key) const override;

  caf::expected<mutation_result> update(const std::string& kind,
                                        const std::string& name,
                                        const std::string& spec_json,
                                        const std::string& idempotency_key,
                                        std::optional<uint64_t> expected_version
                                        = std::nullopt) const override;

  caf::expected<mutation_result>
  del(const std::string& kind, const std::string& name,
      const std::string& idempotency_key) const override;

  caf::expected<resource> get(const std::string& kind,
                              const std::string& name) const override;

  /// Replaces the faults (e.g. none once a test's faults stop).
  void set_faults(memory_faults faults);

  /// The mutation record (see `audit_summary`).
  audit_summary audit() const;

  /// Forgets every resource and key.
  void clear();

private:
  enum class op { put, update, del };

  struct entry {
    resource res;
    bool live = false;
    std::string created_by;
    uint64_t created = 0;
    uint64_t deleted = 0;
  };

  struct record {
    op what = op::put;
    std::string target;
    std::string fingerprint;
    caf::expected<mutation_result> answer{mutation_result{}};
  };

  // One mutation: latency, faults, the key's record, then `apply`.
  caf::expected<mutation_result>
  mutate(op what, const std::string& kind, const std::string& name,
         const std::string& spec_json, const std::string& key,
         std::optional<uint64_t> expected_version) const;

  caf::expected<mutation_result>
  apply(op what, const std::string& kind, const std::string& name,
        const std::map<std::string, std::string>& spec, const std::string& key,
        std::optional<uint64_t> expected_version) const;

  // True with probability `p`.
  static bool chance(double p);

  // Waits the configured latency.
  void wait() const;

  mutable granary::sys::mutex mtx_;
  memory_faults faults_;
  mutable std::map<std::pair<std::string, std::string>, entry> resources_;
  mutable std::map<std::string, record> keys_;
  mutable audit_summary audit_;
};

} // namespace fake_cloud

#pragma once

// The control-plane sample: resource grains for the pieces of a SaaS
// namespace, a cell capacity grain, a limiter in front of the provider
// API, and the workflows that orchestrate them (create, roll out, rotate,
// migrate), against the fake cloud API of fake_cloud/.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "actors/activity.hpp"
#include "actors/grain.hpp"
#include "actors/resource.hpp"
#include "actors/workflow.hpp"
#include "control_plane.pb.h"

namespace granary::cp {

/// Where activities reach the provider API, and how hard they push it. A
/// silo hands it to the sample's grains and activities as a service:
/// `services.add(std::make_shared<cp::cloud_config>(cfg))` (see
/// `granary::service_registry`); without it, API calls fail and retry.
struct cloud_config {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  /// Per-request deadline.
  std::chrono::milliseconds timeout{2'000};
  /// Token bucket of the `cloud_api_limiter` grain: requests per second
  /// and burst (0: unlimited).
  double rate_per_s = 0;
  uint32_t burst = 1;
  /// The largest quota `limit` a namespace may ask for; more is refused by
  /// the quota reconcile for good, which makes its workflow compensate.
  int64_t max_quota = 1'000;
};

// -- resource grains ----------------------------------------------------------

/// A provider resource kind: its grain type name and its API kind.
template <class Kind>
class cloud_resource
    : public resource<cloud_resource<Kind>, CloudSpec, CloudActual> {
public:
  static constexpr std::string_view type_name = Kind::type_name;

  static caf::expected<CloudActual>
  reconcile(const activity_context& ctx,
            const reconcile_input<CloudSpec, CloudActual>& in);
};

struct db_shard_kind {
  static constexpr std::string_view type_name = "cp.db_shard";
  static constexpr std::string_view api = "db_shard";
};
struct certificate_kind {
  static constexpr std::string_view type_name = "cp.certificate";
  static constexpr std::string_view api = "certificate";
};
struct dns_record_kind {
  static constexpr std::string_view type_name = "cp.dns_record";
  static constexpr std::string_view api = "dns_record";
};
struct ingress_route_kind {
  static constexpr std::string_view type_name = "cp.ingress_route";
  static constexpr std::string_view api = "ingress_route";
};
struct quota_kind {
  static constexpr std::string_view type_name = "cp.quota";
  static constexpr std::string_view api = "quota";
};

using db_shard = cloud_resource<db_shard_kind>;
using certificate = cloud_resource<certificate_kind>;
using dns_record = cloud_resource<dns_record_kind>;
using ingress_route = cloud_resource<ingress_route_kind>;
using quota = cloud_resource<quota_kind>;

/// The provider API kinds a ready namespace owns, one resource each.
inline constexpr std::string_view namespace_kinds[]
    = {"db_shard", "certificate", "dns_record", "ingress_route", "quota"};

/// Capacity of one cell: namespaces reserve and release slots. Its
/// version is what ring rollouts record.
class cell : public grain<cell, CellState> {
public:
  static constexpr std::string_view type_name = "cp.cell";

  static void define(handlers<cell>& h);

  caf::expected<ReserveResult> reserve(turn& t, const Reserve& m);
  caf::expected<done> release(turn& t, const Release& m);
  caf::expected<CellInfo> info(turn& t, const GetCell& m);
  caf::expected<Deployed> deployed(turn& t, const Deployed& m);
};

/// A token bucket in front of the throttled provider API. Activities ask
/// it before each call (a transient call: no write) and wait the granted
/// time, so a burst of workflows meets 429s rarely instead of constantly.
class cloud_api_limiter : public grain<cloud_api_limiter> {
public:
  static constexpr std::string_view type_name = "cp.cloud_api_limiter";

  static void define(handlers<cloud_api_limiter>& h);

  caf::expected<Grant> acquire(turn& t, const Acquire& m);

private:
  // Theoretical arrival time of the next request (GCRA), in ms.
  double tat_ms_ = 0;
};

// -- workflows ----------------------------------------------------------------

/// Creates a namespace: reserves a cell slot, then creates its db shard,
/// certificate, DNS record, ingress route and quota, each a resource grain
/// awaited until ready. On a failure it compensates in reverse order.
/// Publishes its stage under "stage".
class create_namespace
    : public workflow<create_namespace, CreateNamespace, NamespaceResult> {
public:
  static constexpr std::string_view type_name = "cp.create_namespace";

  task<NamespaceResult> run(workflow_context& ctx, const CreateNamespace& in);
};

/// Rolls a version over cells in rings: bounded parallelism inside a ring,
/// a health check per cell, and a durable bake timer between rings during
/// which a "halt" signal stops it. A halted or unhealthy rollout waits for
/// a "resume" signal. Publishes its progress under "stage".
class ring_rollout : public workflow<ring_rollout, RingRollout, RolloutResult> {
public:
  static constexpr std::string_view type_name = "cp.ring_rollout";

  task<RolloutResult> run(workflow_context& ctx, const RingRollout& in);
};

/// Re-issues the certificates of the given namespaces with a new serial,
/// with bounded parallelism.
class rotate_certificates
    : public workflow<rotate_certificates, RotateCertificates, RotationResult> {
public:
  static constexpr std::string_view type_name = "cp.rotate_certificates";

  task<RotationResult> run(workflow_context& ctx, const RotateCertificates& in);
};

/// Drives certificate rotation from a durable reminder: every interval it
/// starts a `rotate_certificates` run for the namespaces it watches.
class cert_rotator : public grain<cert_rotator, RotatorState> {
public:
  static constexpr std::string_view type_name = "cp.cert_rotator";

  static void define(handlers<cert_rotator>& h);

  caf::expected<done> watch(turn& t, const WatchNamespaces& m);
  caf::expected<done> tick(turn& t, const RotateTick& m);
};

/// Moves a namespace between cells: reserves the target, replicates the
/// shard, cuts DNS over, then drains (deletes the replica source and
/// releases the old slot).
class migrate_namespace
    : public workflow<migrate_namespace, MigrateNamespace, MigrationResult> {
public:
  static constexpr std::string_view type_name = "cp.migrate_namespace";

  task<MigrationResult> run(workflow_context& ctx, const MigrateNamespace& in);
};

/// Resource retry settings suited to a flaky API.
resource_options default_resource_options();

/// Registers every grain, workflow and activity of the sample.
caf::error register_all(grain_registry& reg, activity_pool& pool,
                        resource_options opts = default_resource_options());

} // namespace granary::cp

#include "samples/control_plane/control_plane.hpp"

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "actors/saga.hpp"
#include "runtime/log.hpp"
#include "runtime/sys.hpp"
#include "samples/control_plane/fake_cloud/client.hpp"

namespace granary::cp {

namespace {

// The API settings of this silo (a service the host added); without one,
// activities reach no API and fail, which their retries absorb.
const cloud_config& settings(const service_registry& services) {
  static const cloud_config none;
  auto* cfg = services.find<cloud_config>();
  return cfg ? *cfg : none;
}

// Waits for the limiter's grant; a limiter that cannot be reached does not
// stop the call (the API's own 429s still protect it).
void wait_for_token(const activity_context& ctx) {
  if (settings(ctx.services()).rate_per_s <= 0 || !ctx.host)
    return;
  auto grant = grain_ref<cloud_api_limiter>{*ctx.host, "provider"}.call<Grant>(
      Acquire{}, std::chrono::seconds{2});
  if (grant && grant->wait_ms() > 0)
    sys::sleep_for(
        std::chrono::milliseconds{std::min<int64_t>(grant->wait_ms(), 5'000)});
}

// The provider API of this silo: a `fake_cloud::api` service when the host
// added one (the deterministic simulation's in-process cloud), else an HTTP
// client of the `cloud_config` service.
class provider {
public:
  explicit provider(const activity_context& ctx) {
    if (auto* api = ctx.services().find<fake_cloud::api>()) {
      api_ = api;
      return;
    }
    auto& cfg = settings(ctx.services());
    http_.emplace(cfg.host, cfg.port, cfg.timeout);
    api_ = &*http_;
  }

  provider(const provider&) = delete;
  provider& operator=(const provider&) = delete;

  const fake_cloud::api& operator*() const {
    return *api_;
  }

private:
  std::optional<fake_cloud::client> http_;
  const fake_cloud::api* api_ = nullptr;
};

CloudActual actual_of(const fake_cloud::resource& r) {
  CloudActual out;
  out.set_version(r.version);
  for (auto& [k, v] : r.spec)
    (*out.mutable_fields())[k] = v;
  return out;
}

// Creates or updates `kind/name`. The provider separates the two (a create
// of a live resource with another spec is a 409 conflict, an update of a
// missing one a 412), so the likelier one goes first and the other follows
// under a derived key, which keeps retries of the whole attempt replayable.
caf::expected<fake_cloud::mutation_result>
upsert(const fake_cloud::api& api, const std::string& kind,
       const std::string& name, const std::string& json, const std::string& key,
       bool exists) {
  if (exists) {
    auto res = api.update(kind, name, json, key);
    if (res || code_of(res.error()) != errc::invalid_argument)
      return res;
    return api.put(kind, name, json, key + ":create");
  }
  auto res = api.put(kind, name, json, key);
  if (res || code_of(res.error()) != errc::invalid_argument)
    return res;
  return api.update(kind, name, json, key + ":update");
}

std::string cell_name(uint32_t i) {
  return "cell-" + std::to_string(i);
}

CloudSpec spec(std::initializer_list<std::pair<std::string, std::string>> kv) {
  CloudSpec out;
  for (auto& [k, v] : kv)
    (*out.mutable_fields())[k] = v;
  return out;
}

// Sets the desired state of resource `R` named `name` and waits until it
// is reconciled; fails unless it ends READY.
template <class R>
task<wire::ResourceInfo> ensure(workflow_context& ctx, std::string name,
                                CloudSpec desired) {
  auto set = R::desire(desired, true);
  auto target = id_of<R>(std::move(name));
  auto info = co_await ctx.call<wire::ResourceInfo>(target, set);
  if (!info)
    co_return info.error();
  if (info->phase() != wire::ResourceState::READY)
    co_return make_error(errc::handler_failed,
                         to_string(target) + " ended "
                             + wire::ResourceState::Phase_Name(info->phase())
                             + ": " + info->last_error());
  co_return *info;
}

// Removes resource `R` named `name` and waits until that is reconciled.
template <class R>
task<google::protobuf::Empty> remove(workflow_context& ctx, std::string name) {
  auto set = R::removal(true);
  auto target = id_of<R>(std::move(name));
  auto info = co_await ctx.call<wire::ResourceInfo>(target, set);
  if (!info)
    co_return info.error();
  co_return google::protobuf::Empty{};
}

void publish_stage(workflow_context& ctx, std::string stage) {
  Stage s;
  s.set_stage(std::move(stage));
  static_cast<void>(ctx.publish("stage", s));
}

} // namespace

// -- resource grains ----------------------------------------------------------

template <class Kind>
caf::expected<CloudActual> cloud_resource<Kind>::reconcile(
    const activity_context& ctx,
    const reconcile_input<CloudSpec, CloudActual>& in) {
  auto kind = std::string{Kind::api};
  // Keys are global at the provider. The key names the grain type, which
  // keeps a namespace's db shard and certificate (same name, same
  // generation) apart; the kind prefix still does for generations set
  // before the type was part of the key (key format 0).
  auto key = kind + ":" + ctx.idempotency_key;
  if (kind == "quota" && !in.remove) {
    auto& cfg = settings(ctx.services());
    auto i = in.desired.fields().find("limit");
    if (i != in.desired.fields().end() && std::stoll(i->second) > cfg.max_quota)
      return make_error(errc::invalid_argument,
                        "quota limit " + i->second + " exceeds the cell's "
                            + std::to_string(cfg.max_quota));
  }
  wait_for_token(ctx);
  provider cloud{ctx};
  auto& api = *cloud;
  if (in.remove) {
    auto res = api.del(kind, in.name, key);
    if (!res && code_of(res.error()) != errc::not_found)
      return std::move(res.error());
    return CloudActual{};
  }
  std::map<std::string, std::string> fields{in.desired.fields().begin(),
                                            in.desired.fields().end()};
  auto json = fake_cloud::spec_to_json(fields);
  auto res = upsert(api, kind, in.name, json, key, in.actual.has_value());
  if (!res)
    return std::move(res.error());
  return actual_of(res->res);
}

template class cloud_resource<db_shard_kind>;
template class cloud_resource<certificate_kind>;
template class cloud_resource<dns_record_kind>;
template class cloud_resource<ingress_route_kind>;
template class cloud_resource<quota_kind>;

void cell::define(handlers<cell>& h) {
  h.on(&cell::reserve).on(&cell::release).on(&cell::info).on(&cell::deployed);
}

caf::expected<ReserveResult> cell::reserve(turn&, const Reserve& m) {
  ReserveResult out;
  auto& st = view();
  if (st.tenants().count(m.tenant()) > 0) {
    out.set_ok(true); // Reserved by an earlier attempt: idempotent.
  } else if (st.tenants_size() >= static_cast<int>(m.capacity())) {
    out.set_reason("cell is full (" + std::to_string(m.capacity())
                   + " namespaces)");
  } else {
    (*state().mutable_tenants())[m.tenant()] = true;
    out.set_ok(true);
  }
  out.set_used(static_cast<uint32_t>(view().tenants_size()));
  return out;
}

caf::expected<done> cell::release(turn&, const Release& m) {
  if (view().tenants().count(m.tenant()) > 0)
    state().mutable_tenants()->erase(m.tenant());
  return done{};
}

caf::expected<CellInfo> cell::info(turn&, const GetCell&) {
  CellInfo out;
  out.set_used(static_cast<uint32_t>(view().tenants_size()));
  out.set_version(view().version());
  return out;
}

caf::expected<Deployed> cell::deployed(turn&, const Deployed& m) {
  if (view().version() != m.version())
    state().set_version(m.version());
  return m;
}

void cloud_api_limiter::define(handlers<cloud_api_limiter>& h) {
  h.on(&cloud_api_limiter::acquire);
}

caf::expected<Grant> cloud_api_limiter::acquire(turn& t, const Acquire&) {
  auto& cfg = settings(t.services());
  Grant out;
  if (cfg.rate_per_s <= 0)
    return out;
  // GCRA: requests are spaced by `interval`, with `burst` of them allowed
  // ahead of schedule.
  auto interval = 1'000.0 / cfg.rate_per_s;
  auto now = static_cast<double>(t.now_ms());
  auto tat = std::max(tat_ms_, now) + interval;
  auto wait = tat - now - interval * std::max<uint32_t>(cfg.burst, 1);
  tat_ms_ = tat;
  out.set_wait_ms(wait > 0 ? static_cast<int64_t>(wait) : 0);
  return out;
}

// -- create_namespace ---------------------------------------------------------

task<NamespaceResult> create_namespace::run(workflow_context& ctx,
                                            const CreateNamespace& in) {
  auto name = in.name();
  std::string limit = in.tier() == "xl"      ? "5000"
                      : in.tier() == "large" ? "500"
                                             : "100";
  saga undo;
  caf::error failure;
  publish_stage(ctx, "reserving capacity in " + in.cell());
  Reserve reserve;
  reserve.set_tenant(name);
  reserve.set_capacity(64);
  auto cell_id = id_of<cell>(in.cell());
  auto slot = co_await ctx.call<ReserveResult>(cell_id, reserve);
  if (!slot)
    co_return slot.error();
  if (!slot->ok())
    co_return make_error(errc::invalid_argument,
                         "no capacity for " + name + ": " + slot->reason());
  undo.add([&ctx, cell_id, name]() -> task<google::protobuf::Empty> {
    Release release;
    release.set_tenant(name);
    auto r = co_await ctx.call<done>(cell_id, release);
    if (!r)
      co_return r.error();
    co_return google::protobuf::Empty{};
  });
  NamespaceResult out;
  out.set_name(name);
  out.set_cell(in.cell());
  out.set_hostname(name + ".example.net");
  // Each step creates one resource and registers its removal.
  publish_stage(ctx, "creating db shard");
  // GCC 12 may destroy temporaries inside a co_await expression twice:
  // every argument below is a named local.
  auto shard_spec = spec({{"cell", in.cell()}, {"tier", in.tier()}});
  auto shard = co_await ensure<db_shard>(ctx, name, shard_spec);
  if (!shard)
    failure = shard.error();
  else
    undo.add([&ctx, name] { return remove<db_shard>(ctx, name); });
  if (!failure) {
    publish_stage(ctx, "issuing certificate");
    auto cert_spec = spec({{"host", out.hostname()}, {"serial", "1"}});
    auto cert = co_await ensure<certificate>(ctx, name, cert_spec);
    if (!cert) {
      failure = cert.error();
    } else {
      undo.add([&ctx, name] { return remove<certificate>(ctx, name); });
      out.set_certificate("cert-" + name + "-v"
                          + std::to_string(cert->observed_generation()));
    }
  }
  if (!failure) {
    publish_stage(ctx, "creating dns record");
    auto dns_spec = spec({{"host", out.hostname()}, {"target", in.cell()}});
    auto dns = co_await ensure<dns_record>(ctx, name, dns_spec);
    if (!dns)
      failure = dns.error();
    else
      undo.add([&ctx, name] { return remove<dns_record>(ctx, name); });
  }
  if (!failure) {
    publish_stage(ctx, "creating ingress route");
    auto route_spec = spec({{"host", out.hostname()}, {"cell", in.cell()}});
    auto route = co_await ensure<ingress_route>(ctx, name, route_spec);
    if (!route)
      failure = route.error();
    else
      undo.add([&ctx, name] { return remove<ingress_route>(ctx, name); });
  }
  if (!failure) {
    publish_stage(ctx, "setting quota");
    auto quota_spec = spec({{"limit", limit}});
    auto q = co_await ensure<quota>(ctx, name, quota_spec);
    if (!q)
      failure = q.error();
    else
      undo.add([&ctx, name] { return remove<quota>(ctx, name); });
  }
  if (failure) {
    publish_stage(ctx, "compensating");
    auto undone = co_await undo.compensate();
    publish_stage(ctx, undone ? "compensated" : "compensation failed");
    if (!undone)
      co_return make_error(errc::handler_failed,
                           "creating " + name + " failed (" + describe(failure)
                               + ") and compensating failed too: "
                               + describe(undone.error()));
    co_return make_error(errc::cancelled, "creating " + name
                                              + " failed and was compensated: "
                                              + describe(failure));
  }
  publish_stage(ctx, "ready");
  co_return out;
}

// -- ring_rollout -------------------------------------------------------------

task<RolloutResult> ring_rollout::run(workflow_context& ctx,
                                      const RingRollout& in) {
  RolloutResult out;
  auto rings = std::max<uint32_t>(in.rings(), 1);
  auto parallelism = std::max<uint32_t>(in.parallelism(), 1);
  activity_options opts;
  opts.initial_interval = std::chrono::milliseconds{50};
  opts.max_attempts = 8;
  opts.start_to_close = std::chrono::seconds{10};
  opts.non_retryable = fake_cloud::non_retryable_errors();
  std::string deploy = "cp.deploy_cell";
  std::string health = "cp.health_check";
  std::string halt_name = "halt";
  std::string resume_name = "resume";
  // Cells [first, last) as "cell-2..cell-4", "cell-2" or "no cells".
  auto span = [](uint32_t first, uint32_t last) {
    if (first >= last)
      return std::string{"no cells"};
    if (last - first == 1)
      return cell_name(first);
    return cell_name(first) + ".." + cell_name(last - 1);
  };
  for (uint32_t ring = 0; ring < rings; ++ring) {
    // Ring r holds cells [first, last): the first ring is the smallest.
    auto first = in.cells() * ring / rings;
    auto last = in.cells() * (ring + 1) / rings;
    // Every stage of a ring starts alike: "ring 2/3 (cell-2..cell-4): ".
    auto label = "ring " + std::to_string(ring + 1) + "/"
                 + std::to_string(rings) + " (" + span(first, last) + "): ";
    for (auto begin = first; begin < last; begin += parallelism) {
      auto end = std::min(last, begin + parallelism);
      publish_stage(ctx, label + "deploying " + span(begin, end));
      std::vector<workflow_context::awaiter<Deployed>> window;
      for (auto c = begin; c < end; ++c) {
        DeployCell d;
        d.set_cell(cell_name(c));
        d.set_version(in.version());
        window.push_back(ctx.activity<Deployed>(deploy, d, opts));
      }
      co_await ctx.all(window);
      bool healthy = true;
      std::string why;
      for (auto c = begin; c < end && healthy; ++c) {
        auto& res = window[c - begin];
        auto deployed = res.result();
        if (!deployed) {
          healthy = false;
          why = describe(deployed.error());
          break;
        }
        DeployCell d;
        d.set_cell(cell_name(c));
        d.set_version(in.version());
        auto ok = co_await ctx.activity<Deployed>(health, d, opts);
        if (!ok) {
          healthy = false;
          why = describe(ok.error());
          break;
        }
        auto cell_id = id_of<cell>(cell_name(c));
        auto recorded = co_await ctx.call<Deployed>(cell_id, *deployed);
        if (!recorded)
          co_return recorded.error();
        out.set_cells_done(out.cells_done() + 1);
      }
      if (!healthy) {
        publish_stage(ctx,
                      label + "unhealthy (" + why + "); waiting for resume");
        auto resumed = co_await ctx.wait_signal<Resume>(resume_name);
        if (!resumed)
          co_return resumed.error();
        begin -= parallelism; // Retry this window.
        continue;
      }
    }
    if (ring + 1 == rings)
      break;
    publish_stage(ctx,
                  label + "baking for " + std::to_string(in.bake_ms()) + " ms");
    std::chrono::milliseconds bake{in.bake_ms()};
    auto halt = co_await ctx.wait_signal<Halt>(halt_name, bake);
    if (halt) {
      out.set_halted(true);
      publish_stage(ctx, label + "halted: " + halt->reason()
                             + "; waiting for resume");
      auto resumed = co_await ctx.wait_signal<Resume>(resume_name);
      if (!resumed)
        co_return resumed.error();
    } else if (code_of(halt.error()) != errc::timeout) {
      co_return halt.error();
    }
  }
  publish_stage(ctx, "rolled out " + in.version() + " to "
                         + std::to_string(out.cells_done()) + " cells in "
                         + std::to_string(rings) + "/" + std::to_string(rings)
                         + " rings");
  co_return out;
}

// -- certificates -------------------------------------------------------------

task<RotationResult> rotate_certificates::run(workflow_context& ctx,
                                              const RotateCertificates& in) {
  RotationResult out;
  auto parallelism = std::max<uint32_t>(in.parallelism(), 1);
  auto n = static_cast<uint32_t>(in.namespaces_size());
  for (uint32_t begin = 0; begin < n; begin += parallelism) {
    auto end = std::min(n, begin + parallelism);
    std::vector<workflow_context::awaiter<wire::ResourceInfo>> window;
    for (auto i = begin; i < end; ++i) {
      auto& name = in.namespaces(static_cast<int>(i));
      auto desired
          = spec({{"host", name + ".example.net"}, {"serial", in.serial()}});
      auto set = certificate::desire(desired, true);
      window.push_back(
          ctx.call<wire::ResourceInfo>(id_of<certificate>(name), set));
    }
    co_await ctx.all(window);
    for (auto& w : window) {
      auto r = w.result();
      if (r && r->phase() == wire::ResourceState::READY)
        out.set_rotated(out.rotated() + 1);
      else
        out.set_failed(out.failed() + 1);
    }
  }
  co_return out;
}

void cert_rotator::define(handlers<cert_rotator>& h) {
  h.on(&cert_rotator::watch).on(&cert_rotator::tick);
}

caf::expected<done> cert_rotator::watch(turn& t, const WatchNamespaces& m) {
  auto& st = state();
  st.mutable_namespaces()->CopyFrom(m.namespaces());
  std::chrono::milliseconds every{std::max<int64_t>(m.interval_ms(), 10)};
  if (auto err = t.set_timer("rotate", every, RotateTick{}, every))
    return err;
  return done{};
}

caf::expected<done> cert_rotator::tick(turn& t, const RotateTick&) {
  auto& st = state();
  st.set_rounds(st.rounds() + 1);
  RotateCertificates run;
  run.mutable_namespaces()->CopyFrom(st.namespaces());
  run.set_serial(std::to_string(st.rounds() + 1));
  run.set_parallelism(8);
  // One workflow per round ("<key>-round-0", ...); its id makes a
  // redelivered tick harmless.
  if (auto err
      = t.send(id_of<rotate_certificates>(t.self().key + "-round-"
                                          + std::to_string(st.rounds() - 1)),
               run))
    return err;
  return done{};
}

// -- migrate_namespace --------------------------------------------------------

task<MigrationResult> migrate_namespace::run(workflow_context& ctx,
                                             const MigrateNamespace& in) {
  auto name = in.name();
  publish_stage(ctx, "reserving " + in.to_cell());
  Reserve reserve;
  reserve.set_tenant(name);
  reserve.set_capacity(64);
  auto to_cell = id_of<cell>(in.to_cell());
  auto slot = co_await ctx.call<ReserveResult>(to_cell, reserve);
  if (!slot)
    co_return slot.error();
  if (!slot->ok())
    co_return make_error(errc::invalid_argument,
                         "cannot migrate " + name + ": " + slot->reason());
  publish_stage(ctx, "replicating");
  activity_options opts;
  opts.initial_interval = std::chrono::milliseconds{50};
  opts.non_retryable = fake_cloud::non_retryable_errors();
  std::string replicate = "cp.replicate";
  auto copied = co_await ctx.activity<MigrationResult>(replicate, in, opts);
  if (!copied) {
    Release release;
    release.set_tenant(name);
    static_cast<void>(co_await ctx.call<done>(to_cell, release));
    co_return copied.error();
  }
  publish_stage(ctx, "cutting over");
  auto shard_spec = spec({{"cell", in.to_cell()}, {"tier", "standard"}});
  auto shard = co_await ensure<db_shard>(ctx, name, shard_spec);
  if (!shard)
    co_return shard.error();
  auto dns_spec
      = spec({{"host", name + ".example.net"}, {"target", in.to_cell()}});
  auto dns = co_await ensure<dns_record>(ctx, name, dns_spec);
  if (!dns)
    co_return dns.error();
  publish_stage(ctx, "draining " + in.from_cell());
  Release release;
  release.set_tenant(name);
  auto from_cell = id_of<cell>(in.from_cell());
  auto released = co_await ctx.call<done>(from_cell, release);
  if (!released)
    co_return released.error();
  publish_stage(ctx, "migrated");
  MigrationResult out;
  out.set_name(name);
  out.set_cell(in.to_cell());
  co_return out;
}

// -- activities and registration ----------------------------------------------

namespace {

caf::expected<Deployed> deploy_cell(const activity_context& ctx,
                                    const DeployCell& in) {
  wait_for_token(ctx);
  provider cloud{ctx};
  auto& api = *cloud;
  std::map<std::string, std::string> fields{{"version", in.version()}};
  auto json = fake_cloud::spec_to_json(fields);
  auto key = "cell:" + ctx.idempotency_key;
  auto res = upsert(api, "cell", in.cell(), json, key, false);
  if (!res)
    return std::move(res.error());
  Deployed out;
  out.set_cell(in.cell());
  out.set_version(in.version());
  return out;
}

caf::expected<Deployed> health_check(const activity_context& ctx,
                                     const DeployCell& in) {
  wait_for_token(ctx);
  provider cloud{ctx};
  auto& api = *cloud;
  auto res = api.get("cell", in.cell());
  if (!res)
    return std::move(res.error());
  auto i = res->spec.find("version");
  if (i == res->spec.end() || i->second != in.version())
    return make_error(errc::handler_failed,
                      in.cell() + " runs "
                          + (i == res->spec.end() ? "nothing" : i->second)
                          + ", not " + in.version());
  Deployed out;
  out.set_cell(in.cell());
  out.set_version(in.version());
  return out;
}

caf::expected<MigrationResult> replicate(const activity_context& ctx,
                                         const MigrateNamespace& in) {
  wait_for_token(ctx);
  provider cloud{ctx};
  auto& api = *cloud;
  std::map<std::string, std::string> fields{{"source", in.from_cell()},
                                            {"target", in.to_cell()}};
  auto key = "replica:" + ctx.idempotency_key;
  auto res
      = api.put("db_replica", in.name(), fake_cloud::spec_to_json(fields), key);
  if (!res && code_of(res.error()) != errc::invalid_argument)
    return std::move(res.error());
  // The replica is promoted by the cutover; remove the copy job's record.
  auto gone = api.del("db_replica", in.name(), key + ":done");
  if (!gone && code_of(gone.error()) != errc::not_found)
    return std::move(gone.error());
  MigrationResult out;
  out.set_name(in.name());
  out.set_cell(in.to_cell());
  return out;
}

} // namespace

resource_options default_resource_options() {
  resource_options opts;
  opts.initial_interval = std::chrono::milliseconds{50};
  opts.backoff_coefficient = 2.0;
  opts.max_interval = std::chrono::milliseconds{2'000};
  opts.max_attempts = 12;
  opts.attempt_timeout = std::chrono::seconds{30};
  return opts;
}

caf::error register_all(grain_registry& reg, activity_pool& pool,
                        resource_options opts) {
  for (auto err :
       {register_resource<db_shard>(reg, pool, opts),
        register_resource<certificate>(reg, pool, opts),
        register_resource<dns_record>(reg, pool, opts),
        register_resource<ingress_route>(reg, pool, opts),
        register_resource<quota>(reg, pool, opts), register_grain<cell>(reg),
        register_grain<cloud_api_limiter>(reg),
        register_grain<cert_rotator>(reg),
        register_workflow<create_namespace>(reg, &pool),
        register_workflow<ring_rollout>(reg, &pool),
        register_workflow<rotate_certificates>(reg, &pool),
        register_workflow<migrate_namespace>(reg, &pool),
        pool.add<DeployCell, Deployed>("cp.deploy_cell", deploy_cell),
        pool.add<DeployCell, Deployed>("cp.health_check", health_check),
        pool.add<MigrateNamespace, MigrationResult>("cp.replicate", replicate)})
    if (err)
      return err;
  return caf::none;
}

} // namespace granary::cp

// The control-plane sample's workflows against a real fake cloud API
// server (in-process, on loopback) that fails calls, under a manual clock:
// every namespace ends ready or compensated, nothing is applied or created
// twice, and nothing leaks.

#include <chrono>
#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "runtime/memory_storage.hpp"
#include "samples/control_plane/control_plane.hpp"
#include "samples/control_plane/fake_cloud/server.hpp"

using namespace granary;
using namespace std::chrono_literals;

namespace {

using shared_storage = shared_memory_storage;

class control_plane_test : public ::testing::Test {
protected:
  void SetUp() override {
    fake_cloud::server_config cfg;
    cfg.threads = 2;
    cfg.faults.seed = 7;
    cfg.faults.latency_max = 2ms;
    cfg.faults.fail_rate = 0.08;
    cfg.faults.fail_after_apply_rate = 0.08;
    cfg.faults.timeout_rate = 0.01;
    cfg.faults.timeout = 100ms;
    auto started = fake_cloud::server::start(cfg);
    ASSERT_TRUE(started) << describe(started.error());
    api = std::move(*started);
    mem = std::make_shared<memory_storage>();
    clk = std::make_shared<manual_clock>();
    start_silo();
  }

  void TearDown() override {
    stop_silo();
    api->stop();
  }

  void start_silo() {
    pool = std::make_unique<activity_pool>(8, 1'024);
    grain_registry reg;
    ASSERT_FALSE(cp::register_all(reg, *pool));
    silo_config cfg;
    cfg.partitions = 8;
    cfg.timer_poll = 5ms;
    auto cloud = std::make_shared<cp::cloud_config>();
    cloud->port = api->port();
    cloud->timeout = 50ms; // Shorter than the fault's hold: a real timeout.
    cloud->rate_per_s = 500;
    cloud->burst = 50;
    auto services = std::make_shared<service_registry>();
    ASSERT_FALSE(services->add(std::move(cloud)));
    cfg.services = services;
    auto started = silo::start(cfg, std::move(reg),
                               std::make_unique<shared_storage>(mem), clk);
    ASSERT_TRUE(started) << describe(started.error());
    s = std::move(*started);
    pool->attach(*s);
  }

  void stop_silo() {
    if (pool)
      pool->stop();
    if (s)
      s->stop();
    s.reset();
  }

  wire::WorkflowInfo describe_run(const grain_id& id) {
    auto r = s->call(id, std::make_shared<wire::DescribeWorkflow>(), 5s);
    return r ? static_cast<const wire::WorkflowInfo&>(**r)
             : wire::WorkflowInfo{};
  }

  // Advances the manual clock (retry backoffs, bake timers) while polling;
  // bounded by 60 s of real time.
  template <class Pred>
  bool until(Pred pred) {
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < deadline) {
      if (pred())
        return true;
      clk->advance(50);
      std::this_thread::sleep_for(2ms);
    }
    return pred();
  }

  std::string stage(const grain_id& id) {
    auto st = query_workflow<cp::Stage>(*s, id, "stage");
    return st ? st->stage() : std::string{};
  }

  std::unique_ptr<fake_cloud::server> api;
  std::shared_ptr<memory_storage> mem;
  std::shared_ptr<manual_clock> clk;
  std::unique_ptr<activity_pool> pool;
  std::unique_ptr<silo> s;
};

cp::CreateNamespace ns(int i) {
  cp::CreateNamespace in;
  in.set_name("ns-" + std::to_string(i));
  in.set_cell("cell-" + std::to_string(i % 3));
  // Every 6th asks for more quota than a cell grants: it compensates.
  in.set_tier(i % 6 == 5 ? "xl" : "standard");
  return in;
}

} // namespace

TEST_F(control_plane_test, namespaces_end_ready_or_compensated_without_leaks) {
  constexpr int n = 30;
  for (int i = 0; i < n; ++i)
    ASSERT_FALSE(s->send(id_of<cp::create_namespace>(ns(i).name()), ns(i)));
  // Half-way, the silo restarts on the same storage: runs resume.
  ASSERT_TRUE(until([&] {
    int done = 0;
    for (int i = 0; i < n; ++i) {
      auto st
          = describe_run(id_of<cp::create_namespace>(ns(i).name())).status();
      done += st == wire::WorkflowState::COMPLETED ? 1 : 0;
    }
    return done >= n / 3;
  }));
  stop_silo();
  start_silo();
  std::set<std::string> ready;
  std::set<std::string> compensated;
  ASSERT_TRUE(until([&] {
    ready.clear();
    compensated.clear();
    for (int i = 0; i < n; ++i) {
      auto id = id_of<cp::create_namespace>(ns(i).name());
      auto info = describe_run(id);
      if (info.status() == wire::WorkflowState::COMPLETED)
        ready.insert(ns(i).name());
      else if (info.status() == wire::WorkflowState::FAILED
               && stage(id) == "compensated")
        compensated.insert(ns(i).name());
    }
    return static_cast<int>(ready.size() + compensated.size()) == n;
  })) << ready.size()
      << " ready, " << compensated.size() << " compensated";
  // Exactly the xl ones compensated.
  std::set<std::string> xl;
  for (int i = 0; i < n; ++i)
    if (ns(i).tier() == "xl")
      xl.insert(ns(i).name());
  EXPECT_EQ(compensated, xl);
  auto audit = api->audit();
  EXPECT_TRUE(audit.keys_applied_more_than_once.empty());
  EXPECT_TRUE(audit.double_creates.empty());
  std::map<std::string, size_t> live;
  for (auto& r : audit.resources) {
    if (!r.live)
      continue;
    ++live[r.kind];
    EXPECT_EQ(ready.count(r.name), 1u)
        << r.kind << "/" << r.name << " leaked from a compensated namespace";
  }
  for (auto kind : cp::namespace_kinds)
    EXPECT_EQ(live[std::string{kind}], ready.size()) << kind;
  // The faults really happened: retries were needed.
  EXPECT_GT(audit.faults.failed_before_apply + audit.faults.failed_after_apply,
            0u);
  EXPECT_GT(audit.replayed, 0u);
  // Cell capacity: every ready namespace holds one slot, compensated ones
  // released theirs.
  uint32_t used = 0;
  for (int c = 0; c < 3; ++c) {
    auto info = grain_ref<cp::cell>{*s, "cell-" + std::to_string(c)}
                    .call<cp::CellInfo>(cp::GetCell{});
    ASSERT_TRUE(info);
    used += info->used();
  }
  EXPECT_EQ(used, ready.size());
}

TEST_F(control_plane_test, a_rollout_halts_on_signal_and_resumes) {
  cp::RingRollout in;
  in.set_version("v7");
  in.set_cells(6);
  in.set_rings(3);
  in.set_parallelism(2);
  in.set_bake_ms(60'000);
  auto id = id_of<cp::ring_rollout>("r1");
  ASSERT_FALSE(s->send(id, in));
  // The bake after ring 1 is a durable one-minute timer: halt during it.
  // Every stage of a ring names it the same way.
  ASSERT_TRUE(until([&] {
    return stage(id) == "ring 1/3 (cell-0..cell-1): baking for 60000 ms";
  })) << stage(id);
  cp::Halt halt;
  halt.set_reason("error budget burned");
  ASSERT_FALSE(s->send(id, make_signal("halt", halt), "halt-1"));
  ASSERT_TRUE(until([&] {
    return stage(id)
           == "ring 1/3 (cell-0..cell-1): halted: error budget burned; "
              "waiting for resume";
  })) << stage(id);
  // Halted: nothing more is deployed, however much time passes.
  clk->advance(10 * 60'000);
  std::this_thread::sleep_for(50ms);
  auto cell2
      = grain_ref<cp::cell>{*s, "cell-2"}.call<cp::CellInfo>(cp::GetCell{});
  ASSERT_TRUE(cell2);
  EXPECT_EQ(cell2->version(), "");
  ASSERT_FALSE(s->send(id, make_signal("resume", cp::Resume{}), "resume-1"));
  ASSERT_TRUE(until([&] {
    return describe_run(id).status() == wire::WorkflowState::COMPLETED;
  }));
  for (int c = 0; c < 6; ++c) {
    auto info = grain_ref<cp::cell>{*s, "cell-" + std::to_string(c)}
                    .call<cp::CellInfo>(cp::GetCell{});
    ASSERT_TRUE(info);
    EXPECT_EQ(info->version(), "v7") << "cell-" << c;
  }
  cp::RolloutResult out;
  ASSERT_TRUE(out.ParseFromString(describe_run(id).output()));
  EXPECT_EQ(out.cells_done(), 6u);
  EXPECT_TRUE(out.halted());
  EXPECT_EQ(stage(id), "rolled out v7 to 6 cells in 3/3 rings");
}

TEST_F(control_plane_test,
       a_reminder_rotates_certificates_and_a_namespace_migrates) {
  ASSERT_FALSE(s->send(id_of<cp::create_namespace>("ns-0"), ns(0)));
  ASSERT_TRUE(until([&] {
    return describe_run(id_of<cp::create_namespace>("ns-0")).status()
           == wire::WorkflowState::COMPLETED;
  }));
  cp::WatchNamespaces watch;
  watch.add_namespaces("ns-0");
  watch.set_interval_ms(60'000);
  ASSERT_FALSE(s->send(id_of<cp::cert_rotator>("certs"), watch));
  // A minute of virtual time later, round 0 has rotated the certificate.
  auto round0 = id_of<cp::rotate_certificates>("certs-round-0");
  ASSERT_TRUE(until([&] {
    return describe_run(round0).status() == wire::WorkflowState::COMPLETED;
  }));
  cp::RotationResult rotated;
  ASSERT_TRUE(rotated.ParseFromString(describe_run(round0).output()));
  EXPECT_EQ(rotated.rotated(), 1u);
  auto cert = grain_ref<cp::certificate>{*s, "ns-0"}.call<wire::ResourceInfo>(
      wire::GetResource{});
  ASSERT_TRUE(cert);
  cp::CloudActual actual;
  ASSERT_TRUE(actual.ParseFromString(cert->actual()));
  // Created with serial 1; every rotation round issues the next one.
  EXPECT_NE(actual.fields().at("serial"), "1");
  EXPECT_GE(cert->generation(), 2u);
  cp::MigrateNamespace m;
  m.set_name("ns-0");
  m.set_from_cell("cell-0");
  m.set_to_cell("cell-1");
  auto mid = id_of<cp::migrate_namespace>("m-0");
  ASSERT_FALSE(s->send(mid, m));
  ASSERT_TRUE(until([&] {
    return describe_run(mid).status() == wire::WorkflowState::COMPLETED;
  })) << describe_run(mid).error();
  auto from
      = grain_ref<cp::cell>{*s, "cell-0"}.call<cp::CellInfo>(cp::GetCell{});
  auto to = grain_ref<cp::cell>{*s, "cell-1"}.call<cp::CellInfo>(cp::GetCell{});
  ASSERT_TRUE(from && to);
  EXPECT_EQ(from->used(), 0u);
  EXPECT_EQ(to->used(), 1u);
  auto dns = grain_ref<cp::dns_record>{*s, "ns-0"}.call<wire::ResourceInfo>(
      wire::GetResource{});
  ASSERT_TRUE(dns);
  cp::CloudActual dns_actual;
  ASSERT_TRUE(dns_actual.ParseFromString(dns->actual()));
  EXPECT_EQ(dns_actual.fields().at("target"), "cell-1");
  EXPECT_TRUE(api->audit().double_creates.empty());
}

// Resource grains: desired/actual state, serialized reconciles with
// retries, resync of drift, waiting calls from workflows, removal.

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "actors/resource.hpp"
#include "actors/workflow.hpp"
#include "testing/test_grains.hpp"
#include "workflow_test.pb.h"

using namespace granary;
using namespace granary::testing;
using namespace granary::wftest;
using namespace std::chrono_literals;

namespace {

// A fake disk API: sizes by name, idempotent per key, slow and flaky on
// request; it tracks how many calls on one disk ever overlapped.
struct disk_api {
  std::mutex mtx;
  std::map<std::string, int64_t> disks;
  std::map<std::string, int> attempts;
  std::map<std::string, int> applied;
  int fail_first = 0;
  std::chrono::milliseconds latency{0};
  std::map<std::string, int> busy;
  int max_overlap = 0;
  // Calls started, and calls that found themselves abandoned after their
  // latency.
  int started = 0;
  int saw_abandoned = 0;

  caf::expected<DiskActual>
  apply(const activity_context& ctx,
        const reconcile_input<DiskSpec, DiskActual>& in) {
    std::chrono::milliseconds pause;
    {
      std::lock_guard guard{mtx};
      ++started;
      max_overlap = std::max(max_overlap, ++busy[in.name]);
      pause = latency;
    }
    if (pause.count() > 0)
      std::this_thread::sleep_for(pause);
    std::lock_guard guard{mtx};
    if (!ctx.heartbeat())
      ++saw_abandoned;
    --busy[in.name];
    if (++attempts[ctx.idempotency_key] <= fail_first)
      return make_error(errc::handler_failed, "disk API answered 503");
    ++applied[ctx.idempotency_key];
    DiskActual out;
    if (in.remove) {
      disks.erase(in.name);
      return out;
    }
    disks[in.name] = in.desired.size_gb();
    out.set_size_gb(in.desired.size_gb());
    out.set_disk_id("disk-" + in.name);
    return out;
  }
};

disk_api* api = nullptr;

class disk : public resource<disk, DiskSpec, DiskActual> {
public:
  static constexpr std::string_view type_name = "test.disk";

  static caf::expected<DiskActual>
  reconcile(const activity_context& ctx,
            const reconcile_input<DiskSpec, DiskActual>& in) {
    return api->apply(ctx, in);
  }
};

// Another resource type on the same fake API, with names of its own.
class volume : public resource<volume, DiskSpec, DiskActual> {
public:
  static constexpr std::string_view type_name = "test.volume";

  static caf::expected<DiskActual>
  reconcile(const activity_context& ctx,
            const reconcile_input<DiskSpec, DiskActual>& in) {
    return api->apply(ctx, in);
  }
};

// Provisions a disk and waits for it: the call is answered only once the
// disk is reconciled (or failed).
class provision_flow : public workflow<provision_flow, Order, Receipt> {
public:
  static constexpr std::string_view type_name = "wf.provision";

  task<Receipt> run(workflow_context& ctx, const Order& order) {
    DiskSpec spec;
    spec.set_size_gb(order.sleep_ms());
    auto set = disk::desire(spec, true);
    auto target = id_of<disk>(order.items(0));
    auto ready = co_await ctx.call<wire::ResourceInfo>(target, set);
    if (!ready)
      co_return ready.error();
    DiskActual actual;
    actual.ParseFromString(ready->actual());
    Receipt r;
    r.set_total(actual.size_gb());
    r.set_branch(wire::ResourceState::Phase_Name(ready->phase()));
    co_return r;
  }
};

class resource_test : public ::testing::Test {
protected:
  void SetUp() override {
    api = &fake;
    mem = std::make_shared<memory_storage>();
    clk = std::make_shared<manual_clock>();
    cfg.partitions = 8;
    cfg.timer_poll = 10ms;
    opts.initial_interval = 100ms;
    opts.max_interval = 400ms;
    opts.max_attempts = 4;
    opts.attempt_timeout = 600s;
  }

  void TearDown() override {
    if (pool)
      pool->stop();
    s.reset();
    api = nullptr;
  }

  void start() {
    pool = std::make_unique<activity_pool>(4, 64);
    grain_registry reg;
    ASSERT_FALSE(register_resource<disk>(reg, *pool, opts));
    ASSERT_FALSE(register_resource<volume>(reg, *pool, opts));
    ASSERT_FALSE(register_workflow<provision_flow>(reg, pool.get()));
    auto started = silo::start(cfg, std::move(reg),
                               std::make_unique<shared_storage>(mem), clk);
    ASSERT_TRUE(started) << describe(started.error());
    s = std::move(*started);
    pool->attach(*s);
  }

  wire::ResourceInfo get(const std::string& name) {
    auto r = grain_ref<disk>{*s, name}.call<wire::ResourceInfo>(
        wire::GetResource{});
    return r ? *r : wire::ResourceInfo{};
  }

  // Polls until `pred` holds, moving the manual clock 50 ms per poll.
  template <class Pred>
  bool until(Pred pred) {
    return eventually([&] {
      clk->advance(50);
      return pred();
    });
  }

  static DiskActual actual_of(const wire::ResourceInfo& info) {
    DiskActual a;
    a.ParseFromString(info.actual());
    return a;
  }

  disk_api fake;
  resource_options opts;
  std::shared_ptr<memory_storage> mem;
  std::shared_ptr<manual_clock> clk;
  silo_config cfg;
  std::unique_ptr<activity_pool> pool;
  std::unique_ptr<silo> s;
};

DiskSpec size(int64_t gb) {
  DiskSpec spec;
  spec.set_size_gb(gb);
  return spec;
}

} // namespace

TEST_F(resource_test, reconciles_desired_state_with_retries) {
  fake.fail_first = 2;
  start();
  ASSERT_FALSE(s->send(id_of<disk>("d1"), disk::desire(size(10))));
  ASSERT_TRUE(
      until([&] { return get("d1").phase() == wire::ResourceState::READY; }));
  auto info = get("d1");
  EXPECT_EQ(info.generation(), 1u);
  EXPECT_EQ(info.observed_generation(), 1u);
  EXPECT_TRUE(info.actual_present());
  EXPECT_EQ(actual_of(info).size_gb(), 10);
  EXPECT_EQ(actual_of(info).disk_id(), "disk-d1");
  std::lock_guard guard{fake.mtx};
  EXPECT_EQ(fake.disks["d1"], 10);
  // Three attempts under one idempotency key (type/name:generation),
  // applied once.
  EXPECT_EQ(fake.attempts["test.disk/d1:1"], 3);
  EXPECT_EQ(fake.applied["test.disk/d1:1"], 1);
}

TEST_F(resource_test, operations_on_one_resource_never_overlap) {
  fake.latency = 20ms;
  start();
  for (int gb = 1; gb <= 6; ++gb)
    ASSERT_FALSE(s->send(id_of<disk>("d2"), disk::desire(size(gb))));
  ASSERT_TRUE(until([&] {
    auto info = get("d2");
    return info.phase() == wire::ResourceState::READY
           && info.observed_generation() == 6;
  }));
  EXPECT_EQ(actual_of(get("d2")).size_gb(), 6);
  std::lock_guard guard{fake.mtx};
  EXPECT_EQ(fake.disks["d2"], 6);
  EXPECT_EQ(fake.max_overlap, 1);
  // Generations that arrived while one was in flight were folded into the
  // next reconcile instead of each running on its own.
  EXPECT_LT(fake.applied.size(), 6u);
}

TEST_F(resource_test, a_resync_repairs_drift) {
  opts.resync_interval = 1s;
  start();
  ASSERT_FALSE(s->send(id_of<disk>("d3"), disk::desire(size(5))));
  ASSERT_TRUE(
      until([&] { return get("d3").phase() == wire::ResourceState::READY; }));
  auto before = get("d3").reconciles();
  {
    std::lock_guard guard{fake.mtx};
    fake.disks["d3"] = 99; // Someone resized it behind our back.
  }
  ASSERT_TRUE(until([&] {
    std::lock_guard guard{fake.mtx};
    return fake.disks["d3"] == 5;
  }));
  EXPECT_GT(get("d3").reconciles(), before);
  EXPECT_EQ(get("d3").generation(), 1u);
}

TEST_F(resource_test, a_waiting_workflow_resumes_once_the_resource_is_ready) {
  fake.fail_first = 1;
  start();
  Order o;
  o.add_items("d4");
  o.set_sleep_ms(20);
  ASSERT_FALSE(s->send(id_of<provision_flow>("p1"), o));
  wire::WorkflowInfo info;
  ASSERT_TRUE(until([&] {
    auto r = s->call(id_of<provision_flow>("p1"),
                     std::make_shared<wire::DescribeWorkflow>());
    if (r)
      info = static_cast<const wire::WorkflowInfo&>(**r);
    return info.status() == wire::WorkflowState::COMPLETED;
  }));
  Receipt r;
  ASSERT_TRUE(r.ParseFromString(info.output()));
  EXPECT_EQ(r.total(), 20);
  EXPECT_EQ(r.branch(), "READY");
}

TEST_F(resource_test,
       a_failed_generation_fails_its_waiters_and_can_be_retried) {
  fake.fail_first = 100;
  opts.max_attempts = 2;
  start();
  Order o;
  o.add_items("d5");
  o.set_sleep_ms(7);
  ASSERT_FALSE(s->send(id_of<provision_flow>("p2"), o));
  wire::WorkflowInfo info;
  ASSERT_TRUE(until([&] {
    auto r = s->call(id_of<provision_flow>("p2"),
                     std::make_shared<wire::DescribeWorkflow>());
    if (r)
      info = static_cast<const wire::WorkflowInfo&>(**r);
    return info.status() == wire::WorkflowState::FAILED;
  }));
  EXPECT_NE(info.error().find("failed after 2 attempt(s)"), std::string::npos)
      << info.error();
  auto res = get("d5");
  EXPECT_EQ(res.phase(), wire::ResourceState::FAILED);
  EXPECT_NE(res.last_error().find("503"), std::string::npos);
  // Setting the same desired state again retries a failed resource.
  {
    std::lock_guard guard{fake.mtx};
    fake.fail_first = 0;
  }
  ASSERT_FALSE(s->send(id_of<disk>("d5"), disk::desire(size(7))));
  ASSERT_TRUE(
      until([&] { return get("d5").phase() == wire::ResourceState::READY; }));
}

TEST_F(resource_test, removal_deletes_the_resource) {
  start();
  ASSERT_FALSE(s->send(id_of<disk>("d6"), disk::desire(size(3))));
  ASSERT_TRUE(
      until([&] { return get("d6").phase() == wire::ResourceState::READY; }));
  ASSERT_FALSE(s->send(id_of<disk>("d6"), disk::removal()));
  ASSERT_TRUE(
      until([&] { return get("d6").phase() == wire::ResourceState::DELETED; }));
  EXPECT_FALSE(get("d6").actual_present());
  std::lock_guard guard{fake.mtx};
  EXPECT_EQ(fake.disks.count("d6"), 0u);
}

TEST_F(resource_test, a_wrong_spec_type_is_refused_with_the_expected_type) {
  start();
  wire::SetDesired bad;
  bad.set_spec_type("granary.wftest.Order");
  auto r = s->call(id_of<disk>("d7"), std::make_shared<wire::SetDesired>(bad));
  ASSERT_FALSE(r);
  EXPECT_EQ(code_of(r.error()), errc::invalid_argument);
  EXPECT_NE(describe(r.error()).find("granary.wftest.DiskSpec"),
            std::string::npos);
}

TEST_F(resource_test, state_survives_a_restart) {
  start();
  ASSERT_FALSE(s->send(id_of<disk>("d8"), disk::desire(size(8))));
  ASSERT_TRUE(
      until([&] { return get("d8").phase() == wire::ResourceState::READY; }));
  pool->stop();
  s.reset();
  start();
  auto info = get("d8");
  EXPECT_EQ(info.phase(), wire::ResourceState::READY);
  EXPECT_EQ(actual_of(info).size_gb(), 8);
  std::lock_guard guard{fake.mtx};
  EXPECT_EQ(fake.applied["test.disk/d8:1"], 1);
}

TEST_F(resource_test, a_reconcile_in_flight_at_a_restart_is_retried_at_once) {
  fake.latency = 200ms;
  start();
  ASSERT_FALSE(s->send(id_of<disk>("d9"), disk::desire(size(9))));
  ASSERT_TRUE(eventually([&] {
    std::lock_guard guard{fake.mtx};
    return fake.started == 1;
  }));
  // Its result is lost with the pool.
  pool->stop();
  s.reset();
  {
    std::lock_guard guard{fake.mtx};
    fake.latency = 0ms;
  }
  start();
  // The manual clock stands still: the 600 s attempt_timeout never passes.
  ASSERT_TRUE(eventually(
      [&] { return get("d9").phase() == wire::ResourceState::READY; }));
  EXPECT_EQ(actual_of(get("d9")).size_gb(), 9);
}

TEST_F(resource_test, a_timed_out_reconcile_is_abandoned_before_the_next) {
  fake.latency = 300ms;
  opts.attempt_timeout = 100ms;
  start();
  ASSERT_FALSE(s->send(id_of<disk>("d10"), disk::desire(size(10))));
  ASSERT_TRUE(eventually([&] {
    std::lock_guard guard{fake.mtx};
    return fake.started == 1;
  }));
  {
    std::lock_guard guard{fake.mtx};
    fake.latency = 0ms;
  }
  // attempt_timeout passes while the call still runs; then the retry's
  // backoff (initial_interval) passes.
  clk->advance(100);
  ASSERT_TRUE(eventually([&] { return pool->stats().abandoned == 1; }));
  clk->advance(100);
  ASSERT_TRUE(eventually(
      [&] { return get("d10").phase() == wire::ResourceState::READY; }));
  std::lock_guard guard{fake.mtx};
  EXPECT_EQ(fake.started, 2);
  EXPECT_EQ(fake.saw_abandoned, 1);
  EXPECT_EQ(fake.max_overlap, 1);
}

TEST_F(resource_test, two_resource_types_with_one_name_get_different_keys) {
  start();
  ASSERT_FALSE(s->send(id_of<disk>("x"), disk::desire(size(1))));
  ASSERT_FALSE(s->send(id_of<volume>("x"), volume::desire(size(2))));
  ASSERT_TRUE(until([&] {
    auto v = grain_ref<volume>{*s, "x"}.call<wire::ResourceInfo>(
        wire::GetResource{});
    return get("x").phase() == wire::ResourceState::READY && v
           && v->phase() == wire::ResourceState::READY;
  }));
  std::lock_guard guard{fake.mtx};
  EXPECT_EQ(fake.applied["test.disk/x:1"], 1);
  EXPECT_EQ(fake.applied["test.volume/x:1"], 1);
}

// The activity pool on its own: what a user who wires it by hand is told.

#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "actors/activity.hpp"
#include "testing/eventually.hpp"
#include "testing/log_capture.hpp"
#include "workflow.pb.h"

using namespace granary;
using namespace std::chrono_literals;

namespace {

activity_pool::job echo_job() {
  activity_pool::job j;
  j.workflow = grain_id{"test.flow", "w-1"};
  j.seq = 1;
  j.name = "echo";
  return j;
}

caf::error add_echo(activity_pool& pool) {
  return pool.add<wire::Signal, wire::Signal>(
      "echo",
      [](const activity_context&,
         const wire::Signal& in) -> caf::expected<wire::Signal> { return in; });
}

} // namespace

TEST(activity_pool, a_pool_never_attached_says_so_once) {
  granary::testing::log_capture logs;
  activity_pool pool{1, 16, 50ms};
  ASSERT_FALSE(add_echo(pool));
  auto type = std::string{wire::Signal::descriptor()->full_name()};
  ASSERT_FALSE(pool.submit(echo_job(), type));
  ASSERT_FALSE(pool.submit(echo_job(), type));
  EXPECT_TRUE(granary::testing::eventually(
      [&] { return logs.has("call activity_pool::attach(silo)"); }, 5s));
  // Once, not once per attempt or per pass of the monitor.
  auto warned = logs.count("have waited");
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(logs.count("have waited"), warned);
  EXPECT_EQ(warned, 1u);
  EXPECT_EQ(pool.stats().queued, 2u);
  pool.stop();
}

TEST(activity_pool, an_idle_pool_that_is_not_attached_stays_quiet) {
  granary::testing::log_capture logs;
  activity_pool pool{1, 16, 50ms};
  ASSERT_FALSE(add_echo(pool));
  std::this_thread::sleep_for(200ms);
  EXPECT_FALSE(logs.has("have waited"));
  pool.stop();
}

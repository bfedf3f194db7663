// The deterministic kernel: runs replay from their seed, virtual time
// jumps over waits, locks exclude, interleavings vary with the seed, and
// deadlocks, livelocks, crashes and pauses are what they claim.

#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/sys.hpp"
#include "sim/kernel.hpp"

using namespace granary;
using namespace std::chrono_literals;
using sim::kernel;
using sim::kernel_config;
using sim::run_result;

namespace {

kernel_config seeded(uint64_t seed) {
  kernel_config cfg;
  cfg.seed = seed;
  return cfg;
}

// Four threads each add 1 to a shared counter 50 times with a scheduling
// point between the read and the write; with `locked`, under a mutex.
// Returns the run and the final count.
std::pair<run_result, int> racy_counter(uint64_t seed, bool locked) {
  kernel k{seeded(seed)};
  int counter = 0;
  auto result = k.run([&] {
    sys::mutex m;
    std::vector<sys::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back("adder-" + std::to_string(t), [&] {
        for (int i = 0; i < 50; ++i) {
          std::unique_lock lock{m, std::defer_lock};
          if (locked)
            lock.lock();
          auto seen = counter;
          sys::yield();
          counter = seen + 1;
        }
      });
    for (auto& t : threads)
      t.join();
  });
  return {result, counter};
}

} // namespace

TEST(sim_kernel, the_same_seed_gives_the_same_run) {
  auto a = racy_counter(7, false);
  auto b = racy_counter(7, false);
  ASSERT_TRUE(a.first.ok) << a.first.detail;
  EXPECT_EQ(a.first.trace_hash, b.first.trace_hash);
  EXPECT_EQ(a.first.steps, b.first.steps);
  EXPECT_EQ(a.second, b.second);
}

TEST(sim_kernel, seeds_explore_different_interleavings) {
  std::set<uint64_t> hashes;
  std::set<int> counts;
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    auto [res, count] = racy_counter(seed, false);
    ASSERT_TRUE(res.ok) << res.detail;
    hashes.insert(res.trace_hash);
    counts.insert(count);
  }
  EXPECT_GT(hashes.size(), 15u);
  // Unlocked read-modify-write loses updates in some interleavings.
  EXPECT_GT(counts.size(), 1u);
  EXPECT_LT(*counts.begin(), 200);
}

TEST(sim_kernel, a_mutex_excludes_in_every_interleaving) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    auto [res, count] = racy_counter(seed, true);
    ASSERT_TRUE(res.ok) << res.detail;
    EXPECT_EQ(count, 200) << "seed " << seed;
  }
}

TEST(sim_kernel, virtual_time_jumps_over_sleeps_and_timeouts) {
  kernel k{seeded(1)};
  bool timed_out = false;
  sys::time_point before;
  sys::time_point after;
  auto wall = std::chrono::steady_clock::now();
  auto res = k.run([&] {
    before = sys::now();
    sys::sleep_for(3h);
    sys::mutex m;
    sys::condition_variable cv;
    std::unique_lock lock{m};
    timed_out = cv.wait_for(lock, 24h) == std::cv_status::timeout;
    after = sys::now();
  });
  ASSERT_TRUE(res.ok) << res.detail;
  EXPECT_TRUE(timed_out);
  EXPECT_GE(after - before, 27h);
  EXPECT_LT(after - before, 27h + 1s);
  EXPECT_LT(std::chrono::steady_clock::now() - wall, 10s);
}

TEST(sim_kernel, waiting_until_idle_lets_all_work_at_this_time_finish) {
  kernel k{seeded(3)};
  int done = 0;
  bool slept_done = false;
  std::chrono::nanoseconds waited{0};
  auto res = k.run([&] {
    std::vector<sys::thread> workers;
    for (int w = 0; w < 4; ++w)
      workers.emplace_back("worker", [&] {
        // Bounded: 50 scheduling points each.
        for (int i = 0; i < 50; ++i)
          sys::yield();
        ++done;
      });
    sys::thread sleeper{"sleeper", [&] {
                          sys::sleep_for(1h);
                          slept_done = true;
                        }};
    auto before = sys::now();
    k.wait_until_idle();
    waited = sys::now() - before;
    // Every worker finished, and the sleeper still sleeps: being idle
    // never moves the time to its deadline.
    if (done != 4 || slept_done)
      k.fail("idle",
             "woke before the others were done, or after the time moved");
    for (auto& w : workers)
      w.join();
    sleeper.join();
  });
  ASSERT_TRUE(res.ok) << res.invariant << ": " << res.detail;
  EXPECT_EQ(done, 4);
  EXPECT_TRUE(slept_done);
  EXPECT_LT(waited, 1s);
}

TEST(sim_kernel, a_notify_wakes_a_waiter_before_its_deadline) {
  kernel k{seeded(3)};
  bool woken = false;
  std::chrono::nanoseconds waited{0};
  auto res = k.run([&] {
    sys::mutex m;
    sys::condition_variable cv;
    bool flag = false;
    sys::thread setter{"setter", [&] {
                         sys::sleep_for(5s);
                         std::lock_guard guard{m};
                         flag = true;
                         cv.notify_all();
                       }};
    auto start = sys::now();
    {
      std::unique_lock lock{m};
      woken = cv.wait_for(lock, 1h, [&] { return flag; });
    }
    waited = sys::now() - start;
    setter.join();
  });
  ASSERT_TRUE(res.ok) << res.detail;
  EXPECT_TRUE(woken);
  EXPECT_GE(waited, 5s);
  EXPECT_LT(waited, 6s);
}

TEST(sim_kernel, a_lock_order_inversion_is_reported_as_a_deadlock) {
  int deadlocks = 0;
  for (uint64_t seed = 1; seed <= 30; ++seed) {
    kernel k{seeded(seed)};
    auto res = k.run([&] {
      sys::mutex a;
      sys::mutex b;
      sys::thread one{"one", [&] {
                        std::lock_guard ga{a};
                        sys::yield();
                        std::lock_guard gb{b};
                      }};
      sys::thread two{"two", [&] {
                        std::lock_guard gb{b};
                        sys::yield();
                        std::lock_guard ga{a};
                      }};
      one.join();
      two.join();
    });
    if (!res.ok) {
      EXPECT_EQ(res.invariant, "deadlock");
      EXPECT_NE(res.detail.find("world/one"), std::string::npos) << res.detail;
      EXPECT_FALSE(res.tail.empty());
      ++deadlocks;
    }
  }
  EXPECT_GT(deadlocks, 0);
  EXPECT_LT(deadlocks, 30);
}

TEST(sim_kernel, a_polling_loop_without_waits_is_a_livelock) {
  kernel_config cfg;
  cfg.max_steps = 10'000;
  kernel k{cfg};
  auto res = k.run([&] {
    std::atomic<bool> never{false};
    // Bounded by the kernel's step limit, which is what is tested.
    while (!never.load())
      sys::yield();
  });
  EXPECT_FALSE(res.ok);
  EXPECT_EQ(res.invariant, "livelock");
}

TEST(sim_kernel, a_crashed_process_never_runs_again) {
  kernel k{seeded(5)};
  std::atomic<int> ticks{0};
  int at_crash = -1;
  auto res = k.run([&] {
    auto p = k.new_process("silo-1");
    k.spawn(p, "ticker", [&] {
      // Ends with the crash.
      for (;;) {
        sys::sleep_for(1s);
        ++ticks;
      }
    });
    sys::sleep_for(10500ms);
    k.crash(p);
    at_crash = ticks.load();
    sys::sleep_for(1h);
    EXPECT_FALSE(k.alive(p));
  });
  ASSERT_TRUE(res.ok) << res.detail;
  EXPECT_EQ(at_crash, 10);
  EXPECT_EQ(ticks.load(), 10);
  EXPECT_EQ(res.abandoned_threads, 1u);
}

TEST(sim_kernel, a_crash_waits_until_the_process_releases_its_locks) {
  kernel k{seeded(9)};
  bool consistent = true;
  auto res = k.run([&] {
    // The world's device: both fields change together under its lock.
    sys::mutex device;
    int a = 0;
    int b = 0;
    auto p = k.new_process("silo-1");
    k.spawn(p, "writer", [&] {
      for (;;) {
        std::lock_guard guard{device};
        ++a;
        sys::sleep_for(1ms); // A crash must not land here.
        ++b;
      }
    });
    sys::sleep_for(1s);
    k.crash(p);
    std::lock_guard guard{device};
    consistent = a == b && a > 0;
  });
  ASSERT_TRUE(res.ok) << res.detail;
  EXPECT_TRUE(consistent);
}

TEST(sim_kernel, a_crash_never_leaves_a_lock_that_others_use_held) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    kernel k{seeded(seed)};
    auto res = k.run([&] {
      auto p = k.new_process("silo-1");
      // The process's own queue, which the world fills too.
      std::shared_ptr<sys::mutex> queue;
      sys::mutex ready_mtx;
      sys::condition_variable ready_cv;
      k.spawn(p, "owner", [&] {
        {
          std::lock_guard guard{ready_mtx};
          queue = std::make_shared<sys::mutex>();
          ready_cv.notify_all();
        }
        for (;;) {
          std::lock_guard guard{*queue};
          sys::sleep_for(1ms);
        }
      });
      {
        std::unique_lock lock{ready_mtx};
        ready_cv.wait(lock, [&] { return queue != nullptr; });
      }
      for (int i = 0; i < 5; ++i) {
        std::lock_guard guard{*queue};
        sys::sleep_for(1ms);
      }
      k.crash(p);
      // Would deadlock if the owner had died holding it.
      std::lock_guard guard{*queue};
    });
    ASSERT_TRUE(res.ok) << "seed " << seed << ": " << res.invariant << ": "
                        << res.detail;
  }
}

TEST(sim_kernel, a_thread_waiting_for_a_polled_condition_wakes_every_time) {
  kernel k{seeded(4)};
  int handled = 0;
  auto res = k.run([&] {
    int queued = 0;
    bool stop = false;
    sys::thread worker{"worker", [&] {
                         // Ends with `stop`.
                         for (;;) {
                           if (queued > 0) {
                             --queued;
                             ++handled;
                             sys::yield();
                             continue;
                           }
                           if (stop)
                             return;
                           k.wait_until_ready(
                               [&] { return queued > 0 || stop; },
                               std::nullopt);
                         }
                       }};
    for (int i = 0; i < 50; ++i) {
      ++queued; // No notify: the kernel polls.
      sys::sleep_for(1ms);
    }
    stop = true;
    worker.join();
  });
  ASSERT_TRUE(res.ok) << res.invariant << ": " << res.detail;
  EXPECT_EQ(handled, 50);
}

TEST(sim_kernel, a_paused_process_resumes_later) {
  kernel k{seeded(2)};
  std::chrono::nanoseconds late{0};
  auto res = k.run([&] {
    auto p = k.new_process("silo-1");
    sys::mutex m;
    sys::condition_variable cv;
    bool done = false;
    k.spawn(p, "sleeper", [&] {
      auto start = sys::now();
      sys::sleep_for(1s);
      late = sys::now() - start;
      std::lock_guard guard{m};
      done = true;
      cv.notify_all();
    });
    sys::sleep_for(100ms);
    k.pause(p, 30s);
    std::unique_lock lock{m};
    cv.wait(lock, [&] { return done; });
  });
  ASSERT_TRUE(res.ok) << res.detail;
  EXPECT_GE(late, 30s);
  EXPECT_LT(late, 31s);
}

TEST(sim_kernel, exceptions_and_failed_checks_end_the_run_with_their_cause) {
  {
    kernel k;
    auto res = k.run([] {
      sys::thread t{"thrower", [] { throw std::runtime_error{"boom"}; }};
      t.join();
    });
    EXPECT_FALSE(res.ok);
    EXPECT_EQ(res.invariant, "uncaught exception");
    EXPECT_NE(res.detail.find("thrower"), std::string::npos) << res.detail;
    EXPECT_NE(res.detail.find("boom"), std::string::npos) << res.detail;
  }
  {
    kernel k;
    auto res = k.run([&] {
      k.trace("checking money");
      k.fail("money is conserved", "expected 100, found 90");
    });
    EXPECT_FALSE(res.ok);
    EXPECT_EQ(res.invariant, "money is conserved");
    ASSERT_GE(res.tail.size(), 2u);
    EXPECT_NE(res.tail[res.tail.size() - 2].find("checking money"),
              std::string::npos);
  }
}

TEST(sim_kernel, a_thread_that_escapes_the_simulation_fails_the_run) {
  {
    kernel k;
    auto res = k.run([] { std::this_thread::sleep_for(1ms); });
    EXPECT_FALSE(res.ok);
    EXPECT_EQ(res.invariant, "determinism");
    EXPECT_NE(res.detail.find("sleep"), std::string::npos) << res.detail;
  }
  {
    kernel k;
    auto res
        = k.run([] { static_cast<void>(std::chrono::steady_clock::now()); });
    EXPECT_FALSE(res.ok);
    EXPECT_NE(res.detail.find("clock_gettime"), std::string::npos)
        << res.detail;
  }
  {
    kernel k;
    auto res = k.run([] { std::thread{[] {}}.join(); });
    EXPECT_FALSE(res.ok);
    EXPECT_NE(res.detail.find("pthread_create"), std::string::npos)
        << res.detail;
  }
  // Outside a simulation the same calls work.
  auto before = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(1ms);
  EXPECT_GE(std::chrono::steady_clock::now() - before, 1ms);
}

TEST(sim_kernel, seeded_randomness_replays) {
  auto draw = [](uint64_t seed) {
    std::vector<uint64_t> out;
    kernel k{seeded(seed)};
    auto res = k.run([&] {
      for (int i = 0; i < 5; ++i)
        out.push_back(sys::random_u64());
    });
    EXPECT_TRUE(res.ok);
    return out;
  };
  EXPECT_EQ(draw(11), draw(11));
  EXPECT_NE(draw(11), draw(12));
}

TEST(sys_primitives, work_outside_a_simulation) {
  EXPECT_EQ(sys::current_kernel(), nullptr);
  sys::mutex m;
  sys::condition_variable cv;
  int value = 0;
  sys::thread t{"setter", [&] {
                  std::lock_guard guard{m};
                  value = 1;
                  cv.notify_all();
                }};
  {
    std::unique_lock lock{m};
    EXPECT_TRUE(cv.wait_for(lock, 10s, [&] { return value == 1; }));
  }
  t.join();
  auto before = sys::now();
  sys::sleep_for(2ms);
  EXPECT_GE(sys::now() - before, 2ms);
  EXPECT_NE(sys::random_u64(), sys::random_u64());
}

// The README's "Testing your workflows" examples: time skipping, replay
// checks against stored journals, and fault simulation over many seeds.

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "actors/workflow.hpp"
#include "runtime/sys.hpp"
#include "testing/simulation.hpp"
#include "testing/workflow_env.hpp"
#include "testing_examples.pb.h"

using namespace granary;
using namespace granary::examples;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// Welcomes a new user, waits five minutes, then gives them a day to
// activate: tips if they do, a nudge if they do not.
class onboarding : public workflow<onboarding, Signup, Onboarded> {
public:
  static constexpr std::string_view type_name = "example.onboarding";

  task<Onboarded> run(workflow_context& ctx, const Signup& signup) {
    Onboarded out;
    activity_options retry;
    retry.initial_interval = 30s;
    auto welcome = co_await ctx.activity<Sent>("email.send",
                                               email(signup, "welcome"), retry);
    if (!welcome)
      co_return welcome.error();
    out.add_sent("welcome");
    if (auto slept = co_await ctx.sleep(5min); !slept)
      co_return slept.error();
    auto activated = co_await ctx.wait_signal<Signup>("activated", 24h);
    auto next = activated ? "tips" : "nudge";
    auto sent
        = co_await ctx.activity<Sent>("email.send", email(signup, next), retry);
    if (!sent)
      co_return sent.error();
    out.add_sent(next);
    co_return out;
  }

private:
  static Email email(const Signup& s, std::string template_name) {
    Email e;
    e.set_to(s.email());
    e.set_template_name(std::move(template_name));
    return e;
  }
};

Signup signup(std::string email) {
  Signup s;
  s.set_email(std::move(email));
  return s;
}

Sent sent(std::string id) {
  Sent s;
  s.set_message_id(std::move(id));
  return s;
}

} // namespace

// onboarding_test.cpp: a day of a workflow, in milliseconds.
TEST(testing_examples, a_user_who_never_activates_gets_a_nudge) {
  granary::testing::workflow_env env;
  env.grains([](host::registration& r) { return r.workflow<onboarding>(); });
  auto& email = env.stub<Email, Sent>("email.send");
  email.fails(errc::timeout, "SMTP server did not answer")
      .returns(sent("m-1"))
      .returns(sent("m-2"));
  auto run = env.run([](granary::testing::workflow_session& s) {
    auto t0 = s.now_ms();
    ASSERT_TRUE(s.client().start<onboarding>("u-1", signup("ana@example.com")));
    auto out = s.result<onboarding>("u-1"); // waits in virtual time
    ASSERT_TRUE(out) << describe(out.error());
    EXPECT_EQ(out->sent(1), "nudge");
    EXPECT_GE(s.now_ms() - t0, (5min + 24h) / 1ms);
  });
  ASSERT_TRUE(run.ok) << run.invariant << ": " << run.detail;
  ASSERT_EQ(email.attempts().size(), 3u); // The welcome was retried once.
  EXPECT_EQ(email.attempts()[1].idempotency_key,
            email.attempts()[0].idempotency_key);
}

TEST(testing_examples, an_activated_user_gets_tips) {
  granary::testing::workflow_env env;
  env.grains([](host::registration& r) { return r.workflow<onboarding>(); });
  env.stub<Email, Sent>("email.send").returns(sent("m"));
  auto run = env.run([](granary::testing::workflow_session& s) {
    ASSERT_TRUE(s.client().start<onboarding>("u-2", signup("bo@example.com")));
    s.advance(10min); // Past the sleep: the run waits for "activated".
    ASSERT_FALSE(s.client().signal<onboarding>(
        "u-2", "activated", signup("bo@example.com"), "activated-u-2"));
    auto out = s.result<onboarding>("u-2");
    ASSERT_TRUE(out) << describe(out.error());
    EXPECT_EQ(out->sent(1), "tips");
  });
  ASSERT_TRUE(run.ok) << run.invariant << ": " << run.detail;
}

// replay_test.cpp: journals exported from production with
//   granary workflow history --data DIR example.onboarding ID --export FILE
// must replay against the code about to be deployed.
TEST(testing_examples, stored_journals_replay_against_the_current_code) {
  auto dir = fs::path{GRANARY_SOURCE_DIR} / "tests" / "journals";
  int checked = 0;
  for (auto& file : fs::directory_iterator{dir}) {
    if (file.path().extension() != ".journal")
      continue;
    auto stored = granary::testing::load_journal(file.path().string());
    ASSERT_TRUE(stored) << describe(stored.error());
    EXPECT_FALSE(check_replay<onboarding>(*stored)) << file.path();
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

// The journal above was written by this test (run it with
// GRANARY_WRITE_JOURNALS=1 to write it again): a run waiting for
// "activated", as it would be stored mid-flight.
TEST(testing_examples, a_journal_of_todays_code_can_be_written) {
  granary::testing::workflow_env env;
  env.grains([](host::registration& r) { return r.workflow<onboarding>(); });
  env.stub<Email, Sent>("email.send").returns(sent("m"));
  auto run = env.run([](granary::testing::workflow_session& s) {
    ASSERT_TRUE(s.client().start<onboarding>("u-3", signup("cy@example.com")));
    s.advance(10min);
    auto j = s.journal<onboarding>("u-3");
    ASSERT_TRUE(j) << describe(j.error());
    EXPECT_FALSE(check_replay<onboarding>(*j));
    if (std::getenv("GRANARY_WRITE_JOURNALS") == nullptr)
      return;
    auto path = fs::path{GRANARY_SOURCE_DIR} / "tests" / "journals"
                / "onboarding-waiting.journal";
    std::ofstream out{path, std::ios::binary};
    ASSERT_TRUE(j->SerializeToOstream(&out));
  });
  ASSERT_TRUE(run.ok) << run.invariant << ": " << run.detail;
}

// onboarding_sim_test.cpp: three silos, every fault kind, many seeds.
TEST(testing_examples, each_email_is_sent_once_under_every_fault) {
  // The email provider: it keeps one message per idempotency key, and
  // counts what reached each address.
  struct provider {
    granary::sys::mutex mtx;
    std::map<std::string, std::string> by_key;
    std::map<std::string, int> delivered;
  };
  auto mail = std::make_shared<provider>();
  granary::testing::sim_options opts;
  opts.faults = granary::testing::sim_faults::all();
  opts.fault_time = 30s;
  opts.settle_time = 10min; // The workflow sleeps five minutes.
  opts.verbose_trace = std::getenv("GRANARY_SIM_VERBOSE") != nullptr;
  granary::testing::simulation sim{opts};
  sim.grains([mail](host::registration& r) {
       if (auto err = r.workflow<onboarding>())
         return err;
       return r.activity<Email, Sent>(
           "email.send", [mail](const activity_context& ctx, const Email& e) {
             std::lock_guard guard{mail->mtx};
             auto [it, fresh] = mail->by_key.try_emplace(ctx.idempotency_key);
             if (fresh) {
               it->second = "m-" + std::to_string(mail->by_key.size());
               ++mail->delivered[e.to() + "/" + e.template_name()];
             }
             return sent(it->second);
           });
     })
      .workload([mail](granary::testing::sim_world& w) {
        {
          std::lock_guard guard{mail->mtx};
          mail->by_key.clear();
          mail->delivered.clear();
        }
        for (int u = 0; u < 4; ++u)
          w.start<onboarding>("u-" + std::to_string(u),
                              signup("user" + std::to_string(u) + "@x.com"));
        // They all activate (a nudge would take a virtual day).
        for (int u = 0; u < 4; ++u)
          w.signal<onboarding>("u-" + std::to_string(u), "activated",
                               signup("user" + std::to_string(u) + "@x.com"));
        for (int u = 0; u < 4; ++u)
          w.result<onboarding>("u-" + std::to_string(u));
      })
      .check(
          "each email is sent once",
          [mail](granary::testing::sim_world&) -> std::optional<std::string> {
            std::lock_guard guard{mail->mtx};
            if (mail->delivered.size() != 8)
              return std::to_string(mail->delivered.size())
                     + " distinct emails instead of 8";
            for (auto& [what, n] : mail->delivered)
              if (n != 1)
                return what + " was sent " + std::to_string(n) + " times";
            return std::nullopt;
          });
  for (uint64_t seed = 1; seed <= 3; ++seed) {
    auto report = sim.run(seed);
    EXPECT_TRUE(report.run.ok) << report.summary() << report.details();
  }
}

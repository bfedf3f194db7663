// The `granary dead-letters` command against a real RocksDB directory.

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <utility>

#include <gtest/gtest.h>
#include <sys/wait.h>

#include "actors/workflow.hpp"
#include "bench/scenarios.hpp"
#include "persistence/rocksdb_storage.hpp"
#include "testing/test_grains.hpp"

using namespace granary;
using namespace granary::testing;
using namespace std::chrono_literals;

namespace {

struct run_result {
  int status = -1;
  std::string out;
};

// Runs the granary binary with `args`; captures stdout and stderr.
run_result granary_cmd(const std::string& args) {
  run_result res;
  auto cmd = std::string{GRANARY_BIN} + " " + args + " 2>&1";
  auto* pipe = popen(cmd.c_str(), "r");
  if (!pipe)
    return res;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0)
    res.out.append(buf.data(), n);
  auto raw = pclose(pipe);
  res.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return res;
}

class cli_test : public ::testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/granary-cli-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir = tmpl;
  }

  void TearDown() override {
    flaky_fails = false;
    std::filesystem::remove_all(dir);
  }

  std::unique_ptr<silo> start(silo_config cfg) {
    auto store = rocksdb_storage::open({.data_dir = dir});
    EXPECT_TRUE(store) << describe(store.error());
    grain_registry reg;
    EXPECT_FALSE(register_grain<probe>(reg));
    auto s = silo::start(cfg, std::move(reg), std::move(*store));
    EXPECT_TRUE(s) << describe(s.error());
    return s ? std::move(*s) : nullptr;
  }

  std::string dir;
};

} // namespace

TEST_F(cli_test, lists_requeues_and_drops_dead_letters) {
  silo_config cfg;
  cfg.partitions = 4;
  cfg.max_attempts = 1;
  {
    auto s = start(cfg);
    ASSERT_TRUE(s);
    flaky_fails = true;
    Flaky f;
    f.set_delta(5);
    ASSERT_FALSE(s->send(id_of<probe>("a"), f, "poison-a"));
    ASSERT_FALSE(s->send(id_of<probe>("b"), f, "poison-b"));
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (s->dead_letters()->size() < 2
           && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(5ms);
    ASSERT_EQ(s->dead_letters()->size(), 2u);
    // While the silo runs, the directory is locked: a clear refusal.
    auto locked = granary_cmd("dead-letters --data " + dir);
    EXPECT_EQ(locked.status, 1) << locked.out;
    EXPECT_NE(locked.out.find("stop the silo"), std::string::npos)
        << locked.out;
  }
  flaky_fails = false;
  auto list = granary_cmd("dead-letters --data " + dir);
  ASSERT_EQ(list.status, 0) << list.out;
  EXPECT_NE(list.out.find("test.probe/a  msg poison-a"), std::string::npos)
      << list.out;
  EXPECT_NE(list.out.find("failing on purpose"), std::string::npos);
  EXPECT_NE(list.out.find("2 dead letter(s)"), std::string::npos);
  auto json = granary_cmd("dead-letters --data " + dir + " --json");
  EXPECT_NE(json.out.find("\"msg_id\":\"poison-b\""), std::string::npos)
      << json.out;
  auto requeue = granary_cmd("dead-letters --data " + dir
                             + " requeue test.probe a poison-a");
  ASSERT_EQ(requeue.status, 0) << requeue.out;
  auto drop = granary_cmd("dead-letters --data " + dir
                          + " drop test.probe b poison-b");
  ASSERT_EQ(drop.status, 0) << drop.out;
  auto missing = granary_cmd("dead-letters --data " + dir
                             + " drop test.probe b poison-b");
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.out.find("not_found"), std::string::npos) << missing.out;
  EXPECT_EQ(granary_cmd("dead-letters --data " + dir + " frobnicate").status,
            2);
  EXPECT_EQ(granary_cmd("dead-letters").status, 2);
  // The requeued message is processed by the next silo; the dropped one
  // is gone.
  auto s = start(cfg);
  ASSERT_TRUE(s);
  auto deadline = std::chrono::steady_clock::now() + 5s;
  int64_t value = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    auto v = grain_ref<probe>{*s, "a"}.call<Value>(Get{});
    if (v && (value = v->value()) == 5)
      break;
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(value, 5);
  EXPECT_EQ(grain_ref<probe>(*s, "b").call<Value>(Get{})->value(), 0);
  EXPECT_TRUE(s->dead_letters()->empty());
}

TEST_F(cli_test, refuses_a_directory_that_is_not_a_silo) {
  auto res = granary_cmd("dead-letters --data " + dir + "/nothing-here");
  EXPECT_EQ(res.status, 1);
  EXPECT_NE(res.out.find("nothing-here"), std::string::npos) << res.out;
}

TEST(cli, bench_prints_the_contracted_json_fields) {
  auto res = granary_cmd("bench transient-ping --duration 1 --json");
  ASSERT_EQ(res.status, 0) << res.out;
  for (auto* field : {"\"scenario\":\"transient-ping\"",
                      "\"ops_per_s\":", "\"p50_ms\":", "\"p99_ms\":",
                      "\"baseline\":", "\"baseline_ops_per_s\":", "\"ratio\":"})
    EXPECT_NE(res.out.find(field), std::string::npos) << field << "\n"
                                                      << res.out;
  EXPECT_EQ(res.out.find("\"ops_per_s\":0,"), std::string::npos) << res.out;
  auto bad = granary_cmd("bench no-such-scenario");
  EXPECT_EQ(bad.status, 2) << bad.out;
  EXPECT_NE(bad.out.find("no-such-scenario"), std::string::npos) << bad.out;
}

TEST(cli, bench_runs_the_workflow_scenarios) {
  auto res = granary_cmd("bench fanout-100 --duration 0.5 --json");
  ASSERT_EQ(res.status, 0) << res.out;
  for (auto* field : {"\"scenario\":\"fanout-100\"", "\"activities_per_s\":",
                      "\"baseline\":\"durable-ping/200\"", "\"p99_ms\":"})
    EXPECT_NE(res.out.find(field), std::string::npos) << field << "\n"
                                                      << res.out;
  EXPECT_EQ(res.out.find("\"ops_per_s\":0,"), std::string::npos) << res.out;
  // Two silos over loopback TCP, against durable-ping of the same run.
  auto cross = granary_cmd("bench cross-silo-durable --duration 0.5 --json");
  ASSERT_EQ(cross.status, 0) << cross.out;
  for (auto* field : {"\"scenario\":\"cross-silo-durable\"",
                      "\"baseline\":\"durable-ping\"", "\"p99_ms\":"})
    EXPECT_NE(cross.out.find(field), std::string::npos) << field << "\n"
                                                        << cross.out;
  EXPECT_EQ(cross.out.find("\"ops_per_s\":0,"), std::string::npos) << cross.out;
}

TEST(cli, bench_runs_the_sleeping_workflows_scenario) {
  auto res = granary_cmd(
      "bench sleeping-workflows --grains 2000 --duration 0.5 --json");
  ASSERT_EQ(res.status, 0) << res.out;
  for (auto* field :
       {"\"scenario\":\"sleeping-workflows\"", "\"baseline\":\"durable-ping\"",
        "\"rss_bytes_per_sleeping_workflow\":", "\"create_s\":",
        "\"recovery_s\":", "\"timers_stored\":2000,",
        "\"timers_in_memory\":0,"})
    EXPECT_NE(res.out.find(field), std::string::npos) << field << "\n"
                                                      << res.out;
  EXPECT_EQ(res.out.find("\"ops_per_s\":0,"), std::string::npos) << res.out;
}

namespace {

// Sleeps an hour, then answers: a run to inspect while it waits.
class wait_flow : public workflow<wait_flow, Add, Value> {
public:
  static constexpr std::string_view type_name = "test.wait";

  task<Value> run(workflow_context& ctx, const Add& in) {
    std::chrono::milliseconds hour{3'600'000};
    if (auto slept = co_await ctx.sleep(hour); !slept)
      co_return slept.error();
    Value v;
    v.set_value(in.delta());
    co_return v;
  }
};

// Leaves in `data_dir` a silo's data holding workflow test.wait/w-1, which
// journaled one entry and waits.
void write_waiting_workflow(const std::string& data_dir) {
  auto store = rocksdb_storage::open({.data_dir = data_dir});
  ASSERT_TRUE(store);
  grain_registry reg;
  ASSERT_FALSE(register_workflow<wait_flow>(reg, nullptr));
  auto s = silo::start(silo_config{}, std::move(reg), std::move(*store));
  ASSERT_TRUE(s);
  Add start;
  start.set_delta(3);
  ASSERT_FALSE((*s)->send(grain_id{"test.wait", "w-1"}, start));
  ASSERT_TRUE(eventually([&] {
    auto r = (*s)->call(grain_id{"test.wait", "w-1"},
                        std::make_shared<wire::DescribeWorkflow>());
    return r && static_cast<const wire::WorkflowInfo&>(**r).journal_size() == 1;
  }));
}

} // namespace

TEST_F(cli_test, workflow_history_shows_and_exports_the_journal) {
  ASSERT_NO_FATAL_FAILURE(write_waiting_workflow(dir));
  auto shown = granary_cmd("workflow history --data " + dir + " test.wait w-1");
  ASSERT_EQ(shown.status, 0) << shown.out;
  EXPECT_NE(shown.out.find("RUNNING"), std::string::npos) << shown.out;
  EXPECT_NE(shown.out.find("SLEEP"), std::string::npos) << shown.out;
  EXPECT_NE(shown.out.find("pending"), std::string::npos) << shown.out;
  auto json
      = granary_cmd("workflow history --json --data " + dir + " test.wait w-1");
  EXPECT_NE(json.out.find("\"kind\":\"SLEEP\""), std::string::npos) << json.out;
  auto file = dir + "/../" + std::filesystem::path{dir}.filename().string()
              + ".journal";
  auto exported = granary_cmd("workflow history --data " + dir
                              + " test.wait w-1 --export " + file);
  ASSERT_EQ(exported.status, 0) << exported.out;
  std::ifstream in{file, std::ios::binary};
  std::stringstream bytes;
  bytes << in.rdbuf();
  std::filesystem::remove(file);
  wire::WorkflowState st;
  ASSERT_TRUE(st.ParseFromString(bytes.str()));
  // The exported journal is what a replay test in CI consumes.
  EXPECT_FALSE(check_replay<wait_flow>(st));
  auto missing
      = granary_cmd("workflow history --data " + dir + " test.wait nope");
  EXPECT_EQ(missing.status, 1);
  EXPECT_NE(missing.out.find("no workflow test.wait/nope"), std::string::npos)
      << missing.out;
  EXPECT_EQ(granary_cmd("workflow frob").status, 2);
}

namespace {

// Every file under `dir` with its bytes.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (auto& e : std::filesystem::recursive_directory_iterator{dir}) {
    if (!e.is_regular_file())
      continue;
    std::ifstream in{e.path(), std::ios::binary};
    std::stringstream bytes;
    bytes << in.rdbuf();
    out[e.path().string()] = bytes.str();
  }
  return out;
}

} // namespace

TEST_F(cli_test,
       read_only_commands_neither_create_nor_change_a_data_directory) {
  auto absent = dir + "/absent";
  for (auto* cmd : {"workflow history --data %s test.wait w-1",
                    "dead-letters --data %s", "dead-letters --data %s list",
                    "dead-letters --data %s requeue test.probe a m-1"}) {
    char line[512];
    std::snprintf(line, sizeof(line), cmd, absent.c_str());
    auto res = granary_cmd(line);
    EXPECT_EQ(res.status, 1) << line << "\n" << res.out;
    EXPECT_NE(res.out.find("no data directory at " + absent), std::string::npos)
        << line << "\n"
        << res.out;
    EXPECT_FALSE(std::filesystem::exists(absent)) << line;
  }
  // A directory without a silo's data in it stays empty.
  auto empty = dir + "/empty";
  std::filesystem::create_directory(empty);
  auto none = granary_cmd("workflow history --data " + empty + " test.wait w");
  EXPECT_EQ(none.status, 1) << none.out;
  EXPECT_NE(none.out.find("no silo data in " + empty), std::string::npos)
      << none.out;
  EXPECT_TRUE(std::filesystem::is_empty(empty));
  // A real data directory: reading it changes no file.
  auto data = dir + "/data";
  ASSERT_NO_FATAL_FAILURE(write_waiting_workflow(data));
  auto before = snapshot(data);
  auto shown
      = granary_cmd("workflow history --data " + data + " test.wait w-1");
  EXPECT_EQ(shown.status, 0) << shown.out;
  EXPECT_NE(shown.out.find("SLEEP"), std::string::npos) << shown.out;
  auto listed = granary_cmd("dead-letters --data " + data + " list --json");
  EXPECT_EQ(listed.status, 0) << listed.out;
  auto after = snapshot(data);
  EXPECT_EQ(before.size(), after.size());
  for (auto& [path, bytes] : after) {
    auto i = before.find(path);
    EXPECT_TRUE(i != before.end()) << path << " was created";
    if (i != before.end())
      EXPECT_TRUE(i->second == bytes) << path << " was changed";
  }
}

TEST_F(cli_test, empty_arguments_are_usage_errors) {
  auto history
      = granary_cmd("workflow history --data " + dir + " test.wait ''");
  EXPECT_EQ(history.status, 2) << history.out;
  EXPECT_NE(history.out.find("the workflow id is empty"), std::string::npos)
      << history.out;
  auto drop
      = granary_cmd("dead-letters --data " + dir + " drop test.probe '' m");
  EXPECT_EQ(drop.status, 2) << drop.out;
  EXPECT_NE(drop.out.find("the grain key is empty"), std::string::npos)
      << drop.out;
}

TEST(cli, sim_runs_seeds_replays_them_and_reports_a_mutation) {
  auto ok = granary_cmd("sim --seeds 2 --first-seed 7");
  ASSERT_EQ(ok.status, 0) << ok.out;
  EXPECT_NE(ok.out.find("seed 7: ok"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("seed 8: ok"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("summary: 2 seeds, 0 failed"), std::string::npos)
      << ok.out;
  // The same seed, the same trace.
  auto a = granary_cmd("sim --seed 7 --trace");
  auto b = granary_cmd("sim --seed 7 --trace");
  auto hash = [](const std::string& out) {
    auto at = out.find("trace hash ");
    return at == std::string::npos ? std::string{} : out.substr(at, 27);
  };
  EXPECT_FALSE(hash(a.out).empty()) << a.out;
  EXPECT_EQ(hash(a.out), hash(b.out));
  auto bad = granary_cmd("sim --mutation skip_dedup --seed 1 --operations 300");
  EXPECT_EQ(bad.status, 1) << bad.out;
  EXPECT_NE(bad.out.find("replay: granary sim --seed 1"), std::string::npos)
      << bad.out;
  EXPECT_NE(bad.out.find("violated: no acknowledged message is lost or "
                         "applied twice"),
            std::string::npos)
      << bad.out;
  auto usage = granary_cmd("sim --faults drop,bogus");
  EXPECT_EQ(usage.status, 2) << usage.out;
  EXPECT_NE(usage.out.find("unknown fault kind 'bogus'"), std::string::npos)
      << usage.out;
}

TEST(cli, help_lists_every_bench_scenario) {
  auto res = granary_cmd("--help");
  ASSERT_EQ(res.status, 0) << res.out;
  auto at = res.out.find("scenarios:\n");
  ASSERT_NE(at, std::string::npos) << res.out;
  auto section = res.out.substr(at, res.out.find("\noptions:", at) - at);
  ASSERT_FALSE(granary::bench::scenarios().empty());
  for (auto& s : granary::bench::scenarios()) {
    // The name starts a line, alone or before its summary.
    auto listed = section.find("\n  " + s.name + " ") != std::string::npos
                  || section.find("\n  " + s.name + "\n") != std::string::npos;
    EXPECT_TRUE(listed) << s.name << " is missing from:\n" << section;
    auto first_word = s.summary.substr(0, s.summary.find(' '));
    EXPECT_NE(section.find(first_word), std::string::npos) << s.summary;
  }
  EXPECT_NE(section.find("\n  all "), std::string::npos) << section;
}

TEST(cli, every_level_has_help_and_usage_errors_name_the_culprit) {
  for (auto* cmd : {"--help", "help", "bench --help", "workflow --help",
                    "workflow start --help", "dead-letters --help",
                    "dead-letters requeue --help", "grain send --help",
                    "cluster status --help"}) {
    auto res = granary_cmd(cmd);
    EXPECT_EQ(res.status, 0) << cmd << "\n" << res.out;
    EXPECT_NE(res.out.find("Usage: granary"), std::string::npos) << cmd << "\n"
                                                                 << res.out;
  }
  // Exit 2 before anything runs, naming the flag or value.
  auto gw = std::string{" --gateway 127.0.0.1:1 "};
  std::pair<std::string, std::string> cases[] = {
      {"bench transient-ping --concurrency 0", "--concurrency"},
      {"bench transient-ping --duration", "--duration"},
      {"bench transient-ping --grains 0x10", "'0x10'"},
      {"bench transient-ping --json=yes", "json"},
      {"workflow list" + gw + "T --limit -1", "'-1'"},
      {"workflow describe" + gw + "T I --wait 5", "unknown option '--wait'"},
      {"grain call" + gw + "T K", "--type is required"},
      {"workflow history T I", "--data DIR"},
      {"frob", "unknown subcommand 'frob'"},
  };
  for (auto& [cmd, named] : cases) {
    auto res = granary_cmd(cmd);
    EXPECT_EQ(res.status, 2) << cmd << "\n" << res.out;
    EXPECT_NE(res.out.find(named), std::string::npos) << cmd << "\n" << res.out;
  }
}

// `granary silo --config FILE` as a real child process, driven by the
// `granary` CLI commands through its gateway, and stopped by SIGTERM.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "testing/child_process.hpp"

namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

struct run_result {
  int status = -1;
  std::string out;
};

// Runs `bin` with `args`; captures stdout and stderr.
run_result run_cmd(const char* bin, const std::string& args) {
  run_result res;
  auto cmd = std::string{bin} + " " + args + " 2>&1";
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

// Runs the granary binary with `args`.
run_result granary_cmd(const std::string& args) {
  return run_cmd(GRANARY_BIN, args);
}

// Runs the control-plane sample's silo binary with `args`.
run_result silo_cmd(const std::string& args) {
  return run_cmd(GRANARY_CP_SILO, args);
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

/// `control_plane_silo --config FILE` as a child process.
class silo_process : public granary::testing::output_process {
public:
  bool spawn(const std::string& config) {
    return output_process::spawn({GRANARY_CP_SILO, "--config", config});
  }
};

class gateway_cli_test : public ::testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/granary-gwcli-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir = tmpl;
  }

  void TearDown() override {
    std::filesystem::remove_all(dir);
  }

  std::string write_config(const std::string& name, const std::string& text) {
    auto path = dir + "/" + name;
    std::ofstream out{path};
    out << text;
    return path;
  }

  std::string dir;
};

} // namespace

TEST_F(gateway_cli_test, runs_a_silo_and_drives_it_through_the_gateway) {
  auto config = write_config("silo.toml", "cluster_id = \"test\"\n"
                                          "silo_id = \"silo-t\"\n"
                                          "data_dir = \""
                                              + dir
                                              + "/data\"\n"
                                                "partitions = 8\n"
                                                "[listen]\n"
                                                "silo = \"127.0.0.1:0\"\n"
                                                "gateway = \"127.0.0.1:0\"\n"
                                                "[limits]\n"
                                                "threads = 2\n");
  silo_process silo;
  ASSERT_TRUE(silo.spawn(config));
  auto ready = silo.wait_line("ready ", steady::now() + 20s);
  ASSERT_FALSE(ready.empty()) << silo.log();
  auto at = ready.find("gateway=");
  ASSERT_NE(at, std::string::npos) << ready;
  auto addr = ready.substr(at + 8, ready.find(' ', at) - at - 8);
  auto gw = " --gateway " + addr + " ";

  auto health = granary_cmd("cluster status" + gw);
  EXPECT_EQ(health.status, 0) << health.out;
  EXPECT_TRUE(
      contains(health.out, "silo-t           running         8 partitions"))
      << health.out;

  // A grain of the control-plane sample: no external process needed.
  auto reserved = granary_cmd("grain call" + gw
                              + "cp.cell cell-1 --type "
                                "granary.cp.Reserve --message "
                                "'{\"tenant\":\"t1\",\"capacity\":4}'");
  EXPECT_EQ(reserved.status, 0) << reserved.out;
  EXPECT_TRUE(contains(reserved.out, "\"ok\":true")) << reserved.out;
  auto cell = granary_cmd("grain call" + gw
                          + "cp.cell cell-1 --type granary.cp.GetCell");
  EXPECT_EQ(cell.status, 0) << cell.out;
  EXPECT_TRUE(contains(cell.out, "\"used\":1")) << cell.out;

  // A workflow: it starts and waits on its activities (no cloud API here).
  auto started = granary_cmd(
      "workflow start" + gw
      + "cp.create_namespace ns-1 --input-type granary.cp.CreateNamespace "
        "--input "
        "'{\"name\":\"ns-1\",\"cell\":\"cell-2\",\"tier\":\"standard\"}'");
  EXPECT_EQ(started.status, 0) << started.out;
  EXPECT_TRUE(contains(started.out, "\"started\":true")) << started.out;
  auto described
      = granary_cmd("workflow describe" + gw + "cp.create_namespace ns-1");
  EXPECT_EQ(described.status, 0) << described.out;
  EXPECT_TRUE(contains(described.out, "\"status\":\"RUNNING\""))
      << described.out;
  auto history
      = granary_cmd("workflow history" + gw + "cp.create_namespace ns-1");
  EXPECT_EQ(history.status, 0) << history.out;
  EXPECT_TRUE(contains(history.out, "cp.create_namespace/ns-1  RUNNING"))
      << history.out;
  auto listed = granary_cmd("workflow list" + gw + "cp.create_namespace");
  EXPECT_EQ(listed.status, 0) << listed.out;
  EXPECT_TRUE(contains(listed.out, "\"id\":\"ns-1\"")) << listed.out;
  auto pending
      = granary_cmd("workflow result" + gw + "cp.create_namespace ns-1");
  EXPECT_EQ(pending.status, 1) << pending.out;
  EXPECT_TRUE(contains(pending.out, "has not finished")) << pending.out;
  auto letters = granary_cmd("dead-letters" + gw + "list");
  EXPECT_EQ(letters.status, 0) << letters.out;

  // Exit codes: 1 for a failed operation, 2 for bad usage.
  auto missing
      = granary_cmd("workflow describe" + gw + "cp.create_namespace missing");
  EXPECT_EQ(missing.status, 1) << missing.out;
  EXPECT_TRUE(contains(missing.out, "not_found")) << missing.out;
  EXPECT_TRUE(contains(missing.out, "cp.create_namespace/missing"))
      << missing.out;
  auto bad_flag = granary_cmd("workflow describe" + gw
                              + "cp.create_namespace ns-1 --frobnicate");
  EXPECT_EQ(bad_flag.status, 2) << bad_flag.out;
  EXPECT_TRUE(contains(bad_flag.out, "unknown option '--frobnicate'"))
      << bad_flag.out;
  auto misplaced = granary_cmd("workflow describe" + gw
                               + "cp.create_namespace ns-1 --wait 5");
  EXPECT_EQ(misplaced.status, 2) << misplaced.out;
  EXPECT_EQ(granary_cmd("workflow describe cp.create_namespace ns-1").status,
            2);
  EXPECT_EQ(granary_cmd("workflow describe --gateway nowhere cp.x y").status,
            2);
  auto bad_input = granary_cmd("workflow start" + gw
                               + "cp.create_namespace ns-2 --input-type "
                                 "granary.cp.CreateNamespace --input '{nope'");
  EXPECT_EQ(bad_input.status, 1) << bad_input.out;
  EXPECT_TRUE(contains(bad_input.out, "invalid_argument")) << bad_input.out;
  auto unreachable
      = granary_cmd("cluster status --gateway 127.0.0.1:1 --timeout 2000");
  EXPECT_EQ(unreachable.status, 1) << unreachable.out;

  auto status = silo.stop(SIGTERM, 30s);
  ASSERT_NE(status, -1) << "the silo did not stop on SIGTERM\n" << silo.log();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n"
                                                             << silo.log();
  EXPECT_TRUE(contains(silo.log(), "stopped")) << silo.log();
}

TEST_F(gateway_cli_test, a_bad_config_is_a_usage_error_naming_the_key) {
  auto config = write_config("bad.toml", "cluster_id = \"test\"\n"
                                         "silo_id = \"silo-t\"\n"
                                         "data_dir = \"/tmp/x\"\n"
                                         "partitons = 8\n"
                                         "[listen]\n"
                                         "silo = \"127.0.0.1:0\"\n"
                                         "gateway = \"127.0.0.1:0\"\n");
  auto res = silo_cmd("--config " + config);
  EXPECT_EQ(res.status, 2) << res.out;
  EXPECT_TRUE(contains(res.out, "did you mean 'partitions'?")) << res.out;
  auto no_config = silo_cmd("");
  EXPECT_EQ(no_config.status, 2) << no_config.out;
  EXPECT_TRUE(contains(no_config.out, "--config is required")) << no_config.out;
  EXPECT_EQ(silo_cmd("--config " + dir + "/none.toml").status, 2);
  auto bad_flag = silo_cmd("--config " + config + " --activity-threads 0");
  EXPECT_EQ(bad_flag.status, 2) << bad_flag.out;
}

TEST(gateway_cli, granary_silo_points_to_the_host) {
  auto res = granary_cmd("silo --config x.toml");
  EXPECT_EQ(res.status, 2) << res.out;
  EXPECT_TRUE(contains(res.out, "run_silo_main")) << res.out;
  EXPECT_TRUE(contains(res.out, "control_plane_silo")) << res.out;
}

TEST(gateway_cli, empty_ids_are_usage_errors_that_name_the_empty_part) {
  // Refused before any request: nothing listens on port 1.
  auto gw = std::string{" --gateway 127.0.0.1:1 "};
  auto describe = granary_cmd("workflow describe" + gw + "gw.gate ''");
  EXPECT_EQ(describe.status, 2) << describe.out;
  EXPECT_TRUE(contains(describe.out, "the workflow id is empty"))
      << describe.out;
  auto type = granary_cmd("workflow start" + gw + "'' w --input-type T");
  EXPECT_EQ(type.status, 2) << type.out;
  EXPECT_TRUE(contains(type.out, "the workflow type is empty")) << type.out;
  auto call = granary_cmd("grain call" + gw + "cp.cell '' --type T");
  EXPECT_EQ(call.status, 2) << call.out;
  EXPECT_TRUE(contains(call.out, "the grain key is empty")) << call.out;
  auto requeue = granary_cmd("dead-letters requeue" + gw + "cp.cell k ''");
  EXPECT_EQ(requeue.status, 2) << requeue.out;
  EXPECT_TRUE(contains(requeue.out, "the message id is empty")) << requeue.out;
}

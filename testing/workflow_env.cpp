#include "testing/workflow_env.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

#include "runtime/log.hpp"

namespace granary::testing {

namespace fs = std::filesystem;

caf::expected<wire::WorkflowState> load_journal(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  if (!in)
    return make_error(errc::not_found, "cannot read journal file " + path);
  std::stringstream bytes;
  bytes << in.rdbuf();
  wire::WorkflowState st;
  if (!st.ParseFromString(bytes.str()))
    return make_error(errc::corrupt_record,
                      path + " is not an exported workflow journal");
  return st;
}

workflow_session::workflow_session(const workflow_env& env, sim::kernel& k)
    : env_(&env)
    , kernel_(&k) {}

silo& workflow_session::runtime() {
  GRANARY_ASSERT(host_ != nullptr, "the silo of a workflow_env is not running");
  return host_->runtime();
}

silo_workflow_client& workflow_session::client() {
  GRANARY_ASSERT(client_ != nullptr,
                 "the silo of a workflow_env is not running");
  return *client_;
}

void workflow_session::run_until_idle() {
  kernel_->wait_until_idle();
}

void workflow_session::advance(std::chrono::milliseconds d) {
  sys::sleep_for(d);
  run_until_idle();
}

int64_t workflow_session::now_ms() const {
  return sys::wall_ms();
}

caf::expected<wire::WorkflowState>
workflow_session::journal(const std::string& type, const std::string& id) {
  auto raw = runtime().read_state(grain_id{type, id});
  if (!raw)
    return std::move(raw.error());
  if (!*raw)
    return make_error(errc::not_found,
                      "workflow " + type + "/" + id + " has no stored state");
  wire::WorkflowState st;
  if (!st.ParseFromString(**raw))
    return make_error(errc::corrupt_record, "the state of " + type + "/" + id
                                                + " is not a workflow journal");
  return st;
}

caf::error workflow_session::start() {
  GRANARY_ASSERT(host_ == nullptr, "starting a running workflow_env silo");
  auto& o = env_->opts_;
  host::silo_file_config cfg;
  cfg.cluster_id = "workflow-env";
  cfg.silo_id = "silo-1";
  // Never written to: storage is in memory and there is no cluster.
  cfg.data_dir = (fs::temp_directory_path()
                  / ("granary-workflow-env-" + std::to_string(::getpid())))
                     .string();
  cfg.limits.partitions = o.partitions;
  cfg.limits.threads = 1;
  // The clock is the kernel's and never steps: partitions need not wake
  // up to look for a jump, which keeps a skipped day cheap.
  cfg.limits.timer_poll = std::chrono::hours{1};
  // Sweeping expired dedup records every minute would cost a turn per
  // partition per skipped minute; hourly keeps a skipped day cheap.
  cfg.limits.dedup_sweep_interval = std::chrono::hours{1};
  for (auto& fn : env_->configure_)
    fn(cfg);
  host::silo_builder b;
  b.config(cfg)
      .gateway(false)
      .activity_pool_size(o.activity_threads)
      .storage([mem = mem_](const host::silo_file_config&)
                   -> caf::expected<std::unique_ptr<storage>> {
        return std::make_unique<shared_memory_storage>(mem);
      });
  for (auto& fn : env_->grains_)
    b.grains(fn);
  auto started = b.start();
  if (!started)
    return std::move(started.error());
  host_ = std::move(*started);
  client_ = std::make_unique<silo_workflow_client>(host_->runtime(),
                                                   std::chrono::seconds{30});
  // The only silo: every run settles here and wakes the wait, so reading
  // once an hour is only a backstop (and keeps a skipped day cheap).
  client_->set_max_poll(std::chrono::hours{1});
  return caf::none;
}

void workflow_session::stop() {
  client_.reset();
  if (!host_)
    return;
  if (auto err = host_->stop())
    kernel_->fail("stop", "the silo did not stop cleanly: " + describe(err));
  host_.reset();
}

caf::error workflow_session::restart() {
  stop();
  return start();
}

workflow_env::workflow_env(workflow_env_options opts)
    : opts_(opts) {}

workflow_env& workflow_env::grains(host::grains_fn fn) {
  grains_.push_back(std::move(fn));
  return *this;
}

workflow_env&
workflow_env::configure(std::function<void(host::silo_file_config&)> fn) {
  configure_.push_back(std::move(fn));
  return *this;
}

sim::run_result
workflow_env::run(const std::function<void(workflow_session&)>& body) const {
  sim::kernel_config kc;
  kc.seed = opts_.seed;
  kc.wall_start_ms = opts_.start_wall_ms;
  kc.max_time = opts_.time_limit;
  sim::kernel k{kc};
  if (!opts_.verbose)
    set_log_sink([](log_level, std::string_view) {});
  auto res = k.run([&] {
    workflow_session s{*this, k};
    if (auto err = s.start())
      k.fail("setup", "the silo did not start: " + describe(err));
    body(s);
    s.stop();
  });
  if (!opts_.verbose)
    set_log_sink({});
  return res;
}

} // namespace granary::testing

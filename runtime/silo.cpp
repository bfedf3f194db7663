#include "runtime/silo.hpp"

#include <charconv>
#include <random>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/logger.hpp>
#include <caf/scheduler/test_coordinator.hpp>
#include <caf/send.hpp>
#include <google/protobuf/message.h>
#include <type_traits>

#include "granary.pb.h"
#include "runtime/assert.hpp"
#include "runtime/error.hpp"
#include "runtime/limits.hpp"
#include "runtime/log.hpp"
#include "runtime/partition.hpp"
#include "runtime/silo_core.hpp"
#include "runtime/sys.hpp"

namespace granary {

using namespace detail;

namespace {

// What `services()` answers when the host gave none.
const service_registry no_services;

// 2: timers are also indexed by due time in the `timer_index` column.
constexpr uint32_t format_version = 2;
constexpr const char* meta_key = "silo";

// Format 1 had no timer index: builds it from the `timers` records, one
// bounded page per durable write, before any partition runs. Rebuilding
// writes the same entries, so a crash midway only repeats the work; the
// format version changes once it is done.
caf::error build_timer_index(storage& store, int64_t now_ms) {
  std::string start;
  uint64_t built = 0;
  // Bounded by the records of the column: every pass moves past a page.
  for (;;) {
    write_batch wb;
    size_t seen = 0;
    std::string last;
    auto err = store.scan(
        column::timers, "", start, limits::index_build_page,
        [&](std::string_view k, std::string_view v) {
          ++seen;
          last.assign(k);
          wire::Envelope env;
          if (!keys::decode(k)
              || !env.ParseFromArray(v.data(), static_cast<int>(v.size()))) {
            add_quarantine(wb, keys::read_partition(k).value_or(0),
                           column::timers, k, v,
                           "record does not decode as an envelope", now_ms);
            log(log_level::error, "quarantined corrupt timers record "
                                      + keys::printable(k)
                                      + " while building the timer index");
            return true;
          }
          wb.put(column::timer_index,
                 keys::timer_index_key(k, index_due_of(env)), {});
          ++built;
          return true;
        });
    if (err)
      return err;
    if (!wb.empty()) {
      const write_batch* views[] = {&wb};
      if (auto err = store.commit(views))
        return err;
    }
    if (seen < limits::index_build_page)
      break;
    start = std::move(last);
    start.push_back('\0');
  }
  log(log_level::info, "upgraded the data directory to format version "
                           + std::to_string(format_version) + ": indexed "
                           + std::to_string(built) + " timers by due time");
  return caf::none;
}

std::string hex(uint64_t x) {
  char buf[16];
  auto res = std::to_chars(buf, buf + sizeof(buf), x, 16);
  return std::string{buf, res.ptr};
}

caf::error bad(const char* field, std::string problem) {
  return make_error(errc::invalid_config,
                    std::string{"silo config: "} + field + " " + problem);
}

} // namespace

// -- silo_config --------------------------------------------------------------

caf::error silo_config::validate() const {
  if (partitions == 0 || partitions > limits::max_partitions)
    return bad("partitions", "must be between 1 and "
                                 + std::to_string(limits::max_partitions)
                                 + ", got " + std::to_string(partitions));
  if (threads == 0 || threads > limits::max_threads)
    return bad("threads", "must be between 1 and "
                              + std::to_string(limits::max_threads) + ", got "
                              + std::to_string(threads));
  if (scheduler_policy != "sharing" && scheduler_policy != "stealing")
    return bad("scheduler_policy", "must be \"sharing\" or \"stealing\", got \""
                                       + scheduler_policy + "\"");
  if (max_throughput == 0)
    return bad("max_throughput", "must be positive");
  if (idle_age.count() <= 0)
    return bad("idle_age", "must be positive");
  if (max_queued_per_partition == 0)
    return bad("max_queued_per_partition", "must be positive");
  if (max_inbox_per_grain == 0)
    return bad("max_inbox_per_grain", "must be positive");
  if (max_outbox_per_grain == 0)
    return bad("max_outbox_per_grain", "must be positive");
  if (max_uncommitted_per_partition == 0)
    return bad("max_uncommitted_per_partition", "must be positive");
  if (max_attempts == 0)
    return bad("max_attempts", "must be at least 1");
  if (retry_initial.count() <= 0 || retry_max < retry_initial)
    return bad("retry_initial", "must be positive and not above retry_max");
  if (max_payload_bytes == 0 || max_payload_bytes > limits::max_payload_bytes)
    return bad("max_payload_bytes", "must be between 1 byte and 64 MiB");
  if (max_group_ops == 0)
    return bad("max_group_ops", "must be positive");
  if (redelivery_timeout.count() <= 0)
    return bad("redelivery_timeout", "must be positive");
  if (parked_retry.count() <= 0)
    return bad("parked_retry", "must be positive");
  if (remote_call_timeout.count() <= 0)
    return bad("remote_call_timeout", "must be positive");
  if (timer_poll.count() <= 0)
    return bad("timer_poll", "must be positive");
  if (timer_window.count() <= 0 || timer_window > limits::max_timer_window)
    return bad("timer_window", "must be positive and at most a year, got "
                                   + std::to_string(timer_window.count())
                                   + " ms");
  if (dedup_retention.count() <= 0)
    return bad("dedup_retention", "must be positive");
  if (dedup_sweep_interval.count() <= 0)
    return bad("dedup_sweep_interval", "must be positive");
  return caf::none;
}

// -- grain_registry -----------------------------------------------------------

caf::error grain_registry::add(std::string type_name, grain_factory factory) {
  if (type_name.empty())
    return make_error(errc::invalid_argument, "grain type name is empty");
  if (!factory)
    return make_error(errc::invalid_argument,
                      "grain type '" + type_name + "' has no factory");
  if (type_name.find('/') != std::string::npos)
    return make_error(errc::invalid_argument,
                      "grain type '" + type_name
                          + "' contains '/', which separates type and key in "
                            "references");
  if (factories_.count(type_name) > 0)
    return make_error(errc::invalid_argument,
                      "grain type '" + type_name + "' is registered twice");
  factories_.emplace(std::move(type_name), std::move(factory));
  return caf::none;
}

const grain_factory* grain_registry::find(std::string_view type_name) const {
  if (auto i = factories_.find(type_name); i != factories_.end())
    return &i->second;
  return nullptr;
}

std::vector<std::string> grain_registry::names() const {
  std::vector<std::string> out;
  for (auto& [name, f] : factories_)
    out.push_back(name);
  return out;
}

// -- silo_core ----------------------------------------------------------------

std::string silo_core::next_msg_id() {
  auto n = next_counter.fetch_add(1, std::memory_order_relaxed);
  return msg_id_prefix + hex(n);
}

caf::error silo_core::reserve(uint32_t p) {
  auto limit = static_cast<int64_t>(cfg.max_queued_per_partition);
  auto prev = gauges[p].queued.fetch_add(1, std::memory_order_relaxed);
  if (prev < limit)
    return caf::none;
  gauges[p].queued.fetch_sub(1, std::memory_order_relaxed);
  bump(stats.overloaded);
  return make_error(errc::overloaded,
                    "partition " + std::to_string(p) + " has "
                        + std::to_string(prev)
                        + " queued requests (max_queued_per_partition="
                        + std::to_string(limit) + "); retry after 10 ms");
}

caf::error silo_core::check_space() {
  using namespace std::chrono;
  auto now = duration_cast<milliseconds>(sys::now().time_since_epoch()).count();
  auto last = space_checked_ms.load(std::memory_order_relaxed);
  if (now - last >= limits::space_check_interval.count()
      && space_checked_ms.compare_exchange_strong(last, now)) {
    auto free = store->free_bytes();
    bool low = free && *free < cfg.min_free_bytes;
    if (low && !space_low.load())
      log(log_level::error,
          "data volume has " + std::to_string(*free >> 20)
              + " MiB free, below min_free_bytes; refusing new durable work");
    space_low = low;
  }
  if (space_low.load(std::memory_order_relaxed))
    return make_error(errc::storage_full,
                      "the data volume is below min_free_bytes ("
                          + std::to_string(cfg.min_free_bytes >> 20)
                          + " MiB); free space and retry");
  return caf::none;
}

api_guard::api_guard(silo_core& c)
    : c_(c) {
  // Sequentially consistent, like `stop`'s write of `stopping` and its read
  // of `callers`: either `stop` sees this caller, or this caller sees the
  // stop.
  c_.callers.fetch_add(1);
  err_ = c_.check_running();
}

api_guard::~api_guard() {
  c_.callers.fetch_sub(1);
}

caf::error silo_core::check_running() const {
  // `stopping` first: it is set before `stop` tears anything down, and a
  // caller that sees it unset holds an `api_guard` that the teardown waits
  // for, so `commits` is still there.
  if (stopping)
    return make_error(errc::silo_stopped, "the silo is stopped");
  if (commits && commits->failed())
    return make_error(errc::storage_failure,
                      "silo fail-stopped after a storage error: "
                          + describe(commits->failure()));
  return caf::none;
}

// -- silo ---------------------------------------------------------------------

silo::silo(std::unique_ptr<silo_core> core)
    : core_(std::move(core)) {}

silo::~silo() {
  static_cast<void>(stop());
}

namespace {

// A short-lived actor that asks a partition actor and hands the answer to
// `done`: a blocking `scoped_actor` would stall the simulation's
// single-threaded scheduler. A class rather than a spawned function: CAF
// 0.17 dereferences a null argument tuple for functions without arguments,
// which debug builds of libstdc++ abort on.
template <class Atom>
class asker final : public caf::event_based_actor {
public:
  asker(caf::actor_config& cfg, caf::actor target, caf::duration timeout,
        std::function<void(caf::error)> done)
      : caf::event_based_actor(cfg)
      , target_(std::move(target))
      , timeout_(timeout)
      , done_(std::move(done)) {}

  caf::behavior make_behavior() override {
    request(target_, timeout_, Atom::value)
        .then(
            [this](bool) {
              done_(caf::none);
              quit();
            },
            [this](caf::error& err) {
              done_(std::move(err));
              quit();
            });
    return {};
  }

private:
  caf::actor target_;
  caf::duration timeout_;
  std::function<void(caf::error)> done_;
};

template <class Atom>
void ask_async(caf::actor_system& sys, const caf::actor& target, Atom,
               caf::duration timeout, std::function<void(caf::error)> done) {
  sys.spawn<asker<Atom>>(target, timeout, std::move(done));
}

using answer = std::shared_ptr<sys::one_shot<caf::error>>;

// Under a simulation the partitions run on CAF's test coordinator, and
// this loop is its only worker: it runs one job at a time, chosen by the
// run's seed, and moves CAF's clock with the virtual time. Ends once
// stopped and drained.
void drive_test_coordinator(silo_core& c) {
  auto& co
      = dynamic_cast<caf::scheduler::test_coordinator&>(c.sys->scheduler());
  auto& clk = co.clock();
  // Bounded by the stop flag; every pass runs a job or waits.
  for (;;) {
    auto now = sys::now();
    if (now > clk.current_time)
      clk.advance_time(now - clk.current_time);
    if (co.has_job()) {
      auto pick
          = static_cast<std::ptrdiff_t>(sys::random_u64() % co.jobs.size());
      std::rotate(co.jobs.begin(), co.jobs.begin() + pick,
                  co.jobs.begin() + pick + 1);
      co.run_once();
      sys::yield();
      continue;
    }
    if (c.caf_driver_stop.load())
      return;
    std::optional<sys::time_point> next;
    if (clk.has_pending_timeout())
      next = clk.schedule().begin()->first;
    sys::wait_until_ready(
        [&] { return co.has_job() || c.caf_driver_stop.load(); }, next);
  }
}

// Asks with `what` and returns where the answer will arrive.
template <class Atom>
answer ask(caf::actor_system& sys, const caf::actor& target, Atom what,
           caf::duration timeout) {
  auto w = std::make_shared<sys::one_shot<caf::error>>();
  ask_async(sys, target, what, timeout,
            [w](caf::error err) { w->set(std::move(err)); });
  return w;
}

} // namespace

caf::expected<std::unique_ptr<silo>>
silo::start(silo_config cfg, grain_registry registry,
            std::unique_ptr<storage> store,
            std::shared_ptr<granary::clock> clk) {
  if (auto err = cfg.validate())
    return err;
  if (!store)
    return make_error(errc::invalid_argument, "silo::start: no storage");
  if (!clk)
    clk = make_system_clock();
  // The partition count is part of the on-disk layout: check it, and bump
  // the incarnation that keeps sequence numbers unique across restarts.
  auto raw = store->get(column::meta, meta_key);
  if (!raw)
    return std::move(raw.error());
  wire::SiloMeta meta;
  if (*raw) {
    if (!meta.ParseFromString(**raw))
      return make_error(errc::corrupt_record,
                        "silo metadata record does not decode; refusing to "
                        "start on an unknown layout");
    if (meta.format_version() > format_version)
      return make_error(errc::invalid_config,
                        "data directory has format version "
                            + std::to_string(meta.format_version())
                            + ", this build reads up to "
                            + std::to_string(format_version));
    if (meta.partitions() != cfg.partitions)
      return make_error(errc::invalid_config,
                        "data directory was created with "
                            + std::to_string(meta.partitions())
                            + " partitions but the config asks for "
                            + std::to_string(cfg.partitions)
                            + "; the partition count is fixed at creation");
    if (meta.format_version() < 2)
      if (auto err = build_timer_index(*store, clk->now_ms()))
        return err;
    meta.set_format_version(format_version);
  } else {
    meta.set_format_version(format_version);
    meta.set_partitions(cfg.partitions);
    meta.set_created_ms(clk->now_ms());
  }
  meta.set_incarnation(meta.incarnation() + 1);
  if (meta.node_id() == 0) {
    meta.set_node_id(sys::random_u64() | 1);
  }
  {
    write_batch wb;
    wb.put(column::meta, meta_key, meta.SerializeAsString());
    const write_batch* views[] = {&wb};
    if (auto err = store->commit(views))
      return err;
  }
  auto core = std::make_unique<silo_core>();
  core->cfg = std::move(cfg);
  core->router.store(core->cfg.router, std::memory_order_release);
  core->registry = std::move(registry);
  core->store = std::move(store);
  core->clk = std::move(clk);
  core->incarnation = meta.incarnation();
  core->seq_counter = meta.incarnation() << 40;
  core->msg_id_prefix
      = hex(meta.node_id()) + "." + hex(meta.incarnation()) + ".";
  core->sys_cfg = std::make_unique<caf::actor_system_config>();
  core->sys_cfg->set("scheduler.max-threads", core->cfg.threads);
  core->sys_cfg->set("scheduler.policy", core->cfg.scheduler_policy == "sharing"
                                             ? caf::atom("sharing")
                                             : caf::atom("stealing"));
  core->sys_cfg->set("scheduler.max-throughput", core->cfg.max_throughput);
  bool simulated = sys::current_kernel() != nullptr;
  if (simulated)
    core->sys_cfg->set("scheduler.policy", caf::atom("testing"));
  core->sys_cfg->set("logger.console-verbosity", caf::atom("quiet"));
  core->sys_cfg->set("logger.file-verbosity", caf::atom("quiet"));
  {
    // CAF's logger takes its start time from the OS clock.
    sys::os_calls_allowed caf_setup;
    core->sys = std::make_unique<caf::actor_system>(*core->sys_cfg);
  }
  if (simulated)
    core->caf_driver
        = sys::thread{"caf", [c = core.get()] { drive_test_coordinator(*c); }};
  core->commits
      = std::make_unique<commit_loop>(*core->store, core->cfg.max_group_ops);
  core->gauges = std::make_unique<mailbox_gauge[]>(core->cfg.partitions);
  for (uint32_t p = 0; p < core->cfg.partitions; ++p)
    core->partitions.push_back(core->sys->spawn<partition>(std::ref(*core), p));
  std::unique_ptr<silo> result{new silo(std::move(core))};
  auto& c = *result->core_;
  caf::error failure;
  {
    // Only partitions this silo owns are served; a cluster silo acquires
    // others later, when they are handed to it.
    std::vector<answer> answers;
    for (uint32_t p = 0; p < c.partitions.size(); ++p)
      if (!c.remote_owner(p))
        answers.push_back(
            ask(*c.sys, c.partitions[p], recover_atom::value, caf::infinite));
    for (auto& a : answers) {
      // Recovery has no deadline of its own; a day bounds the wait.
      auto err = a->wait_for(std::chrono::hours{24});
      if (!err)
        err = make_error(errc::timeout, "recovering a partition took a day");
      if (*err && !failure)
        failure = std::move(*err);
    }
  }
  // CAF 0.17 pins its logger in a thread-local of every thread that built
  // the system or a scoped_actor, and ~actor_system waits for the logger:
  // without this, stopping the silo from another thread hangs until this
  // thread exits.
  caf::logger::set_current_actor_system(nullptr);
  if (failure) {
    static_cast<void>(result->stop());
    return failure;
  }
  return result;
}

caf::error silo::stop() {
  auto& c = *core_;
  if (!c.sys || c.stopping.exchange(true))
    return caf::none;
  {
    std::vector<answer> answers;
    for (auto& p : c.partitions)
      answers.push_back(ask(*c.sys, p, stop_atom::value,
                            caf::duration{std::chrono::seconds{30}}));
    // Each answer comes by the request's own timeout.
    for (auto& a : answers)
      static_cast<void>(a->wait_for(std::chrono::seconds{31}));
  }
  caf::logger::set_current_actor_system(nullptr); // See silo::start.
  // A caller admitted before the stop may still be about to enqueue into a
  // partition; none holds its guard for long (the blocking ones are bounded
  // by their own timeouts), so this wait is bounded too.
  for (int64_t i = 0;
       c.callers.load() > 0 && i < limits::stop_caller_wait.count(); ++i)
    sys::sleep_for(std::chrono::milliseconds{1});
  GRANARY_ASSERT(c.callers.load() == 0,
                 "a client API call outlived the silo's stop by 120 s");
  c.commits->stop();
  for (auto& p : c.partitions)
    caf::anon_send_exit(p, caf::exit_reason::user_shutdown);
  c.partitions.clear();
  auto failure = c.commits->failure();
  if (c.caf_driver.joinable()) {
    c.caf_driver_stop = true;
    c.caf_driver.join();
    // Actors still waiting for a timer would hold the destructor.
    c.sys->await_actors_before_shutdown(false);
  }
  {
    sys::os_calls_allowed caf_teardown;
    c.sys.reset();
  }
  c.commits.reset();
  c.store.reset();
  return failure;
}

namespace {

// Sends `what` to partition `p` and waits for its answer.
template <class Atom>
caf::error
ask_partition(silo_core& c, uint32_t p, Atom what, const char* action,
              std::chrono::milliseconds timeout = std::chrono::seconds{60}) {
  if (p >= c.partitions.size())
    return make_error(errc::invalid_argument,
                      "partition " + std::to_string(p) + " does not exist");
  api_guard guard{c};
  if (auto err = guard.error())
    return err;
  caf::error result;
  {
    auto a = ask(*c.sys, c.partitions[p], what, caf::duration{timeout});
    auto got = a->wait_for(timeout + std::chrono::seconds{1});
    auto err = got ? std::move(*got) : caf::error{caf::sec::request_timeout};
    if (err == caf::sec::request_timeout) {
      // Still running: the partition finishes it anyway.
      result = make_error(errc::timeout,
                          std::string{action} + " partition "
                              + std::to_string(p) + " did not finish within "
                              + std::to_string(timeout.count()) + " ms");
    } else if (err) {
      result
          = make_error(errc::storage_failure,
                       std::string{action} + " partition " + std::to_string(p)
                           + " failed: " + describe(err));
    }
  }
  caf::logger::set_current_actor_system(nullptr); // See silo::start.
  return result;
}

} // namespace

caf::error silo::acquire_partition(uint32_t p) {
  return ask_partition(*core_, p, recover_atom::value, "recovering");
}

caf::error silo::release_partition(uint32_t p,
                                   std::chrono::milliseconds timeout) {
  return ask_partition(*core_, p, release_atom::value, "releasing", timeout);
}

void silo::route_changed(uint32_t p) {
  auto& c = *core_;
  api_guard guard{c};
  if (guard.error() || p >= c.cfg.partitions)
    return;
  // Any partition may hold entries for `p`; each looks it up in its own
  // index, so this costs one small message per partition.
  for (auto& part : c.partitions)
    caf::anon_send(part, route_msg{p});
}

storage& silo::store() {
  return *core_->store;
}

void silo::call_async(grain_id target, message_ptr msg, reply_handler reply) {
  auto& c = *core_;
  api_guard guard{c};
  if (auto err = guard.error())
    return reply(std::move(err));
  if (!msg)
    return reply(make_error(errc::invalid_argument, "call: null message"));
  if (target.type.empty())
    return reply(make_error(errc::invalid_argument, "call: empty grain type"));
  auto p = partition_of(target, c.cfg.partitions);
  if (auto* router = c.remote_owner(p))
    return router->call(p, target, std::move(msg), c.cfg.remote_call_timeout,
                        std::move(reply));
  if (auto err = c.reserve(p))
    return reply(std::move(err));
  caf::anon_send(c.partitions[p],
                 call_msg{std::move(target), std::move(msg), std::move(reply)});
}

void silo::deliver_remote(std::shared_ptr<wire::Envelope> env, bool fresh,
                          send_handler done) {
  auto& c = *core_;
  api_guard guard{c};
  if (auto err = guard.error())
    return done(err);
  grain_id target{env->target().type(), env->target().key()};
  if (target.type.empty())
    return done(
        make_error(errc::invalid_argument, "deliver: empty grain type"));
  auto p = partition_of(target, c.cfg.partitions);
  if (c.remote_owner(p))
    return done(
        make_error(errc::invalid_argument, "partition " + std::to_string(p)
                                               + " of " + to_string(target)
                                               + " is not owned by this silo"));
  if (auto err = c.reserve(p))
    return done(err);
  caf::anon_send(c.partitions[p],
                 send_msg{std::move(env), std::move(done), fresh, true});
}

namespace {

// A partition that is being handed off between silos answers `not_owner`
// for a moment: the blocking calls try again until their deadline.
template <class Attempt>
auto retry_not_owner(std::chrono::milliseconds timeout, Attempt attempt) {
  using clock_type = std::chrono::steady_clock;
  auto deadline = sys::now() + timeout;
  auto pause = std::chrono::milliseconds{10};
  // Bounded by the deadline; every pass waits at least `pause`.
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - sys::now());
    auto res = attempt(std::max(left, std::chrono::milliseconds{1}));
    const caf::error* err = nullptr;
    if constexpr (std::is_same_v<decltype(res), caf::error>)
      err = &res;
    else if (!res)
      err = &res.error();
    if (!err || code_of(*err) != errc::not_owner
        || sys::now() + pause >= deadline)
      return res;
    sys::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds{200});
  }
}

} // namespace

caf::expected<message_ptr> silo::call(grain_id target, message_ptr msg,
                                      std::chrono::milliseconds timeout) {
  return retry_not_owner(
      timeout,
      [&](std::chrono::milliseconds left) -> caf::expected<message_ptr> {
        auto w = std::make_shared<sys::one_shot<caf::expected<message_ptr>>>();
        call_async(target, msg, [w](caf::expected<message_ptr> res) {
          w->set(std::move(res));
        });
        auto res = w->wait_for(left);
        if (!res)
          return make_error(errc::timeout,
                            "transient call to " + to_string(target)
                                + " timed out after "
                                + std::to_string(timeout.count()) + " ms");
        return std::move(*res);
      });
}

void silo::send_async(grain_id target, const google::protobuf::Message& msg,
                      std::string msg_id, send_handler done) {
  auto& c = *core_;
  api_guard guard{c};
  if (auto err = guard.error())
    return done(err);
  if (target.type.empty())
    return done(make_error(errc::invalid_argument, "send: empty grain type"));
  auto size = msg.ByteSizeLong();
  if (size > c.cfg.max_payload_bytes)
    return done(make_error(errc::payload_too_large,
                           "payload of " + std::to_string(size) + " bytes to "
                               + to_string(target)
                               + " exceeds max_payload_bytes="
                               + std::to_string(c.cfg.max_payload_bytes)));
  auto p = partition_of(target, c.cfg.partitions);
  auto* router = c.remote_owner(p);
  if (!router)
    if (auto err = c.reserve(p))
      return done(err);
  auto env = std::make_shared<wire::Envelope>();
  bool fresh = msg_id.empty();
  env->set_msg_id(fresh ? c.next_msg_id() : std::move(msg_id));
  env->mutable_target()->set_type(std::move(target.type));
  env->mutable_target()->set_key(std::move(target.key));
  env->set_payload_type(msg.GetDescriptor()->full_name());
  msg.SerializeToString(env->mutable_payload());
  env->set_accepted_ms(c.clk->now_ms());
  if (router) {
    // The owner acknowledges once it is durable there; a lost answer is
    // an error to the caller, who resends with its own id to be safe.
    return router->deliver(p, std::move(env),
                           [done = std::move(done)](const caf::error& err,
                                                    int64_t) { done(err); });
  }
  caf::anon_send(c.partitions[p],
                 send_msg{std::move(env), std::move(done), fresh});
}

caf::error silo::send(grain_id target, const google::protobuf::Message& msg,
                      std::string msg_id, std::chrono::milliseconds timeout) {
  // `not_owner` means the message was not accepted: sending it again (with
  // the same id, or a fresh one) cannot duplicate it.
  return retry_not_owner(timeout, [&](std::chrono::milliseconds left) {
    auto w = std::make_shared<sys::one_shot<caf::error>>();
    send_async(target, msg, msg_id,
               [w](const caf::error& err) { w->set(err); });
    auto res = w->wait_for(left);
    if (!res)
      return make_error(errc::timeout,
                        "durable send to " + to_string(target)
                            + " was not acknowledged within "
                            + std::to_string(timeout.count())
                            + " ms; resend with the same msg_id to be safe");
    return std::move(*res);
  });
}

caf::expected<std::vector<dead_letter_info>> silo::dead_letters(size_t limit) {
  api_guard guard{*core_};
  if (auto err = guard.error())
    return err;
  return list_dead_letters(*core_->store, limit);
}

namespace {

caf::error run_admin(silo_core& c, const grain_id& target,
                     const std::string& msg_id, bool requeue) {
  auto w = std::make_shared<sys::one_shot<caf::error>>();
  {
    api_guard guard{c};
    if (auto err = guard.error())
      return err;
    auto p = partition_of(target, c.cfg.partitions);
    caf::anon_send(c.partitions[p],
                   admin_msg{[w, target, msg_id, requeue](partition& self) {
                     self.admin_dead_letter(
                         target, msg_id, requeue,
                         [w](const caf::error& err) { w->set(err); });
                   }});
  }
  auto res = w->wait_for(std::chrono::seconds{30});
  if (!res)
    return make_error(errc::timeout, "dead-letter operation timed out");
  return std::move(*res);
}

} // namespace

caf::error silo::requeue_dead_letter(const grain_id& target,
                                     const std::string& msg_id) {
  return run_admin(*core_, target, msg_id, true);
}

caf::error silo::drop_dead_letter(const grain_id& target,
                                  const std::string& msg_id) {
  return run_admin(*core_, target, msg_id, false);
}

silo_stats silo::stats() const {
  auto& s = core_->stats;
  silo_stats out;
  out.turns = s.turns.load();
  out.durable_turns = s.durable_turns.load();
  out.transient_turns = s.transient_turns.load();
  out.failed_turns = s.failed_turns.load();
  out.activations = s.activations.load();
  out.deactivations = s.deactivations.load();
  out.active = out.activations - std::min(out.activations, out.deactivations);
  out.dead_letters = s.dead_letters.load();
  out.overloaded = s.overloaded.load();
  out.duplicates = s.duplicates.load();
  out.timers_fired = s.timers_fired.load();
  out.quarantined = s.quarantined.load();
  out.ticks = s.ticks.load();
  out.timers_in_memory
      = static_cast<uint64_t>(std::max<int64_t>(s.timers_in_memory.load(), 0));
  if (core_->commits)
    out.commits = core_->commits->stats();
  return out;
}

caf::error silo::failure() const {
  if (core_->commits)
    return core_->commits->failure();
  return caf::none;
}

const silo_config& silo::config() const {
  return core_->cfg;
}

const service_registry& silo::services() const {
  return core_->cfg.services ? *core_->cfg.services : no_services;
}

const service_registry& turn::services() const {
  auto& svc = owner_->core_.cfg.services;
  return svc ? *svc : no_services;
}

caf::actor_system& silo::system() {
  return *core_->sys;
}

uint32_t silo::partitions() const {
  return core_->cfg.partitions;
}

} // namespace granary

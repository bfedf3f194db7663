#include "cluster/membership/remote_membership.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include <caf/message.hpp>

#include "cluster.pb.h"
#include "cluster/membership/membership_codec.hpp"
#include "membership.pb.h"
#include "runtime/error.hpp"
#include "runtime/log.hpp"
#include "runtime/sys.hpp"

namespace granary::cluster {

namespace {

using clock_type = std::chrono::steady_clock;

void bump(std::atomic<uint64_t>& x) {
  x.fetch_add(1, std::memory_order_relaxed);
}

uint64_t get(const std::atomic<uint64_t>& x) {
  return x.load(std::memory_order_relaxed);
}

/// Returns the message of `err` without its code, to travel next to it.
std::string error_text(const caf::error& err) {
  auto& ctx = err.context();
  if (err.category() == error_category() && ctx.size() == 1
      && ctx.match_element<std::string>(0))
    return ctx.get_as<std::string>(0);
  return describe(err);
}

/// Rebuilds an error sent by the seed.
caf::error error_from_answer(const MembershipAnswer& a) {
  auto code = a.error_code();
  constexpr auto last = static_cast<uint32_t>(errc::already_exists);
  if (code == 0 || code > last)
    return make_error(errc::unspecified, "membership seed sent error code "
                                             + std::to_string(code) + ": "
                                             + a.error());
  return make_error(static_cast<errc>(code), a.error());
}

void set_error(MembershipAnswer& a, const caf::error& err) {
  a.Clear();
  auto code = code_of(err);
  a.set_error_code(static_cast<uint32_t>(code));
  a.set_error(error_text(err));
}

void set_error(MembershipAnswer& a, errc code, std::string text) {
  a.Clear();
  a.set_error_code(static_cast<uint32_t>(code));
  a.set_error(std::move(text));
}

WriteStatus to_proto(write_status x) {
  switch (x) {
    case write_status::applied:
      return WRITE_APPLIED;
    case write_status::row_exists:
      return WRITE_ROW_EXISTS;
    case write_status::row_missing:
      return WRITE_ROW_MISSING;
    case write_status::row_version_conflict:
      return WRITE_ROW_VERSION_CONFLICT;
    case write_status::table_version_conflict:
      return WRITE_TABLE_VERSION_CONFLICT;
    case write_status::map_version_conflict:
      return WRITE_MAP_VERSION_CONFLICT;
  }
  return WRITE_STATUS_UNSPECIFIED;
}

bool from_proto(WriteStatus x, write_status& out) {
  switch (x) {
    case WRITE_APPLIED:
      out = write_status::applied;
      return true;
    case WRITE_ROW_EXISTS:
      out = write_status::row_exists;
      return true;
    case WRITE_ROW_MISSING:
      out = write_status::row_missing;
      return true;
    case WRITE_ROW_VERSION_CONFLICT:
      out = write_status::row_version_conflict;
      return true;
    case WRITE_TABLE_VERSION_CONFLICT:
      out = write_status::table_version_conflict;
      return true;
    case WRITE_MAP_VERSION_CONFLICT:
      out = write_status::map_version_conflict;
      return true;
    default:
      return false;
  }
}

void set_table(MembershipAnswer& a, const membership_table& t) {
  auto* out = a.mutable_table();
  out->set_version(t.version);
  out->mutable_rows()->Reserve(static_cast<int>(t.rows.size()));
  for (auto& row : t.rows)
    *out->add_rows() = to_proto(row);
}

void set_write(MembershipAnswer& a, const write_result& r) {
  auto* out = a.mutable_write();
  out->set_status(to_proto(r.status));
  out->set_version(r.version);
}

const char* op_name(MembershipCall::OpCase op) {
  switch (op) {
    case MembershipCall::kReadAll:
      return "read_all";
    case MembershipCall::kRead:
      return "read";
    case MembershipCall::kInsert:
      return "insert";
    case MembershipCall::kUpdate:
      return "update";
    case MembershipCall::kUpdateIAmAlive:
      return "update_i_am_alive";
    case MembershipCall::kDeleteDead:
      return "delete_dead";
    case MembershipCall::kReadPartitionMap:
      return "read_partition_map";
    case MembershipCall::kWritePartitionMap:
      return "write_partition_map";
    case MembershipCall::kReadVersions:
      return "read_versions";
    case MembershipCall::OP_NOT_SET:
      break;
  }
  return "none";
}

/// Runs `call` on `store`; never throws.
MembershipAnswer execute(membership_store& store, const MembershipCall& call,
                         const std::string& caller) {
  MembershipAnswer a;
  auto bad_row = [&](const caf::error& err) {
    set_error(a, errc::invalid_argument,
              std::string{"membership call "} + op_name(call.op_case())
                  + " from silo '" + caller + "': bad row: " + error_text(err));
  };
  switch (call.op_case()) {
    case MembershipCall::kReadAll: {
      auto t = store.read_all();
      if (t)
        set_table(a, *t);
      else
        set_error(a, t.error());
      break;
    }
    case MembershipCall::kRead: {
      auto t = store.read(call.read().silo_id());
      if (t)
        set_table(a, *t);
      else
        set_error(a, t.error());
      break;
    }
    case MembershipCall::kInsert: {
      auto e = from_proto(call.insert().entry());
      if (!e) {
        bad_row(e.error());
        break;
      }
      auto r = store.insert(*e, call.insert().expected_table_version());
      if (r)
        set_write(a, *r);
      else
        set_error(a, r.error());
      break;
    }
    case MembershipCall::kUpdate: {
      auto& u = call.update();
      auto e = from_proto(u.entry());
      if (!e) {
        bad_row(e.error());
        break;
      }
      auto r = store.update(*e, u.expected_row_version(),
                            u.expected_table_version());
      if (r)
        set_write(a, *r);
      else
        set_error(a, r.error());
      break;
    }
    case MembershipCall::kUpdateIAmAlive: {
      auto& u = call.update_i_am_alive();
      if (auto err = store.update_i_am_alive(u.silo_id(), u.now_ms()))
        set_error(a, err);
      break;
    }
    case MembershipCall::kDeleteDead: {
      auto n = store.delete_dead(call.delete_dead().older_than_ms());
      if (n)
        a.set_count(static_cast<uint64_t>(*n));
      else
        set_error(a, n.error());
      break;
    }
    case MembershipCall::kReadPartitionMap: {
      auto m = store.read_partition_map();
      if (m)
        *a.mutable_partition_map() = to_proto(*m);
      else
        set_error(a, m.error());
      break;
    }
    case MembershipCall::kWritePartitionMap: {
      auto& w = call.write_partition_map();
      auto m = from_proto(w.map());
      if (!m) {
        set_error(a, errc::invalid_argument,
                  "membership call write_partition_map from silo '" + caller
                      + "': bad map: " + error_text(m.error()));
        break;
      }
      auto r = store.write_partition_map(*m, w.expected_version());
      if (r)
        set_write(a, *r);
      else
        set_error(a, r.error());
      break;
    }
    case MembershipCall::kReadVersions: {
      // The store has no cheaper way to read the versions; both reads are
      // served from memory by the embedded store.
      auto t = store.read_all();
      if (!t) {
        set_error(a, t.error());
        break;
      }
      auto m = store.read_partition_map();
      if (!m) {
        set_error(a, m.error());
        break;
      }
      a.mutable_versions()->set_table_version(t->version);
      a.mutable_versions()->set_map_version(m->version);
      break;
    }
    case MembershipCall::OP_NOT_SET:
      set_error(a, errc::invalid_argument,
                "membership call from silo '" + caller
                    + "' names no operation");
      break;
  }
  return a;
}

/// Sends `answer` to `to`; falls back to an error answer when the answer is
/// too large for a frame. Returns whether the transport took a frame.
bool send_answer(transport& net, const peer_info& to, uint64_t request_id,
                 const MembershipAnswer& answer) {
  Frame f;
  auto* rpc = f.mutable_membership();
  rpc->set_request_id(request_id);
  rpc->set_is_answer(true);
  rpc->set_body(answer.SerializeAsString());
  peer_address dest{to.silo_id, to.address};
  auto err = net.send(dest, f);
  if (!err)
    return true;
  if (code_of(err) == errc::payload_too_large) {
    MembershipAnswer small;
    set_error(small, errc::payload_too_large,
              "membership answer to silo '" + to.silo_id
                  + "' exceeds the frame size: " + error_text(err));
    rpc->set_body(small.SerializeAsString());
    if (!net.send(dest, f))
      return true;
  }
  return false;
}

} // namespace

// -- membership_service -------------------------------------------------------

struct membership_service::state {
  struct job {
    peer_info from;
    uint64_t request_id = 0;
    MembershipCall call;
    transport* net = nullptr;
    clock_type::time_point queued_at;
  };

  state(membership_store& st, membership_service_config cfg)
      : store(st)
      , max_queued(std::max<size_t>(cfg.max_queued_calls, 1)) {
    // nop
  }

  void answer_now(transport& net, const peer_info& from, uint64_t request_id,
                  errc code, std::string text) {
    MembershipAnswer a;
    set_error(a, code, std::move(text));
    if (!send_answer(net, from, request_id, a))
      bump(unsent);
  }

  void run() {
    // Ends when `stopped` is set; each iteration runs one call.
    for (;;) {
      job j;
      {
        std::unique_lock guard{mtx};
        cv.wait(guard, [this] { return stopped || !queue.empty(); });
        if (stopped)
          return;
        j = std::move(queue.front());
        queue.pop_front();
      }
      if (auto limit = j.call.timeout_ms(); limit > 0) {
        auto waited = sys::now() - j.queued_at;
        if (waited > std::chrono::milliseconds{limit}) {
          bump(expired);
          continue;
        }
      }
      auto a = execute(store, j.call, j.from.silo_id);
      bump(calls);
      if (!send_answer(*j.net, j.from, j.request_id, a))
        bump(unsent);
    }
  }

  membership_store& store;
  const size_t max_queued;
  sys::mutex mtx;
  sys::condition_variable cv;
  std::deque<job> queue;
  bool stopped = false;
  sys::thread worker;
  std::atomic<uint64_t> calls{0};
  std::atomic<uint64_t> overloaded{0};
  std::atomic<uint64_t> invalid{0};
  std::atomic<uint64_t> expired{0};
  std::atomic<uint64_t> ignored{0};
  std::atomic<uint64_t> unsent{0};
};

membership_service::membership_service(membership_store& store,
                                       membership_service_config cfg)
    : state_(std::make_unique<state>(store, cfg)) {
  state_->worker
      = sys::thread{"membership-service", [st = state_.get()] { st->run(); }};
}

membership_service::~membership_service() {
  stop();
}

void membership_service::handle(const peer_info& from, const MembershipRpc& rpc,
                                transport& net) {
  auto& st = *state_;
  if (rpc.is_answer()) {
    bump(st.ignored);
    return;
  }
  state::job j;
  if (!j.call.ParseFromString(rpc.body())) {
    bump(st.invalid);
    st.answer_now(net, from, rpc.request_id(), errc::invalid_argument,
                  "membership call from silo '" + from.silo_id
                      + "': undecodable body of "
                      + std::to_string(rpc.body().size()) + " bytes");
    return;
  }
  if (j.call.op_case() == MembershipCall::OP_NOT_SET) {
    bump(st.invalid);
    st.answer_now(net, from, rpc.request_id(), errc::invalid_argument,
                  "membership call from silo '" + from.silo_id
                      + "' names no (known) operation");
    return;
  }
  j.from = from;
  j.request_id = rpc.request_id();
  j.net = &net;
  j.queued_at = sys::now();
  bool stopped = false;
  {
    std::lock_guard guard{st.mtx};
    stopped = st.stopped;
    if (!stopped && st.queue.size() < st.max_queued) {
      st.queue.push_back(std::move(j));
      st.cv.notify_one();
      return;
    }
  }
  // Answer rejections outside the lock: `send` may write to a socket.
  if (stopped) {
    st.answer_now(net, from, rpc.request_id(), errc::silo_stopped,
                  "membership service of the seed is stopped");
    return;
  }
  bump(st.overloaded);
  st.answer_now(net, from, rpc.request_id(), errc::overloaded,
                "membership seed is overloaded: "
                    + std::to_string(st.max_queued)
                    + " calls queued; retry later");
}

void membership_service::stop() {
  auto& st = *state_;
  std::deque<state::job> dropped;
  {
    std::lock_guard guard{st.mtx};
    if (st.stopped)
      return;
    st.stopped = true;
    dropped.swap(st.queue);
    st.cv.notify_all();
  }
  if (st.worker.joinable())
    st.worker.join();
  for (auto& j : dropped)
    st.answer_now(*j.net, j.from, j.request_id, errc::silo_stopped,
                  "membership service of the seed stopped before running "
                  "the call");
}

membership_service_stats membership_service::stats() const {
  auto& st = *state_;
  membership_service_stats s;
  s.calls = get(st.calls);
  s.overloaded = get(st.overloaded);
  s.invalid = get(st.invalid);
  s.expired = get(st.expired);
  s.ignored = get(st.ignored);
  s.unsent = get(st.unsent);
  return s;
}

// -- remote_membership --------------------------------------------------------

struct remote_membership::state {
  /// One call waiting for its answer; guarded by `mtx`.
  struct pending_call {
    std::string seed_id;
    bool done = false;
    std::string body;
    caf::error failure;
    sys::condition_variable cv;
  };

  /// Outcome of asking one seed.
  struct attempt {
    caf::expected<MembershipAnswer> answer{MembershipAnswer{}};
    /// The transport took the frame, so the seed may have run the call.
    bool sent = false;
    /// Trying another seed is pointless (we are stopping, too many calls).
    bool final = false;
  };

  state(transport& n, remote_membership_config c)
      : net(n)
      , cfg(std::move(c))
      , watchers(std::make_shared<watcher_list>()) {
    // Different clients (and restarts) start at different ids, so that an
    // answer meant for a previous client is never taken for ours.
    next_id.store((sys::random_u64() >> 1) + 1);
  }

  static std::string seed_name(const peer_address& seed) {
    return "membership seed '" + seed.silo_id + "' at "
           + seed.address.to_string();
  }

  attempt ask(const peer_address& seed, const std::string& body,
              bool is_write) {
    attempt result;
    auto deadline = sys::now() + cfg.call_timeout;
    auto id = next_id.fetch_add(1, std::memory_order_relaxed);
    auto pc = std::make_shared<pending_call>();
    pc->seed_id = seed.silo_id;
    {
      std::lock_guard guard{mtx};
      if (stopping) {
        result.answer = make_error(errc::silo_stopped,
                                   "membership client is shutting down");
        result.final = true;
        return result;
      }
      if (pending.size() >= cfg.max_pending_calls) {
        result.answer = make_error(
            errc::overloaded,
            "membership client: " + std::to_string(cfg.max_pending_calls)
                + " calls are waiting for a seed already");
        result.final = true;
        return result;
      }
      pending.emplace(id, pc);
    }
    bump(calls);
    Frame f;
    auto* rpc = f.mutable_membership();
    rpc->set_request_id(id);
    rpc->set_is_answer(false);
    rpc->set_body(body);
    if (auto err = net.send(seed, f)) {
      {
        std::lock_guard guard{mtx};
        pending.erase(id);
      }
      auto code = code_of(err);
      result.final = code == errc::payload_too_large;
      result.answer = make_error(
          code, seed_name(seed) + ": cannot send: " + error_text(err));
      return result;
    }
    result.sent = true;
    std::unique_lock guard{mtx};
    pc->cv.wait_until(guard, deadline, [&] { return pc->done; });
    pending.erase(id);
    if (!pc->done) {
      guard.unlock();
      bump(timeouts);
      auto text = seed_name(seed) + " did not answer within "
                  + std::to_string(cfg.call_timeout.count()) + " ms";
      if (is_write)
        text += "; the outcome of the write is unknown, re-read to find out";
      result.answer = make_error(errc::timeout, std::move(text));
      return result;
    }
    if (pc->failure) {
      result.answer = std::move(pc->failure);
      result.final = true;
      return result;
    }
    auto body_in = std::move(pc->body);
    guard.unlock();
    bump(answers);
    MembershipAnswer a;
    if (!a.ParseFromString(body_in)) {
      result.answer
          = make_error(errc::malformed_message,
                       seed_name(seed) + " sent an undecodable answer");
      result.final = true;
      return result;
    }
    result.answer = std::move(a);
    return result;
  }

  /// Sends `call` to the seeds until one answers (see the class docs).
  caf::expected<MembershipAnswer> call(MembershipCall& c, bool is_write) {
    auto ms = std::clamp<int64_t>(cfg.call_timeout.count(), 1,
                                  std::numeric_limits<uint32_t>::max());
    c.set_timeout_ms(static_cast<uint32_t>(ms));
    auto body = c.SerializeAsString();
    auto n = cfg.seeds.size();
    auto first = preferred.load(std::memory_order_relaxed) % n;
    std::string failures;
    caf::error last;
    // Bounded: each seed at most once.
    for (size_t i = 0; i < n; ++i) {
      auto idx = (first + i) % n;
      auto& seed = cfg.seeds[idx];
      if (i > 0)
        bump(failovers);
      auto res = ask(seed, body, is_write);
      if (res.answer) {
        preferred.store(idx, std::memory_order_relaxed);
        return std::move(*res.answer);
      }
      if (res.final)
        return std::move(res.answer.error());
      if (res.sent && is_write) {
        // Unknown outcome: never run the write a second time elsewhere.
        preferred.store((idx + 1) % n, std::memory_order_relaxed);
        return std::move(res.answer.error());
      }
      if (!failures.empty())
        failures += "; ";
      failures += error_text(res.answer.error());
      last = std::move(res.answer.error());
    }
    if (n == 1)
      return last;
    return make_error(code_of(last),
                      "membership: no seed answered: " + failures);
  }

  /// Calls `c`, turns an error answer into an error and checks that the
  /// answer carries `expected` (or nothing, for `RESULT_NOT_SET`).
  caf::expected<MembershipAnswer>
  call_for(MembershipCall& c, bool is_write,
           MembershipAnswer::ResultCase expected) {
    auto a = call(c, is_write);
    if (!a)
      return a;
    if (a->error_code() != 0)
      return error_from_answer(*a);
    if (expected != MembershipAnswer::RESULT_NOT_SET
        && a->result_case() != expected)
      return make_error(errc::malformed_message,
                        std::string{"membership seed answered "}
                            + op_name(c.op_case())
                            + " with the wrong kind of result");
    return a;
  }

  caf::expected<membership_table> to_table(const MembershipAnswer& a) {
    membership_table t;
    t.version = a.table().version();
    t.rows.reserve(a.table().rows_size());
    for (auto& row : a.table().rows()) {
      auto e = from_proto(row);
      if (!e)
        return std::move(e.error());
      t.rows.push_back(std::move(*e));
    }
    return t;
  }

  caf::expected<write_result> to_write(const MembershipAnswer& a) {
    write_result r;
    if (!from_proto(a.write().status(), r.status))
      return make_error(errc::malformed_message,
                        "membership seed answered with unknown write status "
                            + std::to_string(a.write().status()));
    r.version = a.write().version();
    return r;
  }

  caf::expected<membership_versions> read_versions() {
    MembershipCall c;
    c.mutable_read_versions();
    auto a = call_for(c, false, MembershipAnswer::kVersions);
    if (!a)
      return std::move(a.error());
    return membership_versions{a->versions().table_version(),
                               a->versions().map_version()};
  }

  bool stopping_now() {
    std::lock_guard guard{poll_mtx};
    return poll_stop;
  }

  void poll_loop() {
    bool failing = false;
    // Ends when `poll_stop` is set; each iteration waits `poll_interval`.
    for (;;) {
      {
        std::unique_lock guard{poll_mtx};
        if (poll_cv.wait_for(guard, cfg.poll_interval,
                             [this] { return poll_stop; }))
          return;
      }
      if (watchers->empty())
        continue;
      auto v = read_versions();
      if (!v) {
        if (code_of(v.error()) == errc::silo_stopped && stopping_now())
          return;
        if (!failing)
          log(log_level::warning,
              "membership watch cannot poll the seed: " + describe(v.error()));
        failing = true;
        continue;
      }
      if (failing)
        log(log_level::info, "membership watch reaches the seed again");
      failing = false;
      if (v->table > seen_table) {
        seen_table = v->table;
        watchers->notify({membership_change_kind::table, v->table});
      }
      if (v->partition_map > seen_map) {
        seen_map = v->partition_map;
        watchers->notify(
            {membership_change_kind::partition_map, v->partition_map});
      }
    }
  }

  transport& net;
  const remote_membership_config cfg;
  std::shared_ptr<watcher_list> watchers;
  std::atomic<uint64_t> next_id{1};
  std::atomic<size_t> preferred{0};

  // Guards `pending` and `stopping`, and the pending calls.
  sys::mutex mtx;
  std::map<uint64_t, std::shared_ptr<pending_call>> pending;
  bool stopping = false;

  // Serializes `watch` while it starts the poller.
  sys::mutex watch_mtx;
  bool poller_started = false;
  // Guards `poll_stop`.
  sys::mutex poll_mtx;
  sys::condition_variable poll_cv;
  bool poll_stop = false;
  sys::thread poller;
  // Written before the poller starts, then by the poller only.
  uint64_t seen_table = 0;
  uint64_t seen_map = 0;

  std::atomic<uint64_t> calls{0};
  std::atomic<uint64_t> answers{0};
  std::atomic<uint64_t> late_answers{0};
  std::atomic<uint64_t> timeouts{0};
  std::atomic<uint64_t> failovers{0};
};

caf::expected<std::unique_ptr<remote_membership>>
remote_membership::open(transport& net, remote_membership_config cfg) {
  auto bad = [](std::string what) {
    return make_error(errc::invalid_config, "remote membership: " + what);
  };
  if (cfg.seeds.empty())
    return bad("the seed list is empty");
  for (auto& seed : cfg.seeds) {
    if (seed.silo_id.empty())
      return bad("a seed at " + seed.address.to_string() + " has no silo id");
    if (seed.address.host.empty() || seed.address.port == 0)
      return bad("seed '" + seed.silo_id + "' has no host or port ("
                 + seed.address.to_string() + ")");
  }
  if (cfg.call_timeout.count() <= 0)
    return bad("call_timeout must be positive");
  if (cfg.poll_interval.count() <= 0)
    return bad("poll_interval must be positive");
  if (cfg.max_pending_calls == 0)
    return bad("max_pending_calls must be positive");
  auto st = std::make_unique<state>(net, std::move(cfg));
  return std::unique_ptr<remote_membership>{
      new remote_membership(std::move(st))};
}

remote_membership::remote_membership(std::unique_ptr<state> st)
    : state_(std::move(st)) {
  // nop
}

remote_membership::~remote_membership() {
  auto& st = *state_;
  {
    std::lock_guard guard{st.poll_mtx};
    st.poll_stop = true;
  }
  st.poll_cv.notify_all();
  {
    std::lock_guard guard{st.mtx};
    st.stopping = true;
    for (auto& [id, pc] : st.pending) {
      if (!pc->done) {
        pc->done = true;
        pc->failure = make_error(errc::silo_stopped,
                                 "membership client is shutting down");
        pc->cv.notify_all();
      }
    }
  }
  if (st.poller.joinable())
    st.poller.join();
}

void remote_membership::on_frame(const peer_info& from,
                                 const MembershipRpc& rpc) {
  auto& st = *state_;
  if (!rpc.is_answer()) {
    bump(st.late_answers);
    return;
  }
  std::lock_guard guard{st.mtx};
  auto i = st.pending.find(rpc.request_id());
  if (i == st.pending.end() || i->second->done
      || i->second->seed_id != from.silo_id) {
    bump(st.late_answers);
    return;
  }
  auto& pc = *i->second;
  pc.body = rpc.body();
  pc.done = true;
  pc.cv.notify_one();
}

caf::expected<membership_table> remote_membership::read_all() {
  MembershipCall c;
  c.mutable_read_all();
  auto a = state_->call_for(c, false, MembershipAnswer::kTable);
  if (!a)
    return std::move(a.error());
  return state_->to_table(*a);
}

caf::expected<membership_table>
remote_membership::read(const std::string& silo_id) {
  MembershipCall c;
  c.mutable_read()->set_silo_id(silo_id);
  auto a = state_->call_for(c, false, MembershipAnswer::kTable);
  if (!a)
    return std::move(a.error());
  return state_->to_table(*a);
}

caf::expected<write_result>
remote_membership::insert(const membership_entry& entry,
                          uint64_t expected_table_version) {
  if (auto err = validate_entry(entry))
    return err;
  MembershipCall c;
  auto* x = c.mutable_insert();
  *x->mutable_entry() = to_proto(entry);
  x->set_expected_table_version(expected_table_version);
  auto a = state_->call_for(c, true, MembershipAnswer::kWrite);
  if (!a)
    return std::move(a.error());
  return state_->to_write(*a);
}

caf::expected<write_result>
remote_membership::update(const membership_entry& entry,
                          uint64_t expected_row_version,
                          uint64_t expected_table_version) {
  if (auto err = validate_entry(entry))
    return err;
  MembershipCall c;
  auto* x = c.mutable_update();
  *x->mutable_entry() = to_proto(entry);
  x->set_expected_row_version(expected_row_version);
  x->set_expected_table_version(expected_table_version);
  auto a = state_->call_for(c, true, MembershipAnswer::kWrite);
  if (!a)
    return std::move(a.error());
  return state_->to_write(*a);
}

caf::error remote_membership::update_i_am_alive(const std::string& silo_id,
                                                int64_t now_ms) {
  MembershipCall c;
  auto* x = c.mutable_update_i_am_alive();
  x->set_silo_id(silo_id);
  x->set_now_ms(now_ms);
  // Unconditional and idempotent: safe to try at the next seed.
  auto a = state_->call_for(c, false, MembershipAnswer::RESULT_NOT_SET);
  if (!a)
    return std::move(a.error());
  return caf::none;
}

caf::expected<size_t> remote_membership::delete_dead(int64_t older_than_ms) {
  MembershipCall c;
  c.mutable_delete_dead()->set_older_than_ms(older_than_ms);
  auto a = state_->call_for(c, true, MembershipAnswer::kCount);
  if (!a)
    return std::move(a.error());
  return static_cast<size_t>(a->count());
}

caf::expected<watch_token>
remote_membership::watch(membership_watcher watcher) {
  if (!watcher)
    return make_error(errc::invalid_argument,
                      "membership: watch needs a callback");
  auto& st = *state_;
  std::lock_guard guard{st.watch_mtx};
  if (!st.poller_started) {
    // Report only what changes from now on. When no seed answers, the first
    // successful poll reports the versions it finds.
    if (auto v = st.read_versions()) {
      st.seen_table = v->table;
      st.seen_map = v->partition_map;
    }
    auto token = st.watchers->add(std::move(watcher));
    {
      std::lock_guard sguard{st.mtx};
      if (st.stopping)
        return make_error(errc::silo_stopped,
                          "membership client is shutting down");
    }
    st.poller = sys::thread{"membership-poller",
                            [s = state_.get()] { s->poll_loop(); }};
    st.poller_started = true;
    return token;
  }
  return st.watchers->add(std::move(watcher));
}

caf::expected<partition_map> remote_membership::read_partition_map() {
  MembershipCall c;
  c.mutable_read_partition_map();
  auto a = state_->call_for(c, false, MembershipAnswer::kPartitionMap);
  if (!a)
    return std::move(a.error());
  return from_proto(a->partition_map());
}

caf::expected<write_result>
remote_membership::write_partition_map(const partition_map& map,
                                       uint64_t expected_version) {
  MembershipCall c;
  auto* x = c.mutable_write_partition_map();
  *x->mutable_map() = to_proto(map);
  x->set_expected_version(expected_version);
  auto a = state_->call_for(c, true, MembershipAnswer::kWrite);
  if (!a)
    return std::move(a.error());
  return state_->to_write(*a);
}

caf::expected<membership_versions> remote_membership::read_versions() {
  return state_->read_versions();
}

remote_membership_stats remote_membership::stats() const {
  auto& st = *state_;
  remote_membership_stats s;
  s.calls = get(st.calls);
  s.answers = get(st.answers);
  s.late_answers = get(st.late_answers);
  s.timeouts = get(st.timeouts);
  s.failovers = get(st.failovers);
  return s;
}

const remote_membership_config& remote_membership::config() const noexcept {
  return state_->cfg;
}

} // namespace granary::cluster

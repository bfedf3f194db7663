#include "sim/kernel.hpp"

#include <dlfcn.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <utility>

#include "runtime/assert.hpp"

namespace granary::sim {

namespace {

// Set while the kernel itself calls the OS, or code outside the simulated
// logic does (`sys::os_calls_allowed`), which the escape checks allow.
thread_local bool kernel_internal = false;
// Set only while the kernel starts a simulated thread's OS thread: no
// other code of a simulated thread may start an OS thread.
thread_local bool kernel_launching = false;

} // namespace

// Fails the run when a simulated thread calls `what` (a clock, a sleep, a
// thread or a socket of the OS): that code escapes the simulation, and the
// run would no longer replay from its seed.
void check_escape(const char* what, bool thread_start = false) {
  if (thread_start ? kernel_launching : kernel_internal)
    return;
  auto* k = dynamic_cast<kernel*>(sys::current_kernel());
  if (k == nullptr)
    return;
  kernel_internal = true; // fail() must not trip over its own calls.
  k->fail("determinism",
          std::string{"a simulated thread called "} + what
              + ", which escapes the simulation (use runtime/sys.hpp)");
}

namespace {

using namespace std::chrono_literals;

// Virtual time points start far from zero, so that code subtracting
// durations from `now()` never goes below the clock's epoch.
constexpr auto time_base = std::chrono::hours{24 * 365};

// What a blocked thread waits for, besides its `blocked_on` object.
enum class thread_state { runnable, blocked, done };

// The marker `blocked_on` points to while a thread sleeps.
const char sleep_marker = 0;

// The marker of a thread waiting for a `ready` predicate.
const char ready_marker = 0;

// The marker of a thread waiting until every other thread waits.
const char idle_marker = 0;

uint64_t mix(uint64_t h, uint64_t v) {
  // FNV-1a over the 8 bytes of `v`.
  for (int i = 0; i < 8; ++i) {
    h ^= (v >> (i * 8)) & 0xff;
    h *= 0x100000001b3ULL;
  }
  return h;
}

} // namespace

struct sim_thread {
  uint64_t id = 0;
  process_id process = 0;
  std::string name;
  // What the thread waits for, for reports.
  const char* waits_for = "";
  std::function<void()> fn;
  thread_state state = thread_state::runnable;
  const void* blocked_on = nullptr;
  std::optional<std::chrono::nanoseconds> deadline;
  const std::function<bool()>* ready = nullptr;
  bool timed_out = false;
  // The mutexes this thread holds (a crash waits while one is shared).
  std::vector<sys::mutex*> held;
  // The baton: the thread runs while `running == this`.
  std::condition_variable cv;
};

struct sim_process {
  std::string name;
  bool alive = true;
  bool crash_pending = false;
  std::chrono::nanoseconds paused_until{0};
  std::chrono::milliseconds skew{0};
};

struct trace_event {
  uint64_t step = 0;
  std::chrono::nanoseconds at{0};
  uint64_t thread = 0;
  std::string text;
};

struct kernel::state {
  explicit state(kernel_config c)
      : cfg(c)
      , rng(c.seed) {}

  kernel_config cfg;
  std::mt19937_64 rng;
  std::mutex big;
  std::condition_variable ended_cv;
  bool started = false;
  bool ended = false;
  run_result result;

  // Every thread, live and done, by id; `live` in id order.
  std::map<uint64_t, std::unique_ptr<sim_thread>> threads;
  std::vector<sim_thread*> live;
  sim_thread* running = nullptr;
  uint64_t next_thread = 1;
  std::map<process_id, sim_process> processes;
  process_id next_process = world;

  std::chrono::nanoseconds vnow{0};
  uint64_t steps = 0;
  uint64_t hash = 0xcbf29ce484222325ULL;
  std::deque<trace_event> tail;

  double uniform() {
    return std::uniform_real_distribution<double>{0, 1}(rng);
  }

  void record(uint64_t thread, std::string text) {
    hash = mix(mix(hash, thread), static_cast<uint64_t>(vnow.count()));
    for (auto c : text)
      hash = mix(hash, static_cast<unsigned char>(c));
    if (cfg.trace_tail == 0)
      return;
    if (tail.size() == cfg.trace_tail)
      tail.pop_front();
    tail.push_back({steps, vnow, thread, std::move(text)});
  }

  std::string describe(const trace_event& e) const {
    char when[32];
    std::snprintf(when, sizeof(when), "%.6f",
                  std::chrono::duration<double>(e.at).count());
    std::string who = "-";
    if (auto i = threads.find(e.thread); i != threads.end()) {
      auto p = processes.find(i->second->process);
      who = (p != processes.end() ? p->second.name : std::string{"?"}) + "/"
            + i->second->name;
    }
    return "t=" + std::string{when} + "s step " + std::to_string(e.step) + " "
           + who + (e.text.empty() ? std::string{} : ": " + e.text);
  }

  // Ends the run (first reason wins) and wakes `run`'s caller.
  void end(bool ok, std::string invariant, std::string detail) {
    if (ended)
      return;
    ended = true;
    result.ok = ok;
    result.invariant = std::move(invariant);
    result.detail = std::move(detail);
    result.elapsed = vnow;
    result.steps = steps;
    result.trace_hash = hash;
    for (auto& e : tail)
      result.tail.push_back(describe(e));
    for (auto* t : live) {
      if (t->state == thread_state::done)
        continue;
      ++result.abandoned_threads;
      auto& p = processes.at(t->process);
      std::string line = p.name + "/" + t->name + ": ";
      if (!p.alive)
        line += "crashed, ";
      if (t->state == thread_state::runnable) {
        line += "runnable";
      } else {
        line += std::string{"waits for "} + t->waits_for;
        if (t->deadline) {
          char when[32];
          std::snprintf(when, sizeof(when), "%.6f",
                        std::chrono::duration<double>(*t->deadline).count());
          line += std::string{" until t="} + when + "s";
        }
      }
      result.threads.push_back(std::move(line));
    }
    running = nullptr;
    ended_cv.notify_all();
  }

  bool schedulable(const sim_thread& t) const {
    auto& p = processes.at(t.process);
    if (!p.alive || p.paused_until > vnow)
      return false;
    if (t.state == thread_state::runnable)
      return true;
    return t.state == thread_state::blocked && t.ready != nullptr
           && (*t.ready)();
  }

  void wake(sim_thread& t, bool timed_out) {
    t.state = thread_state::runnable;
    t.blocked_on = nullptr;
    t.deadline.reset();
    t.timed_out = timed_out;
  }

  // A new thread of process `p`, runnable, not yet started on the OS.
  sim_thread* add_thread(process_id p, std::string name,
                         std::function<void()> fn) {
    auto t = std::make_unique<sim_thread>();
    auto* raw = t.get();
    raw->id = next_thread++;
    raw->process = p;
    raw->name = std::move(name);
    raw->fn = std::move(fn);
    threads.emplace(raw->id, std::move(t));
    live.push_back(raw);
    return raw;
  }

  // A thread picked to run while waiting for its `ready` predicate stops
  // waiting.
  void make_runnable(sim_thread& t) {
    if (t.state == thread_state::blocked)
      wake(t, false);
  }

  void wake_waiters_of(const void* object) {
    for (auto* t : live)
      if (t->state == thread_state::blocked && t->blocked_on == object)
        wake(*t, false);
  }

  // Wakes the threads whose deadline has come.
  void wake_due() {
    for (auto* t : live)
      if (t->state == thread_state::blocked && t->deadline
          && *t->deadline <= vnow)
        wake(*t, true);
  }

  // Crashes `p` now (its threads hold no mutex).
  void crash_now(process_id p) {
    auto& proc = processes.at(p);
    proc.alive = false;
    proc.crash_pending = false;
    record(0, "process '" + proc.name + "' crashed");
  }

  // A process crashes only while none of its threads holds a mutex: a
  // dead holder could block the living for good (other processes reach
  // into a dead one's objects through shared devices and callbacks).
  bool can_crash(process_id p) const {
    for (auto* t : live)
      if (t->process == p && t->state != thread_state::done && !t->held.empty())
        return false;
    return true;
  }

  void take(sim_thread* self, sys::mutex& m) {
    m.sim_holder = self->id;
    self->held.push_back(&m);
  }

  void release(sim_thread* self, sys::mutex& m) {
    GRANARY_ASSERT(m.sim_holder == self->id,
                   "a thread released a mutex it does not hold");
    m.sim_holder = 0;
    std::erase(self->held, &m);
    wake_waiters_of(&m);
  }

  void drop_done() {
    std::erase_if(live,
                  [](sim_thread* t) { return t->state == thread_state::done; });
  }

  // The next thread to run, advancing virtual time when every thread
  // waits; null when the run ended.
  sim_thread* pick(sim_thread* self, bool self_may_stay) {
    for (;;) {
      if (ended)
        return nullptr;
      ++steps;
      vnow += cfg.step_cost;
      if (steps > cfg.max_steps) {
        end(false, "livelock",
            "more than " + std::to_string(cfg.max_steps)
                + " scheduling decisions");
        return nullptr;
      }
      if (vnow > cfg.max_time) {
        end(false, "time limit",
            "the virtual time passed the run's limit of "
                + std::to_string(
                    std::chrono::duration_cast<std::chrono::seconds>(
                        cfg.max_time)
                        .count())
                + " s");
        return nullptr;
      }
      for (auto& [id, p] : processes)
        if (p.crash_pending && can_crash(id))
          crash_now(id);
      wake_due();
      std::vector<sim_thread*> ready;
      for (auto* t : live)
        if (schedulable(*t))
          ready.push_back(t);
      if (!ready.empty()) {
        if (self_may_stay && self && schedulable(*self)
            && uniform() >= cfg.switch_rate) {
          make_runnable(*self);
          return self;
        }
        auto* next = ready[std::uniform_int_distribution<size_t>{
            0, ready.size() - 1}(rng)];
        make_runnable(*next);
        record(next->id, {});
        return next;
      }
      // Every other thread waits: a thread waiting for exactly that goes
      // on before the time moves (the lowest id, for determinism).
      for (auto* t : live)
        if (t->state == thread_state::blocked && t->blocked_on == &idle_marker
            && processes.at(t->process).alive
            && processes.at(t->process).paused_until <= vnow) {
          wake(*t, false);
          record(t->id, {});
          return t;
        }
      // Every thread waits: jump to the earliest deadline or pause end.
      std::optional<std::chrono::nanoseconds> next_time;
      auto consider = [&](std::chrono::nanoseconds t) {
        if (!next_time || t < *next_time)
          next_time = t;
      };
      for (auto* t : live) {
        if (t->state == thread_state::done)
          continue;
        auto& p = processes.at(t->process);
        if (!p.alive)
          continue;
        if (p.paused_until > vnow
            && (t->state == thread_state::runnable || t->ready))
          consider(p.paused_until);
        if (t->state == thread_state::blocked && t->deadline)
          consider(std::max(*t->deadline, p.paused_until));
      }
      if (!next_time) {
        std::string waiting;
        for (auto* t : live)
          if (t->state == thread_state::blocked
              && processes.at(t->process).alive)
            waiting += (waiting.empty() ? "" : ", ")
                       + processes.at(t->process).name + "/" + t->name;
        end(false, "deadlock",
            "every live thread waits without a deadline: " + waiting);
        return nullptr;
      }
      vnow = std::max(vnow, *next_time);
    }
  }

  // Hands the baton to the next thread and waits for it to come back.
  // `self` has set its own state; `self_may_stay` allows keeping it.
  void reschedule(std::unique_lock<std::mutex>& lk, sim_thread* self,
                  bool self_may_stay) {
    auto* next = pick(self, self_may_stay);
    if (next && next != self) {
      running = next;
      next->cv.notify_one();
    }
    if (self->state == thread_state::done)
      return;
    // Parks for good when the run ended or the process crashed.
    self->cv.wait(lk, [&] { return running == self; });
  }

  // A scheduling point of a thread that could go on.
  void preempt_point(std::unique_lock<std::mutex>& lk, sim_thread* self) {
    reschedule(lk, self, true);
  }

  // A deadline in virtual time; none when it lies beyond the run's limit
  // (a wait "for ever").
  std::optional<std::chrono::nanoseconds>
  to_virtual(std::optional<sys::time_point> t) const {
    if (!t)
      return std::nullopt;
    auto since = std::chrono::duration_cast<std::chrono::nanoseconds>(
        t->time_since_epoch());
    auto base = std::chrono::duration_cast<std::chrono::nanoseconds>(time_base);
    if (since - base > cfg.max_time)
      return std::nullopt;
    return since - base;
  }

  sim_thread* me() const {
    GRANARY_ASSERT(running != nullptr, "a kernel call with no running thread");
    return running;
  }
};

kernel::kernel(kernel_config cfg)
    : st_(std::make_shared<state>(cfg)) {
  st_->processes[world] = sim_process{"world"};
  st_->next_process = world + 1;
}

kernel::~kernel() = default;

namespace {

// The OS thread of simulated thread `t`: waits for the baton, runs the
// function, and hands the baton on. The first thread's return ends the run.
void launch(std::shared_ptr<kernel::state> keep, kernel* k, sim_thread* t) {
  struct allow {
    bool previous = std::exchange(kernel_launching, true);
    ~allow() {
      kernel_launching = previous;
    }
  } scope;
  std::thread{[keep = std::move(keep), k, t] {
    auto& s = *keep;
    sys::set_current_kernel(k);
    {
      std::unique_lock lk{s.big};
      t->cv.wait(lk, [&] { return s.running == t; });
    }
    std::string failure;
    try {
      t->fn();
    } catch (const std::exception& e) {
      failure = e.what();
    } catch (...) {
      failure = "an exception of unknown type";
    }
    std::unique_lock lk{s.big};
    t->fn = nullptr;
    t->state = thread_state::done;
    s.wake_waiters_of(t);
    s.drop_done();
    if (!failure.empty())
      s.end(false, "uncaught exception",
            "thread '" + t->name + "' threw: " + failure);
    else if (t->id == 1)
      s.end(true, {}, {});
    else
      s.reschedule(lk, t, false);
  }}.detach();
}

} // namespace

uint64_t kernel::spawn(process_id p, std::string name,
                       std::function<void()> fn) {
  auto& s = *st_;
  std::unique_lock lk{s.big};
  GRANARY_ASSERT(s.processes.contains(p), "spawn into an unknown process");
  if (s.live.size() >= s.cfg.max_threads) {
    lk.unlock();
    fail("thread limit", "more than " + std::to_string(s.cfg.max_threads)
                             + " threads alive at once");
  }
  auto* raw = s.add_thread(p, std::move(name), std::move(fn));
  s.record(raw->id, "start " + raw->name);
  launch(st_, this, raw);
  return raw->id;
}

run_result kernel::run(std::function<void()> main) {
  auto& s = *st_;
  {
    std::lock_guard guard{s.big};
    GRANARY_ASSERT(!s.started, "kernel::run called twice");
    s.started = true;
  }
  // The first thread is started from outside: no thread runs yet.
  std::unique_lock lk{s.big};
  auto* raw = s.add_thread(world, "main", std::move(main));
  launch(st_, this, raw);
  s.running = raw;
  raw->cv.notify_one();
  s.ended_cv.wait(lk, [&] { return s.ended; });
  return s.result;
}

process_id kernel::new_process(std::string name) {
  auto& s = *st_;
  std::lock_guard guard{s.big};
  auto id = s.next_process++;
  s.processes[id] = sim_process{std::move(name)};
  return id;
}

process_id kernel::current_process() const {
  auto& s = *st_;
  std::lock_guard guard{s.big};
  return s.me()->process;
}

void kernel::crash(process_id p) {
  auto& s = *st_;
  std::unique_lock lk{s.big};
  GRANARY_ASSERT(p != world, "the world process cannot crash");
  auto& proc = s.processes.at(p);
  if (!proc.alive)
    return;
  auto* self = s.me();
  if (s.can_crash(p))
    s.crash_now(p);
  else
    proc.crash_pending = true;
  // Bounded: the holders of mutexes release them as they run.
  while (proc.alive && self->process != p) {
    self->state = thread_state::runnable;
    s.preempt_point(lk, self);
  }
  // A thread of the crashed process parks at its next scheduling point.
  if (self->process == p)
    s.preempt_point(lk, self);
}

void kernel::pause(process_id p, std::chrono::nanoseconds d) {
  auto& s = *st_;
  std::unique_lock lk{s.big};
  GRANARY_ASSERT(p != world, "the world process cannot pause");
  auto& proc = s.processes.at(p);
  proc.paused_until = std::max(proc.paused_until, s.vnow + d);
  s.record(0, "process '" + proc.name + "' paused");
  s.preempt_point(lk, s.me());
}

bool kernel::allow_os_calls(bool allowed) {
  return std::exchange(kernel_internal, allowed);
}

void kernel::skew(process_id p, std::chrono::milliseconds ahead) {
  auto& s = *st_;
  std::lock_guard guard{s.big};
  s.processes.at(p).skew = ahead;
}

int64_t kernel::wall_ms() {
  auto& s = *st_;
  std::lock_guard guard{s.big};
  auto& p = s.processes.at(s.me()->process);
  return s.cfg.wall_start_ms
         + std::chrono::duration_cast<std::chrono::milliseconds>(s.vnow).count()
         + p.skew.count();
}

bool kernel::alive(process_id p) const {
  auto& s = *st_;
  std::lock_guard guard{s.big};
  auto i = s.processes.find(p);
  return i != s.processes.end() && i->second.alive;
}

bool kernel::wait_until_ready(const std::function<bool()>& ready,
                              std::optional<sys::time_point> deadline) {
  auto& s = *st_;
  std::unique_lock lk{s.big};
  auto* self = s.me();
  if (ready())
    return true;
  self->state = thread_state::blocked;
  self->blocked_on = &ready_marker;
  self->waits_for = "a condition it polls";
  self->ready = &ready;
  self->deadline = s.to_virtual(deadline);
  s.reschedule(lk, self, false);
  self->ready = nullptr;
  return !self->timed_out;
}

void kernel::wait_until_idle() {
  auto& s = *st_;
  std::unique_lock lk{s.big};
  auto* self = s.me();
  self->state = thread_state::blocked;
  self->blocked_on = &idle_marker;
  self->waits_for = "every other thread to wait";
  self->deadline.reset();
  s.reschedule(lk, self, false);
}

void kernel::trace(std::string event) {
  auto& s = *st_;
  std::lock_guard guard{s.big};
  s.record(s.me()->id, std::move(event));
}

void kernel::fail(std::string invariant, std::string detail) {
  auto& s = *st_;
  std::unique_lock lk{s.big};
  auto* self = s.me();
  s.record(self->id, "invariant failed: " + invariant);
  s.end(false, std::move(invariant), std::move(detail));
  self->cv.wait(lk, [] { return false; });
  std::terminate(); // Unreachable: the wait never ends.
}

std::chrono::nanoseconds kernel::elapsed() const {
  auto& s = *st_;
  std::lock_guard guard{s.big};
  return s.vnow;
}

uint64_t kernel::steps() const {
  auto& s = *st_;
  std::lock_guard guard{s.big};
  return s.steps;
}

void kernel::lock(sys::mutex& m) {
  auto& s = *st_;
  std::unique_lock lk{s.big};
  auto* self = s.me();
  s.preempt_point(lk, self);
  // Bounded by the holder: it runs until it unlocks.
  while (m.sim_holder != 0) {
    GRANARY_ASSERT(m.sim_holder != self->id, "a thread locked its own mutex");
    self->state = thread_state::blocked;
    self->blocked_on = &m;
    self->waits_for = "a mutex";
    s.reschedule(lk, self, false);
  }
  s.take(self, m);
}

bool kernel::try_lock(sys::mutex& m) {
  auto& s = *st_;
  std::unique_lock lk{s.big};
  auto* self = s.me();
  s.preempt_point(lk, self);
  if (m.sim_holder != 0)
    return false;
  s.take(self, m);
  return true;
}

void kernel::unlock(sys::mutex& m) {
  auto& s = *st_;
  std::unique_lock lk{s.big};
  auto* self = s.me();
  s.release(self, m);
  s.preempt_point(lk, self);
}

bool kernel::wait(sys::condition_variable& cv, sys::mutex& m,
                  std::optional<sys::time_point> deadline) {
  auto& s = *st_;
  sim_thread* self = nullptr;
  {
    std::unique_lock lk{s.big};
    self = s.me();
    s.release(self, m);
    self->state = thread_state::blocked;
    self->blocked_on = &cv;
    self->waits_for = "a condition variable";
    self->deadline = s.to_virtual(deadline);
    s.reschedule(lk, self, false);
  }
  auto woken = !self->timed_out;
  lock(m);
  return woken;
}

void kernel::notify(sys::condition_variable& cv, bool all) {
  auto& s = *st_;
  std::unique_lock lk{s.big};
  auto* self = s.me();
  std::vector<sim_thread*> waiters;
  for (auto* t : s.live)
    if (t->state == thread_state::blocked && t->blocked_on == &cv)
      waiters.push_back(t);
  if (!waiters.empty()) {
    if (all)
      for (auto* t : waiters)
        s.wake(*t, false);
    else
      s.wake(*waiters[std::uniform_int_distribution<size_t>{0, waiters.size()
                                                                   - 1}(s.rng)],
             false);
  }
  s.preempt_point(lk, self);
}

sys::time_point kernel::now() {
  auto& s = *st_;
  std::lock_guard guard{s.big};
  return sys::time_point{std::chrono::duration_cast<sys::time_point::duration>(
      time_base + s.vnow)};
}

void kernel::sleep_until(sys::time_point t) {
  auto& s = *st_;
  std::unique_lock lk{s.big};
  auto* self = s.me();
  self->state = thread_state::blocked;
  self->blocked_on = &sleep_marker;
  self->waits_for = "the time (sleeps)";
  self->deadline = s.to_virtual(t);
  s.reschedule(lk, self, false);
}

void kernel::yield() {
  auto& s = *st_;
  std::unique_lock lk{s.big};
  s.preempt_point(lk, s.me());
}

uint64_t kernel::start(std::string name, std::function<void()> fn) {
  return spawn(current_process(), std::move(name), std::move(fn));
}

void kernel::join(uint64_t id) {
  auto& s = *st_;
  std::unique_lock lk{s.big};
  auto* self = s.me();
  auto i = s.threads.find(id);
  GRANARY_ASSERT(i != s.threads.end(), "join of an unknown thread");
  auto* target = i->second.get();
  GRANARY_ASSERT(target != self, "a thread joined itself");
  // Bounded by the target's run; a crashed target never finishes, and the
  // joiner waits with it (as a process waits on a hung child).
  while (target->state != thread_state::done) {
    self->state = thread_state::blocked;
    self->blocked_on = target;
    self->waits_for = "another thread to finish";
    s.reschedule(lk, self, false);
  }
}

uint64_t kernel::random() {
  auto& s = *st_;
  std::lock_guard guard{s.big};
  return s.rng();
}

} // namespace granary::sim

// The OS calls a simulated thread must not make (see check_escape). The
// executable's definitions take precedence over the C library's, which
// they call once the check passed.
extern "C" {

int clock_gettime(clockid_t clk, struct timespec* ts) {
  using fn = int (*)(clockid_t, struct timespec*);
  static auto real = reinterpret_cast<fn>(dlsym(RTLD_NEXT, "clock_gettime"));
  granary::sim::check_escape("clock_gettime (a clock of the OS)");
  return real(clk, ts);
}

int nanosleep(const struct timespec* req, struct timespec* rem) {
  using fn = int (*)(const struct timespec*, struct timespec*);
  static auto real = reinterpret_cast<fn>(dlsym(RTLD_NEXT, "nanosleep"));
  granary::sim::check_escape("nanosleep (a sleep of the OS)");
  return real(req, rem);
}

int clock_nanosleep(clockid_t clk, int flags, const struct timespec* req,
                    struct timespec* rem) {
  using fn = int (*)(clockid_t, int, const struct timespec*, struct timespec*);
  static auto real = reinterpret_cast<fn>(dlsym(RTLD_NEXT, "clock_nanosleep"));
  granary::sim::check_escape("clock_nanosleep (a sleep of the OS)");
  return real(clk, flags, req, rem);
}

int pthread_create(pthread_t* thread, const pthread_attr_t* attr,
                   void* (*start)(void*), void* arg) {
  using fn
      = int (*)(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);
  static auto real = reinterpret_cast<fn>(dlsym(RTLD_NEXT, "pthread_create"));
  granary::sim::check_escape("pthread_create (a thread of the OS)", true);
  return real(thread, attr, start, arg);
}

int socket(int domain, int type, int protocol) {
  using fn = int (*)(int, int, int);
  static auto real = reinterpret_cast<fn>(dlsym(RTLD_NEXT, "socket"));
  granary::sim::check_escape("socket (the OS network)");
  return real(domain, type, protocol);
}

} // extern "C"

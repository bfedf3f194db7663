#include "runtime/sys.hpp"

#include <random>

#include "runtime/assert.hpp"

namespace granary::sys {

namespace {

thread_local kernel* this_kernel = nullptr;

} // namespace

kernel::~kernel() = default;

kernel* current_kernel() noexcept {
  return this_kernel;
}

void set_current_kernel(kernel* k) noexcept {
  this_kernel = k;
}

os_calls_allowed::os_calls_allowed() {
  if (auto* k = this_kernel)
    previous_ = k->allow_os_calls(true);
}

os_calls_allowed::~os_calls_allowed() {
  if (auto* k = this_kernel)
    k->allow_os_calls(previous_);
}

void mutex::lock() {
  if (auto* k = this_kernel)
    return k->lock(*this);
  native_.lock();
}

bool mutex::try_lock() {
  if (auto* k = this_kernel)
    return k->try_lock(*this);
  return native_.try_lock();
}

void mutex::unlock() {
  if (auto* k = this_kernel)
    return k->unlock(*this);
  native_.unlock();
}

void condition_variable::notify_one() {
  if (auto* k = this_kernel)
    return k->notify(*this, false);
  native_.notify_one();
}

void condition_variable::notify_all() {
  if (auto* k = this_kernel)
    return k->notify(*this, true);
  native_.notify_all();
}

void condition_variable::wait(lock_type& lock) {
  GRANARY_ASSERT(lock.owns_lock(), "condition_variable::wait without the lock");
  if (auto* k = this_kernel) {
    k->wait(*this, *lock.mutex(), std::nullopt);
    return;
  }
  std::unique_lock<std::mutex> inner{lock.mutex()->native(), std::adopt_lock};
  native_.wait(inner);
  inner.release();
}

std::cv_status condition_variable::wait_until(lock_type& lock,
                                              time_point deadline) {
  GRANARY_ASSERT(lock.owns_lock(),
                 "condition_variable::wait_until without the lock");
  if (auto* k = this_kernel)
    return k->wait(*this, *lock.mutex(), deadline) ? std::cv_status::no_timeout
                                                   : std::cv_status::timeout;
  std::unique_lock<std::mutex> inner{lock.mutex()->native(), std::adopt_lock};
  auto status = native_.wait_until(inner, deadline);
  inner.release();
  return status;
}

time_point now() {
  if (auto* k = this_kernel)
    return k->now();
  return std::chrono::steady_clock::now();
}

void sleep_for(std::chrono::nanoseconds d) {
  if (auto* k = this_kernel) {
    auto t = k->now();
    return k->sleep_until(d > time_point::max() - t ? time_point::max()
                                                    : t + d);
  }
  std::this_thread::sleep_for(d);
}

void sleep_until(time_point t) {
  if (auto* k = this_kernel)
    return k->sleep_until(t);
  std::this_thread::sleep_until(t);
}

void yield() {
  if (auto* k = this_kernel)
    k->yield();
}

bool wait_until_ready(const std::function<bool()>& ready,
                      std::optional<time_point> deadline) {
  if (auto* k = this_kernel)
    return k->wait_until_ready(ready, deadline);
  // Bounded by the deadline (or by `ready`, which the caller's other
  // threads make true).
  while (!ready()) {
    if (deadline && std::chrono::steady_clock::now() >= *deadline)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds{1});
  }
  return true;
}

int64_t wall_ms() {
  if (auto* k = this_kernel)
    return k->wall_ms();
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

uint64_t random_u64() {
  if (auto* k = this_kernel)
    return k->random();
  thread_local std::mt19937_64 rng{[] {
    std::random_device rd;
    return (uint64_t{rd()} << 32) ^ rd();
  }()};
  return rng();
}

thread::thread(std::string name, std::function<void()> fn) {
  if (auto* k = this_kernel) {
    kernel_ = k;
    sim_id_ = k->start(std::move(name), std::move(fn));
    return;
  }
  native_ = std::thread{std::move(fn)};
}

thread::thread(thread&& other) noexcept
    : native_(std::move(other.native_))
    , kernel_(other.kernel_)
    , sim_id_(other.sim_id_) {
  other.kernel_ = nullptr;
  other.sim_id_ = 0;
}

thread& thread::operator=(thread&& other) noexcept {
  GRANARY_ASSERT(!joinable(), "assigning to a joinable sys::thread");
  native_ = std::move(other.native_);
  kernel_ = other.kernel_;
  sim_id_ = other.sim_id_;
  other.kernel_ = nullptr;
  other.sim_id_ = 0;
  return *this;
}

thread::~thread() {
  GRANARY_ASSERT(!joinable(), "a joinable sys::thread was destroyed");
}

bool thread::joinable() const noexcept {
  return sim_id_ != 0 || native_.joinable();
}

void thread::join() {
  if (sim_id_ != 0) {
    GRANARY_ASSERT(kernel_ == this_kernel,
                   "a simulated thread joined from outside its simulation");
    kernel_->join(sim_id_);
    sim_id_ = 0;
    kernel_ = nullptr;
    return;
  }
  native_.join();
}

} // namespace granary::sys

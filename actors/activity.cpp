#include "actors/activity.hpp"

#include "runtime/log.hpp"
#include "runtime/silo.hpp"
#include "workflow.pb.h"

namespace granary {

activity_pool::activity_pool(size_t threads, size_t max_queue)
    : max_queue_(max_queue == 0 ? 1 : max_queue) {
  for (size_t i = 0; i < (threads == 0 ? 1 : threads); ++i)
    threads_.emplace_back([this] { work(); });
}

activity_pool::~activity_pool() {
  stop();
}

void activity_pool::attach(silo& s) {
  std::lock_guard guard{mtx_};
  silo_ = &s;
}

caf::error activity_pool::submit(job j, const std::string& input_type) {
  auto i = activities_.find(j.name);
  if (i == activities_.end())
    return make_error(errc::invalid_argument,
                      "activity '" + j.name + "' is not registered");
  if (i->second.input_type != input_type)
    return make_error(errc::invalid_argument, "activity '" + j.name + "' takes "
                                                  + i->second.input_type
                                                  + ", not " + input_type);
  {
    std::lock_guard guard{mtx_};
    if (stopping_)
      return make_error(errc::silo_stopped, "the activity pool is stopped");
    if (queue_.size() >= max_queue_)
      return make_error(errc::overloaded,
                        "activity queue holds " + std::to_string(max_queue_)
                            + " attempts; retry after 100 ms");
    queue_.push_back(std::move(j));
  }
  cv_.notify_one();
  return caf::none;
}

void activity_pool::stop() {
  {
    std::lock_guard guard{mtx_};
    if (stopping_ && threads_.empty())
      return;
    stopping_ = true;
    queue_.clear();
  }
  cv_.notify_all();
  for (auto& t : threads_)
    if (t.joinable())
      t.join();
  threads_.clear();
}

void activity_pool::work() {
  for (;;) {
    job j;
    {
      std::unique_lock guard{mtx_};
      cv_.wait(guard, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_)
        return;
      j = std::move(queue_.front());
      queue_.pop_front();
    }
    // Runs after the first keep the key unique: "id:run.seq".
    auto key
        = j.workflow.key + ":"
          + (j.run == 0 ? std::to_string(j.seq)
                        : std::to_string(j.run) + "." + std::to_string(j.seq));
    activity_context ctx{j.workflow.key, j.seq, j.attempt, std::move(key)};
    wire::ActivityResult result;
    result.set_seq(j.seq);
    result.set_attempt(j.attempt);
    result.set_run(j.run);
    caf::error err;
    try {
      auto& run = activities_.at(j.name).run;
      err = run(ctx, j.input, *result.mutable_result(),
                *result.mutable_result_type());
    } catch (const std::exception& e) {
      err = make_error(errc::handler_failed,
                       "activity '" + j.name + "' threw: " + e.what());
    }
    if (err) {
      result.clear_result();
      result.clear_result_type();
      result.set_error_code(static_cast<uint32_t>(code_of(err)));
      result.set_error(describe(err));
    }
    // A result that is not delivered (pool stopping, silo overloaded) is
    // not lost work: the workflow retries the attempt after its
    // start_to_close timeout.
    auto msg_id = "act:" + std::to_string(j.run) + ":" + std::to_string(j.seq)
                  + ":" + std::to_string(j.attempt);
    std::lock_guard guard{mtx_};
    if (stopping_ || !silo_) {
      log(log_level::warning, "activity '" + j.name + "' result dropped: "
                                  + (stopping_ ? "the pool is stopping"
                                               : "the pool is not attached"));
      continue;
    }
    silo_->send_async(j.workflow, result, std::move(msg_id),
                      [name = j.name](const caf::error& err) {
                        if (err)
                          log(log_level::warning,
                              "activity '" + name
                                  + "' result not delivered: " + describe(err));
                      });
  }
}

} // namespace granary

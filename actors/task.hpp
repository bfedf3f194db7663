#pragma once

#include <coroutine>
#include <exception>
#include <optional>
#include <string>
#include <utility>

#include <caf/expected.hpp>

#include "runtime/error.hpp"

namespace granary {

/// A lazily started coroutine that produces a `caf::expected<T>`. Workflows
/// are written as `task<Output> run(workflow_context&, const Input&)` and
/// may `co_await` other tasks. A task has exactly one awaiter.
template <class T>
class task {
public:
  struct promise_type {
    std::optional<caf::expected<T>> result;
    std::coroutine_handle<> continuation;

    task get_return_object() {
      return task{std::coroutine_handle<promise_type>::from_promise(*this)};
    }

    std::suspend_always initial_suspend() noexcept {
      return {};
    }

    struct final_awaiter {
      bool await_ready() noexcept {
        return false;
      }

      std::coroutine_handle<>
      await_suspend(std::coroutine_handle<promise_type> h) noexcept {
        // Symmetric transfer to the awaiting coroutine, if any; a top-level
        // task stays suspended at its end so its owner can read the result.
        if (auto next = h.promise().continuation)
          return next;
        return std::noop_coroutine();
      }

      void await_resume() noexcept {}
    };

    final_awaiter final_suspend() noexcept {
      return {};
    }

    void return_value(caf::expected<T> value) {
      result.emplace(std::move(value));
    }

    void unhandled_exception() {
      try {
        throw;
      } catch (const std::exception& e) {
        result.emplace(
            make_error(errc::handler_failed,
                       std::string{"workflow code threw: "} + e.what()));
      } catch (...) {
        result.emplace(make_error(errc::handler_failed,
                                  "workflow code threw a non-exception"));
      }
    }
  };

  using handle_type = std::coroutine_handle<promise_type>;

  task() = default;

  explicit task(handle_type h)
      : h_(h) {}

  task(task&& other) noexcept
      : h_(std::exchange(other.h_, {})) {}

  task& operator=(task&& other) noexcept {
    if (this != &other) {
      destroy();
      h_ = std::exchange(other.h_, {});
    }
    return *this;
  }

  task(const task&) = delete;
  task& operator=(const task&) = delete;

  ~task() {
    destroy();
  }

  /// True once the coroutine ran to its end.
  bool done() const noexcept {
    return h_ && h_.done();
  }

  /// Starts or continues a top-level task (one nobody awaits).
  void resume() {
    if (h_ && !h_.done())
      h_.resume();
  }

  /// The result of a finished task.
  caf::expected<T>& result() {
    return *h_.promise().result;
  }

  /// Awaiting a task starts it and resumes the awaiter when it finishes.
  auto operator co_await() && noexcept {
    struct awaiter {
      handle_type h;

      bool await_ready() noexcept {
        return !h || h.done();
      }

      std::coroutine_handle<> await_suspend(std::coroutine_handle<> outer) {
        h.promise().continuation = outer;
        return h;
      }

      caf::expected<T> await_resume() {
        if (!h)
          return make_error(errc::invalid_argument, "awaited an empty task");
        return std::move(*h.promise().result);
      }
    };
    return awaiter{h_};
  }

private:
  void destroy() {
    if (h_) {
      h_.destroy();
      h_ = {};
    }
  }

  handle_type h_;
};

} // namespace granary

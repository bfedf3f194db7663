#pragma once

// Helpers of the crash tests: a child process whose stdout the parent reads
// line by line until it SIGKILLs it or it exits, and a temporary directory.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace granary::testing {

/// The clock of kill deadlines.
using steady_clock = std::chrono::steady_clock;

/// How a child process ended, as its parent saw it.
struct child_exit {
  /// The raw wait status.
  int status = 0;
  /// True when the parent sent SIGKILL (planned or on timeout).
  bool kill_sent = false;
  /// True when the parent killed it because it ran out of time.
  bool timed_out = false;
  /// Output after the last newline (a line cut short), if any.
  std::string unterminated;

  /// True when the process ended by SIGKILL.
  bool killed() const {
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
  }

  /// True when the process exited with status 0.
  bool clean_exit() const {
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }

  /// Renders the wait status, e.g. "exit 0" or "signal 9".
  std::string describe_status() const {
    if (WIFEXITED(status))
      return "exit " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status))
      return "signal " + std::to_string(WTERMSIG(status));
    return "status " + std::to_string(status);
  }
};

/// Parses a non-negative decimal integer that spans all of `str`.
inline std::optional<int64_t> parse_int(std::string_view str) {
  if (str.empty() || str.size() > 18)
    return std::nullopt;
  int64_t val = 0;
  for (auto ch : str) {
    if (ch < '0' || ch > '9')
      return std::nullopt;
    val = val * 10 + (ch - '0');
  }
  return val;
}

/// Forks and execs `args[0]` with `args`: its stdout goes to `out_fd`, its
/// stderr to `err_fd` (the same descriptor for one stream; -1 leaves the
/// test's own). With `die_with_parent`, the child is killed when the test
/// process dies (a crashed test leaves no stray silo or etcd behind).
/// Returns the pid, or an error text in `error`.
pid_t spawn_child(const std::vector<std::string>& args, int out_fd, int err_fd,
                  bool die_with_parent, std::string& error);

/// A running child with its stdout on a pipe. The destructor kills and
/// reaps a child that is still running and closes the pipe, so that no
/// failed assertion leaves a process behind.
class child_process {
public:
  /// Receives each complete output line, without its newline.
  using line_handler = std::function<void(std::string_view)>;

  /// Like `line_handler`; returns true to have the child killed at once.
  using kill_handler = std::function<bool(std::string_view)>;

  child_process() = default;

  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  ~child_process() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
        // Retry.
      }
    }
    if (fd_ >= 0)
      ::close(fd_);
  }

  /// Forks and execs `args[0]`; returns an empty string or an error text.
  std::string spawn(const std::vector<std::string>& args) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0)
      return std::string{"pipe2: "} + std::strerror(errno);
    std::string err;
    auto pid = spawn_child(args, fds[1], -1, false, err);
    ::close(fds[1]);
    if (pid < 0) {
      ::close(fds[0]);
      return err;
    }
    pid_ = pid;
    fd_ = fds[0];
    return {};
  }

  /// Reads all output until EOF, passing each line to `on_line`. Sends
  /// SIGKILL at `kill_at` (if set) and at `deadline` (then marks the
  /// result as timed out). Reaps the child.
  child_exit collect(std::optional<steady_clock::time_point> kill_at,
                     steady_clock::time_point deadline,
                     const line_handler& on_line) {
    return collect_until(kill_at, deadline, [&](std::string_view line) {
      on_line(line);
      return false;
    });
  }

  /// Like `collect`, and also sends SIGKILL as soon as `on_line` returns
  /// true for a line: a crash test kills after observed progress, never
  /// after a fixed delay that a loaded machine may not fill. Lines that
  /// were already read are still passed on.
  child_exit collect_until(std::optional<steady_clock::time_point> kill_at,
                           steady_clock::time_point deadline,
                           const kill_handler& on_line) {
    child_exit res;
    std::string buf;
    char chunk[65'536];
    for (;;) {
      auto now = steady_clock::now();
      if (kill_at && now >= *kill_at && !res.kill_sent) {
        ::kill(pid_, SIGKILL);
        res.kill_sent = true;
      }
      if (now >= deadline && !res.timed_out) {
        ::kill(pid_, SIGKILL);
        res.kill_sent = true;
        res.timed_out = true;
      }
      auto next = deadline;
      if (kill_at && !res.kill_sent)
        next = std::min(next, *kill_at);
      int wait_ms = -1;
      if (!res.timed_out) {
        auto left = std::chrono::ceil<std::chrono::milliseconds>(next - now);
        wait_ms = static_cast<int>(std::max<int64_t>(left.count(), 0));
      }
      pollfd pfd{fd_, POLLIN, 0};
      auto rc = ::poll(&pfd, 1, wait_ms);
      if (rc < 0) {
        if (errno == EINTR)
          continue;
        ADD_FAILURE() << "poll: " << std::strerror(errno);
        ::kill(pid_, SIGKILL);
        break;
      }
      if (rc == 0)
        continue;
      auto n = ::read(fd_, chunk, sizeof(chunk));
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN)
          continue;
        ADD_FAILURE() << "read: " << std::strerror(errno);
        ::kill(pid_, SIGKILL);
        break;
      }
      if (n == 0)
        break;
      buf.append(chunk, static_cast<size_t>(n));
      size_t start = 0;
      for (auto nl = buf.find('\n'); nl != std::string::npos;
           nl = buf.find('\n', start)) {
        if (on_line(std::string_view{buf}.substr(start, nl - start))
            && !res.kill_sent) {
          ::kill(pid_, SIGKILL);
          res.kill_sent = true;
        }
        start = nl + 1;
      }
      buf.erase(0, start);
    }
    // Each line goes out in one write() far below PIPE_BUF, so even a kill
    // cannot cut one in half.
    res.unterminated = std::move(buf);
    ::close(fd_);
    fd_ = -1;
    while (::waitpid(pid_, &res.status, 0) < 0) {
      if (errno != EINTR) {
        ADD_FAILURE() << "waitpid: " << std::strerror(errno);
        break;
      }
    }
    pid_ = -1;
    return res;
  }

private:
  pid_t pid_ = -1;
  int fd_ = -1;
};

/// A long-running child process whose stdout and stderr are read line by
/// line (a silo, a fake API): spawn, wait for a line, stop. A reader thread
/// drains the pipe all the time, so that a chatty child never blocks on a
/// full pipe; the log keeps the last `max_log` bytes.
class output_process {
public:
  static constexpr size_t max_log = 1 << 20;

  ~output_process() {
    kill_now();
  }

  output_process() = default;
  output_process(const output_process&) = delete;
  output_process& operator=(const output_process&) = delete;

  /// Forks and execs `args[0]` with `args`; false if that failed.
  bool spawn(std::vector<std::string> args) {
    kill_now();
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0)
      return false;
    std::string err;
    pid_ = spawn_child(args, fds[1], fds[1], false, err);
    ::close(fds[1]);
    if (pid_ < 0) {
      ::close(fds[0]);
      return false;
    }
    {
      std::lock_guard guard{mtx_};
      lines_.clear();
      next_ = 0;
      log_.clear();
      eof_ = false;
    }
    reader_ = std::thread{[this, fd = fds[0]] { read_loop(fd); }};
    return true;
  }

  /// Waits for a line, not returned before, that starts with `prefix`,
  /// until `deadline`; returns that line, or nothing.
  std::string wait_line(const std::string& prefix,
                        steady_clock::time_point deadline) {
    std::unique_lock guard{mtx_};
    for (;;) {
      for (; next_ < lines_.size(); ++next_)
        if (lines_[next_].starts_with(prefix))
          return lines_[next_++];
      if (eof_ || !cv_.wait_until(guard, deadline, [&] {
            return eof_ || next_ < lines_.size();
          }))
        if (next_ >= lines_.size())
          return {};
    }
  }

  /// Sends `sig` and waits up to `limit` for the exit; returns the wait
  /// status, or -1 on timeout (the child keeps running).
  int stop(int sig, std::chrono::milliseconds limit) {
    ::kill(pid_, sig);
    auto deadline = steady_clock::now() + limit;
    int status = 0;
    while (steady_clock::now() < deadline) {
      auto r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        join_reader();
        return status;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds{10});
    }
    return -1;
  }

  /// Waits up to `limit` for the child to exit on its own; returns the wait
  /// status, or -1 on timeout.
  int wait_exit(std::chrono::milliseconds limit) {
    auto deadline = steady_clock::now() + limit;
    int status = 0;
    while (steady_clock::now() < deadline) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        join_reader();
        return status;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds{10});
    }
    return -1;
  }

  /// The child's process id (-1 when none runs).
  pid_t pid() const {
    return pid_;
  }

  /// Everything the child printed so far (the last `max_log` bytes).
  std::string log() const {
    std::lock_guard guard{mtx_};
    return log_;
  }

  /// Kills the child with SIGKILL and reaps it.
  void kill_now() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
    }
    join_reader();
  }

private:
  void read_loop(int fd) {
    std::string partial;
    char chunk[4096];
    // Ends at EOF, when every writer (the child and its children) is gone.
    for (;;) {
      auto n = ::read(fd, chunk, sizeof(chunk));
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        break;
      partial.append(chunk, static_cast<size_t>(n));
      std::lock_guard guard{mtx_};
      for (auto nl = partial.find('\n'); nl != std::string::npos;
           nl = partial.find('\n')) {
        auto line = partial.substr(0, nl);
        partial.erase(0, nl + 1);
        log_ += line + "\n";
        lines_.push_back(std::move(line));
      }
      if (log_.size() > max_log)
        log_.erase(0, log_.size() - max_log);
      cv_.notify_all();
    }
    ::close(fd);
    std::lock_guard guard{mtx_};
    eof_ = true;
    cv_.notify_all();
  }

  void join_reader() {
    if (reader_.joinable())
      reader_.join();
  }

  pid_t pid_ = -1;
  std::thread reader_;
  mutable std::mutex mtx_;
  std::condition_variable cv_;
  std::vector<std::string> lines_;
  size_t next_ = 0;
  std::string log_;
  bool eof_ = false;
};

/// A directory tree removed when it goes out of scope.
struct temp_dir {
  std::filesystem::path path;

  temp_dir() = default;
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  ~temp_dir() {
    // GRANARY_KEEP_TEST_DIRS=1 keeps them for a post-mortem.
    if (path.empty() || std::getenv("GRANARY_KEEP_TEST_DIRS"))
      return;
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }

  /// Creates a fresh directory named `prefix` plus a random suffix under
  /// the system's temporary directory; returns an empty string or an error.
  std::string create(const std::string& prefix) {
    auto tmpl = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX"))
                    .string();
    if (::mkdtemp(tmpl.data()) == nullptr)
      return std::string{"mkdtemp: "} + std::strerror(errno);
    path = tmpl;
    return {};
  }
};

} // namespace granary::testing

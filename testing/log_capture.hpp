#pragma once

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/log.hpp"

namespace granary::testing {

/// Collects the process's log lines (and still prints them to stderr)
/// while it lives; restores the default sink on destruction. One at a time.
class log_capture {
public:
  log_capture() {
    set_log_sink([this](log_level level, std::string_view line) {
      std::fprintf(stderr, "log: %.*s\n", static_cast<int>(line.size()),
                   line.data());
      std::lock_guard guard{mtx_};
      // Bounded: a chatty test keeps the first lines, which name the cause.
      if (lines_.size() < max_lines)
        lines_.push_back({level, std::string{line}});
    });
  }

  ~log_capture() {
    set_log_sink(nullptr);
  }

  log_capture(const log_capture&) = delete;
  log_capture& operator=(const log_capture&) = delete;

  /// Lines kept at most.
  static constexpr size_t max_lines = 100'000;

  /// True when a line contains `part`.
  bool has(std::string_view part) const {
    return count(part) > 0;
  }

  /// Number of lines that contain `part`.
  size_t count(std::string_view part) const {
    std::lock_guard guard{mtx_};
    return static_cast<size_t>(
        std::count_if(lines_.begin(), lines_.end(), [&](auto& l) {
          return l.text.find(part) != std::string::npos;
        }));
  }

  /// The lines logged at `min` or above, in order.
  std::vector<std::string> lines(log_level min = log_level::debug) const {
    std::lock_guard guard{mtx_};
    std::vector<std::string> out;
    for (auto& l : lines_)
      if (l.level >= min)
        out.push_back(l.text);
    return out;
  }

private:
  struct line {
    log_level level;
    std::string text;
  };

  mutable std::mutex mtx_;
  std::vector<line> lines_;
};

} // namespace granary::testing

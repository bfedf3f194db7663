#include "runtime/log.hpp"

#include <atomic>
#include <cstdio>
#include <mutex>

namespace granary {

namespace {

std::mutex sink_mtx;
log_sink current_sink;
std::atomic<int> min_level{static_cast<int>(log_level::info)};

const char* name(log_level level) {
  switch (level) {
    case log_level::debug:
      return "debug";
    case log_level::info:
      return "info";
    case log_level::warning:
      return "warning";
    case log_level::error:
      return "error";
  }
  return "?";
}

} // namespace

void set_log_sink(log_sink sink) {
  std::lock_guard guard{sink_mtx};
  current_sink = std::move(sink);
}

void set_log_level(log_level level) {
  min_level = static_cast<int>(level);
}

void log(log_level level, std::string_view line) {
  if (static_cast<int>(level) < min_level.load())
    return;
  std::lock_guard guard{sink_mtx};
  if (current_sink) {
    current_sink(level, line);
    return;
  }
  std::fprintf(stderr, "granary %s: %.*s\n", name(level),
               static_cast<int>(line.size()), line.data());
}

} // namespace granary

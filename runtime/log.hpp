#pragma once

#include <functional>
#include <string_view>

namespace granary {

/// Severity of a log line.
enum class log_level { debug, info, warning, error };

/// Destination of log lines; the default writes to stderr.
using log_sink = std::function<void(log_level, std::string_view)>;

/// Replaces the process-wide log sink (thread-safe).
void set_log_sink(log_sink sink);

/// Sets the lowest level that is written.
void set_log_level(log_level level);

/// Writes one log line.
void log(log_level level, std::string_view line);

} // namespace granary

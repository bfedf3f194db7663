#pragma once

// How `granary bench` reports: number formats, the headline of a result,
// and (in report.cpp) the JSON line and the table of `scenarios.hpp`.

#include <string>

#include "bench/measure.hpp"
#include "bench/scenarios.hpp"

namespace granary::bench {

/// Renders `x` for JSON: an integer without a fraction, "null" if it is
/// not finite.
std::string fmt_num(double x);

/// Renders 1234567.8 as "1,234,568"; "-" if it is not finite.
std::string fmt_grouped(double x);

/// Renders milliseconds with three decimals.
std::string fmt_ms(double x);

/// Renders a rate for a progress line: "1.23M", "45.6k" or "789".
std::string fmt_rate(double x);

/// Returns `ours / base`, or 0 without a base.
double ratio_of(double ours, double base);

/// Returns the result of `scenario` with `ours` as its headline, measured
/// against `baseline_ops_per_s` of `baseline`; the caller adds the target,
/// whether it was met, and the extras.
result make_result(std::string scenario, const load_figures& ours,
                   std::string baseline, double baseline_ops_per_s);

} // namespace granary::bench

#include "bench/report.hpp"

#include <cmath>
#include <cstdio>

#include "runtime/json.hpp"

namespace granary::bench {

std::string fmt_num(double x) {
  if (!std::isfinite(x))
    return "null";
  char buf[64];
  if (x == std::floor(x) && std::fabs(x) < 1e15)
    std::snprintf(buf, sizeof(buf), "%.0f", x);
  else
    std::snprintf(buf, sizeof(buf), "%.10g", x);
  return buf;
}

std::string fmt_grouped(double x) {
  if (!std::isfinite(x))
    return "-";
  auto digits = std::to_string(static_cast<long long>(std::llround(x)));
  std::string out;
  size_t sign = digits[0] == '-' ? 1 : 0;
  size_t len = digits.size() - sign;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > sign && (len - (i - sign)) % 3 == 0)
      out += ',';
    out += digits[i];
  }
  return out;
}

std::string fmt_ms(double x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3f", x);
  return buf;
}

std::string fmt_rate(double x) {
  char buf[64];
  if (x >= 1e6)
    std::snprintf(buf, sizeof(buf), "%.2fM", x / 1e6);
  else if (x >= 1e3)
    std::snprintf(buf, sizeof(buf), "%.1fk", x / 1e3);
  else
    std::snprintf(buf, sizeof(buf), "%.0f", x);
  return buf;
}

double ratio_of(double ours, double base) {
  return base > 0 ? ours / base : 0;
}

result make_result(std::string scenario, const load_figures& ours,
                   std::string baseline, double baseline_ops_per_s) {
  result res;
  res.scenario = std::move(scenario);
  res.ops_per_s = ours.ops_per_s;
  res.p50_ms = ours.p50_ms;
  res.p99_ms = ours.p99_ms;
  res.p999_ms = ours.p999_ms;
  res.baseline = std::move(baseline);
  res.baseline_ops_per_s = baseline_ops_per_s;
  res.ratio = ratio_of(res.ops_per_s, res.baseline_ops_per_s);
  return res;
}

std::string to_json(const result& res) {
  std::string out = "{";
  auto field = [&](std::string_view name, const std::string& value) {
    if (out.size() > 1)
      out += ',';
    out += json_quote(name);
    out += ':';
    out += value;
  };
  field("scenario", json_quote(res.scenario));
  field("ops_per_s", fmt_num(res.ops_per_s));
  field("p50_ms", fmt_num(res.p50_ms));
  field("p99_ms", fmt_num(res.p99_ms));
  field("p999_ms", fmt_num(res.p999_ms));
  field("baseline", json_quote(res.baseline));
  field("baseline_ops_per_s", fmt_num(res.baseline_ops_per_s));
  field("ratio", fmt_num(res.ratio));
  field("target", json_quote(res.target));
  field("met", res.met ? "true" : "false");
  for (auto& [name, value] : res.extras)
    field(name, fmt_num(value));
  out += '}';
  return out;
}

std::string to_table(const std::vector<result>& results) {
  std::string out;
  char buf[256];
  auto line = [&](const char* scenario, const char* ops, const char* p50,
                  const char* p99, const char* p999, const char* base,
                  const char* base_ops, const char* ratio, const char* met) {
    std::snprintf(buf, sizeof(buf),
                  "%-17s %12s %8s %8s %9s  %-21s %12s %7s  %s\n", scenario, ops,
                  p50, p99, p999, base, base_ops, ratio, met);
    out += buf;
  };
  line("scenario", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "baseline",
       "baseline/s", "ratio", "target");
  for (auto& r : results) {
    char ratio[32];
    std::snprintf(ratio, sizeof(ratio), "%.3f", r.ratio);
    auto verdict = r.target + (r.met ? ": met" : ": MISSED");
    line(r.scenario.c_str(), fmt_grouped(r.ops_per_s).c_str(),
         fmt_ms(r.p50_ms).c_str(), fmt_ms(r.p99_ms).c_str(),
         fmt_ms(r.p999_ms).c_str(), r.baseline.c_str(),
         fmt_grouped(r.baseline_ops_per_s).c_str(), ratio, verdict.c_str());
  }
  out += "\n";
  for (auto& r : results) {
    out += r.scenario + ":";
    for (auto& [name, value] : r.extras)
      out += " " + name + "=" + fmt_num(value);
    out += "\n";
  }
  return out;
}

} // namespace granary::bench

#include "host/config.hpp"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <stdexcept>

#include <toml++/toml.h>

#include "runtime/error.hpp"

namespace granary::host {

using cluster::gateway_config;

const char* to_string(membership_provider p) {
  return p == membership_provider::etcd ? "etcd" : "embedded";
}

namespace {

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      auto up = row[j];
      row[j] = std::min(
          {row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

bool valid_id(std::string_view id) {
  return !id.empty() && id.size() <= 64
         && std::all_of(id.begin(), id.end(), [](char c) {
              return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
                     || (c >= '0' && c <= '9') || c == '-' || c == '_'
                     || c == '.';
            });
}

const char* type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    default:
      return "a date or time";
  }
}

/// Reads one table's keys, remembers which it knows, and stops at the
/// first error.
class reader {
public:
  /// Reads `tbl` at `path`; appends every key it asks for (with its path)
  /// to `keys`, when set, as it goes out of scope.
  reader(std::string_view source, const toml::table& tbl, std::string path,
         std::vector<std::string>* keys = nullptr)
      : source_(source)
      , tbl_(tbl)
      , path_(std::move(path))
      , keys_(keys) {}

  ~reader() {
    if (keys_)
      for (auto& k : known_)
        keys_->push_back(key_name(k));
  }

  reader(const reader&) = delete;
  reader& operator=(const reader&) = delete;

  const std::string& path() const {
    return path_;
  }

  caf::error& error() {
    return err_;
  }

  std::string key_name(std::string_view key) const {
    return path_.empty() ? std::string{key} : path_ + "." + std::string{key};
  }

  caf::error fail(std::string_view key, const toml::node* n,
                  const std::string& problem) {
    if (err_)
      return err_;
    std::string where = std::string{source_};
    if (n && n->source().begin.line > 0)
      where += ":" + std::to_string(n->source().begin.line);
    err_ = make_error(errc::invalid_config,
                      where + ": key '" + key_name(key) + "': " + problem);
    return err_;
  }

  /// Looks `key` up without counting it as known.
  const toml::node* peek(std::string_view key) const {
    return tbl_.get(key);
  }

  const toml::node* find(std::string_view key, bool required) {
    known_.emplace_back(key);
    auto* n = tbl_.get(key);
    if (!n && required)
      fail(key, nullptr, "missing (required)");
    return n;
  }

  std::optional<std::string> string(std::string_view key, bool required) {
    auto* n = find(key, required);
    if (!n)
      return std::nullopt;
    if (!n->is_string()) {
      fail(key, n, std::string{"expected a string, got "} + type_name(*n));
      return std::nullopt;
    }
    return n->as_string()->get();
  }

  /// A number in [0, 1].
  void rate(std::string_view key, double& out) {
    auto* n = find(key, false);
    if (!n)
      return;
    if (!n->is_number()) {
      fail(key, n, std::string{"expected a number, got "} + type_name(*n));
      return;
    }
    auto v = n->is_floating_point()
                 ? n->as_floating_point()->get()
                 : static_cast<double>(n->as_integer()->get());
    if (!(v >= 0 && v <= 1)) {
      fail(key, n, "must be between 0 and 1");
      return;
    }
    out = v;
  }

  std::optional<int64_t> integer(std::string_view key, int64_t lo, int64_t hi) {
    auto* n = find(key, false);
    if (!n)
      return std::nullopt;
    if (!n->is_integer()) {
      fail(key, n, std::string{"expected an integer, got "} + type_name(*n));
      return std::nullopt;
    }
    auto v = n->as_integer()->get();
    if (v < lo || v > hi) {
      fail(key, n,
           std::to_string(v) + " is out of range [" + std::to_string(lo) + ", "
               + std::to_string(hi) + "]");
      return std::nullopt;
    }
    return v;
  }

  template <class T>
  void size(std::string_view key, T& out, int64_t lo,
            int64_t hi = std::numeric_limits<int32_t>::max()) {
    if (auto v = integer(key, lo, hi))
      out = static_cast<T>(*v);
  }

  void millis(std::string_view key, std::chrono::milliseconds& out, int64_t lo,
              int64_t hi = int64_t{1} << 40) {
    if (auto v = integer(key, lo, hi))
      out = std::chrono::milliseconds{*v};
  }

  std::optional<endpoint> address(std::string_view key, bool required,
                                  bool any_port) {
    auto text = string(key, required);
    if (!text)
      return std::nullopt;
    auto ep = parse_endpoint(*text, any_port);
    if (!ep) {
      fail(key, tbl_.get(key), describe_message(ep.error()));
      return std::nullopt;
    }
    return *ep;
  }

  std::vector<endpoint> addresses(std::string_view key) {
    std::vector<endpoint> out;
    auto* n = find(key, false);
    if (!n)
      return out;
    auto* arr = n->as_array();
    if (!arr) {
      fail(key, n,
           std::string{"expected an array of \"host:port\" strings, got "}
               + type_name(*n));
      return out;
    }
    if (arr->size() > 1'000) {
      fail(key, n, "more than 1000 addresses");
      return out;
    }
    for (size_t i = 0; i < arr->size(); ++i) {
      auto& item = *arr->get(i);
      auto item_key = std::string{key} + "[" + std::to_string(i) + "]";
      if (!item.is_string()) {
        fail(item_key, &item,
             std::string{"expected a \"host:port\" string, got "}
                 + type_name(item));
        return {};
      }
      auto ep = parse_endpoint(item.as_string()->get(), false);
      if (!ep) {
        fail(item_key, &item, describe_message(ep.error()));
        return {};
      }
      out.push_back(std::move(*ep));
    }
    return out;
  }

  const toml::table* table(std::string_view key) {
    auto* n = find(key, false);
    if (!n)
      return nullptr;
    if (!n->is_table()) {
      fail(key, n, std::string{"expected a table, got "} + type_name(*n));
      return nullptr;
    }
    return n->as_table();
  }

  /// Fails on the first key that no reader asked for.
  void reject_unknown() {
    if (err_)
      return;
    for (auto&& [k, v] : tbl_) {
      auto key = k.str();
      if (std::find(known_.begin(), known_.end(), key) != known_.end())
        continue;
      std::string hint;
      size_t best = 3;
      for (auto& candidate : known_) {
        auto d = edit_distance(key, candidate);
        if (d < best) {
          best = d;
          hint = "; did you mean '" + key_name(candidate) + "'?";
        }
      }
      if (hint.empty()) {
        hint = "; known keys here: ";
        for (size_t i = 0; i < known_.size(); ++i)
          hint += (i == 0 ? "" : ", ") + known_[i];
      }
      fail(key, &v, "unknown key" + hint);
      return;
    }
  }

  static std::string describe_message(const caf::error& err) {
    auto text = describe(err);
    auto colon = text.find(": ");
    return colon == std::string::npos ? text : text.substr(colon + 2);
  }

private:
  std::string_view source_;
  const toml::table& tbl_;
  std::string path_;
  std::vector<std::string> known_;
  std::vector<std::string>* keys_;
  caf::error err_;
};

caf::error read_limits(reader& r, silo_config& cfg) {
  r.size("threads", cfg.threads, 1, 256);
  if (auto policy = r.string("scheduler_policy", false))
    cfg.scheduler_policy = *policy;
  r.size("max_throughput", cfg.max_throughput, 1);
  r.millis("idle_age_ms", cfg.idle_age, 1);
  r.size("max_queued_per_partition", cfg.max_queued_per_partition, 1);
  r.size("max_inbox_per_grain", cfg.max_inbox_per_grain, 1);
  r.size("max_outbox_per_grain", cfg.max_outbox_per_grain, 1);
  r.size("max_uncommitted_per_partition", cfg.max_uncommitted_per_partition, 1);
  r.size("max_attempts", cfg.max_attempts, 1);
  r.millis("retry_initial_ms", cfg.retry_initial, 1);
  r.millis("retry_max_ms", cfg.retry_max, 1);
  r.size("max_payload_bytes", cfg.max_payload_bytes, 1);
  if (auto v
      = r.integer("min_free_bytes", 0, std::numeric_limits<int64_t>::max()))
    cfg.min_free_bytes = static_cast<uint64_t>(*v);
  r.size("max_group_ops", cfg.max_group_ops, 1);
  r.millis("redelivery_timeout_ms", cfg.redelivery_timeout, 1);
  r.millis("parked_retry_ms", cfg.parked_retry, 1);
  r.millis("remote_call_timeout_ms", cfg.remote_call_timeout, 1);
  r.millis("timer_poll_ms", cfg.timer_poll, 1);
  r.millis("timer_window_ms", cfg.timer_window, 1);
  r.millis("dedup_retention_ms", cfg.dedup_retention, 1);
  r.millis("dedup_sweep_interval_ms", cfg.dedup_sweep_interval, 1);
  r.reject_unknown();
  return r.error();
}

caf::error read_gateway(reader& r, gateway_config& cfg) {
  r.size("threads", cfg.threads, 1, 64);
  r.size("max_pending", cfg.max_pending, 1, 1'000'000);
  r.size("max_connections", cfg.max_connections, 1, 100'000);
  r.size("max_header_bytes", cfg.max_header_bytes, 512, 1 << 20);
  r.size("max_body_bytes", cfg.max_body_bytes, 1, 64 << 20);
  r.millis("idle_timeout_ms", cfg.idle_timeout, 1, 3'600'000);
  r.millis("header_timeout_ms", cfg.header_timeout, 1, 3'600'000);
  r.millis("call_timeout_ms", cfg.call_timeout, 1, 3'600'000);
  r.millis("max_wait_ms", cfg.max_wait, 0, 3'600'000);
  r.reject_unknown();
  return r.error();
}

caf::error read_membership(reader& r, membership_file_config& cfg) {
  auto provider = r.string("provider", false);
  if (provider) {
    if (*provider == "embedded")
      cfg.provider = membership_provider::embedded;
    else if (*provider == "etcd")
      cfg.provider = membership_provider::etcd;
    else
      return r.fail("provider", nullptr,
                    "unknown provider '" + *provider
                        + "' (expected \"embedded\" or \"etcd\")");
  }
  auto embedded = cfg.provider == membership_provider::embedded;
  std::vector<std::string_view> foreign{"seeds", "seed_call_timeout_ms"};
  if (embedded)
    foreign = {"endpoints", "prefix"};
  for (auto key : foreign)
    if (auto* n = r.find(key, false))
      return r.fail(key, n,
                    std::string{"only applies to provider \""}
                        + (embedded ? "etcd" : "embedded") + "\"");
  // Rejected with a hint, so not one of the keys that `find` records.
  if (auto* n = r.peek("silos"))
    return r.fail("silos", n,
                  "was replaced by 'seeds': silos now join through one "
                  "seed silo, e.g. seeds = [\"silo-1@10.0.0.1:7100\"], and "
                  "the partition map follows the members");
  auto& d = cfg.detector;
  r.millis("probe_interval_ms", d.probe_interval, 10, 600'000);
  r.size("missed_probes", d.missed_probes, 1, 1'000);
  r.size("votes_needed", d.votes_needed, 1, 100);
  r.millis("vote_expiry_ms", d.vote_expiry, 20, 86'400'000);
  r.millis("i_am_alive_interval_ms", d.i_am_alive_interval, 10, 3'600'000);
  r.millis("join_timeout_ms", d.join_timeout, 0, 3'600'000);
  r.millis("leave_timeout_ms", cfg.leave_timeout, 0, 86'400'000);
  r.millis("seed_call_timeout_ms", cfg.seed_client.call_timeout, 1, 3'600'000);
  if (auto* n = r.find("rebalance", false)) {
    if (!n->is_boolean())
      return r.fail("rebalance", n,
                    std::string{"expected true or false, got "}
                        + type_name(*n));
    d.rebalance = n->as_boolean()->get();
  }
  if (!r.error() && d.vote_expiry <= d.probe_interval)
    return r.fail("vote_expiry_ms", nullptr,
                  "must exceed probe_interval_ms ("
                      + std::to_string(d.probe_interval.count()) + ")");
  if (embedded) {
    if (auto* n = r.find("seeds", false)) {
      auto* arr = n->as_array();
      if (!arr || arr->size() > 1)
        return r.fail("seeds", n,
                      "expected an array of one \"id@host:port\" string: "
                      "the embedded provider keeps the table on one seed "
                      "silo (use provider \"etcd\" for a replicated table)");
      for (size_t i = 0; i < arr->size(); ++i) {
        auto& item = *arr->get(i);
        auto item_key = "seeds[" + std::to_string(i) + "]";
        auto* text = item.as_string();
        auto at = text ? text->get().find('@') : std::string::npos;
        if (at == std::string::npos || at == 0)
          return r.fail(item_key, &item,
                        "expected \"id@host:port\", e.g. "
                        "\"silo-1@10.0.0.1:7100\"");
        auto ep = parse_endpoint(text->get().substr(at + 1), false);
        if (!ep)
          return r.fail(item_key, &item, reader::describe_message(ep.error()));
        cfg.seeds.push_back(peer_address{text->get().substr(0, at), *ep});
      }
    }
  } else {
    cfg.endpoints = r.addresses("endpoints");
    if (!r.error() && cfg.endpoints.empty())
      return r.fail("endpoints", nullptr,
                    "missing: provider \"etcd\" needs at least one "
                    "\"host:port\" endpoint");
    if (auto prefix = r.string("prefix", false)) {
      if (prefix->empty() || prefix->front() != '/')
        return r.fail("prefix", nullptr,
                      "'" + *prefix + "' must start with '/'");
      cfg.prefix = *prefix;
    }
  }
  r.reject_unknown();
  return r.error();
}

} // namespace

caf::expected<silo_file_config>
parse_config_impl(std::string_view text, std::string_view source,
                  std::vector<std::string>* keys) {
  toml::table root;
  try {
    root = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    return make_error(
        errc::invalid_config,
        std::string{source} + ":" + std::to_string(e.source().begin.line)
            + ": not valid TOML: " + std::string{e.description()});
  }
  silo_file_config out;
  reader top{source, root, {}, keys};
  auto ids = [&](std::string_view key, std::string& field) {
    if (auto v = top.string(key, true)) {
      if (!valid_id(*v))
        top.fail(key, root.get(key),
                 "'" + *v + "' must be 1-64 characters of [A-Za-z0-9._-]");
      field = *v;
    }
  };
  ids("cluster_id", out.cluster_id);
  ids("silo_id", out.silo_id);
  if (auto dir = top.string("data_dir", true)) {
    if (dir->empty())
      top.fail("data_dir", root.get("data_dir"), "must not be empty");
    out.data_dir = *dir;
  }
  top.size("partitions", out.limits.partitions, 1, 65'535);
  if (auto* listen = top.table("listen")) {
    reader r{source, *listen, "listen", keys};
    if (auto ep = r.address("silo", true, true))
      out.silo_listen = *ep;
    if (auto ep = r.address("gateway", true, true))
      out.gateway_listen = *ep;
    r.reject_unknown();
    if (r.error())
      return r.error();
  } else if (!top.error()) {
    top.fail("listen", nullptr,
             "missing (required): a [listen] table with silo and gateway");
  }
  if (auto* m = top.table("membership")) {
    reader r{source, *m, "membership", keys};
    if (auto err = read_membership(r, out.membership))
      return err;
    auto& seeds = out.membership.seeds;
    if (!seeds.empty() && !top.error() && seeds[0].silo_id == out.silo_id
        && seeds[0].address.port != out.silo_listen.port)
      return r.fail("seeds", m->get("seeds"),
                    "names this silo ('" + out.silo_id + "') at "
                        + seeds[0].address.to_string() + " but listen.silo is "
                        + out.silo_listen.to_string());
  }
  if (auto* l = top.table("limits")) {
    reader r{source, *l, "limits", keys};
    if (auto err = read_limits(r, out.limits))
      return err;
  }
  if (auto* g = top.table("gateway")) {
    reader r{source, *g, "gateway", keys};
    if (auto err = read_gateway(r, out.gateway))
      return err;
  }
  if (auto* f = top.table("faults")) {
    reader r{source, *f, "faults", keys};
    auto& fc = out.faults;
    out.faults_enabled = true;
    if (auto v = r.integer("seed", 0, std::numeric_limits<int64_t>::max()))
      fc.seed = static_cast<uint64_t>(*v);
    r.rate("drop_rate", fc.drop_rate);
    r.rate("duplicate_rate", fc.duplicate_rate);
    r.rate("delay_rate", fc.delay_rate);
    r.rate("reorder_rate", fc.reorder_rate);
    r.millis("max_delay_ms", fc.max_delay, 0, 10'000);
    r.reject_unknown();
    if (r.error())
      return r.error();
  }
  top.reject_unknown();
  if (top.error())
    return top.error();
  if (auto err = out.limits.validate())
    return make_error(errc::invalid_config,
                      std::string{source} + ": [limits]: " + describe(err));
  return out;
}

caf::expected<silo_file_config> parse_config(std::string_view text,
                                             std::string_view source) {
  return parse_config_impl(text, source, nullptr);
}

std::vector<std::string> config_keys() {
  // Every reader records each key it looks for, present or not: parse
  // documents with every table, once per membership provider.
  std::vector<std::string> keys;
  std::string_view common = "cluster_id = \"k\"\nsilo_id = \"k\"\n"
                            "data_dir = \"/k\"\n[listen]\n"
                            "silo = \"127.0.0.1:0\"\n"
                            "gateway = \"127.0.0.1:0\"\n"
                            "[limits]\n[gateway]\n[faults]\n";
  for (std::string_view membership :
       {"[membership]\n", "[membership]\nprovider = \"etcd\"\n"
                          "endpoints = [\"127.0.0.1:2379\"]\n"}) {
    auto doc = std::string{common} + std::string{membership};
    auto parsed = parse_config_impl(doc, "keys", &keys);
    // The documents are fixed; a failure is a bug in this function.
    if (!parsed)
      throw std::logic_error("config_keys: " + describe(parsed.error()));
  }
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  return keys;
}

caf::expected<silo_file_config> load_config(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  if (!in)
    return make_error(errc::invalid_config,
                      "cannot read config file '" + path + "'");
  // Config files are small; a huge one is a mistake, not a config.
  constexpr std::streamsize max_bytes = 1 << 20;
  std::string buf(static_cast<size_t>(max_bytes) + 1, '\0');
  in.read(buf.data(), max_bytes + 1);
  if (in.gcount() > max_bytes)
    return make_error(errc::invalid_config,
                      "config file '" + path + "' is larger than 1 MiB");
  buf.resize(static_cast<size_t>(in.gcount()));
  return parse_config(buf, path);
}

} // namespace granary::host

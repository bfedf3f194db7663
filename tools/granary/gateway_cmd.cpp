#include "tools/granary/gateway_cmd.hpp"

#include <charconv>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include "cluster/transport/transport.hpp"
#include "gateway/gateway_client.hpp"
#include "gateway/gateway_history.hpp"
#include "runtime/error.hpp"
#include "runtime/json.hpp"

namespace granary::cli {

namespace {

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;

constexpr const char* workflow_usage
    = "usage: granary workflow start    --gateway HOST:PORT TYPE ID "
      "--input-type T\n"
      "                                 [--input JSON] [--reject-if-exists]\n"
      "       granary workflow describe --gateway HOST:PORT TYPE ID\n"
      "       granary workflow result   --gateway HOST:PORT TYPE ID "
      "[--wait MS]\n"
      "       granary workflow signal   --gateway HOST:PORT TYPE ID NAME\n"
      "                                 [--payload-type T --payload JSON] "
      "[--id MSG_ID]\n"
      "       granary workflow query    --gateway HOST:PORT TYPE ID NAME\n"
      "       granary workflow cancel   --gateway HOST:PORT TYPE ID "
      "[--reason TEXT]\n"
      "                                 [--id MSG_ID]\n"
      "       granary workflow update   --gateway HOST:PORT TYPE ID NAME\n"
      "                                 [--payload-type T --payload JSON] "
      "[--id ID]\n"
      "       granary workflow list     --gateway HOST:PORT TYPE "
      "[--status S]\n"
      "                                 [--limit N] [--cursor C]\n"
      "       granary workflow history  --gateway HOST:PORT TYPE ID "
      "[--json]\n"
      "       granary workflow history  --data DIR TYPE ID [--json] "
      "[--export FILE]\n"
      "\n"
      "Messages are JSON in protobuf's JSON mapping, typed by their full\n"
      "protobuf name (e.g. --input-type granary.cp.CreateNamespace). Output\n"
      "is the gateway's JSON answer. 'result' exits 1 unless the run\n"
      "COMPLETED; 'list' exits 1 when a silo did not answer (its workflows\n"
      "are missing; stderr names it). --timeout MS bounds each request\n"
      "(30000 + --wait).\n"
      "Exit codes: 0 ok, 1 the operation failed, 2 bad usage.\n";

constexpr const char* dead_letters_usage
    = "usage: granary dead-letters --gateway HOST:PORT [list] [--limit N] "
      "[--json]\n"
      "       granary dead-letters --gateway HOST:PORT requeue TYPE KEY "
      "MSG_ID\n"
      "       granary dead-letters --gateway HOST:PORT drop TYPE KEY MSG_ID\n"
      "\n"
      "Works on a running silo through its gateway (--data DIR works on a\n"
      "stopped silo's directory instead).\n";

constexpr const char* grain_usage
    = "usage: granary grain call --gateway HOST:PORT TYPE KEY --type T\n"
      "                          [--message JSON]\n"
      "       granary grain send --gateway HOST:PORT TYPE KEY --type T\n"
      "                          [--message JSON] [--id MSG_ID]\n"
      "\n"
      "'call' is a transient call and prints the reply; 'send' is a durable\n"
      "message (pass --id to retry safely).\n";

constexpr const char* cluster_usage
    = "usage: granary cluster status --gateway HOST:PORT\n"
      "\n"
      "Shows the cluster id and, as the asked silo sees it, every silo's id,\n"
      "status (joining, active, shutting_down, dead), silo-to-silo address,\n"
      "gateway, suspicion votes and the partitions it owns. Any silo's\n"
      "gateway answers. --json prints the gateway's answer as is.\n";

/// Parsed command line: flags with values, boolean flags, positionals.
struct args {
  std::map<std::string, std::string> values;
  std::set<std::string> flags;
  std::vector<std::string> positional;
};

/// Parses `argv`; `valued` and `boolean` name the accepted options.
/// Returns a usage problem, or nullopt.
std::optional<std::string> parse(int argc, char** argv,
                                 const std::set<std::string>& valued,
                                 const std::set<std::string>& boolean,
                                 args& out) {
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (!arg.starts_with("--") || arg == "--") {
      out.positional.push_back(arg);
      continue;
    }
    std::optional<std::string> value;
    if (auto eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    if (boolean.count(arg) > 0) {
      if (value)
        return arg + " takes no value";
      out.flags.insert(arg);
      continue;
    }
    if (valued.count(arg) == 0)
      return "unknown option '" + arg + "'";
    if (!value) {
      if (i + 1 >= argc)
        return arg + " needs a value";
      value = argv[++i];
    }
    out.values[arg] = *value;
  }
  return std::nullopt;
}

int usage(const char* cmd, const std::string& what, const char* text) {
  std::fprintf(stderr, "granary %s: %s\n%s", cmd, what.c_str(), text);
  return exit_usage;
}

int fail(const char* cmd, const caf::error& err) {
  std::fprintf(stderr, "granary %s: %s\n", cmd, describe(err).c_str());
  return exit_failed;
}

void print_body(const std::string& body) {
  std::fputs(body.c_str(), stdout);
  if (body.empty() || body.back() != '\n')
    std::fputc('\n', stdout);
}

std::optional<uint64_t> parse_u64(const std::string& text) {
  uint64_t v = 0;
  auto res = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || res.ec != std::errc{}
      || res.ptr != text.data() + text.size())
    return std::nullopt;
  return v;
}

/// The client for `--gateway`, or a usage problem.
struct connection {
  std::optional<cluster::endpoint> server;
  std::chrono::milliseconds timeout{30'000};
  std::string problem;
};

connection connect_args(const args& a, std::chrono::milliseconds extra = {}) {
  connection c;
  auto g = a.values.find("--gateway");
  if (g == a.values.end()) {
    c.problem = "--gateway HOST:PORT is required";
    return c;
  }
  auto ep = cluster::parse_endpoint(g->second);
  if (!ep) {
    c.problem = "--gateway: " + describe(ep.error());
    return c;
  }
  c.server = *ep;
  if (auto t = a.values.find("--timeout"); t != a.values.end()) {
    auto ms = parse_u64(t->second);
    if (!ms || *ms == 0 || *ms > 3'600'000) {
      c.problem = "--timeout takes milliseconds in [1, 3600000], not '"
                  + t->second + "'";
      return c;
    }
    c.timeout = std::chrono::milliseconds{*ms};
  }
  c.timeout += extra;
  return c;
}

std::string value_or(const args& a, const std::string& key,
                     std::string fallback = {}) {
  auto i = a.values.find(key);
  return i == a.values.end() ? fallback : i->second;
}

std::string iso_time(int64_t ms) {
  if (ms <= 0)
    return "-";
  auto secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

} // namespace

std::optional<std::string>
empty_argument(const std::vector<std::string>& args,
               std::initializer_list<const char*> names) {
  size_t i = 0;
  for (auto* name : names) {
    if (i < args.size() && args[i].empty())
      return std::string{"the "} + name + " is empty";
    ++i;
  }
  return std::nullopt;
}

bool has_gateway_flag(int argc, char** argv) {
  for (int i = 0; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--gateway" || arg.starts_with("--gateway="))
      return true;
  }
  return false;
}

int workflow_gateway_main(int argc, char** argv) {
  constexpr const char* cmd = "workflow";
  args a;
  if (auto problem = parse(argc, argv,
                           {"--gateway", "--timeout", "--input-type", "--input",
                            "--wait", "--payload-type", "--payload", "--id",
                            "--reason", "--status", "--limit", "--cursor"},
                           {"--reject-if-exists", "--json", "--help"}, a))
    return usage(cmd, *problem, workflow_usage);
  if (a.flags.count("--help")) {
    std::fputs(workflow_usage, stdout);
    return exit_ok;
  }
  if (a.positional.empty())
    return usage(cmd, "no subcommand given", workflow_usage);
  auto sub = a.positional.front();
  auto& pos = a.positional;
  static const std::map<std::string, size_t> arity{
      {"start", 3},  {"describe", 3}, {"result", 3},
      {"signal", 4}, {"query", 4},    {"cancel", 3},
      {"update", 4}, {"list", 2},     {"history", 3}};
  auto it = arity.find(sub);
  if (it == arity.end())
    return usage(cmd, "unknown subcommand '" + sub + "'", workflow_usage);
  if (pos.size() != it->second)
    return usage(cmd,
                 sub + " takes "
                     + (it->second == 2   ? std::string{"TYPE"}
                        : it->second == 3 ? std::string{"TYPE ID"}
                                          : std::string{"TYPE ID NAME"}),
                 workflow_usage);
  if (auto empty = empty_argument({pos.begin() + 1, pos.end()},
                                  {"workflow type", "workflow id"}))
    return usage(cmd, *empty, workflow_usage);
  // Options that belong to other subcommands are usage errors, so that a
  // typo does not silently do something else.
  static const std::map<std::string, std::set<std::string>> allowed{
      {"start", {"--input-type", "--input", "--reject-if-exists"}},
      {"describe", {}},
      {"result", {"--wait"}},
      {"signal", {"--payload-type", "--payload", "--id"}},
      {"query", {}},
      {"cancel", {"--reason", "--id"}},
      {"update", {"--payload-type", "--payload", "--id"}},
      {"list", {"--status", "--limit", "--cursor"}},
      {"history", {"--json"}}};
  auto& ok = allowed.at(sub);
  for (auto& [k, v] : a.values)
    if (k != "--gateway" && k != "--timeout" && ok.count(k) == 0)
      return usage(cmd, k + " does not apply to '" + sub + "'", workflow_usage);
  for (auto& f : a.flags)
    if (ok.count(f) == 0)
      return usage(cmd, f + " does not apply to '" + sub + "'", workflow_usage);
  std::chrono::milliseconds wait{0};
  if (auto w = a.values.find("--wait"); w != a.values.end()) {
    auto ms = parse_u64(w->second);
    if (!ms || *ms > 3'600'000)
      return usage(cmd, "--wait takes milliseconds, not '" + w->second + "'",
                   workflow_usage);
    wait = std::chrono::milliseconds{*ms};
  }
  auto conn = connect_args(a, wait);
  if (!conn.server)
    return usage(cmd, conn.problem, workflow_usage);
  if (sub == "start" && !a.values.count("--input-type"))
    return usage(cmd, "start needs --input-type", workflow_usage);
  if ((a.values.count("--payload") > 0)
      != (a.values.count("--payload-type") > 0))
    return usage(cmd, "--payload and --payload-type go together",
                 workflow_usage);
  size_t limit = 100;
  if (auto l = a.values.find("--limit"); l != a.values.end()) {
    auto n = parse_u64(l->second);
    if (!n || *n == 0)
      return usage(cmd,
                   "--limit takes a positive number, not '" + l->second + "'",
                   workflow_usage);
    limit = static_cast<size_t>(*n);
  }
  cluster::gateway_client client{*conn.server, conn.timeout};
  auto& type = pos[1];
  caf::expected<std::string> res{std::string{}};
  if (sub == "start") {
    res = client.start_workflow(type, pos[2], value_or(a, "--input-type"),
                                value_or(a, "--input"),
                                a.flags.count("--reject-if-exists") > 0);
  } else if (sub == "describe") {
    res = client.describe_workflow(type, pos[2]);
  } else if (sub == "result") {
    bool finished = false;
    res = client.workflow_result(type, pos[2], wait, &finished);
    if (res) {
      print_body(*res);
      if (!finished) {
        std::fprintf(
            stderr, "granary workflow: %s/%s has not finished after %lld ms\n",
            type.c_str(), pos[2].c_str(), static_cast<long long>(wait.count()));
        return exit_failed;
      }
      if (res->find("\"status\":\"COMPLETED\"") == std::string::npos) {
        std::fprintf(stderr, "granary workflow: %s/%s did not complete\n",
                     type.c_str(), pos[2].c_str());
        return exit_failed;
      }
      return exit_ok;
    }
  } else if (sub == "signal") {
    res = client.signal_workflow(type, pos[2], pos[3],
                                 value_or(a, "--payload-type"),
                                 value_or(a, "--payload"), value_or(a, "--id"));
  } else if (sub == "query") {
    res = client.query_workflow(type, pos[2], pos[3]);
  } else if (sub == "cancel") {
    res = client.cancel_workflow(type, pos[2], value_or(a, "--reason"),
                                 value_or(a, "--id"));
  } else if (sub == "update") {
    res = client.update_workflow(type, pos[2], pos[3],
                                 value_or(a, "--payload-type"),
                                 value_or(a, "--payload"), value_or(a, "--id"));
  } else if (sub == "list") {
    res = client.list_workflows(type, value_or(a, "--status"), limit,
                                value_or(a, "--cursor"));
    if (res) {
      print_body(*res);
      // A silo that did not answer: the list is partial, which is a failure.
      google::protobuf::Struct obj;
      size_t missing = 0;
      if (google::protobuf::util::JsonStringToMessage(*res, &obj).ok())
        if (auto i = obj.fields().find("unreachable"); i != obj.fields().end())
          for (auto& v : i->second.list_value().values()) {
            auto& f = v.struct_value().fields();
            std::string parts;
            if (auto p = f.find("partitions"); p != f.end())
              for (auto& n : p->second.list_value().values())
                parts += (parts.empty() ? "" : ",")
                         + std::to_string(
                             static_cast<long long>(n.number_value()));
            auto gw = f.count("gateway") ? f.at("gateway").string_value()
                                         : std::string{"?"};
            std::fprintf(stderr,
                         "granary workflow: the gateway at %s did not answer; "
                         "the workflows of partitions %s are missing\n",
                         gw.c_str(), parts.c_str());
            ++missing;
          }
      return missing == 0 ? exit_ok : exit_failed;
    }
  } else {
    res = client.workflow_history(type, pos[2]);
    if (res && !a.flags.count("--json")) {
      auto h = cluster::history_from_json(*res);
      if (!h)
        return fail(cmd, h.error());
      std::fputs(cluster::to_text(*h).c_str(), stdout);
      return exit_ok;
    }
  }
  if (!res)
    return fail(cmd, res.error());
  print_body(*res);
  return exit_ok;
}

int dead_letters_gateway_main(int argc, char** argv) {
  constexpr const char* cmd = "dead-letters";
  args a;
  if (auto problem = parse(argc, argv, {"--gateway", "--timeout", "--limit"},
                           {"--json", "--help"}, a))
    return usage(cmd, *problem, dead_letters_usage);
  if (a.flags.count("--help")) {
    std::fputs(dead_letters_usage, stdout);
    return exit_ok;
  }
  auto conn = connect_args(a);
  if (!conn.server)
    return usage(cmd, conn.problem, dead_letters_usage);
  std::string action = "list";
  auto pos = a.positional;
  if (!pos.empty()) {
    action = pos.front();
    pos.erase(pos.begin());
  }
  if (action != "list" && action != "requeue" && action != "drop")
    return usage(cmd, "unknown action '" + action + "'", dead_letters_usage);
  if (action == "list" && !pos.empty())
    return usage(cmd, "list takes no arguments", dead_letters_usage);
  if (action != "list" && pos.size() != 3)
    return usage(cmd, action + " takes TYPE KEY MSG_ID", dead_letters_usage);
  if (auto empty
      = empty_argument(pos, {"grain type", "grain key", "message id"}))
    return usage(cmd, *empty, dead_letters_usage);
  size_t limit = 1'000;
  if (auto l = a.values.find("--limit"); l != a.values.end()) {
    auto n = parse_u64(l->second);
    if (!n || *n == 0)
      return usage(cmd,
                   "--limit takes a positive number, got '" + l->second + "'",
                   dead_letters_usage);
    limit = static_cast<size_t>(*n);
  }
  cluster::gateway_client client{*conn.server, conn.timeout};
  if (action != "list") {
    auto res = action == "requeue"
                   ? client.requeue_dead_letter(pos[0], pos[1], pos[2])
                   : client.drop_dead_letter(pos[0], pos[1], pos[2]);
    if (!res)
      return fail(cmd, res.error());
    std::printf("%s dead letter %s of %s/%s\n",
                action == "requeue" ? "requeued" : "dropped", pos[2].c_str(),
                pos[0].c_str(), pos[1].c_str());
    return exit_ok;
  }
  auto res = client.dead_letters(limit);
  if (!res)
    return fail(cmd, res.error());
  auto page = cluster::parse_dead_letters(*res);
  if (!page)
    return fail(cmd, page.error());
  print_dead_letters(page->letters, limit, a.flags.count("--json") > 0);
  // A silo that did not answer: the list is partial, which is a failure.
  for (auto& gw : page->unreachable)
    std::fprintf(stderr,
                 "granary dead-letters: the gateway at %s did not answer; "
                 "the dead letters of its silo are missing\n",
                 gw.c_str());
  if (!page->unreachable.empty())
    return exit_failed;
  return exit_ok;
}

void print_dead_letters(const std::vector<dead_letter_info>& letters,
                        size_t limit, bool json) {
  for (auto& dl : letters) {
    auto dead_at = iso_time(dl.dead_ms);
    if (json)
      std::printf("{\"type\":%s,\"key\":%s,\"msg_id\":%s,"
                  "\"payload_type\":%s,\"attempts\":%u,\"dead_at\":%s,"
                  "\"error\":%s}\n",
                  json_quote(dl.target.type).c_str(),
                  json_quote(dl.target.key).c_str(),
                  json_quote(dl.msg_id).c_str(),
                  json_quote(dl.payload_type).c_str(), dl.attempts,
                  json_quote(dead_at).c_str(), json_quote(dl.error).c_str());
    else
      std::printf("%s/%s  msg %s  %s  attempts %u  at %s\n    %s\n",
                  dl.target.type.c_str(), dl.target.key.c_str(),
                  dl.msg_id.c_str(), dl.payload_type.c_str(), dl.attempts,
                  dead_at.c_str(), dl.error.c_str());
  }
  if (!json)
    std::printf("%zu dead letter(s)%s\n", letters.size(),
                letters.size() == limit ? " (limit reached)" : "");
}

int grain_main(int argc, char** argv) {
  constexpr const char* cmd = "grain";
  args a;
  if (auto problem = parse(
          argc, argv, {"--gateway", "--timeout", "--type", "--message", "--id"},
          {"--help"}, a))
    return usage(cmd, *problem, grain_usage);
  if (a.flags.count("--help")) {
    std::fputs(grain_usage, stdout);
    return exit_ok;
  }
  auto& pos = a.positional;
  if (pos.empty() || (pos[0] != "call" && pos[0] != "send"))
    return usage(cmd, "the subcommands are 'call' and 'send'", grain_usage);
  if (pos.size() != 3)
    return usage(cmd, pos[0] + " takes TYPE KEY", grain_usage);
  if (auto empty = empty_argument({pos.begin() + 1, pos.end()},
                                  {"grain type", "grain key"}))
    return usage(cmd, *empty, grain_usage);
  if (!a.values.count("--type"))
    return usage(cmd, "--type MESSAGE_TYPE is required", grain_usage);
  if (pos[0] == "call" && a.values.count("--id"))
    return usage(cmd, "--id applies to 'send' only", grain_usage);
  auto conn = connect_args(a);
  if (!conn.server)
    return usage(cmd, conn.problem, grain_usage);
  cluster::gateway_client client{*conn.server, conn.timeout};
  auto res
      = pos[0] == "call"
            ? client.call_grain(pos[1], pos[2], value_or(a, "--type"),
                                value_or(a, "--message"))
            : client.send_grain(pos[1], pos[2], value_or(a, "--type"),
                                value_or(a, "--message"), value_or(a, "--id"));
  if (!res)
    return fail(cmd, res.error());
  print_body(*res);
  return exit_ok;
}

int cluster_main(int argc, char** argv) {
  constexpr const char* cmd = "cluster";
  args a;
  if (auto problem
      = parse(argc, argv, {"--gateway", "--timeout"}, {"--help", "--json"}, a))
    return usage(cmd, *problem, cluster_usage);
  if (a.flags.count("--help")) {
    std::fputs(cluster_usage, stdout);
    return exit_ok;
  }
  if (a.positional.size() != 1 || a.positional[0] != "status")
    return usage(cmd, "the only subcommand is 'status'", cluster_usage);
  auto conn = connect_args(a);
  if (!conn.server)
    return usage(cmd, conn.problem, cluster_usage);
  cluster::gateway_client client{*conn.server, conn.timeout};
  auto res = client.cluster_status();
  if (!res)
    return fail(cmd, res.error());
  if (a.flags.count("--json")) {
    print_body(*res);
    return exit_ok;
  }
  google::protobuf::Struct obj;
  if (!google::protobuf::util::JsonStringToMessage(*res, &obj).ok())
    return fail(cmd, make_error(errc::malformed_message,
                                "the gateway's answer is not JSON"));
  auto& f = obj.fields();
  auto text = [](const google::protobuf::Struct& s, const char* k) {
    auto i = s.fields().find(k);
    return i == s.fields().end() ? std::string{} : i->second.string_value();
  };
  auto number = [](const google::protobuf::Struct& s, const char* k) {
    auto i = s.fields().find(k);
    return i == s.fields().end()
               ? 0u
               : static_cast<unsigned>(i->second.number_value());
  };
  std::printf("cluster %s (asked silo %s", text(obj, "cluster_id").c_str(),
              text(obj, "silo_id").c_str());
  if (f.count("map_version"))
    std::printf(", table version %u, map version %u",
                number(obj, "table_version"), number(obj, "map_version"));
  std::printf(")\n");
  if (auto silos = f.find("silos"); silos != f.end())
    for (auto& v : silos->second.list_value().values()) {
      auto& s = v.struct_value();
      std::printf("  %-16s %-13s %3u partitions", text(s, "silo_id").c_str(),
                  text(s, "status").c_str(), number(s, "partitions"));
      if (!text(s, "address").empty())
        std::printf("  silo %s", text(s, "address").c_str());
      std::printf("  gateway %s", text(s, "gateway").c_str());
      if (auto votes = number(s, "suspicions"))
        std::printf("  %u suspicion votes", votes);
      if (!text(s, "owned").empty())
        std::printf("\n  %-16s owns %s", "", text(s, "owned").c_str());
      std::printf("\n");
    }
  return exit_ok;
}

} // namespace granary::cli

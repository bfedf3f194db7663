// `granary dead-letters [list|requeue|drop]`: a running silo's dead
// letters through its gateway, or a stopped silo's in its data directory.

#include <cstdio>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "persistence/rocksdb_storage.hpp"
#include "runtime/admin.hpp"
#include "runtime/error.hpp"
#include "runtime/json.hpp"
#include "tools/granary/cli.hpp"

namespace granary::cli {

namespace {

struct dead_letters_args {
  gateway_args gw;
  std::string data_dir;
  size_t limit = 1'000;
  bool json = false;
  std::string type;
  std::string key;
  std::string msg_id;
};

using args_ptr = std::shared_ptr<dead_letters_args>;

int failed(const caf::error& err) {
  fail("dead-letters", describe(err));
  if (code_of(err) == errc::data_dir_locked)
    fail("dead-letters", "stop the silo that uses this directory first");
  return exit_failed;
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

// One JSON object per line with --json, else two lines each and a count
// (noting when the limit was reached).
void print(const std::vector<dead_letter_info>& letters,
           const dead_letters_args& a) {
  for (auto& dl : letters) {
    auto dead_at = iso_time(dl.dead_ms);
    if (a.json)
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
  if (!a.json)
    std::printf("%zu dead letter(s)%s\n", letters.size(),
                letters.size() == a.limit ? " (limit reached)" : "");
}

// The stopped silo's storage. A list only reads; requeue and drop write,
// but never create a directory.
auto open_store(const dead_letters_args& a, bool read_only) {
  return rocksdb_storage::open(rocksdb_config{
      .data_dir = a.data_dir,
      .create_if_missing = false,
      .read_only = read_only,
  });
}

int list(const dead_letters_args& a) {
  if (a.data_dir.empty()) {
    auto res = a.gw.client().dead_letters(a.limit);
    if (!res)
      return failed(res.error());
    auto page = cluster::parse_dead_letters(*res);
    if (!page)
      return failed(page.error());
    print(page->letters, a);
    // A silo that did not answer: the list is partial, which is a failure.
    for (auto& gw : page->unreachable)
      fail("dead-letters", "the gateway at " + gw + " did not answer; the "
                               + "dead letters of its silo are missing");
    return page->unreachable.empty() ? exit_ok : exit_failed;
  }
  auto store = open_store(a, true);
  if (!store)
    return failed(store.error());
  auto letters = list_dead_letters(**store, a.limit);
  if (!letters)
    return failed(letters.error());
  print(*letters, a);
  return exit_ok;
}

// Requeues (or drops) the dead letter.
int settle(const dead_letters_args& a, bool requeue) {
  grain_id target{a.type, a.key};
  caf::error err;
  if (a.data_dir.empty()) {
    auto client = a.gw.client();
    auto res = requeue ? client.requeue_dead_letter(a.type, a.key, a.msg_id)
                       : client.drop_dead_letter(a.type, a.key, a.msg_id);
    if (!res)
      err = res.error();
  } else if (auto store = open_store(a, false); !store) {
    err = store.error();
  } else {
    err = requeue ? requeue_dead_letter_offline(**store, target, a.msg_id)
                  : drop_dead_letter_offline(**store, target, a.msg_id);
  }
  if (err)
    return failed(err);
  std::printf("%s dead letter %s of %s\n", requeue ? "requeued" : "dropped",
              a.msg_id.c_str(), to_string(target).c_str());
  return exit_ok;
}

// Where the dead letters are, on the group and on each action; --limit
// and --json where they are listed.
void add_options(CLI::App& app, dead_letters_args& a, bool listing) {
  add_gateway_options(app, a.gw, false);
  add_data_option(app, a.data_dir);
  if (!listing)
    return;
  app.add_option("--limit", a.limit, "Most dead letters listed")
      ->type_name("N")
      ->transform(count(1))
      ->capture_default_str();
  app.add_flag("--json", a.json, "One JSON object per dead letter and line");
}

void add_settle(CLI::App& group, const args_ptr& a, command& run,
                bool requeue) {
  auto* sub = group.add_subcommand(
      requeue ? "requeue" : "drop",
      requeue ? "Puts a dead letter back in its grain's inbox"
              : "Deletes a dead letter");
  add_options(*sub, *a, false);
  add_id_part(*sub, "TYPE", a->type, "grain type");
  add_id_part(*sub, "KEY", a->key, "grain key");
  add_id_part(*sub, "MSG_ID", a->msg_id, "message id");
  on_parse(sub, a, run, [requeue](const dead_letters_args& a) {
    return settle(a, requeue);
  });
}

} // namespace

void add_dead_letters(CLI::App& app, command& run) {
  auto a = std::make_shared<dead_letters_args>();
  auto* group = app.add_subcommand("dead-letters",
                                   "Lists, requeues and drops dead letters");
  group->require_subcommand(0, 1);
  add_options(*group, *a, true);
  add_options(*group->add_subcommand("list", "Lists dead letters"), *a, true);
  add_settle(*group, a, run, true);
  add_settle(*group, a, run, false);
  // Set last: the subcommands would inherit it.
  group->footer("Without a subcommand, lists. With --data DIR, a requeued "
                "message\nwaits in its grain's inbox until the silo starts.");
  // Runs after the actions' callbacks: without an action, lists.
  group->callback([a, &run] {
    require_data_or_gateway(a->data_dir, a->gw);
    if (!run)
      run = [a] { return list(*a); };
  });
}

} // namespace granary::cli

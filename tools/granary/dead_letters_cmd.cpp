#include "tools/granary/dead_letters_cmd.hpp"

#include <charconv>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "persistence/rocksdb_storage.hpp"
#include "runtime/admin.hpp"
#include "runtime/error.hpp"
#include "tools/granary/gateway_cmd.hpp"

namespace granary::cli {

namespace {

constexpr int exit_ok = 0;
constexpr int exit_failed = 1;
constexpr int exit_usage = 2;

constexpr const char* usage_text
    = "usage: granary dead-letters --data DIR [list] [--limit N] [--json]\n"
      "       granary dead-letters --data DIR requeue TYPE KEY MSG_ID\n"
      "       granary dead-letters --data DIR drop TYPE KEY MSG_ID\n"
      "\n"
      "Works on the data directory of a stopped silo. A requeued message is\n"
      "stored in its grain's inbox and processed when the silo starts.\n"
      "With --gateway HOST:PORT instead of --data, works on a running silo\n"
      "(see 'granary dead-letters --gateway HOST:PORT --help').\n";

int usage(const std::string& what) {
  std::fprintf(stderr, "granary dead-letters: %s\n%s", what.c_str(),
               usage_text);
  return exit_usage;
}

int fail(const caf::error& err) {
  std::fprintf(stderr, "granary dead-letters: %s\n", describe(err).c_str());
  if (code_of(err) == errc::data_dir_locked)
    std::fprintf(stderr, "granary dead-letters: stop the silo that uses this "
                         "directory first\n");
  return exit_failed;
}

} // namespace

int dead_letters_main(int argc, char** argv) {
  if (has_gateway_flag(argc, argv))
    return dead_letters_gateway_main(argc, argv);
  std::string data_dir;
  std::string action = "list";
  std::vector<std::string> positional;
  size_t limit = 1'000;
  bool json = false;
  for (int i = 0; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--data" && i + 1 < argc) {
      data_dir = argv[++i];
    } else if (arg == "--limit" && i + 1 < argc) {
      std::string_view text = argv[++i];
      auto res = std::from_chars(text.data(), text.data() + text.size(), limit);
      if (res.ec != std::errc{} || res.ptr != text.data() + text.size()
          || limit == 0)
        return usage("--limit takes a positive number, got '"
                     + std::string{text} + "'");
    } else if (arg == "--json") {
      json = true;
    } else if (arg == "--help" || arg == "-h") {
      std::fputs(usage_text, stdout);
      return exit_ok;
    } else if (arg.starts_with("--")) {
      return usage("unknown option '" + std::string{arg} + "'");
    } else {
      positional.emplace_back(arg);
    }
  }
  if (data_dir.empty())
    return usage("--data DIR or --gateway HOST:PORT is required");
  if (!positional.empty()) {
    action = positional.front();
    positional.erase(positional.begin());
  }
  if (action != "list" && action != "requeue" && action != "drop")
    return usage("unknown action '" + action + "'");
  if (action == "list" && !positional.empty())
    return usage("list takes no arguments");
  if (action != "list" && positional.size() != 3)
    return usage(action + " takes TYPE KEY MSG_ID");
  if (auto empty
      = empty_argument(positional, {"grain type", "grain key", "message id"}))
    return usage(*empty);
  // A list only reads; requeue and drop write, but never create a
  // directory.
  auto store = rocksdb_storage::open(rocksdb_config{
      .data_dir = data_dir,
      .create_if_missing = false,
      .read_only = action == "list",
  });
  if (!store)
    return fail(store.error());
  if (action == "list") {
    auto letters = list_dead_letters(**store, limit);
    if (!letters)
      return fail(letters.error());
    print_dead_letters(*letters, limit, json);
    return exit_ok;
  }
  grain_id target{positional[0], positional[1]};
  auto err = action == "requeue"
                 ? requeue_dead_letter_offline(**store, target, positional[2])
                 : drop_dead_letter_offline(**store, target, positional[2]);
  if (err)
    return fail(err);
  std::printf("%s dead letter %s of %s\n",
              action == "requeue" ? "requeued" : "dropped",
              positional[2].c_str(), to_string(target).c_str());
  return exit_ok;
}

} // namespace granary::cli

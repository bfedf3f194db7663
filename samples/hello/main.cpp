// The hello sample: one embedded silo on RocksDB, a durable counter and a
// reminder. Run it twice on the same data directory: the counter resumes.

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "persistence/rocksdb_storage.hpp"
#include "samples/hello/counter.hpp"

using namespace std::chrono_literals;

int main(int argc, char** argv) {
  std::string data_dir = "granary-hello-data";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--data") == 0 && i + 1 < argc) {
      data_dir = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--data DIR]\n", argv[0]);
      return 2;
    }
  }
  auto store = granary::rocksdb_storage::open({.data_dir = data_dir});
  if (!store) {
    std::fprintf(stderr, "hello: %s\n",
                 granary::describe(store.error()).c_str());
    return 1;
  }
  granary::grain_registry registry;
  if (auto err = granary::register_grain<hello::counter>(registry)) {
    std::fprintf(stderr, "hello: %s\n", granary::describe(err).c_str());
    return 1;
  }
  auto s = granary::silo::start(granary::silo_config{}, std::move(registry),
                                std::move(*store));
  if (!s) {
    std::fprintf(stderr, "hello: %s\n", granary::describe(s.error()).c_str());
    return 1;
  }
  granary::grain_ref<hello::counter> counter{**s, "greeter"};
  auto before = counter.call<hello::Value>(hello::Get{});
  if (!before) {
    std::fprintf(stderr, "hello: %s\n",
                 granary::describe(before.error()).c_str());
    return 1;
  }
  std::printf("hello: counter 'greeter' starts at %lld (reminder fired %lld "
              "times before)\n",
              static_cast<long long>(before->value()),
              static_cast<long long>(before->reminders()));
  hello::StartReminder start;
  start.set_period_ms(100);
  if (auto err = counter.send(start)) {
    std::fprintf(stderr, "hello: %s\n", granary::describe(err).c_str());
    return 1;
  }
  for (int i = 1; i <= 10; ++i) {
    hello::Add add;
    add.set_delta(i);
    if (auto err = counter.send(add)) {
      std::fprintf(stderr, "hello: %s\n", granary::describe(err).c_str());
      return 1;
    }
  }
  std::this_thread::sleep_for(550ms);
  auto after = counter.call<hello::Value>(hello::Get{});
  if (!after) {
    std::fprintf(stderr, "hello: %s\n",
                 granary::describe(after.error()).c_str());
    return 1;
  }
  std::printf("hello: added 1..10 durably; counter is now %lld, reminder "
              "fired %lld times in total\n",
              static_cast<long long>(after->value()),
              static_cast<long long>(after->reminders()));
  std::printf("hello: state lives in %s; run me again to see it resume\n",
              data_dir.c_str());
  if (auto err = (*s)->stop()) {
    std::fprintf(stderr, "hello: %s\n", granary::describe(err).c_str());
    return 1;
  }
  return 0;
}

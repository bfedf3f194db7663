// Micro-benchmarks of the costs every durable turn pays: key encoding
// (runtime/keys.hpp), envelope serialization and parsing (granary.pb.h),
// and building the write batch of a turn and of a partition's burst.

#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "granary.pb.h"
#include "runtime/grain_id.hpp"
#include "runtime/keys.hpp"
#include "runtime/storage.hpp"

namespace {

using namespace granary;

const grain_id sample_id{"bench.counter", "c12345"};

wire::Envelope sample_envelope(size_t payload) {
  wire::Envelope env;
  env.set_msg_id("2.1f3a9c");
  env.mutable_target()->set_type(sample_id.type);
  env.mutable_target()->set_key(sample_id.key);
  env.set_payload_type("granary.bench.Ping");
  env.set_payload(std::string(payload, 'x'));
  env.set_accepted_ms(1'700'000'000'000);
  return env;
}

void bm_stable_hash(benchmark::State& state) {
  for (auto _ : state)
    benchmark::DoNotOptimize(partition_of(sample_id, 64));
}
BENCHMARK(bm_stable_hash);

void bm_grain_prefix(benchmark::State& state) {
  for (auto _ : state)
    benchmark::DoNotOptimize(keys::grain_prefix(17, sample_id));
}
BENCHMARK(bm_grain_prefix);

void bm_dedup_key(benchmark::State& state) {
  // What a durable turn builds for its dedup record.
  for (auto _ : state)
    benchmark::DoNotOptimize(
        keys::with_suffix(keys::grain_prefix(17, sample_id), "2.1f3a9c"));
}
BENCHMARK(bm_dedup_key);

void bm_seq_key(benchmark::State& state) {
  auto prefix = keys::grain_prefix(17, sample_id);
  uint64_t seq = 0;
  for (auto _ : state)
    benchmark::DoNotOptimize(keys::with_seq(prefix, ++seq));
}
BENCHMARK(bm_seq_key);

void bm_decode_key(benchmark::State& state) {
  auto key = keys::with_seq(keys::grain_prefix(17, sample_id), 42);
  for (auto _ : state)
    benchmark::DoNotOptimize(keys::decode(key));
}
BENCHMARK(bm_decode_key);

void bm_envelope_serialize(benchmark::State& state) {
  auto env = sample_envelope(static_cast<size_t>(state.range(0)));
  std::string out;
  for (auto _ : state) {
    out.clear();
    env.SerializeToString(&out);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations())
                          * static_cast<int64_t>(out.size()));
}
BENCHMARK(bm_envelope_serialize)->Arg(32)->Arg(1'024);

void bm_envelope_parse(benchmark::State& state) {
  auto bytes = sample_envelope(static_cast<size_t>(state.range(0)))
                   .SerializeAsString();
  wire::Envelope env;
  for (auto _ : state) {
    benchmark::DoNotOptimize(env.ParseFromString(bytes));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations())
                          * static_cast<int64_t>(bytes.size()));
}
BENCHMARK(bm_envelope_parse)->Arg(32)->Arg(1'024);

void bm_turn_batch(benchmark::State& state) {
  // The two records of a durable turn: dedup and state.
  std::string dedup_value(8, '\0');
  std::string state_value(40, 'x');
  for (auto _ : state) {
    write_batch wb;
    auto prefix = keys::grain_prefix(17, sample_id);
    wb.put(column::dedup, keys::with_suffix(prefix, "2.1f3a9c"), dedup_value);
    wb.put(column::state, std::move(prefix), state_value);
    benchmark::DoNotOptimize(wb.bytes());
  }
}
BENCHMARK(bm_turn_batch);

void bm_burst_puts(benchmark::State& state) {
  // What a partition does: the records of `range(0)` turns go straight into
  // its one pending batch.
  auto turns = static_cast<size_t>(state.range(0));
  std::string value(40, 'x');
  auto prefix = keys::grain_prefix(17, sample_id);
  for (auto _ : state) {
    write_batch burst;
    for (size_t i = 0; i < turns; ++i) {
      burst.put(column::dedup, keys::with_seq(prefix, i), value);
      burst.put(column::state, prefix, value);
    }
    benchmark::DoNotOptimize(burst.size());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations())
                          * static_cast<int64_t>(turns));
}
BENCHMARK(bm_burst_puts)->Arg(4)->Arg(64);

} // namespace

BENCHMARK_MAIN();

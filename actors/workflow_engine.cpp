#include "actors/workflow_engine.hpp"

#include <charconv>

namespace granary {

namespace {

const char* kind_name(wire::JournalEntry::Kind kind) {
  switch (kind) {
    case wire::JournalEntry::CALL:
      return "call";
    case wire::JournalEntry::SLEEP:
      return "sleep";
    case wire::JournalEntry::NOW:
      return "now";
    case wire::JournalEntry::RANDOM:
      return "random";
    case wire::JournalEntry::SIDE_EFFECT:
      return "side_effect";
    case wire::JournalEntry::VERSION:
      return "version";
    default:
      return "unknown";
  }
}

std::string describe_command(wire::JournalEntry::Kind kind,
                             const std::string& target,
                             const std::string& payload_type) {
  std::string out = kind_name(kind);
  out += '(';
  out += target;
  if (!payload_type.empty()) {
    out += ", ";
    out += payload_type;
  }
  out += ')';
  return out;
}

// SplitMix64: a deterministic function of the run's seed and the sequence
// number, so replay returns the same numbers.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

} // namespace

wire::JournalEntry* workflow_engine::entry(uint64_t seq) {
  if (seq >= static_cast<uint64_t>(state_->journal_size()))
    return nullptr;
  return state_->mutable_journal(static_cast<int>(seq));
}

const wire::JournalEntry* workflow_engine::entry(uint64_t seq) const {
  if (seq >= static_cast<uint64_t>(state_->journal_size()))
    return nullptr;
  return &state_->journal(static_cast<int>(seq));
}

void workflow_engine::halt(const wire::JournalEntry& recorded,
                           wire::JournalEntry::Kind kind,
                           const std::string& target,
                           const std::string& payload_type) {
  halted_ = "workflow " + to_string(*self_) + ": non-determinism at seq "
            + std::to_string(recorded.seq()) + ": the journal has "
            + describe_command(recorded.kind(), recorded.target(),
                               recorded.payload_type())
            + " but the code now issues "
            + describe_command(kind, target, payload_type)
            + "; the run is suspended and its data is unchanged";
  throw detail::workflow_halt{};
}

wire::JournalEntry& workflow_engine::next(wire::JournalEntry::Kind kind,
                                          const std::string& target,
                                          const std::string& payload_type,
                                          bool& is_new) {
  if (!halted_.empty())
    throw detail::workflow_halt{};
  auto seq = next_seq_++;
  if (auto* e = entry(seq)) {
    if (e->kind() != kind || e->target() != target
        || e->payload_type() != payload_type)
      halt(*e, kind, target, payload_type);
    is_new = false;
    return *e;
  }
  if (seq >= max_journal) {
    halted_ = "workflow " + to_string(*self_) + " exceeded "
              + std::to_string(max_journal)
              + " journal entries; use continue-as-new";
    throw detail::workflow_halt{};
  }
  auto* e = state_->add_journal();
  e->set_seq(seq);
  e->set_kind(kind);
  e->set_target(target);
  e->set_payload_type(payload_type);
  is_new = true;
  return *e;
}

uint64_t workflow_engine::call(const grain_id& to,
                               const google::protobuf::Message& msg) {
  bool is_new = false;
  auto& e = next(wire::JournalEntry::CALL, to_string(to),
                 msg.GetDescriptor()->full_name(), is_new);
  if (is_new) {
    caf::error err;
    if (!turn_)
      err = make_error(errc::invalid_argument,
                       "workflow command issued outside a turn");
    else
      err = turn_->call(to, msg, std::to_string(e.seq()));
    if (err) {
      // Journaled as the command's outcome, so replay sees the same error.
      e.set_completed(true);
      e.set_error_code(static_cast<uint32_t>(code_of(err)));
      e.set_error(describe(err));
    }
  }
  return e.seq();
}

uint64_t workflow_engine::sleep(std::chrono::milliseconds duration) {
  bool is_new = false;
  auto& e = next(wire::JournalEntry::SLEEP, std::to_string(duration.count()),
                 {}, is_new);
  if (is_new) {
    wire::WakeUp wake;
    wake.set_seq(e.seq());
    caf::error err;
    if (!turn_)
      err = make_error(errc::invalid_argument,
                       "workflow command issued outside a turn");
    else
      err = turn_->set_timer("wf-sleep-" + std::to_string(e.seq()), duration,
                             wake);
    if (err) {
      e.set_completed(true);
      e.set_error_code(static_cast<uint32_t>(code_of(err)));
      e.set_error(describe(err));
    }
  }
  return e.seq();
}

int64_t workflow_engine::now() {
  bool is_new = false;
  auto& e = next(wire::JournalEntry::NOW, {}, {}, is_new);
  if (is_new) {
    e.set_value(turn_ ? turn_->now_ms() : 0);
    e.set_completed(true);
  }
  return e.value();
}

uint64_t workflow_engine::random() {
  bool is_new = false;
  auto& e = next(wire::JournalEntry::RANDOM, {}, {}, is_new);
  if (is_new) {
    e.set_value(static_cast<int64_t>(mix(state_->random_seed() ^ e.seq())));
    e.set_completed(true);
  }
  return static_cast<uint64_t>(e.value());
}

int64_t workflow_engine::version(const std::string& change_id, int64_t min,
                                 int64_t max) {
  if (!halted_.empty())
    throw detail::workflow_halt{};
  if (auto* e = entry(next_seq_)) {
    if (e->kind() == wire::JournalEntry::VERSION && e->target() == change_id) {
      ++next_seq_;
      if (e->value() < min || e->value() > max) {
        halted_ = "workflow " + to_string(*self_) + ": change '" + change_id
                  + "' was recorded at version " + std::to_string(e->value())
                  + ", outside the supported range [" + std::to_string(min)
                  + ", " + std::to_string(max) + "]";
        throw detail::workflow_halt{};
      }
      return e->value();
    }
    // This run passed this point before the change existed: it keeps the
    // old branch, and no sequence number is used.
    return min;
  }
  bool is_new = false;
  auto& e = next(wire::JournalEntry::VERSION, change_id, {}, is_new);
  e.set_value(max);
  e.set_completed(true);
  return max;
}

const wire::JournalEntry*
workflow_engine::replay_side_effect(const std::string& name,
                                    const std::string& type) {
  if (!halted_.empty())
    throw detail::workflow_halt{};
  auto* e = entry(next_seq_);
  if (!e)
    return nullptr;
  bool is_new = false;
  return &next(wire::JournalEntry::SIDE_EFFECT, name, type, is_new);
}

void workflow_engine::record_side_effect(const std::string& name,
                                         const std::string& type,
                                         const google::protobuf::Message* value,
                                         const caf::error& err) {
  bool is_new = false;
  auto& e = next(wire::JournalEntry::SIDE_EFFECT, name, type, is_new);
  e.set_completed(true);
  if (err) {
    e.set_error_code(static_cast<uint32_t>(code_of(err)));
    e.set_error(describe(err));
  } else if (value) {
    e.set_result_type(type);
    value->SerializeToString(e.mutable_result());
  }
}

bool workflow_engine::completed(uint64_t seq) const {
  auto* e = entry(seq);
  return e && e->completed();
}

caf::error workflow_engine::error_of(uint64_t seq) const {
  auto* e = entry(seq);
  if (!e)
    return make_error(errc::not_found,
                      "no journal entry " + std::to_string(seq));
  if (e->error_code() == 0)
    return caf::none;
  return make_error(static_cast<errc>(e->error_code()), e->error());
}

caf::error workflow_engine::result_into(uint64_t seq,
                                        google::protobuf::Message& out) const {
  if (auto err = error_of(seq))
    return err;
  auto* e = entry(seq);
  auto expected = out.GetDescriptor()->full_name();
  if (e->result_type() != expected)
    return make_error(errc::malformed_message,
                      "result of seq " + std::to_string(seq) + " is '"
                          + e->result_type() + "', the workflow expects '"
                          + expected + "'");
  if (!out.ParseFromString(e->result()))
    return make_error(errc::malformed_message,
                      "result of seq " + std::to_string(seq)
                          + " does not parse as " + expected);
  return caf::none;
}

std::coroutine_handle<>
workflow_engine::complete_call(const wire::Reply& reply) {
  uint64_t seq = 0;
  auto& c = reply.correlation();
  auto res = std::from_chars(c.data(), c.data() + c.size(), seq);
  if (res.ec != std::errc{} || res.ptr != c.data() + c.size())
    return {};
  auto* e = entry(seq);
  if (!e || e->kind() != wire::JournalEntry::CALL || e->completed())
    return {}; // Unknown or duplicate reply.
  e->set_completed(true);
  if (reply.error_code() != 0) {
    e->set_error_code(reply.error_code());
    e->set_error(reply.error());
  } else {
    e->set_result_type(reply.payload_type());
    e->set_result(reply.payload());
  }
  if (parked_ && parked_seq_ == seq)
    return std::exchange(parked_, {});
  return {};
}

std::coroutine_handle<> workflow_engine::complete_sleep(uint64_t seq) {
  auto* e = entry(seq);
  if (!e || e->kind() != wire::JournalEntry::SLEEP || e->completed())
    return {};
  e->set_completed(true);
  if (parked_ && parked_seq_ == seq)
    return std::exchange(parked_, {});
  return {};
}

} // namespace granary

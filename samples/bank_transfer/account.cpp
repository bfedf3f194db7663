#include "samples/bank_transfer/account.hpp"

#include <limits>

namespace granary::bank {

namespace {

std::string money(int64_t amount) {
  return std::to_string(amount);
}

} // namespace

void account::define(handlers<account>& h) {
  h.on(&account::open)
      .on(&account::freeze)
      .on(&account::debit)
      .on(&account::credit)
      .on(&account::refund)
      .on(&account::settle)
      .on(&account::get_balance);
}

caf::expected<Balance> account::open(turn&, const Open& msg) {
  if (msg.initial() < 0)
    return make_error(errc::invalid_argument,
                      "Open.initial must not be negative, got "
                          + money(msg.initial()));
  if (view().opened())
    return current();
  auto& st = state();
  st.set_opened(true);
  st.set_initial(msg.initial());
  st.set_balance(msg.initial());
  return current();
}

caf::expected<Balance> account::freeze(turn&, const Freeze& msg) {
  if (view().frozen() != msg.frozen())
    state().set_frozen(msg.frozen());
  return current();
}

caf::expected<Receipt> account::debit(turn& t, const Debit& msg) {
  const auto& id = msg.transfer_id();
  if (id.empty())
    return refused(Receipt::INVALID, "Debit.transfer_id is empty");
  auto* known = find(id);
  if (known && known->has_debit())
    return known->debit();
  Receipt answer;
  if (!view().opened()) {
    answer = refused(Receipt::NOT_OPEN,
                     "account " + t.self().key + " is not open");
  } else if (msg.amount() <= 0) {
    answer = refused(Receipt::INVALID, "debit amount must be positive, got "
                                           + money(msg.amount()));
  } else if (known && known->has_refund()) {
    answer = refused(Receipt::CANCELLED, "transfer " + id
                                             + " was refunded before its "
                                               "debit arrived");
  } else if (view().holds_size() >= static_cast<int>(max_holds)) {
    answer = refused(Receipt::TOO_MANY_HOLDS,
                     "account " + t.self().key + " has "
                         + std::to_string(max_holds)
                         + " transfers in flight; retry later");
  } else if (view().balance() < msg.amount()) {
    answer = refused(Receipt::INSUFFICIENT_FUNDS,
                     "insufficient funds in " + t.self().key + ": balance "
                         + money(view().balance()) + ", debit "
                         + money(msg.amount()));
  } else {
    auto& st = state();
    st.set_balance(st.balance() - msg.amount());
    (*st.mutable_holds())[id] = msg.amount();
    answer = applied(msg.amount());
  }
  *record(id).mutable_debit() = answer;
  return answer;
}

caf::expected<Receipt> account::credit(turn& t, const Credit& msg) {
  const auto& id = msg.transfer_id();
  if (id.empty())
    return refused(Receipt::INVALID, "Credit.transfer_id is empty");
  if (auto* known = find(id); known && known->has_credit())
    return known->credit();
  Receipt answer;
  if (!view().opened()) {
    answer = refused(Receipt::NOT_OPEN,
                     "account " + t.self().key + " is not open");
  } else if (msg.amount() <= 0) {
    answer = refused(Receipt::INVALID, "credit amount must be positive, got "
                                           + money(msg.amount()));
  } else if (view().frozen()) {
    answer = refused(Receipt::FROZEN, "account " + t.self().key + " is frozen");
  } else if (view().balance()
             > std::numeric_limits<int64_t>::max() - msg.amount()) {
    answer = refused(Receipt::INVALID, "credit of " + money(msg.amount())
                                           + " would overflow " + t.self().key);
  } else {
    state().set_balance(view().balance() + msg.amount());
    answer = applied(msg.amount());
  }
  *record(id).mutable_credit() = answer;
  return answer;
}

caf::expected<Receipt> account::refund(turn&, const Refund& msg) {
  const auto& id = msg.transfer_id();
  if (id.empty())
    return refused(Receipt::INVALID, "Refund.transfer_id is empty");
  auto* known = find(id);
  if (known && known->has_refund())
    return known->refund();
  Receipt answer;
  if (auto i = view().holds().find(id); i != view().holds().end()) {
    auto amount = i->second;
    auto& st = state();
    st.mutable_holds()->erase(id);
    st.set_balance(st.balance() + amount);
    answer = applied(amount);
  } else if (known && known->has_settle() && known->settle().ok()) {
    answer = refused(Receipt::SETTLED,
                     "transfer " + id + " was settled; nothing to refund");
  } else {
    // No debit was applied: record the refund, so that a late debit of
    // this transfer is refused instead of taking money nobody returns.
    answer = applied(0, "nothing was debited for transfer " + id);
  }
  *record(id).mutable_refund() = answer;
  return answer;
}

caf::expected<Receipt> account::settle(turn&, const Settle& msg) {
  const auto& id = msg.transfer_id();
  if (id.empty())
    return refused(Receipt::INVALID, "Settle.transfer_id is empty");
  if (auto* known = find(id); known && known->has_settle())
    return known->settle();
  Receipt answer;
  if (auto i = view().holds().find(id); i != view().holds().end()) {
    auto amount = i->second;
    state().mutable_holds()->erase(id);
    answer = applied(amount);
  } else {
    answer
        = refused(Receipt::NOT_HELD, "no debit of transfer " + id + " is held");
  }
  *record(id).mutable_settle() = answer;
  return answer;
}

caf::expected<Balance> account::get_balance(turn&, const GetBalance&) {
  return current();
}

Receipt account::refused(Receipt::Refusal why, std::string reason) const {
  Receipt r;
  r.set_ok(false);
  r.set_refusal(why);
  r.set_reason(std::move(reason));
  r.set_balance(view().balance());
  return r;
}

Receipt account::applied(int64_t amount, std::string reason) const {
  Receipt r;
  r.set_ok(true);
  r.set_amount(amount);
  r.set_reason(std::move(reason));
  r.set_balance(view().balance());
  return r;
}

const TransferRecord* account::find(const std::string& transfer_id) const {
  auto i = view().applied().find(transfer_id);
  return i != view().applied().end() ? &i->second : nullptr;
}

TransferRecord& account::record(const std::string& transfer_id) {
  auto& st = state();
  auto& records = *st.mutable_applied();
  if (auto i = records.find(transfer_id); i != records.end())
    return i->second;
  if (records.size() >= max_applied) {
    // Bounded by max_applied; holds are fewer than records, so one without
    // a hold exists.
    auto oldest = records.end();
    for (auto i = records.begin(); i != records.end(); ++i)
      if (!st.holds().contains(i->first)
          && (oldest == records.end()
              || i->second.seq() < oldest->second.seq()))
        oldest = i;
    if (oldest != records.end())
      records.erase(oldest);
  }
  auto& rec = records[transfer_id];
  rec.set_seq(st.next_seq());
  st.set_next_seq(st.next_seq() + 1);
  return rec;
}

Balance account::current() const {
  auto& st = view();
  Balance b;
  b.set_opened(st.opened());
  b.set_initial(st.initial());
  b.set_balance(st.balance());
  b.set_frozen(st.frozen());
  int64_t held = 0;
  for (auto& [id, amount] : st.holds())
    held += amount;
  b.set_held(held);
  b.set_holds(static_cast<uint32_t>(st.holds_size()));
  b.set_applied(static_cast<uint32_t>(st.applied_size()));
  return b;
}

} // namespace granary::bank

#pragma once

#include <string>
#include <string_view>

#include "actors/grain.hpp"
#include "bank.pb.h"

namespace granary::bank {

/// A bank account. `Debit` moves money from the balance into a hold,
/// `Settle` makes it final, `Refund` returns it; `Credit` adds money unless
/// the account is frozen. Each step of a transfer id is applied at most
/// once: a repeated request gets the first answer again. A refused step is
/// an answer (`Receipt.ok = false` with a reason), never an error, so that
/// it is not retried into a dead letter.
class account : public grain<account, AccountState> {
public:
  static constexpr std::string_view type_name = "bank.account";

  /// Transfer ids remembered per account. Beyond it the oldest record
  /// without a hold is forgotten: a step repeated after that is applied
  /// again (the window of the at-most-once guarantee).
  static constexpr size_t max_applied = 4'096;

  /// Debits held at once (transfers in flight from this account); further
  /// debits are refused with `TOO_MANY_HOLDS`. Smaller than `max_applied`,
  /// so that a record without a hold can always be evicted.
  static constexpr size_t max_holds = 1'024;

  static void define(handlers<account>& h);

  /// Opens the account with `initial` money; later calls change nothing.
  caf::expected<Balance> open(turn& t, const Open& msg);

  /// Freezes or thaws the account: a frozen account refuses credits.
  caf::expected<Balance> freeze(turn& t, const Freeze& msg);

  /// Takes money out of the balance into a hold for the transfer.
  caf::expected<Receipt> debit(turn& t, const Debit& msg);

  /// Adds money, unless the account is frozen or not open.
  caf::expected<Receipt> credit(turn& t, const Credit& msg);

  /// Returns a held debit to the balance; cancels a debit yet to come.
  caf::expected<Receipt> refund(turn& t, const Refund& msg);

  /// Makes a held debit final.
  caf::expected<Receipt> settle(turn& t, const Settle& msg);

  /// Reads the balance (a transient call).
  caf::expected<Balance> get_balance(turn& t, const GetBalance& msg);

private:
  // The answer for a refused step.
  Receipt refused(Receipt::Refusal why, std::string reason) const;

  // The answer for an applied step that moved `amount`.
  Receipt applied(int64_t amount, std::string reason = {}) const;

  // The record of `transfer_id`, or nullptr.
  const TransferRecord* find(const std::string& transfer_id) const;

  // The record of `transfer_id`, created (evicting the oldest one without
  // a hold when full) if needed.
  TransferRecord& record(const std::string& transfer_id);

  Balance current() const;
};

} // namespace granary::bank

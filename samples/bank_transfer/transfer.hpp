#pragma once

#include <string>
#include <string_view>

#include "actors/workflow.hpp"
#include "bank.pb.h"
#include "samples/bank_transfer/account.hpp"

namespace granary::bank {

/// Moves money between two accounts as a saga: debits `from` (the money is
/// held there), credits `to`, then settles the hold. When the credit is
/// refused (a frozen account) or fails, the debit is refunded and the run
/// fails with an error saying so. The workflow id is the transfer id, so
/// starting a transfer twice runs it once. Progress is published under
/// "stage" as a `TransferStage`; a final stage's detail holds the outcome.
class transfer : public workflow<transfer, TransferRequest, TransferResult> {
public:
  static constexpr std::string_view type_name = "bank.transfer";

  task<TransferResult> run(workflow_context& ctx, const TransferRequest& req);
};

/// Registers the account grain and the transfer workflow.
caf::error register_bank(grain_registry& registry);

/// What a client sees of a transfer.
struct transfer_view {
  /// The run's status (NEW when it was never started).
  wire::WorkflowState::Status status = wire::WorkflowState::NEW;
  /// The latest published stage (STARTED before the first).
  TransferStage::Stage stage = TransferStage::STARTED;
  /// The stage's detail: the outcome, for a final stage.
  std::string detail;

  /// True once the run completed or failed.
  bool finished() const noexcept {
    return status == wire::WorkflowState::COMPLETED
           || status == wire::WorkflowState::FAILED;
  }
};

/// Starts transfer `id` with a durable send whose message id derives from
/// `id`, so that resending it (after a crash or on a second run) starts
/// nothing new. Returns once the start is durable.
caf::error start_transfer(silo& s, const std::string& id,
                          const TransferRequest& req);

/// Asynchronous `start_transfer`: `done` runs once the start is durable.
void start_transfer_async(silo& s, const std::string& id,
                          const TransferRequest& req, silo::send_handler done);

/// Reads transfer `id` with one transient query (no replay, no write).
caf::expected<transfer_view> view_transfer(silo& s, const std::string& id);

/// Name of `stage` in lower case, e.g. "insufficient_funds".
std::string to_string(TransferStage::Stage stage);

} // namespace granary::bank

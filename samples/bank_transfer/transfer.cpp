#include "samples/bank_transfer/transfer.hpp"

#include <algorithm>
#include <cctype>

#include "actors/saga.hpp"

namespace granary::bank {

namespace {

// Progress is informational: a failed publish (more than 64 names, which
// this workflow never uses) must not fail a transfer that moved money.
void progress(workflow_context& ctx, TransferStage::Stage stage,
              std::string detail) {
  TransferStage value;
  value.set_stage(stage);
  value.set_detail(std::move(detail));
  static_cast<void>(ctx.publish("stage", value));
}

std::string amount_text(int64_t amount) {
  return std::to_string(amount);
}

} // namespace

task<TransferResult> transfer::run(workflow_context& ctx,
                                   const TransferRequest& req) {
  const std::string id = ctx.workflow_id();
  const std::string what = "transfer " + id + " of " + amount_text(req.amount())
                           + " from '" + req.from() + "' to '" + req.to() + "'";
  if (req.from().empty() || req.to().empty() || req.from() == req.to()
      || req.amount() <= 0) {
    auto msg = what
               + ": invalid request (needs two different accounts and a "
                 "positive amount)";
    progress(ctx, TransferStage::REJECTED, msg);
    co_return make_error(errc::invalid_argument, msg);
  }
  progress(ctx, TransferStage::DEBITING, what);
  const grain_id from = id_of<account>(req.from());
  const grain_id to = id_of<account>(req.to());
  Debit debit;
  debit.set_transfer_id(id);
  debit.set_amount(req.amount());
  auto debited = co_await ctx.call<Receipt>(from, debit);
  if (!debited || !debited->ok()) {
    // A debit that failed with an error was dead-lettered and might be
    // requeued later: a refund cancels it for good (the account then
    // refuses it). A refused debit needs no refund.
    std::string why;
    if (!debited) {
      why = describe(debited.error());
      Refund cancel;
      cancel.set_transfer_id(id);
      auto cancelled = co_await ctx.call<Receipt>(from, cancel);
      if (!cancelled)
        why += "; cancelling it failed too: " + describe(cancelled.error());
    } else {
      why = debited->reason();
    }
    bool broke = debited && debited->refusal() == Receipt::INSUFFICIENT_FUNDS;
    auto msg = what + ": debit refused, nothing moved: " + why;
    progress(ctx,
             broke ? TransferStage::INSUFFICIENT_FUNDS
                   : TransferStage::REJECTED,
             msg);
    co_return make_error(errc::invalid_argument, msg);
  }
  saga undo;
  auto added = undo.add([&ctx, from, id]() -> task<google::protobuf::Empty> {
    Refund refund;
    refund.set_transfer_id(id);
    auto refunded = co_await ctx.call<Receipt>(from, refund);
    if (!refunded)
      co_return refunded.error();
    if (!refunded->ok())
      co_return make_error(errc::handler_failed, "refund refused by " + from.key
                                                     + ": "
                                                     + refunded->reason());
    co_return google::protobuf::Empty{};
  });
  if (added)
    co_return added; // Unreachable: one compensation of 10,000.
  progress(ctx, TransferStage::CREDITING, what);
  Credit credit;
  credit.set_transfer_id(id);
  credit.set_amount(req.amount());
  auto credited = co_await ctx.call<Receipt>(to, credit);
  if (!credited || !credited->ok()) {
    auto why = credited ? credited->reason() : describe(credited.error());
    progress(ctx, TransferStage::COMPENSATING,
             what + ": credit failed: " + why);
    auto compensated = co_await undo.compensate();
    if (!compensated) {
      auto msg = what + ": credit failed (" + why
                 + ") and so did the refund of the debit ("
                 + describe(compensated.error()) + "); "
                 + amount_text(req.amount()) + " stays held at '" + req.from()
                 + "'";
      progress(ctx, TransferStage::COMPENSATION_FAILED, msg);
      co_return make_error(errc::handler_failed, msg);
    }
    auto msg = what + ": credit failed (" + why
               + "); the debit was refunded (compensated)";
    progress(ctx, TransferStage::COMPENSATED, msg);
    co_return make_error(errc::handler_failed, msg);
  }
  progress(ctx, TransferStage::SETTLING, what);
  Settle settle;
  settle.set_transfer_id(id);
  auto settled = co_await ctx.call<Receipt>(from, settle);
  if (!settled || !settled->ok()) {
    auto msg = what + ": the money moved, but settling the hold at '"
               + req.from() + "' failed: "
               + (settled ? settled->reason() : describe(settled.error()));
    progress(ctx, TransferStage::SETTLE_FAILED, msg);
    co_return make_error(errc::handler_failed, msg);
  }
  TransferResult result;
  result.set_amount(req.amount());
  result.set_from_balance(settled->balance());
  result.set_to_balance(credited->balance());
  progress(ctx, TransferStage::COMPLETED, what + ": completed");
  co_return result;
}

caf::error register_bank(grain_registry& registry) {
  if (auto err = register_grain<account>(registry))
    return err;
  // Transfers run no activities.
  return register_workflow<transfer>(registry, nullptr);
}

caf::error start_transfer(silo& s, const std::string& id,
                          const TransferRequest& req) {
  return s.send(id_of<transfer>(id), req, "start:" + id);
}

void start_transfer_async(silo& s, const std::string& id,
                          const TransferRequest& req, silo::send_handler done) {
  s.send_async(id_of<transfer>(id), req, "start:" + id, std::move(done));
}

caf::expected<transfer_view> view_transfer(silo& s, const std::string& id) {
  auto q = std::make_shared<wire::QueryWorkflow>();
  q->set_name("stage");
  auto res = s.call(id_of<transfer>(id), std::move(q));
  if (!res)
    return std::move(res.error());
  auto* qr = dynamic_cast<const wire::QueryResult*>(res->get());
  if (!qr)
    return make_error(errc::malformed_message, "query answer of transfer " + id
                                                   + " is not a QueryResult");
  transfer_view out;
  out.status = qr->status();
  if (!qr->type().empty()) {
    TransferStage st;
    if (qr->type() != TransferStage::descriptor()->full_name()
        || !st.ParseFromString(qr->data()))
      return make_error(errc::malformed_message,
                        "stage of transfer " + id + " is a " + qr->type()
                            + ", not a granary.bank.TransferStage");
    out.stage = st.stage();
    out.detail = st.detail();
  }
  return out;
}

std::string to_string(TransferStage::Stage stage) {
  auto name = TransferStage::Stage_Name(stage);
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return name;
}

} // namespace granary::bank

// The bank-transfer sample on in-memory storage: transfers move money once,
// a frozen target is compensated, insufficient funds move nothing,
// duplicate starts run once, money is conserved, and a restart mid-way
// finishes every transfer exactly once.

#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/keys.hpp"
#include "runtime/memory_storage.hpp"
#include "samples/bank_transfer/transfer.hpp"

using namespace granary;
using namespace granary::bank;
using namespace std::chrono_literals;

namespace {

// Polls `pred` until it holds or `timeout` passes.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = 10s) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred())
      return true;
    std::this_thread::sleep_for(5ms);
  }
  return pred();
}

using shared_storage = shared_memory_storage;

struct planned {
  std::string id;
  TransferRequest req;
};

class bank_transfer_test : public ::testing::Test {
protected:
  void SetUp() override {
    mem = std::make_shared<memory_storage>();
    clk = std::make_shared<manual_clock>();
    cfg.partitions = 8;
    cfg.timer_poll = 10ms;
  }

  std::unique_ptr<silo> start() {
    grain_registry reg;
    if (auto err = register_bank(reg)) {
      ADD_FAILURE() << describe(err);
      return nullptr;
    }
    auto s = silo::start(cfg, std::move(reg),
                         std::make_unique<shared_storage>(mem), clk);
    if (!s) {
      ADD_FAILURE() << describe(s.error());
      return nullptr;
    }
    return std::move(*s);
  }

  static void open(silo& s, const std::string& name, int64_t initial,
                   bool frozen = false) {
    Open msg;
    msg.set_initial(initial);
    grain_ref<account> acct{s, name};
    auto res = acct.call<Balance>(msg);
    ASSERT_TRUE(res) << describe(res.error());
    if (frozen) {
      Freeze f;
      f.set_frozen(true);
      auto fr = acct.call<Balance>(f);
      ASSERT_TRUE(fr) << describe(fr.error());
      ASSERT_TRUE(fr->frozen());
    }
  }

  static Balance balance_of(silo& s, const std::string& name) {
    auto b = grain_ref<account>{s, name}.call<Balance>(GetBalance{});
    EXPECT_TRUE(b) << describe(b.error());
    return b ? *b : Balance{};
  }

  static int64_t money_of(silo& s, const std::string& name) {
    return balance_of(s, name).balance();
  }

  static TransferRequest request(std::string from, std::string to,
                                 int64_t amount) {
    TransferRequest r;
    r.set_from(std::move(from));
    r.set_to(std::move(to));
    r.set_amount(amount);
    return r;
  }

  // Waits until transfer `id` finished and returns what it published.
  static transfer_view finish(silo& s, const std::string& id,
                              std::chrono::milliseconds timeout = 10s) {
    transfer_view last;
    eventually(
        [&] {
          auto v = view_transfer(s, id);
          if (v)
            last = *v;
          return v && v->finished();
        },
        timeout);
    EXPECT_TRUE(last.finished()) << "transfer " << id << " did not finish";
    return last;
  }

  static wire::WorkflowInfo info_of(silo& s, const std::string& id) {
    auto r = s.call(id_of<transfer>(id),
                    std::make_shared<wire::DescribeWorkflow>());
    EXPECT_TRUE(r) << describe(r.error());
    if (!r)
      return {};
    return static_cast<const wire::WorkflowInfo&>(**r);
  }

  // Reads a stored workflow state directly (the silo may be stopped).
  wire::WorkflowState stored_state(const std::string& id) {
    wire::WorkflowState st;
    auto gid = id_of<transfer>(id);
    auto rec
        = mem->get(column::state,
                   keys::grain_prefix(partition_of(gid, cfg.partitions), gid));
    if (rec && *rec) {
      EXPECT_TRUE(st.ParseFromString(**rec));
    }
    return st;
  }

  static std::vector<planned> random_plan(int count, int accounts,
                                          int64_t max_amount, uint64_t seed) {
    std::mt19937_64 rng{seed};
    std::vector<planned> out;
    for (int i = 0; i < count; ++i) {
      auto from = static_cast<int>(rng() % accounts);
      auto to
          = static_cast<int>((from + 1 + rng() % (accounts - 1)) % accounts);
      auto amount = static_cast<int64_t>(1 + rng() % max_amount);
      out.push_back({"r" + std::to_string(seed) + "-" + std::to_string(i),
                     request("acct-" + std::to_string(from),
                             "acct-" + std::to_string(to), amount)});
    }
    return out;
  }

  // Starts every transfer of `plan` (sequential durable sends).
  static void start_plan(silo& s, const std::vector<planned>& plan) {
    for (auto& p : plan)
      ASSERT_FALSE(start_transfer(s, p.id, p.req)) << p.id;
  }

  // Balances that follow from the outcomes: only completed transfers move
  // money, each exactly once.
  static std::map<std::string, int64_t>
  expected_balances(silo& s, const std::vector<planned>& plan,
                    std::map<std::string, int64_t> balances,
                    std::map<TransferStage::Stage, int>& tally) {
    for (auto& p : plan) {
      auto v = finish(s, p.id, 30s);
      ++tally[v.stage];
      if (v.status == wire::WorkflowState::COMPLETED) {
        EXPECT_EQ(v.stage, TransferStage::COMPLETED) << p.id;
        balances[p.req.from()] -= p.req.amount();
        balances[p.req.to()] += p.req.amount();
      }
    }
    return balances;
  }

  std::shared_ptr<memory_storage> mem;
  std::shared_ptr<manual_clock> clk;
  silo_config cfg;
};

} // namespace

TEST_F(bank_transfer_test, a_transfer_moves_the_money_once) {
  auto s = start();
  ASSERT_TRUE(s);
  open(*s, "alice", 100);
  open(*s, "bob", 50);
  ASSERT_FALSE(start_transfer(*s, "t-1", request("alice", "bob", 30)));
  auto v = finish(*s, "t-1");
  EXPECT_EQ(v.status, wire::WorkflowState::COMPLETED) << v.detail;
  EXPECT_EQ(v.stage, TransferStage::COMPLETED);
  TransferResult out;
  ASSERT_TRUE(out.ParseFromString(info_of(*s, "t-1").output()));
  EXPECT_EQ(out.amount(), 30);
  EXPECT_EQ(out.from_balance(), 70);
  EXPECT_EQ(out.to_balance(), 80);
  EXPECT_EQ(money_of(*s, "alice"), 70);
  EXPECT_EQ(money_of(*s, "bob"), 80);
  EXPECT_EQ(balance_of(*s, "alice").held(), 0);
  // Repeating the transfer's steps by hand changes nothing: each transfer
  // id is applied at most once per account.
  Debit debit;
  debit.set_transfer_id("t-1");
  debit.set_amount(30);
  auto again = grain_ref<account>{*s, "alice"}.call<Receipt>(debit);
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->ok());
  Credit credit;
  credit.set_transfer_id("t-1");
  credit.set_amount(30);
  ASSERT_FALSE(s->send(id_of<account>("bob"), credit, "by-hand-credit"));
  Refund refund;
  refund.set_transfer_id("t-1");
  auto refused = grain_ref<account>{*s, "alice"}.call<Receipt>(refund);
  ASSERT_TRUE(refused);
  EXPECT_FALSE(refused->ok());
  EXPECT_EQ(refused->refusal(), Receipt::SETTLED);
  EXPECT_EQ(money_of(*s, "alice"), 70);
  EXPECT_EQ(money_of(*s, "bob"), 80);
}

TEST_F(bank_transfer_test, each_step_of_a_transfer_id_is_applied_at_most_once) {
  auto s = start();
  ASSERT_TRUE(s);
  open(*s, "a", 100);
  grain_ref<account> a{*s, "a"};
  Debit debit;
  debit.set_transfer_id("x");
  debit.set_amount(40);
  for (int i = 0; i < 3; ++i) {
    auto r = a.call<Receipt>(debit);
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->ok());
    // The first answer, every time.
    EXPECT_EQ(r->balance(), 60);
  }
  EXPECT_EQ(balance_of(*s, "a").held(), 40);
  Refund refund;
  refund.set_transfer_id("x");
  for (int i = 0; i < 3; ++i) {
    auto r = a.call<Receipt>(refund);
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->ok());
    EXPECT_EQ(r->amount(), 40);
  }
  EXPECT_EQ(money_of(*s, "a"), 100);
  EXPECT_EQ(balance_of(*s, "a").held(), 0);
  // A refund that arrives before its debit cancels the debit.
  refund.set_transfer_id("y");
  auto early = a.call<Receipt>(refund);
  ASSERT_TRUE(early);
  EXPECT_TRUE(early->ok());
  EXPECT_EQ(early->amount(), 0);
  debit.set_transfer_id("y");
  auto late = a.call<Receipt>(debit);
  ASSERT_TRUE(late);
  EXPECT_FALSE(late->ok());
  EXPECT_EQ(late->refusal(), Receipt::CANCELLED);
  EXPECT_EQ(money_of(*s, "a"), 100);
  Credit credit;
  credit.set_transfer_id("z");
  credit.set_amount(5);
  for (int i = 0; i < 3; ++i)
    ASSERT_FALSE(
        s->send(id_of<account>("a"), credit, "credit-" + std::to_string(i)));
  EXPECT_TRUE(eventually([&] { return money_of(*s, "a") == 105; }));
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(money_of(*s, "a"), 105);
}

TEST_F(bank_transfer_test, a_transfer_to_a_frozen_account_is_compensated) {
  auto s = start();
  ASSERT_TRUE(s);
  open(*s, "alice", 100);
  open(*s, "ice", 20, true);
  ASSERT_FALSE(start_transfer(*s, "t-frozen", request("alice", "ice", 40)));
  auto v = finish(*s, "t-frozen");
  EXPECT_EQ(v.status, wire::WorkflowState::FAILED);
  EXPECT_EQ(v.stage, TransferStage::COMPENSATED);
  auto err = info_of(*s, "t-frozen").error();
  EXPECT_NE(err.find("frozen"), std::string::npos) << err;
  EXPECT_NE(err.find("compensated"), std::string::npos) << err;
  EXPECT_EQ(money_of(*s, "alice"), 100);
  EXPECT_EQ(money_of(*s, "ice"), 20);
  EXPECT_EQ(balance_of(*s, "alice").held(), 0);
  // Debit, credit, then the refund at the source.
  std::vector<std::string> targets;
  auto st = stored_state("t-frozen");
  for (auto& e : st.journal())
    targets.push_back(e.target());
  std::vector<std::string> expected{"bank.account/alice", "bank.account/ice",
                                    "bank.account/alice"};
  EXPECT_EQ(targets, expected);
}

TEST_F(bank_transfer_test, insufficient_funds_fail_without_moving_money) {
  auto s = start();
  ASSERT_TRUE(s);
  open(*s, "poor", 10);
  open(*s, "bob", 0);
  ASSERT_FALSE(start_transfer(*s, "t-poor", request("poor", "bob", 50)));
  auto v = finish(*s, "t-poor");
  EXPECT_EQ(v.status, wire::WorkflowState::FAILED);
  EXPECT_EQ(v.stage, TransferStage::INSUFFICIENT_FUNDS);
  auto err = info_of(*s, "t-poor").error();
  EXPECT_NE(err.find("insufficient funds"), std::string::npos) << err;
  EXPECT_EQ(money_of(*s, "poor"), 10);
  EXPECT_EQ(money_of(*s, "bob"), 0);
  EXPECT_EQ(balance_of(*s, "poor").held(), 0);
  // Only the debit was tried; nothing needed compensating.
  EXPECT_EQ(stored_state("t-poor").journal_size(), 1);
  auto dead = s->dead_letters();
  ASSERT_TRUE(dead);
  EXPECT_TRUE(dead->empty());
}

TEST_F(bank_transfer_test, a_duplicate_start_does_not_move_money_twice) {
  auto s = start();
  ASSERT_TRUE(s);
  open(*s, "alice", 100);
  open(*s, "bob", 0);
  auto req = request("alice", "bob", 30);
  // The same start twice, then the same id with other messages (and even
  // another amount): one run.
  ASSERT_FALSE(start_transfer(*s, "t-dup", req));
  ASSERT_FALSE(start_transfer(*s, "t-dup", req));
  auto other = request("alice", "bob", 70);
  ASSERT_FALSE(s->send(id_of<transfer>("t-dup"), other, "another-start"));
  ASSERT_FALSE(s->send(id_of<transfer>("t-dup"), req));
  auto v = finish(*s, "t-dup");
  EXPECT_EQ(v.status, wire::WorkflowState::COMPLETED) << v.detail;
  // After it finished: a transient start returns the finished run.
  auto again = s->call(id_of<transfer>("t-dup"),
                       std::make_shared<TransferRequest>(req));
  ASSERT_TRUE(again) << describe(again.error());
  auto& info = static_cast<const wire::WorkflowInfo&>(**again);
  EXPECT_FALSE(info.started());
  EXPECT_EQ(info.status(), wire::WorkflowState::COMPLETED);
  ASSERT_FALSE(start_transfer(*s, "t-dup", req));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(money_of(*s, "alice"), 70);
  EXPECT_EQ(money_of(*s, "bob"), 30);
  EXPECT_EQ(info_of(*s, "t-dup").journal_size(), 3u);
}

TEST_F(bank_transfer_test, money_is_conserved_over_random_transfers) {
  auto s = start();
  ASSERT_TRUE(s);
  constexpr int accounts = 8;
  std::map<std::string, int64_t> initial;
  for (int i = 0; i < accounts; ++i) {
    auto name = "acct-" + std::to_string(i);
    open(*s, name, 500, i == accounts - 1);
    initial[name] = 500;
  }
  auto plan = random_plan(200, accounts, 400, 7);
  start_plan(*s, plan);
  std::map<TransferStage::Stage, int> tally;
  auto expected = expected_balances(*s, plan, initial, tally);
  int64_t total = 0;
  for (auto& [name, money] : expected) {
    auto b = balance_of(*s, name);
    EXPECT_EQ(b.balance(), money) << name;
    EXPECT_EQ(b.held(), 0) << name;
    total += b.balance();
  }
  EXPECT_EQ(total, 500 * accounts);
  // Every kind of outcome happened, and no other.
  EXPECT_GT(tally[TransferStage::COMPLETED], 0);
  EXPECT_GT(tally[TransferStage::COMPENSATED], 0);
  EXPECT_GT(tally[TransferStage::INSUFFICIENT_FUNDS], 0);
  EXPECT_EQ(tally[TransferStage::COMPLETED] + tally[TransferStage::COMPENSATED]
                + tally[TransferStage::INSUFFICIENT_FUNDS],
            200);
  auto dead = s->dead_letters();
  ASSERT_TRUE(dead);
  EXPECT_TRUE(dead->empty());
}

TEST_F(bank_transfer_test, a_restart_mid_way_completes_every_transfer_once) {
  constexpr int accounts = 6;
  std::map<std::string, int64_t> initial;
  auto plan = random_plan(120, accounts, 300, 11);
  // A durable Open with a negative amount fails, and a failed message
  // blocks its account until its retry, which the manual clock holds back:
  // every transfer touching "acct-1" stops there, some with money held at
  // their source, until the clock moves after the restart.
  const std::string stuck = "acct-1";
  {
    auto s = start();
    ASSERT_TRUE(s);
    for (int i = 0; i < accounts; ++i) {
      auto name = "acct-" + std::to_string(i);
      open(*s, name, 400, i == 0);
      initial[name] = 400;
    }
    Open poison;
    poison.set_initial(-1);
    ASSERT_FALSE(s->send(id_of<account>(stuck), poison, "poison"));
    start_plan(*s, plan);
    // Wait until a transfer to the stuck account debited its source.
    ASSERT_TRUE(eventually([&] {
      for (auto& p : plan) {
        if (p.req.to() != stuck)
          continue;
        auto v = view_transfer(*s, p.id);
        if (v && v->stage == TransferStage::CREDITING)
          return true;
      }
      return false;
    }));
    ASSERT_FALSE(s->stop());
  }
  // The stored state is mid-way: transfers are running, money is held.
  size_t running_at_stop = 0;
  for (auto& p : plan) {
    auto st = stored_state(p.id);
    EXPECT_NE(st.status(), wire::WorkflowState::NEW) << p.id;
    if (st.status() == wire::WorkflowState::RUNNING)
      ++running_at_stop;
  }
  EXPECT_GT(running_at_stop, 0u);
  auto s = start();
  ASSERT_TRUE(s);
  // Starting everything again, as the sample does on a second run, must
  // not start anything twice.
  start_plan(*s, plan);
  // Retries of the poison message: it becomes a dead letter and the
  // account's queue moves on.
  ASSERT_TRUE(eventually(
      [&] {
        clk->advance(1'000);
        for (auto& p : plan) {
          auto v = view_transfer(*s, p.id);
          if (!v || !v->finished())
            return false;
        }
        return true;
      },
      30s));
  std::map<TransferStage::Stage, int> tally;
  auto expected = expected_balances(*s, plan, initial, tally);
  int64_t total = 0;
  for (auto& [name, money] : expected) {
    auto b = balance_of(*s, name);
    EXPECT_EQ(b.balance(), money) << name;
    EXPECT_EQ(b.held(), 0) << name;
    total += b.balance();
  }
  EXPECT_EQ(total, 400 * accounts);
  EXPECT_EQ(tally[TransferStage::COMPLETED] + tally[TransferStage::COMPENSATED]
                + tally[TransferStage::INSUFFICIENT_FUNDS],
            static_cast<int>(plan.size()));
  // Replays after the restart issued nothing twice: a finished journal
  // holds debit, credit and settle (or refund), or the refused debit alone.
  for (auto& p : plan) {
    auto st = stored_state(p.id);
    auto want = st.status() == wire::WorkflowState::COMPLETED ? 3 : 0;
    if (st.status() == wire::WorkflowState::FAILED)
      want = st.error().find("compensated") != std::string::npos ? 3 : 1;
    EXPECT_EQ(st.journal_size(), want) << p.id << ": " << st.error();
  }
  // The only dead letter is the poison.
  auto dead = s->dead_letters();
  ASSERT_TRUE(dead);
  ASSERT_EQ(dead->size(), 1u);
  EXPECT_EQ(dead->front().msg_id, "poison");
}

#include "greeter.hpp"

#include <chrono>

namespace greeter {

void greeter::define(granary::handlers<greeter>& h) {
  h.on(&greeter::greet);
}

caf::expected<Greeting> greeter::greet(granary::turn&, const Greet& msg) {
  state().set_count(view().count() + 1);
  Greeting out;
  out.set_text("hello, " + msg.name());
  out.set_count(view().count());
  return out;
}

granary::task<Welcomed> welcome::run(granary::workflow_context& ctx,
                                     const Welcome& in) {
  Greet greet;
  greet.set_name(in.user());
  // Arguments of a co_await are named first: GCC 12 can destroy a
  // temporary inside a co_await expression twice.
  auto target = granary::id_of<greeter>(in.user());
  auto greeting = co_await ctx.call<Greeting>(target, greet);
  if (!greeting)
    co_return greeting.error();
  SendNote note;
  note.set_to(in.user());
  note.set_text(greeting->text());
  granary::activity_options opts;
  opts.max_attempts = 5;
  auto sent = co_await ctx.activity<NoteSent>("greeter.send_note", note, opts);
  if (!sent)
    co_return sent.error();
  // A durable timer: a restart in between resumes the wait, not the steps.
  co_await ctx.sleep(std::chrono::milliseconds{in.pause_ms()});
  Welcomed out;
  out.set_greeting(greeting->text());
  out.set_note_key(sent->key());
  co_return out;
}

namespace {

// The outside world. A real one would pass `ctx.idempotency_key` to its
// API, so that a retried attempt is not applied twice.
caf::expected<NoteSent> send_note(const granary::activity_context& ctx,
                                  const SendNote&) {
  NoteSent out;
  out.set_key(ctx.idempotency_key);
  return out;
}

} // namespace

caf::error register_all(granary::host::registration& r) {
  if (auto err = r.grain<greeter>())
    return err;
  if (auto err = r.workflow<welcome>())
    return err;
  return r.activity<SendNote, NoteSent>("greeter.send_note", send_note);
}

} // namespace greeter

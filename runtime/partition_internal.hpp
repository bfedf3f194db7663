#pragma once

// Internal to the files of the partition actor (partition*.cpp) and
// turn.cpp: helpers they share. Nothing else includes this.

#include <cstdint>
#include <limits>
#include <string>

#include "granary.pb.h"
#include "runtime/error.hpp"
#include "runtime/grain_base.hpp"
#include "runtime/keys.hpp"

namespace granary::detail {

// No time: an outbox entry without a next attempt, no tick armed.
inline constexpr int64_t never = std::numeric_limits<int64_t>::max();

// The value of a dedup record: when the message was processed.
inline std::string encode_ms(int64_t ms) {
  std::string out;
  keys::append_u64(out, static_cast<uint64_t>(ms));
  return out;
}

// The reply to a durable call whose handler answered `msg`.
inline wire::Reply reply_of(const message_ptr& msg) {
  wire::Reply reply;
  if (msg) {
    reply.set_payload_type(msg->GetDescriptor()->full_name());
    msg->SerializeToString(reply.mutable_payload());
  }
  return reply;
}

// The reply to a durable call that failed for good.
inline wire::Reply error_reply(errc code, const std::string& why) {
  wire::Reply reply;
  reply.set_error_code(static_cast<uint32_t>(code));
  reply.set_error(why);
  return reply;
}

} // namespace granary::detail

#include "runtime/error.hpp"

#include <caf/atom.hpp>
#include <caf/message.hpp>
#include <caf/sec.hpp>

namespace granary {

caf::atom_value error_category() {
  return caf::atom("granary");
}

const char* to_string(errc code) {
  switch (code) {
    case errc::unspecified:
      return "unspecified";
    case errc::unknown_grain_type:
      return "unknown_grain_type";
    case errc::unhandled_message:
      return "unhandled_message";
    case errc::payload_too_large:
      return "payload_too_large";
    case errc::malformed_message:
      return "malformed_message";
    case errc::overloaded:
      return "overloaded";
    case errc::timeout:
      return "timeout";
    case errc::handler_failed:
      return "handler_failed";
    case errc::storage_full:
      return "storage_full";
    case errc::storage_failure:
      return "storage_failure";
    case errc::corrupt_record:
      return "corrupt_record";
    case errc::data_dir_locked:
      return "data_dir_locked";
    case errc::silo_stopped:
      return "silo_stopped";
    case errc::invalid_config:
      return "invalid_config";
    case errc::invalid_argument:
      return "invalid_argument";
    case errc::not_found:
      return "not_found";
    case errc::nondeterminism:
      return "nondeterminism";
    case errc::continued_as_new:
      return "continued_as_new";
    case errc::cancelled:
      return "cancelled";
    case errc::already_exists:
      return "already_exists";
    case errc::not_owner:
      return "not_owner";
    case errc::partition_unavailable:
      return "partition_unavailable";
  }
  return "unknown";
}

caf::error make_error(errc code, std::string message) {
  return caf::error{static_cast<uint8_t>(code), error_category(),
                    caf::make_message(std::move(message))};
}

errc code_of(const caf::error& err) {
  if (!err || err.category() != error_category())
    return errc::unspecified;
  return static_cast<errc>(err.code());
}

std::string describe(const caf::error& err) {
  if (!err)
    return "ok";
  if (err.category() != error_category()) {
    if (err.category() == caf::atom("system"))
      return std::string{"caf: "}
             + caf::to_string(static_cast<caf::sec>(err.code()));
    return caf::to_string(err);
  }
  std::string out = to_string(static_cast<errc>(err.code()));
  auto& ctx = err.context();
  if (ctx.size() == 1 && ctx.match_element<std::string>(0)) {
    auto& msg = ctx.get_as<std::string>(0);
    // An error rebuilt from a stored description (a journal entry, an
    // activity result, a remote reply: code and describe() text) already
    // starts with its code; do not say it twice.
    if (msg.size() > out.size() + 1 && msg.compare(0, out.size(), out) == 0
        && msg.compare(out.size(), 2, ": ") == 0)
      return msg;
    out += ": ";
    out += msg;
  }
  return out;
}

} // namespace granary

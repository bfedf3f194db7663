#include "runtime/error.hpp"

#include <iterator>

#include <caf/atom.hpp>
#include <caf/message.hpp>
#include <caf/sec.hpp>

namespace granary {

caf::atom_value error_category() {
  return caf::atom("granary");
}

namespace {

struct errc_row {
  errc code;
  const char* name;
  unsigned status;
  const char* text;
};

constexpr errc_row errc_rows[] = {
#define GRANARY_ERRC_ROW(name, number, status, text)                           \
  {errc::name, #name, status, text},
    GRANARY_ERRC(GRANARY_ERRC_ROW)
#undef GRANARY_ERRC_ROW
};

static_assert(std::size(errc_rows) == all_errc.size());

// Checks the rules of the table: 0 means "no error", a number names one
// code only, and the number of a removed code is never given to another.
constexpr bool errc_numbers_valid() {
  for (size_t i = 0; i < std::size(errc_rows); ++i) {
    auto n = static_cast<uint8_t>(errc_rows[i].code);
    if (n == 0)
      return false;
    for (size_t j = i + 1; j < std::size(errc_rows); ++j)
      if (n == static_cast<uint8_t>(errc_rows[j].code))
        return false;
    for (auto r : retired_errc_numbers)
      if (n == r)
        return false;
  }
  for (size_t i = 0; i < retired_errc_numbers.size(); ++i)
    for (size_t j = i + 1; j < retired_errc_numbers.size(); ++j)
      if (retired_errc_numbers[i] == retired_errc_numbers[j])
        return false;
  return true;
}

static_assert(errc_numbers_valid(),
              "an error code number is 0, used twice or retired");

constexpr bool errc_statuses_valid() {
  for (auto& row : errc_rows)
    if (row.status < 400 || row.status > 599)
      return false;
  return true;
}

static_assert(errc_statuses_valid(), "an error's HTTP status is not 4xx/5xx");

const errc_row* row_of(errc code) {
  for (auto& row : errc_rows)
    if (row.code == code)
      return &row;
  return nullptr;
}

} // namespace

const char* to_string(errc code) {
  auto* row = row_of(code);
  return row ? row->name : "unknown";
}

std::optional<errc> errc_from_name(std::string_view name) {
  for (auto& row : errc_rows)
    if (name == row.name)
      return row.code;
  return std::nullopt;
}

const char* describe_code(errc code) {
  auto* row = row_of(code);
  return row ? row->text : "an error code unknown to this version";
}

unsigned http_status(errc code) {
  auto* row = row_of(code);
  return row ? row->status : 500;
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

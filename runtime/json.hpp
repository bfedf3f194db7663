#pragma once

#include <string>
#include <string_view>

namespace granary {

/// Returns `text` as a quoted JSON string, escaping quotes, backslashes and
/// control characters.
std::string json_quote(std::string_view text);

} // namespace granary

#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace granary {

/// Returns `text` as a quoted JSON string, escaping quotes, backslashes and
/// control characters. Bytes that are not well-formed UTF-8 become U+FFFD,
/// so that the result is always valid UTF-8 JSON.
std::string json_quote(std::string_view text);

/// Returns true if `text` is well-formed UTF-8: no stray continuation
/// bytes, no overlong forms, no surrogates and nothing above U+10FFFF.
bool is_valid_utf8(std::string_view text);

/// Returns the deepest nesting of objects and arrays in the JSON `text`,
/// counting brackets outside strings only. Stops at `limit + 1`, so that
/// the cost stays linear in the length of the text.
size_t json_nesting(std::string_view text, size_t limit);

} // namespace granary

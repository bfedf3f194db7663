#pragma once

// The gateway's JSON, on nlohmann-json: request bodies checked against one
// field table per endpoint, answers built as ordered objects, and the
// protobuf messages inside both (protobuf's JSON mapping, by type name).

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>

#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <google/protobuf/message.h>
#include <nlohmann/json.hpp>

#include "http/message.hpp"
#include "runtime/error.hpp"

namespace granary::cluster::detail {

/// Answers keep the order in which their fields are added.
using json = nlohmann::ordered_json;

/// What a field of a request body holds.
enum class field_type {
  /// A JSON string.
  text,
  /// true or false.
  flag,
  /// A JSON object: a protobuf message, typed by another field.
  message,
};

/// One field of a request body: the schema of a body is the list of its
/// fields, which also names the known ones in errors.
struct field {
  std::string_view name;
  field_type type = field_type::text;
  bool required = false;
};

/// A request body, checked against its fields: a JSON object (an empty
/// body means `{}`) with known fields only, each of its type, and the
/// required ones present (null counts as absent).
class body {
public:
  /// Parses `text` and checks it against `fields`. A body nested deeper
  /// than `max_json_depth` is refused before it is parsed.
  static caf::expected<body> parse(std::string_view text,
                                   std::initializer_list<field> fields);

  /// A text field; empty when absent.
  std::string text(std::string_view name) const;

  /// A flag; false when absent.
  bool flag(std::string_view name) const;

  /// A message field; null when absent.
  const nlohmann::json* message(std::string_view name) const;

private:
  const nlohmann::json* find(std::string_view name) const;

  nlohmann::json obj_;
};

/// Renders `j` compactly, with invalid UTF-8 replaced by U+FFFD.
std::string dump(const json& j);

/// A JSON answer; the body ends with a newline.
http::response json_reply(unsigned status, const json& j);

/// The error shape of every answer: `{"error":{"code","message"}}`, with
/// `Retry-After` when `retry_after_ms` is positive.
http::response error_reply(unsigned status, errc code,
                           const std::string& message,
                           uint64_t retry_after_ms = 0);

/// `err` as an answer, with the HTTP status of its code (and the retry
/// hint of `overloaded` and `storage_full`).
http::response error_reply(const caf::error& err);

/// `m` in protobuf's JSON mapping (field names as in the .proto, every
/// primitive field printed).
json message_json(const google::protobuf::Message& m);

/// Serialized `bytes` of message type `type` as JSON; null when there is
/// no type.
json bytes_json(const std::string& type, const std::string& bytes);

/// A message of type `type` from body field `field` (null: the empty
/// message); `invalid_argument` for an unknown type or JSON that is not
/// that message. Stricter than protobuf's parser, which flattens an array
/// nested in a repeated field: that is refused, naming the field.
caf::expected<std::unique_ptr<google::protobuf::Message>>
message_from_json(std::string_view field, std::string_view type,
                  const nlohmann::json* value);

} // namespace granary::cluster::detail

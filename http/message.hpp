#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/beast/http/fields.hpp>
#include <boost/beast/http/verb.hpp>

namespace granary::http {

/// HTTP methods (Beast's).
using verb = boost::beast::http::verb;

/// Header fields (Beast's, case-insensitive).
using fields = boost::beast::http::fields;

/// A request as a handler sees it.
struct request {
  verb method = verb::get;
  /// The request target as received: path and query.
  std::string target;
  /// The header fields.
  fields headers;
  /// The body (up to the server's `max_body_bytes`).
  std::string body;
  /// Filled by the router: the path parameters by name, percent-decoded.
  std::vector<std::pair<std::string, std::string>> params;
  /// Filled by the router: the query parameters, percent-decoded (the last
  /// of a repeated name wins).
  std::map<std::string, std::string> query;

  /// The target's path, as received (not decoded).
  std::string_view path() const;

  /// The path parameter `name` (empty when there is none).
  const std::string& param(std::string_view name) const;

  /// The query parameter `name`, or null when absent.
  const std::string* query_value(std::string_view name) const;

  /// The header `name` (empty when absent).
  std::string_view header(std::string_view name) const;
};

/// An answer to a request.
struct response {
  unsigned status = 200;
  std::string body;
  /// Sent as `Content-Type` unless empty.
  std::string content_type = "application/json";
  /// More header fields.
  std::vector<std::pair<std::string, std::string>> headers;
  /// When positive, sent as `Retry-After` in whole seconds (rounded up).
  uint64_t retry_after_ms = 0;
  /// Close the connection after this answer.
  bool close = false;
};

/// The name of method `v` ("GET").
std::string_view to_string(verb v);

/// The method named `name`; `verb::unknown` for none.
verb verb_of(std::string_view name);

/// Percent-encodes `segment` for use as one path segment or query value:
/// everything but unreserved characters (RFC 3986) is encoded.
std::string percent_encode(std::string_view segment);

/// Decodes `%XX` escapes; nullopt for a malformed escape.
std::optional<std::string> percent_decode(std::string_view text);

} // namespace granary::http

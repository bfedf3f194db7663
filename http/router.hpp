#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http/message.hpp"
#include "http/server.hpp"

namespace granary::http {

/// An answer the router gives itself (400 for a path or query that does
/// not decode, 404 for no route, 405 for a route without the method).
struct router_error {
  unsigned status = 404;
  /// Says why: "no endpoint /x", "use GET /healthz", ...
  std::string message;
  /// For a 405, the methods the route takes ("GET, POST"); also sent as
  /// `Allow`.
  std::string allow;
};

/// What `router::match` found for a method and a path.
struct route_match {
  /// The handler, or null when `error` says why there is none.
  const handler* target = nullptr;
  /// The path parameters by name, percent-decoded.
  std::vector<std::pair<std::string, std::string>> params;
  /// Set when there is no handler.
  router_error error;
};

/// Routes requests by method and path template, for example
///
///     router r;
///     r.add(verb::post, "/v1/workflows/{type}/{id}/start", start);
///     r.add(verb::get, "/healthz", healthz);
///
/// A template is a path of literal segments and `{name}` parameters, each
/// matching one whole segment (possibly empty). Segments are split at '/'
/// and then percent-decoded, so `%2F` stays inside its segment; one
/// trailing '/' is ignored. Where templates overlap, a literal segment
/// beats a parameter at the first segment they differ in. The router
/// answers 400 for a path or query that does not decode, 404 when no
/// template matches and 405 (with `Allow`) when the matching one lacks
/// the method; `on_error` words these answers. It also decodes the query
/// into `request::query`. Add every route before serving: matching is
/// thread-safe, adding is not.
class router {
public:
  /// Serves `method` on paths of `path_template` with `h`; a template
  /// added twice serves each of its methods.
  router& add(verb method, std::string_view path_template, handler h);

  /// Serves every method on paths of `path_template` with `h` (below a
  /// route for the exact method).
  router& any(std::string_view path_template, handler h);

  /// Words the router's own answers (by default `{"error":"not_found",
  /// "message":...}` and the like).
  router&
  on_error(std::function<response(const request&, const router_error&)> render);

  /// Finds the handler for `method` and `path` (not decoded, no query).
  route_match match(verb method, std::string_view path) const;

  /// Routes one request: fills its `params` and `query` and calls the
  /// handler, or answers 400, 404 or 405.
  void operator()(request req, responder res) const;

private:
  struct segment {
    bool param = false;
    std::string text;
  };

  struct route {
    std::string path;
    std::vector<segment> segments;
    std::vector<std::pair<verb, handler>> methods;
    handler any;
  };

  route& route_for(std::string_view path_template);

  std::vector<route> routes_;
  size_t max_segments_ = 0;
  std::function<response(const request&, const router_error&)> render_;
};

/// Decodes the query of `target` (after '?'), at most `max_pairs` pairs;
/// nullopt when a name or value does not decode.
std::optional<std::map<std::string, std::string>>
parse_query(std::string_view target, size_t max_pairs = 32);

} // namespace granary::http

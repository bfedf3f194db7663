#include "http/router.hpp"

#include "runtime/assert.hpp"
#include "runtime/json.hpp"

namespace granary::http {

namespace {

// Splits `path` (which starts with '/') into its raw segments, dropping
// one trailing empty segment; stops after `limit + 1` segments.
std::vector<std::string_view> split(std::string_view path, size_t limit) {
  std::vector<std::string_view> out;
  size_t pos = 1;
  while (pos <= path.size()) {
    if (out.size() > limit)
      return out;
    auto next = path.find('/', pos);
    if (next == std::string_view::npos)
      next = path.size();
    out.push_back(path.substr(pos, next - pos));
    pos = next + 1;
  }
  if (out.size() > 1 && out.back().empty())
    out.pop_back();
  return out;
}

response default_render(const request&, const router_error& e) {
  response r;
  r.status = e.status;
  auto code = e.status == 404   ? "not_found"
              : e.status == 405 ? "method_not_allowed"
                                : "bad_request";
  r.body = "{\"error\":\"" + std::string{code}
           + "\",\"message\":" + json_quote(e.message) + "}";
  return r;
}

} // namespace

router::route& router::route_for(std::string_view path_template) {
  GRANARY_ASSERT(!path_template.empty() && path_template.front() == '/',
                 "a route template starts with '/'");
  for (auto& r : routes_)
    if (r.path == path_template)
      return r;
  route r;
  r.path = std::string{path_template};
  for (auto part : split(path_template, path_template.size())) {
    segment s;
    if (part.size() >= 2 && part.front() == '{' && part.back() == '}') {
      s.param = true;
      s.text = std::string{part.substr(1, part.size() - 2)};
    } else {
      s.text = std::string{part};
    }
    r.segments.push_back(std::move(s));
  }
  max_segments_ = std::max(max_segments_, r.segments.size());
  routes_.push_back(std::move(r));
  return routes_.back();
}

router& router::add(verb method, std::string_view path_template, handler h) {
  auto& r = route_for(path_template);
  for (auto& [m, existing] : r.methods)
    if (m == method) {
      existing = std::move(h);
      return *this;
    }
  r.methods.emplace_back(method, std::move(h));
  return *this;
}

router& router::any(std::string_view path_template, handler h) {
  route_for(path_template).any = std::move(h);
  return *this;
}

router& router::on_error(
    std::function<response(const request&, const router_error&)> render) {
  render_ = std::move(render);
  return *this;
}

route_match router::match(verb method, std::string_view path) const {
  route_match out;
  std::string shown{path};
  if (path.empty() || path.front() != '/') {
    out.error = {400, "bad request target", {}};
    return out;
  }
  auto raw = split(path, max_segments_);
  if (raw.size() > max_segments_) {
    out.error = {404, "no endpoint " + shown, {}};
    return out;
  }
  std::vector<std::string> seg;
  seg.reserve(raw.size());
  for (auto part : raw) {
    auto decoded = percent_decode(part);
    if (!decoded) {
      out.error = {400, "bad percent-encoding in the path", {}};
      return out;
    }
    seg.push_back(std::move(*decoded));
  }
  // The most specific template that matches: the one with a literal where
  // the others have a parameter, at the first segment they differ in.
  const route* best = nullptr;
  auto more_specific = [](const route& a, const route& b) {
    for (size_t i = 0; i < a.segments.size(); ++i)
      if (a.segments[i].param != b.segments[i].param)
        return !a.segments[i].param;
    return false;
  };
  for (auto& r : routes_) {
    if (r.segments.size() != seg.size())
      continue;
    bool fits = true;
    for (size_t i = 0; i < seg.size() && fits; ++i)
      fits = r.segments[i].param || r.segments[i].text == seg[i];
    if (fits && (!best || more_specific(r, *best)))
      best = &r;
  }
  if (!best) {
    out.error = {404, "no endpoint " + shown, {}};
    return out;
  }
  for (auto& [m, h] : best->methods)
    if (m == method)
      out.target = &h;
  if (!out.target && best->any)
    out.target = &best->any;
  if (!out.target) {
    std::string allow;
    for (auto& [m, h] : best->methods)
      allow += (allow.empty() ? "" : ", ") + std::string{http::to_string(m)};
    std::string use = allow;
    if (auto comma = use.rfind(", "); comma != std::string::npos)
      use.replace(comma, 2, " or ");
    out.error = {405, "use " + use + " " + shown, std::move(allow)};
    return out;
  }
  for (size_t i = 0; i < seg.size(); ++i)
    if (best->segments[i].param)
      out.params.emplace_back(best->segments[i].text, std::move(seg[i]));
  return out;
}

void router::operator()(request req, responder res) const {
  auto m = match(req.method, req.path());
  if (m.target) {
    auto query = parse_query(req.target);
    if (query) {
      req.params = std::move(m.params);
      req.query = std::move(*query);
      (*m.target)(std::move(req), std::move(res));
      return;
    }
    m.error = {400, "bad percent-encoding in the query", {}};
  }
  auto r = render_ ? render_(req, m.error) : default_render(req, m.error);
  if (m.error.status == 405)
    r.headers.emplace_back("Allow", m.error.allow);
  res.send(std::move(r));
}

std::optional<std::map<std::string, std::string>>
parse_query(std::string_view target, size_t max_pairs) {
  std::map<std::string, std::string> out;
  auto q = target.find('?');
  if (q == std::string_view::npos)
    return out;
  auto query = target.substr(q + 1);
  size_t n = 0;
  while (!query.empty() && ++n <= max_pairs) {
    auto amp = query.find('&');
    auto pair = query.substr(0, amp);
    auto eq = pair.find('=');
    auto k = percent_decode(pair.substr(0, eq));
    auto v = eq == std::string_view::npos
                 ? std::optional<std::string>{std::string{}}
                 : percent_decode(pair.substr(eq + 1));
    if (!k || !v)
      return std::nullopt;
    out[std::move(*k)] = std::move(*v);
    query = amp == std::string_view::npos ? std::string_view{}
                                          : query.substr(amp + 1);
  }
  return out;
}

} // namespace granary::http

#include "http/message.hpp"

#include <charconv>

namespace granary::http {

std::string_view request::path() const {
  std::string_view t = target;
  return t.substr(0, t.find('?'));
}

const std::string& request::param(std::string_view name) const {
  static const std::string none;
  for (auto& [k, v] : params)
    if (k == name)
      return v;
  return none;
}

const std::string* request::query_value(std::string_view name) const {
  auto i = query.find(std::string{name});
  return i == query.end() ? nullptr : &i->second;
}

std::string_view request::header(std::string_view name) const {
  auto i = headers.find(boost::beast::string_view{name.data(), name.size()});
  if (i == headers.end())
    return {};
  auto v = i->value();
  return {v.data(), v.size()};
}

std::string_view to_string(verb v) {
  auto name = boost::beast::http::to_string(v);
  return {name.data(), name.size()};
}

verb verb_of(std::string_view name) {
  return boost::beast::http::string_to_verb({name.data(), name.size()});
}

std::string percent_encode(std::string_view segment) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(segment.size());
  for (unsigned char c : segment) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
        || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'
        || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 0xf];
    }
  }
  return out;
}

std::optional<std::string> percent_decode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out += in[i];
      continue;
    }
    if (i + 2 >= in.size())
      return std::nullopt;
    unsigned v = 0;
    auto res = std::from_chars(in.data() + i + 1, in.data() + i + 3, v, 16);
    if (res.ec != std::errc{} || res.ptr != in.data() + i + 3)
      return std::nullopt;
    out += static_cast<char>(v);
    i += 2;
  }
  return out;
}

} // namespace granary::http

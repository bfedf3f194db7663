#include "gateway/gateway_json.hpp"

#include <algorithm>
#include <charconv>
#include <optional>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>

#include "gateway/gateway.hpp"

namespace granary::cluster::detail {

namespace pb = google::protobuf;

namespace {

// Walks a JSON text without building anything, to refuse a body nested
// too deeply before it is parsed (a parser's cost grows much faster than
// the depth) and to report a syntax error.
class depth_probe : public nlohmann::json_sax<nlohmann::json> {
public:
  explicit depth_probe(size_t limit)
      : limit_(limit) {}

  bool too_deep = false;
  std::string error;

  bool null() override {
    return true;
  }
  bool boolean(bool) override {
    return true;
  }
  bool number_integer(number_integer_t) override {
    return true;
  }
  bool number_unsigned(number_unsigned_t) override {
    return true;
  }
  bool number_float(number_float_t, const string_t&) override {
    return true;
  }
  bool string(string_t&) override {
    return true;
  }
  bool binary(binary_t&) override {
    return true;
  }
  bool key(string_t&) override {
    return true;
  }
  bool start_object(std::size_t) override {
    return enter();
  }
  bool end_object() override {
    --depth_;
    return true;
  }
  bool start_array(std::size_t) override {
    return enter();
  }
  bool end_array() override {
    --depth_;
    return true;
  }
  bool parse_error(std::size_t, const std::string&,
                   const nlohmann::detail::exception& ex) override {
    // "[json.exception.parse_error.101] parse error at line 1, ...".
    std::string_view what = ex.what();
    if (auto close = what.find("] "); close != std::string_view::npos)
      what.remove_prefix(close + 2);
    error = std::string{what};
    return false;
  }

private:
  bool enter() {
    if (++depth_ > limit_) {
      too_deep = true;
      return false;
    }
    return true;
  }

  size_t limit_;
  size_t depth_ = 0;
};

const char* type_name(field_type t) {
  switch (t) {
    case field_type::text:
      return "string";
    case field_type::flag:
      return "true/false";
    case field_type::message:
      return "object";
  }
  return "string";
}

bool has_type(const nlohmann::json& v, field_type t) {
  switch (t) {
    case field_type::text:
      return v.is_string();
    case field_type::flag:
      return v.is_boolean();
    case field_type::message:
      return v.is_object();
  }
  return false;
}

std::string type_error(const field& f) {
  std::string name{f.name};
  switch (f.type) {
    case field_type::text:
      return "field '" + name + "' must be a string";
    case field_type::flag:
      return "field '" + name + "' must be true or false";
    case field_type::message:
      return "field '" + name + "' must be a JSON object (a message)";
  }
  return "field '" + name + "' has the wrong type";
}

const pb::Message* prototype_of(std::string_view type) {
  auto* desc = pb::DescriptorPool::generated_pool()->FindMessageTypeByName(
      std::string{type});
  return desc ? pb::MessageFactory::generated_factory()->GetPrototype(desc)
              : nullptr;
}

// Whether `d` is one of protobuf's well-known types, whose JSON forms
// (Struct, Value, ListValue, ...) may nest arrays freely.
bool well_known(const pb::Descriptor& d) {
  return d.file()->name().rfind("google/protobuf/", 0) == 0;
}

// What protobuf's JSON parser would silently flatten: an array inside the
// array of a repeated field, in `v` as a message of type `d`.
std::optional<std::string> misshapen(const nlohmann::json& v,
                                     const pb::Descriptor& d) {
  if (!v.is_object() || well_known(d))
    return std::nullopt;
  for (auto& [key, value] : v.items()) {
    auto* f = d.FindFieldByName(key);
    for (int i = 0; !f && i < d.field_count(); ++i)
      if (d.field(i)->json_name() == key)
        f = d.field(i);
    if (!f || value.is_null())
      continue;
    auto* type = f->type() == pb::FieldDescriptor::TYPE_MESSAGE
                     ? f->message_type()
                     : nullptr;
    if (f->is_map()) {
      auto* vf = type->map_value();
      if (!value.is_object() || vf->type() != pb::FieldDescriptor::TYPE_MESSAGE)
        continue;
      for (auto& [k, entry] : value.items())
        if (auto why = misshapen(entry, *vf->message_type()))
          return why;
      continue;
    }
    if (f->is_repeated() && value.is_array()) {
      if (type && well_known(*type))
        continue;
      for (auto& e : value) {
        if (e.is_array())
          return "field '" + key + "' holds an array inside its array";
        if (type)
          if (auto why = misshapen(e, *type))
            return why;
      }
      continue;
    }
    if (type)
      if (auto why = misshapen(value, *type))
        return why;
  }
  return std::nullopt;
}

// The runtime states retry hints as "retry after N ms".
uint64_t retry_hint(const std::string& message, uint64_t fallback) {
  auto at = message.rfind("retry after ");
  if (at == std::string::npos)
    return fallback;
  uint64_t ms = 0;
  auto* first = message.data() + at + 12;
  auto res = std::from_chars(first, message.data() + message.size(), ms);
  return res.ec == std::errc{} && ms > 0 ? ms : fallback;
}

} // namespace

caf::expected<body> body::parse(std::string_view text,
                                std::initializer_list<field> fields) {
  body out;
  auto bad = [](std::string why) {
    return make_error(errc::invalid_argument, std::move(why));
  };
  if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    out.obj_ = nlohmann::json::object();
  } else {
    depth_probe probe{max_json_depth};
    nlohmann::json::sax_parse(text, &probe);
    if (probe.too_deep)
      return bad("the request body nests objects and arrays deeper than "
                 + std::to_string(max_json_depth) + " levels");
    if (!probe.error.empty())
      return bad("the request body is not a JSON object: " + probe.error);
    out.obj_ = nlohmann::json::parse(text, nullptr, false);
    if (!out.obj_.is_object())
      return bad("the request body is not a JSON object");
  }
  for (auto& [key, value] : out.obj_.items()) {
    auto known = std::find_if(fields.begin(), fields.end(),
                              [&](const field& f) { return f.name == key; });
    if (known == fields.end()) {
      std::string names;
      for (auto& f : fields)
        names += (names.empty() ? "" : ", ") + std::string{f.name};
      return bad("unknown field '" + key
                 + "' in the request body (known: " + names + ")");
    }
  }
  for (auto& f : fields) {
    auto* v = out.find(f.name);
    if (!v && f.required)
      return bad("the request body needs a " + std::string{type_name(f.type)}
                 + " field '" + std::string{f.name} + "'");
    if (v && !has_type(*v, f.type))
      return bad(type_error(f));
  }
  return out;
}

const nlohmann::json* body::find(std::string_view name) const {
  auto i = obj_.find(name);
  if (i == obj_.end() || i->is_null())
    return nullptr;
  return &*i;
}

std::string body::text(std::string_view name) const {
  auto* v = find(name);
  return v ? v->get<std::string>() : std::string{};
}

bool body::flag(std::string_view name) const {
  auto* v = find(name);
  return v && v->get<bool>();
}

const nlohmann::json* body::message(std::string_view name) const {
  return find(name);
}

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

http::response json_reply(unsigned status, const json& j) {
  http::response r;
  r.status = status;
  r.body = dump(j);
  r.body += '\n';
  return r;
}

http::response error_reply(unsigned status, errc code,
                           const std::string& message,
                           uint64_t retry_after_ms) {
  json inner;
  inner["code"] = to_string(code);
  inner["message"] = message;
  json outer;
  outer["error"] = std::move(inner);
  auto r = json_reply(status, outer);
  r.retry_after_ms = retry_after_ms;
  return r;
}

http::response error_reply(const caf::error& err) {
  auto code = code_of(err);
  auto msg = describe(err);
  // describe() renders "code: message"; the code travels separately.
  if (auto colon = msg.find(": ");
      colon != std::string::npos && msg.compare(0, colon, to_string(code)) == 0)
    msg = msg.substr(colon + 2);
  uint64_t retry = 0;
  if (code == errc::overloaded)
    retry = retry_hint(msg, 1'000);
  else if (code == errc::storage_full)
    retry = 5'000;
  return error_reply(granary::http_status(code), code, msg, retry);
}

json message_json(const pb::Message& m) {
  pb::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  opts.always_print_primitive_fields = true;
  std::string out;
  auto st = pb::util::MessageToJsonString(m, &out, opts);
  if (!st.ok())
    return json{{"unprintable", st.ToString()}};
  auto parsed = json::parse(out, nullptr, false);
  if (parsed.is_discarded())
    return json{{"unprintable", "protobuf printed invalid JSON"}};
  return parsed;
}

json bytes_json(const std::string& type, const std::string& bytes) {
  if (type.empty())
    return nullptr;
  auto* proto = prototype_of(type);
  if (!proto)
    return json{{"unknown_type", type}, {"bytes", bytes.size()}};
  std::unique_ptr<pb::Message> m{proto->New()};
  if (!m->ParseFromString(bytes))
    return json{{"undecodable", type}};
  return message_json(*m);
}

caf::expected<std::unique_ptr<pb::Message>>
message_from_json(std::string_view field, std::string_view type,
                  const nlohmann::json* value) {
  std::string name{field};
  if (type.empty())
    return make_error(errc::invalid_argument,
                      "'" + name + "' needs its message type");
  auto* proto = prototype_of(type);
  if (!proto)
    return make_error(errc::invalid_argument,
                      "unknown message type '" + std::string{type}
                          + "' (not linked into this silo)");
  std::unique_ptr<pb::Message> m{proto->New()};
  if (!value)
    return m;
  auto refuse = [&](std::string_view why) {
    return make_error(errc::invalid_argument,
                      "'" + name + "' is not valid JSON of " + std::string{type}
                          + ": " + std::string{why});
  };
  if (auto why = misshapen(*value, *m->GetDescriptor()))
    return refuse(*why);
  auto text = value->dump();
  auto st = pb::util::JsonStringToMessage(text, m.get());
  if (!st.ok())
    return refuse({st.message().data(), st.message().size()});
  return m;
}

} // namespace granary::cluster::detail

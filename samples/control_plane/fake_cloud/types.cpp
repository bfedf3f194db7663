#include "samples/control_plane/fake_cloud/types.hpp"

#include <cmath>

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include "runtime/error.hpp"
#include "runtime/json.hpp"

namespace fake_cloud {

namespace {

namespace pb = google::protobuf;

using granary::errc;
using granary::json_quote;
using granary::make_error;

caf::expected<pb::Struct> parse_object(std::string_view text,
                                       const char* what) {
  pb::Struct obj;
  auto st = pb::util::JsonStringToMessage(
      pb::StringPiece{text.data(), text.size()}, &obj);
  if (!st.ok())
    return make_error(errc::malformed_message,
                      std::string{what}
                          + " is not a JSON object: " + st.ToString());
  return obj;
}

const pb::Value* field(const pb::Struct& obj, const char* name) {
  auto i = obj.fields().find(name);
  return i == obj.fields().end() ? nullptr : &i->second;
}

bool get_string(const pb::Struct& obj, const char* name, std::string& out) {
  auto* v = field(obj, name);
  if (v == nullptr || v->kind_case() != pb::Value::kStringValue)
    return false;
  out = v->string_value();
  return true;
}

// JSON numbers arrive as doubles; counts stay far below 2^53.
bool get_count(const pb::Struct& obj, const char* name, uint64_t& out) {
  auto* v = field(obj, name);
  if (v == nullptr || v->kind_case() != pb::Value::kNumberValue)
    return false;
  double d = v->number_value();
  if (d < 0 || d > 9.0e15 || std::floor(d) != d)
    return false;
  out = static_cast<uint64_t>(d);
  return true;
}

const pb::ListValue* get_list(const pb::Struct& obj, const char* name) {
  auto* v = field(obj, name);
  if (v == nullptr || v->kind_case() != pb::Value::kListValue)
    return nullptr;
  return &v->list_value();
}

const pb::Struct* get_object(const pb::Struct& obj, const char* name) {
  auto* v = field(obj, name);
  if (v == nullptr || v->kind_case() != pb::Value::kStructValue)
    return nullptr;
  return &v->struct_value();
}

caf::expected<std::map<std::string, std::string>>
flat_strings(const pb::Struct& obj, const char* what) {
  std::map<std::string, std::string> out;
  for (auto& [name, value] : obj.fields()) {
    if (value.kind_case() != pb::Value::kStringValue)
      return make_error(errc::malformed_message,
                        std::string{what} + " field '" + name
                            + "' is not a string (only flat objects of string "
                              "fields are accepted)");
    out.emplace(name, value.string_value());
  }
  return out;
}

caf::expected<resource> resource_from(const pb::Struct& obj) {
  resource r;
  auto* spec = get_object(obj, "spec");
  if (!get_string(obj, "kind", r.kind) || !get_string(obj, "name", r.name)
      || !get_count(obj, "version", r.version) || spec == nullptr)
    return make_error(errc::malformed_message,
                      "resource JSON lacks kind, name, version or spec");
  auto fields = flat_strings(*spec, "spec");
  if (!fields)
    return std::move(fields.error());
  r.spec = std::move(*fields);
  return r;
}

caf::error bad_audit(const char* what) {
  return make_error(errc::malformed_message,
                    std::string{"audit JSON: bad or missing "} + what);
}

} // namespace

std::string spec_to_json(const std::map<std::string, std::string>& spec) {
  std::string out = "{";
  for (auto& [name, value] : spec) {
    if (out.size() > 1)
      out += ',';
    out += json_quote(name);
    out += ':';
    out += json_quote(value);
  }
  out += '}';
  return out;
}

std::string to_json(const resource& r) {
  return "{\"kind\":" + json_quote(r.kind) + ",\"name\":" + json_quote(r.name)
         + ",\"version\":" + std::to_string(r.version)
         + ",\"spec\":" + spec_to_json(r.spec) + "}";
}

std::string to_json(const audit_summary& s) {
  std::string out = "{\"live\":{";
  bool first = true;
  for (auto& [kind, n] : s.live) {
    out += first ? "" : ",";
    first = false;
    out += json_quote(kind) + ":" + std::to_string(n);
  }
  out += "},\"applied\":" + std::to_string(s.applied);
  out += ",\"replayed\":" + std::to_string(s.replayed);
  out += ",\"conflicts\":" + std::to_string(s.conflicts);
  out += ",\"keys_applied_more_than_once\":[";
  first = true;
  for (auto& key : s.keys_applied_more_than_once) {
    out += first ? "" : ",";
    first = false;
    out += json_quote(key);
  }
  out += "],\"double_creates\":[";
  first = true;
  for (auto& d : s.double_creates) {
    out += first ? "" : ",";
    first = false;
    out += "{\"kind\":" + json_quote(d.kind) + ",\"name\":" + json_quote(d.name)
           + ",\"key\":" + json_quote(d.key) + "}";
  }
  out += "],\"resources\":[";
  first = true;
  for (auto& r : s.resources) {
    out += first ? "" : ",";
    first = false;
    out += "{\"kind\":" + json_quote(r.kind) + ",\"name\":" + json_quote(r.name)
           + ",\"created\":" + std::to_string(r.created)
           + ",\"deleted\":" + std::to_string(r.deleted)
           + ",\"live\":" + (r.live ? "true" : "false") + "}";
  }
  auto& f = s.faults;
  out += "],\"faults\":{\"failed_before_apply\":"
         + std::to_string(f.failed_before_apply)
         + ",\"failed_after_apply\":" + std::to_string(f.failed_after_apply)
         + ",\"rate_limited\":" + std::to_string(f.rate_limited)
         + ",\"timeouts\":" + std::to_string(f.timeouts)
         + ",\"timeouts_after_apply\":" + std::to_string(f.timeouts_after_apply)
         + "}}";
  return out;
}

caf::expected<resource> resource_from_json(std::string_view text) {
  auto obj = parse_object(text, "resource");
  if (!obj)
    return std::move(obj.error());
  return resource_from(*obj);
}

caf::expected<std::map<std::string, std::string>>
spec_from_json(std::string_view text) {
  auto obj = parse_object(text, "spec");
  if (!obj)
    return std::move(obj.error());
  return flat_strings(*obj, "spec");
}

caf::expected<audit_summary> audit_from_json(std::string_view text) {
  auto obj = parse_object(text, "audit");
  if (!obj)
    return std::move(obj.error());
  audit_summary s;
  auto* live = get_object(*obj, "live");
  if (live == nullptr)
    return bad_audit("live");
  for (auto& [kind, value] : live->fields()) {
    uint64_t n = 0;
    if (!get_count(*live, kind.c_str(), n))
      return bad_audit("live count");
    s.live.emplace(kind, n);
  }
  if (!get_count(*obj, "applied", s.applied)
      || !get_count(*obj, "replayed", s.replayed)
      || !get_count(*obj, "conflicts", s.conflicts))
    return bad_audit("applied, replayed or conflicts");
  auto* keys = get_list(*obj, "keys_applied_more_than_once");
  auto* doubles = get_list(*obj, "double_creates");
  auto* resources = get_list(*obj, "resources");
  auto* faults = get_object(*obj, "faults");
  if (keys == nullptr || doubles == nullptr || resources == nullptr
      || faults == nullptr)
    return bad_audit("lists or faults");
  for (auto& v : keys->values()) {
    if (v.kind_case() != pb::Value::kStringValue)
      return bad_audit("key");
    s.keys_applied_more_than_once.push_back(v.string_value());
  }
  for (auto& v : doubles->values()) {
    double_create d;
    if (v.kind_case() != pb::Value::kStructValue
        || !get_string(v.struct_value(), "kind", d.kind)
        || !get_string(v.struct_value(), "name", d.name)
        || !get_string(v.struct_value(), "key", d.key))
      return bad_audit("double create");
    s.double_creates.push_back(std::move(d));
  }
  for (auto& v : resources->values()) {
    resource_history h;
    const pb::Value* live_flag = nullptr;
    if (v.kind_case() == pb::Value::kStructValue)
      live_flag = field(v.struct_value(), "live");
    if (live_flag == nullptr || live_flag->kind_case() != pb::Value::kBoolValue
        || !get_string(v.struct_value(), "kind", h.kind)
        || !get_string(v.struct_value(), "name", h.name)
        || !get_count(v.struct_value(), "created", h.created)
        || !get_count(v.struct_value(), "deleted", h.deleted))
      return bad_audit("resource history");
    h.live = live_flag->bool_value();
    s.resources.push_back(std::move(h));
  }
  auto& f = s.faults;
  if (!get_count(*faults, "failed_before_apply", f.failed_before_apply)
      || !get_count(*faults, "failed_after_apply", f.failed_after_apply)
      || !get_count(*faults, "rate_limited", f.rate_limited)
      || !get_count(*faults, "timeouts", f.timeouts)
      || !get_count(*faults, "timeouts_after_apply", f.timeouts_after_apply))
    return bad_audit("fault counts");
  return s;
}

} // namespace fake_cloud

#include "runtime/keys.hpp"

#include <algorithm>
#include <limits>

#include "runtime/error.hpp"

namespace granary {

const char* to_string(column c) {
  switch (c) {
    case column::meta:
      return "meta";
    case column::state:
      return "state";
    case column::inbox:
      return "inbox";
    case column::outbox:
      return "outbox";
    case column::timers:
      return "timers";
    case column::dedup:
      return "dedup";
    case column::dead_letters:
      return "dead_letters";
    case column::journal:
      return "journal";
    case column::timer_index:
      return "timer_index";
  }
  return "unknown";
}

namespace keys {

namespace {

void append_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

// Reads a varint of at most 5 bytes (lengths are below 4 GiB).
std::optional<uint64_t> read_varint(std::string_view& in) {
  uint64_t result = 0;
  for (int shift = 0, i = 0; i < 5; ++i, shift += 7) {
    if (in.empty())
      return std::nullopt;
    auto byte = static_cast<unsigned char>(in.front());
    in.remove_prefix(1);
    result |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0)
      return result;
  }
  return std::nullopt;
}

std::optional<std::string_view> read_chunk(std::string_view& in) {
  auto len = read_varint(in);
  if (!len || *len > in.size())
    return std::nullopt;
  auto chunk = in.substr(0, *len);
  in.remove_prefix(*len);
  return chunk;
}

} // namespace

void append_partition(std::string& out, uint32_t partition) {
  out.push_back(static_cast<char>((partition >> 8) & 0xff));
  out.push_back(static_cast<char>(partition & 0xff));
}

std::string partition_prefix(uint32_t partition) {
  std::string out;
  append_partition(out, partition);
  return out;
}

partition_range range_of(uint32_t p) {
  partition_range result{partition_prefix(p), {}};
  if (p < max_partition)
    result.upper = partition_prefix(p + 1);
  return result;
}

bool in_range(const partition_range& r, std::string_view key) {
  return key >= std::string_view{r.lower}
         && (r.upper.empty() || key < std::string_view{r.upper});
}

caf::error invalid_partition(uint32_t p) {
  return make_error(errc::invalid_argument, "partition " + std::to_string(p)
                                                + " is out of range (at most "
                                                + std::to_string(max_partition)
                                                + ")");
}

std::string grain_prefix(uint32_t partition, const grain_id& id) {
  std::string out;
  out.reserve(4 + id.type.size() + id.key.size() + 8);
  append_partition(out, partition);
  append_varint(out, id.type.size());
  out += id.type;
  append_varint(out, id.key.size());
  out += id.key;
  return out;
}

void append_u64(std::string& out, uint64_t value) {
  for (int shift = 56; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((value >> shift) & 0xff));
}

std::optional<uint64_t> read_u64(std::string_view in) {
  if (in.size() < 8)
    return std::nullopt;
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i)
    value = (value << 8) | static_cast<unsigned char>(in[i]);
  return value;
}

std::string with_seq(std::string prefix, uint64_t seq) {
  append_u64(prefix, seq);
  return prefix;
}

std::string with_suffix(std::string prefix, std::string_view suffix) {
  prefix += suffix;
  return prefix;
}

std::optional<uint32_t> read_partition(std::string_view key) {
  if (key.size() < 2)
    return std::nullopt;
  return (static_cast<uint32_t>(static_cast<unsigned char>(key[0])) << 8)
         | static_cast<unsigned char>(key[1]);
}

std::optional<decoded> decode(std::string_view key) {
  auto partition = read_partition(key);
  if (!partition)
    return std::nullopt;
  decoded out;
  out.partition = *partition;
  key.remove_prefix(2);
  auto type = read_chunk(key);
  if (!type)
    return std::nullopt;
  auto grain_key = read_chunk(key);
  if (!grain_key)
    return std::nullopt;
  out.id.type = std::string{*type};
  out.id.key = std::string{*grain_key};
  out.suffix = key;
  return out;
}

std::string timer_index_key(std::string_view timers_key, int64_t due_ms) {
  std::string out;
  out.reserve(timers_key.size() + 8);
  out.append(timers_key.substr(0, 2));
  append_u64(out, static_cast<uint64_t>(std::max<int64_t>(due_ms, 0)));
  if (timers_key.size() > 2)
    out.append(timers_key.substr(2));
  return out;
}

std::optional<timer_index_entry> decode_timer_index(std::string_view key) {
  if (key.size() < 10)
    return std::nullopt;
  auto due = read_u64(key.substr(2));
  if (!due || *due > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return std::nullopt;
  timer_index_entry out;
  out.due_ms = static_cast<int64_t>(*due);
  out.timers_key.reserve(key.size() - 8);
  out.timers_key.append(key.substr(0, 2));
  out.timers_key.append(key.substr(10));
  return out;
}

std::string printable(std::string_view key) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(key.size() * 2);
  for (auto c : key) {
    auto b = static_cast<unsigned char>(c);
    if (b >= 0x20 && b < 0x7f && b != '\\') {
      out.push_back(static_cast<char>(b));
    } else {
      out += "\\x";
      out.push_back(digits[b >> 4]);
      out.push_back(digits[b & 0xf]);
    }
  }
  return out;
}

} // namespace keys

} // namespace granary

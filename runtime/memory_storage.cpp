#include "runtime/memory_storage.hpp"

#include <filesystem>
#include <fstream>
#include <set>
#include <system_error>
#include <thread>

#include "runtime/error.hpp"
#include "runtime/limits.hpp"
#include "runtime/sys.hpp"

namespace granary {

namespace {

using column_map = std::map<std::string, std::string, std::less<>>;

using record_list = std::vector<std::pair<std::string, std::string>>;

constexpr char file_magic[8] = {'G', 'R', 'N', 'Y', 'P', 'R', 'T', '1'};

// Magic, column byte and record count.
constexpr uint64_t header_bytes = sizeof(file_magic) + 1 + 8;

std::pair<column_map::iterator, column_map::iterator>
bounds(column_map& m, const keys::partition_range& r) {
  return {m.lower_bound(r.lower),
          r.upper.empty() ? m.end() : m.lower_bound(r.upper)};
}

caf::error corrupt_file(const std::string& path, const std::string& why) {
  return make_error(errc::corrupt_record,
                    "partition file '" + path + "' is unusable: " + why);
}

void put_uint(std::string& out, uint64_t value, int bytes) {
  for (int shift = (bytes - 1) * 8; shift >= 0; shift -= 8)
    out.push_back(static_cast<char>((value >> shift) & 0xff));
}

uint64_t get_uint(std::string_view in) {
  uint64_t value = 0;
  for (auto c : in)
    value = (value << 8) | static_cast<unsigned char>(c);
  return value;
}

caf::error write_partition_file(const std::string& path, column col,
                                const record_list& records) {
  std::ofstream out{path, std::ios::binary | std::ios::trunc};
  std::string buf{file_magic, sizeof(file_magic)};
  buf.push_back(static_cast<char>(col));
  put_uint(buf, records.size(), 8);
  out.write(buf.data(), static_cast<std::streamsize>(buf.size()));
  for (auto& [key, value] : records) {
    buf.clear();
    put_uint(buf, key.size(), 4);
    buf += key;
    put_uint(buf, value.size(), 4);
    buf += value;
    out.write(buf.data(), static_cast<std::streamsize>(buf.size()));
  }
  out.close();
  if (!out)
    return make_error(errc::storage_failure,
                      "cannot write partition file '" + path + "'");
  return caf::none;
}

// Reads a whole file made by `write_partition_file`. Every length is
// checked against the bytes left before reading, so a damaged file can
// neither overrun nor allocate more than its own size.
caf::expected<record_list> read_partition_file(uint32_t p,
                                               const partition_file& file) {
  auto& path = file.path;
  std::error_code ec;
  auto size = std::filesystem::file_size(path, ec);
  if (ec)
    return corrupt_file(path, ec.message());
  std::ifstream in{path, std::ios::binary};
  if (!in)
    return corrupt_file(path, "cannot open");
  uint64_t left = size;
  std::string buf;
  auto read = [&](uint64_t n) {
    if (n > left)
      return false;
    buf.resize(n);
    in.read(buf.data(), static_cast<std::streamsize>(n));
    if (static_cast<uint64_t>(in.gcount()) != n)
      return false;
    left -= n;
    return true;
  };
  if (!read(header_bytes))
    return corrupt_file(path, "truncated header");
  if (std::string_view{buf}.substr(0, sizeof(file_magic))
      != std::string_view{file_magic, sizeof(file_magic)})
    return corrupt_file(path, "not a partition file");
  if (static_cast<uint8_t>(buf[sizeof(file_magic)])
      != static_cast<uint8_t>(file.col))
    return corrupt_file(path, "holds another column");
  auto count = get_uint(std::string_view{buf}.substr(sizeof(file_magic) + 1));
  if (count != file.records)
    return corrupt_file(path, "holds " + std::to_string(count)
                                  + " records instead of "
                                  + std::to_string(file.records));
  // Each record takes at least its two lengths.
  if (count > left / 8)
    return corrupt_file(path, "truncated");
  auto range = keys::range_of(p);
  record_list result;
  result.reserve(count);
  auto read_field = [&](const char* what) -> caf::expected<std::string> {
    if (!read(4))
      return corrupt_file(path, std::string{"truncated "} + what + " length");
    auto len = get_uint(buf);
    if (len > limits::max_file_field_bytes)
      return corrupt_file(path, std::string{"oversized "} + what + " length "
                                    + std::to_string(len));
    if (!read(len))
      return corrupt_file(path, std::string{"truncated "} + what);
    return buf;
  };
  for (uint64_t i = 0; i < count; ++i) {
    auto key = read_field("key");
    if (!key)
      return key.error();
    if (!keys::in_range(range, *key))
      return corrupt_file(path,
                          "holds keys outside partition " + std::to_string(p));
    auto value = read_field("value");
    if (!value)
      return value.error();
    result.emplace_back(std::move(*key), std::move(*value));
  }
  if (left != 0)
    return corrupt_file(path, std::to_string(left) + " trailing bytes");
  return result;
}

} // namespace

caf::expected<std::optional<std::string>>
memory_storage::get(column col, std::string_view key) {
  std::lock_guard guard{mtx_};
  auto& m = data_[static_cast<size_t>(col)];
  if (auto i = m.find(key); i != m.end())
    return std::optional<std::string>{i->second};
  return std::optional<std::string>{};
}

caf::error memory_storage::commit(std::span<const write_batch* const> batches) {
  if (fail_commits_)
    return make_error(errc::storage_failure,
                      "memory storage: injected commit failure");
  if (auto ms = commit_delay_ms_.load(); ms > 0)
    sys::sleep_for(std::chrono::milliseconds{ms});
  std::lock_guard guard{mtx_};
  for (auto* batch : batches) {
    for (auto& op : batch->ops()) {
      auto& m = data_[static_cast<size_t>(op.col)];
      if (op.erase) {
        if (auto i = m.find(op.key); i != m.end())
          m.erase(i);
      } else {
        m.insert_or_assign(op.key, op.value);
      }
    }
  }
  ++commits_;
  return caf::none;
}

caf::error memory_storage::scan(column col, std::string_view prefix,
                                std::string_view start, size_t limit,
                                const scan_visitor& visit) {
  // Copy out under the lock so that visitors may call back into storage.
  std::vector<std::pair<std::string, std::string>> hits;
  {
    std::lock_guard guard{mtx_};
    auto& m = data_[static_cast<size_t>(col)];
    auto from = start.empty() || start < prefix ? prefix : start;
    for (auto i = m.lower_bound(from);
         i != m.end() && hits.size() < limit
         && std::string_view{i->first}.substr(0, prefix.size()) == prefix;
         ++i)
      hits.emplace_back(i->first, i->second);
  }
  for (auto& [k, v] : hits)
    if (!visit(k, v))
      break;
  return caf::none;
}

std::optional<uint64_t> memory_storage::free_bytes() {
  std::lock_guard guard{mtx_};
  return free_bytes_;
}

caf::expected<std::vector<partition_file>>
memory_storage::export_partition(uint32_t p, const std::string& dir) {
  auto checked = export_directory(p, dir);
  if (!checked)
    return std::move(checked.error());
  std::filesystem::path abs_dir{*checked};
  auto range = keys::range_of(p);
  // Copy out under the lock, write without it.
  std::vector<std::pair<column, record_list>> columns;
  {
    std::lock_guard guard{mtx_};
    for (size_t i = 0; i < column_count; ++i) {
      auto col = static_cast<column>(i);
      if (col == column::meta)
        continue;
      auto [first, last] = bounds(data_[i], range);
      if (first == last)
        continue;
      columns.emplace_back(col, record_list(first, last));
    }
  }
  std::vector<partition_file> result;
  for (auto& [col, records] : columns) {
    auto path
        = (abs_dir / ("p" + std::to_string(p) + "-" + to_string(col) + ".part"))
              .string();
    if (auto err = write_partition_file(path, col, records)) {
      std::error_code ignored;
      for (auto& f : result)
        std::filesystem::remove(f.path, ignored);
      std::filesystem::remove(path, ignored);
      return err;
    }
    result.push_back(partition_file{col, path, records.size()});
  }
  return result;
}

caf::error
memory_storage::import_partition(uint32_t p,
                                 std::span<const partition_file> files) {
  if (fail_commits_)
    return make_error(errc::storage_failure,
                      "memory storage: injected commit failure");
  if (p > keys::max_partition)
    return keys::invalid_partition(p);
  std::set<column> seen;
  for (auto& f : files) {
    if (f.col == column::meta || static_cast<size_t>(f.col) >= column_count)
      return make_error(errc::invalid_argument,
                        "partition file '" + f.path
                            + "' is for a column that holds no partition");
    if (!seen.insert(f.col).second)
      return make_error(errc::invalid_argument,
                        std::string{"more than one partition file for column '"}
                            + to_string(f.col) + "'");
  }
  std::vector<record_list> parsed;
  parsed.reserve(files.size());
  for (auto& f : files) {
    auto records = read_partition_file(p, f);
    if (!records)
      return records.error();
    parsed.push_back(std::move(*records));
  }
  auto range = keys::range_of(p);
  std::lock_guard guard{mtx_};
  for (size_t i = 0; i < column_count; ++i) {
    if (static_cast<column>(i) == column::meta)
      continue;
    auto [first, last] = bounds(data_[i], range);
    data_[i].erase(first, last);
  }
  for (size_t i = 0; i < files.size(); ++i) {
    auto& m = data_[static_cast<size_t>(files[i].col)];
    for (auto& [key, value] : parsed[i])
      m.insert_or_assign(std::move(key), std::move(value));
  }
  return caf::none;
}

caf::error memory_storage::drop_partition(uint32_t p) {
  if (fail_commits_)
    return make_error(errc::storage_failure,
                      "memory storage: injected commit failure");
  if (p > keys::max_partition)
    return keys::invalid_partition(p);
  auto range = keys::range_of(p);
  std::lock_guard guard{mtx_};
  for (size_t i = 0; i < column_count; ++i) {
    if (static_cast<column>(i) == column::meta)
      continue;
    auto [first, last] = bounds(data_[i], range);
    data_[i].erase(first, last);
  }
  return caf::none;
}

void memory_storage::set_free_bytes(std::optional<uint64_t> bytes) {
  std::lock_guard guard{mtx_};
  free_bytes_ = bytes;
}

size_t memory_storage::count(column col) const {
  std::lock_guard guard{mtx_};
  return data_[static_cast<size_t>(col)].size();
}

void memory_storage::poke(column col, std::string key, std::string value) {
  std::lock_guard guard{mtx_};
  data_[static_cast<size_t>(col)].insert_or_assign(std::move(key),
                                                   std::move(value));
}

} // namespace granary

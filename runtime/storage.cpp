#include "runtime/storage.hpp"

#include <filesystem>

#include "runtime/error.hpp"

namespace granary {

storage::~storage() = default;

caf::expected<std::string> export_directory(uint32_t p,
                                            const std::string& dir) {
  if (p > keys::max_partition)
    return keys::invalid_partition(p);
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    return make_error(errc::invalid_argument,
                      "export directory '" + dir + "' is not a directory");
  auto abs_dir = std::filesystem::absolute(dir, ec);
  if (ec)
    return make_error(errc::invalid_argument,
                      "export directory '" + dir + "': " + ec.message());
  return abs_dir.string();
}

} // namespace granary

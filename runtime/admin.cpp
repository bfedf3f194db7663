#include "runtime/admin.hpp"

#include <algorithm>

#include "granary.pb.h"
#include "runtime/error.hpp"
#include "runtime/keys.hpp"
#include "runtime/limits.hpp"
#include "runtime/silo.hpp"
#include "runtime/silo_core.hpp"

namespace granary {

namespace {

constexpr const char* meta_key = "silo";

caf::expected<wire::SiloMeta> read_meta(storage& store) {
  auto raw = store.get(column::meta, meta_key);
  if (!raw)
    return std::move(raw.error());
  if (!*raw)
    return make_error(errc::not_found,
                      "no silo metadata: this is not a Granary data directory");
  wire::SiloMeta meta;
  if (!meta.ParseFromString(**raw))
    return make_error(errc::corrupt_record, "silo metadata does not decode");
  return meta;
}

// A dead letter located by grain and message id, with the silo metadata.
struct located {
  wire::SiloMeta meta;
  std::string key;
  wire::DeadLetter dl;
};

caf::expected<located> locate(storage& store, const grain_id& target,
                              const std::string& msg_id) {
  auto meta = read_meta(store);
  if (!meta)
    return std::move(meta.error());
  auto p = partition_of(target, meta->partitions());
  auto key = keys::with_suffix(keys::grain_prefix(p, target), msg_id);
  auto raw = store.get(column::dead_letters, key);
  if (!raw)
    return std::move(raw.error());
  if (!*raw)
    return make_error(errc::not_found, "no dead letter " + msg_id
                                           + " for grain " + to_string(target));
  located out{std::move(*meta), std::move(key), {}};
  if (!out.dl.ParseFromString(**raw))
    return make_error(errc::corrupt_record, "dead letter "
                                                + keys::printable(out.key)
                                                + " does not decode");
  return out;
}

caf::error commit_one(storage& store, const write_batch& wb) {
  const write_batch* views[] = {&wb};
  return store.commit(views);
}

} // namespace

caf::expected<std::vector<dead_letter_info>> list_dead_letters(storage& store,
                                                               size_t limit) {
  std::vector<dead_letter_info> out;
  auto err = store.scan(
      column::dead_letters, {}, {}, limit,
      [&](std::string_view key, std::string_view value) {
        wire::DeadLetter dl;
        dead_letter_info info;
        if (!dl.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
          info.target = grain_id{"<undecodable>", keys::printable(key)};
          info.error = "dead-letter record does not decode";
        } else if (!dl.origin_column().empty()) {
          info.target = grain_id{"<quarantined " + dl.origin_column() + ">",
                                 keys::printable(dl.origin_key())};
          info.error = dl.error();
          info.dead_ms = dl.dead_ms();
        } else {
          auto& env = dl.envelope();
          info.target = grain_id{env.target().type(), env.target().key()};
          info.msg_id = env.msg_id();
          info.payload_type = env.payload_type();
          info.error = dl.error();
          info.attempts = dl.attempts();
          info.dead_ms = dl.dead_ms();
        }
        out.push_back(std::move(info));
        return true;
      });
  if (err)
    return err;
  return out;
}

caf::expected<std::optional<std::string>> read_grain_state(storage& store,
                                                           const grain_id& id) {
  auto meta = read_meta(store);
  if (!meta)
    return std::move(meta.error());
  return store.get(
      column::state,
      keys::grain_prefix(partition_of(id, meta->partitions()), id));
}

caf::expected<state_page> scan_grain_states(storage& store,
                                            std::string_view type,
                                            std::string_view cursor,
                                            size_t limit) {
  if (type.empty())
    return make_error(errc::invalid_argument, "scan: empty grain type");
  if (limit == 0)
    return make_error(errc::invalid_argument, "scan: limit must be positive");
  auto meta = read_meta(store);
  if (!meta)
    return std::move(meta.error());
  auto partitions = meta->partitions();
  uint32_t first = 0;
  if (!cursor.empty()) {
    auto at = keys::decode(cursor);
    if (!at || at->partition >= partitions || at->id.type != type)
      return make_error(errc::invalid_argument,
                        "scan: the cursor does not belong to a scan of '"
                            + std::string{type} + "'");
    first = at->partition;
  }
  state_page out;
  for (auto p = first; p < partitions && out.cursor.empty(); ++p) {
    // The grain prefix of an empty key ends in its length byte (0); without
    // it, the prefix covers every key of the type in this partition.
    auto prefix = keys::grain_prefix(p, grain_id{std::string{type}, {}});
    prefix.pop_back();
    auto start = p == first ? cursor : std::string_view{};
    auto err = store.scan(
        column::state, prefix, start, limit - out.states.size() + 1,
        [&](std::string_view key, std::string_view value) {
          if (out.states.size() == limit) {
            out.cursor = std::string{key};
            return false;
          }
          auto d = keys::decode(key);
          if (d && d->id.type == type)
            out.states.push_back(stored_state{d->id, std::string{value}});
          return true;
        });
    if (err)
      return err;
  }
  return out;
}

caf::expected<std::optional<std::string>> silo::read_state(const grain_id& id) {
  detail::api_guard guard{*core_};
  if (auto err = guard.error())
    return err;
  return core_->store->get(
      column::state, keys::grain_prefix(partition_of(id, partitions()), id));
}

caf::expected<state_page> silo::scan_states(std::string_view type,
                                            std::string_view cursor,
                                            size_t limit) {
  detail::api_guard guard{*core_};
  if (auto err = guard.error())
    return err;
  return scan_grain_states(*core_->store, type, cursor, limit);
}

caf::error requeue_dead_letter_offline(storage& store, const grain_id& target,
                                       const std::string& msg_id) {
  auto found = locate(store, target, msg_id);
  if (!found)
    return found.error();
  auto& meta = found->meta;
  // A fresh incarnation keeps the new inbox key unique against anything a
  // previous silo run or a later one generates.
  meta.set_incarnation(meta.incarnation() + 1);
  auto prefix
      = keys::grain_prefix(partition_of(target, meta.partitions()), target);
  auto env = found->dl.envelope();
  env.set_attempts(0);
  // A dead-lettered call was answered with its error already.
  env.clear_reply_to();
  env.clear_correlation();
  // The new inbox key goes after every stored one of the grain, which
  // other silos may have numbered before a handoff.
  auto seq = meta.incarnation() << 40;
  std::string start = prefix;
  for (size_t page = 0;; ++page) {
    if (page == limits::admin_max_inbox_pages)
      return make_error(errc::overloaded,
                        "inbox of grain " + to_string(target)
                            + " holds too many messages to requeue into");
    size_t seen = 0;
    std::string last;
    auto err
        = store.scan(column::inbox, prefix, start, limits::admin_inbox_page,
                     [&](std::string_view k, std::string_view) {
                       ++seen;
                       last.assign(k);
                       return true;
                     });
    if (err)
      return err;
    if (last.size() == prefix.size() + 8)
      if (auto stored
          = keys::read_u64(std::string_view{last}.substr(prefix.size())))
        seq = std::max(seq, *stored + 1);
    if (seen < limits::admin_inbox_page)
      break;
    start = last;
    start.push_back('\0');
  }
  write_batch wb;
  wb.put(column::meta, meta_key, meta.SerializeAsString());
  wb.erase(column::dead_letters, found->key);
  wb.erase(column::dedup, keys::with_suffix(prefix, msg_id));
  wb.put(column::inbox, keys::with_seq(prefix, seq), env.SerializeAsString());
  return commit_one(store, wb);
}

caf::error drop_dead_letter_offline(storage& store, const grain_id& target,
                                    const std::string& msg_id) {
  auto found = locate(store, target, msg_id);
  if (!found)
    return found.error();
  write_batch wb;
  wb.erase(column::dead_letters, found->key);
  return commit_one(store, wb);
}

} // namespace granary

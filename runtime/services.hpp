#pragma once

#include <map>
#include <memory>
#include <string>
#include <typeindex>
#include <typeinfo>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "runtime/error.hpp"

namespace granary {

/// Objects a silo hands to its grains and activities: API clients, settings,
/// connection pools. One object per C++ type. Services are added before the
/// silo starts (the host's `grains` callback) and only read afterwards, so
/// reads need no lock. They replace process globals: two silos in one
/// process (a test cluster) each get their own.
///
///     services.add(std::make_shared<cloud_settings>(settings));
///     // in a turn:      t.services().get<cloud_settings>()
///     // in an activity: ctx.services().get<cloud_settings>()
class service_registry {
public:
  /// Adds `svc` as the service of type `T`; fails with `already_exists`
  /// when `T` has one, and with `invalid_argument` for a null `svc`.
  template <class T>
  caf::error add(std::shared_ptr<T> svc) {
    if (!svc)
      return make_error(errc::invalid_argument, std::string{"service "}
                                                    + typeid(T).name()
                                                    + " is null");
    auto [_, added] = items_.emplace(std::type_index{typeid(T)},
                                     std::shared_ptr<void>{std::move(svc)});
    if (!added)
      return make_error(errc::already_exists, std::string{"a service of type "}
                                                  + typeid(T).name()
                                                  + " was added already");
    return caf::none;
  }

  /// The service of type `T`, or nullptr.
  template <class T>
  T* find() const noexcept {
    auto i = items_.find(std::type_index{typeid(T)});
    return i == items_.end() ? nullptr : static_cast<T*>(i->second.get());
  }

  /// The service of type `T`, or `not_found` naming the type.
  template <class T>
  caf::expected<T*> get() const {
    if (auto* svc = find<T>())
      return svc;
    return make_error(errc::not_found,
                      std::string{"no service of type "} + typeid(T).name()
                          + " was added to this silo (add it in the host's "
                            "grains callback)");
  }

  /// Number of services.
  size_t size() const noexcept {
    return items_.size();
  }

private:
  std::map<std::type_index, std::shared_ptr<void>> items_;
};

} // namespace granary

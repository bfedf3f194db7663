#pragma once

#include <cstdio>
#include <cstdlib>

// Two kinds of invariant checks, in the TigerBeetle style: a check stays on
// in production unless it is too costly to run there.
//
// - GRANARY_ASSERT: cheap checks (a comparison, a counter), in every build
//   type. Going on past a violated invariant could lose or duplicate
//   durable work, which is worse than a restart.
// - GRANARY_DEBUG_ASSERT: costly checks (a walk over a container), in Debug
//   and sanitizer builds, where the build defines GRANARY_DEBUG_ASSERTS.
//   Elsewhere the check is compiled but never runs, so it cannot rot.

namespace granary {

/// Whether GRANARY_DEBUG_ASSERT runs its checks in this build.
#ifdef GRANARY_DEBUG_ASSERTS
inline constexpr bool debug_asserts = true;
#else
inline constexpr bool debug_asserts = false;
#endif

} // namespace granary

/// Checks an invariant in every build type. A violation is a bug in
/// Granary: going on could lose or duplicate durable work, so the process
/// prints where and why, and aborts (a supervisor restarts it on its data).
#define GRANARY_ASSERT(cond, what)                                             \
  do {                                                                         \
    if (!(cond)) [[unlikely]] {                                                \
      std::fprintf(stderr, "granary: invariant violated at %s:%d: %s (%s)\n",  \
                   __FILE__, __LINE__, what, #cond);                           \
      std::fflush(stderr);                                                     \
      std::abort();                                                            \
    }                                                                          \
  } while (false)

/// Checks a costly invariant like GRANARY_ASSERT, but only in Debug and
/// sanitizer builds; otherwise `cond` is type-checked and not evaluated.
#define GRANARY_DEBUG_ASSERT(cond, what)                                       \
  do {                                                                         \
    if constexpr (::granary::debug_asserts)                                    \
      GRANARY_ASSERT(cond, what);                                              \
  } while (false)

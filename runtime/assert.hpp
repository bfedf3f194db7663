#pragma once

#include <cstdio>
#include <cstdlib>

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

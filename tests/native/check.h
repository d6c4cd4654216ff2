// A minimal assertion helper for the native tests (no test framework to download).
#pragma once

#include <cstdio>
#include <cstdlib>

#define IL_CHECK(cond)                                                               \
  do {                                                                            \
    if (!(cond)) {                                                                \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::exit(1);                                                               \
    }                                                                             \
  } while (0)

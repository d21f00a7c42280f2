// A tiny assertion helper for the header unit tests (no test framework needed).
#pragma once
#include <cstdio>
#include <cstdlib>

static int lp_failures = 0;
#define LP_CHECK(cond)                                                              \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++lp_failures;                                                                \
    }                                                                               \
  } while (0)
#define LP_TEST_MAIN_END() return lp_failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE

// doctest's main for every test executable. It first lets a re-executed test
// binary run as a Plumber worker process (the worker tests start them).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "plumber/registry.hpp"
#include "plumber/worker_pool.hpp"
#include "worker_coroutines.hpp"

int main(int argc, char** argv) {
  const plumber::Registry registry = plumber::test::worker_test_registry();
  if (auto code = plumber::run_worker_if_requested(registry)) return *code;
  doctest::Context context;
  context.applyCommandLine(argc, argv);
  return context.run();
}

#pragma once
/// Coroutines the worker tests run in worker processes. Registered by every
/// test executable's main before plumber::run_worker_if_requested, so that a
/// re-executed test binary finds them.
#include "plumber/registry.hpp"

namespace plumber::test {

/// Adds the worker test coroutines (all worker-capable):
///   spin         busy-waits params.us per message, passes the value on
///   batch_len    replaces each value by the size of the batch it came in
///   worker_pid   replaces each value by {"value", "pid"} (the worker's pid)
///   abort_on     abort()s when the value equals params.value
///   exit_on      _exit(params.code)s when the value equals params.value
///   start_throws on_start throws "model file missing: /models/cat.bin"
///   start_exits  on_start prints "loading failed: no GPU" to stderr and _exit(3)s
///   start_hangs  on_start sleeps for 30 s
///   blob_pass    passes messages on with their blobs; value = {"size", "first", "last"}
///   start_logs   on_start sleeps params.ms and appends "BEGIN END" (steady ns) to params.path
///   blob_make    a new blob of params.size bytes, each = value % 256, made in
///                shared memory (params.shared = true) or in private memory
void register_worker_coroutines(Registry& registry);

/// A registry with the built-ins and the worker test coroutines.
Registry worker_test_registry();

}  // namespace plumber::test

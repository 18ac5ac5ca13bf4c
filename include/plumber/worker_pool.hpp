#pragma once
/// Worker processes (`procs` on a node): the entry point a host program calls,
/// bytes allocated straight in shared memory, and the pool's counters.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "plumber/blob.hpp"

namespace plumber {

class Registry;

/// Call early in main, after registering every coroutine a worker may run (and
/// loading plugins): in a process started as a Plumber worker it runs the
/// worker and returns its exit code; otherwise it returns std::nullopt at once.
///
///     int main(int argc, char** argv) {
///       plumber::Registry registry = plumber::Registry::with_builtins();
///       register_my_coroutines(registry);
///       if (auto code = plumber::run_worker_if_requested(registry)) return *code;
///       ...
///
/// Workers are started by re-executing the host program (/proc/self/exe with
/// its original arguments) with PLUMBER_WORKER set in the environment: main
/// must reach this call without side effects the worker should not have.
std::optional<int> run_worker_if_requested(const Registry& registry);

/// Bytes in the shared-memory blob arena, writable until frozen into a Blob.
/// A Blob made this way crosses to a worker process and back with no copy of
/// its bytes (other blobs are copied into the arena once, when they first cross).
class SharedBytes {
 public:
  SharedBytes() = default;
  SharedBytes(SharedBytes&&) noexcept = default;
  SharedBytes& operator=(SharedBytes&&) noexcept = default;

  std::span<std::byte> bytes() const noexcept { return bytes_; }
  std::byte* data() const noexcept { return bytes_.data(); }
  std::size_t size() const noexcept { return bytes_.size(); }
  /// The bytes as an immutable Blob; this object is empty afterwards.
  Blob freeze() &&;

 private:
  friend SharedBytes allocate_shared_bytes(std::size_t size);
  std::shared_ptr<const void> owner_;
  std::span<std::byte> bytes_;
};

/// Allocates `size` bytes in the shared-memory blob arena (in the host or in a
/// worker). Throws std::bad_alloc when the arena is full (PLUMBER_ARENA_MB sets
/// its size, default 1024).
SharedBytes allocate_shared_bytes(std::size_t size);

/// True when `blob`'s bytes are in the shared-memory arena (they will cross to a
/// worker without a copy).
bool in_shared_memory(const Blob& blob) noexcept;

/// One worker process of a pool.
struct WorkerStats {
  std::size_t index = 0;
  int pid = 0;              ///< its current (or last) process; 0 before the first
  bool ready = false;       ///< running: ran on_start and takes work
  std::uint64_t tasks = 0;  ///< messages it completed
  std::uint64_t restarts = 0;
};

/// A change of an auto-scaled pool's size.
struct ScaleEvent {
  std::uint64_t at_ms = 0;  ///< since the pool started
  std::size_t from = 0, to = 0;
};

/// Counters of a node's worker pool (`procs`, or the copies of an `exec`
/// program). Updated on the pipeline's strand.
struct WorkerPoolStats {
  std::size_t procs = 0;  ///< workers running now (the current size)
  /// Auto-scaling bounds (`"procs": {"min", "max"}`); both 0 for a fixed pool.
  std::size_t procs_min = 0, procs_max = 0;
  std::uint64_t scale_ups = 0, scale_downs = 0;
  /// The last changes of size, oldest first (at most 64).
  std::vector<ScaleEvent> scale_events;
  /// The pool runs copies of an external program (`exec`), not worker processes.
  bool program = false;
  std::uint64_t tasks_done = 0;    ///< messages whose batch came back (results or step errors)
  std::uint64_t batches_done = 0;  ///< calls of the step in workers
  std::uint64_t in_flight = 0;     ///< messages sent to workers and not back yet
  std::uint64_t max_batch = 0;     ///< largest batch sent
  std::uint64_t restarts = 0;      ///< workers restarted after they died
  std::uint64_t deaths = 0;        ///< workers that died (crash, kill, abort, exit)
  std::uint64_t queue_ns = 0;   ///< total time batches waited between send and the worker's start
  std::uint64_t worker_ns = 0;  ///< total time spent inside the step in workers
  std::uint64_t blob_bytes_copied = 0;  ///< blob bytes copied into shared memory
  std::uint64_t blob_bytes_shared = 0;  ///< blob bytes handed over by reference
  std::vector<WorkerStats> workers;
};

}  // namespace plumber

#pragma once
/// Shared memory for worker processes: named POSIX segments, the SPSC byte
/// rings that carry requests and results, and the blob arena.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace plumber::detail {

/// An fd closed on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  ~UniqueFd() { reset(); }
  int get() const noexcept { return fd_; }
  int release() noexcept {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1) noexcept;
  explicit operator bool() const noexcept { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

/// Throws std::system_error for errno, naming `what`.
[[noreturn]] void throw_errno(const std::string& what);

/// A shared mapping of a POSIX shm segment, unmapped on destruction.
///
/// Segments are named `/plumber-<pid>-<what>` so that a later run can find the
/// ones a dead process left behind (remove_stale_segments), but the name is
/// unlinked as soon as the segment exists: processes share it through inherited
/// fds, and the memory goes away with the last fd and mapping, however the
/// processes end. Only a parent killed between shm_open and shm_unlink leaves a
/// name behind.
class Mapping {
 public:
  Mapping() = default;
  Mapping(Mapping&& other) noexcept;
  Mapping& operator=(Mapping&& other) noexcept;
  ~Mapping();

  /// Whether the pages are faulted in when mapped, or on first touch.
  enum class Pages { lazy, populated };
  /// Creates a segment of `size` bytes (zero-filled).
  static Mapping create(const std::string& name, std::size_t size, Pages pages = Pages::lazy);
  /// Maps an inherited segment fd (takes ownership of the fd).
  static Mapping attach(int fd, Pages pages = Pages::lazy);

  std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  int fd() const noexcept { return fd_.get(); }
  explicit operator bool() const noexcept { return data_ != nullptr; }

 private:
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  UniqueFd fd_;
};

/// Removes `/dev/shm/plumber-<pid>-*` segments whose process is gone. Returns
/// how many it removed.
std::size_t remove_stale_segments();

/// Positions of one single-producer single-consumer ring, each on its own cache
/// line. Indices grow forever; the offset in the ring is index % capacity.
struct RingIndices {
  alignas(64) std::atomic<std::uint64_t> head{0};  // written by the consumer
  alignas(64) std::atomic<std::uint64_t> tail{0};  // the producer's alone
  /// What each record's stamp is mixed with (never 0), set when the segment
  /// is laid out.
  std::uint64_t key = 0;
};

/// A ring of variable-length records in shared memory, for one producer and
/// one consumer process.
///
/// Hand-written rather than Boost.Interprocess's message_queue: that one takes
/// a process-shared mutex and condition variable on every message (a worker
/// killed while holding it would hang the parent), copies fixed-size slots,
/// and cannot be awaited on an Asio executor. Here wake-ups go through
/// eventfds that the parent awaits like any socket.
///
/// Each record starts with a stamp, its index mixed with the ring's key,
/// stored (release) after the rest of the record: a producer that dies
/// mid-write leaves nothing half-visible. The consumer waits on the stamp at
/// its head, not on the producer's tail, so a small record arrives in the
/// same cache line as the news that it is there: one transfer between cores
/// instead of two. What was at that place on an earlier lap carries an older
/// index, and stale payload bytes match a random 64-bit key by chance alone.
class ByteRing {
 public:
  ByteRing() = default;
  ByteRing(RingIndices* indices, std::byte* data, std::size_t capacity) noexcept
      : indices_(indices), data_(data), capacity_(capacity), key_(indices->key) {}

  /// Records start on cache lines (of this many bytes), and so does the ring.
  static constexpr std::size_t kRecordAlignment = 64;
  /// The largest record that always fits (larger ones go out of line).
  std::size_t max_record() const noexcept { return capacity_ / 2 - kRecordAlignment; }

  /// Producer: copies `record` in and publishes it; false when full.
  bool try_push(std::span<const std::byte> record) noexcept;
  /// Consumer: the next record, or an empty span. Valid until pop().
  std::span<const std::byte> peek() noexcept;
  /// Consumer: releases the record peek() returned.
  void pop() noexcept;
  /// True when nothing is waiting (consumer side). False for a wrap marker
  /// alone too: then peek() skips it and finds nothing.
  bool empty() const noexcept;

 private:
  std::atomic_ref<std::uint64_t> stamp_at(std::uint64_t index) const noexcept;
  /// Writes the header of the record at `at`, whose payload is in place, then
  /// its stamp: the record is visible from then on.
  void publish(std::uint64_t at, std::uint32_t size, std::uint32_t kind) noexcept;
  /// Whether the record at `at` is there (its stamp is this lap's).
  bool published(std::uint64_t at) const noexcept;

  RingIndices* indices_ = nullptr;
  std::byte* data_ = nullptr;
  std::size_t capacity_ = 0;  // a multiple of kRecordAlignment
  std::uint64_t key_ = 0;
  std::uint64_t peeked_end_ = 0;
  std::uint64_t known_head_ = 0;  // producer: the consumer's head, as last read
};

/// The per-worker segment: flags for wake-ups, the node's configuration and two
/// rings (requests parent -> worker, results worker -> parent).
struct SegmentHeader {
  static constexpr std::uint64_t kMagic = 0x706c756d62657231;  // "plumber1"
  std::uint64_t magic = kMagic;
  std::uint64_t ring_capacity = 0;
  std::uint64_t config_size = 0;  ///< JSON text right after the header
  /// Set by the worker before it sleeps on its request eventfd.
  alignas(64) std::atomic<std::uint32_t> worker_sleeping{0};
  /// Set by the parent before it waits on the result eventfd.
  alignas(64) std::atomic<std::uint32_t> parent_waiting{0};
  /// The request the worker is running (0: none yet). When it dies, this one
  /// is lost with it; later requests in the ring were never started.
  alignas(64) std::atomic<std::uint64_t> current_request{0};
  RingIndices requests;
  RingIndices results;
};

/// Typed view of a worker segment.
struct WorkerSegment {
  static constexpr std::size_t kConfigSpace = 64 * 1024;
  static std::size_t bytes_for(std::size_t ring_capacity) noexcept;
  /// Lays out a fresh segment (parent side).
  static WorkerSegment format(const Mapping& mapping, std::size_t ring_capacity,
                              const std::string& config);
  /// Reads a segment the parent laid out (worker side); throws when it is not one.
  static WorkerSegment open(const Mapping& mapping);

  SegmentHeader* header = nullptr;
  std::string config;
  ByteRing requests;
  ByteRing results;
};

/// The shared-memory blob arena of this process tree: one segment made by the
/// first process that needs it (the host), inherited by every worker, with a
/// Boost.Interprocess best-fit allocator guarded by a robust process-shared
/// mutex (a worker killed while allocating does not hang the others).
class Arena {
 public:
  /// This process's arena: created on first use in the host, attached from the
  /// inherited fd in a worker.
  static Arena& instance();
  /// In a worker: attaches the arena the host passed (before instance()).
  static void attach(int fd);
  /// Whether an arena exists in this process yet.
  static bool exists() noexcept;

  int fd() const noexcept { return mapping_.fd(); }
  /// nullptr when full.
  void* allocate(std::size_t size) noexcept;
  void deallocate(const void* pointer) noexcept;
  bool contains(const void* pointer, std::size_t size) const noexcept;
  std::uint64_t offset_of(const void* pointer) const noexcept;
  std::byte* at(std::uint64_t offset) const noexcept { return mapping_.data() + offset; }
  std::size_t capacity() const noexcept { return mapping_.size(); }

  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena();

 private:
  explicit Arena(Mapping mapping, bool create);
  struct Impl;
  Mapping mapping_;
  Impl* impl_ = nullptr;
};

}  // namespace plumber::detail

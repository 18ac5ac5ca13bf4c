#pragma once
/// What travels on a worker's rings: requests (a batch) from the parent,
/// results, failures and readiness from the worker. Values are CBOR; blobs
/// travel as offsets into the shared arena, never as bytes.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "plumber/json.hpp"
#include "workers/shm.hpp"

namespace plumber::detail {

enum class RecordType : std::uint8_t {
  request = 1,       // parent -> worker: a batch
  exit = 2,          // parent -> worker: finish and exit 0
  result = 3,        // worker -> parent: the outputs of a batch
  failure = 4,       // worker -> parent: the step threw (text)
  ready = 5,         // worker -> parent: on_start done, taking work
  start_failed = 6,  // worker -> parent: could not start (text)
  out_of_line = 7,   // either way: the record is in the arena (offset, size)
};

/// The least a message takes in a record: id, priority, value size, blob
/// count (varints but the priority: a byte each at least).
inline constexpr std::size_t kMinMessageBytes = 4;

/// How a result blob is handed back.
enum class BlobMode : std::uint8_t {
  borrowed = 0,     // a slice of a blob of the request: the parent still owns it
  transferred = 1,  // allocated in the arena by the worker: the parent owns it now
};

/// Appends integers (fixed-size, or LEB128 varints), CBOR values and texts to a
/// byte buffer.
///
/// Ids, counts and sizes are varints: a request or result of one small message
/// then fits in one 64-byte ring record, one cache line for the other core to
/// fetch (fixed-size fields made a result 80 bytes, two lines).
class Encoder {
 public:
  explicit Encoder(std::vector<std::uint8_t>& out) : out_(out) {}
  void u8(std::uint8_t v) { out_.push_back(v); }
  void u64(std::uint64_t v) { raw(&v, sizeof v); }
  static constexpr std::size_t kMaxVarint = 10;
  /// Writes `v` as a varint at `out` (room for kMaxVarint); returns its length.
  static std::size_t varint_bytes(std::uint64_t v, std::uint8_t* out) noexcept {
    std::size_t n = 0;
    for (; v >= 0x80; v >>= 7)
      out[n++] = static_cast<std::uint8_t>(v | 0x80);
    out[n++] = static_cast<std::uint8_t>(v);
    return n;
  }
  void varint(std::uint64_t v) {
    std::uint8_t bytes[kMaxVarint];
    const std::size_t n = varint_bytes(v, bytes);
    for (std::size_t i = 0; i < n; ++i)
      out_.push_back(bytes[i]);
  }
  /// A value's CBOR, after its size (a varint).
  void value(const json& v);
  void text(std::string_view s) {
    varint(s.size());
    raw(s.data(), s.size());
  }
  std::size_t size() const noexcept { return out_.size(); }

 private:
  void raw(const void* p, std::size_t n) {
    const auto* b = static_cast<const std::uint8_t*>(p);
    out_.insert(out_.end(), b, b + n);
  }
  std::vector<std::uint8_t>& out_;
};

/// Reads what Encoder wrote; throws std::runtime_error on a truncated record.
class Decoder {
 public:
  explicit Decoder(std::span<const std::byte> in) : p_(in.data()), end_(in.data() + in.size()) {}
  std::uint8_t u8() {
    std::uint8_t v;
    raw(&v, 1);
    return v;
  }
  std::uint64_t u64() {
    std::uint64_t v;
    raw(&v, sizeof v);
    return v;
  }
  std::uint64_t varint() {
    std::uint64_t v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
      need(1);
      const auto b = static_cast<std::uint8_t>(*p_++);
      v |= std::uint64_t{b & 0x7fu} << shift;
      if (b < 0x80) return v;
    }
    throw std::runtime_error("worker record: varint longer than 10 bytes");
  }
  json value();
  std::string text();
  /// Bytes not read yet.
  std::size_t remaining() const noexcept { return static_cast<std::size_t>(end_ - p_); }
  /// A count read from the record, checked against what is left: each item
  /// takes at least `min_size` bytes (a corrupt count must not allocate gigabytes).
  std::uint32_t count(std::size_t min_size) {
    const std::uint64_t n = varint();
    if (n > remaining() / min_size) throw std::runtime_error("worker record: count past its end");
    return static_cast<std::uint32_t>(n);
  }

 private:
  void need(std::size_t n) const {
    if (static_cast<std::size_t>(end_ - p_) < n)
      throw std::runtime_error("truncated worker record");
  }
  void raw(void* out, std::size_t n) {
    need(n);
    std::memcpy(out, p_, n);
    p_ += n;
  }
  const std::byte* p_;
  const std::byte* end_;
};

/// Publishes `record` on `ring`. A record larger than the ring's largest is
/// placed in the arena and a reference travels instead. False when the ring
/// has no room (nothing was published).
bool push_record(ByteRing& ring, std::span<const std::uint8_t> record);

/// A record read from a ring, with out-of-line records resolved. Frees the
/// arena copy of an out-of-line record when destroyed.
class IncomingRecord {
 public:
  explicit IncomingRecord(std::span<const std::byte> bytes);
  IncomingRecord(const IncomingRecord&) = delete;
  IncomingRecord& operator=(const IncomingRecord&) = delete;
  ~IncomingRecord();
  std::span<const std::byte> bytes() const noexcept { return bytes_; }

 private:
  std::span<const std::byte> bytes_;
  const void* arena_copy_ = nullptr;
};

/// Nanoseconds of CLOCK_MONOTONIC: the same clock in every process.
std::uint64_t monotonic_ns() noexcept;

/// The owner of an arena allocation: frees it when the last Blob goes, unless
/// its ownership was handed to another process.
struct ArenaAllocation {
  ArenaAllocation(void* p, std::size_t n);
  ~ArenaAllocation();
  ArenaAllocation(const ArenaAllocation&) = delete;
  ArenaAllocation& operator=(const ArenaAllocation&) = delete;
  void* pointer;
  std::size_t size;
  bool handed_over = false;
};

/// The live allocation of this process that contains [p, p+n), or nullptr
/// (the bytes belong to another process: a blob the parent lent).
ArenaAllocation* find_allocation(const void* p, std::size_t n);

}  // namespace plumber::detail

#include "workers/protocol.hpp"

#include <time.h>

#include <map>
#include <mutex>
#include <new>

#include "cbor_scalar.hpp"
#include "json_parse.hpp"
#include "plumber/worker_pool.hpp"

namespace plumber {

// --- SharedBytes (public) ----------------------------------------------------------

Blob SharedBytes::freeze() && {
  Blob blob(std::move(owner_), std::span<const std::byte>(bytes_.data(), bytes_.size()));
  bytes_ = {};
  return blob;
}

SharedBytes allocate_shared_bytes(std::size_t size) {
  auto& arena = detail::Arena::instance();
  void* p = arena.allocate(size);
  if (!p) throw std::bad_alloc();
  SharedBytes bytes;
  bytes.owner_ = std::make_shared<detail::ArenaAllocation>(p, size);
  bytes.bytes_ = std::span<std::byte>(static_cast<std::byte*>(p), size);
  return bytes;
}

bool in_shared_memory(const Blob& blob) noexcept {
  return detail::Arena::exists() && detail::Arena::instance().contains(blob.data(), blob.size());
}

}  // namespace plumber

namespace plumber::detail {

void Encoder::value(const json& v) {
  // One byte for the size, which a scalar or a small object needs; a longer
  // size makes room for its other bytes after the CBOR is written.
  const std::size_t at = out_.size();
  out_.push_back(0);
  if (!append_cbor_scalar(v, out_)) {
    json::to_cbor(v, nlohmann::detail::output_adapter<std::uint8_t>(out_));
  }
  const std::size_t n = out_.size() - at - 1;
  if (n < 0x80) {
    out_[at] = static_cast<std::uint8_t>(n);
    return;
  }
  std::uint8_t size[kMaxVarint];
  const std::size_t length = varint_bytes(n, size);
  out_.insert(out_.begin() + static_cast<std::ptrdiff_t>(at) + 1, size + 1, size + length);
  std::memcpy(&out_[at], size, length);
}

json Decoder::value() {
  const std::uint64_t n = varint();
  need(n);
  const auto* first = reinterpret_cast<const std::uint8_t*>(p_);
  p_ += n;
  return parse_cbor(first, n);
}

std::string Decoder::text() {
  const std::uint64_t n = varint();
  need(n);
  std::string s(reinterpret_cast<const char*>(p_), n);
  p_ += n;
  return s;
}

bool push_record(ByteRing& ring, std::span<const std::uint8_t> record) {
  if (record.size() <= ring.max_record()) {
    return ring.try_push(std::as_bytes(record));
  }
  auto& arena = Arena::instance();
  void* copy = arena.allocate(record.size());
  if (!copy) throw std::bad_alloc();
  std::memcpy(copy, record.data(), record.size());
  std::vector<std::uint8_t> reference;
  Encoder e(reference);
  e.u8(static_cast<std::uint8_t>(RecordType::out_of_line));
  e.u64(arena.offset_of(copy));
  e.u64(record.size());
  if (ring.try_push(std::as_bytes(std::span<const std::uint8_t>(reference)))) return true;
  arena.deallocate(copy);
  return false;
}

IncomingRecord::IncomingRecord(std::span<const std::byte> bytes) : bytes_(bytes) {
  if (bytes.empty() || static_cast<RecordType>(bytes[0]) != RecordType::out_of_line) return;
  Decoder d(bytes);
  d.u8();
  const std::uint64_t offset = d.u64();
  const std::uint64_t size = d.u64();
  auto& arena = Arena::instance();
  const std::byte* at = arena.at(offset);
  if (!arena.contains(at, size)) throw std::runtime_error("out-of-line record outside the arena");
  bytes_ = {at, size};
  arena_copy_ = at;
}

IncomingRecord::~IncomingRecord() {
  if (arena_copy_) Arena::instance().deallocate(arena_copy_);
}

std::uint64_t monotonic_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

// --- allocations of this process -----------------------------------------------------

namespace {
std::mutex g_allocations_mutex;
std::map<std::uintptr_t, ArenaAllocation*> g_allocations;  // by start address
}  // namespace

ArenaAllocation::ArenaAllocation(void* p, std::size_t n) : pointer(p), size(n) {
  std::lock_guard lock(g_allocations_mutex);
  g_allocations[reinterpret_cast<std::uintptr_t>(p)] = this;
}

ArenaAllocation::~ArenaAllocation() {
  {
    std::lock_guard lock(g_allocations_mutex);
    g_allocations.erase(reinterpret_cast<std::uintptr_t>(pointer));
  }
  if (!handed_over) Arena::instance().deallocate(pointer);
}

ArenaAllocation* find_allocation(const void* p, std::size_t n) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  std::lock_guard lock(g_allocations_mutex);
  auto it = g_allocations.upper_bound(address);
  if (it == g_allocations.begin()) return nullptr;
  --it;
  ArenaAllocation* a = it->second;
  const auto begin = reinterpret_cast<std::uintptr_t>(a->pointer);
  if (address < begin || address + n > begin + a->size) return nullptr;
  return a;
}

}  // namespace plumber::detail

#include "workers/shm.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <new>
#include <random>
#include <system_error>
#include <utility>

#include <boost/interprocess/indexes/null_index.hpp>
#include <boost/interprocess/managed_external_buffer.hpp>
#include <boost/interprocess/mem_algo/rbtree_best_fit.hpp>
#include <boost/interprocess/sync/mutex_family.hpp>

namespace plumber::detail {

namespace bip = boost::interprocess;

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) reset(other.release());
  return *this;
}

void UniqueFd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

void throw_errno(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

// --- Mapping -------------------------------------------------------------------

namespace {
int map_flags(Mapping::Pages pages) {
  return MAP_SHARED | (pages == Mapping::Pages::populated ? MAP_POPULATE : 0);
}
}  // namespace

Mapping::Mapping(Mapping&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      fd_(std::move(other.fd_)) {}

Mapping& Mapping::operator=(Mapping&& other) noexcept {
  if (this != &other) {
    if (data_) ::munmap(data_, size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    fd_ = std::move(other.fd_);
  }
  return *this;
}

Mapping::~Mapping() {
  if (data_) ::munmap(data_, size_);
}

Mapping Mapping::create(const std::string& name, std::size_t size, Pages pages) {
  UniqueFd fd(::shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) throw_errno("shm_open " + name);
  // Unlinked at once: the segment lives as long as its fds and mappings.
  ::shm_unlink(name.c_str());
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) throw_errno("ftruncate " + name);
  void* data = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, map_flags(pages), fd.get(), 0);
  if (data == MAP_FAILED) throw_errno("mmap " + name);
  Mapping mapping;
  mapping.data_ = static_cast<std::byte*>(data);
  mapping.size_ = size;
  mapping.fd_ = std::move(fd);
  return mapping;
}

Mapping Mapping::attach(int fd, Pages pages) {
  UniqueFd owned(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_errno("fstat shared memory fd");
  const auto size = static_cast<std::size_t>(st.st_size);
  void* data = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, map_flags(pages), fd, 0);
  if (data == MAP_FAILED) throw_errno("mmap shared memory fd");
  Mapping mapping;
  mapping.data_ = static_cast<std::byte*>(data);
  mapping.size_ = size;
  mapping.fd_ = std::move(owned);
  return mapping;
}

std::size_t remove_stale_segments() {
  namespace fs = std::filesystem;
  std::size_t removed = 0;
  std::error_code ec;
  for (fs::directory_iterator it("/dev/shm", ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    constexpr std::string_view prefix = "plumber-";
    if (name.rfind(prefix, 0) != 0) continue;
    char* end_of_pid = nullptr;
    const long pid = std::strtol(name.c_str() + prefix.size(), &end_of_pid, 10);
    if (pid <= 0 || *end_of_pid != '-') continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // alive
    if (::shm_unlink(("/" + name).c_str()) == 0) ++removed;
  }
  return removed;
}

// --- ByteRing --------------------------------------------------------------------

namespace {

// A record: its stamp, a header (payload size, kind), then the payload, padded
// to a cache line. Each record starts a line, so a small one is one line for
// the other core to fetch, its stamp included; and a header always fits
// before the end of the ring.
struct RecordHeader {
  std::uint64_t stamp;
  std::uint32_t size;
  std::uint32_t kind;  // 0: a record, 1: skip to the start of the ring
};
static_assert(sizeof(RecordHeader) == 16);
constexpr std::uint32_t kRecord = 0;
constexpr std::uint32_t kWrap = 1;

constexpr std::uint64_t padded(std::uint64_t n) noexcept {
  constexpr std::uint64_t line = ByteRing::kRecordAlignment;
  return (n + (line - 1)) & ~(line - 1);
}

}  // namespace

std::atomic_ref<std::uint64_t> ByteRing::stamp_at(std::uint64_t index) const noexcept {
  return std::atomic_ref<std::uint64_t>(
      *reinterpret_cast<std::uint64_t*>(data_ + index % capacity_));
}

void ByteRing::publish(std::uint64_t at, std::uint32_t size, std::uint32_t kind) noexcept {
  const std::uint32_t header[2] = {size, kind};
  std::memcpy(data_ + at % capacity_ + offsetof(RecordHeader, size), header, sizeof header);
  stamp_at(at).store(at ^ key_, std::memory_order_release);
}

bool ByteRing::published(std::uint64_t at) const noexcept {
  return stamp_at(at).load(std::memory_order_acquire) == (at ^ key_);
}

bool ByteRing::try_push(std::span<const std::byte> record) noexcept {
  const std::uint64_t tail = indices_->tail.load(std::memory_order_relaxed);
  const std::uint64_t need = padded(sizeof(RecordHeader) + record.size());
  const std::uint64_t pos = tail % capacity_;
  const std::uint64_t to_end = capacity_ - pos;
  const std::uint64_t skip = to_end < need ? to_end : 0;
  // The consumer's head is read only when the last one seen leaves no room:
  // reading it each time would pull its cache line from the other core.
  if (need + skip > capacity_ - (tail - known_head_)) {
    known_head_ = indices_->head.load(std::memory_order_acquire);
    if (need + skip > capacity_ - (tail - known_head_)) return false;
  }
  std::uint64_t at = tail;
  if (skip) {
    publish(at, 0, kWrap);
    at += skip;
  }
  if (!record.empty()) {
    std::memcpy(data_ + at % capacity_ + sizeof(RecordHeader), record.data(), record.size());
  }
  publish(at, static_cast<std::uint32_t>(record.size()), kRecord);
  indices_->tail.store(at + need, std::memory_order_relaxed);
  return true;
}

std::span<const std::byte> ByteRing::peek() noexcept {
  std::uint64_t head = indices_->head.load(std::memory_order_relaxed);
  while (published(head)) {
    const std::uint64_t pos = head % capacity_;
    RecordHeader header;
    std::memcpy(&header, data_ + pos, sizeof header);
    if (header.kind == kWrap) {
      head += capacity_ - pos;
      indices_->head.store(head, std::memory_order_release);
      continue;
    }
    peeked_end_ = head + padded(sizeof header + header.size);
    return {data_ + pos + sizeof header, header.size};
  }
  return {};
}

void ByteRing::pop() noexcept {
  indices_->head.store(peeked_end_, std::memory_order_release);
}

bool ByteRing::empty() const noexcept {
  return !published(indices_->head.load(std::memory_order_relaxed));
}

// --- WorkerSegment ---------------------------------------------------------------

// The rings start on a cache line, as their records do.
static_assert((sizeof(SegmentHeader) + WorkerSegment::kConfigSpace) % ByteRing::kRecordAlignment ==
              0);

std::size_t WorkerSegment::bytes_for(std::size_t ring_capacity) noexcept {
  return sizeof(SegmentHeader) + kConfigSpace + 2 * ring_capacity;
}

WorkerSegment WorkerSegment::format(const Mapping& mapping, std::size_t ring_capacity,
                                    const std::string& config) {
  if (config.size() > kConfigSpace) {
    throw std::length_error("worker configuration (params) larger than 64 KiB");
  }
  if (ring_capacity % ByteRing::kRecordAlignment != 0) {
    throw std::invalid_argument("ring capacity not a multiple of 64");
  }
  auto* header = new (mapping.data()) SegmentHeader;
  header->ring_capacity = ring_capacity;
  std::random_device random;
  for (RingIndices* ring : {&header->requests, &header->results}) {
    ring->key = (std::uint64_t{random()} << 32 | random()) | 1;
  }
  header->config_size = config.size();
  std::byte* config_area = mapping.data() + sizeof(SegmentHeader);
  std::memcpy(config_area, config.data(), config.size());
  WorkerSegment segment;
  segment.header = header;
  segment.config = config;
  std::byte* rings = config_area + kConfigSpace;
  segment.requests = ByteRing(&header->requests, rings, ring_capacity);
  segment.results = ByteRing(&header->results, rings + ring_capacity, ring_capacity);
  return segment;
}

WorkerSegment WorkerSegment::open(const Mapping& mapping) {
  auto* header = reinterpret_cast<SegmentHeader*>(mapping.data());
  if (mapping.size() < sizeof(SegmentHeader) || header->magic != SegmentHeader::kMagic ||
      header->ring_capacity == 0 || header->ring_capacity % ByteRing::kRecordAlignment != 0 ||
      mapping.size() < bytes_for(header->ring_capacity)) {
    throw std::runtime_error("not a Plumber worker segment");
  }
  WorkerSegment segment;
  segment.header = header;
  const auto* config_area = reinterpret_cast<const char*>(mapping.data() + sizeof(SegmentHeader));
  segment.config.assign(config_area, header->config_size);
  std::byte* rings = mapping.data() + sizeof(SegmentHeader) + kConfigSpace;
  const std::size_t capacity = header->ring_capacity;
  segment.requests = ByteRing(&header->requests, rings, capacity);
  segment.results = ByteRing(&header->results, rings + capacity, capacity);
  return segment;
}

// --- Arena -----------------------------------------------------------------------

namespace {

using ArenaBuffer =
    bip::basic_managed_external_buffer<char, bip::rbtree_best_fit<bip::null_mutex_family>,
                                       bip::null_index>;

struct ArenaHeader {
  static constexpr std::uint64_t kMagic = 0x706c756d62617231;  // "plumbar1"
  std::uint64_t magic;
  pthread_mutex_t mutex;
};
constexpr std::size_t kArenaHeaderSpace = 4096;

// Read on every request and result: an atomic to read, a mutex to make.
std::atomic<Arena*> g_arena{nullptr};
std::mutex g_arena_mutex;

class ArenaLock {
 public:
  explicit ArenaLock(pthread_mutex_t& mutex) : mutex_(mutex) {
    // Robust: when a process died holding it, the next owner is told and
    // takes over (the allocator state may then have lost that one operation).
    if (pthread_mutex_lock(&mutex_) == EOWNERDEAD) pthread_mutex_consistent(&mutex_);
  }
  ~ArenaLock() { pthread_mutex_unlock(&mutex_); }

 private:
  pthread_mutex_t& mutex_;
};

std::size_t arena_size_from_env() {
  std::size_t megabytes = 1024;
  if (const char* text = std::getenv("PLUMBER_ARENA_MB")) {
    const long value = std::strtol(text, nullptr, 10);
    if (value > 0) megabytes = static_cast<std::size_t>(value);
  }
  return megabytes << 20;
}

}  // namespace

struct Arena::Impl {
  ArenaHeader* header;
  ArenaBuffer buffer;
};

Arena::Arena(Mapping mapping, bool create) : mapping_(std::move(mapping)) {
  auto* header = reinterpret_cast<ArenaHeader*>(mapping_.data());
  std::byte* start = mapping_.data() + kArenaHeaderSpace;
  const std::size_t size = mapping_.size() - kArenaHeaderSpace;
  if (create) {
    header->magic = ArenaHeader::kMagic;
    pthread_mutexattr_t attributes;
    pthread_mutexattr_init(&attributes);
    pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attributes, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&header->mutex, &attributes);
    pthread_mutexattr_destroy(&attributes);
    impl_ = new Impl{header, ArenaBuffer(bip::create_only, start, size)};
  } else {
    if (header->magic != ArenaHeader::kMagic) throw std::runtime_error("not a Plumber arena");
    impl_ = new Impl{header, ArenaBuffer(bip::open_only, start, size)};
  }
}

Arena::~Arena() {
  delete impl_;
}

Arena& Arena::instance() {
  if (Arena* arena = g_arena.load(std::memory_order_acquire)) return *arena;
  std::lock_guard lock(g_arena_mutex);
  if (!g_arena.load(std::memory_order_relaxed)) {
    const std::string name = "/plumber-" + std::to_string(::getpid()) + "-arena";
    g_arena.store(new Arena(Mapping::create(name, arena_size_from_env()), true),
                  std::memory_order_release);
  }
  return *g_arena.load(std::memory_order_relaxed);
}

void Arena::attach(int fd) {
  std::lock_guard lock(g_arena_mutex);
  if (g_arena.load(std::memory_order_relaxed)) {
    throw std::logic_error("Arena::attach: this process already has an arena");
  }
  g_arena.store(new Arena(Mapping::attach(fd), false), std::memory_order_release);
}

bool Arena::exists() noexcept {
  return g_arena.load(std::memory_order_acquire) != nullptr;
}

void* Arena::allocate(std::size_t size) noexcept {
  ArenaLock lock(impl_->header->mutex);
  return impl_->buffer.allocate(size == 0 ? 1 : size, std::nothrow);
}

void Arena::deallocate(const void* pointer) noexcept {
  ArenaLock lock(impl_->header->mutex);
  impl_->buffer.deallocate(const_cast<void*>(pointer));
}

bool Arena::contains(const void* pointer, std::size_t size) const noexcept {
  const auto* p = static_cast<const std::byte*>(pointer);
  const std::byte* begin = mapping_.data() + kArenaHeaderSpace;
  const std::byte* end = mapping_.data() + mapping_.size();
  return p >= begin && p <= end && size <= static_cast<std::size_t>(end - p);
}

std::uint64_t Arena::offset_of(const void* pointer) const noexcept {
  return static_cast<std::uint64_t>(static_cast<const std::byte*>(pointer) - mapping_.data());
}

}  // namespace plumber::detail

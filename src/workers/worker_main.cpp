// The worker side: run_worker_if_requested and the loop of a worker process.
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>

#include "json_parse.hpp"
#include "plumber/plugin.hpp"
#include "plumber/registry.hpp"
#include "plumber/worker_pool.hpp"
#include "workers/busy_clock.hpp"
#include "workers/protocol.hpp"
#include "workers/shm.hpp"
#include "workers/worker_launch.hpp"

namespace plumber {
namespace detail {
namespace {

/// A worker process: reads batches from its request ring, runs the step,
/// writes results.
class WorkerLoop {
 public:
  WorkerLoop(const WorkerFds& fds)
      : mapping_(Mapping::attach(fds.segment, Mapping::Pages::populated)),
        segment_(WorkerSegment::open(mapping_)),
        requests_efd_(fds.requests),
        results_efd_(fds.results),
        parent_(fds.parent) {
    config_ = parse_json(segment_.config);
    spin_ = std::chrono::microseconds(config_.value("spin_us", 50));
  }

  int run(const Registry& registry) {
    if (!start(registry)) return 1;
    for (;;) {
      std::span<const std::byte> bytes = wait_for_request();
      if (bytes.empty()) return 0;  // the parent is gone
      // Decode first: the request's space in the ring is then free for more.
      const IncomingRecord record(bytes);
      Decoder d(record.bytes());
      const auto type = static_cast<RecordType>(d.u8());
      if (type == RecordType::exit) {
        segment_.requests.pop();
        return 0;
      }
      if (type != RecordType::request)
        throw std::runtime_error("unexpected record from the parent");
      const std::uint64_t request_id = d.varint();
      decode_batch(d);
      segment_.header->current_request.store(request_id, std::memory_order_release);
      segment_.requests.pop();
      process(request_id);
      // After std::bad_alloc the step's state cannot be trusted: leave, and the
      // pool starts a fresh worker (its batches in flight are retried or reported).
      if (out_of_memory_) return kExitOutOfMemory;
    }
  }

  /// A worker that exits with this code ran out of memory in a step.
  static constexpr int kExitOutOfMemory = 75;

 private:
  bool start(const Registry& registry) {
    std::string error;
    try {
      const std::string name = config_.at("coroutine").get<std::string>();
      const CoroutineInfo* info = registry.find(name);
      std::unique_ptr<Registry> extended;
      if (!info && config_.contains("plugins")) {
        // Plugins the parent loaded after this program registered its coroutines.
        extended = std::make_unique<Registry>(registry);
        for (const auto& path : config_["plugins"]) {
          try {
            load_plugin(path.get<std::string>(), *extended);
          } catch (const std::exception&) {
            // A plugin that clashes with what is registered: keep what we have.
          }
        }
        info = extended->find(name);
      }
      if (!info || !info->make_transform) {
        throw std::runtime_error("coroutine \"" + name +
                                 "\" is not registered in the worker process (register it "
                                 "before calling plumber::run_worker_if_requested)");
      }
      try {
        transform_ = info->make_transform(config_.at("params"));
      } catch (const std::exception& e) {
        throw std::runtime_error(std::string("making the step failed: ") + e.what());
      }
      try {
        transform_->on_start();
      } catch (const std::exception& e) {
        throw std::runtime_error(std::string("its on_start threw: ") + e.what());
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
    std::vector<std::uint8_t> record;
    Encoder e(record);
    if (error.empty()) {
      e.u8(static_cast<std::uint8_t>(RecordType::ready));
      e.u64(static_cast<std::uint64_t>(::getpid()));
    } else {
      e.u8(static_cast<std::uint8_t>(RecordType::start_failed));
      e.text(error);
    }
    push(record);
    signal_parent(true);
    return error.empty();
  }

  /// Into batch_, whose room the last request left.
  void decode_batch(Decoder& d) {
    auto& arena = Arena::instance();
    const std::uint32_t count = d.count(kMinMessageBytes);
    batch_.clear();
    batch_.resize(count);
    for (Message& m : batch_) {
      m.id = d.varint();
      m.priority = d.u8();
      m.value = d.value();
      const std::uint32_t blobs = d.count(8 + 8);
      m.blobs.reserve(blobs);
      for (std::uint32_t i = 0; i < blobs; ++i) {
        const std::uint64_t offset = d.u64();
        const std::uint64_t size = d.u64();
        const std::byte* at = arena.at(offset);
        if (!arena.contains(at, size)) throw std::runtime_error("blob outside the arena");
        // Lent by the parent for the length of the call: no owner here.
        m.blobs.emplace_back(std::shared_ptr<const void>(), std::span<const std::byte>(at, size));
      }
    }
  }

  void process(std::uint64_t request_id) {
    std::vector<Message>& batch = batch_;
    std::vector<Message>& out = out_;
    std::string failure;
    const std::uint64_t started = clock_.now();
    try {
      if (transform_->is_async()) {
        run_async(batch, out);
      } else {
        transform_->process(batch, out);
      }
    } catch (const std::bad_alloc&) {
      out_of_memory_ = true;
      failure = "out of memory (std::bad_alloc) in the step; its worker process is replaced";
    } catch (const std::exception& e) {
      failure = e.what();
    } catch (...) {
      failure = "unknown exception";
    }
    const std::uint64_t finished = std::max(clock_.now(), started);
    record_.clear();
    Encoder e(record_);
    if (failure.empty()) {
      try {
        encode_results(e, request_id, started, finished, out);
      } catch (const std::exception& error) {
        record_.clear();
        failure = std::string("could not return the results: ") + error.what();
      }
    }
    if (!failure.empty()) {
      e.u8(static_cast<std::uint8_t>(RecordType::failure));
      e.varint(request_id);
      e.u64(started);
      e.varint(finished - started);
      e.text(failure);
    }
    push(record_);
    signal_parent(false);
    // A worker that is never idle long enough to calibrate in wait().
    if ((++batches_ & 1023) == 0) clock_.calibrate();
    // Now: a blob handed over must not outlive its record here (its arena
    // block is the parent's to free and reuse).
    batch.clear();
    out.clear();
  }

  void run_async(std::vector<Message>& batch, std::vector<Message>& out) {
    boost::asio::io_context io;
    std::exception_ptr error;
    boost::asio::co_spawn(io, transform_->process_async(batch, out),
                          [&](std::exception_ptr e) { error = e; });
    io.run();
    if (error) std::rethrow_exception(error);
  }

  void encode_results(Encoder& e, std::uint64_t request_id, std::uint64_t started,
                      std::uint64_t finished, std::vector<Message>& out) {
    auto& arena = Arena::instance();
    std::uint64_t copied = 0;
    for (Message& m : out) {
      for (Blob& blob : m.blobs) {
        if (!arena.contains(blob.data(), blob.size())) {
          // Made in private memory: into the arena once, then handed over.
          SharedBytes bytes = allocate_shared_bytes(blob.size());
          if (blob.size()) std::memcpy(bytes.data(), blob.data(), blob.size());
          copied += blob.size();
          blob = std::move(bytes).freeze();
        }
      }
    }
    e.u8(static_cast<std::uint8_t>(RecordType::result));
    e.varint(request_id);
    e.u64(started);
    e.varint(finished - started);
    e.varint(copied);
    e.varint(out.size());
    for (Message& m : out) {
      e.varint(m.id);
      e.u8(m.priority);
      e.value(m.value);
      e.varint(m.blobs.size());
      for (Blob& blob : m.blobs) {
        ArenaAllocation* allocation = find_allocation(blob.data(), blob.size());
        if (allocation) {
          allocation->handed_over = true;
          e.u8(static_cast<std::uint8_t>(BlobMode::transferred));
          e.u64(arena.offset_of(blob.data()));
          e.u64(blob.size());
          e.u64(arena.offset_of(allocation->pointer));
          e.u64(allocation->size);
        } else {
          e.u8(static_cast<std::uint8_t>(BlobMode::borrowed));
          e.u64(arena.offset_of(blob.data()));
          e.u64(blob.size());
        }
      }
    }
  }

  /// The next request, spinning briefly before sleeping; empty when the parent died.
  std::span<const std::byte> wait_for_request() {
    for (;;) {
      auto bytes = segment_.requests.peek();
      if (!bytes.empty()) return bytes;
      if (!wait([&] { return !segment_.requests.empty(); })) return {};
    }
  }

  void push(const std::vector<std::uint8_t>& record) {
    while (!push_record(segment_.results, record)) {
      // The parent has not read our results yet: wait for it to make room.
      signal_parent(true);
      if (!wait([] { return false; }, std::chrono::milliseconds(1))) std::exit(0);
    }
  }

  /// Spins up to spin_ for `ready`, then sleeps on the request eventfd (at most
  /// `limit`). False when the parent is gone.
  template <class Ready>
  bool wait(Ready ready, std::chrono::milliseconds limit = std::chrono::milliseconds(-1)) {
    // The spin is timed from its 64th round: a request that comes sooner
    // (request/response) costs no clock read, ~30 ns in a VM.
    std::chrono::steady_clock::time_point started, spin_until;
    for (unsigned i = 1;; ++i) {
      if (ready()) return true;
      if ((i & 63) == 0) {
        const auto now = std::chrono::steady_clock::now();
        if (i == 64) {
          started = now;
          spin_until = now + spin_;
          clock_.calibrate();  // idle: a clock read costs nobody anything
        }
        if (now > spin_until) break;
        // When the parent shares this core (a busy machine), let it run: a
        // spin would only delay the request it is about to write. Not in the
        // first microseconds, when the next request of a request/response
        // client is due: a yield costs a microsecond or more in a VM, and a
        // request that comes meanwhile waits for it. (Yielding at once made
        // throughput 1.5x better on a machine whose two cores are SMT siblings.)
        if (now - started > kQuietSpin) ::sched_yield();
      }
      __builtin_ia32_pause();
    }
    auto& flag = segment_.header->worker_sleeping;
    flag.store(1, std::memory_order_seq_cst);
    bool alive = true;
    if (!ready()) {
      pollfd fds[2] = {{requests_efd_, POLLIN, 0}, {parent_, POLLIN, 0}};
      while (::poll(fds, 2, static_cast<int>(limit.count())) < 0 && errno == EINTR) {
      }
      if (fds[1].revents != 0) alive = false;  // the parent's end of the pipe closed
      if (fds[0].revents & POLLIN) {
        eventfd_t value;
        (void)::eventfd_read(requests_efd_, &value);
      }
    }
    flag.store(0, std::memory_order_relaxed);
    return alive;
  }

  void signal_parent(bool always) {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (always || segment_.header->parent_waiting.load(std::memory_order_relaxed)) {
      (void)::eventfd_write(results_efd_, 1);
    }
  }

  Mapping mapping_;
  WorkerSegment segment_;
  int requests_efd_;
  int results_efd_;
  int parent_;
  json config_;
  bool out_of_memory_ = false;
  std::chrono::microseconds spin_{50};
  BusyClock clock_;
  std::uint64_t batches_ = 0;
  static constexpr std::chrono::microseconds kQuietSpin{5};
  std::unique_ptr<Transform> transform_;
  // Kept from one request to the next with their room: a request answered in
  // a microsecond cannot afford three allocations.
  std::vector<Message> batch_, out_;
  std::vector<std::uint8_t> record_;
};

}  // namespace
}  // namespace detail

std::optional<int> run_worker_if_requested(const Registry& registry) {
  const std::optional<detail::WorkerFds> fds = detail::worker_fds_from_environment();
  if (!fds) return std::nullopt;
  // Its parent decides when it ends (an exit record, or the parent's death):
  // a Ctrl-C in a terminal reaches the whole process group, and is the parent's.
  ::signal(SIGINT, SIG_IGN);
  try {
    detail::Arena::attach(fds->arena);
    detail::WorkerLoop loop(*fds);
    return loop.run(registry);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "plumber worker: %s\n", e.what());
    return 70;
  }
}

}  // namespace plumber

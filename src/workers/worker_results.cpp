// What comes back from a worker: its output (forwarded to stderr, its tail
// kept for error messages) and its records (readiness, results, failures),
// and the pool's stats counted from them. Requests: worker_requests.cpp.
#include <signal.h>
#include <unistd.h>

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include "workers/child_process.hpp"
#include "workers/protocol.hpp"
#include "workers/worker_pool_parts.hpp"

namespace plumber::detail {

namespace {
constexpr std::size_t kOutputTail = 2048;  // of a worker's stderr, kept for error messages
}  // namespace

void WorkerPool::read_output_now(Worker& w) {
  if (!w.output) return;
  char buffer[4096];
  for (;;) {
    const ssize_t n = ::read(w.output->native_handle(), buffer, sizeof buffer);
    if (n <= 0) return;
    append_output(w, buffer, static_cast<std::size_t>(n));
  }
}

void WorkerPool::append_output(Worker& w, const char* data, std::size_t size) {
  // Forwarded as is: a worker's prints are the user's diagnostics.
  std::size_t written = 0;
  while (written < size) {
    const ssize_t n = ::write(STDERR_FILENO, data + written, size - written);
    if (n <= 0) break;
    written += static_cast<std::size_t>(n);
  }
  w.output_tail.append(data, size);
  if (w.output_tail.size() > kOutputTail) {
    w.output_tail.erase(0, w.output_tail.size() - kOutputTail);
  }
}

std::string WorkerPool::describe(const Worker& w) const {
  return "worker " + std::to_string(w.index) + " (pid " + std::to_string(w.pid) + ")";
}

std::string WorkerPool::with_output(const Worker& w, std::string text) const {
  return append_stderr_tail(std::move(text), w.output_tail);
}

bool WorkerPool::drain(Worker& w) {
  if (!w.segment.header) return false;
  bool any = false;
  for (;;) {
    const auto bytes = w.segment.results.peek();
    if (bytes.empty()) break;
    any = true;
    try {
      const IncomingRecord record(bytes);
      handle_record(w, record.bytes());
    } catch (const std::exception& e) {
      // A record we cannot read: the worker is not one of ours any more.
      w.start_error = std::string("protocol error: ") + e.what();
      ::kill(w.pid, SIGKILL);
    }
    w.segment.results.pop();
  }
  if (any) kick(w);  // it may be waiting for room in the results ring
  return any;
}

void WorkerPool::handle_record(Worker& w, std::span<const std::byte> bytes) {
  Decoder d(bytes);
  const auto type = static_cast<RecordType>(d.u8());
  switch (type) {
    case RecordType::ready:
      w.state = State::ready;
      w.ready_seen.store(true, std::memory_order_relaxed);
      return;
    case RecordType::start_failed:
      w.start_error = d.text();
      return;
    case RecordType::result:
    case RecordType::failure:
      break;
    default:
      throw std::runtime_error("unexpected record type " + std::to_string(static_cast<int>(type)));
  }
  const std::uint64_t request_id = d.varint();
  const std::uint64_t started = d.u64();
  const std::uint64_t busy = d.varint();
  const std::uint64_t finished = started + busy;
  w.last_finished = request_id;
  auto found = w.in_flight.find(request_id);
  Pending* p = found == w.in_flight.end() ? nullptr : found->second;
  if (p && p->sent_ns && started > p->sent_ns) queue_ns_.add(started - p->sent_ns);
  worker_ns_.add(busy);
  note_busy(busy);
  if (p) {  // for traces: which worker ran it, and when
    p->outcome->worker_pid = w.pid;
    p->outcome->worker_started_ns = started;
    p->outcome->worker_finished_ns = finished;
    if (p->sent_ns && finished > p->sent_ns)
      p->outcome->handed_to_finished_ns = finished - p->sent_ns;
  }
  batches_done_.add();
  if (type == RecordType::failure) {
    std::string text = d.text();
    if (!p) return;
    tasks_done_.add(p->batch->size());
    w.tasks.add(p->batch->size());
    *p->failure = std::move(text);
    complete(w, *p, true);
    return;
  }
  copied_.add(d.varint());
  const std::uint32_t count = d.count(kMinMessageBytes);
  // Straight into the caller's results; an abandoned batch's (timed out) are
  // decoded all the same, and their transferred blobs freed with them.
  std::vector<Message> abandoned;
  std::vector<Message>& out = p ? *p->results : abandoned;
  const std::size_t first = out.size();
  std::string problem;
  try {
    decode_results(d, count, p, out, problem);
  } catch (...) {
    out.resize(first);  // none of a record we could not read
    throw;
  }
  if (!p) return;
  tasks_done_.add(p->batch->size());
  w.tasks.add(p->batch->size());
  if (!problem.empty()) {
    out.resize(first);
    *p->failure = problem;
  }
  complete(w, *p, true);
}

void WorkerPool::decode_results(Decoder& d, std::uint32_t count, const Pending* p,
                                std::vector<Message>& out, std::string& problem) {
  auto& arena = Arena::instance();
  std::map<std::uint64_t, std::shared_ptr<ArenaAllocation>> handed_over;
  out.reserve(out.size() + count);
  for (std::uint32_t k = 0; k < count; ++k) {
    Message& m = out.emplace_back();
    m.id = d.varint();
    m.priority = d.u8();
    m.value = d.value();
    const std::uint32_t blobs = d.count(1 + 8 + 8);
    for (std::uint32_t i = 0; i < blobs; ++i) {
      const auto mode = static_cast<BlobMode>(d.u8());
      const std::uint64_t offset = d.u64();
      const std::uint64_t size = d.u64();
      const std::byte* at = arena.at(offset);
      if (mode == BlobMode::transferred) {
        const std::uint64_t allocation_offset = d.u64();
        const std::uint64_t allocation_size = d.u64();
        auto& owner = handed_over[allocation_offset];
        if (!owner) {
          owner = std::make_shared<ArenaAllocation>(arena.at(allocation_offset), allocation_size);
        }
        m.blobs.emplace_back(owner, std::span<const std::byte>(at, size));
        shared_.add(size);
        continue;
      }
      // Borrowed: a slice of a blob we lent it.
      bool found_blob = false;
      if (p) {
        for (const Message& in : *p->batch) {
          for (const Blob& blob : in.blobs) {
            if (at >= blob.data() && at + size <= blob.data() + blob.size()) {
              m.blobs.push_back(blob.slice(static_cast<std::size_t>(at - blob.data()), size));
              shared_.add(size);
              found_blob = true;
              break;
            }
          }
          if (found_blob) break;
        }
      }
      if (!found_blob) problem = "the step returned a shared blob it did not own";
    }
  }
}

// --- stats -----------------------------------------------------------------------------

WorkerPoolStats WorkerPool::stats() const {
  WorkerPoolStats s;
  s.procs = size_.get();
  if (scaler_) scaler_->fill(s);
  s.tasks_done = tasks_done_.get();
  s.batches_done = batches_done_.get();
  s.in_flight = in_flight_.get();
  s.max_batch = max_batch_.load(std::memory_order_relaxed);
  s.restarts = restarts_.get();
  s.deaths = deaths_.get();
  s.queue_ns = queue_ns_.get();
  s.worker_ns = worker_ns_.get();
  s.blob_bytes_copied = copied_.get();
  s.blob_bytes_shared = shared_.get();
  for (const auto& w : workers_) {
    if (!w->active_seen.load(std::memory_order_relaxed)) continue;
    WorkerStats one;
    one.index = w->index;
    one.pid = w->pid_seen.load(std::memory_order_relaxed);
    one.ready = w->ready_seen.load(std::memory_order_relaxed);
    one.tasks = w->tasks.get();
    one.restarts = w->restarts.get();
    s.workers.push_back(one);
  }
  return s;
}

}  // namespace plumber::detail

#pragma once
/// What exec_pool.cpp (the copies) and exec_requests.cpp (requests and
/// results) share: one batch in flight, and one copy of the program.
#include "exec/exec_pool.hpp"

namespace plumber::detail {

using Descriptor = asio::posix::stream_descriptor;

/// One batch: lives in the frame of the process() call that waits for it.
struct ExecPool::Pending {
  explicit Pending(const Strand& strand) : timer(strand) {}
  std::uint64_t request_id = 0;
  std::uint8_t priority = 0;
  std::vector<Message>* batch = nullptr;
  std::vector<Message>* results = nullptr;
  StepOutcome* outcome = nullptr;
  std::optional<std::chrono::milliseconds> timeout;
  asio::steady_timer timer;  // timeout_ms, armed when a copy takes the batch
  asio::experimental::channel<void(error_code)>* signal = nullptr;
  Copy* copy = nullptr;  // the copy running it, once sent
  std::uint64_t queued_ns = 0, sent_ns = 0;
  bool done = false;
  bool aborted = false;  // the pool was cancelled
};

struct ExecPool::Copy {
  Copy(std::size_t i, const Strand& strand) : index(i), backoff(strand) {}
  std::size_t index;
  pid_t pid = 0;
  std::optional<Descriptor> input;   // its stdin
  std::optional<Descriptor> output;  // its stdout
  std::optional<Descriptor> errors;  // its stderr
  std::optional<Descriptor> exit;    // a pidfd: readable when it ends
  State state = State::stopped;
  /// Counted in the pool's size. A copy the scaler retires is no longer
  /// active: it gets no more requests and its stdin is closed.
  bool active = false;
  bool supervised = false;  // a supervisor coroutine runs for it
  Clock::time_point start_deadline;
  std::string start_error;     // its {"error": ...} line
  std::string kill_reason;     // why the pool killed it (timeout, protocol error)
  bool killed_at_end = false;  // close() or shrink() killed it while it was starting
  std::string stdout_buffer, stderr_line, stderr_tail;
  /// The requests sent to it and not answered, oldest first: the first is
  /// the one it runs (a program answers in order), the others wait in its pipe.
  std::deque<std::uint64_t> requests;
  /// An async_write of a long request is still going on: nothing else may be
  /// written before it ends (set back by its handler).
  std::shared_ptr<bool> writing = std::make_shared<bool>(false);
  /// When its last answer was read: a request behind another in its pipe
  /// starts then, not when it was sent (for worker_ns).
  std::uint64_t last_answer_ns = 0;
  asio::steady_timer backoff;
  // Read by stats() from any thread.
  std::atomic<int> pid_seen{0};
  std::atomic<bool> ready_seen{false};
  std::atomic<bool> active_seen{false};
  Counter tasks, restarts;
};

}  // namespace plumber::detail

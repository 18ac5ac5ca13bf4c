// A synchronous step on threads of the node's own (`threads`).
//
// Not asio::thread_pool with a co_spawn a batch: that woke a sleeping pool
// thread (a futex) for nearly every batch and posted every result to the
// strand on its own, which woke the strand's thread again. With steps of about
// a microsecond that was two sleeps and two wake-ups a batch, 25 us on a
// 2-vCPU VM (40 k msgs/s where oneTBB's flow graph made 320 k; 140 k with this runner,
// docs/performance.md). Here batches go through one queue each way: a thread
// takes the next batch without sleeping while there is one and spins a while
// before it sleeps, a sleeping thread is woken only when no thread is awake to
// take the batch, and the results that finish while the strand is busy come
// back in one post.
#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "runtime/step_runner.hpp"

namespace plumber::detail {

namespace {

/// One batch handed to a thread; it lives in run()'s coroutine frame.
struct Job {
  std::vector<Message>* batch;
  std::vector<Message>* results;
  std::exception_ptr failure{};
  std::chrono::nanoseconds ran{0};
};

/// A job and what resumes its coroutine. The handler owns the coroutine, and
/// so the job: it is kept here, outside the frame, until it has run.
struct Entry {
  Job* job;
  asio::any_completion_handler<void()> resume;
  /// The strand, tracking work: the io_context's run() waits for the job.
  asio::any_io_executor work;
};

/// What the threads and the strand share. Held by a shared_ptr: a drain
/// posted to the strand may run after the runner is gone.
struct Handoff {
  Handoff(const Strand& s, std::uint64_t spin) : strand(s), spin_ns(spin) {}
  const Strand strand;
  const std::uint64_t spin_ns;  ///< how long an idle thread waits for work before sleeping

  std::mutex mutex;
  std::condition_variable work_ready;
  std::deque<Entry> queued;     ///< waiting for a thread
  std::vector<Entry> finished;  ///< waiting for the strand
  unsigned sleeping = 0;        ///< threads waiting on work_ready
  unsigned idle = 0;            ///< threads not running a step: sleeping, spinning or about to
  bool stopping = false;
  std::atomic<std::size_t> queued_count{0};  ///< queued.size(), read while spinning
};

/// PLUMBER_THREAD_SPIN_US, default 50: how long a thread of a `threads` node
/// spins for the next batch before it sleeps (0: it sleeps at once).
std::uint64_t spin_from_env() {
  const char* text = std::getenv("PLUMBER_THREAD_SPIN_US");
  return (text && *text ? std::strtoull(text, nullptr, 10) : 50) * 1000;
}

class ThreadPoolRunner final : public InProcessRunner {
 public:
  ThreadPoolRunner(std::unique_ptr<Transform> step, std::size_t threads, const Strand& strand)
      : InProcessRunner(std::move(step)),
        handoff_(std::make_shared<Handoff>(strand, spin_from_env())) {
    threads_.reserve(threads);
    try {
      for (std::size_t i = 0; i < threads; ++i)
        threads_.emplace_back([this] { serve(); });
    } catch (...) {  // no thread to be had (RLIMIT_NPROC): a loading error, not terminate()
      stop_threads();
      throw;
    }
  }

  ~ThreadPoolRunner() override { stop_threads(); }

  /// Not cancellable: a synchronous step cannot be interrupted. Once the step
  /// returns, the coroutine sees a cancellation at its next co_await.
  asio::awaitable<StepOutcome> run(std::vector<Message>& batch, std::vector<Message>& results,
                                   const AttemptLimits& limits) override {
    Job job{&batch, &results};
    co_await asio::async_initiate<decltype(asio::use_awaitable), void()>(
        [this, &job](auto handler) { submit(job, std::move(handler)); }, asio::use_awaitable);
    StepOutcome outcome;
    if (job.failure) {
      outcome.code = errc::step_failed;
      try {
        std::rethrow_exception(job.failure);
      } catch (const std::exception& e) {
        outcome = failed(e);
      } catch (...) {
        outcome.failure = "unknown exception";
      }
    } else if (limits.timeout && job.ran > *limits.timeout) {
      outcome.code = errc::timed_out;
      outcome.failure = timeout_text(*limits.timeout);
    }
    co_return outcome;
  }

 private:
  void stop_threads() noexcept {
    {
      const std::lock_guard lock(handoff_->mutex);
      handoff_->stopping = true;
    }
    handoff_->work_ready.notify_all();
    // The threads run what is queued first (the step is still alive), as
    // asio::thread_pool's join() did.
    for (std::thread& t : threads_)
      t.join();
  }

  void submit(Job& job, asio::any_completion_handler<void()> resume) {
    Handoff& h = *handoff_;
    bool wake;
    {
      const std::lock_guard lock(h.mutex);
      h.queued.push_back(Entry{&job, std::move(resume),
                               asio::prefer(h.strand, asio::execution::outstanding_work.tracked)});
      h.queued_count.store(h.queued.size(), std::memory_order_relaxed);
      // A thread between two steps, or spinning, takes it without a wake-up.
      wake = h.sleeping > 0 && h.queued.size() > h.idle - h.sleeping;
    }
    if (wake) h.work_ready.notify_one();
  }

  void serve() {
    Handoff& h = *handoff_;
    std::unique_lock lock(h.mutex);
    ++h.idle;
    for (;;) {
      if (h.queued.empty()) {
        if (h.stopping) break;
        if (h.spin_ns > 0) {
          lock.unlock();
          spin(h);
          lock.lock();
          if (!h.queued.empty() || h.stopping) continue;
        }
        ++h.sleeping;
        h.work_ready.wait(lock);
        --h.sleeping;
        continue;
      }
      Entry entry = std::move(h.queued.front());
      h.queued.pop_front();
      h.queued_count.store(h.queued.size(), std::memory_order_relaxed);
      --h.idle;
      lock.unlock();
      run_step(*entry.job);
      lock.lock();
      ++h.idle;
      const bool drain_posted = !h.finished.empty();
      h.finished.push_back(std::move(entry));
      if (!drain_posted) {
        lock.unlock();
        asio::post(h.strand, Drain{handoff_});
        lock.lock();
      }
    }
    --h.idle;
  }

  /// Waits up to spin_ns for the next batch. A sleep and its wake-up cost
  /// far more than a small step (about 20 us on a VM). The first microseconds
  /// only pause; after them it yields, so that on a machine with fewer cores
  /// than busy threads the strand's thread, which makes the batches, can run.
  static void spin(Handoff& h) {
    const auto start = std::chrono::steady_clock::now();
    const auto yield_from = start + std::chrono::microseconds(5);
    const auto until = start + std::chrono::nanoseconds(h.spin_ns);
    for (unsigned i = 1; h.queued_count.load(std::memory_order_relaxed) == 0; ++i) {
      if ((i & 63) == 0) {
        const auto now = std::chrono::steady_clock::now();
        if (now > until) return;
        if (now > yield_from) sched_yield();
      }
      __builtin_ia32_pause();
    }
  }

  void run_step(Job& job) noexcept {
    // Measured on the thread: time queued for a thread is not the step's.
    const auto started = Clock::now();
    try {
      step_->process(*job.batch, *job.results);
    } catch (...) {
      job.failure = std::current_exception();
    }
    job.ran = Clock::now() - started;
  }

  /// The handler posted to the strand when a job finishes. Destroyed without
  /// running (its io_context destroyed or never run again), it destroys the
  /// finished jobs' coroutines, as Asio does with any pending handler: they
  /// own the pipeline, which owns this runner, and would otherwise never go.
  struct Drain {
    std::shared_ptr<Handoff> handoff;
    explicit Drain(std::shared_ptr<Handoff> h) : handoff(std::move(h)) {}
    Drain(Drain&&) noexcept = default;
    Drain& operator=(Drain&&) = delete;
    ~Drain() {
      if (!handoff) return;
      std::vector<Entry> abandoned;
      {
        const std::lock_guard lock(handoff->mutex);
        abandoned.swap(handoff->finished);
      }
    }
    void operator()() { drain(std::exchange(handoff, nullptr)); }
  };

  /// On the strand: resumes the coroutines of every finished job.
  static void drain(const std::shared_ptr<Handoff>& handoff) {
    Handoff& h = *handoff;
    std::vector<Entry> ready;
    {
      const std::lock_guard lock(h.mutex);
      ready.swap(h.finished);
    }
    for (std::size_t i = 0; i < ready.size(); ++i) {
      try {
        // On the strand already: dispatch resumes the coroutine here.
        asio::dispatch(std::move(ready[i].resume));
      } catch (...) {
        // What a resumed coroutine let escape leaves io_context::run(); the
        // jobs after it are resumed by another drain, not dropped.
        const std::lock_guard lock(h.mutex);
        const bool drain_posted = !h.finished.empty();
        for (std::size_t j = i + 1; j < ready.size(); ++j)
          h.finished.push_back(std::move(ready[j]));
        if (!drain_posted && !h.finished.empty()) {
          asio::post(h.strand, Drain{handoff});
        }
        throw;
      }
    }
  }

  std::shared_ptr<Handoff> handoff_;
  std::vector<std::thread> threads_;
};

}  // namespace

std::unique_ptr<StepRunner> make_thread_pool_runner(const RunnerContext& context,
                                                    std::unique_ptr<Transform> step) {
  try {
    return std::make_unique<ThreadPoolRunner>(std::move(step), context.node.threads,
                                              context.strand);
  } catch (const std::system_error& e) {
    throw std::runtime_error("node \"" + context.node.id + "\": cannot start its " +
                             std::to_string(context.node.threads) + " threads: " + e.what());
  }
}

}  // namespace plumber::detail

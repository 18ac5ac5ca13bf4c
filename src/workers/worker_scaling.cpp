// Auto-scaling a worker pool (`"procs": {"min": M, "max": N}`): the policy is
// the Autoscaler's (autoscaler.hpp); here the pool measures its load, starts
// one more worker, or asks idle ones to exit.
#include <signal.h>

#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "log.hpp"
#include "workers/child_process.hpp"
#include "workers/protocol.hpp"
#include "workers/worker_pool_parts.hpp"

namespace plumber::detail {

using asio::use_awaitable;

PoolLoad WorkerPool::load() const {
  PoolLoad l;
  for (const auto& w : workers_) {
    if (!w->active) continue;
    ++l.size;
    if (w->state == State::ready) ++l.ready;
    if (!w->in_flight.empty()) ++l.busy;
    l.waiting += w->backlog.size();
  }
  if (queued_) l.waiting += queued_();
  return l;
}

asio::awaitable<void> WorkerPool::autoscale() {
  while (!closing_) {
    scale_timer_->expires_after(scaler_->tick());
    co_await scale_timer_->async_wait(asio::as_tuple(use_awaitable));
    co_await throw_if_cancelled();
    if (closing_ || cancelled_) break;
    switch (scaler_->decide(load(), Clock::now())) {
      case Autoscaler::Action::grow:
        grow();
        break;
      case Autoscaler::Action::shrink:
        shrink();
        break;
      case Autoscaler::Action::none:
        break;
    }
  }
}

void WorkerPool::grow() {
  for (auto& worker : workers_) {
    Worker& w = *worker;
    if (w.active || w.supervised || w.exit) continue;  // not a free slot
    const std::size_t before = size_.get();
    try {
      w.active = true;
      spawn(w);
    } catch (const std::exception& e) {
      w.active = false;
      w.state = State::stopped;
      log(spdlog::level::err, {.node = node_.id}, "could not add a worker: {}", e.what());
      return;
    }
    w.active_seen.store(true, std::memory_order_relaxed);
    size_.add();
    scaler_->resized(before, before + 1, Clock::now());
    log(spdlog::level::info, {.node = node_.id, .worker_pid = w.pid},
        "scaled up from {} to {} workers (backlogged, all busy)", before, before + 1);
    w.supervised = true;
    spawn_(supervise(w));
    return;
  }
}

void WorkerPool::steal(Worker& w) {
  while (w.in_flight.size() - w.backlog.size() < depth_) {
    Worker* donor = nullptr;
    for (auto& other : workers_) {
      if (other.get() == &w || other->backlog.empty()) continue;
      if (!donor || other->backlog.size() > donor->backlog.size()) donor = other.get();
    }
    if (!donor) return;
    Pending* p = donor->backlog.back();  // its lowest lane, latest
    donor->backlog.pop_back();
    donor->in_flight.erase(p->request_id);
    p->worker = &w;
    w.in_flight[p->request_id] = p;
    w.backlog.push_back(p);
    if (w.backlog.size() >= depth_) return;
  }
}

void WorkerPool::shrink() {
  std::vector<std::uint8_t> record;
  Encoder e(record);
  e.u8(static_cast<std::uint8_t>(RecordType::exit));
  const std::size_t before = size_.get();
  std::size_t size = before;
  for (auto it = workers_.rbegin(); it != workers_.rend() && size > scaler_->min(); ++it) {
    Worker& w = **it;
    if (!w.active || !w.in_flight.empty() || !w.backlog.empty()) continue;
    if (w.state == State::ready && w.exit && !push_record(w.segment.requests, record)) continue;
    w.active = false;
    w.active_seen.store(false, std::memory_order_relaxed);
    w.backoff.cancel();
    if (w.state == State::ready && w.exit) {
      kick(w);  // it reads the exit record and exits 0; its supervisor ends
    } else if (w.exit) {
      ::kill(w.pid, SIGKILL);  // still starting: nothing of ours is in it
    }
    size_.sub();
    --size;
  }
  if (size == before) return;
  scaler_->resized(before, size, Clock::now());
  log(spdlog::level::info, {.node = node_.id}, "scaled down from {} to {} workers (idle)", before,
      size);
}

}  // namespace plumber::detail

#include "runtime/batcher.hpp"

#include <tuple>
#include <utility>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace plumber::detail {

Batcher::Batcher(const Strand& strand, std::size_t batch_size, std::chrono::milliseconds timeout)
    : batch_size_(batch_size), timeout_(timeout) {
  batch_.reserve(batch_size);
  if (timeout.count() > 0) timer_.emplace(strand);
}

bool Batcher::add(Message&& message) {
  batch_.push_back(std::move(message));
  return batch_.size() >= batch_size_;
}

std::optional<asio::awaitable<void>> Batcher::arm(InputPort& input) {
  if (!timer_ || batch_.size() != 1) return std::nullopt;
  ++generation_;
  timer_->expires_after(timeout_);  // cancels the previous wait
  return flush_at_timeout(input, generation_);
}

asio::awaitable<void> Batcher::flush_at_timeout(InputPort& input, std::uint64_t generation) {
  const std::tuple<error_code> waited =
      co_await timer_->async_wait(asio::as_tuple(asio::use_awaitable));
  if (std::get<0>(waited) || !due(generation)) co_return;
  // The node is waiting in its input (or busy): a flush packet wakes it.
  Packet flush{PacketKind::flush, 0, {}};
  flush.msg.id = generation;
  if (!input.try_send(flush)) co_await input.async_send(std::move(flush));
}

std::vector<Message> Batcher::take() {
  cancel_timer();
  std::vector<Message> batch;
  batch.swap(batch_);
  batch_.reserve(batch_size_);
  return batch;
}

void Batcher::clear() {
  cancel_timer();
  batch_.clear();
}

void Batcher::cancel_timer() {
  if (timer_) timer_->cancel();
}

}  // namespace plumber::detail

#include "runtime/inbox.hpp"

#include <algorithm>
#include <utility>

#include <boost/asio/use_awaitable.hpp>

namespace plumber::detail {

using asio::use_awaitable;

Inbox::Inbox(const Strand& strand, std::size_t capacity_per_lane, std::size_t lanes)
    : held_(lanes, 0) {
  for (std::size_t i = 0; i < lanes; ++i)
    lanes_.emplace_back(strand, capacity_per_lane);
  if (lanes > 1) doorbell_.emplace(strand, 1);
}

std::size_t Inbox::lane_of(const Packet& packet) const noexcept {
  switch (packet.kind) {
    case PacketKind::end:  // after every data packet of its predecessor: see deferred_ends_
      return 0;
    case PacketKind::flush:  // a timer's wake-up must not wait behind a backlog
      return lanes_.size() - 1;
    case PacketKind::data:
    case PacketKind::dropped:
      break;
  }
  return std::min<std::size_t>(packet.msg.priority, lanes_.size() - 1);
}

bool Inbox::try_send(Packet& packet) {
  if (lanes_.size() == 1) return lanes_.front().try_send(error_code{}, std::move(packet));
  const std::size_t lane = lane_of(packet);
  if (!lanes_[lane].try_send(error_code{}, std::move(packet))) return false;
  ++held_[lane];
  ++total_held_;
  doorbell_->try_send(error_code{});  // fails only when it already rings
  return true;
}

asio::awaitable<void> Inbox::async_send(Packet packet) {
  if (lanes_.size() == 1) {
    co_await lanes_.front().async_send(error_code{}, std::move(packet), use_awaitable);
    co_return;
  }
  const std::size_t lane = lane_of(packet);
  // Counted before the wait: a receiver may take it from the channel before this
  // coroutine resumes.
  ++held_[lane];
  ++total_held_;
  try {
    co_await lanes_[lane].async_send(error_code{}, std::move(packet), use_awaitable);
  } catch (...) {
    --held_[lane];
    --total_held_;
    throw;
  }
  doorbell_->try_send(error_code{});
}

bool Inbox::take_from(std::size_t lane, Packet& packet) {
  if (held_[lane] == 0) return false;
  const bool got =
      lanes_[lane].try_receive([&](error_code, Packet received) { packet = std::move(received); });
  if (got) {
    --held_[lane];
    --total_held_;
  }
  return got;
}

bool Inbox::take_prioritised(Packet& packet) {
  const auto lowest_waiting =
      std::find_if(held_.begin(), held_.end(), [](auto n) { return n > 0; });
  if (lowest_waiting == held_.end()) return false;
  const auto lowest = static_cast<std::size_t>(lowest_waiting - held_.begin());
  if (overtakes_ >= kOvertakeLimit) {
    overtakes_ = 0;
    if (take_from(lowest, packet)) return true;
  }
  for (std::size_t lane = lanes_.size(); lane-- > 0;) {
    if (!take_from(lane, packet)) continue;
    overtakes_ = lane > lowest ? overtakes_ + 1 : 0;
    return true;
  }
  return false;
}

bool Inbox::try_receive(Packet& packet) {
  if (lanes_.size() == 1) {
    return lanes_.front().try_receive(
        [&](error_code, Packet received) { packet = std::move(received); });
  }
  while (take_prioritised(packet)) {
    if (packet.kind != PacketKind::end || total_held_ == 0) return true;
    ++deferred_ends_;
  }
  if (deferred_ends_ == 0) return false;
  --deferred_ends_;
  packet = Packet{PacketKind::end, 0, {}};
  return true;
}

asio::awaitable<Packet> Inbox::async_receive() {
  if (lanes_.size() == 1) co_return co_await lanes_.front().async_receive(use_awaitable);
  for (;;) {
    Packet packet;
    if (try_receive(packet)) co_return packet;
    co_await doorbell_->async_receive(use_awaitable);
  }
}

}  // namespace plumber::detail

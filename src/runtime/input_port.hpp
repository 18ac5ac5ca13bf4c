#pragma once
#include <cstddef>

#include <boost/asio/awaitable.hpp>

#include "runtime/inbox.hpp"
#include "runtime/packet.hpp"

namespace plumber::detail {

/// The narrow face a node shows its predecessors: they send packets into its
/// inbox through it, and never touch the node itself. It also counts what
/// waits, for the node's queue_depth. Strand-only, but depth() is thread-safe.
class InputPort {
 public:
  InputPort(const Strand& strand, std::size_t capacity_per_lane, std::size_t lanes)
      : inbox_(strand, capacity_per_lane, lanes) {}

  /// Leaves `packet` untouched when its lane is full.
  bool try_send(Packet& packet) {
    if (!inbox_.try_send(packet)) return false;
    queued_.add();
    return true;
  }
  /// Suspends while the packet's lane is full.
  asio::awaitable<void> async_send(Packet packet) {
    co_await inbox_.async_send(std::move(packet));
    queued_.add();
  }

  // The node's side.
  bool try_receive(Packet& packet) {
    if (!inbox_.try_receive(packet)) return false;
    queued_.sub();
    return true;
  }
  asio::awaitable<Packet> async_receive() {
    Packet packet = co_await inbox_.async_receive();
    queued_.sub();
    co_return packet;
  }
  std::uint64_t depth() const noexcept { return queued_.get(); }

 private:
  Inbox inbox_;
  Counter queued_;
};

}  // namespace plumber::detail

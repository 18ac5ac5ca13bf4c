#pragma once
#include <chrono>
#include <cstddef>

#include <boost/asio/awaitable.hpp>

#include "runtime/inbox.hpp"
#include "runtime/packet.hpp"
#include "runtime/step_histogram.hpp"

namespace plumber::detail {

/// The narrow face a node shows its predecessors: they send packets into its
/// inbox through it, and never touch the node itself. It also counts what
/// waits, for the node's queue_depth, and with `measure_waits` how long each
/// message waited between its predecessor's send (the time it waited for room
/// included) and this node's receive. Strand-only, but depth() and read_waits()
/// are thread-safe.
class InputPort {
 public:
  InputPort(const Strand& strand, std::size_t capacity_per_lane, std::size_t lanes,
            bool measure_waits)
      : inbox_(strand, capacity_per_lane, lanes), measure_waits_(measure_waits) {}

  /// Leaves `packet` untouched when its lane is full (but for its send time).
  bool try_send(Packet& packet) {
    if (measure_waits_) packet.sent_at = Clock::now();
    if (!inbox_.try_send(packet)) return false;
    queued_.add();
    return true;
  }
  /// Suspends while the packet's lane is full.
  asio::awaitable<void> async_send(Packet packet) {
    if (measure_waits_) packet.sent_at = Clock::now();
    co_await inbox_.async_send(std::move(packet));
    queued_.add();
  }

  // The node's side.
  bool try_receive(Packet& packet) {
    if (!inbox_.try_receive(packet)) return false;
    queued_.sub();
    if (measure_waits_) observe_wait(packet);
    return true;
  }
  asio::awaitable<Packet> async_receive() {
    Packet packet = co_await inbox_.async_receive();
    queued_.sub();
    if (measure_waits_) observe_wait(packet);
    co_return packet;
  }
  std::uint64_t depth() const noexcept { return queued_.get(); }
  void read_waits(ProcessorStats& stats) const noexcept {
    stats.waited = waited_.get();
    stats.wait_ns = wait_ns_.get();
    stats.wait_buckets = wait_buckets_.get();
  }

 private:
  void observe_wait(const Packet& packet) noexcept {
    if (packet.kind != PacketKind::data) return;
    const auto ns = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - packet.sent_at)
            .count());
    waited_.add();
    wait_ns_.add(ns);
    wait_buckets_.observe(ns);
  }

  Inbox inbox_;
  Counter queued_;
  const bool measure_waits_;
  Counter waited_, wait_ns_;
  StepHistogram wait_buckets_;
};

}  // namespace plumber::detail

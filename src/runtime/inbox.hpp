#pragma once
#include <cstddef>
#include <deque>
#include <optional>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "runtime/packet.hpp"

namespace plumber::detail {

/// A processor's input: one bounded channel per priority lane (the back
/// pressure), the highest lane served first.
///
/// With one lane it is a plain channel. With several, a receiver that finds
/// every lane empty waits on a doorbell that every send rings: Asio has no
/// wait-for-any over channels that cannot lose a message (`||` discards the
/// loser's result). Strand-only, like everything in a processor.
class Inbox {
 public:
  Inbox(const Strand& strand, std::size_t capacity_per_lane, std::size_t lanes);

  /// Leaves `packet` untouched when the lane is full.
  bool try_send(Packet& packet);
  /// Suspends while the packet's lane is full.
  asio::awaitable<void> async_send(Packet packet);
  bool try_receive(Packet& packet);
  asio::awaitable<Packet> async_receive();

  /// After this many packets in a row taken from a higher lane while a lower one
  /// waited, the lowest waiting lane is served once: low lanes slow down under
  /// sustained high-priority load, they never starve.
  static constexpr unsigned kOvertakeLimit = 8;

 private:
  std::size_t lane_of(const Packet& packet) const noexcept;
  bool take_from(std::size_t lane, Packet& packet);
  bool take_prioritised(Packet& packet);

  std::deque<PacketChannel> lanes_;
  /// Strand-only counts of what each lane holds (channels do not tell).
  std::vector<std::size_t> held_;
  std::size_t total_held_ = 0;
  /// An `end` taken while data remained: handed out once every lane is empty,
  /// so a node never ends before its predecessor's data (which may sit in a
  /// higher lane than the end that followed it).
  std::size_t deferred_ends_ = 0;
  unsigned overtakes_ = 0;
  std::optional<asio::experimental::channel<void(error_code)>> doorbell_;
};

}  // namespace plumber::detail

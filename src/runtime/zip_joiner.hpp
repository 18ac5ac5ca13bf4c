#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/packet.hpp"

namespace plumber::detail {

/// The `zip` join of one node: holds the messages of each id until every
/// predecessor delivered one, then combines them into one message whose value
/// is an object keyed by predecessor id (in port order). A predecessor that
/// dropped an id (a `dropped` packet) makes the combination a `dropped` packet
/// too. Strand-only; knows nothing of channels, so it is tested alone.
class ZipJoiner {
 public:
  /// The predecessor ids, by port.
  explicit ZipJoiner(std::vector<std::string> port_names) : names_(std::move(port_names)) {}

  /// Takes `packet` (data or dropped). True when it completed a combination:
  /// `packet` then holds it (on port 0). `tokens` is how the number of messages
  /// with this id in the graph changed (for request tracking).
  bool add(Packet& packet, std::int64_t& tokens);

  /// An id that never completed, at the end of input.
  struct Leftover {
    std::uint64_t id = 0;
    std::string missing;          ///< the predecessors that sent nothing, ", "-joined
    std::int64_t data_parts = 0;  ///< data messages held for it
  };
  /// Everything still held, forgotten.
  std::vector<Leftover> take_leftovers();
  /// The ids held with data (for cancellation), forgotten. An id held only as
  /// `dropped` parts is not one: it was reported where it was dropped.
  std::vector<std::uint64_t> take_ids();
  bool empty() const noexcept { return entries_.empty(); }

 private:
  struct Entry {
    std::vector<std::optional<Packet>> parts;  // the first message of this id, per port
    std::vector<Packet> later;  // more messages with this id (a step emitting several)
    std::size_t filled = 0;     // parts present
  };

  std::vector<std::string> names_;
  std::unordered_map<std::uint64_t, Entry> entries_;
};

}  // namespace plumber::detail

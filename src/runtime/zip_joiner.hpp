#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <boost/unordered/unordered_flat_map.hpp>

#include "runtime/packet.hpp"

namespace plumber::detail {

/// The `zip` join of one node: holds the messages of each id until every
/// predecessor delivered one, then combines them into one message whose value
/// is an object keyed by predecessor id (in port order). A predecessor that
/// dropped an id (a `dropped` packet) makes the combination a `dropped` packet
/// too. Strand-only; knows nothing of channels, so it is tested alone.
///
/// Allocation-free once warm: an id maps (open addressing, Boost's flat map)
/// to a slot whose parts lie inline in one array, one per port; finished
/// slots are reused.
class ZipJoiner {
 public:
  /// The predecessor ids, by port.
  explicit ZipJoiner(std::vector<std::string> port_names);

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
  bool empty() const noexcept { return slot_of_.empty(); }
  /// Keeps the storage of a combination that is no longer referenced (the
  /// node's step and the fused nodes after it are done with it) for the next
  /// one: a zip then allocates no object per combination.
  void recycle(json& dead_value);

 private:
  struct Slot {
    std::uint64_t id = 0;
    std::size_t filled = 0;     // parts present
    std::vector<Packet> later;  // more messages with this id (a step emitting several)
  };

  std::uint32_t open_slot(std::uint64_t id);
  void release(std::uint32_t slot);
  Packet& part(std::uint32_t slot, std::size_t port) { return parts_[slot * inputs_ + port]; }
  std::vector<bool>::reference present(std::uint32_t slot, std::size_t port) {
    return present_[slot * inputs_ + port];
  }
  void combine(std::uint32_t slot, Packet& packet, std::int64_t& tokens);
  void forget_all();

  std::vector<std::string> names_;
  std::size_t inputs_;
  boost::unordered_flat_map<std::uint64_t, std::uint32_t> slot_of_;
  std::vector<Slot> slots_;
  std::vector<Packet> parts_;  // slot * inputs_ + port
  std::vector<bool> present_;  // beside parts_
  std::vector<std::uint32_t> free_;
  json spare_;  // an empty object whose storage the next combination reuses
};

}  // namespace plumber::detail

#include "runtime/zip_joiner.hpp"

#include <algorithm>
#include <utility>

namespace plumber::detail {

ZipJoiner::ZipJoiner(std::vector<std::string> port_names)
    : names_(std::move(port_names)), inputs_(names_.size()) {}

std::uint32_t ZipJoiner::open_slot(std::uint64_t id) {
  std::uint32_t slot;
  if (!free_.empty()) {
    slot = free_.back();
    free_.pop_back();
  } else {
    slot = static_cast<std::uint32_t>(slots_.size());
    slots_.emplace_back();
    parts_.resize(parts_.size() + inputs_);
    present_.resize(present_.size() + inputs_, false);
  }
  slots_[slot].id = id;
  return slot;
}

void ZipJoiner::release(std::uint32_t slot) {
  slot_of_.erase(slots_[slot].id);
  free_.push_back(slot);
}

bool ZipJoiner::add(Packet& packet, std::int64_t& tokens) {
  tokens = 0;
  auto [it, inserted] = slot_of_.try_emplace(packet.msg.id, 0);
  if (inserted) it->second = open_slot(packet.msg.id);
  const std::uint32_t slot = it->second;
  Slot& entry = slots_[slot];
  const std::size_t port = packet.port;
  if (present(slot, port)) {
    entry.later.push_back(std::move(packet));
    return false;
  }
  part(slot, port) = std::move(packet);
  present(slot, port) = true;
  if (++entry.filled < inputs_) return false;
  combine(slot, packet, tokens);
  return true;
}

// Every predecessor delivered the slot's id: combines one message of each into
// `packet`, and starts the next combination from later messages of the id.
void ZipJoiner::combine(std::uint32_t slot, Packet& packet, std::int64_t& tokens) {
  Slot& entry = slots_[slot];
  const std::uint64_t id = entry.id;
  bool dropped = false;
  std::int64_t parts_with_data = 0;
  // `packet` was moved into its part: its shell receives the combination.
  Message& combined = packet.msg;
  combined.id = id;
  combined.priority = 0;
  combined.deadline = Clock::time_point::max();
  combined.trace = 0;
  combined.blobs.clear();
  if (spare_.is_object()) {
    combined.value = std::move(spare_);
  } else {
    combined.value = json::object();
  }
  // An ordered_map, a vector of pairs: the keys are distinct, so they are
  // appended without a lookup, into one allocation.
  json::object_t& object = combined.value.get_ref<json::object_t&>();
  object.reserve(inputs_);
  for (std::size_t port = 0; port < inputs_; ++port) {
    Message& m = part(slot, port).msg;
    present(slot, port) = false;
    if (part(slot, port).kind != PacketKind::data) {
      dropped = true;
      continue;
    }
    ++parts_with_data;
    object.emplace_back(names_[port], std::move(m.value));
    for (Blob& blob : m.blobs)
      combined.blobs.push_back(std::move(blob));
    combined.priority = std::max(combined.priority, m.priority);
    combined.deadline = std::min(combined.deadline, m.deadline);
    if (!combined.trace) combined.trace = m.trace;
    m.blobs.clear();  // moved from: the slot keeps no reference
  }
  entry.filled = 0;
  // Later messages with this id start the next combination, in arrival order.
  for (auto later = entry.later.begin(); later != entry.later.end();) {
    if (present(slot, later->port)) {
      ++later;
      continue;
    }
    present(slot, later->port) = true;
    part(slot, later->port) = std::move(*later);
    ++entry.filled;
    later = entry.later.erase(later);
  }
  if (entry.filled == 0 && entry.later.empty()) release(slot);
  tokens = (dropped ? 0 : 1) - parts_with_data;
  packet.port = 0;
  packet.kind = dropped ? PacketKind::dropped : PacketKind::data;
  if (dropped) {
    packet.msg = Message{};
    packet.msg.id = id;
  }
}

void ZipJoiner::recycle(json& dead_value) {
  if (spare_.is_object() || !dead_value.is_object()) return;
  dead_value.get_ref<json::object_t&>().clear();
  spare_ = std::move(dead_value);
}

std::vector<ZipJoiner::Leftover> ZipJoiner::take_leftovers() {
  std::vector<Leftover> leftovers;
  for (const auto& [id, slot] : slot_of_) {
    Leftover left;
    left.id = id;
    for (std::size_t port = 0; port < inputs_; ++port) {
      if (present(slot, port)) {
        left.data_parts += part(slot, port).kind == PacketKind::data;
      } else {
        left.missing += (left.missing.empty() ? "" : ", ") + names_[port];
      }
    }
    for (const Packet& p : slots_[slot].later)
      left.data_parts += p.kind == PacketKind::data;
    leftovers.push_back(std::move(left));
  }
  // Reported in id order (the flat map's order is arbitrary).
  std::sort(leftovers.begin(), leftovers.end(),
            [](const Leftover& a, const Leftover& b) { return a.id < b.id; });
  forget_all();
  return leftovers;
}

std::vector<std::uint64_t> ZipJoiner::take_ids() {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, slot] : slot_of_) {
    // An id held only as `dropped` parts was reported where it was dropped.
    bool data = false;
    for (std::size_t port = 0; port < inputs_ && !data; ++port)
      data = present(slot, port) && part(slot, port).kind == PacketKind::data;
    for (const Packet& p : slots_[slot].later)
      data = data || p.kind == PacketKind::data;
    if (data) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  forget_all();
  return ids;
}

void ZipJoiner::forget_all() {
  slot_of_.clear();
  slots_.clear();
  parts_.clear();
  present_.clear();
  free_.clear();
}

}  // namespace plumber::detail

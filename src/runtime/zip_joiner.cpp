#include "runtime/zip_joiner.hpp"

#include <algorithm>
#include <utility>

namespace plumber::detail {

bool ZipJoiner::add(Packet& packet, std::int64_t& tokens) {
  tokens = 0;
  const std::size_t inputs = names_.size();
  const std::uint64_t id = packet.msg.id;
  auto [it, inserted] = entries_.try_emplace(id);
  Entry& entry = it->second;
  if (inserted) entry.parts.resize(inputs);
  auto& part = entry.parts[packet.port];
  if (part) {
    entry.later.push_back(std::move(packet));
    return false;
  }
  part = std::move(packet);
  if (++entry.filled < inputs) return false;

  // Every predecessor delivered this id: combine one message of each.
  bool dropped = false;
  std::int64_t parts_with_data = 0;
  Message combined;
  combined.id = id;
  combined.value = json::object();
  for (std::size_t port = 0; port < inputs; ++port) {
    Packet& p = *entry.parts[port];
    if (p.kind != PacketKind::data) {
      dropped = true;
    } else {
      ++parts_with_data;
      combined.value[names_[port]] = std::move(p.msg.value);
      for (Blob& blob : p.msg.blobs)
        combined.blobs.push_back(std::move(blob));
      combined.priority = std::max(combined.priority, p.msg.priority);
      combined.deadline = std::min(combined.deadline, p.msg.deadline);
      if (!combined.trace) combined.trace = p.msg.trace;
    }
    entry.parts[port].reset();
  }
  entry.filled = 0;
  // Later messages with this id start the next combination, in arrival order.
  for (auto later = entry.later.begin(); later != entry.later.end();) {
    auto& slot = entry.parts[later->port];
    if (slot) {
      ++later;
      continue;
    }
    slot = std::move(*later);
    ++entry.filled;
    later = entry.later.erase(later);
  }
  if (entry.filled == 0 && entry.later.empty()) entries_.erase(it);
  tokens = (dropped ? 0 : 1) - parts_with_data;
  packet.port = 0;
  if (dropped) {
    packet.kind = PacketKind::dropped;
    packet.msg = Message{};
    packet.msg.id = id;
  } else {
    packet.kind = PacketKind::data;
    packet.msg = std::move(combined);
  }
  return true;
}

std::vector<ZipJoiner::Leftover> ZipJoiner::take_leftovers() {
  std::vector<Leftover> leftovers;
  for (auto& [id, entry] : entries_) {
    Leftover left;
    left.id = id;
    for (std::size_t port = 0; port < names_.size(); ++port) {
      const auto& part = entry.parts[port];
      if (part) {
        left.data_parts += part->kind == PacketKind::data;
      } else {
        left.missing += (left.missing.empty() ? "" : ", ") + names_[port];
      }
    }
    for (const Packet& p : entry.later)
      left.data_parts += p.kind == PacketKind::data;
    leftovers.push_back(std::move(left));
  }
  entries_.clear();
  return leftovers;
}

std::vector<std::uint64_t> ZipJoiner::take_ids() {
  std::vector<std::uint64_t> ids;
  const auto is_data = [](const Packet& p) { return p.kind == PacketKind::data; };
  for (const auto& [id, entry] : entries_) {
    // An id held only as `dropped` parts was reported where it was dropped.
    const bool data =
        std::any_of(entry.parts.begin(), entry.parts.end(),
                    [&](const std::optional<Packet>& p) { return p && is_data(*p); }) ||
        std::any_of(entry.later.begin(), entry.later.end(), is_data);
    if (data) ids.push_back(id);
  }
  entries_.clear();
  return ids;
}

}  // namespace plumber::detail

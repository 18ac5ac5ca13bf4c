#include "remote/remote_codec.hpp"

#include <unistd.h>

#include <charconv>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <unordered_map>

#include "json_parse.hpp"

namespace plumber::detail {

RemoteKeys::RemoteKeys(const std::string& graph, const std::string& node, std::size_t priorities)
    : prefix("plumber:" + graph + ":" + node), group(node) {
  tasks.push_back(prefix + ":tasks");
  for (std::size_t lane = 1; lane < priorities; ++lane)
    tasks.push_back(prefix + ":tasks:" + std::to_string(lane));
  dead = prefix + ":dead";
  runs = prefix + ":runs";
  workers = prefix + ":workers";
}

namespace {

void field(RedisArgs& args, std::string name, std::string value) {
  args.push_back(std::move(name));
  args.push_back(std::move(value));
}

void encode_messages(RedisArgs& args, std::span<const Message> messages, bool with_deadline) {
  field(args, "n", std::to_string(messages.size()));
  const auto now = Clock::now();
  for (std::size_t k = 0; k < messages.size(); ++k) {
    const Message& m = messages[k];
    const std::string suffix = std::to_string(k);
    field(args, "i" + suffix, std::to_string(m.id));
    field(args, "v" + suffix, m.value.dump());
    if (m.priority) field(args, "p" + suffix, std::to_string(m.priority));
    if (with_deadline && m.deadline != Clock::time_point::max()) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(m.deadline - now);
      field(args, "d" + suffix, std::to_string(std::max<long long>(0, left.count())));
    }
    if (m.trace) field(args, "t" + suffix, std::to_string(m.trace));
    if (!m.blobs.empty()) {
      field(args, "b" + suffix, std::to_string(m.blobs.size()));
      for (std::size_t j = 0; j < m.blobs.size(); ++j) {
        const auto bytes = m.blobs[j].bytes();
        field(args, "b" + suffix + "." + std::to_string(j),
              std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
      }
    }
  }
}

std::uint64_t to_u64(const std::string& text) {
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size())
    throw std::runtime_error("bad number in a stream entry: \"" + text + "\"");
  return value;
}

/// The entry's fields by name (the values are moved out of `fields`).
std::unordered_map<std::string, std::string> by_name(RedisReply& fields) {
  if (fields.type != RedisReply::Type::array || fields.elements.size() % 2 != 0)
    throw std::runtime_error("a stream entry's fields are not name/value pairs");
  std::unordered_map<std::string, std::string> out;
  out.reserve(fields.elements.size() / 2);
  for (std::size_t i = 0; i + 1 < fields.elements.size(); i += 2)
    out.emplace(std::move(fields.elements[i].str), std::move(fields.elements[i + 1].str));
  return out;
}

const std::string& need(const std::unordered_map<std::string, std::string>& f,
                        const std::string& name) {
  auto it = f.find(name);
  if (it == f.end()) throw std::runtime_error("a stream entry lacks its field " + name);
  return it->second;
}

std::vector<Message> decode_messages(std::unordered_map<std::string, std::string>& f,
                                     std::chrono::milliseconds queued) {
  const std::uint64_t n = to_u64(need(f, "n"));
  if (n > 10'000'000) throw std::runtime_error("too many messages in a stream entry");
  std::vector<Message> messages(n);
  const auto now = Clock::now() - queued;
  for (std::size_t k = 0; k < n; ++k) {
    Message& m = messages[k];
    const std::string suffix = std::to_string(k);
    m.id = to_u64(need(f, "i" + suffix));
    m.value = parse_json(need(f, "v" + suffix));
    if (auto it = f.find("p" + suffix); it != f.end())
      m.priority = static_cast<std::uint8_t>(to_u64(it->second));
    if (auto it = f.find("d" + suffix); it != f.end())
      m.deadline = now + std::chrono::milliseconds(to_u64(it->second));
    if (auto it = f.find("t" + suffix); it != f.end()) m.trace = to_u64(it->second);
    if (auto it = f.find("b" + suffix); it != f.end()) {
      const std::uint64_t blobs = to_u64(it->second);
      for (std::uint64_t j = 0; j < blobs; ++j) {
        auto bytes =
            std::make_shared<std::string>(std::move(f.at("b" + suffix + "." + std::to_string(j))));
        std::span<const std::byte> view(reinterpret_cast<const std::byte*>(bytes->data()),
                                        bytes->size());
        m.blobs.emplace_back(std::move(bytes), view);
      }
    }
  }
  return messages;
}

}  // namespace

void encode_task(RedisArgs& args, std::uint64_t request, const std::string& reply,
                 std::span<const Message> batch) {
  field(args, "r", std::to_string(request));
  field(args, "h", reply);
  encode_messages(args, batch, true);
}

RemoteTask decode_task(RedisReply& fields, std::chrono::milliseconds queued) {
  auto f = by_name(fields);
  RemoteTask task;
  task.request = to_u64(need(f, "r"));
  task.reply = need(f, "h");
  task.batch = decode_messages(f, queued);
  return task;
}

namespace {

/// "E<j>" (built by appending: GCC 12 at -O3 misreads "E" + std::to_string(j) as an overlapping
/// copy).
std::string expired_field(std::size_t j) {
  std::string name = "E";
  name += std::to_string(j);
  return name;
}

void encode_header(RedisArgs& args, std::uint64_t request, const std::string& consumer,
                   const Delivery& delivery) {
  field(args, "r", std::to_string(request));
  field(args, "c", consumer);
  if (delivery.count != 1) field(args, "x", std::to_string(delivery.count));
  if (delivery.claimed) field(args, "a", "1");
  if (!delivery.expired.empty()) {
    field(args, "E", std::to_string(delivery.expired.size()));
    for (std::size_t j = 0; j < delivery.expired.size(); ++j)
      field(args, expired_field(j), std::to_string(delivery.expired[j]));
  }
}

}  // namespace

void encode_results(RedisArgs& args, std::uint64_t request, const std::string& consumer,
                    const Delivery& delivery, std::span<const Message> results) {
  encode_header(args, request, consumer, delivery);
  encode_messages(args, results, false);
}

void encode_failure(RedisArgs& args, std::uint64_t request, const std::string& consumer,
                    const Delivery& delivery, const std::string& error, bool final) {
  encode_header(args, request, consumer, delivery);
  field(args, "e", error);
  if (final) field(args, "f", "1");
}

RemoteResult decode_result(RedisReply& fields) {
  auto f = by_name(fields);
  RemoteResult result;
  result.request = to_u64(need(f, "r"));
  result.consumer = need(f, "c");
  if (auto it = f.find("x"); it != f.end()) result.deliveries = to_u64(it->second);
  result.claimed = f.contains("a");
  if (auto it = f.find("E"); it != f.end()) {
    const std::uint64_t count = to_u64(it->second);
    if (count > 10'000'000) throw std::runtime_error("too many expired ids in a stream entry");
    for (std::uint64_t j = 0; j < count; ++j)
      result.expired.push_back(to_u64(need(f, expired_field(j))));
  }
  if (auto it = f.find("e"); it != f.end()) {
    result.error = std::move(it->second);
    result.final = f.contains("f");
    return result;
  }
  result.messages = decode_messages(f, std::chrono::milliseconds(0));
  return result;
}

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0) return "host";
  return name;
}

}  // namespace plumber::detail

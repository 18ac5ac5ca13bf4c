// A remote node's consumer: its heartbeat (the registration on the broker,
// keeping its running entries, claiming those others left idle, forgetting
// dead consumers) and leaving the group. The class and the whole story:
// consumer.hpp, remote_consumer.cpp.
#include <charconv>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "remote/consumer.hpp"

namespace plumber::detail::remote_consumer {
namespace {

/// The value of field `name` of a stream entry ([name, value, ...]), or "".
std::string field_of(const RedisReply& fields, std::string_view name) {
  for (std::size_t i = 0; i + 1 < fields.elements.size(); i += 2) {
    if (fields.elements[i].str == name) return fields.elements[i + 1].str;
  }
  return {};
}

}  // namespace

asio::awaitable<void> Consumer::heartbeat() {
  std::uint64_t beats = 0;
  while (!leaving_) {
    try {
      co_await connect_commands();
      co_await register_self();
      co_await keep_running_entries();
      if (!stopping_) co_await claim_idle();
      if (++beats % 10 == 0) co_await forget_dead_consumers();
    } catch (const RedisError&) {
      // The read loop reports the outage and reconnects.
    } catch (const std::exception& e) {
      report(std::string("heartbeat: ") + e.what());
    }
    if (leaving_) break;
    beat_timer_.expires_after(beat_every_);
    co_await beat_timer_.async_wait(asio::as_tuple(use_awaitable));
  }
}

asio::awaitable<void> Consumer::register_self() {
  RedisArgs set{"SET", keys_.worker(name_), description_, "PX", "10000"};
  co_await commands_.command(set);
  RedisArgs add{"SADD", keys_.workers, name_};
  co_await commands_.command(add);
  RedisArgs time{"TIME"};
  const auto before = system_ms();
  RedisReply now = co_await commands_.command(time);
  if (now.elements.size() == 2) {
    const std::int64_t broker_ms =
        std::stoll(now.elements[0].str) * 1000 + std::stoll(now.elements[1].str) / 1000;
    offset_ms_ = broker_ms - (before + system_ms()) / 2;
  }
}

asio::awaitable<void> Consumer::keep_running_entries() {
  for (const auto& stream : keys_.tasks) {
    std::vector<std::string> ids;
    for (const auto& [id, lane] : running_) {
      if (lane == stream) ids.push_back(id);
    }
    if (ids.empty()) continue;
    // Only entries still this consumer's: never take one back from a consumer that claimed it.
    RedisArgs owned{"XPENDING", stream, keys_.group, "-", "+", "10000", name_};
    RedisReply mine = co_await commands_.command(owned);
    std::unordered_set<std::string> ours;
    for (const RedisReply& p : mine.elements) {
      if (!p.elements.empty()) ours.insert(p.elements[0].str);
    }
    RedisArgs touch{"XCLAIM", stream, keys_.group, name_, "0"};
    for (auto& id : ids) {
      if (ours.contains(id)) touch.push_back(std::move(id));
    }
    if (touch.size() == 5) continue;
    touch.push_back("JUSTID");
    co_await commands_.command(touch);
  }
}

asio::awaitable<void> Consumer::claim_idle() {
  const std::string idle = std::to_string(node_.remote->claim_idle.count());
  for (auto it = keys_.tasks.rbegin(); it != keys_.tasks.rend(); ++it) {
    if (running_.size() >= capacity_) co_return;
    const std::string& stream = *it;
    RedisArgs args{"XAUTOCLAIM", stream, keys_.group, name_,
                   idle,         "0-0",  "COUNT",     std::to_string(capacity_ - running_.size())};
    RedisReply claimed = co_await commands_.command(args);
    if (claimed.is_error() || claimed.elements.size() < 2) continue;
    for (RedisReply& entry : claimed.elements[1].elements) {
      if (entry.elements.size() < 2 || entry.elements[1].is_nil()) continue;
      const std::string id = entry.elements[0].str;
      if (running_.contains(id)) continue;
      RedisArgs info_args{"XPENDING", stream, keys_.group, id, id, "1"};
      RedisReply info = co_await commands_.command(info_args);
      Delivery delivery{.count = 2, .claimed = true};
      if (!info.elements.empty() && info.elements[0].elements.size() >= 4)
        delivery.count = static_cast<std::uint64_t>(info.elements[0].elements[3].integer);
      RedisArgs runs_args{"HGET", keys_.runs, id};
      RedisReply runs = co_await commands_.command(runs_args);
      Entry e{stream, id, std::move(entry.elements[1]), std::move(delivery)};
      if (runs.type == RedisReply::Type::string) e.runs = std::stoull(runs.str);
      if (e.runs >= node_.remote->max_deliveries) {
        RedisArgs fields;
        for (const RedisReply& f : e.fields.elements)
          fields.push_back(f.str);
        const std::string reply = field_of(e.fields, "h");
        const std::string request = field_of(e.fields, "r");
        std::uint64_t request_id = 0;
        std::from_chars(request.data(), request.data() + request.size(), request_id);
        co_await dead_letter(e, std::move(fields), reply, request_id, poison_text(e.runs));
        continue;
      }
      start(std::move(e));
    }
  }
}

asio::awaitable<void> Consumer::forget_dead_consumers() {
  for (const auto& stream : keys_.tasks) {
    RedisArgs list{"XINFO", "CONSUMERS", stream, keys_.group};
    RedisReply consumers = co_await commands_.command(list);
    if (consumers.type != RedisReply::Type::array) continue;
    for (const RedisReply& c : consumers.elements) {
      std::string name;
      long long pending = -1;
      for (std::size_t i = 0; i + 1 < c.elements.size(); i += 2) {
        if (c.elements[i].str == "name") name = c.elements[i + 1].str;
        if (c.elements[i].str == "pending") pending = c.elements[i + 1].integer;
      }
      if (name.empty() || name == name_ || pending != 0) continue;
      RedisArgs exists{"EXISTS", keys_.worker(name)};
      if ((co_await commands_.command(exists)).integer != 0) continue;
      RedisArgs forget{"XGROUP", "DELCONSUMER", stream, keys_.group, name};
      co_await commands_.command(forget);
    }
  }
}

asio::awaitable<void> Consumer::leave() {
  try {
    co_await connect_commands();
    for (const auto& stream : keys_.tasks) {
      RedisArgs pending{"XPENDING", stream, keys_.group, "-", "+", "1", name_};
      RedisReply mine = co_await commands_.command(pending);
      if (mine.type == RedisReply::Type::array && mine.elements.empty()) {
        RedisArgs forget{"XGROUP", "DELCONSUMER", stream, keys_.group, name_};
        co_await commands_.command(forget);
      }
    }
    RedisArgs del{"DEL", keys_.worker(name_)};
    co_await commands_.command(del);
    RedisArgs remove{"SREM", keys_.workers, name_};
    co_await commands_.command(remove);
  } catch (const RedisError&) {
    // The broker is gone: the registration expires by itself.
  }
}

}  // namespace plumber::detail::remote_consumer

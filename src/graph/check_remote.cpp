// Checking a node's `remote` field (docs/scale-out.md).
#include <stdexcept>
#include <string>

#include "graph/graph_checker.hpp"
#include "remote/broker_url.hpp"

namespace plumber::detail {

void Checker::check_broker(const std::string& url, const std::string& pointer) {
  try {
    parse_broker_url(url);
  } catch (const std::invalid_argument& e) {
    error("graph.bad_broker", pointer, "bad broker URL " + in_quotes(url) + ": " + e.what());
  }
}

void Checker::check_remote(const json& node, const std::string& pointer, NodeSpec& spec) {
  const json& remote = node["remote"];
  const std::string where = pointer + "/remote";
  RemoteSpec r;
  r.max_deliveries = spec.retries + 1;
  if (remote.is_boolean()) {
    if (!remote.get<bool>()) return;
  } else if (remote.is_object()) {
    unknown_fields(remote, where, {"broker", "in_flight", "claim_idle_ms", "max_deliveries"});
    if (auto broker = string(remote, where, "broker", false)) {
      check_broker(*broker, where + "/broker");
      r.broker = *broker;
    }
    r.in_flight = static_cast<std::size_t>(integer(remote, where, "in_flight", 256, 1, kMaxCount));
    r.claim_idle =
        std::chrono::milliseconds(integer(remote, where, "claim_idle_ms", 30'000, 10, 86'400'000));
    r.max_deliveries = static_cast<std::size_t>(integer(
        remote, where, "max_deliveries", static_cast<std::int64_t>(r.max_deliveries), 1, 1000));
  } else {
    error("graph.wrong_type", where,
          "remote must be true or an object {broker, in_flight, claim_idle_ms, max_deliveries}, "
          "not " +
              type_name(remote));
    return;
  }
  if (spec.procs > 0) {
    error("graph.remote_and_procs", where,
          "a node runs its step either in local worker processes or on remote workers, not both",
          "remove \"procs\" (a worker machine runs `plumber worker --procs N`)");
  }
  if (spec.threads > 0) {
    error("graph.remote_and_threads", where,
          "a remote node runs its step on remote workers, not on threads", "remove \"threads\"");
  }
  // The batches in flight carry at most in_flight messages.
  if (!node.contains("concurrency")) {
    spec.concurrency = std::max<std::size_t>(1, r.in_flight / spec.batch_size);
  }
  spec.remote = std::move(r);
}

}  // namespace plumber::detail

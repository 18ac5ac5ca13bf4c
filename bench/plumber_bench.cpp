// plumber_bench: Plumber against oneTBB flow graph, measured side by side in one run.
//
//   a) 4-hop in-process chain on 1 thread:
//        range -> identity -> identity -> identity -> discard
//      peer: tbb::flow input_node -> 3 serial function_nodes -> serial sink, task_arena(1).
//   b) diamond with a join:
//        source -> {a: identity, b: negate} -> zip by id -> checking sink
//      peers: tbb::flow join_node with key_matching (by id) and with queueing;
//      queueing is also run on 2 threads with a variable-cost branch, where it
//      pairs messages of different ids (counted).
//
// Every case moves N = 1,000,000 messages; each figure is the median of 5 timed
// runs after one warm-up run, the runs of the cases of one workload interleaved.
// The benchmark reports; it never fails because a target is missed.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <oneapi/tbb/flow_graph.h>
#include <oneapi/tbb/task_arena.h>
#include <boost/asio/io_context.hpp>

#include "plumber/all.hpp"

namespace {

namespace asio = boost::asio;
namespace flow = oneapi::tbb::flow;
using plumber::json;
using SteadyClock = std::chrono::steady_clock;

constexpr std::int64_t kMessages = 1'000'000;
constexpr int kRuns = 5;

// --- shared by both engines ------------------------------------------------------

/// Burns a cost that varies with `key` (0 to ~2 µs), so a branch with concurrency
/// finishes messages out of order.
std::atomic<std::uint64_t> g_blackhole{0};
void variable_cost(std::uint64_t key) {
  const std::uint64_t rounds = ((key * 0x9E3779B97F4A7C15ull) >> 59) * 64;  // 0 .. 1984
  std::uint64_t x = key | 1;
  for (std::uint64_t i = 0; i < rounds; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
  }
  g_blackhole.store(x, std::memory_order_relaxed);
}

/// What a zip sink saw in one run.
struct ZipCheck {
  std::uint64_t seen = 0;
  std::uint64_t mispaired = 0;  // parts that do not come from the same input
  std::int64_t sum = 0;         // of the first part: proves every input came once
  void reset() { *this = ZipCheck{}; }
  bool complete() const {
    return seen == static_cast<std::uint64_t>(kMessages) && sum == kMessages * (kMessages - 1) / 2;
  }
};

double seconds_since(SteadyClock::time_point start) {
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error(what);
}

// --- Plumber -----------------------------------------------------------------------

ZipCheck g_plumber_zip;  // written by the pipeline's strand (one io_context thread)

/// `negate`: the second branch of the diamond; its output still reveals its input.
class NegateStep final : public plumber::Transform {
 public:
  explicit NegateStep(bool variable) : variable_(variable) {}
  void process(std::span<plumber::Message> batch, std::vector<plumber::Message>& out) override {
    for (plumber::Message& m : batch) {
      const auto v = m.value.get<std::int64_t>();
      if (variable_) variable_cost(static_cast<std::uint64_t>(v));
      m.value = -v;
      out.push_back(std::move(m));
    }
  }

 private:
  bool variable_;
};

/// `zip_check`: a sink that checks each zipped object {"a": v, "b": -v}.
class ZipCheckSink final : public plumber::Transform {
 public:
  void process(std::span<plumber::Message> batch, std::vector<plumber::Message>&) override {
    for (const plumber::Message& m : batch) {
      ++g_plumber_zip.seen;
      const json& v = m.value;
      const auto a = v.find("a");
      const auto b = v.find("b");
      if (!v.is_object() || v.size() != 2 || a == v.end() || b == v.end() ||
          !a->is_number_integer() || !b->is_number_integer() ||
          a->get<std::int64_t>() != -b->get<std::int64_t>()) {
        ++g_plumber_zip.mispaired;
        continue;
      }
      g_plumber_zip.sum += a->get<std::int64_t>();
    }
  }
};

plumber::Registry make_registry() {
  plumber::Registry registry = plumber::Registry::with_builtins();
  for (bool variable : {false, true}) {
    plumber::CoroutineInfo negate;
    negate.name = variable ? "spin_negate" : "negate";
    negate.description =
        variable ? "negates an integer after a cost that varies with it" : "negates an integer";
    negate.make_transform = [variable](const json&) {
      return std::make_unique<NegateStep>(variable);
    };
    registry.add(std::move(negate));
  }
  plumber::CoroutineInfo check;
  check.name = "zip_check";
  check.kind = plumber::CoroutineKind::sink;
  check.description = "checks that the parts of a zipped object come from one input";
  check.make_transform = [](const json&) { return std::make_unique<ZipCheckSink>(); };
  registry.add(std::move(check));
  return registry;
}

std::string chain_graph(std::size_t queue_size) {
  return R"({ "plumber": 1, "name": "chain4",
    "settings": { "queue_size": )" +
         std::to_string(queue_size) + R"( },
    "nodes": [
      { "id": "src",  "coroutine": "range", "params": { "stop": )" +
         std::to_string(kMessages) + R"( } },
      { "id": "h1",   "coroutine": "identity" },
      { "id": "h2",   "coroutine": "identity" },
      { "id": "h3",   "coroutine": "identity" },
      { "id": "sink", "coroutine": "discard" } ],
    "edges": [
      { "from": "src", "to": "h1" }, { "from": "h1", "to": "h2" },
      { "from": "h2", "to": "h3" },  { "from": "h3", "to": "sink" } ] })";
}

/// `b_node` is spliced into the node list: the second branch's definition.
std::string diamond_graph(std::size_t queue_size, const std::string& b_node) {
  return R"({ "plumber": 1, "name": "diamond",
    "settings": { "queue_size": )" +
         std::to_string(queue_size) + R"( },
    "nodes": [
      { "id": "src",  "coroutine": "range", "params": { "stop": )" +
         std::to_string(kMessages) + R"( } },
      { "id": "a",    "coroutine": "identity" },
      )" +
         b_node + R"(,
      { "id": "zip",  "coroutine": "identity", "join": "zip" },
      { "id": "sink", "coroutine": "zip_check" } ],
    "edges": [
      { "from": "src", "to": "a" }, { "from": "src", "to": "b" },
      { "from": "a", "to": "zip" }, { "from": "b", "to": "zip" },
      { "from": "zip", "to": "sink" } ] })";
}

/// Runs `graph` to completion on an io_context run by this thread alone; returns
/// msgs/s (source start to drained graph). Checks that the sink got every message.
double run_plumber(const plumber::GraphSpec& graph, const plumber::Registry& registry) {
  asio::io_context io(1);
  plumber::Pipeline pipeline = plumber::Plumber(registry).build(graph, io.get_executor());
  std::uint64_t problems = 0;
  std::string first_problem;
  pipeline.on_output([&](plumber::OutputRecord&& r) {
    if (r.kind != plumber::OutputRecord::Kind::value && problems++ == 0) first_problem = r.error;
  });
  const auto start = SteadyClock::now();
  pipeline.start();
  io.run();
  const double seconds = seconds_since(start);
  if (!pipeline.done())
    fail(graph.name + ": io_context ran out of work before the pipeline was done");
  if (problems)
    fail(graph.name + ": " + std::to_string(problems) + " error records, first: " + first_problem);
  const auto stats = pipeline.stats();
  const auto sink = std::find_if(stats.begin(), stats.end(),
                                 [](const plumber::ProcessorStats& s) { return s.node == "sink"; });
  if (sink == stats.end() || sink->received != static_cast<std::uint64_t>(kMessages)) {
    fail(graph.name + ": the sink did not receive every message");
  }
  return static_cast<double>(kMessages) / seconds;
}

// --- oneTBB flow graph ---------------------------------------------------------------

/// The peer's payload: what a Plumber message minimally needs (correlation id, value).
struct Item {
  std::uint64_t id = 0;
  std::int64_t value = 0;
};
using Pair = std::tuple<Item, Item>;

flow::input_node<Item> make_source(flow::graph& g, std::int64_t& next) {
  return flow::input_node<Item>(g, [&next](oneapi::tbb::flow_control& fc) -> Item {
    if (next >= kMessages) {
      fc.stop();
      return {};
    }
    const std::int64_t v = next++;
    return Item{static_cast<std::uint64_t>(v) + 1, v};
  });
}

/// input_node -> 3 serial identity function_nodes -> serial sink, in a 1-thread arena.
double run_tbb_chain() {
  oneapi::tbb::task_arena arena(1, 1);
  double rate = 0;
  arena.execute([&] {
    flow::graph g;
    std::int64_t next = 0;
    auto src = make_source(g, next);
    auto identity = [](Item m) { return m; };
    flow::function_node<Item, Item> h1(g, flow::serial, identity);
    flow::function_node<Item, Item> h2(g, flow::serial, identity);
    flow::function_node<Item, Item> h3(g, flow::serial, identity);
    std::uint64_t count = 0;
    std::int64_t sum = 0;
    flow::function_node<Item> sink(g, flow::serial, [&](Item m) {
      ++count;
      sum += m.value;
      return flow::continue_msg();
    });
    flow::make_edge(src, h1);
    flow::make_edge(h1, h2);
    flow::make_edge(h2, h3);
    flow::make_edge(h3, sink);
    const auto start = SteadyClock::now();
    src.activate();
    g.wait_for_all();
    const double seconds = seconds_since(start);
    if (count != static_cast<std::uint64_t>(kMessages) || sum != kMessages * (kMessages - 1) / 2) {
      fail("tbb chain: the sink did not receive every message");
    }
    rate = static_cast<double>(kMessages) / seconds;
  });
  return rate;
}

enum class TbbJoin { key_matching, queueing };

/// source -> {a: identity, b: negate} -> join_node -> serial checking sink, in an
/// arena of `threads`. With `variable`, b costs 0-2 µs a message and runs with
/// unlimited concurrency, so its outputs overtake each other.
double run_tbb_diamond(TbbJoin policy, int threads, bool variable, ZipCheck& check) {
  oneapi::tbb::task_arena arena(threads, 1);
  double rate = 0;
  check.reset();
  arena.execute([&] {
    flow::graph g;
    std::int64_t next = 0;
    auto src = make_source(g, next);
    flow::function_node<Item, Item> a(g, flow::serial, [](Item m) { return m; });
    flow::function_node<Item, Item> b(g, variable ? flow::unlimited : flow::serial,
                                      [variable](Item m) {
                                        if (variable)
                                          variable_cost(static_cast<std::uint64_t>(m.value));
                                        m.value = -m.value;
                                        return m;
                                      });
    flow::function_node<Pair> sink(g, flow::serial, [&](const Pair& p) {
      ++check.seen;
      const Item& x = std::get<0>(p);
      const Item& y = std::get<1>(p);
      if (x.id != y.id || x.value != -y.value) {
        ++check.mispaired;
      } else {
        check.sum += x.value;
      }
      return flow::continue_msg();
    });
    auto wire_and_run = [&](auto& join) {
      flow::make_edge(src, a);
      flow::make_edge(src, b);
      flow::make_edge(a, flow::input_port<0>(join));
      flow::make_edge(b, flow::input_port<1>(join));
      flow::make_edge(join, sink);
      const auto start = SteadyClock::now();
      src.activate();
      g.wait_for_all();
      rate = static_cast<double>(kMessages) / seconds_since(start);
    };
    if (policy == TbbJoin::key_matching) {
      auto key = [](const Item& m) -> std::uint64_t { return m.id; };
      flow::join_node<Pair, flow::key_matching<std::uint64_t>> join(g, key, key);
      wire_and_run(join);
    } else {
      flow::join_node<Pair, flow::queueing> join(g);
      wire_and_run(join);
    }
  });
  if (check.seen != static_cast<std::uint64_t>(kMessages))
    fail("tbb diamond: the sink missed tuples");
  return rate;
}

// --- the harness -------------------------------------------------------------------------

struct Case {
  Case(std::string name_, std::function<double()> run_,
       std::function<std::uint64_t()> mispairs_ = {}, std::function<bool()> complete_ = {})
      : name(std::move(name_)),
        run(std::move(run_)),
        mispairs(std::move(mispairs_)),
        complete(std::move(complete_)) {}

  std::string name;
  std::function<double()> run;              // one run: msgs/s
  std::function<std::uint64_t()> mispairs;  // after a run; empty when not a join
  std::function<bool()> complete;           // every input paired exactly once (joins)
  std::vector<double> rates;
  std::vector<std::uint64_t> mispair_counts;
  bool always_complete = true;

  bool ran() const { return !rates.empty(); }
  double median() const {
    if (rates.empty()) return 0;
    std::vector<double> sorted = rates;
    std::sort(sorted.begin(), sorted.end());
    return sorted[sorted.size() / 2];
  }
};

/// `--only TEXT`: run only the cases whose name contains TEXT (for profiling).
std::string g_only;
/// `--runs N`: timed runs a case (default kRuns).
int g_runs = kRuns;

/// Warm-up, then g_runs timed rounds; in each round every case runs once.
void measure(const char* label, std::vector<Case>& cases) {
  const bool any = std::any_of(cases.begin(), cases.end(), [](const Case& c) {
    return c.name.find(g_only) != std::string::npos;
  });
  if (!any) return;
  std::fprintf(stderr, "%s ", label);
  for (int round = 0; round <= g_runs; ++round) {
    for (Case& c : cases) {
      if (c.name.find(g_only) == std::string::npos) continue;
      const double rate = c.run();
      if (round == 0) continue;  // warm-up
      c.rates.push_back(rate);
      if (c.mispairs) c.mispair_counts.push_back(c.mispairs());
      if (c.complete && !c.complete()) c.always_complete = false;
    }
    std::fprintf(stderr, ".");
    std::fflush(stderr);
  }
  std::fprintf(stderr, "\n");
}

std::string mega(double rate) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f M", rate / 1e6);
  return text;
}

void print_table(const char* title, const std::vector<Case>& cases) {
  if (std::none_of(cases.begin(), cases.end(), [](const Case& c) { return c.ran(); })) return;
  std::printf("\n%s\n", title);
  std::printf("  %-66s %10s %21s %s\n", "case", "msgs/s", "(min .. max)", "mis-paired");
  for (const Case& c : cases) {
    if (!c.ran()) continue;
    const auto [lo, hi] = std::minmax_element(c.rates.begin(), c.rates.end());
    std::string pairs;
    if (!c.mispair_counts.empty()) {
      const auto [plo, phi] = std::minmax_element(c.mispair_counts.begin(), c.mispair_counts.end());
      pairs = *phi == 0 ? "0 in every run"
                        : std::to_string(*plo) + " .. " + std::to_string(*phi) + " per run";
      if (!c.always_complete && *phi == 0) pairs += " (incomplete!)";
    }
    std::printf("  %-66s %10s %9s .. %-9s %s\n", c.name.c_str(), mega(c.median()).c_str(),
                mega(*lo).c_str(), mega(*hi).c_str(), pairs.c_str());
  }
}

void print_ratio(const char* what, const Case& a, const Case& b) {
  if (a.ran() && b.ran()) std::printf("  %-66s %9.2fx\n", what, a.median() / b.median());
}

void print_target(const std::string& target, const std::string& measured, bool met) {
  std::printf("  %-74s %-16s %s\n", target.c_str(), measured.c_str(), met ? "MET" : "MISSED");
}

std::string times(double ratio) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2fx", ratio);
  return text;
}

int run() {
  const plumber::Registry registry = make_registry();
  const auto chain64 = plumber::parse_graph(chain_graph(64), registry, "chain4-q64");
  const auto chain1024 = plumber::parse_graph(chain_graph(1024), registry, "chain4-q1024");
  const std::string plain_b = R"({ "id": "b", "coroutine": "negate" })";
  const std::string spin_b =
      R"({ "id": "b", "coroutine": "spin_negate", "threads": 2, "concurrency": 8 })";
  const auto zip64 = plumber::parse_graph(diamond_graph(64, plain_b), registry, "zip-q64");
  const auto zip1024 = plumber::parse_graph(diamond_graph(1024, plain_b), registry, "zip-q1024");
  const auto zip_spin = plumber::parse_graph(diamond_graph(1024, spin_b), registry, "zip-spin");
  const std::string spin_batched_b = R"({ "id": "b", "coroutine": "spin_negate", "threads": 2,
      "concurrency": 8, "batch_size": 64 })";
  const auto zip_spin_batched =
      plumber::parse_graph(diamond_graph(1024, spin_batched_b), registry, "zip-spin-batched");

  std::printf(
      "Plumber benchmark: %lld messages a run, median of %d runs after 1 warm-up run,\n"
      "std::chrono::steady_clock, runs of the cases of a workload interleaved.\n",
      static_cast<long long>(kMessages), g_runs);
  std::printf(
      "Payload: a Plumber message is plumber::Message (uint64 id, nlohmann::ordered_json\n"
      "value holding the integer, blob vector, priority, deadline: %zu bytes);\n"
      "oneTBB nodes pass struct Item { uint64 id; int64 value; } (%zu bytes).\n",
      sizeof(plumber::Message), sizeof(Item));
  std::printf(
      "Plumber runs each graph on one asio::io_context run by one thread (the whole graph\n"
      "on one strand); oneTBB runs in a task_arena of the stated number of threads.\n");
  std::fflush(stdout);

  // a) chain -------------------------------------------------------------------
  std::vector<Case> chain = {
      {"plumber  range->3x identity->discard, queue_size 64",
       [&] { return run_plumber(chain64, registry); }},
      {"plumber  range->3x identity->discard, queue_size 1024",
       [&] { return run_plumber(chain1024, registry); }},
      {"oneTBB   input_node->3x function_node->sink, 1 thread", [] { return run_tbb_chain(); }},
  };
  measure("chain", chain);

  // b) diamond -------------------------------------------------------------------
  ZipCheck tbb_check;
  auto plumber_mispairs = [] { return g_plumber_zip.mispaired; };
  auto plumber_complete = [] { return g_plumber_zip.complete(); };
  auto tbb_mispairs = [&] { return tbb_check.mispaired; };
  auto tbb_complete = [&] { return tbb_check.complete(); };
  auto plumber_run = [&](const plumber::GraphSpec& g) {
    return [&registry, &g] {
      g_plumber_zip.reset();
      return run_plumber(g, registry);
    };
  };
  std::vector<Case> zip = {
      {"plumber  zip by id, queue_size 64, 1 thread", plumber_run(zip64), plumber_mispairs,
       plumber_complete},
      {"plumber  zip by id, queue_size 1024, 1 thread", plumber_run(zip1024), plumber_mispairs,
       plumber_complete},
      {"oneTBB   join_node key_matching (by id), 1 thread",
       [&] { return run_tbb_diamond(TbbJoin::key_matching, 1, false, tbb_check); }, tbb_mispairs,
       tbb_complete},
      {"oneTBB   join_node key_matching (by id), 2 threads",
       [&] { return run_tbb_diamond(TbbJoin::key_matching, 2, false, tbb_check); }, tbb_mispairs,
       tbb_complete},
      {"oneTBB   join_node queueing, 1 thread",
       [&] { return run_tbb_diamond(TbbJoin::queueing, 1, false, tbb_check); }, tbb_mispairs,
       tbb_complete},
  };
  measure("zip  ", zip);

  // b') the same diamond, branch b with a variable cost and out-of-order completion.
  std::vector<Case> vzip = {
      {"plumber  zip, b on a 2-thread pool (concurrency 8)", plumber_run(zip_spin),
       plumber_mispairs, plumber_complete},
      {"plumber  zip, b on a 2-thread pool (concurrency 8, batch_size 64)",
       plumber_run(zip_spin_batched), plumber_mispairs, plumber_complete},
      {"oneTBB   key_matching, 2 threads, b unlimited",
       [&] { return run_tbb_diamond(TbbJoin::key_matching, 2, true, tbb_check); }, tbb_mispairs,
       tbb_complete},
      {"oneTBB   queueing, 2 threads, b unlimited",
       [&] { return run_tbb_diamond(TbbJoin::queueing, 2, true, tbb_check); }, tbb_mispairs,
       tbb_complete},
  };
  measure("vzip ", vzip);

  // report ------------------------------------------------------------------------
  print_table("a) 4-hop in-process chain, 1 thread", chain);
  print_ratio("ratio plumber (queue_size 64) / oneTBB", chain[0], chain[2]);
  print_ratio("ratio plumber (queue_size 1024) / oneTBB", chain[1], chain[2]);

  print_table("b) diamond: source -> {identity, negate} -> join by id -> checking sink", zip);
  print_ratio("ratio plumber (queue_size 64) / key_matching 1 thread", zip[0], zip[2]);
  print_ratio("ratio plumber (queue_size 1024) / key_matching 1 thread", zip[1], zip[2]);
  print_ratio("ratio plumber (queue_size 64) / key_matching 2 threads", zip[0], zip[3]);
  print_ratio("ratio plumber (queue_size 1024) / key_matching 2 threads", zip[1], zip[3]);
  print_ratio("ratio plumber (queue_size 64) / queueing 1 thread", zip[0], zip[4]);

  print_table("b') the same diamond, branch b costs 0-2 us a message and completes out of order",
              vzip);

  std::printf("\nTargets (design.md \"Performance targets\"; the benchmark never fails on them)\n");
  for (int i : {0, 1}) {
    const std::string q = i == 0 ? " (queue_size 64)" : " (queue_size 1024)";
    if (chain[i].ran()) {
      print_target("chain >= 10 M msg/s" + q, mega(chain[i].median()) + " msg/s",
                   chain[i].median() >= 10e6);
    }
    if (chain[i].ran() && chain[2].ran()) {
      const double r = chain[i].median() / chain[2].median();
      print_target("chain >= 3x oneTBB" + q, times(r), r >= 3.0);
    }
  }
  // Against the faster of oneTBB's key_matching runs (1 or 2 threads): the strict reading.
  const double key_best = std::max(zip[2].median(), zip[3].median());
  for (int i : {0, 1}) {
    if (!zip[i].ran() || key_best == 0) continue;
    const std::string q = i == 0 ? " (queue_size 64)" : " (queue_size 1024)";
    const double r = zip[i].median() / key_best;
    print_target("zip >= 2x oneTBB key_matching, its faster of 1|2 threads" + q, times(r),
                 r >= 2.0);
  }
  bool correct = true;
  bool any = false;
  std::uint64_t plumber_bad = 0;
  for (const Case* c : {&zip[0], &zip[1], &vzip[0], &vzip[1]}) {
    if (!c->ran()) continue;
    any = true;
    correct = correct && c->always_complete;
    for (auto n : c->mispair_counts)
      plumber_bad += n;
  }
  if (any) {
    print_target("zip always correct (every run of every Plumber diamond)",
                 std::to_string(plumber_bad) + " mis-paired", correct && plumber_bad == 0);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--only" && i + 1 < argc) {
      g_only = argv[++i];
    } else if (arg == "--runs" && i + 1 < argc) {
      g_runs = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(
          stderr,
          "usage: plumber_bench [--only TEXT] [--runs N]\n"
          "  --only TEXT  run only the cases whose name contains TEXT (e.g. \"plumber  zip\")\n"
          "  --runs N     timed runs a case, after one warm-up (default %d)\n",
          kRuns);
      return 2;
    }
  }
  try {
    return run();
  } catch (const plumber::GraphError& e) {
    for (const auto& d : e.diagnostics())
      std::fprintf(stderr, "%s\n", d.format(e.file()).c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "plumber_bench: %s\n", e.what());
    return 1;
  }
}

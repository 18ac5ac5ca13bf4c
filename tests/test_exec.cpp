// `exec` steps: real programs (Debian's /usr/bin/python3 with the step kit of
// python/plumber_step) really started, fed, killed and restarted; and
// auto-scaled pools (`"procs": {"min", "max"}`) of exec copies and of worker
// processes, observed through their size, never through timings.
// Labels "runtime".
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include "plumber/all.hpp"
#include "test_paths.hpp"
#include "test_support.hpp"
#include "worker_coroutines.hpp"

using namespace plumber;
namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

const std::string kPython = "/usr/bin/python3";
const std::string kKit = std::string(plumber::test::paths::source_dir) + "/python";

/// A directory of its own for a test's step files, removed at the end.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("plumber-exec-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  static int& counter() {
    static int n = 0;
    return n;
  }
  /// Writes `text` to NAME and returns its path.
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name) << text;
    return (path / name).string();
  }
};

/// The node `w` running `script` with Debian's python3 and the kit; `extra`
/// adds fields to the node ("procs": 2, "batch_size": 8, ...).
std::string exec_node(const std::string& script, const std::string& extra = "") {
  json node = {
      {"id", "w"},
      {"coroutine", "exec"},
      {"params", {{"command", json::array({kPython, script})}, {"env", {{"PYTHONPATH", kKit}}}}}};
  std::string text = node.dump();
  if (!extra.empty()) text.insert(text.size() - 1, ", " + extra);
  return text;
}

/// SOURCE -> w -> out (identity).
std::string graph_text(const std::string& source, const std::string& node) {
  return R"({"plumber": 1, "nodes": [)" + source + ", " + node +
         R"(, {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "w"}, {"from": "w", "to": "out"}]})";
}

std::string range_source(int count) {
  return R"({"id": "src", "coroutine": "range", "params": {"stop": )" + std::to_string(count) +
         "}}";
}

const std::string kInputSource = R"({"id": "src", "coroutine": "input"})";

struct Record {
  OutputRecord::Kind kind;
  std::uint64_t id;
  json value;
  std::string error;
};

/// A pipeline whose outputs are collected; run() on this thread, or
/// start_thread() to run it on another while the test feeds it and watches.
class Harness {
 public:
  Registry registry = test::worker_test_registry();
  asio::io_context io;
  std::function<void(const Record&)> on_record;

  Pipeline& build(const std::string& text, PipelineOptions options = {}) {
    graph_ = parse_graph(text, registry);
    pipeline_.emplace(Plumber(registry).build(graph_, io.get_executor(), options));
    pipeline_->on_output([this](OutputRecord&& r) {
      std::lock_guard lock(mutex_);
      records_.push_back({r.kind, r.id, std::move(r.value), std::move(r.error)});
      if (on_record) on_record(records_.back());
    });
    return *pipeline_;
  }
  Pipeline& pipeline() { return *pipeline_; }
  void run() {
    pipeline_->start();
    io.run();
    REQUIRE(pipeline_->done());
  }
  void start_thread() {
    pipeline_->start();
    thread_ = std::thread([this] { io.run(); });
  }
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  ~Harness() {
    if (thread_.joinable()) {
      pipeline_->stop(false);
      thread_.join();
    }
  }
  std::vector<Record> records() {
    std::lock_guard lock(mutex_);
    return records_;
  }
  std::vector<json> values() {
    std::vector<json> v;
    for (const auto& r : records())
      if (r.kind == OutputRecord::Kind::value) v.push_back(r.value);
    std::sort(v.begin(), v.end());
    return v;
  }
  std::vector<Record> errors() {
    std::vector<Record> e;
    for (const auto& r : records())
      if (r.kind != OutputRecord::Kind::value) e.push_back(r);
    return e;
  }
  WorkerPoolStats pool() {
    for (const auto& s : pipeline_->stats()) {
      if (s.node == "w") return s.workers.value();
    }
    FAIL("no node w");
    return {};
  }

 private:
  GraphSpec graph_;
  std::optional<Pipeline> pipeline_;
  std::mutex mutex_;
  std::vector<Record> records_;
  std::thread thread_;
};

/// Waits until `condition` holds; fails after a generous hang guard (never a
/// timing assertion: only a test that would hang for ever stops here).
void wait_until(const std::function<bool()>& condition, const char* what) {
  const auto guard = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  while (!condition()) {
    if (std::chrono::steady_clock::now() > guard) FAIL("hang guard: still waiting for " << what);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

std::vector<json> numbers(int from, int to, int factor = 1) {
  std::vector<json> v;
  for (int i = from; i < to; ++i)
    v.push_back(i * factor);
  std::sort(v.begin(), v.end());
  return v;
}

const char* kDouble = R"(import plumber_step

@plumber_step.step
def handle(value):
    return value * 2
)";

}  // namespace

TEST_CASE("Exec.RunsAPythonStepInCopies") {
  TempDir dir;
  Harness h;
  h.build(
      graph_text(range_source(200), exec_node(dir.write("double.py", kDouble), R"("procs": 2)")));
  h.run();
  CHECK(h.errors().empty());
  CHECK(h.values() == numbers(0, 200, 2));
  const WorkerPoolStats pool = h.pool();
  CHECK(pool.program);
  CHECK(pool.procs == 2);
  CHECK(pool.tasks_done == 200);
  REQUIRE(pool.workers.size() == 2);
  CHECK(pool.workers[0].pid != pool.workers[1].pid);
  CHECK(pool.deaths == 0);
}

TEST_CASE("Exec.BatchIsOneRequest") {
  TempDir dir;
  const std::string script = dir.write("sizes.py", R"(import plumber_step

@plumber_step.step(batch=True)
def handle(batch):
    return [{"value": v, "batch": len(batch)} for v in batch]
)");
  Harness h;
  h.build(graph_text(range_source(64), exec_node(script, R"("batch_size": 16)")));
  h.run();
  REQUIRE(h.errors().empty());
  const auto values = h.values();
  REQUIRE(values.size() == 64);
  std::size_t largest = 0;
  for (const auto& v : values)
    largest = std::max(largest, v["batch"].get<std::size_t>());
  // The range source fills the node's input before it runs: full batches.
  CHECK(largest == 16);
  CHECK(h.pool().max_batch == 16);
  CHECK(h.pool().batches_done < 64);
}

TEST_CASE("Exec.ValueErrorsAreRecordsOfTheirOwn") {
  TempDir dir;
  const std::string script = dir.write("picky.py", R"(import plumber_step

@plumber_step.step
def handle(value):
    if value % 5 == 0:
        raise ValueError("no multiples of five: %d" % value)
    return value
)");
  Harness h;
  h.build(graph_text(range_source(20), exec_node(script, R"("batch_size": 4)")));
  h.run();
  const auto errors = h.errors();
  REQUIRE(errors.size() == 4);
  for (const auto& e : errors)
    CHECK(e.error.find("ValueError: no multiples of five") == 0);
  CHECK(h.values().size() == 16);
}

TEST_CASE("Exec.StartFailures") {
  TempDir dir;
  PipelineOptions options;
  options.worker_start_timeout = std::chrono::milliseconds(3000);
  SUBCASE("on_start raises: its message and its stderr") {
    const std::string script = dir.write("broken.py", R"(import sys
import plumber_step

def on_start():
    print("loading /models/cat.bin", file=sys.stderr)
    raise FileNotFoundError("model file missing: /models/cat.bin")

@plumber_step.step
def handle(value):
    return value
)");
    Harness h;
    h.build(graph_text(range_source(3), exec_node(script)), options);
    try {
      h.pipeline().start();
      FAIL("start() should have failed");
    } catch (const std::exception& e) {
      const std::string text = e.what();
      CHECK(text.find("node \"w\"") != std::string::npos);
      CHECK(text.find("on_start failed: FileNotFoundError: model file missing: /models/cat.bin") !=
            std::string::npos);
      CHECK(text.find("its stderr:") != std::string::npos);
      CHECK(text.find("loading /models/cat.bin") != std::string::npos);
    }
  }
  SUBCASE("exits before it is ready") {
    const std::string script = dir.write("exits.py", R"(import sys
sys.stderr.write("no GPU\n")
sys.exit(3)
)");
    Harness h;
    h.build(graph_text(range_source(3), exec_node(script)), options);
    CHECK_THROWS_WITH_AS(
        h.pipeline().start(),
        doctest::Contains("exited with code 3 before it was ready; its stderr: no GPU"),
        std::exception);
  }
  SUBCASE("never ready") {
    const std::string script = dir.write("silent.py", "import time\ntime.sleep(60)\n");
    Harness h;
    options.worker_start_timeout = std::chrono::milliseconds(300);
    h.build(graph_text(range_source(3), exec_node(script)), options);
    CHECK_THROWS_WITH_AS(h.pipeline().start(), doctest::Contains("was not ready within 300 ms"),
                         std::exception);
  }
  SUBCASE("no such program") {
    Harness h;
    json node = {{"id", "w"},
                 {"coroutine", "exec"},
                 {"params", {{"command", json::array({"/nonexistent/step"})}}}};
    h.build(graph_text(range_source(3), node.dump()), options);
    CHECK_THROWS_WITH_AS(h.pipeline().start(), doctest::Contains("cannot start /nonexistent/step"),
                         std::exception);
  }
}

TEST_CASE("Exec.ProtocolErrorIsReported") {
  TempDir dir;
  // Prints to the real stdout behind the kit's back: not a protocol line.
  const std::string script = dir.write("chatty.py", R"(import os
import plumber_step

@plumber_step.step
def handle(value):
    os.write(1, b"hello from the step\n")
    return value
)");
  Harness h;
  h.build(graph_text(range_source(1), exec_node(script)));
  h.run();
  const auto errors = h.errors();
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].error.find("wrote a line that is not JSON on stdout") != std::string::npos);
  CHECK(errors[0].error.find("hello from the step") != std::string::npos);
}

// SIGKILL of a copy while it runs a request: the batch it held is retried on
// the restarted copy (or another), nothing is lost nor duplicated.
TEST_CASE("Exec.SigkillOfACopyMidStream") {
  TempDir dir;
  const std::string gate = (dir.path / "gate").string();
  // Value 7 waits at the gate: the test kills the copy that holds it.
  const std::string script = dir.write("gated.py", R"(import os, sys, time
import plumber_step

@plumber_step.step
def handle(value):
    if value == 7 and not os.path.exists(sys.argv[1]):
        with open(sys.argv[1] + ".holding", "w") as f:
            f.write(str(os.getpid()))
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.002)
    return value
)");
  json node = {
      {"id", "w"},
      {"coroutine", "exec"},
      {"procs", 2},
      {"retries", 1},
      {"params",
       {{"command", json::array({kPython, script, gate})}, {"env", {{"PYTHONPATH", kKit}}}}}};
  Harness h;
  h.build(graph_text(range_source(50), node.dump()));
  h.start_thread();
  const std::string holding = gate + ".holding";
  wait_until([&] { return fs::exists(holding) && fs::file_size(holding) > 0; },
             "a copy holding value 7");
  int pid = 0;
  std::ifstream(holding) >> pid;
  REQUIRE(pid > 0);
  REQUIRE(::kill(pid, SIGKILL) == 0);
  // The retry must not wait at the gate again: open it once the death is seen.
  wait_until([&] { return h.pool().deaths >= 1; }, "the death to be seen");
  std::ofstream(gate) << "open";
  h.join();
  CHECK(h.errors().empty());
  CHECK(h.values() == numbers(0, 50));
  const WorkerPoolStats pool = h.pool();
  CHECK(pool.deaths == 1);
  CHECK(pool.restarts == 1);
}

TEST_CASE("Exec.SigkillWithoutRetriesIsReported") {
  TempDir dir;
  const std::string script = dir.write("slow.py", R"(import os, sys, time
import plumber_step

@plumber_step.step
def handle(value):
    if value == 3:
        with open(sys.argv[1], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
    return value
)");
  const std::string marker = (dir.path / "pid").string();
  json node = {
      {"id", "w"},
      {"coroutine", "exec"},
      {"params",
       {{"command", json::array({kPython, script, marker})}, {"env", {{"PYTHONPATH", kKit}}}}}};
  Harness h;
  h.build(graph_text(range_source(10), node.dump()));
  h.start_thread();
  wait_until([&] { return fs::exists(marker) && fs::file_size(marker) > 0; }, "value 3 running");
  int pid = 0;
  std::ifstream(marker) >> pid;
  REQUIRE(::kill(pid, SIGKILL) == 0);
  h.join();
  const auto errors = h.errors();
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].error.find("was killed by signal 9 (SIGKILL)") != std::string::npos);
  CHECK(h.values().size() == 9);
  CHECK(h.pool().restarts == 1);
}

TEST_CASE("Exec.TimeoutKillsAndReplacesTheCopy") {
  TempDir dir;
  const std::string script = dir.write("hang.py", R"(import time
import plumber_step

@plumber_step.step
def handle(value):
    if value == 2:
        time.sleep(60)
    return value
)");
  Harness h;
  h.build(graph_text(range_source(6), exec_node(script, R"("timeout_ms": 500)")));
  h.run();
  const auto errors = h.errors();
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].error.find("timed out after 500 ms") != std::string::npos);
  CHECK(h.values().size() == 5);
  CHECK(h.pool().restarts == 1);
}

// --- auto-scaling -------------------------------------------------------------------

namespace {

/// Feeds `count` values that wait at `gate`, watches the pool grow to its max,
/// opens the gate, and watches it shrink back to its min once idle.
void burst_grows_then_idle_shrinks(Harness& h, const std::string& gate, int count) {
  h.start_thread();
  CHECK(h.pool().procs == 1);
  CHECK(h.pool().procs_min == 1);
  CHECK(h.pool().procs_max == 3);
  for (int i = 0; i < count; ++i)
    h.pipeline().feed(json(i));
  wait_until([&] { return h.pool().procs == 3; }, "the pool to grow to 3");
  std::ofstream(gate) << "open";
  wait_until([&] { return h.values().size() == static_cast<std::size_t>(count); }, "every value");
  wait_until([&] { return h.pool().procs == 1; }, "the pool to shrink to 1");
  const WorkerPoolStats pool = h.pool();
  CHECK(pool.scale_ups == 2);
  CHECK(pool.scale_downs == 1);
  REQUIRE(pool.scale_events.size() == 3);
  CHECK(pool.scale_events[0].from == 1);
  CHECK(pool.scale_events[0].to == 2);
  CHECK(pool.scale_events[1].to == 3);
  CHECK(pool.scale_events[2].from == 3);
  CHECK(pool.scale_events[2].to == 1);
  CHECK(pool.workers.size() == 1);
  CHECK(pool.deaths == 0);
  h.pipeline().end_input();
  h.join();
  CHECK(h.errors().empty());
  CHECK(h.values() == numbers(0, count));
}

const char* kScaling =
    R"("procs": {"min": 1, "max": 3, "cooldown_ms": 0, "scale_down_after_ms": 100})";

}  // namespace

TEST_CASE("Autoscale.ExecPoolGrowsUnderABurstAndShrinksWhenIdle") {
  TempDir dir;
  const std::string gate = (dir.path / "gate").string();
  const std::string script = dir.write("gated.py", R"(import os, sys, time
import plumber_step

@plumber_step.step
def handle(value):
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.002)
    return value
)");
  json node = json::parse(exec_node(script, kScaling));
  node["params"]["command"].push_back(gate);
  Harness h;
  h.build(graph_text(kInputSource, node.dump()));
  burst_grows_then_idle_shrinks(h, gate, 40);
}

TEST_CASE("Autoscale.WorkerPoolGrowsUnderABurstAndShrinksWhenIdle") {
  TempDir dir;
  const std::string gate = (dir.path / "gate").string();
  json node = {{"id", "w"}, {"coroutine", "wait_for_file"}, {"params", {{"path", gate}}}};
  std::string text = node.dump();
  text.insert(text.size() - 1, std::string(", ") + kScaling);
  Harness h;
  h.build(graph_text(kInputSource, text));
  burst_grows_then_idle_shrinks(h, gate, 40);
}

TEST_CASE("Autoscale.FixedPoolNeverScales") {
  TempDir dir;
  Harness h;
  h.build(graph_text(range_source(100), exec_node(dir.write("double.py", kDouble))));
  h.run();
  const WorkerPoolStats pool = h.pool();
  CHECK(pool.procs == 1);
  CHECK(pool.procs_max == 0);
  CHECK(pool.scale_ups == 0);
  CHECK(pool.scale_events.empty());
}

// Requests and results far larger than a pipe (64 KiB): written as the copy
// reads, read in pieces.
TEST_CASE("Exec.LongLines") {
  TempDir dir;
  const std::string script = dir.write("echo.py", R"(import plumber_step

@plumber_step.step
def handle(value):
    return value[::-1]
)");
  Registry registry = test::worker_test_registry();
  std::string big(300'000, 'a');
  big.back() = 'z';
  json values = json::array({big, big, big, big});
  const std::string text = graph_text(
      R"({"id": "src", "coroutine": "values", "params": {"values": )" + values.dump() + "}}",
      exec_node(script, R"("batch_size": 4)"));
  Harness h;
  h.build(text);
  h.run();
  CHECK(h.errors().empty());
  const auto out = h.values();
  REQUIRE(out.size() == 4);
  for (const auto& v : out) {
    CHECK(v.get<std::string>().size() == big.size());
    CHECK(v.get<std::string>().front() == 'z');
  }
}

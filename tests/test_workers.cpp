// Worker processes (`procs`): real processes started by re-executing this test
// binary (tests/main.cpp calls plumber::run_worker_if_requested). Results,
// batching, zero-copy blobs, crashes and restarts, start errors, stop, leaks.
// Label "runtime".
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "plumber/all.hpp"
#include "sanitizers.hpp"
#include "test_paths.hpp"
#include "test_support.hpp"
#include "worker_coroutines.hpp"

using namespace plumber;
namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace {

struct Record {
  OutputRecord::Kind kind = OutputRecord::Kind::value;
  std::uint64_t id = 0;
  std::string node;
  json value;
  std::string error;
  std::vector<Blob> blobs;
};

/// A registry with the worker test coroutines, an io_context and one pipeline
/// whose outputs are collected (the pipeline dies before the io_context).
class Harness {
 public:
  Registry registry = test::worker_test_registry();
  asio::io_context io;
  std::vector<Record> records;  // written on the pipeline's strand only
  /// Called on the strand after each record is stored.
  std::function<void(const Record&)> on_record;

  Pipeline& build(std::string_view text, PipelineOptions options = {}) {
    graph_ = parse_graph(text, registry);
    pipeline_.emplace(Plumber(registry).build(graph_, io.get_executor(), options));
    pipeline_->on_output([this](OutputRecord&& r) {
      records.push_back({r.kind, r.id, std::string(r.node), std::move(r.value), std::move(r.error),
                         std::move(r.blobs)});
      if (on_record) on_record(records.back());
    });
    return *pipeline_;
  }
  Pipeline& pipeline() { return *pipeline_; }
  void run() {
    pipeline_->start();
    io.run();
    REQUIRE(pipeline_->done());
  }
  std::vector<json> values() const {
    std::vector<json> v;
    for (const auto& r : records) {
      if (r.kind == OutputRecord::Kind::value) v.push_back(r.value);
    }
    return v;
  }
  std::vector<Record> errors() const {
    std::vector<Record> e;
    for (const auto& r : records) {
      if (r.kind != OutputRecord::Kind::value) e.push_back(r);
    }
    return e;
  }
  WorkerPoolStats pool(std::string_view node) const {
    for (const auto& s : pipeline_->stats()) {
      if (s.node == node) return s.workers.value();
    }
    FAIL("no node " << node);
    return {};
  }

 private:
  GraphSpec graph_;
  std::optional<Pipeline> pipeline_;
};

/// range(0..count) -> NODE -> out (identity), NODE given as JSON text.
std::string chain(const std::string& node, int count) {
  return R"({"plumber": 1, "nodes": [
    {"id": "src", "coroutine": "range", "params": {"stop": )" +
         std::to_string(count) + R"(}},
    )" + node +
         R"(,
    {"id": "out", "coroutine": "identity"}],
  "edges": [{"from": "src", "to": "w"}, {"from": "w", "to": "out"}]})";
}

std::vector<json> sorted(std::vector<json> values) {
  std::sort(values.begin(), values.end());
  return values;
}

bool alive(int pid) {
  return ::kill(pid, 0) == 0;
}

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator("/proc/self/fd"))
    ++n;
  return n;
}

std::size_t own_segments() {
  const std::string prefix = "plumber-" + std::to_string(::getpid()) + "-";
  std::size_t n = 0;
  for (const auto& entry : fs::directory_iterator("/dev/shm")) {
    if (entry.path().filename().string().rfind(prefix, 0) == 0) ++n;
  }
  return n;
}

/// True when this process has no child left (every worker was reaped).
bool no_children() {
  return ::waitpid(-1, nullptr, WNOHANG) == -1 && errno == ECHILD;
}

/// The message of the exception start() throws.
std::string start_error(Harness& h) {
  try {
    h.pipeline().start();
  } catch (const std::exception& e) {
    return e.what();
  }
  FAIL("start() did not throw");
  return {};
}

}  // namespace

TEST_CASE("Workers.SameResultsAsInProcess") {
  std::vector<json> expected;
  {
    Harness h;
    h.build(chain(R"({"id": "w", "coroutine": "sum_squares"})", 300));
    h.run();
    expected = sorted(h.values());
    REQUIRE(expected.size() == 300);
  }
  for (int procs = 1; procs <= 4; ++procs) {
    for (int batch : {1, 16}) {
      CAPTURE(procs);
      CAPTURE(batch);
      Harness h;
      h.build(chain(R"({"id": "w", "coroutine": "sum_squares", "procs": )" + std::to_string(procs) +
                        R"(, "batch_size": )" + std::to_string(batch) + "}",
                    300));
      h.run();
      CHECK(h.errors().empty());
      CHECK(sorted(h.values()) == expected);
      const WorkerPoolStats pool = h.pool("w");
      CHECK(pool.procs == static_cast<std::size_t>(procs));
      CHECK(pool.tasks_done == 300);
      CHECK(pool.in_flight == 0);
      CHECK(pool.restarts == 0);
      CHECK(pool.max_batch <= static_cast<std::uint64_t>(batch));
    }
  }
  CHECK(no_children());
}

TEST_CASE("Workers.RunInOtherProcesses") {
  Harness h;
  h.build(chain(R"({"id": "w", "coroutine": "worker_pid", "procs": 3, "batch_size": 4})", 200));
  h.run();
  std::set<int> pids;
  for (const json& v : h.values())
    pids.insert(v["pid"].get<int>());
  CHECK(h.values().size() == 200);
  CHECK_FALSE(pids.contains(::getpid()));
  CHECK(pids.size() >= 1);
  CHECK(pids.size() <= 3);
}

TEST_CASE("Workers.BatchesGoInOneCall") {
  // The source emits everything before the worker node runs: batches fill up.
  Harness h;
  h.build(chain(R"({"id": "w", "coroutine": "batch_len", "procs": 2, "batch_size": 16,
                    "batch_timeout_ms": 1000, "queue_size": 64})",
                40));
  h.run();
  std::map<int, int> sizes;
  for (const json& v : h.values())
    ++sizes[v.get<int>()];
  // 40 = 16 + 16 + 8: each message reports the size of its batch.
  CHECK(sizes == std::map<int, int>{{8, 8}, {16, 32}});
  const WorkerPoolStats pool = h.pool("w");
  CHECK(pool.batches_done == 3);
  CHECK(pool.max_batch == 16);
}

namespace {

/// Registers "paced": emits 0..count-1, each after the output of the one
/// before came out (a request/response client). `answered_in_emit` counts the
/// values whose output was out by the time emit() returned.
void add_paced_source(Harness& h, int count, int& answered_in_emit) {
  auto waker = std::make_shared<asio::steady_timer*>(nullptr);
  h.on_record = [waker](const Record&) {
    if (*waker) (*waker)->cancel();
  };
  h.registry.add_async_source(
      "paced",
      [&h, count, &answered_in_emit, waker](SourceContext& context,
                                            const json&) -> asio::awaitable<void> {
        asio::steady_timer wake(co_await asio::this_coro::executor);
        *waker = &wake;
        for (int i = 0; i < count; ++i) {
          const std::size_t before = h.records.size();
          json value = i;  // named: g++ 12 destroys temporaries in co_await early
          co_await context.emit(std::move(value));
          if (h.records.size() > before) ++answered_in_emit;
          while (h.records.size() == before) {
            wake.expires_at(asio::steady_timer::time_point::max());
            std::tuple<boost::system::error_code> waited =
                co_await wake.async_wait(asio::as_tuple(asio::use_awaitable));
            (void)waited;
          }
        }
        *waker = nullptr;
      });
}

/// Runs paced(count) -> spin(us) in one worker -> identity; returns how many
/// outputs were out before the source's emit() returned.
int run_paced_through_worker(Harness& h, int count, int spin_us) {
  int answered_in_emit = 0;
  add_paced_source(h, count, answered_in_emit);
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "paced"},
      {"id": "w", "coroutine": "spin", "params": {"us": )" +
          std::to_string(spin_us) + R"(}, "procs": 1},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "w"}, {"from": "w", "to": "out"}]})");
  h.run();
  return answered_in_emit;
}

/// 0, 1, ..., count - 1.
std::vector<json> counting(int count) {
  std::vector<json> values;
  for (int i = 0; i < count; ++i)
    values.push_back(i);
  return values;
}

/// Sets an environment variable for the life of a scope.
struct ScopedEnv {
  ScopedEnv(const char* name, const char* value) : name_(name) { ::setenv(name, value, 1); }
  ~ScopedEnv() { ::unsetenv(name_); }
  const char* name_;
};

}  // namespace

TEST_CASE("Workers.IdleWorkerNodeIsCalledDirectly") {
  // An idle worker node whose worker answers within the parent's spin takes a
  // message straight from its predecessor: the output is out before the
  // source's emit() returns. A spin of 2 s makes that so even under the
  // sanitizers on a loaded machine (a round trip there takes ~100 us).
  ScopedEnv spin("PLUMBER_PARENT_SPIN_US", "2000000");
  Harness h;
  const int answered_in_emit = run_paced_through_worker(h, 200, 0);
  CHECK(h.values() == counting(200));  // in order, each once
  CHECK(h.errors().empty());
  // The first call finds no round trip measured yet; a preempted worker may
  // miss the spin now and then: most, not all.
  CHECK(answered_in_emit >= 150);
  CHECK(h.pool("w").tasks_done == 200);
}

TEST_CASE("Workers.DirectCallNotAnsweredAtOnceIsAwaited") {
  // Each message takes 3 ms in the worker, far past the default 50 us spin:
  // a direct call that is not answered gives its batch to a unit of its own,
  // which sends the output on; the node ends only after it.
  Harness h;
  const int answered_in_emit = run_paced_through_worker(h, 20, 3000);
  CHECK(h.values() == counting(20));
  CHECK(h.errors().empty());
  CHECK(answered_in_emit == 0);  // none within 50 us
}

TEST_CASE("Workers.KilledWorkerLosesNothing") {
  for (int retries : {0, 2}) {
    CAPTURE(retries);
    Harness h;
    h.build(chain(R"({"id": "w", "coroutine": "spin", "params": {"us": 1000}, "procs": 2,
                      "retries": )" +
                      std::to_string(retries) + "}",
                  200));
    int killed = 0;
    h.on_record = [&](const Record&) {
      if (h.records.size() != 20) return;
      const WorkerPoolStats pool = h.pool("w");
      REQUIRE(pool.workers.size() == 2);
      killed = pool.workers[0].pid;
      REQUIRE(killed > 0);
      REQUIRE(::kill(killed, SIGKILL) == 0);
    };
    h.run();
    REQUIRE(killed > 0);
    // Every message comes out exactly once: as a value, or (no retries left)
    // as an error record naming the worker, its signal and the node.
    std::multiset<std::uint64_t> ids;
    for (const auto& r : h.records)
      ids.insert(r.id);
    CHECK(ids.size() == 200);
    CHECK(std::set<std::uint64_t>(ids.begin(), ids.end()).size() == 200);
    // Only the batch the worker was running is lost with it (requests still in
    // its ring go to the restarted worker); with retries it is run again.
    const auto errors = h.errors();
    if (retries > 0) {
      CHECK(errors.empty());
      CHECK(h.values().size() == 200);
    } else {
      CHECK(errors.size() <= 1);
    }
    for (const auto& e : errors) {
      CHECK(e.kind == OutputRecord::Kind::error);
      CHECK(e.node == "w");
      CHECK(e.error == "worker 0 (pid " + std::to_string(killed) +
                           ") of node \"w\" was killed by signal 9 (SIGKILL)");
    }
    const WorkerPoolStats pool = h.pool("w");
    CHECK(pool.deaths == 1);
    CHECK(pool.restarts == 1);
    CHECK(pool.workers[0].restarts == 1);
    CHECK(pool.in_flight == 0);
    CHECK_FALSE(alive(killed));
    CHECK(no_children());
  }
}

TEST_CASE("Workers.AbortInUserCode") {
  Harness h;
  h.build(chain(R"({"id": "w", "coroutine": "abort_on", "params": {"value": 13}, "procs": 1,
                    "retries": 1})",
                30));
  h.run();
  CHECK(h.values().size() == 29);
  const auto errors = h.errors();
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].node == "w");
  CHECK(errors[0].error.find("of node \"w\" was killed by signal 6 (SIGABRT)") !=
        std::string::npos);
  // Tried twice (retries: 1): two deaths, two restarts, and the pool went on.
  const WorkerPoolStats pool = h.pool("w");
  CHECK(pool.deaths == 2);
  CHECK(pool.restarts == 2);
  CHECK(no_children());
}

TEST_CASE("Workers.ExitCodeIsReported") {
  Harness h;
  h.build(chain(R"({"id": "w", "coroutine": "exit_on", "params": {"value": 4, "code": 42},
                    "procs": 2})",
                10));
  h.run();
  CHECK(h.values().size() == 9);
  const auto errors = h.errors();
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].error.find("of node \"w\" exited with code 42") != std::string::npos);
}

TEST_CASE("Workers.StepErrorsAreRecords") {
  // sum_squares refuses a string: the worker reports it, and lives on.
  Harness h;
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": [3, "x", 4]}},
      {"id": "w", "coroutine": "sum_squares", "procs": 1},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "w"}, {"from": "w", "to": "out"}]})");
  h.run();
  CHECK(sorted(h.values()) == std::vector<json>{5, 14});
  const auto errors = h.errors();
  REQUIRE(errors.size() == 1);
  CHECK(errors[0].error == "sum_squares takes an integer, not string");
  CHECK(h.pool("w").deaths == 0);
}

TEST_CASE("Workers.OnStartThrowsFailsStart") {
  Harness h;
  h.build(chain(R"({"id": "w", "coroutine": "start_throws", "procs": 2})", 3));
  const std::string error = start_error(h);
  CHECK(error.find("node \"w\": on_start failed: worker 0 (pid ") == 0);
  CHECK(error.find("could not start: its on_start threw: model file missing: /models/cat.bin") !=
        std::string::npos);
  CHECK(no_children());
}

TEST_CASE("Workers.StartErrorShowsWorkerStderr") {
  Harness h;
  h.build(chain(R"({"id": "w", "coroutine": "start_exits", "procs": 1})", 3));
  const std::string error = start_error(h);
  CHECK(error.find("exited with code 3 before it was ready") != std::string::npos);
  CHECK(error.find("its stderr: loading failed: no GPU") != std::string::npos);
  CHECK(no_children());
}

TEST_CASE("Workers.StartTimesOut") {
  Harness h;
  h.build(chain(R"({"id": "w", "coroutine": "start_hangs", "procs": 1})", 3),
          {.worker_start_timeout = std::chrono::milliseconds(300)});
  const std::string error = start_error(h);
  CHECK(error.find("could not start: was not ready within 300 ms") != std::string::npos);
  CHECK(no_children());
}

TEST_CASE("Workers.StaleSegmentsRemoved") {
  // A segment named after a process that is gone (a child we reaped).
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  REQUIRE(child > 0);
  REQUIRE(::waitpid(child, nullptr, 0) == child);
  const fs::path stale = "/dev/shm/plumber-" + std::to_string(child) + "-w-0-0";
  const fs::path ours = "/dev/shm/plumber-" + std::to_string(::getpid()) + "-test-keep";
  std::ofstream(stale) << "stale";
  std::ofstream(ours) << "live";
  REQUIRE(fs::exists(stale));
  Harness h;
  h.build(chain(R"({"id": "w", "coroutine": "sum_squares", "procs": 1})", 3));
  h.run();
  CHECK_FALSE(fs::exists(stale));
  CHECK(fs::exists(ours));  // its process (this one) is alive
  fs::remove(ours);
}

TEST_CASE("Workers.NoLeaksAcrossCycles") {
  const auto cycle = [] {
    Harness h;
    h.build(chain(R"({"id": "w", "coroutine": "sum_squares", "procs": 1})", 5));
    h.run();
    CHECK(h.values().size() == 5);
  };
  cycle();  // the arena and the lifeline pipe are made once per process
  const std::size_t fds = open_fds();
  for (int i = 0; i < test::cycles(100); ++i)
    cycle();
  CHECK(open_fds() == fds);
  CHECK(own_segments() == 0);
  CHECK(no_children());
  // stop(false) while busy, and a pipeline destroyed without running.
  for (int i = 0; i < 10; ++i) {
    Harness h;
    h.build(chain(R"({"id": "w", "coroutine": "spin", "params": {"us": 500}, "procs": 2})", 100));
    h.on_record = [&](const Record&) {
      if (h.records.size() == 3) h.pipeline().stop(false);
    };
    h.run();
  }
  for (int i = 0; i < 10; ++i) {
    Harness h;
    h.build(chain(R"({"id": "w", "coroutine": "sum_squares", "procs": 2})", 5));
    h.pipeline().start();
  }
  CHECK(open_fds() == fds);
  CHECK(own_segments() == 0);
  CHECK(no_children());
}

TEST_CASE("Workers.StopFalseCancelsInFlight") {
  Harness h;
  h.build(chain(R"({"id": "w", "coroutine": "spin", "params": {"us": 2000}, "procs": 2})", 100));
  std::vector<int> pids;
  h.on_record = [&](const Record&) {
    if (h.records.size() != 5) return;
    for (const auto& w : h.pool("w").workers)
      pids.push_back(w.pid);
    h.pipeline().stop(false);
  };
  h.run();
  std::set<std::uint64_t> ids;
  std::size_t cancelled = 0;
  for (const auto& r : h.records) {
    ids.insert(r.id);
    if (r.kind == OutputRecord::Kind::cancelled) ++cancelled;
  }
  CHECK(cancelled > 0);
  CHECK(h.records.size() == ids.size());  // once per id
  for (int pid : pids)
    CHECK_FALSE(alive(pid));
  CHECK(no_children());
}

TEST_CASE("Workers.GracefulStopDrains") {
  Harness h;
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "input"},
      {"id": "w", "coroutine": "spin", "params": {"us": 200}, "procs": 2},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "w"}, {"from": "w", "to": "out"}]})");
  h.pipeline().start();
  std::thread feeder([&] {
    for (int i = 0; i < 50; ++i)
      h.pipeline().feed(i);
    h.pipeline().stop(true);
  });
  h.io.run();
  feeder.join();
  CHECK(h.errors().empty());
  CHECK(h.values().size() == 50);
  CHECK(no_children());
}

TEST_CASE("Workers.BlobsCrossWithoutCopy") {
  // make (in process) attaches a 1 MiB blob; w (a worker) reads it and passes
  // it on; out receives it. A blob made in shared memory is never copied: the
  // output's bytes are the very bytes `make` wrote. A private blob is copied
  // into shared memory once, and what comes back is that copy.
  constexpr int kSize = 1 << 20;
  for (bool shared : {true, false}) {
    CAPTURE(shared);
    Harness h;
    std::vector<const std::byte*> made;  // the strand only
    CoroutineInfo remember;
    remember.name = "remember";
    remember.make_transform = [&](const json&) -> std::unique_ptr<Transform> {
      struct Remember final : Transform {
        std::vector<const std::byte*>* made;
        void process(std::span<Message> batch, std::vector<Message>& out) override {
          for (Message& m : batch) {
            made->push_back(m.blobs.at(0).data());
            out.push_back(std::move(m));
          }
        }
      };
      auto step = std::make_unique<Remember>();
      step->made = &made;
      return step;
    };
    h.registry.add(std::move(remember));
    h.build(R"({"plumber": 1, "nodes": [
        {"id": "src", "coroutine": "range", "params": {"stop": 8}},
        {"id": "make", "coroutine": "blob_make", "params": {"size": )" +
            std::to_string(kSize) + R"(, "shared": )" + (shared ? "true" : "false") + R"(}},
        {"id": "seen", "coroutine": "remember"},
        {"id": "w", "coroutine": "blob_pass", "procs": 1, "batch_size": 2},
        {"id": "out", "coroutine": "identity"}],
      "edges": [{"from": "src", "to": "make"}, {"from": "make", "to": "seen"},
                {"from": "seen", "to": "w"}, {"from": "w", "to": "out"}]})");
    h.run();
    REQUIRE(h.values().size() == 8);
    REQUIRE(made.size() == 8);
    std::set<const std::byte*> made_set(made.begin(), made.end());
    for (const auto& r : h.records) {
      REQUIRE(r.blobs.size() == 1);
      const Blob& blob = r.blobs[0];
      CHECK(blob.size() == static_cast<std::size_t>(kSize));
      CHECK(in_shared_memory(blob));
      CHECK(r.value["size"] == kSize);
      CHECK(r.value["first"] == static_cast<int>(r.id - 1) % 256);
      CHECK(static_cast<int>(blob.data()[kSize - 1]) == static_cast<int>(r.id - 1) % 256);
      // The same bytes as made: no copy (shared), or the one placement copy.
      CHECK(made_set.contains(blob.data()) == shared);
    }
    const WorkerPoolStats pool = h.pool("w");
    CHECK(pool.blob_bytes_copied == (shared ? 0u : 8u * kSize));
    CHECK(pool.blob_bytes_shared == (shared ? 16u : 8u) * kSize);  // there and back
  }
}

TEST_CASE("Workers.BlobsMadeInWorkers") {
  constexpr int kSize = 256 * 1024;
  for (bool shared : {true, false}) {
    CAPTURE(shared);
    Harness h;
    h.build(chain(R"({"id": "w", "coroutine": "blob_make", "procs": 2, "batch_size": 3,
                      "params": {"size": )" +
                      std::to_string(kSize) + R"(, "shared": )" + (shared ? "true" : "false") +
                      "}}",
                  10));
    h.run();
    REQUIRE(h.values().size() == 10);
    for (const auto& r : h.records) {
      REQUIRE(r.blobs.size() == 1);
      CHECK(in_shared_memory(r.blobs[0]));
      CHECK(r.blobs[0].use_count() == 1);  // owned here now
      CHECK(static_cast<int>(r.blobs[0].data()[kSize / 2]) == r.value.get<int>() % 256);
    }
    const WorkerPoolStats pool = h.pool("w");
    // Made in shared memory: handed over as is. Made privately: copied once, in the worker.
    CHECK(pool.blob_bytes_copied == (shared ? 0u : 10u * kSize));
  }
}

TEST_CASE("Workers.PluginCoroutineRunsInWorker") {
  Harness h;
  load_plugin(plumber::test::paths::test_plugin, h.registry);
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": ["ab", "cd"]}},
      {"id": "w", "coroutine": "shout", "procs": 1, "params": {"suffix": "?"}},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "w"}, {"from": "w", "to": "out"}]})");
  h.run();
  CHECK(sorted(h.values()) == std::vector<json>{"AB?", "CD?"});
  CHECK(h.pool("w").tasks_done == 2);
}

TEST_CASE("Workers.TimeoutDiscardsLateResult") {
  Harness h;
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "values", "params": {"values": [1, 2]}},
      {"id": "w", "coroutine": "spin", "params": {"us": 300000}, "procs": 1, "timeout_ms": 50},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "w"}, {"from": "w", "to": "out"}]})");
  h.run();
  CHECK(h.values().empty());
  const auto errors = h.errors();
  REQUIRE(errors.size() == 2);
  CHECK(errors[0].error.find("timed out after 50 ms in worker 0 (pid ") == 0);
}

TEST_CASE("Workers.RingsWrapAndLargeRecordsGoOutOfLine") {
  // 4000 values of 500 bytes wrap the 1 MiB rings twice each way; two values
  // of 1 MiB do not fit in a ring and travel through the arena.
  Harness h;
  h.build(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "input"},
      {"id": "w", "coroutine": "spin", "procs": 1, "batch_size": 8},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "w"}, {"from": "w", "to": "out"}]})");
  h.pipeline().start();
  std::vector<json> fed;
  for (int i = 0; i < 4000; ++i)
    fed.push_back(std::to_string(i) + std::string(500, 'x'));
  fed.push_back(std::string(1 << 20, 'a'));
  fed.push_back(std::string(1 << 20, 'b'));
  std::thread feeder([&] {
    for (const json& v : fed)
      h.pipeline().feed(v);
    h.pipeline().end_input();
  });
  h.io.run();
  feeder.join();
  CHECK(h.errors().empty());
  CHECK(sorted(h.values()) == sorted(fed));
  CHECK(own_segments() == 0);
}

TEST_CASE("Workers.CoroutineMissingInWorker") {
  // Registered here but not by main() before run_worker_if_requested: the
  // re-executed worker cannot find it, and start() says so.
  Harness h;
  CoroutineOptions options;
  options.worker_capable = true;
  h.registry.add_function(
      "only_in_parent", [](const json& v) { return v; }, std::move(options));
  h.build(chain(R"({"id": "w", "coroutine": "only_in_parent", "procs": 1})", 3));
  const std::string error = start_error(h);
  CHECK(error.find("could not start: coroutine \"only_in_parent\" is not registered in the worker "
                   "process (register it before calling plumber::run_worker_if_requested)") !=
        std::string::npos);
  CHECK(no_children());
}

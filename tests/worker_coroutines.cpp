#include "worker_coroutines.hpp"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <thread>

#include "plumber/worker_pool.hpp"

namespace plumber::test {
namespace {

/// A step whose on_start does `start` and whose messages go through `each`.
class TestStep final : public Transform {
 public:
  using Start = void (*)();
  TestStep(Start start, std::function<void(std::span<Message>, std::vector<Message>&)> each)
      : start_(start), each_(std::move(each)) {}
  void on_start() override {
    if (start_) start_();
  }
  void process(std::span<Message> batch, std::vector<Message>& out) override { each_(batch, out); }

 private:
  Start start_;
  std::function<void(std::span<Message>, std::vector<Message>&)> each_;
};

void pass(std::span<Message> batch, std::vector<Message>& out) {
  for (Message& m : batch)
    out.push_back(std::move(m));
}

void add_step(Registry& registry, std::string name, TestStep::Start start,
              std::function<void(std::span<Message>, std::vector<Message>&, const json&)> each,
              std::vector<ParamSpec> params = {}) {
  CoroutineInfo info;
  info.name = std::move(name);
  info.kind = CoroutineKind::transform;
  info.description = "worker test step";
  info.params = std::move(params);
  info.worker_capable = true;
  info.make_transform = [start, each](const json& p) -> std::unique_ptr<Transform> {
    return std::make_unique<TestStep>(
        start,
        [each, p](std::span<Message> batch, std::vector<Message>& out) { each(batch, out, p); });
  };
  registry.add(std::move(info));
}

}  // namespace

void register_worker_coroutines(Registry& registry) {
  add_step(registry, "spin", nullptr,
           [](std::span<Message> batch, std::vector<Message>& out, const json& p) {
             const auto us = p.at("us").get<std::int64_t>();
             for (Message& m : batch) {
               const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
               while (std::chrono::steady_clock::now() < until) {
               }
               out.push_back(std::move(m));
             }
           },
           {{"us", ParamType::integer, false, 0, "busy-wait per message"}});
  add_step(registry, "batch_len", nullptr,
           [](std::span<Message> batch, std::vector<Message>& out, const json&) {
             for (Message& m : batch) {
               m.value = batch.size();
               out.push_back(std::move(m));
             }
           });
  add_step(registry, "worker_pid", nullptr,
           [](std::span<Message> batch, std::vector<Message>& out, const json&) {
             for (Message& m : batch) {
               json v = json::object();
               v["value"] = std::move(m.value);
               v["pid"] = ::getpid();
               m.value = std::move(v);
               out.push_back(std::move(m));
             }
           });
  add_step(registry, "wait_for_file", nullptr,
           [](std::span<Message> batch, std::vector<Message>& out, const json& p) {
             // Holds each message until the file exists (a gate the test opens).
             const std::string path = p.at("path").get<std::string>();
             while (::access(path.c_str(), F_OK) != 0)
               std::this_thread::sleep_for(std::chrono::milliseconds(2));
             pass(batch, out);
           },
           {{"path", ParamType::string, true, nullptr, "the gate"}});
  add_step(registry, "abort_on", nullptr,
           [](std::span<Message> batch, std::vector<Message>& out, const json& p) {
             for (Message& m : batch) {
               if (m.value == p.at("value")) std::abort();
             }
             pass(batch, out);
           },
           {{"value", ParamType::any, true, nullptr, "abort on this value"}});
  add_step(registry, "exit_on", nullptr,
           [](std::span<Message> batch, std::vector<Message>& out, const json& p) {
             for (Message& m : batch) {
               if (m.value == p.at("value")) ::_exit(p.at("code").get<int>());
             }
             pass(batch, out);
           },
           {{"value", ParamType::any, true, nullptr, "exit on this value"},
            {"code", ParamType::integer, false, 7, "exit code"}});
  add_step(registry, "bad_alloc_on", nullptr,
           [](std::span<Message> batch, std::vector<Message>& out, const json& p) {
             for (Message& m : batch) {
               if (m.value == p.at("value")) throw std::bad_alloc();
             }
             pass(batch, out);
           },
           {{"value", ParamType::any, true, nullptr, "throw std::bad_alloc on this value"}});
  add_step(registry, "hang_on", nullptr,
           [](std::span<Message> batch, std::vector<Message>& out, const json& p) {
             for (Message& m : batch) {
               if (m.value == p.at("value")) {
                 for (;;)
                   ::pause();  // a step that never returns
               }
             }
             pass(batch, out);
           },
           {{"value", ParamType::any, true, nullptr, "never return on this value"}});
  add_step(registry, "stop_on", nullptr,
           [](std::span<Message> batch, std::vector<Message>& out, const json& p) {
             for (Message& m : batch) {
               if (m.value == p.at("value")) ::raise(SIGSTOP);
             }
             pass(batch, out);
           },
           {{"value", ParamType::any, true, nullptr, "SIGSTOP itself on this value"}});
  add_step(
      registry, "start_throws",
      [] { throw std::runtime_error("model file missing: /models/cat.bin"); },
      [](std::span<Message> batch, std::vector<Message>& out, const json&) { pass(batch, out); });
  add_step(
      registry, "start_exits",
      [] {
        std::fputs("loading failed: no GPU\n", stderr);
        std::fflush(stderr);
        ::_exit(3);
      },
      [](std::span<Message> batch, std::vector<Message>& out, const json&) { pass(batch, out); });
  add_step(
      registry, "start_hangs", [] { std::this_thread::sleep_for(std::chrono::seconds(30)); },
      [](std::span<Message> batch, std::vector<Message>& out, const json&) { pass(batch, out); });
  add_step(registry, "blob_pass", nullptr,
           [](std::span<Message> batch, std::vector<Message>& out, const json&) {
             for (Message& m : batch) {
               json v = json::object();
               const Blob& b = m.blobs.at(0);
               v["size"] = b.size();
               v["first"] = b.size() ? static_cast<int>(b.data()[0]) : -1;
               v["last"] = b.size() ? static_cast<int>(b.data()[b.size() - 1]) : -1;
               m.value = std::move(v);
               out.push_back(std::move(m));
             }
           });
  add_step(registry, "blob_make", nullptr,
           [](std::span<Message> batch, std::vector<Message>& out, const json& p) {
             const auto size = p.at("size").get<std::size_t>();
             for (Message& m : batch) {
               const auto fill = static_cast<std::byte>(m.value.get<int>() % 256);
               if (p.at("shared").get<bool>()) {
                 SharedBytes bytes = allocate_shared_bytes(size);
                 std::memset(bytes.data(), static_cast<int>(fill), size);
                 m.blobs.push_back(std::move(bytes).freeze());
               } else {
                 m.blobs.emplace_back(std::vector<std::byte>(size, fill));
               }
               out.push_back(std::move(m));
             }
           },
           {{"size", ParamType::integer, false, 1024, "bytes"},
            {"shared", ParamType::boolean, false, true, "allocate in shared memory"}});

  // on_start sleeps params.ms and appends "BEGIN END" (steady-clock ns, the
  // same clock in every process) to params.path: tests see whether the
  // on_starts of several nodes overlapped.
  CoroutineInfo logs;
  logs.name = "start_logs";
  logs.description = "worker test step: on_start sleeps and logs when";
  logs.worker_capable = true;
  logs.params = {{"ms", ParamType::integer, false, 500, "on_start sleeps this long"},
                 {"path", ParamType::string, true, nullptr, "where on_start logs"}};
  logs.make_transform = [](const json& p) -> std::unique_ptr<Transform> {
    struct StartLogs final : Transform {
      explicit StartLogs(json params) : params_(std::move(params)) {}
      void on_start() override {
        const auto ns = [] {
          return std::chrono::duration_cast<std::chrono::nanoseconds>(
                     std::chrono::steady_clock::now().time_since_epoch())
              .count();
        };
        const auto begin = ns();
        std::this_thread::sleep_for(std::chrono::milliseconds(params_.at("ms").get<int>()));
        const auto end = ns();
        if (FILE* f = std::fopen(params_.at("path").get<std::string>().c_str(), "a")) {
          std::fprintf(f, "%lld %lld\n", static_cast<long long>(begin),
                       static_cast<long long>(end));
          std::fclose(f);
        }
      }
      void process(std::span<Message> batch, std::vector<Message>& out) override {
        pass(batch, out);
      }
      json params_;
    };
    return std::make_unique<StartLogs>(p);
  };
  registry.add(std::move(logs));
}

Registry worker_test_registry() {
  Registry registry = Registry::with_builtins();
  register_worker_coroutines(registry);
  return registry;
}

}  // namespace plumber::test

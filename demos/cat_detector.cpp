// Aqueduct's CatDetector, embedded: a "model" that runs in worker processes
// and is much cheaper per image when it gets a batch.
//
//   images (input) ──► detect (detect_cats, procs: 2, batch_size: B) ──► out
//
// The model emulates a GPU as Aqueduct's example does (it sleeps: the CPU is
// free meanwhile): a call costs a fixed 2 ms (a kernel launch, a transfer),
// plus 1 ms for a lone image or 0.7 ms an image in a batch. With batch_size 1
// every image pays the 2 ms; with 16 the whole batch pays it once.
//
//   plumber_cat_detector [--images N] [--batches 1,4,16,32]
//
// It prints, for each batch size, the wall time of N images through 2
// workers and a bar per batch size (images per second).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "plumber/all.hpp"

namespace {

/// The model: says there is a cat in every image, taking the time a GPU would.
std::vector<plumber::json> detect_cats(std::vector<plumber::json> images, const plumber::json&) {
  using namespace std::chrono;
  const auto n = static_cast<double>(images.size());
  const double ms = 2.0 + (images.size() == 1 ? 1.0 : 0.7 * n);
  std::this_thread::sleep_for(duration<double, std::milli>(ms));
  std::vector<plumber::json> found;
  for (const auto& image : images) {
    plumber::json result = plumber::json::object();
    result["image"] = image;
    result["cat"] = true;
    found.push_back(std::move(result));
  }
  return found;
}

std::string graph_text(int batch_size) {
  return R"({"plumber": 1, "name": "cat_detector", "nodes": [
      {"id": "images", "coroutine": "input", "queue_size": 1024},
      {"id": "detect", "coroutine": "detect_cats", "procs": 2, "batch_size": )" +
         std::to_string(batch_size) + R"(, "batch_timeout_ms": 5},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "images", "to": "detect"}, {"from": "detect", "to": "out"}]})";
}

/// Runs `images` images through the graph; returns the seconds it took
/// (from the first image fed to the last result), or -1 on an error.
double run(const plumber::Registry& registry, int batch_size, int images) {
  const plumber::GraphSpec graph = plumber::parse_graph(graph_text(batch_size), registry);
  boost::asio::io_context io;
  plumber::Pipeline pipeline = plumber::Plumber(registry).build(graph, io.get_executor());
  int cats = 0;
  int failed = 0;
  pipeline.on_output([&](plumber::OutputRecord&& r) {
    if (r.kind == plumber::OutputRecord::Kind::value && r.value["cat"] == true) {
      ++cats;
    } else {
      ++failed;
      std::fprintf(stderr, "error: %s\n", r.error.c_str());
    }
  });
  pipeline.start();  // returns when both workers ran on_start
  const auto started = std::chrono::steady_clock::now();
  std::thread feeder([&] {
    for (int i = 0; i < images; ++i)
      pipeline.feed(i);
    pipeline.end_input();
  });
  io.run();
  feeder.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return failed == 0 && cats == images ? seconds : -1;
}

}  // namespace

int main(int argc, char** argv) {
  plumber::Registry registry = plumber::Registry::with_builtins();
  plumber::CoroutineOptions options;
  options.description = "Aqueduct's CatDetector: finds a cat in every image";
  options.worker_capable = true;  // a function of values: it may run in a worker
  registry.add_batch_function("detect_cats", detect_cats, std::move(options));
  // In a worker process (re-executed by the pool) this runs the worker.
  if (auto code = plumber::run_worker_if_requested(registry)) return *code;

  int images = 256;
  std::vector<int> batches{1, 4, 16, 32};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string option = argv[i];
    if (option == "--images") {
      images = std::atoi(argv[i + 1]);
    } else if (option == "--batches") {
      batches.clear();
      std::stringstream list(argv[i + 1]);
      for (std::string item; std::getline(list, item, ',');)
        batches.push_back(std::atoi(item.c_str()));
    } else {
      std::fprintf(stderr, "usage: %s [--images N] [--batches 1,4,16,32]\n", argv[0]);
      return 2;
    }
  }

  std::printf(
      "%d images, 2 worker processes, model: 2 ms a call + 1 ms an image "
      "(0.7 ms in a batch)\n\n",
      images);
  std::printf("%10s %10s %12s %9s\n", "batch_size", "seconds", "images/s", "speed-up");
  std::vector<double> rates;
  for (int batch : batches) {
    const double seconds = run(registry, batch, images);
    if (seconds < 0) return 1;
    rates.push_back(images / seconds);
    std::printf("%10d %10.3f %12.0f %8.2fx\n", batch, seconds, rates.back(),
                rates.back() / rates.front());
  }
  std::printf("\n");
  const double top = *std::max_element(rates.begin(), rates.end());
  for (std::size_t i = 0; i < batches.size(); ++i) {
    std::printf("batch %3d |%s %.0f/s\n", batches[i],
                std::string(static_cast<std::size_t>(50 * rates[i] / top), '#').c_str(), rates[i]);
  }
  return 0;
}

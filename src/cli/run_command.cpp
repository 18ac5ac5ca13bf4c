// `plumber run`: one graph, run to completion on an io_context.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include "cli/blob_output.hpp"
#include "cli/cli.hpp"
#include "cli/progress.hpp"
#include "json_parse.hpp"
#include "json_write.hpp"
#include "line_reader.hpp"
#include "log.hpp"
#include "plumber/all.hpp"

namespace plumber::cli {
namespace {

namespace asio = boost::asio;

/// Flushes stdout; false once a write to it has failed (disk full, closed
/// pipe), with the first errno kept in `error`.
bool flush_stdout(int& error) {
  if (std::fflush(stdout) == 0 && !std::ferror(stdout)) return true;
  if (error == 0) error = errno != 0 ? errno : EIO;
  return false;
}

json error_record(const OutputRecord& r) {
  json record = json::object();
  record["id"] = r.id;
  record["node"] = std::string(r.node);
  record["error"] = r.error;
  return record;
}

/// What the reader thread shares with main: it may outlive the run when it is
/// blocked reading a terminal.
struct InputReader {
  std::atomic<bool> finished{false};
  std::atomic<std::uint64_t> malformed{0};
  std::atomic<std::uint64_t> lines{0};  ///< read so far, for the progress line
  std::atomic<std::uint64_t> bytes{0};
  std::shared_ptr<ProgressLine> progress;
};

/// Bytes of the input when it is a regular file (--input, or stdin redirected
/// from one); 0 when unknown (a pipe, a terminal).
std::uint64_t input_size(int fd) {
  struct stat info {};
  return ::fstat(fd, &info) == 0 && S_ISREG(info.st_mode) ? static_cast<std::uint64_t>(info.st_size)
                                                          : 0;
}

/// Lines handed to the pipeline at once, at most: few enough that the batches
/// in flight (FeedQueue::kMaxBatches) stay small, enough that a hand-off (a
/// wake-up of the pipeline's thread at worst) costs nothing per line.
constexpr std::size_t kBatchLines = 1024;

/// The reader thread: reads `fd` in large blocks, parses each line here (in
/// parallel with the pipeline's thread), and feeds the values in batches. A
/// batch is handed over when full, or when the lines of one read() are used up:
/// a line typed on a terminal or trickling through a pipe is not held back.
void read_input(std::shared_ptr<InputReader> reader, int fd, std::string label,
                Pipeline* pipeline) {
  std::vector<json> batch;
  auto hand_over = [&] {
    if (batch.empty()) return;
    pipeline->feed_batch(std::move(batch));
    batch.clear();
    batch.reserve(kBatchLines);
  };
  auto report = [&](const std::string& where, const std::string& error) {
    json record = json::object();
    record["input"] = where;
    record["error"] = error;
    auto lock = reader->progress->before_write(stderr);
    detail::write_json_line(stderr, record);
    reader->malformed.fetch_add(1);
  };
  std::uint64_t number = 0;
  try {
    detail::LineReader lines(fd);
    batch.reserve(kBatchLines);
    for (bool more = true; more;) {
      try {
        more = lines.read_some([&](std::string_view line) {
          ++number;
          if (line.find_first_not_of(" \t\r") == std::string_view::npos) return;  // blank
          try {
            batch.push_back(detail::parse_json(line));
          } catch (const detail::JsonParseError& e) {
            report(label + ":" + std::to_string(number),
                   "malformed JSON: " + std::string(e.what()));
          }
          if (batch.size() == kBatchLines) hand_over();
        });
      } catch (const std::system_error& e) {
        if (e.code().category() != std::generic_category()) throw;  // not read() failing
        report(label, "cannot read the input: " + std::string(std::strerror(e.code().value())));
        more = false;
      }
      reader->lines.store(number, std::memory_order_relaxed);
      reader->bytes.store(lines.bytes_read(), std::memory_order_relaxed);
      hand_over();
    }
  } catch (const std::exception& e) {
    // The pipeline stopped taking input (end of the run, Ctrl-C).
    spdlog::debug("input reader stopped: {}", e.what());
  }
  if (fd != STDIN_FILENO) ::close(fd);
  pipeline->end_input();
  reader->finished = true;
}

/// One line per worker pool (nodes with `procs`): what went through the
/// workers, and where the time went (queued for a worker vs inside the step).
void print_worker_stats(const Pipeline& pipeline) {
  bool header = false;
  for (const auto& s : pipeline.stats()) {
    if (!s.workers) continue;
    const WorkerPoolStats& w = *s.workers;
    if (!header) {
      std::fprintf(stderr, "%-14s %5s %10s %9s %8s %10s %8s %10s %10s %12s %12s  %s\n", "workers",
                   "procs", "tasks", "in-flight", "batches", "mean-batch", "restarts", "queue-ms",
                   "worker-ms", "blob-copied", "blob-shared", "pids");
      header = true;
    }
    std::string pids;
    for (const auto& one : w.workers) {
      if (!pids.empty()) pids += ',';
      pids += std::to_string(one.pid);
    }
    std::fprintf(
        stderr, "%-14s %5zu %10llu %9llu %8llu %10.1f %8llu %10.1f %10.1f %12llu %12llu  %s\n",
        s.node.c_str(), w.procs, static_cast<unsigned long long>(w.tasks_done),
        static_cast<unsigned long long>(w.in_flight),
        static_cast<unsigned long long>(w.batches_done),
        w.batches_done ? static_cast<double>(w.tasks_done) / static_cast<double>(w.batches_done)
                       : 0.0,
        static_cast<unsigned long long>(w.restarts), static_cast<double>(w.queue_ns) / 1e6,
        static_cast<double>(w.worker_ns) / 1e6,
        static_cast<unsigned long long>(w.blob_bytes_copied),
        static_cast<unsigned long long>(w.blob_bytes_shared), pids.c_str());
  }
  // Auto-scaled pools: their bounds and every change of size.
  for (const auto& s : pipeline.stats()) {
    if (!s.workers || s.workers->procs_max == 0) continue;
    const WorkerPoolStats& w = *s.workers;
    std::string events;
    for (const auto& e : w.scale_events) {
      events += " " + std::to_string(e.from) + "->" + std::to_string(e.to) + "@" +
                std::to_string(e.at_ms) + "ms";
    }
    std::fprintf(stderr, "%-14s scaled %zu..%zu, now %zu: %llu up, %llu down;%s\n", s.node.c_str(),
                 w.procs_min, w.procs_max, w.procs, static_cast<unsigned long long>(w.scale_ups),
                 static_cast<unsigned long long>(w.scale_downs),
                 events.empty() ? " no change" : events.c_str());
  }
}

/// One line per remote node: what went through the broker, and the round trips.
void print_remote_stats(const Pipeline& pipeline) {
  bool header = false;
  for (const auto& s : pipeline.stats()) {
    if (!s.remote) continue;
    const RemoteStats& r = *s.remote;
    if (!header) {
      std::fprintf(stderr, "%-14s %10s %10s %9s %8s %8s %6s %9s %9s  %s\n", "remote", "sent",
                   "acked", "in-flight", "redeliv", "claimed", "dead", "dups", "rtt-ms", "workers");
      header = true;
    }
    std::uint64_t calls = 0;
    for (auto c : r.rtt_buckets)
      calls += c;
    std::string workers;
    for (const auto& w : r.workers)
      workers += (workers.empty() ? "" : ",") + w;
    std::fprintf(
        stderr, "%-14s %10llu %10llu %9llu %8llu %8llu %6llu %9llu %9.3f  %s\n", s.node.c_str(),
        static_cast<unsigned long long>(r.sent), static_cast<unsigned long long>(r.acked),
        static_cast<unsigned long long>(r.in_flight),
        static_cast<unsigned long long>(r.redelivered), static_cast<unsigned long long>(r.claimed),
        static_cast<unsigned long long>(r.dead_lettered),
        static_cast<unsigned long long>(r.duplicates),
        calls ? static_cast<double>(r.rtt_ns) / 1e6 / static_cast<double>(calls) : 0.0,
        workers.c_str());
  }
}

void print_stats(const Pipeline& pipeline, std::chrono::steady_clock::duration wall) {
  const double seconds = std::chrono::duration<double>(wall).count();
  const auto all = pipeline.stats();
  std::fprintf(stderr, "%-14s %-12s %10s %10s %7s %7s %7s %7s %8s %10s %9s %10s %10s\n", "node",
               "coroutine", "received", "emitted", "errors", "skipped", "expired", "retried",
               "batches", "busy-ms", "wait-ms", "in/s", "out/s");
  for (const auto& s : all) {
    std::fprintf(
        stderr,
        "%-14s %-12s %10llu %10llu %7llu %7llu %7llu %7llu %8llu %10.1f %9.3f %10.0f %10.0f\n",
        s.node.c_str(), s.coroutine.c_str(), static_cast<unsigned long long>(s.received),
        static_cast<unsigned long long>(s.emitted), static_cast<unsigned long long>(s.errors),
        static_cast<unsigned long long>(s.skipped), static_cast<unsigned long long>(s.expired),
        static_cast<unsigned long long>(s.retried), static_cast<unsigned long long>(s.batches),
        static_cast<double>(s.busy_ns) / 1e6,
        s.waited ? static_cast<double>(s.wait_ns) / 1e6 / static_cast<double>(s.waited) : 0.0,
        s.rate_in, s.rate_out);
  }
  // Batch sizes, for the nodes whose calls were not all of one message.
  for (const auto& s : all) {
    if (s.batches == s.batch_sizes[0]) continue;
    std::string sizes;
    for (std::size_t i = 0; i < s.batch_sizes.size(); ++i) {
      if (s.batch_sizes[i] == 0) continue;
      sizes +=
          " <=" + std::to_string(kBatchSizeBuckets[i]) + ":" + std::to_string(s.batch_sizes[i]);
    }
    std::fprintf(stderr, "batch sizes of %s (calls by messages in the call):%s\n", s.node.c_str(),
                 sizes.c_str());
  }
  print_worker_stats(pipeline);
  print_remote_stats(pipeline);
  const auto emitted = pipeline.emitted_messages();
  std::fprintf(stderr, "%llu messages in %.3f s (%.0f msg/s)\n",
               static_cast<unsigned long long>(emitted), seconds,
               seconds > 0 ? static_cast<double>(emitted) / seconds : 0.0);
}

}  // namespace

int run_graph(const RunOptions& options, const Registry& registry) {
  GraphSpec graph;
  try {
    graph = load_graph_file(options.graph, registry);
  } catch (const GraphError& e) {
    for (const auto& d : e.diagnostics())
      std::cerr << d.format(e.file()) << '\n';
    return kExitInvalid;
  }
  const bool has_input = graph.host_fed_input().has_value();
  if (!options.input.empty() && !has_input) {
    std::cerr << "plumber: " << options.graph
              << ": --input feeds the `input` source, and this graph has none\n";
    return kExitInvalid;
  }

  // Opened first: a path that cannot be written fails before the run, not after.
  std::ofstream trace_file;
  if (!options.trace.empty()) {
    trace_file.open(options.trace, std::ios::binary | std::ios::trunc);
    if (!trace_file) {
      std::cerr << "plumber: cannot write the trace to " << options.trace << ": "
                << std::strerror(errno) << '\n';
      return kExitInvalid;
    }
  }
  asio::io_context io(options.threads);
  Pipeline pipeline = Plumber(registry).build(
      graph, io.get_executor(),
      {.collect_timings = options.stats,
       .worker_start_timeout = std::chrono::milliseconds(options.start_timeout_ms),
       .trace = {.enabled = !options.trace.empty()}});

  // Output: stdout fully buffered, flushed by a timer so streams stay live.
  static char stdout_buffer[1 << 16];
  std::setvbuf(stdout, stdout_buffer, _IOFBF, sizeof stdout_buffer);
  std::atomic<std::uint64_t> failed{0};
  std::atomic<std::uint64_t> cancelled{0};
  int output_error = 0;                    // errno of the first failed write to stdout
  std::atomic<bool> output_failed{false};  // then the run is cancelled, quietly
  std::atomic<std::uint64_t> outputs{0};
  const bool show_progress = !options.no_progress && (options.progress || ::isatty(STDERR_FILENO));
  auto progress = std::make_shared<ProgressLine>(show_progress);
  BlobOutput blob_output(options.blobs_dir);
  pipeline.on_output([&, records = options.records](OutputRecord&& r) {
    if (output_failed.load(std::memory_order_relaxed)) return;
    outputs.fetch_add(1, std::memory_order_relaxed);
    auto lock = progress->before_write(r.kind == OutputRecord::Kind::value ? stdout : stderr);
    switch (r.kind) {
      case OutputRecord::Kind::value:
        if (records) {
          json record = json::object();
          record["id"] = r.id;
          record["node"] = std::string(r.node);
          record["value"] = std::move(r.value);
          if (!r.blobs.empty()) record["blobs"] = blob_output.describe(r.id, r.node, r.blobs);
          detail::write_json_line(stdout, record);
        } else if (!r.blobs.empty()) {
          // A value with binary data: where its bytes went (or their digest).
          json line = json::object();
          line["value"] = std::move(r.value);
          line["blobs"] = blob_output.describe(r.id, r.node, r.blobs);
          detail::write_json_line(stdout, line);
        } else {
          detail::write_json_line(stdout, r.value);
        }
        break;
      case OutputRecord::Kind::error:
        failed.fetch_add(1, std::memory_order_relaxed);
        detail::write_json_line(stderr, error_record(r));
        break;
      case OutputRecord::Kind::cancelled:
        cancelled.fetch_add(1, std::memory_order_relaxed);
        detail::write_json_line(stderr, error_record(r));
        break;
    }
  });

  auto reader = std::make_shared<InputReader>();
  reader->progress = progress;
  int input_fd = STDIN_FILENO;
  if (has_input && !options.input.empty()) {
    input_fd = ::open(options.input.c_str(), O_RDONLY | O_CLOEXEC);
    if (input_fd < 0) {
      std::cerr << "plumber: cannot read " << options.input << ": " << std::strerror(errno) << '\n';
      return kExitInvalid;
    }
  }
  const std::uint64_t input_bytes = has_input ? input_size(input_fd) : 0;
  asio::steady_timer ticker(io);
  asio::signal_set signals(io, SIGINT, SIGTERM);
  bool interrupted = false;

  pipeline.on_done([&] {
    ticker.cancel();
    signals.cancel();
  });
  // "7/11 messages (64%)" when the sources know their total; for the `input`
  // source, what was read: "1200 lines read (56.0 KiB of 120.0 KiB, 47%), 1180 outputs".
  auto progress_text = [&] {
    char text[160];
    if (const auto total = pipeline.expected_messages()) {
      const auto done = pipeline.emitted_messages();
      std::snprintf(
          text, sizeof text, "%llu/%llu messages (%.0f%%)", static_cast<unsigned long long>(done),
          static_cast<unsigned long long>(*total),
          *total ? 100.0 * static_cast<double>(done) / static_cast<double>(*total) : 100.0);
      return std::string(text);
    }
    const auto out = static_cast<unsigned long long>(outputs.load());
    if (!has_input) {
      std::snprintf(text, sizeof text, "%llu messages, %llu outputs",
                    static_cast<unsigned long long>(pipeline.emitted_messages()), out);
      return std::string(text);
    }
    // A last line without '\n' was counted with one.
    auto bytes = static_cast<double>(reader->bytes.load());
    if (input_bytes > 0) bytes = std::min(bytes, static_cast<double>(input_bytes));
    std::string read = human_bytes(bytes);
    if (input_bytes > 0) {
      const double size = static_cast<double>(input_bytes);
      std::snprintf(text, sizeof text, " of %s, %.0f%%", human_bytes(size).c_str(),
                    std::min(100.0, 100.0 * bytes / size));
      read += text;
    }
    std::snprintf(text, sizeof text, "%llu lines read (%s), %llu outputs",
                  static_cast<unsigned long long>(reader->lines.load()), read.c_str(), out);
    return std::string(text);
  };
  std::function<void()> tick = [&] {
    if (!flush_stdout(output_error) && !output_failed.exchange(true)) {
      pipeline.stop(/*graceful=*/false);  // nobody will read what is computed
    }
    if (pipeline.done()) return;  // a tick queued before on_done must not re-arm
    if (show_progress) progress->draw(progress_text());
    ticker.expires_after(std::chrono::milliseconds(100));
    ticker.async_wait([&](boost::system::error_code ec) {
      if (!ec) tick();
    });
  };
  std::function<void()> on_signal = [&] {
    signals.async_wait([&](boost::system::error_code ec, int) {
      if (ec || pipeline.done()) return;
      // First signal: drain what is in flight. Second: cancel it.
      pipeline.stop(/*graceful=*/!interrupted);
      interrupted = true;
      on_signal();
    });
  };
  on_signal();

  try {
    pipeline.start();
  } catch (const std::exception& e) {
    std::cerr << "plumber: " << options.graph << ": " << e.what() << '\n';
    return kExitRuntimeError;
  }
  tick();
  const detail::LogFields run_fields{.run = graph.name};
  detail::log(spdlog::level::info, run_fields, "run started: {} ({} nodes)", options.graph,
              graph.nodes.size());

  if (has_input) {
    std::thread(read_input, reader, input_fd, options.input.empty() ? "stdin" : options.input,
                &pipeline)
        .detach();
  }

  const auto started = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int i = 1; i < options.threads; ++i)
    threads.emplace_back([&] { io.run(); });
  io.run();
  for (auto& t : threads)
    t.join();
  const auto wall = std::chrono::steady_clock::now() - started;

  if (!flush_stdout(output_error) || output_failed) {
    std::fprintf(stderr, "plumber: cannot write the output to stdout: %s\n",
                 std::strerror(output_error));
    std::fflush(stderr);
    std::_Exit(kExitOutputFailed);  // exit() would flush stdout again, and fail again
  }
  progress->finish(progress_text());  // the final count, however short the run
  if (blob_output.unwritten() > 0) {
    std::fprintf(stderr,
                 "plumber: %llu blobs of outputs were not written to files (their sizes and "
                 "SHA-256 are in the output lines)%s\n",
                 static_cast<unsigned long long>(blob_output.unwritten()),
                 options.blobs_dir.empty() ? "; --blobs-dir DIR writes them" : "");
  }
  if (options.stats) print_stats(pipeline, wall);
  if (trace_file.is_open()) {
    pipeline.write_trace(trace_file);
    trace_file.close();
    if (!trace_file) std::cerr << "plumber: cannot write the trace to " << options.trace << '\n';
  }

  int status = kExitOk;
  if (failed.load() + reader->malformed.load() > 0) status = kExitFailed;
  if (interrupted || cancelled.load() > 0) status = kExitInterrupted;
  // Info even when messages failed: those are reported as records, and the
  // exit status says so; stderr carries nothing else by default.
  detail::log(spdlog::level::info, run_fields,
              "run {}: {} messages in {:.3f} s, {} failed, {} cancelled, {} malformed input lines",
              interrupted ? "interrupted" : "finished", pipeline.emitted_messages(),
              std::chrono::duration<double>(wall).count(), failed.load(), cancelled.load(),
              reader->malformed.load());
  if (has_input && !reader->finished) {
    // The reader is blocked on a terminal that will not close: leave without it.
    std::fflush(nullptr);
    std::_Exit(status);
  }
  return status;
}

}  // namespace plumber::cli

#include "cli/cli.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "build_info.hpp"
#include "cli/suggest.hpp"
#include "log.hpp"
#include "plumber/all.hpp"
#include "server/client.hpp"

namespace plumber::cli {
namespace {

/// `status`, unless what was written to stdout did not all get there (disk
/// full, closed pipe): then a message on stderr and kExitOutputFailed.
int check_stdout(int status) {
  std::cout.flush();
  if (std::fflush(stdout) == 0 && !std::ferror(stdout) && std::cout) return status;
  const int error = errno != 0 ? errno : EIO;
  std::fprintf(stderr, "plumber: cannot write the output to stdout: %s\n", std::strerror(error));
  return kExitOutputFailed;
}

void print_graph_error(const GraphError& e) {
  for (const auto& d : e.diagnostics())
    std::cerr << d.format(e.file()) << '\n';
}

int validate(const std::vector<std::string>& files, const Registry& registry) {
  int status = kExitOk;
  for (const auto& file : files) {
    try {
      const GraphSpec graph = load_graph_file(file, registry);
      std::cout << file << ": ok (" << graph.nodes.size() << " nodes, " << graph.edges.size()
                << " edges)\n";
    } catch (const GraphError& e) {
      print_graph_error(e);
      status = kExitInvalid;
    }
  }
  return status;
}

int dot(const std::string& file, const Registry& registry) {
  try {
    write_dot(std::cout, load_graph_file(file, registry));
    return kExitOk;
  } catch (const GraphError& e) {
    print_graph_error(e);
    return kExitInvalid;
  }
}

json params_json(const std::vector<ParamSpec>& params) {
  json all = json::array();
  for (const auto& p : params) {
    json one = json::object();
    one["name"] = p.name;
    one["type"] = std::string(to_string(p.type));
    one["required"] = p.required;
    if (!p.default_value.is_null()) one["default"] = p.default_value;
    one["description"] = p.description;
    all.push_back(std::move(one));
  }
  return all;
}

/// Pads a name to the width of `plumber list`'s first column.
std::string column(const std::string& name) {
  return name + std::string(name.size() < 12 ? 12 - name.size() : 1, ' ');
}

/// What a coroutine accepts and emits, as `plumber list` shows it ("" when undeclared).
std::string value_types(const CoroutineInfo& info) {
  const std::string in = info.kind == CoroutineKind::source ? "" : info.accepts.to_string();
  const std::string out = info.kind == CoroutineKind::sink ? ""
                          : info.emits_input_type          ? "same"
                                                           : info.emits.to_string();
  if ((in.empty() || in == "any") && (out.empty() || out == "any")) return "";
  return (in.empty() ? "" : in + " ") + "->" + (out.empty() ? "" : " " + out);
}

int list(bool as_json, const Registry& registry) {
  if (as_json) {
    json coroutines = json::array();
    for (const CoroutineInfo* info : registry.coroutines()) {
      json one = json::object();
      one["name"] = info->name;
      one["kind"] = std::string(to_string(info->kind));
      one["description"] = info->description;
      one["params"] = params_json(info->params);
      one["worker_capable"] = info->worker_capable;
      one["accepts"] = info->accepts.to_string();
      one["emits"] = info->emits_input_type ? "same as input" : info->emits.to_string();
      coroutines.push_back(std::move(one));
    }
    json predicates = json::array();
    for (const PredicateInfo* info : registry.predicates()) {
      json one = json::object();
      one["name"] = info->name;
      one["description"] = info->description;
      predicates.push_back(std::move(one));
    }
    json all = json::object();
    all["coroutines"] = std::move(coroutines);
    all["predicates"] = std::move(predicates);
    std::cout << all.dump(2) << '\n';
    return kExitOk;
  }
  std::cout << "coroutines:\n";
  for (const CoroutineInfo* info : registry.coroutines()) {
    std::string params;
    for (const auto& p : info->params) {
      params += (params.empty() ? "" : ", ") + p.name + ": " + std::string(to_string(p.type));
      if (!p.required && !p.default_value.is_null()) params += " = " + p.default_value.dump();
    }
    const std::string types = value_types(*info);
    std::cout << "  " << column(info->name) << to_string(info->kind)
              << (info->worker_capable ? ", worker" : "") << (types.empty() ? "" : ", " + types)
              << "  " << info->description;
    if (!params.empty()) std::cout << "  (" << params << ")";
    std::cout << '\n';
  }
  std::cout << "predicates (for \"when\"):\n";
  for (const PredicateInfo* info : registry.predicates()) {
    std::cout << "  " << column(info->name) << info->description << '\n';
  }
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  detail::configure_logging(detail::LogFormat::text, spdlog::level::warn);

  CLI::App app{"plumber: async processing pipelines described as JSON graphs"};
  app.require_subcommand(1);
  // --log-level and --log-format also after the command: `plumber serve --log-format json`.
  app.fallthrough();
  app.set_version_flag("--version", detail::version_text());
  std::string log_level;  // default: info for serve, warn for the others
  app.add_option("--log-level", log_level,
                 "trace, debug, info, warn, error, off (default: info for serve, else warn)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  std::string log_format = "text";
  app.add_option("--log-format", log_format,
                 "text (time, level, message) or json (one object a line) on stderr")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();

  std::vector<std::string> plugins;
  auto add_plugin_option = [&](CLI::App* command) {
    command->add_option("--plugin", plugins, "load coroutines from this shared library")
        ->check(CLI::ExistingFile);
  };

  RunOptions run;
  auto* run_command = app.add_subcommand("run", "run a graph to completion");
  run_command->add_option("graph", run.graph, "graph file")->required();
  run_command->add_option("--input", run.input, "JSON lines for the `input` source (default stdin)")
      ->check(CLI::ExistingFile);
  run_command->add_option("--threads", run.threads, "threads running the event loop")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  run_command->add_flag("--records", run.records, "print {\"id\",\"node\",\"value\"} records");
  run_command->add_flag("--stats", run.stats, "print per-node counts and timings at exit");
  run_command
      ->add_option("--blobs-dir", run.blobs_dir,
                   "write the blobs (binary data) of outputs to files in DIR and print their paths")
      ->check(CLI::ExistingDirectory);
  auto* progress_flag = run_command->add_flag(
      "--progress", run.progress, "progress line on stderr (default: when stderr is a terminal)");
  run_command->add_flag("--no-progress", run.no_progress, "no progress line")
      ->excludes(progress_flag);
  run_command->add_option("--trace", run.trace,
                          "write a Chrome trace of the run to FILE (Perfetto, chrome://tracing)");
  run_command
      ->add_option("--start-timeout-ms", run.start_timeout_ms,
                   "how long start waits for worker processes and remote workers")
      ->check(CLI::Range(1, 3'600'000))
      ->capture_default_str();
  add_plugin_option(run_command);

  RemoteWorkerOptions worker;
  auto* worker_command =
      app.add_subcommand("worker", "run a remote node's step for hosts, through its broker");
  worker_command->add_option("graph", worker.graph, "graph file (the host's)")
      ->required()
      ->check(CLI::ExistingFile);
  worker_command->add_option("--node", worker.node, "id of the node with \"remote\"")->required();
  worker_command->add_option("--broker", worker.broker,
                             "redis://[:password@]host:port[/db] (default: the graph's, or "
                             "PLUMBER_BROKER)");
  worker_command
      ->add_option("--procs", worker.procs,
                   "run the step in N worker processes fed by this consumer (default: in "
                   "this process)")
      ->check(CLI::Range(1, 256));
  std::int64_t worker_start_timeout_ms = 10'000;
  worker_command
      ->add_option("--start-timeout-ms", worker_start_timeout_ms,
                   "how long the worker processes of --procs may take to start")
      ->check(CLI::Range(1, 3'600'000))
      ->capture_default_str();
  worker_command->add_flag("--stats", worker.stats,
                           "print the consumer's and its worker processes' counters at the end");
  add_plugin_option(worker_command);

  std::vector<std::string> validate_files;
  auto* validate_command = app.add_subcommand("validate", "load and check graph files");
  validate_command->add_option("graphs", validate_files, "graph files")->required();
  add_plugin_option(validate_command);

  std::string dot_file;
  auto* dot_command = app.add_subcommand("dot", "print a graph in Graphviz DOT");
  dot_command->add_option("graph", dot_file, "graph file")->required();
  add_plugin_option(dot_command);

  bool list_json = false;
  auto* list_command = app.add_subcommand("list", "list the registered coroutines");
  list_command->add_flag("--json", list_json, "as JSON");
  add_plugin_option(list_command);

  ServerOptions serve_options;
  int serve_threads = 1;
  std::int64_t grace_ms = serve_options.grace.count();
  std::int64_t idle_s = serve_options.idle_timeout.count();
  std::int64_t process_timeout_ms = serve_options.process_timeout.count();
  std::int64_t max_run_ms = 0;
  std::int64_t max_step_ms = serve_options.max_step.count();
  auto* serve_command = app.add_subcommand("serve", "the socket server: WebSocket, HTTP, web page");
  serve_command->add_option("--bind", serve_options.bind, "address to listen on")
      ->capture_default_str();
  serve_command->add_option("--port", serve_options.port, "port; 0 picks a free one and prints it")
      ->capture_default_str();
  serve_command
      ->add_option("--graphs", serve_options.graphs_dir,
                   "directory of graph files that clients may name and /v1 serves")
      ->check(CLI::ExistingDirectory);
  serve_command->add_option("--token", serve_options.token,
                            "require Authorization: Bearer TOKEN (or ?token=) but on /healthz");
  serve_command->add_flag("--allow-edits", serve_options.allow_edits,
                          "let PUT and DELETE /v1/graphs/NAME write the --graphs directory "
                          "(needs --token when bound beyond loopback)");
  serve_command->add_flag("!--no-watch", serve_options.watch_graphs,
                          "do not watch --graphs with inotify (SIGHUP still reloads)");
  serve_command
      ->add_option("--allow-files", serve_options.allow_files,
                   "let lines/jsonl sources read files under this directory")
      ->check(CLI::ExistingDirectory);
  serve_command->add_option("--threads", serve_threads, "threads running the event loop")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  serve_command
      ->add_option("--max-frame", serve_options.max_frame,
                   "largest WebSocket message or HTTP body, in bytes")
      ->check(CLI::Range(std::size_t{1024}, std::size_t{1} << 30))
      ->capture_default_str();
  serve_command
      ->add_option("--max-upload-bytes", serve_options.max_upload_bytes,
                   "largest binary body of POST /v1/graphs/NAME/process (a non-JSON "
                   "Content-Type), read into shared memory, in bytes")
      ->check(CLI::Range(std::size_t{0}, std::size_t{1} << 40))
      ->capture_default_str();
  serve_command->add_option("--max-nodes", serve_options.max_nodes, "nodes of a submitted graph")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  serve_command
      ->add_option("--max-threads", serve_options.max_threads,
                   "threads + procs a submitted graph may ask for")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  serve_command
      ->add_option("--max-connections", serve_options.max_connections, "open TCP connections")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  serve_command->add_option("--max-runs", serve_options.max_runs, "runs at once per connection")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  serve_command
      ->add_option("--max-send-queue", serve_options.max_send_queue,
                   "bytes queued for one WebSocket client before it is closed")
      ->check(CLI::Range(std::size_t{4096}, std::size_t{1} << 34))
      ->capture_default_str();
  serve_command->add_option("--grace-ms", grace_ms, "shutdown: how long runs may finish")
      ->check(CLI::Range(0, 3'600'000))
      ->capture_default_str();
  serve_command
      ->add_option("--idle-timeout", idle_s,
                   "seconds an HTTP keep-alive or unanswered WebSocket may idle")
      ->check(CLI::Range(1, 86400))
      ->capture_default_str();
  serve_command
      ->add_option("--process-timeout-ms", process_timeout_ms,
                   "default timeout of POST /v1/graphs/NAME/process")
      ->check(CLI::Range(1, 3'600'000))
      ->capture_default_str();
  serve_command
      ->add_option("--pipeline-threads", serve_options.pipeline_threads,
                   "threads running the served graphs (apart from the connections')")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  serve_command
      ->add_option("--max-run-ms", max_run_ms,
                   "a WebSocket run still going after this long is cancelled (0: no limit)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{31'536'000'000}))
      ->capture_default_str();
  serve_command
      ->add_option("--max-step-ms", max_step_ms,
                   "a WebSocket run with one step invocation running longer than this is "
                   "cancelled (0: no limit)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{31'536'000'000}))
      ->capture_default_str();
  serve_command
      ->add_option("--max-total-runs", serve_options.max_total_runs,
                   "runs at once, all connections together")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  serve_command
      ->add_option("--max-total-procs", serve_options.max_total_procs,
                   "worker processes of all runs together")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  serve_command
      ->add_option("--max-total-send-queue", serve_options.max_total_send_queue,
                   "bytes queued for all WebSocket clients together; past it the client with "
                   "the most is closed")
      ->check(CLI::Range(std::size_t{4096}, std::size_t{1} << 40))
      ->capture_default_str();
  serve_command
      ->add_option("--socket-send-buffer", serve_options.socket_send_buffer,
                   "SO_SNDBUF of each connection in bytes (0: the kernel's, a few MB for a "
                   "client that does not read)")
      ->check(CLI::Range(std::size_t{0}, std::size_t{1} << 30))
      ->capture_default_str();
  add_plugin_option(serve_command);

  server::SubmitOptions submit_options;
  auto* submit_command =
      app.add_subcommand("submit", "run a graph on a plumber server, printing its outputs");
  submit_command->add_option("url", submit_options.url, "ws://HOST:PORT")->required();
  submit_command
      ->add_option("graph", submit_options.graph,
                   "graph file (sent to the server), or the name of a server's graph")
      ->required();
  submit_command
      ->add_option("--input", submit_options.input,
                   "JSON lines for the `input` source (default stdin)")
      ->check(CLI::ExistingFile);
  submit_command->add_option("--token", submit_options.token, "the server's --token");
  submit_command->add_flag("--records", submit_options.records,
                           "print {\"id\",\"node\",\"value\"} records");
  submit_command->add_flag("--stats", submit_options.stats, "print per-node counts at the end");
  submit_command->add_option("--trace", submit_options.trace,
                             "write the run's Chrome trace to FILE (Perfetto, chrome://tracing)");
  add_plugin_option(submit_command);

  if (auto typo = find_typo(app, argc, argv)) {
    std::cerr << "plumber: " << *typo << "\nRun with --help for more information.\n";
    return kExitInvalid;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? kExitOk : kExitInvalid;
  }
  if (log_level.empty()) log_level = *serve_command ? "info" : "warn";
  detail::configure_logging(
      log_format == "json" ? detail::LogFormat::json : detail::LogFormat::text,
      spdlog::level::from_str(log_level));

  Registry registry = Registry::with_builtins();
  try {
    for (const auto& plugin : plugins)
      load_plugin(plugin, registry);
  } catch (const UsageError& e) {
    std::cerr << "plumber: " << e.what() << '\n';
    return kExitInvalid;
  }
  // A worker process of a `procs` node: this program, re-executed.
  if (auto code = run_worker_if_requested(registry)) return *code;

  if (*run_command) return run_graph(run, registry);
  if (*worker_command) {
    worker.start_timeout = std::chrono::milliseconds(worker_start_timeout_ms);
    return run_remote_worker(worker, registry);
  }
  if (*serve_command) {
    serve_options.grace = std::chrono::milliseconds(grace_ms);
    serve_options.idle_timeout = std::chrono::seconds(idle_s);
    serve_options.process_timeout = std::chrono::milliseconds(process_timeout_ms);
    serve_options.max_run = std::chrono::milliseconds(max_run_ms);
    serve_options.max_step = std::chrono::milliseconds(max_step_ms);
    return serve(serve_options, serve_threads, registry);
  }
  if (*submit_command) {
    // With --plugin, a graph file is checked here, against the built-ins and
    // the plugins, before it is sent (give the plugins the server loads).
    if (!plugins.empty() && std::filesystem::is_regular_file(submit_options.graph)) {
      try {
        load_graph_file(submit_options.graph, registry);
      } catch (const GraphError& e) {
        print_graph_error(e);
        return kExitInvalid;
      }
    }
    return check_stdout(server::submit(submit_options));
  }
  if (*validate_command) return check_stdout(validate(validate_files, registry));
  if (*dot_command) return check_stdout(dot(dot_file, registry));
  return check_stdout(list(list_json, registry));
}

}  // namespace plumber::cli

// End-to-end tests of the command line: each runs the real `plumber` binary
// (plumber::test::paths::exe) and checks its stdout, stderr and exit status.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "process.hpp"
#include "test_paths.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
extern char** environ;
using nlohmann::json;
using plumber::test::ProcessResult;
using plumber::test::split_lines;

namespace {

const std::string kSource = plumber::test::paths::source_dir;
const std::string kGraphs = kSource + "/graphs";
const std::string kData = kSource + "/tests/data";

ProcessResult plumber_cli(std::vector<std::string> args,
                          const std::string& stdin_path = "/dev/null") {
  args.insert(args.begin(), plumber::test::paths::exe);
  return plumber::test::run_process(args, stdin_path);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in, "cannot read " << path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<std::string> sorted_lines(const std::string& text) {
  auto lines = split_lines(text);
  std::sort(lines.begin(), lines.end());
  return lines;
}

/// Every example graph, sorted by name.
std::vector<fs::path> example_graphs() {
  std::vector<fs::path> graphs;
  for (const auto& entry : fs::directory_iterator(kGraphs)) {
    if (entry.path().extension() == ".json") graphs.push_back(entry.path());
  }
  std::sort(graphs.begin(), graphs.end());
  return graphs;
}

/// The lines of stderr, each parsed as a JSON object.
std::vector<json> json_lines(const std::string& text) {
  std::vector<json> records;
  for (const auto& line : split_lines(text)) {
    INFO("line: " << line);
    json record;
    REQUIRE_NOTHROW(record = json::parse(line));
    REQUIRE(record.is_object());
    records.push_back(std::move(record));
  }
  return records;
}

/// Runs every example graph with `extra` arguments and checks it against its .expected file.
void check_examples(const std::vector<std::string>& extra) {
  const auto graphs = example_graphs();
  REQUIRE(graphs.size() >= 5);
  for (const fs::path& graph : graphs) {
    const std::string name = graph.stem().string();
    CAPTURE(name);
    fs::path input = graph;
    input.replace_extension(".input");
    fs::path expected = graph;
    expected.replace_extension(".expected");
    REQUIRE(fs::exists(expected));

    std::vector<std::string> args{"run", graph.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    const ProcessResult result =
        plumber_cli(args, fs::exists(input) ? input.string() : "/dev/null");
    INFO("stderr: " << result.err);
    // Merge order may vary: compare as sorted lines.
    CHECK(sorted_lines(result.out) == sorted_lines(read_file(expected.string())));
    if (name == "upper_input") {
      // 42 is not a string: one error record on stderr, and exit 3.
      CHECK(result.exit_code == 3);
      const auto errors = json_lines(result.err);
      REQUIRE(errors.size() == 1);
      CHECK(errors[0]["node"] == "up");
      CHECK(errors[0]["error"] == "upper takes a string, not number");
      CHECK(errors[0]["id"].is_number_unsigned());
    } else {
      CHECK(result.exit_code == 0);
      CHECK(result.err.empty());
    }
  }
}

}  // namespace

// --- run ----------------------------------------------------------------------------

TEST_CASE("Cli.RunExamples") {
  check_examples({});
}

TEST_CASE("Cli.RunExamplesOnTwoThreads") {
  check_examples({"--threads", "2"});
}

TEST_CASE("Cli.RunInputFromFile") {
  const ProcessResult result = plumber_cli(
      {"run", kGraphs + "/upper_input.json", "--input", kGraphs + "/upper_input.input"});
  CHECK(result.exit_code == 3);
  CHECK(sorted_lines(result.out) == sorted_lines(read_file(kGraphs + "/upper_input.expected")));
  CHECK(json_lines(result.err).size() == 1);
}

TEST_CASE("Cli.RunRecords") {
  const ProcessResult result = plumber_cli({"run", "--records", kGraphs + "/strings.json"});
  REQUIRE(result.exit_code == 0);
  const auto records = json_lines(result.out);
  std::vector<std::string> values;
  std::set<std::uint64_t> ids;
  for (const json& record : records) {
    INFO(record.dump());
    std::vector<std::string> keys;
    for (const auto& item : record.items())
      keys.push_back(item.key());
    std::sort(keys.begin(), keys.end());
    CHECK(keys == std::vector<std::string>{"id", "node", "value"});
    CHECK(record["node"] == "out");
    REQUIRE(record["id"].is_number_unsigned());
    ids.insert(record["id"].get<std::uint64_t>());
    values.push_back(record["value"].dump());
  }
  CHECK(ids.size() == records.size());
  std::sort(values.begin(), values.end());
  CHECK(values == sorted_lines(read_file(kGraphs + "/strings.expected")));
}

TEST_CASE("Cli.RunStats") {
  const ProcessResult result = plumber_cli({"run", "--stats", kGraphs + "/fib.json"});
  REQUIRE(result.exit_code == 0);
  CHECK(sorted_lines(result.out) == sorted_lines(read_file(kGraphs + "/fib.expected")));
  const auto lines = split_lines(result.err);
  INFO(result.err);
  REQUIRE(lines.size() == 5);  // header, three nodes, summary
  std::istringstream header(lines[0]);
  std::vector<std::string> columns;
  for (std::string word; header >> word;)
    columns.push_back(word);
  CHECK(columns == std::vector<std::string>{"node", "coroutine", "received", "emitted", "errors",
                                            "skipped", "expired", "retried", "batches", "busy-ms",
                                            "wait-ms", "in/s", "out/s"});
  std::map<std::string, std::vector<std::string>> rows;
  for (std::size_t i = 1; i <= 3; ++i) {
    std::istringstream row(lines[i]);
    std::vector<std::string> cells;
    for (std::string word; row >> word;)
      cells.push_back(word);
    REQUIRE(cells.size() == 13);
    rows[cells[0]] = cells;
  }
  REQUIRE(rows.size() == 3);
  CHECK(rows["n"][1] == "range");
  CHECK(rows["n"][3] == "11");  // emitted
  CHECK(rows["fib"][1] == "fib");
  CHECK(rows["fib"][2] == "11");          // received
  CHECK(rows["fib"][3] == "11");          // emitted
  CHECK(rows["fib"][4] == "0");           // errors
  CHECK(rows["fib"][8] == "11");          // batches
  CHECK(std::stod(rows["fib"][11]) > 0);  // in/s: over the whole run, read once at the end
  CHECK(rows["out"][2] == "11");
  CHECK(lines[4].starts_with("11 messages in "));
}

TEST_CASE("Cli.RunProgress") {
  const ProcessResult result = plumber_cli({"run", "--progress", kGraphs + "/fib.json"});
  REQUIRE(result.exit_code == 0);
  CHECK(sorted_lines(result.out) == sorted_lines(read_file(kGraphs + "/fib.expected")));
  INFO(result.err);
  CHECK(result.err.starts_with("\r"));
  CHECK(result.err.find("/11 messages (") != std::string::npos);
  CHECK(result.err.ends_with("\n"));
}

// The progress line is drawn once more at the end: a short run does not leave
// "0/11 messages (0%)" behind.
TEST_CASE("Cli.RunProgressEndsAtTotal") {
  const ProcessResult result = plumber_cli({"run", "--progress", kGraphs + "/fib.json"});
  REQUIRE(result.exit_code == 0);
  INFO(result.err);
  CHECK(result.err.ends_with("11/11 messages (100%)\n"));
}

TEST_CASE("Cli.MalformedInputLines") {
  SUBCASE("on stdin") {
    const ProcessResult result =
        plumber_cli({"run", kGraphs + "/upper_input.json"}, kData + "/mixed.input");
    CHECK(result.exit_code == 3);
    CHECK(sorted_lines(result.out) ==
          std::vector<std::string>{"\"ALPHA\"", "\"BETA\"", "\"GAMMA\""});
    const auto errors = json_lines(result.err);
    REQUIRE(errors.size() == 1);
    CHECK(errors[0]["input"] == "stdin:2");
    CHECK(errors[0]["error"].get<std::string>().starts_with(
        "malformed JSON: parse error at line 1, column "));
  }
  SUBCASE("from --input") {
    const std::string input = kData + "/mixed.input";
    const ProcessResult result =
        plumber_cli({"run", kGraphs + "/upper_input.json", "--input", input});
    CHECK(result.exit_code == 3);
    CHECK(sorted_lines(result.out) ==
          std::vector<std::string>{"\"ALPHA\"", "\"BETA\"", "\"GAMMA\""});
    const auto errors = json_lines(result.err);
    REQUIRE(errors.size() == 1);
    CHECK(errors[0]["input"] == input + ":2");
  }
}

TEST_CASE("Cli.RunLinesFileToPrint") {
  // `lines` reads a regular file on the event loop; `print` writes each value itself.
  const fs::path dir = fs::temp_directory_path() / ("plumber_cli_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string graph = (dir / "lines_file.json").string();
  {
    json document = json::parse(read_file(kData + "/lines_stdin.json"));
    document["nodes"][0]["params"] = json{{"path", kData + "/mixed.input"}};
    std::ofstream out(graph);
    out << document.dump(2);
  }
  const ProcessResult result = plumber_cli({"run", graph});
  fs::remove_all(dir);
  CHECK(result.exit_code == 0);
  CHECK(result.err.empty());
  CHECK(split_lines(result.out) == std::vector<std::string>{R"("\"ALPHA\"")", R"("{OOPS")",
                                                            R"("\"BETA\"")", R"("")",
                                                            R"("\"GAMMA\"")"});
}

// Under ThreadSanitizer this once ended with "heap-use-after-free" in
// channel_service::base_destroy (exit 66): the stdin reader thread destroyed its
// channel after the io_context (see Pipeline.BlockingReaderOutlivesIoContext).
TEST_CASE("Cli.RunLinesFromStdinToPrint") {
  // `lines` reads stdin off the event loop; `print` writes each value itself.
  const ProcessResult result =
      plumber_cli({"run", kData + "/lines_stdin.json"}, kData + "/mixed.input");
  CHECK(result.exit_code == 0);
  CHECK(result.err.empty());
  CHECK(split_lines(result.out) == std::vector<std::string>{R"("\"ALPHA\"")", R"("{OOPS")",
                                                            R"("\"BETA\"")", R"("")",
                                                            R"("\"GAMMA\"")"});
}

TEST_CASE("Cli.RunEmptyInput") {
  const ProcessResult result =
      plumber_cli({"run", kGraphs + "/upper_input.json"});  // stdin: /dev/null
  CHECK(result.exit_code == 0);
  CHECK(result.out.empty());
  CHECK(result.err.empty());
}

TEST_CASE("Cli.RunInvalidGraph") {
  const std::string file = kData + "/bad_unknown_coroutine.json";
  const ProcessResult result = plumber_cli({"run", file});
  CHECK(result.exit_code == 2);
  CHECK(result.out.empty());
  CHECK(
      split_lines(result.err) ==
      std::vector<std::string>{
          file + ": /nodes/1/coroutine: unknown coroutine \"revers\" (did you mean \"reverse\"?)"});
}

TEST_CASE("Cli.MissingGraphFile") {
  const std::string file = kData + "/no_such_graph.json";
  const ProcessResult result = plumber_cli({"run", file});
  CHECK(result.exit_code == 2);
  CHECK(result.out.empty());
  CHECK(split_lines(result.err) ==
        std::vector<std::string>{file + ": /: cannot open: No such file or directory"});
  CHECK(plumber_cli({"validate", file}).exit_code == 2);
  CHECK(plumber_cli({"dot", file}).exit_code == 2);
}

TEST_CASE("Cli.RunInputWithoutInputNode") {
  const ProcessResult result =
      plumber_cli({"run", kGraphs + "/fib.json", "--input", kGraphs + "/upper_input.input"});
  CHECK(result.exit_code == 2);
  CHECK(result.out.empty());
  CHECK(result.err == "plumber: " + kGraphs +
                          "/fib.json: --input feeds the `input` source, and this graph has none\n");
}

TEST_CASE("Cli.RunStartFailure") {
  // A file the graph reads is missing: the run cannot start (exit 1), naming the node and file.
  const std::string file = kData + "/missing_source_file.json";
  const ProcessResult result = plumber_cli({"run", file});
  CHECK(result.exit_code == 1);
  CHECK(result.out.empty());
  CHECK(result.err ==
        "plumber: " + file +
            ": node \"src\": on_start failed: cannot open /nonexistent/plumber-test/input.txt: No "
            "such file or directory\n");
}

// --- validate, dot, list ------------------------------------------------------------------

TEST_CASE("Cli.ValidateGoodGraphs") {
  std::vector<std::string> args{"validate"};
  for (const auto& graph : example_graphs())
    args.push_back(graph.string());
  const ProcessResult result = plumber_cli(args);
  CHECK(result.exit_code == 0);
  CHECK(result.err.empty());
  const auto lines = split_lines(result.out);
  REQUIRE(lines.size() == args.size() - 1);
  CHECK(lines[0] == kGraphs + "/batching.json: ok (3 nodes, 2 edges)");
  for (std::size_t i = 0; i < lines.size(); ++i)
    CHECK(lines[i].starts_with(args[i + 1] + ": ok ("));
}

TEST_CASE("Cli.ValidateBrokenGraphs") {
  using Lines = std::vector<std::string>;
  SUBCASE("unknown coroutine") {
    const std::string file = kData + "/bad_unknown_coroutine.json";
    const ProcessResult result = plumber_cli({"validate", file});
    CHECK(result.exit_code == 2);
    CHECK(split_lines(result.err) ==
          Lines{file +
                ": /nodes/1/coroutine: unknown coroutine \"revers\" (did you mean \"reverse\"?)"});
  }
  SUBCASE("cycle") {
    const std::string file = kData + "/bad_cycle.json";
    const ProcessResult result = plumber_cli({"validate", file});
    CHECK(result.exit_code == 2);
    CHECK(
        split_lines(result.err) ==
        Lines{
            file +
            ": /edges/1: cycle through nodes a, b (pipelines are acyclic: remove one of the edges "
            "between these nodes)"});
  }
  SUBCASE("malformed JSON") {
    const std::string file = kData + "/bad_malformed.json";
    const ProcessResult result = plumber_cli({"validate", file});
    CHECK(result.exit_code == 2);
    CHECK(split_lines(result.err) ==
          Lines{file +
                ": /: malformed JSON: parse error at line 4, column 29: syntax error while parsing "
                "object - unexpected string literal; expected '}'"});
  }
  SUBCASE("several problems, every one reported") {
    const std::string file = kData + "/bad_several.json";
    const ProcessResult result = plumber_cli({"validate", file});
    CHECK(result.exit_code == 2);
    CHECK(split_lines(result.err) ==
          Lines{file + ": /nodes/0/params: range: step must not be 0",
                file + ": /nodes/1/concurrency: concurrency must be between 1 and 100000, not 0",
                file + ": /nodes/2/id: duplicate node id \"up\" (first defined at /nodes/1)",
                file + ": /edges/2/to: edge to names unknown node \"nowhere\" (nodes are declared "
                       "in /nodes)",
                file + ": /edges/1/to: source \"src\" (range) cannot have inputs (sources emit new "
                       "messages; "
                       "remove this edge)",
                file + ": /nodes/2: sink \"up\" (print) has no input (add an edge to it, or use a "
                       "source coroutine)",
                file + ": /nodes/3: sink \"sink\" (discard) has no input (add an edge to it, or "
                       "use a source "
                       "coroutine)",
                file + ": /edges/1/from: sink \"sink\" (discard) emits nothing downstream (remove "
                       "this edge, or "
                       "use a transform)",
                file + ": /edges/0: \"src\" (range) emits number, but \"up\" (upper) accepts "
                       "string (insert a step that converts between them, or connect other "
                       "nodes)"});
  }
  SUBCASE("good and bad together") {
    const std::string good = kGraphs + "/fib.json";
    const std::string bad = kData + "/bad_cycle.json";
    const ProcessResult result = plumber_cli({"validate", good, bad});
    CHECK(result.exit_code == 2);
    CHECK(result.out == good + ": ok (3 nodes, 2 edges)\n");
    CHECK(split_lines(result.err).size() == 1);
  }
}

TEST_CASE("Cli.Dot") {
  const ProcessResult result = plumber_cli({"dot", kGraphs + "/strings.json"});
  CHECK(result.exit_code == 0);
  CHECK(result.err.empty());
  const std::string& dot = result.out;
  INFO(dot);
  CHECK(dot.starts_with("digraph"));
  CHECK(dot.find("label=\"strings\"") != std::string::npos);
  for (const char* id : {"inp", "rev", "up", "low", "out"}) {
    CHECK(dot.find(std::string("[label=\"") + id) != std::string::npos);
  }
  std::size_t edges = 0;
  for (const auto& line : split_lines(dot))
    edges += line.find("->") != std::string::npos;
  CHECK(edges == 5);
  CHECK(dot.find('}') != std::string::npos);

  const ProcessResult broken = plumber_cli({"dot", kData + "/bad_cycle.json"});
  CHECK(broken.exit_code == 2);
  CHECK(broken.out.empty());
  CHECK(broken.err.find("cycle through nodes a, b") != std::string::npos);
}

namespace {
const std::map<std::string, std::string> kBuiltins = {
    {"input", "source"},          {"lines", "source"},      {"jsonl", "source"},
    {"range", "source"},          {"values", "source"},     {"uuid", "source"},
    {"identity", "transform"},    {"reverse", "transform"}, {"upper", "transform"},
    {"lower", "transform"},       {"sleep", "transform"},   {"fib", "transform"},
    {"sum_squares", "transform"}, {"sha256", "transform"},  {"concat", "transform"},
    {"exec", "transform"},        {"print", "sink"},        {"discard", "sink"},
    {"files", "source"},          {"to_blob", "transform"}};
}

TEST_CASE("Cli.List") {
  const ProcessResult result = plumber_cli({"list"});
  CHECK(result.exit_code == 0);
  const auto lines = split_lines(result.out);
  REQUIRE_FALSE(lines.empty());
  CHECK(lines[0] == "coroutines:");
  for (const auto& [name, kind] : kBuiltins) {
    INFO(name);
    const auto line = std::find_if(lines.begin(), lines.end(), [&](const std::string& l) {
      return l.starts_with("  " + name + " ");
    });
    REQUIRE(line != lines.end());
    CHECK(line->find(kind) != std::string::npos);
  }
  const auto range = std::find_if(lines.begin(), lines.end(),
                                  [](const std::string& l) { return l.starts_with("  range "); });
  REQUIRE(range != lines.end());
  CHECK(range->find("(start: integer = 0, stop: integer, step: integer = 1)") != std::string::npos);
  CHECK(std::find(lines.begin(), lines.end(), "predicates (for \"when\"):") != lines.end());
}

TEST_CASE("Cli.ListJson") {
  const ProcessResult result = plumber_cli({"list", "--json"});
  REQUIRE(result.exit_code == 0);
  json listing;
  REQUIRE_NOTHROW(listing = json::parse(result.out));
  REQUIRE(listing["coroutines"].is_array());
  std::map<std::string, json> by_name;
  for (const json& c : listing["coroutines"])
    by_name[c["name"].get<std::string>()] = c;
  CHECK(by_name.size() == kBuiltins.size());
  for (const auto& [name, kind] : kBuiltins) {
    INFO(name);
    REQUIRE(by_name.contains(name));
    CHECK(by_name[name]["kind"] == kind);
    CHECK(by_name[name]["description"].is_string());
    CHECK(by_name[name]["params"].is_array());
    CHECK(by_name[name]["worker_capable"].is_boolean());
  }
  const json& params = by_name["range"]["params"];
  REQUIRE(params.size() == 3);
  CHECK(params[1]["name"] == "stop");
  CHECK(params[1]["type"] == "integer");
  CHECK(params[1]["required"] == true);
  CHECK(params[0]["default"] == 0);
  CHECK(by_name["fib"]["worker_capable"] == true);
  CHECK(by_name["sleep"]["worker_capable"] == false);
  std::set<std::string> predicates;
  for (const json& p : listing["predicates"])
    predicates.insert(p["name"].get<std::string>());
  CHECK(predicates ==
        std::set<std::string>{"is_even", "is_number", "is_object", "is_odd", "is_string"});
}

// --- plugins ----------------------------------------------------------------------------

TEST_CASE("Cli.RunWorkers") {
  // graphs/workers.json: "procs": 2, "batch_size": 16. Its output is the same as
  // in process: the same graph without them.
  const std::string graph = kGraphs + "/workers.json";
  json in_process = json::parse(read_file(graph));
  in_process["nodes"][1].erase("procs");
  in_process["nodes"][1].erase("batch_size");
  const std::string in_process_file =
      (fs::temp_directory_path() / ("plumber-cli-workers-" + std::to_string(::getpid()) + ".json"))
          .string();
  std::ofstream(in_process_file) << in_process.dump();
  const ProcessResult reference = plumber_cli({"run", in_process_file});
  fs::remove(in_process_file);
  REQUIRE(reference.exit_code == 0);
  REQUIRE(split_lines(reference.out).size() == 200);

  const ProcessResult result = plumber_cli({"run", "--stats", graph});
  INFO(result.err);
  REQUIRE(result.exit_code == 0);
  CHECK(sorted_lines(result.out) == sorted_lines(reference.out));
  // The worker pool's line: node, procs, tasks, in flight, batches, ...
  const auto lines = split_lines(result.err);
  auto header = std::find_if(lines.begin(), lines.end(),
                             [](const std::string& l) { return l.starts_with("workers "); });
  REQUIRE(header != lines.end());
  REQUIRE(header + 1 != lines.end());
  std::istringstream row(*(header + 1));
  std::vector<std::string> cells;
  for (std::string word; row >> word;)
    cells.push_back(word);
  REQUIRE(cells.size() == 12);
  CHECK(cells[0] == "sq");
  CHECK(cells[1] == "2");            // procs
  CHECK(cells[2] == "200");          // tasks
  CHECK(cells[3] == "0");            // in flight
  CHECK(std::stoi(cells[4]) >= 13);  // batches: at most 16 messages each
  CHECK(cells[6] == "0");            // restarts
  CHECK(cells[9] == "0");            // blob bytes copied: none carried
}

namespace {

/// Pids of the processes whose parent is `parent` (from /proc/*/stat).
std::vector<int> children_of(int parent) {
  std::vector<int> pids;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
    std::istringstream rest(line.substr(line.rfind(')') + 1));
    char state = 0;
    int ppid = 0;
    rest >> state >> ppid;
    if (ppid == parent) pids.push_back(std::stoi(name));
  }
  return pids;
}

/// True once `pid` has ended (gone, or a zombie waiting for its new parent).
bool ended(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  std::istringstream rest(line.substr(line.rfind(')') + 1));
  char state = 0;
  rest >> state;
  return state == 'Z' || state == 'X';
}

}  // namespace

TEST_CASE("Cli.KilledParentLeavesNothing") {
  // `plumber run` with 2 workers, killed with SIGKILL mid-run: its workers see
  // their lifeline close and exit, and no shared-memory segment is left.
  const std::string graph = kData + "/endless_workers.json";
  std::vector<std::string> args{plumber::test::paths::exe, "run", graph};
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  REQUIRE(posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ) == 0);
  posix_spawn_file_actions_destroy(&actions);

  std::vector<int> workers;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (workers.size() < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    workers = children_of(pid);
  }
  REQUIRE(workers.size() == 2);
  // Let it run a little (every worker ready and busy), then kill it.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  REQUIRE(::kill(pid, SIGKILL) == 0);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status));
  for (int worker : workers) {
    CAPTURE(worker);
    while (!ended(worker) && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    CHECK(ended(worker));
  }
  const std::string prefix = "plumber-" + std::to_string(pid) + "-";
  for (const auto& entry : fs::directory_iterator("/dev/shm"))
    CHECK_FALSE(entry.path().filename().string().starts_with(prefix));
}

TEST_CASE("Cli.PluginCoroutineInWorkers") {
  const ProcessResult result = plumber_cli(
      {"run", kData + "/plugin_shout_workers.json", "--plugin", plumber::test::paths::test_plugin});
  INFO(result.err);
  CHECK(result.exit_code == 0);
  CHECK(result.err.empty());
  CHECK(sorted_lines(result.out) == std::vector<std::string>{"\"HI?\"", "\"PLUMBER?\""});
}

TEST_CASE("Cli.Plugin") {
  SUBCASE("adds coroutines to run and list") {
    const ProcessResult result = plumber_cli(
        {"run", kData + "/plugin_shout.json", "--plugin", plumber::test::paths::test_plugin});
    INFO(result.err);
    CHECK(result.exit_code == 0);
    CHECK(sorted_lines(result.out) == std::vector<std::string>{"\"PLUMBER?\"", "\"hi\"", "7"});
    const ProcessResult list =
        plumber_cli({"list", "--json", "--plugin", plumber::test::paths::test_plugin});
    REQUIRE(list.exit_code == 0);
    const json listing = json::parse(list.out);
    bool found = false;
    for (const json& c : listing["coroutines"])
      found |= c["name"] == "shout";
    CHECK(found);
  }
  SUBCASE("without the plugin the graph is invalid") {
    const std::string file = kData + "/plugin_shout.json";
    const ProcessResult result = plumber_cli({"validate", file});
    CHECK(result.exit_code == 2);
    CHECK(split_lines(result.err) ==
          std::vector<std::string>{
              file + ": /nodes/1/coroutine: unknown coroutine \"shout\" (see `plumber list`)",
              file + ": /nodes/1/when: unknown predicate \"is_long\" (see `plumber list`)"});
  }
  SUBCASE("a missing library") {
    const ProcessResult result = plumber_cli({"list", "--plugin", "/nonexistent.so"});
    CHECK(result.exit_code == 2);
    CHECK(result.out.empty());
    CHECK(result.err.find("/nonexistent.so") != std::string::npos);
  }
  SUBCASE("a file that is not a shared library") {
    const std::string file = kGraphs + "/fib.json";
    const ProcessResult result = plumber_cli({"validate", file, "--plugin", file});
    CHECK(result.exit_code == 2);
    CHECK(result.out.empty());
    CHECK(result.err.starts_with("plumber: plugin " + file + ": cannot load: "));
  }
}

// --- usage --------------------------------------------------------------------------------

TEST_CASE("Cli.UsageErrors") {
  const std::string graph = kGraphs + "/fib.json";
  const std::vector<std::vector<std::string>> misuses = {
      {},                                   // no command
      {"frobnicate"},                       // unknown command
      {"run"},                              // no graph
      {"run", graph, "--threads", "0"},     // out of range
      {"run", graph, "--threads", "many"},  // not a number
      {"run", graph, "--bogus"},            // unknown option
      {"run", graph, "--input", "/nonexistent/input.jsonl"},
      {"validate"},  // no files
      {"dot"},
      {"dot", graph, graph},  // one graph only
      {"list", "--jsn"},
  };
  for (const auto& args : misuses) {
    std::string joined;
    for (const auto& a : args)
      joined += " " + a;
    INFO("plumber" << joined);
    const ProcessResult result = plumber_cli(args);
    CHECK(result.exit_code == 2);
    CHECK(result.out.empty());
    CHECK_FALSE(result.err.empty());
  }
  const ProcessResult help = plumber_cli({"--help"});
  CHECK(help.exit_code == 0);
  CHECK(help.out.find("run") != std::string::npos);
  CHECK(help.out.find("validate") != std::string::npos);
}

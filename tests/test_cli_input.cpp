// The host-fed `input` source under `plumber run`, end to end: the real binary
// reading a file (--input), stdin redirected from one, and a pipe; line numbers
// in error records, long lines, an input that never ends, and back pressure.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "process.hpp"
#include "test_paths.hpp"

namespace fs = std::filesystem;
extern char** environ;
using nlohmann::json;
using plumber::test::ProcessResult;
using plumber::test::split_lines;

namespace {

/// A scratch directory, removed at the end of the test.
struct Scratch {
  fs::path dir = fs::temp_directory_path() / ("plumber_input_" + std::to_string(::getpid()));
  Scratch() { fs::create_directories(dir); }
  ~Scratch() { fs::remove_all(dir); }
  std::string write(const std::string& name, const std::string& text) const {
    const fs::path path = dir / name;
    std::ofstream(path, std::ios::binary) << text;
    return path.string();
  }
};

/// `input -> <step> -> <sink>` as a graph file in `scratch`.
std::string chain_graph(const Scratch& scratch, const std::string& step, const std::string& sink) {
  return scratch.write("graph.json", R"({"plumber": 1, "name": "input_chain", "nodes": [
    {"id": "in", "coroutine": "input"}, )" +
                                         step + R"(, )" + sink + R"(],
    "edges": [{"from": "in", "to": "step"}, {"from": "step", "to": "out"}]})");
}

const std::string kIdentity = R"({"id": "step", "coroutine": "identity"})";
const std::string kPrint = R"({"id": "out", "coroutine": "print"})";

enum class Feed { input_option, stdin_file, stdin_pipe };

/// Runs `plumber run GRAPH` on `input`, given as --input, as stdin, or through `cat |`.
ProcessResult run_on(const std::string& graph, const std::string& input, Feed feed) {
  switch (feed) {
    case Feed::input_option:
      return plumber::test::run_process(
          {plumber::test::paths::exe, "run", graph, "--input", input});
    case Feed::stdin_file:
      return plumber::test::run_process({plumber::test::paths::exe, "run", graph}, input);
    case Feed::stdin_pipe:
      return plumber::test::run_process({"/bin/sh", "-c", "cat \"$1\" | exec \"$0\" run \"$2\"",
                                         plumber::test::paths::exe, input, graph});
  }
  return {};
}

/// A child `plumber run` whose stdin is a pipe this side holds open.
struct OpenPipeRun {
  pid_t pid = 0;
  int to_stdin = -1;
  int from_stdout = -1;
  std::string buffered;  ///< read from stdout, not yet returned as lines

  OpenPipeRun(const std::vector<std::string>& args, const std::vector<std::string>& env) {
    int in[2], out[2];
    REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in[0], 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
    std::vector<char*> argv, envp;
    for (const auto& arg : args)
      argv.push_back(const_cast<char*>(arg.c_str()));
    argv.push_back(nullptr);
    for (const auto& entry : env)
      envp.push_back(const_cast<char*>(entry.c_str()));
    envp.push_back(nullptr);
    REQUIRE(::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data()) == 0);
    posix_spawn_file_actions_destroy(&actions);
    ::close(in[0]);
    ::close(out[1]);
    to_stdin = in[1];
    from_stdout = out[0];
  }
  ~OpenPipeRun() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    ::close(to_stdin);
    ::close(from_stdout);
  }

  /// Writes all of `text` to the child's stdin; false when the child is gone.
  bool send(const std::string& text) {
    for (std::size_t done = 0; done < text.size();) {
      const ssize_t n = ::write(to_stdin, text.data() + done, text.size() - done);
      if (n <= 0) return false;
      done += static_cast<std::size_t>(n);
    }
    return true;
  }

  /// Reads stdout until `count` more lines came; false at its end.
  bool read_lines(std::size_t count, std::vector<std::string>* lines = nullptr) {
    while (count > 0) {
      const auto newline = buffered.find('\n');
      if (newline != std::string::npos) {
        if (lines) lines->push_back(buffered.substr(0, newline));
        buffered.erase(0, newline + 1);
        --count;
        continue;
      }
      char chunk[65536];
      const ssize_t n = ::read(from_stdout, chunk, sizeof chunk);
      if (n <= 0) return false;
      buffered.append(chunk, static_cast<std::size_t>(n));
    }
    return true;
  }

  /// The exit status once the child ended (128 + N when killed by signal N).
  int wait() {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    pid = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  /// A field of /proc/PID/status or /proc/PID/io, in the unit the file gives it (kB, bytes).
  std::uint64_t proc_field(const std::string& file, const std::string& field) const {
    std::ifstream in("/proc/" + std::to_string(pid) + "/" + file);
    for (std::string line; std::getline(in, line);) {
      if (line.starts_with(field + ":")) {
        return std::stoull(line.substr(field.size() + 1));
      }
    }
    FAIL("no " << field << " in /proc/" << pid << "/" << file);
    return 0;
  }
};

/// The environment for a child whose memory is measured: AddressSanitizer's
/// quarantine of freed blocks (256 MiB) would look like growth.
std::vector<std::string> measured_environment() {
  std::vector<std::string> env;
  bool asan = false;
  for (char** entry = environ; *entry; ++entry) {
    std::string text = *entry;
    if (text.starts_with("ASAN_OPTIONS=")) {
      text += ":quarantine_size_mb=4";
      asan = true;
    }
    env.push_back(text);
  }
  if (!asan) env.push_back("ASAN_OPTIONS=quarantine_size_mb=4");
  return env;
}

}  // namespace

// 3,000 lines: a malformed one in the middle, an empty and a blank one, CRLF,
// and a last line without '\n'. Each line is one output or one error record,
// in order, whichever way the input comes in.
TEST_CASE("Cli.InputLinesBecomeOutputsOrNamedErrors") {
  Scratch scratch;
  const std::string graph = chain_graph(scratch, kIdentity, kPrint);
  std::string text;
  std::vector<std::string> expected;
  for (int n = 1; n <= 3000; ++n) {
    std::string line = R"({"n":)" + std::to_string(n) + "}";
    if (n == 10) {
      line = "";
    } else if (n == 30) {
      line = " \t ";
    } else if (n == 1500) {
      line = R"({"n":)";
    } else {
      expected.push_back(line);
    }
    if (n == 20) line += '\r';
    text += line;
    if (n < 3000) text += '\n';
  }
  const std::string input = scratch.write("input.jsonl", text);
  for (Feed feed : {Feed::input_option, Feed::stdin_file, Feed::stdin_pipe}) {
    CAPTURE(static_cast<int>(feed));
    const ProcessResult result = run_on(graph, input, feed);
    INFO("stderr: " << result.err);
    CHECK(result.exit_code == 3);
    CHECK(split_lines(result.out) == expected);
    const auto errors = split_lines(result.err);
    REQUIRE(errors.size() == 1);
    const json record = json::parse(errors[0]);
    CHECK(record["input"] == (feed == Feed::input_option ? input : "stdin") + ":1500");
    CHECK(record["error"].get<std::string>().starts_with("malformed JSON: parse error at line 1"));
  }
}

TEST_CASE("Cli.InputVeryLongLine") {
  Scratch scratch;
  const std::string graph = chain_graph(scratch, kIdentity, kPrint);
  const std::string long_value = json(std::string(6 << 20, 'x')).dump();  // a 6 MiB string
  const std::string input = scratch.write("long.jsonl", "1\n" + long_value + "\n2");
  for (Feed feed : {Feed::input_option, Feed::stdin_pipe}) {
    CAPTURE(static_cast<int>(feed));
    const ProcessResult result = run_on(graph, input, feed);
    CHECK(result.exit_code == 0);
    CHECK(result.err.empty());
    CHECK(split_lines(result.out) == std::vector<std::string>{"1", long_value, "2"});
  }
}

// stdin is a pipe that never ends (nobody closes it): the reader thread stays
// blocked in read(), and Ctrl-C must still end the process.
TEST_CASE("Cli.InputOpenPipeEndsOnInterrupt") {
  Scratch scratch;
  const std::string graph = chain_graph(scratch, kIdentity, kPrint);
  OpenPipeRun run({plumber::test::paths::exe, "run", graph}, measured_environment());
  REQUIRE(run.send("\"a\"\n\"b\"\n"));
  std::vector<std::string> lines;
  REQUIRE(run.read_lines(2, &lines));  // both went through: the reader now waits in read()
  CHECK(lines == std::vector<std::string>{"\"a\"", "\"b\""});
  ::kill(run.pid, SIGINT);
  CHECK(run.wait() == 130);  // the write end is still open here
}

// A pipeline far slower than its input (1 ms a message) over a 40 MB input:
// the reader stays a few batches ahead, it does not read (and parse) the
// whole input into memory.
TEST_CASE("Cli.InputBackPressureBoundsMemory") {
  Scratch scratch;
  const std::string graph =
      chain_graph(scratch, R"({"id": "step", "coroutine": "sleep", "params": {"ms": 1}})", kPrint);
  const std::string filler(200, 'x');
  std::string text;
  for (int n = 0; n < 200'000; ++n)
    text += R"({"n":)" + std::to_string(n) + R"(,"pad":")" + filler + "\"}\n";
  const std::string input = scratch.write("large.jsonl", text);
  OpenPipeRun run({plumber::test::paths::exe, "run", graph, "--input", input},
                  measured_environment());
  REQUIRE(run.read_lines(1000));
  const std::uint64_t rss_early = run.proc_field("status", "VmRSS");
  REQUIRE(run.read_lines(2000));
  const std::uint64_t rss_later = run.proc_field("status", "VmRSS");
  const std::uint64_t read = run.proc_field("io", "rchar");
  INFO("VmRSS " << rss_early << " kB, then " << rss_later << " kB; " << read << " bytes read of "
                << text.size());
  // Read so far: the messages done, 4 batches of 1,024 lines in flight, one
  // being parsed, the reader's buffer (2 MiB): about 4 MB of the 43 MB.
  CHECK(read < text.size() / 4);
  CHECK(rss_later < rss_early + 16 * 1024);  // kB: no growth with the messages done
}

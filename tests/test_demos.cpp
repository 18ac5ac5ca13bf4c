// The demos in demos/, run as a user would: the plugin through `plumber run
// --plugin`, the embedding server as a real process talked to over TCP.
// Label "cli".
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <nlohmann/json.hpp>

#include "process.hpp"
#include "test_paths.hpp"
#include "test_support.hpp"

extern char** environ;

using namespace plumber::test;
using json = nlohmann::ordered_json;
namespace asio = boost::asio;

namespace {

const std::string kDemos = std::string(plumber::test::paths::source_dir) + "/demos";

/// A running plumber_embed_demo: started with the demo graph, stopped with SIGTERM.
class EmbedServer {
 public:
  EmbedServer() {
    int out[2];
    REQUIRE(pipe(out) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, out[0]);
    const std::string graph = kDemos + "/embed/graph.json";
    std::vector<char*> argv{const_cast<char*>(plumber::test::paths::embed_demo),
                            const_cast<char*>(graph.c_str()), const_cast<char*>("0"), nullptr};
    REQUIRE(posix_spawn(&pid_, plumber::test::paths::embed_demo, &actions, nullptr, argv.data(),
                        environ) == 0);
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    // Its first line tells the port: "listening on N".
    FILE* lines = fdopen(out[0], "r");
    char first[128] = {};
    REQUIRE(fgets(first, sizeof first, lines) != nullptr);
    fclose(lines);
    const std::string text = first;
    REQUIRE(text.starts_with("listening on "));
    port_ = static_cast<unsigned short>(std::stoi(text.substr(13)));
  }
  ~EmbedServer() {
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
  unsigned short port() const { return port_; }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  unsigned short port_ = 0;
};

/// One TCP client of the demo: a JSON line out, a JSON line back.
class Client {
 public:
  explicit Client(unsigned short port) : socket_(io_) {
    socket_.connect({asio::ip::make_address("127.0.0.1"), port});
  }
  void send(const std::string& line) { asio::write(socket_, asio::buffer(line + "\n")); }
  json receive() {
    const std::size_t n = asio::read_until(socket_, buffer_, '\n');
    std::string line(asio::buffers_begin(buffer_.data()),
                     asio::buffers_begin(buffer_.data()) + static_cast<std::ptrdiff_t>(n));
    buffer_.consume(n);
    return json::parse(line);
  }

 private:
  asio::io_context io_;
  asio::ip::tcp::socket socket_;
  asio::streambuf buffer_;
};

}  // namespace

TEST_CASE("Demo.PluginRunsWithPlumberRun") {
  const ProcessResult result = run_process(
      {plumber::test::paths::exe, "run", kDemos + "/plugin/words.json", "--plugin",
       plumber::test::paths::demo_plugin, "--input", kDemos + "/plugin/sentences.jsonl"});
  INFO(result.err);
  REQUIRE(result.exit_code == 0);
  std::vector<json> outputs;
  for (const auto& line : split_lines(result.out))
    outputs.push_back(json::parse(line));
  REQUIRE(outputs.size() == 3);
  std::sort(outputs.begin(), outputs.end(),
            [](const json& a, const json& b) { return a.dump() < b.dump(); });
  CHECK(outputs[0]["slug"] == "Hello, plugin world");  // not a question: passes unchanged
  CHECK(outputs[0]["stats"]["words"] == 3);
  CHECK(outputs[1]["stats"]["words"] == 4);  // "Pipelines in C++ 20"
  CHECK(outputs[2]["slug"] == "is_this_the_real_life");
  CHECK(outputs[2]["stats"]["words"] == 5);
}

TEST_CASE("Demo.PluginTwiceIsRejected") {
  const ProcessResult result =
      run_process({plumber::test::paths::exe, "list", "--plugin", plumber::test::paths::demo_plugin,
                   "--plugin", plumber::test::paths::demo_plugin});
  CHECK(result.exit_code == 2);
  INFO(result.err);
  CHECK(result.err.find("word_stats") != std::string::npos);
  CHECK(result.err.find("already registered") != std::string::npos);
}

TEST_CASE("Demo.EmbedServerAnswersThroughItsPipeline") {
  EmbedServer server;
  Client client(server.port());
  client.send(R"("Hello big world")");
  CHECK(client.receive() == json::parse(R"({"result": {"words": 3, "score": 13}})"));

  client.send("not json");
  CHECK(client.receive()["error"] == "request is not JSON");

  client.send("42");  // `tokens` takes strings: a step error naming the node
  const json failed = client.receive();
  CHECK(failed["node"] == "tokens");
  CHECK(failed["code"] == "step failed");

  // Many requests in flight on several connections: each gets its own answer.
  std::vector<std::unique_ptr<Client>> clients;
  for (int c = 0; c < 4; ++c)
    clients.push_back(std::make_unique<Client>(server.port()));
  for (int i = 0; i < 50; ++i) {
    for (int c = 0; c < 4; ++c)
      clients[c]->send(json(std::string(static_cast<std::size_t>(i + c + 1), 'x')).dump());
  }
  for (int i = 0; i < 50; ++i) {
    for (int c = 0; c < 4; ++c) {
      const json reply = clients[c]->receive();
      CHECK(reply["result"]["score"] == i + c + 1);
    }
  }
}

// The server's WebSocket frames and graph policy, without a socket (the
// end-to-end tests in tests/server/ drive the real server).
#include <algorithm>
#include <filesystem>
#include <fstream>

#include <doctest/doctest.h>

#include "plumber/all.hpp"
#include "server/graph_policy.hpp"
#include "server/http_util.hpp"
#include "server/page_api.hpp"
#include "server/protocol.hpp"
#include "test_support.hpp"

using plumber::json;
namespace server = plumber::server;
namespace fs = std::filesystem;

namespace {

server::ProtocolError refused(std::string_view text) {
  auto parsed = server::parse_request(text);
  REQUIRE_MESSAGE(std::holds_alternative<server::ProtocolError>(parsed), text);
  return std::get<server::ProtocolError>(parsed);
}

server::Command accepted(std::string_view text) {
  auto parsed = server::parse_request(text);
  if (auto* e = std::get_if<server::ProtocolError>(&parsed)) FAIL(e->code << ": " << e->message);
  return std::get<server::Command>(parsed);
}

plumber::GraphSpec load(const std::string& text, const plumber::Registry& registry) {
  return plumber::parse_graph(text, registry);
}

}  // namespace

TEST_CASE("Protocol.ParsesEveryOp") {
  auto submit = accepted(R"({"op": "submit", "name": "strings", "ref": "a", "stats_ms": 100})");
  CHECK(submit.op == server::Op::submit);
  CHECK(submit.name == "strings");
  CHECK(submit.ref == "a");
  CHECK(submit.stats_ms == 100);
  CHECK(!submit.trace);
  CHECK(accepted(R"({"op": "submit", "name": "strings", "trace": true})").trace);
  CHECK(refused(R"({"op": "submit", "name": "strings", "trace": "yes"})").pointer == "/trace");
  auto inline_graph = accepted(R"({"op": "submit", "graph": {"plumber": 1}})");
  CHECK(inline_graph.graph.is_object());
  auto input = accepted(R"({"op": "input", "run": 3, "values": [1, "two"]})");
  CHECK(input.run == 3);
  CHECK(input.values.size() == 2);
  CHECK(accepted(R"({"op": "input", "run": 3, "value": null})").values.size() == 1);
  for (const char* op : {"end", "cancel", "stop", "stats"}) {
    auto command = accepted(std::string(R"({"op": ")") + op + R"(", "run": 9})");
    CHECK(server::to_string(command.op) == op);
    CHECK(command.run == 9);
  }
}

TEST_CASE("Protocol.ParsesWatchAndUnwatch") {
  auto watch = accepted(R"({"op": "watch", "interval_ms": 250})");
  CHECK(watch.op == server::Op::watch);
  CHECK(watch.stats_ms == 250);
  CHECK(accepted(R"({"op": "watch"})").stats_ms == 0);  // the server's default
  CHECK(accepted(R"({"op": "unwatch"})").op == server::Op::unwatch);
  auto e = refused(R"({"op": "watch", "interval_ms": 5})");
  CHECK(e.code == "protocol.out_of_range");
  CHECK(e.pointer == "/interval_ms");
  CHECK(refused(R"({"op": "unwatch", "run": 1})").code == "protocol.unknown_field");
  CHECK(refused(R"({"op": "wacth"})").hint == "did you mean \"watch\"?");
}

TEST_CASE("Protocol.PaletteListsKindsParamsAndTypes") {
  const auto registry = plumber::Registry::with_builtins();
  const json palette = server::palette_json(registry);
  const json* values = nullptr;
  const json* upper = nullptr;
  for (const json& c : palette["coroutines"]) {
    if (c["name"] == "values") values = &c;
    if (c["name"] == "upper") upper = &c;
  }
  REQUIRE(values);
  REQUIRE(upper);
  CHECK((*values)["kind"] == "source");
  CHECK((*values)["accepts"] == "");
  CHECK((*values)["params"][0]["name"] == "values");
  CHECK((*values)["params"][0]["type"] == "array");
  CHECK((*values)["params"][0]["required"] == true);
  CHECK((*upper)["kind"] == "transform");
  CHECK(!(*upper)["description"].get<std::string>().empty());
  CHECK(palette["predicates"].is_array());
}

TEST_CASE("Protocol.ValidationGivesTheDiagnosticsOfASubmit") {
  const auto registry = plumber::Registry::with_builtins();
  const server::GraphLimits limits;
  json draft = json::parse(R"({"plumber": 1, "name": "d", "nodes": [
      {"id": "a", "coroutine": "values"}, {"id": "b", "coroutine": "uper"},
      {"id": "c", "coroutine": "print"}],
    "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}]})");
  json answer = server::validation_json(draft, registry, limits);
  CHECK(answer["ok"] == false);
  std::vector<std::string> pointers;
  for (const json& d : answer["diagnostics"])
    pointers.push_back(d["pointer"].get<std::string>());
  CHECK(std::find(pointers.begin(), pointers.end(), "/nodes/1/coroutine") != pointers.end());
  draft["nodes"][0]["params"] = json::parse(R"({"values": [1]})");
  draft["nodes"][1]["coroutine"] = "upper";
  answer = server::validation_json(draft, registry, limits);
  // Loads, but the server's policy refuses `print`.
  REQUIRE(answer["ok"] == false);
  CHECK(answer["diagnostics"][0]["pointer"] == "/nodes/2/coroutine");
  draft["nodes"][2]["coroutine"] = "identity";
  answer = server::validation_json(draft, registry, limits);
  CHECK(answer["ok"] == true);
  CHECK(answer["graph"]["order"] == json::parse(R"(["a", "b", "c"])"));
}

TEST_CASE("Protocol.RefusesWithStableCodesAndPointers") {
  auto e = refused("{\"op\": ");
  CHECK(e.code == "protocol.malformed");
  CHECK(e.message.find("frame is not JSON: parse error at line 1, column 8") == 0);
  CHECK(refused("42").code == "protocol.not_object");
  e = refused(R"({"op": "inptu", "run": 1, "value": 2, "ref": 5})");
  CHECK(e.code == "protocol.unknown_op");
  CHECK(e.pointer == "/op");
  CHECK(e.hint == "did you mean \"input\"?");
  CHECK(e.ref == 5);
  e = refused(R"({"op": "input", "run": 1, "vaule": 2})");
  CHECK(e.code == "protocol.unknown_field");
  CHECK(e.pointer == "/vaule");
  CHECK(e.hint == "did you mean \"value\"?");
  e = refused(R"({"op": "end", "run": -1})");
  CHECK(e.code == "protocol.wrong_type");
  CHECK(e.message == "\"run\" must be a positive integer, not -1");
  CHECK(refused(R"({"op": "end"})").code == "protocol.missing_field");
  CHECK(refused(R"({"op": "submit", "name": "a", "graph": {}})").code ==
        "protocol.conflicting_fields");
  CHECK(refused(R"({"op": "input", "run": 1, "values": 3})").pointer == "/values");
  CHECK(refused(R"({"op": "stats", "run": 1, "ref": {}})").pointer == "/ref");
}

TEST_CASE("Protocol.FramesCarryRunIdNodeAndStats") {
  plumber::OutputRecord record;
  record.kind = plumber::OutputRecord::Kind::error;
  record.id = 7;
  record.node = "up";
  record.error = "upper takes a string, not number";
  const json failed = server::record_frame(2, record);
  CHECK(
      failed.dump() ==
      R"({"type":"failed","run":2,"id":7,"node":"up","code":"step_failed","message":"upper takes a string, not number"})");
  server::ProtocolError error;
  error.code = "run.unknown";
  error.message = "no run 4";
  error.pointer = "/run";
  CHECK(
      server::error_frame(error, 4, "x").dump() ==
      R"({"type":"error","run":4,"ref":"x","code":"run.unknown","message":"no run 4","pointer":"/run"})");
  plumber::ProcessorStats s;
  s.node = "out";
  s.coroutine = "identity";
  s.received = 3;
  server::RunSummary summary{"cancelled", "why", 1, 0, 2};
  const json done = server::done_frame(5, summary, {s});
  CHECK(done["status"] == "cancelled");
  CHECK(done["reason"] == "why");
  CHECK(done["stats"][0]["received"] == 3);
}

TEST_CASE("ServerPolicy.RefusesFilesPrintAndTooManyThreads") {
  const auto registry = plumber::Registry::with_builtins();
  server::GraphLimits limits;
  limits.max_threads = 4;
  auto spec = load(R"({"plumber": 1, "nodes": [
      {"id": "l", "coroutine": "lines", "params": {"path": "/etc/passwd"}},
      {"id": "f", "coroutine": "reverse", "threads": 5},
      {"id": "p", "coroutine": "print"}],
    "edges": [{"from": "l", "to": "f"}, {"from": "f", "to": "p"}]})",
                   registry);
  try {
    server::apply_graph_policy(spec, limits);
    FAIL("no GraphError");
  } catch (const plumber::GraphError& e) {
    std::vector<std::string> lines;
    for (const auto& d : e.diagnostics())
      lines.push_back(d.code + " " + d.pointer);
    CHECK(lines == std::vector<std::string>{"graph.file_not_allowed /nodes/0/params/path",
                                            "graph.too_many_threads /nodes/1/threads",
                                            "graph.not_allowed /nodes/2/coroutine"});
  }
}

TEST_CASE("ServerPolicy.AllowFilesKeepsPathsInside") {
  const auto registry = plumber::Registry::with_builtins();
  const fs::path root = fs::temp_directory_path() / "plumber-policy-test";
  fs::remove_all(root);
  fs::create_directories(root / "data");
  std::ofstream(root / "data" / "a.txt") << "x\n";
  server::GraphLimits limits;
  limits.allow_files = root / "data";
  auto graph_for = [&](const std::string& path) {
    return load(
        R"({"plumber": 1, "nodes": [{"id": "l", "coroutine": "lines", "params": {"path": ")" +
            path + R"("}}], "edges": []})",
        registry);
  };
  auto inside = graph_for("a.txt");
  server::apply_graph_policy(inside, limits);
  CHECK(inside.nodes[0].params["path"] == (root / "data" / "a.txt").string());
  for (const std::string path : {"../x.txt", "/etc/passwd", "-", "data/../../x"}) {
    auto outside = graph_for(path);
    CHECK_THROWS_AS(server::apply_graph_policy(outside, limits), plumber::GraphError);
  }
  fs::remove_all(root);
}

TEST_CASE("ServerPolicy.CountsNodesBeforeValidating") {
  server::GraphLimits limits;
  limits.max_nodes = 2;
  json document = json::parse(R"({"nodes": [{}, {}, {}]})");
  const auto problems = server::check_graph_size(document, limits);
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].code == "graph.too_many_nodes");
  CHECK(problems[0].pointer == "/nodes");
}

TEST_CASE("ServerHttp.SplitsTargetsDecodesQueriesAndReadsTokens") {
  CHECK(server::split_target("/v1/graphs?token=a%20b") ==
        std::pair<std::string_view, std::string_view>("/v1/graphs", "token=a%20b"));
  CHECK(server::split_target("/ws").second.empty());
  CHECK(server::query_param("x=1&token=a%20b+c", "token") == "a b c");
  CHECK(!server::query_param("x=1", "token"));
  CHECK(server::query_param("token", "token") == "");
  CHECK(server::url_decode("%zz%41") == "%zzA");
  CHECK(server::same_secret("s3cret", "s3cret"));
  CHECK(!server::same_secret("s3cre", "s3cret"));
  CHECK(!server::same_secret("", ""));
  CHECK(server::bearer_token("Bearer  abc") == "abc");
  CHECK(server::bearer_token("bEaReR\tabc") == "abc");
  CHECK(!server::bearer_token("Basic abc"));
  CHECK(server::origin_host("http://127.0.0.1:8080/x") == "127.0.0.1:8080");
  std::string bad;
  CHECK(server::integer_param("timeout_ms=250", "timeout_ms", 30000, 1, 3600000, bad) == 250);
  CHECK(server::integer_param("", "timeout_ms", 30000, 1, 3600000, bad) == 30000);
  CHECK(!server::integer_param("timeout_ms=0x10", "timeout_ms", 30000, 1, 3600000, bad));
  CHECK(bad == "timeout_ms must be an integer from 1 to 3600000, not \"0x10\"");
}

TEST_CASE("ServerHttp.TellsJsonBodiesFromBinaryOnes") {
  CHECK(server::json_content_type(""));
  CHECK(server::json_content_type("application/json"));
  CHECK(server::json_content_type("Application/JSON; charset=utf-8"));
  CHECK(server::json_content_type("application/ld+json"));
  CHECK(server::json_content_type("application/x-www-form-urlencoded"));  // curl --data
  CHECK(!server::json_content_type("application/octet-stream"));
  CHECK(!server::json_content_type("image/png"));
  CHECK(!server::json_content_type("text/plain; charset=utf-8"));
  CHECK(!server::json_content_type("application/+json"));
  CHECK(!server::json_content_type("text/json+x"));
  CHECK(server::process_graph_name("/v1/graphs/sha/process") == "sha");
  CHECK(!server::process_graph_name("/v1/graphs//process").has_value());
  CHECK(!server::process_graph_name("/v1/graphs/a/b/process").has_value());
  CHECK(!server::process_graph_name("/v1/graphs/sha").has_value());
  CHECK(server::expects_continue(" 100-Continue"));
  CHECK(!server::expects_continue(""));
}

TEST_CASE("ServerPolicy.ExecOnlyInTheOperatorsGraphs") {
  const auto registry = plumber::Registry::with_builtins();
  const std::string text = R"({"plumber": 1, "nodes": [
      {"id": "i", "coroutine": "input"},
      {"id": "x", "coroutine": "exec", "params": {"command": ["python3", "step.py"]}}],
    "edges": [{"from": "i", "to": "x"}]})";
  server::GraphLimits limits;
  auto spec = load(text, registry);
  try {
    server::apply_graph_policy(spec, limits);
    FAIL("no GraphError");
  } catch (const plumber::GraphError& e) {
    REQUIRE(e.diagnostics().size() == 1);
    CHECK(e.diagnostics()[0].pointer == "/nodes/1/coroutine");
    CHECK(e.diagnostics()[0].message ==
          "\"exec\" runs a program on the server, and submitted graphs may not");
  }
  limits.allow_programs = true;  // a graph of --graphs DIR
  auto trusted = load(text, registry);
  CHECK_NOTHROW(server::apply_graph_policy(trusted, limits));
}

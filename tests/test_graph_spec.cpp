// Graph loading: parse_graph / graph_from_json / load_graph_file, their
// diagnostics (exact text), the resolved NodeSpec defaults, topological order
// and DOT output.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <doctest/doctest.h>

#include "plumber/all.hpp"
#include "test_paths.hpp"
#include "test_support.hpp"

using namespace plumber;

namespace {

const Registry& builtins() {
  static const Registry registry = Registry::with_builtins();
  return registry;
}

/// The diagnostics of a graph that must not load, each as Diagnostic::format("g.json").
std::vector<std::string> diagnostics_of(std::string_view text,
                                        const Registry& registry = builtins()) {
  try {
    (void)parse_graph(text, registry, "g.json");
  } catch (const GraphError& e) {
    CHECK(e.file() == "g.json");
    std::vector<std::string> lines;
    for (const Diagnostic& d : e.diagnostics())
      lines.push_back(d.format(e.file()));
    return lines;
  }
  FAIL("the graph loaded, but it should have been rejected:\n" << text);
  return {};
}

/// The stable codes of the diagnostics of a graph that must not load.
std::vector<std::string> codes_of(std::string_view text) {
  try {
    (void)parse_graph(text, builtins(), "g.json");
  } catch (const GraphError& e) {
    std::vector<std::string> codes;
    for (const Diagnostic& d : e.diagnostics())
      codes.push_back(d.code);
    return codes;
  }
  FAIL("the graph loaded, but it should have been rejected:\n" << text);
  return {};
}

/// A graph "src" (range 0..3) -> NODE -> "out" (identity), NODE given as JSON text.
std::string chain_with(const std::string& node_json) {
  return R"({"plumber": 1, "nodes": [
    {"id": "src", "coroutine": "range", "params": {"stop": 3}},
    )" + node_json +
         R"(,
    {"id": "out", "coroutine": "identity"}],
  "edges": [{"from": "src", "to": "mid"}, {"from": "mid", "to": "out"}]})";
}

using Lines = std::vector<std::string>;

}  // namespace

// --- valid graphs ---------------------------------------------------------------

TEST_CASE("GraphSpec.LoadsExampleWithDefaults") {
  const GraphSpec graph = parse_graph(R"({
    "plumber": 1,
    "name": "strings",
    "settings": { "queue_size": 32 },
    "nodes": [
      { "id": "inp", "coroutine": "range", "params": { "stop": 5 } },
      { "id": "rev", "coroutine": "identity", "concurrency": 4, "queue_size": 8 },
      { "id": "up",  "coroutine": "fib", "threads": 3, "retries": 2, "timeout_ms": 250 },
      { "id": "out", "coroutine": "concat", "join": "zip", "batch_size": 16, "batch_timeout_ms": 5,
        "when": "is_object" }
    ],
    "edges": [
      { "from": "inp", "to": "rev" },
      { "from": "inp", "to": "up" },
      { "from": "rev", "to": "out" },
      { "from": "up",  "to": "out" }
    ]
  })",
                                      builtins(), "strings.json");

  CHECK(graph.file == "strings.json");
  CHECK(graph.name == "strings");
  CHECK(graph.settings.queue_size == 32);
  CHECK(graph.settings.priorities == 1);
  REQUIRE(graph.nodes.size() == 4);
  REQUIRE(graph.edges.size() == 4);

  const NodeSpec& inp = graph.nodes[0];
  CHECK(inp.id == "inp");
  CHECK(inp.coroutine == "range");
  // Declared defaults are filled in, in declaration order.
  CHECK(inp.params == json::parse(R"({"stop": 5, "start": 0, "step": 1})"));
  CHECK(inp.queue_size == 32);  // from settings

  const NodeSpec& rev = graph.nodes[1];
  CHECK(rev.concurrency == 4);
  CHECK(rev.queue_size == 8);
  CHECK(rev.threads == 0);
  CHECK(rev.batch_size == 1);
  CHECK(rev.batch_timeout.count() == 0);
  CHECK(rev.join == JoinPolicy::merge);
  CHECK(rev.when.empty());
  CHECK(rev.retries == 0);
  CHECK_FALSE(rev.timeout.has_value());
  CHECK(rev.params == json::object());

  const NodeSpec& up = graph.nodes[2];
  CHECK(up.threads == 3);
  CHECK(up.concurrency == 3);  // threads without concurrency: as many in flight as threads
  CHECK(up.retries == 2);
  REQUIRE(up.timeout.has_value());
  CHECK(up.timeout->count() == 250);

  const NodeSpec& out = graph.nodes[3];
  CHECK(out.join == JoinPolicy::zip);
  CHECK(out.batch_size == 16);
  CHECK(out.batch_timeout.count() == 5);
  CHECK(out.when == "is_object");
  CHECK(out.params == json::parse(R"({"separator": ""})"));

  CHECK(graph.find("up") == std::optional<std::size_t>(2));
  CHECK_FALSE(graph.find("nope").has_value());

  using Indices = std::vector<std::size_t>;
  CHECK(graph.predecessors[3] == Indices{1, 2});  // in edge order
  CHECK(graph.successors[0] == Indices{1, 2});
  CHECK(graph.predecessors[0].empty());
  CHECK(graph.successors[3].empty());
}

TEST_CASE("GraphSpec.ThreadsKeepExplicitConcurrency") {
  const GraphSpec graph = parse_graph(
      chain_with(R"({"id": "mid", "coroutine": "fib", "threads": 4, "concurrency": 2})"),
      builtins());
  CHECK(graph.nodes[1].threads == 4);
  CHECK(graph.nodes[1].concurrency == 2);
}

TEST_CASE("GraphSpec.NameDefaults") {
  // Without "name", parse_graph calls it "graph"; a file lends its stem.
  const std::string text = chain_with(R"({"id": "mid", "coroutine": "identity"})");
  CHECK(parse_graph(text, builtins()).name == "graph");
  CHECK(parse_graph(text, builtins(), "dir/my_pipeline.json").name == "my_pipeline");
}

TEST_CASE("GraphSpec.TopologicalOrder") {
  // Declared out of order: d <- c <- b <- a, and a -> d.
  const GraphSpec graph = parse_graph(R"({"plumber": 1, "nodes": [
      {"id": "d", "coroutine": "discard"},
      {"id": "c", "coroutine": "identity"},
      {"id": "a", "coroutine": "values", "params": {"values": [1]}},
      {"id": "b", "coroutine": "identity"}],
    "edges": [{"from": "c", "to": "d"}, {"from": "b", "to": "c"}, {"from": "a", "to": "b"},
              {"from": "a", "to": "d"}]})",
                                      builtins());
  const auto& order = graph.topological_order;
  REQUIRE(order.size() == 4);
  std::vector<std::size_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  CHECK(sorted == std::vector<std::size_t>{0, 1, 2, 3});  // each node once
  auto position = [&](std::string_view id) {
    return std::find(order.begin(), order.end(), *graph.find(id)) - order.begin();
  };
  for (const EdgeSpec& e : graph.edges) {
    INFO("edge " << graph.nodes[e.from].id << " -> " << graph.nodes[e.to].id);
    CHECK(position(graph.nodes[e.from].id) < position(graph.nodes[e.to].id));
  }
  // The only order that respects every edge.
  CHECK(order == std::vector<std::size_t>{2, 3, 1, 0});
}

TEST_CASE("GraphSpec.WriteDot") {
  const GraphSpec graph = parse_graph(R"({"plumber": 1, "name": "demo", "nodes": [
      {"id": "numbers", "coroutine": "range", "params": {"stop": 3}},
      {"id": "slow_step", "coroutine": "sleep", "concurrency": 4},
      {"id": "joiner", "coroutine": "concat", "join": "zip"}],
    "edges": [{"from": "numbers", "to": "slow_step"}, {"from": "numbers", "to": "joiner"},
              {"from": "slow_step", "to": "joiner"}]})",
                                      builtins());
  std::ostringstream dot;
  write_dot(dot, graph);
  const std::string text = dot.str();
  INFO(text);
  CHECK(text.starts_with("digraph"));
  CHECK(text.find("label=\"demo\"") != std::string::npos);
  for (const char* id : {"numbers", "slow_step", "joiner"}) {
    CHECK(text.find(id) != std::string::npos);
  }
  CHECK(text.find("sleep x4") != std::string::npos);
  CHECK(text.find("concat (zip)") != std::string::npos);
  // Three edges, between vertex indices.
  CHECK(text.find("0->1") != std::string::npos);
  CHECK(text.find("0->2") != std::string::npos);
  CHECK(text.find("1->2") != std::string::npos);
}

// Node labels are "id\ncoroutine": a DOT line break, escaped once.
TEST_CASE("GraphSpec.WriteDotLabelsBreakLines") {
  const GraphSpec graph = parse_graph(R"({"plumber": 1, "nodes": [
      {"id": "numbers", "coroutine": "range", "params": {"stop": 3}},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "numbers", "to": "out"}]})",
                                      builtins());
  std::ostringstream dot;
  write_dot(dot, graph);
  INFO(dot.str());
  CHECK(dot.str().find(R"(0[label="numbers\nrange", shape=invhouse];)") != std::string::npos);
  CHECK(dot.str().find(R"(1[label="out\nidentity", shape=house];)") != std::string::npos);
}

TEST_CASE("GraphSpec.GraphFromJson") {
  const json document = json::parse(chain_with(R"({"id": "mid", "coroutine": "fib"})"));
  const GraphSpec graph = graph_from_json(document, builtins(), "doc.json");
  CHECK(graph.nodes.size() == 3);
  CHECK(graph.nodes[1].coroutine == "fib");
  json broken = document;
  broken["nodes"][1]["coroutine"] = "uper";
  try {
    (void)graph_from_json(broken, builtins(), "doc.json");
    FAIL("expected a GraphError");
  } catch (const GraphError& e) {
    REQUIRE(e.diagnostics().size() == 1);
    CHECK(e.diagnostics()[0].format("doc.json") ==
          R"(doc.json: /nodes/1/coroutine: unknown coroutine "uper" (did you mean "upper"?))");
  }
}

// --- the diagnostic format ------------------------------------------------------------

TEST_CASE("GraphSpec.DiagnosticFormat") {
  const Diagnostic d{"graph.x", "/nodes/0", "something is wrong", "fix it"};
  CHECK(d.format("a.json") == "a.json: /nodes/0: something is wrong (fix it)");
  CHECK(d.format() == "/nodes/0: something is wrong (fix it)");
  const Diagnostic root{"graph.y", "", "bad", ""};
  CHECK(root.format("a.json") == "a.json: /: bad");

  const GraphError error("f.json", {d, root});
  CHECK(std::string(error.what()) ==
        "f.json: /nodes/0: something is wrong (fix it)\nf.json: /: bad");
  CHECK(error.diagnostics().size() == 2);
}

// --- malformed documents ------------------------------------------------------------

TEST_CASE("GraphSpec.MalformedJsonHasLineAndColumn") {
  const std::string text = "{\n  \"plumber\": 1,\n  \"nodes\": [ {\"id\": \"a\",, } ]\n}";
  CHECK(diagnostics_of(text) ==
        Lines{"g.json: /: malformed JSON: parse error at line 3, column 25: syntax error while "
              "parsing object key - unexpected ','; expected string literal"});
  CHECK(codes_of(text) == Lines{"graph.malformed_json"});

  CHECK(diagnostics_of("") ==
        Lines{"g.json: /: malformed JSON: parse error at line 1, column 1: syntax error while "
              "parsing value - unexpected end of input; expected '[', '{', or a literal"});
}

TEST_CASE("GraphSpec.NotAnObject") {
  CHECK(diagnostics_of("[1, 2]") ==
        Lines{"g.json: /: a graph must be a JSON object, not array (see docs/graph-format.md)"});
}

TEST_CASE("GraphSpec.FormatVersion") {
  CHECK(
      diagnostics_of(R"({"nodes": [{"id": "a", "coroutine": "range", "params": {"stop": 1}}]})") ==
      Lines{
          R"(g.json: /: missing required field "plumber" (add "plumber": 1 (the format version)))"});
  CHECK(
      diagnostics_of(
          R"({"plumber": 2, "nodes": [{"id": "a", "coroutine": "range", "params": {"stop": 1}}]})") ==
      Lines{"g.json: /plumber: unsupported format 2; this version reads format 1"});
  CHECK(
      diagnostics_of(
          R"({"plumber": "1", "nodes": [{"id": "a", "coroutine": "range", "params": {"stop": 1}}]})") ==
      Lines{R"(g.json: /plumber: unsupported format "1"; this version reads format 1)"});
}

TEST_CASE("GraphSpec.MissingOrEmptyNodes") {
  CHECK(diagnostics_of(R"({"plumber": 1})") ==
        Lines{R"(g.json: /: missing required field "nodes")"});
  CHECK(diagnostics_of(R"({"plumber": 1, "nodes": []})") ==
        Lines{"g.json: /nodes: nodes must be a non-empty array of node objects"});
  CHECK(diagnostics_of(R"({"plumber": 1, "nodes": {"a": 1}})") ==
        Lines{"g.json: /nodes: nodes must be a non-empty array of node objects"});
}

TEST_CASE("GraphSpec.UnknownFieldsWithHints") {
  CHECK(
      diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "identity", "concurency": 2})")) ==
      Lines{
          R"(g.json: /nodes/1/concurency: unknown field "concurency" (did you mean "concurrency"?))"});
  CHECK(diagnostics_of(R"({"plumber": 1, "nodez": [],
                           "nodes": [{"id": "a", "coroutine": "range", "params": {"stop": 1}}]})") ==
        Lines{R"(g.json: /nodez: unknown field "nodez" (did you mean "nodes"?))"});
  // Nothing close: no hint.
  CHECK(diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "identity", "xyzzy_plugh": 2})")) ==
        Lines{R"(g.json: /nodes/1/xyzzy_plugh: unknown field "xyzzy_plugh")"});
  CHECK(codes_of(chain_with(R"({"id": "mid", "coroutine": "identity", "xyzzy_plugh": 2})")) ==
        Lines{"graph.unknown_field"});
}

// --- field types and ranges ---------------------------------------------------------

TEST_CASE("GraphSpec.WrongFieldTypes") {
  CHECK(
      diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "identity", "concurrency": "4"})")) ==
      Lines{"g.json: /nodes/1/concurrency: concurrency must be an integer, not string"});
  CHECK(
      diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "identity", "batch_size": 2.5})")) ==
      Lines{"g.json: /nodes/1/batch_size: batch_size must be an integer, not number"});
  CHECK(diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "identity", "retries": true})")) ==
        Lines{"g.json: /nodes/1/retries: retries must be an integer, not boolean"});
  CHECK(diagnostics_of(chain_with(R"({"id": "mid", "coroutine": 7})")) ==
        Lines{"g.json: /nodes/1/coroutine: coroutine must be a string, not integer"});
  CHECK(diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "identity", "join": null})")) ==
        Lines{"g.json: /nodes/1/join: join must be a string, not null"});
  CHECK(diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "identity", "params": [1]})")) ==
        Lines{"g.json: /nodes/1/params: params must be an object, not array"});
  CHECK(diagnostics_of(R"({"plumber": 1, "name": 5, "settings": [],
        "nodes": [{"id": "a", "coroutine": "range", "params": {"stop": 1}}], "edges": {}})") ==
        Lines{"g.json: /name: name must be a string, not integer",
              "g.json: /settings: settings must be an object, not array",
              "g.json: /edges: edges must be an array, not object"});
  CHECK(diagnostics_of(R"({"plumber": 1, "nodes": [5]})") ==
        Lines{"g.json: /nodes/0: a node must be an object, not integer"});
  CHECK(diagnostics_of(
            R"({"plumber": 1, "nodes": [{"id": "a", "coroutine": "range", "params": {"stop": 1}}],
                           "edges": ["a->b"]})") ==
        Lines{R"(g.json: /edges/0: an edge must be an object {"from", "to"}, not string)"});
}

TEST_CASE("GraphSpec.FieldRanges") {
  CHECK(diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "identity", "concurrency": 0})")) ==
        Lines{"g.json: /nodes/1/concurrency: concurrency must be between 1 and 100000, not 0"});
  CHECK(diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "identity", "batch_size": -1})")) ==
        Lines{"g.json: /nodes/1/batch_size: batch_size must be between 1 and 100000, not -1"});
  CHECK(diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "identity", "threads": 300})")) ==
        Lines{"g.json: /nodes/1/threads: threads must be between 0 and 256, not 300"});
  CHECK(diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "identity", "timeout_ms": 0})")) ==
        Lines{"g.json: /nodes/1/timeout_ms: timeout_ms must be between 1 and 86400000, not 0"});
  CHECK(diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "identity", "queue_size": 0})")) ==
        Lines{"g.json: /nodes/1/queue_size: queue_size must be between 1 and 1000000, not 0"});
  CHECK(diagnostics_of(R"({"plumber": 1, "settings": {"queue_size": 0},
        "nodes": [{"id": "a", "coroutine": "range", "params": {"stop": 1}}]})") ==
        Lines{"g.json: /settings/queue_size: queue_size must be between 1 and 1000000, not 0"});
  CHECK(codes_of(chain_with(R"({"id": "mid", "coroutine": "identity", "retries": 1001})")) ==
        Lines{"graph.out_of_range"});
}

TEST_CASE("GraphSpec.BadJoin") {
  CHECK(diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "identity", "join": "zipp"})")) ==
        Lines{R"(g.json: /nodes/1/join: join must be "merge" or "zip", not "zipp")"});
}

TEST_CASE("GraphSpec.PrioritiesRange") {
  CHECK(parse_graph(R"({"plumber": 1, "settings": {"priorities": 4},
        "nodes": [{"id": "a", "coroutine": "range", "params": {"stop": 1}}]})",
                    builtins())
            .settings.priorities == 4);
  CHECK(diagnostics_of(R"({"plumber": 1, "settings": {"priorities": 17},
        "nodes": [{"id": "a", "coroutine": "range", "params": {"stop": 1}}]})")
            .size() == 1);
}

// --- typed edges ------------------------------------------------------------------

TEST_CASE("GraphSpec.TypedEdgeMismatchNamesBothEnds") {
  CHECK(diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "upper"})")) ==
        Lines{R"(g.json: /edges/0: "src" (range) emits number, but "mid" (upper) accepts string )"
              R"((insert a step that converts between them, or connect other nodes))"});
}

TEST_CASE("GraphSpec.TypesFlowThroughPassThroughSteps") {
  // identity and sleep emit what they receive: range's numbers reach upper.
  CHECK(diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 3}},
      {"id": "same", "coroutine": "identity"}, {"id": "later", "coroutine": "sleep"},
      {"id": "up", "coroutine": "upper"}],
    "edges": [{"from": "src", "to": "same"}, {"from": "same", "to": "later"},
              {"from": "later", "to": "up"}]})") ==
        Lines{R"(g.json: /edges/2: "later" (sleep) emits number, but "up" (upper) accepts string )"
              R"((insert a step that converts between them, or connect other nodes))"});
}

TEST_CASE("GraphSpec.TypedEdgesThatLoad") {
  // Undeclared producers (input, jsonl) may feed anything; a `when` may filter
  // what a step receives; overlapping kinds are enough.
  for (const char* text : {
           R"({"plumber": 1, "nodes": [{"id": "in", "coroutine": "input"},
               {"id": "up", "coroutine": "upper"}], "edges": [{"from": "in", "to": "up"}]})",
           R"({"plumber": 1, "nodes": [{"id": "src", "coroutine": "range", "params": {"stop": 3}},
               {"id": "up", "coroutine": "upper", "when": "is_string"}],
               "edges": [{"from": "src", "to": "up"}]})",
           R"({"plumber": 1, "nodes": [{"id": "src", "coroutine": "lines"},
               {"id": "h", "coroutine": "sha256"}, {"id": "up", "coroutine": "upper"}],
               "edges": [{"from": "src", "to": "h"}, {"from": "h", "to": "up"}]})",
           R"({"plumber": 1, "nodes": [{"id": "a", "coroutine": "lines"},
               {"id": "b", "coroutine": "lines"}, {"id": "z", "coroutine": "concat", "join": "zip"}],
               "edges": [{"from": "a", "to": "z"}, {"from": "b", "to": "z"}]})"}) {
    CAPTURE(text);
    CHECK_NOTHROW((void)parse_graph(text, builtins()));
  }
}

TEST_CASE("GraphSpec.ZipIntoStepThatTakesNoObjects") {
  CHECK(diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "a", "coroutine": "range", "params": {"stop": 3}},
      {"id": "b", "coroutine": "range", "params": {"stop": 3}},
      {"id": "f", "coroutine": "fib", "join": "zip"}],
    "edges": [{"from": "a", "to": "f"}, {"from": "b", "to": "f"}]})") ==
        Lines{R"(g.json: /nodes/2/join: "f" (fib) accepts number, but join "zip" delivers an )"
              R"(object keyed by predecessor id (use "merge", or a step that accepts objects))"});
}

TEST_CASE("GraphSpec.TypesDeclaredThroughAdapters") {
  Registry registry = Registry::with_builtins();
  CoroutineOptions options;
  options.accepts = {ValueTypes::object, ValueTypes::array};
  options.emits = {ValueTypes::boolean};
  registry.add_function(
      "has_items", [](const json& v) { return json(!v.empty()); }, options);
  CHECK(registry.find("has_items")->accepts.to_string() == "array|object");
  CHECK(registry.find("has_items")->emits.to_string() == "boolean");
  CHECK(diagnostics_of(R"({"plumber": 1, "nodes": [{"id": "src", "coroutine": "uuid",
        "params": {"count": 1}}, {"id": "h", "coroutine": "has_items"},
        {"id": "up", "coroutine": "upper"}],
        "edges": [{"from": "src", "to": "h"}, {"from": "h", "to": "up"}]})",
                       registry) ==
        Lines{R"(g.json: /edges/0: "src" (uuid) emits string, but "h" (has_items) accepts )"
              R"(array|object (insert a step that converts between them, or connect other nodes))",
              R"(g.json: /edges/1: "h" (has_items) emits boolean, but "up" (upper) accepts )"
              R"(string (insert a step that converts between them, or connect other nodes))"});
}

// --- ids ------------------------------------------------------------------------

TEST_CASE("GraphSpec.BadAndMissingIds") {
  CHECK(
      diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "identity"},
                                     {"id": "9lives", "coroutine": "discard"})")) ==
      Lines{
          R"(g.json: /nodes/2/id: node id "9lives" is not a valid id (use letters, digits, '_', '.', '-', starting with a letter or '_'))",
          R"(g.json: /nodes/2: sink "9lives" (discard) has no input (add an edge to it, or use a source coroutine))"});
  CHECK(diagnostics_of(
            R"({"plumber": 1, "nodes": [{"coroutine": "range", "params": {"stop": 1}}]})") ==
        Lines{R"(g.json: /nodes/0: missing required field "id")"});
  CHECK(diagnostics_of(R"({"plumber": 1, "nodes": [{"id": "a"}]})") ==
        Lines{R"(g.json: /nodes/0: missing required field "coroutine")"});
}

TEST_CASE("GraphSpec.DuplicateIds") {
  CHECK(
      diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "a", "coroutine": "range", "params": {"stop": 1}},
      {"id": "b", "coroutine": "identity"},
      {"id": "a", "coroutine": "identity"}],
    "edges": [{"from": "a", "to": "b"}]})") ==
      Lines{
          R"(g.json: /nodes/2/id: duplicate node id "a" (first defined at /nodes/0))",
          // Edges name the first "a", so the second one has no input.
          R"(g.json: /nodes/2: transform "a" (identity) has no input (add an edge to it, or use a source coroutine))"});
}

// --- coroutines and predicates ---------------------------------------------------

TEST_CASE("GraphSpec.UnknownCoroutineHint") {
  CHECK(
      diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "revers"})")) ==
      Lines{R"(g.json: /nodes/1/coroutine: unknown coroutine "revers" (did you mean "reverse"?))"});
  CHECK(
      diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "idnetity"})")) ==
      Lines{
          R"(g.json: /nodes/1/coroutine: unknown coroutine "idnetity" (did you mean "identity"?))"});
  // Nothing close: a pointer to `plumber list` instead.
  CHECK(
      diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "transmogrify"})")) ==
      Lines{
          R"(g.json: /nodes/1/coroutine: unknown coroutine "transmogrify" (see `plumber list`))"});
  CHECK(codes_of(chain_with(R"({"id": "mid", "coroutine": "revers"})")) ==
        Lines{"graph.unknown_coroutine"});
}

TEST_CASE("GraphSpec.UnknownPredicateHint") {
  CHECK(diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "identity", "when": "is_evn"})")) ==
        Lines{R"(g.json: /nodes/1/when: unknown predicate "is_evn" (did you mean "is_even"?))"});
}

// --- edges and structure --------------------------------------------------------------

TEST_CASE("GraphSpec.EdgesToUnknownNodes") {
  CHECK(
      diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 1}},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "out"}, {"from": "src", "to": "ouy"},
              {"from": "nowhere_at_all", "to": "out"}]})") ==
      Lines{
          R"(g.json: /edges/1/to: edge to names unknown node "ouy" (did you mean "out"?))",
          R"(g.json: /edges/2/from: edge from names unknown node "nowhere_at_all" (nodes are declared in /nodes))"});
  CHECK(diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 1}},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src"}, {"from": "src", "to": "out", "label": "x"}]})") ==
        Lines{R"(g.json: /edges/0: missing required field "to")",
              R"(g.json: /edges/1/label: unknown field "label")"});
}

TEST_CASE("GraphSpec.DuplicateEdge") {
  CHECK(diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 1}},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "out"}, {"from": "src", "to": "out"}]})") ==
        Lines{R"(g.json: /edges/1: duplicate edge "src" -> "out" (first at /edges/0))"});
}

TEST_CASE("GraphSpec.CycleNamesItsNodes") {
  CHECK(diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 1}},
      {"id": "a", "coroutine": "identity"},
      {"id": "b", "coroutine": "identity"},
      {"id": "c", "coroutine": "identity"},
      {"id": "out", "coroutine": "discard"}],
    "edges": [{"from": "src", "to": "a"}, {"from": "a", "to": "b"}, {"from": "b", "to": "c"},
              {"from": "c", "to": "a"}, {"from": "c", "to": "out"}]})") ==
        Lines{"g.json: /edges/1: cycle through nodes a, b, c (pipelines are acyclic: remove one of "
              "the edges between these nodes)"});
  // A node that feeds itself is a cycle too.
  CHECK(diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 1}},
      {"id": "loop", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "loop"}, {"from": "loop", "to": "loop"}]})") ==
        Lines{"g.json: /edges/1: cycle through nodes loop (pipelines are acyclic: remove one of "
              "the edges between these nodes)"});
  // Two separate cycles: one diagnostic each.
  CHECK(codes_of(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 1}},
      {"id": "a", "coroutine": "identity"}, {"id": "b", "coroutine": "identity"},
      {"id": "c", "coroutine": "identity"}, {"id": "d", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "a"}, {"from": "a", "to": "b"}, {"from": "b", "to": "a"},
              {"from": "src", "to": "c"}, {"from": "c", "to": "d"}, {"from": "d", "to": "c"}]})") ==
        Lines{"graph.cycle", "graph.cycle"});
}

TEST_CASE("GraphSpec.SourceWithInput") {
  CHECK(
      diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "a", "coroutine": "range", "params": {"stop": 1}},
      {"id": "b", "coroutine": "values", "params": {"values": [1]}}],
    "edges": [{"from": "a", "to": "b"}]})") ==
      Lines{
          R"(g.json: /edges/0/to: source "b" (values) cannot have inputs (sources emit new messages; remove this edge))"});
}

TEST_CASE("GraphSpec.NonSourceWithoutInput") {
  CHECK(
      diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "a", "coroutine": "range", "params": {"stop": 1}},
      {"id": "up", "coroutine": "upper"}]})") ==
      Lines{
          R"(g.json: /nodes/1: transform "up" (upper) has no input (add an edge to it, or use a source coroutine))"});
}

TEST_CASE("GraphSpec.SinkWithOutput") {
  CHECK(
      diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "a", "coroutine": "range", "params": {"stop": 1}},
      {"id": "p", "coroutine": "print"},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "a", "to": "p"}, {"from": "p", "to": "out"}]})") ==
      Lines{
          R"(g.json: /edges/1/from: sink "p" (print) emits nothing downstream (remove this edge, or use a transform))"});
}

TEST_CASE("GraphSpec.TwoInputNodes") {
  CHECK(
      diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "a", "coroutine": "input"}, {"id": "b", "coroutine": "input"},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "a", "to": "out"}, {"from": "b", "to": "out"}]})") ==
      Lines{
          R"(g.json: /nodes/1: a graph has at most one source fed by the host (like "input") (it receives what the host feeds; fan out from it with edges instead))"});
}

TEST_CASE("GraphSpec.SourceOnlyFieldsRejected") {
  CHECK(diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "a", "coroutine": "range", "params": {"stop": 1}, "concurrency": 2, "join": "zip"},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "a", "to": "out"}]})") ==
        Lines{R"(g.json: /nodes/0/join: join does not apply to source "range")",
              R"(g.json: /nodes/0/concurrency: concurrency does not apply to source "range")"});
}

// --- params ---------------------------------------------------------------------

TEST_CASE("GraphSpec.UnknownParam") {
  CHECK(
      diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "a", "coroutine": "range", "params": {"stop": 3, "stpe": 1}}]})") ==
      Lines{
          R"(g.json: /nodes/0/params/stpe: coroutine "range" has no param "stpe" (it takes: start, stop, step))"});
  CHECK(
      diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "identity", "params": {"x": 1}})")) ==
      Lines{
          R"(g.json: /nodes/1/params/x: coroutine "identity" has no param "x" (it takes no params))"});
}

TEST_CASE("GraphSpec.MissingRequiredParam") {
  CHECK(
      diagnostics_of(R"({"plumber": 1, "nodes": [{"id": "a", "coroutine": "range"}]})") ==
      Lines{
          R"(g.json: /nodes/0/params: coroutine "range" needs param "stop" (stop: bound, not emitted))"});
  CHECK(codes_of(R"({"plumber": 1, "nodes": [{"id": "a", "coroutine": "values"}]})") ==
        Lines{"graph.missing_param"});
}

TEST_CASE("GraphSpec.WrongParamType") {
  CHECK(diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "a", "coroutine": "range", "params": {"stop": "10"}}]})") ==
        Lines{R"(g.json: /nodes/0/params/stop: param "stop" must be integer, not string)"});
  CHECK(diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "a", "coroutine": "values", "params": {"values": {"x": 1}}}]})") ==
        Lines{R"(g.json: /nodes/0/params/values: param "values" must be array, not object)"});
}

TEST_CASE("GraphSpec.CheckParams") {
  CHECK(diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "a", "coroutine": "range", "params": {"stop": 3, "step": 0}}]})") ==
        Lines{"g.json: /nodes/0/params: range: step must not be 0"});
  CHECK(
      diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "sleep", "params": {"ms": -5}})")) ==
      Lines{
          "g.json: /nodes/1/params: sleep: ms must be between 0 and 31536000000 (a year), not -5"});
  CHECK(
      codes_of(
          R"({"plumber": 1, "nodes": [{"id": "a", "coroutine": "uuid", "params": {"count": -1}}]})") ==
      Lines{"graph.bad_param"});
  // check_params only runs on params that have the declared types.
  CHECK(diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "a", "coroutine": "range", "params": {"stop": 3, "step": "0"}}]})") ==
        Lines{R"(g.json: /nodes/0/params/step: param "step" must be integer, not string)"});
}

// --- procs -------------------------------------------------------------------------

TEST_CASE("GraphSpec.ProcsChecked") {
  // A coroutine that holds in-process state can never run in a worker.
  CHECK(
      diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "sleep", "procs": 2})")) ==
      Lines{
          R"(g.json: /nodes/1/procs: coroutine "sleep" cannot run in a worker process (it holds in-process state; use "threads" instead))"});
  // A worker-capable coroutine loads, with a few batches in flight per worker.
  const GraphSpec graph =
      parse_graph(chain_with(R"({"id": "mid", "coroutine": "fib", "procs": 2})"), builtins());
  CHECK(graph.nodes[1].procs == 2);
  CHECK(graph.nodes[1].concurrency == 8);
  // Threads and processes exclude each other.
  CHECK(
      diagnostics_of(
          chain_with(R"({"id": "mid", "coroutine": "fib", "procs": 2, "threads": 2})")) ==
      Lines{
          R"(g.json: /nodes/1/procs: a node runs its step either on threads or in worker processes, not both (remove "threads" or "procs"))"});
  CHECK(codes_of(chain_with(R"({"id": "mid", "coroutine": "sleep", "procs": 1})")) ==
        Lines{"graph.not_worker_capable"});
}

// --- several at once -----------------------------------------------------------------

TEST_CASE("GraphSpec.CollectsEveryDiagnostic") {
  const auto lines = diagnostics_of(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 3, "step": "x"}},
      {"id": "rev", "coroutine": "revers", "concurrency": 0},
      {"id": "src", "coroutine": "upper", "when": "is_evn"},
      {"id": "out", "coroutine": "identity"}],
    "edges": [{"from": "src", "to": "rev"}, {"from": "rev", "to": "outt"}]})");
  CHECK(
      lines ==
      Lines{
          R"(g.json: /nodes/0/params/step: param "step" must be integer, not string)",
          R"(g.json: /nodes/1/coroutine: unknown coroutine "revers" (did you mean "reverse"?))",
          "g.json: /nodes/1/concurrency: concurrency must be between 1 and 100000, not 0",
          R"(g.json: /nodes/2/id: duplicate node id "src" (first defined at /nodes/0))",
          R"(g.json: /nodes/2/when: unknown predicate "is_evn" (did you mean "is_even"?))",
          R"(g.json: /edges/1/to: edge to names unknown node "outt" (did you mean "out"?))",
          R"(g.json: /nodes/2: transform "src" (upper) has no input (add an edge to it, or use a source coroutine))",
          R"(g.json: /nodes/3: transform "out" (identity) has no input (add an edge to it, or use a source coroutine))"});
}

// --- files -----------------------------------------------------------------------------

TEST_CASE("GraphSpec.LoadGraphFile") {
  const auto dir = std::filesystem::temp_directory_path() / "plumber_graph_spec_test";
  std::filesystem::create_directories(dir);
  const auto good = (dir / "chain.json").string();
  {
    std::ofstream out(good);
    out << chain_with(R"({"id": "mid", "coroutine": "fib"})");
  }
  const GraphSpec graph = load_graph_file(good, builtins());
  CHECK(graph.file == good);
  CHECK(graph.name == "chain");
  CHECK(graph.nodes.size() == 3);

  const auto missing = (dir / "missing.json").string();
  try {
    (void)load_graph_file(missing, builtins());
    FAIL("expected a GraphError");
  } catch (const GraphError& e) {
    REQUIRE(e.diagnostics().size() == 1);
    CHECK(e.diagnostics()[0].format(e.file()) ==
          missing + ": /: cannot open: No such file or directory");
  }
  try {
    (void)load_graph_file(dir.string(), builtins());
    FAIL("expected a GraphError");
  } catch (const GraphError& e) {
    REQUIRE(e.diagnostics().size() == 1);
    CHECK(e.diagnostics()[0].format(e.file()) ==
          dir.string() + ": /: is a directory, not a graph file");
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("GraphSpec.ExampleGraphsLoad") {
  std::size_t count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(
           std::string(plumber::test::paths::source_dir) + "/graphs")) {
    if (entry.path().extension() != ".json") continue;
    INFO(entry.path().string());
    CHECK_NOTHROW((void)load_graph_file(entry.path().string(), builtins()));
    ++count;
  }
  CHECK(count >= 5);
}

// --- remote nodes (docs/scale-out.md) -----------------------------------------------

TEST_CASE("GraphSpec.RemoteDefaults") {
  const GraphSpec graph =
      parse_graph(chain_with(R"({"id": "mid", "coroutine": "fib", "remote": true, "retries": 2,
                     "batch_size": 16})"),
                  builtins());
  const NodeSpec& mid = graph.nodes[1];
  REQUIRE(mid.remote);
  CHECK(mid.remote->broker.empty());
  CHECK(mid.remote->in_flight == 256);
  CHECK(mid.remote->claim_idle == std::chrono::milliseconds(30'000));
  CHECK(mid.remote->max_deliveries == 3);  // retries + 1
  CHECK(mid.concurrency == 16);            // in_flight / batch_size batches in flight
  CHECK_FALSE(graph.nodes[0].remote);
}

TEST_CASE("GraphSpec.RemoteFieldsAndSettingsBroker") {
  const GraphSpec graph = parse_graph(
      R"({"plumber": 1, "settings": {"broker": "redis://10.0.0.5:6379"}, "nodes": [
        {"id": "src", "coroutine": "range", "params": {"stop": 3}},
        {"id": "a", "coroutine": "fib", "remote": {"in_flight": 8, "claim_idle_ms": 500,
                                                    "max_deliveries": 5}},
        {"id": "b", "coroutine": "sum_squares", "remote": {"broker": "redis://:pw@h:7000/2"}}],
      "edges": [{"from": "src", "to": "a"}, {"from": "a", "to": "b"}]})",
      builtins());
  CHECK(graph.nodes[1].remote->broker == "redis://10.0.0.5:6379");
  CHECK(graph.nodes[1].remote->in_flight == 8);
  CHECK(graph.nodes[1].remote->claim_idle == std::chrono::milliseconds(500));
  CHECK(graph.nodes[1].remote->max_deliveries == 5);
  CHECK(graph.nodes[2].remote->broker == "redis://:pw@h:7000/2");
}

TEST_CASE("GraphSpec.RemoteDiagnostics") {
  CHECK(diagnostics_of(chain_with(R"({"id": "mid", "coroutine": "fib", "remote": 3})")) ==
        Lines{"g.json: /nodes/1/remote: remote must be true or an object {broker, in_flight, "
              "claim_idle_ms, max_deliveries}, not integer"});
  CHECK(
      diagnostics_of(chain_with(
          R"({"id": "mid", "coroutine": "fib", "remote": {"broker": "http://x", "in_flite": 1}})")) ==
      Lines{"g.json: /nodes/1/remote/in_flite: unknown field \"in_flite\" (did you mean "
            "\"in_flight\"?)",
            "g.json: /nodes/1/remote/broker: bad broker URL \"http://x\": a broker URL starts "
            "with redis:// (redis://[:password@]host:port[/db])"});
  CHECK(diagnostics_of(
            chain_with(R"({"id": "mid", "coroutine": "fib", "procs": 2, "remote": true})")) ==
        Lines{"g.json: /nodes/1/remote: a node runs its step either in local worker processes "
              "or on remote workers, not both (remove \"procs\" (a worker machine runs `plumber "
              "worker --procs N`))"});
  CHECK(diagnostics_of(chain_with(
            R"({"id": "mid", "coroutine": "fib", "remote": {"broker": "redis://h:99999"}})")) ==
        Lines{"g.json: /nodes/1/remote/broker: bad broker URL \"redis://h:99999\": the port must "
              "be an integer between 1 and 65535, not \"99999\""});
  CHECK(codes_of(R"({"plumber": 1, "nodes": [
      {"id": "src", "coroutine": "range", "params": {"stop": 3}, "remote": true}]})") ==
        Lines{"graph.not_for_sources"});
}

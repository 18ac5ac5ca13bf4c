// The Registry and its adapters, the built-in coroutines and predicates (run
// directly, without a pipeline), and plugins.
#include <algorithm>
#include <cstddef>
#include <exception>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "plumber/all.hpp"
#include "test_paths.hpp"
#include "test_support.hpp"

using namespace plumber;
namespace asio = boost::asio;

namespace {

/// Runs an awaitable to completion on a fresh io_context; rethrows what it throws.
void run_awaitable(asio::awaitable<void> task) {
  asio::io_context io;
  std::exception_ptr failure;
  bool finished = false;
  asio::co_spawn(io, std::move(task), [&](std::exception_ptr e) {
    failure = e;
    finished = true;
  });
  io.run();
  REQUIRE(finished);
  if (failure) std::rethrow_exception(failure);
}

/// Makes messages with ids 1, 2, ... from values.
std::vector<Message> messages(const std::vector<json>& values) {
  std::vector<Message> batch;
  for (std::size_t i = 0; i < values.size(); ++i) {
    Message m;
    m.id = 100 + i;
    m.value = values[i];
    batch.push_back(std::move(m));
  }
  return batch;
}

/// Runs the coroutine `name` as one batch over `values` and returns its outputs.
std::vector<Message> transform(const Registry& registry, const std::string& name,
                               const std::vector<json>& values,
                               const json& params = json::object()) {
  const CoroutineInfo* info = registry.find(name);
  REQUIRE_MESSAGE(info != nullptr, name);
  REQUIRE(info->make_transform);
  auto step = info->make_transform(params);
  std::vector<Message> batch = messages(values);
  std::vector<Message> out;
  if (step->is_async()) {
    run_awaitable(step->process_async(batch, out));
  } else {
    step->process(batch, out);
  }
  return out;
}

/// Values of the outputs of `transform`, checking each kept its input's id.
std::vector<json> transform_values(const Registry& registry, const std::string& name,
                                   const std::vector<json>& values,
                                   const json& params = json::object()) {
  const auto out = transform(registry, name, values, params);
  std::vector<json> result;
  for (std::size_t i = 0; i < out.size(); ++i) {
    CHECK(out[i].id == 100 + i);
    result.push_back(out[i].value);
  }
  return result;
}

/// Pulls every value of a (synchronous) source.
std::vector<json> drain(Source& source, std::size_t limit = 1000) {
  std::vector<json> values;
  while (auto value = source.next()) {
    values.push_back(std::move(*value));
    REQUIRE(values.size() <= limit);
  }
  return values;
}

/// Collects what an asynchronous source emits.
class CollectingContext final : public SourceContext {
 public:
  using SourceContext::emit;
  asio::awaitable<void> emit(json value, std::uint8_t /*priority*/) override {
    values.push_back(std::move(value));
    co_return;
  }
  bool stopping() const noexcept override { return values.size() >= stop_after; }

  std::vector<json> values;
  std::size_t stop_after = static_cast<std::size_t>(-1);
};

std::string what_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const std::exception& e) {
    return e.what();
  }
  FAIL("expected an exception");
  return {};
}

using Values = std::vector<json>;

CoroutineOptions with_params(std::vector<ParamSpec> params, std::string description = {}) {
  CoroutineOptions options;
  options.params = std::move(params);
  options.description = std::move(description);
  return options;
}

}  // namespace

// --- the registry ------------------------------------------------------------------

TEST_CASE("Registry.BuiltinsAreRegistered") {
  const Registry registry = Registry::with_builtins();
  struct Expected {
    const char* name;
    CoroutineKind kind;
  };
  const Expected expected[] = {
      {"input", CoroutineKind::source},          {"lines", CoroutineKind::source},
      {"jsonl", CoroutineKind::source},          {"range", CoroutineKind::source},
      {"values", CoroutineKind::source},         {"uuid", CoroutineKind::source},
      {"identity", CoroutineKind::transform},    {"reverse", CoroutineKind::transform},
      {"upper", CoroutineKind::transform},       {"lower", CoroutineKind::transform},
      {"sleep", CoroutineKind::transform},       {"fib", CoroutineKind::transform},
      {"sum_squares", CoroutineKind::transform}, {"sha256", CoroutineKind::transform},
      {"concat", CoroutineKind::transform},      {"print", CoroutineKind::sink},
      {"discard", CoroutineKind::sink}};
  for (const auto& e : expected) {
    INFO(e.name);
    const CoroutineInfo* info = registry.find(e.name);
    REQUIRE(info != nullptr);
    CHECK(info->name == e.name);
    CHECK(info->kind == e.kind);
    CHECK_FALSE(info->description.empty());
    if (e.kind == CoroutineKind::source) {
      CHECK(static_cast<bool>(info->make_source));
    } else {
      CHECK(static_cast<bool>(info->make_transform));
    }
  }
  // Plain functions of values may run in workers; timers may not.
  CHECK(registry.find("fib")->worker_capable);
  CHECK(registry.find("sum_squares")->worker_capable);
  CHECK_FALSE(registry.find("sleep")->worker_capable);
  CHECK(registry.find("nope") == nullptr);

  for (const char* name : {"is_string", "is_number", "is_object", "is_even", "is_odd"}) {
    INFO(name);
    CHECK(registry.find_predicate(name) != nullptr);
  }
  CHECK(registry.find_predicate("is_purple") == nullptr);
}

TEST_CASE("Registry.ListsAreSortedByName") {
  const Registry registry = Registry::with_builtins();
  std::vector<std::string> names;
  for (const CoroutineInfo* info : registry.coroutines())
    names.push_back(info->name);
  CHECK(names.size() == 20);  // with `exec`, `files` and `to_blob`
  CHECK(std::is_sorted(names.begin(), names.end()));
  std::vector<std::string> predicates;
  for (const PredicateInfo* info : registry.predicates())
    predicates.push_back(info->name);
  CHECK(predicates ==
        std::vector<std::string>{"is_even", "is_number", "is_object", "is_odd", "is_string"});
}

TEST_CASE("Registry.KindAndTypeNames") {
  CHECK(to_string(CoroutineKind::source) == "source");
  CHECK(to_string(CoroutineKind::transform) == "transform");
  CHECK(to_string(CoroutineKind::sink) == "sink");
  CHECK(to_string(ParamType::integer) == "integer");
  CHECK(to_string(ParamType::array) == "array");
  CHECK(to_string(ParamType::any) == "any");
}

TEST_CASE("Registry.AddFunctionOfValue") {
  Registry registry;
  CoroutineOptions options;
  options.description = "adds one";
  options.worker_capable = true;
  registry.add_function(
      "plus_one", [](const json& v) { return json(v.get<int>() + 1); }, options);
  const CoroutineInfo* info = registry.find("plus_one");
  REQUIRE(info != nullptr);
  CHECK(info->kind == CoroutineKind::transform);
  CHECK(info->description == "adds one");
  CHECK(info->worker_capable);
  CHECK(transform_values(registry, "plus_one", {1, 41, -1}) == Values{2, 42, 0});
}

TEST_CASE("Registry.AddFunctionWithParams") {
  Registry registry;
  CoroutineOptions options;
  options.params = {{"factor", ParamType::integer, false, 2, "multiplier"}};
  registry.add_function(
      "scale",
      [](const json& v, const json& params) {
        return json(v.get<int>() * params.at("factor").get<int>());
      },
      options);
  const CoroutineInfo* info = registry.find("scale");
  REQUIRE(info != nullptr);
  REQUIRE(info->params.size() == 1);
  CHECK(info->params[0].name == "factor");
  CHECK(info->params[0].default_value == 2);
  CHECK(transform_values(registry, "scale", {1, 2, 3}, json::parse(R"({"factor": 10})")) ==
        Values{10, 20, 30});

  // The declared default reaches the function through a loaded graph.
  registry.add_generator("one_two", [](const json&) {
    return [n = 0]() mutable -> std::optional<json> {
      if (n == 2) return std::nullopt;
      return json(++n);
    };
  });
  const GraphSpec graph = parse_graph(R"({"plumber": 1, "nodes": [
      {"id": "s", "coroutine": "one_two"}, {"id": "x", "coroutine": "scale"}],
    "edges": [{"from": "s", "to": "x"}]})",
                                      registry);
  CHECK(graph.nodes[1].params == json::parse(R"({"factor": 2})"));
}

TEST_CASE("Registry.AddFunctionAsSink") {
  Registry registry;
  std::vector<json> seen;
  CoroutineOptions options;
  options.kind = CoroutineKind::sink;
  registry.add_function(
      "collect",
      [&](const json& v) {
        seen.push_back(v);
        return v;
      },
      options);
  CHECK(registry.find("collect")->kind == CoroutineKind::sink);
  CHECK(transform_values(registry, "collect", {"a", "b"}) == Values{"a", "b"});
  CHECK(seen == Values{"a", "b"});
}

TEST_CASE("Registry.AddBatchFunction") {
  Registry registry;
  std::vector<std::size_t> sizes;
  registry.add_batch_function("sum_batch", [&](std::vector<json> values, const json&) {
    sizes.push_back(values.size());
    int total = 0;
    for (const json& v : values)
      total += v.get<int>();
    std::vector<json> out;
    for (std::size_t i = 0; i < values.size(); ++i)
      out.push_back(total);
    return out;
  });
  CHECK(registry.find("sum_batch")->kind == CoroutineKind::transform);
  CHECK(transform_values(registry, "sum_batch", {1, 2, 3}) == Values{6, 6, 6});
  CHECK(sizes == std::vector<std::size_t>{3});
}

TEST_CASE("Registry.BatchFunctionMustReturnOnePerInput") {
  Registry registry;
  registry.add_batch_function("short", [](std::vector<json> values, const json&) {
    values.pop_back();
    return values;
  });
  CHECK(what_of([&] {
          (void)transform(registry, "short", {1, 2, 3});
        }) == "batch function returned 2 values for 3 inputs");
}

TEST_CASE("Registry.AddAsync") {
  Registry registry;
  registry.add_async(
      "later",
      [](json v, const json& params) -> asio::awaitable<json> {
        asio::steady_timer timer(co_await asio::this_coro::executor, std::chrono::milliseconds(1));
        co_await timer.async_wait(asio::use_awaitable);
        co_return json(v.get<std::string>() + params.at("mark").get<std::string>());
      },
      with_params({{"mark", ParamType::string, false, "!", "appended"}}, "appends a mark later"));
  const CoroutineInfo* info = registry.find("later");
  REQUIRE(info != nullptr);
  CHECK(info->make_transform(json::parse(R"({"mark": "?"})"))->is_async());
  CHECK(transform_values(registry, "later", {"a", "b"}, json::parse(R"({"mark": "?"})")) ==
        Values{"a?", "b?"});
}

TEST_CASE("Registry.AddGenerator") {
  Registry registry;
  registry.add_generator(
      "countdown",
      [](const json& params) {
        return [n = params.at("from").get<int>()]() mutable -> std::optional<json> {
          if (n == 0) return std::nullopt;
          return json(n--);
        };
      },
      with_params({{"from", ParamType::integer, true, nullptr, "first value"}}));
  const CoroutineInfo* info = registry.find("countdown");
  REQUIRE(info != nullptr);
  CHECK(info->kind == CoroutineKind::source);  // whatever options.kind says
  REQUIRE(info->make_source);
  auto source = info->make_source(json::parse(R"({"from": 3})"));
  CHECK_FALSE(source->is_async());
  CHECK(drain(*source) == Values{3, 2, 1});
}

TEST_CASE("Registry.AddAsyncSource") {
  Registry registry;
  registry.add_async_source(
      "ticks",
      [](SourceContext& context, const json& params) -> asio::awaitable<void> {
        for (int i = 0; i < params.at("count").get<int>() && !context.stopping(); ++i) {
          co_await context.emit(json(i * 10));
        }
      },
      CoroutineOptions{});  // add_async_source makes a source whatever options.kind says
  const CoroutineInfo* info = registry.find("ticks");
  REQUIRE(info != nullptr);
  CHECK(info->kind == CoroutineKind::source);
  auto source = info->make_source(json::parse(R"({"count": 4})"));
  CHECK(source->is_async());
  CollectingContext context;
  run_awaitable(source->run(context));
  CHECK(context.values == Values{0, 10, 20, 30});

  // It stops early when asked to.
  CollectingContext stopping;
  stopping.stop_after = 2;
  run_awaitable(info->make_source(json::parse(R"({"count": 100})"))->run(stopping));
  CHECK(stopping.values == Values{0, 10});
}

TEST_CASE("Registry.DuplicateNamesThrow") {
  Registry registry = Registry::with_builtins();
  auto identity = [](const json& v) { return v; };
  CHECK_THROWS_WITH_AS(registry.add_function("reverse", identity),
                       "coroutine \"reverse\" is already registered", UsageError);
  registry.add_function("mine", identity);
  CHECK_THROWS_AS(registry.add_function("mine", identity), UsageError);
  CHECK_THROWS_AS(
      registry.add_batch_function("mine", [](std::vector<json> v, const json&) { return v; }),
      UsageError);
  CHECK_THROWS_AS(
      registry.add_async("mine", [](json v, const json&) -> asio::awaitable<json> { co_return v; }),
      UsageError);
  CHECK_THROWS_AS(
      registry.add_generator(
          "range",
          [](const json&) { return []() -> std::optional<json> { return std::nullopt; }; }),
      UsageError);
  CHECK_THROWS_AS(
      registry.add_async_source(
          "mine", [](SourceContext&, const json&) -> asio::awaitable<void> { co_return; }),
      UsageError);
  CHECK_THROWS_WITH_AS(
      registry.add_predicate({"is_even", "again", [](const json&) { return true; }}),
      "predicate \"is_even\" is already registered", UsageError);
  // The first registration is untouched.
  CHECK(transform_values(registry, "reverse", {"abc"}) == Values{"cba"});
}

TEST_CASE("Registry.IncompleteInfoThrows") {
  Registry registry;
  CoroutineInfo nameless;
  nameless.make_transform = [](const json&) { return std::make_unique<Transform>(); };
  CHECK_THROWS_AS(registry.add(nameless), UsageError);

  CoroutineInfo no_factory;
  no_factory.name = "broken";
  CHECK_THROWS_WITH_AS(registry.add(no_factory),
                       "Registry::add: coroutine \"broken\" has no make_transform factory",
                       UsageError);
  no_factory.kind = CoroutineKind::source;
  CHECK_THROWS_WITH_AS(registry.add(no_factory),
                       "Registry::add: coroutine \"broken\" has no make_source factory",
                       UsageError);
  CHECK_THROWS_AS(registry.add_predicate({"p", "no test", nullptr}), UsageError);
  CHECK(registry.find("broken") == nullptr);
}

TEST_CASE("Registry.TransformWithoutProcessThrows") {
  Transform bare;
  std::vector<Message> batch = messages({1});
  std::vector<Message> out;
  CHECK_THROWS_AS(bare.process(batch, out), UsageError);
  Source none;
  CHECK_THROWS_AS((void)none.next(), UsageError);
}

TEST_CASE("Registry.Nearest") {
  const Registry registry = Registry::with_builtins();
  CHECK(registry.nearest("revers") == "reverse");
  CHECK(registry.nearest("uper") == "upper");
  CHECK(registry.nearest("sha265") == "sha256");
  CHECK(registry.nearest("identity") == "identity");
  CHECK(registry.nearest("transmogrify") == "");
  CHECK(registry.nearest_predicate("is_evn") == "is_even");
  CHECK(registry.nearest_predicate("completely_different") == "");
  CHECK(Registry().nearest("anything") == "");
}

TEST_CASE("Registry.BlobFromBytesSharesThem") {
  const Blob blob(std::vector<std::byte>{std::byte{1}, std::byte{2}, std::byte{3}});
  REQUIRE(blob.size() == 3);
  CHECK(blob.data()[2] == std::byte{3});
  CHECK(blob.use_count() == 1);
  const Blob copy = blob;  // a copy shares the bytes
  CHECK(copy.data() == blob.data());
  CHECK(blob.use_count() == 2);
}

// --- built-in transforms ------------------------------------------------------------

TEST_CASE("Builtins.StringTransforms") {
  const Registry registry = Registry::with_builtins();
  CHECK(transform_values(registry, "identity", {1, "a", nullptr}) == Values{1, "a", nullptr});
  CHECK(transform_values(registry, "reverse", {"plumber", "", "h\xc3\xa9llo w\xc3\xb6rld"}) ==
        Values{"rebmulp", "", "dlr\xc3\xb6w oll\xc3\xa9h"});  // by character, UTF-8 kept whole
  CHECK(transform_values(registry, "reverse", {json::parse("[1, 2, 3]")}) ==
        Values{json::parse("[3, 2, 1]")});
  CHECK(transform_values(registry, "upper", {"Zip by id"}) == Values{"ZIP BY ID"});
  CHECK(transform_values(registry, "lower", {"Zip BY Id"}) == Values{"zip by id"});
  CHECK(what_of([&] { (void)transform(registry, "upper", {42}); }) ==
        "upper takes a string, not number");
  CHECK(what_of([&] { (void)transform(registry, "reverse", {json::object()}); }) ==
        "reverse takes a string, not object");
}

TEST_CASE("Builtins.NumericTransforms") {
  const Registry registry = Registry::with_builtins();
  CHECK(transform_values(registry, "fib", {0, 1, 2, 10, 20}) == Values{0, 1, 1, 55, 6765});
  CHECK(what_of([&] { (void)transform(registry, "fib", {93}); }) == "fib: 93 is outside [0, 92]");
  CHECK(what_of([&] { (void)transform(registry, "fib", {"7"}); }) ==
        "fib takes an integer, not string");
  CHECK(transform_values(registry, "sum_squares", {0, 1, 4, 10}) == Values{0, 0, 14, 285});
  CHECK(what_of([&] { (void)transform(registry, "sum_squares", {-1}); }) ==
        "sum_squares: -1 is outside [0, 3000000]");
}

TEST_CASE("Builtins.Sha256") {
  const Registry registry = Registry::with_builtins();
  CHECK(transform_values(registry, "sha256", {"abc", ""}) ==
        Values{"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
               "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"});
  // Of the first blob when the value is not a string.
  auto step = registry.find("sha256")->make_transform(json::object());
  std::vector<Message> batch(1);
  batch[0].id = 7;
  batch[0].value = nullptr;
  const std::string bytes = "abc";
  std::vector<std::byte> data(bytes.size());
  std::transform(bytes.begin(), bytes.end(), data.begin(),
                 [](char c) { return static_cast<std::byte>(c); });
  auto owner = std::make_shared<std::vector<std::byte>>(std::move(data));
  batch[0].blobs.emplace_back(owner, std::span<const std::byte>(owner->data(), owner->size()));
  std::vector<Message> out;
  step->process(batch, out);
  REQUIRE(out.size() == 1);
  CHECK(out[0].id == 7);
  CHECK(out[0].value == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(what_of([&] { (void)transform(registry, "sha256", {5}); }) ==
        "sha256 takes a string or a blob, not number");
}

TEST_CASE("Builtins.Concat") {
  const Registry registry = Registry::with_builtins();
  CHECK(transform_values(registry, "concat", {json::parse(R"({"b": "x", "a": "y"})")},
                         json::parse(R"({"separator": " / "})")) ==
        Values{"x / y"});  // key order kept
  CHECK(transform_values(registry, "concat", {json::parse(R"({"n": 1, "s": "t"})")},
                         json::parse(R"({"separator": ""})")) == Values{"1t"});
  CHECK(what_of([&] {
          (void)transform(registry, "concat", {"x"}, json::parse(R"({"separator": ""})"));
        }) == "concat takes an object (a zip), not string");
}

TEST_CASE("Builtins.SleepPassesValuesOn") {
  const Registry registry = Registry::with_builtins();
  CHECK(transform_values(registry, "sleep", {1, "two"}, json::parse(R"({"ms": 1})")) ==
        Values{1, "two"});
}

TEST_CASE("Builtins.SinksEmitNothing") {
  const Registry registry = Registry::with_builtins();
  CHECK(transform(registry, "discard", {1, 2, 3}).empty());
}

TEST_CASE("Builtins.Predicates") {
  const Registry registry = Registry::with_builtins();
  auto test = [&](const char* name, const json& value) {
    return registry.find_predicate(name)->test(value);
  };
  CHECK(test("is_even", 2));
  CHECK(test("is_even", 0));
  CHECK_FALSE(test("is_even", 3));
  CHECK_FALSE(test("is_even", "2"));
  CHECK(test("is_odd", -3));
  CHECK_FALSE(test("is_odd", 4));
  CHECK_FALSE(test("is_odd", 2.5));
  CHECK(test("is_string", "x"));
  CHECK_FALSE(test("is_string", 1));
  CHECK(test("is_number", 1.5));
  CHECK_FALSE(test("is_number", "1"));
  CHECK(test("is_object", json::object()));
  CHECK_FALSE(test("is_object", json::array()));
}

// --- built-in sources -------------------------------------------------------------

TEST_CASE("Builtins.RangeValuesUuid") {
  const Registry registry = Registry::with_builtins();
  auto range =
      registry.find("range")->make_source(json::parse(R"({"start": 5, "stop": 0, "step": -2})"));
  CHECK(range->size_hint() == std::optional<std::uint64_t>(3));
  CHECK(drain(*range) == Values{5, 3, 1});
  CHECK(range->size_hint() == std::optional<std::uint64_t>(3));  // the total, not what is left
  auto empty =
      registry.find("range")->make_source(json::parse(R"({"start": 3, "stop": 3, "step": 1})"));
  CHECK(drain(*empty).empty());

  auto values = registry.find("values")->make_source(json::parse(R"({"values": ["a", 1, null]})"));
  CHECK(values->size_hint() == std::optional<std::uint64_t>(3));
  CHECK(drain(*values) == Values{"a", 1, nullptr});

  auto uuid = registry.find("uuid")->make_source(json::parse(R"({"count": 3})"));
  CHECK(uuid->size_hint() == std::optional<std::uint64_t>(3));
  const auto ids = drain(*uuid);
  REQUIRE(ids.size() == 3);
  std::set<std::string> distinct;
  for (const json& id : ids) {
    REQUIRE(id.is_string());
    CHECK(id.get<std::string>().size() == 36);
    distinct.insert(id.get<std::string>());
  }
  CHECK(distinct.size() == 3);
}

TEST_CASE("Builtins.LinesAndJsonl") {
  const Registry registry = Registry::with_builtins();
  const auto path = (std::filesystem::temp_directory_path() / "plumber_test_lines.txt").string();
  {
    std::ofstream out(path);
    out << "\"a\"\r\n{bad\n\n[1, 2]\n";
  }
  auto lines = registry.find("lines")->make_source(json{{"path", path}});
  lines->on_start();
  CHECK_FALSE(lines->is_blocking());  // a regular file
  CHECK(drain(*lines) == Values{"\"a\"", "{bad", "", "[1, 2]"});

  auto jsonl = registry.find("jsonl")->make_source(json{{"path", path}});
  jsonl->on_start();
  CHECK(jsonl->next() == std::optional<json>("a"));
  // A malformed line is one bad item: the source goes on after it.
  try {
    (void)jsonl->next();
    FAIL("expected a SourceItemError");
  } catch (const SourceItemError& e) {
    CHECK(std::string(e.what()).starts_with(path +
                                            ":2: malformed JSON: parse error at line 1, column"));
  }
  CHECK(jsonl->next() == std::optional<json>(json::parse("[1, 2]")));  // blank line skipped
  CHECK_FALSE(jsonl->next().has_value());
  std::filesystem::remove(path);

  auto missing = registry.find("lines")->make_source(json{{"path", path + ".missing"}});
  CHECK(what_of([&] { missing->on_start(); }) ==
        "cannot open " + path + ".missing: No such file or directory");
  // stdin is read off the event loop.
  CHECK(registry.find("lines")->make_source(json{{"path", "-"}})->is_blocking());
}

// --- plugins ---------------------------------------------------------------------

TEST_CASE("Plugin.LoadsCoroutinesAndPredicates") {
  Registry registry = Registry::with_builtins();
  load_plugin(plumber::test::paths::test_plugin, registry);
  const CoroutineInfo* info = registry.find("shout");
  REQUIRE(info != nullptr);
  CHECK(info->kind == CoroutineKind::transform);
  CHECK(info->worker_capable);
  REQUIRE(info->params.size() == 1);
  CHECK(info->params[0].default_value == "!");
  CHECK(transform_values(registry, "shout", {"hey"}, json::parse(R"({"suffix": "?"})")) ==
        Values{"HEY?"});
  REQUIRE(registry.find_predicate("is_long") != nullptr);
  CHECK(registry.find_predicate("is_long")->test("plumber"));
  CHECK_FALSE(registry.find_predicate("is_long")->test("pipe"));

  // Graphs may use what the plugin registered.
  const GraphSpec graph = parse_graph(R"({"plumber": 1, "nodes": [
      {"id": "s", "coroutine": "values", "params": {"values": ["a"]}},
      {"id": "x", "coroutine": "shout", "when": "is_long"}],
    "edges": [{"from": "s", "to": "x"}]})",
                                      registry);
  CHECK(graph.nodes[1].params == json::parse(R"({"suffix": "!"})"));

  // Loading it again registers the same names again: refused, naming the library.
  const std::string again =
      what_of([&] { load_plugin(plumber::test::paths::test_plugin, registry); });
  CHECK(again == std::string("plugin ") + plumber::test::paths::test_plugin +
                     ": coroutine \"shout\" is already registered");
}

TEST_CASE("Plugin.LoadErrors") {
  Registry registry;
  CHECK_THROWS_AS(load_plugin("/nonexistent/plugin.so", registry), UsageError);
  const std::string missing = what_of([&] { load_plugin("/nonexistent/plugin.so", registry); });
  CHECK(missing.starts_with("plugin /nonexistent/plugin.so: cannot load: "));

  const std::string no_entry =
      what_of([&] { load_plugin(plumber::test::paths::test_plugin_no_entry, registry); });
  CHECK(no_entry == std::string("plugin ") + plumber::test::paths::test_plugin_no_entry +
                        ": no entry point plumber_plugin_register_v1 (define it with "
                        "PLUMBER_PLUGIN(registry) { ... })");

  const std::string not_elf = what_of([&] {
    load_plugin(std::string(plumber::test::paths::source_dir) + "/graphs/fib.json", registry);
  });
  CHECK(not_elf.starts_with(std::string("plugin ") + plumber::test::paths::source_dir +
                            "/graphs/fib.json: cannot load: "));
  CHECK(registry.coroutines().empty());
}

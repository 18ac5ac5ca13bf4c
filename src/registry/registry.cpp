#include "plumber/registry.hpp"

#include <algorithm>
#include <utility>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include "plumber/builtins.hpp"
#include "plumber/error.hpp"
#include "registry/edit_distance.hpp"
#include "registry/in_place_transform.hpp"

namespace plumber {

std::size_t detail::edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string_view to_string(CoroutineKind kind) noexcept {
  switch (kind) {
    case CoroutineKind::source:
      return "source";
    case CoroutineKind::transform:
      return "transform";
    case CoroutineKind::sink:
      return "sink";
  }
  return "?";
}

std::string_view to_string(ParamType type) noexcept {
  switch (type) {
    case ParamType::any:
      return "any";
    case ParamType::boolean:
      return "boolean";
    case ParamType::integer:
      return "integer";
    case ParamType::number:
      return "number";
    case ParamType::string:
      return "string";
    case ParamType::array:
      return "array";
    case ParamType::object:
      return "object";
  }
  return "?";
}

void Transform::process(std::span<Message>, std::vector<Message>&) {
  throw UsageError("Transform::process is not implemented by this step");
}

boost::asio::awaitable<void> Transform::process_async(std::span<Message> batch,
                                                      std::vector<Message>& out) {
  process(batch, out);
  co_return;
}

std::optional<json> Source::next() {
  throw UsageError("Source::next is not implemented by this source");
}

boost::asio::awaitable<void> Source::run(SourceContext& context) {
  while (!context.stopping()) {
    auto value = next();
    if (!value) break;
    co_await context.emit(std::move(*value));
  }
}

namespace {

class ValueFunctionStep final : public detail::InPlaceTransform {
 public:
  ValueFunctionStep(std::function<json(const json&, const json&)> function, json params)
      : function_(std::move(function)), params_(std::move(params)) {}
  void apply(Message& message) override { message.value = function_(message.value, params_); }

 private:
  std::function<json(const json&, const json&)> function_;
  json params_;
};

class BatchFunctionStep final : public Transform {
 public:
  using Function = std::function<std::vector<json>(std::vector<json>, const json&)>;
  BatchFunctionStep(Function function, json params)
      : function_(std::move(function)), params_(std::move(params)) {}
  void process(std::span<Message> batch, std::vector<Message>& out) override {
    std::vector<json> values;
    values.reserve(batch.size());
    for (Message& m : batch)
      values.push_back(std::move(m.value));
    std::vector<json> results = function_(std::move(values), params_);
    if (results.size() != batch.size()) {
      throw std::runtime_error("batch function returned " + std::to_string(results.size()) +
                               " values for " + std::to_string(batch.size()) + " inputs");
    }
    for (std::size_t i = 0; i < batch.size(); ++i) {
      batch[i].value = std::move(results[i]);
      out.push_back(std::move(batch[i]));
    }
  }

 private:
  Function function_;
  json params_;
};

class AsyncFunctionStep final : public Transform {
 public:
  using Function = std::function<boost::asio::awaitable<json>(json, const json&)>;
  AsyncFunctionStep(Function function, json params)
      : function_(std::move(function)), params_(std::move(params)) {}
  bool is_async() const noexcept override { return true; }
  boost::asio::awaitable<void> process_async(std::span<Message> batch,
                                             std::vector<Message>& out) override {
    for (Message& m : batch) {
      m.value = co_await function_(std::move(m.value), params_);
      out.push_back(std::move(m));
    }
  }

 private:
  Function function_;
  json params_;
};

class GeneratorSource final : public Source {
 public:
  explicit GeneratorSource(std::function<std::optional<json>()> next) : next_(std::move(next)) {}
  std::optional<json> next() override { return next_(); }

 private:
  std::function<std::optional<json>()> next_;
};

class AsyncSource final : public Source {
 public:
  using Function = std::function<boost::asio::awaitable<void>(SourceContext&, const json&)>;
  AsyncSource(Function function, json params)
      : function_(std::move(function)), params_(std::move(params)) {}
  bool is_async() const noexcept override { return true; }
  boost::asio::awaitable<void> run(SourceContext& context) override {
    co_await function_(context, params_);
  }

 private:
  Function function_;
  json params_;
};

CoroutineInfo info_from(std::string name, CoroutineOptions& options) {
  CoroutineInfo info;
  info.name = std::move(name);
  info.kind = options.kind;
  info.description = std::move(options.description);
  info.params = std::move(options.params);
  info.worker_capable = options.worker_capable;
  info.accepts = options.accepts;
  info.emits = options.emits;
  info.emits_input_type = options.emits_input_type;
  info.capabilities = options.capabilities;
  info.check_params = std::move(options.check_params);
  return info;
}

}  // namespace

std::string ValueTypes::to_string() const {
  static constexpr std::pair<Type, const char*> kNames[] = {
      {null, "null"},   {boolean, "boolean"}, {number, "number"}, {string, "string"},
      {array, "array"}, {object, "object"},   {blob, "blob"}};
  std::string text;
  for (const auto& [type, name] : kNames) {
    if (!(bits_ & type)) continue;
    if (!text.empty()) text += '|';
    text += name;
  }
  return text.empty() ? "any" : text;
}

namespace {

template <class Map>
std::string nearest_key(const Map& map, std::string_view name) {
  std::string best;
  std::size_t best_distance = 0;
  for (const auto& [key, value] : map) {
    const std::size_t d = detail::edit_distance(name, key);
    if (best.empty() || d < best_distance) {
      best = key;
      best_distance = d;
    }
  }
  // Only suggest what is plausibly a typo.
  const std::size_t limit = std::max<std::size_t>(2, name.size() / 3);
  return best_distance <= limit ? best : std::string{};
}

}  // namespace

Registry Registry::with_builtins() {
  Registry registry;
  register_builtins(registry);
  return registry;
}

void Registry::add(CoroutineInfo info) {
  if (info.name.empty()) throw UsageError("Registry::add: a coroutine needs a name");
  const bool is_source = info.kind == CoroutineKind::source;
  if (is_source ? !info.make_source : !info.make_transform) {
    throw UsageError("Registry::add: coroutine \"" + info.name + "\" has no " +
                     (is_source ? "make_source" : "make_transform") + " factory");
  }
  if (coroutines_.contains(info.name)) {
    throw UsageError("coroutine \"" + info.name + "\" is already registered");
  }
  auto name = info.name;
  coroutines_.emplace(std::move(name), std::make_shared<const CoroutineInfo>(std::move(info)));
}

void Registry::add_predicate(PredicateInfo info) {
  if (info.name.empty() || !info.test) {
    throw UsageError("Registry::add_predicate: a predicate needs a name and a test");
  }
  if (predicates_.contains(info.name)) {
    throw UsageError("predicate \"" + info.name + "\" is already registered");
  }
  auto name = info.name;
  predicates_.emplace(std::move(name), std::make_shared<const PredicateInfo>(std::move(info)));
}

void Registry::add_value_function(std::string name,
                                  std::function<json(const json&, const json&)> function,
                                  CoroutineOptions options) {
  CoroutineInfo info = info_from(std::move(name), options);
  info.make_transform = [function = std::move(function)](const json& params) {
    return std::make_unique<ValueFunctionStep>(function, params);
  };
  add(std::move(info));
}

void Registry::add_batch_function(
    std::string name,
    std::function<std::vector<json>(std::vector<json> values, const json& params)> function,
    CoroutineOptions options) {
  CoroutineInfo info = info_from(std::move(name), options);
  info.make_transform = [function = std::move(function)](const json& params) {
    return std::make_unique<BatchFunctionStep>(function, params);
  };
  add(std::move(info));
}

void Registry::add_async(
    std::string name,
    std::function<boost::asio::awaitable<json>(json value, const json& params)> function,
    CoroutineOptions options) {
  CoroutineInfo info = info_from(std::move(name), options);
  info.make_transform = [function = std::move(function)](const json& params) {
    return std::make_unique<AsyncFunctionStep>(function, params);
  };
  add(std::move(info));
}

void Registry::add_generator(
    std::string name,
    std::function<std::function<std::optional<json>()>(const json& params)> make_generator,
    CoroutineOptions options) {
  options.kind = CoroutineKind::source;
  CoroutineInfo info = info_from(std::move(name), options);
  info.make_source = [make = std::move(make_generator)](const json& params) {
    return std::make_unique<GeneratorSource>(make(params));
  };
  add(std::move(info));
}

void Registry::add_async_source(
    std::string name,
    std::function<boost::asio::awaitable<void>(SourceContext& context, const json& params)>
        function,
    CoroutineOptions options) {
  options.kind = CoroutineKind::source;
  CoroutineInfo info = info_from(std::move(name), options);
  info.make_source = [function = std::move(function)](const json& params) {
    return std::make_unique<AsyncSource>(function, params);
  };
  add(std::move(info));
}

const CoroutineInfo* Registry::find(std::string_view name) const {
  auto it = coroutines_.find(name);
  return it == coroutines_.end() ? nullptr : it->second.get();
}

const PredicateInfo* Registry::find_predicate(std::string_view name) const {
  auto it = predicates_.find(name);
  return it == predicates_.end() ? nullptr : it->second.get();
}

std::shared_ptr<const CoroutineInfo> Registry::find_shared(std::string_view name) const {
  auto it = coroutines_.find(name);
  return it == coroutines_.end() ? nullptr : it->second;
}

std::shared_ptr<const PredicateInfo> Registry::find_predicate_shared(std::string_view name) const {
  auto it = predicates_.find(name);
  return it == predicates_.end() ? nullptr : it->second;
}

std::vector<const CoroutineInfo*> Registry::coroutines() const {
  std::vector<const CoroutineInfo*> all;
  for (const auto& [name, info] : coroutines_)
    all.push_back(info.get());
  return all;
}

std::vector<const PredicateInfo*> Registry::predicates() const {
  std::vector<const PredicateInfo*> all;
  for (const auto& [name, info] : predicates_)
    all.push_back(info.get());
  return all;
}

std::string Registry::nearest(std::string_view name) const {
  return nearest_key(coroutines_, name);
}

std::string Registry::nearest_predicate(std::string_view name) const {
  return nearest_key(predicates_, name);
}

}  // namespace plumber

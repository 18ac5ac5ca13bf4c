#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "plumber/asio_fwd.hpp"

#include "plumber/json.hpp"
#include "plumber/message.hpp"

namespace plumber {

/// Where a coroutine may stand in a graph.
enum class CoroutineKind {
  source,     // no inputs; emits new messages
  transform,  // takes messages, emits derived ones
  sink        // takes messages, emits nothing downstream: must have no successors
};

/// JSON type a declared param must have.
enum class ParamType { any, boolean, integer, number, string, array, object };

/// The kinds of values a coroutine declares it accepts or emits: a graph whose
/// edge joins a producer to a consumer with no kind in common does not load.
/// The empty set means undeclared (anything goes). `blob` stands for messages
/// that carry blobs, whatever their JSON value.
class ValueTypes {
 public:
  enum Type : std::uint8_t {
    null = 1,
    boolean = 2,
    number = 4,
    string = 8,
    array = 16,
    object = 32,
    blob = 64
  };
  constexpr ValueTypes() = default;
  constexpr ValueTypes(std::initializer_list<Type> types) {
    for (Type t : types)
      bits_ |= t;
  }
  constexpr bool declared() const noexcept { return bits_ != 0; }
  constexpr bool overlaps(ValueTypes other) const noexcept { return (bits_ & other.bits_) != 0; }
  constexpr ValueTypes operator|(ValueTypes other) const noexcept {
    ValueTypes both;
    both.bits_ = static_cast<std::uint8_t>(bits_ | other.bits_);
    return both;
  }
  constexpr bool operator==(const ValueTypes&) const = default;
  /// "string|number"; "any" when undeclared.
  std::string to_string() const;

 private:
  std::uint8_t bits_ = 0;
};

std::string_view to_string(CoroutineKind kind) noexcept;
std::string_view to_string(ParamType type) noexcept;

/// One param a coroutine declares; graphs are checked against these when loaded.
struct ParamSpec {
  std::string name;
  ParamType type = ParamType::any;
  bool required = false;
  json default_value = nullptr;  ///< filled in when the param is absent (unless null)
  std::string description;
};

/// The per-node instance of a transform or sink, made from the node's params.
class Transform {
 public:
  virtual ~Transform() = default;
  /// Runs once before the first message (load a model, open a file).
  virtual void on_start() {}
  /// True when the step overrides process_async instead of process.
  virtual bool is_async() const noexcept { return false; }
  /// Computes the outputs of `batch` (its messages may be moved from) and appends
  /// them to `out`, each keeping the id of the message it derives from.
  virtual void process(std::span<Message> batch, std::vector<Message>& out);
  /// Asynchronous form of process, for steps that wait (timers, I/O).
  virtual boost::asio::awaitable<void, boost::asio::any_io_executor> process_async(
      std::span<Message> batch, std::vector<Message>& out);
};

/// Handed to asynchronous sources: where they emit.
class SourceContext {
 public:
  virtual ~SourceContext() = default;
  /// Emits one value as a new message, in priority lane `priority` (0 is the
  /// lowest; clamped to the graph's `settings.priorities - 1`); suspends while
  /// the successors are full.
  virtual boost::asio::awaitable<void, boost::asio::any_io_executor> emit(
      json value, std::uint8_t priority = 0) = 0;
  /// True once the pipeline asked sources to stop producing.
  virtual bool stopping() const noexcept = 0;
};

/// Thrown by Source::next for one bad item (a malformed line): it becomes an
/// error record and the source goes on. Any other exception ends the source.
class SourceItemError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The per-node instance of a source, made from the node's params.
class Source {
 public:
  virtual ~Source() = default;
  virtual void on_start() {}
  /// True when the source overrides run instead of next.
  virtual bool is_async() const noexcept { return false; }
  /// True when next() blocks on I/O: the runtime then calls it off the event loop
  /// (always from one thread at a time).
  virtual bool is_blocking() const noexcept { return false; }
  /// Pulls the next value; std::nullopt ends the stream.
  virtual std::optional<json> next();
  /// The blobs of the value next() returned last (a `files` source's bytes);
  /// called once after each value.
  virtual std::vector<Blob> take_blobs() { return {}; }
  /// Asynchronous form: emits through `context` until done.
  virtual boost::asio::awaitable<void, boost::asio::any_io_executor> run(SourceContext& context);
  /// How many values the source will emit, when it knows (for progress lines).
  virtual std::optional<std::uint64_t> size_hint() const { return std::nullopt; }
};

/// What a coroutine does besides computing values. The loader, the CLI and the
/// server's policy decide by these flags, never by a coroutine's name.
struct Capabilities {
  /// A source that emits what the host feeds: Pipeline::feed and process(), stdin
  /// or --input under `plumber run`, a client's inputs under `plumber serve`.
  bool host_fed = false;
  /// Opens the file named by its `path` param ("-" is stdin).
  bool reads_files = false;
  /// With reads_files: `path` names a directory, whose files it reads.
  bool reads_directory = false;
  /// Writes to the process's stdout.
  bool writes_stdout = false;
  /// Runs an external program named by its params (`exec`): its node runs in
  /// program copies, never in this process.
  bool runs_programs = false;
};

/// A registered coroutine: what `plumber list` shows and what graphs name.
struct CoroutineInfo {
  std::string name;
  CoroutineKind kind = CoroutineKind::transform;
  std::string description;
  std::vector<ParamSpec> params;
  /// May run in a worker process (a plain function of values, no in-process state).
  bool worker_capable = false;
  /// What the step takes (transforms and sinks) and emits (sources and transforms).
  ValueTypes accepts, emits;
  /// The step emits the kind of value it receives (identity, sleep): its output
  /// kinds are its input's, whatever `emits` says.
  bool emits_input_type = false;
  Capabilities capabilities;
  /// Checks params beyond their declared types when a graph loads; throws
  /// std::invalid_argument with the reason. Optional.
  std::function<void(const json& params)> check_params;
  /// Makes a node's step from its validated params (transforms and sinks).
  std::function<std::unique_ptr<Transform>(const json& params)> make_transform;
  /// Makes a node's source from its validated params (sources).
  std::function<std::unique_ptr<Source>(const json& params)> make_source;
};

/// A registered `when` predicate.
struct PredicateInfo {
  std::string name;
  std::string description;
  std::function<bool(const json& value)> test;
};

/// What the adapters need besides the function itself.
struct CoroutineOptions {
  std::string description;
  std::vector<ParamSpec> params;
  bool worker_capable = false;
  /// See CoroutineInfo::accepts, emits and emits_input_type.
  ValueTypes accepts, emits;
  bool emits_input_type = false;
  Capabilities capabilities;
  /// For add_function / add_async: `sink` forbids successors.
  CoroutineKind kind = CoroutineKind::transform;
  /// See CoroutineInfo::check_params.
  std::function<void(const json& params)> check_params;
};

/// Named coroutines and predicates that graphs may use.
class Registry {
 public:
  /// A registry holding every built-in coroutine and predicate.
  static Registry with_builtins();

  /// Registers a coroutine; throws UsageError when the name is taken or the info
  /// is incomplete.
  void add(CoroutineInfo info);
  /// Registers a `when` predicate; throws UsageError when the name is taken.
  void add_predicate(PredicateInfo info);

  /// A plain function of values: `json(const json& value)` or
  /// `json(const json& value, const json& params)`.
  template <class F>
  void add_function(std::string name, F function, CoroutineOptions options = {});
  /// A batch function: `std::vector<json>(std::vector<json> values, const json& params)`
  /// returning one output per input, in order.
  void add_batch_function(
      std::string name,
      std::function<std::vector<json>(std::vector<json> values, const json& params)> function,
      CoroutineOptions options = {});
  /// An awaitable transform: `awaitable<json>(json value, const json& params)`.
  void add_async(std::string name,
                 std::function<boost::asio::awaitable<json, boost::asio::any_io_executor>(
                     json value, const json& params)>
                     function,
                 CoroutineOptions options = {});
  /// A source that emits until done: the factory turns params into a generator
  /// that returns std::nullopt at the end.
  void add_generator(
      std::string name,
      std::function<std::function<std::optional<json>()>(const json& params)> make_generator,
      CoroutineOptions options = {});
  /// An awaitable source: `awaitable<void>(SourceContext&, const json& params)`.
  void add_async_source(std::string name,
                        std::function<boost::asio::awaitable<void, boost::asio::any_io_executor>(
                            SourceContext& context, const json& params)>
                            function,
                        CoroutineOptions options = {});

  const CoroutineInfo* find(std::string_view name) const;
  const PredicateInfo* find_predicate(std::string_view name) const;
  /// The same, shared: a loaded graph keeps what it resolved (NodeSpec::info).
  std::shared_ptr<const CoroutineInfo> find_shared(std::string_view name) const;
  std::shared_ptr<const PredicateInfo> find_predicate_shared(std::string_view name) const;
  /// Every coroutine, sorted by name.
  std::vector<const CoroutineInfo*> coroutines() const;
  /// Every predicate, sorted by name.
  std::vector<const PredicateInfo*> predicates() const;
  /// The registered coroutine name closest to `name` (edit distance), or "" when
  /// nothing is close.
  std::string nearest(std::string_view name) const;
  /// Same for predicates.
  std::string nearest_predicate(std::string_view name) const;

 private:
  void add_value_function(std::string name,
                          std::function<json(const json& value, const json& params)> function,
                          CoroutineOptions options);

  std::map<std::string, std::shared_ptr<const CoroutineInfo>, std::less<>> coroutines_;
  std::map<std::string, std::shared_ptr<const PredicateInfo>, std::less<>> predicates_;
};

template <class F>
void Registry::add_function(std::string name, F function, CoroutineOptions options) {
  if constexpr (std::is_invocable_r_v<json, F&, const json&, const json&>) {
    add_value_function(std::move(name), std::move(function), std::move(options));
  } else {
    static_assert(std::is_invocable_r_v<json, F&, const json&>,
                  "add_function takes json(const json&) or json(const json&, const json& params)");
    add_value_function(
        std::move(name),
        [f = std::move(function)](const json& value, const json&) mutable { return f(value); },
        std::move(options));
  }
}

}  // namespace plumber

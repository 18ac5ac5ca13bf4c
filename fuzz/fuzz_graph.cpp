// libFuzzer target: a graph file, loaded and validated as `plumber validate`
// does, then written as DOT as `plumber dot` does.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string_view>

#include "plumber/error.hpp"
#include "plumber/graph_spec.hpp"
#include "plumber/registry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const plumber::Registry registry = plumber::Registry::with_builtins();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const plumber::GraphSpec graph = plumber::parse_graph(text, registry, "fuzz.json");
    std::ostringstream dot;
    plumber::write_dot(dot, graph);
  } catch (const plumber::GraphError& e) {
    for (const auto& d : e.diagnostics())
      (void)d.format(e.file());
  }
  return 0;
}

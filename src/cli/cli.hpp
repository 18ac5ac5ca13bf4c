#pragma once
#include <string>

#include "plumber/registry.hpp"
#include "plumber/server.hpp"

namespace plumber::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitRuntimeError =
    1;                                  ///< a graph could not start (a file to read is missing)
inline constexpr int kExitInvalid = 2;  ///< invalid graph or usage
inline constexpr int kExitFailed = 3;   ///< some messages failed
inline constexpr int kExitOutputFailed = 4;   ///< writing stdout failed (disk full, ...)
inline constexpr int kExitInterrupted = 130;  ///< stopped by SIGINT/SIGTERM

struct RunOptions {
  std::string graph;
  std::string input;  ///< empty: stdin
  int threads = 1;
  bool records = false;
  bool stats = false;
  bool progress = false;     ///< the progress line even when stderr is not a terminal
  bool no_progress = false;  ///< never the progress line
  std::string trace;         ///< write a Chrome trace of the run here (empty: none)
  std::string blobs_dir;     ///< write output blobs to files here (empty: counted, not written)
};

/// `plumber ...`: parses the command line and runs the command.
int main(int argc, char** argv);
/// `plumber run`.
int run_graph(const RunOptions& options, const Registry& registry);
/// `plumber serve`: until SIGINT/SIGTERM and a graceful shutdown.
int serve(const ServerOptions& options, int threads, const Registry& registry);

}  // namespace plumber::cli

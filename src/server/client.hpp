#pragma once
/// `plumber submit`: a WebSocket client of `plumber serve` (docs/protocol.md).
#include <string>

namespace plumber::server {

struct SubmitOptions {
  std::string url;    ///< ws://HOST:PORT[/ws][?token=T]
  std::string graph;  ///< a graph file (sent inline), or the name of one of the server's graphs
  std::string input;  ///< JSON lines for the `input` source; empty: stdin
  std::string token;  ///< sent as Authorization: Bearer TOKEN
  bool records = false;
  bool stats = false;
  std::string trace;  ///< write the run's Chrome trace here (empty: none)
};

/// Runs one graph on the server, streaming inputs and printing outputs as JSON
/// lines; returns the exit code, as `plumber run` does.
int submit(const SubmitOptions& options);

}  // namespace plumber::server

#pragma once
// TransformProcessor::accept_data, defined where it is used
// (transform_processor.cpp, transform_direct.cpp) and inline: it runs on
// every message of a fused chain, and it needs the whole PipelineCore.
#include "runtime/pipeline_core.hpp"
#include "runtime/transform_processor.hpp"

namespace plumber::detail {

// The usual case answers here; a `when`, a deadline or a request waiting for
// the message: screen_data, out of line.
inline bool TransformProcessor::accept_data(Packet& packet, Outbox& out) {
  if (!when_ && packet.msg.deadline == Clock::time_point::max() && !core_.tracking()) return true;
  return screen_data(packet, out);
}

}  // namespace plumber::detail

#pragma once
#include <span>
#include <vector>

#include "plumber/registry.hpp"

namespace plumber::detail {

/// A step that turns each message into exactly one output, in place (the
/// built-in edits, `Registry::add_function`). Besides the batch form every
/// step has, the runtime can hand it a message by reference: a fused chain of
/// such steps then passes one message down, with no move and no outbox per
/// hop.
class InPlaceTransform : public Transform {
 public:
  /// Computes the output in `message` itself; throws when the step fails.
  virtual void apply(Message& message) = 0;

  void process(std::span<Message> batch, std::vector<Message>& out) final {
    for (Message& m : batch) {
      apply(m);
      out.push_back(std::move(m));
    }
  }
};

}  // namespace plumber::detail

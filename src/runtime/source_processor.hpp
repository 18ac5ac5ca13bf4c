#pragma once
#include <memory>
#include <optional>

#include "runtime/processor.hpp"

namespace plumber::detail {

class FeedQueue;
struct FeedItem;

/// A source: emits new messages, each with a fresh id. Three kinds of sources
/// run here: a synchronous generator pulled on the strand, an awaitable source
/// that emits through this node (it is their SourceContext), and a fed source,
/// whose values come from another thread through a FeedQueue: the host-fed
/// `input` (Pipeline::feed, process(), stdin under `plumber run`) and sources
/// that block on I/O (read on a thread of their own).
class SourceProcessor final : public Processor, public SourceContext {
 public:
  SourceProcessor(PipelineCore& core, const NodeSpec& spec, const CoroutineInfo& info);
  ~SourceProcessor() override;

  bool may_fuse() const noexcept override { return true; }
  void on_start() override { source_->on_start(); }
  asio::awaitable<void> run() override;
  ProcessorStats stats() const override;

  const std::shared_ptr<Source>& source() const noexcept { return source_; }
  /// Values come from `feed` instead of the source's next().
  void set_feed(std::shared_ptr<FeedQueue> feed);
  bool fed() const noexcept { return feed_ != nullptr; }

  // SourceContext
  using SourceContext::emit;
  asio::awaitable<void> emit(json value, std::uint8_t priority) override;
  bool stopping() const noexcept override;

 private:
  asio::awaitable<void> run_generator();
  /// Why pump_generator() returned.
  enum class Pumped { yield, blocked, output_full, ended };
  /// Pulls values from the generator and passes them on, up to a fixed count,
  /// without suspending; says what to wait for before the next call.
  Pumped pump_generator();
  asio::awaitable<void> run_fed();
  std::optional<FeedItem> take_feed_item();
  bool accept_feed_item(FeedItem&& item, Outbox& out);
  void refuse_leftover_feed();

  std::shared_ptr<Source> source_;  // shared with a blocking reader thread
  std::shared_ptr<FeedQueue> feed_;
};

}  // namespace plumber::detail

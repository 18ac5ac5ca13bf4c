#pragma once
#include <cstddef>
#include <mutex>
#include <optional>
#include <string_view>
#include <vector>

#include "runtime/packet.hpp"

namespace plumber::detail {

/// The in-process step invocations under way in one pipeline, and since when
/// (PipelineOptions::watch_steps): another thread (a server's watchdog) asks
/// which has run longest, even while that step holds the pipeline's strand.
class StepWatch {
 public:
  /// One invocation of a node's step, from construction to destruction. A null
  /// watch costs nothing (the pipeline does not watch its steps).
  class Scope {
   public:
    /// `holds_thread`: a synchronous call on the pipeline's strand (it cannot
    /// be interrupted, and its thread serves nothing else meanwhile).
    Scope(StepWatch* watch, std::string_view node, bool holds_thread) : watch_(watch) {
      if (watch_) slot_ = watch_->enter(node, holds_thread);
    }
    ~Scope() {
      if (watch_) watch_->leave(slot_);
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    StepWatch* watch_;
    std::size_t slot_ = 0;
  };

  struct Running {
    std::string_view node;  ///< valid while the pipeline lives
    Clock::time_point since;
    bool holds_thread = false;
  };

  /// The invocation that started first among those under way. Thread-safe.
  std::optional<Running> oldest() const {
    std::lock_guard lock(mutex_);
    std::optional<Running> oldest;
    for (const Entry& entry : entries_) {
      if (entry.used && (!oldest || entry.running.since < oldest->since)) oldest = entry.running;
    }
    return oldest;
  }

 private:
  struct Entry {
    Running running;
    bool used = false;
  };

  std::size_t enter(std::string_view node, bool holds_thread) {
    const auto now = Clock::now();
    std::lock_guard lock(mutex_);
    std::size_t slot = entries_.size();
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
    } else {
      entries_.emplace_back();
    }
    entries_[slot] = Entry{{node, now, holds_thread}, true};
    return slot;
  }

  void leave(std::size_t slot) {
    std::lock_guard lock(mutex_);
    entries_[slot].used = false;
    free_.push_back(slot);
  }

  mutable std::mutex mutex_;
  std::vector<Entry> entries_;
  std::vector<std::size_t> free_;
};

}  // namespace plumber::detail

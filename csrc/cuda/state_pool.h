// A bounded pool of device scratch states that a kernel leaves reset for its next launch (merge_tokens'
// decoupled look-back, cuda::MergeLookback): two launches that share a state must not run at the same
// time, and a state must not be handed out while a launch still reads it.
//
// No CUDA headers: the device calls go through `Backend`, so tests/native/test_state_pool.cpp drives
// the pool with a fake one. Backend provides
//   using Stream = ...; using Event = ...;      (copyable handles; Stream comparable with ==)
//   void* allocate(Stream)                       a zeroed state, ordered before later work on the stream
//   Event make_event()
//   bool finished(Event)                         every launch the event was recorded after has run
//   void wait(Stream, Event)                     later work on the stream waits for the event
//   bool record(Event, Stream)                   false if it failed (never throws: release runs in destructors)
//
// Which state a launch on `stream` gets (acquire), in order:
//   1. the one whose last launch was on this stream (stream order keeps them apart; several host threads
//      launching on one stream share it);
//   2. one no host thread holds whose last launch has finished (so a program that creates and destroys
//      streams reuses states instead of growing);
//   3. a new one, while the pool has fewer than kMaxStates;
//   4. the least recently used one no host thread holds: this launch waits for its last launch;
//   5. none (every state is held by a host thread between acquire and release right now): the caller
//      takes a path without a state.
// The launch always waits for the state's last event. On the same stream that is a dependency the
// stream already has; it is what keeps rule 1 safe when a new stream reuses a destroyed stream's handle
// while the old stream's last launch is still queued (comparing handles cannot tell them apart).
// release() records the event after the launch. States are never freed: at most kMaxStates per pool.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

namespace interleave {

template <class Backend>
class StatePool {
 public:
  using Stream = typename Backend::Stream;
  using Event = typename Backend::Event;
  static constexpr int kMaxStates = 16;

  struct Lease {
    void* state = nullptr;  // nullptr: no state (rule 5)
    int slot = -1;
    Stream stream{};
  };

  explicit StatePool(Backend backend = Backend()) : backend_(backend) {}

  Lease acquire(Stream stream) {
    const std::lock_guard<std::mutex> lock(mutex_);
    int pick = -1;
    for (int i = 0; i < size() && pick < 0; ++i)  // rule 1
      if (slots_[i].used && slots_[i].stream == stream) pick = i;
    for (int i = 0; i < size() && pick < 0; ++i)  // rule 2 (a slot no thread holds has been recorded)
      if (slots_[i].holders == 0 && backend_.finished(slots_[i].event)) pick = i;
    if (pick < 0 && size() < kMaxStates) {  // rule 3
      Slot s;
      s.state = backend_.allocate(stream);
      s.event = backend_.make_event();
      slots_.push_back(s);
      pick = size() - 1;
    }
    if (pick < 0) {  // rule 4
      for (int i = 0; i < size(); ++i)
        if (slots_[i].holders == 0 && (pick < 0 || slots_[i].used < slots_[pick].used)) pick = i;
    }
    if (pick < 0) return Lease{};  // rule 5
    Slot& s = slots_[pick];
    if (s.recorded) backend_.wait(stream, s.event);
    s.stream = stream;
    s.used = ++clock_;
    ++s.holders;
    return Lease{s.state, pick, stream};
  }

  // After the launch that used the lease's state (or instead of it: the event then covers nothing new).
  void release(const Lease& lease) {
    if (lease.slot < 0) return;
    const std::lock_guard<std::mutex> lock(mutex_);
    Slot& s = slots_[lease.slot];
    // A failed record leaves the slot held for good: no other stream may take a state whose last
    // launch it cannot wait for (its own stream still may, rule 1, in stream order).
    if (!backend_.record(s.event, lease.stream)) return;
    s.recorded = true;
    --s.holders;
  }

  int size() const { return static_cast<int>(slots_.size()); }

 private:
  struct Slot {
    void* state = nullptr;
    Event event{};
    bool recorded = false;  // the event has been recorded at least once (always, once holders is 0)
    Stream stream{};        // of the last acquire
    uint64_t used = 0;      // clock of the last acquire; 0: never
    int holders = 0;        // host threads between acquire and release
  };
  Backend backend_;
  std::mutex mutex_;
  std::vector<Slot> slots_;
  uint64_t clock_ = 0;
};

// Holds a lease for one launch and releases it when it goes out of scope (also when the launch throws).
template <class Backend>
class ScopedLease {
 public:
  ScopedLease(StatePool<Backend>* pool, typename StatePool<Backend>::Stream stream)
      : pool_(pool), lease_(pool ? pool->acquire(stream) : typename StatePool<Backend>::Lease{}) {}
  ~ScopedLease() {
    if (pool_) pool_->release(lease_);
  }
  ScopedLease(const ScopedLease&) = delete;
  ScopedLease& operator=(const ScopedLease&) = delete;
  void* state() const { return lease_.state; }

 private:
  StatePool<Backend>* pool_;
  typename StatePool<Backend>::Lease lease_;
};

}  // namespace interleave

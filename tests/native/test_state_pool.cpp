// StatePool (csrc/cuda/state_pool.h), the look-back states' pool, driven by a fake device: streams are
// integers, an event is finished once the test says the launches it covers have run, and every wait
// the pool queues is logged so the test can check that a shared state orders its launches.
#include <cstdint>
#include <cstdio>
#include <utility>
#include <vector>

#include "check.h"
#include "cuda/state_pool.h"

using namespace interleave;

struct FakeDevice {
  int allocations = 0;
  std::vector<bool> finished_events;             // per event id
  std::vector<std::pair<int, int>> waits;        // (stream, event)
  bool fail_records = false;
};

struct FakeBackend {
  using Stream = int;
  using Event = int;
  FakeDevice* dev;
  void* allocate(Stream) {
    ++dev->allocations;
    return reinterpret_cast<void*>(static_cast<uintptr_t>(0x1000 * dev->allocations));
  }
  Event make_event() {
    dev->finished_events.push_back(true);
    return static_cast<int>(dev->finished_events.size()) - 1;
  }
  bool finished(Event e) { return dev->finished_events[e]; }
  void wait(Stream s, Event e) { dev->waits.push_back({s, e}); }
  bool record(Event e, Stream) {
    if (dev->fail_records) return false;
    dev->finished_events[e] = false;  // a launch is queued behind it until the test finishes it
    return true;
  }
};

using Pool = StatePool<FakeBackend>;

static bool waited(const FakeDevice& d, int stream, int event) {
  for (auto w : d.waits)
    if (w.first == stream && w.second == event) return true;
  return false;
}

int main() {
  {  // One stream: one state, every launch after the first waits for the previous one's event.
    FakeDevice d;
    Pool pool(FakeBackend{&d});
    Pool::Lease a = pool.acquire(7);
    IL_CHECK(a.state != nullptr && d.allocations == 1 && d.waits.empty());
    pool.release(a);
    for (int i = 0; i < 5; ++i) {
      Pool::Lease b = pool.acquire(7);
      IL_CHECK(b.state == a.state && b.slot == a.slot);
      pool.release(b);
    }
    IL_CHECK(d.allocations == 1 && d.waits.size() == 5 && waited(d, 7, 0));
  }
  {  // Two streams with launches in flight never share; a finished state is reused by a new stream.
    FakeDevice d;
    Pool pool(FakeBackend{&d});
    Pool::Lease a = pool.acquire(1);
    pool.release(a);  // queued, not finished
    Pool::Lease b = pool.acquire(2);
    IL_CHECK(b.state != a.state && d.allocations == 2);
    pool.release(b);
    d.finished_events[a.slot] = true;  // stream 1's launch has run
    Pool::Lease c = pool.acquire(3);
    IL_CHECK(c.state == a.state && d.allocations == 2);
    IL_CHECK(waited(d, 3, a.slot));  // a dependency on a finished event: harmless, and always queued
    pool.release(c);
    // Stream 1's state now belongs to stream 3: stream 1 gets another (a new one: none is free).
    Pool::Lease again = pool.acquire(1);
    IL_CHECK(again.state != a.state && again.state != b.state && d.allocations == 3);
    pool.release(again);
  }
  {  // A new stream that reuses a destroyed stream's handle while its launch is queued gets the same
     // state and waits for that launch's event (rule 1 with the unconditional wait).
    FakeDevice d;
    Pool pool(FakeBackend{&d});
    Pool::Lease a = pool.acquire(5);
    pool.release(a);
    d.waits.clear();
    Pool::Lease b = pool.acquire(5);
    IL_CHECK(b.state == a.state && waited(d, 5, a.slot));
    pool.release(b);
  }
  {  // Many streams, all launches in flight: at most kMaxStates states, then the least recently used
     // one, with a wait for its last launch.
    FakeDevice d;
    Pool pool(FakeBackend{&d});
    std::vector<Pool::Lease> first;
    for (int s = 0; s < Pool::kMaxStates; ++s) {
      first.push_back(pool.acquire(100 + s));
      pool.release(first.back());
    }
    IL_CHECK(d.allocations == Pool::kMaxStates && pool.size() == Pool::kMaxStates);
    d.waits.clear();
    Pool::Lease over = pool.acquire(999);
    IL_CHECK(d.allocations == Pool::kMaxStates);
    IL_CHECK(over.state == first[0].state && waited(d, 999, first[0].slot));
    pool.release(over);
    Pool::Lease next = pool.acquire(998);  // now stream 101's state is the oldest
    IL_CHECK(next.state == first[1].state && waited(d, 998, first[1].slot));
    pool.release(next);
    // Stream 100's state went to stream 999: stream 100 takes the least recently used one, not 999's.
    Pool::Lease back = pool.acquire(100);
    IL_CHECK(back.state == first[2].state);
    pool.release(back);
  }
  {  // States held by host threads (acquired, not yet released) go to no other stream; when all are
     // held, a launch gets none (the caller takes the path without one). Same-stream threads share.
    FakeDevice d;
    Pool pool(FakeBackend{&d});
    std::vector<Pool::Lease> held;
    for (int s = 0; s < Pool::kMaxStates; ++s) held.push_back(pool.acquire(200 + s));
    IL_CHECK(pool.acquire(300).state == nullptr);
    Pool::Lease same = pool.acquire(200);
    IL_CHECK(same.state == held[0].state);
    pool.release(same);
    pool.release(held[3]);
    Pool::Lease freed = pool.acquire(301);  // finished? no (just recorded): rule 4, the only free one
    IL_CHECK(freed.state == held[3].state && waited(d, 301, held[3].slot));
    pool.release(freed);
    for (int s = 0; s < Pool::kMaxStates; ++s)
      if (s != 3) pool.release(held[s]);
    IL_CHECK(d.allocations == Pool::kMaxStates);
  }
  {  // A failed event record keeps the state from every other stream (its launch cannot be waited
     // for), and its own stream still gets it.
    FakeDevice d;
    Pool pool(FakeBackend{&d});
    Pool::Lease a = pool.acquire(1);
    d.fail_records = true;
    pool.release(a);
    d.fail_records = false;
    Pool::Lease b = pool.acquire(2);
    IL_CHECK(b.state != a.state);
    pool.release(b);
    Pool::Lease c = pool.acquire(1);
    IL_CHECK(c.state == a.state);
    pool.release(c);
  }
  {  // ScopedLease releases on scope exit, also when the launch throws.
    FakeDevice d;
    Pool pool(FakeBackend{&d});
    void* state = nullptr;
    try {
      ScopedLease<FakeBackend> lease(&pool, 4);
      state = lease.state();
      throw 1;
    } catch (int) {
    }
    d.finished_events[0] = true;
    ScopedLease<FakeBackend> other(&pool, 9);  // free again: the same state, no new allocation
    IL_CHECK(other.state() == state && d.allocations == 1);
    ScopedLease<FakeBackend> none(nullptr, 9);
    IL_CHECK(none.state() == nullptr);
  }
  std::printf("state_pool: ok\n");
  return 0;
}

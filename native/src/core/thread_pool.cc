#include "thread_pool.h"

#include <algorithm>
#include <chrono>

namespace moe {

namespace {

// How long an idle worker keeps polling for the next job before it sleeps: back-to-back calls (a
// serving loop, a benchmark) then skip the futex wake-up, and an idle process burns no CPU.
constexpr auto kSpin = std::chrono::microseconds(50);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

ThreadPool& ThreadPool::instance() {
  static ThreadPool* pool = new ThreadPool();
  return *pool;
}

int ThreadPool::resolve_threads(int threads) {
  const int hardware = std::max(1u, std::thread::hardware_concurrency());
  return threads <= 0 ? hardware : std::min(threads, hardware);
}

void ThreadPool::start_workers() {
  const int hardware = std::max(1u, std::thread::hardware_concurrency());
  for (int i = 1; i < hardware; ++i) workers_.emplace_back([this] { worker_loop(); });
  started_ = true;
}

void ThreadPool::take_chunks(int slot) {
  for (int64_t chunk = next_chunk_.fetch_add(1, std::memory_order_relaxed); chunk < chunks_;
       chunk = next_chunk_.fetch_add(1, std::memory_order_relaxed))
    function_(context_, chunk, slot);
}

void ThreadPool::run_job(int64_t chunks, int threads, Function function, void* context) {
  threads = static_cast<int>(std::min<int64_t>(resolve_threads(threads), chunks));
  std::unique_lock<std::mutex> job(job_mutex_, std::defer_lock);
  if (threads <= 1 || !job.try_lock()) {
    for (int64_t chunk = 0; chunk < chunks; ++chunk) function(context, chunk, 0);
    return;
  }
  if (!started_) start_workers();
  const int helpers = std::min<int>(threads - 1, static_cast<int>(workers_.size()));

  // Publish the job: its fields first, then the seats (a worker reads the fields only after taking a
  // seat), then the generation that wakes the workers.
  function_ = function;
  context_ = context;
  chunks_ = chunks;
  next_chunk_.store(0, std::memory_order_relaxed);
  finished_.store(0, std::memory_order_relaxed);
  seats_.store(helpers, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(wake_mutex_);
    generation_.fetch_add(1, std::memory_order_release);
    if (sleepers_ > 0) wake_.notify_all();
  }

  take_chunks(0);

  // Seats nobody took are withdrawn; wait for the workers that did take one.
  const int unclaimed = std::max(0, seats_.exchange(0, std::memory_order_acq_rel));
  const int joined = helpers - unclaimed;
  while (finished_.load(std::memory_order_acquire) < joined) cpu_relax();
}

void ThreadPool::worker_loop() {
  uint64_t seen = generation_.load(std::memory_order_acquire);
  for (;;) {
    // Wait for a new generation: poll for a while, then sleep.
    const auto spin_until = std::chrono::steady_clock::now() + kSpin;
    int polls = 0;
    while (generation_.load(std::memory_order_acquire) == seen) {
      cpu_relax();
      if (++polls % 64 == 0 && std::chrono::steady_clock::now() > spin_until) {
        std::unique_lock<std::mutex> lock(wake_mutex_);
        ++sleepers_;
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        --sleepers_;
      }
    }
    seen = generation_.load(std::memory_order_acquire);

    const int seat = seats_.fetch_sub(1, std::memory_order_acq_rel);
    if (seat <= 0) continue;  // the job is full or over
    take_chunks(seat);
    finished_.fetch_add(1, std::memory_order_release);
  }
}

}  // namespace moe

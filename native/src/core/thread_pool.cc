#include "thread_pool.h"

#include <algorithm>
#include <chrono>

namespace moe {

namespace {

// How long an idle worker keeps polling for the next job before it sleeps: back-to-back calls (a
// serving loop, a benchmark) then skip the futex wake-up, and an idle process burns no CPU.
constexpr auto kSpin = std::chrono::microseconds(50);
// How long the caller polls for the last chunks of its job before it sleeps. When the machine has
// more runnable threads than cores, a polling caller can hold the very core a worker waits for.
constexpr auto kFinishSpin = std::chrono::microseconds(20);

// A region's word packs [job:24][back:20][front:20].
constexpr int kChunkBits = 20;
constexpr uint64_t kChunkMask = (uint64_t{1} << kChunkBits) - 1;
constexpr uint64_t kJobMask = (uint64_t{1} << 24) - 1;

// std::thread::hardware_concurrency reads /sys on every call (microseconds): ask once.
int hardware_threads() {
  static const int count = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return count;
}

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
  return threads <= 0 ? hardware_threads() : std::min(threads, hardware_threads());
}

void ThreadPool::start_workers() {
  region_.reset(new Region[hardware_threads()]);
  for (int i = 1; i < hardware_threads(); ++i) workers_.emplace_back([this] { worker_loop(); });
  started_ = true;
}

int64_t ThreadPool::claim(uint64_t job, int region, bool front) {
  std::atomic<uint64_t>& word = region_[region].word;
  uint64_t value = word.load(std::memory_order_acquire);
  for (;;) {
    const int64_t first = static_cast<int64_t>(value & kChunkMask);
    const int64_t end = static_cast<int64_t>((value >> kChunkBits) & kChunkMask);
    if ((value >> (2 * kChunkBits)) != (job & kJobMask) || first >= end) return -1;
    const uint64_t taken = front ? value + 1 : value - (uint64_t{1} << kChunkBits);
    if (word.compare_exchange_weak(value, taken, std::memory_order_acq_rel, std::memory_order_acquire))
      return front ? first : end - 1;
  }
}

void ThreadPool::take_chunks(uint64_t job, int slot) {
  // (A worker late for its job may read a later job's count: the claims, tagged, then all fail.)
  const int regions = regions_.load(std::memory_order_relaxed);
  for (int i = 0; i < regions; ++i) {
    const int region = (slot + i) % regions;
    for (int64_t chunk; (chunk = claim(job, region, i == 0)) >= 0;) {
      // The job cannot end before this chunk is done, so its fields stay put meanwhile.
      function_(context_, chunk, slot);
      if (left_.fetch_sub(1, std::memory_order_acq_rel) == 1 && slot != 0) {
        std::lock_guard<std::mutex> lock(finish_mutex_);
        if (caller_sleeps_) finished_.notify_one();
      }
    }
  }
}

void ThreadPool::run_job(int64_t chunks, int threads, Function function, void* context) {
  threads = static_cast<int>(std::min<int64_t>(resolve_threads(threads), chunks));
  std::unique_lock<std::mutex> job_lock(job_mutex_, std::defer_lock);
  if (threads <= 1 || !job_lock.try_lock()) {
    for (int64_t chunk = 0; chunk < chunks; ++chunk) function(context, chunk, 0);
    return;
  }
  if (!started_) start_workers();
  const uint64_t helpers = static_cast<uint64_t>(std::min<int>(threads - 1, static_cast<int>(workers_.size())));

  // Publish the job: its fields, then the words workers claim from, then the generation that wakes
  // them.
  const uint64_t job = generation_.load(std::memory_order_relaxed) + 1;
  function_ = function;
  context_ = context;
  left_.store(chunks, std::memory_order_relaxed);
  const int regions = static_cast<int>(helpers) + 1;
  regions_.store(regions, std::memory_order_relaxed);
  for (int r = 0; r < regions; ++r) {
    const uint64_t first = static_cast<uint64_t>(chunks * r / regions);
    const uint64_t end = static_cast<uint64_t>(chunks * (r + 1) / regions);
    region_[r].word.store(((job & kJobMask) << (2 * kChunkBits)) | (end << kChunkBits) | first,
                          std::memory_order_release);
  }
  seats_.store((job << 32) | helpers, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(wake_mutex_);
    generation_.store(job, std::memory_order_release);
    if (sleepers_ > 0) wake_.notify_all();
  }

  take_chunks(job, 0);

  // Wait for the chunks other threads took: poll a little, then sleep until the last one is done.
  const auto spin_until = std::chrono::steady_clock::now() + kFinishSpin;
  for (int polls = 1; left_.load(std::memory_order_acquire) > 0; ++polls) {
    cpu_relax();
    if (polls % 64 == 0 && std::chrono::steady_clock::now() > spin_until) {
      std::unique_lock<std::mutex> lock(finish_mutex_);
      caller_sleeps_ = true;
      finished_.wait(lock, [&] { return left_.load(std::memory_order_acquire) == 0; });
      caller_sleeps_ = false;
    }
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = generation_.load(std::memory_order_acquire);
  for (;;) {
    // Wait for a new job: poll for a while (yielding now and then, in case the caller needs this
    // core), then sleep.
    const auto spin_until = std::chrono::steady_clock::now() + kSpin;
    for (int polls = 1; generation_.load(std::memory_order_acquire) == seen; ++polls) {
      cpu_relax();
      if (polls % 64 != 0) continue;
      std::this_thread::yield();
      if (std::chrono::steady_clock::now() > spin_until) {
        std::unique_lock<std::mutex> lock(wake_mutex_);
        ++sleepers_;
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        --sleepers_;
      }
    }
    seen = generation_.load(std::memory_order_acquire);

    // Take a seat of the current job (its number is the slot), then its chunks.
    uint64_t word = seats_.load(std::memory_order_acquire);
    while ((word & 0xffffffffu) != 0 &&
           !seats_.compare_exchange_weak(word, word - 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
    }
    const int seat = static_cast<int>(word & 0xffffffffu);
    if (seat > 0) take_chunks(word >> 32, seat);
  }
}

}  // namespace moe

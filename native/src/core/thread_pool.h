// The engine's persistent worker threads: one pool per process, started on first use, shared by every
// router. A job is a number of chunks, cut into one contiguous region a thread: each thread takes the
// chunks of its own region in order, then the last chunks left in the others' (so a thread whose core
// is busy holds nobody up). A thread's chunks are thus mostly consecutive in memory, one stream for
// the hardware prefetcher, rather than every other chunk (bench/NOTES.md item 29). Which thread runs
// which chunk varies from run to run, so callers keep one result slot per chunk and combine them in
// chunk order: results then do not depend on the thread count.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace moe {

class ThreadPool {
 public:
  // The process-wide pool. It is never destroyed: its workers sleep until the process exits, so no
  // static destructor has to stop threads that a late caller might still be using.
  static ThreadPool& instance();

  // Threads a `threads` option asks for: 0 means one per hardware thread.
  static int resolve_threads(int threads);

  // Runs body(chunk, slot) for every chunk in [0, chunks) on up to `threads` threads, the caller
  // included (slot 0 is the caller; slots are < threads, and no two threads share a slot within a
  // job). Returns when every chunk is done. body must not throw. chunks < 2^20. When another job
  // holds the pool, the caller runs every chunk itself.
  template <typename Body>
  void run(int64_t chunks, int threads, Body& body) {
    run_job(chunks, threads, &invoke<Body>, &body);
  }

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

 private:
  using Function = void (*)(void* context, int64_t chunk, int slot);
  template <typename Body>
  static void invoke(void* context, int64_t chunk, int slot) {
    (*static_cast<Body*>(context))(chunk, slot);
  }

  ThreadPool() = default;
  void run_job(int64_t chunks, int threads, Function function, void* context);
  void start_workers();
  void worker_loop();
  // Runs the chunks of job `job` left in the region of `slot`, from its front, then those left in the
  // other regions, from their backs.
  void take_chunks(uint64_t job, int slot);
  // Claims a chunk of `region` for job `job` (its front or its back): the chunk, or -1 when the region
  // has none left (or the job is over).
  int64_t claim(uint64_t job, int region, bool front);

  std::mutex job_mutex_;  // one job at a time
  std::vector<std::thread> workers_;
  bool started_ = false;

  // The current job. Its number tags the words workers claim from, so a worker that wakes up late can
  // never take a seat or a chunk of a later job. The fields are written before the job's number is
  // published and stay put until its last chunk is done.
  Function function_ = nullptr;
  void* context_ = nullptr;
  std::atomic<int> regions_{0};      // threads the job was cut for
  std::atomic<uint64_t> seats_{0};   // [job:32][seats left:32]
  // Region r's chunks not yet claimed, [front, back): [job:24][back:20][front:20], a line each.
  struct alignas(64) Region {
    std::atomic<uint64_t> word{0};
  };
  std::unique_ptr<Region[]> region_;
  std::atomic<int64_t> left_{0};     // chunks of the current job not yet finished
  std::atomic<uint64_t> generation_{0};

  std::mutex wake_mutex_;
  std::condition_variable wake_;
  int sleepers_ = 0;  // workers blocked on wake_ (under wake_mutex_)

  // The caller, when the last chunks are slow to finish (their core is busy), sleeps on finished_.
  std::mutex finish_mutex_;
  std::condition_variable finished_;
  bool caller_sleeps_ = false;  // under finish_mutex_
};

}  // namespace moe

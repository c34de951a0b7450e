// A small persistent thread pool for the torch ops' CPU kernels. ONNX Runtime lends its
// own pool to the ORT kernels; the torch side calls the library through a plain C ABI,
// so it brings these workers (created on first use, kept for the process, re-created in
// a forked child). The caller passes torch.get_num_threads() and runs one share itself.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace poolexport {
namespace torch_abi {

class ThreadPool {
 public:
  // The process' pool (never destroyed: its detached workers may outlive static
  // destructors at exit).
  static ThreadPool& get() {
    static std::mutex mu;
    static ThreadPool* pool = nullptr;
    std::lock_guard<std::mutex> lock(mu);
    if (!pool || pool->pid_ != getpid()) pool = new ThreadPool();  // a forked child has no workers
    return *pool;
  }

  // Runs f(begin, end) over [0, n) in chunks of about 2^15 units of `cost` per item, on up
  // to `threads` threads. Returns false if a chunk threw (the rest still ran).
  template <class F>
  bool parallel_for(int64_t n, int64_t cost, int threads, F&& f) {
    if (n <= 0) return true;
    int64_t per = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, cost));
    int64_t chunks = (n + per - 1) / per;
    const int64_t most = 16 * (int64_t)std::max(threads, 1);  // enough to balance uneven chunks
    if (chunks > most) {
      per = (n + most - 1) / most;
      chunks = (n + per - 1) / per;
    }
    auto chunk = [&](int64_t i) { f(i * per, std::min(n, (i + 1) * per)); };
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    int helpers = (int)std::min<int64_t>(threads, chunks) - 1;
    if (helpers <= 0 || !busy.owns_lock()) {  // small, or a concurrent call: run here
      try {
        for (int64_t i = 0; i < chunks; ++i) chunk(i);
      } catch (...) {
        return false;
      }
      return true;
    }
    std::unique_lock<std::mutex> lock(mu_);
    while ((int)workers_ < helpers) {
      std::thread(&ThreadPool::work, this, (int)workers_).detach();
      ++workers_;
    }
    job_ = chunk;
    chunks_ = chunks;
    next_.store(0);
    failed_ = false;
    wanted_ = helpers;
    active_ = helpers;
    ++generation_;
    lock.unlock();
    cv_.notify_all();
    drain();
    lock.lock();
    done_cv_.wait(lock, [&] { return active_ == 0; });
    job_ = nullptr;
    return !failed_;
  }

 private:
  ThreadPool() : pid_(getpid()) {}

  void drain() {
    for (int64_t i; (i = next_.fetch_add(1)) < chunks_;) {
      try {
        job_(i);
      } catch (...) {
        failed_ = true;
      }
    }
  }

  void work(int id) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (id >= wanted_) continue;
      lock.unlock();
      drain();
      lock.lock();
      if (--active_ == 0) done_cv_.notify_one();
    }
  }

  const pid_t pid_;
  std::mutex run_mu_;  // one job at a time
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  size_t workers_ = 0;
  uint64_t generation_ = 0;
  int wanted_ = 0, active_ = 0;
  std::function<void(int64_t)> job_;
  int64_t chunks_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<bool> failed_{false};
};

}  // namespace torch_abi
}  // namespace poolexport

// A small fork-join pool for the compute kernels. Workers spin briefly between jobs (decode issues a few
// hundred parallel regions per token, so a sleeping wake-up on every region would cost more than the work),
// then block on a condition variable so an idle engine burns no CPU.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace hs {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // n_threads >= 1; the calling thread is worker 0
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(ith, nth) once on each of the nth threads and returns when all are done. Not reentrant.
  void run(const std::function<void(int ith, int nth)>& fn);

  // Splits [0, n) into contiguous ranges (multiples of grain, except the last) and calls fn(begin, end) on each.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& fn);

 private:
  void worker_loop(int ith);

  int n_threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int, int)>* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<int> sleeping_{0};
};

}  // namespace hs

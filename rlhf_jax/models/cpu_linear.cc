// y[m, o] = sum_k x[m, k] * w[o, k] for a few rows of x (a decode step), float32, on x86-64 CPUs.
//
// Why this exists: a decode step multiplies B (≈1–16) rows by every weight of the model. That is
// neither a GEMM nor memory-bound: at B=8 each weight byte feeds 4 FLOPs, so the step needs both
// the memory stream and the FMA units busy at once. XLA:CPU's dot runs them one after the other
// (time(M=8) ≈ time(M=1) + compute), ≈64 GFLOP/s on 2 cores for GPT-2-small. This kernel
// software-prefetches the next block of weight rows while it multiplies the current one, reaching
// ≈100 GFLOP/s on the same chain (experiments/bench_generate.py has the end-to-end figures).
//
// Layout: x [M, K] and w [O, K] row-major (w is stored output-major, like torch Linear), y [M, O].
// Each block of R weight rows is streamed once per 8 rows of x; R×MB accumulators stay in
// registers; K is vectorised (tails masked). Rows of w are split between worker threads that spin
// briefly between calls, since a decode step issues ≈50 of these back to back.
//
// Built on first use by rlhf_jax/models/cpu_linear.py (g++ -O3, no -march: the ISA is chosen at
// run time, AVX-512 or AVX2+FMA), registered as the XLA FFI target "rlhf_cpu_linear".

#include <immintrin.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// The kernel (cpu_linear_kernel.inc) is compiled twice, once per instruction set, each copy in its
// own namespace under `#pragma GCC target`, so AVX-512 code never runs on an AVX2-only CPU.
#pragma GCC push_options
#pragma GCC target("avx512f")
namespace avx512 {
struct S {
  using V = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kRegs = 32;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_first(const float* p, int n) {  // p[0..n), zeros after
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
  }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(V v) { return _mm512_reduce_add_ps(v); }
};
#include "cpu_linear_kernel.inc"
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
struct S {
  using V = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kRegs = 16;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load_first(const float* p, int n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane));
  }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};
#include "cpu_linear_kernel.inc"
}  // namespace avx2
#pragma GCC pop_options

// Workers that wait for the next call spinning for kSpinMicros, then sleep on a futex. The matmuls
// of a decode step come tens of microseconds apart, so the workers stay awake through a step; they
// must not spin much longer: the sampler's XLA ops after the LM head (top-p, ~10 ms at a 50k
// vocabulary) need both cores. Measured on GPT-2-small, 2 cores: spinning 50 µs, sampled decoding
// ran 193 tok/s; sleeping at once, 176; yielding for 100 µs, 133.
constexpr int kSpinMicros = 50;

class SpinPool {
 public:
  explicit SpinPool(int n) : n_(n), pid_(getpid()) {
    for (int i = 1; i < n_; ++i) std::thread([this, i] { Loop(i); }).detach();
  }
  int size() const { return n_; }
  pid_t pid() const { return pid_; }

  // Runs f(i) for i in [0, size()): i = 0 on the calling thread. Returns false (running nothing)
  // when another call holds the pool; the caller then does all the work itself.
  bool TryRun(const std::function<void(int)>& f) {
    std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    fn_ = &f;
    left_.store(n_ - 1, std::memory_order_relaxed);
    gen_.fetch_add(1, std::memory_order_release);
    gen_.notify_all();
    f(0);
    while (left_.load(std::memory_order_acquire) > 0) _mm_pause();
    return true;
  }

 private:
  void Loop(int i) {
    uint64_t seen = 0;  // the generation at construction: a call made before this thread ran still counts
    for (;;) {
      uint64_t g;
      const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
      int spins = 0;
      while ((g = gen_.load(std::memory_order_acquire)) == seen) {
        if (++spins % 64 != 0 || std::chrono::steady_clock::now() < spin_until) {
          _mm_pause();
        } else {
          gen_.wait(seen, std::memory_order_acquire);
        }
      }
      seen = g;
      (*fn_)(i);
      left_.fetch_sub(1, std::memory_order_release);
    }
  }

  const int n_;
  const pid_t pid_;
  std::mutex busy_;
  const std::function<void(int)>* fn_ = nullptr;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> left_{0};
};

SpinPool* GetPool(int threads) {
  static std::mutex mu;
  static SpinPool* pool = nullptr;
  std::lock_guard<std::mutex> lock(mu);
  // A forked child has none of the parent's threads: start its own pool (the old one is leaked).
  if (pool == nullptr || pool->pid() != getpid()) pool = new SpinPool(std::max(1, threads));
  return pool;
}

ffi::Error Linear(ffi::ThreadPool xla_pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                  ffi::ResultBuffer<ffi::F32> y, int32_t isa) {
  if (x.dimensions().size() != 2 || w.dimensions().size() != 2 || x.dimensions()[1] != w.dimensions()[1])
    return ffi::Error::InvalidArgument("rlhf_cpu_linear: expected x [M, K] and w [O, K]");
  const int64_t M = x.dimensions()[0], K = x.dimensions()[1], O = w.dimensions()[0];
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  if (M == 0 || O == 0) return ffi::Error::Success();
  const auto rows = isa == 2 ? avx512::Rows : avx2::Rows;
  // As many threads as XLA's intra-op pool (it respects the process's CPU affinity), each streaming
  // at least 2^18 weights (1 MB): below that, waking a thread costs more than it saves.
  const int64_t threads = std::min<int64_t>(std::max<int64_t>(1, xla_pool.num_threads()), 64);
  const int64_t parts = std::min<int64_t>(threads, std::max<int64_t>(1, O * K >> 18));
  if (parts <= 1) {
    rows(xp, wp, yp, M, K, O, 0, O);
    return ffi::Error::Success();
  }
  SpinPool* pool = GetPool(static_cast<int>(threads));
  const int64_t n = pool->size();
  const int64_t chunk = ((O + n - 1) / n + 7) / 8 * 8;
  const std::function<void(int)> part = [&](int i) {
    const int64_t a = std::min(O, i * chunk), b = std::min(O, a + chunk);
    if (a < b) rows(xp, wp, yp, M, K, O, a, b);
  };
  if (!pool->TryRun(part)) rows(xp, wp, yp, M, K, O, 0, O);
  return ffi::Error::Success();
}

}  // namespace

// 2: AVX-512F, 1: AVX2 + FMA, 0: neither (the Python side then never calls the kernel).
extern "C" int rlhf_cpu_linear_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
  return 0;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(RlhfCpuLinear, Linear,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("isa"));

// Native float32 kernels for the decode step of the sampler on x86-64 CPUs, as XLA FFI targets:
//
// "rlhf_cpu_linear": y[m, o] = sum_k x[m, k] * w[o, k] for a few rows of x (cpu_kernels_linear.inc).
//   A decode step multiplies B (≈1–16) rows by every weight of the model. That is neither a GEMM
//   nor memory-bound: at B=8 each weight byte feeds 4 FLOPs, so the step needs the memory stream
//   and the FMA units busy at once. XLA:CPU's dot runs them one after the other (time(M=8) ≈
//   time(M=1) + compute): ≈65 GFLOP/s on 2 cores for GPT-2-small. This kernel software-prefetches
//   the next block of weight rows while it multiplies the current one: ≈100 GFLOP/s on the same
//   chain (experiments/bench_cpu_linear.py). Layout: x [M, K] and w [O, K] row-major (w is
//   output-major, like torch Linear), y [M, O]; R weight rows × up to 8 x rows of accumulators stay
//   in registers; K is vectorised with masked tails; rows of w are split between threads.
//
// "rlhf_cpu_decode_attention": softmax(q·kᵀ·scale, masked) v for one query position per row
//   (cpu_kernels_attention.inc). XLA runs it as two batched dots plus mask and softmax ops, whose
//   fixed costs dominate at decode sizes and grow the step with the cache length.
//
// Built on first use by rlhf_jax/models/cpu_kernels.py (g++ -O3, no -march: the instruction set,
// AVX-512 or AVX2+FMA, is chosen at run time).

#include <immintrin.h>
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

// The kernel (cpu_kernels_linear.inc) is compiled twice, once per instruction set, each copy in its
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
  static V splat(float c) { return _mm512_set1_ps(c); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(V v) { return _mm512_reduce_add_ps(v); }
  static float max(V v) { return _mm512_reduce_max_ps(v); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V vmax(V a, V b) { return _mm512_max_ps(a, b); }
  static V first(V v, int n) { return _mm512_maskz_mov_ps(static_cast<__mmask16>((1u << n) - 1), v); }
  static void store_first(float* p, V v, int n) {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
  }
  static V where_nonzero(V c, V a, V b) {  // c != 0 ? a : b
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(c, zero(), _CMP_NEQ_UQ), b, a);
  }
  static V where_below(V x, float t, V a, V b) {  // x < t ? a : b
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, splat(t), _CMP_LT_OQ), b, a);
  }
  static V round(V v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V pow2(V n) {  // 2^n for integral n in [-126, 127]
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
  }
  // Lane i of the result: the sum of a[i]'s lanes (a butterfly: 45 instructions for 16 sums).
  static V sums(const V* a) {
    V b[8], c[4];
    for (int i = 0; i < 8; ++i)
      b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; ++i)
      c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    const V g0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                               _mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const V g1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(2, 0, 2, 0)),
                               _mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(g0, g1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(g0, g1, _MM_SHUFFLE(3, 1, 3, 1)));
  }
#include "cpu_kernels_exp.inc"
};
#include "cpu_kernels_linear.inc"
#include "cpu_kernels_attention.inc"
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
  static V splat(float c) { return _mm256_set1_ps(c); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float max(V v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V vmax(V a, V b) { return _mm256_max_ps(a, b); }
  static __m256i first_mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V first(V v, int n) { return _mm256_and_ps(v, _mm256_castsi256_ps(first_mask(n))); }
  static void store_first(float* p, V v, int n) { _mm256_maskstore_ps(p, first_mask(n), v); }
  static V where_nonzero(V c, V a, V b) { return _mm256_blendv_ps(b, a, _mm256_cmp_ps(c, zero(), _CMP_NEQ_UQ)); }
  static V where_below(V x, float t, V a, V b) {
    return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, splat(t), _CMP_LT_OQ));
  }
  static V round(V v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V pow2(V n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  }
  static V sums(const V* a) {  // lane i: the sum of a[i]'s lanes
    V b[4], c[2];
    for (int i = 0; i < 4; ++i)
      b[i] = _mm256_add_ps(_mm256_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm256_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 2; ++i)
      c[i] = _mm256_add_ps(_mm256_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm256_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm256_add_ps(_mm256_permute2f128_ps(c[0], c[1], 0x20), _mm256_permute2f128_ps(c[0], c[1], 0x31));
  }
#include "cpu_kernels_exp.inc"
};
#include "cpu_kernels_linear.inc"
#include "cpu_kernels_attention.inc"
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

// Runs body(a, b) over [0, n) split into `parts` ranges (rounded to `align`) on the worker pool,
// or all of it on this thread when parts is 1 or another call holds the pool.
template <class F>
void Split(int64_t n, int64_t parts, int64_t align, int64_t threads, const F& body) {
  if (parts <= 1) {
    body(0, n);
    return;
  }
  SpinPool* pool = GetPool(static_cast<int>(threads));
  parts = std::min<int64_t>(parts, pool->size());
  const int64_t chunk = ((n + parts - 1) / parts + align - 1) / align * align;
  const std::function<void(int)> part = [&](int i) {
    const int64_t a = std::min(n, i * chunk), b = std::min(n, a + chunk);
    if (a < b) body(a, b);
  };
  if (!pool->TryRun(part)) body(0, n);
}

// As many threads as XLA's intra-op pool (it respects the process's CPU affinity).
int64_t Threads(ffi::ThreadPool& xla_pool) {
  return std::min<int64_t>(std::max<int64_t>(1, xla_pool.num_threads()), 64);
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
  // Each thread streams at least 2^18 weights (1 MB): below that, waking one costs more than it saves.
  const int64_t threads = Threads(xla_pool);
  const int64_t parts = std::min<int64_t>(threads, std::max<int64_t>(1, O * K >> 18));
  Split(O, parts, 8, threads, [&](int64_t a, int64_t b) { rows(xp, wp, yp, M, K, O, a, b); });
  return ffi::Error::Success();
}

ffi::Error Attention(ffi::ThreadPool xla_pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> key,
                     ffi::Buffer<ffi::F32> value, ffi::Buffer<ffi::F32> allowed,
                     ffi::ResultBuffer<ffi::F32> out, float scale, int32_t isa) {
  const auto qd = q.dimensions(), kd = key.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || value.dimensions().size() != 4 || allowed.dimensions().size() != 2 ||
      kd[0] != qd[0] || kd[1] != qd[1] || kd[3] != qd[3] || allowed.dimensions()[0] != qd[0] ||
      allowed.dimensions()[1] != kd[2])
    return ffi::Error::InvalidArgument(
        "rlhf_cpu_decode_attention: expected q [B, K, G, H], key/value [B, K, S, H], allowed [B, S]");
  const int64_t B = qd[0], K = qd[1], G = qd[2], H = qd[3], Sn = kd[2];
  if (B * K * G * H == 0) return ffi::Error::Success();
  const auto pairs = isa == 2 ? avx512::AttentionPairs : avx2::AttentionPairs;
  const float* qp = q.typed_data();
  const float* kp = key.typed_data();
  const float* vp = value.typed_data();
  const float* ap = allowed.typed_data();
  float* op = out->typed_data();
  // Threads once the keys and values read reach 2^16 floats per thread.
  const int64_t threads = Threads(xla_pool);
  const int64_t parts = std::min<int64_t>(threads, std::max<int64_t>(1, B * K * Sn * H >> 16));
  Split(B * K, parts, 1, threads, [&](int64_t a, int64_t b) {
    thread_local std::vector<float> scratch;
    if (scratch.size() < static_cast<size_t>(G * Sn)) scratch.resize(G * Sn);
    pairs(qp, kp, vp, ap, op, K, G, Sn, H, scale, a, b, scratch.data());
  });
  return ffi::Error::Success();
}

}  // namespace

// 2: AVX-512F, 1: AVX2 + FMA, 0: neither (the Python side then never calls the kernels).
extern "C" int rlhf_cpu_kernels_isa() {
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(RlhfCpuDecodeAttention, Attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale")
                                  .Attr<int32_t>("isa"));

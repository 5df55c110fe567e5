// CPU implementation of group_min_distance: packed GEMM-style tiles, SIMD micro-kernels
// selected at run time (AVX-512, AVX2/FMA, portable), OpenMP over query (or memory) blocks.
// No Python, no torch. See group_min_cpu_kernel.inc for the layout of the computation.
//
// Environment knobs (read at every call; for tests and tuning, the defaults are the tuned ones):
//   MEDS_CPU_SIMD=avx2|portable     use a lower SIMD level than the best supported one
//   MEDS_CPU_SPLIT=queries|memory   how threads share the work (default: the cheaper one)
//   MEDS_CPU_THREAD_FLOPS=N         minimum FLOPs per thread (default 1e6) before adding one
//   MEDS_CPU_MC_BYTES / _NC_BYTES / _SB_BYTES / _MC_MAX / _PRIV_BYTES   cache blocking sizes
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "ops/group_min.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define MEDS_X86_SIMD 1
#include <immintrin.h>
#endif

namespace meds {
namespace {

// ---------------------------------------------------------------------------------------
// Scratch memory: 64-byte aligned, uninitialised, freed on scope exit.
template <class T>
class AlignedBuffer {
 public:
  explicit AlignedBuffer(int64_t n) : n_(n < 1 ? 1 : n) {
    p_ = static_cast<T*>(::operator new(static_cast<size_t>(n_) * sizeof(T), std::align_val_t(64)));
  }
  ~AlignedBuffer() { ::operator delete(p_, std::align_val_t(64)); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  T* data() { return p_; }
  const T* data() const { return p_; }
  T& operator[](int64_t i) { return p_[i]; }
  const T& operator[](int64_t i) const { return p_[i]; }

 private:
  int64_t n_;
  T* p_;
};

// Everything the kernels read, with the per-row scales precomputed.
struct Problem {
  const float* queries;
  int64_t nq, q_stride;
  const float* memory;
  int64_t nm, m_stride;
  int64_t d;
  const int64_t* groups;
  int64_t n_groups;
  const int64_t* query_groups;
  bool exclude_self;
  const float* qscale;  // (nq,) factor applied to the query when packing A
  const float* mscale;  // (nm,) factor applied to the memory row when packing B
  const float* minit;   // (nm,) initial accumulator of the memory row's column
};

struct Blocking {
  int64_t sb, mc, nc;
};

// A unit of work: queries [q_lo, q_hi) against memory rows [m_lo, m_hi).
struct Chunk {
  int64_t q_lo, q_hi, m_lo, m_hi;
};

// ---------------------------------------------------------------------------------------
// Vector traits. Every member carries the target attribute of its ISA.
struct VecPortable {
  static constexpr int W = 8;
  struct T {
    float v[8];
  };
  static inline T load(const float* p) {
    T r;
    for (int i = 0; i < 8; ++i) r.v[i] = p[i];
    return r;
  }
  static inline void store(float* p, T a) {
    for (int i = 0; i < 8; ++i) p[i] = a.v[i];
  }
  static inline T set1(float x) {
    T r;
    for (int i = 0; i < 8; ++i) r.v[i] = x;
    return r;
  }
  static inline T fma(T a, T b, T c) {
    for (int i = 0; i < 8; ++i) c.v[i] += a.v[i] * b.v[i];
    return c;
  }
  static inline T min(T a, T b) {
    for (int i = 0; i < 8; ++i) a.v[i] = b.v[i] < a.v[i] ? b.v[i] : a.v[i];
    return a;
  }
  static inline T add(T a, T b) {
    for (int i = 0; i < 8; ++i) a.v[i] += b.v[i];
    return a;
  }
};

#ifdef MEDS_X86_SIMD
#define MEDS_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define MEDS_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))

struct VecAvx2 {
  static constexpr int W = 8;
  using T = __m256;
  MEDS_TARGET_AVX2 static inline T load(const float* p) { return _mm256_loadu_ps(p); }
  MEDS_TARGET_AVX2 static inline void store(float* p, T a) { _mm256_storeu_ps(p, a); }
  MEDS_TARGET_AVX2 static inline T set1(float x) { return _mm256_set1_ps(x); }
  MEDS_TARGET_AVX2 static inline T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  MEDS_TARGET_AVX2 static inline T min(T a, T b) { return _mm256_min_ps(a, b); }
  MEDS_TARGET_AVX2 static inline T add(T a, T b) { return _mm256_add_ps(a, b); }
};

struct VecAvx512 {
  static constexpr int W = 16;
  using T = __m512;
  MEDS_TARGET_AVX512 static inline T load(const float* p) { return _mm512_loadu_ps(p); }
  MEDS_TARGET_AVX512 static inline void store(float* p, T a) { _mm512_storeu_ps(p, a); }
  MEDS_TARGET_AVX512 static inline T set1(float x) { return _mm512_set1_ps(x); }
  MEDS_TARGET_AVX512 static inline T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  MEDS_TARGET_AVX512 static inline T min(T a, T b) { return _mm512_min_ps(a, b); }
  MEDS_TARGET_AVX512 static inline T add(T a, T b) { return _mm512_add_ps(a, b); }
};
#endif

}  // namespace

// ---------------------------------------------------------------------------------------
// One instantiation of the kernel per ISA (internal linkage, like everything in this file).
namespace {
namespace cpu_kernels {
using meds::AlignedBuffer;
using meds::Blocking;
using meds::Chunk;
using meds::Problem;

#define MEDS_ISA portable
#define MEDS_TARGET
#define MEDS_VEC ::meds::VecPortable
#define MEDS_MRV 2
#define MEDS_NR 4
#include "ops/group_min_cpu_kernel.inc"
#undef MEDS_ISA
#undef MEDS_TARGET
#undef MEDS_VEC
#undef MEDS_MRV
#undef MEDS_NR

#ifdef MEDS_X86_SIMD
#define MEDS_ISA avx2
#define MEDS_TARGET MEDS_TARGET_AVX2
#define MEDS_VEC ::meds::VecAvx2
#define MEDS_MRV 2
#define MEDS_NR 6
#include "ops/group_min_cpu_kernel.inc"
#undef MEDS_ISA
#undef MEDS_TARGET
#undef MEDS_VEC
#undef MEDS_MRV
#undef MEDS_NR

#define MEDS_ISA avx512
#define MEDS_TARGET MEDS_TARGET_AVX512
#define MEDS_VEC ::meds::VecAvx512
#define MEDS_MRV 2
#define MEDS_NR 14
#include "ops/group_min_cpu_kernel.inc"
#undef MEDS_ISA
#undef MEDS_TARGET
#undef MEDS_VEC
#undef MEDS_MRV
#undef MEDS_NR
#endif
}  // namespace cpu_kernels
}  // namespace

namespace {

struct Isa {
  const char* name;
  int mr, nr;
  void (*run_chunks)(const Problem&, const Blocking&, const Chunk*, int64_t, std::atomic<int64_t>*,
                     float*);
  double (*sumsq)(const float*, int64_t);
};

const Isa kPortable = {"portable", cpu_kernels::portable::MR, cpu_kernels::portable::NR,
                       &cpu_kernels::portable::run_chunks, &cpu_kernels::portable::sumsq};
#ifdef MEDS_X86_SIMD
const Isa kAvx2 = {"avx2", cpu_kernels::avx2::MR, cpu_kernels::avx2::NR,
                   &cpu_kernels::avx2::run_chunks, &cpu_kernels::avx2::sumsq};
const Isa kAvx512 = {"avx512", cpu_kernels::avx512::MR, cpu_kernels::avx512::NR,
                     &cpu_kernels::avx512::run_chunks, &cpu_kernels::avx512::sumsq};
#endif

int isa_rank(const std::string& s) {
  if (s == "avx512") return 2;
  if (s == "avx2") return 1;
  if (s == "portable" || s == "scalar") return 0;
  return -1;
}

// The best ISA this machine supports, lowered by MEDS_CPU_SIMD=avx512|avx2|portable.
const Isa& select_isa() {
  int best = 0;
#ifdef MEDS_X86_SIMD
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = 1;
  if (best == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
    best = 2;
  }
#endif
  if (const char* env = std::getenv("MEDS_CPU_SIMD")) {
    const int want = isa_rank(env);
    if (want >= 0 && want < best) best = want;
  }
#ifdef MEDS_X86_SIMD
  if (best == 2) return kAvx512;
  if (best == 1) return kAvx2;
#endif
  return kPortable;
}

int64_t env_int(const char* name, int64_t dflt) {
  const char* s = std::getenv(name);
  if (!s || !*s) return dflt;
  char* end = nullptr;
  long long v = std::strtoll(s, &end, 10);
  return (end && *end == '\0' && v > 0) ? static_cast<int64_t>(v) : dflt;
}

int64_t round_down(int64_t x, int64_t m) { return std::max<int64_t>(m, (x / m) * m); }

// Cache blocking for depth d: an mc x d block of packed queries fits in about half of L2,
// the packed memory panel (nc x d) in a share of L3, a super-block of queries is packed once.
Blocking choose_blocking(const Isa& isa, int64_t d) {
  const int64_t row_bytes = 4 * d;
  Blocking b;
  b.mc = round_down(env_int("MEDS_CPU_MC_BYTES", 1 << 20) / row_bytes, isa.mr);
  b.mc = std::min<int64_t>(b.mc, round_down(env_int("MEDS_CPU_MC_MAX", 4096), isa.mr));
  b.nc = round_down(env_int("MEDS_CPU_NC_BYTES", 4 << 20) / row_bytes, isa.nr);
  b.sb = round_down(env_int("MEDS_CPU_SB_BYTES", 16 << 20) / row_bytes, b.mc);
  return b;
}

int max_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

const char* group_min_cpu_simd_compiled() {
#ifdef MEDS_X86_SIMD
  return "avx512,avx2,portable";
#else
  return "portable";
#endif
}

const char* group_min_cpu_simd_selected() { return select_isa().name; }

// `a` passed validate() (group_min.cpp): float32 CPU arrays, every group id in range.
void group_min_distance_cpu(const GroupMinArgs& a) {
  const int64_t nq = a.nq, nm = a.nm, d = a.d, G = a.n_groups;
  if (nq == 0) return;
  float* out = a.out;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();

  const Isa& isa = select_isa();
  const Blocking bl = choose_blocking(isa, d);
  int nthreads = a.num_threads > 0 ? a.num_threads : max_threads();
  // Do not wake threads for tiny problems (~ 1 MFLOP per thread minimum).
  const double flops = 2.0 * static_cast<double>(nq) * static_cast<double>(nm) * d;
  const double min_flops = static_cast<double>(env_int("MEDS_CPU_THREAD_FLOPS", 1000000));
  nthreads = static_cast<int>(std::max<double>(1.0, std::min<double>(nthreads, flops / min_flops)));
  const bool cosine = a.metric == Metric::Cosine;
  // Euclidean metrics: finite inputs near the float range overflow |q|^2 + |m|^2 - 2 q.m to
  // inf or NaN. Such a result is +inf when the group has an eligible row (NaN means none).
  std::vector<char> has_rows;
  if (!cosine) {
    has_rows.assign(static_cast<size_t>(G), 0);
    for (int64_t r = 0; r < nm; ++r) has_rows[a.groups[r]] = 1;
  }

  AlignedBuffer<float> qscale(nq), qbias(nq), mscale(nm), minit(nm);
  const float* Q = static_cast<const float*>(a.queries);
  const float* M = static_cast<const float*>(a.memory);

  // Split: by queries when there are enough for every thread, else by memory rows with a
  // private output per thread, merged at the end.
  //   Query split: every thread packs all of memory (B) again; memory split: every thread
  //   packs all queries (A) again and owns an (nq, G) partial output. Pick the cheaper one.
  bool split_queries = nq >= static_cast<int64_t>(nthreads) * 2 * isa.mr;
  if (split_queries && nq <= nm) {
    const double priv_bytes = 4.0 * static_cast<double>(nq) * G * (nthreads - 1);
    if (priv_bytes <= static_cast<double>(env_int("MEDS_CPU_PRIV_BYTES", 64 << 20))) split_queries = false;
  }
  if (const char* sp = std::getenv("MEDS_CPU_SPLIT")) {  // testing knob: "queries" | "memory"
    if (sp[0] == 'q') split_queries = true;
    if (sp[0] == 'm') split_queries = false;
  }
  std::vector<AlignedBuffer<float>*> priv(nthreads, nullptr);
  std::exception_ptr err = nullptr;

  const Problem p{Q, nq, a.query_row_stride, M, nm, a.memory_row_stride, d, a.groups, G,
                  a.query_groups, a.exclude_self && a.query_groups != nullptr,
                  qscale.data(), mscale.data(), minit.data()};

  // Chunks, about 4 per thread (dynamic scheduling balances threads that other processes
  // slow down) but large enough that repacking per chunk stays cheap.
  std::vector<Chunk> chunks;
  {
    const int64_t w = split_queries ? isa.mr : isa.nr;
    const int64_t n = split_queries ? nq : nm;
    const int64_t min_rows = split_queries ? 1024 : 4096;
    const int64_t T = nthreads;
    auto up = [w](int64_t x) { return std::max<int64_t>(w, (x + w - 1) / w * w); };
    int64_t per = std::max(up((n + 4 * T - 1) / (4 * T)), up(min_rows));
    per = std::min(per, up((n + T - 1) / T));  // at least one chunk per thread
    for (int64_t s0 = 0; s0 < n; s0 += per) {
      const int64_t s1 = std::min(n, s0 + per);
      chunks.push_back(split_queries ? Chunk{s0, s1, 0, nm} : Chunk{0, nq, s0, s1});
    }
  }
  std::atomic<int64_t> next{0};
  std::atomic<int> finished{0};

  // One parallel region with a single barrier (after the per-row scales): on a machine
  // shared with other processes every synchronisation point can cost a time slice.
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
#if defined(_OPENMP)
    const int t = omp_get_thread_num();
    const int T = omp_get_num_threads();
#else
    const int t = 0, T = 1;
#endif
    // 1. Per-row scales and the +inf output (nothing here can throw).
#pragma omp for schedule(static) nowait
    for (int64_t q = 0; q < nq; ++q) {
      const double s = isa.sumsq(Q + q * a.query_row_stride, d);
      if (cosine) {
        qscale[q] = s > 0.0 ? static_cast<float>(1.0 / std::sqrt(s)) : 0.0f;
        qbias[q] = 1.0f;
      } else {
        qscale[q] = 1.0f;
        qbias[q] = static_cast<float>(s);
      }
      float* o = out + q * G;
      for (int64_t g = 0; g < G; ++g) o[g] = inf;
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < nm; ++r) {
      const double s = isa.sumsq(M + r * a.memory_row_stride, d);
      if (cosine) {
        mscale[r] = s > 0.0 ? static_cast<float>(-1.0 / std::sqrt(s)) : 0.0f;
        minit[r] = 0.0f;
      } else {
        mscale[r] = -2.0f;
        minit[r] = static_cast<float>(s);
      }
    }
    // 2. The chunks, taken dynamically.
    try {
      float* dst = out;
      if (!split_queries && t > 0) {  // memory split: private output, merged below
        priv[t] = new AlignedBuffer<float>(nq * G);
        dst = priv[t]->data();
        for (int64_t i = 0; i < nq * G; ++i) dst[i] = inf;
      }
      isa.run_chunks(p, bl, chunks.data(), static_cast<int64_t>(chunks.size()), &next, dst);
    } catch (...) {
#pragma omp critical(meds_group_min_err)
      if (!err) err = std::current_exception();
    }
    // 3. The last thread to finish merges the private outputs and converts val -> distance
    //    (NaN for groups without an eligible row); the others leave at once.
    if (finished.fetch_add(1, std::memory_order_acq_rel) == T - 1) {
      bool failed;
#pragma omp critical(meds_group_min_err)
      failed = static_cast<bool>(err);
      if (!failed) {
        for (int64_t q = 0; q < nq; ++q) {
          float* o = out + q * G;
          for (size_t t2 = 1; t2 < priv.size(); ++t2) {
            if (!priv[t2]) continue;
            const float* s = priv[t2]->data() + q * G;
            for (int64_t g = 0; g < G; ++g) o[g] = s[g] < o[g] ? s[g] : o[g];
          }
          const float bias = qbias[q];
          const int64_t qg = p.exclude_self ? a.query_groups[q] : -1;
          for (int64_t g = 0; g < G; ++g) {
            const float v = o[g];
            if (!cosine && !std::isfinite(v)) {  // no eligible row (inf), or an overflow
              o[g] = has_rows[g] && g != qg ? inf : nan;
            } else if (v == inf) {
              o[g] = nan;
            } else {
              float dist = bias + v;
              dist = dist > 0.0f ? dist : 0.0f;
              if (a.metric == Metric::L2) dist = std::sqrt(dist);
              o[g] = dist;
            }
          }
        }
      }
    }
  }
  for (auto* b : priv) delete b;
  if (err) std::rethrow_exception(err);
}

}  // namespace meds

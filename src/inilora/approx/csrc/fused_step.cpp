// The "cpu-fused" IniLoRA approximation step (docs/design.md §3, §7): one pass over each W per step
// feeds both W·P and Wᵀ·U; then the r×r algebra, the analytic gradients and Adam, fused.
//
// Plain C ABI (loaded with ctypes), no torch headers: the build takes seconds, not minutes.
// Vector code uses GCC/Clang vector extensions, so one source serves every ISA that
// -march=native enables: 16 lanes with AVX-512, 8 with AVX/AVX2, 4 otherwise (SSE2, NEON, or
// scalar code where the target has no SIMD).  INILORA_VL overrides the width (tests build the
// 16- and 4-lane layouts on an 8-lane machine: same results, emulated width).
//
// Per matrix (W: d×k fp32 row-major, rank r padded to rp, U: d×rp, P: k×rp, both row-major):
//
//   WP = W P (d×rp),  WtU = Wᵀ U (k×rp),  c = 2/(d·k)
//   gU = c (U (PᵀP) − WP),  gP = c (P (UᵀU) − WtU),  Adam (torch.optim.Adam's formula).
//
// Products kernel: R rows of W at a time; for each group of G consecutive columns, one
// broadcast of those G values of a row (G = 1: one value to all lanes; G = 2: a pair, the
// docs/design.md's AVX-512 design for r = 8) feeds two FMAs: the row's W·P accumulator (a register) and
// the group's Wᵀ·U accumulator (one vector, kept in L1 across the R rows).  With G > 1 the
// vector lanes are (c·G + s) = column j+s, factor column c, so P and the Wᵀ·U accumulator are
// stored "group-interleaved" and U is duplicated G-fold (built once per row block).  Padded
// factor columns are zero, stay zero under Adam (zero gradient, zero moments) and cost nothing
// beyond their lanes.
//
// Threads (OpenMP): work items are (matrix, row range) pieces whose split depends only on the
// shapes, never on the thread count; every item accumulates Wᵀ·U into its own buffer and the
// owner of the matrix sums them in item order.  So the result is bit-identical for any
// thread count and scheduling.  Threads meet at barriers only where a matrix is split.
//
// Memory: a matrix that fits a core's cache share runs all the steps between two log points
// in a row (see ifs_run), so its W comes from cache after the first step; a split (big)
// matrix streams W from memory every step.  For those streams the W of all matrices is
// packed into one buffer on transparent huge pages (fewer TLB misses across the R row
// streams) and the next row block is prefetched in step with the current one.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__AVX__)
#include <immintrin.h>
#endif

#ifndef INILORA_VL
#if defined(__AVX512F__)
#define INILORA_VL 16
#elif defined(__AVX__)
#define INILORA_VL 8
#else
#define INILORA_VL 4
#endif
#endif

#ifndef INILORA_NREG
#if defined(__AVX512F__)
#define INILORA_NREG 32
#else
#define INILORA_NREG 16
#endif
#endif

namespace {

constexpr int VL = INILORA_VL;
static_assert(VL == 4 || VL == 8 || VL == 16, "INILORA_VL must be 4, 8 or 16");
constexpr int NREG = INILORA_NREG;

typedef float vf __attribute__((vector_size(VL * sizeof(float))));

inline vf vload(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf vzero() { return vf{}; }

// Replicate the G floats at p across the VL lanes: lane l = p[l % G].
template <int G, std::size_t... I>
inline vf replicate(const float* p, std::index_sequence<I...>) {
  typedef float vg __attribute__((vector_size(G * sizeof(float))));
  vg x;
  std::memcpy(&x, p, sizeof x);
  return __builtin_shufflevector(x, x, (static_cast<int>(I % G))...);
}
// One load-only broadcast per call where the ISA has it (vbroadcastss / vbroadcastsd for a
// pair / vbroadcastf128 / vbroadcastf32x4 / vbroadcastf64x4): no shuffle-port µop.
template <int G>
inline vf bcast(const float* p) {
  if constexpr (G == VL) {
    return vload(p);
  } else if constexpr (G == 1) {
    vf v = vzero();
    return *p - v;  // x − (+0) = x exactly: a broadcast
  } else if constexpr (G == 2) {
    typedef double vd __attribute__((vector_size(VL * sizeof(float))));
    double x;
    std::memcpy(&x, p, sizeof x);
    vd z = {};
    return (vf)(x - z);  // the pair as one double (W is finite: never a NaN pattern)
  }
#if INILORA_VL == 16 && defined(__AVX512F__)
  else if constexpr (G == 4) {
    return (vf)_mm512_broadcast_f32x4(_mm_loadu_ps(p));
  } else if constexpr (G == 8) {
    return (vf)_mm512_broadcast_f64x4(_mm256_loadu_pd(reinterpret_cast<const double*>(p)));
  }
#elif INILORA_VL == 8 && defined(__AVX__)
  else if constexpr (G == 4) {
    return (vf)_mm256_broadcast_ps(reinterpret_cast<const __m128*>(p));
  }
#endif
  else {
    return replicate<G>(p, std::make_index_sequence<VL>{});
  }
}

inline float fmaf_(float a, float b, float c) {
#if defined(__FMA__) || defined(__aarch64__)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

// Rows per block: accumulators + U rows in registers, plus P, Wᵀ·U and one broadcast.
template <int NV>
constexpr int rows_max() {
  int r = (NREG - 1 - 2 * NV) / (2 * NV);
  if (NREG >= 32) r = std::min(r, 8);
  return std::max(1, std::min(r, 8));
}

// One block of R rows starting at row i of W.
//   G > 1 (NV = 1): P / T group-interleaved with group stride VL; U, WP rows of rp floats.
//   G = 1: P, T, U, WP rows of stride ld* floats, already offset to the column chunk.
template <int G, int NV, int R>
inline void block(const float* __restrict W, int64_t ldw, int k, int i, const float* __restrict U, int ldu,
                  const float* __restrict P, int ldp, float* __restrict T, int ldt, float* __restrict WP,
                  int ldwp, int rp) {
  vf u[R][NV], acc[R][NV];
  const float* wr[R];
  for (int a = 0; a < R; a++) {
    wr[a] = W + (int64_t)(i + a) * ldw;
    for (int v = 0; v < NV; v++) acc[a][v] = vzero();
    if constexpr (G == 1) {
      for (int v = 0; v < NV; v++) u[a][v] = vload(U + (int64_t)(i + a) * ldu + v * VL);
    } else {
      alignas(64) float dup[VL];
      const float* ur = U + (int64_t)(i + a) * ldu;
      for (int l = 0; l < VL; l++) dup[l] = ur[l / G];
      u[a][0] = vload(dup);
    }
  }
  const int ng = k / G;
  for (int jg = 0; jg < ng; jg++) {
    vf p[NV], t[NV];
    for (int v = 0; v < NV; v++) {
      p[v] = vload(P + (int64_t)jg * ldp + v * VL);
      t[v] = vload(T + (int64_t)jg * ldt + v * VL);
    }
    // Software prefetch of the next block's rows, in step with this one (one block ahead, to
    // L2): the hardware prefetchers alone leave the R interleaved row streams ~20 % short.
    if (((jg * G) & 15) == 0) {
      for (int a = 0; a < R; a++) __builtin_prefetch(wr[a] + (int64_t)R * ldw + (int64_t)jg * G, 0, 1);
    }
    // Two Wᵀ·U chains (first and second half of the rows) halve the FMA latency chain.
    constexpr int H = R >= 4 ? R / 2 : R;
    vf t2[NV];
    for (int v = 0; v < NV; v++) t2[v] = vzero();
    for (int a = 0; a < R; a++) {
      vf b = bcast<G>(wr[a] + (int64_t)jg * G);
      for (int v = 0; v < NV; v++) {
        acc[a][v] += b * p[v];
        if (a < H) {
          t[v] += b * u[a][v];
        } else {
          t2[v] += b * u[a][v];
        }
      }
    }
    for (int v = 0; v < NV; v++) vstore(T + (int64_t)jg * ldt + v * VL, H < R ? t[v] + t2[v] : t[v]);
  }
  if constexpr (G > 1) {
    const int rem = k - ng * G;
    if (rem > 0) {  // last, partial group: the missing columns read as 0 (P_il rows are 0 there)
      vf p = vload(P + (int64_t)ng * ldp);
      vf t = vload(T + (int64_t)ng * ldt);
      for (int a = 0; a < R; a++) {
        alignas(64) float tail[G] = {};
        for (int s = 0; s < rem; s++) tail[s] = wr[a][(int64_t)ng * G + s];
        vf b = bcast<G>(tail);
        acc[a][0] += b * p;
        t += b * u[a][0];
      }
      vstore(T + (int64_t)ng * ldt, t);
    }
    for (int a = 0; a < R; a++) {
      alignas(64) float lanes[VL];
      vstore(lanes, acc[a][0]);
      float* out = WP + (int64_t)(i + a) * ldwp;
      for (int c = 0; c < rp; c++) {
        float s = lanes[c * G];
        for (int q = 1; q < G; q++) s += lanes[c * G + q];
        out[c] = s;
      }
    }
  } else {
    for (int a = 0; a < R; a++)
      for (int v = 0; v < NV; v++) vstore(WP + (int64_t)(i + a) * ldwp + v * VL, acc[a][v]);
  }
}

template <int G, int NV, int R>
void rows_kernel(const float* W, int64_t ldw, int k, int i0, int i1, const float* U, int ldu, const float* P, int ldp,
                 float* T, int ldt, float* WP, int ldwp, int rp) {
  int i = i0;
  for (; i + R <= i1; i += R) block<G, NV, R>(W, ldw, k, i, U, ldu, P, ldp, T, ldt, WP, ldwp, rp);
  if constexpr (R > 1) {
    if (i < i1) rows_kernel<G, NV, R - 1>(W, ldw, k, i, i1, U, ldu, P, ldp, T, ldt, WP, ldwp, rp);
  }
}

typedef void (*rows_fn)(const float*, int64_t, int, int, int, const float*, int, const float*, int, float*, int, float*,
                        int, int);

rows_fn kernel_for(int G, int NV) {
  if (NV == 2) return rows_kernel<1, 2, rows_max<2>()>;
  switch (G) {
    case 1: return rows_kernel<1, 1, rows_max<1>()>;
    case 2: return rows_kernel<2, 1, rows_max<1>()>;
    case 4: return rows_kernel<4, 1, rows_max<1>()>;
#if INILORA_VL >= 8
    case 8: return rows_kernel<8, 1, rows_max<1>()>;
#endif
#if INILORA_VL >= 16
    case 16: return rows_kernel<16, 1, rows_max<1>()>;
#endif
  }
  return nullptr;
}

float* alloc_floats(int64_t n) {
  std::size_t bytes = (std::size_t)std::max<int64_t>(n, 1) * sizeof(float);
  bytes = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, bytes);
  return static_cast<float*>(p);
}

struct Mat {
  const float* W;
  int64_t ldw;
  int d, k, rp, G;
  int64_t offU, offP;  // into the flat parameter / moment buffers
  float c;             // 2/(d·k) as the fp32 scalar the torch engine uses
  float* WP;           // d×rp
  float* WtU;          // k×rp (normal layout; aliases the single item's buffer when possible)
  float* Pil;          // G > 1: P group-interleaved, ceil(k/G)·VL floats
  float* Pt;           // rp×k (losses only)
  int item0, nitems;
};

struct Item {
  int mat, row0, row1;
  float* T;  // this item's Wᵀ·U accumulator (layout of P_il when G > 1, k×rp otherwise)
  double sq;  // losses: this item's sum of squared errors
};

struct Plan {
  int n = 0, nthreads = 1;
  std::vector<Mat> mats;
  std::vector<Item> items;
  std::vector<int> item_lo, mat_lo;  // thread t: items [item_lo[t], item_lo[t+1]), same for mats
  std::vector<int> whole;            // matrices of one item, largest first (scheduled dynamically)
  std::vector<int> split_items, split_item_lo;  // items of the other matrices, static per thread
  std::vector<int> split_mats, split_lo;        // those matrices, updated after a barrier
  std::atomic<int> next{0};
  float *params = nullptr, *m = nullptr, *v = nullptr;
  std::vector<float*> owned;
  std::vector<float*> gbuf;  // per-thread gradient scratch
  float* packed = nullptr;    // every W, fp32, in one buffer on huge pages (when packing)
  int64_t steps_done = 0;
  ~Plan() {
    std::free(packed);
    for (float* p : owned) std::free(p);
    for (float* p : gbuf) std::free(p);
  }
  float* own(int64_t n) {
    float* p = alloc_floats(n);
    owned.push_back(p);
    return p;
  }
};

// Contiguous split of [0, n) into T ranges of about equal cost (midpoint rule).
std::vector<int> split(const std::vector<double>& cost, int T) {
  double total = 0;
  for (double c : cost) total += c;
  std::vector<int> lo(T + 1, (int)cost.size());
  lo[0] = 0;
  double before = 0;
  int t = 1;
  for (int i = 0; i < (int)cost.size(); i++) {
    double mid = before + cost[i] / 2;
    while (t < T && total > 0 && mid >= total * t / T) lo[t++] = i;
    before += cost[i];
  }
  for (int q = 1; q <= T; q++) lo[q] = std::max(lo[q], lo[q - 1]);
  return lo;
}

void build_pil(const Plan& pl, const Mat& M) {
  if (M.G == 1) return;
  const float* P = pl.params + M.offP;
  const int G = M.G, ng = (M.k + G - 1) / G;
  for (int jg = 0; jg < ng; jg++) {
    float* dst = M.Pil + (int64_t)jg * VL;
    for (int c = 0; c < M.rp; c++)
      for (int s = 0; s < G; s++) {
        int j = jg * G + s;
        dst[c * G + s] = j < M.k ? P[(int64_t)j * M.rp + c] : 0.0f;
      }
  }
}

// Phase 1: both products for one item.
void products(const Plan& pl, const Item& it) {
  const Mat& M = pl.mats[it.mat];
  const float* U = pl.params + M.offU;
  const int rp = M.rp;
  if (M.G > 1) {
    const int ng = (M.k + M.G - 1) / M.G;
    std::memset(it.T, 0, sizeof(float) * (size_t)ng * VL);
    kernel_for(M.G, 1)(M.W, M.ldw, M.k, it.row0, it.row1, U, rp, M.Pil, VL, it.T, VL, M.WP, rp, rp);
    return;
  }
  const float* P = pl.params + M.offP;
  std::memset(it.T, 0, sizeof(float) * (size_t)M.k * rp);
  const int nvec = rp / VL;
  for (int v0 = 0; v0 < nvec;) {
    const int nv = (nvec - v0 >= 2) ? 2 : 1;
    const int c0 = v0 * VL;
    kernel_for(1, nv)(M.W, M.ldw, M.k, it.row0, it.row1, U + c0, rp, P + c0, rp, it.T + c0, rp, M.WP + c0, rp, rp);
    v0 += nv;
  }
}

// Gram matrix X Xᵀ... of the rows of X (n×rp): out[a][b] = Σ_i X[i,a] X[i,b], rows in order.
void gram(const float* X, int n, int rp, float* out) {
  std::memset(out, 0, sizeof(float) * (size_t)rp * rp);
  for (int i = 0; i < n; i++) {
    const float* x = X + (int64_t)i * rp;
    for (int a = 0; a < rp; a++) {
      const float xa = x[a];
      float* o = out + (int64_t)a * rp;
      for (int b = 0; b < rp; b++) o[b] = fmaf_(xa, x[b], o[b]);
    }
  }
}

// Fast paths for rp = NR·VL (NR = 1, 2): the r×r accumulators / operands live in registers.
// Same arithmetic and order as gram() / grad_rows() (one FMA per term, rows in order).
template <int NR>
void gram_v(const float* X, int n, float* out) {
  constexpr int RP = NR * VL;
  vf acc[RP][NR];
  for (int a = 0; a < RP; a++)
    for (int v = 0; v < NR; v++) acc[a][v] = vzero();
  for (int i = 0; i < n; i++) {
    const float* x = X + (int64_t)i * RP;
    vf xv[NR];
    for (int v = 0; v < NR; v++) xv[v] = vload(x + v * VL);
    for (int a = 0; a < RP; a++) {
      const vf xa = x[a] - vzero();
      for (int v = 0; v < NR; v++) acc[a][v] += xa * xv[v];
    }
  }
  for (int a = 0; a < RP; a++)
    for (int v = 0; v < NR; v++) vstore(out + a * RP + v * VL, acc[a][v]);
}

template <int NR>
void grad_v(const float* X, const float* A, const float* Y, int n, float c, float* g) {
  constexpr int RP = NR * VL;
  vf av[RP][NR];
  for (int a = 0; a < RP; a++)
    for (int v = 0; v < NR; v++) av[a][v] = vload(A + a * RP + v * VL);
  const vf cv = c - vzero(), ncv = -c - vzero();
  for (int i = 0; i < n; i++) {
    const float* x = X + (int64_t)i * RP;
    vf gv[NR];
    for (int v = 0; v < NR; v++) gv[v] = vzero();
    for (int a = 0; a < RP; a++) {
      const vf xa = x[a] - vzero();
      for (int v = 0; v < NR; v++) gv[v] += xa * av[a][v];
    }
    for (int v = 0; v < NR; v++) vstore(g + (int64_t)i * RP + v * VL, ncv * vload(Y + (int64_t)i * RP + v * VL) + cv * gv[v]);
  }
}

struct AdamScalars {
  float lerp_w, beta2, one_minus_beta2, eps, neg_step_size, bc2_sqrt;
};

// torch.optim.Adam's single-tensor update (CPU kernels: lerp and addcmul use an FMA;
// denom = sqrt(v) / bc2_sqrt + eps; p += (−step_size · m) / denom).
void adam(float* __restrict p, float* __restrict m, float* __restrict v, const float* __restrict g, int64_t n,
          const AdamScalars& s) {
  for (int64_t i = 0; i < n; i++) {
    const float gi = g[i];
    const float mi = fmaf_(s.lerp_w, gi - m[i], m[i]);
    const float vi = fmaf_(s.one_minus_beta2 * gi, gi, v[i] * s.beta2);
    m[i] = mi;
    v[i] = vi;
    const float den = std::sqrt(vi) / s.bc2_sqrt + s.eps;
    p[i] = p[i] + (s.neg_step_size * mi) / den;
  }
}

// g = c·(X·A) − c·Y for n rows of rp (A: rp×rp symmetric), as baddbmm(Y, ·, ·, beta=−c, alpha=c).
void grad_rows(const float* X, const float* A, const float* Y, int n, int rp, float c, float* g) {
  const float nc = -c;
  for (int i = 0; i < n; i++) {
    const float* x = X + (int64_t)i * rp;
    float* gi = g + (int64_t)i * rp;
    for (int b = 0; b < rp; b++) gi[b] = 0.0f;
    for (int a = 0; a < rp; a++) {
      const float xa = x[a];
      const float* ar = A + (int64_t)a * rp;
      for (int b = 0; b < rp; b++) gi[b] = fmaf_(xa, ar[b], gi[b]);
    }
    const float* y = Y + (int64_t)i * rp;
    for (int b = 0; b < rp; b++) gi[b] = nc * y[b] + c * gi[b];
  }
}

// Phase 2 for one matrix: sum the items' Wᵀ·U, then gradients and Adam, then P_il.
void update(Plan& pl, Mat& M, float* g, const AdamScalars& s) {
  const int rp = M.rp, d = M.d, k = M.k;
  // Wᵀ·U: de-interleave / sum the items' accumulators, in item order.
  const Item* its = pl.items.data() + M.item0;
  if (M.G > 1) {
    const int G = M.G;
    for (int j = 0; j < k; j++) {
      const int jg = j / G, sj = j % G;
      for (int c = 0; c < rp; c++) {
        float acc = its[0].T[(int64_t)jg * VL + c * G + sj];
        for (int q = 1; q < M.nitems; q++) acc += its[q].T[(int64_t)jg * VL + c * G + sj];
        M.WtU[(int64_t)j * rp + c] = acc;
      }
    }
  } else if (M.nitems > 1) {
    const int64_t len = (int64_t)k * rp;
    std::memcpy(M.WtU, its[0].T, sizeof(float) * len);
    for (int q = 1; q < M.nitems; q++)
      for (int64_t e = 0; e < len; e++) M.WtU[e] += its[q].T[e];
  }  // else: WtU aliases its[0].T
  float* U = pl.params + M.offU;
  float* P = pl.params + M.offP;
  alignas(64) float UtU[64 * 64];
  alignas(64) float PtP[64 * 64];
  std::vector<float> big;
  float *uu = UtU, *pp = PtP;
  if (rp > 64) {
    big.resize((size_t)2 * rp * rp);
    uu = big.data();
    pp = big.data() + (size_t)rp * rp;
  }
  if (rp == VL) {
    gram_v<1>(U, d, uu);
    gram_v<1>(P, k, pp);
  } else if (rp == 2 * VL) {
    gram_v<2>(U, d, uu);
    gram_v<2>(P, k, pp);
  } else {
    gram(U, d, rp, uu);
    gram(P, k, rp, pp);
  }
  auto grad = [&](const float* X, const float* A, const float* Y, int rows) {
    if (rp == VL) grad_v<1>(X, A, Y, rows, M.c, g);
    else if (rp == 2 * VL) grad_v<2>(X, A, Y, rows, M.c, g);
    else grad_rows(X, A, Y, rows, rp, M.c, g);
  };
  grad(U, pp, M.WP, d);
  adam(U, pl.m + M.offU, pl.v + M.offU, g, (int64_t)d * rp, s);
  grad(P, uu, M.WtU, k);
  adam(P, pl.m + M.offP, pl.v + M.offP, g, (int64_t)k * rp, s);
  build_pil(pl, M);
}

// Losses, phase A (per matrix): Pᵀ (rp×k).
void build_pt(const Plan& pl, const Mat& M) {
  const float* P = pl.params + M.offP;
  for (int j = 0; j < M.k; j++)
    for (int c = 0; c < M.rp; c++) M.Pt[(int64_t)c * M.k + j] = P[(int64_t)j * M.rp + c];
}

// Losses, phase B (per item): Σ (U Pᵀ − W)² over the item's rows, E formed in fp32.
double item_sq(const Plan& pl, const Item& it) {
  const Mat& M = pl.mats[it.mat];
  const float* U = pl.params + M.offU;
  const int k = M.k, rp = M.rp;
  double total = 0;
  for (int i = it.row0; i < it.row1; i++) {
    const float* w = M.W + (int64_t)i * M.ldw;
    const float* u = U + (int64_t)i * rp;
    vf acc = vzero();
    int j = 0;
    for (; j + VL <= k; j += VL) {
      vf e = vzero();
      for (int c = 0; c < rp; c++) {
        vf uc = u[c] - vzero();
        e += uc * vload(M.Pt + (int64_t)c * k + j);
      }
      e -= vload(w + j);
      acc += e * e;
    }
    float tail = 0;
    for (; j < k; j++) {
      float e = 0;
      for (int c = 0; c < rp; c++) e = fmaf_(u[c], M.Pt[(int64_t)c * k + j], e);
      e -= w[j];
      tail += e * e;
    }
    alignas(64) float lanes[VL];
    vstore(lanes, acc);
    double row = tail;
    for (int l = 0; l < VL; l++) row += lanes[l];
    total += row;
  }
  return total;
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
inline void barrier() {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

// Runs body(tid, T) on T threads; where OpenMP gives fewer (nested region, thread limit), one
// thread runs every range in turn with body(-1, T) and no barriers.
template <typename F>
void parallel(int T, F&& body) {
#ifdef _OPENMP
  if (T > 1) {
#pragma omp parallel num_threads(T)
    {
      if (omp_get_num_threads() == T) {
        body(thread_id(), true);
      } else if (thread_id() == 0) {
        body(-1, false);
      }
    }
    return;
  }
#endif
  body(T > 1 ? -1 : 0, false);
}

}  // namespace

extern "C" {

int ifs_vector_width() { return VL; }

const char* ifs_isa() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__)
  return "avx2";
#elif defined(__AVX__)
  return "avx";
#elif defined(__SSE2__)
  return "sse2";
#elif defined(__aarch64__)
  return "neon";
#else
  return "generic";
#endif
}

// Padded rank: the next power of two ≤ VL, or the next multiple of VL above it.
int ifs_padded_rank(int r) {
  if (r <= 0) return 0;
  if (r > VL) return (r + VL - 1) / VL * VL;
  int p = 1;
  while (p < r) p *= 2;
  return p;
}

int ifs_threads_available() {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

// desc: n rows of 8 int64: W address, ldw (elements), d, k, rp, offU, offP (offsets into
// params/m/v), W dtype (0: fp32, 1: bf16).  chunk: most W elements per work item (shapes decide
// the split, never the thread count).  pack: copy every W (cast up to fp32: exact) into one
// buffer backed by transparent huge pages — the kernel streams W from memory every step, and
// with 4 KiB pages the TLB misses of its R row streams cost ~10 %; bf16 weights are always packed.
void* ifs_create(int n, const int64_t* desc, float* params, float* m, float* v, int nthreads, int64_t chunk,
                 int pack) {
  Plan* pl = nullptr;
  try {
    pl = new Plan();
    pl->n = n;
    pl->nthreads = std::max(1, nthreads);
    pl->params = params;
    pl->m = m;
    pl->v = v;
    if (chunk < 1) chunk = 1;
    int64_t gmax = 1;
    std::vector<double> mcost;
    for (int i = 0; i < n; i++) {
      const int64_t* q = desc + 8 * (int64_t)i;
      Mat M{};
      M.W = reinterpret_cast<const float*>(static_cast<intptr_t>(q[0]));
      M.ldw = q[1];
      M.d = (int)q[2];
      M.k = (int)q[3];
      M.rp = (int)q[4];
      M.offU = q[5];
      M.offP = q[6];
      if (q[7] != 0 && !pack) {  // only fp32 is read in place
        delete pl;
        return nullptr;
      }
      if (M.rp < 1 || (M.rp < VL && VL % M.rp) || (M.rp > VL && M.rp % VL)) {
        delete pl;
        return nullptr;
      }
      M.G = M.rp >= VL ? 1 : VL / M.rp;
      M.c = (float)(2.0 / ((double)M.d * (double)M.k));
      M.WP = pl->own((int64_t)M.d * M.rp);
      M.Pt = pl->own((int64_t)M.k * M.rp);
      const int64_t nel = (int64_t)M.d * M.k;
      int nit = (int)std::min<int64_t>(std::max<int64_t>(1, (nel + chunk - 1) / chunk), std::max(1, M.d));
      M.item0 = (int)pl->items.size();
      M.nitems = nit;
      const int64_t tlen = M.G > 1 ? (int64_t)((M.k + M.G - 1) / M.G) * VL : (int64_t)M.k * M.rp;
      for (int q2 = 0; q2 < nit; q2++) {
        Item it{};
        it.mat = i;
        it.row0 = (int)((int64_t)M.d * q2 / nit);
        it.row1 = (int)((int64_t)M.d * (q2 + 1) / nit);
        it.T = pl->own(tlen);
        pl->items.push_back(it);
      }
      M.WtU = (M.G == 1 && nit == 1) ? pl->items[M.item0].T : pl->own((int64_t)M.k * M.rp);
      M.Pil = M.G > 1 ? pl->own(tlen) : nullptr;
      gmax = std::max<int64_t>(gmax, (int64_t)std::max(M.d, M.k) * M.rp);
      mcost.push_back((double)(M.d + M.k) * M.rp + 1.0);
      pl->mats.push_back(M);
    }
    if (pack) {
      std::vector<int64_t> at(n + 1, 0);
      for (int i = 0; i < n; i++) at[i + 1] = at[i] + ((int64_t)pl->mats[i].d * pl->mats[i].k + 15) / 16 * 16;
      const std::size_t huge = (std::size_t)2 << 20;
      const std::size_t bytes = ((std::size_t)at[n] * sizeof(float) + huge - 1) / huge * huge;
      pl->packed = static_cast<float*>(std::aligned_alloc(huge, bytes));
      if (!pl->packed) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      madvise(pl->packed, bytes, MADV_HUGEPAGE);  // a hint: without THP this changes nothing
#endif
      for (int i = 0; i < n; i++) {
        Mat& M = pl->mats[i];
        const int64_t* q = desc + 8 * (int64_t)i;
        float* dst = pl->packed + at[i];
        for (int r = 0; r < M.d; r++) {
          float* out = dst + (int64_t)r * M.k;
          if (q[7] == 1) {
            const uint16_t* src = reinterpret_cast<const uint16_t*>(static_cast<intptr_t>(q[0])) + (int64_t)r * M.ldw;
            for (int j = 0; j < M.k; j++) {
              const uint32_t bits = (uint32_t)src[j] << 16;
              std::memcpy(out + j, &bits, 4);
            }
          } else {
            std::memcpy(out, M.W + (int64_t)r * M.ldw, sizeof(float) * (size_t)M.k);
          }
        }
        M.W = dst;
        M.ldw = M.k;
      }
    }
    for (auto& M : pl->mats) build_pil(*pl, M);
    std::vector<double> icost;
    for (auto& it : pl->items) icost.push_back((double)(it.row1 - it.row0) * pl->mats[it.mat].k + 1.0);
    pl->item_lo = split(icost, pl->nthreads);
    pl->mat_lo = split(mcost, pl->nthreads);
    std::vector<double> scost, sicost;
    for (int i = 0; i < n; i++) {
      const Mat& M = pl->mats[i];
      if (M.nitems == 1) {
        pl->whole.push_back(i);
        continue;
      }
      pl->split_mats.push_back(i);
      scost.push_back(mcost[i]);
      for (int q = M.item0; q < M.item0 + M.nitems; q++) {
        pl->split_items.push_back(q);
        sicost.push_back(icost[q]);
      }
    }
    std::stable_sort(pl->whole.begin(), pl->whole.end(), [&](int a, int b) {
      return (int64_t)pl->mats[a].d * pl->mats[a].k * pl->mats[a].rp > (int64_t)pl->mats[b].d * pl->mats[b].k * pl->mats[b].rp;
    });
    pl->split_lo = split(scost, pl->nthreads);
    pl->split_item_lo = split(sicost, pl->nthreads);
    for (int t = 0; t < pl->nthreads; t++) pl->gbuf.push_back(alloc_floats(gmax));
    return pl;
  } catch (...) {
    delete pl;
    return nullptr;
  }
}

// Re-interleave P after the caller changed the parameters (e.g. resumed from a checkpoint).
void ifs_refresh(void* handle) {
  Plan* pl = static_cast<Plan*>(handle);
  for (auto& M : pl->mats) build_pil(*pl, M);
}

// nsteps Adam steps; per step: −step_size (= −lr_t / (1 − β1^t)) and √(1 − β2^t), as doubles
// (cast to fp32 here, as torch casts its Python-float scalars).
//
// Matrices are independent of each other between two calls (the caller logs losses and takes
// checkpoints only between calls), so the loop order is chosen for the caches, not by step:
//  1. matrices split into several items (too big for one core's cache share): step by step,
//     items statically partitioned over the threads, a barrier before and after the updates;
//  2. every other matrix: all nsteps of it in a row, so that after the first step its W is
//     read from cache rather than memory; matrices are handed out dynamically, largest first,
//     which also absorbs a thread slowed down by other work on the machine.
// Neither the order nor the thread a matrix runs on changes any arithmetic.
int ifs_run(void* handle, int nsteps, const double* neg_step_size, const double* bc2_sqrt, double beta1,
            double beta2, double eps) {
  Plan* pl = static_cast<Plan*>(handle);
  if (!pl) return -1;
  const int T = pl->nthreads;
  auto scalars = [&](int s) {
    AdamScalars sc;
    sc.lerp_w = (float)(1.0 - beta1);
    sc.beta2 = (float)beta2;
    sc.one_minus_beta2 = (float)(1.0 - beta2);
    sc.eps = (float)eps;
    sc.neg_step_size = (float)neg_step_size[s];
    sc.bc2_sqrt = (float)bc2_sqrt[s];
    return sc;
  };
  pl->next.store(0);
  const int nwhole = (int)pl->whole.size();
  parallel(T, [&](int tid, bool team) {
    // tid < 0: this thread runs every thread's share in turn (same arithmetic).
    const int t0 = tid < 0 ? 0 : tid, t1 = tid < 0 ? T : tid + 1;
    float* g = pl->gbuf[t0];
    if (!pl->split_mats.empty()) {
      for (int s = 0; s < nsteps; s++) {
        const AdamScalars sc = scalars(s);
        for (int q = pl->split_item_lo[t0]; q < pl->split_item_lo[t1]; q++) products(*pl, pl->items[pl->split_items[q]]);
        if (team) barrier();
        for (int q = pl->split_lo[t0]; q < pl->split_lo[t1]; q++) update(*pl, pl->mats[pl->split_mats[q]], g, sc);
        if (team) barrier();
      }
    }
    for (int serial = 0;; serial++) {
      const int q = team ? pl->next.fetch_add(1, std::memory_order_relaxed) : serial;
      if (q >= nwhole) break;
      Mat& M = pl->mats[pl->whole[q]];
      const Item& it = pl->items[M.item0];
      for (int s = 0; s < nsteps; s++) {
        products(*pl, it);
        update(*pl, M, g, scalars(s));
      }
    }
  });
  pl->steps_done += nsteps;
  return 0;
}

// Per-matrix mean squared error of W − U Pᵀ (E formed explicitly, fp32; sums in fp64).
void ifs_losses(void* handle, double* out) {
  Plan* pl = static_cast<Plan*>(handle);
  const int T = pl->nthreads;
  parallel(T, [&](int tid, bool team) {
    const int t0 = tid < 0 ? 0 : tid, t1 = tid < 0 ? T : tid + 1;
    for (int mi = pl->mat_lo[t0]; mi < pl->mat_lo[t1]; mi++) build_pt(*pl, pl->mats[mi]);
    if (team) barrier();
    for (int q = pl->item_lo[t0]; q < pl->item_lo[t1]; q++) pl->items[q].sq = item_sq(*pl, pl->items[q]);
  });
  for (int i = 0; i < pl->n; i++) {
    const Mat& M = pl->mats[i];
    double s = 0;
    for (int q = 0; q < M.nitems; q++) s += pl->items[M.item0 + q].sq;
    out[i] = s / ((double)M.d * (double)M.k);
  }
}

int64_t ifs_steps_done(void* handle) { return static_cast<Plan*>(handle)->steps_done; }

void ifs_destroy(void* handle) { delete static_cast<Plan*>(handle); }

}  // extern "C"

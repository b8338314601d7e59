// Exact greedy diversity filter: see greedy.hpp for the semantics and the algorithm.
#include "greedy.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

// Runtime dispatch: with GCC on x86-64 Linux (ifunc) and no -mavx at build time, the hot
// functions are compiled three times (FMA+AVX, AVX, baseline SSE2) and the loader picks one per
// CPU. All use the same summation order (fixed by the code below); the FMA variant rounds each
// multiply-add once (GCC contracts `acc += x * y`), so on CPUs without FMA a similarity can
// differ in its last bit. That only matters for a similarity within ~1e-7 of the threshold;
// on one machine the result never depends on the thread count or block size.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(__AVX__) && !defined(LASER_FAST_NO_DISPATCH)
#define LASER_HOT __attribute__((target_clones("fma", "avx", "default")))
#define LASER_DISPATCH 1
#else
#define LASER_HOT
#define LASER_DISPATCH 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define LASER_INLINE inline __attribute__((always_inline))
#else
#define LASER_INLINE inline
#endif

namespace laser_fast {
namespace {

// ---------------------------------------------------------------------------------------------
// Dot kernel.
//
// Fixed summation order (independent of the compiler's vectoriser, threads and call site):
// lane k (0 <= k < kLanes) accumulates a[i] * b[i] for i = k, k + kLanes, k + 2 kLanes, ... in
// increasing i, then the lanes are combined by the fixed tree in hsum. Zero padding of both
// vectors to a multiple of kLanes does not change the result (adding +0.0f is exact), which
// lets the hot loops work on padded, aligned rows without a tail.
// ---------------------------------------------------------------------------------------------
constexpr int kLanes = 8;
constexpr std::size_t kAlign = 64;

#if (defined(__GNUC__) || defined(__clang__)) && !defined(LASER_FAST_NO_VECTOR_EXT)
#define LASER_VECTOR_EXT 1
// The vector helpers below are internal and always inlined; the ABI note about passing 32-byte
// vectors without AVX does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));

LASER_INLINE vf load(const float* p) {
    vf v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
LASER_INLINE vf zero_vf() {
    vf v = {};
    return v;
}
LASER_INLINE float hsum(vf v) {
    // Fixed tree: (l0+l4, l1+l5, l2+l6, l3+l7) -> (h0+h2, h1+h3) -> g0+g1.
    const float h0 = v[0] + v[4], h1 = v[1] + v[5], h2 = v[2] + v[6], h3 = v[3] + v[7];
    const float g0 = h0 + h2, g1 = h1 + h3;
    return g0 + g1;
}
#else
#define LASER_VECTOR_EXT 0
struct vf {
    float l[kLanes];
};
LASER_INLINE vf load(const float* p) {
    vf v;
    std::memcpy(v.l, p, sizeof(v.l));
    return v;
}
LASER_INLINE vf zero_vf() {
    vf v;
    for (int k = 0; k < kLanes; ++k) v.l[k] = 0.0f;
    return v;
}
LASER_INLINE vf operator*(const vf& a, const vf& b) {
    vf r;
    for (int k = 0; k < kLanes; ++k) r.l[k] = a.l[k] * b.l[k];
    return r;
}
LASER_INLINE vf& operator+=(vf& a, const vf& b) {
    for (int k = 0; k < kLanes; ++k) a.l[k] += b.l[k];
    return a;
}
LASER_INLINE float hsum(const vf& v) {
    const float h0 = v.l[0] + v.l[4], h1 = v.l[1] + v.l[5], h2 = v.l[2] + v.l[6],
                h3 = v.l[3] + v.l[7];
    const float g0 = h0 + h2, g1 = h1 + h3;
    return g0 + g1;
}
#endif

// dp: multiple of kLanes.
LASER_INLINE float dot1(const float* x, const float* a, int64_t dp) {
    vf acc = zero_vf();
    for (int64_t i = 0; i < dp; i += kLanes) acc += load(x + i) * load(a + i);
    return hsum(acc);
}

// One candidate x against four rows; each result is bit-identical to dot1.
LASER_INLINE void dot1x4(const float* x, const float* a0, const float* a1, const float* a2,
                         const float* a3, int64_t dp, float out[4]) {
    vf c0 = zero_vf(), c1 = zero_vf(), c2 = zero_vf(), c3 = zero_vf();
    for (int64_t i = 0; i < dp; i += kLanes) {
        const vf xv = load(x + i);
        c0 += xv * load(a0 + i);
        c1 += xv * load(a1 + i);
        c2 += xv * load(a2 + i);
        c3 += xv * load(a3 + i);
    }
    out[0] = hsum(c0);
    out[1] = hsum(c1);
    out[2] = hsum(c2);
    out[3] = hsum(c3);
}

// Two candidates x, y against four rows (8 dot products sharing every load); bit-identical to dot1.
LASER_INLINE void dot2x4(const float* x, const float* y, const float* a0, const float* a1,
                         const float* a2, const float* a3, int64_t dp, float ox[4], float oy[4]) {
    vf c0 = zero_vf(), c1 = zero_vf(), c2 = zero_vf(), c3 = zero_vf();
    vf e0 = zero_vf(), e1 = zero_vf(), e2 = zero_vf(), e3 = zero_vf();
    for (int64_t i = 0; i < dp; i += kLanes) {
        const vf xv = load(x + i), yv = load(y + i);
        const vf r0 = load(a0 + i), r1 = load(a1 + i), r2 = load(a2 + i), r3 = load(a3 + i);
        c0 += xv * r0;
        c1 += xv * r1;
        c2 += xv * r2;
        c3 += xv * r3;
        e0 += yv * r0;
        e1 += yv * r1;
        e2 += yv * r2;
        e3 += yv * r3;
    }
    ox[0] = hsum(c0);
    ox[1] = hsum(c1);
    ox[2] = hsum(c2);
    ox[3] = hsum(c3);
    oy[0] = hsum(e0);
    oy[1] = hsum(e1);
    oy[2] = hsum(e2);
    oy[3] = hsum(e3);
}

// Three candidates x, y, z against four rows (12 accumulators); bit-identical to dot1.
LASER_INLINE void dot3x4(const float* x, const float* y, const float* z, const float* a0,
                         const float* a1, const float* a2, const float* a3, int64_t dp, float ox[4],
                         float oy[4], float oz[4]) {
    vf c0 = zero_vf(), c1 = zero_vf(), c2 = zero_vf(), c3 = zero_vf();
    vf e0 = zero_vf(), e1 = zero_vf(), e2 = zero_vf(), e3 = zero_vf();
    vf f0 = zero_vf(), f1 = zero_vf(), f2 = zero_vf(), f3 = zero_vf();
    for (int64_t i = 0; i < dp; i += kLanes) {
        const vf xv = load(x + i), yv = load(y + i), zv = load(z + i);
        vf r = load(a0 + i);
        c0 += xv * r;
        e0 += yv * r;
        f0 += zv * r;
        r = load(a1 + i);
        c1 += xv * r;
        e1 += yv * r;
        f1 += zv * r;
        r = load(a2 + i);
        c2 += xv * r;
        e2 += yv * r;
        f2 += zv * r;
        r = load(a3 + i);
        c3 += xv * r;
        e3 += yv * r;
        f3 += zv * r;
    }
    ox[0] = hsum(c0);
    ox[1] = hsum(c1);
    ox[2] = hsum(c2);
    ox[3] = hsum(c3);
    oy[0] = hsum(e0);
    oy[1] = hsum(e1);
    oy[2] = hsum(e2);
    oy[3] = hsum(e3);
    oz[0] = hsum(f0);
    oz[1] = hsum(f1);
    oz[2] = hsum(f2);
    oz[3] = hsum(f3);
}

LASER_INLINE bool any_hit(const float s[4], float thr) {
    return s[0] >= thr || s[1] >= thr || s[2] >= thr || s[3] >= thr;
}

// ---------------------------------------------------------------------------------------------
// Hot loops (compiled per ISA, see LASER_HOT).
// ---------------------------------------------------------------------------------------------

// Shared state of phase 1 for one block.
struct Phase1 {
    const float* A;                  // accepted rows (stride dp)
    const float* C;                  // candidate block (stride dp)
    int64_t dp;
    int64_t cnt;                     // candidates in the block
    const int64_t* list;             // candidates to check (block positions); nullptr: 0..cnt-1
    int64_t nlist;                   // length of list
    float thr;                       // reject iff sim >= thr
    std::atomic<uint8_t>* rejected;  // per candidate
    std::atomic<int64_t>* alive;     // candidates not yet rejected

    // Idempotent: another thread may reject the same candidate concurrently.
    void reject(int64_t i) const {
        if (rejected[i].exchange(1, std::memory_order_relaxed) == 0)
            alive->fetch_sub(1, std::memory_order_relaxed);
    }
    bool is_rejected(int64_t i) const { return rejected[i].load(std::memory_order_relaxed) != 0; }
};

// Checks candidate i against accepted rows [r0, r1) (r4: end of the multiple-of-4 part).
LASER_INLINE void check_one(const Phase1& p, int64_t i, int64_t r0, int64_t r4, int64_t r1) {
    const float* x = p.C + i * p.dp;
    float o[4];
    for (int64_t r = r0; r < r4; r += 4) {
        const float* a = p.A + r * p.dp;
        dot1x4(x, a, a + p.dp, a + 2 * p.dp, a + 3 * p.dp, p.dp, o);
        if (any_hit(o, p.thr)) {
            p.reject(i);
            return;
        }
    }
    for (int64_t r = r4; r < r1; ++r) {
        if (dot1(x, p.A + r * p.dp, p.dp) >= p.thr) {
            p.reject(i);
            return;
        }
    }
}

// Checks candidates i and j against accepted rows [r0, r1), sharing loads while both are alive.
LASER_INLINE void check_two(const Phase1& p, int64_t i, int64_t j, int64_t r0, int64_t r4,
                            int64_t r1) {
    const float* x = p.C + i * p.dp;
    const float* y = p.C + j * p.dp;
    float o[4], q[4];
    for (int64_t r = r0; r < r4; r += 4) {
        const float* a = p.A + r * p.dp;
        dot2x4(x, y, a, a + p.dp, a + 2 * p.dp, a + 3 * p.dp, p.dp, o, q);
        const bool hx = any_hit(o, p.thr), hy = any_hit(q, p.thr);
        if (hx || hy) {
            if (hx) p.reject(i);
            if (hy) p.reject(j);
            if (!hx) check_one(p, i, r + 4, r4, r1);
            if (!hy) check_one(p, j, r + 4, r4, r1);
            return;
        }
    }
    for (int64_t r = r4; r < r1; ++r) {
        const float* a = p.A + r * p.dp;
        if (!p.is_rejected(i) && dot1(x, a, p.dp) >= p.thr) p.reject(i);
        if (!p.is_rejected(j) && dot1(y, a, p.dp) >= p.thr) p.reject(j);
    }
}

// Checks candidates i, j, k against accepted rows [r0, r1), sharing loads while all are alive.
LASER_INLINE void check_three(const Phase1& p, int64_t i, int64_t j, int64_t k, int64_t r0,
                              int64_t r4, int64_t r1) {
    const float* x = p.C + i * p.dp;
    const float* y = p.C + j * p.dp;
    const float* z = p.C + k * p.dp;
    float o[4], q[4], w[4];
    for (int64_t r = r0; r < r4; r += 4) {
        const float* a = p.A + r * p.dp;
        dot3x4(x, y, z, a, a + p.dp, a + 2 * p.dp, a + 3 * p.dp, p.dp, o, q, w);
        const bool hx = any_hit(o, p.thr), hy = any_hit(q, p.thr), hz = any_hit(w, p.thr);
        if (hx || hy || hz) {
            if (hx) p.reject(i);
            if (hy) p.reject(j);
            if (hz) p.reject(k);
            // The others go on from the next group of rows.
            int64_t rest[3], nr = 0;
            if (!hx) rest[nr++] = i;
            if (!hy) rest[nr++] = j;
            if (!hz) rest[nr++] = k;
            if (nr == 2) check_two(p, rest[0], rest[1], r + 4, r4, r1);
            else if (nr == 1) check_one(p, rest[0], r + 4, r4, r1);
            return;
        }
    }
    for (int64_t r = r4; r < r1; ++r) {
        const float* a = p.A + r * p.dp;
        if (!p.is_rejected(i) && dot1(x, a, p.dp) >= p.thr) p.reject(i);
        if (!p.is_rejected(j) && dot1(y, a, p.dp) >= p.thr) p.reject(j);
        if (!p.is_rejected(k) && dot1(z, a, p.dp) >= p.thr) p.reject(k);
    }
}

// Phase 1 for one tile of accepted rows [r0, r1): every alive candidate of the block is checked
// against the tile (which stays in cache), three candidates at a time.
LASER_HOT __attribute__((noinline)) void check_tile(const Phase1& p, int64_t r0, int64_t r1) {
    const int64_t r4 = r0 + ((r1 - r0) / 4) * 4;
    int64_t pending[3];
    int np = 0;
    const int64_t nc = p.list ? p.nlist : p.cnt;
    for (int64_t c = 0; c < nc; ++c) {
        const int64_t i = p.list ? p.list[c] : c;
        if (p.is_rejected(i)) continue;
        pending[np++] = i;
        if (np == 3) {
            check_three(p, pending[0], pending[1], pending[2], r0, r4, r1);
            np = 0;
        }
    }
    if (np == 2) check_two(p, pending[0], pending[1], r0, r4, r1);
    else if (np == 1) check_one(p, pending[0], r0, r4, r1);
}

// out[u] = sim(C[surv[s]], C[surv[u]]) for u < s.
LASER_HOT __attribute__((noinline)) void triangle_row(const float* C, int64_t dp,
                                                      const int64_t* surv, int64_t s, float* out) {
    const float* x = C + surv[s] * dp;
    const int64_t s4 = (s / 4) * 4;
    for (int64_t u = 0; u < s4; u += 4)
        dot1x4(x, C + surv[u] * dp, C + surv[u + 1] * dp, C + surv[u + 2] * dp,
               C + surv[u + 3] * dp, dp, out + u);
    for (int64_t u = s4; u < s; ++u) out[u] = dot1(x, C + surv[u] * dp, dp);
}

// Like triangle_row, but only for the pairs that keep[u] says may be within the threshold; the
// others get -inf (never a rejection).
LASER_HOT __attribute__((noinline)) void triangle_row_masked(const float* C, int64_t dp,
                                                             const int64_t* surv, int64_t s,
                                                             const uint8_t* keep, float* out) {
    const float* x = C + surv[s] * dp;
    int64_t idx[4];
    int ni = 0;
    float o[4];
    for (int64_t u = 0; u < s; ++u) {
        if (!keep[u]) {
            out[u] = -std::numeric_limits<float>::infinity();
            continue;
        }
        idx[ni++] = u;
        if (ni == 4) {
            dot1x4(x, C + surv[idx[0]] * dp, C + surv[idx[1]] * dp, C + surv[idx[2]] * dp,
                   C + surv[idx[3]] * dp, dp, o);
            for (int q = 0; q < 4; ++q) out[idx[q]] = o[q];
            ni = 0;
        }
    }
    for (int q = 0; q < ni; ++q) out[idx[q]] = dot1(x, C + surv[idx[q]] * dp, dp);
}

// out[i * ldo + k] = sim(R[i], Cn[k]) for i < nr, k < K (rows and centroids of stride dp).
// Centroids are taken in tiles of kt rows (kt: multiple of 4) that stay in L1.
LASER_HOT __attribute__((noinline)) void dots_vs_centroids(const float* R, int64_t nr,
                                                           const float* Cn, int64_t K, int64_t dp,
                                                           int64_t kt, float* out, int64_t ldo) {
    for (int64_t k0 = 0; k0 < K; k0 += kt) {
        const int64_t k1 = std::min(K, k0 + kt);
        const int64_t k4 = k0 + ((k1 - k0) / 4) * 4;
        int64_t i = 0;
        for (; i + 3 <= nr; i += 3) {
            const float* x = R + i * dp;
            const float* y = x + dp;
            const float* z = y + dp;
            float* ox = out + i * ldo;
            float* oy = ox + ldo;
            float* oz = oy + ldo;
            for (int64_t k = k0; k < k4; k += 4) {
                const float* c = Cn + k * dp;
                dot3x4(x, y, z, c, c + dp, c + 2 * dp, c + 3 * dp, dp, ox + k, oy + k, oz + k);
            }
            for (int64_t k = k4; k < k1; ++k) {
                const float* c = Cn + k * dp;
                ox[k] = dot1(x, c, dp);
                oy[k] = dot1(y, c, dp);
                oz[k] = dot1(z, c, dp);
            }
        }
        for (; i < nr; ++i) {
            const float* x = R + i * dp;
            float* ox = out + i * ldo;
            for (int64_t k = k0; k < k4; k += 4) {
                const float* c = Cn + k * dp;
                dot1x4(x, c, c + dp, c + 2 * dp, c + 3 * dp, dp, ox + k);
            }
            for (int64_t k = k4; k < k1; ++k) ox[k] = dot1(x, Cn + k * dp, dp);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

// Growable, 64-byte aligned float buffer of rows of `stride` floats (zero padded).
class RowBuffer {
  public:
    explicit RowBuffer(int64_t stride) : stride_(stride) {}
    float* data() { return data_.get(); }
    float* row(int64_t r) { return data_.get() + r * stride_; }
    void reserve_rows(int64_t rows, int64_t used_rows) {
        if (rows <= cap_rows_) return;
        const int64_t new_cap = std::max<int64_t>(rows, cap_rows_ * 2);
        Ptr fresh = allocate(new_cap * stride_);
        if (used_rows > 0)
            std::memcpy(fresh.get(), data_.get(), sizeof(float) * used_rows * stride_);
        std::memset(fresh.get() + used_rows * stride_, 0,
                    sizeof(float) * (new_cap - used_rows) * stride_);
        data_ = std::move(fresh);
        cap_rows_ = new_cap;
    }

  private:
    struct Free {
        void operator()(float* p) const { ::operator delete[](p, std::align_val_t(kAlign)); }
    };
    using Ptr = std::unique_ptr<float[], Free>;
    static Ptr allocate(int64_t count) {
        const std::size_t bytes =
            sizeof(float) * static_cast<std::size_t>(std::max<int64_t>(count, 1));
        return Ptr(static_cast<float*>(::operator new[](bytes, std::align_val_t(kAlign))));
    }
    int64_t stride_;
    int64_t cap_rows_ = 0;
    Ptr data_;
};

// Records the first exception thrown inside a parallel region (exceptions must not cross the
// region's boundary); it is rethrown once, after the region.
class ExceptionCollector {
  public:
    template <class F>
    void run(F&& f) noexcept {
        if (failed_.load(std::memory_order_relaxed)) return;
        try {
            f();
        } catch (...) {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!first_) first_ = std::current_exception();
            failed_.store(true, std::memory_order_relaxed);
        }
    }
    void rethrow() {
        if (first_) {
            std::exception_ptr e = first_;
            first_ = nullptr;
            std::rethrow_exception(e);
        }
    }

  private:
    std::atomic<bool> failed_{false};
    std::mutex mutex_;
    std::exception_ptr first_;
};

// Smallest float f with (double)f >= t, so that for every float s:  s >= f  <=>  (double)s >= t.
float float_threshold(double t) {
    float f = static_cast<float>(t);
    if (static_cast<double>(f) < t) f = std::nextafter(f, std::numeric_limits<float>::infinity());
    for (;;) {
        const float g = std::nextafter(f, -std::numeric_limits<float>::infinity());
        if (static_cast<double>(g) >= t)
            f = g;
        else
            break;
    }
    return f;
}

int resolve_threads(int requested) {
#ifdef _OPENMP
    if (requested <= 0) return std::max(1, omp_get_max_threads());
    return requested;
#else
    (void)requested;
    return 1;
#endif
}

void validate(const float* X, int64_t n, int64_t d, const int64_t* order, int64_t m,
              const GreedyOptions& opt) {
    if (n < 0 || d < 0) throw std::invalid_argument("greedy_diverse: negative shape");
    if (n > 0 && d > 0 && X == nullptr)
        throw std::invalid_argument("greedy_diverse: embeddings is a null pointer");
    if (!(opt.min_distance >= 0.0 && opt.min_distance <= 2.0))
        throw std::invalid_argument("greedy_diverse: min_distance must be in [0, 2], got " +
                                    std::to_string(opt.min_distance));
    if (opt.block_size < 0)
        throw std::invalid_argument("greedy_diverse: block_size must be >= 0 (0: automatic)");
    if (order == nullptr) {
        if (m != n) throw std::invalid_argument("greedy_diverse: without order, m must equal n");
        return;
    }
    if (m < 0) throw std::invalid_argument("greedy_diverse: negative order length");
    std::vector<uint8_t> seen(static_cast<std::size_t>(n), 0);
    for (int64_t i = 0; i < m; ++i) {
        const int64_t r = order[i];
        if (r < 0 || r >= n)
            throw std::invalid_argument("greedy_diverse: order[" + std::to_string(i) + "] = " +
                                        std::to_string(r) + " is out of range [0, " +
                                        std::to_string(n) + ")");
        if (seen[r])
            throw std::invalid_argument("greedy_diverse: order[" + std::to_string(i) + "] = " +
                                        std::to_string(r) + " is a duplicate");
        seen[r] = 1;
    }
}


// ---------------------------------------------------------------------------------------------
// Cell index (see greedy.hpp).
// ---------------------------------------------------------------------------------------------
constexpr double kPi = 3.14159265358979323846;
constexpr double kNegInf = -std::numeric_limits<double>::infinity();
constexpr int64_t kChunkRows = 48;  // rows per parallel chunk of a rows x centroids product
constexpr int kKmeansIters = 3;

int thread_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

uint64_t splitmix64(uint64_t& state) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Conservative conversions between computed float similarities and angles between directions.
// Rows have norms within 1 +- delta, centroids within 1 +- delta_c, and a computed similarity
// differs from the exact dot product of the stored floats by at most err.
struct Bounds {
    double delta = 0.0, delta_c = 0.0, err = 0.0;
    double theta_t = 0.0;  // no pair whose computed similarity reaches thr is farther apart
    bool usable = true;

    void set(float thr, int64_t dp, double delta_rows, double delta_cent) {
        delta = delta_rows;
        delta_c = delta_cent;
        usable = delta < 0.25 && delta_c < 0.25;  // else: no pruning (still exact)
        const double scale = (1.0 + delta + delta_c) * (1.0 + delta + delta_c);
        // Each lane sums dp / kLanes products, then a 3-level tree: at most dp / kLanes + 3
        // roundings per term (gamma bound), doubled for safety.
        err = 2.0 * (static_cast<double>(dp) / kLanes + 4.0) * std::ldexp(1.0, -24) * scale + 1e-12;
        const double t = static_cast<double>(thr) - err;
        const double c = t >= 0 ? t / ((1 + delta) * (1 + delta)) : t / ((1 - delta) * (1 - delta));
        theta_t = std::acos(std::clamp(c, -1.0, 1.0));
    }
    // Lower bound on cos(angle) between a row and a centroid whose computed similarity is g.
    double cos_low(double g) const {
        const double v = g - err;
        const double c = v >= 0 ? v / ((1 + delta) * (1 + delta_c)) : v / ((1 - delta) * (1 - delta_c));
        return std::isnan(c) ? -1.0 : c;
    }
    // For a ball of rows around a centroid (every row has cos >= radius_cos with it): a
    // candidate whose computed similarity with the centroid is below the returned gate is
    // farther than theta_t from every row of the ball, so none of them can reject it.
    double gate(double radius_cos) const {
        if (!usable) return kNegInf;
        const double a = theta_t + std::acos(std::clamp(radius_cos, -1.0, 1.0)) + 1e-9;
        if (a >= kPi) return kNegInf;
        const double q = std::cos(a);
        return (q >= 0 ? q * (1 - delta) * (1 - delta_c) : q * (1 + delta) * (1 + delta_c)) - err -
               1e-9;
    }
};

struct CellIndex {
    int64_t K = 0;
    int64_t dp = 0;
    std::vector<float> cent;                // K x dp, zero padded, unit (up to delta_c)
    double delta_c = 0.0;
    std::vector<std::vector<float>> rows;   // members of each cell (dp floats each)
    std::vector<double> min_cos;            // per cell: lower bound on cos(member, centroid)
    std::vector<int32_t> active;            // non-empty cells

    int64_t size(int64_t k) const { return static_cast<int64_t>(rows[k].size()) / dp; }
    void insert(int64_t k, const float* row, double cos_low) {
        if (rows[k].empty()) active.push_back(static_cast<int32_t>(k));
        rows[k].insert(rows[k].end(), row, row + dp);
        min_cos[k] = std::min(min_cos[k], cos_low);
    }
};

// best[i] / best_sim[i]: the most similar centroid of row i of R (nr rows of stride dp).
void nearest_centroids(const float* R, int64_t nr, const CellIndex& ix, int64_t kt, int nthreads,
                       std::vector<float>& scratch, int32_t* best, float* best_sim,
                       ExceptionCollector& errors) {
    const int64_t K = ix.K, dp = ix.dp;
    scratch.resize(static_cast<std::size_t>(nthreads * kChunkRows * K));
    const int64_t nchunks = (nr + kChunkRows - 1) / kChunkRows;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nchunks > 1)
    for (int64_t c = 0; c < nchunks; ++c) {
        errors.run([&] {
            const int64_t i0 = c * kChunkRows, cnt = std::min(kChunkRows, nr - i0);
            float* buf = scratch.data() + static_cast<int64_t>(thread_id()) * kChunkRows * K;
            dots_vs_centroids(R + i0 * dp, cnt, ix.cent.data(), K, dp, kt, buf, K);
            for (int64_t r = 0; r < cnt; ++r) {
                const float* g = buf + r * K;
                int64_t b = 0;
                for (int64_t k = 1; k < K; ++k)
                    if (g[k] > g[b]) b = k;
                best[i0 + r] = static_cast<int32_t>(b);
                best_sim[i0 + r] = g[b];
            }
        });
    }
    errors.rethrow();
}

// Centroids: a few spherical k-means iterations on a random sample of the candidates.
void build_centroids(CellIndex& ix, const float* X, int64_t d, int64_t dp, const int64_t* order,
                     int64_t m, int64_t K, int64_t kt, int nthreads, ExceptionCollector& errors) {
    const int64_t S = std::min<int64_t>(m, std::max<int64_t>(16 * K, 4096));
    K = std::max<int64_t>(1, std::min(K, S));
    std::vector<int64_t> pos(static_cast<std::size_t>(m));
    for (int64_t i = 0; i < m; ++i) pos[i] = i;
    uint64_t seed = 0x5DEECE66Dull;
    for (int64_t i = 0; i < S; ++i) {
        const int64_t j = i + static_cast<int64_t>(splitmix64(seed) % static_cast<uint64_t>(m - i));
        std::swap(pos[i], pos[j]);
    }
    std::vector<float> smp(static_cast<std::size_t>(S * dp), 0.0f);
    for (int64_t i = 0; i < S; ++i) {
        const int64_t r = order ? order[pos[i]] : pos[i];
        std::memcpy(smp.data() + i * dp, X + r * d, sizeof(float) * d);
    }
    ix.K = K;
    ix.dp = dp;
    ix.cent.assign(smp.begin(), smp.begin() + K * dp);  // a random sample as the start
    std::vector<int32_t> best(static_cast<std::size_t>(S));
    std::vector<float> best_sim(static_cast<std::size_t>(S)), scratch;
    std::vector<double> sum(static_cast<std::size_t>(K * d));
    for (int it = 0; it <= kKmeansIters; ++it) {
        // Normalise (in double) the current centroids; an empty or zero one keeps its direction.
        for (int64_t k = 0; k < K; ++k) {
            float* c = ix.cent.data() + k * dp;
            double ss = 0.0;
            for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(c[j]) * c[j];
            if (it > 0) {
                double s2 = 0.0;
                for (int64_t j = 0; j < d; ++j) s2 += sum[k * d + j] * sum[k * d + j];
                if (s2 > 0.0 && std::isfinite(s2)) {
                    const double inv = 1.0 / std::sqrt(s2);
                    for (int64_t j = 0; j < d; ++j) c[j] = static_cast<float>(sum[k * d + j] * inv);
                    continue;
                }
            }
            if (ss > 0.0 && std::isfinite(ss)) {
                const double inv = 1.0 / std::sqrt(ss);
                for (int64_t j = 0; j < d; ++j) c[j] = static_cast<float>(c[j] * inv);
            } else {
                for (int64_t j = 0; j < d; ++j) c[j] = j == 0 ? 1.0f : 0.0f;
            }
        }
        if (it == kKmeansIters) break;
        nearest_centroids(smp.data(), S, ix, kt, nthreads, scratch, best.data(), best_sim.data(), errors);
        std::fill(sum.begin(), sum.end(), 0.0);
        for (int64_t i = 0; i < S; ++i) {
            const float* x = smp.data() + i * dp;
            double* s = sum.data() + static_cast<int64_t>(best[i]) * d;
            for (int64_t j = 0; j < d; ++j) s[j] += x[j];
        }
    }
    double dc = 0.0;
    for (int64_t k = 0; k < K; ++k) {
        const float* c = ix.cent.data() + k * dp;
        double ss = 0.0;
        for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(c[j]) * c[j];
        dc = std::max(dc, std::abs(std::sqrt(ss) - 1.0));
    }
    ix.delta_c = dc + 1e-7;
    ix.rows.assign(static_cast<std::size_t>(K), {});
    ix.min_cos.assign(static_cast<std::size_t>(K), std::numeric_limits<double>::infinity());
    ix.active.clear();
}

struct WorkItem {
    int64_t cell, r0, r1, off, len;
};

}  // namespace

LASER_HOT float dot(const float* a, const float* b, int64_t d) {
    // Same lane assignment as the padded kernels: element i goes to lane i % kLanes.
    float lanes[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t i = 0; i < d; i += kLanes) {
        const int64_t len = std::min<int64_t>(kLanes, d - i);
        for (int64_t k = 0; k < len; ++k) lanes[k] += a[i + k] * b[i + k];
    }
    const float h0 = lanes[0] + lanes[4], h1 = lanes[1] + lanes[5], h2 = lanes[2] + lanes[6],
                h3 = lanes[3] + lanes[7];
    const float g0 = h0 + h2, g1 = h1 + h3;
    return g0 + g1;
}

std::vector<int64_t> greedy_diverse(const float* X, int64_t n, int64_t d, const int64_t* order,
                                    int64_t m, const GreedyOptions& opt,
                                    const BlockCallback& between_blocks, GreedyStats* stats) {
    validate(X, n, d, order, m, opt);
    if (opt.method < 0 || opt.method > 2)
        throw std::invalid_argument("greedy_diverse: method must be 0 (auto), 1 (brute) or 2 (cells)");
    if (opt.n_cells < 0 || opt.switch_at < 0)
        throw std::invalid_argument("greedy_diverse: n_cells and switch_at must be >= 0 (0: automatic)");

    GreedyStats st;
    std::vector<int64_t> accepted;
    const int64_t limit = opt.budget < 0 ? m : std::min(opt.budget, m);
    if (limit == 0) {
        if (stats) *stats = st;
        return accepted;
    }
    accepted.reserve(static_cast<std::size_t>(std::min<int64_t>(limit, int64_t(1) << 20)));

    const int nthreads = resolve_threads(opt.num_threads);
    const int64_t dp = ((d + kLanes - 1) / kLanes) * kLanes;    // padded row stride
    const float thr = float_threshold(1.0 - opt.min_distance);  // reject iff sim >= thr
    // Automatic block size: the candidate block (~768 KiB) stays in L2 next to the tile;
    // 128..512 candidates. Larger blocks mean fewer synchronisations, smaller ones less work on
    // survivors that a row accepted earlier in the same block rejects.
    const int64_t auto_bs =
        std::clamp<int64_t>((768 * 1024 / static_cast<int64_t>(sizeof(float))) / std::max<int64_t>(dp, 1),
                            128, 512);
    const int64_t bs_brute = std::min<int64_t>(opt.block_size > 0 ? opt.block_size : auto_bs, m);
    // With the cell index, each cell a block needs is streamed once per block: larger blocks
    // share that traffic among more candidates (pairs within the block are pruned too).
    // m / 64 candidates, 512..4096 (4096 halved the time of 2048 at 1M rows, d = 384).
    const int64_t bs_cells =
        std::min<int64_t>(opt.block_size > 0 ? opt.block_size : std::clamp<int64_t>(m / 64, 512, 4096), m);
    const int64_t bs_max = std::max(bs_brute, opt.method == 1 ? bs_brute : bs_cells);
    // Accepted rows per tile: ~32 KiB stays in L1/L2 while every candidate of the block is
    // checked against it. Multiple of 4 for the 4-row kernels.
    const int64_t tile_rows =
        std::max<int64_t>(4, ((32 * 1024 / static_cast<int64_t>(sizeof(float))) /
                              std::max<int64_t>(dp, 1)) / 4 * 4);
    const int64_t n_cells = std::min<int64_t>(
        m, opt.n_cells > 0 ? opt.n_cells
                           : std::clamp<int64_t>(std::llround(std::sqrt(static_cast<double>(m))), 16, 4096));
    const int64_t switch_at = opt.switch_at > 0 ? opt.switch_at : std::max<int64_t>(2048, 4 * n_cells);

    RowBuffer A(dp);  // accepted rows, contiguous, in acceptance order (brute force)
    RowBuffer C(dp);  // current candidate block
    C.reserve_rows(bs_max, 0);
    std::unique_ptr<std::atomic<uint8_t>[]> rejected(new std::atomic<uint8_t>[bs_max]);
    std::vector<int64_t> surv;  // block positions of the phase-1 survivors
    surv.reserve(bs_max);
    std::vector<float> S(static_cast<std::size_t>(bs_max * bs_max));  // survivor similarities
    std::vector<int64_t> acc_in_block;                                 // survivors accepted in the block
    acc_in_block.reserve(bs_max);
    ExceptionCollector errors;

    // Cell index state.
    bool cells = false;
    CellIndex ix;
    Bounds bd;
    double delta = 0.0;  // largest | |row| - 1 | among the candidates gathered so far
    std::vector<float> G;                                   // block x K similarities
    std::vector<double> gate;                               // per cell, this block
    std::vector<std::vector<int32_t>> cand_cells(static_cast<std::size_t>(bs_max));
    std::vector<int64_t> cell_count, cell_off, lists;
    std::vector<WorkItem> items;
    std::vector<int32_t> surv_cell;                         // nearest centroid of each survivor
    std::vector<double> surv_gate, surv_cos;
    std::vector<uint8_t> keep;                              // per thread: pairs to compute
    std::vector<float> scratch;

    auto build_index = [&](int64_t na_now, int64_t visited) {
        const auto t0 = std::chrono::steady_clock::now();
        build_centroids(ix, X, d, dp, order, m, n_cells, tile_rows, nthreads, errors);
        gate.assign(static_cast<std::size_t>(ix.K), kNegInf);
        cell_count.assign(static_cast<std::size_t>(ix.K), 0);
        cell_off.assign(static_cast<std::size_t>(ix.K + 1), 0);
        if (na_now > 0) {
            std::vector<int32_t> best(static_cast<std::size_t>(na_now));
            std::vector<float> best_sim(static_cast<std::size_t>(na_now));
            nearest_centroids(A.data(), na_now, ix, tile_rows, nthreads, scratch, best.data(),
                              best_sim.data(), errors);
            bd.set(thr, dp, delta, ix.delta_c);
            for (int64_t r = 0; r < na_now; ++r) ix.insert(best[r], A.row(r), bd.cos_low(best_sim[r]));
            A = RowBuffer(dp);  // the rows live in the cells from now on
        }
        cells = true;
        st.method = "cells";
        st.cells = ix.K;
        st.switched_at = na_now;
        st.visited_at_switch = visited;
        st.index_seconds +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    if (opt.method == 2) build_index(0, 0);

    int64_t na = 0;
    int64_t start = 0;
    while (start < m && na < limit) {
        const int64_t bs = cells ? bs_cells : bs_brute;
        const int64_t cnt = std::min(bs, m - start);
        const int64_t na0 = na;

        // Gather the block into contiguous, padded rows; track the largest norm error.
        for (int64_t i = 0; i < cnt; ++i) {
            const int64_t r = order ? order[start + i] : start + i;
            const float* src = X + r * d;
            std::memcpy(C.row(i), src, sizeof(float) * d);
            rejected[i].store(0, std::memory_order_relaxed);
            if (cells) {
                double ss = 0.0;
                for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(src[j]) * src[j];
                const double dev = std::abs(std::sqrt(ss) - 1.0);
                if (!(dev <= delta)) delta = std::isnan(dev) ? 1.0 : dev;
            }
        }
        auto tick = std::chrono::steady_clock::now();
        auto lap = [&](double& acc) {
            const auto now = std::chrono::steady_clock::now();
            acc += std::chrono::duration<double>(now - tick).count();
            tick = now;
        };
        std::atomic<int64_t> alive{cnt};
        const Phase1 p1{A.data(), C.data(), dp, cnt, nullptr, 0, thr, rejected.get(), &alive};
        st.pairs_total += cnt * na0;

        if (!cells) {
            // Phase 1 (brute force): block vs the rows accepted before it. Parallel over tiles
            // of accepted rows; each tile is checked against all still-alive candidates.
            st.pairs_scheduled += cnt * na0;
            const int64_t ntiles = (na0 + tile_rows - 1) / tile_rows;
            if (ntiles > 0) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (ntiles > 1)
                for (int64_t t = 0; t < ntiles; ++t) {
                    if (alive.load(std::memory_order_relaxed) == 0) continue;
                    errors.run([&] { check_tile(p1, t * tile_rows, std::min(na0, (t + 1) * tile_rows)); });
                }
                errors.rethrow();
            }
        } else {
            // Phase 1 (cells): similarities of the block to every centroid, and the cells each
            // candidate may be rejected by (its most similar one first), in one parallel pass ...
            const int64_t K = ix.K;
            bd.set(thr, dp, delta, ix.delta_c);
            for (int32_t k : ix.active) gate[k] = bd.gate(ix.min_cos[k]);
            G.resize(static_cast<std::size_t>(cnt * K));
            const int64_t nchunks = (cnt + kChunkRows - 1) / kChunkRows;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nchunks > 1)
            for (int64_t c = 0; c < nchunks; ++c) {
                errors.run([&] {
                    const int64_t i0 = c * kChunkRows, i1 = std::min(cnt, i0 + kChunkRows);
                    dots_vs_centroids(C.row(i0), i1 - i0, ix.cent.data(), K, dp, tile_rows,
                                      G.data() + i0 * K, K);
                    if (na0 == 0) return;
                    for (int64_t i = i0; i < i1; ++i) {
                        std::vector<int32_t>& cc = cand_cells[i];
                        cc.clear();
                        const float* g = G.data() + i * K;
                        float bg = -std::numeric_limits<float>::infinity();
                        std::size_t bpos = 0;
                        for (int32_t k : ix.active) {
                            if (static_cast<double>(g[k]) >= gate[k]) {
                                if (cc.empty() || g[k] > bg) {
                                    bg = g[k];
                                    bpos = cc.size();
                                }
                                cc.push_back(k);
                            }
                        }
                        if (!cc.empty()) std::swap(cc[0], cc[bpos]);
                    }
                });
            }
            errors.rethrow();
            st.centroid_dots += cnt * K;
            lap(st.centroid_seconds);
            if (na0 > 0) {
                // ... then each candidate is checked exactly against those cells: the work items
                // of every candidate's most similar cell come first (round 0), then the others
                // (round 1; candidates rejected meanwhile are skipped).
                items.clear();
                lists.clear();
                for (int round = 0; round < 2; ++round) {
                    std::fill(cell_count.begin(), cell_count.end(), 0);
                    for (int64_t i = 0; i < cnt; ++i) {
                        const auto& cc = cand_cells[i];
                        if (round == 0) {
                            if (!cc.empty()) ++cell_count[cc[0]];
                        } else {
                            for (std::size_t q = 1; q < cc.size(); ++q) ++cell_count[cc[q]];
                        }
                    }
                    const int64_t base = static_cast<int64_t>(lists.size());
                    cell_off[0] = base;
                    for (int64_t k = 0; k < K; ++k) cell_off[k + 1] = cell_off[k] + cell_count[k];
                    lists.resize(static_cast<std::size_t>(cell_off[K]));
                    std::fill(cell_count.begin(), cell_count.end(), 0);
                    for (int64_t i = 0; i < cnt; ++i) {
                        const auto& cc = cand_cells[i];
                        const std::size_t q0 = round == 0 ? 0 : 1;
                        const std::size_t q1 = round == 0 ? std::min<std::size_t>(1, cc.size()) : cc.size();
                        for (std::size_t q = q0; q < q1; ++q) lists[cell_off[cc[q]] + cell_count[cc[q]]++] = i;
                    }
                    for (int32_t k : ix.active) {
                        const int64_t len = cell_count[k];
                        if (len == 0) continue;
                        const int64_t rows = ix.size(k);
                        st.pairs_scheduled += len * rows;
                        for (int64_t r0 = 0; r0 < rows; r0 += tile_rows)
                            items.push_back({k, r0, std::min(rows, r0 + tile_rows), cell_off[k], len});
                    }
                }
                lap(st.gate_seconds);
                const int64_t nitems = static_cast<int64_t>(items.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nitems > 1)
                for (int64_t t = 0; t < nitems; ++t) {
                    if (alive.load(std::memory_order_relaxed) == 0) continue;
                    errors.run([&] {
                        const WorkItem& it = items[t];
                        Phase1 q = p1;
                        q.A = ix.rows[it.cell].data();
                        q.list = lists.data() + it.off;
                        q.nlist = it.len;
                        check_tile(q, it.r0, it.r1);
                    });
                }
                errors.rethrow();
            }
        }

        lap(st.phase1_seconds);
        // Phase 2a: similarities among the survivors (lower triangle), in parallel. With the
        // cell index, a pair is skipped when the bound (the survivor u's own distance to its
        // nearest centroid as the radius) excludes it.
        surv.clear();
        for (int64_t i = 0; i < cnt; ++i)
            if (!rejected[i].load(std::memory_order_relaxed)) surv.push_back(i);
        const int64_t ns = static_cast<int64_t>(surv.size());
        if (cells) {
            const int64_t K = ix.K;
            surv_cell.resize(static_cast<std::size_t>(ns));
            surv_gate.resize(static_cast<std::size_t>(ns));
            surv_cos.resize(static_cast<std::size_t>(ns));
            for (int64_t s = 0; s < ns; ++s) {
                const float* g = G.data() + surv[s] * K;
                int64_t b = 0;
                for (int64_t k = 1; k < K; ++k)
                    if (g[k] > g[b]) b = k;
                surv_cell[s] = static_cast<int32_t>(b);
                surv_cos[s] = bd.cos_low(g[b]);
                surv_gate[s] = bd.gate(surv_cos[s]);
            }
            keep.resize(static_cast<std::size_t>(nthreads * std::max<int64_t>(ns, 1)));
        }
        if (ns > 1) {
#pragma omp parallel for schedule(dynamic, 4) num_threads(nthreads) if (ns > 16)
            for (int64_t s = ns - 1; s >= 1; --s) {  // longest rows first
                errors.run([&] {
                    if (!cells) {
                        triangle_row(C.data(), dp, surv.data(), s, S.data() + s * bs);
                        return;
                    }
                    uint8_t* kp = keep.data() + static_cast<int64_t>(thread_id()) * ns;
                    const float* g = G.data() + surv[s] * ix.K;
                    for (int64_t u = 0; u < s; ++u)
                        kp[u] = static_cast<double>(g[surv_cell[u]]) >= surv_gate[u];
                    triangle_row_masked(C.data(), dp, surv.data(), s, kp, S.data() + s * bs);
                });
            }
            errors.rethrow();
        }

        // Phase 2b: sequential walk over the survivors in visiting order; each is checked only
        // against the rows accepted earlier within this block.
        if (!cells) A.reserve_rows(na0 + ns, na0);
        acc_in_block.clear();
        int64_t last_pos = cnt - 1;  // last block position visited
        for (int64_t s = 0; s < ns; ++s) {
            const float* row_s = S.data() + s * bs;
            bool ok = true;
            for (int64_t u : acc_in_block) {
                if (row_s[u] >= thr) {
                    ok = false;
                    break;
                }
            }
            if (!ok) continue;
            acc_in_block.push_back(s);
            const int64_t pos = surv[s];
            if (cells)
                ix.insert(surv_cell[s], C.row(pos), surv_cos[s]);
            else
                std::memcpy(A.row(na), C.row(pos), sizeof(float) * dp);
            accepted.push_back(order ? order[start + pos] : start + pos);
            ++na;
            if (na >= limit) {
                last_pos = pos;
                break;
            }
        }
        lap(st.phase2_seconds);
        start += cnt;
        if (between_blocks) between_blocks(start - cnt + last_pos + 1, na);
        if (!cells && opt.method == 0 && na >= switch_at && na < limit &&
            m - start >= std::max<int64_t>(2048, 2 * bs_cells)) {
            // Rows gathered so far were not measured in brute mode: measure the accepted ones
            // (the only ones the index will hold).
            for (int64_t r = 0; r < na; ++r) {
                const float* a = A.row(r);
                double ss = 0.0;
                for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(a[j]) * a[j];
                const double dev = std::abs(std::sqrt(ss) - 1.0);
                if (!(dev <= delta)) delta = std::isnan(dev) ? 1.0 : dev;
            }
            build_index(na, start);
        }
    }
    if (stats) *stats = st;
    return accepted;
}

BuildInfo build_info() {
    BuildInfo info;
#ifdef _OPENMP
    info.openmp = true;
    info.openmp_version = _OPENMP;
    info.omp_max_threads = omp_get_max_threads();
#endif
#if defined(__clang__)
    info.compiler = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    info.compiler = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
    info.compiler = "msvc " + std::to_string(_MSC_VER);
#else
    info.compiler = "unknown";
#endif
#if defined(__SSE2__) || defined(_M_X64)
    info.simd.push_back("SSE2");
#endif
#ifdef __SSE4_1__
    info.simd.push_back("SSE4.1");
#endif
#ifdef __AVX__
    info.simd.push_back("AVX");
#endif
#ifdef __AVX2__
    info.simd.push_back("AVX2");
#endif
#ifdef __FMA__
    info.simd.push_back("FMA");
#endif
#ifdef __AVX512F__
    info.simd.push_back("AVX512F");
#endif
#if defined(__ARM_NEON) || defined(__ARM_NEON__)
    info.simd.push_back("NEON");
#endif
#ifdef __ARM_FEATURE_SVE
    info.simd.push_back("SVE");
#endif
    info.dot_lanes = kLanes;
    info.vector_extensions = LASER_VECTOR_EXT != 0;
#if LASER_DISPATCH
    info.dispatch = {"fma", "avx", "default"};
    __builtin_cpu_init();
    info.kernel = __builtin_cpu_supports("fma") ? "fma" : __builtin_cpu_supports("avx") ? "avx" : "default";
#else
    info.kernel = "build";
#endif
    return info;
}

}  // namespace laser_fast

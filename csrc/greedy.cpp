// Exact greedy diversity filter: see greedy.hpp for the semantics and the algorithm.
#include "greedy.hpp"

#include <algorithm>
#include <atomic>
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
    for (int64_t i = 0; i < p.cnt; ++i) {
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
                                    const BlockCallback& between_blocks) {
    validate(X, n, d, order, m, opt);

    std::vector<int64_t> accepted;
    const int64_t limit = opt.budget < 0 ? m : std::min(opt.budget, m);
    if (limit == 0) return accepted;
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
    const int64_t bs = std::min<int64_t>(opt.block_size > 0 ? opt.block_size : auto_bs, m);
    // Accepted rows per tile: ~32 KiB stays in L1/L2 while every candidate of the block is
    // checked against it. Multiple of 4 for the 4-row kernels.
    const int64_t tile_rows =
        std::max<int64_t>(4, ((32 * 1024 / static_cast<int64_t>(sizeof(float))) /
                              std::max<int64_t>(dp, 1)) / 4 * 4);

    RowBuffer A(dp);  // accepted rows, contiguous, in acceptance order
    RowBuffer C(dp);  // current candidate block
    C.reserve_rows(bs, 0);
    std::unique_ptr<std::atomic<uint8_t>[]> rejected(new std::atomic<uint8_t>[bs]);
    std::vector<int64_t> surv;  // block positions of the phase-1 survivors
    surv.reserve(bs);
    std::vector<float> S(static_cast<std::size_t>(bs * bs));  // survivor x survivor similarities
    std::vector<int64_t> acc_in_block;                         // survivors accepted in the block
    acc_in_block.reserve(bs);
    ExceptionCollector errors;

    int64_t na = 0;
    for (int64_t start = 0; start < m && na < limit; start += bs) {
        const int64_t cnt = std::min(bs, m - start);
        const int64_t na0 = na;

        // Gather the block into contiguous, padded rows.
        for (int64_t i = 0; i < cnt; ++i) {
            const int64_t r = order ? order[start + i] : start + i;
            std::memcpy(C.row(i), X + r * d, sizeof(float) * d);
            rejected[i].store(0, std::memory_order_relaxed);
        }

        // Phase 1: block vs the rows accepted before it. Parallel over tiles of accepted rows;
        // each tile is checked against all still-alive candidates of the block.
        std::atomic<int64_t> alive{cnt};
        const Phase1 p1{A.data(), C.data(), dp, cnt, thr, rejected.get(), &alive};
        const int64_t ntiles = (na0 + tile_rows - 1) / tile_rows;
        if (ntiles > 0) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (ntiles > 1)
            for (int64_t t = 0; t < ntiles; ++t) {
                if (alive.load(std::memory_order_relaxed) == 0) continue;
                errors.run([&] { check_tile(p1, t * tile_rows, std::min(na0, (t + 1) * tile_rows)); });
            }
            errors.rethrow();
        }

        // Phase 2a: similarities among the survivors (lower triangle), in parallel.
        surv.clear();
        for (int64_t i = 0; i < cnt; ++i)
            if (!rejected[i].load(std::memory_order_relaxed)) surv.push_back(i);
        const int64_t ns = static_cast<int64_t>(surv.size());
        if (ns > 1) {
#pragma omp parallel for schedule(dynamic, 4) num_threads(nthreads) if (ns > 16)
            for (int64_t s = ns - 1; s >= 1; --s)  // longest rows first
                errors.run([&] { triangle_row(C.data(), dp, surv.data(), s, S.data() + s * bs); });
            errors.rethrow();
        }

        // Phase 2b: sequential walk over the survivors in visiting order; each is checked only
        // against the rows accepted earlier within this block.
        A.reserve_rows(na0 + ns, na0);
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
            std::memcpy(A.row(na), C.row(pos), sizeof(float) * dp);
            accepted.push_back(order ? order[start + pos] : start + pos);
            ++na;
            if (na >= limit) {
                last_pos = pos;
                break;
            }
        }
        if (between_blocks) between_blocks(start + last_pos + 1, na);
    }
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

// Exact greedy diversity filter (the compute core; plain C++17, no Python headers).
//
// Semantics: candidates are visited in `order`; a candidate is accepted iff its cosine
// similarity to EVERY already accepted row is strictly smaller than 1 - min_distance
// (i.e. cosine distance > min_distance). The first visited candidate is always accepted.
// The walk stops once `budget` rows are accepted (budget < 0: no limit). Rows must already be
// unit length (the Python wrapper normalises); the filter itself only computes dot products.
//
// Algorithm: candidates are taken in blocks. For a block, similarities against every row
// accepted *before* the block are computed with a cache-blocked, OpenMP-parallel, SIMD dot
// kernel (a candidate stops being checked as soon as one similarity reaches the threshold).
// Then the block is walked sequentially and each surviving candidate is checked only against
// the rows accepted earlier within the same block. The result is the same as the plain
// sequential loop; every dot product uses one fixed summation order, so results do not depend
// on the number of threads or the block size.
//
// Cell index (method "cells", and "auto" once enough rows are accepted): brute force costs
// candidates x accepted x d. The index partitions the accepted rows into K cells: K unit
// centroids from a few spherical k-means iterations on a random sample of the candidates
// (computed once); each accepted row joins its most similar centroid, and each cell keeps a
// lower bound on cos(member, centroid), i.e. an upper bound R on the angle between a member
// and the centroid. Angles obey the triangle inequality, so a candidate x can only be within the
// threshold angle T of some member if angle(x, centroid) <= T + R. Every bound is computed from
// float dot products and turned conservative: each float similarity is widened by a rigorous
// rounding-error bound of the kernel (about (d/8 + 4) * 2^-23), and rows are allowed a norm
// error of the largest |norm - 1| seen, so a cell is only skipped when no member can reach the
// threshold in the exact float similarity used by the brute force. The decision itself is always
// the exact float similarity of the same kernel against every member of every remaining cell, so
// the accepted set is identical to the brute force (and to the plain loop). Per block: the
// candidates' similarities to all centroids (a small matrix product), then each candidate is
// checked first against its most similar non-empty cell and then against the other cells the
// bound does not exclude (parallel over cell tiles). Pairs within a block are pruned with the
// same bound, taking each survivor's own distance to its nearest centroid as the radius.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace laser_fast {

// Called between blocks, outside any parallel region, with (candidates visited so far,
// rows accepted so far). It may throw (e.g. to stop on Ctrl-C); the exception propagates.
using BlockCallback = std::function<void(int64_t visited, int64_t accepted)>;

struct GreedyOptions {
    double min_distance = 0.1;  // accept iff 1 - cos > min_distance
    int64_t budget = -1;        // < 0: no limit
    int num_threads = 0;        // <= 0: all (omp_get_max_threads())
    int64_t block_size = 0;     // candidates per block; 0: automatic (128..512 by row size)
    int method = 0;             // 0: auto (brute, then cells once switch_at rows are accepted),
                                // 1: brute force only, 2: cell index from the start
    int64_t n_cells = 0;        // cells (centroids); 0: automatic (~sqrt(candidates), 16..4096)
    int64_t switch_at = 0;      // auto: accepted rows before the index is built; 0: automatic
};

// Filled by greedy_diverse when a pointer is passed (diagnostics for benchmarks).
struct GreedyStats {
    std::string method = "brute";   // how the walk ended: "brute" or "cells"
    int64_t cells = 0;              // K (0: no index)
    int64_t switched_at = -1;       // rows accepted when the index was built (-1: never)
    int64_t visited_at_switch = -1; // candidates visited by then
    double index_seconds = 0.0;     // k-means + assigning the rows accepted so far
    int64_t pairs_total = 0;        // candidate x previously-accepted-row pairs (brute force work)
    int64_t pairs_scheduled = 0;    // of those, pairs not excluded by the bound (upper bound on
                                    // the similarities computed; early exits skip more)
    int64_t centroid_dots = 0;      // candidate x centroid similarities
    double centroid_seconds = 0.0;  // wall time: block x centroid similarities
    double gate_seconds = 0.0;      // wall time: bounds, choosing the cells per candidate
    double phase1_seconds = 0.0;    // wall time: candidates vs earlier accepted rows
    double phase2_seconds = 0.0;    // wall time: pairs within blocks + sequential walk
};

// embeddings: n x d, row-major, float32, unit rows. order: m candidate row indices (distinct,
// each in [0, n)); order == nullptr means 0..n-1 (then m must equal n).
// Returns the accepted row indices in acceptance order.
// Throws std::invalid_argument on bad arguments.
std::vector<int64_t> greedy_diverse(const float* embeddings, int64_t n, int64_t d,
                                    const int64_t* order, int64_t m,
                                    const GreedyOptions& options,
                                    const BlockCallback& between_blocks = nullptr,
                                    GreedyStats* stats = nullptr);

// Dot product with the fixed summation order used by the filter (exposed for tests/tools).
float dot(const float* a, const float* b, int64_t d);

struct BuildInfo {
    bool openmp = false;
    int openmp_version = 0;       // value of _OPENMP (yyyymm), 0 without OpenMP
    int omp_max_threads = 1;
    std::string compiler;
    std::vector<std::string> simd;  // e.g. {"SSE2", "AVX2", "FMA"} from predefined macros
    int dot_lanes = 0;              // accumulator lanes of the dot kernel
    bool vector_extensions = false; // GCC/Clang vector extensions used for the kernel
    std::vector<std::string> dispatch;  // runtime-dispatched kernel variants (empty: none)
    std::string kernel;             // variant in use on this CPU ("build": no dispatch)
};

BuildInfo build_info();

}  // namespace laser_fast

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
#pragma once

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
};

// embeddings: n x d, row-major, float32, unit rows. order: m candidate row indices (distinct,
// each in [0, n)); order == nullptr means 0..n-1 (then m must equal n).
// Returns the accepted row indices in acceptance order.
// Throws std::invalid_argument on bad arguments.
std::vector<int64_t> greedy_diverse(const float* embeddings, int64_t n, int64_t d,
                                    const int64_t* order, int64_t m,
                                    const GreedyOptions& options,
                                    const BlockCallback& between_blocks = nullptr);

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

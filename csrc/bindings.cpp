// pybind11 bindings of the compiled core: module ``laser_fast._core``.
// The only translation unit that includes Python / pybind11 headers.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <vector>

#include "greedy.hpp"

namespace py = pybind11;

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IndexArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

py::array_t<int64_t> to_numpy(std::vector<int64_t>&& v) {
    auto* heap = new std::vector<int64_t>(std::move(v));
    py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<int64_t>*>(p); });
    return py::array_t<int64_t>({static_cast<py::ssize_t>(heap->size())}, {sizeof(int64_t)},
                                heap->data(), owner);
}

py::array_t<int64_t> greedy_diverse_py(const FloatArray& embeddings, double min_distance,
                                       const py::object& order, int64_t budget, int num_threads,
                                       int64_t block_size, const py::object& progress,
                                       const std::string& method, int64_t n_cells,
                                       int64_t switch_at, const py::object& stats) {
    if (embeddings.ndim() != 2)
        throw py::value_error("embeddings must be a 2-D array of shape (n, d)");
    const int64_t n = embeddings.shape(0);
    const int64_t d = embeddings.shape(1);

    IndexArray order_arr;
    const int64_t* order_ptr = nullptr;
    int64_t m = n;
    if (!order.is_none()) {
        order_arr = IndexArray::ensure(order);
        if (!order_arr) throw py::error_already_set();
        if (order_arr.ndim() != 1) throw py::value_error("order must be a 1-D array of row indices");
        order_ptr = order_arr.data();
        m = order_arr.shape(0);
    }

    laser_fast::GreedyOptions opt;
    opt.min_distance = min_distance;
    opt.budget = budget;
    opt.num_threads = num_threads;
    opt.block_size = block_size;
    if (method == "auto")
        opt.method = 0;
    else if (method == "brute")
        opt.method = 1;
    else if (method == "cells")
        opt.method = 2;
    else
        throw py::value_error("method must be 'auto', 'brute' or 'cells', got '" + method + "'");
    opt.n_cells = n_cells;
    opt.switch_at = switch_at;
    if (!stats.is_none() && !py::isinstance<py::dict>(stats))
        throw py::type_error("stats must be a dict or None");

    const bool has_progress = !progress.is_none();
    // Runs between blocks with the GIL released; takes it back briefly to notice Ctrl-C (and
    // other pending signals) and to report progress. Exceptions propagate out of the core.
    laser_fast::BlockCallback between = [&](int64_t visited, int64_t accepted) {
        py::gil_scoped_acquire gil;
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
        if (has_progress) {
            progress(visited, accepted);
            // a signal raised while the callback ran (its handler may not have run yet) stops now,
            // not one block later (or never, after the last block)
            if (PyErr_CheckSignals() != 0) throw py::error_already_set();
        }
    };

    const float* data = embeddings.data();
    std::vector<int64_t> result;
    laser_fast::GreedyStats st;
    {
        py::gil_scoped_release nogil;
        result = laser_fast::greedy_diverse(data, n, d, order_ptr, m, opt, between, &st);
    }
    if (!stats.is_none()) {
        py::dict out = stats.cast<py::dict>();
        out["method"] = st.method;
        out["cells"] = st.cells;
        out["switched_at"] = st.switched_at;
        out["visited_at_switch"] = st.visited_at_switch;
        out["index_seconds"] = st.index_seconds;
        out["pairs_total"] = st.pairs_total;
        out["pairs_scheduled"] = st.pairs_scheduled;
        out["centroid_dots"] = st.centroid_dots;
        out["centroid_seconds"] = st.centroid_seconds;
        out["gate_seconds"] = st.gate_seconds;
        out["phase1_seconds"] = st.phase1_seconds;
        out["phase2_seconds"] = st.phase2_seconds;
    }
    return to_numpy(std::move(result));
}

py::dict build_info_py() {
    const laser_fast::BuildInfo info = laser_fast::build_info();
    py::dict out;
    out["openmp"] = info.openmp;
    out["openmp_version"] = info.openmp_version;
    out["omp_max_threads"] = info.omp_max_threads;
    out["compiler"] = info.compiler;
    out["simd"] = info.simd;
    out["dot_lanes"] = info.dot_lanes;
    out["vector_extensions"] = info.vector_extensions;
    out["dispatch"] = info.dispatch;
    out["kernel"] = info.kernel;
    return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "laser_fast compiled core (C++17, OpenMP). Use the wrappers in laser_fast.greedy.";

    m.def("greedy_diverse", &greedy_diverse_py, py::arg("embeddings"), py::kw_only(),
          py::arg("min_distance") = 0.1, py::arg("order") = py::none(), py::arg("budget") = -1,
          py::arg("num_threads") = 0, py::arg("block_size") = 0,
          py::arg("progress") = py::none(), py::arg("method") = "auto", py::arg("n_cells") = 0,
          py::arg("switch_at") = 0, py::arg("stats") = py::none(),
          R"doc(Exact greedy diversity filter over unit-length float32 rows.

Visits candidates in ``order`` (default 0..n-1) and accepts one iff its cosine similarity to
every already accepted row is < 1 - min_distance. Stops after ``budget`` acceptances
(budget < 0: no limit). ``block_size`` candidates per block (0: automatic).
``progress(visited, accepted)`` is called between blocks. ``method``: "brute" (compare with
every accepted row), "cells" (exact pruning with a cell index from the start) or "auto" (brute
force until ``switch_at`` rows are accepted, 0: max(2048, 4 * n_cells), then the cell index);
``n_cells``: centroids (0: ~sqrt(candidates)). The result does not depend on them. ``stats``: a
dict to fill with diagnostics (method used, cells, switch point, pair counts).
Returns the accepted row indices (int64) in acceptance order. Low-level: rows are assumed to be
unit length; use ``laser_fast.greedy.greedy_diverse`` for validation and normalisation.)doc");

    m.def("build_info", &build_info_py,
          "How the core was built: OpenMP, thread count, compiler and SIMD flags.");

    m.def(
        "dot",
        [](const FloatArray& a, const FloatArray& b) {
            if (a.ndim() != 1 || b.ndim() != 1 || a.shape(0) != b.shape(0))
                throw py::value_error("dot: a and b must be 1-D arrays of equal length");
            return laser_fast::dot(a.data(), b.data(), a.shape(0));
        },
        py::arg("a"), py::arg("b"),
        "Dot product in the fixed summation order used by greedy_diverse.");
}
